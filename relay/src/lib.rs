//! The chive relay daemon: everything the `chive` binary does, as a library so that it can be
//! tested without a process boundary.
//!
//! - [`circuit`]: circuits, sans-io: the per-shard [`circuit::RelayCore`] that creates,
//!   extends, relays and tears down circuits, and the client's [`circuit::OriginCircuit`].
//! - [`config`]: the TOML configuration of `chive relay --config FILE`.
//! - [`control`]: the control shard: statistics and key rotation.
//! - [`daemon`]: `chive relay`: keys, shard threads, shutdown.
//! - [`demo`]: `chive demo`: three relays and a client on loopback, in one process.
//! - [`keygen`]: `chive keygen`, which loads or creates a relay's keys in C tor's data-directory
//!   format and prints its identities as `tor --list-fingerprint` does.
//! - [`reactor`]: the loops that drive one shard per thread with sockets (poll, io_uring).
//! - [`shard`]: one data shard, sans-io: the connections of one reactor thread (TLS, link
//!   handshake, cell framing) around one [`circuit::RelayCore`].
//! - [`testnet`]: C tor relays on loopback, for interop tests and `chive-bench relay`.
//! - [`tls`]: the TLS layer of Tor links: our link certificate, rustls configurations for
//!   responder and initiator, and the sans-io [`tls::TlsLink`].
//! - [`xshard`]: cross-shard channels: one canonical channel per peer for the relay, cells
//!   crossing shards in batches.

// `deny`, not `forbid`: only `reactor::uring` (io_uring submissions) and `reactor::wake`
// (creating an eventfd) allow unsafe code.
#![deny(unsafe_code)]

pub mod circuit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod fuzzing;
pub mod keygen;
pub mod reactor;
pub mod shard;
pub mod testnet;
pub mod tls;
pub mod xshard;
