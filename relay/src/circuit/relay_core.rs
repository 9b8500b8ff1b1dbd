//! The circuits of one data shard, as a relay sees them (tor-spec §5.1-§5.6,
//! <https://spec.torproject.org/tor-spec/circuit-management.html>).
//!
//! # Call order
//!
//! The shard's reactor owns the channels; [`RelayCore`] owns the circuits on them.
//!
//! 1. [`RelayCore::add_channel`] once a channel's link handshake is done (with the peer's proven
//!    identities), or [`RelayCore::handle_channel_opened`] when it answers an
//!    [`Event::OpenChannel`].
//! 2. [`RelayCore::handle_batch`] with every circuit cell the shard read since the last call.
//!    Cells to write go to the caller's `out` (a [`CellSink`]: a `Vec<OutCell>`, or the shard's
//!    encoder that writes them straight into its connections' plaintext), in the order they
//!    must be written (per channel); requests for the reactor (open a channel, close a channel)
//!    land in `events`.
//! 3. [`RelayCore::handle_channel_failed`] when an [`Event::OpenChannel`] could not be satisfied,
//!    [`RelayCore::handle_channel_closed`] when any channel dies.
//!
//! # Batching
//!
//! A batch is processed in chunks of at most [`Limits::batch_cells_max`] cells. Per chunk: first
//! every cell is routed (CREATE2 / CREATED2 answered at once, relay cells copied into the
//! preallocated crypto batch, DESTROY set aside), then the whole chunk's relay crypto runs in ONE
//! [`Engine::process_batch`] call, then the decrypted cells are forwarded (lent to the sink
//! straight from the crypto batch: [`CellSink::put`]) or handled, then replies
//! this relay originates are sealed (after everything already encrypted for the same circuit, so
//! the output order is the keystream order), and last the chunk's DESTROY cells are applied.
//! Relay cells that arrive after a DESTROY in the same chunk are therefore still relayed; the
//! peer should not have sent them, and they die at the next hop with the circuit.
//!
//! Circuits whose client negotiated CGO (`Relay=6`, proposal 359; see [`super::cgo`]) go the
//! same way through a second batch, [`Engine::process_batch_cgo`], run right after the tor1
//! one on the same cell buffer; decrypted cells of both are then acted on in arrival order.
//! Messages this relay originates on a CGO circuit use the v1 relay cell format.
//!
//! # Limits
//!
//! Every table is bounded by [`Limits`]; the overflow policy is always to refuse the new thing:
//! a CREATE2 over a limit gets DESTROY(RESOURCELIMIT), an EXTEND2 over a limit or a circuit whose
//! queue towards an opening channel is full is destroyed with RESOURCELIMIT. Circuit slots, hop
//! states, crypto batch buffers and per-extend queues are allocated once; the forwarding path
//! allocates nothing (the caller's `out` keeps its capacity between calls). The per-cell table
//! lookups (route by channel and circuit id, channel) use keyed aHash (`CellMap`, in `circuit.rs`):
//! circuit ids are the peers' choice, so the hash keys are random per map.
//!
//! # Memory pressure
//!
//! The only cells a [`RelayCore`] holds are those queued towards an opening channel;
//! [`RelayCore::queued_bytes`] counts them. When the shard is over its memory cap it calls
//! [`RelayCore::close_largest_queue`], which, like C tor's `MaxMemInQueues` handler, destroys
//! the circuit holding the most queued data (the one that started queueing first among equals)
//! with RESOURCELIMIT in both directions.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crypto_simd::cgo::{CgoHop, CgoJob, CgoOp, CgoOutcome, CMD_RELAY};
use crypto_simd::{Engine, Job, Op, Outcome, Tor1Hop};
use proto::cell::{ChanCmd, RawCell, BODY_LEN};
use proto::chan_msg::{Create2, Created2, DestroyReason, HandshakeType};
use proto::ids::{CircId, Ed25519Identity, RsaIdentity, StreamId};
use proto::kdf::KeyGenerator;
use proto::keys::RelayKeys;
use proto::link_spec::LinkSpec;
use proto::ntor::NtorServerKeys;
use proto::ntor_v3::{NtorV3ServerKeys, CIRCUIT_EXTEND_VERIFICATION};
use proto::relay_cell::RelayCmd;
use proto::relay_cell_v1::RelayCellFormat;
use proto::relay_msg::{End, EndReason, Extend2, Extended2, Truncated};
use rand_core::CryptoRngCore;
use thiserror::Error;

use super::cgo::RELAY_CAPS;
use super::{cell_map, hop_from, CellMap, ChanId, CircCell, RELAY_EARLY_MAX};

/// Bytes one queued cell holds (its body and its RELAY_EARLY flag).
const QUEUED_CELL_BYTES: usize = std::mem::size_of::<([u8; BODY_LEN], bool)>();

/// How many fresh circuit ids to try on a channel before giving up (tor-spec §5.1.1 leaves
/// the choice to us; a nearly full 31-bit space is a peer holding ~2^31 circuits).
const CIRC_ID_ATTEMPTS_MAX: u32 = 64;

/// The bounds of a [`RelayCore`]; see the module docs for the overflow policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Circuits (relay halves) the shard holds at once; slots are reserved up front.
    pub circuits_max: usize,
    /// Circuits that may use one channel, in either direction.
    pub circuits_per_channel_max: usize,
    /// EXTEND2 requests waiting for a channel to open.
    pub pending_extends_max: usize,
    /// Forward cells queued per circuit while its next channel is opening.
    pub cells_queued_per_extend_max: usize,
    /// Cells per crypto batch; larger input batches are processed in chunks of this size.
    /// Small enough that a chunk's bodies (copied in, decrypted, encoded out) stay in the L1
    /// cache; the kernels gain nothing from more (`chive-bench crypto`: 16 is their best).
    pub batch_cells_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            circuits_max: 8192,
            circuits_per_channel_max: 4096,
            pending_extends_max: 256,
            cells_queued_per_extend_max: 8,
            batch_cells_max: 32,
        }
    }
}

/// What a [`RelayCore`] knows about a channel: given by the reactor once the link handshake has
/// proven the peer's identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChanInfo {
    /// The negotiated link protocol version (4 or 5: 4-byte circuit ids).
    pub link_version: u16,
    /// Whether this relay opened the channel (tor-spec §5.1.1: the initiator's circuit ids
    /// have the most significant bit set).
    pub initiator: bool,
    /// The peer's proven RSA identity; `None` for a client.
    pub rsa_id: Option<RsaIdentity>,
    /// The peer's proven ed25519 identity; `None` for a client or a peer without one.
    pub ed_id: Option<Ed25519Identity>,
}

/// One received circuit cell, as the reactor framed it.
#[derive(Debug, Clone, Copy)]
pub struct InCell<'a> {
    /// The channel it came on.
    pub chan: ChanId,
    /// The cell.
    pub cell: RawCell<'a>,
}

/// One cell to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutCell {
    /// The channel to write it on.
    pub chan: ChanId,
    /// The cell.
    pub cell: CircCell,
}

/// Where a [`RelayCore`] writes the cells to send, in the order they must be written on each
/// channel. A `Vec<OutCell>` collects them; the shard encodes relayed cells straight into its
/// connections' plaintext (so a relayed cell's body is copied once, from the crypto batch).
pub trait CellSink {
    /// Appends a cell whose body is borrowed (relayed cells, from the crypto batch).
    fn put(&mut self, chan: ChanId, circ_id: CircId, cmd: ChanCmd, body: &[u8; BODY_LEN]);

    /// Appends an owned cell.
    fn push(&mut self, cell: OutCell) {
        self.put(cell.chan, cell.cell.circ_id, cell.cell.cmd, &cell.cell.body);
    }
}

impl CellSink for Vec<OutCell> {
    fn put(&mut self, chan: ChanId, circ_id: CircId, cmd: ChanCmd, body: &[u8; BODY_LEN]) {
        Vec::push(
            self,
            OutCell {
                chan,
                cell: CircCell {
                    circ_id,
                    cmd,
                    body: *body,
                },
            },
        );
    }

    fn push(&mut self, cell: OutCell) {
        Vec::push(self, cell);
    }
}

/// Names one pending EXTEND2 between [`Event::OpenChannel`] and the reactor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    index: u32,
    gen: u32,
}

/// What the shard's reactor must do for the circuits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a channel to the relay with these identities (and prove them), then call
    /// [`RelayCore::handle_channel_opened`] or [`RelayCore::handle_channel_failed`].
    OpenChannel {
        /// The request to answer.
        request: RequestId,
        /// The RSA identity the channel must prove.
        rsa_id: RsaIdentity,
        /// The ed25519 identity the channel must prove, if the client named one.
        ed_id: Option<Ed25519Identity>,
        /// Every link specifier of the EXTEND2 (addresses included), as sent.
        link_specs: Vec<LinkSpec>,
    },
    /// The peer broke the channel-level protocol (a circuit command on circuit id 0): close it,
    /// then call [`RelayCore::handle_channel_closed`].
    CloseChannel {
        /// The channel.
        chan: ChanId,
    },
}

/// Misuse of the [`RelayCore`] API (never caused by network input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RelayCoreError {
    /// A [`Limits`] field is zero or too large to index with `u32`.
    #[error("limit {0} must be between 1 and u32::MAX")]
    BadLimit(&'static str),
}

/// Counters for the control shard's metrics (no logging on the cell path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cells given to [`RelayCore::handle_batch`].
    pub cells_in: u64,
    /// Calls to [`Engine::process_batch`].
    pub crypto_batches: u64,
    /// Relay cells passed on unchanged in either direction.
    pub cells_relayed: u64,
    /// Relay cells addressed to this relay.
    pub cells_recognized: u64,
    /// Cells dropped: unknown circuit or channel, circuit id in use, or a command a circuit
    /// does not take.
    pub cells_dropped: u64,
    /// Circuits created by CREATE2 / CREATE_FAST.
    pub circuits_created: u64,
    /// Circuits destroyed, for any reason.
    pub circuits_destroyed: u64,
    /// CREATE2 / CREATE_FAST cells refused with DESTROY.
    pub creates_refused: u64,
    /// Circuits closed for a protocol violation.
    pub protocol_violations: u64,
    /// Circuits closed with RESOURCELIMIT because the shard was over its memory cap.
    pub circuits_oom_closed: u64,
}

/// Which half of a circuit a (channel, circuit id) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Towards the origin: the half the circuit was created on.
    Prev,
    /// Away from the origin: the half we created by extending.
    Next,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    slot: u32,
    side: Side,
}

/// The state of a circuit's next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Not extended.
    None,
    /// EXTEND2 received; waiting for the reactor to open a channel.
    Opening { request: RequestId },
    /// CREATE2 sent; waiting for CREATED2.
    Creating { chan: ChanId, id: CircId },
    /// EXTENDED2 sent back.
    Open { chan: ChanId, id: CircId },
}

#[derive(Debug, Clone)]
struct Circuit {
    /// Bumped whenever the slot is freed, so stale references see it.
    gen: u32,
    live: bool,
    prev_chan: ChanId,
    prev_id: CircId,
    next: Next,
    relay_early_seen: u8,
}

#[derive(Debug)]
struct Chan {
    info: ChanInfo,
    circuits: usize,
    id_counter: u32,
}

/// An EXTEND2 waiting for its channel; allocated at start and reused.
#[derive(Debug)]
struct PendingExtend {
    gen: u32,
    in_use: bool,
    slot: u32,
    circ_gen: u32,
    htype: HandshakeType,
    hdata: Vec<u8>,
    rsa_id: RsaIdentity,
    ed_id: Option<Ed25519Identity>,
    /// Forward cells (body, arrived as RELAY_EARLY) for the next hop, in order.
    queue: Vec<([u8; BODY_LEN], bool)>,
    /// When the first cell of `queue` was queued (a per-core sequence number): the OOM
    /// policy closes the oldest queue among equally large ones.
    queued_since: u64,
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    Forward { early: bool },
    Backward,
}

#[derive(Debug, Clone, Copy)]
struct JobMeta {
    slot: u32,
    gen: u32,
    dir: Dir,
    /// Index of the cell's job in `jobs` (tor1) or `cgo_jobs` (CGO).
    job: u32,
    cgo: bool,
}

