//! The CREATE_FAST / CREATED_FAST handshake
//! ([tor-spec §5.1.5](https://spec.torproject.org/tor-spec/create-created-cells.html#create_fast)).
//!
//! The client sends 20 random bytes X; the relay answers with 20 random bytes Y and KH, the
//! first 20 bytes of `KDF-TOR(X | Y)` (tor-spec §5.2.1). This relies entirely on the TLS link for
//! authentication and secrecy, so it is only usable for the first hop; tor disables it by default
//! (`usecreatefast`), but relays must still answer it.
//!
//! The returned [`KeyGenerator`] starts after KH, at Df (see [`crate::kdf`] for the layout).

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{HandshakeError, KeyGenerator, HASH_LEN};

/// Length of the CREATE_FAST handshake body (X).
pub const CLIENT_HANDSHAKE_LEN: usize = HASH_LEN;
/// Length of the CREATED_FAST handshake body (Y | KH).
pub const SERVER_HANDSHAKE_LEN: usize = 2 * HASH_LEN;

/// What a client remembers between sending CREATE_FAST and receiving CREATED_FAST.
pub struct CreateFastClientState {
    x: Zeroizing<[u8; HASH_LEN]>,
}

impl std::fmt::Debug for CreateFastClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateFastClientState")
            .finish_non_exhaustive()
    }
}

/// Client, step 1: picks X and returns the CREATE_FAST body.
pub fn client1(
    rng: &mut impl CryptoRngCore,
) -> (CreateFastClientState, [u8; CLIENT_HANDSHAKE_LEN]) {
    let mut x = Zeroizing::new([0u8; HASH_LEN]);
    rng.fill_bytes(&mut x[..]);
    let msg = *x;
    (CreateFastClientState { x }, msg)
}

/// Relay side: answers a CREATE_FAST body with the CREATED_FAST body and the circuit keys.
pub fn server(
    rng: &mut impl CryptoRngCore,
    msg: &[u8],
) -> Result<([u8; SERVER_HANDSHAKE_LEN], KeyGenerator), HandshakeError> {
    let x = parse_client_handshake(msg)?;
    let mut y = [0u8; HASH_LEN];
    rng.fill_bytes(&mut y);
    let k0 = k0(&x, &y);
    let kh = crate::kdf::kdf_tor(&k0[..], HASH_LEN)?;
    let mut reply = [0u8; SERVER_HANDSHAKE_LEN];
    reply[..HASH_LEN].copy_from_slice(&y);
    reply[HASH_LEN..].copy_from_slice(&kh);
    Ok((reply, KeyGenerator::tor(&k0[..], HASH_LEN)))
}

/// Client, step 2: checks KH in the CREATED_FAST body and returns the circuit keys.
pub fn client2(state: CreateFastClientState, reply: &[u8]) -> Result<KeyGenerator, HandshakeError> {
    let (y, kh) = parse_server_handshake(reply)?;
    let k0 = k0(&state.x, &y);
    let expected = crate::kdf::kdf_tor(&k0[..], HASH_LEN)?;
    if !bool::from(expected.ct_eq(&kh)) {
        return Err(HandshakeError::BadAuth);
    }
    Ok(KeyGenerator::tor(&k0[..], HASH_LEN))
}

/// Parses a CREATE_FAST body into X. Fuzz entry point for the relay side.
///
/// The CREATE_FAST cell body is padded to the cell length, so only the first 20 bytes count.
pub fn parse_client_handshake(msg: &[u8]) -> Result<[u8; HASH_LEN], HandshakeError> {
    msg.get(..HASH_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::BadLength)
}

/// Parses a CREATED_FAST body into (Y, KH); trailing cell padding is ignored.
pub fn parse_server_handshake(
    msg: &[u8],
) -> Result<([u8; HASH_LEN], [u8; HASH_LEN]), HandshakeError> {
    let y = msg
        .get(..HASH_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::BadLength)?;
    let kh = msg
        .get(HASH_LEN..2 * HASH_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::BadLength)?;
    Ok((y, kh))
}

/// `K0 = X | Y`.
fn k0(x: &[u8; HASH_LEN], y: &[u8; HASH_LEN]) -> Zeroizing<[u8; 2 * HASH_LEN]> {
    let mut k0 = Zeroizing::new([0u8; 2 * HASH_LEN]);
    k0[..HASH_LEN].copy_from_slice(x);
    k0[HASH_LEN..].copy_from_slice(y);
    k0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use crate::kdf::kdf_tor;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn round_trip_agrees() {
        let mut rng = StdRng::seed_from_u64(1);
        let (state, create) = client1(&mut rng);
        let (created, server_keys) = server(&mut rng, &create).unwrap();
        let client_keys = client2(state, &created).unwrap();
        assert_eq!(
            &client_keys.expand(92).unwrap()[..],
            &server_keys.expand(92).unwrap()[..]
        );
        // Layout: KH | Df | Db | Kf | Kb over X | Y, generator positioned at Df.
        let mut k0 = create.to_vec();
        k0.extend_from_slice(&created[..20]);
        let full = kdf_tor(&k0, 112).unwrap();
        assert_eq!(&created[20..], &full[..20]);
        assert_eq!(&client_keys.expand(92).unwrap()[..], &full[20..]);
        let t = client_keys.tor1_keys().unwrap();
        assert_eq!(&t.df[..], &full[20..40]);
        assert_eq!(&t.kb[..], &full[76..92]);
    }

    #[test]
    fn fixed_values() {
        // X = 00..13, Y = 14..27: KH is the first 20 bytes of KDF-TOR(X|Y).
        let x: [u8; 20] = core::array::from_fn(|i| i as u8);
        let y: [u8; 20] = core::array::from_fn(|i| (i + 20) as u8);
        let k0: Vec<u8> = (0u8..40).collect();
        let full = kdf_tor(&k0, 20).unwrap();
        let mut reply = y.to_vec();
        reply.extend_from_slice(&full);
        let state = CreateFastClientState {
            x: Zeroizing::new(x),
        };
        assert!(client2(state, &reply).is_ok());
    }

    #[test]
    fn tampered_and_short_replies_rejected() {
        let mut rng = StdRng::seed_from_u64(2);
        let (state, create) = client1(&mut rng);
        let (mut created, _) = server(&mut rng, &create).unwrap();
        created[39] ^= 1;
        assert_eq!(
            client2(state, &created).unwrap_err(),
            HandshakeError::BadAuth
        );
        let (state, _) = client1(&mut rng);
        assert_eq!(
            client2(state, &created[..39]).unwrap_err(),
            HandshakeError::BadLength
        );
        assert_eq!(
            server(&mut rng, &[0u8; 19]).unwrap_err(),
            HandshakeError::BadLength
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut rng = StdRng::seed_from_u64(3);
            let _ = server(&mut rng, &bytes);
            let (state, _) = client1(&mut rng);
            let _ = client2(state, &bytes);
        }

        #[test]
        fn parse_round_trips(y in any::<[u8; 20]>(), kh in any::<[u8; 20]>()) {
            let mut m = y.to_vec();
            m.extend_from_slice(&kh);
            prop_assert_eq!(parse_server_handshake(&m).unwrap(), (y, kh));
            prop_assert_eq!(parse_client_handshake(&y).unwrap(), y);
        }
    }
}
