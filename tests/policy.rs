//! The policy language: every condition, first-match semantics, the cloud gate, diagnostics for
//! invalid files, the shipped policies' own test cases, and properties of `decide`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeroute::decision::{HedgeDelay, HedgeFirst, Plan, Reason};
use edgeroute::inspect::inspect;
use edgeroute::policy::{
    compile_file, compile_str, decide, render_diagnostics, run_cases, CompiledPolicy,
};
use edgeroute::request::{ConfidenceStat, Request};
use edgeroute::signals::{CloudHealth, LatencyEstimates, Network, Signals};
use proptest::prelude::*;
use rust_decimal::Decimal;

const CLOUD: &str = "[cloud]\nmodel = \"m\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n";

fn policy(body: &str) -> CompiledPolicy {
    let src = format!(
        "{CLOUD}\n[[privacy.pattern]]\nkind = \"badge\"\nregex = \"BADGE-[0-9]{{4}}\"\n\n{body}"
    );
    compile_str(&src, Path::new("inline.toml"))
        .unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)))
}

fn signals() -> Signals {
    Signals::default()
}

/// Decides for a request under a one-rule policy; returns (rule, route, reasons).
fn run(p: &CompiledPolicy, req: &Request, s: &Signals) -> (String, &'static str, Vec<Reason>) {
    let d = decide(p, &inspect(p, req), s);
    (d.rule.clone(), d.route(), d.reasons.clone())
}

fn one_rule(when: &str) -> CompiledPolicy {
    policy(&format!("[[rule]]\nname = \"r\"\nroute = \"cloud\"\n[rule.when]\n{when}\n\n[defaults]\nroute = \"local\"\n"))
}

fn fires(p: &CompiledPolicy, req: &Request, s: &Signals) -> bool {
    run(p, req, s).0 == "r"
}

#[test]
fn pii_conditions() {
    let email = Request::new("mail me at ann@example.com");
    let badge = Request::new("my badge is BADGE-1234");
    let both = Request::new("ann@example.com BADGE-1234");
    let none = Request::new("what is 2+2?");
    let s = signals();

    let p = one_rule("pii = true");
    assert!(fires(&p, &email, &s) && !fires(&p, &none, &s));
    let p = one_rule("pii = false");
    assert!(!fires(&p, &email, &s) && fires(&p, &none, &s));

    let p = one_rule("pii_any = [\"badge\", \"phone\"]");
    assert!(fires(&p, &badge, &s) && !fires(&p, &email, &s));
    let (_, _, reasons) = run(&p, &both, &s);
    assert_eq!(
        reasons,
        vec![Reason::PiiFound {
            kinds: vec!["badge".into()]
        }]
    );

    let p = one_rule("pii_all = [\"email\", \"badge\"]");
    assert!(fires(&p, &both, &s) && !fires(&p, &email, &s) && !fires(&p, &badge, &s));

    let p = one_rule("pii_none = [\"badge\"]");
    assert!(fires(&p, &email, &s) && fires(&p, &none, &s) && !fires(&p, &both, &s));
}

#[test]
fn prompt_size_conditions() {
    let short = Request::new("hi");
    let long = Request::new("word ".repeat(400));
    let s = signals();
    let p = one_rule("prompt_tokens_gt = 100");
    assert!(fires(&p, &long, &s) && !fires(&p, &short, &s));
    let (_, _, reasons) = run(&p, &long, &s);
    assert!(matches!(reasons[0], Reason::PromptLarge { threshold: 100, tokens } if tokens > 100));
    let p = one_rule("prompt_tokens_lt = 100");
    assert!(!fires(&p, &long, &s) && fires(&p, &short, &s));
}

#[test]
fn deadline_and_latency_conditions() {
    let s = Signals {
        latency: LatencyEstimates {
            local_ms: Some(500),
            cloud_ms: Some(300),
            ..Default::default()
        },
        ..signals()
    };
    let tight = Request::new("q").with_deadline(Duration::from_millis(200));
    let loose = Request::new("q").with_deadline(Duration::from_millis(2000));
    let none = Request::new("q");

    let p = one_rule("deadline_ms_lt = 1000");
    assert!(fires(&p, &tight, &s) && !fires(&p, &loose, &s) && !fires(&p, &none, &s));
    assert_eq!(
        run(&p, &tight, &s).2,
        vec![Reason::DeadlineTooTight {
            deadline_ms: 200,
            threshold_ms: 1000
        }]
    );

    let p = one_rule("local_too_slow = true");
    assert!(fires(&p, &tight, &s) && !fires(&p, &loose, &s) && !fires(&p, &none, &s));
    assert_eq!(
        run(&p, &tight, &s).2,
        vec![Reason::LocalTooSlow {
            estimate_ms: 500,
            deadline_ms: 200
        }]
    );
    let p = one_rule("local_too_slow = false");
    assert!(!fires(&p, &tight, &s) && fires(&p, &loose, &s) && fires(&p, &none, &s));
    // Without a deadline there is nothing to compare with: the reason says so rather than
    // inventing one.
    let reasons = run(&p, &none, &s).2;
    assert_eq!(
        reasons,
        vec![Reason::LocalNotLimited {
            deadline_ms: None,
            estimate_ms: Some(500)
        }]
    );
    assert_eq!(
        reasons[0].to_string(),
        "no deadline: the local tier cannot be too slow (local estimate 500 ms)"
    );
}

