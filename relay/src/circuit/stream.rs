//! Streams as a circuit's origin sees them, with fixed-window flow control (tor-spec §6
//! "Stream management", <https://spec.torproject.org/tor-spec/opening-streams.html>, §7
//! "Flow control", <https://spec.torproject.org/tor-spec/flow-control.html>, and proposal 289
//! "Authenticating SENDME cells") or congestion control (proposal 324 "RTT-based Congestion
//! Control for Tor", with proposal 344's XON/XOFF stream flow control).
//!
//! [`Streams`] holds the streams of one circuit to one hop (the exit): RELAY_BEGIN (§6.2),
//! CONNECTED, DATA cut to the most the hop's relay cell format carries, END with its reason
//! (§6.3), and both windows of §7:
//!
//! - per stream: 500 DATA cells each way, a stream SENDME (empty, version 0 as stream SENDMEs
//!   always are) every 50 cells delivered;
//! - per circuit: 1000 DATA cells each way, a circuit SENDME every 100 cells delivered. It is
//!   version 1: it carries the [`SendmeTag`] of the cell it acknowledges (the 100th DATA cell
//!   since the last SENDME); the hop's SENDMEs must carry the tags of our 100th, 200th, ...
//!   DATA cells, or the circuit is broken.
//!
//! # Congestion control
//!
//! A hop whose ntor v3 handshake negotiated congestion control (proposal 324 §10.3:
//! [`HandshakeKind::NtorV3Cc`](super::HandshakeKind::NtorV3Cc), the hop's CC_RESPONSE gives
//! `sendme_inc`; [`Streams::for_hop`] picks this mode) uses other rules, and only these work
//! with a CGO exit: the v1 relay cell format (proposal 359) gives SENDME no stream id, so
//! stream SENDMEs cannot be sent either way (sealing one fails with
//! [`ClientError::MessageTooLong`]; C tor 0.4.9 closes the circuit when its own would be due).
//!
//! - No stream windows and no stream SENDMEs either way (one from the hop breaks its stream).
//! - Circuit SENDMEs, still version 1 with the tag of the acknowledged cell, every
//!   `sendme_inc` DATA cells each way (DATA is all that counts, as in C tor); the hop may still
//!   have at most [`CIRC_WINDOW_START`] DATA cells unacknowledged by our SENDMEs (C tor's
//!   deliver window, kept in this mode). A SENDME with a wrong tag, or for cells never sent,
//!   breaks the circuit as above.
//! - We send at most a congestion window of DATA cells unacknowledged. It starts at
//!   [`CC_CWND_SENDMES`] × `sendme_inc` cells (C tor's `cc_cwnd_init` default of 124 for the
//!   default `sendme_inc` of 31) and follows TOR_VEGAS ([`Vegas`], proposal 324 §3.3) on the
//!   round trip of each circuit SENDME, timed with the clock the caller gives
//!   ([`Streams::set_now`]; without one the window stays at its start).
//! - Stream flow control is XON/XOFF (proposal 344; relay commands XOFF = 43, body: version 0;
//!   XON = 44, body: version 0 and a u32 drain rate in kB/s, 0 for no advice): an XOFF from the
//!   hop stops our DATA on that stream until its XON (whose rate is advisory and ignored). A
//!   malformed one breaks its stream. The caller reports the bytes it has read out of
//!   [`StreamEvent::Data`] with [`Streams::consumed`]; past [`XOFF_UNREAD`] bytes unread on a
//!   stream we send XOFF, at [`XON_UNREAD`] or less XON. Memory stays bounded even if the hop
//!   ignores our XOFF: while some stream has more than [`HOLD_UNREAD`] bytes unread, our circuit
//!   SENDMEs are held back, so the hop may send at most [`CIRC_WINDOW_START`] more DATA cells
//!   (the whole circuit waits for the caller to read).
//!
//! C tor 0.4.9 exits answer CC_REQUEST with `sendme_inc` 31, with CGO or tor1, and send XOFF
//! when their buffer towards the stream's server passes about 250 kB (`relay/tests/ctor_exit.rs`).
//!
//! The core is sans-io and crypto-free: [`Streams::poll_msg`] gives the next message to seal
//! ([`Streams::sent_tag`] takes the tag of the cell it became), [`Streams::handle_msg`] takes
//! a received one with its tag. [`Streams::poll_cell`] and [`Streams::handle_event`] do the
//! same through an [`OriginCircuit`].
//!
//! Input that breaks a stream's rules closes that stream only (an END with reason TORPROTOCOL
//! is queued, [`StreamError::StreamProtocol`]); input that breaks the circuit's windows or
//! SENDME authentication gives [`StreamError::CircuitProtocol`]: destroy the circuit.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use proto::ids::StreamId;
use proto::relay_cell::RelayCmd;
use proto::relay_cell_v1::RelayCellFormat;
use proto::relay_msg::{Begin, Connected, End, EndReason};
use rand_core::CryptoRngCore;
use thiserror::Error;

use super::client::{ClientError, ClientEvent, OriginCircuit, SendmeTag};
use super::vegas::{Vegas, VegasParams};
use super::CircCell;

/// DATA cells a circuit may send before a circuit SENDME (tor-spec §7.3).
pub const CIRC_WINDOW_START: u16 = 1000;
/// DATA cells a circuit SENDME acknowledges.
pub const CIRC_WINDOW_INCREMENT: u16 = 100;
/// DATA cells a stream may send before a stream SENDME (tor-spec §7.4).
pub const STREAM_WINDOW_START: u16 = 500;
/// DATA cells a stream SENDME acknowledges.
pub const STREAM_WINDOW_INCREMENT: u16 = 50;
/// Most open streams on one circuit.
pub const STREAMS_MAX: usize = 512;
/// Most bytes [`Streams::write`] buffers per stream.
pub const SEND_BUFFER_MAX: usize = 64 * 1024;
/// With congestion control, our initial congestion window in circuit SENDMEs: `cwnd` starts
/// at this times `sendme_inc` (C tor's `cc_cwnd_init` default is 4 × 31 = 124 cells).
pub const CC_CWND_SENDMES: u16 = 4;
/// With congestion control, bytes unread on a stream past which we send XOFF (C tor's
/// `cc_xoff_client` default is 500 cells, about 250 kB).
pub const XOFF_UNREAD: usize = 256 * 1024;
/// With congestion control, after our XOFF, bytes unread on the stream at or below which we
/// send XON.
pub const XON_UNREAD: usize = XOFF_UNREAD / 2;
/// With congestion control, bytes unread on some stream past which our circuit SENDMEs wait.
pub const HOLD_UNREAD: usize = 2 * XOFF_UNREAD;

/// How the hop broke the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Fault {
    /// More DATA than the window allowed.
    #[error("DATA beyond the window")]
    WindowExceeded,
    /// A SENDME that would open the window beyond its start.
    #[error("SENDME beyond the window")]
    SendmeOverflow,
    /// A circuit SENDME whose tag is not that of the cell it must acknowledge, or not v1.
    #[error("SENDME not authenticated")]
    BadSendmeTag,
    /// A message the stream did not expect in its state.
    #[error("unexpected {0}")]
    UnexpectedMsg(RelayCmd),
    /// A CONNECTED body that does not parse.
    #[error("malformed CONNECTED")]
    BadConnected,
    /// An XON or XOFF body that does not parse, or of an unknown version.
    #[error("malformed XON or XOFF")]
    BadFlowControl,
}

/// Why a [`Streams`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The hop broke a stream's rules: that stream is gone (END TORPROTOCOL queued), the
    /// circuit and its other streams go on.
    #[error("stream {stream} closed: {fault}")]
    StreamProtocol {
        /// The stream.
        stream: StreamId,
        /// What was wrong.
        fault: Fault,
    },
    /// The hop broke the circuit's flow control: destroy the circuit.
    #[error("circuit flow control: {0}")]
    CircuitProtocol(Fault),
    /// The circuit failed (sealing a cell).
    #[error(transparent)]
    Circuit(#[from] ClientError),
    /// No such open stream (never opened, ended, or closing).
    #[error("no stream {0}")]
    NoSuchStream(StreamId),
    /// [`STREAMS_MAX`] streams are open, or every stream id is in use.
    #[error("too many streams")]
    TooManyStreams,
}

