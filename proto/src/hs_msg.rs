//! Onion-service relay message bodies: introduction and rendezvous.
//!
//! Implements the formats of rend-spec-v3
//! [§3.1.1 EST_INTRO](https://spec.torproject.org/rend-spec/introduction-protocol.html#EST_INTRO)
//! (with the DoS-parameters extension of §3.1.1.1 / proposal 305),
//! [§3.1.3 INTRO_ESTABLISHED](https://spec.torproject.org/rend-spec/introduction-protocol.html#INTRO_ESTABLISHED),
//! [§3.2.1 FMT_INTRO1](https://spec.torproject.org/rend-spec/introduction-protocol.html#FMT_INTRO1),
//! [§3.2.2 INTRO_ACK](https://spec.torproject.org/rend-spec/introduction-protocol.html#INTRO_ACK),
//! [§3.3 PROCESS_INTRO2](https://spec.torproject.org/rend-spec/introduction-protocol.html#PROCESS_INTRO2)
//! (the decrypted INTRODUCE2 plaintext) and the ENCRYPTED framing of §3.3.2,
//! [§4.1 EST_REND_POINT](https://spec.torproject.org/rend-spec/rendezvous-protocol.html#EST_REND_POINT) and
//! [§4.2 JOIN_REND](https://spec.torproject.org/rend-spec/rendezvous-protocol.html#JOIN_REND).
//!
//! Only the formats live here, plus the ESTABLISH_INTRO MAC and signature (which need nothing but
//! the circuit's `KH` and the auth key). The hs-ntor encryption of INTRODUCE1 is in `hs_ntor`;
//! [`crate::relay_msg::RelayMsg`] decodes each of these messages by its relay command.
//!
//! Messages whose bytes are authenticated ([`EstablishIntro`], [`IntroduceBody`]) keep the
//! authenticated bytes exactly as they were on the wire, so an extension this code does not
//! understand can never make a valid message fail verification, and re-encoding is verbatim.
//!
//! Leniency, following the spec's MUSTs: ESTABLISH_RENDEZVOUS and RENDEZVOUS_ESTABLISHED ignore
//! trailing bytes; an empty INTRO_ESTABLISHED (sent by pre-v3 relays) is read as "no
//! extensions"; RENDEZVOUS1/2 keep any bytes after HANDSHAKE_INFO as padding, so a rendezvous
//! point forwards them unchanged as C tor does. Everything else rejects trailing bytes.

use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::codec::{CodecError, Reader, Writer};
pub use crate::ext_list::{Extension, Extensions};
use crate::ids::Ed25519Identity;
use crate::kdf::hs_mac;
use crate::link_spec::LinkSpec;

/// MAC_LEN (and HASH_LEN): SHA3-256 output size.
pub const MAC_LEN: usize = 32;

/// AUTH_KEY_TYPE for an ed25519 key with a SHA3-256 MAC, the only type a v3 message may carry.
///
/// Types 0 and 1 mean the legacy RSA formats, which C tor 0.4.9 no longer accepts either.
pub const AUTH_KEY_TYPE_ED25519: u8 = 0x02;

/// The distinguishing prefix of the ESTABLISH_INTRO signature (rend-spec-v3 §3.1.1).
const EST_INTRO_SIG_PREFIX: &[u8] = b"Tor establish-intro cell v1";

const ED25519_KEY_LEN: usize = Ed25519Identity::LEN;
const ED25519_SIG_LEN: usize = ed25519_dalek::SIGNATURE_LENGTH;

/// Reads AUTH_KEY_TYPE, AUTH_KEY_LEN and AUTH_KEY, accepting only a 32-byte ed25519 key.
fn decode_auth_key(r: &mut Reader<'_>) -> Result<Ed25519Identity, CodecError> {
    if r.u8()? != AUTH_KEY_TYPE_ED25519 {
        return Err(CodecError::BadValue("AUTH_KEY_TYPE"));
    }
    if usize::from(r.u16()?) != ED25519_KEY_LEN {
        return Err(CodecError::BadValue("AUTH_KEY_LEN"));
    }
    Ok(Ed25519Identity::from_bytes(r.take_array()?))
}

fn encode_auth_key(key: &Ed25519Identity, out: &mut Vec<u8>) {
    out.put_u8(AUTH_KEY_TYPE_ED25519);
    out.put_u16(ED25519_KEY_LEN as u16);
    out.put(key.as_bytes());
}

/// PARAM_TYPE of a DoS parameter in the ESTABLISH_INTRO DoS extension (proposal 305 §2), as an
/// open newtype so unknown parameters round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DosParamType(pub u8);

impl DosParamType {
    /// `[01]` DOS_INTRODUCE2_RATE_PER_SEC: INTRODUCE2 cells per second relayed to the service.
    pub const INTRODUCE2_RATE_PER_SEC: Self = DosParamType(0x01);
    /// `[02]` DOS_INTRODUCE2_BURST_PER_SEC: the burst allowed on top of the rate.
    pub const INTRODUCE2_BURST_PER_SEC: Self = DosParamType(0x02);
}

/// One `PARAM_TYPE (1) PARAM_VALUE (8)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DosParam {
    /// PARAM_TYPE.
    pub param_type: DosParamType,
    /// PARAM_VALUE, unvalidated; see [`DosParams::validate`].
    pub value: u64,
}

/// Why an intro point must ignore a DoS extension's parameters (rend-spec-v3 §3.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DosParamsError {
    /// A known parameter lies outside `0..=2147483647`.
    #[error("DoS parameter {param_type} has out-of-range value {value}")]
    OutOfRange {
        /// PARAM_TYPE.
        param_type: u8,
        /// The offending PARAM_VALUE.
        value: u64,
    },
    /// Both rate and burst are non-zero but the burst is below the rate.
    #[error("DoS burst {burst} is below rate {rate}")]
    BurstBelowRate {
        /// DOS_INTRODUCE2_RATE_PER_SEC.
        rate: u64,
        /// DOS_INTRODUCE2_BURST_PER_SEC.
        burst: u64,
    },
}

/// The body of the DoS-parameters extension (EXT_FIELD_TYPE `[01]` in ESTABLISH_INTRO),
/// sent by a service to tune its intro point's INTRODUCE2 rate limit.
///
/// `N_PARAMS (1)` then N_PARAMS × (`PARAM_TYPE (1) PARAM_VALUE (8)`); unknown types are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DosParams {
    /// The parameters in wire order.
    pub params: Vec<DosParam>,
}

impl DosParams {
    /// EXT_FIELD_TYPE of this extension in ESTABLISH_INTRO.
    pub const EXT_TYPE: u8 = 0x01;
    /// Largest value the spec allows for either known parameter (INT32_MAX).
    pub const VALUE_MAX: u64 = 2_147_483_647;

    /// The parameters a service sends: rate then burst, each only if given.
    pub fn new(rate_per_sec: Option<u64>, burst_per_sec: Option<u64>) -> Self {
        let rate = rate_per_sec.map(|value| DosParam {
            param_type: DosParamType::INTRODUCE2_RATE_PER_SEC,
            value,
        });
        let burst = burst_per_sec.map(|value| DosParam {
            param_type: DosParamType::INTRODUCE2_BURST_PER_SEC,
            value,
        });
        DosParams {
            params: rate.into_iter().chain(burst).collect(),
        }
    }

    fn first(&self, t: DosParamType) -> Option<u64> {
        self.params
            .iter()
            .find(|p| p.param_type == t)
            .map(|p| p.value)
    }

    /// DOS_INTRODUCE2_RATE_PER_SEC (first occurrence), if present.
    pub fn rate_per_sec(&self) -> Option<u64> {
        self.first(DosParamType::INTRODUCE2_RATE_PER_SEC)
    }

    /// DOS_INTRODUCE2_BURST_PER_SEC (first occurrence), if present.
    pub fn burst_per_sec(&self) -> Option<u64> {
        self.first(DosParamType::INTRODUCE2_BURST_PER_SEC)
    }

    /// Checks the spec's limits; an intro point ignores the parameters (falling back to the
    /// consensus values) when this fails. Unknown parameter types are not checked.
    pub fn validate(&self) -> Result<(), DosParamsError> {
        let known = [
            DosParamType::INTRODUCE2_RATE_PER_SEC,
            DosParamType::INTRODUCE2_BURST_PER_SEC,
        ];
        // Every occurrence, not just the first: a value out of range anywhere makes the
        // extension malformed.
        if let Some(p) = self
            .params
            .iter()
            .find(|p| known.contains(&p.param_type) && p.value > Self::VALUE_MAX)
        {
            return Err(DosParamsError::OutOfRange {
                param_type: p.param_type.0,
                value: p.value,
            });
        }
        // A zero in either disables the defence, so the ordering rule only binds when both
        // are non-zero.
        if let (Some(rate), Some(burst)) = (self.rate_per_sec(), self.burst_per_sec()) {
            if rate != 0 && burst != 0 && burst < rate {
                return Err(DosParamsError::BurstBelowRate { rate, burst });
            }
        }
        Ok(())
    }

