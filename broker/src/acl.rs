//! Authorization of every SUBSCRIBE, PUBLISH and delivery (PROTOCOL.md's table).
//!
//! [`Access`] is the broker's view of room membership, written by the bridge
//! (directly in one process, through `chat/hooks/access` when split) and read on
//! every check. A `parking_lot::RwLock` because checks are short, never await,
//! and vastly outnumber writes.

use crate::auth::Principal;
use crate::names::valid_id;
use misses::Misses;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod misses;
pub use crate::rate::LoadBudget;

/// Outcome of a check; `Deny` names the rule for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(&'static str),
}

impl Decision {
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// Loads a room's access (open channel?, joined members) from the store, for
/// rooms the broker has not heard of since it started: `Ok(None)` when the
/// room does not exist, `Err` when the store could not answer.
pub type Loader = Arc<
    dyn Fn(
            String,
        )
            -> Pin<Box<dyn Future<Output = Result<Option<(bool, Vec<String>)>, String>> + Send>>
        + Send
        + Sync,
>;

/// How [`Access::ensure`] answered (the caller counts it in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Known already, or there is no store to ask (a broker run apart).
    Known,
    /// Remembered as missing: no store read.
    CachedMiss,
    /// The connection's load budget is spent: no store read, and the room
    /// counts as unknown for this packet.
    Throttled,
    /// Read from the store, and found.
    Found,
    /// Read from the store, and missing (now remembered).
    Missing,
    /// The store read failed (not remembered).
    Failed,
}

#[derive(Default)]
struct Inner {
    /// rooms whose state came from the loader
    loaded: HashSet<String>,
    /// room -> (open channel?, joined members)
    rooms: HashMap<String, (bool, HashSet<String>)>,
    /// user -> rooms joined
    user_rooms: HashMap<String, HashSet<String>>,
    /// rooms the store said do not exist, for a while
    misses: Misses,
}

/// Room membership as the broker knows it.
#[derive(Default)]
pub struct Access {
    inner: RwLock<Inner>,
    loader: RwLock<Option<Loader>>,
    shared_loader: RwLock<Option<SharedLoader>>,
}

/// Finds, in the store, a room two users are both joined to (`(a, b)` ->
/// a room id): presence is allowed between users who share a room, and
/// after a restart the broker has loaded none of their rooms yet.
pub type SharedLoader = Arc<
    dyn Fn(String, String) -> Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send>>
        + Send
        + Sync,
>;

impl Access {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the loader used by [`Access::ensure`].
    pub fn set_loader(&self, loader: Loader) {
        *self.loader.write() = Some(loader);
    }

    /// Sets where [`Access::find_shared`] looks.
    pub fn set_shared_loader(&self, loader: SharedLoader) {
        *self.shared_loader.write() = Some(loader);
    }

    /// A room `a` and `b` are both joined to, from the store (one load of
    /// `budget`); `None` without a loader, a match, or budget.
    pub async fn find_shared(&self, a: &str, b: &str, budget: &mut LoadBudget) -> Option<String> {
        let loader = self.shared_loader.read().clone()?;
        if !budget.take() {
            return None;
        }
        loader(a.to_owned(), b.to_owned()).await.ok().flatten()
    }

    /// Sizes the cache of missing rooms (`cap` rooms, each for `ttl`).
    pub fn set_miss_cache(&self, cap: usize, ttl: Duration) {
        self.inner.write().misses = Misses::new(cap, ttl);
    }

    /// Makes sure the room's access is known (after a restart the broker
    /// starts empty and learns rooms on first use). A store read costs one
    /// load of `budget` (the connection's); a room the store does not have
    /// is remembered for a while, so naming it again costs nothing.
    pub async fn ensure(&self, room: &str, budget: &mut LoadBudget) -> Ensured {
        {
            let g = self.inner.read();
            if g.loaded.contains(room) {
                return Ensured::Known;
            }
            if g.misses.contains(room, Instant::now()) {
                return Ensured::CachedMiss;
            }
        }
        let Some(loader) = self.loader.read().clone() else {
            return Ensured::Known;
        };
        if !budget.take() {
            return Ensured::Throttled;
        }
        match loader(room.to_owned()).await {
            Ok(Some((open, members))) => {
                let mut g = self.inner.write();
                if g.loaded.insert(room.to_owned()) {
                    let entry = g.rooms.entry(room.to_owned()).or_default();
                    entry.0 |= open;
                    entry.1.extend(members.iter().cloned());
                    for m in members {
                        g.user_rooms.entry(m).or_default().insert(room.to_owned());
                    }
                }
                Ensured::Found
            }
            Ok(None) => {
                let mut g = self.inner.write();
                // the bridge may have told us of it while the store was read
                if !g.rooms.contains_key(room) {
                    g.misses.insert(room, Instant::now());
                }
                Ensured::Missing
            }
            Err(_) => Ensured::Failed,
        }
    }

