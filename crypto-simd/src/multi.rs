//! Multi-buffer SHA-1 for the batch path: the running digests of up to eight (or sixteen)
//! different hops, each fed one cell body with its digest field zeroed (tor-spec §6.1), hashed
//! side by side: interleaved SHA-NI streams or AVX2 lanes (eight), or AVX-512F lanes (sixteen,
//! `multi512`). How many lanes a pass takes is a property of the chosen [`MultiSha1`], which
//! the batch path sizes its pending set by.
//!
//! One SHA-1 stream is a chain of dependent compressions that SHA-NI runs at its latency; eight
//! circuits' streams are independent, so their rounds fill the vector ALUs instead.

use crate::multi512;
use crate::sha1state::Sha1State;
use crate::x86::SHA1_RUN_MAX;
use crate::{CellBody, RelayDigest, CELL_BODY_LEN};

/// Lanes of the eight-lane pass (SHA-NI streams or AVX2 lanes).
pub(crate) const NARROW_LANES: usize = 8;
/// Most lanes any pass takes (the AVX-512 one); the batch path's pending set is this large and
/// uses [`MultiSha1::lanes`] of it.
pub(crate) const MAX_LANES: usize = multi512::LANES;

/// Worst case: 63 buffered bytes plus a body leave 60 bytes in the last block, so padding
/// takes two more: eight whole blocks plus two.
#[allow(clippy::manual_div_ceil)] // 63 buffered bytes, not a rounding up
const BLOCKS_MAX: usize = (63 + CELL_BODY_LEN) / 64 + 2;
const _: () = assert!(BLOCKS_MAX <= SHA1_RUN_MAX);

/// The eight-lane compressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Narrow {
    /// Four or eight interleaved SHA-NI streams.
    ShaNi,
    /// Eight AVX2 lanes.
    Avx2,
}

/// The multi-lane SHA-1 in use: an eight-lane pass, plus the sixteen-lane AVX-512 pass where
/// the CPU has it and it passed its power-on self-test. Only made by [`MultiSha1::detect_all`]
/// (CPU support proven), so holding one is a proof of the instructions it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MultiSha1 {
    narrow: Narrow,
    wide: Option<multi512::Avx512>,
}

impl MultiSha1 {
    /// Every multi-lane choice this CPU can run, best first (not yet self-tested).
    pub(crate) fn detect_all() -> impl Iterator<Item = MultiSha1> {
        let narrow = [
            crate::cpuid_sha_ni::get().then_some(Narrow::ShaNi),
            crate::cpuid_avx2::get().then_some(Narrow::Avx2),
        ];
        let wide = multi512::Avx512::detect();
        let with_wide = narrow.into_iter().flatten().filter_map(move |n| {
            wide.map(|w| MultiSha1 {
                narrow: n,
                wide: Some(w),
            })
        });
        let plain = narrow.into_iter().flatten().map(|n| MultiSha1 {
            narrow: n,
            wide: None,
        });
        with_wide.chain(plain)
    }

    /// Lanes per pass: how many pending digests the batch path collects before a flush.
    pub(crate) fn lanes(self) -> usize {
        if self.wide.is_some() {
            multi512::LANES
        } else {
            NARROW_LANES
        }
    }

    /// Fewest digests worth a multi-buffer pass, measured with `chive-bench crypto` on Zen 3:
    /// with SHA-NI, interleaving pays from three streams; the AVX2 eight-lane pass costs about
    /// five single-stream SHA-NI digests.
    pub(crate) fn lanes_min(self) -> usize {
        match self.narrow {
            Narrow::ShaNi => 3,
            Narrow::Avx2 => 6,
        }
    }

    /// For each lane `l < n` (`n` the shortest of the three slices, at most [`Self::lanes`]):
    /// the chaining value of `states[l]` after absorbing `bodies[l]` (digest field read as
    /// zero), and the digest at that point, in `out[l]`. [`commit`] turns a lane's result into
    /// the new running state. More than eight lanes go to the sixteen-lane pass.
    ///
    /// Nothing is staged but the blocks that differ from the body: the first two (buffered bytes,
    /// body head, zeroed digest field) and the padding block(s) after the body's last whole
    /// block; every block in between is read in place from the body.
    pub(crate) fn hash_bodies(
        self,
        states: &[&Sha1State],
        bodies: &[&CellBody],
        out: &mut [LaneResult],
    ) {
        let n = states.len().min(bodies.len()).min(out.len());
        match self.wide {
            Some(w) if n > NARROW_LANES => {
                hash_wide(w, states, bodies, &mut out[..n.min(multi512::LANES)])
            }
            _ => self.hash_narrow(states, bodies, &mut out[..n.min(NARROW_LANES)]),
        }
    }

