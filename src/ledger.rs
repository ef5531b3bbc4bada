//! The cost ledger: cloud spend per UTC day and month, persisted in sled, with budgets.
//!
//! Protocol for every cloud call: [`Ledger::reserve`] the estimated cost *before* calling (fails
//! with [`Error::BudgetExhausted`] when it would exceed a limit), then [`Ledger::settle`] the
//! actual cost afterwards (zero when the call failed without being billed).
//!
//! Guarantees:
//! - **No overspend under concurrency**: the limit check and the reservation are one sled
//!   transaction, so concurrent reservations cannot jointly exceed a limit (at most the settled
//!   actual costs can exceed their estimates).
//! - **No lost spend**: a reservation counts as spent at its estimate until settled, and both
//!   steps are flushed to disk before they return. A crash between them leaves the estimate
//!   counted (an open entry in [`SledLedger::entries`]).
//! - **Exact money**: amounts are [`Decimal`]s, stored in sled's 16-byte decimal encoding; no
//!   floating point anywhere.
//!
//! Spend is attributed to the UTC day (and month) of the reservation, also when settled later.
//!
//! Trees: `ledger/totals` (`d:YYYY-MM-DD` / `m:YYYY-MM` → decimal, `open` → count of unsettled
//! reservations) and `ledger/log` (reservation id → entry), updated together in one
//! transaction. [`SledLedger::status_at`] reads three keys: O(1), fine on every request.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::cache::Database;
use crate::error::{Error, Result};

/// Spend limits in USD; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetLimits {
    /// Limit per UTC calendar day.
    pub daily_usd: Option<Decimal>,
    /// Limit per UTC calendar month.
    pub monthly_usd: Option<Decimal>,
}

/// Where spending stands (`edgeroute budget --json` prints this). Amounts serialize as strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    /// The UTC day reported, `YYYY-MM-DD`.
    pub day: String,
    /// The UTC month reported, `YYYY-MM`.
    pub month: String,
    /// Spent today (settled actual costs + open reservations at their estimate).
    pub spent_today: Decimal,
    /// Spent this month (same rule).
    pub spent_month: Decimal,
    /// The daily limit, if any.
    pub daily_limit: Option<Decimal>,
    /// The monthly limit, if any.
    pub monthly_limit: Option<Decimal>,
    /// The smallest remaining amount over the configured limits (never negative); `None` when no
    /// limit is configured. This is the policy's `budget_left_usd` signal.
    pub left: Option<Decimal>,
    /// Reservations not settled yet (in flight, or orphaned by a crash).
    pub open_reservations: u64,
}

/// A reserved amount, to be settled exactly once with [`Ledger::settle`]. Dropping it unsettled
/// leaves the estimate counted as spent (the safe side).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "settle the reservation with the actual cost"]
pub struct Reservation {
    id: u64,
    estimate: Decimal,
}

impl Reservation {
    /// The ledger entry id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The reserved estimate.
    pub fn estimate(&self) -> Decimal {
        self.estimate
    }
}

/// One ledger entry (a reservation, possibly settled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// Entry id (increasing).
    pub id: u64,
    /// UTC day the spend is attributed to, `YYYY-MM-DD`.
    pub day: String,
    /// The estimate reserved.
    pub estimate: Decimal,
    /// The actual cost, once settled.
    pub actual: Option<Decimal>,
    /// When the reservation was made.
    #[serde(skip)]
    pub reserved_at: SystemTime,
}

impl LedgerEntry {
    /// What this entry counts for: the actual cost when settled, the estimate otherwise.
    pub fn counted(&self) -> Decimal {
        self.actual.unwrap_or(self.estimate)
    }
}

