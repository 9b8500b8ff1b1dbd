//! x86-64 CGO kernels (proposal 359's `ENC_UIV`, `DEC_UIV`, `UPDATE_UIV`; see
//! [`reference`](super::reference) for the definitions).
//!
//! Two kernels share this code:
//! - *narrow*: AES-NI and PCLMULQDQ on `xmm` registers, eight counter blocks at a time;
//! - *wide*: VAES and VPCLMULQDQ on `ymm` registers for the bulk of each cell (the 31-block PRF
//!   keystream, 16 blocks in flight, and the 32-block ET POLYVAL, two blocks per multiply);
//!   the one-block steps (ET's AES block, the PRF's one-block POLYVAL) stay on `xmm`.
//!
//! POLYVAL over the 32 blocks of an ET tweak uses aggregated reduction: with the powers
//! `KU^1 .. KU^32` precomputed (per key, in [`Sched`]), `UH = Σ X_j • KU^(32-j)` needs 32
//! carry-less products accumulated unreduced and one Montgomery reduction. A key update makes
//! only `KU^1 .. KU^8` (the mask then runs Horner over four chunks of eight); all 32 are made
//! once the same keys are used a second time.
//!
//! Safety: every function that executes these instructions is a `#[target_feature]` function;
//! the only ways in ([`run_one`], [`run_batch`] and the [`Prims`] impls) hold a [`Token`], which
//! exists only after run-time detection saw the instructions.

use core::arch::x86_64::*;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{
    Cache, CgoJob, CgoOp, CgoOutcome, Dir, DirKeys, EncArgs, Prims, SendmeTag, BLK, PAYLOAD_LEN,
    UIV_KEY_LEN,
};
use crate::CellBody;

/// Number of POLYVAL powers kept: one per block of an ET tweak (`T'`, `CMD | X_R`, 30 more).
const NPOW: usize = 32;

/// The x86 kernels' schedule for one direction's `J | S`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
#[repr(C, align(32))]
pub(crate) struct Sched {
    /// `KB` encryption round keys (ET encrypts one block: only `xmm` use).
    et_enc: [[u8; 16]; 11],
    /// `KB` decryption round keys (`aesdec` order), clients only.
    et_dec: [[u8; 16]; 11],
    /// `K` encryption round keys, doubled.
    prf: [[u8; 32]; 11],
    /// `ku_pow[j] = KU^(32 - j)`: the power block `j` of an ET tweak is multiplied by when all
    /// 32 are present; with only eight (`npow == 8`), entries `24..32` (`KU^8 .. KU^1`).
    ku_pow: [[u8; 16]; NPOW],
    /// For Karatsuba: `lo ^ hi` of each `ku_pow` entry, in both halves.
    ku_kar: [[u8; 16]; NPOW],
    /// `B`.
    b: [u8; 16],
    /// How many powers of `KU` are present: 8 right after a key update (cheap to make, used
    /// with four reductions per mask), 32 once the keys are used a second time (one reduction).
    npow: u8,
    /// Masks computed since the last key update.
    uses: u8,
}

impl Sched {
    fn zero() -> Box<Sched> {
        Box::new(Sched {
            et_enc: [[0; 16]; 11],
            et_dec: [[0; 16]; 11],
            prf: [[0; 32]; 11],
            ku_pow: [[0; 16]; NPOW],
            ku_kar: [[0; 16]; NPOW],
            b: [0; 16],
            npow: 0,
            uses: 0,
        })
    }
}

/// Proof that a kernel's instructions are present.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    wide: bool,
}

impl Token {
    /// AES-NI, PCLMULQDQ, SSE4.1 (the narrow kernel).
    pub(crate) fn aesni() -> Option<Token> {
        (std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3"))
        .then_some(Token { wide: false })
    }

    /// The narrow kernel's features plus AVX2, VAES and VPCLMULQDQ (the wide kernel).
    pub(crate) fn vaes256() -> Option<Token> {
        (Token::aesni().is_some()
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq"))
        .then_some(Token { wide: true })
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers (narrow features; inlined into both kernels).

#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn ld(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn st(b: &mut [u8; 16], v: __m128i) {
    // SAFETY: `b` is 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}

/// 16 bytes of `s` from `off` (bounds-checked; offsets are constants after inlining).
#[inline(always)]
fn at<const N: usize>(s: &[u8; N], off: usize) -> &[u8; 16] {
    let r: &[u8] = &s[off..off + 16];
    // The slice is 16 bytes by construction.
    #[allow(clippy::unwrap_used)]
    r.try_into().unwrap()
}

#[inline(always)]
fn at_mut<const N: usize>(s: &mut [u8; N], off: usize) -> &mut [u8; 16] {
    let r: &mut [u8] = &mut s[off..off + 16];
    #[allow(clippy::unwrap_used)]
    r.try_into().unwrap()
}

/// Montgomery reduction of the 256-bit product `hi:mid:lo` to `a • b = a b x^-128` mod
/// `x^128 + x^127 + x^126 + x^121 + 1` (RFC 8452 §3), the POLYVAL field product.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn reduce(lo: __m128i, mid: __m128i, hi: __m128i) -> __m128i {
    let lo = _mm_xor_si128(lo, _mm_slli_si128::<8>(mid));
    let hi = _mm_xor_si128(hi, _mm_srli_si128::<8>(mid));
    // x^-64 twice: fold the low 64 bits up with the constant 0xc2 << 56.
    let poly = _mm_set_epi64x(0xc200_0000_0000_0000_u64 as i64, 1);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    _mm_xor_si128(hi, lo)
}

/// `a • b` (POLYVAL's field product).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn gf_mul(a: __m128i, b: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128::<0x00>(a, b);
    let hi = _mm_clmulepi64_si128::<0x11>(a, b);
    let mid = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x01>(a, b),
        _mm_clmulepi64_si128::<0x10>(a, b),
    );
    reduce(lo, mid, hi)
}

/// `a • a`: a square in `GF(2)[x]` has no cross terms, so two carry-less products, not four.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn gf_sqr(a: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128::<0x00>(a, a);
    let hi = _mm_clmulepi64_si128::<0x11>(a, a);
    reduce(lo, _mm_setzero_si128(), hi)
}

/// `a • b` with Karatsuba: three carry-less products instead of four (the multiplier, not
/// latency, limits the key update's eight powers).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn gf_mul_kar(a: __m128i, b: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128::<0x00>(a, b);
    let hi = _mm_clmulepi64_si128::<0x11>(a, b);
    let ak = _mm_xor_si128(a, _mm_shuffle_epi32::<0x4e>(a));
    let bk = _mm_xor_si128(b, _mm_shuffle_epi32::<0x4e>(b));
    let mid = _mm_clmulepi64_si128::<0x00>(ak, bk);
    reduce(lo, _mm_xor_si128(mid, _mm_xor_si128(lo, hi)), hi)
}

