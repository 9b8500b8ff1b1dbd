//! An in-memory network of chive relays and a client (STYLE point 11): three [`RelayCore`]s,
//! each with its own keys from a seeded RNG, channels as in-memory queues of framed cells (no
//! TLS, no sockets), and a driver loop that moves cells until the network is quiet.
//!
//! The relays have no exit yet, so bytes are checked end to end with the recognized-cell path:
//! BEGIN / BEGIN_DIR answered with END, TRUNCATE with TRUNCATED, and RELAY_DROP echoed by the
//! test-only hook [`RelayCore::set_echo_drop_for_tests`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use crypto_simd::Engine;
use proto::cell::{ChanCmd, CircIdLen, RawCell};
use proto::chan_msg::DestroyReason;
use proto::ids::{CircId, RsaIdentity, StreamId};
use proto::keys::RelayKeys;
use proto::relay_cell::{RelayCmd, RELAY_DATA_MAX_V0};
use proto::relay_msg::{Begin, BeginDir, End, EndReason, Host, RelayMsg};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use relay::circuit::{
    ChanId, ChanInfo, CircCell, ClientEvent, Event, HandshakeKind, InCell, Limits, OriginCircuit,
    OutCell, RelayCore, RelayInfo,
};

/// Driver iterations before a test gives up on the network going quiet.
const STEPS_MAX: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ep {
    Relay(usize),
    Client,
}

struct Node {
    core: RelayCore,
    keys: RelayKeys,
    info: RelayInfo,
    /// Framed cells waiting to be read, with the channel they arrived on.
    inbox: Vec<(ChanId, Vec<u8>)>,
}

struct Net {
    rng: StdRng,
    engine: Engine,
    relays: Vec<Node>,
    peers: HashMap<(Ep, ChanId), (Ep, ChanId)>,
    next_chan: u32,
    client_inbox: Vec<(ChanId, CircCell)>,
    /// OpenChannel requests seen, and those not yet answered when `hold_opens` is set.
    opens_seen: usize,
    held_opens: Vec<Event>,
    hold_opens: bool,
    /// Knob: interleave each relay's input from different channels in a random order (each
    /// channel's own cells stay in order, as TLS delivers them).
    shuffle: bool,
}

fn keys(seed: u64) -> RelayKeys {
    RelayKeys::generate(1_700_000_000, &mut StdRng::seed_from_u64(seed)).unwrap()
}

impl Net {
    fn new(n: usize, limits: Limits) -> Net {
        Net::with_engine(n, limits, Engine::from_env().unwrap())
    }

    /// A network whose relays and client all use `engine`'s crypto backend.
    fn with_engine(n: usize, limits: Limits, engine: Engine) -> Net {
        let relays = (0..n)
            .map(|i| {
                let keys = keys(100 + i as u64);
                let mut core = RelayCore::new(&keys, engine, limits).unwrap();
                core.set_echo_drop_for_tests(true);
                let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                let info = RelayInfo::from_keys(&keys, vec![addr]);
                Node {
                    core,
                    keys,
                    info,
                    inbox: Vec::new(),
                }
            })
            .collect();
        Net {
            rng: StdRng::seed_from_u64(42),
            engine,
            relays,
            peers: HashMap::new(),
            next_chan: 1,
            client_inbox: Vec::new(),
            opens_seen: 0,
            held_opens: Vec::new(),
            hold_opens: false,
            shuffle: false,
        }
    }

    fn chan(&mut self) -> ChanId {
        self.next_chan += 1;
        ChanId(self.next_chan)
    }

    /// A client channel to relay `r`: the client's end.
    fn connect_client(&mut self, r: usize) -> ChanId {
        let (c, rc) = (self.chan(), self.chan());
        self.relays[r].core.add_channel(
            rc,
            ChanInfo {
                link_version: 5,
                initiator: false,
                rsa_id: None,
                ed_id: None,
            },
        );
        self.peers.insert((Ep::Client, c), (Ep::Relay(r), rc));
        self.peers.insert((Ep::Relay(r), rc), (Ep::Client, c));
        c
    }

