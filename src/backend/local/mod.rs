//! Local tier: a small instruct model on ONNX Runtime, in-process.
//!
//! [`LocalBackend`] renders the conversation with the model's ChatML template (keeping its
//! default system prompt), runs the prompt once (prefill) and then decodes token by token with a
//! KV cache, greedily or with temperature/top-p sampling from a seed. It stops on end-of-turn or
//! after `max_new_tokens`, streams valid UTF-8 deltas, and reports the log-probability of every
//! generated token as a [`Confidence`].
//!
//! Generation runs on its own blocking thread, never on the async executor; dropping the
//! [`EventStream`] stops it at the next token. Sessions live in a pool, so one `LocalBackend`
//! (cheap to clone, `Send + Sync`) serves concurrent requests: async calls wait for a free
//! session as futures of the current Tokio runtime, in the order they were made, and get a
//! thread only once one is free. Each session keeps the keys and
//! values of the last prompt it ran, so a prompt that starts the same way (the same system
//! prompt, or the same conversation one turn later) runs only its new tokens, with exactly the
//! results of running it all ([`LocalBackendBuilder::prompt_cache_tokens`]).
//!
//! Files come from the edgeroute home (see [`crate::home`]), installed by
//! `python3 scripts/setup.py`; a missing or damaged runtime or model is an error naming the path
//! and that command, never a panic.
//!
//! ```no_run
//! # async fn demo() -> edgeroute::Result<()> {
//! use edgeroute::backend::local::LocalBackend;
//! use edgeroute::backend::{Backend, BackendCall};
//! use edgeroute::request::{GenerationParams, Message};
//!
//! let local = LocalBackend::builder().threads(2).max_new_tokens(64).commit()?;
//! let call = BackendCall {
//!     messages: vec![Message::user("What is the capital of France?")],
//!     params: GenerationParams::default(),
//!     deadline: None,
//! };
//! let answer = local.generate(call).await?;
//! println!("{} ({:?})", answer.text, answer.confidence);
//! # Ok(()) }
//! ```

mod decoder;
mod hugepages;
mod manifest;
mod pool;
pub mod runtime;
mod sampler;
mod text;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use self::decoder::{Decoder, KvShape, Names};
pub use self::manifest::{Architecture, ChatTemplate, Manifest, MANIFEST_FILE};
use self::pool::Pool;
use self::sampler::Sampler;
use self::text::{TextCodec, Utf8Stream};
use super::{Backend, BackendCall, EventStream, FinishReason, Generation, StreamEvent};
use crate::error::{Error, Result, TimeoutPhase};
use crate::home;
use crate::request::{
    check_repetition_penalty, Confidence, GenerationParams, Message, Usage,
    DEFAULT_REPETITION_PENALTY, REPETITION_WINDOW,
};

/// Default for [`LocalBackendBuilder::max_new_tokens`].
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 256;

/// Version of the rules that turn the model's output into a reply, in the backend's revision
/// (so in the answer cache's keys): raised when they change what a reply is. 2: any special
/// token ends the reply.
const DECODING_RULES: u32 = 2;

/// Answer positions a generation's KV cache has room for from the start (see
/// `decoder::KvCache`); a longer answer moves it to a buffer twice as large.
const INITIAL_ANSWER_ROOM: usize = 256;

/// Default for [`LocalBackendBuilder::prompt_cache_tokens`]: 512 positions are ~23 MB per
/// session for the default model.
pub const DEFAULT_PROMPT_CACHE_TOKENS: usize = 512;

/// The first sentence (for [`Confidence::first_sentence`]) ends at the first `.`, `!`, `?` or
/// newline once the reply is at least this many bytes long...
pub const FIRST_SENTENCE_MIN_CHARS: usize = 20;
/// ...or after this many tokens, whichever comes first.
pub const FIRST_SENTENCE_MAX_TOKENS: usize = 24;

/// One generated token, as seen by [`LocalBackend::generate_blocking`]'s callback.
///
/// One more event may follow the last token when the model ends its turn inside a split UTF-8
/// character: its `text` is the leftover bytes (as U+FFFD), its `id` the end-of-turn id and its
/// `logprob` 0. Count tokens with [`LocalOutput::token_ids`], not with events. (An answer the
/// token limit or the context cuts inside a character leaves that character out.)
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// Token id.
    pub id: u32,
    /// Its log-probability under the model (temperature 1).
    pub logprob: f32,
    /// The text it completes (may be empty while a UTF-8 character is split across tokens).
    pub text: &'a str,
    /// Time since the generation started.
    pub elapsed: Duration,
}

/// A finished local generation with everything the model produced.
#[derive(Debug, Clone)]
pub struct LocalOutput {
    /// Prompt token ids (template included).
    pub prompt_ids: Vec<u32>,
    /// Generated token ids (without the end-of-turn token).
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token.
    pub logprobs: Vec<f32>,
    /// The reply text.
    pub text: String,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Statistics over `logprobs` (`None` for an empty reply).
    pub confidence: Option<Confidence>,
    /// Leading prompt tokens taken from the session's prompt cache instead of being run again.
    pub reused_prompt_tokens: usize,
    /// Time to the first generated token (prefill + first pick).
    pub first_token: Duration,
    /// Whole generation time.
    pub elapsed: Duration,
}

impl LocalOutput {
    fn into_generation(self) -> Generation {
        Generation {
            usage: Usage::new(self.prompt_ids.len() as u64, self.token_ids.len() as u64),
            usage_estimated: false,
            confidence: self.confidence,
            finish: self.finish,
            text: self.text,
        }
    }
}

/// Builds a [`LocalBackend`]. Every setter has a default; [`LocalBackendBuilder::commit`] does the
/// expensive work (load the runtime, check the model directory, open the sessions).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct LocalBackendBuilder {
    home: Option<PathBuf>,
    model: Option<String>,
    model_dir: Option<PathBuf>,
    runtime_path: Option<PathBuf>,
    threads: Option<usize>,
    max_new_tokens: Option<u32>,
    pool_size: Option<usize>,
    verify_checksums: bool,
    spin: bool,
    huge_pages: Option<bool>,
    repetition_penalty: Option<f32>,
    prompt_cache_tokens: Option<usize>,
    max_waiting: Option<usize>,
    prefill_chunk: Option<usize>,
}

/// Most prompt tokens run in one ONNX Runtime call. A longer prompt runs in several, with the
/// deadline and the caller checked between them, so a cancelled or late request stops within
/// one run instead of after its whole prompt. Results are the same; measured with the default
/// model at 2 threads, long prompts even run faster in runs of 256 than whole (first token for
/// ~1,000 prompt tokens 1.57 vs 2.04 s, ~3,000 tokens 5.8 vs 6.6 s; 128 and 512 about the same).
pub(crate) const PREFILL_CHUNK: usize = 256;

