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
}

impl Access {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the loader used by [`Access::ensure`].
    pub fn set_loader(&self, loader: Loader) {
        *self.loader.write() = Some(loader);
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

    /// True when both users are joined members of at least one common room.
    pub fn share_room(&self, a: &str, b: &str) -> bool {
        let g = self.inner.read();
        match (g.user_rooms.get(a), g.user_rooms.get(b)) {
            (Some(x), Some(y)) => {
                let (small, big) = if x.len() <= y.len() { (x, y) } else { (y, x) };
                small.iter().any(|r| big.contains(r))
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
            Principal::Service { allow, .. } => return service(allow, filter),
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
mod tests {
    use super::*;
    use std::sync::Arc;

    fn authz() -> Authorizer {
        let access = Arc::new(Access::new());
        access.set_member("r1", "alice", true);
        access.set_member("r1", "bob", true);
        access.set_member("r2", "carol", true);
        access.set_open("news", true);
        Authorizer::new("chat", true, access)
    }

    fn alice() -> Principal {
        Principal::User("alice".into())
    }

    #[test]
    fn publish_rules() {
        let a = authz();
        let p = alice();
        assert!(a.check_publish(&p, "chat/rooms/r1/send/alice").allowed());
        assert!(
            a.check_publish(&p, "chat/rooms/r9/send/alice").allowed(),
            "bridge checks membership"
        );
        assert!(!a.check_publish(&p, "chat/rooms/r1/send/bob").allowed());
        assert!(a.check_publish(&p, "chat/rooms/r1/typing/alice").allowed());
        assert!(!a.check_publish(&p, "chat/rooms/r2/typing/alice").allowed());
        assert!(a.check_publish(&p, "chat/rpc/alice/history").allowed());
        assert!(!a.check_publish(&p, "chat/rpc/bob/history").allowed());
        assert!(!a.check_publish(&p, "chat/rooms/r1/events").allowed());
        assert!(!a.check_publish(&p, "chat/users/alice/inbox").allowed());
        assert!(!a.check_publish(&p, "chat/presence/alice").allowed());
        assert!(a.check_publish(&p, "devices/d1/temp").allowed());
        assert!(!a.check_publish(&p, "$SYS/x").allowed());
    }

    #[test]
    fn subscribe_rules() {
        let a = authz();
        let p = alice();
        let ok = |f: &str| a.check_subscribe(&p, "phone-1", f).allowed();
        assert!(ok("chat/rooms/r1/events"));
        assert!(ok("chat/rooms/news/events"), "open channel");
        assert!(ok("chat/rooms/r1/typing/+"));
        assert!(ok("chat/rooms/r1/receipts"));
        assert!(ok("chat/users/alice/replies/phone-1"));
        assert!(ok("chat/users/alice/inbox"));
        assert!(ok("chat/presence/bob"));
        assert!(ok("devices/#"));
        for bad in [
            "#",
            "+/rooms/r1/events",
            "chat/#",
            "chat/rooms/+/events",
            "chat/rooms/r2/events",
            "chat/rooms/r2/typing/+",
            "chat/rooms/r1/#",
            "chat/rooms/r1/send/+",
            "chat/users/bob/inbox",
            "chat/users/alice/replies/other",
            "chat/users/alice/replies/+",
            "chat/users/bob/replies/phone-1",
            "chat/presence/carol",
            "chat/presence/+",
            "chat/rpc/alice/+",
            "chat/a#",
            "$SYS/#",
        ] {
            assert!(!ok(bad), "{bad} must be refused");
        }
    }

    #[test]
    fn delivery_follows_membership() {
        let a = authz();
        let p = alice();
        assert!(a.may_deliver(&p, "chat/rooms/r1/events"));
        a.access().set_member("r1", "alice", false);
        assert!(!a.may_deliver(&p, "chat/rooms/r1/events"));
        assert!(!a.may_deliver(&p, "chat/presence/bob"));
    }

    /// A loader over a fixed set of rooms that counts its calls.
    fn counting_loader(
        rooms: &'static [&'static str],
    ) -> (Loader, Arc<std::sync::atomic::AtomicUsize>) {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let loader: Loader = Arc::new(move |room: String| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                match room.as_str() {
                    "broken" => Err("store down".to_string()),
                    r if rooms.contains(&r) => Ok(Some((false, vec!["alice".to_string()]))),
                    _ => Ok(None),
                }
            })
        });
        (loader, calls)
    }

    #[tokio::test]
    async fn misses_are_remembered_until_the_room_is_created() {
        let access = Access::new();
        let (loader, calls) = counting_loader(&["r1"]);
        access.set_loader(loader);
        let mut budget = LoadBudget::new(100);
        let calls = || calls.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(access.ensure("r1", &mut budget).await, Ensured::Found);
        assert_eq!(access.ensure("r1", &mut budget).await, Ensured::Known);
        assert!(access.is_member("r1", "alice"));
        assert_eq!(access.ensure("nope", &mut budget).await, Ensured::Missing);
        for _ in 0..50 {
            assert_eq!(
                access.ensure("nope", &mut budget).await,
                Ensured::CachedMiss
            );
        }
        assert_eq!(calls(), 2, "one read per room");
        // created through the bridge (the sink in one process, the
        // access hook when split: both call set_member / set_open)
        access.set_member("nope", "bob", true);
        assert!(access.is_member("nope", "bob"), "usable at once");
        assert_ne!(
            access.ensure("nope", &mut budget).await,
            Ensured::CachedMiss
        );
        assert_eq!(access.ensure("chan", &mut budget).await, Ensured::Missing);
        access.set_open("chan", true);
        assert!(access.can_read("chan", "anyone"));
        assert_ne!(
            access.ensure("chan", &mut budget).await,
            Ensured::CachedMiss
        );
        // a failed read is not remembered
        assert_eq!(access.ensure("broken", &mut budget).await, Ensured::Failed);
        assert_eq!(access.ensure("broken", &mut budget).await, Ensured::Failed);
    }

    #[tokio::test]
    async fn loads_are_rated_per_budget() {
        let access = Access::new();
        let (loader, calls) = counting_loader(&[]);
        access.set_loader(loader);
        let mut hostile = LoadBudget::new(1);
        let mut outcomes = Vec::new();
        for i in 0..20 {
            outcomes.push(access.ensure(&format!("ghost-{i}"), &mut hostile).await);
        }
        let made = outcomes.iter().filter(|o| **o == Ensured::Missing).count();
        // a burst of 2 (and a third if the test took over a second)
        assert!((2..=3).contains(&made), "{outcomes:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), made);
        // another connection's budget is its own
        let mut other = LoadBudget::new(1);
        assert_eq!(access.ensure("ghost-x", &mut other).await, Ensured::Missing);
    }

    #[tokio::test]
    async fn no_loader_no_reads() {
        let access = Access::new();
        let mut budget = LoadBudget::new(1);
        for _ in 0..5 {
            assert_eq!(access.ensure("r", &mut budget).await, Ensured::Known);
        }
    }

    #[test]
    fn only_membership_rules_name_a_room_to_load() {
        let a = authz();
        assert_eq!(
            a.membership_room("chat/rooms/r1/typing/alice", true),
            Some("r1")
        );
        assert_eq!(a.membership_room("chat/rooms/r1/send/alice", true), None);
        assert_eq!(a.membership_room("chat/rooms/r1/events", true), None);
        assert_eq!(a.membership_room("chat/rooms/r1/events", false), Some("r1"));
        assert_eq!(
            a.membership_room("chat/rooms/r1/receipts", false),
            Some("r1")
        );
        assert_eq!(
            a.membership_room("chat/rooms/r1/typing/+", false),
            Some("r1")
        );
        assert_eq!(a.membership_room("chat/rooms/r1/send/+", false), None);
        assert_eq!(a.membership_room("chat/rooms/+/events", false), None);
        assert_eq!(a.membership_room("dev/rooms/r1/events", false), None);
        assert!(a.is_typing("chat/rooms/r1/typing/+"));
        assert!(!a.is_typing("chat/rooms/r1/events"));
        assert!(!a.is_typing("dev/rooms/r1/typing/x"));
        assert!(a.in_namespace("chat/rooms/r1/send/alice"));
        assert!(!a.in_namespace("chatter/x"));
        assert!(!a.in_namespace("dev/x"));
    }

    #[test]
    fn user_topics_reach_their_user_only() {
        let a = authz();
        let p = alice();
        assert!(a.may_deliver(&p, "chat/users/alice/inbox"));
        assert!(a.may_deliver(&p, "chat/users/alice/replies/alice-1"));
        assert!(!a.may_deliver(&p, "chat/users/bob/inbox"));
        assert!(!a.may_deliver(&p, "chat/users/bob/replies/bob-1"));
    }

    #[test]
    fn service_patterns() {
        assert!(covers("chat/#", "chat/rooms/+/send/+"));
        assert!(covers("chat/rooms/+/send/+", "chat/rooms/+/send/+"));
        assert!(!covers("chat/rooms/+/send/+", "chat/rooms/#"));
        assert!(!covers("chat/hooks/#", "chat/rooms/r1/events"));
        assert!(covers("chat/hooks/#", "chat/hooks"));
        assert!(!covers("a/+", "a/b/c"));
    }
}
