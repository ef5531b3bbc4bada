//! The edgeroute home: where the runtime, models, cache and keys live.
//!
//! Resolution order: explicit path (builder / `--home`) → `EDGEROUTE_HOME` → the user's data
//! directory (`~/.local/share/edgeroute` on Linux) → `./.edgeroute`.
//!
//! Layout:
//! ```text
//! <home>/runtime/libonnxruntime.so.*      ONNX Runtime shared library (from the PyPI wheel)
//! <home>/models/<model-name>/             model.onnx (+ .data), tokenizer.json, edgeroute-model.json
//! <home>/db/                              sled database (answer cache, cost ledger)
//! <home>/cache.key                        answer-cache encryption key (mode 0600)
//! ```

use std::path::{Path, PathBuf};

/// The environment variable that overrides the home directory.
pub const HOME_ENV: &str = "EDGEROUTE_HOME";

/// The default local model's directory name under `<home>/models/`.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The command that installs the runtime and model, named in every "missing" error.
pub const SETUP_COMMAND: &str = "python3 scripts/setup.py";

/// The set-up command that installs into the home holding `path` (a model directory, a file in
/// one, the runtime directory or a library in it): [`SETUP_COMMAND`] for the default home, with
/// `EDGEROUTE_HOME=<home>` before it for any other (run as is, it would install into the
/// default home, and the error would stay). Both run from a checkout of the repository.
pub fn setup_command_for(path: &Path) -> String {
    let home = path
        .ancestors()
        .find(|a| {
            a.file_name()
                .is_some_and(|n| n == "models" || n == "runtime")
        })
        .and_then(Path::parent);
    match home {
        Some(h) if h != resolve(None) => {
            format!(
                "EDGEROUTE_HOME={} {SETUP_COMMAND}",
                shell_quoted(&h.display().to_string())
            )
        }
        _ => SETUP_COMMAND.to_string(),
    }
}

/// `s` as one shell word: as is when it is plain, else in single quotes.
fn shell_quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Resolves the home directory (does not create it), as an absolute path: a relative one is
/// taken from the current directory now, so messages name the real place and a later change
/// of directory does not move the home.
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    let home = if let Some(p) = explicit {
        p.to_path_buf()
    } else if let Some(p) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        PathBuf::from(p)
    } else {
        dirs::data_dir()
            .map(|d| d.join("edgeroute"))
            .unwrap_or_else(|| PathBuf::from(".edgeroute"))
    };
    std::path::absolute(&home).unwrap_or(home)
}

/// `<home>/runtime`.
pub fn runtime_dir(home: &Path) -> PathBuf {
    home.join("runtime")
}

/// `<home>/models/<name>`.
pub fn model_dir(home: &Path, name: &str) -> PathBuf {
    home.join("models").join(name)
}

/// `<home>/db`.
pub fn db_dir(home: &Path) -> PathBuf {
    home.join("db")
}

/// `<home>/cache.key`.
pub fn cache_key_file(home: &Path) -> PathBuf {
    home.join("cache.key")
}

/// The key that seals the teacher log's samples ([`crate::distill`]): its own, so clearing the
/// cache (which replaces the cache key) leaves them readable.
pub fn teacher_key_file(home: &Path) -> PathBuf {
    home.join("teacher.key")
}

/// Creates `dir` and its missing parents readable by their owner only (mode 0700 on Unix): the
/// home holds the answer cache, the ledger and the cache key.
pub(crate) fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fix in a "missing model/runtime" error installs into the home that was looked in.
    #[test]
    fn the_setup_command_names_a_home_other_than_the_default() {
        let other = Path::new("/srv/app-home");
        assert_eq!(
            setup_command_for(&model_dir(other, DEFAULT_MODEL).join("model.onnx")),
            format!("EDGEROUTE_HOME=/srv/app-home {SETUP_COMMAND}")
        );
        assert_eq!(
            setup_command_for(&runtime_dir(other).join("libonnxruntime.so.1.32.0")),
            format!("EDGEROUTE_HOME=/srv/app-home {SETUP_COMMAND}")
        );
        let default = resolve(None);
        assert_eq!(
            setup_command_for(&model_dir(&default, DEFAULT_MODEL)),
            SETUP_COMMAND
        );
        // A path a shell would split is quoted.
        assert_eq!(
            setup_command_for(Path::new("/tmp/my home/it's/models/x")),
            format!("EDGEROUTE_HOME='/tmp/my home/it'\\''s' {SETUP_COMMAND}")
        );
        // A model directory outside any home: the plain command.
        assert_eq!(setup_command_for(Path::new("/opt/my-model")), SETUP_COMMAND);
    }

    /// A relative home is taken from the current directory at once, so it does not move with
    /// a later change of directory and messages name the real place.
    #[test]
    fn a_relative_home_resolves_to_an_absolute_path() {
        let home = resolve(Some(Path::new("rel/home")));
        assert!(home.is_absolute(), "{}", home.display());
        assert_eq!(home, std::env::current_dir().unwrap().join("rel/home"));
        assert_eq!(resolve(Some(Path::new("/srv/h"))), Path::new("/srv/h"));
    }
}
