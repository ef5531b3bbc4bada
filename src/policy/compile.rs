//! Phase two: validate a [`RawPolicy`] and produce the runtime [`CompiledPolicy`].
//!
//! Every problem becomes a [`Diagnostic`] with `file:line:column`, the TOML path and, where a
//! name was misspelled, the nearest valid one. All problems are reported at once.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ring::digest;
use rust_decimal::Decimal;

use super::raw::{RawDelay, RawNumber, RawPolicy, RawRoute, RawTest, RawWhen};
use super::source::{nearest, with_suggestion, SourceMap, TomlPath};
use super::Diagnostic;
use crate::cache::{CacheConfig, CacheMode};
use crate::decision::{HedgeDelay, HedgeFirst, Plan};
use crate::ledger::BudgetLimits;
use crate::privacy::{CustomPattern, KeywordList, PrivacyConfig, Scanner, BUILTIN_KINDS};
use crate::request::ConfidenceStat;
use crate::signals::{CloudHealth, Network};

/// A set of PII kinds as a bitmask over the policy's kind table (built-ins, then custom kinds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindSet(pub u64);

impl KindSet {
    /// True when the two sets share a kind.
    pub fn intersects(self, other: KindSet) -> bool {
        self.0 & other.0 != 0
    }
    /// True when every kind of `other` is in `self`.
    pub fn contains_all(self, other: KindSet) -> bool {
        self.0 & other.0 == other.0
    }
    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One condition of a rule's `when`. A rule matches when all its conditions hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `pii = true|false`.
    Pii(bool),
    /// `pii_any = [..]`.
    PiiAny(KindSet),
    /// `pii_all = [..]`.
    PiiAll(KindSet),
    /// `pii_none = [..]`.
    PiiNone(KindSet),
    /// `prompt_tokens_gt = n`.
    PromptTokensGt(u32),
    /// `prompt_tokens_lt = n`.
    PromptTokensLt(u32),
    /// `deadline_ms_lt = n`.
    DeadlineMsLt(u64),
    /// `local_too_slow = true|false`.
    LocalTooSlow(bool),
    /// `budget_left_usd_lt = x`.
    BudgetLeftLt(Decimal),
    /// `network = "online"|"offline"`.
    Network(Network),
    /// `cloud_health = ..`.
    CloudHealth(Vec<CloudHealth>),
    /// `tags_any = [..]`.
    TagsAny(Vec<String>),
    /// `task = ..`.
    Task(Vec<String>),
}

impl Condition {
    /// Every request that meets `other` meets this condition too. A sufficient test, per pair
    /// of conditions: `false` does not prove the contrary.
    fn follows_from(&self, other: &Condition) -> bool {
        use Condition as C;
        match (self, other) {
            (C::Pii(true), C::Pii(true) | C::PiiAll(_)) | (C::Pii(false), C::Pii(false)) => true,
            (C::Pii(true), C::PiiAny(b)) => b.0 != 0,
            (C::PiiAny(a), C::PiiAny(b)) => b.0 != 0 && a.contains_all(*b),
            (C::PiiAny(a), C::PiiAll(b)) => a.intersects(*b),
            (C::PiiAll(a), C::PiiAll(b)) | (C::PiiNone(a), C::PiiNone(b)) => b.contains_all(*a),
            (C::PiiNone(_), C::Pii(false)) => true,
            (C::PromptTokensGt(a), C::PromptTokensGt(b)) => b >= a,
            (C::PromptTokensLt(a), C::PromptTokensLt(b)) => b <= a,
            (C::DeadlineMsLt(a), C::DeadlineMsLt(b)) => b <= a,
            (C::BudgetLeftLt(a), C::BudgetLeftLt(b)) => b <= a,
            (C::LocalTooSlow(a), C::LocalTooSlow(b)) => a == b,
            (C::Network(a), C::Network(b)) => a == b,
            (C::CloudHealth(a), C::CloudHealth(b)) => b.iter().all(|h| a.contains(h)),
            (C::TagsAny(a), C::TagsAny(b)) | (C::Task(a), C::Task(b)) => {
                b.iter().all(|t| a.contains(t))
            }
            _ => false,
        }
    }
}

/// A rule with `earlier`'s conditions takes every request that a later rule with `later`'s
/// would: each earlier condition follows from one of the later rule's. (No conditions at all:
/// a catch-all, which takes everything.)
fn shadows(earlier: &[Condition], later: &[Condition]) -> bool {
    earlier
        .iter()
        .all(|e| later.iter().any(|l| e.follows_from(l)))
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    /// Unique name.
    pub name: String,
    /// All must hold; empty = catch-all.
    pub conditions: Vec<Condition>,
    /// What to do when it matches.
    pub plan: Plan,
}

/// The largest `[local].max_waiting`.
const MAX_WAITING_LIMIT: u32 = 65_536;

/// `[local]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSection {
    /// Model name under `<home>/models/` (default `smollm2-135m-instruct`).
    pub model: String,
    /// Explicit model directory.
    pub model_dir: Option<PathBuf>,
    /// Explicit runtime library.
    pub runtime_path: Option<PathBuf>,
    /// Max new tokens (default 128).
    pub max_new_tokens: u32,
    /// Repetition penalty for requests that set none (default
    /// [`crate::request::DEFAULT_REPETITION_PENALTY`]; 1 = off).
    pub repetition_penalty: f32,
    /// Intra-op threads (default 2).
    pub threads: u32,
    /// Session pool size (default 1).
    pub sessions: u32,
    /// ONNX Runtime's threads busy-wait between operators (default false): much faster
    /// decoding on cores the app has to itself, much slower when other work shares them.
    pub spinning: bool,
    /// Most requests waiting for a session of the local model (`None`: the local backend's
    /// default, 256); one more finds the tier unavailable, and an unpinned plan answers it
    /// from the cloud. 0: never wait.
    pub max_waiting: Option<u32>,
}

/// Cloud API flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI Chat Completions (and compatible servers).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// `[cloud]`, validated. `Debug` shows `base_url` without credentials it may carry.
#[derive(Clone, PartialEq, Eq)]
pub struct CloudSection {
    /// Provider.
    pub provider: ProviderKind,
    /// Model id.
    pub model: String,
    /// Base URL (before a `RouterBuilder::cloud_base_url` override, which the CLI takes from
    /// `--cloud-url` or `EDGEROUTE_CLOUD_URL`).
    pub base_url: String,
    /// Env var holding the key.
    pub api_key_env: String,
    /// USD per million input tokens.
    pub input_usd_per_mtok: Decimal,
    /// USD per million output tokens.
    pub output_usd_per_mtok: Decimal,
    /// USD per million input tokens the provider read from its prompt cache (default: the
    /// input price, which never estimates a call too low).
    pub cached_input_usd_per_mtok: Decimal,
    /// Connect timeout (default 2 s).
    pub connect_timeout: Duration,
    /// First-token timeout (default 15 s).
    pub first_token_timeout: Duration,
    /// Longest silence in a streamed answer once it has started.
    pub idle_timeout: Duration,
    /// Total timeout (default 60 s).
    pub total_timeout: Duration,
    /// Max retries (default 2).
    pub max_retries: u32,
    /// Output limit of a cloud answer when the request sets none, and what the budget
    /// reserves for it (default [`DEFAULT_CLOUD_MAX_TOKENS`]).
    pub max_tokens: u32,
    /// Allow `http://` to non-loopback hosts.
    pub allow_insecure_http: bool,
    /// Extra certificate authorities to trust (a PEM file; a relative path is taken from the
    /// working directory, as `model_dir` is).
    pub ca_file: Option<PathBuf>,
    /// Send the output limit as `max_tokens` rather than `max_completion_tokens` (OpenAI
    /// protocol; servers such as Ollama only read `max_tokens`).
    pub legacy_max_tokens: bool,
    /// `[cloud.breaker]` (the defaults when absent).
    pub breaker: BreakerSection,
}

impl std::fmt::Debug for CloudSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let CloudSection {
            provider,
            model,
            base_url,
            api_key_env,
            input_usd_per_mtok,
            output_usd_per_mtok,
            cached_input_usd_per_mtok,
            connect_timeout,
            first_token_timeout,
            idle_timeout,
            total_timeout,
            max_retries,
            max_tokens,
            allow_insecure_http,
            ca_file,
            legacy_max_tokens,
            breaker,
        } = self;
        f.debug_struct("CloudSection")
            .field("provider", provider)
            .field("model", model)
            .field("base_url", &without_credentials(base_url))
            .field("api_key_env", api_key_env)
            .field("input_usd_per_mtok", input_usd_per_mtok)
            .field("output_usd_per_mtok", output_usd_per_mtok)
            .field("cached_input_usd_per_mtok", cached_input_usd_per_mtok)
            .field("connect_timeout", connect_timeout)
            .field("first_token_timeout", first_token_timeout)
            .field("idle_timeout", idle_timeout)
            .field("total_timeout", total_timeout)
            .field("max_retries", max_retries)
            .field("max_tokens", max_tokens)
            .field("allow_insecure_http", allow_insecure_http)
            .field("ca_file", ca_file)
            .field("legacy_max_tokens", legacy_max_tokens)
            .field("breaker", breaker)
            .finish()
    }
}

/// `[cloud].max_tokens` when the policy does not set it: room for a long answer (the local
/// tier's 128 would cut the answers a policy sends to the cloud because they are hard or long).
pub const DEFAULT_CLOUD_MAX_TOKENS: u32 = 1024;

/// `[cloud.breaker]`, validated: when the cloud's circuit breaker opens, and for how long.
/// The defaults are those of the cloud backend's `BreakerConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSection {
    /// Failures in a row that open the breaker (default 5).
    pub consecutive_failures: u32,
    /// Recent outcomes kept for the failure ratio (default 20).
    pub window: u32,
    /// Outcomes needed in the window before the ratio applies (default 10; at most `window`).
    pub min_calls: u32,
    /// Failure share of the window that opens the breaker, in (0, 1] (default 0.5).
    pub failure_ratio: Decimal,
    /// How long the breaker stays open before probing (default 30 s).
    pub open_for: Duration,
    /// Probe calls allowed at once while half-open (default 1).
    pub half_open_probes: u32,
    /// How long a failure to connect marks the network offline (default 30 s).
    pub offline_for: Duration,
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection {
            consecutive_failures: 5,
            window: 20,
            min_calls: 10,
            failure_ratio: Decimal::new(5, 1),
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
            offline_for: Duration::from_secs(30),
        }
    }
}