#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn rk(keys: &[[u8; 32]; 11], i: usize) -> __m128i {
    ld(at(&keys[i], 0))
}

/// AES-128 encryption of one block.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn aes_enc(keys: &[[u8; 16]; 11], b: __m128i) -> __m128i {
    let mut s = _mm_xor_si128(b, ld(&keys[0]));
    for k in &keys[1..10] {
        s = _mm_aesenc_si128(s, ld(k));
    }
    _mm_aesenclast_si128(s, ld(&keys[10]))
}

/// AES-128 encryption of two blocks under two keys, round by round (two latency chains).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn aes_enc2(
    ka: &[[u8; 16]; 11],
    a: __m128i,
    kb: &[[u8; 16]; 11],
    b: __m128i,
) -> (__m128i, __m128i) {
    let mut a = _mm_xor_si128(a, ld(&ka[0]));
    let mut b = _mm_xor_si128(b, ld(&kb[0]));
    for i in 1..10 {
        a = _mm_aesenc_si128(a, ld(&ka[i]));
        b = _mm_aesenc_si128(b, ld(&kb[i]));
    }
    (
        _mm_aesenclast_si128(a, ld(&ka[10])),
        _mm_aesenclast_si128(b, ld(&kb[10])),
    )
}

/// AES-128 decryption of one block.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn aes_dec(keys: &[[u8; 16]; 11], b: __m128i) -> __m128i {
    let mut s = _mm_xor_si128(b, ld(&keys[0]));
    for k in &keys[1..10] {
        s = _mm_aesdec_si128(s, ld(k));
    }
    _mm_aesdeclast_si128(s, ld(&keys[10]))
}

/// One step of the AES-128 key schedule (FIPS-197 §5.2): `SubWord(RotWord(w3)) ^ Rcon` comes
/// from `aesenclast` on `RotWord(w3)` broadcast to all four columns (ShiftRows then moves
/// nothing), which is faster than `aeskeygenassist` on the AMD cores measured.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn key_step(k: __m128i, rcon: i32) -> __m128i {
    let t = _mm_aesenclast_si128(_mm_shuffle_epi8(k, ld(&ROT)), _mm_set1_epi32(rcon));
    // The prefix XOR of the four words in two steps (shift by one word, then by two) rather
    // than three: a shorter chain beside the `aesenclast`.
    let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
    let k = _mm_xor_si128(k, _mm_slli_si128::<8>(k));
    _mm_xor_si128(k, t)
}

/// `RotWord(w3)` in every column, for [`key_step`].
const ROT: [u8; 16] = [
    13, 14, 15, 12, 13, 14, 15, 12, 13, 14, 15, 12, 13, 14, 15, 12,
];

/// AES-128 round constants (FIPS-197 §5.2).
const RCON: [i32; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];

/// The eleven AES-128 round keys of two keys, expanded side by side.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn expand2(a: __m128i, b: __m128i) -> ([__m128i; 11], [__m128i; 11]) {
    let mut ra = [a; 11];
    let mut rb = [b; 11];
    for (i, rc) in RCON.iter().enumerate() {
        ra[i + 1] = key_step(ra[i], *rc);
        rb[i + 1] = key_step(rb[i], *rc);
    }
    (ra, rb)
}

/// The eleven AES-128 round keys of `key`.
#[cfg(test)]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn expand(key: __m128i) -> [__m128i; 11] {
    expand2(key, key).0
}

#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn store_doubled(out: &mut [[u8; 32]; 11], keys: &[__m128i; 11]) {
    for (o, k) in out.iter_mut().zip(keys) {
        st(at_mut(o, 0), *k);
        st(at_mut(o, 16), *k);
    }
}

/// [`store_doubled`] with one `ymm` store per key (half the stores; a later 32-byte load of
/// it is forwarded from the store buffer, which a load spanning two 16-byte stores is not).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2")]
fn store_doubled_avx(out: &mut [[u8; 32]; 11], keys: &[__m128i; 11]) {
    for (o, k) in out.iter_mut().zip(keys) {
        // SAFETY: `o` is 32 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm256_broadcastsi128_si256(*k)) }
    }
}

#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn store_keys(out: &mut [[u8; 16]; 11], keys: &[__m128i; 11]) {
    for (o, k) in out.iter_mut().zip(keys) {
        st(o, *k);
    }
}

/// Stores `KU^(i+1)` (`pw[i]`) for `i < n` in the table, with its Karatsuba half-sum.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn store_powers(s: &mut Sched, pw: &[__m128i], from: usize) {
    for (i, p) in pw.iter().enumerate().skip(from) {
        let j = NPOW - 1 - i;
        st(&mut s.ku_pow[j], *p);
        let k = _mm_xor_si128(*p, _mm_shuffle_epi32::<0x4e>(*p));
        st(&mut s.ku_kar[j], k);
    }
}

/// Builds the schedule of `raw = KB | KU | K | B`, with eight powers of `KU`.
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn build(raw: &[u8; UIV_KEY_LEN], client: bool, s: &mut Sched) {
    let keys = [0, 16, 32, 48].map(|o| ld(at(raw, o)));
    build_regs(&keys, client, s);
}

/// [`build_regs`] for the wide kernel: AVX encodings, and the PRF round keys stored with one
/// `ymm` store each ([`store_doubled_avx`]).
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn build_regs_avx(keys: &[__m128i; 4], client: bool, s: &mut Sched) {
    if client {
        let (mut e, mut p) = ([keys[0]; 11], [keys[2]; 11]);
        expand2_vex(keys[0], keys[2], |i, a, b| {
            e[i] = a;
            p[i] = b;
        });
        store_et(s, &e, client);
        store_doubled_avx(&mut s.prf, &p);
    } else {
        // Each round key stored as soon as it is made (no spills of the 22).
        let (et, prf) = (&mut s.et_enc, &mut s.prf);
        expand2_vex(keys[0], keys[2], |i, a, b| {
            st(&mut et[i], a);
            // SAFETY: `prf[i]` is 32 writable bytes.
            unsafe {
                _mm256_storeu_si256(prf[i].as_mut_ptr().cast(), _mm256_broadcastsi128_si256(b))
            }
        });
    }
    store_powers_b_wide(s, keys);
}

