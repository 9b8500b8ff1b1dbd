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
//! - [`cert`]: ed25519 certificates (cert-spec) and the certificate error types.
//! - [`rsa_crosscert`]: the RSA-to-ed25519 cross-certificate (CERTS type 7).
//! - [`x509`]: the self-signed RSA-1024 identity certificate (CERTS type 2).
//! - [`certs_cell`]: validating a peer's CERTS cell and building ours.

#![forbid(unsafe_code)]

pub mod codec;
pub mod ids;
pub mod link_spec;

pub mod cert;
pub mod certs_cell;
pub mod rsa_crosscert;
pub mod x509;
