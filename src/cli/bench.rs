//! `marklens bench load` and `marklens bench synth`: the figures behind the README.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use marklens::bench::load;
use marklens::decision::{DEFAULT_MAX_MISS, DEFAULT_MIN_PRECISION};
use marklens::index::synthetic::clustered;
use marklens::service::{self, ServeConfig};
use marklens::{EngineConfig, EnrollRequest, IndexChoice, MarkFields, SearchOptions};

use super::search::KnockoutArgs;
use super::serve::runtime;
use super::{Global, image_files, progress, read_limited};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The retrieval benchmark: enrol a gallery manifest (marks already in the
    /// data directory are reused), search every photo of a query manifest, and
    /// write a report: recall@1/5/10, MRR and NAR per level and variant kind,
    /// the open-set "no match" operating points, latency per stage, the index's
    /// recall against exact search at several `ef`, enrolment rate and memory.
    ///
    /// Manifests are CSV. Gallery: mark_id, file (relative to the manifest), and
    /// optionally brand and kind (mark | distractor), plus any enrolment columns.
    /// Queries: file, expected_mark_id (empty for open-set photos), and
    /// optionally brand, level and variant. benches/dataset/build.py writes both;
    /// fixtures/gallery.csv and fixtures/queries.csv are a small pair.
    Run(RunArgs),
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Gallery manifest to enrol first (marks already enrolled are skipped).
    #[arg(long, value_name = "CSV")]
    pub gallery: Option<PathBuf>,
    /// Query manifest.
    #[arg(long, value_name = "CSV")]
    pub queries: PathBuf,
    /// Folder for report.md, report.json and the SVG plots.
    #[arg(long, value_name = "DIR", default_value = "bench-report")]
    pub out: PathBuf,
    /// `ef` values of the index sweep: hnsw_rs is built over the gallery's
    /// vectors with the engine's graph parameters and compared with exact search
    /// at each.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    pub ef: Vec<usize>,
    /// Skip the index sweep (it builds a graph over the whole gallery).
    #[arg(long)]
    pub no_index_sweep: bool,
    /// Also write the gallery and query vectors here, for the Python peers
    /// (benches/peers.py): gallery.f32, gallery.ids, queries.f32, queries.tsv.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Calibrate the decision on this query manifest first (photos of another
    /// split than --queries: benches/dataset/build.py queries --split
    /// calibration), store the thresholds in the data directory, and report the
    /// decisions on --queries under them. Without it, the data directory's
    /// stored calibration is used, if any.
    #[arg(long, value_name = "CSV")]
    pub calibration: Option<PathBuf>,
    #[command(flatten)]
    pub knockouts: KnockoutArgs,
}

pub fn run(global: &Global, command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Run(args) => run_retrieval(global, args),
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

/// Resident set size of this process, from /proc (None elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn run_retrieval(global: &Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    use marklens::bench::report::{BenchReport, Context, Enrolment, Memory};
    use marklens::bench::retrieval::{
        GalleryRow, GalleryVectors, Relevance, RetrievalConfig, evaluate, labelled_photos,
        load_queries, read_manifest,
    };

    let gallery_rows: Vec<GalleryRow> = match &args.gallery {
        Some(path) => read_manifest(path)?,
        None => Vec::new(),
    };
    let queries = load_queries(&args.queries, global.max_image_bytes as u64)?;
    anyhow::ensure!(
        !queries.is_empty(),
        "{} lists no queries",
        args.queries.display()
    );

    // Enrol what the data directory lacks, timing it; then open it afresh so
    // that opening time and memory are those of a restart.
    let rss_before = resident_bytes();
    let mut engine = global.open()?;
    let mut enrolment = None;
    let mut open_seconds = None;
    if let Some(path) = &args.gallery {
        let missing: Vec<_> = super::enroll::read_manifest(path)?
            .into_iter()
            .filter(|e| engine.get(&e.id).is_err())
            .collect();
        if !missing.is_empty() {
            let started = Instant::now();
            let summary = super::enroll::enroll_entries(
                &engine,
                missing,
                super::enroll::BATCH,
                global.max_image_bytes,
            );
            engine.flush()?;
            let seconds = started.elapsed().as_secs_f64();
            for (file, error) in &summary.failed {
                tracing::warn!(file = %file.display(), %error, "gallery mark not enrolled");
            }
            let marks = summary.created + summary.replaced + summary.updated;
            enrolment = Some(Enrolment {
                marks,
                seconds,
                per_second: marks as f64 / seconds,
            });
            drop(engine);
            let started = Instant::now();
            engine = global.open()?;
            open_seconds = Some(started.elapsed().as_secs_f64());
        }
    }
    let info = engine.info()?;
    let memory = rss_before.zip(resident_bytes()).map(|(before, after)| {
        let rss = after.saturating_sub(before);
        Memory {
            open_seconds,
            rss_bytes: rss,
            bytes_per_mark: rss as f64 / info.marks.max(1) as f64,
            after_enrolment: enrolment.is_some(),
        }
    });

    // With a manifest, the gallery is exactly its marks, whatever else the data
    // directory holds.
    let listed: Option<HashSet<&str>> = args
        .gallery
        .as_ref()
        .map(|_| gallery_rows.iter().map(|r| r.mark_id.as_str()).collect());
    let gallery = GalleryVectors::from_engine(&engine, listed.as_ref())?;
    if info.marks > gallery.marks.len() && listed.is_some() {
        tracing::warn!(
            enrolled = info.marks,
            listed = gallery.marks.len(),
            "the data directory holds marks the gallery manifest does not list; they are left out"
        );
    }
    let relevance = Relevance::new(&gallery, &gallery_rows);
    let config = RetrievalConfig {
        ef_values: if args.no_index_sweep {
            Vec::new()
        } else {
            args.ef.clone()
        },
        hnsw: engine.config().hnsw,
        export: args.export.clone(),
        knockouts: args.knockouts.enabled(),
    };
    if let Some(dir) = &config.export {
        std::fs::create_dir_all(dir)?;
        gallery.export(dir)?;
    }
    if let Some(path) = &args.calibration {
        let photos = load_queries(path, global.max_image_bytes as u64)?;
        let photos = labelled_photos(&photos, &gallery, &relevance)?;
        let bar = progress(photos.len(), "calibrating");
        let options = SearchOptions {
            knockouts: args.knockouts.enabled(),
            ..SearchOptions::default()
        };
        engine.calibrate(
            &photos,
            &options,
            DEFAULT_MAX_MISS,
            DEFAULT_MIN_PRECISION,
            &|n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
    }
    let calibration = engine.calibration();
    let bar = progress(queries.len(), "searching");
    let evaluation = evaluate(&engine, &gallery, &relevance, &queries, &config, &|| {
        bar.inc(1)
    })?;
    bar.finish_and_clear();

    let distractors = gallery_rows
        .iter()
        .filter(|r| r.kind == "distractor")
        .count();
    let report = BenchReport {
        context: Context {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            gallery_manifest: args.gallery.as_ref().map(|p| p.display().to_string()),
            query_manifest: args.queries.display().to_string(),
            real_marks: gallery.marks.len().saturating_sub(distractors),
            distractors,
            model: info.model.clone(),
            backend: info.backend.name().to_owned(),
            cpu: cpu_name(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        enrolment,
        memory,
        calibration,
        calibration_manifest: args.calibration.as_ref().map(|p| p.display().to_string()),
        evaluation,
    };
    report.write(&args.out)?;
    print!("{}", report.markdown());
    println!(
        "\nreport written to {}",
        args.out.join("report.md").display()
    );
    Ok(ExitCode::SUCCESS)
}
