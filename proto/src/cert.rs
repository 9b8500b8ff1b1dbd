//! Tor's compact ed25519 certificates.
//!
//! cert-spec §2.1 ("Ed25519 Certificates",
//! <https://spec.torproject.org/cert-spec.html#ed-certs>) and §2.2.1 (the
//! signed-with-ed25519-key extension):
//!
//! ```text
//!   VERSION         [1 byte]   = 01
//!   CERT_TYPE       [1 byte]   see CertType
//!   EXPIRATION_DATE [4 bytes]  hours since the epoch
//!   CERT_KEY_TYPE   [1 byte]   see CertKeyType
//!   CERTIFIED_KEY   [32 bytes]
//!   N_EXTENSIONS    [1 byte]
//!   N_EXTENSIONS times: ExtLength [2] ExtType [1] ExtFlags [1] ExtData [ExtLength]
//!   SIGNATURE       [64 bytes] ed25519, over every preceding byte (no prefix)
//! ```
//!
//! A certificate goes through two typestates before it can be trusted: [`Ed25519Cert::decode`]
//! gives an [`UncheckedCert`]; [`UncheckedCert::check_signature`] gives a [`Timebound`];
//! [`Timebound::check_expiry`] gives the [`Cert`]. The same [`Timebound`] wrapper is used by the
//! RSA cross-certificate and the X.509 identity certificate.
//!
//! This module also holds [`CertError`] (what a peer's certificates can do wrong) and
//! [`CertBuildError`] (what can go wrong making our own), shared by
//! [`crate::rsa_crosscert`], [`crate::x509`] and [`crate::certs_cell`].

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use thiserror::Error;

use crate::codec::{CodecError, Reader, Writer};

/// The kind of a certificate: the CERT_TYPE byte of an ed25519 certificate and the CertType
/// byte of a CERTS cell entry share one numbering (cert-spec §A.1, tor-spec §4.2).
///
/// An open newtype: unknown values are carried unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertType(pub u8);

impl CertType {
    /// X.509 TLS link certificate signed by the RSA identity key (CERTS only, legacy).
    pub const TLS_LINK_X509: CertType = CertType(0x01);
    /// Self-signed X.509 certificate of the RSA-1024 identity key (CERTS only).
    pub const RSA_ID_X509: CertType = CertType(0x02);
    /// X.509 RSA link-authentication certificate (CERTS only, legacy AUTHENTICATE type 1).
    pub const LINK_AUTH_X509: CertType = CertType(0x03);
    /// Ed25519 signing key certified by the ed25519 identity key.
    pub const IDENTITY_V_SIGNING: CertType = CertType(0x04);
    /// SHA-256 of the TLS link certificate, certified by the signing key.
    pub const SIGNING_V_TLS_CERT: CertType = CertType(0x05);
    /// Ed25519 link-authentication key (AUTHENTICATE type 3), certified by the signing key.
    pub const SIGNING_V_LINK_AUTH: CertType = CertType(0x06);
    /// RSA-signed cross-certificate of the ed25519 identity (format of cert-spec §2.3).
    pub const RSA_ID_V_IDENTITY: CertType = CertType(0x07);
    /// Onion service: descriptor signing key certified by the blinded key.
    pub const BLINDED_ID_V_SIGNING: CertType = CertType(0x08);
    /// Onion service: introduction point authentication key certified by the descriptor signing
    /// key.
    pub const HS_IP_V_SIGNING: CertType = CertType(0x09);
    /// ntor onion key cross-certifying the ed25519 identity.
    pub const NTOR_CC_IDENTITY: CertType = CertType(0x0A);
    /// Onion service: introduction point ntor encryption key cross-certifying the descriptor
    /// signing key.
    pub const HS_IP_CC_SIGNING: CertType = CertType(0x0B);
}

impl std::fmt::Display for CertType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What CERTIFIED_KEY holds (cert-spec §A.4). An open newtype.
///
/// Tor before 0.4.5.1-alpha wrote `ED25519_KEY` for every certificate type, so readers infer
/// the meaning from [`CertType`] and never reject a certificate for this byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertKeyType(pub u8);

