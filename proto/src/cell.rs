//! Channel cell framing: the fixed-length and variable-length cells a channel carries.
//!
//! tor-spec §3 ("Cell Packet format",
//! <https://spec.torproject.org/tor-spec/cell-packet-format.html>):
//!
//! ```text
//!   fixed:    CircID [CIRCID_LEN] Command [1] Payload [509, padded]
//!   variable: CircID [CIRCID_LEN] Command [1] Length [2] Payload [Length]
//! ```
//!
//! `CIRCID_LEN` is 4 on link protocol 4 and later, 2 before; the first VERSIONS cell (and anything
//! before it) always uses 2. On link protocol 3 and later a cell is variable-length when its
//! command is VERSIONS (7) or at least 128. chive speaks only link protocols 4 and 5, so that is
//! the only rule implemented here.
//!
//! This module only frames: [`RawCell::decode`] splits a stream buffer into cells without
//! copying (fixed-length bodies come back as `&[u8; BODY_LEN]`), and [`RawCell::encode`] writes
//! one. What the body means is [`crate::chan_msg`]'s business.

use std::fmt;

use thiserror::Error;

use crate::codec::{CodecError, Writer};
use crate::ids::CircId;

/// Bytes in the body (`PAYLOAD_LEN`) of every fixed-length cell.
pub const BODY_LEN: usize = 509;
/// Length of a fixed-length cell with 4-byte circuit ids (link protocol 4 and later).
pub const CELL_LEN_V4: usize = 514;
/// Length of a fixed-length cell with 2-byte circuit ids (before link protocol 4).
pub const CELL_LEN_V3: usize = 512;
/// The largest body a variable-length cell can have: its length field is two bytes.
pub const VAR_BODY_LEN_MAX: usize = u16::MAX as usize;

const _: () = assert!(CELL_LEN_V4 == 4 + 1 + BODY_LEN);
const _: () = assert!(CELL_LEN_V3 == 2 + 1 + BODY_LEN);

/// A channel cell's command byte.
///
/// Open on purpose: unknown commands must be dropped, not treated as errors (tor-spec §3: "ORs
/// should generally not warn when encountering unrecognized commands"), so every byte value is
/// a `ChanCmd`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChanCmd(pub u8);

impl ChanCmd {
    /// Link padding (keepalive), fixed-length, circuit id 0.
    pub const PADDING: ChanCmd = ChanCmd(0);
    /// TAP circuit creation (obsolete; chive never sends it).
    pub const CREATE: ChanCmd = ChanCmd(1);
    /// TAP circuit creation reply.
    pub const CREATED: ChanCmd = ChanCmd(2);
    /// Onion-encrypted relay traffic.
    pub const RELAY: ChanCmd = ChanCmd(3);
    /// Circuit teardown.
    pub const DESTROY: ChanCmd = ChanCmd(4);
    /// First-hop circuit creation without public-key crypto (deprecated).
    pub const CREATE_FAST: ChanCmd = ChanCmd(5);
    /// Reply to CREATE_FAST.
    pub const CREATED_FAST: ChanCmd = ChanCmd(6);
    /// Link version negotiation; variable-length although below 128.
    pub const VERSIONS: ChanCmd = ChanCmd(7);
    /// Time and address exchange that finishes the link handshake.
    pub const NETINFO: ChanCmd = ChanCmd(8);
    /// Relay traffic that may carry EXTEND/EXTEND2 (limited in number per circuit).
    pub const RELAY_EARLY: ChanCmd = ChanCmd(9);
    /// Extensible circuit creation.
    pub const CREATE2: ChanCmd = ChanCmd(10);
    /// Reply to CREATE2.
    pub const CREATED2: ChanCmd = ChanCmd(11);
    /// Link padding negotiation (link protocol 5).
    pub const PADDING_NEGOTIATE: ChanCmd = ChanCmd(12);
    /// Variable-length padding.
    pub const VPADDING: ChanCmd = ChanCmd(128);
    /// Certificates of the link handshake.
    pub const CERTS: ChanCmd = ChanCmd(129);
    /// The responder's challenge for initiator authentication.
    pub const AUTH_CHALLENGE: ChanCmd = ChanCmd(130);
    /// The initiator's answer to AUTH_CHALLENGE.
    pub const AUTHENTICATE: ChanCmd = ChanCmd(131);
    /// Reserved for scanning-resistance designs; never sent.
    pub const AUTHORIZE: ChanCmd = ChanCmd(132);