/// Largest count a `[cloud.breaker]` key accepts: anything beyond is surely a typo (and a
/// window that size would never fill).
const MAX_BREAKER_COUNT: u32 = 10_000;

/// Longest `[cloud.breaker]` duration, in ms (one day): a breaker open or a network marked
/// offline for longer would hide the provider's recovery for good.
const MAX_BREAKER_MS: u64 = 86_400_000;

impl CloudSection {
    /// What a call with a prompt of `prompt_tokens` reserves against the budget before it is
    /// made: the whole prompt at the input price and its output limit (`max_tokens`, else
    /// `[cloud].max_tokens`) at the output price.
    pub fn call_estimate(&self, prompt_tokens: u32, max_tokens: Option<u32>) -> Decimal {
        self.cost(crate::request::Usage::new(
            u64::from(prompt_tokens),
            u64::from(max_tokens.unwrap_or(self.max_tokens)),
        ))
    }

    /// Cost of a call, decimal-exact: prompt tokens at the input price (those read from the
    /// provider's prompt cache at the cached-input price) and generated tokens at the output
    /// price.
    pub fn cost(&self, usage: crate::request::Usage) -> Decimal {
        let million = Decimal::from(1_000_000u32);
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        // Saturating: a compiled policy bounds the prices, but the section is public.
        [
            (usage.input_tokens - cached, self.input_usd_per_mtok),
            (cached, self.cached_input_usd_per_mtok),
            (usage.output_tokens, self.output_usd_per_mtok),
        ]
        .into_iter()
        .fold(Decimal::ZERO, |sum, (tokens, price)| {
            sum.saturating_add(Decimal::from(tokens).saturating_mul(price))
        }) / million
    }
}

impl BudgetSection {
    /// A daily or monthly limit is set: there is a budget to enforce.
    pub fn has_limits(&self) -> bool {
        self.limits.daily_usd.is_some() || self.limits.monthly_usd.is_some()
    }
}

/// What an exhausted budget does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Answer locally.
    Local,
    /// Refuse.
    Refuse,
}

/// `[budget]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSection {
    /// Daily and monthly limits (none by default).
    pub limits: BudgetLimits,
    /// What happens when exhausted (default local).
    pub on_exhausted: OnExhausted,
}

/// `[latency]`, validated: the local cost model used before measurements exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySection {
    /// Prefill ms per prompt token (default 1.5).
    pub local_prefill_ms_per_token: Decimal,
    /// Decode ms per output token (default 10).
    pub local_decode_ms_per_token: Decimal,
    /// Cloud estimate (default 800 ms).
    pub cloud_ms: u64,
}

impl LatencySection {
    /// Estimated local latency for a prompt and output length, in ms.
    pub fn local_estimate_ms(&self, prompt_tokens: u32, output_tokens: u32) -> u64 {
        // Saturating: a compiled policy bounds the rates, but the section is public.
        let ms = self
            .local_prefill_ms_per_token
            .saturating_mul(Decimal::from(prompt_tokens))
            .saturating_add(
                self.local_decode_ms_per_token
                    .saturating_mul(Decimal::from(output_tokens)),
            );
        u64::try_from(ms.ceil()).unwrap_or(u64::MAX)
    }
}

/// A `[[test]]` case, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTest {
    /// Name.
    pub name: String,
    /// Prompt.
    pub prompt: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Task.
    pub task: Option<String>,
    /// Deadline.
    pub deadline_ms: Option<u64>,
    /// Network.
    pub network: Network,
    /// Cloud health.
    pub cloud_health: CloudHealth,
    /// Budget left.
    pub budget_left_usd: Option<Decimal>,
    /// Cloud configured.
    pub cloud_available: bool,
    /// Local model installed.
    pub local_available: bool,
    /// Expected route.
    pub expect_route: String,
    /// Expected rule.
    pub expect_rule: Option<String>,
    /// `file:line:col` of the case, for reports.
    pub location: String,
}

