//! Interoperability of our certificate code with C tor's.
//!
//! `ctor_key_files` runs the installed C tor (`tor --list-fingerprint`) to make a fresh set of
//! relay keys, then checks that we parse and verify its `keys/ed25519_signing_cert` against
//! `keys/ed25519_master_id_public_key`, re-create that certificate byte for byte with our
//! encoder and tor's own master key, and compute the same RSA and ed25519 fingerprints. It is
//! skipped, with a notice, where `tor` is not installed.
//!
//! `ctor_captured_certs_cell` needs no tor: it validates a CERTS cell captured from a C tor
//! 0.4.9 relay (`tests/data/ctor-0.4.9-certs-cell.bin`, with the relay's TLS certificate and
//! the capture time beside it; see `tests/data/README.md`), and re-creates its type-5 and
//! type-7 certificates byte for byte from the relay's keys.
//!
//! `openssl_accepts_our_identity_cert` has OpenSSL (which C tor uses for X.509) parse our
//! identity certificate and verify its self-signature; skipped where `openssl` is missing.
#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::{Signature, SignatureError, Signer, VerifyingKey};
use proto::cert::{CertKeyType, CertType, Ed25519Cert};
use proto::certs_cell::{
    check_initiator_certs, check_responder_certs, CertLifetimes, IdentityCerts,
};
use proto::chan_msg::Certs;
use proto::ids::{Ed25519Identity, RsaIdentity};
use proto::rsa_crosscert::RsaCrosscert;
use proto::x509::{tls_cert_digest, RsaIdCert};
use rand::{rngs::StdRng, SeedableRng};
use rsa::pkcs1::DecodeRsaPrivateKey;

/// A signer over a C tor expanded secret key (the 64-byte form tor stores on disk).
struct Expanded {
    esk: ExpandedSecretKey,
    public: VerifyingKey,
}

impl Signer<Signature> for Expanded {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignatureError> {
        Ok(raw_sign::<sha2::Sha512>(&self.esk, msg, &self.public))
    }
}

/// Reads a tor key file: a 32-byte NUL-padded `== ed25519v1-...: typeN ==` header, then the
/// body.
fn read_tagged(path: &Path, tag: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut header = format!("== ed25519v1-{tag} ==").into_bytes();
    header.resize(32, 0);
    assert_eq!(&bytes[..32], &header[..], "{}", path.display());
    bytes[32..].to_vec()
}

/// `tag` is `secret: type0` for the master key and `secret: type4` for the signing key.
fn expanded(path: &Path, tag: &str, public: VerifyingKey) -> Expanded {
    let body: [u8; 64] = read_tagged(path, tag).try_into().unwrap();
    Expanded {
        esk: ExpandedSecretKey::from_bytes(&body),
        public,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tor_available() -> bool {
    Command::new("tor")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn ctor_key_files() {
    if !tor_available() {
        println!("NOTICE: `tor` is not installed; skipping the C tor key-file interop test");
        return;
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("chive-ctor-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("tor")
        .args(["--list-fingerprint", "--ignore-missing-torrc"])
        .args(["-f", "/dev/null", "--defaults-torrc", "/dev/null"])
        .arg("--DataDirectory")
        .arg(&dir)
        .args(["--ORPort", "127.0.0.1:auto", "--SocksPort", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let keys = dir.join("keys");

    let master_pub: [u8; 32] =
        read_tagged(&keys.join("ed25519_master_id_public_key"), "public: type0")
            .try_into()
            .unwrap();
    let master_vk = VerifyingKey::from_bytes(&master_pub).unwrap();
    let cert_bytes = read_tagged(&keys.join("ed25519_signing_cert"), "cert: type4");

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
    let master = expanded(
        &keys.join("ed25519_master_id_secret_key"),
        "secret: type0",
        master_vk,
    );
    let mut ours = Vec::new();
    body.sign_and_encode(&master, &mut ours).unwrap();
    assert_eq!(ours, cert_bytes);

    // A flipped signature bit fails.
    let mut bad = cert_bytes.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(Ed25519Cert::decode(&bad)
        .unwrap()
        .check_signature(Some(&master_vk))
        .is_err());

    // Fingerprints as tor computes them.
    // Tor writes the PEM with a trailing NUL.
    let pem = std::fs::read_to_string(keys.join("secret_id_key")).unwrap();
    let rsa = rsa::RsaPrivateKey::from_pkcs1_pem(pem.trim_end_matches('\0')).unwrap();
    let rsa_id = RsaIdentity::from_rsa_public_key(&rsa.to_public_key());
    let fp = std::fs::read_to_string(dir.join("fingerprint")).unwrap();
    assert_eq!(fp.split_whitespace().nth(1).unwrap(), rsa_id.hex());
    let fp_ed = std::fs::read_to_string(dir.join("fingerprint-ed25519")).unwrap();
    assert_eq!(
        fp_ed.split_whitespace().nth(1).unwrap(),
        Ed25519Identity::from_bytes(master_pub).base64()
    );

    // A full CERTS set made from tor's keys validates in both roles.
    let signing_pub = *cert.certified_key();
    let signing = expanded(
        &keys.join("ed25519_signing_secret_key"),
        "secret: type4",
        VerifyingKey::from_bytes(&signing_pub).unwrap(),
    );
    let ids = IdentityCerts::build(
        &rsa,
        &master,
        &Ed25519Identity::from_bytes(master_pub),
        &Ed25519Identity::from_bytes(signing_pub),
        &CertLifetimes {
            x509_not_before: now - 86400,
            x509_not_after: now + 365 * 86400,
            id_signing_expiry: body.expiry_secs(),
            crosscert_expiry: now + 365 * 86400,
        },
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    // Same contents and key, so the same type-4 bytes as tor's file.
    assert_eq!(ids.id_signing, cert_bytes);
    let tls = [0x5a; 32];
    let resp = ids.responder_certs(&signing, &tls, now + 86400).unwrap();
    let peer = check_responder_certs(resp.certs(), &tls, now).unwrap();
    assert_eq!(peer.rsa_identity, rsa_id);
    assert_eq!(peer.ed25519_identity.as_bytes(), &master_pub);
    let init = ids
        .initiator_certs(&signing, &[3; 32], now + 86400)
        .unwrap();
    assert_eq!(check_initiator_certs(init.certs(), now).unwrap().peer, peer);

    let _ = std::fs::remove_dir_all(&dir);
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
    let signing = expanded(
        &data.join("ctor-0.4.9-ed25519_signing_secret_key"),
        "secret: type4",
        peer.signing_key,
    );
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
    if !available {
        println!("NOTICE: `openssl` is not installed; skipping the X.509 interop test");
        return;
    }
    let mut rng = StdRng::seed_from_u64(99);
    let key = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
    let now = unix_now();
    let der = proto::x509::build_rsa_identity_cert(&key, now - 86400, now + 365 * 86400, &mut rng)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("chive-openssl-x509-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}
