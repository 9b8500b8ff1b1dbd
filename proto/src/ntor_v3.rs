//! The ntor v3 handshake, CREATE2 handshake type 3 (proposal 332, merged into
//! [tor-spec "The ntor-v3 handshake"](https://spec.torproject.org/tor-spec/create-created-cells.html#ntor-v3)),
//! and the extension list carried in its encrypted messages.
//!
//! ```text
//! client -> relay:  NODEID ID (32) | KEYID B (32) | CLIENT_PK X (32) | MSG (len CM) | MAC (32)
//! relay -> client:  Y (32) | AUTH (32) | MSG (len SM)
//! ```
//!
//! Instantiation (proposal 332 §A.1), with `ENCAP(s) = htonll(len(s)) | s`:
//!
//! ```text
//! H(s, t)        = SHA3_256(ENCAP(t) | s)
//! MAC(k, msg, t) = SHA3_256(ENCAP(t) | ENCAP(k) | msg)
//! KDF(s, t)      = SHAKE_256(ENCAP(t) | s)
//! ENC(k, m)      = AES_256_CTR(k, m), zero IV
//! ```
//!
//! For circuit extension the verification string VER is [`CIRCUIT_EXTEND_VERIFICATION`]
//! (`"circuit extend"`, what C tor uses), the identity is the relay's Ed25519 identity, and the
//! circuit keys are the tor1 layout of [`crate::kdf`] taken from KDF_final's stream after the
//! 32-byte ENC_KEY.

use cipher::{KeyIvInit, StreamCipher};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use thiserror::Error;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::{CodecError, Reader, Writer};
use crate::ext_list::{decode_list, encode_list, ExtensionField};
use crate::ids::Ed25519Identity;
use crate::kdf::{encap_len, sha3_256, shake256, HandshakeError, KeyGenerator};
use crate::keys::NtorOnionKeypair;
use crate::ntor::checked_dh;

const PROTOID: &[u8] = b"ntor3-curve25519-sha3_256-1";
const T_MSGKDF: &[u8] = b"ntor3-curve25519-sha3_256-1:kdf_phase1";
const T_MSGMAC: &[u8] = b"ntor3-curve25519-sha3_256-1:msg_mac";
const T_KEY_SEED: &[u8] = b"ntor3-curve25519-sha3_256-1:key_seed";
const T_VERIFY: &[u8] = b"ntor3-curve25519-sha3_256-1:verify";
const T_FINAL: &[u8] = b"ntor3-curve25519-sha3_256-1:kdf_final";
const T_AUTH: &[u8] = b"ntor3-curve25519-sha3_256-1:auth_final";

/// The verification string both sides use when ntor v3 extends a circuit.
pub const CIRCUIT_EXTEND_VERIFICATION: &[u8] = b"circuit extend";

/// ENC_KEY_LEN = MAC_KEY_LEN = DIGEST_LEN = MAC_LEN = PUB_KEY_LEN = ID_LEN = 32.
const LEN: usize = 32;

/// Length of a client onionskin with an empty message.
pub const CLIENT_HANDSHAKE_OVERHEAD: usize = 4 * LEN;
/// Length of a relay reply with an empty message.
pub const SERVER_HANDSHAKE_OVERHEAD: usize = 2 * LEN;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// What a client knows about the relay it extends to.
#[derive(Debug, Clone)]
pub struct NtorV3PublicKey {
    /// The relay's Ed25519 identity (ID).
    pub id: Ed25519Identity,
    /// The relay's ntor onion key (B).
    pub pk: PublicKey,
}

/// A relay's ntor v3 secrets: its identity and its current and (optionally) previous onion key.
///
/// ntor v3 uses the same curve25519 onion keys as ntor.
#[derive(Debug, Clone)]
pub struct NtorV3ServerKeys {
    /// Our Ed25519 identity.
    pub id: Ed25519Identity,
    /// The onion key in our current descriptor.
    pub current: NtorOnionKeypair,
    /// The onion key we rotated away from, still accepted for a grace period.
    pub previous: Option<NtorOnionKeypair>,
}

impl NtorV3ServerKeys {
    fn find(&self, key_id: &[u8; 32]) -> Option<&NtorOnionKeypair> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.public().as_bytes() == key_id)
    }
}

/// A parsed (still encrypted) client onionskin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtorV3ClientHandshake<'a> {
    /// NODEID: the relay identity the client meant.
    pub node_id: [u8; 32],
    /// KEYID: the onion key B the client used.
    pub key_id: [u8; 32],
    /// CLIENT_PK (X).
    pub client_pk: [u8; 32],
    /// The encrypted client message.
    pub encrypted_msg: &'a [u8],
    /// MAC over ID | B | X | encrypted_msg.
    pub mac: [u8; 32],
}

impl NtorV3ClientHandshake<'_> {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put(&self.node_id);
        out.put(&self.key_id);
        out.put(&self.client_pk);
        out.put(self.encrypted_msg);
        out.put(&self.mac);
    }
}

/// Parses a client onionskin (CREATE2 HDATA). Fuzz entry point for the relay side.
pub fn parse_client_handshake(msg: &[u8]) -> Result<NtorV3ClientHandshake<'_>, HandshakeError> {
    if msg.len() < CLIENT_HANDSHAKE_OVERHEAD {
        return Err(HandshakeError::BadLength);
    }
    let mut r = Reader::new(msg);
    let node_id = r.take_array()?;
    let key_id = r.take_array()?;
    let client_pk = r.take_array()?;
    let encrypted_msg = r.take(r.remaining() - LEN)?;
    let mac = r.take_array()?;
    Ok(NtorV3ClientHandshake {
        node_id,
        key_id,
        client_pk,
        encrypted_msg,
        mac,
    })
}

/// What a client remembers between sending its onionskin and receiving the reply.
pub struct NtorV3ClientState {
    relay: NtorV3PublicKey,
    x: StaticSecret,
    big_x: PublicKey,
    bx: SharedSecret,
    msg_mac: [u8; 32],
    verification: Vec<u8>,
}

