//! Criterion benchmarks of `Engine::process_batch_cgo` (proposal 359 CGO): per backend and
//! batch size, `cgo-forward` (a middle relay's forward step, not recognized) and
//! `cgo-originate` (an edge relay sealing a cell toward the client, with the per-cell key
//! update). One circuit per cell.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crypto_simd::cgo::{CgoHop, CgoJob, CgoOp, CgoOutcome, RelayState, CMD_RELAY, KDF_LEN};
use crypto_simd::{Backend, CellBody, Engine, CELL_BODY_LEN};

fn bench(c: &mut Criterion) {
    for (path, op) in [
        ("cgo-forward", CgoOp::RelayForward),
        ("cgo-originate", CgoOp::RelayOriginate),
    ] {
        let mut group = c.benchmark_group(path);
        for backend in Backend::supported() {
            let Ok(engine) = Engine::new(backend) else {
                continue;
            };
            for batch in [1usize, 16, 256] {
                let mut hops: Vec<CgoHop> = (0..batch)
                    .filter_map(|i| RelayState::from_kdf(&[i as u8; KDF_LEN]).ok())
                    .map(CgoHop::Relay)
                    .collect();
                let mut cells: Vec<CellBody> = vec![[1u8; CELL_BODY_LEN]; batch];
                let jobs: Vec<CgoJob> = (0..batch as u32)
                    .map(|i| CgoJob {
                        hop: i,
                        cell: i,
                        cmd: CMD_RELAY,
                        op,
                    })
                    .collect();
                let mut out = vec![CgoOutcome::Done; batch];
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(BenchmarkId::new(backend.name(), batch), |b| {
                    b.iter(|| engine.process_batch_cgo(&mut hops, &mut cells, &jobs, &mut out))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
