//! Sixteen-lane SHA-1 (FIPS 180-4 §6.1.2) on AVX-512F: the running digests of up to sixteen
//! circuits' hops (tor-spec §6.1), one per 32-bit lane of a `zmm` register, with `vprold` for the
//! rotates and `vpternlogd` for the round functions and the message schedule's three-way XOR.
//!
//! **Status: compiled, untested on the development machine** (AMD Zen 3, no AVX-512). The
//! algorithm is written once, generic over [`U32x16`], and instantiated twice: with
//! [`Portable16`] (plain `[u32; 16]` arithmetic that spells out what each AVX-512 instruction
//! does, per Intel's definitions) and with `Zmm` (one intrinsic per operation). The tests run
//! the portable instance against the `sha1` crate, which checks the transposition, the
//! `vpternlogd` truth tables and the per-lane masking; the AVX-512 instance is compared with
//! the `sha1` crate only where the CPU has AVX-512F (skipped, with a message, otherwise), and
//! at run time it is used only after its power-on known-answer test
//! (`crate::selftest`) has passed, so a CPU where it computes anything else keeps the
//! eight-lane pass.
//!
//! Each lane's 64-byte block is one unaligned `zmm` load (sixteen little-endian words); the 16
//! rows are transposed into 16 message-word vectors with 64 in-register shuffles
//! (`vpunpck{l,h}dq`, `vpunpck{l,h}qdq`, then two rounds of `vshufi32x4`), and byte-swapped to
//! big-endian with two rotates and one `vpternlogd` bit-select (AVX-512F has no `vpshufb` on
//! `zmm`; that needs AVX-512BW).

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use crate::x86::SHA1_RUN_MAX;

/// Lanes per pass.
pub(crate) const LANES: usize = 16;

/// `vpternlogd` truth tables: bit `(x << 2) | (y << 1) | z` of the immediate is the result for
/// input bits `x`, `y`, `z` (operands in that order).
mod imm {
    /// `x ? y : z` (SHA-1 `Ch`, and the byte-swap merge).
    pub(super) const SELECT: i32 = 0xca;
    /// `x ^ y ^ z` (SHA-1 `Parity`, and the message schedule).
    pub(super) const XOR3: i32 = 0x96;
    /// Majority of `x`, `y`, `z` (SHA-1 `Maj`).
    pub(super) const MAJ: i32 = 0xe8;
}

/// The operations the sixteen-lane SHA-1 uses, each the meaning of one AVX-512F instruction.
/// Shuffles work within 128-bit quarters as the instructions do.
pub(crate) trait U32x16: Copy {
    /// All lanes `x`.
    fn splat(x: u32) -> Self;
    /// Sixteen little-endian words from a block (`vmovdqu32`).
    fn load(block: &[u8; 64]) -> Self;
    fn from_array(x: [u32; 16]) -> Self;
    fn to_array(self) -> [u32; 16];
    /// `vpaddd`.
    fn add(self, o: Self) -> Self;
    /// `vpxord`.
    fn xor(self, o: Self) -> Self;
    /// `vprold`.
    fn rol<const N: i32>(self) -> Self;
    /// `vpternlogd` with immediate `IMM` on `(x, y, z)`.
    fn ternlog<const IMM: i32>(x: Self, y: Self, z: Self) -> Self;
    /// `vpunpckldq`: per quarter `a0 b0 a1 b1`.
    fn unpacklo32(a: Self, b: Self) -> Self;
    /// `vpunpckhdq`: per quarter `a2 b2 a3 b3`.
    fn unpackhi32(a: Self, b: Self) -> Self;
    /// `vpunpcklqdq`: per quarter `a0 a1 b0 b1`.
    fn unpacklo64(a: Self, b: Self) -> Self;
    /// `vpunpckhqdq`: per quarter `a2 a3 b2 b3`.
    fn unpackhi64(a: Self, b: Self) -> Self;
    /// `vshufi32x4`: quarters `a[IMM & 3], a[IMM >> 2 & 3], b[IMM >> 4 & 3], b[IMM >> 6 & 3]`.
    fn shuf128<const IMM: i32>(a: Self, b: Self) -> Self;
    /// `vmovdqa32` with a mask: lane `l` from `a` where bit `l` of `mask` is set, else from `b`.
    fn select(mask: u16, a: Self, b: Self) -> Self;
}

/// The reference meaning of every [`U32x16`] operation, in plain arithmetic (the tests run the
/// sixteen-lane algorithm on it where there is no AVX-512).
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) struct Portable16([u32; 16]);

