//! edgeroute
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod backend;
pub mod decision;
pub mod error;
pub mod home;
pub mod inspect;
pub mod policy;
pub mod privacy;
pub mod request;
pub mod router;
pub mod signals;
pub mod stats;
mod wiring;

pub use error::{Error, Result};
pub use request::{Request, Response, Route};
pub use router::{Router, RouterBuilder};
