//! The long-term and medium-term keys a relay holds.
//!
//! Spec: [tor-spec §1.1 "Keys and names"](https://spec.torproject.org/tor-spec/relay-keys.html):
//! a relay has an RSA-1024 identity key (`KP_relayid_rsa`, e = 65537), an ed25519 master
//! identity key (`KP_relayid_ed`), an ed25519 medium-term signing key (`KP_relaysign_ed`)
//! certified by the master key, and a curve25519 circuit extension ("ntor onion") key
//! (`KP_ntor`).
//!
//! Secrets are zeroized when dropped and never appear in `Debug` output. The ed25519 keys are kept
//! in the 64-byte *expanded* form (clamped scalar, then hash prefix) because that is what C tor
//! stores on disk; a key loaded from a C tor data directory therefore signs exactly as C tor would.
//!
//! [`RelayKeys`] ties the keys to what is made from them: the signing key's certificate
//! ([`make_signing_cert`], [`signing_cert_is_usable`], with C tor's lifetimes), the server keys
//! of the ntor and ntor v3 handshakes ([`RelayKeys::ntor_server_keys`],
//! [`RelayKeys::ntor_v3_server_keys`]) and the identity certificates of our CERTS cells
//! ([`RelayKeys::identity_certs`]). Reading and writing the keys to a data directory lives in
//! [`crate::key_file`].

use std::fmt;

use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::{Signature, SignatureError, Signer, VerifyingKey};
use rand_core::CryptoRngCore;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::Digest as _;
use thiserror::Error;
use x25519_dalek::{PublicKey as X25519Public, SharedSecret, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::cert::{CertBuildError, CertKeyType, CertType, Ed25519Cert};
use crate::certs_cell::{CertLifetimes, IdentityCerts};
use crate::ids::{Ed25519Identity, RsaIdentity};
use crate::kdf::HandshakeError;
use crate::ntor::NtorServerKeys;
use crate::ntor_v3::NtorV3ServerKeys;

/// Why a key could not be made or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The RSA library failed to generate a key (it only fails on RNG trouble).
    #[error("RSA key generation failed")]
    RsaGeneration,
    /// Tor identity keys are exactly 1024 bits (tor-spec §1.1); the key had this many.
    #[error("RSA identity key must be 1024 bits, found {0}")]
    RsaWrongSize(usize),
    /// Tor RSA keys use the public exponent 65537 (tor-spec §0.3).
    #[error("RSA identity key exponent must be 65537")]
    RsaWrongExponent,
    /// The data to sign does not fit in one PKCS#1 v1.5 block.
    #[error("data too long for an RSA-1024 signature")]
    RsaSignTooLong,
    /// The signing key's certificate could not be made.
    #[error("could not make the signing certificate: {0}")]
    SigningCert(CertBuildError),
}

/// A relay's RSA-1024 identity key (`KS_relayid_rsa`), e = 65537.
///
/// The secret key is zeroized on drop by the `rsa` crate.
#[derive(Clone)]
pub struct RsaIdentityKeypair {
    secret: RsaPrivateKey,
}

impl RsaIdentityKeypair {
    /// Modulus size of every Tor RSA key.
    pub const BITS: usize = 1024;
    /// The public exponent every Tor RSA key uses.
    pub const EXPONENT: u32 = 65537;

