//! Circuits, sans-io: what happens between "an open channel delivered a cell" and "a cell must
//! be written on a channel".
//!
//! Spec: tor-spec §5 ("Circuit management",
//! <https://spec.torproject.org/tor-spec/circuit-management.html>) and §6.1 ("Relay cells",
//! <https://spec.torproject.org/tor-spec/relay-cells.html>).
//!
//! - [`RelayCore`] (in `relay_core.rs`): the circuits of one data shard, as a relay sees them:
//!   CREATE2 (ntor, ntor v3) and CREATE_FAST, EXTEND2 to the next hop, forward and backward
//!   relaying through one batched [`crypto_simd::Engine::process_batch`] call per batch,
//!   TRUNCATE, DESTROY propagation and channel loss.
//! - [`OriginCircuit`] (in `client.rs`): a circuit as its origin (a client) sees it: building it
//!   hop by hop, sending and receiving relay messages. The integration tests and the `bench`
//!   load generator drive relays with it.
//! - [`Streams`] (in `stream.rs`): the client's streams on an [`OriginCircuit`] to its exit
//!   hop: BEGIN, CONNECTED, DATA, END, with stream and circuit windows and authenticated
//!   (proposal 289) SENDMEs, so that a client can move data through any exit (tor-spec §6, §7);
//!   or, when the exit negotiated congestion control (proposal 324,
//!   [`HandshakeKind::NtorV3Cc`]), with `sendme_inc` circuit SENDMEs, a fixed congestion
//!   window and XON/XOFF, which also works through a CGO exit.
//! - [`cgo`]: Counter Galois Onion relay crypto (proposal 359) per hop, for both. A hop uses
//!   CGO and the v1 relay cell format ([`proto::relay_cell_v1`]) when its client asked for
//!   `Relay=6` in the ntor v3 subprotocol request ([`HandshakeKind::NtorV3Cgo`]) and the relay
//!   accepted; otherwise tor1 and the v0 format. A relay refuses any other subprotocol request.
//!   At a relay, CGO cells are batched like tor1 ones ([`crypto_simd::Engine::process_batch_cgo`]).
//!
//! Exit streams (BEGIN, RESOLVE) and directory streams (BEGIN_DIR) are not served yet: a relay
//! answers them with an END cell. Neither are TAP (CREATE, EXTEND), congestion-control
//! negotiation (a ntor v3 CC_REQUEST gets an empty reply, which means "no congestion control")
//! nor circuit-level SENDME windows at relays.
//!
//! Nothing here touches a socket or a clock: channels are named by the caller's [`ChanId`], and
//! every cell to send is written into a caller-owned buffer. Timeouts (a channel that never
//! opens, a CREATE2 never answered) are the reactor's: it answers with
//! [`RelayCore::handle_channel_failed`] or closes the channel.
//!
//! Fuzz entry points: [`fuzz_cells`] (arbitrary cells into a [`RelayCore`], with its table
//! invariants checked after every cell) and [`fuzz_origin_cells`] (arbitrary cells into a
//! built [`OriginCircuit`]).

pub mod cgo;
mod client;
mod relay_core;
mod stream;
mod vegas;

pub use client::{
    fuzz_origin_cells, ClientError, ClientEvent, HandshakeKind, OriginCircuit, RelayInfo, SendmeTag,
};
pub use relay_core::{
    fuzz_cells, CellSink, ChanInfo, Event, InCell, Limits, OutCell, RelayCore, RelayCoreError,
    RequestId, Stats,
};
pub use stream::{
    fuzz_streams, Fault, OutMsg, StreamError, StreamEvent, Streams, CC_CWND_SENDMES,
    CIRC_WINDOW_INCREMENT, CIRC_WINDOW_START, HOLD_UNREAD, SEND_BUFFER_MAX, STREAMS_MAX,
    STREAM_WINDOW_INCREMENT, STREAM_WINDOW_START, XOFF_UNREAD, XON_UNREAD,
};
pub use vegas::{Vegas, VegasParams};

use proto::cell::{CellBody, ChanCmd, CircIdLen, RawCell, BODY_LEN};
use proto::codec::CodecError;
use proto::ids::CircId;
use proto::kdf::KeyGenerator;
use zeroize::Zeroize;

/// A hash map for the tables the per-cell path looks up (a circuit's route by channel and
/// circuit id, a channel by its [`ChanId`]).
///
/// Circuit ids are chosen by peers, so these maps must not let a peer pick keys that collide
/// (HashDoS): they use aHash with keys drawn from the OS per map (`ahash::RandomState` with
/// the `runtime-rng` feature), which costs a few multiplications per lookup where the
/// standard library's SipHash-1-3 costs several rounds per 8 bytes plus four at the end.
pub(crate) type CellMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// An empty [`CellMap`] with room for `capacity` entries and fresh random keys.
pub(crate) fn cell_map<K, V>(capacity: usize) -> CellMap<K, V> {
    CellMap::with_capacity_and_hasher(capacity, ahash::RandomState::new())
}

/// A channel as the caller (the shard's reactor) names it. Only equality matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChanId(pub u32);

/// Most RELAY_EARLY cells a relay accepts on one circuit before closing it (tor-spec §5.6).
pub const RELAY_EARLY_MAX: u8 = 8;

