//! Fuzzes the answer-cache record decoding: header parsing, the sealed-record open path (any
//! bytes stored under a key must be rejected or decoded, never panic) and the body decoder.
//!
//! Needs a `fuzz/Cargo.toml` with `libfuzzer-sys` and `edgeroute` (path = "..",
//! default-features = false) and a `[[bin]] name = "cache_decode"` entry.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run cache_decode`
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::UNIX_EPOCH;

use edgeroute::cache::{
    CacheConfig, CacheKey, CachedAnswer, Database, EncryptionKey, Header, KeyContext, PrivacyClass,
    SledCache,
};
use edgeroute::request::Request;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixture {
    db: Database,
    cache: SledCache,
    key: CacheKey,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(dir.path()).expect("db");
        let cache = SledCache::open(
            &db,
            EncryptionKey::from_bytes(&[3; 32]).expect("key"),
            CacheConfig::default(),
        )
        .expect("cache");
        let key = CacheKey::new(
            &Request::new("fuzz"),
            &KeyContext {
                model: "m",
                policy_version: "v",
                privacy: PrivacyClass::Public,
                normalize: true,
            },
        );
        Fixture {
            db,
            cache,
            key,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let _ = CachedAnswer::decode_body(data, UNIX_EPOCH);
    // Store the bytes as if they were a record and look them up: must be a clean miss.
    let f = fixture();
    let entries = f.db.sled().open_tree("cache/entries").expect("tree");
    entries.insert(f.key.as_bytes(), data).expect("insert");
    assert!(f.cache.get(&f.key).expect("get").is_none());
});
