//! `chive-bench relay`: relaying throughput, CPU cost, latency and memory of a chive relay and
//! of C tor 0.4.9, measured in the same run under the same load.
//!
//! The harness starts a sink S (a chive relay in a child process, `testing_echo_drop` on), then
//! for each round starts the relay under test R (C tor, then chive, alternately), builds
//! circuits R → S with the [`loadgen`], warms up, and measures a window: cells relayed by R
//! (each cell sent and each echo crosses R once), R's CPU seconds from `/proc/PID/stat`, R's
//! peak RSS (`VmHWM`), and the round-trip time of every echo. R is stopped after each round.
//! Chive relays (R and S) run as `chive-bench relay-node` child processes, so that /proc figures
//! are theirs alone.

pub mod accounting;
pub mod loadgen;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crypto_simd::Engine;
use hdrhistogram::Histogram;
use proto::keys::RelayKeys;
use relay::circuit::RelayInfo;
use relay::testnet::CTorRelay;

use accounting::{
    new_latency_histogram, percentiles_us, process_cpu_secs, process_cpu_times,
    process_peak_rss_mb, Throughput,
};
use loadgen::{Bounds, LoadParams, LoadTally, Rendezvous};

/// How long a chive relay child may take to create its keys and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which relay is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// chive.
    Chive,
    /// C tor.
    CTor,
}

impl Impl {
    /// The `impl` key of the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Chive => "chive",
            Impl::CTor => "ctor",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "chive" => Some(Impl::Chive),
            "ctor" => Some(Impl::CTor),
            _ => None,
        }
    }
}

/// What `chive-bench relay` runs.
#[derive(Debug, Clone)]
pub struct RelayBenchOptions {
    /// Circuits through R, spread over the channels.
    pub circuits: usize,
    /// TLS channels (one load-generator thread each).
    pub channels: usize,
    /// Cells in flight per circuit at most.
    pub window: usize,
    /// Open loop: cells per second offered in total; 0 for closed loop.
    pub rate: f64,
    /// Measured seconds per round.
    pub duration: Duration,
    /// Warm-up seconds per round, after the circuits are built.
    pub warmup: Duration,
    /// Rounds per implementation.
    pub rounds: usize,
    /// Chive R's shards.
    pub shards: usize,
    /// Pin chive R's shards to cores.
    pub pin: bool,
    /// CPU list (`taskset -c` syntax) for R, either implementation; `None`: no pinning.
    pub r_cpus: Option<String>,
    /// Shards of the sink S.
    pub sink_shards: usize,
    /// Which implementations, in order.
    pub impls: Vec<String>,
    /// One JSON object per line.
    pub json: bool,
    /// CGO circuits (ntor v3 asking for `Relay=6` at both hops) instead of tor1 (ntor).
    pub cgo: bool,
}

/// One implementation's figures over all its rounds.
#[derive(Debug)]
struct ImplResult {
    which: Impl,
    tput: Throughput,
    latency: Histogram<u64>,
    peak_rss_mb: f64,
    loadgen_cpu_secs: f64,
    sink_cpu_secs: f64,
    sent: u64,
    received: u64,
    skipped: u64,
    circuits: usize,
    rounds: usize,
}

impl ImplResult {
    fn new(which: Impl) -> Self {
        ImplResult {
            which,
            tput: Throughput::default(),
            latency: new_latency_histogram(),
            peak_rss_mb: 0.0,
            loadgen_cpu_secs: 0.0,
            sink_cpu_secs: 0.0,
            sent: 0,
            received: 0,
            skipped: 0,
            circuits: 0,
            rounds: 0,
        }
    }
}

/// A chive relay in a child process (`chive-bench relay-node`), killed on drop.
#[derive(Debug)]
struct ChiveChild {
    child: Child,
    info: RelayInfo,
    _dir: tempfile::TempDir,
}

