//! Latency histograms (the benchmark records microseconds): HdrHistogram
//! with 3 significant figures, so every percentile is within 0.1 % of the
//! true value, behind the few calls the benchmark makes.

/// Counts of recorded values (any unit).
#[derive(Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        // auto-resizing: any u64 can be recorded, any two can be merged
        Histogram(hdrhistogram::Histogram::new(3).expect("3 significant figures are valid"))
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, v: u64) {
        // grows to hold `v` (saturating_record would clamp to the current
        // range instead); only a value beyond u64's range could fail
        if self.0.record(v).is_err() {
            self.0.saturating_record(v);
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        // only a histogram of a fixed range can refuse values; ours resize
        self.0
            .add(&other.0)
            .expect("auto-resizing histograms always merge");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn max(&self) -> u64 {
        self.0.max()
    }

    pub fn mean(&self) -> f64 {
        self.0.mean()
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_range_are_within_precision() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - want).abs() / want < 1.0 / 1000.0,
                "q{q}: got {got}, want ~{want}"
            );
        }
        // a bucket's values are reported as its highest (within 0.1 %)
        let top = h.quantile(1.0);
        assert!((100_000..=100_100).contains(&top), "max {top}");
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.count(), 100_000);
        assert!(
            (h.mean() - 50_000.5).abs() / 50_000.5 < 1e-3,
            "{}",
            h.mean()
        );
    }

    #[test]
    fn small_values_are_exact_and_merge_adds_up() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 0..100 {
            a.record(v);
        }
        b.record(5_000);
        a.merge(&b);
        assert_eq!(a.count(), 101);
        // nearest rank: the ceil(q * 101)-th smallest value
        assert_eq!(a.quantile(0.5), 50);
        assert_eq!(a.quantile(0.1), 10);
        assert!((5_000..=5_005).contains(&a.quantile(1.0)));
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }
}
