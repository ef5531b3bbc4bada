//! Assembling tiers and stores from a compiled policy (kept out of the router so the request
//! path reads top to bottom).

use std::path::Path;

use rust_decimal::Decimal;

use crate::backend::{CloudTier, LocalTier};
use crate::error::Result;
use crate::inspect::Features;
use crate::policy::CompiledPolicy;
use crate::request::{Request, Route};

/// The local tier named by `[local]` (not loaded until first use).
pub(crate) fn local_from_policy(
    _policy: &CompiledPolicy,
    _home: &Path,
) -> Result<Option<LocalTier>> {
    Ok(None)
}

/// The cloud tier named by `[cloud]`.
pub(crate) fn cloud_from_policy(
    _policy: &CompiledPolicy,
    _url: Option<&str>,
) -> Result<Option<CloudTier>> {
    Ok(None)
}

/// Answer cache + cost ledger.
#[derive(Clone)]
pub(crate) struct Store;

/// A cache key.
pub(crate) struct Key;

/// A budget reservation.
pub(crate) struct Reservation;

impl Store {
    pub(crate) fn key_for(&self, _p: &CompiledPolicy, _r: &Request, _f: &Features) -> Key {
        Key
    }
    pub(crate) fn lookup(&self, _k: &Key) -> Option<String> {
        None
    }
    pub(crate) fn save(
        &self,
        _k: &Key,
        _p: &CompiledPolicy,
        _f: &Features,
        _text: &str,
        _route: Route,
    ) {
    }
    pub(crate) fn reserve(&self, _estimate: Decimal) -> Result<Option<Reservation>> {
        Ok(None)
    }
    pub(crate) fn settle(&self, _r: Option<Reservation>, _actual: Decimal) {}
    pub(crate) fn budget_left(&self) -> Option<Decimal> {
        None
    }
}

/// Opens the store under `<home>/db`.
pub(crate) fn open_store(
    _policy: &CompiledPolicy,
    _home: &Path,
    _key: Option<[u8; 32]>,
) -> Result<Option<Store>> {
    Ok(None)
}
