//! Decoding arbitrary stored answer-cache bytes.
//!
//! Input: `mode | budget | payload`. Every input first goes through the clear-header parser
//! and the body decoder directly; then, through a real [`SledCache`] on a temporary sled
//! database:
//! - even `mode`: a genuine sealed record is stored, then corrupted in place by the payload
//!   (`offset(2, LE) | xor mask`, or truncated at `offset` when bit 1 of `mode` is set, with
//!   the mask appended when bit 2 is set). Reading it back yields the original answer when
//!   the record is unchanged and a miss otherwise (never another answer), and the
//!   unreadable entry is dropped.
//! - odd `mode`: the payload, split on `0xFE`, is written raw into the cache's trees (a
//!   record under the key's id and under a garbage id, an access tick, an LRU key, a
//!   counter), and the cache is opened over it with a byte budget of `budget * 16`. Opening,
//!   reading, stats and a fresh put/get must all succeed; forged records are never served;
//!   the entry/byte counts match the trees.
//!
//! Properties: never panics; no error from the cache on any stored bytes.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeroute::cache::{
    CacheConfig, CacheKey, CachedAnswer, Database, EncryptionKey, Header, KeyContext, PrivacyClass,
    SledCache,
};
use edgeroute::request::{Request, Route, Usage};

const KEY: [u8; 32] = [0x5a; 32];
const TREES: [&str; 4] = ["cache/entries", "cache/atime", "cache/lru", "cache/meta"];

fn database() -> &'static Mutex<Database> {
    static DB: OnceLock<Mutex<Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let db = match sled::Config::new().temporary(true).open() {
            Ok(db) => db,
            Err(e) => panic!("cannot open a temporary sled database: {e}"),
        };
        Mutex::new(Database::from_sled(db, "fuzz-temporary"))
    })
}

fn cache_key(prompt: &str, privacy: PrivacyClass) -> CacheKey {
    CacheKey::new(
        &Request::new(prompt),
        &KeyContext {
            model: "m",
            policy_version: "fuzz",
            privacy,
            normalize: true,
        },
    )
}

fn config(max_bytes: u64) -> CacheConfig {
    CacheConfig {
        ttl: None,
        max_bytes,
        cache_pii: true,
        ..CacheConfig::default()
    }
}

fn answer(text: &str) -> CachedAnswer {
    CachedAnswer {
        created_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        ..CachedAnswer::new(text, Route::Cloud, "gpt-fuzz", Usage::new(3, 5))
    }
}

/// The id the cache stores `key` under (a keyed hash of its digest).
fn entry_id(key: &CacheKey) -> [u8; 32] {
    match EncryptionKey::from_bytes(&KEY) {
        Ok(k) => k.entry_id(key),
        Err(e) => panic!("the fixed test key is valid: {e}"),
    }
}

fn open(db: &Database, max_bytes: u64) -> SledCache {
    let key = match EncryptionKey::from_bytes(&KEY) {
        Ok(k) => k,
        Err(e) => panic!("fixed key rejected: {e}"),
    };
    match SledCache::open(db, key, config(max_bytes)) {
        Ok(c) => c,
        Err(e) => panic!("the cache does not open over stored bytes: {e}"),
    }
}

fn ok<T>(r: edgeroute::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

fn tree(db: &Database, name: &str) -> sled::Tree {
    match db.sled().open_tree(name) {
        Ok(t) => t,
        Err(e) => panic!("open_tree {name}: {e}"),
    }
}

fn wipe(db: &Database) {
    for name in TREES {
        if let Err(e) = tree(db, name).clear() {
            panic!("clear {name}: {e}");
        }
    }
}

/// The entry/byte counts the cache reports equal what its trees hold.
fn assert_counts(db: &Database, cache: &SledCache) {
    let stats = ok(cache.stats(), "stats");
    let entries = tree(db, TREES[0]);
    let mut bytes = 0u64;
    for item in entries.iter() {
        let Ok((k, v)) = item else {
            panic!("iterating entries");
        };
        bytes += (k.len() + v.len()) as u64;
    }
    assert_eq!(stats.entries, entries.len() as u64, "entry count");
    assert_eq!(stats.bytes, bytes, "byte count");
}

/// Checks one input.
pub fn check(data: &[u8]) {
    decode_direct(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&budget, payload)) = rest.split_first() else {
        return;
    };
    let guard = match database().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let db = &*guard;
    wipe(db);
    if mode % 2 == 0 {
        corrupted_genuine(db, mode, payload);
    } else {
        raw_trees(db, u64::from(budget) * 16, payload);
    }
}

