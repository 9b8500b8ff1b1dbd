//! Relay message bodies: what travels in the Data field of a relay cell.
//!
//! Spec: tor-spec §6.2-§6.4 (BEGIN, DATA, END, CONNECTED, RESOLVE, RESOLVED, BEGIN_DIR, DROP),
//! §5.1.2 (EXTEND2, EXTENDED2), §5.4 (TRUNCATE, TRUNCATED), §7.3-§7.4 and proposal 289
//! (SENDME), <https://spec.torproject.org/tor-spec/>. The onion-service messages (rend-spec-v3
//! §3-§4) are defined in [`crate::hs_msg`] and dispatched here too.
//!
//! One struct per message, each with `decode(body)` and `encode(&self, out)`; [`RelayMsg`]
//! dispatches on the [`RelayCmd`]. Commands without a struct (legacy EXTEND/EXTENDED, conflux,
//! padding negotiation, XON/XOFF) decode as [`RelayMsg::Unrecognized`] and re-encode unchanged.
//!
//! Trailing bytes: Tor extends relay messages by appending fields (BEGIN's FLAGS arrived that
//! way) and C tor ignores bytes after the fields it knows, so these decoders do too. Where the
//! spec says a body is to be ignored (TRUNCATE, DROP, BEGIN_DIR, SENDME version 0) it is.
//! Decoding is therefore not always byte-for-byte reversible, but `decode(encode(m)) == m` holds
//! for every message `m` that encodes.
//!
//! These are owned values for the control path. The per-cell DATA path should read
//! [`crate::relay_cell::RelayCellView::data`] in place instead of building a [`Data`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::chan_msg::{DestroyReason, HandshakeType};
use crate::codec::{CodecError, Reader, Writer};
use crate::hs_msg::{
    EstablishIntro, EstablishRendezvous, IntroEstablished, Introduce1, Introduce2, IntroduceAck,
    Rendezvous1, Rendezvous2, RendezvousEstablished,
};
use crate::link_spec::LinkSpec;
use crate::relay_cell::{RelayCellView, RelayCmd, RELAY_BODY_LEN, RELAY_DATA_MAX_V0};

/// Defines an open `u8` newtype with named constants and a `name()`.
macro_rules! open_u8 {
    ($(#[$tdoc:meta])* $ty:ident { $( $(#[$doc:meta])* $name:ident = $val:expr, )* }) => {
        $(#[$tdoc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(pub u8);

        impl $ty {
            $( $(#[$doc])* pub const $name: $ty = $ty($val); )*

            /// The spec's name for this value, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( $ty::$name => Some(stringify!($name)), )*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "UNKNOWN({})", self.0),
                }
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}={})", stringify!($ty), self.0, self)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// BEGIN

/// The host part of a BEGIN target (tor-spec §6.2): a DNS name, a dotted-quad IPv4 address, or
/// an IPv6 address (written in square brackets on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A hostname, kept in the case it arrived in (the spec says senders SHOULD lower-case it;
    /// receivers MUST accept any case). Printable ASCII without `:`, `[` or `]`.
    Hostname(String),
    /// A literal IPv4 address.
    Ipv4(Ipv4Addr),
    /// A literal IPv6 address.
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Parses the ADDRESS of an ADDRPORT. A name that reads as a dotted quad is an IPv4 address.
    pub fn parse(s: &str) -> Result<Self, CodecError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or(CodecError::BadValue("BEGIN address"))?;
            return inner
                .parse()
                .map(Host::Ipv6)
                .map_err(|_| CodecError::BadValue("BEGIN IPv6 address"));
        }
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(Host::Ipv4(a));
        }
        check_hostname(s, "BEGIN hostname")?;
        Ok(Host::Hostname(s.to_owned()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Hostname(h) => f.write_str(h),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A hostname as BEGIN and RESOLVE carry it: non-empty printable ASCII, with none of the
/// characters that delimit addresses and ports.
fn check_hostname(s: &str, what: &'static str) -> Result<(), CodecError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(CodecError::BadValue(what))
    }
}

/// The FLAGS word of a BEGIN (tor-spec §6.2). Bit 1 is the least significant. Reserved bits
/// are kept so the value round-trips; servers must ignore them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BeginFlags(pub u32);

impl BeginFlags {
    /// Bit 1: the client can use IPv6 addresses.
    pub const IPV6_OK: u32 = 1 << 0;
    /// Bit 2: the client does not want IPv4 addresses.
    pub const IPV4_NOT_OK: u32 = 1 << 1;
    /// Bit 3: the client prefers IPv6 when both families resolve.
    pub const IPV6_PREFERRED: u32 = 1 << 2;

    /// Whether bit 1 is set.
    pub fn ipv6_ok(self) -> bool {
        self.0 & Self::IPV6_OK != 0
    }
    /// Whether bit 2 is set.
    pub fn ipv4_not_ok(self) -> bool {
        self.0 & Self::IPV4_NOT_OK != 0
    }
    /// Whether bit 3 is set.
    pub fn ipv6_preferred(self) -> bool {
        self.0 & Self::IPV6_PREFERRED != 0
    }
}

/// RELAY_BEGIN: the client (or an onion-service client, via the rendezvous point) asks the
/// exit or service to open a TCP stream. Sent forward only; stream id nonzero.
///
/// ```text
///   ADDRPORT  "host:port" NUL   (host: name | a.b.c.d | [ipv6]; port 1..=65535)
///   FLAGS     u32, optional
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Where to connect.
    pub host: Host,
    /// TCP port, never 0.
    pub port: u16,
    /// FLAGS; an absent field reads as 0, and 0 is not written.
    pub flags: BeginFlags,
}

impl Begin {
    /// Decodes a BEGIN body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let addrport = r.nul_terminated()?;
        let addrport =
            std::str::from_utf8(addrport).map_err(|_| CodecError::BadValue("BEGIN address"))?;
        // Hostnames and dotted quads have no ':', and IPv6 literals are bracketed, so the port
        // starts after the last ':'.
        let (host, port) = addrport
            .rsplit_once(':')
            .ok_or(CodecError::BadValue("BEGIN port"))?;
        let port = parse_port(port)?;
        let host = Host::parse(host)?;
        // C tor reads FLAGS only when all four bytes are there.
        let flags = if r.remaining() >= 4 {
            BeginFlags(r.u32()?)
        } else {
            BeginFlags::default()
        };
        Ok(Begin { host, port, flags })
    }

    /// Encodes a BEGIN body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.port == 0 {
            return Err(CodecError::BadValue("BEGIN port"));
        }
        if let Host::Hostname(h) = &self.host {
            check_hostname(h, "BEGIN hostname")?;
        }
        out.put(self.host.to_string().as_bytes());
        out.put_u8(b':');
        out.put(self.port.to_string().as_bytes());
        out.put_u8(0);
        if self.flags.0 != 0 {
            out.put_u32(self.flags.0);
        }
        Ok(())
    }
}

/// A decimal port 1..=65535.
fn parse_port(s: &str) -> Result<u16, CodecError> {
    // `u16::from_str` would also take a leading '+'.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::BadValue("BEGIN port"));
    }
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(CodecError::BadValue("BEGIN port")),
    }
}

// ---------------------------------------------------------------------------------------------
// DATA

/// RELAY_DATA: stream bytes, either direction; stream id nonzero. At most
/// [`RELAY_DATA_MAX_V0`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data(Vec<u8>);

impl Data {
    /// Wraps `bytes`, refusing more than fit in one cell.
    pub fn new(bytes: Vec<u8>) -> Result<Self, CodecError> {
        if bytes.len() > RELAY_DATA_MAX_V0 {
            return Err(CodecError::TooLong {
                what: "DATA",
                len: bytes.len(),
            });
        }
        Ok(Data(bytes))
    }

    /// The stream bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Gives back the stream bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// Decodes a DATA body (the whole body is data).
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        Data::new(body.to_vec())
    }

    /// Encodes a DATA body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// END

