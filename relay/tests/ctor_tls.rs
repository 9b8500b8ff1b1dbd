//! chive's TLS layer (`relay::tls`) against real peers.
//!
//! - As initiator against the installed C tor 0.4.9 relay: TLS handshake with chive's client
//!   configuration, then our VERSIONS cell; C tor must answer VERSIONS, CERTS, AUTH_CHALLENGE
//!   and NETINFO, and its CERTS cell must validate (`proto::certs_cell::check_responder_certs`)
//!   against the SHA-256 of the link certificate it presented in TLS, naming the RSA and
//!   ed25519 identities in its data directory's fingerprint files.
//! - As an authenticating initiator (`proto::link_handshake::Initiator`): C tor accepts its
//!   AUTHENTICATE (type 3) cell built with our RFC 5705 exporter value, and closes the channel
//!   when that value is wrong. `ctor_link.rs` runs the whole handshake and circuits over it.
//! - As responder: chive's server configuration over TCP with chive's own client, and with
//!   `openssl s_client` (TLS 1.3 and 1.2) when it is installed.
//!
//! - As responder to C tor: a C tor client told to use our listener as its bridge opens a TLS
//!   connection to chive's server configuration (ECDSA P-256 and RSA-2048 link certificates)
//!   and sends its VERSIONS cell. (Relays extending circuits use the same TLS client code;
//!   the circuit interop tests cover that path end to end.)
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

#[path = "common/ctor.rs"]
mod ctor;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ctor::{BlockingTls, CTor, CTorRelay};
use proto::cell::{CellBody, BODY_LEN};
use proto::cell::{ChanCmd, CircIdLen, RawCell};
use proto::chan_msg::{Certs, Versions};
use proto::link_handshake::{ExpectedPeer, Initiator, LinkTls, NetinfoAddrs, RelayCredentials};
use rand::RngCore;
use relay::tls::{self, LinkCert, LinkKeyAlg, TlsLink};
use rustls::ProtocolVersion;

/// Circuit id 0 (2 bytes), VERSIONS (7), length 4, versions 4 and 5.
const OUR_VERSIONS: [u8; 9] = [0x00, 0x00, 0x07, 0x00, 0x04, 0x00, 0x04, 0x00, 0x05];

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One cell as received: command, body, and its bytes on the wire (inside TLS).
#[derive(Debug)]
struct Cell {
    cmd: ChanCmd,
    body: Vec<u8>,
    raw: Vec<u8>,
}

/// Reads cells from `link` until `count` have arrived: the first with 2-byte circuit ids (the
/// VERSIONS cell), the rest with the width of the link protocol negotiated from it.
fn read_cells(link: &mut BlockingTls, count: usize) -> Vec<Cell> {
    read_cells_from(link, count, CircIdLen::BEFORE_NEGOTIATION)
}

