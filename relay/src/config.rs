//! The relay's configuration file (TOML), as `chive relay --config FILE` reads it.
//!
//! Every key is documented in `deploy/chive-relay.example.toml`. Unknown keys are rejected so
//! that a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::circuit::Limits;
pub use crate::control::ControlConfig;
use crate::keygen::DEFAULT_NICKNAME;
use crate::shard::ShardLimits;

/// Which I/O backend runs the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// io_uring where the kernel allows it, else poll (logged).
    #[default]
    Auto,
    /// io_uring only: fail to start if it is refused.
    IoUring,
    /// The portable readiness (epoll) backend.
    Poll,
}

/// The `[limits]` table; every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections per shard.
    pub conns_per_shard_max: usize,
    /// Inbound connections from one IP address, per shard.
    pub conns_per_ip_max: u32,
    /// Circuits per shard.
    pub circuits_per_shard_max: usize,
    /// Circuits on one channel.
    pub circuits_per_channel_max: usize,
    /// Seconds a TCP connect plus link handshake may take.
    pub handshake_timeout_secs: u64,
    /// Ciphertext queued per connection before it stops being read.
    pub tls_out_max_bytes: usize,
    /// Cells queued per connection behind TLS before it is closed.
    pub plain_out_max_bytes: usize,
    /// Bytes of queued cells and connection buffers the whole relay may hold (C tor's
    /// `MaxMemInQueues`), split evenly across the shards; a shard over its share closes the
    /// circuits, then the connections, holding the most.
    pub memory_max_bytes: u64,
}

/// The relay-wide memory cap when none is configured: 2 GiB (C tor's `MaxMemInQueues` takes a
/// share of physical memory; a fixed default keeps the relay's behaviour host-independent).
pub const DEFAULT_MEMORY_MAX_BYTES: u64 = 2 << 30;

/// The smallest share of [`LimitsConfig::memory_max_bytes`] a shard may get: below this a
/// single busy connection would trip the OOM policy.
pub const SHARD_MEMORY_MIN_BYTES: u64 = 4 << 20;

impl Default for LimitsConfig {
    fn default() -> Self {
        let s = ShardLimits::default();
        let c = Limits::default();
        LimitsConfig {
            conns_per_shard_max: s.conns_max,
            conns_per_ip_max: s.conns_per_ip_max,
            circuits_per_shard_max: c.circuits_max,
            circuits_per_channel_max: c.circuits_per_channel_max,
            handshake_timeout_secs: s.handshake_timeout_secs,
            tls_out_max_bytes: s.tls_out_max_bytes,
            plain_out_max_bytes: s.plain_out_max_bytes,
            memory_max_bytes: DEFAULT_MEMORY_MAX_BYTES,
        }
    }
}

impl LimitsConfig {
    /// The limits of each of `shards` shards: `memory_max_bytes` is divided evenly among them.
    pub fn shard_limits(&self, shards: usize) -> ShardLimits {
        let share = self.memory_max_bytes / u64::try_from(shards.max(1)).unwrap_or(u64::MAX);
        ShardLimits {
            memory_max_bytes: usize::try_from(share).unwrap_or(usize::MAX),
            conns_max: self.conns_per_shard_max,
            conns_per_ip_max: self.conns_per_ip_max,
            handshake_timeout_secs: self.handshake_timeout_secs,
            tls_out_max_bytes: self.tls_out_max_bytes,
            plain_out_max_bytes: self.plain_out_max_bytes,
            ..ShardLimits::default()
        }
    }

    /// The circuit core's limits.
    pub fn circuit_limits(&self) -> Limits {
        Limits {
            circuits_max: self.circuits_per_shard_max,
            circuits_per_channel_max: self.circuits_per_channel_max,
            ..Limits::default()
        }
    }
}

/// A relay's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The ORPort: address and port to listen on, also advertised in NETINFO.
    pub or_address: SocketAddr,
    /// Keys and state, in C tor's layout; created (mode 0700) if missing.
    pub data_dir: PathBuf,
    /// The relay's nickname.
    #[serde(default = "default_nickname")]
    pub nickname: String,
    /// Data shards (threads); 0 means one per online CPU.
    #[serde(default)]
    pub shards: usize,
    /// Pin shard `i` to CPU `i` (modulo the CPU count).
    #[serde(default)]
    pub pin_cores: bool,
    /// The I/O backend.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Test networks only: answer every RELAY_DROP addressed to this relay with the same
    /// DROP, so that tests can check bytes end to end before exits exist. Reflects traffic:
    /// never on a public relay.
    #[serde(default)]
    pub testing_echo_drop: bool,
    /// The control shard: statistics and key rotation.
    #[serde(default)]
    pub control: ControlConfig,
}

