//! The tor1 ("v0") relay cell layout: the plaintext of a RELAY or RELAY_EARLY cell body once
//! every onion layer is off.
//!
//! Spec: tor-spec §6.1 ("Relay cells"),
//! <https://spec.torproject.org/tor-spec/relay-cells.html>.
//!
//! ```text
//!   Relay command   [1 byte]
//!   'Recognized'    [2 bytes]
//!   StreamID        [2 bytes]
//!   Digest          [4 bytes]
//!   Length          [2 bytes]
//!   Data            [Length bytes]
//!   Padding         [509 - 11 - Length bytes]
//! ```
//!
//! [`RelayCellView`] reads a decrypted body in place, without allocating; [`build_relay_cell`]
//! writes one into a caller-owned buffer with the digest field zeroed, for the crypto layer to
//! fill. Padding follows tor-spec §6.1 as written: four zero bytes after the data, then random
//! bytes to the end (fewer than four bytes of room are all zero).
//!
//! [`RelayCmd`] is an open newtype: unknown commands survive decoding so that a recognized cell
//! with an unknown command can be dropped after it has counted towards digests and windows, as
//! tor-spec §6.1 requires.

use std::fmt;

use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::ids::StreamId;

/// Length of a RELAY cell body (`PAYLOAD_LEN` in tor-spec §0.2).
pub const RELAY_BODY_LEN: usize = crate::cell::BODY_LEN;
/// Length of the tor1 relay header: command, recognized, stream id, digest, length.
pub const RELAY_HEADER_LEN_V0: usize = 11;
/// Most data bytes a tor1 relay cell can carry.
pub const RELAY_DATA_MAX_V0: usize = 498;

/// Offset of the two 'Recognized' bytes in the body.
pub const RECOGNIZED_OFFSET: usize = 1;
/// Offset of the four digest bytes in the body; the crypto layer writes and checks them there.
pub const DIGEST_OFFSET: usize = 5;
/// Length of the digest field.
pub const DIGEST_LEN: usize = 4;

const STREAM_ID_OFFSET: usize = 3;
const LENGTH_OFFSET: usize = 9;
/// Zero bytes that start the padding (tor-spec §6.1; why the rest is random: proposal 289 §3.3).
const PADDING_ZERO_PREFIX: usize = 4;

const _: () = assert!(RELAY_HEADER_LEN_V0 == 1 + 2 + 2 + DIGEST_LEN + 2);
const _: () = assert!(RELAY_DATA_MAX_V0 == RELAY_BODY_LEN - RELAY_HEADER_LEN_V0);
const _: () = assert!(DIGEST_OFFSET + DIGEST_LEN == LENGTH_OFFSET);
const _: () = assert!(LENGTH_OFFSET + 2 == RELAY_HEADER_LEN_V0);
const _: () = assert!(RELAY_DATA_MAX_V0 <= u16::MAX as usize);

/// A relay command (tor-spec §6.1). Open: any byte is a `RelayCmd`, named or not.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayCmd(pub u8);

/// Which stream ids a relay command may carry (tor-spec §6.1, "\[control\]" cells; §7.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamIdRule {
    /// Stream-level: the stream id must be nonzero.
    NonZero,
    /// Circuit-level ("\[control\]"): the stream id must be zero.
    Zero,
    /// Either: SENDME (circuit- or stream-level), and commands we do not know.
    Any,
}

/// Which way a relay command may travel, relative to the circuit's originator (tor-spec §6.1).
///
/// On a rendezvous circuit the onion service is the originator of its own half, so stream
/// commands from the client arrive at the service travelling backward; callers apply this
/// only where one party originated the whole circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Only from the originator ("forward").
    Forward,
    /// Only towards the originator ("backward").
    Backward,
    /// Either way, and commands we do not know.
    Either,
}

