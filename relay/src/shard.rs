//! One data shard, sans-io: the connections (TLS links) of one reactor thread and the circuits
//! that arrived on them.
//!
//! tor-spec §2 and §4 (<https://spec.torproject.org/tor-spec/negotiating-channels.html>) for the
//! link, §5 (<https://spec.torproject.org/tor-spec/circuit-management.html>) for what the
//! [`RelayCore`] does with the cells. A [`Shard`] takes bytes from sockets and gives bytes for
//! sockets; it never touches a socket, a clock or a global RNG: the reactor (`reactor::poll`,
//! `reactor::uring`) owns those.
//!
//! A connection goes: TLS → link handshake ([`Responder`] for accepted connections,
//! [`Initiator`] authenticating with our [`RelayCredentials`] for channels we open) → after the
//! NETINFO cells, an open channel whose cells are framed with [`RawCell::decode`].
//!
//! # Call order (one reactor iteration)
//!
//! 1. Socket events: [`Shard::handle_accepted`], [`Shard::handle_recv`] (only while
//!    [`Shard::wants_read`]), [`Shard::handle_eof`], [`Shard::handle_connected`],
//!    [`Shard::handle_connect_failed`].
//! 2. [`Shard::process_batch`]: every cell received on every connection since the last call
//!    goes to [`RelayCore::handle_batch`] in ONE call, so the relay crypto runs over a batch.
//!    The cells are read where TLS left them (the connections' receive buffers), and the
//!    circuits' output is encoded straight into the connections' plaintext queues (a relayed
//!    cell's body is copied from the receive buffer into the crypto batch, and from there into
//!    the outgoing plaintext: nothing else), which TLS takes in one write per connection and
//!    batch. The shard allocates nothing per cell or per batch once its buffers have grown
//!    (rustls still allocates per TLS record).
//! 3. [`Shard::poll_event`] until `None`: connect or close sockets.
//! 4. [`Shard::poll_writable`] names connections with bytes to send: write
//!    [`Shard::poll_transmit`], report [`Shard::handle_sent`].
//! 5. Sleep until a socket is ready or [`Shard::next_timeout`], then [`Shard::handle_timeout`].
//!    If [`Shard::has_ready_cells`], do not sleep.
//!
//! # Circuits, channels and shards
//!
//! Each circuit lives on the shard that accepted its first channel. The channel an EXTEND2
//! needs is, in this order: a canonical channel of this shard (the core reuses it), a canonical
//! channel of another shard (found in the relay's [`crate::xshard::ChannelRegistry`]; the
//! circuit's cells then cross to that shard and back in batches, see [`crate::xshard`]), one
//! this shard is already opening, or a new one opened by this shard. So the relay keeps one
//! channel per peer (tor-spec §5.3.1), the per-cell path takes no lock, and a channel is
//! reused only if canonical for an address the EXTEND2 names (the address we reach the peer
//! at, or one its NETINFO claimed). Join the shards with [`Shard::set_xlink`]; a shard
//! without one keeps everything to itself.
//!
//! # Link-level cells
//!
//! PADDING_NEGOTIATE is parsed and declined (chive sends no link padding; the protocol has no
//! answer to send, and the channel is unaffected). A channel we close ends with TLS
//! close_notify ([`Shard::take_close_notify`]).
//!
//! # Limits and overflow policy
//!
//! - [`ShardLimits::conns_max`] connections: more accepted sockets are refused
//!   ([`Shard::handle_accepted`] returns `None`); an EXTEND2 needing a new channel fails with
//!   CONNECTFAILED.
//! - [`ShardLimits::inbuf_max_bytes`] of received plaintext per connection: at least one
//!   maximal variable-length cell; when full, the connection is not read until
//!   [`Shard::process_batch`] takes its cells.
//! - [`ShardLimits::tls_out_max_bytes`] of ciphertext waiting per connection: above it,
//!   [`Shard::wants_read`] is false (backpressure: a peer that does not read stops being read).
//! - [`ShardLimits::plain_out_max_bytes`] of cells waiting for room in TLS: a connection whose
//!   peer does not read beyond that is closed (dropping a relay cell would break the circuit's
//!   running digest, so closing is the only safe choice).
//! - [`ShardLimits::handshake_timeout_secs`]: a connection (outbound: from the connect) whose
//!   link handshake is not done by then is closed.
//! - [`ShardLimits::memory_max_bytes`]: the bytes the shard holds for circuits and connections
//!   together ([`Shard::memory_bytes`]: cells queued towards opening channels, plus per
//!   connection the received ciphertext and plaintext not yet consumed, the ciphertext not yet
//!   sent and the cells waiting for TLS room, plus cells waiting to cross to or from other
//!   shards). The counts are kept up to date as buffers grow and shrink, not recounted by a
//!   walk. The relay-wide `limits.memory_max_bytes` is split evenly across the shards. At the
//!   end of each
//!   [`Shard::process_batch`], a shard over its cap applies the OOM policy of C tor's
//!   `MaxMemInQueues`: it destroys the circuits holding the most queued cells
//!   ([`RelayCore::close_largest_queue`], DESTROY with RESOURCELIMIT), then, while still over,
//!   closes the connections holding the most buffered bytes ([`CloseReason::MemoryCap`]; their
//!   circuits get DESTROY), until it holds at most 90% of the cap. Buffers inside TLS (bounded
//!   by `tls_out_max_bytes`) and fixed tables allocated at start are not counted.
//!
//! Events ([`ShardEvent`]) are bounded by the connection table: at most one Connect and one
//! Close per connection.
//!
//! Fuzz entry: [`fuzz_recv`] (arbitrary bytes from an inbound connection).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crypto_simd::Engine;
use proto::cell::{CellBody, CircIdLen, RawCell, BODY_LEN, VAR_BODY_LEN_MAX};
use proto::certs_cell::IdentityCerts;
use proto::ids::{Ed25519Identity, RsaIdentity};
use proto::keys::RelayKeys;
use proto::link_handshake::{
    ExpectedPeer, Initiator, LinkInfo, NetinfoAddrs, RelayCredentials, Responder,
};
use proto::link_spec::LinkSpec;
use rand_core::CryptoRngCore;
use rustls::{ClientConfig, ServerConfig};
use thiserror::Error;

use crate::circuit::{cell_map, CellMap, CellSink, CircCell};
use crate::circuit::{
    ChanId, ChanInfo, Event, InCell, Limits, OutCell, RelayCore, RelayCoreError, RequestId,
};
use crate::control::ShardGauges;
use crate::tls::{TlsLink, DEFAULT_PENDING_TLS_MAX_BYTES};
use crate::xshard::{RegEntry, ShardIndex, XLink, XMsg};
use proto::cell::ChanCmd;
use proto::chan_msg::DestroyReason;
use proto::ids::CircId;
use proto::ntor::NtorServerKeys;
use proto::ntor_v3::NtorV3ServerKeys;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest slice [`Shard::poll_transmit`] prepares at once.
const TRANSMIT_CHUNK_BYTES: usize = 64 * 1024;
/// Plaintext read out of TLS per step.
const PLAINTEXT_STEP_BYTES: usize = 16 * 1024;
/// Rounds of [`Shard::process_batch`] per call before the reactor gets control back.
const BATCH_ROUNDS_MAX: usize = 4;
/// The most ciphertext kept for a closing connection's close_notify (the record itself is
/// tiny; this bounds what TLS still had queued).
const CLOSE_NOTIFY_MAX_BYTES: usize = 64 * 1024;
/// Batches taken from the cross-shard inbox per [`Shard::process_batch`].
const INBOX_DRAIN_MAX: usize = 64;

/// What every shard of a relay shares, read-only: keys, certificates and TLS configurations.
pub struct RelayContext {
    /// The relay's keys.
    pub keys: RelayKeys,
    /// The CERTS entries made from `keys` (types 2, 4, 7).
    pub identity_certs: IdentityCerts,
    /// The responder's TLS configuration (our link certificate).
    pub server: Arc<ServerConfig>,
    /// The initiator's TLS configuration.
    pub client: Arc<ClientConfig>,
    /// SHA-256 of our link certificate (CERTS type 5).
    pub link_cert_digest: [u8; 32],
    /// The addresses our NETINFO cells advertise.
    pub our_addrs: Vec<IpAddr>,
}

impl std::fmt::Debug for RelayContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayContext")
            .field("rsa_id", &self.keys.fingerprint())
            .field("our_addrs", &self.our_addrs)
            .finish_non_exhaustive()
    }
}

/// The bounds of a [`Shard`]; see the module docs for what happens at each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLimits {
    /// Connections (inbound and outbound) at once.
    pub conns_max: usize,
    /// Inbound connections from one IP address at once (C tor's
    /// `DoSConnectionMaxConcurrentCount` defaults to 50 per relay).
    pub conns_per_ip_max: u32,
    /// Seconds a link handshake may take.
    pub handshake_timeout_secs: u64,
    /// Received plaintext buffered per connection.
    pub inbuf_max_bytes: usize,
    /// Ciphertext waiting to be sent per connection before reading it stops.
    pub tls_out_max_bytes: usize,
    /// Cells waiting for TLS room per connection before it is closed.
    pub plain_out_max_bytes: usize,
    /// Bytes of queued cells and connection buffers the shard may hold before its OOM policy
    /// closes circuits and connections (see the module docs).
    pub memory_max_bytes: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits {
            conns_max: 4096,
            conns_per_ip_max: 50,
            handshake_timeout_secs: 30,
            inbuf_max_bytes: 2 * (VAR_BODY_LEN_MAX + 8),
            tls_out_max_bytes: DEFAULT_PENDING_TLS_MAX_BYTES,
            plain_out_max_bytes: 512 * 1024,
            memory_max_bytes: 1 << 30,
        }
    }
}

/// Misuse of the [`Shard`] API (never caused by network input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ShardError {
    /// A limit is out of range.
    #[error("shard limit {0} is out of range")]
    BadLimit(&'static str),
    /// The circuit limits were refused.
    #[error(transparent)]
    Core(#[from] RelayCoreError),
}

/// Names a connection of one shard. Stale ids (of closed connections) are ignored by every
/// method, so a reactor may hold one a little longer than the connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    gen: u32,
}

impl ConnId {
    /// A small dense number for the reactor's own tables (poll tokens, io_uring user data);
    /// reused after the connection closes.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// What the reactor must do with sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardEvent {
    /// Open a TCP connection to `addr` for `conn`, then call [`Shard::handle_connected`] or
    /// [`Shard::handle_connect_failed`].
    Connect {
        /// The connection.
        conn: ConnId,
        /// Where to.
        addr: SocketAddr,
    },
    /// Close and forget `conn`'s socket; the shard has already forgotten the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why (for the reactor's connection-level log).
        reason: CloseReason,
    },
}

/// Why a [`Shard`] closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side.
    Eof,
    /// The outbound TCP connect failed.
    ConnectFailed,
    /// TLS failed (the peer's fault, or the link broke).
    Tls,
    /// The link handshake failed (the peer broke the protocol or proved other identities).
    Handshake,
    /// The link handshake did not finish in time.
    HandshakeTimeout,
    /// The circuits asked for it: a circuit cell on circuit id 0.
    Protocol,
    /// The peer did not read its cells and its queue overflowed.
    Overflow,
    /// The shard was over its memory cap and this connection held the most buffered bytes.
    MemoryCap,
    /// The reactor asked for it ([`Shard::handle_close`]).
    Local,
}

/// Counters of connection-level happenings (the reactor logs them; nothing per cell).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Accepted connections refused because the table was full.
    pub refused: u64,
    /// Outbound connections started for EXTEND2.
    pub connects: u64,
    /// Link handshakes finished.
    pub channels_opened: u64,
    /// Link handshakes that failed (TLS, protocol or timeout).
    pub handshakes_failed: u64,
    /// Connections closed for any reason.
    pub closed: u64,
    /// Batches given to the circuit core.
    pub batches: u64,
    /// Times the shard found itself over its memory cap.
    pub oom_events: u64,
    /// Circuits destroyed by the OOM policy (queued cells).
    pub oom_circuits_closed: u64,
    /// Connections closed by the OOM policy (buffered bytes).
    pub oom_conns_closed: u64,
    /// PADDING_NEGOTIATE cells received (all declined: see [`Shard::process_batch`]).
    pub padding_negotiate: u64,
}

enum Handshake {
    Responder(Box<Responder>),
    Initiator {
        hs: Box<Initiator>,
        rsa_id: RsaIdentity,
        /// EXTEND2 requests waiting for this channel (deduplicated by identity).
        requests: Vec<RequestId>,
    },
}

enum ConnState {
    Handshaking(Handshake),
    Open {
        chan: ChanId,
        circ_id_len: CircIdLen,
    },
}

