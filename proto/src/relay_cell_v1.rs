//! The "v1" relay cell layout that goes with Counter Galois Onion (CGO) relay crypto, and the
//! per-hop choice between it and tor1's "v0" layout ([`crate::relay_cell`]).
//!
//! Spec: proposal 359 ("Counter Galois Onion", section "Relay cell format", which adopts a
//! reduced form of proposal 340's message format),
//! <https://spec.torproject.org/proposals/359-cgo-redux.html>; the layout below is what C tor
//! 0.4.9 writes and reads (`relay_msg.c`), which is the wire that counts.
//!
//! ```text
//!   Tag             [16 bytes]  owned by the CGO layer (the nonce/tag T)
//!   Relay command   [1 byte]
//!   Length          [2 bytes]
//!   StreamID        [2 bytes]   only for commands that carry one (see below)
//!   Data            [Length bytes]
//!   Padding         [the rest]  four zero bytes, then random bytes
//! ```
//!
//! Unlike v0 there is no 'Recognized' nor digest field: CGO recognizes a cell by its tag. Only
//! BEGIN, BEGIN_DIR, CONNECTED, DATA, END, RESOLVE, RESOLVED, XOFF and XON carry a stream id
//! ([`carries_stream_id`]); every other command (SENDME included) is circuit-level and its data
//! starts right after the length.
//!
//! Proposal 340's packing of several messages into one cell and fragmenting one message over
//! several cells are not part of what C tor 0.4.9 sends or accepts: every v1 cell carries
//! exactly one whole message, and so does chive. Unlike v0, a recognized v1 cell with an
//! unknown command is an error (C tor closes the circuit), so [`RelayCellV1View::new`] refuses
//! it.

use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::ids::StreamId;
use crate::relay_cell::{RelayCellError, RelayCellView, RelayCmd, RELAY_BODY_LEN};

/// Bytes at the start of a v1 body that belong to the CGO tag.
pub const TAG_LEN: usize = 16;
/// Offset of the relay command.
pub const CMD_OFFSET: usize = TAG_LEN;
/// Offset of the two-byte Length field.
pub const LENGTH_OFFSET: usize = CMD_OFFSET + 1;
/// Offset of the stream id, for commands that carry one.
pub const STREAM_ID_OFFSET: usize = LENGTH_OFFSET + 2;
/// Header length (tag included) of a circuit-level message.
pub const HEADER_LEN_NO_STREAM: usize = STREAM_ID_OFFSET;
/// Header length (tag included) of a stream-level message.
pub const HEADER_LEN_WITH_STREAM: usize = STREAM_ID_OFFSET + 2;
/// Most data bytes in a circuit-level v1 cell.
pub const DATA_MAX_NO_STREAM: usize = RELAY_BODY_LEN - HEADER_LEN_NO_STREAM;
/// Most data bytes in a stream-level v1 cell (DATA carries at most this much).
pub const DATA_MAX_WITH_STREAM: usize = RELAY_BODY_LEN - HEADER_LEN_WITH_STREAM;
/// Zero bytes that start the padding, as for v0.
const PADDING_ZERO_PREFIX: usize = 4;

const _: () = assert!(DATA_MAX_NO_STREAM == 490);
const _: () = assert!(DATA_MAX_WITH_STREAM == 488);

/// Whether `cmd` carries a stream id in the v1 layout.
pub fn carries_stream_id(cmd: RelayCmd) -> bool {
    matches!(
        cmd,
        RelayCmd::BEGIN
            | RelayCmd::BEGIN_DIR
            | RelayCmd::CONNECTED
            | RelayCmd::DATA
            | RelayCmd::END
            | RelayCmd::RESOLVE
            | RelayCmd::RESOLVED
            | RelayCmd::XOFF
            | RelayCmd::XON
    )
}

/// Most data bytes a v1 cell with `cmd` can carry.
pub fn data_max(cmd: RelayCmd) -> usize {
    if carries_stream_id(cmd) {
        DATA_MAX_WITH_STREAM
    } else {
        DATA_MAX_NO_STREAM
    }
}