impl CertKeyType {
    /// An ed25519 public key.
    pub const ED25519_KEY: CertKeyType = CertKeyType(0x01);
    /// SHA-256 of an RSA key (unused).
    pub const SHA256_OF_RSA: CertKeyType = CertKeyType(0x02);
    /// SHA-256 of an X.509 certificate (type-5 certificates).
    pub const SHA256_OF_X509: CertKeyType = CertKeyType(0x03);
}

/// ExtType of the signed-with-ed25519-key extension (cert-spec §2.2.1).
pub const EXT_SIGNED_WITH_ED25519_KEY: u8 = 0x04;
/// ExtFlags bit: a reader that does not understand the extension must reject the certificate.
pub const EXT_FLAG_AFFECTS_VALIDATION: u8 = 0x01;

const SIG_LEN: usize = ed25519_dalek::SIGNATURE_LENGTH;

/// One certificate extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertExt {
    /// The key that signed this certificate (cert-spec §2.2.1); it must match the key used to
    /// check the signature.
    SignedWithEd25519Key {
        /// The signing key.
        key: [u8; 32],
        /// ExtFlags as received, kept so the certificate re-encodes byte for byte.
        flags: u8,
    },
    /// An extension this implementation does not know.
    Unrecognized {
        /// ExtType.
        ext_type: u8,
        /// ExtFlags.
        flags: u8,
        /// ExtData.
        data: Vec<u8>,
    },
}

/// The contents of an ed25519 certificate, without its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ed25519Cert {
    /// CERT_TYPE.
    pub cert_type: CertType,
    /// EXPIRATION_DATE, in hours since the UNIX epoch.
    pub expiration_hours: u32,
    /// CERT_KEY_TYPE.
    pub key_type: CertKeyType,
    /// CERTIFIED_KEY: a public key or a digest, depending on `cert_type`.
    pub certified_key: [u8; 32],
    /// The extensions, in wire order.
    pub extensions: Vec<CertExt>,
}

/// A decoded certificate whose signature has not been checked yet; its contents must not be
/// trusted.
#[derive(Debug, Clone)]
pub struct UncheckedCert {
    cert: Ed25519Cert,
    /// The bytes the signature covers, exactly as received.
    signed: Vec<u8>,
    signature: Signature,
}

/// A certificate whose signature is good but whose lifetime has not been checked.
#[derive(Debug, Clone)]
pub struct Timebound<T> {
    inner: T,
    cert_type: CertType,
    /// First UNIX second of validity, if the format has one.
    not_before_secs: Option<u64>,
    /// Last UNIX second of validity.
    not_after_secs: u64,
}

/// An ed25519 certificate whose signature and lifetime have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    cert: Ed25519Cert,
    signed_by: VerifyingKey,
}