/// A cost ledger. Implementations must make `reserve` atomic with respect to the limits.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Reserves `estimate_usd` before a cloud call; [`Error::BudgetExhausted`] when it would take
    /// today's or this month's spend over its limit. Durable when it returns.
    async fn reserve(&self, estimate_usd: Decimal) -> Result<Reservation>;
    /// Replaces a reservation's estimate by the actual cost. Durable when it returns.
    async fn settle(&self, reservation: Reservation, actual_usd: Decimal) -> Result<()>;
    /// Spend and limits now.
    async fn status(&self) -> Result<BudgetStatus>;
}

/// The sled ledger.
///
/// Thread-safety: `Send + Sync`; share it behind an `Arc`. The sync methods (`*_at`,
/// [`SledLedger::settle_blocking`]) fsync before returning: from async code prefer the
/// [`Ledger`] trait methods, which flush on a dedicated group-commit thread
/// ([`Database::flush_async`]).
pub struct SledLedger {
    db: Database,
    totals: sled::Tree,
    log: sled::Tree,
    limits: RwLock<BudgetLimits>,
}

impl std::fmt::Debug for SledLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLedger")
            .field("path", &self.db.path())
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

/// Why a reservation transaction aborted.
enum Abort {
    Over {
        period: &'static str,
        spent: Decimal,
        limit: Decimal,
    },
    UnknownReservation,
    AlreadySettled,
    Corrupt,
}

/// Days a settled entry stays in the audit log ([`SledLedger::entries`]) after the day it was
/// reserved: this month's and last month's calls, whatever the day. A router removes older
/// ones when it opens the ledger ([`SledLedger::prune_at`]), so the log does not grow for good.
pub const KEEP_SETTLED_DAYS: i64 = 62;

const ENTRY_FORMAT: u8 = 1;
/// `ledger/totals` key of the number of unsettled reservations (u64 LE).
const OPEN_KEY: &[u8] = b"open";
const ENTRY_LEN: usize = 1 + 1 + 8 + 16 + 16 + 8;

impl SledLedger {
    /// Opens the ledger in `db` with `limits` (from the policy's `[budget]`).
    pub fn open(db: &Database, limits: BudgetLimits) -> Result<Self> {
        let tree = |name: &str| db.sled().open_tree(name).map_err(|e| storage(db.path(), e));
        Ok(SledLedger {
            totals: tree("ledger/totals")?,
            log: tree("ledger/log")?,
            db: db.clone(),
            limits: RwLock::new(limits),
        })
    }

