//! Damaged installs of the real model give errors that name the file and the fix, never a crash.
#![cfg(feature = "onnx")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use edgeroute::backend::local::LocalBackend;
use edgeroute::home;
use edgeroute::Error;

fn installed_model_dir() -> PathBuf {
    let dir = home::model_dir(&home::resolve(None), home::DEFAULT_MODEL);
    assert!(
        dir.join("edgeroute-model.json").is_file(),
        "local model not installed at {}: run `{}`",
        dir.display(),
        home::SETUP_COMMAND
    );
    dir
}

/// A copy of the installed model directory whose `model.onnx.data` is cut to `keep` bytes, with
/// the manifest's size record dropped so the damage reaches ONNX Runtime.
fn damaged_copy(src: &Path, keep: usize, garbage: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("edgeroute-model.json")).unwrap())
            .unwrap();
    m["sizes"] = serde_json::json!({});
    std::fs::write(dir.path().join("edgeroute-model.json"), m.to_string()).unwrap();
    let mut data = vec![0u8; keep];
    if !garbage {
        use std::io::Read;
        std::fs::File::open(src.join("model.onnx.data"))
            .unwrap()
            .read_exact(&mut data)
            .unwrap();
    }
    std::fs::write(dir.path().join("model.onnx.data"), data).unwrap();
    dir
}

fn expect_model_unavailable(dir: &Path) -> String {
    match LocalBackend::builder().model_dir(dir).threads(1).commit() {
        Ok(_) => panic!("a damaged model at {} was accepted", dir.display()),
        Err(e @ Error::ModelUnavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(home::SETUP_COMMAND), "{msg}");
            msg
        }
        Err(e) => panic!("expected ModelUnavailable, got: {e}"),
    }
}

#[test]
fn truncated_model_data_is_an_error_not_a_crash() {
    let src = installed_model_dir();
    let damaged = damaged_copy(&src, 10 << 20, false);
    let msg = expect_model_unavailable(damaged.path());
    assert!(msg.contains("model.onnx"), "{msg}");
}

#[test]
fn truncated_file_is_caught_by_the_recorded_size() {
    let src = installed_model_dir();
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json", "edgeroute-model.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.onnx.data"), b"cut").unwrap();
    let msg = expect_model_unavailable(dir.path());
    assert!(
        msg.contains("model.onnx.data") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn corrupt_graph_file_is_an_error() {
    let src = installed_model_dir();
    let damaged = damaged_copy(&src, 1 << 20, true);
    let len = std::fs::metadata(src.join("model.onnx")).unwrap().len() as usize;
    std::fs::write(damaged.path().join("model.onnx"), vec![0x5Au8; len]).unwrap();
    expect_model_unavailable(damaged.path());
}

#[test]
fn broken_manifest_is_an_error() {
    let src = installed_model_dir();
    let damaged = damaged_copy(&src, 16, true);
    std::fs::write(damaged.path().join("edgeroute-model.json"), b"{ not json").unwrap();
    let msg = expect_model_unavailable(damaged.path());
    assert!(msg.contains("invalid manifest"), "{msg}");
}

/// A copy repaired or reinstalled in place (same checksum, written again) is another
/// revision: the answer cache, keyed by it, does not replay what the damaged copy answered.
#[test]
fn a_model_written_again_is_a_new_revision() {
    use edgeroute::backend::Backend;
    let src = installed_model_dir();
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "model.onnx",
        "tokenizer.json",
        "edgeroute-model.json",
        "model.onnx.data",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let revision = || {
        LocalBackend::builder()
            .model_dir(dir.path())
            .threads(1)
            .huge_pages(false)
            .commit()
            .unwrap()
            .revision()
            .unwrap()
    };
    let before = revision();
    assert_eq!(revision(), before, "unchanged files, same revision");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let data = std::fs::read(dir.path().join("model.onnx.data")).unwrap();
    std::fs::write(dir.path().join("model.onnx.data"), data).unwrap();
    let after = revision();
    assert_ne!(after, before);
    // Same build: the checksum part is the same.
    assert_eq!(after.split('-').next(), before.split('-').next());
}

/// A manifest that parses but does not describe the graph next to it (hand-edited, or from
/// another model) is a clear error when the model opens, naming the mismatch, not ONNX
/// Runtime's "invalid dimensions" in the middle of the first generation.
#[test]
fn a_manifest_that_does_not_match_the_graph_is_an_error() {
    let src = installed_model_dir();
    for (key, value, expect) in [
        (
            "head_dim",
            32,
            "the manifest says head dimension 32, the graph's",
        ),
        (
            "num_kv_heads",
            5,
            "the manifest says KV heads 5, the graph's",
        ),
        (
            "num_layers",
            12,
            "the manifest says 12 layers, the graph has 30",
        ),
        ("num_layers", 0, "architecture.num_layers is 0"),
        ("context_length", 0, "architecture.context_length is 0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["model.onnx", "tokenizer.json", "model.onnx.data"] {
            std::os::unix::fs::symlink(src.join(f), dir.path().join(f)).unwrap();
        }
        let mut m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("edgeroute-model.json")).unwrap(),
        )
        .unwrap();
        m["architecture"][key] = serde_json::json!(value);
        std::fs::write(dir.path().join("edgeroute-model.json"), m.to_string()).unwrap();
        let msg = expect_model_unavailable(dir.path());
        assert!(msg.contains(expect), "{key} = {value}: {msg}");
    }
}

#[test]
fn a_model_converted_before_the_attention_mask_asks_for_set_up() {
    // The tiny decoder as the converter wrote graphs before manifest version 6: no
    // `attention_mask` input, so its cache cannot be bound in place.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/local");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures.join("tiny_before_attention_mask.onnx"),
        dir.path().join("model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("tiny/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("tiny/edgeroute-model.json")).unwrap(),
    )
    .unwrap();
    m["sizes"] = serde_json::json!({});
    m["architecture"]["head_dim"] = serde_json::json!(2);
    std::fs::write(dir.path().join("edgeroute-model.json"), m.to_string()).unwrap();
    let msg = expect_model_unavailable(dir.path());
    assert!(
        msg.contains("no input `attention_mask`: it was converted by an older edgeroute"),
        "{msg}"
    );
}