/// What is wrong with certificates received from a peer.
///
/// `Copy` and free of heap data: this is network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a well-formed certificate of the expected format.
    #[error("malformed certificate: {0}")]
    Decode(#[from] CodecError),
    /// An X.509 certificate could not be parsed as DER.
    #[error("malformed X.509 certificate of type {0}")]
    X509Malformed(CertType),
    /// An X.509 certificate is signed with an algorithm other than sha256WithRSAEncryption.
    #[error("unsupported X.509 signature algorithm")]
    X509SignatureAlgorithm,
    /// A certificate has an extension we do not understand with AFFECTS_VALIDATION set.
    #[error("unknown critical extension {0}")]
    UnknownCriticalExtension(u8),
    /// A certificate names no signing key and none was given to check it with.
    #[error("certificate of type {0} has no signing key")]
    MissingSigningKey(CertType),
    /// The signed-with-ed25519-key extension names a key other than the one expected.
    #[error("certificate of type {0} names a different signing key")]
    SigningKeyMismatch(CertType),
    /// A key in a certificate is not a valid ed25519 point.
    #[error("invalid ed25519 key in certificate of type {0}")]
    BadEd25519Key(CertType),
    /// An RSA key could not be parsed, or is not 1024 bits with exponent 65537.
    #[error("RSA identity key is not 1024-bit with exponent 65537")]
    BadRsaKey,
    /// A signature does not verify.
    #[error("bad signature on certificate of type {0}")]
    BadSignature(CertType),
    /// A certificate's lifetime ended before `now`.
    #[error("certificate of type {0} has expired")]
    Expired(CertType),
    /// A certificate's lifetime starts after `now`.
    #[error("certificate of type {0} is not yet valid")]
    NotYetValid(CertType),
    /// A certificate required for this role is absent.
    #[error("missing certificate of type {0}")]
    MissingCert(CertType),
    /// The CERTS cell has two certificates of one type.
    #[error("duplicate certificate of type {0}")]
    DuplicateCert(CertType),
    /// An ed25519 certificate's CERT_TYPE differs from its CERTS cell entry's type.
    #[error("certificate in CERTS entry of type {0} has another CERT_TYPE")]
    WrongCertType(CertType),
    /// The RSA cross-certificate certifies an ed25519 identity other than the one that signed
    /// the identity-to-signing certificate.
    #[error("RSA cross-certificate names a different ed25519 identity")]
    IdentityMismatch,
    /// The signing-to-TLS certificate does not certify the TLS certificate the peer presented.
    #[error("TLS certificate digest does not match the signing-to-TLS certificate")]
    TlsCertMismatch,
}

/// Why we could not make one of our own certificates. These are our bugs or misuse of the API,
/// never a peer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CertBuildError {
    /// More than 255 extensions.
    #[error("too many extensions")]
    TooManyExtensions,
    /// An extension longer than 65535 bytes.
    #[error("extension too long")]
    ExtensionTooLong,
    /// The ed25519 signer failed.
    #[error("ed25519 signing failed")]
    Ed25519Signer,
    /// The RSA key could not sign, or makes signatures longer than the format allows.
    #[error("RSA signing failed")]
    RsaSigner,
    /// The X.509 certificate could not be encoded (for example a time outside X.509's range).
    #[error("X.509 encoding failed")]
    X509Encoding,
}

impl Ed25519Cert {
    /// A certificate with no extensions.
    pub fn new(
        cert_type: CertType,
        expiration_hours: u32,
        key_type: CertKeyType,
        certified_key: [u8; 32],
    ) -> Self {
        Ed25519Cert {
            cert_type,
            expiration_hours,
            key_type,
            certified_key,
            extensions: Vec::new(),
        }
    }

    /// Adds the signed-with-ed25519-key extension naming `key`.
    pub fn with_signing_key(mut self, key: [u8; 32]) -> Self {
        self.extensions
            .push(CertExt::SignedWithEd25519Key { key, flags: 0 });
        self
    }

    /// The key named by the signed-with-ed25519-key extension, if any.
    pub fn signing_key_ext(&self) -> Option<&[u8; 32]> {
        self.extensions.iter().find_map(|e| match e {
            CertExt::SignedWithEd25519Key { key, .. } => Some(key),
            CertExt::Unrecognized { .. } => None,
        })
    }

    /// The last UNIX second at which the certificate is valid.
    pub fn expiry_secs(&self) -> u64 {
        u64::from(self.expiration_hours) * 3600
    }