/// A validated policy, ready for `decide()`.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// Display name.
    pub name: String,
    /// Version (explicit or a hash of the file): part of every cache key.
    pub version: String,
    /// Where it came from.
    pub file: PathBuf,
    /// Ordered rules.
    pub rules: Vec<CompiledRule>,
    /// `[defaults]`.
    pub defaults: Plan,
    /// `[local]`.
    pub local: LocalSection,
    /// `[cloud]`.
    pub cloud: Option<CloudSection>,
    /// `[budget]`.
    pub budget: BudgetSection,
    /// `[privacy]`.
    pub privacy: PrivacyConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[latency]`.
    pub latency: LatencySection,
    /// `[distill]`.
    pub distill: crate::distill::DistillConfig,
    /// `[[test]]`.
    pub tests: Vec<PolicyTest>,
    /// What is valid but probably not what the author meant (a rule that keeps personal data
    /// local without pinning it, a cloud rule that only fires offline), in file order.
    /// `edgeroute policy check` prints them; the router logs them when built.
    pub warnings: Vec<Diagnostic>,
    /// Kind table: bit i of a [`KindSet`] is `kinds[i]`.
    pub kinds: Vec<String>,
    /// The compiled PII scanner.
    pub scanner: Scanner,
}

impl CompiledPolicy {
    /// The [`KindSet`] of the given kind names (unknown names are ignored).
    pub fn kind_set<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> KindSet {
        let mut set = 0u64;
        for n in names {
            if let Some(i) = self.kinds.iter().position(|k| k == n) {
                set |= 1 << i;
            }
        }
        KindSet(set)
    }

    /// The kind names in a set, in table order.
    pub fn kind_names(&self, set: KindSet) -> Vec<String> {
        self.kinds
            .iter()
            .enumerate()
            .filter(|(i, _)| set.0 & (1 << i) != 0)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// `condition` as a policy writes it: `tags_any = ["hard"]`, `pii_any = ["email"]`.
    pub fn describe(&self, condition: &Condition) -> String {
        let list = |items: &[String]| format!("{items:?}");
        match condition {
            Condition::Pii(b) => format!("pii = {b}"),
            Condition::PiiAny(s) => format!("pii_any = {}", list(&self.kind_names(*s))),
            Condition::PiiAll(s) => format!("pii_all = {}", list(&self.kind_names(*s))),
            Condition::PiiNone(s) => format!("pii_none = {}", list(&self.kind_names(*s))),
            Condition::PromptTokensGt(n) => format!("prompt_tokens_gt = {n}"),
            Condition::PromptTokensLt(n) => format!("prompt_tokens_lt = {n}"),
            Condition::DeadlineMsLt(n) => format!("deadline_ms_lt = {n}"),
            Condition::LocalTooSlow(b) => format!("local_too_slow = {b}"),
            Condition::BudgetLeftLt(d) => format!("budget_left_usd_lt = \"{d}\""),
            Condition::Network(n) => format!("network = \"{n}\""),
            Condition::CloudHealth(h) => format!(
                "cloud_health = {}",
                list(&h.iter().map(ToString::to_string).collect::<Vec<_>>())
            ),
            Condition::TagsAny(t) => format!("tags_any = {}", list(t)),
            Condition::Task(t) => format!("task = {}", list(t)),
        }
    }
}

const ROUTES: &[&str] = &["local", "cloud", "cascade", "hedge", "refuse"];
const STATS: &[&str] = &["first_sentence", "mean", "min", "p10"];

/// Parses and compiles policy text. `file` is used in diagnostics.
pub fn compile_str(src: &str, file: &Path) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    let map = SourceMap::new(file, src);
    let shape = read_shape(src, &map);
    let Some(raw) = shape.raw else {
        return Err(sorted(shape.diags));
    };
    // Rules with a key taken out for its shape: what is left of them does not say which
    // requests they take.
    let incomplete_rules = (0..raw.rule.len())
        .filter(|i| shape.touched.has_section(&format!("rule[{i}]")))
        .collect();
    let compiled = Compiler {
        map: &map,
        diags: Vec::new(),
        warnings: Vec::new(),
        incomplete_rules,
    }
    .compile(raw, src);
    if shape.diags.is_empty() {
        return compiled.map_err(sorted);
    }
    // The file's shape was wrong somewhere: report that, and whatever else is wrong, except
    // what only follows from the keys taken out.
    let mut diags = shape.diags;
    if let Err(more) = compiled {
        diags.extend(more.into_iter().filter(|d| !shape.touched.caused(d)));
    }
    Err(sorted(diags))
}

/// Diagnostics in file order.
fn sorted(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.sort_by_key(|d| (d.line, d.column));
    diags
}

/// A kind of number a policy sets, with the most it may be: far above any real setting, and
/// low enough that the arithmetic done with it (times a token count, summed over a month) can
/// never overflow.
#[derive(Clone, Copy)]
struct Quantity {
    name: &'static str,
    unit: &'static str,
    max: u64,
}

const PRICE: Quantity = Quantity {
    name: "a price",
    unit: "USD per million tokens",
    max: 100_000,
};
const BUDGET: Quantity = Quantity {
    name: "a budget",
    unit: "USD",
    max: 1_000_000_000,
};
const LATENCY: Quantity = Quantity {
    name: "a latency",
    unit: "ms per token",
    max: 60_000,
};

/// The lowest cascade threshold: no statistic of token log-probabilities comes near it (a
/// uniform guess over a 49,152-token vocabulary is -10.8), so below it a cascade would never
/// escalate, and a far lower number would not survive the conversion to `f32`.
const MIN_CONFIDENCE_FLOOR: f64 = -100.0;

/// The most retries `[cloud].max_retries` may allow for one call.
const MAX_RETRIES: u32 = 10;

/// The longest cloud round trip `[latency].cloud_ms` may estimate: an hour.
const MAX_CLOUD_MS: u64 = 3_600_000;

/// `[cloud].total_timeout_ms` when the policy does not set it.
const DEFAULT_TOTAL_TIMEOUT_MS: u64 = 60_000;

/// How many shape errors (unknown keys, wrong types) one reading reports before it gives up.
const MAX_SHAPE_ERRORS: usize = 64;

/// What reading a policy file into [`RawPolicy`] gave.
struct Shape {
    /// The policy, read with every key that was wrong taken out; `None` when a problem could
    /// not be stepped over (a syntax error, a missing field).
    raw: Option<RawPolicy>,
    /// One diagnostic per wrong key.
    diags: Vec<Diagnostic>,
    /// Where keys were taken out.
    touched: Touched,
}

/// Reads `src` into a [`RawPolicy`], reporting every unknown or mistyped key instead of only the
/// first: each one is reported, taken out of a copy of the document, and the copy read again.
/// (Serde stops at the first problem, and visits keys in sorted order, so without this a file
/// with three misspelled keys took three rounds of fixing, in no particular order.)
fn read_shape(src: &str, map: &SourceMap) -> Shape {
    let mut text = src.to_string();
    let mut diags = Vec::new();
    let mut touched = Touched::default();
    for _ in 0..MAX_SHAPE_ERRORS {
        let e = match toml::from_str::<RawPolicy>(&text) {
            Ok(raw) => {
                return Shape {
                    raw: Some(raw),
                    diags,
                    touched,
                }
            }
            Err(e) => e,
        };
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let message = with_suggestion(e.message());
        let missing = e.message().starts_with("missing field");
        // Offsets are into the edited copy once keys are out; paths are the same in both
        // (keys are only ever taken out of tables, never out of arrays, so no index moves).
        let edited = (!touched.is_empty()).then(|| SourceMap::new(map.file(), &text));
        let current = edited.as_ref().unwrap_or(map);
        let mut path = current.path_at(offset);
        // An unknown key inside an inline table (`when = { pii_anyy = [..] }`) is reported at
        // the table: name the key itself, so that it alone is taken out.
        if let Some(field) = e
            .message()
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            let deeper = path.key(field);
            if current.has_key(&deeper) {
                path = deeper;
            }
        }
        let message = misplaced(&path).unwrap_or_else(|| in_policy_terms(&message, &path));
        if path.0.is_empty() {
            // Not a key's problem (a syntax error): the offset is all there is.
            let message = match (message.as_str(), key_at(&text, offset)) {
                ("duplicate key", Some(key)) => format!(
                    "duplicate key `{key}`: a key (or a [table]) appears once per table; for several rules or tests, start each with [[rule]] / [[test]]"
                ),
                _ => message,
            };
            diags.push(map.at_offset(offset, &path, message));
        } else if e.message().starts_with("unknown field") {
            diags.push(map.at_key(&path, message));
        } else if !(missing && touched.contains_under(&path)) {
            // (A required key taken out for its type is reported already.)
            diags.push(map.at_path(&path, message));
        }
        let next = if missing { None } else { without(&text, &path) };
        let Some(next) = next else { break };
        touched.add(&path);
        text = next;
    }
    Shape {
        raw: None,
        diags,
        touched,
    }
}

/// The fix for a rule key written under `[rule.when]`, or a condition written on the rule: the
/// usual slip in TOML, where every key after a table header belongs to that table. (The nearest
/// name in the wrong table would be misleading: `pii` on a rule is not a misspelled `pin`.)
fn misplaced(path: &TomlPath) -> Option<String> {
    use super::raw::{CONDITION_KEYS, RULE_KEYS};
    use super::source::Seg;
    match path.0.as_slice() {
        [Seg::Key(r), Seg::Index(_), Seg::Key(w), Seg::Key(k)]
            if r == "rule" && w == "when" && RULE_KEYS.contains(&k.as_str()) =>
        {
            Some(format!(
                "`{k}` belongs to the rule, not to its conditions: move it above `[rule.when]` \
                 (every key after a table header belongs to that table)"
            ))
        }
        [Seg::Key(r), Seg::Index(_), Seg::Key(k)]
            if r == "rule" && CONDITION_KEYS.contains(&k.as_str()) =>
        {
            Some(format!(
                "`{k}` is a condition: put it under the rule's `[rule.when]` table"
            ))
        }
        _ => None,
    }
}

/// A serde message in the policy's terms: what to write, not the names of the Rust types that
/// read it (`untagged enum OneOrMany`, `struct RawWhen`, `u32`).
fn in_policy_terms(message: &str, path: &TomlPath) -> String {
    use super::source::Seg;
    let top_level_array = matches!(path.0.as_slice(), [Seg::Key(k)] if k == "rule" || k == "test");
    if top_level_array && message.contains("expected a sequence") {
        let k = path.to_string();
        return format!(
            "`[{k}]` is a single table, but {k}s are a list: write `[[{k}]]` above each one"
        );
    }
    let wanted = [
        (
            "untagged enum OneOrMany",
            "expected a string or a list of strings",
        ),
        (
            "untagged enum RawNumber",
            "expected a number such as 0.15 or \"0.15\"",
        ),
    ];
    for (rust, plain) in wanted {
        if message.contains(rust) {
            return plain.to_string();
        }
    }
    let mut out = message.to_string();
    for (rust, plain) in [
        (
            "expected struct RawWhen",
            "expected a table of conditions (`[rule.when]`, or `when = { ... }`); a rule with no `when` always matches",
        ),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ] {
        out = out.replace(rust, plain);
    }
    if let Some(i) = out.find("expected struct Raw") {
        out.replace_range(i.., "expected a table");
    }
    out
}

/// What is wrong with a regex, on one line, with where: the regex crate draws a caret under the
/// pattern on lines of their own ("    ORD-(\d+" / "        ^"), which one line would lose.
fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let what = lines.last().map_or("", |l| l.trim());
    let what = what.strip_prefix("error: ").unwrap_or(what);
    // The caret line comes right after the pattern's line; both are indented alike.
    let caret = lines.iter().enumerate().skip(1).find_map(|(i, l)| {
        let trimmed = l.trim_start();
        (trimmed.starts_with('^') && trimmed.trim_end().chars().all(|c| c == '^'))
            .then(|| (lines[i - 1], l.len() - trimmed.len()))
    });
    match caret {
        Some((pattern, column)) => {
            let indent = pattern.len() - pattern.trim_start().len();
            let at = pattern.get(indent..).map_or(0, |p| {
                p.char_indices()
                    .take_while(|(b, _)| *b < column.saturating_sub(indent))
                    .count()
            });
            format!("{what}, at character {} of the pattern", at + 1)
        }
        None => what.to_string(),
    }
}

/// The bare or quoted key (or table name) that starts at `offset` of `text`.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let rest = text.get(offset..)?;
    let key = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .next()?,
    };
    (!key.is_empty()).then_some(key)
}

/// `text` with the key at `path` taken out (a whole array, for a path into one); `None` when
/// there is no such key in a table (the path is the root, or an element of an array of tables).
fn without(text: &str, path: &TomlPath) -> Option<String> {
    use super::source::Seg;
    use toml_edit::Item;
    let mut segs = path.0.as_slice();
    while let Some((Seg::Index(_), rest)) = segs.split_last() {
        segs = rest;
    }
    let (Seg::Key(last), parents) = segs.split_last()? else {
        return None;
    };
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    let mut item: &mut Item = doc.as_item_mut();
    for seg in parents {
        item = match seg {
            Seg::Key(k) => item.get_mut(k.as_str())?,
            Seg::Index(i) => item.get_mut(*i)?,
        };
    }
    let table = item.as_table_like_mut()?;
    // An array of tables is a list of sections; taking it all out would hide the rest.
    if path.0.len() > segs.len() && table.get(last)?.is_array_of_tables() {
        return None;
    }
    table.remove(last)?;
    Some(doc.to_string())
}

/// The sections (a `[[rule]]`, `[[test]]`, or a top-level table) keys were taken out of.
#[derive(Default)]
struct Touched(Vec<TomlPath>);

impl Touched {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn add(&mut self, path: &TomlPath) {
        self.0.push(path.clone());
    }

    /// A key was taken out at or under `path`.
    fn contains_under(&self, path: &TomlPath) -> bool {
        self.0.iter().any(|p| p.0.starts_with(&path.0))
    }

    /// A key was taken out of `section` (`rule[2]`, `cloud`).
    fn has_section(&self, section: &str) -> bool {
        self.0.iter().any(|p| section_of(p) == section)
    }

    /// `d` may only be a consequence of taking a key out: it is about that key (or what was
    /// under it), or about its section and names the key (`needs `min_confidence``).
    fn caused(&self, d: &Diagnostic) -> bool {
        use super::source::Seg;
        self.0.iter().any(|p| {
            let removed = p.to_string();
            let about_key = d.path == removed
                || d.path.starts_with(&format!("{removed}."))
                || d.path.starts_with(&format!("{removed}["));
            let names_key = match p.0.last() {
                Some(Seg::Key(k)) => {
                    d.path == section_of(p) && d.message.contains(&format!("`{k}`"))
                }
                _ => false,
            };
            about_key || names_key
        })
    }
}

/// `rule[2]` for `rule[2].when.pii_anyy`, `cloud` for `cloud.timeout`.
fn section_of(path: &TomlPath) -> String {
    use super::source::Seg;
    let end = match path.0.iter().position(|s| matches!(s, Seg::Index(_))) {
        Some(i) => i + 1,
        None => 1,
    };
    TomlPath(path.0[..end.min(path.0.len())].to_vec()).to_string()
}

/// Reads and compiles a policy file.
pub fn compile_file(path: &Path) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    match std::fs::read_to_string(path) {
        Ok(src) => compile_str(&src, path),
        Err(e) => Err(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("cannot read policy file: {e}"),
        }]),
    }
}

struct Compiler<'a> {
    map: &'a SourceMap,
    diags: Vec<Diagnostic>,
    /// What is valid but probably not what the author meant.
    warnings: Vec<Diagnostic>,
    /// Rules (by index) that lost a key to an error in the file's shape.
    incomplete_rules: Vec<usize>,
}

impl Compiler<'_> {
    fn warn(&mut self, path: &TomlPath, message: impl Into<String>) {
        let d = self.map.at_path(path, message.into());
        self.warnings.push(d);
    }

    /// Warns about a rule that is valid but does not do what it seems to.
    fn warn_about_plan(
        &mut self,
        name: &str,
        conditions: &[Condition],
        plan: &Plan,
        path: &TomlPath,
    ) {
        let about_pii = conditions.iter().any(|c| {
            matches!(
                c,
                Condition::Pii(true) | Condition::PiiAny(_) | Condition::PiiAll(_)
            )
        });
        match plan {
            Plan::Local { pin: false } if about_pii => self.warn(
                &path.key("route"),
                format!(
                    "rule `{name}` keeps requests with personal data on the device, but without \
                     `pin = true`: when the local model is missing or fails, they go to the \
                     cloud (redacted); add `pin = true` to keep them on the device whatever \
                     happens"
                ),
            ),
            Plan::Cloud { .. } | Plan::Cascade { .. } | Plan::Hedge { .. }
                if conditions.contains(&Condition::Network(Network::Offline)) =>
            {
                let outcome = if matches!(plan, Plan::Cloud { pin: true, .. }) {
                    "its requests always fail (pinned to a cloud it cannot reach)"
                } else {
                    "its requests always run on the device"
                };
                self.warn(
                    &path.key("route"),
                    format!(
                        "rule `{name}` uses the cloud only when the network is offline, when the \
                         cloud cannot be reached: {outcome}; did you mean `network = \"online\"`?"
                    ),
                )
            }
            _ => {}
        }
    }

    fn error(&mut self, path: &TomlPath, message: impl Into<String>) {
        let d = self.map.at_path(path, message.into());
        self.diags.push(d);
    }

    fn decimal(&mut self, n: &RawNumber, path: &TomlPath) -> Option<Decimal> {
        let parsed = match n {
            RawNumber::Int(i) => Some(Decimal::from(*i)),
            RawNumber::Float(f) if f.is_finite() => Decimal::from_str(&f.to_string()).ok(),
            RawNumber::Float(_) => None,
            RawNumber::Text(s) => Decimal::from_str(s.trim()).ok(),
        };
        if parsed.is_none() {
            self.error(
                path,
                "expected a finite decimal number such as 0.15 or \"0.15\"",
            );
        }
        parsed
    }

    fn non_negative(
        &mut self,
        n: &Option<RawNumber>,
        path: &TomlPath,
        what: Quantity,
    ) -> Option<Decimal> {
        let d = self.decimal(n.as_ref()?, path)?;
        if d.is_sign_negative() && !d.is_zero() {
            self.error(path, format!("{} cannot be negative (got {d})", what.name));
            return None;
        }
        let max = Decimal::from(what.max);
        if d > max {
            self.error(
                path,
                format!(
                    "{} cannot be more than {max} {} (got {d}): is a digit too many?",
                    what.name, what.unit
                ),
            );
            return None;
        }
        Some(d)
    }

    fn compile(mut self, raw: RawPolicy, src: &str) -> Result<CompiledPolicy, Vec<Diagnostic>> {
        let root = TomlPath::root();
        let privacy = self.privacy(&raw, &root);
        let mut kinds: Vec<String> = BUILTIN_KINDS.iter().map(|k| k.to_string()).collect();
        for k in privacy
            .patterns
            .iter()
            .map(|p| &p.kind)
            .chain(privacy.keywords.iter().map(|k| &k.kind))
        {
            if !kinds.contains(k) {
                kinds.push(k.clone());
            }
        }
        if kinds.len() > 64 {
            self.error(
                &root.key("privacy"),
                "at most 64 PII kinds (built-in + custom) are supported",
            );
            kinds.truncate(64);
        }
        let scanner = match Scanner::new(&privacy) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(&root.key("privacy"), e.to_string());
                None
            }
        };
        let cloud = raw
            .cloud
            .as_ref()
            .and_then(|c| self.cloud(c, &root.key("cloud")));
        let has_cloud = raw.cloud.is_some();
        let local = self.local(&raw);
        let budget = self.budget(&raw);
        self.check_budget_has_prices(&raw, cloud.as_ref());
        let cache = self.cache(&raw);
        let distill = self.distill(&raw);
        let latency = self.latency(&raw);

        let ctx = RuleCtx {
            kinds: &kinds,
            detected_builtins: &privacy.kinds,
            has_cloud,
            has_budget: budget.has_limits(),
        };
        let defaults = match &raw.defaults {
            Some(d) => self
                .plan(d, &root.key("defaults"), &ctx)
                .unwrap_or(Plan::Local { pin: false }),
            None => Plan::Local { pin: false },
        };

        let mut rules = Vec::with_capacity(raw.rule.len());
        // Every rule tried so far, by name, with its conditions; even one with an error of its
        // own, so that a later rule or a test that names it is not wrong too. A rule whose
        // conditions had errors (a bad value, a key with the wrong shape) has `None`: what is
        // left of them says nothing of the requests it takes, so it is not held to shadow the
        // rules after it or [defaults] (a rule whose only condition was misspelled would look
        // like one that always matches, and every later rule would be "unreachable").
        let mut earlier: Vec<(String, Option<Vec<Condition>>)> = Vec::new();
        for (i, r) in raw.rule.iter().enumerate() {
            let path = root.key("rule").index(i);
            let name = match r.name.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => {
                    self.error(&path, "every rule needs a non-empty `name`");
                    format!("rule[{i}]")
                }
            };
            if name == "defaults" {
                self.error(
                    &path.key("name"),
                    "`defaults` is reserved (it names the [defaults] route); choose another name",
                );
            } else if earlier.iter().any(|(n, _)| *n == name) {
                self.error(
                    &path.key("name"),
                    format!("duplicate rule name `{name}`: rule names must be unique"),
                );
            }
            let errors_before = self.diags.len();
            let conditions = match &r.when {
                Some(w) => self.conditions(w, &path.key("when"), &ctx),
                None => Vec::new(),
            };
            let complete = self.diags.len() == errors_before && !self.incomplete_rules.contains(&i);
            // Rules are tried in order: one whose every request an earlier rule takes first
            // can never fire (the earlier rule's conditions all follow from its own).
            let shadowing = earlier.iter().find_map(|(prev, earlier)| {
                earlier
                    .as_ref()
                    .filter(|earlier| complete && shadows(earlier, &conditions))
                    .map(|earlier| (prev, earlier))
            });
            if let Some((prev, earlier)) = shadowing {
                let why = if earlier.is_empty() {
                    "before it has no conditions and always matches".to_string()
                } else {
                    "before it takes every request this one would (each of its conditions follows from one of this rule's)".to_string()
                };
                self.error(
                    &path,
                    format!("rule `{name}` is unreachable: rule `{prev}` {why}"),
                );
            }
            earlier.push((name.clone(), complete.then(|| conditions.clone())));
            if r.route.is_none() {
                self.error(
                    &path,
                    format!(
                        "rule `{name}` needs a `route` (one of {})",
                        ROUTES.join(", ")
                    ),
                );
                continue;
            }
            if let Some(plan) = self.plan(&r.route_part(), &path, &ctx) {
                self.warn_about_plan(&name, &conditions, &plan, &path);
                rules.push(CompiledRule {
                    name,
                    conditions,
                    plan,
                });
            }
        }

        let catch_all = earlier
            .iter()
            .find(|(_, c)| c.as_ref().is_some_and(Vec::is_empty))
            .map(|(n, _)| n);
        if let (Some(prev), Some(_)) = (catch_all, &raw.defaults) {
            self.error(
                &root.key("defaults"),
                format!("[defaults] is never used: rule `{prev}` has no conditions and always matches; remove one of them"),
            );
        }
        let mut rule_names: Vec<&str> = earlier.iter().map(|(n, _)| n.as_str()).collect();
        rule_names.push("defaults");
        let tests = raw
            .test
            .iter()
            .enumerate()
            .filter_map(|(i, t)| self.test(t, &root.key("test").index(i), &rule_names, &ctx))
            .collect();

        if !self.diags.is_empty() {
            return Err(self.diags);
        }
        let Some(scanner) = scanner else {
            return Err(self.diags);
        };
        let version = raw.version.clone().unwrap_or_else(|| {
            let d = digest::digest(&digest::SHA256, src.as_bytes());
            d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
        });
        Ok(CompiledPolicy {
            name: raw
                .name
                .clone()
                .unwrap_or_else(|| file_stem(self.map.file())),
            version,
            file: self.map.file().to_path_buf(),
            rules,
            defaults,
            local,
            cloud,
            budget,
            privacy,
            cache,
            distill,
            latency,
            tests,
            kinds,
            scanner,
            warnings: sorted(std::mem::take(&mut self.warnings)),
        })
    }

    fn privacy(&mut self, raw: &RawPolicy, root: &TomlPath) -> PrivacyConfig {
        let mut cfg = PrivacyConfig::default();
        let Some(p) = &raw.privacy else { return cfg };
        let path = root.key("privacy");
        if let Some(detect) = &p.detect {
            cfg.kinds.clear();
            for (i, k) in detect.iter().enumerate() {
                if BUILTIN_KINDS.contains(&k.as_str()) {
                    cfg.kinds.push(k.clone());
                } else {
                    let hint = suggest(k, BUILTIN_KINDS.iter().copied());
                    self.error(
                        &path.key("detect").index(i),
                        format!(
                            "unknown built-in PII kind `{k}`{hint}; built-in kinds: {}",
                            BUILTIN_KINDS.join(", ")
                        ),
                    );
                }
            }
        }
        for (i, pat) in p.pattern.iter().enumerate() {
            let pp = path.key("pattern").index(i);
            self.custom_kind_name(&pat.kind, &pp.key("kind"));
            if let Err(e) = regex::Regex::new(&pat.regex) {
                self.error(
                    &pp.key("regex"),
                    format!(
                        "invalid regex for kind `{}`: {}",
                        pat.kind,
                        regex_problem(&e)
                    ),
                );
                continue;
            }
            cfg.patterns.push(CustomPattern {
                kind: pat.kind.clone(),
                regex: pat.regex.clone(),
            });
        }
        for (i, kw) in p.keywords.iter().enumerate() {
            let kp = path.key("keywords").index(i);
            self.custom_kind_name(&kw.kind, &kp.key("kind"));
            if kw.words.iter().all(|w| w.trim().is_empty()) {
                self.error(
                    &kp.key("words"),
                    "a keyword list needs at least one non-empty word",
                );
                continue;
            }
            cfg.keywords.push(KeywordList {
                kind: kw.kind.clone(),
                words: kw.words.clone(),
            });
        }
        cfg
    }

    fn custom_kind_name(&mut self, kind: &str, path: &TomlPath) {
        if kind.len() > MAX_KIND_NAME {
            self.error(
                path,
                format!("custom kind name `{kind}` is longer than {MAX_KIND_NAME} characters (it becomes the redaction placeholder)"),
            );
        }
        let valid = !kind.is_empty()
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            self.error(
                path,
                format!("custom kind name `{kind}` must be lower_snake_case (a-z, 0-9, _)"),
            );
        } else if BUILTIN_KINDS.contains(&kind) {
            self.error(
                path,
                format!("custom kind `{kind}` clashes with the built-in kind of that name"),
            );
        }
    }

    fn cloud(&mut self, c: &super::raw::RawCloud, path: &TomlPath) -> Option<CloudSection> {
        let provider = match c.provider.as_deref() {
            None | Some("openai") => ProviderKind::OpenAi,
            Some("anthropic") => ProviderKind::Anthropic,
            Some(other) => {
                let hint = suggest(other, ["openai", "anthropic"]);
                self.error(
                    &path.key("provider"),
                    format!("unknown provider `{other}`{hint}; expected `openai` or `anthropic`"),
                );
                return None;
            }
        };
        let default_url = match provider {
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
        };
        let base_url = c
            .base_url
            .clone()
            .unwrap_or_else(|| default_url.to_string());
        let allow_insecure_http = c.allow_insecure_http.unwrap_or(false);
        if let Err(msg) = check_base_url(&base_url, allow_insecure_http) {
            self.error(&path.key("base_url"), msg);
        }
        let input = self.non_negative(
            &c.input_usd_per_mtok,
            &path.key("input_usd_per_mtok"),
            PRICE,
        );
        let output = self.non_negative(
            &c.output_usd_per_mtok,
            &path.key("output_usd_per_mtok"),
            PRICE,
        );
        let cached_input = self.non_negative(
            &c.cached_input_usd_per_mtok,
            &path.key("cached_input_usd_per_mtok"),
            PRICE,
        );
        if let Some(cached) = cached_input.filter(|&p| p > input.unwrap_or_default()) {
            self.warn(
                &path.key("cached_input_usd_per_mtok"),
                format!(
                    "the cached-input price ({cached}) is above the input price ({}): a call's \
                     cost could exceed what the budget reserved for it (prompt tokens are \
                     reserved at the input price)",
                    input.unwrap_or_default()
                ),
            );
        }
        let model = match c.model.as_deref() {
            Some(m) if !m.trim().is_empty() => m.to_string(),
            _ => {
                self.error(path, "[cloud] needs a `model` (the provider's model id)");
                String::new()
            }
        };
        if c.max_tokens == Some(0) {
            self.error(&path.key("max_tokens"), "`max_tokens` must be at least 1");
        }
        if let Some(n) = c.max_retries.filter(|&n| n > MAX_RETRIES) {
            self.error(
                &path.key("max_retries"),
                format!(
                    "`max_retries` must be at most {MAX_RETRIES}, not {n} (each retry the \
                     provider accepts may be billed, and the budget reserves one estimate per \
                     attempt)"
                ),
            );
        }
        for (key, v) in [
            ("connect_timeout_ms", c.connect_timeout_ms),
            ("first_token_timeout_ms", c.first_token_timeout_ms),
            ("idle_timeout_ms", c.idle_timeout_ms),
            ("total_timeout_ms", c.total_timeout_ms),
        ] {
            if v == Some(0) {
                self.error(&path.key(key), "a timeout must be greater than 0 ms");
            }
        }
        let total = c.total_timeout_ms.unwrap_or(DEFAULT_TOTAL_TIMEOUT_MS);
        for (key, v) in [
            ("connect_timeout_ms", c.connect_timeout_ms),
            ("first_token_timeout_ms", c.first_token_timeout_ms),
            ("idle_timeout_ms", c.idle_timeout_ms),
        ] {
            if let Some(ms) = v.filter(|&ms| ms > total) {
                self.error(
                    &path.key(key),
                    format!("`{key}` ({ms}) is longer than `total_timeout_ms` ({total}), which ends the call first"),
                );
            }
        }
        Some(CloudSection {
            provider,
            model,
            base_url,
            api_key_env: self.api_key_env(c, path).unwrap_or_else(|| match provider {
                ProviderKind::OpenAi => "OPENAI_API_KEY".into(),
                ProviderKind::Anthropic => "ANTHROPIC_API_KEY".into(),
            }),
            input_usd_per_mtok: input.unwrap_or_default(),
            output_usd_per_mtok: output.unwrap_or_default(),
            cached_input_usd_per_mtok: cached_input.or(input).unwrap_or_default(),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms.unwrap_or(2_000)),
            first_token_timeout: Duration::from_millis(c.first_token_timeout_ms.unwrap_or(15_000)),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms.unwrap_or(30_000)),
            total_timeout: Duration::from_millis(total),
            max_retries: c.max_retries.unwrap_or(2),
            max_tokens: c.max_tokens.unwrap_or(DEFAULT_CLOUD_MAX_TOKENS),
            allow_insecure_http,
            ca_file: c.ca_file.as_deref().map(policy_path),
            legacy_max_tokens: match c.max_tokens_field.as_deref() {
                None | Some("max_completion_tokens") => false,
                Some("max_tokens") => true,
                Some(other) => {
                    let hint = suggest(other, ["max_completion_tokens", "max_tokens"]);
                    self.error(
                        &path.key("max_tokens_field"),
                        format!(
                            "unknown field name `{other}`{hint}; expected `max_completion_tokens` \
                             (OpenAI) or `max_tokens` (servers that only read that, such as Ollama)"
                        ),
                    );
                    false
                }
            },
            breaker: match &c.breaker {
                Some(b) => self.breaker(b, &path.key("breaker")),
                None => BreakerSection::default(),
            },
        })
    }

    /// `[cloud].api_key_env`: the name of an environment variable, never the key itself (a
    /// key pasted here would sit in the policy file, and the cloud would quietly stay off).
    fn api_key_env(&mut self, c: &super::raw::RawCloud, path: &TomlPath) -> Option<String> {
        let name = c.api_key_env.as_ref()?;
        let is_name = name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !is_name {
            let looks_like_key = Scanner::new(&PrivacyConfig::default())
                .is_ok_and(|scanner| scanner.scan(name).iter().any(|s| s.kind == "secret"));
            let why = if looks_like_key {
                "looks like an API key itself: put the key in an environment variable and name the variable here (the key must not be in the policy file"
            } else {
                "is not an environment variable name (letters, digits and `_`, not starting with a digit"
            };
            self.error(
                &path.key("api_key_env"),
                format!("`api_key_env` {why}; e.g. api_key_env = \"OPENAI_API_KEY\")"),
            );
        }
        Some(name.clone())
    }

    fn breaker(&mut self, b: &super::raw::RawBreaker, path: &TomlPath) -> BreakerSection {
        let d = BreakerSection::default();
        let consecutive_failures = self.breaker_count(
            path,
            "consecutive_failures",
            b.consecutive_failures,
            d.consecutive_failures,
        );
        let window = self.breaker_count(path, "window", b.window, d.window);
        let min_calls = self.breaker_count(path, "min_calls", b.min_calls, d.min_calls);
        let half_open_probes = self.breaker_count(
            path,
            "half_open_probes",
            b.half_open_probes,
            d.half_open_probes,
        );
        if min_calls > window {
            // Point at whichever of the two was written.
            let key = if b.min_calls.is_some() {
                "min_calls"
            } else {
                "window"
            };
            self.error(
                &path.key(key),
                format!("`min_calls` ({min_calls}) is larger than `window` ({window}): the window never holds that many outcomes, so the failure ratio could never open the breaker"),
            );
        }
        let failure_ratio = match &b.failure_ratio {
            None => d.failure_ratio,
            Some(n) => match self.decimal(n, &path.key("failure_ratio")) {
                Some(r) if r > Decimal::ZERO && r <= Decimal::ONE => r,
                Some(r) => {
                    self.error(
                        &path.key("failure_ratio"),
                        format!("`failure_ratio` is a share of the window: greater than 0 and at most 1, not {r}"),
                    );
                    d.failure_ratio
                }
                None => d.failure_ratio,
            },
        };
        BreakerSection {
            consecutive_failures,
            window,
            min_calls,
            failure_ratio,
            open_for: self.breaker_ms(path, "open_for_ms", b.open_for_ms, d.open_for),
            half_open_probes,
            offline_for: self.breaker_ms(path, "offline_for_ms", b.offline_for_ms, d.offline_for),
        }
    }

    /// A `[cloud.breaker]` count: 1 to [`MAX_BREAKER_COUNT`].
    fn breaker_count(&mut self, path: &TomlPath, key: &str, v: Option<u32>, default: u32) -> u32 {
        match v {
            None => default,
            Some(0) => {
                self.error(&path.key(key), format!("`{key}` must be at least 1"));
                default
            }
            Some(n) if n > MAX_BREAKER_COUNT => {
                self.error(
                    &path.key(key),
                    format!("`{key}` must be at most {MAX_BREAKER_COUNT}, not {n}"),
                );
                default
            }
            Some(n) => n,
        }
    }

    /// A `[cloud.breaker]` duration: 1 ms to [`MAX_BREAKER_MS`].
    fn breaker_ms(
        &mut self,
        path: &TomlPath,
        key: &str,
        v: Option<u64>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(0) => {
                self.error(&path.key(key), format!("`{key}` must be greater than 0 ms"));
                default
            }
            Some(ms) if ms > MAX_BREAKER_MS => {
                self.error(
                    &path.key(key),
                    format!("`{key}` must be at most {MAX_BREAKER_MS} ms (one day), not {ms}"),
                );
                default
            }
            Some(ms) => Duration::from_millis(ms),
        }
    }

    fn local(&mut self, raw: &RawPolicy) -> LocalSection {
        let l = raw.local.clone().unwrap_or_default();
        let path = TomlPath::root().key("local");
        // Upper bounds far above any device, but below what would exhaust memory before the
        // first answer (every session holds its own buffers and KV cache).
        for (key, v, max) in [
            ("max_new_tokens", l.max_new_tokens, 32_768),
            ("threads", l.threads, 256),
            ("sessions", l.sessions, 16),
        ] {
            match v {
                Some(0) => self.error(&path.key(key), format!("`{key}` must be at least 1")),
                Some(n) if n > max => self.error(
                    &path.key(key),
                    format!("`{key}` must be at most {max}, not {n}"),
                ),
                _ => {}
            }
        }
        let repetition_penalty = match l.repetition_penalty {
            None => crate::request::DEFAULT_REPETITION_PENALTY,
            Some(p) => match crate::request::check_repetition_penalty(p as f32) {
                Ok(p) => p,
                Err(_) => {
                    self.error(
                        &path.key("repetition_penalty"),
                        format!("`repetition_penalty` must be between 1 (off) and 2, not {p}"),
                    );
                    crate::request::DEFAULT_REPETITION_PENALTY
                }
            },
        };
        LocalSection {
            repetition_penalty,
            model: l
                .model
                .unwrap_or_else(|| crate::home::DEFAULT_MODEL.to_string()),
            model_dir: l.model_dir.as_deref().map(policy_path),
            runtime_path: l.runtime_path.as_deref().map(policy_path),
            max_new_tokens: l.max_new_tokens.unwrap_or(128),
            threads: l.threads.unwrap_or(2),
            sessions: l.sessions.unwrap_or(1),
            spinning: l.spinning.unwrap_or(false),
            max_waiting: match l.max_waiting {
                Some(n) if n > MAX_WAITING_LIMIT => {
                    self.error(
                        &path.key("max_waiting"),
                        format!("`max_waiting` must be at most {MAX_WAITING_LIMIT}, not {n}"),
                    );
                    None
                }
                n => n,
            },
        }
    }

    fn budget(&mut self, raw: &RawPolicy) -> BudgetSection {
        let b = raw.budget.clone().unwrap_or_default();
        let path = TomlPath::root().key("budget");
        let on_exhausted = match b.on_exhausted.as_deref() {
            None | Some("local") => OnExhausted::Local,
            Some("refuse") => OnExhausted::Refuse,
            Some(other) => {
                let hint = suggest(other, ["local", "refuse"]);
                self.error(
                    &path.key("on_exhausted"),
                    format!("unknown value `{other}`{hint}; expected `local` or `refuse`"),
                );
                OnExhausted::Local
            }
        };
        let limits = BudgetLimits {
            daily_usd: self.non_negative(&b.daily_usd, &path.key("daily_usd"), BUDGET),
            monthly_usd: self.non_negative(&b.monthly_usd, &path.key("monthly_usd"), BUDGET),
        };
        if let (Some(day), Some(month)) = (limits.daily_usd, limits.monthly_usd) {
            if day > month {
                self.error(
                    &path.key("daily_usd"),
                    format!("`daily_usd` ({day}) is more than `monthly_usd` ({month}): the daily limit could never be reached"),
                );
            }
        }
        if b.on_exhausted.is_some() && limits.daily_usd.is_none() && limits.monthly_usd.is_none() {
            self.error(
                &path.key("on_exhausted"),
                "`on_exhausted` has no effect without a limit: set `daily_usd` or `monthly_usd`",
            );
        }
        BudgetSection {
            limits,
            on_exhausted,
        }
    }

    /// A budget limit counts what calls cost by the `[cloud]` prices: without them every call
    /// costs $0 and the limit never holds.
    fn check_budget_has_prices(&mut self, raw: &RawPolicy, cloud: Option<&CloudSection>) {
        let Some(b) = &raw.budget else {
            return;
        };
        let key = match (&b.daily_usd, &b.monthly_usd) {
            (Some(_), _) => "daily_usd",
            (None, Some(_)) => "monthly_usd",
            (None, None) => return,
        };
        let why = match cloud {
            None if raw.cloud.is_none() => "there is no [cloud] section, whose prices it counts",
            Some(c) if c.input_usd_per_mtok.is_zero() && c.output_usd_per_mtok.is_zero() => {
                "[cloud] sets no prices (`input_usd_per_mtok`, `output_usd_per_mtok`), so every \
                 call would count as $0"
            }
            _ => return,
        };
        self.error(
            &TomlPath::root().key("budget").key(key),
            format!("a budget limit never holds here: {why}"),
        );
    }

    fn cache(&mut self, raw: &RawPolicy) -> CacheConfig {
        let c = raw.cache.clone().unwrap_or_default();
        let path = TomlPath::root().key("cache");
        let mode = match c.mode.as_deref() {
            None | Some("on") => CacheMode::On,
            Some("off") => CacheMode::Off,
            Some("read_only") => CacheMode::ReadOnly,
            Some("write_only") => CacheMode::WriteOnly,
            Some(other) => {
                let modes = ["on", "off", "read_only", "write_only"];
                let hint = suggest(other, modes);
                self.error(&path.key("mode"), format!("unknown cache mode `{other}`{hint}; expected one of on, off, read_only, write_only"));
                CacheMode::On
            }
        };
        CacheConfig {
            mode,
            ttl: Some(Duration::from_secs(c.ttl_secs.unwrap_or(7 * 24 * 3600)))
                .filter(|d| !d.is_zero()),
            max_bytes: c.max_bytes.unwrap_or(64 << 20),
            cache_pii: c.cache_pii.unwrap_or(false),
            normalize: c.normalize.unwrap_or(true),
        }
    }

    fn distill(&mut self, raw: &RawPolicy) -> crate::distill::DistillConfig {
        let d = raw.distill.clone().unwrap_or_default();
        let defaults = crate::distill::DistillConfig::default();
        let max_bytes = match d.max_bytes {
            Some(0) => {
                let path = TomlPath::root().key("distill").key("max_bytes");
                self.error(&path, "max_bytes = 0 keeps no sample; set collect = false to keep none, or a size in bytes (default 67108864, 64 MiB)".to_string());
                defaults.max_bytes
            }
            Some(n) => n,
            None => defaults.max_bytes,
        };
        if d.collect == Some(true) && raw.cloud.is_none() {
            let path = TomlPath::root().key("distill").key("collect");
            self.warn(&path, "collect = true, but the policy has no [cloud] section: no request goes to the cloud, so no answer is kept");
        }
        crate::distill::DistillConfig {
            collect: d.collect.unwrap_or(defaults.collect),
            max_bytes,
            include_pii: d.include_pii.unwrap_or(defaults.include_pii),
            max_age: d
                .max_age_days
                .filter(|&days| days > 0)
                .map(|days| Duration::from_secs(u64::from(days) * 24 * 3600)),
        }
    }

    fn latency(&mut self, raw: &RawPolicy) -> LatencySection {
        let l = raw.latency.clone().unwrap_or_default();
        let path = TomlPath::root().key("latency");
        LatencySection {
            local_prefill_ms_per_token: self
                .non_negative(
                    &l.local_prefill_ms_per_token,
                    &path.key("local_prefill_ms_per_token"),
                    LATENCY,
                )
                .unwrap_or(Decimal::new(15, 1)),
            local_decode_ms_per_token: self
                .non_negative(
                    &l.local_decode_ms_per_token,
                    &path.key("local_decode_ms_per_token"),
                    LATENCY,
                )
                .unwrap_or(Decimal::from(10)),
            cloud_ms: match l.cloud_ms {
                Some(ms) if ms > MAX_CLOUD_MS => {
                    self.error(
                        &path.key("cloud_ms"),
                        format!(
                            "a round trip cannot take more than {MAX_CLOUD_MS} ms, an hour \
                             (got {ms}): is a digit too many?"
                        ),
                    );
                    800
                }
                ms => ms.unwrap_or(800),
            },
        }
    }

    fn kind_set(&mut self, names: &[String], path: &TomlPath, ctx: &RuleCtx<'_>) -> KindSet {
        let mut set = 0u64;
        if names.is_empty() {
            self.error(path, "list at least one PII kind");
        }
        for (i, n) in names.iter().enumerate() {
            match ctx.kinds.iter().position(|k| k == n) {
                Some(_)
                    if BUILTIN_KINDS.contains(&n.as_str())
                        && !ctx.detected_builtins.contains(n) =>
                {
                    self.error(
                        &path.index(i),
                        format!("PII kind `{n}` is not detected: `[privacy].detect` leaves it out, so this condition could never see it; add it to `detect` or remove it here"),
                    );
                }
                Some(bit) => set |= 1 << bit,
                None => {
                    let hint = suggest(n, ctx.kinds.iter().map(String::as_str));
                    self.error(
                        &path.index(i),
                        format!("unknown PII kind `{n}`{hint}; known kinds: {} (custom kinds come from [privacy])", ctx.kinds.join(", ")),
                    );
                }
            }
        }
        KindSet(set)
    }

    /// PII conditions of one rule that cannot all hold: no PII and some PII; a kind both
    /// required and excluded.
    fn contradictions(&mut self, conditions: &[Condition], path: &TomlPath) {
        let (mut none, mut pii) = (None, None);
        for c in conditions {
            match c {
                Condition::PiiNone(s) => none = Some(*s),
                Condition::Pii(b) => pii = Some(*b),
                _ => {}
            }
        }
        for c in conditions {
            let (key, clash) = match (c, none) {
                (Condition::PiiAll(all), Some(n)) if all.intersects(n) => {
                    ("pii_all", "a kind in `pii_all` is also in `pii_none`")
                }
                (Condition::PiiAny(any), Some(n)) if n.contains_all(*any) => {
                    ("pii_any", "every kind in `pii_any` is also in `pii_none`")
                }
                (Condition::PiiAny(_), _) if pii == Some(false) => (
                    "pii_any",
                    "`pii = false` and `pii_any` ask for no PII and some",
                ),
                (Condition::PiiAll(_), _) if pii == Some(false) => (
                    "pii_all",
                    "`pii = false` and `pii_all` ask for no PII and some",
                ),
                _ => continue,
            };
            self.error(
                &path.key(key),
                format!("the rule's conditions can never all hold: {clash}"),
            );
        }
    }

    fn conditions(&mut self, w: &RawWhen, path: &TomlPath, ctx: &RuleCtx<'_>) -> Vec<Condition> {
        let mut out = Vec::new();
        if let Some(b) = w.pii {
            if b && ctx.kinds.len() == BUILTIN_KINDS.len() && ctx.detected_builtins.is_empty() {
                self.error(
                    &path.key("pii"),
                    "`pii = true` can never hold: `[privacy].detect` is empty and there are no custom kinds",
                );
            }
            out.push(Condition::Pii(b));
        }
        if let Some(v) = &w.pii_any {
            out.push(Condition::PiiAny(self.kind_set(
                v,
                &path.key("pii_any"),
                ctx,
            )));
        }
        if let Some(v) = &w.pii_all {
            out.push(Condition::PiiAll(self.kind_set(
                v,
                &path.key("pii_all"),
                ctx,
            )));
        }
        if let Some(v) = &w.pii_none {
            out.push(Condition::PiiNone(self.kind_set(
                v,
                &path.key("pii_none"),
                ctx,
            )));
        }
        self.contradictions(&out, path);
        if let Some(n) = w.prompt_tokens_gt {
            if n == u32::MAX {
                self.error(
                    &path.key("prompt_tokens_gt"),
                    format!("`prompt_tokens_gt = {n}` can never hold"),
                );
            }
            out.push(Condition::PromptTokensGt(n));
        }
        if let Some(n) = w.prompt_tokens_lt {
            // The smallest prompt: one token, plus the per-message overhead of the estimate.
            let least = crate::inspect::TOKENS_PER_MESSAGE + 1;
            if n <= least {
                self.error(
                    &path.key("prompt_tokens_lt"),
                    format!("`prompt_tokens_lt = {n}` can never hold: the estimate counts {} tokens per message on top of its text, so the shortest prompt is {least} tokens", crate::inspect::TOKENS_PER_MESSAGE),
                );
            }
            out.push(Condition::PromptTokensLt(n));
        }
        if let (Some(gt), Some(lt)) = (w.prompt_tokens_gt, w.prompt_tokens_lt) {
            if gt.saturating_add(1) >= lt {
                self.error(
                    &path.key("prompt_tokens_lt"),
                    format!(
                        "prompt_tokens_gt = {gt} and prompt_tokens_lt = {lt} can never both hold"
                    ),
                );
            }
        }
        if let Some(n) = w.deadline_ms_lt {
            if n == 0 {
                self.error(
                    &path.key("deadline_ms_lt"),
                    "`deadline_ms_lt = 0` can never hold",
                );
            }
            out.push(Condition::DeadlineMsLt(n));
        }
        if let Some(b) = w.local_too_slow {
            out.push(Condition::LocalTooSlow(b));
        }
        if let Some(n) = &w.budget_left_usd_lt {
            if !ctx.has_budget {
                self.error(
                    &path.key("budget_left_usd_lt"),
                    "`budget_left_usd_lt` can never hold without a budget: add `[budget]` with `daily_usd` or `monthly_usd`",
                );
            }
            if let Some(d) = self.decimal(n, &path.key("budget_left_usd_lt")) {
                if d <= Decimal::ZERO {
                    self.error(
                        &path.key("budget_left_usd_lt"),
                        format!("`budget_left_usd_lt = {d}` can never hold: what is left is never below 0"),
                    );
                }
                out.push(Condition::BudgetLeftLt(d));
            }
        }
        for (key, set) in [
            ("network", w.network.is_some()),
            ("cloud_health", w.cloud_health.is_some()),
        ] {
            if set && !ctx.has_cloud {
                self.warn(
                    &path.key(key),
                    format!("`{key}` is read from the cloud client, and this policy has no [cloud] section: unless the app supplies a cloud backend, the device counts as online and the cloud as healthy, so the condition always or never holds"),
                );
            }
        }
        if let Some(n) = &w.network {
            match n.as_str() {
                "online" => out.push(Condition::Network(Network::Online)),
                "offline" => out.push(Condition::Network(Network::Offline)),
                other => {
                    let hint = suggest(other, ["online", "offline"]);
                    self.error(
                        &path.key("network"),
                        format!(
                            "unknown network state `{other}`{hint}; expected `online` or `offline`"
                        ),
                    );
                }
            }
        }
        if let Some(h) = &w.cloud_health {
            let names = h.to_vec();
            if names.is_empty() {
                self.error(
                    &path.key("cloud_health"),
                    "list at least one cloud health (healthy, degraded or down)",
                );
            }
            let mut states = Vec::new();
            for (i, s) in names.iter().enumerate() {
                match parse_health(s) {
                    Some(x) => states.push(x),
                    None => {
                        let hint = suggest(s, ["healthy", "degraded", "down"]);
                        let p = match h {
                            super::raw::OneOrMany::One(_) => path.key("cloud_health"),
                            super::raw::OneOrMany::Many(_) => path.key("cloud_health").index(i),
                        };
                        self.error(&p, format!("unknown cloud health `{s}`{hint}; expected healthy, degraded or down"));
                    }
                }
            }
            out.push(Condition::CloudHealth(states));
        }
        if let Some(tags) = &w.tags_any {
            self.names_listed(tags, &path.key("tags_any"), "tag", false);
            out.push(Condition::TagsAny(tags.clone()));
        }
        if let Some(t) = &w.task {
            let tasks = t.to_vec();
            let single = matches!(t, super::raw::OneOrMany::One(_));
            self.names_listed(&tasks, &path.key("task"), "task", single);
            out.push(Condition::Task(tasks));
        }
        out
    }

    /// A list of tags or tasks (`single`: written as one string): not empty, no empty names
    /// (neither could ever match).
    fn names_listed(&mut self, names: &[String], path: &TomlPath, what: &str, single: bool) {
        if names.is_empty() {
            self.error(path, format!("list at least one {what}"));
        }
        for (i, n) in names.iter().enumerate() {
            if n.trim().is_empty() {
                let at = if single { path.clone() } else { path.index(i) };
                self.error(&at, format!("a {what} cannot be empty"));
            }
        }
    }

    fn plan(&mut self, r: &RawRoute, path: &TomlPath, ctx: &RuleCtx<'_>) -> Option<Plan> {
        let route = r.route.as_deref().unwrap_or("local");
        let route_path = path.key("route");
        let allowed: &[&str] = match route {
            "local" => &["pin"],
            "cloud" => &["redact", "pin"],
            "cascade" => &["redact", "min_confidence", "confidence_stat"],
            "hedge" => &["redact", "after_ms", "first"],
            "refuse" => &["message"],
            other => {
                let hint = suggest(other, ROUTES.iter().copied());
                self.error(
                    &route_path,
                    format!(
                        "unknown route `{other}`{hint}; expected one of {}",
                        ROUTES.join(", ")
                    ),
                );
                return None;
            }
        };
        let given = [
            ("redact", r.redact.is_some()),
            ("min_confidence", r.min_confidence.is_some()),
            ("confidence_stat", r.confidence_stat.is_some()),
            ("after_ms", r.after_ms.is_some()),
            ("first", r.first.is_some()),
            ("pin", r.pin.is_some()),
            ("message", r.message.is_some()),
        ];
        for (key, present) in given {
            if present && !allowed.contains(&key) {
                self.error(
                    &path.key(key),
                    format!(
                        "`{key}` does not apply to route `{route}` (it takes: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        if route != "local" && route != "refuse" && !ctx.has_cloud {
            self.error(
                &route_path,
                format!("route `{route}` needs a [cloud] section (provider, model, base_url, api_key_env)"),
            );
        }
        let redact = r.redact.unwrap_or(false);
        Some(match route {
            "local" => Plan::Local {
                pin: r.pin.unwrap_or(false),
            },
            "cloud" => Plan::Cloud {
                redact,
                pin: r.pin.unwrap_or(false),
            },
            "cascade" => {
                let min_confidence = match r.min_confidence {
                    Some(m) if (MIN_CONFIDENCE_FLOOR..=0.0).contains(&m) => m as f32,
                    Some(m) => {
                        self.error(
                            &path.key("min_confidence"),
                            format!("min_confidence is a log-probability between {MIN_CONFIDENCE_FLOOR} and 0 (got {}); e.g. -1.0", if m.abs() >= 1e6 { format!("{m:e}") } else { m.to_string() }),
                        );
                        return None;
                    }
                    None => {
                        self.error(path, "route `cascade` needs `min_confidence` (a log-probability ≤ 0, e.g. -1.0)");
                        return None;
                    }
                };
                let statistic = match r.confidence_stat.as_deref() {
                    None | Some("first_sentence") => ConfidenceStat::FirstSentence,
                    Some("mean") => ConfidenceStat::Mean,
                    Some("min") => ConfidenceStat::Min,
                    Some("p10") => ConfidenceStat::P10,
                    Some(other) => {
                        let hint = suggest(other, STATS.iter().copied());
                        self.error(
                            &path.key("confidence_stat"),
                            format!(
                                "unknown statistic `{other}`{hint}; expected one of {}",
                                STATS.join(", ")
                            ),
                        );
                        return None;
                    }
                };
                Plan::Cascade {
                    min_confidence,
                    statistic,
                    redact,
                }
            }
            "hedge" => {
                let first = match r.first.as_deref() {
                    None | Some("local") => Some(HedgeFirst::Local),
                    Some("cloud") => Some(HedgeFirst::Cloud),
                    Some(other) => {
                        let hint = suggest(other, ["local", "cloud"]);
                        self.error(
                            &path.key("first"),
                            format!("a hedge starts with `local` or `cloud`, not `{other}`{hint}"),
                        );
                        None
                    }
                };
                let after = match &r.after_ms {
                    Some(RawDelay::Ms(ms)) => HedgeDelay::Fixed(Duration::from_millis(*ms)),
                    Some(RawDelay::Named(name)) if name == "p95" => HedgeDelay::FirstTokenP95,
                    Some(RawDelay::Named(name)) => {
                        self.error(
                            &path.key("after_ms"),
                            format!("`after_ms` is milliseconds or \"p95\", not \"{name}\""),
                        );
                        return None;
                    }
                    None => {
                        self.error(path, "route `hedge` needs `after_ms` (delay before starting the second tier)");
                        return None;
                    }
                };
                Plan::Hedge {
                    first: first?,
                    after,
                    redact,
                }
            }
            _ => Plan::Refuse {
                message: r
                    .message
                    .clone()
                    .unwrap_or_else(|| "this request is not allowed by policy".into()),
            },
        })
    }

    fn test(
        &mut self,
        t: &RawTest,
        path: &TomlPath,
        rules: &[&str],
        ctx: &RuleCtx<'_>,
    ) -> Option<PolicyTest> {
        let has_cloud = ctx.has_cloud;
        let name = t.name.clone().unwrap_or_else(|| path.to_string());
        if t.prompt.trim().is_empty() {
            // The router refuses an empty prompt before any rule is looked at.
            self.error(
                &path.key("prompt"),
                "a test's prompt cannot be empty (the router refuses empty prompts)",
            );
        }
        if t.cloud_available == Some(true) && !has_cloud {
            self.error(
                &path.key("cloud_available"),
                "`cloud_available = true` but the policy has no [cloud] section: there is no cloud tier to be available",
            );
        }
        if !ROUTES.contains(&t.expect_route.as_str()) {
            let hint = suggest(&t.expect_route, ROUTES.iter().copied());
            self.error(
                &path.key("expect_route"),
                format!("unknown route `{}`{hint}", t.expect_route),
            );
        }
        if let Some(r) = &t.expect_rule {
            if !rules.contains(&r.as_str()) {
                let hint = suggest(r, rules.iter().copied());
                self.error(
                    &path.key("expect_rule"),
                    format!("no rule named `{r}`{hint}"),
                );
            }
        }
        let network = match t.network.as_deref() {
            None | Some("online") => Network::Online,
            Some("offline") => Network::Offline,
            Some(other) => {
                let hint = suggest(other, ["online", "offline"]);
                self.error(
                    &path.key("network"),
                    format!("unknown network state `{other}`{hint}; expected online or offline"),
                );
                Network::Online
            }
        };
        let cloud_health = match t.cloud_health.as_deref() {
            None => CloudHealth::Healthy,
            Some(s) => parse_health(s).unwrap_or_else(|| {
                let hint = suggest(s, ["healthy", "degraded", "down"]);
                self.error(
                    &path.key("cloud_health"),
                    format!("unknown cloud health `{s}`{hint}; expected healthy, degraded or down"),
                );
                CloudHealth::Healthy
            }),
        };
        let budget_left_usd = match &t.budget_left_usd {
            Some(_) => {
                let key = path.key("budget_left_usd");
                if !ctx.has_budget {
                    self.error(
                        &key,
                        "`budget_left_usd` but the policy has no [budget] limit: the router never has a budget left to compare",
                    );
                }
                Some(self.non_negative(&t.budget_left_usd, &key, BUDGET)?)
            }
            None => None,
        };
        let d = self.map.at_path(path, String::new());
        Some(PolicyTest {
            name,
            prompt: t.prompt.clone(),
            tags: t.tags.clone(),
            task: t.task.clone(),
            deadline_ms: t.deadline_ms,
            network,
            cloud_health,
            budget_left_usd,
            cloud_available: t.cloud_available.unwrap_or(has_cloud),
            local_available: t.local_available.unwrap_or(true),
            expect_route: t.expect_route.clone(),
            expect_rule: t.expect_rule.clone(),
            location: format!("{}:{}:{}", d.file.display(), d.line, d.column),
        })
    }
}

/// The longest custom PII kind name: it becomes the redaction placeholder (`<KIND_1>`), which
/// the re-hydrator recognises only up to a bounded length.
const MAX_KIND_NAME: usize = 40;

struct RuleCtx<'a> {
    kinds: &'a [String],
    /// The built-in kinds `[privacy].detect` leaves on (custom kinds are always detected).
    detected_builtins: &'a [String],
    has_cloud: bool,
    /// `[budget]` sets a limit: only then is there a budget left to compare.
    has_budget: bool,
}

fn parse_health(s: &str) -> Option<CloudHealth> {
    match s {
        "healthy" => Some(CloudHealth::Healthy),
        "degraded" => Some(CloudHealth::Degraded),
        "down" => Some(CloudHealth::Down),
        _ => None,
    }
}

fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates)
        .map(|b| format!(" (did you mean `{b}`?)"))
        .unwrap_or_default()
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into())
}

