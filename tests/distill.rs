//! The teacher log through the router, against a real HTTP provider on 127.0.0.1 and a real
//! sled database: which cloud answers are kept for distillation, and in what form (the
//! exchange as the provider saw it, never the personal data it did not see).
#![cfg(feature = "cloud")]

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use edgeroute::backend::cloud::CloudBackend;
use edgeroute::cache::{Database, EncryptionKey};
use edgeroute::distill::{DistillConfig, TeacherLog, TeacherSample};
use edgeroute::{Request, Role, Route, Router, RouterEvent};
use futures::StreamExt;
use support::echo::EchoModel;
use support::FakeProvider;

const CLOUD: &str = "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = \"0.15\"\noutput_usd_per_mtok = \"0.60\"\n";
const COLLECT: &str = "[distill]\ncollect = true\n";
/// A rule that sends requests with an email address to the cloud, redacted.
const REDACTED_EMAIL: &str =
    "[[rule]]\nname = \"redacted\"\nroute = \"cloud\"\nredact = true\n[rule.when]\npii_any = [\"email\"]\n";
const ADDRESS: &str = "jane.roe@example.com";

/// A router on `home`, whose keys are in the home's key files.
fn router(home: &Path, policy: &str, local: Arc<EchoModel>, fake: &FakeProvider) -> Router {
    builder(home, policy, local, fake).build().unwrap()
}

/// What [`router`] builds, before it is built.
fn builder(
    home: &Path,
    policy: &str,
    local: Arc<EchoModel>,
    fake: &FakeProvider,
) -> edgeroute::RouterBuilder {
    Router::builder()
        .policy_str(format!("{CLOUD}{policy}"))
        .local_backend(local)
        .cloud_backend(Arc::new(CloudBackend::new(fake.openai_config()).unwrap()))
        .home(home)
}

/// What the home's teacher log holds, oldest first (every sample readable).
fn kept(home: &Path) -> Vec<TeacherSample> {
    let key = EncryptionKey::load_or_create(&edgeroute::home::teacher_key_file(home)).unwrap();
    kept_with(home, key)
}

fn kept_with(home: &Path, key: EncryptionKey) -> Vec<TeacherSample> {
    let db = Database::open(&edgeroute::home::db_dir(home)).unwrap();
    let log = TeacherLog::open(&db, key, DistillConfig::default()).unwrap();
    let (samples, unreadable) = log.samples().unwrap();
    assert_eq!(unreadable, 0);
    samples
}

/// A redacted request is kept as the provider received it (the placeholder, not the address),
/// with the answer as it came back (before re-hydration), while the app gets the re-hydrated
/// answer; streamed or not. Nothing of the address reaches the log.
#[tokio::test]
async fn a_redacted_cloud_answer_is_kept_as_the_provider_saw_it() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("Sure, I will write to <EMAIL_1> today.");
    let r = router(
        home.path(),
        &format!("{COLLECT}{REDACTED_EMAIL}"),
        Arc::default(),
        &fake,
    );
    let resp = r
        .complete(Request::new(format!(
            "Draft a note to {ADDRESS} about lunch"
        )))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    assert_eq!(resp.text, format!("Sure, I will write to {ADDRESS} today."));
    let mut stream = r.stream(Request::new(format!("Remind {ADDRESS} of the meeting")));
    let mut streamed = String::new();
    while let Some(event) = stream.next().await {
        if let RouterEvent::Delta(d) = event.unwrap() {
            streamed.push_str(&d);
        }
    }
    assert_eq!(streamed, format!("Sure, I will write to {ADDRESS} today."));
    r.settled().await;

    let samples = kept(home.path());
    assert_eq!(samples.len(), 2, "{samples:?}");
    let first = &samples[0];
    assert_eq!(first.rule, "redacted");
    assert_eq!(first.messages.len(), 1);
    assert_eq!(first.messages[0].role, Role::User);
    assert_eq!(
        first.messages[0].content,
        "Draft a note to <EMAIL_1> about lunch"
    );
    assert_eq!(first.answer, "Sure, I will write to <EMAIL_1> today.");
    assert_eq!(first.redacted_spans, 1);
    assert!(!first.pii_in_clear);
    assert!(!first.escalated);
    assert_eq!(first.model, resp.attempts[0].backend);
    assert_eq!(first.usage, resp.usage);
    assert!(first.usage.output_tokens > 0);
    assert_eq!(
        samples[1].messages[0].content,
        "Remind <EMAIL_1> of the meeting"
    );
    for s in &samples {
        assert!(!s.answer.contains(ADDRESS));
        assert!(s.messages.iter().all(|m| !m.content.contains(ADDRESS)));
    }
}