impl ChiveChild {
    fn start(nickname: &str, shards: usize, pin: bool, echo: bool) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("chive-bench-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = relay::testnet::free_port().map_err(|e| format!("free port: {e}"))?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut cmd = Command::new(&exe);
            // The children use the TLS provider this process measured and reports.
            cmd.env(
                relay::tls::PROVIDER_ENV,
                relay::tls::chosen_provider().name(),
            )
            .arg("relay-node")
            .arg("--or-address")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--nickname")
            .arg(nickname)
            .arg("--shards")
            .arg(shards.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
            if pin {
                cmd.arg("--pin");
            }
            if echo {
                cmd.arg("--echo-drop");
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("starting {nickname}: {e}"))?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    last = format!("{nickname} exited with {st}");
                    break;
                }
                let up = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
                if up && dir.path().join("fingerprint-ed25519").exists() {
                    let info = relay_info(dir.path(), addr)?;
                    return Ok(ChiveChild {
                        child,
                        info,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{nickname} did not listen in time"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last)
    }
}

impl Drop for ChiveChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay's identity and address from the keys in its data directory (C tor's layout).
fn relay_info(data_dir: &Path, addr: SocketAddr) -> Result<RelayInfo, String> {
    let keys = RelayKeys::load(data_dir).map_err(|e| format!("relay keys: {e}"))?;
    Ok(RelayInfo::from_keys(&keys, vec![addr]))
}

/// The relay under test, running.
enum Running {
    Chive(ChiveChild),
    CTor(CTorRelay),
}

impl Running {
    fn start(which: Impl, opts: &RelayBenchOptions) -> Result<(Running, RelayInfo, u32), String> {
        let r = match which {
            Impl::Chive => {
                let c = ChiveChild::start("chivebenchR", opts.shards, opts.pin, false)?;
                let info = c.info.clone();
                let pid = c.child.id();
                (Running::Chive(c), info, pid)
            }
            Impl::CTor => {
                let t = CTorRelay::start("ctorbenchR", &["--ExtendAllowPrivateAddresses", "1"])
                    .map_err(|e| e.to_string())?;
                let info = relay_info(&t.data_dir(), t.or_addr())?;
                let pid = t.pid();
                (Running::CTor(t), info, pid)
            }
        };
        if let Some(cpus) = &opts.r_cpus {
            // Every thread of R, present and future.
            let ok = Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, &r.2.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("taskset -c {cpus} failed for R"));
            }
        }
        Ok(r)
    }

    fn log(&self) -> String {
        match self {
            Running::Chive(c) => format!(
                "(chive relay, pid {}: its log went to stderr)",
                c.child.id()
            ),
            Running::CTor(t) => t.log(),
        }
    }
}

