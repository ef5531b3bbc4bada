//! The sled answer cache on a real on-disk database: hits, misses, TTL, LRU eviction under the
//! byte budget, modes, privacy classes, tamper and wrong-key detection, concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgeroute::cache::{
    CacheConfig, CacheKey, CacheMode, CacheStore, CachedAnswer, Database, EncryptionKey,
    KeyContext, PrivacyClass, SledCache,
};
use edgeroute::request::{Request, Route, Usage};

const KEY_A: [u8; 32] = [0xA5; 32];
const KEY_B: [u8; 32] = [0x5A; 32];

fn key(prompt: &str, privacy: PrivacyClass) -> CacheKey {
    CacheKey::new(
        &Request::new(prompt),
        &KeyContext {
            model: "local=smollm2;cloud=gpt-4o-mini",
            policy_version: "test-1",
            privacy,
            normalize: true,
        },
    )
}

fn public(prompt: &str) -> CacheKey {
    key(prompt, PrivacyClass::Public)
}

fn answer(text: &str) -> CachedAnswer {
    CachedAnswer::new(text, Route::Cloud, "gpt-4o-mini", Usage::new(12, 34))
}

fn config() -> CacheConfig {
    CacheConfig {
        ttl: Some(Duration::from_secs(3600)),
        ..CacheConfig::default()
    }
}

fn open(dir: &std::path::Path, key: [u8; 32], config: CacheConfig) -> (Database, SledCache) {
    let db = Database::open(dir).unwrap();
    let cache = SledCache::open(&db, EncryptionKey::from_bytes(&key).unwrap(), config).unwrap();
    (db, cache)
}

/// Every stored (key, value) pair, straight from sled.
fn raw_entries(db: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.sled()
        .open_tree("cache/entries")
        .unwrap()
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn hit_and_miss_and_persistence_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, cache) = open(dir.path(), KEY_A, config());
        assert_eq!(cache.get(&public("capital of France?")).unwrap(), None);
        let a = answer("Paris.");
        cache.put(&public("capital of France?"), &a).unwrap();
        // Normalised prompt: same key.
        let hit = cache
            .get(&public("\r\ncapital of France?  \r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(hit.text, "Paris.");
        assert_eq!(hit.route, Route::Cloud);
        assert_eq!(hit.model, "gpt-4o-mini");
        assert_eq!(hit.usage, a.usage);
        assert_eq!(cache.get(&public("capital of Spain?")).unwrap(), None);
        let s = cache.stats().unwrap();
        assert_eq!((s.entries, s.hits, s.misses), (1, 1, 2));
        assert!((s.hit_rate - 1.0 / 3.0).abs() < 1e-9);
        cache.flush().unwrap();
    }
    // Entries and counters survive a reopen.
    let (db, cache) = open(dir.path(), KEY_A, config());
    assert_eq!(
        cache
            .get(&public("capital of France?"))
            .unwrap()
            .unwrap()
            .text,
        "Paris."
    );
    let s = cache.stats().unwrap();
    assert_eq!((s.entries, s.hits, s.misses), (1, 2, 2));
    // The stored bytes are not the plaintext.
    let (_, value) = &raw_entries(&db)[0];
    assert!(!value.windows(6).any(|w| w == b"Paris."));
    assert_eq!(s.bytes, (32 + value.len()) as u64);
}

#[test]
fn ttl_expiry_removes_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, cache) = open(dir.path(), KEY_A, config());
    let mut old = answer("stale");
    old.created_at = SystemTime::now() - Duration::from_secs(7200);
    let mut fresh = answer("fresh");
    fresh.created_at = SystemTime::now() - Duration::from_secs(1800);
    cache.put(&public("old"), &old).unwrap();
    cache.put(&public("new"), &fresh).unwrap();
    assert_eq!(cache.get(&public("old")).unwrap(), None);
    assert_eq!(cache.get(&public("new")).unwrap().unwrap().text, "fresh");
    let s = cache.stats().unwrap();
    assert_eq!((s.entries, s.expired, s.hits, s.misses), (1, 1, 1, 1));
    // Shortening the TTL takes effect on the next read.
    cache
        .set_config(CacheConfig {
            ttl: Some(Duration::from_secs(600)),
            ..config()
        })
        .unwrap();
    assert_eq!(cache.get(&public("new")).unwrap(), None);
    assert_eq!(cache.stats().unwrap().entries, 0);
    // No TTL: kept forever.
    cache
        .set_config(CacheConfig {
            ttl: None,
            ..config()
        })
        .unwrap();
    cache.put(&public("old"), &old).unwrap();
    assert!(cache.get(&public("old")).unwrap().is_some());
}

