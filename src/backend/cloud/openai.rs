//! OpenAI Chat Completions wire format (`POST {base_url}/chat/completions`), as also spoken by
//! vLLM, llama.cpp server and Ollama.

use serde::{Deserialize, Serialize};

use super::config::{CloudConfig, MaxTokensField};
use super::protocol::{error_sent_with_success, from_json, Parsed, StreamDecoder};
use super::sse::SseEvent;
use crate::backend::{BackendCall, FinishReason};
use crate::error::{Error, Result};

/// Path appended to the base URL.
pub(crate) const PATH: &str = "/chat/completions";

#[derive(Serialize)]
pub(crate) struct RequestBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl<'a> RequestBody<'a> {
    pub(crate) fn new(cfg: &'a CloudConfig, call: &'a BackendCall, stream: bool) -> Self {
        RequestBody {
            model: &cfg.model,
            messages: call
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: m.role.as_str(),
                    content: &m.content,
                })
                .collect(),
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            max_completion_tokens: (cfg.max_tokens_field == MaxTokensField::MaxCompletionTokens)
                .then_some(call.params.max_tokens)
                .flatten(),
            max_tokens: (cfg.max_tokens_field == MaxTokensField::MaxTokens)
                .then_some(call.params.max_tokens)
                .flatten(),
            temperature: call.params.temperature,
            top_p: call.params.top_p,
            seed: call.params.seed,
        }
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    /// How many of the prompt tokens came from the provider's prompt cache (billed lower).
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        // "stop", and "tool_calls" / "function_call" (a whole turn)
        _ => FinishReason::Stop,
    }
}

fn apply_usage(acc: &mut Parsed, usage: Option<WireUsage>) {
    if let Some(u) = usage {
        acc.input_tokens = u.prompt_tokens.or(acc.input_tokens);
        acc.output_tokens = u.completion_tokens.or(acc.output_tokens);
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens);
        acc.cached_input_tokens = cached.or(acc.cached_input_tokens);
    }
}

pub(crate) fn parse_response(body: &[u8]) -> Result<Parsed> {
    let c: Completion = from_json(body, "chat completion")?;
    let choice =
        c.choices.into_iter().next().ok_or_else(|| {
            Error::MalformedResponse("chat completion: `choices` is empty".into())
        })?;
    let mut parsed = Parsed {
        text: choice.message.content.unwrap_or_default(),
        finish: choice.finish_reason.as_deref().map(finish_reason),
        ..Parsed::default()
    };
    apply_usage(&mut parsed, c.usage);
    Ok(parsed)
}