macro_rules! relay_cmds {
    ($( $(#[$doc:meta])* $name:ident = $val:expr, $rule:ident, $dir:ident; )*) => {
        impl RelayCmd {
            $( $(#[$doc])* pub const $name: RelayCmd = RelayCmd($val); )*

            /// The spec's name for this command, without the `RELAY_` prefix, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( RelayCmd::$name => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// Whether this command is stream-level, circuit-level or either.
            pub fn stream_id_rule(self) -> StreamIdRule {
                match self {
                    $( RelayCmd::$name => StreamIdRule::$rule, )*
                    _ => StreamIdRule::Any,
                }
            }

            /// Which way this command may travel.
            pub fn direction(self) -> Direction {
                match self {
                    $( RelayCmd::$name => Direction::$dir, )*
                    _ => Direction::Either,
                }
            }
        }
    };
}

relay_cmds! {
    /// Open a stream to an exit or onion service (forward).
BEGIN = 1, NonZero, Forward;
    /// Stream data (either direction).
DATA = 2, NonZero, Either;
    /// Close a stream (either direction).
END = 3, NonZero, Either;
    /// A BEGIN or BEGIN_DIR succeeded (backward).
CONNECTED = 4, NonZero, Backward;
    /// Flow-control acknowledgement; circuit-level with stream 0, stream-level otherwise.
SENDME = 5, Any, Either;
    /// Legacy TAP extend (forward); chive treats it as unrecognized.
EXTEND = 6, Zero, Forward;
    /// Legacy TAP extended (backward); chive treats it as unrecognized.
EXTENDED = 7, Zero, Backward;
    /// Tear down the circuit after this hop (forward).
TRUNCATE = 8, Zero, Forward;
    /// The circuit was truncated after the sending hop (backward).
TRUNCATED = 9, Zero, Backward;
    /// Long-range padding, dropped by its recipient (either direction).
DROP = 10, Zero, Either;
    /// Resolve a hostname without opening a stream (forward).
RESOLVE = 11, NonZero, Forward;
    /// Answers to a RESOLVE (backward).
RESOLVED = 12, NonZero, Backward;
    /// Open a stream to the relay's directory service (forward).
BEGIN_DIR = 13, NonZero, Forward;
    /// Extend the circuit by one hop (forward).
EXTEND2 = 14, Zero, Forward;
    /// The circuit was extended (backward).
EXTENDED2 = 15, Zero, Backward;
    /// Conflux: link this circuit into a set (proposal 329).
CONFLUX_LINK = 19, Zero, Forward;
    /// Conflux: the exit accepted a LINK (proposal 329).
CONFLUX_LINKED = 20, Zero, Backward;
    /// Conflux: the client acknowledges LINKED (proposal 329).
CONFLUX_LINKED_ACK = 21, Zero, Forward;
    /// Conflux: switch sending to this leg (proposal 329).
CONFLUX_SWITCH = 22, Zero, Either;
    /// Onion service asks a relay to be an introduction point (rend-spec-v3 §3.1).
ESTABLISH_INTRO = 32, Zero, Forward;
    /// Client asks a relay to be a rendezvous point (rend-spec-v3 §3.4).
ESTABLISH_RENDEZVOUS = 33, Zero, Forward;
    /// Client's introduction request to an introduction point (rend-spec-v3 §3.2).
INTRODUCE1 = 34, Zero, Forward;
    /// Introduction point forwards INTRODUCE1 to the service (rend-spec-v3 §3.2).
INTRODUCE2 = 35, Zero, Backward;
    /// Service's reply, sent to the rendezvous point (rend-spec-v3 §3.4).
RENDEZVOUS1 = 36, Zero, Forward;
    /// Rendezvous point forwards RENDEZVOUS1 to the client (rend-spec-v3 §3.4).
RENDEZVOUS2 = 37, Zero, Backward;
    /// Introduction point accepted ESTABLISH_INTRO (rend-spec-v3 §3.1).
INTRO_ESTABLISHED = 38, Zero, Backward;
    /// Rendezvous point accepted ESTABLISH_RENDEZVOUS (rend-spec-v3 §3.4).
RENDEZVOUS_ESTABLISHED = 39, Zero, Backward;
    /// Introduction point's answer to INTRODUCE1 (rend-spec-v3 §3.2).
INTRODUCE_ACK = 40, Zero, Backward;
    /// Circuit padding machine negotiation (padding-spec §3).
PADDING_NEGOTIATE = 41, Zero, Forward;
    /// Answer to PADDING_NEGOTIATE (padding-spec §3).
PADDING_NEGOTIATED = 42, Zero, Backward;
    /// Congestion control: stop sending on this stream (proposal 324 §4).
    ///
    /// The tor-spec.txt table lists 43 as XON and 44 as XOFF; C tor and the current spec use
    /// 43 for XOFF and 44 for XON, and the wire is what counts.
XOFF = 43, NonZero, Either;
    /// Congestion control: resume sending on this stream, with an advisory rate (proposal 324).
XON = 44, NonZero, Either;
}

impl RelayCmd {
    /// Checks a cell's stream id against this command's [`StreamIdRule`].
    pub fn check_stream_id(self, stream_id: Option<StreamId>) -> Result<(), RelayCellError> {
        match (self.stream_id_rule(), stream_id) {
            (StreamIdRule::NonZero, None) => Err(RelayCellError::StreamIdRequired(self)),
            (StreamIdRule::Zero, Some(_)) => Err(RelayCellError::StreamIdForbidden(self)),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for RelayCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "UNKNOWN({})", self.0),
        }
    }
}

impl fmt::Debug for RelayCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayCmd({}={})", self.0, self)
    }
}

/// A relay cell that breaks the tor1 layout or the stream-id rules. Every variant is the
/// sender's protocol violation (DESTROY reason PROTOCOL), except [`RelayCellError::DataTooLong`]
/// which is a caller's misuse of [`build_relay_cell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RelayCellError {
    /// The Length field is larger than [`RELAY_DATA_MAX_V0`].
    #[error("relay cell length {0} exceeds 498")]
    LengthTooLarge(u16),
    /// A stream-level command came with stream id 0.
    #[error("relay command {0} needs a nonzero stream id")]
    StreamIdRequired(RelayCmd),
    /// A circuit-level command came with a nonzero stream id.
    #[error("relay command {0} must have stream id 0")]
    StreamIdForbidden(RelayCmd),
    /// Asked to build a cell with more data than fits.
    #[error("{0} bytes of relay data do not fit in one cell")]
    DataTooLong(usize),
}

