//! A circuit as its origin sees it (tor-spec §5.3 "Creating circuits", §5.5.2.1 and §5.5.3
//! "Routing relay cells", <https://spec.torproject.org/tor-spec/creating-circuits.html>).
//!
//! # Call order
//!
//! 1. [`OriginCircuit::create_first_hop`] gives the CREATE2 / CREATE_FAST cell to send on a
//!    channel to the first hop (the client opened the channel, so `circ_id` has its MSB set).
//! 2. Every cell that arrives for the circuit goes to [`OriginCircuit::handle_cell`]; the
//!    CREATED2 / CREATED_FAST answer gives [`ClientEvent::HopAdded`].
//! 3. [`OriginCircuit::extend`] gives the RELAY_EARLY EXTEND2 cell for the next hop; its
//!    EXTENDED2 again gives [`ClientEvent::HopAdded`].
//! 4. [`OriginCircuit::send`] seals a relay message for any hop; received relay messages come
//!    back from [`OriginCircuit::handle_cell`] as [`ClientEvent::Msg`].
//!
//! After any error from [`OriginCircuit::handle_cell`] the circuit is unusable: send
//! [`OriginCircuit::destroy`]'s cell.

use crypto_simd::{Engine, Op, Outcome, Tor1Hop};
use proto::cell::ChanCmd;
use proto::chan_msg::{Create2, CreateFast, Created2, CreatedFast, DestroyReason, HandshakeType};
use proto::codec::CodecError;
use proto::create_fast::CreateFastClientState;
use proto::ids::{CircId, Ed25519Identity, RsaIdentity, StreamId};
use proto::kdf::{HandshakeError, KeyGenerator};
use proto::keys::RelayKeys;
use proto::link_spec::LinkSpec;
use proto::ntor::{NtorClientState, NtorPublicKey};
use proto::ntor_v3::{
    Negotiated, NegotiationError, NtorV3ClientState, NtorV3PublicKey, CIRCUIT_EXTEND_VERIFICATION,
};
use proto::relay_cell::RelayCmd;
use proto::relay_cell_v1::{RelayCellFormat, RelayFormatError};
use proto::relay_msg::{Extend2, Extended2, RelayMsg, Truncated};
use rand_core::CryptoRngCore;
use thiserror::Error;
use x25519_dalek::PublicKey;

use super::cgo::CgoClientHop;
use super::{hop_from, CircCell, RELAY_EARLY_MAX};

/// Most hops an origin circuit may have (tor-spec §5.6 lets relays pass 8 RELAY_EARLY cells,
/// so no longer path can be built).
pub const HOPS_MAX: usize = RELAY_EARLY_MAX as usize + 1;

/// Which handshake creates a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    /// ntor, CREATE2 type 2 (tor-spec §5.1.4).
    Ntor,
    /// ntor v3, CREATE2 type 3 (proposal 332); needs the relay's ed25519 identity.
    NtorV3,
    /// ntor v3 asking for `Relay=6` (proposal 359): the hop uses CGO relay crypto and the v1
    /// relay cell format. A relay that does not enable it refuses the CREATE2 / EXTEND2.
    NtorV3Cgo,
    /// ntor v3 asking for congestion control (proposal 324 §10.3, CC_REQUEST): if the relay
    /// accepts, [`OriginCircuit::hop_sendme_inc`] gives its `sendme_inc` and streams to the hop
    /// use congestion control ([`super::Streams::for_hop`]). A relay that does not do it
    /// ignores the request.
    NtorV3Cc,
    /// [`HandshakeKind::NtorV3Cgo`] and [`HandshakeKind::NtorV3Cc`] at once: what streams to a
    /// CGO exit need.
    NtorV3CgoCc,
    /// CREATE_FAST (tor-spec §5.1.5); first hop only.
    CreateFast,
}

/// What a client must know about a relay to build a hop to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayInfo {
    /// The RSA identity fingerprint.
    pub rsa_id: RsaIdentity,
    /// The ed25519 identity, if the relay has one.
    pub ed_id: Option<Ed25519Identity>,
    /// The ntor onion key (curve25519 public key).
    pub ntor_onion_key: [u8; 32],
    /// The ORPort addresses.
    pub addrs: Vec<std::net::SocketAddr>,
}

impl RelayInfo {
    /// The public half of a relay's keys, reachable at `addrs`.
    pub fn from_keys(keys: &RelayKeys, addrs: Vec<std::net::SocketAddr>) -> Self {
        RelayInfo {
            rsa_id: keys.fingerprint(),
            ed_id: Some(keys.ed25519_identity()),
            ntor_onion_key: *keys.ntor_onion().public().as_bytes(),
            addrs,
        }
    }

    /// The EXTEND2 link specifiers, in the order tor-spec §5.1.2 recommends: IPv4, RSA id,
    /// ed25519 id, IPv6.
    pub fn link_specs(&self) -> Vec<LinkSpec> {
        let mut v = Vec::with_capacity(self.addrs.len() + 2);
        v.extend(
            self.addrs
                .iter()
                .filter(|a| a.is_ipv4())
                .map(|a| LinkSpec::from_socket_addr(*a)),
        );
        v.push(LinkSpec::RsaId(self.rsa_id));
        v.extend(self.ed_id.map(LinkSpec::Ed25519Id));
        v.extend(
            self.addrs
                .iter()
                .filter(|a| a.is_ipv6())
                .map(|a| LinkSpec::from_socket_addr(*a)),
        );
        v
    }
}

