//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! Discovery order: an explicit path (builder) → `ORT_DYLIB_PATH` → `<home>/runtime/libonnxruntime.so*`.
//! The library is loaded with [`ort::init_from`], which returns an error instead of panicking, and
//! the one [`Environment`] the process may have is kept in a `OnceLock`. ONNX Runtime's own log
//! lines go to `tracing` (target `ort`) at `warn` and above.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::logging::LogLevel;

use crate::error::{Error, Result};
use crate::home;

/// The environment variable naming the runtime library (ort's convention).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The process-wide runtime: the library it was loaded from and its environment.
pub(crate) struct Runtime {
    pub(crate) path: PathBuf,
    pub(crate) env: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

fn fix(path: &Path) -> String {
    format!(
        "run `{}` (installs ONNX Runtime 1.32 into the edgeroute home), or set {DYLIB_ENV} to a libonnxruntime.so of version >= 1.31",
        home::setup_command_for(path)
    )
}

fn unavailable(path: &Path, reason: impl Into<String>) -> Error {
    Error::RuntimeUnavailable {
        path: path.display().to_string(),
        reason: reason.into(),
        fix: fix(path),
    }
}

/// The error's message followed by each `source()` in turn: ort's `Dlopen` error only says
/// "dlopen failed" and keeps the reason (missing file, wrong ELF class...) in its source.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// ort's `LoadDynamicError` has no `source()`; its `Dlopen` variant holds the loader's error, whose
/// own source carries the actual reason ("invalid ELF header", "wrong ELF class"...).
fn load_error(e: &ort::LoadDynamicError) -> String {
    match e {
        ort::LoadDynamicError::Dlopen { error, .. } => {
            format!("cannot load the library: {}", error_chain(error))
        }
        other => error_chain(other),
    }
}

/// Picks the runtime library to load (does not load it).
pub fn discover(explicit: Option<&Path>, home_dir: &Path) -> Result<PathBuf> {
    discover_from(explicit, std::env::var_os(DYLIB_ENV), home_dir)
}

/// [`discover`] with the value of `ORT_DYLIB_PATH` passed in.
fn discover_from(
    explicit: Option<&Path>,
    env_value: Option<std::ffi::OsString>,
    home_dir: &Path,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return existing_file(p, "the configured runtime path");
    }
    if let Some(p) = env_value.filter(|v| !v.is_empty()) {
        return existing_file(Path::new(&p), DYLIB_ENV);
    }
    let dir = home::runtime_dir(home_dir);
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| unavailable(&dir, format!("cannot read the runtime directory: {e}")))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // Prefer the highest version: compare the numeric suffix parts.
    found.sort_by_key(|p| version_key(p));
    found
        .pop()
        .ok_or_else(|| unavailable(&dir, "no libonnxruntime.so* in the runtime directory"))
}

fn version_key(p: &Path) -> Vec<u64> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split('.').filter_map(|part| part.parse().ok()).collect())
        .unwrap_or_default()
}

fn existing_file(p: &Path, what: &str) -> Result<PathBuf> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(p.to_path_buf()),
        Ok(_) => Err(unavailable(p, format!("{what} is not a file"))),
        Err(e) => Err(unavailable(p, format!("{what} cannot be read: {e}"))),
    }
}

/// Loads the runtime from `path` (first call) and returns the process-wide runtime. Later calls
/// return the runtime already loaded, whatever `path` they pass (one environment per process).
pub(crate) fn load(path: &Path) -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        warn_if_other(rt, path);
        return Ok(rt);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        warn_if_other(rt, path);
        return Ok(rt);
    }
    let builder = ort::init_from(path).map_err(|e| unavailable(path, load_error(&e)))?;
    let env = builder
        .with_name("edgeroute")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            unavailable(
                path,
                format!(
                    "creating the ONNX Runtime environment failed: {}",
                    error_chain(&e)
                ),
            )
        })?;
    env.set_log_level(LogLevel::Warning);
    tracing::debug!(path = %path.display(), "ONNX Runtime loaded");
    Ok(RUNTIME.get_or_init(|| Runtime {
        path: path.to_path_buf(),
        env,
    }))
}

fn warn_if_other(rt: &Runtime, path: &Path) {
    if rt.path != path {
        tracing::warn!(
            loaded = %rt.path.display(),
            requested = %path.display(),
            "ONNX Runtime is already loaded in this process; ignoring the other path"
        );
    }
}

/// Discovers and loads the runtime: what [`super::LocalBackend`] does before opening a model.
pub(crate) fn ensure(explicit: Option<&Path>, home_dir: &Path) -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    load(&discover(explicit, home_dir)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_explicit_path_names_path_and_fix() {
        let err = discover_from(
            Some(Path::new("/nonexistent/libonnxruntime.so")),
            None,
            Path::new("/tmp"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains(home::SETUP_COMMAND), "{msg}");
    }

    #[test]
    fn empty_home_runtime_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("runtime")).unwrap();
        let err = discover_from(None, None, dir.path()).unwrap_err();
        assert!(matches!(err, Error::RuntimeUnavailable { .. }));
        assert!(err.to_string().contains("no libonnxruntime.so"));
    }

    #[test]
    fn highest_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("runtime");
        std::fs::create_dir_all(&rt).unwrap();
        for n in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime.so.1.22.1",
            "README",
        ] {
            std::fs::write(rt.join(n), b"x").unwrap();
        }
        assert_eq!(
            discover_from(None, None, dir.path()).unwrap(),
            rt.join("libonnxruntime.so.1.32.0")
        );
        // ORT_DYLIB_PATH beats the home directory, an explicit path beats both.
        let other = rt.join("libonnxruntime.so.1.9.0");
        assert_eq!(
            discover_from(None, Some(other.clone().into()), dir.path()).unwrap(),
            other
        );
        let missing = dir.path().join("nope.so");
        assert!(discover_from(None, Some(missing.into()), dir.path()).is_err());
        let explicit = rt.join("libonnxruntime.so.1.22.1");
        assert_eq!(
            discover_from(Some(&explicit), Some(other.into()), dir.path()).unwrap(),
            explicit
        );
    }
}
