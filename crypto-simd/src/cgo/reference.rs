//! The portable reference for CGO: the primitives of proposal 359 §"The CGO construction"
//! (<https://spec.torproject.org/proposals/359-cgo-redux.html>) written plainly on the `aes`
//! and `polyval` crates, one cell at a time. Every faster backend is tested byte for byte
//! against this module, and the published vectors (C tor's and Arti's) are tested here.
//!
//! Notation as in the proposal:
//! - `UH` is POLYVAL (RFC 8452).
//! - `ET((KB, KU), T, M)` is the LRW2 tweakable block cipher
//!   `UH(KU, T) ^ AES(KB, M ^ UH(KU, T))`; its tweak is `T = H | X_R` with `H = T' | CMD`
//!   (16 + 1 + 493 bytes, hashed as blocks `T'`, `CMD | X_R[..15]`, then `X_R[15..]` zero-padded).
//! - `PRF((K, B), T, t) = CTR(K, (UH(B, T) & ~0x3f in the last byte) + 31 t)`: AES-CTR with a
//!   128-bit big-endian counter; `t = 0` gives 493 bytes to mask `X_R`, `t = 1` gives the 80
//!   bytes of a key update. Clearing the low six bits means the counter never carries out of
//!   the last byte (at most 36 blocks are used).
//! - `ENC_UIV((J, S), H, (X_L, X_R))`: `Y_L = ET_enc(J, H | X_R, X_L)`,
//!   `Y_R = X_R ^ PRF(S, Y_L, 0)`. `DEC_UIV` undoes it: `X_R = Y_R ^ PRF(S, Y_L, 0)`,
//!   `X_L = ET_dec(J, H | X_R, Y_L)`. Relays only ever encrypt, clients only ever decrypt.
//! - `UPDATE_UIV((J, S), N)`: `J' | S' | N' = PRF(S, N, 1)` (32 + 32 + 16 bytes).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use polyval::universal_hash::UniversalHash;
use polyval::Polyval;
use zeroize::{Zeroize, Zeroizing};

use super::{BLK, PAYLOAD_LEN, UIV_KEY_LEN, UPDATE_LEN};
use crate::CellBody;

/// Offset, in blocks, of the `t = 1` PRF stream.
const T1_OFFSET: u8 = 31;

/// The keys of one UIV+ instance: `J = (KB, KU)` for ET and `S = (K, B)` for the PRF.
#[derive(Clone)]
pub(crate) struct UivKeys {
    /// `KB`: AES-128 key of ET (the `aes` crate zeroizes it on drop).
    kb: aes::Aes128,
    /// `KU`: POLYVAL key of ET.
    ku: Zeroizing<[u8; BLK]>,
    /// `K`: AES-128 key of the PRF.
    k: aes::Aes128,
    /// `B`: POLYVAL key of the PRF.
    b: Zeroizing<[u8; BLK]>,
}

/// Splits `J | S` (64 bytes) into `KB, KU, K, B`.
pub(crate) fn split_keys(keys: &[u8; UIV_KEY_LEN]) -> [[u8; BLK]; 4] {
    let mut out = [[0u8; BLK]; 4];
    for (o, c) in out.iter_mut().zip(keys.chunks_exact(BLK)) {
        o.copy_from_slice(c);
    }
    out
}

impl UivKeys {
    /// Builds the keys from `J | S` = `KB(16) | KU(16) | K(16) | B(16)`.
    pub(crate) fn new(keys: &[u8; UIV_KEY_LEN]) -> Self {
        let mut parts = Zeroizing::new(split_keys(keys));
        UivKeys {
            kb: aes::Aes128::new((&parts[0]).into()),
            ku: Zeroizing::new(parts[1]),
            k: aes::Aes128::new((&parts[2]).into()),
            b: Zeroizing::new(core::mem::take(&mut parts[3])),
        }
    }
}

/// `UH(key, blocks...)` over whole blocks then a zero-padded tail.
fn polyval(key: &[u8; BLK], blocks: &[[u8; BLK]], tail: &[u8]) -> [u8; BLK] {
    let mut p = Polyval::new(key.into());
    for b in blocks {
        p.update(&[(*b).into()]);
    }
    if !tail.is_empty() {
        p.update_padded(tail);
    }
    p.finalize().into()
}

/// The ET mask `UH(KU, T' | CMD | X_R)`.
pub(crate) fn et_mask(
    ku: &[u8; BLK],
    tprime: &[u8; BLK],
    cmd: u8,
    x_r: &[u8; PAYLOAD_LEN],
) -> [u8; BLK] {
    let mut b1 = [0u8; BLK];
    b1[0] = cmd;
    b1[1..].copy_from_slice(&x_r[..BLK - 1]);
    let out = polyval(ku, &[*tprime, b1], &x_r[BLK - 1..]);
    b1.zeroize();
    out
}

/// The PRF's initial counter block for `tweak` and `t`.
fn prf_counter(b: &[u8; BLK], tweak: &[u8; BLK], t: u8) -> [u8; BLK] {
    let mut iv = polyval(b, &[*tweak], &[]);
    iv[BLK - 1] = (iv[BLK - 1] & 0xc0) + T1_OFFSET * t;
    iv
}

