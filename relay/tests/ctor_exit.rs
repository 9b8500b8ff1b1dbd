//! Bytes checked end to end through a C tor exit: chive's client opens a stream with
//! RELAY_BEGIN at a C tor 0.4.9 relay configured as an exit to a TCP echo server on loopback,
//! and pushes DATA both ways with flow control (tor-spec §6.2–§7.4, prop 289):
//!
//! - [`chive_chive_ctor_exit`]: chive client → chive → chive → C tor exit → echo server;
//! - [`ctor_chive_ctor_exit`]: chive client → C tor → chive → C tor exit → echo server.
//!
//! Each stream carries more than the stream window (500 cells) and the circuit window (1000
//! cells) in each direction, so both sides must send SENDMEs: ours to the exit are
//! authenticated (SENDME v1 with the digest of the 100th cell), and C tor closes the circuit if
//! one is missing or wrong (tested too: a flipped bit in our SENDME's digest gets the circuit
//! destroyed). Every echoed byte is checked, then the stream ends with END and the circuit is
//! destroyed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/chive.rs"]
mod chive;
#[path = "common/ctor.rs"]
mod ctor;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use chive::{relay_info, Chan, Chive};
use ctor::CTorRelay;
use proto::ids::StreamId;
use proto::relay_cell::RELAY_DATA_MAX_V0;
use proto::relay_msg::{Begin, Data, End, EndReason, Host, RelayMsg, Sendme};
use relay::circuit::{ClientEvent, HandshakeKind, OriginCircuit, RelayInfo, SendmeTag};

/// DATA cells sent and expected back per stream: over 1000, so every window is crossed.
const CELLS: usize = 1200;
/// Cells sent before reading their echoes back.
const BURST: usize = 40;
/// tor-spec §7.3–§7.4: initial windows and SENDME increments.
const CIRC_WINDOW: usize = 1000;
const CIRC_INCREMENT: usize = 100;
const STREAM_WINDOW: usize = 500;
const STREAM_INCREMENT: usize = 50;

/// A TCP echo server on loopback, one thread per connection.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A C tor relay that exits only to `target`.
fn ctor_exit(nickname: &str, target: SocketAddr) -> CTorRelay {
    let policy = format!("accept {target},reject *:*");
    CTorRelay::start(
        nickname,
        &[
            "--ExitRelay",
            "1",
            "--ExitPolicy",
            &policy,
            "--ExitPolicyRejectPrivate",
            "0",
            "--ExitPolicyRejectLocalInterfaces",
            "0",
            "--ExtendAllowPrivateAddresses",
            "1",
            // The previous hop is a relay this exit has no consensus to know; by default C tor
            // refuses exits from unknown relays (END MISC) as if they were clients.
            "--RefuseUnknownExits",
            "0",
        ],
    )
}

/// The client's side of one stream and its circuit's windows.
struct Flow {
    /// Cells we may still package (circuit and stream), refilled by the exit's SENDMEs.
    circ_package: usize,
    stream_package: usize,
    /// DATA cells received since our last SENDME (circuit and stream).
    circ_delivered: usize,
    stream_delivered: usize,
    /// DATA cells received in all, SENDMEs sent, and SENDMEs received (circuit, stream).
    received: usize,
    sendmes_sent: usize,
    circ_sendmes_received: usize,
    stream_sendmes_received: usize,
}