/// `a • b` in each 128-bit lane (Karatsuba, two products per `vpclmulqdq`).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn gf_mul_kar_wide(a: __m256i, b: __m256i) -> __m256i {
    let lo = _mm256_clmulepi64_epi128::<0x00>(a, b);
    let hi = _mm256_clmulepi64_epi128::<0x11>(a, b);
    let ak = _mm256_xor_si256(a, _mm256_shuffle_epi32::<0x4e>(a));
    let bk = _mm256_xor_si256(b, _mm256_shuffle_epi32::<0x4e>(b));
    let mid = _mm256_xor_si256(
        _mm256_clmulepi64_epi128::<0x00>(ak, bk),
        _mm256_xor_si256(lo, hi),
    );
    // As `reduce`, lane by lane.
    let lo = _mm256_xor_si256(lo, _mm256_bslli_epi128::<8>(mid));
    let hi = _mm256_xor_si256(hi, _mm256_bsrli_epi128::<8>(mid));
    let c = 0xc200_0000_0000_0000_u64 as i64;
    let poly = _mm256_set_epi64x(c, 1, c, 1);
    let t = _mm256_clmulepi64_epi128::<0x10>(lo, poly);
    let lo = _mm256_xor_si256(_mm256_shuffle_epi32::<0x4e>(lo), t);
    let t = _mm256_clmulepi64_epi128::<0x10>(lo, poly);
    let lo = _mm256_xor_si256(_mm256_shuffle_epi32::<0x4e>(lo), t);
    _mm256_xor_si256(hi, lo)
}

/// [`store_powers_b`] for the wide kernel: `KU^5 .. KU^8` as two two-lane products by
/// `KU^4`, each stored with one `ymm` store (`ku_pow[26..28]` = `KU^5, KU^4`... in table
/// order: entry `j` holds `KU^(32 - j)`).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn store_powers_b_wide(s: &mut Sched, keys: &[__m128i; 4]) {
    let h = keys[1];
    let h2 = gf_sqr(h);
    let h3 = gf_mul_kar(h2, h);
    let h4 = gf_sqr(h2);
    store_powers(s, &[h, h2, h3, h4], 0);
    let h4x2 = _mm256_broadcastsi128_si256(h4);
    // Low lane first: table entries 26, 27 = KU^6, KU^5; entries 24, 25 = KU^8, KU^7.
    let p65 = gf_mul_kar_wide(_mm256_set_m128i(h, h2), h4x2);
    let p87 = gf_mul_kar_wide(_mm256_set_m128i(h3, h4), h4x2);
    let kar = |v: __m256i| _mm256_xor_si256(v, _mm256_shuffle_epi32::<0x4e>(v));
    let st2 = |t: &mut [[u8; 16]; NPOW], j: usize, v: __m256i| {
        let d = &mut t.as_flattened_mut()[16 * j..16 * j + 32];
        // SAFETY: `d` is 32 writable bytes (a bounds-checked slice).
        unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), v) }
    };
    st2(&mut s.ku_pow, 26, p65);
    st2(&mut s.ku_pow, 24, p87);
    st2(&mut s.ku_kar, 26, kar(p65));
    st2(&mut s.ku_kar, 24, kar(p87));
    st(&mut s.b, keys[3]);
    s.npow = 8;
    s.uses = 0;
}

/// [`expand2`] with each step of both keys in one inline-assembly block (AVX encodings):
/// the two serial chains (`vpshufb`, `vaesenclast`, `vpxor` per step, ~6 cycles) interleaved
/// in program order. Left to LLVM, one expansion is emitted whole before the other, and the
/// second chain starts only once the first has drained from the (small) vector scheduler.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2")]
fn expand2_vex(a: __m128i, b: __m128i, mut f: impl FnMut(usize, __m128i, __m128i)) {
    let rot = ld(&ROT);
    let (mut ka, mut kb) = (a, b);
    f(0, ka, kb);
    for (i, rc) in RCON.iter().enumerate() {
        let rc = _mm_set1_epi32(*rc);
        // SAFETY: register-only AES and SSE/AVX operations; the caller's features include
        // AES-NI and AVX.
        unsafe {
            core::arch::asm!(
                "vpshufb {ta}, {ka}, {rot}",
                "vpshufb {tb}, {kb}, {rot}",
                "vaesenclast {ta}, {ta}, {rc}",
                "vaesenclast {tb}, {tb}, {rc}",
                "vpslldq {sa}, {ka}, 4",
                "vpslldq {sb}, {kb}, 4",
                "vpxor {ka}, {ka}, {sa}",
                "vpxor {kb}, {kb}, {sb}",
                "vpslldq {sa}, {ka}, 8",
                "vpslldq {sb}, {kb}, 8",
                "vpxor {ka}, {ka}, {sa}",
                "vpxor {kb}, {kb}, {sb}",
                "vpxor {ka}, {ka}, {ta}",
                "vpxor {kb}, {kb}, {tb}",
                ka = inout(xmm_reg) ka,
                kb = inout(xmm_reg) kb,
                rot = in(xmm_reg) rot,
                rc = in(xmm_reg) rc,
                ta = out(xmm_reg) _,
                tb = out(xmm_reg) _,
                sa = out(xmm_reg) _,
                sb = out(xmm_reg) _,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        f(i + 1, ka, kb);
    }
}

/// Builds the schedule of `KB, KU, K, B` (in registers, e.g. straight from a key update).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn build_regs(keys: &[__m128i; 4], client: bool, s: &mut Sched) {
    let (e, p) = expand2(keys[0], keys[2]);
    store_et(s, &e, client);
    store_doubled(&mut s.prf, &p);
    store_powers_b(s, keys);
}

/// Stores ET's round keys `e` (and, for a client, the decryption keys made from them).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn store_et(s: &mut Sched, e: &[__m128i; 11], client: bool) {
    store_keys(&mut s.et_enc, e);
    if client {
        st(&mut s.et_dec[0], e[10]);
        for i in 1..10 {
            st(&mut s.et_dec[i], _mm_aesimc_si128(e[10 - i]));
        }
        st(&mut s.et_dec[10], e[0]);
    }
}

/// Makes and stores `KU^1 .. KU^8` from `keys[1] = KU`, and stores `B = keys[3]`.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn store_powers_b(s: &mut Sched, keys: &[__m128i; 4]) {
    let h = keys[1];
    let mut pw = [h; 8];
    pw[1] = gf_sqr(h);
    pw[2] = gf_mul_kar(pw[1], h);
    pw[3] = gf_sqr(pw[1]);
    for i in 0..4 {
        pw[4 + i] = gf_mul_kar(pw[i], pw[3]);
    }
    store_powers(s, &pw, 0);
    st(&mut s.b, keys[3]);
    s.npow = 8;
    s.uses = 0;
}

/// Extends eight powers of `KU` to all 32.
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn extend_powers(s: &mut Sched) {
    let mut pw = [_mm_setzero_si128(); NPOW];
    for (i, p) in pw.iter_mut().enumerate().take(8) {
        *p = ld(&s.ku_pow[NPOW - 1 - i]);
    }
    let mut have = 8;
    while have < NPOW {
        let top = pw[have - 1];
        for i in 0..have {
            pw[have + i] = gf_mul(pw[i], top);
        }
        have *= 2;
    }
    store_powers(s, &pw, 8);
    s.npow = NPOW as u8;
}

