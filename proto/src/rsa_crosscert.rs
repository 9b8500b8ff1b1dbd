//! The RSA-to-ed25519 cross-certificate: CERTS cell entry type 7.
//!
//! cert-spec §2.3 ("RSA->Ed25519 cross-certificate",
//! <https://spec.torproject.org/cert-spec.html#rsa-cross-cert>):
//!
//! ```text
//!   ED25519_KEY      [32 bytes]
//!   EXPIRATION_DATE  [4 bytes]   hours since the epoch
//!   SIGLEN           [1 byte]
//!   SIGNATURE        [SIGLEN bytes]
//! ```
//!
//! SIGNATURE is an RSA PKCS#1 v1.5 signature by the RSA identity key over
//! `SHA256("Tor TLS RSA/Ed25519 cross-certificate" | ED25519_KEY | EXPIRATION_DATE)`, with no
//! DigestInfo wrapper around the digest (Tor's "checksig" convention) and no NUL after the
//! prefix.

use rand_core::CryptoRngCore;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::cert::{CertBuildError, CertError, CertType, Timebound};
use crate::codec::{Reader, Writer};
use crate::ids::Ed25519Identity;

/// The personalisation prefix hashed before the certificate body.
pub const CROSSCERT_PREFIX: &[u8] = b"Tor TLS RSA/Ed25519 cross-certificate";

/// A cross-certificate: "this ed25519 identity acts with the authority of the RSA key that
/// signed it". Sent by relays in CERTS cells, both as responder and as authenticating initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsaCrosscert {
    /// ED25519_KEY: the certified ed25519 identity.
    pub ed25519_key: Ed25519Identity,
    /// EXPIRATION_DATE, in hours since the UNIX epoch.
    pub expiration_hours: u32,
}

/// A decoded cross-certificate whose RSA signature has not been checked.
#[derive(Debug, Clone)]
pub struct UncheckedRsaCrosscert {
    body: RsaCrosscert,
    digest: [u8; 32],
    signature: Vec<u8>,
}

impl RsaCrosscert {
    /// The digest the RSA key signs.
    fn digest(body: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(CROSSCERT_PREFIX);
        h.update(body);
        h.finalize().into()
    }

    /// Writes the certificate signed by `key`. The RNG blinds the RSA operation.
    pub fn sign_and_encode(
        &self,
        key: &RsaPrivateKey,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<u8>,
    ) -> Result<(), CertBuildError> {
        let mut body = Vec::with_capacity(36);
        body.put(self.ed25519_key.as_bytes());
        body.put_u32(self.expiration_hours);
        let sig = key
            .sign_with_rng(rng, Pkcs1v15Sign::new_unprefixed(), &Self::digest(&body))
            .map_err(|_| CertBuildError::RsaSigner)?;
        let siglen = u8::try_from(sig.len()).map_err(|_| CertBuildError::RsaSigner)?;
        out.put(&body);
        out.put_u8(siglen);
        out.put(&sig);
        Ok(())
    }

    /// Parses a cross-certificate; trailing bytes after SIGNATURE are an error.
    pub fn decode(bytes: &[u8]) -> Result<UncheckedRsaCrosscert, CertError> {
        let mut r = Reader::new(bytes);
        let ed25519_key = Ed25519Identity::from_bytes(r.take_array()?);
        let expiration_hours = r.u32()?;
        let body = bytes.get(..r.consumed()).unwrap_or_default();
        let digest = Self::digest(body);
        let signature = r.u8_prefixed()?.to_vec();
        r.should_be_exhausted()?;
        Ok(UncheckedRsaCrosscert {
            body: RsaCrosscert {
                ed25519_key,
                expiration_hours,
            },
            digest,
            signature,
        })
    }
}

/// Decodes arbitrary bytes as a cross-certificate; for fuzzing.
pub fn fuzz_decode_rsa_crosscert(bytes: &[u8]) {
    let _ = RsaCrosscert::decode(bytes).map(|c| *c.peek());
}

impl UncheckedRsaCrosscert {
    /// The contents, not yet trustworthy.
    pub fn peek(&self) -> &RsaCrosscert {
        &self.body
    }

