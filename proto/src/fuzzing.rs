//! Entry points for the fuzz targets under `proto/fuzz/` and for the corpus replay test.
//!
//! One function per decoder family. Each feeds arbitrary bytes to the modules' own fuzz entry
//! points (which check that whatever decodes re-encodes consistently) and must never panic
//! otherwise. Where a family has several decoders, the first input byte selects one (modulo
//! their number) and the rest is its input, so every corpus file aims at one decoder.
//!
//! The targets in `proto/fuzz/fuzz_targets/` are one-line calls to these, and
//! `tests::replay_corpus` runs every checked-in corpus file through them in the ordinary test
//! suite. `tests::write_seed_corpus` (ignored; run it by name) writes the seed inputs, taken
//! from the modules' test vectors.

use std::sync::OnceLock;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;

use crate::codec::Reader;
use crate::ids::{Ed25519Identity, RsaIdentity};
use crate::keys::NtorOnionKeypair;
use crate::link_spec::LinkSpec;
use crate::ntor::NtorServerKeys;
use crate::ntor_v3::NtorV3ServerKeys;
use crate::{cell, cert, certs_cell, chan_msg, hs_msg, hs_ntor, key_file, relay_msg};
use crate::{create_fast, ntor, ntor_v3, rsa_crosscert, x509};

/// Link specifier lists (EXTEND2, INTRODUCE2 plaintext).
pub fn link_spec(data: &[u8]) {
    let mut r = Reader::new(data);
    if let Ok(specs) = LinkSpec::decode_list(&mut r) {
        let mut out = Vec::new();
        LinkSpec::encode_list(&specs, &mut out).expect("decoded specifiers re-encode");
        let consumed = r.consumed();
        assert_eq!(&out[..], &data[..consumed], "link specifiers round-trip");
    }
}

/// Channel cells. Selector 0: framing of a cell stream ([`cell::fuzz_decode`]); 1: a command
/// byte and a cell body ([`chan_msg::fuzz_decode`]); 2: a stream of cells with 4-byte circuit
/// ids, framed and decoded ([`chan_msg::fuzz_decode_cells`]).
pub fn cell(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => cell::fuzz_decode(rest),
        1 => chan_msg::fuzz_decode(rest),
        _ => chan_msg::fuzz_decode_cells(rest),
    }
}

/// Relay messages, onion-service ones included. Selector 0: a relay command byte and a message
/// body ([`relay_msg::fuzz_decode`]); 1: a decrypted 509-byte relay cell body
/// ([`relay_msg::fuzz_decode_cell`]).
pub fn relay_msg(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 2 {
        0 => relay_msg::fuzz_decode(rest),
        _ => relay_msg::fuzz_decode_cell(rest),
    }
}

/// Onion-service message bodies and their inner formats (the INTRODUCE2 plaintext, the DoS
/// parameters, extension lists); [`hs_msg::fuzz_decode`] reads its own selector byte.
pub fn hs_msg(data: &[u8]) {
    hs_msg::fuzz_decode(data);
}

/// Certificates. Selector 0: an ed25519 certificate; 1: an RSA->ed25519 cross-certificate;
/// 2: an X.509 RSA identity certificate; 3: a CERTS cell body, validated in both roles.
pub fn cert(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => cert::fuzz_decode_ed25519_cert(rest),
        1 => rsa_crosscert::fuzz_decode_rsa_crosscert(rest),
        2 => x509::fuzz_decode_rsa_id_cert(rest),
        _ => certs_cell::fuzz_check_certs(rest),
    }
}

/// C tor's key files, every parser over the same bytes.
pub fn key_file(data: &[u8]) {
    key_file::fuzz_parse_all(data);
}

