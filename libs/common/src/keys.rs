//! The deployment's master keys, which seal what must be kept secret at rest yet recovered by
//! the server: access keys' secrets (a SigV4 signature is checked with the secret itself) and,
//! later, queues' data keys. AES-256-GCM (the `aes-gcm` crate) with a random 96-bit nonce per
//! sealing and associated data that binds each sealed value to where it belongs.
//!
//! A key file holds one key per line, base64 of 32 random bytes; the first line is the key new
//! values are sealed under, and the others still open what was sealed under them, so a rotation
//! is: put the new key first, restart, re-wrap everything (`sluice admin master-key rotate`),
//! then drop the old line. Lines starting with `#` are comments.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{bail, Context};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sluice_api::identity::{Sealed, NONCE_LEN};
use sluice_api::{Error, Result};
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;

/// The environment variable that may hold the key file's text instead of a file.
pub const MASTER_KEY_ENV: &str = "SLUICE_MASTER_KEY";

pub struct MasterKeys {
    /// The current key first. Each cipher holds its key; the `aes` crate zeroes it on drop
    /// only with its `zeroize` feature, so the bytes read from the file are zeroed here.
    keys: Vec<(String, Aes256Gcm)>,
}

/// Names the keys, never their bytes.
impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MasterKeys").field("ids", &ids).finish()
    }
}

/// A key's id: the first 8 bytes of a SHA-256 over it, in hex. It tells keys apart and
/// reveals nothing usable about them.
fn key_id(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"sluice master key id\0")
        .chain_update(key)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl MasterKeys {
    /// Keys from a key file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .map_err(|_| anyhow::anyhow!("line {}: not base64", number + 1))?,
            );
            if bytes.len() != KEY_LEN {
                bail!(
                    "line {}: a master key is {KEY_LEN} bytes, this one {}",
                    number + 1,
                    bytes.len()
                );
            }
            let id = key_id(&bytes);
            if keys.iter().any(|(known, _)| *known == id) {
                bail!("line {}: the same key twice", number + 1);
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).expect("the length was checked");
            keys.push((id, cipher));
        }
        if keys.is_empty() {
            bail!("no key in it: one line of base64 of {KEY_LEN} random bytes");
        }
        Ok(MasterKeys { keys })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read master key file {}", path.display()))?,
        );
        Self::parse(&text).with_context(|| format!("master key file {}", path.display()))
    }

    /// The keys from `file` if given, else from [`MASTER_KEY_ENV`]; `None` if neither is set.
    pub fn configured(file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        if let Some(path) = file {
            return Self::load(path).map(Some);
        }
        match std::env::var(MASTER_KEY_ENV) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Self::parse(&text)
                    .with_context(|| format!("the master key in {MASTER_KEY_ENV}"))
                    .map(Some)
            }
            Err(_) => Ok(None),
        }
    }

    /// A key file's text holding one new random key.
    pub fn generate() -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let mut text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*bytes));
        text.push('\n');
        text
    }

    /// The id of the key new values are sealed under.
    pub fn current(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plaintext` under the current key; `aad` must be given again to open it.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Only a plaintext over 64 GiB fails to encrypt.
            .expect("AES-GCM seals any value this small");
        Sealed {
            key: id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens `sealed` with the key it names. An error if that key is not configured, or if
    /// the value or `aad` is not what was sealed.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let Some((_, cipher)) = self.keys.iter().find(|(id, _)| *id == sealed.key) else {
            return Err(Error::Internal(format!(
                "a value is sealed under master key {}, which is not in the key file",
                sealed.key
            )));
        };
        if sealed.nonce.len() != NONCE_LEN {
            return Err(Error::Internal(
                "a sealed value's nonce is malformed".into(),
            ));
        }
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::Internal(format!(
                    "a value sealed under master key {} does not open: altered, or moved from \
                     where it was sealed",
                    sealed.key
                ))
            })
    }

    /// `sealed` opened and sealed again under the current key, if it is under another.
    pub fn rewrap(&self, sealed: &Sealed, aad: &[u8]) -> Result<Option<Sealed>> {
        if sealed.key == self.current() {
            return Ok(None);
        }
        let plaintext = self.open(sealed, aad)?;
        Ok(Some(self.seal(&plaintext, aad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_associated_data() {
        let keys = MasterKeys::parse(&MasterKeys::generate()).unwrap();
        let sealed = keys.seal(b"secret", b"SLKONE");
        assert_eq!(sealed.key, keys.current());
        assert!(!sealed
            .ciphertext
            .windows(6)
            .any(|w| w == b"secret".as_slice()));
        assert_eq!(keys.open(&sealed, b"SLKONE").unwrap().as_slice(), b"secret");
        let moved = keys.open(&sealed, b"SLKTWO").unwrap_err();
        assert!(moved.to_string().contains("does not open"), "{moved}");
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(keys.open(&altered, b"SLKONE").is_err());
        let other = MasterKeys::parse(&MasterKeys::generate()).unwrap();
        let err = other.open(&sealed, b"SLKONE").unwrap_err();
        assert!(err.to_string().contains("not in the key file"), "{err}");
        let again = keys.seal(b"secret", b"SLKONE");
        assert_ne!(again.nonce, sealed.nonce, "a fresh nonce per sealing");
    }

    #[test]
    fn a_rotation_rewraps_under_the_new_key_what_the_old_one_sealed() {
        let old = MasterKeys::generate();
        let new = MasterKeys::generate();
        let before = MasterKeys::parse(&old).unwrap();
        let sealed = before.seal(b"data key", b"queue 7");
        let both = MasterKeys::parse(&format!("# rotated\n{}{}", *new, *old)).unwrap();
        assert_ne!(both.current(), before.current());
        let rewrapped = both.rewrap(&sealed, b"queue 7").unwrap().unwrap();
        assert_eq!(rewrapped.key, both.current());
        assert!(both.rewrap(&rewrapped, b"queue 7").unwrap().is_none());
        let after = MasterKeys::parse(&new).unwrap();
        assert_eq!(
            after.open(&rewrapped, b"queue 7").unwrap().as_slice(),
            b"data key"
        );
    }

    #[test]
    fn a_bad_key_file_says_which_line() {
        let err = MasterKeys::parse("# none\n\n").unwrap_err();
        assert!(err.to_string().contains("no key"), "{err}");
        let err = MasterKeys::parse("c2hvcnQ=\n").unwrap_err();
        assert!(
            err.to_string().contains("line 1: a master key is 32 bytes"),
            "{err}"
        );
        let key = MasterKeys::generate();
        let err = MasterKeys::parse(&format!("{}{}", *key, *key)).unwrap_err();
        assert!(
            err.to_string().contains("line 2: the same key twice"),
            "{err}"
        );
        let err = MasterKeys::parse("%%%\n").unwrap_err();
        assert!(err.to_string().contains("line 1: not base64"), "{err}");
        let keys = MasterKeys::parse(&key).unwrap();
        assert!(!format!("{keys:?}").contains(key.trim()));
    }
}
