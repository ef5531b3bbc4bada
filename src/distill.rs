//! The teacher log: cloud answers kept on the device, encrypted, to distil the local model from.
//!
//! The local model is a small model distilled from large ones; the cloud answers an app already
//! pays for are the best material to make it better at that app's own questions. With
//! `[distill] collect = true` in the policy, the router keeps every cloud answer that came back
//! whole (finish `stop`, not empty), with the messages **exactly as the provider received them**:
//! a redacted request is kept with its placeholders (`<EMAIL_1>`) and the answer as it came,
//! before re-hydration, so a sample never holds personal data that did not leave the device.
//! A request sent with personal data in clear (a rule with `redact = false`) is not kept unless
//! `include_pii = true`. Local and cached answers are never kept.
//!
//! Samples live in the home's sled database (tree `teacher`), each sealed with AES-256-GCM under
//! the key in `<home>/teacher.key` (its own key: `edgeroute cache clear` does not touch them),
//! or, for a router given its cache key by the app, under a key derived from that one
//! ([`teacher_key_for`]), with no key file.
//! The log is bounded by `max_bytes`; the oldest samples go first. `edgeroute distill export`
//! writes them as chat fine-tuning JSONL ([`TeacherLog::export_jsonl`]); `distill stats` and
//! `distill clear` count and remove them.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::{Database, EncryptionKey};
use crate::error::{Error, Result};
use crate::request::{Message, Role, Usage};

/// The sled tree that holds the samples.
const TREE: &str = "teacher";
/// Format of a stored sample: `VERSION || nonce || sealed JSON body`.
const VERSION: u8 = 1;
/// Associated data of every sealed sample: a sample cannot be passed off as another record.
const AAD: &[u8] = b"edgeroute teacher sample v1";
const NONCE_LEN: usize = 12;

/// `[distill]`: whether and how much of the cloud's answers the router keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistillConfig {
    /// Keep whole cloud answers (default `false`: nothing is kept).
    pub collect: bool,
    /// Bytes the log may hold on disk (default 64 MiB); the oldest samples are removed beyond it.
    pub max_bytes: u64,
    /// Also keep requests sent to the cloud with personal data in clear (default `false`).
    /// Redacted requests are kept either way: they hold placeholders, not the data.
    pub include_pii: bool,
    /// Samples older than this are removed (default `None`: kept until `max_bytes` needs
    /// their room).
    pub max_age: Option<Duration>,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            collect: false,
            max_bytes: 64 << 20,
            include_pii: false,
            max_age: None,
        }
    }
}

/// Whether the teacher log keeps a whole cloud answer to a request: the rule the router
/// applies when the answer comes back, and what `edgeroute explain` shows beforehand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TeacherVerdict {
    /// `[distill] collect` is off: nothing is kept.
    NotCollecting,
    /// The plan never reaches the cloud (a pinned local plan, a refusal, or no cloud to
    /// reach): no answer to keep.
    NoCloudAnswer,
    /// Kept as the provider saw the exchange; `redacted`: with placeholders where the scanner
    /// found personal data.
    Kept {
        /// The request is sent redacted.
        redacted: bool,
    },
    /// Kept with the personal data in clear (`include_pii = true`), marked `pii_in_clear`.
    KeptWithPiiInClear,
    /// Not kept: the request goes to the cloud with personal data in clear, and
    /// `include_pii` is off.
    NotKeptPiiInClear,
}

impl TeacherVerdict {
    /// The verdict for a request decided as `plan`, in which the scanner found personal data
    /// or not (`pii_found`), on a router whose cloud can be reached or not (`cloud_reachable`:
    /// configured, with credentials, online). It is about the cloud's answer if one comes: a
    /// cascade's when it escalates, a hedge's when the cloud wins, an unpinned local plan's
    /// when the device fails and the cloud answers (a fallback, redacted whenever personal
    /// data was found).
    pub fn of(
        config: &DistillConfig,
        plan: &crate::decision::Plan,
        pii_found: bool,
        cloud_reachable: bool,
    ) -> Self {
        use crate::decision::Plan;
        if !config.collect {
            return TeacherVerdict::NotCollecting;
        }
        let redact = match plan {
            Plan::Local { pin: true } | Plan::Refuse { .. } => {
                return TeacherVerdict::NoCloudAnswer
            }
            _ if !cloud_reachable => return TeacherVerdict::NoCloudAnswer,
            Plan::Local { pin: false } => true,
            Plan::Cloud { redact, .. }
            | Plan::Cascade { redact, .. }
            | Plan::Hedge { redact, .. } => *redact,
        };
        Self::of_call(config, pii_found && !redact, pii_found && redact)
    }

