//! Retained messages from clients.
//!
//! Inside the chat namespace nothing a user publishes is retained: the
//! retain flag is stripped (typing must not outlive the typist; presence is
//! the broker's own and users may not publish it at all, see `acl`). On open
//! topics each user may hold a bounded number of retained messages of a
//! bounded size; [`Ledger`] keeps who holds which, as the router does not
//! say. Only the last retained message of a topic counts, against the user
//! who published it: a retained publish replaces the topic's previous one
//! (whoever held it), and a publish with an empty payload, retained or not,
//! clears it (that is what rumqttd does).

use crate::auth::Principal;
use parking_lot::Mutex;
use std::collections::HashMap;

/// What to do with a publish, as far as retaining goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Pass it on as it is.
    Pass,
    /// Pass it on without the retain flag (chat namespace).
    Strip,
    /// Refuse it: the user's bound would be exceeded (or retaining is off).
    Refuse,
}

/// Who holds which retained topic, and each user's totals.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// topic -> (user, bytes)
    topics: HashMap<String, (String, usize)>,
    /// user -> (messages, bytes)
    users: HashMap<String, (usize, usize)>,
}

impl Ledger {
    /// Admits `user`'s retained message on `topic` if their totals, with it
    /// replacing whatever they held on that topic, stay within the bounds.
    pub(crate) fn admit(
        &mut self,
        user: &str,
        topic: &str,
        bytes: usize,
        max_count: usize,
        max_bytes: usize,
    ) -> bool {
        let (mut count, mut held) = self.users.get(user).copied().unwrap_or_default();
        if let Some((owner, b)) = self.topics.get(topic) {
            if owner == user {
                count -= 1;
                held -= b;
            }
        }
        if count + 1 > max_count || held.saturating_add(bytes) > max_bytes {
            return false;
        }
        self.clear(topic);
        self.topics
            .insert(topic.to_owned(), (user.to_owned(), bytes));
        let t = self.users.entry(user.to_owned()).or_default();
        t.0 += 1;
        t.1 += bytes;
        true
    }

    /// The topic's retained message is gone: whoever held it holds it no more.
    pub(crate) fn clear(&mut self, topic: &str) {
        let Some((owner, bytes)) = self.topics.remove(topic) else {
            return;
        };
        if let Some(t) = self.users.get_mut(&owner) {
            t.0 = t.0.saturating_sub(1);
            t.1 = t.1.saturating_sub(bytes);
            if t.0 == 0 {
                self.users.remove(&owner);
            }
        }
    }

    /// Retained messages held by users, in all.
    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when no user holds a retained message.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// The retain policy of one broker.
pub(crate) struct Retained {
    ledger: Mutex<Ledger>,
    max_count: usize,
    max_bytes: usize,
}

impl Retained {
    /// Bounds per user: `max_count` messages of `max_bytes` (topic +
    /// payload) together; `max_count` 0 turns retaining off.
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        Retained {
            ledger: Mutex::new(Ledger::default()),
            max_count,
            max_bytes,
        }
    }

    /// Decides on a publish by `who` to `topic` (`in_namespace`: under the
    /// chat prefix) that already passed the ACL, and books it. Returns the
    /// verdict and the number of retained messages now held.
    pub(crate) fn check(
        &self,
        who: &Principal,
        topic: &str,
        in_namespace: bool,
        retain: bool,
        payload_len: usize,
    ) -> (Verdict, usize) {
        let user = match who {
            Principal::User(u) => u.as_str(),
            // services are configured and trusted, not bounded; what they
            // clear or replace is no user's any more
            Principal::Service { .. } => {
                let mut l = self.ledger.lock();
                if payload_len == 0 || retain {
                    l.clear(topic);
                }
                return (Verdict::Pass, l.len());
            }
        };
        if in_namespace {
            let v = if retain {
                Verdict::Strip
            } else {
                Verdict::Pass
            };
            return (v, self.ledger.lock().len());
        }
        let mut l = self.ledger.lock();
        if payload_len == 0 {
            l.clear(topic);
            return (Verdict::Pass, l.len());
        }
        if !retain {
            return (Verdict::Pass, l.len());
        }
        let bytes = topic.len() + payload_len;
        let v = if l.admit(user, topic, bytes, self.max_count, self.max_bytes) {
            Verdict::Pass
        } else {
            Verdict::Refuse
        };
        (v, l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> Principal {
        Principal::User(u.into())
    }

    #[test]
    fn ledger_counts_replaces_and_clears() {
        let mut l = Ledger::default();
        assert!(l.admit("a", "t/1", 10, 2, 100));
        assert!(l.admit("a", "t/2", 10, 2, 100));
        assert!(!l.admit("a", "t/3", 10, 2, 100), "count bound");
        assert!(l.admit("a", "t/1", 80, 2, 100), "replacing one's own");
        assert!(!l.admit("a", "t/1", 91, 2, 100), "byte bound");
        l.clear("t/2");
        assert!(l.admit("a", "t/3", 10, 2, 100));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn taking_over_a_topic_moves_it_to_the_new_publisher() {
        let mut l = Ledger::default();
        assert!(l.admit("a", "t", 10, 1, 100));
        assert!(l.admit("b", "t", 10, 1, 100));
        // a holds nothing now
        assert!(l.admit("a", "u", 10, 1, 100));
        assert!(!l.admit("b", "v", 10, 1, 100));
        l.clear("t");
        assert!(l.admit("b", "v", 10, 1, 100));
        assert_eq!(l.users.len(), 2);
        l.clear("u");
        l.clear("v");
        assert!(l.users.is_empty() && l.is_empty(), "nothing left behind");
    }

    #[test]
    fn the_policy() {
        let r = Retained::new(1, 100);
        let a = user("alice");
        let chat = |retain| r.check(&a, "chat/rooms/r/typing/alice", true, retain, 5).0;
        assert_eq!(chat(true), Verdict::Strip);
        assert_eq!(chat(false), Verdict::Pass);
        assert_eq!(r.check(&a, "d/1", false, true, 5), (Verdict::Pass, 1));
        assert_eq!(r.check(&a, "d/2", false, true, 5).0, Verdict::Refuse);
        assert_eq!(r.check(&a, "d/2", false, false, 5).0, Verdict::Pass);
        // an empty publish clears, retained or not
        assert_eq!(r.check(&a, "d/1", false, false, 0), (Verdict::Pass, 0));
        assert_eq!(r.check(&a, "d/2", false, true, 5).0, Verdict::Pass);
    }

    #[test]
    fn zero_turns_retaining_off() {
        let r = Retained::new(0, 100);
        let a = user("alice");
        assert_eq!(r.check(&a, "d/1", false, true, 1).0, Verdict::Refuse);
        assert_eq!(r.check(&a, "d/1", false, true, 0).0, Verdict::Pass);
        let svc = Principal::Service {
            id: "svc".into(),
            allow: vec!["#".into()],
        };
        assert_eq!(r.check(&svc, "d/1", false, true, 1).0, Verdict::Pass);
        let r = Retained::new(1, 100);
        assert_eq!(r.check(&a, "d/1", false, true, 1), (Verdict::Pass, 1));
        assert_eq!(r.check(&svc, "d/1", false, true, 1), (Verdict::Pass, 0));
        assert_eq!(r.check(&a, "d/2", false, true, 1).0, Verdict::Pass);
    }
}