open_u8! {
    /// Why a stream closed (tor-spec §6.3). Open: receivers MUST accept unlisted reasons.
    EndReason {
        /// Catch-all; also what an empty END means.
        MISC = 1,
        /// Could not look up the hostname.
        RESOLVEFAILED = 2,
        /// The remote host refused the connection.
        CONNECTREFUSED = 3,
        /// The exit's policy refuses this host or port.
        EXITPOLICY = 4,
        /// The circuit is being destroyed.
        DESTROY = 5,
        /// The TCP connection closed normally.
        DONE = 6,
        /// Connecting timed out.
        TIMEOUT = 7,
        /// No route to the destination.
        NOROUTE = 8,
        /// The relay is hibernating.
        HIBERNATING = 9,
        /// Internal error at the relay.
        INTERNAL = 10,
        /// The relay is out of resources.
        RESOURCELIMIT = 11,
        /// The connection was reset.
        CONNRESET = 12,
        /// Tor protocol violation.
        TORPROTOCOL = 13,
        /// BEGIN_DIR to a relay that is not a directory.
        NOTDIRECTORY = 14,
    }
}

/// The address an exit refused, sent with [`EndReason::EXITPOLICY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitPolicyAddr {
    /// The address the exit resolved and refused.
    pub addr: IpAddr,
    /// Seconds the client may cache that; 0xffffffff when the sender left it out.
    pub ttl: u32,
}

/// RELAY_END: closes a stream, either direction; stream id nonzero.
///
/// ```text
///   REASON  u8            (absent: MISC)
///   for EXITPOLICY only:  ADDRESS (4 or 16 bytes) TTL u32 (TTL optional)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Why.
    pub reason: EndReason,
    /// Only with [`EndReason::EXITPOLICY`], and only when the sender included an address.
    pub exit_policy: Option<ExitPolicyAddr>,
}

impl End {
    /// An END with just a reason.
    pub fn new(reason: EndReason) -> Self {
        End {
            reason,
            exit_policy: None,
        }
    }

    /// Decodes an END body. An address of the wrong length is ignored, as the spec says to
    /// process such a message anyway.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let Ok(reason) = r.u8() else {
            return Ok(End::new(EndReason::MISC));
        };
        let reason = EndReason(reason);
        let mut end = End::new(reason);
        if reason == EndReason::EXITPOLICY {
            let rest = r.take_rest();
            let (addr, ttl): (IpAddr, &[u8]) = match rest.len() {
                4 | 8 => {
                    let mut r = Reader::new(rest);
                    (Ipv4Addr::from(r.take_array::<4>()?).into(), r.take_rest())
                }
                16 | 20 => {
                    let mut r = Reader::new(rest);
                    (Ipv6Addr::from(r.take_array::<16>()?).into(), r.take_rest())
                }
                _ => return Ok(end),
            };
            let ttl = Reader::new(ttl).u32().unwrap_or(u32::MAX);
            end.exit_policy = Some(ExitPolicyAddr { addr, ttl });
        }
        Ok(end)
    }

    /// Encodes an END body. An address with a reason other than EXITPOLICY is refused.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u8(self.reason.0);
        if let Some(ep) = &self.exit_policy {
            if self.reason != EndReason::EXITPOLICY {
                return Err(CodecError::BadValue("END address without EXITPOLICY"));
            }
            put_ip(out, ep.addr);
            out.put_u32(ep.ttl);
        }
        Ok(())
    }
}

fn put_ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.put(&a.octets()),
        IpAddr::V6(a) => out.put(&a.octets()),
    }
}

// ---------------------------------------------------------------------------------------------
// CONNECTED

/// Address type byte that marks the IPv6 form of CONNECTED.
const CONNECTED_IPV6: u8 = 6;

/// RELAY_CONNECTED: the exit or service opened the stream (backward; stream id nonzero).
///
/// ```text
///   empty                                       (BEGIN_DIR, onion services)
///   IPv4 (4, nonzero) TTL u32
///   00000000  06  IPv6 (16) TTL u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connected {
    /// No address.
    Empty,
    /// The address connected to, and how long the client may cache it (seconds).
    Addr {
        /// The address; an IPv4 address must not be 0.0.0.0, which marks the IPv6 form.
        addr: IpAddr,
        /// Cache lifetime in seconds.
        ttl: u32,
    },
}

impl Connected {
    /// Decodes a CONNECTED body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        if body.is_empty() {
            return Ok(Connected::Empty);
        }
        let mut r = Reader::new(body);
        let v4 = Ipv4Addr::from(r.take_array::<4>()?);
        let addr = if v4.is_unspecified() {
            if r.u8()? != CONNECTED_IPV6 {
                return Err(CodecError::BadValue("CONNECTED address type"));
            }
            IpAddr::V6(Ipv6Addr::from(r.take_array::<16>()?))
        } else {
            IpAddr::V4(v4)
        };
        let ttl = r.u32()?;
        Ok(Connected::Addr { addr, ttl })
    }

    /// Encodes a CONNECTED body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match *self {
            Connected::Empty => {}
            Connected::Addr {
                addr: IpAddr::V4(a),
                ttl,
            } => {
                if a.is_unspecified() {
                    return Err(CodecError::BadValue("CONNECTED IPv4 address"));
                }
                out.put(&a.octets());
                out.put_u32(ttl);
            }
            Connected::Addr {
                addr: IpAddr::V6(a),
                ttl,
            } => {
                out.put_u32(0);
                out.put_u8(CONNECTED_IPV6);
                out.put(&a.octets());
                out.put_u32(ttl);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SENDME

/// Length of the digest in a version 1 SENDME.
pub const SENDME_V1_DIGEST_LEN: usize = 20;
/// Length of the tag in a version 1 SENDME on a CGO hop (proposal 359).
pub const SENDME_V1_CGO_TAG_LEN: usize = 16;

/// RELAY_SENDME: flow-control acknowledgement, either direction. Stream-level (stream id
/// nonzero, always empty) or circuit-level (stream id 0).
///
/// ```text
///   empty                         legacy, version 0
///   VERSION u8  DATA_LEN u16  DATA
///     version 0: DATA ignored
///     version 1: DATA starts with the 20-byte digest of the acknowledged cell (proposal 289),
///                or is the 16-byte CGO tag of that cell on a CGO hop (proposal 359)
/// ```
///
/// Whether a version is acceptable is the circuit's decision (`sendme_accept_min_version`),
/// so unknown versions decode rather than fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sendme {
    /// Version 0; encodes as an empty body, as C tor sends it.
    V0,
    /// Version 1, authenticated.
    V1 {
        /// The first 20 bytes of the rolling digest after the acknowledged DATA cell.
        digest: [u8; SENDME_V1_DIGEST_LEN],
    },
    /// Version 1 with 16 to 19 bytes of DATA: a CGO hop's tag (what C tor 0.4.9 sends on a
    /// CGO circuit); only a CGO hop's circuit can tell it from a short tor1 digest.
    V1Cgo {
        /// The first 16 bytes of DATA: the acknowledged cell's tag.
        tag: [u8; SENDME_V1_CGO_TAG_LEN],
    },
    /// A version this code does not know, kept as it came.
    Unrecognized {
        /// VERSION.
        version: u8,
        /// DATA.
        data: Vec<u8>,
    },
}