/// Only whole cloud answers are kept: not the device's answers, not a cloud answer cut at the
/// token limit, not a cached one, and not a request sent with personal data in clear, unless
/// the policy says `include_pii = true`.
#[tokio::test]
async fn only_whole_cloud_answers_without_personal_data_in_clear_are_kept() {
    let policy = |include_pii: bool| {
        format!(
            "{COLLECT}include_pii = {include_pii}\n\
             [[rule]]\nname = \"phone-in-clear\"\nroute = \"cloud\"\n[rule.when]\npii_any = [\"phone\"]\n\
             [[rule]]\nname = \"hard\"\nroute = \"cloud\"\n[rule.when]\ntags_any = [\"hard\"]\n\
             [defaults]\nroute = \"local\"\n"
        )
    };
    let phone = "Call me on +44 20 7946 0958 about the order";
    for include_pii in [false, true] {
        let home = tempfile::tempdir().unwrap();
        let fake = FakeProvider::start().await;
        fake.set_reply("A careful answer.");
        let local = Arc::new(EchoModel::default());
        let r = router(home.path(), &policy(include_pii), local.clone(), &fake);

        let device = r.complete(Request::new("hello there")).await.unwrap();
        assert_eq!(device.route, Route::Local);
        let hard = || Request::new("Prove it").with_tag("hard");
        assert_eq!(r.complete(hard()).await.unwrap().route, Route::Cloud);
        assert_eq!(r.complete(hard()).await.unwrap().route, Route::Cache);
        let clear = r.complete(Request::new(phone)).await.unwrap();
        assert_eq!(clear.decision.rule, "phone-in-clear");
        assert_eq!(clear.route, Route::Cloud);
        for (reason, prompt) in [
            ("length", "Write a long essay"),
            ("content_filter", "Say it"),
        ] {
            fake.set_stop_reason(reason);
            let cut = r
                .complete(Request::new(prompt).with_tag("hard"))
                .await
                .unwrap();
            assert_eq!(cut.route, Route::Cloud);
        }
        assert_eq!(fake.requests_received(), 4);

        let samples = kept(home.path());
        let users: Vec<&str> = samples
            .iter()
            .map(|s| s.messages[0].content.as_str())
            .collect();
        if include_pii {
            assert_eq!(users, ["Prove it", phone], "include_pii = true");
            assert_eq!(
                samples.iter().map(|s| s.pii_in_clear).collect::<Vec<_>>(),
                [false, true],
                "the sample sent with personal data in clear says so"
            );
        } else {
            assert_eq!(users, ["Prove it"], "include_pii = false");
        }
        assert!(samples.iter().all(|s| s.answer == "A careful answer."));
    }
}

/// Without `[distill] collect = true` (the default) nothing is kept, and no teacher key is
/// written.
#[tokio::test]
async fn nothing_is_kept_unless_the_policy_collects() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("Sure, I will write to <EMAIL_1> today.");
    let r = router(home.path(), REDACTED_EMAIL, Arc::default(), &fake);
    let resp = r
        .complete(Request::new(format!("Draft a note to {ADDRESS}")))
        .await
        .unwrap();
    assert_eq!(resp.route, Route::Cloud);
    drop(r);
    assert!(!edgeroute::home::teacher_key_file(home.path()).exists());
    assert!(kept(home.path()).is_empty());
}

