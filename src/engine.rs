//! The library's front door: open a data directory; enrol, remove, look up and
//! search recorded marks.
//!
//! The engine ties the stages together in one direction:
//! bytes -> [`imaging`] -> tensor -> [`embed`] -> vector -> [`index`] -> candidates
//! -> [`store`] records -> ranked [`Match`]es. The CLI and the gRPC service are thin
//! faces over this API and hold no matching logic of their own.
//!
//! Concurrency: searches run in parallel under a read lock on the index; writes
//! (enrol, remove, re-embed, snapshot) are serialised by a writer lock so that the
//! in-memory index always reflects the store in commit order. All methods are
//! blocking and CPU-bound: async callers run them on a blocking pool.

use std::collections::{HashMap, HashSet};
use std::fs::{File, TryLockError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::decision::{self, Calibration, Decision, Evidence, Labelled};
use crate::embed::{Backend, BackendChoice, EmbedError, Embedder, ModelSpec};
use crate::imaging::{self, Frame, ImageError, Keypoints, Limits};
use crate::index::{ExactIndex, HnswIndex, HnswParams, VectorIndex};
use crate::store::{
    IndexDelta, ListQuery, MarkFields, MarkRecord, MarkStatus, NewMark, PutOutcome, Store,
    StoreError, VectorOwner, warm_cache,
};
use crate::verify;

/// File name of the database inside a data directory.
pub const DB_FILE: &str = "marks.db";
/// How much of the store [`EngineConfig::warm_store`] reads: stores larger than this
/// are warmed only in part rather than pushing everything else out of memory.
pub const WARM_LIMIT: u64 = 8 << 30;
/// Folder of the index snapshot inside a data directory.
pub const SNAPSHOT_DIR: &str = "index";
const LOCK_FILE: &str = "lock";
/// How long [`Engine::open`] waits for another holder to let go of the lock. A lock
/// file's lock is held by every process that shares its open file, so a child that
/// any thread of this process forks (to exec a tool) holds it until it execs, and a
/// marklens being restarted may still be exiting: both let go within moments.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Key of the calibration in the store's `meta` table. Calibrations that record
/// their scoring live under a key of their own, so that an older marklens, which
/// cannot tell, never reads thresholds fitted on scores it does not make (it
/// keeps reading its own, under [`LEGACY_CALIBRATION_KEY`]).
const CALIBRATION_KEY: &str = "calibration.scored";
/// Where calibrations were stored before they recorded their scoring (fused
/// scores of the first 10 candidates, bonus up to 0.2). Only read, to warn.
const LEGACY_CALIBRATION_KEY: &str = "calibration";
/// Images per model call: measured best throughput on 2 cores (docs/benchmarks.md).
pub const EMBED_BATCH: usize = 8;
/// Largest `top_k` a search may ask for.
pub const MAX_TOP_K: usize = 100;
/// Longest mark id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Which index serves searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexChoice {
    /// Exact search below `exact_below` vectors, HNSW from there on.
    Auto {
        exact_below: usize,
    },
    Exact,
    Hnsw,
}

impl Default for IndexChoice {
    fn default() -> Self {
        IndexChoice::Auto { exact_below: 5_000 }
    }
}

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// An ONNX model with the built-in contract; `None` uses the built-in model.
    pub model: Option<PathBuf>,
    pub backend: BackendChoice,
    /// Explicit path to `libonnxruntime.so`.
    pub ort_library: Option<PathBuf>,
    /// Model runtime threads (0: one per core).
    pub threads: usize,
    pub limits: Limits,
    pub index: IndexChoice,
    pub hnsw: HnswParams,
    /// Open even if some marks were embedded by another model (they are not
    /// searchable until [`Engine::reembed_stale`] runs). Without it, such a store is
    /// refused.
    pub allow_stale_model: bool,
    /// Read the store file into the operating system's cache on a background
    /// thread as the engine opens ([`warm_cache`]), for long-running faces (the
    /// service, screening): their first searches then verify from memory
    /// instead of waiting on the disk for every candidate, and the open's own
    /// reads of the store overlap with it.
    pub warm_store: bool,
}

/// Reads the store at `path` into the page cache on a thread of its own,
/// logging how long it took; searches run meanwhile and only get faster.
fn spawn_warming(path: PathBuf) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("store-warm".into())
        .spawn(move || {
            let started = Instant::now();
            match warm_cache(&path, WARM_LIMIT) {
                Ok(bytes) => tracing::info!(
                    mib = bytes >> 20,
                    ms = started.elapsed().as_millis() as u64,
                    "store read into the page cache"
                ),
                Err(error) => tracing::warn!(path = %path.display(), %error, "store not warmed"),
            }
        })
        .map(drop)
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            model: None,
            backend: BackendChoice::Auto,
            ort_library: None,
            threads: 0,
            limits: Limits::default(),
            index: IndexChoice::default(),
            hnsw: HnswParams::default(),
            allow_stale_model: false,
            warm_store: false,
        }
    }
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no mark with id {0:?}")]
    NotFound(String),
    #[error("mark {0:?} is already recorded")]
    AlreadyExists(String),
    #[error(
        "the store holds vectors from model(s) {stored:?} but this engine runs {current}; \
         run `marklens reembed` to re-embed them, or open with the model that made them"
    )]
    ModelMismatch {
        stored: Vec<String>,
        current: String,
    },
    #[error("data directory {path} is in use by another marklens process")]
    Locked { path: PathBuf },
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not recorded: the batch's transaction failed: {0}")]
    BatchAborted(String),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// A photo with its answer, for calibration.
#[derive(Debug, Clone)]
pub struct LabelledPhoto {
    pub image: Vec<u8>,
    /// Ids of the marks that are a right answer; empty when the photo shows no
    /// recorded mark.
    pub right: Vec<String>,
}

/// A mark to enrol.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub id: String,
    pub fields: MarkFields,
    /// The encoded source image (any accepted format).
    pub image: Vec<u8>,
    /// Refuse ([`EngineError::AlreadyExists`]) instead of replacing a recorded id.
    pub create_only: bool,
}

/// What enrolment did with one mark.
pub type EnrollOutcome = PutOutcome;

/// Filters applied to search candidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// Keep marks in any of these Nice classes (empty: all).
    pub nice_classes: Vec<u8>,
    /// Keep marks with one of these statuses (empty: all).
    pub statuses: Vec<MarkStatus>,
    /// Keep marks whose holder contains this text, case-insensitively.
    pub holder: Option<String>,
}

impl SearchFilter {
    fn is_empty(&self) -> bool {
        self.nice_classes.is_empty() && self.statuses.is_empty() && self.holder.is_none()
    }
}

