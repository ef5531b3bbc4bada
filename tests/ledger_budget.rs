//! The cost ledger on a real sled database: reserve/settle, limits, periods, persistence,
//! and no overspend under concurrent reservations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeroute::cache::Database;
use edgeroute::ledger::{BudgetLimits, Ledger, SledLedger};
use edgeroute::Error;
use rust_decimal::Decimal;

fn usd(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// 2026-01-31 12:00 UTC plus `days`.
fn at(days: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs((20_484 + days) * 86_400 + 43_200)
}

fn limits(daily: Option<&str>, monthly: Option<&str>) -> BudgetLimits {
    BudgetLimits {
        daily_usd: daily.map(usd),
        monthly_usd: monthly.map(usd),
    }
}

#[test]
fn reserve_settle_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let ledger = SledLedger::open(&db, limits(Some("1.00"), Some("10.00"))).unwrap();
    let s = ledger.status_at(at(0)).unwrap();
    assert_eq!(s.spent_today, Decimal::ZERO);
    assert_eq!(s.left, Some(usd("1.00")));

    let r = ledger.reserve_at(usd("0.30"), at(0)).unwrap();
    assert_eq!(r.estimate(), usd("0.30"));
    // An open reservation counts as spent.
    let s = ledger.status_at(at(0)).unwrap();
    assert_eq!((s.spent_today, s.open_reservations), (usd("0.30"), 1));
    assert_eq!(s.left, Some(usd("0.70")));
    ledger.settle_blocking(r, usd("0.000125")).unwrap();
    let s = ledger.status_at(at(0)).unwrap();
    assert_eq!(s.spent_today, usd("0.000125"));
    assert_eq!(s.spent_month, usd("0.000125"));
    assert_eq!(s.open_reservations, 0);
    assert_eq!(s.day, "2026-01-31");
    assert_eq!(s.month, "2026-01");

    // Exact decimal sums: 10 x 0.1 is exactly 1.0 (no float drift).
    let ledger2 = SledLedger::open(&db, BudgetLimits::default()).unwrap();
    for _ in 0..10 {
        let r = ledger2.reserve_at(usd("0.1"), at(1)).unwrap();
        ledger2.settle_blocking(r, usd("0.1")).unwrap();
    }
    let s = ledger2.status_at(at(1)).unwrap();
    assert_eq!(s.spent_today, usd("1.0"));
    assert_eq!(s.left, None, "no limits configured → no left");
    // 2026-02-01 is a new month.
    assert_eq!(s.month, "2026-02");
    assert_eq!(s.spent_month, usd("1.0"));

    let entries = ledger.entries().unwrap();
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[0].actual, Some(usd("0.000125")));
    assert_eq!(entries[0].day, "2026-01-31");

    // Negative amounts are rejected.
    assert!(matches!(
        ledger.reserve_at(usd("-1"), at(0)),
        Err(Error::InvalidRequest(_))
    ));
}