#[test]
fn byte_budget_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let text = "x".repeat(1000);
    // Measure one entry's size, then allow exactly ten.
    let entry_size = {
        let (_db, probe) = open(&dir.path().join("probe"), KEY_A, config());
        probe.put(&public("probe"), &answer(&text)).unwrap();
        probe.stats().unwrap().bytes
    };
    let budget = entry_size * 10;
    let (db, cache) = open(
        dir.path(),
        KEY_A,
        CacheConfig {
            max_bytes: budget,
            ..config()
        },
    );
    for i in 0..10 {
        cache
            .put(&public(&format!("q{i}")), &answer(&text))
            .unwrap();
    }
    assert_eq!(cache.stats().unwrap().evictions, 0);
    // Use q0 so it becomes the most recently used; q1 is now the oldest.
    assert!(cache.get(&public("q0")).unwrap().is_some());
    for i in 10..15 {
        cache
            .put(&public(&format!("q{i}")), &answer(&text))
            .unwrap();
    }
    let s = cache.stats().unwrap();
    assert_eq!(s.evictions, 5);
    assert_eq!(s.entries, 10);
    assert!(s.bytes <= budget);
    assert!(
        cache.get(&public("q0")).unwrap().is_some(),
        "recently used entry evicted"
    );
    for i in 1..=5 {
        assert!(
            cache.get(&public(&format!("q{i}"))).unwrap().is_none(),
            "q{i} kept"
        );
    }
    for i in 6..15 {
        assert!(
            cache.get(&public(&format!("q{i}"))).unwrap().is_some(),
            "q{i} lost"
        );
    }
    // Stats agree with what is on disk.
    let raw = raw_entries(&db);
    assert_eq!(raw.len() as u64, s.entries);
    let on_disk: u64 = raw.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    assert_eq!(on_disk, s.bytes);
    // An answer larger than the whole budget is not stored (and evicts nothing).
    cache
        .put(&public("huge"), &answer(&"y".repeat(budget as usize)))
        .unwrap();
    assert!(cache.get(&public("huge")).unwrap().is_none());
    assert_eq!(cache.stats().unwrap().entries, 10);
    // Opening with a smaller budget (e.g. a tool using the default config) evicts nothing...
    let reopened = SledCache::open(
        &db,
        EncryptionKey::from_bytes(&KEY_A).unwrap(),
        CacheConfig {
            max_bytes: entry_size * 5,
            ..config()
        },
    )
    .unwrap();
    assert_eq!(reopened.stats().unwrap().entries, 10);
    // ...until something is stored.
    reopened.put(&public("q15"), &answer(&text)).unwrap();
    assert_eq!(reopened.stats().unwrap().entries, 5);
    drop(reopened);
    let cache = SledCache::open(&db, EncryptionKey::from_bytes(&KEY_A).unwrap(), config()).unwrap();
    // Shrinking the budget evicts immediately.
    cache
        .set_config(CacheConfig {
            max_bytes: entry_size * 3,
            ..config()
        })
        .unwrap();
    assert_eq!(cache.stats().unwrap().entries, 3);
}

#[test]
fn modes() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, cache) = open(dir.path(), KEY_A, config());
    let with_mode = |mode| CacheConfig { mode, ..config() };
    cache.put(&public("seed"), &answer("seeded")).unwrap();

    // off: neither reads nor writes, and counts nothing.
    cache.set_config(with_mode(CacheMode::Off)).unwrap();
    assert!(cache.get(&public("seed")).unwrap().is_none());
    cache.put(&public("off"), &answer("o")).unwrap();
    let s = cache.stats().unwrap();
    assert_eq!((s.entries, s.hits, s.misses), (1, 0, 0));

    // read_only: serves the seeded entry, stores nothing new.
    cache.set_config(with_mode(CacheMode::ReadOnly)).unwrap();
    assert_eq!(cache.get(&public("seed")).unwrap().unwrap().text, "seeded");
    cache.put(&public("ro"), &answer("r")).unwrap();
    assert!(cache.get(&public("ro")).unwrap().is_none());
    let s = cache.stats().unwrap();
    assert_eq!((s.entries, s.hits, s.misses), (1, 1, 1));

    // write_only: stores, never serves (and a lookup is not counted).
    cache.set_config(with_mode(CacheMode::WriteOnly)).unwrap();
    cache.put(&public("wo"), &answer("w")).unwrap();
    assert!(cache.get(&public("wo")).unwrap().is_none());
    assert!(cache.get(&public("seed")).unwrap().is_none());
    let s = cache.stats().unwrap();
    assert_eq!((s.entries, s.hits, s.misses), (2, 1, 1));

    // on: the write_only entry is now served.
    cache.set_config(with_mode(CacheMode::On)).unwrap();
    assert_eq!(cache.get(&public("wo")).unwrap().unwrap().text, "w");
    assert!(cache.get(&public("off")).unwrap().is_none());

    // Policy spelling.
    let parsed: Vec<CacheMode> =
        serde_json::from_str(r#"["on","off","read_only","write_only"]"#).unwrap();
    assert_eq!(
        parsed,
        [
            CacheMode::On,
            CacheMode::Off,
            CacheMode::ReadOnly,
            CacheMode::WriteOnly
        ]
    );
    assert_eq!(CacheMode::ReadOnly.as_str(), "read_only");
}

