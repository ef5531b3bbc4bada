//! The model directory: `edgeroute-model.json` (written by `scripts/setup.py`) and the files it lists.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::home;

/// The manifest's file name inside a model directory.
pub const MANIFEST_FILE: &str = "edgeroute-model.json";

/// What `scripts/setup.py` records about a converted model.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The model's name (its directory name under `<home>/models/`).
    pub name: String,
    /// SHA-256 (hex) of each file, by file name.
    pub files: BTreeMap<String, String>,
    /// Size in bytes of each file, by file name.
    #[serde(default)]
    pub sizes: BTreeMap<String, u64>,
    /// Shape of the decoder.
    pub architecture: Architecture,
    /// Token ids that end the reply. Every special token of the tokenizer ends it too.
    pub eos_token_ids: Vec<u32>,
    /// How to render a conversation.
    pub chat_template: ChatTemplate,
}

impl Manifest {
    /// The weights' SHA-256 (of `model.onnx.data`, else `model.onnx`): identifies the build.
    pub fn revision(&self) -> Option<&str> {
        self.weights().map(|(_, sha)| sha)
    }

    /// The weights file's name and SHA-256.
    fn weights(&self) -> Option<(&str, &str)> {
        ["model.onnx.data", "model.onnx"]
            .into_iter()
            .find_map(|name| self.files.get(name).map(|sha| (name, sha.as_str())))
    }

    /// This installed copy of the build in `dir`: the first 16 hex digits of the weights'
    /// SHA-256, and when the weights file was written. A copy repaired or reinstalled in place
    /// has the same checksum but a new write time, so the answer cache does not replay what a
    /// damaged copy answered.
    pub(crate) fn installed_build(&self, dir: &Path) -> Option<String> {
        let (name, sha) = self.weights()?;
        let short: String = sha.chars().take(16).collect();
        let written = std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        Some(match written {
            Some(t) => format!("{short}-{:x}", t.as_nanos()),
            None => short,
        })
    }
}

/// The decoder's dimensions (what the KV cache needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Architecture {
    /// Transformer blocks.
    pub num_layers: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Vocabulary size (logits width).
    pub vocab_size: usize,
    /// Maximum positions.
    pub context_length: usize,
}

/// A ChatML-style template: `<turn_start>role\ncontent<turn_end>\n` per message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatTemplate {
    /// Template family (only `chatml`).
    pub kind: String,
    /// Opens a turn (`<|im_start|>`).
    pub turn_start: String,
    /// Closes a turn (`<|im_end|>`).
    pub turn_end: String,
    /// The system prompt the model was tuned with, used when the conversation has none.
    pub default_system: String,
}

pub(crate) fn unavailable(path: &Path, reason: impl Into<String>) -> Error {
    Error::ModelUnavailable {
        path: path.to_path_buf(),
        reason: reason.into(),
        fix: format!(
            "run `{}` to (re)install the local model",
            home::setup_command_for(path)
        ),
    }
}

impl Manifest {
    /// Reads and checks a model directory: the manifest parses, every listed file exists with its
    /// recorded size, and (when `verify_checksums`) its recorded SHA-256.
    pub fn load(dir: &Path, verify_checksums: bool) -> Result<Manifest> {
        if !dir.is_dir() {
            return Err(unavailable(dir, "the model directory does not exist"));
        }
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| unavailable(&path, format!("cannot read the manifest: {e}")))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| unavailable(&path, format!("invalid manifest: {e}")))?;
        let a = &m.architecture;
        for (what, n) in [
            ("num_layers", a.num_layers),
            ("num_kv_heads", a.num_kv_heads),
            ("head_dim", a.head_dim),
            ("vocab_size", a.vocab_size),
            ("context_length", a.context_length),
        ] {
            if n == 0 {
                return Err(unavailable(
                    &path,
                    format!("invalid manifest: architecture.{what} is 0"),
                ));
            }
        }
        if m.chat_template.kind != "chatml" {
            return Err(unavailable(
                &path,
                format!("unsupported chat template kind `{}`", m.chat_template.kind),
            ));
        }
        for required in ["model.onnx", "tokenizer.json"] {
            if !m.files.contains_key(required) {
                return Err(unavailable(
                    &path,
                    format!("the manifest does not list {required}"),
                ));
            }
        }
        for (name, digest) in &m.files {
            let file = dir.join(name);
            let meta = std::fs::metadata(&file)
                .map_err(|e| unavailable(&file, format!("cannot read: {e}")))?;
            if let Some(&want) = m.sizes.get(name) {
                if meta.len() != want {
                    return Err(unavailable(
                        &file,
                        format!(
                            "size is {} bytes, expected {want} (truncated or replaced)",
                            meta.len()
                        ),
                    ));
                }
            }
            if verify_checksums {
                let got = sha256_file(&file)?;
                if !got.eq_ignore_ascii_case(digest) {
                    return Err(unavailable(
                        &file,
                        format!("SHA-256 is {got}, expected {digest}"),
                    ));
                }
            }
        }
        Ok(m)
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| unavailable(path, format!("read failed: {e}")))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
