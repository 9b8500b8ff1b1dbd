//! Hand-written x86-64 AES-128-CTR kernels for one 509-byte cell.
//!
//! A cell at stream byte position `pos` starts `off = pos % 16` bytes into counter block
//! `n = pos / 16` and touches 32 blocks (`off <= 3`) or 33.
//!
//! **VAES-256** carries the unused tail of the last keystream block of each cell over to the
//! next cell of the same hop and direction ([`Carry`]), so a cell needs at most 32 fresh blocks:
//! exactly sixteen `ymm` registers, as two groups `a` and `b` of eight chains, all in one
//! inline-assembly block from counters to stores ([`vaes_cell16_w`], [`vaes_cell16`]). On Zen 3
//! a `ymm` `vaesenc` issues two per cycle with 4-cycle latency, so eight chains keep both AES
//! pipes busy, and Zen 3 loads at most two 256-bit vectors per cycle, so round keys sit in
//! registers wherever they can (a key as a memory operand is one load per `vaesenc`). The
//! registers swap roles: group `a` runs rounds 1..=8 with keys 1..=8 in the `b` registers; each
//! `b` register becomes a group-`b` counter once its key is used; then `a`'s rounds 9 and 10
//! and `b`'s rounds 1 and 2 run side by side (sixteen chains, memory keys); `a` is XORed into
//! the cell, its registers take keys 3..=10, and `b` runs rounds 3..=10. With `d` the number
//! of cell bytes the carry covers (0, or `16 - off`), fresh `ymm` j covers cell bytes
//! `d + 32 j ..`:
//!
//! - the carry is stored ready to XOR: keystream for cell bytes `0..d`, zeros after, applied to
//!   `cell[0..16]`;
//! - `ymm` 0..=14 are XORed in full with unaligned 32-byte loads and stores (0..=13 inside
//!   the assembly block);
//! - `ymm` 15 (fresh blocks 30 and 31) is shuffled into two windows, `cell[477..493]` and
//!   `cell[493..509]`, zero where `ymm` 14 writes, and into the next carry.
//!
//! The head and tail vectors overlap a neighbouring full vector by a few bytes (XORed with
//! zero). The head is stored before `ymm` 0 is loaded (it changes no byte `ymm` 0 covers);
//! the tail windows and `ymm` 14 are all loaded before the windows, then `ymm` 14, are
//! stored. If the carry does not belong to this position (another backend moved the stream),
//! block `n` is encrypted on its own.
//!
//! **AES-NI** (CPUs without VAES) encrypts blocks `n .. n + 33` in three groups of eleven and
//! XORs them through a keystream buffer.
//!
//! Counter blocks are tor's: 128-bit big-endian, IV zero, so block `n` is eight zero bytes then
//! `n` big-endian. `pos` is a `u64` byte count, so `n < 2^60` and `n + 33` never carries out of
//! the low 64 bits. The 32 counters of a cell are `256 m + t`, `t = r .. r + 32`, with `r` the
//! last byte of the first fresh block. When `r <= 224` (7 cells in 8) they differ only in the
//! last byte, and since the block `256 m` has last byte zero, counter XOR round key 0 is
//! `W XOR (t in the last byte)` with `W = block(256 m) XOR k0`: VAES-256 keeps `W` per hop and
//! direction ([`Carry::w0`], made once per 256-block window, zeroized on drop) and builds
//! each whitened counter vector with one `vpxor` from a static table of last bytes
//! (`LOW_TABLE`, no key material), AES round 0 included (every vector instruction that is not
//! an AES round competes with `vaesenc` for its pipes). A cell with `r > 224` crosses into
//! window `m + 1`, whose counters differ from `block(256 m)` also in byte 14, by
//! `m ^ (m + 1)`: one of eight static tables (`CROSS_TABLES`, by the number of trailing one
//! bits of `m`) gives the same one-`vpxor` form, and that cell makes the next window's `W`
//! for the next cell. Only when `m` ends in eight or more one bits (1 window in 256) are the
//! counters added as little-endian 64-bit lanes (`vpaddq`, which carries across 2^32 and
//! every byte boundary), byte-swapped into place with `vpshufb` and XORed with `k0`.
//! Every table address depends on the stream position only, never on the key.
//!
//! Stack buffers holding keystream (the AES-NI and VAES-512 keystream) are wiped after use
//! (`keys::wipe`, through `crate::wipe`).

use core::arch::asm;
use core::arch::x86_64::*;

use crate::keys::{Carry, RoundKeys};
use crate::{CellBody, CELL_BODY_LEN};

/// `pshufb` zeroes a byte whose control has the top bit set.
const ZERO: u8 = 0x80;
/// Start of the first tail window of the VAES-256 kernel.
const T1: usize = CELL_BODY_LEN - 32;
/// Start of the second tail window.
const T2: usize = CELL_BODY_LEN - 16;
/// Cell bytes covered by `ymm` 0..=14 after the carried head: `d + 480` is where `ymm` 15 starts.
const FULL: usize = 480;

/// `pshufb` controls of the VAES-256 kernel, indexed by `d` (cell bytes covered by the carry).
struct Shuffles {
    /// Block `n` shifted down by `off = 16 - d` (only when the carry must be recomputed).
    head: [[u8; 16]; 16],
    /// Window 1 (`cell[477..493]`) from fresh block 30.
    t1: [[u8; 16]; 16],
    /// Window 2 (`cell[493..509]`) from fresh blocks 30 and 31.
    t2: [[[u8; 16]; 16]; 2],
    /// The next cell's carry from fresh blocks 30 and 31.
    next: [[[u8; 16]; 16]; 2],
}

/// Byte `b` (0..32) of `ymm` 15 as a control for block 30 (`lane` 0) or 31 (`lane` 1).
const fn pick(b: usize, lane: usize) -> u8 {
    if b / 16 == lane {
        (b % 16) as u8
    } else {
        ZERO
    }
}

const fn shuffles() -> Shuffles {
    let mut s = Shuffles {
        head: [[ZERO; 16]; 16],
        t1: [[ZERO; 16]; 16],
        t2: [[[ZERO; 16]; 16]; 2],
        next: [[[ZERO; 16]; 16]; 2],
    };
    let mut d = 0;
    while d < 16 {
        let off = (16 - d) % 16;
        // Bytes of `ymm` 15 this cell uses; the next cell starts at byte `used` of it.
        let used = CELL_BODY_LEN - FULL - d;
        let next_d = (16 - used % 16) % 16;
        let mut i = 0;
        while i < 16 {
            if d > 0 && i < d {
                s.head[d][i] = (i + off) as u8;
            }
            let c1 = T1 + i;
            if c1 >= FULL + d {
                s.t1[d][i] = pick(c1 - FULL - d, 0);
            }
            let c2 = T2 + i;
            if c2 >= FULL + d {
                s.t2[0][d][i] = pick(c2 - FULL - d, 0);
                s.t2[1][d][i] = pick(c2 - FULL - d, 1);
            }
            if i < next_d {
                s.next[0][d][i] = pick(used + i, 0);
                s.next[1][d][i] = pick(used + i, 1);
            }
            i += 1;
        }
        d += 1;
    }
    s
}

static SHUFFLES: Shuffles = shuffles();