/// Something that happened to an [`OriginCircuit`].
// Events are returned by value and matched at once, never stored in bulk: boxing the message
// would cost an allocation per cell for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A handshake finished: the circuit now has `hops` hops.
    HopAdded {
        /// Hops now.
        hops: usize,
    },
    /// A relay message from hop `hop` (0 is the first hop).
    Msg {
        /// Which hop sent it.
        hop: usize,
        /// Its stream, or `None` for a circuit-level message.
        stream_id: Option<StreamId>,
        /// The message.
        msg: RelayMsg,
        /// The message body as it came (the Data field of the relay cell), for messages whose
        /// decoding ignores it (DROP) and for byte-exact checks.
        data: Vec<u8>,
    },
    /// Hop `hop` says everything after it is gone; the circuit now has `hop + 1` hops.
    Truncated {
        /// The hop that sent TRUNCATED.
        hop: usize,
        /// Its reason.
        reason: DestroyReason,
    },
    /// The first hop destroyed the circuit.
    Destroyed {
        /// The reason it gave.
        reason: DestroyReason,
    },
    /// A cell a circuit ignores (padding, an unknown command).
    Ignored,
}

/// Why an [`OriginCircuit`] call failed. The first group is the network's fault (destroy the
/// circuit), the second misuse of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A handshake reply did not verify.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// An ntor v3 reply verified, but its extensions are malformed or answer what was not
    /// asked (a CC_RESPONSE without CC_REQUEST, a `sendme_inc` out of range).
    #[error("handshake reply refused: {0}")]
    Negotiation(#[from] NegotiationError),
    /// A cell came that the circuit did not expect in its state.
    #[error("unexpected {0} cell")]
    UnexpectedCell(ChanCmd),
    /// A relay message came that the circuit did not expect in its state.
    #[error("unexpected relay message {0}")]
    UnexpectedMsg(RelayCmd),
    /// No hop recognized a relay cell (tor-spec §5.5.3).
    #[error("relay cell recognized by no hop")]
    Unrecognized,
    /// A recognized relay cell broke its format's layout or stream-id rules.
    #[error("bad relay cell: {0}")]
    BadRelayCell(RelayFormatError),
    /// A relay message body was malformed.
    #[error("bad relay message: {0}")]
    BadMsg(CodecError),
    /// The circuit was destroyed.
    #[error("circuit is closed")]
    Closed,
    /// A handshake is still waiting for its answer.
    #[error("a handshake is in progress")]
    HandshakeInProgress,
    /// There is no such hop (yet).
    #[error("no hop {0}")]
    NoSuchHop(usize),
    /// CREATE_FAST cannot extend, ntor v3 needs an ed25519 identity, and CGO needs a build
    /// with the CGO cipher.
    #[error("handshake not usable here")]
    BadHandshakeKind,
    /// No RELAY_EARLY cells or hops left (tor-spec §5.6).
    #[error("circuit cannot be extended further")]
    TooLong,
    /// A message does not fit in a relay cell.
    #[error("message does not fit in a cell")]
    MessageTooLong,
}

enum Pending {
    None,
    Ntor(NtorClientState),
    /// ntor v3 with what its client message asked for.
    NtorV3 {
        state: NtorV3ClientState,
        want: Negotiated,
    },
    Fast(CreateFastClientState),
}

/// What an authenticated SENDME (v1, proposal 289) acknowledging a cell carries: tor1's
/// 20-byte running digest after that cell, or CGO's 16-byte tag of that cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendmeTag {
    /// No cell yet.
    None,
    /// A tor1 hop's digest.
    Tor1([u8; 20]),
    /// A CGO hop's tag.
    Cgo([u8; 16]),
}

impl SendmeTag {
    /// The bytes a SENDME v1 carries (empty for [`SendmeTag::None`]).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SendmeTag::None => &[],
            SendmeTag::Tor1(d) => d,
            SendmeTag::Cgo(t) => t,
        }
    }
}

/// One hop's relay crypto, chosen by its handshake.
// tor1 hops stay inline (the common case, no pointer chase per layer); CGO state is boxed.
#[allow(clippy::large_enum_variant)]
enum Hop {
    Tor1(Tor1Hop),
    Cgo(Box<CgoClientHop>),
}

impl Hop {
    fn format(&self) -> RelayCellFormat {
        match self {
            Hop::Tor1(_) => RelayCellFormat::V0,
            Hop::Cgo(_) => RelayCellFormat::V1,
        }
    }
}

/// A circuit built by this client.
pub struct OriginCircuit {
    engine: Engine,
    circ_id: CircId,
    hops: Vec<Hop>,
    /// Per hop, the `sendme_inc` of its congestion control, if negotiated.
    hop_cc: Vec<Option<u8>>,
    pending: Pending,
    relay_early_sent: u8,
    /// The SENDME v1 tag of the last cell sealed and of the last cell recognized.
    last_sent: SendmeTag,
    last_recv: SendmeTag,
    closed: bool,
}

