//! `chive demo`: a whole chive network on loopback, in one process, as a first thing to run.
//!
//! Three relays ([`crate::daemon::run`], one thread each plus their shard threads) listen on
//! free 127.0.0.1 ports with `testing_echo_drop` on, a test-network-only setting under which
//! the last hop of a circuit answers every RELAY_DROP with the same DROP. A client in the same
//! process opens TLS channels to the first relay ([`ClientChannel`]: the link handshake of
//! tor-spec §4 over a blocking socket), builds 3-hop circuits through the three relays with a
//! mix of ntor, ntor v3 and CREATE_FAST first hops (tor-spec §5.1), then pushes RELAY_DROP
//! cells through every circuit and checks every echoed byte. Each echo crosses six relay hops
//! (three out, three back), each one a layer of relay crypto.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crypto_simd::Engine;
use proto::cell::{CircIdLen, RawCell};
use proto::ids::CircId;
use proto::keys::RelayKeys;
use proto::link_handshake::{ExpectedPeer, Initiator, LinkHandshakeError, NetinfoAddrs};
use proto::relay_cell::{RelayCmd, RELAY_DATA_MAX_V0};
use rand::RngCore;
use thiserror::Error;

use crate::circuit::{CircCell, ClientError, ClientEvent, HandshakeKind, OriginCircuit, RelayInfo};
use crate::config::{BackendChoice, Config, LimitsConfig};
use crate::daemon::{self, DaemonError};
use crate::reactor;
use crate::tls::{self, TlsLink, TlsLinkError};

/// Relays in the demo network, and so hops per circuit.
pub const RELAYS: usize = 3;

/// RELAY_DROPs in flight per circuit: enough to keep every relay busy, few enough that
/// neither side's socket buffers fill while the other is writing.
const WINDOW: usize = 8;

/// How long a relay may take to create its keys and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the client waits for any one read before calling the network stuck.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// What `chive demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep the relays' keys (`DIR/relay0` ...); `None` for a fresh temporary
    /// directory, removed at the end.
    pub data_dir: Option<PathBuf>,
    /// Shards (threads) per relay.
    pub shards: usize,
    /// The relays' I/O backend.
    pub backend: BackendChoice,
    /// TLS channels from the client to the first relay.
    pub channels: usize,
    /// Circuits to build, spread over the channels.
    pub circuits: usize,
    /// How long to push cells.
    pub duration: Duration,
}

