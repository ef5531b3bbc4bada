//! The SSE parser and both providers' stream decoders on arbitrary bytes.
//!
//! Input: the first byte is a split point, the rest the stream. Properties: never panics;
//! splitting the input into two chunks anywhere yields the same events; a decoder fed the
//! events either errors or, once finished, never reports a generation without its
//! provider's terminator, and the generation's text is the concatenation of the deltas.

use edgeroute::backend::cloud::sse::{SseEvent, SseParser};
use edgeroute::backend::cloud::{Provider, StreamDecoder};

fn parse(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, String> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, &mut out).map_err(|e| e.to_string())?;
    }
    p.finish(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(body.len());
    let whole = parse(&[body]);
    let split = parse(&[&body[..cut], &body[cut..]]);
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b, "chunking changed the events");
    }
    let Ok(events) = whole else {
        return;
    };
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mut dec = StreamDecoder::new(provider, 10);
        let mut text = String::new();
        let mut failed = false;
        for ev in &events {
            match dec.on_event(ev) {
                Ok(Some(d)) => text.push_str(&d),
                Ok(None) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        let terminated = dec.is_terminated();
        match dec.finish() {
            Ok(g) => {
                assert!(terminated, "a generation without a terminator");
                assert_eq!(g.text, text, "final text differs from the deltas");
            }
            Err(_) => assert!(!terminated, "a terminated stream failed to finish"),
        }
    }
}