// Window 1 ends where window 2 starts, `ymm` 14 ends at `d + 480 <= 495`, and window 1 only
// takes bytes of block 30 (`c - 480 - d <= 12`).
const _: () = assert!(T1 + 16 == T2 && T2 + 16 == CELL_BODY_LEN && T1 >= FULL - 3);

/// Loads row `d` of a control table.
#[inline]
#[target_feature(enable = "sse2")]
fn row(t: &[[u8; 16]; 16], d: usize) -> __m128i {
    let r = t.get(d & 15).unwrap_or(&[ZERO; 16]);
    // SAFETY: `r` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(r.as_ptr().cast()) }
}

/// One AES step of eight `ymm` chains with the key at `[{k} + off]`.
macro_rules! ymm8m {
    ($ins:literal, $off:literal) => {
        concat!(
            $ins,
            " {a0}, {a0}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a1}, {a1}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a2}, {a2}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a3}, {a3}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a4}, {a4}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a5}, {a5}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a6}, {a6}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {a7}, {a7}, ymmword ptr [{k} + ",
            $off,
            "]\n",
        )
    };
}

/// One AES step of eight `ymm` chains with the key in register operand `$key`.
macro_rules! ymm8r {
    ($ins:literal, $key:literal) => {
        concat!(
            $ins,
            " {a0}, {a0}, ",
            $key,
            "\n",
            $ins,
            " {a1}, {a1}, ",
            $key,
            "\n",
            $ins,
            " {a2}, {a2}, ",
            $key,
            "\n",
            $ins,
            " {a3}, {a3}, ",
            $key,
            "\n",
            $ins,
            " {a4}, {a4}, ",
            $key,
            "\n",
            $ins,
            " {a5}, {a5}, ",
            $key,
            "\n",
            $ins,
            " {a6}, {a6}, ",
            $key,
            "\n",
            $ins,
            " {a7}, {a7}, ",
            $key,
            "\n",
        )
    };
}

/// XORs chains 0..8 into memory at `{q}`.
macro_rules! xor8 {
    () => {
        concat!(
            "vpxor {a0}, {a0}, ymmword ptr [{q} + 0]\n",
            "vmovdqu ymmword ptr [{q} + 0], {a0}\n",
            "vpxor {a1}, {a1}, ymmword ptr [{q} + 32]\n",
            "vmovdqu ymmword ptr [{q} + 32], {a1}\n",
            "vpxor {a2}, {a2}, ymmword ptr [{q} + 64]\n",
            "vmovdqu ymmword ptr [{q} + 64], {a2}\n",
            "vpxor {a3}, {a3}, ymmword ptr [{q} + 96]\n",
            "vmovdqu ymmword ptr [{q} + 96], {a3}\n",
            "vpxor {a4}, {a4}, ymmword ptr [{q} + 128]\n",
            "vmovdqu ymmword ptr [{q} + 128], {a4}\n",
            "vpxor {a5}, {a5}, ymmword ptr [{q} + 160]\n",
            "vmovdqu ymmword ptr [{q} + 160], {a5}\n",
            "vpxor {a6}, {a6}, ymmword ptr [{q} + 192]\n",
            "vmovdqu ymmword ptr [{q} + 192], {a6}\n",
            "vpxor {a7}, {a7}, ymmword ptr [{q} + 224]\n",
            "vmovdqu ymmword ptr [{q} + 224], {a7}\n",
        )
    };
}

/// Counter constants of [`vaes_cell16`]: the byte swap (per 128-bit lane, bytes 0..8 zero,
/// bytes 8..16 the high quadword reversed), then sixteen lane increments `(2 j, 2 j + 1)` in the
/// high quadwords, so every counter vector is one `vpaddq` from the broadcast first block (no
/// chain of dependent additions).
#[repr(C, align(32))]
struct CtrTable([u8; 32 * 17]);

const fn ctr_table() -> CtrTable {
    let mut t = [0u8; 32 * 17];
    let mut i = 0;
    while i < 8 {
        t[i] = ZERO;
        t[16 + i] = ZERO;
        t[8 + i] = 15 - i as u8;
        t[16 + 8 + i] = 15 - i as u8;
        i += 1;
    }
    let mut j = 0;
    while j < 16 {
        let base = 32 + 32 * j;
        t[base + 8] = (2 * j) as u8;
        t[base + 16 + 8] = (2 * j + 1) as u8;
        j += 1;
    }
    CtrTable(t)
}

static CTR_TABLE: CtrTable = ctr_table();

/// Counter vector `$j` (0..16) of the cell into `$dst`, from the broadcast first block in
/// `$base`, the byte swap in `$sw` and round key 0 in `$k0` (register or memory operands).
macro_rules! ctr_vec {
    ($dst:literal, $base:literal, $j:literal, $sw:literal, $k0:literal) => {
        concat!(
            "vpaddq ",
            $dst,
            ", ",
            $base,
            ", ymmword ptr [{c} + 32 + 32 * ",
            $j,
            "]\n",
            "vpshufb ",
            $dst,
            ", ",
            $dst,
            ", ",
            $sw,
            "\n",
            "vpxor ",
            $dst,
            ", ",
            $dst,
            ", ",
            $k0,
            "\n",
        )
    };
}

/// One AES step of the eight `b` chains with the key at `[{k} + off]`.
macro_rules! ymm8m_b {
    ($ins:literal, $off:literal) => {
        concat!(
            $ins,
            " {b0}, {b0}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b1}, {b1}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b2}, {b2}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b3}, {b3}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b4}, {b4}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b5}, {b5}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b6}, {b6}, ymmword ptr [{k} + ",
            $off,
            "]\n",
            $ins,
            " {b7}, {b7}, ymmword ptr [{k} + ",
            $off,
            "]\n",
        )
    };
}

/// One AES step of the eight `b` chains with the key in register operand `$key`.
macro_rules! ymm8r_b {
    ($ins:literal, $key:literal) => {
        concat!(
            $ins,
            " {b0}, {b0}, ",
            $key,
            "\n",
            $ins,
            " {b1}, {b1}, ",
            $key,
            "\n",
            $ins,
            " {b2}, {b2}, ",
            $key,
            "\n",
            $ins,
            " {b3}, {b3}, ",
            $key,
            "\n",
            $ins,
            " {b4}, {b4}, ",
            $key,
            "\n",
            $ins,
            " {b5}, {b5}, ",
            $key,
            "\n",
            $ins,
            " {b6}, {b6}, ",
            $key,
            "\n",
            $ins,
            " {b7}, {b7}, ",
            $key,
            "\n",
        )
    };
}

/// A second-group counter (vector `8 + $i`) built in `b$i` once that register's round key is
/// no longer needed: from `{first}` in a general register, the rest as memory operands.
macro_rules! ctr_b {
    ($reg:literal, $j:literal) => {
        concat!(
            "vmovq {",
            $reg,
            ":x}, {first}\n",
            "vpbroadcastq {",
            $reg,
            "}, {",
            $reg,
            ":x}\n",
            "vpaddq {",
            $reg,
            "}, {",
            $reg,
            "}, ymmword ptr [{c} + 32 + 32 * ",
            $j,
            "]\n",
            "vpshufb {",
            $reg,
            "}, {",
            $reg,
            "}, ymmword ptr [{c}]\n",
            "vpxor {",
            $reg,
            "}, {",
            $reg,
            "}, ymmword ptr [{k}]\n",
        )
    };
}

