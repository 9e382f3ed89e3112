//! `marklens bench load` and `marklens bench synth`: the figures behind the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use marklens::bench::load;
use marklens::index::synthetic::clustered;
use marklens::service::{self, ServeConfig};
use marklens::{EngineConfig, EnrollRequest, IndexChoice, MarkFields, SearchOptions};

use super::serve::runtime;
use super::{Global, image_files, progress, read_limited};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Drive Matcher/Search over loopback at several concurrency levels and report
    /// QPS and latency percentiles (client side).
    Load(LoadArgs),
    /// Add N marks with synthetic clustered embeddings (and a placeholder image) to
    /// the data directory, to measure the index and the server at scale.
    Synth {
        /// Marks to add.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Seed of the synthetic vectors.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// A running server; without it, one is started in-process on the data directory.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Photos to send, cycled (default: the bundled demo queries).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Unmeasured warm-up seconds per level.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Server workers for the in-process server (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also write the reports as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(global: &Global, command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Load(args) => run_load(global, args),
        BenchCommand::Synth { count, seed } => run_synth(global, count, seed),
    }
}

fn run_load(global: &Global, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .images
        .clone()
        .unwrap_or_else(|| super::demo::fixtures_dir().join("queries"));
    let images: Vec<Vec<u8>> = image_files(&dir)?
        .iter()
        .map(|p| read_limited(p, global.max_image_bytes))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!images.is_empty(), "no images in {}", dir.display());
    let runtime = runtime()?;
    let (url, stop) = match &args.server {
        Some(url) => (url.clone(), None),
        None => {
            let engine = Arc::new(global.open()?);
            let mut config = ServeConfig::new("127.0.0.1:0".parse()?);
            if let Some(workers) = args.workers {
                config.workers = workers;
            }
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let server = runtime.spawn(service::serve(
                engine,
                config,
                async {
                    let _ = stop_rx.await;
                },
                Some(ready_tx),
            ));
            let addr = runtime.block_on(ready_rx)?;
            (format!("http://{addr}"), Some((stop_tx, server)))
        }
    };
    println!(
        "load: {} photos from {}, {}s per level after {}s warm-up, server {url}",
        images.len(),
        dir.display(),
        args.seconds,
        args.warmup
    );
    println!(
        "{:>11} {:>8} {:>9} {:>9} {:>9} {:>9}  failures",
        "concurrency", "requests", "QPS", "p50 ms", "p95 ms", "p99 ms"
    );
    let mut reports = Vec::new();
    for &concurrency in &args.concurrency {
        let report = runtime.block_on(load::run(
            &url,
            &images,
            concurrency,
            Duration::from_secs_f64(args.warmup),
            Duration::from_secs_f64(args.seconds),
            &SearchOptions::default(),
        ))?;
        println!(
            "{:>11} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {:?}",
            report.concurrency,
            report.requests,
            report.qps,
            report.p50_ms,
            report.p95_ms,
            report.p99_ms,
            report.failures
        );
        reports.push(report);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)?;
    }
    if let Some((stop, server)) = stop {
        let _ = stop.send(());
        runtime.block_on(server)??;
    }
    Ok(ExitCode::SUCCESS)
}

/// A 1x1 white PNG: the stored "image" of a synthetic mark.
fn placeholder_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(1, 1, image::Rgb([255, 255, 255]))
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding into memory");
    out.into_inner()
}

fn run_synth(global: &Global, count: usize, seed: u64) -> anyhow::Result<ExitCode> {
    let config = EngineConfig {
        index: IndexChoice::Hnsw,
        ..global.engine_config()?
    };
    let engine = marklens::Engine::open(config)?;
    let dim = engine.embedder().dim();
    let image = placeholder_png();
    let bar = progress(count, "synth");
    let started = std::time::Instant::now();
    const CHUNK: usize = 2000;
    for first in (0..count).step_by(CHUNK) {
        let n = CHUNK.min(count - first);
        let vectors = clustered(n, dim, seed.wrapping_add(first as u64));
        let marks = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let request = EnrollRequest {
                    id: format!("synth-{seed}-{:07}", first + i),
                    fields: MarkFields {
                        name: Some("synthetic distractor".into()),
                        ..MarkFields::default()
                    },
                    image: image.clone(),
                    create_only: false,
                };
                (request, v)
            })
            .collect();
        engine.enroll_embedded(marks)?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let enrolled = started.elapsed();
    let flush = std::time::Instant::now();
    engine.flush()?;
    let info = engine.info()?;
    println!(
        "{count} synthetic marks in {:.1} s ({:.0}/s); snapshot written in {:.1} s; \
         gallery now {} marks, index {} with {} vectors",
        enrolled.as_secs_f64(),
        count as f64 / enrolled.as_secs_f64(),
        flush.elapsed().as_secs_f64(),
        info.marks,
        info.index,
        info.indexed_vectors
    );
    Ok(ExitCode::SUCCESS)
}
