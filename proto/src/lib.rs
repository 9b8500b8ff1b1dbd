//! Tor wire formats and handshakes for chive, sans-io.
//!
//! # I/O contract
//!
//! Everything in this crate is deterministic: no sockets, no threads, no clock reads and no global
//! random number generator. Time comes in as a `now` argument, randomness as a
//! `&mut impl CryptoRngCore` supplied by the caller. Decoders take byte slices and never panic on
//! any input: malformed bytes give a typed error (see [`codec::CodecError`] and each module's
//! error type).
//!
//! # Layout
//!
//! One module per concept, named after the spec's own term:
//!
//! - [`codec`]: the bounds-checked [`codec::Reader`] and the [`codec::Writer`] helpers every
//!   decoder and encoder uses.
//! - [`ids`]: newtypes for identities and wire identifiers.
//! - [`link_spec`]: link specifiers (EXTEND2, introduction points).
//! - [`keys`]: a relay's identity, signing and onion keys.
//! - [`key_file`]: C tor's data-directory key files (the one module here that does file I/O).

#![forbid(unsafe_code)]

pub mod codec;
pub mod ids;
pub mod key_file;
pub mod keys;
pub mod link_spec;
