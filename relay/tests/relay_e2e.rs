//! `chive relay` end to end: real processes, real sockets, chive's own client library.
//!
//! - [`three_chive_relays`]: three `chive relay` processes (2 shards each, poll backend) and
//!   many client connections; 3-hop circuits with ntor, ntor v3 and CREATE_FAST first hops;
//!   BEGIN to the last hop comes back as END(EXITPOLICY) through two relays' crypto, TRUNCATE
//!   to the middle hop comes back as TRUNCATED; RELAY_DROPs echoed by the relays (their
//!   test-only `testing_echo_drop`) are checked byte for byte from the middle and last hops. Every relay logs accepted connections on both
//!   of its shards, and exits cleanly on SIGTERM.
//! - [`three_chive_relays_io_uring`]: the same on the io_uring backend.
//! - [`mixed_with_c_tor`]: circuits chive → C tor → chive and C tor → chive → C tor (C tor
//!   0.4.9 relays from `common/ctor.rs` with `ExtendAllowPrivateAddresses 1`): each relay
//!   extends to the other implementation, authenticating as initiator and checked as
//!   responder; DROPs echoed by the chive hop cross C tor's relay crypto both ways.
//!
//! - [`circuits_cross_shards`] (and `_io_uring`): circuits entering a 2-shard relay on both
//!   shards all extend over its single channel to the next relay, so half of them cross
//!   shards; echoes, DESTROY both ways and the channel's close are checked.
//!
//! The relays run as the test binary's sibling `chive` (`CARGO_BIN_EXE_chive`) in temporary
//! data directories; each test finishes in seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/chive.rs"]
mod chive;
#[path = "common/ctor.rs"]
mod ctor;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chive::{relay_info, Chan, Chive};
use ctor::CTorRelay;
use proto::chan_msg::DestroyReason;
use proto::relay_cell::RelayCmd;
use proto::relay_msg::EndReason;
use relay::circuit::{ClientEvent, HandshakeKind, RelayInfo};

/// A bad configuration stops `chive relay` at once with a message naming the problem.
#[test]
fn bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_chive"))
            .args(["relay", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.toml");
    assert!(run(&missing).contains("cannot read"));
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "or_address = \"127.0.0.1:9001\"\ndata_dir = \"d\"\nshard = 2\n",
    )
    .unwrap();
    let err = run(&typo);
    assert!(err.contains("unknown field `shard`"), "{err}");
}

/// ntor v3 to a C tor hop. The client message is an extension list, so "no extensions" is the
/// single byte 0: C tor 0.4.9 destroys the circuit (PROTOCOL) when the message is empty.
#[test]
fn ntor_v3_to_c_tor() {
    let allow = ["--ExtendAllowPrivateAddresses", "1"];
    let t = CTorRelay::start("ctorV3", &allow);
    let x = relay_info(&t.data_dir(), t.or_addr());
    let mut chan = Chan::open(&x);
    let circ = chan.build(1, &[&x], &[HandshakeKind::NtorV3]);
    assert_eq!(circ.hops(), 1);
}

/// Threads named in `log` that accepted a connection.
fn accepting_shards(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("accepted"))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("chive-shard-"))
                .map(str::to_string)
        })
        .collect()
}

/// Per shard thread named in `log`, the accepted connections not logged as closed.
fn open_accepted_per_shard(log: &str) -> std::collections::BTreeMap<String, usize> {
    let peer = |l: &str| {
        let p = l.split("peer=").nth(1)?.split_whitespace().next()?;
        Some(
            p.trim_start_matches("Some(")
                .trim_end_matches(')')
                .to_string(),
        )
    };
    let closed: std::collections::BTreeSet<String> = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .filter_map(peer)
        .collect();
    let mut open = std::collections::BTreeMap::new();
    for l in log.lines().filter(|l| l.contains("accepted")) {
        let (Some(p), Some(t)) = (
            peer(l),
            l.split_whitespace().find(|w| w.starts_with("chive-shard-")),
        ) else {
            continue;
        };
        if !closed.contains(&p) {
            *open.entry(t.to_string()).or_insert(0) += 1;
        }
    }
    open
}

