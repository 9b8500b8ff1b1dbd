//! The ntor handshake, CREATE2 handshake type 2
//! ([tor-spec §5.1.4](https://spec.torproject.org/tor-spec/create-created-cells.html#ntor)).
//!
//! ```text
//! client -> relay:  NODEID (20) | KEYID (32) | CLIENT_PK X (32)         84 bytes
//! relay -> client:  SERVER_PK Y (32) | AUTH (32)                          64 bytes
//!
//! secret_input = EXP(X,y) | EXP(X,b) | ID | B | X | Y | PROTOID
//! KEY_SEED     = H(secret_input, t_key)          H(x,t) = HMAC-SHA256(key = t, msg = x)
//! verify       = H(secret_input, t_verify)
//! auth_input   = verify | ID | B | Y | X | PROTOID | "Server"
//! AUTH         = H(auth_input, t_mac)
//! ```
//!
//! Keys come from KDF-RFC5869 with PRK = KEY_SEED and info = m_expand (tor-spec §5.2.2). Both
//! sides refuse an all-zero Diffie-Hellman output, which is what a small-order point produces;
//! the spec makes that check stand in for group membership of X and Y.

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::Reader;
use crate::ids::RsaIdentity;
use crate::kdf::{hmac_sha256, HandshakeError, KeyGenerator};
use crate::keys::NtorOnionKeypair;

const PROTOID: &[u8] = b"ntor-curve25519-sha256-1";
const T_MAC: &[u8] = b"ntor-curve25519-sha256-1:mac";
const T_KEY: &[u8] = b"ntor-curve25519-sha256-1:key_extract";
const T_VERIFY: &[u8] = b"ntor-curve25519-sha256-1:verify";
const M_EXPAND: &[u8] = b"ntor-curve25519-sha256-1:key_expand";

/// Length of the client's onionskin (NODEID | KEYID | CLIENT_PK).
pub const CLIENT_HANDSHAKE_LEN: usize = 20 + 32 + 32;
/// Length of the relay's reply (SERVER_PK | AUTH).
pub const SERVER_HANDSHAKE_LEN: usize = 32 + 32;

/// What a client knows about the relay it extends to: identity digest and ntor onion key B.
#[derive(Debug, Clone)]
pub struct NtorPublicKey {
    /// The relay's RSA identity digest (ID).
    pub id: RsaIdentity,
    /// The relay's ntor onion key (B).
    pub pk: PublicKey,
}

/// A relay's ntor secrets: its identity, the current onion key and, during rotation, the
/// previous one (clients may still use it from an older descriptor).
#[derive(Debug, Clone)]
pub struct NtorServerKeys {
    /// Our RSA identity digest.
    pub id: RsaIdentity,
    /// The onion key in our current descriptor.
    pub current: NtorOnionKeypair,
    /// The onion key we rotated away from, still accepted for a grace period.
    pub previous: Option<NtorOnionKeypair>,
}

impl NtorServerKeys {
    /// The keypair whose public key is `key_id`, if we hold it.
    fn find(&self, key_id: &[u8; 32]) -> Option<&NtorOnionKeypair> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.public().as_bytes() == key_id)
    }
}

/// A parsed client onionskin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtorClientHandshake {
    /// NODEID: the identity digest of the relay the client meant.
    pub node_id: [u8; 20],
    /// KEYID: the onion key the client used.
    pub key_id: [u8; 32],
    /// CLIENT_PK (X).
    pub client_pk: [u8; 32],
}

impl NtorClientHandshake {
    /// Appends the 84-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.node_id);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.client_pk);
    }
}

/// Parses a client onionskin (CREATE2 HDATA). Fuzz entry point for the relay side.
///
/// CREATE2 carries an exact HLEN, so any length other than 84 is refused.
pub fn parse_client_handshake(msg: &[u8]) -> Result<NtorClientHandshake, HandshakeError> {
    if msg.len() != CLIENT_HANDSHAKE_LEN {
        return Err(HandshakeError::BadLength);
    }
    let mut r = Reader::new(msg);
    Ok(NtorClientHandshake {
        node_id: r.take_array()?,
        key_id: r.take_array()?,
        client_pk: r.take_array()?,
    })
}

/// What a client remembers between sending its onionskin and receiving the reply.
pub struct NtorClientState {
    relay: NtorPublicKey,
    x: StaticSecret,
    big_x: PublicKey,
}