    /// Parses an extension body; bytes after the last parameter are an error.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let n = r.u8()?;
        let mut params = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let param_type = DosParamType(r.u8()?);
            let value = r.u64()?;
            params.push(DosParam { param_type, value });
        }
        r.should_be_exhausted()?;
        Ok(DosParams { params })
    }

    /// Writes the extension body (without type and length).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let n = u8::try_from(self.params.len()).map_err(|_| CodecError::TooLong {
            what: "N_PARAMS",
            len: self.params.len(),
        })?;
        out.put_u8(n);
        for p in &self.params {
            out.put_u8(p.param_type.0);
            out.put_u64(p.value);
        }
        Ok(())
    }
}

/// An extension of ESTABLISH_INTRO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EstIntroExtension {
    /// `[01]` DoS parameters (proposal 305).
    DosParams(DosParams),
    /// Any other type, kept verbatim. A `[01]` extension whose body does not parse also lands
    /// here: C tor's intro point ignores such an extension rather than refusing the circuit.
    Unrecognized {
        /// EXT_FIELD_TYPE.
        ext_type: u8,
        /// EXT_FIELD.
        body: Vec<u8>,
    },
}

impl EstIntroExtension {
    /// Interprets a raw extension.
    pub fn from_raw(ext: Extension) -> Self {
        if ext.ext_type == DosParams::EXT_TYPE {
            if let Ok(p) = DosParams::decode(&ext.body) {
                return EstIntroExtension::DosParams(p);
            }
        }
        EstIntroExtension::Unrecognized {
            ext_type: ext.ext_type,
            body: ext.body,
        }
    }

    /// The raw form, for encoding.
    pub fn to_raw(&self) -> Result<Extension, CodecError> {
        match self {
            EstIntroExtension::DosParams(p) => {
                let mut body = Vec::with_capacity(1 + 9 * p.params.len());
                p.encode(&mut body)?;
                Ok(Extension {
                    ext_type: DosParams::EXT_TYPE,
                    body,
                })
            }
            EstIntroExtension::Unrecognized { ext_type, body } => Ok(Extension {
                ext_type: *ext_type,
                body: body.clone(),
            }),
        }
    }
}

/// Why an ESTABLISH_INTRO fails verification at the intro point; each means "destroy the
/// circuit" (rend-spec-v3 §3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EstablishIntroError {
    /// AUTH_KEY is not a valid ed25519 point.
    #[error("ESTABLISH_INTRO auth key is not a valid ed25519 key")]
    BadAuthKey,
    /// HANDSHAKE_AUTH does not match `MAC(KH, ...)` for this circuit.
    #[error("ESTABLISH_INTRO handshake auth does not match the circuit")]
    BadHandshakeAuth,
    /// SIG does not verify under AUTH_KEY.
    #[error("ESTABLISH_INTRO signature is invalid")]
    BadSignature,
}

/// Why we could not build an ESTABLISH_INTRO (our side's problem, not the peer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EstablishIntroSignError {
    /// An extension does not fit its length field.
    #[error("cannot encode ESTABLISH_INTRO: {0}")]
    Encode(#[from] CodecError),
    /// The signer refused to sign.
    #[error("the auth key signer failed")]
    Signer,
}

/// ESTABLISH_INTRO (relay command 32), sent by an onion service to a relay to make the circuit
/// an introduction circuit for `AUTH_KEY` (rend-spec-v3 §3.1.1). Only the intro point accepts
/// it; it must reject it on a circuit that is already an intro or rendezvous circuit.
///
/// Immutable once built: it is either signed here ([`EstablishIntro::sign`]) or decoded, and
/// it keeps the authenticated bytes exactly as they were, so [`EstablishIntro::verify`] never
/// depends on re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstablishIntro {
    auth_key: Ed25519Identity,
    extensions: Vec<EstIntroExtension>,
    handshake_auth: [u8; MAC_LEN],
    sig: [u8; ED25519_SIG_LEN],
    /// AUTH_KEY_TYPE through the last extension: what HANDSHAKE_AUTH covers.
    mac_input: Vec<u8>,
}

impl EstablishIntro {
    /// Builds and signs a message for the circuit whose `KH` is given, with `auth_key`
    /// (KP_hs_ipt_sid) and `signer` holding its secret half.
    pub fn sign<S: Signer<Signature>>(
        kh: &[u8],
        signer: &S,
        auth_key: &VerifyingKey,
        extensions: Vec<EstIntroExtension>,
    ) -> Result<Self, EstablishIntroSignError> {
        let auth_key = Ed25519Identity::from_bytes(auth_key.to_bytes());
        let mut mac_input = Vec::with_capacity(64);
        encode_auth_key(&auth_key, &mut mac_input);
        let raw = extensions
            .iter()
            .map(EstIntroExtension::to_raw)
            .collect::<Result<Vec<_>, _>>()?;
        Extensions(raw).encode(&mut mac_input)?;
        let handshake_auth = hs_mac(kh, &[&mac_input]);
        let signed = Self::signed_message(&mac_input, &handshake_auth);
        let sig = signer
            .try_sign(&signed)
            .map_err(|_| EstablishIntroSignError::Signer)?
            .to_bytes();
        Ok(EstablishIntro {
            auth_key,
            extensions,
            handshake_auth,
            sig,
            mac_input,
        })
    }

    /// The message SIG covers: the prefix, then every byte before SIG_LEN.
    fn signed_message(mac_input: &[u8], handshake_auth: &[u8; MAC_LEN]) -> Vec<u8> {
        let mut m =
            Vec::with_capacity(EST_INTRO_SIG_PREFIX.len() + mac_input.len() + handshake_auth.len());
        m.put(EST_INTRO_SIG_PREFIX);
        m.put(mac_input);
        m.put(handshake_auth);
        m
    }

    /// Checks HANDSHAKE_AUTH against this circuit's `KH` (in constant time) and then SIG;
    /// returns the auth key to register the circuit under.
    pub fn verify(&self, kh: &[u8]) -> Result<VerifyingKey, EstablishIntroError> {
        let key = VerifyingKey::from_bytes(self.auth_key.as_bytes())
            .map_err(|_| EstablishIntroError::BadAuthKey)?;
        let expected = hs_mac(kh, &[&self.mac_input]);
        if !bool::from(expected.ct_eq(&self.handshake_auth)) {
            return Err(EstablishIntroError::BadHandshakeAuth);
        }
        let signed = Self::signed_message(&self.mac_input, &self.handshake_auth);
        key.verify(&signed, &Signature::from_bytes(&self.sig))
            .map_err(|_| EstablishIntroError::BadSignature)?;
        Ok(key)
    }

    /// AUTH_KEY (KP_hs_ipt_sid), unverified until [`EstablishIntro::verify`] succeeds.
    pub fn auth_key(&self) -> &Ed25519Identity {
        &self.auth_key
    }

    /// The extensions in wire order.
    pub fn extensions(&self) -> &[EstIntroExtension] {
        &self.extensions
    }

    /// The first well-formed DoS extension; later ones are ignored as the spec says.
    pub fn dos_params(&self) -> Option<&DosParams> {
        self.extensions.iter().find_map(|e| match e {
            EstIntroExtension::DosParams(p) => Some(p),
            EstIntroExtension::Unrecognized { .. } => None,
        })
    }

    /// HANDSHAKE_AUTH.
    pub fn handshake_auth(&self) -> &[u8; MAC_LEN] {
        &self.handshake_auth
    }

    /// SIG.
    pub fn signature(&self) -> &[u8; ED25519_SIG_LEN] {
        &self.sig
    }

    /// Parses a message body. Only ed25519 auth keys (type 2, 32 bytes) and 64-byte
    /// signatures are accepted; bytes after SIG are an error.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let auth_key = decode_auth_key(&mut r)?;
        let exts = Extensions::decode(&mut r)?;
        let mac_input = body
            .get(..r.consumed())
            .ok_or(CodecError::Truncated)?
            .to_vec();
        let handshake_auth = r.take_array()?;
        if usize::from(r.u16()?) != ED25519_SIG_LEN {
            return Err(CodecError::BadValue("SIG_LEN"));
        }
        let sig = r.take_array()?;
        r.should_be_exhausted()?;
        Ok(EstablishIntro {
            auth_key,
            extensions: exts
                .0
                .into_iter()
                .map(EstIntroExtension::from_raw)
                .collect(),
            handshake_auth,
            sig,
            mac_input,
        })
    }

    /// Writes the message body: the authenticated bytes verbatim, then SIG_LEN and SIG.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.mac_input);
        out.put(&self.handshake_auth);
        out.put_u16(ED25519_SIG_LEN as u16);
        out.put(&self.sig);
        Ok(())
    }
}

