//! Bounds-checked reading and writing of Tor's binary encodings.
//!
//! The [`Reader`] never panics: every read past the end gives [`CodecError::Truncated`].
//! Length-prefixed fields are read through bounded sub-readers ([`Reader::take_reader`]) so a
//! field can never read into its neighbour. Decoders finish with [`Reader::should_be_exhausted`]
//! where the spec forbids trailing bytes.
//!
//! Tor's encodings are big-endian ("network order") throughout (tor-spec §0.3).

use thiserror::Error;

/// What went wrong while decoding bytes from the network.
///
/// `Copy` and free of heap data on purpose: errors on the per-cell path must be cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended before the field did.
    #[error("truncated input")]
    Truncated,
    /// Bytes were left over after a message that must fill its container exactly.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A field held a value the format does not allow.
    #[error("invalid value for {0}")]
    BadValue(&'static str),
    /// A length field is larger than the format allows.
    #[error("length {len} exceeds the limit for {what}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// The length that was found or requested.
        len: usize,
    },
}

/// A cursor over a borrowed byte slice that never reads past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array.
    pub fn take_array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let s = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// Takes everything that is left.
    pub fn take_rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Returns the next `n` bytes without consuming them.
    pub fn peek(&self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated);
        }
        Ok(&self.buf[self.pos..self.pos + n])
    }

    /// Skips `n` bytes.
    pub fn advance(&mut self, n: usize) -> Result<(), CodecError> {
        self.take(n).map(|_| ())
    }

    /// Takes the next `n` bytes as a reader of their own, so a length-prefixed field cannot be
    /// read past its declared length.
    pub fn take_reader(&mut self, n: usize) -> Result<Reader<'a>, CodecError> {
        self.take(n).map(Reader::new)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take_array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        self.take_array().map(u16::from_be_bytes)
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        self.take_array().map(u32::from_be_bytes)
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        self.take_array().map(u64::from_be_bytes)
    }

    /// Reads a one-byte length and then that many bytes.
    pub fn u8_prefixed(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    /// Reads a two-byte length and then that many bytes.
    pub fn u16_prefixed(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// Reads up to (and consumes) a NUL byte; returns the bytes before it.
    pub fn nul_terminated(&mut self) -> Result<&'a [u8], CodecError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(CodecError::Truncated),
        }
    }

    /// Fails unless every byte has been consumed.
    pub fn should_be_exhausted(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::TrailingBytes(n)),
        }
    }
}

/// Appending big-endian encodings to a byte buffer.
///
/// Implemented for `Vec<u8>`; encoders write into a buffer the caller owns and reuses.
pub trait Writer {
    /// Appends raw bytes.
    fn put(&mut self, bytes: &[u8]);
    /// Appends one byte.
    fn put_u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    /// Appends a big-endian u16.
    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    /// Appends a big-endian u32.
    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    /// Appends a big-endian u64.
    fn put_u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }
    /// Appends a one-byte length and the bytes; fails if they do not fit in 255.
    fn put_u8_prefixed(&mut self, bytes: &[u8], what: &'static str) -> Result<(), CodecError> {
        let n = u8::try_from(bytes.len()).map_err(|_| CodecError::TooLong {
            what,
            len: bytes.len(),
        })?;
        self.put_u8(n);
        self.put(bytes);
        Ok(())
    }
    /// Appends a two-byte length and the bytes; fails if they do not fit in 65535.
    fn put_u16_prefixed(&mut self, bytes: &[u8], what: &'static str) -> Result<(), CodecError> {
        let n = u16::try_from(bytes.len()).map_err(|_| CodecError::TooLong {
            what,
            len: bytes.len(),
        })?;
        self.put_u16(n);
        self.put(bytes);
        Ok(())
    }
}

impl Writer for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_reports_truncation() {
        let bytes = [1u8, 0, 2, 0, 0, 0, 3, 2, 0xaa, 0xbb, b'h', b'i', 0, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.u8_prefixed(), Ok(&[0xaa, 0xbb][..]));
        assert_eq!(r.nul_terminated(), Ok(&b"hi"[..]));
        assert_eq!(r.should_be_exhausted(), Err(CodecError::TrailingBytes(1)));
        assert_eq!(r.u16(), Err(CodecError::Truncated));
        // A failed read consumes nothing.
        assert_eq!(r.u8(), Ok(9));
        assert_eq!(r.should_be_exhausted(), Ok(()));
    }

    #[test]
    fn sub_reader_is_bounded() {
        let bytes = [0u8, 3, 1, 2, 3, 4];
        let mut r = Reader::new(&bytes);
        let n = r.u16().unwrap_or(0) as usize;
        let mut sub = r.take_reader(n).expect("3 bytes present");
        assert_eq!(sub.take(4), Err(CodecError::Truncated));
        assert_eq!(sub.take(3), Ok(&[1, 2, 3][..]));
        assert_eq!(r.u8(), Ok(4));
    }

    #[test]
    fn writer_round_trips_and_refuses_oversized_prefixes() {
        let mut w = Vec::new();
        w.put_u16(0x1234);
        w.put_u64(7);
        w.put_u8_prefixed(b"abc", "test").expect("fits");
        assert!(w.put_u8_prefixed(&[0u8; 256], "test").is_err());
        let mut r = Reader::new(&w);
        assert_eq!(r.u16(), Ok(0x1234));
        assert_eq!(r.u64(), Ok(7));
        assert_eq!(r.u8_prefixed(), Ok(&b"abc"[..]));
        assert_eq!(r.should_be_exhausted(), Ok(()));
    }
}
