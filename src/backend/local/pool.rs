//! A fixed set of sessions shared by concurrent generations (`Session::run` needs `&mut`), each
//! with the prompt cache its last generation left behind.

use std::collections::VecDeque;
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
/// lives outside the session, but runs on one thread anyway); others wait for it, and get one
/// in the order they asked (a queue of tickets: a condition variable alone wakes waiters in no
/// set order, so a request could be passed over again and again).
pub(crate) struct Pool {
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Slot>,
    /// Tickets of the requests waiting, oldest first.
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

/// A checked-out session; goes back to the pool on drop.
pub(crate) struct Lease<'p> {
    pool: &'p Pool,
    slot: Option<Slot>,
}

impl Pool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        Pool {
            state: Mutex::new(State {
                idle: sessions
                    .into_iter()
                    .map(|session| Slot {
                        session,
                        prompt_kv: None,
                    })
                    .collect(),
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
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
        let poisoned = || Error::Inference("session pool poisoned by a panic".into());
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push_back(ticket);
        loop {
            if state.waiting.front() == Some(&ticket) {
                let best = (0..state.idle.len()).max_by_key(|&i| {
                    state.idle[i]
                        .prompt_kv
                        .as_ref()
                        .map_or(0, |kv| kv.reusable(prompt))
                });
                if let Some(i) = best {
                    state.waiting.pop_front();
                    let slot = state.idle.swap_remove(i);
                    // The next in line may take another idle session.
                    self.returned.notify_all();
                    return Ok(Lease {
                        pool: self,
                        slot: Some(slot),
                    });
                }
            }
            if let Err(e) = give_up() {
                state.waiting.retain(|&t| t != ticket);
                // The one behind may now be first in line.
                self.returned.notify_all();
                return Err(e);
            }
            state = self
                .returned
                .wait_timeout(state, GIVE_UP_POLL)
                .map_err(|_| poisoned())?
                .0;
        }
    }
}

#[cfg(test)]
impl Pool {
    /// Requests waiting for a session (tests: to queue requests in a known order).
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().map_or(0, |s| s.waiting.len())
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
            if let Ok(mut state) = self.pool.state.lock() {
                state.idle.push(s);
                // Every waiter checks whether it is first in line.
                self.pool.returned.notify_all();
            }
        }
    }
}
