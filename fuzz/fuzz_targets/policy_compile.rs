//! Policy parse + compile + decide on arbitrary text: must never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
            let _ = edgeroute::policy::render_diagnostics(&diags);
        }
    }
});