/// One round against `which`: start R, build, warm up, measure, stop R.
fn round(
    which: Impl,
    opts: &RelayBenchOptions,
    sink: &ChiveChild,
    engine: Engine,
    acc: &mut ImplResult,
) -> Result<(), String> {
    let (running, r_info, r_pid) = Running::start(which, opts)?;
    let channels = opts.channels.min(opts.circuits).max(1);
    let meet = Rendezvous {
        built: Barrier::new(channels + 1),
        go: Barrier::new(channels + 1),
        bounds: std::sync::OnceLock::new(),
    };
    let s_info = sink.info.clone();
    let s_pid = sink.child.id();
    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..channels)
            .map(|c| {
                let params = LoadParams {
                    circuits: (c..opts.circuits).step_by(channels).count(),
                    window: opts.window,
                    rate: opts.rate / channels as f64,
                    handshake: if opts.cgo {
                        relay::circuit::HandshakeKind::NtorV3Cgo
                    } else {
                        relay::circuit::HandshakeKind::Ntor
                    },
                };
                let (r_info, s_info, meet) = (&r_info, &s_info, &meet);
                scope.spawn(move || loadgen::run_channel(r_info, s_info, engine, params, meet))
            })
            .collect();
        meet.built.wait();
        let epoch = Instant::now();
        let measure_from = epoch + opts.warmup;
        let measure_to = measure_from + opts.duration;
        let _ = meet.bounds.set(Bounds {
            epoch,
            measure_from,
            measure_to,
        });
        meet.go.wait();
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let me = std::process::id();
        let r0 = process_cpu_times(r_pid);
        let c0 = [
            r0.map(|t| t.total()),
            process_cpu_secs(s_pid),
            process_cpu_secs(me),
        ];
        let t0 = Instant::now();
        std::thread::sleep(measure_to.saturating_duration_since(Instant::now()));
        let r1 = process_cpu_times(r_pid);
        let c1 = [
            r1.map(|t| t.total()),
            process_cpu_secs(s_pid),
            process_cpu_secs(me),
        ];
        let seconds = t0.elapsed().as_secs_f64();
        let rss = process_peak_rss_mb(r_pid);
        let tallies: Vec<Result<LoadTally, String>> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("a load thread panicked".to_string()),
            })
            .collect();
        let r_sys = r0.zip(r1).map(|(a, b)| b.since(a).system);
        (tallies, c0, c1, seconds, rss, r_sys)
    });
    let (tallies, c0, c1, seconds, rss, r_sys) = result;
    let delta = |i: usize| -> Result<f64, String> {
        match (c0[i], c1[i]) {
            (Some(a), Some(b)) => Ok(b - a),
            _ => Err("a process vanished during the window".into()),
        }
    };
    let r_cpu = delta(0).map_err(|e| format!("{e}: R\n{}", running.log()))?;
    let (s_cpu, lg_cpu) = (delta(1)?, delta(2)?);
    let mut sent = 0;
    let mut received = 0;
    for t in tallies {
        let t = t.map_err(|e| format!("{} round: {e}\n{}", which.name(), running.log()))?;
        sent += t.sent;
        received += t.received;
        acc.skipped += t.skipped;
        acc.circuits = acc.circuits.max(t.circuits);
        acc.latency
            .add(&t.latency)
            .map_err(|e| format!("merging histograms: {e}"))?;
    }
    acc.sent += sent;
    acc.received += received;
    acc.tput.add(Throughput {
        cells: sent + received,
        seconds,
        cpu_secs: r_cpu,
        sys_secs: r_sys.unwrap_or(0.0),
    });
    acc.peak_rss_mb = acc.peak_rss_mb.max(rss.unwrap_or(0.0));
    acc.loadgen_cpu_secs += lg_cpu;
    acc.sink_cpu_secs += s_cpu;
    acc.rounds += 1;
    drop(running);
    Ok(())
}