impl std::fmt::Debug for NtorV3ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtorV3ClientState")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// Client, step 1: encrypts `client_msg` to `relay` and appends the onionskin to `out`.
///
/// Fails only if `relay.pk` is a small-order point.
pub fn client1(
    rng: &mut impl CryptoRngCore,
    relay: &NtorV3PublicKey,
    verification: &[u8],
    client_msg: &[u8],
    out: &mut Vec<u8>,
) -> Result<NtorV3ClientState, HandshakeError> {
    client1_with_secret(
        StaticSecret::random_from_rng(rng),
        relay,
        verification,
        client_msg,
        out,
    )
}

fn client1_with_secret(
    x: StaticSecret,
    relay: &NtorV3PublicKey,
    verification: &[u8],
    client_msg: &[u8],
    out: &mut Vec<u8>,
) -> Result<NtorV3ClientState, HandshakeError> {
    let big_x = PublicKey::from(&x);
    let bx = checked_dh(&x, &relay.pk)?;
    let id = relay.id.as_bytes();
    let (enc_k1, mac_k1) = phase1_keys(&bx, id, &big_x, &relay.pk, verification);
    let start = out.len();
    out.put(id);
    out.put(relay.pk.as_bytes());
    out.put(big_x.as_bytes());
    let msg_at = out.len();
    out.put(client_msg);
    aes256_ctr(&enc_k1, out.get_mut(msg_at..).unwrap_or_default());
    let msg_mac = mac(
        &mac_k1[..],
        &[out.get(start..).unwrap_or_default()],
        T_MSGMAC,
    );
    out.put(&msg_mac);
    Ok(NtorV3ClientState {
        relay: relay.clone(),
        x,
        big_x,
        bx,
        msg_mac,
        verification: verification.to_vec(),
    })
}