/// The circuits of one shard; see the module docs for the call order.
pub struct RelayCore {
    engine: Engine,
    limits: Limits,
    ntor: NtorServerKeys,
    ntor_v3: NtorV3ServerKeys,
    circs: Vec<Circuit>,
    hops: Vec<Tor1Hop>,
    /// Per slot: for a circuit whose client asked for `Relay=6`, the index of its CGO state in
    /// `cgo_hops` (its tor1 entry in `hops` is then unused); `None` for tor1 circuits.
    cgo_of: Vec<Option<u32>>,
    /// CGO states, what the CGO batch indexes; allocated as CGO circuits come.
    cgo_hops: Vec<CgoHop>,
    /// Free indices of `cgo_hops` (their keys wiped).
    cgo_free: Vec<u32>,
    /// Indices freed during the current chunk: a queued job may still run on them.
    cgo_freed: Vec<u32>,
    cgo_jobs: Vec<CgoJob>,
    cgo_outcomes: Vec<CgoOutcome>,
    free: Vec<u32>,
    /// Slots freed during the current chunk: not reused before its crypto results are applied.
    freed: Vec<u32>,
    /// Looked up for every cell: keyed hashing, see [`CellMap`].
    routes: CellMap<(ChanId, CircId), Route>,
    chans: CellMap<ChanId, Chan>,
    /// The channel of the last cell [`RelayCore::route`] found in `chans` during this
    /// [`RelayCore::handle_batch`] call (channels are added and removed only between calls):
    /// a batch's cells come channel by channel, so most need no lookup.
    known_chan: Option<ChanId>,
    by_rsa: HashMap<RsaIdentity, ChanId>,
    by_ed: HashMap<Ed25519Identity, ChanId>,
    pending: Vec<PendingExtend>,
    pending_free: Vec<u32>,
    batch_cells: Vec<[u8; BODY_LEN]>,
    jobs: Vec<Job>,
    meta: Vec<JobMeta>,
    outcomes: Vec<Outcome>,
    replies: Vec<(u32, u32, [u8; BODY_LEN])>,
    destroys: Vec<(ChanId, CircId)>,
    scratch_slots: Vec<(u32, Side)>,
    stats: Stats,
    live: usize,
    echo_drop: bool,
    /// Bytes of all pending queues together.
    queued_bytes: usize,
    /// Source of [`PendingExtend::queued_since`].
    queue_seq: u64,
    /// Circuit ids held on a channel for circuits of another shard ([`RelayCore::reserve_circ_id`]).
    reserved: HashSet<(ChanId, CircId)>,
    /// Addresses a channel is canonical for ([`RelayCore::set_channel_addrs`]).
    canonical_addrs: HashMap<ChanId, Vec<IpAddr>>,
}