fn run_three_chive_relays(backend: &str) {
    let relays: Vec<Chive> = std::thread::scope(|s| {
        let hs: Vec<_> = ["chiveA", "chiveB", "chiveC"]
            .into_iter()
            .map(|n| s.spawn(move || Chive::start(n, backend)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let infos: Vec<&RelayInfo> = relays.iter().map(|r| &r.info).collect();
    use HandshakeKind::*;
    let plans = [
        [CreateFast, Ntor, NtorV3],
        [Ntor, NtorV3, Ntor],
        [NtorV3, Ntor, NtorV3],
    ];
    // 24 connections, 8 with each relay as first hop: with SO_REUSEPORT hashing, both shards
    // of every relay accept some.
    for c in 0..24usize {
        let path: Vec<&RelayInfo> = (0..3).map(|h| infos[(c + h) % 3]).collect();
        let mut chan = Chan::open(path[0]);
        for k in 0..2u32 {
            let kinds = &plans[(c + k as usize) % 3];
            let mut circ = chan.build(k + 1, &path, kinds);
            chan.echo(&mut circ, 2, 64);
            chan.echo(&mut circ, 1, 8);
            assert_eq!(chan.begin_refused(&mut circ), EndReason::EXITPOLICY);
            assert_eq!(chan.truncate(&mut circ, 1), DestroyReason::REQUESTED);
        }
    }
    for r in &relays {
        let want = if backend == "poll" { "Poll" } else { "IoUring" };
        assert!(r.log().contains(&format!("backend={want}")), "{}", r.log());
        // The kernel spreads connections over the shards' SO_REUSEPORT listeners by a hash
        // of the 4-tuple, so a run may (rarely) give one relay's connections all to one
        // shard. Open more bare channels until both have accepted, within a bound.
        let mut extra = 0;
        while accepting_shards(&r.log()).len() < 2 && extra < 32 {
            drop(Chan::open(&r.info));
            extra += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let shards = accepting_shards(&r.log());
        assert_eq!(
            shards.len(),
            2,
            "both shards of {} accept: {shards:?}",
            r.info.addrs[0]
        );
    }
    for r in relays {
        assert!(r.terminate().success());
    }
}

#[test]
fn three_chive_relays() {
    run_three_chive_relays("poll");
}

/// The same scenario on the io_uring backend (skipped, loudly, where the kernel refuses
/// io_uring: the daemon's "auto" then runs on poll, which the test above covers).
#[test]
fn three_chive_relays_io_uring() {
    if let Err(e) = relay::reactor::uring_probe() {
        eprintln!("SKIPPED: io_uring unavailable here: {e}");
        return;
    }
    run_three_chive_relays("io_uring");
}

/// Circuits forced to cross shards: relay M (2 shards) gets client channels on both of its
/// shards, and every circuit extends from M to relay E. M keeps ONE channel to E for the whole
/// relay, so the circuits entering on the other shard relay their cells through the shard that
/// owns it. Checked: E accepted a single connection; DROP echoes byte for byte from E and M;
/// DESTROY from M towards E (TRUNCATE) and from E towards M (E destroys its half on a malformed
/// EXTEND2); then E goes away and every circuit hears of the closed channel.
fn run_cross_shard(backend: &str) {
    use HandshakeKind::*;
    let (m, e) = std::thread::scope(|s| {
        let stats = "[control]\nstats_interval_secs = 1\n";
        let m = s.spawn(|| Chive::start_with("chiveM", backend, stats));
        let e = s.spawn(|| Chive::start("chiveE", backend));
        (m.join().unwrap(), e.join().unwrap())
    });
    let path = [&m.info, &e.info];
    let mut chans = Vec::new();
    // Channels until each shard holds two open accepted connections: the start-up probe (a
    // bare TCP connect, closed at once) cannot account for that.
    let enough = |m: &Chive| {
        let open = open_accepted_per_shard(&m.log());
        open.len() == 2 && open.values().all(|&n| n >= 2)
    };
    for _ in 0..40u32 {
        let mut chan = Chan::open(&m.info);
        let circ = chan.build(1, &path, &[Ntor, NtorV3]);
        chans.push((chan, circ));
        std::thread::sleep(Duration::from_millis(10));
        if enough(&m) {
            break;
        }
    }
    assert!(enough(&m), "{}", m.log());
    for (chan, circ) in &mut chans {
        chan.echo(circ, 1, 48);
        chan.echo(circ, 0, 4);
    }
    // Connections E holds open (the start-up probe came and went).
    let open = |r: &Chive| {
        let log = r.log();
        let n = |w: &str| log.lines().filter(|l| l.contains(w)).count();
        n("accepted") - n("connection closed")
    };
    assert_eq!(open(&e), 1, "one channel from M to E: {}", e.log());
    // DESTROY M → E, then the circuit grows again over the same channel.
    for (chan, circ) in &mut chans {
        assert_eq!(chan.truncate(circ, 0), DestroyReason::REQUESTED);
        let cell = circ.extend(&mut rand::rngs::OsRng, Ntor, &e.info).unwrap();
        assert_eq!(chan.exchange(circ, cell), ClientEvent::HopAdded { hops: 2 });
        chan.echo(circ, 1, 16);
    }
    // DESTROY E → M.
    for (chan, circ) in &mut chans {
        let cell = circ
            .send_raw(
                &mut rand::rngs::OsRng,
                1,
                RelayCmd::EXTEND2,
                None,
                &[0xff; 3],
            )
            .unwrap();
        let ev = chan.exchange(circ, cell);
        assert!(
            matches!(
                ev,
                ClientEvent::Truncated { hop: 0, .. } | ClientEvent::Destroyed { .. }
            ),
            "{ev:?}"
        );
        if circ.is_closed() {
            // M answered with DESTROY: a new circuit on the same channel.
            *circ = chan.build(2, &path, &[CreateFast, NtorV3]);
        } else {
            let cell = circ
                .extend(&mut rand::rngs::OsRng, NtorV3, &e.info)
                .unwrap();
            assert_eq!(chan.exchange(circ, cell), ClientEvent::HopAdded { hops: 2 });
        }
        chan.echo(circ, 1, 8);
    }
    assert_eq!(open(&e), 1, "still one channel: {}", e.log());
    // The control shard's statistics show circuits of one shard on the other's channel.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m
        .log()
        .lines()
        .any(|l| l.contains("shard stats") && !l.contains("cross_circuits=0"))
    {
        assert!(
            Instant::now() < deadline,
            "no cross-shard stats: {}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The channel closes: every circuit, on either shard of M, is told.
    assert!(e.terminate().success());
    for (chan, circ) in &mut chans {
        let reply = chan.recv(circ.circ_id());
        let ev = circ.handle_cell(&reply).unwrap();
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
    assert!(m.terminate().success());
}

#[test]
fn circuits_cross_shards() {
    run_cross_shard("poll");
}

#[test]
fn circuits_cross_shards_io_uring() {
    if let Err(e) = relay::reactor::uring_probe() {
        eprintln!("SKIPPED: io_uring unavailable here: {e}");
        return;
    }
    run_cross_shard("io_uring");
}

#[test]
fn mixed_with_c_tor() {
    let (chives, ctors): (Vec<Chive>, Vec<CTorRelay>) = std::thread::scope(|s| {
        let c1 = s.spawn(|| Chive::start("chiveM1", "poll"));
        let c2 = s.spawn(|| Chive::start("chiveM2", "poll"));
        let allow = ["--ExtendAllowPrivateAddresses", "1"];
        let t1 = s.spawn(move || CTorRelay::start("ctorM1", &allow));
        let t2 = s.spawn(move || CTorRelay::start("ctorM2", &allow));
        (
            vec![c1.join().unwrap(), c2.join().unwrap()],
            vec![t1.join().unwrap(), t2.join().unwrap()],
        )
    });
    let ctor_infos: Vec<RelayInfo> = ctors
        .iter()
        .map(|t| relay_info(&t.data_dir(), t.or_addr()))
        .collect();
    let (a, b) = (&chives[0].info, &chives[1].info);
    let (x, y) = (&ctor_infos[0], &ctor_infos[1]);
    use HandshakeKind::*;

    // chive → C tor → chive: chive initiates to C tor, C tor initiates to chive.
    let mut chan = Chan::open(a);
    for (n, kinds) in [[CreateFast, NtorV3, NtorV3], [NtorV3, Ntor, Ntor]]
        .iter()
        .enumerate()
    {
        let mut circ = chan.build(n as u32 + 1, &[a, x, b], kinds);
        // Through C tor's relay crypto both ways, echoed by chive.
        chan.echo(&mut circ, 2, 48);
        assert_eq!(chan.begin_refused(&mut circ), EndReason::EXITPOLICY);
        // chive truncates towards C tor: DESTROY forward, TRUNCATED back.
        assert_eq!(chan.truncate(&mut circ, 0), DestroyReason::REQUESTED);
    }
    // C tor 0.4.9 as the middle hop answers TRUNCATE by tearing the whole circuit down
    // (tor-spec §5.4 recommends DESTROY towards the client); chive passes its DESTROY back.
    let mut circ = chan.build(3, &[a, x, b], &[Ntor, Ntor, Ntor]);
    let cell = circ
        .send_raw(&mut rand::rngs::OsRng, 1, RelayCmd::TRUNCATE, None, &[])
        .unwrap();
    match chan.exchange(&mut circ, cell) {
        ClientEvent::Truncated { hop: 1, .. } | ClientEvent::Destroyed { .. } => {}
        other => panic!("expected TRUNCATED or DESTROY, got {other:?}"),
    }

    // C tor → chive → C tor.
    let mut chan = Chan::open(x);
    for (n, kinds) in [[CreateFast, NtorV3, Ntor], [Ntor, Ntor, Ntor]]
        .iter()
        .enumerate()
    {
        let mut circ = chan.build(n as u32 + 1, &[x, a, y], kinds);
        chan.echo(&mut circ, 1, 48);
        // C tor as a non-exit refuses streams with END too (its reason is its own).
        let reason = chan.begin_refused(&mut circ);
        eprintln!("C tor last hop refused BEGIN with {reason:?}");
        assert_eq!(chan.truncate(&mut circ, 1), DestroyReason::REQUESTED);
    }
    // C tor warns ("expecting an rsa key") about a non-RSA link certificate; chive's is RSA.
    for t in &ctors {
        assert!(!t.log().contains("expecting an rsa key"), "{}", t.log());
    }
    drop(ctors);
    for c in chives {
        assert!(c.terminate().success());
    }
}