    /// The verdict for a cloud call that sends personal data in clear or not, redacted or not
    /// (what the router knows when it makes the call).
    pub(crate) fn of_call(config: &DistillConfig, pii_in_clear: bool, redacted: bool) -> Self {
        match (config.collect, pii_in_clear, config.include_pii) {
            (false, _, _) => TeacherVerdict::NotCollecting,
            (true, false, _) => TeacherVerdict::Kept { redacted },
            (true, true, true) => TeacherVerdict::KeptWithPiiInClear,
            (true, true, false) => TeacherVerdict::NotKeptPiiInClear,
        }
    }

    /// Whether a whole cloud answer is kept.
    pub fn keeps(self) -> bool {
        matches!(
            self,
            TeacherVerdict::Kept { .. } | TeacherVerdict::KeptWithPiiInClear
        )
    }
}

impl std::fmt::Display for TeacherVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeacherVerdict::NotCollecting => "nothing is kept ([distill] collect is off)",
            TeacherVerdict::NoCloudAnswer => "nothing to keep: no cloud answer can come",
            TeacherVerdict::Kept { redacted: true } => {
                "a whole cloud answer, if one comes, is kept as the provider saw it: with placeholders for the personal data found"
            }
            TeacherVerdict::Kept { redacted: false } => {
                "a whole cloud answer, if one comes, is kept"
            }
            TeacherVerdict::KeptWithPiiInClear => {
                "a whole cloud answer, if one comes, is kept with the personal data in clear (include_pii = true), marked pii_in_clear"
            }
            TeacherVerdict::NotKeptPiiInClear => {
                "not kept: the request goes to the cloud with personal data in clear ([distill] include_pii = false)"
            }
        })
    }
}

/// One cloud answer, as the provider saw the exchange.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherSample {
    /// When the answer came back (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
    /// The policy rule whose decision sent the request to the cloud.
    pub rule: String,
    /// The cloud model that answered.
    pub model: String,
    /// The messages exactly as sent (with placeholders where the request was redacted).
    pub messages: Vec<Message>,
    /// The answer exactly as received (placeholders not filled in).
    pub answer: String,
    /// Spans replaced by placeholders before sending (0: sent as written).
    pub redacted_spans: usize,
    /// The request was sent with personal data the scanner found, in clear (kept only with
    /// `include_pii = true`).
    #[serde(default)]
    pub pii_in_clear: bool,
    /// The local model answered first and was not confident enough (a cascade escalation):
    /// the questions the local model most needs to learn.
    pub escalated: bool,
    /// Tokens the provider counted.
    pub usage: Usage,
}

impl std::fmt::Debug for TeacherSample {
    // Prompts and answers never reach `Debug` output (logs): sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherSample")
            .field("at_unix_ms", &self.at_unix_ms)
            .field("rule", &self.rule)
            .field("model", &self.model)
            .field("messages", &self.messages)
            .field("answer", &format_args!("<{} bytes>", self.answer.len()))
            .field("redacted_spans", &self.redacted_spans)
            .field("pii_in_clear", &self.pii_in_clear)
            .field("escalated", &self.escalated)
            .field("usage", &self.usage)
            .finish()
    }
}

impl TeacherSample {
    /// The sample as one line of chat fine-tuning JSONL (`{"messages": [...]}`, the answer as
    /// the last, assistant, message); with `metadata`, also where it came from.
    pub fn to_jsonl(&self, metadata: bool) -> String {
        let mut messages: Vec<serde_json::Value> = self
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        messages
            .push(serde_json::json!({"role": Role::Assistant.as_str(), "content": self.answer}));
        let mut line = serde_json::json!({ "messages": messages });
        if metadata {
            line["metadata"] = serde_json::json!({
                "at_unix_ms": self.at_unix_ms,
                "rule": self.rule,
                "model": self.model,
                "redacted_spans": self.redacted_spans,
                "pii_in_clear": self.pii_in_clear,
                "escalated": self.escalated,
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            });
        }
        line.to_string()
    }
}

/// What the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TeacherStats {
    /// Samples stored.
    pub samples: u64,
    /// Their size on disk (sealed), in bytes.
    pub bytes: u64,
    /// Samples this handle removed so far, to stay under `max_bytes` or past `max_age`.
    pub evicted: u64,
}