#[cfg(test)]
impl Portable16 {
    fn quarters(a: Self, b: Self, f: impl Fn([u32; 4], [u32; 4]) -> [u32; 4]) -> Self {
        let mut out = [0u32; 16];
        for (k, o) in out.chunks_exact_mut(4).enumerate() {
            let q = |x: &Self| -> [u32; 4] { core::array::from_fn(|i| x.0[4 * k + i]) };
            o.copy_from_slice(&f(q(&a), q(&b)));
        }
        Portable16(out)
    }

    fn quarter(x: Self, k: i32) -> [u32; 4] {
        let k = (k & 3) as usize;
        core::array::from_fn(|i| x.0[4 * k + i])
    }
}

#[cfg(test)]
impl U32x16 for Portable16 {
    fn splat(x: u32) -> Self {
        Portable16([x; 16])
    }
    fn load(block: &[u8; 64]) -> Self {
        let mut w = [0u32; 16];
        for (o, c) in w.iter_mut().zip(block.chunks_exact(4)) {
            *o = c.try_into().map(u32::from_le_bytes).unwrap_or(0);
        }
        Portable16(w)
    }
    fn from_array(x: [u32; 16]) -> Self {
        Portable16(x)
    }
    fn to_array(self) -> [u32; 16] {
        self.0
    }
    fn add(self, o: Self) -> Self {
        Portable16(core::array::from_fn(|l| self.0[l].wrapping_add(o.0[l])))
    }
    fn xor(self, o: Self) -> Self {
        Portable16(core::array::from_fn(|l| self.0[l] ^ o.0[l]))
    }
    fn rol<const N: i32>(self) -> Self {
        Portable16(self.0.map(|x| x.rotate_left(N as u32)))
    }
    fn ternlog<const IMM: i32>(x: Self, y: Self, z: Self) -> Self {
        Portable16(core::array::from_fn(|l| {
            let (x, y, z) = (x.0[l], y.0[l], z.0[l]);
            let mut r = 0u32;
            for i in 0..8 {
                if IMM >> i & 1 == 1 {
                    let mx = if i & 4 != 0 { x } else { !x };
                    let my = if i & 2 != 0 { y } else { !y };
                    let mz = if i & 1 != 0 { z } else { !z };
                    r |= mx & my & mz;
                }
            }
            r
        }))
    }
    fn unpacklo32(a: Self, b: Self) -> Self {
        Self::quarters(a, b, |a, b| [a[0], b[0], a[1], b[1]])
    }
    fn unpackhi32(a: Self, b: Self) -> Self {
        Self::quarters(a, b, |a, b| [a[2], b[2], a[3], b[3]])
    }
    fn unpacklo64(a: Self, b: Self) -> Self {
        Self::quarters(a, b, |a, b| [a[0], a[1], b[0], b[1]])
    }
    fn unpackhi64(a: Self, b: Self) -> Self {
        Self::quarters(a, b, |a, b| [a[2], a[3], b[2], b[3]])
    }
    fn shuf128<const IMM: i32>(a: Self, b: Self) -> Self {
        let q = [
            Self::quarter(a, IMM),
            Self::quarter(a, IMM >> 2),
            Self::quarter(b, IMM >> 4),
            Self::quarter(b, IMM >> 6),
        ];
        Portable16(core::array::from_fn(|l| q[l / 4][l % 4]))
    }
    fn select(mask: u16, a: Self, b: Self) -> Self {
        Portable16(core::array::from_fn(|l| {
            if mask >> l & 1 == 1 {
                a.0[l]
            } else {
                b.0[l]
            }
        }))
    }
}

/// One `zmm` register. Private to this module and only ever made inside [`run_avx512`], which
/// is compiled with AVX-512F enabled and called only with an [`Avx512`] token (so every
/// intrinsic below runs on a CPU that has AVX-512F).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Zmm(__m512i);

