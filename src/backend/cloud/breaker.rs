//! A circuit breaker: closed → open → half-open → closed, plus the connectivity flag.
//!
//! * **Closed**: calls flow; outcomes are recorded. `consecutive_failures` failures in a row,
//!   or a failure share of at least `failure_ratio` over the last `window` outcomes (once
//!   `min_calls` are in), open it.
//! * **Open**: calls fail fast with [`Error::CircuitOpen`] for `open_for`.
//! * **Half-open**: up to `half_open_probes` calls go through; a success closes the breaker, a
//!   failure opens it again. A probe dropped without an outcome frees its slot.
//!
//! Connectivity: a failure to connect marks the network offline for `offline_for`; then it
//! reads online again and the next attempt probes it (re-arming the flag while in flight, so
//! other decisions keep routing locally). Any HTTP answer marks it online.
//!
//! Silence: how long the provider has been asked without answering — the wall-clock time
//! covered by attempts that ended with no answer (a timeout, a lost connection) since the last
//! attempt that got one. Overlapping attempts count once, and time with no attempt in flight
//! does not count. The backend uses it to tell a hung provider from callers' tight deadlines
//! (see `Clock::settle` in the backend).
//!
//! Thread-safe: one breaker is shared by every call of a backend.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::BreakerConfig;
use crate::error::Error;
use crate::signals::{CloudHealth, Network};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// Probe calls are allowed.
    HalfOpen,
}

impl BreakerState {
    /// The health signal the policy sees.
    pub fn health(self) -> CloudHealth {
        match self {
            BreakerState::Closed => CloudHealth::Healthy,
            BreakerState::HalfOpen => CloudHealth::Degraded,
            BreakerState::Open => CloudHealth::Down,
        }
    }
}

#[derive(Debug)]
struct State {
    mode: Mode,
    consecutive: u32,
    window: VecDeque<bool>,
    /// Offline until then (`None`: online).
    offline_until: Option<Instant>,
    silence: Silence,
    /// The provider's silence in answers it had started, since its last whole answer (a
    /// first token does not end it: a provider that starts every answer and finishes none is
    /// silent here).
    stalled: Silence,
}

/// The provider's silence since its last answer. See the module docs.
#[derive(Debug, Default)]
struct Silence {
    /// Wall-clock time covered by unanswered attempts since the last answer.
    total: Duration,
    /// The latest instant counted so far: the end of the last unanswered attempt, or the last
    /// answer. Time before it is never counted again.
    counted_until: Option<Instant>,
}

impl Silence {
    /// Counts the silent span `since..now` (what was already counted, once), returning the
    /// total.
    fn add(&mut self, since: Instant, now: Instant) -> Duration {
        let from = match self.counted_until {
            Some(t) => since.max(t),
            None => since,
        };
        self.total = self
            .total
            .saturating_add(now.saturating_duration_since(from));
        self.counted_until = Some(self.counted_until.map_or(now, |t| t.max(now)));
        self.total
    }

