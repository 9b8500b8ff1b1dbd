//! `chive-bench crypto`: tor1 relay-cell crypto on one core, per backend and batch size, for the
//! middle-relay path (AES-128-CTR only) and the edge path (AES-128-CTR plus the SHA-1 running
//! digest), beside OpenSSL's `speed` at 512 bytes measured in the same run.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crypto_simd::{Backend, CellBody, Engine, Job, Op, Outcome, Tor1Hop, CELL_BODY_LEN, KDF_LEN};

/// Which per-cell work a figure measures.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// Middle relay: decrypt forward, `recognized` nonzero, so AES-CTR only.
    Middle,
    /// Edge: originate a cell (set the SHA-1 digest) and encrypt it.
    Edge,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Middle => "middle",
            Path::Edge => "edge",
        }
    }
    fn op(self) -> Op {
        match self {
            Path::Middle => Op::RelayRecvForward,
            Path::Edge => Op::RelaySendBackward,
        }
    }
}

/// OpenSSL's per-512-byte-block cost, in ns.
#[derive(Clone, Copy, Debug)]
struct OpensslNs {
    aes_ctr: f64,
    sha1: f64,
}

/// Runs `openssl speed ... -bytes 512` and returns ns per 512-byte block, from the last line
/// (`<name>  <N>k`, N in thousands of bytes per second).
fn openssl_ns(args: &[&str]) -> Option<f64> {
    let out = Command::new("openssl").args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let field = last.split_whitespace().last()?;
    let kbps: f64 = field.trim_end_matches('k').parse().ok()?;
    (kbps > 0.0).then(|| 512.0 / (kbps * 1000.0) * 1e9)
}

/// Best of three runs of each, so a run the scheduler preempted does not flatter us.
fn measure_openssl(seconds: u64) -> Option<OpensslNs> {
    let s = seconds.max(1).to_string();
    let best = |args: &[&str]| {
        (0..3)
            .filter_map(|_| openssl_ns(args))
            .min_by(f64::total_cmp)
    };
    let aes_ctr = best(&[
        "speed",
        "-evp",
        "aes-128-ctr",
        "-bytes",
        "512",
        "-seconds",
        &s,
    ])?;
    let sha1 = best(&["speed", "-bytes", "512", "-seconds", &s, "sha1"])?;
    Some(OpensslNs { aes_ctr, sha1 })
}

/// ns per cell for `batch` circuits, one cell each per batch, on `engine`.
fn measure(engine: Engine, path: Path, batch: usize, budget: Duration) -> Figure {
    let mut hops: Vec<Tor1Hop> = (0..batch)
        .map(|i| {
            let kdf: [u8; KDF_LEN] = core::array::from_fn(|j| (i * 131 + j * 7) as u8);
            Tor1Hop::from_kdf(&kdf)
        })
        .collect();
    let mut cells: Vec<CellBody> = (0..batch)
        .map(|i| core::array::from_fn(|j| (i + j) as u8 | 1))
        .collect();
    let jobs: Vec<Job> = (0..batch as u32)
        .map(|i| Job {
            hop: i,
            cell: i,
            op: path.op(),
        })
        .collect();
    let mut out = vec![Outcome::Done; batch];
    let mut run = |hops: &mut [Tor1Hop], cells: &mut [CellBody]| {
        if let Path::Middle = path {
            // Keep `recognized` nonzero so the middle path stays AES-only, as on a real middle.
            for c in cells.iter_mut() {
                c[1] |= 1;
            }
        }
        let r = engine.process_batch(hops, cells, &jobs, &mut out);
        debug_assert!(r.is_ok());
    };
    let fig = sample(batch, budget, || run(&mut hops, &mut cells));
    std::hint::black_box(&cells);
    fig
}

