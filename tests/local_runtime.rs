//! Runtime discovery and loading in one process: a bad library is a clear error (with the
//! loader's own reason), and the real one still loads afterwards. One test on purpose: the runtime
//! is loaded once per process.
#![cfg(feature = "onnx")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edgeroute::backend::local::{runtime, LocalBackend};
use edgeroute::{home, Error};

#[test]
fn bad_library_is_a_clear_error_then_the_installed_runtime_loads() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.32.0");
    std::fs::write(&fake, b"this is not an ELF file").unwrap();
    let model_dir = home::model_dir(&home::resolve(None), home::DEFAULT_MODEL);

    let err = LocalBackend::builder()
        .runtime_path(&fake)
        .model_dir(&model_dir)
        .commit()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::RuntimeUnavailable { .. }), "{msg}");
    assert!(msg.contains(&fake.display().to_string()), "{msg}");
    assert!(msg.contains(home::SETUP_COMMAND), "{msg}");
    // The dlopen reason itself, not just "dlopen failed".
    assert!(
        msg.to_lowercase().contains("elf") || msg.contains("too short"),
        "{msg}"
    );

    let missing = dir.path().join("nowhere.so");
    let err = LocalBackend::builder()
        .runtime_path(&missing)
        .model_dir(&model_dir)
        .commit()
        .unwrap_err();
    assert!(err.to_string().contains("nowhere.so"), "{err}");

    let real = runtime::discover(None, &home::resolve(None))
        .unwrap_or_else(|e| panic!("ONNX Runtime not installed: {e}"));

    // The real library cut short (an interrupted download): `dlopen` would map it and the
    // process would die with SIGBUS; it is a clear error instead. A leftover of an interrupted
    // install next to a good library is not picked up.
    let bytes = std::fs::read(&real).unwrap();
    let cut = dir.path().join("runtime/libonnxruntime.so.1.32.0");
    std::fs::create_dir_all(cut.parent().unwrap()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = LocalBackend::builder()
        .runtime_path(&cut)
        .model_dir(&model_dir)
        .commit()
        .unwrap_err();
    assert!(matches!(err, Error::RuntimeUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("the file is truncated"), "{err}");
    std::fs::write(&cut, &bytes).unwrap();
    std::fs::write(cut.with_extension("0.partial"), &bytes[..1000]).unwrap();
    assert_eq!(runtime::discover(None, dir.path()).unwrap(), cut);

    let backend = LocalBackend::builder()
        .runtime_path(real)
        .model_dir(&model_dir)
        .threads(1)
        .commit()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        backend
            .encode_prompt(&[edgeroute::request::Message::user("hi")])
            .unwrap()
            .len()
            > 5
    );
}