/// Default for [`LocalBackendBuilder::max_waiting`].
pub const DEFAULT_MAX_WAITING: usize = 256;

impl LocalBackendBuilder {
    /// The edgeroute home. Default: [`home::resolve`] (`EDGEROUTE_HOME`, else the user's data dir).
    pub fn home(mut self, dir: impl Into<PathBuf>) -> Self {
        self.home = Some(dir.into());
        self
    }
    /// The model's name under `<home>/models/`. Default: [`home::DEFAULT_MODEL`].
    pub fn model(mut self, name: impl Into<String>) -> Self {
        self.model = Some(name.into());
        self
    }
    /// The model directory itself, overriding home + model name. Default: `<home>/models/<model>`.
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = Some(dir.into());
        self
    }
    /// The ONNX Runtime library. Default: `ORT_DYLIB_PATH`, else `<home>/runtime/libonnxruntime.so*`.
    /// Only the first backend of a process loads the runtime; later ones share it.
    pub fn runtime_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.runtime_path = Some(path.into());
        self
    }
    /// Intra-op threads per session. Default: the available cores, at most 4.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }
    /// Reply length cap when the call sets none. Default: [`DEFAULT_MAX_NEW_TOKENS`] (256).
    /// Through a [`crate::Router`], every call sets one: the request's, else the policy's
    /// `[local].max_new_tokens`; this value applies to direct calls.
    pub fn max_new_tokens(mut self, n: u32) -> Self {
        self.max_new_tokens = Some(n.max(1));
        self
    }
    /// Repetition penalty for calls that set none (see
    /// [`GenerationParams::repetition_penalty`]; 1 = off, allowed 1–2, checked by
    /// [`LocalBackendBuilder::commit`]). Default: [`DEFAULT_REPETITION_PENALTY`]. Through a
    /// [`crate::Router`], every local call sets one: the request's, else the policy's
    /// `[local].repetition_penalty`; this value applies to direct calls.
    pub fn repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = Some(p);
        self
    }
    /// How many leading prompt tokens each session keeps the keys and values of for the next
    /// generation (default [`DEFAULT_PROMPT_CACHE_TOKENS`]; 0 turns the cache off). A prompt that
    /// starts with the same tokens resumes from them: answers are bit-for-bit the same, the
    /// first token comes sooner.
    pub fn prompt_cache_tokens(mut self, n: usize) -> Self {
        self.prompt_cache_tokens = Some(n);
        self
    }
    /// Most async calls waiting for a session at once. A call beyond them fails at once with
    /// [`Error::TierUnavailable`] (a router answers it from the cloud when its policy allows)
    /// rather than queueing behind work it could not outwait. Default:
    /// [`DEFAULT_MAX_WAITING`].
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = Some(n);
        self
    }
    /// Sessions (concurrent generations; each holds the weights in memory). Default: 1.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = Some(n.max(1));
        self
    }
    /// Let ONNX Runtime's worker threads busy-wait between operators: much faster decoding on
    /// cores the app has to itself (measured with the default model at 2 threads on a 2-core
    /// machine: ~110 vs ~80 tokens/s), much slower when other work shares them (44 vs 62
    /// tokens/s with one core busy). They wait so only during a run: between runs they sleep.
    /// Default: `false`. Policy: `[local].spinning`.
    pub fn intra_op_spinning(mut self, yes: bool) -> Self {
        self.spin = yes;
        self
    }
    /// Move the weights to 2 MiB pages once the sessions are open, on a low-priority background
    /// thread that works only while no generation runs (Linux ≥ 6.1 with transparent huge pages
    /// not switched off; elsewhere nothing happens). Decoding reads every weight per token, and on 4 KiB pages part of its time goes
    /// to address translation: measured ~10% faster decode for the default model. Contents and
    /// resident size are unchanged. Default: `true`. See [`LocalBackend::huge_page_bytes`].
    pub fn huge_pages(mut self, yes: bool) -> Self {
        self.huge_pages = Some(yes);
        self
    }
    /// Tests: most prompt tokens per run (default [`PREFILL_CHUNK`]).
    #[cfg(test)]
    pub(crate) fn prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = Some(n);
        self
    }
    /// Check every model file's SHA-256 against the manifest when opening (about a second for the
    /// default model). Default: `false` (sizes are always checked).
    pub fn verify_checksums(mut self, yes: bool) -> Self {
        self.verify_checksums = yes;
        self
    }

    /// The backend's [`Backend::revision`] for an installed build (see
    /// `Manifest::installed_build`) plus the decoding rules' version and the defaults that
    /// change answers (`+d2-max256-rp1.1`), so the answer cache does not serve what another
    /// build, another copy, older decoding rules or other defaults produced.
    pub(crate) fn revision_for(&self, build: Option<&str>) -> String {
        let defaults = format!(
            "d{DECODING_RULES}-max{}-rp{}",
            self.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
            self.repetition_penalty
                .unwrap_or(DEFAULT_REPETITION_PENALTY)
        );
        match build {
            Some(build) => format!("{build}+{defaults}"),
            None => defaults,
        }
    }

    /// Loads the runtime, checks the model directory and opens the sessions.
    ///
    /// Errors: [`Error::RuntimeUnavailable`] or [`Error::ModelUnavailable`], each naming the path,
    /// the reason and the fix; [`Error::Config`] for a repetition penalty outside 1–2.
    pub fn commit(self) -> Result<LocalBackend> {
        let repetition_penalty = check_repetition_penalty(
            self.repetition_penalty
                .unwrap_or(DEFAULT_REPETITION_PENALTY),
        )
        .map_err(|e| Error::Config(format!("local backend: {e}")))?;
        let home_dir = home::resolve(self.home.as_deref());
        let model_dir = self.model_dir.clone().unwrap_or_else(|| {
            home::model_dir(
                &home_dir,
                self.model.as_deref().unwrap_or(home::DEFAULT_MODEL),
            )
        });
        let manifest = Manifest::load(&model_dir, self.verify_checksums)?;
        let rt = runtime::ensure(self.runtime_path.as_deref(), &home_dir)?;
        let a = &manifest.architecture;
        let kv = KvShape {
            layers: a.num_layers,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
        };
        let codec = TextCodec::load(
            &model_dir.join("tokenizer.json"),
            manifest.chat_template.clone(),
            a.vocab_size,
        )?;
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(4)
        });
        let pool_size = self.pool_size.unwrap_or(1);
        let model_path = model_dir.join("model.onnx");
        let before = hugepages::Snapshot::take();
        let mut sessions = Vec::with_capacity(pool_size);
        for _ in 0..pool_size {
            sessions.push(decoder::open_session(
                rt,
                &model_path,
                threads,
                self.spin,
                kv,
            )?);
        }
        let active = Arc::new(AtomicUsize::new(0));
        let huge_pages = if self.huge_pages.unwrap_or(true) {
            let active = Arc::clone(&active);
            hugepages::in_background(before.mapped_since(), move || {
                active.load(Ordering::SeqCst) > 0
            })
        } else {
            hugepages::Progress::off()
        };
        Ok(LocalBackend {
            inner: Arc::new(Inner {
                name: format!("local/{}", manifest.name),
                revision: self.revision_for(manifest.installed_build(&model_dir).as_deref()),
                model_dir,
                max_new_tokens: self.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
                repetition_penalty,
                prompt_cache_tokens: self
                    .prompt_cache_tokens
                    .unwrap_or(DEFAULT_PROMPT_CACHE_TOKENS),
                prefill_chunk: self.prefill_chunk.unwrap_or(PREFILL_CHUNK),
                threads,
                names: Names::new(kv.layers),
                kv,
                context_length: a.context_length,
                eos: manifest.eos_token_ids.clone(),
                codec,
                admission: Arc::new(Semaphore::new(sessions.len())),
                waiting: Arc::new(AtomicUsize::new(0)),
                sessions: sessions.len(),
                max_waiting: self.max_waiting.unwrap_or(DEFAULT_MAX_WAITING),
                pool: Pool::new(sessions),
                active,
                tokens: AtomicU64::new(0),
                #[cfg(test)]
                panic_next: std::sync::atomic::AtomicBool::new(false),
                #[cfg(test)]
                admitted: std::sync::Mutex::new(Vec::new()),
                #[cfg(test)]
                prefill_runs: AtomicUsize::new(0),
                huge_pages,
            }),
        })
    }
}

