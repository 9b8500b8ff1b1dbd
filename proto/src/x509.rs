//! The X.509 certificates of CERTS cell types 1-3, chiefly the self-signed RSA-1024 identity
//! certificate (type 2).
//!
//! tor-spec §4.2 ("CERTS cells", <https://spec.torproject.org/tor-spec/negotiating-channels.html#CERTS-cells>):
//! "The certified key in the ID certificate is a 1024-bit RSA key", "The RSA ID certificate is
//! correctly self-signed", and "All X.509 certificates above have validAfter and validUntil
//! dates". DER parsing and encoding are done by the RustCrypto `x509-cert` crate.
//!
//! C tor signs its identity certificate with sha256WithRSAEncryption and names issuer and
//! subject with a random `CN=www.<random>.com` host name; it looks at neither name, only
//! at the key, the signature and the validity period, which it accepts with some clock skew
//! ([`PAST_SLOP_SECS`], [`FUTURE_SLOP_SECS`]). We do the same.
//!
//! The TLS link certificate needs no parsing here: a type-5 certificate certifies the SHA-256
//! of its DER bytes ([`tls_cert_digest`]).

use std::str::FromStr;
use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, UtcTime};
use der::{Any, Decode, Encode};
use rand_core::CryptoRngCore;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::cert::{CertBuildError, CertError, CertType, Timebound};
use crate::ids::RsaIdentity;
use crate::keys::RsaIdentityKeypair;

/// sha256WithRSAEncryption (RFC 4055).
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// How long after its notAfter a certificate is still accepted, for peers whose clock is behind.
pub const PAST_SLOP_SECS: u64 = 2 * 24 * 60 * 60;
/// How long before its notBefore a certificate is already accepted, for peers whose clock is
/// ahead.
pub const FUTURE_SLOP_SECS: u64 = 30 * 24 * 60 * 60;

/// A peer's RSA identity, taken from a checked type-2 certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaIdCert {
    key: RsaPublicKey,
    identity: RsaIdentity,
}

/// A parsed X.509 identity certificate whose self-signature has not been checked.
#[derive(Debug, Clone)]
pub struct UncheckedRsaIdCert {
    key: RsaPublicKey,
    tbs_der: Vec<u8>,
    signature: Vec<u8>,
    not_before_secs: u64,
    not_after_secs: u64,
}

/// SHA-256 of a DER certificate: what a type-5 certificate certifies.
pub fn tls_cert_digest(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Whether `der` parses as an X.509 certificate; C tor rejects a CERTS cell whose type 1-3
/// entries do not, even where it ignores them.
pub fn is_well_formed(der: &[u8]) -> bool {
    Certificate::from_der(der).is_ok()
}

/// Builds the self-signed X.509 certificate of our RSA identity key, valid from
/// `not_before_secs` to `not_after_secs` (UNIX seconds). The RNG supplies the serial number,
/// the host name and the RSA blinding.
pub fn build_rsa_identity_cert(
    key: &RsaPrivateKey,
    not_before_secs: u64,
    not_after_secs: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, CertBuildError> {
    let bad = |_| CertBuildError::X509Encoding;
    let mut serial = [0u8; 8];
    rng.fill_bytes(&mut serial);
    // A DER INTEGER serial must be positive and minimally encoded.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let name = Name::from_str(&format!("CN=www.{}.com", random_host(rng))).map_err(bad)?;
    let spki_der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|_| CertBuildError::X509Encoding)?;
    let sig_alg = AlgorithmIdentifierOwned {
        oid: SHA256_WITH_RSA,
        parameters: Some(Any::null()),
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(bad)?,
        signature: sig_alg.clone(),
        issuer: name.clone(),
        validity: Validity {
            not_before: x509_time(not_before_secs)?,
            not_after: x509_time(not_after_secs)?,
        },
        subject: name,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes())
            .map_err(bad)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: None,
    };
    let tbs_der = tbs.to_der().map_err(bad)?;
    let sig = key
        .sign_with_rng(
            rng,
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(&tbs_der),
        )
        .map_err(|_| CertBuildError::RsaSigner)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: sig_alg,
        signature: BitString::from_bytes(&sig).map_err(bad)?,
    };
    cert.to_der().map_err(bad)
}

/// A lowercase alphanumeric label of 8 to 20 characters, like C tor's certificate names.
fn random_host(rng: &mut impl CryptoRngCore) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut b = [0u8; 21];
    rng.fill_bytes(&mut b);
    let len = 8 + usize::from(b[0] % 13);
    b.iter()
        .skip(1)
        .take(len)
        .map(|x| char::from(ALPHABET[usize::from(x % 32)]))
        .collect()
}

/// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after.
fn x509_time(secs: u64) -> Result<Time, CertBuildError> {
    let d = Duration::from_secs(secs);
    let bad = |_| CertBuildError::X509Encoding;
    match UtcTime::from_unix_duration(d) {
        Ok(t) => Ok(Time::UtcTime(t)),
        Err(_) => Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(d).map_err(bad)?,
        )),
    }
}

