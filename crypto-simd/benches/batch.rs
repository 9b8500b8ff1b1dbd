//! Criterion benchmarks of `Engine::process_batch`: per backend and batch size, the middle path
//! (AES-128-CTR only) and the edge path (SHA-1 digest + AES-128-CTR). One circuit per cell.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crypto_simd::{Backend, CellBody, Engine, Job, Op, Outcome, Tor1Hop, CELL_BODY_LEN, KDF_LEN};

fn bench(c: &mut Criterion) {
    for (path, op) in [
        ("middle", Op::RelayRecvForward),
        ("edge", Op::RelaySendBackward),
    ] {
        let mut group = c.benchmark_group(path);
        for backend in Backend::supported() {
            let Ok(engine) = Engine::new(backend) else {
                continue;
            };
            for batch in [1usize, 16, 256] {
                let mut hops: Vec<Tor1Hop> = (0..batch)
                    .map(|i| Tor1Hop::from_kdf(&[i as u8; KDF_LEN]))
                    .collect();
                let mut cells: Vec<CellBody> = vec![[1u8; CELL_BODY_LEN]; batch];
                let jobs: Vec<Job> = (0..batch as u32)
                    .map(|i| Job {
                        hop: i,
                        cell: i,
                        op,
                    })
                    .collect();
                let mut out = vec![Outcome::Done; batch];
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(BenchmarkId::new(backend.name(), batch), |b| {
                    b.iter(|| {
                        for c in cells.iter_mut() {
                            c[1] |= 1;
                        }
                        engine.process_batch(&mut hops, &mut cells, &jobs, &mut out)
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
