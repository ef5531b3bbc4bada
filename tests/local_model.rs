//! The local tier on the real model and runtime (installed by `python3 scripts/setup.py`).
//! These tests fail, with the set-up command in the message, when either is missing.
#![cfg(feature = "onnx")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edgeroute::backend::local::{LocalBackend, LocalBackendBuilder, LocalOutput};
use edgeroute::backend::{Backend, BackendCall, FinishReason, StreamEvent};
use edgeroute::request::{GenerationParams, Message};
use futures::StreamExt;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model_sha256: String,
    max_new_tokens: u32,
    repetition_penalty: f32,
    threads: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    text: String,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/local/reference_greedy.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A builder with the reference's thread count (the tests change what else they need).
fn builder() -> LocalBackendBuilder {
    LocalBackend::builder().threads(reference().threads)
}

/// Generates to the end (no cancellation).
fn generate(
    b: &LocalBackend,
    messages: &[Message],
    params: &GenerationParams,
) -> edgeroute::Result<LocalOutput> {
    b.generate_blocking(messages, params, None, |_| ControlFlow::Continue(()))
}

fn build(pool_size: usize) -> LocalBackend {
    match builder().pool_size(pool_size).commit() {
        Ok(b) => b,
        Err(e) => panic!("local tier not installed or broken: {e}"),
    }
}

/// One backend shared by the tests of this binary (the runtime is per process anyway).
fn backend() -> &'static LocalBackend {
    static B: OnceLock<LocalBackend> = OnceLock::new();
    B.get_or_init(|| build(2))
}

fn greedy(max: u32) -> GenerationParams {
    GenerationParams {
        max_tokens: Some(max),
        ..Default::default()
    }
}

fn call(prompt: &str, params: GenerationParams) -> BackendCall {
    BackendCall {
        messages: vec![Message::user(prompt)],
        params,
        deadline: None,
    }
}

#[test]
fn greedy_matches_python_onnxruntime_token_for_token() {
    let r = reference();
    assert!(r.cases.len() >= 5);
    // The reference was made with the default penalty, so this checks the default path.
    assert_eq!(
        r.repetition_penalty,
        edgeroute::request::DEFAULT_REPETITION_PENALTY
    );
    let b = backend();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.model_dir().join("edgeroute-model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["files"]["model.onnx.data"].as_str(),
        Some(r.model_sha256.as_str()),
        "the installed model is not the one the reference was made with: rerun `python3 scripts/setup.py` \
         or regenerate the reference with scripts/reference_greedy.py"
    );
    for case in &r.cases {
        let messages = [Message::user(case.prompt.clone())];
        assert_eq!(
            b.encode_prompt(&messages).unwrap(),
            case.prompt_ids,
            "prompt ids for {:?}",
            case.prompt
        );
        let out = generate(b, &messages, &greedy(r.max_new_tokens)).unwrap();
        assert_eq!(longest_run(&out.token_ids), longest_run(&case.output_ids));
        assert_eq!(
            out.token_ids, case.output_ids,
            "generated ids for {:?}",
            case.prompt
        );
        assert_eq!(out.text, case.text);
        let expected_finish = if case.output_ids.len() as u32 == r.max_new_tokens {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        assert_eq!(out.finish, expected_finish);
        assert_eq!(out.logprobs.len(), out.token_ids.len());
        assert!(out.logprobs.iter().all(|lp| lp.is_finite() && *lp <= 0.0));
    }
}

#[test]
fn the_prompt_cache_reuses_a_shared_start_with_bit_identical_answers() {
    let cached = builder().pool_size(1).commit().unwrap();
    let fresh = builder()
        .pool_size(1)
        .prompt_cache_tokens(0)
        .commit()
        .unwrap();
    let france = [Message::user("What is the capital of France?")];
    let colours = [Message::user("Name three primary colors.")];
    let both = |messages: &[Message]| {
        let c = generate(&cached, messages, &greedy(24)).unwrap();
        let f = generate(&fresh, messages, &greedy(24)).unwrap();
        assert_eq!(c.token_ids, f.token_ids, "{messages:?}");
        let bits = |o: &LocalOutput| o.logprobs.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&c), bits(&f), "{messages:?}");
        assert_eq!(f.reused_prompt_tokens, 0);
        c
    };

    let first = both(&france);
    assert_eq!(first.reused_prompt_tokens, 0);
    // Another question: the system prompt and the user header come from the cache.
    let other = both(&colours);
    let shared = first
        .prompt_ids
        .iter()
        .zip(&other.prompt_ids)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared >= 10, "{shared}");
    assert_eq!(other.reused_prompt_tokens, shared);
    // The same question again: all but the last two prompt tokens (a run of one token would
    // take the decode kernels, whose results differ in the last bits).
    let again = both(&colours);
    assert_eq!(again.reused_prompt_tokens, again.prompt_ids.len() - 2);
    // The next turn of the conversation reuses the whole previous prompt.
    let turn = both(&[
        colours[0].clone(),
        Message::assistant(again.text.clone()),
        Message::user("Which one is the warmest?"),
    ]);
    assert_eq!(turn.reused_prompt_tokens, again.prompt_ids.len());

    // A cap keeps only the first tokens.
    let capped = builder()
        .pool_size(1)
        .prompt_cache_tokens(8)
        .commit()
        .unwrap();
    generate(&capped, &france, &greedy(4)).unwrap();
    let out = generate(&capped, &colours, &greedy(4)).unwrap();
    assert_eq!(out.reused_prompt_tokens, 8);
}

