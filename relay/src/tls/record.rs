//! TLS 1.3 record protection done by chive itself once a link is established: RFC 8446 §5.2
//! ("Record Payload Protection"), §5.3 ("Per-Record Nonce"), §5.5 ("Limits on Key Usage"),
//! §4.6.3 ("Key and Initialization Vector Update") and §7.2/§7.3 ("Updating Traffic Secrets",
//! "Traffic Key Calculation").
//!
//! rustls's buffered connection copies every record three times on the way in (into its
//! deframer, into a freshly allocated plaintext chunk, out to the caller) and twice on the way
//! out (into a freshly allocated record, out to the caller); with records full of relay cells
//! that was about 16% of a relay's CPU per cell besides the AEAD itself. [`Records`] takes over
//! a link after rustls has finished the handshake (and after the Tor link handshake, which
//! needs rustls's exporter): received records are copied once into the caller's plaintext
//! buffer and opened in place there ([`Records::handle_tls_into`]), and plaintext is written
//! once into the ciphertext buffer (by the caller itself, [`Records::reserve_plaintext`]) and
//! sealed in place, which the caller can then take without a copy. Plaintext written between
//! two takes shares records (up to 16 KiB each), so small writes do not each cost a record.
//!
//! The keys and sequence numbers come from rustls (`dangerous_extract_secrets`); the
//! application traffic secrets, which key updates need, from a per-connection [`KeyLog`] that
//! keeps nothing else. Both must agree (checked at the switch). A peer's KeyUpdate is
//! followed (and answered when it asks); before a sending key reaches its suite's
//! confidentiality limit we update it ourselves. NewSessionTicket is ignored (resumption is
//! off). Any other handshake message, a record that fails to open, an oversized or malformed
//! record and any fatal alert end the link with a typed error.

use std::sync::Mutex;

use rustls::{CipherSuite, KeyLog};
use zeroize::Zeroizing;

use super::{Provider, TlsLinkError};

/// Most plaintext in one record (RFC 8446 §5.1).
pub(crate) const PLAINTEXT_MAX: usize = 1 << 14;
/// Most ciphertext in one record: plaintext, content type, padding and tag (§5.2).
const CIPHERTEXT_MAX: usize = PLAINTEXT_MAX + 256;
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;

/// Decrypted plaintext waiting to be read before [`Records::handle_tls`] stops opening records
/// (like rustls, about one record's worth).
const PLAINTEXT_PENDING_MAX: usize = PLAINTEXT_MAX;

/// The application traffic secrets of one connection, caught as rustls derives them (its
/// `KeyLog` hook, given a per-connection instance); nothing else is kept.
/// A traffic secret.
type Secret = Zeroizing<Vec<u8>>;

#[derive(Default)]
pub(crate) struct TrafficSecrets {
    /// The client's and the server's.
    inner: Mutex<(Option<Secret>, Option<Secret>)>,
}

impl std::fmt::Debug for TrafficSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecrets { .. }")
    }
}

impl KeyLog for TrafficSecrets {
    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Ok(mut g) = self.inner.lock() else { return };
        let slot = match label {
            "CLIENT_TRAFFIC_SECRET_0" => &mut g.0,
            "SERVER_TRAFFIC_SECRET_0" => &mut g.1,
            _ => return,
        };
        *slot = Some(Zeroizing::new(secret.to_vec()));
    }
}

impl TrafficSecrets {
    /// (client's, server's) secrets, once both were derived.
    fn take(&self) -> Option<(Secret, Secret)> {
        let mut g = self.inner.lock().ok()?;
        match (g.0.take(), g.1.take()) {
            (Some(c), Some(s)) => Some((c, s)),
            _ => None,
        }
    }
}