/// INTRO_ESTABLISHED (relay command 38), sent by an intro point to the service after accepting
/// ESTABLISH_INTRO (rend-spec-v3 §3.1.3). Only a service's intro circuit accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntroEstablished {
    /// Extensions; none are defined yet.
    pub extensions: Extensions,
}

impl IntroEstablished {
    /// Parses a message body. An empty body (from pre-v3 relays) means no extensions.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        if body.is_empty() {
            return Ok(IntroEstablished::default());
        }
        let mut r = Reader::new(body);
        let extensions = Extensions::decode(&mut r)?;
        r.should_be_exhausted()?;
        Ok(IntroEstablished { extensions })
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.extensions.encode(out)
    }
}

/// The body shared by INTRODUCE1 and INTRODUCE2 (rend-spec-v3 §3.2.1): a zero LEGACY_KEY_ID,
/// the intro point's auth key, extensions, then the hs-ntor ENCRYPTED section.
///
/// The bytes before ENCRYPTED (the "header", from LEGACY_KEY_ID through the last extension)
/// are kept exactly as on the wire: the hs-ntor MAC covers them. (C tor MACs the header from
/// LEGACY_KEY_ID onwards, although the spec text says "from the AUTH_KEY".)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroduceBody {
    auth_key: Ed25519Identity,
    extensions: Extensions,
    header: Vec<u8>,
    encrypted: Vec<u8>,
}

impl IntroduceBody {
    const LEGACY_KEY_ID_LEN: usize = 20;

    /// Starts a body for `auth_key` (KP_hs_ipt_sid) with an empty ENCRYPTED section; the
    /// client MACs [`IntroduceBody::header`] and then calls [`IntroduceBody::set_encrypted`].
    pub fn new(auth_key: Ed25519Identity, extensions: Extensions) -> Result<Self, CodecError> {
        let mut header = Vec::with_capacity(Self::LEGACY_KEY_ID_LEN + 3 + 32 + 1);
        header.put(&[0u8; Self::LEGACY_KEY_ID_LEN]);
        encode_auth_key(&auth_key, &mut header);
        extensions.encode(&mut header)?;
        Ok(IntroduceBody {
            auth_key,
            extensions,
            header,
            encrypted: Vec::new(),
        })
    }

    /// Replaces ENCRYPTED (see [`IntroduceEncrypted`] for its framing).
    pub fn set_encrypted(&mut self, encrypted: Vec<u8>) {
        self.encrypted = encrypted;
    }

    /// AUTH_KEY: which intro circuit the intro point relays this to.
    pub fn auth_key(&self) -> &Ed25519Identity {
        &self.auth_key
    }

    /// The cleartext extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Every byte before ENCRYPTED, as on the wire: the first part of the hs-ntor MAC input.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// ENCRYPTED: the rest of the body.
    pub fn encrypted(&self) -> &[u8] {
        &self.encrypted
    }

    /// Parses a body. A non-zero LEGACY_KEY_ID (a legacy v2 cell) or a non-ed25519 auth key is
    /// refused.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let legacy: [u8; Self::LEGACY_KEY_ID_LEN] = r.take_array()?;
        if legacy.iter().any(|&b| b != 0) {
            return Err(CodecError::BadValue("LEGACY_KEY_ID"));
        }
        let auth_key = decode_auth_key(&mut r)?;
        let extensions = Extensions::decode(&mut r)?;
        let header = body
            .get(..r.consumed())
            .ok_or(CodecError::Truncated)?
            .to_vec();
        let encrypted = r.take_rest().to_vec();
        Ok(IntroduceBody {
            auth_key,
            extensions,
            header,
            encrypted,
        })
    }

    /// Writes the body: header verbatim, then ENCRYPTED.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.header);
        out.put(&self.encrypted);
        Ok(())
    }
}

/// INTRODUCE1 (relay command 34), sent by a client to an intro point (rend-spec-v3 §3.2.1).
/// Only an intro point accepts it, on a circuit that is not itself an intro circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduce1(pub IntroduceBody);

impl Introduce1 {
    /// Parses a message body; see [`IntroduceBody::decode`].
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        IntroduceBody::decode(body).map(Introduce1)
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.0.encode(out)
    }

    /// The INTRODUCE2 an intro point relays: "exactly the same contents".
    pub fn into_introduce2(self) -> Introduce2 {
        Introduce2(self.0)
    }
}

/// INTRODUCE2 (relay command 35), relayed by an intro point to the service on its intro
/// circuit (rend-spec-v3 §3.3). Only a service's intro circuit accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduce2(pub IntroduceBody);

impl Introduce2 {
    /// Parses a message body; see [`IntroduceBody::decode`].
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        IntroduceBody::decode(body).map(Introduce2)
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.0.encode(out)
    }
}

/// CLIENT_PK, ENCRYPTED_DATA and MAC of an ENCRYPTED section, borrowed.
type IntroEncryptedParts<'a> = ([u8; 32], &'a [u8], [u8; MAC_LEN]);

/// The framing of INTRODUCE1's ENCRYPTED section under hs-ntor (rend-spec-v3 §3.3.2):
/// `CLIENT_PK (32) ENCRYPTED_DATA MAC (32)`, MAC being the last 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroduceEncrypted {
    /// CLIENT_PK: the client's ephemeral X25519 key X.
    pub client_pk: [u8; 32],
    /// ENCRYPTED_DATA: the [`IntroducePlaintext`] under ENC_KEY.
    pub encrypted_data: Vec<u8>,
    /// MAC over the header, CLIENT_PK and ENCRYPTED_DATA under MAC_KEY.
    pub mac: [u8; MAC_LEN],
}

impl IntroduceEncrypted {
    /// Splits an ENCRYPTED section; fewer than 64 bytes is [`CodecError::Truncated`].
    pub fn decode(encrypted: &[u8]) -> Result<Self, CodecError> {
        let (client_pk, encrypted_data, mac) = Self::split(encrypted)?;
        Ok(IntroduceEncrypted {
            client_pk,
            encrypted_data: encrypted_data.to_vec(),
            mac,
        })
    }

    /// The one parser of this framing: (CLIENT_PK, ENCRYPTED_DATA, MAC), borrowing the data so
    /// `hs_ntor`'s zero-copy view shares it.
    pub(crate) fn split(encrypted: &[u8]) -> Result<IntroEncryptedParts<'_>, CodecError> {
        let mut r = Reader::new(encrypted);
        let client_pk = r.take_array()?;
        let data_len = r
            .remaining()
            .checked_sub(MAC_LEN)
            .ok_or(CodecError::Truncated)?;
        let encrypted_data = r.take(data_len)?;
        let mac = r.take_array()?;
        Ok((client_pk, encrypted_data, mac))
    }

    /// Writes the section.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(&self.client_pk);
        out.put(&self.encrypted_data);
        out.put(&self.mac);
        Ok(())
    }
}

/// ONION_KEY in the INTRODUCE2 plaintext: the key the service uses to extend to the
/// rendezvous point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnionKey {
    /// `[01]` ntor: a 32-byte curve25519 key.
    Ntor([u8; 32]),
    /// Any other ONION_KEY_TYPE, kept so the service can decide (it must be a type its
    /// descriptor lists).
    Unrecognized {
        /// ONION_KEY_TYPE.
        key_type: u8,
        /// ONION_KEY.
        key: Vec<u8>,
    },
}

impl OnionKey {
    /// ONION_KEY_TYPE of an ntor key.
    pub const NTOR: u8 = 0x01;
}

/// A 20-byte rendezvous cookie, chosen by the client to pair its rendezvous circuit with the
/// service's.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RendCookie([u8; 20]);

impl RendCookie {
    /// Length in bytes.
    pub const LEN: usize = 20;

    /// Wraps the cookie bytes.
    pub const fn from_bytes(b: [u8; 20]) -> Self {
        RendCookie(b)
    }

    /// The cookie bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl std::fmt::Debug for RendCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RendCookie({})", hex::encode(self.0))
    }
}

/// The decrypted INTRODUCE2 payload (rend-spec-v3 §3.3), written by the client and read by the
/// service: where to meet the client and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroducePlaintext {
    /// RENDEZVOUS_COOKIE.
    pub rendezvous_cookie: RendCookie,
    /// Encrypted extensions (e.g. congestion-control request, proof of work).
    pub extensions: Extensions,
    /// ONION_KEY_TYPE, ONION_KEY_LEN and ONION_KEY of the rendezvous point.
    pub onion_key: OnionKey,
    /// The rendezvous point's link specifiers, to be used verbatim and in order.
    pub link_specifiers: Vec<LinkSpec>,
}