#[cfg(target_arch = "x86_64")]
impl U32x16 for Zmm {
    #[inline(always)]
    fn splat(x: u32) -> Self {
        // SAFETY: `Zmm` values exist only inside `run_avx512`, which needs AVX-512F (see the
        // type's doc); these methods are inlined into it. The other blocks here rest on this.
        Zmm(unsafe { _mm512_set1_epi32(x as i32) })
    }
    #[inline(always)]
    fn load(block: &[u8; 64]) -> Self {
        // SAFETY: `block` is 64 readable bytes and `loadu` needs no alignment; AVX-512F as
        // above.
        Zmm(unsafe { _mm512_loadu_si512(block.as_ptr().cast()) })
    }
    #[inline(always)]
    fn from_array(x: [u32; 16]) -> Self {
        // SAFETY: `x` is 64 readable bytes, `loadu` needs no alignment; AVX-512F as above.
        Zmm(unsafe { _mm512_loadu_si512(x.as_ptr().cast()) })
    }
    #[inline(always)]
    fn to_array(self) -> [u32; 16] {
        let mut out = [0u32; 16];
        // SAFETY: `out` is 64 writable bytes, `storeu` needs no alignment; AVX-512F as above.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), self.0) };
        out
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_add_epi32(self.0, o.0) })
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_xor_si512(self.0, o.0) })
    }
    #[inline(always)]
    fn rol<const N: i32>(self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_rol_epi32::<N>(self.0) })
    }
    #[inline(always)]
    fn ternlog<const IMM: i32>(x: Self, y: Self, z: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_ternarylogic_epi32::<IMM>(x.0, y.0, z.0) })
    }
    #[inline(always)]
    fn unpacklo32(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_unpacklo_epi32(a.0, b.0) })
    }
    #[inline(always)]
    fn unpackhi32(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_unpackhi_epi32(a.0, b.0) })
    }
    #[inline(always)]
    fn unpacklo64(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_unpacklo_epi64(a.0, b.0) })
    }
    #[inline(always)]
    fn unpackhi64(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_unpackhi_epi64(a.0, b.0) })
    }
    #[inline(always)]
    fn shuf128<const IMM: i32>(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_shuffle_i32x4::<IMM>(a.0, b.0) })
    }
    #[inline(always)]
    fn select(mask: u16, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F, as for `splat`.
        Zmm(unsafe { _mm512_mask_mov_epi32(b.0, mask, a.0) })
    }
}

/// Rows (one lane's block each) to columns (one message word of every lane each), big-endian.
#[inline(always)]
fn transpose_be<V: U32x16>(r: [V; 16]) -> [V; 16] {
    // Pairs of rows: per quarter k, words 4k, 4k+1 (lo) and 4k+2, 4k+3 (hi) of both rows.
    let t: [V; 16] = core::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i & 1 == 0 {
            V::unpacklo32(a, b)
        } else {
            V::unpackhi32(a, b)
        }
    });
    // Groups of four rows g: u[4g + j], quarter k = word 4k + j of rows 4g..4g+4.
    let u: [V; 16] = core::array::from_fn(|i| {
        let g = i & !3;
        let (t0, t1, t2, t3) = (t[g], t[g + 1], t[g + 2], t[g + 3]);
        match i & 3 {
            0 => V::unpacklo64(t0, t2),
            1 => V::unpackhi64(t0, t2),
            2 => V::unpacklo64(t1, t3),
            _ => V::unpackhi64(t1, t3),
        }
    });
    // A 4x4 transpose of quarters across u[j], u[4 + j], u[8 + j], u[12 + j]: word 4k + j of
    // all sixteen rows.
    let mut out = [V::splat(0); 16];
    for j in 0..4 {
        let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        let v0 = V::shuf128::<0x44>(a, b);
        let v1 = V::shuf128::<0xee>(a, b);
        let v2 = V::shuf128::<0x44>(c, d);
        let v3 = V::shuf128::<0xee>(c, d);
        out[j] = V::shuf128::<0x88>(v0, v2);
        out[4 + j] = V::shuf128::<0xdd>(v0, v2);
        out[8 + j] = V::shuf128::<0x88>(v1, v3);
        out[12 + j] = V::shuf128::<0xdd>(v1, v3);
    }
    let mask = V::splat(0x00ff_00ff);
    out.map(|x| V::ternlog::<{ imm::SELECT }>(mask, x.rol::<8>(), x.rol::<24>()))
}

