//! Summary statistics for benchmark samples: mean and percentiles.
//!
//! Percentiles interpolate linearly between the two nearest ranks (numpy's default, which
//! vLLM's benchmark reports too), so p50 of an even count is the mean of the middle two.
//! Empty samples have no summary (`None`), never a made-up zero. NaNs are dropped.

use serde::Serialize;

/// The percentiles every latency summary reports.
pub const PERCENTILES: [f64; 4] = [50.0, 90.0, 95.0, 99.0];

/// The `p`-th percentile (0–100) of `sorted` (ascending, non-empty), interpolated linearly.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// The `p`-th percentile of unsorted samples; `None` when there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let sorted = sorted(samples);
    (!sorted.is_empty()).then(|| percentile_sorted(&sorted, p))
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Mean, spread and percentiles of one metric (in the unit of the samples).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let v = sorted(samples);
        if v.is_empty() {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let [p50, p90, p95, p99] = PERCENTILES.map(|p| percentile_sorted(&v, p));
        Some(Summary {
            count: v.len(),
            mean,
            std: var.sqrt(),
            min: v[0],
            p50,
            p90,
            p95,
            p99,
            max: v[v.len() - 1],
        })
    }
}

/// The median of `samples` (`None` when empty).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// An empirical CDF: sorted values with their cumulative fractions, for plots.
pub fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let v = sorted(samples);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// An upper bound on the `p`-th percentile from a bucketed histogram: the upper bound of
/// the bucket holding that rank (`f64::INFINITY` when it falls in the overflow bucket).
/// `counts[i]` counts observations in bucket `i` (`bounds.len() + 1` buckets).
pub fn histogram_percentile_upper(bounds: &[f64], counts: &[u64], p: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bounds.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    Some(f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [50, 90, 99]) = 2.5, 3.7, 3.97
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 90.0).unwrap() - 3.7).abs() < 1e-12);
        assert!((percentile(&v, 99.0).unwrap() - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
    }

    #[test]
    fn percentile_ignores_order_and_nan() {
        let v = [5.0, f64::NAN, 1.0, 3.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn summary_of_one_to_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, 50.5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 100.0);
        assert!((s.p50 - 50.5).abs() < 1e-12);
        assert!((s.p90 - 90.1).abs() < 1e-9);
        assert!((s.p99 - 99.01).abs() < 1e-9);
        // Population standard deviation of 1..=100.
        assert!((s.std - 28.866_070_047_722_12).abs() < 1e-9);
    }

    #[test]
    fn cdf_is_monotone_and_ends_at_one() {
        let c = cdf(&[3.0, 1.0, 2.0]);
        assert_eq!(c, vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
    }

    #[test]
    fn histogram_percentile_returns_bucket_bound() {
        let bounds = [0.001, 0.01, 0.1];
        // 98 fast, 1 medium, 1 in the overflow bucket.
        let counts = [98, 1, 0, 1];
        assert_eq!(
            histogram_percentile_upper(&bounds, &counts, 50.0),
            Some(0.001)
        );
        assert_eq!(
            histogram_percentile_upper(&bounds, &counts, 99.0),
            Some(0.01)
        );
        assert_eq!(
            histogram_percentile_upper(&bounds, &counts, 100.0),
            Some(f64::INFINITY)
        );
        assert_eq!(
            histogram_percentile_upper(&bounds, &[0, 0, 0, 0], 99.0),
            None
        );
    }
}
