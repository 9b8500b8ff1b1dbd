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
//! The relays run as the test binary's sibling `chive` (`CARGO_BIN_EXE_chive`) in temporary
//! data directories; each test finishes in seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/chive.rs"]
mod chive;
#[path = "common/ctor.rs"]
mod ctor;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
