//! A closed-loop load generator for `Matcher/Search` over gRPC: `concurrency`
//! clients each send a photo, wait for the reply, and send the next, for a fixed
//! time. Reports throughput and latency percentiles as the client sees them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::SearchOptions;
use crate::service::client::{Client, ClientError};
use crate::service::convert::code_name;
use crate::service::stats::percentile;

/// One load level's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: usize,
    pub qps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Failed requests by status code name.
    pub failures: BTreeMap<String, usize>,
}

/// Drives `concurrency` clients for `duration` (after `warmup`, not counted),
/// cycling through `images`.
pub async fn run(
    url: &str,
    images: &[Vec<u8>],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    options: &SearchOptions,
) -> Result<LoadReport, ClientError> {
    assert!(!images.is_empty(), "the load needs at least one image");
    let client = Client::connect(url, 64 << 20).await?;
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let mut client = client.clone();
        let images = images.to_vec();
        let options = options.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures: BTreeMap<String, usize> = BTreeMap::new();
            let mut next = worker;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let image = images[next % images.len()].clone();
                next += concurrency;
                let outcome = client.search(image, &options).await;
                if sent < start {
                    continue;
                }
                match outcome {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Err(ClientError::Rpc(status)) => {
                        *failures
                            .entry(code_name(status.code()).to_owned())
                            .or_default() += 1;
                    }
                    Err(other) => {
                        *failures.entry(other.to_string()).or_default() += 1;
                    }
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (l, f) = done.expect("load task does not panic");
        latencies.extend(l);
        for (code, n) in f {
            *failures.entry(code).or_default() += n;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let seconds = duration.as_secs_f64();
    Ok(LoadReport {
        concurrency,
        seconds,
        requests: latencies.len(),
        qps: latencies.len() as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        p99_ms: percentile(&latencies, 0.99),
        failures,
    })
}