    /// An answer came at `now`: nothing before it counts.
    fn reset(&mut self, now: Instant) {
        *self = Silence {
            total: Duration::ZERO,
            counted_until: Some(now),
        };
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

/// The circuit breaker. See the module docs.
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: BreakerConfig,
    state: Mutex<State>,
}

/// Permission for one attempt. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it reports nothing (and frees a half-open probe slot).
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Breaker {
    pub(crate) fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: Mutex::new(State {
                mode: Mode::Closed,
                consecutive: 0,
                window: VecDeque::new(),
                offline_until: None,
                silence: Silence::default(),
                stalled: Silence::default(),
            }),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The current state (an open breaker whose rest is over reads as half-open).
    pub(crate) fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    pub(crate) fn state_at(&self, now: Instant) -> BreakerState {
        self.with_state(|s| match s.mode {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { until } if now < until => BreakerState::Open,
            Mode::Open { .. } | Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        })
    }

    /// Connectivity as last observed; an offline mark reads online once `offline_for` is over.
    pub(crate) fn network(&self) -> Network {
        self.network_at(Instant::now())
    }

    pub(crate) fn network_at(&self, now: Instant) -> Network {
        match self.with_state(|s| s.offline_until) {
            Some(until) if now < until => Network::Offline,
            _ => Network::Online,
        }
    }

    /// Marks the network offline for `offline_for` (connection refused or timed out, DNS
    /// failure).
    pub(crate) fn mark_offline(&self, now: Instant) {
        let until = after(now, self.cfg.offline_for);
        self.with_state(|s| s.offline_until = Some(until));
    }

    /// Marks the network online (any HTTP answer).
    pub(crate) fn mark_online(&self) {
        self.with_state(|s| s.offline_until = None);
    }

    /// Called before each attempt: when an offline mark has expired, this attempt is the
    /// probe, and the mark is re-armed so other decisions keep routing locally until the
    /// probe's outcome ([`Breaker::mark_online`] or [`Breaker::mark_offline`]) is known.
    /// Returns the re-armed mark when this attempt is the probe (see
    /// [`Breaker::probe_without_outcome`]).
    pub(crate) fn start_attempt(&self, now: Instant) -> Option<Instant> {
        let until = after(now, self.cfg.offline_for);
        self.with_state(|s| {
            if matches!(s.offline_until, Some(t) if t <= now) {
                s.offline_until = Some(until);
                Some(until)
            } else {
                None
            }
        })
    }

    /// The probe that re-armed the offline mark `armed` ended with no outcome (cancelled, or
    /// timed out): the mark expires at `now` again, so the next call probes, instead of the
    /// network reading offline for another `offline_for` on no evidence.
    pub(crate) fn probe_without_outcome(&self, armed: Instant, now: Instant) {
        self.with_state(|s| {
            if s.offline_until == Some(armed) {
                s.offline_until = Some(now);
            }
        });
    }

    /// An attempt got an answer from the provider at `now` (a success, an error status, a
    /// malformed body — anything but silence): its silence starts over.
    pub(crate) fn answered(&self, now: Instant) {
        self.with_state(|s| s.silence.reset(now));
    }

    /// An attempt that ran from `since` to `now` ended with no answer. Returns how long the
    /// provider has now been silent: the wall-clock time covered by such attempts since its
    /// last answer, overlapping attempts counted once (time before the last counted instant
    /// is never counted twice, so a late-reported overlap can only make it shorter).
    pub(crate) fn unanswered(&self, since: Instant, now: Instant) -> Duration {
        self.with_state(|s| s.silence.add(since, now))
    }

    /// A started answer's stream was silent from `since` (its last bytes) until `now`, when the
    /// caller's deadline ended it. Returns the provider's silence in started answers since its
    /// last whole answer (counted as [`Breaker::unanswered`] counts).
    pub(crate) fn stalled(&self, since: Instant, now: Instant) -> Duration {
        self.with_state(|s| s.stalled.add(since, now))
    }

    /// Asks to make one attempt.
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<Permit, Error> {
        self.acquire_at(Instant::now())
    }

    pub(crate) fn acquire_at(self: &Arc<Self>, now: Instant) -> Result<Permit, Error> {
        let probes = self.cfg.half_open_probes.max(1);
        let open_for = self.cfg.open_for;
        let probe = self.with_state(|s| match s.mode {
            Mode::Closed => Ok(false),
            Mode::Open { until } if now < until => Err(until - now),
            Mode::Open { .. } => {
                s.mode = Mode::HalfOpen { in_flight: 1 };
                Ok(true)
            }
            Mode::HalfOpen { in_flight } if in_flight < probes => {
                s.mode = Mode::HalfOpen {
                    in_flight: in_flight + 1,
                };
                Ok(true)
            }
            // Probes are in flight; the next probe comes no sooner than a rest period.
            Mode::HalfOpen { .. } => Err(open_for),
        });
        match probe {
            Ok(probe) => Ok(Permit {
                breaker: Arc::clone(self),
                probe,
            }),
            Err(retry_in) => Err(Error::CircuitOpen { retry_in }),
        }
    }

    fn record(&self, probe: bool, ok: bool, now: Instant) {
        let cfg = &self.cfg;
        self.with_state(|s| {
            if ok {
                s.consecutive = 0;
                // A whole answer (or one that says the request was wrong): nothing stalled.
                s.stalled.reset(now);
            } else {
                s.consecutive = s.consecutive.saturating_add(1);
            }
            s.window.push_back(ok);
            while s.window.len() > cfg.window.max(1) {
                s.window.pop_front();
            }
            match s.mode {
                Mode::HalfOpen { .. } if probe => {
                    if ok {
                        s.mode = Mode::Closed;
                        s.window.clear();
                    } else {
                        s.mode = Mode::Open {
                            until: after(now, cfg.open_for),
                        };
                    }
                }
                Mode::Closed if !ok => {
                    let failures = s.window.iter().filter(|ok| !**ok).count();
                    let ratio_trips = s.window.len() >= cfg.min_calls.max(1)
                        && failures as f64 >= cfg.failure_ratio * s.window.len() as f64;
                    if s.consecutive >= cfg.consecutive_failures.max(1) || ratio_trips {
                        s.mode = Mode::Open {
                            until: after(now, cfg.open_for),
                        };
                    }
                }
                _ => {}
            }
        });
    }

    /// A half-open probe has started answering: the provider is back, so the breaker closes
    /// (with a fresh window) without recording an outcome; the call's own comes when it ends.
    fn probe_answering(&self) {
        self.with_state(|s| {
            if let Mode::HalfOpen { .. } = s.mode {
                s.mode = Mode::Closed;
                s.window.clear();
                s.consecutive = 0;
            }
        });
    }

    fn release_probe(&self) {
        self.with_state(|s| {
            if let Mode::HalfOpen { in_flight } = s.mode {
                s.mode = Mode::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                };
            }
        });
    }
}

