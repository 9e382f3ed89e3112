//! Request counters and latency percentiles per RPC method, for `Info/GetInfo`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Latencies kept per method for percentiles.
const WINDOW: usize = 10_000;

#[derive(Debug, Default)]
struct Method {
    requests: u64,
    failures: u64,
    recent_ms: VecDeque<f64>,
}

/// Figures of one method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodFigures {
    pub method: String,
    pub requests: u64,
    pub failures: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// Thread-safe per-method statistics.
#[derive(Debug, Default)]
pub struct Stats {
    methods: Mutex<BTreeMap<&'static str, Method>>,
}

impl Stats {
    /// Records one finished request.
    pub fn record(&self, method: &'static str, elapsed: Duration, ok: bool) {
        let mut methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let entry = methods.entry(method).or_default();
        entry.requests += 1;
        if !ok {
            entry.failures += 1;
        }
        if entry.recent_ms.len() == WINDOW {
            entry.recent_ms.pop_front();
        }
        entry.recent_ms.push_back(elapsed.as_secs_f64() * 1000.0);
    }

    /// Figures of every method seen so far, by name.
    pub fn figures(&self) -> Vec<MethodFigures> {
        let methods = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        methods
            .iter()
            .map(|(name, m)| {
                let mut sorted: Vec<f64> = m.recent_ms.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                MethodFigures {
                    method: (*name).to_owned(),
                    requests: m.requests,
                    failures: m.failures,
                    p50_ms: percentile(&sorted, 0.50),
                    p95_ms: percentile(&sorted, 0.95),
                    p99_ms: percentile(&sorted, 0.99),
                }
            })
            .collect()
    }
}

/// The nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn failures_are_counted_per_method() {
        let stats = Stats::default();
        stats.record("Search", Duration::from_millis(10), true);
        stats.record("Search", Duration::from_millis(30), false);
        stats.record("Enroll", Duration::from_millis(5), true);
        let figures = stats.figures();
        let search = figures.iter().find(|f| f.method == "Search").unwrap();
        assert_eq!((search.requests, search.failures), (2, 1));
        assert_eq!(search.p99_ms, 30.0);
    }
}