/// Relay side: authenticates and decrypts the client's onionskin, asks `reply_fn` for the server
/// message (returning `None` refuses the handshake), appends the reply to `out`, and returns the
/// circuit keys and the decrypted client message.
pub fn server(
    rng: &mut impl CryptoRngCore,
    keys: &NtorV3ServerKeys,
    verification: &[u8],
    onionskin: &[u8],
    reply_fn: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(KeyGenerator, Zeroizing<Vec<u8>>), HandshakeError> {
    server_with_secret(
        StaticSecret::random_from_rng(rng),
        keys,
        verification,
        onionskin,
        reply_fn,
        out,
    )
}

fn server_with_secret(
    y: StaticSecret,
    keys: &NtorV3ServerKeys,
    verification: &[u8],
    onionskin: &[u8],
    reply_fn: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(KeyGenerator, Zeroizing<Vec<u8>>), HandshakeError> {
    let hs = parse_client_handshake(onionskin)?;
    if &hs.node_id != keys.id.as_bytes() {
        return Err(HandshakeError::WrongNodeId);
    }
    let kp = keys.find(&hs.key_id).ok_or(HandshakeError::UnknownKeyId)?;
    let big_b = kp.public();
    let big_x = PublicKey::from(hs.client_pk);
    let xb = kp.dh(&big_x)?;
    let id = keys.id.as_bytes();
    let (enc_k1, mac_k1) = phase1_keys(&xb, id, &big_x, big_b, verification);
    let signed_len = onionskin.len() - LEN;
    let expected = mac(
        &mac_k1[..],
        &[onionskin.get(..signed_len).unwrap_or_default()],
        T_MSGMAC,
    );
    if !bool::from(expected.ct_eq(&hs.mac)) {
        return Err(HandshakeError::BadAuth);
    }
    let mut client_msg = Zeroizing::new(hs.encrypted_msg.to_vec());
    aes256_ctr(&enc_k1, &mut client_msg);

    let server_msg = Zeroizing::new(reply_fn(&client_msg).ok_or(HandshakeError::MessageRefused)?);

    let big_y = PublicKey::from(&y);
    let xy = checked_dh(&y, &big_x)?;
    let (key_seed, verify) = final_seed(&xy, &xb, id, big_b, &big_x, &big_y, verification);
    let final_input = final_kdf_input(&key_seed);
    let enc_key = Zeroizing::new(enc_key_from(&final_input));
    let mut encrypted = server_msg.to_vec();
    aes256_ctr(&enc_key, &mut encrypted);
    let auth = auth(&verify, id, big_b, &big_y, &big_x, &hs.mac, &encrypted);
    out.put(big_y.as_bytes());
    out.put(&auth);
    out.put(&encrypted);
    Ok((KeyGenerator::shake256(final_input, LEN), client_msg))
}

/// Client, step 2: checks the relay's AUTH, decrypts the server message and returns it with the
/// circuit keys.
pub fn client2(
    state: NtorV3ClientState,
    reply: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, KeyGenerator), HandshakeError> {
    if reply.len() < SERVER_HANDSHAKE_OVERHEAD {
        return Err(HandshakeError::BadLength);
    }
    let mut r = Reader::new(reply);
    let big_y = PublicKey::from(r.take_array::<32>()?);
    let their_auth: [u8; 32] = r.take_array()?;
    let encrypted = r.take_rest();
    let id = state.relay.id.as_bytes();
    let yx = checked_dh(&state.x, &big_y)?;
    let (key_seed, verify) = final_seed(
        &yx,
        &state.bx,
        id,
        &state.relay.pk,
        &state.big_x,
        &big_y,
        &state.verification,
    );
    let expected = auth(
        &verify,
        id,
        &state.relay.pk,
        &big_y,
        &state.big_x,
        &state.msg_mac,
        encrypted,
    );
    if !bool::from(expected.ct_eq(&their_auth)) {
        return Err(HandshakeError::BadAuth);
    }
    let final_input = final_kdf_input(&key_seed);
    let enc_key = Zeroizing::new(enc_key_from(&final_input));
    let mut server_msg = Zeroizing::new(encrypted.to_vec());
    aes256_ctr(&enc_key, &mut server_msg);
    Ok((server_msg, KeyGenerator::shake256(final_input, LEN)))
}

/// `H(s, t) = SHA3_256(ENCAP(t) | s)`.
fn h(parts: &[&[u8]], t: &[u8]) -> [u8; 32] {
    let len_t = encap_len(t);
    let mut all: Vec<&[u8]> = vec![&len_t, t];
    all.extend_from_slice(parts);
    sha3_256(&all)
}

/// `MAC(k, msg, t) = SHA3_256(ENCAP(t) | ENCAP(k) | msg)`.
fn mac(k: &[u8], msg: &[&[u8]], t: &[u8]) -> [u8; 32] {
    let len_t = encap_len(t);
    let len_k = encap_len(k);
    let mut all: Vec<&[u8]> = vec![&len_t, t, &len_k, k];
    all.extend_from_slice(msg);
    sha3_256(&all)
}

/// `(ENC_K1, MAC_K1) = PARTITION(KDF_msgkdf(Bx | ID | X | B | PROTOID | ENCAP(VER)), 32, 32)`.
fn phase1_keys(
    bx: &SharedSecret,
    id: &[u8; 32],
    big_x: &PublicKey,
    big_b: &PublicKey,
    ver: &[u8],
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let keys = shake256(
        &[
            &encap_len(T_MSGKDF),
            T_MSGKDF,
            bx.as_bytes(),
            id,
            big_x.as_bytes(),
            big_b.as_bytes(),
            PROTOID,
            &encap_len(ver),
            ver,
        ],
        2 * LEN,
    );
    let mut enc = Zeroizing::new([0u8; 32]);
    let mut mac_k = Zeroizing::new([0u8; 32]);
    enc.copy_from_slice(keys.get(..LEN).unwrap_or(&[0; 32]));
    mac_k.copy_from_slice(keys.get(LEN..).unwrap_or(&[0; 32]));
    (enc, mac_k)
}

/// `(ntor_key_seed, verify)` from `secret_input = Xy | Xb | ID | B | X | Y | PROTOID | ENCAP(VER)`.
fn final_seed(
    xy: &SharedSecret,
    xb: &SharedSecret,
    id: &[u8; 32],
    big_b: &PublicKey,
    big_x: &PublicKey,
    big_y: &PublicKey,
    ver: &[u8],
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let len_ver = encap_len(ver);
    let secret_input: [&[u8]; 9] = [
        xy.as_bytes(),
        xb.as_bytes(),
        id,
        big_b.as_bytes(),
        big_x.as_bytes(),
        big_y.as_bytes(),
        PROTOID,
        &len_ver,
        ver,
    ];
    (
        Zeroizing::new(h(&secret_input, T_KEY_SEED)),
        Zeroizing::new(h(&secret_input, T_VERIFY)),
    )
}

/// The SHAKE-256 input of `KDF_final(ntor_key_seed)`.
fn final_kdf_input(key_seed: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + T_FINAL.len() + 32);
    v.put(&encap_len(T_FINAL));
    v.put(T_FINAL);
    v.put(key_seed);
    v
}

/// ENC_KEY: the first 32 bytes of KDF_final.
fn enc_key_from(final_input: &[u8]) -> [u8; 32] {
    let k = shake256(&[final_input], LEN);
    let mut out = [0u8; 32];
    out.copy_from_slice(k.get(..LEN).unwrap_or(&[0; 32]));
    out
}

/// `AUTH = H_auth(verify | ID | B | Y | X | MAC | ENCAP(MSG) | PROTOID | "Server")`.
fn auth(
    verify: &[u8; 32],
    id: &[u8; 32],
    big_b: &PublicKey,
    big_y: &PublicKey,
    big_x: &PublicKey,
    msg_mac: &[u8; 32],
    encrypted_msg: &[u8],
) -> [u8; 32] {
    h(
        &[
            verify,
            id,
            big_b.as_bytes(),
            big_y.as_bytes(),
            big_x.as_bytes(),
            msg_mac,
            &encap_len(encrypted_msg),
            encrypted_msg,
            PROTOID,
            b"Server",
        ],
        T_AUTH,
    )
}

/// AES-256-CTR with an all-zero IV, in place. Each key is used for exactly one message.
pub(crate) fn aes256_ctr(key: &[u8; 32], buf: &mut [u8]) {
    let mut c = Aes256Ctr::new(key.into(), &[0u8; 16].into());
    c.apply_keystream(buf);
}

// ---------------------------------------------------------------------------------------------
// Extensions carried in CM and SM.

/// An ntor v3 extension type (EXT_FIELD_TYPE). Open: unknown values round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NtorV3ExtType(pub u8);

impl NtorV3ExtType {
    /// Client asks for congestion control (proposal 324 §10.3); empty body.
    pub const CC_REQUEST: Self = Self(1);
    /// Relay accepts congestion control; body is `sendme_inc` (1 byte).
    pub const CC_RESPONSE: Self = Self(2);
    /// Client asks for subprotocol capabilities on this circuit (proposal 346); body is a list of
    /// (protocol id, capability number) byte pairs.
    pub const SUBPROTOCOL_REQUEST: Self = Self(3);
}

/// One subprotocol capability in a [`NtorV3Extension::SubprotocolRequest`], e.g. `Relay=5` is
/// `{ protocol: 2, version: 5 }` (protocol ids from tor-spec "Subprotocol versioning").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubprotocolCap {
    /// Numeric protocol id (Link = 0, LinkAuth = 1, Relay = 2, ...).
    pub protocol: u8,
    /// Capability number within that protocol.
    pub version: u8,
}

impl SubprotocolCap {
    /// `Relay=6`: CGO relay crypto with the v1 relay cell format (proposal 359).
    pub const RELAY_CGO: SubprotocolCap = SubprotocolCap {
        protocol: 2,
        version: 6,
    };
}

/// What a client asks for in its ntor v3 message ([`client_message`]), or what a relay enabled
/// on a circuit from it ([`negotiate_server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// `Relay=6` was requested and accepted: the hop uses CGO and the v1 relay cell format.
    pub cgo: bool,
    /// Congestion control (proposal 324 §10.3, CC_REQUEST). A relay that does it answers with
    /// CC_RESPONSE ([`client_server_message`]); chive relays do not, so [`negotiate_server`]
    /// never sets it.
    pub cc: bool,
}

