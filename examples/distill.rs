//! Shows: the teacher log. The cloud's answers are kept, as the provider saw them, to distil the
//! local model from: here a cascade escalates the device's unsure answers, one request is
//! redacted, and the log is exported as chat fine-tuning JSONL.
//! Needs: nothing (both tiers are small stand-ins; the home is a temporary directory).
//! Run: `cargo run --example distill`

use std::sync::Arc;

use edgeroute::backend::{
    Backend, BackendCall, EventStream, FinishReason, Generation, StreamEvent,
};
use edgeroute::cache::{Database, EncryptionKey};
use edgeroute::distill::{DistillConfig, TeacherLog};
use edgeroute::request::{Confidence, Usage};
use edgeroute::{Request, Router};

/// A small model that is only sure of its greetings.
struct Student;

/// A large model that answers everything (it sees placeholders, never the address).
struct Teacher;

fn answer(text: String, confidence: Option<Confidence>) -> EventStream {
    let done = Generation {
        text: String::new(),
        usage: Usage::new(20, 8),
        usage_estimated: false,
        confidence,
        finish: FinishReason::Stop,
    };
    Box::pin(futures::stream::iter([
        Ok(StreamEvent::Delta(text)),
        Ok(StreamEvent::Done(done)),
    ]))
}

fn last_message(call: &BackendCall) -> String {
    call.messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Backend for Student {
    fn name(&self) -> &str {
        "student-135m"
    }
    async fn stream(&self, call: BackendCall) -> edgeroute::Result<EventStream> {
        let greeting = last_message(&call).starts_with("Hello");
        let logprob = if greeting { -0.1 } else { -2.5 };
        Ok(answer(
            "I think so.".into(),
            Confidence::from_logprobs(&[logprob; 4], 4),
        ))
    }
}

#[async_trait::async_trait]
impl Backend for Teacher {
    fn name(&self) -> &str {
        "teacher-xl"
    }
    async fn stream(&self, call: BackendCall) -> edgeroute::Result<EventStream> {
        let text = match last_message(&call) {
            q if q.contains("<EMAIL_1>") => "Dear <EMAIL_1>, the meeting moves to 3 pm.".into(),
            q => format!("A careful answer to: {q}"),
        };
        Ok(answer(text, None))
    }
}

const POLICY: &str = r#"
# The cloud tier is the app's own backend here; its prices still count the cost.
[cloud]
model = "teacher-xl"
input_usd_per_mtok = "2.50"
output_usd_per_mtok = "10.00"

[distill]
collect = true

[[rule]]
name = "mail-redacted"
route = "cloud"
redact = true
[rule.when]
pii_any = ["email"]

[defaults]
route = "cascade"
min_confidence = -1.0
"#;

#[tokio::main]
async fn main() -> edgeroute::Result<()> {
    let home = tempfile::tempdir().map_err(|e| edgeroute::Error::io("a temporary home", e))?;
    let router = Router::builder()
        .policy_str(POLICY)
        .local_backend(Arc::new(Student))
        .cloud_backend(Arc::new(Teacher))
        .home(home.path())
        .build()?;
    for prompt in [
        "Hello there!",
        "Why is the sky blue?",
        "Tell ann@example.com the meeting moved to 3 pm.",
    ] {
        let response = router.complete(Request::new(prompt)).await?;
        println!(
            "Q: {prompt}\nA: {}\n   [{}]\n",
            response.text, response.decision
        );
    }
    router.shutdown().await?;
    drop(router);

    // What `edgeroute distill export` does: every kept sample, oldest first.
    let db = Database::open(&edgeroute::home::db_dir(home.path()))?;
    let key = EncryptionKey::load_or_create(&edgeroute::home::teacher_key_file(home.path()))?;
    let log = TeacherLog::open(&db, key, DistillConfig::default())?;
    println!(
        "teacher log ({} samples), as JSONL with metadata:",
        log.stats().samples
    );
    log.export_jsonl(&mut std::io::stdout(), true)?;
    Ok(())
}