/// The local tier's backend. Cheap to clone (an `Arc` inside), `Send + Sync`: concurrent
/// generations each take a session from the pool (waiting when all are busy).
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    revision: String,
    model_dir: PathBuf,
    max_new_tokens: u32,
    repetition_penalty: f32,
    prompt_cache_tokens: usize,
    /// Most prompt tokens per ONNX Runtime call ([`PREFILL_CHUNK`]).
    prefill_chunk: usize,
    threads: usize,
    names: Names,
    kv: KvShape,
    context_length: usize,
    eos: Vec<u32>,
    codec: TextCodec,
    /// One permit per session: an async call waits here, as a future on the runtime, until a
    /// session is free for it (in arrival order), and only then gets a thread.
    admission: Arc<Semaphore>,
    /// Async calls waiting for a session now, and the most that may.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// Sessions in the pool.
    sessions: usize,
    pool: Pool,
    /// Generations running (shared with the huge-page thread, which waits while any runs).
    active: Arc<AtomicUsize>,
    tokens: AtomicU64,
    /// Tests: the next generation panics (to check how a panic is reported).
    #[cfg(test)]
    panic_next: std::sync::atomic::AtomicBool,
    /// Tests: the last message of each async call, in the order their turn came.
    #[cfg(test)]
    admitted: std::sync::Mutex<Vec<String>>,
    /// Tests: prompt runs followed by another run of the same prompt.
    #[cfg(test)]
    prefill_runs: AtomicUsize,
    huge_pages: Arc<hugepages::Progress>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sessions' memory goes back to the allocator: no longer the model's to collapse.
        self.huge_pages.stop();
    }
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("name", &self.inner.name)
            .field("model_dir", &self.inner.model_dir)
            .field("threads", &self.inner.threads)
            .field("huge_page_bytes", &self.inner.huge_pages.bytes())
            .finish_non_exhaustive()
    }
}

/// A model build's revision as shown in cache identities: 16 hex digits of its weights' SHA-256.
/// Decrements the active-generation counter however the generation ends.
struct ActiveGuard<'a>(&'a AtomicUsize);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts the tokens of the first sentence: up to the first `.`, `!`, `?` or newline at or after
/// byte [`FIRST_SENTENCE_MIN_CHARS`] of the reply, capped at [`FIRST_SENTENCE_MAX_TOKENS`].
#[derive(Debug, Default)]
struct FirstSentence {
    bytes: usize,
    tokens: usize,
    done: bool,
}

impl FirstSentence {
    fn push(&mut self, text: &str) {
        if self.done {
            return;
        }
        self.tokens += 1;
        for (i, c) in text.char_indices() {
            if self.bytes + i >= FIRST_SENTENCE_MIN_CHARS && matches!(c, '.' | '!' | '?' | '\n') {
                self.done = true;
            }
        }
        self.bytes += text.len();
        if self.tokens >= FIRST_SENTENCE_MAX_TOKENS {
            self.done = true;
        }
    }
}

impl LocalBackend {
    /// Starts a builder; see its setters for the defaults.
    pub fn builder() -> LocalBackendBuilder {
        LocalBackendBuilder::default()
    }

    /// The model directory in use.
    pub fn model_dir(&self) -> &Path {
        &self.inner.model_dir
    }

    /// Intra-op threads per session.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Bytes of the memory allocated while opening the sessions that have been moved to 2 MiB
    /// pages so far (see [`LocalBackendBuilder::huge_pages`]); 0 when off or unavailable.
    pub fn huge_page_bytes(&self) -> usize {
        self.inner.huge_pages.bytes()
    }

    /// Whether the move to huge pages, which runs in the background after
    /// [`LocalBackendBuilder::commit`], is over (always `true` when off).
    pub fn huge_pages_settled(&self) -> bool {
        self.inner.huge_pages.settled()
    }

    /// Generations started and not yet ended (diagnostics; drops to zero once cancelled work
    /// stops). An async call counts once a session is free for it; a direct blocking call
    /// counts while it waits for one too.
    pub fn active_generations(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Tokens generated by this backend (and its clones) since it was built.
    pub fn tokens_generated(&self) -> u64 {
        self.inner.tokens.load(Ordering::SeqCst)
    }

    /// The prompt token ids for a conversation (ChatML, default system prompt when none given).
    pub fn encode_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.inner.codec.encode_chat(messages)
    }