/// The `cc_sendme_inc` consensus default (proposal 324 §6.5.1): DATA cells per circuit SENDME
/// on a circuit with congestion control.
pub const CC_SENDME_INC_DEFAULT: u8 = 31;
/// Smallest `sendme_inc` a client accepts in CC_RESPONSE: half the default, as C tor (an exit
/// outside a factor of two of the consensus value is not used).
pub const CC_SENDME_INC_MIN: u8 = CC_SENDME_INC_DEFAULT / 2;
/// Largest `sendme_inc` a client accepts in CC_RESPONSE: twice the default.
pub const CC_SENDME_INC_MAX: u8 = CC_SENDME_INC_DEFAULT * 2;

/// Why a relay refuses a client's ntor v3 message (the CREATE2 is answered with DESTROY), or a
/// client the relay's answer (the circuit is destroyed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// The extension list is malformed.
    #[error("malformed ntor v3 extensions: {0}")]
    Codec(#[from] CodecError),
    /// The client asked for a subprotocol capability this relay does not enable per circuit.
    #[error("unsupported subprotocol capability {}={}", .0.protocol, .0.version)]
    Unsupported(SubprotocolCap),
    /// The relay answered CC_RESPONSE to a client that sent no CC_REQUEST.
    #[error("congestion control answered but not requested")]
    UnrequestedCc,
    /// The relay's `sendme_inc` is outside [`CC_SENDME_INC_MIN`]..=[`CC_SENDME_INC_MAX`].
    #[error("congestion control sendme_inc {0} out of range")]
    BadSendmeInc(u8),
}

/// Relay side of the subprotocol request (proposal 346; tor-spec "Subprotocol request"): reads
/// the client message `client_msg` and decides what the circuit enables. Only the first
/// request counts (receivers act on the first extension of each type). A request for anything
/// not in `supported` refuses the handshake, as C tor does; the answer itself carries no
/// extension for it (acceptance is implied by the handshake succeeding).
pub fn negotiate_server(
    client_msg: &[u8],
    supported: &[SubprotocolCap],
) -> Result<Negotiated, NegotiationError> {
    let exts = decode_extensions(client_msg)?;
    let mut out = Negotiated::default();
    let first = exts.iter().find_map(|e| match e {
        NtorV3Extension::SubprotocolRequest(caps) => Some(caps),
        _ => None,
    });
    for cap in first.into_iter().flatten() {
        if !supported.contains(cap) {
            return Err(NegotiationError::Unsupported(*cap));
        }
        if *cap == SubprotocolCap::RELAY_CGO {
            out.cgo = true;
        }
    }
    Ok(out)
}

/// Client side: the client message asking for what `want` says (an empty list, one zero
/// byte, when it asks for nothing; C tor refuses an empty message).
pub fn client_message(want: Negotiated) -> Vec<u8> {
    let mut exts = Vec::with_capacity(2);
    if want.cc {
        exts.push(NtorV3Extension::CcRequest);
    }
    if want.cgo {
        exts.push(NtorV3Extension::SubprotocolRequest(vec![
            SubprotocolCap::RELAY_CGO,
        ]));
    }
    let mut out = Vec::with_capacity(7);
    // At most two short extensions: they always encode.
    let _ = encode_extensions(&exts, &mut out);
    out
}

/// Client side: reads the relay's server message (decrypted by [`client2`]) for a client
/// message that asked for `asked`: the negotiated `sendme_inc` if the relay accepted congestion
/// control (its first CC_RESPONSE counts), `None` if it did not answer it. A CC_RESPONSE the
/// client did not ask for, or a `sendme_inc` outside [`CC_SENDME_INC_MIN`]..=
/// [`CC_SENDME_INC_MAX`] (0 included), refuses the handshake; unknown extensions are ignored.
pub fn client_server_message(
    asked: Negotiated,
    server_msg: &[u8],
) -> Result<Option<u8>, NegotiationError> {
    let exts = decode_extensions(server_msg)?;
    let first = exts.iter().find_map(|e| match e {
        NtorV3Extension::CcResponse { sendme_inc } => Some(*sendme_inc),
        _ => None,
    });
    match first {
        None => Ok(None),
        Some(_) if !asked.cc => Err(NegotiationError::UnrequestedCc),
        Some(inc) if !(CC_SENDME_INC_MIN..=CC_SENDME_INC_MAX).contains(&inc) => {
            Err(NegotiationError::BadSendmeInc(inc))
        }
        Some(inc) => Ok(Some(inc)),
    }
}

/// One extension in an ntor v3 client or server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtorV3Extension {
    /// Sent by the client: please use congestion control. Relays that do not do congestion control
    /// ignore it.
    CcRequest,
    /// Sent by the relay in answer to [`Self::CcRequest`]; a client that did not ask must refuse it.
    CcResponse {
        /// The relay's `cc_sendme_inc`.
        sendme_inc: u8,
    },
    /// Sent by the client: enable these subprotocol capabilities on the circuit. The list must be
    /// strictly ascending (sorted by protocol, then version; no duplicates): decoding refuses
    /// anything else and encoding fails on it.
    SubprotocolRequest(Vec<SubprotocolCap>),
    /// Any other type, kept so it round-trips; receivers ignore it.
    Unrecognized {
        /// EXT_FIELD_TYPE.
        ext_type: NtorV3ExtType,
        /// EXT_FIELD.
        body: Vec<u8>,
    },
}

impl NtorV3Extension {
    /// The type byte.
    pub fn ext_type(&self) -> NtorV3ExtType {
        match self {
            Self::CcRequest => NtorV3ExtType::CC_REQUEST,
            Self::CcResponse { .. } => NtorV3ExtType::CC_RESPONSE,
            Self::SubprotocolRequest(_) => NtorV3ExtType::SUBPROTOCOL_REQUEST,
            Self::Unrecognized { ext_type, .. } => *ext_type,
        }
    }
}