    fn relay_chan_info(&self, r: usize, initiator: bool) -> ChanInfo {
        ChanInfo {
            link_version: 5,
            initiator,
            rsa_id: Some(self.relays[r].keys.fingerprint()),
            ed_id: Some(self.relays[r].keys.ed25519_identity()),
        }
    }

    /// Puts a cell on the wire from `from`'s end of `chan`.
    fn send(&mut self, from: Ep, chan: ChanId, cell: &CircCell) {
        let Some(&(to, to_chan)) = self.peers.get(&(from, chan)) else {
            return; // channel closed
        };
        match to {
            Ep::Client => self.client_inbox.push((to_chan, cell.clone())),
            Ep::Relay(r) => {
                let mut bytes = Vec::new();
                cell.encode(CircIdLen::Four, &mut bytes).unwrap();
                self.relays[r].inbox.push((to_chan, bytes));
            }
        }
    }

    fn route_out(&mut self, r: usize, out: &mut Vec<OutCell>) {
        for o in out.drain(..) {
            self.send(Ep::Relay(r), o.chan, &o.cell);
        }
    }

    fn handle_event(&mut self, r: usize, e: Event) {
        let mut out = Vec::new();
        match e {
            Event::OpenChannel {
                request, rsa_id, ..
            } => {
                let target = self
                    .relays
                    .iter()
                    .position(|n| n.keys.fingerprint() == rsa_id);
                match target {
                    Some(t) => {
                        let (a, b) = (self.chan(), self.chan());
                        self.peers.insert((Ep::Relay(r), a), (Ep::Relay(t), b));
                        self.peers.insert((Ep::Relay(t), b), (Ep::Relay(r), a));
                        let from_info = self.relay_chan_info(r, false);
                        self.relays[t].core.add_channel(b, from_info);
                        let to_info = self.relay_chan_info(t, true);
                        self.relays[r]
                            .core
                            .handle_channel_opened(request, a, to_info, &mut out);
                    }
                    None => self.relays[r].core.handle_channel_failed(request, &mut out),
                }
            }
            Event::CloseChannel { chan } => self.close_channel(Ep::Relay(r), chan),
        }
        self.route_out(r, &mut out);
    }

    /// Closes a channel at both ends.
    fn close_channel(&mut self, ep: Ep, chan: ChanId) {
        let Some((peer, peer_chan)) = self.peers.remove(&(ep, chan)) else {
            return;
        };
        self.peers.remove(&(peer, peer_chan));
        for (e, c) in [(ep, chan), (peer, peer_chan)] {
            if let Ep::Relay(r) = e {
                let mut out = Vec::new();
                self.relays[r].core.handle_channel_closed(c, &mut out);
                self.route_out(r, &mut out);
            }
        }
    }