#[test]
fn budget_network_health_conditions() {
    let req = Request::new("q");
    let p = policy(
        "[budget]\ndaily_usd = 5\n[[rule]]\nname = \"r\"\nroute = \"cloud\"\n[rule.when]\n\
         budget_left_usd_lt = \"0.50\"\n[defaults]\nroute = \"local\"\n",
    );
    let low = Signals {
        budget_left_usd: Some(Decimal::new(25, 2)),
        ..signals()
    };
    let high = Signals {
        budget_left_usd: Some(Decimal::new(500, 2)),
        ..signals()
    };
    assert!(fires(&p, &req, &low) && !fires(&p, &req, &high) && !fires(&p, &req, &signals()));
    assert_eq!(
        run(&p, &req, &low).2,
        vec![Reason::BudgetLow {
            left_usd: Decimal::new(25, 2),
            threshold_usd: Decimal::new(50, 2)
        }]
    );

    // A local rule so the cloud gate does not interfere with what we observe.
    let net =
        policy("[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\nnetwork = \"offline\"\n");
    let offline = Signals {
        network: Network::Offline,
        ..signals()
    };
    assert!(fires(&net, &req, &offline) && !fires(&net, &req, &signals()));
    assert_eq!(run(&net, &req, &offline).2, vec![Reason::Offline]);

    let health = policy("[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\ncloud_health = [\"degraded\", \"down\"]\n");
    for (h, expect) in [
        (CloudHealth::Healthy, false),
        (CloudHealth::Degraded, true),
        (CloudHealth::Down, true),
    ] {
        let s = Signals {
            cloud_health: h,
            ..signals()
        };
        assert_eq!(fires(&health, &req, &s), expect, "{h}");
    }
    let single = policy(
        "[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\ncloud_health = \"healthy\"\n",
    );
    assert!(fires(&single, &req, &signals()));
}

#[test]
fn tag_and_task_conditions() {
    let s = signals();
    let p = one_rule("tags_any = [\"hard\", \"urgent\"]");
    assert!(fires(
        &p,
        &Request::new("q").with_tag("x").with_tag("urgent"),
        &s
    ));
    assert!(!fires(&p, &Request::new("q").with_tag("x"), &s));
    assert_eq!(
        run(&p, &Request::new("q").with_tag("urgent"), &s).2,
        vec![Reason::TagMatched {
            tag: "urgent".into()
        }]
    );
    let p = one_rule("task = [\"summarise\", \"translate\"]");
    assert!(fires(&p, &Request::new("q").with_task("translate"), &s));
    assert!(!fires(&p, &Request::new("q").with_task("chat"), &s));
    assert!(!fires(&p, &Request::new("q"), &s));
}

#[test]
fn all_conditions_must_hold() {
    let p = one_rule("pii = false\ntags_any = [\"hard\"]\nprompt_tokens_lt = 50");
    let s = signals();
    assert!(fires(&p, &Request::new("short").with_tag("hard"), &s));
    assert!(!fires(&p, &Request::new("short"), &s));
    assert!(!fires(
        &p,
        &Request::new("ann@example.com").with_tag("hard"),
        &s
    ));
    let (_, _, reasons) = run(&p, &Request::new("short").with_tag("hard"), &s);
    assert_eq!(reasons.len(), 3, "one reason per condition: {reasons:?}");
}

#[test]
fn first_match_wins_and_defaults_apply() {
    let p = policy(
        "[[rule]]\nname = \"first\"\nroute = \"local\"\n[rule.when]\ntags_any = [\"a\"]\n\n\
         [[rule]]\nname = \"second\"\nroute = \"cloud\"\n[rule.when]\ntags_any = [\"a\", \"b\"]\n\n\
         [defaults]\nroute = \"refuse\"\nmessage = \"nope\"\n",
    );
    let s = signals();
    assert_eq!(run(&p, &Request::new("q").with_tag("a"), &s).0, "first");
    assert_eq!(run(&p, &Request::new("q").with_tag("b"), &s).0, "second");
    let (rule, route, reasons) = run(&p, &Request::new("q"), &s);
    assert_eq!((rule.as_str(), route), ("defaults", "refuse"));
    assert_eq!(reasons, vec![Reason::Default]);
}

#[test]
fn plans_carry_their_options() {
    let p = policy(
        "[[rule]]\nname = \"c\"\nroute = \"cascade\"\nmin_confidence = -0.7\nconfidence_stat = \"p10\"\nredact = true\n[rule.when]\ntags_any = [\"c\"]\n\n\
         [[rule]]\nname = \"h\"\nroute = \"hedge\"\nafter_ms = 120\n[rule.when]\ntags_any = [\"h\"]\n",
    );
    let s = signals();
    let d = decide(&p, &inspect(&p, &Request::new("q").with_tag("c")), &s);
    assert_eq!(
        d.plan,
        Plan::Cascade {
            min_confidence: -0.7,
            statistic: ConfidenceStat::P10,
            redact: true
        }
    );
    assert!(d.cloud_clearance().is_some_and(|c| c.must_redact()));
    let d = decide(&p, &inspect(&p, &Request::new("q").with_tag("h")), &s);
    assert_eq!(
        d.plan,
        Plan::Hedge {
            first: HedgeFirst::Local,
            after: HedgeDelay::Fixed(Duration::from_millis(120)),
            redact: false
        }
    );
}

