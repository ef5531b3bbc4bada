//! A fixed set of sessions shared by concurrent generations (`Session::run` needs `&mut`), each
//! with the prompt cache its last generation left behind.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ort::session::Session;

use super::decoder::PromptKv;
use crate::error::{Error, Result};

/// How often a request waiting for a session checks whether it should stop waiting.
const GIVE_UP_POLL: Duration = Duration::from_millis(10);

/// A session and the keys and values of the last prompt it ran.
struct Slot {
    session: Session,
    prompt_kv: Option<PromptKv>,
}

/// Sessions waiting to be used. A generation checks one out for its whole length (its KV cache
/// lives outside the session, but runs on one thread anyway); others wait for it.
pub(crate) struct Pool {
    idle: Mutex<Vec<Slot>>,
    returned: Condvar,
}

/// A checked-out session; goes back to the pool on drop.
pub(crate) struct Lease<'p> {
    pool: &'p Pool,
    slot: Option<Slot>,
}

impl Pool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        Pool {
            idle: Mutex::new(
                sessions
                    .into_iter()
                    .map(|session| Slot {
                        session,
                        prompt_kv: None,
                    })
                    .collect(),
            ),
            returned: Condvar::new(),
        }
    }

    /// Waits for a free session, preferring the one whose cache shares most of `prompt`.
    /// `give_up` is asked every few milliseconds while waiting: its error (the caller left, the
    /// deadline passed) ends the wait.
    pub(crate) fn lease(
        &self,
        prompt: &[u32],
        give_up: &dyn Fn() -> Result<()>,
    ) -> Result<Lease<'_>> {
        let poisoned = |_| Error::Inference("session pool poisoned by a panic".into());
        let mut idle = self.idle.lock().map_err(poisoned)?;
        loop {
            let best = (0..idle.len()).max_by_key(|&i| {
                idle[i]
                    .prompt_kv
                    .as_ref()
                    .map_or(0, |kv| kv.reusable(prompt))
            });
            if let Some(i) = best {
                return Ok(Lease {
                    pool: self,
                    slot: Some(idle.swap_remove(i)),
                });
            }
            give_up()?;
            idle = self
                .returned
                .wait_timeout(idle, GIVE_UP_POLL)
                .map_err(|_| Error::Inference("session pool poisoned by a panic".into()))?
                .0;
        }
    }
}

impl Lease<'_> {
    fn slot(&mut self) -> Result<&mut Slot> {
        self.slot
            .as_mut()
            .ok_or_else(|| Error::Inference("session already returned".into()))
    }

    pub(crate) fn session(&mut self) -> Result<&mut Session> {
        Ok(&mut self.slot()?.session)
    }

    /// Takes the session's prompt cache (a generation either resumes from it or replaces it).
    pub(crate) fn take_prompt_kv(&mut self) -> Option<PromptKv> {
        self.slot().ok()?.prompt_kv.take()
    }

    /// Leaves `kv` with the session for the next generation.
    pub(crate) fn keep_prompt_kv(&mut self, kv: PromptKv) {
        if let Ok(slot) = self.slot() {
            slot.prompt_kv = Some(kv);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            if let Ok(mut idle) = self.pool.idle.lock() {
                idle.push(s);
                self.pool.returned.notify_one();
            }
        }
    }
}
