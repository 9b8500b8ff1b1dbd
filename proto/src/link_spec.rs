//! Link specifiers: how EXTEND2 cells and onion-service introduction data name the next hop.
//!
//! tor-spec §5.1.2 ("EXTEND and EXTENDED cells"); also used inside INTRODUCE2's encrypted
//! plaintext (rend-spec-v3 §3.3) and in HS descriptors' `introduction-point` lines.
//!
//! ```text
//!   LSTYPE (1 byte) LSLEN (1 byte) LSPEC (LSLEN bytes)
//!   [00] TLS-over-TCP, IPv4: 4-byte address, 2-byte port
//!   [01] TLS-over-TCP, IPv6: 16-byte address, 2-byte port
//!   [02] Legacy identity: 20-byte SHA-1 of the RSA identity key
//!   [03] Ed25519 identity: 32-byte key
//! ```
//! Unknown types are kept as they are, so they can be forwarded unchanged.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::codec::{CodecError, Reader, Writer};
use crate::ids::{Ed25519Identity, RsaIdentity};

/// One link specifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// `[00]` an IPv4 ORPort.
    Ipv4(Ipv4Addr, u16),
    /// `[01]` an IPv6 ORPort.
    Ipv6(Ipv6Addr, u16),
    /// `[02]` the RSA identity fingerprint.
    RsaId(RsaIdentity),
    /// `[03]` the ed25519 identity.
    Ed25519Id(Ed25519Identity),
    /// Any other type, kept verbatim.
    Unrecognized {
        /// LSTYPE.
        ls_type: u8,
        /// LSPEC.
        body: Vec<u8>,
    },
}

impl LinkSpec {
    /// LSTYPE of an IPv4 address.
    pub const IPV4: u8 = 0;
    /// LSTYPE of an IPv6 address.
    pub const IPV6: u8 = 1;
    /// LSTYPE of a legacy RSA identity.
    pub const RSA_ID: u8 = 2;
    /// LSTYPE of an ed25519 identity.
    pub const ED25519_ID: u8 = 3;

    /// Makes the address specifier for a socket address.
    pub fn from_socket_addr(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(a) => LinkSpec::Ipv4(*a.ip(), a.port()),
            SocketAddr::V6(a) => LinkSpec::Ipv6(*a.ip(), a.port()),
        }
    }

    /// The LSTYPE byte.
    pub fn ls_type(&self) -> u8 {
        match self {
            LinkSpec::Ipv4(..) => Self::IPV4,
            LinkSpec::Ipv6(..) => Self::IPV6,
            LinkSpec::RsaId(_) => Self::RSA_ID,
            LinkSpec::Ed25519Id(_) => Self::ED25519_ID,
            LinkSpec::Unrecognized { ls_type, .. } => *ls_type,
        }
    }

    /// Reads one specifier. A known type whose LSLEN is wrong is an error.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let ls_type = r.u8()?;
        let mut body = Reader::new(r.u8_prefixed()?);
        let spec = match ls_type {
            Self::IPV4 => {
                let a: [u8; 4] = body.take_array()?;
                LinkSpec::Ipv4(Ipv4Addr::from(a), body.u16()?)
            }
            Self::IPV6 => {
                let a: [u8; 16] = body.take_array()?;
                LinkSpec::Ipv6(Ipv6Addr::from(a), body.u16()?)
            }
            Self::RSA_ID => LinkSpec::RsaId(RsaIdentity::from_bytes(body.take_array()?)),
            Self::ED25519_ID => {
                LinkSpec::Ed25519Id(Ed25519Identity::from_bytes(body.take_array()?))
            }
            _ => LinkSpec::Unrecognized {
                ls_type,
                body: body.take_rest().to_vec(),
            },
        };
        body.should_be_exhausted()?;
        Ok(spec)
    }

    /// Appends this specifier.
    pub fn encode(&self, w: &mut Vec<u8>) -> Result<(), CodecError> {
        w.put_u8(self.ls_type());
        match self {
            LinkSpec::Ipv4(a, p) => {
                w.put_u8(6);
                w.put(&a.octets());
                w.put_u16(*p);
            }
            LinkSpec::Ipv6(a, p) => {
                w.put_u8(18);
                w.put(&a.octets());
                w.put_u16(*p);
            }
            LinkSpec::RsaId(id) => w.put_u8_prefixed(id.as_bytes(), "legacy id")?,
            LinkSpec::Ed25519Id(id) => w.put_u8_prefixed(id.as_bytes(), "ed25519 id")?,
            LinkSpec::Unrecognized { body, .. } => w.put_u8_prefixed(body, "link specifier")?,
        }
        Ok(())
    }

    /// Reads `NSPEC (1 byte)` and then that many specifiers.
    pub fn decode_list(r: &mut Reader<'_>) -> Result<Vec<Self>, CodecError> {
        let n = r.u8()?;
        (0..n).map(|_| LinkSpec::decode(r)).collect()
    }

    /// Writes `NSPEC (1 byte)` and the specifiers.
    pub fn encode_list(specs: &[LinkSpec], w: &mut Vec<u8>) -> Result<(), CodecError> {
        let n = u8::try_from(specs.len()).map_err(|_| CodecError::TooLong {
            what: "link specifier list",
            len: specs.len(),
        })?;
        w.put_u8(n);
        specs.iter().try_for_each(|s| s.encode(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trips_byte_for_byte() {
        let specs = vec![
            LinkSpec::Ipv4(Ipv4Addr::new(127, 0, 0, 1), 9001),
            LinkSpec::Ipv6(Ipv6Addr::LOCALHOST, 443),
            LinkSpec::RsaId(RsaIdentity::from_bytes([0xab; 20])),
            LinkSpec::Ed25519Id(Ed25519Identity::from_bytes([0xcd; 32])),
            LinkSpec::Unrecognized {
                ls_type: 0x7f,
                body: vec![1, 2, 3],
            },
        ];
        let mut w = Vec::new();
        LinkSpec::encode_list(&specs, &mut w).expect("encodes");
        assert_eq!(&w[..9], &[5, 0, 6, 127, 0, 0, 1, 0x23, 0x29]);
        let mut r = Reader::new(&w);
        let back = LinkSpec::decode_list(&mut r).expect("decodes");
        assert_eq!(back, specs);
        assert_eq!(r.should_be_exhausted(), Ok(()));
        let mut again = Vec::new();
        LinkSpec::encode_list(&back, &mut again).expect("encodes");
        assert_eq!(again, w);
    }

    #[test]
    fn wrong_length_for_known_type_is_rejected() {
        // IPv4 with 5 bytes instead of 6.
        let bad = [0u8, 5, 127, 0, 0, 1, 0];
        assert_eq!(
            LinkSpec::decode(&mut Reader::new(&bad)),
            Err(CodecError::Truncated)
        );
        // IPv4 with 7 bytes.
        let bad = [0u8, 7, 127, 0, 0, 1, 0, 1, 2];
        assert_eq!(
            LinkSpec::decode(&mut Reader::new(&bad)),
            Err(CodecError::TrailingBytes(1))
        );
    }
}
