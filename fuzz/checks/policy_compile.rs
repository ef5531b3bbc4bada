//! Policy parse + compile + decide on arbitrary text.
//!
//! Properties: never panics; a policy that compiles can inspect and decide on any request
//! (here the source text itself as the prompt); a rejected policy renders its diagnostics.

use std::path::Path;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match edgeroute::policy::compile_str(src, Path::new("fuzz.toml")) {
        Ok(policy) => {
            let request = edgeroute::Request::new(src);
            let features = edgeroute::inspect::inspect(&policy, &request);
            let _ = edgeroute::policy::decide(&policy, &features, &Default::default());
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "a rejected policy explains why");
            let _ = edgeroute::policy::render_diagnostics(&diags);
        }
    }
}