    /// Generates a fresh identity key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, KeyError> {
        let e = BigUint::from(Self::EXPONENT);
        let secret = RsaPrivateKey::new_with_exp(rng, Self::BITS, &e)
            .map_err(|_| KeyError::RsaGeneration)?;
        Self::from_private_key(secret)
    }

    /// Wraps an existing private key, refusing any that is not 1024 bits with e = 65537.
    ///
    /// `RsaPrivateKey` values are already consistency-checked by the `rsa` crate when built.
    pub fn from_private_key(secret: RsaPrivateKey) -> Result<Self, KeyError> {
        let bits = secret.n().bits();
        if bits != Self::BITS {
            return Err(KeyError::RsaWrongSize(bits));
        }
        if *secret.e() != BigUint::from(Self::EXPONENT) {
            return Err(KeyError::RsaWrongExponent);
        }
        Ok(RsaIdentityKeypair { secret })
    }

    /// The private key, for encoding into a key file.
    pub(crate) fn private_key(&self) -> &RsaPrivateKey {
        &self.secret
    }

    /// The public key.
    pub fn public_key(&self) -> RsaPublicKey {
        self.secret.to_public_key()
    }

    /// The relay's legacy identity ("fingerprint"): SHA-1 of the DER public key.
    pub fn identity(&self) -> RsaIdentity {
        RsaIdentity::from_rsa_public_key(&self.public_key())
    }

    /// Signs `digest` the way Tor does: PKCS#1 v1.5 type-1 padding around the raw digest, with
    /// no ASN.1 `DigestInfo` prefix. This is dir-spec §2.1.1's "signature of the PKCS1-padded
    /// hash" (`router-signature`), and the RSA half of the CERTS cell's RSA->ed25519
    /// cross-certificate (cert-spec §2.3). Returns the 128-byte signature.
    pub fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.secret
            .sign(Pkcs1v15Sign::new_unprefixed(), digest)
            .map_err(|_| KeyError::RsaSignTooLong)
    }
}

impl fmt::Debug for RsaIdentityKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaIdentityKeypair")
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

/// The 64 expanded-secret bytes exactly as read or generated, kept so that writing a loaded key
/// back gives the same file.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct ExpandedBytes([u8; 64]);

/// An ed25519 keypair kept in expanded form: the master identity key or the signing key.
///
/// Implements [`Signer`], so `keypair.sign(msg)` gives a standard ed25519 signature.
pub struct Ed25519Keypair {
    bytes: ExpandedBytes,
    expanded: ExpandedSecretKey,
    public: VerifyingKey,
}

impl Ed25519Keypair {
    /// Length of the expanded secret key.
    pub const EXPANDED_LEN: usize = 64;

    /// Generates a keypair from a random 32-byte seed, expanded as RFC 8032 §5.1.5 does:
    /// SHA-512 of the seed, first half clamped.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Expands a 32-byte RFC 8032 secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut h = Zeroizing::new([0u8; 64]);
        h.copy_from_slice(&sha2::Sha512::digest(seed));
        h[0] &= 248;
        h[31] &= 127;
        h[31] |= 64;
        Self::from_expanded_bytes(&h)
    }

    /// Uses 64 expanded-secret bytes (scalar, then hash prefix) as they are.
    ///
    /// Unlike `ExpandedSecretKey::from_bytes`, the scalar is not clamped again: C tor signs with
    /// the stored scalar as it is, and so must we to give the same public key for any file.
    pub fn from_expanded_bytes(bytes: &[u8; 64]) -> Self {
        let mut scalar = Zeroizing::new([0u8; 32]);
        let mut hash_prefix = [0u8; 32];
        scalar.copy_from_slice(&bytes[..32]);
        hash_prefix.copy_from_slice(&bytes[32..]);
        let expanded = ExpandedSecretKey {
            scalar: curve25519_dalek::Scalar::from_bytes_mod_order(*scalar),
            hash_prefix,
        };
        hash_prefix.zeroize();
        let public = VerifyingKey::from(&expanded);
        Ed25519Keypair {
            bytes: ExpandedBytes(*bytes),
            expanded,
            public,
        }
    }

    /// The expanded secret bytes, for writing a key file.
    pub(crate) fn expanded_bytes(&self) -> &[u8; 64] {
        &self.bytes.0
    }

    /// The public key.
    pub fn public(&self) -> &VerifyingKey {
        &self.public
    }

    /// The public key as an identity.
    pub fn identity(&self) -> Ed25519Identity {
        Ed25519Identity::from_bytes(self.public.to_bytes())
    }
}