    /// Writes everything but the signature: the bytes a signer signs.
    pub fn encode_unsigned(&self, out: &mut Vec<u8>) -> Result<(), CertBuildError> {
        let n_ext =
            u8::try_from(self.extensions.len()).map_err(|_| CertBuildError::TooManyExtensions)?;
        out.put_u8(1);
        out.put_u8(self.cert_type.0);
        out.put_u32(self.expiration_hours);
        out.put_u8(self.key_type.0);
        out.put(&self.certified_key);
        out.put_u8(n_ext);
        for ext in &self.extensions {
            let (ext_type, flags, data): (u8, u8, &[u8]) = match ext {
                CertExt::SignedWithEd25519Key { key, flags } => {
                    (EXT_SIGNED_WITH_ED25519_KEY, *flags, key)
                }
                CertExt::Unrecognized {
                    ext_type,
                    flags,
                    data,
                } => (*ext_type, *flags, data),
            };
            let len = u16::try_from(data.len()).map_err(|_| CertBuildError::ExtensionTooLong)?;
            out.put_u16(len);
            out.put_u8(ext_type);
            out.put_u8(flags);
            out.put(data);
        }
        Ok(())
    }

    /// Writes the certificate signed by `signer` (whose public key should be the one the
    /// signed-with extension names, if present).
    pub fn sign_and_encode(
        &self,
        signer: &impl Signer<Signature>,
        out: &mut Vec<u8>,
    ) -> Result<(), CertBuildError> {
        let start = out.len();
        self.encode_unsigned(out)?;
        let to_sign = out.get(start..).unwrap_or_default();
        let sig = signer
            .try_sign(to_sign)
            .map_err(|_| CertBuildError::Ed25519Signer)?;
        out.put(&sig.to_bytes());
        Ok(())
    }

    /// Parses a certificate. Nothing is checked but the format: see [`UncheckedCert`].
    ///
    /// Trailing bytes after the signature are an error; a certificate always arrives in a
    /// container that gives its exact length.
    pub fn decode(bytes: &[u8]) -> Result<UncheckedCert, CertError> {
        let signed_len = bytes
            .len()
            .checked_sub(SIG_LEN)
            .ok_or(CodecError::Truncated)?;
        let mut r = Reader::new(bytes);
        if r.u8()? != 1 {
            return Err(CodecError::BadValue("ed25519 certificate version").into());
        }
        let cert_type = CertType(r.u8()?);
        let expiration_hours = r.u32()?;
        let key_type = CertKeyType(r.u8()?);
        let certified_key = r.take_array()?;
        let n_ext = r.u8()?;
        let mut extensions = Vec::with_capacity(usize::from(n_ext).min(8));
        for _ in 0..n_ext {
            let len = usize::from(r.u16()?);
            let ext_type = r.u8()?;
            let flags = r.u8()?;
            let mut data = r.take_reader(len)?;
            let ext = if ext_type == EXT_SIGNED_WITH_ED25519_KEY {
                let key = data
                    .take_array()
                    .map_err(|_| CodecError::BadValue("signed-with-ed25519-key length"))?;
                if data.should_be_exhausted().is_err() {
                    return Err(CodecError::BadValue("signed-with-ed25519-key length").into());
                }
                if extensions
                    .iter()
                    .any(|e| matches!(e, CertExt::SignedWithEd25519Key { .. }))
                {
                    return Err(CodecError::BadValue(
                        "duplicate signed-with-ed25519-key extension",
                    )
                    .into());
                }
                CertExt::SignedWithEd25519Key { key, flags }
            } else {
                CertExt::Unrecognized {
                    ext_type,
                    flags,
                    data: data.take_rest().to_vec(),
                }
            };
            extensions.push(ext);
        }
        if r.consumed() != signed_len {
            // Either the extensions ran into the signature or bytes follow it.
            return Err(match r.consumed() > signed_len {
                true => CodecError::Truncated,
                false => CodecError::TrailingBytes(signed_len - r.consumed()),
            }
            .into());
        }
        let sig: [u8; SIG_LEN] = r.take_array()?;
        r.should_be_exhausted()?;
        Ok(UncheckedCert {
            cert: Ed25519Cert {
                cert_type,
                expiration_hours,
                key_type,
                certified_key,
                extensions,
            },
            signed: bytes.get(..signed_len).unwrap_or_default().to_vec(),
            signature: Signature::from_bytes(&sig),
        })
    }
}

