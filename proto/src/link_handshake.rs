//! The in-protocol link handshake after TLS, for both roles, as sans-io state machines.
//!
//! tor-spec §4 ("Negotiating and initializing connections",
//! <https://spec.torproject.org/tor-spec/negotiating-channels.html>):
//!
//! ```text
//!   initiator                                responder
//!   VERSIONS                  ------------>
//!                             <------------  VERSIONS, CERTS (2,4,5,7), AUTH_CHALLENGE, NETINFO
//!   [CERTS (2,4,6,7), AUTHENTICATE (type 3)]
//!   NETINFO                   ------------>
//! ```
//!
//! The initiator authenticates only when it is a relay (it was given [`RelayCredentials`]);
//! a client sends NETINFO alone. PADDING and VPADDING are ignored at any point, unknown commands
//! too (tor-spec §3: receivers drop them), and AUTHORIZE before VERSIONS (tor-spec §4); any
//! other cell out of order closes the handshake with [`PeerMisbehaved::Unexpected`]. Later
//! VERSIONS cells are ignored ("Any VERSIONS cells sent after the first VERSIONS cell MUST be
//! ignored", §4.1).
//!
//! # Call order
//!
//! Both [`Initiator`] and [`Responder`] work the same way:
//!
//! 1. `new(..)` prepares everything that needs randomness (certificates, the link
//!    authentication key, RAND, the challenge); the initiator queues its VERSIONS cell.
//! 2. [`Initiator::poll_transmit`] appends whatever is queued to the caller's buffer; send it.
//! 3. [`Initiator::handle_input`] takes decrypted TLS bytes in any fragmentation and returns how
//!    many it used: all of them, except once the handshake finishes, when the bytes after the
//!    peer's last handshake cell are the channel's and stay with the caller.
//! 4. Repeat 2 and 3 until `is_finished()`, then `finish()` gives the [`LinkInfo`].
//!
//! Errors are sticky: after one, every call returns it again and nothing more is sent.
//!
//! # Transcript digests (SLOG, CLOG)
//!
//! Both digests cover whole cells exactly as they crossed the TLS layer, from the first byte of
//! the connection: the VERSIONS cells with their 2-byte circuit ids, later cells with 4-byte
//! ones, padding cells included. SLOG stops after the responder's AUTH_CHALLENGE (its NETINFO
//! may already have arrived when the initiator signs, and is not covered); CLOG stops before the
//! AUTHENTICATE cell. C tor 0.4.9 computes them the same way in both roles: it accepts our
//! initiator's authenticator, and our responder accepts its (`relay/tests/ctor_link.rs`).
//!
//! # The TLSSECRETS exporter context
//!
//! tor-spec §4.4.2 says the RFC 5705 exporter context is the initiator's Ed25519 identity
//! (CID_ED). C tor 0.4.9 uses CID, the SHA-256 of the initiator's RSA identity key, both when
//! it signs and when it checks, and rejects anything else; being wire-compatible with it, both
//! roles here use CID. The TLS layer supplies
//! the exporter through [`LinkTls`].
//!
//! # Limits
//!
//! A variable-length cell longer than [`VAR_CELL_BODY_MAX_BYTES`] is refused as soon as its
//! header arrives, and a peer may send at most [`RECEIVED_MAX_BYTES`] before its handshake is
//! complete; so the receive buffer never holds more than one such cell. A timeout for
//! handshakes that never finish is the caller's (it owns the clock).
//!
//! [`fuzz_handshake`] feeds arbitrary bytes to either role in any state, for fuzz targets.

use std::fmt;
use std::net::IpAddr;

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::cell::{ChanCmd, CircIdLen, RawCell};
use crate::cert::{CertBuildError, CertError};
use crate::certs_cell::{self, IdentityCerts, InitiatorIdentity, PeerIdentity};
use crate::chan_msg::{
    Auth3Body, Auth3Fields, AuthChallenge, AuthMethod, Authenticate, Certs, ChanCell,
    ChanCellError, ChanMsg, Netinfo, NetinfoAddr, Versions,
};
use crate::codec::CodecError;
use crate::ids::{Ed25519Identity, RsaIdentity};
use crate::keys::{Ed25519Keypair, RelayKeys};
use crate::link_version;

/// The RFC 5705 exporter label of TLSSECRETS in AUTHENTICATE type 3 (tor-spec §4.4.2).
pub const AUTH3_EXPORTER_LABEL: &[u8] = b"EXPORTER FOR TOR TLS CLIENT BINDING AUTH0003";

/// The largest variable-length cell body accepted during the handshake. C tor's CERTS cell is
/// under 2 KiB; anything near this is not a handshake.
pub const VAR_CELL_BODY_MAX_BYTES: usize = 16 * 1024;

/// The most bytes a peer may send before its handshake is complete (padding included).
pub const RECEIVED_MAX_BYTES: usize = 128 * 1024;

/// Lifetime of the per-connection certificates we make: the type-5 certificate of our TLS
/// certificate and the type-6 certificate of our link authentication key. C tor gives its
/// link keys two days.
pub const SHORT_CERT_LIFETIME_SECS: u64 = 2 * 24 * 3600;

/// What the handshake needs from the TLS session under it. The relay's TLS layer implements
/// it; tests implement it with fixed values.
pub trait LinkTls {
    /// SHA-256 of the DER certificate the peer presented in the TLS handshake, if any (a
    /// responder always presents one; an initiator none).
    fn peer_cert_sha256(&self) -> Option<[u8; 32]>;

    /// The 32-byte RFC 5705 exporter output with label [`AUTH3_EXPORTER_LABEL`] and `context`,
    /// or `None` if the TLS session cannot give it (handshake not complete).
    fn auth3_exporter(&self, context: &[u8; 32]) -> Option<[u8; 32]>;
}

/// A relay's keys and its long-lived CERTS entries (types 2, 4 and 7, from
/// [`RelayKeys::identity_certs`], made once per signing key rather than per connection).
#[derive(Debug, Clone, Copy)]
pub struct RelayCredentials<'a> {
    /// Our keys.
    pub keys: &'a RelayKeys,
    /// Our identity certificates, made from `keys`.
    pub identity_certs: &'a IdentityCerts,
}

/// The identity an initiator expects the responder to prove (tor-spec §2: "all parties
/// receiving certificates must confirm that the identity key is as expected").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedPeer {
    /// The RSA identity, if known.
    pub rsa_identity: Option<RsaIdentity>,
    /// The ed25519 identity, if known.
    pub ed25519_identity: Option<Ed25519Identity>,
}

/// The addresses our NETINFO cell names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetinfoAddrs {
    /// The peer's address as we see it (the socket's remote address): OTHERADDR.
    pub peer: IpAddr,
    /// Our own advertised addresses: empty for a client.
    pub ours: Vec<IpAddr>,
}

/// What a handshake is waiting for; the states of both roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expecting {
    /// The peer's VERSIONS cell.
    Versions,
    /// The responder's CERTS cell.
    Certs,
    /// The responder's AUTH_CHALLENGE cell.
    AuthChallenge,
    /// The initiator's CERTS cell (it authenticates) or NETINFO (it does not).
    CertsOrNetinfo,
    /// The initiator's AUTHENTICATE cell.
    Authenticate,
    /// The peer's NETINFO cell.
    Netinfo,
    /// Nothing: the handshake is finished.
    Nothing,
}

/// A field of an AUTHENTICATE type-3 authenticator (tor-spec §4.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth3Field {
    /// CID.
    Cid,
    /// SID.
    Sid,
    /// CID_ED.
    CidEd,
    /// SID_ED.
    SidEd,
    /// SLOG.
    Slog,
    /// CLOG.
    Clog,
    /// SCERT.
    Scert,
    /// TLSSECRETS.
    TlsSecrets,
}

/// How the peer broke the handshake. Each closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PeerMisbehaved {
    /// A cell with a bad circuit id for its command, or a malformed body.
    #[error(transparent)]
    Cell(#[from] ChanCellError),
    /// A variable-length cell longer than [`VAR_CELL_BODY_MAX_BYTES`].
    #[error("{len}-byte {cmd} cell during the link handshake")]
    CellTooLong {
        /// Its command.
        cmd: ChanCmd,
        /// Its body length.
        len: usize,
    },
    /// More than [`RECEIVED_MAX_BYTES`] before the handshake finished.
    #[error("too many bytes during the link handshake")]
    TooMuchData,
    /// A known cell at a point where the handshake does not allow it (including a second
    /// CERTS, AUTH_CHALLENGE, AUTHENTICATE or NETINFO).
    #[error("unexpected {cmd} cell while expecting {expecting:?}")]
    Unexpected {
        /// The cell's command.
        cmd: ChanCmd,
        /// What we were waiting for.
        expecting: Expecting,
    },
    /// The VERSIONS cells have no version in common.
    #[error("no link protocol version in common")]
    NoCommonVersion,
    /// The responder presented no TLS certificate.
    #[error("responder presented no TLS certificate")]
    NoTlsCert,
    /// The responder's CERTS cell does not authenticate it.
    #[error("bad responder CERTS: {0}")]
    ResponderCerts(CertError),
    /// The responder proved an RSA identity other than the expected one.
    #[error("responder has an unexpected RSA identity")]
    WrongRsaIdentity,
    /// The responder proved an ed25519 identity other than the expected one.
    #[error("responder has an unexpected ed25519 identity")]
    WrongEd25519Identity,
    /// The AUTH_CHALLENGE offers no method we can authenticate with (we need type 3).
    #[error("AUTH_CHALLENGE offers no method we support")]
    NoAuthMethod,
    /// The initiator's CERTS cell is invalid.
    #[error("bad initiator CERTS: {0}")]
    InitiatorCerts(CertError),
    /// An AUTHENTICATE of a type other than 3 (the type we offer).
    #[error("AUTHENTICATE of unsupported type {}", .0 .0)]
    AuthType(AuthMethod),
    /// The type-3 authenticator is malformed.
    #[error("malformed AUTHENTICATE: {0}")]
    AuthMalformed(CodecError),
    /// A field of the authenticator has the wrong value.
    #[error("AUTHENTICATE field {0:?} is wrong")]
    AuthField(Auth3Field),
    /// The authenticator's signature does not verify with the type-6 key.
    #[error("bad AUTHENTICATE signature")]
    AuthSignature,
}

/// Failures that are not the peer's fault: the TLS layer could not give what the handshake
/// needs, or we could not encode our own cells (a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LocalError {
    /// [`LinkTls::auth3_exporter`] returned `None`.
    #[error("TLS exporter unavailable")]
    ExporterUnavailable,
    /// One of our cells would not encode.
    #[error("could not encode our cell: {0}")]
    Encode(CodecError),
}