    /// Generates on the calling thread (blocking: call it from a blocking context). `on_token`
    /// sees every generated token; returning `ControlFlow::Break` stops with [`Error::Cancelled`].
    pub fn generate_blocking(
        &self,
        messages: &[Message],
        params: &GenerationParams,
        deadline: Option<Instant>,
        on_token: impl FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput> {
        let called = Instant::now();
        self.generate_unless(messages, params, called, deadline, &|| false, on_token)
    }

    /// [`LocalBackend::generate_blocking`], also stopped by `abandoned` (the caller went away):
    /// checked while the request waits for a session, before its prompt runs, between the runs
    /// of a long prompt (at most [`PREFILL_CHUNK`] tokens each) and before every token, so an
    /// abandoned request does not hold up the ones queued behind it. A timeout's `elapsed`
    /// counts from `called`, the wait for a session included.
    fn generate_unless(
        &self,
        messages: &[Message],
        params: &GenerationParams,
        called: Instant,
        deadline: Option<Instant>,
        abandoned: &dyn Fn() -> bool,
        mut on_token: impl FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<LocalOutput> {
        let inner = &*self.inner;
        // The router checks them too; a direct caller gets the same errors, not a silent
        // greedy run or a one-token answer.
        params.check()?;
        let start = Instant::now();
        inner.active.fetch_add(1, Ordering::SeqCst);
        let _active = ActiveGuard(&inner.active);

        let prompt_ids = inner.codec.encode_chat(messages)?;
        if prompt_ids.len() >= inner.context_length {
            return Err(Error::ContextTooLong(format!(
                "the prompt is {} tokens; the local model's context is {}",
                prompt_ids.len(),
                inner.context_length
            )));
        }
        let wanted = params.max_tokens.unwrap_or(inner.max_new_tokens).max(1);
        let room = u32::try_from(inner.context_length - prompt_ids.len()).unwrap_or(u32::MAX);
        // Where the answer must end: at the token limit, or where the context window fills up.
        let (max_new, at_limit) = if wanted <= room {
            (wanted as usize, FinishReason::Length)
        } else {
            (room as usize, FinishReason::ContextFull)
        };
        let penalty = params
            .repetition_penalty
            .unwrap_or(inner.repetition_penalty);
        let mut sampler = Sampler::new(params.temperature, params.top_p, params.seed, penalty);
        let check_deadline = || match deadline {
            _ if abandoned() => Err(Error::Cancelled),
            Some(d) if Instant::now() >= d => Err(Error::Timeout {
                phase: TimeoutPhase::Total,
                elapsed: called.elapsed(),
            }),
            _ => Ok(()),
        };
        check_deadline()?;

        let mut lease = inner.pool.lease(&prompt_ids, &check_deadline)?;
        check_deadline()?;
        #[cfg(test)]
        if inner.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a test asked for a panic");
        }
        let cached = lease.take_prompt_kv();
        let reused = cached.as_ref().map_or(0, |kv| kv.reusable(&prompt_ids));
        let session = lease.session()?;
        // Room for the prompt and the start of the answer; a longer answer moves the cache to
        // a larger buffer (doubling). Sizing for `max_new` up front would allocate (and zero)
        // the whole context for a request that merely allows a long answer.
        let room = prompt_ids.len() + max_new.min(INITIAL_ANSWER_ROOM);
        let mut decoder = match cached {
            // With nothing to reuse (`reused == 0`) the kept buffers still serve.
            Some(kv) => Decoder::resume(session, &inner.names, inner.kv, kv, reused, room)?,
            None => Decoder::new(session, &inner.names, inner.kv, room)?,
        };
        let result = inner.decode(
            &mut decoder,
            &prompt_ids,
            reused,
            max_new,
            at_limit,
            &mut sampler,
            start,
            &check_deadline,
            &mut on_token,
        );
        // Whatever the outcome, a prompt that ran leaves its keys and values for the next one
        // (nothing when the cache is off: a cap of 0 keeps nothing).
        match decoder.into_prompt_kv(&prompt_ids, inner.prompt_cache_tokens) {
            Ok(Some(kv)) => lease.keep_prompt_kv(kv),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "prompt cache not kept"),
        }
        let d = result?;
        Ok(LocalOutput {
            confidence: Confidence::from_logprobs(&d.logprobs, d.first_sentence),
            prompt_ids,
            token_ids: d.token_ids,
            logprobs: d.logprobs,
            text: d.text,
            finish: d.finish,
            reused_prompt_tokens: reused,
            first_token: d.first_token,
            elapsed: start.elapsed(),
        })
    }
}

impl Inner {
    /// Whether generating `id` ends the reply: one of the manifest's end-of-turn ids, or any
    /// other special token (a reply never contains one; a generated `<|im_start|>` would begin
    /// a made-up next turn, printed without its marker).
    fn ends_reply(&self, id: u32) -> bool {
        self.eos.contains(&id) || self.codec.is_special(id)
    }

    /// Runs the prompt from position `reused` on, then decodes; `max_new` tokens in, it stops
    /// with `at_limit` (the token limit's `Length`, or `ContextFull`).
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &self,
        decoder: &mut Decoder<'_>,
        prompt_ids: &[u32],
        reused: usize,
        max_new: usize,
        at_limit: FinishReason,
        sampler: &mut Sampler,
        start: Instant,
        check_deadline: &dyn Fn() -> Result<()>,
        on_token: &mut dyn FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Decoded> {
        let between_runs = || {
            #[cfg(test)]
            self.prefill_runs.fetch_add(1, Ordering::SeqCst);
            check_deadline()
        };
        let mut logits =
            decoder.prefill(&prompt_ids[reused..], self.prefill_chunk, &between_runs)?;
        let mut token_ids = Vec::new();
        let mut logprobs = Vec::new();
        let mut text = String::new();
        let mut utf8 = Utf8Stream::default();
        let mut first = FirstSentence::default();
        let mut first_token = None;
        let finish = loop {
            let recent = &token_ids[token_ids.len().saturating_sub(REPETITION_WINDOW)..];
            let (id, lp) = sampler.choose(logits, recent);
            first_token.get_or_insert_with(|| start.elapsed());
            if self.ends_reply(id) {
                break FinishReason::Stop;
            }
            self.tokens.fetch_add(1, Ordering::Relaxed);
            token_ids.push(id);
            logprobs.push(lp);
            let delta = utf8.push(self.codec.bytes(id));
            first.push(&delta);
            text.push_str(&delta);
            let event = TokenEvent {
                id,
                logprob: lp,
                text: &delta,
                elapsed: start.elapsed(),
            };
            if on_token(&event).is_break() {
                return Err(Error::Cancelled);
            }
            if token_ids.len() >= max_new {
                break at_limit;
            }
            check_deadline()?;
            logits = decoder.step(&[id])?;
        };
        // Bytes left over when the model ended its turn are invalid text: U+FFFD, as a lossy
        // decode gives. Left over when the token limit or the context cut the answer short,
        // they are a character cut in two: left out, rather than ending the answer in "�".
        let tail = if finish == FinishReason::Stop {
            utf8.finish()
        } else {
            utf8.cut();
            String::new()
        };
        if !tail.is_empty() {
            text.push_str(&tail);
            if on_token(&TokenEvent {
                id: self.eos.first().copied().unwrap_or(0),
                logprob: 0.0,
                text: &tail,
                elapsed: start.elapsed(),
            })
            .is_break()
            {
                return Err(Error::Cancelled);
            }
        }
        let first_sentence = if first.tokens == 0 {
            token_ids.len()
        } else {
            first.tokens
        };
        Ok(Decoded {
            token_ids,
            logprobs,
            text,
            finish,
            first_token: first_token.unwrap_or_default(),
            first_sentence,
        })
    }
}

