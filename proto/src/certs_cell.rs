//! Validating a peer's CERTS cell, and making ours.
//!
//! tor-spec §4.2 ("CERTS cells",
//! <https://spec.torproject.org/tor-spec/negotiating-channels.html#CERTS-cells>), the lists
//! "To authenticate the responder as having a given Ed25519,RSA identity key combination" and
//! "To authenticate the initiator as having a given Ed25519,RSA identity key combination".
//!
//! The cell framing (N, then CertType/CLEN/Certificate) is [`Certs`]; this module checks a
//! decoded [`Certs`] and builds ours as one.
//!
//! | type | what                                   | responder sends | initiator sends |
//! |------|----------------------------------------|-----------------|-----------------|
//! | 2    | RSA-1024 identity, self-signed X.509   | yes             | yes             |
//! | 4    | ed25519 identity -> signing key        | yes             | yes             |
//! | 5    | signing key -> SHA-256 of TLS cert     | yes             |                 |
//! | 6    | signing key -> link-auth key           |                 | yes             |
//! | 7    | RSA identity -> ed25519 identity       | yes             | yes             |
//!
//! Types 1 and 3 (legacy RSA link and auth certificates) are not needed once the ed25519
//! certificates are present; C tor 0.4.9 ignores them then, but still rejects a cell in which
//! they are not parseable X.509, and so do we. Entries of unknown types are ignored.

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use rand_core::CryptoRngCore;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::cert::{Cert, CertBuildError, CertError, CertKeyType, CertType, Ed25519Cert};
use crate::chan_msg::{CertEntry, Certs};
use crate::ids::{Ed25519Identity, RsaIdentity};
use crate::rsa_crosscert::RsaCrosscert;
use crate::x509::{self, RsaIdCert};

/// What a successfully validated CERTS cell proves about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The legacy identity: SHA-1 of the RSA identity key.
    pub rsa_identity: RsaIdentity,
    /// The RSA identity key itself: AUTHENTICATE cells hash it (tor-spec §4.4, CID and SID).
    pub rsa_identity_key: RsaPublicKey,
    /// The ed25519 identity.
    pub ed25519_identity: Ed25519Identity,
    /// The ed25519 signing key certified by the identity (cert type 4).
    pub signing_key: VerifyingKey,
}

/// What an authenticating initiator's CERTS cell proves: its identity and the key that must
/// sign its AUTHENTICATE cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorIdentity {
    /// The initiator's identities.
    pub peer: PeerIdentity,
    /// The link-authentication key certified by the signing key (cert type 6). Not checked to be
    /// a valid point here; AUTHENTICATE verification will fail if it is not.
    pub link_auth_key: [u8; 32],
}

/// The certificates of a CERTS cell, at most one of each known type.
#[derive(Default)]
struct Sorted<'a> {
    by_type: [Option<&'a [u8]>; 8],
}

impl<'a> Sorted<'a> {
    fn new(certs: &'a Certs) -> Result<Self, CertError> {
        let mut s = Sorted::default();
        for entry in &certs.certs {
            let t = entry.cert_type;
            // Type 0 is unassigned and types above 7 are unknown: ignored, like C tor does.
            let Some(slot) = s.by_type.get_mut(usize::from(t.0)).filter(|_| t.0 != 0) else {
                continue;
            };
            if slot.is_some() {
                return Err(CertError::DuplicateCert(t));
            }
            *slot = Some(entry.body.as_slice());
        }
        for t in [CertType::TLS_LINK_X509, CertType::LINK_AUTH_X509] {
            if let Some(der) = s.get(t) {
                if !x509::is_well_formed(der) {
                    return Err(CertError::X509Malformed(t));
                }
            }
        }
        Ok(s)
    }