/// XORs chains `b0..b6` into memory at `{q} + 256 ..`.
macro_rules! xor6_b {
    () => {
        concat!(
            "vpxor {b0}, {b0}, ymmword ptr [{q} + 256]\n",
            "vmovdqu ymmword ptr [{q} + 256], {b0}\n",
            "vpxor {b1}, {b1}, ymmword ptr [{q} + 288]\n",
            "vmovdqu ymmword ptr [{q} + 288], {b1}\n",
            "vpxor {b2}, {b2}, ymmword ptr [{q} + 320]\n",
            "vmovdqu ymmword ptr [{q} + 320], {b2}\n",
            "vpxor {b3}, {b3}, ymmword ptr [{q} + 352]\n",
            "vmovdqu ymmword ptr [{q} + 352], {b3}\n",
            "vpxor {b4}, {b4}, ymmword ptr [{q} + 384]\n",
            "vmovdqu ymmword ptr [{q} + 384], {b4}\n",
            "vpxor {b5}, {b5}, ymmword ptr [{q} + 416]\n",
            "vmovdqu ymmword ptr [{q} + 416], {b5}\n",
        )
    };
}

/// Encrypts a cell's 32 fresh blocks `first .. first + 32` (sixteen `ymm` chains in two
/// groups `a` and `b` of eight) and XORs the first fourteen results into the 32-byte vectors
/// at `q`, `q + 32`, ... in place; returns vectors 14 and 15 (the tail). One assembly block
/// from counters to stores, nothing through the stack.
///
/// The registers change roles so that the AES units never wait at the group boundary:
/// group `a` runs rounds 1..=8 with keys 1..=8 in the `b` registers; each `b` register is
/// rebuilt as a group-`b` counter as soon as its key has been used (every counter is one
/// `vpaddq` from the broadcast first block, no dependent chain); then group `a`'s rounds 9 and
/// 10 and group `b`'s rounds 1 and 2 run side by side with memory keys (sixteen independent
/// chains); group `a` is XORed into the cell, its registers take keys 3..=10, and group `b`
/// runs rounds 3..=10 from them.
///
/// # Safety
/// `k` must point to 11 x 32 readable bytes (32-byte aligned), `q .. q + 448` must be
/// readable and writable, and the CPU must support VAES and AVX2.
#[inline]
#[target_feature(enable = "vaes,avx2,aes")]
unsafe fn vaes_cell16(k: *const u8, first: u64, q: *mut u8) -> (__m256i, __m256i) {
    let c = CTR_TABLE.0.as_ptr();
    let (v14, v15): (__m256i, __m256i);
    // SAFETY: the caller guarantees `k`, `q` and CPU support; `c` is the 544-byte aligned
    // constant table; the block reads `k` and `c`, reads and writes `q .. q + 448`, and
    // touches only the named registers.
    unsafe {
        asm!(
            "vmovq {b0:x}, {first}",
            "vpbroadcastq {b0}, {b0:x}",
            "vmovdqa {b1}, ymmword ptr [{c}]",
            "vmovdqa {b2}, ymmword ptr [{k}]",
            ctr_vec!("{a0}", "{b0}", "0", "{b1}", "{b2}"),
            ctr_vec!("{a1}", "{b0}", "1", "{b1}", "{b2}"),
            ctr_vec!("{a2}", "{b0}", "2", "{b1}", "{b2}"),
            ctr_vec!("{a3}", "{b0}", "3", "{b1}", "{b2}"),
            ctr_vec!("{a4}", "{b0}", "4", "{b1}", "{b2}"),
            ctr_vec!("{a5}", "{b0}", "5", "{b1}", "{b2}"),
            ctr_vec!("{a6}", "{b0}", "6", "{b1}", "{b2}"),
            ctr_vec!("{a7}", "{b0}", "7", "{b1}", "{b2}"),
            "vmovdqa {b0}, ymmword ptr [{k} + 32]",
            "vmovdqa {b1}, ymmword ptr [{k} + 64]",
            "vmovdqa {b2}, ymmword ptr [{k} + 96]",
            "vmovdqa {b3}, ymmword ptr [{k} + 128]",
            "vmovdqa {b4}, ymmword ptr [{k} + 160]",
            "vmovdqa {b5}, ymmword ptr [{k} + 192]",
            "vmovdqa {b6}, ymmword ptr [{k} + 224]",
            "vmovdqa {b7}, ymmword ptr [{k} + 256]",
            ymm8r!("vaesenc", "{b0}"),
            ctr_b!("b0", "8"),
            ymm8r!("vaesenc", "{b1}"),
            ctr_b!("b1", "9"),
            ymm8r!("vaesenc", "{b2}"),
            ctr_b!("b2", "10"),
            ymm8r!("vaesenc", "{b3}"),
            ctr_b!("b3", "11"),
            ymm8r!("vaesenc", "{b4}"),
            ctr_b!("b4", "12"),
            ymm8r!("vaesenc", "{b5}"),
            ctr_b!("b5", "13"),
            ymm8r!("vaesenc", "{b6}"),
            ctr_b!("b6", "14"),
            ymm8r!("vaesenc", "{b7}"),
            ctr_b!("b7", "15"),
            ymm8m!("vaesenc", "288"),
            ymm8m_b!("vaesenc", "32"),
            ymm8m!("vaesenclast", "320"),
            ymm8m_b!("vaesenc", "64"),
            xor8!(),
            "vmovdqa {a0}, ymmword ptr [{k} + 96]",
            "vmovdqa {a1}, ymmword ptr [{k} + 128]",
            "vmovdqa {a2}, ymmword ptr [{k} + 160]",
            "vmovdqa {a3}, ymmword ptr [{k} + 192]",
            "vmovdqa {a4}, ymmword ptr [{k} + 224]",
            "vmovdqa {a5}, ymmword ptr [{k} + 256]",
            "vmovdqa {a6}, ymmword ptr [{k} + 288]",
            "vmovdqa {a7}, ymmword ptr [{k} + 320]",
            ymm8r_b!("vaesenc", "{a0}"),
            ymm8r_b!("vaesenc", "{a1}"),
            ymm8r_b!("vaesenc", "{a2}"),
            ymm8r_b!("vaesenc", "{a3}"),
            ymm8r_b!("vaesenc", "{a4}"),
            ymm8r_b!("vaesenc", "{a5}"),
            ymm8r_b!("vaesenc", "{a6}"),
            ymm8r_b!("vaesenclast", "{a7}"),
            xor6_b!(),
            k = in(reg) k,
            q = in(reg) q,
            c = in(reg) c,
            first = in(reg) first,
            a0 = out(ymm_reg) _, a1 = out(ymm_reg) _,
            a2 = out(ymm_reg) _, a3 = out(ymm_reg) _,
            a4 = out(ymm_reg) _, a5 = out(ymm_reg) _,
            a6 = out(ymm_reg) _, a7 = out(ymm_reg) _,
            b0 = out(ymm_reg) _, b1 = out(ymm_reg) _,
            b2 = out(ymm_reg) _, b3 = out(ymm_reg) _,
            b4 = out(ymm_reg) _, b5 = out(ymm_reg) _,
            b6 = out(ymm_reg) v14, b7 = out(ymm_reg) v15,
            options(nostack, preserves_flags),
        );
    }
    (v14, v15)
}