/// XORs `PRF(S, tweak, t)` into `out`; at most `(64 - 31 t) * 16` bytes.
fn prf_xor(keys: &UivKeys, tweak: &[u8; BLK], t: u8, out: &mut [u8]) {
    let mut ctr = prf_counter(&keys.b, tweak, t);
    for chunk in out.chunks_mut(BLK) {
        let mut ks = ctr.into();
        keys.k.encrypt_block(&mut ks);
        for (o, k) in chunk.iter_mut().zip(ks.iter()) {
            *o ^= k;
        }
        ks.zeroize();
        // The low six bits were cleared and at most 36 blocks are used: no carry.
        ctr[BLK - 1] = ctr[BLK - 1].wrapping_add(1);
    }
    ctr.zeroize();
}

/// `PRF(S, tweak, 0)` XORed into `x_r`.
pub(crate) fn prf_t0(keys: &UivKeys, tweak: &[u8; BLK], x_r: &mut [u8; PAYLOAD_LEN]) {
    prf_xor(keys, tweak, 0, x_r);
}

/// `PRF(S, tweak, 1)`: the 80 bytes `J' | S' | N'` of a key update.
pub(crate) fn prf_t1(keys: &UivKeys, tweak: &[u8; BLK]) -> Zeroizing<[u8; UPDATE_LEN]> {
    let mut out = Zeroizing::new([0u8; UPDATE_LEN]);
    prf_xor(keys, tweak, 1, &mut out[..]);
    out
}

/// Splits a cell body into `(X_L, X_R)`.
fn split(cell: &mut CellBody) -> (&mut [u8; BLK], &mut [u8; PAYLOAD_LEN]) {
    let (l, r) = cell.split_at_mut(BLK);
    // The lengths are fixed by the types: 16 + 493 = 509.
    #[allow(clippy::unwrap_used)]
    (l.try_into().unwrap(), r.try_into().unwrap())
}

