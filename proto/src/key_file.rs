//! C tor's data-directory key files, read and written byte for byte as tor 0.4.9 does.
//!
//! The files and their roles are listed in tor(1), section "FILES" (`DataDirectory/keys/*`);
//! the keys themselves are described in
//! [tor-spec §1.1](https://spec.torproject.org/tor-spec/relay-keys.html) and the signing
//! certificate in [cert-spec §2.1](https://spec.torproject.org/cert-spec.html).
//!
//! | file | contents |
//! |------|----------|
//! | `keys/secret_id_key` | PEM `RSA PRIVATE KEY` (PKCS#1 DER), 64-column base64, LF, then a NUL |
//! | `keys/ed25519_master_id_secret_key` | header `== ed25519v1-secret: type0 ==`, 64-byte expanded key |
//! | `keys/ed25519_master_id_public_key` | header `== ed25519v1-public: type0 ==`, 32-byte key |
//! | `keys/ed25519_signing_secret_key` | header `== ed25519v1-secret: type4 ==`, 64-byte expanded key |
//! | `keys/ed25519_signing_cert` | header `== ed25519v1-cert: type4 ==`, the encoded certificate |
//! | `keys/secret_onion_key_ntor` | header `== c25519v1: onion ==`, 32-byte secret then 32-byte public |
//! | `fingerprint` | `nickname HEXFINGERPRINT\n` |
//! | `fingerprint-ed25519` | `nickname base64-ed25519-identity\n` |
//!
//! A "tagged" header is the text `== TYPE: TAG ==` padded with NUL bytes to 32 bytes; the tag of an
//! ed25519 key file is `type` followed by the certificate type the key is used for (0 for the
//! master identity, 4 for the signing key). These were checked against files written by tor 0.4.9.
//!
//! This is the one module of `proto` that touches the file system. Every file's bytes are parsed
//! and encoded by pure functions (`parse_*`, `encode_*`), which never panic and are what the fuzz
//! targets call; the file functions only move bytes. Files are written atomically (temporary file,
//! `fsync`, rename) with mode 0600 inside directories of mode 0700, because C tor refuses a data
//! directory that others can read.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rand_core::CryptoRngCore;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _, LineEnding};
use rsa::RsaPrivateKey;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::ids::{Ed25519Identity, RsaIdentity};
use crate::keys::{
    make_signing_cert, signing_cert_is_usable, Ed25519Keypair, KeyError, NtorOnionKeypair,
    RelayKeys, RsaIdentityKeypair, SIGNING_KEY_LIFETIME_SECS,
};

/// Subdirectory of the data directory that holds the keys.
pub const KEYS_DIR: &str = "keys";
/// RSA identity key file name (in [`KEYS_DIR`]).
pub const SECRET_ID_KEY: &str = "secret_id_key";
/// ed25519 master identity secret key file name.
pub const ED25519_MASTER_ID_SECRET_KEY: &str = "ed25519_master_id_secret_key";
/// ed25519 master identity public key file name.
pub const ED25519_MASTER_ID_PUBLIC_KEY: &str = "ed25519_master_id_public_key";
/// ed25519 signing secret key file name.
pub const ED25519_SIGNING_SECRET_KEY: &str = "ed25519_signing_secret_key";
/// ed25519 signing certificate file name.
pub const ED25519_SIGNING_CERT: &str = "ed25519_signing_cert";
/// ntor onion key file name.
pub const SECRET_ONION_KEY_NTOR: &str = "secret_onion_key_ntor";
/// Legacy TAP onion key file name: an RSA-1024 key in the same format as [`SECRET_ID_KEY`]
/// ([`parse_rsa_secret_key`], [`encode_rsa_secret_key`]). C tor 0.4.9 still creates it;
/// [`RelayKeys`] does not manage it.
pub const SECRET_ONION_KEY: &str = "secret_onion_key";
/// RSA fingerprint file name (in the data directory itself).
pub const FINGERPRINT: &str = "fingerprint";
/// ed25519 fingerprint file name (in the data directory itself).
pub const FINGERPRINT_ED25519: &str = "fingerprint-ed25519";

/// Tag of the master identity key files: the key certifies with cert type 0 (none).
pub const TAG_MASTER: &str = "type0";
/// Tag of the signing key and certificate files: certificate type 4, "ed25519 signing key with
/// an identity key" (cert-spec appendix A.1).
pub const TAG_SIGNING: &str = "type4";

const TYPE_ED25519_SECRET: &str = "ed25519v1-secret";
const TYPE_ED25519_PUBLIC: &str = "ed25519v1-public";
const TYPE_ED25519_CERT: &str = "ed25519v1-cert";
const TYPE_CURVE25519: &str = "c25519v1";
const TAG_ONION: &str = "onion";

/// Length of the NUL-padded text header of a tagged file.
const HEADER_LEN: usize = 32;

/// Key files are tiny; anything much bigger is not one of ours and is not read whole.
const MAX_FILE_LEN: u64 = 16 * 1024;

/// Longest nickname tor accepts (dir-spec §2.1.1, `nickname`).
const MAX_NICKNAME_LEN: usize = 19;

/// What is wrong with the bytes of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Shorter than the 32-byte header.
    #[error("file shorter than its header")]
    TooShort,
    /// Far longer than any key file.
    #[error("file too long for a key file")]
    TooLong,
    /// The header is not `== TYPE: TAG ==` followed by NULs.
    #[error("malformed file header")]
    BadHeader,
    /// The header names another kind of file.
    #[error("file header has the wrong type")]
    WrongType,
    /// The header has the right type but the wrong tag (e.g. a signing key where the master
    /// key belongs).
    #[error("file header has the wrong tag")]
    WrongTag,
    /// The body after the header has the wrong length.
    #[error("file body is {found} bytes, expected {expected}")]
    WrongLength {
        /// Length the format needs.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A stored public key is not the one its secret key gives.
    #[error("public key does not match the secret key")]
    PublicKeyMismatch,
    /// 32 bytes that are not an ed25519 point.
    #[error("invalid ed25519 public key")]
    BadPublicKey,
    /// Not PEM-armoured PKCS#1 `RSA PRIVATE KEY`, or the key inside is inconsistent.
    #[error("not a PEM RSA private key")]
    BadPem,
    /// A valid RSA key that Tor cannot use as an identity.
    #[error("unusable RSA key: {0}")]
    Rsa(KeyError),
    /// A fingerprint file that is not `nickname ID\n`.
    #[error("malformed fingerprint file")]
    BadFingerprintFile,
    /// A nickname that is not 1 to 19 ASCII letters and digits.
    #[error("invalid nickname")]
    BadNickname,
}

/// Why loading or storing the keys of a data directory failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS reported.
        source: io::Error,
    },
    /// A key file is malformed.
    #[error("{path}: {error}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: KeyFileError,
    },
    /// The master identity public key is there but not its secret key (an offline master key,
    /// which chive does not support yet). Generating a new one would silently change identity.
    #[error("{0}: ed25519 master public key present but its secret key is missing")]
    MasterSecretMissing(PathBuf),
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Key(#[from] KeyError),
}

// ---------------------------------------------------------------------------------------------
// Pure parsers and encoders.

/// Splits a tagged file into its tag and body, checking the header's type.
///
/// Fuzz entry point for the header format.
pub fn parse_tagged<'a>(
    bytes: &'a [u8],
    file_type: &str,
) -> Result<(&'a str, &'a [u8]), KeyFileError> {
    let (header, body) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(KeyFileError::TooShort)?;
    let text_len = header
        .iter()
        .position(|b| *b == 0)
        .ok_or(KeyFileError::BadHeader)?;
    let (text, padding) = header.split_at(text_len);
    if padding.iter().any(|b| *b != 0) {
        return Err(KeyFileError::BadHeader);
    }
    let text = std::str::from_utf8(text).map_err(|_| KeyFileError::BadHeader)?;
    let (found_type, tag) = text
        .strip_prefix("== ")
        .and_then(|t| t.strip_suffix(" =="))
        .and_then(|t| t.split_once(": "))
        .ok_or(KeyFileError::BadHeader)?;
    if found_type != file_type {
        return Err(KeyFileError::WrongType);
    }
    Ok((tag, body))
}

