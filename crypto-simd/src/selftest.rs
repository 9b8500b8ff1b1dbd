//! Power-on self-test (a known-answer test) of every implementation the batch path may choose
//! at run time: each keystream backend ([`crate::Backend`]) and each multi-lane SHA-1
//! (eight-lane SHA-NI / AVX2, sixteen-lane AVX-512), against [`crate::reference`] (the `aes`,
//! `ctr` and `sha1` crates). Covers tor-spec §5.2.1, §5.5 and §6.1 as the batch path does.
//!
//! Why: some kernels are compiled but cannot be run on the development machine (`vaes512`, the
//! sixteen-lane AVX-512 SHA-1), and a CPU or hypervisor may report features it does not
//! implement correctly. A relay that silently computed different keystream or digests would
//! break every circuit through it; one that notices falls back to the next implementation.
//!
//! Each test runs once per process, the first time its implementation is asked for, and its
//! result is cached (`OnceLock`). Inputs are fixed constants (nothing secret is involved or
//! logged). The backend test: twelve circuits (an origin-side and a relay-side hop each, KDF
//! bytes from a counter), their streams moved to unaligned positions and their digests to
//! different buffered lengths by a few single cells, then two batches (cells sealed at twelve
//! hops and opened at the other end, so the pending digest set fills past eight; keystream-only
//! jobs; a `recognized != 0` cell), run by the candidate kernel with the chosen multi-lane
//! SHA-1 and by the reference, compared cell for cell and outcome for outcome (digests
//! included). The multi-lane test hashes sixteen (or eight) states with every class of
//! buffered length, in full and in part, against single-stream SHA-1. A backend's test also
//! runs its CGO kernel (proposal 359, [`crate::cgo`]) against the CGO reference
//! ([`cgo_kat`]); the backend passes only if both parts do.
//!
//! On a mismatch the implementation is marked unusable: [`crate::Engine::best`] takes the next
//! backend, [`crate::Engine::new`] (and so `CHIVE_CRYPTO_BACKEND`) refuses a forced one with
//! [`crate::EngineError::SelfTestFailed`], and the batch path keeps the next multi-lane SHA-1
//! (the eight-lane pass, or single-stream).

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use crate::multi::{self, LaneResult, MultiSha1};
#[cfg(target_arch = "x86_64")]
use crate::sha1state::Sha1State;
use crate::{cgo, reference, Backend, CellBody, Job, Kernel, Op, Outcome, Tor1Hop, KDF_LEN};

/// Circuits in the backend test: more than eight, so one flush of the pending set is wider than
/// the eight-lane pass.
const CIRCUITS: usize = 12;

static BACKENDS: [OnceLock<bool>; Backend::ALL.len()] = [const { OnceLock::new() }; 4];
#[cfg(target_arch = "x86_64")]
static MULTI: OnceLock<Option<MultiSha1>> = OnceLock::new();

/// Whether `backend` passed its self-test (run now if it has not run yet). An unsupported
/// backend has not.
pub(crate) fn backend_passed(backend: Backend) -> bool {
    let Some(slot) = Backend::ALL
        .iter()
        .position(|&b| b == backend)
        .and_then(|i| BACKENDS.get(i))
    else {
        return false;
    };
    *slot.get_or_init(|| {
        let ok = crate::backend_kat(backend);
        if !ok && backend.is_supported() {
            tracing::warn!(
                backend = backend.name(),
                "crypto backend failed its power-on self-test; it will not be used"
            );
        }
        ok
    })
}

/// The first of `candidates` that `passes`, else the portable backend.
pub(crate) fn first_passing(
    candidates: impl IntoIterator<Item = Backend>,
    mut passes: impl FnMut(Backend) -> bool,
) -> Backend {
    candidates
        .into_iter()
        .find(|&b| passes(b))
        .unwrap_or(Backend::Portable)
}

