//! The bodies of channel cells: one struct per command, and [`ChanMsg`] over all of them.
//!
//! tor-spec §3 (<https://spec.torproject.org/tor-spec/cell-packet-format.html>) lists the
//! commands; the bodies are defined in §4 (link handshake: VERSIONS, CERTS, AUTH_CHALLENGE,
//! AUTHENTICATE, NETINFO), §5.1 (CREATE2/CREATED2, CREATE_FAST/CREATED_FAST), §5.4 (DESTROY)
//! and §7.2 with padding-spec (PADDING, VPADDING, PADDING_NEGOTIATE).
//!
//! Each body type has `decode(body: &[u8])` and `encode(&self, out: &mut Vec<u8>)`. Encoders
//! write the body without padding; [`ChanCell::encode`] pads fixed-length cells with zeros to
//! [`BODY_LEN`]. Where the spec says the rest of a body is padding (or that extra bytes "MUST be
//! ignored") the decoder ignores it; VERSIONS is the exception that must not be padded.
//!
//! These owned forms are for the handshake and the control path. The per-cell relay path keeps
//! to [`RawCell`], whose RELAY bodies are borrowed from the receive buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::cell::{put_header, CellBody, ChanCmd, CircIdError, CircIdLen, RawCell, BODY_LEN};
use crate::cert::CertType;
use crate::codec::{CodecError, Reader, Writer};
use crate::ids::CircId;

pub use crate::kdf::HASH_LEN;
/// `TAP_C_HANDSHAKE_LEN` = DH_LEN + KEY_LEN + KP_PAD_LEN = 128 + 16 + 42 (tor-spec §5.1.3).
pub const TAP_C_HANDSHAKE_LEN: usize = 186;
/// `TAP_S_HANDSHAKE_LEN` = DH_LEN + HASH_LEN = 128 + 20 (tor-spec §5.1.3).
pub const TAP_S_HANDSHAKE_LEN: usize = 148;
/// The most handshake data a CREATE2 body holds after HTYPE and HLEN.
pub const CREATE2_HDATA_MAX: usize = BODY_LEN - 4;
/// The most handshake data a CREATED2 body holds after HLEN.
pub const CREATED2_HDATA_MAX: usize = BODY_LEN - 2;

const _: () = assert!(TAP_C_HANDSHAKE_LEN == 128 + 16 + 42);
const _: () = assert!(TAP_S_HANDSHAKE_LEN == 128 + HASH_LEN);

/// A CREATE2 handshake type (HTYPE, tor-spec §5.1). Open: unknown types are refused by the
/// handshake layer, not the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandshakeType(pub u16);

impl HandshakeType {
    /// The original TAP handshake. Parsed only; chive never offers or answers it.
    pub const TAP: HandshakeType = HandshakeType(0);
    /// Reserved (once CREATE_FAST inside CREATE2); never valid.
    pub const RESERVED_FAST: HandshakeType = HandshakeType(1);
    /// ntor (tor-spec §5.1.4).
    pub const NTOR: HandshakeType = HandshakeType(2);
    /// ntor v3 (proposal 332).
    pub const NTOR_V3: HandshakeType = HandshakeType(3);
}

/// Why a circuit was destroyed (tor-spec §5.4). Open: any byte is carried as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestroyReason(pub u8);

impl DestroyReason {
    /// No reason given; what an OP sends for its own DESTROY cells.
    pub const NONE: DestroyReason = DestroyReason(0);
    /// Tor protocol violation.
    pub const PROTOCOL: DestroyReason = DestroyReason(1);
    /// Internal error.
    pub const INTERNAL: DestroyReason = DestroyReason(2);
    /// A client sent a TRUNCATE command.
    pub const REQUESTED: DestroyReason = DestroyReason(3);
    /// Not currently operating; trying to save bandwidth.
    pub const HIBERNATING: DestroyReason = DestroyReason(4);
    /// Out of memory, sockets, or circuit ids.
    pub const RESOURCELIMIT: DestroyReason = DestroyReason(5);
    /// Unable to reach relay.
    pub const CONNECTFAILED: DestroyReason = DestroyReason(6);
    /// Connected to relay, but its OR identity was not as expected.
    pub const OR_IDENTITY: DestroyReason = DestroyReason(7);
    /// The channel carrying this circuit died.
    pub const CHANNEL_CLOSED: DestroyReason = DestroyReason(8);
    /// The circuit has expired for being dirty or old.
    pub const FINISHED: DestroyReason = DestroyReason(9);
    /// Circuit construction took too long.
    pub const TIMEOUT: DestroyReason = DestroyReason(10);
    /// The circuit was destroyed without a client TRUNCATE; what a relay sends onward when it
    /// receives a DESTROY, so reasons are not propagated.
    pub const DESTROYED: DestroyReason = DestroyReason(11);
    /// Request for an unknown onion service.
    pub const NOSUCHSERVICE: DestroyReason = DestroyReason(12);

    /// The spec's name for a known reason.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NONE",
            1 => "PROTOCOL",
            2 => "INTERNAL",
            3 => "REQUESTED",
            4 => "HIBERNATING",
            5 => "RESOURCELIMIT",
            6 => "CONNECTFAILED",
            7 => "OR_IDENTITY",
            8 => "CHANNEL_CLOSED",
            9 => "FINISHED",
            10 => "TIMEOUT",
            11 => "DESTROYED",
            12 => "NOSUCHSERVICE",
            _ => return None,
        })
    }
}

/// A link authentication method (AUTH_CHALLENGE methods, AUTHENTICATE AuthType; tor-spec §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthMethod(pub u16);

impl AuthMethod {
    /// RSA-SHA256-TLSSecret (tor-spec §4.4.1); legacy, chive does not use it.
    pub const RSA_SHA256_TLSSECRET: AuthMethod = AuthMethod(1);
    /// Ed25519-SHA256-RFC5705 (tor-spec §4.4.2).
    pub const ED25519_SHA256_RFC5705: AuthMethod = AuthMethod(3);
}

/// The PADDING_NEGOTIATE command (tor-spec §7.2). Open; receivers ignore unknown commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaddingNegotiateCmd(pub u8);

impl PaddingNegotiateCmd {
    /// Stop padding this channel.
    pub const STOP: PaddingNegotiateCmd = PaddingNegotiateCmd(1);
    /// Start padding this channel with the given timeout range.
    pub const START: PaddingNegotiateCmd = PaddingNegotiateCmd(2);
}

/// PADDING: link keepalive. Sent by either end of a channel; its body is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding;

impl Padding {
    /// Accepts any body: it is all padding.
    pub fn decode(_body: &[u8]) -> Result<Self, CodecError> {
        Ok(Padding)
    }

    /// Writes nothing; the framing layer pads.
    pub fn encode(&self, _out: &mut Vec<u8>) -> Result<(), CodecError> {
        Ok(())
    }
}

/// CREATE: a TAP onion skin, sent by a client or relay to open a circuit. Parsed only: chive
/// never sends it and answers it with DESTROY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    /// The TAP client handshake (or an HTAG-tagged handshake; see tor-spec §5.1).
    pub hdata: [u8; TAP_C_HANDSHAKE_LEN],
}

impl Create {
    /// Reads the onion skin; the rest of the body is padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        Ok(Create {
            hdata: Reader::new(body).take_array()?,
        })
    }

    /// Writes the onion skin.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.hdata);
        Ok(())
    }
}

/// CREATED: a TAP server handshake, the answer to CREATE. Parsed only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The TAP server handshake.
    pub hdata: [u8; TAP_S_HANDSHAKE_LEN],
}

impl Created {
    /// Reads the handshake; the rest of the body is padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        Ok(Created {
            hdata: Reader::new(body).take_array()?,
        })
    }

    /// Writes the handshake.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.hdata);
        Ok(())
    }
}

/// RELAY: an onion-encrypted relay cell body, sent in both directions along a circuit. Opaque
/// here; the relay crypto layer opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The whole encrypted body.
    pub body: [u8; BODY_LEN],
}

impl Relay {
    /// Takes a whole 509-byte body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        decode_whole_body(body).map(|body| Relay { body })
    }

    /// Writes the 509-byte body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.body);
        Ok(())
    }
}

/// RELAY_EARLY: like [`Relay`], but countable: a relay must refuse EXTEND/EXTEND2 that does not
/// arrive in one, and must close circuits that receive too many inbound (tor-spec §5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEarly {
    /// The whole encrypted body.
    pub body: [u8; BODY_LEN],
}

impl RelayEarly {
    /// Takes a whole 509-byte body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        decode_whole_body(body).map(|body| RelayEarly { body })
    }

    /// Writes the 509-byte body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.body);
        Ok(())
    }
}

fn decode_whole_body(body: &[u8]) -> Result<[u8; BODY_LEN], CodecError> {
    let mut r = Reader::new(body);
    let b = r.take_array()?;
    r.should_be_exhausted()?;
    Ok(b)
}

/// DESTROY: tears a circuit down; sent by either side of the circuit on this channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destroy {
    /// Why.
    pub reason: DestroyReason,
}

impl Destroy {
    /// Reads the reason byte; the rest is padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        Ok(Destroy {
            reason: DestroyReason(Reader::new(body).u8()?),
        })
    }

    /// Writes the reason byte.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u8(self.reason.0);
        Ok(())
    }
}

/// CREATE_FAST: a client's first-hop circuit creation without public-key crypto (tor-spec
/// §5.1.5). Deprecated; a relay receiving one knows it is the first hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateFast {
    /// Key material X.
    pub x: [u8; HASH_LEN],
}