impl IntroducePlaintext {
    /// Parses a plaintext; anything after the link specifiers is PAD and is ignored (its
    /// content is not checked, as C tor does not).
    pub fn decode(plaintext: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(plaintext);
        let rendezvous_cookie = RendCookie(r.take_array()?);
        let extensions = Extensions::decode(&mut r)?;
        let key_type = r.u8()?;
        let key = r.u16_prefixed()?;
        let onion_key = match key_type {
            OnionKey::NTOR => OnionKey::Ntor(
                key.try_into()
                    .map_err(|_| CodecError::BadValue("ONION_KEY_LEN"))?,
            ),
            _ => OnionKey::Unrecognized {
                key_type,
                key: key.to_vec(),
            },
        };
        let link_specifiers = LinkSpec::decode_list(&mut r)?;
        Ok(IntroducePlaintext {
            rendezvous_cookie,
            extensions,
            onion_key,
            link_specifiers,
        })
    }

    /// Writes the plaintext without padding.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(self.rendezvous_cookie.as_bytes());
        self.extensions.encode(out)?;
        match &self.onion_key {
            OnionKey::Ntor(k) => {
                out.put_u8(OnionKey::NTOR);
                out.put_u16_prefixed(k, "ONION_KEY")?;
            }
            OnionKey::Unrecognized { key_type, key } => {
                out.put_u8(*key_type);
                out.put_u16_prefixed(key, "ONION_KEY")?;
            }
        }
        LinkSpec::encode_list(&self.link_specifiers, out)
    }

    /// Writes the plaintext followed by zero PAD bytes so that it is at least `padded_len`
    /// long (nothing is added if it is already longer); the padded length hides which link
    /// specifiers and extensions the client sent.
    pub fn encode_padded(&self, out: &mut Vec<u8>, padded_len: usize) -> Result<(), CodecError> {
        let start = out.len();
        self.encode(out)?;
        let written = out.len() - start;
        out.resize(start + written.max(padded_len), 0);
        Ok(())
    }
}

/// STATUS of INTRODUCE_ACK, as an open newtype so unknown values round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntroduceAckStatus(pub u16);

impl IntroduceAckStatus {
    /// `[00 00]` Success: cell relayed to the service.
    pub const SUCCESS: Self = IntroduceAckStatus(0);
    /// `[00 01]` Failure: service ID not recognized.
    pub const SERVICE_ID_NOT_RECOGNIZED: Self = IntroduceAckStatus(1);
    /// `[00 02]` Bad message format.
    pub const BAD_MESSAGE_FORMAT: Self = IntroduceAckStatus(2);
    /// `[00 03]` Can't relay cell to service.
    pub const CANT_RELAY: Self = IntroduceAckStatus(3);
}

/// INTRODUCE_ACK (relay command 40), sent by an intro point to the client in reply to
/// INTRODUCE1 (rend-spec-v3 §3.2.2). Only a client's introduction circuit accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroduceAck {
    /// STATUS.
    pub status: IntroduceAckStatus,
    /// Extensions; none are defined yet.
    pub extensions: Extensions,
}

impl IntroduceAck {
    /// Parses a message body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let status = IntroduceAckStatus(r.u16()?);
        let extensions = Extensions::decode(&mut r)?;
        r.should_be_exhausted()?;
        Ok(IntroduceAck { status, extensions })
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put_u16(self.status.0);
        self.extensions.encode(out)
    }
}

/// ESTABLISH_RENDEZVOUS (relay command 33), sent by a client to the relay it picked as
/// rendezvous point (rend-spec-v3 §4.1). Only a relay (as rendezvous point) accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstablishRendezvous {
    /// RENDEZVOUS_COOKIE.
    pub cookie: RendCookie,
}

impl EstablishRendezvous {
    /// Parses a message body. Trailing bytes are ignored: "Rendezvous points MUST ignore any
    /// extra bytes in an ESTABLISH_RENDEZVOUS cell."
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        Ok(EstablishRendezvous {
            cookie: RendCookie(r.take_array()?),
        })
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(self.cookie.as_bytes());
        Ok(())
    }
}

/// RENDEZVOUS_ESTABLISHED (relay command 39), the rendezvous point's empty reply to
/// ESTABLISH_RENDEZVOUS (rend-spec-v3 §4.1). Only a client's rendezvous circuit accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RendezvousEstablished;

impl RendezvousEstablished {
    /// Parses a message body; "Clients MUST ignore any extra bytes", so any body is accepted.
    pub fn decode(_body: &[u8]) -> Result<Self, CodecError> {
        Ok(RendezvousEstablished)
    }

    /// Writes the (empty) message body.
    pub fn encode(&self, _out: &mut Vec<u8>) -> Result<(), CodecError> {
        Ok(())
    }
}

/// HANDSHAKE_INFO of the hs-ntor handshake (rend-spec-v3 §3.3.2): the service's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// SERVER_PK: the service's ephemeral key Y.
    pub server_pk: [u8; 32],
    /// AUTH: AUTH_INPUT_MAC.
    pub auth: [u8; MAC_LEN],
}

impl HandshakeInfo {
    /// Encoded length.
    pub const LEN: usize = 32 + MAC_LEN;

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(HandshakeInfo {
            server_pk: r.take_array()?,
            auth: r.take_array()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.put(&self.server_pk);
        out.put(&self.auth);
    }
}

/// RENDEZVOUS1 (relay command 36), sent by the service to the client's rendezvous point
/// (rend-spec-v3 §4.2). Only a relay (as rendezvous point) accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous1 {
    /// RENDEZVOUS_COOKIE from the INTRODUCE2 plaintext.
    pub cookie: RendCookie,
    /// HANDSHAKE_INFO.
    pub handshake_info: HandshakeInfo,
    /// Bytes after HANDSHAKE_INFO (older services padded the body to 168 bytes); forwarded
    /// unchanged into RENDEZVOUS2.
    pub padding: Vec<u8>,
}

impl Rendezvous1 {
    /// Parses a message body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let cookie = RendCookie(r.take_array()?);
        let handshake_info = HandshakeInfo::decode(&mut r)?;
        Ok(Rendezvous1 {
            cookie,
            handshake_info,
            padding: r.take_rest().to_vec(),
        })
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.put(self.cookie.as_bytes());
        self.handshake_info.encode(out);
        out.put(&self.padding);
        Ok(())
    }

    /// The RENDEZVOUS2 the rendezvous point sends the client: everything after the cookie.
    pub fn into_rendezvous2(self) -> Rendezvous2 {
        Rendezvous2 {
            handshake_info: self.handshake_info,
            padding: self.padding,
        }
    }
}

/// RENDEZVOUS2 (relay command 37), relayed by the rendezvous point to the client
/// (rend-spec-v3 §4.2). Only a client's rendezvous circuit accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous2 {
    /// HANDSHAKE_INFO.
    pub handshake_info: HandshakeInfo,
    /// Bytes after HANDSHAKE_INFO, ignored by the client.
    pub padding: Vec<u8>,
}

impl Rendezvous2 {
    /// Parses a message body.
    pub fn decode(body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let handshake_info = HandshakeInfo::decode(&mut r)?;
        Ok(Rendezvous2 {
            handshake_info,
            padding: r.take_rest().to_vec(),
        })
    }

    /// Writes the message body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.handshake_info.encode(out);
        out.put(&self.padding);
        Ok(())
    }
}

/// Fuzz entry point: the first byte selects a decoder, the rest is its input. Whatever decodes
/// must re-encode, and the re-encoding must decode to the same value; any other outcome panics
/// (which is what the fuzzer looks for). Never panics on bytes the decoders handle correctly.
pub fn fuzz_decode(data: &[u8]) {
    /// decode → encode → decode must be a fixed point.
    fn check<T: PartialEq + std::fmt::Debug>(
        input: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
        encode: impl Fn(&T, &mut Vec<u8>) -> Result<(), CodecError>,
    ) {
        if let Ok(v) = decode(input) {
            let mut out = Vec::new();
            assert!(encode(&v, &mut out).is_ok(), "decoded value must re-encode");
            assert_eq!(
                decode(&out).ok().as_ref(),
                Some(&v),
                "re-encoding changed it"
            );
        }
    }
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    match selector % 13 {
        0 => {
            check(input, EstablishIntro::decode, EstablishIntro::encode);
            if let Ok(m) = EstablishIntro::decode(input) {
                let _ = m.verify(b"fuzz KH");
            }
        }
        1 => check(input, IntroEstablished::decode, IntroEstablished::encode),
        2 => check(input, Introduce1::decode, Introduce1::encode),
        3 => check(input, Introduce2::decode, Introduce2::encode),
        4 => check(
            input,
            IntroduceEncrypted::decode,
            IntroduceEncrypted::encode,
        ),
        5 => check(
            input,
            IntroducePlaintext::decode,
            IntroducePlaintext::encode,
        ),
        6 => check(input, IntroduceAck::decode, IntroduceAck::encode),
        7 => check(
            input,
            EstablishRendezvous::decode,
            EstablishRendezvous::encode,
        ),
        8 => check(
            input,
            RendezvousEstablished::decode,
            RendezvousEstablished::encode,
        ),
        9 => check(input, Rendezvous1::decode, Rendezvous1::encode),
        10 => check(input, Rendezvous2::decode, Rendezvous2::encode),
        11 => {
            check(input, DosParams::decode, DosParams::encode);
            if let Ok(p) = DosParams::decode(input) {
                let _ = p.validate();
            }
        }
        _ => {
            let mut r = Reader::new(input);
            if let Ok(e) = Extensions::decode(&mut r) {
                let mut out = Vec::new();
                assert!(e.encode(&mut out).is_ok());
                assert_eq!(input.get(..out.len()), Some(&out[..]));
            }
        }
    }
}