/// Why a link handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LinkHandshakeError {
    /// The peer broke the protocol.
    #[error(transparent)]
    Peer(#[from] PeerMisbehaved),
    /// Our side failed.
    #[error(transparent)]
    Local(#[from] LocalError),
}

/// The result of a finished handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The negotiated link protocol version.
    pub link_version: u16,
    /// The circuit id width that version uses.
    pub circ_id_len: CircIdLen,
    /// Whether we initiated the connection.
    pub we_initiated: bool,
    /// The peer's proven identities: always for a responder we connected to, and for an
    /// initiator that authenticated; `None` for an unauthenticated initiator (a client).
    pub peer: Option<PeerIdentity>,
    /// TIME from the peer's NETINFO (0 from clients).
    pub peer_timestamp: u32,
    /// Our `now` when the peer's NETINFO arrived, to compare with `peer_timestamp`.
    pub netinfo_received_at: u64,
    /// OTHERADDR from the peer's NETINFO: our address as the peer sees it, if recognised.
    pub our_addr_seen_by_peer: Option<IpAddr>,
    /// The peer's own addresses from its NETINFO (recognised ones only).
    pub peer_addrs: Vec<IpAddr>,
    /// Whether the address we see the peer at is among `peer_addrs`: the connection is then
    /// canonical (tor-spec §5.3.1).
    pub peer_addr_is_canonical: bool,
}

impl LinkInfo {
    /// The peer's clock minus ours in seconds, or `None` if it sent no time (timestamp 0).
    pub fn clock_skew_secs(&self) -> Option<i64> {
        (self.peer_timestamp != 0).then(|| {
            i64::from(self.peer_timestamp)
                - i64::try_from(self.netinfo_received_at).unwrap_or(i64::MAX)
        })
    }
}

/// SHA-256 of an RSA public key's PKCS#1 DER encoding: CID and SID of AUTHENTICATE, and the
/// TLSSECRETS exporter context.
pub fn rsa_key_sha256(key: &rsa::RsaPublicKey) -> [u8; 32] {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    // Encoding a well-formed public key cannot fail; the empty fallback gives a digest that
    // matches nothing rather than a panic.
    let der = key.to_pkcs1_der().map(|d| d.into_vec()).unwrap_or_default();
    Sha256::digest(der).into()
}

/// The exporter context our AUTHENTICATE uses as an initiator with `keys`: CID.
pub fn auth3_exporter_context(keys: &RelayKeys) -> [u8; 32] {
    rsa_key_sha256(&keys.rsa_identity().public_key())
}

/// The byte-stream side shared by both roles: framing, transcript digests, limits, the
/// outgoing queue and the sticky error.
struct Link {
    /// Received bytes not yet framed (less than one cell).
    buf: Vec<u8>,
    circ_id_len: CircIdLen,
    received: Sha256,
    sent: Sha256,
    received_bytes: usize,
    outbox: Vec<u8>,
    error: Option<LinkHandshakeError>,
}

/// What a state did with a cell.
enum Flow {
    More,
    Finished,
}

/// What the initiator's and the responder's state machines share, so that one loop
/// ([`drive`]) feeds either.
trait SideState: Sized {
    type Config;
    /// The state after an error: it takes nothing more.
    const FAILED: Self;
    fn is_done(&self) -> bool;
    fn handle(
        self,
        link: &mut Link,
        config: &Self::Config,
        cell: ChanCell,
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<(Self, Flow), LinkHandshakeError>;
}

/// Feeds `input` to `link`, stepping `state` through each framed cell; after an error the state
/// is [`SideState::FAILED`]. Returns how many bytes were used, as
/// [`Initiator::handle_input`] tells.
fn drive<S: SideState>(
    link: &mut Link,
    state: &mut S,
    config: &S::Config,
    input: &[u8],
    now: u64,
    tls: &dyn LinkTls,
) -> Result<usize, LinkHandshakeError> {
    if state.is_done() {
        return Ok(0);
    }
    let r = link.feed(input, |link, cell| {
        let old = std::mem::replace(state, S::FAILED);
        let (new, flow) = old.handle(link, config, cell, now, tls)?;
        *state = new;
        Ok(flow)
    });
    if r.is_err() {
        *state = S::FAILED;
    }
    r
}

impl Link {
    fn new() -> Self {
        Link {
            buf: Vec::new(),
            circ_id_len: CircIdLen::BEFORE_NEGOTIATION,
            received: Sha256::new(),
            sent: Sha256::new(),
            received_bytes: 0,
            outbox: Vec::new(),
            error: None,
        }
    }

    /// Queues one handshake cell (circuit id 0) and adds it to the sent digest.
    fn send(&mut self, msg: ChanMsg) -> Result<(), LinkHandshakeError> {
        let start = self.outbox.len();
        ChanCell { circ_id: None, msg }
            .encode(self.circ_id_len, &mut self.outbox)
            .map_err(LocalError::Encode)?;
        self.sent
            .update(self.outbox.get(start..).unwrap_or_default());
        Ok(())
    }

    fn sent_digest(&self) -> [u8; 32] {
        self.sent.clone().finalize().into()
    }

    fn received_digest(&self) -> [u8; 32] {
        self.received.clone().finalize().into()
    }

    /// Buffers `input`, frames whole cells and hands each to `step`; see
    /// [`Initiator::handle_input`] for the return value.
    fn feed(
        &mut self,
        input: &[u8],
        mut step: impl FnMut(&mut Link, ChanCell) -> Result<Flow, LinkHandshakeError>,
    ) -> Result<usize, LinkHandshakeError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.buf.extend_from_slice(input);
        match self.frame(&mut step) {
            Ok((used, Flow::More)) => {
                self.buf.drain(..used);
                Ok(input.len())
            }
            Ok((used, Flow::Finished)) => {
                // The buffer held less than a cell before `input`, so the finishing cell ends
                // inside `input` and everything after it came from `input`.
                let left = self.buf.len().saturating_sub(used);
                self.buf = Vec::new();
                Ok(input.len().saturating_sub(left))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: LinkHandshakeError) -> LinkHandshakeError {
        self.error = Some(e);
        self.outbox.clear();
        self.buf = Vec::new();
        e
    }

    fn frame(
        &mut self,
        step: &mut impl FnMut(&mut Link, ChanCell) -> Result<Flow, LinkHandshakeError>,
    ) -> Result<(usize, Flow), LinkHandshakeError> {
        let mut pos = 0;
        loop {
            let rest = self.buf.get(pos..).unwrap_or_default();
            check_var_len(rest, self.circ_id_len)?;
            let Some((raw, used)) = RawCell::decode(rest, self.circ_id_len) else {
                // What is left is part of one cell, bounded by `check_var_len`.
                if self.received_bytes.saturating_add(rest.len()) > RECEIVED_MAX_BYTES {
                    return Err(PeerMisbehaved::TooMuchData.into());
                }
                return Ok((pos, Flow::More));
            };
            self.received_bytes = self.received_bytes.saturating_add(used);
            if self.received_bytes > RECEIVED_MAX_BYTES {
                return Err(PeerMisbehaved::TooMuchData.into());
            }
            let cell = ChanCell::decode(&raw).map_err(PeerMisbehaved::Cell)?;
            // CLOG covers what the initiator sent before AUTHENTICATE, not the cell itself;
            // nothing after it is digested by either side.
            if raw.cmd != ChanCmd::AUTHENTICATE {
                self.received
                    .update(self.buf.get(pos..pos + used).unwrap_or_default());
            }
            pos += used;
            if let Flow::Finished = step(self, cell)? {
                return Ok((pos, Flow::Finished));
            }
        }
    }
}

/// Refuses a variable-length cell longer than the handshake allows as soon as its length field
/// is in, rather than buffering it.
fn check_var_len(buf: &[u8], circ_id_len: CircIdLen) -> Result<(), PeerMisbehaved> {
    let id = circ_id_len.bytes();
    let (Some(&cmd), Some(len)) = (buf.get(id), buf.get(id + 1..id + 3)) else {
        return Ok(());
    };
    let cmd = ChanCmd(cmd);
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if cmd.is_var_len() && len > VAR_CELL_BODY_MAX_BYTES {
        return Err(PeerMisbehaved::CellTooLong { cmd, len });
    }
    Ok(())
}

/// Whether a cell is ignored whatever the state: padding, and commands we do not know.
fn ignored_anywhere(msg: &ChanMsg) -> bool {
    matches!(
        msg,
        ChanMsg::Padding(_) | ChanMsg::Vpadding(_) | ChanMsg::Unrecognized { .. }
    )
}

fn unexpected(cmd: ChanCmd, expecting: Expecting) -> LinkHandshakeError {
    PeerMisbehaved::Unexpected { cmd, expecting }.into()
}

/// Negotiates from the peer's VERSIONS cell and switches framing to the negotiated width.
fn negotiate(link: &mut Link, theirs: &Versions) -> Result<u16, LinkHandshakeError> {
    let v = link_version::negotiate(&link_version::SUPPORTED, &theirs.versions)
        .ok_or(PeerMisbehaved::NoCommonVersion)?;
    link.circ_id_len = link_version::circ_id_len(v);
    Ok(v)
}

fn our_versions() -> ChanMsg {
    ChanMsg::Versions(Versions {
        versions: link_version::SUPPORTED.to_vec(),
    })
}

fn our_netinfo(addrs: &NetinfoAddrs, timestamp: u32) -> ChanMsg {
    ChanMsg::Netinfo(Netinfo {
        timestamp,
        other_addr: addrs.peer.into(),
        my_addrs: addrs.ours.iter().map(|&a| a.into()).collect(),
    })
}

fn unix_u32(now: u64) -> u32 {
    u32::try_from(now).unwrap_or(u32::MAX)
}

/// Fills in [`LinkInfo`] from the peer's NETINFO.
fn link_info(
    netinfo: &Netinfo,
    now: u64,
    link_version: u16,
    we_initiated: bool,
    peer: Option<PeerIdentity>,
    addrs: &NetinfoAddrs,
) -> LinkInfo {
    let peer_addrs: Vec<IpAddr> = netinfo
        .my_addrs
        .iter()
        .filter_map(NetinfoAddr::ip)
        .collect();
    LinkInfo {
        link_version,
        circ_id_len: link_version::circ_id_len(link_version),
        we_initiated,
        peer,
        peer_timestamp: netinfo.timestamp,
        netinfo_received_at: now,
        our_addr_seen_by_peer: netinfo.other_addr.ip(),
        peer_addr_is_canonical: peer_addrs.contains(&addrs.peer),
        peer_addrs,
    }
}

// ---------------------------------------------------------------------------------------------
// Initiator

/// What an authenticating initiator prepared in [`Initiator::new`].
struct InitiatorAuth {
    certs: Certs,
    link_auth: Ed25519Keypair,
    cid: [u8; 32],
    cid_ed: [u8; 32],
    rand: [u8; 24],
}

/// The initiator's fixed inputs.
struct InitiatorConfig {
    auth: Option<InitiatorAuth>,
    expected: ExpectedPeer,
    addrs: NetinfoAddrs,
}

/// Waiting for the responder's VERSIONS.
struct ExpectVersions;

/// Waiting for the responder's CERTS.
struct ExpectCerts {
    version: u16,
}

/// Waiting for the responder's AUTH_CHALLENGE.
struct ExpectAuthChallenge {
    version: u16,
    peer: PeerIdentity,
    scert: [u8; 32],
}

/// Waiting for the peer's NETINFO, the last cell (both roles).
struct ExpectNetinfo {
    version: u16,
    peer: Option<PeerIdentity>,
}

enum InitiatorState {
    ExpectVersions(ExpectVersions),
    ExpectCerts(ExpectCerts),
    ExpectAuthChallenge(ExpectAuthChallenge),
    ExpectNetinfo(ExpectNetinfo),
    Done(Box<LinkInfo>),
    /// Only while a transition runs, or after an error.
    Failed,
}

/// The initiator's side of the link handshake (we opened the TCP connection). See the
/// [module documentation](self) for the call order.
pub struct Initiator {
    link: Link,
    config: InitiatorConfig,
    state: InitiatorState,
}

impl Initiator {
    /// Prepares a handshake and queues our VERSIONS cell.
    ///
    /// With `relay` we authenticate as that relay; without, we are a client and stay
    /// anonymous. `expected` is the responder identity we were asked to reach. `now` is UNIX
    /// seconds (certificate lifetimes). Fails only if our own certificates cannot be made.
    pub fn new(
        relay: Option<RelayCredentials<'_>>,
        expected: ExpectedPeer,
        addrs: NetinfoAddrs,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, CertBuildError> {
        let auth = match relay {
            None => None,
            Some(creds) => {
                let link_auth = Ed25519Keypair::generate(rng);
                let certs = creds
                    .identity_certs
                    .initiator_certs(
                        creds.keys.ed25519_signing(),
                        &link_auth.public().to_bytes(),
                        now.saturating_add(SHORT_CERT_LIFETIME_SECS),
                    )?
                    .into_certs();
                let mut rand = [0u8; 24];
                rng.fill_bytes(&mut rand);
                Some(InitiatorAuth {
                    certs,
                    link_auth,
                    cid: auth3_exporter_context(creds.keys),
                    cid_ed: *creds.keys.ed25519_identity().as_bytes(),
                    rand,
                })
            }
        };
        let mut link = Link::new();
        let mut state = InitiatorState::ExpectVersions(ExpectVersions);
        if let Err(e) = link.send(our_versions()) {
            // VERSIONS with two fixed versions always encodes; keep the error sticky anyway.
            link.fail(e);
            state = InitiatorState::Failed;
        }
        Ok(Initiator {
            link,
            config: InitiatorConfig {
                auth,
                expected,
                addrs,
            },
            state,
        })
    }

    /// Takes decrypted bytes from the responder; returns how many were used. That is all of
    /// `input` unless this call finished the handshake: then the bytes after the responder's
    /// NETINFO are not used and belong to the open channel. `now` is UNIX seconds.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<usize, LinkHandshakeError> {
        let (link, state, config) = (&mut self.link, &mut self.state, &self.config);
        drive(link, state, config, input, now, tls)
    }

