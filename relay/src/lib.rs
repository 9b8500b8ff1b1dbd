//! The chive relay daemon: everything the `chive` binary does, as a library so that it can be
//! tested without a process boundary.
//!
//! - [`circuit`]: circuits, sans-io: the per-shard [`circuit::RelayCore`] that creates,
//!   extends, relays and tears down circuits, and the client's [`circuit::OriginCircuit`].
//! - [`keygen`]: `chive keygen`, which loads or creates a relay's keys in C tor's data-directory
//!   format and prints its identities as `tor --list-fingerprint` does.
//! - [`shard`]: one data shard, sans-io: the connections of one reactor thread (TLS, link
//!   handshake, cell framing) around one [`circuit::RelayCore`].
//! - [`tls`]: the TLS layer of Tor links: our link certificate, rustls configurations for
//!   responder and initiator, and the sans-io [`tls::TlsLink`].

#![forbid(unsafe_code)]

pub mod circuit;
pub mod keygen;
pub mod shard;
pub mod tls;