/// Message bodies captured from C tor or built by hand from rend-spec-v3, shared by the tests
/// of this module, of [`crate::relay_msg`] and the fuzz corpus seeds.
#[cfg(test)]
pub(crate) mod test_vectors {
    /// ESTABLISH_INTRO generated by C tor in a Chutney network; its circuit's KH is
    /// [`EST_INTRO_C_TOR_KH`].
    pub(crate) const EST_INTRO_C_TOR: &str =
        "02 0020 75BC879BF697A9B12E1E10596FEF041127FECD11FDD80706AEAE35812EA74328
     00
     A3DF998D6749A9323035AD23DAA7F8607E4F87473A975E50A42DEC9C0E565C48
     0040
     5A7F5E53D55B307B5F7866AE14508DDA3412E2B3E4805176C25413CEDF204F7F
     53EAECADC0844472AA7BEC3BDCBA0A65F1FCDEF397B399F534F46E535B0E6301";
    /// The KH of the circuit [`EST_INTRO_C_TOR`] was sent on.
    pub(crate) const EST_INTRO_C_TOR_KH: &str = "250CCAF964B17B621A58CD82DF5DAFD060BA5F28";
    /// Arti's layout vector: DoS extension (rate 1, burst 2) with placeholder MAC and SIG.
    pub(crate) const EST_INTRO_DOS: &str =
        "02 0020 3333333333333333333333333333333333333333333333333333333333333333
         01 01 13 02 01 0000000000000001 02 0000000000000002
         0101010101010101010101010101010101010101010101010101010101010101
         0040 1515151515151515151515151515151515151515151515151515151515151515
              1515151515151515151515151515151515151515151515151515151515151515";

    /// INTRODUCE1 captured from C tor: v3, no extensions, 254 bytes of ENCRYPTED.
    pub(crate) const INTRO1_C_TOR: &str = "000000000000000000000000000000000000000002002011AAA1BA28353424061A63326C3BFF4FE4EC7EC24BB5EB740E9D167DEF103206001E99C1B9B0C24E6C63E9A182C33A8969DF94D08FD9FE98D82E21B262AE6CBC4E58971D6A38426C5D52519AB03377274AF74D2332C8FB599BFCBC5F2B02ECDAC4025EE24B63A824101E29EB9917B1C3A72E16FA2336DC81D0D483D31B9181F7CF628272FA7988301ADCE3B400880C25633718503B10C9F8909DFA50AEEDB90D7FD9D0090DBFAC4E61D527F97FD8C0A8BAB3DABF9A5E3C7FCD5FF843905F2C401743F5019B04A2F1427D3B2343A388846B7EACDD9FD46A24776D0DDDE3696A90EE36DC4732A95BFAFF871AEDE3BB5DD86047905B716148A27FF3C8A5B0F5282DD5430DA7E2A421D5274281EAC6C0EAE94EB17996EE81953FB700DD6D1DC4B7";

    /// A decrypted INTRODUCE2 plaintext: cookie, no extensions, an ntor onion key, three link
    /// specifiers and zero padding.
    pub(crate) const PLAINTEXT: &str = "1EFFEACE9BE629B357ADA359071A7912DB828A5B
         00
         01 0020 7D73D007977A08CD1ABAD50F6B836C718700D687E000728C357ABC7CE3C8334D
         03 00 06 7F000001138A
            02 14 E48664DBCCEF9650B5D0E7B60E6DE9BCED2FB91E
            03 20 3FF84AA4B21453D20106BD4EDDA919386BF67D541CAA78F38BE6A08C2B3D0C4F
         000000000000000000000000";

    /// A 168-byte RENDEZVOUS1 from C tor (padded as older services did).
    pub(crate) const RENDEZVOUS1_C_TOR: &str = "1757F14E8378746756B5F91D7898084F646DCF5E537657DE71774B44A3A9840BB3D881F24792B74758D67B7B95468537CF9C706992F76AA87E0AC278C3B75B4D747251F7C92CC2FB900249A316771D82B95F669A85C38AC0AD511D00661DA38B060BD297FCC6719EAD00C0301619E20B48B1F150FA42311511E5E683C34C8CD81273683190B018239554956BDB1B8AAE0951D2B5C32CF0EB2B4CC498FABE347DF1B6F273D0E976FE";
    /// A 148-byte RENDEZVOUS2 from C tor.
    pub(crate) const RENDEZVOUS2_C_TOR: &str = "2CBF819E67317EE501880FBE18515C440FB2F6AEA5D7B4349EFC478A714C237309C0FB63B35DC820513A0DEBED469B3607C06A2B7875B6394019C1081954AA1F77C141C7F4B9772D4026D3F2567CE4BAAC589E4DEACE285A33F12BEFF16FEF6120DBB2E0B1BCF78B2E765DB23464EABA3FC6C5126D551BAA32F7A179AB1BD888E0CB8F1E9CA0D8CE6583C144A551D564652829BA";
}

#[cfg(test)]
mod tests {
    //! Vectors: byte layouts from rend-spec-v3 §3-§4 and proposal 305; captured messages
    //! (generated by C tor, some in a Chutney network) from Arti's
    //! `crates/tor-cell/tests/testvec_relaymsg.rs`, used as data only.

    use super::test_vectors::*;
    use super::*;
    use crate::test_util::unhex;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use sha3::{Digest, Sha3_256};
    use std::net::Ipv4Addr;

    fn enc<T>(v: &T, f: impl Fn(&T, &mut Vec<u8>) -> Result<(), CodecError>) -> Vec<u8> {
        let mut out = Vec::new();
        f(v, &mut out).expect("encodes");
        out
    }

    #[test]
    fn mac_is_sha3_of_len_key_msg() {
        let mut h = Sha3_256::new();
        h.update([0, 0, 0, 0, 0, 0, 0, 3]);
        h.update(b"keymessage");
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(hs_mac(b"key", &[b"mes", b"sage"]), want);
    }

    #[test]
    fn establish_intro_layout_with_dos_extension() {
        let bytes = unhex(EST_INTRO_DOS);
        let m = EstablishIntro::decode(&bytes).expect("decodes");
        assert_eq!(m.auth_key().as_bytes(), &[0x33; 32]);
        assert_eq!(m.dos_params(), Some(&DosParams::new(Some(1), Some(2))));
        assert_eq!(m.handshake_auth(), &[1; 32]);
        assert_eq!(m.signature(), &[0x15; 64]);
        assert_eq!(enc(&m, EstablishIntro::encode), bytes);
        // The placeholder MAC is not MAC(KH, ...), whatever KH is.
        assert_eq!(m.verify(b"kh"), Err(EstablishIntroError::BadHandshakeAuth));
        // Proposal 305: 134 bytes without extensions; the DoS extension adds 21 (type, length
        // and a 19-byte body).
        assert_eq!(bytes.len(), 134 + 21);
    }

    #[test]
    fn establish_intro_with_unknown_extension_layout() {
        let bytes = unhex(
            "02 0020 3333333333333333333333333333333333333333333333333333333333333333
             02 01 13 02 01 0000000000000001 02 0000000000000002 02 01 00
             0101010101010101010101010101010101010101010101010101010101010101
             0040 1515151515151515151515151515151515151515151515151515151515151515
                  1515151515151515151515151515151515151515151515151515151515151515",
        );
        let m = EstablishIntro::decode(&bytes).expect("decodes");
        assert_eq!(
            m.extensions(),
            &[
                EstIntroExtension::DosParams(DosParams::new(Some(1), Some(2))),
                EstIntroExtension::Unrecognized {
                    ext_type: 2,
                    body: vec![0]
                },
            ]
        );
        assert_eq!(enc(&m, EstablishIntro::encode), bytes);
    }

