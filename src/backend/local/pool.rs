//! A fixed set of sessions shared by concurrent generations (`Session::run` needs `&mut`).

use std::sync::{Condvar, Mutex};

use ort::session::Session;

use crate::error::{Error, Result};

/// Sessions waiting to be used. A generation checks one out for its whole length (its KV cache
/// lives outside the session, but runs on one thread anyway); others wait for it.
pub(crate) struct Pool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
}

/// A checked-out session; goes back to the pool on drop.
pub(crate) struct Lease<'p> {
    pool: &'p Pool,
    session: Option<Session>,
}

impl Pool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        Pool {
            idle: Mutex::new(sessions),
            returned: Condvar::new(),
        }
    }

    /// Waits for a free session.
    pub(crate) fn lease(&self) -> Result<Lease<'_>> {
        let poisoned = |_| Error::Inference("session pool poisoned by a panic".into());
        let mut idle = self.idle.lock().map_err(poisoned)?;
        loop {
            if let Some(session) = idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(session),
                });
            }
            idle = self.returned.wait(idle).map_err(poisoned)?;
        }
    }
}

impl Lease<'_> {
    pub(crate) fn session(&mut self) -> Result<&mut Session> {
        self.session
            .as_mut()
            .ok_or_else(|| Error::Inference("session already returned".into()))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Ok(mut idle) = self.pool.idle.lock() {
                idle.push(s);
                self.pool.returned.notify_one();
            }
        }
    }
}
