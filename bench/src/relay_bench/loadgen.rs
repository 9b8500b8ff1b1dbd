//! The load generator of `chive-bench relay`: chive's client library driving TLS channels to the
//! relay under test R, with two-hop circuits R → S where the sink S echoes every RELAY_DROP
//! (tor-spec §6.1: DROP is long-range padding, ignored by a normal relay; S runs with the
//! test-network setting `testing_echo_drop`). Every cell crosses R twice, once each way.
//!
//! Each channel has its own thread and a blocking socket. Cells carry their send time (ns since
//! the run's epoch) in the first 8 bytes of the DROP body, so the echo gives the round trip
//! client → R → S → R → client. A thread gathers everything the socket has, handles every cell,
//! and answers with one batch: one TLS write and one `write(2)` per batch.
//!
//! - Closed loop (`rate` = 0): `window` cells in flight per circuit; each echo sends the next.
//! - Open loop (`rate` > 0): cells are sent at the target rate, spread over the circuits; a
//!   circuit with `window` cells in flight skips its turn (counted as `skipped`), so memory and
//!   queues stay bounded when R falls behind.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crypto_simd::Engine;
use hdrhistogram::Histogram;
use proto::cell::{CircIdLen, RawCell};
use proto::ids::CircId;
use proto::relay_cell::RelayCmd;
use relay::circuit::{CircCell, ClientEvent, HandshakeKind, OriginCircuit, RelayInfo};
use relay::demo::{ClientChannel, DemoError};
use relay::tls::TlsLink;
use thiserror::Error;

use super::accounting::{new_latency_histogram, record_latency};

/// Bytes of DROP data per cell: the send timestamp and the circuit's sequence number.
const DROP_DATA_LEN: usize = 16;

/// Largest socket read.
const READ_CHUNK: usize = 256 * 1024;

/// Plaintext that may sit unframed before the peer is called broken.
const PLAIN_MAX: usize = 1 << 20;