/// The server side of the circuit handshakes. Selector 0: an ntor onionskin; 1: an ntor v3
/// onionskin; 2: an ntor v3 extension list; 3: a CREATE_FAST body; 4: an INTRODUCE2 body
/// through the service's hs-ntor decryption and its plaintext.
///
/// The onionskins are answered with fixed keys (`HandshakeKeys`); so that the key
/// agreement and KDF run on mutated input and not only the parsers, ntor and ntor v3
/// onionskins are also tried with NODEID and KEYID overwritten by ours.
pub fn handshake(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let keys = HandshakeKeys::get();
    let mut rng = FuzzRng(u64::from(sel));
    match sel % 5 {
        0 => {
            if let Ok(hs) = ntor::parse_client_handshake(rest) {
                let mut out = Vec::new();
                hs.encode(&mut out);
                assert_eq!(out, rest, "ntor onionskin round-trips");
            }
            let _ = ntor::server(&mut rng, &keys.ntor, rest);
            let ours = with_prefix(rest, &[keys.ntor.id.as_bytes(), &keys.onion_public()]);
            let _ = ntor::server(&mut rng, &keys.ntor, &ours);
        }
        1 => {
            if let Ok(hs) = ntor_v3::parse_client_handshake(rest) {
                let mut out = Vec::new();
                hs.encode(&mut out);
                assert_eq!(out, rest, "ntor v3 onionskin round-trips");
            }
            let ours = with_prefix(rest, &[keys.ntor_v3.id.as_bytes(), &keys.onion_public()]);
            for onionskin in [rest, &ours[..]] {
                let mut reply = Vec::new();
                let _ = ntor_v3::server(
                    &mut rng,
                    &keys.ntor_v3,
                    NTOR_V3_VERIFICATION,
                    onionskin,
                    |cm| {
                        let exts = ntor_v3::decode_extensions(cm).ok()?;
                        let mut sm = Vec::new();
                        ntor_v3::encode_extensions(&exts, &mut sm).ok()?;
                        Some(sm)
                    },
                    &mut reply,
                );
            }
        }
        2 => {
            if let Ok(exts) = ntor_v3::decode_extensions(rest) {
                let mut out = Vec::new();
                ntor_v3::encode_extensions(&exts, &mut out).expect("decoded extensions encode");
                assert_eq!(ntor_v3::decode_extensions(&out), Ok(exts));
            }
        }
        3 => {
            let _ = create_fast::parse_server_handshake(rest);
            if let Ok((reply, _)) = create_fast::server(&mut rng, rest) {
                assert_eq!(
                    create_fast::parse_server_handshake(&reply).map(|_| ()),
                    Ok(())
                );
            }
        }
        _ => {
            let Ok(intro) = hs_msg::Introduce2::decode(rest) else {
                return;
            };
            let _ = hs_ntor::parse_intro_encrypted(intro.0.encrypted());
            let recv = hs_ntor::service_recv_intro(
                &keys.hs,
                &[keys.hs_subcredential],
                intro.0.header(),
                intro.0.encrypted(),
            );
            if let Ok((state, plaintext)) = recv {
                let _ = hs_msg::IntroducePlaintext::decode(&plaintext);
                let _ = hs_ntor::service_send_rendezvous(&mut rng, state);
            }
        }
    }
}

/// `data` with its first bytes replaced by `parts`, one after the other (as far as it reaches).
fn with_prefix(data: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = data.to_vec();
    let prefix = parts.concat();
    let n = prefix.len().min(out.len());
    out[..n].copy_from_slice(&prefix[..n]);
    out
}

/// The verification string ntor v3 onionskins are checked against (proposal 332's test
/// vector uses the same).
const NTOR_V3_VERIFICATION: &[u8] = b"xyzzy";

/// The fixed keys the handshake target answers with.
///
/// The ntor v3 identity and onion key are those of proposal 332's test vector; the seeds in
/// the corpus are handshakes made for these keys, so they get through the MAC checks.
struct HandshakeKeys {
    ntor: NtorServerKeys,
    ntor_v3: NtorV3ServerKeys,
    hs: hs_ntor::HsNtorServiceKeys,
    hs_subcredential: [u8; 32],
}

/// Proposal 332's test vector: the relay's onion secret key `b` and identity `ID`.
const NTOR_V3_B_SK: [u8; 32] =
    hex_literal(b"4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a");
const NTOR_V3_ID: [u8; 32] =
    hex_literal(b"9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2");

/// Decodes 64 hex digits at compile time.
const fn hex_literal(s: &[u8; 64]) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(s[2 * i]) << 4 | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

impl HandshakeKeys {
    fn get() -> &'static HandshakeKeys {
        static KEYS: OnceLock<HandshakeKeys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let onion = NtorOnionKeypair::from_secret(StaticSecret::from(NTOR_V3_B_SK));
            HandshakeKeys {
                ntor: NtorServerKeys {
                    id: RsaIdentity::from_bytes([0x11; 20]),
                    current: onion.clone(),
                    previous: None,
                },
                ntor_v3: NtorV3ServerKeys {
                    id: Ed25519Identity::from_bytes(NTOR_V3_ID),
                    current: onion,
                    previous: None,
                },
                hs: hs_ntor::HsNtorServiceKeys {
                    auth_key: Ed25519Identity::from_bytes([0x22; 32]),
                    enc_keypair: NtorOnionKeypair::from_secret(StaticSecret::from([0x33; 32])),
                },
                hs_subcredential: [0x44; 32],
            }
        })
    }

    fn onion_public(&self) -> [u8; 32] {
        self.ntor.current.public().to_bytes()
    }
}

