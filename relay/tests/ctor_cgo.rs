//! Counter Galois Onion (CGO, `Relay=6`, proposal 359) with C tor 0.4.9: chive's client asks
//! each hop for CGO in its ntor v3 onionskin (subprotocol request), and every hop that gets
//! the request runs CGO with the v1 relay cell format.
//!
//! - [`cgo_chive_c_tor_chive`]: chive → C tor → chive with CGO on every hop, and the mixed
//!   choices (tor1 on some hops, CGO on others). C tor extends to the chive relay with the
//!   client's onionskin, so C tor → chive carries a CGO hop set up through C tor's EXTEND2.
//!   RELAY_DROPs of every v1 size are echoed (`testing_echo_drop`) by the last and first
//!   hops and checked byte for byte through C tor's CGO crypto both ways.
//! - [`cgo_c_tor_chive_c_tor`]: C tor → chive → C tor with CGO: echoes from the chive middle
//!   hop, and a BEGIN to the C tor last hop answered with END through every layer.
//! - [`cgo_three_c_tor_relays`]: three C tor relays, CGO on every hop (then on some, then on
//!   none): a directory request (BEGIN_DIR, then an HTTP GET of the last relay's own
//!   descriptor) whose answer is checked and is the same on every path.
//! - [`cgo_tampering_closes_the_circuit`]: a flipped bit in a CGO cell, addressed to a chive or
//!   to a C tor hop, gets the circuit destroyed; another circuit on the same channel goes on.
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/chive.rs"]
mod chive;
#[path = "common/ctor.rs"]
mod ctor;

use chive::{relay_info, Chan, Chive};
use ctor::CTorRelay;
use proto::ids::StreamId;
use proto::relay_cell::RelayCmd;
use proto::relay_cell_v1::RelayCellFormat;
use proto::relay_msg::{Data, RelayMsg};
use relay::circuit::{ClientEvent, HandshakeKind, OriginCircuit, RelayInfo};

use HandshakeKind::{NtorV3, NtorV3Cgo};

const ALLOW: [&str; 2] = ["--ExtendAllowPrivateAddresses", "1"];

