//! Replays the committed fuzz regression inputs and seeds (`fuzz/regressions/<target>/*`)
//! through exactly the checks the fuzz targets run (`fuzz/checks/<target>.rs`, included here
//! by path), so a fixed fuzzer finding stays fixed without cargo-fuzz or a nightly toolchain.
//! Each check asserts its target's properties (no panic, sane results); see fuzz/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

#[path = "../fuzz/checks/cache_decode.rs"]
mod cache_decode;
#[cfg(feature = "cloud")]
#[path = "../fuzz/checks/cloud_json.rs"]
mod cloud_json;
#[cfg(feature = "cloud")]
#[path = "../fuzz/checks/cloud_sse.rs"]
mod cloud_sse;
#[path = "../fuzz/checks/pii_scan.rs"]
mod pii_scan;
#[path = "../fuzz/checks/policy_compile.rs"]
mod policy_compile;

/// Runs `check` on every file of `fuzz/regressions/<target>/`; fails naming each input that
/// panicked. Returns how many inputs were replayed.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(failed.is_empty(), "{target}: inputs failed: {failed:?}");
    files.len()
}

#[test]
fn policy_compile_regressions() {
    assert!(replay("policy_compile", policy_compile::check) >= 3);
}

#[test]
fn pii_scan_regressions() {
    assert!(replay("pii_scan", pii_scan::check) >= 3);
}

#[test]
fn cache_decode_regressions() {
    assert!(replay("cache_decode", cache_decode::check) >= 3);
}

#[cfg(feature = "cloud")]
#[test]
fn cloud_sse_regressions() {
    assert!(replay("cloud_sse", cloud_sse::check) >= 3);
}

#[cfg(feature = "cloud")]
#[test]
fn cloud_json_regressions() {
    assert!(replay("cloud_json", cloud_json::check) >= 3);
}

/// The cache check really detects a served corrupted record: an unchanged record (all-zero
/// mask) must read back, so the replay above is not vacuous.
#[test]
fn cache_check_reads_back_an_intact_record() {
    cache_decode::check(&[0, 0, 5, 0, 0, 0, 0]);
    cache_decode::check(&[4, 0, 0, 0]);
}