/// An AEAD key of the provider rustls used. (Two per link, so their size difference does not
/// matter.)
#[allow(clippy::large_enum_variant)]
enum Key {
    Ring(ring::aead::LessSafeKey),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl Key {
    fn new(provider: Provider, suite: CipherSuite, key: &[u8]) -> Option<Key> {
        macro_rules! make {
            ($aead:path, $variant:ident) => {{
                use $aead as aead;
                let alg = match suite {
                    CipherSuite::TLS13_AES_128_GCM_SHA256 => &aead::AES_128_GCM,
                    CipherSuite::TLS13_AES_256_GCM_SHA384 => &aead::AES_256_GCM,
                    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &aead::CHACHA20_POLY1305,
                    _ => return None,
                };
                let k = aead::UnboundKey::new(alg, key).ok()?;
                Some(Key::$variant(aead::LessSafeKey::new(k)))
            }};
        }
        match provider {
            Provider::Ring => make!(ring::aead, Ring),
            Provider::AwsLcRs => make!(aws_lc_rs::aead, AwsLc),
        }
    }

    /// Seals `in_out` in place; the tag.
    fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: [u8; HEADER_LEN],
        in_out: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        macro_rules! seal {
            ($aead:path, $k:expr) => {{
                use $aead as aead;
                let tag = $k
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        in_out,
                    )
                    .ok()?;
                tag.as_ref().try_into().ok()
            }};
        }
        match self {
            Key::Ring(k) => seal!(ring::aead, k),
            Key::AwsLc(k) => seal!(aws_lc_rs::aead, k),
        }
    }

    /// Opens ciphertext-and-tag `in_out` in place; the plaintext length.
    fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: [u8; HEADER_LEN],
        in_out: &mut [u8],
    ) -> Option<usize> {
        macro_rules! open {
            ($aead:path, $k:expr) => {{
                use $aead as aead;
                $k.open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    in_out,
                )
                .ok()
                .map(|p| p.len())
            }};
        }
        match self {
            Key::Ring(k) => open!(ring::aead, k),
            Key::AwsLc(k) => open!(aws_lc_rs::aead, k),
        }
    }
}

/// One direction's keys: the traffic secret (for the next update), the AEAD key, the static
/// IV and the record sequence number.
struct Direction {
    secret: Zeroizing<Vec<u8>>,
    key: Key,
    iv: Zeroizing<[u8; NONCE_LEN]>,
    seq: u64,
}

impl Direction {
    /// Keys from `secret` (§7.3) at sequence number `seq`.
    fn new(suite: Suite, secret: Zeroizing<Vec<u8>>, seq: u64) -> Option<Direction> {
        let key = expand_label(suite.hkdf, &secret, b"key", suite.key_len)?;
        let iv_bytes = expand_label(suite.hkdf, &secret, b"iv", NONCE_LEN)?;
        let mut iv = Zeroizing::new([0u8; NONCE_LEN]);
        iv.copy_from_slice(&iv_bytes);
        Some(Direction {
            key: Key::new(suite.provider, suite.id, &key)?,
            secret,
            iv,
            seq,
        })
    }

    /// The next generation of keys (§7.2), sequence number 0.
    fn updated(&self, suite: Suite) -> Option<Direction> {
        let next = expand_label(suite.hkdf, &self.secret, b"traffic upd", self.secret.len())?;
        Direction::new(suite, next, 0)
    }

    /// §5.3: the IV XOR the sequence number, left-padded.
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut n = *self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1).
fn expand_label(
    alg: ring::hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    len: usize,
) -> Option<Zeroizing<Vec<u8>>> {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let out_len = u16::try_from(len).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    let prk = ring::hkdf::Prk::new_less_safe(alg, secret);
    let okm = prk.expand(&info, Len(len)).ok()?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    okm.fill(&mut out).ok()?;
    Some(out)
}

/// What the negotiated suite needs here.
#[derive(Clone, Copy)]
struct Suite {
    id: CipherSuite,
    provider: Provider,
    hkdf: ring::hkdf::Algorithm,
    key_len: usize,
    /// Records one key may protect (rustls's figure for the suite, from §5.5).
    limit: u64,
}

impl Suite {
    fn new(id: CipherSuite, provider: Provider, limit: u64) -> Option<Suite> {
        let (hkdf, key_len) = match id {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => (ring::hkdf::HKDF_SHA256, 16),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => (ring::hkdf::HKDF_SHA384, 32),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => (ring::hkdf::HKDF_SHA256, 32),
            _ => return None,
        };
        Some(Suite {
            id,
            provider,
            hkdf,
            key_len,
            limit,
        })
    }
}