    /// Marks a room as an open channel (anyone may read its events) or not.
    pub fn set_open(&self, room: &str, open: bool) {
        let mut g = self.inner.write();
        g.misses.remove(room);
        g.rooms.entry(room.to_owned()).or_default().0 = open;
    }

    /// Records whether `user` is a joined member of `room`.
    pub fn set_member(&self, room: &str, user: &str, joined: bool) {
        let mut g = self.inner.write();
        g.misses.remove(room);
        let entry = g.rooms.entry(room.to_owned()).or_default();
        if joined {
            entry.1.insert(user.to_owned());
            g.user_rooms
                .entry(user.to_owned())
                .or_default()
                .insert(room.to_owned());
        } else {
            entry.1.remove(user);
            if let Some(set) = g.user_rooms.get_mut(user) {
                set.remove(room);
                if set.is_empty() {
                    g.user_rooms.remove(user);
                }
            }
        }
    }

    pub fn is_member(&self, room: &str, user: &str) -> bool {
        self.inner
            .read()
            .rooms
            .get(room)
            .is_some_and(|r| r.1.contains(user))
    }

    pub fn can_read(&self, room: &str, user: &str) -> bool {
        self.inner
            .read()
            .rooms
            .get(room)
            .is_some_and(|r| r.0 || r.1.contains(user))
    }

    /// True when both users are joined members of at least one common room
    /// that is not a channel: presence is shared in groups and direct
    /// rooms, never across a channel (a channel of 10,000 members would let
    /// each watch all the others).
    pub fn share_room(&self, a: &str, b: &str) -> bool {
        let g = self.inner.read();
        match (g.user_rooms.get(a), g.user_rooms.get(b)) {
            (Some(x), Some(y)) => {
                let (small, big) = if x.len() <= y.len() { (x, y) } else { (y, x) };
                small
                    .iter()
                    .any(|r| big.contains(r) && !g.rooms.get(r).is_some_and(|room| room.0))
            }
            _ => false,
        }
    }

    /// Users who share a room with `user` (for presence fan-out decisions).
    pub fn rooms_of(&self, user: &str) -> Vec<String> {
        self.inner
            .read()
            .user_rooms
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The rules, bound to a topic prefix.
pub struct Authorizer {
    prefix: String,
    open_topics: bool,
    access: Arc<Access>,
}

impl Authorizer {
    pub fn new(prefix: &str, open_topics: bool, access: Arc<Access>) -> Self {
        Authorizer {
            prefix: prefix.trim_end_matches('/').to_owned(),
            open_topics,
            access,
        }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The room a chat topic or filter names, if any.
    pub fn room_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        match self.chat_levels(topic)?.as_slice() {
            ["rooms", room, ..] if valid_id(room) => Some(room),
            _ => None,
        }
    }

    /// The room whose membership the rule for this publish topic
    /// (`publish`) or subscription filter reads, if any: only those need
    /// the room loaded ([`Access::ensure`]). A send's membership is the
    /// bridge's to check.
    pub fn membership_room<'a>(&self, topic: &'a str, publish: bool) -> Option<&'a str> {
        match self.chat_levels(topic)?.as_slice() {
            ["rooms", room, "typing", _] if valid_id(room) => Some(room),
            ["rooms", room, "events" | "receipts"] if valid_id(room) && !publish => Some(room),
            _ => None,
        }
    }

    /// Is the topic inside the chat namespace (under the prefix)?
    pub fn in_namespace(&self, topic: &str) -> bool {
        self.chat_levels(topic).is_some()
    }

    /// Is this a typing topic or filter (`{prefix}/rooms/{room}/typing/..`)?
    /// Typing is delivered at QoS 0.
    pub fn is_typing(&self, topic: &str) -> bool {
        matches!(
            self.chat_levels(topic).as_deref(),
            Some(["rooms", _, "typing", _])
        )
    }

