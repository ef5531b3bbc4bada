//! Stage one of the pipeline: turn a [`Request`] into [`Features`] — PII found, a prompt token
//! estimate, deadline, tags and task. Runs once per request and costs microseconds.

use crate::policy::{CompiledPolicy, KindSet};
use crate::privacy::PiiSpan;
use crate::request::Request;

/// Per-message overhead in the token estimate (role markers of a chat template).
pub(crate) const TOKENS_PER_MESSAGE: u32 = 4;

/// What `decide()` knows about a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// PII kinds found in any message.
    pub pii: KindSet,
    /// PII spans, per message index (offsets into that message's content).
    pub pii_spans: Vec<(usize, PiiSpan)>,
    /// Estimated prompt tokens (all messages).
    pub prompt_tokens: u32,
    /// The request's deadline in ms.
    pub deadline_ms: Option<u64>,
    /// Caller tags.
    pub tags: Vec<String>,
    /// Task name.
    pub task: Option<String>,
}

/// Inspects a request under a policy (whose `[privacy]` section configures the scanner).
pub fn inspect(policy: &CompiledPolicy, request: &Request) -> Features {
    let pii_spans = policy.scanner.scan_messages(&request.messages);
    let mut prompt_tokens: u32 = 0;
    for m in &request.messages {
        prompt_tokens = prompt_tokens
            .saturating_add(estimate_tokens(&m.content))
            .saturating_add(TOKENS_PER_MESSAGE);
    }
    let pii = policy.kind_set(pii_spans.iter().map(|(_, s)| s.kind.as_str()));
    Features {
        pii,
        pii_spans,
        prompt_tokens,
        deadline_ms: request
            .deadline
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        tags: request.tags.clone(),
        task: request.task.clone(),
    }
}

/// A tokenizer-free token estimate: ~4 bytes per token for English under BPE, counting each
/// non-ASCII character as its own token (they rarely merge).
pub fn estimate_tokens(text: &str) -> u32 {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    let non_ascii = text.chars().filter(|c| !c.is_ascii()).count();
    u32::try_from(ascii.div_ceil(4) + non_ascii).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimate_scales_with_length() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("日本"), 2);
        let kb = "word ".repeat(205);
        assert!((250..=260).contains(&estimate_tokens(&kb)));
    }
}