/// Where the keys of a link come from when [`Records`] takes over.
pub(crate) struct Handover {
    pub(crate) suite: CipherSuite,
    pub(crate) provider: Provider,
    pub(crate) confidentiality_limit: u64,
    pub(crate) is_client: bool,
    /// rustls's sequence numbers and keys (`dangerous_extract_secrets`).
    pub(crate) tx: (u64, Zeroizing<Vec<u8>>, [u8; NONCE_LEN]),
    pub(crate) rx: (u64, Zeroizing<Vec<u8>>, [u8; NONCE_LEN]),
}

/// A link's TLS 1.3 records after the handshake: see the module documentation.
pub(crate) struct Records {
    suite: Suite,
    tx: Direction,
    rx: Direction,
    /// Opened plaintext; `plain[plain_off..]` is unread.
    plain: Vec<u8>,
    plain_off: usize,
    /// Sealed records, then the open one; `out[out_off..]` is unsent.
    out: Vec<u8>,
    out_off: usize,
    /// Where the open application-data record's header is reserved in `out`: plaintext is
    /// appended behind it and sealed in place when the record is full, when another record
    /// must follow, or when the ciphertext is taken.
    open: Option<usize>,
    /// Most ciphertext [`Records::write_plaintext`] lets wait.
    pending_max: usize,
    peer_closed: bool,
    close_sent: bool,
    #[cfg(test)]
    tx_generation: u64,
}

impl Records {
    /// Takes over from rustls with `h`'s keys; `secrets` gives the traffic secrets the keys
    /// came from. `None` if the suite is not one we protect ourselves, or if the secrets do
    /// not give rustls's keys (a key update happened during the handshake phase).
    pub(crate) fn new(
        h: Handover,
        secrets: &TrafficSecrets,
        pending_max: usize,
    ) -> Option<Records> {
        let suite = Suite::new(h.suite, h.provider, h.confidentiality_limit)?;
        let (client, server) = secrets.take()?;
        let (tx_secret, rx_secret) = if h.is_client {
            (client, server)
        } else {
            (server, client)
        };
        // The keys rustls used must be the ones the caught secrets give.
        let check = |secret: &[u8], key: &[u8], iv: &[u8; NONCE_LEN]| {
            expand_label(suite.hkdf, secret, b"key", suite.key_len).is_some_and(|k| *k == key)
                && expand_label(suite.hkdf, secret, b"iv", NONCE_LEN).is_some_and(|v| *v == iv[..])
        };
        if !check(&tx_secret, &h.tx.1, &h.tx.2) || !check(&rx_secret, &h.rx.1, &h.rx.2) {
            return None;
        }
        Some(Records {
            tx: Direction::new(suite, tx_secret, h.tx.0)?,
            rx: Direction::new(suite, rx_secret, h.rx.0)?,
            suite,
            plain: Vec::new(),
            plain_off: 0,
            out: Vec::new(),
            out_off: 0,
            open: None,
            pending_max,
            peer_closed: false,
            close_sent: false,
            #[cfg(test)]
            tx_generation: 0,
        })
    }

    /// Opens every complete record of `input` while the unread plaintext is under one record;
    /// returns the bytes consumed (whole records). After the peer's close_notify the rest of
    /// the input is discarded.
    pub(crate) fn handle_tls(&mut self, input: &[u8]) -> Result<usize, TlsLinkError> {
        if self.plain_off == self.plain.len() {
            self.plain.clear();
            self.plain_off = 0;
        }
        let limit = self.plain_off + PLAINTEXT_PENDING_MAX;
        let mut plain = std::mem::take(&mut self.plain);
        let r = self.open_records(input, &mut plain, limit);
        self.plain = plain;
        r
    }