/// Parses a tagged file whose tag and body length are fixed.
fn parse_tagged_exact<'a, const N: usize>(
    bytes: &'a [u8],
    file_type: &str,
    expected_tag: &str,
) -> Result<&'a [u8; N], KeyFileError> {
    let (tag, body) = parse_tagged(bytes, file_type)?;
    if tag != expected_tag {
        return Err(KeyFileError::WrongTag);
    }
    body.try_into().map_err(|_| KeyFileError::WrongLength {
        expected: N,
        found: body.len(),
    })
}

/// Writes a tagged file: the NUL-padded header, then `body`.
///
/// `file_type` and `tag` are our constants, short enough to leave room for the terminating NUL;
/// a longer header would be cut to 31 bytes, as C tor's `snprintf` into 32 bytes would.
pub fn encode_tagged(file_type: &str, tag: &str, body: &[u8], out: &mut Vec<u8>) {
    let text = format!("== {file_type}: {tag} ==");
    let mut header = [0u8; HEADER_LEN];
    let n = text.len().min(HEADER_LEN - 1);
    header[..n].copy_from_slice(&text.as_bytes()[..n]);
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
}

/// Parses an ed25519 secret key file (`ed25519_master_id_secret_key` with [`TAG_MASTER`],
/// `ed25519_signing_secret_key` with [`TAG_SIGNING`]).
pub fn parse_ed25519_secret_key(bytes: &[u8], tag: &str) -> Result<Ed25519Keypair, KeyFileError> {
    let body = parse_tagged_exact::<64>(bytes, TYPE_ED25519_SECRET, tag)?;
    Ok(Ed25519Keypair::from_expanded_bytes(body))
}

/// Encodes an ed25519 secret key file.
pub fn encode_ed25519_secret_key(key: &Ed25519Keypair, tag: &str, out: &mut Vec<u8>) {
    encode_tagged(TYPE_ED25519_SECRET, tag, key.expanded_bytes(), out);
}

/// Parses an ed25519 public key file (`ed25519_master_id_public_key`, tag [`TAG_MASTER`]).
pub fn parse_ed25519_public_key(bytes: &[u8], tag: &str) -> Result<VerifyingKey, KeyFileError> {
    let body = parse_tagged_exact::<32>(bytes, TYPE_ED25519_PUBLIC, tag)?;
    VerifyingKey::from_bytes(body).map_err(|_| KeyFileError::BadPublicKey)
}

/// Encodes an ed25519 public key file.
pub fn encode_ed25519_public_key(key: &VerifyingKey, tag: &str, out: &mut Vec<u8>) {
    encode_tagged(TYPE_ED25519_PUBLIC, tag, key.as_bytes(), out);
}

/// Parses an ed25519 certificate file (`ed25519_signing_cert`, tag [`TAG_SIGNING`]),
/// returning the encoded certificate; [`signing_cert_is_usable`] checks its contents.
pub fn parse_ed25519_cert_file<'a>(bytes: &'a [u8], tag: &str) -> Result<&'a [u8], KeyFileError> {
    let (found, body) = parse_tagged(bytes, TYPE_ED25519_CERT)?;
    if found != tag {
        return Err(KeyFileError::WrongTag);
    }
    Ok(body)
}

/// Encodes an ed25519 certificate file.
pub fn encode_ed25519_cert_file(cert: &[u8], tag: &str, out: &mut Vec<u8>) {
    encode_tagged(TYPE_ED25519_CERT, tag, cert, out);
}

/// Parses `secret_onion_key_ntor`: 32 secret bytes then the 32-byte public key, which must be
/// the one the secret gives.
pub fn parse_ntor_secret_key(bytes: &[u8]) -> Result<NtorOnionKeypair, KeyFileError> {
    let body = parse_tagged_exact::<64>(bytes, TYPE_CURVE25519, TAG_ONION)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&body[..32]);
    let key = NtorOnionKeypair::from_secret_bytes(*secret);
    if key.public().as_bytes()[..] != body[32..] {
        return Err(KeyFileError::PublicKeyMismatch);
    }
    Ok(key)
}

/// Encodes `secret_onion_key_ntor`.
pub fn encode_ntor_secret_key(key: &NtorOnionKeypair, out: &mut Vec<u8>) {
    let mut body = Zeroizing::new([0u8; 64]);
    body[..32].copy_from_slice(&key.secret().to_bytes());
    body[32..].copy_from_slice(key.public().as_bytes());
    encode_tagged(TYPE_CURVE25519, TAG_ONION, body.as_ref(), out);
}

/// Parses `secret_id_key` (or the TAP `secret_onion_key`): a PEM `RSA PRIVATE KEY` holding a
/// 1024-bit key with e = 65537.
pub fn parse_rsa_secret_key(bytes: &[u8]) -> Result<RsaIdentityKeypair, KeyFileError> {
    // C tor writes the PEM text with its terminating NUL; a file without one is fine too.
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| KeyFileError::BadPem)?;
    let key = RsaPrivateKey::from_pkcs1_pem(text).map_err(|_| KeyFileError::BadPem)?;
    RsaIdentityKeypair::from_private_key(key).map_err(KeyFileError::Rsa)
}

/// Encodes `secret_id_key` as C tor writes it: PKCS#1 DER in PEM (`RSA PRIVATE KEY`, base64
/// in 64-column lines, LF line ends) followed by one NUL byte, because C tor writes the PEM
/// string together with its C terminator.
pub fn encode_rsa_secret_key(key: &RsaIdentityKeypair, out: &mut Vec<u8>) {
    // Encoding a key we hold cannot fail: the rsa crate only errors on multi-prime keys, which
    // `RsaIdentityKeypair` never holds. Should it ever fail, an empty file fails to load loudly.
    if let Ok(pem) = key.private_key().to_pkcs1_pem(LineEnding::LF) {
        out.extend_from_slice(pem.as_bytes());
        out.push(0);
    }
}

/// Whether `nickname` is one tor accepts: 1 to 19 ASCII letters and digits.
pub fn is_valid_nickname(nickname: &str) -> bool {
    (1..=MAX_NICKNAME_LEN).contains(&nickname.len())
        && nickname.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits a fingerprint file's single line `nickname ID\n`.
fn parse_fingerprint_line(bytes: &[u8]) -> Result<(&str, &str), KeyFileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| KeyFileError::BadFingerprintFile)?;
    let line = text
        .strip_suffix('\n')
        .ok_or(KeyFileError::BadFingerprintFile)?;
    let (nickname, id) = line
        .split_once(' ')
        .ok_or(KeyFileError::BadFingerprintFile)?;
    if !is_valid_nickname(nickname) {
        return Err(KeyFileError::BadNickname);
    }
    Ok((nickname, id))
}

/// Parses the `fingerprint` file: nickname and 40 uppercase or lowercase hex digits.
pub fn parse_fingerprint_file(bytes: &[u8]) -> Result<(&str, RsaIdentity), KeyFileError> {
    let (nickname, id) = parse_fingerprint_line(bytes)?;
    if id.len() != 2 * RsaIdentity::LEN {
        return Err(KeyFileError::BadFingerprintFile);
    }
    let id = RsaIdentity::from_hex(id).ok_or(KeyFileError::BadFingerprintFile)?;
    Ok((nickname, id))
}