    /// Moves cells until no relay has anything to read.
    fn run(&mut self) {
        for _ in 0..STEPS_MAX {
            let mut busy = false;
            for r in 0..self.relays.len() {
                let mut inbox = std::mem::take(&mut self.relays[r].inbox);
                if inbox.is_empty() {
                    continue;
                }
                if self.shuffle {
                    inbox = interleave(&mut self.rng, inbox);
                }
                busy = true;
                let cells: Vec<InCell<'_>> = inbox
                    .iter()
                    .map(|(chan, bytes)| {
                        let (cell, used) = RawCell::decode(bytes, CircIdLen::Four).unwrap();
                        assert_eq!(used, bytes.len());
                        InCell { chan: *chan, cell }
                    })
                    .collect();
                let (mut out, mut events) = (Vec::new(), Vec::new());
                let node = &mut self.relays[r];
                node.core
                    .handle_batch(&mut self.rng, &cells, &mut out, &mut events);
                drop(cells);
                self.route_out(r, &mut out);
                for e in events {
                    if self.hold_opens && matches!(e, Event::OpenChannel { .. }) {
                        self.opens_seen += 1;
                        self.held_opens.push(e);
                        continue;
                    }
                    if matches!(e, Event::OpenChannel { .. }) {
                        self.opens_seen += 1;
                    }
                    self.handle_event(r, e);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("network not quiet after {STEPS_MAX} steps");
    }

    fn take_client(&mut self) -> Vec<(ChanId, CircCell)> {
        std::mem::take(&mut self.client_inbox)
    }

    /// Runs the network and hands the client's one expected cell to `circ`.
    fn exchange(&mut self, chan: ChanId, circ: &mut OriginCircuit, cell: CircCell) -> ClientEvent {
        self.send(Ep::Client, chan, &cell);
        self.run();
        let got = self.take_client();
        assert_eq!(got.len(), 1, "expected one cell back, got {got:?}");
        assert_eq!(got[0].0, chan);
        assert_eq!(got[0].1.circ_id, circ.circ_id());
        circ.handle_cell(&got[0].1).unwrap()
    }

    fn circuits(&self) -> Vec<usize> {
        self.relays.iter().map(|n| n.core.circuits()).collect()
    }
}

/// A random merge of the per-channel queues in `inbox`, keeping each channel's order.
fn interleave(rng: &mut StdRng, inbox: Vec<(ChanId, Vec<u8>)>) -> Vec<(ChanId, Vec<u8>)> {
    let mut queues: Vec<(ChanId, std::collections::VecDeque<Vec<u8>>)> = Vec::new();
    for (chan, bytes) in inbox {
        match queues.iter_mut().find(|(c, _)| *c == chan) {
            Some((_, q)) => q.push_back(bytes),
            None => queues.push((chan, [bytes].into())),
        }
    }
    let mut out = Vec::new();
    while !queues.is_empty() {
        let i = rng.gen_range(0..queues.len());
        let (chan, q) = &mut queues[i];
        out.push((*chan, q.pop_front().unwrap()));
        if q.is_empty() {
            queues.swap_remove(i);
        }
    }
    out
}

fn client_circ_id(n: u32) -> CircId {
    // The client opened the channel: its ids have the MSB set (tor-spec §5.1.1).
    CircId::new(0x8000_0000 | n).unwrap()
}

/// Builds a circuit through `path` with `kinds[i]` for hop i.
fn build(
    net: &mut Net,
    chan: ChanId,
    n: u32,
    path: &[usize],
    kinds: &[HandshakeKind],
) -> OriginCircuit {
    let first = net.relays[path[0]].info.clone();
    let (mut circ, cell) = OriginCircuit::create_first_hop(
        &mut net.rng,
        net.engine,
        client_circ_id(n),
        kinds[0],
        &first,
    )
    .unwrap();
    let ev = net.exchange(chan, &mut circ, cell);
    assert_eq!(ev, ClientEvent::HopAdded { hops: 1 });
    for (i, (&r, &kind)) in path.iter().zip(kinds).enumerate().skip(1) {
        let info = net.relays[r].info.clone();
        let cell = circ.extend(&mut net.rng, kind, &info).unwrap();
        assert_eq!(cell.cmd, ChanCmd::RELAY_EARLY);
        let ev = net.exchange(chan, &mut circ, cell);
        assert_eq!(ev, ClientEvent::HopAdded { hops: i + 1 });
    }
    circ
}

/// Sends a DROP with random data to `hop` and checks the echo comes back from it, byte for byte.
fn echo(net: &mut Net, chan: ChanId, circ: &mut OriginCircuit, hop: usize, len: usize) {
    let mut data = vec![0u8; len];
    net.rng.fill_bytes(&mut data);
    let cell = circ
        .send_raw(&mut net.rng, hop, RelayCmd::DROP, None, &data)
        .unwrap();
    match net.exchange(chan, circ, cell) {
        ClientEvent::Msg {
            hop: from,
            stream_id,
            msg,
            data: got,
        } => {
            assert_eq!(from, hop);
            assert_eq!(stream_id, None);
            assert_eq!(msg, RelayMsg::Drop(proto::relay_msg::Drop));
            assert_eq!(got, data);
        }
        other => panic!("expected DROP echo, got {other:?}"),
    }
}

/// Checks that the client got exactly one cell, a DESTROY with `reason`, and returns it.
fn expect_destroyed(net: &mut Net, reason: DestroyReason) -> CircCell {
    let mut got = net.take_client();
    assert_eq!(got.len(), 1, "{got:?}");
    let (_, cell) = got.remove(0);
    assert_eq!(cell.cmd, ChanCmd::DESTROY);
    assert_eq!(cell.body[0], reason.0, "DESTROY reason");
    cell
}

const THREE: [usize; 3] = [0, 1, 2];

#[test]
fn three_hops_with_every_handshake() {
    use HandshakeKind::*;
    let mut net = Net::new(3, Limits::default());
    let chan = net.connect_client(0);
    let plans = [
        [Ntor, Ntor, Ntor],
        [NtorV3, NtorV3, NtorV3],
        [CreateFast, Ntor, NtorV3],
        [CreateFast, NtorV3, Ntor],
    ];
    for (n, kinds) in plans.iter().enumerate() {
        let mut circ = build(&mut net, chan, n as u32 + 1, &THREE, kinds);
        assert_eq!(circ.hops(), 3);
        for hop in 0..3 {
            echo(&mut net, chan, &mut circ, hop, RELAY_DATA_MAX_V0);
            echo(&mut net, chan, &mut circ, hop, 0);
            echo(&mut net, chan, &mut circ, hop, 17);
        }
        // The last hop refuses streams: END with the stream id and reason, through two
        // backward layers.
        let stream = StreamId::new(7);
        let begin = RelayMsg::Begin(Begin {
            host: Host::parse("example.com").unwrap(),
            port: 443,
            flags: Default::default(),
        });
        let cell = circ.send(&mut net.rng, 2, stream, &begin).unwrap();
        let ev = net.exchange(chan, &mut circ, cell);
        let ClientEvent::Msg {
            hop,
            stream_id,
            msg,
            ..
        } = ev
        else {
            panic!("{ev:?}")
        };
        assert_eq!((hop, stream_id), (2, stream));
        assert_eq!(msg, RelayMsg::End(End::new(EndReason::EXITPOLICY)));
        let cell = circ
            .send(
                &mut net.rng,
                1,
                StreamId::new(8),
                &RelayMsg::BeginDir(BeginDir),
            )
            .unwrap();
        let ev = net.exchange(chan, &mut circ, cell);
        let ClientEvent::Msg {
            hop,
            stream_id,
            msg,
            ..
        } = ev
        else {
            panic!("{ev:?}")
        };
        assert_eq!((hop, stream_id), (1, StreamId::new(8)));
        assert_eq!(msg, RelayMsg::End(End::new(EndReason::NOTDIRECTORY)));
    }
    assert_eq!(net.circuits(), vec![4, 4, 4]);
    // One channel between each pair of relays carries all four circuits.
    assert_eq!(net.opens_seen, 2);
}

#[test]
fn hundreds_of_circuits_in_one_batch() {
    // Every backend this CPU has, each against its own network.
    for backend in crypto_simd::Backend::supported() {
        hundreds_of_circuits_with(Engine::new(backend).unwrap());
    }
}

fn hundreds_of_circuits_with(engine: Engine) {
    // Every EXTEND2 of the first round arrives before the channel they share is open, so each
    // waits as a pending extend.
    let limits = Limits {
        batch_cells_max: 512,
        pending_extends_max: 512,
        ..Limits::default()
    };
    let mut net = Net::with_engine(3, limits, engine);
    let chan = net.connect_client(0);
    let kinds = [
        HandshakeKind::CreateFast,
        HandshakeKind::Ntor,
        HandshakeKind::NtorV3,
    ];
    const N: usize = 300;
    let mut circs: Vec<OriginCircuit> = (0..N)
        .map(|i| {
            let first = net.relays[0].info.clone();
            let (c, cell) = OriginCircuit::create_first_hop(
                &mut net.rng,
                net.engine,
                client_circ_id(i as u32 + 1),
                kinds[0],
                &first,
            )
            .unwrap();
            net.send(Ep::Client, chan, &cell);
            c
        })
        .collect();
    // Every hop of every circuit handshakes in the same batch.
    let mut by_id: HashMap<CircId, usize> = HashMap::new();
    for (i, c) in circs.iter().enumerate() {
        by_id.insert(c.circ_id(), i);
    }
    for (hop, &kind) in kinds.iter().enumerate() {
        if hop > 0 {
            for c in &mut circs {
                let info = net.relays[hop].info.clone();
                let cell = c.extend(&mut net.rng, kind, &info).unwrap();
                net.send(Ep::Client, chan, &cell);
            }
        }
        net.run();
        let got = net.take_client();
        assert_eq!(got.len(), N);
        for (_, cell) in got {
            let c = &mut circs[by_id[&cell.circ_id]];
            assert_eq!(
                c.handle_cell(&cell).unwrap(),
                ClientEvent::HopAdded { hops: hop + 1 }
            );
        }
    }
    let batches_before: Vec<u64> = net
        .relays
        .iter()
        .map(|n| n.core.stats().crypto_batches)
        .collect();
    // One DROP per circuit to a random hop, all at once, each with different data.
    let mut sent = Vec::new();
    for c in &mut circs {
        let hop = net.rng.gen_range(0..3);
        let mut data = vec![0u8; net.rng.gen_range(0..=RELAY_DATA_MAX_V0)];
        net.rng.fill_bytes(&mut data);
        let cell = c
            .send_raw(&mut net.rng, hop, RelayCmd::DROP, None, &data)
            .unwrap();
        net.send(Ep::Client, chan, &cell);
        sent.push((hop, data));
    }
    net.run();
    let got = net.take_client();
    assert_eq!(got.len(), N);
    for (_, cell) in got {
        let i = by_id[&cell.circ_id];
        match circs[i].handle_cell(&cell).unwrap() {
            ClientEvent::Msg { hop, data, .. } => {
                assert_eq!((hop, &data), (sent[i].0, &sent[i].1));
            }
            other => panic!("{other:?}"),
        }
    }
    // Relay 0 saw all N forward cells in one crypto batch, and the echoes from each farther hop
    // in one more each.
    let batches: Vec<u64> = net
        .relays
        .iter()
        .zip(&batches_before)
        .map(|(n, b)| n.core.stats().crypto_batches - b)
        .collect();
    assert!(batches[0] <= 3, "{batches:?}");
    assert_eq!(net.circuits(), vec![N, N, N]);
}

#[test]
fn destroy_propagates_both_ways() {
    let kinds = [HandshakeKind::Ntor; 3];
    let mut net = Net::new(3, Limits::default());
    let chan = net.connect_client(0);
    // From the client: every hop frees the circuit.
    let mut circ = build(&mut net, chan, 1, &THREE, &kinds);
    let cell = circ.destroy();
    net.send(Ep::Client, chan, &cell);
    net.run();
    assert!(net.take_client().is_empty());
    assert_eq!(net.circuits(), vec![0, 0, 0]);

    // From the far end: the channel between relays 1 and 2 dies.
    let mut circ = build(&mut net, chan, 2, &THREE, &kinds);
    let (&(_, c12), _) = net
        .peers
        .iter()
        .find(|((e, _), (p, _))| *e == Ep::Relay(1) && *p == Ep::Relay(2))
        .unwrap();
    net.close_channel(Ep::Relay(1), c12);
    net.run();
    let cell = expect_destroyed(&mut net, DestroyReason::DESTROYED);
    assert_eq!(
        circ.handle_cell(&cell).unwrap(),
        ClientEvent::Destroyed {
            reason: DestroyReason::DESTROYED
        }
    );
    assert!(circ.is_closed());
    assert_eq!(net.circuits(), vec![0, 0, 0]);

    // The client's channel dies: the relays tear the circuit down behind it.
    let _circ = build(&mut net, chan, 3, &THREE, &kinds);
    assert_eq!(net.circuits(), vec![1, 1, 1]);
    net.close_channel(Ep::Client, chan);
    net.run();
    assert_eq!(net.circuits(), vec![0, 0, 0]);
}

#[test]
fn truncate_answers_truncated() {
    let kinds = [HandshakeKind::NtorV3; 3];
    let mut net = Net::new(3, Limits::default());
    let chan = net.connect_client(0);
    let mut circ = build(&mut net, chan, 1, &THREE, &kinds);
    let cell = circ
        .send_raw(&mut net.rng, 1, RelayCmd::TRUNCATE, None, &[])
        .unwrap();
    let ev = net.exchange(chan, &mut circ, cell);
    assert_eq!(
        ev,
        ClientEvent::Truncated {
            hop: 1,
            reason: DestroyReason::REQUESTED
        }
    );
    assert_eq!(circ.hops(), 2);
    assert_eq!(net.circuits(), vec![1, 1, 0]);
    // The truncated circuit can be extended again and still carries data.
    let info = net.relays[2].info.clone();
    let cell = circ
        .extend(&mut net.rng, HandshakeKind::Ntor, &info)
        .unwrap();
    assert_eq!(
        net.exchange(chan, &mut circ, cell),
        ClientEvent::HopAdded { hops: 3 }
    );
    echo(&mut net, chan, &mut circ, 2, 100);
}

#[test]
fn extend2_in_plain_relay_closes_the_circuit() {
    let mut net = Net::new(3, Limits::default());
    let chan = net.connect_client(0);
    let mut circ = build(&mut net, chan, 1, &[0, 1], &[HandshakeKind::Ntor; 2]);
    let info = net.relays[2].info.clone();
    let mut cell = circ
        .extend(&mut net.rng, HandshakeKind::Ntor, &info)
        .unwrap();
    cell.cmd = ChanCmd::RELAY;
    net.send(Ep::Client, chan, &cell);
    net.run();
    // Relay 1 closes with PROTOCOL; relay 0 passes on DESTROYED, not the reason.
    expect_destroyed(&mut net, DestroyReason::DESTROYED);
    assert_eq!(net.circuits(), vec![0, 0, 0]);
    assert_eq!(net.relays[1].core.stats().protocol_violations, 1);
}

#[test]
fn ninth_relay_early_closes_the_circuit() {
    let mut net = Net::new(1, Limits::default());
    let chan = net.connect_client(0);
    let mut circ = build(&mut net, chan, 1, &[0], &[HandshakeKind::Ntor]);
    for i in 0..9 {
        let mut cell = circ
            .send_raw(&mut net.rng, 0, RelayCmd::DROP, None, b"early")
            .unwrap();
        cell.cmd = ChanCmd::RELAY_EARLY;
        net.send(Ep::Client, chan, &cell);
        net.run();
        let got = net.take_client();
        if i < 8 {
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1.cmd, ChanCmd::RELAY, "echo of early cell {i}");
            circ.handle_cell(&got[0].1).unwrap();
        } else {
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1.cmd, ChanCmd::DESTROY);
            assert_eq!(got[0].1.body[0], DestroyReason::PROTOCOL.0);
        }
    }
    assert_eq!(net.circuits(), vec![0]);
}

#[test]
fn extend_to_unknown_identity_fails_with_connectfailed() {
    let mut net = Net::new(2, Limits::default());
    let chan = net.connect_client(0);
    let mut circ = build(&mut net, chan, 1, &[0, 1], &[HandshakeKind::Ntor; 2]);
    let mut nowhere = net.relays[1].info.clone();
    nowhere.rsa_id = RsaIdentity::from_bytes([0x55; 20]);
    nowhere.ed_id = None;
    let cell = circ
        .extend(&mut net.rng, HandshakeKind::Ntor, &nowhere)
        .unwrap();
    net.send(Ep::Client, chan, &cell);
    net.run();
    // Relay 1 reports CONNECTFAILED to relay 0, which passes DESTROYED on.
    expect_destroyed(&mut net, DestroyReason::DESTROYED);
    assert_eq!(net.circuits(), vec![0, 0]);

    // On a one-hop circuit the client sees the reason itself.
    let mut circ = build(&mut net, chan, 2, &[0], &[HandshakeKind::Ntor]);
    let cell = circ
        .extend(&mut net.rng, HandshakeKind::Ntor, &nowhere)
        .unwrap();
    net.send(Ep::Client, chan, &cell);
    net.run();
    expect_destroyed(&mut net, DestroyReason::CONNECTFAILED);
}

#[test]
fn extend_to_self_or_back_is_refused() {
    let mut net = Net::new(2, Limits::default());
    let chan = net.connect_client(0);
    // To itself.
    let mut circ = build(&mut net, chan, 1, &[0], &[HandshakeKind::Ntor]);
    let me = net.relays[0].info.clone();
    let cell = circ.extend(&mut net.rng, HandshakeKind::Ntor, &me).unwrap();
    net.send(Ep::Client, chan, &cell);
    net.run();
    expect_destroyed(&mut net, DestroyReason::PROTOCOL);
    // Back to the previous hop.
    let mut circ = build(&mut net, chan, 2, &[0, 1], &[HandshakeKind::NtorV3; 2]);
    let cell = circ
        .extend(&mut net.rng, HandshakeKind::NtorV3, &me)
        .unwrap();
    net.send(Ep::Client, chan, &cell);
    net.run();
    expect_destroyed(&mut net, DestroyReason::DESTROYED);
    assert_eq!(net.circuits(), vec![0, 0]);
    assert_eq!(net.relays[1].core.stats().protocol_violations, 1);
}

#[test]
fn extends_reuse_one_channel() {
    let mut net = Net::new(2, Limits::default());
    let chan = net.connect_client(0);
    let _a = build(&mut net, chan, 1, &[0, 1], &[HandshakeKind::Ntor; 2]);
    let mut b = build(&mut net, chan, 2, &[0, 1], &[HandshakeKind::NtorV3; 2]);
    assert_eq!(net.opens_seen, 1);
    let (&(_, c01), _) = net
        .peers
        .iter()
        .find(|((e, _), (p, _))| *e == Ep::Relay(0) && *p == Ep::Relay(1))
        .unwrap();
    assert_eq!(net.relays[0].core.channel_circuits(c01), 2);
    echo(&mut net, chan, &mut b, 1, 300);
}

#[test]
fn cells_queue_while_the_next_channel_opens() {
    let limits = Limits::default();
    let mut net = Net::new(2, limits);
    let chan = net.connect_client(0);
    let mut circ = build(&mut net, chan, 1, &[0], &[HandshakeKind::Ntor]);
    net.hold_opens = true;
    let info = net.relays[1].info.clone();
    let cell = circ
        .extend(&mut net.rng, HandshakeKind::Ntor, &info)
        .unwrap();
    net.send(Ep::Client, chan, &cell);
    net.run();
    assert_eq!(net.held_opens.len(), 1);
    // Cells no hop here recognizes wait for the channel, up to the limit; one more drops the
    // circuit.
    for _ in 0..=limits.cells_queued_per_extend_max {
        let mut junk = CircCell::new(circ.circ_id(), ChanCmd::RELAY, &[]);
        net.rng.fill_bytes(&mut junk.body);
        net.send(Ep::Client, chan, &junk);
    }
    net.run();
    expect_destroyed(&mut net, DestroyReason::RESOURCELIMIT);
    assert_eq!(net.circuits(), vec![0, 0]);
    // The late answer to the request is harmless.
    let e = net.held_opens.pop().unwrap();
    net.hold_opens = false;
    net.handle_event(0, e);
    net.run();
    assert!(net.take_client().is_empty());
    assert_eq!(net.circuits(), vec![0, 0]);
}

/// A random live circuit, chosen reproducibly.
fn pick(circs: &HashMap<CircId, Tracked>, rng: &mut StdRng) -> Option<CircId> {
    let mut ids: Vec<CircId> = circs.keys().copied().collect();
    ids.sort();
    (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())])
}

