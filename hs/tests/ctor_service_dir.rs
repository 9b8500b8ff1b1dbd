//! Interop: an onion service directory written by a real C tor (`tor` on PATH) names the
//! address that chive derives from the service's public key.
//!
//! C tor creates `hs_ed25519_public_key`, `hs_ed25519_secret_key` and `hostname` when it loads a
//! `HiddenServiceDir`, even with `DisableNetwork 1`, so no network is needed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hs::onion_address::OnionAddress;
use hs::service_dir::{ServiceIdentity, HOSTNAME, PUBLIC_KEY, SECRET_KEY};
use proto::ids::Ed25519Identity;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chive-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Starts C tor with an onion service and waits for it to write the service's files.
fn ctor_service_dir(root: &Path) -> PathBuf {
    let hs_dir = root.join("hs");
    let status = Command::new("tor").arg("--version").output();
    assert!(
        status.is_ok(),
        "C tor is required for this test: apt-get install -y tor"
    );
    let child = Command::new("tor")
        .args(["--DataDirectory"])
        .arg(root.join("data"))
        .args([
            "--SocksPort",
            "0",
            "--DisableNetwork",
            "1",
            "--RunAsDaemon",
            "0",
        ])
        .args(["--Log", "warn stderr"])
        .arg("--HiddenServiceDir")
        .arg(&hs_dir)
        .args(["--HiddenServicePort", "80 127.0.0.1:9"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tor");
    let _guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hs_dir.join("hostname").exists() {
        assert!(
            Instant::now() < deadline,
            "tor did not write a hostname file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The hostname file is written last; give the write a moment to complete.
    std::thread::sleep(Duration::from_millis(200));
    hs_dir
}

#[test]
fn hostname_written_by_ctor_matches_our_derivation() {
    let root = scratch_dir("hs-addr");
    let hs_dir = ctor_service_dir(&root);

    let hostname = std::fs::read_to_string(hs_dir.join("hostname")).expect("read hostname");
    let hostname = hostname.trim_end();

    let public = std::fs::read(hs_dir.join("hs_ed25519_public_key")).expect("read public key");
    assert_eq!(public.len(), 64, "32-byte tagged header then the key");
    assert!(public.starts_with(b"== ed25519v1-public: type0 =="));
    let key: [u8; 32] = public[32..].try_into().expect("32 bytes");
    let ours = OnionAddress::from_identity(Ed25519Identity::from_bytes(key));

    assert_eq!(ours.to_string(), hostname);
    let parsed: OnionAddress = hostname.parse().expect("C tor's hostname parses");
    assert_eq!(parsed, ours);

    // chive loads C tor's service directory as it is: same identity, nothing rewritten.
    let before: Vec<Vec<u8>> = [SECRET_KEY, PUBLIC_KEY, HOSTNAME]
        .iter()
        .map(|f| std::fs::read(hs_dir.join(f)).expect("read"))
        .collect();
    let mut rng = rand::thread_rng();
    let id = ServiceIdentity::load_or_generate(&hs_dir, &mut rng).expect("load C tor's keys");
    assert_eq!(id.onion_address(), ours);
    let after: Vec<Vec<u8>> = [SECRET_KEY, PUBLIC_KEY, HOSTNAME]
        .iter()
        .map(|f| std::fs::read(hs_dir.join(f)).expect("read"))
        .collect();
    assert_eq!(before, after);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn ctor_serves_a_service_directory_written_by_chive() {
    let root = scratch_dir("hs-chive-dir");
    let hs_dir = root.join("hs");
    let mut rng = rand::thread_rng();
    let id = ServiceIdentity::load_or_generate(&hs_dir, &mut rng).expect("generate");
    let secret_before = std::fs::read(hs_dir.join(SECRET_KEY)).expect("read");
    // C tor rewrites the hostname from the key at start: remove ours to see what it derives.
    std::fs::remove_file(hs_dir.join(HOSTNAME)).expect("rm hostname");

    let served = ctor_service_dir(&root);
    assert_eq!(served, hs_dir);
    let hostname = std::fs::read_to_string(hs_dir.join(HOSTNAME)).expect("read hostname");
    assert_eq!(hostname.trim_end(), id.onion_address().to_string());
    assert_eq!(
        std::fs::read(hs_dir.join(SECRET_KEY)).expect("read"),
        secret_before,
        "C tor kept chive's secret key"
    );
    let _ = std::fs::remove_dir_all(&root);
}