/// How long a blocking read or write may wait before the run is declared stuck.
const STUCK_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a load-generator thread stopped.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Opening the channel or building a circuit.
    #[error("{0}")]
    Channel(#[from] DemoError),
    /// The TLS layer.
    #[error("TLS: {0}")]
    Tls(#[from] relay::tls::TlsLinkError),
    /// The circuit layer.
    #[error("circuit: {0}")]
    Circuit(#[from] relay::circuit::ClientError),
    /// The socket.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The relay did something a benchmark does not expect.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// What one thread is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct LoadParams {
    /// Circuits on this channel.
    pub circuits: usize,
    /// Cells in flight per circuit at most.
    pub window: usize,
    /// Cells per second this thread offers; 0 for closed loop.
    pub rate: f64,
    /// Handshake for both hops: `NtorV3Cgo` makes CGO circuits (proposal 359), `Ntor` tor1.
    pub handshake: HandshakeKind,
}

/// When a round measures, fixed once every thread has built its circuits.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The run's epoch: timestamps in cells count from here.
    pub epoch: Instant,
    /// Measurement starts (after warm-up) ...
    pub measure_from: Instant,
    /// ... and ends; the thread stops here.
    pub measure_to: Instant,
}

/// How threads meet: all built (`built`), then the window's [`Bounds`] set and `go`.
#[derive(Debug)]
pub struct Rendezvous {
    /// Every load thread and the harness: circuits built (or failed).
    pub built: std::sync::Barrier,
    /// Every load thread and the harness: bounds are set.
    pub go: std::sync::Barrier,
    /// Set by the harness between the two barriers.
    pub bounds: std::sync::OnceLock<Bounds>,
}

/// What one thread measured inside the window.
#[derive(Debug)]
pub struct LoadTally {
    /// Circuits built.
    pub circuits: usize,
    /// Cells sent inside the window.
    pub sent: u64,
    /// Echoes received inside the window.
    pub received: u64,
    /// Open loop: sends skipped because the circuit's window was full.
    pub skipped: u64,
    /// Round-trip times of echoes received inside the window, in ns.
    pub latency: Histogram<u64>,
}

/// Opens a channel to `r`, builds `params.circuits` circuits `r` → `s` (`params.handshake`,
/// then the same via EXTEND2), meets the others at `meet`, and pushes cells until the window ends.
pub fn run_channel(
    r: &RelayInfo,
    s: &RelayInfo,
    engine: Engine,
    params: LoadParams,
    meet: &Rendezvous,
) -> Result<LoadTally, LoadError> {
    let setup = ClientChannel::open(r)
        .map_err(LoadError::from)
        .and_then(|mut chan| {
            let circs = build_circuits(&mut chan, r, s, engine, params)?;
            Ok((chan, circs))
        });
    // Every thread reaches the barriers, even after a failure, so that none waits forever.
    meet.built.wait();
    meet.go.wait();
    let (chan, circs) = setup?;
    let bounds = *meet
        .bounds
        .get()
        .ok_or(LoadError::Protocol("the harness set no window"))?;
    let mut chan = FastChannel::new(chan)?;
    push(&mut chan, circs, params, bounds)
}

/// Builds `n` circuits in two batched steps: every CREATE2, then every EXTEND2.
fn build_circuits(
    chan: &mut ClientChannel,
    r: &RelayInfo,
    s: &RelayInfo,
    engine: Engine,
    params: LoadParams,
) -> Result<Vec<OriginCircuit>, LoadError> {
    let (n, kind) = (params.circuits, params.handshake);
    let mut rng = rand::rngs::OsRng;
    let mut circs = Vec::with_capacity(n);
    for i in 0..n {
        let id = circ_id(i)?;
        let (circ, cell) = OriginCircuit::create_first_hop(&mut rng, engine, id, kind, r)?;
        chan.queue(&cell)?;
        circs.push(circ);
    }
    chan.send_queued()?;
    await_hops(chan, &mut circs, 1)?;
    for c in &mut circs {
        let cell = c.extend(&mut rng, kind, s)?;
        chan.queue(&cell)?;
    }
    chan.send_queued()?;
    await_hops(chan, &mut circs, 2)?;
    Ok(circs)
}

/// Handles replies until every circuit has `hops` hops.
fn await_hops(
    chan: &mut ClientChannel,
    circs: &mut [OriginCircuit],
    hops: usize,
) -> Result<(), LoadError> {
    let mut waiting = circs.len();
    while waiting > 0 {
        let cell = chan.recv()?;
        let circ = circ_index(cell.circ_id)
            .and_then(|i| circs.get_mut(i))
            .ok_or(LoadError::Protocol("a cell for an unknown circuit"))?;
        match circ.handle_cell(&cell)? {
            ClientEvent::HopAdded { hops: h } if h == hops => waiting -= 1,
            ClientEvent::Ignored => {}
            _ => return Err(LoadError::Protocol("building a circuit failed")),
        }
    }
    Ok(())
}

/// Circuit `i`'s id: the high bit set, as an initiator with 4-byte ids must (tor-spec §5.1.1).
fn circ_id(i: usize) -> Result<CircId, LoadError> {
    u32::try_from(i + 1)
        .ok()
        .filter(|n| *n < 0x8000_0000)
        .and_then(|n| CircId::new(0x8000_0000 | n))
        .ok_or(LoadError::Protocol("too many circuits"))
}

/// The index of the circuit with id `id`.
fn circ_index(id: CircId) -> Option<usize> {
    (id.get() & 0x7fff_ffff).checked_sub(1).map(|n| n as usize)
}

/// The DROP data of a cell sent at `sent_ns` (since the epoch) as the circuit's `seq`-th.
pub fn encode_stamp(sent_ns: u64, seq: u64) -> [u8; DROP_DATA_LEN] {
    let mut d = [0u8; DROP_DATA_LEN];
    d[..8].copy_from_slice(&sent_ns.to_be_bytes());
    d[8..].copy_from_slice(&seq.to_be_bytes());
    d
}

/// The send time and sequence number in an echoed DROP's data.
pub fn decode_stamp(data: &[u8]) -> Option<(u64, u64)> {
    let t = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let s = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
    Some((t, s))
}

/// A channel whose socket the load generator drives directly: large reads, batched writes.
struct FastChannel {
    stream: TcpStream,
    link: TlsLink,
    /// Ciphertext read but not yet taken by the link.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Plaintext not yet framed, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Cells framed for the next batch.
    out: Vec<u8>,
    /// Ciphertext for the next `write(2)`.
    tls_out: Vec<u8>,
    chunk: Vec<u8>,
}

impl FastChannel {
    fn new(chan: ClientChannel) -> Result<Self, LoadError> {
        let (stream, link, pending, plain) = chan.into_parts();
        stream.set_write_timeout(Some(STUCK_TIMEOUT))?;
        Ok(FastChannel {
            stream,
            link,
            pending,
            pending_pos: 0,
            plain,
            plain_pos: 0,
            out: Vec::with_capacity(64 * 1024),
            tls_out: Vec::with_capacity(64 * 1024),
            chunk: vec![0u8; READ_CHUNK],
        })
    }

    fn queue(&mut self, cell: &CircCell) -> Result<(), LoadError> {
        cell.encode(CircIdLen::Four, &mut self.out)
            .map_err(|_| LoadError::Protocol("cell would not encode"))
    }

    /// Encrypts and writes every queued cell: one `write_plaintext` per TLS buffer's worth and
    /// one `write(2)` per batch.
    fn flush(&mut self) -> Result<(), LoadError> {
        let mut off = 0;
        while off < self.out.len() {
            off += self
                .link
                .write_plaintext(self.out.get(off..).unwrap_or_default())?;
            while self.link.wants_tls_out() {
                self.link.poll_tls(&mut self.tls_out, usize::MAX);
            }
            self.stream.write_all(&self.tls_out)?;
            self.tls_out.clear();
        }
        self.out.clear();
        Ok(())
    }

    /// Reads what the socket has (waiting up to its read timeout) into the plaintext buffer.
    /// Ok(false) when the read timed out.
    fn fill(&mut self) -> Result<bool, LoadError> {
        if self.pending_pos < self.pending.len() {
            // What the link refused last time comes first.
            let used = self
                .link
                .handle_tls(self.pending.get(self.pending_pos..).unwrap_or_default())?;
            self.pending_pos += used;
            if self.pending_pos >= self.pending.len() {
                self.pending.clear();
                self.pending_pos = 0;
            }
        } else {
            let n = loop {
                match self.stream.read(&mut self.chunk) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(false)
                    }
                    other => break other?,
                }
            };
            if n == 0 {
                return Err(LoadError::Protocol("the relay closed the channel"));
            }
            // Straight from the read buffer; only what the link refuses is copied aside.
            let data = self.chunk.get(..n).unwrap_or_default();
            let used = self.link.handle_tls(data)?;
            self.pending
                .extend_from_slice(data.get(used..).unwrap_or_default());
            self.pending_pos = 0;
        }
        // Compact the plaintext buffer before appending.
        if self.plain_pos > 0 {
            self.plain.drain(..self.plain_pos.min(self.plain.len()));
            self.plain_pos = 0;
        }
        loop {
            let n = self.link.read_plaintext(&mut self.chunk)?;
            if n == 0 {
                break;
            }
            self.plain
                .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
            if self.plain.len() > PLAIN_MAX {
                return Err(LoadError::Protocol("unframed plaintext piles up"));
            }
        }
        if self.link.wants_tls_out() {
            // Post-handshake TLS messages (key updates, session tickets).
            while self.link.wants_tls_out() {
                self.link.poll_tls(&mut self.tls_out, usize::MAX);
            }
            self.stream.write_all(&self.tls_out)?;
            self.tls_out.clear();
        }
        Ok(true)
    }

    /// The next complete cell from the plaintext buffer, if any.
    fn next_cell(&mut self) -> Option<Option<CircCell>> {
        let buf = self.plain.get(self.plain_pos..)?;
        let (raw, used) = RawCell::decode(buf, CircIdLen::Four)?;
        let cell = CircCell::from_raw(&raw);
        self.plain_pos += used;
        Some(cell)
    }
}