pub(crate) fn on_event(dec: &mut StreamDecoder, event: &SseEvent) -> Result<Option<String>> {
    let data = event.data.trim();
    if data == "[DONE]" {
        dec.terminated = true;
        return Ok(None);
    }
    if data.is_empty() {
        return Ok(None);
    }
    // Some servers report a failure mid-stream as an `{"error": ...}` event: an object
    // (OpenAI, vLLM) or a string (Hugging Face TGI).
    if data.contains("\"error\"") {
        let has_error =
            serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| !v["error"].is_null());
        if has_error {
            return Err(error_sent_with_success(
                data.as_bytes(),
                "error event in stream",
            ));
        }
    }
    let chunk: Chunk = from_json(data.as_bytes(), "chat completion chunk")?;
    apply_usage(&mut dec.acc, chunk.usage);
    let mut text: Option<String> = None;
    for choice in chunk.choices {
        // Some servers send `""` (or null) on every chunk: not a finish reason.
        if let Some(r) = choice.finish_reason.as_deref().filter(|r| !r.is_empty()) {
            dec.acc.finish = Some(finish_reason(r));
            dec.finish_in_event = true;
        }
        if let Some(c) = choice.delta.and_then(|d| d.content) {
            text.get_or_insert_with(String::new).push_str(&c);
        }
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backend::cloud::config::Provider;
    use crate::backend::cloud::protocol::parse_response as parse;
    use crate::request::{GenerationParams, Message};

    #[test]
    fn body_shape() {
        let cfg = CloudConfig::openai("gpt-x");
        let call = BackendCall {
            messages: vec![Message::system("be brief"), Message::user("hi")],
            params: GenerationParams {
                max_tokens: Some(7),
                temperature: Some(0.5),
                top_p: None,
                seed: Some(42),
                repetition_penalty: Some(1.3),
            },
            deadline: None,
        };
        let v = serde_json::to_value(RequestBody::new(&cfg, &call, true)).unwrap();
        assert_eq!(v["model"], "gpt-x");
        // A local-tier setting: not sent (the API has no such field).
        assert!(v.get("repetition_penalty").is_none(), "{v}");
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][1]["content"], "hi");
        assert_eq!(v["max_completion_tokens"], 7);
        assert_eq!(v["seed"], 42);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(v.get("top_p").is_none());
        assert!(v.get("max_tokens").is_none());
        let v = serde_json::to_value(RequestBody::new(&cfg, &call, false)).unwrap();
        assert!(v.get("stream_options").is_none());
        let mut legacy = CloudConfig::openai("llama");
        legacy.max_tokens_field = MaxTokensField::MaxTokens;
        let v = serde_json::to_value(RequestBody::new(&legacy, &call, false)).unwrap();
        assert_eq!(v["max_tokens"], 7);
        assert!(v.get("max_completion_tokens").is_none());
    }

    /// A stream that ends without `[DONE]` is whole only when its last word was a finish
    /// reason: not an empty one (some servers send `""` on every chunk), and not one followed
    /// by more text (some send a reason on a chunk before the last).
    #[test]
    fn a_stream_without_done_is_whole_only_after_a_final_finish_reason() {
        use crate::backend::cloud::protocol::StreamDecoder;
        use crate::backend::cloud::sse::SseEvent;
        let chunk = |text: &str, finish: &str| SseEvent {
            event: String::new(),
            data: format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":{finish}}}]}}"#,
                serde_json::to_string(text).unwrap()
            ),
        };
        let run = |events: &[SseEvent]| {
            let mut dec = StreamDecoder::new(Provider::OpenAi, 1);
            for e in events {
                dec.on_event(e).unwrap();
            }
            dec.finish()
        };
        let stop = "\"stop\"";
        let empty = "\"\"";
        let whole = run(&[chunk("Hel", "null"), chunk("lo", "null"), chunk("", stop)]);
        assert_eq!(whole.unwrap().text, "Hello");
        let whole = run(&[chunk("Hel", "null"), chunk("lo", "\"length\"")]);
        assert_eq!(whole.unwrap().finish, FinishReason::Length);
        for cut in [
            vec![chunk("Hel", empty), chunk("lo", empty)],
            vec![chunk("Hel", stop), chunk("lo", "null")],
            vec![chunk("Hel", "null"), chunk("lo", "null")],
        ] {
            assert!(
                matches!(run(&cut), Err(Error::TruncatedStream(_))),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn parses_completion() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        let g = parse(Provider::OpenAi, body, 100).unwrap();
        assert_eq!(g.text, "Paris.");
        assert_eq!((g.usage.input_tokens, g.usage.output_tokens), (9, 2));
        assert!(!g.usage_estimated);
        assert_eq!(g.finish, FinishReason::Length);
        let no_usage = br#"{"choices":[{"message":{"content":"abcdefgh"}}]}"#;
        let g = parse(Provider::OpenAi, no_usage, 100).unwrap();
        assert!(g.usage_estimated);
        assert_eq!((g.usage.input_tokens, g.usage.output_tokens), (100, 2));
        assert!(matches!(
            parse(Provider::OpenAi, br#"{"choices":[]}"#, 1),
            Err(Error::MalformedResponse(_))
        ));
        assert!(matches!(
            parse(Provider::OpenAi, b"{not json", 1),
            Err(Error::MalformedResponse(_))
        ));
    }

    #[test]
    fn decodes_stream() {
        let mut d = StreamDecoder::new(Provider::OpenAi, 5);
        let ev = |s: &str| SseEvent {
            event: String::new(),
            data: s.into(),
        };
        assert_eq!(
            d.on_event(&ev(
                r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
            ))
            .unwrap(),
            None
        );
        assert_eq!(
            d.on_event(&ev(
                r#"{"choices":[{"delta":{"content":"Hi"}}],"usage":null}"#
            ))
            .unwrap()
            .as_deref(),
            Some("Hi")
        );
        d.on_event(&ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#))
            .unwrap();
        d.on_event(&ev(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        ))
        .unwrap();
        assert!(!d.is_terminated());
        d.on_event(&ev("[DONE]")).unwrap();
        let g = d.finish().unwrap();
        assert_eq!(g.text, "Hi");
        assert_eq!(g.usage.input_tokens, 3);
        assert!(!g.usage_estimated);
    }

    #[test]
    fn error_event_mid_stream_is_a_server_error() {
        let mut d = StreamDecoder::new(Provider::OpenAi, 5);
        let e = d
            .on_event(&SseEvent {
                event: String::new(),
                data: r#"{"error":{"message":"model overloaded","type":"server_error"}}"#.into(),
            })
            .unwrap_err();
        assert!(matches!(e, Error::Server { ref message, .. } if message.contains("overloaded")));
    }

    /// Hugging Face TGI's mid-stream error is a string, not an object.
    #[test]
    fn a_string_error_event_mid_stream_is_a_server_error() {
        let ev = |s: &str| SseEvent {
            event: String::new(),
            data: s.into(),
        };
        let mut d = StreamDecoder::new(Provider::OpenAi, 5);
        d.on_event(&ev(r#"{"choices":[{"delta":{"content":"Partial"}}]}"#))
            .unwrap();
        let e = d
            .on_event(&ev(r#"{"error":"CUDA out of memory"}"#))
            .unwrap_err();
        assert!(
            matches!(e, Error::Server { ref message, .. } if message.contains("CUDA out of memory")),
            "{e:?}"
        );
        // A chunk that merely has an `error` key set to null is a chunk.
        let mut d = StreamDecoder::new(Provider::OpenAi, 5);
        let text = d
            .on_event(&ev(
                r#"{"error":null,"choices":[{"delta":{"content":"Hi"}}]}"#,
            ))
            .unwrap();
        assert_eq!(text.as_deref(), Some("Hi"));
    }

    #[test]
    fn stream_without_done_is_truncated() {
        let mut d = StreamDecoder::new(Provider::OpenAi, 5);
        d.on_event(&SseEvent {
            event: String::new(),
            data: r#"{"choices":[{"delta":{"content":"Hi"}}]}"#.into(),
        })
        .unwrap();
        assert!(matches!(d.finish(), Err(Error::TruncatedStream(_))));
    }
}
