//! The plain, one-cell-at-a-time tor1 relay crypto, built only from the `aes`, `ctr` and `sha1`
//! crates (tor-spec §5.2.1, §5.5, §6.1).
//!
//! This is the oracle every backend of [`crate::Engine`] is tested against, and the easiest place
//! to read what tor1 does. It is correct but not fast: the relay's data path uses
//! [`crate::Tor1Hop`] through [`crate::Engine::process_batch`].

use aes::cipher::{KeyIvInit, StreamCipher};
use sha1::{Digest, Sha1};

use crate::{digest, CellBody, RelayDigest, KDF_LEN};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// One direction of one hop: a continuous AES-128-CTR keystream (IV zero, counter from zero) and
/// a SHA-1 running digest.
#[derive(Clone)]
struct Layer {
    cipher: Aes128Ctr,
    digest: Sha1,
}

/// Reference tor1 state of one hop of a circuit, as seen from either end.
#[derive(Clone)]
pub struct Tor1Hop {
    /// Origin to relay: `Kf`, `Df`.
    fwd: Layer,
    /// Relay to origin: `Kb`, `Db`.
    bwd: Layer,
}

impl core::fmt::Debug for Tor1Hop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("reference::Tor1Hop").finish_non_exhaustive()
    }
}

impl Layer {
    fn new(seed: &[u8], key: &[u8]) -> Self {
        let mut d = Sha1::new();
        d.update(seed);
        let cipher = Aes128Ctr::new(key.into(), &[0u8; 16].into());
        Layer { cipher, digest: d }
    }
}

impl Tor1Hop {
    /// Builds the state from the KDF output `Df(20) | Db(20) | Kf(16) | Kb(16)`.
    pub fn from_kdf(kdf: &[u8; KDF_LEN]) -> Self {
        let (df, rest) = kdf.split_at(20);
        let (db, rest) = rest.split_at(20);
        let (kf, kb) = rest.split_at(16);
        Tor1Hop {
            fwd: Layer::new(df, kf),
            bwd: Layer::new(db, kb),
        }
    }

    /// Relay side: strips this hop's layer from a cell travelling away from the origin and
    /// returns its full digest if the cell is for this hop.
    pub fn relay_recv_forward(&mut self, body: &mut CellBody) -> Option<RelayDigest> {
        self.fwd.cipher.apply_keystream(body);
        digest::open(&mut self.fwd.digest, body)
    }

    /// Relay side: adds this hop's layer to a cell from farther away, heading to the origin.
    pub fn relay_forward_backward(&mut self, body: &mut CellBody) {
        self.bwd.cipher.apply_keystream(body);
    }

    /// Relay side: sets the digest of a cell this hop originates, then encrypts it.
    pub fn relay_send_backward(&mut self, body: &mut CellBody) -> RelayDigest {
        let full = digest::seal(&mut self.bwd.digest, body);
        self.bwd.cipher.apply_keystream(body);
        full
    }

    /// Origin side: sets the digest of a cell for this hop from `Df`, then adds its `Kf` layer.
    pub fn origin_seal_forward(&mut self, body: &mut CellBody) -> RelayDigest {
        let full = digest::seal(&mut self.fwd.digest, body);
        self.fwd.cipher.apply_keystream(body);
        full
    }

    /// Origin side: removes this hop's `Kb` layer and checks the `Db` digest.
    pub fn origin_recv_backward(&mut self, body: &mut CellBody) -> Option<RelayDigest> {
        self.bwd.cipher.apply_keystream(body);
        digest::open(&mut self.bwd.digest, body)
    }

    /// Origin side: applies only the forward keystream (a layer for a hop that is not the target).
    pub fn crypt_forward(&mut self, body: &mut CellBody) {
        self.fwd.cipher.apply_keystream(body);
    }
}

