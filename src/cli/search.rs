//! `marklens search`, `marklens screen` and `marklens embed`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use marklens::decision::Decision;
use marklens::engine::EMBED_BATCH;
use marklens::report::{self, QueryReport};
use marklens::service::client::Client;
use marklens::{Engine, MarkStatus, SearchFilter, SearchOptions, SearchResult};

use super::serve::runtime;
use super::{Global, image_files, progress, read_limited};

/// Options shared by `search` and `screen`.
#[derive(Debug, Args)]
pub struct MatchArgs {
    /// Number of matches to return per photo (1-100).
    #[arg(long, short = 'k', default_value_t = 5, value_name = "N")]
    pub top_k: usize,

    /// Drop matches whose score (similarity plus the verification bonus) is below
    /// this.
    #[arg(long, default_value_t = -1.0, value_name = "SCORE", allow_negative_numbers = true)]
    pub min_score: f32,

    /// Only marks in this Nice class (repeatable: any of them).
    #[arg(long = "class", value_name = "N")]
    pub classes: Vec<u8>,

    /// Only marks with this status (repeatable).
    #[arg(long = "status", value_name = "STATUS")]
    pub statuses: Vec<MarkStatus>,

    /// Only marks whose holder contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub holder: Option<String>,

    /// Ask a running `marklens serve` at this URL instead of opening the data
    /// directory, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "MARKLENS_SERVER", value_name = "URL")]
    pub server: Option<String>,

    #[command(flatten)]
    pub knockouts: KnockoutArgs,
}

/// The switch for knocked-out marks, shared by every command that searches.
#[derive(Debug, Args)]
pub struct KnockoutArgs {
    /// Do not look for marks knocked out of solid blocks (negatives printed on
    /// packaging) that do not fill the photo's crop: tilted, or beside a label's
    /// edge. Looking is on by default: about one photo in eight gets one more
    /// view and takes about twice as long, and most contrast-reversed marks are
    /// found only that way.
    #[arg(long, overrides_with = "knockouts")]
    no_knockouts: bool,

    /// Look for knocked-out marks (the default; kept for scripts written when
    /// it was not).
    #[arg(long, hide = true, overrides_with = "no_knockouts")]
    knockouts: bool,
}

impl KnockoutArgs {
    /// Whether searches look for knocked-out marks: unless `--no-knockouts` came last.
    pub fn enabled(&self) -> bool {
        !self.no_knockouts
    }
}

impl MatchArgs {
    pub fn options(&self) -> SearchOptions {
        SearchOptions {
            top_k: self.top_k,
            min_score: self.min_score,
            filter: SearchFilter {
                nice_classes: self.classes.clone(),
                statuses: self.statuses.clone(),
                holder: self.holder.clone(),
            },
            knockouts: self.knockouts.enabled(),
        }
    }
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The photo to search.
    pub image: PathBuf,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScreenArgs {
    /// Folder of photos (searched recursively), or a single photo.
    pub dir: PathBuf,
    /// Report file; the extension picks the format: .json, .csv or .html.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub matching: MatchArgs,
}

pub fn run_search(global: &Global, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_limited(&args.image, global.max_image_bytes)?;
    let options = args.matching.options();
    let result = match &args.matching.server {
        Some(url) => runtime()?.block_on(async {
            let mut client = Client::connect(url, message_limit(global)).await?;
            client.search(bytes, &options).await
        })?,
        None => global.open()?.search(&bytes, &options)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&args.image, &result);
    }
    Ok(ExitCode::SUCCESS)
}

/// The decision as an officer reads it.
fn decision_words(decision: Decision) -> &'static str {
    match decision {
        Decision::Match => "MATCH: the first mark is the one in the photo",
        Decision::Possible => "POSSIBLE MATCH: compare the photo with the first marks",
        Decision::NoMatch => "NO MATCH: no recorded mark is in the photo",
        Decision::Uncalibrated => "none (no calibration: run `marklens calibrate`)",
    }
}

fn print_table(image: &Path, result: &SearchResult) {
    let t = &result.timings;
    println!(
        "{}: {} match(es) in {:.1} ms (decode {:.1}, preprocess {:.1}, embed {:.1}, \
         search {:.1} of which verify {:.1})",
        image.display(),
        result.matches.len(),
        t.total_ms,
        t.decode_ms,
        t.preprocess_ms,
        t.embed_ms,
        t.search_ms,
        t.verify_ms
    );
    println!("decision: {}", decision_words(result.decision));
    if result.matches.is_empty() {
        return;
    }
    println!(
        "{:>4}  {:>6}  {:>6}  {:>7}  {:>7}  {:<24} {:<24} {:<28} {:<18} {:<9}",
        "rank",
        "score",
        "cosine",
        "inliers",
        "support",
        "mark id",
        "name",
        "holder",
        "recordation",
        "status"
    );
    for m in &result.matches {
        let f = &m.record.fields;
        println!(
            "{:>4}  {:>6.3}  {:>6.3}  {:>7}  {:>7}  {:<24} {:<24} {:<28} {:<18} {:<9}",
            m.rank,
            m.score,
            m.similarity,
            m.inliers,
            m.support,
            clip(&m.record.id, 24),
            clip(f.name.as_deref().unwrap_or("-"), 24),
            clip(f.holder.as_deref().unwrap_or("-"), 28),
            clip(f.recordation_number.as_deref().unwrap_or("-"), 18),
            f.status
        );
    }
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(width - 1).collect();
        clipped.push('~');
        clipped
    }
}