/// The PRF's counter block for `tweak` with offset `t` blocks: `(tweak • B)` with the low six
/// bits of its last byte cleared, plus `t`.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn prf_iv(s: &Sched, tweak: __m128i, t: i64) -> __m128i {
    let h = gf_mul(tweak, ld(&s.b));
    let keep = _mm_set_epi64x(0xc0ff_ffff_ffff_ffff_u64 as i64, -1);
    _mm_add_epi64(_mm_and_si128(h, keep), _mm_set_epi64x(t << 56, 0))
}

/// `PRF(S, nonce, 1)`, the 80 bytes of a key update, as five blocks.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn update_stream(s: &Sched, nonce: __m128i) -> [__m128i; 5] {
    let iv = prf_iv(s, nonce, 31);
    let mut b: [__m128i; 5] =
        core::array::from_fn(|i| _mm_xor_si128(ctr_add(iv, i), rk(&s.prf, 0)));
    for r in 1..10 {
        let k = rk(&s.prf, r);
        for x in &mut b {
            *x = _mm_aesenc_si128(*x, k);
        }
    }
    let k = rk(&s.prf, 10);
    b.map(|x| _mm_aesenclast_si128(x, k))
}

/// Two key-update streams at once (ten independent blocks).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn update_stream2(
    sa: &Sched,
    na: __m128i,
    sb: &Sched,
    nb: __m128i,
) -> ([__m128i; 5], [__m128i; 5]) {
    let (ia, ib) = (prf_iv(sa, na, 31), prf_iv(sb, nb, 31));
    let mut a: [__m128i; 5] =
        core::array::from_fn(|i| _mm_xor_si128(ctr_add(ia, i), rk(&sa.prf, 0)));
    let mut b: [__m128i; 5] =
        core::array::from_fn(|i| _mm_xor_si128(ctr_add(ib, i), rk(&sb.prf, 0)));
    for r in 1..10 {
        let (ka, kb) = (rk(&sa.prf, r), rk(&sb.prf, r));
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            *x = _mm_aesenc_si128(*x, ka);
            *y = _mm_aesenc_si128(*y, kb);
        }
    }
    let (ka, kb) = (rk(&sa.prf, 10), rk(&sb.prf, 10));
    (
        a.map(|x| _mm_aesenclast_si128(x, ka)),
        b.map(|x| _mm_aesenclast_si128(x, kb)),
    )
}

/// The wide kernel's PRF round key `i` as a `ymm` (both lanes; the table holds it doubled).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn rkw(keys: &[[u8; 32]; 11], i: usize) -> __m256i {
    // SAFETY: each entry is 32 readable bytes.
    unsafe { _mm256_loadu_si256(keys[i].as_ptr().cast()) }
}

/// [`update_stream`] on `ymm`: the five blocks as three two-block `vaesenc` chains (one lane
/// unused), 33 AES instructions instead of 55.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn update_stream_wide(s: &Sched, nonce: __m128i) -> [__m128i; 5] {
    let iv = _mm256_broadcastsi128_si256(prf_iv(s, nonce, 31));
    let inc = |k: usize| {
        // SAFETY: `CTR_INC[k]` is 32 readable bytes.
        unsafe { _mm256_loadu_si256(CTR_INC[k].as_ptr().cast()) }
    };
    let k0 = rkw(&s.prf, 0);
    let mut b: [__m256i; 3] =
        core::array::from_fn(|k| _mm256_xor_si256(_mm256_add_epi64(iv, inc(k)), k0));
    for r in 1..10 {
        let k = rkw(&s.prf, r);
        // SAFETY: register-only VAES rounds; this function's features include VAES and AVX.
        unsafe {
            core::arch::asm!(
                "vaesenc {0}, {0}, {k}",
                "vaesenc {1}, {1}, {k}",
                "vaesenc {2}, {2}, {k}",
                inout(ymm_reg) b[0],
                inout(ymm_reg) b[1],
                inout(ymm_reg) b[2],
                k = in(ymm_reg) k,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
    }
    let k = rkw(&s.prf, 10);
    let b = b.map(|x| _mm256_aesenclast_epi128(x, k));
    [
        _mm256_castsi256_si128(b[0]),
        _mm256_extracti128_si256::<1>(b[0]),
        _mm256_castsi256_si128(b[1]),
        _mm256_extracti128_si256::<1>(b[1]),
        _mm256_castsi256_si128(b[2]),
    ]
}

/// [`update_stream2`] on `ymm`: each direction's blocks 0-3 as two two-block chains under its
/// own keys, both directions' block 4 in one chain under a two-key round key; 55 AES
/// instructions instead of 110.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn update_stream2_wide(
    sa: &Sched,
    na: __m128i,
    sb: &Sched,
    nb: __m128i,
) -> ([__m128i; 5], [__m128i; 5]) {
    let (ia, ib) = (prf_iv(sa, na, 31), prf_iv(sb, nb, 31));
    let (va, vb) = (
        _mm256_broadcastsi128_si256(ia),
        _mm256_broadcastsi128_si256(ib),
    );
    let inc = |k: usize| {
        // SAFETY: `CTR_INC[k]` is 32 readable bytes.
        unsafe { _mm256_loadu_si256(CTR_INC[k].as_ptr().cast()) }
    };
    // Lane 0 direction a, lane 1 direction b: round key `i` of each.
    let mixed = |i: usize| _mm256_set_m128i(rk(&sb.prf, i), rk(&sa.prf, i));
    let (ka, kb, kab) = (rkw(&sa.prf, 0), rkw(&sb.prf, 0), mixed(0));
    let mut b = [
        _mm256_xor_si256(_mm256_add_epi64(va, inc(0)), ka),
        _mm256_xor_si256(_mm256_add_epi64(va, inc(1)), ka),
        _mm256_xor_si256(_mm256_add_epi64(vb, inc(0)), kb),
        _mm256_xor_si256(_mm256_add_epi64(vb, inc(1)), kb),
        _mm256_xor_si256(_mm256_set_m128i(ctr_add(ib, 4), ctr_add(ia, 4)), kab),
    ];
    for r in 1..10 {
        let (ka, kb, kab) = (rkw(&sa.prf, r), rkw(&sb.prf, r), mixed(r));
        // SAFETY: register-only VAES rounds; this function's features include VAES and AVX.
        unsafe {
            core::arch::asm!(
                "vaesenc {0}, {0}, {ka}",
                "vaesenc {1}, {1}, {ka}",
                "vaesenc {2}, {2}, {kb}",
                "vaesenc {3}, {3}, {kb}",
                "vaesenc {4}, {4}, {kab}",
                inout(ymm_reg) b[0],
                inout(ymm_reg) b[1],
                inout(ymm_reg) b[2],
                inout(ymm_reg) b[3],
                inout(ymm_reg) b[4],
                ka = in(ymm_reg) ka,
                kb = in(ymm_reg) kb,
                kab = in(ymm_reg) kab,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
    }
    let (ka, kb, kab) = (rkw(&sa.prf, 10), rkw(&sb.prf, 10), mixed(10));
    let b = [
        _mm256_aesenclast_epi128(b[0], ka),
        _mm256_aesenclast_epi128(b[1], ka),
        _mm256_aesenclast_epi128(b[2], kb),
        _mm256_aesenclast_epi128(b[3], kb),
        _mm256_aesenclast_epi128(b[4], kab),
    ];
    let lo = _mm256_castsi256_si128;
    let hi = _mm256_extracti128_si256::<1>;
    (
        [lo(b[0]), hi(b[0]), lo(b[1]), hi(b[1]), lo(b[4])],
        [lo(b[2]), hi(b[2]), lo(b[3]), hi(b[3]), hi(b[4])],
    )
}

/// Installs a key update's output: `J' | S'` into `k` (rebuilding its schedule from the
/// registers, with AVX encodings if `wide`) and `N'`.
///
/// # Safety
/// With `wide`, the CPU must have the wide kernel's features (AVX2, VAES, VPCLMULQDQ).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
unsafe fn install_update(k: &mut DirKeys, nonce: &mut [u8; BLK], ks: &[__m128i; 5], wide: bool) {
    for (i, v) in ks.iter().take(4).enumerate() {
        st(at_mut(&mut k.raw, 16 * i), *v);
    }
    st(nonce, ks[4]);
    let keys = [ks[0], ks[1], ks[2], ks[3]];
    match &mut k.cache {
        // SAFETY: the caller guarantees the wide kernel's features when `wide`.
        Cache::X86(s) if wide => unsafe { build_regs_avx(&keys, k.client, s) },
        Cache::X86(s) => build_regs(&keys, k.client, s),
        // Callers made it X86 to compute `ks`.
        _ => k.cache = Cache::Stale,
    }
}

/// `+i` in the last byte of a block, for `i < 32` (see [`CTR_INC`]).
static CTR_INC1: [[u64; 2]; 32] = {
    let mut t = [[0u64; 2]; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = [0, (i as u64) << 56];
        i += 1;
    }
    t
};

/// `iv + i` for the PRF's counter, `i < 32` (the last byte never carries: see the reference).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn ctr_add(iv: __m128i, i: usize) -> __m128i {
    let inc = &CTR_INC1[i % 32];
    // SAFETY: `inc` is 16 readable bytes.
    _mm_add_epi64(iv, unsafe { _mm_loadu_si128(inc.as_ptr().cast()) })
}

/// XORs one keystream block into `out` (up to 16 bytes).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn xor_block_into(out: &mut [u8], ks: __m128i) {
    if let Ok(o) = <&mut [u8; 16]>::try_from(&mut out[..]) {
        let v = _mm_xor_si128(ld(o), ks);
        st(o, v);
    } else {
        let mut tmp = [0u8; 16];
        st(&mut tmp, ks);
        for (o, k) in out.iter_mut().zip(tmp) {
            *o ^= k;
        }
        tmp.zeroize();
    }
}

