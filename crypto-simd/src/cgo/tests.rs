//! Role-level tests: Arti's relay / relay-originate / client-originate vectors, round trips
//! through three hops over many cells, and tampering.

use super::testvec::{records, unhex_n};
use super::*;

const ARTI_RELAY: &str = include_str!("testdata/arti_relay.txt");
const ARTI_RELAY_ORIG: &str = include_str!("testdata/arti_relay_originate.txt");
const ARTI_CLIENT_ORIG: &str = include_str!("testdata/arti_client_originate.txt");

/// Every engine this CPU supports (one per CGO kernel and more).
pub(crate) fn engines() -> Vec<crate::Engine> {
    crate::Backend::supported()
        .filter_map(|b| crate::Engine::new(b).ok())
        .collect()
}

/// A direction from `K | N` hex and a `T'` hex.
fn dir(k: &str, n: &str, tprime: &str, client: bool) -> Dir {
    let kn: [u8; DIR_KDF_LEN] = unhex_n(&format!("{k}{n}"));
    let mut d = Dir::new(&kn, client);
    *d.tprime = unhex_n(tprime);
    d
}

fn assert_dir(d: &Dir, k: &str, n: &str, tprime: &str, what: &str) {
    assert_eq!(&d.keys.raw[..], &unhex_n::<64>(k)[..], "{what}: keys");
    assert_eq!(&d.nonce[..], &unhex_n::<16>(n)[..], "{what}: nonce");
    assert_eq!(&d.tprime[..], &unhex_n::<16>(tprime)[..], "{what}: T'");
}

#[test]
fn relay_vectors() {
    for e in engines() {
        relay_vectors_on(e);
    }
}

