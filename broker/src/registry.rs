//! Who is connected: client id -> user binding, per-user counts, takeover.
//!
//! A client id belongs to the user who holds it; another user presenting it
//! is refused. The same user reconnecting takes the session over: the old
//! connection is told to stop and the new one waits until it has left the
//! router, so the router never sees two links for one client id.
//! A `parking_lot::Mutex`: held for map updates only, never across an await.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, OwnedMutexGuard};

struct Entry {
    user: String,
    generation: u64,
    stop: Arc<Notify>,
    alive: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<String, Entry>,
    per_user: HashMap<String, usize>,
    total: usize,
    next_gen: u64,
}

/// Shared registry handle.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// Why a client id cannot be claimed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Held by another user.
    InUse,
    /// The user has too many connections.
    UserLimit,
    /// The server is full.
    ServerFull,
}

/// Held by a connection for its lifetime; releasing it frees the client id.
pub struct Claim {
    registry: Registry,
    client_id: String,
    user: String,
    generation: u64,
    /// Notified when another connection of the same user takes the id over.
    pub stop: Arc<Notify>,
    _alive: OwnedMutexGuard<()>,
    /// True when this is the user's first live connection.
    pub first_of_user: bool,
    released: bool,
}

impl Registry {
    /// Claims `client_id` for `user`, stopping and awaiting a previous
    /// connection of the same user with the same id.
    pub async fn claim(
        &self,
        client_id: &str,
        user: &str,
        per_user_max: usize,
        total_max: usize,
    ) -> Result<Claim, ClaimError> {
        loop {
            let previous = {
                let mut g = self.inner.lock();
                match g.clients.get(client_id) {
                    Some(e) if e.user != user => return Err(ClaimError::InUse),
                    Some(e) => Some((e.stop.clone(), e.alive.clone())),
                    None => {
                        let count = g.per_user.get(user).copied().unwrap_or(0);
                        if count >= per_user_max {
                            return Err(ClaimError::UserLimit);
                        }
                        if g.total >= total_max {
                            return Err(ClaimError::ServerFull);
                        }
                        g.next_gen += 1;
                        let generation = g.next_gen;
                        let alive = Arc::new(tokio::sync::Mutex::new(()));
                        let guard = match alive.clone().try_lock_owned() {
                            Ok(guard) => guard,
                            Err(_) => continue,
                        };
                        let stop = Arc::new(Notify::new());
                        g.clients.insert(
                            client_id.to_owned(),
                            Entry {
                                user: user.to_owned(),
                                generation,
                                stop: stop.clone(),
                                alive,
                            },
                        );
                        *g.per_user.entry(user.to_owned()).or_default() += 1;
                        g.total += 1;
                        return Ok(Claim {
                            registry: self.clone(),
                            client_id: client_id.to_owned(),
                            user: user.to_owned(),
                            generation,
                            stop,
                            _alive: guard,
                            first_of_user: count == 0,
                            released: false,
                        });
                    }
                }
            };
            if let Some((stop, alive)) = previous {
                stop.notify_one();
                // resolves once the old connection has dropped its claim
                let _ = alive.lock().await;
                // the old task removes its entry before dropping the guard
            }
        }
    }

    /// Live connections of a user.
    pub fn connections_of(&self, user: &str) -> usize {
        self.inner.lock().per_user.get(user).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.inner.lock().total
    }
}

impl Claim {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Releases the claim; returns true when the user has no connection left.
    fn release(&self) -> bool {
        let mut g = self.registry.inner.lock();
        if g.clients
            .get(&self.client_id)
            .is_some_and(|e| e.generation == self.generation)
        {
            g.clients.remove(&self.client_id);
        }
        g.total = g.total.saturating_sub(1);
        let left = match g.per_user.get_mut(&self.user) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            g.per_user.remove(&self.user);
        }
        left == 0
    }

    /// Releases now and tells whether this was the user's last connection.
    pub fn finish(mut self) -> bool {
        self.released = true;
        self.release()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.released {
            self.release();
        }
    }
}