impl std::fmt::Debug for OriginCircuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginCircuit")
            .field("circ_id", &self.circ_id)
            .field("hops", &self.hops.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl OriginCircuit {
    /// Starts a circuit with id `circ_id` to `relay`: the circuit and the cell to send.
    pub fn create_first_hop(
        rng: &mut impl CryptoRngCore,
        engine: Engine,
        circ_id: CircId,
        kind: HandshakeKind,
        relay: &RelayInfo,
    ) -> Result<(Self, CircCell), ClientError> {
        let mut body = Vec::new();
        let (pending, cmd) = match kind {
            HandshakeKind::CreateFast => {
                let (state, x) = proto::create_fast::client1(rng);
                CreateFast { x }
                    .encode(&mut body)
                    .map_err(|_| ClientError::MessageTooLong)?;
                (Pending::Fast(state), ChanCmd::CREATE_FAST)
            }
            _ => {
                let (pending, htype, hdata) = onionskin(rng, kind, relay)?;
                Create2 { htype, hdata }
                    .encode(&mut body)
                    .map_err(|_| ClientError::MessageTooLong)?;
                (pending, ChanCmd::CREATE2)
            }
        };
        let circ = OriginCircuit {
            engine,
            circ_id,
            hops: Vec::with_capacity(HOPS_MAX),
            hop_cc: Vec::with_capacity(HOPS_MAX),
            pending,
            relay_early_sent: 0,
            last_sent: SendmeTag::None,
            last_recv: SendmeTag::None,
            closed: false,
        };
        Ok((circ, CircCell::new(circ_id, cmd, &body)))
    }

    /// The circuit id on the first hop's channel.
    pub fn circ_id(&self) -> CircId {
        self.circ_id
    }

    /// Hops whose handshake has finished.
    pub fn hops(&self) -> usize {
        self.hops.len()
    }

    /// The SENDME v1 tag of the last cell this circuit sealed ([`OriginCircuit::send`] and
    /// friends): what the receiving hop's SENDME for it must carry.
    pub fn last_sent_tag(&self) -> SendmeTag {
        self.last_sent
    }

    /// The SENDME v1 tag of the last relay cell a hop sent us (from
    /// [`OriginCircuit::handle_cell`]): what our SENDME acknowledging it carries.
    pub fn last_recv_tag(&self) -> SendmeTag {
        self.last_recv
    }

    /// The relay cell format hop `hop` uses (v1 for a CGO hop), or `None` if there is no such
    /// hop.
    pub fn hop_format(&self, hop: usize) -> Option<RelayCellFormat> {
        self.hops.get(hop).map(Hop::format)
    }

    /// The `sendme_inc` hop `hop` answered to our CC_REQUEST (proposal 324 §10.3): `None` if
    /// there is no such hop or it does not use congestion control.
    pub fn hop_sendme_inc(&self, hop: usize) -> Option<u8> {
        self.hop_cc.get(hop).copied().flatten()
    }

    /// Whether the circuit was destroyed (by either side).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Asks the last hop to extend to `relay`: the RELAY_EARLY cell to send.
    pub fn extend(
        &mut self,
        rng: &mut impl CryptoRngCore,
        kind: HandshakeKind,
        relay: &RelayInfo,
    ) -> Result<CircCell, ClientError> {
        self.check_idle()?;
        let last = self
            .hops
            .len()
            .checked_sub(1)
            .ok_or(ClientError::NoSuchHop(0))?;
        if self.hops.len() >= HOPS_MAX || self.relay_early_sent >= RELAY_EARLY_MAX {
            return Err(ClientError::TooLong);
        }
        let (pending, htype, hdata) = onionskin(rng, kind, relay)?;
        let mut data = Vec::new();
        Extend2 {
            link_specs: relay.link_specs(),
            htype,
            hdata,
        }
        .encode(&mut data)
        .map_err(|_| ClientError::MessageTooLong)?;
        let cell = self.seal(
            rng,
            last,
            RelayCmd::EXTEND2,
            None,
            &data,
            ChanCmd::RELAY_EARLY,
        )?;
        self.relay_early_sent += 1;
        self.pending = pending;
        Ok(cell)
    }

    /// Seals `msg` for hop `hop` on `stream` (`None` for circuit-level): the RELAY cell to send.
    pub fn send(
        &mut self,
        rng: &mut impl CryptoRngCore,
        hop: usize,
        stream: Option<StreamId>,
        msg: &RelayMsg,
    ) -> Result<CircCell, ClientError> {
        let mut data = Vec::new();
        msg.encode(&mut data)
            .map_err(|_| ClientError::MessageTooLong)?;
        self.send_raw(rng, hop, msg.cmd(), stream, &data)
    }

    /// Seals a relay cell with `cmd` and `data` for hop `hop`, without checking the message:
    /// the load generator's path (no message is built) and tests' way to send anything.
    pub fn send_raw(
        &mut self,
        rng: &mut impl CryptoRngCore,
        hop: usize,
        cmd: RelayCmd,
        stream: Option<StreamId>,
        data: &[u8],
    ) -> Result<CircCell, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        self.seal(rng, hop, cmd, stream, data, ChanCmd::RELAY)
    }

    /// Marks the circuit closed and gives the DESTROY cell to send (reason NONE, as tor-spec
    /// §5.4 asks of origins).
    pub fn destroy(&mut self) -> CircCell {
        self.closed = true;
        self.pending = Pending::None;
        CircCell::new(self.circ_id, ChanCmd::DESTROY, &[DestroyReason::NONE.0])
    }

    /// Handles a cell that arrived for this circuit.
    pub fn handle_cell(&mut self, cell: &CircCell) -> Result<ClientEvent, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let r = self.handle_cell_inner(cell);
        if r.is_err() {
            self.closed = true;
            self.pending = Pending::None;
        }
        r
    }

    fn handle_cell_inner(&mut self, cell: &CircCell) -> Result<ClientEvent, ClientError> {
        match cell.cmd {
            ChanCmd::CREATED2 | ChanCmd::CREATED_FAST => {
                if !self.hops.is_empty() {
                    return Err(ClientError::UnexpectedCell(cell.cmd));
                }
                let pending = std::mem::replace(&mut self.pending, Pending::None);
                let kg = match (pending, cell.cmd) {
                    (Pending::Fast(state), ChanCmd::CREATED_FAST) => {
                        let c = CreatedFast::decode(&cell.body).map_err(HandshakeError::from)?;
                        let mut reply = [0u8; 40];
                        reply[..20].copy_from_slice(&c.y);
                        reply[20..].copy_from_slice(&c.kh);
                        let kg = proto::create_fast::client2(state, &reply)?;
                        (kg, Negotiated::default(), None)
                    }
                    (p @ (Pending::Ntor(_) | Pending::NtorV3 { .. }), ChanCmd::CREATED2) => {
                        let c = Created2::decode(&cell.body).map_err(HandshakeError::from)?;
                        finish(p, &c.hdata)?
                    }
                    _ => return Err(ClientError::UnexpectedCell(cell.cmd)),
                };
                self.add_hop(&kg.0, kg.1, kg.2)
            }
            ChanCmd::DESTROY => {
                self.closed = true;
                self.pending = Pending::None;
                Ok(ClientEvent::Destroyed {
                    reason: DestroyReason(cell.body[0]),
                })
            }
            ChanCmd::RELAY => self.recv(&cell.body),
            ChanCmd::PADDING | ChanCmd::VPADDING => Ok(ClientEvent::Ignored),
            other => Err(ClientError::UnexpectedCell(other)),
        }
    }

    fn recv(&mut self, body: &[u8; 509]) -> Result<ClientEvent, ClientError> {
        let mut body = *body;
        let mut found = None;
        for (i, h) in self.hops.iter_mut().enumerate() {
            let tag = match h {
                Hop::Tor1(t) => match self
                    .engine
                    .process_one(t, &mut body, Op::OriginRecvBackward)
                {
                    Outcome::Recognized(d) => Some(SendmeTag::Tor1(d)),
                    _ => None,
                },
                Hop::Cgo(c) => c.backward(&mut body).map(SendmeTag::Cgo),
            };
            if let Some(tag) = tag {
                self.last_recv = tag;
                found = Some((i, h.format()));
                break;
            }
        }
        let (hop, format) = found.ok_or(ClientError::Unrecognized)?;
        let view = format.decode(&body).map_err(ClientError::BadRelayCell)?;
        match view.cmd {
            RelayCmd::EXTENDED2 => {
                if hop + 1 != self.hops.len() {
                    return Err(ClientError::UnexpectedMsg(RelayCmd::EXTENDED2));
                }
                let pending = std::mem::replace(&mut self.pending, Pending::None);
                if matches!(pending, Pending::None | Pending::Fast(_)) {
                    return Err(ClientError::UnexpectedMsg(RelayCmd::EXTENDED2));
                }
                let e = Extended2::decode(view.data).map_err(ClientError::BadMsg)?;
                let (kg, got, cc) = finish(pending, &e.hdata)?;
                self.add_hop(&kg, got, cc)
            }
            RelayCmd::TRUNCATED => {
                let t = Truncated::decode(view.data).map_err(ClientError::BadMsg)?;
                self.hops.truncate(hop + 1);
                self.hop_cc.truncate(hop + 1);
                self.pending = Pending::None;
                Ok(ClientEvent::Truncated {
                    hop,
                    reason: t.reason,
                })
            }
            cmd => {
                let msg = match RelayMsg::decode(cmd, view.data) {
                    Ok(m) => m,
                    // A malformed stream message is its stream's fault, not the circuit's:
                    // the stream layer (`stream.rs`) closes that stream only.
                    Err(_) if view.stream_id.is_some() => RelayMsg::Unrecognized {
                        cmd,
                        body: view.data.to_vec(),
                    },
                    Err(e) => return Err(ClientError::BadMsg(e)),
                };
                Ok(ClientEvent::Msg {
                    hop,
                    stream_id: view.stream_id,
                    msg,
                    data: view.data.to_vec(),
                })
            }
        }
    }

    fn add_hop(
        &mut self,
        kg: &KeyGenerator,
        got: Negotiated,
        cc: Option<u8>,
    ) -> Result<ClientEvent, ClientError> {
        let hop = if got.cgo {
            let keys = kg.cgo_keys()?;
            Hop::Cgo(CgoClientHop::new(&keys).ok_or(ClientError::BadHandshakeKind)?)
        } else {
            Hop::Tor1(hop_from(kg).ok_or(HandshakeError::KdfTooLong)?)
        };
        self.hops.push(hop);
        self.hop_cc.push(cc);
        Ok(ClientEvent::HopAdded {
            hops: self.hops.len(),
        })
    }

    fn check_idle(&self) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if !matches!(self.pending, Pending::None) {
            return Err(ClientError::HandshakeInProgress);
        }
        Ok(())
    }

    fn seal(
        &mut self,
        rng: &mut impl CryptoRngCore,
        hop: usize,
        cmd: RelayCmd,
        stream: Option<StreamId>,
        data: &[u8],
        chan_cmd: ChanCmd,
    ) -> Result<CircCell, ClientError> {
        let n = self.hops.len();
        let (outer, rest) = self.hops.split_at_mut(hop.min(n));
        let target = rest.first_mut().ok_or(ClientError::NoSuchHop(hop))?;
        let mut body = [0u8; 509];
        target
            .format()
            .build(&mut body, cmd, stream, data, rng)
            .map_err(|_| ClientError::MessageTooLong)?;
        self.last_sent = match target {
            Hop::Tor1(t) => match self.engine.process_one(t, &mut body, Op::OriginSealForward) {
                Outcome::Sealed(d) => SendmeTag::Tor1(d),
                _ => SendmeTag::None,
            },
            Hop::Cgo(c) => SendmeTag::Cgo(c.originate(chan_cmd.0, &mut body)),
        };
        for h in outer.iter_mut().rev() {
            match h {
                Hop::Tor1(t) => {
                    self.engine
                        .process_one(t, &mut body, Op::OriginCryptForward);
                }
                Hop::Cgo(c) => c.forward(chan_cmd.0, &mut body),
            }
        }
        Ok(CircCell {
            circ_id: self.circ_id,
            cmd: chan_cmd,
            body,
        })
    }
}