    fn get(&self, t: CertType) -> Option<&'a [u8]> {
        self.by_type.get(usize::from(t.0)).copied().flatten()
    }

    fn require(&self, t: CertType) -> Result<&'a [u8], CertError> {
        self.get(t).ok_or(CertError::MissingCert(t))
    }

    /// Decodes the ed25519 certificate of type `t` and checks it is labelled as such.
    fn ed_cert(
        &self,
        t: CertType,
        key: Option<&VerifyingKey>,
        now: u64,
    ) -> Result<Cert, CertError> {
        let u = Ed25519Cert::decode(self.require(t)?)?;
        if u.peek().cert_type != t {
            return Err(CertError::WrongCertType(t));
        }
        u.check_signature(key)?.check_expiry(now)
    }
}

/// Checks the identity certificates common to both roles (types 2, 4 and 7) and returns the
/// identities and the signing key.
fn check_identity(s: &Sorted<'_>, now: u64) -> Result<PeerIdentity, CertError> {
    let rsa = RsaIdCert::decode(s.require(CertType::RSA_ID_X509)?)?
        .check_signature()?
        .check_expiry(now)?;
    // With no key given, the check uses the signed-with-ed25519-key extension and fails with
    // MissingSigningKey without it: the identity is the key that extension names.
    let id_signing = s.ed_cert(CertType::IDENTITY_V_SIGNING, None, now)?;
    let ed25519_identity = Ed25519Identity::from_bytes(id_signing.signed_by().to_bytes());
    let signing_key = id_signing.certified_ed25519_key()?;
    let cross = RsaCrosscert::decode(s.require(CertType::RSA_ID_V_IDENTITY)?)?
        .check_signature(rsa.key())?
        .check_expiry(now)?;
    if cross.ed25519_key != ed25519_identity {
        return Err(CertError::IdentityMismatch);
    }
    Ok(PeerIdentity {
        rsa_identity: rsa.identity(),
        rsa_identity_key: rsa.key().clone(),
        ed25519_identity,
        signing_key,
    })
}

/// Validates the CERTS cell a responder sent us, the initiator.
///
/// `tls_cert_sha256` is the SHA-256 of the DER certificate the responder presented in the TLS
/// handshake ([`x509::tls_cert_digest`]); `now` is UNIX seconds.
pub fn check_responder_certs(
    certs: &Certs,
    tls_cert_sha256: &[u8; 32],
    now: u64,
) -> Result<PeerIdentity, CertError> {
    let s = Sorted::new(certs)?;
    let peer = check_identity(&s, now)?;
    let link = s.ed_cert(CertType::SIGNING_V_TLS_CERT, Some(&peer.signing_key), now)?;
    if link.certified_key() != tls_cert_sha256 {
        return Err(CertError::TlsCertMismatch);
    }
    Ok(peer)
}

/// Validates the CERTS cell an initiator sent us, the responder, when it authenticates.
///
/// This proves only which keys the initiator claims; it has proved it holds them once its
/// AUTHENTICATE cell, signed by `link_auth_key`, checks out.
pub fn check_initiator_certs(certs: &Certs, now: u64) -> Result<InitiatorIdentity, CertError> {
    let s = Sorted::new(certs)?;
    let peer = check_identity(&s, now)?;
    let auth = s.ed_cert(CertType::SIGNING_V_LINK_AUTH, Some(&peer.signing_key), now)?;
    Ok(InitiatorIdentity {
        link_auth_key: *auth.certified_key(),
        peer,
    })
}

/// Decodes arbitrary bytes as a CERTS cell body and runs both validators; for fuzzing.
pub fn fuzz_check_certs(bytes: &[u8]) {
    if let Ok(certs) = Certs::decode(bytes) {
        let _ = check_responder_certs(&certs, &[0; 32], 1_700_000_000);
        let _ = check_initiator_certs(&certs, 1_700_000_000);
    }
}