impl CreateFast {
    /// Reads X; the rest is padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        Ok(CreateFast {
            x: Reader::new(body).take_array()?,
        })
    }

    /// Writes X.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.x);
        Ok(())
    }
}

/// CREATED_FAST: a relay's answer to CREATE_FAST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedFast {
    /// Key material Y.
    pub y: [u8; HASH_LEN],
    /// Derivative key data KH, proving the relay knows the keys (tor-spec §5.2.1).
    pub kh: [u8; HASH_LEN],
}

impl CreatedFast {
    /// Reads Y and KH; the rest is padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        Ok(CreatedFast {
            y: r.take_array()?,
            kh: r.take_array()?,
        })
    }

    /// Writes Y and KH.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.y);
        out.put(&self.kh);
        Ok(())
    }
}

/// VERSIONS: the link protocol versions the sender speaks; the first cell of each side of a
/// channel (tor-spec §4.1), always framed with 2-byte circuit ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// Versions in the sender's order.
    pub versions: Vec<u16>,
}

impl Versions {
    /// Reads the list. VERSIONS must not be padded, so an odd length is malformed ("Either
    /// party MUST close the connection if the versions cell is not well-formed").
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let pairs = body.chunks_exact(2);
        if !pairs.remainder().is_empty() {
            return Err(CodecError::BadValue("VERSIONS body of odd length"));
        }
        let versions = pairs.map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        Ok(Versions { versions })
    }

    /// Writes the list.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.versions.iter().for_each(|&v| out.put_u16(v));
        Ok(())
    }
}

/// One address in a NETINFO cell (`ATYPE ALEN AVAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetinfoAddr {
    /// `[04]` with ALEN 4.
    Ipv4(Ipv4Addr),
    /// `[06]` with ALEN 16.
    Ipv6(Ipv6Addr),
    /// An unknown ATYPE, or a known one with the wrong ALEN. The spec says to ignore such
    /// addresses; they are kept so the cell re-encodes unchanged.
    Other {
        /// ATYPE.
        atype: u8,
        /// AVAL.
        value: Vec<u8>,
    },
}

impl NetinfoAddr {
    /// ATYPE of IPv4.
    pub const IPV4: u8 = 4;
    /// ATYPE of IPv6.
    pub const IPV6: u8 = 6;

    /// The address, if it is one the spec recognises.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            NetinfoAddr::Ipv4(a) => Some(IpAddr::V4(*a)),
            NetinfoAddr::Ipv6(a) => Some(IpAddr::V6(*a)),
            NetinfoAddr::Other { .. } => None,
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let atype = r.u8()?;
        let value = r.u8_prefixed()?;
        Ok(match (atype, value.len()) {
            (Self::IPV4, 4) => NetinfoAddr::Ipv4(Ipv4Addr::from(Reader::new(value).take_array()?)),
            (Self::IPV6, 16) => {
                NetinfoAddr::Ipv6(Ipv6Addr::from(Reader::new(value).take_array::<16>()?))
            }
            _ => NetinfoAddr::Other {
                atype,
                value: value.to_vec(),
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            NetinfoAddr::Ipv4(a) => {
                out.put_u8(Self::IPV4);
                out.put_u8_prefixed(&a.octets(), "NETINFO address")
            }
            NetinfoAddr::Ipv6(a) => {
                out.put_u8(Self::IPV6);
                out.put_u8_prefixed(&a.octets(), "NETINFO address")
            }
            NetinfoAddr::Other { atype, value } => {
                out.put_u8(*atype);
                out.put_u8_prefixed(value, "NETINFO address")
            }
        }
    }
}

impl From<IpAddr> for NetinfoAddr {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => NetinfoAddr::Ipv4(a),
            IpAddr::V6(a) => NetinfoAddr::Ipv6(a),
        }
    }
}

/// NETINFO: the last cell of each side's link handshake: the sender's clock and the addresses
/// it sees (tor-spec §4.5). Clients should send timestamp 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netinfo {
    /// Seconds since the Unix epoch (TIME).
    pub timestamp: u32,
    /// The address the sender sees the receiver at (OTHERADDR).
    pub other_addr: NetinfoAddr,
    /// The sender's own addresses (at most 255).
    pub my_addrs: Vec<NetinfoAddr>,
}

impl Netinfo {
    /// Reads the fields; "implementations MUST ignore unexpected bytes at the end of the cell".
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let timestamp = r.u32()?;
        let other_addr = NetinfoAddr::decode(&mut r)?;
        let n = r.u8()?;
        let my_addrs = (0..n)
            .map(|_| NetinfoAddr::decode(&mut r))
            .collect::<Result<_, _>>()?;
        Ok(Netinfo {
            timestamp,
            other_addr,
            my_addrs,
        })
    }

    /// Writes the fields.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u32(self.timestamp);
        self.other_addr.encode(out)?;
        let n = u8::try_from(self.my_addrs.len()).map_err(|_| CodecError::TooLong {
            what: "NETINFO address list",
            len: self.my_addrs.len(),
        })?;
        out.put_u8(n);
        self.my_addrs.iter().try_for_each(|a| a.encode(out))
    }
}

/// CREATE2: opens a circuit with an extensible handshake (tor-spec §5.1); sent by a client or
/// by a relay extending a circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create2 {
    /// HTYPE.
    pub htype: HandshakeType,
    /// HDATA, at most [`CREATE2_HDATA_MAX`] bytes.
    pub hdata: Vec<u8>,
}

impl Create2 {
    /// Reads HTYPE, HLEN and HDATA; the rest is padding. HLEN beyond what a cell can hold is
    /// refused.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let htype = HandshakeType(r.u16()?);
        let hlen = usize::from(r.u16()?);
        if hlen > CREATE2_HDATA_MAX {
            return Err(CodecError::TooLong {
                what: "CREATE2 HDATA",
                len: hlen,
            });
        }
        Ok(Create2 {
            htype,
            hdata: r.take(hlen)?.to_vec(),
        })
    }

    /// Writes HTYPE, HLEN and HDATA.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        check_len(self.hdata.len(), CREATE2_HDATA_MAX, "CREATE2 HDATA")?;
        out.put_u16(self.htype.0);
        out.put_u16_prefixed(&self.hdata, "CREATE2 HDATA")
    }
}

/// CREATED2: a relay's answer to CREATE2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created2 {
    /// HDATA, at most [`CREATED2_HDATA_MAX`] bytes.
    pub hdata: Vec<u8>,
}

impl Created2 {
    /// Reads HLEN and HDATA; the rest is padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let hlen = usize::from(r.u16()?);
        if hlen > CREATED2_HDATA_MAX {
            return Err(CodecError::TooLong {
                what: "CREATED2 HDATA",
                len: hlen,
            });
        }
        Ok(Created2 {
            hdata: r.take(hlen)?.to_vec(),
        })
    }

    /// Writes HLEN and HDATA.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        check_len(self.hdata.len(), CREATED2_HDATA_MAX, "CREATED2 HDATA")?;
        out.put_u16_prefixed(&self.hdata, "CREATED2 HDATA")
    }
}

fn check_len(len: usize, max: usize, what: &'static str) -> Result<(), CodecError> {
    if len > max {
        return Err(CodecError::TooLong { what, len });
    }
    Ok(())
}

/// PADDING_NEGOTIATE: a client asks its guard to start or stop link padding (tor-spec §7.2,
/// padding-spec §2.6). Relays must not send it; only version 0 exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaddingNegotiate {
    /// START or STOP.
    pub command: PaddingNegotiateCmd,
    /// Low bound of the padding timeout range; 0 with START means "use the consensus value".
    pub ito_low_ms: u16,
    /// High bound of the padding timeout range.
    pub ito_high_ms: u16,
}

impl PaddingNegotiate {
    /// The only defined version.
    pub const VERSION: u8 = 0;

    /// Reads the fields; the rest is padding. Versions other than 0 are refused: their layout
    /// is unknown.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        if r.u8()? != Self::VERSION {
            return Err(CodecError::BadValue("PADDING_NEGOTIATE version"));
        }
        Ok(PaddingNegotiate {
            command: PaddingNegotiateCmd(r.u8()?),
            ito_low_ms: r.u16()?,
            ito_high_ms: r.u16()?,
        })
    }

    /// Writes version 0 and the fields.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u8(Self::VERSION);
        out.put_u8(self.command.0);
        out.put_u16(self.ito_low_ms);
        out.put_u16(self.ito_high_ms);
        Ok(())
    }
}

/// VPADDING: variable-length padding, allowed at any time once both sides use the in-protocol
/// handshake. Only its length matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vpadding {
    /// Body length in bytes.
    pub len: u16,
}

impl Vpadding {
    /// Records the length; the bytes are padding.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let len = u16::try_from(body.len()).map_err(|_| CodecError::TooLong {
            what: "VPADDING body",
            len: body.len(),
        })?;
        Ok(Vpadding { len })
    }

    /// Writes `len` zero bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.resize(out.len() + usize::from(self.len), 0);
        Ok(())
    }
}

/// One certificate of a CERTS cell, still unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// CertType.
    pub cert_type: CertType,
    /// The certificate bytes (X.509 DER for types 1-3, cert-spec formats otherwise).
    pub body: Vec<u8>,
}

