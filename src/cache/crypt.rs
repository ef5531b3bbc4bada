//! Encryption at rest: AES-256-GCM (ring), a fresh random nonce per entry.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::key::CacheKey;

use crate::error::{Error, Result};

/// Length of an [`EncryptionKey`] in bytes.
pub const KEY_LEN: usize = 32;

/// A 256-bit answer-cache key. `Debug` prints `***`; the bytes never reach logs.
///
/// Thread-safety: `Send + Sync`; sealing and opening take `&self`.
pub struct EncryptionKey {
    key: LessSafeKey,
    /// Derived from the same 32 bytes: turns a cache key's digest into the id an entry is
    /// stored under (see [`EncryptionKey::entry_id`]).
    ids: hmac::Key,
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
        // A separate key for ids (HMAC of a label under the file's key), so the AES key is
        // never used for anything but AES-GCM.
        let ids = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"edgeroute/cache-entry-id/v1",
        );
        Ok(EncryptionKey {
            key: LessSafeKey::new(unbound),
            ids: hmac::Key::new(hmac::HMAC_SHA256, ids.as_ref()),
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
            crate::home::create_private_dirs(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        // Written to a private temporary file, synced, then linked into place: the key file
        // either does not exist or holds all 32 bytes, whatever crashes or races. (Linking
        // fails if another process created it meanwhile; then theirs is used.)
        // A name no other creator (process or thread) uses.
        let mut nonce = [0u8; 8];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        let suffix: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension(format!("tmp-{}-{suffix}", std::process::id()));
        let written = write_private(&tmp, &bytes);
        let mut linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        if linked
            .as_ref()
            .is_err_and(|e| e.kind() != ErrorKind::AlreadyExists)
        {
            // A file system without hard links: create the file in place instead.
            linked = write_private(path, &bytes);
        }
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    // Make the new name durable too (best effort: not every file system can).
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                tracing::info!(path = %path.display(), "created a new answer-cache key");
                Self::from_bytes(&bytes)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let file = std::fs::File::open(path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Self::read_key_file(path, file)
            }
            Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }

    /// Replaces the key file at `path` with a new random key (mode 0600, written to a
    /// temporary file, synced and renamed into place) and returns it. Whatever was sealed
    /// with the old key — entries removed from the database that its append-only log still
    /// holds on disk — can no longer be read. Used by `edgeroute cache clear`; only while no
    /// other process uses the key (the database lock ensures that).
    pub fn replace_file(path: &Path) -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Config("the system random generator failed".into()))?;
        let tmp = path.with_extension(format!("tmp-{}-new", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = write_private(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(format!("replacing {}", path.display()), e));
        }
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Self::from_bytes(&bytes)
    }

    /// The id the answer cache stores `key`'s entry under: HMAC-SHA256 of the key's digest
    /// with a key derived from this one. The digest itself is a plain hash of the prompt, the
    /// model and the policy, so storing it would let anyone who can read the database check
    /// whether a guessed prompt was asked; the id cannot be computed without the key file.
    pub fn entry_id(&self, key: &CacheKey) -> [u8; 32] {
        let tag = hmac::sign(&self.ids, key.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(tag.as_ref());
        id
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

/// Creates `path` (an existing file is an `AlreadyExists` error) readable by its owner only,
/// writes `bytes` and syncs.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A replaced key file holds a new key, private, and nothing of the old one remains.
    #[test]
    fn a_replaced_key_file_holds_a_new_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.key");
        let old = EncryptionKey::load_or_create(&path).unwrap();
        let new = EncryptionKey::replace_file(&path).unwrap();
        let key = CacheKey::new(
            &crate::request::Request::new("q"),
            &crate::cache::key::KeyContext {
                model: "m",
                policy_version: "v",
                privacy: crate::cache::key::PrivacyClass::Public,
                normalize: true,
            },
        );
        assert_ne!(old.entry_id(&key), new.entry_id(&key));
        let reloaded = EncryptionKey::load_or_create(&path).unwrap();
        assert_eq!(reloaded.entry_id(&key), new.entry_id(&key));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
    }

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

    /// Racing creators (threads of one process here) all end up with the one key that was
    /// linked into place, and no temporary file is left behind.
    #[test]
    fn key_file_creation_is_atomic_under_races() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.key");
        let keys: Vec<EncryptionKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| EncryptionKey::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut buf = b"same key".to_vec();
        let nonce = keys[0].seal(b"", &mut buf).unwrap();
        for k in &keys[1..] {
            let mut copy = buf.clone();
            assert_eq!(k.open(nonce, b"", &mut copy).unwrap(), b"same key");
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["cache.key"], "temporary files left behind");
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