    /// Levels after the prefix, or `None` if the topic is outside it.
    fn chat_levels<'a>(&self, topic: &'a str) -> Option<Vec<&'a str>> {
        let rest = topic.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix('/')?;
        Some(rest.split('/').collect())
    }

    fn outside(&self, topic_or_filter: &str) -> Decision {
        let first = topic_or_filter.split('/').next().unwrap_or("");
        if first == self.prefix || first == "+" || first == "#" {
            return Decision::Deny("wildcard_over_chat");
        }
        if first.starts_with('$') {
            return Decision::Deny("system_topic");
        }
        if self.open_topics {
            Decision::Allow
        } else {
            Decision::Deny("outside_prefix")
        }
    }

    /// May `who` publish to `topic`?
    pub fn check_publish(&self, who: &Principal, topic: &str) -> Decision {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Decision::Deny("invalid_topic");
        }
        let me = match who {
            Principal::Service { allow, .. } => return service(allow, topic),
            Principal::User(me) => me.as_str(),
        };
        let Some(levels) = self.chat_levels(topic) else {
            return self.outside(topic);
        };
        match levels.as_slice() {
            ["rooms", room, "send", user] if valid_id(room) => {
                if *user == me {
                    Decision::Allow
                } else {
                    Decision::Deny("send_as_other")
                }
            }
            ["rooms", room, "typing", user] if valid_id(room) => {
                if *user != me {
                    Decision::Deny("typing_as_other")
                } else if self.access.is_member(room, me) {
                    Decision::Allow
                } else {
                    Decision::Deny("not_member")
                }
            }
            ["rpc", user, method] if !method.is_empty() => {
                if *user == me {
                    Decision::Allow
                } else {
                    Decision::Deny("rpc_as_other")
                }
            }
            _ => Decision::Deny("bridge_only_topic"),
        }
    }

    /// May `who`, connected as `client_id`, subscribe to `filter`?
    pub fn check_subscribe(&self, who: &Principal, client_id: &str, filter: &str) -> Decision {
        if filter.is_empty() || !valid_filter(filter) {
            return Decision::Deny("invalid_filter");
        }
        let me = match who {
            // a shared subscription `$share/{group}/{filter}` is judged by
            // its filter (a service may share what it may subscribe to)
            Principal::Service { allow, .. } => {
                let shared = filter
                    .strip_prefix("$share/")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(group, f)| !group.is_empty() && !f.is_empty());
                return match shared {
                    Some((_, f)) => service(allow, f),
                    None => service(allow, filter),
                };
            }
            Principal::User(me) => me.as_str(),
        };
        let Some(levels) = self.chat_levels(filter) else {
            return self.outside(filter);
        };
        match levels.as_slice() {
            ["rooms", room, "events"] if valid_id(room) => {
                if self.access.can_read(room, me) {
                    Decision::Allow
                } else {
                    Decision::Deny("not_member")
                }
            }
            ["rooms", room, "receipts"] | ["rooms", room, "typing", _] if valid_id(room) => {
                let ok_last = match levels.get(3) {
                    Some(l) => *l == "+" || valid_id(l),
                    None => true,
                };
                if ok_last && self.access.is_member(room, me) {
                    Decision::Allow
                } else {
                    Decision::Deny("not_member")
                }
            }
            ["users", user, "replies", client] => {
                if *user == me && *client == client_id {
                    Decision::Allow
                } else {
                    Decision::Deny("other_reply_topic")
                }
            }
            ["users", user, "inbox"] => {
                if *user == me {
                    Decision::Allow
                } else {
                    Decision::Deny("other_inbox")
                }
            }
            ["presence", user] if valid_id(user) => {
                if *user == me || self.access.share_room(me, user) {
                    Decision::Allow
                } else {
                    Decision::Deny("presence_no_shared_room")
                }
            }
            _ => Decision::Deny("chat_filter_not_allowed"),
        }
    }

    /// Re-checked on every delivery of a room or user topic, so a user who left or
    /// was kicked stops receiving at once even though the router still holds
    /// the subscription.
    pub fn may_deliver(&self, who: &Principal, topic: &str) -> bool {
        let Principal::User(me) = who else {
            return true;
        };
        match self.chat_levels(topic).as_deref() {
            Some(["rooms", room, "events"]) => self.access.can_read(room, me),
            Some(["rooms", room, "receipts" | "typing", ..]) => self.access.is_member(room, me),
            Some(["presence", user]) => *user == me || self.access.share_room(me, user),
            // a session's subscriptions are its owner's (crate::registry);
            // should one ever reach another user, their topics still do not
            Some(["users", user, ..]) => *user == me,
            _ => true,
        }
    }
}

/// `#` only last, wildcards only as whole levels.
fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

fn service(allow: &[String], filter: &str) -> Decision {
    if allow.iter().any(|p| covers(p, filter)) {
        Decision::Allow
    } else {
        Decision::Deny("service_not_allowed")
    }
}

/// Does pattern `p` match every topic that `f` can match?
pub fn covers(p: &str, f: &str) -> bool {
    let mut fl = f.split('/');
    for pl in p.split('/') {
        if pl == "#" {
            return true;
        }
        match fl.next() {
            None => return false,
            Some("#") => return false,
            Some(x) if pl == "+" || pl == x => {}
            Some(_) => return false,
        }
    }
    fl.next().is_none()
}

#[cfg(test)]
mod tests;