impl Clone for Ed25519Keypair {
    fn clone(&self) -> Self {
        Self::from_expanded_bytes(&self.bytes.0)
    }
}

impl Signer<Signature> for Ed25519Keypair {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, SignatureError> {
        Ok(raw_sign::<sha2::Sha512>(&self.expanded, msg, &self.public))
    }
}

impl fmt::Debug for Ed25519Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Keypair")
            .field("public", &self.identity())
            .finish_non_exhaustive()
    }
}

/// A curve25519 keypair used as a Diffie-Hellman "onion" key: a relay's circuit extension key
/// for the ntor and ntor v3 handshakes (`KP_ntor`), and also an onion service's introduction
/// encryption key (`KP_hss_ntor`) in the hs-ntor handshake.
///
/// The servers of [`crate::ntor`], [`crate::ntor_v3`] and [`crate::hs_ntor`] all take this type.
#[derive(Clone)]
pub struct NtorOnionKeypair {
    secret: StaticSecret,
    public: X25519Public,
}

impl NtorOnionKeypair {
    /// Generates a keypair. The secret is stored clamped, as C tor stores it, so the key file
    /// we write looks like one C tor writes.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(b.as_mut());
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Self::from_secret_bytes(*b)
    }

    /// Uses 32 secret bytes as they are (X25519 clamps when it multiplies), so a key file or
    /// test vector written unclamped keeps its exact bytes.
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }

    /// Wraps a secret key, deriving its public half.
    pub fn from_secret(secret: StaticSecret) -> Self {
        let public = X25519Public::from(&secret);
        NtorOnionKeypair { secret, public }
    }

    /// The secret key, for the server side of the handshake.
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// The public key, as published in descriptors (`ntor-onion-key`).
    pub fn public(&self) -> &X25519Public {
        &self.public
    }

    /// EXP(pk, b) with this key, refusing the all-zero output of a small-order point.
    pub(crate) fn dh(&self, pk: &X25519Public) -> Result<SharedSecret, HandshakeError> {
        crate::ntor::checked_dh(&self.secret, pk)
    }
}