    /// Whether cells with this command are variable-length (link protocol 3 and later).
    pub const fn is_var_len(self) -> bool {
        self.0 == Self::VERSIONS.0 || self.0 >= 128
    }

    /// The spec's name for a known command.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::PADDING => "PADDING",
            Self::CREATE => "CREATE",
            Self::CREATED => "CREATED",
            Self::RELAY => "RELAY",
            Self::DESTROY => "DESTROY",
            Self::CREATE_FAST => "CREATE_FAST",
            Self::CREATED_FAST => "CREATED_FAST",
            Self::VERSIONS => "VERSIONS",
            Self::NETINFO => "NETINFO",
            Self::RELAY_EARLY => "RELAY_EARLY",
            Self::CREATE2 => "CREATE2",
            Self::CREATED2 => "CREATED2",
            Self::PADDING_NEGOTIATE => "PADDING_NEGOTIATE",
            Self::VPADDING => "VPADDING",
            Self::CERTS => "CERTS",
            Self::AUTH_CHALLENGE => "AUTH_CHALLENGE",
            Self::AUTHENTICATE => "AUTHENTICATE",
            Self::AUTHORIZE => "AUTHORIZE",
            _ => return None,
        })
    }

    /// What this command requires of the circuit id field.
    ///
    /// Circuit id 0 is "reserved for cells that do not belong to any circuit" (tor-spec
    /// §5.1.1): link-handshake and link-padding cells carry 0, circuit cells a real id.
    /// PADDING and VPADDING are accepted with any id: receivers must ignore padding (tor-spec
    /// §3), so a peer's odd id there is harmless and not worth closing a channel over.
    /// Unknown commands are dropped by the caller, so any id is allowed for them too.
    pub const fn circ_id_rule(self) -> CircIdRule {
        match self {
            Self::VERSIONS
            | Self::NETINFO
            | Self::PADDING_NEGOTIATE
            | Self::CERTS
            | Self::AUTH_CHALLENGE
            | Self::AUTHENTICATE
            | Self::AUTHORIZE => CircIdRule::Zero,
            Self::CREATE
            | Self::CREATED
            | Self::RELAY
            | Self::DESTROY
            | Self::CREATE_FAST
            | Self::CREATED_FAST
            | Self::RELAY_EARLY
            | Self::CREATE2
            | Self::CREATED2 => CircIdRule::NonZero,
            _ => CircIdRule::Any,
        }
    }

    /// Checks a received cell's circuit id against [`ChanCmd::circ_id_rule`].
    pub const fn allows_circ_id(self, circ_id: Option<CircId>) -> Result<(), CircIdError> {
        match (self.circ_id_rule(), circ_id) {
            (CircIdRule::Zero, Some(_)) => Err(CircIdError::MustBeZero(self)),
            (CircIdRule::NonZero, None) => Err(CircIdError::MustBeNonZero(self)),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ChanCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "command {}", self.0),
        }
    }
}

impl fmt::Debug for ChanCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "ChanCmd({n})"),
            None => write!(f, "ChanCmd({})", self.0),
        }
    }
}

/// Which circuit ids a command may carry; see [`ChanCmd::circ_id_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircIdRule {
    /// Only 0: the cell is about the channel.
    Zero,
    /// Never 0: the cell is about a circuit.
    NonZero,
    /// Either.
    Any,
}