#[test]
fn limits_refuse_reservations_that_would_exceed_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let ledger = SledLedger::open(&db, limits(Some("1.00"), Some("1.50"))).unwrap();
    let a = ledger.reserve_at(usd("0.60"), at(0)).unwrap();
    match ledger.reserve_at(usd("0.50"), at(0)) {
        Err(Error::BudgetExhausted(msg)) => assert!(msg.contains("daily"), "{msg}"),
        other => panic!("expected BudgetExhausted, got {other:?}"),
    }
    // Exactly up to the limit is allowed.
    let b = ledger.reserve_at(usd("0.40"), at(0)).unwrap();
    assert_eq!(ledger.status_at(at(0)).unwrap().left, Some(Decimal::ZERO));
    // Settling below the estimate frees budget.
    ledger.settle_blocking(a, usd("0.10")).unwrap();
    ledger.settle_blocking(b, usd("0.10")).unwrap();
    assert_eq!(ledger.status_at(at(0)).unwrap().left, Some(usd("0.80")));
    // Next day: the daily budget is fresh, the monthly one is not (2026-01-31 → 2026-02-01 is a
    // new month, so use a same-month pair instead).
    let day1 = UNIX_EPOCH + Duration::from_secs(20_480 * 86_400); // 2026-01-27
    let day2 = UNIX_EPOCH + Duration::from_secs(20_481 * 86_400); // 2026-01-28
    let ledger = SledLedger::open(&db, limits(Some("1.00"), Some("1.50"))).unwrap();
    ledger.reserve_at(usd("0.90"), day1).unwrap().estimate();
    let s = ledger.status_at(day2).unwrap();
    assert_eq!(s.spent_today, Decimal::ZERO);
    // Month so far: 0.20 (the 31st) + 0.90 (the 27th) = 1.10 → 0.40 left on the monthly limit.
    assert_eq!(s.spent_month, usd("1.10"));
    assert_eq!(s.left, Some(usd("0.40")));
    match ledger.reserve_at(usd("0.50"), day2) {
        Err(Error::BudgetExhausted(msg)) => assert!(msg.contains("monthly"), "{msg}"),
        other => panic!("expected BudgetExhausted, got {other:?}"),
    }
    // Actual costs above the estimate can push spend over the limit; left never goes negative.
    let r = ledger.reserve_at(usd("0.40"), day2).unwrap();
    ledger.settle_blocking(r, usd("0.90")).unwrap();
    let s = ledger.status_at(day2).unwrap();
    assert_eq!(s.spent_month, usd("2.00"));
    assert_eq!(s.left, Some(Decimal::ZERO));
    // Raising the limits (policy reload) takes effect at once.
    ledger.set_limits(limits(Some("5"), Some("5")));
    assert!(ledger.reserve_at(usd("0.50"), day2).is_ok());
}

#[test]
fn reservations_and_settlements_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open_id;
    {
        let db = Database::open(dir.path()).unwrap();
        let ledger = SledLedger::open(&db, BudgetLimits::default()).unwrap();
        let settled = ledger.reserve_at(usd("0.25"), at(0)).unwrap();
        ledger.settle_blocking(settled, usd("0.20")).unwrap();
        // Simulates a crash between reserve and settle: the reservation is never settled.
        let orphan = ledger.reserve_at(usd("0.75"), at(0)).unwrap();
        open_id = orphan.id();
        drop(orphan);
    }
    let db = Database::open(dir.path()).unwrap();
    let ledger = SledLedger::open(&db, BudgetLimits::default()).unwrap();
    let s = ledger.status_at(at(0)).unwrap();
    assert_eq!(
        s.spent_today,
        usd("0.95"),
        "the orphaned estimate must count as spent"
    );
    assert_eq!(s.open_reservations, 1);
    let open: Vec<_> = ledger
        .entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.actual.is_none())
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, open_id);
    assert_eq!(open[0].counted(), usd("0.75"));
}

#[test]
fn status_serializes_for_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let ledger = SledLedger::open(&db, limits(Some("2"), None)).unwrap();
    let r = ledger.reserve_at(usd("0.5"), at(0)).unwrap();
    ledger.settle_blocking(r, usd("0.25")).unwrap();
    let json = serde_json::to_value(ledger.status_at(at(0)).unwrap()).unwrap();
    assert_eq!(json["spent_today"], "0.25");
    assert_eq!(json["daily_limit"], "2");
    assert_eq!(json["monthly_limit"], serde_json::Value::Null);
    assert_eq!(json["left"], "1.75");
    assert_eq!(json["day"], "2026-01-31");
}

