//! The broker's rate limits, on governor's GCRA limiters: new connections
//! per source address (one keyed limiter), and per connection its publishes
//! (slowed, not refused) and its room loads (refused beyond the budget).
//! Every limit allows a burst of twice its rate.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// `per_sec` per second (at least 1) with a burst of twice that.
fn quota(per_sec: u32) -> Quota {
    let rate = NonZeroU32::MIN.saturating_add(per_sec.saturating_sub(1));
    Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::MIN.saturating_add(1)))
}

/// New connections per source address.
pub(crate) struct ConnectRate(DefaultKeyedRateLimiter<IpAddr>);

impl ConnectRate {
    pub(crate) fn new(per_sec: u32) -> Self {
        ConnectRate(RateLimiter::dashmap(quota(per_sec)))
    }

    /// Takes one connection of `ip`'s budget, if it has one.
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
        self.0.check_key(&ip).is_ok()
    }

    /// Forgets addresses whose budget is full again (they would be admitted
    /// as if new): the broker calls it every few seconds, off the accept path.
    pub(crate) fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A connection's publishes: beyond the rate the connection waits.
pub(crate) struct Throttle(RateLimiter<NotKeyed, InMemoryState, DefaultClock>);

impl Throttle {
    pub(crate) fn new(per_sec: u32) -> Self {
        Throttle(RateLimiter::direct(quota(per_sec)))
    }

    /// Takes one publish of the budget, or says how long until one is due
    /// (nothing taken). The caller waits without blocking its other work:
    /// a throttled session still delivers (`Session::pump`).
    pub(crate) fn take(&self) -> Result<(), std::time::Duration> {
        self.0.check().map_err(|later| {
            let clock = DefaultClock::default();
            later.wait_time_from(clock.now())
        })
    }
}

/// A connection's budget of room loads (store reads of a membership it
/// asks about); beyond it an unknown room counts as unknown.
pub struct LoadBudget<C: Clock = DefaultClock>(
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
);

impl LoadBudget {
    /// A full budget for `per_sec` loads per second.
    pub fn new(per_sec: u32) -> Self {
        LoadBudget(RateLimiter::direct(quota(per_sec)))
    }
}

impl<C: Clock> LoadBudget<C> {
    /// Takes one load if the budget has one.
    pub fn take(&mut self) -> bool {
        self.0.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn the_budget_allows_a_burst_then_the_rate() {
        let clock = FakeRelativeClock::default();
        let mut b = LoadBudget(RateLimiter::direct_with_clock(quota(2), clock.clone()));
        let taken = (0..10).filter(|_| b.take()).count();
        assert_eq!(taken, 4, "burst of 2x the rate");
        clock.advance(Duration::from_millis(500));
        assert!(b.take(), "one more after half a second");
        assert!(!b.take());
    }

    #[test]
    fn a_zero_rate_still_allows_one_per_second() {
        let q = quota(0);
        assert_eq!(q.burst_size().get(), 2);
        assert_eq!(q.replenish_interval(), Duration::from_secs(1));
        let q = quota(u32::MAX);
        assert_eq!(q.burst_size().get(), u32::MAX, "saturates");
    }

    #[test]
    fn connects_are_limited_per_address_and_idle_ones_forgotten() {
        let r = ConnectRate::new(3);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert_eq!((0..20).filter(|_| r.admit(a)).count(), 6, "burst 2x");
        assert!(r.admit(b), "another address has its own budget");
        assert_eq!(r.len(), 2);
        // both budgets are partly spent: nothing forgotten yet
        r.forget_idle();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn the_throttle_says_how_long_past_the_burst() {
        // one a second: the checks below take far less than that
        let t = Throttle::new(1);
        assert_eq!((0..5).filter(|_| t.take().is_ok()).count(), 2, "burst 2x");
        // the burst is spent: the next is due within a second, and asking
        // takes nothing
        let wait = t.take().expect_err("past the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(t.take().is_err(), "still not due");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(t.take().is_ok(), "due after the wait");
    }
}
