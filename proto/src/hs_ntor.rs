//! The onion service hs-ntor handshake
//! ([rend-spec-v3 §3.3.2 "NTOR-WITH-EXTRA-DATA"](https://spec.torproject.org/rend-spec/introduction-protocol.html#NTOR-WITH-EXTRA-DATA)
//! and §4.2.1 key expansion).
//!
//! The client encrypts the INTRODUCE1 plaintext to the service's introduction encryption key B
//! (non-forward-secure), and the service answers in RENDEZVOUS1 with `Y | AUTH`, giving both
//! ends forward-secure keys for the end-to-end hop.
//!
//! ```text
//! PROTOID  = "tor-hs-ntor-curve25519-sha3-256-1"
//! MAC(k,m) = SHA3_256(htonll(len(k)) | k | m)          KDF(m, n) = SHAKE_256(m)[..n]
//!
//! intro_secret_hs_input = EXP(B,x) | AUTH_KEY | X | B | PROTOID
//! info                  = m_hsexpand | N_hs_subcred
//! ENC_KEY | MAC_KEY     = KDF(intro_secret_hs_input | t_hsenc | info, 32 + 32)
//! ENCRYPTED             = CLIENT_PK X (32) | AES-256-CTR(ENC_KEY, zero IV, plaintext) | MAC (32)
//! MAC                   = MAC(MAC_KEY, intro_header | X | encrypted_data)
//!
//! rend_secret_hs_input  = EXP(X,y) | EXP(X,b) | AUTH_KEY | B | X | Y | PROTOID
//! NTOR_KEY_SEED         = MAC(rend_secret_hs_input, t_hsenc)
//! verify                = MAC(rend_secret_hs_input, t_hsverify)
//! AUTH_INPUT_MAC        = MAC(verify | AUTH_KEY | B | Y | X | PROTOID | "Server", t_hsmac)
//! HANDSHAKE_INFO        = Y (32) | AUTH_INPUT_MAC (32)
//! K                     = KDF(NTOR_KEY_SEED | m_hsexpand, 128) = Df | Db | Kf | Kb (32 each)
//! ```
//!
//! The `intro_header` covered by the MAC is **every byte of the INTRODUCE1 body before
//! ENCRYPTED**, starting at LEGACY_KEY_ID (the spec text says "from AUTH_KEY", but C tor and Arti
//! MAC the whole header, and the test vector below, produced by C tor, confirms it).

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::hs_msg::{HandshakeInfo, IntroduceEncrypted};
use crate::ids::Ed25519Identity;
use crate::kdf::{hs_mac, shake256, HandshakeError, KeyGenerator};
use crate::keys::NtorOnionKeypair;
use crate::ntor::checked_dh;
use crate::ntor_v3::aes256_ctr;

const PROTOID: &[u8] = b"tor-hs-ntor-curve25519-sha3-256-1";
const T_HSENC: &[u8] = b"tor-hs-ntor-curve25519-sha3-256-1:hs_key_extract";
const T_HSVERIFY: &[u8] = b"tor-hs-ntor-curve25519-sha3-256-1:hs_verify";
const T_HSMAC: &[u8] = b"tor-hs-ntor-curve25519-sha3-256-1:hs_mac";
const M_HSEXPAND: &[u8] = b"tor-hs-ntor-curve25519-sha3-256-1:hs_key_expand";

/// PK_PUBKEY_LEN = MAC_LEN = S_KEY_LEN = 32.
const LEN: usize = 32;

/// Length of HANDSHAKE_INFO in RENDEZVOUS1/RENDEZVOUS2 (SERVER_PK | AUTH).
pub const HANDSHAKE_INFO_LEN: usize = HandshakeInfo::LEN;
/// Length of the ENCRYPTED section of INTRODUCE1 around an empty plaintext (CLIENT_PK | MAC).
pub const INTRO_ENCRYPTED_OVERHEAD: usize = 2 * LEN;

/// What a client knows about the service at one introduction point.
#[derive(Debug, Clone)]
pub struct HsNtorServiceInfo {
    /// AUTH_KEY: the introduction point authentication key from the descriptor.
    pub auth_key: Ed25519Identity,
    /// B: the service's introduction encryption key (`enc-key ntor`) from the descriptor.
    pub enc_key: PublicKey,
    /// N_hs_subcred for the current time period.
    pub subcredential: [u8; 32],
}