/// Runs a generation on its thread, a panic there becoming an error that says so: the stream
/// would otherwise just end, which reads as a connection cut short.
fn catch_panic(generate: impl FnOnce() -> Result<LocalOutput>) -> Result<LocalOutput> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(generate)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::Inference(format!(
            "the local generation failed unexpectedly (a panic: {what}); this is a bug in \
             edgeroute: please report it"
        )))
    })
}

/// What [`Inner::decode`] produced.
struct Decoded {
    token_ids: Vec<u32>,
    logprobs: Vec<f32>,
    text: String,
    finish: FinishReason,
    first_token: Duration,
    /// Tokens of the first sentence (for [`Confidence::first_sentence`]).
    first_sentence: usize,
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// The first 16 hex digits of the weights' SHA-256 (from the manifest), the decoding rules'
    /// version and the defaults that change answers, e.g. `576ea1940f9959f6+d2-max256-rp1.1`.
    fn revision(&self) -> Option<String> {
        Some(self.inner.revision.clone())
    }

    /// Generates on a dedicated thread, started once a session is free for the call; deltas
    /// arrive through a bounded channel. Dropping the stream closes the channel: a call still
    /// waiting for a session leaves the queue, and a running one stops before its next token
    /// (or its prompt's next run of at most 256 tokens). ([`Backend::generate`] drains this
    /// stream.)
    ///
    /// Waiting for a session takes a task of the current Tokio runtime (with its timers, for
    /// a deadline), not a thread; outside a runtime, the call waits in the session pool on
    /// its own thread instead.
    async fn stream(&self, call: BackendCall) -> Result<EventStream> {
        let (tx, mut rx) = mpsc::channel::<Result<StreamEvent>>(64);
        let backend = self.clone();
        let gone = {
            let tx = tx.clone();
            async move { tx.closed().await }
        };
        let deadline = call.deadline;
        let called = Instant::now();
        self.when_admitted(deadline, gone, move |turn| {
            let permit = match turn {
                Ok(permit) => permit,
                Err(timeout) => {
                    let _ = tx.try_send(Err(timeout));
                    return;
                }
            };
            #[cfg(test)]
            if let (Ok(mut admitted), Some(last)) =
                (backend.inner.admitted.lock(), call.messages.last())
            {
                admitted.push(last.content.clone());
            }
            let report = tx.clone();
            let spawned = std::thread::Builder::new()
                .name("edgeroute-local".into())
                .spawn(move || {
                    let abandoned = || tx.is_closed();
                    let result = catch_panic(|| {
                        backend.generate_unless(
                            &call.messages,
                            &call.params,
                            called,
                            call.deadline,
                            &abandoned,
                            |ev| {
                                // (A closed channel also stops it here.)
                                if ev.text.is_empty() {
                                    return ControlFlow::Continue(());
                                }
                                match tx.blocking_send(Ok(StreamEvent::Delta(ev.text.to_string())))
                                {
                                    Ok(()) => ControlFlow::Continue(()),
                                    Err(_) => ControlFlow::Break(()),
                                }
                            },
                        )
                    });
                    // The session is back in the pool: the next call in line may start, even
                    // while this one waits for its caller to take the last event.
                    drop(permit);
                    let last = match result {
                        Ok(out) => Ok(StreamEvent::Done(out.into_generation())),
                        Err(Error::Cancelled) => return,
                        Err(e) => Err(e),
                    };
                    let _ = tx.blocking_send(last);
                });
            if let Err(e) = spawned {
                let _ = report.try_send(Err(Error::io("spawning the local generation thread", e)));
            }
        })
        .await;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

/// Counts a call among those waiting for a session while it lives.
struct WaitingGuard(Arc<AtomicUsize>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A call's turn at a session: a permit to use one (`None`: not managed here, outside a
/// runtime; the session pool queues it), or the timeout of a deadline that passed first.
type Turn = std::result::Result<Option<OwnedSemaphorePermit>, Error>;

impl LocalBackend {
    /// Calls `start` once the call's turn at a session comes. The call takes its place in the
    /// queue here, in the caller's task, so calls are served in the order they were made (the
    /// semaphore is first come, first served); the wait goes on in a task of the runtime, so
    /// it takes no thread. `gone` (the caller left) ends the wait without calling `start`; a
    /// deadline passing first calls it with the timeout.
    async fn when_admitted(
        &self,
        deadline: Option<Instant>,
        gone: impl std::future::Future<Output = ()> + Send + 'static,
        start: impl FnOnce(Turn) + Send + 'static,
    ) {
        let called = Instant::now();
        let mut turn = Box::pin(Arc::clone(&self.inner.admission).acquire_owned());
        if let std::task::Poll::Ready(permit) = futures::poll!(turn.as_mut()) {
            return start(Ok(permit.ok()));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return start(Ok(None));
        };
        let inner = &self.inner;
        let queued = inner.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = WaitingGuard(Arc::clone(&inner.waiting));
        if queued >= inner.max_waiting {
            drop(waiting);
            return start(Err(Error::TierUnavailable {
                tier: "local",
                why: format!(
                    "{queued} calls are already waiting for the local model's {} session(s)",
                    inner.sessions
                ),
            }));
        }
        let timed_out = move || Error::Timeout {
            phase: TimeoutPhase::Total,
            elapsed: called.elapsed(),
        };
        runtime.spawn(async move {
            let _waiting = waiting;
            let turn = async {
                match deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), turn).await {
                        Ok(permit) => Ok(permit.ok()),
                        Err(_) => Err(timed_out()),
                    },
                    None => Ok(turn.await.ok()),
                }
            };
            tokio::select! {
                turn = turn => start(turn),
                () = gone => {}
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn first_sentence_ends_after_min_chars_at_terminator() {
        let mut f = FirstSentence::default();
        for t in [
            "Yes",
            ".",
            " The capital",
            " of France",
            " is Paris",
            ".",
            " It is",
        ] {
            f.push(t);
        }
        // "Yes." is too short to count; the sentence ends at the second ".".
        assert_eq!(f.tokens, 6);
        let mut g = FirstSentence::default();
        for _ in 0..40 {
            g.push(" word");
        }
        assert_eq!(g.tokens, FIRST_SENTENCE_MAX_TOKENS);
    }

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/local")
            .join(name)
    }

    /// The tiny hand-made decoder (scripts/make_local_fixtures.py): after "\n" it writes "Hi!é"
    /// and ends the turn; any other token is followed by "x".
    fn tiny() -> LocalBackend {
        match LocalBackend::builder()
            .model_dir(fixture("tiny"))
            .threads(1)
            .pool_size(2)
            .commit()
        {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    fn run(
        b: &LocalBackend,
        messages: &[Message],
        params: &GenerationParams,
    ) -> (LocalOutput, Vec<String>) {
        let mut deltas = Vec::new();
        let out = b
            .generate_blocking(messages, params, None, |ev| {
                deltas.push(ev.text.to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
        (out, deltas)
    }

    #[test]
    fn tiny_decoder_runs_template_prefill_decode_and_stops_at_end_of_turn() {
        let b = tiny();
        assert_eq!(b.name(), "local/tiny-fixture");
        let msgs = [Message::user("hey")];
        let prompt = b.encode_prompt(&msgs).unwrap();
        // <|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n
        let byte = |c: u8| 3 + u32::from(c);
        let mut want = vec![1];
        want.extend(b"system\nBe brief.".iter().map(|&c| byte(c)));
        want.extend([2, byte(b'\n'), 1]);
        want.extend(b"user\nhey".iter().map(|&c| byte(c)));
        want.extend([2, byte(b'\n'), 1]);
        want.extend(b"assistant\n".iter().map(|&c| byte(c)));
        assert_eq!(prompt, want);

        let (out, deltas) = run(&b, &msgs, &GenerationParams::default());
        assert_eq!(out.text, "Hi!é");
        assert_eq!(out.finish, FinishReason::Stop);
        assert_eq!(
            out.token_ids,
            vec![byte(b'H'), byte(b'i'), byte(b'!'), 3 + 0xC3, 3 + 0xA9]
        );
        // "é" is split over two byte tokens: the first yields nothing, the second the character.
        assert_eq!(deltas, vec!["H", "i", "!", "", "é"]);
        let expected_lp = 10.0 - (10f32.exp() + 258.0).ln();
        assert!(
            out.logprobs
                .iter()
                .all(|lp| (lp - expected_lp).abs() < 1e-4),
            "{:?}",
            out.logprobs
        );
        let c = out.confidence.unwrap();
        assert_eq!(c.tokens, 5);
        assert!((c.mean - expected_lp).abs() < 1e-4);
    }

    /// A special token the manifest does not list as an end of turn still ends the reply. The
    /// fixture's manifest here lists only `<|endoftext|>`: the model's `<|im_end|>` (or a
    /// `<|im_start|>` opening a turn of its own) must not be followed by more text.
    #[test]
    fn any_special_token_ends_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["tokenizer.json", "model.onnx"] {
            std::fs::copy(fixture("tiny").join(f), dir.path().join(f)).unwrap();
        }
        let mut m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("tiny").join("edgeroute-model.json")).unwrap(),
        )
        .unwrap();
        m["eos_token_ids"] = serde_json::json!([0]);
        std::fs::write(dir.path().join("edgeroute-model.json"), m.to_string()).unwrap();
        let b = LocalBackend::builder()
            .model_dir(dir.path())
            .threads(1)
            .commit()
            .unwrap();
        let params = GenerationParams {
            max_tokens: Some(20),
            ..Default::default()
        };
        let (out, _) = run(&b, &[Message::user("hey")], &params);
        // Without the rule: "Hi!éxxxxxxxxxxxxxxx" (after <|im_end|> the fixture writes "x").
        assert_eq!(
            (out.text.as_str(), out.finish),
            ("Hi!é", FinishReason::Stop)
        );
        assert_eq!(out.token_ids.len(), 5);
    }

    #[test]
    fn tiny_decoder_respects_max_tokens_and_system_message() {
        let b = tiny();
        let params = GenerationParams {
            max_tokens: Some(2),
            ..Default::default()
        };
        let (out, _) = run(&b, &[Message::user("hey")], &params);
        assert_eq!(
            (out.text.as_str(), out.finish),
            ("Hi", FinishReason::Length)
        );
        // Cut after the first of é's two bytes: the half character is left out, not "Hi!�".
        let (out, deltas) = run(
            &b,
            &[Message::user("hey")],
            &GenerationParams {
                max_tokens: Some(4),
                ..Default::default()
            },
        );
        assert_eq!(
            (out.text.as_str(), out.finish, out.token_ids.len()),
            ("Hi!", FinishReason::Length, 4)
        );
        assert_eq!(deltas.concat(), "Hi!");
        // An explicit system message replaces the default one.
        let custom = b
            .encode_prompt(&[Message::system("S"), Message::user("u")])
            .unwrap();
        assert_eq!(
            &custom[..4],
            &[
                1,
                3 + u32::from(b's'),
                3 + u32::from(b'y'),
                3 + u32::from(b's')
            ]
        );
        assert!(!custom.contains(&(3 + u32::from(b'B'))));
    }

    /// A long prompt runs in several ONNX Runtime calls with the caller checked between them:
    /// one that goes away during its prompt stops after the run in progress (not after the whole
    /// prompt), and the positions already run stay cached for the next generation.
    #[test]
    fn a_long_prompt_runs_in_parts_and_stops_between_them() {
        let chunked = LocalBackend::builder()
            .model_dir(fixture("tiny"))
            .threads(1)
            .pool_size(1)
            .prefill_chunk(4)
            .commit()
            .unwrap();
        let msgs = [Message::user("abcdefghijklmnop")];
        let prompt = chunked.encode_prompt(&msgs).unwrap().len();
        assert!(prompt > 12, "the prompt needs several runs of 4");
        let params = GenerationParams {
            max_tokens: Some(8),
            ..Default::default()
        };

        let gone_after_first_run = || chunked.inner.prefill_runs.load(Ordering::SeqCst) >= 1;
        let out = chunked.generate_unless(
            &msgs,
            &params,
            Instant::now(),
            None,
            &gone_after_first_run,
            |_| ControlFlow::Continue(()),
        );
        assert!(matches!(out, Err(Error::Cancelled)), "{out:?}");
        assert_eq!(chunked.inner.prefill_runs.load(Ordering::SeqCst), 1);
        assert_eq!(chunked.tokens_generated(), 0);

        // The next generation resumes from the first run's 4 positions and answers as a
        // generation that ran its prompt whole does.
        let (resumed, _) = run(&chunked, &msgs, &params);
        assert_eq!(resumed.reused_prompt_tokens, 4);
        let (whole, _) = run(&tiny(), &msgs, &params);
        assert_eq!(whole.reused_prompt_tokens, 0);
        assert_eq!(
            (&resumed.text, &resumed.token_ids, &resumed.logprobs),
            (&whole.text, &whole.token_ids, &whole.logprobs)
        );
        assert_eq!(resumed.text, "Hi!é");
    }

    /// A timeout's `elapsed` counts from when the call was made, its wait for a session
    /// included, not from when its generation started.
    #[test]
    fn a_timeout_counts_from_the_call() {
        let called = Instant::now() - Duration::from_secs(5);
        let out = tiny().generate_unless(
            &[Message::user("hey")],
            &GenerationParams::default(),
            called,
            Some(Instant::now()),
            &|| false,
            |_| ControlFlow::Continue(()),
        );
        match out {
            Err(Error::Timeout { elapsed, .. }) => {
                assert!(elapsed >= Duration::from_secs(5), "{elapsed:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// An answer stopped by the full context window says so (`ContextFull`), not `Length`,
    /// whose advice (raise the token limit) could not help.
    #[test]
    fn an_answer_stopped_by_the_context_window_says_so() {
        let b = tiny();
        let msgs = [Message::user("abcdefghijklmnopqrstuvw")];
        let room = 64 - b.encode_prompt(&msgs).unwrap().len();
        assert_eq!(room, 3, "the tiny model's context is 64 tokens");
        let params = |max| GenerationParams {
            max_tokens: Some(max),
            ..Default::default()
        };
        let (out, _) = run(&b, &msgs, &params(50));
        assert_eq!(
            (out.text.as_str(), out.finish),
            ("Hi!", FinishReason::ContextFull)
        );
        let (out, _) = run(&b, &msgs, &params(3));
        assert_eq!(out.finish, FinishReason::Length);
    }

    /// Called directly (not through a router), the backend checks its parameters as the router
    /// does: a bad value is an error naming it, not a silent greedy or one-token run.
    #[test]
    fn direct_calls_check_their_parameters() {
        let b = tiny();
        for (params, what) in [
            (
                GenerationParams {
                    temperature: Some(-1.0),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                GenerationParams {
                    max_tokens: Some(0),
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                GenerationParams {
                    top_p: Some(f32::NAN),
                    ..Default::default()
                },
                "top_p",
            ),
        ] {
            let err = b
                .generate_blocking(&[Message::user("hey")], &params, None, |_| {
                    ControlFlow::Continue(())
                })
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidRequest(m) if m.contains(what)),
                "{err}"
            );
        }
        assert_eq!(b.tokens_generated(), 0);
    }

    #[test]
    fn special_tokens_in_user_text_are_plain_text() {
        let b = tiny();
        let ids = b.encode_prompt(&[Message::user("<|im_end|>")]).unwrap();
        // Only the template's own turn markers are special tokens.
        assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    }

    #[tokio::test]
    async fn tiny_generate_and_stream_agree() {
        let b = tiny();
        let call = |max| BackendCall {
            messages: vec![Message::user("hey")],
            params: GenerationParams {
                max_tokens: Some(max),
                ..Default::default()
            },
            deadline: None,
        };
        let g = b.generate(call(10)).await.unwrap();
        assert_eq!((g.text.as_str(), g.usage.output_tokens), ("Hi!é", 5));
        let mut s = b.stream(call(10)).await.unwrap();
        let mut text = String::new();
        use futures::StreamExt;
        while let Some(ev) = s.next().await {
            match ev.unwrap() {
                StreamEvent::Delta(d) => text.push_str(&d),
                StreamEvent::Done(done) => assert_eq!(done.text, "Hi!é"),
            }
        }
        assert_eq!(text, "Hi!é");
    }

    /// The tiny decoder with one session, to build.
    fn one_session_builder() -> LocalBackendBuilder {
        LocalBackend::builder()
            .model_dir(fixture("tiny"))
            .threads(1)
            .pool_size(1)
    }

    /// The tiny decoder with one session.
    fn one_session() -> LocalBackend {
        one_session_builder().commit().unwrap()
    }

    /// A call saying "hey", with `deadline`.
    fn hey(deadline: Option<Instant>) -> BackendCall {
        BackendCall {
            messages: vec![Message::user("hey")],
            params: GenerationParams::default(),
            deadline,
        }
    }

    /// Waits (up to 20 s) until `done`.
    fn wait_until(what: &str, done: &dyn Fn() -> bool) {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(20), "never {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `b`'s one session, held by a generation paused after its first token until the sender
    /// is dropped.
    #[allow(clippy::type_complexity)]
    fn hold_the_session(
        b: &LocalBackend,
    ) -> (
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<Result<LocalOutput>>,
    ) {
        let (pause_tx, pause_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let b = b.clone();
            std::thread::spawn(move || {
                b.generate_blocking(&[Message::user("hey")], &Default::default(), None, |_| {
                    let _ = pause_rx.recv();
                    ControlFlow::Continue(())
                })
            })
        };
        // The holder has the session once it has generated a token.
        wait_until("a first token", &|| b.tokens_generated() == 1);
        (pause_tx, holder)
    }

    /// Lets the session [`hold_the_session`] held go, and checks that each of `streams` (calls
    /// queued behind it) then runs to its final event.
    async fn let_go(
        pause_tx: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<Result<LocalOutput>>,
        streams: Vec<EventStream>,
    ) {
        use futures::StreamExt;
        drop(pause_tx);
        holder.join().unwrap().unwrap();
        for s in streams {
            let last = s.collect::<Vec<_>>().await.pop().unwrap().unwrap();
            assert!(matches!(last, StreamEvent::Done(_)));
        }
    }

    /// A request queued behind a busy session stops without running its prompt when its
    /// caller goes away (a dropped stream) or its deadline passes, so abandoned requests do not
    /// hold up the live ones behind them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_request_waiting_for_a_session_never_runs() {
        let b = one_session();
        // The one session is held by a generation paused after its first token.
        let (pause_tx, holder) = hold_the_session(&b);
        let dropped = b.stream(hey(None)).await.unwrap();
        wait_until("2 active", &|| b.active_generations() == 2);
        drop(dropped);
        wait_until("the dropped request gone", &|| b.active_generations() == 1);
        let timed_out = {
            let (b, call) = (
                b.clone(),
                hey(Some(Instant::now() + Duration::from_millis(200))),
            );
            tokio::spawn(async move { b.generate(call).await })
        };
        let err = tokio::time::timeout(Duration::from_secs(20), timed_out)
            .await
            .expect("a request past its deadline kept waiting for the session")
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        drop(pause_tx);
        assert_eq!(holder.join().unwrap().unwrap().text, "Hi!é");
        wait_until("0 active", &|| b.active_generations() == 0);
        // Only the holder's five tokens were ever generated.
        assert_eq!(b.tokens_generated(), 5);
    }

    /// Async calls queued behind a busy session wait as futures, not threads: only as many
    /// are started as there are sessions, and a queued call whose caller left never runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_calls_wait_for_a_session_without_a_thread() {
        let b = one_session();
        // The session is held by a direct (blocking) call, paused after its first token.
        let (pause_tx, holder) = hold_the_session(&b);
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.generate(hey(None)).await })
            })
            .collect();
        let dropped = b.stream(hey(None)).await.unwrap();
        wait_until("a call waiting in the pool", &|| {
            b.inner.pool.waiting() == 1
        });
        // Time for the others to queue: they must not start (each would wait in the pool).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(b.inner.pool.waiting(), 1);
        assert_eq!(
            b.active_generations(),
            2,
            "the holder and one admitted call"
        );
        drop(dropped);
        drop(pause_tx);
        assert_eq!(holder.join().unwrap().unwrap().text, "Hi!é");
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().text, "Hi!é");
        }
        wait_until("0 active", &|| b.active_generations() == 0);
        // The holder's five tokens and the four calls' five each: the dropped one never ran.
        assert_eq!(b.tokens_generated(), 25);
    }

    /// Past `max_waiting` calls waiting for a session, a call fails at once as unavailable
    /// (a router answers it elsewhere); once the queue is shorter, calls wait again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_past_the_longest_queue_is_unavailable_at_once() {
        use futures::StreamExt;
        let b = one_session_builder().max_waiting(2).commit().unwrap();
        let (pause_tx, holder) = hold_the_session(&b);
        // The first takes the free turn (and waits in the pool); two more wait for theirs.
        let mut streams = Vec::new();
        for _ in 0..3 {
            streams.push(b.stream(hey(None)).await.unwrap());
        }
        let fourth = b.stream(hey(None)).await.unwrap().collect::<Vec<_>>();
        let events = tokio::time::timeout(Duration::from_secs(10), fourth)
            .await
            .expect("the fourth call waited instead of failing at once");
        assert!(
            matches!(&events[..], [Err(Error::TierUnavailable { tier: "local", why })]
                if why.contains("2 calls are already waiting")),
            "{events:?}"
        );
        let_go(pause_tx, holder, streams).await;
        assert_eq!(b.inner.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(b.generate(hey(None)).await.unwrap().text, "Hi!é");
    }

    /// Async calls get a session in the order they were made, whatever order the runtime runs
    /// their waiting tasks in; one whose deadline passes while it waits fails at once with the
    /// timeout, measured from the call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_calls_get_a_session_in_the_order_they_were_made() {
        let b = one_session();
        let (pause_tx, holder) = hold_the_session(&b);
        let ask = |q: &str, deadline| BackendCall {
            messages: vec![Message::user(q)],
            ..hey(deadline)
        };
        let mut streams = Vec::new();
        for i in 0..5 {
            streams.push(b.stream(ask(&format!("q{i}"), None)).await.unwrap());
        }
        let late = b
            .stream(ask(
                "late",
                Some(Instant::now() + Duration::from_millis(100)),
            ))
            .await
            .unwrap();
        use futures::StreamExt;
        let events: Vec<_> = late.collect().await;
        assert!(
            matches!(&events[..], [Err(Error::Timeout { elapsed, .. })] if *elapsed >= Duration::from_millis(100)),
            "{events:?}"
        );
        let_go(pause_tx, holder, streams).await;
        assert_eq!(
            *b.inner.admitted.lock().unwrap(),
            ["q0", "q1", "q2", "q3", "q4"]
        );
    }

    /// Requests waiting for a session get it in the order they asked: none is passed over by
    /// later arrivals (a condition variable alone wakes waiters in no set order).
    #[test]
    fn waiting_requests_get_the_session_in_arrival_order() {
        let b = one_session();
        let (pause_tx, holder) = hold_the_session(&b);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiters: Vec<_> = (0..6)
            .map(|i| {
                let (mine, order) = (b.clone(), Arc::clone(&order));
                let waiter = std::thread::spawn(move || {
                    mine.generate_blocking(
                        &[Message::user("hey")],
                        &Default::default(),
                        None,
                        |_| {
                            let mut order = order.lock().unwrap();
                            if !order.contains(&i) {
                                order.push(i);
                            }
                            ControlFlow::Continue(())
                        },
                    )
                });
                // Each one queued before the next arrives.
                wait_until("the waiter queued", &|| b.inner.pool.waiting() == i + 1);
                waiter
            })
            .collect();
        drop(pause_tx);
        holder.join().unwrap().unwrap();
        for w in waiters {
            assert_eq!(w.join().unwrap().unwrap().text, "Hi!é");
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
    }

    /// A panic in the generation thread is an error saying so, on both the streaming and the
    /// whole-answer path (a stream used to just end, read as "stream truncated ... the
    /// connection or the provider cut it short"), and the session is back for the next call.
    #[tokio::test]
    async fn a_panic_while_generating_is_an_error_that_says_so() {
        let b = one_session();
        b.inner.panic_next.store(true, Ordering::SeqCst);
        let mut stream = b.stream(hey(None)).await.unwrap();
        use futures::StreamExt;
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            matches!(&err, Error::Inference(m) if m.contains("a panic")),
            "{err}"
        );
        b.inner.panic_next.store(true, Ordering::SeqCst);
        let err = b.generate(hey(None)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Inference(m) if m.contains("a panic")),
            "{err}"
        );
        assert_eq!(b.generate(hey(None)).await.unwrap().text, "Hi!é");
        assert_eq!(b.active_generations(), 0);
    }