impl std::fmt::Debug for NtorClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtorClientState")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// Client, step 1: makes an ephemeral key and the onionskin for `relay`.
pub fn client1(
    rng: &mut impl CryptoRngCore,
    relay: &NtorPublicKey,
) -> (NtorClientState, [u8; CLIENT_HANDSHAKE_LEN]) {
    client1_with_secret(StaticSecret::random_from_rng(rng), relay)
}

fn client1_with_secret(
    x: StaticSecret,
    relay: &NtorPublicKey,
) -> (NtorClientState, [u8; CLIENT_HANDSHAKE_LEN]) {
    let big_x = PublicKey::from(&x);
    let mut msg = [0u8; CLIENT_HANDSHAKE_LEN];
    msg[..20].copy_from_slice(relay.id.as_bytes());
    msg[20..52].copy_from_slice(relay.pk.as_bytes());
    msg[52..].copy_from_slice(big_x.as_bytes());
    let state = NtorClientState {
        relay: relay.clone(),
        x,
        big_x,
    };
    (state, msg)
}

/// Relay side: checks NODEID, picks the onion key by KEYID, and returns the 64-byte reply and
/// the circuit keys.
pub fn server(
    rng: &mut impl CryptoRngCore,
    keys: &NtorServerKeys,
    msg: &[u8],
) -> Result<([u8; SERVER_HANDSHAKE_LEN], KeyGenerator), HandshakeError> {
    server_with_secret(StaticSecret::random_from_rng(rng), keys, msg)
}

fn server_with_secret(
    y: StaticSecret,
    keys: &NtorServerKeys,
    msg: &[u8],
) -> Result<([u8; SERVER_HANDSHAKE_LEN], KeyGenerator), HandshakeError> {
    let hs = parse_client_handshake(msg)?;
    if &hs.node_id != keys.id.as_bytes() {
        return Err(HandshakeError::WrongNodeId);
    }
    let kp = keys.find(&hs.key_id).ok_or(HandshakeError::UnknownKeyId)?;
    let big_x = PublicKey::from(hs.client_pk);
    let big_y = PublicKey::from(&y);
    let xy = checked_dh(&y, &big_x)?;
    let xb = kp.dh(&big_x)?;
    let (key_seed, auth) = derive(&xy, &xb, &keys.id, kp.public(), &big_x, &big_y);
    let mut reply = [0u8; SERVER_HANDSHAKE_LEN];
    reply[..32].copy_from_slice(big_y.as_bytes());
    reply[32..].copy_from_slice(&auth);
    Ok((reply, KeyGenerator::rfc5869(*key_seed, M_EXPAND)))
}

/// Client, step 2: checks the relay's AUTH and returns the circuit keys.
pub fn client2(state: NtorClientState, reply: &[u8]) -> Result<KeyGenerator, HandshakeError> {
    if reply.len() != SERVER_HANDSHAKE_LEN {
        return Err(HandshakeError::BadLength);
    }
    let mut r = Reader::new(reply);
    let big_y = PublicKey::from(r.take_array::<32>()?);
    let auth: [u8; 32] = r.take_array()?;
    let yx = checked_dh(&state.x, &big_y)?;
    let bx = checked_dh(&state.x, &state.relay.pk)?;
    let (key_seed, expected) = derive(
        &yx,
        &bx,
        &state.relay.id,
        &state.relay.pk,
        &state.big_x,
        &big_y,
    );
    if !bool::from(expected.ct_eq(&auth)) {
        return Err(HandshakeError::BadAuth);
    }
    Ok(KeyGenerator::rfc5869(*key_seed, M_EXPAND))
}

/// EXP(pk, sk), refusing the all-zero output of a small-order point.
pub(crate) fn checked_dh(
    sk: &StaticSecret,
    pk: &PublicKey,
) -> Result<SharedSecret, HandshakeError> {
    let s = sk.diffie_hellman(pk);
    if s.was_contributory() {
        Ok(s)
    } else {
        Err(HandshakeError::BadDh)
    }
}

