//! Tracing: every pipeline stage opens a span, tier spans carry OpenTelemetry GenAI
//! semantic-convention fields, and no prompt or answer text is recorded unless the app opts in
//! with `RouterBuilder::trace_content(true)`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use edgeroute::{Request, Route, Router};
use support::echo::EchoModel;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A distinctive prompt: whatever records it would show this string.
const SECRET_PROMPT: &str = "zebra-marmalade-7731 what is my account number?";

/// Every span seen, by name, with its fields as recorded (debug-formatted), plus every event's
/// fields.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(String, Fields)>>>);

/// Field name → value.
type Fields = BTreeMap<String, String>;

struct FieldsVisitor<'a>(&'a mut Fields);

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// Index of a span's entry in the capture, kept in the span's extensions.
struct Slot(usize);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut FieldsVisitor(&mut fields));
        let mut all = self.0.lock().unwrap();
        all.push((attrs.metadata().name().to_string(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Slot(all.len() - 1));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(slot) = span.extensions().get::<Slot>().map(|s| s.0) else {
            return;
        };
        let mut all = self.0.lock().unwrap();
        values.record(&mut FieldsVisitor(&mut all[slot].1));
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut FieldsVisitor(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((format!("event:{}", event.metadata().target()), fields));
    }
}

impl Captured {
    fn spans(&self, name: &str) -> Vec<Fields> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
    fn anything_contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, f)| f.values().any(|v| v.contains(needle)))
    }
}

/// Runs one request on a current-thread runtime with `capture` as the default subscriber.
fn traced(trace_content: bool) -> (Captured, edgeroute::Response) {
    let capture = Captured::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let response = tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let router = Router::builder()
                .policy_str("[defaults]\nroute = \"local\"\n")
                .local_backend(Arc::new(EchoModel::default()))
                .cache(false)
                .trace_content(trace_content)
                .build()
                .unwrap();
            router.complete(Request::new(SECRET_PROMPT)).await.unwrap()
        })
    });
    (capture, response)
}

#[test]
fn every_stage_has_a_span_with_gen_ai_fields_and_no_text_by_default() {
    let (capture, response) = traced(false);
    assert_eq!(response.route, Route::Local);
    for stage in [
        "edgeroute.inspect",
        "edgeroute.cache",
        "edgeroute.decide",
        "edgeroute.execute",
        "edgeroute.tier",
        "edgeroute.record",
    ] {
        assert_eq!(capture.spans(stage).len(), 1, "span {stage}");
    }
    let tier = &capture.spans("edgeroute.tier")[0];
    assert_eq!(tier["gen_ai.operation.name"], "chat");
    assert_eq!(tier["otel.name"], "chat echo-model");
    assert_eq!(tier["otel.kind"], "client");
    assert_eq!(tier["gen_ai.request.model"], "echo-model");
    assert_eq!(tier["edgeroute.tier"], "local");
    // EchoModel reports 7 input and 3 output tokens.
    assert_eq!(tier["gen_ai.usage.input_tokens"], "7");
    assert_eq!(tier["gen_ai.usage.output_tokens"], "3");
    let ttft: f64 = tier["gen_ai.server.time_to_first_token"].parse().unwrap();
    assert!(ttft >= 0.0 && ttft <= response.timings.total.as_secs_f64());
    assert!(!tier.contains_key("gen_ai.input.messages"));
    assert!(!tier.contains_key("gen_ai.output.messages"));
    // Neither the prompt nor the answer (which echoes it) appears in any span or event.
    assert!(response.text.contains("zebra-marmalade-7731"));
    assert!(!capture.anything_contains("zebra-marmalade"));
}