    #[allow(unsafe_code)]
    fn hash_narrow(self, states: &[&Sha1State], bodies: &[&CellBody], out: &mut [LaneResult]) {
        const LANES: usize = NARROW_LANES;
        let n = out.len().min(LANES);
        let (mut head, mut tail) = ([[0u8; 128]; LANES], [[0u8; 128]; LANES]);
        let st = Staged::new(&mut head, &mut tail, states, bodies);
        let table = st.table(states, bodies);
        let (n_total, n_update) = (st.n_total, st.n_update);
        let mut h = st.h;
        let mut updated = [[0u32; 5]; LANES];
        match self.narrow {
            Narrow::ShaNi if n > 4 => {
                // Eight interleaved streams beat two passes of four (edge path at 16 circuits on
                // Zen 3: 246 against 280 ns per cell) even though they spill: one pass pays the
                // loop and the spills once, and runs at the SHA unit's limit for this mix.
                // SAFETY: `Narrow::ShaNi` is chosen only after `detect_all` saw SHA-NI, SSE2,
                // SSSE3 and SSE4.1.
                unsafe {
                    crate::x86::sha1ni_run::<8>(&mut h, &table, n_total, n_update, &mut updated)
                };
            }
            Narrow::ShaNi => {
                let mut h4 = [h[0], h[1], h[2], h[3]];
                let mut up4 = [[0u32; 5]; 4];
                let t4 = [table[0], table[1], table[2], table[3]];
                let nt = [n_total[0], n_total[1], n_total[2], n_total[3]];
                let nu = [n_update[0], n_update[1], n_update[2], n_update[3]];
                // SAFETY: as above.
                unsafe { crate::x86::sha1ni_run::<4>(&mut h4, &t4, nt, nu, &mut up4) };
                h[..4].copy_from_slice(&h4);
                updated[..4].copy_from_slice(&up4);
                h4 = [[0; 5]; 4];
                up4 = [[0; 5]; 4];
                core::hint::black_box((&h4, &up4));
            }
            Narrow::Avx2 => {
                let steps = n_total.iter().copied().max().unwrap_or(0);
                #[allow(clippy::needless_range_loop)] // `step` indexes every lane's column
                for step in 0..steps.min(SHA1_RUN_MAX) {
                    let active: [bool; LANES] = core::array::from_fn(|l| step < n_total[l]);
                    let blocks: [&[u8; 64]; LANES] = core::array::from_fn(|l| table[l][step]);
                    // SAFETY: `Narrow::Avx2` is chosen only after `detect_all` saw AVX2.
                    unsafe { crate::x86::sha1x8_compress(&mut h, blocks, active) };
                    for l in 0..LANES {
                        if step + 1 == n_update[l] {
                            updated[l] = h[l];
                        }
                    }
                }
            }
        }
        write_results(&mut h, &mut updated, out);
    }
}

/// More than eight lanes: the sixteen-lane AVX-512 pass. Not inlined, so its 5 KiB of staging
/// stays out of the eight-lane path's stack frame.
#[inline(never)]
fn hash_wide(
    w: multi512::Avx512,
    states: &[&Sha1State],
    bodies: &[&CellBody],
    out: &mut [LaneResult],
) {
    hash_wide_with(
        |h, t, nt, nu, up| w.run(h, t, nt, nu, up),
        states,
        bodies,
        out,
    );
}

