//! # edgeroute
//!
//! Per-request routing between a small model running **on the device** (ONNX Runtime,
//! in-process) and a large **cloud** model API, decided by latency, privacy and cost policies
//! written in TOML, with an encrypted answer cache in sled.
//!
//! Every request goes through one pipeline, in [`Router`]:
//!
//! ```text
//! Request ─▶ inspect ─▶ decide ─▶ cache ─▶ execute ─▶ record ─▶ Response
//! ```
//!
//! - **inspect** ([`inspect`]): PII and secret scan ([`privacy`]), prompt token estimate,
//!   deadline, tags and task → [`inspect::Features`].
//! - **decide** ([`policy::decide`]): a pure function of the compiled policy, the features and
//!   the live [`signals::Signals`]; returns a [`decision::Decision`] naming the rule that fired
//!   and typed [`decision::Reason`]s with the inputs that made it fire.
//! - **cache**: exact-match lookup of an earlier answer of the same privacy class, given under
//!   the same kind of plan (after the decision, so that a refusal is never answered from the
//!   cache, nor a cloud-pinned request with the device's answer).
//! - **execute**: runs the [`decision::Plan`] — local, cloud (optionally redacted), cascade
//!   (local first, escalate on low confidence) or hedge — with explicit fallbacks that never
//!   cross a privacy pin. The cloud tier can only be called with a
//!   [`decision::CloudClearance`], which only a decision that allows the cloud carries.
//! - **record**: cache write, cost ledger, statistics ([`Router::stats`]), the latency
//!   estimates the next decisions read (remembered in the home's database for the next router
//!   there; [`Router::calibrate`] measures the local model up front) and, opt-in, the teacher
//!   log of cloud answers to distil the local model from ([`distill`]).
//!
//! The [`Response`] says what answered ([`Route`]), why, how long each stage took, the usage,
//! the decimal-exact cost and the local model's confidence.
//!
//! ```
//! use std::sync::Arc;
//! use edgeroute::backend::{Backend, BackendCall, EventStream, FinishReason, Generation, StreamEvent};
//! use edgeroute::{Request, Route, Router};
//!
//! // Any model can be a tier; the ONNX model and the cloud providers are built in.
//! struct Echo;
//! #[async_trait::async_trait]
//! impl Backend for Echo {
//!     fn name(&self) -> &str { "echo" }
//!     async fn stream(&self, call: BackendCall) -> edgeroute::Result<EventStream> {
//!         let text = format!("you said: {}", call.messages.last().map(|m| m.content.as_str()).unwrap_or(""));
//!         let done = Generation { text: String::new(), usage: Default::default(), usage_estimated: false,
//!                                 confidence: None, finish: FinishReason::Stop };
//!         Ok(Box::pin(futures::stream::iter([Ok(StreamEvent::Delta(text)), Ok(StreamEvent::Done(done))])))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let router = Router::builder()
//!     .policy_str(r#"
//!         [[rule]]
//!         name = "private-stays-local"
//!         route = "local"
//!         pin = true
//!         [rule.when]
//!         pii = true
//!     "#)
//!     .local_backend(Arc::new(Echo))
//!     .cache(false)
//!     .build()?;
//! let response = router.complete(Request::new("mail ann@example.com")).await?;
//! assert_eq!(response.route, Route::Local);
//! assert_eq!(response.decision.rule, "private-stays-local");
//! println!("{} — {}", response.text, response.decision);
//! # Ok::<(), edgeroute::Error>(()) }).unwrap();
//! ```
//!
//! Features: `onnx` (the local ONNX Runtime tier) and `cloud` (the HTTP providers), both on by
//! default. With `--no-default-features` the policy engine, privacy scanner and cache still
//! build and work.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod cache;
pub mod calibrate;
pub mod decision;
pub mod distill;
pub mod error;
pub mod home;
pub mod inspect;
mod latency_memory;
pub mod ledger;
pub mod policy;
pub mod privacy;
pub mod request;
pub mod router;
pub mod signals;
pub mod stats;
mod wiring;

pub use error::{Error, Result};
pub use request::{Message, Request, Response, Role, Route};
pub use router::{Router, RouterBuilder, RouterEvent};
