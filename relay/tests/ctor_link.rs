//! chive's link handshake initiator (`proto::link_handshake::Initiator`) against the installed
//! C tor 0.4.9 relay, over chive's TLS client (`relay::tls`).
//!
//! - As a client (no authentication): C tor's VERSIONS, CERTS, AUTH_CHALLENGE and NETINFO are
//!   accepted, its identities are the ones in its data directory, and after our NETINFO the
//!   channel carries circuits.
//! - As a relay with freshly generated `RelayKeys`: our CERTS (2, 4, 6, 7) and AUTHENTICATE
//!   (Ed25519-SHA256-RFC5705) are accepted, and the channel carries circuits; with a wrong
//!   TLS exporter value C tor closes the channel instead.
//!
//! "Carries circuits" means: a CREATE_FAST gets CREATED_FAST (and the KH check passes), and a
//! CREATE2 with ntor, made for the onion key read from C tor's
//! `<datadir>/keys/secret_onion_key_ntor`, gets CREATED2 whose AUTH checks out. On both
//! circuits a RELAY_BEGIN_DIR encrypted with the derived tor1 keys gets an answer that decrypts
//! and verifies with them: the two ends agree on the circuit keys.
//!
//! - Our responder, with a C tor client (bridge user) as initiator: C tor accepts our VERSIONS,
//!   CERTS (2, 4, 5, 7), AUTH_CHALLENGE and NETINFO, answers with NETINFO (timestamp 0) and
//!   then opens a circuit on the channel.
//!
//! - Our responder, with a C tor relay as authenticating initiator: C tor extends a circuit
//!   to us (EXTEND2 from our client), authenticates with CERTS (2, 4, 6, 7) and AUTHENTICATE,
//!   and our responder verifies them (C tor's initiator also uses CID as the exporter
//!   context); our CREATED2 reaches the client as EXTENDED2 with matching circuit keys.
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

#[path = "common/ctor.rs"]
mod ctor;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use aes::cipher::{KeyIvInit, StreamCipher};
use ctor::{BlockingTls, CTorRelay};
use proto::cell::{ChanCmd, CircIdLen, RawCell, BODY_LEN};
use proto::chan_msg::{ChanCell, ChanMsg, Create2, CreateFast, HandshakeType};
use proto::ids::{CircId, Ed25519Identity, RsaIdentity, StreamId};
use proto::kdf::{KeyGenerator, Tor1Keys};
use proto::keys::RelayKeys;
use proto::link_handshake::{
    ExpectedPeer, Initiator, LinkInfo, LinkTls, NetinfoAddrs, RelayCredentials,
};
use proto::relay_cell::{build_relay_cell, RelayCmd};
use relay::tls::TlsLink;
use sha1::{Digest, Sha1};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The handshake's view of chive's TLS link; `exporter_xor` flips bits of the exporter value
/// to make a wrong TLSSECRETS on purpose.
struct Tls<'a> {
    link: &'a TlsLink,
    exporter_xor: u8,
}

impl LinkTls for Tls<'_> {
    fn peer_cert_sha256(&self) -> Option<[u8; 32]> {
        self.link.peer_cert_digest()
    }

    fn auth3_exporter(&self, context: &[u8; 32]) -> Option<[u8; 32]> {
        let mut v = self.link.auth3_exporter(context).ok()?;
        v[0] ^= self.exporter_xor;
        Some(v)
    }
}

/// The relay's identities, from its fingerprint files.
fn expected(relay: &CTorRelay) -> ExpectedPeer {
    let rsa = RsaIdentity::from_hex(&relay.rsa_fingerprint()).unwrap();
    let ed = relay.ed25519_fingerprint();
    let ed = Ed25519Identity::from_base64(ed.trim_end_matches('=')).unwrap();
    ExpectedPeer {
        rsa_identity: Some(rsa),
        ed25519_identity: Some(ed),
    }
}

/// A TLS connection to C tor whose reads and writes report a closed or reset connection
/// instead of panicking (C tor drops connections it rejects).
struct Conn {
    tls: BlockingTls,
    /// Ciphertext read but not yet taken by the TLS link.
    wire: Vec<u8>,
    /// Plaintext after the handshake, not yet framed.
    buf: Vec<u8>,
}