pub fn run_screen(global: &Global, args: ScreenArgs) -> anyhow::Result<ExitCode> {
    if report::Format::from_path(&args.out).is_none() {
        anyhow::bail!(
            "{}: unknown report format (use .json, .csv or .html)",
            args.out.display()
        );
    }
    let photos = image_files(&args.dir)?;
    let options = args.matching.options();
    let reports = match &args.matching.server {
        Some(url) => {
            let runtime = runtime()?;
            let client = runtime.block_on(Client::connect(url, message_limit(global)))?;
            let mut searcher = client.clone();
            let reports = screen(&photos, global.max_image_bytes, 32, &mut |images| {
                let count = images.len();
                match runtime.block_on(searcher.search_many(images, &options)) {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| r.map_err(|s| s.message().to_owned()))
                        .collect(),
                    Err(e) => vec![Err(e.to_string()); count],
                }
            });
            report::write(&args.out, &reports, &|id| {
                runtime.block_on(client.clone().mark_image(id)).ok()
            })?;
            reports
        }
        None => {
            let engine = global.open_warm()?;
            let reports = screen(
                &photos,
                global.max_image_bytes,
                EMBED_BATCH,
                &mut search_locally(&engine, &options),
            );
            report::write(&args.out, &reports, &|id| engine.image(id).ok())?;
            reports
        }
    };
    let unreadable = reports.iter().filter(|r| r.error.is_some()).count();
    let matched = reports.iter().filter(|r| !r.matches.is_empty()).count();
    println!(
        "{} photos screened: {matched} with matches, {unreadable} unreadable; report: {}",
        reports.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Searches every photo in batches of `batch` with a progress bar, through
/// `search` (one result per image, in order). Unreadable photos are reported, not
/// fatal.
pub fn screen(
    photos: &[PathBuf],
    max_bytes: usize,
    batch: usize,
    search: &mut dyn FnMut(Vec<Vec<u8>>) -> Vec<Result<SearchResult, String>>,
) -> Vec<QueryReport> {
    let bar = progress(photos.len(), "screening");
    let mut reports = Vec::with_capacity(photos.len());
    for chunk in photos.chunks(batch.max(1)) {
        let read: Vec<anyhow::Result<Vec<u8>>> =
            chunk.iter().map(|p| read_limited(p, max_bytes)).collect();
        let readable: Vec<Vec<u8>> = read
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut results = search(readable).into_iter();
        for (path, bytes) in chunk.iter().zip(&read) {
            let outcome = match bytes {
                Ok(_) => results
                    .next()
                    .unwrap_or_else(|| Err("no result for this photo".to_owned())),
                Err(e) => Err(format!("{e:#}")),
            };
            reports.push(match outcome {
                Ok(result) => QueryReport {
                    query: path.clone(),
                    matches: result.matches,
                    decision: Some(result.decision),
                    timings: Some(result.timings),
                    error: None,
                },
                Err(error) => QueryReport {
                    query: path.clone(),
                    matches: Vec::new(),
                    decision: None,
                    timings: None,
                    error: Some(error),
                },
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    reports
}

/// A searcher for [`screen`] over a local engine.
pub fn search_locally<'a>(
    engine: &'a Engine,
    options: &'a SearchOptions,
) -> impl FnMut(Vec<Vec<u8>>) -> Vec<Result<SearchResult, String>> + 'a {
    move |images| {
        let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        engine
            .search_many(&refs, options)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

/// The gRPC message limit matching the image limit.
fn message_limit(global: &Global) -> usize {
    global.max_image_bytes + (1 << 20)
}

/// Prints an image's embedding as JSON: model, fingerprint, backend and vector.
pub fn run_embed(
    global: &Global,
    image: &Path,
    views_out: Option<&Path>,
    knockouts: bool,
) -> anyhow::Result<ExitCode> {
    let config = global.engine_config()?;
    let spec = match &config.model {
        Some(path) => marklens::embed::ModelSpec::from_file(path)?,
        None => marklens::embed::ModelSpec::builtin(),
    };
    let embedder = marklens::embed::Embedder::new(
        spec,
        &config.backend,
        config.ort_library.as_deref(),
        config.threads,
    )?;
    let bytes = read_limited(image, config.limits.max_bytes)?;
    let decoded = marklens::imaging::decode(&bytes, &config.limits)
        .with_context(|| format!("{}", image.display()))?;
    let tensor = embedder.spec().preprocess.tensor(&[&decoded.image]);
    let vector = embedder.embed(tensor.view())?.remove(0);
    let mut out = serde_json::json!({
        "model": embedder.spec().name,
        "fingerprint": embedder.fingerprint(),
        "backend": embedder.backend().name(),
        "embedding": vector,
    });
    if let Some(dir) = views_out {
        let written = write_views(
            &embedder.spec().preprocess,
            &decoded.image,
            knockouts,
            image,
            dir,
        )?;
        out["views"] = serde_json::json!(written);
    }
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Writes the views a search of `image` (read from `path`) shows the model into
/// `dir`, as `<stem>-view<N>.png`, and returns their paths.
fn write_views(
    preprocess: &marklens::imaging::Preprocess,
    image: &image::RgbImage,
    knockouts: bool,
    path: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = path
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy());
    preprocess
        .views(image, knockouts)
        .iter()
        .enumerate()
        .map(|(n, view)| {
            let file = dir.join(format!("{stem}-view{}.png", n + 1));
            view.save(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(file.display().to_string())
        })
        .collect()
}