/// One compression of every lane: `state` after absorbing the message words `w`.
#[inline(always)]
fn compress<V: U32x16>(state: [V; 5], mut w: [V; 16]) -> [V; 5] {
    let [mut a, mut b, mut c, mut d, mut e] = state;
    let k = [
        V::splat(0x5a82_7999),
        V::splat(0x6ed9_eba1),
        V::splat(0x8f1b_bcdc),
        V::splat(0xca62_c1d6),
    ];
    macro_rules! round {
        ($imm:expr, $k:expr, $wt:expr) => {{
            let f = V::ternlog::<{ $imm }>(b, c, d);
            let tmp = a.rol::<5>().add(f).add(e.add($k).add($wt));
            e = d;
            d = c;
            c = b.rol::<30>();
            b = a;
            a = tmp;
        }};
    }
    macro_rules! schedule {
        ($t:expr) => {{
            let t = $t;
            let x = V::ternlog::<{ imm::XOR3 }>(w[(t + 13) & 15], w[(t + 8) & 15], w[(t + 2) & 15])
                .xor(w[t & 15])
                .rol::<1>();
            w[t & 15] = x;
            x
        }};
    }
    for wt in w {
        round!(imm::SELECT, k[0], wt);
    }
    for t in 16..20 {
        let wt = schedule!(t);
        round!(imm::SELECT, k[0], wt);
    }
    for t in 20..40 {
        let wt = schedule!(t);
        round!(imm::XOR3, k[1], wt);
    }
    for t in 40..60 {
        let wt = schedule!(t);
        round!(imm::MAJ, k[2], wt);
    }
    for t in 60..80 {
        let wt = schedule!(t);
        round!(imm::XOR3, k[3], wt);
    }
    let out = [a, b, c, d, e];
    core::array::from_fn(|j| out[j].add(state[j]))
}

/// Sixteen streams of up to [`SHA1_RUN_MAX`] blocks each, the contract of
/// `x86::sha1ni_run::<16>`: lane `i` compresses `blocks[i][..n_blocks[i]]` into `h[i]`;
/// `mid[i]` receives its chaining value after the first `n_mid[i]` blocks (when
/// `1 <= n_mid[i] <= n_blocks[i]`; otherwise it is left alone). Lanes with fewer blocks than
/// the longest compress whatever block their table names and drop the result.
#[inline(always)]
fn run<V: U32x16>(
    h: &mut [[u32; 5]; LANES],
    blocks: &[[&[u8; 64]; SHA1_RUN_MAX]; LANES],
    n_blocks: [usize; LANES],
    n_mid: [usize; LANES],
    mid: &mut [[u32; 5]; LANES],
) {
    let mut state: [V; 5] =
        core::array::from_fn(|j| V::from_array(core::array::from_fn(|l| h[l][j])));
    let mut mids: [V; 5] =
        core::array::from_fn(|j| V::from_array(core::array::from_fn(|l| mid[l][j])));
    let steps = n_blocks
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(SHA1_RUN_MAX);
    #[allow(clippy::needless_range_loop)] // `step` indexes every lane's column
    for step in 0..steps {
        let (mut active, mut at_mid) = (0u16, 0u16);
        for l in 0..LANES {
            if step < n_blocks[l] {
                active |= 1 << l;
                if step + 1 == n_mid[l] {
                    at_mid |= 1 << l;
                }
            }
        }
        let rows: [V; 16] = core::array::from_fn(|l| V::load(blocks[l][step]));
        let next = compress(state, transpose_be(rows));
        state = core::array::from_fn(|j| V::select(active, next[j], state[j]));
        mids = core::array::from_fn(|j| V::select(at_mid, state[j], mids[j]));
    }
    let (s, m) = (state.map(V::to_array), mids.map(V::to_array));
    for l in 0..LANES {
        for j in 0..5 {
            h[l][j] = s[j][l];
            mid[l][j] = m[j][l];
        }
    }
}

/// A proof that the CPU has AVX-512F (and AVX2, which LLVM assumes with it: the compiled code
/// uses a few VEX instructions such as `vinserti128`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx512(());

