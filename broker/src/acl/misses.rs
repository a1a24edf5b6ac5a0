//! Rooms remembered as missing ([`Misses`]): with each connection's budget
//! of loads (`crate::rate::LoadBudget`), what bounds the store reads a
//! client can cause by naming rooms.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Rooms the store said do not exist, each remembered for `ttl`, at most
/// `cap` of them (the oldest forgotten first). All entries live equally
/// long, so insertion order is expiry order.
pub(super) struct Misses {
    at: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
    cap: usize,
    ttl: Duration,
}

impl Default for Misses {
    fn default() -> Self {
        Misses::new(10_000, Duration::from_secs(5))
    }
}

impl Misses {
    pub(super) fn new(cap: usize, ttl: Duration) -> Self {
        Misses {
            at: HashMap::new(),
            order: VecDeque::new(),
            cap,
            ttl,
        }
    }

    /// Is `room` remembered as missing?
    pub(super) fn contains(&self, room: &str, now: Instant) -> bool {
        self.at
            .get(room)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.ttl)
    }

    /// Remembers `room` as missing (no-op when the cache holds nothing).
    pub(super) fn insert(&mut self, room: &str, now: Instant) {
        if self.cap == 0 || self.ttl.is_zero() {
            return;
        }
        self.expire(now);
        while self.at.len() >= self.cap {
            if !self.pop_oldest() {
                break;
            }
        }
        self.at.insert(room.to_owned(), now);
        self.order.push_back((room.to_owned(), now));
    }

    /// Forgets `room` (it was just created).
    pub(super) fn remove(&mut self, room: &str) {
        // its queue entry stays until it comes up; `pop_oldest` skips it
        self.at.remove(room);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= self.ttl)
        {
            self.pop_oldest();
        }
        // stale queue entries (removed rooms) must not grow without bound
        if self.order.len() > 2 * self.cap.max(16) {
            let at = &self.at;
            self.order.retain(|(r, t)| at.get(r) == Some(t));
        }
    }

    /// Drops the oldest queue entry and, if it is still current, its room.
    fn pop_oldest(&mut self) -> bool {
        let Some((room, t)) = self.order.pop_front() else {
            return false;
        };
        if self.at.get(&room) == Some(&t) {
            self.at.remove(&room);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut m = Misses::new(3, Duration::from_secs(10));
        for r in ["a", "b", "c", "d"] {
            m.insert(r, t0);
        }
        assert_eq!(m.len(), 3, "bounded");
        assert!(!m.contains("a", t0), "the oldest went first");
        assert!(m.contains("d", t0));
        assert!(!m.contains("d", t0 + Duration::from_secs(10)), "expired");
        m.insert("e", t0 + Duration::from_secs(11));
        assert_eq!(m.len(), 1, "expired entries are dropped on insert");
        m.remove("e");
        assert!(!m.contains("e", t0 + Duration::from_secs(11)));
    }

    #[test]
    fn removed_then_reinserted_room_stays_until_its_own_expiry() {
        let t0 = Instant::now();
        let mut m = Misses::new(10, Duration::from_secs(10));
        m.insert("a", t0);
        m.remove("a");
        m.insert("a", t0 + Duration::from_secs(5));
        // the stale queue entry of the first insert expires at t0 + 10
        m.insert("b", t0 + Duration::from_secs(12));
        assert!(m.contains("a", t0 + Duration::from_secs(12)));
    }

    #[test]
    fn removals_do_not_grow_the_queue() {
        let t0 = Instant::now();
        let mut m = Misses::new(4, Duration::from_secs(60));
        for i in 0..1000 {
            let r = format!("r{i}");
            m.insert(&r, t0);
            m.remove(&r);
        }
        assert!(m.order.len() <= 2 * 16 + 1, "{}", m.order.len());
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut m = Misses::new(0, Duration::from_secs(60));
        m.insert("a", Instant::now());
        assert!(!m.contains("a", Instant::now()));
    }
}
