//! A SHA-1 running digest (FIPS 180-4) whose state this crate owns, so it can be zeroized and
//! hashed several circuits at a time. Single-block compression is the `sha1` crate's (SHA-NI when
//! the CPU has it).

use sha1::digest::generic_array::GenericArray;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::RelayDigest;

/// FIPS 180-4 §5.3.1 initial hash value.
const H0: [u32; 5] = [
    0x6745_2301,
    0xefcd_ab89,
    0x98ba_dcfe,
    0x1032_5476,
    0xc3d2_e1f0,
];

/// SHA-1 state: chaining value, the partial block not yet compressed, and the length so far.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Sha1State {
    pub(crate) h: [u32; 5],
    pub(crate) buf: [u8; 64],
    pub(crate) buf_len: usize,
    pub(crate) len: u64,
}

/// Compresses one 64-byte block into `h`.
pub(crate) fn compress1(h: &mut [u32; 5], block: &[u8; 64]) {
    sha1::compress(h, core::slice::from_ref(GenericArray::from_slice(block)));
}

impl Sha1State {
    pub(crate) fn new() -> Self {
        Sha1State {
            h: H0,
            buf: [0; 64],
            buf_len: 0,
            len: 0,
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.buf_len > 0 {
            let room = 64 - self.buf_len;
            let n = room.min(data.len());
            let (now, later) = data.split_at(n);
            if let Some(dst) = self.buf.get_mut(self.buf_len..self.buf_len + n) {
                dst.copy_from_slice(now);
            }
            self.buf_len += n;
            data = later;
            if self.buf_len < 64 {
                return;
            }
            let block = self.buf;
            compress1(&mut self.h, &block);
            self.buf_len = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            if let Ok(b) = <&[u8; 64]>::try_from(b) {
                compress1(&mut self.h, b);
            }
        }
        let rest = blocks.remainder();
        if let Some(dst) = self.buf.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        self.buf_len = rest.len();
    }

    /// The digest of everything so far, leaving the running state as it was.
    pub(crate) fn peek(&self) -> RelayDigest {
        let mut s = self.clone();
        let bit_len = s.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let pad_len = if s.buf_len < 56 { 56 } else { 120 } - s.buf_len;
        s.update(pad.get(..pad_len).unwrap_or_default());
        s.update(&bit_len.to_be_bytes());
        let mut out = [0u8; 20];
        for (o, w) in out.chunks_exact_mut(4).zip(s.h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};

    /// Every split of every length up to 300 bytes agrees with the `sha1` crate.
    #[test]
    fn matches_sha1_crate() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            for split in [0, 1.min(n), n / 2, n.saturating_sub(1), n] {
                let mut s = Sha1State::new();
                s.update(&data[..split]);
                s.update(&data[split..n]);
                let want: RelayDigest = Sha1::digest(&data[..n]).into();
                assert_eq!(s.peek(), want, "n={n} split={split}");
            }
        }
        let mut s = Sha1State::new();
        s.update(b"abc");
        assert_eq!(
            hex::encode(s.peek()),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
