//! Users' presence (`{prefix}/presence/{user}`), kept by the broker.
//!
//! Presence behaves as a retained message: a subscriber gets the user's
//! current state at once, then every change. It is *not* a rumqttd retained
//! message, though: rumqttd 0.20 matches every SUBSCRIBE against every
//! retained topic (`DataLog::read_retained_messages`), and one retained
//! presence per user made each subscription cost O(users) on the router's
//! one thread (the reconnect storm's main cost, see
//! bench/results/profile.md). So the last state of each user lives here;
//! changes go through the router unretained (live subscribers get them as
//! before), and the connection layer hands the current state to a new
//! subscriber after its SUBACK ([`Presence::matching`]).

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;

/// The last presence payload of every user seen since the broker started.
#[derive(Debug)]
pub(crate) struct Presence {
    /// `{prefix}/presence/`
    root: String,
    last: Mutex<HashMap<String, Bytes>>,
    /// Users with a connection to this broker (a cluster's brokers report
    /// them to the bridges, which publish everyone's presence back).
    local: Mutex<std::collections::HashSet<String>>,
}

impl Presence {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            root: format!("{prefix}/presence/"),
            last: Mutex::new(HashMap::new()),
            local: Mutex::new(Default::default()),
        }
    }

    /// Records that `user`'s first connection to this broker began
    /// (`online`) or its last one ended.
    pub(crate) fn set_local(&self, user: &str, online: bool) {
        let mut local = self.local.lock();
        if online {
            local.insert(user.to_owned());
        } else {
            local.remove(user);
        }
    }

    /// Whether `user` has a connection to this broker.
    pub(crate) fn is_local(&self, user: &str) -> bool {
        self.local.lock().contains(user)
    }

    /// Users connected to this broker.
    pub(crate) fn local_users(&self) -> Vec<String> {
        self.local.lock().iter().cloned().collect()
    }

    /// The user of a presence topic.
    pub(crate) fn user_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(&self.root)
            .filter(|u| !u.is_empty() && !u.contains('/'))
    }

    /// The topic of `user`'s presence.
    pub(crate) fn topic(&self, user: &str) -> String {
        format!("{}{user}", self.root)
    }

    /// Records `user`'s current presence payload.
    pub(crate) fn set(&self, user: &str, payload: Bytes) {
        self.last.lock().insert(user.to_owned(), payload);
    }

    /// Whether a subscription to `filter` may match a presence topic (so
    /// the SUBACK is followed by [`Presence::matching`]). Only filters whose
    /// levels can reach `{prefix}/presence/<user>`: a user's typing
    /// wildcard (`chat/rooms/r1/typing/+`) must not scan every presence.
    pub(crate) fn may_match(&self, filter: &str) -> bool {
        filter.starts_with(&self.root) || filter_matches(filter, &self.topic("_"))
    }

    /// `(topic, payload)` of every known presence `filter` matches: one
    /// lookup for a user's own topic, a scan for a wildcard (services).
    pub(crate) fn matching(&self, filter: &str) -> Vec<(String, Bytes)> {
        let last = self.last.lock();
        if let Some(user) = filter.strip_prefix(&self.root) {
            if !user.contains(['+', '#', '/']) {
                return last
                    .get(user)
                    .map(|p| vec![(self.topic(user), p.clone())])
                    .unwrap_or_default();
            }
        }
        if !filter.contains(['+', '#']) {
            return Vec::new();
        }
        last.iter()
            .map(|(user, p)| (self.topic(user), p))
            .filter(|(topic, _)| filter_matches(filter, topic))
            .map(|(topic, p)| (topic, p.clone()))
            .collect()
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest, including the
/// parent level); filters starting with a wildcard never match `$` topics.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        for (f, t, want) in [
            ("chat/presence/alice", "chat/presence/alice", true),
            ("chat/presence/alice", "chat/presence/bob", false),
            ("chat/presence/+", "chat/presence/bob", true),
            ("chat/presence/+", "chat/presence/bob/x", false),
            ("chat/#", "chat/presence/bob", true),
            ("chat/presence/#", "chat/presence", true),
            ("#", "chat/presence/bob", true),
            ("+/presence/+", "chat/presence/bob", true),
            ("+/+", "chat/presence/bob", false),
            ("chat/presence", "chat/presence/bob", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
        ] {
            assert_eq!(filter_matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn own_topic_is_a_lookup_and_wildcards_scan() {
        let p = Presence::new("chat");
        p.set("alice", Bytes::from_static(b"{\"online\":true}"));
        p.set("bob", Bytes::from_static(b"{\"online\":false}"));
        p.set("alice", Bytes::from_static(b"{\"online\":false}"));
        assert_eq!(
            p.matching("chat/presence/alice"),
            [(
                "chat/presence/alice".to_owned(),
                Bytes::from_static(b"{\"online\":false}")
            )],
            "the last state only"
        );
        assert!(p.matching("chat/presence/carol").is_empty(), "never seen");
        let mut all: Vec<String> = p
            .matching("chat/presence/+")
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        all.sort();
        assert_eq!(all, ["chat/presence/alice", "chat/presence/bob"]);
        assert_eq!(p.matching("chat/#").len(), 2);
        assert!(p.matching("chat/rooms/+/events").is_empty());
        assert!(p.matching("chat/rooms/r1/events").is_empty());
        assert!(p.may_match("chat/presence/alice") && p.may_match("#"));
        assert!(!p.may_match("chat/rooms/r1/events"));
        assert!(p.may_match("chat/presence/+") && p.may_match("+/presence/#"));
        assert!(!p.may_match("chat/rooms/r1/typing/+"), "no scan for typing");
        assert!(!p.may_match("chat/rooms/+/events"));
    }
}