/// The long-lived certificates a relay presents in every CERTS cell, in either role: the RSA
/// identity X.509 certificate (type 2), identity-to-signing (type 4) and the RSA
/// cross-certificate (type 7). Made when the signing key rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityCerts {
    /// Type 2, DER.
    pub rsa_id_x509: Vec<u8>,
    /// Type 4.
    pub id_signing: Vec<u8>,
    /// Type 7.
    pub rsa_crosscert: Vec<u8>,
}

/// Lifetimes of our certificates, in UNIX seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertLifetimes {
    /// notBefore of the X.509 identity certificate.
    pub x509_not_before: u64,
    /// notAfter of the X.509 identity certificate.
    pub x509_not_after: u64,
    /// Expiry of the identity-to-signing certificate.
    pub id_signing_expiry: u64,
    /// Expiry of the RSA cross-certificate.
    pub crosscert_expiry: u64,
}

/// Seconds to whole hours, rounding down so a certificate never outlives the time asked for.
fn hours(secs: u64) -> u32 {
    u32::try_from(secs / 3600).unwrap_or(u32::MAX)
}

impl IdentityCerts {
    /// Makes the certificates for our keys. `master` signs with the ed25519 identity key
    /// `master_public`.
    pub fn build(
        rsa_identity: &RsaPrivateKey,
        master: &impl Signer<Signature>,
        master_public: &Ed25519Identity,
        signing_public: &Ed25519Identity,
        lifetimes: &CertLifetimes,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, CertBuildError> {
        let rsa_id_x509 = x509::build_rsa_identity_cert(
            rsa_identity,
            lifetimes.x509_not_before,
            lifetimes.x509_not_after,
            rng,
        )?;
        let mut id_signing = Vec::new();
        Ed25519Cert::new(
            CertType::IDENTITY_V_SIGNING,
            hours(lifetimes.id_signing_expiry),
            CertKeyType::ED25519_KEY,
            *signing_public.as_bytes(),
        )
        .with_signing_key(*master_public.as_bytes())
        .sign_and_encode(master, &mut id_signing)?;
        let mut rsa_crosscert = Vec::new();
        RsaCrosscert {
            ed25519_key: *master_public,
            expiration_hours: hours(lifetimes.crosscert_expiry),
        }
        .sign_and_encode(rsa_identity, rng, &mut rsa_crosscert)?;
        Ok(IdentityCerts {
            rsa_id_x509,
            id_signing,
            rsa_crosscert,
        })
    }

    /// Our CERTS entries as a responder: types 2, 4, 5 and 7, with a type-5 certificate for the
    /// TLS certificate whose SHA-256 is `tls_cert_sha256`, signed by `signing` and expiring at
    /// `expiry` (UNIX seconds).
    pub fn responder_certs(
        &self,
        signing: &impl Signer<Signature>,
        tls_cert_sha256: &[u8; 32],
        expiry: u64,
    ) -> Result<OurCerts, CertBuildError> {
        let link = Ed25519Cert::new(
            CertType::SIGNING_V_TLS_CERT,
            hours(expiry),
            CertKeyType::SHA256_OF_X509,
            *tls_cert_sha256,
        );
        self.with(link, signing)
    }

    /// Our CERTS entries as an authenticating initiator: types 2, 4, 6 and 7, with a type-6
    /// certificate for `link_auth_public`, signed by `signing` and expiring at `expiry`.
    pub fn initiator_certs(
        &self,
        signing: &impl Signer<Signature>,
        link_auth_public: &[u8; 32],
        expiry: u64,
    ) -> Result<OurCerts, CertBuildError> {
        let auth = Ed25519Cert::new(
            CertType::SIGNING_V_LINK_AUTH,
            hours(expiry),
            CertKeyType::ED25519_KEY,
            *link_auth_public,
        );
        self.with(auth, signing)
    }

    /// The long-lived certificates plus `short`, the per-role one, signed by `signing`.
    fn with(
        &self,
        short: Ed25519Cert,
        signing: &impl Signer<Signature>,
    ) -> Result<OurCerts, CertBuildError> {
        let short_type = short.cert_type;
        let mut short_body = Vec::new();
        short.sign_and_encode(signing, &mut short_body)?;
        let entry = |cert_type, body: &Vec<u8>| CertEntry {
            cert_type,
            body: body.clone(),
        };
        Ok(OurCerts {
            certs: Certs {
                certs: vec![
                    entry(CertType::RSA_ID_X509, &self.rsa_id_x509),
                    entry(CertType::IDENTITY_V_SIGNING, &self.id_signing),
                    entry(short_type, &short_body),
                    entry(CertType::RSA_ID_V_IDENTITY, &self.rsa_crosscert),
                ],
            },
        })
    }
}

/// The CERTS cell we send, its entries in ascending type order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurCerts {
    certs: Certs,
}