/// Low-byte table of [`vaes_cell16_w`]: 16-byte entry `i` (0..256) is zero but for its last
/// byte, `i`, so the 32-byte vector at entry `r + 2 j` is the XOR difference between the
/// counter blocks `256 m + r + 2 j`, `256 m + r + 2 j + 1` and `256 m` (no key material).
#[repr(C, align(32))]
struct LowTable([u8; 16 * 256]);

const fn low_table() -> LowTable {
    let mut t = [0u8; 16 * 256];
    let mut i = 0;
    while i < 256 {
        t[16 * i + 15] = i as u8;
        i += 1;
    }
    LowTable(t)
}

static LOW_TABLE: LowTable = low_table();

/// Counter tables of [`vaes_cell16_w`] for cells that cross into the next 256-block window
/// (first block's last byte `r` above 224), one per `k` = the number of trailing one bits of
/// the window `m` (0..=7). Entry `i` (0..64) is for the counter `256 m + 224 + i`: below 256,
/// last byte `224 + i`; from 256 on, the counter is `256 (m + 1) + (224 + i - 256)`, which
/// differs from the block `256 m` by `m ^ (m + 1) = 2^(k+1) - 1` in the byte above the last
/// (byte 14; bytes 8..14 hold `m` big-endian) and by `224 + i - 256` in the last byte. Positions
/// only, no key material.
#[repr(C, align(32))]
struct CrossTables([[u8; 16 * 64]; 8]);

const fn cross_tables() -> CrossTables {
    let mut t = [[0u8; 16 * 64]; 8];
    let mut k = 0;
    while k < 8 {
        let mut i = 0;
        while i < 64 {
            let c = 224 + i;
            if c < 256 {
                t[k][16 * i + 15] = c as u8;
            } else {
                t[k][16 * i + 15] = (c - 256) as u8;
                t[k][16 * i + 14] = ((1u32 << (k + 1)) - 1) as u8;
            }
            i += 1;
        }
        k += 1;
    }
    CrossTables(t)
}

static CROSS_TABLES: CrossTables = cross_tables();

/// A second-group counter (vector `$j`) in `{$reg}`: its low-byte entries XOR the whitened
/// base at `[{w}]`.
macro_rules! ctr_w {
    ($reg:literal, $j:literal) => {
        concat!(
            "vmovdqu {",
            $reg,
            "}, ymmword ptr [{e} + 32 * ",
            $j,
            "]\n",
            "vpxor {",
            $reg,
            "}, {",
            $reg,
            "}, ymmword ptr [{w}]\n",
        )
    };
}

/// [`vaes_cell16`] for the common case that the last byte `r` of the first counter block is
/// at most `256 - 32`: the 32 counters then differ from the block `256 m` (`m = first >> 8`)
/// only in their last byte, `r + i`, and since that block's last byte is zero, counter `i`
/// XOR round key 0 is `W XOR (r + i)` with `W = block(256 m) XOR k0` (the hop's cached
/// [`Carry::w0`]) and `r + i` from [`LOW_TABLE`] (`e` points at entry `r`). Each whitened
/// counter vector is one `vpxor` (AES round 0 folded in), where the add-then-XOR form needs
/// two vector operations and a broadcast. A cell crossing into window `m + 1` runs the same
/// code with `e` in one of the [`CROSS_TABLES`], whose entries past 255 also carry
/// `m ^ (m + 1)` in byte 14.
///
/// # Safety
/// As [`vaes_cell16`]; `w` points to 32 readable bytes (32-byte aligned) and `e` to 512
/// readable bytes.
#[inline]
#[target_feature(enable = "vaes,avx2,aes")]
unsafe fn vaes_cell16_w(
    k: *const u8,
    w: *const u8,
    e: *const u8,
    q: *mut u8,
) -> (__m256i, __m256i) {
    let (v14, v15): (__m256i, __m256i);
    // SAFETY: the caller guarantees `k`, `w`, `e`, `q` and CPU support; the block reads `k`,
    // `w` and `e .. e + 512`, reads and writes `q .. q + 448`, and touches only the named
    // registers.
    unsafe {
        asm!(
            "vmovdqa {b0}, ymmword ptr [{w}]",
            "vpxor {a0}, {b0}, ymmword ptr [{e}]",
            "vpxor {a1}, {b0}, ymmword ptr [{e} + 32]",
            "vpxor {a2}, {b0}, ymmword ptr [{e} + 64]",
            "vpxor {a3}, {b0}, ymmword ptr [{e} + 96]",
            "vpxor {a4}, {b0}, ymmword ptr [{e} + 128]",
            "vpxor {a5}, {b0}, ymmword ptr [{e} + 160]",
            "vpxor {a6}, {b0}, ymmword ptr [{e} + 192]",
            "vpxor {a7}, {b0}, ymmword ptr [{e} + 224]",
            "vmovdqa {b0}, ymmword ptr [{k} + 32]",
            "vmovdqa {b1}, ymmword ptr [{k} + 64]",
            "vmovdqa {b2}, ymmword ptr [{k} + 96]",
            "vmovdqa {b3}, ymmword ptr [{k} + 128]",
            "vmovdqa {b4}, ymmword ptr [{k} + 160]",
            "vmovdqa {b5}, ymmword ptr [{k} + 192]",
            "vmovdqa {b6}, ymmword ptr [{k} + 224]",
            "vmovdqa {b7}, ymmword ptr [{k} + 256]",
            ymm8r!("vaesenc", "{b0}"),
            ctr_w!("b0", "8"),
            ymm8r!("vaesenc", "{b1}"),
            ctr_w!("b1", "9"),
            ymm8r!("vaesenc", "{b2}"),
            ctr_w!("b2", "10"),
            ymm8r!("vaesenc", "{b3}"),
            ctr_w!("b3", "11"),
            ymm8r!("vaesenc", "{b4}"),
            ctr_w!("b4", "12"),
            ymm8r!("vaesenc", "{b5}"),
            ctr_w!("b5", "13"),
            ymm8r!("vaesenc", "{b6}"),
            ctr_w!("b6", "14"),
            ymm8r!("vaesenc", "{b7}"),
            ctr_w!("b7", "15"),
            ymm8m!("vaesenc", "288"),
            ymm8m_b!("vaesenc", "32"),
            ymm8m!("vaesenclast", "320"),
            ymm8m_b!("vaesenc", "64"),
            xor8!(),
            "vmovdqa {a0}, ymmword ptr [{k} + 96]",
            "vmovdqa {a1}, ymmword ptr [{k} + 128]",
            "vmovdqa {a2}, ymmword ptr [{k} + 160]",
            "vmovdqa {a3}, ymmword ptr [{k} + 192]",
            "vmovdqa {a4}, ymmword ptr [{k} + 224]",
            "vmovdqa {a5}, ymmword ptr [{k} + 256]",
            "vmovdqa {a6}, ymmword ptr [{k} + 288]",
            "vmovdqa {a7}, ymmword ptr [{k} + 320]",
            ymm8r_b!("vaesenc", "{a0}"),
            ymm8r_b!("vaesenc", "{a1}"),
            ymm8r_b!("vaesenc", "{a2}"),
            ymm8r_b!("vaesenc", "{a3}"),
            ymm8r_b!("vaesenc", "{a4}"),
            ymm8r_b!("vaesenc", "{a5}"),
            ymm8r_b!("vaesenc", "{a6}"),
            ymm8r_b!("vaesenclast", "{a7}"),
            xor6_b!(),
            k = in(reg) k,
            q = in(reg) q,
            w = in(reg) w,
            e = in(reg) e,
            a0 = out(ymm_reg) _, a1 = out(ymm_reg) _,
            a2 = out(ymm_reg) _, a3 = out(ymm_reg) _,
            a4 = out(ymm_reg) _, a5 = out(ymm_reg) _,
            a6 = out(ymm_reg) _, a7 = out(ymm_reg) _,
            b0 = out(ymm_reg) _, b1 = out(ymm_reg) _,
            b2 = out(ymm_reg) _, b3 = out(ymm_reg) _,
            b4 = out(ymm_reg) _, b5 = out(ymm_reg) _,
            b6 = out(ymm_reg) v14, b7 = out(ymm_reg) v15,
            options(nostack, preserves_flags),
        );
    }
    (v14, v15)
}