/// CERTS: the certificates that bind the sender's identity keys to this link (tor-spec §4.2).
/// Sent by the responder, and by an initiator that authenticates. Only framed here; the
/// certificate module checks them (including "no more than one of each CertType").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certs {
    /// The entries in the sender's order.
    pub certs: Vec<CertEntry>,
}

impl Certs {
    /// Reads N entries; "any extra octets at the end of a CERTS cell MUST be ignored".
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let n = r.u8()?;
        let certs = (0..n)
            .map(|_| {
                Ok(CertEntry {
                    cert_type: CertType(r.u8()?),
                    body: r.u16_prefixed()?.to_vec(),
                })
            })
            .collect::<Result<_, CodecError>>()?;
        Ok(Certs { certs })
    }

    /// Writes N and the entries.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let n = u8::try_from(self.certs.len()).map_err(|_| CodecError::TooLong {
            what: "CERTS list",
            len: self.certs.len(),
        })?;
        out.put_u8(n);
        self.certs.iter().try_for_each(|c| {
            out.put_u8(c.cert_type.0);
            out.put_u16_prefixed(&c.body, "certificate")
        })
    }

    /// The first certificate of a type, if any.
    pub fn find(&self, cert_type: CertType) -> Option<&[u8]> {
        self.certs
            .iter()
            .find(|c| c.cert_type == cert_type)
            .map(|c| c.body.as_slice())
    }
}

/// AUTH_CHALLENGE: the responder's random challenge and the authentication methods it accepts
/// (tor-spec §4.3). Only a responder sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The random challenge.
    pub challenge: [u8; 32],
    /// Methods the responder accepts.
    pub methods: Vec<AuthMethod>,
}

impl AuthChallenge {
    /// Reads the fields; "initiators MUST ignore unexpected bytes at the end of the cell".
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let challenge = r.take_array()?;
        let n = r.u16()?;
        let methods = (0..n)
            .map(|_| r.u16().map(AuthMethod))
            .collect::<Result<_, _>>()?;
        Ok(AuthChallenge { challenge, methods })
    }

    /// Writes the fields.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.challenge);
        let n = u16::try_from(self.methods.len()).map_err(|_| CodecError::TooLong {
            what: "AUTH_CHALLENGE methods",
            len: self.methods.len(),
        })?;
        out.put_u16(n);
        self.methods.iter().for_each(|m| out.put_u16(m.0));
        Ok(())
    }
}

/// AUTHENTICATE: an initiator proves its identity to the responder (tor-spec §4.4). A
/// responder receiving one must check it with the method named by `auth_type`; an initiator
/// must never receive one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// AuthType.
    pub auth_type: AuthMethod,
    /// The Authentication field; see [`Auth3Body`] for type 3.
    pub auth: Vec<u8>,
}

impl Authenticate {
    /// Reads AuthType, AuthLen and the Authentication field; "responders MUST ignore extra
    /// bytes at the end of an AUTHENTICATE cell".
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        Ok(Authenticate {
            auth_type: AuthMethod(r.u16()?),
            auth: r.u16_prefixed()?.to_vec(),
        })
    }

    /// Writes the fields.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u16(self.auth_type.0);
        out.put_u16_prefixed(&self.auth, "AUTHENTICATE authentication")
    }

    /// Parses the Authentication field as Ed25519-SHA256-RFC5705 (AuthType 3).
    pub fn auth3(&self) -> Result<Auth3Body<'_>, CodecError> {
        if self.auth_type != AuthMethod::ED25519_SHA256_RFC5705 {
            return Err(CodecError::BadValue("AUTHENTICATE auth type"));
        }
        Auth3Body::decode(&self.auth)
    }
}

/// The fixed fields of an Ed25519-SHA256-RFC5705 authenticator (tor-spec §4.4.2), TYPE
/// through RAND: exactly what the initiator signs, unless a peer adds bytes after RAND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth3Fields {
    /// SHA-256 of the initiator's RSA1024 identity key.
    pub cid: [u8; 32],
    /// SHA-256 of the responder's RSA1024 identity key.
    pub sid: [u8; 32],
    /// The initiator's Ed25519 identity key.
    pub cid_ed: [u8; 32],
    /// The responder's Ed25519 identity key, or all zero.
    pub sid_ed: [u8; 32],
    /// SHA-256 of the responder's handshake bytes through AUTH_CHALLENGE.
    pub slog: [u8; 32],
    /// SHA-256 of the initiator's handshake bytes so far.
    pub clog: [u8; 32],
    /// SHA-256 of the responder's TLS link certificate.
    pub scert: [u8; 32],
    /// RFC 5705 exporter output bound to this TLS session.
    pub tlssecrets: [u8; 32],
    /// 24 random bytes chosen by the initiator.
    pub rand: [u8; 24],
}

impl Auth3Fields {
    /// The TYPE field.
    pub const TYPE: [u8; 8] = *b"AUTH0003";
    /// Bytes from TYPE through RAND.
    pub const LEN: usize = 8 + 8 * 32 + 24;

    /// Writes TYPE through RAND: the bytes to sign with the Ed25519 authenticate key.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put(&Self::TYPE);
        for f in [
            &self.cid,
            &self.sid,
            &self.cid_ed,
            &self.sid_ed,
            &self.slog,
            &self.clog,
            &self.scert,
            &self.tlssecrets,
        ] {
            out.put(f);
        }
        out.put(&self.rand);
    }
}

/// A parsed Ed25519-SHA256-RFC5705 authenticator, borrowing the signed bytes so the caller can
/// verify SIG over exactly what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth3Body<'a> {
    /// TYPE through RAND.
    pub fields: Auth3Fields,
    /// Everything before SIG: the fields plus any extra bytes after RAND, which the signature
    /// covers but which the responder must otherwise ignore.
    pub signed: &'a [u8],
    /// The Ed25519 signature over `signed`.
    pub sig: [u8; ed25519_dalek::SIGNATURE_LENGTH],
}

impl<'a> Auth3Body<'a> {
    /// Length of SIG.
    pub const SIG_LEN: usize = ed25519_dalek::SIGNATURE_LENGTH;

    /// Splits an Authentication field: SIG is its last 64 bytes, the fields its first
    /// [`Auth3Fields::LEN`] bytes.
    pub fn decode(auth: &'a [u8]) -> Result<Self, CodecError> {
        let signed_len = auth
            .len()
            .checked_sub(Self::SIG_LEN)
            .filter(|&n| n >= Auth3Fields::LEN)
            .ok_or(CodecError::Truncated)?;
        let (signed, sig) = auth.split_at(signed_len);
        let mut r = Reader::new(signed);
        if r.take_array::<8>()? != Auth3Fields::TYPE {
            return Err(CodecError::BadValue("AUTHENTICATE TYPE"));
        }
        let fields = Auth3Fields {
            cid: r.take_array()?,
            sid: r.take_array()?,
            cid_ed: r.take_array()?,
            sid_ed: r.take_array()?,
            slog: r.take_array()?,
            clog: r.take_array()?,
            scert: r.take_array()?,
            tlssecrets: r.take_array()?,
            rand: r.take_array()?,
        };
        Ok(Auth3Body {
            fields,
            signed,
            sig: Reader::new(sig).take_array()?,
        })
    }
}

/// AUTHORIZE: reserved for scanning-resistance designs; no one sends it yet. Kept opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorize {
    /// The body as sent.
    pub body: Vec<u8>,
}

impl Authorize {
    /// Keeps the body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        Ok(Authorize {
            body: body.to_vec(),
        })
    }

    /// Writes the body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.body);
        Ok(())
    }
}

/// Any channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChanMsg {
    /// PADDING.
    Padding(Padding),
    /// CREATE (TAP).
    Create(Create),
    /// CREATED (TAP).
    Created(Created),
    /// RELAY.
    Relay(Relay),
    /// DESTROY.
    Destroy(Destroy),
    /// CREATE_FAST.
    CreateFast(CreateFast),
    /// CREATED_FAST.
    CreatedFast(CreatedFast),
    /// VERSIONS.
    Versions(Versions),
    /// NETINFO.
    Netinfo(Netinfo),
    /// RELAY_EARLY.
    RelayEarly(RelayEarly),
    /// CREATE2.
    Create2(Create2),
    /// CREATED2.
    Created2(Created2),
    /// PADDING_NEGOTIATE.
    PaddingNegotiate(PaddingNegotiate),
    /// VPADDING.
    Vpadding(Vpadding),
    /// CERTS.
    Certs(Certs),
    /// AUTH_CHALLENGE.
    AuthChallenge(AuthChallenge),
    /// AUTHENTICATE.
    Authenticate(Authenticate),
    /// AUTHORIZE.
    Authorize(Authorize),
    /// A command this crate does not know; receivers drop it (tor-spec §3).
    Unrecognized {
        /// The command.
        cmd: ChanCmd,
        /// The body as received (509 bytes for a fixed-length command).
        body: Vec<u8>,
    },
}

