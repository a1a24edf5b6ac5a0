//! Who owns which client id: the client id -> user binding, per-user counts,
//! takeover.
//!
//! A client id belongs to the user who holds it, and to nobody else, for as
//! long as the router may hold a session under it: while connected, and
//! after a connection that asked for a persistent session (3.1.1
//! `clean_session = false`, 5 Clean Start 0) has ended, until the owner
//! connects with a clean session and that connection ends (rumqttd 0.20
//! never expires a persistent session; a restart forgets them all, and this
//! registry with them). Another user presenting the id is refused, so
//! nothing the router queued for the owner reaches anyone else. Ids
//! reserved for service accounts ([`crate::config::BrokerConfig::client_id_reservations`])
//! are refused to everyone else even before their service first connects.
//! A user keeps at most `sessions_per_user` persistent bindings.
//!
//! The same user reconnecting takes the session over: the old connection is
//! told to stop and the new one waits until it has left the router, so the
//! router never sees two links for one client id.
//! A `parking_lot::Mutex`: held for map updates only, never across an await.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, OwnedMutexGuard};

/// The connection holding a client id right now.
struct Holder {
    generation: u64,
    stop: Arc<Notify>,
    alive: Arc<tokio::sync::Mutex<()>>,
}

/// A client id's owner.
struct Binding {
    user: String,
    /// The router may keep a session under this id after its connection ends.
    persistent: bool,
    holder: Option<Holder>,
    /// The generation of the last connection that held it: an expiry set
    /// when that connection ended applies only if nobody connected since.
    last_gen: u64,
}

#[derive(Default)]
struct Inner {
    bindings: HashMap<String, Binding>,
    /// Client id -> the account it is kept for, whether connected or not.
    reserved: HashMap<String, String>,
    /// Live connections per user.
    per_user: HashMap<String, usize>,
    /// Persistent bindings per user, connected or not.
    sessions: HashMap<String, usize>,
    total: usize,
    next_gen: u64,
}

impl Inner {
    fn count_session(&mut self, user: &str, delta: isize) {
        let n = self.sessions.entry(user.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.sessions.remove(user);
        }
    }
}

/// Shared registry handle.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// Why a client id cannot be claimed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Held by another user, connected or not.
    InUse,
    /// Reserved for a service account.
    Reserved,
    /// The user has too many connections.
    UserLimit,
    /// The user keeps too many persistent sessions.
    SessionLimit,
    /// The server is full.
    ServerFull,
}

/// The bounds a claim is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimLimits {
    /// Live connections per user.
    pub connections_per_user: usize,
    /// Live connections in all.
    pub(crate) max_connections: usize,
    /// Persistent bindings per user, connected or not.
    pub sessions_per_user: usize,
}

/// Held by a connection for its lifetime; releasing it frees the client id
/// unless the router keeps a session under it.
pub(crate) struct Claim {
    registry: Registry,
    client_id: String,
    user: String,
    generation: u64,
    /// Notified when another connection of the same user takes the id over.
    pub stop: Arc<Notify>,
    _alive: OwnedMutexGuard<()>,
    /// True when this is the user's first live connection.
    pub first_of_user: bool,
    /// The router kept a persistent session under the id when this claim
    /// was made (a clean connection must still end it).
    pub had_session: bool,
    released: bool,
}