impl Conn {
    /// Sends `data`; false if the connection is gone.
    fn send(&mut self, data: &[u8]) -> bool {
        use std::io::Write;
        let mut off = 0;
        while off < data.len() {
            match self.tls.link.write_plaintext(&data[off..]) {
                Ok(n) => off += n,
                Err(_) => return false,
            }
            let mut out = Vec::new();
            while self.tls.link.wants_tls_out() {
                self.tls.link.poll_tls(&mut out, usize::MAX);
            }
            if self.tls.stream.write_all(&out).is_err() {
                return false;
            }
        }
        true
    }

    /// Reads some plaintext; 0 once the connection is closed, reset or broken.
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        use std::io::Read;
        loop {
            match self.tls.link.read_plaintext(buf) {
                Ok(0) => {}
                Ok(n) => return n,
                Err(_) => return 0,
            }
            if self.tls.link.peer_closed() {
                return 0;
            }
            if self.wire.is_empty() {
                let mut tmp = [0u8; 16 * 1024];
                match self.tls.stream.read(&mut tmp) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => self.wire.extend_from_slice(&tmp[..n]),
                }
            }
            match self.tls.link.handle_tls(&self.wire) {
                Ok(used) => drop(self.wire.drain(..used)),
                Err(_) => return 0,
            }
        }
    }

    /// Sends one cell; false if the connection is gone.
    fn send_cell(&mut self, circ: u32, msg: ChanMsg) -> bool {
        let mut out = Vec::new();
        ChanCell {
            circ_id: CircId::new(circ),
            msg,
        }
        .encode(CircIdLen::Four, &mut out)
        .unwrap();
        self.send(&out)
    }

    /// The next cell on circuit `circ` (others are skipped), or `None` once the peer closes.
    fn recv_cell(&mut self, circ: u32) -> Option<ChanCell> {
        loop {
            let cell = self.recv_any()?;
            if cell.circ_id.map_or(0, CircId::get) == circ {
                return Some(cell);
            }
        }
    }

    /// The next cell, or `None` once the peer closes.
    fn recv_any(&mut self) -> Option<ChanCell> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((raw, used)) = RawCell::decode(&self.buf, CircIdLen::Four) {
                let cell = ChanCell::decode(&raw).unwrap();
                self.buf.drain(..used);
                return Some(cell);
            }
            let n = self.recv(&mut chunk);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Connects to `relay` and runs our initiator to the end of the handshake, authenticating
/// with `relay_keys` if given. Returns the connection (holding any bytes C tor sent after its
/// NETINFO) and the outcome, or `None` if C tor closed the connection first.
fn open(
    relay: &CTorRelay,
    relay_keys: Option<&RelayKeys>,
    exporter_xor: u8,
) -> Option<(Conn, LinkInfo)> {
    let mut rng = rand::rngs::OsRng;
    let now = unix_now();
    let identity_certs = relay_keys.map(|k| k.identity_certs(now, &mut rng).unwrap());
    let creds = relay_keys
        .zip(identity_certs.as_ref())
        .map(|(keys, certs)| RelayCredentials {
            keys,
            identity_certs: certs,
        });
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let addrs = NetinfoAddrs {
        peer: localhost,
        ours: if creds.is_some() {
            vec![localhost]
        } else {
            vec![]
        },
    };
    let mut hs = Initiator::new(creds, expected(relay), addrs, now, &mut rng).unwrap();
    let mut tls = BlockingTls::connect(relay.or_addr());
    tls.handshake();
    let mut conn = Conn {
        tls,
        wire: Vec::new(),
        buf: Vec::new(),
    };
    let mut chunk = [0u8; 4096];
    let mut out = Vec::new();
    loop {
        hs.poll_transmit(&mut out);
        if !conn.send(&out) {
            return None;
        }
        out.clear();
        let n = conn.recv(&mut chunk);
        if n == 0 {
            return None;
        }
        let view = Tls {
            link: &conn.tls.link,
            exporter_xor,
        };
        let used = hs
            .handle_input(&chunk[..n], unix_now(), &view)
            .unwrap_or_else(|e| panic!("handshake with C tor failed: {e}"));
        if hs.is_finished() {
            hs.poll_transmit(&mut out);
            if !conn.send(&out) {
                return None;
            }
            conn.buf = chunk[used..n].to_vec();
            return Some((conn, hs.finish().unwrap()));
        }
    }
}

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// The client end of a one-hop circuit with tor1 relay crypto (tor-spec §6.1, §5.2): just
/// enough to send one relay cell and check the answer.
struct Hop {
    df: Sha1,
    db: Sha1,
    kf: Aes128Ctr,
    kb: Aes128Ctr,
}