/// One client circuit in the random schedule test.
struct Tracked {
    circ: OriginCircuit,
    path_len: usize,
}

/// Delivers the client's cells to their circuits; checks echoes against `expect`.
fn settle(
    net: &mut Net,
    circs: &mut HashMap<CircId, Tracked>,
    expect: Option<(CircId, usize, Vec<u8>)>,
) {
    net.run();
    let mut echoed = false;
    for (_, cell) in net.take_client() {
        let Some(t) = circs.get_mut(&cell.circ_id) else {
            continue;
        };
        match t.circ.handle_cell(&cell) {
            Ok(ClientEvent::Msg { hop, data, .. }) => {
                let (id, want_hop, want) = expect.as_ref().unwrap();
                assert_eq!((&cell.circ_id, hop, &data), (id, *want_hop, want));
                echoed = true;
            }
            Ok(ClientEvent::Destroyed { .. }) => {
                circs.remove(&cell.circ_id);
            }
            other => panic!("{other:?}"),
        }
    }
    if let Some((id, _, _)) = expect {
        // An echo comes back unless its circuit died meanwhile.
        assert!(echoed || !circs.contains_key(&id));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// Random operations on random circuits, with each relay's input interleaved at random:
    /// every echo that comes back is byte-exact, nothing panics, and once the client destroys
    /// what is left, no relay holds a circuit.
    #[test]
    fn random_schedules(seed in proptest::prelude::any::<u64>()) {
        let mut net = Net::new(3, Limits::default());
        net.rng = StdRng::seed_from_u64(seed);
        net.shuffle = true;
        let chans: Vec<ChanId> = (0..3).map(|r| net.connect_client(r)).collect();
        let mut circs: HashMap<CircId, Tracked> = HashMap::new();
        let mut next_id = 1;
        let kinds = [HandshakeKind::Ntor, HandshakeKind::NtorV3, HandshakeKind::CreateFast];
        let mut first_hop: HashMap<CircId, usize> = HashMap::new();
        for _ in 0..40 {
            match net.rng.gen_range(0..10) {
                0..=2 => {
                    let len = net.rng.gen_range(1..=3);
                    let mut path = vec![0usize, 1, 2];
                    for i in 0..3 {
                        let j = net.rng.gen_range(i..3);
                        path.swap(i, j);
                    }
                    path.truncate(len);
                    let mut ks: Vec<HandshakeKind> =
                        (0..len).map(|_| kinds[net.rng.gen_range(0..2)]).collect();
                    if net.rng.gen_bool(0.3) {
                        ks[0] = HandshakeKind::CreateFast;
                    }
                    let chan = chans[path[0]];
                    // Build without shuffling surprises: each step settles before the next.
                    let circ = build(&mut net, chan, next_id, &path, &ks);
                    first_hop.insert(circ.circ_id(), path[0]);
                    circs.insert(circ.circ_id(), Tracked { circ, path_len: len });
                    next_id += 1;
                }
                3..=6 => {
                    let Some(id) = pick(&circs, &mut net.rng) else { continue };
                    let t = circs.get_mut(&id).unwrap();
                    let hop = net.rng.gen_range(0..t.path_len);
                    let mut data = vec![0u8; net.rng.gen_range(0..=RELAY_DATA_MAX_V0)];
                    net.rng.fill_bytes(&mut data);
                    let cell = t.circ.send_raw(&mut net.rng, hop, RelayCmd::DROP, None, &data).unwrap();
                    let chan = chans[first_hop[&id]];
                    net.send(Ep::Client, chan, &cell);
                    settle(&mut net, &mut circs, Some((id, hop, data)));
                }
                7 => {
                    let Some(id) = pick(&circs, &mut net.rng) else { continue };
                    let mut t = circs.remove(&id).unwrap();
                    let cell = t.circ.destroy();
                    net.send(Ep::Client, chans[first_hop[&id]], &cell);
                    settle(&mut net, &mut circs, None);
                }
                8 => {
                    let Some(id) = pick(&circs, &mut net.rng) else { continue };
                    let mut junk = CircCell::new(id, ChanCmd::RELAY, &[]);
                    net.rng.fill_bytes(&mut junk.body);
                    net.send(Ep::Client, chans[first_hop[&id]], &junk);
                    settle(&mut net, &mut circs, None);
                    // No hop recognizes junk: the circuit is gone.
                    proptest::prop_assert!(!circs.contains_key(&id));
                }
                _ => {
                    let links: Vec<(Ep, ChanId)> = net
                        .peers
                        .iter()
                        .filter(|((e, _), (p, _))| matches!((e, p), (Ep::Relay(_), Ep::Relay(_))))
                        .map(|(k, _)| *k)
                        .collect();
                    if links.is_empty() {
                        continue;
                    }
                    let (ep, chan) = links[net.rng.gen_range(0..links.len())];
                    net.close_channel(ep, chan);
                    settle(&mut net, &mut circs, None);
                }
            }
        }
        let ids: Vec<CircId> = circs.keys().copied().collect();
        for id in ids {
            let cell = circs.get_mut(&id).unwrap().circ.destroy();
            net.send(Ep::Client, chans[first_hop[&id]], &cell);
        }
        net.run();
        proptest::prop_assert_eq!(net.circuits(), vec![0, 0, 0]);
    }
}