fn start_ctors(names: &[&'static str]) -> Vec<CTorRelay> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|&n| s.spawn(move || CTorRelay::start(n, &ALLOW)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn ctor_info(t: &CTorRelay) -> RelayInfo {
    relay_info(&t.data_dir(), t.or_addr())
}

/// Checks that every hop uses the format its handshake asked for.
fn check_formats(circ: &OriginCircuit, kinds: &[HandshakeKind]) {
    for (i, k) in kinds.iter().enumerate() {
        let want = if *k == NtorV3Cgo {
            RelayCellFormat::V1
        } else {
            RelayCellFormat::V0
        };
        assert_eq!(circ.hop_format(i), Some(want), "hop {i}");
    }
}

/// Sends `cells` RELAY_DROPs to `hop`, with every data length the hop's format allows in
/// turn (up to 490 bytes with v1), and checks every echo byte for byte.
fn echo(chan: &mut Chan, circ: &mut OriginCircuit, hop: usize, cells: usize) {
    const WINDOW: usize = 16;
    let max = circ.hop_format(hop).unwrap().data_max(RelayCmd::DROP);
    let mut rng = rand::rngs::OsRng;
    let mut sent = std::collections::VecDeque::new();
    for i in 0..cells {
        // The first cells hit the edges: empty, maximal.
        let len = match i {
            0 => 0,
            1 => max,
            _ => (i * 37) % (max + 1),
        };
        let mut data = vec![0u8; len];
        rand::RngCore::fill_bytes(&mut rng, &mut data);
        let cell = circ
            .send_raw(&mut rng, hop, RelayCmd::DROP, None, &data)
            .unwrap();
        chan.send(&cell);
        sent.push_back(data);
        if sent.len() == WINDOW || i + 1 == cells {
            while let Some(want) = sent.pop_front() {
                let reply = chan.recv(circ.circ_id());
                match circ.handle_cell(&reply).unwrap() {
                    ClientEvent::Msg {
                        hop: from,
                        msg: RelayMsg::Drop(_),
                        data,
                        ..
                    } => {
                        assert_eq!(from, hop);
                        assert_eq!(data, want);
                    }
                    other => panic!("expected a DROP echo from hop {hop}, got {other:?}"),
                }
            }
        }
    }
}

/// BEGIN to the last hop (a non-exit): it comes back as END from that hop, on our stream.
fn begin_refused(chan: &mut Chan, circ: &mut OriginCircuit) {
    let hop = circ.hops() - 1;
    let reason = chan.begin_refused(circ);
    eprintln!("hop {hop} refused BEGIN with {reason:?}");
}

/// Builds `path` with `kinds`, checks the formats, echoes from every chive hop in
/// `echo_hops`.
fn build_and_echo(
    chan: &mut Chan,
    id: u32,
    path: &[&RelayInfo],
    kinds: &[HandshakeKind],
    echo_hops: &[usize],
) -> OriginCircuit {
    let mut circ = chan.build(id, path, kinds);
    check_formats(&circ, kinds);
    for &hop in echo_hops {
        echo(chan, &mut circ, hop, 40);
    }
    circ
}

#[test]
fn cgo_chive_c_tor_chive() {
    let (chives, ctors) = std::thread::scope(|s| {
        let c1 = s.spawn(|| Chive::start("chiveG1", "poll"));
        let c2 = s.spawn(|| Chive::start("chiveG2", "poll"));
        let t = s.spawn(|| start_ctors(&["ctorG1"]));
        (
            vec![c1.join().unwrap(), c2.join().unwrap()],
            t.join().unwrap(),
        )
    });
    let (a, b) = (&chives[0].info, &chives[1].info);
    let x = ctor_info(&ctors[0]);
    let mut chan = Chan::open(a);
    for (n, kinds) in [
        [NtorV3Cgo, NtorV3Cgo, NtorV3Cgo],
        [NtorV3, NtorV3Cgo, NtorV3Cgo],
        [NtorV3Cgo, NtorV3, NtorV3Cgo],
        [NtorV3Cgo, NtorV3Cgo, NtorV3],
    ]
    .iter()
    .enumerate()
    {
        let mut circ = build_and_echo(&mut chan, n as u32 + 1, &[a, &x, b], kinds, &[2, 0]);
        begin_refused(&mut chan, &mut circ);
    }
    drop(ctors);
    for c in chives {
        assert!(c.terminate().success());
    }
}

#[test]
fn cgo_c_tor_chive_c_tor() {
    let (chives, ctors) = std::thread::scope(|s| {
        let c = s.spawn(|| Chive::start("chiveH1", "poll"));
        let t = s.spawn(|| start_ctors(&["ctorH1", "ctorH2"]));
        (vec![c.join().unwrap()], t.join().unwrap())
    });
    let a = &chives[0].info;
    let (x, y) = (ctor_info(&ctors[0]), ctor_info(&ctors[1]));
    let mut chan = Chan::open(&x);
    for (n, kinds) in [
        [NtorV3Cgo, NtorV3Cgo, NtorV3Cgo],
        [NtorV3Cgo, NtorV3Cgo, NtorV3],
        [NtorV3, NtorV3Cgo, NtorV3Cgo],
    ]
    .iter()
    .enumerate()
    {
        let mut circ = build_and_echo(&mut chan, n as u32 + 1, &[&x, a, &y], kinds, &[1]);
        begin_refused(&mut chan, &mut circ);
        // The circuit still carries cells after C tor's END.
        echo(&mut chan, &mut circ, 1, 4);
    }
    drop(ctors);
    for c in chives {
        assert!(c.terminate().success());
    }
}

/// BEGIN_DIR and an HTTP GET of the last relay's own descriptor; returns the HTTP answer, or
/// `None` if the relay refused the directory stream.
fn fetch_descriptor(chan: &mut Chan, circ: &mut OriginCircuit) -> Option<Vec<u8>> {
    let mut rng = rand::rngs::OsRng;
    let hop = circ.hops() - 1;
    let stream = StreamId::new(1);
    let cell = circ
        .send_raw(&mut rng, hop, RelayCmd::BEGIN_DIR, stream, &[])
        .unwrap();
    match chan.exchange(circ, cell) {
        ClientEvent::Msg {
            msg: RelayMsg::Connected(_),
            hop: from,
            stream_id,
            ..
        } => assert_eq!((from, stream_id), (hop, stream)),
        ClientEvent::Msg {
            msg: RelayMsg::End(e),
            ..
        } => {
            eprintln!("BEGIN_DIR refused: {:?}", e.reason);
            return None;
        }
        other => panic!("expected CONNECTED, got {other:?}"),
    }
    let get = b"GET /tor/server/authority HTTP/1.0\r\n\r\n".to_vec();
    let msg = RelayMsg::Data(Data::new(get).unwrap());
    let cell = circ.send(&mut rng, hop, stream, &msg).unwrap();
    chan.send(&cell);
    let mut answer = Vec::new();
    loop {
        let cell = chan.recv(circ.circ_id());
        match circ.handle_cell(&cell).unwrap() {
            ClientEvent::Msg {
                msg: RelayMsg::Data(_),
                data,
                stream_id,
                ..
            } => {
                assert_eq!(stream_id, stream);
                // v1 DATA cells carry at most 488 bytes, v0 ones 498.
                let max = circ.hop_format(hop).unwrap().data_max(RelayCmd::DATA);
                assert!(data.len() <= max);
                answer.extend_from_slice(&data);
            }
            ClientEvent::Msg {
                msg: RelayMsg::End(_),
                ..
            } => return Some(answer),
            other => panic!("expected DATA or END, got {other:?}"),
        }
    }
}

#[test]
fn cgo_three_c_tor_relays() {
    let ctors = start_ctors(&["ctorK1", "ctorK2", "ctorK3"]);
    let infos: Vec<RelayInfo> = ctors.iter().map(ctor_info).collect();
    let path: Vec<&RelayInfo> = infos.iter().collect();
    let mut chan = Chan::open(path[0]);
    let kinds = [NtorV3Cgo, NtorV3Cgo, NtorV3Cgo];
    let mut circ = chan.build(1, &path, &kinds);
    check_formats(&circ, &kinds);
    let answer = fetch_descriptor(&mut chan, &mut circ).expect("C tor serves BEGIN_DIR");
    let first = check_answer(&answer, &ctors[2]);
    // Mixed and tor1 paths to the same relay get a good answer too, the same one once the
    // relay has its descriptor.
    for (n, kinds) in [
        [NtorV3, NtorV3Cgo, NtorV3Cgo],
        [NtorV3Cgo, NtorV3, NtorV3Cgo],
        [NtorV3, NtorV3, NtorV3],
    ]
    .iter()
    .enumerate()
    {
        let mut circ = chan.build(n as u32 + 2, &path, kinds);
        check_formats(&circ, kinds);
        let again = fetch_descriptor(&mut chan, &mut circ).unwrap();
        if let (Some(a), Some(b)) = (&first, check_answer(&again, &ctors[2])) {
            assert_eq!(a, &b);
        }
    }
}

/// Checks an answer to `GET /tor/server/authority`: the relay's own descriptor (returned), or
/// a 404 from a relay that has not built its descriptor yet (it publishes nothing). Either way
/// a whole HTTP answer crossed the circuit intact.
fn check_answer(answer: &[u8], relay: &CTorRelay) -> Option<String> {
    let text = String::from_utf8_lossy(answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole HTTP answer");
    let status = head.lines().next().unwrap_or_default();
    assert!(head.lines().any(|l| l.starts_with("Date: ")), "{text}");
    if status == "HTTP/1.0 200 OK" {
        // The body is the relay's own descriptor, naming it and its ORPort.
        let router = format!(
            "router {} {} {} 0 0\n",
            relay.nickname(),
            relay.or_addr().ip(),
            relay.or_addr().port()
        );
        assert!(body.starts_with(&router), "{text}");
        assert!(body.contains("\nproto "), "{text}");
        Some(body.to_string())
    } else {
        assert_eq!(status, "HTTP/1.0 404 Servers unavailable", "{text}");
        None
    }
}

#[test]
fn cgo_tampering_closes_the_circuit() {
    let (chives, ctors) = std::thread::scope(|s| {
        let c1 = s.spawn(|| Chive::start("chiveT1", "poll"));
        let c2 = s.spawn(|| Chive::start("chiveT2", "poll"));
        let t = s.spawn(|| start_ctors(&["ctorT1"]));
        (
            vec![c1.join().unwrap(), c2.join().unwrap()],
            t.join().unwrap(),
        )
    });
    let (a, b) = (&chives[0].info, &chives[1].info);
    let x = ctor_info(&ctors[0]);
    let mut chan = Chan::open(a);
    let kinds = [NtorV3Cgo, NtorV3Cgo, NtorV3Cgo];
    let mut rng = rand::rngs::OsRng;
    // A flipped bit in a cell for hop 2 (chive, after C tor), in the tag of a cell for hop 1
    // (C tor), and in a cell for hop 0 (chive): each time that circuit is destroyed, and a
    // circuit built beside them goes on. All circuits are built first.
    let cases = [(2usize, 200usize), (1, 5), (0, 300)];
    let mut keep = build_and_echo(&mut chan, 100, &[a, &x, b], &kinds, &[2]);
    let mut circs: Vec<OriginCircuit> = (0..cases.len())
        .map(|n| build_and_echo(&mut chan, n as u32 + 1, &[a, &x, b], &kinds, &[2, 0]))
        .collect();
    for ((hop, byte), circ) in cases.into_iter().zip(circs.iter_mut()) {
        let mut cell = circ
            .send_raw(&mut rng, hop, RelayCmd::DROP, None, b"flip one bit")
            .unwrap();
        cell.body[byte] ^= 0x04;
        chan.send(&cell);
        let reply = chan.recv(circ.circ_id());
        match circ.handle_cell(&reply) {
            Ok(ClientEvent::Destroyed { reason }) => {
                eprintln!("tampered cell for hop {hop}: DESTROY {reason:?}")
            }
            other => panic!("expected DESTROY after tampering (hop {hop}), got {other:?}"),
        }
        // Only that circuit: the other one on the channel still echoes, at both chive hops.
        echo(&mut chan, &mut keep, 0, 4);
        echo(&mut chan, &mut keep, 2, 4);
    }
    drop(ctors);
    for c in chives {
        assert!(c.terminate().success());
    }
}