impl OurCerts {
    /// The cell body, ready to encode (as [`crate::chan_msg::ChanMsg::Certs`]).
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    /// The cell body, owned.
    pub fn into_certs(self) -> Certs {
        self.certs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use crate::cert::CertExt;
    use crate::rsa_crosscert::tests::rsa_key;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    const NOW: u64 = 1_750_000_000;
    const TLS: [u8; 32] = [0xAB; 32];
    const AUTH: [u8; 32] = [0xCD; 32];

    struct Keys {
        master: SigningKey,
        signing: SigningKey,
    }

    fn keys() -> Keys {
        Keys {
            master: SigningKey::from_bytes(&[1; 32]),
            signing: SigningKey::from_bytes(&[2; 32]),
        }
    }

    fn lifetimes() -> CertLifetimes {
        CertLifetimes {
            x509_not_before: NOW - 86400,
            x509_not_after: NOW + 365 * 86400,
            id_signing_expiry: NOW + 30 * 86400,
            crosscert_expiry: NOW + 365 * 86400,
        }
    }

    fn identity(k: &Keys) -> IdentityCerts {
        IdentityCerts::build(
            rsa_key(0),
            &k.master,
            &Ed25519Identity::from_bytes(k.master.verifying_key().to_bytes()),
            &Ed25519Identity::from_bytes(k.signing.verifying_key().to_bytes()),
            &lifetimes(),
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap()
    }

    fn owned(c: &OurCerts) -> Vec<(u8, Vec<u8>)> {
        c.certs()
            .certs
            .iter()
            .map(|e| (e.cert_type.0, e.body.clone()))
            .collect()
    }

    fn refs(v: &[(u8, Vec<u8>)]) -> Certs {
        Certs {
            certs: v
                .iter()
                .map(|(t, b)| CertEntry {
                    cert_type: CertType(*t),
                    body: b.clone(),
                })
                .collect(),
        }
    }

    fn responder() -> Vec<(u8, Vec<u8>)> {
        let k = keys();
        owned(
            &identity(&k)
                .responder_certs(&k.signing, &TLS, NOW + 2 * 86400)
                .unwrap(),
        )
    }

    fn initiator() -> Vec<(u8, Vec<u8>)> {
        let k = keys();
        owned(
            &identity(&k)
                .initiator_certs(&k.signing, &AUTH, NOW + 2 * 86400)
                .unwrap(),
        )
    }

    fn expected() -> PeerIdentity {
        let k = keys();
        PeerIdentity {
            rsa_identity: RsaIdentity::from_rsa_public_key(&rsa_key(0).to_public_key()),
            rsa_identity_key: rsa_key(0).to_public_key(),
            ed25519_identity: Ed25519Identity::from_bytes(k.master.verifying_key().to_bytes()),
            signing_key: k.signing.verifying_key(),
        }
    }

    fn resp(v: &[(u8, Vec<u8>)]) -> Result<PeerIdentity, CertError> {
        check_responder_certs(&refs(v), &TLS, NOW)
    }

    fn init(v: &[(u8, Vec<u8>)]) -> Result<InitiatorIdentity, CertError> {
        check_initiator_certs(&refs(v), NOW)
    }

    fn replace(v: &mut [(u8, Vec<u8>)], t: u8, body: Vec<u8>) {
        v.iter_mut().find(|(tt, _)| *tt == t).unwrap().1 = body;
    }

    fn body(v: &[(u8, Vec<u8>)], t: u8) -> Vec<u8> {
        v.iter().find(|(tt, _)| *tt == t).unwrap().1.clone()
    }

    #[test]
    fn responder_set_validates() {
        let v = responder();
        assert_eq!(
            v.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![2, 4, 5, 7]
        );
        assert_eq!(resp(&v).unwrap(), expected());
        // A responder's set is not an initiator's.
        assert_eq!(
            init(&v).unwrap_err(),
            CertError::MissingCert(CertType::SIGNING_V_LINK_AUTH)
        );
    }

    #[test]
    fn initiator_set_validates() {
        let v = initiator();
        assert_eq!(
            v.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![2, 4, 6, 7]
        );
        let got = init(&v).unwrap();
        assert_eq!(got.peer, expected());
        assert_eq!(got.link_auth_key, AUTH);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::MissingCert(CertType::SIGNING_V_TLS_CERT)
        );
    }

    #[test]
    fn unknown_types_ignored_legacy_types_must_parse() {
        let mut v = responder();
        v.push((9, vec![1, 2, 3]));
        v.push((9, vec![1, 2, 3]));
        v.push((200, vec![]));
        assert!(resp(&v).is_ok());
        v.push((1, body(&v, 2)));
        assert!(resp(&v).is_ok());
        v.push((3, vec![0x30, 0]));
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::X509Malformed(CertType::LINK_AUTH_X509)
        );
    }