/// A deterministic generator for the handshakes' ephemeral keys: fuzzing needs reproducible
/// runs, not secrecy. Never use it outside fuzzing.
pub(crate) struct FuzzRng(pub(crate) u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Only so the handshakes accept it; see the type's doc.
impl CryptoRng for FuzzRng {}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The link handshake (VERSIONS … NETINFO) in both roles, fed from a genuine transcript that the
/// input cuts, fragments and corrupts ([`crate::link_handshake::fuzz_handshake`]).
pub fn link_handshake(data: &[u8]) {
    crate::link_handshake::fuzz_handshake(data);
}

/// The fuzz targets by name, as `cargo fuzz` knows them.
pub const TARGETS: &[(&str, Target)] = &[
    ("cell", cell),
    ("relay_msg", relay_msg),
    ("hs_msg", hs_msg),
    ("cert", cert),
    ("handshake", handshake),
    ("key_file", key_file),
    ("link_spec", link_spec),
    ("link_handshake", link_handshake),
    ("relay_cell_v1", relay_cell_v1),
];

/// The v1 (CGO) relay cell layout: the input is a decrypted 509-byte body
/// ([`crate::relay_cell_v1::fuzz_decode`]).
pub fn relay_cell_v1(data: &[u8]) {
    crate::relay_cell_v1::fuzz_decode(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::CircIdLen;
    use crate::chan_msg::{ChanCell, ChanMsg};
    use crate::relay_cell::RelayCmd;
    use crate::relay_msg::{Begin, End, EndReason, Extend2, Host, RelayMsg, Sendme};
    use crate::test_util::unhex;
    use std::path::{Path, PathBuf};

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn corpus_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
    }

    fn test_data(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Seed inputs per target, from the modules' test vectors and the captured C tor data.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        use crate::chan_msg::test_vectors::*;
        use crate::hs_msg::test_vectors::*;
        let mut seeds = Vec::new();
        let keys = HandshakeKeys::get();
        let mut rng = FuzzRng(7);

        // cell: C tor's VERSIONS, CERTS, AUTH_CHALLENGE stream, then each cell on its own.
        let stream = unhex(TOR_VERSIONS_CERTS_AUTH_CHALLENGE);
        seeds.push(("cell", cat(&[&[0], &stream])));
        // After VERSIONS (2-byte circuit id, 6-byte body) the link uses 4-byte circuit ids.
        let (versions, linked) = stream.split_at(2 + 1 + 2 + 6);
        seeds.push(("cell", cat(&[&[2], linked])));
        let mut cells = vec![
            ChanCell::decode_from(versions, CircIdLen::Two)
                .expect("decodes")
                .expect("whole")
                .0,
        ];
        let mut rest = linked;
        while let Ok(Some((c, used))) = ChanCell::decode_from(rest, CircIdLen::Four) {
            cells.push(c);
            rest = &rest[used..];
        }
        for fixed in [TOR_NETINFO, TOR_CREATED_FAST, TOR_DESTROY] {
            let mut bytes = unhex(fixed);
            bytes.resize(crate::cell::CELL_LEN_V4, 0);
            seeds.push(("cell", cat(&[&[2], &bytes])));
            let (c, _) = ChanCell::decode_from(&bytes, CircIdLen::Four)
                .expect("decodes")
                .expect("whole");
            cells.push(c);
        }
        let mut create2 = Vec::new();
        ChanMsg::Create2(crate::chan_msg::Create2 {
            htype: crate::chan_msg::HandshakeType::NTOR,
            hdata: vec![0x5a; 84],
        })
        .encode(&mut create2)
        .expect("encodes");
        seeds.push(("cell", cat(&[&[1, 10], &create2])));
        for c in &cells {
            let mut body = Vec::new();
            c.msg.encode(&mut body).expect("encodes");
            seeds.push(("cell", cat(&[&[1, c.msg.cmd().0], &body])));
        }

        // relay_msg: one of each message through RelayMsg, and two whole relay cells.
        let hs = [
            (RelayCmd::ESTABLISH_INTRO, EST_INTRO_C_TOR),
            (RelayCmd::ESTABLISH_INTRO, EST_INTRO_DOS),
            (RelayCmd::INTRODUCE1, INTRO1_C_TOR),
            (RelayCmd::INTRODUCE2, INTRO1_C_TOR),
            (RelayCmd::INTRO_ESTABLISHED, "00"),
            (RelayCmd::INTRODUCE_ACK, "0000 00"),
            (
                RelayCmd::ESTABLISH_RENDEZVOUS,
                "4AA2BAF815CEBB4B922B5BF6F545AEE0DDBE1254",
            ),
            (RelayCmd::RENDEZVOUS_ESTABLISHED, ""),
            (RelayCmd::RENDEZVOUS1, RENDEZVOUS1_C_TOR),
            (RelayCmd::RENDEZVOUS2, RENDEZVOUS2_C_TOR),
        ];
        let mut msgs: Vec<RelayMsg> = hs
            .iter()
            .map(|(cmd, hex)| RelayMsg::decode(*cmd, &unhex(hex)).expect("hs vector decodes"))
            .collect();
        msgs.extend([
            Begin {
                host: Host::Hostname("www.example.com".into()),
                port: 443,
                flags: crate::relay_msg::BeginFlags(3),
            }
            .into(),
            crate::relay_msg::Data::new(b"GET / HTTP/1.0\r\n\r\n".to_vec())
                .expect("fits")
                .into(),
            End::new(EndReason::DONE).into(),
            Sendme::V1 { digest: [0xF0; 20] }.into(),
            Extend2 {
                link_specs: vec![
                    LinkSpec::Ipv4([127, 0, 0, 1].into(), 9001),
                    LinkSpec::RsaId(RsaIdentity::from_bytes([0x11; 20])),
                    LinkSpec::Ed25519Id(Ed25519Identity::from_bytes([0x22; 32])),
                ],
                htype: crate::chan_msg::HandshakeType::NTOR_V3,
                hdata: vec![0x5a; 100],
            }
            .into(),
            crate::relay_msg::Resolve {
                name: "example.com".into(),
            }
            .into(),
            crate::relay_msg::Truncated {
                reason: crate::chan_msg::DestroyReason::CONNECTFAILED,
            }
            .into(),
        ]);
        for m in &msgs {
            let mut body = Vec::new();
            m.encode(&mut body).expect("encodes");
            seeds.push(("relay_msg", cat(&[&[0, m.cmd().0], &body])));
        }
        for (cmd, sid, data) in [
            (RelayCmd::DATA, 5, &b"hello"[..]),
            (RelayCmd::EXTENDED2, 0, &[0, 2, 1, 2][..]),
        ] {
            let mut cell = [0u8; crate::relay_cell::RELAY_BODY_LEN];
            crate::relay_cell::build_relay_cell(
                &mut cell,
                cmd,
                crate::ids::StreamId::new(sid),
                data,
                &mut rng,
            )
            .expect("fits");
            seeds.push(("relay_msg", cat(&[&[1], &cell])));
        }

        // hs_msg: hs_msg::fuzz_decode's selectors.
        for (sel, hex) in [
            (0u8, EST_INTRO_C_TOR),
            (0, EST_INTRO_DOS),
            (1, "00"),
            (2, INTRO1_C_TOR),
            (3, INTRO1_C_TOR),
            (5, PLAINTEXT),
            (6, "0000 00"),
            (7, "4AA2BAF815CEBB4B922B5BF6F545AEE0DDBE1254"),
            (9, RENDEZVOUS1_C_TOR),
            (10, RENDEZVOUS2_C_TOR),
            (11, "02 01 0000000000000001 02 0000000000000002"),
            (12, "02 01 01 00 02 00"),
        ] {
            seeds.push(("hs_msg", cat(&[&[sel], &unhex(hex)])));
        }
        let intro1 = hs_msg::Introduce1::decode(&unhex(INTRO1_C_TOR)).expect("decodes");
        seeds.push(("hs_msg", cat(&[&[4], intro1.0.encrypted()])));

        // cert: C tor's CERTS cell and each certificate in it, by type.
        let certs_body = test_data("ctor-0.4.9-certs-cell.bin");
        seeds.push(("cert", cat(&[&[3], &certs_body])));
        let certs = crate::chan_msg::Certs::decode(&certs_body).expect("decodes");
        for e in &certs.certs {
            let sel = match e.cert_type.0 {
                1 | 2 => 2,
                7 => 1,
                _ => 0,
            };
            seeds.push(("cert", cat(&[&[sel], &e.body])));
        }

        // handshake: onionskins made for our fixed keys, so they get through the MAC checks.
        let (_, ntor_skin) = ntor::client1(
            &mut rng,
            &ntor::NtorPublicKey {
                id: keys.ntor.id,
                pk: *keys.ntor.current.public(),
            },
        );
        seeds.push(("handshake", cat(&[&[0], &ntor_skin])));
        let exts = [
            ntor_v3::NtorV3Extension::CcRequest,
            ntor_v3::NtorV3Extension::SubprotocolRequest(vec![ntor_v3::SubprotocolCap {
                protocol: 2,
                version: 5,
            }]),
        ];
        let mut cm = Vec::new();
        ntor_v3::encode_extensions(&exts, &mut cm).expect("encodes");
        seeds.push(("handshake", cat(&[&[2], &cm])));
        let mut v3_skin = Vec::new();
        ntor_v3::client1(
            &mut rng,
            &ntor_v3::NtorV3PublicKey {
                id: keys.ntor_v3.id,
                pk: *keys.ntor_v3.current.public(),
            },
            NTOR_V3_VERIFICATION,
            &cm,
            &mut v3_skin,
        )
        .expect("client1");
        seeds.push(("handshake", cat(&[&[1], &v3_skin])));
        seeds.push(("handshake", cat(&[&[3], &[0x42; 20]])));
        seeds.push(("handshake", cat(&[&[3], &[0x42; 40]])));
        let mut body =
            hs_msg::IntroduceBody::new(keys.hs.auth_key, Default::default()).expect("fits");
        let mut encrypted = Vec::new();
        hs_ntor::client_send_intro(
            &mut rng,
            &hs_ntor::HsNtorServiceInfo {
                auth_key: keys.hs.auth_key,
                enc_key: *keys.hs.enc_keypair.public(),
                subcredential: keys.hs_subcredential,
            },
            body.header(),
            &unhex(PLAINTEXT),
            &mut encrypted,
        )
        .expect("client_send_intro");
        body.set_encrypted(encrypted);
        let mut intro2 = Vec::new();
        hs_msg::Introduce2(body)
            .encode(&mut intro2)
            .expect("encodes");
        seeds.push(("handshake", cat(&[&[4], &intro2])));

        // key_file: C tor's files.
        for name in [
            "ctor-0.4.9-secret_id_key",
            "ctor-0.4.9-ed25519_signing_secret_key",
            "ctor-0.4.9-fingerprint.txt",
        ] {
            seeds.push(("key_file", test_data(name)));
        }
        seeds
    }

    /// The seeds decode as intended: every one reaches its decoder and gets past the parsing
    /// (checked here for the handshakes, where the point is to get through the MACs).
    #[test]
    fn seeds_reach_the_deep_paths() {
        let keys = HandshakeKeys::get();
        let seeds = seeds();
        for (name, data) in &seeds {
            let target = TARGETS
                .iter()
                .find(|(n, _)| n == name)
                .expect("known target")
                .1;
            target(data);
        }
        let v3 = seeds
            .iter()
            .find(|(n, d)| *n == "handshake" && d[0] == 1)
            .expect("ntor v3 seed");
        let mut reply = Vec::new();
        let (_, cm) = ntor_v3::server(
            &mut FuzzRng(1),
            &keys.ntor_v3,
            NTOR_V3_VERIFICATION,
            &v3.1[1..],
            |_| Some(Vec::new()),
            &mut reply,
        )
        .expect("the seed passes the MAC check");
        assert_eq!(ntor_v3::decode_extensions(&cm).expect("decodes").len(), 2);
        let hs = seeds
            .iter()
            .find(|(n, d)| *n == "handshake" && d[0] == 4)
            .expect("hs seed");
        let intro = hs_msg::Introduce2::decode(&hs.1[1..]).expect("decodes");
        let (_, plaintext) = hs_ntor::service_recv_intro(
            &keys.hs,
            &[keys.hs_subcredential],
            intro.0.header(),
            intro.0.encrypted(),
        )
        .expect("the seed passes the MAC check");
        hs_msg::IntroducePlaintext::decode(&plaintext).expect("plaintext decodes");
    }

    /// Writes [`seeds`] into `proto/fuzz/corpus/<target>/`, named by SHA-1 as libFuzzer names
    /// its finds. Run by hand: `cargo test -p proto write_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        use sha1::{Digest, Sha1};
        for (name, data) in seeds() {
            let dir = corpus_root().join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            let file = hex::encode(Sha1::digest(&data));
            std::fs::write(dir.join(file), &data).expect("write seed");
        }
    }

    /// Replays every file of `proto/fuzz/corpus/<target>/` (the checked-in corpus) through its target.
    #[test]
    fn replay_corpus() {
        let root = corpus_root();
        let mut replayed = 0usize;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus for {name} missing at {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("dir entry").path();
                let data = std::fs::read(&path).expect("read corpus file");
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "every target has a corpus");
    }
}