#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpuid_avx512f, "avx512f", "avx2");

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        cpuid_avx512f::get().then_some(Avx512(()))
    }

    /// [`run`] on `zmm` registers.
    pub(crate) fn run(
        self,
        h: &mut [[u32; 5]; LANES],
        blocks: &[[&[u8; 64]; SHA1_RUN_MAX]; LANES],
        n_blocks: [usize; LANES],
        n_mid: [usize; LANES],
        mid: &mut [[u32; 5]; LANES],
    ) {
        // SAFETY: an `Avx512` token exists only after `detect` saw AVX-512F (CPUID and the OS's
        // `zmm` state, as `cpufeatures` checks).
        unsafe { run_avx512(h, blocks, n_blocks, n_mid, mid) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_avx512(
    h: &mut [[u32; 5]; LANES],
    blocks: &[[&[u8; 64]; SHA1_RUN_MAX]; LANES],
    n_blocks: [usize; LANES],
    n_mid: [usize; LANES],
    mid: &mut [[u32; 5]; LANES],
) {
    run::<Zmm>(h, blocks, n_blocks, n_mid, mid);
}

/// [`run`] on [`Portable16`]: the same algorithm, for the tests (and the self-test's own test).
#[cfg(test)]
pub(crate) fn run_portable(
    h: &mut [[u32; 5]; LANES],
    blocks: &[[&[u8; 64]; SHA1_RUN_MAX]; LANES],
    n_blocks: [usize; LANES],
    n_mid: [usize; LANES],
    mid: &mut [[u32; 5]; LANES],
) {
    run::<Portable16>(h, blocks, n_blocks, n_mid, mid);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha1state::compress1;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Random chaining values, blocks, lengths (0 to 10 blocks per lane) and mid points, against
    /// the `sha1` crate's compression block by block.
    fn check_run(
        run: impl Fn(
            &mut [[u32; 5]; LANES],
            &[[&[u8; 64]; SHA1_RUN_MAX]; LANES],
            [usize; LANES],
            [usize; LANES],
            &mut [[u32; 5]; LANES],
        ),
        seed: u64,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..200 {
            let data: Vec<[[u8; 64]; SHA1_RUN_MAX]> = (0..LANES)
                .map(|_| {
                    core::array::from_fn(|_| {
                        let mut b = [0u8; 64];
                        rng.fill(&mut b[..]);
                        b
                    })
                })
                .collect();
            let table: [[&[u8; 64]; SHA1_RUN_MAX]; LANES] =
                core::array::from_fn(|l| core::array::from_fn(|s| &data[l][s]));
            let h0: [[u32; 5]; LANES] = core::array::from_fn(|_| rng.gen());
            let n_blocks: [usize; LANES] = core::array::from_fn(|l| {
                if round % 4 == 0 {
                    SHA1_RUN_MAX - l % 3
                } else {
                    rng.gen_range(0..=SHA1_RUN_MAX)
                }
            });
            let n_mid: [usize; LANES] = core::array::from_fn(|_| rng.gen_range(0..=SHA1_RUN_MAX));
            let mid0: [[u32; 5]; LANES] = core::array::from_fn(|_| rng.gen());
            let (mut h, mut mid) = (h0, mid0);
            run(&mut h, &table, n_blocks, n_mid, &mut mid);
            for l in 0..LANES {
                let mut want = h0[l];
                let mut want_mid = mid0[l];
                for (s, block) in data[l].iter().enumerate().take(n_blocks[l]) {
                    compress1(&mut want, block);
                    if s + 1 == n_mid[l] {
                        want_mid = want;
                    }
                }
                assert_eq!(h[l], want, "round {round} lane {l}");
                assert_eq!(mid[l], want_mid, "round {round} lane {l} mid");
            }
        }
    }

    /// The algorithm (transposition, truth tables, masking) on the portable instance: runs
    /// everywhere.
    #[test]
    fn portable16_matches_sha1_crate() {
        check_run(run_portable, 5);
    }

    /// The `zmm` instance: runs only on a CPU with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_matches_sha1_crate() {
        let Some(k) = Avx512::detect() else {
            eprintln!("avx512_matches_sha1_crate: SKIPPED, this CPU has no AVX-512F");
            return;
        };
        check_run(|h, b, n, m, mid| k.run(h, b, n, m, mid), 6);
    }

    /// Every `vpternlogd` immediate against the boolean function it stands for.
    #[test]
    fn ternlog_immediates() {
        let (x, y, z) = (
            Portable16::splat(0xf0f0_f0f0),
            Portable16::splat(0xcccc_cccc),
            Portable16::splat(0xaaaa_aaaa),
        );
        let (xa, ya, za) = (0xf0f0_f0f0u32, 0xcccc_ccccu32, 0xaaaa_aaaau32);
        let sel = Portable16::ternlog::<{ imm::SELECT }>(x, y, z).to_array()[0];
        assert_eq!(sel, (xa & ya) | (!xa & za));
        let x3 = Portable16::ternlog::<{ imm::XOR3 }>(x, y, z).to_array()[0];
        assert_eq!(x3, xa ^ ya ^ za);
        let maj = Portable16::ternlog::<{ imm::MAJ }>(x, y, z).to_array()[0];
        assert_eq!(maj, (xa & ya) | (xa & za) | (ya & za));
    }
}