/// What [`TeacherLog::export_jsonl`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Samples written, one line each.
    pub written: u64,
    /// Samples that could not be read (sealed under another key, or damaged), left out.
    pub unreadable: u64,
}

/// The teacher log in a sled database. Cheap to share behind an `Arc`; `Send + Sync`.
///
/// Handles on one [`Database`] (two routers on one home) share one count of the log's bytes,
/// so `max_bytes` holds for all of them together.
pub struct TeacherLog {
    tree: sled::Tree,
    /// The database, kept open while the log is (its ids order the samples; other handles
    /// opened on its directory share it, and the byte count).
    db: Database,
    key: EncryptionKey,
    config: DistillConfig,
    /// Bytes stored, shared by the handles on this database.
    bytes: Arc<Mutex<u64>>,
    evicted: AtomicU64,
}

impl std::fmt::Debug for TeacherLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TeacherLog {
    /// Opens (creating if needed) the log in `db`, sealing samples with `key`.
    pub fn open(db: &Database, key: EncryptionKey, config: DistillConfig) -> Result<Self> {
        let storage = |e: sled::Error| crate::cache::storage_error(db.path(), e);
        let tree = db.sled().open_tree(TREE).map_err(storage)?;
        let bytes = db.teacher_bytes(|| {
            let mut total = 0u64;
            for entry in tree.iter() {
                let (_, value) = entry.map_err(storage)?;
                total += value.len() as u64;
            }
            Ok(total)
        })?;
        let log = TeacherLog {
            tree,
            db: db.clone(),
            key,
            config,
            bytes,
            evicted: AtomicU64::new(0),
        };
        {
            let mut bytes = log.bytes.lock().unwrap_or_else(|p| p.into_inner());
            log.remove_expired(&mut bytes, SystemTime::now())?;
        }
        Ok(log)
    }