/// A cascade escalation (the device was not confident enough) is kept and marked so; a
/// hedge's cloud leg is kept as the provider saw it, redacted.
#[tokio::test]
async fn escalations_and_hedged_cloud_answers_are_kept() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("Sure, I will write to <EMAIL_1> today.");
    let local = Arc::new(EchoModel::default());
    let r = router(
        home.path(),
        &format!(
            "{COLLECT}[[rule]]\nname = \"hedged\"\nroute = \"hedge\"\nredact = true\nafter_ms = 5000\n\
             [rule.when]\npii_any = [\"email\"]\n\
             [defaults]\nroute = \"cascade\"\nmin_confidence = -1.0\n"
        ),
        local.clone(),
        &fake,
    );
    local.logprob_milli.store(-100, Ordering::SeqCst);
    let sure = r.complete(Request::new("an easy question")).await.unwrap();
    assert_eq!(sure.route, Route::Local);
    local.logprob_milli.store(-3000, Ordering::SeqCst);
    let unsure = r.complete(Request::new("a hard question")).await.unwrap();
    assert_eq!(unsure.route, Route::Cloud, "{}", unsure.decision);

    local.fail.store(true, Ordering::SeqCst);
    let hedged = r
        .complete(Request::new(format!("Draft a note to {ADDRESS}")))
        .await
        .unwrap();
    assert_eq!(hedged.route, Route::Cloud, "{}", hedged.decision);
    assert_eq!(
        hedged.text,
        format!("Sure, I will write to {ADDRESS} today.")
    );

    let samples = kept(home.path());
    assert_eq!(samples.len(), 2, "{samples:?}");
    assert_eq!(samples[0].messages[0].content, "a hard question");
    assert!(samples[0].escalated);
    assert_eq!(samples[0].rule, "defaults");
    assert_eq!(samples[1].rule, "hedged");
    assert!(!samples[1].escalated);
    assert_eq!(samples[1].messages[0].content, "Draft a note to <EMAIL_1>");
    assert_eq!(samples[1].answer, "Sure, I will write to <EMAIL_1> today.");
    assert_eq!(samples[1].redacted_spans, 1);
}

/// A router given its cache key by the app writes no key file for the teacher log either: its
/// key is derived from the app's (`teacher_key_for`), and reads the samples back.
#[tokio::test]
async fn an_app_supplied_cache_key_keeps_the_teacher_key_off_the_disk() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("A careful answer.");
    let r = builder(
        home.path(),
        &format!("{COLLECT}[defaults]\nroute = \"cloud\"\n"),
        Arc::default(),
        &fake,
    )
    .cache_key([9; 32])
    .build()
    .unwrap();
    assert_eq!(
        r.complete(Request::new("Why?")).await.unwrap().route,
        Route::Cloud
    );
    drop(r);
    assert!(!edgeroute::home::teacher_key_file(home.path()).exists());
    assert!(!edgeroute::home::cache_key_file(home.path()).exists());
    let samples = kept_with(
        home.path(),
        edgeroute::distill::teacher_key_for(&[9; 32]).unwrap(),
    );
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].answer, "A careful answer.");
}

/// A hedge the cloud wins while the device is still busy: the sample, and the cached answer's
/// provenance, name the cloud model that answered, not the device's cancelled leg (whose
/// attempt is recorded last).
#[tokio::test]
async fn a_hedge_the_cloud_wins_names_the_cloud_model() {
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("A careful answer.");
    let local = Arc::new(EchoModel::default());
    local.stall.store(true, Ordering::SeqCst);
    let r = router(
        home.path(),
        &format!("{COLLECT}[defaults]\nroute = \"hedge\"\nafter_ms = 20\n"),
        local.clone(),
        &fake,
    );
    let resp = r.complete(Request::new("Why?")).await.unwrap();
    assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
    let cloud = resp
        .attempts
        .iter()
        .find(|a| a.route == Route::Cloud)
        .unwrap();
    assert_eq!(
        resp.attempts.last().unwrap().route,
        Route::Local,
        "the cancelled device leg is recorded last: {:?}",
        resp.attempts
    );
    let again = r.complete(Request::new("Why?")).await.unwrap();
    assert_eq!(again.route, Route::Cache);
    let hit = again.decision.reasons.iter().find_map(|r| match r {
        edgeroute::decision::Reason::CacheHit { model, .. } => Some(model.clone()),
        _ => None,
    });
    assert_eq!(hit.as_deref(), Some(cloud.backend.as_str()));
    drop(r);
    let samples = kept(home.path());
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].model, cloud.backend);
}