/// Why the demo failed.
#[derive(Debug, Error)]
pub enum DemoError {
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Usage(&'static str),
    /// A relay would not start.
    #[error("relay {relay} did not start: {source}")]
    RelayStart {
        /// Which relay.
        relay: usize,
        /// Why.
        source: DaemonError,
    },
    /// A relay did not listen in time.
    #[error("relay {0} did not start listening in time")]
    RelayTimeout(usize),
    /// A relay stopped during the run.
    #[error("relay {0} stopped unexpectedly")]
    RelayDied(usize),
    /// A relay's keys could not be read back.
    #[error("relay keys: {0}")]
    Keys(#[from] proto::key_file::KeyStoreError),
    /// The relay-crypto engine is unavailable.
    #[error("relay crypto: {0}")]
    Engine(#[from] crypto_simd::EngineError),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// TLS failed on a client channel.
    #[error("TLS: {0}")]
    Tls(#[from] TlsLinkError),
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    TlsSetup(#[from] tls::TlsSetupError),
    /// The link handshake failed.
    #[error("link handshake: {0}")]
    Handshake(#[from] LinkHandshakeError),
    /// Our link certificates could not be made.
    #[error("certificates: {0}")]
    Certs(#[from] proto::cert::CertBuildError),
    /// A circuit rejected a cell or a request.
    #[error("circuit: {0}")]
    Circuit(#[from] ClientError),
    /// The relay sent something the demo did not expect.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// Building a circuit failed at a hop.
    #[error("circuit {circuit}: extending to hop {hop} failed")]
    Build {
        /// The circuit's number.
        circuit: usize,
        /// The hop that was not added.
        hop: usize,
    },
    /// An echoed cell differs from what was sent.
    #[error("circuit {circuit}: echoed RELAY_DROP #{cell} differs from what was sent")]
    Mismatch {
        /// The circuit's number.
        circuit: usize,
        /// The cell's index on that circuit.
        cell: u64,
    },
    /// A client thread panicked (a bug).
    #[error("a client thread panicked")]
    Panicked,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> DemoError {
    move |source| DemoError::Io { what, source }
}

/// The demo's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// The relay-crypto backend the relays' engine uses.
    pub crypto_backend: String,
    /// The relays' I/O backend.
    pub reactor_backend: String,
    /// Relays' ports on 127.0.0.1.
    pub ports: Vec<u16>,
    /// Shards per relay.
    pub shards: usize,
    /// Client channels.
    pub channels: usize,
    /// Circuits built (all 3 hops).
    pub circuits_built: usize,
    /// Circuits by first-hop handshake: ntor, ntor v3, CREATE_FAST.
    pub first_hops: [usize; 3],
    /// Seconds cells were pushed.
    pub seconds: f64,
    /// RELAY_DROPs the client sent.
    pub cells_sent: u64,
    /// Echoes the client received and checked byte for byte.
    pub cells_received: u64,
    /// Relay-crypto operations at relays: 6 per round trip.
    pub hop_cells: u64,
    /// CPU seconds of the relays' shard threads over the whole run.
    pub relay_cpu_secs: f64,
    /// CPU seconds of the whole process (relays and client) while cells were pushed.
    pub process_cpu_secs: f64,
}

impl DemoReport {
    /// End-to-end cells (sent plus received) per second.
    pub fn cells_per_sec(&self) -> f64 {
        (self.cells_sent + self.cells_received) as f64 / self.seconds.max(1e-9)
    }

    /// Hop-cells per second.
    pub fn hop_cells_per_sec(&self) -> f64 {
        self.hop_cells as f64 / self.seconds.max(1e-9)
    }

    /// The figures as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu_model": self.cpu_model,
            "crypto_backend": self.crypto_backend,
            "reactor_backend": self.reactor_backend,
            "relays": RELAYS,
            "ports": self.ports,
            "shards_per_relay": self.shards,
            "channels": self.channels,
            "circuits_built": self.circuits_built,
            "first_hops": {
                "ntor": self.first_hops[0],
                "ntor_v3": self.first_hops[1],
                "create_fast": self.first_hops[2],
            },
            "seconds": self.seconds,
            "cells_sent": self.cells_sent,
            "cells_received": self.cells_received,
            "hop_cells": self.hop_cells,
            "cells_per_sec": self.cells_per_sec(),
            "hop_cells_per_sec": self.hop_cells_per_sec(),
            "relay_cpu_secs": self.relay_cpu_secs,
            "process_cpu_secs": self.process_cpu_secs,
            "testing_echo_drop": true,
        })
    }
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        writeln!(
            f,
            "relays:            {RELAYS} on 127.0.0.1 ports {}, {} shards each",
            ports.join(", "),
            self.shards
        )?;
        writeln!(f, "cpu:               {}", self.cpu_model)?;
        writeln!(f, "crypto backend:    {}", self.crypto_backend)?;
        writeln!(f, "reactor backend:   {}", self.reactor_backend)?;
        writeln!(
            f,
            "circuits built:    {} (3 hops; first hop ntor {}, ntor v3 {}, CREATE_FAST {}) over {} channels",
            self.circuits_built, self.first_hops[0], self.first_hops[1], self.first_hops[2], self.channels
        )?;
        writeln!(f, "seconds:           {:.2}", self.seconds)?;
        writeln!(f, "cells sent:        {}", self.cells_sent)?;
        writeln!(
            f,
            "cells received:    {} (echoes, every byte checked)",
            self.cells_received
        )?;
        writeln!(
            f,
            "hop-cells relayed: {} (6 relay hops per round trip)",
            self.hop_cells
        )?;
        writeln!(
            f,
            "cells/s:           {:.0} end to end (sent + received), {:.0} hop-cells/s",
            self.cells_per_sec(),
            self.hop_cells_per_sec()
        )?;
        write!(
            f,
            "CPU seconds:       {:.2} in the relays' shard threads (whole run); {:.2} for the whole process while pushing (the client shares the process)",
            self.relay_cpu_secs, self.process_cpu_secs
        )
    }
}

/// A client's TLS channel to a relay over a blocking socket: the link handshake as an
/// unauthenticated initiator, then whole cells in and out.
#[derive(Debug)]
pub struct ClientChannel {
    stream: TcpStream,
    link: TlsLink,
    /// Ciphertext read but not yet taken by the link (its backpressure).
    pending: Vec<u8>,
    /// Plaintext not yet framed into cells.
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl ClientChannel {
    /// Connects to `relay` and completes the TLS and link handshakes, checking its identities.
    pub fn open(relay: &RelayInfo) -> Result<ClientChannel, DemoError> {
        let addr = *relay
            .addrs
            .first()
            .ok_or(DemoError::Usage("relay without an address"))?;
        let stream = TcpStream::connect(addr).map_err(io_err("connecting to a relay"))?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(io_err("setting a read timeout"))?;
        stream
            .set_nodelay(true)
            .map_err(io_err("setting TCP_NODELAY"))?;
        let link = TlsLink::client(tls::client_config()?, tls::DEFAULT_PENDING_TLS_MAX_BYTES)?;
        let mut chan = ClientChannel {
            stream,
            link,
            pending: Vec::new(),
            buf: Vec::new(),
            out: Vec::new(),
        };
        chan.flush()?;
        while chan.link.is_handshaking() {
            if !chan.fill()? {
                return Err(DemoError::Protocol("relay closed during the TLS handshake"));
            }
            chan.flush()?;
        }
        let expected = ExpectedPeer {
            rsa_identity: Some(relay.rsa_id),
            ed25519_identity: relay.ed_id,
        };
        let addrs = NetinfoAddrs {
            peer: addr.ip(),
            ours: vec![],
        };
        let mut hs = Initiator::new(None, expected, addrs, reactor::unix_now(), &mut OsRngRef)?;
        let mut chunk = [0u8; 4096];
        loop {
            let mut out = Vec::new();
            hs.poll_transmit(&mut out);
            chan.send_bytes(&out)?;
            if hs.is_finished() {
                break;
            }
            let n = chan.recv_plain(&mut chunk)?;
            if n == 0 {
                return Err(DemoError::Protocol(
                    "relay closed during the link handshake",
                ));
            }
            let data = chunk.get(..n).unwrap_or_default();
            let used = hs.handle_input(data, reactor::unix_now(), &chan.link)?;
            if hs.is_finished() {
                chan.buf
                    .extend_from_slice(data.get(used..).unwrap_or_default());
            }
        }
        let mut out = Vec::new();
        hs.poll_transmit(&mut out);
        chan.send_bytes(&out)?;
        match hs.finish() {
            Some(info) if info.peer.is_some() => Ok(chan),
            _ => Err(DemoError::Protocol("the relay's identity was not proven")),
        }
    }

    /// Takes the open channel apart, for a caller that drives the socket itself (the load
    /// generator of `chive-bench relay`): the socket, the TLS link, ciphertext the link has not
    /// taken yet, and plaintext not yet framed into cells.
    pub fn into_parts(self) -> (TcpStream, TlsLink, Vec<u8>, Vec<u8>) {
        (self.stream, self.link, self.pending, self.buf)
    }

    /// Queues `cell` to send (with [`ClientChannel::send_queued`]).
    pub fn queue(&mut self, cell: &CircCell) -> Result<(), DemoError> {
        cell.encode(CircIdLen::Four, &mut self.out)
            .map_err(|_| DemoError::Protocol("cell would not encode"))
    }

    /// Sends every queued cell.
    pub fn send_queued(&mut self) -> Result<(), DemoError> {
        let out = std::mem::take(&mut self.out);
        let r = self.send_bytes(&out);
        self.out = out;
        self.out.clear();
        r
    }

    /// Sends one cell now.
    pub fn send(&mut self, cell: &CircCell) -> Result<(), DemoError> {
        self.queue(cell)?;
        self.send_queued()
    }

    /// The next cell for any circuit (cells without a circuit, such as padding, skipped).
    pub fn recv(&mut self) -> Result<CircCell, DemoError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((raw, used)) = RawCell::decode(&self.buf, CircIdLen::Four) {
                let cell = CircCell::from_raw(&raw);
                self.buf.drain(..used.min(self.buf.len()));
                match cell {
                    Some(cell) => return Ok(cell),
                    None => continue,
                }
            }
            let n = self.recv_plain(&mut chunk)?;
            if n == 0 {
                return Err(DemoError::Protocol("relay closed the channel"));
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// The next cell for `circ`; cells for other circuits are an error (used while building,
    /// when only one circuit is active on the channel).
    fn exchange(
        &mut self,
        circ: &mut OriginCircuit,
        cell: CircCell,
    ) -> Result<ClientEvent, DemoError> {
        self.send(&cell)?;
        let reply = self.recv()?;
        if reply.circ_id != circ.circ_id() {
            return Err(DemoError::Protocol("a cell for an unknown circuit"));
        }
        Ok(circ.handle_cell(&reply)?)
    }

    fn flush(&mut self) -> Result<(), DemoError> {
        let mut out = Vec::new();
        while self.link.wants_tls_out() {
            self.link.poll_tls(&mut out, usize::MAX);
        }
        self.stream
            .write_all(&out)
            .map_err(io_err("writing to a relay"))
    }

    /// Gives the link more ciphertext; false at end of file.
    fn fill(&mut self) -> Result<bool, DemoError> {
        if self.pending.is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            // A signal delivered to this thread (e.g. to a test harness) interrupts the read;
            // that is not an error of the channel.
            let n = loop {
                match self.stream.read(&mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other.map_err(io_err("reading from a relay"))?,
                }
            };
            if n == 0 {
                self.link.handle_eof();
                return Ok(false);
            }
            self.pending
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        let used = self.link.handle_tls(&self.pending)?;
        self.pending.drain(..used.min(self.pending.len()));
        Ok(true)
    }

    fn send_bytes(&mut self, data: &[u8]) -> Result<(), DemoError> {
        let mut off = 0;
        while let Some(rest) = data.get(off..).filter(|r| !r.is_empty()) {
            off += self.link.write_plaintext(rest)?;
            self.flush()?;
        }
        Ok(())
    }

    fn recv_plain(&mut self, buf: &mut [u8]) -> Result<usize, DemoError> {
        loop {
            let n = self.link.read_plaintext(buf)?;
            if n > 0 || self.link.peer_closed() {
                return Ok(n);
            }
            if !self.fill()? {
                return Ok(self.link.read_plaintext(buf)?);
            }
            self.flush()?;
        }
    }
}

/// `OsRng` by value where a `&mut` is wanted.
struct OsRngRef;

impl RngCore for OsRngRef {
    fn next_u32(&mut self) -> u32 {
        rand::rngs::OsRng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        rand::rngs::OsRng.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::rngs::OsRng.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        rand::rngs::OsRng.try_fill_bytes(dest)
    }
}

impl rand::CryptoRng for OsRngRef {}

/// A relay of the demo network, running in this process.
struct DemoRelay {
    info: RelayInfo,
    thread: JoinHandle<Result<(), DaemonError>>,
}

/// A free port on 127.0.0.1 (free now: the relay may still lose a race for it, and retries).
fn free_port() -> Result<u16, DemoError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

/// Starts relay `i` with its keys in `dir`, and waits until it listens.
fn start_relay(
    i: usize,
    dir: &Path,
    opts: &DemoOptions,
    stop: &Arc<AtomicBool>,
) -> Result<DemoRelay, DemoError> {
    // Held from choosing a port until the relay listens on it. The relay's listeners use
    // SO_REUSEPORT, so two demos in one process (the tests run several at once) that picked the
    // same free port could both bind it and split each other's connections; once a relay
    // listens, `free_port`'s plain bind can no longer return its port.
    static PORT_CHOICE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _choosing = PORT_CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = None;
    for _ in 0..3 {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let config = Config {
            or_address: addr,
            data_dir: dir.to_path_buf(),
            nickname: format!("chivedemo{i}"),
            shards: opts.shards,
            pin_cores: false,
            backend: opts.backend,
            limits: LimitsConfig::default(),
            testing_echo_drop: true,
            control: Default::default(),
        };
        let stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("demo-relay-{i}"))
            .spawn(move || daemon::run(&config, stop))
            .map_err(io_err("starting a relay thread"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if thread.is_finished() {
                match thread.join() {
                    Ok(Err(e)) => last = Some(e),
                    _ => return Err(DemoError::RelayDied(i)),
                }
                break;
            }
            let up = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if up && dir.join("fingerprint-ed25519").exists() {
                let keys = RelayKeys::load(dir)?;
                let info = RelayInfo::from_keys(&keys, vec![addr]);
                return Ok(DemoRelay { info, thread });
            }
            if Instant::now() > deadline {
                return Err(DemoError::RelayTimeout(i));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match last {
        Some(source) => Err(DemoError::RelayStart { relay: i, source }),
        None => Err(DemoError::RelayTimeout(i)),
    }
}

/// The first-hop handshakes, rotated through circuits; later hops alternate ntor and ntor v3.
const PLANS: [[HandshakeKind; RELAYS]; 3] = [
    [
        HandshakeKind::Ntor,
        HandshakeKind::NtorV3,
        HandshakeKind::Ntor,
    ],
    [
        HandshakeKind::NtorV3,
        HandshakeKind::Ntor,
        HandshakeKind::NtorV3,
    ],
    [
        HandshakeKind::CreateFast,
        HandshakeKind::NtorV3,
        HandshakeKind::Ntor,
    ],
];

/// What one client channel's thread achieved.
#[derive(Debug, Default)]
struct ChannelTally {
    built: usize,
    first_hops: [usize; 3],
    sent: u64,
    received: u64,
}

/// One circuit being pushed: its state and the DROP bodies awaiting their echo.
struct Pushed {
    number: usize,
    circ: OriginCircuit,
    in_flight: VecDeque<Vec<u8>>,
    echoed: u64,
}

/// Builds circuits `numbers` on one channel to `path[0]`, then pushes DROPs through them until
/// `start_push + duration`.
fn run_channel(
    path: &[RelayInfo],
    numbers: &[usize],
    engine: Engine,
    ready: &std::sync::Barrier,
    push_for: Duration,
) -> Result<ChannelTally, DemoError> {
    let mut tally = ChannelTally::default();
    let first = path.first().ok_or(DemoError::Usage("empty path"))?;
    let chan = ClientChannel::open(first);
    // Every thread reaches the barrier, even after a failure, so that none waits forever.
    let built = chan.and_then(|mut chan| {
        let mut circuits = Vec::with_capacity(numbers.len());
        for &n in numbers {
            let plan = PLANS.get(n % PLANS.len()).copied().unwrap_or(PLANS[0]);
            circuits.push(build_circuit(&mut chan, n, path, &plan, engine)?);
            tally.built += 1;
            if let Some(c) = tally.first_hops.get_mut(n % 3) {
                *c += 1;
            }
        }
        Ok((chan, circuits))
    });
    ready.wait();
    let (mut chan, circuits) = built?;
    let mut pushed: Vec<Pushed> = circuits
        .into_iter()
        .zip(numbers)
        .map(|(circ, &number)| Pushed {
            number,
            circ,
            in_flight: VecDeque::new(),
            echoed: 0,
        })
        .collect();
    let mut rng = rand::thread_rng();
    let last_hop = RELAYS - 1;
    let deadline = Instant::now() + push_for;
    let mut len = 0usize;
    while Instant::now() < deadline {
        for p in &mut pushed {
            for _ in 0..WINDOW {
                len = len % RELAY_DATA_MAX_V0 + 1;
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                let cell = p
                    .circ
                    .send_raw(&mut rng, last_hop, RelayCmd::DROP, None, &data)?;
                chan.queue(&cell)?;
                p.in_flight.push_back(data);
                tally.sent += 1;
            }
        }
        chan.send_queued()?;
        let mut waiting = pushed.len() * WINDOW;
        while waiting > 0 {
            let cell = chan.recv()?;
            let idx = (cell.circ_id.get() & 0x7fff_ffff) as usize;
            let p = pushed
                .iter_mut()
                .find(|p| p.number + 1 == idx)
                .ok_or(DemoError::Protocol("a cell for an unknown circuit"))?;
            match p.circ.handle_cell(&cell)? {
                ClientEvent::Msg { hop, data, .. } if hop == last_hop => {
                    let want = p
                        .in_flight
                        .pop_front()
                        .ok_or(DemoError::Protocol("an echo nobody asked for"))?;
                    if data != want {
                        return Err(DemoError::Mismatch {
                            circuit: p.number,
                            cell: p.echoed,
                        });
                    }
                    p.echoed += 1;
                    tally.received += 1;
                    waiting -= 1;
                }
                ClientEvent::Ignored => {}
                ClientEvent::Destroyed { .. } | ClientEvent::Truncated { .. } => {
                    return Err(DemoError::Protocol("a circuit was torn down"));
                }
                _ => return Err(DemoError::Protocol("an unexpected relay message")),
            }
        }
    }
    for p in &mut pushed {
        let cell = p.circ.destroy();
        chan.queue(&cell)?;
    }
    chan.send_queued()?;
    Ok(tally)
}

fn build_circuit(
    chan: &mut ClientChannel,
    number: usize,
    path: &[RelayInfo],
    plan: &[HandshakeKind; RELAYS],
    engine: Engine,
) -> Result<OriginCircuit, DemoError> {
    let mut rng = OsRngRef;
    let id = u32::try_from(number + 1)
        .ok()
        .and_then(|n| CircId::new(0x8000_0000 | n))
        .ok_or(DemoError::Usage("too many circuits"))?;
    let first = path.first().ok_or(DemoError::Usage("empty path"))?;
    let (mut circ, cell) = OriginCircuit::create_first_hop(&mut rng, engine, id, plan[0], first)?;
    if chan.exchange(&mut circ, cell)? != (ClientEvent::HopAdded { hops: 1 }) {
        return Err(DemoError::Build {
            circuit: number,
            hop: 0,
        });
    }
    for (hop, (relay, &kind)) in path.iter().zip(plan).enumerate().skip(1) {
        let cell = circ.extend(&mut rng, kind, relay)?;
        if chan.exchange(&mut circ, cell)? != (ClientEvent::HopAdded { hops: hop + 1 }) {
            return Err(DemoError::Build {
                circuit: number,
                hop,
            });
        }
    }
    Ok(circ)
}

/// CPU seconds (user + system) from a `/proc/.../stat` line; `USER_HZ` is 100 on Linux.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds of this process so far.
fn process_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_secs(&s))
        .unwrap_or(0.0)
}

/// CPU seconds of the threads named `chive-shard-*` (every relay's shards) so far.
fn shard_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if !comm.starts_with("chive-shard") {
                return None;
            }
            stat_cpu_secs(&std::fs::read_to_string(t.path().join("stat")).ok()?)
        })
        .sum()
}

/// `model name` from /proc/cpuinfo ("unknown" if there is none), printed with every figure.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The backend the daemon picks for `choice` (it decides the same way).
fn reactor_backend(choice: BackendChoice) -> &'static str {
    match choice {
        BackendChoice::Poll => "poll",
        BackendChoice::IoUring => "io_uring",
        BackendChoice::Auto => match reactor::uring_probe() {
            Ok(()) => "io_uring",
            Err(_) => "poll",
        },
    }
}

/// Where the relays keep their keys, and whether it is ours to remove.
struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn data_dir(opts: &DemoOptions) -> Result<DataDir, DemoError> {
    let (path, temporary) = match &opts.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("chive-demo-{}-{nanos:x}", std::process::id());
            (std::env::temp_dir().join(name), true)
        }
    };
    std::fs::create_dir_all(&path).map_err(io_err("creating the data directory"))?;
    Ok(DataDir { path, temporary })
}

/// Runs the demo: starts the relays, builds and pushes circuits, stops the relays.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    if opts.shards == 0 || opts.channels == 0 || opts.circuits == 0 {
        return Err(DemoError::Usage(
            "--shards, --channels and --circuits must be at least 1",
        ));
    }
    if opts.circuits > 4096 {
        return Err(DemoError::Usage("--circuits must be at most 4096"));
    }
    let engine = Engine::from_env()?;
    let dir = data_dir(opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut relays = Vec::with_capacity(RELAYS);
    let mut result = (|| {
        for i in 0..RELAYS {
            let d = dir.path.join(format!("relay{i}"));
            relays.push(start_relay(i, &d, opts, &stop)?);
        }
        drive(opts, engine, &relays)
    })();
    stop.store(true, Ordering::Relaxed);
    for (i, r) in relays.into_iter().enumerate() {
        let ok = matches!(r.thread.join(), Ok(Ok(())));
        if !ok && result.is_ok() {
            result = Err(DemoError::RelayDied(i));
        }
    }
    result
}