    #[test]
    fn establish_intro_from_c_tor_verifies() {
        let bytes = unhex(EST_INTRO_C_TOR);
        let kh = unhex(EST_INTRO_C_TOR_KH);
        let m = EstablishIntro::decode(&bytes).expect("decodes");
        let key = m.verify(&kh).expect("C tor's message verifies");
        assert_eq!(&key.to_bytes(), m.auth_key().as_bytes());
        assert_eq!(
            m.verify(&kh[..19]),
            Err(EstablishIntroError::BadHandshakeAuth)
        );
        assert_eq!(enc(&m, EstablishIntro::encode), bytes);

        // Another C tor message (KH unknown): still a well-formed 134-byte v3 body.
        let other = unhex(
            "0200200450EFF847E40C180888F5EB9179F9B59F043385834B4C373C328E12FDFF46B400546514E3BA58E95409828A235B6390B3729B4CB8E8607024081C860E1A0D40DC0040AF031A801FE9822853D4674C5061B0352F7E2487415E25E25554C0DBF88146BCA9EBD2BD62338ADF3CC217658110EF38DB505C77B2FB38A1C0AF3C22C948F604",
        );
        let m = EstablishIntro::decode(&other).expect("decodes");
        assert!(m.extensions().is_empty());
        assert_eq!(enc(&m, EstablishIntro::encode), other);
    }