/// A borrowed view of a decrypted tor1 relay cell body. Construction checks the Length field,
/// so [`RelayCellView::data`] cannot fail.
///
/// The view does not check the digest or 'Recognized' (the crypto layer does) nor the
/// stream-id rules (call [`RelayCellView::check_stream_id`] once the cell is known to be for
/// this hop).
#[derive(Debug, Clone, Copy)]
pub struct RelayCellView<'a> {
    body: &'a [u8; RELAY_BODY_LEN],
}

impl<'a> RelayCellView<'a> {
    /// Views `body`, rejecting a Length over [`RELAY_DATA_MAX_V0`].
    pub fn new(body: &'a [u8; RELAY_BODY_LEN]) -> Result<Self, RelayCellError> {
        let v = RelayCellView { body };
        let len = v.length_field();
        if usize::from(len) > RELAY_DATA_MAX_V0 {
            return Err(RelayCellError::LengthTooLarge(len));
        }
        Ok(v)
    }

    /// The relay command.
    pub fn cmd(&self) -> RelayCmd {
        RelayCmd(self.body[0])
    }

    /// The raw 'Recognized' field.
    pub fn recognized(&self) -> u16 {
        self.u16_at(RECOGNIZED_OFFSET)
    }

    /// Whether 'Recognized' is zero: the cell may be for this hop, pending the digest check.
    pub fn is_recognized_zero(&self) -> bool {
        self.recognized() == 0
    }

    /// The stream id, or `None` for a circuit-level cell.
    pub fn stream_id(&self) -> Option<StreamId> {
        StreamId::new(self.u16_at(STREAM_ID_OFFSET))
    }

    /// The four digest bytes.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        let [_, _, _, _, _, a, b, c, d, ..] = *self.body;
        [a, b, c, d]
    }

    /// The Length field (at most [`RELAY_DATA_MAX_V0`]).
    pub fn length(&self) -> usize {
        usize::from(self.length_field())
    }

    /// The data: the relay message body, without padding.
    pub fn data(&self) -> &'a [u8] {
        let body: &'a [u8; RELAY_BODY_LEN] = self.body;
        let data = &body[RELAY_HEADER_LEN_V0..];
        data.get(..self.length()).unwrap_or(data)
    }

    /// The whole 509-byte body, as the digest is computed over it.
    pub fn body(&self) -> &'a [u8; RELAY_BODY_LEN] {
        self.body
    }

    /// Checks the stream id against the command's rule (tor-spec §6.1).
    pub fn check_stream_id(&self) -> Result<(), RelayCellError> {
        self.cmd().check_stream_id(self.stream_id())
    }

    fn length_field(&self) -> u16 {
        self.u16_at(LENGTH_OFFSET)
    }

    fn u16_at(&self, off: usize) -> u16 {
        let b = self.body;
        // Offsets are private constants well inside the fixed-size body.
        u16::from_be_bytes([b[off], b[off + 1]])
    }
}

