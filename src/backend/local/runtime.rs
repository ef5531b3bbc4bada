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
    let from_env = std::env::var_os(DYLIB_ENV).is_some_and(|v| Path::new(&v) == path);
    let in_a_home = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "runtime");
    if from_env {
        // Installing into the home would not help: the variable wins.
        format!("{DYLIB_ENV} points here: unset it to use the edgeroute home's runtime, or point it at a complete libonnxruntime.so of version >= 1.31")
    } else if in_a_home {
        format!(
            "run `{}` (installs ONNX Runtime 1.32 into the edgeroute home), or set {DYLIB_ENV} to a libonnxruntime.so of version >= 1.31",
            home::setup_command_for(path)
        )
    } else {
        format!(
            "correct or remove the configured runtime path ([local].runtime_path, or the builder's) to use the edgeroute home's runtime (`{}` installs it)",
            home::setup_command_for(path)
        )
    }
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
                .is_some_and(is_library_name)
        })
        .collect();
    // Prefer the highest version: compare the numeric suffix parts.
    found.sort_by_key(|p| version_key(p));
    found
        .pop()
        .ok_or_else(|| unavailable(&dir, "no libonnxruntime.so* in the runtime directory"))
}

/// `libonnxruntime.so`, or with a numeric version (`libonnxruntime.so.1.32.0`); not a
/// leftover of an interrupted install (`libonnxruntime.so.1.32.0.partial`).
fn is_library_name(name: &str) -> bool {
    match name.strip_prefix("libonnxruntime.so") {
        Some("") => true,
        Some(version) => version.strip_prefix('.').is_some_and(|v| {
            v.split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        }),
        None => false,
    }
}

/// Why the ELF file at `path` cannot be loaded whole: it ends before the segments, program
/// headers or section headers its header declares (a truncated download or copy). `dlopen`
/// maps such a file and the process dies with SIGBUS when it touches the missing part, so it
/// is checked first. `None` when the file is complete, or not ELF (`dlopen` explains that).
fn truncated_elf(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut h = [0u8; 64];
    file.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" {
        return None;
    }
    let wide = match h[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match h[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let num = |b: &[u8], at: usize, size: usize| -> u64 {
        let bytes = &b[at..at + size];
        let fold = |acc: u64, &x: &u8| (acc << 8) | u64::from(x);
        if little {
            bytes.iter().rev().fold(0, fold)
        } else {
            bytes.iter().fold(0, fold)
        }
    };
    let word = if wide { 8 } else { 4 };
    let (phoff, shoff) = (
        num(&h, if wide { 0x20 } else { 0x1C }, word),
        num(&h, if wide { 0x28 } else { 0x20 }, word),
    );
    let half =
        |wide_at: usize, narrow_at: usize| num(&h, if wide { wide_at } else { narrow_at }, 2);
    let (phentsize, phnum) = (half(0x36, 0x2A), half(0x38, 0x2C));
    let (shentsize, shnum) = (half(0x3A, 0x2E), half(0x3C, 0x30));
    let mut needed = shoff
        .saturating_add(shentsize.saturating_mul(shnum))
        .max(phoff.saturating_add(phentsize.saturating_mul(phnum)));
    // Loadable segments: where the mapped bytes end.
    let table = phentsize.saturating_mul(phnum);
    if phoff.saturating_add(table) <= len && table <= 1 << 20 {
        let mut t = vec![0u8; usize::try_from(table).ok()?];
        file.seek(SeekFrom::Start(phoff)).ok()?;
        file.read_exact(&mut t).ok()?;
        for entry in t.chunks_exact(usize::try_from(phentsize).ok()?.max(1)) {
            let (offset_at, filesz_at) = if wide { (0x08, 0x20) } else { (0x04, 0x10) };
            if entry.len() < filesz_at + word || num(entry, 0, 4) != 1 {
                continue; // not PT_LOAD
            }
            needed =
                needed.max(num(entry, offset_at, word).saturating_add(num(entry, filesz_at, word)));
        }
    }
    (needed > len).then(|| {
        format!("the file is truncated: {len} bytes, but its ELF header describes {needed} (an interrupted download or copy)")
    })
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
    if let Some(why) = truncated_elf(path) {
        return Err(unavailable(path, why));
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

    /// A truncated library is caught before `dlopen` maps it (which ends the process with
    /// SIGBUS); a complete one, and a file that is not ELF, pass to `dlopen`.
    #[test]
    fn a_truncated_library_is_caught_before_loading() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.so");
        std::fs::write(&whole, &exe).unwrap();
        assert_eq!(truncated_elf(&whole), None);
        for keep in [64, 4096, exe.len() / 2, exe.len() - 1] {
            let cut = dir.path().join(format!("cut-{keep}.so"));
            std::fs::write(&cut, &exe[..keep]).unwrap();
            let why = truncated_elf(&cut).unwrap_or_else(|| panic!("{keep} bytes passed"));
            assert!(
                why.starts_with(&format!("the file is truncated: {keep} bytes")),
                "{why}"
            );
        }
        let text = dir.path().join("text.so");
        std::fs::write(&text, "not a library").unwrap();
        assert_eq!(truncated_elf(&text), None);
    }

    #[test]
    fn only_library_names_are_discovered() {
        for name in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime.so.1",
        ] {
            assert!(is_library_name(name), "{name}");
        }
        for name in [
            "libonnxruntime.so.1.32.0.partial",
            "libonnxruntime.so.1.32.0~",
            "libonnxruntime.so.",
            "libonnxruntime.so.1..2",
            "libonnxruntime.sox",
            "libonnxruntime_providers_shared.so",
        ] {
            assert!(!is_library_name(name), "{name}");
        }
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
