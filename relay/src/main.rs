//! `chive`, the relay daemon's command line.
//!
//! ```text
//! chive keygen --data-dir DIR [--nickname NAME]
//! chive relay --config FILE
//! chive demo [--seconds S] [--circuits N] [--channels N] [--shards N] [--backend B]
//!            [--data-dir DIR] [--json]
//! chive --version
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use relay::config::BackendChoice;
use relay::demo::DemoOptions;
use relay::keygen::{keygen_now, DEFAULT_NICKNAME};

/// chive: a multi-core, Tor-compatible relay.
#[derive(Debug, Parser)]
#[command(name = "chive", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load or create the relay's keys in DIR (in C tor's formats), write the `fingerprint` and
    /// `fingerprint-ed25519` files, and print the identities as `tor --list-fingerprint` does.
    Keygen {
        /// The data directory; created (mode 0700) if missing.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The relay's nickname: 1 to 19 ASCII letters and digits.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_NICKNAME)]
        nickname: String,
    },
    /// Run the relay described by FILE (see deploy/chive-relay.example.toml) until SIGINT or
    /// SIGTERM.
    Relay {
        /// The TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a local chive network: three relays on 127.0.0.1 in this process and a client that
    /// builds 3-hop circuits through them and checks RELAY_DROP echoes byte for byte. The
    /// relays run with `testing_echo_drop` (a test-network setting: the last hop echoes
    /// RELAY_DROP cells).
    Demo {
        /// Keep the relays' keys in DIR/relay0..2 (default: a temporary directory, removed).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Shards (threads) per relay.
        #[arg(long, default_value_t = 2)]
        shards: usize,
        /// The relays' I/O backend.
        #[arg(long, default_value = "auto", value_parser = ["auto", "io_uring", "poll"])]
        backend: String,
        /// TLS channels from the client to the first relay.
        #[arg(long, default_value_t = 4)]
        channels: usize,
        /// 3-hop circuits to build (first hops mix ntor, ntor v3 and CREATE_FAST).
        #[arg(long, default_value_t = 32)]
        circuits: usize,
        /// Seconds to push RELAY_DROP cells.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Keygen { data_dir, nickname } => match keygen_now(&data_dir, &nickname) {
            Ok(ids) => {
                print!("{ids}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chive keygen: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Relay { config } => relay_main(&config),
        Command::Demo {
            data_dir,
            shards,
            backend,
            channels,
            circuits,
            seconds,
            json,
        } => {
            let backend = match backend.as_str() {
                "poll" => BackendChoice::Poll,
                "io_uring" => BackendChoice::IoUring,
                _ => BackendChoice::Auto,
            };
            let Ok(duration) = std::time::Duration::try_from_secs_f64(seconds) else {
                eprintln!("chive demo: --seconds must be a non-negative number");
                return ExitCode::FAILURE;
            };
            let opts = DemoOptions {
                data_dir,
                shards,
                backend,
                channels,
                circuits,
                duration,
            };
            demo_main(&opts, json)
        }
    }
}

fn demo_main(opts: &DemoOptions, json: bool) -> ExitCode {
    // The relays log warnings and errors only: the demo prints its own summary.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !json {
        println!(
            "chive demo: {} relays on 127.0.0.1, {} shards each, {} circuits over {} channels, {:.1} s",
            relay::demo::RELAYS,
            opts.shards,
            opts.circuits,
            opts.channels,
            opts.duration.as_secs_f64()
        );
        println!(
            "note: the relays run with testing_echo_drop = true, a test-network setting (the last \
             hop echoes RELAY_DROP cells); never use it on a public relay"
        );
    }
    match relay::demo::run(opts) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
                println!("ok: every echoed byte matched; relays stopped cleanly");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chive demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn relay_main(path: &std::path::Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true)
        .init();
    let config = match relay::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chive relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("chive relay: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match relay::daemon::run(&config, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "chive relay failed");
            ExitCode::FAILURE
        }
    }
}
