//! Onion services for chive (rend-spec-v3).
//!
//! So far: the v3 onion address ([`onion_address`]) and the service directory in C tor's format
//! ([`service_dir`]). Descriptors, introduction, rendezvous, HSDir and the client come with the
//! onion-service issues.

#![forbid(unsafe_code)]

pub mod onion_address;
pub mod service_dir;
