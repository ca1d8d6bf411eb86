//! A lock-free latency histogram (Prometheus semantics: fixed upper bounds, a sum and a
//! count). Writers only do relaxed atomic adds, so the engine thread never waits on a reader.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in seconds, from 1 ms to 60 s: covers step times, TTFT and whole requests.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Observations counted per bucket; the last bucket is `+Inf`.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A plain copy of a [`Histogram`]: `counts[i]` observations fell at or below `bounds[i]`
/// (and above the previous bound); `counts[bounds.len()]` above the last bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl HistogramSnapshot {
    /// The `q`-quantile (0 to 1; clamped) as Prometheus' `histogram_quantile` estimates it:
    /// the bucket holding rank `q * count` is found and the value interpolated linearly
    /// between its lower and upper bound (the first bucket starts at 0); a rank in the `+Inf`
    /// bucket gives the last finite bound. `None` when nothing was observed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &upper) in self.bounds.iter().enumerate() {
            let here = self.counts.get(i).copied().unwrap_or(0);
            let cumulative = below + here;
            // `cumulative > 0`: a zero rank lands in the first bucket that holds anything.
            if cumulative as f64 >= rank && cumulative > 0 {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                if i == 0 && upper <= 0.0 {
                    return Some(upper);
                }
                let into = (rank - below as f64) / here as f64;
                return Some(lower + (upper - lower) * into);
            }
            below = cumulative;
        }
        self.bounds.last().copied()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 * 1e-9,
            count: self.count.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[2], 1);
        assert_eq!(s.counts[LATENCY_BUCKETS.len()], 1);
        assert!((s.sum_seconds - 100.0035).abs() < 1e-6);
    }

    fn snapshot_of(ms: &[u64]) -> HistogramSnapshot {
        let h = Histogram::default();
        for &m in ms {
            h.observe(Duration::from_millis(m));
        }
        h.snapshot()
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        assert_eq!(Histogram::default().snapshot().quantile(0.5), None);
        // Four observations in (0.01, 0.025]: the median is halfway through the bucket.
        let s = snapshot_of(&[11, 12, 13, 14]);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
        assert!(close(s.quantile(0.5), 0.0175), "{:?}", s.quantile(0.5));
        assert!(close(s.quantile(1.0), 0.025));
        assert!(close(s.quantile(0.0), 0.01));
        // One in the first bucket (from 0), one in (0.005, 0.01].
        let s = snapshot_of(&[0, 7]);
        assert!(close(s.quantile(0.25), 0.0005));
        assert!(close(s.quantile(0.75), 0.0075));
        // Ranks in the +Inf bucket give the last finite bound.
        let s = snapshot_of(&[3, 100_000]);
        assert!(close(s.quantile(0.99), 60.0));
        assert!(close(s.quantile(7.0), 60.0), "q is clamped to 1");
        assert_eq!(s.quantile(f64::NAN), None);
    }
}
