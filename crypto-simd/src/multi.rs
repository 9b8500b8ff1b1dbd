//! Multi-buffer SHA-1 for the batch path: the running digests of up to eight different hops,
//! each fed one cell body with its digest field zeroed (tor-spec §6.1), hashed side by side in
//! the 32-bit lanes of AVX2 registers.
//!
//! One SHA-1 stream is a chain of dependent compressions that SHA-NI runs at its latency; eight
//! circuits' streams are independent, so their rounds fill the vector ALUs instead.

use crate::sha1state::Sha1State;
use crate::x86::SHA1_RUN_MAX;
use crate::{CellBody, RelayDigest, CELL_BODY_LEN};

/// Lanes hashed per pass.
pub(crate) const LANES: usize = 8;

/// Worst case: 63 buffered bytes plus a body leave 60 bytes in the last block, so padding
/// takes two more: eight whole blocks plus two.
#[allow(clippy::manual_div_ceil)] // 63 buffered bytes, not a rounding up
const BLOCKS_MAX: usize = (63 + CELL_BODY_LEN) / 64 + 2;
const _: () = assert!(BLOCKS_MAX <= SHA1_RUN_MAX);

/// A proof that the CPU has AVX2 or SHA-NI, and which multi-lane compression to use.
#[derive(Clone, Copy)]
pub(crate) struct Sha1x8 {
    sha_ni: bool,
}

impl Sha1x8 {
    pub(crate) fn detect() -> Option<Self> {
        if crate::cpuid_sha_ni::get() {
            Some(Sha1x8 { sha_ni: true })
        } else if crate::cpuid_avx2::get() {
            Some(Sha1x8 { sha_ni: false })
        } else {
            None
        }
    }

    /// Fewest digests worth a multi-buffer pass, measured with `chive-bench crypto` on Zen 3:
    /// with SHA-NI, interleaving pays from three streams; the AVX2 eight-lane pass costs about
    /// five single-stream SHA-NI digests.
    pub(crate) fn lanes_min(self) -> usize {
        if self.sha_ni {
            3
        } else {
            6
        }
    }