    /// Appends the bytes to send, if any, to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.link.outbox);
    }

    /// What the handshake waits for.
    pub fn expecting(&self) -> Expecting {
        match self.state {
            InitiatorState::ExpectVersions(_) => Expecting::Versions,
            InitiatorState::ExpectCerts(_) => Expecting::Certs,
            InitiatorState::ExpectAuthChallenge(_) => Expecting::AuthChallenge,
            InitiatorState::ExpectNetinfo(_) => Expecting::Netinfo,
            InitiatorState::Done(_) | InitiatorState::Failed => Expecting::Nothing,
        }
    }

    /// The error that stopped the handshake, if one did.
    pub fn error(&self) -> Option<LinkHandshakeError> {
        self.link.error
    }

    /// Whether the handshake is complete (send what [`Initiator::poll_transmit`] still gives).
    pub fn is_finished(&self) -> bool {
        self.state.is_done()
    }

    /// The outcome, once finished.
    pub fn finish(self) -> Option<LinkInfo> {
        match self.state {
            InitiatorState::Done(info) => Some(*info),
            _ => None,
        }
    }
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("expecting", &self.expecting())
            .field("authenticating", &self.config.auth.is_some())
            .field("error", &self.link.error)
            .finish_non_exhaustive()
    }
}

impl SideState for InitiatorState {
    type Config = InitiatorConfig;
    const FAILED: Self = InitiatorState::Failed;

    fn is_done(&self) -> bool {
        matches!(self, InitiatorState::Done(_))
    }