impl Sendme {
    /// Decodes a SENDME body. A version 1 DATA of 20 bytes or more is a digest (its first 20
    /// bytes, tor-spec §7.3.1); of 16 to 19, a CGO tag (its first 16); shorter, an error.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        if body.is_empty() {
            return Ok(Sendme::V0);
        }
        let mut r = Reader::new(body);
        let version = r.u8()?;
        let data = r.u16_prefixed()?;
        Ok(match version {
            0 => Sendme::V0,
            1 => {
                let mut r = Reader::new(data);
                if data.len() >= SENDME_V1_DIGEST_LEN {
                    Sendme::V1 {
                        digest: r.take_array()?,
                    }
                } else {
                    let tag = r
                        .take_array()
                        .map_err(|_| CodecError::BadValue("SENDME v1 DATA_LEN"))?;
                    Sendme::V1Cgo { tag }
                }
            }
            version => Sendme::Unrecognized {
                version,
                data: data.to_vec(),
            },
        })
    }

    /// Encodes a SENDME body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Sendme::V0 => {}
            Sendme::V1 { digest } => {
                out.put_u8(1);
                out.put_u16_prefixed(digest, "SENDME digest")?;
            }
            Sendme::V1Cgo { tag } => {
                out.put_u8(1);
                out.put_u16_prefixed(tag, "SENDME tag")?;
            }
            Sendme::Unrecognized { version, data } => {
                if *version <= 1 {
                    return Err(CodecError::BadValue("SENDME version"));
                }
                out.put_u8(*version);
                out.put_u16_prefixed(data, "SENDME data")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// EXTEND2 / EXTENDED2

/// RELAY_EXTEND2: the client asks the last hop to extend the circuit (forward, in a
/// RELAY_EARLY cell; stream id 0).
///
/// ```text
///   NSPEC u8, NSPEC link specifiers, HTYPE u16, HLEN u16, HDATA
/// ```
///
/// The spec's SHOULD-reject of duplicate identity specifiers is left to the extending relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extend2 {
    /// How to reach the next hop.
    pub link_specs: Vec<LinkSpec>,
    /// Handshake type, as in CREATE2.
    pub htype: HandshakeType,
    /// The client's handshake message.
    pub hdata: Vec<u8>,
}

impl Extend2 {
    /// Decodes an EXTEND2 body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let link_specs = LinkSpec::decode_list(&mut r)?;
        let htype = HandshakeType(r.u16()?);
        let hdata = r.u16_prefixed()?.to_vec();
        Ok(Extend2 {
            link_specs,
            htype,
            hdata,
        })
    }

    /// Encodes an EXTEND2 body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        LinkSpec::encode_list(&self.link_specs, out)?;
        out.put_u16(self.htype.0);
        out.put_u16_prefixed(&self.hdata, "EXTEND2 HDATA")
    }
}

/// RELAY_EXTENDED2: the last hop's answer to EXTEND2, carrying the new hop's CREATED2 reply
/// (backward; stream id 0).
///
/// ```text
///   HLEN u16, HDATA
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extended2 {
    /// The server's handshake reply.
    pub hdata: Vec<u8>,
}

impl Extended2 {
    /// Decodes an EXTENDED2 body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let hdata = Reader::new(body).u16_prefixed()?.to_vec();
        Ok(Extended2 { hdata })
    }

    /// Encodes an EXTENDED2 body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u16_prefixed(&self.hdata, "EXTENDED2 HDATA")
    }
}

// ---------------------------------------------------------------------------------------------
// TRUNCATE / TRUNCATED

/// RELAY_TRUNCATE: the client asks a hop to destroy the circuit beyond it (forward; stream id
/// 0). The body is empty; anything in it is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Truncate;

impl Truncate {
    /// Decodes a TRUNCATE body.
    pub fn decode(_body: &[u8]) -> Result<Self, CodecError> {
        Ok(Truncate)
    }

    /// Encodes a TRUNCATE body (empty).
    pub fn encode(&self, _out: &mut Vec<u8>) -> Result<(), CodecError> {
        Ok(())
    }
}

/// RELAY_TRUNCATED: a hop tells the client the circuit beyond it is gone (backward; stream
/// id 0). Relays should prefer DESTROY towards the client (tor-spec §5.4). The reason uses the
/// DESTROY cell's numbering.
///
/// ```text
///   REASON u8
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Why.
    pub reason: DestroyReason,
}

impl Truncated {
    /// Decodes a TRUNCATED body. C tor reads the reason byte whatever the Length, and the
    /// padding after an empty body starts with zeros, so an empty body reads as NONE.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let reason = DestroyReason(Reader::new(body).u8().unwrap_or(0));
        Ok(Truncated { reason })
    }

    /// Encodes a TRUNCATED body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u8(self.reason.0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// DROP, BEGIN_DIR

/// RELAY_DROP: long-range padding, either direction (stream id 0); the recipient drops it.
/// The body is padding and is neither kept nor sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drop;

impl Drop {
    /// Decodes a DROP body (ignored).
    pub fn decode(_body: &[u8]) -> Result<Self, CodecError> {
        Ok(Drop)
    }

    /// Encodes a DROP body (empty).
    pub fn encode(&self, _out: &mut Vec<u8>) -> Result<(), CodecError> {
        Ok(())
    }
}

/// RELAY_BEGIN_DIR: the client opens a stream to the relay's directory service (forward;
/// stream id nonzero). Clients send an empty (all-zero) body; relays MUST ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BeginDir;

impl BeginDir {
    /// Decodes a BEGIN_DIR body (ignored).
    pub fn decode(_body: &[u8]) -> Result<Self, CodecError> {
        Ok(BeginDir)
    }

    /// Encodes a BEGIN_DIR body (empty).
    pub fn encode(&self, _out: &mut Vec<u8>) -> Result<(), CodecError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// RESOLVE / RESOLVED

/// RELAY_RESOLVE: the client asks the exit to look up a name, or an address in reverse via
/// its `in-addr.arpa` / `ip6.arpa` name (forward; stream id nonzero, but no stream opens).
///
/// ```text
///   NAME NUL
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    /// The name to look up (printable ASCII).
    pub name: String,
}

impl Resolve {
    /// Decodes a RESOLVE body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let name = Reader::new(body).nul_terminated()?;
        let name = std::str::from_utf8(name).map_err(|_| CodecError::BadValue("RESOLVE name"))?;
        check_resolve_name(name)?;
        Ok(Resolve {
            name: name.to_owned(),
        })
    }

    /// Encodes a RESOLVE body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        check_resolve_name(&self.name)?;
        out.put(self.name.as_bytes());
        out.put_u8(0);
        Ok(())
    }

    /// A reverse lookup of `addr`, by its `in-addr.arpa` or `ip6.arpa` name.
    pub fn reverse(addr: IpAddr) -> Self {
        use fmt::Write as _;
        let mut name = String::new();
        match addr {
            IpAddr::V4(a) => {
                let [a, b, c, d] = a.octets();
                let _ = write!(name, "{d}.{c}.{b}.{a}.in-addr.arpa");
            }
            IpAddr::V6(a) => {
                for byte in a.octets().iter().rev() {
                    let _ = write!(name, "{:x}.{:x}.", byte & 0xf, byte >> 4);
                }
                name.push_str("ip6.arpa");
            }
        }
        Resolve { name }
    }

    /// The address this asks about, if it is a reverse lookup.
    pub fn reverse_addr(&self) -> Option<IpAddr> {
        let lower = self.name.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if let Some(v4) = lower.strip_suffix(".in-addr.arpa") {
            let mut octets = [0u8; 4];
            let mut parts = v4.split('.');
            for o in octets.iter_mut().rev() {
                let p = parts.next()?;
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                *o = p.parse().ok()?;
            }
            return parts
                .next()
                .is_none()
                .then(|| Ipv4Addr::from(octets).into());
        }
        let v6 = lower.strip_suffix(".ip6.arpa")?;
        // 32 nibbles, least significant first.
        let mut bits: u128 = 0;
        let mut n = 0u32;
        for p in v6.split('.') {
            let nibble = match p.as_bytes() {
                [c] if n < 32 => char::from(*c).to_digit(16)?,
                _ => return None,
            };
            bits |= u128::from(nibble) << (4 * n);
            n += 1;
        }
        (n == 32).then(|| Ipv6Addr::from(bits).into())
    }
}

fn check_resolve_name(name: &str) -> Result<(), CodecError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(CodecError::BadValue("RESOLVE name"))
    }
}

/// Answer types in RESOLVED (tor-spec §6.4).
const RESOLVED_HOSTNAME: u8 = 0x00;
const RESOLVED_IPV4: u8 = 0x04;
const RESOLVED_IPV6: u8 = 0x06;
const RESOLVED_ERR_TRANSIENT: u8 = 0xF0;
const RESOLVED_ERR_NONTRANSIENT: u8 = 0xF1;

