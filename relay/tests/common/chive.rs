//! Test harness shared by the interop tests: a `chive relay` process and a blocking client
//! channel (used by `relay_e2e.rs` and `ctor_cgo.rs`).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crypto_simd::Engine;
use proto::chan_msg::DestroyReason;
use proto::ids::{CircId, StreamId};
use proto::keys::RelayKeys;
use proto::relay_cell::RelayCmd;
use proto::relay_msg::{Begin, EndReason, Host, RelayMsg};
use relay::circuit::{CircCell, ClientEvent, HandshakeKind, OriginCircuit, RelayInfo};
use relay::demo::ClientChannel;

use crate::ctor::free_port;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `chive relay`; killed on drop, its log printed if the test failed.
pub struct Chive {
    child: Child,
    dir: tempfile::TempDir,
    /// Its public identity and address.
    pub info: RelayInfo,
}

impl Chive {
    pub fn start(nickname: &str, backend: &str) -> Chive {
        Chive::start_with(nickname, backend, "")
    }

    /// As [`Chive::start`], with `extra` appended to the configuration file.
    pub fn start_with(nickname: &str, backend: &str, extra: &str) -> Chive {
        for _ in 0..3 {
            if let Some(c) = Chive::try_start(nickname, backend, free_port(), extra) {
                return c;
            }
        }
        panic!("chive relay did not start");
    }

    fn try_start(nickname: &str, backend: &str, port: u16, extra: &str) -> Option<Chive> {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let data = dir.path().join("data");
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "or_address = \"{addr}\"\ndata_dir = \"{}\"\nnickname = \"{nickname}\"\n\
                 shards = 2\nbackend = \"{backend}\"\ntesting_echo_drop = true\n[limits]\nhandshake_timeout_secs = 10\n{extra}",
                data.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chive"))
            .args(["relay", "--config"])
            .arg(&config)
            .env("RUST_LOG", "relay=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if child.try_wait().unwrap().is_some() {
                eprintln!(
                    "chive exited:\n{}",
                    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
                );
                return None;
            }
            let up = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if up && data.join("fingerprint-ed25519").exists() {
                break;
            }
            assert!(Instant::now() < deadline, "chive not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let info = relay_info(&data, addr);
        Some(Chive { child, dir, info })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within a few seconds.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "chive ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- chive log ({}) ---\n{}", self.info.addrs[0], self.log());
        }
    }
}

/// A relay's public identity, from the keys in its data directory (chive's and C tor's use
/// the same layout).
pub fn relay_info(data_dir: &Path, addr: SocketAddr) -> RelayInfo {
    let keys = RelayKeys::load(data_dir).unwrap();
    RelayInfo::from_keys(&keys, vec![addr])
}

/// A client's channel over a blocking socket: the library's [`ClientChannel`] (also what
/// `chive demo` uses), with the test's assertions around it.
pub struct Chan {
    chan: ClientChannel,
}

impl Chan {
    /// Connects to `relay` and runs the link handshake as a client, checking its identity.
    pub fn open(relay: &RelayInfo) -> Chan {
        Chan {
            chan: ClientChannel::open(relay).unwrap(),
        }
    }

    pub fn send(&mut self, cell: &CircCell) {
        self.chan.send(cell).unwrap();
    }

    /// The next cell for `circ` (other circuits' cells skipped).
    pub fn recv(&mut self, circ: CircId) -> CircCell {
        loop {
            let cell = self.chan.recv().unwrap();
            if cell.circ_id == circ {
                return cell;
            }
        }
    }

    pub fn exchange(&mut self, circ: &mut OriginCircuit, cell: CircCell) -> ClientEvent {
        self.send(&cell);
        let reply = self.recv(circ.circ_id());
        circ.handle_cell(&reply).unwrap()
    }

    /// Builds a circuit through `path` with `kinds`.
    pub fn build(
        &mut self,
        id: u32,
        path: &[&RelayInfo],
        kinds: &[HandshakeKind],
    ) -> OriginCircuit {
        let mut rng = rand::rngs::OsRng;
        let engine = Engine::from_env().unwrap();
        let circ_id = CircId::new(0x8000_0000 | id).unwrap();
        let (mut circ, cell) =
            OriginCircuit::create_first_hop(&mut rng, engine, circ_id, kinds[0], path[0]).unwrap();
        assert_eq!(
            self.exchange(&mut circ, cell),
            ClientEvent::HopAdded { hops: 1 }
        );
        for (i, (relay, &kind)) in path.iter().zip(kinds).enumerate().skip(1) {
            let cell = circ.extend(&mut rng, kind, relay).unwrap();
            assert_eq!(
                self.exchange(&mut circ, cell),
                ClientEvent::HopAdded { hops: i + 1 },
                "circuit {id}: extending to hop {i}"
            );
        }
        circ
    }

    /// BEGIN to the last hop; returns its END reason.
    pub fn begin_refused(&mut self, circ: &mut OriginCircuit) -> EndReason {
        let hop = circ.hops() - 1;
        let begin = RelayMsg::Begin(Begin {
            host: Host::parse("127.0.0.1").unwrap(),
            port: 9,
            flags: Default::default(),
        });
        let stream = StreamId::new(1);
        let cell = circ
            .send(&mut rand::rngs::OsRng, hop, stream, &begin)
            .unwrap();
        match self.exchange(circ, cell) {
            ClientEvent::Msg {
                hop: from,
                stream_id,
                msg: RelayMsg::End(end),
                ..
            } => {
                assert_eq!((from, stream_id), (hop, stream));
                end.reason
            }
            other => panic!("expected END, got {other:?}"),
        }
    }

    /// Sends `cells` RELAY_DROPs with random data to `hop` in windows of `WINDOW`, and checks
    /// every echo (the relays run with `testing_echo_drop`) byte for byte.
    pub fn echo(&mut self, circ: &mut OriginCircuit, hop: usize, cells: usize) {
        const WINDOW: usize = 32;
        let mut rng = rand::rngs::OsRng;
        let mut sent = std::collections::VecDeque::new();
        for i in 0..cells {
            let mut data = vec![0u8; 1 + i % proto::relay_cell::RELAY_DATA_MAX_V0];
            rand::RngCore::fill_bytes(&mut rng, &mut data);
            let cell = circ
                .send_raw(&mut rng, hop, RelayCmd::DROP, None, &data)
                .unwrap();
            self.send(&cell);
            sent.push_back(data);
            if sent.len() == WINDOW || i + 1 == cells {
                while let Some(want) = sent.pop_front() {
                    let reply = self.recv(circ.circ_id());
                    match circ.handle_cell(&reply).unwrap() {
                        ClientEvent::Msg {
                            hop: from, data, ..
                        } => {
                            assert_eq!(from, hop);
                            assert_eq!(data, want);
                        }
                        other => panic!("expected a DROP echo, got {other:?}"),
                    }
                }
            }
        }
    }

    /// TRUNCATE at `hop`; returns the TRUNCATED reason.
    pub fn truncate(&mut self, circ: &mut OriginCircuit, hop: usize) -> DestroyReason {
        let cell = circ
            .send_raw(&mut rand::rngs::OsRng, hop, RelayCmd::TRUNCATE, None, &[])
            .unwrap();
        match self.exchange(circ, cell) {
            ClientEvent::Truncated { hop: from, reason } => {
                assert_eq!(from, hop);
                assert_eq!(circ.hops(), hop + 1);
                reason
            }
            other => panic!("expected TRUNCATED, got {other:?}"),
        }
    }
}