impl ChanMsg {
    /// The command this message is sent with.
    pub fn cmd(&self) -> ChanCmd {
        match self {
            ChanMsg::Padding(_) => ChanCmd::PADDING,
            ChanMsg::Create(_) => ChanCmd::CREATE,
            ChanMsg::Created(_) => ChanCmd::CREATED,
            ChanMsg::Relay(_) => ChanCmd::RELAY,
            ChanMsg::Destroy(_) => ChanCmd::DESTROY,
            ChanMsg::CreateFast(_) => ChanCmd::CREATE_FAST,
            ChanMsg::CreatedFast(_) => ChanCmd::CREATED_FAST,
            ChanMsg::Versions(_) => ChanCmd::VERSIONS,
            ChanMsg::Netinfo(_) => ChanCmd::NETINFO,
            ChanMsg::RelayEarly(_) => ChanCmd::RELAY_EARLY,
            ChanMsg::Create2(_) => ChanCmd::CREATE2,
            ChanMsg::Created2(_) => ChanCmd::CREATED2,
            ChanMsg::PaddingNegotiate(_) => ChanCmd::PADDING_NEGOTIATE,
            ChanMsg::Vpadding(_) => ChanCmd::VPADDING,
            ChanMsg::Certs(_) => ChanCmd::CERTS,
            ChanMsg::AuthChallenge(_) => ChanCmd::AUTH_CHALLENGE,
            ChanMsg::Authenticate(_) => ChanCmd::AUTHENTICATE,
            ChanMsg::Authorize(_) => ChanCmd::AUTHORIZE,
            ChanMsg::Unrecognized { cmd, .. } => *cmd,
        }
    }

    /// Decodes the body of a cell with command `cmd`.
    ///
    /// A fixed-length command's body may not exceed [`BODY_LEN`], a variable-length one's
    /// 65535 bytes: longer bodies cannot have come from a cell.
    pub fn decode(cmd: ChanCmd, body: &[u8]) -> Result<Self, CodecError> {
        let max = if cmd.is_var_len() {
            usize::from(u16::MAX)
        } else {
            BODY_LEN
        };
        check_len(body.len(), max, "cell body")?;
        Ok(match cmd {
            ChanCmd::PADDING => ChanMsg::Padding(Padding::decode(body)?),
            ChanCmd::CREATE => ChanMsg::Create(Create::decode(body)?),
            ChanCmd::CREATED => ChanMsg::Created(Created::decode(body)?),
            ChanCmd::RELAY => ChanMsg::Relay(Relay::decode(body)?),
            ChanCmd::DESTROY => ChanMsg::Destroy(Destroy::decode(body)?),
            ChanCmd::CREATE_FAST => ChanMsg::CreateFast(CreateFast::decode(body)?),
            ChanCmd::CREATED_FAST => ChanMsg::CreatedFast(CreatedFast::decode(body)?),
            ChanCmd::VERSIONS => ChanMsg::Versions(Versions::decode(body)?),
            ChanCmd::NETINFO => ChanMsg::Netinfo(Netinfo::decode(body)?),
            ChanCmd::RELAY_EARLY => ChanMsg::RelayEarly(RelayEarly::decode(body)?),
            ChanCmd::CREATE2 => ChanMsg::Create2(Create2::decode(body)?),
            ChanCmd::CREATED2 => ChanMsg::Created2(Created2::decode(body)?),
            ChanCmd::PADDING_NEGOTIATE => {
                ChanMsg::PaddingNegotiate(PaddingNegotiate::decode(body)?)
            }
            ChanCmd::VPADDING => ChanMsg::Vpadding(Vpadding::decode(body)?),
            ChanCmd::CERTS => ChanMsg::Certs(Certs::decode(body)?),
            ChanCmd::AUTH_CHALLENGE => ChanMsg::AuthChallenge(AuthChallenge::decode(body)?),
            ChanCmd::AUTHENTICATE => ChanMsg::Authenticate(Authenticate::decode(body)?),
            ChanCmd::AUTHORIZE => ChanMsg::Authorize(Authorize::decode(body)?),
            _ => ChanMsg::Unrecognized {
                cmd,
                body: body.to_vec(),
            },
        })
    }

    /// Appends the body, unpadded.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            ChanMsg::Padding(m) => m.encode(out),
            ChanMsg::Create(m) => m.encode(out),
            ChanMsg::Created(m) => m.encode(out),
            ChanMsg::Relay(m) => m.encode(out),
            ChanMsg::Destroy(m) => m.encode(out),
            ChanMsg::CreateFast(m) => m.encode(out),
            ChanMsg::CreatedFast(m) => m.encode(out),
            ChanMsg::Versions(m) => m.encode(out),
            ChanMsg::Netinfo(m) => m.encode(out),
            ChanMsg::RelayEarly(m) => m.encode(out),
            ChanMsg::Create2(m) => m.encode(out),
            ChanMsg::Created2(m) => m.encode(out),
            ChanMsg::PaddingNegotiate(m) => m.encode(out),
            ChanMsg::Vpadding(m) => m.encode(out),
            ChanMsg::Certs(m) => m.encode(out),
            ChanMsg::AuthChallenge(m) => m.encode(out),
            ChanMsg::Authenticate(m) => m.encode(out),
            ChanMsg::Authorize(m) => m.encode(out),
            ChanMsg::Unrecognized { body, .. } => {
                out.put(body);
                Ok(())
            }
        }
    }
}

/// Why a framed cell could not become a [`ChanCell`]: each is a protocol violation by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChanCellError {
    /// The circuit id is wrong for the command.
    #[error(transparent)]
    CircId(#[from] CircIdError),
    /// The body is malformed.
    #[error("malformed {cmd} cell: {error}")]
    Body {
        /// The cell's command.
        cmd: ChanCmd,
        /// What was wrong.
        error: CodecError,
    },
}

/// A whole channel cell: circuit id and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChanCell {
    /// The circuit, or `None` for id 0.
    pub circ_id: Option<CircId>,
    /// The message.
    pub msg: ChanMsg,
}

impl ChanCell {
    /// Checks a framed cell's circuit id against its command and decodes its body.
    pub fn decode(raw: &RawCell<'_>) -> Result<Self, ChanCellError> {
        raw.cmd.allows_circ_id(raw.circ_id)?;
        let msg =
            ChanMsg::decode(raw.cmd, raw.body.as_slice()).map_err(|error| ChanCellError::Body {
                cmd: raw.cmd,
                error,
            })?;
        Ok(ChanCell {
            circ_id: raw.circ_id,
            msg,
        })
    }

    /// Frames and decodes the next cell in a stream buffer: `Ok(None)` until `buf` holds a
    /// whole cell, then the cell and the bytes it used.
    pub fn decode_from(
        buf: &[u8],
        circ_id_len: CircIdLen,
    ) -> Result<Option<(Self, usize)>, ChanCellError> {
        match RawCell::decode(buf, circ_id_len) {
            None => Ok(None),
            Some((raw, used)) => Ok(Some((ChanCell::decode(&raw)?, used))),
        }
    }