impl RsaIdCert {
    /// Parses a type-2 certificate and checks its key is RSA-1024 with exponent 65537.
    pub fn decode(der: &[u8]) -> Result<UncheckedRsaIdCert, CertError> {
        let malformed = CertError::X509Malformed(CertType::RSA_ID_X509);
        let cert = Certificate::from_der(der).map_err(|_| malformed)?;
        let tbs = &cert.tbs_certificate;
        if cert.signature_algorithm.oid != SHA256_WITH_RSA || tbs.signature.oid != SHA256_WITH_RSA {
            return Err(CertError::X509SignatureAlgorithm);
        }
        let spki_der = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|_| malformed)?;
        let key = RsaPublicKey::from_public_key_der(&spki_der).map_err(|_| CertError::BadRsaKey)?;
        if key.n().bits() != RsaIdentityKeypair::BITS
            || key.e() != &BigUint::from(RsaIdentityKeypair::EXPONENT)
        {
            return Err(CertError::BadRsaKey);
        }
        let signature = cert.signature.as_bytes().ok_or(malformed)?.to_vec();
        Ok(UncheckedRsaIdCert {
            key,
            // The der crate only accepts canonical DER, so re-encoding gives the signed bytes.
            tbs_der: tbs.to_der().map_err(|_| malformed)?,
            signature,
            not_before_secs: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after_secs: tbs.validity.not_after.to_unix_duration().as_secs(),
        })
    }

    /// The RSA identity key.
    pub fn key(&self) -> &RsaPublicKey {
        &self.key
    }

    /// The identity (fingerprint) of the key.
    pub fn identity(&self) -> RsaIdentity {
        self.identity
    }
}

/// Decodes arbitrary bytes as an RSA identity certificate and checks its self-signature; for
/// fuzzing.
pub fn fuzz_decode_rsa_id_cert(der: &[u8]) {
    if let Ok(c) = RsaIdCert::decode(der) {
        let _ = c.check_signature();
    }
}

impl UncheckedRsaIdCert {
    /// The key the certificate claims, not yet trustworthy.
    pub fn peek_key(&self) -> &RsaPublicKey {
        &self.key
    }

    /// Checks the self-signature. The lifetime returned includes Tor's clock-skew slop.
    pub fn check_signature(self) -> Result<Timebound<RsaIdCert>, CertError> {
        self.key
            .verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(&self.tbs_der),
                &self.signature,
            )
            .map_err(|_| CertError::BadSignature(CertType::RSA_ID_X509))?;
        let identity = RsaIdentity::from_rsa_public_key(&self.key);
        Ok(Timebound::new(
            RsaIdCert {
                key: self.key,
                identity,
            },
            CertType::RSA_ID_X509,
            Some(self.not_before_secs.saturating_sub(FUTURE_SLOP_SECS)),
            self.not_after_secs.saturating_add(PAST_SLOP_SECS),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use crate::rsa_crosscert::tests::rsa_key;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    const NB: u64 = 1_700_000_000;
    const NA: u64 = NB + 365 * 86400;

    fn build(which: usize) -> Vec<u8> {
        build_rsa_identity_cert(rsa_key(which), NB, NA, &mut StdRng::seed_from_u64(5)).unwrap()
    }

    #[test]
    fn build_parse_verify() {
        let der = build(0);
        let got = RsaIdCert::decode(&der)
            .unwrap()
            .check_signature()
            .unwrap()
            .check_expiry(NB + 10)
            .unwrap();
        assert_eq!(got.key(), &rsa_key(0).to_public_key());
        assert_eq!(
            got.identity(),
            RsaIdentity::from_rsa_public_key(&rsa_key(0).to_public_key())
        );
        let cert = Certificate::from_der(&der).unwrap();
        assert_eq!(cert.tbs_certificate.issuer, cert.tbs_certificate.subject);
        assert_eq!(cert.tbs_certificate.version, Version::V3);
    }

    #[test]
    fn lifetime_with_slop() {
        let tb = RsaIdCert::decode(&build(0))
            .unwrap()
            .check_signature()
            .unwrap();
        assert!(tb.clone().check_expiry(NB - FUTURE_SLOP_SECS).is_ok());
        assert!(tb.clone().check_expiry(NA + PAST_SLOP_SECS).is_ok());
        assert_eq!(
            tb.clone()
                .check_expiry(NB - FUTURE_SLOP_SECS - 1)
                .unwrap_err(),
            CertError::NotYetValid(CertType::RSA_ID_X509)
        );
        assert_eq!(
            tb.check_expiry(NA + PAST_SLOP_SECS + 1).unwrap_err(),
            CertError::Expired(CertType::RSA_ID_X509)
        );
    }

    #[test]
    fn far_future_uses_generalized_time() {
        let der =
            build_rsa_identity_cert(rsa_key(0), NB, 2_600_000_000, &mut StdRng::seed_from_u64(5))
                .unwrap();
        let tb = RsaIdCert::decode(&der).unwrap().check_signature().unwrap();
        assert_eq!(tb.not_after_secs(), 2_600_000_000 + PAST_SLOP_SECS);
    }

    #[test]
    fn tampered_signature() {
        let mut der = build(0);
        let n = der.len();
        der[n - 5] ^= 1;
        assert_eq!(
            RsaIdCert::decode(&der)
                .unwrap()
                .check_signature()
                .unwrap_err(),
            CertError::BadSignature(CertType::RSA_ID_X509)
        );
    }

    #[test]
    fn wrong_key_size() {
        let mut rng = StdRng::seed_from_u64(11);
        let small = RsaPrivateKey::new(&mut rng, 512).unwrap();
        let der = build_rsa_identity_cert(&small, NB, NA, &mut rng).unwrap();
        assert_eq!(RsaIdCert::decode(&der).unwrap_err(), CertError::BadRsaKey);
    }

    #[test]
    fn garbage() {
        assert_eq!(
            RsaIdCert::decode(b"\x30\x03\x02\x01\x01").unwrap_err(),
            CertError::X509Malformed(CertType::RSA_ID_X509)
        );
        assert!(!is_well_formed(b""));
        assert!(is_well_formed(&build(1)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            fuzz_decode_rsa_id_cert(&bytes);
        }

        #[test]
        fn decode_mutated_never_panics(i in 0usize..600, x in 1u8..) {
            let mut der = build(0);
            let n = der.len();
            der[i % n] ^= x;
            fuzz_decode_rsa_id_cert(&der);
        }
    }
}