#[test]
fn hedge_after_p95_uses_the_local_first_token_signals_and_says_so() {
    let p = policy("[defaults]\nroute = \"hedge\"\nafter_ms = \"p95\"\n");
    let f = inspect(&p, &Request::new("q"));
    let with = |p95: Option<u64>, estimate: Option<u64>| Signals {
        latency: LatencyEstimates {
            local_first_token_ms: estimate,
            local_first_token_p95_ms: p95,
            ..Default::default()
        },
        ..signals()
    };
    let delay_of = |d: &edgeroute::decision::Decision| match d.plan {
        Plan::Hedge { after, .. } => after.fixed(),
        _ => None,
    };

    // Enough observations: the p95, named in the reasons.
    let d = decide(&p, &f, &with(Some(240), Some(90)));
    assert_eq!(delay_of(&d), Some(Duration::from_millis(240)));
    assert!(d.reasons.contains(&Reason::HedgeDelay {
        after_ms: 240,
        basis: "p95 of recent local first tokens".into()
    }));
    // Too few: the estimate.
    let d = decide(&p, &f, &with(None, Some(90)));
    assert_eq!(delay_of(&d), Some(Duration::from_millis(90)));
    assert!(d
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::HedgeDelay { after_ms: 90, .. })));
    // A fixed delay is left alone and adds no reason.
    let fixed = policy("[defaults]\nroute = \"hedge\"\nafter_ms = 35\n");
    let d = decide(&fixed, &f, &with(Some(240), Some(90)));
    assert_eq!(delay_of(&d), Some(Duration::from_millis(35)));
    assert!(!d
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::HedgeDelay { .. })));
    // A pinned-local outcome (cloud unavailable) is not a hedge and gets no delay.
    let offline = Signals {
        cloud_available: false,
        ..with(Some(240), None)
    };
    let d = decide(&p, &f, &offline);
    assert!(matches!(d.plan, Plan::Local { .. }));
    assert!(!d
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::HedgeDelay { .. })));
}

/// `first = "cloud"`: the hedge starts in the cloud, and `"p95"` reads the cloud's
/// first-token signals (the local ones are ignored), naming them in the reasons.
#[test]
fn hedge_can_start_in_the_cloud_and_then_waits_for_the_cloud_p95() {
    let p = policy("[defaults]\nroute = \"hedge\"\nfirst = \"cloud\"\nafter_ms = \"p95\"\n");
    let f = inspect(&p, &Request::new("q"));
    let s = Signals {
        latency: LatencyEstimates {
            local_first_token_ms: Some(90),
            local_first_token_p95_ms: Some(240),
            cloud_first_token_ms: Some(400),
            cloud_first_token_p95_ms: None,
            ..Default::default()
        },
        ..signals()
    };
    let d = decide(&p, &f, &s);
    assert_eq!(
        d.plan,
        Plan::Hedge {
            first: HedgeFirst::Cloud,
            after: HedgeDelay::Fixed(Duration::from_millis(400)),
            redact: false
        }
    );
    assert!(d.reasons.contains(&Reason::HedgeDelay {
        after_ms: 400,
        basis: "cloud first-token estimate: too few first tokens observed for a p95".into()
    }));
    let s = Signals {
        latency: LatencyEstimates {
            cloud_first_token_p95_ms: Some(650),
            ..s.latency
        },
        ..s
    };
    let d = decide(&p, &f, &s);
    assert!(d.reasons.contains(&Reason::HedgeDelay {
        after_ms: 650,
        basis: "p95 of recent cloud first tokens".into()
    }));

    // Only `local` or `cloud`, with a suggestion for a near miss; only on hedges.
    for (src, want) in [
        (
            "[defaults]\nroute = \"hedge\"\nfirst = \"clod\"\nafter_ms = 5\n",
            "did you mean `cloud`",
        ),
        (
            "[defaults]\nroute = \"cloud\"\nfirst = \"cloud\"\n",
            "`first` does not apply to route `cloud`",
        ),
    ] {
        let diags = compile_str(&format!("{CLOUD}{src}"), Path::new("p.toml")).unwrap_err();
        let err = render_diagnostics(&diags);
        assert!(err.contains(want), "{err}");
        assert!(err.contains("p.toml:"), "{err}");
    }
}

