//! Interoperability of our certificate code with C tor's.
//!
//! `ctor_key_files` runs the installed C tor (`tor --list-fingerprint`) to make a fresh set of
//! relay keys, loads them with [`RelayKeys::load`], then checks that we parse and verify its
//! `keys/ed25519_signing_cert` against its master key, re-create that certificate byte for byte
//! with our encoder and tor's own master key, compute the same RSA and ed25519 fingerprints,
//! and build a CERTS set from its keys that validates. It fails, saying how to install it, where
//! `tor` is not installed. (`ctor_keys.rs` covers the key files themselves.)
//!
//! `ctor_captured_certs_cell` needs no tor: it validates a CERTS cell captured from a C tor
//! 0.4.9 relay (`tests/data/ctor-0.4.9-certs-cell.bin`, with the relay's TLS certificate and
//! the capture time beside it; see `tests/data/README.md`), and re-creates its type-5 and
//! type-7 certificates byte for byte from the relay's keys.
//!
//! `openssl_accepts_our_identity_cert` has OpenSSL (which C tor uses for X.509) parse the
//! identity certificate [`RelayKeys::identity_certs`] makes and verify its self-signature;
//! fails where `openssl` is missing.
#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::{tor_available, tor_list_fingerprint, unix_now, TempDir};
use proto::cert::{CertKeyType, CertType, Ed25519Cert};
use proto::certs_cell::{check_initiator_certs, check_responder_certs};
use proto::chan_msg::Certs;
use proto::ids::RsaIdentity;
use proto::key_file::{self, TAG_SIGNING};
use proto::keys::RelayKeys;
use proto::rsa_crosscert::RsaCrosscert;
use proto::x509::{tls_cert_digest, RsaIdCert};
use rand::{rngs::StdRng, SeedableRng};
use rsa::pkcs1::DecodeRsaPrivateKey;

#[test]
fn ctor_key_files() {
    assert!(
        tor_available(),
        "C tor is required for this interop test: apt-get install -y tor"
    );
    let scratch = TempDir::new("certs-key-files");
    let dir = scratch.path().join("data");
    let printed_rsa = tor_list_fingerprint(&dir, "chivecerts", "rsa");
    let keys = RelayKeys::load(&dir).unwrap();
    let master_vk = *keys.ed25519_master().public();
    let master_pub = master_vk.to_bytes();
    let cert_bytes = keys.signing_cert().to_vec();

    // Parse and verify, both with the key given and with the key from the extension.
    let unchecked = Ed25519Cert::decode(&cert_bytes).unwrap();
    let body = unchecked.peek().clone();
    assert_eq!(body.cert_type, CertType::IDENTITY_V_SIGNING);
    assert_eq!(body.signing_key_ext(), Some(&master_pub));
    let now = unix_now();
    let cert = unchecked
        .clone()
        .check_signature(Some(&master_vk))
        .unwrap()
        .check_expiry(now)
        .unwrap();
    assert_eq!(cert.signed_by(), &master_vk);
    assert!(unchecked.check_signature(None).is_ok());

    // Our encoder gives back tor's bytes, signature included (ed25519 is deterministic).
    let mut ours = Vec::new();
    body.sign_and_encode(keys.ed25519_master(), &mut ours)
        .unwrap();
    assert_eq!(ours, cert_bytes);

    // A flipped signature bit fails.
    let mut bad = cert_bytes.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(Ed25519Cert::decode(&bad)
        .unwrap()
        .check_signature(Some(&master_vk))
        .is_err());

    // Fingerprints as tor computes them.
    assert_eq!(keys.fingerprint().spaced_hex(), printed_rsa);
    let fp = std::fs::read(dir.join(key_file::FINGERPRINT)).unwrap();
    assert_eq!(
        key_file::parse_fingerprint_file(&fp).unwrap().1,
        keys.fingerprint()
    );
    let fp_ed = std::fs::read(dir.join(key_file::FINGERPRINT_ED25519)).unwrap();
    assert_eq!(
        key_file::parse_fingerprint_ed25519_file(&fp_ed).unwrap().1,
        keys.ed25519_identity()
    );

    // A full CERTS set made from tor's keys validates in both roles.
    let ids = keys
        .identity_certs(now, &mut StdRng::seed_from_u64(1))
        .unwrap();
    assert_eq!(ids.id_signing, cert_bytes);
    let signing = keys.ed25519_signing();
    let tls = [0x5a; 32];
    let resp = ids.responder_certs(signing, &tls, now + 86400).unwrap();
    let peer = check_responder_certs(resp.certs(), &tls, now).unwrap();
    assert_eq!(peer.rsa_identity, keys.fingerprint());
    assert_eq!(peer.ed25519_identity, keys.ed25519_identity());
    let init = ids.initiator_certs(signing, &[3; 32], now + 86400).unwrap();
    assert_eq!(check_initiator_certs(init.certs(), now).unwrap().peer, peer);
}