struct Conn {
    tls: TlsLink,
    state: ConnState,
    peer: SocketAddr,
    /// Outbound connection whose TCP connect has not finished.
    connecting: bool,
    /// The transport's read side ended.
    eof: bool,
    /// UNIX seconds by which the handshake must finish.
    deadline: Option<u64>,
    /// Ciphertext received but not yet taken by TLS.
    wire_in: Vec<u8>,
    /// Plaintext received and not yet consumed (handshake or cells).
    inbuf: Vec<u8>,
    /// Ciphertext prepared for the socket; `out_off` bytes of it are already sent.
    outbuf: Vec<u8>,
    out_off: usize,
    /// Plaintext (whole cells) TLS had no room for yet.
    plain_out: Vec<u8>,
    /// On the writable list already.
    listed: bool,
    /// Accepted (counted in `per_ip`), not opened by us.
    inbound: bool,
    /// [`Conn::buffered_bytes`] as last added to [`Shard::conn_bytes`].
    counted: usize,
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// The connections and circuits of one reactor thread; see the module docs.
pub struct Shard {
    ctx: Arc<RelayContext>,
    limits: ShardLimits,
    core: RelayCore,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Looked up for every cell sent: keyed hashing, see [`CellMap`].
    chans: CellMap<ChanId, ConnId>,
    /// Inbound connections per peer address.
    per_ip: HashMap<IpAddr, u32>,
    next_chan: u32,
    events: VecDeque<ShardEvent>,
    writable: VecDeque<ConnId>,
    out: Vec<OutCell>,
    core_events: Vec<Event>,
    scratch: Vec<u8>,
    consumed: Vec<(u32, usize)>,
    /// The allocation of [`Shard::batch_round`]'s list of received cells, kept empty between
    /// rounds (see [`recycle`]).
    cells_buf: Vec<InCell<'static>>,
    /// Connections whose plaintext queue was empty before this batch's cells: TLS takes their
    /// cells at the end of [`Shard::route_out`] (one write per batch). A connection with
    /// plaintext already queued is waiting for TLS room and is fed by `handle_sent`.
    fresh: Vec<ConnId>,
    /// Connections whose plaintext queue went over `plain_out_max_bytes` this batch: checked
    /// again once TLS has taken what it can.
    over_cap: Vec<ConnId>,
    /// Open connections' received plaintext while [`Shard::batch_round`] runs the circuits
    /// (swapped out of the connections, so that the cells can borrow it while the circuits'
    /// output is encoded into the connections; see [`Encoder`]).
    inbufs: Vec<Vec<u8>>,
    ready_cells: bool,
    stats: ShardStats,
    /// What [`Shard::memory_bytes`] reports: recomputed at each OOM check.
    memory_bytes: usize,
    /// Cross-shard channels ([`crate::xshard`]); see [`Shard::set_xlink`].
    x: Option<Cross>,
    /// See [`Shard::set_gauges`].
    gauges: Option<Arc<ShardGauges>>,
    /// The last bytes of closed connections (ending with TLS close_notify), until the reactor
    /// takes them; at most one per connection slot.
    last_words: VecDeque<(ConnId, Vec<u8>)>,
    /// The buffered bytes of all connections, kept up to date as buffers grow and shrink
    /// ([`Shard::recount`]), so the memory cap needs no walk.
    conn_bytes: usize,
}

/// This shard's cross-shard state (see [`crate::xshard`] for the scheme).
struct Cross {
    link: XLink,
    /// Our proxies: our [`ChanId`] → (owning shard, its channel).
    proxies: CellMap<ChanId, (ShardIndex, ChanId)>,
    proxy_by_remote: HashMap<(ShardIndex, ChanId), ChanId>,
    /// On channels we own: (channel, our circuit id) → (shard, its proxy, its circuit id).
    back: CellMap<(ChanId, CircId), (ShardIndex, ChanId, CircId)>,
    /// The reverse of `back`.
    fwd: HashMap<(ShardIndex, ChanId, CircId), (ChanId, CircId)>,
    /// Other shards' proxies that used each of our channels.
    users: HashMap<ChanId, Vec<(ShardIndex, ChanId)>>,
    /// Our relay channels in the registry, with the identity they are filed under.
    registered: HashMap<ChanId, RsaIdentity>,
    /// Messages for each shard, sent at the end of [`Shard::process_batch`].
    out: Vec<Vec<XMsg>>,
    /// Cells from other shards for our proxies, for the next batch.
    cells_in: Vec<(ChanId, CircCell)>,
    /// A destination's inbox was full: messages wait in `out`.
    blocked: bool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .field("conns", &self.conns())
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// A shard of the relay `ctx`, with its tables allocated.
    pub fn new(
        ctx: Arc<RelayContext>,
        engine: Engine,
        limits: ShardLimits,
        circuit_limits: Limits,
    ) -> Result<Self, ShardError> {
        if limits.conns_max == 0 || u32::try_from(limits.conns_max).is_err() {
            return Err(ShardError::BadLimit("conns_max"));
        }
        if limits.conns_per_ip_max == 0 {
            return Err(ShardError::BadLimit("conns_per_ip_max"));
        }
        if limits.inbuf_max_bytes < VAR_BODY_LEN_MAX + 8 {
            return Err(ShardError::BadLimit("inbuf_max_bytes"));
        }
        if limits.tls_out_max_bytes == 0 {
            return Err(ShardError::BadLimit("tls_out_max_bytes"));
        }
        if limits.plain_out_max_bytes < proto::cell::CELL_LEN_V4 {
            return Err(ShardError::BadLimit("plain_out_max_bytes"));
        }
        if limits.memory_max_bytes == 0 {
            return Err(ShardError::BadLimit("memory_max_bytes"));
        }
        let core = RelayCore::new(&ctx.keys, engine, circuit_limits)?;
        Ok(Shard {
            ctx,
            limits,
            core,
            slots: Vec::with_capacity(limits.conns_max),
            free: Vec::with_capacity(limits.conns_max),
            chans: cell_map(limits.conns_max),
            per_ip: HashMap::with_capacity(limits.conns_max),
            next_chan: 0,
            events: VecDeque::with_capacity(2 * limits.conns_max),
            writable: VecDeque::with_capacity(limits.conns_max),
            out: Vec::with_capacity(circuit_limits.batch_cells_max),
            core_events: Vec::new(),
            scratch: vec![0; PLAINTEXT_STEP_BYTES],
            consumed: Vec::with_capacity(limits.conns_max),
            cells_buf: Vec::with_capacity(circuit_limits.batch_cells_max),
            fresh: Vec::with_capacity(limits.conns_max),
            over_cap: Vec::with_capacity(limits.conns_max),
            inbufs: Vec::with_capacity(limits.conns_max),
            ready_cells: false,
            stats: ShardStats::default(),
            memory_bytes: 0,
            x: None,
            gauges: None,
            last_words: VecDeque::new(),
            conn_bytes: 0,
        })
    }

    /// Joins this shard to its relay's other shards: channels are shared through
    /// `link.registry` and cells cross over `link`'s queues (see [`crate::xshard`]).
    pub fn set_xlink(&mut self, link: XLink) {
        let n = link.tx.len();
        self.x = Some(Cross {
            link,
            proxies: cell_map(0),
            proxy_by_remote: HashMap::new(),
            back: cell_map(0),
            fwd: HashMap::new(),
            users: HashMap::new(),
            registered: HashMap::new(),
            out: (0..n).map(|_| Vec::new()).collect(),
            cells_in: Vec::new(),
            blocked: false,
        });
    }

    /// The onion keys CREATE2 is answered with from now on (rotation: the previous key rides
    /// along during its grace period).
    pub fn set_server_keys(&mut self, ntor: NtorServerKeys, ntor_v3: NtorV3ServerKeys) {
        self.core.set_server_keys(ntor, ntor_v3);
    }

    /// The context (link certificate, TLS configurations) for connections started from now
    /// on; open connections keep theirs.
    pub fn set_context(&mut self, ctx: Arc<RelayContext>) {
        self.ctx = ctx;
    }

    /// Where this shard publishes its statistics for the control shard (once per
    /// [`Shard::process_batch`]).
    pub fn set_gauges(&mut self, gauges: Arc<ShardGauges>) {
        self.gauges = Some(gauges);
    }

    /// The last bytes to write to `conn`'s socket after its [`ShardEvent::Close`]: the
    /// ciphertext still waiting and our TLS close_notify. The reactor writes them without
    /// blocking, if it can, then closes the socket.
    pub fn take_close_notify(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        let i = self.last_words.iter().position(|(c, _)| *c == conn)?;
        self.last_words.remove(i).map(|(_, b)| b)
    }

    /// Channels of other shards our circuits use (proxies).
    pub fn proxies(&self) -> usize {
        self.x.as_ref().map_or(0, |x| x.proxies.len())
    }

    /// Circuits of other shards whose next hop is one of our channels.
    pub fn cross_circuits(&self) -> usize {
        self.x.as_ref().map_or(0, |x| x.back.len())
    }

    /// The circuit core (counters, test hooks).
    pub fn core(&self) -> &RelayCore {
        &self.core
    }

    /// The circuit core, mutably (test hooks such as
    /// [`RelayCore::set_echo_drop_for_tests`]).
    pub fn core_mut(&mut self) -> &mut RelayCore {
        &mut self.core
    }

    /// The connection counters so far.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// Bytes held for circuits and connections as of the last [`Shard::process_batch`] (see
    /// [`ShardLimits::memory_max_bytes`] for what counts).
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Live connections.
    pub fn conns(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Open channels.
    pub fn channels(&self) -> usize {
        self.chans.len()
    }

    /// The peer address of `conn`, for logs.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.get(conn).map(|c| c.peer)
    }

    /// A new inbound TCP connection from `peer`; `None` (close the socket) when the table is
    /// full or `peer`'s address has [`ShardLimits::conns_per_ip_max`] connections already.
    /// `now` is UNIX seconds.
    pub fn handle_accepted(
        &mut self,
        rng: &mut impl CryptoRngCore,
        peer: SocketAddr,
        now: u64,
    ) -> Option<ConnId> {
        if self.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= self.limits.conns_per_ip_max {
            self.stats.refused += 1;
            return None;
        }
        let creds = RelayCredentials {
            keys: &self.ctx.keys,
            identity_certs: &self.ctx.identity_certs,
        };
        let addrs = NetinfoAddrs {
            peer: peer.ip(),
            ours: self.ctx.our_addrs.clone(),
        };
        let hs = Responder::new(creds, self.ctx.link_cert_digest, addrs, now, rng).ok();
        let tls = TlsLink::server(self.ctx.server.clone(), self.limits.tls_out_max_bytes).ok();
        let (Some(hs), Some(tls)) = (hs, tls) else {
            self.stats.refused += 1;
            return None;
        };
        let conn = self.insert(Conn::new(
            tls,
            ConnState::Handshaking(Handshake::Responder(Box::new(hs))),
            peer,
            now.saturating_add(self.limits.handshake_timeout_secs),
        ));
        match conn {
            Some(id) => {
                self.stats.accepted += 1;
                *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
                if let Some(c) = self.get_mut(id) {
                    c.inbound = true;
                }
            }
            None => self.stats.refused += 1,
        }
        conn
    }

    /// Whether the reactor should read `conn`'s socket now (false: backpressure or closed).
    pub fn wants_read(&self, conn: ConnId) -> bool {
        self.get(conn).is_some_and(|c| {
            !c.connecting
                && !c.eof
                && c.inbuf.len() < self.limits.inbuf_max_bytes
                && c.wire_in.len() < self.limits.inbuf_max_bytes
                && c.outbuf.len() - c.out_off < self.limits.tls_out_max_bytes
                && c.plain_out.is_empty()
                && !self.x.as_ref().is_some_and(|x| x.blocked)
        })
    }

    /// Bytes read from `conn`'s socket. `now` is UNIX seconds.
    pub fn handle_recv(&mut self, conn: ConnId, data: &[u8], now: u64) {
        let inbuf_max = self.limits.inbuf_max_bytes;
        let Some(c) = self.get_mut(conn) else {
            return;
        };
        if c.wire_in.is_empty() {
            // TLS takes what it can straight from the reactor's buffer (once its own records
            // run, opening them straight into the cell buffer); only the rest (a partial
            // record, or what waits for the plaintext to be read) is kept.
            match c.tls.handle_tls_into(data, &mut c.inbuf, inbuf_max) {
                Ok(n) => c
                    .wire_in
                    .extend_from_slice(data.get(n..).unwrap_or_default()),
                // The error is sticky: `pump_in` meets it again and closes the connection.
                Err(_) => c.wire_in.extend_from_slice(data),
            }
        } else {
            c.wire_in.extend_from_slice(data);
        }
        self.pump_in(conn, now);
    }

    /// `conn`'s peer closed its side; cells already received are still processed by the next
    /// [`Shard::process_batch`], then the connection closes.
    pub fn handle_eof(&mut self, conn: ConnId) {
        let Some(c) = self.get_mut(conn) else {
            return;
        };
        c.eof = true;
        c.tls.handle_eof();
        if matches!(c.state, ConnState::Handshaking(_)) {
            self.stats.handshakes_failed += 1;
            self.close(conn, CloseReason::Eof);
        }
    }

    /// The outbound TCP connection of `conn` is established.
    pub fn handle_connected(&mut self, conn: ConnId) {
        if let Some(c) = self.get_mut(conn) {
            c.connecting = false;
        }
        self.mark_writable(conn);
    }

    /// The outbound TCP connection of `conn` failed.
    pub fn handle_connect_failed(&mut self, conn: ConnId) {
        if self.get(conn).is_some() {
            self.stats.handshakes_failed += 1;
            self.close(conn, CloseReason::ConnectFailed);
        }
    }

    /// The next connection with bytes to send, each named once per [`Shard::handle_sent`]
    /// round; write [`Shard::poll_transmit`] to it.
    pub fn poll_writable(&mut self) -> Option<ConnId> {
        while let Some(conn) = self.writable.pop_front() {
            if let Some(c) = self.get_mut(conn) {
                c.listed = false;
                return Some(conn);
            }
        }
        None
    }

    /// The bytes to write to `conn`'s socket now (empty if none); report what was written
    /// with [`Shard::handle_sent`].
    pub fn poll_transmit(&mut self, conn: ConnId) -> &[u8] {
        let Some(c) = self.get_mut(conn) else {
            return &[];
        };
        if c.connecting {
            return &[];
        }
        if c.out_off == c.outbuf.len() {
            c.outbuf.clear();
            c.out_off = 0;
        }
        let pending = c.outbuf.len() - c.out_off;
        if pending < TRANSMIT_CHUNK_BYTES {
            c.tls
                .poll_tls(&mut c.outbuf, TRANSMIT_CHUNK_BYTES - pending);
        }
        self.recount(conn);
        self.get(conn)
            .and_then(|c| c.outbuf.get(c.out_off..))
            .unwrap_or_default()
    }

    /// Like [`Shard::poll_transmit`], but hands the bytes over instead of lending them: `buf`
    /// (whose contents must all have been written) is swapped with the connection's
    /// ciphertext buffer, so no byte is copied. The caller owns what `buf` then holds and
    /// writes all of it, resubmitting after short writes, before calling again; it still
    /// reports each write with [`Shard::handle_sent`] (which then only refills TLS). Returns
    /// how many bytes `buf` holds.
    ///
    /// On an open channel, fewer than `hold_below` bytes stay with the shard (0 is returned,
    /// and [`Shard::has_transmit`] stays true), so that the caller can gather a few batches'
    /// cells into one send; the caller bounds how long it holds them.
    pub fn take_transmit(&mut self, conn: ConnId, buf: &mut Vec<u8>, hold_below: usize) -> usize {
        buf.clear();
        let available = self.poll_transmit(conn).len();
        if available == 0 {
            return 0;
        }
        let Some(c) = self.get_mut(conn) else {
            return 0;
        };
        if available < hold_below && matches!(c.state, ConnState::Open { .. }) {
            return 0;
        }
        if c.out_off > 0 {
            c.outbuf.drain(..c.out_off);
            c.out_off = 0;
        }
        std::mem::swap(&mut c.outbuf, buf);
        self.recount(conn);
        buf.len()
    }

