//! The answer cache: exact-match, encrypted at rest, bounded, crash-safe (sled).
//!
//! - [`CacheKey`] (key.rs): SHA-256 over a canonical, length-prefixed encoding of everything that
//!   changes the answer: normalised messages, model identity, generation parameters, policy
//!   version and [`PrivacyClass`]. Built by destructuring the request.
//! - [`EncryptionKey`] (crypt.rs): AES-256-GCM via ring; from the app's bytes or a 0600 key file.
//! - [`CachedAnswer`] and the record format (record.rs): authenticated header + sealed body, the
//!   cache key as associated data.
//! - [`CacheStore`] / [`SledCache`] (store.rs): modes, TTL, byte budget with LRU eviction, stats.
//! - [`Database`] (db.rs): the sled database shared with the [cost ledger](crate::ledger).
//!
//! ```no_run
//! use edgeroute::cache::{CacheConfig, CacheKey, CachedAnswer, Database, EncryptionKey, KeyContext, PrivacyClass, SledCache};
//! use edgeroute::request::{Request, Route, Usage};
//! # fn main() -> edgeroute::Result<()> {
//! let home = edgeroute::home::resolve(None);
//! let db = Database::open(&edgeroute::home::db_dir(&home))?;
//! let key = EncryptionKey::load_or_create(&edgeroute::home::cache_key_file(&home))?;
//! let cache = SledCache::open(&db, key, CacheConfig::default())?;
//! let request = Request::new("What is the capital of France?");
//! let ctx = KeyContext { model: "smollm2", policy_version: "v1", privacy: PrivacyClass::Public, normalize: true };
//! let k = CacheKey::new(&request, &ctx);
//! if cache.get(&k)?.is_none() {
//!     cache.put(&k, &CachedAnswer::new("Paris.", Route::Local, "smollm2", Usage::default()))?;
//! }
//! # Ok(()) }
//! ```

mod crypt;
mod db;
mod key;
mod record;
mod store;

pub use crypt::{EncryptionKey, KEY_LEN};
pub use db::{open_db, Database};
pub(crate) use db::{restrict_to_owner, storage as storage_error};
pub use key::{normalize_text, CacheKey, KeyContext, PrivacyClass};
pub use record::{open_record, seal_record, CachedAnswer, Header, Rejection};
pub use store::{CacheConfig, CacheMode, CacheStats, CacheStore, SledCache};
