//! C tor (the installed `tor`, 0.4.9) for interop tests: [`relay::testnet`]'s launcher (a relay
//! on loopback, or a client that connects to a bridge of the test's choosing), wrapped so that a
//! failure to start fails the test; either is killed on drop, its log printed when the test
//! fails. [`BlockingTls`] drives a `relay::tls::TlsLink` over a blocking
//! socket.
//!
//! Use it from a test file with `#[path = "common/ctor.rs"] mod ctor;`.
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(dead_code)] // Each test file uses its own subset.
#![allow(clippy::unwrap_used)] // Test helper: a panic is a test failure.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// A running `tor` process ([`relay::testnet::CTor`]) whose failures fail the test.
#[derive(Debug)]
pub struct CTor(relay::testnet::CTor);

impl CTor {
    /// Runs `tor` with no torrc, a fresh private data directory and `args`.
    pub fn spawn(label: &str, args: &[&str]) -> Self {
        CTor(relay::testnet::CTor::spawn(label, args).unwrap_or_else(|e| panic!("{e}")))
    }

    /// A C tor client whose only way into the network is a bridge at `bridge`.
    pub fn client_via_bridge(label: &str, bridge: SocketAddr) -> Self {
        CTor(
            relay::testnet::CTor::client_via_bridge(label, bridge)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.0.data_dir()
    }

    /// Everything tor has logged so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.exited()
    }
}

/// A running C tor relay on loopback ([`relay::testnet::CTorRelay`]) whose failures fail the
/// test.
#[derive(Debug)]
pub struct CTorRelay(relay::testnet::CTorRelay);

impl CTorRelay {
    /// Starts a non-exit relay that publishes nothing, with `extra` options appended; panics
    /// with tor's log if it does not become ready.
    pub fn start(nickname: &str, extra: &[&str]) -> Self {
        CTorRelay(
            relay::testnet::CTorRelay::start(nickname, extra).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Starts a relay that is also an exit to `127.0.0.1:port` only.
    pub fn start_exit(nickname: &str, port: u16, extra: &[&str]) -> Self {
        CTorRelay(
            relay::testnet::CTorRelay::start_exit(nickname, port, extra)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Where its ORPort listens.
    pub fn or_addr(&self) -> SocketAddr {
        self.0.or_addr()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.0.data_dir()
    }

    /// Its nickname.
    pub fn nickname(&self) -> &str {
        self.0.nickname()
    }

    /// Its RSA identity fingerprint (40 upper-case hex digits).
    pub fn rsa_fingerprint(&self) -> String {
        self.0.rsa_fingerprint().unwrap()
    }

    /// Its ed25519 identity (unpadded base64).
    pub fn ed25519_fingerprint(&self) -> String {
        self.0.ed25519_fingerprint().unwrap()
    }

    /// Everything tor has logged so far.
    pub fn log(&self) -> String {
        self.0.log()
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    relay::testnet::free_port().unwrap()
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