    /// As [`Records::handle_tls`], but the plaintext goes straight onto the end of `out` (after
    /// any plaintext opened earlier and not yet read), while `out` holds under `limit` bytes:
    /// the caller's buffer is the only copy.
    pub(crate) fn handle_tls_into(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, TlsLinkError> {
        if !self.plaintext().is_empty() {
            let n = self.plaintext().len().min(limit.saturating_sub(out.len()));
            out.extend_from_slice(&self.plaintext()[..n]);
            self.consume(n);
            if !self.plaintext().is_empty() {
                return Ok(0);
            }
        }
        self.open_records(input, out, limit)
    }

    fn open_records(
        &mut self,
        input: &[u8],
        plain: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, TlsLinkError> {
        let mut off = 0;
        while !self.peer_closed && plain.len() < limit {
            let Some(h) = input.get(off..off + HEADER_LEN) else {
                break;
            };
            let header: [u8; HEADER_LEN] = [h[0], h[1], h[2], h[3], h[4]];
            if header[0] != CONTENT_APPLICATION_DATA || header[1..3] != [3, 3] {
                return Err(TlsLinkError::UnexpectedMessage);
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len > CIPHERTEXT_MAX {
                return Err(TlsLinkError::OversizedRecord);
            }
            let Some(body) = input.get(off + HEADER_LEN..off + HEADER_LEN + len) else {
                break;
            };
            off += HEADER_LEN + len;
            self.open_record(header, body, plain)?;
        }
        if self.peer_closed {
            return Ok(input.len());
        }
        Ok(off)
    }

    /// Opens one record onto the end of `plain`; what is not application data is handled and
    /// taken off again.
    fn open_record(
        &mut self,
        header: [u8; HEADER_LEN],
        body: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), TlsLinkError> {
        let start = plain.len();
        plain.extend_from_slice(body);
        let nonce = self.rx.nonce();
        let Some(n) = self.rx.key.open(nonce, header, &mut plain[start..]) else {
            plain.truncate(start);
            return Err(TlsLinkError::Decrypt);
        };
        self.rx.seq = self.rx.seq.checked_add(1).ok_or(TlsLinkError::Local)?;
        // Zero padding, then the real content type (§5.4).
        let inner = &plain[start..start + n];
        let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
            plain.truncate(start);
            return Err(TlsLinkError::UnexpectedMessage);
        };
        let content_type = inner[type_at];
        plain.truncate(start + type_at);
        if content_type == CONTENT_APPLICATION_DATA {
            return Ok(());
        }
        // Not plaintext for the caller: handle it and drop it.
        let msg: Vec<u8> = plain.drain(start..).collect();
        match content_type {
            CONTENT_ALERT => match msg.as_slice() {
                [_, ALERT_CLOSE_NOTIFY] => {
                    self.peer_closed = true;
                    Ok(())
                }
                [_, ALERT_USER_CANCELED] => Ok(()),
                [_, d] => Err(TlsLinkError::AlertReceived(rustls::AlertDescription::from(
                    *d,
                ))),
                _ => Err(TlsLinkError::UnexpectedMessage),
            },
            CONTENT_HANDSHAKE => self.handshake_messages(&msg),
            _ => Err(TlsLinkError::UnexpectedMessage),
        }
    }

    /// Post-handshake messages (§4.6): ticket ignored, key update followed. A message split
    /// across records is refused (neither rustls nor OpenSSL splits these short ones).
    fn handshake_messages(&mut self, mut msgs: &[u8]) -> Result<(), TlsLinkError> {
        while let [typ, a, b, c, rest @ ..] = msgs {
            let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            let body = rest.get(..len).ok_or(TlsLinkError::UnexpectedMessage)?;
            msgs = &rest[len..];
            match (*typ, body) {
                (HANDSHAKE_NEW_SESSION_TICKET, _) => {}
                (HANDSHAKE_KEY_UPDATE, [requested @ (0 | 1)]) => {
                    self.rx = self.rx.updated(self.suite).ok_or(TlsLinkError::Local)?;
                    if *requested == 1 {
                        // Our answers queue only while we have sending room: a peer that asks
                        // for updates without reading cannot grow our buffer.
                        if self.out.len() - self.out_off >= self.pending_max {
                            return Err(TlsLinkError::Misbehaved(
                                rustls::PeerMisbehaved::TooManyKeyUpdateRequests,
                            ));
                        }
                        self.update_tx(false)?;
                    }
                }
                _ => return Err(TlsLinkError::UnexpectedMessage),
            }
        }
        if msgs.is_empty() {
            Ok(())
        } else {
            Err(TlsLinkError::UnexpectedMessage)
        }
    }

    /// Sends KeyUpdate under the current key, then switches to the next one.
    fn update_tx(&mut self, request_peer: bool) -> Result<(), TlsLinkError> {
        let msg = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)];
        self.seal_record(CONTENT_HANDSHAKE, &msg)?;
        self.tx = self.tx.updated(self.suite).ok_or(TlsLinkError::Local)?;
        #[cfg(test)]
        {
            self.tx_generation += 1;
        }
        Ok(())
    }