/// The service's secrets for one introduction point.
#[derive(Debug, Clone)]
pub struct HsNtorServiceKeys {
    /// AUTH_KEY of this introduction point.
    pub auth_key: Ed25519Identity,
    /// (b, B): the introduction encryption keypair.
    pub enc_keypair: NtorOnionKeypair,
}

/// The parsed ENCRYPTED section of an INTRODUCE1/INTRODUCE2 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HsNtorIntroEncrypted<'a> {
    /// CLIENT_PK (X).
    pub client_pk: [u8; 32],
    /// ENCRYPTED_DATA.
    pub encrypted_data: &'a [u8],
    /// MAC.
    pub mac: [u8; 32],
}

impl HsNtorIntroEncrypted<'_> {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put(&self.client_pk);
        out.put(self.encrypted_data);
        out.put(&self.mac);
    }
}

/// Splits the ENCRYPTED section of an INTRODUCE2 body. Fuzz entry point for the service side.
pub fn parse_intro_encrypted(encrypted: &[u8]) -> Result<HsNtorIntroEncrypted<'_>, HandshakeError> {
    // The only failure is a section shorter than INTRO_ENCRYPTED_OVERHEAD.
    let (client_pk, encrypted_data, mac) =
        IntroduceEncrypted::split(encrypted).map_err(|_| HandshakeError::BadLength)?;
    Ok(HsNtorIntroEncrypted {
        client_pk,
        encrypted_data,
        mac,
    })
}

/// What a client remembers between INTRODUCE1 and RENDEZVOUS2.
pub struct HsNtorClientState {
    service: HsNtorServiceInfo,
    x: StaticSecret,
    big_x: PublicKey,
}

impl std::fmt::Debug for HsNtorClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsNtorClientState")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// What the service remembers between decrypting INTRODUCE2 and sending RENDEZVOUS1.
pub struct HsNtorServiceState {
    auth_key: Ed25519Identity,
    big_b: PublicKey,
    big_x: PublicKey,
    xb: SharedSecret,
}

impl std::fmt::Debug for HsNtorServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsNtorServiceState")
            .field("auth_key", &self.auth_key)
            .finish_non_exhaustive()
    }
}