impl Permit {
    /// The provider has started answering (a streamed call's first token). For a half-open
    /// probe that is the recovery it waits for: the breaker closes now, not when the answer
    /// ends (a long answer would otherwise fail every other call with `CircuitOpen` for as
    /// long as it streams, and a caller dropping it would leave the breaker half-open). From
    /// here the permit counts like any call's: a failure later in the stream still counts.
    pub(crate) fn answering(&mut self) {
        if self.probe {
            self.breaker.probe_answering();
            self.probe = false;
        }
    }

    /// The attempt succeeded.
    pub(crate) fn success(self) {
        self.finish(true, Instant::now());
    }

    /// The attempt failed in a way that counts against the provider's health.
    pub(crate) fn failure(self) {
        self.finish(false, Instant::now());
    }

    /// The attempt ended in a way that says nothing about the provider (the caller's own
    /// deadline ran out): no outcome is recorded; a half-open probe slot is freed.
    pub(crate) fn release(self) {
        drop(self);
    }

    pub(crate) fn finish(mut self, ok: bool, now: Instant) {
        self.breaker.record(self.probe, ok, now);
        // Recorded: the probe slot is settled, Drop must not release it again.
        self.probe = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.release_probe();
        }
    }
}

/// `now + d`, saturating: an absurdly long configured duration means "for as long as this
/// process can tell", not a panic.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(cfg: BreakerConfig) -> Arc<Breaker> {
        Arc::new(Breaker::new(cfg))
    }

    #[test]
    fn huge_configured_durations_saturate_instead_of_panicking() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::MAX,
            offline_for: Duration::MAX,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        b.acquire_at(t0).unwrap().finish(false, t0);
        assert_eq!(
            b.state_at(t0 + Duration::from_secs(86_400)),
            BreakerState::Open
        );
        b.mark_offline(t0);
        assert_eq!(
            b.network_at(t0 + Duration::from_secs(86_400)),
            Network::Offline
        );
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 3,
            open_for: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            b.acquire_at(t0).unwrap().finish(false, t0);
        }
        assert_eq!(b.state_at(t0), BreakerState::Closed);
        b.acquire_at(t0).unwrap().finish(false, t0);
        assert_eq!(b.state_at(t0), BreakerState::Open);
        assert_eq!(b.state_at(t0).health(), CloudHealth::Down);
        assert!(matches!(b.acquire_at(t0), Err(Error::CircuitOpen { .. })));

        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.state_at(later), BreakerState::HalfOpen);
        let probe = b.acquire_at(later).unwrap();
        // Only one probe at a time.
        assert!(b.acquire_at(later).is_err());
        probe.finish(false, later);
        assert_eq!(b.state_at(later), BreakerState::Open);

        let later = later + Duration::from_secs(11);
        b.acquire_at(later).unwrap().finish(true, later);
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn a_probe_that_starts_answering_closes_the_breaker() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 2,
            open_for: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            b.acquire_at(t0).unwrap().finish(false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        let mut probe = b.acquire_at(later).unwrap();
        assert!(b.acquire_at(later).is_err());
        probe.answering();
        assert_eq!(b.state_at(later), BreakerState::Closed);
        // Other calls go ahead while the probe's answer streams, as ordinary calls.
        let other = b.acquire_at(later).unwrap();
        assert!(!other.probe);
        // The probe's stream failing later counts like any call's failure (one of two).
        probe.finish(false, later);
        assert_eq!(b.state_at(later), BreakerState::Closed);
        other.finish(false, later);
        assert_eq!(b.state_at(later), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 2,
            min_calls: 100,
            ..BreakerConfig::default()
        });
        let t = Instant::now();
        for _ in 0..10 {
            b.acquire_at(t).unwrap().finish(false, t);
            b.acquire_at(t).unwrap().finish(true, t);
        }
        assert_eq!(b.state_at(t), BreakerState::Closed);
    }

    #[test]
    fn opens_on_failure_ratio() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 100,
            window: 10,
            min_calls: 10,
            failure_ratio: 0.5,
            ..BreakerConfig::default()
        });
        let t = Instant::now();
        // Alternate: never two failures in a row, but half of the window fails.
        for i in 0..9 {
            b.acquire_at(t).unwrap().finish(i % 2 == 0, t);
        }
        assert_eq!(b.state_at(t), BreakerState::Closed);
        b.acquire_at(t).unwrap().finish(false, t);
        assert_eq!(b.state_at(t), BreakerState::Open);
    }

    #[test]
    fn offline_expires_and_one_attempt_probes() {
        let b = breaker(BreakerConfig {
            offline_for: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        assert_eq!(b.network_at(t0), Network::Online);
        b.mark_offline(t0);
        assert_eq!(b.network_at(t0 + Duration::from_secs(9)), Network::Offline);
        // An attempt made while the mark is fresh is not a probe: nothing changes.
        b.start_attempt(t0 + Duration::from_secs(9));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.network_at(later), Network::Online);
        // The probe re-arms the mark while it is in flight...
        b.start_attempt(later);
        assert_eq!(b.network_at(later), Network::Offline);
        // ...and an HTTP answer clears it.
        b.mark_online();
        assert_eq!(b.network_at(later), Network::Online);
        // A probe with no outcome (cancelled) leaves the mark expired, not re-armed.
        b.mark_offline(later);
        let after_that = later + Duration::from_secs(11);
        let armed = b.start_attempt(after_that).expect("a probe");
        assert_eq!(b.network_at(after_that), Network::Offline);
        b.probe_without_outcome(armed, after_that);
        assert_eq!(b.network_at(after_that), Network::Online);
        // Not when the probe's outcome came first: a failure to connect marks it again.
        let armed = b.start_attempt(after_that).expect("a probe");
        let failed_at = after_that + Duration::from_millis(1);
        b.mark_offline(failed_at);
        b.probe_without_outcome(armed, failed_at);
        assert_eq!(b.network_at(failed_at), Network::Offline);
    }

    #[test]
    fn silence_covers_unanswered_attempts_once_and_restarts_on_an_answer() {
        let b = breaker(BreakerConfig::default());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Two attempts one after the other, with idle time between them that does not count.
        assert_eq!(b.unanswered(t0, t0 + ms(100)), ms(100));
        assert_eq!(b.unanswered(t0 + ms(500), t0 + ms(600)), ms(200));
        // Two overlapping attempts: the shared time counts once.
        assert_eq!(b.unanswered(t0 + ms(550), t0 + ms(700)), ms(300));
        assert_eq!(b.unanswered(t0 + ms(650), t0 + ms(750)), ms(350));
        // An answer: silence starts over, and an attempt that started before the answer only
        // counts from it.
        b.answered(t0 + ms(800));
        assert_eq!(b.unanswered(t0 + ms(600), t0 + ms(900)), ms(100));
    }

    #[test]
    fn dropped_probe_frees_its_slot() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::from_millis(1),
            ..BreakerConfig::default()
        });
        let t = Instant::now();
        b.acquire_at(t).unwrap().finish(false, t);
        let later = t + Duration::from_millis(5);
        drop(b.acquire_at(later).unwrap());
        assert!(b.acquire_at(later).is_ok());
    }
}
