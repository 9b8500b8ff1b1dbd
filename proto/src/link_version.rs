//! Link protocol versions and their negotiation.
//!
//! tor-spec §4.1 ("Negotiating versions with VERSIONS cells",
//! <https://spec.torproject.org/tor-spec/negotiating-channels.html>): each side lists the
//! versions it speaks; both pick "the highest number contained both in the VERSIONS cell they
//! sent and in the versions cell they received", and close the connection if there is none.
//!
//! Version 4 widened circuit ids to four bytes; version 5 added link padding negotiation
//! (padding-spec). chive speaks only those two.

use crate::cell::{CircIdLen, CELL_LEN_V3, CELL_LEN_V4};

/// The link protocol versions chive offers and accepts, lowest first.
pub const SUPPORTED: [u16; 2] = [4, 5];

/// The highest version in both lists, or `None` if there is none (then the channel must close).
pub fn negotiate(ours: &[u16], theirs: &[u16]) -> Option<u16> {
    ours.iter().copied().filter(|v| theirs.contains(v)).max()
}

/// Width of circuit ids on a channel that negotiated `version` (tor-spec §3: 2 bytes for
/// versions 1-3, 4 bytes from version 4).
pub const fn circ_id_len(version: u16) -> CircIdLen {
    if version >= 4 {
        CircIdLen::Four
    } else {
        CircIdLen::Two
    }
}

/// Length of a fixed-length cell on a channel that negotiated `version` (tor-spec §0.2:
/// `CELL_LEN(v)` is 512 below version 4, 514 from it).
pub const fn cell_len(version: u16) -> usize {
    match circ_id_len(version) {
        CircIdLen::Two => CELL_LEN_V3,
        CircIdLen::Four => CELL_LEN_V4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_common() {
        assert_eq!(negotiate(&SUPPORTED, &[3, 4, 5]), Some(5));
        assert_eq!(negotiate(&SUPPORTED, &[5, 4, 3]), Some(5));
        assert_eq!(negotiate(&SUPPORTED, &[3, 4]), Some(4));
        assert_eq!(negotiate(&SUPPORTED, &[4, 6, 7]), Some(4));
        assert_eq!(negotiate(&SUPPORTED, &[1, 2, 3]), None);
        assert_eq!(negotiate(&SUPPORTED, &[]), None);
        assert_eq!(negotiate(&[], &[4, 5]), None);
        // Symmetric: both ends reach the same answer.
        assert_eq!(negotiate(&[3, 4, 5], &SUPPORTED), Some(5));
    }

    #[test]
    fn widths_and_lengths() {
        assert_eq!(circ_id_len(3), CircIdLen::Two);
        assert_eq!(circ_id_len(4), CircIdLen::Four);
        assert_eq!(circ_id_len(5), CircIdLen::Four);
        assert_eq!(cell_len(2), 512);
        assert_eq!(cell_len(3), 512);
        assert_eq!(cell_len(4), 514);
        assert_eq!(cell_len(5), 514);
        for v in SUPPORTED {
            assert_eq!(cell_len(v), circ_id_len(v).cell_len());
        }
    }
}