    /// Removes the samples older than `max_age` at `now` (keys start with the sample's time,
    /// so they are the first ones).
    fn remove_expired(&self, bytes: &mut u64, now: SystemTime) -> Result<()> {
        let Some(max_age) = self.config.max_age else {
            return Ok(());
        };
        let cutoff = unix_ms(now.checked_sub(max_age).unwrap_or(UNIX_EPOCH));
        while let Some((key, value)) = self.tree.first().map_err(|e| self.storage(e))? {
            if sample_time(&key) >= cutoff {
                break;
            }
            if self
                .tree
                .remove(&key)
                .map_err(|e| self.storage(e))?
                .is_some()
            {
                *bytes = bytes.saturating_sub(value.len() as u64);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The settings it was opened with.
    pub fn config(&self) -> DistillConfig {
        self.config
    }

    /// Seals and stores `sample`, then removes the samples older than `max_age` and the oldest
    /// ones while the log is over `max_bytes` (a sample larger than `max_bytes` alone is not
    /// stored). Durable at the database's next flush, like the cache's entries.
    pub fn record(&self, sample: &TeacherSample) -> Result<()> {
        let mut body = serde_json::to_vec(sample)
            .map_err(|e| Error::Config(format!("a teacher sample could not be encoded: {e}")))?;
        let nonce = self.key.seal(AAD, &mut body)?;
        let mut value = Vec::with_capacity(1 + NONCE_LEN + body.len());
        value.push(VERSION);
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&body);
        let size = value.len() as u64;
        if size > self.config.max_bytes {
            tracing::debug!(
                size,
                max_bytes = self.config.max_bytes,
                "teacher sample not kept: larger than [distill].max_bytes"
            );
            return Ok(());
        }
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        // The sample's time, then a sled id (unique, across restarts too): keys sort oldest
        // first.
        let id = self.db.sled().generate_id().map_err(|e| self.storage(e))?;
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&sample.at_unix_ms.to_be_bytes());
        key[8..].copy_from_slice(&id.to_be_bytes());
        self.tree.insert(key, value).map_err(|e| self.storage(e))?;
        *bytes += size;
        self.remove_expired(&mut bytes, SystemTime::now())?;
        while *bytes > self.config.max_bytes {
            match self.tree.pop_min().map_err(|e| self.storage(e))? {
                Some((_, old)) => {
                    *bytes = bytes.saturating_sub(old.len() as u64);
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    *bytes = 0;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Every readable sample, oldest first, and how many could not be read.
    pub fn samples(&self) -> Result<(Vec<TeacherSample>, u64)> {
        let mut samples = Vec::new();
        let mut unreadable = 0;
        for entry in self.tree.iter() {
            let (_, value) = entry.map_err(|e| self.storage(e))?;
            match self.open_sample(&value) {
                Some(s) => samples.push(s),
                None => unreadable += 1,
            }
        }
        Ok((samples, unreadable))
    }

    fn open_sample(&self, value: &[u8]) -> Option<TeacherSample> {
        let (&version, rest) = value.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let mut sealed = sealed.to_vec();
        let body = self.key.open(nonce, AAD, &mut sealed)?;
        serde_json::from_slice(body).ok()
    }

    /// Writes every readable sample, oldest first, as one line of JSONL each
    /// ([`TeacherSample::to_jsonl`]).
    pub fn export_jsonl(&self, out: &mut dyn Write, metadata: bool) -> Result<ExportSummary> {
        let mut summary = ExportSummary {
            written: 0,
            unreadable: 0,
        };
        for entry in self.tree.iter() {
            let (_, value) = entry.map_err(|e| self.storage(e))?;
            let Some(sample) = self.open_sample(&value) else {
                summary.unreadable += 1;
                continue;
            };
            writeln!(out, "{}", sample.to_jsonl(metadata))
                .map_err(|e| Error::io("writing the export", e))?;
            summary.written += 1;
        }
        Ok(summary)
    }

    /// Samples and bytes stored.
    pub fn stats(&self) -> TeacherStats {
        TeacherStats {
            samples: self.tree.len() as u64,
            bytes: *self.bytes.lock().unwrap_or_else(|p| p.into_inner()),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    /// Removes every sample; returns how many there were.
    pub fn clear(&self) -> Result<u64> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.tree.len() as u64;
        self.tree.clear().map_err(|e| self.storage(e))?;
        *bytes = 0;
        Ok(n)
    }

    fn storage(&self, e: sled::Error) -> Error {
        crate::cache::storage_error(self.db.path(), e)
    }

    /// Writes what was stored to disk.
    pub fn flush(&self) -> Result<()> {
        self.tree.flush().map(|_| ()).map_err(|e| self.storage(e))
    }
}

/// The teacher log's key for a router given its cache key by the app
/// ([`RouterBuilder::cache_key`](crate::RouterBuilder::cache_key)): derived from it
/// (SHA-256 with a label), so no key file is written. Open the log with it to read it back.
pub fn teacher_key_for(cache_key: &[u8; 32]) -> Result<EncryptionKey> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"edgeroute teacher key v1");
    ctx.update(cache_key);
    EncryptionKey::from_bytes(ctx.finish().as_ref())
}

/// The time (milliseconds since the Unix epoch) a sample's key starts with.
fn sample_time(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Milliseconds since the Unix epoch of `at` (0 before it).
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample(answer: &str) -> TeacherSample {
        TeacherSample {
            at_unix_ms: 1_700_000_000_000,
            rule: "hard-task-to-cloud".into(),
            model: "cloud/gpt-4o-mini".into(),
            messages: vec![
                Message::system("Be brief."),
                Message::user("Write to <EMAIL_1> about the invoice."),
            ],
            answer: answer.into(),
            redacted_spans: 1,
            pii_in_clear: false,
            escalated: false,
            usage: Usage::new(12, 5),
        }
    }

    fn open(dir: &std::path::Path, key: [u8; 32], max_bytes: u64) -> TeacherLog {
        let db = Database::open(dir).unwrap();
        let config = DistillConfig {
            collect: true,
            max_bytes,
            ..DistillConfig::default()
        };
        TeacherLog::open(&db, EncryptionKey::from_bytes(&key).unwrap(), config).unwrap()
    }

    #[test]
    fn samples_older_than_max_age_are_removed_when_opened_and_when_recording() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_ms(SystemTime::now());
        let day = 24 * 3600 * 1000;
        let at = |days_ago: u64, answer: &str| TeacherSample {
            at_unix_ms: now - days_ago * day,
            ..sample(answer)
        };
        {
            // No age limit: everything is kept.
            let log = open(dir.path(), [5; 32], 1 << 20);
            log.record(&at(10, "ten days old")).unwrap();
            log.record(&at(1, "one day old")).unwrap();
            assert_eq!(log.stats().samples, 2);
        }
        let db = Database::open(dir.path()).unwrap();
        let config = DistillConfig {
            collect: true,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            ..DistillConfig::default()
        };
        let log =
            TeacherLog::open(&db, EncryptionKey::from_bytes(&[5; 32]).unwrap(), config).unwrap();
        let answers = |log: &TeacherLog| -> Vec<String> {
            log.samples()
                .unwrap()
                .0
                .into_iter()
                .map(|s| s.answer)
                .collect()
        };
        assert_eq!(answers(&log), ["one day old"]);
        let one = log.stats().bytes;
        // A sample recorded with an old time (a clock set back) is removed at once.
        log.record(&at(30, "thirty days old")).unwrap();
        log.record(&at(0, "today")).unwrap();
        assert_eq!(answers(&log), ["one day old", "today"]);
        assert_eq!(log.stats().evicted, 2);
        assert!(log.stats().bytes < 3 * one, "bytes kept current");
    }

    #[test]
    fn samples_come_back_in_order_across_a_reopen_and_are_sealed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path(), [7; 32], 1 << 20);
            log.record(&sample("Dear <EMAIL_1>, first")).unwrap();
            log.record(&sample("Dear <EMAIL_1>, second")).unwrap();
            log.flush().unwrap();
        }
        let log = open(dir.path(), [7; 32], 1 << 20);
        let (samples, unreadable) = log.samples().unwrap();
        assert_eq!(unreadable, 0);
        let answers: Vec<_> = samples.iter().map(|s| s.answer.as_str()).collect();
        assert_eq!(answers, ["Dear <EMAIL_1>, first", "Dear <EMAIL_1>, second"]);
        assert_eq!(samples[0], sample("Dear <EMAIL_1>, first"));
        assert_eq!(log.stats().samples, 2);
        assert!(log.stats().bytes > 0, "bytes counted again when reopened");
        // Nothing of the text is on disk in the clear.
        let mut on_disk = Vec::new();
        for f in walk(dir.path()) {
            on_disk.extend(std::fs::read(f).unwrap());
        }
        assert!(!on_disk.windows(6).any(|w| w == b"second"));
        assert!(!on_disk.windows(7).any(|w| w == b"invoice"));
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
        files
    }