/// Client: encrypts `plaintext` (already padded as the caller wants) for the service and appends
/// the ENCRYPTED section `CLIENT_PK | ENCRYPTED_DATA | MAC` to `out`.
///
/// `intro_header` is the INTRODUCE1 body up to ENCRYPTED (LEGACY_KEY_ID through the
/// extensions), exactly as it will be sent.
pub fn client_send_intro(
    rng: &mut impl CryptoRngCore,
    service: &HsNtorServiceInfo,
    intro_header: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<HsNtorClientState, HandshakeError> {
    client_send_intro_with_secret(
        StaticSecret::random_from_rng(rng),
        service,
        intro_header,
        plaintext,
        out,
    )
}

fn client_send_intro_with_secret(
    x: StaticSecret,
    service: &HsNtorServiceInfo,
    intro_header: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<HsNtorClientState, HandshakeError> {
    let big_x = PublicKey::from(&x);
    let bx = checked_dh(&x, &service.enc_key)?;
    let (enc_key, mac_key) = intro_keys(
        &bx,
        &service.auth_key,
        &big_x,
        &service.enc_key,
        &service.subcredential,
    );
    let start = out.len();
    out.put(big_x.as_bytes());
    out.put(plaintext);
    aes256_ctr(&enc_key, out.get_mut(start + LEN..).unwrap_or_default());
    let mac = hs_mac(
        &mac_key[..],
        &[intro_header, out.get(start..).unwrap_or_default()],
    );
    out.put(&mac);
    Ok(HsNtorClientState {
        service: service.clone(),
        x,
        big_x,
    })
}

/// Service: checks the MAC of an INTRODUCE2's ENCRYPTED section under each candidate
/// subcredential (current and neighbouring time periods) and returns the decrypted plaintext.
///
/// The caller must check for replays before answering with [`service_send_rendezvous`].
pub fn service_recv_intro(
    keys: &HsNtorServiceKeys,
    subcredentials: &[[u8; 32]],
    intro_header: &[u8],
    encrypted: &[u8],
) -> Result<(HsNtorServiceState, Zeroizing<Vec<u8>>), HandshakeError> {
    let enc = parse_intro_encrypted(encrypted)?;
    let big_x = PublicKey::from(enc.client_pk);
    let big_b = *keys.enc_keypair.public();
    let xb = keys.enc_keypair.dh(&big_x)?;
    let signed = encrypted
        .get(..encrypted.len() - LEN)
        .ok_or(HandshakeError::BadLength)?;
    for subcredential in subcredentials {
        let (enc_key, mac_key) = intro_keys(&xb, &keys.auth_key, &big_x, &big_b, subcredential);
        let expected = hs_mac(&mac_key[..], &[intro_header, signed]);
        if bool::from(expected.ct_eq(&enc.mac)) {
            let mut plaintext = Zeroizing::new(enc.encrypted_data.to_vec());
            aes256_ctr(&enc_key, &mut plaintext);
            let state = HsNtorServiceState {
                auth_key: keys.auth_key,
                big_b,
                big_x,
                xb,
            };
            return Ok((state, plaintext));
        }
    }
    Err(HandshakeError::BadAuth)
}

/// Service: makes the RENDEZVOUS1 HANDSHAKE_INFO (`Y | AUTH`) and the end-to-end keys.
pub fn service_send_rendezvous(
    rng: &mut impl CryptoRngCore,
    state: HsNtorServiceState,
) -> Result<([u8; HANDSHAKE_INFO_LEN], KeyGenerator), HandshakeError> {
    service_send_rendezvous_with_secret(StaticSecret::random_from_rng(rng), state)
}

fn service_send_rendezvous_with_secret(
    y: StaticSecret,
    state: HsNtorServiceState,
) -> Result<([u8; HANDSHAKE_INFO_LEN], KeyGenerator), HandshakeError> {
    let big_y = PublicKey::from(&y);
    let xy = checked_dh(&y, &state.big_x)?;
    let (key_seed, auth) = rend_values(
        &xy,
        &state.xb,
        &state.auth_key,
        &state.big_b,
        &state.big_x,
        &big_y,
    );
    let mut info = [0u8; HANDSHAKE_INFO_LEN];
    info[..LEN].copy_from_slice(big_y.as_bytes());
    info[LEN..].copy_from_slice(&auth);
    Ok((info, hs_key_generator(&key_seed)))
}

/// Client: checks the HANDSHAKE_INFO of RENDEZVOUS2 and returns the end-to-end keys.
///
/// Only the first 64 bytes are read: RENDEZVOUS2 may carry padding after them.
pub fn client_recv_rendezvous(
    state: HsNtorClientState,
    handshake_info: &[u8],
) -> Result<KeyGenerator, HandshakeError> {
    let HandshakeInfo {
        server_pk,
        auth: their_auth,
    } = HandshakeInfo::decode(&mut Reader::new(handshake_info))
        .map_err(|_| HandshakeError::BadLength)?;
    let big_y = PublicKey::from(server_pk);
    let yx = checked_dh(&state.x, &big_y)?;
    let bx = checked_dh(&state.x, &state.service.enc_key)?;
    let (key_seed, auth) = rend_values(
        &yx,
        &bx,
        &state.service.auth_key,
        &state.service.enc_key,
        &state.big_x,
        &big_y,
    );
    if !bool::from(auth.ct_eq(&their_auth)) {
        return Err(HandshakeError::BadAuth);
    }
    Ok(hs_key_generator(&key_seed))
}

/// (ENC_KEY, MAC_KEY) for the INTRODUCE1 encrypted section.
fn intro_keys(
    bx: &SharedSecret,
    auth_key: &Ed25519Identity,
    big_x: &PublicKey,
    big_b: &PublicKey,
    subcredential: &[u8; 32],
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let keys = shake256(
        &[
            bx.as_bytes(),
            auth_key.as_bytes(),
            big_x.as_bytes(),
            big_b.as_bytes(),
            PROTOID,
            T_HSENC,
            M_HSEXPAND,
            subcredential,
        ],
        2 * LEN,
    );
    let mut enc = Zeroizing::new([0u8; 32]);
    let mut mac = Zeroizing::new([0u8; 32]);
    enc.copy_from_slice(keys.get(..LEN).unwrap_or(&[0; 32]));
    mac.copy_from_slice(keys.get(LEN..).unwrap_or(&[0; 32]));
    (enc, mac)
}

/// (NTOR_KEY_SEED, AUTH_INPUT_MAC) from the two DH outputs.
fn rend_values(
    dh1: &SharedSecret,
    dh2: &SharedSecret,
    auth_key: &Ed25519Identity,
    big_b: &PublicKey,
    big_x: &PublicKey,
    big_y: &PublicKey,
) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let mut rend_secret_hs_input = Zeroizing::new(Vec::with_capacity(5 * 32 + PROTOID.len()));
    for part in [
        dh1.as_bytes(),
        dh2.as_bytes(),
        auth_key.as_bytes(),
        big_b.as_bytes(),
        big_x.as_bytes(),
        big_y.as_bytes(),
    ] {
        rend_secret_hs_input.put(part);
    }
    rend_secret_hs_input.put(PROTOID);
    let key_seed = Zeroizing::new(hs_mac(&rend_secret_hs_input, &[T_HSENC]));
    let verify = Zeroizing::new(hs_mac(&rend_secret_hs_input, &[T_HSVERIFY]));
    let mut auth_input = Vec::with_capacity(5 * 32 + PROTOID.len() + 6);
    for part in [
        &verify[..],
        auth_key.as_bytes(),
        big_b.as_bytes(),
        big_y.as_bytes(),
        big_x.as_bytes(),
        PROTOID,
        b"Server",
    ] {
        auth_input.put(part);
    }
    let auth = hs_mac(&auth_input, &[T_HSMAC]);
    (key_seed, auth)
}

/// `K = KDF(NTOR_KEY_SEED | m_hsexpand, ...)` (rend-spec-v3 §4.2.1).
fn hs_key_generator(key_seed: &[u8; 32]) -> KeyGenerator {
    let mut input = Vec::with_capacity(32 + M_HSEXPAND.len());
    input.put(key_seed);
    input.put(M_HSEXPAND);
    KeyGenerator::shake256(input, 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use crate::kdf::HS_KEY_MATERIAL_LEN;
    use crate::test_util::{unhex, unhex_array};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    // MAC known answers from C tor's src/test/hs_ntor_ref.py (as quoted in Arti's tests).
    #[test]
    fn hs_mac_vectors() {
        assert_eq!(
            hs_mac(b"who", &[b"knows?"]),
            unhex_array("5e7da329630fdaa3eab7498bb1dc625bbb9ca968f10392b6af92d51d5db17473")
        );
        assert_eq!(
            hs_mac(b"gone", &[b"b", b"y"]),
            unhex_array("90071aabb06d3f7c777db41542f4790c7dd9e2e7b2b842f54c9c42bbdb37e9a0")
        );
    }

    // rend-spec-v3 Appendix G.1, "Test vectors for hs-ntor / NTOR-WITH-EXTRA-DATA": a full
    // INTRODUCE1 / RENDEZVOUS1 exchange dumped from C tor on a Chutney network (the same data
    // Arti's hs_ntor "testvec" test records).
    #[test]
    fn c_tor_vector() {
        let auth_key = Ed25519Identity::from_bytes(unhex_array(
            "34E171E4358E501BFF21ED907E96AC6BFEF697C779D040BBAF49ACC30FC5D21F",
        ));
        let subcredential =
            unhex_array("0085D26A9DEBA252263BF0231AEAC59B17CA11BAD8A218238AD6487CBAD68B57");
        let b_pk = unhex_array("8E5127A40E83AABF6493E41F142B6EE3604B85A3961CD7E38D247239AFF71979");
        let b_sk = unhex_array("A0ED5DBF94EEB2EDB3B514E4CF6ABFF6022051CC5F103391F1970A3FCD15296A");
        let x = StaticSecret::from(unhex_array(
            "60B4D6BF5234DCF87A4E9D7487BDF3F4A69B6729835E825CA29089CFDDA1E341",
        ));
        let y = StaticSecret::from(unhex_array(
            "68CB5188CA0CD7924250404FAB54EE1392D3D2B9C049A2E446513875952F8F55",
        ));
        let intro_header = unhex(
            "000000000000000000000000000000000000000002002034E171E4358E501BFF
            21ED907E96AC6BFEF697C779D040BBAF49ACC30FC5D21F00",
        );
        let plaintext = unhex(
            "6BD364C12638DD5C3BE23D76ACA05B04E6CE932C0101000100200DE6130E4FCA
             C4EDDA24E21220CC3EADAE403EF6B7D11C8273AC71908DE565450300067F0000
             0113890214F823C4F8CC085C792E0AEE0283FE00AD7520B37D0320728D5DF39B
             7B7077A0118A900FF4456C382F0041300ACF9C58E51C392795EF870000000000
             0000000000000000000000000000000000000000000000000000000000000000
             000000000000000000000000000000000000000000000000000000000000",
        );
        let expected_cell = unhex(
            "000000000000000000000000000000000000000002002034E171E4358E501BFF
             21ED907E96AC6BFEF697C779D040BBAF49ACC30FC5D21F00BF04348B46D09AED
             726F1D66C618FDEA1DE58E8CB8B89738D7356A0C59111D5DADBECCCB38E37830
             4DCC179D3D9E437B452AF5702CED2CCFEC085BC02C4C175FA446525C1B9D5530
             563C362FDFFB802DAB8CD9EBC7A5EE17DA62E37DEEB0EB187FBB48C63298B0E8
             3F391B7566F42ADC97C46BA7588278273A44CE96BC68FFDAE31EF5F0913B9A9C
             7E0F173DBC0BDDCD4ACB4C4600980A7DDD9EAEC6E7F3FA3FC37CD95E5B8BFB3E
             35717012B78B4930569F895CB349A07538E42309C993223AEA77EF8AEA64F25D
             DEE97DA623F1AEC0A47F150002150455845C385E5606E41A9A199E7111D54EF2
             D1A51B7554D8B3692D85AC587FB9E69DF990EFB776D8",
        );
        let expected_reply = unhex(
            "8fbe0db4d4a9c7ff46701e3e0ee7fd05cd28be4f302460addeec9e93354ee700
             4A92E8437B8424D5E5EC279245D5C72B25A0327ACF6DAF902079FCB643D8B208",
        );
        let key_seed: [u8; 32] =
            unhex_array("4D0C72FE8AFF35559D95ECC18EB5A36883402B28CDFD48C8A530A5A3D7D578DB");

        let keypair = NtorOnionKeypair::from_secret(StaticSecret::from(b_sk));
        assert_eq!(keypair.public().as_bytes(), &b_pk);
        let service = HsNtorServiceInfo {
            auth_key,
            enc_key: PublicKey::from(b_pk),
            subcredential,
        };

        // Client builds the cell byte for byte.
        let mut cell = intro_header.clone();
        let cstate =
            client_send_intro_with_secret(x, &service, &intro_header, &plaintext, &mut cell)
                .unwrap();
        assert_eq!(cell, expected_cell);
        let encrypted = &cell[intro_header.len()..];
        let parsed = parse_intro_encrypted(encrypted).unwrap();
        let mut re = Vec::new();
        parsed.encode(&mut re);
        assert_eq!(re, encrypted);

        // Service decrypts (trying a wrong subcredential first) and answers byte for byte.
        let keys = HsNtorServiceKeys {
            auth_key,
            enc_keypair: keypair,
        };
        let (sstate, got) = service_recv_intro(
            &keys,
            &[[0xAA; 32], subcredential],
            &intro_header,
            encrypted,
        )
        .unwrap();
        assert_eq!(&got[..], &plaintext[..]);
        let (reply, skeys) = service_send_rendezvous_with_secret(y, sstate).unwrap();
        assert_eq!(reply.to_vec(), expected_reply);

        let ckeys = client_recv_rendezvous(cstate, &reply).unwrap();
        let mut seed_input = key_seed.to_vec();
        seed_input.extend_from_slice(M_HSEXPAND);
        let expected_keys = shake256(&[&seed_input], HS_KEY_MATERIAL_LEN);
        assert_eq!(
            &skeys.expand(HS_KEY_MATERIAL_LEN).unwrap()[..],
            &expected_keys[..]
        );
        assert_eq!(
            &ckeys.expand(HS_KEY_MATERIAL_LEN).unwrap()[..],
            &expected_keys[..]
        );
    }

    fn setup(seed: u64) -> (StdRng, HsNtorServiceKeys, HsNtorServiceInfo) {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = HsNtorServiceKeys {
            auth_key: Ed25519Identity::from_bytes([3; 32]),
            enc_keypair: NtorOnionKeypair::generate(&mut rng),
        };
        let info = HsNtorServiceInfo {
            auth_key: keys.auth_key,
            enc_key: *keys.enc_keypair.public(),
            subcredential: [4; 32],
        };
        (rng, keys, info)
    }

    #[test]
    fn round_trip() {
        let (mut rng, keys, info) = setup(1);
        let header = b"header bytes";
        let mut enc = Vec::new();
        let cstate =
            client_send_intro(&mut rng, &info, header, b"secret plaintext", &mut enc).unwrap();
        let (sstate, pt) = service_recv_intro(&keys, &[[4; 32]], header, &enc).unwrap();
        assert_eq!(&pt[..], b"secret plaintext");
        let (reply, skeys) = service_send_rendezvous(&mut rng, sstate).unwrap();
        let ckeys = client_recv_rendezvous(cstate, &reply).unwrap();
        assert_eq!(
            &skeys.expand(HS_KEY_MATERIAL_LEN).unwrap()[..],
            &ckeys.expand(HS_KEY_MATERIAL_LEN).unwrap()[..]
        );
    }

    #[test]
    fn service_rejects_tampering() {
        let (mut rng, keys, info) = setup(2);
        let header = b"hdr";
        let mut enc = Vec::new();
        client_send_intro(&mut rng, &info, header, b"pt", &mut enc).unwrap();
        for at in [0, 32, 33, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[at] ^= 1;
            assert_eq!(
                service_recv_intro(&keys, &[[4; 32]], header, &bad).unwrap_err(),
                HandshakeError::BadAuth,
                "byte {at}"
            );
        }
        assert_eq!(
            service_recv_intro(&keys, &[[4; 32]], b"hdR", &enc).unwrap_err(),
            HandshakeError::BadAuth
        );
        assert_eq!(
            service_recv_intro(&keys, &[[5; 32]], header, &enc).unwrap_err(),
            HandshakeError::BadAuth
        );
        assert_eq!(
            service_recv_intro(&keys, &[], header, &enc).unwrap_err(),
            HandshakeError::BadAuth
        );
        assert_eq!(
            service_recv_intro(&keys, &[[4; 32]], header, &enc[..63]).unwrap_err(),
            HandshakeError::BadLength
        );
        let mut zero_x = enc.clone();
        zero_x[..32].fill(0);
        assert_eq!(
            service_recv_intro(&keys, &[[4; 32]], header, &zero_x).unwrap_err(),
            HandshakeError::BadDh
        );
    }

    #[test]
    fn client_rejects_tampered_rendezvous() {
        let (mut rng, keys, info) = setup(3);
        for at in [0usize, 31, 32, 63] {
            let mut enc = Vec::new();
            let cstate = client_send_intro(&mut rng, &info, b"", b"", &mut enc).unwrap();
            let (sstate, _) = service_recv_intro(&keys, &[[4; 32]], b"", &enc).unwrap();
            let (mut reply, _) = service_send_rendezvous(&mut rng, sstate).unwrap();
            reply[at] ^= 0x10;
            let err = client_recv_rendezvous(cstate, &reply).unwrap_err();
            assert!(matches!(
                err,
                HandshakeError::BadAuth | HandshakeError::BadDh
            ));
        }
        let mut enc = Vec::new();
        let cstate = client_send_intro(&mut rng, &info, b"", b"", &mut enc).unwrap();
        assert_eq!(
            client_recv_rendezvous(cstate, &[1u8; 63]).unwrap_err(),
            HandshakeError::BadLength
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (mut rng, keys, info) = setup(4);
            let _ = parse_intro_encrypted(&bytes);
            let _ = service_recv_intro(&keys, &[[4; 32]], b"h", &bytes);
            let mut enc = Vec::new();
            let cstate = client_send_intro(&mut rng, &info, b"h", b"", &mut enc).unwrap();
            let _ = client_recv_rendezvous(cstate, &bytes);
        }

        #[test]
        fn encrypted_section_round_trips(client_pk in any::<[u8; 32]>(), mac in any::<[u8; 32]>(),
                                         data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let e = HsNtorIntroEncrypted { client_pk, encrypted_data: &data, mac };
            let mut out = Vec::new();
            e.encode(&mut out);
            prop_assert_eq!(parse_intro_encrypted(&out).unwrap(), e);
        }
    }
}