/// Search parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Matches to return (1..=[`MAX_TOP_K`]).
    pub top_k: usize,
    /// Drop matches whose score is below this (-1: keep every match; with the
    /// whitening head, unrelated marks score around 0 and below).
    pub min_score: f32,
    pub filter: SearchFilter,
    /// Also look for a mark knocked out of a solid block that does not fill the
    /// photo's crop (tilted, or beside a label's edge): one more view for about
    /// one photo in eight, which then takes about twice as long. The view is
    /// compared with the marks' views as enrolled (which never include it, so
    /// switching it does not change the gallery); off, such photos are searched
    /// by the block alone. On by default: most contrast-reversed marks are found
    /// only this way. It costs p95 latency (43 against 34 ms off at 16,676 marks,
    /// tenth round; at 116,930 marks p95 stays just within 50 ms on a normal day,
    /// docs/benchmarks.md, twelfth round), so a caller with a strict budget at
    /// that size may switch it off.
    pub knockouts: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            top_k: 10,
            min_score: -1.0,
            filter: SearchFilter::default(),
            knockouts: true,
        }
    }
}

/// One ranked match.
#[derive(Debug, Clone, Serialize)]
pub struct Match {
    /// 1 for the best match.
    pub rank: usize,
    /// What matches are ranked and decided by: `similarity` plus a bonus of up to
    /// [`verify::WEIGHT`] for `support` ([`verify::fuse`]).
    pub score: f32,
    /// Cosine similarity of the best view of the mark, in -1..=1.
    pub similarity: f32,
    /// Corners of the photo matched to the mark's that one similarity transform
    /// carries onto each other ([`verify`]); 0 when not verified.
    pub inliers: u32,
    /// `inliers` less those chance accounts for among the corner matches they
    /// were found among ([`verify::Agreement::support`]): what `score` counts.
    pub support: u32,
    /// Where those corners lie in the photo; `None` without inliers.
    pub region: Option<Region>,
    /// Where the mark's corners that they lined up with lie in its recorded
    /// image, one for each of `region`'s points in the same order: the two sides
    /// of "these parts match". `None` without inliers, and for marks recorded
    /// before marklens kept its views' frames (re-enrol them to fill it).
    pub mark_region: Option<Region>,
    pub record: MarkRecord,
}

/// Where a match's corners lined up, on one side: in the photo's pixels, or in
/// the recorded image's (either upright, as its EXIF orientation shows it).
/// What an officer is shown to see why it matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Region {
    /// The box around `points`: left, top, right, bottom.
    pub bounds: [f32; 4],
    /// The corners that agreed ([`verify::Agreement`]).
    pub points: Vec<[f32; 2]>,
}

impl Region {
    /// `points`, in a view's keypoint units, taken through `frame`, the view's
    /// frame, to its image's pixels; `None` without points.
    fn of(points: &[[f32; 2]], frame: &Frame) -> Option<Region> {
        let points: Vec<[f32; 2]> = points
            .iter()
            .map(|p| {
                frame
                    .apply([f64::from(p[0]), f64::from(p[1])])
                    .map(|v| v as f32)
            })
            .collect();
        let first = points.first()?;
        let mut bounds = [first[0], first[1], first[0], first[1]];
        for [x, y] in &points {
            bounds = [
                bounds[0].min(*x),
                bounds[1].min(*y),
                bounds[2].max(*x),
                bounds[3].max(*y),
            ];
        }
        Some(Region { bounds, points })
    }
}

/// Wall time spent in each stage of one search, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub embed_ms: f64,
    /// Index lookup and verification together.
    pub search_ms: f64,
    /// Of `search_ms`, the geometric verification of the first candidates.
    pub verify_ms: f64,
    pub total_ms: f64,
}

/// The answer to one search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub matches: Vec<Match>,
    /// What the best match amounts to, under the engine's calibration.
    pub decision: Decision,
    pub timings: StageTimings,
    /// The photo's own vectors, one per view, for callers that compare or keep
    /// them (the benchmark ranks them exactly). Empty in a result read back from a
    /// gRPC reply, which does not carry them.
    #[serde(skip)]
    pub query_views: Views,
    /// The photo's keypoints, one set per view, likewise (the benchmark verifies
    /// its exact candidates with them). Empty in a result read back from gRPC.
    #[serde(skip)]
    pub query_keypoints: Vec<Keypoints>,
}

/// A snapshot of the engine's state for `info` and the service's stats.
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    pub data_dir: PathBuf,
    pub model: String,
    pub model_sha256: String,
    pub fingerprint: String,
    pub backend: Backend,
    pub dim: usize,
    pub index: &'static str,
    pub indexed_vectors: usize,
    pub tombstones: usize,
    pub marks: usize,
    pub vectors: usize,
    pub image_bytes: u64,
    pub database_bytes: u64,
}

/// The unit vectors of an image's views (one or more, see [`imaging::Framing`]).
pub type Views = Vec<Vec<f32>>;

/// A candidate after verification ([`Engine::verify_candidates`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub mark_id: Arc<str>,
    /// Fused: what the candidate ranks by.
    pub score: f32,
    pub similarity: f32,
    pub inliers: u32,
    /// What `score` counts of `inliers` ([`verify::Agreement::support`]).
    pub support: u32,
    /// The corners behind `inliers`; `None` without any.
    pub agreement: Option<verify::Agreement>,
}

/// An image's views, embedded, with their keypoints and frames.
struct Embedded {
    views: Views,
    keypoints: Vec<Keypoints>,
    frames: Vec<Frame>,
    format: String,
}

impl Embedded {
    /// The keypoints in their stored form, one blob per view.
    fn keypoint_blobs(&self) -> Vec<Vec<u8>> {
        self.keypoints.iter().map(Keypoints::to_bytes).collect()
    }

    /// The frames in their stored form, one blob per view.
    fn frame_blobs(&self) -> Vec<Vec<u8>> {
        self.frames.iter().map(Frame::to_bytes).collect()
    }
}

/// Stored keypoint blobs back into keypoints, one set per view in view order; a
/// blob that does not parse is an empty set (logged), so that view is matched by
/// similarity alone and the others keep their places (an agreement names its
/// view by place, to find that view's frame).
fn decode(mark_id: &str, blobs: Vec<Vec<u8>>) -> Vec<Keypoints> {
    blobs
        .iter()
        .map(|b| {
            Keypoints::from_bytes(b).unwrap_or_else(|| {
                tracing::warn!(mark_id, bytes = b.len(), "stored keypoints do not parse");
                Keypoints::default()
            })
        })
        .collect()
}

/// A decoded, preprocessed image ready for the model.
struct Prepared {
    /// One row per view of the image (see [`imaging::Framing`]).
    tensor: Array4<f32>,
    /// One set per view.
    keypoints: Vec<Keypoints>,
    /// One per view: from its keypoints' units to the image's pixels.
    frames: Vec<Frame>,
    format: String,
    timings: StageTimings,
}