/// Per-circuit state while pushing.
struct Pushed {
    circ: OriginCircuit,
    in_flight: usize,
    seq: u64,
}

fn push(
    chan: &mut FastChannel,
    circs: Vec<OriginCircuit>,
    spec: LoadParams,
    bounds: Bounds,
) -> Result<LoadTally, LoadError> {
    let mut rng = rand::thread_rng();
    let mut tally = LoadTally {
        circuits: circs.len(),
        sent: 0,
        received: 0,
        skipped: 0,
        latency: new_latency_histogram(),
    };
    let mut pushed: Vec<Pushed> = circs
        .into_iter()
        .map(|circ| Pushed {
            circ,
            in_flight: 0,
            seq: 0,
        })
        .collect();
    let open_loop = spec.rate > 0.0;
    let read_timeout = if open_loop {
        Duration::from_micros(500)
    } else {
        STUCK_TIMEOUT
    };
    chan.stream.set_read_timeout(Some(read_timeout))?;
    let ns_since = |t: Instant| t.saturating_duration_since(bounds.epoch).as_nanos() as u64;
    let (from_ns, to_ns) = (ns_since(bounds.measure_from), ns_since(bounds.measure_to));
    let in_window = |t: u64| t >= from_ns && t < to_ns;
    let send_one = |p: &mut Pushed,
                    chan: &mut FastChannel,
                    rng: &mut rand::rngs::ThreadRng,
                    now_ns: u64,
                    tally: &mut LoadTally|
     -> Result<(), LoadError> {
        let data = encode_stamp(now_ns, p.seq);
        let cell = p.circ.send_raw(rng, 1, RelayCmd::DROP, None, &data)?;
        chan.queue(&cell)?;
        p.seq += 1;
        p.in_flight += 1;
        if in_window(now_ns) {
            tally.sent += 1;
        }
        Ok(())
    };
    let start_ns = ns_since(Instant::now());
    // Closed loop: fill every window at once.
    if !open_loop {
        for p in &mut pushed {
            for _ in 0..spec.window {
                send_one(p, chan, &mut rng, start_ns, &mut tally)?;
            }
        }
        chan.flush()?;
    }
    let mut offered: u64 = 0;
    let mut rr = 0usize;
    loop {
        let now_ns = ns_since(Instant::now());
        if now_ns >= to_ns {
            break;
        }
        if open_loop {
            // Cells due by now at the target rate, minus those already offered.
            let due = ((now_ns.saturating_sub(start_ns)) as f64 * spec.rate / 1e9) as u64;
            let n = pushed.len().max(1);
            while offered < due {
                offered += 1;
                rr = (rr + 1) % n;
                match pushed.get_mut(rr) {
                    Some(p) if p.in_flight < spec.window => {
                        send_one(p, chan, &mut rng, now_ns, &mut tally)?
                    }
                    _ => {
                        if in_window(now_ns) {
                            tally.skipped += 1;
                        }
                    }
                }
            }
            chan.flush()?;
        }
        if !chan.fill()? {
            if open_loop {
                continue;
            }
            return Err(LoadError::Protocol("no echo for 20 s"));
        }
        let recv_ns = ns_since(Instant::now());
        while let Some(cell) = chan.next_cell() {
            let Some(cell) = cell else { continue };
            let p = circ_index(cell.circ_id)
                .and_then(|i| pushed.get_mut(i))
                .ok_or(LoadError::Protocol("a cell for an unknown circuit"))?;
            match p.circ.handle_cell(&cell)? {
                ClientEvent::Msg { hop: 1, data, .. } => {
                    let (sent_ns, _) =
                        decode_stamp(&data).ok_or(LoadError::Protocol("a short echo"))?;
                    p.in_flight = p.in_flight.saturating_sub(1);
                    if in_window(recv_ns) {
                        tally.received += 1;
                        record_latency(&mut tally.latency, recv_ns.saturating_sub(sent_ns));
                    }
                    if !open_loop {
                        send_one(p, chan, &mut rng, recv_ns, &mut tally)?;
                    }
                }
                ClientEvent::Ignored => {}
                ClientEvent::Destroyed { .. } | ClientEvent::Truncated { .. } => {
                    return Err(LoadError::Protocol("a circuit was torn down"))
                }
                _ => return Err(LoadError::Protocol("an unexpected relay message")),
            }
        }
        if !open_loop {
            chan.flush()?;
        }
    }
    // Close politely; R is stopped right after, so errors here do not matter.
    for p in &mut pushed {
        let cell = p.circ.destroy();
        let _ = chan.queue(&cell);
    }
    let _ = chan.flush();
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let d = encode_stamp(123_456_789, 42);
        assert_eq!(decode_stamp(&d), Some((123_456_789, 42)));
        assert_eq!(decode_stamp(&d[..15]), None);
    }

    #[test]
    fn circuit_ids_have_the_high_bit_and_map_back() {
        for i in [0usize, 1, 1000] {
            let id = circ_id(i).ok();
            assert!(id.is_some_and(|id| id.get() & 0x8000_0000 != 0));
            assert_eq!(id.and_then(circ_index), Some(i));
        }
        assert!(circ_id(0x7fff_ffff).is_err());
    }
}