// Cell bodies move between the framing layer, the relay-cell layout and the crypto batch by
// plain array copies.
const _: () = assert!(BODY_LEN == crypto_simd::CELL_BODY_LEN);
const _: () = assert!(BODY_LEN == proto::relay_cell::RELAY_BODY_LEN);

/// A fixed-length cell on a circuit, owned: the unit both state machines emit.
///
/// Every cell a circuit sends (CREATE2, CREATED2, CREATED_FAST, RELAY, RELAY_EARLY, DESTROY) is
/// fixed-length, so the body is always a whole [`BODY_LEN`] array and never allocated.
#[derive(Clone, PartialEq, Eq)]
pub struct CircCell {
    /// The circuit id on the channel the cell travels on.
    pub circ_id: CircId,
    /// The command.
    pub cmd: ChanCmd,
    /// The body, zero-padded.
    pub body: [u8; BODY_LEN],
}

impl CircCell {
    /// A cell whose body is `prefix` followed by zeros. `prefix` longer than a body is cut
    /// (callers only pass bodies they sized).
    pub fn new(circ_id: CircId, cmd: ChanCmd, prefix: &[u8]) -> Self {
        let mut body = [0u8; BODY_LEN];
        let n = prefix.len().min(BODY_LEN);
        body[..n].copy_from_slice(&prefix[..n]);
        CircCell { circ_id, cmd, body }
    }

    /// Borrows this cell as the framing layer's view.
    pub fn as_raw(&self) -> RawCell<'_> {
        RawCell {
            circ_id: Some(self.circ_id),
            cmd: self.cmd,
            body: CellBody::Fixed(&self.body),
        }
    }

    /// Copies a received fixed-length cell with a nonzero circuit id; `None` for anything else
    /// (variable-length cells and circuit id 0 never concern a circuit).
    pub fn from_raw(raw: &RawCell<'_>) -> Option<Self> {
        match (raw.circ_id, raw.body) {
            (Some(circ_id), CellBody::Fixed(b)) => Some(CircCell {
                circ_id,
                cmd: raw.cmd,
                body: *b,
            }),
            _ => None,
        }
    }

    /// Appends the framed cell.
    pub fn encode(&self, circ_id_len: CircIdLen, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.as_raw().encode(circ_id_len, out)
    }
}

impl std::fmt::Debug for CircCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircCell")
            .field("circ_id", &self.circ_id)
            .field("cmd", &self.cmd)
            .finish_non_exhaustive()
    }
}

/// The tor1 hop state from a finished handshake's key generator (`Df | Db | Kf | Kb`).
fn hop_from(kg: &KeyGenerator) -> Option<crypto_simd::Tor1Hop> {
    let k = kg.expand(crypto_simd::KDF_LEN).ok()?;
    let mut arr = [0u8; crypto_simd::KDF_LEN];
    arr.copy_from_slice(k.get(..crypto_simd::KDF_LEN)?);
    let hop = crypto_simd::Tor1Hop::from_kdf(&arr);
    arr.zeroize();
    Some(hop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn cell_map_agrees_with_a_std_hash_map() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut fast: CellMap<(ChanId, CircId), u32> = cell_map(16);
        let mut reference: HashMap<(ChanId, CircId), u32> = HashMap::new();
        for step in 0..20_000u32 {
            // Few channels and ids, so that inserts, hits, misses and removals all happen.
            let chan = ChanId(rng.gen_range(0..4));
            let Some(id) = CircId::new(rng.gen_range(1..200)) else {
                continue;
            };
            match rng.gen_range(0..3) {
                0 => assert_eq!(
                    fast.insert((chan, id), step),
                    reference.insert((chan, id), step)
                ),
                1 => assert_eq!(fast.remove(&(chan, id)), reference.remove(&(chan, id))),
                _ => assert_eq!(fast.get(&(chan, id)), reference.get(&(chan, id))),
            }
            assert_eq!(fast.len(), reference.len());
        }
        let mut a: Vec<_> = fast.into_iter().collect();
        let mut b: Vec<_> = reference.into_iter().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }

    #[test]
    fn a_vec_sink_keeps_put_and_push_cells_in_order() {
        let id = CircId::new(9).expect("nonzero");
        let mut body = [0u8; BODY_LEN];
        body[0] = 1;
        body[BODY_LEN - 1] = 2;
        let mut out: Vec<OutCell> = Vec::new();
        CellSink::put(&mut out, ChanId(3), id, ChanCmd::RELAY, &body);
        let owned = OutCell {
            chan: ChanId(4),
            cell: CircCell::new(id, ChanCmd::DESTROY, &[5]),
        };
        CellSink::push(&mut out, owned.clone());
        assert_eq!(
            out,
            vec![
                OutCell {
                    chan: ChanId(3),
                    cell: CircCell {
                        circ_id: id,
                        cmd: ChanCmd::RELAY,
                        body,
                    },
                },
                owned,
            ]
        );
    }

    #[test]
    fn cell_maps_are_keyed_at_random() {
        // A peer must not be able to precompute colliding circuit ids: two maps hash the same
        // key differently (with a fixed-key hasher all of these would agree).
        let key = (ChanId(1), CircId::new(0x8000_0001));
        let hashes: Vec<u64> = (0..8)
            .map(|_| {
                cell_map::<(ChanId, Option<CircId>), ()>(0)
                    .hasher()
                    .hash_one(key)
            })
            .collect();
        assert!(hashes.iter().any(|&h| h != hashes[0]));
    }
}