/// One AES round on eight `xmm` chains, round-major. In inline assembly because LLVM, left to
/// itself, runs each chain's rounds back to back (latency-bound; see the crate README).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn round8_narrow(b: &mut [__m128i; 8], k: __m128i) {
    // SAFETY: register-only AES rounds; the caller's features include AES-NI.
    unsafe {
        core::arch::asm!(
            "aesenc {0}, {k}",
            "aesenc {1}, {k}",
            "aesenc {2}, {k}",
            "aesenc {3}, {k}",
            "aesenc {4}, {k}",
            "aesenc {5}, {k}",
            "aesenc {6}, {k}",
            "aesenc {7}, {k}",
            inout(xmm_reg) b[0],
            inout(xmm_reg) b[1],
            inout(xmm_reg) b[2],
            inout(xmm_reg) b[3],
            inout(xmm_reg) b[4],
            inout(xmm_reg) b[5],
            inout(xmm_reg) b[6],
            inout(xmm_reg) b[7],
            k = in(xmm_reg) k,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
}

/// XORs `CTR(K, iv)` into the 493-byte `out`, eight blocks at a time.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn ctr_narrow(keys: &[[u8; 32]; 11], iv: __m128i, out: &mut [u8; PAYLOAD_LEN]) {
    ctr_narrow_group::<0>(keys, iv, out);
    ctr_narrow_group::<1>(keys, iv, out);
    ctr_narrow_group::<2>(keys, iv, out);
    ctr_narrow_group::<3>(keys, iv, out);
}

/// Blocks `8 G .. 8 G + 8` of [`ctr_narrow`], with constant offsets (see [`ctr_group`]).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn ctr_narrow_group<const G: usize>(
    keys: &[[u8; 32]; 11],
    iv: __m128i,
    out: &mut [u8; PAYLOAD_LEN],
) {
    let k0 = rk(keys, 0);
    let mut b: [__m128i; 8] = core::array::from_fn(|i| _mm_xor_si128(ctr_add(iv, G * 8 + i), k0));
    for r in 1..10 {
        round8_narrow(&mut b, rk(keys, r));
    }
    let k = rk(keys, 10);
    let ks = b.map(|x| _mm_aesenclast_si128(x, k));
    for (i, ks) in ks.into_iter().enumerate() {
        let off = BLK * (8 * G + i);
        if off + BLK <= PAYLOAD_LEN {
            xor_block_into(&mut out[off..off + BLK], ks);
        } else if off < PAYLOAD_LEN {
            // Block 30: its first 13 bytes; block 31 is not used.
            xor_block_into(&mut out[off..], ks);
        }
    }
}

/// One AES round on eight `ymm` chains (sixteen blocks), round-major (see [`round8_narrow`]).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn round8_wide(b: &mut [__m256i; 8], k: __m256i) {
    // SAFETY: register-only VAES rounds; the caller's features include VAES and AVX.
    unsafe {
        core::arch::asm!(
            "vaesenc {0}, {0}, {k}",
            "vaesenc {1}, {1}, {k}",
            "vaesenc {2}, {2}, {k}",
            "vaesenc {3}, {3}, {k}",
            "vaesenc {4}, {4}, {k}",
            "vaesenc {5}, {5}, {k}",
            "vaesenc {6}, {6}, {k}",
            "vaesenc {7}, {7}, {k}",
            inout(ymm_reg) b[0],
            inout(ymm_reg) b[1],
            inout(ymm_reg) b[2],
            inout(ymm_reg) b[3],
            inout(ymm_reg) b[4],
            inout(ymm_reg) b[5],
            inout(ymm_reg) b[6],
            inout(ymm_reg) b[7],
            k = in(ymm_reg) k,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
}

/// The ET tweak's blocks: `T'`, `CMD | X_R[..15]`, then `X_R[15..]` in 16-byte blocks with
/// the last (14 bytes) zero-padded. Block `j >= 2` starts at cell offset `31 + 16 (j - 2)`.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn tweak_block1(cmd: u8, cell: &CellBody) -> __m128i {
    _mm_insert_epi8::<0>(ld(at(cell, 15)), i32::from(cmd))
}