#[test]
fn cloud_gate_turns_cloud_plans_local_unless_pinned() {
    let p = policy(
        "[budget]\ndaily_usd = 1\non_exhausted = \"local\"\n\
         [[rule]]\nname = \"pinned\"\nroute = \"cloud\"\npin = true\n[rule.when]\ntags_any = [\"p\"]\n\n\
         [defaults]\nroute = \"cloud\"\n",
    );
    let req = Request::new("q");
    let cases = [
        (
            Signals {
                network: Network::Offline,
                ..signals()
            },
            Reason::Offline,
        ),
        (
            Signals {
                cloud_health: CloudHealth::Down,
                ..signals()
            },
            Reason::CloudUnhealthy {
                health: CloudHealth::Down,
            },
        ),
        (
            Signals {
                budget_left_usd: Some(Decimal::ZERO),
                ..signals()
            },
            Reason::BudgetExhausted {
                action: "local".into(),
                left_usd: Decimal::ZERO,
                call_usd: None,
            },
        ),
    ];
    for (s, reason) in &cases {
        let d = decide(&p, &inspect(&p, &req), s);
        assert_eq!(d.plan, Plan::Local { pin: true }, "{reason}");
        assert!(d.cloud_clearance().is_none());
        assert!(d.reasons.contains(reason), "{:?}", d.reasons);
    }
    let unavailable = Signals {
        cloud_available: false,
        ..signals()
    };
    let d = decide(&p, &inspect(&p, &req), &unavailable);
    assert!(matches!(
        d.reasons.last(),
        Some(Reason::CloudUnavailable { .. })
    ));
    assert_eq!(d.route(), "local");

    // Pinned cloud: offline keeps the plan (it will fail), an exhausted budget refuses.
    let pinned = Request::new("q").with_tag("p");
    let d = decide(&p, &inspect(&p, &pinned), &cases[0].0);
    assert_eq!(d.route(), "cloud");
    let d = decide(&p, &inspect(&p, &pinned), &cases[2].0);
    assert_eq!(d.route(), "refuse");
}

/// A budget with less left than the request's cloud call would reserve is exhausted for that
/// request (the ledger would refuse the reservation), and the reason gives both figures; a
/// smaller call still fits.
#[test]
fn a_budget_too_small_for_the_call_is_exhausted_for_it() {
    let p = policy(
        "[budget]\ndaily_usd = 1\non_exhausted = \"local\"\n[defaults]\nroute = \"cloud\"\n",
    );
    let req = Request::new("q");
    let with = |left: i64, call: Option<i64>| Signals {
        budget_left_usd: Some(Decimal::new(left, 2)),
        cloud_call_usd: call.map(|c| Decimal::new(c, 2)),
        ..signals()
    };
    let d = decide(&p, &inspect(&p, &req), &with(5, Some(10)));
    assert_eq!(d.route(), "local", "{d}");
    assert!(d.cloud_clearance().is_none());
    let exhausted = Reason::BudgetExhausted {
        action: "local".into(),
        left_usd: Decimal::new(5, 2),
        call_usd: Some(Decimal::new(10, 2)),
    };
    assert!(d.reasons.contains(&exhausted), "{d}");
    assert_eq!(
        exhausted.to_string(),
        "cloud budget exhausted ($0.05 left; a cloud call for this request reserves $0.10): \
         policy says local"
    );
    for fits in [with(5, Some(5)), with(5, Some(1)), with(5, None)] {
        let d = decide(&p, &inspect(&p, &req), &fits);
        assert_eq!(d.route(), "cloud", "{d}");
    }
    // Refused, the message says what is left and what the call needs.
    let p = policy(
        "[budget]\ndaily_usd = 1\non_exhausted = \"refuse\"\n[defaults]\nroute = \"cloud\"\n",
    );
    let d = decide(&p, &inspect(&p, &req), &with(5, Some(10)));
    match &d.plan {
        Plan::Refuse { message } => assert_eq!(
            message,
            "the cloud budget has $0.05 left, and this request's cloud call reserves $0.10"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn refuse_on_exhausted_budget() {
    let p = policy(
        "[budget]\ndaily_usd = 1\non_exhausted = \"refuse\"\n[defaults]\nroute = \"cloud\"\n",
    );
    let s = Signals {
        budget_left_usd: Some(Decimal::new(-1, 2)),
        ..signals()
    };
    let d = decide(&p, &inspect(&p, &Request::new("q")), &s);
    assert_eq!(d.route(), "refuse");
    assert!(d
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::BudgetExhausted { action, .. } if action == "refuse")));
}

#[test]
fn policy_version_changes_with_content() {
    let a = policy("[defaults]\nroute = \"local\"\n");
    let b = policy("[defaults]\nroute = \"cloud\"\n");
    assert_ne!(a.version, b.version);
    let c = compile_str("version = \"v7\"\n", Path::new("x")).unwrap();
    assert_eq!(c.version, "v7");
}

fn invalid_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn invalid_policies_report_file_line_column_path_and_fix() {
    let files = invalid_fixtures();
    assert!(files.len() >= 15, "fixtures missing: {}", files.len());
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let diags = match compile_file(&f) {
            Ok(_) => panic!("{} compiled but should not", f.display()),
            Err(d) => d,
        };
        let text = render_diagnostics(&diags);
        assert!(text.starts_with(&f.display().to_string()), "{text}");
        for e in expected {
            assert!(
                text.contains(e),
                "{}:\n  expected fragment: {e}\n  got: {text}",
                f.display()
            );
        }
        for e in src.lines().filter_map(|l| l.strip_prefix("# expect-not: ")) {
            assert!(
                !text.contains(e),
                "{}:\n  unexpected fragment: {e}\n  got: {text}",
                f.display()
            );
        }
        // All of them, in file order.
        let lines: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
        assert!(
            lines.is_sorted(),
            "{}: not in file order: {text}",
            f.display()
        );
    }
}

