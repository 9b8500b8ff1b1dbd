//! Version 3 onion addresses (rend-spec-v3 §6, "Encoding onion addresses").
//!
//! ```text
//! onion_address = base32(PUBKEY | CHECKSUM | VERSION) + ".onion"
//! CHECKSUM = SHA3_256(".onion checksum" | PUBKEY | VERSION)[:2]
//! VERSION = 3
//! ```
//! The address is 56 base32 characters (lowercase when printed), the service's ed25519 identity
//! key in the clear. Addresses are checked in full (length, alphabet, version and checksum) before a
//! key is taken from one.

use std::fmt;
use std::str::FromStr;

use proto::ids::Ed25519Identity;
use sha3::{Digest as _, Sha3_256};
use thiserror::Error;

/// The only onion-address version this module knows.
const VERSION: u8 = 3;
/// base32 length of PUBKEY (32) | CHECKSUM (2) | VERSION (1) = 35 bytes.
const ADDR_LEN: usize = 56;

/// Why a string is not a v3 onion address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OnionAddressError {
    /// Not 56 characters (after an optional `.onion` suffix is removed).
    #[error("an onion address is 56 base32 characters")]
    BadLength,
    /// A character outside base32's alphabet.
    #[error("an onion address is base32")]
    BadEncoding,
    /// The version byte is not 3.
    #[error("unsupported onion address version {0}")]
    BadVersion(u8),
    /// The checksum does not match the key.
    #[error("onion address checksum mismatch")]
    BadChecksum,
}

/// A v3 onion service's address: its ed25519 identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionAddress(Ed25519Identity);

impl OnionAddress {
    /// The address of the service with identity key `id`.
    pub fn from_identity(id: Ed25519Identity) -> Self {
        OnionAddress(id)
    }

    /// The service's identity key.
    pub fn identity(&self) -> Ed25519Identity {
        self.0
    }

    fn checksum(pubkey: &[u8; 32]) -> [u8; 2] {
        let mut h = Sha3_256::new();
        h.update(b".onion checksum");
        h.update(pubkey);
        h.update([VERSION]);
        let d = h.finalize();
        [d[0], d[1]]
    }

    /// The 56 base32 characters without the `.onion` suffix, in lowercase.
    pub fn label(&self) -> String {
        let key = self.0.as_bytes();
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(key);
        raw[32..34].copy_from_slice(&Self::checksum(key));
        raw[34] = VERSION;
        data_encoding::BASE32_NOPAD
            .encode(&raw)
            .to_ascii_lowercase()
    }
}

impl FromStr for OnionAddress {
    type Err = OnionAddressError;

    /// Parses an address with or without the `.onion` suffix, in either case. Subdomains
    /// (`www.<addr>.onion`) are accepted as rend-spec-v3 allows, and ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_suffix(".onion").unwrap_or(s);
        let label = s.rsplit('.').next().unwrap_or(s);
        if label.len() != ADDR_LEN {
            return Err(OnionAddressError::BadLength);
        }
        let raw = data_encoding::BASE32_NOPAD
            .decode(label.to_ascii_uppercase().as_bytes())
            .map_err(|_| OnionAddressError::BadEncoding)?;
        let raw: [u8; 35] = raw.try_into().map_err(|_| OnionAddressError::BadLength)?;
        if raw[34] != VERSION {
            return Err(OnionAddressError::BadVersion(raw[34]));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[..32]);
        if raw[32..34] != Self::checksum(&key) {
            return Err(OnionAddressError::BadChecksum);
        }
        Ok(OnionAddress(Ed25519Identity::from_bytes(key)))
    }
}

impl fmt::Display for OnionAddress {
    /// The full address, `<56 characters>.onion`, as C tor writes it to a service's `hostname`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.onion", self.label())
    }
}

impl fmt::Debug for OnionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionAddress({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Tor Project's own v3 onion address (well known, published on torproject.org), used as
    /// a known-good address: it must parse, and re-encode to the same string.
    const TORPROJECT: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    #[test]
    fn known_address_round_trips() {
        let a: OnionAddress = TORPROJECT.parse().expect("valid address");
        assert_eq!(a.to_string(), TORPROJECT);
        let upper: OnionAddress = TORPROJECT
            .trim_end_matches(".onion")
            .to_ascii_uppercase()
            .parse()
            .expect("case-insensitive");
        assert_eq!(upper, a);
        let sub: OnionAddress = format!("www.{TORPROJECT}").parse().expect("subdomain");
        assert_eq!(sub, a);
    }

    #[test]
    fn bad_addresses_are_rejected_with_the_reason() {
        // Flip one character: the checksum catches it.
        let mut s = TORPROJECT.to_string();
        s.replace_range(0..1, "3");
        assert_eq!(
            s.parse::<OnionAddress>(),
            Err(OnionAddressError::BadChecksum)
        );
        assert_eq!(
            "abc.onion".parse::<OnionAddress>(),
            Err(OnionAddressError::BadLength)
        );
        let bad_alpha = "1".repeat(56);
        assert_eq!(
            bad_alpha.parse::<OnionAddress>(),
            Err(OnionAddressError::BadEncoding)
        );
        // A version-2-style byte: rebuild an address with version 4 and a correct-length body.
        let mut raw = [0u8; 35];
        raw[34] = 4;
        let v4 = data_encoding::BASE32_NOPAD.encode(&raw);
        assert_eq!(
            v4.parse::<OnionAddress>(),
            Err(OnionAddressError::BadVersion(4))
        );
    }

    proptest! {
        #[test]
        fn any_key_round_trips(key in any::<[u8; 32]>()) {
            let a = OnionAddress::from_identity(Ed25519Identity::from_bytes(key));
            let s = a.to_string();
            prop_assert_eq!(s.len(), 62);
            prop_assert_eq!(s.parse::<OnionAddress>(), Ok(a));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            let _ = s.parse::<OnionAddress>();
        }
    }
}