#[test]
fn ctor_captured_certs_cell() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let body = std::fs::read(data.join("ctor-0.4.9-certs-cell.bin")).unwrap();
    let tls_cert = std::fs::read(data.join("ctor-0.4.9-tls-cert.der")).unwrap();
    let now: u64 = std::fs::read_to_string(data.join("ctor-0.4.9-capture-time.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let certs = Certs::decode(&body).unwrap();
    let mut again = Vec::new();
    certs.encode(&mut again).unwrap();
    assert_eq!(again, body);
    let entries: Vec<(u8, &[u8])> = certs
        .certs
        .iter()
        .map(|e| (e.cert_type.0, e.body.as_slice()))
        .collect();
    // C tor as responder sends its legacy link certificate (1) too.
    assert_eq!(
        entries.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![1, 2, 4, 5, 7]
    );
    let peer = check_responder_certs(&certs, &tls_digest(&tls_cert), now).unwrap();

    // The identities agree with each certificate taken alone.
    let id_cert = RsaIdCert::decode(entries[1].1)
        .unwrap()
        .check_signature()
        .unwrap()
        .check_expiry(now)
        .unwrap();
    assert_eq!(peer.rsa_identity, id_cert.identity());
    let expected_fp = std::fs::read_to_string(data.join("ctor-0.4.9-fingerprint.txt")).unwrap();
    assert_eq!(
        peer.rsa_identity.hex(),
        expected_fp.split_whitespace().nth(1).unwrap()
    );
    let cross = RsaCrosscert::decode(entries[4].1).unwrap();
    assert_eq!(cross.peek().ed25519_key, peer.ed25519_identity);

    // The type-5 certificate: C tor 0.4.9 labels its key as a SHA-256 of an X.509 cert.
    let link = Ed25519Cert::decode(entries[3].1).unwrap();
    assert_eq!(link.peek().key_type, CertKeyType::SHA256_OF_X509);
    let mut again = Vec::new();
    link.peek().encode_unsigned(&mut again).unwrap();
    assert_eq!(&again[..], &entries[3].1[..entries[3].1.len() - 64]);

    // With the relay's own keys, our encoders re-create its type-5 and type-7 certificates
    // byte for byte: the same layout, and deterministic ed25519 and PKCS#1 v1.5 signatures.
    let pem = std::fs::read_to_string(data.join("ctor-0.4.9-secret_id_key")).unwrap();
    let rsa = rsa::RsaPrivateKey::from_pkcs1_pem(pem.trim_end_matches('\0')).unwrap();
    assert_eq!(
        RsaIdentity::from_rsa_public_key(&rsa.to_public_key()),
        peer.rsa_identity
    );
    let mut cc = Vec::new();
    cross
        .peek()
        .sign_and_encode(&rsa, &mut StdRng::seed_from_u64(2), &mut cc)
        .unwrap();
    assert_eq!(cc, entries[4].1);
    let signing = key_file::parse_ed25519_secret_key(
        &std::fs::read(data.join("ctor-0.4.9-ed25519_signing_secret_key")).unwrap(),
        TAG_SIGNING,
    )
    .unwrap();
    assert_eq!(signing.public(), &peer.signing_key);
    let mut c5 = Vec::new();
    link.peek().sign_and_encode(&signing, &mut c5).unwrap();
    assert_eq!(c5, entries[3].1);

    // A flipped bit in any signature C tor made is caught.
    for i in [1, 2, 3, 4] {
        let mut flipped = certs.clone();
        *flipped.certs[i].body.last_mut().unwrap() ^= 1;
        assert_eq!(
            check_responder_certs(&flipped, &tls_digest(&tls_cert), now).unwrap_err(),
            proto::cert::CertError::BadSignature(CertType(entries[i].0)),
        );
    }

    // Any other TLS certificate, or a later time, is refused.
    assert!(check_responder_certs(&certs, &[0; 32], now).is_err());
    assert!(check_responder_certs(&certs, &tls_digest(&tls_cert), now + 400 * 86400).is_err());
}

fn tls_digest(der: &[u8]) -> [u8; 32] {
    tls_cert_digest(der)
}

/// OpenSSL, which C tor uses to check X.509 certificates, parses our identity certificate and
/// verifies its self-signature.
#[test]
fn openssl_accepts_our_identity_cert() {
    let available = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        available,
        "the openssl command is required for this interop test: apt-get install -y openssl"
    );
    // The certificate `RelayKeys` makes for our CERTS cells, lifetimes and all.
    let mut rng = StdRng::seed_from_u64(99);
    let now = unix_now();
    let keys = RelayKeys::generate(now, &mut rng).unwrap();
    let der = keys.identity_certs(now, &mut rng).unwrap().rsa_id_x509;
    let scratch = TempDir::new("openssl-x509");
    let dir = scratch.path();
    let der_path = dir.join("id.der");
    let pem_path = dir.join("id.pem");
    std::fs::write(&der_path, &der).unwrap();
    let conv = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&der_path)
        .arg("-out")
        .arg(&pem_path)
        .output()
        .unwrap();
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    let verify = Command::new("openssl")
        .args(["verify", "-no-CApath", "-CAfile"])
        .arg(&pem_path)
        .arg(&pem_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