    fn handle(
        self,
        link: &mut Link,
        config: &InitiatorConfig,
        cell: ChanCell,
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<(Self, Flow), LinkHandshakeError> {
        if ignored_anywhere(&cell.msg) {
            return Ok((self, Flow::More));
        }
        let cmd = cell.msg.cmd();
        let next = match (self, cell.msg) {
            (InitiatorState::ExpectVersions(s), msg) => s.handle(link, msg)?,
            // Later VERSIONS cells MUST be ignored (tor-spec §4.1).
            (state, ChanMsg::Versions(_)) => state,
            (InitiatorState::ExpectCerts(s), ChanMsg::Certs(c)) => {
                s.handle(config, &c, now, tls)?
            }
            (InitiatorState::ExpectAuthChallenge(s), ChanMsg::AuthChallenge(c)) => {
                s.handle(link, config, &c, now, tls)?
            }
            (InitiatorState::ExpectNetinfo(s), ChanMsg::Netinfo(n)) => {
                let info = link_info(&n, now, s.version, true, s.peer, &config.addrs);
                return Ok((InitiatorState::Done(Box::new(info)), Flow::Finished));
            }
            (state, _) => {
                let expecting = match state {
                    InitiatorState::ExpectCerts(_) => Expecting::Certs,
                    InitiatorState::ExpectAuthChallenge(_) => Expecting::AuthChallenge,
                    InitiatorState::ExpectNetinfo(_) => Expecting::Netinfo,
                    _ => Expecting::Nothing,
                };
                return Err(unexpected(cmd, expecting));
            }
        };
        Ok((next, Flow::More))
    }
}

impl ExpectVersions {
    fn handle(self, link: &mut Link, msg: ChanMsg) -> Result<InitiatorState, LinkHandshakeError> {
        match msg {
            ChanMsg::Versions(v) => {
                let version = negotiate(link, &v)?;
                Ok(InitiatorState::ExpectCerts(ExpectCerts { version }))
            }
            ChanMsg::Authorize(_) => Ok(InitiatorState::ExpectVersions(self)),
            other => Err(unexpected(other.cmd(), Expecting::Versions)),
        }
    }
}

impl ExpectCerts {
    fn handle(
        self,
        config: &InitiatorConfig,
        certs: &Certs,
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<InitiatorState, LinkHandshakeError> {
        let scert = tls.peer_cert_sha256().ok_or(PeerMisbehaved::NoTlsCert)?;
        let peer = certs_cell::check_responder_certs(certs, &scert, now)
            .map_err(PeerMisbehaved::ResponderCerts)?;
        if config
            .expected
            .rsa_identity
            .is_some_and(|id| id != peer.rsa_identity)
        {
            return Err(PeerMisbehaved::WrongRsaIdentity.into());
        }
        if config
            .expected
            .ed25519_identity
            .is_some_and(|id| id != peer.ed25519_identity)
        {
            return Err(PeerMisbehaved::WrongEd25519Identity.into());
        }
        Ok(InitiatorState::ExpectAuthChallenge(ExpectAuthChallenge {
            version: self.version,
            peer,
            scert,
        }))
    }
}

impl ExpectAuthChallenge {
    /// Sends CERTS and AUTHENTICATE if we are a relay, then NETINFO.
    fn handle(
        self,
        link: &mut Link,
        config: &InitiatorConfig,
        challenge: &AuthChallenge,
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<InitiatorState, LinkHandshakeError> {
        let timestamp = match &config.auth {
            None => 0, // "Clients SHOULD send "0" as their timestamp" (tor-spec §4.5).
            Some(auth) => {
                if !challenge
                    .methods
                    .contains(&AuthMethod::ED25519_SHA256_RFC5705)
                {
                    return Err(PeerMisbehaved::NoAuthMethod.into());
                }
                // SLOG: the responder's bytes through AUTH_CHALLENGE, already digested.
                let slog = link.received_digest();
                link.send(ChanMsg::Certs(auth.certs.clone()))?;
                let tlssecrets = tls
                    .auth3_exporter(&auth.cid)
                    .ok_or(LocalError::ExporterUnavailable)?;
                let fields = Auth3Fields {
                    cid: auth.cid,
                    sid: rsa_key_sha256(&self.peer.rsa_identity_key),
                    cid_ed: auth.cid_ed,
                    sid_ed: *self.peer.ed25519_identity.as_bytes(),
                    slog,
                    clog: link.sent_digest(),
                    scert: self.scert,
                    tlssecrets,
                    rand: auth.rand,
                };
                link.send(ChanMsg::Authenticate(sign_auth3(&fields, &auth.link_auth)))?;
                unix_u32(now)
            }
        };
        link.send(our_netinfo(&config.addrs, timestamp))?;
        Ok(InitiatorState::ExpectNetinfo(ExpectNetinfo {
            version: self.version,
            peer: Some(self.peer),
        }))
    }
}

/// An AUTHENTICATE type-3 cell: `fields` signed with the link authentication key.
fn sign_auth3(fields: &Auth3Fields, key: &Ed25519Keypair) -> Authenticate {
    let mut auth = Vec::with_capacity(Auth3Fields::LEN + Auth3Body::SIG_LEN);
    fields.encode(&mut auth);
    let sig = key.sign(&auth);
    auth.extend_from_slice(&sig.to_bytes());
    Authenticate {
        auth_type: AuthMethod::ED25519_SHA256_RFC5705,
        auth,
    }
}

// ---------------------------------------------------------------------------------------------
// Responder

/// The responder's fixed inputs.
struct ResponderConfig {
    certs: Certs,
    challenge: [u8; 32],
    sid: [u8; 32],
    sid_ed: [u8; 32],
    scert: [u8; 32],
    addrs: NetinfoAddrs,
}

/// Waiting for the initiator's VERSIONS.
struct RespExpectVersions;

/// Waiting for the initiator's CERTS or NETINFO.
struct ExpectCertsOrNetinfo {
    version: u16,
    slog: [u8; 32],
}

/// Waiting for the initiator's AUTHENTICATE.
struct ExpectAuthenticate {
    version: u16,
    slog: [u8; 32],
    initiator: InitiatorIdentity,
}

enum ResponderState {
    ExpectVersions(RespExpectVersions),
    ExpectCertsOrNetinfo(ExpectCertsOrNetinfo),
    ExpectAuthenticate(ExpectAuthenticate),
    ExpectNetinfo(ExpectNetinfo),
    Done(Box<LinkInfo>),
    Failed,
}

/// The responder's side of the link handshake (the peer connected to our ORPort). See the
/// [module documentation](self) for the call order.
pub struct Responder {
    link: Link,
    config: ResponderConfig,
    state: ResponderState,
}

impl Responder {
    /// Prepares a handshake as the relay `relay`, whose TLS certificate has SHA-256
    /// `tls_cert_sha256`. Sends nothing until the initiator's VERSIONS arrives. `now` is
    /// UNIX seconds. Fails only if our own certificates cannot be made.
    pub fn new(
        relay: RelayCredentials<'_>,
        tls_cert_sha256: [u8; 32],
        addrs: NetinfoAddrs,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, CertBuildError> {
        let certs = relay
            .identity_certs
            .responder_certs(
                relay.keys.ed25519_signing(),
                &tls_cert_sha256,
                now.saturating_add(SHORT_CERT_LIFETIME_SECS),
            )?
            .into_certs();
        let mut challenge = [0u8; 32];
        rng.fill_bytes(&mut challenge);
        Ok(Responder {
            link: Link::new(),
            config: ResponderConfig {
                certs,
                challenge,
                sid: auth3_exporter_context(relay.keys),
                sid_ed: *relay.keys.ed25519_identity().as_bytes(),
                scert: tls_cert_sha256,
                addrs,
            },
            state: ResponderState::ExpectVersions(RespExpectVersions),
        })
    }

    /// Takes decrypted bytes from the initiator; returns how many were used, as
    /// [`Initiator::handle_input`] does (the bytes after the initiator's NETINFO, such as a
    /// CREATE cell in the same TLS record, are the channel's).
    pub fn handle_input(
        &mut self,
        input: &[u8],
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<usize, LinkHandshakeError> {
        let (link, state, config) = (&mut self.link, &mut self.state, &self.config);
        drive(link, state, config, input, now, tls)
    }

    /// Appends the bytes to send, if any, to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.link.outbox);
    }

    /// What the handshake waits for.
    pub fn expecting(&self) -> Expecting {
        self.state.expecting()
    }

    /// The error that stopped the handshake, if one did.
    pub fn error(&self) -> Option<LinkHandshakeError> {
        self.link.error
    }

    /// Whether the handshake is complete.
    pub fn is_finished(&self) -> bool {
        self.state.is_done()
    }

    /// The outcome, once finished.
    pub fn finish(self) -> Option<LinkInfo> {
        match self.state {
            ResponderState::Done(info) => Some(*info),
            _ => None,
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("expecting", &self.expecting())
            .field("error", &self.link.error)
            .finish_non_exhaustive()
    }
}

impl SideState for ResponderState {
    type Config = ResponderConfig;
    const FAILED: Self = ResponderState::Failed;

    fn is_done(&self) -> bool {
        matches!(self, ResponderState::Done(_))
    }

    fn handle(
        self,
        link: &mut Link,
        config: &ResponderConfig,
        cell: ChanCell,
        now: u64,
        tls: &dyn LinkTls,
    ) -> Result<(Self, Flow), LinkHandshakeError> {
        if ignored_anywhere(&cell.msg) {
            return Ok((self, Flow::More));
        }
        let cmd = cell.msg.cmd();
        let expecting = self.expecting();
        let next = match (self, cell.msg) {
            (ResponderState::ExpectVersions(_), ChanMsg::Versions(v)) => {
                let version = negotiate(link, &v)?;
                ResponderState::ExpectCertsOrNetinfo(greet(link, config, version, now)?)
            }
            (s @ ResponderState::ExpectVersions(_), ChanMsg::Authorize(_)) => s,
            (ResponderState::ExpectVersions(_), _) => {
                return Err(unexpected(cmd, Expecting::Versions))
            }
            (state, ChanMsg::Versions(_)) => state,
            (ResponderState::ExpectCertsOrNetinfo(s), ChanMsg::Netinfo(n)) => {
                let info = link_info(&n, now, s.version, false, None, &config.addrs);
                return Ok((ResponderState::Done(Box::new(info)), Flow::Finished));
            }
            (ResponderState::ExpectCertsOrNetinfo(s), ChanMsg::Certs(c)) => {
                let initiator = certs_cell::check_initiator_certs(&c, now)
                    .map_err(PeerMisbehaved::InitiatorCerts)?;
                ResponderState::ExpectAuthenticate(ExpectAuthenticate {
                    version: s.version,
                    slog: s.slog,
                    initiator,
                })
            }
            (ResponderState::ExpectAuthenticate(s), ChanMsg::Authenticate(a)) => {
                s.handle(link, config, &a, tls)?
            }
            (ResponderState::ExpectNetinfo(s), ChanMsg::Netinfo(n)) => {
                let info = link_info(&n, now, s.version, false, s.peer, &config.addrs);
                return Ok((ResponderState::Done(Box::new(info)), Flow::Finished));
            }
            _ => return Err(unexpected(cmd, expecting)),
        };
        Ok((next, Flow::More))
    }
}

impl ResponderState {
    fn expecting(&self) -> Expecting {
        match self {
            ResponderState::ExpectVersions(_) => Expecting::Versions,
            ResponderState::ExpectCertsOrNetinfo(_) => Expecting::CertsOrNetinfo,
            ResponderState::ExpectAuthenticate(_) => Expecting::Authenticate,
            ResponderState::ExpectNetinfo(_) => Expecting::Netinfo,
            ResponderState::Done(_) | ResponderState::Failed => Expecting::Nothing,
        }
    }
}

/// Answers the initiator's VERSIONS: our VERSIONS (still with 2-byte circuit ids), CERTS,
/// AUTH_CHALLENGE and NETINFO.
fn greet(
    link: &mut Link,
    config: &ResponderConfig,
    version: u16,
    now: u64,
) -> Result<ExpectCertsOrNetinfo, LinkHandshakeError> {
    let negotiated = link.circ_id_len;
    link.circ_id_len = CircIdLen::BEFORE_NEGOTIATION;
    let sent = link.send(our_versions());
    link.circ_id_len = negotiated;
    sent?;
    link.send(ChanMsg::Certs(config.certs.clone()))?;
    link.send(ChanMsg::AuthChallenge(AuthChallenge {
        challenge: config.challenge,
        methods: vec![AuthMethod::ED25519_SHA256_RFC5705],
    }))?;
    let slog = link.sent_digest();
    link.send(our_netinfo(&config.addrs, unix_u32(now)))?;
    Ok(ExpectCertsOrNetinfo { version, slog })
}

impl ExpectAuthenticate {
    /// Checks every field of the authenticator, then its signature (tor-spec §4.4.2: "a
    /// responder checks that all fields from TYPE through TLSSECRETS contain their unique
    /// correct values ... and then verifies the signature").
    fn handle(
        self,
        link: &Link,
        config: &ResponderConfig,
        auth: &Authenticate,
        tls: &dyn LinkTls,
    ) -> Result<ResponderState, LinkHandshakeError> {
        if auth.auth_type != AuthMethod::ED25519_SHA256_RFC5705 {
            return Err(PeerMisbehaved::AuthType(auth.auth_type).into());
        }
        let body = auth.auth3().map_err(PeerMisbehaved::AuthMalformed)?;
        let f = &body.fields;
        let peer = &self.initiator.peer;
        let cid = rsa_key_sha256(&peer.rsa_identity_key);
        let tlssecrets = tls
            .auth3_exporter(&cid)
            .ok_or(LocalError::ExporterUnavailable)?;
        let checks = [
            (f.cid == cid, Auth3Field::Cid),
            (f.sid == config.sid, Auth3Field::Sid),
            (
                &f.cid_ed == peer.ed25519_identity.as_bytes(),
                Auth3Field::CidEd,
            ),
            (f.sid_ed == config.sid_ed, Auth3Field::SidEd),
            (f.slog == self.slog, Auth3Field::Slog),
            (f.clog == link.received_digest(), Auth3Field::Clog),
            (f.scert == config.scert, Auth3Field::Scert),
            (
                bool::from(f.tlssecrets.ct_eq(&tlssecrets)),
                Auth3Field::TlsSecrets,
            ),
        ];
        if let Some((_, field)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(PeerMisbehaved::AuthField(*field).into());
        }
        let key = VerifyingKey::from_bytes(&self.initiator.link_auth_key)
            .map_err(|_| PeerMisbehaved::AuthSignature)?;
        key.verify_strict(body.signed, &Signature::from_bytes(&body.sig))
            .map_err(|_| PeerMisbehaved::AuthSignature)?;
        Ok(ResponderState::ExpectNetinfo(ExpectNetinfo {
            version: self.version,
            peer: Some(self.initiator.peer),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing

/// A deterministic generator for the fuzz entry point: SHA-256 in counter mode. Not random;
/// only so the fuzzed handshakes are reproducible.
struct FuzzRng(u64);

impl rand_core::RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            self.0 = self.0.wrapping_add(1);
            let block: [u8; 32] = Sha256::digest(self.0.to_be_bytes()).into();
            chunk.copy_from_slice(block.get(..chunk.len()).unwrap_or_default());
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FuzzRng {}

/// Fixed TLS values for fuzzing and tests: a peer certificate digest and an exporter that
/// hashes its context with a shared secret, so both ends agree.
#[derive(Debug, Clone, Copy)]
struct FixedTls {
    peer_cert: Option<[u8; 32]>,
    secret: [u8; 32],
}

impl LinkTls for FixedTls {
    fn peer_cert_sha256(&self) -> Option<[u8; 32]> {
        self.peer_cert
    }

    fn auth3_exporter(&self, context: &[u8; 32]) -> Option<[u8; 32]> {
        Some(
            Sha256::new()
                .chain_update(AUTH3_EXPORTER_LABEL)
                .chain_update(self.secret)
                .chain_update(context)
                .finalize()
                .into(),
        )
    }
}

/// The keys the fuzz entry point's relays use, made once.
fn fuzz_relays() -> Option<&'static [(RelayKeys, IdentityCerts); 2]> {
    static RELAYS: std::sync::OnceLock<Option<[(RelayKeys, IdentityCerts); 2]>> =
        std::sync::OnceLock::new();
    RELAYS
        .get_or_init(|| {
            let mut rng = FuzzRng(0);
            let mut one = || {
                let keys = RelayKeys::generate(FUZZ_NOW, &mut rng).ok()?;
                let certs = keys.identity_certs(FUZZ_NOW, &mut rng).ok()?;
                Some((keys, certs))
            };
            Some([one()?, one()?])
        })
        .as_ref()
}

const FUZZ_NOW: u64 = 1_750_000_000;
const FUZZ_TLS_CERT: [u8; 32] = [0x5C; 32];

/// The fuzzing pair: an authenticating initiator and a responder, each made the same way every
/// time (fixed keys, fixed generator seeds), so that a recorded transcript replays.
struct FuzzPair {
    init: Initiator,
    resp: Responder,
}

impl FuzzPair {
    fn new() -> Option<Self> {
        let [(ikeys, icerts), (rkeys, rcerts)] = fuzz_relays()?;
        let addrs = NetinfoAddrs {
            peer: IpAddr::from([127, 0, 0, 1]),
            ours: vec![IpAddr::from([127, 0, 0, 2])],
        };
        let icreds = RelayCredentials {
            keys: ikeys,
            identity_certs: icerts,
        };
        let rcreds = RelayCredentials {
            keys: rkeys,
            identity_certs: rcerts,
        };
        let init = Initiator::new(
            Some(icreds),
            ExpectedPeer::default(),
            addrs.clone(),
            FUZZ_NOW,
            &mut FuzzRng(1 << 32),
        )
        .ok()?;
        let resp = Responder::new(
            rcreds,
            FUZZ_TLS_CERT,
            addrs,
            FUZZ_NOW,
            &mut FuzzRng(2 << 32),
        )
        .ok()?;
        Some(FuzzPair { init, resp })
    }
}

const FUZZ_INIT_TLS: FixedTls = FixedTls {
    peer_cert: Some(FUZZ_TLS_CERT),
    secret: [1; 32],
};
const FUZZ_RESP_TLS: FixedTls = FixedTls {
    peer_cert: None,
    secret: [1; 32],
};

/// The initiator's cells and the responder's cells of a handshake, each in the order sent.
type Transcript = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The genuine handshake of [`FuzzPair`].
fn fuzz_transcript() -> Option<&'static Transcript> {
    static TRANSCRIPT: std::sync::OnceLock<Option<Transcript>> = std::sync::OnceLock::new();
    TRANSCRIPT
        .get_or_init(|| {
            let FuzzPair { mut init, mut resp } = FuzzPair::new()?;
            let (mut from_init, mut from_resp) = (Vec::new(), Vec::new());
            init.poll_transmit(&mut from_init);
            resp.handle_input(&from_init, FUZZ_NOW, &FUZZ_RESP_TLS)
                .ok()?;
            resp.poll_transmit(&mut from_resp);
            init.handle_input(&from_resp, FUZZ_NOW, &FUZZ_INIT_TLS)
                .ok()?;
            let versions_len = from_init.len();
            init.poll_transmit(&mut from_init);
            resp.handle_input(from_init.get(versions_len..)?, FUZZ_NOW, &FUZZ_RESP_TLS)
                .ok()?;
            (init.is_finished() && resp.is_finished())
                .then(|| (split_cells(&from_init), split_cells(&from_resp)))
        })
        .as_ref()
}

/// Feeds arbitrary bytes to a handshake in any of its states; for fuzz targets.
///
/// The first byte chooses the role that receives (bit 0: initiator or responder), how many of
/// the peer's genuine handshake cells it gets first (bits 1-3, modulo 5: 0 to 4, which
/// reaches every state of both roles, the finished one included) and the size of the pieces
/// the rest is fed in (bits 4-7). The rest is the peer's next bytes.
pub fn fuzz_handshake(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (Some(pair), Some((init_cells, resp_cells))) = (FuzzPair::new(), fuzz_transcript()) else {
        return;
    };
    let prefix = usize::from((sel >> 1) & 7) % 5;
    let chunk = usize::from(sel >> 4) * 37 + 1;
    let FuzzPair { mut init, mut resp } = pair;
    if sel & 1 == 0 {
        let genuine = resp_cells.get(..prefix).unwrap_or_default().concat();
        let _ = init.handle_input(&genuine, FUZZ_NOW, &FUZZ_INIT_TLS);
        for piece in rest.chunks(chunk) {
            if init.handle_input(piece, FUZZ_NOW, &FUZZ_INIT_TLS).is_err() || init.is_finished() {
                break;
            }
        }
    } else {
        let genuine = init_cells.get(..prefix).unwrap_or_default().concat();
        let _ = resp.handle_input(&genuine, FUZZ_NOW, &FUZZ_RESP_TLS);
        for piece in rest.chunks(chunk) {
            if resp.handle_input(piece, FUZZ_NOW, &FUZZ_RESP_TLS).is_err() || resp.is_finished() {
                break;
            }
        }
    }
}

/// Splits a handshake byte stream into whole cells: the first with 2-byte circuit ids, the
/// rest with 4.
fn split_cells(bytes: &[u8]) -> Vec<Vec<u8>> {
    let Some((_, first)) = RawCell::decode(bytes, CircIdLen::BEFORE_NEGOTIATION) else {
        return Vec::new();
    };
    let mut cells = vec![bytes.get(..first).unwrap_or_default().to_vec()];
    cells.extend(split_cells_from(
        bytes.get(first..).unwrap_or_default(),
        CircIdLen::Four,
    ));
    cells
}

fn split_cells_from(mut bytes: &[u8], len: CircIdLen) -> Vec<Vec<u8>> {
    let mut cells = Vec::new();
    while let Some((_, used)) = RawCell::decode(bytes, len) {
        cells.push(bytes.get(..used).unwrap_or_default().to_vec());
        bytes = bytes.get(used..).unwrap_or_default();
    }
    cells
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    //! Vectors: none exist for the whole handshake; these run our initiator against our
    //! responder, and `relay/tests/ctor_link.rs` runs the initiator against C tor 0.4.9.

    use super::*;
    use crate::cert::CertType;
    use crate::chan_msg::{CertEntry, CreateFast, Vpadding};
    use crate::ids::CircId;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOW: u64 = FUZZ_NOW;
    const INIT_ADDR: [u8; 4] = [10, 0, 0, 1];
    const RESP_ADDR: [u8; 4] = [10, 0, 0, 2];

    fn relays() -> &'static [(RelayKeys, IdentityCerts); 2] {
        fuzz_relays().unwrap()
    }

    fn creds(which: usize) -> RelayCredentials<'static> {
        let (keys, identity_certs) = &relays()[which];
        RelayCredentials {
            keys,
            identity_certs,
        }
    }

    fn itls() -> FixedTls {
        FixedTls {
            peer_cert: Some(FUZZ_TLS_CERT),
            secret: [1; 32],
        }
    }

    fn rtls() -> FixedTls {
        FixedTls {
            peer_cert: None,
            secret: [1; 32],
        }
    }

    fn initiator_with(auth: bool, expected: ExpectedPeer) -> Initiator {
        let addrs = NetinfoAddrs {
            peer: RESP_ADDR.into(),
            ours: if auth { vec![INIT_ADDR.into()] } else { vec![] },
        };
        let creds = auth.then(|| creds(0));
        Initiator::new(creds, expected, addrs, NOW, &mut StdRng::seed_from_u64(1)).unwrap()
    }

    fn initiator(auth: bool) -> Initiator {
        initiator_with(auth, ExpectedPeer::default())
    }

    fn responder() -> Responder {
        let addrs = NetinfoAddrs {
            peer: INIT_ADDR.into(),
            ours: vec![RESP_ADDR.into()],
        };
        Responder::new(
            creds(1),
            FUZZ_TLS_CERT,
            addrs,
            NOW,
            &mut StdRng::seed_from_u64(2),
        )
        .unwrap()
    }

    fn out_i(i: &mut Initiator) -> Vec<u8> {
        let mut v = Vec::new();
        i.poll_transmit(&mut v);
        v
    }

    fn out_r(r: &mut Responder) -> Vec<u8> {
        let mut v = Vec::new();
        r.poll_transmit(&mut v);
        v
    }

    /// Runs a pair to the end, passing bytes in pieces of `chunk`; returns both results.
    fn run(
        i: &mut Initiator,
        r: &mut Responder,
        chunk: usize,
        itls: &FixedTls,
        rtls: &FixedTls,
    ) -> Result<(), LinkHandshakeError> {
        for _ in 0..10 {
            let to_r = out_i(i);
            for piece in to_r.chunks(chunk) {
                assert_eq!(r.handle_input(piece, NOW, rtls)?, piece.len());
            }
            let to_i = out_r(r);
            for piece in to_i.chunks(chunk) {
                assert_eq!(i.handle_input(piece, NOW, itls)?, piece.len());
            }
            if i.is_finished() && r.is_finished() {
                return Ok(());
            }
        }
        panic!("no progress: {i:?} {r:?}");
    }

    fn cell(msg: ChanMsg) -> Vec<u8> {
        let mut out = Vec::new();
        ChanCell { circ_id: None, msg }
            .encode(CircIdLen::Four, &mut out)
            .unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> ChanMsg {
        let (raw, _) = RawCell::decode(bytes, CircIdLen::Four).unwrap();
        ChanCell::decode(&raw).unwrap().msg
    }

    fn peer_err(e: PeerMisbehaved) -> Result<usize, LinkHandshakeError> {
        Err(LinkHandshakeError::Peer(e))
    }

    fn unexpected_err(cmd: ChanCmd, expecting: Expecting) -> Result<usize, LinkHandshakeError> {
        peer_err(PeerMisbehaved::Unexpected { cmd, expecting })
    }

    fn identity(which: usize) -> (RsaIdentity, Ed25519Identity) {
        let keys = &relays()[which].0;
        (keys.fingerprint(), keys.ed25519_identity())
    }

    #[test]
    fn authenticated_pair_agrees() {
        let (mut i, mut r) = (initiator(true), responder());
        run(&mut i, &mut r, usize::MAX, &itls(), &rtls()).unwrap();
        let (ii, ri) = (i.finish().unwrap(), r.finish().unwrap());
        assert_eq!((ii.link_version, ri.link_version), (5, 5));
        assert_eq!(
            (ii.circ_id_len, ri.circ_id_len),
            (CircIdLen::Four, CircIdLen::Four)
        );
        assert!(ii.we_initiated && !ri.we_initiated);
        let ip = ii.peer.clone().unwrap();
        assert_eq!((ip.rsa_identity, ip.ed25519_identity), identity(1));
        let rp = ri.peer.clone().unwrap();
        assert_eq!((rp.rsa_identity, rp.ed25519_identity), identity(0));
        // Relays send their clocks; both see the other's addresses and call it canonical.
        assert_eq!(
            (ii.peer_timestamp, ri.peer_timestamp),
            (NOW as u32, NOW as u32)
        );
        assert_eq!(ii.clock_skew_secs(), Some(0));
        assert_eq!(ii.our_addr_seen_by_peer, Some(INIT_ADDR.into()));
        assert_eq!(ri.our_addr_seen_by_peer, Some(RESP_ADDR.into()));
        assert_eq!(ii.peer_addrs, [IpAddr::from(RESP_ADDR)]);
        assert_eq!(ri.peer_addrs, [IpAddr::from(INIT_ADDR)]);
        assert!(ii.peer_addr_is_canonical && ri.peer_addr_is_canonical);
    }

    #[test]
    fn client_pair_stays_anonymous() {
        let (mut i, mut r) = (initiator(false), responder());
        run(&mut i, &mut r, usize::MAX, &itls(), &rtls()).unwrap();
        let (ii, ri) = (i.finish().unwrap(), r.finish().unwrap());
        assert_eq!(ii.peer.as_ref().unwrap().rsa_identity, identity(1).0);
        assert_eq!(ri.peer, None);
        assert_eq!(ri.peer_timestamp, 0);
        assert_eq!(ri.clock_skew_secs(), None);
        assert!(ri.peer_addrs.is_empty());
        assert!(!ri.peer_addr_is_canonical);
    }

    #[test]
    fn cell_sequences_on_the_wire() {
        let (mut i, mut r) = (initiator(true), responder());
        let v = out_i(&mut i);
        // VERSIONS with 2-byte circuit ids, offering 4 and 5.
        assert_eq!(v, [0, 0, 7, 0, 4, 0, 4, 0, 5]);
        r.handle_input(&v, NOW, &rtls()).unwrap();
        let cmds = |cells: Vec<Vec<u8>>| -> Vec<ChanCmd> {
            cells
                .iter()
                .enumerate()
                .map(|(n, c)| ChanCmd(c[if n == 0 { 2 } else { 4 }]))
                .collect()
        };
        let to_i = out_r(&mut r);
        assert_eq!(
            cmds(split_cells(&to_i)),
            [
                ChanCmd::VERSIONS,
                ChanCmd::CERTS,
                ChanCmd::AUTH_CHALLENGE,
                ChanCmd::NETINFO
            ]
        );
        let cells = split_cells(&to_i);
        let ChanMsg::Certs(certs) = decode(&cells[1]) else {
            panic!()
        };
        let types: Vec<u8> = certs.certs.iter().map(|c| c.cert_type.0).collect();
        assert_eq!(types, [2, 4, 5, 7]);
        let ChanMsg::AuthChallenge(ch) = decode(&cells[2]) else {
            panic!()
        };
        assert_eq!(ch.methods, [AuthMethod::ED25519_SHA256_RFC5705]);
        i.handle_input(&to_i, NOW, &itls()).unwrap();
        let from_i = split_cells_from(&out_i(&mut i), CircIdLen::Four);
        let ChanMsg::Certs(certs) = decode(&from_i[0]) else {
            panic!()
        };
        let types: Vec<u8> = certs.certs.iter().map(|c| c.cert_type.0).collect();
        assert_eq!(types, [2, 4, 6, 7]);
        let ChanMsg::Authenticate(a) = decode(&from_i[1]) else {
            panic!()
        };
        assert_eq!(a.auth.len(), Auth3Fields::LEN + Auth3Body::SIG_LEN);
        assert!(matches!(decode(&from_i[2]), ChanMsg::Netinfo(_)));
        assert_eq!(from_i.len(), 3);
    }

    #[test]
    fn every_fragment_size() {
        for auth in [true, false] {
            let (mut i, mut r) = (initiator(auth), responder());
            run(&mut i, &mut r, usize::MAX, &itls(), &rtls()).unwrap();
            let want = (i.finish().unwrap(), r.finish().unwrap());
            let max = if auth { 2600 } else { 700 };
            let step = if auth { 1 } else { 3 };
            for chunk in (1..max).step_by(step) {
                let (mut i, mut r) = (initiator(auth), responder());
                run(&mut i, &mut r, chunk, &itls(), &rtls())
                    .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
                assert_eq!((i.finish().unwrap(), r.finish().unwrap()), want);
            }
        }
    }

    #[test]
    fn bytes_after_netinfo_stay_with_the_caller() {
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        i.handle_input(&out_r(&mut r), NOW, &itls()).unwrap();
        let mut bytes = out_i(&mut i);
        let handshake_len = bytes.len();
        let mut create_fast = Vec::new();
        ChanCell {
            circ_id: CircId::new(0x8000_0001),
            msg: ChanMsg::CreateFast(CreateFast { x: [9; 20] }),
        }
        .encode(CircIdLen::Four, &mut create_fast)
        .unwrap();
        bytes.extend_from_slice(&create_fast);
        // Split so that the NETINFO ends inside the second piece.
        let (a, b) = bytes.split_at(handshake_len - 100);
        assert_eq!(r.handle_input(a, NOW, &rtls()), Ok(a.len()));
        assert_eq!(r.handle_input(b, NOW, &rtls()), Ok(100));
        assert!(r.is_finished());
        assert_eq!(&b[100..], &create_fast[..]);
        // Finished: nothing more is taken.
        assert_eq!(r.handle_input(&b[100..], NOW, &rtls()), Ok(0));
    }

    #[test]
    fn expected_identity_is_checked() {
        let (rsa, ed) = identity(1);
        let (other_rsa, other_ed) = identity(0);
        for (expected, result) in [
            (
                ExpectedPeer {
                    rsa_identity: Some(rsa),
                    ed25519_identity: Some(ed),
                },
                Ok(()),
            ),
            (
                ExpectedPeer {
                    rsa_identity: Some(other_rsa),
                    ed25519_identity: Some(ed),
                },
                Err(PeerMisbehaved::WrongRsaIdentity.into()),
            ),
            (
                ExpectedPeer {
                    rsa_identity: None,
                    ed25519_identity: Some(other_ed),
                },
                Err(PeerMisbehaved::WrongEd25519Identity.into()),
            ),
        ] {
            let (mut i, mut r) = (initiator_with(true, expected), responder());
            assert_eq!(run(&mut i, &mut r, usize::MAX, &itls(), &rtls()), result);
        }
    }

    #[test]
    fn responder_tls_cert_must_match() {
        let (mut i, mut r) = (initiator(false), responder());
        let mut tls = itls();
        tls.peer_cert = Some([0x5D; 32]);
        assert_eq!(
            run(&mut i, &mut r, usize::MAX, &tls, &rtls()),
            Err(PeerMisbehaved::ResponderCerts(CertError::TlsCertMismatch).into())
        );
        let (mut i, mut r) = (initiator(false), responder());
        tls.peer_cert = None;
        assert_eq!(
            run(&mut i, &mut r, usize::MAX, &tls, &rtls()),
            Err(PeerMisbehaved::NoTlsCert.into())
        );
    }

    #[test]
    fn exporter_values_must_agree() {
        let (mut i, mut r) = (initiator(true), responder());
        let mut tls = rtls();
        tls.secret = [2; 32];
        assert_eq!(
            run(&mut i, &mut r, usize::MAX, &itls(), &tls),
            Err(PeerMisbehaved::AuthField(Auth3Field::TlsSecrets).into())
        );
    }

    #[test]
    fn exporter_unavailable_is_ours() {
        struct NoExporter;
        impl LinkTls for NoExporter {
            fn peer_cert_sha256(&self) -> Option<[u8; 32]> {
                Some(FUZZ_TLS_CERT)
            }
            fn auth3_exporter(&self, _: &[u8; 32]) -> Option<[u8; 32]> {
                None
            }
        }
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        assert_eq!(
            i.handle_input(&out_r(&mut r), NOW, &NoExporter),
            Err(LocalError::ExporterUnavailable.into())
        );
    }

    /// A responder that has answered VERSIONS, and the authenticating initiator's CERTS,
    /// AUTHENTICATE and NETINFO cells.
    fn initiator_cells() -> (Initiator, Responder, Vec<Vec<u8>>) {
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        i.handle_input(&out_r(&mut r), NOW, &itls()).unwrap();
        let cells = split_cells_from(&out_i(&mut i), CircIdLen::Four);
        assert_eq!(cells.len(), 3);
        (i, r, cells)
    }

    /// The AUTHENTICATE cell with its fields changed by `f`, signed again with the real key.
    fn resign(i: &Initiator, auth_cell: &[u8], f: impl FnOnce(&mut Auth3Fields)) -> Vec<u8> {
        let ChanMsg::Authenticate(a) = decode(auth_cell) else {
            panic!("not AUTHENTICATE")
        };
        let mut fields = a.auth3().unwrap().fields;
        f(&mut fields);
        let key = &i.config.auth.as_ref().unwrap().link_auth;
        cell(ChanMsg::Authenticate(sign_auth3(&fields, key)))
    }

    #[test]
    fn genuine_resigned_authenticate_passes() {
        let (i, mut r, cells) = initiator_cells();
        let auth = resign(&i, &cells[1], |_| {});
        assert_eq!(auth, cells[1]);
        let all = [cells[0].clone(), auth, cells[2].clone()].concat();
        assert_eq!(r.handle_input(&all, NOW, &rtls()), Ok(all.len()));
        assert!(r.is_finished());
    }

    #[test]
    fn each_authenticate_field_is_checked() {
        type Tamper = fn(&mut Auth3Fields);
        let cases: [(Tamper, Auth3Field); 8] = [
            (|f| f.cid[0] ^= 1, Auth3Field::Cid),
            (|f| f.sid[0] ^= 1, Auth3Field::Sid),
            (|f| f.cid_ed[0] ^= 1, Auth3Field::CidEd),
            (|f| f.sid_ed = [0; 32], Auth3Field::SidEd),
            (|f| f.slog[31] ^= 1, Auth3Field::Slog),
            (|f| f.clog[0] ^= 0x80, Auth3Field::Clog),
            (|f| f.scert[5] ^= 1, Auth3Field::Scert),
            (|f| f.tlssecrets[0] ^= 1, Auth3Field::TlsSecrets),
        ];
        for (tamper, field) in cases {
            let (i, mut r, cells) = initiator_cells();
            let auth = resign(&i, &cells[1], tamper);
            r.handle_input(&cells[0], NOW, &rtls()).unwrap();
            assert_eq!(
                r.handle_input(&auth, NOW, &rtls()),
                peer_err(PeerMisbehaved::AuthField(field)),
                "{field:?}"
            );
        }
        // RAND is not checked, only signed.
        let (i, mut r, cells) = initiator_cells();
        let auth = resign(&i, &cells[1], |f| f.rand = [7; 24]);
        let all = [cells[0].clone(), auth, cells[2].clone()].concat();
        assert_eq!(r.handle_input(&all, NOW, &rtls()), Ok(all.len()));
    }

    #[test]
    fn bad_signature() {
        let (_, mut r, mut cells) = initiator_cells();
        let last = cells[1].len() - 1;
        cells[1][last] ^= 1;
        assert_eq!(
            r.handle_input(&cells.concat(), NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthSignature)
        );
        // Signed-over bytes changed after signing: RAND.
        let (_, mut r, mut cells) = initiator_cells();
        let rand_at = 4 + 4 + Auth3Fields::LEN - 1;
        cells[1][rand_at] ^= 1;
        assert_eq!(
            r.handle_input(&cells.concat(), NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthSignature)
        );
    }

    #[test]
    fn authenticate_type_and_format() {
        let (_, mut r, cells) = initiator_cells();
        r.handle_input(&cells[0], NOW, &rtls()).unwrap();
        let rsa = cell(ChanMsg::Authenticate(Authenticate {
            auth_type: AuthMethod::RSA_SHA256_TLSSECRET,
            auth: vec![0; 100],
        }));
        assert_eq!(
            r.handle_input(&rsa, NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthType(AuthMethod(1)))
        );
        let (_, mut r, cells) = initiator_cells();
        r.handle_input(&cells[0], NOW, &rtls()).unwrap();
        let short = cell(ChanMsg::Authenticate(Authenticate {
            auth_type: AuthMethod::ED25519_SHA256_RFC5705,
            auth: vec![0; Auth3Fields::LEN + 63],
        }));
        assert_eq!(
            r.handle_input(&short, NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthMalformed(CodecError::Truncated))
        );
    }

    fn vpadding(len: u16) -> Vec<u8> {
        cell(ChanMsg::Vpadding(Vpadding { len }))
    }

    #[test]
    fn transcript_digests_cover_padding() {
        // VPADDING the responder never sent, seen by the initiator before AUTH_CHALLENGE:
        // the initiator's SLOG no longer matches.
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        let mut cells = split_cells(&out_r(&mut r));
        cells.insert(2, vpadding(10));
        i.handle_input(&cells.concat(), NOW, &itls()).unwrap();
        assert_eq!(
            r.handle_input(&out_i(&mut i), NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthField(Auth3Field::Slog))
        );
        // After AUTH_CHALLENGE it is not covered.
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        let mut cells = split_cells(&out_r(&mut r));
        cells.insert(3, vpadding(10));
        i.handle_input(&cells.concat(), NOW, &itls()).unwrap();
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        assert!(i.is_finished() && r.is_finished());
        // Padding the initiator never sent, before AUTHENTICATE: CLOG differs.
        let (_, mut r, mut cells) = initiator_cells();
        cells.insert(1, vpadding(3));
        assert_eq!(
            r.handle_input(&cells.concat(), NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthField(Auth3Field::Clog))
        );
        // Fixed-length PADDING and padding before VERSIONS are digested like any cell.
        let (mut i, mut r) = (initiator(true), responder());
        let mut v = vec![0, 0, 128, 0, 2, 1, 2]; // VPADDING, 2-byte circuit id
        v.extend(out_i(&mut i));
        r.handle_input(&v, NOW, &rtls()).unwrap();
        let mut cells = split_cells(&out_r(&mut r));
        cells.insert(1, cell(ChanMsg::Padding(crate::chan_msg::Padding)));
        i.handle_input(&cells.concat(), NOW, &itls()).unwrap();
        assert_eq!(
            r.handle_input(&out_i(&mut i), NOW, &rtls()),
            peer_err(PeerMisbehaved::AuthField(Auth3Field::Slog))
        );
    }

    /// SLOG and CLOG are SHA-256 over whole cells as sent, from the VERSIONS cell (2-byte
    /// circuit id) on: the convention C tor 0.4.9 accepts (relay/tests/ctor_link.rs).
    #[test]
    fn transcript_digests_are_over_raw_cells() {
        let (mut i, mut r) = (initiator(true), responder());
        let versions = out_i(&mut i);
        r.handle_input(&versions, NOW, &rtls()).unwrap();
        let from_r = split_cells(&out_r(&mut r));
        i.handle_input(&from_r.concat(), NOW, &itls()).unwrap();
        let from_i = split_cells_from(&out_i(&mut i), CircIdLen::Four);
        let ChanMsg::Authenticate(a) = decode(&from_i[1]) else {
            panic!()
        };
        let body = a.auth3().unwrap();
        let slog: [u8; 32] = Sha256::digest(from_r[..3].concat()).into();
        let clog: [u8; 32] = Sha256::digest([versions, from_i[0].clone()].concat()).into();
        assert_eq!(body.fields.slog, slog);
        assert_eq!(body.fields.clog, clog);
        assert_eq!(body.fields.scert, FUZZ_TLS_CERT);
        let (keys0, keys1) = (&relays()[0].0, &relays()[1].0);
        assert_eq!(body.fields.cid, auth3_exporter_context(keys0));
        assert_eq!(body.fields.sid, auth3_exporter_context(keys1));
        assert_eq!(&body.fields.cid_ed, keys0.ed25519_identity().as_bytes());
        assert_eq!(&body.fields.sid_ed, keys1.ed25519_identity().as_bytes());
        // TLSSECRETS: the exporter with context CID (not CID_ED), as C tor does.
        assert_eq!(
            Some(body.fields.tlssecrets),
            itls().auth3_exporter(&body.fields.cid)
        );
        assert_eq!(body.signed.len(), Auth3Fields::LEN);
    }

    #[test]
    fn ignored_cells() {
        // AUTHORIZE and padding before VERSIONS, unknown commands and later VERSIONS anywhere.
        let (mut i, mut r) = (initiator(false), responder());
        let mut v = vec![0, 0, 132, 0, 1, 0]; // AUTHORIZE
        v.extend([0, 0, 0]); // PADDING, 2-byte circuit id ...
        v.extend([0; 509]);
        v.extend(out_i(&mut i));
        r.handle_input(&v, NOW, &rtls()).unwrap();
        let mut cells = split_cells(&out_r(&mut r));
        let again = cell(ChanMsg::Versions(Versions {
            versions: vec![3, 4],
        }));
        let unknown = cell(ChanMsg::Unrecognized {
            cmd: ChanCmd(200),
            body: vec![1, 2, 3],
        });
        cells.insert(1, again.clone());
        cells.insert(3, unknown.clone());
        i.handle_input(&cells.concat(), NOW, &itls()).unwrap();
        let mut to_r = out_i(&mut i);
        to_r.splice(0..0, unknown.iter().copied().chain(again));
        assert_eq!(r.handle_input(&to_r, NOW, &rtls()), Ok(to_r.len()));
        assert!(i.is_finished() && r.is_finished());
    }

    #[test]
    fn out_of_order_and_duplicates() {
        // Responder -> initiator.
        let resp_cells = || {
            let (mut i, mut r) = (initiator(true), responder());
            r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
            (i, split_cells(&out_r(&mut r)))
        };
        let cases = [
            (vec![0, 3], ChanCmd::NETINFO, Expecting::Certs),
            (vec![0, 2], ChanCmd::AUTH_CHALLENGE, Expecting::Certs),
            (vec![0, 1, 1], ChanCmd::CERTS, Expecting::AuthChallenge),
            (vec![0, 1, 3], ChanCmd::NETINFO, Expecting::AuthChallenge),
            (
                vec![0, 1, 2, 2],
                ChanCmd::AUTH_CHALLENGE,
                Expecting::Netinfo,
            ),
        ];
        for (order, cmd, expecting) in cases {
            let (mut i, cells) = resp_cells();
            let bytes: Vec<u8> = order.iter().flat_map(|&n| cells[n].clone()).collect();
            assert_eq!(
                i.handle_input(&bytes, NOW, &itls()),
                unexpected_err(cmd, expecting),
                "{order:?}"
            );
        }
        // An initiator must never receive AUTHENTICATE.
        let (mut i, cells) = resp_cells();
        let (i2, _, icells) = initiator_cells();
        drop(i2);
        let bytes = [cells[0].clone(), icells[1].clone()].concat();
        assert_eq!(
            i.handle_input(&bytes, NOW, &itls()),
            unexpected_err(ChanCmd::AUTHENTICATE, Expecting::Certs)
        );
        // Initiator -> responder (cells: CERTS, AUTHENTICATE, NETINFO).
        let cases = [
            (vec![1], ChanCmd::AUTHENTICATE, Expecting::CertsOrNetinfo),
            (vec![0, 0], ChanCmd::CERTS, Expecting::Authenticate),
            (vec![0, 2], ChanCmd::NETINFO, Expecting::Authenticate),
            (vec![0, 1, 1], ChanCmd::AUTHENTICATE, Expecting::Netinfo),
        ];
        for (order, cmd, expecting) in cases {
            let (_, mut r, cells) = initiator_cells();
            let bytes: Vec<u8> = order.iter().flat_map(|&n| cells[n].clone()).collect();
            assert_eq!(
                r.handle_input(&bytes, NOW, &rtls()),
                unexpected_err(cmd, expecting),
                "{order:?}"
            );
        }
        // A circuit cell before VERSIONS.
        let mut r = responder();
        let mut bytes = Vec::new();
        ChanCell {
            circ_id: CircId::new(1),
            msg: ChanMsg::CreateFast(CreateFast { x: [0; 20] }),
        }
        .encode(CircIdLen::Two, &mut bytes)
        .unwrap();
        assert_eq!(
            r.handle_input(&bytes, NOW, &rtls()),
            unexpected_err(ChanCmd::CREATE_FAST, Expecting::Versions)
        );
    }

    #[test]
    fn versions_problems() {
        let mut r = responder();
        let v3 = [0, 0, 7, 0, 2, 0, 3];
        assert_eq!(
            r.handle_input(&v3, NOW, &rtls()),
            peer_err(PeerMisbehaved::NoCommonVersion)
        );
        let mut r = responder();
        let odd = [0, 0, 7, 0, 3, 0, 4, 0];
        assert_eq!(
            r.handle_input(&odd, NOW, &rtls()),
            peer_err(PeerMisbehaved::Cell(ChanCellError::Body {
                cmd: ChanCmd::VERSIONS,
                error: CodecError::BadValue("VERSIONS body of odd length"),
            }))
        );
        let mut r = responder();
        let with_circ = [0, 1, 7, 0, 2, 0, 4];
        assert_eq!(
            r.handle_input(&with_circ, NOW, &rtls()),
            peer_err(PeerMisbehaved::Cell(ChanCellError::CircId(
                crate::cell::CircIdError::MustBeZero(ChanCmd::VERSIONS)
            )))
        );
        // Link protocol 4 only: 4-byte circuit ids as well. (A client: an authenticating
        // initiator's CLOG would not cover the VERSIONS cell the responder saw.)
        let (mut i, mut r) = (initiator(false), responder());
        out_i(&mut i);
        r.handle_input(&[0, 0, 7, 0, 2, 0, 4], NOW, &rtls())
            .unwrap();
        let to_i = out_r(&mut r);
        i.handle_input(&to_i, NOW, &itls()).unwrap();
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        assert_eq!(r.finish().unwrap().link_version, 4);
        assert!(i.is_finished());
    }

    #[test]
    fn no_usable_auth_method() {
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        let mut cells = split_cells(&out_r(&mut r));
        cells[2] = cell(ChanMsg::AuthChallenge(AuthChallenge {
            challenge: [0; 32],
            methods: vec![AuthMethod::RSA_SHA256_TLSSECRET],
        }));
        assert_eq!(
            i.handle_input(&cells.concat(), NOW, &itls()),
            peer_err(PeerMisbehaved::NoAuthMethod)
        );
        // A client does not care.
        let (mut i, mut r) = (initiator(false), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        let mut cells = split_cells(&out_r(&mut r));
        cells[2] = cell(ChanMsg::AuthChallenge(AuthChallenge {
            challenge: [0; 32],
            methods: vec![],
        }));
        let bytes = cells.concat();
        assert_eq!(i.handle_input(&bytes, NOW, &itls()), Ok(bytes.len()));
        assert!(i.is_finished());
    }

    #[test]
    fn bad_initiator_certs() {
        let (_, mut r, cells) = initiator_cells();
        let ChanMsg::Certs(mut certs) = decode(&cells[0]) else {
            panic!()
        };
        certs
            .certs
            .retain(|c| c.cert_type != CertType::SIGNING_V_LINK_AUTH);
        assert_eq!(
            r.handle_input(&cell(ChanMsg::Certs(certs.clone())), NOW, &rtls()),
            peer_err(PeerMisbehaved::InitiatorCerts(CertError::MissingCert(
                CertType::SIGNING_V_LINK_AUTH
            )))
        );
        // The responder's type-5 certificate offered as the initiator's type 6.
        let (mut i0, mut r0) = (initiator(false), responder());
        r0.handle_input(&out_i(&mut i0), NOW, &rtls()).unwrap();
        let ChanMsg::Certs(resp_certs) = decode(&split_cells(&out_r(&mut r0))[1]) else {
            panic!()
        };
        let (_, mut r, _) = initiator_cells();
        certs.certs.push(CertEntry {
            cert_type: CertType::SIGNING_V_LINK_AUTH,
            body: resp_certs
                .find(CertType::SIGNING_V_TLS_CERT)
                .unwrap()
                .to_vec(),
        });
        assert_eq!(
            r.handle_input(&cell(ChanMsg::Certs(certs)), NOW, &rtls()),
            peer_err(PeerMisbehaved::InitiatorCerts(CertError::WrongCertType(
                CertType::SIGNING_V_LINK_AUTH
            )))
        );
    }

    #[test]
    fn size_limits() {
        // A huge VPADDING is refused from its header alone.
        let mut r = responder();
        let header = [0, 0, 128, 0x4E, 0x20];
        assert_eq!(
            r.handle_input(&header, NOW, &rtls()),
            peer_err(PeerMisbehaved::CellTooLong {
                cmd: ChanCmd::VPADDING,
                len: 20_000
            })
        );
        // The largest allowed one is fine; endless ones are not.
        let mut r = responder();
        let mut v = vec![0, 0, 128];
        v.extend((VAR_CELL_BODY_MAX_BYTES as u16).to_be_bytes());
        v.extend(vec![0; VAR_CELL_BODY_MAX_BYTES]);
        let mut sent = 0;
        let err = loop {
            match r.handle_input(&v, NOW, &rtls()) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err, PeerMisbehaved::TooMuchData.into());
        assert!(sent <= RECEIVED_MAX_BYTES && sent + v.len() > RECEIVED_MAX_BYTES);
    }

    #[test]
    fn errors_are_sticky() {
        let (mut i, mut r) = (initiator(true), responder());
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        let cells = split_cells(&out_r(&mut r));
        let bad = [cells[0].clone(), cells[3].clone()].concat();
        let err = unexpected_err(ChanCmd::NETINFO, Expecting::Certs);
        assert_eq!(i.handle_input(&bad, NOW, &itls()), err);
        assert_eq!(i.error(), err.err());
        assert_eq!(i.expecting(), Expecting::Nothing);
        // The genuine cells change nothing now, and nothing is sent.
        assert_eq!(i.handle_input(&cells[1], NOW, &itls()), err);
        assert!(out_i(&mut i).is_empty());
        assert!(!i.is_finished());
        assert_eq!(i.finish(), None);
    }

    #[test]
    fn states_reported() {
        let (mut i, mut r) = (initiator(true), responder());
        assert_eq!(
            (i.expecting(), r.expecting()),
            (Expecting::Versions, Expecting::Versions)
        );
        r.handle_input(&out_i(&mut i), NOW, &rtls()).unwrap();
        assert_eq!(r.expecting(), Expecting::CertsOrNetinfo);
        let cells = split_cells(&out_r(&mut r));
        let want = [
            Expecting::Certs,
            Expecting::AuthChallenge,
            Expecting::Netinfo,
            Expecting::Nothing,
        ];
        for (c, want) in cells.iter().zip(want) {
            i.handle_input(c, NOW, &itls()).unwrap();
            assert_eq!(i.expecting(), want);
        }
        let cells = split_cells_from(&out_i(&mut i), CircIdLen::Four);
        let want = [
            Expecting::Authenticate,
            Expecting::Netinfo,
            Expecting::Nothing,
        ];
        for (c, want) in cells.iter().zip(want) {
            r.handle_input(c, NOW, &rtls()).unwrap();
            assert_eq!(r.expecting(), want);
        }
    }

    #[test]
    fn fuzz_entry_reaches_every_state() {
        let (init_cells, resp_cells) = fuzz_transcript().unwrap();
        assert_eq!((init_cells.len(), resp_cells.len()), (4, 4));
        let want_init = [
            Expecting::Versions,
            Expecting::Certs,
            Expecting::AuthChallenge,
            Expecting::Netinfo,
            Expecting::Nothing,
        ];
        let want_resp = [
            Expecting::Versions,
            Expecting::CertsOrNetinfo,
            Expecting::Authenticate,
            Expecting::Netinfo,
            Expecting::Nothing,
        ];
        for prefix in 0..5 {
            let FuzzPair { mut init, mut resp } = FuzzPair::new().unwrap();
            let genuine = resp_cells[..prefix].concat();
            init.handle_input(&genuine, NOW, &FUZZ_INIT_TLS).unwrap();
            assert_eq!(init.expecting(), want_init[prefix]);
            let genuine = init_cells[..prefix].concat();
            resp.handle_input(&genuine, NOW, &FUZZ_RESP_TLS).unwrap();
            assert_eq!(resp.expecting(), want_resp[prefix]);
        }
        for sel in 0..=255u8 {
            fuzz_handshake(&[sel]);
            fuzz_handshake(&[sel, 0, 0, 7, 0, 2, 0, 5, 1, 2, 3]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary bytes in every state of both roles never panic.
        #[test]
        fn arbitrary_input_never_panics(chunk in 0u8..16, rest in proptest::collection::vec(any::<u8>(), 0..3000)) {
            for state in 0..10u8 {
                // Bit 0: the role; bits 1-3: the genuine cells first.
                let mut data = vec![(chunk << 4) | state];
                data.extend(&rest);
                fuzz_handshake(&data);
            }
        }

        /// Any fragmentation gives the same outcome as whole flights.
        #[test]
        fn fragmentation_does_not_matter(cuts in proptest::collection::vec(1usize..700, 1..12), auth in any::<bool>()) {
            let (mut i, mut r) = (initiator(auth), responder());
            run(&mut i, &mut r, usize::MAX, &itls(), &rtls()).unwrap();
            let want = (i.finish().unwrap(), r.finish().unwrap());
            let (mut i, mut r) = (initiator(auth), responder());
            for _ in 0..4 {
                for (bytes, to_resp) in [(out_i(&mut i), true), (Vec::new(), false)] {
                    let bytes = if to_resp { bytes } else { out_r(&mut r) };
                    let mut rest = &bytes[..];
                    let mut k = 0;
                    while !rest.is_empty() {
                        let n = cuts[k % cuts.len()].min(rest.len());
                        k += 1;
                        let used = if to_resp {
                            r.handle_input(&rest[..n], NOW, &rtls()).unwrap()
                        } else {
                            i.handle_input(&rest[..n], NOW, &itls()).unwrap()
                        };
                        prop_assert_eq!(used, n);
                        rest = &rest[n..];
                    }
                }
            }
            prop_assert_eq!((i.finish().unwrap(), r.finish().unwrap()), want);
        }
    }
}
