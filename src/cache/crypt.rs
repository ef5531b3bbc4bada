//! Encryption at rest: AES-256-GCM (ring), a fresh random nonce per entry.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// Length of an [`EncryptionKey`] in bytes.
pub const KEY_LEN: usize = 32;

/// A 256-bit answer-cache key. `Debug` prints `***`; the bytes never reach logs.
///
/// Thread-safety: `Send + Sync`; sealing and opening take `&self`.
pub struct EncryptionKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(***)")
    }
}

impl EncryptionKey {
    /// A key from the app's 32 bytes (e.g. from its own keystore).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::Config(format!(
                "the cache encryption key must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::Config("invalid AES-256-GCM key".into()))?;
        Ok(EncryptionKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key (not persisted; answers sealed with it die with the process).
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        Self::from_bytes(&bytes)
    }

    /// Loads the key file at `path` (e.g. [`crate::home::cache_key_file`]), creating it with
    /// 32 random bytes and mode 0600 when it does not exist. A file of the wrong length is an
    /// error (never silently replaced: that would orphan every cached answer).
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::File::open(path) {
            Ok(file) => return Self::read_key_file(path, file),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(&bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                tracing::info!(path = %path.display(), "created a new answer-cache key");
                Self::from_bytes(&bytes)
            }
            // Another process created it between our open and create: use theirs.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Self::read_key_file(path, file)
            }
            Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }

    fn read_key_file(path: &Path, file: std::fs::File) -> Result<Self> {
        #[cfg(unix)]
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the answer-cache key file is readable by other users; run chmod 600 on it");
            }
        }
        let mut bytes = Vec::with_capacity(KEY_LEN);
        file.take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if bytes.len() != KEY_LEN {
            return Err(Error::Config(format!(
                "the cache key file {} holds {} bytes, expected {KEY_LEN}; move it away to start a new (empty) cache",
                path.display(),
                bytes.len()
            )));
        }
        Self::from_bytes(&bytes)
    }

    /// Seals `plaintext` in place: appends the tag and returns the random nonce used.
    pub(crate) fn seal(&self, aad: &[u8], in_out: &mut Vec<u8>) -> Result<[u8; NONCE_LEN]> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| Error::Config("AES-GCM sealing failed".into()))?;
        Ok(nonce)
    }

    /// Opens `ciphertext || tag` in place; `None` when authentication fails (tampered, truncated,
    /// wrong key, or sealed under another key/AAD).
    pub(crate) fn open<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_key() {
        let k = EncryptionKey::from_bytes(&[7u8; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "EncryptionKey(***)");
        assert!(EncryptionKey::from_bytes(&[0u8; 31]).is_err());
    }

    #[test]
    fn seal_open_roundtrip_and_aad_binding() {
        let k = EncryptionKey::generate().unwrap();
        let mut buf = b"hello".to_vec();
        let nonce = k.seal(b"aad", &mut buf).unwrap();
        let mut copy = buf.clone();
        assert_eq!(k.open(nonce, b"aad", &mut buf).unwrap(), b"hello");
        assert!(k.open(nonce, b"other", &mut copy).is_none());
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("cache.key");
        let k1 = EncryptionKey::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let k2 = EncryptionKey::load_or_create(&path).unwrap();
        let mut buf = b"x".to_vec();
        let nonce = k1.seal(b"", &mut buf).unwrap();
        assert_eq!(k2.open(nonce, b"", &mut buf).unwrap(), b"x");
        std::fs::write(&path, b"short").unwrap();
        assert!(EncryptionKey::load_or_create(&path).is_err());
    }
}