fn xor16(a: &mut [u8; BLK], b: &[u8; BLK]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// `ET_enc(J, T' | cmd | X_R, block)`.
pub(crate) fn et_encrypt(
    keys: &UivKeys,
    tprime: &[u8; BLK],
    cmd: u8,
    x_r: &[u8; PAYLOAD_LEN],
    block: &mut [u8; BLK],
) {
    let mut mask = et_mask(&keys.ku, tprime, cmd, x_r);
    xor16(block, &mask);
    keys.kb.encrypt_block(block.into());
    xor16(block, &mask);
    mask.zeroize();
}

/// `ET_dec(J, T' | cmd | X_R, block)`.
pub(crate) fn et_decrypt(
    keys: &UivKeys,
    tprime: &[u8; BLK],
    cmd: u8,
    x_r: &[u8; PAYLOAD_LEN],
    block: &mut [u8; BLK],
) {
    let mut mask = et_mask(&keys.ku, tprime, cmd, x_r);
    xor16(block, &mask);
    keys.kb.decrypt_block(block.into());
    xor16(block, &mask);
    mask.zeroize();
}

/// `ENC_UIV(keys, T' | cmd, cell)` in place.
pub(crate) fn uiv_encrypt(keys: &UivKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
    let (l, r) = split(cell);
    et_encrypt(keys, tprime, cmd, r, l);
    prf_t0(keys, l, r);
}

/// `DEC_UIV(keys, T' | cmd, cell)` in place.
pub(crate) fn uiv_decrypt(keys: &UivKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
    let (l, r) = split(cell);
    prf_t0(keys, l, r);
    et_decrypt(keys, tprime, cmd, r, l);
}

/// `UPDATE_UIV`: returns the new `J | S` and replaces `nonce` by `N'`.
pub(crate) fn uiv_update(keys: &UivKeys, nonce: &mut [u8; BLK]) -> Zeroizing<[u8; UIV_KEY_LEN]> {
    let out = prf_t1(keys, nonce);
    let mut new = Zeroizing::new([0u8; UIV_KEY_LEN]);
    new.copy_from_slice(&out[..UIV_KEY_LEN]);
    nonce.copy_from_slice(&out[UIV_KEY_LEN..]);
    new
}

#[cfg(test)]
mod tests {
    //! The primitive-level vectors: ET, PRF, UIV+ and UPDATE, from C tor's
    //! `src/test/cgo_vectors.inc` and Arti's `tor-proto/testdata/cgo_*.rs` (both generated by
    //! the proposal authors' Python reference), converted to one record per line in `testdata/`.
    use super::super::testvec::{records, unhex, unhex_n};
    use super::*;

    const CTOR_ET: &str = include_str!("testdata/ctor_et.txt");
    const ARTI_ET: &str = include_str!("testdata/arti_et.txt");
    const CTOR_PRF: &str = include_str!("testdata/ctor_prf.txt");
    const ARTI_PRF: &str = include_str!("testdata/arti_prf.txt");
    const CTOR_UIV: &str = include_str!("testdata/ctor_uiv.txt");
    const ARTI_UIV: &str = include_str!("testdata/arti_uiv.txt");
    const CTOR_UPD: &str = include_str!("testdata/ctor_uiv_update.txt");
    const ARTI_UPD: &str = include_str!("testdata/arti_uiv_update.txt");

    /// ET keys are 32 bytes `KB | KU`; build a UIV key set with a dummy PRF half.
    fn et_keys(k: &[u8; 32]) -> UivKeys {
        let mut full = [0u8; UIV_KEY_LEN];
        full[..32].copy_from_slice(k);
        UivKeys::new(&full)
    }

    /// PRF keys are 32 bytes `K | B`; build a UIV key set with a dummy ET half.
    fn prf_keys(k: &[u8; 32]) -> UivKeys {
        let mut full = [0u8; UIV_KEY_LEN];
        full[32..].copy_from_slice(k);
        UivKeys::new(&full)
    }

    fn run_et(data: &str) -> usize {
        let mut n = 0;
        for r in records(data, 5) {
            let keys = et_keys(&unhex_n(r[1]));
            let tweak: [u8; 510] = unhex_n(r[2]);
            let mut block: [u8; 16] = unhex_n(r[3]);
            let expect: [u8; 16] = unhex_n(r[4]);
            let tprime: [u8; 16] = tweak[..16].try_into().unwrap();
            let x_r: [u8; PAYLOAD_LEN] = tweak[17..].try_into().unwrap();
            if r[0] == "1" {
                et_encrypt(&keys, &tprime, tweak[16], &x_r, &mut block);
            } else {
                et_decrypt(&keys, &tprime, tweak[16], &x_r, &mut block);
            }
            assert_eq!(block, expect, "ET vector {n}");
            n += 1;
        }
        n
    }

    #[test]
    fn et_vectors() {
        assert!(run_et(CTOR_ET) >= 4);
        assert!(run_et(ARTI_ET) >= 4);
    }

    fn run_prf(data: &str) -> usize {
        let mut n = 0;
        for r in records(data, 4) {
            let keys = prf_keys(&unhex_n(r[0]));
            let tweak: [u8; 16] = unhex_n(r[2]);
            let expect = unhex(r[3]);
            if r[1] == "0" {
                let mut out = [0u8; PAYLOAD_LEN];
                prf_t0(&keys, &tweak, &mut out);
                assert_eq!(&out[..], &expect[..], "PRF t=0 vector {n}");
            } else {
                assert_eq!(r[1], "1");
                let out = prf_t1(&keys, &tweak);
                assert_eq!(&out[..expect.len()], &expect[..], "PRF t=1 vector {n}");
            }
            n += 1;
        }
        n
    }

    #[test]
    fn prf_vectors() {
        assert!(run_prf(CTOR_PRF) >= 4);
        assert!(run_prf(ARTI_PRF) >= 4);
    }

    fn run_uiv(data: &str) -> usize {
        let mut n = 0;
        for r in records(data, 7) {
            let keys = UivKeys::new(&unhex_n(r[1]));
            let h: [u8; 17] = unhex_n(r[2]);
            let tprime: [u8; 16] = h[..16].try_into().unwrap();
            let mut cell: CellBody = unhex_n(&format!("{}{}", r[3], r[4]));
            let expect: CellBody = unhex_n(&format!("{}{}", r[5], r[6]));
            if r[0] == "1" {
                uiv_encrypt(&keys, &tprime, h[16], &mut cell);
            } else {
                uiv_decrypt(&keys, &tprime, h[16], &mut cell);
            }
            assert_eq!(cell, expect, "UIV vector {n}");
            n += 1;
        }
        n
    }

    #[test]
    fn uiv_vectors() {
        assert!(run_uiv(CTOR_UIV) >= 4);
        assert!(run_uiv(ARTI_UIV) >= 4);
    }

    fn run_update(data: &str) -> usize {
        let mut n = 0;
        for r in records(data, 4) {
            let keys = UivKeys::new(&unhex_n(r[0]));
            let mut nonce: [u8; 16] = unhex_n(r[1]);
            let new = uiv_update(&keys, &mut nonce);
            assert_eq!(&new[..], &unhex(r[2])[..], "UPDATE keys {n}");
            assert_eq!(&nonce[..], &unhex(r[3])[..], "UPDATE nonce {n}");
            n += 1;
        }
        n
    }

    #[test]
    fn update_vectors() {
        assert!(run_update(CTOR_UPD) >= 2);
        assert!(run_update(ARTI_UPD) >= 2);
    }

    #[test]
    fn polyval_rfc8452_vector() {
        // RFC 8452 Appendix A: POLYVAL(H, X_1, X_2).
        let h: [u8; 16] = unhex_n("25629347589242761d31f826ba4b757b");
        let x1: [u8; 16] = unhex_n("4f4f95668c83dfb6401762bb2d01a262");
        let x2: [u8; 16] = unhex_n("d1a24ddd2721d006bbe45f20d3c9f362");
        assert_eq!(
            polyval(&h, &[x1, x2], &[]),
            unhex_n::<16>("f7a3b47b846119fae5b7866cf5e5b77e")
        );
    }
}