/// Sixteen lanes staged and hashed by `run` (the `zmm` pass, or in tests the same algorithm
/// on plain arrays).
pub(crate) fn hash_wide_with(
    run: impl FnOnce(
        &mut [[u32; 5]; multi512::LANES],
        &[[&[u8; 64]; SHA1_RUN_MAX]; multi512::LANES],
        [usize; multi512::LANES],
        [usize; multi512::LANES],
        &mut [[u32; 5]; multi512::LANES],
    ),
    states: &[&Sha1State],
    bodies: &[&CellBody],
    out: &mut [LaneResult],
) {
    const LANES: usize = multi512::LANES;
    let (mut head, mut tail) = ([[0u8; 128]; LANES], [[0u8; 128]; LANES]);
    let st = Staged::new(&mut head, &mut tail, states, bodies);
    let table = st.table(states, bodies);
    let mut h = st.h;
    let mut updated = [[0u32; 5]; LANES];
    run(&mut h, &table, st.n_total, st.n_update, &mut updated);
    write_results(&mut h, &mut updated, out);
}

/// `out[l]` from lane `l`'s final and mid chaining values, then clears both: they are the
/// circuits' running digest states (seeded from Df/Db), and are not left on the stack, as
/// `crate::wipe` does for keystream.
fn write_results<const N: usize>(
    h: &mut [[u32; 5]; N],
    updated: &mut [[u32; 5]; N],
    out: &mut [LaneResult],
) {
    for ((slot, hl), ul) in out.iter_mut().zip(h.iter()).zip(updated.iter()) {
        slot.h = *ul;
        for (o, w) in slot.digest.chunks_exact_mut(4).zip(hl) {
            o.copy_from_slice(&w.to_be_bytes());
        }
    }
    *h = [[0; 5]; N];
    *updated = [[0; 5]; N];
    core::hint::black_box((h, updated));
}

/// The staged blocks of up to `N` lanes: lanes `0..min(states.len(), bodies.len(), N)` hash
/// their body; the others have no blocks. The head and tail buffers are the caller's own
/// zeroed locals: one 2 KiB struct was cleared with one `memset` past glibc's `rep stosb`
/// threshold, whose start-up cost on Zen 3 showed as +5 ns per cell on the edge path; two 1 KiB
/// arrays are cleared with vector stores.
struct Staged<'a, const N: usize> {
    head: &'a mut [[u8; 128]; N],
    tail: &'a mut [[u8; 128]; N],
    h: [[u32; 5]; N],
    n_update: [usize; N],
    n_total: [usize; N],
}

