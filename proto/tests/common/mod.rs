//! Helpers shared by the C tor interop tests: scratch directories, the clock, and running the
//! installed `tor` (0.4.9) to make or read a data directory.

#![allow(dead_code)] // Each test file uses its own subset.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `name` must be unique among the tests of one binary (they run in parallel).
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("chive-ctor-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// UNIX seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether `tor` is on PATH and runs.
pub fn tor_available() -> bool {
    Command::new("tor")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `tor --list-fingerprint KIND` (`rsa` or `ed25519`) on `data_dir`, creating keys there if
/// it has none, and returns the identity it prints for `nickname`: the spaced hex RSA
/// fingerprint or the base64 ed25519 identity. Panics, with how to install tor, if it is
/// missing.
pub fn tor_list_fingerprint(data_dir: &Path, nickname: &str, kind: &str) -> String {
    // No torrc at all: /etc/tor/torrc must not leak into the test.
    let out = Command::new("tor")
        .args(["-f", "/dev/null", "--defaults-torrc", "/dev/null"])
        .args(["--ignore-missing-torrc", "--list-fingerprint", kind])
        .arg("--DataDirectory")
        .arg(data_dir)
        .args(["--ORPort", "127.0.0.1:9999", "--SocksPort", "0"])
        .args(["--Nickname", nickname, "--Log", "err stderr"])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "this test needs C tor on PATH (`tor`, version 0.4.9): install it with \
             `apt-get install tor`"
        ),
        Err(e) => panic!("could not run tor: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tor --list-fingerprint failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Start-up notices also go to stdout before the Log option is applied; the answer is the
    // line that starts with the nickname.
    let prefix = format!("{nickname} ");
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no fingerprint line in tor's output:\n{stdout}"))
        .to_string()
}