    #[test]
    fn tls_mismatch() {
        assert_eq!(
            check_responder_certs(&refs(&responder()), &[0xAC; 32], NOW).unwrap_err(),
            CertError::TlsCertMismatch
        );
    }

    #[test]
    fn missing_each() {
        for t in [2u8, 4, 5, 7] {
            let v: Vec<_> = responder().into_iter().filter(|(tt, _)| *tt != t).collect();
            assert_eq!(resp(&v).unwrap_err(), CertError::MissingCert(CertType(t)));
        }
        for t in [2u8, 4, 6, 7] {
            let v: Vec<_> = initiator().into_iter().filter(|(tt, _)| *tt != t).collect();
            assert_eq!(init(&v).unwrap_err(), CertError::MissingCert(CertType(t)));
        }
    }

    #[test]
    fn duplicate_each() {
        for t in [2u8, 4, 5, 7] {
            let mut v = responder();
            v.push((t, body(&v, t)));
            assert_eq!(resp(&v).unwrap_err(), CertError::DuplicateCert(CertType(t)));
        }
    }

    #[test]
    fn expired_each() {
        let v = responder();
        let i = initiator();
        // Type 5 and 6 expire first (2 days), then 4 (30 days), then X.509 and 7 (1 year,
        // X.509 with 2 more days of slop).
        let day = 86400;
        assert_eq!(
            check_responder_certs(&refs(&v), &TLS, NOW + 3 * day).unwrap_err(),
            CertError::Expired(CertType::SIGNING_V_TLS_CERT)
        );
        assert_eq!(
            check_initiator_certs(&refs(&i), NOW + 3 * day).unwrap_err(),
            CertError::Expired(CertType::SIGNING_V_LINK_AUTH)
        );
        assert_eq!(
            check_responder_certs(&refs(&v), &TLS, NOW + 31 * day).unwrap_err(),
            CertError::Expired(CertType::IDENTITY_V_SIGNING)
        );
        assert_eq!(
            check_responder_certs(&refs(&v), &TLS, NOW + 368 * day).unwrap_err(),
            CertError::Expired(CertType::RSA_ID_X509)
        );
        // Cross-certificate alone expired.
        let k = keys();
        let mut short = lifetimes();
        short.crosscert_expiry = NOW - 3600;
        let ids = IdentityCerts::build(
            rsa_key(0),
            &k.master,
            &Ed25519Identity::from_bytes(k.master.verifying_key().to_bytes()),
            &Ed25519Identity::from_bytes(k.signing.verifying_key().to_bytes()),
            &short,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
        let v = owned(&ids.responder_certs(&k.signing, &TLS, NOW + day).unwrap());
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::Expired(CertType::RSA_ID_V_IDENTITY)
        );
        // X.509 not yet valid, even with 30 days of slop.
        assert_eq!(
            check_responder_certs(&refs(&responder()), &TLS, NOW - 32 * day).unwrap_err(),
            CertError::NotYetValid(CertType::RSA_ID_X509)
        );
    }

