//! Fuzzes the non-streaming response parsers of both providers with arbitrary bytes.
//!
//! Properties: no panic; a parsed generation's usage is either reported or flagged estimated.
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cloud_json`
#![no_main]

use edgeroute::backend::cloud::{parse_response, Provider};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        if let Ok(g) = parse_response(provider, data, 7) {
            if g.usage_estimated {
                assert!(g.usage.input_tokens == 7 || g.usage.output_tokens == (g.text.len() as u64).div_ceil(4));
            }
        }
    }
});
