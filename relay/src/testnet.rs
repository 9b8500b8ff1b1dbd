//! Local test networks with C tor: the installed `tor` (0.4.9) started on loopback, for the
//! interop tests and for `chive-bench relay`, which compares a C tor relay with a chive relay
//! under the same load.
//!
//! - [`CTor`]: a `tor` process with no torrc, a fresh private data directory in a temporary
//!   directory, and its notices logged to a file; killed (and the directory removed) on drop, its
//!   log printed if the thread is panicking (a failing test).
//! - [`CTorRelay`]: a non-exit relay on a free 127.0.0.1 ORPort that publishes nothing
//!   (`PublishServerDescriptor 0`, `AssumeReachable 1`), ready once its ORPort accepts TCP and its
//!   fingerprint files exist; its keys are read from [`CTorRelay::data_dir`] (tor-spec §1.1, C
//!   tor's `keys/` layout). [`CTorRelay::start_exit`] makes it an exit to one loopback port.
//!
//! Nothing here is used by a running relay.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long tor gets to open its ORPort and write its fingerprints.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a C tor process could not be started.
#[derive(Debug, Error)]
pub enum TestnetError {
    /// `tor` is not on `PATH`.
    #[error(
        "C tor is needed on PATH (`tor`, version 0.4.9): install it with `apt-get install tor`"
    )]
    TorMissing,
    /// A file, directory or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// tor exited or did not become ready; its log.
    #[error("C tor did not start: {reason}; its log:\n{log}")]
    NotReady {
        /// What went wrong.
        reason: String,
        /// Everything tor logged.
        log: String,
    },
    /// A fingerprint file is missing or malformed.
    #[error("C tor's fingerprint file {0} is missing or malformed")]
    Fingerprint(PathBuf),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> TestnetError {
    move |source| TestnetError::Io { what, source }
}

/// A running `tor` process with its own temporary directory; killed (and the directory
/// removed) on drop, its log printed if the thread is panicking.
#[derive(Debug)]
pub struct CTor {
    child: Child,
    dir: tempfile::TempDir,
    label: String,
}

