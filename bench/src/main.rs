//! `chive-bench`: throughput figures for chive's data path.
//!
//! `chive-bench crypto` measures tor1 relay-cell crypto on one core, per backend and batch size,
//! for the middle-relay path (AES-128-CTR only) and the edge path (AES-128-CTR plus the SHA-1
//! running digest), beside OpenSSL's `speed` at 512 bytes measured in the same run.
//!
//! `chive-bench relay` measures relaying against C tor 0.4.9 in the same run: cells per second,
//! CPU seconds per million cells, latency percentiles and peak memory of the relay under test.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crypto;
mod crypto_cgo;
mod relay_bench;

#[derive(Parser, Debug)]
#[command(name = "chive-bench", about = "chive data-path benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// tor1 relay-cell crypto: ns per cell per backend and batch size, against OpenSSL.
    Crypto {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Batch sizes (one circuit per cell in a batch).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16, 64, 256])]
        batch: Vec<usize>,
        /// Time spent on each figure, in milliseconds.
        #[arg(long, default_value_t = 300)]
        ms: u64,
        /// Only this backend (default: every backend the CPU supports).
        #[arg(long)]
        backend: Option<String>,
        /// Skip running `openssl speed`.
        #[arg(long)]
        no_openssl: bool,
        /// Only this path: `middle`, `edge`, `cgo-forward` or `cgo-originate` (default: all).
        #[arg(long)]
        path: Option<String>,
    },
    /// Relaying: chive against C tor under the same load, alternately, in one run.
    Relay {
        /// One JSON object per line per implementation, then one with the ratios.
        #[arg(long)]
        json: bool,
        /// Circuits through the relay under test (R), each R -> sink.
        #[arg(long, default_value_t = 64)]
        circuits: usize,
        /// TLS channels to R (one load-generator thread each).
        #[arg(long, default_value_t = 2)]
        channels: usize,
        /// Cells in flight per circuit at most.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Open loop at this many cells per second offered (sum over circuits); 0: closed loop
        /// at the maximum the window allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Measured seconds per round.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Warm-up seconds per round, after the circuits are built.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Rounds per implementation (they alternate).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Shards (threads) of chive as R.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Pin chive R's shard i to core i.
        #[arg(long)]
        pin: bool,
        /// Run R (either implementation) on these CPUs (`taskset -c` list, e.g. `1`).
        #[arg(long)]
        r_cpus: Option<String>,
        /// Shards of the chive sink relay.
        #[arg(long, default_value_t = 1)]
        sink_shards: usize,
        /// CGO relay crypto (proposal 359) on every hop instead of tor1.
        #[arg(long)]
        cgo: bool,
        /// Implementations to run, in order: `ctor`, `chive`.
        #[arg(long, value_delimiter = ',', default_values_t = ["ctor".to_string(), "chive".to_string()])]
        impls: Vec<String>,
    },
    /// A chive relay in the foreground, as `chive-bench relay` starts for R and the sink.
    #[command(hide = true)]
    RelayNode {
        #[arg(long)]
        or_address: std::net::SocketAddr,
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value = "chivebench")]
        nickname: String,
        #[arg(long, default_value_t = 1)]
        shards: usize,
        #[arg(long)]
        pin: bool,
        /// Echo RELAY_DROP cells (`testing_echo_drop`: test networks only).
        #[arg(long)]
        echo_drop: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crypto {
            json,
            batch,
            ms,
            backend,
            no_openssl,
            path,
        } => crypto::run(
            json,
            &batch,
            ms,
            backend.as_deref(),
            no_openssl,
            path.as_deref(),
        ),
        Cmd::Relay {
            json,
            circuits,
            channels,
            window,
            rate,
            seconds,
            warmup,
            rounds,
            shards,
            pin,
            r_cpus,
            sink_shards,
            impls,
            cgo,
        } => {
            let secs = |s: f64| std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
            relay_bench::run(&relay_bench::RelayBenchOptions {
                circuits,
                channels,
                window,
                rate,
                duration: secs(seconds),
                warmup: secs(warmup),
                rounds,
                shards,
                pin,
                r_cpus,
                sink_shards,
                impls,
                json,
                cgo,
            })
        }
        Cmd::RelayNode {
            or_address,
            data_dir,
            nickname,
            shards,
            pin,
            echo_drop,
        } => relay_bench::relay_node(relay::config::Config {
            or_address,
            data_dir,
            nickname,
            shards,
            pin_cores: pin,
            backend: relay::config::BackendChoice::Auto,
            limits: relay::config::LimitsConfig::default(),
            control: Default::default(),
            testing_echo_drop: echo_drop,
        }),
    }
}
