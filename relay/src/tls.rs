//! The TLS layer of a Tor link: our self-signed link certificate, the rustls configurations for
//! both ends of a channel, and [`TlsLink`], a sans-io wrapper that the reactor drives with byte
//! buffers.
//!
//! tor-spec §2 ("Connections", <https://spec.torproject.org/tor-spec/connections.html>) and §4
//! ("Negotiating and initializing connections",
//! <https://spec.torproject.org/tor-spec/negotiating-channels.html>). Tor authenticates peers
//! "in-protocol": the responder presents one self-signed "link" certificate, the initiator
//! presents none, and TLS itself proves nothing about identity. The responder's CERTS cell later
//! certifies the SHA-256 of that link certificate (CertType 5), so what TLS must guarantee is
//! only that the responder holds the private key of the certificate it presented. Our client
//! verifier therefore accepts any certificate but checks the handshake signature with the
//! provider's algorithms, and the link layer compares [`TlsLink::peer_cert_digest`] with the
//! CERTS cell.
//!
//! The link certificate satisfies the spec's test for the in-protocol handshake ("The
//! certificate is self-signed"; its common name is `www.<random>.com`, not `.net`), carries no
//! string naming Tor, and has a random serial number, as C tor's do.
//!
//! AUTHENTICATE type 3 (§4.4.2, "Ed25519-SHA256-RFC5705") binds the authentication to this TLS
//! session with an RFC 5705 exporter value: [`TlsLink::auth3_exporter`]. Its context is CID,
//! the SHA-256 of the initiator's RSA identity key, as C tor 0.4.9 computes it; the spec text
//! says the initiator's ed25519 identity, which C tor rejects (checked against C tor in
//! `relay/tests/ctor_tls.rs`).
//!
//! Session resumption is off on both sides (Tor does not resume sessions; tickets would only cost
//! bytes and let an observer link connections), and the client sends no SNI.
//!
//! # Allocation and copies
//!
//! rustls's buffered connection runs the handshake; it allocates one buffer per outgoing record
//! and copies each received record into a newly allocated plaintext chunk. Once the owner calls
//! [`TlsLink::enable_records`] (after the Tor link handshake, which needs the exporter), a TLS
//! 1.3 link hands its record protection to [`record`]: one copy and no allocation per record
//! each way, the sealed bytes handed to the caller's send buffer without a copy when it is
//! empty. rustls is only ever given whole records (a record cut by a read waits in
//! [`TlsLink`], at most one record), so it never holds part of one at the switch.

use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use rand_core::CryptoRngCore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::{
    AlertDescription, CipherSuite, ClientConfig, ClientConnection, Connection,
    DigitallySignedStruct, InvalidMessage, PeerIncompatible, PeerMisbehaved, ProtocolVersion,
    ServerConfig, ServerConnection, SignatureScheme,
};
use zeroize::Zeroizing;

mod record;

/// The RFC 5705 exporter label of AUTHENTICATE type 3 (tor-spec §4.4.2, TLSSECRETS).
pub const AUTH3_EXPORTER_LABEL: &[u8] = b"EXPORTER FOR TOR TLS CLIENT BINDING AUTH0003";

/// A sensible default for [`TlsLink`]'s `pending_tls_max_bytes`: four full TLS records with
/// their overhead.
pub const DEFAULT_PENDING_TLS_MAX_BYTES: usize = 4 * 16 * 1024 + 4 * 64;

/// How far before "now" a new link certificate's validity starts, so that peers whose clocks are
/// behind ours do not see a certificate from the future.
const NOT_BEFORE_BACKDATE_SECS: u64 = 24 * 60 * 60;

/// Environment override for the TLS crypto provider: `ring` or `aws-lc-rs`.
pub const PROVIDER_ENV: &str = "CHIVE_TLS_PROVIDER";

/// The crypto providers chive's TLS can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// rustls' `ring` provider.
    Ring,
    /// rustls' `aws-lc-rs` provider.
    AwsLcRs,
}

impl Provider {
    /// Its name, as [`PROVIDER_ENV`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Ring => "ring",
            Provider::AwsLcRs => "aws-lc-rs",
        }
    }

    fn from_name(name: &str) -> Option<Provider> {
        [Provider::Ring, Provider::AwsLcRs]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// The rustls provider, with TLS 1.3's AES-128-GCM suite first: every cell crosses a
    /// link record's seal and open, and 10 AES rounds instead of AES-256's 14 cost ~8 ns
    /// less per 514-byte cell each way (ring, 16 KiB records, Zen 3: 63.8 against 72.1 ns).
    /// Both suites are mandatory-strength in TLS 1.3; responders pick it over the
    /// initiator's order ([`server_config`]).
    fn rustls(self) -> CryptoProvider {
        let mut p = match self {
            Provider::Ring => rustls::crypto::ring::default_provider(),
            Provider::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
        };
        p.cipher_suites
            .sort_by_key(|s| s.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
        p
    }
}

/// The provider chive's TLS uses: [`PROVIDER_ENV`] if set, else the one that seals a full TLS
/// record of relay cells faster on this CPU, measured once per process. The record-sealing
/// AEAD is most of TLS's cost per relayed cell, and which library wins depends on the CPU:
/// aws-lc-rs has the wider VAES paths (AVX-512), ring was ~20% cheaper per relayed cell on a
/// Zen 3 without AVX-512 (`chive-bench relay`, chive as R).
pub fn chosen_provider() -> Provider {
    static CHOSEN: std::sync::OnceLock<Provider> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if let Some(p) = std::env::var(PROVIDER_ENV)
            .ok()
            .as_deref()
            .and_then(Provider::from_name)
        {
            return p;
        }
        let ring = seal_ns(Provider::Ring);
        let aws = seal_ns(Provider::AwsLcRs);
        let p = if ring < aws {
            Provider::Ring
        } else {
            Provider::AwsLcRs
        };
        tracing::debug!(
            ring_ns = ring,
            aws_lc_rs_ns = aws,
            chosen = p.name(),
            "TLS provider"
        );
        p
    })
}

/// The crypto provider chive's TLS uses ([`chosen_provider`]).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(chosen_provider().rustls())
}

/// Nanoseconds for the fastest of a few AES-128-GCM seals (the TLS 1.3 suite we prefer) of
/// a 16 KiB record, in place, with `provider`'s AEAD; `u64::MAX` if it cannot run.
fn seal_ns(provider: Provider) -> u64 {
    aead_record_ns(provider, 24).map_or(u64::MAX, |ns| ns.seal)
}

/// What sealing and opening one full TLS record costs with a provider's AES-128-GCM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadRecordNs {
    /// Fastest in-place seal of a 16 KiB record, in nanoseconds.
    pub seal: u64,
    /// Fastest in-place open (tag checked) of a 16 KiB record, in nanoseconds.
    pub open: u64,
}

/// The plaintext bytes of the records [`aead_record_ns`] measures: full TLS 1.3 records, the
/// size the relay's links fill when busy.
pub const AEAD_RECORD_LEN: usize = 16 * 1024;

/// Times `rounds` seal-then-open pairs of a [`AEAD_RECORD_LEN`]-byte record with `provider`'s
/// AES-128-GCM, in place, and gives the fastest of each: the floor under what a relay pays per
/// byte of TLS (`chive-bench relay` divides it among the cells a record holds). `None` if the
/// provider cannot run it or an open fails.
pub fn aead_record_ns(provider: Provider, rounds: usize) -> Option<AeadRecordNs> {
    let key = [0x42u8; 16];
    let mut buf = vec![0u8; AEAD_RECORD_LEN];
    let mut best = AeadRecordNs {
        seal: u64::MAX,
        open: u64::MAX,
    };
    // Runs `f` and gives its result with the nanoseconds it took.
    fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let start = std::time::Instant::now();
        let r = f();
        (
            r,
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        )
    }
    macro_rules! run {
        ($aead:path) => {{
            use $aead as aead;
            let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &key).ok()?);
            let nonce = |i: usize| {
                let mut n = [0u8; 12];
                n[..8].copy_from_slice(&(i as u64).to_be_bytes());
                aead::Nonce::assume_unique_for_key(n)
            };
            for i in 0..rounds.max(1) {
                buf.truncate(AEAD_RECORD_LEN);
                let (tag, ns) = timed(|| {
                    key.seal_in_place_separate_tag(nonce(i), aead::Aad::empty(), &mut buf)
                });
                best.seal = best.seal.min(ns);
                buf.extend_from_slice(tag.ok()?.as_ref());
                let (plain, ns) = timed(|| {
                    key.open_in_place(nonce(i), aead::Aad::empty(), &mut buf)
                        .map(|p| p.len())
                });
                best.open = best.open.min(ns);
                if plain.ok()? != AEAD_RECORD_LEN {
                    return None;
                }
            }
        }};
    }
    match provider {
        Provider::Ring => run!(ring::aead),
        Provider::AwsLcRs => run!(aws_lc_rs::aead),
    }
    std::hint::black_box(&buf);
    Some(best)
}