/// Client step 1 of a CREATE2-style handshake.
fn onionskin(
    rng: &mut impl CryptoRngCore,
    kind: HandshakeKind,
    relay: &RelayInfo,
) -> Result<(Pending, HandshakeType, Vec<u8>), ClientError> {
    let pk = PublicKey::from(relay.ntor_onion_key);
    match kind {
        HandshakeKind::Ntor => {
            let (state, msg) = proto::ntor::client1(
                rng,
                &NtorPublicKey {
                    id: relay.rsa_id,
                    pk,
                },
            );
            Ok((Pending::Ntor(state), HandshakeType::NTOR, msg.to_vec()))
        }
        HandshakeKind::NtorV3
        | HandshakeKind::NtorV3Cgo
        | HandshakeKind::NtorV3Cc
        | HandshakeKind::NtorV3CgoCc => {
            let id = relay.ed_id.ok_or(ClientError::BadHandshakeKind)?;
            let want = Negotiated {
                cgo: matches!(kind, HandshakeKind::NtorV3Cgo | HandshakeKind::NtorV3CgoCc),
                cc: matches!(kind, HandshakeKind::NtorV3Cc | HandshakeKind::NtorV3CgoCc),
            };
            if want.cgo && !super::cgo::available() {
                return Err(ClientError::BadHandshakeKind);
            }
            let mut msg = Vec::new();
            // CC_REQUEST and Relay=6 as asked; asking for nothing is an empty extension list
            // (one zero byte: C tor refuses an empty message).
            let client_msg = proto::ntor_v3::client_message(want);
            let state = proto::ntor_v3::client1(
                rng,
                &NtorV3PublicKey { id, pk },
                CIRCUIT_EXTEND_VERIFICATION,
                &client_msg,
                &mut msg,
            )?;
            Ok((Pending::NtorV3 { state, want }, HandshakeType::NTOR_V3, msg))
        }
        HandshakeKind::CreateFast => Err(ClientError::BadHandshakeKind),
    }
}