/// The multi-lane SHA-1 the batch path uses: the best one this CPU runs that passed its
/// self-test, or `None` (single-stream digests).
#[cfg(target_arch = "x86_64")]
pub(crate) fn multi_sha1() -> Option<MultiSha1> {
    *MULTI.get_or_init(|| {
        choose_multi(MultiSha1::detect_all(), |m| {
            multi_kat(&|s, b, o| m.hash_bodies(s, b, o), m.lanes())
        })
    })
}

/// The first of `candidates` that `passes`, logging each that does not.
#[cfg(target_arch = "x86_64")]
pub(crate) fn choose_multi(
    candidates: impl IntoIterator<Item = MultiSha1>,
    mut passes: impl FnMut(MultiSha1) -> bool,
) -> Option<MultiSha1> {
    candidates.into_iter().find(|&m| {
        let ok = passes(m);
        if !ok {
            tracing::warn!(
                implementation = ?m,
                "multi-lane SHA-1 failed its power-on self-test; it will not be used"
            );
        }
        ok
    })
}

/// A multi-lane hash: `out[l]` from `states[l]` and `bodies[l]`, as
/// [`MultiSha1::hash_bodies`].
#[cfg(target_arch = "x86_64")]
pub(crate) type LaneHash<'a> = &'a dyn Fn(&[&Sha1State], &[&CellBody], &mut [LaneResult]);

/// Known-answer test of a multi-lane hash with `lanes` lanes: all lanes, then fewer (so both
/// the wide and the narrow passes of a sixteen-lane choice run), against single-stream SHA-1.
#[cfg(target_arch = "x86_64")]
pub(crate) fn multi_kat(hash: LaneHash<'_>, lanes: usize) -> bool {
    const MAX: usize = multi::MAX_LANES;
    // Buffered lengths 0..63 in every class the staging distinguishes (empty, the digest
    // field split or not, padding in one block or two).
    const LENS: [usize; MAX] = [
        0, 1, 55, 56, 63, 20, 529, 7, 64, 127, 100, 2, 1038, 9, 60, 33,
    ];
    let lanes = lanes.min(MAX);
    let states: [Sha1State; MAX] = core::array::from_fn(|l| {
        let mut s = Sha1State::new();
        let seed: [u8; 1100] = core::array::from_fn(|i| (i * 7 + l * 31) as u8);
        s.update(seed.get(..LENS[l]).unwrap_or_default());
        s
    });
    let bodies: [CellBody; MAX] =
        core::array::from_fn(|l| core::array::from_fn(|j| (j * 13 + l * 57 + 1) as u8));
    let sr: [&Sha1State; MAX] = core::array::from_fn(|l| &states[l]);
    let br: [&CellBody; MAX] = core::array::from_fn(|l| &bodies[l]);
    let mut ok = true;
    for n in [lanes, lanes.min(3), lanes.min(7)] {
        let mut out = [LaneResult::default(); MAX];
        hash(&sr[..n], &br[..n], &mut out[..n]);
        for l in 0..n {
            let mut want = states[l].clone();
            let mut zeroed = bodies[l];
            zeroed[5..9].fill(0);
            want.update(&zeroed);
            let mut got = states[l].clone();
            multi::commit(&mut got, &bodies[l], &out[l]);
            ok &= out[l].digest == want.peek() && got.h == want.h && got.len == want.len;
        }
    }
    ok
}