/// The key type of a link certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkKeyAlg {
    /// ECDSA on P-256 with SHA-256: cheapest to generate and to sign handshakes with.
    #[default]
    EcdsaP256,
    /// RSA-2048 with SHA-256, the kind of link key C tor itself uses.
    Rsa2048,
}

/// Failure to build our own TLS material; never caused by a peer.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Key generation or certificate signing failed.
    #[error("could not generate the link certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A validity time was out of range.
    #[error("link certificate validity out of range")]
    BadValidity,
    /// rustls refused the configuration (for example a key that does not match its certificate).
    #[error("rustls rejected the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Our TLS link key and its self-signed certificate. The caller rotates it by generating a new
/// one and building a new [`server_config`] from it; links already open keep the old one.
pub struct LinkCert {
    cert_der: CertificateDer<'static>,
    key_pkcs8: Zeroizing<Vec<u8>>,
    digest: [u8; 32],
    not_after_secs: u64,
}

impl LinkCert {
    /// Generates a fresh key of kind `alg` and a certificate for it, valid from a day before
    /// `now_secs` (UNIX seconds) until `now_secs + lifetime_secs`. `rng` chooses the serial
    /// number and host name; the key comes from the crypto provider's own generator.
    pub fn generate(
        alg: LinkKeyAlg,
        now_secs: u64,
        lifetime_secs: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, TlsSetupError> {
        let key = match alg {
            LinkKeyAlg::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            LinkKeyAlg::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
            }
        };
        let not_before_secs = now_secs.saturating_sub(NOT_BEFORE_BACKDATE_SECS);
        let not_after_secs = now_secs.saturating_add(lifetime_secs);

        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, random_host_name(rng));
        params.distinguished_name = name;
        let mut serial = [0u8; 8];
        rng.fill_bytes(&mut serial);
        // A DER INTEGER with its top bit set would be negative; serial numbers must be positive.
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.not_before = to_time(not_before_secs)?;
        params.not_after = to_time(not_after_secs)?;
        let cert = params.self_signed(&key)?;

        let cert_der = cert.der().clone();
        let digest = proto::x509::tls_cert_digest(&cert_der);
        Ok(LinkCert {
            cert_der,
            key_pkcs8: Zeroizing::new(key.serialize_der()),
            digest,
            not_after_secs,
        })
    }

    /// The certificate's DER bytes, as sent in the TLS handshake.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of [`Self::cert_der`]: what our CERTS cell's type-5 certificate must certify.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// When the certificate expires (UNIX seconds); rotate well before.
    pub fn not_after_secs(&self) -> u64 {
        self.not_after_secs
    }
}

impl std::fmt::Debug for LinkCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("LinkCert")
            .field("digest", &self.digest)
            .field("not_after_secs", &self.not_after_secs)
            .finish_non_exhaustive()
    }
}

/// `www.<8 to 20 lowercase letters and digits>.com`, as C tor names its certificates: no hint
/// of Tor in certificates that TLS 1.2 sends in the clear.
fn random_host_name(rng: &mut impl CryptoRngCore) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let len = 8 + (rng.next_u32() % 13) as usize;
    let mut name = String::with_capacity(len + 8);
    name.push_str("www.");
    for _ in 0..len {
        let c = ALPHABET[(rng.next_u32() % 32) as usize];
        name.push(char::from(c));
    }
    name.push_str(".com");
    name
}

fn to_time(secs: u64) -> Result<time::OffsetDateTime, TlsSetupError> {
    let secs = i64::try_from(secs).map_err(|_| TlsSetupError::BadValidity)?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| TlsSetupError::BadValidity)
}

/// The responder's configuration: TLS 1.3 and 1.2, our link certificate alone, no client
/// authentication (initiators authenticate in-protocol, if at all), no ALPN, no resumption.
pub fn server_config(cert: &LinkCert) -> Result<Arc<ServerConfig>, TlsSetupError> {
    // rustls keeps its own copy of the key inside its signer.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8.to_vec()));
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], key)?;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // Our suite order (AES-128-GCM first, see `Provider::rustls`), not the initiator's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The initiator's configuration: TLS 1.3 and 1.2, no client certificate, any server
/// certificate accepted (the CERTS cell authenticates it) as long as the server proves it holds
/// the certificate's key; no SNI, no resumption.
pub fn client_config() -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = crypto_provider();
    let verifier = Arc::new(LinkCertVerifier {
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// Accepts whatever certificate a Tor responder presents but checks that the handshake is
/// signed with that certificate's key. It records nothing: the link layer reads the certificate
/// back with [`TlsLink::peer_cert_der`] and checks it against the CERTS cell.
#[derive(Debug)]
struct LinkCertVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LinkCertVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // tor-spec §4.2: the link certificate is authenticated by CertType 5 of the CERTS cell,
        // not by any chain or name; its validity period is not checked either.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Why a [`TlsLink`] failed. All but the last three are the peer's fault; every one is
/// sticky: once returned, every later call on the link returns it again. Not `Copy` only
/// because rustls's fieldless `PeerMisbehaved` and `PeerIncompatible` are not; cloning never
/// allocates.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TlsLinkError {
    /// The peer sent a malformed TLS message.
    #[error("peer sent a malformed TLS message: {0:?}")]
    Malformed(InvalidMessage),
    /// The peer sent a message that is not allowed at this point.
    #[error("peer sent an unexpected TLS message")]
    UnexpectedMessage,
    /// The peer deviated from the TLS protocol.
    #[error("peer violated TLS: {0:?}")]
    Misbehaved(PeerMisbehaved),
    /// The peer does not support what we require (version, cipher suite, group, signature).
    #[error("peer is incompatible: {0:?}")]
    Incompatible(PeerIncompatible),
    /// The peer sent a fatal alert.
    #[error("peer sent TLS alert {0:?}")]
    AlertReceived(AlertDescription),
    /// A record failed authentication.
    #[error("TLS record failed to decrypt")]
    Decrypt,
    /// The peer sent a record longer than TLS allows.
    #[error("peer sent an oversized TLS record")]
    OversizedRecord,
    /// The peer's certificate could not be parsed, or did not sign the handshake.
    #[error("peer certificate or handshake signature rejected")]
    BadCertificate,
    /// The transport closed without a TLS close_notify.
    #[error("connection closed without TLS close_notify")]
    UnexpectedEof,
    /// rustls's input buffer filled without a complete message (a bug in this wrapper).
    #[error("TLS input buffer full")]
    InputBufferFull,
    /// Another rustls failure that is not the peer's fault (provider or configuration).
    #[error("local TLS failure")]
    Local,
    /// API misuse: the handshake has not finished (exporter asked too early).
    #[error("TLS handshake not complete")]
    HandshakeNotComplete,
}

impl TlsLinkError {
    fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(m) => Self::Malformed(*m),
            E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                Self::UnexpectedMessage
            }
            E::PeerMisbehaved(m) => Self::Misbehaved(m.clone()),
            E::PeerIncompatible(i) => Self::Incompatible(i.clone()),
            E::AlertReceived(a) => Self::AlertReceived(*a),
            E::DecryptError => Self::Decrypt,
            E::PeerSentOversizedRecord => Self::OversizedRecord,
            E::NoCertificatesPresented | E::InvalidCertificate(_) => Self::BadCertificate,
            E::HandshakeNotComplete => Self::HandshakeNotComplete,
            _ => Self::Local,
        }
    }
}

/// One TLS connection, as responder or initiator, driven entirely by the caller's buffers.
///
/// Call order, repeated until the link closes:
/// 1. bytes read from the socket go to [`handle_tls`](Self::handle_tls) (what it does not
///    consume, feed again after step 2); a read of zero bytes goes to
///    [`handle_eof`](Self::handle_eof);
/// 2. plaintext comes out of [`read_plaintext`](Self::read_plaintext) until it returns 0;
/// 3. plaintext to send goes to [`write_plaintext`](Self::write_plaintext), which takes less
///    than offered once `pending_tls_max_bytes` of ciphertext wait to be sent (backpressure);
/// 4. while [`wants_tls_out`](Self::wants_tls_out), [`poll_tls`](Self::poll_tls) moves
///    ciphertext to the caller's send buffer.
///
/// Step 4 is also needed after an error, to send the alert rustls queued.
///
/// rustls runs the handshake. Once the owner no longer needs the handshake's exporter and says
/// so with [`enable_records`](Self::enable_records), a TLS 1.3 link moves its record
/// protection to [`record`] (fewer copies per byte, no allocation per record) at the first
/// moment rustls holds nothing buffered; [`records_active`](Self::records_active) tells.
pub struct TlsLink {
    inner: Inner,
    /// This connection's application traffic secrets, caught for the switch to [`record`].
    secrets: Arc<record::TrafficSecrets>,
    records_wanted: bool,
    pending_max: usize,
    /// The start of a record whose end has not arrived (at most one record).
    partial: Vec<u8>,
    /// Kept from rustls at the switch.
    peer_cert: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    error: Option<TlsLinkError>,
    /// The transport's read side has ended.
    eof: bool,
}