/// The longest run of one repeated token.
fn longest_run(ids: &[u32]) -> usize {
    ids.chunk_by(|a, b| a == b)
        .map(<[u32]>::len)
        .max()
        .unwrap_or(0)
}

/// Pure greedy decoding (`repetition_penalty = 1`) of this prompt falls into "1111…"; the
/// default penalty breaks the loop (the reference test checks the default output token for
/// token against Python).
#[test]
fn the_repetition_penalty_breaks_a_greedy_loop_and_one_turns_it_off() {
    let prompt = "Give me three tips for learning to cook at home.";
    let case = reference()
        .cases
        .into_iter()
        .find(|c| c.prompt == prompt)
        .expect("the looping prompt is in the reference");
    let messages = [Message::user(prompt)];
    let pure = GenerationParams {
        repetition_penalty: Some(1.0),
        ..greedy(48)
    };
    let out = generate(backend(), &messages, &pure).unwrap();
    assert!(longest_run(&out.token_ids) >= 30, "{:?}", out.text);
    assert!(out.text.contains("1111111111"), "{:?}", out.text);
    assert_ne!(out.token_ids, case.output_ids);
    assert!(longest_run(&case.output_ids) < 4, "{:?}", case.text);
    // The default is part of the backend's revision (so of every cache key): a backend with
    // another default does not share cached answers with this one.
    let pure_backend = builder()
        .repetition_penalty(1.0)
        .huge_pages(false)
        .commit()
        .unwrap();
    let (a, b) = (
        backend().revision().unwrap(),
        pure_backend.revision().unwrap(),
    );
    assert!(a.ends_with("-rp1.1") && b.ends_with("-rp1"), "{a} / {b}");
    // The decoding rules' version is in it too: answers decoded by older rules are not served.
    assert!(a.contains("+d2-"), "{a}");
    assert_eq!(a.split('+').next(), b.split('+').next(), "same weights");
    // Out of range is a clear error, not a silent clamp.
    let bad = GenerationParams {
        repetition_penalty: Some(0.5),
        ..greedy(4)
    };
    let err = generate(backend(), &messages, &bad).unwrap_err();
    assert!(err.to_string().contains("repetition_penalty"), "{err}");
}

