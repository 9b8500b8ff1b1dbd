//! Key files against the real C tor (`/usr/bin/tor`, 0.4.9).
//!
//! 1. C tor creates a data directory (`tor --list-fingerprint`); chive loads every key file and
//!    must derive the fingerprint and ed25519 identity tor printed and wrote.
//! 2. chive writes a data directory; `tor --list-fingerprint` on it must print chive's identities
//!    and leave chive's key files untouched (so it accepted all of them, the signing key and its
//!    certificate included).
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer as _, Verifier as _, VerifyingKey};
use proto::key_file::{self, KEYS_DIR};
use proto::keys::{Ed25519Keypair, RelayKeys};

const NICK: &str = "chivetest";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("chive-ctor-keys-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `tor --list-fingerprint [kind]` on `data_dir` and returns the identity it prints for
/// our nickname (the spaced hex RSA fingerprint, or the base64 ed25519 identity).
fn tor_list_fingerprint(scratch: &Path, data_dir: &Path, kind: &str) -> String {
    // An empty torrc: /etc/tor/torrc must not leak into the test.
    let torrc = scratch.join("torrc");
    fs::write(&torrc, "").unwrap();
    let out = Command::new("tor")
        .arg("-f")
        .arg(&torrc)
        .arg("--defaults-torrc")
        .arg(&torrc)
        .args(["--list-fingerprint", kind])
        .arg("--DataDirectory")
        .arg(data_dir)
        .args(["--ORPort", "127.0.0.1:9999", "--Nickname", NICK])
        .args(["--Log", "err stderr"])
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
    let prefix = format!("{NICK} ");
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no fingerprint line in tor's output:\n{stdout}"))
        .to_string()
}

/// A type-4 (signing key) certificate per cert-spec §2.1, with the signed-with-ed25519-key
/// extension (type 4) tor requires, valid for 30 days. Built here because the certificate
/// builder lives in another module.
fn signing_cert(master: &Ed25519Keypair, signing: &VerifyingKey) -> Vec<u8> {
    let hours = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    let expiry = u32::try_from(hours + 30 * 24).unwrap();
    let mut c = vec![1, 4];
    c.extend_from_slice(&expiry.to_be_bytes());
    c.push(1); // CERT_KEY_TYPE: ed25519
    c.extend_from_slice(signing.as_bytes());
    c.push(1); // one extension
    c.extend_from_slice(&32u16.to_be_bytes());
    c.push(4); // signed-with-ed25519-key
    c.push(0); // flags
    c.extend_from_slice(master.public().as_bytes());
    let sig = master.sign(&c);
    c.extend_from_slice(&sig.to_bytes());
    c
}

fn read_keys_dir(data_dir: &Path) -> Vec<(String, Vec<u8>)> {
    [
        key_file::SECRET_ID_KEY,
        key_file::ED25519_MASTER_ID_SECRET_KEY,
        key_file::ED25519_MASTER_ID_PUBLIC_KEY,
        key_file::ED25519_SIGNING_SECRET_KEY,
        key_file::ED25519_SIGNING_CERT,
        key_file::SECRET_ONION_KEY_NTOR,
    ]
    .iter()
    .map(|n| {
        let bytes = fs::read(data_dir.join(KEYS_DIR).join(n))
            .unwrap_or_else(|e| panic!("reading {n}: {e}"));
        (n.to_string(), bytes)
    })
    .collect()
}

#[test]
fn chive_loads_keys_written_by_ctor() {
    let scratch = TempDir::new("from-ctor");
    let data = scratch.0.join("data");
    let rsa_printed = tor_list_fingerprint(&scratch.0, &data, "rsa");
    let ed_printed = tor_list_fingerprint(&scratch.0, &data, "ed25519");

    let keys = RelayKeys::load(&data).unwrap();
    assert_eq!(keys.fingerprint().spaced_hex(), rsa_printed);
    assert_eq!(keys.ed25519_identity().base64(), ed_printed);

    let fp = fs::read(data.join(key_file::FINGERPRINT)).unwrap();
    assert_eq!(
        key_file::parse_fingerprint_file(&fp).unwrap(),
        (NICK, keys.fingerprint())
    );
    let fp = fs::read(data.join(key_file::FINGERPRINT_ED25519)).unwrap();
    assert_eq!(
        key_file::parse_fingerprint_ed25519_file(&fp).unwrap(),
        (NICK, keys.ed25519_identity())
    );

    // Signatures made with the loaded expanded keys verify under the loaded public keys.
    for kp in [keys.ed25519_master(), keys.ed25519_signing()] {
        let sig = kp.sign(b"chive key test");
        kp.public().verify(b"chive key test", &sig).unwrap();
    }
    // C tor's signing certificate certifies our loaded signing key under our loaded master key.
    let cert = keys.signing_cert();
    assert_eq!(&cert[7..39], keys.ed25519_signing().public().as_bytes());
    let (body, sig) = cert.split_at(cert.len() - 64);
    keys.ed25519_master()
        .public()
        .verify(body, &Signature::from_slice(sig).unwrap())
        .unwrap();

    // The legacy TAP onion key has the identity key's format.
    let tap = fs::read(data.join(KEYS_DIR).join(key_file::SECRET_ONION_KEY)).unwrap();
    let tap_key = key_file::parse_rsa_secret_key(&tap).unwrap();
    let mut out = Vec::new();
    key_file::encode_rsa_secret_key(&tap_key, &mut out);
    assert_eq!(out, tap);

    // Re-encoding what we loaded gives C tor's files byte for byte.
    let before = read_keys_dir(&data);
    let copy = scratch.0.join("copy");
    keys.save(&copy).unwrap();
    assert_eq!(read_keys_dir(&copy), before);
}

#[test]
fn ctor_accepts_keys_written_by_chive() {
    let scratch = TempDir::new("from-chive");
    let data = scratch.0.join("data");
    let keys =
        RelayKeys::load_or_generate(&data, &mut rand::rngs::OsRng, signing_cert, |_, _, _| true)
            .unwrap();
    keys.write_fingerprint_files(&data, NICK).unwrap();
    let ours = read_keys_dir(&data);
    let fp_files = [
        fs::read(data.join(key_file::FINGERPRINT)).unwrap(),
        fs::read(data.join(key_file::FINGERPRINT_ED25519)).unwrap(),
    ];

    assert_eq!(
        tor_list_fingerprint(&scratch.0, &data, "rsa"),
        keys.fingerprint().spaced_hex()
    );
    assert_eq!(
        tor_list_fingerprint(&scratch.0, &data, "ed25519"),
        keys.ed25519_identity().base64()
    );
    // tor kept every key we wrote (had it disliked the signing key or its certificate, it would
    // have made new ones) and rewrote the fingerprint files with the same contents.
    assert_eq!(read_keys_dir(&data), ours);
    assert_eq!(
        fs::read(data.join(key_file::FINGERPRINT)).unwrap(),
        fp_files[0]
    );
    assert_eq!(
        fs::read(data.join(key_file::FINGERPRINT_ED25519)).unwrap(),
        fp_files[1]
    );
}
