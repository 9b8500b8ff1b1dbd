//! C tor (the installed `tor`, 0.4.9) for interop tests: a relay on loopback ([`CTorRelay`]: a
//! fresh data directory, a free ORPort, readiness by polling), or a client that connects to a
//! bridge of the test's choosing ([`CTor::client_via_bridge`]); either is killed on drop, its log
//! printed when the test fails. [`BlockingTls`] drives a `relay::tls::TlsLink` over a blocking
//! socket.
//!
//! Use it from a test file with `#[path = "common/ctor.rs"] mod ctor;`.
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(dead_code)] // Each test file uses its own subset.
#![allow(clippy::unwrap_used)] // Test helper: a panic is a test failure.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long tor gets to open its ORPort and write its fingerprints.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `tor` process with its own temporary directory; killed (and the directory
/// removed) on drop, its log printed if the test is failing.
#[derive(Debug)]
pub struct CTor {
    child: Child,
    dir: tempfile::TempDir,
    label: String,
}

impl CTor {
    /// Runs `tor` with no torrc, a fresh private data directory, notices logged to a file, and
    /// `args`. `label` names it in the log dump.
    pub fn spawn(label: &str, args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chive-ctor-")
            .tempdir()
            .unwrap();
        let log = fs::File::create(dir.path().join("tor.log")).unwrap();
        let data_dir = dir.path().join("data");
        fs::create_dir(&data_dir).unwrap();
        set_private(&data_dir);
        let spawned = Command::new("tor")
            // No torrc at all: /etc/tor/torrc must not leak into the test.
            .args(["-f", "/dev/null", "--defaults-torrc", "/dev/null"])
            .arg("--ignore-missing-torrc")
            .arg("--DataDirectory")
            .arg(&data_dir)
            .args(["--SocksPort", "0", "--Log", "notice stderr"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "this test needs C tor on PATH (`tor`, version 0.4.9): install it with \
                 `apt-get install tor`"
            ),
            Err(e) => panic!("could not run tor: {e}"),
        };
        CTor {
            child,
            dir,
            label: label.to_string(),
        }
    }

    /// A C tor client whose only way into the network is a bridge at `bridge`: it opens a TLS
    /// connection there at once, which makes it a TLS client for a test server to observe.
    pub fn client_via_bridge(label: &str, bridge: SocketAddr) -> Self {
        let bridge = bridge.to_string();
        CTor::spawn(label, &["--UseBridges", "1", "--Bridge", &bridge])
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything tor has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("tor.log")).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for CTor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- C tor log ({}) ----\n{}", self.label, self.log());
        }
    }
}

/// A running C tor relay on loopback.
#[derive(Debug)]
pub struct CTorRelay {
    tor: CTor,
    or_addr: SocketAddr,
    nickname: String,
}

impl CTorRelay {
    /// Starts a non-exit relay that publishes nothing, with `extra` options appended
    /// (`["--ExitRelay", "1", ...]` overrides the defaults, since tor takes the last value).
    /// Waits until its ORPort accepts TCP and its fingerprint files exist; panics with tor's log
    /// otherwise.
    pub fn start(nickname: &str, extra: &[&str]) -> Self {
        let mut last_log = String::new();
        // The port is free when we look, but another process may take it before tor binds it.
        for _ in 0..3 {
            let port = free_port();
            match Self::try_start(nickname, port, extra) {
                Ok(relay) => return relay,
                Err(log) => last_log = log,
            }
        }
        panic!("C tor did not start; its last log:\n{last_log}");
    }