/// Writes a tor1 relay cell into `out`: the header with 'Recognized' and the digest zeroed,
/// `data`, then padding (four zero bytes, then random bytes from `rng`).
///
/// The stream-id rules are not checked here, so tests and the padding machinery can build
/// any cell; senders call [`RelayCmd::check_stream_id`] first where they need to.
pub fn build_relay_cell(
    out: &mut [u8; RELAY_BODY_LEN],
    cmd: RelayCmd,
    stream_id: Option<StreamId>,
    data: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<(), RelayCellError> {
    let len = u16::try_from(data.len())
        .ok()
        .filter(|&l| usize::from(l) <= RELAY_DATA_MAX_V0)
        .ok_or(RelayCellError::DataTooLong(data.len()))?;
    let (header, rest) = out.split_at_mut(RELAY_HEADER_LEN_V0);
    header[0] = cmd.0;
    header[RECOGNIZED_OFFSET..STREAM_ID_OFFSET].fill(0);
    header[STREAM_ID_OFFSET..DIGEST_OFFSET]
        .copy_from_slice(&stream_id.map_or(0, StreamId::get).to_be_bytes());
    header[DIGEST_OFFSET..LENGTH_OFFSET].fill(0);
    header[LENGTH_OFFSET..].copy_from_slice(&len.to_be_bytes());
    let (body, padding) = rest.split_at_mut(data.len());
    body.copy_from_slice(data);
    let zeros = padding.len().min(PADDING_ZERO_PREFIX);
    let (zero_part, random_part) = padding.split_at_mut(zeros);
    zero_part.fill(0);
    rng.fill_bytes(random_part);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn build_then_view() {
        let mut body = [0xeeu8; RELAY_BODY_LEN];
        let sid = StreamId::new(0x1234);
        build_relay_cell(&mut body, RelayCmd::DATA, sid, b"hello", &mut rng()).expect("fits");
        assert_eq!(
            &body[..16],
            &[2, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']
        );
        // Four zero bytes of padding follow the data; the rest is random.
        assert_eq!(&body[16..20], &[0, 0, 0, 0]);
        assert!(body[20..].iter().any(|&b| b != 0));
        assert!(body[20..].iter().any(|&b| b != 0xee));

        let v = RelayCellView::new(&body).expect("valid");
        assert_eq!(v.cmd(), RelayCmd::DATA);
        assert!(v.is_recognized_zero());
        assert_eq!(v.recognized(), 0);
        assert_eq!(v.stream_id(), sid);
        assert_eq!(v.digest(), [0; 4]);
        assert_eq!(v.length(), 5);
        assert_eq!(v.data(), b"hello");
        assert_eq!(v.check_stream_id(), Ok(()));
        assert_eq!(v.body(), &body);
    }

    #[test]
    fn view_reads_digest_and_recognized() {
        let mut body = [0u8; RELAY_BODY_LEN];
        body[..11].copy_from_slice(&[14, 0xab, 0xcd, 0, 0, 1, 2, 3, 4, 0, 0]);
        let v = RelayCellView::new(&body).expect("valid");
        assert_eq!(v.cmd(), RelayCmd::EXTEND2);
        assert_eq!(v.recognized(), 0xabcd);
        assert!(!v.is_recognized_zero());
        assert_eq!(v.stream_id(), None);
        assert_eq!(v.digest(), [1, 2, 3, 4]);
        assert_eq!(v.data(), b"");
    }

    #[test]
    fn padding_when_little_room() {
        let data = [0x55u8; RELAY_DATA_MAX_V0 - 2];
        let mut body = [0xeeu8; RELAY_BODY_LEN];
        build_relay_cell(
            &mut body,
            RelayCmd::DATA,
            StreamId::new(1),
            &data,
            &mut rng(),
        )
        .expect("fits");
        assert_eq!(&body[RELAY_BODY_LEN - 2..], &[0, 0]);

        let data = [0x55u8; RELAY_DATA_MAX_V0];
        build_relay_cell(
            &mut body,
            RelayCmd::DATA,
            StreamId::new(1),
            &data,
            &mut rng(),
        )
        .expect("fits exactly");
        let v = RelayCellView::new(&body).expect("valid");
        assert_eq!(v.data(), &data[..]);
    }

    #[test]
    fn length_over_498_is_rejected() {
        let mut body = [0u8; RELAY_BODY_LEN];
        body[0] = 2;
        body[9..11].copy_from_slice(&499u16.to_be_bytes());
        assert_eq!(
            RelayCellView::new(&body).map(|_| ()),
            Err(RelayCellError::LengthTooLarge(499))
        );
        body[9..11].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(
            RelayCellView::new(&body).map(|_| ()),
            Err(RelayCellError::LengthTooLarge(0xffff))
        );
        body[9..11].copy_from_slice(&498u16.to_be_bytes());
        assert!(RelayCellView::new(&body).is_ok());

        let too_much = [0u8; RELAY_DATA_MAX_V0 + 1];
        assert_eq!(
            build_relay_cell(&mut body, RelayCmd::DATA, None, &too_much, &mut rng()),
            Err(RelayCellError::DataTooLong(499))
        );
    }

    #[test]
    fn stream_id_rules() {
        let s = StreamId::new(9);
        for cmd in [
            RelayCmd::BEGIN,
            RelayCmd::DATA,
            RelayCmd::END,
            RelayCmd::CONNECTED,
            RelayCmd::RESOLVE,
            RelayCmd::RESOLVED,
            RelayCmd::BEGIN_DIR,
            RelayCmd::XON,
            RelayCmd::XOFF,
        ] {
            assert_eq!(cmd.stream_id_rule(), StreamIdRule::NonZero, "{cmd}");
            assert_eq!(cmd.check_stream_id(s), Ok(()));
            assert_eq!(
                cmd.check_stream_id(None),
                Err(RelayCellError::StreamIdRequired(cmd))
            );
        }
        for cmd in [
            RelayCmd::EXTEND,
            RelayCmd::EXTENDED,
            RelayCmd::TRUNCATE,
            RelayCmd::TRUNCATED,
            RelayCmd::DROP,
            RelayCmd::EXTEND2,
            RelayCmd::EXTENDED2,
            RelayCmd::CONFLUX_LINK,
            RelayCmd::CONFLUX_SWITCH,
            RelayCmd::ESTABLISH_INTRO,
            RelayCmd::INTRODUCE_ACK,
            RelayCmd::PADDING_NEGOTIATE,
            RelayCmd::PADDING_NEGOTIATED,
        ] {
            assert_eq!(cmd.stream_id_rule(), StreamIdRule::Zero, "{cmd}");
            assert_eq!(cmd.check_stream_id(None), Ok(()));
            assert_eq!(
                cmd.check_stream_id(s),
                Err(RelayCellError::StreamIdForbidden(cmd))
            );
        }
        for cmd in [RelayCmd::SENDME, RelayCmd(16), RelayCmd(200)] {
            assert_eq!(cmd.stream_id_rule(), StreamIdRule::Any);
            assert_eq!(cmd.check_stream_id(None), Ok(()));
            assert_eq!(cmd.check_stream_id(s), Ok(()));
        }

        let mut body = [0u8; RELAY_BODY_LEN];
        build_relay_cell(&mut body, RelayCmd::BEGIN, None, b"", &mut rng()).expect("fits");
        let v = RelayCellView::new(&body).expect("valid");
        assert_eq!(
            v.check_stream_id(),
            Err(RelayCellError::StreamIdRequired(RelayCmd::BEGIN))
        );
    }

    #[test]
    fn directions() {
        use Direction::*;
        for (cmd, d) in [
            (RelayCmd::BEGIN, Forward),
            (RelayCmd::DATA, Either),
            (RelayCmd::CONNECTED, Backward),
            (RelayCmd::EXTEND2, Forward),
            (RelayCmd::EXTENDED2, Backward),
            (RelayCmd::TRUNCATE, Forward),
            (RelayCmd::TRUNCATED, Backward),
            (RelayCmd::RESOLVED, Backward),
            (RelayCmd::INTRODUCE1, Forward),
            (RelayCmd::INTRODUCE2, Backward),
            (RelayCmd::XON, Either),
            (RelayCmd(99), Either),
        ] {
            assert_eq!(cmd.direction(), d, "{cmd}");
        }
    }

    #[test]
    fn command_numbers_and_names() {
        let expect: &[(u8, &str)] = &[
            (1, "BEGIN"),
            (2, "DATA"),
            (3, "END"),
            (4, "CONNECTED"),
            (5, "SENDME"),
            (6, "EXTEND"),
            (7, "EXTENDED"),
            (8, "TRUNCATE"),
            (9, "TRUNCATED"),
            (10, "DROP"),
            (11, "RESOLVE"),
            (12, "RESOLVED"),
            (13, "BEGIN_DIR"),
            (14, "EXTEND2"),
            (15, "EXTENDED2"),
            (19, "CONFLUX_LINK"),
            (20, "CONFLUX_LINKED"),
            (21, "CONFLUX_LINKED_ACK"),
            (22, "CONFLUX_SWITCH"),
            (32, "ESTABLISH_INTRO"),
            (33, "ESTABLISH_RENDEZVOUS"),
            (34, "INTRODUCE1"),
            (35, "INTRODUCE2"),
            (36, "RENDEZVOUS1"),
            (37, "RENDEZVOUS2"),
            (38, "INTRO_ESTABLISHED"),
            (39, "RENDEZVOUS_ESTABLISHED"),
            (40, "INTRODUCE_ACK"),
            (41, "PADDING_NEGOTIATE"),
            (42, "PADDING_NEGOTIATED"),
            (43, "XOFF"),
            (44, "XON"),
        ];
        for &(v, n) in expect {
            assert_eq!(RelayCmd(v).name(), Some(n));
            assert_eq!(RelayCmd(v).to_string(), n);
        }
        let named = (0..=255u8)
            .filter(|&v| RelayCmd(v).name().is_some())
            .count();
        assert_eq!(named, expect.len());
        assert_eq!(RelayCmd(99).to_string(), "UNKNOWN(99)");
        assert_eq!(format!("{:?}", RelayCmd::XON), "RelayCmd(44=XON)");
    }

    proptest! {
        #[test]
        fn view_never_panics(bytes in proptest::collection::vec(any::<u8>(), RELAY_BODY_LEN)) {
            let mut body = [0u8; RELAY_BODY_LEN];
            body.copy_from_slice(&bytes);
            if let Ok(v) = RelayCellView::new(&body) {
                let _ = (v.cmd(), v.recognized(), v.stream_id(), v.digest(), v.check_stream_id());
                prop_assert!(v.data().len() <= RELAY_DATA_MAX_V0);
                prop_assert_eq!(v.data().len(), v.length());
            } else {
                prop_assert!(u16::from_be_bytes([body[9], body[10]]) > 498);
            }
        }

        #[test]
        fn build_view_round_trip(
            cmd in any::<u8>(),
            sid in any::<u16>(),
            data in proptest::collection::vec(any::<u8>(), 0..=RELAY_DATA_MAX_V0),
            seed in any::<u64>(),
        ) {
            let mut body = [0u8; RELAY_BODY_LEN];
            let mut rng = StdRng::seed_from_u64(seed);
            build_relay_cell(&mut body, RelayCmd(cmd), StreamId::new(sid), &data, &mut rng)
                .expect("fits");
            let v = RelayCellView::new(&body).expect("valid");
            prop_assert_eq!(v.cmd(), RelayCmd(cmd));
            prop_assert_eq!(v.stream_id(), StreamId::new(sid));
            prop_assert!(v.is_recognized_zero());
            prop_assert_eq!(v.digest(), [0u8; 4]);
            prop_assert_eq!(v.data(), &data[..]);
            let pad = &body[RELAY_HEADER_LEN_V0 + data.len()..];
            prop_assert!(pad.iter().take(4).all(|&b| b == 0));
        }
    }
}
