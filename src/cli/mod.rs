//! The command line: one module per command family, all thin faces over
//! [`marklens::Engine`].

mod bench;
mod calibrate;
mod demo;
mod enroll;
mod marks;
mod search;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use marklens::embed::BackendChoice;
use marklens::imaging::Limits;
use marklens::{Engine, EngineConfig, IndexChoice};

/// Trademark image matching: enrol recorded marks, then find which of them a photo
/// shows.
///
/// marklens keeps recorded marks (recordation data, source image, embeddings) in a
/// data directory. A photo is embedded with an ImageNet-trained EfficientNet-Lite0 on
/// ONNX Runtime (or the pure-Rust tract runtime when ONNX Runtime is not installed)
/// and compared with every recorded mark by cosine similarity; the closest are then
/// re-ranked by how many of their corners line up with the photo's.
#[derive(Debug, Parser)]
#[command(name = "marklens", version, max_term_width = 100)]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, ClapArgs)]
pub struct Global {
    /// Data directory holding the recorded marks (created if missing).
    #[arg(
        long,
        global = true,
        env = "MARKLENS_DATA",
        default_value = "./marklens-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Model runtime: `auto` uses ONNX Runtime when its library is found, else tract.
    #[arg(long, global = true, env = "MARKLENS_BACKEND", default_value = "auto",
          value_parser = ["auto", "onnxruntime", "tract"])]
    pub backend: String,

    /// Path to libonnxruntime.so. Without it marklens looks in $ORT_DYLIB_PATH,
    /// ./.ort/, beside the executable and in .ort/ of the executable's ancestors.
    #[arg(long, global = true, env = "MARKLENS_ORT_LIB", value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,

    /// ONNX model with the built-in model's contract (default: the built-in
    /// EfficientNet-Lite0).
    #[arg(long, global = true, env = "MARKLENS_MODEL", value_name = "FILE")]
    pub model: Option<PathBuf>,

    /// Model runtime threads (0: one per core).
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub threads: usize,

    /// Vector index: exact search, HNSW, or `auto` (exact below --exact-below vectors).
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "exact", "hnsw"])]
    pub index: String,

    /// With `--index auto`, galleries smaller than this use exact search.
    #[arg(long, global = true, default_value_t = 5_000, value_name = "N")]
    pub exact_below: usize,

    /// Largest image file accepted, in bytes.
    #[arg(long, global = true, default_value_t = Limits::default().max_bytes, value_name = "BYTES")]
    pub max_image_bytes: usize,

    /// Largest image accepted, in pixels (width x height).
    #[arg(long, global = true, default_value_t = Limits::default().max_pixels, value_name = "N")]
    pub max_pixels: u64,

    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol marks from image files, folders or a CSV/JSONL manifest.
    Enroll(enroll::EnrollArgs),
    /// Search one photo and print the ranked matches.
    Search(search::SearchArgs),
    /// Search every image in a folder and write a report (.json, .csv or .html).
    Screen(search::ScreenArgs),
    /// List, show or remove recorded marks.
    #[command(subcommand)]
    Marks(marks::MarksCommand),
    /// Print the model, runtime, index and store figures.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-embed marks recorded with another model (after a model change), or by
    /// a marklens that did not yet keep where each view lies in the image (so
    /// that their matches can show where on the mark they lined up).
    Reembed,
    /// Fit the match / possible / no match thresholds on labelled photos and
    /// store them: every later search returns its decision by them.
    Calibrate(calibrate::CalibrateArgs),
    /// Print the embedding of an image (for checks and debugging).
    ///
    /// The embedding is of the whole image, as the model sees it without
    /// framing. With --views-out, also writes what a search of this image shows
    /// the model: the mark found, cropped, redrawn as ink on white and turned
    /// upright, one PNG per view.
    Embed {
        /// The image.
        image: PathBuf,
        /// Folder to write the image's views into, as `<image stem>-view<N>.png`
        /// (created if missing); their paths are listed in the output's `views`.
        #[arg(long, value_name = "DIR")]
        views_out: Option<PathBuf>,
        /// With --views-out, leave out the views of marks knocked out of tilted
        /// blocks, as `search --no-knockouts` does.
        #[arg(long, requires = "views_out")]
        no_knockouts: bool,
    },
    /// Benchmarks: gRPC load, synthetic galleries at scale.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve the gRPC API (marklens.v1, health, reflection).
    Serve(serve::ServeArgs),
    /// Enrol the bundled demo gallery, screen the demo photos into a report, serve.
    Demo(demo::DemoArgs),
}

/// Sets up `tracing` on stderr.
pub fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let global = &args.global;
    match args.command {
        Command::Enroll(a) => enroll::run(global, a),
        Command::Search(a) => search::run_search(global, a),
        Command::Screen(a) => search::run_screen(global, a),
        Command::Marks(c) => marks::run(global, c),
        Command::Info { json } => marks::run_info(global, json),
        Command::Reembed => marks::run_reembed(global),
        Command::Calibrate(a) => calibrate::run(global, a),
        Command::Embed {
            image,
            views_out,
            no_knockouts,
        } => search::run_embed(global, &image, views_out.as_deref(), !no_knockouts),
        Command::Bench(c) => bench::run(global, c),
        Command::Serve(a) => serve::run(global, a),
        Command::Demo(a) => demo::run(global, a),
    }
}

impl Global {
    /// The engine configuration these options describe.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let mut config = EngineConfig::new(&self.data_dir);
        config.backend = self
            .backend
            .parse::<BackendChoice>()
            .map_err(anyhow::Error::msg)?;
        config.ort_library = self.ort_lib.clone();
        config.model = self.model.clone();
        config.threads = self.threads;
        config.index = match self.index.as_str() {
            "exact" => IndexChoice::Exact,
            "hnsw" => IndexChoice::Hnsw,
            _ => IndexChoice::Auto {
                exact_below: self.exact_below,
            },
        };
        config.limits = Limits {
            max_bytes: self.max_image_bytes,
            max_pixels: self.max_pixels,
            ..Limits::default()
        };
        Ok(config)
    }

    /// Opens the engine on the data directory.
    pub fn open(&self) -> anyhow::Result<Engine> {
        self.open_with(self.engine_config()?)
    }

    /// Opens the engine for long work (serving, screening): the store is read
    /// into the page cache meanwhile ([`EngineConfig::warm_store`]).
    pub fn open_warm(&self) -> anyhow::Result<Engine> {
        self.open_with(EngineConfig {
            warm_store: true,
            ..self.engine_config()?
        })
    }

    /// Opens the engine even if some marks were embedded by another model, so
    /// that they can be re-embedded ([`marks::reembed_stale`]).
    pub fn open_allowing_stale(&self) -> anyhow::Result<Engine> {
        self.open_with(EngineConfig {
            allow_stale_model: true,
            ..self.engine_config()?
        })
    }

    fn open_with(&self, config: EngineConfig) -> anyhow::Result<Engine> {
        Engine::open(config)
            .with_context(|| format!("cannot open data directory {}", self.data_dir.display()))
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// Image files accepted as marks or photos, by extension.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "jfif"];

/// Every image file under `root` (recursively), sorted; `root` itself if a file.
pub fn image_files(root: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a file, refusing ones over `max` bytes before reading them.
pub fn read_limited(path: &std::path::Path, max: usize) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > max as u64 {
        anyhow::bail!("{}: {size} bytes, over the limit of {max}", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