    fn try_start(nickname: &str, port: u16, extra: &[&str]) -> Result<Self, String> {
        let or_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let or_port = or_addr.to_string();
        let mut args = vec![
            "--ORPort",
            &or_port,
            "--PublishServerDescriptor",
            "0",
            "--AssumeReachable",
            "1",
            "--ExitRelay",
            "0",
            "--Nickname",
            nickname,
            "--ContactInfo",
            "x",
        ];
        args.extend_from_slice(extra);
        let mut relay = CTorRelay {
            tor: CTor::spawn(nickname, &args),
            or_addr,
            nickname: nickname.to_string(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = relay.tor.exited() {
                return Err(format!("tor exited with {status}\n{}", relay.log()));
            }
            let listening =
                TcpStream::connect_timeout(&relay.or_addr, Duration::from_millis(500)).is_ok();
            // The ORPort opens before tor writes its fingerprint files.
            if listening && relay.try_rsa_fingerprint().is_some() {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tor not ready after {START_TIMEOUT:?}\n{}",
                    relay.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where its ORPort listens.
    pub fn or_addr(&self) -> SocketAddr {
        self.or_addr
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.tor.data_dir()
    }

    /// Its nickname.
    pub fn nickname(&self) -> &str {
        &self.nickname
    }

    /// Its RSA identity fingerprint (40 upper-case hex digits), from `<datadir>/fingerprint`.
    pub fn rsa_fingerprint(&self) -> String {
        self.try_rsa_fingerprint().unwrap()
    }

    /// Its ed25519 identity (unpadded base64), from `<datadir>/fingerprint-ed25519`.
    pub fn ed25519_fingerprint(&self) -> String {
        read_fingerprint(&self.data_dir().join("fingerprint-ed25519"), &self.nickname).unwrap()
    }

    fn try_rsa_fingerprint(&self) -> Option<String> {
        read_fingerprint(&self.data_dir().join("fingerprint"), &self.nickname)
    }

    /// Everything tor has logged so far.
    pub fn log(&self) -> String {
        self.tor.log()
    }
}

/// The value on a `nickname value` line, once tor has written the whole file.
fn read_fingerprint(path: &Path, nickname: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().next()?;
    let value = line.strip_prefix(nickname)?.strip_prefix(' ')?;
    (!value.is_empty()).then(|| value.to_string())
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// tor refuses a data directory that others can read.
fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

/// A [`relay::tls::TlsLink`] driven over a blocking `TcpStream`: the simplest possible
/// reactor, for tests that talk to C tor (or to a test server) one exchange at a time.
#[derive(Debug)]
pub struct BlockingTls {
    pub stream: TcpStream,
    pub link: relay::tls::TlsLink,
    /// Ciphertext read from the socket that the link has not taken yet (backpressure).
    pending: Vec<u8>,
}

impl BlockingTls {
    /// Wraps a connected stream; reads time out after 30 s so that a silent peer fails the test.
    pub fn new(stream: TcpStream, link: relay::tls::TlsLink) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        BlockingTls {
            stream,
            link,
            pending: Vec::new(),
        }
    }

    /// Connects to `addr` as a Tor initiator with chive's client configuration.
    pub fn connect(addr: SocketAddr) -> Self {
        let config = relay::tls::client_config().unwrap();
        let link =
            relay::tls::TlsLink::client(config, relay::tls::DEFAULT_PENDING_TLS_MAX_BYTES).unwrap();
        Self::new(TcpStream::connect(addr).unwrap(), link)
    }

    /// Sends all ciphertext the link has queued.
    pub fn flush(&mut self) {
        use std::io::Write;
        let mut out = Vec::new();
        while self.link.wants_tls_out() {
            self.link.poll_tls(&mut out, usize::MAX);
        }
        self.stream.write_all(&out).unwrap();
    }

    /// Gives the link more ciphertext: what it refused before, else one socket read.
    /// Returns false once the socket is at end of file.
    pub fn fill(&mut self) -> bool {
        use std::io::Read;
        if self.pending.is_empty() {
            let mut buf = [0u8; 16 * 1024];
            let n = loop {
                match self.stream.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other.unwrap(),
                }
            };
            if n == 0 {
                self.link.handle_eof();
                return false;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
        let used = self.link.handle_tls(&self.pending).unwrap();
        self.pending.drain(..used);
        true
    }

    /// Runs the TLS handshake to completion.
    pub fn handshake(&mut self) {
        self.flush();
        while self.link.is_handshaking() {
            assert!(self.fill(), "EOF during the TLS handshake");
            self.flush();
        }
        self.flush();
    }

    /// Sends all of `data`, respecting the link's backpressure.
    pub fn send(&mut self, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            off += self.link.write_plaintext(&data[off..]).unwrap();
            self.flush();
        }
    }

    /// Reads some plaintext into `buf`, waiting for it; 0 means the peer closed cleanly.
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        loop {
            let n = self.link.read_plaintext(buf).unwrap();
            if n > 0 || self.link.peer_closed() {
                return n;
            }
            if !self.fill() {
                // Anything left is delivered (or the missing close_notify reported) here.
                return self.link.read_plaintext(buf).unwrap();
            }
            self.flush();
        }
    }

    /// Reads until `buf` holds at least `want` bytes of plaintext or the peer closes.
    pub fn recv_at_least(&mut self, buf: &mut Vec<u8>, want: usize) {
        let mut chunk = [0u8; 4096];
        while buf.len() < want {
            let n = self.recv(&mut chunk);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}