/// 8 tasks race to reserve $0.01 each against a $5.00 daily limit: exactly 500 succeed, the
/// rest get BudgetExhausted, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_cannot_overspend() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let ledger = Arc::new(SledLedger::open(&db, limits(Some("5.00"), Some("100"))).unwrap());
    let mut handles = Vec::new();
    for t in 0..8 {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            for i in 0..100 {
                match ledger.reserve(usd("0.01")).await {
                    Ok(r) => {
                        ok += 1;
                        // Half are settled at the estimate, half left open (in flight).
                        if (t + i) % 2 == 0 {
                            ledger.settle(r, usd("0.01")).await.unwrap();
                        }
                    }
                    Err(Error::BudgetExhausted(_)) => refused += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for h in handles {
        let (o, r) = h.await.unwrap();
        ok += o;
        refused += r;
    }
    assert_eq!(ok, 500);
    assert_eq!(refused, 300);
    let s = ledger.status().await.unwrap();
    assert_eq!(s.spent_today, usd("5.00"));
    assert_eq!(s.left, Some(Decimal::ZERO));
    let entries = ledger.entries().unwrap();
    assert_eq!(entries.len(), 500);
    let counted: Decimal = entries.iter().map(|e| e.counted()).sum();
    assert_eq!(counted, s.spent_today);
    let open = entries.iter().filter(|e| e.actual.is_none()).count() as u64;
    assert_eq!(s.open_reservations, open);
}

/// The audit log keeps settled entries for `KEEP_SETTLED_DAYS` days: older ones are removed by
/// `prune_at` (which a router runs when it opens the ledger), unsettled ones stay whatever
/// their age, and this day's and month's totals do not change.
#[test]
fn old_settled_entries_are_pruned_and_nothing_else() {
    use edgeroute::ledger::KEEP_SETTLED_DAYS;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path()).unwrap();
    let ledger = SledLedger::open(&db, limits(Some("100"), None)).unwrap();
    let today = 200;
    let old = today - KEEP_SETTLED_DAYS as u64 - 1;
    let kept = today - KEEP_SETTLED_DAYS as u64;
    let settled_old = ledger.reserve_at(usd("1"), at(old)).unwrap();
    ledger.settle_blocking(settled_old, usd("0.5")).unwrap();
    let _open_old = ledger.reserve_at(usd("2"), at(old)).unwrap();
    let settled_kept = ledger.reserve_at(usd("3"), at(kept)).unwrap();
    ledger.settle_blocking(settled_kept, usd("3")).unwrap();
    let settled_today = ledger.reserve_at(usd("4"), at(today)).unwrap();
    ledger.settle_blocking(settled_today, usd("1.25")).unwrap();
    let before = ledger.status_at(at(today)).unwrap();

    assert_eq!(ledger.prune_at(at(today)).unwrap(), 1);
    let left: Vec<_> = ledger
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| (e.estimate, e.actual))
        .collect();
    assert_eq!(
        left,
        [
            (usd("2"), None),
            (usd("3"), Some(usd("3"))),
            (usd("4"), Some(usd("1.25")))
        ]
    );
    let after = ledger.status_at(at(today)).unwrap();
    assert_eq!(
        (
            after.spent_today,
            after.spent_month,
            after.open_reservations
        ),
        (
            before.spent_today,
            before.spent_month,
            before.open_reservations
        )
    );
    assert_eq!(after.spent_today, usd("1.25"));
    // Nothing more to remove.
    assert_eq!(ledger.prune_at(at(today)).unwrap(), 0);
}

/// A router prunes the ledger it opens.
#[test]
fn a_router_prunes_its_ledger_when_it_opens_it() {
    let home = tempfile::tempdir().unwrap();
    let db_dir = edgeroute::home::db_dir(home.path());
    let long_ago = SystemTime::now() - Duration::from_secs(400 * 86_400);
    {
        let db = Database::open(&db_dir).unwrap();
        let ledger = SledLedger::open(&db, limits(Some("100"), None)).unwrap();
        let r = ledger.reserve_at(usd("1"), long_ago).unwrap();
        ledger.settle_blocking(r, usd("1")).unwrap();
        assert_eq!(ledger.entries().unwrap().len(), 1);
    }
    let router = edgeroute::Router::builder()
        .policy_str("[defaults]\nroute = \"local\"\n")
        .load_local_model(false)
        .home(home.path())
        .cache_key([1; 32])
        .build()
        .unwrap();
    let db = Database::open(&db_dir).unwrap();
    let ledger = SledLedger::open(&db, limits(Some("100"), None)).unwrap();
    assert!(ledger.entries().unwrap().is_empty());
    drop(router);
}
