//! `chive`, the relay daemon's command line.
//!
//! ```text
//! chive keygen --data-dir DIR [--nickname NAME]
//! chive --version
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

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
    }
}
