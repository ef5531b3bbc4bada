//! Fuzz target: The non-streaming response parsers of both providers on arbitrary bytes.
//!
//! The properties live in `fuzz/checks/cloud_json.rs`, shared with `tests/fuzz_regressions.rs`.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cloud_json` (see fuzz/README.md).
#![no_main]

#[path = "../checks/cloud_json.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
