//! What an app sends ([`Request`]) and what it gets back ([`Response`]).

use std::fmt;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::backend::FinishReason;
use crate::decision::Decision;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The app's user.
    User,
    /// A previous model turn.
    Assistant,
}

impl Role {
    /// The wire name (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
///
/// `Debug` never prints the content (prompts stay out of logs); use the field directly.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("role", &self.role)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .finish()
    }
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Generation parameters. `None` means "the backend's default".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    /// Maximum number of new tokens, at least 1. Default: the policy's `[local].max_new_tokens`
    /// for the local tier, its `[cloud].max_tokens` for the cloud tier.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2; `0` or `None` means greedy for the local tier.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: Option<f32>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Local tier: a loop breaker. A token already generated [`REPETITION_MIN_COUNT`] or more
    /// times among the last [`REPETITION_WINDOW`] has its logit divided by this (multiplied when
    /// negative) before the pick; `1` turns it off, allowed range 1–2. Small models decoding
    /// greedily fall into loops ("1. **1011111…") without it. An answer differs from pure
    /// greedy decoding only where a token already said 3+ times was about to be picked again
    /// by a margin smaller than the penalty. Default: the local backend's (the policy's
    /// `[local].repetition_penalty`, else 1.1). Cloud providers ignore it.
    pub repetition_penalty: Option<f32>,
}

impl GenerationParams {
    /// Checks every value set: `max_tokens` at least 1, `temperature` from 0 to 2, `top_p` in
    /// (0, 1], `repetition_penalty` from 1 to 2. The router checks them before deciding, so a
    /// bad value is an error naming it, not a provider's 400 or a silent greedy run.
    pub fn check(&self) -> crate::Result<()> {
        let bad = |what: String| Err(crate::Error::InvalidRequest(what));
        if self.max_tokens == Some(0) {
            return bad("max_tokens must be at least 1".into());
        }
        if let Some(t) = self.temperature {
            if !(t.is_finite() && (0.0..=2.0).contains(&t)) {
                return bad(format!("temperature must be between 0 and 2, not {t}"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                return bad(format!(
                    "top_p must be greater than 0 and at most 1, not {p}"
                ));
            }
        }
        if let Some(p) = self.repetition_penalty {
            check_repetition_penalty(p)?;
        }
        Ok(())
    }
}

/// How many of the most recent generated tokens [`GenerationParams::repetition_penalty`] looks at.
pub const REPETITION_WINDOW: usize = 64;

/// How often a token must occur in the window before [`GenerationParams::repetition_penalty`]
/// applies to it. Measured on the default model (twelve prompts): penalising every recent
/// token (as llama.cpp does) broke three good greedy answers (a list gained a wrong item); from
/// three occurrences on, the ones that changed were those repeating themselves (a "1111…"
/// loop, a week list running on past Sunday, a haiku and a translation that said the same
/// phrase again).
pub const REPETITION_MIN_COUNT: usize = 3;

/// The local tier's repetition penalty when neither the request nor the policy sets one (as
/// llama.cpp's and Ollama's).
pub const DEFAULT_REPETITION_PENALTY: f32 = 1.1;

/// Checks a repetition penalty: finite, from 1 (off) to 2.
pub fn check_repetition_penalty(p: f32) -> crate::Result<f32> {
    if p.is_finite() && (1.0..=2.0).contains(&p) {
        Ok(p)
    } else {
        Err(crate::Error::InvalidRequest(format!(
            "repetition_penalty must be between 1 (off) and 2, not {p}"
        )))
    }
}

/// One request to the router.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The conversation, oldest first. The last user message is "the prompt".
    pub messages: Vec<Message>,
    /// Generation parameters.
    pub params: GenerationParams,
    /// How long the caller is willing to wait, end to end.
    pub deadline: Option<Duration>,
    /// Caller tags (matched by `tags_any` conditions).
    pub tags: Vec<String>,
    /// Task name (matched by `task` conditions).
    pub task: Option<String>,
    /// Neither look the answer up in the cache nor store it (a "regenerate" button). Requests
    /// that sample (a temperature above 0 and no seed) are never cached either: each asks for
    /// a new answer.
    pub skip_cache: bool,
}

impl Request {
    /// A one-turn request with a user prompt.
    pub fn new(prompt: impl Into<String>) -> Self {
        Request {
            messages: vec![Message::user(prompt)],
            ..Request::default()
        }
    }

    /// A request from a whole conversation.
    pub fn from_messages(messages: Vec<Message>) -> Self {
        Request {
            messages,
            ..Request::default()
        }
    }

    /// Prepends a system message.
    pub fn with_system(mut self, content: impl Into<String>) -> Self {
        self.messages.insert(0, Message::system(content));
        self
    }