#[test]
fn privacy_classes_never_cross() {
    let dir = tempfile::tempdir().unwrap();
    let (db, cache) = open(
        dir.path(),
        KEY_A,
        CacheConfig {
            cache_pii: true,
            ..config()
        },
    );
    let prompt = "email me at ann@example.com";
    let private = key(prompt, PrivacyClass::Private);
    let public_key = key(prompt, PrivacyClass::Public);
    cache.put(&private, &answer("private answer")).unwrap();
    assert!(cache.get(&public_key).unwrap().is_none());
    assert_eq!(cache.get(&private).unwrap().unwrap().text, "private answer");
    cache.put(&public_key, &answer("public answer")).unwrap();
    assert_eq!(
        cache.get(&public_key).unwrap().unwrap().text,
        "public answer"
    );
    assert_eq!(cache.get(&private).unwrap().unwrap().text, "private answer");

    // A private record copied under the public key is rejected, not served.
    let entries = db.sled().open_tree("cache/entries").unwrap();
    let id = |k: &CacheKey| EncryptionKey::from_bytes(&KEY_A).unwrap().entry_id(k);
    let private_record = entries.get(id(&private)).unwrap().unwrap();
    entries.insert(id(&public_key), private_record).unwrap();
    assert!(cache.get(&public_key).unwrap().is_none());
    assert_eq!(cache.stats().unwrap().rejected, 1);
    assert!(entries.get(id(&public_key)).unwrap().is_none());

    // With cache_pii off, private requests neither read nor write.
    cache
        .set_config(CacheConfig {
            cache_pii: false,
            ..config()
        })
        .unwrap();
    assert!(cache.get(&private).unwrap().is_none());
    cache
        .put(&key("other pii", PrivacyClass::Private), &answer("z"))
        .unwrap();
    assert!(entries
        .get(id(&key("other pii", PrivacyClass::Private)))
        .unwrap()
        .is_none());
}

#[test]
fn tampered_records_are_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (db, cache) = open(dir.path(), KEY_A, config());
    let entries = db.sled().open_tree("cache/entries").unwrap();
    let k = public("tamper me");
    cache.put(&k, &answer("original")).unwrap();
    // The one entry's id (a keyed hash of the key's digest).
    let (id, good) = raw_entries(&db).remove(0);
    // Flip one bit at several positions: header, nonce, ciphertext, tag.
    let positions = [1, 5, 12, 30, good.len() / 2, good.len() - 1];
    for (n, &pos) in positions.iter().enumerate() {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        entries.insert(&id, bad).unwrap();
        assert!(cache.get(&k).unwrap().is_none(), "flip at {pos} served");
        assert!(entries.get(&id).unwrap().is_none(), "not removed");
        let st = cache.stats().unwrap();
        assert_eq!(st.rejected as usize, n + 1, "{st:?}");
    }
    // Truncation and garbage.
    for bad in [good[..good.len() - 3].to_vec(), vec![], vec![1, 2, 3]] {
        entries.insert(&id, bad).unwrap();
        assert!(cache.get(&k).unwrap().is_none());
    }
    // The store still works, and the counts are right (the raw inserts bypassed accounting; a
    // reopen recounts from disk).
    cache.put(&k, &answer("again")).unwrap();
    assert_eq!(cache.get(&k).unwrap().unwrap().text, "again");
    drop(cache);
    let cache = SledCache::open(&db, EncryptionKey::from_bytes(&KEY_A).unwrap(), config()).unwrap();
    assert_eq!(cache.stats().unwrap().entries, 1);
    assert_eq!(cache.stats().unwrap().rejected, 9);
}