/// A v1 relay cell that cannot be read or built. The decoding variants are the sender's
/// protocol violation (close the circuit); [`RelayCellV1Error::DataTooLong`] and
/// [`RelayCellV1Error::StreamIdMismatch`] are a caller's misuse of [`build_relay_cell_v1`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RelayCellV1Error {
    /// The command is not one this implementation knows; v1 does not let it pass.
    #[error("unknown relay command {0} in a v1 cell")]
    UnknownCommand(RelayCmd),
    /// The Length field points past the end of the body.
    #[error("v1 relay cell length {len} exceeds {max} for {cmd}")]
    LengthTooLarge {
        /// The command.
        cmd: RelayCmd,
        /// The Length field.
        len: u16,
        /// The most that fits for this command.
        max: usize,
    },
    /// A stream-level command came with stream id 0.
    #[error("relay command {0} needs a nonzero stream id")]
    StreamIdRequired(RelayCmd),
    /// Asked to build a cell with more data than fits.
    #[error("{len} bytes of relay data do not fit in one v1 cell for {cmd}")]
    DataTooLong {
        /// The command.
        cmd: RelayCmd,
        /// The data length asked for.
        len: usize,
    },
    /// Asked to build a cell whose stream id does not match the command's layout (a stream
    /// for a circuit-level command, or none for a stream-level one).
    #[error("relay command {0} cannot be built with that stream id")]
    StreamIdMismatch(RelayCmd),
}

/// A borrowed view of a decrypted v1 relay cell body. Construction checks the command and
/// the Length field, so the accessors cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct RelayCellV1View<'a> {
    body: &'a [u8; RELAY_BODY_LEN],
    cmd: RelayCmd,
    stream_id: Option<StreamId>,
    data: &'a [u8],
}

impl<'a> RelayCellV1View<'a> {
    /// Views `body` as C tor 0.4.9 decodes it: an unknown command or a Length past the end is
    /// refused. A stream-level command with stream id 0 is accepted here and reported by
    /// [`RelayCellV1View::check_stream_id`].
    pub fn new(body: &'a [u8; RELAY_BODY_LEN]) -> Result<Self, RelayCellV1Error> {
        let cmd = RelayCmd(body[CMD_OFFSET]);
        if cmd.name().is_none() {
            return Err(RelayCellV1Error::UnknownCommand(cmd));
        }
        let len = u16::from_be_bytes([body[LENGTH_OFFSET], body[LENGTH_OFFSET + 1]]);
        let (stream_id, start) = if carries_stream_id(cmd) {
            let sid = u16::from_be_bytes([body[STREAM_ID_OFFSET], body[STREAM_ID_OFFSET + 1]]);
            (StreamId::new(sid), HEADER_LEN_WITH_STREAM)
        } else {
            (None, HEADER_LEN_NO_STREAM)
        };
        let max = RELAY_BODY_LEN - start;
        let data = body
            .get(start..start + usize::from(len))
            .ok_or(RelayCellV1Error::LengthTooLarge { cmd, len, max })?;
        Ok(RelayCellV1View {
            body,
            cmd,
            stream_id,
            data,
        })
    }

    /// The relay command (always a known one).
    pub fn cmd(&self) -> RelayCmd {
        self.cmd
    }

    /// The stream id; `None` for circuit-level commands and for a zero stream id.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.stream_id
    }

    /// The data, without padding.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The tag area (what the CGO layer left there).
    pub fn tag(&self) -> &'a [u8] {
        let body: &'a [u8; RELAY_BODY_LEN] = self.body;
        &body[..TAG_LEN]
    }

    /// The stream-id rule of v1: commands that carry a stream id need a nonzero one. (Commands
    /// that do not carry one cannot have one, so nothing else can go wrong.)
    pub fn check_stream_id(&self) -> Result<(), RelayCellV1Error> {
        if carries_stream_id(self.cmd) && self.stream_id.is_none() {
            return Err(RelayCellV1Error::StreamIdRequired(self.cmd));
        }
        Ok(())
    }
}

