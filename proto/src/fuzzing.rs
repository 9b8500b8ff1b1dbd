//! Entry points for the fuzz targets under `proto/fuzz/` and for the corpus replay test.
//!
//! Each function feeds arbitrary bytes to one family of decoders and, when they decode, checks
//! that re-encoding works; none may panic. The targets in `proto/fuzz/fuzz_targets/` are one-line
//! calls to these, and `tests::replay_corpus` runs every checked-in corpus file through them in the
//! ordinary test suite.

use crate::codec::Reader;
use crate::link_spec::LinkSpec;

/// Link specifier lists (EXTEND2, INTRODUCE2 plaintext).
pub fn link_spec(data: &[u8]) {
    let mut r = Reader::new(data);
    if let Ok(specs) = LinkSpec::decode_list(&mut r) {
        let mut out = Vec::new();
        LinkSpec::encode_list(&specs, &mut out).expect("decoded specifiers re-encode");
        let consumed = r.consumed();
        assert_eq!(&out[..], &data[..consumed], "link specifiers round-trip");
    }
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `cargo fuzz` knows them.
pub const TARGETS: &[(&str, Target)] = &[("link_spec", link_spec)];

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Replays every file of `proto/fuzz/corpus/<target>/` (the checked-in corpus) through its target.
    #[test]
    fn replay_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut replayed = 0usize;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus for {name} missing at {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("dir entry").path();
                let data = std::fs::read(&path).expect("read corpus file");
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "every target has a corpus");
    }
}