    /// Whether `conn` has bytes to send (ciphertext prepared or waiting in TLS).
    pub fn has_transmit(&self, conn: ConnId) -> bool {
        self.get(conn)
            .is_some_and(|c| !c.connecting && (c.out_off < c.outbuf.len() || c.tls.wants_tls_out()))
    }

    /// `n` bytes of what [`Shard::poll_transmit`] gave were written.
    pub fn handle_sent(&mut self, conn: ConnId, n: usize) {
        let Some(c) = self.get_mut(conn) else {
            return;
        };
        c.out_off = (c.out_off + n).min(c.outbuf.len());
        if c.out_off == c.outbuf.len() {
            c.outbuf.clear();
            c.out_off = 0;
        }
        if !c.plain_out.is_empty() {
            match c.tls.write_plaintext(&c.plain_out) {
                Ok(taken) => drop(c.plain_out.drain(..taken)),
                Err(_) => {
                    self.close(conn, CloseReason::Tls);
                    return;
                }
            }
        }
        let more = c.out_off < c.outbuf.len() || c.tls.wants_tls_out();
        self.recount(conn);
        if more {
            self.mark_writable(conn);
        }
    }

    /// Whether cells are waiting for [`Shard::process_batch`] (the reactor must not sleep).
    /// A batch held back by a full inbox elsewhere does not count: the receiving shard wakes
    /// this one when it has made room ([`Shard::handle_inbox`]), and the reactor's tick retries
    /// where there is no wake-up.
    pub fn has_ready_cells(&self) -> bool {
        self.ready_cells
            || self
                .x
                .as_ref()
                .is_some_and(|x| !x.cells_in.is_empty() || !x.link.rx.is_empty())
    }

    /// Processes every cell received since the last call in one [`RelayCore::handle_batch`]
    /// call (a few rounds if buffers were full), then acts on what the circuits asked for.
    pub fn process_batch(&mut self, rng: &mut impl CryptoRngCore, now: u64) {
        self.handle_inbox();
        for _ in 0..BATCH_ROUNDS_MAX {
            self.ready_cells = false;
            if !self.batch_round(rng, now) {
                break;
            }
        }
        // Connections whose peer ended: their last cells are processed now.
        for i in 0..self.slots.len() {
            let Some(conn) = self.id_at(i) else { continue };
            if self.get(conn).is_some_and(|c| c.eof) && !self.ready_cells {
                self.close(conn, CloseReason::Eof);
            }
        }
        self.enforce_memory_cap();
        self.flush_cross();
        self.publish();
    }

    /// Stores the counters the control shard logs (a few relaxed stores per batch).
    fn publish(&self) {
        let Some(g) = &self.gauges else { return };
        let st = self.core.stats();
        let set = |a: &AtomicU64, v: usize| a.store(v as u64, Ordering::Relaxed);
        g.cells_relayed.store(st.cells_relayed, Ordering::Relaxed);
        g.cells_recognized
            .store(st.cells_recognized, Ordering::Relaxed);
        set(&g.circuits, self.core.circuits());
        set(&g.channels, self.chans.len());
        set(&g.cross_circuits, self.cross_circuits());
        set(&g.proxies, self.proxies());
        set(&g.memory_bytes, self.memory_bytes);
    }

    /// Brings [`Shard::conn_bytes`] up to date after `conn`'s buffers changed.
    fn recount(&mut self, conn: ConnId) {
        let Some(c) = self.get_mut(conn) else { return };
        let now = c.buffered_bytes();
        let old = std::mem::replace(&mut c.counted, now);
        self.conn_bytes = self.conn_bytes.saturating_sub(old).saturating_add(now);
    }

    /// The bytes held now, from counters kept up to date (no walk over the connections).
    fn count_memory(&self) -> usize {
        #[cfg(test)]
        assert_eq!(
            self.conn_bytes,
            self.slots
                .iter()
                .filter_map(|s| s.conn.as_ref())
                .map(Conn::buffered_bytes)
                .sum::<usize>(),
            "incremental count matches a walk"
        );
        self.core
            .queued_bytes()
            .saturating_add(self.conn_bytes)
            .saturating_add(self.x.as_ref().map_or(0, |x| {
                (x.out.iter().map(Vec::len).sum::<usize>() + x.cells_in.len())
                    * std::mem::size_of::<XMsg>()
            }))
    }