#[allow(clippy::large_enum_variant)] // One per link; the rustls one is the common state.
enum Inner {
    Rustls(Connection),
    Records(Box<record::Records>),
    /// Only while switching, or after a switch that failed (with an error recorded).
    Gone,
}

impl TlsLink {
    /// A responder's side of a new inbound connection.
    pub fn server(
        config: Arc<ServerConfig>,
        pending_tls_max_bytes: usize,
    ) -> Result<Self, TlsLinkError> {
        let secrets = Arc::new(record::TrafficSecrets::default());
        let mut config = (*config).clone();
        config.key_log = secrets.clone();
        config.enable_secret_extraction = true;
        let conn =
            ServerConnection::new(Arc::new(config)).map_err(|e| TlsLinkError::from_rustls(&e))?;
        Ok(Self::new(conn.into(), secrets, pending_tls_max_bytes))
    }

    /// An initiator's side of a new outbound connection; its ClientHello is ready at once in
    /// [`poll_tls`](Self::poll_tls).
    pub fn client(
        config: Arc<ClientConfig>,
        pending_tls_max_bytes: usize,
    ) -> Result<Self, TlsLinkError> {
        let secrets = Arc::new(record::TrafficSecrets::default());
        let mut config = (*config).clone();
        config.key_log = secrets.clone();
        config.enable_secret_extraction = true;
        // SNI is off, so the name is never sent; the verifier ignores it too.
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let conn = ClientConnection::new(Arc::new(config), name)
            .map_err(|e| TlsLinkError::from_rustls(&e))?;
        Ok(Self::new(conn.into(), secrets, pending_tls_max_bytes))
    }

    fn new(
        mut conn: Connection,
        secrets: Arc<record::TrafficSecrets>,
        pending_tls_max_bytes: usize,
    ) -> Self {
        // Bounds both the plaintext queued before the handshake ends and the ciphertext queued
        // after it; handshake messages themselves are not limited.
        conn.set_buffer_limit(Some(pending_tls_max_bytes));
        TlsLink {
            inner: Inner::Rustls(conn),
            secrets,
            records_wanted: false,
            pending_max: pending_tls_max_bytes,
            partial: Vec::new(),
            peer_cert: None,
            version: None,
            error: None,
            eof: false,
        }
    }

    /// Lets the link move to [`record`] once TLS 1.3's handshake is over and rustls holds
    /// nothing: call it when the session's exporter is no longer needed (after the Tor link
    /// handshake). TLS 1.2 links stay with rustls.
    pub fn enable_records(&mut self) {
        self.records_wanted = true;
        self.try_records();
    }

    /// Whether [`record`] protects this link's records now.
    pub fn records_active(&self) -> bool {
        matches!(self.inner, Inner::Records(_))
    }

    fn try_records(&mut self) {
        let Inner::Rustls(conn) = &mut self.inner else {
            return;
        };
        if !self.records_wanted
            || self.error.is_some()
            || conn.is_handshaking()
            || conn.wants_write()
            || conn.protocol_version() != Some(ProtocolVersion::TLSv1_3)
        {
            return;
        }
        let Ok(state) = conn.process_new_packets() else {
            return;
        };
        if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
            return;
        }
        let Some(rustls::SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite()
        else {
            return;
        };
        let (suite_id, limit) = (suite.common.suite, suite.common.confidentiality_limit);
        self.peer_cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        self.version = conn.protocol_version();
        let Inner::Rustls(conn) = std::mem::replace(&mut self.inner, Inner::Gone) else {
            return;
        };
        let is_client = matches!(conn, Connection::Client(_));
        let handover = conn.dangerous_extract_secrets().ok().and_then(|x| {
            Some(record::Handover {
                suite: suite_id,
                provider: chosen_provider(),
                confidentiality_limit: limit,
                is_client,
                tx: (x.tx.0, traffic_key(&x.tx.1)?, traffic_iv(&x.tx.1)?),
                rx: (x.rx.0, traffic_key(&x.rx.1)?, traffic_iv(&x.rx.1)?),
            })
        });
        match handover.and_then(|h| record::Records::new(h, &self.secrets, self.pending_max)) {
            Some(r) => self.inner = Inner::Records(Box::new(r)),
            None => {
                self.fail(TlsLinkError::Local);
            }
        }
    }

    /// Feeds ciphertext received from the peer and processes every complete record in it.
    /// Returns how many bytes were consumed: fewer than `input.len()` when the decrypted
    /// plaintext waiting in [`read_plaintext`](Self::read_plaintext) exceeds about 16 KiB; read
    /// it, then feed the rest again. A record cut at the end of `input` is kept (consumed) until
    /// the rest of it arrives. After the peer's close_notify, the rest is discarded.
    pub fn handle_tls(&mut self, input: &[u8]) -> Result<usize, TlsLinkError> {
        self.handle_tls_inner(input, None, 0)
    }