/// Writes a v1 relay cell into `out`: the tag area zeroed (the CGO layer fills it), command,
/// length, the stream id if `cmd` carries one, `data`, then padding (four zero bytes, then
/// random bytes from `rng`). `stream_id` must be `Some` exactly when [`carries_stream_id`].
pub fn build_relay_cell_v1(
    out: &mut [u8; RELAY_BODY_LEN],
    cmd: RelayCmd,
    stream_id: Option<StreamId>,
    data: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<(), RelayCellV1Error> {
    let with_stream = carries_stream_id(cmd);
    if with_stream != stream_id.is_some() {
        return Err(RelayCellV1Error::StreamIdMismatch(cmd));
    }
    let start = if with_stream {
        HEADER_LEN_WITH_STREAM
    } else {
        HEADER_LEN_NO_STREAM
    };
    let len = u16::try_from(data.len())
        .ok()
        .filter(|&l| usize::from(l) <= RELAY_BODY_LEN - start)
        .ok_or(RelayCellV1Error::DataTooLong {
            cmd,
            len: data.len(),
        })?;
    let (header, rest) = out.split_at_mut(start);
    header[..TAG_LEN].fill(0);
    header[CMD_OFFSET] = cmd.0;
    header[LENGTH_OFFSET..STREAM_ID_OFFSET].copy_from_slice(&len.to_be_bytes());
    if let Some(sid) = stream_id {
        header[STREAM_ID_OFFSET..].copy_from_slice(&sid.get().to_be_bytes());
    }
    let (body, padding) = rest.split_at_mut(data.len());
    body.copy_from_slice(data);
    let zeros = padding.len().min(PADDING_ZERO_PREFIX);
    let (zero_part, random_part) = padding.split_at_mut(zeros);
    zero_part.fill(0);
    rng.fill_bytes(random_part);
    Ok(())
}

/// Which relay cell layout a hop uses; fixed by the handshake that created the hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RelayCellFormat {
    /// tor1's layout ([`crate::relay_cell`]), with tor1 crypto.
    #[default]
    V0,
    /// This module's layout, with CGO crypto (negotiated as `Relay=6`).
    V1,
}

/// A relay cell of either format that breaks its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RelayFormatError {
    /// A v0 cell's error.
    #[error(transparent)]
    V0(#[from] RelayCellError),
    /// A v1 cell's error.
    #[error(transparent)]
    V1(#[from] RelayCellV1Error),
}

/// A decoded relay message of either format, borrowed from its cell body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyRelayCell<'a> {
    /// The relay command.
    pub cmd: RelayCmd,
    /// The stream id, `None` for circuit-level.
    pub stream_id: Option<StreamId>,
    /// The data.
    pub data: &'a [u8],
}

impl RelayCellFormat {
    /// Decodes a recognized body in this format and checks the format's stream-id rules.
    pub fn decode(self, body: &[u8; RELAY_BODY_LEN]) -> Result<AnyRelayCell<'_>, RelayFormatError> {
        match self {
            RelayCellFormat::V0 => {
                let v = RelayCellView::new(body)?;
                v.check_stream_id()?;
                Ok(AnyRelayCell {
                    cmd: v.cmd(),
                    stream_id: v.stream_id(),
                    data: v.data(),
                })
            }
            RelayCellFormat::V1 => {
                let v = RelayCellV1View::new(body)?;
                v.check_stream_id()?;
                Ok(AnyRelayCell {
                    cmd: v.cmd(),
                    stream_id: v.stream_id(),
                    data: v.data(),
                })
            }
        }
    }

    /// Builds a body in this format (see [`crate::relay_cell::build_relay_cell`] and
    /// [`build_relay_cell_v1`]). For v1, a stream id given to a command that carries none is
    /// refused.
    pub fn build(
        self,
        out: &mut [u8; RELAY_BODY_LEN],
        cmd: RelayCmd,
        stream_id: Option<StreamId>,
        data: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), RelayFormatError> {
        match self {
            RelayCellFormat::V0 => {
                crate::relay_cell::build_relay_cell(out, cmd, stream_id, data, rng)?
            }
            RelayCellFormat::V1 => build_relay_cell_v1(out, cmd, stream_id, data, rng)?,
        }
        Ok(())
    }

    /// Most data bytes a cell with `cmd` can carry in this format.
    pub fn data_max(self, cmd: RelayCmd) -> usize {
        match self {
            RelayCellFormat::V0 => crate::relay_cell::RELAY_DATA_MAX_V0,
            RelayCellFormat::V1 => data_max(cmd),
        }
    }
}