    /// Appends the framed cell: fixed-length bodies padded with zeros to [`BODY_LEN`],
    /// variable-length ones prefixed with their length. The first VERSIONS cell must be sent
    /// with [`CircIdLen::BEFORE_NEGOTIATION`].
    ///
    /// Fails, leaving `out` as it was, if the circuit id is wrong for the command or too wide,
    /// or the body does not fit its cell.
    pub fn encode(&self, circ_id_len: CircIdLen, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let start = out.len();
        let r = self.encode_inner(circ_id_len, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_inner(&self, circ_id_len: CircIdLen, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let cmd = self.msg.cmd();
        cmd.allows_circ_id(self.circ_id)
            .map_err(|_| CodecError::BadValue("circuit id for command"))?;
        put_header(self.circ_id, cmd, circ_id_len, out)?;
        if cmd.is_var_len() {
            let len_at = out.len();
            out.put_u16(0);
            let body_at = out.len();
            self.msg.encode(out)?;
            let len = out.len() - body_at;
            let len = u16::try_from(len).map_err(|_| CodecError::TooLong {
                what: "variable-length cell body",
                len,
            })?;
            out[len_at..body_at].copy_from_slice(&len.to_be_bytes());
        } else {
            let body_at = out.len();
            self.msg.encode(out)?;
            let len = out.len() - body_at;
            check_len(len, BODY_LEN, "fixed-length cell body")?;
            out.resize(body_at + BODY_LEN, 0);
        }
        Ok(())
    }

    /// The framed form of a fixed-length cell whose body is already laid out, without
    /// building a [`ChanMsg`]; for relay cells on the hot path.
    pub fn encode_fixed(
        circ_id: Option<CircId>,
        cmd: ChanCmd,
        body: &[u8; BODY_LEN],
        circ_id_len: CircIdLen,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        RawCell {
            circ_id,
            cmd,
            body: CellBody::Fixed(body),
        }
        .encode(circ_id_len, out)
    }
}

/// Decodes `data[1..]` as the body of a cell with command `data[0]`, then checks that
/// re-encoding and decoding again gives the same message. For fuzz targets: panics only if
/// an encoder and its decoder disagree.
pub fn fuzz_decode(data: &[u8]) {
    let Some((&cmd, body)) = data.split_first() else {
        return;
    };
    let cmd = ChanCmd(cmd);
    if let Ok(msg) = ChanMsg::decode(cmd, body) {
        let mut out = Vec::new();
        assert_eq!(msg.encode(&mut out), Ok(()));
        assert_eq!(ChanMsg::decode(cmd, &out), Ok(msg));
    }
}

/// Frames and decodes every cell in `data` (4-byte circuit ids), checking that each re-encodes
/// to a cell that decodes the same. For fuzz targets.
pub fn fuzz_decode_cells(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((cell, used))) = ChanCell::decode_from(rest, CircIdLen::Four) {
        let mut out = Vec::new();
        assert_eq!(cell.encode(CircIdLen::Four, &mut out), Ok(()));
        let again = ChanCell::decode_from(&out, CircIdLen::Four);
        assert_eq!(again, Ok(Some((cell, out.len()))));
        rest = rest.get(used..).unwrap_or_default();
    }
}

/// Cells captured from C tor, shared by this module's tests and the fuzz corpus seeds.
#[cfg(test)]
pub(crate) mod test_vectors {
    // Bytes captured from C tor 0.4.9.11 acting as responder on 127.0.0.1 (a throwaway relay
    // with fresh keys), after we sent VERSIONS [3, 4, 5] with 2-byte circuit ids. Its fixed
    // cells are zero-padded; only their meaningful prefix is kept here. Data, not code.
    pub(crate) const TOR_VERSIONS_CERTS_AUTH_CHALLENGE: &str = concat!(
        "0000070006000300040005000000008105b70501024630820242308201aba003020102020804d14e91615217",
        "6a300d06092a864886f70d01010b050030243122302006035504030c197777772e7870376e79656772766265",
        "7566356568762e636f6d301e170d3236313031393030303030305a170d3237303230333030303030305a301f",
        "311d301b06035504030c147777772e64636c79746f6965376171642e6e657430820122300d06092a864886f7",
        "0d01010105000382010f003082010a0282010100ad1481f30c9bf3c60e6b6d172e842c48b01dc72cf731b442",
        "5e07b51d054652bf03585c584d68d83706bb9138aac5655038b64542c57ac6d36e950d5372ba51da6fbaf373",
        "55be642010075cccb40ac80a9492c16fb7673a1d703351e68e7fd77d3528cc11a2d364cdda7518a05d1c411b",
        "279468b692a7d4d3ec19f295de31b6748a4611e86b317ee5c0cd4af1739dfb165ee5d876cca5795bc81ad362",
        "cf4a01924254aa44ba647c79f0c3b5bf415ff1ea691d66329a1fe74d658dce9e23ad3d21e666a81099c76325",
        "0f1a1f656ca0274ec0c3ce084f4c1c9ede03d0f9496ca7ba19909a149b6ffdd4aea4b353619dfb226ffd011a",
        "3683b5d61dcd0cad9b543ff70203010001300d06092a864886f70d01010b0500038181003216011136a4bb75",
        "fc857fd3c09ff447cdb0dd0757e9300edae20b3eb33fbf1cfd1d888c68126f75473dc75e63ec4d5a80ed6758",
        "c5616940597cc1deebff15d13c8d9fbc6c4f36b0e56902badaf04fa0ffe561f1fd5c1d6e29251a945f3738a5",
        "746b715c50872d06438cf62e8d1800b270d56abf04b253efe04a66eddf00b8cb0201c8308201c43082012da0",
        "03020102020900b826f69f6d3da67e300d06092a864886f70d01010b050030243122302006035504030c1977",
        "77772e7870376e796567727662657566356568762e636f6d301e170d3236303230383030303030305a170d32",
        "37303230383030303030305a30243122302006035504030c197777772e7870376e7965677276626575663565",
        "68762e636f6d30819f300d06092a864886f70d010101050003818d0030818902818100c798ee6237f874e84b",
        "86a9c9e135185083d99147a5873181a99dbe6533b1d7557de05ba0ec4cf92cbae952b3db2074b8fc0c9f8fd7",
        "70430e127aabe8a2a5b47046901087620f40ad1b3031fa78d3bb49650b605ba9592241f4f28ba4af1a5fd21d",
        "e8038245303fc19473eeccd23dabc3b19bbb71016a54303b46c9a429d457eb0203010001300d06092a864886",
        "f70d01010b050003818100305ea4b1f5f7ebbc81581e543104c83a3db1d314646181dde1d6e24ff52a86c3ee",
        "10ce7ba909bbe383dea0c2cf89067df5da3718c84a0259fb6b202ebc60e0bbf7f87fcda2f8d1fc242b94aea1",
        "4942df8be4735b5479d140e977662f96d06ce59f0039c85c3560e7409e4ad773f647d13a21bcb5f374fda46e",
        "13c015cb6ba89604008c010400079f1f01b20689ecad550560a49534f75ea3ecef652aba19f6468ee84eab8c",
        "0e58168f4c0100200400aa8123b2239357eaed24774ef697df339af785c4901116366779677b0d9b4c11cbb1",
        "eea6f6121d2505ee77cb8ad5f7882c1743cac3336d6a773511e3e0d341e8da7f1e8af4ddac68941c3cb451e4",
        "b065afd45ceeade07a32a13a43e27523b008050068010500079c7f03cc14af5bf24023c6c2a7577b7582a50b",
        "1aa93d92b91fa93277c68cb722c550290008b31b0c83a40d60635a60c511dbf5f53cf4b94ff0def68a1ede89",
        "a70d8dec635210ad4dde1c6b3f61c3f20cb7aee5ba1a705ae1af6b413ac889d198f4e367040700a5aa8123b2",
        "239357eaed24774ef697df339af785c4901116366779677b0d9b4c110007ad2f804309f8d3dbc6f543eaadbb",
        "4fd532536c3b7628c375de9f7bee3216a17e548526aea247adb796acef57cb222178350e78e8104c39325f89",
        "1b3b59502a00388b8fa4343f552a02b298fd346bb685b2971a0d885ad96004455e20c4e3a191c7b6a32b11bf",
        "23fbbd52329a84bfa6402ac67a3672ad4c5e4178c765ff357fe3e82bc90000000082002412c2866971d179b6",
        "1a866e947a649edb71d52cf0ec5a3083a97b6fa240fc0b1b00010003",
    );
    pub(crate) const TOR_NETINFO: &str = "00000000086b0613ce04047f0000010104047f000001";
    pub(crate) const TOR_CREATED_FAST: &str = concat!(
        "8000000106f1bfd4d884088863355cb01a31acacb875bae236b8bbd5f4468a7d2ff4bbb58ee861d13e90f4bb",
        "37",
    );
    pub(crate) const TOR_DESTROY: &str = "800000030401";
}

#[cfg(test)]
mod tests {
    use super::test_vectors::*;
    use super::*;
    use crate::cell::CELL_LEN_V4;
    use crate::link_version::{circ_id_len, negotiate, SUPPORTED};
    use proptest::prelude::*;

    /// Frames `cell`, checks the bytes, decodes them back and checks equality.
    fn check_cell(cell: &ChanCell, circ_id_len: CircIdLen, expected: &[u8]) {
        let mut out = Vec::new();
        cell.encode(circ_id_len, &mut out).expect("encodes");
        assert_eq!(out, expected);
        let (back, used) = ChanCell::decode_from(&out, circ_id_len)
            .expect("decodes")
            .expect("whole cell");
        assert_eq!(used, out.len());
        assert_eq!(&back, cell);
    }

    fn fixed(circ: [u8; 4], cmd: u8, body: &[u8]) -> Vec<u8> {
        let mut v = circ.to_vec();
        v.push(cmd);
        v.extend_from_slice(body);
        v.resize(4 + 1 + BODY_LEN, 0);
        v
    }

    #[test]
    fn versions_cell_from_spec() {
        // tor-spec §4.1: the first VERSIONS cell uses 2-byte circuit ids.
        let bytes = hex::decode("0000070004" /* id, cmd, len */).expect("hex");
        let mut bytes = bytes;
        bytes.extend([0x00, 0x04, 0x00, 0x05]);
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Versions(Versions {
                versions: vec![4, 5],
            }),
        };
        check_cell(&cell, CircIdLen::BEFORE_NEGOTIATION, &bytes);
    }

    #[test]
    fn versions_rejects_odd_length() {
        assert_eq!(
            Versions::decode(&[0, 4, 0]),
            Err(CodecError::BadValue("VERSIONS body of odd length"))
        );
        let raw = [0u8, 0, 7, 0, 3, 0, 4, 0];
        assert_eq!(
            ChanCell::decode_from(&raw, CircIdLen::Two),
            Err(ChanCellError::Body {
                cmd: ChanCmd::VERSIONS,
                error: CodecError::BadValue("VERSIONS body of odd length"),
            })
        );
        assert_eq!(Versions::decode(&[]), Ok(Versions { versions: vec![] }));
    }

