//! `chive-bench`: throughput figures for chive's data path.
//!
//! `chive-bench crypto` measures tor1 relay-cell crypto on one core, per backend and batch size,
//! for the middle-relay path (AES-128-CTR only) and the edge path (AES-128-CTR plus the SHA-1
//! running digest), beside OpenSSL's `speed` at 512 bytes measured in the same run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crypto;

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
        /// Only this path: `middle` or `edge` (default: both).
        #[arg(long)]
        path: Option<String>,
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
    }
}