/// Fuzz entry point: `data` (cut or zero-padded to a body) is decoded as a v1 cell; whatever
/// decodes must rebuild to a body that decodes to the same message.
pub fn fuzz_decode(data: &[u8]) {
    let mut body = [0u8; RELAY_BODY_LEN];
    let n = data.len().min(RELAY_BODY_LEN);
    body[..n].copy_from_slice(&data[..n]);
    let Ok(v) = RelayCellV1View::new(&body) else {
        return;
    };
    let _ = v.check_stream_id();
    let mut again = [0u8; RELAY_BODY_LEN];
    let mut rng = crate::fuzzing::FuzzRng(1);
    let sid = if carries_stream_id(v.cmd()) {
        // A zero stream id cannot be built; build with 1 and compare the rest.
        v.stream_id().or(StreamId::new(1))
    } else {
        None
    };
    assert!(
        build_relay_cell_v1(&mut again, v.cmd(), sid, v.data(), &mut rng).is_ok(),
        "a decoded v1 cell rebuilds"
    );
    let w = RelayCellV1View::new(&again);
    assert!(
        matches!(w, Ok(w) if w.cmd() == v.cmd() && w.data() == v.data()),
        "a rebuilt v1 cell decodes the same"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(9)
    }

    #[test]
    fn layout_with_stream_id() {
        let mut body = [0xeeu8; RELAY_BODY_LEN];
        let sid = StreamId::new(0x1234);
        build_relay_cell_v1(&mut body, RelayCmd::DATA, sid, b"hi!", &mut rng()).unwrap();
        assert_eq!(&body[..16], &[0u8; 16]);
        assert_eq!(&body[16..24], &[2, 0, 3, 0x12, 0x34, b'h', b'i', b'!']);
        assert_eq!(&body[24..28], &[0, 0, 0, 0]);
        assert!(body[28..].iter().any(|&b| b != 0xee));
        let v = RelayCellV1View::new(&body).unwrap();
        assert_eq!(v.cmd(), RelayCmd::DATA);
        assert_eq!(v.stream_id(), sid);
        assert_eq!(v.data(), b"hi!");
        assert_eq!(v.tag(), &[0u8; 16]);
        assert_eq!(v.check_stream_id(), Ok(()));
    }

    #[test]
    fn layout_without_stream_id() {
        let mut body = [0u8; RELAY_BODY_LEN];
        build_relay_cell_v1(&mut body, RelayCmd::SENDME, None, &[1, 2], &mut rng()).unwrap();
        // SENDME carries no stream id in v1: data right after the length.
        assert_eq!(&body[16..21], &[5, 0, 2, 1, 2]);
        let v = RelayCellV1View::new(&body).unwrap();
        assert_eq!(
            (v.cmd(), v.stream_id(), v.data()),
            (RelayCmd::SENDME, None, &[1u8, 2][..])
        );
    }

    #[test]
    fn maximal_data_and_one_more() {
        for (cmd, sid, max) in [
            (RelayCmd::DATA, StreamId::new(1), DATA_MAX_WITH_STREAM),
            (RelayCmd::DROP, None, DATA_MAX_NO_STREAM),
        ] {
            let mut body = [0u8; RELAY_BODY_LEN];
            let data = vec![0x5a; max];
            build_relay_cell_v1(&mut body, cmd, sid, &data, &mut rng()).unwrap();
            assert_eq!(RelayCellV1View::new(&body).unwrap().data(), &data[..]);
            let data = vec![0x5a; max + 1];
            assert_eq!(
                build_relay_cell_v1(&mut body, cmd, sid, &data, &mut rng()),
                Err(RelayCellV1Error::DataTooLong { cmd, len: max + 1 })
            );
            // A length field one past the end is refused on decode.
            let len = u16::try_from(max + 1).unwrap().to_be_bytes();
            body[LENGTH_OFFSET..LENGTH_OFFSET + 2].copy_from_slice(&len);
            assert!(matches!(
                RelayCellV1View::new(&body),
                Err(RelayCellV1Error::LengthTooLarge { .. })
            ));
        }
    }

    #[test]
    fn unknown_command_and_stream_rules() {
        let mut body = [0u8; RELAY_BODY_LEN];
        body[CMD_OFFSET] = 200;
        assert_eq!(
            RelayCellV1View::new(&body).unwrap_err(),
            RelayCellV1Error::UnknownCommand(RelayCmd(200))
        );
        body[CMD_OFFSET] = RelayCmd::DATA.0;
        let v = RelayCellV1View::new(&body).unwrap();
        assert_eq!(
            v.check_stream_id(),
            Err(RelayCellV1Error::StreamIdRequired(RelayCmd::DATA))
        );
        assert_eq!(
            build_relay_cell_v1(&mut body, RelayCmd::DATA, None, b"", &mut rng()),
            Err(RelayCellV1Error::StreamIdMismatch(RelayCmd::DATA))
        );
        assert_eq!(
            build_relay_cell_v1(&mut body, RelayCmd::DROP, StreamId::new(3), b"", &mut rng()),
            Err(RelayCellV1Error::StreamIdMismatch(RelayCmd::DROP))
        );
    }

    #[test]
    fn format_dispatch() {
        let mut body = [0u8; RELAY_BODY_LEN];
        for f in [RelayCellFormat::V0, RelayCellFormat::V1] {
            f.build(&mut body, RelayCmd::END, StreamId::new(7), &[6], &mut rng())
                .unwrap();
            let m = f.decode(&body).unwrap();
            assert_eq!(
                (m.cmd, m.stream_id, m.data),
                (RelayCmd::END, StreamId::new(7), &[6u8][..])
            );
        }
        assert_eq!(RelayCellFormat::V0.data_max(RelayCmd::DATA), 498);
        assert_eq!(RelayCellFormat::V1.data_max(RelayCmd::DATA), 488);
        assert_eq!(RelayCellFormat::V1.data_max(RelayCmd::EXTEND2), 490);
    }

    fn known_cmd() -> impl Strategy<Value = RelayCmd> {
        any::<u8>()
            .prop_map(RelayCmd)
            .prop_filter("known", |c| c.name().is_some())
    }

    proptest! {
        #[test]
        fn build_decode_roundtrip(
            cmd in known_cmd(),
            sid in 1u16..,
            data in proptest::collection::vec(any::<u8>(), 0..=DATA_MAX_NO_STREAM),
            seed in any::<u64>(),
        ) {
            let sid = carries_stream_id(cmd).then(|| StreamId::new(sid)).flatten();
            let mut body = [0u8; RELAY_BODY_LEN];
            let r = build_relay_cell_v1(
                &mut body, cmd, sid, &data, &mut StdRng::seed_from_u64(seed));
            if data.len() > data_max(cmd) {
                prop_assert!(r.is_err());
            } else {
                prop_assert!(r.is_ok());
                let v = RelayCellV1View::new(&body).unwrap();
                prop_assert_eq!(v.cmd(), cmd);
                prop_assert_eq!(v.stream_id(), sid);
                prop_assert_eq!(v.data(), &data[..]);
            }
        }

        #[test]
        fn any_body_decodes_or_errs(bytes in proptest::collection::vec(any::<u8>(), RELAY_BODY_LEN)) {
            let mut body = [0u8; RELAY_BODY_LEN];
            body.copy_from_slice(&bytes);
            if let Ok(v) = RelayCellV1View::new(&body) {
                let start = if carries_stream_id(v.cmd()) { 21 } else { 19 };
                prop_assert!(start + v.data().len() <= RELAY_BODY_LEN);
                prop_assert_eq!(v.data(), &body[start..start + v.data().len()]);
            }
        }
    }
}