impl fmt::Debug for NtorOnionKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NtorOnionKeypair")
            .field("public", &hex::encode(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// The keys a relay holds while it runs.
///
/// The signing certificate (a type-4 ed25519 cert, `KP_relaysign_ed` signed by
/// `KP_relayid_ed`, cert-spec §2.1) is kept as the encoded bytes, exactly as stored in
/// `ed25519_signing_cert` and sent in CERTS cells; [`make_signing_cert`] makes one and
/// [`signing_cert_is_usable`] checks one.
#[derive(Debug, Clone)]
pub struct RelayKeys {
    rsa_identity: RsaIdentityKeypair,
    ed25519_master: Ed25519Keypair,
    ed25519_signing: Ed25519Keypair,
    signing_cert: Vec<u8>,
    ntor_onion: NtorOnionKeypair,
}

impl RelayKeys {
    /// Assembles a key set from its parts. Whether `signing_cert` really certifies
    /// `ed25519_signing` under `ed25519_master` is the caller's to check.
    pub fn from_parts(
        rsa_identity: RsaIdentityKeypair,
        ed25519_master: Ed25519Keypair,
        ed25519_signing: Ed25519Keypair,
        signing_cert: Vec<u8>,
        ntor_onion: NtorOnionKeypair,
    ) -> Self {
        RelayKeys {
            rsa_identity,
            ed25519_master,
            ed25519_signing,
            signing_cert,
            ntor_onion,
        }
    }

    /// Generates a complete new key set at `now` (UNIX seconds), with a signing key certified
    /// for [`SIGNING_KEY_LIFETIME_SECS`] by [`make_signing_cert`].
    pub fn generate(now: u64, rng: &mut impl CryptoRngCore) -> Result<Self, KeyError> {
        let rsa_identity = RsaIdentityKeypair::generate(rng)?;
        let ed25519_master = Ed25519Keypair::generate(rng);
        let ed25519_signing = Ed25519Keypair::generate(rng);
        let signing_cert = make_signing_cert(
            &ed25519_master,
            ed25519_signing.public(),
            now,
            SIGNING_KEY_LIFETIME_SECS,
        )?;
        let ntor_onion = NtorOnionKeypair::generate(rng);
        Ok(Self::from_parts(
            rsa_identity,
            ed25519_master,
            ed25519_signing,
            signing_cert,
            ntor_onion,
        ))
    }

    /// The RSA identity fingerprint.
    pub fn fingerprint(&self) -> RsaIdentity {
        self.rsa_identity.identity()
    }

    /// The ed25519 identity (the master public key).
    pub fn ed25519_identity(&self) -> Ed25519Identity {
        self.ed25519_master.identity()
    }

    /// The RSA identity key.
    pub fn rsa_identity(&self) -> &RsaIdentityKeypair {
        &self.rsa_identity
    }

    /// The ed25519 master identity key.
    pub fn ed25519_master(&self) -> &Ed25519Keypair {
        &self.ed25519_master
    }

    /// The ed25519 medium-term signing key.
    pub fn ed25519_signing(&self) -> &Ed25519Keypair {
        &self.ed25519_signing
    }

    /// The encoded certificate of the signing key.
    pub fn signing_cert(&self) -> &[u8] {
        &self.signing_cert
    }

    /// The ntor onion key.
    pub fn ntor_onion(&self) -> &NtorOnionKeypair {
        &self.ntor_onion
    }

    /// Replaces the signing key and its certificate (when the old certificate nears expiry).
    pub fn set_signing_key(&mut self, signing: Ed25519Keypair, cert: Vec<u8>) {
        self.ed25519_signing = signing;
        self.signing_cert = cert;
    }

    /// Replaces the ntor onion key (on rotation).
    pub fn set_ntor_onion(&mut self, ntor: NtorOnionKeypair) {
        self.ntor_onion = ntor;
    }

    /// Whether the signing certificate may still be used at `now`: see
    /// [`signing_cert_is_usable`]. When it is not, the relay should rotate its signing key.
    pub fn signing_cert_is_usable(&self, now: u64) -> bool {
        signing_cert_is_usable(
            &self.signing_cert,
            self.ed25519_master.public(),
            self.ed25519_signing.public(),
            now,
        )
    }

    /// The ntor (CREATE2 type 2) server keys: our RSA identity and current onion key, plus
    /// `previous`, the onion key we rotated away from, while clients may still use it.
    pub fn ntor_server_keys(&self, previous: Option<NtorOnionKeypair>) -> NtorServerKeys {
        NtorServerKeys {
            id: self.fingerprint(),
            current: self.ntor_onion.clone(),
            previous,
        }
    }

    /// The ntor v3 (CREATE2 type 3) server keys: our ed25519 identity and the same onion keys
    /// as [`RelayKeys::ntor_server_keys`].
    pub fn ntor_v3_server_keys(&self, previous: Option<NtorOnionKeypair>) -> NtorV3ServerKeys {
        NtorV3ServerKeys {
            id: self.ed25519_identity(),
            current: self.ntor_onion.clone(),
            previous,
        }
    }

    /// The certificates we send in every CERTS cell (types 2, 4 and 7), made at `now`.
    ///
    /// The type-4 certificate is the stored signing certificate, byte for byte, as C tor sends
    /// its `ed25519_signing_cert`; keep it usable ([`RelayKeys::signing_cert_is_usable`],
    /// `rotate_signing_key`), since this does not check it. The X.509 identity certificate starts at the beginning of the
    /// previous UTC day and lasts [`IDENTITY_CERT_LIFETIME_SECS`] (C tor also back-dates it, so
    /// a peer whose clock is a little behind still accepts it); the RSA cross-certificate lasts
    /// [`RSA_CROSSCERT_LIFETIME_SECS`].
    pub fn identity_certs(
        &self,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IdentityCerts, CertBuildError> {
        const DAY: u64 = 24 * 3600;
        let not_before = (now / DAY).saturating_sub(1).saturating_mul(DAY);
        let id_signing_expiry = Ed25519Cert::decode(&self.signing_cert)
            .map(|c| c.peek().expiry_secs())
            .unwrap_or(now);
        let mut certs = IdentityCerts::build(
            self.rsa_identity.private_key(),
            &self.ed25519_master,
            &self.ed25519_identity(),
            &self.ed25519_signing.identity(),
            &CertLifetimes {
                x509_not_before: not_before,
                x509_not_after: not_before.saturating_add(IDENTITY_CERT_LIFETIME_SECS),
                id_signing_expiry,
                crosscert_expiry: now.saturating_add(RSA_CROSSCERT_LIFETIME_SECS),
            },
            rng,
        )?;
        certs.id_signing.clone_from(&self.signing_cert);
        Ok(certs)
    }
}

/// How long a new signing key is certified for: C tor's default `SigningKeyLifetime`, 30 days.
pub const SIGNING_KEY_LIFETIME_SECS: u64 = 30 * 24 * 3600;

/// How long before its certificate expires a signing key is replaced: C tor's default
/// `TestingSigningKeySlop`, one day.
pub const SIGNING_KEY_SLOP_SECS: u64 = 24 * 3600;

/// Lifetime of the RSA-to-ed25519 cross-certificate (CERTS type 7): six 30-day months, as
/// C tor makes it (a captured C tor 0.4.9 CERTS cell shows 180 days).
pub const RSA_CROSSCERT_LIFETIME_SECS: u64 = 180 * 24 * 3600;

/// Lifetime of the self-signed X.509 RSA identity certificate (CERTS type 2): one year, as
/// C tor's.
pub const IDENTITY_CERT_LIFETIME_SECS: u64 = 365 * 24 * 3600;

/// Makes the certificate of a signing key (cert-spec §2.1, type IDENTITY_V_SIGNING) valid from
/// `now` for `lifetime_secs`, signed by `master` and naming it in the
/// signed-with-ed25519-key extension, which C tor requires on this certificate.
///
/// The expiry is rounded *up* to the next whole hour, as C tor rounds it (its certificates
/// expire just after `now + lifetime`), so a certificate never ends before the time asked for.
pub fn make_signing_cert(
    master: &Ed25519Keypair,
    signing: &VerifyingKey,
    now: u64,
    lifetime_secs: u64,
) -> Result<Vec<u8>, KeyError> {
    let expiry = now.saturating_add(lifetime_secs);
    let hours = u32::try_from(expiry.div_ceil(3600)).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    Ed25519Cert::new(
        CertType::IDENTITY_V_SIGNING,
        hours,
        CertKeyType::ED25519_KEY,
        signing.to_bytes(),
    )
    .with_signing_key(master.public().to_bytes())
    .sign_and_encode(master, &mut out)
    .map_err(KeyError::SigningCert)?;
    Ok(out)
}

/// Whether `cert` is a signing certificate we may keep using at `now`: a well-formed
/// IDENTITY_V_SIGNING certificate that certifies `signing`, carries a good signature by
/// `master`, and does not expire within [`SIGNING_KEY_SLOP_SECS`] of `now`. C tor replaces its
/// signing key under the same conditions at start-up.
pub fn signing_cert_is_usable(
    cert: &[u8],
    master: &VerifyingKey,
    signing: &VerifyingKey,
    now: u64,
) -> bool {
    let Ok(unchecked) = Ed25519Cert::decode(cert) else {
        return false;
    };
    let body = unchecked.peek();
    if body.cert_type != CertType::IDENTITY_V_SIGNING || body.certified_key != signing.to_bytes() {
        return false;
    }
    unchecked
        .check_signature(Some(master))
        .and_then(|t| t.check_expiry(now.saturating_add(SIGNING_KEY_SLOP_SECS)))
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md)
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;
    use rand::SeedableRng as _;
    use rsa::traits::PrivateKeyParts as _;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    /// RFC 8032 §7.1 TEST 2: secret seed, public key, message 0x72, signature.
    #[test]
    fn ed25519_rfc8032_vector_via_expanded_form() {
        let seed: [u8; 32] =
            hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
                .unwrap()
                .try_into()
                .unwrap();
        let kp = Ed25519Keypair::from_seed(&seed);
        assert_eq!(
            hex::encode(kp.public().as_bytes()),
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
        );
        let sig = kp.sign(&[0x72]);
        assert_eq!(
            hex::encode(sig.to_bytes()),
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        );
        // Reloading the expanded bytes signs identically.
        let again = Ed25519Keypair::from_expanded_bytes(kp.expanded_bytes());
        assert_eq!(again.sign(&[0x72]), sig);
        assert_eq!(kp.clone().identity(), kp.identity());
    }

    /// The scalar is used as stored: an expanded key whose scalar is not clamped still matches
    /// its own public key (C tor does not clamp on load either).
    #[test]
    fn ed25519_unclamped_scalar_is_used_as_is() {
        let mut b = [0x11u8; 64];
        b[31] = 0x05; // high bits clear, bit 254 clear: clamping would change the scalar
        let kp = Ed25519Keypair::from_expanded_bytes(&b);
        let clamped = ExpandedSecretKey::from_bytes(&b);
        assert_ne!(*kp.public(), VerifyingKey::from(&clamped));
        let sig = kp.sign(b"msg");
        assert!(kp.public().verify(b"msg", &sig).is_ok());
        assert_eq!(kp.expanded_bytes(), &b);
    }

    #[test]
    fn rsa_identity_signs_without_digestinfo() {
        let kp = RsaIdentityKeypair::generate(&mut rng()).unwrap();
        let digest = [0xabu8; 20];
        let sig = kp.sign_digest(&digest).unwrap();
        assert_eq!(sig.len(), 128);
        kp.public_key()
            .verify(Pkcs1v15Sign::new_unprefixed(), &digest, &sig)
            .unwrap();
        // Recover the padded block with the public exponent: 00 01 FF.. 00 digest.
        let m = BigUint::from_bytes_be(&sig).modpow(kp.public_key().e(), kp.public_key().n());
        let block = m.to_bytes_be();
        assert_eq!(block.len(), 127); // leading zero byte dropped
        assert_eq!(block[0], 1);
        assert!(block[1..106].iter().all(|b| *b == 0xff));
        assert_eq!(block[106], 0);
        assert_eq!(&block[107..], &digest);
        assert_eq!(kp.sign_digest(&[0u8; 118]), Err(KeyError::RsaSignTooLong));
        assert_eq!(
            kp.identity(),
            RsaIdentity::from_rsa_public_key(&kp.public_key())
        );
    }

    #[test]
    fn rsa_identity_rejects_other_sizes_and_exponents() {
        let mut r = rng();
        let small = RsaPrivateKey::new(&mut r, 512).unwrap();
        assert_eq!(
            RsaIdentityKeypair::from_private_key(small).unwrap_err(),
            KeyError::RsaWrongSize(512)
        );
        let e3 = RsaPrivateKey::new_with_exp(&mut r, 1024, &BigUint::from(3u32)).unwrap();
        assert_eq!(
            RsaIdentityKeypair::from_private_key(e3).unwrap_err(),
            KeyError::RsaWrongExponent
        );
    }

    #[test]
    fn ntor_generation_is_clamped_and_consistent() {
        let kp = NtorOnionKeypair::generate(&mut rng());
        let s = kp.secret().to_bytes();
        assert_eq!(s[0] & 7, 0);
        assert_eq!(s[31] & 0xc0, 0x40);
        assert_eq!(X25519Public::from(kp.secret()), *kp.public());
        let other = NtorOnionKeypair::generate(&mut rng());
        assert_eq!(
            kp.secret().diffie_hellman(other.public()).as_bytes(),
            other.secret().diffie_hellman(kp.public()).as_bytes()
        );
    }

    /// A fixed "now": 2025-06-15 15:06:40 UTC, not on an hour boundary.
    const NOW: u64 = 1_750_000_000;

    #[test]
    fn debug_output_has_no_secrets() {
        let mut r = rng();
        let keys = RelayKeys::generate(NOW, &mut r).unwrap();
        let dbg = format!("{keys:?}");
        let secrets = [
            hex::encode(&keys.ed25519_master().expanded_bytes()[..32]),
            hex::encode(&keys.ed25519_signing().expanded_bytes()[..32]),
            hex::encode(keys.ntor_onion().secret().to_bytes()),
        ];
        for s in secrets {
            assert!(!dbg.to_lowercase().contains(&s), "secret in Debug output");
        }
        assert!(!dbg.contains(&keys.rsa_identity().private_key().d().to_string()));
        assert!(dbg.contains(&keys.fingerprint().hex()));
        assert_eq!(keys.ed25519_identity(), keys.ed25519_master().identity());
    }

    /// The generated signing certificate has C tor's layout (cert-spec §2.1 with one
    /// signed-with-ed25519-key extension), C tor's rounding of the expiry, and checks out.
    #[test]
    fn generated_signing_cert_layout_and_lifetime() {
        let keys = RelayKeys::generate(NOW, &mut rng()).unwrap();
        let cert = keys.signing_cert();
        let master = keys.ed25519_master().public().to_bytes();
        let signing = keys.ed25519_signing().public().to_bytes();
        assert_eq!(cert.len(), 1 + 1 + 4 + 1 + 32 + 1 + (2 + 1 + 1 + 32) + 64);
        assert_eq!(&cert[..2], &[1, 4]);
        // NOW + 30 days is not on an hour: the expiry is the next whole hour.
        let hours = u32::from_be_bytes(cert[2..6].try_into().unwrap());
        assert_eq!(u64::from(hours), (NOW + 30 * 86400) / 3600 + 1);
        assert_eq!(cert[6], 1);
        assert_eq!(&cert[7..39], &signing);
        assert_eq!(&cert[39..44], &[1, 0, 32, 4, 0]);
        assert_eq!(&cert[44..76], &master);
        let sig = Signature::from_slice(&cert[76..]).unwrap();
        keys.ed25519_master()
            .public()
            .verify_strict(&cert[..76], &sig)
            .unwrap();
        // An expiry exactly on an hour is kept as it is.
        let on_hour = 1_749_996_000;
        let c = make_signing_cert(
            keys.ed25519_master(),
            keys.ed25519_signing().public(),
            on_hour,
            3600,
        )
        .unwrap();
        assert_eq!(u32::from_be_bytes(c[2..6].try_into().unwrap()), 486_111);
    }

    #[test]
    fn signing_cert_usability() {
        let keys = RelayKeys::generate(NOW, &mut rng()).unwrap();
        let master = keys.ed25519_master().public();
        let signing = keys.ed25519_signing().public();
        let cert = keys.signing_cert();
        assert!(keys.signing_cert_is_usable(NOW));
        // Usable until one day (the slop) before it expires.
        let expiry = ((NOW + SIGNING_KEY_LIFETIME_SECS) / 3600 + 1) * 3600;
        assert!(keys.signing_cert_is_usable(expiry - SIGNING_KEY_SLOP_SECS));
        assert!(!keys.signing_cert_is_usable(expiry - SIGNING_KEY_SLOP_SECS + 1));
        // For another key, signed by another key, tampered, truncated, or of another type.
        let other = Ed25519Keypair::generate(&mut rng());
        assert!(!signing_cert_is_usable(cert, master, other.public(), NOW));
        assert!(!signing_cert_is_usable(cert, other.public(), signing, NOW));
        let mut bad = cert.to_vec();
        bad[80] ^= 1;
        assert!(!signing_cert_is_usable(&bad, master, signing, NOW));
        assert!(!signing_cert_is_usable(&cert[..100], master, signing, NOW));
        let mut wrong_type = Vec::new();
        Ed25519Cert::new(
            CertType::SIGNING_V_LINK_AUTH,
            u32::MAX,
            CertKeyType::ED25519_KEY,
            signing.to_bytes(),
        )
        .sign_and_encode(keys.ed25519_master(), &mut wrong_type)
        .unwrap();
        assert!(!signing_cert_is_usable(&wrong_type, master, signing, NOW));
    }

    /// The server keys made from a `RelayKeys` complete handshakes with clients that know only
    /// the relay's public identities and onion key.
    #[test]
    fn handshake_server_keys_from_relay_keys() {
        let mut r = rng();
        let keys = RelayKeys::generate(NOW, &mut r).unwrap();
        let old = NtorOnionKeypair::generate(&mut r);

        let ntor_keys = keys.ntor_server_keys(Some(old.clone()));
        for pk in [*keys.ntor_onion().public(), *old.public()] {
            let relay = crate::ntor::NtorPublicKey {
                id: keys.fingerprint(),
                pk,
            };
            let (state, onionskin) = crate::ntor::client1(&mut r, &relay);
            let (reply, skeys) = crate::ntor::server(&mut r, &ntor_keys, &onionskin).unwrap();
            let ckeys = crate::ntor::client2(state, &reply).unwrap();
            assert_eq!(
                &ckeys.expand(72).unwrap()[..],
                &skeys.expand(72).unwrap()[..]
            );
        }

        let v3_keys = keys.ntor_v3_server_keys(None);
        let relay = crate::ntor_v3::NtorV3PublicKey {
            id: keys.ed25519_identity(),
            pk: *keys.ntor_onion().public(),
        };
        let ver = crate::ntor_v3::CIRCUIT_EXTEND_VERIFICATION;
        let mut onionskin = Vec::new();
        let state = crate::ntor_v3::client1(&mut r, &relay, ver, b"hi", &mut onionskin).unwrap();
        let mut reply = Vec::new();
        let (skeys, msg) = crate::ntor_v3::server(
            &mut r,
            &v3_keys,
            ver,
            &onionskin,
            |_| Some(Vec::new()),
            &mut reply,
        )
        .unwrap();
        assert_eq!(&msg[..], b"hi");
        let (_, ckeys) = crate::ntor_v3::client2(state, &reply).unwrap();
        assert_eq!(
            &ckeys.expand(72).unwrap()[..],
            &skeys.expand(72).unwrap()[..]
        );
    }

    /// Our identity certificates, with a link certificate added, pass our own CERTS-cell
    /// checks in both roles and name our identities.
    #[test]
    fn identity_certs_validate() {
        let mut r = rng();
        let keys = RelayKeys::generate(NOW, &mut r).unwrap();
        let ids = keys.identity_certs(NOW, &mut r).unwrap();
        assert_eq!(ids.id_signing, keys.signing_cert());
        let tls = [7u8; 32];
        let resp = ids
            .responder_certs(keys.ed25519_signing(), &tls, NOW + 2 * 86400)
            .unwrap();
        let peer = crate::certs_cell::check_responder_certs(resp.certs(), &tls, NOW).unwrap();
        assert_eq!(peer.rsa_identity, keys.fingerprint());
        assert_eq!(peer.ed25519_identity, keys.ed25519_identity());
        assert_eq!(&peer.signing_key, keys.ed25519_signing().public());
        let init = ids
            .initiator_certs(keys.ed25519_signing(), &[9; 32], NOW + 2 * 86400)
            .unwrap();
        let who = crate::certs_cell::check_initiator_certs(init.certs(), NOW).unwrap();
        assert_eq!(who.peer, peer);
    }
}