/// Opens a stream to `target` at the last hop, pushes `CELLS` DATA cells of random bytes through
/// the echo server and checks that every byte comes back in order; then ENDs the stream.
///
/// With `tamper`, our first circuit SENDME carries a digest with one bit flipped: the exit must
/// then destroy the circuit (and the function returns when it does).
fn echo_through_exit(chan: &mut Chan, circ: &mut OriginCircuit, target: SocketAddr, tamper: bool) {
    let mut rng = rand::rngs::OsRng;
    let exit = circ.hops() - 1;
    // C tor checks BEGIN against the exit policy of its own descriptor, which it builds a
    // little after its ORPort opens; until then it refuses with END(EXITPOLICY). Retry on a
    // fresh stream id until it accepts.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut id = 7;
    let stream = loop {
        let stream = StreamId::new(id);
        let begin = RelayMsg::Begin(Begin {
            host: Host::parse(&target.ip().to_string()).unwrap(),
            port: target.port(),
            flags: Default::default(),
        });
        let cell = circ.send(&mut rng, exit, stream, &begin).unwrap();
        match chan.exchange(circ, cell) {
            ClientEvent::Msg {
                hop,
                stream_id,
                msg: RelayMsg::Connected(_),
                ..
            } => {
                assert_eq!((hop, stream_id), (exit, stream));
                break stream;
            }
            ClientEvent::Msg {
                msg: RelayMsg::End(End { reason, .. }),
                ..
            } if reason == EndReason::EXITPOLICY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
                id += 1;
            }
            other => panic!("expected CONNECTED, got {other:?}"),
        }
    };

    let mut flow = Flow {
        circ_package: CIRC_WINDOW,
        stream_package: STREAM_WINDOW,
        circ_delivered: 0,
        stream_delivered: 0,
        received: 0,
        sendmes_sent: 0,
        circ_sendmes_received: 0,
        stream_sendmes_received: 0,
    };
    let mut sent_bytes: Vec<u8> = Vec::new();
    let mut echoed: Vec<u8> = Vec::new();
    let mut sent_cells = 0;
    while sent_cells < CELLS || echoed.len() < sent_bytes.len() {
        // Send a burst, as far as both package windows allow.
        let mut burst = 0;
        while sent_cells < CELLS
            && burst < BURST
            && flow.circ_package > 0
            && flow.stream_package > 0
        {
            // Mostly full cells, so the echo needs over 1000 cells back as well.
            let mut data = vec![0u8; RELAY_DATA_MAX_V0 - (sent_cells * 37) % 11];
            rand::RngCore::fill_bytes(&mut rng, &mut data);
            sent_bytes.extend_from_slice(&data);
            let msg = RelayMsg::Data(Data::new(data).unwrap());
            chan.send(&circ.send(&mut rng, exit, stream, &msg).unwrap());
            flow.circ_package -= 1;
            flow.stream_package -= 1;
            sent_cells += 1;
            burst += 1;
        }
        // Read until this burst is echoed, or until a SENDME reopens a window we wait on.
        let blocked = |f: &Flow| f.circ_package == 0 || f.stream_package == 0;
        let target_len = sent_bytes.len();
        while echoed.len() < target_len || (sent_cells < CELLS && blocked(&flow)) {
            let reply = chan.recv(circ.circ_id());
            match circ.handle_cell(&reply).unwrap() {
                ClientEvent::Msg {
                    hop,
                    stream_id,
                    msg,
                    ..
                } => {
                    assert_eq!(hop, exit, "message from a middle hop: {msg:?}");
                    match (stream_id, msg) {
                        (Some(id), RelayMsg::Data(d)) if Some(id) == stream => {
                            echoed.extend_from_slice(d.as_bytes());
                            assert!(echoed.len() <= sent_bytes.len(), "more echoed than sent");
                            flow.received += 1;
                            flow.circ_delivered += 1;
                            flow.stream_delivered += 1;
                            // The circuit SENDME first: its digest must be that of the
                            // 100th cell, the one just received.
                            if flow.circ_delivered == CIRC_INCREMENT {
                                let SendmeTag::Tor1(digest) = circ.last_recv_tag() else {
                                    panic!("expected a tor1 digest for the exit hop");
                                };
                                let mut digest = digest;
                                if tamper {
                                    digest[0] ^= 1;
                                }
                                let msg = RelayMsg::Sendme(Sendme::V1 { digest });
                                chan.send(&circ.send(&mut rng, exit, None, &msg).unwrap());
                                flow.circ_delivered = 0;
                                flow.sendmes_sent += 1;
                            }
                            if flow.stream_delivered == STREAM_INCREMENT {
                                let msg = RelayMsg::Sendme(Sendme::V0);
                                chan.send(&circ.send(&mut rng, exit, stream, &msg).unwrap());
                                flow.stream_delivered = 0;
                                flow.sendmes_sent += 1;
                            }
                        }
                        (None, RelayMsg::Sendme(_)) => {
                            flow.circ_package += CIRC_INCREMENT;
                            flow.circ_sendmes_received += 1;
                        }
                        (Some(id), RelayMsg::Sendme(_)) if Some(id) == stream => {
                            flow.stream_package += STREAM_INCREMENT;
                            flow.stream_sendmes_received += 1;
                        }
                        (id, other) => panic!("unexpected {other:?} on stream {id:?}"),
                    }
                }
                ClientEvent::Destroyed { .. } if tamper && flow.sendmes_sent > 0 => return,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            echoed[..],
            sent_bytes[..echoed.len()],
            "echoed bytes differ from those sent"
        );
    }
    assert!(!tamper, "the exit accepted a SENDME with a wrong digest");
    assert_eq!(echoed, sent_bytes);
    // Both directions crossed both windows: the exit's SENDMEs let us send past ours, and it
    // sent past its own only because it accepted our authenticated SENDMEs.
    assert!(
        flow.received > CIRC_WINDOW,
        "only {} cells came back",
        flow.received
    );
    assert!(flow.circ_sendmes_received >= (CELLS - CIRC_WINDOW).div_ceil(CIRC_INCREMENT));
    assert!(flow.stream_sendmes_received >= (CELLS - STREAM_WINDOW).div_ceil(STREAM_INCREMENT));
    assert_eq!(
        flow.sendmes_sent,
        flow.received / CIRC_INCREMENT + flow.received / STREAM_INCREMENT
    );

    // END the stream; the exit closes its side of the echo connection.
    let end = RelayMsg::End(End {
        reason: EndReason::DONE,
        exit_policy: None,
    });
    chan.send(&circ.send(&mut rng, exit, stream, &end).unwrap());
}