    /// As [`handle_tls`](Self::handle_tls), but once [`record`] protects the link
    /// ([`records_active`](Self::records_active)) the plaintext is opened straight onto the end
    /// of `out` (after any opened earlier and not yet read), while `out` holds under `limit`
    /// bytes, instead of waiting for [`read_plaintext`](Self::read_plaintext): one copy
    /// instead of two. Before that it is exactly `handle_tls`.
    pub fn handle_tls_into(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, TlsLinkError> {
        self.handle_tls_inner(input, Some(out), limit)
    }

    fn handle_tls_inner(
        &mut self,
        input: &[u8],
        mut into: Option<&mut Vec<u8>>,
        limit: usize,
    ) -> Result<usize, TlsLinkError> {
        self.check()?;
        let mut used = 0;
        if !self.partial.is_empty() {
            // Complete the record begun earlier (its header first, if that is cut too).
            // Twice at most: the header's missing bytes, then the body's.
            while matches!(record::first_record(&self.partial), record::First::Partial) {
                let take = record::missing(&self.partial).min(input.len() - used);
                if take == 0 {
                    return Ok(used);
                }
                self.partial.extend_from_slice(&input[used..used + take]);
                used += take;
            }
            let partial = std::mem::take(&mut self.partial);
            let n = self.feed(&partial, into.as_deref_mut(), limit)?;
            if n < partial.len() {
                // Plaintext is full: the record waits here.
                self.partial = partial;
                return Ok(used);
            }
            self.partial = partial;
            self.partial.clear();
        }
        let rest = input.get(used..).unwrap_or_default();
        let n = self.feed(rest, into, limit)?;
        used += n;
        let tail = rest.get(n..).unwrap_or_default();
        if !tail.is_empty() && matches!(record::first_record(tail), record::First::Partial) {
            self.partial.extend_from_slice(tail);
            used = input.len();
        }
        Ok(used)
    }

    /// Whole records of `input` to rustls or [`record`] (opened onto `into` if given); how
    /// many bytes they took.
    fn feed(
        &mut self,
        input: &[u8],
        into: Option<&mut Vec<u8>>,
        limit: usize,
    ) -> Result<usize, TlsLinkError> {
        let r = match (&mut self.inner, into) {
            (Inner::Records(r), Some(out)) => r.handle_tls_into(input, out, limit),
            (Inner::Records(r), None) => r.handle_tls(input),
            (Inner::Rustls(conn), _) => rustls_handle_tls(conn, input),
            (Inner::Gone, _) => Err(TlsLinkError::Local),
        };
        r.map_err(|e| self.fail(e))
    }

    /// Tells the link that the transport's read side reached end of file: once the plaintext
    /// already received is read, [`read_plaintext`](Self::read_plaintext) fails with
    /// [`TlsLinkError::UnexpectedEof`] unless the peer closed with close_notify.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// Copies decrypted plaintext into `out`; returns 0 if there is none now (see
    /// [`peer_closed`](Self::peer_closed) to tell a clean end of stream).
    pub fn read_plaintext(&mut self, out: &mut [u8]) -> Result<usize, TlsLinkError> {
        self.check()?;
        let r = match &mut self.inner {
            Inner::Records(r) => {
                let n = r.plaintext().len().min(out.len());
                out[..n].copy_from_slice(&r.plaintext()[..n]);
                r.consume(n);
                if n == 0 && out.is_empty() {
                    Ok(0)
                } else if n == 0 && !r.peer_closed() && self.eof {
                    Err(TlsLinkError::UnexpectedEof)
                } else {
                    Ok(n)
                }
            }
            Inner::Rustls(conn) => match io::Read::read(&mut conn.reader(), out) {
                Ok(n) => Ok(n),
                // No plaintext and no close_notify: after EOF, none will ever come.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.eof => {
                    Err(TlsLinkError::UnexpectedEof)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(_) => Err(TlsLinkError::Local),
            },
            Inner::Gone => Err(TlsLinkError::Local),
        };
        let n = r.map_err(|e| self.fail(e))?;
        if n == 0 {
            self.try_records();
        }
        Ok(n)
    }

    /// Appends up to `max` bytes of decrypted plaintext to `out`, straight from TLS's buffers
    /// (no intermediate copy); returns how many (0 if there is none now). Errors as
    /// [`read_plaintext`](Self::read_plaintext).
    pub fn read_plaintext_into(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, TlsLinkError> {
        self.check()?;
        let r = match &mut self.inner {
            Inner::Records(r) => {
                let n = r.plaintext().len().min(max);
                out.extend_from_slice(&r.plaintext()[..n]);
                r.consume(n);
                if n == 0 && max > 0 && !r.peer_closed() && self.eof {
                    Err(TlsLinkError::UnexpectedEof)
                } else {
                    Ok(n)
                }
            }
            Inner::Rustls(conn) => rustls_read_into(conn, out, max, self.eof),
            Inner::Gone => Err(TlsLinkError::Local),
        };
        let n = r.map_err(|e| self.fail(e))?;
        if n < max {
            self.try_records();
        }
        Ok(n)
    }

    /// Queues plaintext to send; returns how much was taken, which is less than `data.len()`
    /// (possibly 0) when the ciphertext waiting for [`poll_tls`](Self::poll_tls) has reached
    /// `pending_tls_max_bytes`. Before the handshake ends, plaintext is held and sent after it.
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, TlsLinkError> {
        self.check()?;
        let r = match &mut self.inner {
            Inner::Records(r) => r.write_plaintext(data),
            Inner::Rustls(conn) => conn.writer().write(data).map_err(|_| TlsLinkError::Local),
            Inner::Gone => Err(TlsLinkError::Local),
        };
        r.map_err(|e| self.fail(e))
    }

    /// Once [`record`] protects the link: the buffer to append at most `need` bytes of
    /// plaintext to, straight into the record being filled (no copy on TLS's side), if they
    /// fit under `pending_tls_max_bytes` of waiting ciphertext. `None` otherwise (and always
    /// while rustls runs the link): use [`write_plaintext`](Self::write_plaintext). The caller
    /// appends at most `need` bytes (a record over 16 KiB would end the link with
    /// [`TlsLinkError::Local`]).
    pub fn plaintext_writer(&mut self, need: usize) -> Option<&mut Vec<u8>> {
        if self.error.is_some() {
            return None;
        }
        let reserved = match &mut self.inner {
            Inner::Records(r) => r.reserve_plaintext(need),
            _ => return None,
        };
        match reserved {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.fail(e);
                return None;
            }
        }
        match &mut self.inner {
            Inner::Records(r) => Some(r.open_record_buf()),
            _ => None,
        }
    }

    /// Appends up to `max_bytes` of ciphertext for the peer to `out`; returns how many. When
    /// `out` is empty and everything fits, the buffer may be handed over instead of copied.
    pub fn poll_tls(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        let n = match &mut self.inner {
            Inner::Records(r) => {
                return match r.poll_tls(out, max_bytes) {
                    Ok(n) => n,
                    Err(e) => {
                        self.fail(e);
                        0
                    }
                }
            }
            Inner::Rustls(conn) => {
                let mut sink = CappedSink {
                    out,
                    room: max_bytes,
                };
                let mut total = 0;
                while conn.wants_write() && sink.room > 0 {
                    match conn.write_tls(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
                total
            }
            Inner::Gone => 0,
        };
        self.try_records();
        n
    }

    /// Whether ciphertext is waiting for [`poll_tls`](Self::poll_tls).
    pub fn wants_tls_out(&self) -> bool {
        match &self.inner {
            Inner::Records(r) => r.wants_tls_out(),
            Inner::Rustls(conn) => conn.wants_write(),
            Inner::Gone => false,
        }
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        match &self.inner {
            Inner::Rustls(conn) => conn.is_handshaking(),
            Inner::Records(_) | Inner::Gone => false,
        }
    }

    /// Whether the peer closed cleanly (close_notify) and all its plaintext has been read.
    pub fn peer_closed(&mut self) -> bool {
        match &mut self.inner {
            Inner::Records(r) => r.peer_closed() && r.plaintext().is_empty(),
            // With no new input, this only reports the state.
            Inner::Rustls(conn) => matches!(conn.process_new_packets(),
                Ok(state) if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0),
            Inner::Gone => false,
        }
    }

    /// Queues our close_notify; send it with [`poll_tls`](Self::poll_tls).
    pub fn send_close(&mut self) {
        match &mut self.inner {
            Inner::Records(r) => {
                if let Err(e) = r.send_close() {
                    self.fail(e);
                }
            }
            Inner::Rustls(conn) => conn.send_close_notify(),
            Inner::Gone => {}
        }
    }

    /// The error that ended this link, if one did.
    pub fn error(&self) -> Option<&TlsLinkError> {
        self.error.as_ref()
    }

    /// The TLS version negotiated, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.inner {
            Inner::Rustls(conn) => conn.protocol_version(),
            Inner::Records(_) | Inner::Gone => self.version,
        }
    }

    /// The cipher suite negotiated, once known.
    pub fn cipher_suite(&self) -> Option<CipherSuite> {
        match &self.inner {
            Inner::Rustls(conn) => conn.negotiated_cipher_suite().map(|s| s.suite()),
            Inner::Records(r) => Some(r.suite()),
            Inner::Gone => None,
        }
    }

    /// The DER certificate the peer presented first (its end-entity certificate), if any; for a
    /// Tor responder, its link certificate.
    pub fn peer_cert_der(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Rustls(conn) => conn
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| c.as_ref()),
            Inner::Records(_) | Inner::Gone => self.peer_cert.as_deref(),
        }
    }

    /// SHA-256 of [`peer_cert_der`](Self::peer_cert_der): what the responder's CERTS cell must
    /// certify with CertType 5 (`proto::certs_cell::check_responder_certs`).
    pub fn peer_cert_digest(&self) -> Option<[u8; 32]> {
        self.peer_cert_der().map(proto::x509::tls_cert_digest)
    }

    /// TLSSECRETS of AUTHENTICATE type 3 (tor-spec §4.4.2): the RFC 5705 exporter with label
    /// [`AUTH3_EXPORTER_LABEL`], length 32, and as context `cid`, the AUTHENTICATE cell's CID
    /// field (SHA-256 of the initiator's PKCS#1 DER RSA identity key). C tor 0.4.9 uses CID
    /// here, not CID_ED as the spec's text says, and rejects anything else. Only while rustls
    /// runs the link (before [`enable_records`](Self::enable_records) takes effect).
    pub fn auth3_exporter(&self, cid: &[u8; 32]) -> Result<[u8; 32], TlsLinkError> {
        let Inner::Rustls(conn) = &self.inner else {
            return Err(TlsLinkError::Local);
        };
        if conn.is_handshaking() {
            return Err(TlsLinkError::HandshakeNotComplete);
        }
        conn.export_keying_material([0u8; 32], AUTH3_EXPORTER_LABEL, Some(cid))
            .map_err(|e| TlsLinkError::from_rustls(&e))
    }

    fn check(&self) -> Result<(), TlsLinkError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: TlsLinkError) -> TlsLinkError {
        self.error.get_or_insert(e).clone()
    }
}

/// [`TlsLink::handle_tls`] while rustls runs the link. rustls is given whole records only, one
/// at a time, so that it never holds part of one: what it has not processed is always still
/// the caller's, which the switch to [`record`] relies on.
fn rustls_handle_tls(conn: &mut Connection, input: &[u8]) -> Result<usize, TlsLinkError> {
    let mut consumed = 0;
    loop {
        let rest = input.get(consumed..).unwrap_or_default();
        let len = match record::first_record(rest) {
            record::First::Whole(len) => len,
            record::First::Partial => break,
            // Let rustls see it and refuse it.
            record::First::Invalid => rest.len(),
        };
        let mut rec = rest.get(..len).unwrap_or_default();
        let mut first = true;
        while !rec.is_empty() {
            match conn.read_tls(&mut rec) {
                // close_notify already received: the rest is discarded.
                Ok(0) => return Ok(input.len()),
                Ok(_) => {}
                // Decrypted plaintext is full: stop before this record.
                Err(e) if e.kind() == io::ErrorKind::Other && first => return Ok(consumed),
                Err(_) => return Err(TlsLinkError::InputBufferFull),
            }
            first = false;
        }
        consumed += len;
        match conn.process_new_packets() {
            Ok(state) if state.peer_has_closed() => return Ok(input.len()),
            Ok(_) => {}
            Err(e) => return Err(TlsLinkError::from_rustls(&e)),
        }
    }
    Ok(consumed)
}