/// Origin side: seals `body` for `hops[target]` (digest from its `Df`), then adds the layers of
/// `target, target - 1, ..., 0` so that hop 0 removes the outermost one. Returns `None` if
/// `target` is out of range.
pub fn origin_send(
    hops: &mut [Tor1Hop],
    target: usize,
    body: &mut CellBody,
) -> Option<RelayDigest> {
    let (first, last) = hops.split_at_mut(target.checked_add(1)?.min(hops.len()));
    let _ = last;
    let t = first.get_mut(target)?;
    let full = digest::seal(&mut t.fwd.digest, body);
    for hop in first.iter_mut().rev() {
        hop.fwd.cipher.apply_keystream(body);
    }
    Some(full)
}

/// Origin side: peels backward layers hop by hop until one recognizes the cell; returns that
/// hop's index and the cell's full digest, or `None` if no hop did (a protocol violation).
pub fn origin_recv(hops: &mut [Tor1Hop], body: &mut CellBody) -> Option<(usize, RelayDigest)> {
    for (i, hop) in hops.iter_mut().enumerate() {
        hop.bwd.cipher.apply_keystream(body);
        if let Some(full) = digest::open(&mut hop.bwd.digest, body) {
            return Some((i, full));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockEncrypt, KeyInit};

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// FIPS-197 Appendix C.1 (AES-128 single block).
    #[test]
    fn fips197_c1() {
        let k: [u8; 16] = h("000102030405060708090a0b0c0d0e0f");
        let mut b = h::<16>("00112233445566778899aabbccddeeff").into();
        aes::Aes128::new(&k.into()).encrypt_block(&mut b);
        assert_eq!(hex::encode(b), "69c4e0d86a7b0430d8cdb78070b4c55a");
    }

    /// NIST SP 800-38A F.5.1 CTR-AES128.Encrypt, with the counter block starting at
    /// f0f1...feff; checks that the `ctr` flavour here is the 128-bit big-endian one.
    #[test]
    fn sp800_38a_f51() {
        let k: [u8; 16] = h("2b7e151628aed2a6abf7158809cf4f3c");
        let iv: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let mut c = Aes128Ctr::new(&k.into(), &iv.into());
        let mut data = hex::decode(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        )
        .unwrap();
        c.apply_keystream(&mut data);
        assert_eq!(
            hex::encode(data),
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff\
             5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"
        );
    }

    /// FIPS 180-2 Appendix A: SHA-1("abc") and the 448-bit message.
    #[test]
    fn fips180_sha1() {
        assert_eq!(
            hex::encode(Sha1::digest(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex::encode(Sha1::digest(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    fn kdf(fill: u8) -> [u8; KDF_LEN] {
        core::array::from_fn(|i| fill.wrapping_add(i as u8).wrapping_mul(31))
    }

    /// A three-hop circuit: origin and relays agree on every cell, in both directions.
    #[test]
    fn three_hop_round_trip() {
        let seeds = [kdf(1), kdf(2), kdf(3)];
        let mut origin: Vec<Tor1Hop> = seeds.iter().map(Tor1Hop::from_kdf).collect();
        let mut relays: Vec<Tor1Hop> = seeds.iter().map(Tor1Hop::from_kdf).collect();
        for n in 0..20u8 {
            let target = usize::from(n % 3);
            let mut plain = [n; 509];
            plain[0] = 2;
            let mut cell = plain;
            let sent = origin_send(&mut origin, target, &mut cell).unwrap();
            let mut got = None;
            for (i, r) in relays.iter_mut().enumerate() {
                if let Some(d) = r.relay_recv_forward(&mut cell) {
                    got = Some((i, d));
                    break;
                }
            }
            assert_eq!(got, Some((target, sent)));
            assert_eq!(cell[9..], plain[9..]);

            // Reply from the same hop; the hops nearer the origin add their layers.
            let mut back = [n ^ 0x55; 509];
            let replied = relays[target].relay_send_backward(&mut back);
            for r in relays[..target].iter_mut().rev() {
                r.relay_forward_backward(&mut back);
            }
            assert_eq!(origin_recv(&mut origin, &mut back), Some((target, replied)));
            assert_eq!(back[9..], [n ^ 0x55; 500]);
        }
    }
}