/// Entries sealed with another key are never served, and stay: the right key reads them again.
#[test]
fn wrong_encryption_key_is_a_miss_and_the_right_key_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, cache) = open(dir.path(), KEY_A, config());
        cache.put(&public("q"), &answer("secret answer")).unwrap();
        cache.flush().unwrap();
    }
    {
        let (_db, cache) = open(dir.path(), KEY_B, config());
        assert!(cache.get(&public("q")).unwrap().is_none());
        cache.put(&public("q"), &answer("b's answer")).unwrap();
        assert_eq!(cache.get(&public("q")).unwrap().unwrap().text, "b's answer");
        let s = cache.stats().unwrap();
        assert_eq!((s.rejected, s.entries), (0, 2));
        cache.flush().unwrap();
    }
    let (_db, cache) = open(dir.path(), KEY_A, config());
    assert_eq!(
        cache.get(&public("q")).unwrap().unwrap().text,
        "secret answer"
    );
}

/// What is on disk cannot tell whether a guessed prompt was asked: the cache key's digest (a
/// plain hash of the prompt, model and policy, which anyone can recompute) appears in no file
/// of the database. (The home's database directory is also restricted to its owner:
/// tests/router.rs.)
#[test]
fn the_database_holds_no_recomputable_prompt_hash() {
    let dir = tempfile::tempdir().unwrap();
    let asked = public("What is the capital of France?");
    {
        let (_db, cache) = open(dir.path(), KEY_A, config());
        cache.put(&asked, &answer("Paris.")).unwrap();
        assert!(cache.get(&asked).unwrap().is_some());
        cache.flush().unwrap();
    }
    let mut files = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(32).any(|w| w == asked.as_bytes()),
                "{} holds the key digest",
                p.display()
            );
        }
    }
    assert!(files > 0);
    // Still found with the key.
    let (_db, cache) = open(dir.path(), KEY_A, config());
    assert!(cache.get(&asked).unwrap().is_some());
}

/// A database directory an app opens itself keeps the mode it chose (it may share it with a
/// group on purpose); only the edgeroute home's own is restricted (tests/router.rs).
#[cfg(unix)]
#[test]
fn an_apps_own_database_directory_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    std::fs::create_dir(&db_dir).unwrap();
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let _db = Database::open(&db_dir).unwrap();
    let mode = std::fs::metadata(&db_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o750);
}

/// Entries stored by an earlier version under the bare digest can never be found again: they
/// are removed on the first open, once; later entries are kept across opens.
#[test]
fn entries_of_the_unkeyed_format_are_removed_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path()).unwrap();
        let t = |name: &str| db.sled().open_tree(name).unwrap();
        let old = public("old question");
        t("cache/entries")
            .insert(old.as_bytes(), &[7u8; 64][..])
            .unwrap();
        t("cache/atime")
            .insert(old.as_bytes(), &1u64.to_be_bytes()[..])
            .unwrap();
        db.flush().unwrap();
    }
    {
        let (db, cache) = open(dir.path(), KEY_A, config());
        assert_eq!(cache.stats().unwrap().entries, 0);
        assert!(raw_entries(&db).is_empty());
        cache.put(&public("new question"), &answer("kept")).unwrap();
        CacheStore::clear(&cache).unwrap();
        cache
            .put(&public("after clear"), &answer("kept too"))
            .unwrap();
        cache.flush().unwrap();
    }
    let (_db, cache) = open(dir.path(), KEY_A, config());
    assert_eq!(cache.stats().unwrap().entries, 1);
    assert_eq!(
        cache.get(&public("after clear")).unwrap().unwrap().text,
        "kept too"
    );
}

#[test]
fn clear_empties_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (db, cache) = open(dir.path(), KEY_A, config());
    for i in 0..20 {
        cache.put(&public(&format!("c{i}")), &answer("a")).unwrap();
    }
    assert!(cache.get(&public("c1")).unwrap().is_some());
    CacheStore::clear(&cache).unwrap();
    let s = cache.stats().unwrap();
    assert_eq!((s.entries, s.bytes, s.hits, s.misses), (0, 0, 0, 0));
    assert!(raw_entries(&db).is_empty());
    assert!(cache.get(&public("c1")).unwrap().is_none());
}

#[test]
fn stats_serialize_for_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, cache) = open(dir.path(), KEY_A, config());
    cache.put(&public("a"), &answer("b")).unwrap();
    let _ = cache.get(&public("a")).unwrap();
    let json = serde_json::to_value(cache.stats().unwrap()).unwrap();
    for field in [
        "mode",
        "entries",
        "bytes",
        "max_bytes",
        "hits",
        "misses",
        "hit_rate",
        "evictions",
        "expired",
        "rejected",
    ] {
        assert!(json.get(field).is_some(), "{field} missing");
    }
    assert_eq!(json["mode"], "on");
    assert_eq!(json["hits"], 1);
}

