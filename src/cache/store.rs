//! [`CacheStore`] and its sled implementation, [`SledCache`].
//!
//! Trees (all prefixed `cache/` so the ledger can share the database):
//! - `cache/entries`: entry id → sealed record (see `record.rs`);
//! - `cache/atime`: entry id → last-access tick (u64 BE, from `Db::generate_id`);
//! - `cache/lru`: tick ‖ entry id → `[]`, iterated oldest first to evict;
//! - `cache/meta`: persisted counters (hits, misses, evictions, expired, rejected) and the
//!   format of the ids.
//!
//! An entry id is a keyed hash of the cache key's digest ([`EncryptionKey::entry_id`]), never
//! the digest itself: the digest is a plain hash of the prompt, model and policy, which anyone
//! able to read the database could recompute for a guessed prompt.
//!
//! No sled transactions (they take a process-wide lock and cost ~20x a plain insert). Instead
//! the invariant "a live entry has an `atime` tick and an `lru` record for that tick" is kept by
//! ordering: a put writes the entry, then `atime`, then `lru`; a removal compare-and-swaps the
//! entry away, then compare-and-swaps `atime` only if it still holds the tick it saw. Stale or
//! orphan access records are harmless: the eviction scan validates each `lru` record against
//! `atime` and `entries` and drops the stale ones. A crash between the steps is repaired when
//! the store opens, which also recounts entries and bytes from the entries tree, so the counts
//! survive crashes exactly.
//!
//! A hit refreshes the access tick only when the entry is not already among the most recently
//! used quarter (by tick distance): hot entries cost one read instead of three writes, and the
//! eviction order differs from exact LRU only inside that most-recent quarter, which is evicted
//! last anyway.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::crypt::EncryptionKey;
use super::db::{storage, Database};
use super::key::{CacheKey, PrivacyClass};
use super::record::{open_record, seal_record, CachedAnswer};
use crate::error::Result;

/// Whether the cache is read, written, both or neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Read and write (default).
    #[default]
    On,
    /// Neither read nor write.
    Off,
    /// Serve hits, never store new answers.
    ReadOnly,
    /// Store new answers, never serve them (warming a cache, or A/B measuring).
    WriteOnly,
}

impl CacheMode {
    /// True when lookups are served.
    pub fn reads(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::ReadOnly)
    }
    /// True when answers are stored.
    pub fn writes(self) -> bool {
        matches!(self, CacheMode::On | CacheMode::WriteOnly)
    }
    /// The policy-file name (`on`, `off`, `read_only`, `write_only`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::On => "on",
            CacheMode::Off => "off",
            CacheMode::ReadOnly => "read_only",
            CacheMode::WriteOnly => "write_only",
        }
    }
}

/// Cache behaviour. Build with `CacheConfig::default()` and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Read/write mode. Default: [`CacheMode::On`].
    pub mode: CacheMode,
    /// How long an answer stays servable, measured from when it was produced; `None` = forever.
    /// Checked on read, so shortening it takes effect immediately. Default: 24 hours.
    pub ttl: Option<Duration>,
    /// Byte budget (key + stored record bytes); least recently used entries are evicted above it.
    /// An answer larger than the whole budget is not stored. Default: 64 MiB.
    pub max_bytes: u64,
    /// Normalise message text before hashing (NFC, line endings, trailing whitespace and blank
    /// lines at both ends; indentation kept: see [`super::normalize_text`]). Default: `true`.
    pub normalize: bool,
    /// Cache answers to requests that contained PII ([`PrivacyClass::Private`]); they are
    /// encrypted like every entry and never served to public requests. Default: `false`.
    pub cache_pii: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::On,
            ttl: Some(Duration::from_secs(24 * 60 * 60)),
            max_bytes: 64 * 1024 * 1024,
            normalize: true,
            cache_pii: false,
        }
    }
}