    #[test]
    fn another_key_reads_nothing_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), [1; 32], 1 << 20)
            .record(&sample("secret answer"))
            .unwrap();
        let log = open(dir.path(), [2; 32], 1 << 20);
        let (samples, unreadable) = log.samples().unwrap();
        assert!(samples.is_empty());
        assert_eq!(unreadable, 1);
        let mut out = Vec::new();
        let summary = log.export_jsonl(&mut out, false).unwrap();
        assert_eq!((summary.written, summary.unreadable), (0, 1));
        assert!(out.is_empty());
    }

    /// The size on disk of one `sample("answer 0")`, measured in a log under `dir` that is
    /// left empty.
    fn one_sample_bytes(dir: &std::path::Path, key: [u8; 32]) -> u64 {
        let log = open(dir, key, 1 << 20);
        log.record(&sample("answer 0")).unwrap();
        let one = log.stats().bytes;
        log.clear().unwrap();
        one
    }

    #[test]
    fn the_oldest_samples_go_first_beyond_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let one = one_sample_bytes(dir.path(), [3; 32]);
        // Room for three samples of this size.
        let log = open(dir.path(), [3; 32], one * 3 + one / 2);
        for i in 0..5 {
            log.record(&sample(&format!("answer {i}"))).unwrap();
        }
        let (samples, _) = log.samples().unwrap();
        let answers: Vec<_> = samples.iter().map(|s| s.answer.as_str()).collect();
        assert_eq!(answers, ["answer 2", "answer 3", "answer 4"]);
        let stats = log.stats();
        assert_eq!((stats.samples, stats.evicted), (3, 2));
        assert!(stats.bytes <= one * 3 + one / 2);
        // A sample larger than the whole budget is not kept, and evicts nothing.
        log.record(&sample(&"x".repeat(4 * one as usize))).unwrap();
        assert_eq!(log.stats().samples, 3);
    }

    #[test]
    fn handles_on_one_database_share_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let one = one_sample_bytes(dir.path(), [4; 32]);
        let (a, b) = (
            open(dir.path(), [4; 32], one * 3 + one / 2),
            open(dir.path(), [4; 32], one * 3 + one / 2),
        );
        for i in 0..6 {
            let log = if i % 2 == 0 { &a } else { &b };
            log.record(&sample(&format!("answer {i}"))).unwrap();
        }
        let answers: Vec<_> = a
            .samples()
            .unwrap()
            .0
            .into_iter()
            .map(|s| s.answer)
            .collect();
        assert_eq!(answers, ["answer 3", "answer 4", "answer 5"]);
        assert_eq!(a.stats().bytes, b.stats().bytes);
        assert!(a.stats().bytes <= one * 3 + one / 2);
    }

    #[test]
    fn a_line_is_chat_fine_tuning_jsonl() {
        let s = sample("Dear <EMAIL_1>, the invoice is attached.");
        let line: serde_json::Value = serde_json::from_str(&s.to_jsonl(false)).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Write to <EMAIL_1> about the invoice."},
                {"role": "assistant", "content": "Dear <EMAIL_1>, the invoice is attached."},
            ]})
        );
        let with: serde_json::Value = serde_json::from_str(&s.to_jsonl(true)).unwrap();
        assert_eq!(with["metadata"]["rule"], "hard-task-to-cloud");
        assert_eq!(with["metadata"]["redacted_spans"], 1);
        assert_eq!(with["metadata"]["output_tokens"], 5);
        assert!(!s.to_jsonl(false).contains('\n'), "one line per sample");
    }

    #[test]
    fn debug_output_never_shows_text() {
        let s = sample("the whole answer");
        let shown = format!("{s:?}");
        assert!(!shown.contains("the whole answer"));
        assert!(!shown.contains("invoice"));
    }

    /// The verdict follows the plan, what the scanner found and `[distill]`.
    #[test]
    fn the_teacher_verdict_follows_the_plan_the_data_and_the_settings() {
        use crate::decision::{HedgeDelay, HedgeFirst, Plan};
        use crate::request::ConfidenceStat;
        use TeacherVerdict::*;
        let collect = DistillConfig {
            collect: true,
            ..DistillConfig::default()
        };
        let with_pii = DistillConfig {
            include_pii: true,
            ..collect
        };
        let cloud = |redact| Plan::Cloud { redact, pin: false };
        let cascade = |redact| Plan::Cascade {
            min_confidence: -1.0,
            statistic: ConfidenceStat::Mean,
            redact,
        };
        let hedge = |redact| Plan::Hedge {
            first: HedgeFirst::Local,
            after: HedgeDelay::Fixed(std::time::Duration::from_millis(100)),
            redact,
        };
        let refuse = Plan::Refuse {
            message: "no".into(),
        };
        // (settings, plan, personal data found, cloud reachable, verdict, kept)
        for (config, plan, pii, reachable, want, kept) in [
            (
                DistillConfig::default(),
                cloud(true),
                true,
                true,
                NotCollecting,
                false,
            ),
            (
                collect,
                Plan::Local { pin: true },
                true,
                true,
                NoCloudAnswer,
                false,
            ),
            (collect, refuse, false, true, NoCloudAnswer, false),
            (
                collect,
                Plan::Local { pin: false },
                true,
                true,
                Kept { redacted: true },
                true,
            ),
            (
                collect,
                Plan::Local { pin: false },
                true,
                false,
                NoCloudAnswer,
                false,
            ),
            (collect, cascade(true), false, false, NoCloudAnswer, false),
            (
                collect,
                cloud(true),
                true,
                true,
                Kept { redacted: true },
                true,
            ),
            (
                collect,
                cloud(true),
                false,
                true,
                Kept { redacted: false },
                true,
            ),
            (
                collect,
                cloud(false),
                false,
                true,
                Kept { redacted: false },
                true,
            ),
            (collect, cloud(false), true, true, NotKeptPiiInClear, false),
            (with_pii, cloud(false), true, true, KeptWithPiiInClear, true),
            (
                collect,
                cascade(false),
                true,
                true,
                NotKeptPiiInClear,
                false,
            ),
            (
                collect,
                cascade(true),
                true,
                true,
                Kept { redacted: true },
                true,
            ),
            (
                collect,
                hedge(false),
                false,
                true,
                Kept { redacted: false },
                true,
            ),
            (with_pii, hedge(false), true, true, KeptWithPiiInClear, true),
        ] {
            let verdict = TeacherVerdict::of(&config, &plan, pii, reachable);
            assert_eq!(verdict, want, "{plan:?} pii {pii} reachable {reachable}");
            assert_eq!(verdict.keeps(), kept, "{verdict}");
        }
    }
}
