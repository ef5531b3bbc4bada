//! The TOML policy language: [`raw`] (serde, `deny_unknown_fields`) → [`compile_file`] (semantic
//! checks, `file:line:col` diagnostics) → [`decide`] (the routing decision).
//!
//! The language reference for policy authors is `policies/README.md`.

use std::fmt;
use std::path::PathBuf;

mod compile;
mod eval;
pub mod raw;
mod source;
mod tests;

#[cfg(feature = "cloud")]
pub(crate) use compile::without_credentials;
pub use compile::{
    check_base_url, compile_file, compile_str, is_loopback_url, BreakerSection, BudgetSection,
    CloudSection, CompiledPolicy, CompiledRule, Condition, KindSet, LatencySection, LocalSection,
    OnExhausted, PolicyTest, ProviderKind, DEFAULT_CLOUD_MAX_TOKENS,
};
pub use eval::{decide, passed_over};

/// The shipped `policies/default.toml`, built in: private data stays on the device, hard or
/// long prompts and tight deadlines go to the cloud, everything else cascades. What the CLI
/// uses without `--policy`, and [`RouterBuilder::default_policy`](crate::RouterBuilder::default_policy).
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.toml");
pub use source::{nearest, TomlPath};
pub use tests::{case_request, case_signals, run_cases, CaseOutcome};

/// One problem found in a policy file, located by file, line, column and TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The policy file (`<inline>` for `policy_str`, `<built-in default.toml>` for the built-in policy).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// TOML path, e.g. `rule[3].when.pii_any`.
    pub path: String,
    /// What is wrong, and what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl Diagnostic {
    /// The diagnostic as a warning: `file:line:col: warning: path: message`.
    pub fn as_warning(&self) -> String {
        let mut s = format!(
            "{}:{}:{}: warning: ",
            self.file.display(),
            self.line,
            self.column
        );
        if !self.path.is_empty() {
            s.push_str(&self.path);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }
}

/// Renders diagnostics one per line.
pub fn render_diagnostics(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
