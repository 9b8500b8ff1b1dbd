//! Entry points for the fuzz targets under `relay/fuzz/` and for the corpus replay test.
//!
//! Each feeds arbitrary bytes to a state machine that takes input from the network and must
//! never panic on it; the functions they call check their own invariants. The targets in
//! `relay/fuzz/fuzz_targets/` are one-line calls to these, and `tests::replay_corpus` runs the
//! checked-in corpus through them in the ordinary test suite.

/// Cells on three channels into a relay's circuit engine ([`crate::circuit::fuzz_cells`]).
pub fn circuit(data: &[u8]) {
    crate::circuit::fuzz_cells(data);
}

/// Cells into a client's origin circuit after a one-hop handshake
/// ([`crate::circuit::fuzz_origin_cells`]).
pub fn origin(data: &[u8]) {
    crate::circuit::fuzz_origin_cells(data);
}

/// Stream-layer operations and messages from the hop ([`crate::circuit::fuzz_streams`]).
pub fn streams(data: &[u8]) {
    crate::circuit::fuzz_streams(data);
}

/// TLS records into a link's server and client sides ([`crate::tls::fuzz_handle_tls`]).
pub fn tls(data: &[u8]) {
    crate::tls::fuzz_handle_tls(data);
}

/// Bytes on an inbound connection of a shard: TLS, the responder's link handshake and cell
/// framing ([`crate::shard::fuzz_recv`]).
pub fn shard(data: &[u8]) {
    crate::shard::fuzz_recv(data);
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `cargo fuzz` knows them.
pub const TARGETS: &[(&str, Target)] = &[
    ("circuit", circuit),
    ("origin", origin),
    ("streams", streams),
    ("tls", tls),
    ("shard", shard),
];

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Replays every file of `relay/fuzz/corpus/<target>/` through its target.
    #[test]
    fn replay_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut replayed = 0usize;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus for {name} missing at {}: {e}", dir.display()));
            for entry in entries {
                let data = std::fs::read(entry.expect("dir entry").path()).expect("read corpus");
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "every target has a corpus");
    }
}