    /// The OOM policy (module docs): circuits with the most queued cells first, then the
    /// connections with the most buffered bytes, until at most 90% of the cap is held.
    fn enforce_memory_cap(&mut self) {
        let mut used = self.count_memory();
        self.memory_bytes = used;
        let cap = self.limits.memory_max_bytes;
        if used <= cap {
            return;
        }
        self.stats.oom_events += 1;
        let target = cap / 10 * 9;
        while used > target {
            let Some(freed) = self.core.close_largest_queue(&mut self.out) else {
                break;
            };
            self.stats.oom_circuits_closed += 1;
            used = used.saturating_sub(freed);
        }
        // The DESTROY cells go out before any connection is judged by its buffers.
        self.route_out();
        used = self.count_memory();
        while used > target {
            // Largest first; among equals the lowest index, for determinism.
            let largest = (0..self.slots.len())
                .filter_map(|i| {
                    let conn = self.id_at(i)?;
                    Some((self.get(conn)?.buffered_bytes(), conn))
                })
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.index.cmp(&a.1.index)));
            let Some((_, conn)) = largest else {
                break;
            };
            self.stats.oom_conns_closed += 1;
            self.close(conn, CloseReason::MemoryCap);
            // Closing sends DESTROYs to other connections: count again rather than guess.
            used = self.count_memory();
        }
        self.memory_bytes = used;
    }

    /// The next event for the reactor.
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline (UNIX seconds) at which [`Shard::handle_timeout`] must be called.
    pub fn next_timeout(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.conn.as_ref().and_then(|c| c.deadline))
            .min()
    }

    /// Closes the connections whose handshake deadline passed.
    pub fn handle_timeout(&mut self, now: u64) {
        for i in 0..self.slots.len() {
            let Some(conn) = self.id_at(i) else { continue };
            if self
                .get(conn)
                .and_then(|c| c.deadline)
                .is_some_and(|d| d <= now)
            {
                self.stats.handshakes_failed += 1;
                self.close(conn, CloseReason::HandshakeTimeout);
            }
        }
    }

    /// Closes `conn` at once (shutdown, or the reactor's socket failed).
    pub fn handle_close(&mut self, conn: ConnId) {
        self.close(conn, CloseReason::Local);
    }

    fn batch_round(&mut self, rng: &mut impl CryptoRngCore, now: u64) -> bool {
        // Cells from earlier calls first: the batch's cells go to the connections directly.
        if !self.out.is_empty() {
            self.route_out();
        }
        // The open connections' received plaintext, lent to the cells of this round.
        let mut inbufs = std::mem::take(&mut self.inbufs);
        inbufs.resize_with(self.slots.len(), Vec::new);
        for (slot, buf) in self.slots.iter_mut().zip(inbufs.iter_mut()) {
            if let Some(c) = slot.conn.as_mut() {
                if matches!(c.state, ConnState::Open { .. }) {
                    std::mem::swap(&mut c.inbuf, buf);
                }
            }
        }
        let mut cells: Vec<InCell<'_>> = recycle(std::mem::take(&mut self.cells_buf));
        self.consumed.clear();
        let cells_in = self
            .x
            .as_mut()
            .map(|x| std::mem::take(&mut x.cells_in))
            .unwrap_or_default();
        for (chan, cell) in &cells_in {
            cells.push(InCell {
                chan: *chan,
                cell: cell.as_raw(),
            });
        }
        // Circuit ids of other shards' circuits on our channels (none without cross traffic).
        let mut done: Vec<(ChanId, CircId)> = Vec::new();
        let cross = self.x.as_mut().filter(|x| !x.back.is_empty());
        let mut cross = cross;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(c) = &slot.conn else { continue };
            let ConnState::Open { chan, circ_id_len } = c.state else {
                continue;
            };
            let inbuf = inbufs.get(i).map_or(&[][..], Vec::as_slice);
            let mut off = 0;
            while let Some((cell, used)) =
                RawCell::decode(inbuf.get(off..).unwrap_or_default(), circ_id_len)
            {
                off += used;
                if cell.cmd == ChanCmd::PADDING_NEGOTIATE {
                    // padding-spec §2: a relay may decline link padding; chive sends none
                    // (no padding machine yet), so a START or STOP changes nothing and needs
                    // no answer (the protocol has none). Counted, and ignored even when
                    // malformed, as C tor does; the channel stays open.
                    let body = cell.body.as_slice();
                    if proto::chan_msg::PaddingNegotiate::decode(body).is_ok() {
                        self.stats.padding_negotiate += 1;
                    }
                    continue;
                }
                if let (Some(x), Some(id)) = (cross.as_deref_mut(), cell.circ_id) {
                    if let Some(&(shard, proxy, their)) = x.back.get(&(chan, id)) {
                        if let (Some(mut cc), Some(q)) =
                            (CircCell::from_raw(&cell), x.out.get_mut(usize::from(shard)))
                        {
                            cc.circ_id = their;
                            if cc.cmd == ChanCmd::DESTROY {
                                done.push((chan, id));
                            }
                            q.push(XMsg::FromChannel { proxy, cell: cc });
                        }
                        continue;
                    }
                }
                cells.push(InCell { chan, cell });
            }
            if off > 0 {
                self.consumed.push((i as u32, off));
            }
        }
        let any = !(cells.is_empty() && self.consumed.is_empty());
        if !cells.is_empty() {
            self.stats.batches += 1;
            let mut enc = Encoder {
                chans: &self.chans,
                slots: &mut self.slots,
                writable: &mut self.writable,
                fresh: &mut self.fresh,
                over_cap: &mut self.over_cap,
                plain_max: self.limits.plain_out_max_bytes,
                rest: &mut self.out,
                last: None,
            };
            self.core
                .handle_batch(rng, &cells, &mut enc, &mut self.core_events);
        }
        self.cells_buf = recycle(cells);
        for (slot, buf) in self.slots.iter_mut().zip(inbufs.iter_mut()) {
            if let Some(c) = slot.conn.as_mut() {
                if matches!(c.state, ConnState::Open { .. }) {
                    std::mem::swap(&mut c.inbuf, buf);
                }
            }
        }
        self.inbufs = inbufs;
        if !any {
            return false;
        }
        if let Some(x) = self.x.as_mut() {
            let mut cells_in = cells_in;
            cells_in.clear();
            if x.cells_in.is_empty() {
                x.cells_in = cells_in;
            }
        }
        for (chan, id) in done {
            self.forget_cross(chan, id);
        }
        let consumed = std::mem::take(&mut self.consumed);
        for &(i, off) in &consumed {
            let Some(conn) = self.id_at(i as usize) else {
                continue;
            };
            if let Some(c) = self.get_mut(conn) {
                c.inbuf.drain(..off);
            }
            // TLS may hold more plaintext that did not fit before.
            self.pump_in(conn, now);
        }
        self.consumed = consumed;
        self.route_out();
        self.handle_core_events(rng, now);
        true
    }

    fn handle_core_events(&mut self, rng: &mut impl CryptoRngCore, now: u64) {
        let mut events = std::mem::take(&mut self.core_events);
        for ev in events.drain(..) {
            match ev {
                Event::OpenChannel {
                    request,
                    rsa_id,
                    ed_id,
                    link_specs,
                } => self.open_channel(rng, now, request, rsa_id, ed_id, &link_specs),
                Event::CloseChannel { chan } => {
                    if let Some(&conn) = self.chans.get(&chan) {
                        self.close(conn, CloseReason::Protocol);
                    } else {
                        self.drop_proxy(chan, true);
                    }
                }
            }
        }
        self.core_events = events;
    }

    fn open_channel(
        &mut self,
        rng: &mut impl CryptoRngCore,
        now: u64,
        request: RequestId,
        rsa_id: RsaIdentity,
        ed_id: Option<Ed25519Identity>,
        link_specs: &[LinkSpec],
    ) {
        // An open channel of another shard (one canonical channel per peer for the relay).
        if self.use_remote_channel(request, rsa_id, ed_id, link_specs) {
            return;
        }
        // A channel to this relay already being opened serves this request too.
        for slot in &mut self.slots {
            if let Some(Conn {
                state:
                    ConnState::Handshaking(Handshake::Initiator {
                        rsa_id: r,
                        requests,
                        ..
                    }),
                ..
            }) = &mut slot.conn
            {
                if *r == rsa_id {
                    requests.push(request);
                    return;
                }
            }
        }
        let addr = link_specs
            .iter()
            .find_map(|s| match s {
                LinkSpec::Ipv4(a, p) => Some(SocketAddr::new(IpAddr::V4(*a), *p)),
                _ => None,
            })
            .or_else(|| {
                link_specs.iter().find_map(|s| match s {
                    LinkSpec::Ipv6(a, p) => Some(SocketAddr::new(IpAddr::V6(*a), *p)),
                    _ => None,
                })
            });
        let conn = addr.and_then(|addr| {
            let creds = RelayCredentials {
                keys: &self.ctx.keys,
                identity_certs: &self.ctx.identity_certs,
            };
            let expected = ExpectedPeer {
                rsa_identity: Some(rsa_id),
                ed25519_identity: ed_id,
            };
            let addrs = NetinfoAddrs {
                peer: addr.ip(),
                ours: self.ctx.our_addrs.clone(),
            };
            let mut hs = Initiator::new(Some(creds), expected, addrs, now, rng).ok()?;
            let mut tls =
                TlsLink::client(self.ctx.client.clone(), self.limits.tls_out_max_bytes).ok()?;
            let mut versions = Vec::new();
            hs.poll_transmit(&mut versions);
            // Held by TLS until its handshake is done; a VERSIONS cell is far below the bound.
            tls.write_plaintext(&versions).ok()?;
            let requests = vec![request];
            let mut c = Conn::new(
                tls,
                ConnState::Handshaking(Handshake::Initiator {
                    hs: Box::new(hs),
                    rsa_id,
                    requests,
                }),
                addr,
                now.saturating_add(self.limits.handshake_timeout_secs),
            );
            c.connecting = true;
            let conn = self.insert(c)?;
            Some((conn, addr))
        });
        match conn {
            Some((conn, addr)) => {
                self.stats.connects += 1;
                self.events.push_back(ShardEvent::Connect { conn, addr });
            }
            None => {
                self.core.handle_channel_failed(request, &mut self.out);
                self.route_out();
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Cross-shard channels (crate::xshard)

    /// Serves `request` with another shard's open channel if the registry has a canonical one:
    /// our core gets a proxy channel standing for it.
    fn use_remote_channel(
        &mut self,
        request: RequestId,
        rsa_id: RsaIdentity,
        ed_id: Option<Ed25519Identity>,
        link_specs: &[LinkSpec],
    ) -> bool {
        let Some(x) = self.x.as_mut() else {
            return false;
        };
        let Some(e) = x.link.registry.find(rsa_id, ed_id, link_specs, x.link.me) else {
            return false;
        };
        let proxy = match x.proxy_by_remote.get(&(e.shard, e.chan)) {
            Some(&p) => p,
            None => {
                self.next_chan = self.next_chan.wrapping_add(1);
                let p = ChanId(self.next_chan);
                x.proxies.insert(p, (e.shard, e.chan));
                x.proxy_by_remote.insert((e.shard, e.chan), p);
                p
            }
        };
        let info = ChanInfo {
            link_version: e.link_version,
            initiator: e.initiator,
            rsa_id: Some(rsa_id),
            ed_id: e.ed_id,
        };
        self.core
            .handle_channel_opened(request, proxy, info, &mut self.out);
        self.core.set_channel_addrs(proxy, e.addrs);
        self.route_out();
        true
    }

    /// Takes what other shards sent (a bounded number of batches per call). If the inbox was
    /// full, a sender may be holding a batch back ([`Shard::flush_cross`]) and sleeping: wake
    /// every other shard once there is room, so none has to poll for it.
    fn handle_inbox(&mut self) {
        let was_full = self.x.as_ref().is_some_and(|x| x.link.rx.is_full());
        for _ in 0..INBOX_DRAIN_MAX {
            let Some(batch) = self.x.as_ref().and_then(|x| x.link.rx.try_recv().ok()) else {
                break;
            };
            for msg in batch {
                self.handle_xmsg(msg);
            }
        }
        if was_full {
            if let Some(x) = self.x.as_ref() {
                let me = usize::from(x.link.me);
                for (i, w) in x.link.wakers.iter().enumerate() {
                    if i != me {
                        w.wake();
                    }
                }
            }
        }
        self.route_out();
    }

    fn handle_xmsg(&mut self, msg: XMsg) {
        let Some(x) = self.x.as_mut() else { return };
        match msg {
            XMsg::ToChannel {
                from,
                proxy,
                chan,
                mut cell,
            } => {
                if !self.chans.contains_key(&chan) {
                    // Closed meanwhile (or never ours): the sender's circuits on it die.
                    if let Some(q) = x.out.get_mut(usize::from(from)) {
                        q.push(XMsg::ChannelClosed { proxy });
                    }
                    return;
                }
                let key = (from, proxy, cell.circ_id);
                let ours = match x.fwd.get(&key) {
                    Some(&(_, id)) => id,
                    None if cell.cmd == ChanCmd::CREATE2 => {
                        let Some(id) = self.core.reserve_circ_id(chan) else {
                            // No id or room on the channel: refuse as the peer would.
                            if let Some(q) = x.out.get_mut(usize::from(from)) {
                                let reason = [DestroyReason::RESOURCELIMIT.0];
                                q.push(XMsg::FromChannel {
                                    proxy,
                                    cell: CircCell::new(cell.circ_id, ChanCmd::DESTROY, &reason),
                                });
                            }
                            return;
                        };
                        x.fwd.insert(key, (chan, id));
                        x.back.insert((chan, id), key);
                        let users = x.users.entry(chan).or_default();
                        if !users.contains(&(from, proxy)) {
                            users.push((from, proxy));
                        }
                        id
                    }
                    // A cell for a circuit that is gone on this side.
                    None => return,
                };
                let destroy = cell.cmd == ChanCmd::DESTROY;
                cell.circ_id = ours;
                self.out.push(OutCell { chan, cell });
                if destroy {
                    self.forget_cross(chan, ours);
                }
            }
            XMsg::FromChannel { proxy, cell } => {
                if x.proxies.contains_key(&proxy) {
                    x.cells_in.push((proxy, cell));
                }
            }
            XMsg::ChannelClosed { proxy } => self.drop_proxy(proxy, false),
            XMsg::ServerKeys { ntor, ntor_v3 } => self.set_server_keys(*ntor, *ntor_v3),
            XMsg::Context(ctx) => self.set_context(ctx),
            XMsg::ProxyClosed { from, proxy, chan } => {
                let ids: Vec<CircId> = x
                    .back
                    .iter()
                    .filter(|(k, v)| k.0 == chan && v.0 == from && v.1 == proxy)
                    .map(|(k, _)| k.1)
                    .collect();
                if let Some(u) = x.users.get_mut(&chan) {
                    u.retain(|&p| p != (from, proxy));
                }
                for id in ids {
                    let reason = [DestroyReason::CHANNEL_CLOSED.0];
                    self.out.push(OutCell {
                        chan,
                        cell: CircCell::new(id, ChanCmd::DESTROY, &reason),
                    });
                    self.forget_cross(chan, id);
                }
            }
        }
    }

    /// Removes the translation of our circuit id `id` on our channel `chan`.
    fn forget_cross(&mut self, chan: ChanId, id: CircId) {
        let Some(x) = self.x.as_mut() else { return };
        if let Some(key) = x.back.remove(&(chan, id)) {
            x.fwd.remove(&key);
            self.core.release_circ_id(chan, id);
        }
    }

    /// Our channel `chan` closed: every other shard's proxy of it hears so.
    fn cross_channel_closed(&mut self, chan: ChanId) {
        let Some(x) = self.x.as_mut() else { return };
        if let Some(rsa) = x.registered.remove(&chan) {
            x.link.registry.remove(rsa, x.link.me, chan);
        }
        if let Some(users) = x.users.remove(&chan) {
            for (shard, proxy) in users {
                if let Some(q) = x.out.get_mut(usize::from(shard)) {
                    q.push(XMsg::ChannelClosed { proxy });
                }
            }
        }
        x.back.retain(|k, _| k.0 != chan);
        x.fwd.retain(|_, v| v.0 != chan);
    }

    /// Forgets our proxy `proxy`: its circuits die (DESTROY with CHANNEL_CLOSED towards their
    /// origin); `tell_owner` when the owning shard must drop its side too.
    fn drop_proxy(&mut self, proxy: ChanId, tell_owner: bool) {
        let Some(x) = self.x.as_mut() else { return };
        let Some((shard, chan)) = x.proxies.remove(&proxy) else {
            return;
        };
        x.proxy_by_remote.remove(&(shard, chan));
        x.cells_in.retain(|(p, _)| *p != proxy);
        if tell_owner {
            let from = x.link.me;
            if let Some(q) = x.out.get_mut(usize::from(shard)) {
                q.push(XMsg::ProxyClosed { from, proxy, chan });
            }
        }
        self.core.handle_channel_closed(proxy, &mut self.out);
        self.route_out();
    }

    /// Sends each shard its batch, then wakes it. A full inbox keeps the batch here (and stops
    /// reading sockets, [`Shard::wants_read`]) until a later call.
    fn flush_cross(&mut self) {
        let Some(x) = self.x.as_mut() else { return };
        x.blocked = false;
        for (i, q) in x.out.iter_mut().enumerate() {
            if q.is_empty() {
                continue;
            }
            let (Some(tx), Some(w)) = (x.link.tx.get(i), x.link.wakers.get(i)) else {
                q.clear();
                continue;
            };
            match tx.try_send(std::mem::take(q)) {
                Ok(()) => w.wake(),
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    *q = back;
                    x.blocked = true;
                    // The receiver may be asleep with a full inbox it has not seen yet.
                    w.wake();
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Moves received bytes through TLS and, during the handshake, the link handshake.
    fn pump_in(&mut self, conn: ConnId, now: u64) {
        let inbuf_max = self.limits.inbuf_max_bytes;
        let Some(i) = self.live_index(conn) else {
            return;
        };
        let mut failed: Option<CloseReason> = None;
        let mut finished = None;
        {
            let Some(c) = self.slots.get_mut(i).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            loop {
                let mut progress = false;
                if !c.wire_in.is_empty() {
                    match c.tls.handle_tls_into(&c.wire_in, &mut c.inbuf, inbuf_max) {
                        Ok(n) => {
                            progress |= n > 0;
                            c.wire_in.drain(..n);
                        }
                        Err(_) => {
                            failed = Some(CloseReason::Tls);
                            break;
                        }
                    }
                }
                if c.inbuf.len() < inbuf_max {
                    // Straight from TLS's plaintext buffers into the cell buffer.
                    let room = inbuf_max - c.inbuf.len();
                    match c.tls.read_plaintext_into(&mut c.inbuf, room) {
                        Ok(n) => progress |= n > 0,
                        Err(_) => {
                            // An EOF without close_notify after the last cell: the data
                            // already buffered is still processed.
                            failed = (!c.eof).then_some(CloseReason::Tls);
                        }
                    }
                }
                if failed.is_some() {
                    break;
                }
                if let ConnState::Handshaking(hs) = &mut c.state {
                    let tls_view = &c.tls;
                    let (r, done) = match hs {
                        Handshake::Responder(r) => {
                            let res = r.handle_input(&c.inbuf, now, tls_view);
                            (res, r.is_finished())
                        }
                        Handshake::Initiator { hs, .. } => {
                            let res = hs.handle_input(&c.inbuf, now, tls_view);
                            (res, hs.is_finished())
                        }
                    };
                    match r {
                        Ok(n) => {
                            progress |= n > 0;
                            c.inbuf.drain(..n.min(c.inbuf.len()));
                        }
                        Err(_) => {
                            failed = Some(CloseReason::Handshake);
                            break;
                        }
                    }
                    self.scratch.clear();
                    match hs {
                        Handshake::Responder(r) => r.poll_transmit(&mut self.scratch),
                        Handshake::Initiator { hs, .. } => hs.poll_transmit(&mut self.scratch),
                    }
                    let sent = c.tls.write_plaintext(&self.scratch);
                    self.scratch.clear();
                    self.scratch.resize(PLAINTEXT_STEP_BYTES, 0);
                    if sent.is_err() {
                        failed = Some(CloseReason::Tls);
                        break;
                    }
                    if done {
                        let state = std::mem::replace(
                            &mut c.state,
                            ConnState::Open {
                                chan: ChanId(0),
                                circ_id_len: CircIdLen::Four,
                            },
                        );
                        if let ConnState::Handshaking(hs) = state {
                            finished = Some(hs);
                        }
                        // The link handshake no longer needs TLS's exporter: records may
                        // move to `tls::record`.
                        c.tls.enable_records();
                        break;
                    }
                }
                if !progress {
                    break;
                }
            }
        }
        self.recount(conn);
        self.mark_writable(conn);
        if let Some(reason) = failed {
            self.stats.handshakes_failed += u64::from(finished.is_none() && !self.is_open(conn));
            self.close(conn, reason);
            return;
        }
        if let Some(hs) = finished {
            self.finish_handshake(conn, hs);
        }
        if let Some(c) = self.get(conn) {
            if matches!(c.state, ConnState::Open { .. })
                && RawCell::decode(&c.inbuf, CircIdLen::Four).is_some()
            {
                self.ready_cells = true;
            }
        }
    }

    fn finish_handshake(&mut self, conn: ConnId, hs: Handshake) {
        let (info, requests): (Option<LinkInfo>, Vec<RequestId>) = match hs {
            Handshake::Responder(r) => (r.finish(), Vec::new()),
            Handshake::Initiator { hs, requests, .. } => (hs.finish(), requests),
        };
        let Some(info) = info else {
            self.close(conn, CloseReason::Handshake);
            return;
        };
        self.next_chan = self.next_chan.wrapping_add(1);
        let chan = ChanId(self.next_chan);
        if let Some(c) = self.get_mut(conn) {
            c.state = ConnState::Open {
                chan,
                circ_id_len: info.circ_id_len,
            };
            c.deadline = None;
        }
        self.chans.insert(chan, conn);
        self.stats.channels_opened += 1;
        let chan_info = ChanInfo {
            link_version: info.link_version,
            initiator: info.we_initiated,
            rsa_id: info.peer.as_ref().map(|p| p.rsa_identity),
            ed_id: info.peer.as_ref().map(|p| p.ed25519_identity),
        };
        self.core.add_channel(chan, chan_info);
        if let (Some(rsa), Some(peer)) = (chan_info.rsa_id, self.get(conn).map(|c| c.peer)) {
            // tor-spec §5.3.1: canonical for the address we reach the peer at and those its
            // NETINFO claimed.
            let mut addrs = vec![peer.ip()];
            addrs.extend(info.peer_addrs.iter().filter(|a| **a != peer.ip()));
            self.core.set_channel_addrs(chan, addrs.clone());
            if let Some(x) = self.x.as_mut() {
                x.link.registry.insert(
                    rsa,
                    RegEntry {
                        shard: x.link.me,
                        chan,
                        link_version: chan_info.link_version,
                        initiator: chan_info.initiator,
                        ed_id: chan_info.ed_id,
                        addrs,
                    },
                );
                x.registered.insert(chan, rsa);
            }
        }
        for r in requests {
            self.core
                .handle_channel_opened(r, chan, chan_info, &mut self.out);
        }
        self.route_out();
    }

    /// Encodes and queues the circuits' output cells on their connections.
    ///
    /// The batch's cells for a connection are gathered first and handed to TLS in one write,
    /// so that they share TLS records (up to 16 KiB each) instead of taking one record per cell.
    fn route_out(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        let mut overflowed: Vec<ConnId> = Vec::new();
        // Cells for this shard's connections went there already when the circuits were run
        // with an [`Encoder`]; these are the others.
        let mut fresh = std::mem::take(&mut self.fresh);
        let mut over_cap = std::mem::take(&mut self.over_cap);
        let plain_max = self.limits.plain_out_max_bytes;
        // By reference: each cell is copied once, into the connection's plaintext.
        for o in &out {
            let Some(&conn) = self.chans.get(&o.chan) else {
                if let Some(x) = self.x.as_mut() {
                    if let Some(&(shard, chan)) = x.proxies.get(&o.chan) {
                        if let Some(q) = x.out.get_mut(usize::from(shard)) {
                            q.push(XMsg::ToChannel {
                                from: x.link.me,
                                proxy: o.chan,
                                chan,
                                cell: o.cell.clone(),
                            });
                        }
                    }
                }
                continue;
            };
            let Some(i) = self.live_index(conn) else {
                continue;
            };
            queue_cell(
                &mut self.slots,
                &mut self.writable,
                (&mut fresh, &mut over_cap, plain_max),
                (i, conn),
                o.cell.as_raw(),
            );
        }
        for &conn in &fresh {
            let Some(c) = self.get_mut(conn) else {
                continue;
            };
            match c.tls.write_plaintext(&c.plain_out) {
                Ok(n) => drop(c.plain_out.drain(..n)),
                Err(_) => overflowed.push(conn),
            }
            self.mark_writable(conn);
            self.recount(conn);
        }
        // Over the cap after TLS took what it could: the peer is not reading.
        for &conn in &over_cap {
            if self
                .get_mut(conn)
                .is_some_and(|c| c.plain_out.len() > plain_max)
            {
                overflowed.push(conn);
            }
        }
        out.clear();
        self.out = out;
        fresh.clear();
        self.fresh = fresh;
        over_cap.clear();
        self.over_cap = over_cap;
        for conn in overflowed {
            self.close(conn, CloseReason::Overflow);
        }
    }

    /// Forgets `conn`: its circuits are destroyed (DESTROY to their other side), waiting
    /// EXTEND2s fail, and the reactor is told to close the socket.
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(i) = self.live_index(conn) else {
            return;
        };
        let Some(c) = self.slots.get_mut(i).and_then(|s| s.conn.take()) else {
            return;
        };
        if let Some(s) = self.slots.get_mut(i) {
            s.gen = s.gen.wrapping_add(1);
        }
        self.free.push(conn.index);
        self.stats.closed += 1;
        self.conn_bytes = self.conn_bytes.saturating_sub(c.counted);
        self.events.push_back(ShardEvent::Close { conn, reason });
        // TLS close_notify after whatever ciphertext was still waiting, for the reactor to
        // write before it closes the socket (best effort: [`Shard::take_close_notify`]).
        let mut c = c;
        if !c.connecting && !matches!(reason, CloseReason::Tls | CloseReason::ConnectFailed) {
            let mut bye = c.outbuf.split_off(c.out_off.min(c.outbuf.len()));
            c.tls.send_close();
            c.tls.poll_tls(&mut bye, CLOSE_NOTIFY_MAX_BYTES);
            if self.last_words.len() >= self.limits.conns_max {
                self.last_words.pop_front();
            }
            self.last_words.push_back((conn, bye));
        }
        if c.inbound {
            if let Some(n) = self.per_ip.get_mut(&c.peer.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_ip.remove(&c.peer.ip());
                }
            }
        }
        match c.state {
            ConnState::Open { chan, .. } => {
                self.chans.remove(&chan);
                self.core.handle_channel_closed(chan, &mut self.out);
                self.cross_channel_closed(chan);
            }
            ConnState::Handshaking(Handshake::Initiator { requests, .. }) => {
                for r in requests {
                    self.core.handle_channel_failed(r, &mut self.out);
                }
            }
            ConnState::Handshaking(Handshake::Responder(_)) => {}
        }
        self.route_out();
    }

    fn insert(&mut self, conn: Conn) -> Option<ConnId> {
        if let Some(index) = self.free.pop() {
            let slot = self.slots.get_mut(index as usize)?;
            slot.conn = Some(conn);
            return Some(ConnId {
                index,
                gen: slot.gen,
            });
        }
        if self.slots.len() >= self.limits.conns_max {
            return None;
        }
        let index = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Slot {
            gen: 0,
            conn: Some(conn),
        });
        Some(ConnId { index, gen: 0 })
    }

    fn mark_writable(&mut self, conn: ConnId) {
        if let Some(c) = self.get_mut(conn) {
            let has = c.out_off < c.outbuf.len() || c.tls.wants_tls_out();
            if has && !c.listed {
                c.listed = true;
                self.writable.push_back(conn);
            }
        }
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.get(conn)
            .is_some_and(|c| matches!(c.state, ConnState::Open { .. }))
    }

    fn id_at(&self, i: usize) -> Option<ConnId> {
        let s = self.slots.get(i)?;
        s.conn.as_ref()?;
        Some(ConnId {
            index: u32::try_from(i).ok()?,
            gen: s.gen,
        })
    }

    fn live_index(&self, conn: ConnId) -> Option<usize> {
        let s = self.slots.get(conn.index())?;
        (s.gen == conn.gen && s.conn.is_some()).then_some(conn.index())
    }

    fn get(&self, conn: ConnId) -> Option<&Conn> {
        let i = self.live_index(conn)?;
        self.slots.get(i)?.conn.as_ref()
    }

    fn get_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        let i = self.live_index(conn)?;
        self.slots.get_mut(i)?.conn.as_mut()
    }
}

impl Conn {
    /// Bytes this connection holds in its own buffers.
    fn buffered_bytes(&self) -> usize {
        self.wire_in.len()
            + self.inbuf.len()
            + self.outbuf.len().saturating_sub(self.out_off)
            + self.plain_out.len()
    }

    fn new(tls: TlsLink, state: ConnState, peer: SocketAddr, deadline: u64) -> Self {
        Conn {
            tls,
            state,
            peer,
            connecting: false,
            eof: false,
            deadline: Some(deadline),
            wire_in: Vec::new(),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            out_off: 0,
            plain_out: Vec::new(),
            listed: false,
            inbound: false,
            counted: 0,
        }
    }
}

/// The circuits' output during [`Shard::batch_round`]: cells for this shard's open connections
/// are encoded into their plaintext queues at once (a relayed cell's body is copied once, from
/// the crypto batch); cells for other shards' channels go to `rest`, which
/// [`Shard::route_out`] handles right after.
struct Encoder<'s> {
    chans: &'s CellMap<ChanId, ConnId>,
    slots: &'s mut Vec<Slot>,
    writable: &'s mut VecDeque<ConnId>,
    fresh: &'s mut Vec<ConnId>,
    over_cap: &'s mut Vec<ConnId>,
    plain_max: usize,
    rest: &'s mut Vec<OutCell>,
    /// The last channel looked up and its live connection (slot index, id): channels and
    /// connections do not change while the circuits run, and consecutive cells mostly go to
    /// the same channel.
    last: Option<(ChanId, usize, ConnId)>,
}

