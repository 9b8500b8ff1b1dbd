//! The chive relay daemon: everything the `chive` binary does, as a library so that it can be
//! tested without a process boundary.
//!
//! - [`keygen`]: `chive keygen`, which loads or creates a relay's keys in C tor's data-directory
//!   format and prints its identities as `tor --list-fingerprint` does.

#![forbid(unsafe_code)]

pub mod keygen;
