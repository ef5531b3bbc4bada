//! Shared test support: a labeled PII corpus generator, a deterministic app-supplied local
//! backend, and (with the `cloud` feature) a fake cloud provider on 127.0.0.1.
#![allow(dead_code, unused_imports)]

pub mod corpus;
pub mod echo;
#[cfg(feature = "cloud")]
pub mod provider;
#[cfg(feature = "cloud")]
pub use provider::*;