impl CellSink for Encoder<'_> {
    fn put(&mut self, chan: ChanId, circ_id: CircId, cmd: ChanCmd, body: &[u8; BODY_LEN]) {
        let live = match self.last {
            Some((c, i, conn)) if c == chan => Some((i, conn)),
            _ => {
                let live = self.chans.get(&chan).and_then(|&conn| {
                    let s = self.slots.get(conn.index())?;
                    (s.gen == conn.gen && s.conn.is_some()).then_some((conn.index(), conn))
                });
                if let Some((i, conn)) = live {
                    self.last = Some((chan, i, conn));
                }
                live
            }
        };
        let Some(at) = live else {
            // Not ours (a proxy of another shard's channel), or gone: `route_out` decides.
            self.rest.push(OutCell {
                chan,
                cell: CircCell {
                    circ_id,
                    cmd,
                    body: *body,
                },
            });
            return;
        };
        let raw = RawCell {
            circ_id: Some(circ_id),
            cmd,
            body: CellBody::Fixed(body),
        };
        queue_cell(
            self.slots,
            self.writable,
            (self.fresh, self.over_cap, self.plain_max),
            at,
            raw,
        );
    }
}

/// Appends `cell` to the plaintext queue of the connection in slot `at.0` (named `at.1`) if
/// it is open, noting it in `fresh` when its queue was empty and in `over_cap` when the queue
/// went over `plain_max`; a connection with plaintext already queued is listed writable.
fn queue_cell(
    slots: &mut [Slot],
    writable: &mut VecDeque<ConnId>,
    (fresh, over_cap, plain_max): (&mut Vec<ConnId>, &mut Vec<ConnId>, usize),
    (i, conn): (usize, ConnId),
    cell: RawCell<'_>,
) {
    let Some(c) = slots.get_mut(i).and_then(|s| s.conn.as_mut()) else {
        return;
    };
    let ConnState::Open { circ_id_len, .. } = c.state else {
        return;
    };
    let start = c.plain_out.len();
    if start == 0 {
        // Nothing queued ahead of it: straight into the TLS record being filled, if TLS has
        // room (no copy from a queue into the record afterwards).
        let need = circ_id_len.bytes()
            + 1
            + match cell.body {
                CellBody::Fixed(b) => b.len(),
                CellBody::Var(b) => 2 + b.len(),
            };
        if let Some(w) = c.tls.plaintext_writer(need) {
            let at = w.len();
            if cell.encode(circ_id_len, w).is_err() {
                w.truncate(at);
                return;
            }
            if !c.listed {
                c.listed = true;
                writable.push_back(conn);
            }
            return;
        }
    }
    if cell.encode(circ_id_len, &mut c.plain_out).is_err() {
        c.plain_out.truncate(start);
        return;
    }
    if start == 0 {
        fresh.push(conn);
    } else {
        if c.plain_out.len() > plain_max {
            // Checked again once TLS has taken what it can (this may be a fresh one).
            over_cap.push(conn);
        }
        // As `Shard::mark_writable`.
        let has = c.out_off < c.outbuf.len() || c.tls.wants_tls_out();
        if has && !c.listed {
            c.listed = true;
            writable.push_back(conn);
        }
    }
}