impl CacheConfig {
    /// True when a request of `class` may be looked up.
    pub fn reads(&self, class: PrivacyClass) -> bool {
        self.mode.reads() && (class == PrivacyClass::Public || self.cache_pii)
    }
    /// True when an answer to a request of `class` may be stored.
    pub fn writes(&self, class: PrivacyClass) -> bool {
        self.mode.writes() && (class == PrivacyClass::Public || self.cache_pii)
    }
}

/// Cache statistics (`edgeroute cache stats --json` prints this).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheStats {
    /// Current mode.
    pub mode: CacheMode,
    /// Entries stored.
    pub entries: u64,
    /// Bytes stored (keys + records).
    pub bytes: u64,
    /// The byte budget.
    pub max_bytes: u64,
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that found nothing servable (absent, expired or rejected).
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there were no lookups.
    pub hit_rate: f64,
    /// Entries evicted to stay under the byte budget.
    pub evictions: u64,
    /// Entries dropped because their TTL had passed.
    pub expired: u64,
    /// Entries dropped because they failed to open or decode (tampered, truncated, wrong key).
    pub rejected: u64,
}

/// An answer cache. Implementations must be safe to share between threads.
pub trait CacheStore: Send + Sync {
    /// Looks `key` up. `Ok(None)` on a miss, when the mode does not read, or when the key's
    /// privacy class is not cached. A stored entry that fails to open is removed and is a miss.
    fn get(&self, key: &CacheKey) -> Result<Option<CachedAnswer>>;
    /// Stores `answer` under `key` (a no-op when the mode does not write or the class is not
    /// cached), evicting least recently used entries beyond the byte budget.
    fn put(&self, key: &CacheKey, answer: &CachedAnswer) -> Result<()>;
    /// Current statistics.
    fn stats(&self) -> Result<CacheStats>;
    /// Removes every entry and resets the counters. The database's log may still hold the
    /// removed records' (encrypted) bytes until it compacts them: replace the encryption key
    /// too ([`crate::cache::EncryptionKey::replace_file`], as `edgeroute cache clear` does) to
    /// make them unreadable.
    fn clear(&self) -> Result<()>;
}