    /// Checks the RSA signature with the identity key `key`.
    pub fn check_signature(self, key: &RsaPublicKey) -> Result<Timebound<RsaCrosscert>, CertError> {
        key.verify(
            Pkcs1v15Sign::new_unprefixed(),
            &self.digest,
            &self.signature,
        )
        .map_err(|_| CertError::BadSignature(CertType::RSA_ID_V_IDENTITY))?;
        let not_after = u64::from(self.body.expiration_hours) * 3600;
        Ok(Timebound::new(
            self.body,
            CertType::RSA_ID_V_IDENTITY,
            None,
            not_after,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
pub(crate) mod tests {
    use super::*;
    use crate::codec::CodecError;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};
    use std::sync::OnceLock;

    /// RSA-1024 keys are slow to generate in debug builds; tests share two.
    pub(crate) fn rsa_key(which: usize) -> &'static RsaPrivateKey {
        static KEYS: OnceLock<[RsaPrivateKey; 2]> = OnceLock::new();
        &KEYS.get_or_init(|| {
            let mut rng = StdRng::seed_from_u64(7);
            [
                RsaPrivateKey::new_with_exp(&mut rng, 1024, &65537u32.into()).unwrap(),
                RsaPrivateKey::new_with_exp(&mut rng, 1024, &65537u32.into()).unwrap(),
            ]
        })[which]
    }

    fn sample() -> (RsaCrosscert, Vec<u8>) {
        let cc = RsaCrosscert {
            ed25519_key: Ed25519Identity::from_bytes([0x42; 32]),
            expiration_hours: 480_000,
        };
        let mut out = Vec::new();
        cc.sign_and_encode(rsa_key(0), &mut StdRng::seed_from_u64(1), &mut out)
            .unwrap();
        (cc, out)
    }

    #[test]
    fn round_trip_and_verify() {
        let (cc, bytes) = sample();
        assert_eq!(bytes.len(), 32 + 4 + 1 + 128);
        assert_eq!(bytes[36], 128);
        let u = RsaCrosscert::decode(&bytes).unwrap();
        assert_eq!(u.peek(), &cc);
        let got = u
            .check_signature(&rsa_key(0).to_public_key())
            .unwrap()
            .check_expiry(480_000 * 3600)
            .unwrap();
        assert_eq!(got, cc);
    }

    #[test]
    fn signature_is_unprefixed_pkcs1_over_prefixed_digest() {
        let (_, bytes) = sample();
        // Recover the signed block by hand: m = s^e mod n, then strip 00 01 FF.. 00.
        use rsa::traits::PublicKeyParts;
        let pk = rsa_key(0).to_public_key();
        let s = rsa::BigUint::from_bytes_be(&bytes[37..]);
        let m = s.modpow(pk.e(), pk.n()).to_bytes_be();
        // to_bytes_be drops the leading 00.
        assert_eq!(m[0], 1);
        let zero = m.iter().position(|&b| b == 0).unwrap();
        assert!(m[1..zero].iter().all(|&b| b == 0xff));
        let mut h = Sha256::new();
        h.update(b"Tor TLS RSA/Ed25519 cross-certificate");
        h.update(&bytes[..36]);
        assert_eq!(&m[zero + 1..], &h.finalize()[..]);
    }

    #[test]
    fn failures() {
        let (_, bytes) = sample();
        assert_eq!(
            RsaCrosscert::decode(&bytes)
                .unwrap()
                .check_signature(&rsa_key(1).to_public_key())
                .unwrap_err(),
            CertError::BadSignature(CertType::RSA_ID_V_IDENTITY)
        );
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(
            RsaCrosscert::decode(&bad)
                .unwrap()
                .check_signature(&rsa_key(0).to_public_key())
                .unwrap_err(),
            CertError::BadSignature(CertType::RSA_ID_V_IDENTITY)
        );
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(RsaCrosscert::decode(&bad)
            .unwrap()
            .check_signature(&rsa_key(0).to_public_key())
            .is_err());
        assert_eq!(
            RsaCrosscert::decode(&bytes)
                .unwrap()
                .check_signature(&rsa_key(0).to_public_key())
                .unwrap()
                .check_expiry(480_000 * 3600 + 1)
                .unwrap_err(),
            CertError::Expired(CertType::RSA_ID_V_IDENTITY)
        );
        let mut long = bytes.clone();
        long.push(9);
        assert_eq!(
            RsaCrosscert::decode(&long).unwrap_err(),
            CertError::Decode(CodecError::TrailingBytes(1))
        );
        assert_eq!(
            RsaCrosscert::decode(&bytes[..100]).unwrap_err(),
            CertError::Decode(CodecError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_decode_rsa_crosscert(&bytes);
        }

        #[test]
        fn encode_decode_identity(key in any::<[u8; 32]>(), exp in any::<u32>(), sig in proptest::collection::vec(any::<u8>(), 0..=255)) {
            let mut bytes = Vec::new();
            bytes.put(&key);
            bytes.put_u32(exp);
            bytes.put_u8_prefixed(&sig, "sig").unwrap();
            let u = RsaCrosscert::decode(&bytes).unwrap();
            prop_assert_eq!(u.peek(), &RsaCrosscert { ed25519_key: Ed25519Identity::from_bytes(key), expiration_hours: exp });
            prop_assert_eq!(&u.signature, &sig);
        }
    }
}
