//! The `edgeroute` binary, run as a user would run it.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgeroute"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("EDGEROUTE_POLICY");
    c.env_remove("EDGEROUTE_CLOUD_URL");
    c.env_remove("OPENAI_API_KEY");
    c.env_remove("ANTHROPIC_API_KEY");
    c.env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// A home of this test process's own with a stand-in for the local model (its manifest): the
/// commands that only read the home (`explain`) see the model installed, and no budget spent,
/// whatever the machine's default home holds.
fn stub_home() -> &'static str {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let home = HOME.get_or_init(|| {
        let home = tempfile::tempdir().unwrap();
        let model_dir = edgeroute::home::model_dir(home.path(), edgeroute::home::DEFAULT_MODEL);
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join("edgeroute-model.json"), "{}").unwrap();
        home
    });
    home.path().to_str().unwrap()
}

/// Runs the command in [`stub_home`].
fn run_in_stub_home(args: &[&str]) -> Output {
    bin()
        .args(["--home", stub_home()])
        .args(args)
        .output()
        .unwrap()
}

/// The CLI with `args`, started with its standard streams piped.
fn spawn_piped(args: &[&str]) -> std::process::Child {
    bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = spawn_piped(args);
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policies/invalid")
        .join(name)
}

#[test]
fn policy_check_accepts_shipped_policies() {
    let o = run(&[
        "policy",
        "check",
        "policies/default.toml",
        "policies/privacy-first.toml",
        "policies/cost-saver.toml",
        "policies/latency-first.toml",
        "policies/offline-only.toml",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("ok: ").count(), 5);
}

/// A valid policy with a rule that does not do what it seems passes, and says why it might not
/// be what was meant.
#[test]
fn policy_check_prints_warnings_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.toml");
    std::fs::write(
        &f,
        "[[rule]]\nname = \"pii-stays-local\"\nroute = \"local\"\n[rule.when]\npii = true\n",
    )
    .unwrap();
    let o = run(&["policy", "check", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("(1 rules, 0 tests, 1 warning)"),
        "{}",
        stdout(&o)
    );
    let expected = format!(
        "{}:3:9: warning: rule[0].route: rule `pii-stays-local`",
        f.display()
    );
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
}

#[test]
fn policy_check_rejects_invalid_with_location() {
    let f = fixture("misspelled_condition.toml");
    let o = run(&[
        "policy",
        "check",
        "policies/default.toml",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let expected = format!(
        "{}:7:1: rule[0].when.pii_anyy: unknown field `pii_anyy`",
        f.display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("did you mean `pii_any`?"), "{err}");
}

#[test]
fn policy_check_missing_file() {
    let o = run(&["policy", "check", "no/such/policy.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no/such/policy.toml:1:1: cannot read policy file"));
}

#[test]
fn policy_test_prints_table_and_fails_on_mismatch() {
    let o = run(&["policy", "test", "policies/offline-only.toml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("PASS  live data refused"), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\ntags_any = [\"x\"]\n\
         [[test]]\nname = \"wrong\"\nprompt = \"q\"\ntags = [\"x\"]\nexpect_route = \"refuse\"\n",
    )
    .unwrap();
    let o = run(&["policy", "test", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("FAIL  wrong"), "{out}");
    assert!(out.contains("expected refuse, got local / r"), "{out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}

#[test]
fn explain_json_names_rule_and_reasons() {
    let o = run_in_stub_home(&[
        "explain",
        "--json",
        "--policy",
        "policies/default.toml",
        "Write to jane@example.com please",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["route"], "local");
    assert_eq!(v["rule"], "pii-stays-local");
    assert_eq!(v["reasons"][0]["kind"], "pii_found");
    assert_eq!(v["reasons"][0]["kinds"][0], "email");
    // Every input of the decision is shown, latency estimates included: with nothing measured
    // yet, the policy's [latency] model (local: prefill per prompt token + decode per output
    // token; first token: the prefill plus one decoded token).
    let policy =
        edgeroute::policy::compile_file(std::path::Path::new("policies/default.toml")).unwrap();
    let l = &policy.latency;
    let tokens = v["prompt_tokens"].as_u64().unwrap() as u32;
    let signals = &v["signals"];
    assert_eq!(signals["network"], "online");
    assert_eq!(
        signals["latency"]["local_first_token_ms"].as_u64(),
        Some(l.local_estimate_ms(tokens, 1))
    );
    assert_eq!(
        signals["latency"]["local_ms"].as_u64(),
        Some(l.local_estimate_ms(tokens, policy.local.max_new_tokens))
    );
    assert_eq!(signals["latency"]["cloud_ms"].as_u64(), Some(l.cloud_ms));
    assert!(signals["latency"]["local_first_token_p95_ms"].is_null());
    assert_eq!(signals["latency"]["local_observations"], 0);
}

/// `explain` shows the plan with its options: here latency-first's deadline rule, a hedge that
/// starts in the cloud, with the delay resolved from the cloud's first-token estimate (the
/// policy's `cloud_ms` until anything was measured).
#[cfg(all(feature = "cloud", feature = "onnx"))]
#[test]
fn explain_shows_the_plan_and_its_options() {
    // A home with the local model "installed" (its manifest is what availability checks), so
    // the decision does not depend on the machine's own home: without a local model the hedge
    // would go to the cloud up front.
    let home = tempfile::tempdir().unwrap();
    let model_dir = edgeroute::home::model_dir(home.path(), edgeroute::home::DEFAULT_MODEL);
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("edgeroute-model.json"), "{}").unwrap();
    let args = [
        "--home",
        home.path().to_str().unwrap(),
        "explain",
        "--policy",
        "policies/latency-first.toml",
        "--deadline-ms",
        "200",
        "Give me a synonym for happy.",
    ];
    let json = bin()
        .args([&args[..3], &["--json"], &args[3..]].concat())
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let policy =
        edgeroute::policy::compile_file(std::path::Path::new("policies/latency-first.toml"))
            .unwrap();
    assert_eq!(v["rule"], "local-too-slow", "{v}");
    assert_eq!(v["plan"]["route"], "hedge", "{v}");
    assert_eq!(v["plan"]["first"], "cloud", "{v}");
    assert_eq!(
        v["plan"]["after"].as_u64(),
        Some(policy.latency.cloud_ms),
        "{v}"
    );
    assert!(v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "hedge_delay"
            && r["basis"]
                .as_str()
                .unwrap_or("")
                .starts_with("cloud first-token estimate")));

    let text = bin()
        .args(args)
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    let out = stdout(&text);
    assert!(
        out.contains("plan:  {\"route\":\"hedge\",\"first\":\"cloud\""),
        "{out}"
    );
}

/// `explain` shows every input a rule can test — tags, task, deadline, PII kinds — so that a
/// rule that did not fire can be checked against what it saw.
#[test]
fn explain_lists_the_requests_inputs() {
    let o = run_in_stub_home(&[
        "explain",
        "--policy",
        "policies/default.toml",
        "-t",
        "Reasoning",
        "-t",
        "hard",
        "--task",
        "summarize",
        "--deadline-ms",
        "900",
        "mail ann@example.com or bob@example.org, call 415-555-0132",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("request: tags [Reasoning, hard], task summarize, deadline 900 ms, PII email, phone (3 span(s))"),
        "{out}"
    );
    let o = run_in_stub_home(&[
        "explain",
        "--policy",
        "policies/default.toml",
        "hello there",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("request: tags [none], task none, deadline none, PII none (0 span(s))"),
        "{out}"
    );
    // Each rule tried before the answer, with the condition that did not hold.
    assert!(
        out.contains("passed over: rule `hard-task-to-cloud`: tags_any = [\"hard\", \"reasoning\"] does not hold"),
        "{out}"
    );
    assert!(
        out.contains("passed over: rule `pii-stays-local`: pii = true does not hold"),
        "{out}"
    );
    let o = run_in_stub_home(&[
        "explain",
        "--json",
        "--policy",
        "policies/default.toml",
        "-t",
        "Hard",
        "hello there",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let passed: Vec<&str> = v["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rule"].as_str().unwrap())
        .collect();
    // Tags match exactly: `Hard` is not `hard`, and the explanation shows it.
    assert!(passed.contains(&"hard-task-to-cloud"), "{v}");
}

/// With `[distill] collect = true`, `explain` says whether a cloud answer would be kept for
/// distillation, and how; without it, it prints no such line (`--json` says `not_collecting`).
/// Needs the cloud tier to exist (with a key) for its answer to be able to come.
#[cfg(feature = "cloud")]
#[test]
fn explain_says_whether_the_teacher_log_would_keep_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    let explain = |collect: bool, json: bool| {
        std::fs::write(
            &policy,
            format!(
                "[cloud]\nmodel = \"m\"\n[distill]\ncollect = {collect}\n\
                 [[rule]]\nname = \"mail\"\nroute = \"cloud\"\nredact = true\n[rule.when]\npii_any = [\"email\"]\n\
                 [[rule]]\nname = \"phone\"\nroute = \"cloud\"\n[rule.when]\npii_any = [\"phone\"]\n"
            ),
        )
        .unwrap();
        let mut args = vec!["--home", stub_home(), "explain", "--policy"];
        args.push(policy.to_str().unwrap());
        if json {
            args.push("--json");
        }
        let run = |prompt: &str| {
            let o = bin()
                .args([&args[..], &[prompt]].concat())
                .env("OPENAI_API_KEY", "sk-test")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            stdout(&o)
        };
        (
            run("Write to ann@example.com"),
            run("Call me on +44 20 7946 0958 about the order"),
        )
    };
    let (mail, phone) = explain(true, false);
    assert!(
        mail.contains(
            "teacher log: a whole cloud answer, if one comes, is kept as the provider saw it: with placeholders"
        ),
        "{mail}"
    );
    assert!(
        phone.contains(
            "teacher log: not kept: the request goes to the cloud with personal data in clear"
        ),
        "{phone}"
    );
    let (mail, _) = explain(true, true);
    let v: serde_json::Value = serde_json::from_str(&mail).unwrap();
    assert_eq!(v["teacher_log"]["verdict"], "kept", "{v}");
    assert_eq!(v["teacher_log"]["redacted"], true, "{v}");
    let (mail, _) = explain(false, false);
    assert!(!mail.contains("teacher log"), "{mail}");
    let (mail, _) = explain(false, true);
    let v: serde_json::Value = serde_json::from_str(&mail).unwrap();
    assert_eq!(v["teacher_log"]["verdict"], "not_collecting", "{v}");
}

/// Needs the cloud tier to exist (with a key) for "offline" to be the reason.
#[cfg(feature = "cloud")]
#[test]
fn explain_offline_flag_and_tags() {
    let args = [
        "explain",
        "--json",
        "--policy",
        "policies/default.toml",
        "--tag",
        "hard",
    ];
    // No API key in the environment: the cloud tier is unavailable, so cloud rules turn local.
    let o = run(&[&args[..], &["Prove Fermat's little theorem"]].concat());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["rule"], "hard-task-to-cloud");
    assert_eq!(v["route"], "local");
    assert_eq!(v["reasons"][1]["kind"], "cloud_unavailable");
    // The reason says which variable has no key, not the policy's generic words.
    assert_eq!(
        v["reasons"][1]["why"], "no API key: set $OPENAI_API_KEY",
        "{v}"
    );

    let o = bin()
        .args([&args[..], &["--offline", "Prove Fermat's little theorem"]].concat())
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["route"], "local", "{v}");
    assert_eq!(v["reasons"][1]["kind"], "offline", "{v}");
}

#[test]
fn explain_reads_prompt_from_stdin_and_env_policy() {
    let o = {
        let mut child = bin()
            .args(["--home", stub_home(), "explain", "--json", "-"])
            .env("EDGEROUTE_POLICY", "policies/offline-only.toml")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"What is the capital of France?")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["rule"], "defaults");
    assert_eq!(v["route"], "local");
}

/// `explain --max-tokens` estimates the cloud call as `ask --max-tokens` reserves it: a budget
/// too small for a call of 1024 output tokens still has room for one of 10.
#[test]
fn explain_estimates_the_cloud_call_with_the_requests_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[cloud]\nmodel = \"m\"\ninput_usd_per_mtok = 1000\noutput_usd_per_mtok = 1000\n\
         [budget]\ndaily_usd = 1\n[defaults]\nroute = \"cloud\"\n",
    )
    .unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--json",
            "--policy",
            policy.to_str().unwrap(),
            "--budget-left",
            "0.5",
        ];
        args.extend(extra);
        args.push("What is the capital of France?");
        let o = run_in_stub_home(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let exhausted = |v: &serde_json::Value| {
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "budget_exhausted")
            .cloned()
    };
    let long = explain(&[]);
    let reason = exhausted(&long).expect("a 1024-token call does not fit $0.50");
    assert_eq!(reason["left_usd"], "0.5", "{reason}");
    let call: f64 = reason["call_usd"].as_str().unwrap().parse().unwrap();
    assert!(call > 1.0, "{reason}");
    let short = explain(&["--max-tokens", "10"]);
    assert!(exhausted(&short).is_none(), "{short}");
}

/// `explain` decides with the budget the home's ledger has left (creating nothing), or with
/// `--budget-left`.
#[test]
fn explain_reads_the_budget_left_from_the_home_ledger() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "--home",
            h,
            "explain",
            "--policy",
            "policies/cost-saver.toml",
        ];
        args.extend(extra);
        args.push("What is the capital of France?");
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let rule = |extra: &[&str]| {
        let out = explain(&[&["--json"], extra].concat());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["rule"].as_str().unwrap().to_string()
    };
    // Nothing spent yet: the whole daily limit ($1.00) is left, and no database is created.
    assert!(explain(&[]).contains("budget left $1.00"));
    assert_eq!(rule(&[]), "short-cascade");
    let db_dir = edgeroute::home::db_dir(home.path());
    assert!(!db_dir.exists());
    assert_eq!(rule(&["--budget-left", "0.05"]), "low-budget-local");

    // $0.95 of today's $1.00 spent: the low-budget rule fires.
    {
        let db = edgeroute::cache::open_db(&db_dir).unwrap();
        let limits = edgeroute::ledger::BudgetLimits {
            daily_usd: Some("1.00".parse().unwrap()),
            monthly_usd: Some("10.00".parse().unwrap()),
        };
        let ledger = edgeroute::ledger::SledLedger::open(&db, limits).unwrap();
        let spent: rust_decimal::Decimal = "0.95".parse().unwrap();
        let r = ledger
            .reserve_at(spent, std::time::SystemTime::now())
            .unwrap();
        ledger.settle_blocking(r, spent).unwrap();
    }
    assert!(explain(&[]).contains("budget left $0.05"));
    assert_eq!(rule(&[]), "low-budget-local");
}