    #[test]
    fn missing_model_dir_is_model_unavailable_with_fix() {
        let err = LocalBackend::builder()
            .model_dir("/nonexistent/edgeroute-model")
            .commit()
            .unwrap_err();
        assert!(matches!(err, Error::ModelUnavailable { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/edgeroute-model") && msg.contains(home::SETUP_COMMAND),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_or_foreign_model_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["tokenizer.json", "edgeroute-model.json"] {
            std::fs::copy(fixture("tiny").join(f), dir.path().join(f)).unwrap();
        }
        // Size check: the manifest records the model's size.
        std::fs::write(dir.path().join("model.onnx"), b"short").unwrap();
        let err = LocalBackend::builder()
            .model_dir(dir.path())
            .commit()
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // Same size, garbage bytes: ONNX Runtime refuses it, and we say which file.
        let len = std::fs::metadata(fixture("tiny").join("model.onnx"))
            .unwrap()
            .len() as usize;
        std::fs::write(dir.path().join("model.onnx"), vec![0xAB; len]).unwrap();
        let err = LocalBackend::builder()
            .model_dir(dir.path())
            .commit()
            .unwrap_err();
        assert!(matches!(err, Error::ModelUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("model.onnx"), "{err}");
        // ... and the checksum option notices without ONNX Runtime.
        let err = LocalBackend::builder()
            .model_dir(dir.path())
            .verify_checksums(true)
            .commit()
            .unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
        // A valid ONNX model that is not a KV-cache decoder.
        let mut m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("edgeroute-model.json")).unwrap(),
        )
        .unwrap();
        m["sizes"] = serde_json::json!({});
        std::fs::write(dir.path().join("edgeroute-model.json"), m.to_string()).unwrap();
        std::fs::copy(fixture("not_a_decoder.onnx"), dir.path().join("model.onnx")).unwrap();
        let err = LocalBackend::builder()
            .model_dir(dir.path())
            .commit()
            .unwrap_err();
        assert!(err.to_string().contains("no input `input_ids`"), "{err}");
    }
}