/// What a search needs to know about an indexed vector without touching the store.
#[derive(Debug)]
struct Owner {
    mark_id: Arc<str>,
    status: MarkStatus,
    holder_lower: Option<String>,
    nice_classes: Vec<u8>,
}

impl Owner {
    fn from_store(o: VectorOwner) -> (u64, Owner) {
        (
            o.vid,
            Owner {
                mark_id: o.mark_id.into(),
                status: o.status,
                holder_lower: o.holder.map(|h| h.to_lowercase()),
                nice_classes: o.nice_classes,
            },
        )
    }

    fn passes(&self, filter: &SearchFilter, holder_lower: Option<&str>) -> bool {
        (filter.statuses.is_empty() || filter.statuses.contains(&self.status))
            && (filter.nice_classes.is_empty()
                || self
                    .nice_classes
                    .iter()
                    .any(|c| filter.nice_classes.contains(c)))
            && holder_lower.is_none_or(|wanted| {
                self.holder_lower
                    .as_deref()
                    .is_some_and(|h| h.contains(wanted))
            })
    }
}

/// The searchable state: the index and the owner of every indexed vector.
struct Searchable {
    index: Box<dyn VectorIndex>,
    owners: HashMap<u64, Owner>,
}

/// A mark id and one of its vectors.
pub type MarkVector = (Arc<str>, Vec<f32>);

/// An open data directory with its model loaded.
pub struct Engine {
    config: EngineConfig,
    embedder: Embedder,
    store: Mutex<Store>,
    searchable: RwLock<Searchable>,
    /// Thresholds for the search decision, if calibrated for this model and scoring.
    calibration: RwLock<Option<Calibration>>,
    /// Serialises writers (see the module docs).
    writer: Mutex<()>,
    _lock: File,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .field("embedder", &self.embedder)
            .finish()
    }
}

impl Engine {
    /// Opens (creating if needed) a data directory: takes its lock, loads the model,
    /// opens the store and brings the index up to date with it.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        let dir = &config.data_dir;
        let io_err = |source| EngineError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(io_err)?;
        take_lock(&lock, LOCK_WAIT).map_err(|e| match e {
            TryLockError::WouldBlock => EngineError::Locked { path: dir.clone() },
            TryLockError::Error(source) => io_err(source),
        })?;
        if config.warm_store {
            spawn_warming(dir.join(DB_FILE)).map_err(io_err)?;
        }

        let spec = match &config.model {
            Some(path) => ModelSpec::from_file(path)?,
            None => ModelSpec::builtin(),
        };
        let embedder = Embedder::new(
            spec,
            &config.backend,
            config.ort_library.as_deref(),
            config.threads,
        )?;
        let store = Store::open(&dir.join(DB_FILE))?;
        let fingerprint = embedder.fingerprint().to_owned();
        let stale: Vec<String> = store
            .models()?
            .into_iter()
            .filter(|m| *m != fingerprint)
            .collect();
        if !stale.is_empty() && !config.allow_stale_model {
            return Err(EngineError::ModelMismatch {
                stored: stale,
                current: fingerprint,
            });
        }

