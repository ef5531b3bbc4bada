//! Shows: plugging your own model into a tier by implementing the `Backend` trait.
//! Needs: nothing (the backend here is a tiny rule-based responder).
//! Run: `cargo run --example custom_backend`

use std::sync::Arc;

use edgeroute::backend::{
    Backend, BackendCall, EventStream, FinishReason, Generation, StreamEvent,
};
use edgeroute::request::Usage;
use edgeroute::{Request, Router};

/// A "model" that answers arithmetic questions and streams its answer word by word.
struct Calculator;

#[async_trait::async_trait]
impl Backend for Calculator {
    fn name(&self) -> &str {
        "calculator-v1"
    }

    async fn stream(&self, call: BackendCall) -> edgeroute::Result<EventStream> {
        let prompt = call
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let numbers: Vec<i64> = prompt
            .split(|c: char| !c.is_ascii_digit() && c != '-')
            .filter_map(|s| s.parse().ok())
            .collect();
        let answer = format!("The sum is {}.", numbers.iter().sum::<i64>());
        let words: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
        let done = Generation {
            text: String::new(),
            usage: Usage::new(prompt.len() as u64 / 4, words.len() as u64),
            usage_estimated: true,
            confidence: None,
            finish: FinishReason::Stop,
        };
        let events = words
            .into_iter()
            .map(|w| Ok(StreamEvent::Delta(w)))
            .chain([Ok(StreamEvent::Done(done))]);
        Ok(Box::pin(futures::stream::iter(events.collect::<Vec<_>>())))
    }
}

#[tokio::main]
async fn main() -> edgeroute::Result<()> {
    let router = Router::builder()
        .policy_str("[defaults]\nroute = \"local\"\npin = true\n")
        .local_backend(Arc::new(Calculator))
        .cache(false)
        .build()?;
    let response = router
        .complete(Request::new("What is 17 + 25 + 100?"))
        .await?;
    println!("{}", response.text);
    println!(
        "answered by {} ({}) — {}",
        response.route, response.attempts[0].backend, response.decision
    );
    Ok(())
}