/// Runs the benchmark and prints it.
pub fn run(opts: &RelayBenchOptions) -> ExitCode {
    match run_inner(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chive-bench relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(opts: &RelayBenchOptions) -> Result<(), String> {
    if opts.circuits == 0 || opts.channels == 0 || opts.window == 0 || opts.rounds == 0 {
        return Err("--circuits, --channels, --window and --rounds must be at least 1".into());
    }
    let impls: Vec<Impl> = opts
        .impls
        .iter()
        .map(|s| Impl::from_name(s).ok_or(format!("unknown implementation {s:?}")))
        .collect::<Result<_, _>>()?;
    let engine = Engine::from_env().map_err(|e| e.to_string())?;
    let backend = engine.backend().to_string();
    let cpu = relay::demo::cpu_model();
    let sink = ChiveChild::start("chivebenchS", opts.sink_shards, false, true)?;
    let mut results: Vec<ImplResult> = impls.iter().map(|&i| ImplResult::new(i)).collect();
    for _ in 0..opts.rounds {
        for r in &mut results {
            round(r.which, opts, &sink, engine, r)?;
        }
    }
    let mode = if opts.rate > 0.0 {
        format!("open loop, {:.0} cells/s offered", opts.rate)
    } else {
        format!("closed loop, window {}", opts.window)
    };
    let mode = format!(
        "{mode}; relay crypto {}",
        if opts.cgo { "CGO" } else { "tor1" }
    );
    let objs: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let [p50, p99, p999] = percentiles_us(&r.latency);
            let secs = r.tput.seconds.max(1e-9);
            serde_json::json!({
                "impl": r.which.name(),
                "cells_per_sec": r.tput.cells_per_sec(),
                "cpu_sec_per_mcell": r.tput.cpu_sec_per_mcell(),
                "sys_sec_per_mcell": r.tput.sys_sec_per_mcell(),
                "relay_sys_share": r.tput.sys_secs / r.tput.cpu_secs.max(1e-9),
                "cells_per_cpu_sec": r.tput.cells_per_cpu_sec(),
                "p50_us": p50,
                "p99_us": p99,
                "p999_us": p999,
                "peak_rss_mb": r.peak_rss_mb,
                "cells_relayed": r.tput.cells,
                "cells_sent": r.sent,
                "cells_echoed": r.received,
                "sends_skipped": r.skipped,
                "seconds": r.tput.seconds,
                "relay_cpu_secs": r.tput.cpu_secs,
                "relay_cpu_frac": r.tput.cpu_secs / secs,
                "loadgen_cpu_secs": r.loadgen_cpu_secs,
                "loadgen_cpu_frac": r.loadgen_cpu_secs / secs,
                "sink_cpu_secs": r.sink_cpu_secs,
                "sink_cpu_frac": r.sink_cpu_secs / secs,
                "rounds": r.rounds,
                "circuits": opts.circuits,
                "channels": opts.channels.min(opts.circuits),
                "mode": mode,
                "relay_crypto": if opts.cgo { "cgo" } else { "tor1" },
                "shards": match r.which { Impl::Chive => opts.shards, Impl::CTor => 1 },
                "cpu_model": cpu,
                "crypto_backend": match r.which {
                    Impl::Chive => backend.clone(),
                    Impl::CTor => "openssl (C tor)".to_string(),
                },
                "loadgen_crypto_backend": backend,
                "tls_provider": match r.which {
                    Impl::Chive => relay::tls::chosen_provider().name(),
                    Impl::CTor => "openssl (C tor)",
                },
            })
        })
        .collect();
    let chive = results.iter().find(|r| r.which == Impl::Chive);
    let ctor = results.iter().find(|r| r.which == Impl::CTor);
    let ratios = match (chive, ctor) {
        (Some(a), Some(b)) => {
            let div = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
            let (pa, pb) = (percentiles_us(&a.latency), percentiles_us(&b.latency));
            let floor = Floor::measure(engine, opts.cgo, a.tput.sys_sec_per_mcell());
            Some(serde_json::json!({
                "ratio_cells_per_cpu_sec": div(a.tput.cells_per_cpu_sec(), b.tput.cells_per_cpu_sec()),
                "ratio_cells_per_sec": div(a.tput.cells_per_sec(), b.tput.cells_per_sec()),
                // The ratio chive would reach if its user-space time per cell were zero and its
                // kernel time (sockets) stayed: a ceiling for any change to chive's own code.
                "ratio_ceiling_kernel_only": div(b.tput.cpu_sec_per_mcell(), a.tput.sys_sec_per_mcell()),
                // The same with the crypto no relay can skip added: each relayed cell's share
                // of one TLS open and one TLS seal, and one relay-crypto step.
                "floor_kernel_us": floor.kernel_us,
                "floor_tls_us": floor.tls_us,
                "floor_relay_crypto_us": floor.relay_crypto_us,
                "floor_us": floor.total_us(),
                "ratio_ceiling_floor": div(b.tput.cpu_sec_per_mcell(), floor.total_us()),
                "ratio_p99_us": div(pa[1], pb[1]),
                "ratio_peak_rss_mb": div(a.peak_rss_mb, b.peak_rss_mb),
                "cpu_model": cpu,
                "crypto_backend": backend,
            }))
        }
        _ => None,
    };
    if opts.json {
        for o in objs.iter().chain(ratios.iter()) {
            println!("{o}");
        }
        return Ok(());
    }
    println!(
        "cpu: {cpu}; chive crypto backend: {backend}; chive TLS provider: {}; {mode}",
        relay::tls::chosen_provider().name()
    );
    println!(
        "{} circuits over {} channels; {} round(s) per relay of {:.1} s after {:.1} s warm-up",
        opts.circuits,
        opts.channels.min(opts.circuits),
        opts.rounds,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64()
    );
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "relay",
        "shards",
        "cells/s",
        "cells/CPU-s",
        "CPU-s/Mcell",
        "kernel",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "RSS MB",
        "loadgen",
        "sink"
    );
    for (r, o) in results.iter().zip(&objs) {
        let f = |k: &str| {
            o.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        println!(
            "{:<6} {:>6} {:>12.0} {:>12.0} {:>12.3} {:>6.0}% {:>9.0} {:>9.0} {:>9.0} {:>8.1} {:>8.0}% {:>8.0}%",
            r.which.name(),
            o.get("shards").and_then(serde_json::Value::as_u64).unwrap_or(0),
            f("cells_per_sec"),
            f("cells_per_cpu_sec"),
            f("cpu_sec_per_mcell"),
            f("relay_sys_share") * 100.0,
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            f("peak_rss_mb"),
            f("loadgen_cpu_frac") * 100.0,
            f("sink_cpu_frac") * 100.0,
        );
    }
    if let Some(r) = ratios {
        let f = |k: &str| {
            r.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        println!(
            "chive / C tor: {:.2}x cells per CPU-second, {:.2}x cells/s, {:.2}x p99, {:.2}x peak RSS",
            f("ratio_cells_per_cpu_sec"),
            f("ratio_cells_per_sec"),
            f("ratio_p99_us"),
            f("ratio_peak_rss_mb"),
        );
        println!(
            "ceiling: {:.2}x if chive spent no user-space CPU at all (C tor's CPU per cell over \
             chive's kernel CPU per cell)",
            f("ratio_ceiling_kernel_only"),
        );
        println!(
            "floor: {:.3} µs per cell = kernel {:.3} + TLS open and seal {:.3} ({}) + relay crypto \
             {:.3}; C tor's CPU per cell over it: {:.2}x at most with every other cost gone",
            f("floor_us"),
            f("floor_kernel_us"),
            f("floor_tls_us"),
            relay::tls::chosen_provider().name(),
            f("floor_relay_crypto_us"),
            f("ratio_ceiling_floor"),
        );
    }
    println!("(latency: round trip client -> R -> S -> R -> client; kernel: R's CPU in the kernel, a share of its CPU; loadgen/sink: CPU use as a share of one core)");
    Ok(())
}

/// The CPU a chive relay cannot avoid per relayed cell on this machine, measured after the
/// rounds: R's kernel time per cell from the run, and, timed here on one core, the cell's share
/// of opening and sealing full TLS records with the provider R uses, and one relay-crypto step.
struct Floor {
    kernel_us: f64,
    tls_us: f64,
    relay_crypto_us: f64,
}

impl Floor {
    fn measure(engine: Engine, cgo: bool, kernel_us: f64) -> Floor {
        let budget = Duration::from_millis(300);
        let cells_per_record = (relay::tls::AEAD_RECORD_LEN / proto::cell::CELL_LEN_V4) as f64;
        let tls_us = relay::tls::aead_record_ns(relay::tls::chosen_provider(), 200)
            .map_or(f64::NAN, |ns| {
                (ns.seal + ns.open) as f64 / cells_per_record / 1e3
            });
        let relay_ns = if cgo {
            crate::crypto_cgo::forward_ns(engine, budget)
        } else {
            crate::crypto::middle_ns(engine, budget)
        };
        Floor {
            kernel_us,
            tls_us,
            relay_crypto_us: relay_ns / 1e3,
        }
    }

    fn total_us(&self) -> f64 {
        self.kernel_us + self.tls_us + self.relay_crypto_us
    }
}

/// `chive-bench relay-node`: a chive relay in the foreground until killed.
pub fn relay_node(config: relay::config::Config) -> ExitCode {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    match relay::daemon::run(&config, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chive-bench relay-node: {e}");
            ExitCode::FAILURE
        }
    }
}