/// Calls `run` (one batch of `batch` cells) for `budget`, after a warm-up, in many short
/// samples: on a shared machine (other processes on the core, interrupts) noise only adds time,
/// so the minimum is the figure and the median shows the spread.
pub(crate) fn sample(batch: usize, budget: Duration, mut run: impl FnMut()) -> Figure {
    // Warm up caches and branch predictors.
    for _ in 0..16 {
        run();
    }
    let calls_per_sample = (256 / batch).max(1);
    let mut samples: Vec<f64> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 16 {
        let t = Instant::now();
        for _ in 0..calls_per_sample {
            run();
        }
        let ns = t.elapsed().as_nanos() as f64;
        samples.push(ns / (calls_per_sample * batch) as f64);
    }
    samples.sort_by(f64::total_cmp);
    Figure {
        median: samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN),
        best: samples.first().copied().unwrap_or(f64::NAN),
    }
}

/// Best ns per cell of a middle relay's tor1 step (AES-128-CTR, `recognized` nonzero) on
/// `engine`, 16 circuits per batch: the relay crypto every relayed tor1 cell costs.
pub(crate) fn middle_ns(engine: Engine, budget: Duration) -> f64 {
    measure(engine, Path::Middle, 16, budget).best
}

/// ns per cell over the samples of one configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Figure {
    pub(crate) median: f64,
    pub(crate) best: f64,
}

pub fn run(
    json: bool,
    batches: &[usize],
    ms: u64,
    only: Option<&str>,
    no_openssl: bool,
    only_path: Option<&str>,
) -> ExitCode {
    let backends: Vec<Backend> = match only {
        Some(name) => match Backend::from_name(name) {
            Some(b) if b.is_supported() => vec![b],
            _ => {
                eprintln!("backend {name:?} unknown or unsupported by this CPU");
                return ExitCode::FAILURE;
            }
        },
        None => Backend::supported().collect(),
    };
    let cpu = relay::demo::cpu_model();
    let ossl = if no_openssl { None } else { measure_openssl(1) };
    if ossl.is_none() && !no_openssl {
        eprintln!("warning: could not run or parse `openssl speed`; ratios omitted");
    }
    if !json {
        println!("cpu: {cpu}; cell body {CELL_BODY_LEN} B; one core");
        if let Some(o) = ossl {
            println!(
                "openssl speed @512 B: aes-128-ctr {:.1} ns, sha1 {:.1} ns, edge (sum) {:.1} ns",
                o.aes_ctr,
                o.sha1,
                o.aes_ctr + o.sha1
            );
        }
        println!(
            "{:<7} {:<9} {:>6} {:>11} {:>9} {:>13} {:>13} {:>7}  cpu",
            "path", "backend", "batch", "ns/cell", "median", "cells/s", "openssl ns", "ratio"
        );
    }
    let budget = Duration::from_millis(ms);
    for path in [Path::Middle, Path::Edge] {
        if only_path.is_some_and(|p| p != path.name()) {
            continue;
        }
        for &backend in &backends {
            let Ok(engine) = Engine::new(backend) else {
                continue;
            };
            for &batch in batches.iter().filter(|&&b| b > 0) {
                let fig = measure(engine, path, batch, budget);
                let ns = fig.best;
                let ossl_ns = ossl.map(|o| match path {
                    Path::Middle => o.aes_ctr,
                    Path::Edge => o.aes_ctr + o.sha1,
                });
                let ratio = ossl_ns.map(|o| o / ns);
                if json {
                    let v = serde_json::json!({
                        "path": path.name(),
                        "backend": backend.name(),
                        "batch": batch,
                        "ns_per_cell": ns,
                        "ns_per_cell_median": fig.median,
                        "cells_per_s": 1e9 / ns,
                        "openssl_ns_per_cell": ossl_ns,
                        "ratio": ratio,
                        "cpu": cpu,
                    });
                    println!("{v}");
                } else {
                    println!(
                        "{:<7} {:<9} {:>6} {:>11.1} {:>9.1} {:>13.0} {:>13} {:>7}  {cpu}",
                        path.name(),
                        backend.name(),
                        batch,
                        ns,
                        fig.median,
                        1e9 / ns,
                        ossl_ns.map_or("-".into(), |o| format!("{o:.1}")),
                        ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                    );
                }
            }
        }
    }
    crate::crypto_cgo::rows(json, &backends, batches, budget, only_path, &cpu);
    ExitCode::SUCCESS
}