/// The value of one RESOLVED answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedValue {
    /// `0x00`: a hostname (reverse lookup), without NUL.
    Hostname(String),
    /// `0x04`: an IPv4 address.
    Ipv4(Ipv4Addr),
    /// `0x06`: an IPv6 address.
    Ipv6(Ipv6Addr),
    /// `0xF0`: transient error. The text is meaningless (receivers MUST ignore it) but kept.
    TransientError(Vec<u8>),
    /// `0xF1`: nontransient error, text as for `TransientError`.
    NontransientError(Vec<u8>),
    /// Another type, kept as it came.
    Unrecognized {
        /// Type byte.
        kind: u8,
        /// Value.
        value: Vec<u8>,
    },
}

/// One answer in a RESOLVED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAnswer {
    /// What the name resolved to.
    pub value: ResolvedValue,
    /// Seconds the answer may be cached.
    pub ttl: u32,
}

/// RELAY_RESOLVED: the exit's answers to RESOLVE (backward; same stream id as the RESOLVE).
///
/// ```text
///   repeated to the end of the body:  TYPE u8  LEN u8  VALUE  TTL u32
/// ```
///
/// The spec's rules on combining answers (an error stands alone; an IPv4 answer comes first)
/// are for the client to enforce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// The answers, in order.
    pub answers: Vec<ResolvedAnswer>,
}

impl Resolved {
    /// Decodes a RESOLVED body. An address answer of the wrong length is an error.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let mut answers = Vec::new();
        while r.remaining() > 0 {
            let kind = r.u8()?;
            let raw = r.u8_prefixed()?;
            let ttl = r.u32()?;
            let value = match kind {
                RESOLVED_HOSTNAME => ResolvedValue::Hostname(
                    std::str::from_utf8(raw)
                        .map_err(|_| CodecError::BadValue("RESOLVED hostname"))?
                        .to_owned(),
                ),
                RESOLVED_IPV4 => ResolvedValue::Ipv4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(raw).map_err(|_| CodecError::BadValue("RESOLVED IPv4"))?,
                )),
                RESOLVED_IPV6 => ResolvedValue::Ipv6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(raw).map_err(|_| CodecError::BadValue("RESOLVED IPv6"))?,
                )),
                RESOLVED_ERR_TRANSIENT => ResolvedValue::TransientError(raw.to_vec()),
                RESOLVED_ERR_NONTRANSIENT => ResolvedValue::NontransientError(raw.to_vec()),
                kind => ResolvedValue::Unrecognized {
                    kind,
                    value: raw.to_vec(),
                },
            };
            answers.push(ResolvedAnswer { value, ttl });
        }
        Ok(Resolved { answers })
    }

    /// Encodes a RESOLVED body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        for a in &self.answers {
            let (kind, value): (u8, &[u8]) = match &a.value {
                ResolvedValue::Hostname(h) => (RESOLVED_HOSTNAME, h.as_bytes()),
                ResolvedValue::Ipv4(ip) => (RESOLVED_IPV4, &ip.octets()[..]),
                ResolvedValue::Ipv6(ip) => (RESOLVED_IPV6, &ip.octets()[..]),
                ResolvedValue::TransientError(v) => (RESOLVED_ERR_TRANSIENT, v),
                ResolvedValue::NontransientError(v) => (RESOLVED_ERR_NONTRANSIENT, v),
                ResolvedValue::Unrecognized { kind, value } => {
                    if matches!(
                        *kind,
                        RESOLVED_HOSTNAME
                            | RESOLVED_IPV4
                            | RESOLVED_IPV6
                            | RESOLVED_ERR_TRANSIENT
                            | RESOLVED_ERR_NONTRANSIENT
                    ) {
                        return Err(CodecError::BadValue("RESOLVED answer type"));
                    }
                    (*kind, value)
                }
            };
            out.put_u8(kind);
            out.put_u8_prefixed(value, "RESOLVED answer")?;
            out.put_u32(a.ttl);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// RelayMsg

/// Generates the dispatch of [`RelayMsg`]: adding a message is one line here plus its variant.
macro_rules! relay_msg_dispatch {
    ($( $variant:ident => $cmd:ident, )*) => {
        impl RelayMsg {
            /// Decodes the body of a relay cell carrying `cmd`. Commands without a message
            /// type here give [`RelayMsg::Unrecognized`].
            pub fn decode(cmd: RelayCmd, body: &[u8]) -> Result<Self, CodecError> {
                Ok(match cmd {
                    $( RelayCmd::$cmd => RelayMsg::$variant($variant::decode(body)?), )*
                    _ => RelayMsg::Unrecognized { cmd, body: body.to_vec() },
                })
            }

            /// Appends the body of this message to `out`.
            pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                match self {
                    $( RelayMsg::$variant(m) => m.encode(out), )*
                    RelayMsg::Unrecognized { body, .. } => {
                        out.put(body);
                        Ok(())
                    }
                }
            }

            /// The relay command that carries this message.
            pub fn cmd(&self) -> RelayCmd {
                match self {
                    $( RelayMsg::$variant(_) => RelayCmd::$cmd, )*
                    RelayMsg::Unrecognized { cmd, .. } => *cmd,
                }
            }
        }

        $(
            impl From<$variant> for RelayMsg {
                fn from(m: $variant) -> Self {
                    RelayMsg::$variant(m)
                }
            }
        )*
    };
}

/// Any relay message, by command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMsg {
    /// RELAY_BEGIN.
    Begin(Begin),
    /// RELAY_DATA.
    Data(Data),
    /// RELAY_END.
    End(End),
    /// RELAY_CONNECTED.
    Connected(Connected),
    /// RELAY_SENDME.
    Sendme(Sendme),
    /// RELAY_TRUNCATE.
    Truncate(Truncate),
    /// RELAY_TRUNCATED.
    Truncated(Truncated),
    /// RELAY_DROP.
    Drop(Drop),
    /// RELAY_RESOLVE.
    Resolve(Resolve),
    /// RELAY_RESOLVED.
    Resolved(Resolved),
    /// RELAY_BEGIN_DIR.
    BeginDir(BeginDir),
    /// RELAY_EXTEND2.
    Extend2(Extend2),
    /// RELAY_EXTENDED2.
    Extended2(Extended2),
    /// RELAY_ESTABLISH_INTRO (rend-spec-v3 §3.1.1).
    EstablishIntro(EstablishIntro),
    /// RELAY_INTRO_ESTABLISHED (rend-spec-v3 §3.1.3).
    IntroEstablished(IntroEstablished),
    /// RELAY_INTRODUCE1 (rend-spec-v3 §3.2.1).
    Introduce1(Introduce1),
    /// RELAY_INTRODUCE2 (rend-spec-v3 §3.3).
    Introduce2(Introduce2),
    /// RELAY_INTRODUCE_ACK (rend-spec-v3 §3.2.2).
    IntroduceAck(IntroduceAck),
    /// RELAY_ESTABLISH_RENDEZVOUS (rend-spec-v3 §4.1).
    EstablishRendezvous(EstablishRendezvous),
    /// RELAY_RENDEZVOUS_ESTABLISHED (rend-spec-v3 §4.1).
    RendezvousEstablished(RendezvousEstablished),
    /// RELAY_RENDEZVOUS1 (rend-spec-v3 §4.2).
    Rendezvous1(Rendezvous1),
    /// RELAY_RENDEZVOUS2 (rend-spec-v3 §4.2).
    Rendezvous2(Rendezvous2),
    /// Any other command, with its body as it came. Encoding a command that has a message
    /// type here this way bypasses that type's checks; [`RelayMsg::decode`] never builds one.
    Unrecognized {
        /// The command.
        cmd: RelayCmd,
        /// The body.
        body: Vec<u8>,
    },
}