/// What `explain` says of the teacher log (`TeacherVerdict::of` the decision) is what the
/// router does with the answer: kept redacted, not kept with personal data in clear, kept
/// without personal data, kept from a cascade that escalates and from an unpinned local plan
/// whose device fails (a fallback, redacted), nothing to keep on a pinned device.
#[tokio::test]
async fn the_explained_verdict_is_what_the_router_keeps() {
    use edgeroute::distill::TeacherVerdict;
    use edgeroute::signals::Network;
    let home = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    fake.set_reply("An answer.");
    let policy = format!(
        "{COLLECT}\
         [[rule]]\nname = \"device\"\nroute = \"local\"\n[rule.when]\ntags_any = [\"device\"]\n\
         {REDACTED_EMAIL}\
         [[rule]]\nname = \"phone-in-clear\"\nroute = \"cloud\"\n[rule.when]\npii_any = [\"phone\"]\n\
         [[rule]]\nname = \"private\"\nroute = \"local\"\npin = true\n[rule.when]\ntags_any = [\"private\"]\n\
         [[rule]]\nname = \"unsure\"\nroute = \"cascade\"\nmin_confidence = -1.0\n[rule.when]\ntags_any = [\"unsure\"]\n\
         [defaults]\nroute = \"cloud\"\n"
    );
    let local = Arc::new(EchoModel::default());
    let r = router(home.path(), &policy, local.clone(), &fake);
    // The device fails the unpinned local request (a fallback) and is unsure of the cascade's.
    let cases = [
        (
            Request::new(format!("Draft a note to {ADDRESS}")),
            TeacherVerdict::Kept { redacted: true },
        ),
        (
            Request::new("Call me on +44 20 7946 0958 about the order"),
            TeacherVerdict::NotKeptPiiInClear,
        ),
        (
            Request::new("What is a prime number?"),
            TeacherVerdict::Kept { redacted: false },
        ),
        (
            Request::new("My diary entry").with_tag("private"),
            TeacherVerdict::NoCloudAnswer,
        ),
        (
            Request::new("A hard question").with_tag("unsure"),
            TeacherVerdict::Kept { redacted: false },
        ),
        (
            Request::new(format!("Tell {ADDRESS} the plan")).with_tag("device"),
            TeacherVerdict::Kept { redacted: true },
        ),
    ];
    local.logprob_milli.store(-3000, Ordering::SeqCst);
    let mut expected_kept = 0;
    for (request, want) in cases {
        let features = edgeroute::inspect::inspect(r.policy(), &request);
        let signals = r.signals(&request, &features);
        let verdict = TeacherVerdict::of(
            &r.policy().distill,
            &r.explain(&request).plan,
            !features.pii_spans.is_empty(),
            signals.cloud_available && signals.network == Network::Online,
        );
        assert_eq!(verdict, want, "{:?}", request.messages);
        let device = request.tags.iter().any(|t| t == "device");
        local.fail.store(device, Ordering::SeqCst);
        let resp = r.complete(request).await.unwrap();
        r.settled().await;
        expected_kept += usize::from(verdict.keeps());
        let samples = kept(home.path());
        assert_eq!(samples.len(), expected_kept, "{verdict}: {}", resp.decision);
        if device {
            assert_eq!(resp.route, Route::Cloud, "{}", resp.decision);
            let last = &samples[samples.len() - 1];
            assert_eq!(last.messages[0].content, "Tell <EMAIL_1> the plan");
        }
    }
    assert_eq!(expected_kept, 4);
}
