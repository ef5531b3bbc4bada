//! Fuzzes the answer-cache record decoding: arbitrary bytes stored under a cache key must be
//! rejected (or, never in practice, decoded) without panicking, and so must arbitrary bodies.
//!
//! Needs in `fuzz/Cargo.toml`: `[[bin]] name = "cache_decode", path = "fuzz_targets/cache_decode.rs"`
//! (deps already there: `libfuzzer-sys`, `edgeroute` with default features off).
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run cache_decode`
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use edgeroute::cache::{
    open_record, seal_record, CacheKey, CachedAnswer, EncryptionKey, Header, KeyContext,
    PrivacyClass,
};
use edgeroute::request::{Request, Route, Usage};
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static (EncryptionKey, CacheKey, Vec<u8>) {
    static F: OnceLock<(EncryptionKey, CacheKey, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let enc = EncryptionKey::from_bytes(&[3; 32]).expect("key");
        let key = CacheKey::new(
            &Request::new("fuzz"),
            &KeyContext {
                model: "m",
                policy_version: "v",
                privacy: PrivacyClass::Public,
                normalize: true,
            },
        );
        let answer = CachedAnswer::new("answer", Route::Cloud, "m", Usage::default());
        let good = seal_record(&enc, &key, &answer).expect("seal");
        (enc, key, good)
    })
}

fuzz_target!(|data: &[u8]| {
    let (enc, key, good) = fixture();
    let _ = Header::parse(data);
    let _ = CachedAnswer::decode_body(data, UNIX_EPOCH);
    // Random bytes never authenticate.
    if data != good.as_slice() {
        assert!(open_record(enc, key, data).is_err());
    }
    // A valid record with the input spliced over its tail must be rejected too.
    let mut spliced = good.clone();
    let n = data.len().min(spliced.len());
    let start = spliced.len() - n;
    spliced[start..].copy_from_slice(&data[..n]);
    if spliced != *good {
        assert!(open_record(enc, key, &spliced).is_err());
    }
});