/// The last, zero-padded tweak block (cell bytes 495..509).
#[inline(always)]
fn tweak_tail(cell: &CellBody) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..14].copy_from_slice(&cell[495..509]);
    t
}

/// Block `j` of the ET tweak.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn tweak_block(j: usize, tprime: &[u8; 16], cmd: u8, cell: &CellBody, tail: &[u8; 16]) -> __m128i {
    match j {
        0 => ld(tprime),
        1 => tweak_block1(cmd, cell),
        31 => ld(tail),
        _ => ld(at(cell, 31 + 16 * (j - 2))),
    }
}

/// Karatsuba accumulation of `x * ku_pow[j]`: low, high and middle-sum products.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn acc_narrow(s: &Sched, j: usize, x: __m128i, acc: &mut [__m128i; 3]) {
    let h = ld(&s.ku_pow[j]);
    let hk = ld(&s.ku_kar[j]);
    let xk = _mm_xor_si128(x, _mm_shuffle_epi32::<0x4e>(x));
    acc[0] = _mm_xor_si128(acc[0], _mm_clmulepi64_si128::<0x00>(x, h));
    acc[1] = _mm_xor_si128(acc[1], _mm_clmulepi64_si128::<0x11>(x, h));
    acc[2] = _mm_xor_si128(acc[2], _mm_clmulepi64_si128::<0x00>(xk, hk));
}

/// Reduces Karatsuba accumulators.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn reduce_kar(acc: &[__m128i; 3]) -> __m128i {
    let mid = _mm_xor_si128(acc[2], _mm_xor_si128(acc[0], acc[1]));
    reduce(acc[0], mid, acc[1])
}

/// `UH(KU, T' | cmd | X_R)` on `xmm`.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn et_mask_narrow(s: &Sched, tprime: &[u8; 16], cmd: u8, cell: &CellBody) -> __m128i {
    let tail = tweak_tail(cell);
    let z = _mm_setzero_si128();
    if usize::from(s.npow) == NPOW {
        let mut acc = [z; 3];
        for j in 0..NPOW {
            acc_narrow(s, j, tweak_block(j, tprime, cmd, cell, &tail), &mut acc);
        }
        reduce_kar(&acc)
    } else {
        // Horner over four chunks of eight blocks: the running value joins each chunk's
        // first block, and each chunk's sum is reduced.
        let mut y = z;
        for c in 0..4 {
            let mut acc = [z; 3];
            for i in 0..8 {
                let mut x = tweak_block(8 * c + i, tprime, cmd, cell, &tail);
                if i == 0 {
                    x = _mm_xor_si128(x, y);
                }
                acc_narrow(s, NPOW - 8 + i, x, &mut acc);
            }
            y = reduce_kar(&acc);
        }
        y
    }
}

/// Karatsuba accumulation of two blocks `x` by the two powers at `ku_pow[j..j+2]`.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn acc_wide(s: &Sched, j: usize, x: __m256i, acc: &mut [__m256i; 3]) {
    let hp = &s.ku_pow.as_flattened()[16 * j..16 * j + 32];
    let kp = &s.ku_kar.as_flattened()[16 * j..16 * j + 32];
    // SAFETY: `hp` and `kp` are 32 readable bytes each.
    let (h, hk) = unsafe {
        (
            _mm256_loadu_si256(hp.as_ptr().cast()),
            _mm256_loadu_si256(kp.as_ptr().cast()),
        )
    };
    let xk = _mm256_xor_si256(x, _mm256_shuffle_epi32::<0x4e>(x));
    acc[0] = _mm256_xor_si256(acc[0], _mm256_clmulepi64_epi128::<0x00>(x, h));
    acc[1] = _mm256_xor_si256(acc[1], _mm256_clmulepi64_epi128::<0x11>(x, h));
    acc[2] = _mm256_xor_si256(acc[2], _mm256_clmulepi64_epi128::<0x00>(xk, hk));
}

/// Folds the two lanes of wide Karatsuba accumulators and reduces.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn reduce_wide(acc: &[__m256i; 3]) -> __m128i {
    let fold =
        |v: __m256i| _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    reduce_kar(&[fold(acc[0]), fold(acc[1]), fold(acc[2])])
}

/// `UH(KU, T' | cmd | X_R)` on `ymm`: two blocks per carry-less multiply.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn et_mask_wide(s: &Sched, tprime: &[u8; 16], cmd: u8, cell: &CellBody) -> __m128i {
    // The last pair, `cell[479..509] | 0 0`, from two loads (its high block shifted down two
    // bytes) rather than through a copy on the stack, whose 32-byte reload would wait for
    // the copy's stores to reach the cache (no store forwarding across two stores).
    let last = || {
        let hi = _mm_srli_si128::<2>(ld(at(cell, 493)));
        _mm256_set_m128i(hi, ld(at(cell, 479)))
    };
    let pair = |k: usize| match k {
        0 => _mm256_set_m128i(tweak_block1(cmd, cell), ld(tprime)),
        15 => last(),
        _ => {
            let src = &cell[31 + 32 * (k - 1)..31 + 32 * k];
            // SAFETY: `src` is 32 readable bytes (the slice above is bounds-checked).
            unsafe { _mm256_loadu_si256(src.as_ptr().cast()) }
        }
    };
    let z = _mm256_setzero_si256();
    if usize::from(s.npow) == NPOW {
        let mut acc = [z; 3];
        for k in 0..NPOW / 2 {
            acc_wide(s, 2 * k, pair(k), &mut acc);
        }
        reduce_wide(&acc)
    } else {
        let mut y = _mm_setzero_si128();
        for c in 0..4 {
            let mut acc = [z; 3];
            for i in 0..4 {
                let mut x = pair(4 * c + i);
                if i == 0 {
                    x = _mm256_xor_si256(x, _mm256_zextsi128_si256(y));
                }
                acc_wide(s, NPOW - 8 + 2 * i, x, &mut acc);
            }
            y = reduce_wide(&acc);
        }
        y
    }
}

/// The counter increments of blocks `2i` and `2i + 1` as one `ymm` (`+n` in the last byte of
/// each lane), loaded rather than built: built at run time, the 16 of a cell took ~100 scalar
/// and shuffle instructions competing with the AES rounds.
static CTR_INC: [[u64; 4]; 16] = {
    let mut t = [[0u64; 4]; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = [0, (2 * i as u64) << 56, 0, (2 * i as u64 + 1) << 56];
        i += 1;
    }
    t
};

/// XORs `CTR(K, iv)` into the 493-byte `out` on `ymm`: 16 blocks in flight.
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn ctr_wide(keys: &[[u8; 32]; 11], iv: __m128i, out: &mut [u8; PAYLOAD_LEN]) {
    let base = _mm256_broadcastsi128_si256(iv);
    ctr_group::<0>(keys, base, out);
    ctr_group::<1>(keys, base, out);
}

