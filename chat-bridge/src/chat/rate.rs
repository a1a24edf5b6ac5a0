//! Sends per user per room (`bridge.sends_per_sec`, `bridge.sends_burst`):
//! one keyed GCRA limiter (governor). The key is a hash of user and room
//! under a per-process random key, so a check allocates nothing and no
//! client can aim two users at one budget.

use super::SendLimits;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Checks between two sweeps of budgets that are full again.
const SWEEP_EVERY: u32 = 16_384;

pub(super) struct SendRate {
    limiter: DefaultKeyedRateLimiter<u64>,
    keys: std::collections::hash_map::RandomState,
    checks: AtomicU32,
}

impl SendRate {
    pub(super) fn new(limits: SendLimits) -> Self {
        // bridge.validate keeps per_sec within 0.001..=1e6 and burst within
        // 1..=1e6; out of range here (a library user) means one per second
        let period = Duration::from_secs_f64(1.0 / limits.per_sec.clamp(0.001, 1e6));
        let burst =
            NonZeroU32::new(limits.burst.clamp(1.0, 1e6).round() as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or(Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        SendRate {
            limiter: RateLimiter::dashmap(quota),
            keys: Default::default(),
            checks: AtomicU32::new(0),
        }
    }

    /// Takes one send of `user`'s budget in `room`, if there is one.
    pub(super) fn take(&self, user: &str, room: &str) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key = self.keys.hash_one((user, room));
        self.limiter.check_key(&key).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_user_and_room() {
        let r = SendRate::new(SendLimits {
            per_sec: 0.001,
            burst: 3.0,
        });
        assert_eq!((0..10).filter(|_| r.take("alice", "r1")).count(), 3);
        assert!(r.take("alice", "r2"), "another room has its own budget");
        assert!(r.take("bob", "r1"), "another user too");
        // ("al", "icer1") is not ("alice", "r1")
        assert!(r.take("al", "icer1"));
    }
}
