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

mod common;

use std::fs;
use std::path::Path;

use common::{tor_list_fingerprint, unix_now, TempDir};
use ed25519_dalek::{Signer as _, Verifier as _};
use proto::cert::{CertType, Ed25519Cert};
use proto::key_file::{self, KEYS_DIR};
use proto::keys::{self, RelayKeys};

const NICK: &str = "chivetest";

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
    let scratch = TempDir::new("keys-from-ctor");
    let data = scratch.path().join("data");
    let rsa_printed = tor_list_fingerprint(&data, NICK, "rsa");
    let ed_printed = tor_list_fingerprint(&data, NICK, "ed25519");

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
    // C tor's signing certificate certifies our loaded signing key under our loaded master key,
    // and passes the check that decides whether we keep it.
    let now = unix_now();
    assert!(keys.signing_cert_is_usable(now));
    let cert = Ed25519Cert::decode(keys.signing_cert())
        .unwrap()
        .check_signature(Some(keys.ed25519_master().public()))
        .unwrap()
        .check_expiry(now)
        .unwrap();
    assert_eq!(cert.cert().cert_type, CertType::IDENTITY_V_SIGNING);
    assert_eq!(
        cert.certified_key(),
        keys.ed25519_signing().public().as_bytes()
    );
    // Our builder, given the same key and expiry, makes tor's certificate byte for byte.
    let expiry = u64::from(
        Ed25519Cert::decode(keys.signing_cert())
            .unwrap()
            .peek()
            .expiration_hours,
    ) * 3600;
    let ours = keys::make_signing_cert(
        keys.ed25519_master(),
        keys.ed25519_signing().public(),
        expiry - keys::SIGNING_KEY_LIFETIME_SECS,
        keys::SIGNING_KEY_LIFETIME_SECS,
    )
    .unwrap();
    assert_eq!(ours, keys.signing_cert());

    // The legacy TAP onion key has the identity key's format.
    let tap = fs::read(data.join(KEYS_DIR).join(key_file::SECRET_ONION_KEY)).unwrap();
    let tap_key = key_file::parse_rsa_secret_key(&tap).unwrap();
    let mut out = Vec::new();
    key_file::encode_rsa_secret_key(&tap_key, &mut out);
    assert_eq!(out, tap);

    // Re-encoding what we loaded gives C tor's files byte for byte.
    let before = read_keys_dir(&data);
    let copy = scratch.path().join("copy");
    keys.save(&copy).unwrap();
    assert_eq!(read_keys_dir(&copy), before);
}

#[test]
fn ctor_accepts_keys_written_by_chive() {
    let scratch = TempDir::new("keys-from-chive");
    let data = scratch.path().join("data");
    // The signing certificate comes from `cert.rs`'s builder, valid for 30 days from now.
    let keys = RelayKeys::load_or_generate(&data, unix_now(), &mut rand::rngs::OsRng).unwrap();
    keys.write_fingerprint_files(&data, NICK).unwrap();
    let ours = read_keys_dir(&data);
    let fp_files = [
        fs::read(data.join(key_file::FINGERPRINT)).unwrap(),
        fs::read(data.join(key_file::FINGERPRINT_ED25519)).unwrap(),
    ];

    assert_eq!(
        tor_list_fingerprint(&data, NICK, "rsa"),
        keys.fingerprint().spaced_hex()
    );
    assert_eq!(
        tor_list_fingerprint(&data, NICK, "ed25519"),
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
