//! A deterministic app-supplied local backend (the `Backend` extension point) for router tests
//! that are about routing, not about the model: answers "echo: <prompt>", counts calls, and can
//! be told to fail.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use edgeroute::backend::{
    Backend, BackendCall, EventStream, FinishReason, Generation, StreamEvent,
};
use edgeroute::request::{Confidence, Usage};
use edgeroute::Error;

/// See the module docs.
#[derive(Default)]
pub struct EchoModel {
    /// Calls received.
    pub calls: AtomicUsize,
    /// Fail every call.
    pub fail: AtomicBool,
    /// Log-probability reported for every token (confidence).
    pub logprob_milli: std::sync::atomic::AtomicI32,
    /// Per-token log-probabilities and the first sentence's length in tokens, reported
    /// instead of `logprob_milli` when set (so the confidence statistics differ).
    pub logprobs: std::sync::Mutex<Option<(Vec<f32>, usize)>>,
    /// The build it reports as its [`Backend::revision`].
    pub revision: Option<String>,
    /// Answer with no text at all.
    pub empty: AtomicBool,
    /// Never return from `stream` (a model load that does not finish).
    pub stall: AtomicBool,
}

impl EchoModel {
    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Backend for EchoModel {
    fn name(&self) -> &str {
        "echo-model"
    }
    fn revision(&self) -> Option<String> {
        self.revision.clone()
    }
    async fn stream(&self, call: BackendCall) -> edgeroute::Result<EventStream> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.stall.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Inference("model exploded".into()));
        }
        let prompt = call
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let lp = self.logprob_milli.load(Ordering::SeqCst) as f32 / 1000.0;
        let confidence = match &*self.logprobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((lps, first_sentence)) => Confidence::from_logprobs(lps, *first_sentence),
            None => Confidence::from_logprobs(&[lp, lp, lp], 3),
        };
        let done = Generation {
            text: String::new(),
            usage: Usage::new(7, 3),
            usage_estimated: false,
            confidence,
            finish: FinishReason::Stop,
        };
        let events = if self.empty.load(Ordering::SeqCst) {
            vec![Ok(StreamEvent::Done(done))]
        } else {
            vec![
                Ok(StreamEvent::Delta("echo".into())),
                Ok(StreamEvent::Delta(": ".into())),
                Ok(StreamEvent::Delta(prompt)),
                Ok(StreamEvent::Done(done)),
            ]
        };
        Ok(Box::pin(futures::stream::iter(events)))
    }
}