    /// The configured limits.
    pub fn limits(&self) -> BudgetLimits {
        match self.limits.read() {
            Ok(l) => *l,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Replaces the limits (e.g. after a policy reload).
    pub fn set_limits(&self, limits: BudgetLimits) {
        match self.limits.write() {
            Ok(mut l) => *l = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
    }

    /// Reserves `estimate_usd` as of `at` and flushes (blocking). See [`Ledger::reserve`].
    pub fn reserve_at(&self, estimate_usd: Decimal, at: SystemTime) -> Result<Reservation> {
        let r = self.reserve_unflushed(estimate_usd, at)?;
        self.db.flush()?;
        Ok(r)
    }

    /// Settles and flushes (blocking). See [`Ledger::settle`].
    pub fn settle_blocking(&self, reservation: Reservation, actual_usd: Decimal) -> Result<()> {
        self.settle_unflushed(reservation, actual_usd)?;
        self.db.flush()
    }

    /// Spend and limits as of `at`. See [`Ledger::status`].
    pub fn status_at(&self, at: SystemTime) -> Result<BudgetStatus> {
        let day = epoch_day(at);
        let limits = self.limits();
        let spent_today = read_total(&self.totals, &day_key(day), self.db.path())?;
        let spent_month = read_total(&self.totals, &month_key(day), self.db.path())?;
        let left = [
            limits.daily_usd.map(|l| l - spent_today),
            limits.monthly_usd.map(|l| l - spent_month),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|l| l.max(Decimal::ZERO));
        let open_reservations = self
            .totals
            .get(OPEN_KEY)
            .map_err(|e| storage(self.db.path(), e))?
            .map_or(0, |v| decode_count(&v));
        Ok(BudgetStatus {
            day: day_string(day),
            month: month_string(day),
            spent_today,
            spent_month,
            daily_limit: limits.daily_usd,
            monthly_limit: limits.monthly_usd,
            left,
            open_reservations,
        })
    }

    /// Removes the audit log's settled entries reserved more than [`KEEP_SETTLED_DAYS`] days
    /// before `at`; returns how many. Unsettled ones stay (they count as spent until settled),
    /// and the daily and monthly totals are not touched.
    pub fn prune_at(&self, at: SystemTime) -> Result<usize> {
        let cutoff = epoch_day(at) - KEEP_SETTLED_DAYS;
        let storage_error = |e| storage(self.db.path(), e);
        let mut removed = 0;
        for item in self.log.iter() {
            let (id, raw) = item.map_err(storage_error)?;
            let Some(entry) = decode_entry(&raw) else {
                continue;
            };
            // Entries are kept in the order they were reserved: the rest are recent.
            if entry.day >= cutoff {
                break;
            }
            if entry.actual.is_some() {
                self.log.remove(&id).map_err(storage_error)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every ledger entry, oldest first (the audit log; settled entries older than
    /// [`KEEP_SETTLED_DAYS`] may have been pruned).
    pub fn entries(&self) -> Result<Vec<LedgerEntry>> {
        let mut out = Vec::new();
        for item in self.log.iter() {
            let (id, raw) = item.map_err(|e| storage(self.db.path(), e))?;
            let id = id_from_bytes(&id);
            match (id, decode_entry(&raw)) {
                (Some(id), Some(e)) => out.push(LedgerEntry {
                    id,
                    day: day_string(e.day),
                    estimate: e.estimate,
                    actual: e.actual,
                    reserved_at: UNIX_EPOCH + Duration::from_millis(e.reserved_at_ms),
                }),
                _ => {
                    return Err(Error::Storage {
                        path: self.db.path().to_path_buf(),
                        message: "undecodable cost-ledger entry".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Reserves now, without waiting for the reservation to be durable: the caller makes it
    /// durable with [`SledLedger::flush`] before the call it pays for, and meanwhile holds the
    /// reservation where a cancellation cannot lose it.
    pub(crate) fn reserve_now(&self, estimate: Decimal) -> Result<Reservation> {
        self.reserve_unflushed(estimate, SystemTime::now())
    }

    /// Settles `reservation`, not yet durable: [`SledLedger::flush`] makes it so.
    pub(crate) fn settle_now(&self, reservation: Reservation, actual: Decimal) -> Result<()> {
        self.settle_unflushed(reservation, actual)
    }

    /// Makes every reservation and settlement so far durable.
    pub(crate) async fn flush(&self) -> Result<()> {
        self.db.flush_async().await
    }

    fn reserve_unflushed(&self, estimate: Decimal, at: SystemTime) -> Result<Reservation> {
        if estimate.is_sign_negative() {
            return Err(Error::InvalidRequest(format!(
                "a cost estimate cannot be negative (got {estimate})"
            )));
        }
        let path = self.db.path();
        let id = self.db.sled().generate_id().map_err(|e| storage(path, e))?;
        let day = epoch_day(at);
        let (dk, mk) = (day_key(day), month_key(day));
        let limits = self.limits();
        let entry = Entry {
            day,
            estimate,
            actual: None,
            reserved_at_ms: millis(at),
        };
        let result = (&self.totals, &self.log).transaction(|(totals, log)| {
            let today = txn_total(totals, &dk)?;
            let month = txn_total(totals, &mk)?;
            for (period, spent, limit) in [
                ("daily", today, limits.daily_usd),
                ("monthly", month, limits.monthly_usd),
            ] {
                if let Some(limit) = limit {
                    if spent + estimate > limit {
                        return Err(ConflictableTransactionError::Abort(Abort::Over {
                            period,
                            spent,
                            limit,
                        }));
                    }
                }
            }
            totals.insert(dk.as_slice(), &(today + estimate).serialize()[..])?;
            totals.insert(mk.as_slice(), &(month + estimate).serialize()[..])?;
            log.insert(&id.to_be_bytes()[..], encode_entry(&entry).as_slice())?;
            let open = totals.get(OPEN_KEY)?.map_or(0, |v| decode_count(&v));
            totals.insert(OPEN_KEY, &(open + 1).to_le_bytes()[..])?;
            Ok(())
        });
        match result {
            Ok(()) => Ok(Reservation { id, estimate }),
            Err(TransactionError::Abort(Abort::Over {
                period,
                spent,
                limit,
            })) => Err(Error::BudgetExhausted(format!(
                "{period} limit ${limit}: ${spent} spent, this call is estimated at ${estimate}"
            ))),
            Err(e) => Err(txn_error(path, e)),
        }
    }

    fn settle_unflushed(&self, reservation: Reservation, actual: Decimal) -> Result<()> {
        if actual.is_sign_negative() {
            return Err(Error::InvalidRequest(format!(
                "an actual cost cannot be negative (got {actual})"
            )));
        }
        let path = self.db.path();
        let id = reservation.id.to_be_bytes();
        let result = (&self.totals, &self.log).transaction(|(totals, log)| {
            let raw = log
                .get(&id[..])?
                .ok_or(ConflictableTransactionError::Abort(
                    Abort::UnknownReservation,
                ))?;
            let mut entry =
                decode_entry(&raw).ok_or(ConflictableTransactionError::Abort(Abort::Corrupt))?;
            if entry.actual.is_some() {
                return Err(ConflictableTransactionError::Abort(Abort::AlreadySettled));
            }
            let delta = actual - entry.estimate;
            for key in [day_key(entry.day), month_key(entry.day)] {
                let total = txn_total(totals, &key)? + delta;
                totals.insert(key.as_slice(), &total.serialize()[..])?;
            }
            entry.actual = Some(actual);
            log.insert(&id[..], encode_entry(&entry).as_slice())?;
            let open = totals.get(OPEN_KEY)?.map_or(0, |v| decode_count(&v));
            totals.insert(OPEN_KEY, &open.saturating_sub(1).to_le_bytes()[..])?;
            Ok(())
        });
        result.map_err(|e| txn_error(path, e))
    }
}

#[async_trait]
impl Ledger for SledLedger {
    async fn reserve(&self, estimate_usd: Decimal) -> Result<Reservation> {
        let r = self.reserve_unflushed(estimate_usd, SystemTime::now())?;
        self.db.flush_async().await?;
        Ok(r)
    }

    async fn settle(&self, reservation: Reservation, actual_usd: Decimal) -> Result<()> {
        self.settle_unflushed(reservation, actual_usd)?;
        self.db.flush_async().await
    }

    async fn status(&self) -> Result<BudgetStatus> {
        self.status_at(SystemTime::now())
    }
}

/// A stored log entry.
struct Entry {
    day: i64,
    estimate: Decimal,
    actual: Option<Decimal>,
    reserved_at_ms: u64,
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_LEN);
    out.push(ENTRY_FORMAT);
    out.push(u8::from(e.actual.is_some()));
    out.extend_from_slice(&e.day.to_le_bytes());
    out.extend_from_slice(&e.estimate.serialize());
    out.extend_from_slice(&e.actual.unwrap_or(Decimal::ZERO).serialize());
    out.extend_from_slice(&e.reserved_at_ms.to_le_bytes());
    out
}

fn decode_entry(raw: &[u8]) -> Option<Entry> {
    if raw.len() != ENTRY_LEN || raw[0] != ENTRY_FORMAT || raw[1] > 1 {
        return None;
    }
    let day = i64::from_le_bytes(raw[2..10].try_into().ok()?);
    let estimate = Decimal::deserialize(raw[10..26].try_into().ok()?);
    let actual = Decimal::deserialize(raw[26..42].try_into().ok()?);
    let reserved_at_ms = u64::from_le_bytes(raw[42..50].try_into().ok()?);
    Some(Entry {
        day,
        estimate,
        actual: (raw[1] == 1).then_some(actual),
        reserved_at_ms,
    })
}

fn decode_count(raw: &[u8]) -> u64 {
    <[u8; 8]>::try_from(raw)
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn id_from_bytes(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn read_total(totals: &sled::Tree, key: &[u8], path: &std::path::Path) -> Result<Decimal> {
    let raw = totals.get(key).map_err(|e| storage(path, e))?;
    Ok(raw.map(|v| decimal_from(&v)).unwrap_or(Decimal::ZERO))
}

fn txn_total(
    totals: &TransactionalTree,
    key: &[u8],
) -> std::result::Result<Decimal, ConflictableTransactionError<Abort>> {
    match totals.get(key)? {
        None => Ok(Decimal::ZERO),
        Some(v) if v.len() == 16 => Ok(decimal_from(&v)),
        Some(_) => Err(ConflictableTransactionError::Abort(Abort::Corrupt)),
    }
}

fn decimal_from(raw: &[u8]) -> Decimal {
    <[u8; 16]>::try_from(raw)
        .map(Decimal::deserialize)
        .unwrap_or(Decimal::ZERO)
}

fn storage(path: &std::path::Path, e: sled::Error) -> Error {
    Error::Storage {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn txn_error(path: &std::path::Path, e: TransactionError<Abort>) -> Error {
    let message = match e {
        TransactionError::Storage(e) => return storage(path, e),
        TransactionError::Abort(Abort::Over { period, .. }) => {
            format!("{period} budget exceeded")
        }
        TransactionError::Abort(Abort::UnknownReservation) => {
            "settling a reservation the ledger does not know".into()
        }
        TransactionError::Abort(Abort::AlreadySettled) => {
            "this reservation was already settled".into()
        }
        TransactionError::Abort(Abort::Corrupt) => "a cost-ledger record is corrupted".into(),
    };
    Error::Storage {
        path: path.to_path_buf(),
        message,
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Days since 1970-01-01 (UTC) of `t`.
fn epoch_day(t: SystemTime) -> i64 {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    secs.div_euclid(86_400)
}

/// (year, month, day) of an epoch day (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn day_string(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

fn month_string(day: i64) -> String {
    let (y, m, _) = civil_from_days(day);
    format!("{y:04}-{m:02}")
}

fn day_key(day: i64) -> Vec<u8> {
    format!("d:{}", day_string(day)).into_bytes()
}

fn month_key(day: i64) -> Vec<u8> {
    format!("m:{}", month_string(day)).into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(59), "1970-03-01");
        assert_eq!(day_string(11_016), "2000-02-29");
        assert_eq!(day_string(20_484), "2026-01-31");
        assert_eq!(month_string(20_485), "2026-02");
        assert_eq!(day_string(-1), "1969-12-31");
        let t = UNIX_EPOCH + Duration::from_secs(20_484 * 86_400 + 86_399);
        assert_eq!(day_string(epoch_day(t)), "2026-01-31");
    }

    #[test]
    fn entry_roundtrip() {
        let e = Entry {
            day: 20_000,
            estimate: Decimal::new(12_345, 6),
            actual: Some(Decimal::new(1, 7)),
            reserved_at_ms: 42,
        };
        let d = decode_entry(&encode_entry(&e)).unwrap();
        assert_eq!((d.day, d.estimate, d.actual), (e.day, e.estimate, e.actual));
        assert!(decode_entry(&encode_entry(&e)[1..]).is_none());
    }
}