#[test]
fn conditions_that_could_never_hold_are_errors() {
    let rule =
        |when: &str| format!("[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\n{when}\n");
    for (src, message) in [
        (
            format!("[privacy]\ndetect = []\n{}", rule("pii = true")),
            "`pii = true` can never hold",
        ),
        (
            format!(
                "[privacy]\ndetect = [\"secret\"]\n{}",
                rule("pii_none = [\"email\"]")
            ),
            "PII kind `email` is not detected",
        ),
        (rule("cloud_health = []"), "list at least one cloud health"),
        (rule("tags_any = [\"vip\", \" \"]"), "a tag cannot be empty"),
        (rule("task = []"), "list at least one task"),
        (rule("task = \"\""), "a task cannot be empty"),
        (rule("prompt_tokens_gt = 4294967295"), "can never hold"),
        (
            format!(
                "[[privacy.keywords]]\nkind = \"{}\"\nwords = [\"x\"]\n",
                "k".repeat(41)
            ),
            "is longer than 40 characters",
        ),
    ] {
        let diags = compile_str(&src, Path::new("p.toml")).unwrap_err();
        let text = render_diagnostics(&diags);
        assert!(text.contains(message), "{src}\n=> {text}");
    }
    // Custom kinds are always detected, whatever `detect` says.
    let src = format!(
        "[privacy]\ndetect = []\n[[privacy.keywords]]\nkind = \"codename\"\nwords = [\"falcon\"]\n{}",
        rule("pii_any = [\"codename\"]")
    );
    compile_str(&src, Path::new("p.toml")).unwrap();
    let src = format!(
        "[privacy]\ndetect = []\n[[privacy.keywords]]\nkind = \"codename\"\nwords = [\"falcon\"]\n{}",
        rule("pii = true")
    );
    compile_str(&src, Path::new("p.toml")).unwrap();
}

#[test]
fn all_errors_are_reported_at_once() {
    let src = "[cloud]\nmodel = \"m\"\ninput_usd_per_mtok = -1\n[[rule]]\nname = \"a\"\nroute = \"local\"\n[rule.when]\npii_any = [\"emial\"]\n[[rule]]\nname = \"a\"\nroute = \"local\"\n";
    let diags = compile_str(src, Path::new("many.toml")).unwrap_err();
    assert!(diags.len() >= 3, "{}", render_diagnostics(&diags));
}

/// A rule whose conditions had errors is not taken for one that always matches: its errors
/// are reported, not a false "unreachable" for every later rule and [defaults]; and an error
/// that merely names such a rule (a duplicate name, a test naming a rule that does not exist)
/// is still reported.
#[test]
fn a_rule_with_a_bad_condition_makes_no_false_errors_and_hides_no_real_ones() {
    let rules = |first: &str| {
        format!(
            "[[rule]]\nname = \"first\"\nroute = \"local\"\n[rule.when]\n{first}\n\
             [[rule]]\nname = \"second\"\nroute = \"local\"\n[rule.when]\ntags_any = [\"x\"]\n\
             [[rule]]\nname = \"third\"\nroute = \"local\"\n[rule.when]\ntask = \"y\"\n\
             [defaults]\nroute = \"local\"\n"
        )
    };
    for (first, error) in [
        ("network = \"ofline\"", "network"),
        ("budget_left_usd_lt = \"lots\"", "budget_left_usd_lt"),
        ("pii_any = \"email\"", "pii_any"),
        ("prompt_tokens_gt = -1", "prompt_tokens_gt"),
    ] {
        let diags = compile_str(&rules(first), Path::new("p.toml")).unwrap_err();
        let text = render_diagnostics(&diags);
        assert!(
            diags.iter().all(|d| d.path.starts_with("rule[0]")),
            "{first}\n=> {text}"
        );
        assert!(text.contains(error), "{first}\n=> {text}");
        assert!(
            !text.contains("unreachable") && !text.contains("never used"),
            "{text}"
        );
    }
    // Real errors that name the rule with the wrong-shaped key are still reported.
    let src = format!(
        "{}[[rule]]\nname = \"first\"\nroute = \"local\"\n\
         [[test]]\nprompt = \"hi\"\nexpect_route = \"local\"\nexpect_rule = \"firstt\"\n",
        rules("pii_any = \"email\"")
    );
    let text = render_diagnostics(&compile_str(&src, Path::new("p.toml")).unwrap_err());
    assert!(text.contains("duplicate rule name `first`"), "{text}");
    assert!(text.contains("`firstt`"), "{text}");
}

#[test]
fn shipped_policies_compile_and_pass_their_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for name in [
        "default",
        "privacy-first",
        "cost-saver",
        "latency-first",
        "offline-only",
    ] {
        let path = dir.join(format!("{name}.toml"));
        let p = compile_file(&path).unwrap_or_else(|d| panic!("{}", render_diagnostics(&d)));
        assert!(p.tests.len() >= 5, "{name} has {} tests", p.tests.len());
        for o in run_cases(&p) {
            assert!(
                o.passed,
                "{name}: `{}` expected {} / {:?}, got {} / {} ({:?})",
                o.case.name,
                o.case.expect_route,
                o.case.expect_rule,
                o.decision.route(),
                o.decision.rule,
                o.decision.reasons
            );
        }
    }
}

#[test]
fn policy_test_cases_detect_a_wrong_expectation() {
    let p = policy(
        "[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\ntags_any = [\"x\"]\n\
         [[test]]\nprompt = \"q\"\ntags = [\"x\"]\nexpect_route = \"cloud\"\nexpect_rule = \"r\"\n\
         [[test]]\nprompt = \"q\"\ntags = [\"x\"]\nexpect_route = \"local\"\nexpect_rule = \"r\"\n",
    );
    let outcomes = run_cases(&p);
    assert!(!outcomes[0].passed);
    assert!(outcomes[1].passed);
}