fn path_infos(ctors: &[&CTorRelay]) -> Vec<RelayInfo> {
    ctors
        .iter()
        .map(|t| relay_info(&t.data_dir(), t.or_addr()))
        .collect()
}

#[test]
fn chive_chive_ctor_exit() {
    let target = echo_server();
    let (a, b, x) = std::thread::scope(|s| {
        let a = s.spawn(|| Chive::start("chiveX1", "poll"));
        let b = s.spawn(|| Chive::start("chiveX2", "io_uring"));
        let x = s.spawn(|| ctor_exit("ctorExit1", target));
        (a.join().unwrap(), b.join().unwrap(), x.join().unwrap())
    });
    let infos = path_infos(&[&x]);
    use HandshakeKind::*;
    let mut chan = Chan::open(&a.info);
    for (n, kinds) in [[CreateFast, NtorV3, Ntor], [NtorV3, Ntor, NtorV3]]
        .iter()
        .enumerate()
    {
        let mut circ = chan.build(n as u32 + 1, &[&a.info, &b.info, &infos[0]], kinds);
        echo_through_exit(&mut chan, &mut circ, target, false);
        chan.send(&circ.destroy());
    }
    // A SENDME v1 whose digest is not that of the acknowledged cell closes the circuit.
    let mut circ = chan.build(3, &[&a.info, &b.info, &infos[0]], &[Ntor, Ntor, Ntor]);
    echo_through_exit(&mut chan, &mut circ, target, true);
    assert!(circ.is_closed());
    assert!(!x.log().contains("Bug:"), "{}", x.log());
}

#[test]
fn ctor_chive_ctor_exit() {
    let target = echo_server();
    let (a, x, y) = std::thread::scope(|s| {
        let a = s.spawn(|| Chive::start("chiveX3", "poll"));
        let allow = ["--ExtendAllowPrivateAddresses", "1"];
        let x = s.spawn(move || CTorRelay::start("ctorMid", &allow));
        let y = s.spawn(|| ctor_exit("ctorExit2", target));
        (a.join().unwrap(), x.join().unwrap(), y.join().unwrap())
    });
    let infos = path_infos(&[&x, &y]);
    use HandshakeKind::*;
    let mut chan = Chan::open(&infos[0]);
    let mut circ = chan.build(1, &[&infos[0], &a.info, &infos[1]], &[Ntor, NtorV3, Ntor]);
    echo_through_exit(&mut chan, &mut circ, target, false);
    chan.send(&circ.destroy());
    assert!(!y.log().contains("Bug:"), "{}", y.log());
}