/// Makes `carry.w0` for the window of counter block `first` if it is not already made:
/// round key 0 XOR the counter block `first` with its last byte cleared, doubled.
#[inline]
#[target_feature(enable = "avx2")]
fn whitened_base(rk: &RoundKeys, first: u64, carry: &mut Carry) {
    let tag = (first >> 8) + 1;
    if carry.w0_tag != tag {
        let be = (first & !0xff).swap_bytes() as i64;
        // SAFETY: the doubled keys are 32-byte aligned (`RoundKeys` is `align(32)`) and
        // `carry.w0` is 32 bytes at the start of the `align(32)` `Carry`.
        unsafe {
            let k0 = _mm256_load_si256(rk.wide().as_ptr().cast());
            let w = _mm256_xor_si256(k0, _mm256_set_epi64x(be, 0, be, 0));
            _mm256_store_si256(carry.w0.as_mut_ptr().cast(), w);
        }
        carry.w0_tag = tag;
    }
}

/// Counter block `n` as an xmm value (see module doc for the layout).
#[target_feature(enable = "sse2")]
fn ctr128(n: u64) -> __m128i {
    _mm_set_epi64x(n.swap_bytes() as i64, 0)
}

/// The eleven round keys as xmm values.
#[target_feature(enable = "sse2")]
fn load_keys128(rk: &RoundKeys) -> [__m128i; 11] {
    core::array::from_fn(|i| {
        let k = rk.key(i);
        // SAFETY: `k` is 16 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(k.as_ptr().cast()) }
    })
}

/// One block, `AES(k, block n)`, with AES-NI.
#[target_feature(enable = "aes,sse2")]
fn aes_block(rk: &RoundKeys, n: u64) -> __m128i {
    let keys = load_keys128(rk);
    let mut x = _mm_xor_si128(ctr128(n), keys[0]);
    for k in &keys[1..10] {
        x = _mm_aesenc_si128(x, *k);
    }
    _mm_aesenclast_si128(x, keys[10])
}

/// VAES on 256-bit registers, with the carried partial block (see the module doc).
///
/// # Safety
/// The CPU must support VAES, AVX2 and AES-NI.
#[target_feature(enable = "vaes,avx2,aes")]
pub(crate) unsafe fn vaes256_xor_cell(
    rk: &RoundKeys,
    pos: u64,
    carry: &mut Carry,
    cell: &mut CellBody,
) {
    let n = pos >> 4;
    let off = (pos & 15) as usize;
    // With `off > 0`, block `n` is shared with the previous cell and fresh blocks start at n + 1.
    let (d, first) = if off == 0 { (0, n) } else { (16 - off, n + 1) };
    let s = &SHUFFLES;
    let head = if d == 0 {
        _mm_setzero_si128()
    } else if carry.pos == pos {
        // SAFETY: `carry.bytes` is 16 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(carry.bytes.as_ptr().cast()) }
    } else {
        _mm_shuffle_epi8(aes_block(rk, n), row(&s.head, d))
    };
    let k = rk.wide().as_ptr().cast::<u8>();
    let p = cell.as_mut_ptr();
    // Memory safety of the accesses below: `d < 16`, so `ymm` j (0..=14) at `d + 32 j` ends at
    // most at `d + 480 <= 495`; the head and windows are `0..16`, `477..493` and `493..509`:
    // every access lies in `cell`, and unaligned loads and stores have no alignment
    // requirement. Overlapping vectors are ordered as the module doc explains.
    // SAFETY: `d + 32 j <= 463` for every `j` used (0..=14), inside `cell`.
    let q = |j: usize| unsafe { p.add(d + 32 * j).cast::<__m256i>() };
    // SAFETY: the head is `cell[0..16]`, `ymm` 0..14 are `cell[d .. d + 448]` (see above); `k`
    // points to the doubled round keys and VAES is enabled here.
    let (v14, v15) = unsafe {
        // The head first: it changes only bytes `0..d`, which `ymm` 0 does not cover, so the
        // assembly below may load `ymm` 0's bytes after this store.
        let c_head = _mm_loadu_si128(p.cast());
        _mm_storeu_si128(p.cast(), _mm_xor_si128(c_head, head));
        let r = (first & 0xff) as usize;
        // Trailing one bits of the window `m = first >> 8`.
        let ones = (first >> 8).trailing_ones() as usize;
        if r <= 224 {
            whitened_base(rk, first, carry);
            let e = LOW_TABLE.0.as_ptr().add(16 * r);
            vaes_cell16_w(k, carry.w0.as_ptr(), e, q(0).cast())
        } else if let Some(t) = CROSS_TABLES.0.get(ones) {
            whitened_base(rk, first, carry);
            // `r - 224` is 1..=31, so entries `r - 224 .. r - 192` lie within the 64.
            let e = t.as_ptr().add(16 * (r - 224));
            let v = vaes_cell16_w(k, carry.w0.as_ptr(), e, q(0).cast());
            // The next cell of the stream starts in the next window: make its base now, so
            // the check above is not a branch that fails one cell in eight (unpredictable
            // across many circuits).
            whitened_base(rk, first + 32, carry);
            v
        } else {
            let v = vaes_cell16(k, first, q(0).cast());
            // This cell crosses into the next 256-block window, where the next cell of the
            // stream starts: make its base now, so the check above is not a branch that
            // fails one cell in eight (unpredictable across many circuits).
            whitened_base(rk, first + 32, carry);
            v
        }
    };
    let last = v15;
    let (b30, b31) = (
        _mm256_castsi256_si128(last),
        _mm256_extracti128_si256::<1>(last),
    );
    let w1 = _mm_shuffle_epi8(b30, row(&s.t1, d));
    let w2 = _mm_or_si128(
        _mm_shuffle_epi8(b30, row(&s.t2[0], d)),
        _mm_shuffle_epi8(b31, row(&s.t2[1], d)),
    );
    let next = _mm_or_si128(
        _mm_shuffle_epi8(b30, row(&s.next[0], d)),
        _mm_shuffle_epi8(b31, row(&s.next[1], d)),
    );
    // SAFETY: `carry.bytes` is 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(carry.bytes.as_mut_ptr().cast(), next) };
    carry.pos = pos.wrapping_add(CELL_BODY_LEN as u64);
    // SAFETY: windows `cell[477..493]`, `cell[493..509]` and `ymm` 14 at `d + 448 .. d + 480`
    // (see above); all three loaded before any is stored.
    unsafe {
        let t1 = p.add(T1).cast::<__m128i>();
        let t2 = p.add(T2).cast::<__m128i>();
        let c_t1 = _mm_loadu_si128(t1);
        let c_t2 = _mm_loadu_si128(t2);
        let c_last = _mm256_loadu_si256(q(14));
        _mm_storeu_si128(t1, _mm_xor_si128(c_t1, w1));
        _mm_storeu_si128(t2, _mm_xor_si128(c_t2, w2));
        _mm256_storeu_si256(q(14), _mm256_xor_si256(c_last, v14));
    }
}