    #[test]
    fn establish_intro_rejects_bad_framing() {
        let good = unhex(EST_INTRO_DOS);
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            EstablishIntro::decode(&v)
        };
        // Legacy RSA key types.
        assert_eq!(with(0, 0), Err(CodecError::BadValue("AUTH_KEY_TYPE")));
        assert_eq!(with(0, 1), Err(CodecError::BadValue("AUTH_KEY_TYPE")));
        assert_eq!(with(2, 0x21), Err(CodecError::BadValue("AUTH_KEY_LEN")));
        // SIG_LEN sits after the 32-byte key, 22 bytes of extensions and the MAC.
        let sig_len_at = 3 + 32 + 22 + 32;
        assert_eq!(
            with(sig_len_at + 1, 0x3f),
            Err(CodecError::BadValue("SIG_LEN"))
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            EstablishIntro::decode(&long),
            Err(CodecError::TrailingBytes(1))
        );
        assert_eq!(
            EstablishIntro::decode(&good[..good.len() - 1]),
            Err(CodecError::Truncated)
        );
        assert_eq!(EstablishIntro::decode(&[]), Err(CodecError::Truncated));
    }

    fn test_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn establish_intro_sign_encode_decode_verify() {
        let sk = test_key();
        let kh = [0x42; 20];
        let exts = vec![EstIntroExtension::DosParams(DosParams::new(
            Some(25),
            Some(200),
        ))];
        let m = EstablishIntro::sign(&kh, &sk, &sk.verifying_key(), exts).expect("signs");
        let bytes = enc(&m, EstablishIntro::encode);
        assert_eq!(bytes.len(), 155);
        let d = EstablishIntro::decode(&bytes).expect("decodes");
        assert_eq!(d, m);
        assert_eq!(d.verify(&kh), Ok(sk.verifying_key()));
        assert_eq!(
            d.verify(&[0x43; 20]),
            Err(EstablishIntroError::BadHandshakeAuth)
        );
        assert_eq!(d.dos_params().map(DosParams::validate), Some(Ok(())));
    }

    #[test]
    fn establish_intro_tampering_fails_with_the_right_error() {
        let sk = test_key();
        let kh = b"circuit KH material";
        let exts = vec![
            EstIntroExtension::DosParams(DosParams::new(Some(10), Some(20))),
            EstIntroExtension::Unrecognized {
                ext_type: 0x99,
                body: b"future".to_vec(),
            },
        ];
        let m = EstablishIntro::sign(kh, &sk, &sk.verifying_key(), exts).expect("signs");
        let bytes = enc(&m, EstablishIntro::encode);
        let mac_end = bytes.len() - 2 - 64;
        let exts_end = mac_end - 32;
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let got = EstablishIntro::decode(&t).map(|m| m.verify(kh));
            if i < 3 {
                // AUTH_KEY_TYPE / AUTH_KEY_LEN.
                assert!(matches!(got, Err(CodecError::BadValue(_))), "byte {i}");
            } else if i < 35 {
                assert!(
                    matches!(
                        got,
                        Ok(Err(
                            EstablishIntroError::BadAuthKey | EstablishIntroError::BadHandshakeAuth
                        ))
                    ),
                    "byte {i}: {got:?}"
                );
            } else if i < exts_end {
                // A flipped length may break the framing; otherwise the MAC catches it.
                assert!(
                    matches!(got, Err(_) | Ok(Err(EstablishIntroError::BadHandshakeAuth))),
                    "byte {i}: {got:?}"
                );
            } else if i < mac_end {
                assert_eq!(
                    got,
                    Ok(Err(EstablishIntroError::BadHandshakeAuth)),
                    "byte {i}"
                );
            } else if i < mac_end + 2 {
                assert_eq!(got, Err(CodecError::BadValue("SIG_LEN")), "byte {i}");
            } else {
                assert_eq!(got, Ok(Err(EstablishIntroError::BadSignature)), "byte {i}");
            }
        }
        // A correct MAC under a different circuit's KH, re-signed by another key, still
        // fails: the signature must come from AUTH_KEY.
        let other = SigningKey::from_bytes(&[8; 32]);
        let forged = EstablishIntro::sign(kh, &other, &sk.verifying_key(), vec![]).expect("signs");
        assert_eq!(forged.verify(kh), Err(EstablishIntroError::BadSignature));
    }

    #[test]
    fn unknown_and_malformed_extensions_survive_and_verify() {
        let sk = test_key();
        let kh = [9u8; 32];
        let exts = vec![
            EstIntroExtension::Unrecognized {
                ext_type: 0xfe,
                body: vec![1, 2, 3],
            },
            // A DoS extension with a truncated parameter, kept raw as C tor ignores it.
            EstIntroExtension::Unrecognized {
                ext_type: DosParams::EXT_TYPE,
                body: vec![1, 1, 0, 0],
            },
            EstIntroExtension::DosParams(DosParams::new(Some(5), None)),
        ];
        let m = EstablishIntro::sign(&kh, &sk, &sk.verifying_key(), exts.clone()).expect("signs");
        let bytes = enc(&m, EstablishIntro::encode);
        let d = EstablishIntro::decode(&bytes).expect("decodes");
        assert_eq!(d.extensions(), &exts[..]);
        assert_eq!(d.dos_params(), Some(&DosParams::new(Some(5), None)));
        assert!(d.verify(&kh).is_ok());
        assert_eq!(enc(&d, EstablishIntro::encode), bytes);
    }

    #[test]
    fn dos_params_layout_and_validation() {
        let p = DosParams::new(Some(1), Some(2));
        assert_eq!(
            enc(&p, DosParams::encode),
            unhex("02 01 0000000000000001 02 0000000000000002")
        );
        assert_eq!(p.validate(), Ok(()));
        let max = DosParams::VALUE_MAX;
        assert_eq!(DosParams::new(Some(max), Some(max)).validate(), Ok(()));
        assert_eq!(
            DosParams::new(Some(max + 1), Some(max)).validate(),
            Err(DosParamsError::OutOfRange {
                param_type: 1,
                value: max + 1
            })
        );
        assert_eq!(
            DosParams::new(Some(1), Some(u64::MAX)).validate(),
            Err(DosParamsError::OutOfRange {
                param_type: 2,
                value: u64::MAX
            })
        );
        assert_eq!(
            DosParams::new(Some(10), Some(9)).validate(),
            Err(DosParamsError::BurstBelowRate { rate: 10, burst: 9 })
        );
        // A zero disables the defence, so ordering does not matter then.
        assert_eq!(DosParams::new(Some(10), Some(0)).validate(), Ok(()));
        assert_eq!(DosParams::new(Some(0), Some(5)).validate(), Ok(()));
        // Unknown parameters are kept and not range-checked.
        let body = unhex("03 01 0000000000000005 07 FFFFFFFFFFFFFFFF 02 0000000000000006");
        let p = DosParams::decode(&body).expect("decodes");
        assert_eq!(p.params[1].param_type, DosParamType(7));
        assert_eq!((p.rate_per_sec(), p.burst_per_sec()), (Some(5), Some(6)));
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(enc(&p, DosParams::encode), body);
        assert_eq!(DosParams::decode(&body[..27]), Err(CodecError::Truncated));
        assert_eq!(
            DosParams::decode(&[0, 0]),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn introduce1_from_c_tor() {
        let bytes = unhex(INTRO1_C_TOR);
        let m = Introduce1::decode(&bytes).expect("decodes");
        assert_eq!(m.0.auth_key().as_bytes()[..4], [0x11, 0xAA, 0xA1, 0xBA][..]);
        assert!(m.0.extensions().0.is_empty());
        assert_eq!(m.0.header(), &bytes[..56]);
        assert_eq!(m.0.encrypted(), &bytes[56..]);
        assert_eq!(enc(&m, Introduce1::encode), bytes);
        let enc_section = IntroduceEncrypted::decode(m.0.encrypted()).expect("framing");
        assert_eq!(enc_section.client_pk[..], bytes[56..88]);
        assert_eq!(enc_section.mac[..], bytes[bytes.len() - 32..]);
        assert_eq!(enc_section.encrypted_data.len(), 254 - 64);
        assert_eq!(
            enc(&enc_section, IntroduceEncrypted::encode),
            m.0.encrypted()
        );
        // The intro point relays exactly the same bytes.
        let i2 = m.into_introduce2();
        assert_eq!(enc(&i2, Introduce2::encode), bytes);
        assert_eq!(Introduce2::decode(&bytes), Ok(i2));
    }

    #[test]
    fn introduce_layout_and_errors() {
        let key = Ed25519Identity::from_bytes([0x44; 32]);
        let exts = Extensions(vec![
            Extension {
                ext_type: 2,
                body: vec![1],
            },
            Extension {
                ext_type: 0,
                body: vec![],
            },
        ]);
        let mut b = IntroduceBody::new(key, exts).expect("encodes");
        b.set_encrypted(vec![1, 9, 8, 4]);
        let want = unhex(&format!(
            "{} 02 0020 {} 02 02 01 01 00 00 01090804",
            "00".repeat(20),
            "44".repeat(32)
        ));
        let m = Introduce1(b);
        assert_eq!(enc(&m, Introduce1::encode), want);
        assert_eq!(m.0.header(), &want[..want.len() - 4]);
        assert_eq!(Introduce1::decode(&want), Ok(m));

        let mut legacy = want.clone();
        legacy[0] = 0x10;
        assert_eq!(
            Introduce1::decode(&legacy),
            Err(CodecError::BadValue("LEGACY_KEY_ID"))
        );
        // Arti's sample with a 4-byte auth key: not an ed25519 key, so refused.
        let short_key = unhex(&format!("{} 02 0004 00010203 00 01090804", "00".repeat(20)));
        assert_eq!(
            Introduce2::decode(&short_key),
            Err(CodecError::BadValue("AUTH_KEY_LEN"))
        );
        let mut rsa = want.clone();
        rsa[20] = 1;
        assert_eq!(
            Introduce1::decode(&rsa),
            Err(CodecError::BadValue("AUTH_KEY_TYPE"))
        );
        assert_eq!(Introduce1::decode(&want[..55]), Err(CodecError::Truncated));
        assert_eq!(
            IntroduceEncrypted::decode(&[0; 63]),
            Err(CodecError::Truncated)
        );
    }

    /// The plaintext a (modified) Tor client sent in a Chutney network.
    #[test]
    fn introduce_plaintext_vector() {
        let bytes = unhex(PLAINTEXT);
        let p = IntroducePlaintext::decode(&bytes).expect("decodes");
        let want = IntroducePlaintext {
            rendezvous_cookie: RendCookie::from_bytes(
                unhex("1EFFEACE9BE629B357ADA359071A7912DB828A5B")
                    .try_into()
                    .expect("20"),
            ),
            extensions: Extensions::new(),
            onion_key: OnionKey::Ntor(
                unhex("7D73D007977A08CD1ABAD50F6B836C718700D687E000728C357ABC7CE3C8334D")
                    .try_into()
                    .expect("32"),
            ),
            link_specifiers: vec![
                LinkSpec::Ipv4(Ipv4Addr::new(127, 0, 0, 1), 5002),
                LinkSpec::RsaId(crate::ids::RsaIdentity::from_bytes(
                    unhex("E48664DBCCEF9650B5D0E7B60E6DE9BCED2FB91E")
                        .try_into()
                        .expect("20"),
                )),
                LinkSpec::Ed25519Id(Ed25519Identity::from_bytes(
                    unhex("3FF84AA4B21453D20106BD4EDDA919386BF67D541CAA78F38BE6A08C2B3D0C4F")
                        .try_into()
                        .expect("32"),
                )),
            ],
        };
        assert_eq!(p, want);
        // Re-encoding gives the bytes up to the 12 bytes of padding, and padding restores them.
        let plain = enc(&p, IntroducePlaintext::encode);
        assert_eq!(plain, bytes[..bytes.len() - 12]);
        let mut padded = Vec::new();
        p.encode_padded(&mut padded, bytes.len()).expect("encodes");
        assert_eq!(padded, bytes);
        let mut unpadded = Vec::new();
        p.encode_padded(&mut unpadded, 3).expect("encodes");
        assert_eq!(unpadded, plain);
    }

    #[test]
    fn introduce_plaintext_errors_and_unknown_key_type() {
        let bytes = unhex(PLAINTEXT);
        let mut bad_len = bytes.clone();
        bad_len[23] = 0x1f;
        assert_eq!(
            IntroducePlaintext::decode(&bad_len),
            Err(CodecError::BadValue("ONION_KEY_LEN"))
        );
        let mut other = bytes.clone();
        other[21] = 0x02;
        let p = IntroducePlaintext::decode(&other).expect("decodes");
        assert!(
            matches!(p.onion_key, OnionKey::Unrecognized { key_type: 2, ref key } if key.len() == 32)
        );
        assert_eq!(
            IntroducePlaintext::decode(&bytes[..60]),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn introduce_ack_layout() {
        let ok = IntroduceAck {
            status: IntroduceAckStatus::SUCCESS,
            extensions: Extensions::new(),
        };
        assert_eq!(enc(&ok, IntroduceAck::encode), unhex("0000 00"));
        assert_eq!(IntroduceAck::decode(&unhex("000000")), Ok(ok));
        let m = IntroduceAck::decode(&unhex("0003 01 05 02 abcd")).expect("decodes");
        assert_eq!(m.status, IntroduceAckStatus::CANT_RELAY);
        assert_eq!(m.extensions.get(5), Some(&[0xab, 0xcd][..]));
        let unknown = IntroduceAck::decode(&unhex("1234 00")).expect("open status");
        assert_eq!(unknown.status, IntroduceAckStatus(0x1234));
        assert_eq!(enc(&unknown, IntroduceAck::encode), unhex("1234 00"));
        // Pre-v3 relays acked with an empty body; v3 requires STATUS.
        assert_eq!(IntroduceAck::decode(&[]), Err(CodecError::Truncated));
        assert_eq!(
            IntroduceAck::decode(&unhex("0000 00 00")),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn intro_established_layout() {
        let m = IntroEstablished::default();
        assert_eq!(enc(&m, IntroEstablished::encode), vec![0]);
        assert_eq!(IntroEstablished::decode(&[0]), Ok(m.clone()));
        assert_eq!(IntroEstablished::decode(&[]), Ok(m));
        let e = IntroEstablished::decode(&unhex("02 01 00 01 01 ff")).expect("decodes");
        assert_eq!(e.extensions.0.len(), 2);
        assert_eq!(e.extensions.get(1), Some(&[][..]));
        assert_eq!(
            enc(&e, IntroEstablished::encode),
            unhex("02 01 00 01 01 ff")
        );
        assert_eq!(
            IntroEstablished::decode(&unhex("01 01 02 ff")),
            Err(CodecError::Truncated)
        );
        assert_eq!(
            IntroEstablished::decode(&unhex("00 00")),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn extension_limits() {
        let too_long = Extensions(vec![Extension {
            ext_type: 1,
            body: vec![0; 256],
        }]);
        assert_eq!(
            too_long.encode(&mut Vec::new()),
            Err(CodecError::TooLong {
                what: "EXT_FIELD",
                len: 256
            })
        );
        let too_many = Extensions(vec![
            Extension {
                ext_type: 1,
                body: vec![]
            };
            256
        ]);
        assert_eq!(
            too_many.encode(&mut Vec::new()),
            Err(CodecError::TooLong {
                what: "N_EXTENSIONS",
                len: 256
            })
        );
        // Later occurrences of a type are ignored.
        let dup = Extensions(vec![
            Extension {
                ext_type: 3,
                body: vec![1],
            },
            Extension {
                ext_type: 3,
                body: vec![2],
            },
        ]);
        assert_eq!(dup.get(3), Some(&[1][..]));
        assert_eq!(dup.get(4), None);
    }

    #[test]
    fn rendezvous_layouts() {
        let cookie = unhex("4AA2BAF815CEBB4B922B5BF6F545AEE0DDBE1254");
        let m = EstablishRendezvous::decode(&cookie).expect("decodes");
        assert_eq!(m.cookie.as_bytes()[..], cookie[..]);
        assert_eq!(enc(&m, EstablishRendezvous::encode), cookie);
        // Extra bytes MUST be ignored.
        let mut longer = cookie.clone();
        longer.extend_from_slice(b"junk");
        assert_eq!(EstablishRendezvous::decode(&longer), Ok(m));
        assert_eq!(
            EstablishRendezvous::decode(&cookie[..19]),
            Err(CodecError::Truncated)
        );

        assert_eq!(
            RendezvousEstablished::decode(&[]),
            Ok(RendezvousEstablished)
        );
        assert_eq!(
            RendezvousEstablished::decode(&[1, 2]),
            Ok(RendezvousEstablished)
        );
        assert!(enc(&RendezvousEstablished, RendezvousEstablished::encode).is_empty());
    }

    #[test]
    fn rendezvous1_from_c_tor_is_forwarded_verbatim() {
        // A 168-byte RENDEZVOUS1 (padded as older services did) and a 148-byte RENDEZVOUS2.
        let r1 = unhex(RENDEZVOUS1_C_TOR);
        let m = Rendezvous1::decode(&r1).expect("decodes");
        assert_eq!(m.cookie.as_bytes()[..], r1[..20]);
        assert_eq!(m.handshake_info.server_pk[..], r1[20..52]);
        assert_eq!(m.handshake_info.auth[..], r1[52..84]);
        assert_eq!(m.padding.len(), 168 - 84);
        assert_eq!(enc(&m, Rendezvous1::encode), r1);
        let r2 = m.into_rendezvous2();
        assert_eq!(enc(&r2, Rendezvous2::encode), r1[20..]);

        let r2b = unhex(RENDEZVOUS2_C_TOR);
        let m2 = Rendezvous2::decode(&r2b).expect("decodes");
        assert_eq!(m2.handshake_info.server_pk[..], r2b[..32]);
        assert_eq!(enc(&m2, Rendezvous2::encode), r2b);
        assert_eq!(Rendezvous2::decode(&r2b[..63]), Err(CodecError::Truncated));
        assert_eq!(Rendezvous1::decode(&r1[..83]), Err(CodecError::Truncated));
    }

    #[test]
    fn fuzz_entry_handles_vectors() {
        for sel in 0u8..13 {
            fuzz_decode(&[sel]);
            for v in [EST_INTRO_DOS, INTRO1_C_TOR, PLAINTEXT] {
                let mut d = vec![sel];
                d.extend(unhex(v));
                fuzz_decode(&d);
            }
        }
        fuzz_decode(&[]);
    }

    // ---- property tests ----

    fn arb_extensions() -> impl Strategy<Value = Extensions> {
        crate::ext_list::tests::arb_extensions(40, 5)
    }

    fn arb_est_intro_ext() -> impl Strategy<Value = EstIntroExtension> {
        prop_oneof![
            prop::collection::vec((any::<u8>(), any::<u64>()), 0..5).prop_map(|ps| {
                EstIntroExtension::DosParams(DosParams {
                    params: ps
                        .into_iter()
                        .map(|(t, value)| DosParam {
                            param_type: DosParamType(t),
                            value,
                        })
                        .collect(),
                })
            }),
            // Type 1 bodies that parse would come back as DosParams, so keep them out.
            (2u8..=255, prop::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(ext_type, body)| EstIntroExtension::Unrecognized { ext_type, body }),
        ]
    }

    fn arb_link_spec() -> impl Strategy<Value = LinkSpec> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| LinkSpec::Ipv4(a.into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| LinkSpec::Ipv6(a.into(), p)),
            any::<[u8; 20]>().prop_map(|b| LinkSpec::RsaId(crate::ids::RsaIdentity::from_bytes(b))),
            any::<[u8; 32]>().prop_map(|b| LinkSpec::Ed25519Id(Ed25519Identity::from_bytes(b))),
            (4u8..=255, prop::collection::vec(any::<u8>(), 0..30))
                .prop_map(|(ls_type, body)| LinkSpec::Unrecognized { ls_type, body }),
        ]
    }

    fn arb_onion_key() -> impl Strategy<Value = OnionKey> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(OnionKey::Ntor),
            (
                any::<u8>().prop_filter("not ntor", |t| *t != OnionKey::NTOR),
                prop::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(key_type, key)| OnionKey::Unrecognized { key_type, key }),
        ]
    }

    proptest! {
        #[test]
        fn no_decoder_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            for sel in 0u8..13 {
                let mut d = vec![sel];
                d.extend_from_slice(&data);
                fuzz_decode(&d);
            }
        }

        #[test]
        fn establish_intro_round_trips_and_verifies(
            seed in any::<[u8; 32]>(),
            kh in prop::collection::vec(any::<u8>(), 0..64),
            exts in prop::collection::vec(arb_est_intro_ext(), 0..4),
        ) {
            let sk = SigningKey::from_bytes(&seed);
            let m = EstablishIntro::sign(&kh, &sk, &sk.verifying_key(), exts.clone())
                .expect("signs");
            let bytes = enc(&m, EstablishIntro::encode);
            let d = EstablishIntro::decode(&bytes).expect("decodes");
            prop_assert_eq!(d.extensions(), &exts[..]);
            prop_assert_eq!(&d, &m);
            prop_assert_eq!(d.verify(&kh), Ok(sk.verifying_key()));
        }

        #[test]
        fn introduce_round_trips(
            key in any::<[u8; 32]>(),
            exts in arb_extensions(),
            encrypted in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut b = IntroduceBody::new(Ed25519Identity::from_bytes(key), exts.clone())
                .expect("encodes");
            b.set_encrypted(encrypted.clone());
            let m = Introduce2(b);
            let bytes = enc(&m, Introduce2::encode);
            let d = Introduce2::decode(&bytes).expect("decodes");
            prop_assert_eq!(d.0.extensions(), &exts);
            prop_assert_eq!(d.0.encrypted(), &encrypted[..]);
            prop_assert_eq!(&d, &m);
            prop_assert_eq!(Introduce1::decode(&bytes).map(|m| m.0), Ok(d.0));
        }

        #[test]
        fn introduce_encrypted_round_trips(
            client_pk in any::<[u8; 32]>(),
            encrypted_data in prop::collection::vec(any::<u8>(), 0..300),
            mac in any::<[u8; 32]>(),
        ) {
            let m = IntroduceEncrypted { client_pk, encrypted_data, mac };
            let bytes = enc(&m, IntroduceEncrypted::encode);
            prop_assert_eq!(IntroduceEncrypted::decode(&bytes), Ok(m));
        }

        #[test]
        fn introduce_plaintext_round_trips(
            cookie in any::<[u8; 20]>(),
            extensions in arb_extensions(),
            onion_key in arb_onion_key(),
            link_specifiers in prop::collection::vec(arb_link_spec(), 0..6),
            pad in 0usize..600,
        ) {
            let m = IntroducePlaintext {
                rendezvous_cookie: RendCookie::from_bytes(cookie),
                extensions,
                onion_key,
                link_specifiers,
            };
            let mut bytes = Vec::new();
            m.encode_padded(&mut bytes, pad).expect("encodes");
            prop_assert!(bytes.len() >= pad);
            prop_assert_eq!(IntroducePlaintext::decode(&bytes), Ok(m));
        }

        #[test]
        fn small_messages_round_trip(
            status in any::<u16>(),
            extensions in arb_extensions(),
            cookie in any::<[u8; 20]>(),
            server_pk in any::<[u8; 32]>(),
            auth in any::<[u8; 32]>(),
            padding in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let ack = IntroduceAck { status: IntroduceAckStatus(status), extensions: extensions.clone() };
            prop_assert_eq!(IntroduceAck::decode(&enc(&ack, IntroduceAck::encode)), Ok(ack));
            let est = IntroEstablished { extensions };
            prop_assert_eq!(IntroEstablished::decode(&enc(&est, IntroEstablished::encode)), Ok(est));
            let er = EstablishRendezvous { cookie: RendCookie::from_bytes(cookie) };
            prop_assert_eq!(EstablishRendezvous::decode(&enc(&er, EstablishRendezvous::encode)), Ok(er));
            let r1 = Rendezvous1 {
                cookie: RendCookie::from_bytes(cookie),
                handshake_info: HandshakeInfo { server_pk, auth },
                padding,
            };
            let b1 = enc(&r1, Rendezvous1::encode);
            prop_assert_eq!(Rendezvous1::decode(&b1), Ok(r1.clone()));
            let r2 = r1.into_rendezvous2();
            let b2 = enc(&r2, Rendezvous2::encode);
            prop_assert_eq!(&b2[..], &b1[20..]);
            prop_assert_eq!(Rendezvous2::decode(&b2), Ok(r2));
        }

        #[test]
        fn dos_params_round_trip(ps in prop::collection::vec((any::<u8>(), any::<u64>()), 0..28)) {
            let p = DosParams {
                params: ps.into_iter().map(|(t, value)| DosParam { param_type: DosParamType(t), value }).collect(),
            };
            prop_assert_eq!(DosParams::decode(&enc(&p, DosParams::encode)), Ok(p));
        }
    }
}