#[test]
fn explain_rejects_empty_prompt_and_bad_policy() {
    let o = run_in_stub_home(&["explain", "   "]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("the prompt is empty"), "{}", stderr(&o));

    let f = fixture("unknown_route.toml");
    let o = run_in_stub_home(&["explain", "--policy", f.to_str().unwrap(), "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown route `clod` (did you mean `cloud`?)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pii_scan_json_uses_byte_offsets() {
    let text = "Grüße — write to jörg@example.com today";
    let o = run_stdin(&["pii", "scan", "--json"], text.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let span = &v["spans"][0];
    assert_eq!(span["kind"], "email");
    let (start, end) = (
        span["start"].as_u64().unwrap() as usize,
        span["end"].as_u64().unwrap() as usize,
    );
    assert!(
        text[start..end].ends_with("@example.com"),
        "{}",
        &text[start..end]
    );
}

#[test]
fn pii_scan_takes_the_text_as_an_argument_too() {
    let text = "my SSN is 219-09-9999, card 4111 1111 1111 1111";
    let o = run(&["pii", "scan", text]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let span = |line: &str| -> (String, String) {
        let f: Vec<&str> = line.split('\t').collect();
        let (start, end) = (
            f[1].parse::<usize>().unwrap(),
            f[2].parse::<usize>().unwrap(),
        );
        (f[0].to_string(), text[start..end].to_string())
    };
    assert_eq!(span(&lines[0]), ("us_ssn".into(), "219-09-9999".into()));
    assert_eq!(
        span(&lines[1]),
        ("credit_card".into(), "4111 1111 1111 1111".into())
    );
    // `-` still reads standard input.
    let o = run_stdin(&["pii", "scan", "-"], text.as_bytes());
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
}

#[test]
fn invalid_utf8_on_stdin_is_a_clear_error() {
    for args in [
        &["pii", "scan", "--json"][..],
        &["explain", "--policy", "policies/offline-only.toml", "-"],
    ] {
        let o = run_stdin(args, b"abc\xff\xfe");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("standard input is not valid UTF-8 (first bad byte at offset 3)"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

/// A prompt on standard input over the request size limit is refused without reading the rest:
/// the command ends with a clear error while the writer still has most of its data to send.
#[test]
fn a_prompt_on_stdin_over_the_size_limit_is_refused_unread() {
    let limit = edgeroute::router::DEFAULT_MAX_PROMPT_BYTES;
    let mut child = spawn_piped(&["explain", "--policy", "policies/offline-only.toml", "-"]);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0;
        while sent < 4 * limit && stdin.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let o = child.wait_with_output().unwrap();
    let sent = writer.join().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let want = format!("the prompt on standard input is over {limit} bytes (8 MiB)");
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    assert!(sent < 2 * limit, "the command read {sent} bytes");
}

#[test]
fn help_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["ask", "--help"],
        vec!["explain", "--help"],
        vec!["policy", "check", "--help"],
        vec!["policy", "test", "--help"],
        vec!["pii", "scan", "--help"],
        vec!["bench", "--help"],
    ] {
        let o = run(&args);
        assert!(o.status.success(), "{args:?}");
        assert!(stdout(&o).contains("Usage:"), "{args:?}");
    }
}

/// `ask` and `bench` in a home without the model name the set-up command.
#[test]
fn ask_without_a_model_names_the_setup_command() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let policy = ["--policy", "policies/offline-only.toml"];
    for command in [
        &["ask", "What is the capital of France?"][..],
        &["bench", "--runs", "1"],
    ] {
        let o = run(&[&["--home", h][..], &command[..1], &policy, &command[1..]].concat());
        assert_eq!(o.status.code(), Some(1), "{command:?}");
        let err = stderr(&o);
        assert!(
            err.contains("python3 scripts/setup.py"),
            "{command:?}: {err}"
        );
    }
}

/// `bench` measures the installed model in a fresh home: the warm-up, then the runs asked
/// for, each timed and cut at the calibration length, then remembered there: `explain`
/// decides with the figures; `stats` counts no request and the cache holds no answer. A run count out of range is a
/// usage error before anything runs.
#[cfg(feature = "onnx")]
#[test]
fn bench_measures_the_local_model_and_remembers_it_on_the_home() {
    let home = tempfile::tempdir().unwrap();
    let policy = installed_model_policy(home.path(), "p.toml", "");
    let (h, p) = (home.path().to_str().unwrap(), policy.to_str().unwrap());
    let o =
        run_with_installed_runtime(&["--home", h, "bench", "--json", "--runs", "2", "--policy", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("run 2/2: "), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        c["backend"].as_str().unwrap().starts_with("local/smollm2"),
        "{c}"
    );
    assert_eq!(c["remembered"], true);
    let runs = c["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{c}");
    for run in runs {
        let out = run["output_tokens"].as_u64().unwrap();
        assert!(
            (1..=u64::from(edgeroute::calibrate::CALIBRATION_TOKENS)).contains(&out),
            "{c}"
        );
        assert!(run["prompt_tokens"].as_u64().unwrap() > 5, "{c}");
        let first = run["first_token_ms"].as_f64().unwrap();
        assert!(
            first > 0.0 && first < run["total_ms"].as_f64().unwrap(),
            "{c}"
        );
    }
    assert!(c["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{c}");

    // The figures are the model's at these threads: another output limit or repetition
    // penalty uses them, other threads do not.
    for (name, local_settings, measured) in [
        ("p.toml", "", 2),
        (
            "limits.toml",
            "max_new_tokens = 64\nrepetition_penalty = 1.2\n",
            2,
        ),
        ("threads.toml", "threads = 1\n", 0),
    ] {
        let policy = installed_model_policy(home.path(), name, local_settings);
        let o = run(&[
            "--home",
            h,
            "explain",
            "--json",
            "--policy",
            policy.to_str().unwrap(),
            "Name a fruit.",
        ]);
        let e: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(
            e["signals"]["latency"]["local_observations"], measured,
            "{name}: {e}"
        );
    }
    let o = run(&["--home", h, "stats", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["requests"], 0, "{s}");
    // `stats` shows what was remembered, and for what.
    let remembered = &s["remembered_latency"][0];
    assert_eq!(remembered["tier"], "local", "{s}");
    assert_eq!(remembered["observations"], 2, "{s}");
    assert!(remembered["ms_per_token"].as_f64().unwrap() > 0.0, "{s}");
    assert!(
        remembered["identity"].as_str().unwrap().ends_with("+t2"),
        "{s}"
    );
    assert_eq!(remembered["identity"], c["backend"], "{s}");
    let text = stdout(&run(&["--home", h, "stats"]));
    assert!(text.contains("latency estimates remembered"), "{text}");
    assert!(text.contains("; 2 answer(s), updated "), "{text}");
    let o = run(&["--home", h, "cache", "stats", "--json", "--policy", p]);
    let cache: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(cache["entries"], 0, "{cache}");

    for bad in ["0", "101"] {
        let o = run(&["--home", h, "bench", "--runs", bad, "--policy", p]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("1..=100"), "{}", stderr(&o));
    }
}

/// Writes `<home>/<name>` (a policy whose `[local]` section points at the installed model and
/// goes on with `rest`) and returns its path.
#[cfg(feature = "onnx")]
fn installed_model_policy(home: &Path, name: &str, rest: &str) -> PathBuf {
    let installed = edgeroute::home::resolve(None);
    let model_dir = edgeroute::home::model_dir(&installed, edgeroute::home::DEFAULT_MODEL);
    let policy = home.join(name);
    std::fs::write(
        &policy,
        format!(
            "[local]\nmodel_dir = {:?}\n{rest}",
            model_dir.display().to_string()
        ),
    )
    .unwrap();
    policy
}

/// `ask --json` with `home` as the edgeroute home, the installed runtime and `policy`; `args`
/// end with the prompt. The parsed answer (the command must succeed).
#[cfg(feature = "onnx")]
fn ask_json(home: &Path, policy: &Path, args: &[&str]) -> serde_json::Value {
    let (h, p) = (home.to_str().unwrap(), policy.to_str().unwrap());
    let o = run_with_installed_runtime(
        &[&["--home", h, "ask", "--json", "--policy", p], args].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Runs the CLI with the runtime the set-up installed in the default home.
#[cfg(feature = "onnx")]
fn run_with_installed_runtime(args: &[&str]) -> Output {
    let installed = edgeroute::home::resolve(None);
    bin()
        .args(args)
        .env(
            "ORT_DYLIB_PATH",
            installed.join("runtime/libonnxruntime.so.1.32.0"),
        )
        .output()
        .unwrap()
}

/// The policy's `[local].repetition_penalty` and `ask --repetition-penalty` reach the local
/// model: at 1 (off) this prompt loops under greedy decoding, at the default it does not.
#[cfg(feature = "onnx")]
#[test]
fn the_policys_repetition_penalty_reaches_the_local_model() {
    let home = tempfile::tempdir().unwrap();
    let answer = |penalty_line: &str, flags: &[&str]| {
        let policy = installed_model_policy(
            home.path(),
            "p.toml",
            &format!(
                "max_new_tokens = 48\n{penalty_line}\n[cache]\nmode = \"off\"\n[defaults]\nroute = \"local\"\n"
            ),
        );
        let mut args = flags.to_vec();
        args.push("Give me three tips for learning to cook at home.");
        let v = ask_json(home.path(), &policy, &args);
        v["text"].as_str().unwrap().to_string()
    };
    let off = answer("repetition_penalty = 1.0", &[]);
    assert!(off.contains("1111111111"), "{off:?}");
    let default = answer("", &[]);
    assert!(!default.contains("1111"), "{default:?}");
    // The request's value (`--repetition-penalty`) overrides the policy's.
    let flag = answer("", &["--repetition-penalty", "1"]);
    assert_eq!(flag, off);
}

/// `ask` answers from the real local model, then from the cache; `stats`, `cache stats` and
/// `budget` report it. The model comes from the default home (installed by the set-up); the
/// database lives in a fresh home so parallel tests never share it.
#[cfg(feature = "onnx")]
#[test]
fn ask_answers_locally_then_from_cache_and_stats_add_up() {
    let home = tempfile::tempdir().unwrap();
    let policy = installed_model_policy(
        home.path(),
        "offline.toml",
        "max_new_tokens = 24\n[cache]\nmode = \"on\"\n[defaults]\nroute = \"local\"\npin = true\n",
    );
    let h = home.path().to_str().unwrap();
    let p = policy.to_str().unwrap();
    let ask = |prompt: &str| ask_json(home.path(), &policy, &[prompt]);
    let first = ask("What is the capital of France?");
    assert_eq!(first["route"], "local", "{first}");
    assert_eq!(first["rule"], "defaults");
    assert_eq!(first["cached"], false);
    assert!(
        !first["text"].as_str().unwrap().trim().is_empty(),
        "{first}"
    );
    assert!(first["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(first["confidence"]["mean"].as_f64().unwrap() < 0.0);
    let first_token = first["first_token_ms"].as_f64().unwrap();
    assert!(first_token > 0.0 && first_token < first["latency_ms"].as_f64().unwrap());
    assert_eq!(first["finish"], "stop", "{first}");
    let second = ask("What is the capital of France?");
    assert_eq!(second["route"], "cache");
    assert_eq!(second["text"], first["text"]);
    assert_eq!(second["finish"], "stop");

    // What the local answer measured is remembered on the home, and `explain` decides with it
    // (the cache hit measured nothing).
    let explain = |json: &[&str]| {
        run(&[
            &["--home", h, "explain", "--policy", p],
            json,
            &["Name a fruit."],
        ]
        .concat())
    };
    let e: serde_json::Value = serde_json::from_str(&stdout(&explain(&["--json"]))).unwrap();
    assert_eq!(e["signals"]["latency"]["local_observations"], 1, "{e}");
    let text = stdout(&explain(&[]));
    assert!(text.contains("; measured: 1 answer), cloud"), "{text}");

    let o = run(&["--home", h, "stats", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (
            s["requests"].as_u64(),
            s["local"].as_u64(),
            s["cache_hits"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["local_latency"]["samples"], 1);
    assert_eq!(s["local_first_token"]["samples"], 1);
    assert!(
        s["local_first_token"]["p50_ms"].as_f64().unwrap()
            <= s["local_latency"]["p50_ms"].as_f64().unwrap(),
        "{s}"
    );

    let o = run(&["--home", h, "cache", "stats", "--json", "--policy", p]);
    let c: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (c["entries"].as_u64(), c["hits"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );

    let o = run(&[
        "--home",
        h,
        "budget",
        "--json",
        "--policy",
        "policies/cost-saver.toml",
    ]);
    let b: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(b["spent_today"], "0");
    assert_eq!(b["daily_limit"], "1.00");

    let key_file = edgeroute::home::cache_key_file(home.path());
    let old_key = std::fs::read(&key_file).unwrap();
    let o = run(&["--home", h, "cache", "clear", "--policy", p]);
    assert!(
        stdout(&o).contains("removed 1 cached answer"),
        "{}",
        stdout(&o)
    );
    // The removed records' bytes may linger in the database's log: the key that could read
    // them is gone.
    let new_key = std::fs::read(&key_file).unwrap();
    assert_eq!(new_key.len(), old_key.len());
    assert_ne!(new_key, old_key);

    // An answer cut at the token limit says so.
    let short = ask_json(
        home.path(),
        &policy,
        &[
            "--max-tokens",
            "3",
            "--no-cache",
            "Write a poem about the sea.",
        ],
    );
    assert_eq!(short["finish"], "length", "{short}");
    assert_eq!(short["usage"]["output_tokens"], 3, "{short}");
}

/// A reader that stops early (`edgeroute pii scan < many.txt | head -1`) ends the command
/// quietly with exit status 0, like ripgrep: no "failed printing to stdout" panic (status 101).
/// The output (~20 bytes a span, 30,000 spans) is far larger than a pipe's buffer, so the
/// command is still writing when the pipe closes.
#[test]
fn a_closed_stdout_pipe_ends_pii_scan_quietly() {
    use std::io::Read;
    let document = "write to ann@example.com ".repeat(30_000);
    for args in [&["pii", "scan"][..], &["pii", "scan", "--json"]] {
        let mut child = spawn_piped(args);
        // The whole document is read before anything is written, so this cannot deadlock.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(document.as_bytes()).unwrap();
        drop(stdin);
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
}

/// The same for a command whose output is short: the pipe is closed before the command writes
/// anything (it is still waiting for its prompt on standard input).
#[test]
fn a_closed_stdout_pipe_ends_explain_quietly() {
    for args in [
        &["explain", "--policy", "policies/offline-only.toml", "-"][..],
        &[
            "explain",
            "--json",
            "--policy",
            "policies/offline-only.toml",
            "-",
        ],
    ] {
        let mut child = spawn_piped(args);
        drop(child.stdout.take());
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"What is the capital of France?").unwrap();
        drop(stdin);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
}

/// `dir/cloud.toml`: a `[cloud]` section for `fake` (its key in `EDGEROUTE_TEST_KEY`), then
/// `rest` (more `[cloud]` keys first, if any).
#[cfg(feature = "cloud")]
fn cloud_policy(dir: &Path, fake: &support::FakeProvider, rest: &str) -> PathBuf {
    let policy = dir.join("cloud.toml");
    std::fs::write(
        &policy,
        format!(
            "[cloud]\nmodel = \"fake-model\"\nbase_url = {:?}\napi_key_env = \"EDGEROUTE_TEST_KEY\"\n{rest}",
            fake.url()
        ),
    )
    .unwrap();
    policy
}

/// `ask` streaming an answer (here from a fake cloud provider on loopback) into a pipe that is
/// already closed stops and ends quietly too: it used to drop the stream's write errors, then
/// panic on its final newline.
#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_pipe_ends_a_streamed_ask_quietly() {
    let fake = support::FakeProvider::start().await;
    let home = tempfile::tempdir().unwrap();
    let policy = cloud_policy(
        home.path(),
        &fake,
        "[cache]\nmode = \"off\"\n[defaults]\nroute = \"cloud\"\n",
    );
    let args = [
        "--home",
        home.path().to_str().unwrap(),
        "ask",
        "--policy",
        policy.to_str().unwrap(),
        "-",
    ];
    let ask = |close_stdout: bool| {
        let mut child = bin()
            .args(args)
            .env("EDGEROUTE_TEST_KEY", support::TEST_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if close_stdout {
            drop(child.stdout.take());
        }
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"What is the capital of France?").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    // The set-up answers from the cloud when stdout is open.
    let o = ask(false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), support::DEFAULT_REPLY);
    assert!(stderr(&o).starts_with("[cloud"), "{}", stderr(&o));

    let o = ask(true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

/// Ctrl-C (or SIGTERM) during a streamed cloud answer stops `ask` with status 130, and the call's
/// budget reservation is settled at the prompt and what had arrived, not left open at the whole
/// estimate (the prompt plus 1,024 output tokens at $1,000 per million: over $1).
#[cfg(all(feature = "cloud", unix))]
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_ask_settles_its_cloud_reservation() {
    use std::io::Read;
    let fake = support::FakeProvider::start().await;
    fake.set_reply("one two three four five six seven eight nine ten eleven twelve");
    fake.set_behavior(support::Behavior::Trickle(
        std::time::Duration::from_millis(400),
    ));
    let home = tempfile::tempdir().unwrap();
    let policy = cloud_policy(
        home.path(),
        &fake,
        "input_usd_per_mtok = 1000\noutput_usd_per_mtok = 1000\n\
         [budget]\ndaily_usd = 100\n[defaults]\nroute = \"cloud\"\n",
    );
    let (h, p) = (home.path().to_str().unwrap(), policy.to_str().unwrap());
    for signal in ["-INT", "-TERM"] {
        let mut child = bin()
            .args(["--home", h, "ask", "--policy", p, "Count to twelve."])
            .env("EDGEROUTE_TEST_KEY", support::TEST_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Interrupt once the answer has started to arrive.
        let mut answer = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        assert_eq!(answer.read(&mut first).unwrap(), 1);
        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130), "{signal}: {}", stderr(&o));
        assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));

        let o = run(&["--home", h, "budget", "--json", "--policy", p]);
        let b: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(b["open_reservations"], 0, "{signal}: {b}");
        let spent: f64 = b["spent_today"].as_str().unwrap().parse().unwrap();
        assert!(spent > 0.0 && spent < 0.2, "{signal}: {b}");
    }
}

/// Any other failure to write the output (here a full disk) is an error that says so.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_stdout_write_is_a_clear_error() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = bin()
        .args(["pii", "scan", "mail ann@example.com"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("edgeroute: writing to standard output: No space left on device"),
        "{err}"
    );
}

/// `explain` reports whether the local model is installed in the home, the way the router's
/// local tier decides it (the model directory's manifest), without loading it; the fixture home
/// is built here, whatever is installed in the default one.
#[test]
fn explain_reports_whether_the_local_model_is_installed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let explain = |json: bool| {
        let mut args = vec!["--home", h, "explain", "--policy", "policies/default.toml"];
        if json {
            args.push("--json");
        }
        args.push("What is the capital of France?");
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let local_available = || {
        let v: serde_json::Value = serde_json::from_str(&explain(true)).unwrap();
        v["signals"]["local_available"].clone()
    };
    assert_eq!(local_available(), false);
    assert!(explain(false).contains(", local unavailable,"));

    let model_dir = edgeroute::home::model_dir(home.path(), edgeroute::home::DEFAULT_MODEL);
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("edgeroute-model.json"), "{}").unwrap();
    // Without the `onnx` feature there is no built-in local model, installed or not.
    let installed = cfg!(feature = "onnx");
    assert_eq!(local_available(), installed);
    let text = explain(false);
    assert_eq!(text.contains(", local available,"), installed, "{text}");
    // Nothing was written to the home: no database, no cache key.
    assert!(!edgeroute::home::db_dir(home.path()).exists());
    assert!(!edgeroute::home::cache_key_file(home.path()).exists());
}

/// The commands that read what earlier requests recorded (`stats`, `budget`, `cache stats`,
/// and `cache clear`) refuse a home nothing has run in — a mistyped `--home` or
/// `EDGEROUTE_HOME` — instead of creating an empty one there and showing zeros.
#[test]
fn reading_commands_refuse_a_home_nothing_has_run_in() {
    let parent = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 8] = [
        &["stats"],
        &["stats", "--json"],
        &["budget", "--policy", "policies/cost-saver.toml"],
        &["cache", "stats"],
        &["cache", "clear"],
        &["distill", "stats"],
        &["distill", "export"],
        &["distill", "clear"],
    ];
    let typo = parent.path().join("edgroute-home");
    for command in commands {
        let by_flag = bin()
            .args(["--home", typo.to_str().unwrap()])
            .args(command)
            .output()
            .unwrap();
        let by_env = bin()
            .args(command)
            .env("EDGEROUTE_HOME", &typo)
            .output()
            .unwrap();
        for o in [by_flag, by_env] {
            assert_eq!(o.status.code(), Some(1), "{command:?}");
            let err = stderr(&o);
            let expected = format!(
                "edgeroute: no edgeroute home at {} (nothing has run there yet); check --home / EDGEROUTE_HOME",
                typo.display()
            );
            assert!(err.starts_with(&expected), "{command:?}: {err}");
            assert_eq!(stdout(&o), "", "{command:?}");
            assert!(!typo.exists(), "{command:?} created {}", typo.display());
        }
    }

    // A directory that exists but was never used as a home (no database): refused too, and
    // left as it was.
    let empty = tempfile::tempdir().unwrap();
    for command in commands {
        let o = bin()
            .args(["--home", empty.path().to_str().unwrap()])
            .args(command)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{command:?}");
        let err = stderr(&o);
        let expected = format!(
            "nothing has run with the edgeroute home at {} yet",
            empty.path().display()
        );
        assert!(err.contains(&expected), "{command:?}: {err}");
        assert!(
            err.contains("check --home / EDGEROUTE_HOME"),
            "{command:?}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(empty.path()).unwrap().count(),
            0,
            "{command:?}"
        );
    }
}

/// `ask` under a home named by `--home` / `EDGEROUTE_HOME` that does not exist is refused
/// before anything is created there (a mistyped path would become a new home with a database
/// and a cache key, and then fail for want of a model).
#[test]
fn ask_refuses_a_named_home_that_does_not_exist() {
    let parent = tempfile::tempdir().unwrap();
    let typo = parent.path().join("edgroute-home");
    let ask = ["ask", "--policy", "policies/offline-only.toml", "Hello?"];
    let by_flag = bin()
        .args(["--home", typo.to_str().unwrap()])
        .args(ask)
        .output()
        .unwrap();
    let by_env = bin()
        .args(ask)
        .env("EDGEROUTE_HOME", &typo)
        .output()
        .unwrap();
    // Named by the flag, the set-up command names the home; named by the variable, the plain
    // command already installs there.
    let flag_setup = format!("EDGEROUTE_HOME={} python3 scripts/setup.py", typo.display());
    for (o, setup) in [
        (by_flag, flag_setup.as_str()),
        (by_env, "python3 scripts/setup.py"),
    ] {
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        let expected = format!(
            "edgeroute: no edgeroute home at {} (nothing has run there yet); check --home / EDGEROUTE_HOME, or install there with `{setup}`",
            typo.display(),
        );
        assert!(err.starts_with(&expected), "{err}");
        assert!(!typo.exists(), "ask created {}", typo.display());
    }
}

/// …and read a home that has been used (it has a database), even one without a cache key
/// file (an app that passes its own key), which is not created.
#[test]
fn reading_commands_read_a_used_home() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    drop(edgeroute::cache::open_db(&edgeroute::home::db_dir(home.path())).unwrap());

    let o = run(&["--home", h, "stats", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["requests"], 0, "{s}");
    let o = run(&["--home", h, "stats"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("requests:          0"),
        "{}",
        stdout(&o)
    );

    let o = run(&[
        "--home",
        h,
        "budget",
        "--json",
        "--policy",
        "policies/cost-saver.toml",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(b["spent_today"], "0", "{b}");

    let o = run(&["--home", h, "cache", "stats", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(c["entries"], 0, "{c}");
    let o = run(&["--home", h, "cache", "clear"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("removed 0 cached answer(s)"));
    assert!(!edgeroute::home::cache_key_file(home.path()).exists());
}

/// Logged warnings reach a pipe without terminal colour codes; here the warning that a home
/// whose database cannot be opened (its `db` is a file) answers without the cache.
#[test]
fn warnings_in_a_pipe_have_no_colour_codes() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(edgeroute::home::db_dir(home.path()), "not a directory").unwrap();
    let o = run(&[
        "--home",
        home.path().to_str().unwrap(),
        "ask",
        "--policy",
        "policies/offline-only.toml",
        "What is 2+2?",
    ]);
    let err = stderr(&o);
    assert!(err.contains("answering without the answer cache"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// `--cloud-url` and `EDGEROUTE_CLOUD_URL` point `ask` at another address than the policy's
/// `[cloud].base_url` (the flag wins over the variable); without either, the policy's is used.
#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread")]
async fn cloud_url_flag_and_variable_override_the_policys_base_url() {
    let (policy_host, other) = (
        support::FakeProvider::start().await,
        support::FakeProvider::start().await,
    );
    policy_host.set_reply("From the policy's host.");
    other.set_reply("From the other host.");
    let home = tempfile::tempdir().unwrap();
    let policy = cloud_policy(
        home.path(),
        &policy_host,
        "[cache]\nmode = \"off\"\n[defaults]\nroute = \"cloud\"\n",
    );
    let home_s = home.path().to_str().unwrap().to_owned();
    let policy_s = policy.to_str().unwrap().to_owned();
    let ask = |flag: Option<&str>, var: Option<&str>| {
        let mut c = bin();
        c.args(["--home", &home_s, "ask", "--policy", &policy_s, "hello"])
            .env("EDGEROUTE_TEST_KEY", support::TEST_KEY);
        if let Some(url) = flag {
            c.args(["--cloud-url", url]);
        }
        if let Some(url) = var {
            c.env("EDGEROUTE_CLOUD_URL", url);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).trim().to_owned()
    };
    assert_eq!(ask(None, None), "From the policy's host.");
    assert_eq!(ask(None, Some("")), "From the policy's host.");
    assert_eq!(ask(None, Some(&other.url())), "From the other host.");
    assert_eq!(ask(Some(&other.url()), None), "From the other host.");
    let down = support::unused_addr();
    let unused = format!("http://{down}");
    assert_eq!(
        ask(Some(&policy_host.url()), Some(&unused)),
        "From the policy's host."
    );
    assert_eq!(
        (policy_host.requests_received(), other.requests_received()),
        (3, 2)
    );
}

/// Set but empty, `EDGEROUTE_HOME`, `EDGEROUTE_POLICY` and `EDGEROUTE_CLOUD_URL` mean unset,
/// as the library and the set-up script read them; they used to stop every command with
/// "a value is required for '--home <DIR>'" (exit status 2).
#[test]
fn empty_configuration_variables_mean_unset() {
    // The default home (what an empty EDGEROUTE_HOME leaves) is under XDG_DATA_HOME: one of
    // this test's own, not the machine's.
    let data = tempfile::tempdir().unwrap();
    for var in ["EDGEROUTE_HOME", "EDGEROUTE_POLICY", "EDGEROUTE_CLOUD_URL"] {
        let o = bin()
            .args(["explain", "--json", "What is the capital of France?"])
            .env("XDG_DATA_HOME", data.path())
            .env("EDGEROUTE_HOME", stub_home())
            .env(var, "")
            .output()
            .unwrap();
        assert!(o.status.success(), "{var}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["route"].is_string(), "{var}: {v}");
    }
}

/// `ask --json` on a request the policy refuses prints a JSON object naming the rule and its
/// message on stdout (scripts parse stdout), and exits with status 3 (a refusal, not a failure:
/// 1) and the message on stderr; so does `ask` without `--json`.
#[test]
fn ask_json_reports_a_refusal_as_json() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    // The live-data question offline-only.toml refuses, with `flags` after `ask`.
    let refused = |flags: &[&str]| {
        let policy = [
            "--policy",
            "policies/offline-only.toml",
            "--tag",
            "live-data",
        ];
        let question = ["What is the EUR/USD rate right now?"];
        run(&[&["--home", h, "ask"][..], flags, &policy, &question].concat())
    };
    let o = refused(&["--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["refused"], true, "{v}");
    assert_eq!(v["rule"], "no-live-data");
    assert_eq!(
        v["message"],
        "offline mode cannot look up live data (prices, weather, news)"
    );
    assert!(
        stderr(&o).contains("refused by policy rule `no-live-data`"),
        "{}",
        stderr(&o)
    );

    let o = refused(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));

    // A cloud budget spent, under `on_exhausted = "refuse"`, is the policy's refusal too.
    let policy = home.path().join("budget.toml");
    std::fs::write(
        &policy,
        "[cloud]\nmodel = \"m\"\ninput_usd_per_mtok = \"1\"\noutput_usd_per_mtok = \"1\"\n\
         [budget]\ndaily_usd = \"0.000001\"\non_exhausted = \"refuse\"\n[defaults]\nroute = \"cloud\"\n",
    )
    .unwrap();
    let budget_refused = |flags: &[&str]| {
        bin()
            .args(["--home", home.path().to_str().unwrap(), "ask"])
            .args(flags)
            .arg("--policy")
            .arg(&policy)
            .arg("What is the capital of France?")
            .env("OPENAI_API_KEY", "sk-test")
            .output()
            .unwrap()
    };
    let o = budget_refused(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("budget"), "{}", stderr(&o));
    // With --json it says so as the exit status does: refused, under the rule that sent the
    // request to the cloud, with the budget's message.
    let o = budget_refused(&["--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["refused"], true, "{v}");
    assert_eq!(v["rule"], "defaults", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("cloud budget"),
        "{v}"
    );

    // Failures before the request starts (an empty prompt, a missing policy file): status 1.
    for args in [
        &["ask", "--json", "   "][..],
        &["ask", "--json", "--policy", "no/such/policy.toml", "hi"][..],
    ] {
        let o = bin()
            .arg("--home")
            .arg(home.path())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["refused"], false, "{v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    }
}

/// `distill export` writes the teacher log as chat fine-tuning JSONL, oldest first, to standard
/// output or (with its metadata) to a file that is only replaced once complete; `distill stats`
/// counts; `distill clear` removes every sample and replaces the teacher key.
#[test]
fn distill_exports_counts_and_clears_the_teacher_log() {
    use edgeroute::distill::{DistillConfig, TeacherLog, TeacherSample};
    let home = tempfile::tempdir().unwrap();
    let key_file = edgeroute::home::teacher_key_file(home.path());
    // Records samples answered now; one whose question starts with "Old" 30 days ago.
    let record = |questions: &[&str]| {
        let db = edgeroute::cache::Database::open(&edgeroute::home::db_dir(home.path())).unwrap();
        let key = edgeroute::cache::EncryptionKey::load_or_create(&key_file).unwrap();
        let log = TeacherLog::open(&db, key, DistillConfig::default()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        for (i, question) in questions.iter().enumerate() {
            let answer = ["One.", "Two."][i % 2];
            let days_ago = if question.starts_with("Old") { 30 } else { 0 };
            log.record(&TeacherSample {
                at_unix_ms: now - days_ago * 24 * 3600 * 1000 + i as u64,
                rule: "hard-task-to-cloud".into(),
                model: "cloud/fake-model".into(),
                messages: vec![
                    edgeroute::Message::system("Be brief."),
                    edgeroute::Message::user(*question),
                ],
                answer: answer.into(),
                redacted_spans: 1,
                pii_in_clear: false,
                escalated: true,
                usage: edgeroute::request::Usage::new(9, 2),
            })
            .unwrap();
        }
        log.flush().unwrap();
    };
    record(&["First <EMAIL_1>?", "Second?"]);
    let h = home.path().to_str().unwrap();
    // `distill export` on this home, with more arguments.
    let export = |more: &[&str]| {
        bin()
            .args(["--home", h, "distill", "export"])
            .args(more)
            .output()
            .unwrap()
    };

    let o = run(&["--home", h, "distill", "stats", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["samples"], 2, "{s}");

    let o = export(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        serde_json::json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First <EMAIL_1>?"},
            {"role": "assistant", "content": "One."},
        ]})
    );
    assert_eq!(lines[1]["messages"][2]["content"], "Two.");

    let file = home.path().join("train.jsonl");
    std::fs::write(&file, "an earlier export\n").unwrap();
    let f = file.to_str().unwrap();
    let o = export(&["--metadata", "--out", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exported 2 sample(s)"),
        "{}",
        stderr(&o)
    );
    let written = std::fs::read_to_string(&file).unwrap();
    let first: serde_json::Value = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert_eq!(first["metadata"]["rule"], "hard-task-to-cloud");
    assert_eq!(first["metadata"]["escalated"], true);
    assert_eq!(written.lines().count(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the export is readable by its owner only"
        );
    }
    // A file that cannot be written is an error naming it: one whose directory is missing,
    // and one that fails once written (the name is a directory), which leaves no partial file.
    let dir_named = home.path().join("out.d");
    std::fs::create_dir(&dir_named).unwrap();
    for (out, named) in [
        (
            home.path().join("no-such-dir").join("train.jsonl"),
            "no-such-dir",
        ),
        (dir_named.clone(), "out.d"),
    ] {
        let o = export(&["--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(named), "{}", stderr(&o));
    }
    let mut names: Vec<String> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["db", "out.d", "teacher.key", "train.jsonl"]);
    assert_eq!(std::fs::read_dir(&dir_named).unwrap().count(), 0);

    let old_key = std::fs::read(&key_file).unwrap();
    let o = run(&["--home", h, "distill", "clear"]);
    assert!(stdout(&o).contains("removed 2 sample(s)"), "{}", stdout(&o));
    assert_ne!(std::fs::read(&key_file).unwrap(), old_key);
    let o = export(&[]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("collect = true"), "{}", stderr(&o));

    // With a policy's age limit, samples older than it are removed before anything is read.
    record(&["Recent?", "Old?"]);
    let aged = home.path().join("aged.toml");
    std::fs::write(&aged, "[distill]\ncollect = true\nmax_age_days = 7\n").unwrap();
    let o = export(&["--policy", aged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let users: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["messages"][1]["content"]
                .to_string()
        })
        .collect();
    assert_eq!(users, ["\"Recent?\""]);
}

/// End to end, one process after another: `ask` with a policy that collects sends a redacted
/// prompt to the cloud and prints the re-hydrated answer; `distill export` then writes what the
/// provider saw, placeholders and all.
#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread")]
async fn an_asked_cloud_answer_is_exported_as_the_provider_saw_it() {
    let fake = support::FakeProvider::start().await;
    fake.set_reply("Sure, I will write to <EMAIL_1> today.");
    let home = tempfile::tempdir().unwrap();
    let policy = cloud_policy(
        home.path(),
        &fake,
        "[distill]\ncollect = true\n[defaults]\nroute = \"cloud\"\nredact = true\n",
    );
    let h = home.path().to_str().unwrap();
    let o = bin()
        .args(["--home", h, "ask", "--policy", policy.to_str().unwrap()])
        .arg("Draft a note to jane.roe@example.com about lunch")
        .env("EDGEROUTE_TEST_KEY", support::TEST_KEY)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "Sure, I will write to jane.roe@example.com today."
    );
    let o = run(&["--home", h, "distill", "export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        line["messages"],
        serde_json::json!([
            {"role": "user", "content": "Draft a note to <EMAIL_1> about lunch"},
            {"role": "assistant", "content": "Sure, I will write to <EMAIL_1> today."},
        ])
    );
}