/// Decodes arbitrary bytes as an ed25519 certificate; for fuzzing. Whatever decodes must
/// re-encode to the bytes it was read from: the signature covers them, so a certificate we
/// re-create must come out byte for byte.
pub fn fuzz_decode_ed25519_cert(bytes: &[u8]) {
    if let Ok(c) = Ed25519Cert::decode(bytes) {
        let mut out = Vec::new();
        assert_eq!(c.peek().encode_unsigned(&mut out), Ok(()));
        assert_eq!(Some(&out[..]), bytes.get(..bytes.len() - SIG_LEN));
        let _ = c.check_signature(None);
    }
}

impl UncheckedCert {
    /// The contents, which are not yet trustworthy: use them only to decide which key should
    /// have signed the certificate.
    pub fn peek(&self) -> &Ed25519Cert {
        &self.cert
    }

    /// Checks the signature with `key`, or, when `key` is `None`, with the key named by the
    /// signed-with-ed25519-key extension.
    ///
    /// Fails if an unknown extension has AFFECTS_VALIDATION set, or if the extension is
    /// present and names a key other than `key` (cert-spec §2.2.1: "it MUST match").
    pub fn check_signature(self, key: Option<&VerifyingKey>) -> Result<Timebound<Cert>, CertError> {
        let cert_type = self.cert.cert_type;
        for ext in &self.cert.extensions {
            if let CertExt::Unrecognized {
                ext_type, flags, ..
            } = ext
            {
                if flags & EXT_FLAG_AFFECTS_VALIDATION != 0 {
                    return Err(CertError::UnknownCriticalExtension(*ext_type));
                }
            }
        }
        let signed_by = match (key, self.cert.signing_key_ext()) {
            (Some(k), Some(ext)) if k.as_bytes() != ext => {
                return Err(CertError::SigningKeyMismatch(cert_type))
            }
            (Some(k), _) => *k,
            (None, Some(ext)) => {
                VerifyingKey::from_bytes(ext).map_err(|_| CertError::BadEd25519Key(cert_type))?
            }
            (None, None) => return Err(CertError::MissingSigningKey(cert_type)),
        };
        signed_by
            .verify_strict(&self.signed, &self.signature)
            .map_err(|_| CertError::BadSignature(cert_type))?;
        let not_after_secs = self.cert.expiry_secs();
        Ok(Timebound {
            inner: Cert {
                cert: self.cert,
                signed_by,
            },
            cert_type,
            not_before_secs: None,
            not_after_secs,
        })
    }
}

impl<T> Timebound<T> {
    /// Wraps `inner`, valid from `not_before_secs` (if any) to `not_after_secs` inclusive.
    pub(crate) fn new(
        inner: T,
        cert_type: CertType,
        not_before_secs: Option<u64>,
        not_after_secs: u64,
    ) -> Self {
        Timebound {
            inner,
            cert_type,
            not_before_secs,
            not_after_secs,
        }
    }

    /// Returns the certificate if `now` (UNIX seconds) lies within its lifetime.
    pub fn check_expiry(self, now: u64) -> Result<T, CertError> {
        if now > self.not_after_secs {
            return Err(CertError::Expired(self.cert_type));
        }
        if self.not_before_secs.is_some_and(|nb| now < nb) {
            return Err(CertError::NotYetValid(self.cert_type));
        }
        Ok(self.inner)
    }

    /// Returns the certificate without looking at its lifetime: for certificates read from our
    /// own disk, whose renewal is decided elsewhere.
    pub fn skip_expiry_check(self) -> T {
        self.inner
    }

    /// The last UNIX second of validity.
    pub fn not_after_secs(&self) -> u64 {
        self.not_after_secs
    }
}

impl Cert {
    /// The checked contents.
    pub fn cert(&self) -> &Ed25519Cert {
        &self.cert
    }

    /// The key whose signature was checked.
    pub fn signed_by(&self) -> &VerifyingKey {
        &self.signed_by
    }

    /// CERTIFIED_KEY.
    pub fn certified_key(&self) -> &[u8; 32] {
        &self.cert.certified_key
    }