fn drive(
    opts: &DemoOptions,
    engine: Engine,
    relays: &[DemoRelay],
) -> Result<DemoReport, DemoError> {
    let path: Vec<RelayInfo> = relays.iter().map(|r| r.info.clone()).collect();
    let channels = opts.channels.min(opts.circuits);
    let ready = std::sync::Barrier::new(channels + 1);
    let (tallies, seconds, process_cpu) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..channels)
            .map(|c| {
                let numbers: Vec<usize> = (c..opts.circuits).step_by(channels).collect();
                let (path, ready) = (&path, &ready);
                s.spawn(move || run_channel(path, &numbers, engine, ready, opts.duration))
            })
            .collect();
        ready.wait();
        let (t0, cpu0) = (Instant::now(), process_cpu_secs());
        let tallies: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (
            tallies,
            t0.elapsed().as_secs_f64(),
            process_cpu_secs() - cpu0,
        )
    });
    let relay_cpu = shard_cpu_secs();
    for (i, r) in relays.iter().enumerate() {
        if r.thread.is_finished() {
            return Err(DemoError::RelayDied(i));
        }
    }
    let mut total = ChannelTally::default();
    for t in tallies {
        let t = t.map_err(|_| DemoError::Panicked)??;
        total.built += t.built;
        total.sent += t.sent;
        total.received += t.received;
        for (a, b) in total.first_hops.iter_mut().zip(t.first_hops) {
            *a += b;
        }
    }
    Ok(DemoReport {
        cpu_model: cpu_model(),
        crypto_backend: engine.backend().to_string(),
        reactor_backend: reactor_backend(opts.backend).to_string(),
        ports: path
            .iter()
            .filter_map(|r| r.addrs.first().map(SocketAddr::port))
            .collect(),
        shards: opts.shards,
        channels,
        circuits_built: total.built,
        first_hops: total.first_hops,
        seconds,
        cells_sent: total.sent,
        cells_received: total.received,
        hop_cells: total.received * 2 * RELAYS as u64,
        relay_cpu_secs: relay_cpu,
        process_cpu_secs: process_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let line = "1234 (chive shard) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100";
        assert_eq!(stat_cpu_secs(line), Some(3.0));
        assert_eq!(stat_cpu_secs("garbage"), None);
        assert_eq!(stat_cpu_secs("1 (x) S 1 2"), None);
    }

    #[test]
    fn first_hop_plans_cover_every_kind() {
        let firsts: Vec<HandshakeKind> = PLANS.iter().map(|p| p[0]).collect();
        assert_eq!(
            firsts,
            [
                HandshakeKind::Ntor,
                HandshakeKind::NtorV3,
                HandshakeKind::CreateFast
            ]
        );
        assert!(PLANS
            .iter()
            .all(|p| p[1..].iter().all(|k| *k != HandshakeKind::CreateFast)));
    }
}
