//! AES-128 key expansion (FIPS-197 §5.2) for the hand-written kernels.
//!
//! The `aes` crate keeps its round keys private, so the SIMD backends expand the key themselves.
//! This runs once per hop (at circuit extension), never per cell, so a plain table-based version
//! is enough; it is checked against FIPS-197 Appendix A.1 below.
//!
//! Each round key is stored twice side by side (32 bytes, 32-byte aligned), so the VAES-256
//! kernel can use it directly as a `ymm` memory operand, while the AES-NI kernels read the low
//! 16 bytes (16-byte aligned, as legacy-SSE memory operands require).

use zeroize::{Zeroize, ZeroizeOnDrop};

/// The eleven AES-128 round keys, in the byte order `aesenc` expects, each one doubled to
/// 32 bytes (see the module doc).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
#[repr(C, align(32))]
pub(crate) struct RoundKeys([[u8; 32]; 11]);

/// FIPS-197 Figure 7.
const SBOX: [u8; 256] = [
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
];

/// Round constants for AES-128 (FIPS-197 §5.2, `Rcon[i]` for i = 1..=10).
const RCON: [u8; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];

impl RoundKeys {
    /// Expands a 16-byte AES-128 key into 11 round keys.
    pub(crate) fn expand(key: &[u8; 16]) -> Self {
        let mut rk = [[0u8; 16]; 11];
        rk[0] = *key;
        for (round, rcon) in (1..11).zip(RCON) {
            let prev = rk[round - 1];
            // RotWord then SubWord on the last word of the previous round key, then Rcon.
            let mut t = [
                SBOX[usize::from(prev[13])] ^ rcon,
                SBOX[usize::from(prev[14])],
                SBOX[usize::from(prev[15])],
                SBOX[usize::from(prev[12])],
            ];
            let mut next = [0u8; 16];
            for word in 0..4 {
                for byte in 0..4 {
                    t[byte] ^= prev[word * 4 + byte];
                    next[word * 4 + byte] = t[byte];
                }
            }
            rk[round] = next;
        }
        let mut wide = [[0u8; 32]; 11];
        for (w, k) in wide.iter_mut().zip(&rk) {
            w[..16].copy_from_slice(k);
            w[16..].copy_from_slice(k);
        }
        rk.zeroize();
        RoundKeys(wide)
    }

    /// Round key `i` (0..=10), 16 bytes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn key(&self, i: usize) -> [u8; 16] {
        let mut k = [0u8; 16];
        if let Some(w) = self.0.get(i) {
            k.copy_from_slice(&w[..16]);
        }
        k
    }

    /// The doubled keys: 11 x 32 bytes, 32-byte aligned, for the kernels' memory operands.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn wide(&self) -> &[[u8; 32]; 11] {
        &self.0
    }
}

/// The unused end of a cell's last keystream block, kept for the next cell of the same stream
/// (VAES-256 kernel only).
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[repr(C, align(64))]
pub(crate) struct Carry {
    /// Whitened counter base, doubled (32-byte aligned): round key 0 XOR the counter block
    /// whose last byte is zero and whose other bytes are those of the cells' first fresh block,
    /// so a counter block in the same 256-block window is this XOR its last byte alone.
    /// Key-derived: zeroized on drop with the rest.
    pub(crate) w0: [u8; 32],
    /// Which window `w0` is for: `(first fresh block >> 8) + 1`, 0 when not made yet.
    pub(crate) w0_tag: u64,
    /// The stream position the carry belongs to: it is used only when the next cell starts
    /// there, so a stream moved by another backend recomputes its head block instead.
    pub(crate) pos: u64,
    /// Keystream for the next cell's first `16 - pos % 16` bytes (none if `pos % 16 == 0`),
    /// zeros after: ready to XOR over the cell's first 16 bytes.
    pub(crate) bytes: [u8; 16],
}

/// Overwrites `buf` with zeros so the compiler cannot drop the stores: a stack buffer of
/// keystream or other key-derived bytes, before it goes out of scope.
///
/// `zeroize` writes a byte array one volatile byte at a time, and a volatile store of a
/// 16-byte array goes through a stack temporary (measured: 576 bytes cost 17 ns per cell on
/// the AES-NI path, +22%). On x86-64 this is a plain `fill` (vector stores) followed by an
/// empty assembly block that is handed the buffer's address and may read memory, so the
/// compiler must keep the stores; elsewhere `zeroize`.
#[allow(unsafe_code)]
pub(crate) fn wipe(buf: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        buf.fill(0);
        // SAFETY: the block is empty; it only receives an address, touches no register,
        // stack or flags, and (without `nomem`) counts as reading memory, which keeps the
        // zeroing stores above.
        unsafe {
            core::arch::asm!(
                "/* {0} */",
                in(reg) buf.as_ptr(),
                options(nostack, preserves_flags, readonly)
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    buf.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 Appendix A.1: key expansion of 2b7e1516 28aed2a6 abf71588 09cf4f3c.
    #[test]
    fn fips197_a1_key_expansion() {
        let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        let rk = RoundKeys::expand(&key);
        assert_eq!(hex::encode(rk.key(1)), "a0fafe1788542cb123a339392a6c7605");
        assert_eq!(hex::encode(rk.key(2)), "f2c295f27a96b9435935807a7359f67f");
        assert_eq!(hex::encode(rk.key(10)), "d014f9a8c9ee2589e13f0cc8b6630ca6");
        for w in rk.wide() {
            assert_eq!(w[..16], w[16..]);
        }
        assert_eq!(rk.wide().as_ptr() as usize % 32, 0);
    }

    #[test]
    fn wipe_clears_every_byte() {
        for len in [0usize, 1, 15, 16, 17, 64, 509, 576] {
            let mut buf = vec![0xa5u8; len];
            wipe(&mut buf);
            assert!(buf.iter().all(|&b| b == 0), "{len}");
        }
    }
}
