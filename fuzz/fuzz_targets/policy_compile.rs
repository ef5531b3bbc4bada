//! Fuzz target: Policy parse + compile + decide on arbitrary text.
//!
//! The properties live in `fuzz/checks/policy_compile.rs`, shared with `tests/fuzz_regressions.rs`.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run policy_compile` (see fuzz/README.md).
#![no_main]

#[path = "../checks/policy_compile.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