/// Blocks `16 G .. 16 G + 16` of [`ctr_wide`] (a constant `G`, so that the offsets are
/// constants and the final rounds and stores are straight-line code, not a loop through the
/// stack).
#[inline]
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn ctr_group<const G: usize>(keys: &[[u8; 32]; 11], base: __m256i, out: &mut [u8; PAYLOAD_LEN]) {
    let rkw = |i: usize| {
        // SAFETY: each round key is 32 readable bytes.
        unsafe { _mm256_loadu_si256(keys[i].as_ptr().cast()) }
    };
    let k0 = rkw(0);
    let mut b: [__m256i; 8] = core::array::from_fn(|i| {
        let inc = &CTR_INC[8 * G + i];
        // SAFETY: `inc` is 32 readable bytes.
        let inc = unsafe { _mm256_loadu_si256(inc.as_ptr().cast()) };
        _mm256_xor_si256(_mm256_add_epi64(base, inc), k0)
    });
    for r in 1..10 {
        round8_wide(&mut b, rkw(r));
    }
    let k = rkw(10);
    let ks = b.map(|x| _mm256_aesenclast_epi128(x, k));
    for (i, ks) in ks.into_iter().enumerate() {
        let off = 256 * G + 32 * i;
        if off + 32 <= PAYLOAD_LEN {
            let o = &mut out[off..off + 32];
            // SAFETY: `o` is 32 readable and writable bytes.
            unsafe {
                let v = _mm256_xor_si256(_mm256_loadu_si256(o.as_ptr().cast()), ks);
                _mm256_storeu_si256(o.as_mut_ptr().cast(), v);
            }
        } else {
            // The last pair: 13 bytes of block 30, block 31 unused.
            xor_block_into(&mut out[off..], _mm256_castsi256_si128(ks));
        }
    }
}

/// Splits a cell into `X_L` and `X_R`.
#[inline(always)]
fn split(cell: &mut CellBody) -> (&mut [u8; 16], &mut [u8; PAYLOAD_LEN]) {
    let (l, r) = cell.split_at_mut(16);
    #[allow(clippy::unwrap_used)]
    (l.try_into().unwrap(), r.try_into().unwrap())
}

/// The CGO primitives for one kernel width; only made inside the `#[target_feature]` entry
/// points below, after a [`Token`] was checked.
#[derive(Clone, Copy)]
struct Kern<const WIDE: bool>(());

impl<const WIDE: bool> Kern<WIDE> {
    /// The x86 schedule of `k`, built if another backend ran last.
    #[inline(always)]
    fn sched(self, k: &mut DirKeys, count: bool) -> &Sched {
        if !matches!(k.cache, Cache::X86(_)) {
            let mut s = Sched::zero();
            // SAFETY: a `Kern` exists only after a `Token` proved the narrow features.
            unsafe { build(&k.raw, k.client, &mut s) };
            k.cache = Cache::X86(s);
        }
        if let (true, Cache::X86(s)) = (count, &mut k.cache) {
            // Keys used a second time are worth all 32 powers (a middle relay's keys never
            // change); keys that change every cell (an edge's) keep eight.
            s.uses = s.uses.saturating_add(1);
            if s.uses >= 2 && usize::from(s.npow) != NPOW {
                // SAFETY: as above.
                unsafe { extend_powers(s) };
            }
        }
        match &k.cache {
            Cache::X86(s) => s,
            // Set just above.
            _ => unreachable!(),
        }
    }

    #[inline(always)]
    fn mask(self, s: &Sched, tprime: &[u8; 16], cmd: u8, cell: &CellBody) -> __m128i {
        if WIDE {
            // SAFETY: `Kern<true>` exists only after a `Token` proved the wide features.
            unsafe { et_mask_wide(s, tprime, cmd, cell) }
        } else {
            // SAFETY: a `Kern` exists only after a `Token` proved the narrow features.
            unsafe { et_mask_narrow(s, tprime, cmd, cell) }
        }
    }

    #[inline(always)]
    fn ctr(self, s: &Sched, iv: __m128i, out: &mut [u8; PAYLOAD_LEN]) {
        if WIDE {
            // SAFETY: `Kern<true>` exists only after a `Token` proved the wide features.
            unsafe { ctr_wide(&s.prf, iv, out) }
        } else {
            // SAFETY: a `Kern` exists only after a `Token` proved the narrow features.
            unsafe { ctr_narrow(&s.prf, iv, out) }
        }
    }
}

impl<const WIDE: bool> Prims for Kern<WIDE> {
    #[inline(always)]
    fn encrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
        let s = self.sched(k, true);
        let mask = self.mask(s, tprime, cmd, cell);
        let (l, r) = split(cell);
        // SAFETY: a `Kern` exists only after a `Token` proved the narrow features.
        unsafe {
            let y = _mm_xor_si128(aes_enc(&s.et_enc, _mm_xor_si128(ld(l), mask)), mask);
            st(l, y);
            let iv = prf_iv(s, y, 0);
            self.ctr(s, iv, r);
        }
    }

    #[inline(always)]
    fn encrypt2(self, a: EncArgs<'_>, b: EncArgs<'_>) {
        let sa = self.sched(a.keys, true);
        let sb = self.sched(b.keys, true);
        let ma = self.mask(sa, a.tprime, a.cmd, a.cell);
        let mb = self.mask(sb, b.tprime, b.cmd, b.cell);
        let (la, ra) = split(a.cell);
        let (lb, rb) = split(b.cell);
        // SAFETY: a `Kern` exists only after a `Token` proved the narrow features.
        unsafe {
            let (ya, yb) = aes_enc2(
                &sa.et_enc,
                _mm_xor_si128(ld(la), ma),
                &sb.et_enc,
                _mm_xor_si128(ld(lb), mb),
            );
            let (ya, yb) = (_mm_xor_si128(ya, ma), _mm_xor_si128(yb, mb));
            st(la, ya);
            st(lb, yb);
            let iva = prf_iv(sa, ya, 0);
            let ivb = prf_iv(sb, yb, 0);
            self.ctr(sa, iva, ra);
            self.ctr(sb, ivb, rb);
        }
    }

    #[inline(always)]
    fn decrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
        let s = self.sched(k, true);
        // SAFETY: a `Kern` exists only after a `Token` proved the narrow features.
        let y = unsafe { ld(at(cell, 0)) };
        // SAFETY: as above.
        let iv = unsafe { prf_iv(s, y, 0) };
        self.ctr(s, iv, split(cell).1);
        let mask = self.mask(s, tprime, cmd, cell);
        // SAFETY: as above.
        unsafe {
            let x = _mm_xor_si128(aes_dec(&s.et_dec, _mm_xor_si128(y, mask)), mask);
            st(at_mut(cell, 0), x);
        }
    }

    #[inline(always)]
    fn update(self, k: &mut DirKeys, nonce: &mut [u8; BLK]) {
        let s = self.sched(k, false);
        // SAFETY: a `Kern` exists only after a `Token` proved the narrow features, and
        // `Kern<true>` (`WIDE`) only after one proved the wide ones (AVX2 among them).
        unsafe {
            let ks = if WIDE {
                update_stream_wide(s, ld(nonce))
            } else {
                update_stream(s, ld(nonce))
            };
            install_update(k, nonce, &ks, WIDE);
        }
    }

    #[inline(always)]
    fn update2(self, ka: &mut DirKeys, na: &mut [u8; BLK], kb: &mut DirKeys, nb: &mut [u8; BLK]) {
        let sa = self.sched(ka, false);
        let sb = self.sched(kb, false);
        // SAFETY: as in `update`.
        unsafe {
            let (xa, xb) = if WIDE {
                update_stream2_wide(sa, ld(na), sb, ld(nb))
            } else {
                update_stream2(sa, ld(na), sb, ld(nb))
            };
            install_update(ka, na, &xa, WIDE);
            install_update(kb, nb, &xb, WIDE);
        }
    }
}

