//! An onion service's directory in C tor's format (`HiddenServiceDir`), so operators can move a
//! service between C tor and chive.
//!
//! C tor keeps, for a v3 service (rend-spec-v3 §1.9 and C tor's `hs_service` key handling):
//! - `hs_ed25519_secret_key`: `== ed25519v1-secret: type0 ==` (NUL-padded to 32 bytes), then the
//!   64-byte expanded secret key;
//! - `hs_ed25519_public_key`: `== ed25519v1-public: type0 ==`, then the 32-byte public key;
//! - `hostname`: the onion address and a newline.
//!
//! The secret key is the identity; the public key file must match it and the hostname is
//! rewritten from the key when it is missing or differs, as C tor does at every start.

use std::path::{Path, PathBuf};

use proto::key_file::{self, KeyFileError, KeyStoreError, TAG_MASTER};
use proto::keys::Ed25519Keypair;
use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::onion_address::OnionAddress;

/// The secret key's file name.
pub const SECRET_KEY: &str = "hs_ed25519_secret_key";
/// The public key's file name.
pub const PUBLIC_KEY: &str = "hs_ed25519_public_key";
/// The onion address's file name.
pub const HOSTNAME: &str = "hostname";

/// Why a service directory could not be loaded or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceDirError {
    /// Reading, writing or parsing a key file failed.
    #[error(transparent)]
    Store(#[from] KeyStoreError),
    /// `hs_ed25519_public_key` is not the public half of `hs_ed25519_secret_key`.
    #[error("{0}: the public key does not match the secret key")]
    PublicKeyMismatch(PathBuf),
    /// The public key is present but the secret key is not: refusing to replace the identity.
    #[error("{0}: the secret key is missing but a public key exists")]
    SecretKeyMissing(PathBuf),
}

/// A v3 onion service's long-term identity, loaded from (or created in) its directory.
#[derive(Debug)]
pub struct ServiceIdentity {
    key: Ed25519Keypair,
}

impl ServiceIdentity {
    /// The service's identity keypair (the key that is blinded for each time period).
    pub fn keypair(&self) -> &Ed25519Keypair {
        &self.key
    }

    /// The service's onion address.
    pub fn onion_address(&self) -> OnionAddress {
        OnionAddress::from_identity(self.key.identity())
    }

    /// Loads the identity from `dir`, or creates a new one there if the directory holds no key.
    /// Writes the public key and hostname files when they are missing or, for the hostname, out
    /// of date.
    pub fn load_or_generate(
        dir: &Path,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, ServiceDirError> {
        key_file::ensure_private_dir(dir)?;
        let secret_path = dir.join(SECRET_KEY);
        let public_path = dir.join(PUBLIC_KEY);
        let secret = key_file::load(&secret_path, |b| {
            key_file::parse_ed25519_secret_key(b, TAG_MASTER)
        })?;
        let public = key_file::load(&public_path, |b| {
            key_file::parse_ed25519_public_key(b, TAG_MASTER)
        })?;
        let key = match (secret, public) {
            (Some(key), Some(public)) => {
                if key.public() != &public {
                    return Err(ServiceDirError::PublicKeyMismatch(public_path));
                }
                key
            }
            (Some(key), None) => {
                store_public(&public_path, &key)?;
                key
            }
            (None, Some(_)) => return Err(ServiceDirError::SecretKeyMissing(secret_path)),
            (None, None) => {
                let key = Ed25519Keypair::generate(rng);
                key_file::store(&secret_path, |out| {
                    key_file::encode_ed25519_secret_key(&key, TAG_MASTER, out)
                })?;
                store_public(&public_path, &key)?;
                key
            }
        };
        let id = ServiceIdentity { key };
        let hostname = format!("{}\n", id.onion_address());
        let hostname_path = dir.join(HOSTNAME);
        let current = key_file::load(&hostname_path, |b| Ok::<_, KeyFileError>(b.to_vec()))?;
        if current.as_deref() != Some(hostname.as_bytes()) {
            key_file::store(&hostname_path, |out| {
                out.extend_from_slice(hostname.as_bytes())
            })?;
        }
        Ok(id)
    }
}

fn store_public(path: &Path, key: &Ed25519Keypair) -> Result<(), KeyStoreError> {
    key_file::store(path, |out| {
        key_file::encode_ed25519_public_key(key.public(), TAG_MASTER, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chive-hsdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generates_then_loads_the_same_identity() {
        let dir = scratch("gen");
        let mut rng = StdRng::seed_from_u64(5);
        let a = ServiceIdentity::load_or_generate(&dir, &mut rng).expect("generate");
        let b = ServiceIdentity::load_or_generate(&dir, &mut rng).expect("load");
        assert_eq!(a.onion_address(), b.onion_address());
        let hostname = std::fs::read_to_string(dir.join(HOSTNAME)).expect("hostname");
        assert_eq!(hostname, format!("{}\n", a.onion_address()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_hostname_is_rewritten_and_mismatched_public_key_refused() {
        let dir = scratch("stale");
        let mut rng = StdRng::seed_from_u64(6);
        let a = ServiceIdentity::load_or_generate(&dir, &mut rng).expect("generate");
        std::fs::write(dir.join(HOSTNAME), "wrong.onion\n").expect("write");
        ServiceIdentity::load_or_generate(&dir, &mut rng).expect("load");
        let hostname = std::fs::read_to_string(dir.join(HOSTNAME)).expect("hostname");
        assert_eq!(hostname, format!("{}\n", a.onion_address()));

        let other = Ed25519Keypair::generate(&mut rng);
        store_public(&dir.join(PUBLIC_KEY), &other).expect("write");
        assert!(matches!(
            ServiceIdentity::load_or_generate(&dir, &mut rng),
            Err(ServiceDirError::PublicKeyMismatch(_))
        ));

        std::fs::remove_file(dir.join(SECRET_KEY)).expect("rm");
        assert!(matches!(
            ServiceIdentity::load_or_generate(&dir, &mut rng),
            Err(ServiceDirError::SecretKeyMissing(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
