//! The latency models' memory: what routers measured of each tier's speed on this device, kept
//! in the home's database so that the next router on the same home (the next `edgeroute ask`,
//! the app's next start) decides from this device's figures instead of the policy's
//! `[latency]` model, which knows nothing of the device.
//!
//! One value per tier, in the `stats` tree, under a key naming what the speed depends on:
//! - `speed/local/<identity>`: the local model's ms per token (whole answers), prefill ms per
//!   prompt token, and the tokens it adds to a prompt (chat template, system prompt);
//! - `speed/cloud/<identity>`: the cloud's total and first-token ms (peak-sensitive averages);
//! - both: the latest first-token samples ([`REMEMBERED_SAMPLES`]), so that the p95 a hedge
//!   with `after_ms = "p95"` waits for is there from a new router's first request.
//!
//! The identity is the backend's `name@revision` (the model build; the cloud endpoint's
//! digest), and for the built-in local model also its threads and spinning: a figure measured
//! with other settings is not used. Each value also counts the answers that made it, so that
//! `explain` can say where an estimate came from. A value this version cannot read is ignored
//! (the policy's model applies) and replaced by the next observation.
//!
//! A value not updated for [`REMEMBER_FOR`] is not used: the device may have changed since
//! (another machine's home, other work on its cores), and an estimate that keeps requests away
//! from a tier would otherwise never be measured again. `edgeroute bench` measures the local
//! model afresh.

use std::time::{Duration, SystemTime};

use crate::backend::Tier;
use crate::cache::Database;

/// How long a remembered speed is used after it was last updated: a week.
pub(crate) const REMEMBER_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many of a tier's latest first-token samples are remembered: enough for the p95 a hedge
/// with `after_ms = "p95"` waits for to be there from a new router's first request.
pub(crate) const REMEMBERED_SAMPLES: usize = 64;

/// What is remembered of one tier's speed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Remembered {
    /// Local: ms per token of whole answers. Cloud: ms per answer.
    pub(crate) total: Option<f64>,
    /// Local: prefill ms per prompt token. Cloud: ms to the first token.
    pub(crate) first_token: Option<f64>,
    /// Local: tokens the model adds to a prompt (chat template, system prompt). Cloud: none.
    pub(crate) prompt_overhead: Option<f64>,
    /// How many answers the averages were measured from.
    pub(crate) observations: u64,
    /// The latest first-token samples, ms, oldest first (at most [`REMEMBERED_SAMPLES`]).
    pub(crate) first_token_samples: Vec<f32>,
}

impl Remembered {
    const VERSION: u8 = 3;
    /// The fixed part: version, three averages, observations, time saved, sample count.
    const HEADER: usize = 1 + 8 + 8 + 8 + 8 + 8 + 2;

    /// The value, stamped with when it was saved (seconds since the Unix epoch).
    fn encode(&self, saved_at: u64) -> Vec<u8> {
        // NaN marks an average not measured yet.
        let bits = |v: Option<f64>| v.unwrap_or(f64::NAN).to_be_bytes();
        let samples = &self.first_token_samples[self
            .first_token_samples
            .len()
            .saturating_sub(REMEMBERED_SAMPLES)..];
        let mut out = Vec::with_capacity(Self::HEADER + 4 * samples.len());
        out.push(Self::VERSION);
        out.extend_from_slice(&bits(self.total));
        out.extend_from_slice(&bits(self.first_token));
        out.extend_from_slice(&bits(self.prompt_overhead));
        out.extend_from_slice(&self.observations.to_be_bytes());
        out.extend_from_slice(&saved_at.to_be_bytes());
        // At most REMEMBERED_SAMPLES, so the count fits.
        out.extend_from_slice(&(samples.len() as u16).to_be_bytes());
        for sample in samples {
            out.extend_from_slice(&sample.to_be_bytes());
        }
        out
    }

