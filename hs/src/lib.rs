//! Onion services for chive (rend-spec-v3).
//!
//! So far: the v3 onion address ([`onion_address`]). Keys, descriptors, introduction,
//! rendezvous, HSDir and the client come with the onion-service issues.

#![forbid(unsafe_code)]

pub mod onion_address;