/// 8 tasks × 10,000 mixed operations over a shared key space, with a budget small enough to
/// force evictions. Afterwards every served answer matched its key, and the counters agree
/// with each other and with what is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_operations_keep_counts_consistent() {
    const TASKS: usize = 8;
    const OPS: usize = 10_000;
    const KEYS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let text_for = |i: usize| format!("answer number {i} ").repeat(8);
    let entry_size = {
        let (_db, probe) = open(&dir.path().join("probe"), KEY_A, config());
        probe.put(&public("k0"), &answer(&text_for(100))).unwrap();
        probe.stats().unwrap().bytes
    };
    let budget = entry_size * 150;
    let (db, cache) = open(
        dir.path(),
        KEY_A,
        CacheConfig {
            max_bytes: budget,
            ..config()
        },
    );
    let cache = Arc::new(cache);
    let keys: Arc<Vec<CacheKey>> = Arc::new((0..KEYS).map(|i| public(&format!("k{i}"))).collect());
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let cache = cache.clone();
        let keys = keys.clone();
        handles.push(tokio::spawn(async move {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
            let mut gets = 0u64;
            let mut served = 0u64;
            for _ in 0..OPS {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state % KEYS as u64) as usize;
                match (state >> 32) % 10 {
                    0..=5 => {
                        gets += 1;
                        if let Some(a) = cache.get(&keys[i]).unwrap() {
                            assert_eq!(a.text, text_for(i), "wrong answer for key {i}");
                            served += 1;
                        }
                    }
                    6..=8 => cache.put(&keys[i], &answer(&text_for(i))).unwrap(),
                    _ => {
                        let s = cache.stats().unwrap();
                        assert!((0.0..=1.0).contains(&s.hit_rate));
                    }
                }
                if state % 512 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (gets, served)
        }));
    }
    let (mut gets, mut served) = (0, 0);
    for h in handles {
        let (g, s) = h.await.unwrap();
        gets += g;
        served += s;
    }
    let s = cache.stats().unwrap();
    assert_eq!(s.hits, served);
    assert_eq!(s.hits + s.misses, gets);
    assert!(s.evictions > 0, "the budget never forced an eviction");
    assert!(
        s.bytes <= budget,
        "{} bytes over the {budget} budget",
        s.bytes
    );
    let raw = raw_entries(&db);
    assert_eq!(raw.len() as u64, s.entries);
    let on_disk: u64 = raw.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    assert_eq!(on_disk, s.bytes);
    // Every live entry has exactly one valid access record.
    let atime: HashMap<Vec<u8>, Vec<u8>> = db
        .sled()
        .open_tree("cache/atime")
        .unwrap()
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect();
    let lru = db.sled().open_tree("cache/lru").unwrap();
    for (k, _) in &raw {
        let tick = atime.get(k).expect("live entry without an access time");
        let mut lru_key = tick.clone();
        lru_key.extend_from_slice(k);
        assert!(
            lru.contains_key(lru_key).unwrap(),
            "live entry without an LRU record"
        );
    }
    // Every entry decrypts to the right answer.
    for (i, k) in keys.iter().enumerate() {
        if let Some(a) = cache.get(k).unwrap() {
            assert_eq!(a.text, text_for(i));
        }
    }
}

/// Two caches on one database (two routers on one home) count together: one byte budget, one
/// set of statistics. (Each counted only its own writes, so the home held twice its budget.)
#[test]
fn caches_sharing_a_database_share_one_budget_and_one_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let budget = CacheConfig {
        max_bytes: 4000,
        ..config()
    };
    let a = SledCache::open(
        &db,
        EncryptionKey::from_bytes(&KEY_A).unwrap(),
        budget.clone(),
    )
    .unwrap();
    let b = SledCache::open(&db, EncryptionKey::from_bytes(&KEY_A).unwrap(), budget).unwrap();
    for i in 0..20 {
        a.put(&public(&format!("a{i}")), &answer(&"x".repeat(100)))
            .unwrap();
        b.put(&public(&format!("b{i}")), &answer(&"y".repeat(100)))
            .unwrap();
    }
    let on_disk: u64 = raw_entries(&db)
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    assert!(
        on_disk <= 4000,
        "{on_disk} bytes stored under a 4000-byte budget"
    );
    let (sa, sb) = (a.stats().unwrap(), b.stats().unwrap());
    assert_eq!(
        (sa.entries, sa.bytes),
        (raw_entries(&db).len() as u64, on_disk)
    );
    assert_eq!((sb.entries, sb.bytes), (sa.entries, sa.bytes));
    assert!(a.get(&public("b19")).unwrap().is_some());
    assert_eq!(b.stats().unwrap().hits, 1);
}