    #[test]
    fn netinfo_layout() {
        // TIME 0x5f000000, OTHERADDR 4/4/192.0.2.1, NMYADDR 2: 4/4/198.51.100.7 and
        // 6/16/2001:db8::1, then zero padding.
        let mut body = vec![
            0x5f, 0, 0, 0, 4, 4, 192, 0, 2, 1, 2, 4, 4, 198, 51, 100, 7, 6, 16,
        ];
        body.extend([0x20, 0x01, 0x0d, 0xb8]);
        body.extend([0; 11]);
        body.push(1);
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Netinfo(Netinfo {
                timestamp: 0x5f00_0000,
                other_addr: NetinfoAddr::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
                my_addrs: vec![
                    NetinfoAddr::Ipv4(Ipv4Addr::new(198, 51, 100, 7)),
                    NetinfoAddr::Ipv6("2001:db8::1".parse().expect("addr")),
                ],
            }),
        };
        check_cell(&cell, CircIdLen::Four, &fixed([0; 4], 8, &body));
    }

    #[test]
    fn netinfo_keeps_odd_addresses() {
        // OTHERADDR of unknown type 9 (2 bytes), one "IPv4" of the wrong length 3.
        let body = [0, 0, 0, 0, 9, 2, 0xaa, 0xbb, 1, 4, 3, 1, 2, 3, 0xff, 0xff];
        let n = Netinfo::decode(&body).expect("decodes");
        assert_eq!(
            n.other_addr,
            NetinfoAddr::Other {
                atype: 9,
                value: vec![0xaa, 0xbb]
            }
        );
        assert_eq!(n.other_addr.ip(), None);
        assert_eq!(
            n.my_addrs,
            vec![NetinfoAddr::Other {
                atype: 4,
                value: vec![1, 2, 3]
            }]
        );
        let mut out = Vec::new();
        n.encode(&mut out).expect("encodes");
        assert_eq!(out, body[..14]);
        // A missing address is truncation.
        assert_eq!(
            Netinfo::decode(&[0, 0, 0, 0, 4, 4, 1, 2, 3, 4, 1, 4, 4, 1]),
            Err(CodecError::Truncated)
        );
        assert_eq!(Netinfo::decode(&[0, 0, 0]), Err(CodecError::Truncated));
    }

    #[test]
    fn create2_and_created2() {
        let hdata: Vec<u8> = (0..84).collect();
        let mut body = vec![0x00, 0x02, 0x00, 84];
        body.extend(&hdata);
        let cell = ChanCell {
            circ_id: CircId::new(0x8000_0042),
            msg: ChanMsg::Create2(Create2 {
                htype: HandshakeType::NTOR,
                hdata: hdata.clone(),
            }),
        };
        check_cell(
            &cell,
            CircIdLen::Four,
            &fixed([0x80, 0, 0, 0x42], 10, &body),
        );

        let mut body = vec![0x00, 64];
        body.extend(&hdata[..64]);
        let cell = ChanCell {
            circ_id: CircId::new(0x8000_0042),
            msg: ChanMsg::Created2(Created2 {
                hdata: hdata[..64].to_vec(),
            }),
        };
        check_cell(
            &cell,
            CircIdLen::Four,
            &fixed([0x80, 0, 0, 0x42], 11, &body),
        );

        // HLEN larger than a cell can carry, and HLEN past the end of the body.
        assert_eq!(
            Create2::decode(&[0, 2, 0x01, 0xfa]),
            Err(CodecError::TooLong {
                what: "CREATE2 HDATA",
                len: 506
            })
        );
        assert_eq!(
            Create2::decode(&[0, 2, 0, 10, 1]),
            Err(CodecError::Truncated)
        );
        assert_eq!(
            Created2::decode(&[0x01, 0xfc]),
            Err(CodecError::TooLong {
                what: "CREATED2 HDATA",
                len: 508
            })
        );
        let mut out = Vec::new();
        let big = Create2 {
            htype: HandshakeType::NTOR_V3,
            hdata: vec![0; CREATE2_HDATA_MAX + 1],
        };
        assert_eq!(
            big.encode(&mut out),
            Err(CodecError::TooLong {
                what: "CREATE2 HDATA",
                len: 506
            })
        );
        // The largest fits exactly.
        let max = ChanCell {
            circ_id: CircId::new(1),
            msg: ChanMsg::Create2(Create2 {
                htype: HandshakeType::NTOR_V3,
                hdata: vec![7; CREATE2_HDATA_MAX],
            }),
        };
        let mut out = Vec::new();
        max.encode(CircIdLen::Four, &mut out).expect("fits");
        assert_eq!(out.len(), 514);
    }

    #[test]
    fn fast_and_tap_cells() {
        let x = [0x11; 20];
        let cell = ChanCell {
            circ_id: CircId::new(9),
            msg: ChanMsg::CreateFast(CreateFast { x }),
        };
        check_cell(&cell, CircIdLen::Four, &fixed([0, 0, 0, 9], 5, &x));
        let mut body = [0x22; 40];
        body[20..].fill(0x33);
        let cell = ChanCell {
            circ_id: CircId::new(9),
            msg: ChanMsg::CreatedFast(CreatedFast {
                y: [0x22; 20],
                kh: [0x33; 20],
            }),
        };
        check_cell(&cell, CircIdLen::Four, &fixed([0, 0, 0, 9], 6, &body));
        assert_eq!(CreatedFast::decode(&[0; 39]), Err(CodecError::Truncated));

        let cell = ChanCell {
            circ_id: CircId::new(9),
            msg: ChanMsg::Create(Create {
                hdata: [0x44; TAP_C_HANDSHAKE_LEN],
            }),
        };
        check_cell(
            &cell,
            CircIdLen::Four,
            &fixed([0, 0, 0, 9], 1, &[0x44; 186]),
        );
        let cell = ChanCell {
            circ_id: CircId::new(9),
            msg: ChanMsg::Created(Created {
                hdata: [0x55; TAP_S_HANDSHAKE_LEN],
            }),
        };
        check_cell(
            &cell,
            CircIdLen::Four,
            &fixed([0, 0, 0, 9], 2, &[0x55; 148]),
        );
    }

    #[test]
    fn destroy_and_reasons() {
        let cell = ChanCell {
            circ_id: CircId::new(0x1234),
            msg: ChanMsg::Destroy(Destroy {
                reason: DestroyReason::CHANNEL_CLOSED,
            }),
        };
        check_cell(&cell, CircIdLen::Two, &{
            let mut v = vec![0x12, 0x34, 4, 8];
            v.resize(512, 0);
            v
        });
        assert_eq!(Destroy::decode(&[]), Err(CodecError::Truncated));
        let names: Vec<_> = (0..=12).filter_map(|r| DestroyReason(r).name()).collect();
        assert_eq!(
            names,
            [
                "NONE",
                "PROTOCOL",
                "INTERNAL",
                "REQUESTED",
                "HIBERNATING",
                "RESOURCELIMIT",
                "CONNECTFAILED",
                "OR_IDENTITY",
                "CHANNEL_CLOSED",
                "FINISHED",
                "TIMEOUT",
                "DESTROYED",
                "NOSUCHSERVICE"
            ]
        );
        assert_eq!(DestroyReason(13).name(), None);
        assert_eq!(DestroyReason::NOSUCHSERVICE.name(), Some("NOSUCHSERVICE"));
    }

    #[test]
    fn relay_cells_are_opaque_and_whole() {
        let mut body = [0u8; BODY_LEN];
        body.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i * 7) as u8);
        for (cmd, msg) in [
            (3, ChanMsg::Relay(Relay { body })),
            (9, ChanMsg::RelayEarly(RelayEarly { body })),
        ] {
            let cell = ChanCell {
                circ_id: CircId::new(0x8000_0001),
                msg,
            };
            check_cell(&cell, CircIdLen::Four, &fixed([0x80, 0, 0, 1], cmd, &body));
        }
        assert_eq!(Relay::decode(&body[..508]), Err(CodecError::Truncated));
        let mut out = Vec::new();
        ChanCell::encode_fixed(
            CircId::new(5),
            ChanCmd::RELAY,
            &body,
            CircIdLen::Four,
            &mut out,
        )
        .expect("encodes");
        assert_eq!(out, fixed([0, 0, 0, 5], 3, &body));
    }

    #[test]
    fn padding_cells() {
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Padding(Padding),
        };
        check_cell(&cell, CircIdLen::Four, &fixed([0; 4], 0, &[]));
        // Any padding content is accepted.
        assert_eq!(Padding::decode(&[0xff; 509]), Ok(Padding));

        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Vpadding(Vpadding { len: 3 }),
        };
        check_cell(&cell, CircIdLen::Four, &[0, 0, 0, 0, 128, 0, 3, 0, 0, 0]);
        assert_eq!(Vpadding::decode(&[1, 2, 3, 4]), Ok(Vpadding { len: 4 }));

        // padding-spec: START with consensus defaults is all zero timeouts.
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::PaddingNegotiate(PaddingNegotiate {
                command: PaddingNegotiateCmd::START,
                ito_low_ms: 1500,
                ito_high_ms: 9500,
            }),
        };
        check_cell(
            &cell,
            CircIdLen::Four,
            &fixed([0; 4], 12, &[0, 2, 0x05, 0xdc, 0x25, 0x1c]),
        );
        assert_eq!(
            PaddingNegotiate::decode(&[1, 2, 0, 0, 0, 0]),
            Err(CodecError::BadValue("PADDING_NEGOTIATE version"))
        );
        assert_eq!(
            PaddingNegotiate::decode(&[0, 1, 0, 0, 0]),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn certs_framing() {
        // N=2: type 4 with 3 bytes, type 7 with 0 bytes, then ignored trailing bytes.
        let body = [2, 4, 0, 3, 0xa, 0xb, 0xc, 7, 0, 0, 0xee];
        let certs = Certs::decode(&body).expect("decodes");
        assert_eq!(
            certs.certs,
            vec![
                CertEntry {
                    cert_type: CertType::IDENTITY_V_SIGNING,
                    body: vec![0xa, 0xb, 0xc]
                },
                CertEntry {
                    cert_type: CertType::RSA_ID_V_IDENTITY,
                    body: vec![]
                },
            ]
        );
        assert_eq!(
            certs.find(CertType::IDENTITY_V_SIGNING),
            Some(&[0xa, 0xb, 0xc][..])
        );
        assert_eq!(certs.find(CertType::RSA_ID_X509), None);
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Certs(certs),
        };
        check_cell(
            &cell,
            CircIdLen::Four,
            &[0, 0, 0, 0, 129, 0, 10, 2, 4, 0, 3, 0xa, 0xb, 0xc, 7, 0, 0],
        );
        assert_eq!(
            Certs::decode(&[1, 4, 0, 3, 0xa]),
            Err(CodecError::Truncated)
        );
        assert_eq!(Certs::decode(&[]), Err(CodecError::Truncated));
    }

    #[test]
    fn auth_challenge_layout() {
        let mut bytes = vec![0, 0, 0, 0, 130, 0, 38];
        bytes.extend([0x5a; 32]);
        bytes.extend([0, 2, 0, 1, 0, 3]);
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::AuthChallenge(AuthChallenge {
                challenge: [0x5a; 32],
                methods: vec![
                    AuthMethod::RSA_SHA256_TLSSECRET,
                    AuthMethod::ED25519_SHA256_RFC5705,
                ],
            }),
        };
        check_cell(&cell, CircIdLen::Four, &bytes);
        // Trailing bytes are ignored, a short method list is not.
        let mut padded = bytes[7..].to_vec();
        padded.extend([0, 0]);
        assert_eq!(
            ChanMsg::decode(ChanCmd::AUTH_CHALLENGE, &padded),
            Ok(cell.msg.clone())
        );
        assert_eq!(
            AuthChallenge::decode(&bytes[7..bytes.len() - 1]),
            Err(CodecError::Truncated)
        );
    }

    fn sample_auth3() -> Auth3Fields {
        Auth3Fields {
            cid: [1; 32],
            sid: [2; 32],
            cid_ed: [3; 32],
            sid_ed: [4; 32],
            slog: [5; 32],
            clog: [6; 32],
            scert: [7; 32],
            tlssecrets: [8; 32],
            rand: [9; 24],
        }
    }

    #[test]
    fn authenticate_type3_fields() {
        let fields = sample_auth3();
        let mut auth = Vec::new();
        fields.encode(&mut auth);
        assert_eq!(auth.len(), Auth3Fields::LEN);
        assert_eq!(auth.len(), 288);
        assert_eq!(&auth[..8], b"AUTH0003");
        assert_eq!(&auth[8..40], &[1; 32]);
        assert_eq!(&auth[232..264], &[8; 32]);
        assert_eq!(&auth[264..288], &[9; 24]);
        auth.extend([0xcc; 64]);
        let msg = Authenticate {
            auth_type: AuthMethod::ED25519_SHA256_RFC5705,
            auth: auth.clone(),
        };
        let mut bytes = vec![0, 0, 0, 0, 131, 0x01, 0x64, 0, 3, 0x01, 0x60];
        bytes.extend(&auth);
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Authenticate(msg.clone()),
        };
        check_cell(&cell, CircIdLen::Four, &bytes);

        let parsed = msg.auth3().expect("parses");
        assert_eq!(parsed.fields, fields);
        assert_eq!(parsed.signed, &auth[..288]);
        assert_eq!(parsed.sig, [0xcc; 64]);

        // Extra bytes after RAND are signed but otherwise ignored.
        let mut longer = auth[..288].to_vec();
        longer.extend([0xdd; 5]);
        longer.extend([0xee; 64]);
        let parsed = Auth3Body::decode(&longer).expect("parses");
        assert_eq!(parsed.fields, fields);
        assert_eq!(parsed.signed.len(), 293);
        assert_eq!(parsed.sig, [0xee; 64]);

        // Too short, wrong TYPE, wrong AuthType.
        assert_eq!(Auth3Body::decode(&auth[..351]), Err(CodecError::Truncated));
        let mut wrong = auth.clone();
        wrong[7] = b'1';
        assert_eq!(
            Auth3Body::decode(&wrong),
            Err(CodecError::BadValue("AUTHENTICATE TYPE"))
        );
        let rsa = Authenticate {
            auth_type: AuthMethod::RSA_SHA256_TLSSECRET,
            auth,
        };
        assert_eq!(
            rsa.auth3(),
            Err(CodecError::BadValue("AUTHENTICATE auth type"))
        );
        // Extra bytes after the Authentication field are ignored.
        assert_eq!(
            Authenticate::decode(&[0, 3, 0, 1, 0xaa, 0xbb]),
            Ok(Authenticate {
                auth_type: AuthMethod(3),
                auth: vec![0xaa]
            })
        );
    }

    #[test]
    fn authorize_and_unrecognized() {
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Authorize(Authorize { body: vec![1, 2] }),
        };
        check_cell(&cell, CircIdLen::Four, &[0, 0, 0, 0, 132, 0, 2, 1, 2]);
        let cell = ChanCell {
            circ_id: None,
            msg: ChanMsg::Unrecognized {
                cmd: ChanCmd(200),
                body: vec![9],
            },
        };
        check_cell(&cell, CircIdLen::Four, &[0, 0, 0, 0, 200, 0, 1, 9]);
        // An unknown fixed-length command keeps its whole body.
        let raw = fixed([0, 0, 0, 3], 13, &[1, 2, 3]);
        let (cell, _) = ChanCell::decode_from(&raw, CircIdLen::Four)
            .expect("decodes")
            .expect("whole");
        assert_eq!(
            cell.msg,
            ChanMsg::Unrecognized {
                cmd: ChanCmd(13),
                body: raw[5..].to_vec()
            }
        );
    }

    #[test]
    fn circ_id_checks() {
        let netinfo_on_circ = fixed([0, 0, 0, 1], 8, &[0; 10]);
        assert_eq!(
            ChanCell::decode_from(&netinfo_on_circ, CircIdLen::Four),
            Err(ChanCellError::CircId(CircIdError::MustBeZero(
                ChanCmd::NETINFO
            )))
        );
        let relay_on_zero = fixed([0; 4], 3, &[]);
        assert_eq!(
            ChanCell::decode_from(&relay_on_zero, CircIdLen::Four),
            Err(ChanCellError::CircId(CircIdError::MustBeNonZero(
                ChanCmd::RELAY
            )))
        );
        let mut out = vec![0xaa];
        let bad = ChanCell {
            circ_id: None,
            msg: ChanMsg::Destroy(Destroy {
                reason: DestroyReason::NONE,
            }),
        };
        assert_eq!(
            bad.encode(CircIdLen::Four, &mut out),
            Err(CodecError::BadValue("circuit id for command"))
        );
        assert_eq!(out, [0xaa]);
    }

    #[test]
    fn encode_refuses_oversized_bodies() {
        let mut out = vec![];
        let big = ChanCell {
            circ_id: None,
            msg: ChanMsg::Netinfo(Netinfo {
                timestamp: 0,
                other_addr: NetinfoAddr::Ipv4(Ipv4Addr::LOCALHOST),
                my_addrs: vec![NetinfoAddr::Ipv6(Ipv6Addr::LOCALHOST); 30],
            }),
        };
        assert_eq!(
            big.encode(CircIdLen::Four, &mut out),
            Err(CodecError::TooLong {
                what: "fixed-length cell body",
                len: 4 + 6 + 1 + 30 * 18
            })
        );
        let big = ChanCell {
            circ_id: None,
            msg: ChanMsg::Vpadding(Vpadding { len: u16::MAX }),
        };
        big.encode(CircIdLen::Four, &mut out).expect("largest fits");
        assert_eq!(out.len(), 7 + 65535);
        out.clear();
        let too_big = ChanCell {
            circ_id: None,
            msg: ChanMsg::Unrecognized {
                cmd: ChanCmd(250),
                body: vec![0; 65536],
            },
        };
        assert_eq!(
            too_big.encode(CircIdLen::Four, &mut out),
            Err(CodecError::TooLong {
                what: "variable-length cell body",
                len: 65536
            })
        );
        assert!(out.is_empty());
        assert_eq!(
            ChanMsg::decode(ChanCmd::DESTROY, &[0; 510]),
            Err(CodecError::TooLong {
                what: "cell body",
                len: 510
            })
        );
    }

    /// Decodes the next cell of a captured stream, re-encodes it and checks the bytes match.
    fn next_cell(stream: &mut &[u8], circ_id_len: CircIdLen) -> ChanCell {
        let (cell, used) = ChanCell::decode_from(stream, circ_id_len)
            .expect("decodes")
            .expect("whole cell");
        let mut out = Vec::new();
        cell.encode(circ_id_len, &mut out).expect("encodes");
        assert_eq!(
            out,
            stream[..used],
            "{:?} re-encodes byte for byte",
            cell.msg.cmd()
        );
        *stream = &stream[used..];
        cell
    }

    fn padded(prefix: &str) -> Vec<u8> {
        let mut v = hex::decode(prefix).expect("hex");
        v.resize(CELL_LEN_V4, 0);
        v
    }

    #[test]
    fn c_tor_responder_handshake() {
        let bytes = hex::decode(TOR_VERSIONS_CERTS_AUTH_CHALLENGE).expect("hex");
        let mut stream = &bytes[..];

        let versions = next_cell(&mut stream, CircIdLen::BEFORE_NEGOTIATION);
        let ChanMsg::Versions(v) = versions.msg else {
            panic!("expected VERSIONS, got {versions:?}");
        };
        assert_eq!(v.versions, [3, 4, 5]);
        let link = negotiate(&SUPPORTED, &v.versions).expect("common version");
        assert_eq!(link, 5);
        let circ_id_len = circ_id_len(link);

        let certs = next_cell(&mut stream, circ_id_len);
        assert_eq!(certs.circ_id, None);
        let ChanMsg::Certs(certs) = certs.msg else {
            panic!("expected CERTS");
        };
        let shape: Vec<(u8, usize)> = certs
            .certs
            .iter()
            .map(|c| (c.cert_type.0, c.body.len()))
            .collect();
        assert_eq!(shape, [(1, 582), (2, 456), (4, 140), (5, 104), (7, 165)]);
        // X.509 certificates are DER SEQUENCEs; ed25519 certificates start with version 1.
        assert_eq!(certs.find(CertType::RSA_ID_X509).map(|c| c[0]), Some(0x30));
        assert_eq!(
            certs
                .find(CertType::IDENTITY_V_SIGNING)
                .map(|c| c[..2].to_vec()),
            Some(vec![1, 4])
        );

        let challenge = next_cell(&mut stream, circ_id_len);
        let ChanMsg::AuthChallenge(challenge) = challenge.msg else {
            panic!("expected AUTH_CHALLENGE");
        };
        assert_eq!(challenge.methods, [AuthMethod::ED25519_SHA256_RFC5705]);
        assert!(stream.is_empty());

        let netinfo = padded(TOR_NETINFO);
        let mut stream = &netinfo[..];
        let cell = next_cell(&mut stream, circ_id_len);
        assert_eq!(
            cell.msg,
            ChanMsg::Netinfo(Netinfo {
                timestamp: 0x6b06_13ce,
                other_addr: NetinfoAddr::Ipv4(Ipv4Addr::LOCALHOST),
                my_addrs: vec![NetinfoAddr::Ipv4(Ipv4Addr::LOCALHOST)],
            })
        );
    }

    #[test]
    fn c_tor_circuit_replies() {
        // C tor answered our CREATE_FAST on circuit 0x80000001 ...
        let bytes = padded(TOR_CREATED_FAST);
        let cell = next_cell(&mut &bytes[..], CircIdLen::Four);
        assert_eq!(cell.circ_id, CircId::new(0x8000_0001));
        assert!(matches!(cell.msg, ChanMsg::CreatedFast(_)));
        // ... and our CREATE2 with unknown HTYPE 0x7777 on 0x80000003 with DESTROY(PROTOCOL).
        let bytes = padded(TOR_DESTROY);
        let cell = next_cell(&mut &bytes[..], CircIdLen::Four);
        assert_eq!(cell.circ_id, CircId::new(0x8000_0003));
        assert_eq!(
            cell.msg,
            ChanMsg::Destroy(Destroy {
                reason: DestroyReason::PROTOCOL
            })
        );
    }

    #[test]
    fn cells_c_tor_accepted() {
        // What we sent in that session, as chive encodes it; C tor accepted the NETINFO and
        // PADDING_NEGOTIATE without closing and answered the CREATE_FAST.
        let mut out = Vec::new();
        let versions = ChanCell {
            circ_id: None,
            msg: ChanMsg::Versions(Versions {
                versions: vec![3, 4, 5],
            }),
        };
        versions
            .encode(CircIdLen::BEFORE_NEGOTIATION, &mut out)
            .expect("encodes");
        assert_eq!(hex::encode(&out), "0000070006000300040005");
        out.clear();
        let netinfo = ChanCell {
            circ_id: None,
            msg: ChanMsg::Netinfo(Netinfo {
                timestamp: 0,
                other_addr: NetinfoAddr::Ipv4(Ipv4Addr::LOCALHOST),
                my_addrs: vec![],
            }),
        };
        netinfo.encode(CircIdLen::Four, &mut out).expect("encodes");
        assert_eq!(out, padded("00000000080000000004047f00000100"));
        out.clear();
        let stop = ChanCell {
            circ_id: None,
            msg: ChanMsg::PaddingNegotiate(PaddingNegotiate {
                command: PaddingNegotiateCmd::STOP,
                ito_low_ms: 0,
                ito_high_ms: 0,
            }),
        };
        stop.encode(CircIdLen::Four, &mut out).expect("encodes");
        assert_eq!(out, padded("000000000c000100000000"));
    }

    fn arb_addr() -> impl Strategy<Value = NetinfoAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| NetinfoAddr::Ipv4(a.into())),
            any::<[u8; 16]>().prop_map(|a| NetinfoAddr::Ipv6(a.into())),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20))
                .prop_filter("not a well-formed known type", |(t, v)| {
                    !(*t == 4 && v.len() == 4 || *t == 6 && v.len() == 16)
                })
                .prop_map(|(atype, value)| NetinfoAddr::Other { atype, value }),
        ]
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=max)
    }

    fn arb_msg() -> impl Strategy<Value = ChanMsg> {
        prop_oneof![
            Just(ChanMsg::Padding(Padding)),
            any::<[u8; 32]>().prop_map(|b| {
                let mut hdata = [0u8; TAP_C_HANDSHAKE_LEN];
                hdata
                    .iter_mut()
                    .zip(b.iter().cycle())
                    .for_each(|(d, s)| *d = *s);
                ChanMsg::Create(Create { hdata })
            }),
            any::<u8>().prop_map(|b| ChanMsg::Created(Created {
                hdata: [b; TAP_S_HANDSHAKE_LEN]
            })),
            bytes(BODY_LEN).prop_map(|v| {
                let mut body = [0u8; BODY_LEN];
                body[..v.len()].copy_from_slice(&v);
                ChanMsg::Relay(Relay { body })
            }),
            any::<u8>().prop_map(|b| ChanMsg::RelayEarly(RelayEarly {
                body: [b; BODY_LEN]
            })),
            any::<u8>().prop_map(|r| ChanMsg::Destroy(Destroy {
                reason: DestroyReason(r)
            })),
            any::<[u8; 20]>().prop_map(|x| ChanMsg::CreateFast(CreateFast { x })),
            any::<([u8; 20], [u8; 20])>()
                .prop_map(|(y, kh)| ChanMsg::CreatedFast(CreatedFast { y, kh })),
            proptest::collection::vec(any::<u16>(), 0..40)
                .prop_map(|versions| ChanMsg::Versions(Versions { versions })),
            (
                any::<u32>(),
                arb_addr(),
                proptest::collection::vec(arb_addr(), 0..8)
            )
                .prop_map(|(timestamp, other_addr, my_addrs)| ChanMsg::Netinfo(
                    Netinfo {
                        timestamp,
                        other_addr,
                        my_addrs
                    }
                )),
            (any::<u16>(), bytes(CREATE2_HDATA_MAX)).prop_map(|(h, hdata)| {
                ChanMsg::Create2(Create2 {
                    htype: HandshakeType(h),
                    hdata,
                })
            }),
            bytes(CREATED2_HDATA_MAX).prop_map(|hdata| ChanMsg::Created2(Created2 { hdata })),
            (any::<u8>(), any::<u16>(), any::<u16>()).prop_map(|(c, lo, hi)| {
                ChanMsg::PaddingNegotiate(PaddingNegotiate {
                    command: PaddingNegotiateCmd(c),
                    ito_low_ms: lo,
                    ito_high_ms: hi,
                })
            }),
            any::<u16>().prop_map(|len| ChanMsg::Vpadding(Vpadding { len })),
            proptest::collection::vec((any::<u8>(), bytes(300)), 0..6).prop_map(|v| {
                ChanMsg::Certs(Certs {
                    certs: v
                        .into_iter()
                        .map(|(t, body)| CertEntry {
                            cert_type: CertType(t),
                            body,
                        })
                        .collect(),
                })
            }),
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u16>(), 0..10)
            )
                .prop_map(|(challenge, m)| ChanMsg::AuthChallenge(AuthChallenge {
                    challenge,
                    methods: m.into_iter().map(AuthMethod).collect(),
                })),
            (any::<u16>(), bytes(400)).prop_map(|(t, auth)| {
                ChanMsg::Authenticate(Authenticate {
                    auth_type: AuthMethod(t),
                    auth,
                })
            }),
            bytes(100).prop_map(|body| ChanMsg::Authorize(Authorize { body })),
            (133u8.., bytes(100)).prop_map(|(c, body)| ChanMsg::Unrecognized {
                cmd: ChanCmd(c),
                body
            }),
            (13u8..128).prop_map(|c| ChanMsg::Unrecognized {
                cmd: ChanCmd(c),
                body: vec![c; BODY_LEN]
            }),
        ]
    }

    fn known_cmd() -> impl Strategy<Value = u8> {
        prop_oneof![0u8..=13, 128u8..=133]
    }

    proptest! {
        #[test]
        fn msg_decode_never_panics(cmd in any::<u8>(), body in bytes(700)) {
            let mut data = vec![cmd];
            data.extend(body);
            fuzz_decode(&data);
        }

        #[test]
        fn known_msg_decode_never_panics(cmd in known_cmd(), body in bytes(600)) {
            let mut data = vec![cmd];
            data.extend(body);
            fuzz_decode(&data);
        }

        #[test]
        fn cell_stream_decode_never_panics(data in bytes(3000)) {
            fuzz_decode_cells(&data);
        }

        #[test]
        fn encode_then_decode_is_identity(msg in arb_msg(), circ in 1u32.., four in any::<bool>()) {
            let cmd = msg.cmd();
            let circ_id = match cmd.circ_id_rule() {
                crate::cell::CircIdRule::Zero => None,
                _ => CircId::new(if four { circ } else { circ & 0x7fff | 1 }),
            };
            let circ_id_len = if four { CircIdLen::Four } else { CircIdLen::Two };
            let cell = ChanCell { circ_id, msg };
            let mut out = Vec::new();
            cell.encode(circ_id_len, &mut out).expect("encodes");
            let (back, used) = ChanCell::decode_from(&out, circ_id_len)
                .expect("decodes")
                .expect("whole cell");
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(back, cell);
        }
    }
}
