//! `chive`, the relay daemon's command line.
//!
//! ```text
//! chive keygen --data-dir DIR [--nickname NAME]
//! chive relay --config FILE
//! chive --version
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};
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