        let calibration = load_calibration(&store, &fingerprint)?;
        let started = Instant::now();
        let searchable = load_searchable(&config, &store, &embedder)?;
        tracing::info!(
            index = searchable.index.kind(),
            vectors = searchable.index.len(),
            ms = started.elapsed().as_millis() as u64,
            "index ready"
        );
        Ok(Engine {
            config,
            embedder,
            store: Mutex::new(store),
            searchable: RwLock::new(searchable),
            calibration: RwLock::new(calibration),
            writer: Mutex::new(()),
            _lock: lock,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Enrols one mark.
    pub fn enroll(&self, request: EnrollRequest) -> Result<EnrollOutcome, EngineError> {
        self.enroll_many(vec![request])
            .pop()
            .expect("one result per request")
    }

    /// Enrols a batch of marks and returns one result per request, in order. Valid
    /// marks are recorded even when others in the batch fail. A mark whose id, image
    /// and fields are already recorded is not re-embedded, so re-running an
    /// interrupted bulk load only does the remaining work.
    pub fn enroll_many(
        &self,
        requests: Vec<EnrollRequest>,
    ) -> Vec<Result<EnrollOutcome, EngineError>> {
        let _writer = self.lock_writer();
        let fingerprint = self.embedder.fingerprint().to_owned();
        let mut results: Vec<Option<Result<EnrollOutcome, EngineError>>> =
            (0..requests.len()).map(|_| None).collect();

        // 1. Validate and hash; find what needs the model.
        let mut prepared: Vec<(usize, NewMark, bool)> = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            if let Err(e) = validate_request(&request) {
                results[i] = Some(Err(e));
                continue;
            }
            let sha = hex_sha256(&request.image);
            let known = match self.lock_store().fingerprint_of(&request.id) {
                Ok(known) => known,
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            if request.create_only && known.is_some() {
                results[i] = Some(Err(EngineError::AlreadyExists(request.id)));
                continue;
            }
            let needs_model = known != Some((sha.clone(), fingerprint.clone()));
            prepared.push((
                i,
                NewMark {
                    id: request.id,
                    fields: request.fields,
                    image: request.image,
                    image_sha256: sha,
                    image_format: String::new(),
                    views: Vec::new(),
                    keypoints: Vec::new(),
                    frames: Vec::new(),
                },
                needs_model,
            ));
        }

        // 2. Decode, preprocess and embed what is new (in parallel, then in batches).
        let to_embed: Vec<usize> = (0..prepared.len()).filter(|&p| prepared[p].2).collect();
        for chunk in to_embed.chunks(EMBED_BATCH) {
            let images: Vec<&[u8]> = chunk.iter().map(|&p| &prepared[p].1.image[..]).collect();
            let embedded = self.embed_images(&images);
            for (&p, outcome) in chunk.iter().zip(embedded) {
                match outcome {
                    Ok(embedded) => {
                        let mark = &mut prepared[p].1;
                        mark.keypoints = embedded.keypoint_blobs();
                        mark.frames = embedded.frame_blobs();
                        mark.views = embedded.views;
                        mark.image_format = embedded.format;
                    }
                    Err(e) => results[prepared[p].0] = Some(Err(e)),
                }
            }
        }
        if prepared.iter().any(|(_, _, needs)| !needs) {
            // Unchanged images keep their recorded format.
            let store = self.lock_store();
            for (_, mark, _) in prepared.iter_mut().filter(|(_, _, needs)| !needs) {
                if let Ok(Some(record)) = store.get(&mark.id) {
                    mark.image_format = record.image_format;
                }
            }
        }

        // 3. Record everything that is ready in one transaction, then index it.
        let (positions, marks): (Vec<usize>, Vec<NewMark>) = prepared
            .into_iter()
            .filter(|(i, _, _)| results[*i].is_none())
            .map(|(i, m, _)| (i, m))
            .unzip();
        if !marks.is_empty() {
            let put = self.lock_store().put(&marks, &fingerprint);
            match put {
                Ok((outcomes, delta)) => {
                    let changed: Vec<&str> = marks
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, o)| **o != PutOutcome::Unchanged)
                        .map(|(m, _)| m.id.as_str())
                        .collect();
                    if let Err(e) = self.apply(&delta, &changed) {
                        tracing::error!(error = %e, "index update failed after commit");
                    }
                    for (&i, outcome) in positions.iter().zip(outcomes) {
                        results[i] = Some(Ok(outcome));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for &i in &positions {
                        results[i] = Some(Err(EngineError::BatchAborted(message.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request gets a result"))
            .collect()
    }

    /// Records marks with embeddings computed elsewhere (one vector each, of this
    /// model's dimension), skipping the model. For migrations from a system running
    /// the same model, and for building large synthetic galleries in benchmarks.
    /// The image is stored as given and is not decoded.
    pub fn enroll_embedded(
        &self,
        marks: Vec<(EnrollRequest, Vec<f32>)>,
    ) -> Result<Vec<EnrollOutcome>, EngineError> {
        let _writer = self.lock_writer();
        let dim = self.embedder.dim();
        let mut prepared = Vec::with_capacity(marks.len());
        for (request, vector) in marks {
            validate_request(&request)?;
            if vector.len() != dim {
                return Err(EngineError::InvalidArgument(format!(
                    "vector of {} has {} dimensions, the model makes {dim}",
                    request.id,
                    vector.len()
                )));
            }
            prepared.push(NewMark {
                image_sha256: hex_sha256(&request.image),
                image_format: image::guess_format(&request.image)
                    .map(format_name)
                    .unwrap_or_else(|_| "unknown".to_owned()),
                id: request.id,
                fields: request.fields,
                image: request.image,
                views: vec![crate::embed::normalised(&vector)],
                keypoints: Vec::new(),
                frames: Vec::new(),
            });
        }
        let (outcomes, delta) = self
            .lock_store()
            .put(&prepared, self.embedder.fingerprint())?;
        let changed: Vec<&str> = prepared.iter().map(|m| m.id.as_str()).collect();
        self.apply(&delta, &changed)?;
        Ok(outcomes)
    }

    /// Decodes and preprocesses images in parallel, timing each one's stages;
    /// `knockouts` as in [`SearchOptions::knockouts`].
    fn prepare(&self, images: &[&[u8]], knockouts: bool) -> Vec<Result<Prepared, EngineError>> {
        let pre = self.embedder.spec().preprocess;
        let limits = self.config.limits;
        images
            .par_iter()
            .map(|bytes| {
                let t0 = Instant::now();
                let image = imaging::decode(bytes, &limits)?;
                let t1 = Instant::now();
                let input = pre.input(&image.image, knockouts);
                Ok(Prepared {
                    tensor: input.tensor,
                    keypoints: input.keypoints,
                    frames: input.frames,
                    format: format_name(image.format),
                    timings: StageTimings {
                        decode_ms: ms(t1 - t0),
                        preprocess_ms: ms(t1.elapsed()),
                        ..StageTimings::default()
                    },
                })
            })
            .collect()
    }

    /// Embeds the views of the successfully prepared images as one model batch;
    /// returns each image's view vectors in order and the model time in
    /// milliseconds.
    fn embed_prepared(
        &self,
        prepared: &[Result<Prepared, EngineError>],
    ) -> Result<(Vec<Views>, f64), EmbedError> {
        let tensors: Vec<_> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|p| p.tensor.view()))
            .collect();
        if tensors.is_empty() {
            return Ok((Vec::new(), 0.0));
        }
        let started = Instant::now();
        let batch = ndarray::concatenate(Axis(0), &tensors).expect("equal tensor shapes");
        let mut vectors = self.embedder.embed(batch.view())?.into_iter();
        let per_image = tensors
            .iter()
            .map(|t| vectors.by_ref().take(t.shape()[0]).collect())
            .collect();
        Ok((per_image, ms(started.elapsed())))
    }

    /// Decodes, preprocesses and embeds images as one model batch. Returns each
    /// image's views and format name, or why that image failed.
    fn embed_images(&self, images: &[&[u8]]) -> Vec<Result<Embedded, EngineError>> {
        let prepared = self.prepare(images, false);
        let mut vectors = match self.embed_prepared(&prepared) {
            Ok((vectors, _)) => vectors.into_iter(),
            Err(e) => return fail_all(prepared.len(), &e),
        };
        prepared
            .into_iter()
            .map(|p| {
                p.map(|p| Embedded {
                    views: vectors.next().expect("views per image"),
                    keypoints: p.keypoints,
                    frames: p.frames,
                    format: p.format,
                })
            })
            .collect()
    }

    /// Applies a committed change to the index and the owner table. `changed` are the
    /// marks whose fields may have changed.
    fn apply(&self, delta: &IndexDelta, changed: &[&str]) -> Result<(), EngineError> {
        let owners: Vec<VectorOwner> = {
            let store = self.lock_store();
            let mut owners = Vec::new();
            for id in changed {
                owners.extend(store.owners_of(id)?);
            }
            owners
        };
        let mut searchable = self.write_searchable();
        for label in &delta.removed {
            searchable.index.remove(*label);
            searchable.owners.remove(label);
        }
        searchable.index.insert(&delta.added);
        for owner in owners {
            let (vid, owner) = Owner::from_store(owner);
            searchable.owners.insert(vid, owner);
        }
        self.maybe_switch_to_hnsw(&mut searchable);
        Ok(())
    }

    /// Moves from exact search to HNSW once an automatic index outgrows exact search.
    fn maybe_switch_to_hnsw(&self, searchable: &mut Searchable) {
        let IndexChoice::Auto { exact_below } = self.config.index else {
            return;
        };
        if searchable.index.kind() != "exact" || searchable.index.len() < exact_below {
            return;
        }
        let started = Instant::now();
        let mut graph = HnswIndex::new(
            self.embedder.dim(),
            self.config.hnsw,
            searchable.index.len() * 2,
        );
        let store = self.lock_store();
        let mut items = Vec::with_capacity(searchable.index.len());
        let collected = store.for_each_vector(
            self.embedder.fingerprint(),
            self.embedder.dim(),
            0,
            |vid, v| items.push((vid, v)),
        );
        if let Err(e) = collected {
            tracing::error!(error = %e, "cannot switch to the HNSW index; staying exact");
            return;
        }
        graph.insert(&items);
        searchable.index = Box::new(graph);
        tracing::info!(
            vectors = items.len(),
            ms = started.elapsed().as_millis() as u64,
            "gallery outgrew exact search: switched to the HNSW index"
        );
    }

    /// Removes a mark; it never appears in a search again.
    pub fn remove(&self, id: &str) -> Result<(), EngineError> {
        let _writer = self.lock_writer();
        let removed = self
            .lock_store()
            .remove(id)?
            .ok_or_else(|| EngineError::NotFound(id.to_owned()))?;
        self.apply(
            &IndexDelta {
                removed,
                added: Vec::new(),
            },
            &[],
        )?;
        self.compact_if_needed()?;
        Ok(())
    }

    /// Rebuilds a graph index whose tombstones exceed a quarter of its size.
    fn compact_if_needed(&self) -> Result<(), EngineError> {
        let (tombstones, live) = {
            let s = self.read_searchable();
            if !needs_compaction(s.index.as_ref()) {
                return Ok(());
            }
            (s.index.tombstones(), s.index.len())
        };
        tracing::info!(tombstones, live, "compacting the index");
        let rebuilt = build_index(&self.config, &self.lock_store(), &self.embedder, live)?;
        self.write_searchable().index = rebuilt;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<MarkRecord, EngineError> {
        self.lock_store()
            .get(id)?
            .ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    /// The recorded source image of a mark.
    pub fn image(&self, id: &str) -> Result<Vec<u8>, EngineError> {
        self.lock_store()
            .image(id)?
            .ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    pub fn list(&self, query: &ListQuery) -> Result<Vec<MarkRecord>, EngineError> {
        Ok(self.lock_store().list(query)?)
    }

    /// Searches one encoded image.
    pub fn search(
        &self,
        image: &[u8],
        options: &SearchOptions,
    ) -> Result<SearchResult, EngineError> {
        self.search_many(&[image], options)
            .pop()
            .expect("one result per image")
    }

    /// Searches several images, sharing model calls; one result per image, in order.
    pub fn search_many(
        &self,
        images: &[&[u8]],
        options: &SearchOptions,
    ) -> Vec<Result<SearchResult, EngineError>> {
        if let Err(e) = validate_options(options) {
            let message = e.to_string();
            return images
                .iter()
                .map(|_| Err(EngineError::InvalidArgument(message.clone())))
                .collect();
        }
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(EMBED_BATCH) {
            out.extend(
                self.search_chunk(chunk, options)
                    .into_iter()
                    .map(|r| r.map(|(result, _)| result)),
            );
        }
        out
    }

    /// Searches at most [`EMBED_BATCH`] images with valid `options`; each result
    /// comes with the evidence its decision rests on.
    fn search_chunk(
        &self,
        images: &[&[u8]],
        options: &SearchOptions,
    ) -> Vec<Result<(SearchResult, Evidence), EngineError>> {
        let batch_start = Instant::now();
        let prepared = self.prepare(images, options.knockouts);
        let (vectors, embed_ms) = match self.embed_prepared(&prepared) {
            Ok(done) => done,
            Err(e) => return fail_all(prepared.len(), &e),
        };
        let mut vectors = vectors.into_iter();
        prepared
            .into_iter()
            .map(|p| {
                let Prepared {
                    mut timings,
                    keypoints,
                    frames,
                    ..
                } = p?;
                let views = vectors.next().expect("views per image");
                let search_start = Instant::now();
                let (matches, evidence, verify_ms) =
                    self.rank(&views, &keypoints, &frames, options)?;
                timings.embed_ms = embed_ms;
                timings.verify_ms = verify_ms;
                timings.search_ms = ms(search_start.elapsed());
                timings.total_ms = ms(batch_start.elapsed());
                let decision = self.decide(evidence);
                let result = SearchResult {
                    matches,
                    decision,
                    timings,
                    query_views: views,
                    query_keypoints: keypoints,
                };
                Ok((result, evidence))
            })
            .collect()
    }

    /// Searches with an embedding computed elsewhere (benchmarks, re-ranking).
    pub fn search_vector(
        &self,
        vector: &[f32],
        options: &SearchOptions,
    ) -> Result<Vec<Match>, EngineError> {
        validate_options(options)?;
        if vector.len() != self.embedder.dim() {
            return Err(EngineError::InvalidArgument(format!(
                "vector has {} dimensions, the model makes {}",
                vector.len(),
                self.embedder.dim()
            )));
        }
        Ok(self.rank(&[vector.to_vec()], &[], &[], options)?.0)
    }

    /// Candidates from the index for each view of the query, grouped by mark (the
    /// best pair of query view and mark view wins), filtered, verified against the
    /// query's keypoints when it has any ([`verify`]), thresholded and joined with
    /// their records. Also returns what the decision rests on (the best match
    /// against every verified candidate, before `top_k` cuts the list) and the
    /// time verification took, in milliseconds.
    fn rank(
        &self,
        views: &[Vec<f32>],
        keypoints: &[Keypoints],
        frames: &[Frame],
        options: &SearchOptions,
    ) -> Result<(Vec<Match>, Evidence, f64), EngineError> {
        let holder = options.filter.holder.as_ref().map(|h| h.to_lowercase());
        // Verification may lift any of the first DEPTH candidates to the top.
        let wanted = if keypoints.is_empty() {
            options.top_k
        } else {
            options.top_k.max(verify::DEPTH)
        };
        let best: Vec<(Arc<str>, f32)> = {
            let searchable = self.read_searchable();
            let owners = &searchable.owners;
            let passes = |label: u64| {
                owners
                    .get(&label)
                    .is_some_and(|o| o.passes(&options.filter, holder.as_deref()))
            };
            // Without a filter the index takes its faster unfiltered path.
            let accept: Option<&dyn Fn(u64) -> bool> =
                (!options.filter.is_empty()).then_some(&passes);
            // Several views of a mark may rank together. The reply is always
            // filled: `top_k` marks hold at most `top_k * MAX_VIEWS` hits. The
            // list verification draws on need only be nearly full (a mark has
            // 1.3 views on average): twice its length, at verify::DEPTH the 120
            // hits a view fetched when 30 candidates were verified.
            let fetch = (options.top_k * imaging::normalise::MAX_VIEWS).max(wanted * 2);
            let mut best: HashMap<Arc<str>, f32> = HashMap::new();
            for view in views {
                for hit in searchable.index.search(view, fetch, accept) {
                    let Some(owner) = owners.get(&hit.label) else {
                        continue;
                    };
                    let score = best.entry(owner.mark_id.clone()).or_insert(hit.score);
                    *score = score.max(hit.score);
                }
            }
            let mut best: Vec<(Arc<str>, f32)> = best.into_iter().collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            best.truncate(wanted);
            best
        };
        let started = Instant::now();
        let verified = self.verify_candidates(keypoints, best)?;
        let verify_ms = ms(started.elapsed());
        let store = self.lock_store();
        let mut matches = Vec::with_capacity(options.top_k);
        for c in verified.iter().filter(|c| c.score >= options.min_score) {
            if matches.len() == options.top_k {
                break;
            }
            // A mark removed between the index read and here is simply skipped.
            if let Some(record) = store.get(&c.mark_id)? {
                let (region, mark_region) = match &c.agreement {
                    Some(a) => {
                        let mark_frame = store
                            .frames_of(&c.mark_id)?
                            .get(a.mark_view)
                            .and_then(|b| Frame::from_bytes(b));
                        (
                            frames.get(a.view).and_then(|f| Region::of(&a.points, f)),
                            mark_frame.and_then(|f| Region::of(&a.mark_points, &f)),
                        )
                    }
                    None => (None, None),
                };
                matches.push(Match {
                    rank: matches.len() + 1,
                    score: c.score,
                    similarity: c.similarity,
                    inliers: c.inliers,
                    support: c.support,
                    region,
                    mark_region,
                    record,
                });
            }
        }
        // The decision weighs the best match against every other verified
        // candidate, whatever `top_k` and `min_score` leave in the reply.
        let best = matches.first();
        let rivals = verified
            .iter()
            .filter(|c| best.is_some_and(|m| *c.mark_id != *m.record.id))
            .map(|c| c.inliers);
        let evidence = Evidence::new(best.map(|m| (m.score, m.inliers)), rivals);
        Ok((matches, evidence, verify_ms))
    }

    /// Verifies `candidates` (mark ids with their cosine similarity, best first)
    /// against a photo's keypoints as far as that can change the first place
    /// (see [`verify`]: within [`verify::WEIGHT`] of the best similarity, the
    /// first [`verify::RIVALS`] always, then up to [`verify::DEPTH`] while a
    /// candidate could still beat the best fused score), and orders all of them
    /// by fused score, best first; those not verified keep their similarity.
    /// Without keypoints the order is the similarity's. The benchmark calls this
    /// on its exact candidates.
    pub fn verify_candidates(
        &self,
        keypoints: &[Keypoints],
        candidates: Vec<(Arc<str>, f32)>,
    ) -> Result<Vec<Verified>, EngineError> {
        // Each verified candidate's agreeing corners, kept for its region.
        let mut agreements: Vec<Option<verify::Agreement>> = Vec::new();
        if !keypoints.is_empty() {
            let similarities: Vec<f32> = candidates.iter().map(|c| c.1).collect();
            verify::bounded::<EngineError>(&similarities, |range| {
                let stored: Vec<Vec<Keypoints>> = {
                    let store = self.lock_store();
                    candidates[range]
                        .iter()
                        .map(|(id, _)| Ok(decode(id, store.keypoints_of(id)?)))
                        .collect::<Result<_, EngineError>>()?
                };
                let found: Vec<Option<verify::Agreement>> = stored
                    .par_iter()
                    .map(|mark| verify::agreement(keypoints, mark))
                    .collect();
                let support = found
                    .iter()
                    .map(|a| a.as_ref().map_or(0, verify::Agreement::support))
                    .collect();
                agreements.extend(found);
                Ok(support)
            })?;
        }
        let mut agreements = agreements.into_iter();
        let mut out: Vec<Verified> = candidates
            .into_iter()
            .map(|(mark_id, similarity)| {
                let agreement = agreements.next().flatten();
                let (inliers, support) = agreement
                    .as_ref()
                    .map_or((0, 0), |a| (a.inliers(), a.support()));
                Verified {
                    score: verify::fuse(similarity, support),
                    mark_id,
                    similarity,
                    inliers,
                    support,
                    agreement,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.mark_id.cmp(&b.mark_id))
        });
        Ok(out)
    }

    /// The decision for a search that found `evidence`.
    pub fn decide(&self, evidence: Evidence) -> Decision {
        decision::decide(self.read_calibration().as_ref(), evidence)
    }

    /// Fits the decision thresholds on labelled photos, stores them and decides
    /// every later search by them. The photos are searched as a client would,
    /// with the views `options` asks for (its `top_k`, `min_score` and `filter`
    /// are ignored): fit with the views you serve with, since knockouts lift
    /// some photos' top scores. `progress` is told how many photos each step
    /// searched.
    pub fn calibrate(
        &self,
        photos: &[LabelledPhoto],
        options: &SearchOptions,
        max_miss: f64,
        min_precision: f64,
        progress: &dyn Fn(usize),
    ) -> Result<Calibration, EngineError> {
        let options = SearchOptions {
            top_k: 1,
            knockouts: options.knockouts,
            ..SearchOptions::default()
        };
        let mut labelled = Vec::with_capacity(photos.len());
        for chunk in photos.chunks(EMBED_BATCH) {
            let images: Vec<&[u8]> = chunk.iter().map(|p| p.image.as_slice()).collect();
            for (photo, found) in chunk.iter().zip(self.search_chunk(&images, &options)) {
                let (result, evidence) = found?;
                let top = result.matches.into_iter().next();
                labelled.push(Labelled {
                    evidence,
                    recorded: !photo.right.is_empty(),
                    top_correct: top.is_some_and(|m| photo.right.contains(&m.record.id)),
                });
            }
            progress(chunk.len());
        }
        let marks = self.lock_store().counts()?.marks;
        let calibration = Calibration::fit(
            &labelled,
            max_miss,
            min_precision,
            self.embedder.fingerprint(),
            marks,
        )
        .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        self.set_calibration(calibration.clone())?;
        Ok(calibration)
    }

    /// The thresholds searches decide by, if any.
    pub fn calibration(&self) -> Option<Calibration> {
        self.read_calibration().clone()
    }

    /// Stores `calibration` and decides every later search by it. It must have been
    /// made in this engine's vector space and on its scores ([`verify::SCORING`]).
    pub fn set_calibration(&self, calibration: Calibration) -> Result<(), EngineError> {
        if let Some(why) = foreign(&calibration, self.embedder.fingerprint()) {
            return Err(EngineError::InvalidArgument(why));
        }
        let _writer = self.lock_writer();
        let json = serde_json::to_string(&calibration).expect("a calibration serialises");
        self.lock_store().set_meta(CALIBRATION_KEY, &json)?;
        *self
            .calibration
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(calibration);
        Ok(())
    }

    fn read_calibration(&self) -> std::sync::RwLockReadGuard<'_, Option<Calibration>> {
        self.calibration
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decodes, preprocesses and embeds images (one model batch per
    /// `EMBED_BATCH`); the unit vectors of each image's views, or why that image
    /// failed, per image.
    pub fn embed(&self, images: &[&[u8]]) -> Vec<Result<Views, EngineError>> {
        images
            .chunks(EMBED_BATCH)
            .flat_map(|chunk| self.embed_images(chunk))
            .map(|r| r.map(|e| e.views))
            .collect()
    }

    /// Every indexed vector with the id of its mark, in enrolment order: the
    /// gallery as the benchmark sees it.
    pub fn vectors(&self) -> Result<Vec<MarkVector>, EngineError> {
        let mut rows = Vec::new();
        self.lock_store().for_each_vector(
            self.embedder.fingerprint(),
            self.embedder.dim(),
            0,
            |vid, vector| rows.push((vid, vector)),
        )?;
        let searchable = self.read_searchable();
        Ok(rows
            .into_iter()
            .filter_map(|(vid, vector)| {
                let owner = searchable.owners.get(&vid)?;
                Some((owner.mark_id.clone(), vector))
            })
            .collect())
    }

    /// Re-embeds, from the stored source images, every mark whose vectors were
    /// made by another model (after a model change), and every mark recorded
    /// before the store kept its views' frames (whose matches could not show
    /// where on the mark they lined up). Calls `progress(done, total)`.
    pub fn reembed_stale(&self, progress: &dyn Fn(usize, usize)) -> Result<usize, EngineError> {
        let _writer = self.lock_writer();
        let fingerprint = self.embedder.fingerprint().to_owned();
        let stale: Vec<String> = {
            let store = self.lock_store();
            let frameless: HashSet<String> = store.ids_without_frames()?.into_iter().collect();
            store
                .ids()?
                .into_iter()
                .filter(|id| {
                    frameless.contains(id)
                        || store
                            .fingerprint_of(id)
                            .ok()
                            .flatten()
                            .is_none_or(|(_, model)| model != fingerprint)
                })
                .collect()
        };
        let total = stale.len();
        for (done, chunk) in stale.chunks(EMBED_BATCH).enumerate() {
            let images: Vec<Vec<u8>> = {
                let store = self.lock_store();
                chunk
                    .iter()
                    .map(|id| store.image(id).map(Option::unwrap_or_default))
                    .collect::<Result<_, _>>()?
            };
            let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
            for (id, embedded) in chunk.iter().zip(self.embed_images(&refs)) {
                let e = embedded?;
                let delta = self.lock_store().replace_views(
                    id,
                    &e.views,
                    &e.keypoint_blobs(),
                    &e.frame_blobs(),
                    &fingerprint,
                )?;
                self.apply(&delta, &[id.as_str()])?;
            }
            progress((done * EMBED_BATCH + chunk.len()).min(total), total);
        }
        Ok(total)
    }

    /// Writes the index snapshot (when the index is a graph) and checkpoints the
    /// database, so the next open is fast. Called on clean shutdown.
    pub fn flush(&self) -> Result<(), EngineError> {
        let _writer = self.lock_writer();
        self.lock_store().checkpoint()?;
        let searchable = self.read_searchable();
        let snapshot = self.config.data_dir.join(SNAPSHOT_DIR);
        let started = Instant::now();
        let written = searchable
            .index
            .save_snapshot(&snapshot, self.embedder.fingerprint())
            .map_err(|e| EngineError::Io {
                path: snapshot.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        if written {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "index snapshot written"
            );
        }
        Ok(())
    }

    pub fn info(&self) -> Result<EngineInfo, EngineError> {
        let counts = self.lock_store().counts()?;
        let searchable = self.read_searchable();
        let db = self.config.data_dir.join(DB_FILE);
        let database_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
            .map(|m| m.len())
            .sum();
        let spec = self.embedder.spec();
        Ok(EngineInfo {
            data_dir: self.config.data_dir.clone(),
            model: spec.name.clone(),
            model_sha256: spec.file_sha256(),
            fingerprint: self.embedder.fingerprint().to_owned(),
            backend: self.embedder.backend().clone(),
            dim: self.embedder.dim(),
            index: searchable.index.kind(),
            indexed_vectors: searchable.index.len(),
            tombstones: searchable.index.tombstones(),
            marks: counts.marks,
            vectors: counts.vectors,
            image_bytes: counts.image_bytes,
            database_bytes,
        })
    }

    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the store cannot leave SQLite inconsistent (every
        // change is a transaction), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_searchable(&self) -> std::sync::RwLockReadGuard<'_, Searchable> {
        self.searchable.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_searchable(&self) -> std::sync::RwLockWriteGuard<'_, Searchable> {
        self.searchable.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes `file`'s exclusive lock, trying again until `wait` has passed while another
/// holder has it.
fn take_lock(file: &File, wait: Duration) -> Result<(), TryLockError> {
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// The stored calibration if it was made for `fingerprint` and the current
/// scoring ([`verify::SCORING`]). One made for another model, or on scores made
/// another way, is ignored (with a warning) until the engine is calibrated again.
fn load_calibration(store: &Store, fingerprint: &str) -> Result<Option<Calibration>, EngineError> {
    let Some(json) = store.meta(CALIBRATION_KEY)? else {
        if store.meta(LEGACY_CALIBRATION_KEY)?.is_some() {
            tracing::warn!(
                "the stored calibration was fitted on the scores of an earlier marklens \
                 (the first 10 candidates verified, bonus up to 0.2); decisions are \
                 uncalibrated until `marklens calibrate` runs again"
            );
        }
        return Ok(None);
    };
    match serde_json::from_str::<Calibration>(&json) {
        Ok(c) => match foreign(&c, fingerprint) {
            None => Ok(Some(c)),
            Some(why) => {
                tracing::warn!(
                    "the stored {why}; decisions are uncalibrated until `marklens calibrate` \
                     runs again"
                );
                Ok(None)
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "unreadable stored calibration; decisions are uncalibrated");
            Ok(None)
        }
    }
}

/// Why `c` cannot decide this engine's searches (made for another model than
/// `fingerprint`, or on scores computed another way), or `None` if it can.
fn foreign(c: &Calibration, fingerprint: &str) -> Option<String> {
    if c.fingerprint != fingerprint {
        Some(format!(
            "calibration was made for model {}, this engine runs {fingerprint}",
            c.fingerprint
        ))
    } else if c.scoring != verify::SCORING {
        Some(format!(
            "calibration was made on scores computed as '{}', this engine scores as '{}'",
            c.scoring,
            verify::SCORING
        ))
    } else {
        None
    }
}

/// Loads the snapshot and catches it up with the store, or builds the index anew.
fn load_searchable(
    config: &EngineConfig,
    store: &Store,
    embedder: &Embedder,
) -> Result<Searchable, EngineError> {
    let owners: HashMap<u64, Owner> = store.owners()?.into_iter().map(Owner::from_store).collect();
    let fingerprint = embedder.fingerprint();
    let live = store.counts()?.vectors;
    let wants_graph = match config.index {
        IndexChoice::Exact => false,
        IndexChoice::Hnsw => true,
        IndexChoice::Auto { exact_below } => live >= exact_below,
    };
    if wants_graph {
        let dir = config.data_dir.join(SNAPSHOT_DIR);
        match HnswIndex::load(&dir, fingerprint, embedder.dim()) {
            Ok(mut graph) => {
                // Catch up: drop what the store no longer has, add what is newer.
                let stale: Vec<u64> = graph
                    .labels()
                    .iter()
                    .copied()
                    .filter(|l| !owners.contains_key(l))
                    .collect();
                let newest = graph.labels().iter().copied().max().unwrap_or(0);
                for label in stale {
                    graph.remove(label);
                }
                let mut fresh = Vec::new();
                store.for_each_vector(fingerprint, embedder.dim(), newest, |vid, v| {
                    fresh.push((vid, v))
                })?;
                graph.insert(&fresh);
                let tombstones = graph.tombstones();
                if !needs_compaction(&graph) {
                    tracing::info!(added = fresh.len(), tombstones, "index snapshot loaded");
                    return Ok(Searchable {
                        index: Box::new(graph),
                        owners,
                    });
                }
                tracing::info!(tombstones, "snapshot has too many tombstones: rebuilding");
            }
            Err(e) => tracing::info!(reason = %e, "rebuilding the index from the store"),
        }
    }
    let index = build_index(config, store, embedder, live)?;
    Ok(Searchable { index, owners })
}

/// Builds the configured index from every stored vector of the current model.
fn build_index(
    config: &EngineConfig,
    store: &Store,
    embedder: &Embedder,
    expected: usize,
) -> Result<Box<dyn VectorIndex>, EngineError> {
    let wants_graph = match config.index {
        IndexChoice::Exact => false,
        IndexChoice::Hnsw => true,
        IndexChoice::Auto { exact_below } => expected >= exact_below,
    };
    let mut index: Box<dyn VectorIndex> = if wants_graph {
        Box::new(HnswIndex::new(embedder.dim(), config.hnsw, expected * 2))
    } else {
        Box::new(ExactIndex::new(embedder.dim()))
    };
    let mut batch = Vec::with_capacity(4096);
    store.for_each_vector(embedder.fingerprint(), embedder.dim(), 0, |vid, v| {
        batch.push((vid, v));
        if batch.len() == 4096 {
            index.insert(&batch);
            batch.clear();
        }
    })?;
    index.insert(&batch);
    Ok(index)
}

/// The same embedding failure for every image of a batch.
fn fail_all<T>(n: usize, error: &EmbedError) -> Vec<Result<T, EngineError>> {
    let message = error.to_string();
    (0..n)
        .map(|_| Err(EmbedError::Inference(message.clone()).into()))
        .collect()
}

/// Checks a request's id and fields (not its image: decoding does that).
fn validate_request(request: &EnrollRequest) -> Result<(), EngineError> {
    validate_id(&request.id)?;
    request
        .fields
        .validate()
        .map_err(EngineError::InvalidArgument)
}

/// Whether removed vectors make up a quarter or more of a graph index.
fn needs_compaction(index: &dyn VectorIndex) -> bool {
    let tombstones = index.tombstones();
    tombstones > 0 && tombstones * 4 >= index.len() + tombstones
}

fn validate_id(id: &str) -> Result<(), EngineError> {
    if id.is_empty() {
        return Err(EngineError::InvalidArgument("mark id is empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(EngineError::InvalidArgument(format!(
            "mark id is {} bytes, over {MAX_ID_LEN}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(EngineError::InvalidArgument(format!(
            "mark id {id:?} contains control characters"
        )));
    }
    Ok(())
}

fn validate_options(options: &SearchOptions) -> Result<(), EngineError> {
    if options.top_k == 0 || options.top_k > MAX_TOP_K {
        return Err(EngineError::InvalidArgument(format!(
            "top_k must be between 1 and {MAX_TOP_K}, got {}",
            options.top_k
        )));
    }
    if !(-1.0..=1.0).contains(&options.min_score) {
        return Err(EngineError::InvalidArgument(format!(
            "min_score must be between -1 and 1, got {}",
            options.min_score
        )));
    }
    if let Some(bad) = options
        .filter
        .nice_classes
        .iter()
        .find(|c| !(1..=45).contains(*c))
    {
        return Err(EngineError::InvalidArgument(format!(
            "nice class {bad} is outside 1..=45"
        )));
    }
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn format_name(format: image::ImageFormat) -> String {
    format
        .extensions_str()
        .first()
        .copied()
        .unwrap_or("unknown")
        .to_owned()
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock let go of while `take_lock` waits is taken; one held past the wait is
    /// reported as held, not as an I/O error.
    #[test]
    fn the_lock_is_waited_for_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let holder = File::create(&path).unwrap();
        holder.lock().unwrap();
        let other = File::create(&path).unwrap();
        assert!(matches!(
            take_lock(&other, Duration::from_millis(100)),
            Err(TryLockError::WouldBlock)
        ));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(holder);
        });
        take_lock(&other, Duration::from_secs(10)).unwrap();
        release.join().unwrap();
    }

    fn calibration(fingerprint: &str, scoring: &str) -> Calibration {
        Calibration {
            fingerprint: fingerprint.into(),
            scoring: scoring.into(),
            match_from: 1.2,
            no_match_below: 0.4,
            match_inlier_margin: Some(17),
            max_miss: 0.01,
            min_precision: 0.99,
            recorded: 10,
            unrecorded: 5,
            gallery: 3,
        }
    }

    /// Thresholds fitted on scores made another way would decide wrongly: they
    /// are not loaded, whichever of the model or the scoring changed.
    #[test]
    fn a_stored_calibration_loads_only_for_its_model_and_scoring() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
        assert_eq!(load_calibration(&store, "m").unwrap(), None);
        // Stored by an earlier marklens, on other scores: not loaded alone, and
        // left where that marklens reads it.
        const OLD: &str = r#"{"fingerprint":"m","match_from":1.1,"no_match_below":0.4,
            "max_miss":0.01,"min_precision":0.99,"recorded":10,"unrecorded":5,"gallery":3}"#;
        store.set_meta(LEGACY_CALIBRATION_KEY, OLD).unwrap();
        assert_eq!(load_calibration(&store, "m").unwrap(), None);
        let current = calibration("m", verify::SCORING);
        for (stored, loads) in [
            (current.clone(), true),
            (calibration("another model", verify::SCORING), false),
            (
                calibration("m", "consensus-v1 depth=10 weight=0.2 cap=20"),
                false,
            ),
        ] {
            store
                .set_meta(CALIBRATION_KEY, &serde_json::to_string(&stored).unwrap())
                .unwrap();
            let loaded = load_calibration(&store, "m").unwrap();
            assert_eq!(loaded, loads.then(|| current.clone()), "{stored:?}");
        }
        // Without its scoring, even under the current key: not loaded.
        store.set_meta(CALIBRATION_KEY, OLD).unwrap();
        assert_eq!(load_calibration(&store, "m").unwrap(), None);
    }
}