/// Known-answer test of a keystream kernel in the batch path (with `mb`, the multi-lane SHA-1
/// it will run with, or single-stream), against the reference; see the module doc.
pub(crate) fn backend_kat<K: Kernel>(
    k: K,
    batch: impl Fn(K, &mut [Tor1Hop], &mut [CellBody], &[Job], &mut [Outcome]),
) -> bool {
    let extra = 4usize;
    let kdf = |c: usize| -> [u8; KDF_LEN] { core::array::from_fn(|i| (i * 29 + c * 71 + 5) as u8) };
    // Hops `c` (origin side) and `CIRCUITS + c` (relay side) of circuit `c`, then `extra` hops
    // for keystream-only jobs.
    let circuit = |h: usize| if h < 2 * CIRCUITS { h % CIRCUITS } else { h };
    let mut hops: Vec<Tor1Hop> = (0..2 * CIRCUITS + extra)
        .map(|h| Tor1Hop::from_kdf(&kdf(circuit(h))))
        .collect();
    let mut refs: Vec<reference::Tor1Hop> = (0..2 * CIRCUITS + extra)
        .map(|h| reference::Tor1Hop::from_kdf(&kdf(circuit(h))))
        .collect();
    let body = |c: usize, salt: u8| -> CellBody {
        let mut b: CellBody = core::array::from_fn(|j| (j * 13 + c * 7) as u8 ^ salt);
        // Plaintext with `recognized == 0`, so the other end checks the digest.
        b[1] = 0;
        b[2] = 0;
        b
    };
    let mut ok = true;
    let mut one = |hops: &mut [Tor1Hop],
                   refs: &mut [reference::Tor1Hop],
                   h: usize,
                   cell: CellBody,
                   op: Op| {
        let (mut a, mut b) = (cell, cell);
        if let (Some(hop), Some(r)) = (hops.get_mut(h), refs.get_mut(h)) {
            let got = crate::run_op(k, hop, &mut a, op);
            let want = ref_op(r, &mut b, op);
            ok &= got == want && a == b;
        }
        a
    };
    // Single cells: streams to positions 509 * m (offsets 13, 10, 7, ... within a block),
    // digests to different buffered lengths.
    for c in 0..CIRCUITS {
        for m in 0..c % 5 {
            let x = one(
                &mut hops,
                &mut refs,
                c,
                body(c, m as u8),
                Op::OriginCryptForward,
            );
            one(&mut hops, &mut refs, CIRCUITS + c, x, Op::RelayRecvForward);
        }
        for m in 0..c % 3 {
            let x = one(
                &mut hops,
                &mut refs,
                CIRCUITS + c,
                body(c, 0x40 | m as u8),
                Op::RelaySendBackward,
            );
            one(&mut hops, &mut refs, c, x, Op::OriginRecvBackward);
        }
    }
    // Two batches, one per direction: seals, then the other ends open them (each touches a
    // pending cell, so the set is flushed at its widest), and keystream-only jobs.
    for dir in 0..2u8 {
        let mut cells: Vec<CellBody> = (0..CIRCUITS + extra).map(|c| body(c, 0x80 | dir)).collect();
        // A cell whose `recognized` is not zero: decrypted only.
        if let Some(c) = cells.get_mut(CIRCUITS + 1) {
            c[1] = 1;
        }
        let (seal, open, pass) = if dir == 0 {
            (
                Op::RelaySendBackward,
                Op::OriginRecvBackward,
                Op::RelayPassBackward,
            )
        } else {
            (
                Op::OriginSealForward,
                Op::RelayRecvForward,
                Op::OriginCryptForward,
            )
        };
        let (sealer, opener) = if dir == 0 {
            (CIRCUITS, 0)
        } else {
            (0, CIRCUITS)
        };
        let mut jobs = Vec::with_capacity(2 * CIRCUITS + extra);
        for c in 0..CIRCUITS {
            jobs.push(Job {
                hop: (sealer + c) as u32,
                cell: c as u32,
                op: seal,
            });
        }
        for e in 0..extra {
            let op = if e == 1 { open } else { pass };
            jobs.push(Job {
                hop: (2 * CIRCUITS + e) as u32,
                cell: (CIRCUITS + e) as u32,
                op,
            });
        }
        for c in 0..CIRCUITS {
            jobs.push(Job {
                hop: (opener + c) as u32,
                cell: c as u32,
                op: open,
            });
        }
        let mut want_cells = cells.clone();
        let mut out = vec![Outcome::Done; jobs.len()];
        batch(k, &mut hops, &mut cells, &jobs, &mut out);
        for (j, got) in jobs.iter().zip(&out) {
            if let (Some(r), Some(cell)) = (
                refs.get_mut(j.hop as usize),
                want_cells.get_mut(j.cell as usize),
            ) {
                ok &= ref_op(r, cell, j.op) == *got;
            }
        }
        ok &= cells == want_cells;
        // Every sealed cell must have been recognized at the other end.
        ok &= out
            .iter()
            .filter(|o| matches!(o, Outcome::Recognized(_)))
            .count()
            >= CIRCUITS;
    }
    ok
}