/// The list framing is [`crate::ext_list`]'s; this is ntor v3's view of each entry.
impl ExtensionField for NtorV3Extension {
    const COUNT_NAME: &'static str = "ntor v3 extension count";
    const FIELD_NAME: &'static str = "ntor v3 extension body";

    fn ext_type_byte(&self) -> u8 {
        self.ext_type().0
    }

    fn encode_field(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Self::CcRequest => {}
            Self::CcResponse { sendme_inc } => out.put_u8(*sendme_inc),
            Self::SubprotocolRequest(caps) => {
                if !is_strictly_ascending(caps) {
                    return Err(CodecError::BadValue("subprotocol request order"));
                }
                for c in caps {
                    out.put_u8(c.protocol);
                    out.put_u8(c.version);
                }
            }
            Self::Unrecognized { body, .. } => out.put(body),
        }
        Ok(())
    }

    fn decode_field(ext_type: u8, body: &[u8]) -> Result<Self, CodecError> {
        let ext_type = NtorV3ExtType(ext_type);
        let mut r = Reader::new(body);
        let ext = match ext_type {
            NtorV3ExtType::CC_REQUEST => Self::CcRequest,
            NtorV3ExtType::CC_RESPONSE => Self::CcResponse {
                sendme_inc: r.u8()?,
            },
            NtorV3ExtType::SUBPROTOCOL_REQUEST => {
                let mut caps = Vec::with_capacity(body.len() / 2);
                while r.remaining() > 0 {
                    if r.remaining() == 1 {
                        return Err(CodecError::BadValue("subprotocol request length"));
                    }
                    caps.push(SubprotocolCap {
                        protocol: r.u8()?,
                        version: r.u8()?,
                    });
                }
                if !is_strictly_ascending(&caps) {
                    return Err(CodecError::BadValue("subprotocol request order"));
                }
                Self::SubprotocolRequest(caps)
            }
            _ => {
                return Ok(Self::Unrecognized {
                    ext_type,
                    body: r.take_rest().to_vec(),
                })
            }
        };
        r.should_be_exhausted()?;
        Ok(ext)
    }
}

/// The spec requires a subprotocol request to list each capability once, in ascending order.
fn is_strictly_ascending(caps: &[SubprotocolCap]) -> bool {
    caps.windows(2).all(|w| matches!(w, [a, b] if a < b))
}

/// Decodes a CM or SM: `N_EXTENSIONS (1) | N x (EXT_FIELD_TYPE (1) | EXT_FIELD_LEN (1) |
/// EXT_FIELD)`. Fuzz entry point.
///
/// An empty message is read as no extensions (C tor's relay sends an empty SM when it has
/// nothing to say). Trailing bytes after the last extension are refused: the spec says
/// malformed messages MUST be rejected. Duplicates are kept in order; per the spec, receivers
/// act on the first of each type.
pub fn decode_extensions(msg: &[u8]) -> Result<Vec<NtorV3Extension>, CodecError> {
    if msg.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader::new(msg);
    let out = decode_list(&mut r)?;
    r.should_be_exhausted()?;
    Ok(out)
}