impl<'a, const N: usize> Staged<'a, N> {
    /// Stages lanes `0..min(states.len(), bodies.len(), N)` into `head` and `tail` (zeroed).
    #[inline(always)]
    fn new(
        head: &'a mut [[u8; 128]; N],
        tail: &'a mut [[u8; 128]; N],
        states: &[&Sha1State],
        bodies: &[&CellBody],
    ) -> Self {
        let mut st = Staged {
            head,
            tail,
            h: [[0u32; 5]; N],
            n_update: [0; N],
            n_total: [0; N],
        };
        for (l, (s, body)) in states.iter().zip(bodies).take(N).enumerate() {
            let b = s.buf_len.min(63);
            let hd = &mut st.head[l];
            hd[..b].copy_from_slice(&s.buf[..b]);
            hd[b..].copy_from_slice(&body[..128 - b]);
            hd[b + 5..b + 9].fill(0);
            let upd = b + CELL_BODY_LEN;
            let rem = upd % 64;
            let tl = &mut st.tail[l];
            tl[..rem].copy_from_slice(&body[CELL_BODY_LEN - rem..]);
            tl[rem] = 0x80;
            let tail_len = if rem < 56 { 64 } else { 128 };
            let bits = s.len.wrapping_add(CELL_BODY_LEN as u64).wrapping_mul(8);
            tl[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
            st.n_update[l] = upd / 64;
            st.n_total[l] = st.n_update[l] + tail_len / 64;
            st.h[l] = s.h;
        }
        st
    }

    /// Lane `l`'s blocks in order: the two staged head blocks, the body's middle blocks in
    /// place, the staged tail; a spare zero block where a lane has fewer.
    #[inline(always)]
    fn table<'t>(
        &'t self,
        states: &[&Sha1State],
        bodies: &[&'t CellBody],
    ) -> [[&'t [u8; 64]; SHA1_RUN_MAX]; N] {
        static SPARE: [u8; 64] = [0; 64];
        let block = |l: usize, step: usize| -> &'t [u8; 64] {
            let (Some(hd), Some(tl), Some(body), Some(s)) = (
                self.head.get(l),
                self.tail.get(l),
                bodies.get(l),
                states.get(l),
            ) else {
                return &SPARE;
            };
            let nu = self.n_update[l];
            let src = if step < 2 {
                hd.get(64 * step..64 * step + 64)
            } else if step < nu {
                let at = 64 * step - s.buf_len.min(63);
                body.get(at..at + 64)
            } else {
                let at = 64 * (step - nu);
                tl.get(at..at + 64)
            };
            src.and_then(|x| x.try_into().ok()).unwrap_or(&SPARE)
        };
        core::array::from_fn(|l| core::array::from_fn(|step| block(l, step)))
    }
}

/// One lane of [`MultiSha1::hash_bodies`].
#[derive(Clone, Copy, Default)]
pub(crate) struct LaneResult {
    /// Chaining value after the body's whole blocks.
    pub(crate) h: [u32; 5],
    /// The digest after the body.
    pub(crate) digest: RelayDigest,
}

/// Makes `state` the running state after absorbing `body`, given that lane's result.
///
/// The bytes left buffered are the last `(buf_len + 509) % 64 < 64` bytes of the body, which never
/// reach its digest field (bytes 5..9), so they can be taken from the body as it is.
pub(crate) fn commit(state: &mut Sha1State, body: &CellBody, r: &LaneResult) {
    let rem = (state.buf_len + CELL_BODY_LEN) % 64;
    state.h = r.h;
    if let (Some(dst), Some(src)) = (state.buf.get_mut(..rem), body.get(CELL_BODY_LEN - rem..)) {
        dst.copy_from_slice(src);
    }
    state.buf_len = rem;
    state.len = state.len.wrapping_add(CELL_BODY_LEN as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    type HashFn<'a> = &'a dyn Fn(&[&Sha1State], &[&CellBody], &mut [LaneResult]);

    #[test]
    fn hash_bodies_matches_single_stream() {
        // Every multi-lane compression this CPU can run, not only the one chosen.
        for k in MultiSha1::detect_all() {
            eprintln!("{k:?}");
            check_hash_bodies(&|s, b, o| k.hash_bodies(s, b, o), k.lanes());
        }
    }

    /// The sixteen-lane staging and result glue, with the sixteen-lane algorithm on plain
    /// arrays (runs without AVX-512).
    #[test]
    fn wide_staging_matches_single_stream() {
        check_hash_bodies(
            &|s, b, o| hash_wide_with(multi512::run_portable, s, b, o),
            multi512::LANES,
        );
    }

    /// States with every buffered length class (0, 1, 55, 56, 63, ...) in `lanes` lanes, each
    /// number of lanes in use, against single-stream.
    fn check_hash_bodies(hash: HashFn<'_>, lanes: usize) {
        const LENS: [usize; 16] = [
            0,
            1,
            55,
            56,
            63,
            100,
            509 * 3,
            7,
            20,
            529,
            64,
            127,
            128,
            2,
            9,
            1000,
        ];
        let states: Vec<Sha1State> = (0..lanes)
            .map(|l| {
                let mut s = Sha1State::new();
                s.update(&vec![l as u8; LENS[l % 16]]);
                s
            })
            .collect();
        let bodies: Vec<CellBody> = (0..lanes)
            .map(|l| core::array::from_fn(|j| (l * 3 + j) as u8))
            .collect();
        for n in 1..=lanes {
            let mut out = vec![LaneResult::default(); n];
            let sr: Vec<&Sha1State> = states.iter().take(n).collect();
            let br: Vec<&CellBody> = bodies.iter().take(n).collect();
            hash(&sr, &br, &mut out);
            for l in 0..n {
                let mut want = states[l].clone();
                let mut zeroed = bodies[l];
                zeroed[5..9].fill(0);
                want.update(&zeroed);
                assert_eq!(out[l].digest, want.peek(), "lane {l} of {n}");
                let mut got = states[l].clone();
                commit(&mut got, &bodies[l], &out[l]);
                assert_eq!(got.h, want.h);
                assert_eq!(got.buf_len, want.buf_len);
                assert_eq!(got.buf[..want.buf_len], want.buf[..want.buf_len]);
                assert_eq!(got.len, want.len);
            }
        }
    }
}