/// Checks a cloud base URL: must be `https://`, or `http://` to a loopback host, unless
/// `allow_insecure_http` is set.
pub fn check_base_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let shown = without_credentials(url);
    let url = shown.as_str();
    let parsed = url::Url::parse(url).map_err(|e| format!("base_url `{url}` is not a URL: {e}"))?;
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("base_url `{url}` has no host"));
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback_url(&parsed) => Ok(()),
        "http" => Err(format!(
            "plain http:// to non-loopback host `{host}` would send prompts unencrypted; use https:// or set allow_insecure_http = true"
        )),
        _ => Err(format!(
            "base_url `{url}` must start with https:// (or http:// for a loopback host)"
        )),
    }
}

/// `url` without the user name and password it may carry (`https://user:secret@host/v1`):
/// what messages, logs and `Debug` output show. A string that does not parse as a URL loses
/// what lies between its scheme and its last `@`.
pub(crate) fn without_credentials(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => {
            let start = url.find("://").map_or(0, |i| i + 3);
            match url.rfind('@') {
                Some(at) if at >= start => format!("{}…{}", &url[..start], &url[at..]),
                _ => url.to_owned(),
            }
        }
    }
}

/// True when `url`'s host is this machine: a loopback address (127.0.0.0/8, `::1`),
/// `localhost` or a `*.localhost` name. The one definition the policy check and the cloud
/// client both use.
pub fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