    /// For each lane `l < n`: the chaining value of `states[l]` after absorbing `bodies[l]`
    /// (digest field read as zero), and the digest at that point. Lanes past `n` are ignored.
    /// [`commit`] turns a lane's result into the new running state.
    ///
    /// Nothing is staged but the blocks that differ from the body: the first two (buffered bytes,
    /// body head, zeroed digest field) and the padding block(s) after the body's last whole
    /// block; every block in between is read in place from the body.
    #[allow(unsafe_code)]
    pub(crate) fn hash_bodies(
        self,
        states: [&Sha1State; LANES],
        bodies: [&CellBody; LANES],
        n: usize,
        out: &mut [LaneResult; LANES],
    ) {
        let n = n.min(LANES);
        let mut head = [[0u8; 128]; LANES];
        let mut tail = [[0u8; 128]; LANES];
        let mut h = [[0u32; 5]; LANES];
        let mut n_update = [0usize; LANES];
        let mut n_total = [0usize; LANES];
        for l in 0..n {
            let (s, body) = (states[l], bodies[l]);
            let b = s.buf_len.min(63);
            let hd = &mut head[l];
            hd[..b].copy_from_slice(&s.buf[..b]);
            hd[b..].copy_from_slice(&body[..128 - b]);
            hd[b + 5..b + 9].fill(0);
            let upd = b + CELL_BODY_LEN;
            let rem = upd % 64;
            let tl = &mut tail[l];
            tl[..rem].copy_from_slice(&body[CELL_BODY_LEN - rem..]);
            tl[rem] = 0x80;
            let tail_len = if rem < 56 { 64 } else { 128 };
            let bits = s.len.wrapping_add(CELL_BODY_LEN as u64).wrapping_mul(8);
            tl[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
            n_update[l] = upd / 64;
            n_total[l] = n_update[l] + tail_len / 64;
            h[l] = s.h;
        }
        static SPARE: [u8; 64] = [0; 64];
        let block = |l: usize, step: usize| -> &[u8; 64] {
            let (Some(hd), Some(tl), Some(body), Some(s)) =
                (head.get(l), tail.get(l), bodies.get(l), states.get(l))
            else {
                return &SPARE;
            };
            let nu = n_update[l];
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
        let table: [[&[u8; 64]; SHA1_RUN_MAX]; LANES] =
            core::array::from_fn(|l| core::array::from_fn(|step| block(l, step)));
        let mut updated = [[0u32; 5]; LANES];
        if self.sha_ni {
            if n > 4 {
                // Eight interleaved streams beat two passes of four (edge path at 16 circuits on
                // Zen 3: 246 against 280 ns per cell) even though they spill: one pass pays the
                // loop and the spills once, and runs at the SHA unit's limit for this mix.
                // SAFETY: `sha_ni` is set only after `detect` saw SHA-NI, SSE2, SSSE3, SSE4.1.
                unsafe {
                    crate::x86::sha1ni_run::<8>(&mut h, &table, n_total, n_update, &mut updated)
                };
            } else {
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
        } else {
            let steps = n_total.iter().copied().max().unwrap_or(0);
            #[allow(clippy::needless_range_loop)] // `step` indexes every lane's column
            for step in 0..steps.min(SHA1_RUN_MAX) {
                let active: [bool; LANES] = core::array::from_fn(|l| step < n_total[l]);
                let blocks: [&[u8; 64]; LANES] = core::array::from_fn(|l| table[l][step]);
                // SAFETY: without `sha_ni`, a `Sha1x8` exists only after `detect` saw AVX2.
                unsafe { crate::x86::sha1x8_compress(&mut h, blocks, active) };
                for l in 0..LANES {
                    if step + 1 == n_update[l] {
                        updated[l] = h[l];
                    }
                }
            }
        }
        for (l, slot) in out.iter_mut().enumerate().take(n) {
            slot.h = updated[l];
            for (o, w) in slot.digest.chunks_exact_mut(4).zip(h[l]) {
                o.copy_from_slice(&w.to_be_bytes());
            }
        }
        // The chaining values are the circuits' running digest states (seeded from Df/Db):
        // clear the stack copies, as `crate::wipe` does for keystream.
        h = [[0; 5]; LANES];
        updated = [[0; 5]; LANES];
        core::hint::black_box((&h, &updated));
    }
}

/// One lane of [`Sha1x8::hash_bodies`].
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

    #[test]
    fn hash_bodies_matches_single_stream() {
        // Every multi-lane compression this CPU can run, not only the one `detect` prefers.
        let kinds: Vec<Sha1x8> = [
            (crate::cpuid_sha_ni::get(), true),
            (crate::cpuid_avx2::get(), false),
        ]
        .into_iter()
        .filter(|&(ok, _)| ok)
        .map(|(_, sha_ni)| Sha1x8 { sha_ni })
        .collect();
        for k in kinds {
            check_hash_bodies(k);
        }
    }

    fn check_hash_bodies(k: Sha1x8) {
        // States with every buffered length class, including 0 and 63.
        let states: Vec<Sha1State> = (0..LANES)
            .map(|l| {
                let mut s = Sha1State::new();
                s.update(&vec![l as u8; [0, 1, 55, 56, 63, 100, 509 * 3, 7][l]]);
                s
            })
            .collect();
        let bodies: Vec<CellBody> = (0..LANES)
            .map(|l| core::array::from_fn(|j| (l * 3 + j) as u8))
            .collect();
        for n in 1..=LANES {
            let mut out = [LaneResult::default(); LANES];
            k.hash_bodies(
                core::array::from_fn(|l| &states[l]),
                core::array::from_fn(|l| &bodies[l]),
                n,
                &mut out,
            );
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
