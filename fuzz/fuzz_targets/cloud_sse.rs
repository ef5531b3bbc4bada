//! Fuzz target: The SSE parser and both providers' stream decoders on arbitrary bytes.
//!
//! The properties live in `fuzz/checks/cloud_sse.rs`, shared with `tests/fuzz_regressions.rs`.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cloud_sse` (see fuzz/README.md).
#![no_main]

#[path = "../checks/cloud_sse.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