/// Encodes the `fingerprint` file.
pub fn encode_fingerprint_file(
    nickname: &str,
    id: &RsaIdentity,
    out: &mut Vec<u8>,
) -> Result<(), KeyFileError> {
    if !is_valid_nickname(nickname) {
        return Err(KeyFileError::BadNickname);
    }
    out.extend_from_slice(format!("{nickname} {}\n", id.hex()).as_bytes());
    Ok(())
}

/// Parses the `fingerprint-ed25519` file: nickname and 43 unpadded base64 characters.
pub fn parse_fingerprint_ed25519_file(
    bytes: &[u8],
) -> Result<(&str, Ed25519Identity), KeyFileError> {
    let (nickname, id) = parse_fingerprint_line(bytes)?;
    if id.len() != 43 {
        return Err(KeyFileError::BadFingerprintFile);
    }
    let id = Ed25519Identity::from_base64(id).ok_or(KeyFileError::BadFingerprintFile)?;
    Ok((nickname, id))
}

/// Encodes the `fingerprint-ed25519` file.
pub fn encode_fingerprint_ed25519_file(
    nickname: &str,
    id: &Ed25519Identity,
    out: &mut Vec<u8>,
) -> Result<(), KeyFileError> {
    if !is_valid_nickname(nickname) {
        return Err(KeyFileError::BadNickname);
    }
    out.extend_from_slice(format!("{nickname} {}\n", id.base64()).as_bytes());
    Ok(())
}

/// Runs every parser over `data`; for fuzz targets, which must only check it does not panic.
pub fn fuzz_parse_all(data: &[u8]) {
    let _ = parse_tagged(data, TYPE_ED25519_SECRET);
    let _ = parse_ed25519_secret_key(data, TAG_MASTER);
    let _ = parse_ed25519_secret_key(data, TAG_SIGNING);
    let _ = parse_ed25519_public_key(data, TAG_MASTER);
    let _ = parse_ed25519_cert_file(data, TAG_SIGNING);
    let _ = parse_ntor_secret_key(data);
    let _ = parse_rsa_secret_key(data);
    let _ = parse_fingerprint_file(data);
    let _ = parse_fingerprint_ed25519_file(data);
}

// ---------------------------------------------------------------------------------------------
// File I/O.

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (mode 0700) if missing; tightens its mode to 0700 if others may read it, as C
/// tor does for its data directory ("Fixing permissions on directory").
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyStoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    Ok(())
}

/// Reads a whole key file; `None` if it does not exist.
fn read_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, KeyStoreError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut buf = Zeroizing::new(Vec::new());
    // One byte more than allowed, to tell "too long" from "exactly at the limit".
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > MAX_FILE_LEN {
        return Err(KeyStoreError::Format {
            path: path.to_path_buf(),
            error: KeyFileError::TooLong,
        });
    }
    Ok(Some(buf))
}

/// Writes `bytes` to `path` atomically with mode 0600: a crash leaves the old file or the new
/// one, never half of one.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyStoreError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover temporary file may have another mode; the mode below only applies on creation.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    // Make the rename itself durable.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Reads and parses one file, attaching its path to any error; `None` if it does not exist.
pub fn load<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, KeyFileError>,
) -> Result<Option<T>, KeyStoreError> {
    match read_file(path)? {
        None => Ok(None),
        Some(bytes) => parse(&bytes)
            .map(Some)
            .map_err(|error| KeyStoreError::Format {
                path: path.to_path_buf(),
                error,
            }),
    }
}

/// Encodes and writes one file, atomically and with mode 0600.
pub fn store(path: &Path, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), KeyStoreError> {
    let mut buf = Zeroizing::new(Vec::new());
    encode(&mut buf);
    write_file_atomic(path, &buf)
}

/// Paths of one data directory's key files.
struct Paths {
    keys: PathBuf,
}

impl Paths {
    fn new(data_dir: &Path) -> Self {
        Paths {
            keys: data_dir.join(KEYS_DIR),
        }
    }

    fn key(&self, name: &str) -> PathBuf {
        self.keys.join(name)
    }
}

fn mismatch(path: PathBuf) -> KeyStoreError {
    KeyStoreError::Format {
        path,
        error: KeyFileError::PublicKeyMismatch,
    }
}

/// Loads the master identity key, checking it against the public key file when there is one.
fn load_master(p: &Paths) -> Result<Option<Ed25519Keypair>, KeyStoreError> {
    let secret_path = p.key(ED25519_MASTER_ID_SECRET_KEY);
    let public_path = p.key(ED25519_MASTER_ID_PUBLIC_KEY);
    let secret = load(&secret_path, |b| parse_ed25519_secret_key(b, TAG_MASTER))?;
    let public = load(&public_path, |b| parse_ed25519_public_key(b, TAG_MASTER))?;
    match (secret, public) {
        (Some(s), Some(p)) if *s.public() != p => Err(mismatch(public_path)),
        (None, Some(_)) => Err(KeyStoreError::MasterSecretMissing(secret_path)),
        (s, _) => Ok(s),
    }
}

impl RelayKeys {
    /// Loads a complete key set from a data directory written by C tor or by chive.
    ///
    /// Every key file must be present; the master public key file, if present, must match the
    /// master secret key. The signing certificate is returned as found: checking that it is
    /// valid, unexpired and certifies the signing key under the master key is
    /// [`RelayKeys::signing_cert_is_usable`]'s job.
    pub fn load(data_dir: &Path) -> Result<RelayKeys, KeyStoreError> {
        let p = Paths::new(data_dir);
        let missing = |name: &str| KeyStoreError::Io {
            path: p.key(name),
            source: io::ErrorKind::NotFound.into(),
        };
        let rsa = load(&p.key(SECRET_ID_KEY), parse_rsa_secret_key)?
            .ok_or_else(|| missing(SECRET_ID_KEY))?;
        let master = load_master(&p)?.ok_or_else(|| missing(ED25519_MASTER_ID_SECRET_KEY))?;
        let signing = load(&p.key(ED25519_SIGNING_SECRET_KEY), |b| {
            parse_ed25519_secret_key(b, TAG_SIGNING)
        })?
        .ok_or_else(|| missing(ED25519_SIGNING_SECRET_KEY))?;
        let cert = load(&p.key(ED25519_SIGNING_CERT), |b| {
            parse_ed25519_cert_file(b, TAG_SIGNING).map(<[u8]>::to_vec)
        })?
        .ok_or_else(|| missing(ED25519_SIGNING_CERT))?;
        let ntor = load(&p.key(SECRET_ONION_KEY_NTOR), parse_ntor_secret_key)?
            .ok_or_else(|| missing(SECRET_ONION_KEY_NTOR))?;
        Ok(RelayKeys::from_parts(rsa, master, signing, cert, ntor))
    }