    /// Seals `payload` as one record of `content_type`, after the open record.
    fn seal_record(&mut self, content_type: u8, payload: &[u8]) -> Result<(), TlsLinkError> {
        self.close_open()?;
        let start = self.out.len();
        self.out.extend_from_slice(&[0; HEADER_LEN]);
        self.out.extend_from_slice(payload);
        self.finish_record(start, content_type)
    }

    /// Seals the record whose header is reserved at `out[start..]` and whose plaintext runs to
    /// the end of `out`.
    fn finish_record(&mut self, start: usize, content_type: u8) -> Result<(), TlsLinkError> {
        let plain_len = self.out.len() - start - HEADER_LEN;
        if plain_len > PLAINTEXT_MAX {
            self.out.truncate(start);
            return Err(TlsLinkError::Local);
        }
        let len16 = u16::try_from(plain_len + 1 + TAG_LEN).map_err(|_| TlsLinkError::Local)?;
        let [l0, l1] = len16.to_be_bytes();
        let header = [CONTENT_APPLICATION_DATA, 3, 3, l0, l1];
        self.out[start..start + HEADER_LEN].copy_from_slice(&header);
        self.out.push(content_type);
        let nonce = self.tx.nonce();
        let Some(tag) = self
            .tx
            .key
            .seal(nonce, header, &mut self.out[start + HEADER_LEN..])
        else {
            self.out.truncate(start);
            return Err(TlsLinkError::Local);
        };
        self.out.extend_from_slice(&tag);
        self.tx.seq = self.tx.seq.checked_add(1).ok_or(TlsLinkError::Local)?;
        Ok(())
    }

    /// Room left in the open application-data record, opening one (after a key update if the
    /// key is near its limit) when there is none or it is full.
    fn open_space(&mut self) -> Result<usize, TlsLinkError> {
        if let Some(start) = self.open {
            let used = self.out.len() - start - HEADER_LEN;
            if used < PLAINTEXT_MAX {
                return Ok(PLAINTEXT_MAX - used);
            }
            self.close_open()?;
        }
        // Leave room for this record and the KeyUpdate record itself under the old key.
        if self.tx.seq.saturating_add(2) >= self.suite.limit {
            self.update_tx(false)?;
        }
        self.open = Some(self.out.len());
        self.out.extend_from_slice(&[0; HEADER_LEN]);
        Ok(PLAINTEXT_MAX)
    }