const COUNTER_NAMES: [&str; 5] = ["hits", "misses", "evictions", "expired", "rejected"];
const HITS: usize = 0;
const MISSES: usize = 1;
const EVICTIONS: usize = 2;
const EXPIRED: usize = 3;
const REJECTED: usize = 4;
/// The first 6 bytes of an entry id in hex, for logs. Never the key's digest: that is a plain
/// hash of the prompt, which a reader of the logs could recompute for a guessed prompt.
fn short_id(id: &[u8]) -> String {
    id.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The `cache/meta` record saying entry ids are keyed (see `SledCache::drop_unkeyed_entries`).
const IDS_MARK: &[u8] = b"ids";
const IDS_KEYED: &[u8] = b"hmac-sha256/v1";
/// Pending counter increments are written to `cache/meta` every this many lookups.
const PERSIST_EVERY: u64 = 1024;

/// The sled answer cache.
///
/// Thread-safety: `Send + Sync`; share it behind an `Arc`. Several `SledCache`s may be opened on
/// one [`sled::Db`] (counters are merged, not overwritten), but only one process can open the
/// database (sled holds a file lock).
pub struct SledCache {
    db: sled::Db,
    path: PathBuf,
    entries: sled::Tree,
    atime: sled::Tree,
    lru: sled::Tree,
    meta: sled::Tree,
    key: EncryptionKey,
    config: RwLock<CacheConfig>,
    /// Counts shared by every `SledCache` on this database (see [`Tally`]).
    tally: Arc<Tally>,
}

/// What the caches of one database count together: two routers on one home (one shared
/// [`Database`]) enforce one byte budget, report one set of statistics and evict one at a time.
#[derive(Default)]
pub(crate) struct Tally {
    entry_count: AtomicU64,
    bytes: AtomicU64,
    /// Increments not yet merged into `cache/meta`.
    pending: [AtomicU64; 5],
    lookups: AtomicU64,
    evicting: Mutex<()>,
}

impl std::fmt::Debug for SledCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledCache")
            .field("path", &self.path)
            .field("entries", &self.tally.entry_count.load(Ordering::Relaxed))
            .field("bytes", &self.tally.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SledCache {
    /// Opens the cache in `db` (see [`Database::open`]), sealing entries with `key`.
    ///
    /// Counts entries and bytes and repairs access records left inconsistent by a crash when
    /// no other cache is open on this [`Database`] (cost: one scan of the entries); caches
    /// opened while one is share its counts, byte budget and eviction. Opening never evicts (so a tool opening the cache with a default
    /// config, e.g. for `cache stats`, cannot shrink it): a budget smaller than the content is
    /// enforced at the next `put` or [`SledCache::set_config`].
    pub fn open(db: &Database, key: EncryptionKey, config: CacheConfig) -> Result<Self> {
        let path = db.path().to_path_buf();
        // The first cache open on this database counts (and repairs); others share its counts.
        let (tally, first) = db.cache_tally();
        let tree = |name: &str| db.sled().open_tree(name).map_err(|e| storage(&path, e));
        let cache = SledCache {
            entries: tree("cache/entries")?,
            atime: tree("cache/atime")?,
            lru: tree("cache/lru")?,
            meta: tree("cache/meta")?,
            db: db.sled().clone(),
            path,
            key,
            config: RwLock::new(config),
            tally: Arc::clone(&tally),
        };
        if first {
            cache.drop_unkeyed_entries()?;
            cache.recount()?;
        }
        Ok(cache)
    }

    /// Entries written before ids were keyed (stored under the bare digest) can never be found
    /// again, and their ids are the guessable digests: removed once, on the first open by a
    /// version that keys ids, which then marks the tree.
    fn drop_unkeyed_entries(&self) -> Result<()> {
        let err = |e| storage(&self.path, e);
        if self.meta.get(IDS_MARK).map_err(err)?.as_deref() == Some(IDS_KEYED) {
            return Ok(());
        }
        let old = self.entries.len();
        if old > 0 {
            let _guard = lock(&self.tally.evicting);
            for tree in [&self.entries, &self.atime, &self.lru] {
                tree.clear().map_err(err)?;
            }
            tracing::info!(
                entries = old,
                "removed answer-cache entries of an earlier version (unreadable by this one)"
            );
        }
        self.mark_ids_keyed()
    }

    /// Records in `cache/meta` that entry ids are keyed.
    fn mark_ids_keyed(&self) -> Result<()> {
        self.meta
            .insert(IDS_MARK, IDS_KEYED)
            .map_err(|e| storage(&self.path, e))?;
        Ok(())
    }

    /// The current configuration.
    pub fn config(&self) -> CacheConfig {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the configuration (e.g. after a policy reload); evicts if the budget shrank.
    pub fn set_config(&self, config: CacheConfig) -> Result<()> {
        match self.config.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        self.evict_to_budget()
    }

    /// Writes pending counters and flushes the database to disk.
    pub fn flush(&self) -> Result<()> {
        self.persist_counters()?;
        self.db.flush().map_err(|e| storage(&self.path, e))?;
        Ok(())
    }

    /// Looks `key` up. See [`CacheStore::get`].
    pub fn get(&self, key: &CacheKey) -> Result<Option<CachedAnswer>> {
        let config = self.config();
        if !config.reads(key.privacy()) {
            return Ok(None);
        }
        let id = self.key.entry_id(key);
        let found = self.entries.get(id).map_err(|e| storage(&self.path, e))?;
        let outcome = match found {
            None => None,
            Some(stored) => self.check(key, &id, &stored, &config)?,
        };
        let counter = if outcome.is_some() { HITS } else { MISSES };
        self.bump(counter, 1)?;
        if outcome.is_some() {
            self.touch(&id)?;
        }
        Ok(outcome)
    }

    /// Validates a stored record: unreadable or expired ones are removed (a miss).
    ///
    /// Authentication comes first, so a tampered header is reported as tampering (with a
    /// warning), never mistaken for an expired entry.
    fn check(
        &self,
        key: &CacheKey,
        id: &[u8],
        stored: &sled::IVec,
        config: &CacheConfig,
    ) -> Result<Option<CachedAnswer>> {
        let answer = match open_record(&self.key, key, stored) {
            Ok(answer) => answer,
            Err(why) => {
                tracing::warn!(entry = %short_id(id), reason = why.as_str(), "dropping an unreadable answer-cache entry (tampered, truncated or sealed with another key)");
                if self.remove_if(id, stored)? {
                    self.bump(REJECTED, 1)?;
                }
                return Ok(None);
            }
        };
        let age = SystemTime::now()
            .duration_since(answer.created_at)
            .unwrap_or_default();
        if config.ttl.is_some_and(|ttl| age > ttl) {
            if self.remove_if(id, stored)? {
                self.bump(EXPIRED, 1)?;
            }
            return Ok(None);
        }
        Ok(Some(answer))
    }

    /// Stores `answer`. See [`CacheStore::put`].
    pub fn put(&self, key: &CacheKey, answer: &CachedAnswer) -> Result<()> {
        let config = self.config();
        if !config.writes(key.privacy()) {
            return Ok(());
        }
        let record = seal_record(&self.key, key, answer)?;
        let id = &self.key.entry_id(key)[..];
        let size = (id.len() + record.len()) as u64;
        if size > config.max_bytes {
            tracing::debug!(entry = %short_id(id), size, "answer larger than the cache budget; not cached");
            return Ok(());
        }
        // Count first, correct after: a concurrent removal of this very entry then never
        // subtracts from counts that do not include it yet.
        self.tally.bytes.fetch_add(size, Ordering::AcqRel);
        self.tally.entry_count.fetch_add(1, Ordering::AcqRel);
        let old = self.entries.insert(id, record.as_slice());
        match old {
            Ok(None) => {}
            Ok(Some(old)) => {
                sub(&self.tally.bytes, (id.len() + old.len()) as u64);
                sub(&self.tally.entry_count, 1);
            }
            Err(e) => {
                sub(&self.tally.bytes, size);
                sub(&self.tally.entry_count, 1);
                return Err(storage(&self.path, e));
            }
        }
        self.set_access(id)?;
        if self.tally.bytes.load(Ordering::Acquire) > config.max_bytes {
            self.evict_to_budget()?;
        }
        Ok(())
    }

    /// Current statistics. See [`CacheStore::stats`].
    pub fn stats(&self) -> Result<CacheStats> {
        let mut totals = [0u64; 5];
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            let stored = self
                .meta
                .get(name)
                .map_err(|e| storage(&self.path, e))?
                .map(|v| decode_u64(&v))
                .unwrap_or(0);
            totals[i] = stored.saturating_add(self.tally.pending[i].load(Ordering::Acquire));
        }
        // Saturating: the stored counters are read from disk, whatever they hold.
        let lookups = totals[HITS].saturating_add(totals[MISSES]);
        let config = self.config();
        Ok(CacheStats {
            mode: config.mode,
            entries: self.tally.entry_count.load(Ordering::Acquire),
            bytes: self.tally.bytes.load(Ordering::Acquire),
            max_bytes: config.max_bytes,
            hits: totals[HITS],
            misses: totals[MISSES],
            hit_rate: if lookups == 0 {
                0.0
            } else {
                totals[HITS] as f64 / lookups as f64
            },
            evictions: totals[EVICTIONS],
            expired: totals[EXPIRED],
            rejected: totals[REJECTED],
        })
    }

    /// Removes every entry and resets the counters. See [`CacheStore::clear`].
    pub fn clear(&self) -> Result<()> {
        let _guard = lock(&self.tally.evicting);
        for tree in [&self.entries, &self.atime, &self.lru, &self.meta] {
            tree.clear().map_err(|e| storage(&self.path, e))?;
        }
        self.mark_ids_keyed()?;
        for p in &self.tally.pending {
            p.store(0, Ordering::Release);
        }
        drop(_guard);
        self.recount()
    }

    /// A fresh, monotonically increasing access tick.
    fn tick(&self) -> Result<u64> {
        self.db.generate_id().map_err(|e| storage(&self.path, e))
    }

    /// Marks `id` as just used, unless it already is among the most recent quarter.
    fn touch(&self, id: &[u8]) -> Result<()> {
        let current = self.atime.get(id).map_err(|e| storage(&self.path, e))?;
        if let Some(tick) = current.as_deref().and_then(decode_tick) {
            let now = self.tick()?;
            let recent = self.tally.entry_count.load(Ordering::Acquire) / 4;
            if now.saturating_sub(tick) <= recent {
                return Ok(());
            }
        }
        self.set_access(id)
    }

    /// Gives `id` a fresh access tick: `atime` first, then the `lru` record.
    fn set_access(&self, id: &[u8]) -> Result<()> {
        let tick = self.tick()?.to_be_bytes();
        let old = self
            .atime
            .insert(id, &tick[..])
            .map_err(|e| storage(&self.path, e))?;
        if let Some(old) = old {
            self.lru
                .remove(lru_key(&old, id))
                .map_err(|e| storage(&self.path, e))?;
        }
        self.lru
            .insert(lru_key(&tick, id), &[][..])
            .map_err(|e| storage(&self.path, e))?;
        Ok(())
    }

    /// Removes entry `id` if it still holds `expected`; true when this call removed it.
    fn remove_if(&self, id: &[u8], expected: &[u8]) -> Result<bool> {
        let tick = self.atime.get(id).map_err(|e| storage(&self.path, e))?;
        let swapped = self
            .entries
            .compare_and_swap(id, Some(expected), None::<&[u8]>)
            .map_err(|e| storage(&self.path, e))?;
        if swapped.is_err() {
            return Ok(false); // replaced or removed meanwhile
        }
        sub(&self.tally.bytes, (id.len() + expected.len()) as u64);
        sub(&self.tally.entry_count, 1);
        if let Some(tick) = tick {
            // Only if no put/touch gave it a new tick since (that one owns its lru record).
            let _ = self
                .atime
                .compare_and_swap(id, Some(&tick), None::<&[u8]>)
                .map_err(|e| storage(&self.path, e))?;
            self.lru
                .remove(lru_key(&tick, id))
                .map_err(|e| storage(&self.path, e))?;
        }
        Ok(true)
    }

    /// Evicts least recently used entries until the byte budget holds.
    ///
    /// One evictor runs at a time; a put that finds it busy leaves the work to it, and the
    /// evictor re-checks the budget after releasing the lock so no such put is left over budget.
    fn evict_to_budget(&self) -> Result<()> {
        let max = self.config().max_bytes;
        while self.tally.bytes.load(Ordering::Acquire) > max {
            let Ok(guard) = self.tally.evicting.try_lock() else {
                return Ok(());
            };
            let evicted = self.evict_locked(max)?;
            drop(guard);
            if evicted == 0 {
                // Nothing evictable found (all access records stale): stop rather than spin.
                break;
            }
        }
        Ok(())
    }

    fn evict_locked(&self, max: u64) -> Result<u64> {
        let mut evicted = 0u64;
        let mut cursor = self.lru.iter();
        while self.tally.bytes.load(Ordering::Acquire) > max {
            let Some(item) = cursor.next() else { break };
            let (lru_id, _) = item.map_err(|e| storage(&self.path, e))?;
            if lru_id.len() != 8 + 32 {
                self.lru
                    .remove(&lru_id)
                    .map_err(|e| storage(&self.path, e))?;
                continue;
            }
            let (tick, id) = lru_id.split_at(8);
            let current = self.atime.get(id).map_err(|e| storage(&self.path, e))?;
            if current.as_deref() != Some(tick) {
                // Stale access record (superseded by a later touch, or its entry is gone).
                self.lru
                    .remove(&lru_id)
                    .map_err(|e| storage(&self.path, e))?;
                continue;
            }
            let Some(stored) = self.entries.get(id).map_err(|e| storage(&self.path, e))? else {
                // Orphan access record (a crash between trees): drop it.
                self.atime
                    .compare_and_swap(id, Some(tick), None::<&[u8]>)
                    .map_err(|e| storage(&self.path, e))?
                    .ok();
                self.lru
                    .remove(&lru_id)
                    .map_err(|e| storage(&self.path, e))?;
                continue;
            };
            if self.remove_if(id, &stored)? {
                evicted += 1;
            }
        }
        if evicted > 0 {
            tracing::debug!(
                evicted,
                "answer cache evicted entries to stay under its byte budget"
            );
            self.bump(EVICTIONS, evicted)?;
        }
        Ok(evicted)
    }

    /// Recomputes entry/byte counts and repairs access records (run at open and after clear).
    fn recount(&self) -> Result<()> {
        let _guard = lock(&self.tally.evicting);
        let (mut count, mut bytes) = (0u64, 0u64);
        for item in self.entries.iter() {
            let (id, value) = item.map_err(|e| storage(&self.path, e))?;
            count += 1;
            bytes += (id.len() + value.len()) as u64;
            let has_access = self
                .atime
                .contains_key(&id)
                .map_err(|e| storage(&self.path, e))?;
            if !has_access {
                self.set_access(&id)?;
            }
        }
        for item in self.atime.iter() {
            let (id, tick) = item.map_err(|e| storage(&self.path, e))?;
            let live = self
                .entries
                .contains_key(&id)
                .map_err(|e| storage(&self.path, e))?;
            if !live {
                self.atime.remove(&id).map_err(|e| storage(&self.path, e))?;
                self.lru
                    .remove(lru_key(&tick, &id))
                    .map_err(|e| storage(&self.path, e))?;
            }
        }
        self.tally.entry_count.store(count, Ordering::Release);
        self.tally.bytes.store(bytes, Ordering::Release);
        Ok(())
    }

    fn bump(&self, counter: usize, by: u64) -> Result<()> {
        self.tally.pending[counter].fetch_add(by, Ordering::AcqRel);
        if counter <= MISSES
            && self.tally.lookups.fetch_add(1, Ordering::AcqRel) % PERSIST_EVERY == 0
        {
            self.persist_counters()?;
        }
        Ok(())
    }

    /// Merges pending counter increments into `cache/meta`.
    fn persist_counters(&self) -> Result<()> {
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            let delta = self.tally.pending[i].swap(0, Ordering::AcqRel);
            if delta == 0 {
                continue;
            }
            self.meta
                .update_and_fetch(name, |old| {
                    let v = old.map(decode_u64).unwrap_or(0).saturating_add(delta);
                    Some(v.to_le_bytes().to_vec())
                })
                .map_err(|e| storage(&self.path, e))?;
        }
        Ok(())
    }
}

impl Drop for SledCache {
    fn drop(&mut self) {
        if let Err(e) = self.persist_counters() {
            tracing::warn!(error = %e, "could not save answer-cache counters");
        }
    }
}

impl CacheStore for SledCache {
    fn get(&self, key: &CacheKey) -> Result<Option<CachedAnswer>> {
        SledCache::get(self, key)
    }
    fn put(&self, key: &CacheKey, answer: &CachedAnswer) -> Result<()> {
        SledCache::put(self, key, answer)
    }
    fn stats(&self) -> Result<CacheStats> {
        SledCache::stats(self)
    }
    fn clear(&self) -> Result<()> {
        SledCache::clear(self)
    }
}

/// Saturating atomic subtraction (counts never wrap, even if something wrote the trees behind
/// the cache's back; the next open recounts exactly).
fn sub(counter: &AtomicU64, by: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(by))
    });
}

fn lru_key(tick: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tick.len() + id.len());
    k.extend_from_slice(tick);
    k.extend_from_slice(id);
    k
}

fn decode_tick(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
