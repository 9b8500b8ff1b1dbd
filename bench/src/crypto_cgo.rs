//! CGO rows of `chive-bench crypto` (proposal 359 relay crypto): `cgo-forward` is a middle
//! relay's forward step (`ENC_UIV` of a cell not addressed to it), `cgo-originate` an edge
//! relay sealing a cell toward the client (`ENC_UIV` plus the per-cell key update), per backend
//! and batch size; the `portable` backend is the reference on the `aes` and `polyval` crates.
//! Printed after the tor1 rows of the same run, with the same columns and JSON keys (no OpenSSL
//! counterpart exists, so those fields are empty).

use std::time::Duration;

use crypto_simd::cgo::{CgoHop, CgoJob, CgoOp, CgoOutcome, RelayState, CMD_RELAY, KDF_LEN};
use crypto_simd::{Backend, CellBody, Engine};

/// The CGO paths.
pub(crate) const PATHS: [(&str, CgoOp); 2] = [
    ("cgo-forward", CgoOp::RelayForward),
    ("cgo-originate", CgoOp::RelayOriginate),
];

/// Best and median ns per cell for `batch` circuits, one cell each per batch.
fn measure(engine: Engine, op: CgoOp, batch: usize, budget: Duration) -> (f64, f64) {
    let mut hops: Vec<CgoHop> = (0..batch)
        .filter_map(|i| {
            let kdf: [u8; KDF_LEN] = core::array::from_fn(|j| (i * 131 + j * 7) as u8);
            RelayState::from_kdf(&kdf).ok().map(CgoHop::Relay)
        })
        .collect();
    let mut cells: Vec<CellBody> = (0..batch)
        .map(|i| core::array::from_fn(|j| (i * 3 + j) as u8))
        .collect();
    let jobs: Vec<CgoJob> = (0..batch as u32)
        .map(|i| CgoJob {
            hop: i,
            cell: i,
            cmd: CMD_RELAY,
            op,
        })
        .collect();
    let mut out = vec![CgoOutcome::Done; batch];
    let mut run = |hops: &mut [CgoHop], cells: &mut [CellBody]| {
        let r = engine.process_batch_cgo(hops, cells, &jobs, &mut out);
        debug_assert!(r.is_ok());
    };
    let fig = crate::crypto::sample(batch, budget, || run(&mut hops, &mut cells));
    std::hint::black_box(&cells);
    (fig.best, fig.median)
}

/// Best ns per cell of a middle relay's CGO forward step on `engine`, 16 circuits per batch.
pub(crate) fn forward_ns(engine: Engine, budget: Duration) -> f64 {
    measure(engine, CgoOp::RelayForward, 16, budget).0
}

/// Prints the CGO rows (table or JSON lines) for `backends` and `batches`.
pub(crate) fn rows(
    json: bool,
    backends: &[Backend],
    batches: &[usize],
    budget: Duration,
    only_path: Option<&str>,
    cpu: &str,
) {
    if !json && only_path.is_none_or(|p| PATHS.iter().any(|(n, _)| *n == p)) {
        println!(
            "{:<13} {:<9} {:>6} {:>11} {:>9} {:>13} {:>13} {:>7}  cpu",
            "path", "backend", "batch", "ns/cell", "median", "cells/s", "openssl ns", "ratio"
        );
    }
    for (name, op) in PATHS {
        if only_path.is_some_and(|p| p != name) {
            continue;
        }
        for &backend in backends {
            let Ok(engine) = Engine::new(backend) else {
                continue;
            };
            for &batch in batches.iter().filter(|&&b| b > 0) {
                let (ns, median) = measure(engine, op, batch, budget);
                if json {
                    let v = serde_json::json!({
                        "path": name,
                        "backend": backend.name(),
                        "batch": batch,
                        "ns_per_cell": ns,
                        "ns_per_cell_median": median,
                        "cells_per_s": 1e9 / ns,
                        "openssl_ns_per_cell": null,
                        "ratio": null,
                        "cpu": cpu,
                    });
                    println!("{v}");
                } else {
                    println!(
                        "{:<13} {:<9} {:>6} {:>11.1} {:>9.1} {:>13.0} {:>13} {:>7}  {cpu}",
                        name,
                        backend.name(),
                        batch,
                        ns,
                        median,
                        1e9 / ns,
                        "-",
                        "-",
                    );
                }
            }
        }
    }
}
