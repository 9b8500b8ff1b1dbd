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
//! - [`ext_list`]: the extension list framing shared by ntor v3 and the onion-service messages.
//! - [`hs_msg`]: onion-service relay message bodies (ESTABLISH_INTRO … RENDEZVOUS2), which
//!   [`relay_msg::RelayMsg`] dispatches along with the others.
//! - [`cell`]: channel cell framing (fixed- and variable-length cells, circuit id widths).
//! - [`chan_msg`]: the bodies of channel cells (VERSIONS, CERTS, NETINFO, CREATE2, DESTROY, ...).
//! - [`link_version`]: link protocol versions and their negotiation.
//! - [`relay_cell`]: the tor1 relay cell layout, [`relay_cell::RelayCmd`] and the stream-id rules.
//! - [`relay_cell_v1`]: the v1 relay cell layout used with CGO (proposal 359) and the per-hop
//!   [`relay_cell_v1::RelayCellFormat`] choice.
//! - [`relay_msg`]: relay message bodies (BEGIN, DATA, END, SENDME, EXTEND2, ...).
//! - [`kdf`]: KDF-TOR, KDF-RFC5869, SHAKE-256; the [`kdf::KeyGenerator`] every handshake returns
//!   and the shared [`kdf::HandshakeError`].
//! - [`create_fast`]: the CREATE_FAST handshake.
//! - [`ntor`]: the ntor handshake (CREATE2 type 2).
//! - [`ntor_v3`]: the ntor v3 handshake (CREATE2 type 3) and its extension messages.
//! - [`hs_ntor`]: the onion service hs-ntor handshake (INTRODUCE1 encryption, RENDEZVOUS1).
//! - [`cert`]: ed25519 certificates (cert-spec) and the certificate error types.
//! - [`rsa_crosscert`]: the RSA-to-ed25519 cross-certificate (CERTS type 7).
//! - [`x509`]: the self-signed RSA-1024 identity certificate (CERTS type 2).
//! - [`certs_cell`]: validating a peer's CERTS cell and building ours.
//! - [`link_handshake`]: the link handshake after TLS (VERSIONS … NETINFO) as sans-io state
//!   machines for the initiator and the responder.
//! - [`keys`]: a relay's identity, signing and onion keys, and the signing certificate,
//!   handshake server keys and CERTS identity certificates made from them.
//! - [`key_file`]: C tor's data-directory key files (the one module here that does file I/O).
//! - [`fuzzing`]: one entry point per decoder family for the `proto/fuzz` targets and the
//!   corpus replay test.

#![forbid(unsafe_code)]

pub mod cell;
pub mod cert;
pub mod certs_cell;
pub mod chan_msg;
pub mod codec;
pub mod create_fast;
pub mod ext_list;
pub mod fuzzing;
pub mod hs_msg;
pub mod hs_ntor;
pub mod ids;
pub mod kdf;
pub mod key_file;
pub mod keys;
pub mod link_handshake;
pub mod link_spec;
pub mod link_version;
pub mod ntor;
pub mod ntor_v3;
pub mod relay_cell;
pub mod relay_cell_v1;
pub mod relay_msg;
pub mod rsa_crosscert;
#[cfg(test)]
mod test_util;
pub mod x509;