/// `N` consecutive counter blocks from `ctr`, encrypted, written to the first `N` of `out`.
#[target_feature(enable = "aes,sse2")]
fn aesni_group<const N: usize>(keys: &[__m128i; 11], ctr: u64, out: &mut [[u8; 16]]) {
    let mut s: [__m128i; N] = core::array::from_fn(|i| ctr128(ctr + i as u64));
    for x in s.iter_mut() {
        *x = _mm_xor_si128(*x, keys[0]);
    }
    for k in &keys[1..10] {
        for x in s.iter_mut() {
            *x = _mm_aesenc_si128(*x, *k);
        }
    }
    for (o, x) in out.iter_mut().zip(s) {
        let x = _mm_aesenclast_si128(x, keys[10]);
        // SAFETY: `o` is 16 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), x) };
    }
}

/// AES-NI: blocks `n .. n + 33` in three groups of eleven, through a keystream buffer.
///
/// XORing straight from registers, as VAES-256 does, measured slower here (82-96 ns against
/// 68 ns per cell in isolation): with eleven chains and eleven round keys the compiler spills
/// heavily, and with the keys as memory operands the three groups stop overlapping.
///
/// # Safety
/// The CPU must support AES-NI and SSE2.
#[target_feature(enable = "aes,sse2,ssse3")]
pub(crate) unsafe fn aesni_xor_cell(rk: &RoundKeys, pos: u64, cell: &mut CellBody) {
    let keys = load_keys128(rk);
    let first = pos >> 4;
    let off = (pos & 15) as usize;
    let mut ks: Keystream = [[0; 16]; 36];
    // Three chains of 11 blocks cover 33 (one wasted when the cell spans 32): on Zen 3 the two
    // AES pipes with 4-cycle latency need at least 8 in flight, and 11 leaves slack to overlap
    // the stores of one group with the rounds of the next.
    let (a, rest) = ks.split_at_mut(11);
    let (b, c) = rest.split_at_mut(11);
    aesni_group::<11>(&keys, first, a);
    aesni_group::<11>(&keys, first + 11, b);
    aesni_group::<11>(&keys, first + 22, c);
    xor_cell(cell, &ks, off);
    crate::wipe(ks.as_flattened_mut());
}

/// Keystream buffer of the AES-NI and VAES-512 kernels: 36 blocks (9 zmm); wiped after use.
type Keystream = [[u8; 16]; 36];

/// Blocks a cell at byte offset `off` (0..16) within its first block spans.
fn blocks_for(off: usize) -> usize {
    (off + CELL_BODY_LEN).div_ceil(16)
}

/// XORs the keystream starting `off` bytes into `ks` over `cell`.
#[inline(always)]
fn xor_cell(cell: &mut CellBody, ks: &Keystream, off: usize) {
    let flat = ks.as_flattened();
    if let Some(ks) = flat
        .get(off..off + CELL_BODY_LEN)
        .and_then(|s| <&[u8; CELL_BODY_LEN]>::try_from(s).ok())
    {
        for (c, k) in cell.iter_mut().zip(ks) {
            *c ^= k;
        }
    }
}

/// Counter blocks `n .. n + 4` as a zmm value.
#[target_feature(enable = "avx512f")]
fn ctr512(n: u64) -> __m512i {
    _mm512_set_epi64(
        (n + 3).swap_bytes() as i64,
        0,
        (n + 2).swap_bytes() as i64,
        0,
        (n + 1).swap_bytes() as i64,
        0,
        n.swap_bytes() as i64,
        0,
    )
}

/// VAES on 512-bit registers: the whole cell in 8 zmm (32 blocks) or 9 zmm (36 blocks).
///
/// Untested on the development machine (no AVX-512); only compiled there.
///
/// # Safety
/// The CPU must support AVX-512F, VAES and AES-NI.
#[target_feature(enable = "vaes,avx512f,avx2,aes")]
pub(crate) unsafe fn vaes512_xor_cell(rk: &RoundKeys, pos: u64, cell: &mut CellBody) {
    let keys = load_keys128(rk).map(|k| _mm512_broadcast_i32x4(k));
    let first = pos >> 4;
    let off = (pos & 15) as usize;
    let mut ks: Keystream = [[0; 16]; 36];
    if blocks_for(off) > 32 {
        vaes512_group::<9>(&keys, first, &mut ks);
    } else {
        vaes512_group::<8>(&keys, first, &mut ks);
    }
    xor_cell(cell, &ks, off);
    crate::wipe(ks.as_flattened_mut());
}

#[target_feature(enable = "vaes,avx512f,avx2,aes")]
fn vaes512_group<const N: usize>(keys: &[__m512i; 11], ctr: u64, out: &mut [[u8; 16]]) {
    let mut s: [__m512i; N] = core::array::from_fn(|i| ctr512(ctr + 4 * i as u64));
    for x in s.iter_mut() {
        *x = _mm512_xor_si512(*x, keys[0]);
    }
    for k in &keys[1..10] {
        for x in s.iter_mut() {
            *x = _mm512_aesenc_epi128(*x, *k);
        }
    }
    for (o, x) in out.chunks_exact_mut(4).zip(s) {
        let x = _mm512_aesenclast_epi128(x, keys[10]);
        // SAFETY: `o` is four adjacent 16-byte arrays, 64 writable bytes; `storeu` is unaligned.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), x) };
    }
}

/// Rotate each 32-bit lane left by `$n`.
macro_rules! rotl {
    ($x:expr, $n:literal) => {
        _mm256_or_si256(
            _mm256_slli_epi32::<$n>($x),
            _mm256_srli_epi32::<{ 32 - $n }>($x),
        )
    };
}