relay_msg_dispatch! {
    Begin => BEGIN,
    Data => DATA,
    End => END,
    Connected => CONNECTED,
    Sendme => SENDME,
    Truncate => TRUNCATE,
    Truncated => TRUNCATED,
    Drop => DROP,
    Resolve => RESOLVE,
    Resolved => RESOLVED,
    BeginDir => BEGIN_DIR,
    Extend2 => EXTEND2,
    Extended2 => EXTENDED2,
    EstablishIntro => ESTABLISH_INTRO,
    IntroEstablished => INTRO_ESTABLISHED,
    Introduce1 => INTRODUCE1,
    Introduce2 => INTRODUCE2,
    IntroduceAck => INTRODUCE_ACK,
    EstablishRendezvous => ESTABLISH_RENDEZVOUS,
    RendezvousEstablished => RENDEZVOUS_ESTABLISHED,
    Rendezvous1 => RENDEZVOUS1,
    Rendezvous2 => RENDEZVOUS2,
}

/// Fuzz entry point: the first byte is a relay command, the rest a message body. Whatever
/// decodes must re-encode, and decode again to the same message.
pub fn fuzz_decode(data: &[u8]) {
    let Some((&cmd, body)) = data.split_first() else {
        return;
    };
    let cmd = RelayCmd(cmd);
    if let Ok(msg) = RelayMsg::decode(cmd, body) {
        assert_eq!(msg.cmd(), cmd);
        let mut out = Vec::new();
        msg.encode(&mut out).expect("a decoded message re-encodes");
        assert_eq!(RelayMsg::decode(cmd, &out), Ok(msg));
    }
}