/// A cell's circuit id contradicts its command: a protocol violation by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CircIdError {
    /// A channel-level cell named a circuit.
    #[error("{0} cell with a nonzero circuit id")]
    MustBeZero(ChanCmd),
    /// A circuit-level cell had circuit id 0.
    #[error("{0} cell with circuit id 0")]
    MustBeNonZero(ChanCmd),
}

/// Width of the circuit id field, fixed by the link protocol (see
/// [`crate::link_version::circ_id_len`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircIdLen {
    /// Link protocols 1-3, and every cell up to and including the first VERSIONS cell.
    Two,
    /// Link protocol 4 and later.
    Four,
}

impl CircIdLen {
    /// The width to use before versions are negotiated: the first VERSIONS cell is always sent
    /// and read with 2-byte circuit ids (tor-spec §3).
    pub const BEFORE_NEGOTIATION: CircIdLen = CircIdLen::Two;

    /// Bytes in the field.
    pub const fn bytes(self) -> usize {
        match self {
            CircIdLen::Two => 2,
            CircIdLen::Four => 4,
        }
    }

    /// Length of a whole fixed-length cell with this circuit id width.
    pub const fn cell_len(self) -> usize {
        match self {
            CircIdLen::Two => CELL_LEN_V3,
            CircIdLen::Four => CELL_LEN_V4,
        }
    }
}

/// A cell's body as it sits in the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellBody<'a> {
    /// The padded body of a fixed-length cell.
    Fixed(&'a [u8; BODY_LEN]),
    /// The body of a variable-length cell, exactly as long as its length field said.
    Var(&'a [u8]),
}

impl<'a> CellBody<'a> {
    /// The body bytes, whichever kind.
    pub const fn as_slice(&self) -> &'a [u8] {
        match self {
            CellBody::Fixed(b) => b.as_slice(),
            CellBody::Var(b) => b,
        }
    }
}

/// One framed cell, borrowed from the buffer it was read from: the hot path's view of a cell,
/// with no copy and no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCell<'a> {
    /// The circuit id; `None` for 0.
    pub circ_id: Option<CircId>,
    /// The command byte.
    pub cmd: ChanCmd,
    /// The body; its kind always matches `cmd.is_var_len()`.
    pub body: CellBody<'a>,
}

