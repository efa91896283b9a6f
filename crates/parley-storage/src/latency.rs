//! [`LatencyHistogram`]: how long something took, counted into fixed buckets an operator can
//! scrape. The store times its durable commits with it, the compliance archive the wait for a
//! message's record: every accepted message waits for both before it is delivered, so they are
//! the first thing to look at when delivery gets slow (a slow disk, a full page cache).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram's buckets, in microseconds: from a fast local fsync to a disk
/// in trouble.
const BOUNDS_MICROS: [u64; 11] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Counts durations by bucket; lock-free, so whoever records pays two atomic adds.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Durations per bucket (not cumulative); the last slot is above every bound.
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// A consistent-enough reading of [`LatencyHistogram`] for a metrics endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound in seconds, how many took at most that long)`, cumulative, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Every duration counted.
    pub count: u64,
    /// Their total time, in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BOUNDS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BOUNDS_MICROS.len());
        for (bound, slot) in BOUNDS_MICROS.iter().zip(&self.buckets) {
            cumulative += slot.load(Ordering::Relaxed);
            buckets.push((*bound as f64 / 1e6, cumulative));
        }
        let count = cumulative + self.buckets[BOUNDS_MICROS.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_land_in_the_first_bucket_that_holds_them_and_buckets_are_cumulative() {
        let times = LatencyHistogram::default();
        times.record(Duration::from_micros(250)); // on a bound: that bucket
        times.record(Duration::from_micros(251));
        times.record(Duration::from_millis(3));
        times.record(Duration::from_secs(2)); // above every bound
        let snapshot = times.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.buckets[0], (0.00025, 1));
        assert_eq!(snapshot.buckets[1], (0.0005, 2));
        assert_eq!(snapshot.buckets[3], (0.0025, 2));
        assert_eq!(snapshot.buckets[4], (0.005, 3));
        assert_eq!(
            snapshot.buckets.last(),
            Some(&(1.0, 3)),
            "2 s is only in the count"
        );
        assert!(
            (snapshot.sum_seconds - 2.003501).abs() < 1e-9,
            "{}",
            snapshot.sum_seconds
        );
    }

    #[test]
    fn an_unused_histogram_reads_zero() {
        let snapshot = LatencyHistogram::default().snapshot();
        assert_eq!(snapshot.count, 0);
        assert!(snapshot.buckets.iter().all(|(_, count)| *count == 0));
        assert_eq!(snapshot.sum_seconds, 0.0);
    }
}
