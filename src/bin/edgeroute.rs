//! `edgeroute`: ask, explain, check and test policies, scan for PII, inspect the cache and budget.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// Everything printed goes through `out!` (standard output: a reader that went away ends the
// command quietly) and `note!` (standard error: failures ignored), never `println!`, which
// panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};

use edgeroute::decision::Decision;
use edgeroute::policy::{compile_file, compile_str, render_diagnostics, run_cases, CompiledPolicy};
use edgeroute::router::RouterEvent;
use edgeroute::signals::Network;
use edgeroute::{Request, Router};

#[derive(Parser)]
#[command(
    name = "edgeroute",
    version,
    about = "Route prompts between an on-device model and a cloud API, by TOML policy",
    long_about = "Route prompts between an on-device model (ONNX Runtime) and a cloud model API, \
by latency, privacy and cost policies written in TOML.\n\n\
Configuration: flags first, then the environment (EDGEROUTE_POLICY, EDGEROUTE_HOME, \
EDGEROUTE_CLOUD_URL), then defaults (the built-in default policy; home under the user's data dir).\n\n\
Exit status: 0 on success, also when the reader of the output stops early (`| head`), which \
ends the command quietly; 1 on errors, invalid policies and failed policy tests; 3 when the \
policy refuses the request (a rule with route = \"refuse\", or a cloud budget spent under \
on_exhausted = \"refuse\"); 2 when the arguments cannot be parsed (an unknown flag, a missing argument); 130 when `ask` is \
interrupted (Ctrl-C, SIGTERM: it first settles the budget of a cloud call it stopped), and when \
`bench` is."
)]
struct Cli {
    /// The edgeroute home (runtime, models, cache). Default: $EDGEROUTE_HOME, else the data dir.
    #[arg(long, global = true, env = "EDGEROUTE_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// The cloud provider's base URL, overriding the policy's `[cloud].base_url` (the API key
    /// is sent there). Default: $EDGEROUTE_CLOUD_URL, else the policy's.
    #[arg(long, global = true, env = "EDGEROUTE_CLOUD_URL", value_name = "URL")]
    cloud_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a prompt: the policy picks the local model, the cloud, or the cache.
    Ask(AskArgs),
    /// Show the routing decision for a prompt without running a model, the network, or writes.
    Explain(ExplainArgs),
    /// Validate and test policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// PII and secret detection.
    #[command(subcommand)]
    Pii(PiiCommand),
    /// The encrypted answer cache in the edgeroute home.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Requests by route, cache hit rate, local share, escalations, spend, savings and latency,
    /// over every request answered with this edgeroute home; and the latency estimates
    /// remembered there (each for a model build and thread count, or a cloud endpoint).
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The teacher log: cloud answers kept to distil the local model from (the policy's
    /// `[distill] collect = true`).
    #[command(subcommand)]
    Distill(DistillCommand),
    /// Measure the local model on this device: time to first token and decode rate over a few
    /// short greedy answers, after a warm-up that loads the model. The figures are remembered
    /// on the home, so that latency rules and hedge delays decide with them from the next
    /// request on (`explain` shows "measured" instead of the policy's [latency] model). The
    /// answers are not cached or counted in `stats`.
    Bench {
        #[command(flatten)]
        policy: PolicyArg,
        /// Measured answers after the warm-up, 1 to 100.
        #[arg(long, default_value_t = 5, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..=edgeroute::calibrate::MAX_CALIBRATION_RUNS as i64))]
        runs: u16,
        /// Print one JSON object: `backend`, `warm_up_ms`, `runs` (each with `prompt_tokens`,
        /// `output_tokens`, `first_token_ms`, `total_ms`, `decode_tokens_per_s`),
        /// `first_token_ms` and `decode_tokens_per_s` (medians), `remembered` (when false, the
        /// exit status is 1).
        #[arg(long)]
        json: bool,
    },
    /// Cloud spend today and this month, against the policy's [budget] limits.
    Budget {
        #[command(flatten)]
        policy: PolicyArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Entries, bytes, hits, misses, hit rate, evictions.
    Stats {
        #[command(flatten)]
        policy: PolicyArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every cached answer and replace the cache key, so that removed answers cannot be
    /// read from the database files either (the cost ledger is kept).
    Clear {
        #[command(flatten)]
        policy: PolicyArg,
    },
}

#[derive(Subcommand)]
enum DistillCommand {
    /// Write the kept samples, oldest first, as chat fine-tuning JSONL: one
    /// {"messages": [...]} per line, the cloud's answer as the last (assistant) message.
    /// Messages are as the provider received them: placeholders (<EMAIL_1>) where the
    /// request was redacted. The export is not encrypted.
    Export {
        /// Write to FILE (created readable by its owner only); an existing FILE is replaced
        /// only once the whole export is written. Default: standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// Add each sample's rule, model, time, token counts, redacted spans, whether personal
        /// data went in clear and whether it was a cascade escalation, under "metadata".
        #[arg(long)]
        metadata: bool,
        /// Samples older than this policy's `[distill] max_age_days` are removed first.
        #[command(flatten)]
        policy: PolicyArg,
    },
    /// Samples and bytes kept.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Samples older than this policy's `[distill] max_age_days` are removed first.
        #[command(flatten)]
        policy: PolicyArg,
    },
    /// Remove every sample and replace the teacher log's key file, so that removed samples
    /// cannot be read from the database files either. (A home whose router was given its key
    /// by the app has no key file: its samples are removed, and only a new app key makes the
    /// database's old records unreadable; `export` cannot read them.)
    Clear,
}

#[derive(Args)]
struct PolicyArg {
    /// Policy file. Default: $EDGEROUTE_POLICY, else the built-in default policy.
    #[arg(long, short = 'p', env = "EDGEROUTE_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
}

#[derive(Args)]
struct RequestArgs {
    /// Caller tag, matched by `tags_any` conditions (repeatable).
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    tags: Vec<String>,
    /// Task name, matched by `task` conditions.
    #[arg(long, value_name = "NAME")]
    task: Option<String>,
    /// End-to-end deadline in milliseconds.
    #[arg(long, value_name = "N")]
    deadline_ms: Option<u64>,
    /// Maximum new tokens. Default: the policy's [local].max_new_tokens for the local model,
    /// its [cloud].max_tokens for the cloud. It also sets what a cloud call reserves against
    /// the budget, and the local latency estimate.
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// The prompt; `-` reads it from standard input.
    prompt: String,
}

#[derive(Args)]
struct AskArgs {
    #[command(flatten)]
    policy: PolicyArg,
    #[command(flatten)]
    request: RequestArgs,
    /// Print one JSON object instead of streaming text: `text`, `route`, `rule`, `reasons`,
    /// `latency_ms`, `first_token_ms`, `cost_usd` (a decimal string), `cost_estimated`,
    /// `cached`, `finish`, `confidence`, `usage`. A refusal or any other failure prints
    /// `{"error", "refused", "rule", "message"}` (exit status 3 for a refusal, 1 for any other
    /// failure).
    #[arg(long)]
    json: bool,
    /// Local model's repetition penalty, 1 (off) to 2. Default: the policy's
    /// [local].repetition_penalty.
    #[arg(long, value_name = "P")]
    repetition_penalty: Option<f32>,
    /// Neither answer from the cache nor store the answer (ask again for a new answer).
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    policy: PolicyArg,
    #[command(flatten)]
    request: RequestArgs,
    /// Print JSON: {"route","rule","plan","reasons":[..],"passed_over":[..],"signals","prompt_tokens","teacher_log"}.
    #[arg(long)]
    json: bool,
    /// Decide as if the device were offline.
    #[arg(long)]
    offline: bool,
    /// Decide as if this much cloud budget (USD) were left; default: what the home's ledger
    /// says, when the policy has a [budget].
    #[arg(long, value_name = "USD")]
    budget_left: Option<rust_decimal::Decimal>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files: exit 0 if all are valid, 1 otherwise; errors as file:line:col.
    Check {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the [[test]] cases in policy files: a pass/fail table, exit 1 on any failure.
    Test {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PiiCommand {
    /// Scan one document (the argument, or standard input): one `kind start end` line per span,
    /// or {"spans":[{"kind","start","end","confidence"}]} with --json (UTF-8 byte offsets).
    Scan {
        /// The text to scan; omitted or `-` reads standard input (put `--` before a text that
        /// starts with `-`).
        text: Option<String>,
        #[command(flatten)]
        policy: PolicyArg,
        /// Print JSON (the default output is one line per span).
        #[arg(long)]
        json: bool,
    },
}

/// Why a command ended before it finished.
enum Stop {
    /// An error, reported on standard error (exit status 1; 3 for the policy's refusal).
    Failed(edgeroute::Error),
    /// A usage error with its own wording, reported on standard error (exit status 1).
    Usage(String),
    /// The reader of standard output went away (`edgeroute pii scan | head -1`): a normal end,
    /// quiet, with exit status 0 — what ripgrep does, and what a pipeline that only wanted the
    /// first lines expects.
    StdoutClosed,
    /// Interrupted by Ctrl-C or SIGTERM (exit status 130, as a shell reports SIGINT), after
    /// the work in flight was stopped and its budget reservation settled.
    Interrupted,
}

impl From<edgeroute::Error> for Stop {
    fn from(e: edgeroute::Error) -> Self {
        Stop::Failed(e)
    }
}

impl Stop {
    /// A failed write to standard output: a closed pipe ends the command quietly, anything else
    /// (a full disk...) is an error.
    fn writing_stdout(e: std::io::Error) -> Self {
        if e.kind() == ErrorKind::BrokenPipe {
            Stop::StdoutClosed
        } else {
            Stop::Failed(edgeroute::Error::io("writing to standard output", e))
        }
    }
}

/// What a command returns: its exit status, or why it stopped.
type CmdResult = std::result::Result<ExitCode, Stop>;

/// `println!` for commands: writes a line to standard output and, when that fails, returns
/// from the enclosing function with [`Stop::writing_stdout`].
macro_rules! out {
    () => {
        out!("")
    };
    ($($arg:tt)+) => {
        writeln!(std::io::stdout().lock(), $($arg)+).map_err(Stop::writing_stdout)?
    };
}

/// `eprintln!` that never panics: a message standard error cannot take is dropped (there is
/// nowhere left to report it).
macro_rules! note {
    ($($arg:tt)+) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)+);
    }};
}

/// The variables the CLI reads as flag defaults. Set but empty means unset (as the library's
/// `EDGEROUTE_HOME` and the set-up script read them), not an empty flag value.
const FLAG_VARIABLES: [&str; 3] = ["EDGEROUTE_HOME", "EDGEROUTE_POLICY", "EDGEROUTE_CLOUD_URL"];

fn main() -> ExitCode {
    for var in FLAG_VARIABLES {
        if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
            // Single-threaded still: nothing else reads the environment yet.
            std::env::remove_var(var);
        }
    }
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(Stop::StdoutClosed) => ExitCode::SUCCESS,
        Err(Stop::Interrupted) => {
            note!("edgeroute: interrupted");
            ExitCode::from(130)
        }
        Err(Stop::Failed(e)) => {
            note!("edgeroute: {e}");
            // A refusal is the policy working as written, not a failure to retry.
            if is_refusal(&e) {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(Stop::Usage(message)) => {
            note!("edgeroute: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Ask(args) => ask(args, cli.home.as_deref(), cli.cloud_url.as_deref()),
        Command::Explain(args) => explain(args, cli.home.as_deref(), cli.cloud_url.as_deref()),
        Command::Policy(PolicyCommand::Check { files }) => policy_check(&files),
        Command::Policy(PolicyCommand::Test { files }) => policy_test(&files),
        Command::Pii(PiiCommand::Scan { text, policy, json }) => {
            pii_scan(text.as_deref(), &policy, json)
        }
        Command::Cache(cmd) => cache(cmd, cli.home.as_deref()),
        Command::Distill(cmd) => distill(cmd, cli.home.as_deref()),
        Command::Budget { policy, json } => budget(&policy, json, cli.home.as_deref()),
        Command::Bench { policy, runs, json } => bench(&policy, runs, json, cli.home.as_deref()),
        Command::Stats { json } => stats(json, cli.home.as_deref()),
    }
}

fn load_policy(arg: &PolicyArg) -> edgeroute::Result<CompiledPolicy> {
    match &arg.policy {
        Some(p) => compile_file(p),
        None => compile_str(
            edgeroute::policy::DEFAULT_POLICY,
            Path::new("<built-in default.toml>"),
        ),
    }
    .map_err(edgeroute::Error::Policy)
}

/// `arg` itself, or standard input when it is `-` (`what` names the text in errors). Standard
/// input longer than `limit` bytes is an error, found without reading (or holding) the rest.
fn arg_or_stdin(arg: &str, what: &str, limit: Option<usize>) -> edgeroute::Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut bytes = Vec::new();
    let stdin = std::io::stdin();
    let read = match limit {
        Some(limit) => stdin.take(limit as u64 + 1).read_to_end(&mut bytes),
        None => stdin.lock().read_to_end(&mut bytes),
    };
    read.map_err(|e| edgeroute::Error::io(format!("reading the {what} from standard input"), e))?;
    if let Some(limit) = limit.filter(|&l| bytes.len() > l) {
        return Err(edgeroute::Error::InvalidRequest(format!(
            "the {what} on standard input is over {limit} bytes ({} MiB), the most a request may hold; shorten it",
            limit >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        edgeroute::Error::InvalidRequest(format!(
            "standard input is not valid UTF-8 (first bad byte at offset {}); convert it to UTF-8 first",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn build_request(args: &RequestArgs) -> edgeroute::Result<Request> {
    let prompt = arg_or_stdin(
        &args.prompt,
        "prompt",
        Some(edgeroute::router::DEFAULT_MAX_PROMPT_BYTES),
    )?;
    if prompt.trim().is_empty() {
        return Err(edgeroute::Error::InvalidRequest(
            "the prompt is empty".into(),
        ));
    }
    let mut req = Request::new(prompt);
    req.tags = args.tags.clone();
    req.task = args.task.clone();
    req.deadline = args.deadline_ms.map(Duration::from_millis);
    req.params.max_tokens = args.max_tokens;
    Ok(req)
}

fn runtime() -> edgeroute::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| edgeroute::Error::io("starting the async runtime", e))
}

/// The router for `policy`, with both tiers as `ask` uses them: the local model is loaded on
/// first use, so building reads at most its manifest, and the local tier reports itself
/// available exactly when the model is installed. `store` opens the answer cache and cost
/// ledger under the home, creating them; `explain` writes nothing, so it goes without.
/// `cloud_url` (`--cloud-url`, `EDGEROUTE_CLOUD_URL`) overrides the policy's `[cloud].base_url`.
fn router(
    policy: CompiledPolicy,
    home: Option<&Path>,
    cloud_url: Option<&str>,
    store: bool,
) -> edgeroute::Result<Router> {
    let mut b = Router::builder().policy(policy).cache(store);
    if let Some(h) = home {
        b = b.home(h);
    }
    if let Some(url) = cloud_url.filter(|u| !u.trim().is_empty()) {
        b = b.cloud_base_url(url);
    }
    b.build()
}

fn ask(args: AskArgs, home: Option<&Path>, cloud_url: Option<&str>) -> CmdResult {
    let json = args.json;
    let result = answer(args, home, cloud_url);
    if let (true, Err(stop)) = (json, &result) {
        // Scripts get an answer on stdout either way; the message still goes to stderr.
        let (error, refused, rule, message) = match stop {
            Stop::Failed(e) => {
                let (rule, message) = match e {
                    edgeroute::Error::Refused { rule, message } => {
                        (Some(rule.as_str()), Some(message.as_str()))
                    }
                    edgeroute::Error::BudgetExhausted(message) => (None, Some(message.as_str())),
                    _ => (None, None),
                };
                (e.to_string(), is_refusal(e), rule, message)
            }
            Stop::Usage(m) => (m.clone(), false, None, None),
            Stop::Interrupted | Stop::StdoutClosed => return result,
        };
        out!(
            "{}",
            json!({"error": error, "refused": refused, "rule": rule, "message": message})
        );
    }
    result
}

/// Whether `e` is the policy refusing the request (exit status 3, `refused: true`): a rule
/// with `route = "refuse"`, or a cloud budget spent under `on_exhausted = "refuse"`.
fn is_refusal(e: &edgeroute::Error) -> bool {
    matches!(
        e,
        edgeroute::Error::Refused { .. } | edgeroute::Error::BudgetExhausted(_)
    )
}

/// `ask` itself: answers the prompt and prints the answer.
fn answer(args: AskArgs, home: Option<&Path>, cloud_url: Option<&str>) -> CmdResult {
    let policy = load_policy(&args.policy)?;
    let mut request = build_request(&args.request)?;
    request.params.repetition_penalty = args.repetition_penalty;
    request.skip_cache = args.no_cache;
    refuse_missing_named_home(home)?;
    let router = router(policy, home, cloud_url, true)?;
    let rt = runtime()?;
    let response = rt.block_on(async {
        let answer = async {
            let mut stream = router.stream(request);
            let mut done = None;
            while let Some(event) = stream.next().await {
                match event? {
                    RouterEvent::Delta(d) if !args.json => {
                        // A closed pipe drops the stream, which cancels the generation.
                        let mut stdout = std::io::stdout().lock();
                        stdout
                            .write_all(d.as_bytes())
                            .and_then(|()| stdout.flush())
                            .map_err(Stop::writing_stdout)?;
                    }
                    RouterEvent::Delta(_) => {}
                    RouterEvent::Done(r) => done = Some(r),
                }
            }
            done.ok_or_else(|| {
                Stop::Failed(edgeroute::Error::Inference(
                    "the router ended without a response".into(),
                ))
            })
        };
        // Whatever stopped the request (an interrupt, a closed pipe, an error), the reservation
        // of a cloud call it dropped settles in the background: `until_done_or_interrupted`
        // waits for it, or the call's whole estimate would stay counted as spent.
        // A failed flush was reported; the answer stands.
        until_done_or_interrupted(&router, answer).await.0
    });
    let response = response?;
    if args.json {
        let out = json!({
            "text": response.text,
            "route": response.route.as_str(),
            "rule": response.decision.rule,
            "reasons": reasons_json(&response.decision),
            "latency_ms": response.timings.total.as_secs_f64() * 1000.0,
            "first_token_ms": response.timings.first_token.map(|d| d.as_secs_f64() * 1000.0),
            "cost_usd": response.cost.usd.to_string(),
            "cost_estimated": response.cost.estimated,
            "cached": response.cached,
            "finish": response.finish.as_str(),
            "confidence": response.confidence,
            "usage": {
                "input_tokens": response.usage.input_tokens,
                "output_tokens": response.usage.output_tokens,
                "cached_input_tokens": response.usage.cached_input_tokens,
            },
        });
        out!("{out}");
    } else {
        out!();
        let first_token = response
            .timings
            .first_token
            .filter(|_| !response.cached)
            .map(|d| format!(" (first token {:.0} ms)", d.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        note!(
            "[{} · rule `{}` · {:.0} ms{first_token} · ${}{}]",
            response.route,
            response.decision.rule,
            response.timings.total.as_secs_f64() * 1000.0,
            response.cost.usd,
            response
                .decision
                .reasons
                .iter()
                .map(|r| format!(" · {r}"))
                .collect::<String>()
        );
        if let Some(why) = response.finish.explain() {
            note!("[incomplete: {why}]");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(policy: &PolicyArg, runs: u16, json: bool, home: Option<&Path>) -> CmdResult {
    let policy = load_policy(policy)?;
    refuse_missing_named_home(home)?;
    let router = router(policy, home, None, true)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        note!("warming up (the first answer loads the model; it is not measured)…");
        let calibration = router.calibrate(usize::from(runs), |i, run| {
            note!(
                "run {i}/{runs}: {} prompt tokens, {} tokens, first token {:.1} ms, {}",
                run.prompt_tokens,
                run.output_tokens,
                run.first_token_ms,
                tokens_per_s(run.decode_tokens_per_s),
            );
        });
        // What was measured is on disk before the process ends.
        until_done_or_interrupted(&router, async { calibration.await.map_err(Stop::Failed) }).await
    });
    let (mut c, flushed) = (result.0?, result.1);
    // Remembered means on disk: written, and flushed before the process ends.
    c.remembered &= flushed;
    if json {
        out!("{}", serde_json::to_string(&c).unwrap_or_default());
    } else {
        out!("local model:   {}", c.backend);
        out!("warm-up:       {:.0} ms", c.warm_up_ms);
        out!(
            "first token:   {:.1} ms (median of {} answers)",
            c.first_token_ms,
            c.runs.len()
        );
        out!("decode:        {}", tokens_per_s(c.decode_tokens_per_s));
    }
    if !c.remembered {
        return Err(Stop::Usage(
            "the figures were not remembered: this home's database could not be used (see the \
             warning above); run `edgeroute bench` again once nothing else holds it"
                .into(),
        ));
    }
    if !json {
        out!("remembered on this home: latency estimates start from these figures");
    }
    Ok(ExitCode::SUCCESS)
}

/// A decode rate, or why there is none.
fn tokens_per_s(rate: Option<f64>) -> String {
    rate.map_or_else(
        || "no decode rate (one-token answer)".to_string(),
        |r| format!("{r:.1} tokens/s"),
    )
}

/// Runs `work` until it ends or Ctrl-C / SIGTERM interrupts it, then shuts `router` down:
/// waits (up to 5 s) for what the work left running, such as a cloud call's budget
/// reservation, to settle, and makes what was recorded durable. After an interrupt, a second
/// one exits at once. Returns the work's result, and whether the shutdown finished (what was
/// recorded is on disk).
async fn until_done_or_interrupted<T>(
    router: &Router,
    work: impl std::future::Future<Output = std::result::Result<T, Stop>>,
) -> (std::result::Result<T, Stop>, bool) {
    let result = tokio::select! {
        r = work => r,
        () = interrupted() => Err(Stop::Interrupted),
    };
    if matches!(result, Err(Stop::Interrupted)) {
        tokio::spawn(async {
            interrupted().await;
            std::process::exit(130);
        });
    }
    let flushed = match tokio::time::timeout(Duration::from_secs(5), router.shutdown()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "what this command recorded may not be on disk");
            false
        }
        Err(_) => {
            tracing::warn!(
                "shutdown did not finish within 5 s (a cloud call's budget reservation not \
                 settled, or a slow flush)"
            );
            false
        }
    };
    (result, flushed)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            // No handler could be installed: the default action (exit) applies.
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn reasons_json(decision: &Decision) -> Value {
    Value::Array(
        decision
            .reasons
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    map.insert("message".into(), Value::String(r.to_string()));
                }
                v
            })
            .collect(),
    )
}

fn explain(args: ExplainArgs, home: Option<&Path>, cloud_url: Option<&str>) -> CmdResult {
    let policy = load_policy(&args.policy)?;
    let request = build_request(&args.request)?;
    let router = router(policy, home, cloud_url, false)?;
    // What earlier requests on this home measured and spent: only read (opening the database
    // may recover its log after a crash).
    let db = home_database(home);
    match &db {
        Some(Ok(db)) => {
            if let Err(e) = router.recall_latency(db) {
                note!("note: latencies measured on this device unknown ({e}); deciding with the policy's [latency] model");
            }
        }
        Some(Err(e)) => {
            let budget = if router.policy().budget.has_limits() && args.budget_left.is_none() {
                " and no budget figure (pass --budget-left to decide with a value)"
            } else {
                ""
            };
            note!("note: this home's database cannot be read ({e}); deciding with the policy's [latency] model{budget}");
        }
        None => {}
    }
    let features = edgeroute::inspect::inspect(router.policy(), &request);
    let mut signals = router.signals(&request, &features);
    if args.offline {
        signals.network = Network::Offline;
    }
    signals.budget_left_usd = match args.budget_left {
        Some(left) => Some(left),
        None => budget_left(router.policy(), db.as_ref()),
    };
    let decision = router.explain_with(&request, &signals);
    // The rules tried first, each with the condition that did not hold.
    let passed_over: Vec<(&str, String)> =
        edgeroute::policy::passed_over(router.policy(), &features, &signals)
            .into_iter()
            .map(|(rule, c)| (rule, router.policy().describe(c)))
            .collect();
    // The record stage's decision: whether a cloud answer would be kept for distillation.
    let teacher = edgeroute::distill::TeacherVerdict::of(
        &router.policy().distill,
        &decision.plan,
        !features.pii_spans.is_empty(),
        signals.cloud_available && signals.network == Network::Online,
    );
    if args.json {
        let mut teacher_json = serde_json::to_value(teacher).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut teacher_json {
            map.insert("message".into(), Value::String(teacher.to_string()));
        }
        let out = json!({
            "route": decision.route(),
            "rule": decision.rule,
            "plan": decision.plan,
            "reasons": reasons_json(&decision),
            "passed_over": passed_over
                .iter()
                .map(|(rule, c)| json!({"rule": rule, "did_not_hold": c}))
                .collect::<Vec<_>>(),
            "signals": signals,
            "prompt_tokens": features.prompt_tokens,
            "teacher_log": teacher_json,
        });
        out!("{out}");
    } else {
        out!("route: {}", decision.route());
        out!("rule:  {}", decision.rule);
        // The plan with every option the executor will use (pin, redact, thresholds, delays).
        let plan = serde_json::to_string(&decision.plan).unwrap_or_default();
        out!("plan:  {plan}");
        for r in &decision.reasons {
            out!("  - {r}");
        }
        for (rule, c) in &passed_over {
            out!("passed over: rule `{rule}`: {c} does not hold");
        }
        if router.policy().distill.collect {
            out!("teacher log: {teacher}");
        }
        // Every input a rule can test, so that a rule that did not fire can be checked against
        // what it saw (a tag spelled differently, a task not given).
        let mut kinds: Vec<&str> = features
            .pii_spans
            .iter()
            .map(|(_, s)| s.kind.as_str())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let listed = |xs: &[&str]| {
            if xs.is_empty() {
                "none".to_string()
            } else {
                xs.join(", ")
            }
        };
        out!(
            "request: tags [{}], task {}, deadline {}, PII {} ({} span(s))",
            listed(&features.tags.iter().map(String::as_str).collect::<Vec<_>>()),
            features.task.as_deref().unwrap_or("none"),
            features
                .deadline_ms
                .map_or_else(|| "none".to_string(), |ms| format!("{ms} ms")),
            listed(&kinds),
            features.pii_spans.len(),
        );
        out!(
            "inputs: ~{} prompt tokens, network {}, local {}, cloud {}{}",
            features.prompt_tokens,
            signals.network,
            if signals.local_available {
                "available"
            } else {
                "unavailable"
            },
            if signals.cloud_available {
                signals.cloud_health.to_string()
            } else if router.policy().cloud.is_some() {
                "unavailable".into()
            } else {
                "not configured".into()
            },
            signals
                .budget_left_usd
                .map(|b| {
                    let call = signals
                        .cloud_call_usd
                        .map(|c| format!(" (a cloud call reserves ${c})"))
                        .unwrap_or_default();
                    format!(", budget left ${b}{call}")
                })
                .unwrap_or_default()
        );
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
        let source = |answers: u64| match answers {
            0 => "the policy's [latency] model".to_string(),
            1 => "measured: 1 answer".to_string(),
            n => format!("measured: {n} answers"),
        };
        let l = &signals.latency;
        out!(
            "latency estimates: local {} (first token {}; {}), cloud {} (first token {}; {})",
            ms(l.local_ms),
            ms(l.local_first_token_ms),
            source(l.local_observations),
            ms(l.cloud_ms),
            ms(l.cloud_first_token_ms),
            source(l.cloud_observations),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_check(files: &[PathBuf]) -> CmdResult {
    let mut ok = true;
    for f in files {
        match compile_file(f) {
            Ok(p) => {
                for w in &p.warnings {
                    note!("{}", w.as_warning());
                }
                let warnings = match p.warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".into(),
                    n => format!(", {n} warnings"),
                };
                out!(
                    "ok: {} ({} rules, {} tests{warnings})",
                    f.display(),
                    p.rules.len(),
                    p.tests.len()
                );
            }
            Err(diags) => {
                ok = false;
                note!("{}", render_diagnostics(&diags));
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn policy_test(files: &[PathBuf]) -> CmdResult {
    let (mut passed, mut failed) = (0usize, 0usize);
    for f in files {
        let policy = match compile_file(f) {
            Ok(p) => p,
            Err(diags) => {
                note!("{}", render_diagnostics(&diags));
                failed += 1;
                continue;
            }
        };
        out!("{}", f.display());
        if policy.tests.is_empty() {
            out!("  (no [[test]] cases)");
        }
        // Names in one column, as wide as the longest (they are written by hand and vary).
        let width = policy
            .tests
            .iter()
            .map(|t| t.name.chars().count())
            .max()
            .unwrap_or(0);
        for o in run_cases(&policy) {
            let expected = match &o.case.expect_rule {
                Some(r) => format!("{} / {r}", o.case.expect_route),
                None => o.case.expect_route.clone(),
            };
            let got = format!("{} / {}", o.decision.route(), o.decision.rule);
            if o.passed {
                passed += 1;
                out!("  PASS  {:<width$}  {got}", o.case.name);
            } else {
                failed += 1;
                out!(
                    "  FAIL  {:<width$}  expected {expected}, got {got} ({})",
                    o.case.name,
                    o.case.location
                );
                for r in &o.decision.reasons {
                    out!("          - {r}");
                }
            }
        }
    }
    out!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn pii_scan(text: Option<&str>, policy: &PolicyArg, json: bool) -> CmdResult {
    let policy = load_policy(policy)?;
    let text = arg_or_stdin(text.unwrap_or("-"), "document", None)?;
    let spans = policy.scanner.scan(&text);
    if json {
        let spans: Vec<Value> = spans
            .iter()
            .map(|s| json!({"kind": s.kind, "start": s.start, "end": s.end, "confidence": s.confidence}))
            .collect();
        out!("{}", json!({ "spans": spans }));
    } else {
        for s in &spans {
            out!("{}\t{}\t{}", s.kind, s.start, s.end);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a home named by `--home` or `EDGEROUTE_HOME` that does not exist, before `ask` creates
/// its database and cache key there: a mistyped path would otherwise become a new, empty home
/// (and the answer would then fail for want of a model installed under the path meant). The
/// default home is created on first use.
fn refuse_missing_named_home(home: Option<&Path>) -> std::result::Result<(), Stop> {
    let named = home.is_some()
        || std::env::var_os(edgeroute::home::HOME_ENV).is_some_and(|v| !v.is_empty());
    let home = edgeroute::home::resolve(home);
    if !named || home.is_dir() {
        return Ok(());
    }
    // The same set-up command the model and runtime errors name (shell-quoted as needed).
    let setup = edgeroute::home::setup_command_for(&edgeroute::home::model_dir(
        &home,
        edgeroute::home::DEFAULT_MODEL,
    ));
    Err(Stop::Usage(format!(
        "no edgeroute home at {} (nothing has run there yet); check --home / EDGEROUTE_HOME, \
         or install there with `{setup}`, or create the directory to start an empty home",
        home.display(),
    )))
}

/// The database of a home that has been used already, for `stats`, `budget` and `cache`. A home
/// with no database is refused rather than created: these commands only look at what earlier
/// requests recorded, and a new, empty home under a mistyped `--home` / `EDGEROUTE_HOME` would
/// only show zeros.
fn open_existing_db(
    home: Option<&Path>,
) -> std::result::Result<(PathBuf, edgeroute::cache::Database), Stop> {
    let home = edgeroute::home::resolve(home);
    let db_dir = edgeroute::home::db_dir(&home);
    if !db_dir.is_dir() {
        let why = if home.is_dir() {
            format!(
                "nothing has run with the edgeroute home at {} yet (it has no {})",
                home.display(),
                db_dir.display()
            )
        } else {
            format!(
                "no edgeroute home at {} (nothing has run there yet)",
                home.display()
            )
        };
        return Err(Stop::Usage(format!(
            "{why}; check --home / EDGEROUTE_HOME, or answer a prompt there first (`edgeroute ask`)"
        )));
    }
    let db = edgeroute::cache::Database::open(&db_dir)?;
    Ok((home, db))
}

/// The key in `key_file`, or a throwaway one (none is written) when there is no such file.
fn key_in(key_file: &Path) -> edgeroute::Result<edgeroute::cache::EncryptionKey> {
    if key_file.exists() {
        edgeroute::cache::EncryptionKey::load_or_create(key_file)
    } else {
        edgeroute::cache::EncryptionKey::generate()
    }
}

fn cache(cmd: CacheCommand, home: Option<&Path>) -> CmdResult {
    let policy = match &cmd {
        CacheCommand::Stats { policy, .. } | CacheCommand::Clear { policy } => load_policy(policy)?,
    };
    let (home, db) = open_existing_db(home)?;
    // Counting and clearing never decrypt: without a key file (an app that passes its own key)
    // a throwaway key serves, and none is written.
    let key_file = edgeroute::home::cache_key_file(&home);
    let key = key_in(&key_file)?;
    let cache = edgeroute::cache::SledCache::open(&db, key, policy.cache.clone())?;
    match cmd {
        CacheCommand::Stats { json, .. } => {
            let s = cache.stats()?;
            if json {
                out!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                out!("entries:   {}", s.entries);
                // The limit is the given policy's (the database does not record the one the
                // app runs with): say whose.
                out!(
                    "bytes:     {} of {} ([cache].max_bytes in {})",
                    s.bytes,
                    s.max_bytes,
                    policy.file.display()
                );
                out!("hits:      {}", s.hits);
                out!("misses:    {}", s.misses);
                out!("hit rate:  {:.1}%", s.hit_rate * 100.0);
                out!("evictions: {}", s.evictions);
                out!("expired:   {}", s.expired);
                out!("rejected:  {}", s.rejected);
            }
        }
        CacheCommand::Clear { .. } => {
            let before = cache.stats()?.entries;
            cache.clear()?;
            cache.flush()?;
            // The database's log keeps the removed records' bytes for a while: a new key makes
            // them unreadable (answers are only ever read with the current key).
            if key_file.exists() {
                edgeroute::cache::EncryptionKey::replace_file(&key_file)?;
            }
            out!("removed {before} cached answer(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn distill(cmd: DistillCommand, home: Option<&Path>) -> CmdResult {
    let config = match &cmd {
        DistillCommand::Export { policy, .. } | DistillCommand::Stats { policy, .. } => {
            load_policy(policy)?.distill
        }
        DistillCommand::Clear => Default::default(),
    };
    let (home, db) = open_existing_db(home)?;
    // Without a key file nothing was ever kept: a throwaway key serves, and none is written.
    let key_file = edgeroute::home::teacher_key_file(&home);
    let key = key_in(&key_file)?;
    let log = edgeroute::distill::TeacherLog::open(&db, key, config)?;
    const NOTHING_KEPT: &str = "no samples kept: the router keeps whole cloud answers when the \
policy sets `collect = true` under [distill]";
    match cmd {
        DistillCommand::Export { out, metadata, .. } => {
            let summary = match &out {
                None => {
                    let mut stdout = std::io::stdout().lock();
                    let summary = log.export_jsonl(&mut stdout, metadata);
                    stdout.flush().map_err(Stop::writing_stdout)?;
                    summary.map_err(|e| match e {
                        edgeroute::Error::Io { source, .. }
                            if source.kind() == ErrorKind::BrokenPipe =>
                        {
                            Stop::StdoutClosed
                        }
                        e => Stop::Failed(e),
                    })?
                }
                Some(path) => export_to_file(&log, path, metadata)?,
            };
            if summary.unreadable > 0 {
                note!(
                    "edgeroute: {} sample(s) left out: sealed under another key, or damaged",
                    summary.unreadable
                );
            }
            match (&out, summary.written) {
                (_, 0) if summary.unreadable == 0 => note!("edgeroute: {NOTHING_KEPT}"),
                (Some(path), n) => note!("exported {n} sample(s) to {}", path.display()),
                (None, _) => {}
            }
        }
        DistillCommand::Stats { json, .. } => {
            let s = log.stats();
            if json {
                let value = json!({"samples": s.samples, "bytes": s.bytes});
                out!("{value}");
            } else {
                out!("samples: {}", s.samples);
                out!("bytes:   {}", s.bytes);
                if s.samples == 0 {
                    note!("edgeroute: {NOTHING_KEPT}");
                }
            }
        }
        DistillCommand::Clear => {
            let n = log.clear()?;
            log.flush()?;
            // The database's log keeps the removed records' bytes for a while: a new key makes
            // them unreadable.
            if key_file.exists() {
                edgeroute::cache::EncryptionKey::replace_file(&key_file)?;
            }
            out!("removed {n} sample(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exports to `path` through a temporary file beside it, renamed over `path` once complete: a
/// failed export leaves an existing file as it was.
fn export_to_file(
    log: &edgeroute::distill::TeacherLog,
    path: &Path,
    metadata: bool,
) -> std::result::Result<edgeroute::distill::ExportSummary, Stop> {
    let io = |e| {
        Stop::Failed(edgeroute::Error::io(
            format!("writing {}", path.display()),
            e,
        ))
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(name) = name else {
        return Err(Stop::Usage(format!(
            "--out {} names no file; give a file name",
            path.display()
        )));
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_file_name(format!(".{name}.partial-{}-{nanos}", std::process::id()));
    // The export is the samples in clear: readable by its owner only, in a new file.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&tmp).map_err(io)?;
    let write = || -> std::result::Result<_, Stop> {
        let mut w = std::io::BufWriter::new(file);
        let summary = log.export_jsonl(&mut w, metadata).map_err(|e| match e {
            edgeroute::Error::Io { source, .. } => io(source),
            e => Stop::Failed(e),
        })?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(summary)
    };
    let summary = write();
    if summary.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    summary
}

/// The home's database, if it has one (`None`: nothing has run there yet; none is created).
fn home_database(home: Option<&Path>) -> Option<edgeroute::Result<edgeroute::cache::Database>> {
    let db_dir = edgeroute::home::db_dir(&edgeroute::home::resolve(home));
    db_dir
        .exists()
        .then(|| edgeroute::cache::Database::open(&db_dir))
}

/// What the home's ledger (`db`, see [`home_database`]) says is left of the policy's budget
/// (`None` without limits). A home without a database has spent nothing; a database another
/// process holds is left out (`explain` reports it). Nothing is spent or reserved.
fn budget_left(
    policy: &CompiledPolicy,
    db: Option<&edgeroute::Result<edgeroute::cache::Database>>,
) -> Option<rust_decimal::Decimal> {
    let limits = policy.budget.limits;
    let untouched = [limits.daily_usd, limits.monthly_usd]
        .into_iter()
        .flatten()
        .min();
    untouched?;
    let Some(db) = db else {
        return untouched;
    };
    // A database that cannot be opened was reported with the latencies.
    let status = edgeroute::ledger::SledLedger::open(db.as_ref().ok()?, limits)
        .and_then(|ledger| ledger.status_at(std::time::SystemTime::now()));
    match status {
        Ok(s) => s.left,
        Err(e) => {
            note!("note: budget left unknown ({e}); pass --budget-left to decide with a value");
            None
        }
    }
}

fn budget(policy: &PolicyArg, json: bool, home: Option<&Path>) -> CmdResult {
    let policy = load_policy(policy)?;
    let (_, db) = open_existing_db(home)?;
    let ledger = edgeroute::ledger::SledLedger::open(&db, policy.budget.limits)?;
    let s = ledger.status_at(std::time::SystemTime::now())?;
    if json {
        out!("{}", serde_json::to_string(&s).unwrap_or_default());
    } else {
        let limit = |l: Option<rust_decimal::Decimal>| {
            l.map(|d| format!("${d}"))
                .unwrap_or_else(|| "no limit".into())
        };
        out!(
            "{:<22} ${} of {}",
            format!("today ({}):", s.day),
            s.spent_today,
            limit(s.daily_limit)
        );
        out!(
            "{:<22} ${} of {}",
            format!("month ({}):", s.month),
            s.spent_month,
            limit(s.monthly_limit)
        );
        if let Some(left) = s.left {
            out!("{:<22} ${left}", "left:");
        }
        if s.open_reservations > 0 {
            out!(
                "{:<22} {} (counted at their estimate)",
                "open reservations:",
                s.open_reservations
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(json: bool, home: Option<&Path>) -> CmdResult {
    let (_, db) = open_existing_db(home)?;
    let s = edgeroute::stats::PersistedStats::open(&db)?.load();
    let speeds = edgeroute::stats::remembered_latency(&db)?;
    if json {
        let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert(
                "remembered_latency".into(),
                serde_json::to_value(&speeds).unwrap_or(Value::Null),
            );
        }
        out!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "requests:          {} answered, {} failed",
        s.requests,
        s.failures
    );
    out!("  local:           {}", s.local);
    out!("  cloud:           {}", s.cloud);
    out!("  cache:           {}", s.cache_hits);
    out!("local share:       {:.1}%", s.local_share * 100.0);
    out!("cache hit rate:    {:.1}%", s.cache_hit_rate * 100.0);
    out!(
        "escalations:       {} ({:.1}%)",
        s.escalations,
        s.escalation_rate * 100.0
    );
    out!("cloud spend:       ${}", s.cloud_spend_usd);
    out!(
        "est. savings:      ${} (vs sending everything to the cloud)",
        s.estimated_savings_usd
    );
    for (name, l) in [
        ("local latency:    ", s.local_latency),
        ("cloud latency:    ", s.cloud_latency),
        ("cache latency:    ", s.cache_latency),
        ("local first token:", s.local_first_token),
        ("cloud first token:", s.cloud_first_token),
    ] {
        if l.samples > 0 {
            out!(
                "{name} p50 {:.1} ms, p95 {:.1} ms ({} samples)",
                l.p50_ms,
                l.p95_ms,
                l.samples
            );
        }
    }
    if !speeds.is_empty() {
        out!("latency estimates remembered (a router with the same model build, threads and spinning, or cloud endpoint, starts from them):");
    }
    let figure = |v: Option<f64>, unit: &str| v.map(|v| format!("{v:.1} {unit}"));
    for r in &speeds {
        let figures: Vec<String> = [
            figure(r.ms_per_token, "ms/token"),
            figure(r.prefill_ms_per_token, "ms/prompt token"),
            figure(r.prompt_overhead_tokens, "tokens added to a prompt"),
            figure(r.answer_ms, "ms/answer"),
            figure(r.first_token_ms, "ms to first token"),
        ]
        .into_iter()
        .flatten()
        .collect();
        out!(
            "  {} {}: {}; {} answer(s), updated {} ago{}",
            r.tier,
            r.identity,
            figures.join(", "),
            r.observations,
            age(r.age_secs),
            if r.in_use {
                ""
            } else {
                " (not used: older than a week)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A duration in seconds, in its largest whole unit (`42 s`, `3 min`, `5 h`, `2 days`).
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}
