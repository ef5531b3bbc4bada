//! The non-streaming response parsers of both providers on arbitrary bytes.
//!
//! Properties: never panics; a parsed generation's usage is either reported or flagged
//! estimated (and then equals the documented estimate for the missing half).

use edgeroute::backend::cloud::{estimate_tokens, parse_response, Provider};

/// Checks one input.
pub fn check(data: &[u8]) {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        if let Ok(g) = parse_response(provider, data, 7) {
            if g.usage_estimated {
                assert!(
                    g.usage.input_tokens == 7 || g.usage.output_tokens == estimate_tokens(&g.text),
                    "estimated usage differs from the estimate"
                );
            }
        }
    }
}