fn relay_vectors_on(e: crate::Engine) {
    let mut n = 0;
    for r in records(ARTI_RELAY, 12) {
        let mut d = dir(r[1], r[2], r[3], false);
        let cmd = unhex_n::<1>(r[4])[0];
        let mut cell: CellBody = unhex_n(&format!("{}{}", r[5], r[6]));
        let op = if r[0] == "1" {
            CgoOp::RelayBackward
        } else {
            CgoOp::RelayForward
        };
        run_dir(e, &mut d, op, cmd, &mut cell);
        assert_eq!(
            cell,
            unhex_n::<509>(&format!("{}{}", r[10], r[11])),
            "cell {n}"
        );
        assert_dir(&d, r[7], r[8], r[9], &format!("relay vector {n}"));
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn relay_originate_vectors() {
    for e in engines() {
        relay_originate_vectors_on(e);
    }
}

fn relay_originate_vectors_on(e: crate::Engine) {
    let mut n = 0;
    for r in records(ARTI_RELAY_ORIG, 10) {
        let mut d = dir(r[0], r[1], r[2], false);
        let cmd = unhex_n::<1>(r[3])[0];
        let mut cell = [0u8; 509];
        cell[16..].copy_from_slice(&unhex_n::<493>(r[4]));
        let tag = run_dir(e, &mut d, CgoOp::RelayOriginate, cmd, &mut cell).unwrap();
        assert_eq!(
            cell,
            unhex_n::<509>(&format!("{}{}", r[8], r[9])),
            "cell {n}"
        );
        assert_eq!(tag.0, unhex_n::<16>(r[8]), "tag {n}");
        assert_dir(&d, r[5], r[6], r[7], &format!("originate vector {n}"));
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn client_originate_vectors() {
    for e in engines() {
        client_originate_vectors_on(e);
    }
}

fn client_originate_vectors_on(e: crate::Engine) {
    let mut n = 0;
    for r in records(ARTI_CLIENT_ORIG, 23) {
        let mut hops: Vec<ClientHopState> = (0..3)
            .map(|i| {
                let f = dir(r[3 * i], r[3 * i + 1], r[3 * i + 2], true);
                // The backward direction plays no part in these vectors.
                ClientHopState {
                    bwd: f.clone(),
                    fwd: f,
                }
            })
            .collect();
        let hop: usize = r[9].parse().unwrap();
        assert!((1..=3).contains(&hop), "vectors count hops from 1");
        let cmd = unhex_n::<1>(r[10])[0];
        let mut cell = [0u8; 509];
        cell[16..].copy_from_slice(&unhex_n::<493>(r[11]));
        // Keep the public helper's order: the target hop, then the hops before it.
        run_dir(
            e,
            &mut hops[hop - 1].fwd,
            CgoOp::ClientOriginate,
            cmd,
            &mut cell,
        )
        .unwrap();
        for h in hops[..hop - 1].iter_mut().rev() {
            run_dir(e, &mut h.fwd, CgoOp::ClientEncryptForward, cmd, &mut cell);
        }
        assert_eq!(
            cell,
            unhex_n::<509>(&format!("{}{}", r[21], r[22])),
            "cell {n}"
        );
        for (i, h) in hops.iter().enumerate() {
            let (k, nn, tp) = (r[12 + 3 * i], r[13 + 3 * i], r[14 + 3 * i]);
            assert_dir(&h.fwd, k, nn, tp, &format!("client vector {n} hop {i}"));
        }
        n += 1;
    }
    assert!(n >= 4);
}

/// Deterministic test randomness (xorshift), so failures reproduce.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Three hops: the client's states and the relays' states from the same key material.
pub(crate) fn circuit(rng: &mut Rng, n: usize) -> (Vec<ClientHopState>, Vec<RelayState>) {
    let mut c = Vec::new();
    let mut r = Vec::new();
    for _ in 0..n {
        let mut k = [0u8; KDF_LEN];
        rng.fill(&mut k);
        c.push(ClientHopState::from_kdf(&k).unwrap());
        r.push(RelayState::from_kdf(&k).unwrap());
    }
    (c, r)
}

/// Client to hop `target` through relays 0..=target; returns what each relay saw.
fn send_forward(
    client: &mut [ClientHopState],
    relays: &mut [RelayState],
    target: usize,
    cmd: u8,
    cell: &mut CellBody,
) -> (SendmeTag, Option<(usize, SendmeTag)>) {
    let tag = client_originate(client, target, cmd, cell).unwrap();
    for (i, r) in relays.iter_mut().enumerate() {
        if let Forward::ForUs(t) = r.forward(cmd, cell) {
            return (tag, Some((i, t)));
        }
    }
    (tag, None)
}

/// Hop `origin` to the client through relays origin-1..=0.
fn send_backward(
    client: &mut [ClientHopState],
    relays: &mut [RelayState],
    origin: usize,
    cmd: u8,
    cell: &mut CellBody,
) -> (SendmeTag, Option<(usize, SendmeTag)>) {
    let tag = relays[origin].originate(cmd, cell);
    for r in relays[..origin].iter_mut().rev() {
        r.backward(cmd, cell);
    }
    (tag, client_receive(client, cmd, cell))
}

#[test]
fn round_trip_many_cells_both_ways() {
    let mut rng = Rng::new(7);
    let (mut client, mut relays) = circuit(&mut rng, 3);
    for i in 0..300 {
        let cmd = if rng.below(4) == 0 {
            CMD_RELAY_EARLY
        } else {
            CMD_RELAY
        };
        let hop = rng.below(3);
        let mut msg = [0u8; PAYLOAD_LEN];
        rng.fill(&mut msg);
        let mut cell = [0u8; 509];
        cell[16..].copy_from_slice(&msg);
        let (tag, seen) = if i % 2 == 0 {
            send_forward(&mut client, &mut relays, hop, cmd, &mut cell)
        } else {
            send_backward(&mut client, &mut relays, hop, cmd, &mut cell)
        };
        let (at, seen_tag) = seen.expect("recognized");
        assert_eq!(at, hop, "cell {i}");
        assert_eq!(seen_tag, tag, "cell {i}: both ends agree on the SENDME tag");
        assert_eq!(&cell[16..], &msg[..], "cell {i}: message intact");
    }
}

#[test]
fn ciphertext_and_tags_change_every_cell() {
    // The same message twice gives different cells (the nonce and keys move on).
    let mut rng = Rng::new(9);
    let (mut client, _) = circuit(&mut rng, 1);
    let mut a = [0u8; 509];
    let mut b = [0u8; 509];
    let ta = client_originate(&mut client, 0, CMD_RELAY, &mut a).unwrap();
    let tb = client_originate(&mut client, 0, CMD_RELAY, &mut b).unwrap();
    assert_ne!(a, b);
    assert_ne!(ta, tb);
}

#[test]
fn wrong_key_length_is_an_error() {
    assert_eq!(
        RelayState::from_kdf(&[0u8; 180]).err(),
        Some(KeyLengthError { got: 180 })
    );
    assert!(ClientHopState::from_kdf(&[0u8; 159]).is_err());
    assert!(client_originate(&mut [], 0, CMD_RELAY, &mut [0u8; 509]).is_none());
}

/// Flips one bit of the cell in transit (after hop `at` processed it) and checks detection.
fn tamper_forward(bit: usize, at: usize, target: usize) {
    let mut rng = Rng::new(1000 + bit as u64);
    let (mut client, mut relays) = circuit(&mut rng, 3);
    let mut cell = [0u8; 509];
    rng.fill(&mut cell[16..]);
    client_originate(&mut client, target, CMD_RELAY, &mut cell).unwrap();
    let mut seen = None;
    for (i, r) in relays.iter_mut().enumerate() {
        if i == at {
            cell[bit / 8] ^= 1 << (bit % 8);
        }
        if let Forward::ForUs(_) = r.forward(CMD_RELAY, &mut cell) {
            seen = Some(i);
            break;
        }
    }
    assert_eq!(
        seen, None,
        "bit {bit} flipped before hop {at} went unnoticed"
    );
    // The circuit stays broken: an honest next cell is not recognized either.
    let mut next = [0u8; 509];
    let r = send_forward(&mut client, &mut relays, 2, CMD_RELAY, &mut next).1;
    assert_eq!(r, None, "state still usable after tampering (bit {bit})");
}

#[test]
fn tampered_forward_cells_are_never_recognized() {
    // Every byte position, a few bit positions each, flipped before each hop.
    for byte in 0..509 {
        for at in 0..3 {
            tamper_forward(byte * 8 + (byte + at) % 8, at, 2);
        }
    }
}

#[test]
fn tampered_backward_cells_fail_at_the_client() {
    for byte in (0..509).step_by(3) {
        for at in 0..3usize {
            let mut rng = Rng::new(5000 + byte as u64);
            let (mut client, mut relays) = circuit(&mut rng, 3);
            let mut cell = [0u8; 509];
            rng.fill(&mut cell[16..]);
            let origin = 2;
            relays[origin].originate(CMD_RELAY, &mut cell);
            for i in (0..origin).rev() {
                if i + 1 == at {
                    cell[byte] ^= 0x80 >> (byte % 8);
                }
                relays[i].backward(CMD_RELAY, &mut cell);
            }
            if at == 0 {
                cell[byte] ^= 0x80 >> (byte % 8);
            }
            assert_eq!(client_receive(&mut client, CMD_RELAY, &mut cell), None);
            let mut next = [0u8; 509];
            let r = send_backward(&mut client, &mut relays, 2, CMD_RELAY, &mut next).1;
            assert_eq!(r, None, "state still usable after tampering");
        }
    }
}

#[test]
fn changed_command_is_detected() {
    let mut rng = Rng::new(77);
    let (mut client, mut relays) = circuit(&mut rng, 2);
    let mut cell = [0u8; 509];
    client_originate(&mut client, 1, CMD_RELAY_EARLY, &mut cell).unwrap();
    relays[0].forward(CMD_RELAY_EARLY, &mut cell);
    // The first hop forwards it as RELAY instead of RELAY_EARLY.
    assert_eq!(relays[1].forward(CMD_RELAY, &mut cell), Forward::Pass);
}

/// Builds a batch of jobs that each carry one cell through a whole path, so recognition and
/// key updates happen often: a client cell to a random hop through the relays before it, or
/// a relay cell from a random hop back to the client. Hops are laid out per circuit as
/// `[client 0..3, relay 0..3]`. Some cells get a bit flipped on the way.
fn random_batch(
    rng: &mut Rng,
    circuits: usize,
    cells: &mut Vec<CellBody>,
    jobs: &mut Vec<CgoJob>,
    max_jobs: usize,
) {
    cells.clear();
    jobs.clear();
    while jobs.len() < max_jobs {
        let c = rng.below(circuits) as u32;
        let hop = rng.below(3) as u32;
        let cmd = if rng.below(3) == 0 {
            CMD_RELAY_EARLY
        } else {
            CMD_RELAY
        };
        let mut cell = [0u8; 509];
        rng.fill(&mut cell);
        let ci = cells.len() as u32;
        cells.push(cell);
        let client = |i: u32| c * 6 + i;
        let relay = |i: u32| c * 6 + 3 + i;
        let mut path = Vec::new();
        let mode = rng.below(4);
        if mode == 3 {
            // Pass-through traffic: consecutive relay steps on other cells (the batch loop
            // pairs independent ones), and a second circuit's cell recognized beside this one.
            let c2 = rng.below(circuits) as u32;
            let mut cell2 = [0u8; 509];
            rng.fill(&mut cell2);
            cells.push(cell2);
            let (a, b) = (ci, ci + 1);
            for (cell, cc) in [(a, c), (b, c2)] {
                jobs.push(CgoJob {
                    hop: cc * 6,
                    cell,
                    cmd,
                    op: CgoOp::ClientOriginate,
                });
            }
            for (cell, cc) in [(a, c), (b, c2)] {
                jobs.push(CgoJob {
                    hop: cc * 6 + 3,
                    cell,
                    cmd,
                    op: CgoOp::RelayForward,
                });
            }
            for _ in 0..rng.below(6) {
                let mut g = [0u8; 509];
                rng.fill(&mut g);
                let gi = cells.len() as u32;
                cells.push(g);
                let op = if rng.below(2) == 0 {
                    CgoOp::RelayForward
                } else {
                    CgoOp::RelayBackward
                };
                let h = rng.below(circuits) as u32 * 6 + 3 + rng.below(3) as u32;
                jobs.push(CgoJob {
                    hop: h,
                    cell: gi,
                    cmd,
                    op,
                });
            }
        } else if mode < 2 {
            path.push((client(hop), CgoOp::ClientOriginate));
            for i in (0..hop).rev() {
                path.push((client(i), CgoOp::ClientEncryptForward));
            }
            for i in 0..=hop {
                path.push((relay(i), CgoOp::RelayForward));
            }
        } else {
            path.push((relay(hop), CgoOp::RelayOriginate));
            for i in (0..hop).rev() {
                path.push((relay(i), CgoOp::RelayBackward));
            }
            for i in 0..=hop {
                path.push((client(i), CgoOp::ClientDecryptBackward));
            }
        }
        // Occasionally a wrong-role job, which must do nothing.
        if rng.below(50) == 0 {
            path.push((client(0), CgoOp::RelayForward));
        }
        for (h, op) in path {
            jobs.push(CgoJob {
                hop: h,
                cell: ci,
                cmd,
                op,
            });
        }
        // Occasionally flip a bit mid-path (a separate garbage job on a copy would not chain).
        if rng.below(20) == 0 {
            let b = rng.below(509 * 8);
            if let Some(cell) = cells.last_mut() {
                cell[b / 8] ^= 1 << (b % 8);
            }
        }
    }
    jobs.truncate(max_jobs);
}

fn dir_state(d: &Dir) -> Vec<u8> {
    [&d.keys.raw[..], &d.nonce[..], &d.tprime[..]].concat()
}

fn hop_state(h: &CgoHop) -> Vec<u8> {
    match h {
        CgoHop::Relay(r) => [dir_state(&r.fwd), dir_state(&r.bwd)].concat(),
        CgoHop::Client(c) => [dir_state(&c.fwd), dir_state(&c.bwd)].concat(),
    }
}

#[test]
fn every_backend_matches_the_reference_on_random_batches() {
    let reference = crate::Engine::new(crate::Backend::Portable).unwrap();
    assert!(matches!(kernel(crate::Backend::Portable), Kern::Ref));
    let mut rng = Rng::new(0x5eed);
    for e in engines() {
        if e.backend() == crate::Backend::Portable {
            continue;
        }
        for round in 0..24 {
            let circuits = 1 + rng.below(6);
            let mut hops = Vec::new();
            for _ in 0..circuits {
                let (c, r) = circuit(&mut rng, 3);
                hops.extend(c.into_iter().map(CgoHop::Client));
                hops.extend(r.into_iter().map(CgoHop::Relay));
            }
            let mut hops_ref = hops.clone();
            let mut hops_one = hops.clone();
            let (mut cells, mut jobs) = (Vec::new(), Vec::new());
            // Many consecutive batches on the same hops, so keys and nonces chain.
            for _ in 0..8 {
                let n = match round % 3 {
                    0 => 1 + rng.below(8),
                    1 => 1 + rng.below(256),
                    _ => 256,
                };
                random_batch(&mut rng, circuits, &mut cells, &mut jobs, n);
                let mut cells_ref = cells.clone();
                let cells_before = cells.clone();
                let mut out = vec![CgoOutcome::Done; jobs.len()];
                let mut out_ref = out.clone();
                e.process_batch_cgo(&mut hops, &mut cells, &jobs, &mut out)
                    .unwrap();
                reference
                    .process_batch_cgo(&mut hops_ref, &mut cells_ref, &jobs, &mut out_ref)
                    .unwrap();
                // And the reference batch equals the jobs run one at a time (no pairing).
                let mut cells_one = cells_before.clone();
                for (j, o) in jobs.iter().zip(&out_ref) {
                    let r = reference.process_one_cgo(
                        &mut hops_one[j.hop as usize],
                        j.cmd,
                        j.op,
                        &mut cells_one[j.cell as usize],
                    );
                    assert_eq!(r, *o, "round {round}: one-at-a-time outcome");
                }
                assert!(cells_one == cells_ref, "round {round}: one-at-a-time cells");
                assert_eq!(out, out_ref, "{} round {round}: outcomes", e.backend());
                assert!(cells == cells_ref, "{} round {round}: cells", e.backend());
                for (a, b) in hops.iter().zip(&hops_ref) {
                    assert_eq!(hop_state(a), hop_state(b), "{} round {round}", e.backend());
                }
            }
        }
    }
}

#[test]
fn batches_recognize_and_seal_as_the_roles_do() {
    // In a batch built from whole paths, every untampered cell is recognized at its target.
    let mut rng = Rng::new(31);
    for e in engines() {
        let mut hops = Vec::new();
        let (c, r) = circuit(&mut rng, 3);
        hops.extend(c.into_iter().map(CgoHop::Client));
        hops.extend(r.into_iter().map(CgoHop::Relay));
        let mut cells = Vec::new();
        let mut jobs = Vec::new();
        let mut sealed = Vec::new();
        for i in 0..64u32 {
            let mut cell = [0u8; 509];
            rng.fill(&mut cell[16..]);
            cells.push(cell);
            let target = i % 3;
            let (origin, first, pass, last) = if i % 2 == 0 {
                (
                    target,
                    CgoOp::ClientOriginate,
                    CgoOp::ClientEncryptForward,
                    CgoOp::RelayForward,
                )
            } else {
                (
                    3 + target,
                    CgoOp::RelayOriginate,
                    CgoOp::RelayBackward,
                    CgoOp::ClientDecryptBackward,
                )
            };
            sealed.push(jobs.len());
            jobs.push(CgoJob {
                hop: origin,
                cell: i,
                cmd: CMD_RELAY,
                op: first,
            });
            let base = origin - target;
            for h in (0..target).rev() {
                jobs.push(CgoJob {
                    hop: base + h,
                    cell: i,
                    cmd: CMD_RELAY,
                    op: pass,
                });
            }
            let other = if base == 0 { 3 } else { 0 };
            for h in 0..=target {
                jobs.push(CgoJob {
                    hop: other + h,
                    cell: i,
                    cmd: CMD_RELAY,
                    op: last,
                });
            }
        }
        let mut out = vec![CgoOutcome::Done; jobs.len()];
        e.process_batch_cgo(&mut hops, &mut cells, &jobs, &mut out)
            .unwrap();
        let mut next = sealed.iter().skip(1).copied().chain([jobs.len()]);
        for &s in &sealed {
            let end = next.next().unwrap();
            let CgoOutcome::Sealed(tag) = out[s] else {
                panic!("{}: job {s} not sealed: {:?}", e.backend(), out[s]);
            };
            // All but the last receiving job see NotRecognized; the last recognizes it.
            assert_eq!(out[end - 1], CgoOutcome::Recognized(tag), "{}", e.backend());
            for o in &out[s + 1..end - 1] {
                assert!(matches!(o, CgoOutcome::Done | CgoOutcome::NotRecognized));
            }
        }
    }
}

#[test]
fn batch_index_errors_touch_nothing() {
    let e = crate::Engine::best();
    let mut rng = Rng::new(3);
    let (_, r) = circuit(&mut rng, 1);
    let mut hops: Vec<CgoHop> = r.into_iter().map(CgoHop::Relay).collect();
    let before = hop_state(&hops[0]);
    let mut cells = vec![[7u8; 509]];
    let job = |hop, cell| CgoJob {
        hop,
        cell,
        cmd: CMD_RELAY,
        op: CgoOp::RelayForward,
    };
    let mut out = [CgoOutcome::Done; 2];
    assert_eq!(
        e.process_batch_cgo(&mut hops, &mut cells, &[job(0, 0), job(1, 0)], &mut out),
        Err(crate::BatchError::HopOutOfRange { job: 1 })
    );
    assert_eq!(
        e.process_batch_cgo(&mut hops, &mut cells, &[job(0, 0), job(0, 1)], &mut out),
        Err(crate::BatchError::CellOutOfRange { job: 1 })
    );
    assert_eq!(
        e.process_batch_cgo(&mut hops, &mut cells, &[job(0, 0)], &mut []),
        Err(crate::BatchError::OutTooShort)
    );
    assert_eq!(hop_state(&hops[0]), before);
    assert_eq!(cells[0], [7u8; 509]);
}

#[test]
fn wrong_role_jobs_do_nothing() {
    let mut rng = Rng::new(4);
    let (c, _) = circuit(&mut rng, 1);
    let mut hop = CgoHop::Client(c.into_iter().next().unwrap());
    let before = hop_state(&hop);
    let mut cell = [1u8; 509];
    for e in engines() {
        for op in [
            CgoOp::RelayForward,
            CgoOp::RelayBackward,
            CgoOp::RelayOriginate,
        ] {
            assert_eq!(
                e.process_one_cgo(&mut hop, CMD_RELAY, op, &mut cell),
                CgoOutcome::WrongRole
            );
        }
    }
    assert_eq!(hop_state(&hop), before);
    assert_eq!(cell, [1u8; 509]);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn vaes_backends_get_the_wide_kernel_when_the_cpu_has_it() {
    if crate::Backend::Vaes256.is_supported() && std::arch::is_x86_feature_detected!("vpclmulqdq") {
        assert!(
            matches!(kernel(crate::Backend::Vaes256), Kern::X86(t) if format!("{t:?}").contains("true"))
        );
    }
}

/// Neighbouring relay jobs on distinct hops and cells are encrypted (and their key updates
/// made) side by side. Batches of every size from 1 to 19 and 64 (odd sizes leave one job
/// unpaired), mixing: cells recognized at the relay (made by the client, so keys update inside
/// a pair), pass-through cells, originated cells, and the same hop twice in a row (consecutive
/// cells of one circuit, which must not be paired). Every backend equals the reference.
#[test]
fn relay_pairs_match_the_reference_for_odd_sizes_and_repeated_hops() {
    let reference = crate::Engine::new(crate::Backend::Portable).unwrap();
    let mut rng = Rng::new(0x9e0);
    for e in engines() {
        const CLEAN: usize = 12;
        const ALL: usize = 24;
        let (mut clients, mut relays) = (Vec::new(), Vec::new());
        for _ in 0..ALL {
            let (c, r) = circuit(&mut rng, 1);
            clients.extend(c);
            relays.extend(r.into_iter().map(CgoHop::Relay));
        }
        let mut relays_ref = relays.clone();
        let mut recognized = 0;
        for n in (1..=19).chain([64, 64, 7]) {
            let (mut cells, mut jobs) = (Vec::new(), Vec::new());
            let mut last = u32::MAX;
            for k in 0..n {
                // Mostly distinct hops; sometimes the previous job's hop again.
                let c = if k > 0 && rng.below(5) == 0 {
                    last as usize
                } else {
                    rng.below(ALL)
                };
                last = c as u32;
                let cmd = if rng.below(4) == 0 {
                    CMD_RELAY_EARLY
                } else {
                    CMD_RELAY
                };
                let mut cell = [0u8; 509];
                rng.fill(&mut cell);
                let op = match rng.below(3) {
                    0 => CgoOp::RelayOriginate,
                    1 if c >= CLEAN => CgoOp::RelayBackward,
                    _ => CgoOp::RelayForward,
                };
                if op == CgoOp::RelayForward && c < CLEAN {
                    // A cell for this relay, sealed by its client in job order.
                    clients[c].originate(cmd, &mut cell);
                }
                jobs.push(CgoJob {
                    hop: c as u32,
                    cell: cells.len() as u32,
                    cmd,
                    op,
                });
                cells.push(cell);
            }
            let mut cells_ref = cells.clone();
            let mut out = vec![CgoOutcome::Done; n];
            let mut out_ref = out.clone();
            e.process_batch_cgo(&mut relays, &mut cells, &jobs, &mut out)
                .unwrap();
            reference
                .process_batch_cgo(&mut relays_ref, &mut cells_ref, &jobs, &mut out_ref)
                .unwrap();
            assert_eq!(out, out_ref, "{} batch of {n}: outcomes", e.backend());
            assert!(cells == cells_ref, "{} batch of {n}: cells", e.backend());
            for (a, b) in relays.iter().zip(&relays_ref) {
                assert_eq!(hop_state(a), hop_state(b), "{} batch of {n}", e.backend());
            }
            for (j, o) in jobs.iter().zip(&out) {
                if j.op == CgoOp::RelayForward && (j.hop as usize) < CLEAN {
                    assert!(
                        matches!(o, CgoOutcome::Recognized(_)),
                        "batch of {n}: {o:?}"
                    );
                    recognized += 1;
                }
            }
        }
        assert!(
            recognized > 20,
            "{}: only {recognized} recognized",
            e.backend()
        );
    }
}