#[test]
fn the_model_knows_capitals() {
    let b = backend();
    let out = generate(
        b,
        &[Message::user("What is the capital of Germany?")],
        &greedy(32),
    )
    .unwrap();
    assert!(out.text.contains("Berlin"), "{}", out.text);
    assert_eq!(out.finish, FinishReason::Stop);
    let c = out.confidence.unwrap();
    assert_eq!(c.tokens as usize, out.token_ids.len());
    assert!(c.min <= c.p10 && c.p10 <= c.mean && c.mean <= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_yields_the_same_text_as_generate() {
    let b = backend();
    let prompt = "Write a haiku about the sea.";
    let whole = b.generate(call(prompt, greedy(40))).await.unwrap();
    let mut stream = b.stream(call(prompt, greedy(40))).await.unwrap();
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            StreamEvent::Delta(d) => {
                assert!(done.is_none(), "delta after Done");
                deltas.push(d)
            }
            StreamEvent::Done(g) => done = Some(g),
        }
    }
    let done = done.expect("stream ended without Done");
    assert!(
        deltas.len() > 5,
        "expected token-by-token deltas, got {}",
        deltas.len()
    );
    assert_eq!(deltas.concat(), whole.text);
    assert_eq!(done.text, whole.text);
    assert_eq!(done.usage, whole.usage);
    assert_eq!(
        done.usage.input_tokens as usize,
        b.encode_prompt(&[Message::user(prompt)]).unwrap().len()
    );
    assert!(done.usage.output_tokens > 0 && done.usage.output_tokens <= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_deltas_stay_valid_for_multibyte_text() {
    let b = backend();
    let prompt = "Write the word 'café' and a smiley emoji, then the Japanese word for thank you.";
    let mut stream = b.stream(call(prompt, greedy(40))).await.unwrap();
    let mut text = String::new();
    let mut final_text = None;
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            StreamEvent::Delta(d) => text.push_str(&d),
            StreamEvent::Done(g) => final_text = Some(g.text),
        }
    }
    // Deltas are `String`s (valid by construction); their concatenation is the lossless reply.
    assert_eq!(Some(&text), final_text.as_ref());
    // The reply does have characters of more than one byte, none of them lost or replaced:
    // it is what the tokenizer itself decodes from the generated ids.
    assert!(text.chars().any(|c| c.len_utf8() > 1), "{text:?}");
    assert!(!text.contains('\u{FFFD}'), "{text:?}");
    let out = generate(b, &[Message::user(prompt)], &greedy(40)).unwrap();
    assert_eq!(out.text, text);
    let tokenizer = tokenizers::Tokenizer::from_file(
        edgeroute::home::model_dir(
            &edgeroute::home::resolve(None),
            edgeroute::home::DEFAULT_MODEL,
        )
        .join("tokenizer.json"),
    )
    .unwrap();
    assert_eq!(tokenizer.decode(&out.token_ids, true).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible() {
    let b = backend();
    let params = |seed| GenerationParams {
        max_tokens: Some(24),
        temperature: Some(0.9),
        top_p: Some(0.95),
        seed: Some(seed),
        ..GenerationParams::default()
    };
    let p = "Tell me a fun fact about octopuses.";
    let a1 = b.generate(call(p, params(11))).await.unwrap().text;
    let a2 = b.generate(call(p, params(11))).await.unwrap().text;
    assert_eq!(a1, a2);
    let mut differs = false;
    for seed in 12..16 {
        differs |= b.generate(call(p, params(seed))).await.unwrap().text != a1;
    }
    assert!(differs, "different seeds never changed the sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_the_pool_and_stay_exact() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let r = reference();
    // Own backend with two sessions: its count of running generations is its own.
    let b = build(2);
    let (done, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let watcher = {
        let (b, done, peak) = (b.clone(), done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(b.active_generations(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let futs = r
        .cases
        .iter()
        .take(4)
        .map(|c| b.generate(call(&c.prompt, greedy(r.max_new_tokens))));
    let outs = futures::future::join_all(futs).await;
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    for (out, case) in outs.into_iter().zip(&r.cases) {
        assert_eq!(out.unwrap().text, case.text);
    }
    // Two ran at once, one per session; the others waited for theirs without starting.
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_stops_generation() {
    // Own backend: its counters are not shared with the other tests.
    let b = build(1);
    let mut stream = b
        .stream(call(
            "Write a long story about a dragon who learns to cook.",
            greedy(400),
        ))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, StreamEvent::Delta(_)));
    drop(stream);
    stops_generating(&b, 100, "the stream was dropped at its first delta").await;
}

/// Checks that `b`'s generation stops within 5 s, after fewer than `most` tokens, and stays
/// stopped (`after`: what should have stopped it).
async fn stops_generating(b: &LocalBackend, most: u64, after: &str) {
    let t0 = Instant::now();
    while b.active_generations() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "generation still running after {after}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped_at = b.tokens_generated();
    assert!(
        stopped_at < most,
        "generated {stopped_at} tokens after {after}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.tokens_generated(),
        stopped_at,
        "tokens kept coming after the generation ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_stops_generation_with_timeout() {
    // Own backend: its counters are not shared with the other tests.
    let b = build(1);
    let mut c = call("Write a long story about a dragon.", greedy(400));
    c.deadline = Some(Instant::now() + Duration::from_millis(150));
    let err = b.generate(c).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The generation itself stopped, well short of its 400 tokens, and stays stopped.
    stops_generating(&b, 200, "its 150 ms deadline").await;
}

/// Whether this machine can move memory to transparent huge pages on request: Linux >= 6.1
/// (MADV_COLLAPSE) with huge pages not switched off, for the system or for this process
/// (`prctl(PR_SET_THP_DISABLE)`, inherited from a parent, shows as `THP_enabled: 0`).
fn huge_pages_available() -> bool {
    let process_allows = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            !s.lines()
                .any(|l| l.replace(char::is_whitespace, "") == "THP_enabled:0")
        })
        .unwrap_or(true);
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    process_allows && matches!(enabled, Ok(e) if !e.contains("[never]")) && (major, minor) >= (6, 1)
}

#[test]
fn the_weights_move_to_huge_pages_without_changing_answers() {
    let open = |huge: bool| builder().huge_pages(huge).commit().unwrap();
    let off = open(false);
    let on = open(true);
    let started = Instant::now();
    while !on.huge_pages_settled() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the collapse never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if huge_pages_available() {
        // The default model's packed weights are ~150 MiB; most of it must have moved.
        assert!(
            on.huge_page_bytes() >= 64 << 20,
            "only {} MiB on huge pages",
            on.huge_page_bytes() >> 20
        );
    } else {
        eprintln!("no transparent huge pages on request here: only the answers are compared");
    }
    let messages = [Message::user("Name three primary colors.")];
    let run = |b: &LocalBackend| generate(b, &messages, &greedy(24)).unwrap();
    let (a, b) = (run(&off), run(&on));
    assert_eq!(a.token_ids, b.token_ids);
    assert_eq!(a.logprobs, b.logprobs);
    eprintln!("{} MiB on huge pages", on.huge_page_bytes() >> 20);
}
