//! `marklens calibrate`: fit the match / possible / no match thresholds on
//! labelled photos and store them in the data directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use marklens::SearchOptions;
use marklens::bench::retrieval::{GalleryRow, load_queries, read_manifest};
use marklens::decision::{Calibration, DEFAULT_MAX_MISS, DEFAULT_MIN_PRECISION};
use marklens::engine::LabelledPhoto;

use super::search::KnockoutArgs;
use super::{Global, progress};

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Labelled photos, CSV: file (relative to the CSV), expected_mark_id (empty
    /// for a photo of a mark that is not recorded: at least a few hundred such
    /// photos are needed for a 1% target), optionally brand. Use photos that no
    /// figure will be reported on (benches/dataset/build.py queries --split
    /// calibration writes such a set).
    #[arg(long, value_name = "CSV")]
    pub queries: PathBuf,
    /// The gallery manifest (mark_id, brand): with it, a photo whose top match is
    /// another mark of the same brand counts as right.
    #[arg(long, value_name = "CSV")]
    pub gallery: Option<PathBuf>,
    /// Largest share of photos of recorded marks that may be called "no match".
    #[arg(long, default_value_t = DEFAULT_MAX_MISS)]
    pub max_miss: f64,
    /// Smallest share of "match" decisions that must be right.
    #[arg(long, default_value_t = DEFAULT_MIN_PRECISION)]
    pub min_precision: f64,
    #[command(flatten)]
    pub knockouts: KnockoutArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &Global, args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    let photos = labelled(
        &args.queries,
        args.gallery.as_deref(),
        global.max_image_bytes,
    )?;
    let engine = global.open()?;
    let bar = progress(photos.len(), "calibrating");
    let options = SearchOptions {
        knockouts: args.knockouts.enabled(),
        ..SearchOptions::default()
    };
    let c = engine.calibrate(&photos, &options, args.max_miss, args.min_precision, &|n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    engine.flush()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print_calibration(&c);
    }
    Ok(ExitCode::SUCCESS)
}

/// The photos of a query manifest with their right answers: the expected mark,
/// and the other marks of its brand when a gallery manifest names brands.
pub fn labelled(
    queries: &Path,
    gallery: Option<&Path>,
    max_bytes: usize,
) -> anyhow::Result<Vec<LabelledPhoto>> {
    let queries = load_queries(queries, max_bytes as u64)?;
    anyhow::ensure!(!queries.is_empty(), "the query manifest lists no photos");
    let mut by_brand: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(path) = gallery {
        for row in read_manifest::<GalleryRow>(path)? {
            if !row.brand.is_empty() {
                by_brand.entry(row.brand).or_default().push(row.mark_id);
            }
        }
    }
    Ok(queries
        .into_iter()
        .map(|q| {
            let mut right = Vec::new();
            if !q.row.expected_mark_id.is_empty() {
                right.push(q.row.expected_mark_id.clone());
                right.extend(by_brand.get(&q.row.brand).into_iter().flatten().cloned());
            }
            LabelledPhoto {
                image: q.bytes,
                right,
            }
        })
        .collect())
}

/// The thresholds in words.
pub fn print_calibration(c: &Calibration) {
    println!(
        "calibrated on {} photos of recorded marks and {} of unrecorded ones \
             (gallery of {} marks, model {}, scoring {})",
        c.recorded, c.unrecorded, c.gallery, c.fingerprint, c.scoring
    );
    println!(
        "  no match below {:.4} (at most {:.1}% of recorded photos)",
        c.no_match_below,
        c.max_miss * 100.0
    );
    if c.match_from.is_finite() {
        println!(
            "  match from {:.4} (at least {:.1}% of these matches right)",
            c.match_from,
            c.min_precision * 100.0
        );
    } else {
        println!(
            "  no score alone reached {:.1}% precision",
            c.min_precision * 100.0
        );
    }
    match c.match_inlier_margin {
        Some(m) => {
            println!(
                "  match also when the best match has {m} or more inliers than any other candidate"
            )
        }
        None => println!("  no match by inlier margin (none reached that precision)"),
    }
    if !c.match_from.is_finite() && c.match_inlier_margin.is_none() {
        println!("  searches will say \"possible\" at best");
    }
}
