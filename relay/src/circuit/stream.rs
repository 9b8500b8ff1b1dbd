//! Streams as a circuit's origin sees them, with fixed-window flow control (tor-spec §6
//! "Stream management", <https://spec.torproject.org/tor-spec/opening-streams.html>, §7
//! "Flow control", <https://spec.torproject.org/tor-spec/flow-control.html>, and proposal 289
//! "Authenticating SENDME cells").
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
//! Congestion control (proposal 324) is never requested (the ntor v3 client message has no
//! CC_REQUEST), so the hop uses these fixed windows.
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

use proto::ids::StreamId;
use proto::relay_cell::RelayCmd;
use proto::relay_cell_v1::RelayCellFormat;
use proto::relay_msg::{Begin, Connected, End, EndReason};
use rand_core::CryptoRngCore;
use thiserror::Error;

use super::client::{ClientError, ClientEvent, OriginCircuit, SendmeTag};
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
}

/// The streams of one circuit to one hop, with the circuit's windows.
#[derive(Debug)]
pub struct Streams {
    hop: usize,
    data_max: usize,
    next_id: u16,
    streams: BTreeMap<StreamId, Stream>,
    /// BEGIN, SENDME and protocol-violation END messages, sent before any DATA. Bounded: one
    /// BEGIN per stream, the windows bound the SENDMEs, one END per stream.
    control: VecDeque<OutMsg>,
    package_window: u16,
    deliver_window: u16,
    data_sent: u64,
    /// The last polled message was a 100th DATA cell: its tag is owed.
    tag_owed: bool,
    /// Tags of our 100th, 200th, ... DATA cells not yet acknowledged (at most 10).
    awaiting: VecDeque<SendmeTag>,
    /// Round-robin position among streams with data.
    cursor: u16,
}

impl Streams {
    /// No streams yet, to hop `hop` whose cells have `format`.
    pub fn new(hop: usize, format: RelayCellFormat) -> Self {
        Streams {
            hop,
            data_max: format.data_max(RelayCmd::DATA),
            next_id: 1,
            streams: BTreeMap::new(),
            control: VecDeque::new(),
            package_window: CIRC_WINDOW_START,
            deliver_window: CIRC_WINDOW_START,
            data_sent: 0,
            tag_owed: false,
            awaiting: VecDeque::new(),
            cursor: 0,
        }
    }

    /// The streams' hop.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// The circuit's package and deliver windows.
    pub fn circ_windows(&self) -> (u16, u16) {
        (self.package_window, self.deliver_window)
    }

    /// A stream's package and deliver windows.
    pub fn stream_windows(&self, stream: StreamId) -> Option<(u16, u16)> {
        self.streams
            .get(&stream)
            .map(|s| (s.package_window, s.deliver_window))
    }

    /// Bytes [`Streams::write`] took for `stream` that are not sent yet.
    pub fn buffered(&self, stream: StreamId) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.out.len())
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
        if let Some(m) = self.control.pop_front() {
            return Some(m);
        }
        if self.package_window > 0 {
            let start = self.cursor;
            let pick = self
                .streams
                .range(StreamId::new(start.saturating_add(1))?..)
                .chain(self.streams.iter())
                .find(|(_, s)| s.state == State::Open && s.package_window > 0 && !s.out.is_empty())
                .map(|(id, _)| *id);
            if let Some(id) = pick {
                let s = self.streams.get_mut(&id)?;
                let n = s.out.len().min(self.data_max);
                let data: Vec<u8> = s.out.drain(..n).collect();
                s.package_window -= 1;
                self.package_window -= 1;
                self.data_sent += 1;
                self.tag_owed = self.data_sent % u64::from(CIRC_WINDOW_INCREMENT) == 0;
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
        let s = self.streams.remove(&done)?;
        Some(end_msg(done, s.end.unwrap_or(EndReason::DONE)))
    }

    /// The tag of the cell the last [`Streams::poll_msg`] message became.
    pub fn sent_tag(&mut self, tag: SendmeTag) {
        if std::mem::take(&mut self.tag_owed) {
            self.awaiting.push_back(tag);
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
            if self.deliver_window <= CIRC_WINDOW_START - CIRC_WINDOW_INCREMENT {
                self.deliver_window += CIRC_WINDOW_INCREMENT;
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
        let r = match (cmd, s.state) {
            (RelayCmd::END, _) => {
                self.streams.remove(&id);
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
            (RelayCmd::DATA, State::Open) => match s.deliver_window.checked_sub(1) {
                Some(w) => {
                    s.deliver_window = w;
                    if w <= STREAM_WINDOW_START - STREAM_WINDOW_INCREMENT {
                        s.deliver_window += STREAM_WINDOW_INCREMENT;
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
            (RelayCmd::SENDME, State::Open) => {
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
            self.streams.remove(&id);
            self.control.push_back(end_msg(id, EndReason::TORPROTOCOL));
            StreamError::StreamProtocol { stream: id, fault }
        })
    }

    fn circ_sendme(&mut self, data: &[u8]) -> Result<StreamEvent, StreamError> {
        let bad = StreamError::CircuitProtocol(Fault::BadSendmeTag);
        let want = self
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
        // At most 10 tags are owed, so the window never passes its start here.
        self.package_window = (self.package_window + CIRC_WINDOW_INCREMENT).min(CIRC_WINDOW_START);
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
