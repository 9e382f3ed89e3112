//! `marklens demo`: the bundled demo, end to end: enrol the demo gallery of real
//! marks, screen the demo photos into an HTML report, then serve the gallery.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Global;
use super::enroll::{enroll_entries, read_manifest};
use super::search::{screen, search_locally};
use super::serve::ServeArgs;

/// The fixtures folder of the source tree this binary was built from.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder with gallery.csv, gallery/ and queries/ (default: the bundled fixtures).
    #[arg(long, default_value = FIXTURES, value_name = "DIR")]
    pub fixtures: PathBuf,
    /// Where to write the screening report.
    #[arg(long, default_value = "marklens-demo-report.html", value_name = "FILE")]
    pub report: PathBuf,
    /// Stop after the report instead of serving the gallery over gRPC.
    #[arg(long)]
    pub no_serve: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The bundled fixtures folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(FIXTURES)
}

/// Enrols the demo gallery (`gallery.csv` in `fixtures`) and prints a summary.
pub fn enroll_demo_gallery(
    engine: &marklens::Engine,
    fixtures: &std::path::Path,
    global: &Global,
) -> anyhow::Result<()> {
    let entries = read_manifest(&fixtures.join("gallery.csv"))?;
    let total = entries.len();
    let started = std::time::Instant::now();
    let summary = enroll_entries(
        engine,
        entries,
        super::enroll::BATCH,
        global.max_image_bytes,
    );
    println!(
        "gallery: {total} real marks in {:.1} s ({} new, {} already recorded, {} failed)",
        started.elapsed().as_secs_f64(),
        summary.created + summary.replaced,
        summary.unchanged + summary.updated,
        summary.failed.len()
    );
    for (file, reason) in &summary.failed {
        eprintln!("failed: {}: {reason}", file.display());
    }
    engine.flush()?;
    Ok(())
}

pub fn run(global: &Global, args: DemoArgs) -> anyhow::Result<ExitCode> {
    // A data directory left by an older build holds vectors of another model. The
    // demo re-embeds them from their stored images rather than stopping: nothing
    // is lost, and the demo's one command keeps working after an upgrade.
    let engine = global.open_allowing_stale()?;
    let info = engine.info()?;
    println!(
        "marklens demo: model {} on {}, data in {}",
        info.model,
        info.backend,
        info.data_dir.display()
    );
    let reembedded = super::marks::reembed_stale(&engine)?;
    if reembedded > 0 {
        println!("re-embedded {reembedded} mark(s) recorded by an older model or marklens");
    }
    enroll_demo_gallery(&engine, &args.fixtures, global)?;
    let labelled = args.fixtures.join("queries-bench.csv");
    if engine.calibration().is_none() && labelled.is_file() {
        // A demo shortcut: the decision is calibrated on the bundled labelled
        // photos, which include the ones screened below. A deployment calibrates
        // on photos it does not report on (`marklens calibrate`).
        let photos = super::calibrate::labelled(&labelled, None, global.max_image_bytes)?;
        let c = engine.calibrate(
            &photos,
            &marklens::SearchOptions::default(),
            marklens::decision::DEFAULT_MAX_MISS,
            marklens::decision::DEFAULT_MIN_PRECISION,
            &|_| {},
        )?;
        println!(
            "decision thresholds from {} (demo only: see `marklens calibrate`):",
            labelled.display()
        );
        super::calibrate::print_calibration(&c);
    }

    let photos = super::image_files(&args.fixtures.join("queries"))?;
    let options = marklens::SearchOptions {
        top_k: 5,
        ..marklens::SearchOptions::default()
    };
    let started = std::time::Instant::now();
    let reports = screen(
        &photos,
        global.max_image_bytes,
        marklens::engine::EMBED_BATCH,
        &mut search_locally(&engine, &options),
    );
    // Photos are searched in batches, so the wall time per photo is the honest
    // figure; a reply's total_ms is the latency its photo saw within its batch.
    let per_photo = started.elapsed().as_secs_f64() * 1e3 / reports.len().max(1) as f64;
    marklens::report::write(&args.report, &reports, &|id| engine.image(id).ok())?;
    println!(
        "screened {} photos ({per_photo:.1} ms per photo, batches of {}); report: {}",
        reports.len(),
        marklens::engine::EMBED_BATCH,
        args.report.display()
    );
    let count =
        |d: marklens::decision::Decision| reports.iter().filter(|r| r.decision == Some(d)).count();
    use marklens::decision::Decision::{Match, NoMatch, Possible};
    println!(
        "decisions: {} match, {} possible, {} no match",
        count(Match),
        count(Possible),
        count(NoMatch)
    );
    if args.no_serve {
        return Ok(ExitCode::SUCCESS);
    }
    super::serve::serve(engine, args.serve.config(global))
}