    /// CERTIFIED_KEY as an ed25519 public key; fails if it is not a valid point.
    pub fn certified_ed25519_key(&self) -> Result<VerifyingKey, CertError> {
        VerifyingKey::from_bytes(&self.cert.certified_key)
            .map_err(|_| CertError::BadEd25519Key(self.cert.cert_type))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn signed(cert: &Ed25519Cert, signer: &SigningKey) -> Vec<u8> {
        let mut out = Vec::new();
        cert.sign_and_encode(signer, &mut out).unwrap();
        out
    }

    fn sample(signer: &SigningKey) -> Ed25519Cert {
        Ed25519Cert::new(
            CertType::IDENTITY_V_SIGNING,
            500_000,
            CertKeyType::ED25519_KEY,
            key(9).verifying_key().to_bytes(),
        )
        .with_signing_key(signer.verifying_key().to_bytes())
    }

    #[test]
    fn layout_and_round_trip() {
        let id = key(1);
        let cert = sample(&id);
        let bytes = signed(&cert, &id);
        // 40 fixed bytes, one 36-byte extension, 64 signature bytes.
        assert_eq!(bytes.len(), 40 + 36 + 64);
        assert_eq!(&bytes[..2], &[1, 4]);
        assert_eq!(&bytes[2..6], &500_000u32.to_be_bytes());
        assert_eq!(bytes[39], 1);
        assert_eq!(&bytes[40..44], &[0, 32, 4, 0]);
        let unchecked = Ed25519Cert::decode(&bytes).unwrap();
        assert_eq!(unchecked.peek(), &cert);
        let mut again = Vec::new();
        unchecked.peek().encode_unsigned(&mut again).unwrap();
        assert_eq!(&again[..], &bytes[..bytes.len() - 64]);
        let checked = unchecked
            .check_signature(None)
            .unwrap()
            .check_expiry(500_000 * 3600)
            .unwrap();
        assert_eq!(checked.signed_by(), &id.verifying_key());
        assert_eq!(checked.certified_key(), &key(9).verifying_key().to_bytes());
    }

    #[test]
    fn expiry_is_inclusive_hour() {
        let id = key(1);
        let bytes = signed(&sample(&id), &id);
        let tb = Ed25519Cert::decode(&bytes)
            .unwrap()
            .check_signature(None)
            .unwrap();
        assert_eq!(
            tb.clone().check_expiry(500_000 * 3600 + 1).unwrap_err(),
            CertError::Expired(CertType::IDENTITY_V_SIGNING)
        );
        assert!(tb.check_expiry(0).is_ok());
    }

    #[test]
    fn explicit_key_checks() {
        let id = key(1);
        let plain = Ed25519Cert::new(CertType::SIGNING_V_LINK_AUTH, 7, CertKeyType(1), [5; 32]);
        let bytes = signed(&plain, &id);
        assert_eq!(
            Ed25519Cert::decode(&bytes)
                .unwrap()
                .check_signature(None)
                .unwrap_err(),
            CertError::MissingSigningKey(CertType::SIGNING_V_LINK_AUTH)
        );
        assert!(Ed25519Cert::decode(&bytes)
            .unwrap()
            .check_signature(Some(&id.verifying_key()))
            .is_ok());
        assert_eq!(
            Ed25519Cert::decode(&bytes)
                .unwrap()
                .check_signature(Some(&key(2).verifying_key()))
                .unwrap_err(),
            CertError::BadSignature(CertType::SIGNING_V_LINK_AUTH)
        );
        // The extension names key 1 but the caller expects key 2.
        let bytes = signed(&sample(&id), &id);
        assert_eq!(
            Ed25519Cert::decode(&bytes)
                .unwrap()
                .check_signature(Some(&key(2).verifying_key()))
                .unwrap_err(),
            CertError::SigningKeyMismatch(CertType::IDENTITY_V_SIGNING)
        );
    }

    #[test]
    fn tampered_signature_and_body() {
        let id = key(1);
        let bytes = signed(&sample(&id), &id);
        for i in [2, 10, 50, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = Ed25519Cert::decode(&bad)
                .unwrap()
                .check_signature(Some(&id.verifying_key()))
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    CertError::BadSignature(_) | CertError::SigningKeyMismatch(_)
                ),
                "{i}: {err:?}"
            );
        }
    }

    #[test]
    fn unknown_extensions() {
        let id = key(1);
        let mut cert = sample(&id);
        cert.extensions.push(CertExt::Unrecognized {
            ext_type: 0x77,
            flags: 0,
            data: vec![1, 2, 3],
        });
        let bytes = signed(&cert, &id);
        let u = Ed25519Cert::decode(&bytes).unwrap();
        assert_eq!(u.peek(), &cert);
        assert!(u.check_signature(None).is_ok());

        cert.extensions.push(CertExt::Unrecognized {
            ext_type: 0x78,
            flags: EXT_FLAG_AFFECTS_VALIDATION,
            data: vec![],
        });
        let bytes = signed(&cert, &id);
        assert_eq!(
            Ed25519Cert::decode(&bytes)
                .unwrap()
                .check_signature(None)
                .unwrap_err(),
            CertError::UnknownCriticalExtension(0x78)
        );
    }

    #[test]
    fn malformed() {
        let id = key(1);
        let bytes = signed(&sample(&id), &id);
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            Ed25519Cert::decode(&v2).unwrap_err(),
            CertError::Decode(CodecError::BadValue("ed25519 certificate version"))
        );
        assert_eq!(
            Ed25519Cert::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            CertError::Decode(CodecError::Truncated)
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Ed25519Cert::decode(&long).unwrap_err(),
            CertError::Decode(CodecError::TrailingBytes(1))
        );
        // signed-with extension of 31 bytes.
        let mut short_ext = bytes.clone();
        short_ext[41] = 31;
        assert_eq!(
            Ed25519Cert::decode(&short_ext).unwrap_err(),
            CertError::Decode(CodecError::BadValue("signed-with-ed25519-key length"))
        );
        assert_eq!(
            Ed25519Cert::decode(&[]).unwrap_err(),
            CertError::Decode(CodecError::Truncated)
        );
        let mut dup = sample(&id);
        dup.extensions.push(dup.extensions[0].clone());
        assert_eq!(
            Ed25519Cert::decode(&signed(&dup, &id)).unwrap_err(),
            CertError::Decode(CodecError::BadValue(
                "duplicate signed-with-ed25519-key extension"
            ))
        );
    }

    fn arb_ext() -> impl Strategy<Value = CertExt> {
        prop_oneof![
            (any::<[u8; 32]>(), any::<u8>())
                .prop_map(|(key, flags)| CertExt::SignedWithEd25519Key { key, flags }),
            (
                any::<u8>().prop_filter("not 4", |t| *t != EXT_SIGNED_WITH_ED25519_KEY),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(ext_type, flags, data)| CertExt::Unrecognized {
                    ext_type,
                    flags,
                    data
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzz_decode_ed25519_cert(&bytes);
        }

        #[test]
        fn encode_decode_identity(
            cert_type in any::<u8>(),
            exp in any::<u32>(),
            key_type in any::<u8>(),
            certified in any::<[u8; 32]>(),
            ext in proptest::option::of(arb_ext()),
            others in proptest::collection::vec(arb_ext().prop_filter("unknown", |e| matches!(e, CertExt::Unrecognized { .. })), 0..3),
        ) {
            let mut cert = Ed25519Cert::new(CertType(cert_type), exp, CertKeyType(key_type), certified);
            cert.extensions.extend(ext);
            cert.extensions.extend(others);
            let id = key(3);
            let bytes = signed(&cert, &id);
            let u = Ed25519Cert::decode(&bytes).unwrap();
            prop_assert_eq!(u.peek(), &cert);
        }
    }
}