impl Hop {
    fn new(keys: &KeyGenerator) -> Self {
        let Tor1Keys { df, db, kf, kb, .. } = keys.tor1_keys().unwrap();
        let mut f = Sha1::new();
        f.update(df);
        let mut b = Sha1::new();
        b.update(db);
        Hop {
            df: f,
            db: b,
            kf: Aes128Ctr::new(&kf.into(), &[0u8; 16].into()),
            kb: Aes128Ctr::new(&kb.into(), &[0u8; 16].into()),
        }
    }

    /// Digests and encrypts a relay cell body built with `build_relay_cell` (digest field 0).
    fn seal(&mut self, mut body: [u8; BODY_LEN]) -> [u8; BODY_LEN] {
        self.df.update(body);
        let digest = self.df.clone().finalize();
        body[5..9].copy_from_slice(&digest[..4]);
        self.kf.apply_keystream(&mut body);
        body
    }

    /// A relay cell with `cmd`, `stream` and `data`, sealed.
    fn relay_cell(&mut self, cmd: RelayCmd, stream: u16, data: &[u8]) -> [u8; BODY_LEN] {
        let mut body = [0u8; BODY_LEN];
        build_relay_cell(
            &mut body,
            cmd,
            StreamId::new(stream),
            data,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        self.seal(body)
    }

    /// A RELAY_BEGIN_DIR on stream 1, sealed.
    fn begin_dir(&mut self) -> [u8; BODY_LEN] {
        self.relay_cell(RelayCmd::BEGIN_DIR, 1, &[])
    }

    /// Decrypts an answer; returns its plaintext if it is recognized and its digest matches
    /// the running backward digest.
    fn open(&mut self, mut body: [u8; BODY_LEN]) -> Option<[u8; BODY_LEN]> {
        self.kb.apply_keystream(&mut body);
        if body[1..3] != [0, 0] {
            return None;
        }
        let got: [u8; 4] = body[5..9].try_into().unwrap();
        body[5..9].fill(0);
        self.db.update(body);
        let want = self.db.clone().finalize();
        (got == want[..4]).then_some(body)
    }
}

/// Sends RELAY_BEGIN_DIR on `circ` and checks the answer decrypts with the circuit keys.
fn check_keys_agree(chan: &mut Conn, circ: u32, keys: &KeyGenerator) {
    let mut hop = Hop::new(keys);
    assert!(chan.send_cell(
        circ,
        ChanMsg::Relay(proto::chan_msg::Relay {
            body: hop.begin_dir(),
        }),
    ));
    let cell = chan.recv_cell(circ).expect("C tor closed the channel");
    let ChanMsg::Relay(relay) = cell.msg else {
        panic!(
            "expected RELAY on circuit {circ:#x}, got {:?}",
            cell.msg.cmd()
        );
    };
    let cmd = hop
        .open(relay.body)
        .expect("answer does not decrypt with our circuit keys")[0];
    // RELAY_CONNECTED (4) from a directory cache, or RELAY_END (3).
    assert!(cmd == 4 || cmd == 3, "relay command {cmd}");
}

/// Builds a CREATE_FAST circuit and a CREATE2 (ntor) circuit on an open channel.
fn use_channel(chan: &mut Conn, relay: &CTorRelay) {
    let mut rng = rand::rngs::OsRng;
    // We initiated the channel, so our circuit ids have the high bit set (tor-spec §5.1.1).
    const FAST: u32 = 0x8000_0001;
    const NTOR: u32 = 0x8000_0002;

    let (state, x) = proto::create_fast::client1(&mut rng);
    assert!(chan.send_cell(FAST, ChanMsg::CreateFast(CreateFast { x })));
    let cell = chan.recv_cell(FAST).expect("C tor closed the channel");
    let ChanMsg::CreatedFast(created) = cell.msg else {
        panic!("expected CREATED_FAST, got {:?}", cell.msg);
    };
    let mut reply = created.y.to_vec();
    reply.extend_from_slice(&created.kh);
    let fast_keys = proto::create_fast::client2(state, &reply).unwrap();
    check_keys_agree(chan, FAST, &fast_keys);

    let relay_keys = RelayKeys::load(&relay.data_dir()).unwrap();
    let public = proto::ntor::NtorPublicKey {
        id: relay_keys.fingerprint(),
        pk: *relay_keys.ntor_onion().public(),
    };
    let (state, onionskin) = proto::ntor::client1(&mut rng, &public);
    assert!(chan.send_cell(
        NTOR,
        ChanMsg::Create2(Create2 {
            htype: HandshakeType::NTOR,
            hdata: onionskin.to_vec(),
        }),
    ));
    let cell = chan.recv_cell(NTOR).expect("C tor closed the channel");
    let ChanMsg::Created2(created) = cell.msg else {
        panic!("expected CREATED2, got {:?}", cell.msg);
    };
    let ntor_keys = proto::ntor::client2(state, &created.hdata).unwrap();
    check_keys_agree(chan, NTOR, &ntor_keys);
}

fn check_info(info: &LinkInfo, relay: &CTorRelay, authenticated: bool) {
    assert_eq!(info.link_version, 5);
    assert_eq!(info.circ_id_len, CircIdLen::Four);
    assert!(info.we_initiated);
    let peer = info.peer.as_ref().unwrap();
    let want = expected(relay);
    assert_eq!(Some(peer.rsa_identity), want.rsa_identity);
    assert_eq!(Some(peer.ed25519_identity), want.ed25519_identity);
    let skew = info.clock_skew_secs().expect("relays send their time");
    assert!(skew.abs() < 60, "skew {skew}");
    assert_eq!(info.our_addr_seen_by_peer, Some(Ipv4Addr::LOCALHOST.into()));
    // C tor 0.4.9 lists no address of its own here: a loopback address is not one it would
    // advertise. So this connection is not canonical by NETINFO.
    assert!(
        info.peer_addrs.is_empty(),
        "{info:?} (authenticated: {authenticated})"
    );
    assert!(!info.peer_addr_is_canonical);
}

#[test]
fn ctor_accepts_our_client_handshake() {
    let relay = CTorRelay::start("chivelinkc", &[]);
    let (mut chan, info) = open(&relay, None, 0).expect("C tor closed the connection");
    check_info(&info, &relay, false);
    use_channel(&mut chan, &relay);
}

#[test]
fn ctor_accepts_our_relay_authentication() {
    const BAD_AUTH: &str = "Received a bad AUTHENTICATE cell";
    // At "info" C tor logs the identities it authenticated on each channel.
    let relay = CTorRelay::start(
        "chivelinkr",
        &["--ProtocolWarnings", "1", "--Log", "info stderr"],
    );
    let keys = RelayKeys::generate(unix_now(), &mut rand::rngs::OsRng).unwrap();
    let (mut chan, info) = open(&relay, Some(&keys), 0).expect("C tor closed the connection");
    check_info(&info, &relay, true);
    use_channel(&mut chan, &relay);
    assert!(!relay.log().contains(BAD_AUTH), "{}", relay.log());
    // C tor took the channel as coming from our relay identity.
    let ours = format!("RSA_ID={}", keys.fingerprint().hex().to_uppercase());
    assert!(
        relay
            .log()
            .lines()
            .any(|l| l.contains("Got good NETINFO cell") && l.contains(&ours)),
        "C tor did not record our identity"
    );

    // A wrong exporter value: C tor closes the channel rather than answer a CREATE_FAST.
    if let Some((mut chan, _)) = open(&relay, Some(&keys), 1) {
        let (_, x) = proto::create_fast::client1(&mut rand::rngs::OsRng);
        let _ = chan.send_cell(0x8000_0001, ChanMsg::CreateFast(CreateFast { x }));
        assert!(
            chan.recv_cell(0x8000_0001).is_none(),
            "C tor accepted a wrong TLSSECRETS"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.log().contains(BAD_AUTH) {
        assert!(Instant::now() < deadline, "no bad-AUTHENTICATE warning");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Our responder with a C tor client as initiator: a C tor client told to use our listener as
/// its bridge checks our VERSIONS, CERTS (2, 4, 5, 7: the type-5 certificate certifies our
/// TLS link certificate), AUTH_CHALLENGE and NETINFO, and answers with its NETINFO, which it
/// sends only once it has accepted our certificates.
#[test]
fn ctor_client_accepts_our_responder() {
    use std::net::TcpListener;

    let mut rng = rand::rngs::OsRng;
    let now = unix_now();
    let us = Us::generate(now, &mut rng);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let tor = ctor::CTor::client_via_bridge("bridge-client", listener.local_addr().unwrap());
    let (mut conn, info) = us.respond(&listener, now, &mut rng, || tor.log());
    let mut chunk = [0u8; 4096];
    assert_eq!(info.link_version, 5);
    assert!(!info.we_initiated);
    // A client does not authenticate, and (tor-spec §4.5) sends no time.
    assert_eq!(info.peer, None);
    assert_eq!(info.peer_timestamp, 0, "{info:?}");
    assert_eq!(info.our_addr_seen_by_peer, Some(Ipv4Addr::LOCALHOST.into()));

    // C tor then uses the channel: it opens a circuit to fetch our descriptor.
    // C tor 0.4.9 sends CREATE_FAST here (a one-hop directory circuit).
    let create = loop {
        if let Some((raw, used)) = RawCell::decode(&conn.buf, CircIdLen::Four) {
            let cmd = raw.cmd;
            conn.buf.drain(..used);
            if cmd == ChanCmd::CREATE_FAST || cmd == ChanCmd::CREATE2 {
                break cmd;
            }
            continue;
        }
        let n = conn.recv(&mut chunk);
        assert!(n > 0, "C tor closed the channel:\n{}", tor.log());
        conn.buf.extend_from_slice(&chunk[..n]);
    };
    assert!(create == ChanCmd::CREATE_FAST || create == ChanCmd::CREATE2);
}

/// A chive relay's keys and link certificate, for our responder.
struct Us {
    keys: RelayKeys,
    identity_certs: proto::certs_cell::IdentityCerts,
    cert: relay::tls::LinkCert,
}

impl Us {
    fn generate(now: u64, rng: &mut rand::rngs::OsRng) -> Us {
        use relay::tls::{LinkCert, LinkKeyAlg};
        let keys = RelayKeys::generate(now, rng).unwrap();
        let identity_certs = keys.identity_certs(now, rng).unwrap();
        let cert = LinkCert::generate(LinkKeyAlg::EcdsaP256, now, 86_400, rng).unwrap();
        Us {
            keys,
            identity_certs,
            cert,
        }
    }

    /// Accepts C tor's connection on `listener` and runs our responder's link handshake on it:
    /// the connection (with what followed the handshake in `buf`) and the handshake's outcome.
    /// `log` is C tor's log, for failures.
    fn respond(
        &self,
        listener: &std::net::TcpListener,
        now: u64,
        rng: &mut rand::rngs::OsRng,
        log: impl Fn() -> String,
    ) -> (Conn, LinkInfo) {
        use proto::link_handshake::Responder;
        use relay::tls;

        let (stream, peer) = accept(listener, &log);
        let link = tls::TlsLink::server(
            tls::server_config(&self.cert).unwrap(),
            tls::DEFAULT_PENDING_TLS_MAX_BYTES,
        )
        .unwrap();
        let mut tls = BlockingTls::new(stream, link);
        tls.handshake();
        let mut conn = Conn {
            tls,
            wire: Vec::new(),
            buf: Vec::new(),
        };
        let creds = RelayCredentials {
            keys: &self.keys,
            identity_certs: &self.identity_certs,
        };
        let addrs = NetinfoAddrs {
            peer: peer.ip(),
            ours: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        };
        let mut hs = Responder::new(creds, self.cert.digest(), addrs, now, rng).unwrap();
        let mut chunk = [0u8; 4096];
        let mut out = Vec::new();
        while !hs.is_finished() {
            let n = conn.recv(&mut chunk);
            assert!(n > 0, "C tor closed the connection:\n{}", log());
            let view = Tls {
                link: &conn.tls.link,
                exporter_xor: 0,
            };
            let used = hs
                .handle_input(&chunk[..n], unix_now(), &view)
                .unwrap_or_else(|e| panic!("handshake with C tor failed: {e}\n{}", log()));
            conn.buf = chunk[used..n].to_vec();
            hs.poll_transmit(&mut out);
            assert!(conn.send(&out));
            out.clear();
        }
        (conn, hs.finish().unwrap())
    }
}

/// Accepts one connection on `listener` (non-blocking) within a minute, failing with `log()`
/// if none comes.
fn accept(
    listener: &std::net::TcpListener,
    log: impl Fn() -> String,
) -> (std::net::TcpStream, std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).unwrap();
                return (stream, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection came:\n{}", log());
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Our responder with a C tor relay as an authenticating initiator. Over a one-hop circuit
/// (CREATE_FAST) to C tor we send EXTEND2 naming our listener and a fresh chive relay
/// identity; C tor connects, and our responder checks its CERTS (2, 4, 6, 7) and AUTHENTICATE
/// (transcript digests, exporter value with context CID, signature) and gets C tor's
/// identities. We then answer C tor's CREATE2 with ntor, and the client at the other end gets
/// EXTENDED2 and the same circuit keys.
#[test]
fn ctor_relay_authenticates_to_our_responder() {
    use proto::chan_msg::{Created2, RelayEarly};
    use proto::link_spec::LinkSpec;
    use proto::relay_msg::{Extend2, Extended2};

    const CIRC: u32 = 0x8000_0001;
    let relay = CTorRelay::start("chivelinkx", &["--ExtendAllowPrivateAddresses", "1"]);
    let mut rng = rand::rngs::OsRng;
    let now = unix_now();
    // Us: the relay C tor extends to.
    let us = Us::generate(now, &mut rng);
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    // A client: a one-hop circuit to C tor, then EXTEND2 to us.
    let (mut client, _) = open(&relay, None, 0).expect("C tor closed the connection");
    let (state, x) = proto::create_fast::client1(&mut rng);
    assert!(client.send_cell(CIRC, ChanMsg::CreateFast(CreateFast { x })));
    let ChanMsg::CreatedFast(created) = client.recv_cell(CIRC).unwrap().msg else {
        panic!("expected CREATED_FAST");
    };
    let reply = [created.y, created.kh].concat();
    let mut hop = Hop::new(&proto::create_fast::client2(state, &reply).unwrap());
    let ours = proto::ntor::NtorPublicKey {
        id: us.keys.fingerprint(),
        pk: *us.keys.ntor_onion().public(),
    };
    let (ntor_state, onionskin) = proto::ntor::client1(&mut rng, &ours);
    let mut extend = Vec::new();
    Extend2 {
        link_specs: vec![
            LinkSpec::Ipv4(Ipv4Addr::LOCALHOST, port),
            LinkSpec::RsaId(us.keys.fingerprint()),
            LinkSpec::Ed25519Id(us.keys.ed25519_identity()),
        ],
        htype: HandshakeType::NTOR,
        hdata: onionskin.to_vec(),
    }
    .encode(&mut extend)
    .unwrap();
    let body = hop.relay_cell(RelayCmd::EXTEND2, 0, &extend);
    assert!(client.send_cell(CIRC, ChanMsg::RelayEarly(RelayEarly { body })));

    // C tor connects to us.
    let (mut server, info) = us.respond(&listener, now, &mut rng, || relay.log());
    assert!(!info.we_initiated);
    let peer = info.peer.as_ref().expect("C tor authenticated");
    let want = expected(&relay);
    assert_eq!(Some(peer.rsa_identity), want.rsa_identity);
    assert_eq!(Some(peer.ed25519_identity), want.ed25519_identity);
    let skew = info.clock_skew_secs().expect("relays send their time");
    assert!(skew.abs() < 60, "skew {skew}");

    // C tor's CREATE2 carries the client's onionskin.
    let (circ, hdata) = loop {
        let cell = server.recv_any().expect("C tor closed the channel");
        if let ChanMsg::Create2(c) = cell.msg {
            break (cell.circ_id.unwrap(), c.hdata);
        }
    };
    let (reply, server_keys) =
        proto::ntor::server(&mut rng, &us.keys.ntor_server_keys(None), &hdata).unwrap();
    assert!(server.send_cell(
        circ.get(),
        ChanMsg::Created2(Created2 {
            hdata: reply.to_vec()
        })
    ));

    // The client gets EXTENDED2 with our reply, and the same keys.
    let cell = client
        .recv_cell(CIRC)
        .expect("C tor closed the client channel");
    let ChanMsg::Relay(relay_cell) = cell.msg else {
        panic!("expected RELAY, got {:?}", cell.msg.cmd());
    };
    let plain = hop.open(relay_cell.body).expect("answer does not decrypt");
    assert_eq!(RelayCmd(plain[0]), RelayCmd::EXTENDED2);
    let len = usize::from(u16::from_be_bytes([plain[9], plain[10]]));
    let extended = Extended2::decode(&plain[11..11 + len]).unwrap();
    let client_keys = proto::ntor::client2(ntor_state, &extended.hdata).unwrap();
    let (c, s) = (
        client_keys.tor1_keys().unwrap(),
        server_keys.tor1_keys().unwrap(),
    );
    assert_eq!((c.df, c.db, c.kf, c.kb), (s.df, s.db, s.kf, s.kb));
}