/// Client step 2 of a CREATE2-style handshake: the keys, what the hop uses (CGO: the relay
/// accepting the handshake accepts the subprotocol request, its reply carries no extension
/// for it), and its congestion control's `sendme_inc` if it answered our CC_REQUEST.
fn finish(
    pending: Pending,
    reply: &[u8],
) -> Result<(KeyGenerator, Negotiated, Option<u8>), ClientError> {
    match pending {
        Pending::Ntor(state) => Ok((
            proto::ntor::client2(state, reply)?,
            Negotiated::default(),
            None,
        )),
        Pending::NtorV3 { state, want } => {
            let (server_msg, kg) = proto::ntor_v3::client2(state, reply)?;
            let cc = proto::ntor_v3::client_server_message(want, &server_msg)?;
            let got = Negotiated {
                cgo: want.cgo,
                cc: cc.is_some(),
            };
            Ok((kg, got, cc))
        }
        Pending::Fast(_) | Pending::None => Err(ClientError::UnexpectedCell(ChanCmd::CREATED2)),
    }
}

/// Fuzz entry point: builds a one-hop circuit against fixed keys, then hands every cell
/// framed from `data` (4-byte circuit ids) to [`OriginCircuit::handle_cell`]. The hop is a
/// tor1 (ntor) one, or a CGO (ntor v3 with `Relay=6`) one when `data` starts with the byte
/// `0xc6`, which is then skipped. Panics only on a bug.
pub fn fuzz_origin_cells(data: &[u8]) {
    use proto::cell::{CircIdLen, RawCell};
    use proto::keys::NtorOnionKeypair;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (cgo, data) = match data.split_first() {
        Some((&0xc6, rest)) => (true, rest),
        _ => (false, data),
    };
    let onion = NtorOnionKeypair::from_secret_bytes([7; 32]);
    let keys = proto::ntor::NtorServerKeys {
        id: RsaIdentity::from_bytes([1; 20]),
        current: onion.clone(),
        previous: None,
    };
    let v3_keys = proto::ntor_v3::NtorV3ServerKeys {
        id: Ed25519Identity::from_bytes([2; 32]),
        current: onion.clone(),
        previous: None,
    };
    let info = RelayInfo {
        rsa_id: keys.id,
        ed_id: Some(v3_keys.id),
        ntor_onion_key: *onion.public().as_bytes(),
        addrs: Vec::new(),
    };
    let engine = Engine::new(crypto_simd::Backend::Portable).unwrap_or_else(|_| Engine::best());
    let Some(circ_id) = CircId::new(0x8000_0001) else {
        return;
    };
    let kind = if cgo {
        HandshakeKind::NtorV3Cgo
    } else {
        HandshakeKind::Ntor
    };
    let Ok((mut circ, cell)) =
        OriginCircuit::create_first_hop(&mut rng, engine, circ_id, kind, &info)
    else {
        return;
    };
    let Ok(c2) = Create2::decode(&cell.body) else {
        return;
    };
    let reply = if cgo {
        let mut reply = Vec::new();
        let caps = super::cgo::RELAY_CAPS;
        let ok = proto::ntor_v3::server(
            &mut rng,
            &v3_keys,
            CIRCUIT_EXTEND_VERIFICATION,
            &c2.hdata,
            |cm| {
                proto::ntor_v3::negotiate_server(cm, caps)
                    .ok()
                    .map(|_| vec![0])
            },
            &mut reply,
        );
        if ok.is_err() {
            return;
        }
        reply
    } else {
        let Ok((reply, _)) = proto::ntor::server(&mut rng, &keys, &c2.hdata) else {
            return;
        };
        reply.to_vec()
    };
    let mut body = Vec::new();
    if (Created2 { hdata: reply }).encode(&mut body).is_err() {
        return;
    }
    assert_eq!(
        circ.handle_cell(&CircCell::new(circ_id, ChanCmd::CREATED2, &body)),
        Ok(ClientEvent::HopAdded { hops: 1 })
    );
    assert_eq!(
        circ.hop_format(0),
        Some(if cgo {
            RelayCellFormat::V1
        } else {
            RelayCellFormat::V0
        })
    );
    let mut rest = data;
    while let Some((raw, used)) = RawCell::decode(rest, CircIdLen::Four) {
        rest = rest.get(used..).unwrap_or_default();
        if let Some(cell) = CircCell::from_raw(&raw) {
            let _ = circ.handle_cell(&cell);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::keys::NtorOnionKeypair;
    use proto::relay_cell::{build_relay_cell, RelayCellView};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn engine() -> Engine {
        Engine::from_env().unwrap()
    }

    fn relay() -> (proto::ntor::NtorServerKeys, RelayInfo) {
        let onion = NtorOnionKeypair::from_secret_bytes([3; 32]);
        let keys = proto::ntor::NtorServerKeys {
            id: RsaIdentity::from_bytes([4; 20]),
            current: onion.clone(),
            previous: None,
        };
        let info = RelayInfo {
            rsa_id: keys.id,
            ed_id: None,
            ntor_onion_key: *onion.public().as_bytes(),
            addrs: vec![
                "[::1]:9002".parse().unwrap(),
                "10.0.0.1:9001".parse().unwrap(),
            ],
        };
        (keys, info)
    }

    fn id() -> CircId {
        CircId::new(0x8000_0009).unwrap()
    }

    /// A one-hop ntor circuit and the hop's relay-side crypto state.
    fn one_hop(rng: &mut StdRng) -> (OriginCircuit, Tor1Hop) {
        let (keys, info) = relay();
        let (mut circ, cell) =
            OriginCircuit::create_first_hop(rng, engine(), id(), HandshakeKind::Ntor, &info)
                .unwrap();
        assert_eq!((cell.circ_id, cell.cmd), (id(), ChanCmd::CREATE2));
        let c2 = Create2::decode(&cell.body).unwrap();
        assert_eq!(c2.htype, HandshakeType::NTOR);
        let (reply, kg) = proto::ntor::server(rng, &keys, &c2.hdata).unwrap();
        let mut body = Vec::new();
        Created2 {
            hdata: reply.to_vec(),
        }
        .encode(&mut body)
        .unwrap();
        let ev = circ
            .handle_cell(&CircCell::new(id(), ChanCmd::CREATED2, &body))
            .unwrap();
        assert_eq!(ev, ClientEvent::HopAdded { hops: 1 });
        (circ, hop_from(&kg).unwrap())
    }

    #[test]
    fn link_specs_in_recommended_order() {
        let (_, mut info) = relay();
        info.ed_id = Some(Ed25519Identity::from_bytes([5; 32]));
        let specs = info.link_specs();
        let types: Vec<u8> = specs.iter().map(LinkSpec::ls_type).collect();
        assert_eq!(types, [0, 2, 3, 1]);
    }

    #[test]
    fn handshake_and_messages_both_ways() {
        let mut rng = StdRng::seed_from_u64(1);
        let (mut circ, mut hop) = one_hop(&mut rng);
        // Forward: the relay side recognizes exactly what was sent.
        let cell = circ
            .send(
                &mut rng,
                0,
                StreamId::new(2),
                &RelayMsg::Data(proto::relay_msg::Data::new(b"hello".to_vec()).unwrap()),
            )
            .unwrap();
        assert_eq!(cell.cmd, ChanCmd::RELAY);
        let mut b = cell.body;
        let r = engine().process_one(&mut hop, &mut b, crypto_simd::Op::RelayRecvForward);
        assert!(matches!(r, crypto_simd::Outcome::Recognized(_)));
        let v = RelayCellView::new(&b).unwrap();
        assert_eq!(
            (v.cmd(), v.stream_id(), v.data()),
            (RelayCmd::DATA, StreamId::new(2), &b"hello"[..])
        );
        // Backward.
        let mut b = [0u8; 509];
        build_relay_cell(&mut b, RelayCmd::DATA, StreamId::new(2), b"world", &mut rng).unwrap();
        engine().process_one(&mut hop, &mut b, crypto_simd::Op::RelaySendBackward);
        let ev = circ
            .handle_cell(&CircCell {
                circ_id: id(),
                cmd: ChanCmd::RELAY,
                body: b,
            })
            .unwrap();
        assert_eq!(
            ev,
            ClientEvent::Msg {
                hop: 0,
                stream_id: StreamId::new(2),
                msg: RelayMsg::Data(proto::relay_msg::Data::new(b"world".to_vec()).unwrap()),
                data: b"world".to_vec(),
            }
        );
    }

    /// The tags the client records are the ones the relay side computes for the same cells,
    /// for a tor1 hop and for a CGO hop, in both directions.
    #[test]
    fn sendme_tags_match_the_relay_side() {
        let mut rng = StdRng::seed_from_u64(4);
        // tor1.
        let (mut circ, mut hop) = one_hop(&mut rng);
        assert_eq!(circ.last_sent_tag(), SendmeTag::None);
        let cell = circ
            .send_raw(&mut rng, 0, RelayCmd::DROP, None, b"t")
            .unwrap();
        let mut b = cell.body;
        let crypto_simd::Outcome::Recognized(d) =
            engine().process_one(&mut hop, &mut b, crypto_simd::Op::RelayRecvForward)
        else {
            panic!("not recognized");
        };
        assert_eq!(circ.last_sent_tag(), SendmeTag::Tor1(d));
        let mut b = [0u8; 509];
        build_relay_cell(&mut b, RelayCmd::DROP, None, b"u", &mut rng).unwrap();
        let crypto_simd::Outcome::Sealed(d) =
            engine().process_one(&mut hop, &mut b, crypto_simd::Op::RelaySendBackward)
        else {
            panic!("not sealed");
        };
        circ.handle_cell(&CircCell::new(id(), ChanCmd::RELAY, &b))
            .unwrap();
        assert_eq!(circ.last_recv_tag(), SendmeTag::Tor1(d));
        assert_eq!(circ.last_recv_tag().as_bytes(), &d[..]);

        // CGO, with the relay side from crypto_simd directly.
        let (v3, info) = v3_relay();
        let (mut circ, cell) = OriginCircuit::create_first_hop(
            &mut rng,
            engine(),
            id(),
            HandshakeKind::NtorV3Cgo,
            &info,
        )
        .unwrap();
        let c2 = Create2::decode(&cell.body).unwrap();
        let mut reply = Vec::new();
        let (kg, cm) = proto::ntor_v3::server(
            &mut rng,
            &v3,
            CIRCUIT_EXTEND_VERIFICATION,
            &c2.hdata,
            |_| Some(vec![0]),
            &mut reply,
        )
        .unwrap();
        assert_eq!(&cm[..], &[1, 3, 2, 2, 6]);
        let mut body = Vec::new();
        Created2 { hdata: reply }.encode(&mut body).unwrap();
        circ.handle_cell(&CircCell::new(id(), ChanCmd::CREATED2, &body))
            .unwrap();
        let keys = kg.cgo_keys().unwrap();
        let mut kdf = keys.forward.to_vec();
        kdf.extend_from_slice(&keys.backward);
        let mut relay = crypto_simd::cgo::RelayState::from_kdf(&kdf).unwrap();
        let cell = circ
            .send_raw(&mut rng, 0, RelayCmd::DROP, None, b"t")
            .unwrap();
        let mut b = cell.body;
        let crypto_simd::cgo::Forward::ForUs(t) =
            relay.forward(crypto_simd::cgo::CMD_RELAY, &mut b)
        else {
            panic!("not recognized");
        };
        assert_eq!(circ.last_sent_tag(), SendmeTag::Cgo(t.0));
        let mut b = [0u8; 509];
        proto::relay_cell_v1::build_relay_cell_v1(&mut b, RelayCmd::DROP, None, b"u", &mut rng)
            .unwrap();
        let t = relay.originate(crypto_simd::cgo::CMD_RELAY, &mut b);
        let ev = circ
            .handle_cell(&CircCell::new(id(), ChanCmd::RELAY, &b))
            .unwrap();
        assert!(matches!(ev, ClientEvent::Msg { data, .. } if data == b"u"));
        assert_eq!(circ.last_recv_tag(), SendmeTag::Cgo(t.0));
    }

    /// [`relay`] with ntor v3 keys: its v3 server keys and its info with the Ed25519 identity.
    fn v3_relay() -> (proto::ntor_v3::NtorV3ServerKeys, RelayInfo) {
        let v3 = proto::ntor_v3::NtorV3ServerKeys {
            id: Ed25519Identity::from_bytes([6; 32]),
            current: NtorOnionKeypair::from_secret_bytes([3; 32]),
            previous: None,
        };
        let (_, mut info) = relay();
        info.ed_id = Some(v3.id);
        (v3, info)
    }

    /// A first hop by ntor v3 of `kind`, answered with server message `sm`: the circuit and
    /// the client message the relay saw, or the error.
    fn v3_hop(
        rng: &mut StdRng,
        kind: HandshakeKind,
        sm: &[u8],
    ) -> (Result<(OriginCircuit, ClientEvent), ClientError>, Vec<u8>) {
        let (v3, info) = v3_relay();
        let (mut circ, cell) =
            OriginCircuit::create_first_hop(rng, engine(), id(), kind, &info).unwrap();
        let c2 = Create2::decode(&cell.body).unwrap();
        let mut reply = Vec::new();
        let (_, cm) = proto::ntor_v3::server(
            rng,
            &v3,
            CIRCUIT_EXTEND_VERIFICATION,
            &c2.hdata,
            |_| Some(sm.to_vec()),
            &mut reply,
        )
        .unwrap();
        let mut body = Vec::new();
        Created2 { hdata: reply }.encode(&mut body).unwrap();
        let r = circ.handle_cell(&CircCell::new(id(), ChanCmd::CREATED2, &body));
        (r.map(|ev| (circ, ev)), cm.to_vec())
    }

    #[test]
    fn congestion_control_is_negotiated_per_hop() {
        let mut rng = StdRng::seed_from_u64(5);
        let response = [1, 2, 1, 31];
        // Asked and answered: the hop's sendme_inc.
        let (r, cm) = v3_hop(&mut rng, HandshakeKind::NtorV3Cc, &response);
        let (circ, ev) = r.unwrap();
        assert_eq!(cm, [1, 1, 0], "CC_REQUEST alone");
        assert_eq!(ev, ClientEvent::HopAdded { hops: 1 });
        assert_eq!(circ.hop_sendme_inc(0), Some(31));
        assert_eq!(circ.hop_format(0), Some(RelayCellFormat::V0));
        assert_eq!(circ.hop_sendme_inc(1), None);
        if super::super::cgo::available() {
            let (r, cm) = v3_hop(&mut rng, HandshakeKind::NtorV3CgoCc, &[1, 2, 1, 20]);
            let (circ, _) = r.unwrap();
            assert_eq!(cm, [2, 1, 0, 3, 2, 2, 6], "CC_REQUEST and Relay=6");
            assert_eq!(circ.hop_sendme_inc(0), Some(20));
            assert_eq!(circ.hop_format(0), Some(RelayCellFormat::V1));
        }
        // Asked, not answered: fixed windows.
        let (r, _) = v3_hop(&mut rng, HandshakeKind::NtorV3Cc, &[0]);
        assert_eq!(r.unwrap().0.hop_sendme_inc(0), None);
        // Not asked: no CC_REQUEST, and an answer anyway is refused.
        let (r, cm) = v3_hop(&mut rng, HandshakeKind::NtorV3, &[0]);
        assert_eq!(cm, [0]);
        assert_eq!(r.unwrap().0.hop_sendme_inc(0), None);
        let (r, _) = v3_hop(&mut rng, HandshakeKind::NtorV3, &response);
        assert_eq!(
            r.unwrap_err(),
            ClientError::Negotiation(NegotiationError::UnrequestedCc)
        );
        // A sendme_inc of 0 (or out of C tor's range) is refused.
        for inc in [0, 100] {
            let (r, _) = v3_hop(&mut rng, HandshakeKind::NtorV3Cc, &[1, 2, 1, inc]);
            assert_eq!(
                r.unwrap_err(),
                ClientError::Negotiation(NegotiationError::BadSendmeInc(inc))
            );
        }
    }

    #[test]
    fn misuse_errors() {
        let mut rng = StdRng::seed_from_u64(2);
        let (_, info) = relay();
        let (mut circ, _) =
            OriginCircuit::create_first_hop(&mut rng, engine(), id(), HandshakeKind::Ntor, &info)
                .unwrap();
        assert_eq!(
            circ.extend(&mut rng, HandshakeKind::Ntor, &info)
                .unwrap_err(),
            ClientError::HandshakeInProgress
        );
        assert_eq!(
            circ.send_raw(&mut rng, 0, RelayCmd::DROP, None, &[])
                .unwrap_err(),
            ClientError::NoSuchHop(0)
        );
        assert_eq!(
            OriginCircuit::create_first_hop(&mut rng, engine(), id(), HandshakeKind::NtorV3, &info)
                .unwrap_err(),
            ClientError::BadHandshakeKind
        );
        let (mut circ, _) = one_hop(&mut rng);
        assert_eq!(
            circ.extend(&mut rng, HandshakeKind::CreateFast, &info)
                .unwrap_err(),
            ClientError::BadHandshakeKind
        );
        assert_eq!(
            circ.send_raw(&mut rng, 0, RelayCmd::DATA, StreamId::new(1), &[0; 499])
                .unwrap_err(),
            ClientError::MessageTooLong
        );
        let d = circ.destroy();
        assert_eq!((d.cmd, d.body[0]), (ChanCmd::DESTROY, 0));
        assert!(circ.is_closed());
        assert_eq!(
            circ.send_raw(&mut rng, 0, RelayCmd::DROP, None, &[])
                .unwrap_err(),
            ClientError::Closed
        );
    }

    #[test]
    fn network_errors_close_the_circuit() {
        let mut rng = StdRng::seed_from_u64(3);
        // A bad AUTH in CREATED2.
        let (keys, info) = relay();
        let (mut circ, cell) =
            OriginCircuit::create_first_hop(&mut rng, engine(), id(), HandshakeKind::Ntor, &info)
                .unwrap();
        let c2 = Create2::decode(&cell.body).unwrap();
        let (mut reply, _) = proto::ntor::server(&mut rng, &keys, &c2.hdata).unwrap();
        reply[40] ^= 1;
        let mut body = Vec::new();
        Created2 {
            hdata: reply.to_vec(),
        }
        .encode(&mut body)
        .unwrap();
        assert_eq!(
            circ.handle_cell(&CircCell::new(id(), ChanCmd::CREATED2, &body)),
            Err(ClientError::Handshake(HandshakeError::BadAuth))
        );
        assert!(circ.is_closed());
        // A relay cell no hop recognizes; an inbound RELAY_EARLY; a second CREATED2.
        for cell in [
            CircCell::new(id(), ChanCmd::RELAY, &[0x77; 509]),
            CircCell::new(id(), ChanCmd::RELAY_EARLY, &[]),
            CircCell::new(id(), ChanCmd::CREATED2, &[]),
        ] {
            let (mut circ, _) = one_hop(&mut rng);
            assert!(circ.handle_cell(&cell).is_err());
            assert!(circ.is_closed());
        }
        // DESTROY is an event, with its reason.
        let (mut circ, _) = one_hop(&mut rng);
        assert_eq!(
            circ.handle_cell(&CircCell::new(id(), ChanCmd::DESTROY, &[8])),
            Ok(ClientEvent::Destroyed {
                reason: DestroyReason::CHANNEL_CLOSED
            })
        );
        assert_eq!(
            circ.handle_cell(&CircCell::new(id(), ChanCmd::PADDING, &[])),
            Err(ClientError::Closed)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary cells never panic the client.
        #[test]
        fn arbitrary_cells_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            fuzz_origin_cells(&data);
        }

        /// Arbitrary cells never panic a client whose hop runs CGO.
        #[test]
        fn arbitrary_cells_never_panic_cgo(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut input = vec![0xc6];
            input.extend_from_slice(&data);
            fuzz_origin_cells(&input);
        }

        /// CircCell framing round-trips.
        #[test]
        fn circ_cell_round_trip(
            circ in 1u32..,
            cmd in prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 9, 10, 11]),
            body in proptest::collection::vec(any::<u8>(), 509),
        ) {
            let cell = CircCell::new(CircId::new(circ).unwrap(), ChanCmd(cmd), &body);
            let mut bytes = Vec::new();
            cell.encode(proto::cell::CircIdLen::Four, &mut bytes).unwrap();
            let (raw, used) = proto::cell::RawCell::decode(&bytes, proto::cell::CircIdLen::Four).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(CircCell::from_raw(&raw), Some(cell));
        }
    }
}