fn default_nickname() -> String {
    DEFAULT_NICKNAME.to_string()
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// Parses and checks a configuration.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        if config.or_address.port() == 0 {
            return Err(ConfigError::Invalid(
                "or_address needs a port: every shard binds the same one",
            ));
        }
        if !proto::key_file::is_valid_nickname(&config.nickname) {
            return Err(ConfigError::Invalid(
                "nickname must be 1 to 19 ASCII letters and digits",
            ));
        }
        if config.limits.conns_per_shard_max == 0
            || config.limits.conns_per_ip_max == 0
            || config.limits.circuits_per_shard_max == 0
            || config.limits.circuits_per_channel_max == 0
            || config.limits.handshake_timeout_secs == 0
            || config.limits.tls_out_max_bytes == 0
        {
            return Err(ConfigError::Invalid("limits must be at least 1"));
        }
        let shards = u64::try_from(config.shard_count()).unwrap_or(u64::MAX);
        if config.limits.memory_max_bytes / shards.max(1) < SHARD_MEMORY_MIN_BYTES {
            return Err(ConfigError::Invalid(
                "limits.memory_max_bytes must give each shard at least 4 MiB",
            ));
        }
        Ok(config)
    }

    /// Reads and checks the configuration file `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// The number of shards to run: `shards`, or one per online CPU.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_full() {
        let c =
            Config::from_toml("or_address = \"127.0.0.1:9001\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        assert_eq!(c.or_address, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.nickname, DEFAULT_NICKNAME);
        assert_eq!(c.shards, 0);
        assert!(c.shard_count() >= 1);
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(
            c.limits.shard_limits(1),
            ShardLimits {
                memory_max_bytes: 2 << 30,
                ..ShardLimits::default()
            }
        );
        assert_eq!(c.limits.shard_limits(4).memory_max_bytes, 512 << 20);
        assert_eq!(c.limits.circuit_limits(), Limits::default());

        let example = include_str!("../../deploy/chive-relay.example.toml");
        let c = Config::from_toml(example).unwrap();
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.nickname, "chive");
        assert_eq!(c.control, ControlConfig::default());
    }

    #[test]
    fn control_table() {
        let c = Config::from_toml(
            "or_address = \"127.0.0.1:9001\"\ndata_dir = \"d\"\n[control]\nstats_interval_secs = 5\nonion_key_grace_secs = 9\n",
        )
        .unwrap();
        assert_eq!(c.control.stats_interval_secs, 5);
        assert_eq!(c.control.onion_key_grace_secs, 9);
        assert_eq!(
            c.control.onion_key_lifetime_secs,
            crate::control::ONION_KEY_LIFETIME_SECS
        );
        assert!(Config::from_toml(
            "or_address = \"127.0.0.1:9001\"\ndata_dir = \"d\"\n[control]\nstats = 5\n"
        )
        .is_err());
    }

    #[test]
    fn memory_cap_is_parsed_and_split_across_shards() {
        let base = "or_address = \"127.0.0.1:9001\"\ndata_dir = \"d\"\n";
        let c = Config::from_toml(&format!(
            "{base}shards = 3\n[limits]\nmemory_max_bytes = 300000000\n"
        ))
        .unwrap();
        assert_eq!(c.limits.memory_max_bytes, 300_000_000);
        assert_eq!(c.limits.shard_limits(3).memory_max_bytes, 100_000_000);
        // Other limits are untouched by the split.
        assert_eq!(
            c.limits.shard_limits(3).conns_max,
            ShardLimits::default().conns_max
        );
        // 4 MiB per shard at least.
        assert!(matches!(
            Config::from_toml(&format!(
                "{base}shards = 2\n[limits]\nmemory_max_bytes = 8388607\n"
            )),
            Err(ConfigError::Invalid(_))
        ));
        assert!(Config::from_toml(&format!(
            "{base}shards = 2\n[limits]\nmemory_max_bytes = 8388608\n"
        ))
        .is_ok());
        assert!(matches!(
            Config::from_toml(&format!("{base}[limits]\nmemory_max_bytes = -1\n")),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let base = "or_address = \"127.0.0.1:9001\"\ndata_dir = \"d\"\n";
        for bad in [
            "orport = 1\n",
            "backend = \"epoll\"\n",
            "[limits]\nconns = 3\n",
            "shards = -1\n",
        ] {
            assert!(
                matches!(
                    Config::from_toml(&format!("{base}{bad}")),
                    Err(ConfigError::Parse(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Config::from_toml("or_address = \"127.0.0.1:0\"\ndata_dir = \"d\"\n"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::from_toml(&format!("{base}nickname = \"no spaces\"\n")),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::from_toml(&format!("{base}[limits]\nconns_per_shard_max = 0\n")),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::from_toml("data_dir = \"d\"\n"),
            Err(ConfigError::Parse(_))
        ));
    }
}