impl Registry {
    /// A registry keeping each reserved client id (id -> account) for its account.
    pub(crate) fn new(reserved: HashMap<String, String>) -> Self {
        let inner = Inner {
            reserved,
            ..Default::default()
        };
        Registry {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Claims `client_id` for `user`, stopping and awaiting a previous
    /// connection of the same user with the same id. `persistent`: the
    /// connection asked for a session the router keeps after it ends.
    pub(crate) async fn claim(
        &self,
        client_id: &str,
        user: &str,
        persistent: bool,
        limits: &ClaimLimits,
    ) -> Result<Claim, ClaimError> {
        loop {
            let previous = {
                let mut g = self.inner.lock();
                if g.reserved.get(client_id).is_some_and(|owner| owner != user) {
                    return Err(ClaimError::Reserved);
                }
                match g.bindings.get(client_id) {
                    Some(b) if b.user != user => return Err(ClaimError::InUse),
                    Some(Binding {
                        holder: Some(h), ..
                    }) => Some((h.stop.clone(), h.alive.clone())),
                    other => {
                        let had_session = other.is_some_and(|b| b.persistent);
                        let count = g.per_user.get(user).copied().unwrap_or(0);
                        if count >= limits.connections_per_user {
                            return Err(ClaimError::UserLimit);
                        }
                        if g.total >= limits.max_connections {
                            return Err(ClaimError::ServerFull);
                        }
                        let sessions = g.sessions.get(user).copied().unwrap_or(0);
                        if persistent && !had_session && sessions >= limits.sessions_per_user {
                            return Err(ClaimError::SessionLimit);
                        }
                        g.next_gen += 1;
                        let generation = g.next_gen;
                        let alive = Arc::new(tokio::sync::Mutex::new(()));
                        let guard = match alive.clone().try_lock_owned() {
                            Ok(guard) => guard,
                            Err(_) => continue,
                        };
                        let stop = Arc::new(Notify::new());
                        if persistent && !had_session {
                            g.count_session(user, 1);
                        }
                        g.bindings.insert(
                            client_id.to_owned(),
                            Binding {
                                user: user.to_owned(),
                                // a clean connection ends an old session only
                                // once the router has it ([`Claim::session_cleared`])
                                persistent: persistent || had_session,
                                holder: Some(Holder {
                                    generation,
                                    stop: stop.clone(),
                                    alive,
                                }),
                                last_gen: generation,
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
                            had_session,
                            released: false,
                        });
                    }
                }
            };
            if let Some((stop, alive)) = previous {
                stop.notify_one();
                // resolves once the old connection has dropped its claim
                let _ = alive.lock().await;
                // the old task releases its binding before dropping the guard
            }
        }
    }

    /// Starts ending the persistent session kept under `client_id` whose
    /// last connection was `generation`, if nobody connected since (its
    /// Session Expiry Interval ran out). While the returned guard lives, a
    /// connection presenting the id waits, as for a takeover, so the router
    /// never sees two links for one id; [`Expiry::done`] frees the id.
    pub(crate) fn expire(&self, client_id: &str, generation: u64) -> Option<Expiry> {
        let mut g = self.inner.lock();
        g.next_gen += 1;
        let own = g.next_gen;
        let b = g.bindings.get_mut(client_id)?;
        if b.holder.is_some() || !b.persistent || b.last_gen != generation {
            return None;
        }
        let alive = Arc::new(tokio::sync::Mutex::new(()));
        let guard = alive.clone().try_lock_owned().ok()?;
        b.holder = Some(Holder {
            generation: own,
            stop: Arc::new(Notify::new()),
            alive,
        });
        Some(Expiry {
            registry: self.clone(),
            client_id: client_id.to_owned(),
            generation: own,
            _alive: guard,
        })
    }

    /// Persistent sessions kept, connected or not.
    pub(crate) fn persistent_sessions(&self) -> usize {
        self.inner.lock().sessions.values().sum()
    }

    /// Live connections of a user.
    #[cfg(test)]
    pub(crate) fn connections_of(&self, user: &str) -> usize {
        self.inner.lock().per_user.get(user).copied().unwrap_or(0)
    }

    /// Persistent bindings of a user, connected or not.
    #[cfg(test)]
    pub(crate) fn sessions_of(&self, user: &str) -> usize {
        self.inner.lock().sessions.get(user).copied().unwrap_or(0)
    }

    /// Live connections in all.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.inner.lock().total
    }
}

/// A persistent session being ended by its expiry ([`Registry::expire`]).
pub(crate) struct Expiry {
    registry: Registry,
    client_id: String,
    generation: u64,
    _alive: OwnedMutexGuard<()>,
}

impl Expiry {
    /// The router dropped the session: the id is free again.
    pub(crate) fn done(self) {
        let mut g = self.registry.inner.lock();
        let Some(b) = g.bindings.get(&self.client_id) else {
            return;
        };
        if b.holder.as_ref().map(|h| h.generation) != Some(self.generation) {
            return;
        }
        let user = b.user.clone();
        g.bindings.remove(&self.client_id);
        g.count_session(&user, -1);
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        // not `done` (the router did not answer): the session stays kept
        let mut g = self.registry.inner.lock();
        if let Some(b) = g.bindings.get_mut(&self.client_id) {
            if b.holder.as_ref().map(|h| h.generation) == Some(self.generation) {
                b.holder = None;
            }
        }
    }
}

impl Claim {
    /// This connection's generation (see [`Registry::expire`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The router has linked this connection with a clean session: it
    /// dropped any session kept under the id, and keeps none after this
    /// connection, so the binding ends with it.
    pub(crate) fn session_cleared(&self) {
        let mut g = self.registry.inner.lock();
        let Some(b) = g.bindings.get_mut(&self.client_id) else {
            return;
        };
        if b.holder.as_ref().map(|h| h.generation) != Some(self.generation) || !b.persistent {
            return;
        }
        b.persistent = false;
        g.count_session(&self.user, -1);
    }

    /// Releases the claim; returns true when the user has no connection left.
    fn release(&self) -> bool {
        let mut g = self.registry.inner.lock();
        if let Some(b) = g.bindings.get_mut(&self.client_id) {
            if b.holder.as_ref().map(|h| h.generation) == Some(self.generation) {
                if b.persistent {
                    b.holder = None;
                } else {
                    g.bindings.remove(&self.client_id);
                }
            }
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
    pub(crate) fn finish(mut self) -> bool {
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

#[cfg(test)]
mod tests;