/// The header parser and the body decoder on the raw bytes.
fn decode_direct(data: &[u8]) {
    if let Some(h) = Header::parse(data) {
        assert!(
            data.len() >= 1 + 1 + 8 + 12 + 16,
            "a header needs room for nonce and tag"
        );
        assert_eq!(
            h.created_at()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis()),
            Some(u128::from(h.created_at_ms))
        );
        let _ = h.age(SystemTime::now());
    }
    if let Some(a) = CachedAnswer::decode_body(data, UNIX_EPOCH) {
        assert_eq!(a.encode_body(), data, "decode then encode is the identity");
    }
}

fn corrupted_genuine(db: &Database, mode: u8, payload: &[u8]) {
    let privacy = if mode & 8 == 0 {
        PrivacyClass::Public
    } else {
        PrivacyClass::Private
    };
    let key = cache_key("what is the capital of France?", privacy);
    let original = answer("Paris.");
    let cache = open(db, 1 << 20);
    ok(cache.put(&key, &original), "put");
    let entries = tree(db, TREES[0]);
    let id = &entry_id(&key)[..];
    let Ok(Some(stored)) = entries.get(id) else {
        panic!("the sealed record is not stored");
    };
    let mut record = stored.to_vec();
    let (offset, mask) = match payload {
        [a, b, mask @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), mask),
        _ => (0, payload),
    };
    let offset = offset % (record.len() + 1);
    if mode & 2 != 0 {
        record.truncate(offset);
    } else {
        for (i, m) in mask.iter().enumerate() {
            if let Some(b) = record.get_mut(offset + i) {
                *b ^= m;
            }
        }
    }
    if mode & 4 != 0 {
        record.extend_from_slice(mask);
    }
    let unchanged = record == stored.as_ref();
    if let Err(e) = entries.insert(id, record) {
        panic!("raw insert: {e}");
    }
    let got = ok(cache.get(&key), "get");
    if unchanged {
        assert_eq!(got, Some(original), "an intact record reads back");
    } else {
        assert_eq!(got, None, "a corrupted record was served");
        assert!(
            matches!(entries.get(id), Ok(None)),
            "the unreadable entry is dropped"
        );
        let stats = ok(cache.stats(), "stats");
        assert_eq!(stats.rejected, 1, "the rejection is counted");
    }
    drop(cache);
    // Reopening recounts whatever is left.
    let cache = open(db, 1 << 20);
    assert_counts(db, &cache);
}

fn raw_trees(db: &Database, max_bytes: u64, payload: &[u8]) {
    let mut parts = payload.split(|b| *b == 0xFE);
    let record = parts.next().unwrap_or_default();
    let garbage_id = parts.next().unwrap_or_default();
    let tick = parts.next().unwrap_or_default();
    let lru = parts.next().unwrap_or_default();
    let counter = parts.next().unwrap_or_default();

    let key = cache_key("raw", PrivacyClass::Public);
    let id = &entry_id(&key)[..];
    // A cache opened once marks its ids as keyed, so the raw records below are read as this
    // version's; without the mark (a tick starting with 0xFF) they are an earlier version's,
    // which the next open removes.
    if tick.first() != Some(&0xFF) {
        drop(open(db, max_bytes));
    }
    let insert = |name: &str, k: &[u8], v: &[u8]| {
        if let Err(e) = tree(db, name).insert(k, v) {
            panic!("raw insert into {name}: {e}");
        }
    };
    insert(TREES[0], id, record);
    insert(TREES[0], garbage_id, record);
    insert(TREES[1], id, tick);
    insert(TREES[1], garbage_id, tick);
    let mut lru_key = lru.to_vec();
    lru_key.extend_from_slice(id);
    insert(TREES[2], &lru_key, b"");
    insert(TREES[2], lru, b"");
    insert(TREES[3], b"hits", counter);
    insert(TREES[3], b"rejected", counter);

    let cache = open(db, max_bytes);
    assert_counts(db, &cache);
    assert_eq!(
        ok(cache.get(&key), "get"),
        None,
        "a forged record was served"
    );
    let _ = ok(cache.stats(), "stats");
    assert_counts(db, &cache);
    // The cache still works over the leftovers.
    let fresh = cache_key("fresh", PrivacyClass::Public);
    let a = answer("still works");
    ok(cache.put(&fresh, &a), "put");
    let got = ok(cache.get(&fresh), "get");
    assert!(got.is_none() || got == Some(a), "another answer was served");
    assert_counts(db, &cache);
    drop(cache);
    let cache = open(db, max_bytes);
    assert_counts(db, &cache);
}