#[test]
fn opting_in_records_the_messages_and_the_answer() {
    let (capture, response) = traced(true);
    let tier = &capture.spans("edgeroute.tier")[0];
    // The GenAI conventions' message shape: role, then the text as parts.
    let input: serde_json::Value = serde_json::from_str(&tier["gen_ai.input.messages"]).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert_eq!(input[0]["parts"][0]["type"], "text");
    assert_eq!(input[0]["parts"][0]["content"], SECRET_PROMPT);
    let output: serde_json::Value = serde_json::from_str(&tier["gen_ai.output.messages"]).unwrap();
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["parts"][0]["content"], response.text.as_str());
    assert_eq!(output[0]["finish_reason"], "stop");
}

/// Runs one request through a hedge router (`[defaults]` route `hedge` plus `hedge_options`)
/// with `local` and a loopback cloud that `provider` sets up, capturing the spans.
#[cfg(feature = "cloud")]
fn hedge_with_spans(
    hedge_options: &str,
    local: Arc<EchoModel>,
    provider: impl FnOnce(&support::FakeProvider),
) -> (Captured, edgeroute::Response, support::FakeProvider) {
    use edgeroute::backend::cloud::CloudBackend;

    let capture = Captured::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(support::FakeProvider::start());
    provider(&fake);
    let response = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let router = Router::builder()
                .policy_str(format!(
                    "[cloud]\nmodel = \"fake-model\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n\
                     [defaults]\nroute = \"hedge\"\n{hedge_options}"
                ))
                .local_backend(local)
                .cloud_backend(Arc::new(CloudBackend::new(fake.openai_config()).unwrap()))
                .cache(false)
                .build()
                .unwrap();
            router.complete(Request::new("hello")).await.unwrap()
        })
    });
    (capture, response, fake)
}

/// A hedge that the local tier answers before the delay opens no span for the cloud: a trace
/// never shows a cloud call that did not happen.
#[cfg(feature = "cloud")]
#[test]
fn a_hedge_that_never_starts_the_cloud_has_no_cloud_span() {
    let (capture, response, fake) =
        hedge_with_spans("after_ms = 5000\n", Arc::new(EchoModel::default()), |_| {});
    assert_eq!(response.route, Route::Local);
    let tiers: Vec<String> = capture
        .spans("edgeroute.tier")
        .iter()
        .map(|f| f["edgeroute.tier"].clone())
        .collect();
    assert_eq!(tiers, ["local"]);
    assert_eq!(fake.requests_received(), 0);
}

/// A hedge leg that fails records its error on its span (a failed leg used to look like an
/// empty success in a trace), and its attempt reports how long it ran, not how long the other
/// leg took to answer afterwards.
#[cfg(feature = "cloud")]
#[test]
fn a_failed_hedge_leg_records_its_error_and_its_own_duration() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let local = Arc::new(EchoModel::default());
    local.fail.store(true, Ordering::SeqCst);
    let (capture, response, _fake) =
        hedge_with_spans("first = \"local\"\nafter_ms = 5000\n", local, |fake| {
            fake.set_behavior(support::Behavior::SlowHeaders(Duration::from_millis(1500)));
        });
    assert_eq!(response.route, Route::Cloud);
    let spans = capture.spans("edgeroute.tier");
    let local_span = spans
        .iter()
        .find(|f| f["edgeroute.tier"] == "local")
        .unwrap();
    // A low-cardinality class, the message apart.
    assert_eq!(local_span["error.type"], "inference", "{local_span:?}");
    assert!(local_span["edgeroute.error"].contains("model exploded"));
    let cloud_span = spans
        .iter()
        .find(|f| f["edgeroute.tier"] == "cloud")
        .unwrap();
    assert!(!cloud_span.contains_key("error.type"), "{cloud_span:?}");
    let local_attempt = response
        .attempts
        .iter()
        .find(|a| a.route == Route::Local)
        .unwrap();
    assert!(local_attempt.error.is_some());
    // The local leg failed at once; the cloud answered 1.5 s later.
    assert!(
        local_attempt.elapsed < Duration::from_millis(750),
        "the failed local leg ran {:?}",
        local_attempt.elapsed
    );
    assert!(response.timings.total >= Duration::from_millis(1500));
}