/// One job on the reference, as the engine should do it.
pub(crate) fn ref_op(hop: &mut reference::Tor1Hop, cell: &mut CellBody, op: Op) -> Outcome {
    match op {
        Op::RelayRecvForward => crate::open_outcome(hop.relay_recv_forward(cell)),
        Op::RelayPassBackward => {
            hop.relay_forward_backward(cell);
            Outcome::Done
        }
        Op::RelaySendBackward => Outcome::Sealed(hop.relay_send_backward(cell)),
        Op::OriginSealForward => Outcome::Sealed(hop.origin_seal_forward(cell)),
        Op::OriginCryptForward => {
            hop.crypt_forward(cell);
            Outcome::Done
        }
        Op::OriginRecvBackward => crate::open_outcome(hop.origin_recv_backward(cell)),
    }
}

/// A CGO batch function (one backend's `process_batch_cgo` without the index checks).
pub(crate) type CgoBatch<'a> =
    &'a dyn Fn(&mut [cgo::CgoHop], &mut [CellBody], &[cgo::CgoJob], &mut [cgo::CgoOutcome]);

/// Known-answer test of a CGO kernel (`batch`) against the reference (proposal 359's
/// `ENC_UIV`, `DEC_UIV`, `UPDATE_UIV` on the `aes` and `polyval` crates).
///
/// Two circuits of two hops, client and relay sides (eight hop states, KDF bytes from a
/// counter; one more relay and client hop see only cells meant for no one), run through two rounds of a forward batch then a backward batch: client
/// originate (to the last hop and to the first, with `RELAY` and `RELAY_EARLY`) and
/// encrypt-forward, relay forward not recognized (first hop) and recognized (then its key
/// update), relay originate and backward, client decrypt not recognized and recognized (key
/// update), a job on the wrong role, a cell that matches no hop; the relay jobs come single
/// and in the kernels' independent pairs (both, one or neither updating keys), and a middle
/// relay's forward keys are used more than once (the kernels' 32-power POLYVAL path) while
/// the updated ones are used once (the 8-power path). Every outcome, every cell and every
/// hop's keys, nonce and `T'` are compared after each batch.
pub(crate) fn cgo_kat(batch: CgoBatch<'_>) -> bool {
    use cgo::{CgoHop, CgoJob, CgoOp as O, CgoOutcome, CMD_RELAY as R, CMD_RELAY_EARLY as E};
    // Hop indices: clients A0 A1 B0 B1, relays A0 A1 B0 B1, then X.
    const CA: [u32; 2] = [0, 1];
    const CB: [u32; 2] = [2, 3];
    const RA: [u32; 2] = [4, 5];
    const RB: [u32; 2] = [6, 7];
    // A relay and a client hop that only see cells meant for no one (and wrong-role jobs).
    const RX: u32 = 8;
    const CX: u32 = 9;
    let kdf = |h: u32| -> [u8; cgo::KDF_LEN] {
        core::array::from_fn(|i| (i * 37 + (h as usize % 4) * 101 + h as usize / 8 + 3) as u8)
    };
    let mut hops: Vec<CgoHop> = (0..10u32)
        .filter_map(|h| {
            if h < 4 || h == CX {
                cgo::ClientHopState::from_kdf(&kdf(h))
                    .ok()
                    .map(CgoHop::Client)
            } else {
                cgo::RelayState::from_kdf(&kdf(h)).ok().map(CgoHop::Relay)
            }
        })
        .collect();
    if hops.len() != 10 {
        return false;
    }
    let mut refs = hops.clone();
    let j = |hop: u32, cell: u32, cmd: u8, op: O| CgoJob { hop, cell, cmd, op };
    let forward = [
        // Cells 0 (A, to hop 1), 1 (B, to hop 1), 2 (A, to hop 0), 3 (B, to hop 0).
        j(CA[1], 0, R, O::ClientOriginate),
        j(CA[0], 0, R, O::ClientEncryptForward),
        j(CB[1], 1, E, O::ClientOriginate),
        j(CB[0], 1, E, O::ClientEncryptForward),
        j(CA[0], 2, R, O::ClientOriginate),
        j(CB[0], 3, E, O::ClientOriginate),
        // Pairs: neither recognized; both (two key updates); both (hop 0's keys).
        j(RA[0], 0, R, O::RelayForward),
        j(RB[0], 1, E, O::RelayForward),
        j(RA[1], 0, R, O::RelayForward),
        j(RB[1], 1, E, O::RelayForward),
        j(RA[0], 2, R, O::RelayForward),
        j(RB[0], 3, E, O::RelayForward),
        // Wrong role, then a single relay job on a cell for nobody.
        j(CX, 4, R, O::RelayForward),
        j(RX, 4, R, O::RelayForward),
    ];
    let backward = [
        // Pairs: both originate (two key updates); one originates; the other one.
        j(RA[1], 0, R, O::RelayOriginate),
        j(RB[1], 1, E, O::RelayOriginate),
        j(RB[1], 3, R, O::RelayOriginate),
        j(RA[0], 0, R, O::RelayBackward),
        j(RB[0], 1, E, O::RelayBackward),
        j(RA[0], 2, R, O::RelayOriginate),
        // A single relay job (followed by a client one).
        j(RB[0], 3, R, O::RelayBackward),
        j(CA[0], 0, R, O::ClientDecryptBackward),
        j(CA[1], 0, R, O::ClientDecryptBackward),
        j(CB[0], 1, E, O::ClientDecryptBackward),
        j(CB[1], 1, E, O::ClientDecryptBackward),
        j(CA[0], 2, R, O::ClientDecryptBackward),
        j(CB[0], 3, R, O::ClientDecryptBackward),
        j(CB[1], 3, R, O::ClientDecryptBackward),
        // Wrong role; a cell for nobody.
        j(RX, 4, R, O::ClientDecryptBackward),
        j(CX, 4, R, O::ClientDecryptBackward),
    ];
    let mut ok = true;
    let mut tags = 0;
    for round in 0..2u8 {
        for jobs in [&forward[..], &backward[..]] {
            let mut cells: Vec<CellBody> = (0..5u8)
                .map(|c| core::array::from_fn(|i| (i as u8).wrapping_mul(11) ^ c ^ round))
                .collect();
            let mut want_cells = cells.clone();
            let mut out = vec![CgoOutcome::Done; jobs.len()];
            let mut want = out.clone();
            batch(&mut hops, &mut cells, jobs, &mut out);
            cgo::run_batch_with(cgo::RefPrims, &mut refs, &mut want_cells, jobs, &mut want);
            ok &= out == want && cells == want_cells;
            ok &= hops.iter().zip(&refs).all(|(a, b)| a.same_state(b));
            tags += want
                .iter()
                .filter(|o| matches!(o, CgoOutcome::Recognized(_) | CgoOutcome::Sealed(_)))
                .count();
        }
    }
    // The scenario itself: every originated cell sealed and recognized at its end.
    ok && tags == 2 * (4 + 4 + 4 + 4)
}