    /// Adds a caller tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the end-to-end deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets [`Request::skip_cache`]: the answer is neither looked up nor stored.
    pub fn without_cache(mut self) -> Self {
        self.skip_cache = true;
        self
    }

    /// Whether the answer may come from, and go to, the cache: not when the caller said so,
    /// and not when it asks for a sampled answer (a temperature above 0 with no seed), which is
    /// meant to differ each time. Cloud answers with the provider's default temperature are
    /// cached: the app did not ask for variety.
    pub fn cacheable(&self) -> bool {
        let sampled =
            self.params.temperature.is_some_and(|t| t > 0.0) && self.params.seed.is_none();
        !self.skip_cache && !sampled
    }

    /// Sets the task name.
    pub fn with_task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }

    /// Sets the maximum number of new tokens.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.params.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.params.temperature = Some(temperature);
        self
    }

    /// Sets the sampling seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.params.seed = Some(seed);
        self
    }

    /// Sets the local tier's repetition penalty (`1` = off; see [`GenerationParams`]).
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.params.repetition_penalty = Some(penalty);
        self
    }

    /// The text of the last user message (empty when there is none).
    pub fn prompt(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or("")
    }
}

/// Which tier produced the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// The on-device model.
    Local,
    /// The cloud model API.
    Cloud,
    /// The answer cache.
    Cache,
}

impl Route {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Cloud => "cloud",
            Route::Cache => "cache",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (all of them, including `cached_input_tokens`).
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Of `input_tokens`, those the cloud provider read from its prompt cache, which it bills
    /// at `[cloud].cached_input_usd_per_mtok` (OpenAI's `cached_tokens`, Anthropic's
    /// `cache_read_input_tokens`). 0 for local answers and when the provider does not say.
    #[serde(default)]
    pub cached_input_tokens: u64,
}

impl Usage {
    /// Usage of `input_tokens` prompt tokens (none from a prompt cache) and `output_tokens`
    /// generated ones.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
            cached_input_tokens: 0,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        self.input_tokens += rhs.input_tokens;
        self.output_tokens += rhs.output_tokens;
        self.cached_input_tokens += rhs.cached_input_tokens;
    }
}

/// Money spent, in US dollars, decimal-exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Amount in USD.
    #[serde(with = "rust_decimal::serde::str")]
    pub usd: Decimal,
    /// True when usage was estimated (the provider did not report it).
    pub estimated: bool,
}

impl Cost {
    /// Zero cost (local and cache answers).
    pub const ZERO: Cost = Cost {
        usd: Decimal::ZERO,
        estimated: false,
    };
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, rhs: Cost) {
        self.usd += rhs.usd;
        self.estimated |= rhs.estimated;
    }
}

/// How long each pipeline stage took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// PII scan, token estimate, features.
    pub inspect: Duration,
    /// Cache lookup.
    pub cache: Duration,
    /// Policy decision.
    pub decide: Duration,
    /// Running the backend(s).
    pub execute: Duration,
    /// Cache write (the cost ledger is settled during `execute`; statistics are recorded after
    /// `total` is taken).
    pub record: Duration,
    /// End to end.
    pub total: Duration,
    /// From the request's start to the answering tier's first token (`None` when the answering
    /// tier streamed no text: an empty answer). A cache hit's first token is its whole answer.
    pub first_token: Option<Duration>,
}

/// Which statistic of the generated tokens' log-probabilities a cascade compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceStat {
    /// Mean log-probability over the first sentence of the reply (best predictor measured).
    #[default]
    #[serde(alias = "firstsentence")]
    FirstSentence,
    /// Mean log-probability over the whole reply.
    Mean,
    /// Minimum log-probability.
    Min,
    /// 10th-percentile log-probability.
    P10,
}

impl ConfidenceStat {
    /// The name a policy's `confidence_stat` gives it: `first_sentence`, `mean`, `min`, `p10`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfidenceStat::FirstSentence => "first_sentence",
            ConfidenceStat::Mean => "mean",
            ConfidenceStat::Min => "min",
            ConfidenceStat::P10 => "p10",
        }
    }
}

impl std::fmt::Display for ConfidenceStat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local model's confidence in its answer, from generated tokens' log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    /// Mean log-probability over the first sentence.
    pub first_sentence: f32,
    /// Mean log-probability over all generated tokens.
    pub mean: f32,
    /// Minimum log-probability.
    pub min: f32,
    /// 10th-percentile log-probability.
    pub p10: f32,
    /// Number of generated tokens the statistics cover.
    pub tokens: u32,
}