/// Something that happened to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The hop opened the stream.
    Connected {
        /// The stream.
        stream: StreamId,
        /// The address it gave.
        connected: Connected,
    },
    /// Stream bytes.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The hop closed the stream (before CONNECTED: it refused it).
    Ended {
        /// The stream.
        stream: StreamId,
        /// Its END.
        end: End,
    },
    /// A SENDME opened a window (`None`: the circuit's): more may be sent.
    Sendme {
        /// The stream, or `None` for the circuit.
        stream: Option<StreamId>,
    },
    /// With congestion control: the hop sent XOFF, nothing more is sent on the stream until
    /// its XON.
    Xoff {
        /// The stream.
        stream: StreamId,
    },
    /// With congestion control: the hop sent XON, the stream may send again.
    Xon {
        /// The stream.
        stream: StreamId,
    },
    /// A stream message for a stream that is gone (it may cross our END): dropped, after its
    /// circuit-level accounting.
    Ignored,
    /// An event the stream layer does not handle (another hop, a circuit-level message, a
    /// handshake), given back.
    Other(ClientEvent),
}

/// A message to seal for the streams' hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMsg {
    /// Its stream, or `None` for a circuit SENDME.
    pub stream: Option<StreamId>,
    /// The relay command.
    pub cmd: RelayCmd,
    /// The body.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// BEGIN sent, no CONNECTED yet.
    Connecting,
    Open,
}

#[derive(Debug)]
struct Stream {
    state: State,
    package_window: u16,
    deliver_window: u16,
    out: VecDeque<u8>,
    /// Our END, sent once `out` is empty.
    end: Option<EndReason>,
    /// Stream SENDMEs queued, not yet sent.
    sendmes_queued: u16,
    /// Congestion control: the hop sent XOFF (and no XON since).
    xoff_recv: bool,
    /// Congestion control: we queued XOFF (and no XON since).
    xoff_sent: bool,
    /// Congestion control: bytes delivered, not yet [`Streams::consumed`].
    unread: usize,
}

/// The streams of one circuit to one hop, with the circuit's windows.
#[derive(Debug)]
pub struct Streams {
    hop: usize,
    data_max: usize,
    /// The hop's congestion control `sendme_inc`, or `None` for fixed windows.
    sendme_inc: Option<u8>,
    /// The package window's start and SENDME increment: [`CIRC_WINDOW_START`] and
    /// [`CIRC_WINDOW_INCREMENT`], or with congestion control the initial cwnd and `sendme_inc`.
    package_start: u16,
    package_inc: u16,
    /// DATA cells per circuit SENDME we send.
    deliver_inc: u16,
    next_id: u16,
    streams: BTreeMap<StreamId, Stream>,
    /// BEGIN, SENDME and protocol-violation END messages, sent before any DATA. Bounded: one
    /// BEGIN per stream, the windows bound the SENDMEs, one END per stream.
    control: VecDeque<OutMsg>,
    package_window: u16,
    /// Opens again as our SENDMEs are sent (not when queued): a caller that stops polling
    /// stops the hop.
    deliver_window: u16,
    /// Circuit SENDMEs queued, not yet sent.
    sendmes_queued: u16,
    data_sent: u64,
    /// The last polled message was a 100th DATA cell: its tag is owed.
    tag_owed: bool,
    /// Tags of our 100th, 200th, ... (with congestion control `sendme_inc`th, ...) DATA cells
    /// not yet acknowledged, with when they were sent if the caller gave a time: at most 10,
    /// or with congestion control the most the congestion window holds.
    awaiting: VecDeque<(SendmeTag, Option<Instant>)>,
    /// With congestion control, the congestion window.
    vegas: Option<Vegas>,
    /// The time of the calls being made ([`Streams::set_now`]).
    now: Option<Instant>,
    /// Round-robin position among streams with data.
    cursor: u16,
}

impl Streams {
    /// No streams yet, to hop `hop` whose cells have `format`, with fixed windows.
    pub fn new(hop: usize, format: RelayCellFormat) -> Self {
        Streams {
            hop,
            data_max: format.data_max(RelayCmd::DATA),
            sendme_inc: None,
            package_start: CIRC_WINDOW_START,
            package_inc: CIRC_WINDOW_INCREMENT,
            deliver_inc: CIRC_WINDOW_INCREMENT,
            next_id: 1,
            streams: BTreeMap::new(),
            control: VecDeque::new(),
            package_window: CIRC_WINDOW_START,
            deliver_window: CIRC_WINDOW_START,
            sendmes_queued: 0,
            data_sent: 0,
            tag_owed: false,
            awaiting: VecDeque::new(),
            vegas: None,
            now: None,
            cursor: 0,
        }
    }

    /// No streams yet, to hop `hop` whose cells have `format`, with congestion control of
    /// `sendme_inc` (the hop's CC_RESPONSE; 0 is taken as 1).
    pub fn with_cc(hop: usize, format: RelayCellFormat, sendme_inc: u8) -> Self {
        let inc = u16::from(sendme_inc.max(1));
        let vegas = Vegas::new(VegasParams::exit(sendme_inc));
        let cwnd = u16::try_from(vegas.window()).unwrap_or(u16::MAX);
        Streams {
            sendme_inc: Some(sendme_inc.max(1)),
            package_start: cwnd,
            package_inc: inc,
            deliver_inc: inc,
            package_window: cwnd,
            vegas: Some(vegas),
            ..Self::new(hop, format)
        }
    }

    /// No streams yet, to hop `hop` of `circ`: its relay cell format, and congestion control
    /// if its handshake negotiated it.
    pub fn for_hop(circ: &OriginCircuit, hop: usize) -> Result<Self, ClientError> {
        let format = circ.hop_format(hop).ok_or(ClientError::NoSuchHop(hop))?;
        Ok(match circ.hop_sendme_inc(hop) {
            Some(inc) => Self::with_cc(hop, format, inc),
            None => Self::new(hop, format),
        })
    }

    /// The congestion control `sendme_inc`, or `None` with fixed windows.
    pub fn sendme_inc(&self) -> Option<u8> {
        self.sendme_inc
    }

    /// Sets the time of the calls that follow. With congestion control, the round trip of each
    /// circuit SENDME (from sending the DATA cell it acknowledges to its arrival) drives the
    /// congestion window; a caller that never sets the time keeps the window at its start.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// With congestion control, the congestion window's state.
    pub fn vegas(&self) -> Option<&Vegas> {
        self.vegas.as_ref()
    }

    /// The streams' hop.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// The circuit's package and deliver windows (with congestion control, the package window
    /// is the congestion window less the DATA cells in flight).
    pub fn circ_windows(&self) -> (u16, u16) {
        (self.package_window, self.deliver_window)
    }

    /// A stream's package and deliver windows (with congestion control, which has none, they
    /// stay at their start), or `None` if the stream is gone.
    pub fn stream_windows(&self, stream: StreamId) -> Option<(u16, u16)> {
        self.streams
            .get(&stream)
            .map(|s| (s.package_window, s.deliver_window))
    }