    #[test]
    fn tampered_signature_each() {
        for t in [2u8, 4, 5, 7] {
            let mut v = responder();
            let mut b = body(&v, t);
            let n = b.len();
            b[n - 3] ^= 0x10;
            replace(&mut v, t, b);
            assert_eq!(
                resp(&v).unwrap_err(),
                CertError::BadSignature(CertType(t)),
                "type {t}"
            );
        }
        let mut v = initiator();
        let mut b = body(&v, 6);
        let n = b.len();
        b[n - 3] ^= 0x10;
        replace(&mut v, 6, b);
        assert_eq!(
            init(&v).unwrap_err(),
            CertError::BadSignature(CertType::SIGNING_V_LINK_AUTH)
        );
    }

    #[test]
    fn wrong_keys() {
        let k = keys();
        // Type 5 signed by a key other than the certified signing key.
        let mut v = responder();
        let mut link = Vec::new();
        Ed25519Cert::new(
            CertType::SIGNING_V_TLS_CERT,
            hours(NOW + 86400),
            CertKeyType::SHA256_OF_X509,
            TLS,
        )
        .sign_and_encode(&k.master, &mut link)
        .unwrap();
        replace(&mut v, 5, link);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::BadSignature(CertType::SIGNING_V_TLS_CERT)
        );
        // Type 7 signed by a different RSA key than type 2's.
        let mut v = responder();
        let mut cc = Vec::new();
        RsaCrosscert {
            ed25519_key: Ed25519Identity::from_bytes(k.master.verifying_key().to_bytes()),
            expiration_hours: hours(NOW + 86400),
        }
        .sign_and_encode(rsa_key(1), &mut StdRng::seed_from_u64(1), &mut cc)
        .unwrap();
        replace(&mut v, 7, cc);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::BadSignature(CertType::RSA_ID_V_IDENTITY)
        );
        // Type 4 names an identity but is signed by another key.
        let mut v = responder();
        let mut c4 = Vec::new();
        Ed25519Cert::new(
            CertType::IDENTITY_V_SIGNING,
            hours(NOW + 86400),
            CertKeyType::ED25519_KEY,
            k.signing.verifying_key().to_bytes(),
        )
        .with_signing_key(k.master.verifying_key().to_bytes())
        .sign_and_encode(&SigningKey::from_bytes(&[7; 32]), &mut c4)
        .unwrap();
        replace(&mut v, 4, c4);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::BadSignature(CertType::IDENTITY_V_SIGNING)
        );
    }

    #[test]
    fn identity_mismatch() {
        // A well-signed cross-certificate for another ed25519 identity.
        let mut v = responder();
        let mut cc = Vec::new();
        RsaCrosscert {
            ed25519_key: Ed25519Identity::from_bytes([9; 32]),
            expiration_hours: hours(NOW + 86400),
        }
        .sign_and_encode(rsa_key(0), &mut StdRng::seed_from_u64(1), &mut cc)
        .unwrap();
        replace(&mut v, 7, cc);
        assert_eq!(resp(&v).unwrap_err(), CertError::IdentityMismatch);
    }

    #[test]
    fn type4_without_signing_key_extension() {
        let k = keys();
        let mut v = responder();
        let mut c4 = Vec::new();
        Ed25519Cert::new(
            CertType::IDENTITY_V_SIGNING,
            hours(NOW + 86400),
            CertKeyType::ED25519_KEY,
            k.signing.verifying_key().to_bytes(),
        )
        .sign_and_encode(&k.master, &mut c4)
        .unwrap();
        replace(&mut v, 4, c4);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::MissingSigningKey(CertType::IDENTITY_V_SIGNING)
        );
    }

    #[test]
    fn unknown_critical_extension() {
        let k = keys();
        let mut v = responder();
        let mut cert = Ed25519Cert::new(
            CertType::SIGNING_V_TLS_CERT,
            hours(NOW + 86400),
            CertKeyType::SHA256_OF_X509,
            TLS,
        );
        cert.extensions.push(CertExt::Unrecognized {
            ext_type: 0x55,
            flags: 1,
            data: vec![0],
        });
        let mut c5 = Vec::new();
        cert.sign_and_encode(&k.signing, &mut c5).unwrap();
        replace(&mut v, 5, c5);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::UnknownCriticalExtension(0x55)
        );
    }

    #[test]
    fn mislabelled_cert_type() {
        // A valid type-6 certificate placed in the type-5 slot.
        let mut v = responder();
        replace(&mut v, 5, body(&initiator(), 6));
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::WrongCertType(CertType::SIGNING_V_TLS_CERT)
        );
    }

    /// Our responder CERTS goes through the whole wire path: a `ChanCell`, its bytes, the
    /// framing decoder, and validation of what comes out.
    #[test]
    fn responder_certs_cell_encodes_decodes_and_validates() {
        use crate::cell::CircIdLen;
        use crate::chan_msg::{ChanCell, ChanMsg};

        let k = keys();
        let ours = identity(&k)
            .responder_certs(&k.signing, &TLS, NOW + 2 * 86400)
            .unwrap();
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Certs(ours.certs().clone()),
        };
        let mut wire = Vec::new();
        cell.encode(CircIdLen::Four, &mut wire).unwrap();
        // CircID 0, command 129, a u16 length, then N = 4.
        assert_eq!(wire[..5], [0, 0, 0, 0, 129]);
        assert_eq!(
            usize::from(u16::from_be_bytes([wire[5], wire[6]])),
            wire.len() - 7
        );
        assert_eq!(wire[7], 4);

        let (decoded, used) = ChanCell::decode_from(&wire, CircIdLen::Four)
            .unwrap()
            .unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(decoded, cell);
        let ChanMsg::Certs(certs) = decoded.msg else {
            panic!("a CERTS cell decodes as CERTS");
        };
        assert_eq!(certs, ours.clone().into_certs());
        assert_eq!(
            check_responder_certs(&certs, &TLS, NOW).unwrap(),
            expected()
        );
        // The same cell does not prove an initiator: it has no type-6 certificate.
        assert_eq!(
            check_initiator_certs(&certs, NOW).unwrap_err(),
            CertError::MissingCert(CertType::SIGNING_V_LINK_AUTH)
        );
        // And the fuzz entry point, fed the body, validates it too (without panicking).
        fuzz_check_certs(&wire[7..]);
    }

    #[test]
    fn garbage_bodies() {
        let mut v = responder();
        replace(&mut v, 2, vec![1, 2, 3]);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::X509Malformed(CertType::RSA_ID_X509)
        );
        let mut v = responder();
        replace(&mut v, 7, vec![1, 2, 3]);
        assert_eq!(
            resp(&v).unwrap_err(),
            CertError::Decode(crate::codec::CodecError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            fuzz_check_certs(&bytes);
        }

        #[test]
        fn mutated_set_never_panics(t in 0usize..4, i in 0usize..400, x in 1u8..) {
            let mut v = responder();
            let n = v[t].1.len();
            v[t].1[i % n] ^= x;
            let _ = resp(&v);
        }
    }
}