impl std::fmt::Debug for RelayCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCore")
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RelayCore {
    /// Bytes one cell queued towards an opening channel counts in
    /// [`RelayCore::queued_bytes`].
    pub const QUEUED_CELL_BYTES: usize = QUEUED_CELL_BYTES;

    /// A shard's circuit state for the relay with `keys`, with every table allocated.
    pub fn new(keys: &RelayKeys, engine: Engine, limits: Limits) -> Result<Self, RelayCoreError> {
        Self::from_server_keys(
            keys.ntor_server_keys(None),
            keys.ntor_v3_server_keys(None),
            engine,
            limits,
        )
    }

    /// As [`RelayCore::new`], from the handshake keys alone (also during onion-key rotation,
    /// when they carry the previous key).
    pub fn from_server_keys(
        ntor: NtorServerKeys,
        ntor_v3: NtorV3ServerKeys,
        engine: Engine,
        limits: Limits,
    ) -> Result<Self, RelayCoreError> {
        for (v, name) in [
            (limits.circuits_max, "circuits_max"),
            (limits.circuits_per_channel_max, "circuits_per_channel_max"),
            (limits.pending_extends_max, "pending_extends_max"),
            (
                limits.cells_queued_per_extend_max,
                "cells_queued_per_extend_max",
            ),
            (limits.batch_cells_max, "batch_cells_max"),
        ] {
            if v == 0 || u32::try_from(v).is_err() {
                return Err(RelayCoreError::BadLimit(name));
            }
        }
        let pending = (0..limits.pending_extends_max)
            .map(|_| PendingExtend {
                gen: 0,
                in_use: false,
                slot: 0,
                circ_gen: 0,
                htype: HandshakeType::NTOR,
                hdata: Vec::with_capacity(proto::chan_msg::CREATE2_HDATA_MAX),
                rsa_id: RsaIdentity::from_bytes([0; 20]),
                ed_id: None,
                queue: Vec::with_capacity(limits.cells_queued_per_extend_max),
                queued_since: 0,
            })
            .collect();
        let n = limits.batch_cells_max;
        Ok(RelayCore {
            engine,
            limits,
            ntor,
            ntor_v3,
            circs: Vec::with_capacity(limits.circuits_max),
            hops: Vec::with_capacity(limits.circuits_max),
            cgo_of: Vec::with_capacity(limits.circuits_max),
            cgo_hops: Vec::new(),
            cgo_free: Vec::new(),
            cgo_freed: Vec::new(),
            cgo_jobs: Vec::with_capacity(n),
            cgo_outcomes: vec![CgoOutcome::Done; n],
            free: Vec::with_capacity(limits.circuits_max),
            freed: Vec::with_capacity(limits.circuits_max),
            // Grown as circuits come (a rehash now and then on the control path): a table
            // sized for the most circuits spreads a few busy routes over many cache lines.
            routes: cell_map(0),
            chans: cell_map(0),
            known_chan: None,
            by_rsa: HashMap::new(),
            by_ed: HashMap::new(),
            pending,
            pending_free: (0..limits.pending_extends_max as u32).rev().collect(),
            batch_cells: vec![[0u8; BODY_LEN]; n],
            jobs: Vec::with_capacity(n),
            meta: Vec::with_capacity(n),
            outcomes: vec![Outcome::Done; n],
            replies: Vec::with_capacity(n),
            destroys: Vec::with_capacity(n),
            scratch_slots: Vec::with_capacity(limits.circuits_max),
            stats: Stats::default(),
            live: 0,
            echo_drop: false,
            queued_bytes: 0,
            queue_seq: 0,
            reserved: HashSet::new(),
            canonical_addrs: HashMap::new(),
        })
    }

    /// Test networks only: answer every RELAY_DROP addressed to this relay with a RELAY_DROP
    /// carrying the same data, so that a test can check every byte on both directions of a
    /// circuit before exits exist. Never enable this on a public relay: it reflects traffic.
    pub fn set_echo_drop_for_tests(&mut self, on: bool) {
        self.echo_drop = on;
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Live circuits.
    pub fn circuits(&self) -> usize {
        self.live
    }

    /// Replaces the handshake keys (onion-key rotation: pass the previous key along for the
    /// grace period). Circuits already built are not affected.
    pub fn set_server_keys(&mut self, ntor: NtorServerKeys, ntor_v3: NtorV3ServerKeys) {
        self.ntor = ntor;
        self.ntor_v3 = ntor_v3;
    }

    /// Circuits using `chan`, in either direction.
    pub fn channel_circuits(&self, chan: ChanId) -> usize {
        self.chans.get(&chan).map_or(0, |c| c.circuits)
    }

    /// Registers a channel whose link handshake finished. Known channels are left as they are.
    /// The first channel proving an identity is the one EXTEND2 reuses for it.
    pub fn add_channel(&mut self, chan: ChanId, info: ChanInfo) {
        if self.chans.contains_key(&chan) {
            return;
        }
        self.chans.insert(
            chan,
            Chan {
                info,
                circuits: 0,
                id_counter: 0,
            },
        );
        if let Some(rsa) = info.rsa_id {
            self.by_rsa.entry(rsa).or_insert(chan);
        }
        if let Some(ed) = info.ed_id {
            self.by_ed.entry(ed).or_insert(chan);
        }
    }

    /// Holds a fresh circuit id on `chan` for a circuit whose other half lives on another shard
    /// (the shard owning `chan` relays its cells): this core never allocates it and counts it
    /// against [`Limits::circuits_per_channel_max`] until [`RelayCore::release_circ_id`].
    pub fn reserve_circ_id(&mut self, chan: ChanId) -> Option<CircId> {
        let id = self.alloc_circ_id(chan)?;
        self.reserved.insert((chan, id));
        if let Some(ch) = self.chans.get_mut(&chan) {
            ch.circuits += 1;
        }
        Some(id)
    }

    /// Gives back an id from [`RelayCore::reserve_circ_id`].
    pub fn release_circ_id(&mut self, chan: ChanId, id: CircId) {
        if self.reserved.remove(&(chan, id)) {
            if let Some(ch) = self.chans.get_mut(&chan) {
                ch.circuits = ch.circuits.saturating_sub(1);
            }
        }
    }

    /// The addresses `chan`'s peer is known at (the address we see it at and those its NETINFO
    /// claimed). EXTEND2 reuses the channel only if one of its link-specifier addresses is
    /// among them (tor-spec §5.3.1, canonical channels); a channel without addresses set is
    /// reused on identity alone.
    pub fn set_channel_addrs(&mut self, chan: ChanId, addrs: Vec<IpAddr>) {
        if self.chans.contains_key(&chan) {
            self.canonical_addrs.insert(chan, addrs);
        }
    }

    /// Processes received cells; see the module docs for the order of effects.
    pub fn handle_batch(
        &mut self,
        rng: &mut impl CryptoRngCore,
        cells: &[InCell<'_>],
        out: &mut impl CellSink,
        events: &mut Vec<Event>,
    ) {
        self.known_chan = None;
        for chunk in cells.chunks(self.limits.batch_cells_max) {
            self.run_chunk(rng, chunk, out, events);
        }
    }

    /// Bytes of cells queued towards opening channels, over all circuits (kept up to date on
    /// every queue change; no walk).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The OOM policy's circuit step: destroys the circuit with the most cells queued towards
    /// an opening channel (the one whose queue started first among equals), with DESTROY
    /// (RESOURCELIMIT) towards its origin, and returns the bytes freed; `None` when no circuit
    /// has anything queued.
    pub fn close_largest_queue(&mut self, out: &mut impl CellSink) -> Option<usize> {
        let (idx, len) = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.in_use && !p.queue.is_empty())
            // Largest first; among equals the smallest sequence number (oldest queue).
            .max_by(|(_, a), (_, b)| {
                a.queue
                    .len()
                    .cmp(&b.queue.len())
                    .then(b.queued_since.cmp(&a.queued_since))
            })
            .map(|(i, p)| (i, p.queue.len()))?;
        let (slot, circ_gen) = {
            let p = self.pending.get(idx)?;
            (p.slot, p.circ_gen)
        };
        if self.is_live(slot, circ_gen) {
            // The next hop is still opening: there is no one to send a DESTROY to that way.
            self.close(
                slot,
                Some(DestroyReason::RESOURCELIMIT),
                Some(DestroyReason::RESOURCELIMIT),
                out,
            );
            self.stats.circuits_oom_closed += 1;
        }
        self.release_pending(idx);
        self.finish_call();
        Some(len * QUEUED_CELL_BYTES)
    }

    /// The channel asked for by `request` is open (or was already): sends the CREATE2 and any
    /// cells queued for it. `chan` is registered with `info` if it is new. A channel whose
    /// identities differ from the EXTEND2's destroys the circuit (OR_IDENTITY).
    pub fn handle_channel_opened(
        &mut self,
        request: RequestId,
        chan: ChanId,
        info: ChanInfo,
        out: &mut impl CellSink,
    ) {
        self.add_channel(chan, info);
        let Some(idx) = self.pending_index(request) else {
            return;
        };
        let (slot, circ_gen, rsa, ed, htype) = {
            let p = &self.pending[idx];
            (p.slot, p.circ_gen, p.rsa_id, p.ed_id, p.htype)
        };
        if !self.is_live(slot, circ_gen) {
            self.release_pending(idx);
            return;
        }
        let proven = self.chans.get(&chan).map(|c| c.info);
        let matches =
            proven.is_some_and(|i| i.rsa_id == Some(rsa) && (ed.is_none() || i.ed_id == ed));
        if !matches {
            self.close(slot, Some(DestroyReason::OR_IDENTITY), None, out);
            self.finish_call();
            return;
        }
        let hdata = std::mem::take(&mut self.pending[idx].hdata);
        let sent = self.send_create(slot, chan, htype, &hdata, out);
        self.pending[idx].hdata = hdata;
        if let Some(id) = sent {
            for (body, early) in &self.pending[idx].queue {
                let cmd = if *early {
                    ChanCmd::RELAY_EARLY
                } else {
                    ChanCmd::RELAY
                };
                out.push(OutCell {
                    chan,
                    cell: CircCell {
                        circ_id: id,
                        cmd,
                        body: *body,
                    },
                });
                self.stats.cells_relayed += 1;
            }
        }
        self.release_pending(idx);
        self.finish_call();
    }

    /// The channel asked for by `request` could not be opened: the circuit is destroyed
    /// towards its origin with CONNECTFAILED.
    pub fn handle_channel_failed(&mut self, request: RequestId, out: &mut impl CellSink) {
        let Some(idx) = self.pending_index(request) else {
            return;
        };
        let (slot, circ_gen) = (self.pending[idx].slot, self.pending[idx].circ_gen);
        if self.is_live(slot, circ_gen) {
            self.close(slot, Some(DestroyReason::CONNECTFAILED), None, out);
        } else {
            self.release_pending(idx);
        }
        self.finish_call();
    }

    /// A channel died: every circuit on it is destroyed, and the other side of each is sent a
    /// DESTROY with CHANNEL_CLOSED.
    pub fn handle_channel_closed(&mut self, chan: ChanId, out: &mut impl CellSink) {
        let mut slots = std::mem::take(&mut self.scratch_slots);
        slots.clear();
        slots.extend(
            self.routes
                .iter()
                .filter(|((c, _), _)| *c == chan)
                .map(|(_, r)| (r.slot, r.side)),
        );
        for &(slot, side) in &slots {
            match side {
                Side::Prev => self.close_from(slot, Side::Prev, DestroyReason::CHANNEL_CLOSED, out),
                Side::Next => self.close_from(slot, Side::Next, DestroyReason::CHANNEL_CLOSED, out),
            }
        }
        self.scratch_slots = slots;
        self.reserved.retain(|(c, _)| *c != chan);
        self.canonical_addrs.remove(&chan);
        if let Some(c) = self.chans.remove(&chan) {
            if let Some(rsa) = c.info.rsa_id {
                if self.by_rsa.get(&rsa) == Some(&chan) {
                    self.by_rsa.remove(&rsa);
                }
            }
            if let Some(ed) = c.info.ed_id {
                if self.by_ed.get(&ed) == Some(&chan) {
                    self.by_ed.remove(&ed);
                }
            }
            // Another open channel to the same peer becomes the one to reuse.
            for (&id, other) in &self.chans {
                if let Some(rsa) = other.info.rsa_id {
                    self.by_rsa.entry(rsa).or_insert(id);
                }
                if let Some(ed) = other.info.ed_id {
                    self.by_ed.entry(ed).or_insert(id);
                }
            }
        }
        self.finish_call();
    }

    // ----------------------------------------------------------------------------------------
    // The batch

    fn run_chunk(
        &mut self,
        rng: &mut impl CryptoRngCore,
        chunk: &[InCell<'_>],
        out: &mut impl CellSink,
        events: &mut Vec<Event>,
    ) {
        self.jobs.clear();
        self.cgo_jobs.clear();
        self.meta.clear();
        self.replies.clear();
        self.destroys.clear();
        for c in chunk {
            self.stats.cells_in += 1;
            self.route(rng, c, out, events);
        }
        let n = self.jobs.len();
        if n > 0 {
            self.stats.crypto_batches += 1;
            let r = self.engine.process_batch(
                &mut self.hops,
                &mut self.batch_cells[..self.meta.len()],
                &self.jobs,
                &mut self.outcomes[..n],
            );
            if r.is_err() {
                // Indices come from live slots and this chunk's cells: only a bug gets here.
                self.close_batch(false, out);
            }
        }
        let n = self.cgo_jobs.len();
        if n > 0 {
            self.stats.crypto_batches += 1;
            let r = self.engine.process_batch_cgo(
                &mut self.cgo_hops,
                &mut self.batch_cells[..self.meta.len()],
                &self.cgo_jobs,
                &mut self.cgo_outcomes[..n],
            );
            if r.is_err() {
                self.close_batch(true, out);
            }
        }
        // In arrival order, whichever batch a cell was in (closed circuits are skipped).
        for i in 0..self.meta.len() {
            self.after_crypto(rng, i, out, events);
        }
        let replies = std::mem::take(&mut self.replies);
        for (slot, gen, mut body) in replies.iter().copied() {
            if !self.is_live(slot, gen) {
                continue;
            }
            let Some(c) = self.circs.get(slot as usize) else {
                continue;
            };
            let (chan, id) = (c.prev_chan, c.prev_id);
            self.seal_backward(slot, &mut body);
            out.push(OutCell {
                chan,
                cell: CircCell {
                    circ_id: id,
                    cmd: ChanCmd::RELAY,
                    body,
                },
            });
        }
        self.replies = replies;
        let destroys = std::mem::take(&mut self.destroys);
        for &(chan, id) in &destroys {
            if let Some(r) = self.routes.get(&(chan, id)).copied() {
                // tor-spec §5.4: a DESTROY's reason is not propagated; DESTROYED replaces it.
                self.close_from(r.slot, r.side, DestroyReason::DESTROYED, out);
            } else {
                self.stats.cells_dropped += 1;
            }
        }
        self.destroys = destroys;
        self.finish_call();
    }

    /// Closes every circuit with a cell in the tor1 (`cgo` false) or CGO batch that failed.
    fn close_batch(&mut self, cgo: bool, out: &mut impl CellSink) {
        for i in 0..self.meta.len() {
            let m = self.meta[i];
            if m.cgo == cgo && self.is_live(m.slot, m.gen) {
                self.close(
                    m.slot,
                    Some(DestroyReason::INTERNAL),
                    Some(DestroyReason::INTERNAL),
                    out,
                );
            }
        }
    }

    /// Pass 1: routes one cell.
    fn route(
        &mut self,
        rng: &mut impl CryptoRngCore,
        c: &InCell<'_>,
        out: &mut impl CellSink,
        events: &mut Vec<Event>,
    ) {
        let raw = &c.cell;
        if self.known_chan != Some(c.chan) {
            if !self.chans.contains_key(&c.chan) {
                self.stats.cells_dropped += 1;
                return;
            }
            self.known_chan = Some(c.chan);
        }
        let cmd = raw.cmd;
        let is_circ_cmd = matches!(
            cmd,
            ChanCmd::CREATE
                | ChanCmd::CREATE2
                | ChanCmd::CREATE_FAST
                | ChanCmd::CREATED
                | ChanCmd::CREATED2
                | ChanCmd::CREATED_FAST
                | ChanCmd::RELAY
                | ChanCmd::RELAY_EARLY
                | ChanCmd::DESTROY
        );
        if !is_circ_cmd {
            // Padding and link-level cells are the link layer's business.
            self.stats.cells_dropped += 1;
            return;
        }
        let Some(id) = raw.circ_id else {
            events.push(Event::CloseChannel { chan: c.chan });
            return;
        };
        let body = raw.body.as_slice();
        match cmd {
            ChanCmd::CREATE | ChanCmd::CREATE2 | ChanCmd::CREATE_FAST => {
                self.handle_create(rng, c.chan, id, cmd, body, out)
            }
            ChanCmd::DESTROY => self.destroys.push((c.chan, id)),
            _ => {
                let Some(r) = self.routes.get(&(c.chan, id)).copied() else {
                    self.stats.cells_dropped += 1;
                    return;
                };
                match (cmd, r.side) {
                    (ChanCmd::RELAY | ChanCmd::RELAY_EARLY, side) => {
                        let Ok(fixed) = <&[u8; BODY_LEN]>::try_from(body) else {
                            self.stats.cells_dropped += 1;
                            return;
                        };
                        let early = cmd == ChanCmd::RELAY_EARLY;
                        self.queue_relay(r.slot, side, early, fixed, out)
                    }
                    (ChanCmd::CREATED2, Side::Next) => self.handle_created2(rng, r.slot, body, out),
                    _ => {
                        // CREATED* from the origin side, or a CREATED/CREATED_FAST answering
                        // a CREATE2 we never sent as such.
                        self.violation(r.slot, out);
                    }
                }
            }
        }
    }

    fn handle_create(
        &mut self,
        rng: &mut impl CryptoRngCore,
        chan: ChanId,
        id: CircId,
        cmd: ChanCmd,
        body: &[u8],
        out: &mut impl CellSink,
    ) {
        // tor-spec §5.3: a CREATE on a circuit id in use is dropped.
        if self.routes.contains_key(&(chan, id)) {
            self.stats.cells_dropped += 1;
            return;
        }
        let Some(ch) = self.chans.get(&chan) else {
            return;
        };
        let refuse = |stats: &mut Stats, reason: DestroyReason| {
            stats.creates_refused += 1;
            destroy_cell(chan, id, reason)
        };
        // tor-spec §5.1.1: the channel's initiator picks ids with the MSB set, the other side
        // ids without; C tor answers the wrong one with DESTROY(PROTOCOL).
        let peer_initiated = !ch.info.initiator;
        if id.high_bit() != peer_initiated {
            out.push(refuse(&mut self.stats, DestroyReason::PROTOCOL));
            return;
        }
        if ch.circuits >= self.limits.circuits_per_channel_max
            || (self.free.is_empty() && self.circs.len() >= self.limits.circuits_max)
        {
            out.push(refuse(&mut self.stats, DestroyReason::RESOURCELIMIT));
            return;
        }
        let mut reply = [0u8; BODY_LEN];
        let (reply_cmd, kg, cgo) = match cmd {
            ChanCmd::CREATE_FAST => match proto::create_fast::server(rng, body) {
                Ok((r, kg)) => {
                    reply[..r.len()].copy_from_slice(&r);
                    (ChanCmd::CREATED_FAST, kg, false)
                }
                Err(_) => {
                    out.push(refuse(&mut self.stats, DestroyReason::PROTOCOL));
                    return;
                }
            },
            ChanCmd::CREATE2 => match self.server_handshake(rng, body) {
                Some((hdata, kg, cgo)) => {
                    let mut v = Vec::with_capacity(2 + hdata.len());
                    if (Created2 { hdata }).encode(&mut v).is_err() {
                        out.push(refuse(&mut self.stats, DestroyReason::INTERNAL));
                        return;
                    }
                    let n = v.len().min(BODY_LEN);
                    reply[..n].copy_from_slice(&v[..n]);
                    (ChanCmd::CREATED2, kg, cgo)
                }
                None => {
                    out.push(refuse(&mut self.stats, DestroyReason::PROTOCOL));
                    return;
                }
            },
            // TAP (CREATE) is not supported: C tor 0.4.9 refuses it too.
            _ => {
                out.push(refuse(&mut self.stats, DestroyReason::PROTOCOL));
                return;
            }
        };
        let Some(hop) = hop_from(&kg) else {
            out.push(refuse(&mut self.stats, DestroyReason::INTERNAL));
            return;
        };
        let cgo = if cgo {
            let Some(c) = kg.cgo_keys().ok().and_then(|k| super::cgo::relay_hop(&k)) else {
                out.push(refuse(&mut self.stats, DestroyReason::INTERNAL));
                return;
            };
            Some(c)
        } else {
            None
        };
        let Some(slot) = self.alloc_slot(hop, cgo, chan, id) else {
            out.push(refuse(&mut self.stats, DestroyReason::RESOURCELIMIT));
            return;
        };
        self.routes.insert(
            (chan, id),
            Route {
                slot,
                side: Side::Prev,
            },
        );
        if let Some(ch) = self.chans.get_mut(&chan) {
            ch.circuits += 1;
        }
        self.stats.circuits_created += 1;
        self.live += 1;
        out.push(OutCell {
            chan,
            cell: CircCell {
                circ_id: id,
                cmd: reply_cmd,
                body: reply,
            },
        });
    }

    /// Runs the CREATE2 handshake; `None` for an unknown type or a bad onionskin.
    fn server_handshake(
        &self,
        rng: &mut impl CryptoRngCore,
        body: &[u8],
    ) -> Option<(Vec<u8>, KeyGenerator, bool)> {
        let c = Create2::decode(body).ok()?;
        match c.htype {
            HandshakeType::NTOR => {
                let (reply, kg) = proto::ntor::server(rng, &self.ntor, &c.hdata).ok()?;
                Some((reply.to_vec(), kg, false))
            }
            HandshakeType::NTOR_V3 => {
                let mut reply = Vec::new();
                let mut cgo = false;
                // A subprotocol request for Relay=6 is accepted when this build has CGO and
                // refused (no reply: DESTROY) for anything else. No extension is answered: an
                // empty extension list (one zero byte, as C tor expects) declines congestion
                // control and implies acceptance of the request.
                let (kg, _client_msg) = proto::ntor_v3::server(
                    rng,
                    &self.ntor_v3,
                    CIRCUIT_EXTEND_VERIFICATION,
                    &c.hdata,
                    |cm| {
                        let n = proto::ntor_v3::negotiate_server(cm, RELAY_CAPS).ok()?;
                        cgo = n.cgo;
                        Some(vec![0])
                    },
                    &mut reply,
                )
                .ok()?;
                Some((reply, kg, cgo))
            }
            _ => None,
        }
    }

    fn handle_created2(
        &mut self,
        rng: &mut impl CryptoRngCore,
        slot: u32,
        body: &[u8],
        out: &mut impl CellSink,
    ) {
        let Some(c) = self.circs.get(slot as usize) else {
            return;
        };
        let Next::Creating { chan, id } = c.next else {
            self.violation(slot, out);
            return;
        };
        let Ok(created) = Created2::decode(body) else {
            self.violation(slot, out);
            return;
        };
        let mut data = Vec::with_capacity(2 + created.hdata.len());
        let mut cell = [0u8; BODY_LEN];
        let format = self.format(slot);
        let ok = (Extended2 {
            hdata: created.hdata,
        })
        .encode(&mut data)
        .is_ok()
            && format
                .build(&mut cell, RelayCmd::EXTENDED2, None, &data, rng)
                .is_ok();
        if !ok {
            // A CREATED2 reply too long to fit in EXTENDED2.
            self.violation(slot, out);
            return;
        }
        let (prev_chan, prev_id) = (c.prev_chan, c.prev_id);
        self.seal_backward(slot, &mut cell);
        if let Some(c) = self.circs.get_mut(slot as usize) {
            c.next = Next::Open { chan, id };
        }
        out.push(OutCell {
            chan: prev_chan,
            cell: CircCell {
                circ_id: prev_id,
                cmd: ChanCmd::RELAY,
                body: cell,
            },
        });
    }

    fn queue_relay(
        &mut self,
        slot: u32,
        side: Side,
        early: bool,
        body: &[u8; BODY_LEN],
        out: &mut impl CellSink,
    ) {
        let Some(c) = self.circs.get_mut(slot as usize) else {
            return;
        };
        let dir = match side {
            Side::Prev => {
                if early {
                    c.relay_early_seen = c.relay_early_seen.saturating_add(1);
                    // tor-spec §5.6: more than 8 RELAY_EARLY cells close the circuit.
                    if c.relay_early_seen > RELAY_EARLY_MAX {
                        self.violation(slot, out);
                        return;
                    }
                }
                Dir::Forward { early }
            }
            Side::Next => {
                // tor-spec §5.6: inbound RELAY_EARLY MUST close the circuit; so must relay
                // cells before the next hop has answered CREATE2.
                if early || matches!(c.next, Next::Creating { .. }) {
                    self.violation(slot, out);
                    return;
                }
                Dir::Backward
            }
        };
        let gen = c.gen;
        let i = self.meta.len();
        let Some(dst) = self.batch_cells.get_mut(i) else {
            return;
        };
        *dst = *body;
        let cgo = self.cgo_of.get(slot as usize).copied().flatten();
        let job = if let Some(hop) = cgo {
            let (cmd, op) = match dir {
                Dir::Forward { early: true } => (ChanCmd::RELAY_EARLY.0, CgoOp::RelayForward),
                Dir::Forward { early: false } => (CMD_RELAY, CgoOp::RelayForward),
                Dir::Backward => (CMD_RELAY, CgoOp::RelayBackward),
            };
            self.cgo_jobs.push(CgoJob {
                hop,
                cell: i as u32,
                cmd,
                op,
            });
            self.cgo_jobs.len() - 1
        } else {
            let op = match dir {
                Dir::Forward { .. } => Op::RelayRecvForward,
                Dir::Backward => Op::RelayPassBackward,
            };
            self.jobs.push(Job {
                hop: slot,
                cell: i as u32,
                op,
            });
            self.jobs.len() - 1
        };
        self.meta.push(JobMeta {
            slot,
            gen,
            dir,
            job: job as u32,
            cgo: cgo.is_some(),
        });
    }

    /// Pass 2: acts on one decrypted cell.
    fn after_crypto(
        &mut self,
        rng: &mut impl CryptoRngCore,
        i: usize,
        out: &mut impl CellSink,
        events: &mut Vec<Event>,
    ) {
        let Some(&m) = self.meta.get(i) else {
            return;
        };
        let outcome = if m.cgo {
            match self.cgo_outcomes.get(m.job as usize) {
                Some(CgoOutcome::Done) => Outcome::Done,
                Some(CgoOutcome::NotRecognized) => Outcome::NotRecognized,
                // The SENDME tag is not kept: this relay has no circuit windows yet.
                Some(CgoOutcome::Recognized(_)) => Outcome::Recognized([0; 20]),
                // Relay ops on relay hops give neither; treat as the crypto failing.
                _ => Outcome::Sealed([0; 20]),
            }
        } else {
            match self.outcomes.get(m.job as usize) {
                Some(&o) => o,
                None => return,
            }
        };
        if !self.is_live(m.slot, m.gen) {
            return;
        }
        let (Some(c), Some(body)) = (self.circs.get(m.slot as usize), self.batch_cells.get(i))
        else {
            return;
        };
        // Relayed cells go from the crypto batch straight to `out` (no copy on the way).
        match (m.dir, outcome) {
            (Dir::Backward, _) => {
                self.stats.cells_relayed += 1;
                out.put(c.prev_chan, c.prev_id, ChanCmd::RELAY, body);
            }
            (Dir::Forward { early }, Outcome::NotRecognized) => self.forward(m.slot, early, i, out),
            (Dir::Forward { early }, Outcome::Recognized(_)) => {
                self.stats.cells_recognized += 1;
                let body = *body;
                self.handle_recognized(rng, m.slot, early, &body, out, events)
            }
            (Dir::Forward { .. }, _) => self.close(
                m.slot,
                Some(DestroyReason::INTERNAL),
                Some(DestroyReason::INTERNAL),
                out,
            ),
        }
    }

    /// Passes on the decrypted cell `i` of the batch.
    fn forward(&mut self, slot: u32, early: bool, i: usize, out: &mut impl CellSink) {
        let (Some(c), Some(body)) = (self.circs.get(slot as usize), self.batch_cells.get(i)) else {
            return;
        };
        let cmd = if early {
            ChanCmd::RELAY_EARLY
        } else {
            ChanCmd::RELAY
        };
        match c.next {
            Next::Open { chan, id } | Next::Creating { chan, id } => {
                self.stats.cells_relayed += 1;
                out.put(chan, id, cmd, body);
            }
            Next::Opening { request } => {
                let body = *body;
                let max = self.limits.cells_queued_per_extend_max;
                let seq = self.queue_seq;
                let queued = self.pending_index(request).and_then(|idx| {
                    let p = self.pending.get_mut(idx)?;
                    if p.queue.is_empty() {
                        p.queued_since = seq;
                    }
                    (p.queue.len() < max).then(|| p.queue.push((body, early)))
                });
                if queued.is_some() {
                    self.queue_seq = seq.wrapping_add(1);
                    self.queued_bytes += QUEUED_CELL_BYTES;
                }
                if queued.is_none() {
                    self.close(
                        slot,
                        Some(DestroyReason::RESOURCELIMIT),
                        Some(DestroyReason::RESOURCELIMIT),
                        out,
                    );
                }
            }
            // tor-spec §5.5.2.2: an unrecognized cell at the end of the circuit is an error.
            Next::None => self.violation(slot, out),
        }
    }

    fn handle_recognized(
        &mut self,
        rng: &mut impl CryptoRngCore,
        slot: u32,
        early: bool,
        body: &[u8; BODY_LEN],
        out: &mut impl CellSink,
        events: &mut Vec<Event>,
    ) {
        // A v1 cell with an unknown command fails here and closes the circuit (C tor does the
        // same); a v0 one decodes and is dropped below.
        let Ok(view) = self.format(slot).decode(body) else {
            self.violation(slot, out);
            return;
        };
        match view.cmd {
            RelayCmd::DROP => {
                if self.echo_drop {
                    self.reply(rng, slot, RelayCmd::DROP, None, view.data);
                }
            }
            RelayCmd::EXTEND2 => {
                // tor-spec §5.6: EXTEND2 only in RELAY_EARLY.
                if !early {
                    self.violation(slot, out);
                    return;
                }
                self.handle_extend2(slot, view.data, out, events);
            }
            RelayCmd::TRUNCATE => {
                self.truncate(slot, out);
                let mut data = Vec::with_capacity(1);
                let t = Truncated {
                    reason: DestroyReason::REQUESTED,
                };
                if t.encode(&mut data).is_ok() {
                    self.reply(rng, slot, RelayCmd::TRUNCATED, None, &data);
                }
            }
            // Exit and directory service come later: refuse the stream.
            cmd @ (RelayCmd::BEGIN | RelayCmd::BEGIN_DIR | RelayCmd::RESOLVE) => {
                let reason = if cmd == RelayCmd::BEGIN_DIR {
                    EndReason::NOTDIRECTORY
                } else {
                    EndReason::EXITPOLICY
                };
                let mut data = Vec::with_capacity(1);
                if End::new(reason).encode(&mut data).is_ok() {
                    self.reply(rng, slot, RelayCmd::END, view.stream_id, &data);
                }
            }
            // tor-spec §6.1: a recognized cell with a command we do not understand is dropped.
            cmd if cmd.name().is_none() => self.stats.cells_dropped += 1,
            // Known commands this relay does not serve (yet): stream data without a stream,
            // SENDME without windows, onion-service cells (the control shard's, later).
            _ => self.violation(slot, out),
        }
    }

    /// Queues a relay message from this hop towards the origin, sealed after the batch.
    fn reply(
        &mut self,
        rng: &mut impl CryptoRngCore,
        slot: u32,
        cmd: RelayCmd,
        stream: Option<StreamId>,
        data: &[u8],
    ) {
        let Some(c) = self.circs.get(slot as usize) else {
            return;
        };
        let gen = c.gen;
        let mut body = [0u8; BODY_LEN];
        if self
            .format(slot)
            .build(&mut body, cmd, stream, data, rng)
            .is_ok()
        {
            self.replies.push((slot, gen, body));
        }
    }

    /// The relay cell format of `slot`'s circuit: v1 with CGO, v0 with tor1.
    fn format(&self, slot: u32) -> RelayCellFormat {
        match self.cgo_of.get(slot as usize) {
            Some(Some(_)) => RelayCellFormat::V1,
            _ => RelayCellFormat::V0,
        }
    }

    /// Encrypts a cell this relay originates towards the client with `slot`'s crypto.
    fn seal_backward(&mut self, slot: u32, body: &mut [u8; BODY_LEN]) {
        match self.cgo_of.get(slot as usize).copied().flatten() {
            Some(idx) => {
                if let Some(hop) = self.cgo_hops.get_mut(idx as usize) {
                    self.engine
                        .process_one_cgo(hop, CMD_RELAY, CgoOp::RelayOriginate, body);
                }
            }
            None => {
                if let Some(hop) = self.hops.get_mut(slot as usize) {
                    self.engine.process_one(hop, body, Op::RelaySendBackward);
                }
            }
        }
    }

    fn handle_extend2(
        &mut self,
        slot: u32,
        data: &[u8],
        out: &mut impl CellSink,
        events: &mut Vec<Event>,
    ) {
        let Some(c) = self.circs.get(slot as usize) else {
            return;
        };
        if c.next != Next::None {
            self.violation(slot, out);
            return;
        }
        let prev = self.chans.get(&c.prev_chan).map(|ch| ch.info);
        let Ok(e) = Extend2::decode(data) else {
            self.violation(slot, out);
            return;
        };
        if !matches!(e.htype, HandshakeType::NTOR | HandshakeType::NTOR_V3)
            || e.hdata.len() > proto::chan_msg::CREATE2_HDATA_MAX
        {
            self.violation(slot, out);
            return;
        }
        let Some((rsa, ed)) = extend_identities(&e.link_specs) else {
            self.violation(slot, out);
            return;
        };
        // tor-spec §5.3: no extending to ourselves or back to the previous hop.
        let to_self = rsa == self.ntor.id || ed == Some(self.ntor_v3.id);
        let to_prev =
            prev.is_some_and(|p| p.rsa_id == Some(rsa) || (ed.is_some() && p.ed_id == ed));
        if to_self || to_prev {
            self.violation(slot, out);
            return;
        }
        let existing = ed
            .and_then(|ed| self.by_ed.get(&ed))
            .or_else(|| self.by_rsa.get(&rsa))
            .copied();
        if let Some(chan) = existing {
            let info = self.chans.get(&chan).map(|c| c.info);
            let usable =
                info.is_some_and(|i| i.rsa_id == Some(rsa) && (ed.is_none() || i.ed_id == ed));
            let conflicting =
                info.is_some_and(|i| ed.is_some() && i.ed_id == ed && i.rsa_id != Some(rsa));
            if conflicting {
                // tor-spec §5.1.2: same ed25519 id, other RSA id: fail, do not reconnect.
                self.close(slot, Some(DestroyReason::OR_IDENTITY), None, out);
                return;
            }
            if usable && self.is_canonical(chan, &e.link_specs) {
                self.send_create(slot, chan, e.htype, &e.hdata, out);
                return;
            }
        }
        let Some(idx) = self.pending_free.pop() else {
            self.close(slot, Some(DestroyReason::RESOURCELIMIT), None, out);
            return;
        };
        let circ_gen = self.circs.get(slot as usize).map_or(0, |c| c.gen);
        let Some(p) = self.pending.get_mut(idx as usize) else {
            return;
        };
        p.in_use = true;
        p.slot = slot;
        p.circ_gen = circ_gen;
        p.htype = e.htype;
        p.hdata.clear();
        p.hdata.extend_from_slice(&e.hdata);
        p.rsa_id = rsa;
        p.ed_id = ed;
        // Released queues are empty already; this keeps the byte count honest regardless.
        self.queued_bytes = self
            .queued_bytes
            .saturating_sub(p.queue.len() * QUEUED_CELL_BYTES);
        p.queue.clear();
        let request = RequestId {
            index: idx,
            gen: p.gen,
        };
        if let Some(c) = self.circs.get_mut(slot as usize) {
            c.next = Next::Opening { request };
        }
        events.push(Event::OpenChannel {
            request,
            rsa_id: rsa,
            ed_id: ed,
            link_specs: e.link_specs,
        });
    }

    /// Sends CREATE2 on `chan` for `slot`'s next hop; the circuit id used, or `None` if the
    /// circuit was destroyed for lack of ids or room on the channel.
    fn send_create(
        &mut self,
        slot: u32,
        chan: ChanId,
        htype: HandshakeType,
        hdata: &[u8],
        out: &mut impl CellSink,
    ) -> Option<CircId> {
        let id = self.alloc_circ_id(chan);
        let Some(id) = id else {
            self.close(slot, Some(DestroyReason::RESOURCELIMIT), None, out);
            return None;
        };
        let mut v = Vec::with_capacity(4 + hdata.len());
        let c2 = Create2 {
            htype,
            hdata: hdata.to_vec(),
        };
        if c2.encode(&mut v).is_err() {
            self.violation(slot, out);
            return None;
        }
        self.routes.insert(
            (chan, id),
            Route {
                slot,
                side: Side::Next,
            },
        );
        if let Some(ch) = self.chans.get_mut(&chan) {
            ch.circuits += 1;
        }
        if let Some(c) = self.circs.get_mut(slot as usize) {
            c.next = Next::Creating { chan, id };
        }
        out.push(OutCell {
            chan,
            cell: CircCell::new(id, ChanCmd::CREATE2, &v),
        });
        Some(id)
    }

    fn alloc_circ_id(&mut self, chan: ChanId) -> Option<CircId> {
        let ch = self.chans.get_mut(&chan)?;
        if ch.circuits >= self.limits.circuits_per_channel_max {
            return None;
        }
        let high = if ch.info.initiator { 0x8000_0000 } else { 0 };
        for _ in 0..CIRC_ID_ATTEMPTS_MAX {
            ch.id_counter = ch.id_counter.wrapping_add(1) & 0x7fff_ffff;
            if let Some(id) = CircId::new(high | ch.id_counter) {
                if !self.routes.contains_key(&(chan, id)) && !self.reserved.contains(&(chan, id)) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Whether `chan` may serve an EXTEND2 naming `specs` (see [`RelayCore::set_channel_addrs`]).
    fn is_canonical(&self, chan: ChanId, specs: &[LinkSpec]) -> bool {
        let Some(known) = self.canonical_addrs.get(&chan) else {
            return true;
        };
        crate::xshard::canonical_for(specs, known)
    }

    /// TRUNCATE: destroys everything after this hop.
    fn truncate(&mut self, slot: u32, out: &mut impl CellSink) {
        let Some(c) = self.circs.get_mut(slot as usize) else {
            return;
        };
        let next = std::mem::replace(&mut c.next, Next::None);
        self.drop_next(next, Some(DestroyReason::REQUESTED), out);
    }

    fn drop_next(&mut self, next: Next, reason: Option<DestroyReason>, out: &mut impl CellSink) {
        match next {
            Next::None => {}
            Next::Opening { request } => {
                if let Some(idx) = self.pending_index(request) {
                    self.release_pending(idx);
                }
            }
            Next::Creating { chan, id } | Next::Open { chan, id } => {
                self.routes.remove(&(chan, id));
                if let Some(ch) = self.chans.get_mut(&chan) {
                    ch.circuits = ch.circuits.saturating_sub(1);
                }
                if let Some(r) = reason {
                    out.push(destroy_cell(chan, id, r));
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Circuit teardown

    /// A protocol violation on the circuit: DESTROY(PROTOCOL) towards the origin, and away
    /// from it (tor-spec §5.4: report in both directions).
    fn violation(&mut self, slot: u32, out: &mut impl CellSink) {
        self.stats.protocol_violations += 1;
        self.close(
            slot,
            Some(DestroyReason::PROTOCOL),
            Some(DestroyReason::PROTOCOL),
            out,
        );
    }

    /// Destroyed from one side (DESTROY received, or that side's channel closed): tell the
    /// other side only.
    fn close_from(
        &mut self,
        slot: u32,
        from: Side,
        reason: DestroyReason,
        out: &mut impl CellSink,
    ) {
        match from {
            Side::Prev => self.close(slot, None, Some(reason), out),
            Side::Next => {
                // The next half is gone already; forget it before telling the origin.
                if let Some(c) = self.circs.get_mut(slot as usize) {
                    let next = std::mem::replace(&mut c.next, Next::None);
                    self.drop_next(next, None, out);
                }
                self.close(slot, Some(reason), None, out)
            }
        }
    }

    /// Frees a circuit, sending DESTROY towards the origin with `prev_reason` and away from it
    /// with `next_reason` where given.
    fn close(
        &mut self,
        slot: u32,
        prev_reason: Option<DestroyReason>,
        next_reason: Option<DestroyReason>,
        out: &mut impl CellSink,
    ) {
        let Some(c) = self.circs.get_mut(slot as usize) else {
            return;
        };
        if !c.live {
            return;
        }
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        let (prev_chan, prev_id) = (c.prev_chan, c.prev_id);
        let next = std::mem::replace(&mut c.next, Next::None);
        self.routes.remove(&(prev_chan, prev_id));
        if let Some(ch) = self.chans.get_mut(&prev_chan) {
            ch.circuits = ch.circuits.saturating_sub(1);
        }
        if let Some(r) = prev_reason {
            out.push(destroy_cell(prev_chan, prev_id, r));
        }
        self.drop_next(next, next_reason, out);
        if let Some(idx) = self.cgo_of.get_mut(slot as usize).and_then(Option::take) {
            // Wiped and reused after this call: a job of this chunk may still name it.
            self.cgo_freed.push(idx);
        }
        self.freed.push(slot);
        self.live = self.live.saturating_sub(1);
        self.stats.circuits_destroyed += 1;
    }

    // ----------------------------------------------------------------------------------------
    // Tables

    fn alloc_slot(
        &mut self,
        hop: Tor1Hop,
        cgo: Option<CgoHop>,
        chan: ChanId,
        id: CircId,
    ) -> Option<u32> {
        let cgo = match cgo {
            Some(h) => Some(self.alloc_cgo(h)?),
            None => None,
        };
        let circ = |gen| Circuit {
            gen,
            live: true,
            prev_chan: chan,
            prev_id: id,
            next: Next::None,
            relay_early_seen: 0,
        };
        if let Some(s) = self.free.pop() {
            let i = s as usize;
            let gen = self.circs.get(i)?.gen;
            *self.circs.get_mut(i)? = circ(gen);
            *self.hops.get_mut(i)? = hop;
            *self.cgo_of.get_mut(i)? = cgo;
            Some(s)
        } else if self.circs.len() < self.limits.circuits_max {
            self.circs.push(circ(0));
            self.hops.push(hop);
            self.cgo_of.push(cgo);
            u32::try_from(self.circs.len() - 1).ok()
        } else {
            None
        }
    }

    /// A place in `cgo_hops` for a new CGO circuit's state.
    fn alloc_cgo(&mut self, hop: CgoHop) -> Option<u32> {
        if let Some(i) = self.cgo_free.pop() {
            *self.cgo_hops.get_mut(i as usize)? = hop;
            Some(i)
        } else {
            // At most one per circuit slot, so bounded by `circuits_max`.
            self.cgo_hops.push(hop);
            u32::try_from(self.cgo_hops.len() - 1).ok()
        }
    }

    fn is_live(&self, slot: u32, gen: u32) -> bool {
        self.circs
            .get(slot as usize)
            .is_some_and(|c| c.live && c.gen == gen)
    }

    fn pending_index(&self, r: RequestId) -> Option<usize> {
        let p = self.pending.get(r.index as usize)?;
        (p.in_use && p.gen == r.gen).then_some(r.index as usize)
    }

    fn release_pending(&mut self, idx: usize) {
        if let Some(p) = self.pending.get_mut(idx) {
            if p.in_use {
                p.in_use = false;
                p.gen = p.gen.wrapping_add(1);
                self.queued_bytes = self
                    .queued_bytes
                    .saturating_sub(p.queue.len() * QUEUED_CELL_BYTES);
                p.queue.clear();
                p.hdata.clear();
                self.pending_free.push(idx as u32);
            }
        }
    }

    /// Panics if the tables disagree: the queued byte count matches the queues,  every route names a live circuit whose prev or next half
    /// it is, per-channel counts match the routes, and the live count matches the slots. For
    /// fuzzing and tests.
    fn assert_invariants(&self) {
        let queued: usize = self
            .pending
            .iter()
            .filter(|p| p.in_use)
            .map(|p| p.queue.len() * QUEUED_CELL_BYTES)
            .sum();
        assert_eq!(queued, self.queued_bytes);
        let live = self.circs.iter().filter(|c| c.live).count();
        assert_eq!(live, self.live);
        let mut per_chan: HashMap<ChanId, usize> = HashMap::new();
        for (&(chan, id), r) in &self.routes {
            let c = &self.circs[r.slot as usize];
            assert!(c.live);
            match r.side {
                Side::Prev => assert_eq!((c.prev_chan, c.prev_id), (chan, id)),
                Side::Next => assert!(matches!(
                    c.next,
                    Next::Creating { chan: nc, id: ni } | Next::Open { chan: nc, id: ni }
                        if (nc, ni) == (chan, id)
                )),
            }
            *per_chan.entry(chan).or_default() += 1;
        }
        for (chan, ch) in &self.chans {
            assert_eq!(ch.circuits, per_chan.get(chan).copied().unwrap_or(0));
        }
        let mut cgo_seen = std::collections::HashSet::new();
        for (slot, idx) in self.cgo_of.iter().enumerate() {
            if let Some(idx) = idx {
                assert!(self.circs[slot].live);
                assert!(cgo_seen.insert(*idx));
                assert!(!self.cgo_free.contains(idx));
            }
        }
        assert_eq!(
            cgo_seen.len() + self.cgo_free.len() + self.cgo_freed.len(),
            self.cgo_hops.len()
        );
        for c in self.circs.iter().filter(|c| c.live) {
            assert!(self.routes.contains_key(&(c.prev_chan, c.prev_id)));
            if let Next::Opening { request } = c.next {
                assert!(self.pending_index(request).is_some());
            }
        }
    }

    /// End of a public call: slots freed during it become reusable.
    fn finish_call(&mut self) {
        self.free.append(&mut self.freed);
        for idx in self.cgo_freed.drain(..) {
            if let (Some(h), Some(w)) =
                (self.cgo_hops.get_mut(idx as usize), super::cgo::wiped_hop())
            {
                // Dropping the old state wipes its keys.
                *h = w;
            }
            self.cgo_free.push(idx);
        }
    }
}

fn destroy_cell(chan: ChanId, id: CircId, reason: DestroyReason) -> OutCell {
    OutCell {
        chan,
        cell: CircCell::new(id, ChanCmd::DESTROY, &[reason.0]),
    }
}

/// The RSA and (optional) ed25519 identity an EXTEND2 names; `None` if the RSA identity is
/// missing or all zeros, or either identity appears twice (tor-spec §5.1.2, §5.3).
fn extend_identities(specs: &[LinkSpec]) -> Option<(RsaIdentity, Option<Ed25519Identity>)> {
    let mut rsa = None;
    let mut ed = None;
    for s in specs {
        let dup = match s {
            LinkSpec::RsaId(id) => rsa.replace(*id).is_some(),
            LinkSpec::Ed25519Id(id) => ed.replace(*id).is_some(),
            _ => false,
        };
        if dup {
            return None;
        }
    }
    let rsa = rsa.filter(|r| r.as_bytes() != &[0; 20])?;
    // tor-spec §5.3: an all-zero ed25519 identity is accepted, as if absent.
    let ed = ed.filter(|e| e.as_bytes() != &[0; 32]);
    Some((rsa, ed))
}

/// Fuzz entry point: feeds `data` to a [`RelayCore`] with fixed keys, as cells on three
/// channels (the first byte of each record picks the channel, then one framed cell with
/// 4-byte circuit ids). Channel requests are answered in turn with success, failure, or not
/// yet (so forward cells queue); a record whose first byte has bit 0x40 set answers the oldest
/// unanswered request first, one with bit 0x80 set runs the OOM step
/// ([`RelayCore::close_largest_queue`]) after its cell.
/// Panics only on a bug.
pub fn fuzz_cells(data: &[u8]) {
    use proto::cell::CircIdLen;
    use proto::keys::NtorOnionKeypair;
    struct Counter(u64);
    impl rand_core::RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    // Deterministic on purpose: a fuzzer needs replayable runs, not secrecy.
    impl rand_core::CryptoRng for Counter {}
    let onion = NtorOnionKeypair::from_secret_bytes([7; 32]);
    let ntor = NtorServerKeys {
        id: RsaIdentity::from_bytes([1; 20]),
        current: onion.clone(),
        previous: None,
    };
    let ntor_v3 = NtorV3ServerKeys {
        id: Ed25519Identity::from_bytes([2; 32]),
        current: onion,
        previous: None,
    };
    let limits = Limits {
        circuits_max: 64,
        circuits_per_channel_max: 32,
        pending_extends_max: 4,
        cells_queued_per_extend_max: 2,
        batch_cells_max: 8,
    };
    let Ok(mut core) = RelayCore::from_server_keys(
        ntor,
        ntor_v3,
        Engine::new(crypto_simd::Backend::Portable).unwrap_or_else(|_| Engine::best()),
        limits,
    ) else {
        return;
    };
    let mut rng = Counter(1);
    for (i, initiator) in [false, true, false].into_iter().enumerate() {
        core.add_channel(
            ChanId(i as u32),
            ChanInfo {
                link_version: 5,
                initiator,
                rsa_id: (i > 0).then(|| RsaIdentity::from_bytes([10 + i as u8; 20])),
                ed_id: None,
            },
        );
    }
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut rest = data;
    let mut turn = 0u8;
    let mut deferred: Vec<(RequestId, ChanInfo)> = Vec::new();
    while let Some((&chan, tail)) = rest.split_first() {
        let Some((raw, used)) = RawCell::decode(tail, CircIdLen::Four) else {
            break;
        };
        rest = tail.get(used..).unwrap_or_default();
        let cell = InCell {
            chan: ChanId(u32::from(chan % 3)),
            cell: raw,
        };
        if chan & 0x40 != 0 && !deferred.is_empty() {
            let (request, info) = deferred.remove(0);
            core.handle_channel_opened(request, ChanId(100), info, &mut out);
        }
        core.handle_batch(&mut rng, &[cell], &mut out, &mut events);
        for e in events.drain(..) {
            match e {
                Event::OpenChannel {
                    request,
                    rsa_id,
                    ed_id,
                    ..
                } => {
                    let info = ChanInfo {
                        link_version: 5,
                        initiator: true,
                        rsa_id: Some(rsa_id),
                        ed_id,
                    };
                    match turn {
                        0 => core.handle_channel_opened(request, ChanId(100), info, &mut out),
                        1 => core.handle_channel_failed(request, &mut out),
                        _ => deferred.push((request, info)),
                    }
                    turn = (turn + 1) % 3;
                }
                Event::CloseChannel { chan } => core.handle_channel_closed(chan, &mut out),
            }
        }
        if chan & 0x80 != 0 {
            let before = core.queued_bytes();
            let freed = core.close_largest_queue(&mut out);
            assert_eq!(before - freed.unwrap_or(0), core.queued_bytes());
            assert_eq!(freed.is_none(), before == 0);
        }
        for o in out.drain(..) {
            assert!(core.chans.contains_key(&o.chan) || o.cell.cmd == ChanCmd::DESTROY);
        }
        core.assert_invariants();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use crate::circuit::{ClientError, ClientEvent, HandshakeKind, OriginCircuit, RelayInfo};
    use proptest::prelude::*;
    use proto::cell::CellBody;
    use proto::keys::NtorOnionKeypair;
    use proto::relay_cell::{build_relay_cell, RelayCellView};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const ME_RSA: [u8; 20] = [1; 20];
    const ME_ED: [u8; 32] = [2; 32];
    const NEXT_RSA: [u8; 20] = [3; 20];
    const CLIENT: ChanId = ChanId(1);
    const NEXT: ChanId = ChanId(2);

    fn engine() -> Engine {
        Engine::from_env().unwrap()
    }

    fn server_keys(rsa: [u8; 20], ed: [u8; 32], secret: u8) -> (NtorServerKeys, NtorV3ServerKeys) {
        let onion = NtorOnionKeypair::from_secret_bytes([secret; 32]);
        (
            NtorServerKeys {
                id: RsaIdentity::from_bytes(rsa),
                current: onion.clone(),
                previous: None,
            },
            NtorV3ServerKeys {
                id: Ed25519Identity::from_bytes(ed),
                current: onion,
                previous: None,
            },
        )
    }

    fn info_of(keys: &NtorServerKeys, ed: Option<[u8; 32]>) -> RelayInfo {
        RelayInfo {
            rsa_id: keys.id,
            ed_id: ed.map(Ed25519Identity::from_bytes),
            ntor_onion_key: *keys.current.public().as_bytes(),
            addrs: vec!["127.0.0.1:9001".parse().unwrap()],
        }
    }

    /// A core with a client channel (`CLIENT`) and a channel it opened to relay `NEXT_RSA`.
    fn core(limits: Limits) -> RelayCore {
        let (ntor, v3) = server_keys(ME_RSA, ME_ED, 7);
        let mut c = RelayCore::from_server_keys(ntor, v3, engine(), limits).unwrap();
        c.add_channel(
            CLIENT,
            ChanInfo {
                link_version: 5,
                initiator: false,
                rsa_id: None,
                ed_id: None,
            },
        );
        c.add_channel(
            NEXT,
            ChanInfo {
                link_version: 5,
                initiator: true,
                rsa_id: Some(RsaIdentity::from_bytes(NEXT_RSA)),
                ed_id: None,
            },
        );
        c
    }

    fn id(v: u32) -> CircId {
        CircId::new(v).unwrap()
    }

    struct Run {
        out: Vec<OutCell>,
        events: Vec<Event>,
    }

    fn feed(core: &mut RelayCore, rng: &mut StdRng, cells: &[(ChanId, &CircCell)]) -> Run {
        let input: Vec<InCell<'_>> = cells
            .iter()
            .map(|(chan, c)| InCell {
                chan: *chan,
                cell: c.as_raw(),
            })
            .collect();
        let mut run = Run {
            out: Vec::new(),
            events: Vec::new(),
        };
        core.handle_batch(rng, &input, &mut run.out, &mut run.events);
        core.assert_invariants();
        run
    }

    fn destroy(chan: ChanId, circ: u32, reason: DestroyReason) -> OutCell {
        destroy_cell(chan, id(circ), reason)
    }

    /// A one-hop CREATE_FAST circuit from the client, with id 0x8000_0001.
    fn one_hop(core: &mut RelayCore, rng: &mut StdRng) -> OriginCircuit {
        let (ntor, _) = server_keys(ME_RSA, ME_ED, 7);
        let (mut circ, cell) = OriginCircuit::create_first_hop(
            rng,
            engine(),
            id(0x8000_0001),
            HandshakeKind::CreateFast,
            &info_of(&ntor, None),
        )
        .unwrap();
        let run = feed(core, rng, &[(CLIENT, &cell)]);
        assert_eq!(run.out.len(), 1);
        assert_eq!(run.out[0].cell.cmd, ChanCmd::CREATED_FAST);
        assert_eq!(
            circ.handle_cell(&run.out[0].cell).unwrap(),
            ClientEvent::HopAdded { hops: 1 }
        );
        circ
    }

    #[test]
    fn create2_ntor_and_ntor_v3_answer_created2() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut core = core(Limits::default());
        let (ntor, _) = server_keys(ME_RSA, ME_ED, 7);
        for (n, kind) in [HandshakeKind::Ntor, HandshakeKind::NtorV3]
            .into_iter()
            .enumerate()
        {
            let (mut circ, cell) = OriginCircuit::create_first_hop(
                &mut rng,
                engine(),
                id(0x8000_0010 + n as u32),
                kind,
                &info_of(&ntor, Some(ME_ED)),
            )
            .unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            assert_eq!(run.out.len(), 1);
            assert_eq!(run.out[0].chan, CLIENT);
            assert_eq!(run.out[0].cell.cmd, ChanCmd::CREATED2);
            assert_eq!(
                circ.handle_cell(&run.out[0].cell).unwrap(),
                ClientEvent::HopAdded { hops: 1 }
            );
        }
        assert_eq!(core.circuits(), 2);
        assert_eq!(core.channel_circuits(CLIENT), 2);
    }

    #[test]
    fn bad_creates_get_destroy_with_the_right_reason() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut core = core(Limits::default());
        let (_, other_v3) = server_keys(NEXT_RSA, [9; 32], 8);
        let (other, _) = server_keys(NEXT_RSA, [9; 32], 8);
        let mut cases = Vec::new();
        // ntor onionskin for another relay.
        let (_, skin) = proto::ntor::client1(
            &mut rng,
            &proto::ntor::NtorPublicKey {
                id: other.id,
                pk: *other.current.public(),
            },
        );
        cases.push((HandshakeType::NTOR, skin.to_vec()));
        // ntor v3 onionskin for another relay.
        let mut v3 = Vec::new();
        proto::ntor_v3::client1(
            &mut rng,
            &proto::ntor_v3::NtorV3PublicKey {
                id: other_v3.id,
                pk: *other_v3.current.public(),
            },
            CIRCUIT_EXTEND_VERIFICATION,
            &[],
            &mut v3,
        )
        .unwrap();
        cases.push((HandshakeType::NTOR_V3, v3));
        // Wrong lengths and unknown types.
        cases.push((HandshakeType::NTOR, vec![0; 10]));
        cases.push((HandshakeType::TAP, vec![0; 186]));
        cases.push((HandshakeType::RESERVED_FAST, vec![0; 20]));
        cases.push((HandshakeType(0x99), vec![]));
        for (i, (htype, hdata)) in cases.into_iter().enumerate() {
            let mut body = Vec::new();
            Create2 { htype, hdata }.encode(&mut body).unwrap();
            let circ = 0x8000_0100 + i as u32;
            let cell = CircCell::new(id(circ), ChanCmd::CREATE2, &body);
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            assert_eq!(
                run.out,
                vec![destroy(CLIENT, circ, DestroyReason::PROTOCOL)],
                "case {i}"
            );
        }
        // TAP CREATE, and a CREATE2 whose HLEN overruns the cell.
        let tap = CircCell::new(id(0x8000_0200), ChanCmd::CREATE, &[0; 186]);
        let long = CircCell::new(id(0x8000_0201), ChanCmd::CREATE2, &[0, 2, 0x01, 0xff]);
        let run = feed(&mut core, &mut rng, &[(CLIENT, &tap), (CLIENT, &long)]);
        assert_eq!(
            run.out,
            vec![
                destroy(CLIENT, 0x8000_0200, DestroyReason::PROTOCOL),
                destroy(CLIENT, 0x8000_0201, DestroyReason::PROTOCOL)
            ]
        );
        assert_eq!(core.circuits(), 0);
        assert_eq!(core.stats().creates_refused, 8);
    }

    #[test]
    fn circuit_id_rules() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut core = core(Limits::default());
        let fast = |v| CircCell::new(id(v), ChanCmd::CREATE_FAST, &[5; 20]);
        // The client initiated its channel: its ids must have the MSB set.
        let run = feed(&mut core, &mut rng, &[(CLIENT, &fast(5))]);
        assert_eq!(run.out, vec![destroy(CLIENT, 5, DestroyReason::PROTOCOL)]);
        // We initiated NEXT: the peer's ids must not.
        let run = feed(&mut core, &mut rng, &[(NEXT, &fast(0x8000_0005))]);
        assert_eq!(
            run.out,
            vec![destroy(NEXT, 0x8000_0005, DestroyReason::PROTOCOL)]
        );
        let run = feed(&mut core, &mut rng, &[(NEXT, &fast(5))]);
        assert_eq!(run.out[0].cell.cmd, ChanCmd::CREATED_FAST);
        // An id in use: the CREATE is dropped (tor-spec §5.3).
        let dropped = core.stats().cells_dropped;
        let run = feed(&mut core, &mut rng, &[(NEXT, &fast(5))]);
        assert!(run.out.is_empty());
        assert_eq!(core.stats().cells_dropped, dropped + 1);
        // Circuit id 0 on a circuit command is a channel-level violation.
        let zero = RawCell {
            circ_id: None,
            cmd: ChanCmd::CREATE_FAST,
            body: CellBody::Fixed(&[0; BODY_LEN]),
        };
        let mut out = Vec::new();
        let mut events = Vec::new();
        core.handle_batch(
            &mut rng,
            &[InCell {
                chan: NEXT,
                cell: zero,
            }],
            &mut out,
            &mut events,
        );
        assert!(out.is_empty());
        assert_eq!(events, vec![Event::CloseChannel { chan: NEXT }]);
        // Unknown channels and circuits are ignored.
        let relay = CircCell::new(id(0x8000_0077), ChanCmd::RELAY, &[]);
        let run = feed(
            &mut core,
            &mut rng,
            &[(ChanId(99), &fast(0x8000_0001)), (CLIENT, &relay)],
        );
        assert!(run.out.is_empty() && run.events.is_empty());
        // A batch switching between a known and an unknown channel (the known channel is
        // remembered between cells, the unknown one never is).
        let dropped = core.stats().cells_dropped;
        let run = feed(
            &mut core,
            &mut rng,
            &[
                (CLIENT, &fast(0x8000_0010)),
                (ChanId(99), &fast(0x8000_0011)),
                (CLIENT, &fast(0x8000_0012)),
                (ChanId(99), &fast(0x8000_0013)),
            ],
        );
        let answered: Vec<_> = run.out.iter().map(|o| (o.chan, o.cell.circ_id)).collect();
        assert_eq!(
            answered,
            vec![(CLIENT, id(0x8000_0010)), (CLIENT, id(0x8000_0012))]
        );
        assert_eq!(core.stats().cells_dropped, dropped + 2);
        // A channel closed between batches is not remembered from the last one.
        let mut out = Vec::new();
        core.handle_channel_closed(CLIENT, &mut out);
        let run = feed(&mut core, &mut rng, &[(CLIENT, &fast(0x8000_0014))]);
        assert!(run.out.is_empty());
        assert_eq!(core.stats().cells_dropped, dropped + 3);
    }

    #[test]
    fn limits_refuse_with_resourcelimit() {
        let mut rng = StdRng::seed_from_u64(4);
        let limits = Limits {
            circuits_max: 3,
            circuits_per_channel_max: 2,
            ..Limits::default()
        };
        let mut core = core(limits);
        let fast = |v| CircCell::new(id(v), ChanCmd::CREATE_FAST, &[5; 20]);
        let run = feed(
            &mut core,
            &mut rng,
            &[
                (CLIENT, &fast(0x8000_0001)),
                (CLIENT, &fast(0x8000_0002)),
                (CLIENT, &fast(0x8000_0003)),
                (NEXT, &fast(1)),
                (NEXT, &fast(2)),
            ],
        );
        let cmds: Vec<_> = run.out.iter().map(|o| o.cell.cmd).collect();
        assert_eq!(
            cmds,
            [
                ChanCmd::CREATED_FAST,
                ChanCmd::CREATED_FAST,
                ChanCmd::DESTROY,
                ChanCmd::CREATED_FAST,
                ChanCmd::DESTROY
            ]
        );
        assert_eq!(
            run.out[2],
            destroy(CLIENT, 0x8000_0003, DestroyReason::RESOURCELIMIT)
        );
        assert_eq!(run.out[4], destroy(NEXT, 2, DestroyReason::RESOURCELIMIT));
        // A freed slot is reused.
        let d = CircCell::new(id(1), ChanCmd::DESTROY, &[0]);
        let run = feed(&mut core, &mut rng, &[(NEXT, &d), (NEXT, &fast(2))]);
        // The DESTROY is applied after the chunk's creates: the slot is free only afterwards.
        assert_eq!(
            run.out,
            vec![destroy(NEXT, 2, DestroyReason::RESOURCELIMIT)]
        );
        let run = feed(&mut core, &mut rng, &[(NEXT, &fast(2))]);
        assert_eq!(run.out[0].cell.cmd, ChanCmd::CREATED_FAST);
        assert!(matches!(
            RelayCore::from_server_keys(
                server_keys(ME_RSA, ME_ED, 7).0,
                server_keys(ME_RSA, ME_ED, 7).1,
                engine(),
                Limits {
                    batch_cells_max: 0,
                    ..Limits::default()
                }
            ),
            Err(RelayCoreError::BadLimit("batch_cells_max"))
        ));
    }

    #[test]
    fn oom_closes_the_circuit_with_the_largest_queue() {
        let mut rng = StdRng::seed_from_u64(12);
        let mut core = core(Limits::default());
        let (ntor, _) = server_keys(ME_RSA, ME_ED, 7);
        let far_rsa = |i: usize| [20 + i as u8; 20];
        let mut requests = Vec::new();
        // Circuits 1-4 each wait for a channel that never opens, with 2, 5, 5 and 0 cells.
        for (i, queued) in [2usize, 5, 5, 0].into_iter().enumerate() {
            let v = 0x8000_0001 + i as u32;
            let (mut circ, cell) = OriginCircuit::create_first_hop(
                &mut rng,
                engine(),
                id(v),
                HandshakeKind::CreateFast,
                &info_of(&ntor, None),
            )
            .unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            circ.handle_cell(&run.out[0].cell).unwrap();
            let (far, _) = server_keys(far_rsa(i), [30; 32], 40 + i as u8);
            let cell = circ
                .extend(&mut rng, HandshakeKind::Ntor, &info_of(&far, None))
                .unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            let [Event::OpenChannel { request, .. }] = run.events.as_slice() else {
                panic!("{:?}", run.events)
            };
            requests.push(*request);
            for _ in 0..queued {
                let mut body = [0u8; BODY_LEN];
                rand_core::RngCore::fill_bytes(&mut rng, &mut body);
                let cell = CircCell::new(id(v), ChanCmd::RELAY, &body);
                let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
                assert!(run.out.is_empty(), "queued, not sent");
            }
        }
        assert_eq!(core.queued_bytes(), 12 * QUEUED_CELL_BYTES);
        let mut out = Vec::new();
        // Two queues of 5: the one that started queueing first goes first.
        for (v, cells) in [(0x8000_0002, 5), (0x8000_0003, 5), (0x8000_0001, 2)] {
            assert_eq!(
                core.close_largest_queue(&mut out),
                Some(cells * QUEUED_CELL_BYTES)
            );
            assert_eq!(
                std::mem::take(&mut out),
                vec![destroy(CLIENT, v, DestroyReason::RESOURCELIMIT)]
            );
            core.assert_invariants();
        }
        // Circuit 4 queues nothing: not a candidate.
        assert_eq!(core.close_largest_queue(&mut out), None);
        assert!(out.is_empty());
        assert_eq!(core.queued_bytes(), 0);
        assert_eq!(core.circuits(), 1);
        assert_eq!(core.stats().circuits_oom_closed, 3);
        let info = |i: usize| ChanInfo {
            link_version: 5,
            initiator: true,
            rsa_id: Some(RsaIdentity::from_bytes(far_rsa(i))),
            ed_id: None,
        };
        // The answer for a closed circuit is ignored; the survivor extends.
        core.handle_channel_opened(requests[1], ChanId(51), info(1), &mut out);
        assert!(out.is_empty());
        core.handle_channel_opened(requests[3], ChanId(50), info(3), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].chan, out[0].cell.cmd),
            (ChanId(50), ChanCmd::CREATE2)
        );
        core.assert_invariants();
    }

    #[test]
    fn extend_over_an_open_channel_and_relay_both_ways() {
        let mut rng = StdRng::seed_from_u64(5);
        let limits = Limits {
            batch_cells_max: 2,
            ..Limits::default()
        };
        let mut core = core(limits);
        let mut circ = one_hop(&mut core, &mut rng);
        let (next_keys, _) = server_keys(NEXT_RSA, [9; 32], 8);
        let cell = circ
            .extend(&mut rng, HandshakeKind::Ntor, &info_of(&next_keys, None))
            .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        assert!(run.events.is_empty(), "the open channel is reused");
        assert_eq!(run.out.len(), 1);
        let create = &run.out[0];
        assert_eq!((create.chan, create.cell.cmd), (NEXT, ChanCmd::CREATE2));
        // We initiated NEXT, so our id has the MSB set.
        assert!(create.cell.circ_id.high_bit());
        let next_id = create.cell.circ_id;
        // Relay cells from the next hop before CREATED2 would be a violation; answer properly.
        let c2 = Create2::decode(&create.cell.body).unwrap();
        let (reply, mut server_kg) = proto::ntor::server(&mut rng, &next_keys, &c2.hdata)
            .map(|(r, kg)| (r, hop_from(&kg).unwrap()))
            .unwrap();
        let mut body = Vec::new();
        Created2 {
            hdata: reply.to_vec(),
        }
        .encode(&mut body)
        .unwrap();
        let created = CircCell::new(next_id, ChanCmd::CREATED2, &body);
        let run = feed(&mut core, &mut rng, &[(NEXT, &created)]);
        assert_eq!(run.out.len(), 1);
        assert_eq!(
            circ.handle_cell(&run.out[0].cell).unwrap(),
            ClientEvent::HopAdded { hops: 2 }
        );
        // Five cells for hop 1 in one input batch (three crypto chunks of two): each passes
        // through unrecognized, and hop 1 (simulated here) recognizes it.
        let before = core.stats().crypto_batches;
        let cells: Vec<CircCell> = (0..5u8)
            .map(|i| {
                circ.send_raw(&mut rng, 1, RelayCmd::DROP, None, &[i; 30])
                    .unwrap()
            })
            .collect();
        let input: Vec<(ChanId, &CircCell)> = cells.iter().map(|c| (CLIENT, c)).collect();
        let run = feed(&mut core, &mut rng, &input);
        assert_eq!(core.stats().crypto_batches - before, 3);
        assert_eq!(run.out.len(), 5);
        for (i, o) in run.out.iter().enumerate() {
            assert_eq!(
                (o.chan, o.cell.circ_id, o.cell.cmd),
                (NEXT, next_id, ChanCmd::RELAY)
            );
            let mut b = o.cell.body;
            let r = engine().process_one(&mut server_kg, &mut b, Op::RelayRecvForward);
            assert!(matches!(r, Outcome::Recognized(_)));
            let v = RelayCellView::new(&b).unwrap();
            assert_eq!((v.cmd(), v.data()), (RelayCmd::DROP, &[i as u8; 30][..]));
        }
        // Backward: hop 1 sends END on stream 3; the client gets it from hop 1.
        let mut b = [0u8; BODY_LEN];
        build_relay_cell(&mut b, RelayCmd::END, StreamId::new(3), &[6], &mut rng).unwrap();
        engine().process_one(&mut server_kg, &mut b, Op::RelaySendBackward);
        let back = CircCell {
            circ_id: next_id,
            cmd: ChanCmd::RELAY,
            body: b,
        };
        let run = feed(&mut core, &mut rng, &[(NEXT, &back)]);
        assert_eq!(run.out.len(), 1);
        assert_eq!(run.out[0].chan, CLIENT);
        let ev = circ.handle_cell(&run.out[0].cell).unwrap();
        assert!(matches!(
            ev,
            ClientEvent::Msg { hop: 1, stream_id, msg: proto::relay_msg::RelayMsg::End(e), .. }
                if stream_id == StreamId::new(3) && e.reason == EndReason::DONE
        ));
        // An inbound RELAY_EARLY closes the circuit in both directions (tor-spec §5.6).
        let early = CircCell {
            cmd: ChanCmd::RELAY_EARLY,
            ..back
        };
        let run = feed(&mut core, &mut rng, &[(NEXT, &early)]);
        assert_eq!(
            run.out,
            vec![
                destroy(CLIENT, 0x8000_0001, DestroyReason::PROTOCOL),
                destroy(NEXT, next_id.get(), DestroyReason::PROTOCOL)
            ]
        );
        assert_eq!(core.circuits(), 0);
        assert_eq!(core.channel_circuits(NEXT), 0);
    }

    fn created2_cell(id: CircId, hdata: Vec<u8>) -> CircCell {
        let mut body = Vec::new();
        Created2 { hdata }.encode(&mut body).unwrap();
        CircCell::new(id, ChanCmd::CREATED2, &body)
    }

    /// A circuit whose first hop (this core) negotiated CGO: DROPs of every size are echoed
    /// byte for byte in the v1 format beside a tor1 circuit on the same core, and a flipped
    /// bit in one CGO cell closes that circuit only.
    #[test]
    fn cgo_first_hop_echoes_and_tampering_closes_only_that_circuit() {
        let mut rng = StdRng::seed_from_u64(21);
        let mut core = core(Limits {
            batch_cells_max: 2,
            ..Limits::default()
        });
        core.set_echo_drop_for_tests(true);
        let (ntor, _) = server_keys(ME_RSA, ME_ED, 7);
        let info = info_of(&ntor, Some(ME_ED));
        let mut circs = Vec::new();
        for (n, kind) in [HandshakeKind::NtorV3Cgo, HandshakeKind::NtorV3]
            .into_iter()
            .enumerate()
        {
            let (mut circ, cell) = OriginCircuit::create_first_hop(
                &mut rng,
                engine(),
                id(0x8000_0040 + n as u32),
                kind,
                &info,
            )
            .unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            assert_eq!(run.out.len(), 1);
            assert_eq!(run.out[0].cell.cmd, ChanCmd::CREATED2);
            circ.handle_cell(&run.out[0].cell).unwrap();
            circs.push(circ);
        }
        assert_eq!(circs[0].hop_format(0), Some(RelayCellFormat::V1));
        assert_eq!(circs[1].hop_format(0), Some(RelayCellFormat::V0));
        for len in [0usize, 1, 100, 488, 489, 490] {
            for circ in circs.iter_mut() {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let sent = circ.send_raw(&mut rng, 0, RelayCmd::DROP, None, &data);
                if circ.hop_format(0) == Some(RelayCellFormat::V0) && len > 498 {
                    continue;
                }
                let run = feed(&mut core, &mut rng, &[(CLIENT, &sent.unwrap())]);
                assert_eq!(run.out.len(), 1);
                let ev = circ.handle_cell(&run.out[0].cell).unwrap();
                assert!(
                    matches!(&ev, ClientEvent::Msg { hop: 0, data: d, .. } if *d == data),
                    "{ev:?}"
                );
            }
        }
        // Interleaved cells of both circuits in one input: per chunk of two, one tor1 batch
        // and one CGO batch; the echoes come back in order on each circuit.
        let before = core.stats().crypto_batches;
        let mut input = Vec::new();
        for i in 0..6u8 {
            let c = &mut circs[usize::from(i % 2)];
            input.push(
                c.send_raw(&mut rng, 0, RelayCmd::DROP, None, &[i; 9])
                    .unwrap(),
            );
        }
        let cells: Vec<(ChanId, &CircCell)> = input.iter().map(|c| (CLIENT, c)).collect();
        let run = feed(&mut core, &mut rng, &cells);
        assert_eq!(core.stats().crypto_batches - before, 6);
        assert_eq!(run.out.len(), 6);
        for o in &run.out {
            let n = usize::from(o.cell.circ_id.get() != 0x8000_0040);
            let ev = circs[n].handle_cell(&o.cell).unwrap();
            assert!(matches!(&ev, ClientEvent::Msg { data, .. } if data[0] % 2 == n as u8));
        }
        // A v1 cell too long for a DATA message is refused by the client library.
        assert_eq!(
            circs[0]
                .send_raw(&mut rng, 0, RelayCmd::DATA, StreamId::new(1), &[0; 489])
                .unwrap_err(),
            ClientError::MessageTooLong
        );
        // Tampering with the CGO circuit's cell: DESTROY for it, the tor1 one lives on.
        let mut bad = circs[0]
            .send_raw(&mut rng, 0, RelayCmd::DROP, None, b"tampered")
            .unwrap();
        bad.body[300] ^= 0x10;
        let run = feed(&mut core, &mut rng, &[(CLIENT, &bad)]);
        assert_eq!(
            run.out,
            vec![destroy(CLIENT, 0x8000_0040, DestroyReason::PROTOCOL)]
        );
        assert_eq!(core.circuits(), 1);
        let ok = circs[1]
            .send_raw(&mut rng, 0, RelayCmd::DROP, None, b"still here")
            .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &ok)]);
        assert!(matches!(
            circs[1].handle_cell(&run.out[0].cell).unwrap(),
            ClientEvent::Msg { data, .. } if data == b"still here"
        ));
    }

    /// A subprotocol request for anything but `Relay=6` is refused with DESTROY(PROTOCOL)
    /// rather than ignored; `Relay=6` alone is accepted.
    #[test]
    fn subprotocol_requests_other_than_cgo_are_refused() {
        let mut rng = StdRng::seed_from_u64(23);
        let mut core = core(Limits::default());
        let (_, v3) = server_keys(ME_RSA, ME_ED, 7);
        let public = proto::ntor_v3::NtorV3PublicKey {
            id: v3.id,
            pk: *v3.current.public(),
        };
        for (n, (cm, ok)) in [
            (vec![1u8, 3, 2, 2, 6], true),
            (vec![1, 3, 2, 2, 7], false),
            (vec![1, 3, 4, 2, 5, 2, 6], false),
            (vec![1, 3, 1, 2], false),
        ]
        .into_iter()
        .enumerate()
        {
            let mut hdata = Vec::new();
            proto::ntor_v3::client1(
                &mut rng,
                &public,
                CIRCUIT_EXTEND_VERIFICATION,
                &cm,
                &mut hdata,
            )
            .unwrap();
            let mut body = Vec::new();
            Create2 {
                htype: HandshakeType::NTOR_V3,
                hdata,
            }
            .encode(&mut body)
            .unwrap();
            let circ = 0x8000_0090 + n as u32;
            let cell = CircCell::new(id(circ), ChanCmd::CREATE2, &body);
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            if ok {
                assert_eq!(run.out[0].cell.cmd, ChanCmd::CREATED2);
                assert_eq!(
                    core.format(core.routes[&(CLIENT, id(circ))].slot),
                    RelayCellFormat::V1
                );
            } else {
                assert_eq!(
                    run.out,
                    vec![destroy(CLIENT, circ, DestroyReason::PROTOCOL)]
                );
            }
        }
    }

    /// A CGO hop (this core) extending to a CGO next hop (simulated with `crypto_simd::cgo`):
    /// EXTEND2 and EXTENDED2 travel in the v1 format, cells for the next hop pass through the
    /// core's CGO layer both ways.
    #[test]
    fn cgo_middle_hop_relays_both_ways() {
        let mut rng = StdRng::seed_from_u64(22);
        let mut core = core(Limits::default());
        let (ntor, _) = server_keys(ME_RSA, ME_ED, 7);
        let (mut circ, cell) = OriginCircuit::create_first_hop(
            &mut rng,
            engine(),
            id(0x8000_0050),
            HandshakeKind::NtorV3Cgo,
            &info_of(&ntor, Some(ME_ED)),
        )
        .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        circ.handle_cell(&run.out[0].cell).unwrap();
        let next_ed = [9u8; 32];
        let (next_keys, next_v3) = server_keys(NEXT_RSA, next_ed, 8);
        const NEXT_ED: ChanId = ChanId(3);
        core.add_channel(
            NEXT_ED,
            ChanInfo {
                link_version: 5,
                initiator: true,
                rsa_id: Some(RsaIdentity::from_bytes(NEXT_RSA)),
                ed_id: Some(Ed25519Identity::from_bytes(next_ed)),
            },
        );
        let cell = circ
            .extend(
                &mut rng,
                HandshakeKind::NtorV3Cgo,
                &info_of(&next_keys, Some(next_ed)),
            )
            .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        assert_eq!(run.out.len(), 1);
        let create = &run.out[0];
        assert_eq!((create.chan, create.cell.cmd), (NEXT_ED, ChanCmd::CREATE2));
        let next_id = create.cell.circ_id;
        let c2 = Create2::decode(&create.cell.body).unwrap();
        let mut reply = Vec::new();
        let mut negotiated = None;
        let (kg, _) = proto::ntor_v3::server(
            &mut rng,
            &next_v3,
            CIRCUIT_EXTEND_VERIFICATION,
            &c2.hdata,
            |cm| {
                negotiated = proto::ntor_v3::negotiate_server(cm, RELAY_CAPS).ok();
                Some(vec![0])
            },
            &mut reply,
        )
        .unwrap();
        assert_eq!(negotiated.map(|n| n.cgo), Some(true));
        let keys = kg.cgo_keys().unwrap();
        let mut kdf = keys.forward.to_vec();
        kdf.extend_from_slice(&keys.backward);
        let mut hop1 = crypto_simd::cgo::RelayState::from_kdf(&kdf).unwrap();
        let run = feed(
            &mut core,
            &mut rng,
            &[(NEXT_ED, &created2_cell(next_id, reply))],
        );
        assert_eq!(
            circ.handle_cell(&run.out[0].cell).unwrap(),
            ClientEvent::HopAdded { hops: 2 }
        );
        for i in 0..4u8 {
            let c = circ
                .send_raw(&mut rng, 1, RelayCmd::DROP, None, &[i; 40])
                .unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &c)]);
            assert_eq!(run.out.len(), 1);
            assert_eq!(
                (run.out[0].chan, run.out[0].cell.circ_id),
                (NEXT_ED, next_id)
            );
            let mut b = run.out[0].cell.body;
            let r = hop1.forward(crypto_simd::cgo::CMD_RELAY, &mut b);
            assert!(matches!(r, crypto_simd::cgo::Forward::ForUs(_)));
            let v = proto::relay_cell_v1::RelayCellV1View::new(&b).unwrap();
            assert_eq!((v.cmd(), v.data()), (RelayCmd::DROP, &[i; 40][..]));

            let mut b = [0u8; BODY_LEN];
            proto::relay_cell_v1::build_relay_cell_v1(
                &mut b,
                RelayCmd::END,
                StreamId::new(3),
                &[6],
                &mut rng,
            )
            .unwrap();
            hop1.originate(crypto_simd::cgo::CMD_RELAY, &mut b);
            let back = CircCell {
                circ_id: next_id,
                cmd: ChanCmd::RELAY,
                body: b,
            };
            let run = feed(&mut core, &mut rng, &[(NEXT_ED, &back)]);
            assert_eq!(run.out.len(), 1);
            let ev = circ.handle_cell(&run.out[0].cell).unwrap();
            assert!(matches!(
                ev,
                ClientEvent::Msg { hop: 1, stream_id, msg: proto::relay_msg::RelayMsg::End(_), .. }
                    if stream_id == StreamId::new(3)
            ));
        }
    }

    #[test]
    fn requested_channel_with_wrong_identity_is_refused() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut core = core(Limits::default());
        let mut circ = one_hop(&mut core, &mut rng);
        let (far, _) = server_keys([0x42; 20], [0x43; 32], 9);
        let cell = circ
            .extend(
                &mut rng,
                HandshakeKind::NtorV3,
                &info_of(&far, Some([0x43; 32])),
            )
            .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        let [Event::OpenChannel {
            request,
            rsa_id,
            ed_id,
            link_specs,
        }] = &run.events[..]
        else {
            panic!("{:?}", run.events)
        };
        assert_eq!(*rsa_id, far.id);
        assert_eq!(*ed_id, Some(Ed25519Identity::from_bytes([0x43; 32])));
        assert_eq!(link_specs.len(), 3);
        let mut out = Vec::new();
        let liar = ChanInfo {
            link_version: 5,
            initiator: true,
            rsa_id: Some(far.id),
            ed_id: Some(Ed25519Identity::from_bytes([0x44; 32])),
        };
        core.handle_channel_opened(*request, ChanId(3), liar, &mut out);
        assert_eq!(
            out,
            vec![destroy(CLIENT, 0x8000_0001, DestroyReason::OR_IDENTITY)]
        );
        // Stale answers are ignored.
        out.clear();
        core.handle_channel_failed(*request, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn end_of_circuit_rules() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut core = core(Limits::default());
        // TRUNCATE with nothing after us still answers TRUNCATED.
        let mut circ = one_hop(&mut core, &mut rng);
        let cell = circ
            .send_raw(&mut rng, 0, RelayCmd::TRUNCATE, None, &[])
            .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        assert_eq!(
            circ.handle_cell(&run.out[0].cell).unwrap(),
            ClientEvent::Truncated {
                hop: 0,
                reason: DestroyReason::REQUESTED
            }
        );
        // A recognized cell with an unknown command is dropped (tor-spec §6.1).
        let cell = circ
            .send_raw(&mut rng, 0, RelayCmd(200), None, b"future")
            .unwrap();
        let dropped = core.stats().cells_dropped;
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        assert!(run.out.is_empty());
        assert_eq!(core.stats().cells_dropped, dropped + 1);
        assert_eq!(core.circuits(), 1);
        // A recognized message a middle hop does not handle (DATA) is a violation, as is an
        // unrecognized cell at the end of the circuit, and a stream command on stream 0.
        type MakeCell = dyn Fn(&mut OriginCircuit, &mut StdRng) -> CircCell;
        let bad: [&MakeCell; 3] = [
            &|c, r| {
                c.send_raw(r, 0, RelayCmd::DATA, StreamId::new(1), b"x")
                    .unwrap()
            },
            &|c, _| CircCell::new(c.circ_id(), ChanCmd::RELAY, &[0xAA; 509]),
            &|c, r| c.send_raw(r, 0, RelayCmd::BEGIN, None, b"a:1\0").unwrap(),
        ];
        for (i, make) in bad.iter().enumerate() {
            let mut core2 = self::core(Limits::default());
            let mut circ = one_hop(&mut core2, &mut rng);
            let cell = make(&mut circ, &mut rng);
            let run = feed(&mut core2, &mut rng, &[(CLIENT, &cell)]);
            assert_eq!(
                run.out,
                vec![destroy(CLIENT, 0x8000_0001, DestroyReason::PROTOCOL)],
                "case {i}"
            );
            assert_eq!(core2.circuits(), 0);
        }
    }

    #[test]
    fn destroy_reasons_are_not_propagated() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut core = core(Limits::default());
        let mut circ = one_hop(&mut core, &mut rng);
        let (next_keys, _) = server_keys(NEXT_RSA, [9; 32], 8);
        let cell = circ
            .extend(&mut rng, HandshakeKind::Ntor, &info_of(&next_keys, None))
            .unwrap();
        let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
        let next_id = run.out[0].cell.circ_id;
        // The next hop refuses with a reason; the client hears DESTROYED.
        let d = CircCell::new(next_id, ChanCmd::DESTROY, &[DestroyReason::OR_IDENTITY.0]);
        let run = feed(&mut core, &mut rng, &[(NEXT, &d)]);
        assert_eq!(
            run.out,
            vec![destroy(CLIENT, 0x8000_0001, DestroyReason::DESTROYED)]
        );
        assert_eq!(core.channel_circuits(NEXT), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A flipped bit anywhere in a CGO cell for this (last) hop, or a RELAY cell relabeled
        /// RELAY_EARLY (the command is part of CGO's tweak), gets the circuit destroyed with
        /// PROTOCOL; the cell before it, untouched, is echoed.
        #[test]
        fn any_flipped_bit_in_a_cgo_cell_closes_the_circuit(
            byte in 0usize..BODY_LEN,
            bit in 0u8..8,
            relabel in any::<bool>(),
            len in 0usize..=proto::relay_cell_v1::DATA_MAX_NO_STREAM,
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut core = core(Limits::default());
            core.set_echo_drop_for_tests(true);
            let (ntor, _) = server_keys(ME_RSA, ME_ED, 7);
            let (mut circ, cell) = OriginCircuit::create_first_hop(
                &mut rng,
                engine(),
                id(0x8000_0077),
                HandshakeKind::NtorV3Cgo,
                &info_of(&ntor, Some(ME_ED)),
            )
            .unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            circ.handle_cell(&run.out[0].cell).unwrap();
            let data = vec![0x3c; len];
            let cell = circ.send_raw(&mut rng, 0, RelayCmd::DROP, None, &data).unwrap();
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            let echoed = matches!(
                circ.handle_cell(&run.out[0].cell).unwrap(),
                ClientEvent::Msg { data: d, .. } if d == data
            );
            prop_assert!(echoed);
            let mut cell = circ.send_raw(&mut rng, 0, RelayCmd::DROP, None, &data).unwrap();
            if relabel {
                cell.cmd = ChanCmd::RELAY_EARLY;
            } else {
                cell.body[byte] ^= 1 << bit;
            }
            let run = feed(&mut core, &mut rng, &[(CLIENT, &cell)]);
            prop_assert_eq!(run.out, vec![destroy(CLIENT, 0x8000_0077, DestroyReason::PROTOCOL)]);
            prop_assert_eq!(core.circuits(), 0);
        }

        /// Arbitrary bytes as framed cells on three channels never panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            fuzz_cells(&data);
        }

        /// Random circuit cells in random order (with CREATE_FAST, which takes any X, so
        /// that circuits exist) never panic and never write to unknown channels.
        #[test]
        fn random_cells_in_random_order(
            cells in proptest::collection::vec(
                (0u8..3,
                 prop::sample::select(vec![1u32, 2, 0x8000_0001, 0x8000_0002, 7]),
                 prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 9, 10, 11, 0, 8, 200]),
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..60)
        ) {
            let mut data = Vec::new();
            for (chan, circ, cmd, body) in cells {
                data.push(chan);
                data.extend_from_slice(&circ.to_be_bytes());
                data.push(cmd);
                let mut b = body;
                if cmd >= 128 {
                    data.extend_from_slice(&(b.len() as u16).to_be_bytes());
                } else {
                    b.resize(BODY_LEN, 0);
                }
                data.extend_from_slice(&b);
            }
            fuzz_cells(&data);
        }
    }
}