/// Fuzz entry point: `data` (cut or zero-padded to 509 bytes) as a decrypted relay cell body,
/// viewed and its message decoded.
pub fn fuzz_decode_cell(data: &[u8]) {
    let mut body = [0u8; RELAY_BODY_LEN];
    let n = data.len().min(RELAY_BODY_LEN);
    body[..n].copy_from_slice(&data[..n]);
    if let Ok(view) = RelayCellView::new(&body) {
        let _ = view.check_stream_id();
        let _ = RelayMsg::decode(view.cmd(), view.data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RsaIdentity;
    use crate::test_util::unhex;
    use proptest::prelude::*;

    /// Decodes `hex` as `cmd`, compares with `want`, and checks it re-encodes to `canonical`.
    fn check_noncanonical(cmd: RelayCmd, hex: &str, canonical: &str, want: RelayMsg) {
        let body = unhex(hex);
        let got = RelayMsg::decode(cmd, &body).expect("decodes");
        assert_eq!(got, want);
        assert_eq!(got.cmd(), cmd);
        let mut out = Vec::new();
        got.encode(&mut out).expect("encodes");
        assert_eq!(out, unhex(canonical));
    }

    fn check(cmd: RelayCmd, hex: &str, want: RelayMsg) {
        check_noncanonical(cmd, hex, hex, want);
    }

    fn check_err(cmd: RelayCmd, hex: &str, err: CodecError) {
        assert_eq!(RelayMsg::decode(cmd, &unhex(hex)), Err(err));
    }

    // Vectors marked "C tor" were captured from C tor 0.4.5 in a chutney network (published
    // as data in Arti's tor-cell test vectors); the rest are built by hand from tor-spec.

    #[test]
    fn begin() {
        let c = RelayCmd::BEGIN;
        // C tor.
        check(
            c,
            "3132372E302E302E313A3730303300",
            Begin {
                host: Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)),
                port: 7003,
                flags: BeginFlags(0),
            }
            .into(),
        );
        let www = Begin {
            host: Host::Hostname("www.example.com".into()),
            port: 80,
            flags: BeginFlags(0),
        };
        let mut out = Vec::new();
        www.encode(&mut out).expect("encodes");
        assert_eq!(out, b"www.example.com:80\0");
        check(c, &hex::encode(&out), www.clone().into());
        check(
            c,
            "7777772e786b63642e636f6d3a34343300 00000003",
            Begin {
                host: Host::Hostname("www.xkcd.com".into()),
                port: 443,
                flags: BeginFlags(BeginFlags::IPV6_OK | BeginFlags::IPV4_NOT_OK),
            }
            .into(),
        );
        // "[2001:db8::1]:22"
        check(
            c,
            "5b323030313a6462383a3a315d3a323200",
            Begin {
                host: Host::Ipv6("2001:db8::1".parse().expect("addr")),
                port: 22,
                flags: BeginFlags(0),
            }
            .into(),
        );
        // Explicit zero flags, and a short flags field, are dropped on re-encoding.
        let h = hex::encode(b"www.example.com:80\0");
        check_noncanonical(c, &format!("{h}00000000"), &h, www.clone().into());
        check_noncanonical(c, &format!("{h}0000"), &h, www.clone().into());
        // Any case is accepted and kept.
        let mixed = b"WwW.Example.COM:80\0";
        let m = Begin::decode(mixed).expect("decodes");
        assert_eq!(m.host, Host::Hostname("WwW.Example.COM".into()));

        let flags = BeginFlags(0xffff_fff8 | BeginFlags::IPV6_PREFERRED);
        assert!(flags.ipv6_preferred() && !flags.ipv6_ok() && !flags.ipv4_not_ok());
    }

    #[test]
    fn begin_errors() {
        let c = RelayCmd::BEGIN;
        let bad = |s: &[u8], e| check_err(c, &hex::encode(s), e);
        bad(b"www.example.com:80", CodecError::Truncated);
        bad(b"[::]!", CodecError::Truncated);
        bad(b"[::]\0", CodecError::BadValue("BEGIN port"));
        bad(b"example.com\0", CodecError::BadValue("BEGIN port"));
        bad(b"example.com:\0", CodecError::BadValue("BEGIN port"));
        bad(b"example.com:0\0", CodecError::BadValue("BEGIN port"));
        bad(b"example.com:65536\0", CodecError::BadValue("BEGIN port"));
        bad(b"example.com:+80\0", CodecError::BadValue("BEGIN port"));
        bad(b":80\0", CodecError::BadValue("BEGIN hostname"));
        bad(b"exa mple.com:80\0", CodecError::BadValue("BEGIN hostname"));
        bad(b"::1:80\0", CodecError::BadValue("BEGIN hostname"));
        bad(b"[::1:80\0", CodecError::BadValue("BEGIN address"));
        bad(
            b"[1.2.3.4]:80\0",
            CodecError::BadValue("BEGIN IPv6 address"),
        );
        // "torproject™.org:443"
        check_err(
            c,
            "746f7270726f6a656374e284a22e6f72673a34343300",
            CodecError::BadValue("BEGIN hostname"),
        );
        check_err(c, "ff3a383000", CodecError::BadValue("BEGIN address"));

        let mut out = Vec::new();
        let b = Begin {
            host: Host::Hostname("a b".into()),
            port: 1,
            flags: BeginFlags(0),
        };
        assert_eq!(
            b.encode(&mut out),
            Err(CodecError::BadValue("BEGIN hostname"))
        );
        let b = Begin {
            host: Host::Ipv4(Ipv4Addr::LOCALHOST),
            port: 0,
            flags: BeginFlags(0),
        };
        assert_eq!(b.encode(&mut out), Err(CodecError::BadValue("BEGIN port")));
    }

    #[test]
    fn data() {
        check(
            RelayCmd::DATA,
            "474554202f20485454502f312e310d0a0d0a",
            Data::new(b"GET / HTTP/1.1\r\n\r\n".to_vec())
                .expect("fits")
                .into(),
        );
        check(
            RelayCmd::DATA,
            "",
            Data::new(Vec::new()).expect("fits").into(),
        );
        let full = vec![7u8; RELAY_DATA_MAX_V0];
        let d = Data::decode(&full).expect("fits");
        assert_eq!(d.as_bytes(), &full[..]);
        assert_eq!(d.into_vec(), full);
        let over = CodecError::TooLong {
            what: "DATA",
            len: 499,
        };
        assert_eq!(Data::decode(&[0u8; 499]), Err(over));
        assert_eq!(Data::new(vec![0u8; 499]), Err(over));
    }

    #[test]
    fn end() {
        let c = RelayCmd::END;
        check(c, "01", End::new(EndReason::MISC).into());
        check(c, "06", End::new(EndReason::DONE).into());
        check(c, "63", End::new(EndReason(99)).into());
        let ep = |addr: &str, ttl| End {
            reason: EndReason::EXITPOLICY,
            exit_policy: Some(ExitPolicyAddr {
                addr: addr.parse().expect("addr"),
                ttl,
            }),
        };
        check(c, "04 7f000007 00000100", ep("127.0.0.7", 256).into());
        check(
            c,
            "04 20010db8 00000000 00000000 0000f00b 00000200",
            ep("2001:db8::f00b", 512).into(),
        );
        // Empty means MISC.
        check_noncanonical(c, "", "01", End::new(EndReason::MISC).into());
        // No TTL means 0xffffffff.
        check_noncanonical(
            c,
            "04 7f000007",
            "04 7f000007 ffffffff",
            ep("127.0.0.7", u32::MAX).into(),
        );
        check_noncanonical(
            c,
            "04 20010db8 00000000 00000000 0000f00b",
            "04 20010db8 00000000 00000000 0000f00b ffffffff",
            ep("2001:db8::f00b", u32::MAX).into(),
        );
        // An address of the wrong length is ignored, and so is anything after other reasons.
        check_noncanonical(c, "04 7f0000", "04", End::new(EndReason::EXITPOLICY).into());
        check_noncanonical(
            c,
            "06 7f000007 00000100",
            "06",
            End::new(EndReason::DONE).into(),
        );

        let bad = End {
            reason: EndReason::DONE,
            ..ep("127.0.0.7", 1)
        };
        assert_eq!(
            bad.encode(&mut Vec::new()),
            Err(CodecError::BadValue("END address without EXITPOLICY"))
        );
        assert_eq!(EndReason::NOTDIRECTORY.to_string(), "NOTDIRECTORY");
        assert_eq!(EndReason(0).to_string(), "UNKNOWN(0)");
        let named = (0..=255u8)
            .filter(|&v| EndReason(v).name().is_some())
            .count();
        assert_eq!(named, 14);
    }

    #[test]
    fn connected() {
        let c = RelayCmd::CONNECTED;
        check(c, "", Connected::Empty.into());
        check(
            c,
            "7F000001 00000E10",
            Connected::Addr {
                addr: Ipv4Addr::LOCALHOST.into(),
                ttl: 3600,
            }
            .into(),
        );
        check(
            c,
            "00000000 06 20010db8 00000000 00000000 00001122 00000E10",
            Connected::Addr {
                addr: "2001:db8::1122".parse().expect("addr"),
                ttl: 3600,
            }
            .into(),
        );
        check_err(
            c,
            "00000000 07 20010db8 00000000 00000000 00001122 00000E10",
            CodecError::BadValue("CONNECTED address type"),
        );
        check_err(c, "7F0000", CodecError::Truncated);
        check_err(c, "7F000001 0000", CodecError::Truncated);
        check_err(c, "00000000 06 20010db8", CodecError::Truncated);
        let zero = Connected::Addr {
            addr: Ipv4Addr::UNSPECIFIED.into(),
            ttl: 1,
        };
        assert_eq!(
            zero.encode(&mut Vec::new()),
            Err(CodecError::BadValue("CONNECTED IPv4 address"))
        );
    }

    #[test]
    fn sendme() {
        let c = RelayCmd::SENDME;
        check(c, "", Sendme::V0.into());
        let digest: [u8; 20] = unhex("F01234989823478bcdefabcdef01234567890123")
            .try_into()
            .expect("20 bytes");
        check(
            c,
            "01 0014 F01234989823478bcdefabcdef01234567890123",
            Sendme::V1 { digest }.into(),
        );
        // Version 0 with a body: the rest is ignored.
        check_noncanonical(c, "00 0003 aabbcc", "", Sendme::V0.into());
        // Version 1 with more than 20 bytes: the first 20 are the digest.
        check_noncanonical(
            c,
            "01 0015 F01234989823478bcdefabcdef01234567890123 ff",
            "01 0014 F01234989823478bcdefabcdef01234567890123",
            Sendme::V1 { digest }.into(),
        );
        // 16 to 19 bytes: a CGO tag, its first 16 bytes.
        let tag: [u8; 16] = unhex("F01234989823478bcdefabcdef012345")
            .try_into()
            .expect("16 bytes");
        check(
            c,
            "01 0010 F01234989823478bcdefabcdef012345",
            Sendme::V1Cgo { tag }.into(),
        );
        check_noncanonical(
            c,
            "01 0013 F01234989823478bcdefabcdef012345678901",
            "01 0010 F01234989823478bcdefabcdef012345",
            Sendme::V1Cgo { tag }.into(),
        );
        check_err(
            c,
            "01 000f F01234989823478bcdefabcdef0123",
            CodecError::BadValue("SENDME v1 DATA_LEN"),
        );
        check_err(c, "01 0014 F012", CodecError::Truncated);
        check_err(c, "01", CodecError::Truncated);
        check(
            c,
            "07 0002 abcd",
            Sendme::Unrecognized {
                version: 7,
                data: vec![0xab, 0xcd],
            }
            .into(),
        );
        let bad = Sendme::Unrecognized {
            version: 1,
            data: vec![],
        };
        assert_eq!(
            bad.encode(&mut Vec::new()),
            Err(CodecError::BadValue("SENDME version"))
        );
    }

    #[test]
    fn extend2_and_extended2() {
        // C tor.
        let body = "02
             00 06 7F0000011388
             02 14 03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E
             0002 0054
             03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E36A3E0BDB1F1A10579820243DD2E228B902940EB49EF842646E3926768C28410074BEE50A535116D657C6BFB7E5114119DC69F05DF907EF62002EA782B0A357F";
        let hdata = unhex("03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E36A3E0BDB1F1A10579820243DD2E228B902940EB49EF842646E3926768C28410074BEE50A535116D657C6BFB7E5114119DC69F05DF907EF62002EA782B0A357F");
        let rsa: [u8; 20] = unhex("03479E93EBF3FF2C58C1C9DBF2DE9DE9C2801B3E")
            .try_into()
            .expect("20");
        check(
            RelayCmd::EXTEND2,
            body,
            Extend2 {
                link_specs: vec![
                    LinkSpec::Ipv4(Ipv4Addr::LOCALHOST, 5000),
                    LinkSpec::RsaId(RsaIdentity::from_bytes(rsa)),
                ],
                htype: HandshakeType::NTOR,
                hdata,
            }
            .into(),
        );
        check_err(RelayCmd::EXTEND2, "01 00 06 7F00", CodecError::Truncated);
        check_err(
            RelayCmd::EXTEND2,
            "00 0002 0054 0102",
            CodecError::Truncated,
        );

        // C tor.
        let body = "0040 0026619058EB2661834D54C2624828728F28915587CDAD1AD3373B85F33A480EEA9D3B2CEF8D39C1DBD2FA519E75296B96960690C79A28D6A0D9454F8E9634BD";
        let hdata = unhex(&body[5..]);
        check(RelayCmd::EXTENDED2, body, Extended2 { hdata }.into());
        check_err(RelayCmd::EXTENDED2, "0040 0026", CodecError::Truncated);
        check_err(RelayCmd::EXTENDED2, "", CodecError::Truncated);
    }

    #[test]
    fn truncate_truncated_drop_begindir() {
        check(RelayCmd::TRUNCATE, "", Truncate.into());
        check_noncanonical(RelayCmd::TRUNCATE, "0102", "", Truncate.into());
        // C tor.
        check(
            RelayCmd::TRUNCATED,
            "08",
            Truncated {
                reason: DestroyReason::CHANNEL_CLOSED,
            }
            .into(),
        );
        check_noncanonical(
            RelayCmd::TRUNCATED,
            "",
            "00",
            Truncated {
                reason: DestroyReason::NONE,
            }
            .into(),
        );
        assert_eq!(DestroyReason::NOSUCHSERVICE.0, 12);
        assert_eq!(DestroyReason(7).name(), Some("OR_IDENTITY"));
        check(RelayCmd::DROP, "", Drop.into());
        check_noncanonical(RelayCmd::DROP, "00000000abcdef", "", Drop.into());
        check(RelayCmd::BEGIN_DIR, "", BeginDir.into());
        check_noncanonical(RelayCmd::BEGIN_DIR, "000000", "", BeginDir.into());
    }

    #[test]
    fn resolve() {
        let c = RelayCmd::RESOLVE;
        let named = |n: &str| Resolve { name: n.into() };
        check(
            c,
            &hex::encode(b"www.torproject.org\0"),
            named("www.torproject.org").into(),
        );
        let v4 = hex::encode(b"1.0.0.127.in-addr.arpa\0");
        check(c, &v4, named("1.0.0.127.in-addr.arpa").into());
        let r = Resolve::reverse(Ipv4Addr::new(127, 0, 0, 1).into());
        assert_eq!(r, named("1.0.0.127.in-addr.arpa"));
        assert_eq!(r.reverse_addr(), Some(Ipv4Addr::new(127, 0, 0, 1).into()));

        let six = "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.2.ip6.arpa";
        let addr: IpAddr = "2001::".parse().expect("addr");
        check(c, &hex::encode(format!("{six}\0")), named(six).into());
        assert_eq!(Resolve::reverse(addr), named(six));
        assert_eq!(named(six).reverse_addr(), Some(addr));
        let addr: IpAddr = "2001:db8::abcd:1".parse().expect("addr");
        assert_eq!(Resolve::reverse(addr).reverse_addr(), Some(addr));

        assert_eq!(named("www.torproject.org").reverse_addr(), None);
        assert_eq!(named("1.0.0.in-addr.arpa").reverse_addr(), None);
        assert_eq!(named("1.0.0.0.256.in-addr.arpa").reverse_addr(), None);
        assert_eq!(
            named("1.0.0.127.IN-ADDR.ARPA.").reverse_addr(),
            Some(Ipv4Addr::new(127, 0, 0, 1).into())
        );
        assert_eq!(named("0.ip6.arpa").reverse_addr(), None);

        check_err(c, "7777", CodecError::Truncated);
        check_err(c, "00", CodecError::BadValue("RESOLVE name"));
        check_err(c, "772077 00", CodecError::BadValue("RESOLVE name"));
    }

    #[test]
    fn resolved() {
        let c = RelayCmd::RESOLVED;
        let ans = |value, ttl| ResolvedAnswer { value, ttl };
        check(c, "", Resolved::default().into());
        check(
            c,
            "F0 00 00000E10",
            Resolved {
                answers: vec![ans(ResolvedValue::TransientError(vec![]), 3600)],
            }
            .into(),
        );
        check(
            c,
            "F1 02 6869 00000E10",
            Resolved {
                answers: vec![ans(ResolvedValue::NontransientError(b"hi".to_vec()), 3600)],
            }
            .into(),
        );
        check(
            c,
            "04 04 7f000001 00000E10 04 04 7f000002 00001c20",
            Resolved {
                answers: vec![
                    ans(ResolvedValue::Ipv4(Ipv4Addr::new(127, 0, 0, 1)), 3600),
                    ans(ResolvedValue::Ipv4(Ipv4Addr::new(127, 0, 0, 2)), 7200),
                ],
            }
            .into(),
        );
        check(
            c,
            "06 10 12340000000000000000000000005678 00000080",
            Resolved {
                answers: vec![ans(
                    ResolvedValue::Ipv6("1234::5678".parse().expect("addr")),
                    128,
                )],
            }
            .into(),
        );
        check(
            c,
            "00 12 7777772e746f7270726f6a6563742e6f7267 00000258",
            Resolved {
                answers: vec![ans(
                    ResolvedValue::Hostname("www.torproject.org".into()),
                    600,
                )],
            }
            .into(),
        );
        check(
            c,
            "63 02 6869 00000258",
            Resolved {
                answers: vec![ans(
                    ResolvedValue::Unrecognized {
                        kind: 99,
                        value: b"hi".to_vec(),
                    },
                    600,
                )],
            }
            .into(),
        );
        check_err(
            c,
            "04 03 010203 00000001",
            CodecError::BadValue("RESOLVED IPv4"),
        );
        check_err(
            c,
            "06 04 01020304 00000001",
            CodecError::BadValue("RESOLVED IPv6"),
        );
        check_err(
            c,
            "00 01 ff 00000001",
            CodecError::BadValue("RESOLVED hostname"),
        );
        check_err(c, "04 04 7f000001 00000E", CodecError::Truncated);
        check_err(c, "04 04 7f000001 00000E10 04", CodecError::Truncated);
    }

    /// Each onion-service command reaches its `hs_msg` type through [`RelayMsg`], and re-encodes
    /// byte for byte (vectors from `hs_msg::test_vectors`, mostly captured from C tor).
    #[test]
    fn hs_messages_through_the_enum() {
        use crate::hs_msg::test_vectors::*;
        use crate::hs_msg::IntroduceAckStatus;

        fn direct<T>(hex: &str, decode: fn(&[u8]) -> Result<T, CodecError>) -> T {
            decode(&unhex(hex)).expect("decodes directly")
        }
        check(
            RelayCmd::ESTABLISH_INTRO,
            EST_INTRO_C_TOR,
            RelayMsg::EstablishIntro(direct(EST_INTRO_C_TOR, EstablishIntro::decode)),
        );
        check(
            RelayCmd::ESTABLISH_INTRO,
            EST_INTRO_DOS,
            RelayMsg::EstablishIntro(direct(EST_INTRO_DOS, EstablishIntro::decode)),
        );
        check(
            RelayCmd::INTRO_ESTABLISHED,
            "00",
            RelayMsg::IntroEstablished(IntroEstablished::default()),
        );
        check(
            RelayCmd::INTRODUCE1,
            INTRO1_C_TOR,
            RelayMsg::Introduce1(direct(INTRO1_C_TOR, Introduce1::decode)),
        );
        check(
            RelayCmd::INTRODUCE2,
            INTRO1_C_TOR,
            RelayMsg::Introduce2(direct(INTRO1_C_TOR, Introduce2::decode)),
        );
        let RelayMsg::IntroduceAck(ack) =
            RelayMsg::decode(RelayCmd::INTRODUCE_ACK, &unhex("0000 00")).expect("decodes")
        else {
            panic!("INTRODUCE_ACK gives IntroduceAck");
        };
        assert_eq!(ack.status, IntroduceAckStatus::SUCCESS);
        check(
            RelayCmd::INTRODUCE_ACK,
            "0002 00",
            RelayMsg::IntroduceAck(direct("0002 00", IntroduceAck::decode)),
        );
        let cookie = "4AA2BAF815CEBB4B922B5BF6F545AEE0DDBE1254";
        check(
            RelayCmd::ESTABLISH_RENDEZVOUS,
            cookie,
            RelayMsg::EstablishRendezvous(direct(cookie, EstablishRendezvous::decode)),
        );
        check_noncanonical(
            RelayCmd::RENDEZVOUS_ESTABLISHED,
            "0102",
            "",
            RelayMsg::RendezvousEstablished(RendezvousEstablished),
        );
        check(
            RelayCmd::RENDEZVOUS1,
            RENDEZVOUS1_C_TOR,
            RelayMsg::Rendezvous1(direct(RENDEZVOUS1_C_TOR, Rendezvous1::decode)),
        );
        check(
            RelayCmd::RENDEZVOUS2,
            RENDEZVOUS2_C_TOR,
            RelayMsg::Rendezvous2(direct(RENDEZVOUS2_C_TOR, Rendezvous2::decode)),
        );

        // Malformed bodies give the module's error, not Unrecognized.
        check_err(
            RelayCmd::ESTABLISH_INTRO,
            "01 0020",
            CodecError::BadValue("AUTH_KEY_TYPE"),
        );
        check_err(
            RelayCmd::INTRODUCE1,
            &INTRO1_C_TOR[..40],
            CodecError::Truncated,
        );
        check_err(
            RelayCmd::RENDEZVOUS2,
            &RENDEZVOUS2_C_TOR[..126],
            CodecError::Truncated,
        );
        check_err(
            RelayCmd::ESTABLISH_RENDEZVOUS,
            &cookie[..38],
            CodecError::Truncated,
        );
        check_err(
            RelayCmd::INTRODUCE_ACK,
            "0000 00 00",
            CodecError::TrailingBytes(1),
        );
    }

    #[test]
    fn unrecognized_commands_round_trip() {
        for cmd in [
            RelayCmd::EXTEND,
            RelayCmd::EXTENDED,
            RelayCmd::CONFLUX_LINK,
            RelayCmd::PADDING_NEGOTIATE,
            RelayCmd::XON,
            RelayCmd(249),
        ] {
            check(
                cmd,
                "617262697472617279206279746573",
                RelayMsg::Unrecognized {
                    cmd,
                    body: b"arbitrary bytes".to_vec(),
                },
            );
        }
    }

    #[test]
    fn fuzz_entry_points_accept_samples() {
        fuzz_decode(&[]);
        fuzz_decode(&[1]);
        fuzz_decode(b"\x01www.example.com:80\0\0\0\0\x07");
        fuzz_decode(&unhex(
            "05 01 0014 F01234989823478bcdefabcdef01234567890123",
        ));
        fuzz_decode_cell(&[]);
        fuzz_decode_cell(&[2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        fuzz_decode_cell(&[0xff; 600]);
    }

    fn arb_host() -> impl Strategy<Value = Host> {
        prop_oneof![
            "[a-z0-9.-]{1,40}"
                .prop_filter("not a dotted quad", |s| s.parse::<Ipv4Addr>().is_err())
                .prop_map(Host::Hostname),
            any::<[u8; 4]>().prop_map(|a| Host::Ipv4(a.into())),
            any::<[u8; 16]>().prop_map(|a| Host::Ipv6(a.into())),
        ]
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| IpAddr::V4(a.into())),
            any::<[u8; 16]>().prop_map(|a| IpAddr::V6(a.into())),
        ]
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=max)
    }

    fn arb_link_spec() -> impl Strategy<Value = LinkSpec> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| LinkSpec::Ipv4(a.into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| LinkSpec::Ipv6(a.into(), p)),
            any::<[u8; 20]>().prop_map(|a| LinkSpec::RsaId(RsaIdentity::from_bytes(a))),
            (4u8.., arb_bytes(30))
                .prop_map(|(ls_type, body)| LinkSpec::Unrecognized { ls_type, body }),
        ]
    }

    fn arb_resolved_value() -> impl Strategy<Value = ResolvedValue> {
        prop_oneof![
            "[a-z.]{0,30}".prop_map(ResolvedValue::Hostname),
            any::<[u8; 4]>().prop_map(|a| ResolvedValue::Ipv4(a.into())),
            any::<[u8; 16]>().prop_map(|a| ResolvedValue::Ipv6(a.into())),
            arb_bytes(30).prop_map(ResolvedValue::TransientError),
            arb_bytes(30).prop_map(ResolvedValue::NontransientError),
            (7u8..0xf0, arb_bytes(30))
                .prop_map(|(kind, value)| ResolvedValue::Unrecognized { kind, value }),
        ]
    }

    fn arb_msg() -> impl Strategy<Value = RelayMsg> {
        prop_oneof![
            (arb_host(), 1u16.., any::<u32>()).prop_map(|(host, port, f)| Begin {
                host,
                port,
                flags: BeginFlags(f)
            }
            .into()),
            arb_bytes(RELAY_DATA_MAX_V0).prop_map(|b| Data::new(b).expect("fits").into()),
            (any::<u8>(), arb_ip(), any::<u32>(), any::<bool>()).prop_map(|(r, addr, ttl, ep)| {
                if ep {
                    End {
                        reason: EndReason::EXITPOLICY,
                        exit_policy: Some(ExitPolicyAddr { addr, ttl }),
                    }
                } else {
                    End::new(EndReason(r))
                }
                .into()
            }),
            prop_oneof![
                Just(Connected::Empty),
                (arb_ip(), any::<u32>())
                    .prop_filter("0.0.0.0 is not an IPv4 answer", |(a, _)| a
                        != &IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                    .prop_map(|(addr, ttl)| Connected::Addr { addr, ttl }),
            ]
            .prop_map(RelayMsg::from),
            prop_oneof![
                Just(Sendme::V0),
                any::<[u8; 20]>().prop_map(|digest| Sendme::V1 { digest }),
                any::<[u8; 16]>().prop_map(|tag| Sendme::V1Cgo { tag }),
                (2u8.., arb_bytes(40))
                    .prop_map(|(version, data)| Sendme::Unrecognized { version, data }),
            ]
            .prop_map(RelayMsg::from),
            (
                proptest::collection::vec(arb_link_spec(), 0..5),
                any::<u16>(),
                arb_bytes(300)
            )
                .prop_map(|(link_specs, htype, hdata)| Extend2 {
                    link_specs,
                    htype: HandshakeType(htype),
                    hdata
                }
                .into()),
            arb_bytes(300).prop_map(|hdata| Extended2 { hdata }.into()),
            Just(Truncate.into()),
            any::<u8>().prop_map(|r| Truncated {
                reason: DestroyReason(r)
            }
            .into()),
            Just(Drop.into()),
            Just(BeginDir.into()),
            "[!-~]{1,60}".prop_map(|name| Resolve { name }.into()),
            proptest::collection::vec(
                (arb_resolved_value(), any::<u32>())
                    .prop_map(|(value, ttl)| ResolvedAnswer { value, ttl }),
                0..6
            )
            .prop_map(|answers| Resolved { answers }.into()),
            any::<[u8; 20]>().prop_map(|c| EstablishRendezvous {
                cookie: crate::hs_msg::RendCookie::from_bytes(c)
            }
            .into()),
            Just(RendezvousEstablished.into()),
            (
                any::<[u8; 20]>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                arb_bytes(40)
            )
                .prop_map(|(c, server_pk, auth, padding)| Rendezvous1 {
                    cookie: crate::hs_msg::RendCookie::from_bytes(c),
                    handshake_info: crate::hs_msg::HandshakeInfo { server_pk, auth },
                    padding,
                }
                .into()),
            (
                any::<u8>().prop_filter("not a parsed command", |c| matches!(
                    RelayMsg::decode(RelayCmd(*c), &[]),
                    Ok(RelayMsg::Unrecognized { .. })
                )),
                arb_bytes(100)
            )
                .prop_map(|(c, body)| RelayMsg::Unrecognized {
                    cmd: RelayCmd(c),
                    body
                }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(cmd in any::<u8>(), body in arb_bytes(RELAY_DATA_MAX_V0 + 20)) {
            fuzz_decode(&[&[cmd][..], &body].concat());
        }

        #[test]
        fn decode_cell_never_panics(body in arb_bytes(RELAY_BODY_LEN)) {
            fuzz_decode_cell(&body);
        }

        /// Near-valid input reaches deeper than random bytes: mutate a valid encoding.
        #[test]
        fn mutated_messages_decode_canonically(
            msg in arb_msg(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            xor in any::<u8>(),
            extra in arb_bytes(8),
        ) {
            let mut out = vec![msg.cmd().0];
            msg.encode(&mut out).expect("encodes");
            fuzz_decode(&out);
            let mut flipped = out.clone();
            let i = flip.index(flipped.len());
            if i > 0 {
                flipped[i] ^= xor;
            }
            fuzz_decode(&flipped);
            fuzz_decode(&out[..cut.index(out.len()) + 1]);
            out.extend_from_slice(&extra);
            fuzz_decode(&out);
        }

        #[test]
        fn encode_decode_identity(msg in arb_msg()) {
            let mut out = Vec::new();
            msg.encode(&mut out).expect("encodes");
            prop_assert_eq!(RelayMsg::decode(msg.cmd(), &out), Ok(msg));
        }
    }
}