/// Transposes an 8x8 matrix of 32-bit words held one row per register.
#[target_feature(enable = "avx2")]
fn transpose8x8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// Eight independent SHA-1 compressions (FIPS 180-4 §6.1.2), one per 32-bit AVX2 lane: lane `i`
/// compresses `blocks[i]` into `h[i]`. Lanes with `active[i] == false` are computed on whatever
/// they hold and not written back.
#[target_feature(enable = "avx2")]
pub(crate) fn sha1x8_compress(h: &mut [[u32; 5]; 8], blocks: [&[u8; 64]; 8], active: [bool; 8]) {
    let bswap = _mm256_setr_epi8(
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8,
        15, 14, 13, 12,
    );
    let mut lo = [_mm256_setzero_si256(); 8];
    let mut hi = [_mm256_setzero_si256(); 8];
    for ((l, h), b) in lo.iter_mut().zip(hi.iter_mut()).zip(blocks) {
        let (b0, b1) = b.split_at(32);
        // SAFETY: `b0` and `b1` are 32 readable bytes each; `loadu` has no alignment requirement.
        unsafe {
            *l = _mm256_shuffle_epi8(_mm256_loadu_si256(b0.as_ptr().cast()), bswap);
            *h = _mm256_shuffle_epi8(_mm256_loadu_si256(b1.as_ptr().cast()), bswap);
        }
    }
    // Rows are lanes, columns are message words: transpose so each register holds one word of
    // all eight lanes.
    let lo = transpose8x8(lo);
    let hi = transpose8x8(hi);
    let mut w = [_mm256_setzero_si256(); 16];
    for (wt, x) in w.iter_mut().zip(lo.into_iter().chain(hi)) {
        *wt = x;
    }
    let mut v = [_mm256_setzero_si256(); 5];
    for (j, vj) in v.iter_mut().enumerate() {
        *vj = _mm256_set_epi32(
            h[7][j] as i32,
            h[6][j] as i32,
            h[5][j] as i32,
            h[4][j] as i32,
            h[3][j] as i32,
            h[2][j] as i32,
            h[1][j] as i32,
            h[0][j] as i32,
        );
    }
    let [mut a, mut b, mut c, mut d, mut e] = v;
    let k = [
        _mm256_set1_epi32(0x5a82_7999),
        _mm256_set1_epi32(0x6ed9_eba1),
        _mm256_set1_epi32(0x8f1b_bcdcu32 as i32),
        _mm256_set1_epi32(0xca62_c1d6u32 as i32),
    ];
    // Four loops with a fixed round function each, so none carries a per-round branch; the
    // message schedule lives in a 16-word ring on the stack.
    macro_rules! round {
        ($f:expr, $k:expr, $wt:expr) => {{
            let tmp = _mm256_add_epi32(
                _mm256_add_epi32(rotl!(a, 5), $f),
                _mm256_add_epi32(_mm256_add_epi32(e, $k), $wt),
            );
            e = d;
            d = c;
            c = rotl!(b, 30);
            b = a;
            a = tmp;
        }};
    }
    macro_rules! schedule {
        ($t:expr) => {{
            let t = $t;
            let x = _mm256_xor_si256(
                _mm256_xor_si256(w[(t + 13) & 15], w[(t + 8) & 15]),
                _mm256_xor_si256(w[(t + 2) & 15], w[t & 15]),
            );
            let x = rotl!(x, 1);
            w[t & 15] = x;
            x
        }};
    }
    for wt in w {
        round!(
            _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d))),
            k[0],
            wt
        );
    }
    for t in 16..20 {
        let wt = schedule!(t);
        round!(
            _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d))),
            k[0],
            wt
        );
    }
    for t in 20..40 {
        let wt = schedule!(t);
        round!(_mm256_xor_si256(_mm256_xor_si256(b, c), d), k[1], wt);
    }
    for t in 40..60 {
        let wt = schedule!(t);
        round!(
            _mm256_or_si256(
                _mm256_and_si256(b, c),
                _mm256_and_si256(d, _mm256_or_si256(b, c))
            ),
            k[2],
            wt
        );
    }
    for t in 60..80 {
        let wt = schedule!(t);
        round!(_mm256_xor_si256(_mm256_xor_si256(b, c), d), k[3], wt);
    }
    let out = [a, b, c, d, e];
    for (j, (x, x0)) in out.into_iter().zip(v).enumerate() {
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_add_epi32(x, x0)) };
        for ((hi, l), on) in h.iter_mut().zip(lanes).zip(active) {
            if on {
                hi[j] = l;
            }
        }
    }
}

/// Reverses all 16 bytes: big-endian words with W0 in the top lane, as SHA-NI wants.
#[inline(always)]
fn sha1ni_bswap_mask() -> __m128i {
    // SAFETY: SSE2 is part of the x86-64 baseline.
    unsafe { _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f) }
}

/// A chaining value in SHA-NI form: `abcd` (A in the top lane) and `e` (E in the top lane,
/// zeros below; `sha1nexte` keeps the lower lanes of its second operand, so they stay zero).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn sha1ni_load(h: &[u32; 5]) -> (__m128i, __m128i) {
    let [a, b, c, d, e] = *h;
    (
        _mm_set_epi32(a as i32, b as i32, c as i32, d as i32),
        _mm_set_epi32(e as i32, 0, 0, 0),
    )
}

#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn sha1ni_store(abcd: __m128i, e: __m128i) -> [u32; 5] {
    [
        _mm_extract_epi32::<3>(abcd) as u32,
        _mm_extract_epi32::<2>(abcd) as u32,
        _mm_extract_epi32::<1>(abcd) as u32,
        _mm_extract_epi32::<0>(abcd) as u32,
        _mm_extract_epi32::<3>(e) as u32,
    ]
}

/// `N` interleaved compressions on chaining values kept in SHA-NI form.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn sha1ni_core<const N: usize>(
    abcd: &mut [__m128i; N],
    e0: &mut [__m128i; N],
    blocks: [&[u8; 64]; N],
) {
    let mask = sha1ni_bswap_mask();
    let mut msg = [[_mm_setzero_si128(); 4]; N];
    for i in 0..N {
        for (k, m) in msg[i].iter_mut().enumerate() {
            let chunk = &blocks[i][16 * k..16 * k + 16];
            // SAFETY: `chunk` is 16 readable bytes; `loadu` has no alignment requirement.
            *m = _mm_shuffle_epi8(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) }, mask);
        }
    }
    let abcd_save = *abcd;
    let e_save = *e0;
    // Four-round groups g = 0..20; message group g lives in msg[g % 4].
    let mut e_in: [__m128i; N] = core::array::from_fn(|i| _mm_add_epi32(e0[i], msg[i][0]));
    let mut prev = *abcd;
    macro_rules! group {
        ($g:expr, $f:literal) => {{
            let g: usize = $g;
            for i in 0..N {
                prev[i] = abcd[i];
                abcd[i] = _mm_sha1rnds4_epu32::<$f>(abcd[i], e_in[i]);
                if g + 1 < 20 {
                    let next = g + 1;
                    if next >= 4 {
                        let m = &mut msg[i];
                        let x = _mm_sha1msg1_epu32(m[next % 4], m[(next + 1) % 4]);
                        let x = _mm_xor_si128(x, m[(next + 2) % 4]);
                        m[next % 4] = _mm_sha1msg2_epu32(x, m[(next + 3) % 4]);
                    }
                    e_in[i] = _mm_sha1nexte_epu32(prev[i], msg[i][next % 4]);
                }
            }
        }};
    }
    for g in 0..5 {
        group!(g, 0);
    }
    for g in 5..10 {
        group!(g, 1);
    }
    for g in 10..15 {
        group!(g, 2);
    }
    for g in 15..20 {
        group!(g, 3);
    }
    for i in 0..N {
        e0[i] = _mm_sha1nexte_epu32(prev[i], e_save[i]);
        abcd[i] = _mm_add_epi32(abcd[i], abcd_save[i]);
    }
}

