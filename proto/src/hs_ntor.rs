//! hs-ntor (in progress).