/// A case's `local_available = false` reaches the local gate: an unpinned cascade goes to the
/// cloud with the reason, a pinned local rule stays local; the default (true) leaves both alone.
#[test]
fn policy_test_cases_can_simulate_a_device_without_the_local_model() {
    let p = policy(
        "[defaults]\nroute = \"cascade\"\nmin_confidence = -1.0\n\
         [[rule]]\nname = \"keep\"\nroute = \"local\"\npin = true\n[rule.when]\ntags_any = [\"x\"]\n\
         [[test]]\nprompt = \"q\"\nlocal_available = false\nexpect_route = \"cloud\"\n\
         [[test]]\nprompt = \"q\"\nexpect_route = \"cascade\"\n\
         [[test]]\nprompt = \"q\"\ntags = [\"x\"]\nlocal_available = false\nexpect_route = \"local\"\nexpect_rule = \"keep\"\n",
    );
    let outcomes = run_cases(&p);
    assert_eq!(
        outcomes.iter().map(|o| o.passed).collect::<Vec<_>>(),
        [true, true, true],
        "{outcomes:#?}"
    );
    for i in [0, 2] {
        assert!(
            outcomes[i]
                .decision
                .reasons
                .iter()
                .any(|r| matches!(r, Reason::LocalUnavailable { .. })),
            "case {i}: {:?}",
            outcomes[i].decision.reasons
        );
    }
}

fn shipped() -> &'static [CompiledPolicy] {
    static POLICIES: std::sync::OnceLock<Vec<CompiledPolicy>> = std::sync::OnceLock::new();
    POLICIES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        [
            "default",
            "privacy-first",
            "cost-saver",
            "latency-first",
            "offline-only",
        ]
        .iter()
        .map(|name| compile_file(&dir.join(format!("{name}.toml"))).unwrap())
        .collect()
    })
}

fn arb_signals() -> impl Strategy<Value = Signals> {
    (
        any::<bool>(),
        0u8..3,
        proptest::option::of(-100i64..10_000),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0u64..100_000),
        proptest::option::of(0u64..100_000),
        proptest::option::of(0i64..10_000),
    )
        .prop_map(|(off, h, budget, cloud, local, lms, cms, call)| Signals {
            network: if off {
                Network::Offline
            } else {
                Network::Online
            },
            cloud_health: [
                CloudHealth::Healthy,
                CloudHealth::Degraded,
                CloudHealth::Down,
            ][h as usize],
            budget_left_usd: budget.map(|c| Decimal::new(c, 2)),
            cloud_call_usd: call.map(|c| Decimal::new(c, 2)),
            cloud_available: cloud,
            local_available: local,
            latency: LatencyEstimates {
                local_ms: lms,
                cloud_ms: cms,
                ..Default::default()
            },
        })
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        ".{0,200}",
        proptest::collection::vec("[a-z]{1,6}", 0..4),
        proptest::option::of(0u64..100_000),
        proptest::option::of("[a-z]{1,8}"),
        any::<bool>(),
    )
        .prop_map(|(prompt, tags, deadline, task, with_email)| {
            let prompt = if with_email {
                format!("{prompt} contact me: someone@example.org")
            } else {
                prompt
            };
            let mut r = Request::new(prompt);
            r.tags = tags;
            r.deadline = deadline.map(Duration::from_millis);
            r.task = task;
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `decide` never panics, on every shipped policy, for arbitrary requests and signals.
    #[test]
    fn decide_is_total(req in arb_request(), s in arb_signals()) {
        for p in shipped() {
            let d = decide(p, &inspect(p, &req), &s);
            prop_assert!(p.rules.iter().any(|r| r.name == d.rule) || d.rule == "defaults");
        }
    }

    /// Under every shipped policy, a decision whose plan uses the cloud (not merely as a
    /// fallback) leaves room in the budget for the request's cloud call: the ledger will not
    /// refuse what the decision planned.
    #[test]
    fn a_decision_for_the_cloud_fits_the_budget(req in arb_request(), s in arb_signals()) {
        for p in shipped() {
            let d = decide(p, &inspect(p, &req), &s);
            if let (true, Some(left)) = (d.plan.uses_cloud(), s.budget_left_usd) {
                prop_assert!(left > Decimal::ZERO, "{}", d);
                prop_assert!(s.cloud_call_usd.is_none_or(|call| call <= left), "{}", d);
            }
        }
    }

    /// A request matched by a pinned-local rule is never given a cloud clearance, under any
    /// signals — so it cannot reach the cloud tier.
    #[test]
    fn pinned_local_never_reaches_cloud(req in arb_request(), s in arb_signals()) {
        let p = policy(
            "[[rule]]\nname = \"private\"\nroute = \"local\"\npin = true\n[rule.when]\npii = true\n\
             [defaults]\nroute = \"cloud\"\n",
        );
        let f = inspect(&p, &req);
        let d = decide(&p, &f, &s);
        if d.rule == "private" {
            prop_assert!(d.cloud_clearance().is_none());
            prop_assert!(!d.plan.allows_cloud());
            prop_assert_eq!(d.route(), "local");
        }
        if req.prompt().contains("@example.org") {
            prop_assert_eq!(d.rule.as_str(), "private");
        }
    }

    /// The policy compiler never panics, whatever the text.
    #[test]
    fn compile_never_panics(src in "(\\[\\[rule\\]\\]\n|name = \"a\"\n|route = \"(local|cloud|x)\"\n|\\[rule.when\\]\n|pii_any = \\[\"email\"\\]\n|[a-z_=\\[\\]\"\\. \n0-9-]{0,20})*") {
        let _ = compile_str(&src, Path::new("fuzz.toml"));
    }
}

/// Without a local model, a plan that may use the cloud goes there up front and says why (it
/// used to fail locally and fall back); a pinned local plan stays local whatever happens.
#[test]
fn no_local_model_sends_unpinned_plans_to_the_cloud_and_keeps_pinned_ones() {
    let no_local = Signals {
        local_available: false,
        ..signals()
    };
    let unavailable = |d: &edgeroute::decision::Decision| {
        d.reasons
            .iter()
            .any(|r| matches!(r, Reason::LocalUnavailable { .. }))
    };
    for (route, extra, redact) in [
        ("local", "", true),
        ("cascade", "min_confidence = -1.0\n", false),
        ("hedge", "after_ms = 100\nredact = true\n", true),
    ] {
        let p = policy(&format!("[defaults]\nroute = \"{route}\"\n{extra}"));
        let d = decide(&p, &inspect(&p, &Request::new("hello")), &no_local);
        assert_eq!(d.plan, Plan::Cloud { redact, pin: false }, "{route}: {d}");
        assert!(unavailable(&d), "{route}: {d}");
        // A passing condition: apps watching `is_degraded` see it.
        assert!(d.is_degraded(), "{route}: {d}");
        assert!(d.cloud_clearance().is_some());
        // With the local model there, the plan is the policy's own.
        let d = decide(&p, &inspect(&p, &Request::new("hello")), &signals());
        assert_eq!(d.route(), route);
        assert!(!unavailable(&d));
    }
    let pinned = policy("[defaults]\nroute = \"local\"\npin = true\n");
    let d = decide(
        &pinned,
        &inspect(&pinned, &Request::new("hello")),
        &no_local,
    );
    assert_eq!(d.plan, Plan::Local { pin: true });
    assert!(d.cloud_clearance().is_none());
    // It will fail, and the decision already says why.
    assert!(unavailable(&d), "{d}");
    // No local model and no cloud either: the plan turns local again, with both reasons.
    let neither = Signals {
        cloud_available: false,
        ..no_local
    };
    let p = policy("[defaults]\nroute = \"cascade\"\nmin_confidence = -1.0\n");
    let d = decide(&p, &inspect(&p, &Request::new("hello")), &neither);
    assert_eq!(d.route(), "local");
    assert!(unavailable(&d));
    assert!(d
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::CloudUnavailable { .. })));
}

