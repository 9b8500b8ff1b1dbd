//! The extension list shared by the ntor v3 handshake messages and the onion-service messages.
//!
//! ```text
//! N_EXTENSIONS    [1 byte]
//! N_EXTENSIONS times:
//!    EXT_FIELD_TYPE  [1 byte]
//!    EXT_FIELD_LEN   [1 byte]
//!    EXT_FIELD       [EXT_FIELD_LEN bytes]
//! ```
//!
//! rend-spec-v3 §3.1.1 (ESTABLISH_INTRO, and by reference INTRO_ESTABLISHED, INTRODUCE1/2 and
//! INTRODUCE_ACK) and the ntor v3 client and server messages (proposal 332 "meta-encoding", as
//! tor-spec's ntor-v3 section and C tor frame it, with the count byte) use this one wire
//! format; only the meaning of the type byte differs. So the framing lives here once, and each
//! side keeps its own typed view of the extensions it knows by implementing
//! `ExtensionField`: [`Extension`] (raw type and body, what the onion-service messages keep so
//! their MACs and signatures cover the wire bytes) and [`crate::ntor_v3::NtorV3Extension`].
//!
//! cert-spec's certificate extensions are not this format (a two-byte length and a flags byte
//! per extension), so [`crate::cert`] keeps its own.

use crate::codec::{CodecError, Reader, Writer};

/// One entry of an extension list as a caller's typed view sees it.
pub(crate) trait ExtensionField: Sized {
    /// What a too-long count is called in [`CodecError::TooLong`].
    const COUNT_NAME: &'static str = "N_EXTENSIONS";
    /// What a too-long body is called in [`CodecError::TooLong`].
    const FIELD_NAME: &'static str = "EXT_FIELD";

    /// EXT_FIELD_TYPE.
    fn ext_type_byte(&self) -> u8;
    /// Appends EXT_FIELD (without its length); fails if the value cannot be encoded.
    fn encode_field(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Interprets one EXT_FIELD of type `ext_type`.
    fn decode_field(ext_type: u8, body: &[u8]) -> Result<Self, CodecError>;
}

/// Reads `N_EXTENSIONS` and the extensions, interpreting each as soon as it is read. Bytes after
/// the last extension are left in `r` for the caller.
pub(crate) fn decode_list<E: ExtensionField>(r: &mut Reader<'_>) -> Result<Vec<E>, CodecError> {
    let n = r.u8()?;
    let mut exts = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let ext_type = r.u8()?;
        let body = r.u8_prefixed()?;
        exts.push(E::decode_field(ext_type, body)?);
    }
    Ok(exts)
}

/// Writes `N_EXTENSIONS` and the extensions; fails if there are more than 255, a body is longer
/// than 255 bytes, or an extension refuses to encode.
pub(crate) fn encode_list<E: ExtensionField>(
    exts: &[E],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let n = u8::try_from(exts.len()).map_err(|_| CodecError::TooLong {
        what: E::COUNT_NAME,
        len: exts.len(),
    })?;
    out.put_u8(n);
    let mut body = Vec::new();
    for e in exts {
        body.clear();
        e.encode_field(&mut body)?;
        out.put_u8(e.ext_type_byte());
        out.put_u8_prefixed(&body, E::FIELD_NAME)?;
    }
    Ok(())
}

/// One extension field: `EXT_FIELD_TYPE (1) EXT_FIELD_LEN (1) EXT_FIELD`, body kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// EXT_FIELD_TYPE; its meaning depends on the message carrying it.
    pub ext_type: u8,
    /// EXT_FIELD (at most 255 bytes to be encodable).
    pub body: Vec<u8>,
}

impl ExtensionField for Extension {
    fn ext_type_byte(&self) -> u8 {
        self.ext_type
    }

    fn encode_field(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.body);
        Ok(())
    }

    fn decode_field(ext_type: u8, body: &[u8]) -> Result<Self, CodecError> {
        Ok(Extension {
            ext_type,
            body: body.to_vec(),
        })
    }
}

/// An extension list (`N_EXTENSIONS (1)` then that many [`Extension`]s), in wire order.
///
/// Unknown types must be ignored by receivers, so they are kept verbatim for forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extensions(pub Vec<Extension>);

impl Extensions {
    /// An empty list (`N_EXTENSIONS = 0`).
    pub fn new() -> Self {
        Extensions(Vec::new())
    }

    /// The body of the first extension of type `ext_type`: the specs tell parties to ignore
    /// every later occurrence of a type.
    pub fn get(&self, ext_type: u8) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|e| e.ext_type == ext_type)
            .map(|e| e.body.as_slice())
    }

    /// Reads `N_EXTENSIONS` and the extensions, leaving any later bytes in `r`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        decode_list(r).map(Extensions)
    }

    /// Writes `N_EXTENSIONS` and the extensions; fails if there are more than 255 or a body is
    /// longer than 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        encode_list(&self.0, out)
    }
}

/// Decodes a complete extension list, refusing trailing bytes. Fuzz entry point.
pub fn decode_exact(bytes: &[u8]) -> Result<Extensions, CodecError> {
    let mut r = Reader::new(bytes);
    let exts = Extensions::decode(&mut r)?;
    r.should_be_exhausted()?;
    Ok(exts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        let exts = Extensions(vec![
            Extension {
                ext_type: 2,
                body: vec![0xAA, 0xBB],
            },
            Extension {
                ext_type: 9,
                body: vec![],
            },
        ]);
        let mut out = vec![0x55];
        exts.encode(&mut out).unwrap();
        assert_eq!(out, [0x55, 2, 2, 2, 0xAA, 0xBB, 9, 0]);
        assert_eq!(decode_exact(&out[1..]), Ok(exts));
    }

    #[test]
    fn bad_input() {
        assert_eq!(decode_exact(&[]), Err(CodecError::Truncated));
        assert_eq!(decode_exact(&[1, 7, 2, 0]), Err(CodecError::Truncated));
        assert_eq!(
            decode_exact(&[1, 7, 0, 0xEE]),
            Err(CodecError::TrailingBytes(1))
        );
        // The reader keeps bytes after the list for the enclosing message.
        let mut r = Reader::new(&[0, 0xEE]);
        assert_eq!(Extensions::decode(&mut r), Ok(Extensions::new()));
        assert_eq!(r.take_rest(), &[0xEE]);
    }

    /// Lists of fewer than `max_count` extensions with bodies shorter than `max_body`; also used
    /// by the onion-service message tests, which need lists small enough to fit a cell.
    pub(crate) fn arb_extensions(
        max_body: usize,
        max_count: usize,
    ) -> impl Strategy<Value = Extensions> {
        proptest::collection::vec(
            (
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..max_body),
            )
                .prop_map(|(ext_type, body)| Extension { ext_type, body }),
            0..max_count,
        )
        .prop_map(Extensions)
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_exact(&bytes);
        }

        #[test]
        fn round_trip(exts in arb_extensions(256, 8)) {
            let mut out = Vec::new();
            exts.encode(&mut out).unwrap();
            prop_assert_eq!(decode_exact(&out), Ok(exts));
        }
    }
}