impl<'a> RawCell<'a> {
    /// Frames the next cell at the front of `buf` (decrypted TLS stream bytes).
    ///
    /// Returns `None` when `buf` does not yet hold a whole cell, otherwise the cell and how many
    /// bytes of `buf` it used. Framing cannot fail: every command byte is a valid cell, and a
    /// variable-length body is bounded by its two-byte length field ([`VAR_BODY_LEN_MAX`]),
    /// so a caller buffering until `Some` never holds more than one such cell.
    ///
    /// ```
    /// use proto::cell::{ChanCmd, CircIdLen, RawCell};
    ///
    /// // A peer's VERSIONS cell followed by the first 3 bytes of its next cell.
    /// let received = [0x00, 0x00, 0x07, 0x00, 0x04, 0x00, 0x04, 0x00, 0x05, 0x00, 0x00, 0x00];
    /// let mut buf = &received[..];
    /// let mut cmds = Vec::new();
    /// while let Some((cell, used)) = RawCell::decode(buf, CircIdLen::BEFORE_NEGOTIATION) {
    ///     cmds.push(cell.cmd);
    ///     buf = &buf[used..];
    /// }
    /// assert_eq!(cmds, [ChanCmd::VERSIONS]);
    /// assert_eq!(buf.len(), 3); // kept until more bytes arrive
    /// ```
    pub fn decode(buf: &'a [u8], circ_id_len: CircIdLen) -> Option<(RawCell<'a>, usize)> {
        let id_len = circ_id_len.bytes();
        let (circ_id, rest) = match circ_id_len {
            CircIdLen::Two => {
                let (id, rest) = buf.split_first_chunk::<2>()?;
                (u32::from(u16::from_be_bytes(*id)), rest)
            }
            CircIdLen::Four => {
                let (id, rest) = buf.split_first_chunk::<4>()?;
                (u32::from_be_bytes(*id), rest)
            }
        };
        let (&cmd, rest) = rest.split_first()?;
        let cmd = ChanCmd(cmd);
        let circ_id = CircId::new(circ_id);
        if cmd.is_var_len() {
            let (len, rest) = rest.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_be_bytes(*len));
            let body = rest.get(..len)?;
            let cell = RawCell {
                circ_id,
                cmd,
                body: CellBody::Var(body),
            };
            Some((cell, id_len + 3 + len))
        } else {
            let (body, _) = rest.split_first_chunk::<BODY_LEN>()?;
            let cell = RawCell {
                circ_id,
                cmd,
                body: CellBody::Fixed(body),
            };
            Some((cell, id_len + 1 + BODY_LEN))
        }
    }

    /// Appends this cell, framed for `circ_id_len`.
    ///
    /// Fails if the circuit id does not fit in two bytes when `circ_id_len` is
    /// [`CircIdLen::Two`], or if the body kind does not match the command.
    pub fn encode(&self, circ_id_len: CircIdLen, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.cmd.is_var_len() != matches!(self.body, CellBody::Var(_)) {
            return Err(CodecError::BadValue("cell body kind for command"));
        }
        let start = out.len();
        put_header(self.circ_id, self.cmd, circ_id_len, out)?;
        match self.body {
            CellBody::Fixed(b) => out.put(b),
            CellBody::Var(b) => {
                if let Err(e) = out.put_u16_prefixed(b, "variable-length cell body") {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Appends a circuit id and command.
pub(crate) fn put_header(
    circ_id: Option<CircId>,
    cmd: ChanCmd,
    circ_id_len: CircIdLen,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let id = circ_id.map_or(0, CircId::get);
    match circ_id_len {
        CircIdLen::Two => {
            let id = u16::try_from(id).map_err(|_| CodecError::BadValue("2-byte circuit id"))?;
            out.put_u16(id);
        }
        CircIdLen::Four => out.put_u32(id),
    }
    out.put_u8(cmd.0);
    Ok(())
}

/// Frames every cell in `data` with both circuit-id widths and re-encodes each one, checking
/// that the bytes come back unchanged. For fuzz targets: panics only if framing is wrong.
pub fn fuzz_decode(data: &[u8]) {
    for circ_id_len in [CircIdLen::Two, CircIdLen::Four] {
        let mut rest = data;
        while let Some((cell, used)) = RawCell::decode(rest, circ_id_len) {
            let mut out = Vec::new();
            let encoded = cell.encode(circ_id_len, &mut out);
            assert_eq!(encoded, Ok(()));
            assert_eq!(out.as_slice(), rest.get(..used).unwrap_or_default());
            rest = rest.get(used..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(v: u32) -> Option<CircId> {
        CircId::new(v)
    }

    #[test]
    fn var_len_commands() {
        let var: Vec<u8> = (0..=255u8).filter(|&c| ChanCmd(c).is_var_len()).collect();
        let mut expected = vec![7u8];
        expected.extend(128..=255u8);
        assert_eq!(var, expected);
        for c in [
            ChanCmd::VPADDING,
            ChanCmd::CERTS,
            ChanCmd::AUTH_CHALLENGE,
            ChanCmd::AUTHENTICATE,
            ChanCmd::AUTHORIZE,
        ] {
            assert!(c.is_var_len(), "{c}");
        }
    }

    #[test]
    fn command_names_and_values() {
        let known = [
            (0, "PADDING"),
            (1, "CREATE"),
            (2, "CREATED"),
            (3, "RELAY"),
            (4, "DESTROY"),
            (5, "CREATE_FAST"),
            (6, "CREATED_FAST"),
            (7, "VERSIONS"),
            (8, "NETINFO"),
            (9, "RELAY_EARLY"),
            (10, "CREATE2"),
            (11, "CREATED2"),
            (12, "PADDING_NEGOTIATE"),
            (128, "VPADDING"),
            (129, "CERTS"),
            (130, "AUTH_CHALLENGE"),
            (131, "AUTHENTICATE"),
            (132, "AUTHORIZE"),
        ];
        for (v, n) in known {
            assert_eq!(ChanCmd(v).name(), Some(n));
        }
        let named = (0..=255u8).filter(|&c| ChanCmd(c).name().is_some()).count();
        assert_eq!(named, known.len());
        assert_eq!(ChanCmd(77).to_string(), "command 77");
        assert_eq!(format!("{:?}", ChanCmd::RELAY), "ChanCmd(RELAY)");
    }

    #[test]
    fn circ_id_rules() {
        let some = id(5);
        assert_eq!(ChanCmd::NETINFO.allows_circ_id(None), Ok(()));
        assert_eq!(
            ChanCmd::NETINFO.allows_circ_id(some),
            Err(CircIdError::MustBeZero(ChanCmd::NETINFO))
        );
        assert_eq!(
            ChanCmd::VERSIONS.allows_circ_id(some),
            Err(CircIdError::MustBeZero(ChanCmd::VERSIONS))
        );
        assert_eq!(ChanCmd::RELAY.allows_circ_id(some), Ok(()));
        assert_eq!(
            ChanCmd::RELAY.allows_circ_id(None),
            Err(CircIdError::MustBeNonZero(ChanCmd::RELAY))
        );
        assert_eq!(
            ChanCmd::DESTROY.allows_circ_id(None),
            Err(CircIdError::MustBeNonZero(ChanCmd::DESTROY))
        );
        for c in [
            ChanCmd::PADDING,
            ChanCmd::VPADDING,
            ChanCmd(13),
            ChanCmd(200),
        ] {
            assert_eq!(c.allows_circ_id(None), Ok(()));
            assert_eq!(c.allows_circ_id(some), Ok(()));
        }
    }

    #[test]
    fn versions_cell_frames_with_two_byte_ids() {
        // tor-spec §3/§4.1: CircID 0 (2 bytes), VERSIONS, length 4, versions 4 and 5.
        let bytes = [0x00, 0x00, 0x07, 0x00, 0x04, 0x00, 0x04, 0x00, 0x05, 0xff];
        let (cell, used) =
            RawCell::decode(&bytes, CircIdLen::BEFORE_NEGOTIATION).expect("whole cell");
        assert_eq!(used, 9);
        assert_eq!(cell.circ_id, None);
        assert_eq!(cell.cmd, ChanCmd::VERSIONS);
        assert_eq!(cell.body, CellBody::Var(&[0, 4, 0, 5]));
        let mut out = Vec::new();
        cell.encode(CircIdLen::Two, &mut out).expect("encodes");
        assert_eq!(out, bytes[..9]);
    }

    #[test]
    fn fixed_cell_frames_with_four_byte_ids() {
        let mut bytes = vec![0x80, 0x00, 0x00, 0x01, 0x03];
        bytes.extend((0..BODY_LEN).map(|i| i as u8));
        bytes.extend([1, 2, 3]);
        let (cell, used) = RawCell::decode(&bytes, CircIdLen::Four).expect("whole cell");
        assert_eq!(used, CELL_LEN_V4);
        assert_eq!(cell.circ_id, id(0x8000_0001));
        assert_eq!(cell.cmd, ChanCmd::RELAY);
        match cell.body {
            CellBody::Fixed(b) => assert_eq!(b[..], bytes[5..CELL_LEN_V4]),
            CellBody::Var(_) => panic!("RELAY is fixed-length"),
        }
        let mut out = Vec::new();
        cell.encode(CircIdLen::Four, &mut out).expect("encodes");
        assert_eq!(out, bytes[..CELL_LEN_V4]);

        // The same bytes read with 2-byte ids are a different cell of 512 bytes.
        let (cell, used) = RawCell::decode(&bytes, CircIdLen::Two).expect("whole cell");
        assert_eq!(used, CELL_LEN_V3);
        assert_eq!(cell.circ_id, id(0x8000));
        assert_eq!(cell.cmd, ChanCmd::PADDING);
    }

    #[test]
    fn partial_cells_need_more_bytes() {
        let mut bytes = vec![0, 0, 0, 0, 0x81, 0x01, 0x00];
        bytes.extend([0xaa; 256]);
        for n in 0..bytes.len() {
            assert_eq!(RawCell::decode(&bytes[..n], CircIdLen::Four), None, "{n}");
        }
        let (cell, used) = RawCell::decode(&bytes, CircIdLen::Four).expect("whole");
        assert_eq!(used, bytes.len());
        assert_eq!(cell.cmd, ChanCmd::CERTS);
        assert_eq!(cell.body.as_slice().len(), 256);

        let fixed = [0u8; CELL_LEN_V4];
        assert_eq!(
            RawCell::decode(&fixed[..CELL_LEN_V4 - 1], CircIdLen::Four),
            None
        );
        assert!(RawCell::decode(&fixed, CircIdLen::Four).is_some());
    }

    #[test]
    fn largest_var_cell() {
        let mut bytes = vec![0, 0, 0, 0, 128, 0xff, 0xff];
        bytes.resize(7 + VAR_BODY_LEN_MAX, 0);
        let (cell, used) = RawCell::decode(&bytes, CircIdLen::Four).expect("whole");
        assert_eq!(used, bytes.len());
        assert_eq!(cell.body.as_slice().len(), VAR_BODY_LEN_MAX);
    }

    #[test]
    fn encode_rejects_misuse() {
        let body = [0u8; BODY_LEN];
        let mut out = Vec::new();
        let wide = RawCell {
            circ_id: id(0x1_0000),
            cmd: ChanCmd::RELAY,
            body: CellBody::Fixed(&body),
        };
        assert_eq!(
            wide.encode(CircIdLen::Two, &mut out),
            Err(CodecError::BadValue("2-byte circuit id"))
        );
        let mismatched = RawCell {
            circ_id: None,
            cmd: ChanCmd::VERSIONS,
            body: CellBody::Fixed(&body),
        };
        assert_eq!(
            mismatched.encode(CircIdLen::Two, &mut out),
            Err(CodecError::BadValue("cell body kind for command"))
        );
        let big = vec![0u8; VAR_BODY_LEN_MAX + 1];
        let too_long = RawCell {
            circ_id: None,
            cmd: ChanCmd::VPADDING,
            body: CellBody::Var(&big),
        };
        assert_eq!(
            too_long.encode(CircIdLen::Four, &mut out),
            Err(CodecError::TooLong {
                what: "variable-length cell body",
                len: VAR_BODY_LEN_MAX + 1
            })
        );
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn framing_never_panics_and_round_trips(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_decode(&data);
        }

        #[test]
        fn encode_then_decode_is_identity(
            circ in any::<u32>(),
            cmd in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..1024),
            four in any::<bool>(),
        ) {
            let circ_id_len = if four { CircIdLen::Four } else { CircIdLen::Two };
            let circ = if four { circ } else { circ & 0xffff };
            let cmd = ChanCmd(cmd);
            let mut fixed = [0u8; BODY_LEN];
            let n = body.len().min(BODY_LEN);
            fixed[..n].copy_from_slice(&body[..n]);
            let cell = RawCell {
                circ_id: CircId::new(circ),
                cmd,
                body: if cmd.is_var_len() { CellBody::Var(&body) } else { CellBody::Fixed(&fixed) },
            };
            let mut out = Vec::new();
            cell.encode(circ_id_len, &mut out).expect("encodes");
            let (back, used) = RawCell::decode(&out, circ_id_len).expect("whole cell");
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(back, cell);
        }
    }
}