/// Like [`read_cells`], starting with circuit ids of `circ_id_len`.
fn read_cells_from(link: &mut BlockingTls, count: usize, circ_id_len: CircIdLen) -> Vec<Cell> {
    let mut buf = Vec::new();
    let mut cells = Vec::new();
    let mut circ_id_len = circ_id_len;
    let mut chunk = [0u8; 4096];
    while cells.len() < count {
        match RawCell::decode(&buf, circ_id_len) {
            Some((cell, used)) => {
                if cell.cmd == ChanCmd::VERSIONS {
                    let theirs = Versions::decode(cell.body.as_slice()).unwrap();
                    let v = proto::link_version::negotiate(&[4, 5], &theirs.versions).unwrap();
                    circ_id_len = proto::link_version::circ_id_len(v);
                }
                cells.push(Cell {
                    cmd: cell.cmd,
                    body: cell.body.as_slice().to_vec(),
                    raw: buf[..used].to_vec(),
                });
                buf.drain(..used);
            }
            None => {
                let n = link.recv(&mut chunk);
                assert!(n > 0, "peer closed after {} cells: {cells:?}", cells.len());
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    cells
}

#[test]
fn ctor_responder_sends_versions_and_valid_certs() {
    let relay = CTorRelay::start("chivetls", &[]);
    let mut link = BlockingTls::connect(relay.or_addr());
    link.handshake();
    // OpenSSL 3 and rustls agree on TLS 1.3.
    assert_eq!(link.link.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let tls_cert_sha256 = link
        .link
        .peer_cert_digest()
        .expect("C tor presents a certificate");
    // The exporter works on a real session (its value is checked by AUTHENTICATE interop).
    assert_ne!(link.link.auth3_exporter(&[7; 32]).unwrap(), [0; 32]);

    link.send(&OUR_VERSIONS);
    let cells = read_cells(&mut link, 4);
    let cmds: Vec<ChanCmd> = cells.iter().map(|c| c.cmd).collect();
    assert_eq!(
        cmds,
        [
            ChanCmd::VERSIONS,
            ChanCmd::CERTS,
            ChanCmd::AUTH_CHALLENGE,
            ChanCmd::NETINFO
        ]
    );
    let versions = Versions::decode(&cells[0].body).unwrap();
    assert!(versions.versions.contains(&5), "{versions:?}");

    let certs = Certs::decode(&cells[1].body).unwrap();
    let peer = proto::certs_cell::check_responder_certs(&certs, &tls_cert_sha256, unix_now())
        .unwrap_or_else(|e| panic!("C tor's CERTS cell rejected: {e}"));
    assert_eq!(
        peer.rsa_identity.hex().to_uppercase(),
        relay.rsa_fingerprint().to_uppercase()
    );
    assert_eq!(
        peer.ed25519_identity.base64().trim_end_matches('='),
        relay.ed25519_fingerprint().trim_end_matches('=')
    );

    // The same CERTS cell does not validate against another certificate digest.
    let mut wrong = tls_cert_sha256;
    wrong[0] ^= 1;
    assert!(proto::certs_cell::check_responder_certs(&certs, &wrong, unix_now()).is_err());
}

fn test_cert() -> LinkCert {
    LinkCert::generate(
        LinkKeyAlg::EcdsaP256,
        unix_now(),
        86_400,
        &mut rand::rngs::OsRng,
    )
    .unwrap()
}

/// Accepts one connection with chive's server configuration, reads a line, answers
/// `echo: <line>` and closes with close_notify.
fn serve_one_echo(config: Arc<rustls::ServerConfig>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let link = TlsLink::server(config, tls::DEFAULT_PENDING_TLS_MAX_BYTES).unwrap();
        let mut conn = BlockingTls::new(stream, link);
        conn.handshake();
        let mut line = Vec::new();
        let mut chunk = [0u8; 1024];
        while !line.contains(&b'\n') {
            let n = conn.recv(&mut chunk);
            assert!(n > 0, "client closed before a whole line");
            line.extend_from_slice(&chunk[..n]);
        }
        let mut reply = b"echo: ".to_vec();
        reply.extend_from_slice(&line);
        conn.send(&reply);
        conn.link.send_close();
        conn.flush();
    });
    (port, handle)
}

#[test]
fn chive_server_with_chive_client_over_tcp() {
    let cert = test_cert();
    let (port, server) = serve_one_echo(tls::server_config(&cert).unwrap());
    let mut client = BlockingTls::connect((Ipv4Addr::LOCALHOST, port).into());
    client.handshake();
    assert_eq!(client.link.peer_cert_digest(), Some(cert.digest()));
    client.send(b"hello chive\n");
    let mut got = Vec::new();
    client.recv_at_least(&mut got, usize::MAX);
    assert_eq!(got, b"echo: hello chive\n");
    assert!(client.link.peer_closed());
    server.join().unwrap();
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `openssl s_client` with `version_flag` against chive's server: the handshake succeeds, the
/// certificate it shows is ours, and bytes pass both ways.
fn s_client_against_chive(version_flag: &str, want_protocol: &str) {
    let cert = test_cert();
    let (port, server) = serve_one_echo(tls::server_config(&cert).unwrap());
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([version_flag, "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from openssl\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("echo: hello from openssl\n"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("Protocol  : {want_protocol}"))
            || stdout.contains(&format!("New, {want_protocol},")),
        "{stdout}"
    );
    let pem = stdout
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|s| s.split("-----END CERTIFICATE-----").next())
        .expect("s_client shows the server certificate");
    let der = base64::engine::general_purpose::STANDARD
        .decode(pem.split_whitespace().collect::<String>())
        .unwrap();
    assert_eq!(der, cert.cert_der());
}

#[test]
fn chive_server_with_openssl_s_client() {
    if !openssl_available() {
        eprintln!("openssl not installed: skipping the s_client interop test");
        return;
    }
    s_client_against_chive("-tls1_3", "TLSv1.3");
    s_client_against_chive("-tls1_2", "TLSv1.2");
}

/// A C tor client connects to our server configuration (as it would to a bridge) and, once TLS
/// is up, sends a VERSIONS cell offering link protocols 4 and 5 among others.
fn ctor_client_against_chive(alg: LinkKeyAlg) {
    let cert = LinkCert::generate(alg, unix_now(), 86_400, &mut rand::rngs::OsRng).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut tor = CTor::client_via_bridge("bridge-client", listener.local_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(tor.exited().is_none(), "tor exited:\n{}", tor.log());
                assert!(Instant::now() < deadline, "tor never connected");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let config = tls::server_config(&cert).unwrap();
    let link = TlsLink::server(config, tls::DEFAULT_PENDING_TLS_MAX_BYTES).unwrap();
    let mut conn = BlockingTls::new(stream, link);
    conn.handshake();
    assert_eq!(conn.link.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    // Tor initiators present no certificate.
    assert_eq!(conn.link.peer_cert_der(), None);
    let cells = read_cells(&mut conn, 1);
    assert_eq!(cells[0].cmd, ChanCmd::VERSIONS);
    let versions = Versions::decode(&cells[0].body).unwrap();
    assert!(
        versions.versions.contains(&4) && versions.versions.contains(&5),
        "{versions:?}"
    );
}

#[test]
fn ctor_client_accepts_chive_ecdsa_link_cert() {
    ctor_client_against_chive(LinkKeyAlg::EcdsaP256);
}

#[test]
fn ctor_client_accepts_chive_rsa_link_cert() {
    ctor_client_against_chive(LinkKeyAlg::Rsa2048);
}

/// A cell with 4-byte circuit ids (link protocol 4 and 5), as bytes.
fn cell_bytes(circ_id: u32, cmd: ChanCmd, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let padded;
    let body = if cmd.is_var_len() {
        CellBody::Var(body)
    } else {
        let mut b = [0u8; BODY_LEN];
        b[..body.len()].copy_from_slice(body);
        padded = b;
        CellBody::Fixed(&padded)
    };
    RawCell {
        circ_id: proto::ids::CircId::new(circ_id),
        cmd,
        body,
    }
    .encode(CircIdLen::Four, &mut out)
    .unwrap();
    out
}

/// The link handshake's view of chive's TLS link, with the exporter value's first byte XORed
/// with `xor` (to make a wrong TLSSECRETS on purpose).
struct ExporterXor<'a> {
    link: &'a TlsLink,
    xor: u8,
}

impl LinkTls for ExporterXor<'_> {
    fn peer_cert_sha256(&self) -> Option<[u8; 32]> {
        self.link.peer_cert_digest()
    }

    fn auth3_exporter(&self, context: &[u8; 32]) -> Option<[u8; 32]> {
        let mut v = self.link.auth3_exporter(context).ok()?;
        v[0] ^= self.xor;
        Some(v)
    }
}

/// Connects to `relay` as an authenticating relay with `proto::link_handshake::Initiator`:
/// VERSIONS, then (after its VERSIONS, CERTS, AUTH_CHALLENGE, NETINFO) our CERTS, an
/// Ed25519-SHA256-RFC5705 AUTHENTICATE whose TLSSECRETS comes from [`TlsLink::auth3_exporter`]
/// with context CID (its first byte XORed with `tlssecrets_xor`), and NETINFO; then a
/// CREATE_FAST. Returns whether the channel stayed open: C tor closes a connection whose
/// AUTHENTICATE does not check out, and otherwise answers the CREATE_FAST.
fn authenticate_to(relay: &CTorRelay, tlssecrets_xor: u8) -> bool {
    let mut rng = rand::rngs::OsRng;
    let now = unix_now();
    let keys = proto::keys::RelayKeys::generate(now, &mut rng).unwrap();
    let identity_certs = keys.identity_certs(now, &mut rng).unwrap();
    let creds = RelayCredentials {
        keys: &keys,
        identity_certs: &identity_certs,
    };
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let addrs = NetinfoAddrs {
        peer: localhost,
        ours: vec![localhost],
    };
    let mut hs =
        Initiator::new(Some(creds), ExpectedPeer::default(), addrs, now, &mut rng).unwrap();

    let mut link = BlockingTls::connect(relay.or_addr());
    link.handshake();
    let mut out = Vec::new();
    hs.poll_transmit(&mut out);
    link.send(&out);
    let cells = read_cells(&mut link, 4);
    assert_eq!(cells[2].cmd, ChanCmd::AUTH_CHALLENGE);
    let received: Vec<u8> = cells.iter().flat_map(|c| c.raw.iter().copied()).collect();
    let tls = ExporterXor {
        link: &link.link,
        xor: tlssecrets_xor,
    };
    assert_eq!(hs.handle_input(&received, now, &tls), Ok(received.len()));
    assert!(hs.is_finished());

    let mut create_fast = [0u8; 20];
    rng.fill_bytes(&mut create_fast);
    out.clear();
    hs.poll_transmit(&mut out);
    // We initiated the channel, so our circuit ids have the high bit set (tor-spec §5.1.1).
    out.extend(cell_bytes(0x8000_0001, ChanCmd::CREATE_FAST, &create_fast));
    link.send(&out);

    // Either answer to CREATE_FAST means the channel is open; a closed connection, that C tor
    // rejected us.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((cell, used)) = RawCell::decode(&buf, CircIdLen::Four) {
            let circ = cell.circ_id.map_or(0, |c| c.get());
            if circ == 0x8000_0001
                && (cell.cmd == ChanCmd::CREATED_FAST || cell.cmd == ChanCmd::DESTROY)
            {
                return true;
            }
            buf.drain(..used);
        }
        let n = match link.link.read_plaintext(&mut chunk) {
            Ok(0) if link.link.peer_closed() => return false,
            Ok(0) => {
                use std::io::Read;
                let mut wire = [0u8; 16 * 1024];
                match link.stream.read(&mut wire) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        if link.link.handle_tls(&wire[..n]).is_err() {
                            return false;
                        }
                        continue;
                    }
                }
            }
            Ok(n) => n,
            Err(_) => return false,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// C tor checks our AUTHENTICATE cell, and with it the RFC 5705 exporter value (TLSSECRETS),
/// the responder certificate digest (SCERT) and the transcript hashes; a flipped exporter bit
/// must get the connection closed, which shows the check is real.
///
/// This pins a discrepancy: C tor 0.4.9 uses CID (the SHA-256 of the initiator's RSA identity
/// key) as the exporter context, where tor-spec §4.4.2 says the initiator's ed25519 identity.
#[test]
fn ctor_accepts_authenticate_with_our_exporter() {
    const BAD_AUTH: &str = "Received a bad AUTHENTICATE cell";
    let relay = CTorRelay::start("chiveauth", &["--ProtocolWarnings", "1"]);
    assert!(
        authenticate_to(&relay, 0),
        "C tor closed the channel after our AUTHENTICATE"
    );
    assert!(!relay.log().contains(BAD_AUTH));
    assert!(
        !authenticate_to(&relay, 1),
        "C tor accepted a wrong TLSSECRETS"
    );
    // Give tor a moment to flush its warning to the log file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.log().contains(BAD_AUTH) {
        assert!(Instant::now() < deadline, "no bad-AUTHENTICATE warning");
        std::thread::sleep(Duration::from_millis(50));
    }
}