/// `v` emptied, as a list of cells borrowing for another lifetime, keeping its allocation:
/// the list of a batch's received cells borrows the connections' buffers, so it cannot be
/// stored between rounds as such. Collecting an empty `vec::IntoIter` through `filter_map`
/// into a vector of a type of the same size and alignment reuses the allocation (std's
/// in-place collection), so no `unsafe` is needed; should std ever stop doing that, this
/// allocates as before (`recycle_keeps_the_allocation` checks it).
// `filter` would keep the element type; the point is to change its lifetime.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<InCell<'_>>) -> Vec<InCell<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Fuzz entry: `data` as bytes from a fresh inbound connection, in chunks split at every 0xFF
/// byte, through TLS and the responder's link handshake (all in memory; never panics). The
/// relay's keys are made once, from a fixed seed.
pub fn fuzz_recv(data: &[u8]) {
    use rand::SeedableRng;
    static CTX: std::sync::OnceLock<Option<Arc<RelayContext>>> = std::sync::OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = 1_750_000_000;
        let keys = RelayKeys::generate(now, &mut rng).ok()?;
        let cert = crate::tls::LinkCert::generate(
            crate::tls::LinkKeyAlg::EcdsaP256,
            now,
            86_400,
            &mut rng,
        )
        .ok()?;
        Some(Arc::new(RelayContext {
            identity_certs: keys.identity_certs(now, &mut rng).ok()?,
            server: crate::tls::server_config(&cert).ok()?,
            client: crate::tls::client_config().ok()?,
            link_cert_digest: cert.digest(),
            our_addrs: vec![IpAddr::from([127, 0, 0, 1])],
            keys,
        }))
    });
    let (Some(ctx), Ok(engine)) = (ctx, Engine::from_env()) else {
        return;
    };
    let limits = ShardLimits {
        conns_max: 2,
        ..ShardLimits::default()
    };
    let circuit_limits = Limits {
        circuits_max: 4,
        pending_extends_max: 2,
        ..Limits::default()
    };
    let Ok(mut shard) = Shard::new(ctx.clone(), engine, limits, circuit_limits) else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let now = 1_750_000_000;
    let peer = SocketAddr::from(([10, 0, 0, 1], 1000));
    let Some(conn) = shard.handle_accepted(&mut rng, peer, now) else {
        return;
    };
    for chunk in data.split(|&b| b == 0xff) {
        if shard.wants_read(conn) {
            shard.handle_recv(conn, chunk, now);
        }
        shard.process_batch(&mut rng, now);
        while let Some(c) = shard.poll_writable() {
            let n = shard.poll_transmit(c).len();
            shard.handle_sent(c, n);
        }
        while shard.poll_event().is_some() {}
    }
    shard.handle_eof(conn);
    shard.process_batch(&mut rng, now);
    shard.handle_timeout(now + 3600);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Two shards (two relays) and a client wired by in-memory byte pipes: TLS, both link
    //! handshake roles, EXTEND2 through a shard-opened channel, and circuit replies.
    use super::*;
    use crate::circuit::{CircCell, ClientEvent, HandshakeKind, OriginCircuit, RelayInfo};
    use crate::tls::{client_config, server_config, LinkCert, LinkKeyAlg};
    use proto::cell::ChanCmd;
    use proto::chan_msg::DestroyReason;
    use proto::ids::{CircId, StreamId};
    use proto::relay_cell::RelayCmd;
    use proto::relay_msg::{Begin, End, EndReason, Host, RelayMsg};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn recycle_keeps_the_allocation() {
        let body = [7u8; proto::cell::BODY_LEN];
        let raw = proto::cell::RawCell {
            circ_id: CircId::new(5),
            cmd: ChanCmd::RELAY,
            body: proto::cell::CellBody::Fixed(&body),
        };
        let mut v: Vec<InCell<'_>> = Vec::with_capacity(64);
        let ptr = v.as_ptr() as usize;
        v.push(InCell {
            chan: ChanId(1),
            cell: raw,
        });
        let r: Vec<InCell<'static>> = recycle(v);
        assert!(r.is_empty());
        assert_eq!(r.capacity(), 64);
        assert_eq!(r.as_ptr() as usize, ptr);
        // And back to a borrowing lifetime.
        let mut w: Vec<InCell<'_>> = recycle(r);
        w.push(InCell {
            chan: ChanId(2),
            cell: raw,
        });
        assert_eq!(w.as_ptr() as usize, ptr);
        assert_eq!(w[0].chan, ChanId(2));
    }

    fn context(seed: u64, addr: SocketAddr) -> Arc<RelayContext> {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = RelayKeys::generate(NOW, &mut rng).unwrap();
        let cert = LinkCert::generate(LinkKeyAlg::EcdsaP256, NOW, 86_400, &mut rng).unwrap();
        let identity_certs = keys.identity_certs(NOW, &mut rng).unwrap();
        Arc::new(RelayContext {
            identity_certs,
            server: server_config(&cert).unwrap(),
            client: client_config().unwrap(),
            link_cert_digest: cert.digest(),
            our_addrs: vec![addr.ip()],
            keys,
        })
    }

    /// The client's end of its connection: TLS, then our Initiator as a client.
    struct Client {
        tls: TlsLink,
        hs: Option<Initiator>,
        info: Option<LinkInfo>,
        inbuf: Vec<u8>,
        wire_in: Vec<u8>,
    }

    impl Client {
        fn new(relay: &RelayContext, addr: SocketAddr, rng: &mut StdRng) -> Client {
            let expected = ExpectedPeer {
                rsa_identity: Some(relay.keys.fingerprint()),
                ed25519_identity: Some(relay.keys.ed25519_identity()),
            };
            let addrs = NetinfoAddrs {
                peer: addr.ip(),
                ours: vec![],
            };
            let mut hs = Initiator::new(None, expected, addrs, NOW, rng).unwrap();
            let mut tls = TlsLink::client(client_config().unwrap(), 1 << 20).unwrap();
            let mut v = Vec::new();
            hs.poll_transmit(&mut v);
            tls.write_plaintext(&v).unwrap();
            Client {
                tls,
                hs: Some(hs),
                info: None,
                inbuf: Vec::new(),
                wire_in: Vec::new(),
            }
        }

        fn recv(&mut self, data: &[u8]) {
            self.wire_in.extend_from_slice(data);
            let n = self.tls.handle_tls(&self.wire_in).unwrap();
            self.wire_in.drain(..n);
            let mut buf = [0u8; 4096];
            loop {
                let n = self.tls.read_plaintext(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                self.inbuf.extend_from_slice(&buf[..n]);
            }
            if let Some(hs) = &mut self.hs {
                let used = hs.handle_input(&self.inbuf, NOW, &self.tls).unwrap();
                self.inbuf.drain(..used);
                let mut v = Vec::new();
                hs.poll_transmit(&mut v);
                self.tls.write_plaintext(&v).unwrap();
                if hs.is_finished() {
                    self.info = self.hs.take().unwrap().finish();
                }
            }
        }

        fn send(&mut self, cell: &CircCell) {
            let mut v = Vec::new();
            cell.encode(CircIdLen::Four, &mut v).unwrap();
            assert_eq!(self.tls.write_plaintext(&v).unwrap(), v.len());
        }

        fn cells(&mut self) -> Vec<CircCell> {
            let mut got = Vec::new();
            if self.info.is_none() {
                return got;
            }
            while let Some((raw, used)) = RawCell::decode(&self.inbuf, CircIdLen::Four) {
                if let Some(c) = CircCell::from_raw(&raw) {
                    got.push(c);
                }
                self.inbuf.drain(..used);
            }
            got
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum End_ {
        Client(usize),
        Shard(usize, ConnId),
    }

    /// Shards and clients joined by in-memory byte pipes. [`Net::new`]: the client's first hop
    /// (shard 0) and a second relay (shard 1). [`Net::cross_shard`]: relay R as two shards
    /// (0 and 1) joined by a cross-shard mesh, relay P (shard 2, echoing DROPs), and one client
    /// on each of R's shards.
    struct Net {
        rng: StdRng,
        shards: Vec<Shard>,
        addrs: Vec<SocketAddr>,
        clients: Vec<Client>,
        pipes: Vec<(End_, End_)>,
        connects: usize,
        /// Bytes are taken as the io_uring reactor does ([`Shard::take_transmit`], this passed
        /// as `hold_below`), or lent ([`Shard::poll_transmit`]) when `None`.
        hold_below: Option<usize>,
    }

    impl Net {
        fn new() -> Net {
            Net::with_limits(ShardLimits::default())
        }

        /// A net whose shard 0 (the client's first hop) has `limits`.
        fn with_limits(limits: ShardLimits) -> Net {
            let mut rng = StdRng::seed_from_u64(7);
            let addrs: Vec<SocketAddr> = vec![
                "10.0.0.1:9001".parse().unwrap(),
                "10.0.0.2:9001".parse().unwrap(),
            ];
            let ctxs: Vec<_> = (0..2).map(|i| context(i as u64 + 1, addrs[i])).collect();
            let engine = Engine::from_env().unwrap();
            let shards = ctxs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let l = if i == 0 {
                        limits
                    } else {
                        ShardLimits::default()
                    };
                    Shard::new(c.clone(), engine, l, Limits::default()).unwrap()
                })
                .collect();
            let client = Client::new(&ctxs[0], addrs[0], &mut rng);
            let mut net = Net {
                rng,
                shards,
                addrs,
                clients: vec![client],
                pipes: Vec::new(),
                connects: 0,
                hold_below: Some(0),
            };
            let conn = net.shards[0]
                .handle_accepted(&mut net.rng, "10.9.9.9:5555".parse().unwrap(), NOW)
                .unwrap();
            net.pipes.push((End_::Client(0), End_::Shard(0, conn)));
            net
        }

        fn cross_shard() -> Net {
            let mut rng = StdRng::seed_from_u64(11);
            let r_addr: SocketAddr = "10.0.0.1:9001".parse().unwrap();
            let p_addr: SocketAddr = "10.0.0.2:9001".parse().unwrap();
            let (r, p) = (context(21, r_addr), context(22, p_addr));
            let engine = Engine::from_env().unwrap();
            let mk = |c: &Arc<RelayContext>| {
                Shard::new(c.clone(), engine, ShardLimits::default(), Limits::default()).unwrap()
            };
            let mut shards = vec![mk(&r), mk(&r), mk(&p)];
            let links = crate::xshard::mesh(vec![
                Arc::new(crate::xshard::NoWake),
                Arc::new(crate::xshard::NoWake),
            ]);
            for (s, l) in shards.iter_mut().zip(links) {
                s.set_xlink(l);
            }
            shards[2].core_mut().set_echo_drop_for_tests(true);
            let clients = vec![
                Client::new(&r, r_addr, &mut rng),
                Client::new(&r, r_addr, &mut rng),
            ];
            let mut net = Net {
                rng,
                shards,
                addrs: vec![r_addr, r_addr, p_addr],
                clients,
                pipes: Vec::new(),
                connects: 0,
                hold_below: None,
            };
            for k in 0..2 {
                let from = SocketAddr::new(IpAddr::from([10, 9, 9, k as u8]), 5555);
                let conn = net.shards[k]
                    .handle_accepted(&mut net.rng, from, NOW)
                    .unwrap();
                net.pipes.push((End_::Client(k), End_::Shard(k, conn)));
            }
            net.run();
            net
        }

        fn info(&self, i: usize) -> RelayInfo {
            RelayInfo::from_keys(&self.shards[i].ctx.keys, vec![self.addrs[i]])
        }

        fn peer(&self, e: End_) -> Option<End_> {
            self.pipes.iter().find_map(|&(a, b)| {
                if a == e {
                    Some(b)
                } else if b == e {
                    Some(a)
                } else {
                    None
                }
            })
        }

        fn deliver(&mut self, to: End_, data: &[u8]) {
            match to {
                End_::Client(k) => self.clients[k].recv(data),
                End_::Shard(s, c) => {
                    // A shard blocked on a full cross-shard inbox may stop reading.
                    assert!(self.shards[s].wants_read(c) || self.hold_below.is_none());
                    self.shards[s].handle_recv(c, data, NOW)
                }
            }
        }

        /// Moves bytes until nothing moves.
        fn run(&mut self) {
            for _ in 0..200 {
                let mut busy = false;
                for k in 0..self.clients.len() {
                    let mut out = Vec::new();
                    self.clients[k].tls.poll_tls(&mut out, usize::MAX);
                    if !out.is_empty() {
                        busy = true;
                        if let Some(to) = self.peer(End_::Client(k)) {
                            self.deliver(to, &out);
                        }
                    }
                }
                for s in 0..self.shards.len() {
                    busy |= self.shards[s].has_ready_cells();
                    self.shards[s].process_batch(&mut self.rng, NOW);
                    while let Some(ev) = self.shards[s].poll_event() {
                        busy = true;
                        match ev {
                            ShardEvent::Connect { conn, addr } => {
                                self.connects += 1;
                                let t = self.addrs.iter().rposition(|a| *a == addr).unwrap();
                                let from = SocketAddr::new(self.addrs[s].ip(), 40000 + s as u16);
                                let tc = self.shards[t]
                                    .handle_accepted(&mut self.rng, from, NOW)
                                    .unwrap();
                                self.pipes.push((End_::Shard(s, conn), End_::Shard(t, tc)));
                                self.shards[s].handle_connected(conn);
                            }
                            ShardEvent::Close { conn, .. } => {
                                let me = End_::Shard(s, conn);
                                if let Some(p) = self.peer(me) {
                                    self.pipes.retain(|&(a, b)| a != me && b != me);
                                    if let End_::Shard(t, tc) = p {
                                        self.shards[t].handle_eof(tc);
                                    }
                                }
                            }
                        }
                    }
                    busy |= match self.hold_below {
                        Some(hold_below) => self.take_all(s, hold_below),
                        None => self.lend_writable(s),
                    };
                }
                if !busy {
                    return;
                }
            }
            panic!("network not quiet");
        }

        /// As the io_uring reactor does: every connection of shard `s`, bytes taken by swap (a
        /// held connection is not on the writable list again). Whether any moved.
        fn take_all(&mut self, s: usize, hold_below: usize) -> bool {
            while self.shards[s].poll_writable().is_some() {}
            let conns: Vec<ConnId> = self
                .pipes
                .iter()
                .flat_map(|&(a, b)| [a, b])
                .filter_map(|e| match e {
                    End_::Shard(t, c) if t == s => Some(c),
                    _ => None,
                })
                .collect();
            let mut busy = false;
            for conn in conns {
                let mut data = Vec::new();
                if self.shards[s].take_transmit(conn, &mut data, hold_below) == 0 {
                    continue;
                }
                busy = true;
                self.sent_and_delivered(s, conn, &data);
            }
            busy
        }

        /// `data`, taken from `conn` of shard `s`, reported written and handed to the peer.
        fn sent_and_delivered(&mut self, s: usize, conn: ConnId, data: &[u8]) {
            self.shards[s].handle_sent(conn, data.len());
            if let Some(to) = self.peer(End_::Shard(s, conn)) {
                self.deliver(to, data);
            }
        }

        /// The writable connections of shard `s`, bytes lent. Whether any moved.
        fn lend_writable(&mut self, s: usize) -> bool {
            let mut busy = false;
            while let Some(conn) = self.shards[s].poll_writable() {
                let data = self.shards[s].poll_transmit(conn).to_vec();
                if data.is_empty() {
                    continue;
                }
                busy = true;
                self.sent_and_delivered(s, conn, &data);
            }
            busy
        }

        fn exchange(&mut self, k: usize, circ: &mut OriginCircuit, cell: CircCell) -> ClientEvent {
            self.clients[k].send(&cell);
            self.run();
            let got = self.clients[k].cells();
            assert_eq!(got.len(), 1, "{got:?}");
            circ.handle_cell(&got[0]).unwrap()
        }

        /// A one-hop CREATE_FAST circuit `0x8000_0000 | v` from client `k` to shard 0.
        fn create_fast(&mut self, k: usize, v: u32) -> OriginCircuit {
            let engine = Engine::from_env().unwrap();
            let first = self.info(0);
            let id = CircId::new(0x8000_0000 | v).unwrap();
            let (mut circ, cell) = OriginCircuit::create_first_hop(
                &mut self.rng,
                engine,
                id,
                HandshakeKind::CreateFast,
                &first,
            )
            .unwrap();
            assert_eq!(
                self.exchange(k, &mut circ, cell),
                ClientEvent::HopAdded { hops: 1 }
            );
            circ
        }

        /// A circuit from client `k` through shard `k` to shard 2 ([`Net::cross_shard`]).
        fn build(&mut self, k: usize, v: u32) -> OriginCircuit {
            let engine = Engine::from_env().unwrap();
            let (r, p) = (self.info(0), self.info(2));
            let id = CircId::new(0x8000_0000 | v).unwrap();
            let (mut circ, cell) =
                OriginCircuit::create_first_hop(&mut self.rng, engine, id, HandshakeKind::Ntor, &r)
                    .unwrap();
            assert_eq!(
                self.exchange(k, &mut circ, cell),
                ClientEvent::HopAdded { hops: 1 }
            );
            let cell = circ
                .extend(&mut self.rng, HandshakeKind::NtorV3, &p)
                .unwrap();
            assert_eq!(
                self.exchange(k, &mut circ, cell),
                ClientEvent::HopAdded { hops: 2 }
            );
            circ
        }

        /// RELAY_DROPs to the second hop, echoed: every byte checked.
        fn echo(&mut self, k: usize, circ: &mut OriginCircuit, n: u8) {
            for i in 0..n {
                let data: Vec<u8> = (0..400).map(|j| (j as u8) ^ i ^ (k as u8 * 77)).collect();
                let cell = circ
                    .send_raw(&mut self.rng, 1, RelayCmd::DROP, None, &data)
                    .unwrap();
                match self.exchange(k, circ, cell) {
                    ClientEvent::Msg {
                        hop: 1, data: got, ..
                    } => assert_eq!(got, data, "echo {i}"),
                    ev => panic!("{ev:?}"),
                }
            }
        }
    }

    #[test]
    fn circuits_cross_shards_to_the_one_canonical_channel() {
        let mut net = Net::cross_shard();
        // Client 1's circuit makes shard 1 open the relay's channel to P.
        let mut c1 = net.build(1, 1);
        assert_eq!(net.connects, 1);
        // Client 0's circuits (on shard 0) extend over shard 1's channel: no second channel.
        let mut c0 = net.build(0, 1);
        let mut c0b = net.build(0, 2);
        assert_eq!(net.connects, 1, "one channel to P for the whole relay");
        assert_eq!(net.shards[2].channels(), 1);
        assert_eq!(net.shards[0].proxies(), 1);
        assert_eq!(net.shards[1].cross_circuits(), 2);
        assert_eq!(net.shards[0].core().circuits(), 2);
        assert_eq!(net.shards[1].core().circuits(), 1);
        assert_eq!(net.shards[2].core().circuits(), 3);
        net.echo(0, &mut c0, 5);
        net.echo(1, &mut c1, 3);
        net.echo(0, &mut c0b, 3);

        // DESTROY from shard 0 towards P (TRUNCATE at hop 0).
        let cell = c0b
            .send_raw(&mut net.rng, 0, RelayCmd::TRUNCATE, None, &[])
            .unwrap();
        assert_eq!(
            net.exchange(0, &mut c0b, cell),
            ClientEvent::Truncated {
                hop: 0,
                reason: DestroyReason::REQUESTED
            }
        );
        assert_eq!(net.shards[1].cross_circuits(), 1);
        assert_eq!(net.shards[2].core().circuits(), 2);

        // DESTROY from P back to shard 0: P closes its half for a malformed EXTEND2.
        let cell = c0
            .send_raw(&mut net.rng, 1, RelayCmd::EXTEND2, None, &[0xff; 3])
            .unwrap();
        let ev = net.exchange(0, &mut c0, cell);
        assert!(
            matches!(
                ev,
                ClientEvent::Truncated { hop: 0, .. } | ClientEvent::Destroyed { .. }
            ),
            "{ev:?}"
        );
        assert_eq!(net.shards[1].cross_circuits(), 0);
        assert_eq!(net.shards[2].core().circuits(), 1);
        // Client 1's circuit is untouched.
        net.echo(1, &mut c1, 2);

        // A new circuit from shard 0 reuses the proxy; then P's channel closes.
        let mut c0c = net.build(0, 3);
        net.echo(0, &mut c0c, 2);
        assert_eq!(net.connects, 1);
        let p_conn = net
            .pipes
            .iter()
            .find_map(|&(a, b)| match (a, b) {
                (_, End_::Shard(2, c)) | (End_::Shard(2, c), _) => Some(c),
                _ => None,
            })
            .unwrap();
        net.shards[2].handle_close(p_conn);
        net.run();
        for (k, circ) in [(0, &mut c0c), (1, &mut c1)] {
            let got = net.clients[k].cells();
            assert_eq!(got.len(), 1, "{got:?}");
            let ev = circ.handle_cell(&got[0]).unwrap();
            assert!(
                matches!(
                    ev,
                    ClientEvent::Truncated {
                        hop: 0,
                        reason: DestroyReason::CHANNEL_CLOSED
                    } | ClientEvent::Destroyed { .. }
                ),
                "{ev:?}"
            );
        }
        assert_eq!(net.shards[0].proxies(), 0);
        assert_eq!(net.shards[1].cross_circuits(), 0);
        assert_eq!(net.shards[1].channels(), 1, "only client 1's channel");
        // With no channel anywhere, shard 0 opens its own.
        let mut c0d = net.build(0, 4);
        assert_eq!(net.connects, 2);
        assert_eq!(net.shards[0].proxies(), 0);
        net.echo(0, &mut c0d, 2);
    }

    /// Onion-key rotation as the control shard pushes it over the shard's queue: during the
    /// grace period CREATE2 with either key works; afterwards only the new key does.
    #[test]
    fn onion_key_rotation_keeps_the_previous_key_for_the_grace_period() {
        let mut net = Net::new();
        let links = crate::xshard::mesh(vec![Arc::new(crate::xshard::NoWake)]);
        let link = links.into_iter().next().unwrap();
        let control = link.tx[0].clone();
        net.shards[0].set_xlink(link);
        net.run();
        let engine = Engine::from_env().unwrap();
        let old = net.info(0);
        let mut keys = net.shards[0].ctx.keys.clone();
        let previous = keys.ntor_onion().clone();
        keys.set_ntor_onion(proto::keys::NtorOnionKeypair::generate(&mut net.rng));
        let new = RelayInfo::from_keys(&keys, vec![net.addrs[0]]);
        assert_ne!(new, old);
        let push = |net: &mut Net, prev: Option<proto::keys::NtorOnionKeypair>| {
            control
                .send(vec![XMsg::ServerKeys {
                    ntor: Box::new(keys.ntor_server_keys(prev.clone())),
                    ntor_v3: Box::new(keys.ntor_v3_server_keys(prev)),
                }])
                .unwrap();
            net.run();
        };
        let mut n = 0u32;
        let mut create = |net: &mut Net, kind, info: &RelayInfo| {
            n += 1;
            let id = CircId::new(0x8000_0000 | n).unwrap();
            let (mut circ, cell) =
                OriginCircuit::create_first_hop(&mut net.rng, engine, id, kind, info).unwrap();
            net.exchange(0, &mut circ, cell)
        };
        let added = ClientEvent::HopAdded { hops: 1 };
        push(&mut net, Some(previous));
        for kind in [HandshakeKind::Ntor, HandshakeKind::NtorV3] {
            assert_eq!(
                create(&mut net, kind, &old),
                added,
                "{kind:?} old key, grace"
            );
            assert_eq!(create(&mut net, kind, &new), added, "{kind:?} new key");
        }
        push(&mut net, None);
        for kind in [HandshakeKind::Ntor, HandshakeKind::NtorV3] {
            let ev = create(&mut net, kind, &old);
            assert!(
                matches!(ev, ClientEvent::Destroyed { .. }),
                "{kind:?} {ev:?}"
            );
            assert_eq!(create(&mut net, kind, &new), added, "{kind:?} new key");
        }
    }

    /// A rotated link certificate is what connections accepted afterwards see; open channels
    /// keep working.
    #[test]
    fn link_certificate_rotation_applies_to_new_connections() {
        let mut net = Net::cross_shard();
        let mut c0 = net.build(0, 1);
        let old_digest = net.shards[0].ctx.link_cert_digest;
        assert_eq!(net.clients[0].tls.peer_cert_digest(), Some(old_digest));
        let cert = LinkCert::generate(LinkKeyAlg::EcdsaP256, NOW, 86_400, &mut net.rng).unwrap();
        let ctx = net.shards[0].ctx.clone();
        let rotated = Arc::new(RelayContext {
            keys: ctx.keys.clone(),
            identity_certs: ctx.identity_certs.clone(),
            server: server_config(&cert).unwrap(),
            client: ctx.client.clone(),
            link_cert_digest: cert.digest(),
            our_addrs: ctx.our_addrs.clone(),
        });
        net.shards[0].set_context(rotated);
        let r_addr = net.addrs[0];
        let client = Client::new(&ctx, r_addr, &mut net.rng);
        net.clients.push(client);
        let conn = net.shards[0]
            .handle_accepted(&mut net.rng, "10.9.9.50:5555".parse().unwrap(), NOW)
            .unwrap();
        net.pipes.push((End_::Client(2), End_::Shard(0, conn)));
        net.run();
        assert!(
            net.clients[2].info.is_some(),
            "handshake with the new certificate"
        );
        assert_eq!(net.clients[2].tls.peer_cert_digest(), Some(cert.digest()));
        assert_ne!(cert.digest(), old_digest);
        let mut c2 = net.build(2, 1);
        net.echo(2, &mut c2, 2);
        net.echo(0, &mut c0, 2);
    }

    /// PADDING_NEGOTIATE is declined silently and the channel goes on; a channel we close ends
    /// with TLS close_notify.
    #[test]
    fn padding_negotiate_is_declined_and_close_sends_close_notify() {
        let mut net = Net::new();
        net.run();
        for cmd in [
            proto::chan_msg::PaddingNegotiateCmd::START,
            proto::chan_msg::PaddingNegotiateCmd::STOP,
        ] {
            let mut body = Vec::new();
            proto::chan_msg::PaddingNegotiate {
                command: cmd,
                ito_low_ms: 1500,
                ito_high_ms: 9500,
            }
            .encode(&mut body)
            .unwrap();
            let mut fixed = [0u8; proto::cell::BODY_LEN];
            fixed[..body.len()].copy_from_slice(&body);
            let mut v = Vec::new();
            RawCell {
                circ_id: None,
                cmd: ChanCmd::PADDING_NEGOTIATE,
                body: proto::cell::CellBody::Fixed(&fixed),
            }
            .encode(CircIdLen::Four, &mut v)
            .unwrap();
            net.clients[0].tls.write_plaintext(&v).unwrap();
        }
        net.run();
        assert_eq!(net.shards[0].stats().padding_negotiate, 2);
        assert!(net.clients[0].cells().is_empty(), "no answer");
        net.create_fast(0, 1);
        assert_eq!(net.shards[0].channels(), 1);
        // Now the shard closes the channel: its last bytes carry close_notify.
        let End_::Shard(0, conn) = net.peer(End_::Client(0)).unwrap() else {
            panic!()
        };
        net.shards[0].handle_close(conn);
        assert!(matches!(
            net.shards[0].poll_event(),
            Some(ShardEvent::Close { conn: c, .. }) if c == conn
        ));
        let bye = net.shards[0].take_close_notify(conn).unwrap();
        assert!(net.shards[0].take_close_notify(conn).is_none());
        assert!(!net.clients[0].tls.peer_closed());
        net.clients[0].recv(&bye);
        assert!(net.clients[0].tls.peer_closed());
    }

    #[test]
    fn two_shards_and_a_client_over_byte_pipes() {
        let mut net = Net::new();
        net.run();
        let info = net.clients[0]
            .info
            .clone()
            .expect("client handshake finished");
        assert_eq!(info.link_version, 5);
        assert_eq!(net.shards[0].channels(), 1);
        let engine = Engine::from_env().unwrap();
        let (first, second) = (net.info(0), net.info(1));
        for (n, kinds) in [
            [HandshakeKind::CreateFast, HandshakeKind::Ntor],
            [HandshakeKind::Ntor, HandshakeKind::NtorV3],
            [HandshakeKind::NtorV3, HandshakeKind::Ntor],
        ]
        .into_iter()
        .enumerate()
        {
            let id = CircId::new(0x8000_0000 | (n as u32 + 1)).unwrap();
            let (mut circ, cell) =
                OriginCircuit::create_first_hop(&mut net.rng, engine, id, kinds[0], &first)
                    .unwrap();
            assert_eq!(
                net.exchange(0, &mut circ, cell),
                ClientEvent::HopAdded { hops: 1 }
            );
            let cell = circ.extend(&mut net.rng, kinds[1], &second).unwrap();
            assert_eq!(
                net.exchange(0, &mut circ, cell),
                ClientEvent::HopAdded { hops: 2 }
            );
            let begin = RelayMsg::Begin(Begin {
                host: Host::parse("example.com").unwrap(),
                port: 443,
                flags: Default::default(),
            });
            let stream = StreamId::new(3);
            let cell = circ.send(&mut net.rng, 1, stream, &begin).unwrap();
            let ClientEvent::Msg {
                hop,
                stream_id,
                msg,
                ..
            } = net.exchange(0, &mut circ, cell)
            else {
                panic!("expected END")
            };
            assert_eq!((hop, stream_id), (1, stream));
            assert_eq!(msg, RelayMsg::End(End::new(EndReason::EXITPOLICY)));
            let cell = circ
                .send_raw(&mut net.rng, 0, RelayCmd::TRUNCATE, None, &[])
                .unwrap();
            assert_eq!(
                net.exchange(0, &mut circ, cell),
                ClientEvent::Truncated {
                    hop: 0,
                    reason: DestroyReason::REQUESTED
                }
            );
        }
        // One channel from shard 0 to shard 1 served every EXTEND2.
        assert_eq!(net.connects, 1);
        assert_eq!(net.shards[1].channels(), 1);
        assert_eq!(net.shards[1].core().circuits(), 0);
    }

    #[test]
    fn small_sends_are_held_until_flushed() {
        let mut net = Net::new();
        net.run();
        assert!(net.clients[0].info.is_some(), "handshakes are never held");
        let conn = net
            .pipes
            .iter()
            .find_map(|&(a, b)| match (a, b) {
                (End_::Client(0), End_::Shard(0, c)) => Some(c),
                _ => None,
            })
            .unwrap();
        let engine = Engine::from_env().unwrap();
        let id = CircId::new(0x8000_0001).unwrap();
        let first = net.info(0);
        let (mut circ, cell) = OriginCircuit::create_first_hop(
            &mut net.rng,
            engine,
            id,
            HandshakeKind::CreateFast,
            &first,
        )
        .unwrap();
        net.hold_below = Some(usize::MAX);
        net.clients[0].send(&cell);
        net.run();
        assert!(net.clients[0].cells().is_empty(), "CREATED_FAST was held");
        assert!(net.shards[0].has_transmit(conn));
        net.hold_below = Some(0);
        net.run();
        assert!(!net.shards[0].has_transmit(conn));
        let got = net.clients[0].cells();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            circ.handle_cell(&got[0]).unwrap(),
            ClientEvent::HopAdded { hops: 1 }
        );
    }

    #[test]
    fn extend_to_unreachable_fails_and_handshake_times_out() {
        let mut net = Net::new();
        net.run();
        let mut nowhere = net.info(1);
        nowhere.addrs = vec!["10.0.0.3:9001".parse().unwrap()];
        let mut circ = net.create_fast(0, 1);
        let cell = circ
            .extend(&mut net.rng, HandshakeKind::Ntor, &nowhere)
            .unwrap();
        net.clients[0].send(&cell);
        // Shard 0 asks for a connect; nobody answers it.
        net.clients[0].tls.poll_tls(&mut Vec::new(), 0);
        let mut out = Vec::new();
        net.clients[0].tls.poll_tls(&mut out, usize::MAX);
        let to = net.peer(End_::Client(0)).unwrap();
        net.deliver(to, &out);
        net.shards[0].process_batch(&mut net.rng, NOW);
        let Some(ShardEvent::Connect { conn, addr }) = net.shards[0].poll_event() else {
            panic!("expected a connect")
        };
        assert_eq!(addr, nowhere.addrs[0]);
        assert_eq!(
            net.shards[0].next_timeout(),
            Some(NOW + ShardLimits::default().handshake_timeout_secs)
        );
        net.shards[0].handle_timeout(NOW + 1);
        assert_eq!(net.shards[0].poll_event(), None);
        net.shards[0].handle_timeout(NOW + 30);
        assert_eq!(
            net.shards[0].poll_event(),
            Some(ShardEvent::Close {
                conn,
                reason: CloseReason::HandshakeTimeout
            })
        );
        net.run();
        let got = net.clients[0].cells();
        assert_eq!(got.len(), 1);
        // The EXTEND2 failed: the first hop answers with TRUNCATED (CONNECTFAILED) or
        // DESTROY, depending on the core's policy; either way the circuit did not grow.
        let ev = circ.handle_cell(&got[0]).unwrap();
        assert!(
            matches!(
                ev,
                ClientEvent::Truncated {
                    reason: DestroyReason::CONNECTFAILED,
                    ..
                } | ClientEvent::Destroyed { .. }
            ),
            "{ev:?}"
        );
        assert_eq!(got[0].cmd == ChanCmd::DESTROY, circ.is_closed());
    }

    #[test]
    fn a_peer_that_does_not_read_stops_being_read() {
        let mut net = Net::new();
        net.run();
        net.shards[0].core_mut().set_echo_drop_for_tests(true);
        let mut circ = net.create_fast(0, 1);
        let End_::Shard(0, conn) = net.peer(End_::Client(0)).unwrap() else {
            panic!()
        };
        // The client sends DROPs (echoed back) but never reads: the shard's output to it
        // grows to the TLS bound, then the shard stops reading the connection.
        let mut paused_after = None;
        for i in 0..1000 {
            let cell = circ
                .send_raw(&mut net.rng, 0, RelayCmd::DROP, None, &[i as u8; 400])
                .unwrap();
            net.clients[0].send(&cell);
            let mut out = Vec::new();
            net.clients[0].tls.poll_tls(&mut out, usize::MAX);
            if !net.shards[0].wants_read(conn) {
                paused_after = Some(i);
                break;
            }
            net.shards[0].handle_recv(conn, &out, NOW);
            net.shards[0].process_batch(&mut net.rng, NOW);
            while net.shards[0].poll_event().is_some() {}
        }
        let paused_after = paused_after.expect("reading never paused");
        assert!(paused_after > 10, "{paused_after}");
        assert!(
            !net.shards[0].get(conn).unwrap().plain_out.is_empty(),
            "TLS is full and cells wait in the shard's queue"
        );
        assert!(
            net.shards[0].peer_addr(conn).is_some(),
            "the connection stays open"
        );
        // Once its output drains, the connection is read again.
        let mut wire = Vec::new();
        while let Some(c) = net.shards[0].poll_writable() {
            loop {
                let out = net.shards[0].poll_transmit(c);
                if out.is_empty() {
                    break;
                }
                wire.extend_from_slice(out);
                let n = out.len();
                net.shards[0].handle_sent(c, n);
            }
        }
        assert!(net.shards[0].wants_read(conn));
        // Every echo arrives, in order, although the later ones waited in the shard's queue
        // while the earlier ones went straight into TLS records.
        net.clients[0].recv(&wire);
        while !net.clients[0].wire_in.is_empty() {
            // The test client opens about 16 KiB of records per call.
            net.clients[0].recv(&[]);
        }
        let got = net.clients[0].cells();
        assert_eq!(got.len(), paused_after);
        for (i, c) in got.iter().enumerate() {
            match circ.handle_cell(c).unwrap() {
                ClientEvent::Msg { hop: 0, data, .. } => assert_eq!(data, [i as u8; 400]),
                ev => panic!("{ev:?}"),
            }
        }
    }

    /// Sends `cells` from the client to shard 0 and has it process them, without moving
    /// anything else (so channels being opened stay unopened).
    fn push_to_shard0(net: &mut Net, cells: &[CircCell]) {
        for c in cells {
            net.clients[0].send(c);
        }
        let mut out = Vec::new();
        net.clients[0].tls.poll_tls(&mut out, usize::MAX);
        let to = net.peer(End_::Client(0)).unwrap();
        net.deliver(to, &out);
        net.shards[0].process_batch(&mut net.rng, NOW);
    }

    #[test]
    fn over_the_memory_cap_circuits_then_connections_are_closed() {
        let q = RelayCore::QUEUED_CELL_BYTES;
        let mut net = Net::with_limits(ShardLimits {
            memory_max_bytes: 4 * q,
            ..ShardLimits::default()
        });
        net.run();
        net.shards[0].core_mut().set_echo_drop_for_tests(true);
        net.shards[1].core_mut().set_echo_drop_for_tests(true);
        let mut nowhere = net.info(1);
        nowhere.rsa_id = RsaIdentity::from_bytes([0x55; 20]);
        nowhere.ed_id = None;
        nowhere.addrs = vec!["10.0.0.3:9001".parse().unwrap()];
        let mut circs = Vec::new();
        for v in 1..=3u32 {
            circs.push(net.create_fast(0, v));
        }
        // Circuits 2 and 3 extend to a relay whose connect never finishes; the cells their
        // client sends on meanwhile queue on shard 0.
        let mut ext = Vec::new();
        for circ in &mut circs[1..] {
            ext.push(
                circ.extend(&mut net.rng, HandshakeKind::Ntor, &nowhere)
                    .unwrap(),
            );
        }
        push_to_shard0(&mut net, &ext);
        let Some(ShardEvent::Connect { addr, .. }) = net.shards[0].poll_event() else {
            panic!("expected a connect")
        };
        assert_eq!(addr, nowhere.addrs[0]);
        assert_eq!(net.shards[0].poll_event(), None);
        let garbage = |net: &mut Net, v: u32| {
            let mut body = [0u8; proto::cell::BODY_LEN];
            rand_core::RngCore::fill_bytes(&mut net.rng, &mut body);
            CircCell::new(CircId::new(0x8000_0000 | v).unwrap(), ChanCmd::RELAY, &body)
        };
        let two = [garbage(&mut net, 2), garbage(&mut net, 2)];
        push_to_shard0(&mut net, &two);
        let three = [garbage(&mut net, 3), garbage(&mut net, 3)];
        push_to_shard0(&mut net, &three);
        assert_eq!(net.shards[0].memory_bytes(), 4 * q, "at the cap, not over");
        assert_eq!(net.shards[0].core().circuits(), 3);
        // A fifth queued cell: circuit 3 holds the most and is destroyed.
        let one = [garbage(&mut net, 3)];
        push_to_shard0(&mut net, &one);
        assert_eq!(net.shards[0].memory_bytes(), 2 * q);
        assert_eq!(net.shards[0].stats().oom_events, 1);
        assert_eq!(net.shards[0].stats().oom_circuits_closed, 1);
        assert_eq!(net.shards[0].core().stats().circuits_oom_closed, 1);
        assert_eq!(net.shards[0].core().circuits(), 2);
        net.run();
        let got = net.clients[0].cells();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].circ_id.get(), got[0].cmd, got[0].body[0]),
            (
                0x8000_0003,
                ChanCmd::DESTROY,
                DestroyReason::RESOURCELIMIT.0
            )
        );
        // Circuit 1 is untouched: it extends to shard 1 and relays both ways.
        let second = net.info(1);
        let cell = circs[0]
            .extend(&mut net.rng, HandshakeKind::Ntor, &second)
            .unwrap();
        assert_eq!(
            net.exchange(0, &mut circs[0], cell),
            ClientEvent::HopAdded { hops: 2 }
        );
        for hop in [0, 1] {
            let cell = circs[0]
                .send_raw(&mut net.rng, hop, RelayCmd::DROP, None, &[9; 100])
                .unwrap();
            let ev = net.exchange(0, &mut circs[0], cell);
            assert!(
                matches!(ev, ClientEvent::Msg { hop: h, .. } if h == hop),
                "{ev:?}"
            );
        }
        assert_eq!(net.shards[0].channels(), 2);
        let End_::Shard(0, client_conn) = net.peer(End_::Client(0)).unwrap() else {
            panic!()
        };
        // Now the client stops reading: echoed cells wait in its connection's out-buffer.
        // Circuit 2's queue goes first, then that connection, the largest, is closed; the
        // channel to shard 1 survives.
        let drops: Vec<_> = (0..6)
            .map(|_| {
                circs[0]
                    .send_raw(&mut net.rng, 0, RelayCmd::DROP, None, &[9; 100])
                    .unwrap()
            })
            .collect();
        push_to_shard0(&mut net, &drops);
        assert_eq!(net.shards[0].stats().oom_events, 1);
        let pending = net.shards[0].poll_transmit(client_conn).len();
        assert!(pending > 6 * proto::cell::CELL_LEN_V4, "{pending}");
        net.shards[0].process_batch(&mut net.rng, NOW);
        let stats = net.shards[0].stats();
        assert_eq!(stats.oom_events, 2);
        assert_eq!(stats.oom_circuits_closed, 2);
        assert_eq!(stats.oom_conns_closed, 1);
        assert_eq!(
            net.shards[0].poll_event(),
            Some(ShardEvent::Close {
                conn: client_conn,
                reason: CloseReason::MemoryCap
            })
        );
        assert_eq!(net.shards[0].memory_bytes(), 0);
        assert_eq!(net.shards[0].core().circuits(), 0);
        assert_eq!(net.shards[0].channels(), 1, "the channel to shard 1 stays");
        // Circuit 1's second half, on shard 1, hears of it.
        net.run();
        assert_eq!(net.shards[1].core().circuits(), 0);
        assert_eq!(net.shards[1].channels(), 1);
    }

    #[test]
    fn inbound_handshake_times_out() {
        let mut net = Net::new();
        let conn = net.shards[0]
            .handle_accepted(&mut net.rng, "10.9.9.8:5555".parse().unwrap(), NOW)
            .unwrap();
        // The client's connection was accepted at NOW too.
        let deadline = NOW + ShardLimits::default().handshake_timeout_secs;
        assert_eq!(net.shards[0].next_timeout(), Some(deadline));
        net.run();
        net.shards[0].handle_timeout(deadline - 1);
        assert_eq!(net.shards[0].poll_event(), None);
        net.shards[0].handle_timeout(deadline);
        assert_eq!(
            net.shards[0].poll_event(),
            Some(ShardEvent::Close {
                conn,
                reason: CloseReason::HandshakeTimeout
            })
        );
        // The finished client handshake has no deadline any more.
        assert_eq!(net.shards[0].poll_event(), None);
        assert_eq!(net.shards[0].next_timeout(), None);
        assert_eq!(net.shards[0].channels(), 1);
        assert_eq!(net.shards[0].stats().handshakes_failed, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            fuzz_recv(&data);
        }
    }

    #[test]
    fn fuzz_entry_reaches_the_handshake() {
        // A TLS ClientHello prefix, then garbage: TLS rejects it and the connection closes.
        fuzz_recv(&[
            0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00, 0xff, 0x00,
        ]);
        fuzz_recv(&[]);
    }

    #[test]
    fn connections_per_address_are_limited() {
        let ctx = context(9, "10.0.0.9:9001".parse().unwrap());
        let limits = ShardLimits {
            conns_per_ip_max: 2,
            ..ShardLimits::default()
        };
        let mut s =
            Shard::new(ctx, Engine::from_env().unwrap(), limits, Limits::default()).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let first = s.handle_accepted(&mut rng, a, NOW).unwrap();
        s.handle_accepted(&mut rng, a, NOW).unwrap();
        assert_eq!(s.handle_accepted(&mut rng, a, NOW), None);
        assert!(s.handle_accepted(&mut rng, b, NOW).is_some());
        s.handle_close(first);
        assert!(s.handle_accepted(&mut rng, a, NOW).is_some());
        assert_eq!(s.stats().refused, 1);
        assert_eq!(s.stats().accepted, 4);
    }

    /// A shard that drains a full inbox wakes the other shards (a sender may be holding a
    /// batch back for room), and only then; a held-back batch alone does not keep a reactor
    /// from sleeping.
    #[test]
    fn draining_a_full_inbox_wakes_the_senders() {
        #[derive(Default)]
        struct Count(std::sync::atomic::AtomicUsize);
        impl crate::xshard::Wake for Count {
            fn wake(&self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let woken = |c: &Count| c.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(5);
        let ctx = context(31, "10.0.0.9:9001".parse().unwrap());
        let engine = Engine::from_env().unwrap();
        let counts = [Arc::new(Count::default()), Arc::new(Count::default())];
        let links = crate::xshard::mesh(
            counts
                .iter()
                .map(|c| c.clone() as Arc<dyn crate::xshard::Wake>)
                .collect(),
        );
        let senders = links[0].tx.clone();
        let mut shards: Vec<Shard> = links
            .into_iter()
            .map(|l| {
                let mut s = Shard::new(
                    ctx.clone(),
                    engine,
                    ShardLimits::default(),
                    Limits::default(),
                )
                .unwrap();
                s.set_xlink(l);
                s
            })
            .collect();
        // A few batches: drained without waking anyone.
        for _ in 0..3 {
            senders[1].try_send(Vec::new()).unwrap();
        }
        assert!(shards[1].has_ready_cells());
        shards[1].process_batch(&mut rng, NOW);
        assert_eq!((woken(&counts[0]), woken(&counts[1])), (0, 0));
        // A full inbox: the next send is refused; draining wakes shard 0, not shard 1 itself.
        while senders[1].try_send(Vec::new()).is_ok() {}
        assert!(senders[1].is_full());
        shards[1].process_batch(&mut rng, NOW);
        assert_eq!((woken(&counts[0]), woken(&counts[1])), (1, 0));
        assert!(!senders[1].is_full());
        assert!(!shards[0].has_ready_cells());
    }

    #[test]
    fn stale_ids_and_garbage_are_harmless() {
        let mut net = Net::new();
        net.run();
        let s = &mut net.shards[1];
        let conn = s
            .handle_accepted(
                &mut StdRng::seed_from_u64(1),
                "1.2.3.4:5".parse().unwrap(),
                NOW,
            )
            .unwrap();
        s.handle_recv(conn, b"GET / HTTP/1.0\r\n\r\n", NOW);
        let mut closed = false;
        while let Some(ev) = s.poll_event() {
            closed |= ev
                == ShardEvent::Close {
                    conn,
                    reason: CloseReason::Tls,
                };
        }
        assert!(closed);
        // Every call on the closed id is ignored.
        s.handle_recv(conn, b"more", NOW);
        s.handle_sent(conn, 10);
        s.handle_eof(conn);
        assert!(s.poll_transmit(conn).is_empty());
        assert!(!s.wants_read(conn));
        assert_eq!(s.poll_event(), None);
        assert_eq!(s.conns(), 0);
    }
}