impl Confidence {
    /// Computes the statistics from per-token log-probabilities and the number of tokens in the
    /// first sentence. Returns `None` for an empty reply.
    pub fn from_logprobs(logprobs: &[f32], first_sentence_tokens: usize) -> Option<Self> {
        if logprobs.is_empty() {
            return None;
        }
        let mean_of = |xs: &[f32]| xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
        let first = &logprobs[..first_sentence_tokens.clamp(1, logprobs.len())];
        let mut sorted = logprobs.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p10_index = ((sorted.len() - 1) as f64 * 0.1).floor() as usize;
        Some(Confidence {
            first_sentence: mean_of(first) as f32,
            mean: mean_of(logprobs) as f32,
            min: sorted[0],
            p10: sorted[p10_index],
            tokens: u32::try_from(logprobs.len()).unwrap_or(u32::MAX),
        })
    }

    /// The chosen statistic.
    pub fn get(&self, stat: ConfidenceStat) -> f32 {
        match stat {
            ConfidenceStat::FirstSentence => self.first_sentence,
            ConfidenceStat::Mean => self.mean,
            ConfidenceStat::Min => self.min,
            ConfidenceStat::P10 => self.p10,
        }
    }
}

/// One backend attempt made while answering (kept in order, including failures).
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Which tier.
    pub route: Route,
    /// Backend name (model id).
    pub backend: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// From the attempt's start to its first token, when it streamed one.
    pub first_token: Option<Duration>,
    /// Tokens used.
    pub usage: Usage,
    /// What it cost.
    pub cost: Cost,
    /// Confidence, for local attempts.
    pub confidence: Option<Confidence>,
    /// `None` on success, the error message otherwise.
    pub error: Option<String>,
}

/// The router's answer. `Debug` shows the text's length, not the text (an answer often repeats
/// the personal data of the prompt, and debug output ends up in logs).
#[derive(Clone)]
pub struct Response {
    /// The answer text.
    pub text: String,
    /// What answered.
    pub route: Route,
    /// The decision (rule + reasons), including reasons added while executing (fallback, escalation).
    pub decision: Decision,
    /// Token usage of the attempt that answered (all attempts: see `attempts`).
    pub usage: Usage,
    /// Total cost of all attempts.
    pub cost: Cost,
    /// Per-stage timings.
    pub timings: Timings,
    /// The local model's confidence, when it ran.
    pub confidence: Option<Confidence>,
    /// Every backend attempt, in order.
    pub attempts: Vec<Attempt>,
    /// True when served from the answer cache.
    pub cached: bool,
    /// Why the model that answered stopped ([`FinishReason::Stop`]: the answer is whole). An
    /// answer cut at the token limit, stopped by a content filter or refused still comes back
    /// as `Ok`; check this (or [`FinishReason::is_complete`]) before treating it as whole.
    /// A cache hit reports the original answer's.
    pub finish: FinishReason,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("route", &self.route)
            .field("decision", &self.decision)
            .field("usage", &self.usage)
            .field("cost", &self.cost)
            .field("timings", &self.timings)
            .field("confidence", &self.confidence)
            .field("attempts", &self.attempts)
            .field("cached", &self.cached)
            .field("finish", &self.finish)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Explain, `ask --json` and reasons name a statistic as the policy language does.
    #[test]
    fn confidence_stats_are_named_as_in_policies() {
        for (stat, name) in [
            (ConfidenceStat::FirstSentence, "first_sentence"),
            (ConfidenceStat::Mean, "mean"),
            (ConfidenceStat::Min, "min"),
            (ConfidenceStat::P10, "p10"),
        ] {
            assert_eq!(stat.to_string(), name);
            assert_eq!(serde_json::to_string(&stat).unwrap(), format!("\"{name}\""));
            let back: ConfidenceStat = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, stat);
        }
        // Records written before the rename still read.
        let old: ConfidenceStat = serde_json::from_str("\"firstsentence\"").unwrap();
        assert_eq!(old, ConfidenceStat::FirstSentence);
    }

    #[test]
    fn confidence_statistics() {
        let lp = [-0.1, -0.2, -3.0, -0.5, -0.2];
        let c = Confidence::from_logprobs(&lp, 2).unwrap();
        assert!((c.first_sentence - -0.15).abs() < 1e-6);
        assert!((c.mean - -0.8).abs() < 1e-6);
        assert_eq!(c.min, -3.0);
        assert_eq!(c.p10, -3.0);
        assert_eq!(c.tokens, 5);
        assert_eq!(c.get(ConfidenceStat::Mean), c.mean);
        assert!(Confidence::from_logprobs(&[], 0).is_none());
    }

    #[test]
    fn message_debug_hides_content() {
        let m = Message::user("my secret diagnosis");
        assert!(!format!("{m:?}").contains("secret"));
    }

    #[test]
    fn prompt_is_last_user_message() {
        let r = Request::from_messages(vec![
            Message::user("first"),
            Message::assistant("a"),
            Message::user("second"),
        ]);
        assert_eq!(r.prompt(), "second");
    }
}