/// Encodes an extension list as [`decode_extensions`] reads it, appending to `out`.
pub fn encode_extensions(exts: &[NtorV3Extension], out: &mut Vec<u8>) -> Result<(), CodecError> {
    encode_list(exts, out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use crate::test_util::{unhex, unhex_array};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn congestion_control_negotiation() {
        let cc = Negotiated {
            cgo: false,
            cc: true,
        };
        let both = Negotiated {
            cgo: true,
            cc: true,
        };
        // CC_REQUEST is type 1, empty; beside Relay=6 it comes first.
        assert_eq!(client_message(cc), [1, 1, 0]);
        assert_eq!(client_message(both), [2, 1, 0, 3, 2, 2, 6]);
        // A chive relay does not do congestion control: the request is ignored (not refused).
        let caps = [SubprotocolCap::RELAY_CGO];
        assert_eq!(
            negotiate_server(&client_message(both), &caps),
            Ok(Negotiated {
                cgo: true,
                cc: false
            })
        );
        let response = |inc: u8| {
            let mut sm = Vec::new();
            encode_extensions(&[NtorV3Extension::CcResponse { sendme_inc: inc }], &mut sm).unwrap();
            sm
        };
        assert_eq!(response(31), [1, 2, 1, 31]);
        for asked in [cc, both] {
            assert_eq!(client_server_message(asked, &response(31)), Ok(Some(31)));
            assert_eq!(
                client_server_message(asked, &response(CC_SENDME_INC_MIN)),
                Ok(Some(15))
            );
            assert_eq!(
                client_server_message(asked, &response(CC_SENDME_INC_MAX)),
                Ok(Some(62))
            );
            // No answer: the relay does not do congestion control.
            assert_eq!(client_server_message(asked, &[0]), Ok(None));
            assert_eq!(client_server_message(asked, &[]), Ok(None));
            for bad in [0, 14, 63, 255] {
                assert_eq!(
                    client_server_message(asked, &response(bad)),
                    Err(NegotiationError::BadSendmeInc(bad))
                );
            }
            // The first CC_RESPONSE counts; unknown extensions are ignored.
            let mut two = Vec::new();
            encode_extensions(
                &[
                    NtorV3Extension::Unrecognized {
                        ext_type: NtorV3ExtType(9),
                        body: vec![1, 2],
                    },
                    NtorV3Extension::CcResponse { sendme_inc: 20 },
                    NtorV3Extension::CcResponse { sendme_inc: 0 },
                ],
                &mut two,
            )
            .unwrap();
            assert_eq!(client_server_message(asked, &two), Ok(Some(20)));
            // Malformed: an empty CC_RESPONSE, trailing bytes.
            assert!(matches!(
                client_server_message(asked, &[1, 2, 0]),
                Err(NegotiationError::Codec(_))
            ));
            assert!(matches!(
                client_server_message(asked, &[1, 2, 1, 31, 0]),
                Err(NegotiationError::Codec(_))
            ));
        }
        // A CC_RESPONSE to a client that did not ask.
        for asked in [
            Negotiated::default(),
            Negotiated {
                cgo: true,
                cc: false,
            },
        ] {
            assert_eq!(
                client_server_message(asked, &response(31)),
                Err(NegotiationError::UnrequestedCc)
            );
            assert_eq!(client_server_message(asked, &[0]), Ok(None));
        }
    }

    #[test]
    fn subprotocol_negotiation() {
        // The client's request for Relay=6 is type 3 with body [02 06].
        let cm = client_message(Negotiated {
            cgo: true,
            cc: false,
        });
        assert_eq!(cm, [1, 3, 2, 2, 6]);
        assert_eq!(client_message(Negotiated::default()), [0]);
        let cgo = [SubprotocolCap::RELAY_CGO];
        assert_eq!(
            negotiate_server(&cm, &cgo),
            Ok(Negotiated {
                cgo: true,
                cc: false
            })
        );
        // A relay that does not enable CGO refuses the request instead of ignoring it.
        assert_eq!(
            negotiate_server(&cm, &[]),
            Err(NegotiationError::Unsupported(SubprotocolCap::RELAY_CGO))
        );
        assert_eq!(negotiate_server(&[0], &cgo), Ok(Negotiated::default()));
        assert_eq!(negotiate_server(&[], &cgo), Ok(Negotiated::default()));
        // Anything else requested is refused, even beside Relay=6.
        let other = [1, 3, 4, 2, 6, 2, 7];
        assert_eq!(
            negotiate_server(&other, &cgo),
            Err(NegotiationError::Unsupported(SubprotocolCap {
                protocol: 2,
                version: 7
            }))
        );
        // Only the first request counts; CC_REQUEST beside it is fine.
        let two = [3, 1, 0, 3, 2, 2, 6, 3, 2, 2, 7];
        assert_eq!(
            negotiate_server(&two, &cgo),
            Ok(Negotiated {
                cgo: true,
                cc: false
            })
        );
        // Odd-length or unsorted bodies are malformed.
        for bad in [&[1u8, 3, 1, 2][..], &[1, 3, 4, 2, 6, 2, 5], &[1, 3, 2, 2]] {
            assert!(matches!(
                negotiate_server(bad, &cgo),
                Err(NegotiationError::Codec(_))
            ));
        }
    }

    // Proposal 332 §X.2 test vectors ("generated by a Python reference implementation").
    const B_SK: &str = "4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a";
    const B_PK: &str = "f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d";
    const ID: &str = "9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2";
    const X_SK: &str = "b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49";
    const X_PK: &str = "252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f46";
    const CM: &str = "68656c6c6f20776f726c64";
    const VER: &str = "78797a7a79";
    const Y_SK: &str = "4865a5b7689dafd978f529291c7171bc159be076b92186405d13220b80e2a053";
    const Y_PK: &str = "4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d";
    const SM: &str = "486f6c61204d756e646f";
    const ENC_K1: &str = "4cd166e93f1c60a29f8fb9ec40ea0fc878930c27800594593e1c4d0f3b5fbd02";
    const MAC_K1: &str = "f5b69e85fdd26e1b0bdbbc8128e32d8123040255f11f744af3cc98fc13613cda";
    const MSG_MAC: &str = "9e044d53565f04d82bbb3bebed3d06cea65db8be9c72b68cd461942088502f67";
    const KEY_SEED: &str = "b9a092741098e1f5b8ab37ce74399dd57522c974d7ae4626283a1077b9273255";
    const VERIFY: &str = "1dc09fb249738a79f1bc3a545eee8c415f27213894a760bb4df58862e414799a";
    const ENC_KEY: &str = "cab8a93eef62246a83536c4384f331ec26061b66098c61421b6cae81f4f57c56";
    const AUTH: &str = "2fc5f8773ca824542bc6cf6f57c7c29bbf4e5476461ab130c5b18ab0a9127665";
    const CLIENT_HANDSHAKE: &str = "9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f463bebd9151fd3b47c180abc9e044d53565f04d82bbb3bebed3d06cea65db8be9c72b68cd461942088502f67";
    const SERVER_HANDSHAKE: &str = "4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d2fc5f8773ca824542bc6cf6f57c7c29bbf4e5476461ab130c5b18ab0a91276651202c3e1e87c0d32054c";
    const KEYSTREAM: &str = "9c19b631fd94ed86a817e01f6c80b0743a43f5faebd39cfaa8b00fa8bcc65c3bfeaa403d91acbd68a821bf6ee8504602b094a254392a07737d5662768c7a9fb1b2814bb34780eaee6e867c773e28c212ead563e98a1cd5d5b4576f5ee61c59bde025ff2851bb19b721421694f263818e3531e43a9e4e3e2c661e2ad547d8984caa28ebecd3e4525452299be26b9185a20a90ce1eac20a91f2832d731b54502b09749b5a2a2949292f8cfcbeffb790c7790ed935a9d251e7e336148ea83b063a5618fcff674a44581585fd22077ca0e52c59a24347a38d1a1ceebddbf238541f226b8f88d0fb9c07a1bcd2ea764bbbb5dacdaf5312a14c0b9e4f06309b0333b4a";

    fn vector_keys() -> (NtorV3ServerKeys, NtorV3PublicKey) {
        let kp = NtorOnionKeypair::from_secret(StaticSecret::from(unhex_array(B_SK)));
        assert_eq!(kp.public().as_bytes(), &unhex_array(B_PK));
        let id = Ed25519Identity::from_bytes(unhex_array(ID));
        let public = NtorV3PublicKey {
            id,
            pk: *kp.public(),
        };
        (
            NtorV3ServerKeys {
                id,
                current: kp,
                previous: None,
            },
            public,
        )
    }

    #[test]
    fn proposal_332_vectors() {
        let (keys, public) = vector_keys();
        let x = StaticSecret::from(unhex_array(X_SK));
        let y = StaticSecret::from(unhex_array(Y_SK));
        let big_x = PublicKey::from(&x);
        let big_y = PublicKey::from(&y);
        assert_eq!(big_x.as_bytes(), &unhex_array(X_PK));
        assert_eq!(big_y.as_bytes(), &unhex_array(Y_PK));
        let ver = unhex(VER);
        let id = unhex_array(ID);

        // Intermediates.
        let bx = x.diffie_hellman(&public.pk);
        let (enc_k1, mac_k1) = phase1_keys(&bx, &id, &big_x, &public.pk, &ver);
        assert_eq!(*enc_k1, unhex_array(ENC_K1));
        assert_eq!(*mac_k1, unhex_array(MAC_K1));
        let xy = y.diffie_hellman(&big_x);
        let (key_seed, verify) = final_seed(&xy, &bx, &id, &public.pk, &big_x, &big_y, &ver);
        assert_eq!(*key_seed, unhex_array(KEY_SEED));
        assert_eq!(*verify, unhex_array(VERIFY));
        assert_eq!(
            enc_key_from(&final_kdf_input(&key_seed)),
            unhex_array(ENC_KEY)
        );

        // Client message, byte for byte.
        let mut onionskin = Vec::new();
        let state = client1_with_secret(x, &public, &ver, &unhex(CM), &mut onionskin).unwrap();
        assert_eq!(onionskin, unhex(CLIENT_HANDSHAKE));
        assert_eq!(state.msg_mac, unhex_array(MSG_MAC));
        let parsed = parse_client_handshake(&onionskin).unwrap();
        let mut re = Vec::new();
        parsed.encode(&mut re);
        assert_eq!(re, onionskin);

        // Server reply, byte for byte.
        let mut reply = Vec::new();
        let (skeys, cm) = server_with_secret(
            y,
            &keys,
            &ver,
            &onionskin,
            |cm| {
                assert_eq!(cm, &unhex(CM)[..]);
                Some(unhex(SM))
            },
            &mut reply,
        )
        .unwrap();
        assert_eq!(&cm[..], &unhex(CM)[..]);
        assert_eq!(reply, unhex(SERVER_HANDSHAKE));
        assert_eq!(&reply[32..64], &unhex(AUTH)[..]);
        assert_eq!(&skeys.expand(256).unwrap()[..], &unhex(KEYSTREAM)[..]);

        // Client finish.
        let (sm, ckeys) = client2(state, &reply).unwrap();
        assert_eq!(&sm[..], &unhex(SM)[..]);
        assert_eq!(&ckeys.expand(256).unwrap()[..], &unhex(KEYSTREAM)[..]);
    }

    fn setup(seed: u64) -> (StdRng, NtorV3ServerKeys, NtorV3PublicKey) {
        let mut rng = StdRng::seed_from_u64(seed);
        let id = Ed25519Identity::from_bytes([5u8; 32]);
        let keys = NtorV3ServerKeys {
            id,
            current: NtorOnionKeypair::generate(&mut rng),
            previous: Some(NtorOnionKeypair::generate(&mut rng)),
        };
        let public = NtorV3PublicKey {
            id,
            pk: *keys.current.public(),
        };
        (rng, keys, public)
    }

    #[test]
    fn round_trip_with_extensions_and_previous_key() {
        let (mut rng, keys, mut public) = setup(1);
        for _ in 0..2 {
            let mut cm = Vec::new();
            encode_extensions(
                &[
                    NtorV3Extension::CcRequest,
                    NtorV3Extension::SubprotocolRequest(vec![SubprotocolCap {
                        protocol: 2,
                        version: 6,
                    }]),
                ],
                &mut cm,
            )
            .unwrap();
            let mut onionskin = Vec::new();
            let state = client1(
                &mut rng,
                &public,
                CIRCUIT_EXTEND_VERIFICATION,
                &cm,
                &mut onionskin,
            )
            .unwrap();
            let mut reply = Vec::new();
            let (skeys, got_cm) = server(
                &mut rng,
                &keys,
                CIRCUIT_EXTEND_VERIFICATION,
                &onionskin,
                |cm| {
                    let exts = decode_extensions(cm).ok()?;
                    assert!(exts.contains(&NtorV3Extension::CcRequest));
                    let mut sm = Vec::new();
                    encode_extensions(&[NtorV3Extension::CcResponse { sendme_inc: 31 }], &mut sm)
                        .ok()?;
                    Some(sm)
                },
                &mut reply,
            )
            .unwrap();
            assert_eq!(&got_cm[..], &cm[..]);
            let (sm, ckeys) = client2(state, &reply).unwrap();
            assert_eq!(
                decode_extensions(&sm).unwrap(),
                vec![NtorV3Extension::CcResponse { sendme_inc: 31 }]
            );
            assert_eq!(ckeys.tor1_keys().unwrap().kb, skeys.tor1_keys().unwrap().kb);
            public.pk = *keys.previous.as_ref().unwrap().public();
        }
    }

    #[test]
    fn server_refusals() {
        let (mut rng, keys, public) = setup(2);
        let mut onionskin = Vec::new();
        client1(&mut rng, &public, b"v", b"hello", &mut onionskin).unwrap();
        let ok = |_: &[u8]| Some(Vec::new());
        let mut out = Vec::new();

        let mut bad = onionskin.clone();
        bad[0] ^= 1;
        assert_eq!(
            server(&mut rng, &keys, b"v", &bad, ok, &mut out).unwrap_err(),
            HandshakeError::WrongNodeId
        );
        let mut bad = onionskin.clone();
        bad[32] ^= 1;
        assert_eq!(
            server(&mut rng, &keys, b"v", &bad, ok, &mut out).unwrap_err(),
            HandshakeError::UnknownKeyId
        );
        for at in [64, 97, onionskin.len() - 1] {
            let mut bad = onionskin.clone();
            bad[at] ^= 1;
            assert_eq!(
                server(&mut rng, &keys, b"v", &bad, ok, &mut out).unwrap_err(),
                HandshakeError::BadAuth,
                "byte {at}"
            );
        }
        // Different verification string: the MAC cannot verify.
        assert_eq!(
            server(&mut rng, &keys, b"w", &onionskin, ok, &mut out).unwrap_err(),
            HandshakeError::BadAuth
        );
        assert_eq!(
            server(&mut rng, &keys, b"v", &onionskin[..127], ok, &mut out).unwrap_err(),
            HandshakeError::BadLength
        );
        let mut zero_x = onionskin.clone();
        zero_x[64..96].fill(0);
        assert_eq!(
            server(&mut rng, &keys, b"v", &zero_x, ok, &mut out).unwrap_err(),
            HandshakeError::BadDh
        );
        assert_eq!(
            server(&mut rng, &keys, b"v", &onionskin, |_| None, &mut out).unwrap_err(),
            HandshakeError::MessageRefused
        );
        assert!(out.is_empty(), "nothing written on failure");
    }

    #[test]
    fn client_refuses_tampered_reply() {
        let (mut rng, keys, public) = setup(3);
        for at in [0usize, 32, 63, 64] {
            let mut onionskin = Vec::new();
            let state = client1(&mut rng, &public, b"v", b"", &mut onionskin).unwrap();
            let mut reply = Vec::new();
            server(
                &mut rng,
                &keys,
                b"v",
                &onionskin,
                |_| Some(vec![1, 2]),
                &mut reply,
            )
            .unwrap();
            reply[at] ^= 0x20;
            let err = client2(state, &reply).unwrap_err();
            assert!(matches!(
                err,
                HandshakeError::BadAuth | HandshakeError::BadDh
            ));
        }
        let mut onionskin = Vec::new();
        let state = client1(&mut rng, &public, b"v", b"", &mut onionskin).unwrap();
        assert_eq!(
            client2(state, &[0u8; 63]).unwrap_err(),
            HandshakeError::BadLength
        );
    }

    #[test]
    fn extension_encoding() {
        let exts = vec![
            NtorV3Extension::CcRequest,
            NtorV3Extension::CcResponse { sendme_inc: 31 },
            NtorV3Extension::SubprotocolRequest(vec![
                SubprotocolCap {
                    protocol: 2,
                    version: 5,
                },
                SubprotocolCap {
                    protocol: 12,
                    version: 1,
                },
            ]),
            NtorV3Extension::Unrecognized {
                ext_type: NtorV3ExtType(200),
                body: vec![9, 9],
            },
        ];
        let mut out = Vec::new();
        encode_extensions(&exts, &mut out).unwrap();
        assert_eq!(
            out,
            [4, 1, 0, 2, 1, 31, 3, 4, 2, 5, 12, 1, 200, 2, 9, 9].to_vec()
        );
        assert_eq!(decode_extensions(&out).unwrap(), exts);
        assert_eq!(decode_extensions(&[]).unwrap(), vec![]);
        assert_eq!(decode_extensions(&[0]).unwrap(), vec![]);
        assert_eq!(decode_extensions(&[1, 1]), Err(CodecError::Truncated));
        assert_eq!(
            decode_extensions(&[0, 0]),
            Err(CodecError::TrailingBytes(1))
        );
        assert_eq!(decode_extensions(&[1, 2, 0]), Err(CodecError::Truncated));
        assert_eq!(
            decode_extensions(&[1, 1, 1, 7]),
            Err(CodecError::TrailingBytes(1))
        );
        assert_eq!(
            decode_extensions(&[1, 3, 1, 7]),
            Err(CodecError::BadValue("subprotocol request length"))
        );
        // Duplicate and unsorted capabilities.
        for body in [[0u8, 4, 0, 4], [2, 4, 0, 4], [2, 5, 2, 4]] {
            let mut msg = vec![1, 3, 4];
            msg.extend_from_slice(&body);
            assert_eq!(
                decode_extensions(&msg),
                Err(CodecError::BadValue("subprotocol request order"))
            );
        }
        let unsorted = NtorV3Extension::SubprotocolRequest(vec![
            SubprotocolCap {
                protocol: 2,
                version: 5,
            },
            SubprotocolCap {
                protocol: 0,
                version: 4,
            },
        ]);
        assert_eq!(
            encode_extensions(&[unsorted], &mut Vec::new()),
            Err(CodecError::BadValue("subprotocol request order"))
        );
    }

    fn arb_ext() -> impl Strategy<Value = NtorV3Extension> {
        prop_oneof![
            Just(NtorV3Extension::CcRequest),
            any::<u8>().prop_map(|sendme_inc| NtorV3Extension::CcResponse { sendme_inc }),
            proptest::collection::btree_set(any::<(u8, u8)>(), 0..100).prop_map(|v| {
                NtorV3Extension::SubprotocolRequest(
                    v.into_iter()
                        .map(|(protocol, version)| SubprotocolCap { protocol, version })
                        .collect(),
                )
            }),
            (4u8.., proptest::collection::vec(any::<u8>(), 0..255)).prop_map(|(t, body)| {
                NtorV3Extension::Unrecognized {
                    ext_type: NtorV3ExtType(t),
                    body,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (mut rng, keys, public) = setup(4);
            let _ = parse_client_handshake(&bytes);
            let _ = decode_extensions(&bytes);
            let mut out = Vec::new();
            let _ = server(&mut rng, &keys, b"v", &bytes, |_| Some(Vec::new()), &mut out);
            let mut onionskin = Vec::new();
            let state = client1(&mut rng, &public, b"v", b"", &mut onionskin).unwrap();
            let _ = client2(state, &bytes);
        }

        #[test]
        fn extensions_round_trip(exts in proptest::collection::vec(arb_ext(), 0..5)) {
            let mut out = Vec::new();
            encode_extensions(&exts, &mut out).unwrap();
            prop_assert_eq!(decode_extensions(&out).unwrap(), exts);
        }

        #[test]
        fn onionskin_round_trips(node_id in any::<[u8; 32]>(), key_id in any::<[u8; 32]>(),
                                 client_pk in any::<[u8; 32]>(), mac in any::<[u8; 32]>(),
                                 msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            let hs = NtorV3ClientHandshake { node_id, key_id, client_pk, encrypted_msg: &msg, mac };
            let mut out = Vec::new();
            hs.encode(&mut out);
            prop_assert_eq!(parse_client_handshake(&out).unwrap(), hs);
        }
    }
}