    /// Seals the open record, if any (an empty one is dropped).
    fn close_open(&mut self) -> Result<(), TlsLinkError> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        if self.out.len() == start + HEADER_LEN {
            self.out.truncate(start);
            return Ok(());
        }
        self.finish_record(start, CONTENT_APPLICATION_DATA)
    }

    /// Ciphertext and open plaintext waiting to be taken.
    fn pending(&self) -> usize {
        self.out.len() - self.out_off
    }

    /// Takes as much of `data` as fits under the pending limit into the open record (records of
    /// at most 16 KiB, sealed when full or when the ciphertext is taken).
    pub(crate) fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, TlsLinkError> {
        if self.close_sent {
            return Ok(0);
        }
        let n = data
            .len()
            .min(self.pending_max.saturating_sub(self.pending()));
        let mut rest = &data[..n];
        while !rest.is_empty() {
            let k = rest.len().min(self.open_space()?);
            self.out.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
        }
        Ok(n)
    }

    /// Makes room for `need` bytes of plaintext at the end of the open record, if they fit in
    /// one record and under the pending limit: then the caller appends them (at most `need`)
    /// to [`Records::open_record_buf`], with no copy on our side.
    pub(crate) fn reserve_plaintext(&mut self, need: usize) -> Result<bool, TlsLinkError> {
        if self.close_sent
            || need > PLAINTEXT_MAX
            || self.pending().saturating_add(need) > self.pending_max
        {
            return Ok(false);
        }
        if self.open_space()? < need {
            self.close_open()?;
            self.open_space()?;
        }
        Ok(true)
    }

    /// The buffer whose tail is the open record's plaintext (see
    /// [`Records::reserve_plaintext`]).
    pub(crate) fn open_record_buf(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Queues our close_notify.
    pub(crate) fn send_close(&mut self) -> Result<(), TlsLinkError> {
        if !std::mem::replace(&mut self.close_sent, true) {
            self.seal_record(CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY])?;
        }
        Ok(())
    }

    /// Appends up to `max` bytes of sealed records to `out`: handed over whole (no copy) when
    /// `out` is empty and everything fits.
    pub(crate) fn poll_tls(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, TlsLinkError> {
        self.close_open()?;
        let pending = self.out.len() - self.out_off;
        if pending == 0 {
            return Ok(0);
        }
        if out.is_empty() && self.out_off == 0 && pending <= max {
            std::mem::swap(out, &mut self.out);
            self.out.clear();
            return Ok(pending);
        }
        let n = pending.min(max);
        out.extend_from_slice(&self.out[self.out_off..self.out_off + n]);
        self.out_off += n;
        if self.out_off == self.out.len() {
            self.out.clear();
            self.out_off = 0;
        }
        Ok(n)
    }

    pub(crate) fn wants_tls_out(&self) -> bool {
        // An open record that is still empty is nothing to send.
        self.out_off < self.out.len()
            && !(self.open == Some(self.out_off) && self.out.len() == self.out_off + HEADER_LEN)
    }

    /// Unread plaintext.
    pub(crate) fn plaintext(&self) -> &[u8] {
        &self.plain[self.plain_off..]
    }

    /// Marks `n` bytes of [`Records::plaintext`] read.
    pub(crate) fn consume(&mut self, n: usize) {
        self.plain_off = (self.plain_off + n).min(self.plain.len());
        if self.plain_off == self.plain.len() {
            self.plain.clear();
            self.plain_off = 0;
        }
    }

    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    pub(crate) fn suite(&self) -> CipherSuite {
        self.suite.id
    }

    #[cfg(test)]
    pub(crate) fn set_limit_for_test(&mut self, limit: u64) {
        self.suite.limit = limit;
    }

    /// How many times our sending key was updated.
    #[cfg(test)]
    pub(crate) fn generation_for_test(&self) -> u64 {
        self.tx_generation
    }
}

/// The first record of some input, by its header alone.
pub(crate) enum First {
    /// Complete, this many bytes with its header.
    Whole(usize),
    /// Not all here yet (or no input).
    Partial,
    /// Its header is not a record's (content type, version) or claims more than any record
    /// may hold.
    Invalid,
}

/// Bytes still missing from the first record of `input` (or from its header), when it is
/// [`First::Partial`].
pub(crate) fn missing(input: &[u8]) -> usize {
    match input.get(..HEADER_LEN) {
        Some(h) => {
            (HEADER_LEN + usize::from(u16::from_be_bytes([h[3], h[4]]))).saturating_sub(input.len())
        }
        None => HEADER_LEN - input.len(),
    }
}

/// Where the first record of `input` ends.
pub(crate) fn first_record(input: &[u8]) -> First {
    let Some(h) = input.get(..HEADER_LEN) else {
        return First::Partial;
    };
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    // rustls accepts a little more during the handshake (and refuses it itself).
    if !(20..=CONTENT_APPLICATION_DATA).contains(&h[0]) || h[1] != 3 || len > CIPHERTEXT_MAX + 2048
    {
        return First::Invalid;
    }
    if input.len() < HEADER_LEN + len {
        First::Partial
    } else {
        First::Whole(HEADER_LEN + len)
    }
}
