//! Policy parse + compile + decide on arbitrary text.
//!
//! Properties: never panics; a policy that compiles can inspect and decide on any request
//! (here the source text itself as the prompt), run its own test cases and estimate latency
//! and cost for the largest token counts; a rejected policy renders its diagnostics, which
//! are in file order with 1-based positions.

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
            let _ = edgeroute::policy::run_cases(&policy);
            let _ = policy.latency.local_estimate_ms(u32::MAX, u32::MAX);
            if let Some(cloud) = &policy.cloud {
                let _ = cloud.cost(edgeroute::request::Usage {
                    cached_input_tokens: u64::MAX / 2,
                    ..edgeroute::request::Usage::new(u64::MAX, u64::MAX)
                });
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "a rejected policy explains why");
            let _ = edgeroute::policy::render_diagnostics(&diags);
            let positions: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
            assert!(
                positions.iter().all(|&(l, c)| l >= 1 && c >= 1),
                "{positions:?}"
            );
            assert!(
                positions.is_sorted(),
                "diagnostics out of file order: {positions:?}"
            );
        }
    }
}
