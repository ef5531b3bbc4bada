//! Fuzz target: Decoding arbitrary stored answer-cache bytes.
//!
//! The properties live in `fuzz/checks/cache_decode.rs`, shared with `tests/fuzz_regressions.rs`.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cache_decode` (see fuzz/README.md).
#![no_main]

#[path = "../checks/cache_decode.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