    /// The value and when it was saved; `None` for a value this version cannot read, or whose
    /// averages or samples are not durations.
    fn decode(b: &[u8]) -> Option<(Self, u64)> {
        if b.len() < Self::HEADER || b[0] != Self::VERSION {
            return None;
        }
        let count = usize::from(u16::from_be_bytes([b[41], b[42]]));
        if count > REMEMBERED_SAMPLES || b.len() != Self::HEADER + 4 * count {
            return None;
        }
        let first_token_samples = b[Self::HEADER..]
            .chunks_exact(4)
            .map(|c| <[u8; 4]>::try_from(c).ok().map(f32::from_be_bytes))
            .map(|v| v.filter(|v| v.is_finite() && *v >= 0.0))
            .collect::<Option<Vec<f32>>>()?;
        let word = |at: usize| <[u8; 8]>::try_from(&b[at..at + 8]).ok();
        let average = |at: usize| -> Option<Option<f64>> {
            let v = f64::from_be_bytes(word(at)?);
            match v {
                v if v.is_nan() => Some(None),
                v if v.is_finite() && v >= 0.0 => Some(Some(v)),
                _ => None,
            }
        };
        let remembered = Remembered {
            total: average(1)?,
            first_token: average(9)?,
            prompt_overhead: average(17)?,
            observations: u64::from_be_bytes(word(25)?),
            first_token_samples,
        };
        Some((remembered, u64::from_be_bytes(word(33)?)))
    }
}

/// Reads and writes the remembered speeds of one router's tiers. Storage errors are logged and
/// otherwise ignored: a latency estimate never fails a request.
#[derive(Clone)]
pub(crate) struct LatencyMemory {
    tree: sled::Tree,
    local: Option<Vec<u8>>,
    cloud: Option<Vec<u8>>,
    /// Set when a write failed: what was measured may not be remembered.
    write_failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LatencyMemory {
    /// The memory on `db` of the tiers named `local` and `cloud` (see the module docs; `None`:
    /// no such tier).
    pub(crate) fn open(
        db: &Database,
        local: Option<&str>,
        cloud: Option<&str>,
    ) -> crate::Result<Self> {
        let tree = crate::stats::stats_tree(db)?;
        let key = |tier: Tier, id: Option<&str>| {
            id.map(|id| format!("{}{id}", prefix(tier)).into_bytes())
        };
        Ok(LatencyMemory {
            tree,
            local: key(Tier::Local, local),
            cloud: key(Tier::Cloud, cloud),
            write_failed: std::sync::Arc::default(),
        })
    }

    fn key(&self, tier: Tier) -> Option<&[u8]> {
        match tier {
            Tier::Local => self.local.as_deref(),
            Tier::Cloud => self.cloud.as_deref(),
        }
    }

    /// What was remembered of `tier`, if anything readable and updated less than
    /// [`REMEMBER_FOR`] ago.
    pub(crate) fn recall(&self, tier: Tier) -> Option<Remembered> {
        self.recall_at(tier, SystemTime::now())
    }

    /// [`LatencyMemory::recall`] as of `now`.
    fn recall_at(&self, tier: Tier, now: SystemTime) -> Option<Remembered> {
        let value = match self.tree.get(self.key(tier)?) {
            Ok(v) => v?,
            Err(e) => {
                tracing::warn!(error = %e, "remembered latency unreadable; using the policy's [latency] model");
                return None;
            }
        };
        let Some((remembered, saved_at)) = Remembered::decode(&value) else {
            tracing::debug!(
                ?tier,
                "remembered latency in a format this version cannot read"
            );
            return None;
        };
        if !current(saved_at, now) {
            tracing::debug!(
                ?tier,
                saved_at,
                "remembered latency too old (or dated in the future) to use"
            );
            return None;
        }
        Some(remembered)
    }

    /// Whether every write so far succeeded.
    pub(crate) fn intact(&self) -> bool {
        !self.write_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces what is remembered of `tier`.
    pub(crate) fn remember(&self, tier: Tier, speed: &Remembered) {
        self.remember_at(tier, speed, SystemTime::now());
    }

    /// Writes `speed` unless a current value measured from more answers is there already
    /// (another router's newer figure, or this one's written first by a concurrent
    /// observation): figures never go back to fewer answers while they are in use.
    fn remember_at(&self, tier: Tier, speed: &Remembered, now: SystemTime) {
        let Some(key) = self.key(tier) else { return };
        let value = speed.encode(unix_secs(now));
        let written = self.tree.update_and_fetch(key, |old| {
            let newer = old.and_then(Remembered::decode).filter(|(old, saved_at)| {
                current(*saved_at, now) && old.observations > speed.observations
            });
            match newer {
                Some(_) => old.map(<[u8]>::to_vec),
                None => Some(value.clone()),
            }
        });
        if let Err(e) = written {
            self.write_failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "latency estimate not remembered");
        }
    }
}

/// One speed remembered on a database ([`remembered`]).
pub(crate) struct Listed {
    pub(crate) tier: Tier,
    /// What it was measured for (the key after the tier's prefix).
    pub(crate) identity: String,
    pub(crate) speed: Remembered,
    /// Time since it was last updated.
    pub(crate) age: Duration,
    /// Whether a router with this identity would start from it (see [`current`]).
    pub(crate) usable: bool,
}

/// Every speed remembered on `db`, readable by this version, local ones first.
pub(crate) fn remembered(db: &Database) -> crate::Result<Vec<Listed>> {
    let tree = crate::stats::stats_tree(db)?;
    let storage = |e: sled::Error| crate::Error::Storage {
        path: db.path().to_path_buf(),
        message: format!("cannot read the stats tree: {e}"),
    };
    let now = SystemTime::now();
    let mut out = Vec::new();
    for tier in [Tier::Local, Tier::Cloud] {
        let prefix = prefix(tier);
        for entry in tree.scan_prefix(prefix) {
            let (key, value) = entry.map_err(storage)?;
            let Some((speed, saved_at)) = Remembered::decode(&value) else {
                continue;
            };
            let identity = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let age = Duration::from_secs(unix_secs(now).saturating_sub(saved_at));
            out.push(Listed {
                tier,
                identity,
                speed,
                age,
                usable: current(saved_at, now),
            });
        }
    }
    Ok(out)
}

/// The start of the keys of `tier`'s remembered speeds (the identity follows).
fn prefix(tier: Tier) -> &'static str {
    match tier {
        Tier::Local => "speed/local/",
        Tier::Cloud => "speed/cloud/",
    }
}