/// KEY_SEED and AUTH from the two DH outputs (same on both sides).
fn derive(
    dh1: &SharedSecret,
    dh2: &SharedSecret,
    id: &RsaIdentity,
    big_b: &PublicKey,
    big_x: &PublicKey,
    big_y: &PublicKey,
) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let secret_input: [&[u8]; 7] = [
        dh1.as_bytes(),
        dh2.as_bytes(),
        id.as_bytes(),
        big_b.as_bytes(),
        big_x.as_bytes(),
        big_y.as_bytes(),
        PROTOID,
    ];
    let key_seed = Zeroizing::new(hmac_sha256(T_KEY, &secret_input));
    let verify = Zeroizing::new(hmac_sha256(T_VERIFY, &secret_input));
    let auth = hmac_sha256(
        T_MAC,
        &[
            &verify[..],
            id.as_bytes(),
            big_b.as_bytes(),
            big_y.as_bytes(),
            big_x.as_bytes(),
            PROTOID,
            b"Server",
        ],
    );
    (key_seed, auth)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn setup(seed: u64) -> (StdRng, NtorServerKeys, NtorPublicKey) {
        let mut rng = StdRng::seed_from_u64(seed);
        let id = RsaIdentity::from_bytes([7u8; 20]);
        let keys = NtorServerKeys {
            id,
            current: NtorOnionKeypair::generate(&mut rng),
            previous: Some(NtorOnionKeypair::generate(&mut rng)),
        };
        let public = NtorPublicKey {
            id,
            pk: *keys.current.public(),
        };
        (rng, keys, public)
    }

    #[test]
    fn round_trip_current_and_previous_key() {
        let (mut rng, keys, mut public) = setup(1);
        for _ in 0..2 {
            let (state, onionskin) = client1(&mut rng, &public);
            let (reply, server_keys) = server(&mut rng, &keys, &onionskin).unwrap();
            let client_keys = client2(state, &reply).unwrap();
            assert_eq!(
                &client_keys.expand(92).unwrap()[..],
                &server_keys.expand(92).unwrap()[..]
            );
            public.pk = *keys.previous.as_ref().unwrap().public();
        }
    }

    // Cross-check the HMAC/HKDF wiring against a from-scratch computation of the spec's
    // formulas with fixed keys.
    #[test]
    fn matches_spec_formulas_with_fixed_keys() {
        let b = StaticSecret::from([1u8; 32]);
        let x = StaticSecret::from([2u8; 32]);
        let y = StaticSecret::from([3u8; 32]);
        let id = RsaIdentity::from_bytes([9u8; 20]);
        let keys = NtorServerKeys {
            id,
            current: NtorOnionKeypair::from_secret(b.clone()),
            previous: None,
        };
        let big_b = PublicKey::from(&b);
        let (state, onionskin) = client1_with_secret(x.clone(), &NtorPublicKey { id, pk: big_b });
        let (reply, skeys) = server_with_secret(y.clone(), &keys, &onionskin).unwrap();
        let big_x = PublicKey::from(&x);
        let big_y = PublicKey::from(&y);
        let mut secret_input = Vec::new();
        secret_input.extend_from_slice(x.diffie_hellman(&big_y).as_bytes());
        secret_input.extend_from_slice(x.diffie_hellman(&big_b).as_bytes());
        secret_input.extend_from_slice(&[9u8; 20]);
        secret_input.extend_from_slice(big_b.as_bytes());
        secret_input.extend_from_slice(big_x.as_bytes());
        secret_input.extend_from_slice(big_y.as_bytes());
        secret_input.extend_from_slice(PROTOID);
        let expected = crate::kdf::kdf_rfc5869(&secret_input, T_KEY, M_EXPAND, 92).unwrap();
        assert_eq!(&skeys.expand(92).unwrap()[..], &expected[..]);
        assert_eq!(&reply[..32], big_y.as_bytes());
        let ckeys = client2(state, &reply).unwrap();
        assert_eq!(&ckeys.expand(92).unwrap()[..], &expected[..]);
    }

    // Test vector as recorded in Arti's ntor tests (crates/tor-proto/src/crypto/handshake/
    // ntor.rs, `testvec`): fixed b, x, y and identity, with the expected onionskin, reply and
    // 72 bytes of key material.
    #[test]
    fn fixed_vector() {
        let hx = |s: &str| hex::decode(s).unwrap();
        let hx32 = |s: &str| -> [u8; 32] { hx(s).try_into().unwrap() };
        let b = StaticSecret::from(hx32(
            "4820544f4c4420594f5520444f474954204b454550532048415050454e494e47",
        ));
        let x = StaticSecret::from(hx32(
            "706f6461792069207075742e2e2e2e2e2e2e2e4a454c4c59206f6e2074686973",
        ));
        let y = StaticSecret::from(hx32(
            "70686520737175697272656c2e2e2e2e2e2e2e2e686173206869732067616d65",
        ));
        let id = RsaIdentity::from_bytes(
            hx("69546f6c64596f7541626f75745374616972732e")
                .try_into()
                .unwrap(),
        );
        let keys = NtorServerKeys {
            id,
            current: NtorOnionKeypair::from_secret(b),
            previous: None,
        };
        assert_eq!(
            keys.current.public().as_bytes().to_vec(),
            hx("ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471")
        );
        let public = NtorPublicKey {
            id,
            pk: *keys.current.public(),
        };
        let (state, onionskin) = client1_with_secret(x, &public);
        assert_eq!(
            onionskin.to_vec(),
            hx("69546f6c64596f7541626f75745374616972732eccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078")
        );
        let (reply, skeys) = server_with_secret(y, &keys, &onionskin).unwrap();
        assert_eq!(
            reply.to_vec(),
            hx("390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a371cbdf68b89923e1f85e8e18ee6e805ea333fe4849c790ffd2670bd80fec95cc8")
        );
        let expected = hx("0c62dee7f48893370d0ef896758d35729867beef1a5121df80e00f79ed349af39b51cae125719182f19d932a667dae1afbf2e336e6910e7822223e763afad0a13342157969dc6b79");
        let ckeys = client2(state, &reply).unwrap();
        assert_eq!(&skeys.expand(72).unwrap()[..], &expected[..]);
        assert_eq!(&ckeys.expand(72).unwrap()[..], &expected[..]);
        let mut re = Vec::new();
        parse_client_handshake(&onionskin).unwrap().encode(&mut re);
        assert_eq!(re, onionskin.to_vec());
    }

    #[test]
    fn server_refuses_wrong_node_unknown_key_bad_length_and_zero_point() {
        let (mut rng, keys, public) = setup(2);
        let (_, onionskin) = client1(&mut rng, &public);

        let mut wrong_id = onionskin;
        wrong_id[0] ^= 1;
        assert_eq!(
            server(&mut rng, &keys, &wrong_id).unwrap_err(),
            HandshakeError::WrongNodeId
        );
        let mut wrong_key = onionskin;
        wrong_key[20] ^= 1;
        assert_eq!(
            server(&mut rng, &keys, &wrong_key).unwrap_err(),
            HandshakeError::UnknownKeyId
        );
        assert_eq!(
            server(&mut rng, &keys, &onionskin[..83]).unwrap_err(),
            HandshakeError::BadLength
        );
        let mut zero_x = onionskin;
        zero_x[52..].fill(0);
        assert_eq!(
            server(&mut rng, &keys, &zero_x).unwrap_err(),
            HandshakeError::BadDh
        );
    }

    #[test]
    fn client_refuses_tampered_reply() {
        let (mut rng, keys, public) = setup(3);
        for byte in [0usize, 31, 32, 63] {
            let (state, onionskin) = client1(&mut rng, &public);
            let (mut reply, _) = server(&mut rng, &keys, &onionskin).unwrap();
            reply[byte] ^= 0x40;
            let err = client2(state, &reply).unwrap_err();
            assert!(matches!(
                err,
                HandshakeError::BadAuth | HandshakeError::BadDh
            ));
        }
        let (state, _) = client1(&mut rng, &public);
        let mut zero_y = [0u8; 64];
        zero_y[40] = 1;
        assert_eq!(client2(state, &zero_y).unwrap_err(), HandshakeError::BadDh);
        let (state, _) = client1(&mut rng, &public);
        assert_eq!(
            client2(state, &[0u8; 63]).unwrap_err(),
            HandshakeError::BadLength
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let (mut rng, keys, public) = setup(4);
            let _ = parse_client_handshake(&bytes);
            let _ = server(&mut rng, &keys, &bytes);
            let (state, _) = client1(&mut rng, &public);
            let _ = client2(state, &bytes);
        }

        #[test]
        fn onionskin_round_trips(node_id in any::<[u8; 20]>(), key_id in any::<[u8; 32]>(),
                                 client_pk in any::<[u8; 32]>()) {
            let hs = NtorClientHandshake { node_id, key_id, client_pk };
            let mut out = Vec::new();
            hs.encode(&mut out);
            prop_assert_eq!(parse_client_handshake(&out).unwrap(), hs);
        }
    }
}