/// `N` independent single-block SHA-1 compressions with SHA-NI, interleaved.
///
/// One stream is a chain of dependent `sha1rnds4` (latency-bound); `N` streams of different
/// circuits fill the SHA unit's pipeline. Lane `i` compresses `blocks[i]` into `h[i]`.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn sha1ni_xn<const N: usize>(h: &mut [[u32; 5]; N], blocks: [&[u8; 64]; N]) {
    let mut abcd = [_mm_setzero_si128(); N];
    let mut e = [_mm_setzero_si128(); N];
    for i in 0..N {
        (abcd[i], e[i]) = sha1ni_load(&h[i]);
    }
    sha1ni_core(&mut abcd, &mut e, blocks);
    for i in 0..N {
        h[i] = sha1ni_store(abcd[i], e[i]);
    }
}

/// Blocks per lane that [`sha1ni_run`] takes at most.
pub(crate) const SHA1_RUN_MAX: usize = 10;

/// `N` streams of up to [`SHA1_RUN_MAX`] blocks each, interleaved, with the chaining values kept
/// in SHA-NI form from block to block (no conversion per block).
///
/// Lane `i` compresses `blocks[i][..n_blocks[i]]` into `h[i]`; `mid[i]` receives its chaining
/// value after the first `n_mid[i]` blocks (`1 ..= n_blocks[i]`). Lanes with fewer blocks than the
/// longest compress a spare block whose result is dropped.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(crate) fn sha1ni_run<const N: usize>(
    h: &mut [[u32; 5]; N],
    blocks: &[[&[u8; 64]; SHA1_RUN_MAX]; N],
    n_blocks: [usize; N],
    n_mid: [usize; N],
    mid: &mut [[u32; 5]; N],
) {
    let mut abcd = [_mm_setzero_si128(); N];
    let mut e = [_mm_setzero_si128(); N];
    for i in 0..N {
        (abcd[i], e[i]) = sha1ni_load(&h[i]);
    }
    let steps = n_blocks
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(SHA1_RUN_MAX);
    #[allow(clippy::needless_range_loop)] // `step` indexes every lane's column
    for step in 0..steps {
        let (old_abcd, old_e) = (abcd, e);
        sha1ni_core(&mut abcd, &mut e, core::array::from_fn(|i| blocks[i][step]));
        for i in 0..N {
            if step >= n_blocks[i] {
                (abcd[i], e[i]) = (old_abcd[i], old_e[i]);
            } else if step + 1 == n_mid[i] {
                mid[i] = sha1ni_store(abcd[i], e[i]);
            }
        }
    }
    for i in 0..N {
        h[i] = sha1ni_store(abcd[i], e[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha1state::compress1;

    #[test]
    fn sha1x8_matches_single_stream() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut h: [[u32; 5]; 8] =
            core::array::from_fn(|i| core::array::from_fn(|j| (i * 0x0101_0101 + j * 77) as u32));
        let blocks: [[u8; 64]; 8] =
            core::array::from_fn(|i| core::array::from_fn(|j| (i * 31 + j * 5) as u8));
        let active = [true, false, true, true, true, true, false, true];
        let mut want = h;
        for ((w, b), on) in want.iter_mut().zip(&blocks).zip(active) {
            if on {
                compress1(w, b);
            }
        }
        let refs: [&[u8; 64]; 8] = core::array::from_fn(|i| &blocks[i]);
        // SAFETY: AVX2 was detected above.
        unsafe { sha1x8_compress(&mut h, refs, active) };
        assert_eq!(h, want);
    }

    fn sha1ni_xn_case<const N: usize>() {
        let mut h: [[u32; 5]; N] =
            core::array::from_fn(|i| core::array::from_fn(|j| (i * 0x0303_0101 + j * 91) as u32));
        let blocks: [[u8; 64]; N] =
            core::array::from_fn(|i| core::array::from_fn(|j| (i * 17 + j * 3) as u8));
        let mut want = h;
        for (w, b) in want.iter_mut().zip(&blocks) {
            compress1(w, b);
        }
        let refs: [&[u8; 64]; N] = core::array::from_fn(|i| &blocks[i]);
        // SAFETY: the caller checked SHA-NI and SSE4.1.
        unsafe { sha1ni_xn(&mut h, refs) };
        assert_eq!(h, want, "{N} streams");
    }

    /// Lanes of different lengths, each with its mid-point, against one block at a time.
    #[test]
    fn sha1ni_run_matches_single_stream() {
        if !std::arch::is_x86_feature_detected!("sha")
            || !std::arch::is_x86_feature_detected!("sse4.1")
        {
            return;
        }
        let data: [[[u8; 64]; SHA1_RUN_MAX]; 8] = core::array::from_fn(|i| {
            core::array::from_fn(|b| core::array::from_fn(|j| (i * 29 + b * 7 + j * 3) as u8))
        });
        let n_blocks = [10, 8, 9, 0, 1, 10, 3, 9];
        let n_mid = [8, 7, 8, 0, 1, 2, 3, 9];
        let h0: [[u32; 5]; 8] =
            core::array::from_fn(|i| core::array::from_fn(|j| (i * 0x0505_0101 + j * 13) as u32));
        let table: [[&[u8; 64]; SHA1_RUN_MAX]; 8] =
            core::array::from_fn(|i| core::array::from_fn(|b| &data[i][b]));
        let (mut h, mut mid) = (h0, [[0u32; 5]; 8]);
        // SAFETY: SHA-NI and SSE4.1 checked above.
        unsafe { sha1ni_run::<8>(&mut h, &table, n_blocks, n_mid, &mut mid) };
        let t4 = [table[0], table[1], table[2], table[3]];
        let (mut h4, mut mid4) = ([h0[0], h0[1], h0[2], h0[3]], [[0u32; 5]; 4]);
        let (nb4, nm4) = ([10, 8, 9, 0], [8, 7, 8, 0]);
        // SAFETY: as above.
        unsafe { sha1ni_run::<4>(&mut h4, &t4, nb4, nm4, &mut mid4) };
        for i in 0..8 {
            let mut want = h0[i];
            let mut want_mid = [0u32; 5];
            for (b, block) in data[i].iter().enumerate().take(n_blocks[i]) {
                compress1(&mut want, block);
                if b + 1 == n_mid[i] {
                    want_mid = want;
                }
            }
            assert_eq!(h[i], want, "lane {i}");
            assert_eq!(mid[i], want_mid, "lane {i} mid");
            if i < 4 {
                assert_eq!((h4[i], mid4[i]), (want, want_mid), "lane {i} of 4");
            }
        }
    }

    #[test]
    fn sha1ni_xn_matches_single_stream() {
        if !std::arch::is_x86_feature_detected!("sha")
            || !std::arch::is_x86_feature_detected!("sse4.1")
        {
            return;
        }
        sha1ni_xn_case::<1>();
        sha1ni_xn_case::<4>();
        sha1ni_xn_case::<8>();
    }
}
