//! edgeroute
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod backend;
pub mod cache;
pub mod decision;
pub mod error;
pub mod home;
pub mod ledger;
pub mod policy;
pub mod privacy;
pub mod request;
pub mod signals;

pub use error::{Error, Result};