/// A path a policy names: `~` or a leading `~/` is the user's home directory, as in a shell
/// (a policy written `model_dir = "~/models/x"` meant that, not a directory named `~` under
/// the working directory); anything else as written.
fn policy_path(written: &str) -> PathBuf {
    let rest = match written.strip_prefix('~') {
        Some("") => Some(""),
        Some(rest) => rest.strip_prefix('/'),
        None => None,
    };
    match (rest, dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(written),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_never_shown() {
        assert_eq!(
            without_credentials("https://user:s3cret@gw.example/v1"),
            "https://gw.example/v1"
        );
        assert_eq!(
            without_credentials("https://s3cret@gw.example/v1"),
            "https://gw.example/v1"
        );
        assert_eq!(
            without_credentials("https://gw.example/v1"),
            "https://gw.example/v1"
        );
        assert_eq!(without_credentials("ht tp://u:s3cret@gw"), "ht tp://…@gw");
        assert_eq!(without_credentials("https://u:s3cret@"), "https://…@");
        let err = check_base_url("http://user:s3cret@example.com/v1", false).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        let err = check_base_url("ftp://user:s3cret@example.com/v1", false).unwrap_err();
        assert!(
            !err.contains("s3cret") && err.contains("ftp://example.com/v1"),
            "{err}"
        );
        let policy = compile_str(
            "[cloud]\nmodel = \"m\"\nbase_url = \"https://user:s3cret@gw.example/v1\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let shown = format!("{policy:?}");
        assert!(shown.contains("https://gw.example/v1") && !shown.contains("s3cret"));
    }

    #[test]
    fn paths_starting_with_a_tilde_are_in_the_users_home() {
        let home = dirs::home_dir().unwrap();
        let policy = compile_str(
            "[local]\nmodel_dir = \"~/models/m\"\nruntime_path = \"~\"\n\
             [cloud]\nmodel = \"m\"\nca_file = \"~/certs/ca.pem\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(policy.local.model_dir, Some(home.join("models/m")));
        assert_eq!(policy.local.runtime_path, Some(home.join("")));
        let ca_file = policy.cloud.as_ref().and_then(|c| c.ca_file.clone());
        assert_eq!(ca_file, Some(home.join("certs/ca.pem")));
        // Only `~` itself or `~/`: another user's home and a `~` elsewhere stay as written.
        for written in ["~bob/m", "./~/m", "m~/x", "/abs/m"] {
            assert_eq!(policy_path(written), PathBuf::from(written), "{written}");
        }
    }

    #[test]
    fn base_url_rules() {
        assert!(check_base_url("https://api.openai.com/v1", false).is_ok());
        assert!(check_base_url("http://127.0.0.1:8080/v1", false).is_ok());
        assert!(check_base_url("http://localhost/v1", false).is_ok());
        assert!(check_base_url("http://[::1]:9/v1", false).is_ok());
        assert!(check_base_url("http://example.com/v1", false).is_err());
        assert!(check_base_url("http://example.com/v1", true).is_ok());
        assert!(check_base_url("ftp://x", true).is_err());
        assert!(check_base_url("https://", false).is_err());
        // The same reading of the URL as the HTTP client's.
        assert!(check_base_url("http://api.localhost:8080/v1", false).is_ok());
        assert!(check_base_url("http://127.1:8080/v1", false).is_ok());
        assert!(check_base_url("http://evil.com\\@localhost/v1", false).is_err());
        assert!(check_base_url("http://localhost.evil.com/v1", false).is_err());
        assert!(check_base_url("not a url", false).is_err());
    }

    #[test]
    fn prices_are_decimal_exact() {
        let p = compile_str(
            "[cloud]\nmodel='m'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = \"0.6\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let c = p.cloud.unwrap();
        let cost = c.cost(crate::request::Usage::new(1000, 2000));
        assert_eq!(cost.to_string(), "0.00135");
        // Without a cached-input price, tokens read from the provider's cache cost as much as
        // any other input token (never an estimate too low).
        let cached = crate::request::Usage {
            cached_input_tokens: 600,
            ..crate::request::Usage::new(1000, 2000)
        };
        assert_eq!(c.cost(cached).to_string(), "0.00135");
    }

    #[test]
    fn tokens_from_the_providers_prompt_cache_cost_the_cached_price() {
        let p = compile_str(
            "[cloud]\nmodel='m'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\n\
             cached_input_usd_per_mtok = \"0.075\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let c = p.cloud.unwrap();
        assert_eq!(c.cached_input_usd_per_mtok.to_string(), "0.075");
        let usage = |cached| crate::request::Usage {
            cached_input_tokens: cached,
            ..crate::request::Usage::new(1000, 2000)
        };
        // 400 × 0.15 + 600 × 0.075 + 2000 × 0.6 = 1305 per million.
        assert_eq!(c.cost(usage(600)).to_string(), "0.001305");
        assert_eq!(c.cost(usage(0)).to_string(), "0.00135");
        // A provider claiming more cached tokens than the prompt had: all at the cached price.
        assert_eq!(c.cost(usage(5000)).to_string(), "0.001275");
        let err = compile_str(
            "[cloud]\nmodel='m'\ncached_input_usd_per_mtok = -1\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(
            err.iter()
                .any(|d| d.to_string().contains("cloud.cached_input_usd_per_mtok")),
            "{err:?}"
        );
        // Above the input price: the reservation could fall short of the cost, so say so.
        let p = compile_str(
            "[cloud]\nmodel='m'\ninput_usd_per_mtok = 0.15\ncached_input_usd_per_mtok = 1\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(
            p.warnings
                .iter()
                .any(|w| w.to_string().contains("above the input price")),
            "{:?}",
            p.warnings
        );
    }
}
