//! The tor1 running digest over relay cell bodies (tor-spec §6.1, "Relay cells";
//! <https://spec.torproject.org/tor-spec/relay-cells.html>).
//!
//! Body layout: command (1) | recognized (2) | stream id (2) | digest (4) | length (2) | data.
//! The digest field holds the first four bytes of a SHA-1 running digest over every body sent to
//! or from this hop (padding included), seeded with `Df`/`Db`, taken with the digest field zeroed.

use subtle::ConstantTimeEq;

use crate::sha1state::Sha1State;
use crate::{CellBody, RelayDigest};

/// A SHA-1 running digest: the `sha1` crate's (for the reference) or this crate's own.
pub(crate) trait Running: Clone {
    fn update(&mut self, data: &[u8]);
    /// The digest so far, without disturbing the running state.
    fn peek(&self) -> RelayDigest;
}

impl Running for sha1::Sha1 {
    fn update(&mut self, data: &[u8]) {
        sha1::Digest::update(self, data);
    }
    fn peek(&self) -> RelayDigest {
        sha1::Digest::finalize(self.clone()).into()
    }
}

impl Running for Sha1State {
    fn update(&mut self, data: &[u8]) {
        Sha1State::update(self, data);
    }
    fn peek(&self) -> RelayDigest {
        Sha1State::peek(self)
    }
}

/// Offset of the `recognized` field.
const RECOGNIZED: core::ops::Range<usize> = 1..3;
/// Offset of the 4-byte `digest` field.
const DIGEST: core::ops::Range<usize> = 5..9;

/// Feeds `body` with its digest field read as zero into `d`.
fn update_zeroed<D: Running>(d: &mut D, body: &CellBody) {
    let (head, rest) = body.split_at(DIGEST.start);
    let tail = rest.get(DIGEST.len()..).unwrap_or_default();
    d.update(head);
    d.update(&[0u8; 4]);
    d.update(tail);
}

/// Checks whether a decrypted `body` is addressed to the hop owning `d`.
///
/// Returns the full 20-byte digest (for authenticated SENDME) and commits it into `d` only on a
/// match: a body that merely has `recognized == 0` by chance (P = 2^-16) is forwarded, and the
/// spec says it must not touch this hop's running digest.
pub(crate) fn open<D: Running>(d: &mut D, body: &CellBody) -> Option<RelayDigest> {
    if body.get(RECOGNIZED) != Some(&[0, 0][..]) {
        return None;
    }
    let mut trial = d.clone();
    update_zeroed(&mut trial, body);
    let full = trial.peek();
    let claimed = body.get(DIGEST)?;
    let ours = full.get(..4)?;
    if bool::from(ours.ct_eq(claimed)) {
        *d = trial;
        Some(full)
    } else {
        None
    }
}

/// Whether the first four bytes of `full` equal the digest field of `body`, in constant time.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn matches(full: &RelayDigest, body: &CellBody) -> bool {
    match (full.get(..4), body.get(DIGEST)) {
        (Some(a), Some(b)) => bool::from(a.ct_eq(b)),
        _ => false,
    }
}

/// Prepares a plaintext `body` originated at (or destined for) the hop owning `d`: zeroes
/// `recognized`, writes the digest field, and returns the full 20-byte digest.
pub(crate) fn seal<D: Running>(d: &mut D, body: &mut CellBody) -> RelayDigest {
    body[1] = 0;
    body[2] = 0;
    update_zeroed(d, body);
    let full = d.peek();
    body[5..9].copy_from_slice(&full[..4]);
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};

    fn seeded() -> Sha1 {
        let mut d = Sha1::new();
        Digest::update(&mut d, [0x42u8; 20]);
        d
    }

    #[test]
    fn seal_then_open() {
        let (mut tx, mut rx) = (seeded(), seeded());
        for n in 0..5u8 {
            let mut body = [n; 509];
            let sent = seal(&mut tx, &mut body);
            assert_eq!(body[1..3], [0, 0]);
            assert_eq!(body[5..9], sent[..4]);
            assert_eq!(open(&mut rx, &body), Some(sent));
        }
    }

    /// tor-spec §6.1: a zero `recognized` with a wrong digest is forwarded, and the running
    /// digest must not be updated.
    #[test]
    fn failed_peek_leaves_state_alone() {
        let mut rx = seeded();
        let before: RelayDigest = rx.clone().finalize().into();
        let mut body = [3u8; 509];
        let mut tx = seeded();
        seal(&mut tx, &mut body);
        body[5] ^= 1;
        assert_eq!(open(&mut rx, &body), None);
        let after: RelayDigest = rx.clone().finalize().into();
        assert_eq!(before, after);
        // Nonzero recognized is never checked.
        body[5] ^= 1;
        body[2] = 1;
        assert_eq!(open(&mut rx, &body), None);
        body[2] = 0;
        assert!(open(&mut rx, &body).is_some());
    }
}