/// The estimates made with a policy's numbers saturate instead of overflowing, whatever a
/// section built by hand holds (a compiled policy bounds them; these sections are public).
#[test]
fn estimates_saturate_instead_of_overflowing() {
    let mut p = policy("");
    p.latency.local_prefill_ms_per_token = Decimal::MAX;
    p.latency.local_decode_ms_per_token = Decimal::MAX;
    assert_eq!(p.latency.local_estimate_ms(u32::MAX, u32::MAX), u64::MAX);
    let mut cloud = p.cloud.clone().unwrap();
    cloud.input_usd_per_mtok = Decimal::MAX;
    cloud.output_usd_per_mtok = Decimal::MAX;
    let usage = edgeroute::request::Usage::new(u64::MAX, u64::MAX);
    assert!(cloud.cost(usage) > Decimal::from(1_000_000_000u64));
}

/// A later rule that reaches requests the earlier one does not is kept: no false "unreachable".
#[test]
fn rules_that_reach_other_requests_are_not_unreachable() {
    for (first, second) in [
        // A phone number alone reaches the second rule.
        ("pii_any = [\"email\"]", "pii_any = [\"email\", \"phone\"]"),
        // 1500 tokens reach the second.
        ("prompt_tokens_gt = 2000", "prompt_tokens_gt = 1000"),
        // The "hard" tag reaches the second.
        (
            "tags_any = [\"urgent\"]",
            "tags_any = [\"urgent\", \"hard\"]",
        ),
        // A request without PII, or without a deadline.
        ("pii = true", "deadline_ms_lt = 500"),
        // Offline requests reach the second.
        ("network = \"online\"\ntask = \"x\"", "task = \"x\""),
    ] {
        let src = format!(
            "[cloud]\nmodel = \"m\"\n\
             [[rule]]\nname = \"a\"\nroute = \"local\"\n[rule.when]\n{first}\n\
             [[rule]]\nname = \"b\"\nroute = \"local\"\n[rule.when]\n{second}\n"
        );
        if let Err(d) = compile_str(&src, Path::new("reach.toml")) {
            panic!("{first} / {second}: {}", render_diagnostics(&d));
        }
    }
}