/// [`TlsLink::read_plaintext_into`] while rustls runs the link.
fn rustls_read_into(
    conn: &mut Connection,
    out: &mut Vec<u8>,
    max: usize,
    eof: bool,
) -> Result<usize, TlsLinkError> {
    let mut total = 0;
    while total < max {
        let mut reader = conn.reader();
        let n = match io::BufRead::fill_buf(&mut reader) {
            Ok(chunk) => {
                let n = chunk.len().min(max - total);
                out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && total == 0 && eof => {
                return Err(TlsLinkError::UnexpectedEof);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(TlsLinkError::Local),
        };
        if n == 0 {
            // Cleanly closed and drained.
            break;
        }
        io::BufRead::consume(&mut reader, n);
        total += n;
    }
    Ok(total)
}

fn traffic_key(s: &rustls::ConnectionTrafficSecrets) -> Option<Zeroizing<Vec<u8>>> {
    use rustls::ConnectionTrafficSecrets as S;
    match s {
        S::Aes128Gcm { key, .. } | S::Aes256Gcm { key, .. } | S::Chacha20Poly1305 { key, .. } => {
            Some(Zeroizing::new(key.as_ref().to_vec()))
        }
        _ => None,
    }
}

fn traffic_iv(s: &rustls::ConnectionTrafficSecrets) -> Option<[u8; 12]> {
    use rustls::ConnectionTrafficSecrets as S;
    match s {
        S::Aes128Gcm { iv, .. } | S::Aes256Gcm { iv, .. } | S::Chacha20Poly1305 { iv, .. } => {
            iv.as_ref().try_into().ok()
        }
        _ => None,
    }
}

/// The link handshake reads the peer's certificate digest and the AUTHENTICATE exporter
/// straight from the TLS session.
impl proto::link_handshake::LinkTls for TlsLink {
    fn peer_cert_sha256(&self) -> Option<[u8; 32]> {
        self.peer_cert_digest()
    }

    fn auth3_exporter(&self, context: &[u8; 32]) -> Option<[u8; 32]> {
        TlsLink::auth3_exporter(self, context).ok()
    }
}

impl std::fmt::Debug for TlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLink")
            .field("handshaking", &self.is_handshaking())
            .field("records", &self.records_active())
            .field("version", &self.protocol_version())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A `Write` into the caller's `Vec` that takes at most `room` more bytes.
struct CappedSink<'a> {
    out: &'a mut Vec<u8>,
    room: usize,
}

impl Write for CappedSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room);
        self.out.extend_from_slice(buf.get(..n).unwrap_or_default());
        self.room -= n;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            let n = self.write(buf)?;
            total += n;
            if n < buf.len() {
                break;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds arbitrary bytes to a fresh responder link, (after its ClientHello) to a fresh
/// initiator link, and to a responder whose records [`record`] protects; for fuzzing. The first byte chooses how the input is split into reads.
pub fn fuzz_handle_tls(bytes: &[u8]) {
    static CONFIGS: OnceLock<Option<(Arc<ServerConfig>, Arc<ClientConfig>)>> = OnceLock::new();
    let Some((server_config, client_config)) = CONFIGS.get_or_init(|| {
        let cert = LinkCert::generate(
            LinkKeyAlg::EcdsaP256,
            1_700_000_000,
            86_400,
            &mut rand::rngs::OsRng,
        )
        .ok()?;
        Some((server_config(&cert).ok()?, client_config().ok()?))
    }) else {
        return;
    };
    let Some((chunk, input)) = bytes.split_first() else {
        return;
    };
    let chunk = usize::from(*chunk).max(1) * 64;
    let mut out = Vec::new();
    let links = [
        TlsLink::server(server_config.clone(), DEFAULT_PENDING_TLS_MAX_BYTES),
        TlsLink::client(client_config.clone(), DEFAULT_PENDING_TLS_MAX_BYTES),
    ];
    let mut plain = [0u8; 4096];
    for mut link in links.into_iter().flatten() {
        link.poll_tls(&mut out, usize::MAX);
        fuzz_feed(&mut link, input, chunk);
        link.handle_eof();
        let _ = link.read_plaintext(&mut plain);
    }
    // A responder whose records `record` protects, after a handshake with our initiator.
    let (Ok(mut client), Ok(mut server)) = (
        TlsLink::client(client_config.clone(), DEFAULT_PENDING_TLS_MAX_BYTES),
        TlsLink::server(server_config.clone(), DEFAULT_PENDING_TLS_MAX_BYTES),
    ) else {
        return;
    };
    for round in 0..16 {
        let (from, to) = if round % 2 == 0 {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        out.clear();
        from.poll_tls(&mut out, usize::MAX);
        if to.handle_tls(&out).is_err() {
            return;
        }
    }
    server.enable_records();
    if !server.records_active() {
        return;
    }
    fuzz_feed(&mut server, input, chunk);
}

/// Feeds `input` to `link` in reads of `chunk` bytes, reading the plaintext and taking the
/// ciphertext out after each, as a reactor would.
fn fuzz_feed(link: &mut TlsLink, input: &[u8], chunk: usize) {
    let mut plain = [0u8; 4096];
    let mut inbox = Vec::new();
    let mut out = Vec::new();
    for (i, piece) in input.chunks(chunk).enumerate() {
        // Every other piece goes through the one-copy paths (records opened into the
        // caller's buffer, what was read written back straight into the open record).
        let direct = i % 2 == 1;
        let mut piece = piece;
        while !piece.is_empty() {
            let fed = if direct {
                link.handle_tls_into(piece, &mut inbox, plain.len())
            } else {
                link.handle_tls(piece)
            };
            let Ok(n) = fed else {
                return;
            };
            piece = piece.get(n..).unwrap_or_default();
            let mut read = inbox.len();
            if let Some(w) = link.plaintext_writer(read.min(record::PLAINTEXT_MAX)) {
                w.extend_from_slice(&inbox[..read.min(record::PLAINTEXT_MAX)]);
            }
            inbox.clear();
            while let Ok(m @ 1..) = link.read_plaintext(&mut plain) {
                read += m;
            }
            if n == 0 && read == 0 {
                break;
            }
        }
        out.clear();
        link.poll_tls(&mut out, usize::MAX);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;

    const NOW: u64 = 1_764_000_000;

    /// Both providers' AEADs run, so the measurement that picks one compares real figures, and
    /// every name the environment override takes maps back to its provider.
    #[test]
    fn both_providers_measured() {
        for p in [Provider::Ring, Provider::AwsLcRs] {
            let ns = seal_ns(p);
            assert!(ns > 0 && ns < u64::MAX, "{}: {ns}", p.name());
            let both = aead_record_ns(p, 3).expect("seal and open");
            assert!(both.seal > 0 && both.open > 0, "{}: {both:?}", p.name());
            assert_eq!(Provider::from_name(p.name()), Some(p));
        }
        assert_eq!(Provider::from_name("openssl"), None);
        let chosen = chosen_provider();
        assert_eq!(
            crypto_provider().cipher_suites,
            chosen.rustls().cipher_suites
        );
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn cert(alg: LinkKeyAlg) -> LinkCert {
        LinkCert::generate(alg, NOW, 30 * 86_400, &mut rng()).expect("generate")
    }

    fn pair_with(server: Arc<ServerConfig>, client: Arc<ClientConfig>, max: usize) -> Pair {
        Pair {
            client: TlsLink::client(client, max).expect("client"),
            server: TlsLink::server(server, max).expect("server"),
        }
    }

    struct Pair {
        client: TlsLink,
        server: TlsLink,
    }

    impl Pair {
        /// Moves all pending ciphertext both ways until nothing moves; returns the first error.
        fn pump(&mut self) -> Result<(), (bool, TlsLinkError)> {
            for _ in 0..100 {
                let a = transfer(&mut self.client, &mut self.server).map_err(|e| (false, e))?;
                let b = transfer(&mut self.server, &mut self.client).map_err(|e| (true, e))?;
                if a == 0 && b == 0 {
                    return Ok(());
                }
            }
            panic!("pump did not settle");
        }
    }

    /// Moves ciphertext from `from` to `to`; returns the byte count. Plaintext stays queued.
    fn transfer(from: &mut TlsLink, to: &mut TlsLink) -> Result<usize, TlsLinkError> {
        let mut wire = Vec::new();
        from.poll_tls(&mut wire, usize::MAX);
        let mut fed = 0;
        while fed < wire.len() {
            let n = to.handle_tls(&wire[fed..])?;
            assert!(n > 0, "plaintext full during a pure transfer");
            fed += n;
        }
        Ok(wire.len())
    }

    #[test]
    fn handshake_certificate_and_exporter() {
        let c = cert(LinkKeyAlg::EcdsaP256);
        let mut p = pair_with(
            server_config(&c).unwrap(),
            client_config().unwrap(),
            DEFAULT_PENDING_TLS_MAX_BYTES,
        );
        let cid = [0x42; 32];
        assert!(p.client.is_handshaking());
        assert_eq!(
            p.client.auth3_exporter(&cid),
            Err(TlsLinkError::HandshakeNotComplete)
        );
        p.pump().unwrap();
        assert!(!p.client.is_handshaking() && !p.server.is_handshaking());
        assert_eq!(p.client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(p.client.peer_cert_der(), Some(c.cert_der()));
        assert_eq!(p.client.peer_cert_digest(), Some(c.digest()));
        assert_eq!(c.digest(), proto::x509::tls_cert_digest(c.cert_der()));
        // Initiators present no certificate.
        assert_eq!(p.server.peer_cert_der(), None);
        let ours = p.client.auth3_exporter(&cid).unwrap();
        assert_eq!(p.server.auth3_exporter(&cid).unwrap(), ours);
        assert_ne!(p.client.auth3_exporter(&[0x43; 32]).unwrap(), ours);
        assert_eq!(c.not_after_secs(), NOW + 30 * 86_400);
        assert_eq!(
            p.client.cipher_suite(),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    /// Our responder picks AES-128-GCM even when the initiator lists AES-256-GCM first (as
    /// OpenSSL's defaults do).
    #[test]
    fn responder_prefers_aes_128_gcm() {
        let mut provider = chosen_provider().rustls();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != CipherSuite::TLS13_AES_256_GCM_SHA384);
        assert_eq!(
            provider.cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let verifier = Arc::new(LinkCertVerifier {
            algs: provider.signature_verification_algorithms,
        });
        let mut client = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        client.enable_sni = false;
        let mut p = pair_with(
            shared_server(),
            Arc::new(client),
            DEFAULT_PENDING_TLS_MAX_BYTES,
        );
        p.pump().unwrap();
        assert_eq!(
            p.server.cipher_suite(),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    #[test]
    fn certificate_shape() {
        use x509_cert::der::Decode;
        let c = cert(LinkKeyAlg::EcdsaP256);
        let x = x509_cert::Certificate::from_der(c.cert_der()).unwrap();
        let tbs = &x.tbs_certificate;
        assert_eq!(tbs.version, x509_cert::certificate::Version::V3);
        // Self-signed: the spec's marker of the in-protocol handshake.
        assert_eq!(tbs.issuer, tbs.subject);
        let name = tbs.subject.to_string();
        assert!(
            name.starts_with("CN=www.") && name.ends_with(".com"),
            "{name}"
        );
        assert!(!name.to_lowercase().contains("tor"), "{name}");
        let serial = tbs.serial_number.as_bytes();
        assert!(!serial.is_empty() && serial[0] & 0x80 == 0);
        assert_eq!(
            tbs.validity.not_before.to_unix_duration().as_secs(),
            NOW - NOT_BEFORE_BACKDATE_SECS
        );
        assert_eq!(
            tbs.validity.not_after.to_unix_duration().as_secs(),
            NOW + 30 * 86_400
        );
        // Two certificates from different RNG states differ in name and serial.
        let other = LinkCert::generate(
            LinkKeyAlg::EcdsaP256,
            NOW,
            86_400,
            &mut rand::rngs::StdRng::seed_from_u64(8),
        )
        .unwrap();
        let y = x509_cert::Certificate::from_der(other.cert_der()).unwrap();
        assert_ne!(y.tbs_certificate.subject, tbs.subject);
        assert_ne!(y.tbs_certificate.serial_number, tbs.serial_number);
    }

    /// Pumps 1 MiB each way through a small ciphertext limit, in uneven pieces, with reads
    /// limited by backpressure on both sides.
    fn move_one_mib_each_way(server: Arc<ServerConfig>, client: Arc<ClientConfig>) {
        const LEN: usize = 1 << 20;
        let mut rng = rng();
        let to_server: Vec<u8> = (0..LEN).map(|_| rng.gen()).collect();
        let to_client: Vec<u8> = (0..LEN).map(|_| rng.gen()).collect();
        let mut p = pair_with(server, client, 20_000);
        // Written before the handshake: held until it ends.
        let mut sent_c = p.client.write_plaintext(&to_server[..1000]).unwrap();
        let mut sent_s = 0;
        let (mut got_s, mut got_c) = (Vec::new(), Vec::new());
        // Wires with leftovers that a backpressured handle_tls did not take.
        let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 7000];
        let mut rounds = 0;
        while got_s.len() < LEN || got_c.len() < LEN {
            rounds += 1;
            assert!(rounds < 100_000, "no progress");
            let n = rng.gen_range(1..40_000);
            sent_c += p
                .client
                .write_plaintext(&to_server[sent_c..(sent_c + n).min(LEN)])
                .unwrap();
            let n = rng.gen_range(1..40_000);
            sent_s += p
                .server
                .write_plaintext(&to_client[sent_s..(sent_s + n).min(LEN)])
                .unwrap();
            p.client.poll_tls(&mut c2s, rng.gen_range(1..30_000));
            p.server.poll_tls(&mut s2c, rng.gen_range(1..30_000));
            for (wire, link, got) in [
                (&mut c2s, &mut p.server, &mut got_s),
                (&mut s2c, &mut p.client, &mut got_c),
            ] {
                let take = wire.len().min(rng.gen_range(1..25_000));
                let n = link.handle_tls(&wire[..take]).unwrap();
                wire.drain(..n);
                loop {
                    let k = link
                        .read_plaintext(&mut buf[..rng.gen_range(1..7000)])
                        .unwrap();
                    if k == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..k]);
                }
            }
        }
        assert!(got_s == to_server, "client to server bytes differ");
        assert!(got_c == to_client, "server to client bytes differ");

        // Clean close: the peer sees close_notify, and EOF after it is no error.
        p.client.send_close();
        assert!(!p.server.peer_closed());
        transfer(&mut p.client, &mut p.server).unwrap();
        p.server.handle_eof();
        assert!(p.server.peer_closed());
        assert_eq!(p.server.read_plaintext(&mut buf), Ok(0));
    }

    #[test]
    fn one_mib_both_ways_tls13() {
        let c = cert(LinkKeyAlg::EcdsaP256);
        move_one_mib_each_way(server_config(&c).unwrap(), client_config().unwrap());
    }

    #[test]
    fn one_mib_both_ways_tls12_rsa() {
        let c = cert(LinkKeyAlg::Rsa2048);
        let mut tls12 = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LinkCertVerifier {
                algs: crypto_provider().signature_verification_algorithms,
            }))
            .with_no_client_auth();
        tls12.resumption = Resumption::disabled();
        let mut p = pair_with(
            server_config(&c).unwrap(),
            Arc::new(tls12.clone()),
            DEFAULT_PENDING_TLS_MAX_BYTES,
        );
        p.pump().unwrap();
        assert_eq!(p.client.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(p.client.peer_cert_digest(), Some(c.digest()));
        let cid = [9; 32];
        assert_eq!(
            p.client.auth3_exporter(&cid).unwrap(),
            p.server.auth3_exporter(&cid).unwrap()
        );
        move_one_mib_each_way(server_config(&c).unwrap(), Arc::new(tls12));
    }

    #[test]
    fn backpressure_both_directions() {
        const LIMIT: usize = 20_000;
        let c = cert(LinkKeyAlg::EcdsaP256);
        let mut p = pair_with(server_config(&c).unwrap(), client_config().unwrap(), LIMIT);
        p.pump().unwrap();
        let data = vec![0xa5; 300_000];

        // Sending: plaintext is refused once LIMIT bytes of ciphertext wait.
        let first = p.client.write_plaintext(&data).unwrap();
        assert_eq!(first, LIMIT);
        assert_eq!(p.client.write_plaintext(&data[first..]).unwrap(), 0);
        let mut wire = Vec::new();
        // poll_tls respects its own bound, and the rest stays queued.
        assert_eq!(p.client.poll_tls(&mut wire, 1000), 1000);
        assert_eq!(wire.len(), 1000);
        assert!(p.client.wants_tls_out());
        let drained = p.client.poll_tls(&mut wire, usize::MAX);
        assert!(drained > LIMIT - 1000, "{drained}");
        assert!(!p.client.wants_tls_out());
        let mut sent = first;
        while sent < data.len() {
            let n = p.client.write_plaintext(&data[sent..]).unwrap();
            assert!(n > 0 && n <= LIMIT);
            sent += n;
            p.client.poll_tls(&mut wire, usize::MAX);
        }

        // Receiving: with nobody reading plaintext, the link stops taking ciphertext after
        // about 16 KiB of plaintext plus one record.
        let taken = p.server.handle_tls(&wire).unwrap();
        assert!(taken < wire.len());
        assert!(taken <= 16 * 1024 + 2 * (16 * 1024 + 22), "{taken}");
        assert_eq!(p.server.handle_tls(&wire[taken..]).unwrap(), 0);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 10_000];
        let mut fed = taken;
        loop {
            let n = p.server.read_plaintext(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                if fed == wire.len() {
                    break;
                }
                let more = p.server.handle_tls(&wire[fed..]).unwrap();
                assert!(more > 0);
                fed += more;
            }
        }
        assert!(got == data);
    }

    #[test]
    fn garbage_gives_typed_error_and_sticks() {
        let c = cert(LinkKeyAlg::EcdsaP256);
        let mut server = TlsLink::server(server_config(&c).unwrap(), 1 << 16).unwrap();
        let e = server
            .handle_tls(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_err();
        assert_eq!(
            e,
            TlsLinkError::Malformed(InvalidMessage::InvalidContentType)
        );
        // rustls queued an alert for the peer.
        assert!(server.wants_tls_out());
        let mut out = Vec::new();
        assert!(server.poll_tls(&mut out, usize::MAX) > 0);
        assert_eq!(out[0], 21, "an alert record");
        // Sticky.
        assert_eq!(server.handle_tls(&[22, 3, 1, 0, 1, 1]), Err(e.clone()));
        assert_eq!(server.read_plaintext(&mut [0; 10]), Err(e.clone()));
        assert_eq!(server.write_plaintext(b"x"), Err(e.clone()));
        assert_eq!(server.error(), Some(&e));

        // A handshake record holding something that is not a ClientHello.
        let mut server = TlsLink::server(server_config(&c).unwrap(), 1 << 16).unwrap();
        let e = server
            .handle_tls(&[22, 3, 1, 0, 6, 20, 0, 0, 2, 0, 0])
            .unwrap_err();
        assert_eq!(e, TlsLinkError::UnexpectedMessage);

        // A record longer than TLS allows.
        let mut server = TlsLink::server(server_config(&c).unwrap(), 1 << 16).unwrap();
        let e = server.handle_tls(&[22, 3, 3, 0xff, 0xff, 0]).unwrap_err();
        assert_eq!(e, TlsLinkError::Malformed(InvalidMessage::MessageTooLarge));
    }

    #[test]
    fn eof_without_close_notify_is_an_error() {
        let c = cert(LinkKeyAlg::EcdsaP256);
        let mut p = pair_with(
            server_config(&c).unwrap(),
            client_config().unwrap(),
            DEFAULT_PENDING_TLS_MAX_BYTES,
        );
        p.pump().unwrap();
        p.client.write_plaintext(b"last words").unwrap();
        transfer(&mut p.client, &mut p.server).unwrap();
        p.server.handle_eof();
        let mut buf = [0u8; 64];
        // Plaintext that arrived before EOF is still delivered.
        assert_eq!(p.server.read_plaintext(&mut buf), Ok(10));
        assert_eq!(&buf[..10], b"last words");
        assert!(!p.server.peer_closed());
        assert_eq!(
            p.server.read_plaintext(&mut buf),
            Err(TlsLinkError::UnexpectedEof)
        );
    }

    /// Serves a certificate whose key the server does not hold.
    #[derive(Debug)]
    struct WrongKey(Arc<CertifiedKey>);

    impl ResolvesServerCert for WrongKey {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn client_rejects_server_without_the_certificate_key() {
        let shown = cert(LinkKeyAlg::EcdsaP256);
        let held = LinkCert::generate(LinkKeyAlg::EcdsaP256, NOW, 86_400, &mut rng()).unwrap();
        let key = crypto_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                held.key_pkcs8.to_vec(),
            )))
            .unwrap();
        let certified = CertifiedKey::new(vec![shown.cert_der.clone()], key);
        let server = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(WrongKey(Arc::new(certified))));
        let mut p = pair_with(Arc::new(server), client_config().unwrap(), 1 << 16);
        let (at_client, e) = p.pump().unwrap_err();
        assert!(at_client);
        assert_eq!(e, TlsLinkError::BadCertificate);
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            fuzz_handle_tls(&bytes);
        }

        #[test]
        fn arbitrary_input_after_valid_prefix(
            garbage in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..400,
        ) {
            // A real ClientHello cut short, then garbage.
            let mut client = TlsLink::client(fallback_client(), 1 << 16).unwrap();
            let mut hello = Vec::new();
            client.poll_tls(&mut hello, usize::MAX);
            hello.truncate(cut.min(hello.len()));
            hello.extend_from_slice(&garbage);
            let mut input = vec![1u8];
            input.extend_from_slice(&hello);
            fuzz_handle_tls(&input);
        }

        #[test]
        fn chunks_round_trip(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..5000), 1..20)) {
            let mut p = pair_with(shared_server(), fallback_client(), 1 << 16);
            p.pump().unwrap();
            let mut want = Vec::new();
            let mut got = Vec::new();
            let mut buf = [0u8; 3000];
            for chunk in &chunks {
                assert_eq!(p.client.write_plaintext(chunk).unwrap(), chunk.len());
                want.extend_from_slice(chunk);
                transfer(&mut p.client, &mut p.server).unwrap();
                loop {
                    let n = p.server.read_plaintext(&mut buf).unwrap();
                    if n == 0 { break; }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    /// Moves everything both ways, reading all plaintext on each side into `got`.
    fn exchange(p: &mut Pair, got: &mut [Vec<u8>; 2]) {
        let mut buf = vec![0u8; 40_000];
        // Ciphertext on its way to the server, and to the client.
        let mut wires = [Vec::new(), Vec::new()];
        for _ in 0..100_000 {
            let mut moved = 0;
            p.client.poll_tls(&mut wires[0], usize::MAX);
            p.server.poll_tls(&mut wires[1], usize::MAX);
            for (i, to) in [&mut p.server, &mut p.client].into_iter().enumerate() {
                let n = to.handle_tls(&wires[i]).unwrap();
                wires[i].drain(..n);
                moved += n;
                loop {
                    let n = to.read_plaintext(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    moved += n;
                    got[1 - i].extend_from_slice(&buf[..n]);
                }
            }
            if moved == 0 && wires.iter().all(Vec::is_empty) {
                return;
            }
        }
        panic!("exchange did not settle");
    }

    /// A handshaken pair with both ends told to move to `record` (the responder has; the
    /// initiator does once it has read the responder's last handshake bytes).
    fn both_on_records() -> Pair {
        let mut p = pair_with(
            shared_server(),
            fallback_client(),
            DEFAULT_PENDING_TLS_MAX_BYTES,
        );
        exchange(&mut p, &mut [Vec::new(), Vec::new()]);
        assert!(p.client.plaintext_writer(514).is_none(), "rustls runs it");
        p.client.enable_records();
        p.server.enable_records();
        assert!(p.server.records_active());
        p
    }

    /// A handshaken pair with `pending` bytes of sending room whose responder has moved to
    /// `record` (the initiator stays on rustls), and the plaintext each side got so far.
    fn server_on_records(pending: usize) -> (Pair, [Vec<u8>; 2]) {
        let mut p = pair_with(shared_server(), fallback_client(), pending);
        let mut got = [Vec::new(), Vec::new()];
        exchange(&mut p, &mut got);
        p.server.enable_records();
        (p, got)
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::RngCore::fill_bytes(&mut rand::rngs::StdRng::seed_from_u64(seed), &mut v);
        v
    }

    /// Writes `data` from one side in pieces as the pending limit allows, exchanging as it goes.
    fn send_all(p: &mut Pair, from_client: bool, data: &[u8], got: &mut [Vec<u8>; 2]) {
        let mut off = 0;
        while off < data.len() {
            let link = if from_client {
                &mut p.client
            } else {
                &mut p.server
            };
            off += link.write_plaintext(&data[off..]).unwrap();
            exchange(p, got);
        }
    }

    /// Both ends switch to `record` after the handshake (once enabled), and a MiB each way
    /// arrives intact, with the state rustls reported kept.
    #[test]
    fn records_take_over_both_ends() {
        for provider_pref in [None, Some("chacha")] {
            let server = match provider_pref {
                None => shared_server(),
                Some(_) => {
                    let mut provider = chosen_provider().rustls();
                    provider
                        .cipher_suites
                        .retain(|s| s.suite() == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
                    let c = cert(LinkKeyAlg::EcdsaP256);
                    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pkcs8.to_vec()));
                    Arc::new(
                        ServerConfig::builder_with_provider(Arc::new(provider))
                            .with_protocol_versions(&[&rustls::version::TLS13])
                            .unwrap()
                            .with_no_client_auth()
                            .with_single_cert(vec![c.cert_der.clone()], key)
                            .unwrap(),
                    )
                }
            };
            let mut p = pair_with(server, fallback_client(), DEFAULT_PENDING_TLS_MAX_BYTES);
            let mut got = [Vec::new(), Vec::new()];
            // Plaintext before and across the switch.
            p.client.write_plaintext(b"before").unwrap();
            exchange(&mut p, &mut got);
            assert!(!p.client.records_active());
            let cert = p.client.peer_cert_der().map(<[u8]>::to_vec);
            let suite = p.client.cipher_suite();
            p.client.enable_records();
            p.server.enable_records();
            exchange(&mut p, &mut got);
            assert!(p.client.records_active() && p.server.records_active());
            assert_eq!(p.client.peer_cert_der().map(<[u8]>::to_vec), cert);
            assert_eq!(p.client.cipher_suite(), suite);
            assert_eq!(p.server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
            assert_eq!(
                p.client.auth3_exporter(&[0; 32]),
                Err(TlsLinkError::Local),
                "no exporter after the switch"
            );
            let up = random_bytes(1 << 20, 1);
            let down = random_bytes((1 << 20) + 17, 2);
            send_all(&mut p, true, &up, &mut got);
            send_all(&mut p, false, &down, &mut got);
            assert_eq!(got[1], [b"before".as_slice(), &up].concat());
            assert!(got[0] == down);
            // close_notify both ways.
            p.client.send_close();
            exchange(&mut p, &mut got);
            assert!(p.server.peer_closed());
            assert!(p.server.error().is_none());
        }
    }

    /// One end on `record`, the other still on rustls: the record layers interoperate, and a
    /// KeyUpdate from rustls (asking for ours in return) is followed.
    #[test]
    fn records_against_rustls_with_key_updates() {
        let (mut p, mut got) = server_on_records(DEFAULT_PENDING_TLS_MAX_BYTES);
        assert!(p.server.records_active());
        assert!(!p.client.records_active());
        let a = random_bytes(100_000, 3);
        send_all(&mut p, true, &a, &mut got);
        send_all(&mut p, false, &a, &mut got);
        for round in 0..3 {
            let Inner::Rustls(conn) = &mut p.client.inner else {
                panic!("client switched")
            };
            // rustls asks for our KeyUpdate too (update_requested).
            conn.refresh_traffic_keys().unwrap();
            let b = random_bytes(50_000, 10 + round);
            send_all(&mut p, true, &b, &mut got);
            send_all(&mut p, false, &b, &mut got);
        }
        assert_eq!(got[0].len(), 100_000 + 3 * 50_000);
        assert_eq!(got[0], got[1]);
        assert!(p.client.error().is_none() && p.server.error().is_none());
    }

    /// A peer that keeps asking for key updates without reading our answers is cut off once
    /// they fill the sending room, instead of growing our buffer.
    #[test]
    fn records_bound_key_update_answers() {
        let (mut p, _) = server_on_records(1024);
        assert!(p.server.records_active());
        let mut err = None;
        for _ in 0..1000 {
            let Inner::Rustls(conn) = &mut p.client.inner else {
                panic!("client switched")
            };
            conn.refresh_traffic_keys().unwrap();
            let mut wire = Vec::new();
            p.client.poll_tls(&mut wire, usize::MAX);
            if let Err(e) = p.server.handle_tls(&wire) {
                err = Some(e);
                break;
            }
            assert!(p.server.wants_tls_out());
        }
        assert_eq!(
            err,
            Some(TlsLinkError::Misbehaved(
                rustls::PeerMisbehaved::TooManyKeyUpdateRequests
            ))
        );
    }

    /// Near the confidentiality limit, `record` updates its own sending key; rustls follows.
    #[test]
    fn records_update_their_key_at_the_limit() {
        let (mut p, mut got) = server_on_records(DEFAULT_PENDING_TLS_MAX_BYTES);
        let Inner::Records(r) = &mut p.server.inner else {
            panic!("no switch")
        };
        r.set_limit_for_test(5);
        let data = random_bytes(200_000, 4);
        for (i, piece) in data.chunks(1000).enumerate() {
            // Half the pieces straight into the open record.
            match p
                .server
                .plaintext_writer(piece.len())
                .filter(|_| i % 2 == 0)
            {
                Some(w) => {
                    w.extend_from_slice(piece);
                    exchange(&mut p, &mut got);
                }
                None => send_all(&mut p, false, piece, &mut got),
            }
        }
        let Inner::Records(r) = &p.server.inner else {
            panic!("no switch")
        };
        assert!(r.generation_for_test() >= 40, "{}", r.generation_for_test());
        assert!(got[0] == data);
    }

    /// Cells written straight into the open record ([`TlsLink::plaintext_writer`]), mixed with
    /// `write_plaintext`, arrive intact through `handle_tls_into` with ciphertext cut at
    /// random points; records hold whole cells and are shared by the writes between two
    /// takes; the writer refuses once the pending limit is reached, until the peer reads.
    #[test]
    fn records_direct_writer_and_reader() {
        const CELL: usize = 514;
        let mut p = both_on_records();
        let mut got = [Vec::new(), Vec::new()];
        exchange(&mut p, &mut got);
        assert!(p.client.records_active() && p.server.records_active());

        // 40 cells through the writer, then one take: two records, 31 cells and 9.
        let cells = random_bytes(40 * CELL, 9);
        for cell in cells.chunks(CELL) {
            p.client
                .plaintext_writer(CELL)
                .unwrap()
                .extend_from_slice(cell);
        }
        let mut wire = Vec::new();
        p.client.poll_tls(&mut wire, usize::MAX);
        let mut lens = Vec::new();
        let mut rest = &wire[..];
        while let record::First::Whole(n) = record::first_record(rest) {
            lens.push(n - 5 - 1 - 16);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        assert_eq!(lens, [31 * CELL, 9 * CELL]);
        let mut inbox = Vec::new();
        assert_eq!(
            p.server.handle_tls_into(&wire, &mut inbox, 1 << 20),
            Ok(wire.len())
        );
        assert!(inbox == cells);

        // Random mixes, ciphertext taken and delivered in random pieces, a small inbox limit.
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let mut sent = Vec::new();
        let mut inbox = Vec::new();
        let mut received = Vec::new();
        let mut wire = Vec::new();
        for round in 0..400u64 {
            let data = random_bytes(rand::Rng::gen_range(&mut rng, 1..3 * CELL), round);
            if rand::Rng::gen_bool(&mut rng, 0.7) {
                if let Some(w) = p.client.plaintext_writer(data.len()) {
                    w.extend_from_slice(&data);
                    sent.extend_from_slice(&data);
                }
            } else {
                let n = p.client.write_plaintext(&data).unwrap();
                sent.extend_from_slice(&data[..n]);
            }
            let take = rand::Rng::gen_range(&mut rng, 0..20_000);
            p.client.poll_tls(&mut wire, take);
            let mut fed = 0;
            while fed < wire.len() {
                let n = p
                    .server
                    .handle_tls_into(&wire[fed..], &mut inbox, 4 * CELL)
                    .unwrap();
                assert!(n > 0, "an empty inbox takes at least a record or a cut one");
                fed += n;
                // The reader takes what it has, as the shard does after a batch.
                received.append(&mut inbox);
            }
            wire.clear();
        }
        p.client.poll_tls(&mut wire, usize::MAX);
        let n = p
            .server
            .handle_tls_into(&wire, &mut inbox, usize::MAX)
            .unwrap();
        assert_eq!(n, wire.len());
        received.append(&mut inbox);
        assert!(
            received == sent,
            "{} of {} bytes",
            received.len(),
            sent.len()
        );
        assert!(p.client.error().is_none() && p.server.error().is_none());

        // Backpressure: the writer stops at the pending limit and resumes once it is taken.
        let mut queued = 0;
        while p
            .client
            .plaintext_writer(CELL)
            .map(|w| w.extend_from_slice(&[1; CELL]))
            .is_some()
        {
            queued += 1;
            assert!(queued < 10_000, "no limit");
        }
        assert!(queued * CELL <= DEFAULT_PENDING_TLS_MAX_BYTES);
        assert!((queued + 1) * CELL + 256 > DEFAULT_PENDING_TLS_MAX_BYTES);
        wire.clear();
        p.client.poll_tls(&mut wire, usize::MAX);
        assert!(p.client.plaintext_writer(CELL).is_some());
    }

    /// Tampered, oversized and unexpected records end a `record` link with a typed error.
    #[test]
    fn records_reject_bad_input() {
        let setup = both_on_records;
        // A flipped bit anywhere in a record.
        for at in [0usize, 3, 5, 100, 516] {
            let mut p = setup();
            p.client.write_plaintext(&[7u8; 500]).unwrap();
            let mut wire = Vec::new();
            p.client.poll_tls(&mut wire, usize::MAX);
            wire[at] ^= 0x40;
            let e = p.server.handle_tls(&wire).unwrap_err();
            let want = match at {
                0 => TlsLinkError::UnexpectedMessage,
                3 => TlsLinkError::OversizedRecord,
                _ => TlsLinkError::Decrypt,
            };
            assert_eq!(e, want, "bit at {at}");
            assert_eq!(p.server.read_plaintext(&mut [0; 8]), Err(want));
        }
        // A partial record waits; the rest completes it.
        let mut p = setup();
        p.client.write_plaintext(b"split").unwrap();
        let mut wire = Vec::new();
        p.client.poll_tls(&mut wire, usize::MAX);
        for (a, b) in [(0, 3), (3, 10), (10, wire.len() - 1)] {
            assert_eq!(p.server.handle_tls(&wire[a..b]).unwrap(), b - a);
            let ready = p.server.read_plaintext(&mut [0u8; 8]).unwrap();
            assert_eq!(ready, 0, "nothing before the record is whole");
        }
        assert_eq!(p.server.handle_tls(&wire[wire.len() - 1..]).unwrap(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(p.server.read_plaintext(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"split");
        // EOF without close_notify.
        p.server.handle_eof();
        assert_eq!(
            p.server.read_plaintext(&mut buf),
            Err(TlsLinkError::UnexpectedEof)
        );
    }

    fn shared_server() -> Arc<ServerConfig> {
        static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
        CONFIG
            .get_or_init(|| server_config(&cert(LinkKeyAlg::EcdsaP256)).unwrap())
            .clone()
    }

    fn fallback_client() -> Arc<ClientConfig> {
        client_config().unwrap()
    }
}