#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn one_narrow(dir: &mut Dir, op: CgoOp, cmd: u8, cell: &mut CellBody) -> Option<SendmeTag> {
    dir.run(Kern::<false>(()), op, cmd, cell)
}

#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn one_wide(dir: &mut Dir, op: CgoOp, cmd: u8, cell: &mut CellBody) -> Option<SendmeTag> {
    dir.run(Kern::<true>(()), op, cmd, cell)
}

/// Runs one op with the kernel `t` proves.
pub(crate) fn run_one(
    t: Token,
    dir: &mut Dir,
    op: CgoOp,
    cmd: u8,
    cell: &mut CellBody,
) -> Option<SendmeTag> {
    if t.wide {
        // SAFETY: `t.wide` is set only by `Token::vaes256` after detecting the wide features.
        unsafe { one_wide(dir, op, cmd, cell) }
    } else {
        // SAFETY: every `Token` comes from detection of at least the narrow features.
        unsafe { one_narrow(dir, op, cmd, cell) }
    }
}

/// [`super::run_batch_with`] on `p`, compiled for the narrow features.
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
fn batch_narrow<P: super::Prims>(
    p: P,
    hops: &mut [super::CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    super::run_batch_with(p, hops, cells, jobs, out)
}

/// [`super::run_batch_with`] on `p`, compiled for the wide features.
#[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
fn batch_wide<P: super::Prims>(
    p: P,
    hops: &mut [super::CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    super::run_batch_with(p, hops, cells, jobs, out)
}

/// [`run_batch`] with one primitive made wrong (tests of the self-test).
#[cfg(test)]
pub(crate) fn run_batch_faulty(
    t: Token,
    fault: super::Fault,
    hops: &mut [super::CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    use super::Faulty;
    if t.wide {
        // SAFETY: as in `run_batch`.
        unsafe { batch_wide(Faulty(Kern::<true>(()), fault), hops, cells, jobs, out) }
    } else {
        // SAFETY: as in `run_batch`.
        unsafe { batch_narrow(Faulty(Kern::<false>(()), fault), hops, cells, jobs, out) }
    }
}

/// Runs a checked batch with the kernel `t` proves.
pub(crate) fn run_batch(
    t: Token,
    hops: &mut [super::CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    if t.wide {
        // SAFETY: `t.wide` is set only by `Token::vaes256` after detecting the wide features.
        unsafe { batch_wide(Kern::<true>(()), hops, cells, jobs, out) }
    } else {
        // SAFETY: every `Token` comes from detection of at least the narrow features.
        unsafe { batch_narrow(Kern::<false>(()), hops, cells, jobs, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyval::universal_hash::{KeyInit, UniversalHash};

    fn rand16(seed: &mut u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        for x in &mut b {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *x = *seed as u8;
        }
        b
    }

    #[test]
    fn gf_mul_matches_polyval_crate() {
        if Token::aesni().is_none() {
            return;
        }
        let mut seed = 99u64;
        for _ in 0..200 {
            let (h, x) = (rand16(&mut seed), rand16(&mut seed));
            let mut p = polyval::Polyval::new(&h.into());
            p.update(&[x.into()]);
            let want: [u8; 16] = p.finalize().into();
            let mut got = [0u8; 16];
            // SAFETY: `Token::aesni` saw the narrow features.
            unsafe { st(&mut got, gf_mul(ld(&x), ld(&h))) };
            assert_eq!(got, want);
        }
    }

    /// The key update's squaring and Karatsuba products (and, with VPCLMULQDQ, their two-lane
    /// form, each lane against the polyval crate) equal the field product.
    #[test]
    fn power_products_match_polyval_crate() {
        if Token::aesni().is_none() {
            return;
        }
        let product = |h: [u8; 16], x: [u8; 16]| -> [u8; 16] {
            let mut p = polyval::Polyval::new(&h.into());
            p.update(&[x.into()]);
            p.finalize().into()
        };
        let mut seed = 7u64;
        for _ in 0..200 {
            let (a, b, c, d) = (
                rand16(&mut seed),
                rand16(&mut seed),
                rand16(&mut seed),
                rand16(&mut seed),
            );
            let (mut sq, mut kar) = ([0u8; 16], [0u8; 16]);
            // SAFETY: `Token::aesni` saw the narrow features.
            unsafe {
                st(&mut sq, gf_sqr(ld(&a)));
                st(&mut kar, gf_mul_kar(ld(&a), ld(&b)));
            }
            assert_eq!(sq, product(a, a));
            assert_eq!(kar, product(b, a));
            if Token::vaes256().is_some() {
                let mut lanes = [0u8; 32];
                // SAFETY: `Token::vaes256` saw the wide features; `lanes` is 32 writable bytes.
                unsafe {
                    let v = gf_mul_kar_wide(
                        _mm256_set_m128i(ld(&c), ld(&a)),
                        _mm256_set_m128i(ld(&d), ld(&b)),
                    );
                    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v);
                }
                assert_eq!(lanes[..16], product(b, a));
                assert_eq!(lanes[16..], product(d, c));
            }
        }
    }

    #[test]
    fn key_expansion_matches_fips197() {
        if Token::aesni().is_none() {
            return;
        }
        // FIPS-197 Appendix C.1: AES-128 of 00112233..ff under 00010203..0f.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let pt: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        let mut keys = [[0u8; 16]; 11];
        let mut got = [0u8; 16];
        // SAFETY: `Token::aesni` saw the narrow features.
        unsafe {
            store_keys(&mut keys, &expand(ld(&key)));
            st(&mut got, aes_enc(&keys, ld(&pt)));
        }
        assert_eq!(hex::encode(got), "69c4e0d86a7b0430d8cdb78070b4c55a");
    }
}