/// `passed_over` (what `explain` shows) is exactly the rules before the one `decide` fired,
/// each with a condition that indeed does not hold, on every shipped policy's test cases.
#[test]
fn passed_over_lists_the_rules_before_the_one_that_fired() {
    for p in shipped() {
        for case in &p.tests {
            let request = edgeroute::policy::case_request(case);
            let features = edgeroute::inspect::inspect(p, &request);
            let signals = edgeroute::policy::case_signals(p, case, features.prompt_tokens);
            let decision = decide(p, &features, &signals);
            let passed: Vec<&str> = edgeroute::policy::passed_over(p, &features, &signals)
                .into_iter()
                .map(|(rule, _)| rule)
                .collect();
            let fired = p.rules.iter().position(|r| r.name == decision.rule);
            let before: Vec<&str> = p.rules[..fired.unwrap_or(p.rules.len())]
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(passed, before, "{}: {}", p.name, case.name);
        }
    }
}

/// Valid rules that do not do what they seem to are compiled, with warnings at their `route`:
/// personal data kept local without a pin (it goes to the cloud, redacted, when the device
/// cannot answer), and a cloud rule that only fires offline. Their corrected forms warn nothing.
#[test]
fn rules_that_do_not_do_what_they_seem_compile_with_warnings() {
    let policy = |pin: &str, network: &str| {
        format!(
            "[cloud]\nmodel = \"m\"\n\n\
             [[rule]]\nname = \"pii-stays-local\"\nroute = \"local\"\n{pin}[rule.when]\npii_any = [\"email\"]\n\n\
             [[rule]]\nname = \"hard-to-cloud\"\nroute = \"cloud\"\n[rule.when]\nnetwork = \"{network}\"\n"
        )
    };
    let p = compile_str(&policy("", "offline"), Path::new("w.toml")).unwrap();
    let shown: Vec<String> = p.warnings.iter().map(|w| w.as_warning()).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("w.toml:6:9: warning: rule[0].route: rule `pii-stays-local` keeps requests with personal data on the device, but without `pin = true`"),
        "{shown:?}"
    );
    assert!(
        shown[1].starts_with("w.toml:12:9: warning: rule[1].route: rule `hard-to-cloud` uses the cloud only when the network is offline"),
        "{shown:?}"
    );
    let fixed = compile_str(&policy("pin = true\n", "online"), Path::new("w.toml")).unwrap();
    assert!(fixed.warnings.is_empty(), "{:?}", fixed.warnings);
    // Without [cloud], what the cloud client reads is fixed unless the app supplies one.
    for when in ["network = \"offline\"", "cloud_health = [\"down\"]"] {
        let src = format!("[[rule]]\nname = \"r\"\nroute = \"local\"\n[rule.when]\n{when}\n");
        let p = compile_str(&src, Path::new("w.toml")).unwrap();
        let shown: Vec<String> = p.warnings.iter().map(|w| w.as_warning()).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].contains("this policy has no [cloud] section"),
            "{shown:?}"
        );
    }
    // The shipped policies warn about nothing.
    for f in [
        "default",
        "privacy-first",
        "cost-saver",
        "latency-first",
        "offline-only",
    ] {
        let p = compile_file(Path::new(&format!("policies/{f}.toml"))).unwrap();
        assert!(p.warnings.is_empty(), "{f}: {:?}", p.warnings);
    }
}

/// `[local].spinning`, `[local].max_waiting` and `[distill]` compile to their settings, with
/// their documented defaults and limits.
#[test]
fn local_spinning_and_distill_settings_compile_with_their_defaults() {
    let defaults = policy("");
    assert!(!defaults.local.spinning);
    assert_eq!(
        defaults.local.max_waiting, None,
        "the backend's own default"
    );
    assert_eq!(
        policy("[local]\nmax_waiting = 0\n").local.max_waiting,
        Some(0)
    );
    let over = compile_str("[local]\nmax_waiting = 65537\n", Path::new("x.toml")).unwrap_err();
    let text = render_diagnostics(&over);
    assert!(
        text.contains("x.toml:2:15: local.max_waiting: `max_waiting` must be at most 65536"),
        "{text}"
    );
    assert_eq!(
        defaults.distill,
        edgeroute::distill::DistillConfig::default()
    );
    assert!(!defaults.distill.collect);
    let set = policy(
        "[local]\nspinning = true\n[distill]\ncollect = true\nmax_bytes = 1048576\n\
         include_pii = true\nmax_age_days = 30\n",
    );
    assert!(set.local.spinning);
    assert_eq!(
        set.distill,
        edgeroute::distill::DistillConfig {
            collect: true,
            max_bytes: 1 << 20,
            include_pii: true,
            max_age: Some(std::time::Duration::from_secs(30 * 24 * 3600)),
        }
    );
    let no_age_limit = policy("[distill]\ncollect = true\nmax_age_days = 0\n");
    assert_eq!(no_age_limit.distill.max_age, None);
    assert!(no_age_limit.warnings.is_empty());
    // Collecting with no cloud to collect from is valid, and a warning with its place.
    let no_cloud = compile_str("[distill]\ncollect = true\n", Path::new("x.toml")).unwrap();
    let text: Vec<String> = no_cloud.warnings.iter().map(|w| w.as_warning()).collect();
    assert!(
        text.iter().any(|w| w.contains(":2:")
            && w.contains("distill.collect")
            && w.contains("no [cloud] section")),
        "{text:?}"
    );
}
