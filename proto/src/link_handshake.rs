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
//! AUTHENTICATE cell. C tor 0.4.9 accepts authenticators built this way (`relay/tests/
//! ctor_link.rs`).
//!
//! # The TLSSECRETS exporter context
//!
//! tor-spec §4.4.2 says the RFC 5705 exporter context is the initiator's Ed25519 identity
//! (CID_ED). C tor 0.4.9 uses CID, the SHA-256 of the initiator's RSA identity key, and rejects
//! anything else; being wire-compatible with it, both roles here use CID. The TLS layer supplies
//! the exporter through [`LinkTls`].

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
    Auth3Body, Auth3Fields, AuthChallenge, AuthMethod, Authenticate, ChanCell, ChanCellError,
    ChanMsg, Certs, Netinfo, NetinfoAddr, Versions,
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
        self.sent.update(self.outbox.get(start..).unwrap_or_default());
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
    let peer_addrs: Vec<IpAddr> = netinfo.my_addrs.iter().filter_map(NetinfoAddr::ip).collect();
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
        if let InitiatorState::Done(_) = self.state {
            return Ok(0);
        }
        let config = &self.config;
        let state = &mut self.state;
        let r = self.link.feed(input, |link, cell| {
            let old = std::mem::replace(state, InitiatorState::Failed);
            let (new, flow) = old.handle(link, config, cell, now, tls)?;
            *state = new;
            Ok(flow)
        });
        if r.is_err() {
            self.state = InitiatorState::Failed;
        }
        r
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
        matches!(self.state, InitiatorState::Done(_))
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

impl InitiatorState {
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
        if let ResponderState::Done(_) = self.state {
            return Ok(0);
        }
        let config = &self.config;
        let state = &mut self.state;
        let r = self.link.feed(input, |link, cell| {
            let old = std::mem::replace(state, ResponderState::Failed);
            let (new, flow) = old.handle(link, config, cell, now, tls)?;
            *state = new;
            Ok(flow)
        });
        if r.is_err() {
            self.state = ResponderState::Failed;
        }
        r
    }

    /// Appends the bytes to send, if any, to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.link.outbox);
    }

    /// What the handshake waits for.
    pub fn expecting(&self) -> Expecting {
        match self.state {
            ResponderState::ExpectVersions(_) => Expecting::Versions,
            ResponderState::ExpectCertsOrNetinfo(_) => Expecting::CertsOrNetinfo,
            ResponderState::ExpectAuthenticate(_) => Expecting::Authenticate,
            ResponderState::ExpectNetinfo(_) => Expecting::Netinfo,
            ResponderState::Done(_) | ResponderState::Failed => Expecting::Nothing,
        }
    }

    /// The error that stopped the handshake, if one did.
    pub fn error(&self) -> Option<LinkHandshakeError> {
        self.link.error
    }

    /// Whether the handshake is complete.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, ResponderState::Done(_))
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
            (&f.cid_ed == peer.ed25519_identity.as_bytes(), Auth3Field::CidEd),
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
