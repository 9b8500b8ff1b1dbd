//! `chive keygen`: load or create a relay's keys in a data directory, in C tor's file formats,
//! and report its identities.
//!
//! What it does matches what `tor --list-fingerprint` does to a data directory (see tor(1)):
//! keys that exist are kept (a signing key whose certificate is unusable is replaced), missing
//! ones are generated, the `fingerprint` and `fingerprint-ed25519` files are rewritten, and the
//! identities are printed as `NICKNAME FINGERPRINT-WITH-SPACES` and `NICKNAME ED25519-BASE64`.
//! Either program can then use the directory. The formats are those of
//! [`proto::key_file`].

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::ids::{Ed25519Identity, RsaIdentity};
use proto::key_file::{is_valid_nickname, KeyStoreError};
use proto::keys::RelayKeys;
use rand::rngs::OsRng;
use rand_core::CryptoRngCore;
use thiserror::Error;

/// The nickname C tor uses when none is configured.
pub const DEFAULT_NICKNAME: &str = "Unnamed";

/// Why `chive keygen` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeygenError {
    /// Nicknames are 1 to 19 ASCII letters and digits (dir-spec §2.1.1).
    #[error("invalid nickname {0:?}: it must be 1 to 19 ASCII letters and digits")]
    BadNickname(String),
    /// The system clock reads before 1970, so no certificate lifetime can be set.
    #[error("the system clock is set before 1970")]
    Clock,
    /// Reading, generating or writing the keys failed.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
}

/// A relay's public identities, as `chive keygen` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identities {
    /// The relay's nickname.
    pub nickname: String,
    /// The RSA identity fingerprint.
    pub fingerprint: RsaIdentity,
    /// The ed25519 master identity.
    pub ed25519: Ed25519Identity,
}

impl fmt::Display for Identities {
    /// The two lines `tor --list-fingerprint rsa` and `tor --list-fingerprint ed25519` print,
    /// each ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.nickname, self.fingerprint.spaced_hex())?;
        writeln!(f, "{} {}", self.nickname, self.ed25519.base64())
    }
}

/// Loads or generates the keys in `data_dir` at `now` (UNIX seconds), writes the fingerprint
/// files for `nickname`, and returns the identities.
///
/// The nickname is checked first, so a bad one leaves the directory untouched.
pub fn keygen(
    data_dir: &Path,
    nickname: &str,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Identities, KeygenError> {
    if !is_valid_nickname(nickname) {
        return Err(KeygenError::BadNickname(nickname.to_string()));
    }
    let keys = RelayKeys::load_or_generate(data_dir, now, rng)?;
    keys.write_fingerprint_files(data_dir, nickname)?;
    Ok(Identities {
        nickname: nickname.to_string(),
        fingerprint: keys.fingerprint(),
        ed25519: keys.ed25519_identity(),
    })
}

/// [`keygen`] with the system clock and the operating system's random number generator: what
/// the `chive keygen` command runs.
pub fn keygen_now(data_dir: &Path, nickname: &str) -> Result<Identities, KeygenError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| KeygenError::Clock)?
        .as_secs();
    keygen(data_dir, nickname, now, &mut OsRng)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.
mod tests {
    use super::*;
    use proto::key_file::{self, parse_fingerprint_ed25519_file, parse_fingerprint_file};
    use rand::rngs::StdRng;
    use rand::SeedableRng as _;

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn keys_are_stable_and_fingerprint_files_written() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = keygen(&data, "chive1", NOW, &mut StdRng::seed_from_u64(1)).unwrap();
        // A second run, with another RNG, finds the same keys.
        let b = keygen(&data, "chive1", NOW + 3600, &mut StdRng::seed_from_u64(2)).unwrap();
        assert_eq!(a, b);
        let fp = std::fs::read(data.join(key_file::FINGERPRINT)).unwrap();
        assert_eq!(
            parse_fingerprint_file(&fp).unwrap(),
            ("chive1", a.fingerprint)
        );
        let fp = std::fs::read(data.join(key_file::FINGERPRINT_ED25519)).unwrap();
        assert_eq!(
            parse_fingerprint_ed25519_file(&fp).unwrap(),
            ("chive1", a.ed25519)
        );
        let shown = a.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines,
            [
                format!("chive1 {}", a.fingerprint.spaced_hex()),
                format!("chive1 {}", a.ed25519.base64()),
            ]
        );
        assert!(shown.ends_with('\n'));
    }

    #[test]
    fn bad_nickname_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for nick in ["", "has space", "waytoolongnickname20", "ünïcode"] {
            assert!(matches!(
                keygen(&data, nick, NOW, &mut StdRng::seed_from_u64(1)),
                Err(KeygenError::BadNickname(n)) if n == nick
            ));
        }
        assert!(!data.exists());
    }
}