    /// Loads the keys in `data_dir`, generating and writing whichever are missing, as C tor does
    /// at start-up; `now` is UNIX seconds.
    ///
    /// The signing key is replaced by a new one, certified for [`SIGNING_KEY_LIFETIME_SECS`],
    /// when it or its certificate is missing, when the master key is new, or when the stored
    /// certificate fails [`signing_cert_is_usable`] (malformed, for another key, badly signed,
    /// or expiring within a day). If the master public key exists without its secret key this
    /// fails with [`KeyStoreError::MasterSecretMissing`] rather than replace the relay's
    /// identity. A missing master public key file is rewritten from the secret key.
    pub fn load_or_generate(
        data_dir: &Path,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<RelayKeys, KeyStoreError> {
        Self::load_or_generate_with(
            data_dir,
            rng,
            |master, signing| make_signing_cert(master, signing, now, SIGNING_KEY_LIFETIME_SECS),
            |cert, master, signing| signing_cert_is_usable(cert, master, signing, now),
        )
    }

    /// [`RelayKeys::load_or_generate`] with the certificate policy as hooks: `make_cert(master,
    /// signing_public)` certifies a new signing key, and `keep_cert(cert, master_public,
    /// signing_public)` says whether a stored certificate may still be used.
    pub(crate) fn load_or_generate_with(
        data_dir: &Path,
        rng: &mut impl CryptoRngCore,
        make_cert: impl FnOnce(&Ed25519Keypair, &VerifyingKey) -> Result<Vec<u8>, KeyError>,
        keep_cert: impl FnOnce(&[u8], &VerifyingKey, &VerifyingKey) -> bool,
    ) -> Result<RelayKeys, KeyStoreError> {
        ensure_private_dir(data_dir)?;
        let p = Paths::new(data_dir);
        ensure_private_dir(&p.keys)?;

        let rsa_path = p.key(SECRET_ID_KEY);
        let rsa = match load(&rsa_path, parse_rsa_secret_key)? {
            Some(k) => k,
            None => {
                let k = RsaIdentityKeypair::generate(rng)?;
                store(&rsa_path, |out| encode_rsa_secret_key(&k, out))?;
                k
            }
        };

        let (master, master_is_new) = match load_master(&p)? {
            Some(k) => (k, false),
            None => {
                let k = Ed25519Keypair::generate(rng);
                store(&p.key(ED25519_MASTER_ID_SECRET_KEY), |out| {
                    encode_ed25519_secret_key(&k, TAG_MASTER, out)
                })?;
                (k, true)
            }
        };
        let public_path = p.key(ED25519_MASTER_ID_PUBLIC_KEY);
        if master_is_new || read_file(&public_path)?.is_none() {
            store(&public_path, |out| {
                encode_ed25519_public_key(master.public(), TAG_MASTER, out)
            })?;
        }

        let signing = load(&p.key(ED25519_SIGNING_SECRET_KEY), |b| {
            parse_ed25519_secret_key(b, TAG_SIGNING)
        })?;
        let cert = load(&p.key(ED25519_SIGNING_CERT), |b| {
            parse_ed25519_cert_file(b, TAG_SIGNING).map(<[u8]>::to_vec)
        })?;
        let (signing, cert) = match (signing, cert) {
            (Some(s), Some(c)) if !master_is_new && keep_cert(&c, master.public(), s.public()) => {
                (s, c)
            }
            _ => {
                let s = Ed25519Keypair::generate(rng);
                let c = make_cert(&master, s.public())?;
                write_signing(&p, &s, &c)?;
                (s, c)
            }
        };

        let ntor_path = p.key(SECRET_ONION_KEY_NTOR);
        let ntor = match load(&ntor_path, parse_ntor_secret_key)? {
            Some(k) => k,
            None => {
                let k = NtorOnionKeypair::generate(rng);
                store(&ntor_path, |out| encode_ntor_secret_key(&k, out))?;
                k
            }
        };
        Ok(RelayKeys::from_parts(rsa, master, signing, cert, ntor))
    }

    /// Writes every key file of this set into `data_dir`, replacing what is there.
    pub fn save(&self, data_dir: &Path) -> Result<(), KeyStoreError> {
        ensure_private_dir(data_dir)?;
        let p = Paths::new(data_dir);
        ensure_private_dir(&p.keys)?;
        store(&p.key(SECRET_ID_KEY), |out| {
            encode_rsa_secret_key(self.rsa_identity(), out)
        })?;
        store(&p.key(ED25519_MASTER_ID_SECRET_KEY), |out| {
            encode_ed25519_secret_key(self.ed25519_master(), TAG_MASTER, out)
        })?;
        store(&p.key(ED25519_MASTER_ID_PUBLIC_KEY), |out| {
            encode_ed25519_public_key(self.ed25519_master().public(), TAG_MASTER, out)
        })?;
        write_signing(&p, self.ed25519_signing(), self.signing_cert())?;
        store(&p.key(SECRET_ONION_KEY_NTOR), |out| {
            encode_ntor_secret_key(self.ntor_onion(), out)
        })
    }

    /// Replaces the signing key with a fresh one certified at `now` for
    /// [`SIGNING_KEY_LIFETIME_SECS`], and writes both to `data_dir`. For when
    /// [`RelayKeys::signing_cert_is_usable`] turns false.
    pub fn rotate_signing_key(
        &mut self,
        data_dir: &Path,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), KeyStoreError> {
        self.rotate_signing_key_with(data_dir, rng, |master, signing| {
            make_signing_cert(master, signing, now, SIGNING_KEY_LIFETIME_SECS)
        })
    }

    /// [`RelayKeys::rotate_signing_key`] with `make_cert(master, signing_public)` making the
    /// certificate.
    pub(crate) fn rotate_signing_key_with(
        &mut self,
        data_dir: &Path,
        rng: &mut impl CryptoRngCore,
        make_cert: impl FnOnce(&Ed25519Keypair, &VerifyingKey) -> Result<Vec<u8>, KeyError>,
    ) -> Result<(), KeyStoreError> {
        let signing = Ed25519Keypair::generate(rng);
        let cert = make_cert(self.ed25519_master(), signing.public())?;
        write_signing(&Paths::new(data_dir), &signing, &cert)?;
        self.set_signing_key(signing, cert);
        Ok(())
    }

    /// Writes the `fingerprint` and `fingerprint-ed25519` files, which C tor rewrites at every
    /// start-up.
    pub fn write_fingerprint_files(
        &self,
        data_dir: &Path,
        nickname: &str,
    ) -> Result<(), KeyStoreError> {
        let bad_nick = |name: &str| KeyStoreError::Format {
            path: data_dir.join(name),
            error: KeyFileError::BadNickname,
        };
        if !is_valid_nickname(nickname) {
            return Err(bad_nick(FINGERPRINT));
        }
        ensure_private_dir(data_dir)?;
        let mut rsa = Vec::new();
        let mut ed = Vec::new();
        encode_fingerprint_file(nickname, &self.fingerprint(), &mut rsa)
            .map_err(|_| bad_nick(FINGERPRINT))?;
        encode_fingerprint_ed25519_file(nickname, &self.ed25519_identity(), &mut ed)
            .map_err(|_| bad_nick(FINGERPRINT_ED25519))?;
        write_file_atomic(&data_dir.join(FINGERPRINT), &rsa)?;
        write_file_atomic(&data_dir.join(FINGERPRINT_ED25519), &ed)
    }
}

/// Writes the signing key and then its certificate. The key goes first: a crash in between
/// leaves a certificate for the old key, which the next start-up sees as not matching and
/// replaces.
fn write_signing(p: &Paths, signing: &Ed25519Keypair, cert: &[u8]) -> Result<(), KeyStoreError> {
    store(&p.key(ED25519_SIGNING_SECRET_KEY), |out| {
        encode_ed25519_secret_key(signing, TAG_SIGNING, out)
    })?;
    store(&p.key(ED25519_SIGNING_CERT), |out| {
        encode_ed25519_cert_file(cert, TAG_SIGNING, out)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md)
mod tests {
    //! Vectors: a data directory written by `tor --list-fingerprint` (tor 0.4.9.11) on a test
    //! machine, for the nickname `test`; throwaway keys.

    use super::*;
    use ed25519_dalek::{Signer as _, Verifier as _};
    use proptest::prelude::*;
    use rand::SeedableRng as _;

    const CTOR_SECRET_ID_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDcqTwEpyx6D+ModCfjw3YMrkfVqCiZuqPGFkBsBlimfE9/vOYN
5ESLVFWtqLevGKWhTdLGyitX3DSgAZ34cr3g4WwzLBcvW8+21w7rJTNWlqBUfxWo
wXDwhGHOIz+O6nW0QDbXGaD3HPzdg8Ysf6FTKyOEmFg1yDBAbKoYfGKb+QIDAQAB
AoGBALFO12hRwH5wh7J465ir9g6oeBZpof4tJ+5C8Q8cZl2Y4/SboCwncSCX6qS5
PqfW4ThlJWoRB5T439x2kC4UXRd4pUH7Zx6MkaG7/5iMA+EkQyWZJxXUiJFSc4dE
UcV5ez8lZr53UaQnfTarLawAY8rdOf45IcwQ441ZgqWUivcBAkEA/aza5fzLT6W1
8dEXAOIDBQFxp+Pzk+wZnC+bnneGwITQXYYCVYYAE4UrhCqP7n4pnKJrJwJKxp19
4YI7cIiUIQJBAN6u7NsRHt49GN5GEN7zMRoFoAfReU7gBfRUoFX2UTGTFXUtIn9l
O72or8FpND5XSyIpXZomneNmsjRaSMQ7jNkCQByjskb65l1EoSj+6TDxU1PyWMmS
o8JUioOmoFQgvHbpx7h3U7YiHcoWY9ZVE9DiL4J+l8hcquKHj1mxYVKQKOECQQCd
I6WC5W759vVgjOME4WpJ6aRHQBuxfEbXZwyJ/LrJF/jxajtI2QAyUyJLgtjaETG0
1qn1yMBsIyEn7nog98DpAkAqoavaR2gYBR1R8oxs650BQlEe+pYoA7uyVF4BjMe4
dT1sPpDT4q8jXUPmq1tg8e/6cOkr97dH73rHYQc8tMQh
-----END RSA PRIVATE KEY-----
\0";
    const CTOR_FINGERPRINT: &str = "4A34F02C7496C38097B6244AF4F0316C291051FE";
    const CTOR_ED25519_ID: &str = "mslLyX3I3L8tFHFgXiBd5HN0zJktTmwDO3NIZo3lMUg";
    const CTOR_MASTER_SECRET: &str = "00af46a91f8c150a347e1b8a4d194724ea940feaf46bfc215a3c1eb786055e67\
                                      a2a1014d11570b06e86f2fc92215c5b0a4fb029b7a7cc4b291036f0358a13bca";
    const CTOR_MASTER_PUBLIC: &str =
        "9ac94bc97dc8dcbf2d1471605e205de47374cc992d4e6c033b7348668de53148";
    const CTOR_SIGNING_SECRET: &str = "68b6988c92484d0c08769ae9df45674a3d57fbbd2413e28c9dbc20554af13d56\
                                       329469238a70ab62042160c61d513679bb6ceedadb5ec004335efb0f97eeeede";
    /// The certified key, bytes 7..39 of the certificate.
    const CTOR_SIGNING_PUBLIC: &str =
        "859c5590a1407fa498c494a737301800c93ab3b96daea9204a52f57a1dba3484";
    const CTOR_SIGNING_CERT: &str = "010400079f1f01859c5590a1407fa498c494a737301800c93ab3b96daea9204a\
                                     52f57a1dba348401002004009ac94bc97dc8dcbf2d1471605e205de47374cc99\
                                     2d4e6c033b7348668de53148c9d61304dd850d109862d0cd1810ec5ac04f444c\
                                     8a328d90b2319e3710a5262ade22e7cc4252224d80c75014a59bd6d339898b49\
                                     bf99207eaa15437a125ee40e";
    const CTOR_NTOR: &str = "20afc5c0c2565828767263aa64a51221f1e9c01b896fa7e6d5cd7c44168f6f50\
                             18320eb0237ed92206a88552bc832e795fd2b9ac23e51ee1b488cd81c3524025";

    fn file(header: &[u8], body_hex: &str) -> Vec<u8> {
        assert_eq!(header.len(), 32);
        let mut v = header.to_vec();
        v.extend(hex::decode(body_hex).unwrap());
        v
    }

    fn master_secret_file() -> Vec<u8> {
        file(b"== ed25519v1-secret: type0 ==\0\0\0", CTOR_MASTER_SECRET)
    }
    fn master_public_file() -> Vec<u8> {
        file(b"== ed25519v1-public: type0 ==\0\0\0", CTOR_MASTER_PUBLIC)
    }
    fn signing_secret_file() -> Vec<u8> {
        file(b"== ed25519v1-secret: type4 ==\0\0\0", CTOR_SIGNING_SECRET)
    }
    fn cert_file() -> Vec<u8> {
        file(b"== ed25519v1-cert: type4 ==\0\0\0\0\0", CTOR_SIGNING_CERT)
    }
    fn ntor_file() -> Vec<u8> {
        file(b"== c25519v1: onion ==\0\0\0\0\0\0\0\0\0\0\0", CTOR_NTOR)
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(42)
    }

    /// A stand-in for the certificate builder: the signing key and the master's signature on it.
    fn fake_cert(master: &Ed25519Keypair, signing: &VerifyingKey) -> Vec<u8> {
        let mut c = signing.to_bytes().to_vec();
        c.extend_from_slice(&master.sign(signing.as_bytes()).to_bytes());
        c
    }

    fn fake_cert_ok(master: &Ed25519Keypair, signing: &VerifyingKey) -> Result<Vec<u8>, KeyError> {
        Ok(fake_cert(master, signing))
    }

    fn keep_any(_: &[u8], _: &VerifyingKey, _: &VerifyingKey) -> bool {
        true
    }

    /// A fresh, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("chive-key-file-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ctor_rsa_identity_round_trips() {
        let k = parse_rsa_secret_key(CTOR_SECRET_ID_KEY.as_bytes()).unwrap();
        assert_eq!(k.identity().hex(), CTOR_FINGERPRINT);
        let mut out = Vec::new();
        encode_rsa_secret_key(&k, &mut out);
        assert_eq!(out, CTOR_SECRET_ID_KEY.as_bytes());
        // Without the trailing NUL the key still loads.
        let no_nul = CTOR_SECRET_ID_KEY.strip_suffix('\0').unwrap();
        let k2 = parse_rsa_secret_key(no_nul.as_bytes()).unwrap();
        assert_eq!(k2.identity(), k.identity());
    }

    #[test]
    fn rsa_bad_inputs() {
        assert_eq!(
            parse_rsa_secret_key(b"\xff\xfe").unwrap_err(),
            KeyFileError::BadPem
        );
        let wrong_label = CTOR_SECRET_ID_KEY.replace("RSA PRIVATE KEY", "PRIVATE KEY");
        assert_eq!(
            parse_rsa_secret_key(wrong_label.as_bytes()).unwrap_err(),
            KeyFileError::BadPem
        );
        // One base64 character changed in the middle of the private exponent.
        let corrupt = CTOR_SECRET_ID_KEY.replacen("AoGBALFO", "AoGBALFP", 1);
        assert_eq!(
            parse_rsa_secret_key(corrupt.as_bytes()).unwrap_err(),
            KeyFileError::BadPem
        );
        let small = RsaPrivateKey::new(&mut rng(), 512).unwrap();
        let pem = small.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert_eq!(
            parse_rsa_secret_key(pem.as_bytes()).unwrap_err(),
            KeyFileError::Rsa(KeyError::RsaWrongSize(512))
        );
    }

    #[test]
    fn ctor_ed25519_files_round_trip() {
        let master = parse_ed25519_secret_key(&master_secret_file(), TAG_MASTER).unwrap();
        assert_eq!(hex::encode(master.public().as_bytes()), CTOR_MASTER_PUBLIC);
        assert_eq!(master.identity().base64(), CTOR_ED25519_ID);
        let public = parse_ed25519_public_key(&master_public_file(), TAG_MASTER).unwrap();
        assert_eq!(public, *master.public());
        let signing = parse_ed25519_secret_key(&signing_secret_file(), TAG_SIGNING).unwrap();
        assert_eq!(
            hex::encode(signing.public().as_bytes()),
            CTOR_SIGNING_PUBLIC
        );
        let cert_bytes = cert_file();
        let cert = parse_ed25519_cert_file(&cert_bytes, TAG_SIGNING).unwrap();
        assert_eq!(hex::encode(cert), CTOR_SIGNING_CERT);
        // The certificate's signature (its last 64 bytes) is the master key's over the rest:
        // our loaded master public key is the one C tor signed with.
        let (body, sig) = cert.split_at(cert.len() - 64);
        let sig = ed25519_dalek::Signature::from_slice(sig).unwrap();
        assert!(master.public().verify(body, &sig).is_ok());
        // A signature made with the loaded expanded key verifies.
        let s = signing.sign(b"chive");
        assert!(signing.public().verify(b"chive", &s).is_ok());

        let mut out = Vec::new();
        encode_ed25519_secret_key(&master, TAG_MASTER, &mut out);
        assert_eq!(out, master_secret_file());
        out.clear();
        encode_ed25519_public_key(&public, TAG_MASTER, &mut out);
        assert_eq!(out, master_public_file());
        out.clear();
        encode_ed25519_secret_key(&signing, TAG_SIGNING, &mut out);
        assert_eq!(out, signing_secret_file());
        out.clear();
        encode_ed25519_cert_file(cert, TAG_SIGNING, &mut out);
        assert_eq!(out, cert_bytes);
    }

    #[test]
    fn ctor_ntor_round_trips() {
        let k = parse_ntor_secret_key(&ntor_file()).unwrap();
        assert_eq!(hex::encode(k.public().as_bytes()), &CTOR_NTOR[64..]);
        let mut out = Vec::new();
        encode_ntor_secret_key(&k, &mut out);
        assert_eq!(out, ntor_file());
    }

    #[test]
    fn tagged_header_errors() {
        let good = master_secret_file();
        assert_eq!(
            parse_ed25519_secret_key(&good[..31], TAG_MASTER).unwrap_err(),
            KeyFileError::TooShort
        );
        assert_eq!(
            parse_ed25519_secret_key(&good[..95], TAG_MASTER).unwrap_err(),
            KeyFileError::WrongLength {
                expected: 64,
                found: 63
            }
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            parse_ed25519_secret_key(&long, TAG_MASTER).unwrap_err(),
            KeyFileError::WrongLength {
                expected: 64,
                found: 65
            }
        );
        assert_eq!(
            parse_ed25519_secret_key(&good, TAG_SIGNING).unwrap_err(),
            KeyFileError::WrongTag
        );
        assert_eq!(
            parse_ed25519_secret_key(&master_public_file(), TAG_MASTER).unwrap_err(),
            KeyFileError::WrongType
        );
        assert_eq!(
            parse_ed25519_public_key(&good, TAG_MASTER).unwrap_err(),
            KeyFileError::WrongType
        );
        assert_eq!(
            parse_ed25519_cert_file(&cert_file(), TAG_MASTER).unwrap_err(),
            KeyFileError::WrongTag
        );
        assert_eq!(
            parse_ntor_secret_key(&good).unwrap_err(),
            KeyFileError::WrongType
        );
        // Bad header shapes: junk after the NUL, no NUL, no closing " ==", bad first byte.
        let mut b = good.clone();
        b[31] = b'x';
        assert_eq!(
            parse_tagged(&b, TYPE_ED25519_SECRET).unwrap_err(),
            KeyFileError::BadHeader
        );
        let mut b = good.clone();
        b[29..32].copy_from_slice(b"xxx");
        assert_eq!(
            parse_tagged(&b, TYPE_ED25519_SECRET).unwrap_err(),
            KeyFileError::BadHeader
        );
        let mut b = good.clone();
        b[28] = 0;
        assert_eq!(
            parse_tagged(&b, TYPE_ED25519_SECRET).unwrap_err(),
            KeyFileError::BadHeader
        );
        let mut b = good.clone();
        b[0] = b'-';
        assert_eq!(
            parse_tagged(&b, TYPE_ED25519_SECRET).unwrap_err(),
            KeyFileError::BadHeader
        );
        let mut b = good;
        b[20] = 0xff;
        assert_eq!(
            parse_tagged(&b, TYPE_ED25519_SECRET).unwrap_err(),
            KeyFileError::BadHeader
        );
    }

    #[test]
    fn mismatched_public_keys_are_refused() {
        let mut ntor = ntor_file();
        ntor[95] ^= 1;
        assert_eq!(
            parse_ntor_secret_key(&ntor).unwrap_err(),
            KeyFileError::PublicKeyMismatch
        );
        // A master public key file that is not the secret key's: refused on load.
        let d = TempDir::new("mismatch");
        let keys =
            RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any).unwrap();
        let other = Ed25519Keypair::generate(&mut rng());
        let path = d.0.join(KEYS_DIR).join(ED25519_MASTER_ID_PUBLIC_KEY);
        store(&path, |out| {
            encode_ed25519_public_key(other.public(), TAG_MASTER, out)
        })
        .unwrap();
        match RelayKeys::load(&d.0).unwrap_err() {
            KeyStoreError::Format { path: p, error } => {
                assert_eq!(p, path);
                assert_eq!(error, KeyFileError::PublicKeyMismatch);
            }
            e => panic!("unexpected {e}"),
        }
        assert!(matches!(
            RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any),
            Err(KeyStoreError::Format {
                error: KeyFileError::PublicKeyMismatch,
                ..
            })
        ));
        // A public key without its secret is refused rather than replaced.
        fs::remove_file(d.0.join(KEYS_DIR).join(ED25519_MASTER_ID_SECRET_KEY)).unwrap();
        assert!(matches!(
            RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any),
            Err(KeyStoreError::MasterSecretMissing(_))
        ));
        drop(keys);
    }

    #[test]
    fn ed25519_public_key_must_be_a_point() {
        // y = 2 is not on the curve.
        let mut body = [0u8; 32];
        body[0] = 2;
        let f = file(b"== ed25519v1-public: type0 ==\0\0\0", &hex::encode(body));
        assert_eq!(
            parse_ed25519_public_key(&f, TAG_MASTER).unwrap_err(),
            KeyFileError::BadPublicKey
        );
    }

    #[test]
    fn fingerprint_files() {
        let line = format!("test {CTOR_FINGERPRINT}\n");
        let (nick, id) = parse_fingerprint_file(line.as_bytes()).unwrap();
        assert_eq!((nick, id.hex().as_str()), ("test", CTOR_FINGERPRINT));
        let mut out = Vec::new();
        encode_fingerprint_file(nick, &id, &mut out).unwrap();
        assert_eq!(out, line.as_bytes());

        let line = format!("test {CTOR_ED25519_ID}\n");
        let (nick, id) = parse_fingerprint_ed25519_file(line.as_bytes()).unwrap();
        assert_eq!((nick, id.base64().as_str()), ("test", CTOR_ED25519_ID));
        out.clear();
        encode_fingerprint_ed25519_file(nick, &id, &mut out).unwrap();
        assert_eq!(out, line.as_bytes());

        let bad = [
            format!("test {CTOR_FINGERPRINT}"),
            format!("test  {CTOR_FINGERPRINT}\n"),
            format!("test {}\n", &CTOR_FINGERPRINT[..38]),
            "test $4A34F02C7496C38097B6244AF4F0316C291051\n".to_string(),
            "test 4A34 F02C 7496 C380 97B6 244A F4F0 316C 2910 51FE\n".to_string(),
            format!("test {CTOR_ED25519_ID}\n"),
        ];
        for b in bad {
            assert_eq!(
                parse_fingerprint_file(b.as_bytes()).unwrap_err(),
                KeyFileError::BadFingerprintFile,
                "{b:?}"
            );
        }
        assert_eq!(
            parse_fingerprint_file(format!("te-st {CTOR_FINGERPRINT}\n").as_bytes()).unwrap_err(),
            KeyFileError::BadNickname
        );
        assert_eq!(
            parse_fingerprint_ed25519_file(format!("test {CTOR_FINGERPRINT}\n").as_bytes())
                .unwrap_err(),
            KeyFileError::BadFingerprintFile
        );
        assert_eq!(
            encode_fingerprint_file("a-very-long-nickname-indeed", &id_zero(), &mut out),
            Err(KeyFileError::BadNickname)
        );
        assert!(is_valid_nickname("abcdefghij123456789"));
        assert!(!is_valid_nickname("abcdefghij1234567890"));
        assert!(!is_valid_nickname(""));
    }

    fn id_zero() -> RsaIdentity {
        RsaIdentity::from_bytes([0; 20])
    }

    #[test]
    fn load_ctor_directory() {
        let d = TempDir::new("ctor");
        let keys = d.0.join(KEYS_DIR);
        fs::create_dir_all(&keys).unwrap();
        fs::write(keys.join(SECRET_ID_KEY), CTOR_SECRET_ID_KEY).unwrap();
        fs::write(
            keys.join(ED25519_MASTER_ID_SECRET_KEY),
            master_secret_file(),
        )
        .unwrap();
        fs::write(
            keys.join(ED25519_MASTER_ID_PUBLIC_KEY),
            master_public_file(),
        )
        .unwrap();
        fs::write(keys.join(ED25519_SIGNING_SECRET_KEY), signing_secret_file()).unwrap();
        fs::write(keys.join(ED25519_SIGNING_CERT), cert_file()).unwrap();
        fs::write(keys.join(SECRET_ONION_KEY_NTOR), ntor_file()).unwrap();
        let k = RelayKeys::load(&d.0).unwrap();
        assert_eq!(k.fingerprint().hex(), CTOR_FINGERPRINT);
        assert_eq!(k.ed25519_identity().base64(), CTOR_ED25519_ID);
        assert_eq!(hex::encode(k.signing_cert()), CTOR_SIGNING_CERT);
        // load_or_generate finds everything and changes nothing.
        let again = RelayKeys::load_or_generate_with(
            &d.0,
            &mut rng(),
            |_, _| panic!("must not generate a signing key"),
            |cert, master, signing| {
                // C tor's certificate passes the real check ten days before it expires (hour
                // 0x79f1f of its EXPIRATION_DATE)...
                let before_expiry = 0x79f1f * 3600 - 10 * 86400;
                assert!(signing_cert_is_usable(cert, master, signing, before_expiry));
                // ...but is due for replacement within a day of expiry.
                assert!(!signing_cert_is_usable(
                    cert,
                    master,
                    signing,
                    0x79f1f * 3600 - 3600
                ));
                true
            },
        )
        .unwrap();
        assert_eq!(again.fingerprint(), k.fingerprint());
        assert_eq!(
            fs::read(keys.join(ED25519_SIGNING_CERT)).unwrap(),
            cert_file()
        );
        assert_eq!(
            fs::read(keys.join(SECRET_ONION_KEY_NTOR)).unwrap(),
            ntor_file()
        );
    }

    #[test]
    fn generate_save_load_round_trip() {
        let d = TempDir::new("gen");
        let a = RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&d.0), 0o700);
            assert_eq!(mode(&d.0.join(KEYS_DIR)), 0o700);
            for name in [
                SECRET_ID_KEY,
                ED25519_MASTER_ID_SECRET_KEY,
                ED25519_MASTER_ID_PUBLIC_KEY,
                ED25519_SIGNING_SECRET_KEY,
                ED25519_SIGNING_CERT,
                SECRET_ONION_KEY_NTOR,
            ] {
                assert_eq!(mode(&d.0.join(KEYS_DIR).join(name)), 0o600, "{name}");
            }
        }
        let b = RelayKeys::load(&d.0).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.ed25519_identity(), b.ed25519_identity());
        assert_eq!(a.ed25519_signing().public(), b.ed25519_signing().public());
        assert_eq!(a.signing_cert(), b.signing_cert());
        assert_eq!(a.ntor_onion().public(), b.ntor_onion().public());

        // Missing pieces are regenerated, the rest kept.
        fs::remove_file(d.0.join(KEYS_DIR).join(ED25519_SIGNING_CERT)).unwrap();
        fs::remove_file(d.0.join(KEYS_DIR).join(ED25519_MASTER_ID_PUBLIC_KEY)).unwrap();
        let c = RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any).unwrap();
        assert_eq!(c.fingerprint(), a.fingerprint());
        assert_eq!(c.ed25519_identity(), a.ed25519_identity());
        assert_ne!(c.ed25519_signing().public(), a.ed25519_signing().public());
        assert_eq!(
            c.signing_cert(),
            fake_cert(c.ed25519_master(), c.ed25519_signing().public())
        );
        assert_eq!(
            parse_ed25519_public_key(
                &fs::read(d.0.join(KEYS_DIR).join(ED25519_MASTER_ID_PUBLIC_KEY)).unwrap(),
                TAG_MASTER
            )
            .unwrap(),
            *a.ed25519_master().public()
        );

        let mut c = c;
        let old = *c.ed25519_signing().public();
        c.rotate_signing_key_with(
            &d.0,
            &mut rand::rngs::StdRng::seed_from_u64(9),
            fake_cert_ok,
        )
        .unwrap();
        assert_ne!(*c.ed25519_signing().public(), old);
        let e = RelayKeys::load(&d.0).unwrap();
        assert_eq!(e.ed25519_signing().public(), c.ed25519_signing().public());

        c.write_fingerprint_files(&d.0, "chive").unwrap();
        let f = fs::read(d.0.join(FINGERPRINT)).unwrap();
        assert_eq!(
            parse_fingerprint_file(&f).unwrap(),
            ("chive", c.fingerprint())
        );
        let f = fs::read(d.0.join(FINGERPRINT_ED25519)).unwrap();
        assert_eq!(
            parse_fingerprint_ed25519_file(&f).unwrap(),
            ("chive", c.ed25519_identity())
        );
        assert!(c.write_fingerprint_files(&d.0, "not ok").is_err());
    }

    #[test]
    fn unusable_or_orphaned_signing_keys_are_replaced() {
        let d = TempDir::new("replace");
        let a = RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any).unwrap();
        // The certificate code rejects the stored certificate: a new signing key is made.
        let mut r = rand::rngs::StdRng::seed_from_u64(1);
        let b = RelayKeys::load_or_generate_with(
            &d.0,
            &mut r,
            fake_cert_ok,
            |cert, master, signing| {
                assert_eq!(cert, a.signing_cert());
                assert_eq!(master, a.ed25519_master().public());
                assert_eq!(signing, a.ed25519_signing().public());
                false
            },
        )
        .unwrap();
        assert_eq!(b.ed25519_identity(), a.ed25519_identity());
        assert_ne!(b.ed25519_signing().public(), a.ed25519_signing().public());
        assert_eq!(
            RelayKeys::load(&d.0).unwrap().signing_cert(),
            b.signing_cert()
        );
        // A new master key orphans the old signing key: it is replaced even if "usable".
        fs::remove_file(d.0.join(KEYS_DIR).join(ED25519_MASTER_ID_SECRET_KEY)).unwrap();
        fs::remove_file(d.0.join(KEYS_DIR).join(ED25519_MASTER_ID_PUBLIC_KEY)).unwrap();
        let mut r = rand::rngs::StdRng::seed_from_u64(2);
        let c = RelayKeys::load_or_generate_with(&d.0, &mut r, fake_cert_ok, keep_any).unwrap();
        assert_ne!(c.ed25519_identity(), b.ed25519_identity());
        assert_ne!(c.ed25519_signing().public(), b.ed25519_signing().public());
        assert_eq!(
            c.signing_cert(),
            fake_cert(c.ed25519_master(), c.ed25519_signing().public())
        );
        assert_eq!(c.fingerprint(), a.fingerprint());
    }

    /// The real certificate policy: certificates made at `now` are kept while usable and
    /// replaced, with the key they certify, once within a day of expiry or damaged.
    #[test]
    fn signing_key_replaced_when_its_cert_is_unusable() {
        const NOW: u64 = 1_750_000_000;
        let d = TempDir::new("policy");
        let a = RelayKeys::load_or_generate(&d.0, NOW, &mut rng()).unwrap();
        assert!(a.signing_cert_is_usable(NOW));
        let cert_path = d.0.join(KEYS_DIR).join(ED25519_SIGNING_CERT);
        let cert_file = fs::read(&cert_path).unwrap();
        assert_eq!(
            parse_ed25519_cert_file(&cert_file, TAG_SIGNING).unwrap(),
            a.signing_cert()
        );

        // 28 days on: same keys, files untouched.
        let later = NOW + 28 * 86400;
        let b = RelayKeys::load_or_generate(&d.0, later, &mut rng()).unwrap();
        assert_eq!(b.ed25519_signing().public(), a.ed25519_signing().public());
        assert_eq!(fs::read(&cert_path).unwrap(), cert_file);

        // 29.5 days on, within a day of expiry: a new signing key, same identities.
        let later = NOW + 29 * 86400 + 43200;
        let c = RelayKeys::load_or_generate(&d.0, later, &mut rng()).unwrap();
        assert_ne!(c.ed25519_signing().public(), a.ed25519_signing().public());
        assert_eq!(c.ed25519_identity(), a.ed25519_identity());
        assert_eq!(c.fingerprint(), a.fingerprint());
        assert!(c.signing_cert_is_usable(later + 28 * 86400));
        assert_eq!(
            RelayKeys::load(&d.0).unwrap().signing_cert(),
            c.signing_cert()
        );

        // A damaged certificate is replaced too.
        let mut damaged = fs::read(&cert_path).unwrap();
        *damaged.last_mut().unwrap() ^= 1;
        fs::write(&cert_path, &damaged).unwrap();
        let e = RelayKeys::load_or_generate(&d.0, later, &mut rand::rngs::StdRng::seed_from_u64(3))
            .unwrap();
        assert_ne!(e.ed25519_signing().public(), c.ed25519_signing().public());
        assert!(e.signing_cert_is_usable(later));

        // Rotation by hand.
        let mut e = e;
        let old = *e.ed25519_signing().public();
        e.rotate_signing_key(&d.0, later, &mut rand::rngs::StdRng::seed_from_u64(5))
            .unwrap();
        assert_ne!(*e.ed25519_signing().public(), old);
        assert!(e.signing_cert_is_usable(later));
        assert_eq!(
            RelayKeys::load(&d.0).unwrap().signing_cert(),
            e.signing_cert()
        );
    }

    #[test]
    fn loose_permissions_are_tightened() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let d = TempDir::new("perm");
            fs::create_dir_all(d.0.join(KEYS_DIR)).unwrap();
            fs::set_permissions(&d.0, fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(d.0.join(KEYS_DIR), fs::Permissions::from_mode(0o777)).unwrap();
            RelayKeys::load_or_generate_with(&d.0, &mut rng(), fake_cert_ok, keep_any).unwrap();
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&d.0), 0o700);
            assert_eq!(mode(&d.0.join(KEYS_DIR)), 0o700);
        }
    }

    #[test]
    fn oversized_file_is_refused() {
        let d = TempDir::new("big");
        let keys = d.0.join(KEYS_DIR);
        fs::create_dir_all(&keys).unwrap();
        let mut big = cert_file();
        big.resize(MAX_FILE_LEN as usize + 1, 0);
        fs::write(keys.join(ED25519_SIGNING_CERT), &big).unwrap();
        let err = load(&keys.join(ED25519_SIGNING_CERT), |b| {
            parse_ed25519_cert_file(b, TAG_SIGNING).map(<[u8]>::to_vec)
        })
        .unwrap_err();
        assert!(matches!(
            err,
            KeyStoreError::Format {
                error: KeyFileError::TooLong,
                ..
            }
        ));
        big.truncate(MAX_FILE_LEN as usize);
        fs::write(keys.join(ED25519_SIGNING_CERT), &big).unwrap();
        let cert = load(&keys.join(ED25519_SIGNING_CERT), |b| {
            parse_ed25519_cert_file(b, TAG_SIGNING).map(<[u8]>::to_vec)
        })
        .unwrap()
        .unwrap();
        assert_eq!(cert.len(), MAX_FILE_LEN as usize - 32);
    }

    #[test]
    fn missing_file_is_reported() {
        let d = TempDir::new("missing");
        assert!(matches!(
            RelayKeys::load(&d.0),
            Err(KeyStoreError::Io { ref path, ref source })
                if path.ends_with(SECRET_ID_KEY) && source.kind() == io::ErrorKind::NotFound
        ));
    }

    fn arb_nickname() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]{1,19}"
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_parse_all(&data);
        }

        #[test]
        fn parsers_never_panic_behind_a_good_header(
            header in prop_oneof![
                Just(&b"== ed25519v1-secret: type0 ==\0\0\0"[..]),
                Just(&b"== c25519v1: onion ==\0\0\0\0\0\0\0\0\0\0\0"[..]),
                Just(&b"-----BEGIN RSA PRIVATE KEY-----\n"[..]),
            ],
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut data = header.to_vec();
            data.extend(body);
            fuzz_parse_all(&data);
        }

        #[test]
        fn tagged_round_trip(
            tag in "[a-z0-9]{1,5}",
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut out = Vec::new();
            encode_tagged(TYPE_ED25519_CERT, &tag, &body, &mut out);
            let (t, b) = parse_tagged(&out, TYPE_ED25519_CERT).unwrap();
            prop_assert_eq!(t, tag.as_str());
            prop_assert_eq!(b, &body[..]);
        }

        #[test]
        fn ed25519_and_ntor_round_trip(secret in any::<[u8; 32]>(), prefix in any::<[u8; 32]>()) {
            let mut expanded = [0u8; 64];
            expanded[..32].copy_from_slice(&secret);
            expanded[32..].copy_from_slice(&prefix);
            let k = Ed25519Keypair::from_expanded_bytes(&expanded);
            let mut out = Vec::new();
            encode_ed25519_secret_key(&k, TAG_SIGNING, &mut out);
            let back = parse_ed25519_secret_key(&out, TAG_SIGNING).unwrap();
            prop_assert_eq!(back.expanded_bytes(), &expanded);
            out.clear();
            encode_ed25519_public_key(k.public(), TAG_MASTER, &mut out);
            prop_assert_eq!(parse_ed25519_public_key(&out, TAG_MASTER).unwrap(), *k.public());

            let n = NtorOnionKeypair::from_secret_bytes(secret);
            out.clear();
            encode_ntor_secret_key(&n, &mut out);
            let back = parse_ntor_secret_key(&out).unwrap();
            prop_assert_eq!(back.secret().to_bytes(), secret);
        }

        #[test]
        fn fingerprint_round_trip(nick in arb_nickname(), rsa in any::<[u8; 20]>(), ed in any::<[u8; 32]>()) {
            let mut out = Vec::new();
            encode_fingerprint_file(&nick, &RsaIdentity::from_bytes(rsa), &mut out).unwrap();
            prop_assert_eq!(
                parse_fingerprint_file(&out).unwrap(),
                (nick.as_str(), RsaIdentity::from_bytes(rsa))
            );
            out.clear();
            encode_fingerprint_ed25519_file(&nick, &Ed25519Identity::from_bytes(ed), &mut out).unwrap();
            prop_assert_eq!(
                parse_fingerprint_ed25519_file(&out).unwrap(),
                (nick.as_str(), Ed25519Identity::from_bytes(ed))
            );
        }
    }
}
