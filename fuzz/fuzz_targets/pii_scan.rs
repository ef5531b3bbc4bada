//! Fuzz target: The PII scanner and the redaction round trip on arbitrary UTF-8.
//!
//! The properties live in `fuzz/checks/pii_scan.rs`, shared with `tests/fuzz_regressions.rs`.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run pii_scan` (see fuzz/README.md).
#![no_main]

#[path = "../checks/pii_scan.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
