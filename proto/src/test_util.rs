//! Helpers shared by the unit tests of this crate.

/// Decodes a hex test vector, ignoring whitespace so vectors can be laid out by field.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let compact: String = s.split_whitespace().collect();
    hex::decode(compact).expect("test vector is hex")
}

/// [`unhex`] into a fixed-size array.
pub(crate) fn unhex_array<const N: usize>(s: &str) -> [u8; N] {
    unhex(s)
        .try_into()
        .expect("test vector has the expected length")
}