/// Whether a value saved at `saved_at` (Unix seconds) may be used `now`: saved less than
/// [`REMEMBER_FOR`] ago, and not later than a minute from now (a clock set back would make a
/// figure look new for longer than a week).
fn current(saved_at: u64, now: SystemTime) -> bool {
    let now = unix_secs(now);
    saved_at <= now.saturating_add(60)
        && Duration::from_secs(now.saturating_sub(saved_at)) < REMEMBER_FOR
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("db")).unwrap();
        (dir, db)
    }

    #[test]
    fn each_tier_is_remembered_under_its_own_identity() {
        let (_dir, db) = db();
        let memory = LatencyMemory::open(&db, Some("local/m@b1+t2"), Some("cloud/x@e1")).unwrap();
        assert_eq!(memory.recall(Tier::Local), None);
        let local = Remembered {
            total: Some(12.5),
            first_token: None,
            prompt_overhead: Some(33.0),
            observations: 3,
            first_token_samples: vec![40.0, 45.5, 38.25],
        };
        let cloud = Remembered {
            total: Some(900.0),
            first_token: Some(310.0),
            prompt_overhead: None,
            observations: 7,
            first_token_samples: Vec::new(),
        };
        memory.remember(Tier::Local, &local);
        memory.remember(Tier::Cloud, &cloud);
        assert_eq!(memory.recall(Tier::Local), Some(local.clone()));
        assert_eq!(memory.recall(Tier::Cloud), Some(cloud));
        // Only the latest samples are kept.
        let many = Remembered {
            first_token_samples: (0..100).map(|i| i as f32).collect(),
            ..local.clone()
        };
        memory.remember(Tier::Local, &many);
        let kept = memory.recall(Tier::Local).unwrap().first_token_samples;
        assert_eq!(kept, (36..100).map(|i| i as f32).collect::<Vec<_>>());
        // Another build, thread count or endpoint does not see these figures.
        let other = LatencyMemory::open(&db, Some("local/m@b1+t1"), Some("cloud/x@e2")).unwrap();
        assert_eq!(other.recall(Tier::Local), None);
        assert_eq!(other.recall(Tier::Cloud), None);
        // Without a tier there is nothing to remember or recall.
        let none = LatencyMemory::open(&db, None, None).unwrap();
        none.remember(Tier::Local, &local);
        assert_eq!(none.recall(Tier::Local), None);
    }

    /// A write measured from fewer answers than the current value is dropped (two observations
    /// written out of order), but replaces a value too old to use.
    #[test]
    fn figures_do_not_go_back_to_fewer_answers() {
        let (_dir, db) = db();
        let memory = LatencyMemory::open(&db, Some("l"), None).unwrap();
        let speed = |total: f64, observations: u64| Remembered {
            total: Some(total),
            observations,
            ..Remembered::default()
        };
        let now = SystemTime::now();
        memory.remember_at(Tier::Local, &speed(12.0, 5), now);
        memory.remember_at(Tier::Local, &speed(11.0, 4), now);
        assert_eq!(memory.recall(Tier::Local), Some(speed(12.0, 5)));
        memory.remember_at(Tier::Local, &speed(13.0, 5), now);
        assert_eq!(memory.recall(Tier::Local), Some(speed(13.0, 5)));
        let week_ago = now - REMEMBER_FOR;
        memory.remember_at(Tier::Local, &speed(99.0, 100), week_ago);
        memory.remember_at(Tier::Local, &speed(14.0, 1), now);
        assert_eq!(memory.recall(Tier::Local), Some(speed(14.0, 1)));
        assert!(memory.intact());
    }

    /// A speed not updated for a week is not used (the device may have changed), and a new
    /// observation makes it current again.
    #[test]
    fn speeds_not_updated_for_a_week_are_not_used() {
        let (_dir, db) = db();
        let memory = LatencyMemory::open(&db, Some("l"), None).unwrap();
        let speed = Remembered {
            total: Some(10.0),
            observations: 4,
            ..Remembered::default()
        };
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        memory.remember_at(Tier::Local, &speed, now - 6 * day);
        assert_eq!(memory.recall_at(Tier::Local, now), Some(speed.clone()));
        assert_eq!(memory.recall_at(Tier::Local, now + day), None);
        memory.remember_at(Tier::Local, &speed, now);
        assert_eq!(
            memory.recall_at(Tier::Local, now + day),
            Some(speed.clone())
        );
        // A figure dated in the future (the clock was set back) is not used.
        assert_eq!(memory.recall_at(Tier::Local, now - day), None);
        // Listed with its age either way, and as not used: too old, or dated in the future.
        memory.remember_at(Tier::Local, &speed, now + day);
        assert!(!remembered(&db).unwrap()[0].usable);
        memory.remember_at(Tier::Local, &speed, now - 8 * day);
        let listed = remembered(&db).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].tier, listed[0].identity.as_str()),
            (Tier::Local, "l")
        );
        assert!(!listed[0].usable);
        assert!(
            listed[0].age >= 8 * day && listed[0].age < 9 * day,
            "{:?}",
            listed[0].age
        );
    }

    #[test]
    fn values_this_version_cannot_read_are_ignored() {
        let (_dir, db) = db();
        let memory = LatencyMemory::open(&db, Some("l"), None).unwrap();
        let good = Remembered {
            total: Some(10.0),
            first_token: Some(1.5),
            prompt_overhead: Some(30.0),
            observations: 1,
            first_token_samples: vec![12.0, 13.5],
        }
        .encode(unix_secs(SystemTime::now()));
        let key = "speed/local/l";
        let mut newer = good.clone();
        newer[0] = Remembered::VERSION + 1;
        let mut negative = good.clone();
        negative[1..9].copy_from_slice(&(-1.0f64).to_be_bytes());
        let mut infinite = good.clone();
        infinite[9..17].copy_from_slice(&f64::INFINITY.to_be_bytes());
        let mut negative_sample = good.clone();
        negative_sample[47..51].copy_from_slice(&(-1.0f32).to_be_bytes());
        let mut too_many = good.clone();
        too_many[41..43].copy_from_slice(&(REMEMBERED_SAMPLES as u16 + 1).to_be_bytes());
        too_many.resize(Remembered::HEADER + 4 * (REMEMBERED_SAMPLES + 1), 0);
        let short = good[..good.len() - 2].to_vec();
        for bad in [
            newer,
            negative,
            infinite,
            negative_sample,
            too_many,
            short,
            good[..40].to_vec(),
            Vec::new(),
        ] {
            db.sled()
                .open_tree("stats")
                .unwrap()
                .insert(key, bad)
                .unwrap();
            assert_eq!(memory.recall(Tier::Local), None);
        }
        db.sled()
            .open_tree("stats")
            .unwrap()
            .insert(key, good)
            .unwrap();
        assert_eq!(memory.recall(Tier::Local).unwrap().first_token, Some(1.5));
    }
}