impl CTor {
    /// Runs `tor` with no torrc, a fresh private data directory, notices logged to a file, and
    /// `args`. `label` names it in the log dump.
    pub fn spawn(label: &str, args: &[&str]) -> Result<Self, TestnetError> {
        let dir = tempfile::Builder::new()
            .prefix("chive-ctor-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let log = fs::File::create(dir.path().join("tor.log"))
            .map_err(io_err("creating tor's log file"))?;
        let log2 = log.try_clone().map_err(io_err("duplicating a file"))?;
        let data_dir = dir.path().join("data");
        fs::create_dir(&data_dir).map_err(io_err("creating tor's data directory"))?;
        set_private(&data_dir)?;
        let spawned = Command::new("tor")
            // No torrc at all: /etc/tor/torrc must not leak in.
            .args(["-f", "/dev/null", "--defaults-torrc", "/dev/null"])
            .arg("--ignore-missing-torrc")
            .arg("--DataDirectory")
            .arg(&data_dir)
            .args(["--SocksPort", "0", "--Log", "notice stderr"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(TestnetError::TorMissing),
            Err(source) => {
                return Err(TestnetError::Io {
                    what: "running tor",
                    source,
                })
            }
        };
        Ok(CTor {
            child,
            dir,
            label: label.to_string(),
        })
    }

    /// A C tor client whose only way into the network is a bridge at `bridge`: it opens a TLS
    /// connection there at once, which makes it a TLS client for a test server to observe.
    pub fn client_via_bridge(label: &str, bridge: SocketAddr) -> Result<Self, TestnetError> {
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

    /// Its process id (for /proc/PID accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// The options that make a C tor relay with no consensus an exit to `127.0.0.1:port` only:
/// `ExitRelay 1`, private addresses allowed (`ExitPolicyRejectPrivate 0`), an exit policy of
/// that one address and port, `RefuseUnknownExits 0` (an exit refuses, with END MISC, streams
/// on circuits whose previous hop is not a relay in its consensus, and there is none), and DNS
/// self-tests off (with no network they would fail, and an exit whose DNS looks broken refuses
/// streams).
pub fn exit_options(port: u16) -> Vec<String> {
    [
        "--ExitRelay",
        "1",
        "--ExitPolicyRejectPrivate",
        "0",
        "--ExitPolicy",
        &format!("accept 127.0.0.1:{port},reject *:*"),
        "--RefuseUnknownExits",
        "0",
        "--ServerDNSDetectHijacking",
        "0",
        "--ServerDNSAllowBrokenConfig",
        "1",
    ]
    .map(String::from)
    .to_vec()
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
    /// Waits until its ORPort accepts TCP and its fingerprint files exist.
    pub fn start(nickname: &str, extra: &[&str]) -> Result<Self, TestnetError> {
        let mut last = None;
        // The port is free when we look, but another process may take it before tor binds it.
        for _ in 0..3 {
            let port = free_port().map_err(io_err("finding a free port"))?;
            match Self::try_start(nickname, port, extra) {
                Ok(relay) => return Ok(relay),
                Err(e @ (TestnetError::TorMissing | TestnetError::Io { .. })) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(TestnetError::NotReady {
            reason: "no attempt".into(),
            log: String::new(),
        }))
    }

    /// Starts a relay like [`CTorRelay::start`] that is also an exit to `127.0.0.1:port` and
    /// nowhere else ([`exit_options`]), with `extra` options appended.
    pub fn start_exit(nickname: &str, port: u16, extra: &[&str]) -> Result<Self, TestnetError> {
        let exit = exit_options(port);
        let mut args: Vec<&str> = exit.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        Self::start(nickname, &args)
    }

    fn try_start(nickname: &str, port: u16, extra: &[&str]) -> Result<Self, TestnetError> {
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
            tor: CTor::spawn(nickname, &args)?,
            or_addr,
            nickname: nickname.to_string(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = relay.tor.exited() {
                return Err(TestnetError::NotReady {
                    reason: format!("tor exited with {status}"),
                    log: relay.log(),
                });
            }
            let listening =
                TcpStream::connect_timeout(&relay.or_addr, Duration::from_millis(500)).is_ok();
            // The ORPort opens before tor writes its fingerprint files.
            if listening && relay.rsa_fingerprint().is_ok() {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                return Err(TestnetError::NotReady {
                    reason: format!("not ready after {START_TIMEOUT:?}"),
                    log: relay.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where its ORPort listens.
    pub fn or_addr(&self) -> SocketAddr {
        self.or_addr
    }

    /// Its data directory (its keys are under `keys/`).
    pub fn data_dir(&self) -> PathBuf {
        self.tor.data_dir()
    }

    /// Its nickname.
    pub fn nickname(&self) -> &str {
        &self.nickname
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.tor.pid()
    }

    /// Its RSA identity fingerprint (40 upper-case hex digits), from `<datadir>/fingerprint`.
    pub fn rsa_fingerprint(&self) -> Result<String, TestnetError> {
        let path = self.data_dir().join("fingerprint");
        read_fingerprint(&path, &self.nickname).ok_or(TestnetError::Fingerprint(path))
    }

    /// Its ed25519 identity (unpadded base64), from `<datadir>/fingerprint-ed25519`.
    pub fn ed25519_fingerprint(&self) -> Result<String, TestnetError> {
        let path = self.data_dir().join("fingerprint-ed25519");
        read_fingerprint(&path, &self.nickname).ok_or(TestnetError::Fingerprint(path))
    }

    /// Everything tor has logged so far.
    pub fn log(&self) -> String {
        self.tor.log()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.tor.exited()
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
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// tor refuses a data directory that others can read.
fn set_private(dir: &Path) -> Result<(), TestnetError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err("making tor's data directory private"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_lines() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else {
            panic!("no temporary directory");
        };
        let p = dir.path().join("fingerprint");
        assert_eq!(read_fingerprint(&p, "nick"), None);
        fs::write(&p, "nick ABCDEF\n").ok();
        assert_eq!(read_fingerprint(&p, "nick"), Some("ABCDEF".into()));
        assert_eq!(read_fingerprint(&p, "other"), None);
        fs::write(&p, "nick ").ok();
        assert_eq!(read_fingerprint(&p, "nick"), None);
    }
}
