//! Anthropic Messages wire format (`POST {base_url}/messages`, `x-api-key`,
//! `anthropic-version`). System messages travel in the top-level `system` field.

use serde::{Deserialize, Serialize};

use super::config::CloudConfig;
use super::protocol::{from_json, Parsed, StreamDecoder};
use super::sse::SseEvent;
use crate::backend::{BackendCall, FinishReason};
use crate::error::{Error, Result};
use crate::request::Role;

/// Path appended to the base URL.
pub(crate) const PATH: &str = "/messages";

#[derive(Serialize)]
pub(crate) struct RequestBody<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl<'a> RequestBody<'a> {
    pub(crate) fn new(cfg: &'a CloudConfig, call: &'a BackendCall, stream: bool) -> Self {
        let system: Vec<&str> = call
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        RequestBody {
            model: &cfg.model,
            max_tokens: call.params.max_tokens.unwrap_or(cfg.default_max_tokens),
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages: call
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| WireMessage {
                    role: m.role.as_str(),
                    content: &m.content,
                })
                .collect(),
            stream,
            // Anthropic's temperature range is [0, 1].
            temperature: call.params.temperature.map(|t| t.clamp(0.0, 1.0)),
            top_p: call.params.top_p,
        }
    }
}

#[derive(Deserialize)]
struct WireUsage {
    /// Prompt tokens after the last cache breakpoint (not read from or written to the cache).
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    /// Prompt tokens read from the provider's prompt cache (billed lower).
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    /// Prompt tokens written to the prompt cache.
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Notes this report's prompt-token counts on `acc`, each one it carries (a later report
    /// may repeat some, or leave them out or null: what it leaves out stays as it was).
    fn note_input(&self, acc: &mut Parsed) {
        acc.input_tokens = self.input_tokens.or(acc.input_tokens);
        acc.cache_read_tokens = self.cache_read_input_tokens.or(acc.cache_read_tokens);
        acc.cache_write_tokens = self.cache_creation_input_tokens.or(acc.cache_write_tokens);
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockDelta {
        delta: BlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: Option<MessageDeltaBody>,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: super::protocol::ErrorDetail,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct BlockDelta {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "max_tokens" => FinishReason::Length,
        "refusal" => FinishReason::Refusal,
        "model_context_window_exceeded" => FinishReason::ContextFull,
        // "end_turn", "stop_sequence", "tool_use", "pause_turn"
        _ => FinishReason::Stop,
    }
}

pub(crate) fn parse_response(body: &[u8]) -> Result<Parsed> {
    let m: MessageResponse = from_json(body, "message")?;
    let text = m
        .content
        .into_iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text)
        .collect::<String>();
    let mut parsed = Parsed {
        text,
        output_tokens: m.usage.as_ref().and_then(|u| u.output_tokens),
        finish: m.stop_reason.as_deref().map(finish_reason),
        ..Parsed::default()
    };
    if let Some(u) = &m.usage {
        u.note_input(&mut parsed);
    }
    Ok(parsed)
}

pub(crate) fn on_event(dec: &mut StreamDecoder, event: &SseEvent) -> Result<Option<String>> {
    if event.data.trim().is_empty() {
        return Ok(None);
    }
    match from_json::<StreamEvent>(event.data.as_bytes(), "message stream event")? {
        StreamEvent::MessageStart { message } => {
            if let Some(u) = message.usage {
                u.note_input(&mut dec.acc);
            }
        }
        StreamEvent::ContentBlockDelta { delta } => {
            if delta.kind == "text_delta" {
                return Ok(delta.text);
            }
        }
        StreamEvent::MessageDelta { delta, usage } => {
            if let Some(r) = delta.and_then(|d| d.stop_reason).filter(|r| !r.is_empty()) {
                dec.acc.finish = Some(finish_reason(&r));
                dec.finish_in_event = true;
            }
            if let Some(u) = usage {
                // Anthropic reports cumulative output tokens here.
                dec.acc.output_tokens = u.output_tokens.or(dec.acc.output_tokens);
                u.note_input(&mut dec.acc);
            }
        }
        StreamEvent::MessageStop => dec.terminated = true,
        StreamEvent::Error { error } => {
            return Err(match error.kind.as_deref() {
                Some("rate_limit_error") => Error::RateLimited {
                    retry_after: None,
                    message: error.message(),
                },
                Some("overloaded_error") => Error::Server {
                    status: 529,
                    message: error.message(),
                    retry_after: None,
                },
                _ => Error::Server {
                    status: 500,
                    message: format!("error event in stream: {}", error.message()),
                    retry_after: None,
                },
            })
        }
        StreamEvent::Other => {}
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backend::cloud::config::Provider;
    use crate::backend::cloud::protocol::parse_response as parse;
    use crate::request::{GenerationParams, Message};

    #[test]
    fn body_moves_system_to_top_level() {
        let cfg = CloudConfig::anthropic("claude-x");
        let call = BackendCall {
            messages: vec![Message::system("be brief"), Message::user("hi")],
            params: GenerationParams {
                temperature: Some(1.7),
                ..GenerationParams::default()
            },
            deadline: None,
        };
        let v = serde_json::to_value(RequestBody::new(&cfg, &call, true)).unwrap();
        assert_eq!(v["system"], "be brief");
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["max_tokens"], 1024);
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["stream"], true);
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (reason, finish) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("refusal", FinishReason::Refusal),
            ("model_context_window_exceeded", FinishReason::ContextFull),
        ] {
            assert_eq!(finish_reason(reason), finish, "{reason}");
        }
    }

    #[test]
    fn parses_message() {
        let body = br#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],"stop_reason":"max_tokens","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let g = parse(Provider::Anthropic, body, 1).unwrap();
        assert_eq!(g.text, "Hello");
        assert_eq!((g.usage.input_tokens, g.usage.output_tokens), (12, 3));
        assert_eq!(g.finish, FinishReason::Length);
        assert!(matches!(
            parse(Provider::Anthropic, br#"{"content":"x"}"#, 1),
            Err(Error::MalformedResponse(_))
        ));
    }

    /// A body that does not parse is described by where it went wrong, never by its text: the
    /// error reaches logs, decisions and `ask --json`, and the text may be the answer.
    #[test]
    fn parse_errors_do_not_echo_the_body() {
        for (body, want) in [
            (
                &br#"{"content":"PRIVATE-ANSWER"}"#[..],
                "message: a value of the wrong type or form at line 1 column 27",
            ),
            (
                br#"{"content":[{"type":"text","text":"PRIVATE-ANSWER"}],"stop_reason":7}"#,
                "message: a value of the wrong type or form at line 1 column 68",
            ),
            (
                br#"{"content":[{"type":"text","text":"PRIVATE-ANSWER""#,
                "message: the JSON ends early",
            ),
            (
                br#"{"content": PRIVATE-ANSWER}"#,
                "message: not valid JSON at line 1 column 13",
            ),
            (
                br#"{"id":"m"}"#,
                "message: missing field `content` at line 1 column 10",
            ),
        ] {
            match parse(Provider::Anthropic, body, 1) {
                Err(Error::MalformedResponse(m)) => assert_eq!(m, want),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Prompt-cache counts from `message_start` survive a `message_delta` that repeats
    /// `input_tokens` without them (or with them null), and are updated by one that has them.
    #[test]
    fn prompt_cache_counts_add_up_across_a_stream() {
        let ev = |s: &str| SseEvent {
            event: String::new(),
            data: s.into(),
        };
        let start = r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":4,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#;
        for (delta, want) in [
            (r#"{"output_tokens":7}"#, (124, 100)),
            (r#"{"input_tokens":4,"output_tokens":7}"#, (124, 100)),
            (
                r#"{"input_tokens":4,"cache_read_input_tokens":null,"output_tokens":7}"#,
                (124, 100),
            ),
            (
                r#"{"input_tokens":5,"cache_read_input_tokens":110,"cache_creation_input_tokens":0,"output_tokens":7}"#,
                (115, 110),
            ),
        ] {
            let mut d = StreamDecoder::new(Provider::Anthropic, 5);
            d.on_event(&ev(start)).unwrap();
            d.on_event(&ev(&format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn"}},"usage":{delta}}}"#
            )))
            .unwrap();
            d.on_event(&ev(r#"{"type":"message_stop"}"#)).unwrap();
            let u = d.finish().unwrap().usage;
            assert_eq!((u.input_tokens, u.cached_input_tokens), want, "{delta}");
            assert_eq!(u.output_tokens, 7);
        }
    }

    #[test]
    fn decodes_stream() {
        let mut d = StreamDecoder::new(Provider::Anthropic, 5);
        let ev = |s: &str| SseEvent {
            event: String::new(),
            data: s.into(),
        };
        d.on_event(&ev(
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#,
        ))
        .unwrap();
        d.on_event(&ev(r#"{"type":"ping"}"#)).unwrap();
        assert_eq!(
            d.on_event(&ev(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#
            ))
            .unwrap()
            .as_deref(),
            Some("Hi")
        );
        d.on_event(&ev(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        ))
        .unwrap();
        d.on_event(&ev(r#"{"type":"message_stop"}"#)).unwrap();
        let g = d.finish().unwrap();
        assert_eq!((g.usage.input_tokens, g.usage.output_tokens), (25, 15));
        assert!(!g.usage_estimated);
        assert_eq!(g.text, "Hi");
    }

    #[test]
    fn error_event_is_typed() {
        let mut d = StreamDecoder::new(Provider::Anthropic, 5);
        let e = d
            .on_event(&SseEvent {
                event: "error".into(),
                data:
                    r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                        .into(),
            })
            .unwrap_err();
        assert!(matches!(e, Error::Server { status: 529, .. }));
    }
}
