//! Newtypes for the identifiers that travel on the wire and the identities of relays.
//!
//! Identities: tor-spec §1.1 ("Keys and names"); circuit ids: tor-spec §3 and §5.1.1; stream ids:
//! tor-spec §6.2.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

use base64::Engine as _;

/// A circuit id on one channel. Zero is reserved for cells that are not about a circuit, so a
/// `CircId` is never zero; cells with id 0 carry `Option<CircId>::None`.
///
/// On link protocol 4 and later circuit ids are four bytes; before, two (tor-spec §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircId(NonZeroU32);

impl CircId {
    /// Makes a circuit id, or `None` for zero.
    pub const fn new(v: u32) -> Option<Self> {
        match NonZeroU32::new(v) {
            Some(n) => Some(CircId(n)),
            None => None,
        }
    }

    /// The id as it goes on the wire.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Whether the high bit is set. On link protocol 4+, the side that initiated the channel
    /// chooses ids with the high bit set, the responder with it clear (tor-spec §5.1.1).
    pub const fn high_bit(self) -> bool {
        self.0.get() & 0x8000_0000 != 0
    }
}

impl fmt::Display for CircId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stream id within one circuit; zero means "the circuit itself" and is not a `StreamId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(NonZeroU16);

impl StreamId {
    /// Makes a stream id, or `None` for zero.
    pub const fn new(v: u16) -> Option<Self> {
        match NonZeroU16::new(v) {
            Some(n) => Some(StreamId(n)),
            None => None,
        }
    }

    /// The id as it goes on the wire.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A relay's legacy identity: the SHA-1 digest of its DER-encoded RSA-1024 public key
/// (PKCS#1 `RSAPublicKey`), its "fingerprint".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RsaIdentity([u8; 20]);

impl RsaIdentity {
    /// Length in bytes.
    pub const LEN: usize = 20;

    /// Wraps the 20 digest bytes.
    pub const fn from_bytes(b: [u8; 20]) -> Self {
        RsaIdentity(b)
    }

    /// The digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Uppercase hex without spaces, as in `fingerprint` files and `$ID` references.
    pub fn hex(&self) -> String {
        hex::encode_upper(self.0)
    }

    /// Uppercase hex in groups of four separated by spaces, as `tor --list-fingerprint` and the
    /// `fingerprint` line of a server descriptor print it.
    pub fn spaced_hex(&self) -> String {
        let h = self.hex();
        let groups: Vec<&str> = (0..h.len() / 4).map(|i| &h[i * 4..i * 4 + 4]).collect();
        groups.join(" ")
    }

    /// The identity of an RSA public key: SHA-1 over its PKCS#1 DER encoding (tor-spec §1.1).
    pub fn from_rsa_public_key(key: &rsa::RsaPublicKey) -> Self {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        use sha1::Digest as _;
        // Encoding a well-formed public key cannot fail; an empty DER would give a wrong but
        // harmless identity rather than a panic.
        let der = key.to_pkcs1_der().map(|d| d.into_vec()).unwrap_or_default();
        RsaIdentity(sha1::Sha1::digest(der).into())
    }

    /// Parses 40 hex digits, optionally with a leading `$` and spaces between groups.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.strip_prefix('$').unwrap_or(s);
        let compact: String = s.chars().filter(|c| *c != ' ').collect();
        let v = hex::decode(compact).ok()?;
        Some(RsaIdentity(v.try_into().ok()?))
    }
}

impl fmt::Display for RsaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.hex())
    }
}

impl fmt::Debug for RsaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaIdentity({})", self.hex())
    }
}

/// A relay's (or onion service's) ed25519 identity: the raw 32-byte public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ed25519Identity([u8; 32]);

impl Ed25519Identity {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// Wraps the 32 key bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Ed25519Identity(b)
    }

    /// The key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Base64 without trailing `=`, as Tor prints ed25519 identities (43 characters).
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
    }

    /// Parses the unpadded (or padded) base64 form.
    pub fn from_base64(s: &str) -> Option<Self> {
        let s = s.trim_end_matches('=');
        let v = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s)
            .ok()?;
        Some(Ed25519Identity(v.try_into().ok()?))
    }
}

impl fmt::Display for Ed25519Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base64())
    }
}

impl fmt::Debug for Ed25519Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Identity({})", self.base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ids_are_not_ids() {
        assert!(CircId::new(0).is_none());
        assert!(StreamId::new(0).is_none());
        assert_eq!(CircId::new(0x8000_0001).map(CircId::high_bit), Some(true));
        assert_eq!(CircId::new(1).map(CircId::high_bit), Some(false));
    }

    #[test]
    fn rsa_identity_text_forms() {
        let id = RsaIdentity::from_bytes([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff, 0x01, 0x23, 0x45, 0x67,
        ]);
        assert_eq!(id.hex(), "00112233445566778899AABBCCDDEEFF01234567");
        assert_eq!(
            id.spaced_hex(),
            "0011 2233 4455 6677 8899 AABB CCDD EEFF 0123 4567"
        );
        assert_eq!(RsaIdentity::from_hex(&id.spaced_hex()), Some(id));
        assert_eq!(RsaIdentity::from_hex(&id.to_string()), Some(id));
        assert_eq!(RsaIdentity::from_hex("0011"), None);
    }

    #[test]
    fn ed25519_identity_text_form() {
        let id = Ed25519Identity::from_bytes([7u8; 32]);
        let s = id.base64();
        assert_eq!(s.len(), 43);
        assert_eq!(Ed25519Identity::from_base64(&s), Some(id));
        assert_eq!(Ed25519Identity::from_base64(&format!("{s}=")), Some(id));
        assert_eq!(Ed25519Identity::from_base64("AAAA"), None);
    }
}