    /// Bytes [`Streams::write`] took for `stream` that are not sent yet.
    pub fn buffered(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.out.len())
    }

    /// Bytes delivered on `stream` that the caller has not reported [`Streams::consumed`]
    /// (counted with congestion control only).
    pub fn unread(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.unread)
    }

    /// Reports that the caller has read `n` more bytes of `stream`'s delivered data: with
    /// congestion control, may queue XON (see the module doc). Unknown streams are ignored
    /// (data read after the stream ended).
    pub fn consumed(&mut self, stream: StreamId, n: usize) {
        if self.sendme_inc.is_none() {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.unread = s.unread.saturating_sub(n);
        if s.xoff_sent && s.unread <= XON_UNREAD {
            s.xoff_sent = false;
            // Version 0, no drain-rate advice.
            self.control.push_back(OutMsg {
                stream: Some(stream),
                cmd: RelayCmd::XON,
                data: vec![0; 5],
            });
        }
    }

    /// Opens a stream: queues its BEGIN.
    pub fn begin(&mut self, begin: &Begin) -> Result<StreamId, StreamError> {
        if self.streams.len() >= STREAMS_MAX {
            return Err(StreamError::TooManyStreams);
        }
        let mut data = Vec::new();
        begin
            .encode(&mut data)
            .map_err(|_| ClientError::MessageTooLong)?;
        // Fewer than 65535 streams are open, so a free id turns up.
        let id = loop {
            let id = StreamId::new(self.next_id).ok_or(StreamError::TooManyStreams)?;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.streams.contains_key(&id) {
                break id;
            }
        };
        self.streams.insert(
            id,
            Stream {
                state: State::Connecting,
                package_window: STREAM_WINDOW_START,
                deliver_window: STREAM_WINDOW_START,
                out: VecDeque::new(),
                end: None,
                sendmes_queued: 0,
                xoff_recv: false,
                xoff_sent: false,
                unread: 0,
            },
        );
        self.control.push_back(OutMsg {
            stream: Some(id),
            cmd: RelayCmd::BEGIN,
            data,
        });
        Ok(id)
    }

    /// Buffers bytes for `stream` (sent once it is connected): how many it took, at most
    /// [`SEND_BUFFER_MAX`] buffered.
    pub fn write(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let s = self.open_stream(stream)?;
        let n = data.len().min(SEND_BUFFER_MAX.saturating_sub(s.out.len()));
        s.out.extend(&data[..n]);
        Ok(n)
    }

    /// Closes `stream` with `reason`: its END follows the bytes still buffered.
    pub fn end(&mut self, stream: StreamId, reason: EndReason) -> Result<(), StreamError> {
        self.open_stream(stream)?.end = Some(reason);
        Ok(())
    }

    fn open_stream(&mut self, stream: StreamId) -> Result<&mut Stream, StreamError> {
        self.streams
            .get_mut(&stream)
            .filter(|s| s.end.is_none())
            .ok_or(StreamError::NoSuchStream(stream))
    }

    /// The next message to seal for the hop, if any may go now: control messages first, then
    /// DATA round-robin over the streams as the windows allow, then the ENDs of drained
    /// closing streams. After sealing it, give its cell's tag to [`Streams::sent_tag`].
    pub fn poll_msg(&mut self) -> Option<OutMsg> {
        self.tag_owed = false;
        let is_circ_sendme = |m: &OutMsg| m.cmd == RelayCmd::SENDME && m.stream.is_none();
        let next = match self.control.front() {
            Some(m) if is_circ_sendme(m) && self.holding() => {
                self.control.iter().position(|m| !is_circ_sendme(m))
            }
            Some(_) => Some(0),
            None => None,
        };
        if let Some(m) = next.and_then(|i| self.control.remove(i)) {
            if m.cmd == RelayCmd::SENDME {
                match m.stream {
                    None if self.sendmes_queued > 0 => {
                        self.deliver_window += self.deliver_inc;
                        self.sendmes_queued -= 1;
                    }
                    Some(id) => {
                        if let Some(s) = self.streams.get_mut(&id).filter(|s| s.sendmes_queued > 0)
                        {
                            s.deliver_window += STREAM_WINDOW_INCREMENT;
                            s.sendmes_queued -= 1;
                        }
                    }
                    None => {}
                }
            }
            return Some(m);
        }
        if self.package_window > 0 {
            let start = self.cursor;
            let cc = self.sendme_inc.is_some();
            // With congestion control a stream may send unless the hop said XOFF; else while
            // its window is open.
            let may_send = |s: &Stream| {
                if cc {
                    !s.xoff_recv
                } else {
                    s.package_window > 0
                }
            };
            let pick = self
                .streams
                .range(StreamId::new(start.saturating_add(1))?..)
                .chain(self.streams.iter())
                .find(|(_, s)| s.state == State::Open && may_send(s) && !s.out.is_empty())
                .map(|(id, _)| *id);
            if let Some(id) = pick {
                let s = self.streams.get_mut(&id)?;
                let n = s.out.len().min(self.data_max);
                let data: Vec<u8> = s.out.drain(..n).collect();
                if !cc {
                    s.package_window -= 1;
                }
                self.package_window -= 1;
                if let Some(v) = &mut self.vegas {
                    v.on_sent();
                }
                self.data_sent += 1;
                self.tag_owed = self.data_sent.is_multiple_of(u64::from(self.package_inc));
                self.cursor = id.get();
                return Some(OutMsg {
                    stream: Some(id),
                    cmd: RelayCmd::DATA,
                    data,
                });
            }
        }
        let done = self
            .streams
            .iter()
            .find(|(_, s)| s.end.is_some() && s.out.is_empty())
            .map(|(id, _)| *id)?;
        let s = self.remove(done)?;
        Some(end_msg(done, s.end.unwrap_or(EndReason::DONE)))
    }

    /// With congestion control, whether some stream has so much unread that our circuit
    /// SENDMEs wait.
    fn holding(&self) -> bool {
        self.sendme_inc.is_some() && self.streams.values().any(|s| s.unread > HOLD_UNREAD)
    }

    /// The tag of the cell the last [`Streams::poll_msg`] message became.
    pub fn sent_tag(&mut self, tag: SendmeTag) {
        if std::mem::take(&mut self.tag_owed) {
            self.awaiting.push_back((tag, self.now));
        }
    }

    /// Handles a relay message from the streams' hop, `tag` being its cell's SENDME tag:
    /// `None` if it is not a stream-layer message (a circuit-level message other than SENDME).
    pub fn handle_msg(
        &mut self,
        stream: Option<StreamId>,
        cmd: RelayCmd,
        data: &[u8],
        tag: SendmeTag,
    ) -> Result<Option<StreamEvent>, StreamError> {
        let Some(id) = stream else {
            return if cmd == RelayCmd::SENDME {
                self.circ_sendme(data).map(Some)
            } else {
                Ok(None)
            };
        };
        if cmd == RelayCmd::DATA {
            // Every DATA cell counts against the circuit, even one for a gone stream.
            self.deliver_window = self
                .deliver_window
                .checked_sub(1)
                .ok_or(StreamError::CircuitProtocol(Fault::WindowExceeded))?;
            if self.deliver_window + self.sendmes_queued * self.deliver_inc
                <= CIRC_WINDOW_START - self.deliver_inc
            {
                self.sendmes_queued += 1;
                let mut body = vec![1];
                let t = tag.as_bytes();
                body.extend_from_slice(&(t.len() as u16).to_be_bytes());
                body.extend_from_slice(t);
                self.control.push_back(OutMsg {
                    stream: None,
                    cmd: RelayCmd::SENDME,
                    data: body,
                });
            }
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(Some(StreamEvent::Ignored));
        };
        let cc = self.sendme_inc.is_some();
        let r = match (cmd, s.state) {
            (RelayCmd::END, _) => {
                self.remove(id);
                let end = End::decode(data).unwrap_or(End::new(EndReason::MISC));
                return Ok(Some(StreamEvent::Ended { stream: id, end }));
            }
            (RelayCmd::CONNECTED, State::Connecting) => match Connected::decode(data) {
                Ok(connected) => {
                    s.state = State::Open;
                    Ok(StreamEvent::Connected {
                        stream: id,
                        connected,
                    })
                }
                Err(_) => Err(Fault::BadConnected),
            },
            (RelayCmd::DATA, State::Open) if cc => {
                s.unread = s.unread.saturating_add(data.len());
                if !s.xoff_sent && s.unread > XOFF_UNREAD {
                    s.xoff_sent = true;
                    self.control.push_back(OutMsg {
                        stream: Some(id),
                        cmd: RelayCmd::XOFF,
                        data: vec![0],
                    });
                }
                Ok(StreamEvent::Data {
                    stream: id,
                    data: data.to_vec(),
                })
            }
            // XOFF: version 0. A second XOFF is no error (C tor only notes it).
            (RelayCmd::XOFF, _) if cc => match data.first() {
                Some(0) => {
                    s.xoff_recv = true;
                    Ok(StreamEvent::Xoff { stream: id })
                }
                _ => Err(Fault::BadFlowControl),
            },
            // XON: version 0, then the advisory drain rate (ignored). May come without XOFF.
            (RelayCmd::XON, _) if cc => match data {
                [0, _, _, _, _, ..] => {
                    s.xoff_recv = false;
                    Ok(StreamEvent::Xon { stream: id })
                }
                _ => Err(Fault::BadFlowControl),
            },
            (RelayCmd::DATA, State::Open) => match s.deliver_window.checked_sub(1) {
                Some(w) => {
                    s.deliver_window = w;
                    if w + s.sendmes_queued * STREAM_WINDOW_INCREMENT
                        <= STREAM_WINDOW_START - STREAM_WINDOW_INCREMENT
                    {
                        s.sendmes_queued += 1;
                        self.control.push_back(OutMsg {
                            stream: Some(id),
                            cmd: RelayCmd::SENDME,
                            data: Vec::new(),
                        });
                    }
                    Ok(StreamEvent::Data {
                        stream: id,
                        data: data.to_vec(),
                    })
                }
                None => Err(Fault::WindowExceeded),
            },
            (RelayCmd::SENDME, State::Open) if !cc => {
                match s.package_window.checked_add(STREAM_WINDOW_INCREMENT) {
                    Some(w) if w <= STREAM_WINDOW_START => {
                        s.package_window = w;
                        Ok(StreamEvent::Sendme { stream: Some(id) })
                    }
                    _ => Err(Fault::SendmeOverflow),
                }
            }
            (cmd, _) => Err(Fault::UnexpectedMsg(cmd)),
        };
        r.map(Some).map_err(|fault| {
            self.remove(id);
            self.control.push_back(end_msg(id, EndReason::TORPROTOCOL));
            StreamError::StreamProtocol { stream: id, fault }
        })
    }

    /// Forgets a stream and the SENDMEs, XONs and XOFFs queued for it.
    fn remove(&mut self, id: StreamId) -> Option<Stream> {
        self.control.retain(|m| {
            !(m.stream == Some(id)
                && matches!(m.cmd, RelayCmd::SENDME | RelayCmd::XON | RelayCmd::XOFF))
        });
        self.streams.remove(&id)
    }

    fn circ_sendme(&mut self, data: &[u8]) -> Result<StreamEvent, StreamError> {
        let bad = StreamError::CircuitProtocol(Fault::BadSendmeTag);
        let (want, sent_at) = self
            .awaiting
            .pop_front()
            .ok_or(StreamError::CircuitProtocol(Fault::SendmeOverflow))?;
        // VERSION 1, DATA_LEN, DATA starting with the tag.
        let (&version, rest) = data.split_first().ok_or(bad)?;
        let len = rest
            .get(..2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
            .ok_or(bad)?;
        let body = rest.get(2..2 + len).ok_or(bad)?;
        let t = want.as_bytes();
        if version != 1 || t.is_empty() || body.get(..t.len()) != Some(t) {
            return Err(bad);
        }
        if let Some(v) = &mut self.vegas {
            let rtt = self.now.zip(sent_at).map(|(now, sent)| {
                u64::try_from(now.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX)
            });
            v.on_sendme(rtt);
            self.package_window = u16::try_from(v.window()).unwrap_or(u16::MAX);
        } else {
            // A tag is owed only for a cell sent, so the window never passes its start here.
            self.package_window = (self.package_window + self.package_inc).min(self.package_start);
        }
        Ok(StreamEvent::Sendme { stream: None })
    }

    /// The next cell for the hop, sealed on `circ`, if any may go now.
    pub fn poll_cell(
        &mut self,
        rng: &mut impl CryptoRngCore,
        circ: &mut OriginCircuit,
    ) -> Result<Option<CircCell>, StreamError> {
        let Some(m) = self.poll_msg() else {
            return Ok(None);
        };
        let cell = circ.send_raw(rng, self.hop, m.cmd, m.stream, &m.data)?;
        self.sent_tag(circ.last_sent_tag());
        Ok(Some(cell))
    }

    /// Handles what [`OriginCircuit::handle_cell`] just gave (call it before the circuit sees
    /// another cell: the circuit's last received tag must be this event's).
    pub fn handle_event(
        &mut self,
        circ: &OriginCircuit,
        ev: ClientEvent,
    ) -> Result<StreamEvent, StreamError> {
        if let ClientEvent::Msg {
            hop,
            stream_id,
            ref msg,
            ref data,
        } = ev
        {
            if hop == self.hop {
                if let Some(e) =
                    self.handle_msg(stream_id, msg.cmd(), data, circ.last_recv_tag())?
                {
                    return Ok(e);
                }
            }
        }
        Ok(StreamEvent::Other(ev))
    }
}

fn end_msg(stream: StreamId, reason: EndReason) -> OutMsg {
    OutMsg {
        stream: Some(stream),
        cmd: RelayCmd::END,
        data: vec![reason.0],
    }
}

/// Fuzz entry point: drives a [`Streams`] with operations read from `data` (open, write, end,
/// poll and seal, read, and messages from the hop: arbitrary ones, DATA, and circuit SENDMEs
/// with the right tag), checking after each that the windows and buffers stay within their
/// bounds. The first byte's low bit picks the v0 or v1 relay cell format; if its second bit is
/// set the streams use congestion control, with `sendme_inc` the byte's upper six bits. Panics
/// only on a bug.
pub fn fuzz_streams(data: &[u8]) {
    let (&first, mut rest) = match data.split_first() {
        Some(x) => x,
        None => return,
    };
    let format = if first & 1 == 1 {
        RelayCellFormat::V1
    } else {
        RelayCellFormat::V0
    };
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = rest.split_at_checked(n)?;
        rest = b;
        Some(a)
    };
    let mut s = if first & 2 == 2 {
        Streams::with_cc(2, format, first >> 2)
    } else {
        Streams::new(2, format)
    };
    // Tags given to sealed cells are their sequence numbers; `owed` are those of our 100th,
    // 200th, ... (`sendme_inc`th, ...) DATA cells, which a well-behaved hop acknowledges in
    // order.
    let (mut sealed, mut data_cells) = (0u64, 0u64);
    let mut owed: VecDeque<SendmeTag> = VecDeque::new();
    let tag_of = |n: u64| {
        let mut t = [0u8; 20];
        t[..8].copy_from_slice(&n.to_be_bytes());
        SendmeTag::Tor1(t)
    };
    let begin = Begin {
        host: proto::relay_msg::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST),
        port: 80,
        flags: Default::default(),
    };
    let big = [0x61u8; SEND_BUFFER_MAX];
    // A clock that each SENDME moves on by an input byte of milliseconds, so that the
    // congestion window sees round trips of every shape.
    let start = Instant::now();
    let mut clock_ms = 0u64;
    while let Some(&[op]) = take(1) {
        let stream = |b: u8| StreamId::new(u16::from(b % 8));
        let result = match op % 9 {
            0 => s.begin(&begin).map(|_| None),
            1 => match take(2) {
                Some(&[id, n]) => match stream(id) {
                    Some(id) => s.write(id, &big[..usize::from(n) * 256]).map(|_| None),
                    None => Ok(None),
                },
                _ => return,
            },
            2 => match take(1).and_then(|b| stream(b[0])) {
                Some(id) => s.end(id, EndReason::DONE).map(|_| None),
                None => Ok(None),
            },
            3 => {
                while let Some(m) = s.poll_msg() {
                    sealed += 1;
                    if m.cmd == RelayCmd::DATA {
                        assert!(m.data.len() <= format.data_max(RelayCmd::DATA));
                        data_cells += 1;
                        if data_cells.is_multiple_of(u64::from(s.package_inc)) {
                            owed.push_back(tag_of(sealed));
                        }
                    }
                    s.sent_tag(tag_of(sealed));
                }
                Ok(None)
            }
            4 => match take(3) {
                Some(&[id, cmd, len]) => match take(usize::from(len)) {
                    Some(body) => s.handle_msg(stream(id), RelayCmd(cmd), body, tag_of(0)),
                    None => return,
                },
                _ => return,
            },
            5 => match take(2) {
                Some(&[id, n]) => {
                    let mut r = Ok(None);
                    for _ in 0..n {
                        r = s.handle_msg(stream(id), RelayCmd::DATA, b"x", tag_of(0));
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                }
                _ => return,
            },
            6 => match owed.pop_front() {
                Some(t) => {
                    clock_ms += u64::from(take(1).map_or(0, |b| b[0]));
                    s.set_now(start + std::time::Duration::from_millis(clock_ms));
                    let mut body = vec![1, 0, t.as_bytes().len() as u8];
                    body.extend_from_slice(t.as_bytes());
                    s.handle_msg(None, RelayCmd::SENDME, &body, tag_of(0))
                }
                None => Ok(None),
            },
            8 => match take(2) {
                Some(&[id, n]) => {
                    if let Some(id) = stream(id) {
                        s.consumed(id, usize::from(n) * 1024);
                    }
                    Ok(None)
                }
                _ => return,
            },
            _ => match take(1).and_then(|b| stream(b[0])) {
                Some(id) => {
                    let connected = [127, 0, 0, 1, 0, 0, 0, 60];
                    s.handle_msg(Some(id), RelayCmd::CONNECTED, &connected, tag_of(0))
                }
                None => Ok(None),
            },
        };
        let (package, deliver) = s.circ_windows();
        assert!(deliver <= CIRC_WINDOW_START);
        assert!(s.streams.len() <= STREAMS_MAX);
        match &s.vegas {
            Some(v) => {
                let p = VegasParams::exit(first >> 2);
                assert!(v.cwnd() >= p.cwnd_min && v.cwnd() <= p.cwnd_max);
                assert_eq!(u32::from(package), v.window());
                assert!(s.awaiting.len() <= (p.cwnd_max / p.sendme_inc) as usize + 1);
            }
            None => {
                assert!(package <= s.package_start);
                assert!(s.awaiting.len() <= usize::from(CIRC_WINDOW_START / CIRC_WINDOW_INCREMENT));
            }
        }
        for (id, st) in &s.streams {
            assert!(st.package_window <= STREAM_WINDOW_START);
            assert!(st.deliver_window <= STREAM_WINDOW_START);
            assert!(s.buffered(*id) <= SEND_BUFFER_MAX);
            // Held SENDMEs let at most a window of cells more come past the hold mark.
            assert!(st.unread <= HOLD_UNREAD + usize::from(CIRC_WINDOW_START) * s.data_max);
        }
        // A circuit-level violation destroys the circuit: nothing more happens on it.
        if let Err(StreamError::CircuitProtocol(_)) = result {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use proto::relay_msg::Host;

    fn begin() -> Begin {
        Begin {
            host: Host::parse("127.0.0.1").unwrap(),
            port: 7,
            flags: Default::default(),
        }
    }

    /// A tag that names the cell: `n` in its first bytes.
    fn tag(n: u64) -> SendmeTag {
        let mut t = [0u8; 20];
        t[..8].copy_from_slice(&n.to_be_bytes());
        SendmeTag::Tor1(t)
    }

    fn sendme_v1(t: SendmeTag) -> Vec<u8> {
        let mut b = vec![1, 0, t.as_bytes().len() as u8];
        b.extend_from_slice(t.as_bytes());
        b
    }

    /// The hop's circuit SENDME (v1) acknowledging our `n`th sealed cell.
    fn ack(s: &mut Streams, n: u64) -> Result<Option<StreamEvent>, StreamError> {
        s.handle_msg(None, RelayCmd::SENDME, &sendme_v1(tag(n)), SendmeTag::None)
    }

    /// Streams with `n` connected streams; the BEGINs polled.
    fn connected(format: RelayCellFormat, n: usize) -> (Streams, Vec<StreamId>) {
        let mut s = Streams::new(2, format);
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = s.begin(&begin()).unwrap();
            let m = s.poll_msg().unwrap();
            assert_eq!((m.stream, m.cmd), (Some(id), RelayCmd::BEGIN));
            assert_eq!(Begin::decode(&m.data).unwrap(), begin());
            let ev = s
                .handle_msg(Some(id), RelayCmd::CONNECTED, &[], SendmeTag::None)
                .unwrap();
            assert!(matches!(ev, Some(StreamEvent::Connected { stream, .. }) if stream == id));
            ids.push(id);
        }
        (s, ids)
    }

    /// Polls every message that may go now, tagging each cell with the count of DATA cells
    /// sent so far; returns the DATA cells per stream (in order) and the other messages.
    fn drain(s: &mut Streams, sent: &mut u64) -> (Vec<(StreamId, Vec<u8>)>, Vec<OutMsg>) {
        let (mut data, mut other) = (Vec::new(), Vec::new());
        while let Some(m) = s.poll_msg() {
            if m.cmd == RelayCmd::DATA {
                *sent += 1;
                s.sent_tag(tag(*sent));
                data.push((m.stream.unwrap(), m.data));
            } else {
                s.sent_tag(SendmeTag::None);
                other.push(m);
            }
        }
        (data, other)
    }

    /// Keeps `id`'s buffer full and sends until the windows stop it: DATA cells sent.
    fn fill_and_send(s: &mut Streams, ids: &[StreamId], sent: &mut u64) -> usize {
        let mut cells = 0;
        loop {
            for &id in ids {
                s.write(id, &[0x5a; SEND_BUFFER_MAX]).unwrap();
            }
            let (d, _) = drain(s, sent);
            if d.is_empty() {
                return cells;
            }
            cells += d.len();
        }
    }

    #[test]
    fn data_waits_for_connected_and_is_cut_to_the_format() {
        for (format, max) in [(RelayCellFormat::V0, 498), (RelayCellFormat::V1, 488)] {
            let mut s = Streams::new(1, format);
            let id = s.begin(&begin()).unwrap();
            let bytes: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
            assert_eq!(s.write(id, &bytes).unwrap(), 1200);
            assert_eq!(s.poll_msg().unwrap().cmd, RelayCmd::BEGIN);
            assert_eq!(s.poll_msg(), None, "no DATA before CONNECTED");
            s.handle_msg(Some(id), RelayCmd::CONNECTED, &[], SendmeTag::None)
                .unwrap();
            let mut got = Vec::new();
            let mut lens = Vec::new();
            while let Some(m) = s.poll_msg() {
                assert_eq!((m.stream, m.cmd), (Some(id), RelayCmd::DATA));
                lens.push(m.data.len());
                got.extend(m.data);
            }
            assert_eq!(lens, [max, max, 1200 - 2 * max]);
            assert_eq!(got, bytes);
            assert_eq!(s.stream_windows(id), Some((497, 500)));
            assert_eq!(s.circ_windows(), (997, 1000));
        }
    }

    #[test]
    fn write_is_bounded() {
        let (mut s, ids) = connected(RelayCellFormat::V0, 1);
        assert_eq!(
            s.write(ids[0], &vec![0; SEND_BUFFER_MAX + 10]).unwrap(),
            SEND_BUFFER_MAX
        );
        assert_eq!(s.write(ids[0], &[0; 10]).unwrap(), 0);
        assert_eq!(s.buffered(ids[0]), SEND_BUFFER_MAX);
    }

    #[test]
    fn stream_window_stops_sending_until_a_stream_sendme() {
        let (mut s, ids) = connected(RelayCellFormat::V0, 1);
        let id = ids[0];
        let mut sent = 0;
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), 500);
        assert_eq!(s.stream_windows(id), Some((0, 500)));
        let ev = s
            .handle_msg(Some(id), RelayCmd::SENDME, &[], SendmeTag::None)
            .unwrap();
        assert_eq!(ev, Some(StreamEvent::Sendme { stream: Some(id) }));
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), 50);
        // Ten SENDMEs reopen the window fully; an eleventh overflows it.
        for _ in 0..10 {
            s.handle_msg(Some(id), RelayCmd::SENDME, &[], SendmeTag::None)
                .unwrap();
        }
        assert_eq!(s.stream_windows(id), Some((500, 500)));
        assert_eq!(
            s.handle_msg(Some(id), RelayCmd::SENDME, &[], SendmeTag::None),
            Err(StreamError::StreamProtocol {
                stream: id,
                fault: Fault::SendmeOverflow
            })
        );
    }

    #[test]
    fn circuit_window_needs_authenticated_sendmes() {
        let (mut s, ids) = connected(RelayCellFormat::V0, 3);
        let mut sent = 0;
        // Three streams could send 1500 cells; the circuit stops them at 1000.
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), 1000);
        assert_eq!(s.circ_windows().0, 0);
        // Stream SENDMEs do not help.
        for &id in &ids {
            s.handle_msg(Some(id), RelayCmd::SENDME, &[], SendmeTag::None)
                .unwrap();
        }
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), 0);
        // The first circuit SENDME must carry the tag of our 100th DATA cell.
        assert_eq!(
            ack(&mut s, 100),
            Ok(Some(StreamEvent::Sendme { stream: None }))
        );
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), 100);
        for n in [200, 300] {
            ack(&mut s, n).unwrap();
        }
        assert_eq!(s.circ_windows().0, 200);

        // A wrong tag (the 399th cell's instead of the 400th's), a v0 SENDME, a truncated
        // one: the circuit is broken.
        for body in [sendme_v1(tag(399)), Vec::new(), vec![1, 0, 20, 0]] {
            let (mut s2, ids2) = connected(RelayCellFormat::V0, 1);
            let mut sent2 = 0;
            fill_and_send(&mut s2, &ids2, &mut sent2);
            assert_eq!(
                s2.handle_msg(None, RelayCmd::SENDME, &body, SendmeTag::None),
                Err(StreamError::CircuitProtocol(Fault::BadSendmeTag))
            );
        }
        assert_eq!(
            ack(&mut s, 399),
            Err(StreamError::CircuitProtocol(Fault::BadSendmeTag))
        );
        // A SENDME for cells never sent.
        let (mut s3, _) = connected(RelayCellFormat::V0, 1);
        assert_eq!(
            ack(&mut s3, 100),
            Err(StreamError::CircuitProtocol(Fault::SendmeOverflow))
        );
        // Other circuit-level messages are not the stream layer's.
        assert_eq!(
            s3.handle_msg(None, RelayCmd::DROP, &[], SendmeTag::None),
            Ok(None)
        );
    }

    #[test]
    fn delivered_data_is_acknowledged() {
        let (mut s, ids) = connected(RelayCellFormat::V0, 3);
        let mut stream_sendmes = Vec::new();
        let mut circ_sendmes = Vec::new();
        for n in 1..=300u64 {
            let id = ids[(n as usize - 1) / 100];
            let data = [n as u8; 3];
            let ev = s
                .handle_msg(Some(id), RelayCmd::DATA, &data, tag(n))
                .unwrap();
            assert_eq!(
                ev,
                Some(StreamEvent::Data {
                    stream: id,
                    data: data.to_vec()
                })
            );
            while let Some(m) = s.poll_msg() {
                assert_eq!(m.cmd, RelayCmd::SENDME);
                match m.stream {
                    Some(id) => {
                        assert!(m.data.is_empty(), "stream SENDMEs are v0");
                        stream_sendmes.push((n, id));
                    }
                    None => circ_sendmes.push((n, m.data)),
                }
            }
        }
        // Every 50 cells on a stream, every 100 on the circuit, v1 with that cell's tag.
        let want: Vec<_> = (1..=6u64)
            .map(|k| (50 * k, ids[(k as usize - 1) / 2]))
            .collect();
        assert_eq!(stream_sendmes, want);
        let want: Vec<_> = (1..=3u64)
            .map(|k| (100 * k, sendme_v1(tag(100 * k))))
            .collect();
        assert_eq!(circ_sendmes, want);
        assert_eq!(s.circ_windows().1, 1000);
        assert_eq!(s.stream_windows(ids[0]), Some((500, 500)));

        // A CGO tag is 16 bytes.
        let (mut s, ids) = connected(RelayCellFormat::V1, 1);
        for n in 1..=100u64 {
            s.handle_msg(
                Some(ids[0]),
                RelayCmd::DATA,
                &[1],
                SendmeTag::Cgo([n as u8; 16]),
            )
            .unwrap();
        }
        let msgs: Vec<_> = std::iter::from_fn(|| s.poll_msg()).collect();
        let circ: Vec<_> = msgs.iter().filter(|m| m.stream.is_none()).collect();
        assert_eq!((msgs.len(), circ.len()), (3, 1));
        assert_eq!(circ[0].data, sendme_v1(SendmeTag::Cgo([100; 16])));
    }

    #[test]
    fn unsent_sendmes_close_the_windows() {
        // The caller never polls: the hop may send 500 cells on a stream, then no more.
        let (mut s, ids) = connected(RelayCellFormat::V0, 3);
        for _ in 0..500 {
            s.handle_msg(Some(ids[0]), RelayCmd::DATA, &[0], SendmeTag::None)
                .unwrap();
        }
        assert_eq!(
            s.handle_msg(Some(ids[0]), RelayCmd::DATA, &[0], SendmeTag::None),
            Err(StreamError::StreamProtocol {
                stream: ids[0],
                fault: Fault::WindowExceeded
            })
        );
        // And 1000 on the circuit (the cell that broke the stream counted).
        for _ in 0..499 {
            s.handle_msg(Some(ids[1]), RelayCmd::DATA, &[0], SendmeTag::None)
                .unwrap();
        }
        assert_eq!(s.circ_windows().1, 0);
        assert_eq!(
            s.handle_msg(Some(ids[2]), RelayCmd::DATA, &[0], SendmeTag::None),
            Err(StreamError::CircuitProtocol(Fault::WindowExceeded))
        );
    }

    #[test]
    fn end_handling() {
        let (mut s, ids) = connected(RelayCellFormat::V0, 2);
        // The hop ENDs a stream with a reason; what comes after for it is dropped, but still
        // counts against the circuit.
        let ev = s
            .handle_msg(
                Some(ids[0]),
                RelayCmd::END,
                &[EndReason::DONE.0],
                SendmeTag::None,
            )
            .unwrap();
        assert_eq!(
            ev,
            Some(StreamEvent::Ended {
                stream: ids[0],
                end: End::new(EndReason::DONE)
            })
        );
        assert_eq!(s.stream_windows(ids[0]), None);
        assert_eq!(
            s.write(ids[0], b"x"),
            Err(StreamError::NoSuchStream(ids[0]))
        );
        assert_eq!(
            s.handle_msg(Some(ids[0]), RelayCmd::DATA, b"late", SendmeTag::None),
            Ok(Some(StreamEvent::Ignored))
        );
        assert_eq!(s.circ_windows().1, 999);
        // An empty END means MISC.
        let ev = s
            .handle_msg(Some(ids[1]), RelayCmd::END, &[], SendmeTag::None)
            .unwrap();
        assert!(
            matches!(ev, Some(StreamEvent::Ended { end, .. }) if end.reason == EndReason::MISC)
        );

        // END before CONNECTED: a refusal.
        let id = s.begin(&begin()).unwrap();
        s.poll_msg().unwrap();
        let ev = s
            .handle_msg(
                Some(id),
                RelayCmd::END,
                &[EndReason::EXITPOLICY.0],
                SendmeTag::None,
            )
            .unwrap();
        assert!(
            matches!(ev, Some(StreamEvent::Ended { end, .. }) if end.reason == EndReason::EXITPOLICY)
        );

        // Our END follows the buffered bytes, then the stream is gone.
        let (mut s, ids) = connected(RelayCellFormat::V0, 1);
        s.write(ids[0], &[7; 600]).unwrap();
        s.end(ids[0], EndReason::DONE).unwrap();
        assert_eq!(
            s.write(ids[0], b"x"),
            Err(StreamError::NoSuchStream(ids[0]))
        );
        let msgs: Vec<_> = std::iter::from_fn(|| s.poll_msg()).collect();
        let cmds: Vec<_> = msgs.iter().map(|m| m.cmd).collect();
        assert_eq!(cmds, [RelayCmd::DATA, RelayCmd::DATA, RelayCmd::END]);
        assert_eq!(msgs[2].data, [EndReason::DONE.0]);
        assert_eq!(s.stream_windows(ids[0]), None);
    }

    #[test]
    fn bad_input_closes_only_its_stream() {
        let (mut s, ids) = connected(RelayCellFormat::V0, 1);
        let cases: [(RelayCmd, &[u8], Fault); 4] = [
            (
                RelayCmd::DATA,
                b"early",
                Fault::UnexpectedMsg(RelayCmd::DATA),
            ),
            (RelayCmd::CONNECTED, &[1, 2, 3], Fault::BadConnected),
            (
                RelayCmd::BEGIN,
                b"x:1\0",
                Fault::UnexpectedMsg(RelayCmd::BEGIN),
            ),
            (
                RelayCmd::SENDME,
                &[],
                Fault::UnexpectedMsg(RelayCmd::SENDME),
            ),
        ];
        for (cmd, body, fault) in cases {
            let bad = s.begin(&begin()).unwrap();
            assert_eq!(s.poll_msg().unwrap().cmd, RelayCmd::BEGIN);
            assert_eq!(
                s.handle_msg(Some(bad), cmd, body, SendmeTag::None),
                Err(StreamError::StreamProtocol { stream: bad, fault })
            );
            assert_eq!(s.stream_windows(bad), None);
            let end = s.poll_msg().unwrap();
            assert_eq!(
                (end.stream, end.cmd, end.data),
                (Some(bad), RelayCmd::END, vec![EndReason::TORPROTOCOL.0])
            );
        }
        // The good stream goes on both ways.
        s.write(ids[0], b"still here").unwrap();
        let m = s.poll_msg().unwrap();
        assert_eq!((m.stream, m.data), (Some(ids[0]), b"still here".to_vec()));
        assert!(s
            .handle_msg(Some(ids[0]), RelayCmd::DATA, b"yes", SendmeTag::None)
            .is_ok());
        // A second CONNECTED on an open stream is a violation too.
        assert_eq!(
            s.handle_msg(Some(ids[0]), RelayCmd::CONNECTED, &[], SendmeTag::None),
            Err(StreamError::StreamProtocol {
                stream: ids[0],
                fault: Fault::UnexpectedMsg(RelayCmd::CONNECTED)
            })
        );
    }

    /// Streams with congestion control of `sendme_inc` 31 and `n` connected streams.
    fn connected_cc(format: RelayCellFormat, n: usize) -> (Streams, Vec<StreamId>) {
        let mut s = Streams::with_cc(2, format, 31);
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = s.begin(&begin()).unwrap();
            assert_eq!(s.poll_msg().unwrap().cmd, RelayCmd::BEGIN);
            s.handle_msg(Some(id), RelayCmd::CONNECTED, &[], SendmeTag::None)
                .unwrap();
            ids.push(id);
        }
        (s, ids)
    }

    #[test]
    fn cc_circuit_sendmes_every_sendme_inc_cells_and_no_stream_sendmes() {
        for format in [RelayCellFormat::V0, RelayCellFormat::V1] {
            let (mut s, ids) = connected_cc(format, 2);
            assert_eq!(s.sendme_inc(), Some(31));
            let mut sendmes = Vec::new();
            for n in 1..=200u64 {
                let id = ids[n as usize % 2];
                let ev = s
                    .handle_msg(Some(id), RelayCmd::DATA, b"ab", tag(n))
                    .unwrap();
                assert!(matches!(ev, Some(StreamEvent::Data { stream, .. }) if stream == id));
                while let Some(m) = s.poll_msg() {
                    assert_eq!((m.stream, m.cmd), (None, RelayCmd::SENDME), "{m:?}");
                    sendmes.push((n, m.data));
                }
            }
            // The 31st, 62nd, ... DATA cells, v1 with that cell's tag; no stream SENDME
            // although each stream got 100 cells.
            let want: Vec<_> = (1..=6u64)
                .map(|k| (31 * k, sendme_v1(tag(31 * k))))
                .collect();
            assert_eq!(sendmes, want);
            assert_eq!(s.circ_windows().1, 1000 - 200 + 6 * 31);
            // A stream SENDME from the hop breaks its stream.
            assert_eq!(
                s.handle_msg(Some(ids[0]), RelayCmd::SENDME, &[], SendmeTag::None),
                Err(StreamError::StreamProtocol {
                    stream: ids[0],
                    fault: Fault::UnexpectedMsg(RelayCmd::SENDME)
                })
            );
        }
        // The hop may not have more than 1000 DATA cells unacknowledged (our SENDMEs unsent).
        let (mut s, ids) = connected_cc(RelayCellFormat::V1, 1);
        for _ in 0..1000 {
            s.handle_msg(Some(ids[0]), RelayCmd::DATA, b"x", SendmeTag::None)
                .unwrap();
        }
        assert_eq!(
            s.handle_msg(Some(ids[0]), RelayCmd::DATA, b"x", SendmeTag::None),
            Err(StreamError::CircuitProtocol(Fault::WindowExceeded))
        );
    }

    /// With a clock, SENDMEs that come back at a steady round trip open the congestion window
    /// past its start (Vegas slow start), and the extra room is sent at once; a round trip
    /// that keeps growing shrinks it again. Without a clock (above) it stays at its start.
    #[test]
    fn cc_congestion_window_follows_the_round_trip() {
        let (mut s, ids) = connected_cc(RelayCellFormat::V1, 2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        s.set_now(at(0));
        let mut sent = 0u64;
        let mut acked = 0u64;
        let mut ms = 0;
        let mut peak = 0;
        for round in 0..60u64 {
            // Everything the window allows goes out now; 50 ms later (60 ms more each round
            // from round 30: queueing) the SENDMEs for all of it come back.
            s.set_now(at(ms));
            fill_and_send(&mut s, &ids, &mut sent);
            ms += if round < 30 {
                50
            } else {
                50 + 60 * (round - 29)
            };
            s.set_now(at(ms));
            while acked + 31 <= sent {
                acked += 31;
                ack(&mut s, acked).unwrap();
            }
            let v = s.vegas().unwrap();
            assert_eq!(u32::from(s.circ_windows().0), v.window());
            if round == 29 {
                peak = v.cwnd();
                assert!(peak > 2 * 124, "slow start opened the window: {peak}");
            }
        }
        let v = s.vegas().unwrap();
        assert!(!v.in_slow_start());
        assert!(v.cwnd() < peak / 2, "{} from {peak}", v.cwnd());
        assert!(v.cwnd() >= 124);
    }

    #[test]
    fn cc_congestion_window_limits_what_is_in_flight() {
        let (mut s, ids) = connected_cc(RelayCellFormat::V1, 3);
        let cwnd = CC_CWND_SENDMES * 31;
        assert_eq!(s.circ_windows(), (cwnd, 1000));
        let mut sent = 0;
        // Three streams with no stream windows: the congestion window stops them.
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), usize::from(cwnd));
        assert_eq!(s.circ_windows().0, 0);
        assert_eq!(
            s.stream_windows(ids[0]),
            Some((500, 500)),
            "no stream windows"
        );
        // Each SENDME acknowledges 31 cells and carries the tag of the 31st, 62nd, ...
        assert_eq!(
            ack(&mut s, 31),
            Ok(Some(StreamEvent::Sendme { stream: None }))
        );
        assert_eq!(fill_and_send(&mut s, &ids, &mut sent), 31);
        for n in [62, 93, 124, 155] {
            ack(&mut s, n).unwrap();
        }
        assert_eq!(s.circ_windows().0, cwnd);
        // Nothing more was sent: one SENDME more is for cells never sent.
        assert_eq!(
            ack(&mut s, 186),
            Err(StreamError::CircuitProtocol(Fault::SendmeOverflow))
        );
        // A wrong tag (the 30th cell's, not the 31st's) breaks the circuit.
        let (mut s, ids) = connected_cc(RelayCellFormat::V0, 1);
        let mut sent = 0;
        fill_and_send(&mut s, &ids, &mut sent);
        assert_eq!(
            ack(&mut s, 30),
            Err(StreamError::CircuitProtocol(Fault::BadSendmeTag))
        );
    }

    #[test]
    fn cc_xoff_stops_a_stream_until_xon() {
        let (mut s, ids) = connected_cc(RelayCellFormat::V1, 2);
        let ev = s
            .handle_msg(Some(ids[0]), RelayCmd::XOFF, &[0], SendmeTag::None)
            .unwrap();
        assert_eq!(ev, Some(StreamEvent::Xoff { stream: ids[0] }));
        // A second XOFF is no error.
        s.handle_msg(Some(ids[0]), RelayCmd::XOFF, &[0], SendmeTag::None)
            .unwrap();
        for &id in &ids {
            s.write(id, &[1; 2000]).unwrap();
        }
        let mut sent = 0;
        let (data, _) = drain(&mut s, &mut sent);
        assert!(
            data.iter().all(|(id, _)| *id == ids[1]),
            "only the other stream"
        );
        assert_eq!(data.len(), 5);
        assert_eq!(s.buffered(ids[0]), 2000);
        // XON (version 0, rate 1000 kB/s) resumes it.
        let ev = s
            .handle_msg(
                Some(ids[0]),
                RelayCmd::XON,
                &[0, 0, 0, 3, 0xe8],
                SendmeTag::None,
            )
            .unwrap();
        assert_eq!(ev, Some(StreamEvent::Xon { stream: ids[0] }));
        let (data, _) = drain(&mut s, &mut sent);
        assert_eq!(data.len(), 5);
        assert!(data.iter().all(|(id, _)| *id == ids[0]));
        // Malformed ones break their stream only.
        for (cmd, body) in [
            (RelayCmd::XOFF, &[][..]),
            (RelayCmd::XOFF, &[1][..]),
            (RelayCmd::XON, &[0, 0, 0, 0][..]),
            (RelayCmd::XON, &[1, 0, 0, 0, 0][..]),
        ] {
            let (mut s, ids) = connected_cc(RelayCellFormat::V0, 2);
            assert_eq!(
                s.handle_msg(Some(ids[0]), cmd, body, SendmeTag::None),
                Err(StreamError::StreamProtocol {
                    stream: ids[0],
                    fault: Fault::BadFlowControl
                })
            );
            assert_eq!(s.stream_windows(ids[0]), None);
            assert!(s.stream_windows(ids[1]).is_some());
        }
        // Without congestion control XON and XOFF are unexpected.
        let (mut s, ids) = connected(RelayCellFormat::V0, 1);
        assert_eq!(
            s.handle_msg(Some(ids[0]), RelayCmd::XOFF, &[0], SendmeTag::None),
            Err(StreamError::StreamProtocol {
                stream: ids[0],
                fault: Fault::UnexpectedMsg(RelayCmd::XOFF)
            })
        );
    }

    #[test]
    fn cc_our_xoff_xon_and_held_sendmes_bound_unread_data() {
        type Polled = Vec<(Option<StreamId>, RelayCmd, Vec<u8>)>;
        let cell = [7u8; 498];
        let polled = |s: &mut Streams| -> Polled {
            std::iter::from_fn(|| s.poll_msg())
                .map(|m| (m.stream, m.cmd, m.data))
                .collect()
        };
        // Delivers `n` full cells on `id`, polling after each: what was polled.
        let deliver = |s: &mut Streams, id: StreamId, n: usize| -> Polled {
            let mut out = Vec::new();
            for _ in 0..n {
                s.handle_msg(Some(id), RelayCmd::DATA, &cell, SendmeTag::None)
                    .unwrap();
                out.extend(polled(s));
            }
            out
        };
        let cmds = |p: &Polled, cmd: RelayCmd| p.iter().filter(|m| m.1 == cmd).count();
        let (mut s, ids) = connected_cc(RelayCellFormat::V0, 2);
        // Up to XOFF_UNREAD bytes unread: no XOFF.
        let at_bound = XOFF_UNREAD / 498;
        let p = deliver(&mut s, ids[0], at_bound);
        assert_eq!(s.unread(ids[0]), at_bound * 498);
        assert_eq!(cmds(&p, RelayCmd::SENDME), p.len());
        // One cell more: one XOFF (version 0), however much more comes.
        let p = deliver(&mut s, ids[0], 100);
        let xoffs: Vec<_> = p.iter().filter(|m| m.1 == RelayCmd::XOFF).collect();
        assert_eq!(xoffs, [&(Some(ids[0]), RelayCmd::XOFF, vec![0])]);
        // Reading down to XON_UNREAD sends XON (version 0, no rate); not before.
        let unread = s.unread(ids[0]);
        s.consumed(ids[0], unread - XON_UNREAD - 1);
        assert_eq!(polled(&mut s), []);
        s.consumed(ids[0], 1);
        assert_eq!(s.unread(ids[0]), XON_UNREAD);
        assert_eq!(polled(&mut s), [(Some(ids[0]), RelayCmd::XON, vec![0; 5])]);
        // Fixed windows count nothing.
        let (mut f, fids) = connected(RelayCellFormat::V0, 1);
        f.handle_msg(Some(fids[0]), RelayCmd::DATA, &cell, SendmeTag::None)
            .unwrap();
        assert_eq!(f.unread(fids[0]), 0);

        // Past HOLD_UNREAD on a stream our circuit SENDMEs wait (other messages go on), until
        // the caller reads: the hop can send at most 1000 more cells.
        let (mut s, ids) = connected_cc(RelayCellFormat::V0, 2);
        let over = HOLD_UNREAD / 498 + 1;
        let p = deliver(&mut s, ids[0], over);
        assert_eq!(cmds(&p, RelayCmd::SENDME), (over - 1) / 31);
        assert_eq!(cmds(&p, RelayCmd::XOFF), 1);
        let deliver_before = s.circ_windows().1;
        let mut p = deliver(&mut s, ids[1], 62);
        s.end(ids[1], EndReason::DONE).unwrap();
        p.extend(polled(&mut s));
        assert_eq!(
            p.iter().map(|m| m.1).collect::<Vec<_>>(),
            [RelayCmd::END],
            "SENDMEs held"
        );
        assert_eq!(s.circ_windows().1, deliver_before - 62);
        let rest = usize::from(s.circ_windows().1);
        assert_eq!(deliver(&mut s, ids[0], rest), []);
        assert_eq!(
            s.handle_msg(Some(ids[0]), RelayCmd::DATA, &cell, SendmeTag::None),
            Err(StreamError::CircuitProtocol(Fault::WindowExceeded))
        );
        // Reading releases them.
        let (mut s, ids) = connected_cc(RelayCellFormat::V0, 1);
        let p = deliver(&mut s, ids[0], over + 62);
        assert_eq!(cmds(&p, RelayCmd::SENDME), (over - 1) / 31);
        s.consumed(ids[0], usize::MAX);
        let p = polled(&mut s);
        assert_eq!(
            cmds(&p, RelayCmd::SENDME),
            (over + 62) / 31 - (over - 1) / 31
        );
        assert_eq!(cmds(&p, RelayCmd::XON), 1);
        assert_eq!(s.circ_windows().1, 1000 - ((over + 62) % 31) as u16);
    }

    #[test]
    fn for_hop_picks_the_mode() {
        assert_eq!(Streams::new(0, RelayCellFormat::V0).sendme_inc(), None);
        let s = Streams::with_cc(1, RelayCellFormat::V1, 0);
        assert_eq!((s.sendme_inc(), s.circ_windows()), (Some(1), (4, 1000)));
    }

    proptest::proptest! {
        /// The fuzz entry point in congestion-control mode on random operations: its bounds
        /// hold (it panics otherwise).
        #[test]
        fn fuzz_streams_with_cc_keeps_its_bounds(
            first in 0u8..64,
            ops in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut data = vec![(first << 2) | 2 | (first & 1)];
            data.extend(ops);
            fuzz_streams(&data);
        }
    }

    #[test]
    fn stream_ids_are_unique_and_bounded() {
        let mut s = Streams::new(0, RelayCellFormat::V0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..STREAMS_MAX {
            assert!(seen.insert(s.begin(&begin()).unwrap()));
        }
        assert_eq!(s.begin(&begin()), Err(StreamError::TooManyStreams));
        // Ids are reused only once free.
        let first = *seen.iter().next().unwrap();
        s.handle_msg(Some(first), RelayCmd::END, &[], SendmeTag::None)
            .unwrap();
        s.next_id = first.get();
        assert_eq!(s.begin(&begin()), Ok(first));
    }
}
