//! The retrieval benchmark: photo queries against an enrolled gallery, scored
//! two ways.
//!
//! - **Exact**: every query vector is compared with every gallery vector, so each
//!   relevant mark gets its true rank (recall@k, MRR, NAR) and the top score
//!   feeds the open-set decision. This measures the model and preprocessing,
//!   independent of the index.
//! - **Served**: the same photo through [`Engine::search`], as a client gets it
//!   (index, filters, records); per-stage latency comes from here, and the
//!   index's recall is its top-10 against the exact top-10, at several `ef`.
//!
//! Relevance is by brand when the manifests carry one (every gallery mark of the
//! query's brand is relevant), else by the expected mark id alone. A query
//! without an expected mark is open-set: its brand is not recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::{
    OpenSetPoint, Percentiles, QueryOutcome, RetrievalSummary, open_set_point, summarise,
};
use crate::decision::Decision;
use crate::engine::{Engine, EngineError, LabelledPhoto, SearchOptions, Views};
use crate::index::{HnswIndex, HnswParams, VectorIndex, dot};
use crate::verify;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Manifest { path: PathBuf, source: csv::Error },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Invalid(String),
}

/// One line of a gallery manifest (extra columns are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct GalleryRow {
    pub mark_id: String,
    pub file: String,
    #[serde(default)]
    pub brand: String,
    /// "mark" or "distractor"; empty means "mark".
    #[serde(default)]
    pub kind: String,
}

/// One line of a query manifest (extra columns are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct QueryRow {
    pub file: String,
    /// Empty for an open-set query.
    #[serde(default)]
    pub expected_mark_id: String,
    #[serde(default)]
    pub brand: String,
    #[serde(default)]
    pub level: String,
    /// Infringing-variant kind (recolour, mirror, ...); empty for plain photos.
    #[serde(default)]
    pub variant: String,
}

impl QueryRow {
    /// The group the query is reported under: its variant kind, else its level;
    /// open-set queries are grouped as "open".
    pub fn group(&self) -> String {
        if self.expected_mark_id.is_empty() {
            "open".into()
        } else if !self.variant.is_empty() {
            self.variant.clone()
        } else {
            self.level.clone()
        }
    }
}

/// Reads a CSV manifest into rows.
pub fn read_manifest<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, BenchError> {
    let err = |source| BenchError::Manifest {
        path: path.to_owned(),
        source,
    };
    csv::Reader::from_path(path)
        .map_err(err)?
        .deserialize()
        .collect::<Result<_, _>>()
        .map_err(err)
}

/// A query photo, read into memory.
pub struct Query {
    pub row: QueryRow,
    pub bytes: Vec<u8>,
}

/// Reads every query's file, relative to the manifest's folder.
pub fn load_queries(manifest: &Path, max_bytes: u64) -> Result<Vec<Query>, BenchError> {
    let base = manifest.parent().unwrap_or(Path::new("."));
    read_manifest::<QueryRow>(manifest)?
        .into_iter()
        .map(|row| {
            let path = base.join(&row.file);
            let io = |source| BenchError::Io {
                path: path.clone(),
                source,
            };
            let len = std::fs::metadata(&path).map_err(io)?.len();
            if len > max_bytes {
                return Err(BenchError::Invalid(format!(
                    "{}: {len} bytes, above the {max_bytes}-byte limit",
                    path.display()
                )));
            }
            let bytes = std::fs::read(&path).map_err(io)?;
            Ok(Query { row, bytes })
        })
        .collect()
}

/// The gallery's vectors in one matrix, with the mark of each row.
pub struct GalleryVectors {
    pub dim: usize,
    /// Mark ids, one per distinct mark.
    pub marks: Vec<Arc<str>>,
    /// Index into `marks` of each row.
    pub row_mark: Vec<u32>,
    /// Row-major, `row_mark.len() x dim`.
    pub matrix: Vec<f32>,
}

impl GalleryVectors {
    /// The engine's vectors; with `only`, just those of the marks it lists.
    pub fn from_engine(
        engine: &Engine,
        only: Option<&HashSet<&str>>,
    ) -> Result<GalleryVectors, BenchError> {
        let dim = engine.embedder().dim();
        let mut rows = engine.vectors()?;
        if let Some(only) = only {
            rows.retain(|(id, _)| only.contains(&**id));
        }
        let mut index: HashMap<Arc<str>, u32> = HashMap::new();
        let mut marks = Vec::new();
        let mut row_mark = Vec::with_capacity(rows.len());
        let mut matrix = Vec::with_capacity(rows.len() * dim);
        for (id, vector) in rows {
            let m = *index.entry(id.clone()).or_insert_with(|| {
                marks.push(id);
                (marks.len() - 1) as u32
            });
            row_mark.push(m);
            matrix.extend_from_slice(&vector);
        }
        Ok(GalleryVectors {
            dim,
            marks,
            row_mark,
            matrix,
        })
    }

    /// The query's score against every row: the best over the query's views.
    pub fn row_scores(&self, views: &[Vec<f32>]) -> Vec<f32> {
        self.matrix
            .chunks_exact(self.dim)
            .map(|row| {
                views
                    .iter()
                    .map(|v| dot(row, v))
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect()
    }

    /// Each mark's score from its rows' scores: its best view.
    pub fn mark_scores(&self, row_scores: &[f32]) -> Vec<f32> {
        let mut best = vec![f32::NEG_INFINITY; self.marks.len()];
        for (&s, &m) in row_scores.iter().zip(&self.row_mark) {
            let slot = &mut best[m as usize];
            if s > *slot {
                *slot = s;
            }
        }
        best
    }

    /// Writes the vectors for outside tools (the Python peers): `gallery.f32`
    /// (little-endian rows) and `gallery.ids` (one mark id per row).
    pub fn export(&self, dir: &Path) -> Result<(), BenchError> {
        let ids: String = self
            .row_mark
            .iter()
            .map(|&m| format!("{}\n", self.marks[m as usize]))
            .collect();
        write(&dir.join("gallery.ids"), ids.as_bytes())?;
        write(&dir.join("gallery.f32"), &f32_bytes(&self.matrix))
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    std::fs::write(path, bytes).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Rank (1-based) of mark `m` among `scores`: one more than the marks scoring
/// higher, or scoring the same with a lower index (ties broken by gallery order,
/// so tied relevant marks still take distinct ranks).
fn rank_of(scores: &[f32], m: usize) -> usize {
    let s = scores[m];
    1 + scores
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x > s || (x == s && i < m))
        .count()
}

/// Indices of the `k` best scores, best first.
fn top(scores: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| {
        scores[b as usize].total_cmp(&scores[a as usize])
    });
    order.truncate(k);
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
    order
}

/// `exact` with its top [`verify::DEPTH`] marks re-ranked by the engine's
/// verification against the query's keypoints (which verifies them only as far
/// as the first place can still change, [`verify::bounded`]): relevant marks
/// among them take their new places, those further down keep theirs, and the
/// top score becomes the fused one.
fn verify_top(
    engine: &Engine,
    gallery: &GalleryVectors,
    scores: &[f32],
    keypoints: &[crate::imaging::Keypoints],
    relevant: &[u32],
    exact: &QueryOutcome,
) -> Result<QueryOutcome, BenchError> {
    let first = top(scores, verify::DEPTH);
    let candidates = first
        .iter()
        .map(|&m| (gallery.marks[m as usize].clone(), scores[m as usize]))
        .collect();
    let ranked = engine.verify_candidates(keypoints, candidates)?;
    let relevant_ranks = relevant
        .iter()
        .zip(&exact.relevant_ranks)
        .map(|(&m, &r)| {
            let id = &gallery.marks[m as usize];
            ranked
                .iter()
                .position(|c| &c.mark_id == id)
                .map_or(r, |p| p + 1)
        })
        .collect();
    Ok(QueryOutcome {
        relevant_ranks,
        top_score: ranked.first().map_or(exact.top_score, |c| c.score),
    })
}

/// Which gallery marks each query counts as a hit.
pub struct Relevance {
    by_brand: HashMap<String, Vec<u32>>,
    by_id: HashMap<Arc<str>, u32>,
}

impl Relevance {
    pub fn new(gallery: &GalleryVectors, rows: &[GalleryRow]) -> Relevance {
        let by_id: HashMap<Arc<str>, u32> = gallery
            .marks
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let mut by_brand: HashMap<String, Vec<u32>> = HashMap::new();
        for row in rows.iter().filter(|r| !r.brand.is_empty()) {
            if let Some(&m) = by_id.get(row.mark_id.as_str()) {
                by_brand.entry(row.brand.clone()).or_default().push(m);
            }
        }
        Relevance { by_brand, by_id }
    }

    /// The relevant marks of a query: empty for open-set queries; an error
    /// when a closed-set query's mark is not in the gallery.
    pub fn of(&self, row: &QueryRow) -> Result<Vec<u32>, BenchError> {
        if row.expected_mark_id.is_empty() {
            return Ok(Vec::new());
        }
        let own = *self
            .by_id
            .get(row.expected_mark_id.as_str())
            .ok_or_else(|| {
                BenchError::Invalid(format!(
                    "{}: expected mark {:?} is not enrolled in the gallery",
                    row.file, row.expected_mark_id
                ))
            })?;
        let mut marks = self.by_brand.get(&row.brand).cloned().unwrap_or_default();
        if !marks.contains(&own) {
            marks.push(own);
        }
        Ok(marks)
    }
}

/// `queries` as calibration photos: a photo counts as right for every mark of
/// its brand (its own mark when there is no brand). Queries whose mark is not in
/// the gallery are an error, as in [`evaluate`].
pub fn labelled_photos(
    queries: &[Query],
    gallery: &GalleryVectors,
    relevance: &Relevance,
) -> Result<Vec<LabelledPhoto>, BenchError> {
    queries
        .iter()
        .map(|q| {
            let right = relevance
                .of(&q.row)?
                .into_iter()
                .map(|m| gallery.marks[m as usize].to_string())
                .collect();
            Ok(LabelledPhoto {
                image: q.bytes.clone(),
                right,
            })
        })
        .collect()
}

/// Latency percentiles of each search stage, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageLatency {
    pub decode: Percentiles,
    pub preprocess: Percentiles,
    pub embed: Percentiles,
    pub search: Percentiles,
    /// Of `search`, the geometric verification.
    pub verify: Percentiles,
    pub total: Percentiles,
}

/// Whole-search latency of the photos that gave one number of views.
#[derive(Debug, Clone, Serialize)]
pub struct ViewsLatency {
    pub views: usize,
    pub queries: usize,
    pub total: Percentiles,
}

/// The index at one `ef`: its top-10 against the exact top-10, and its speed.
#[derive(Debug, Clone, Serialize)]
pub struct EfPoint {
    pub ef: usize,
    /// Mean overlap of the index's top-10 with the exact top-10 vectors.
    pub recall_at_10_vs_exact: f64,
    pub search_ms: Percentiles,
    /// Single-thread searches per second (1 / mean search time).
    pub qps: f64,
}

/// hnsw_rs on its own over the gallery's vectors.
#[derive(Debug, Clone, Serialize)]
pub struct IndexSweep {
    pub params: HnswParams,
    pub vectors: usize,
    /// Graph construction on all cores.
    pub build_seconds: f64,
    pub points: Vec<EfPoint>,
}

/// Metrics of one group of queries.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub group: String,
    /// The global embedding alone, ranking the whole gallery.
    pub exact: RetrievalSummary,
    /// The exact top [`verify::DEPTH`] re-ranked by geometric verification.
    pub verified: RetrievalSummary,
    pub served: RetrievalSummary,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub gallery_marks: usize,
    pub gallery_vectors: usize,
    pub index: String,
    pub queries: usize,
    pub open_set_queries: usize,
    /// Whether the queries were searched for knocked-out marks
    /// ([`SearchOptions::knockouts`]).
    pub knockouts: bool,
    /// Per group (levels, variant kinds) and "all" (every closed-set query).
    pub groups: Vec<GroupResult>,
    /// "No match" decision at 1% and 0.1% false-positive rate, on the verified
    /// scores (what the engine ranks and decides by).
    pub open_set: Vec<OpenSetPoint>,
    /// The same on the global embedding's scores alone.
    pub open_set_embedding: Vec<OpenSetPoint>,
    pub stages: StageLatency,
    /// The whole search's latency by the number of views the photo gave, fewest
    /// first: where the slow photos come from.
    pub latency_by_views: Vec<ViewsLatency>,
    /// The index alone against exact search, when `ef` values were given.
    pub index_sweep: Option<IndexSweep>,
    /// Queries that could not be searched (file, error).
    pub failures: Vec<(String, String)>,
    /// The served decisions, per group ("open" for unrecorded marks, "all" for
    /// every recorded one), under the engine's calibration.
    pub decisions: Vec<DecisionTally>,
}

/// How a group's served searches were decided.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DecisionTally {
    pub group: String,
    pub queries: usize,
    /// "match" with a relevant mark first.
    pub right_match: usize,
    /// "match" with no relevant mark first (for unrecorded marks: any match).
    pub wrong_match: usize,
    pub possible: usize,
    pub no_match: usize,
    pub uncalibrated: usize,
}

impl DecisionTally {
    fn add(&mut self, decision: Decision, top_correct: bool) {
        self.queries += 1;
        match decision {
            Decision::Match if top_correct => self.right_match += 1,
            Decision::Match => self.wrong_match += 1,
            Decision::Possible => self.possible += 1,
            Decision::NoMatch => self.no_match += 1,
            Decision::Uncalibrated => self.uncalibrated += 1,
        }
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RetrievalConfig {
    /// `ef` values of the index sweep (none: no sweep).
    pub ef_values: Vec<usize>,
    /// Graph parameters of the index sweep.
    pub hnsw: HnswParams,
    /// Where to write query vectors for the peers, if anywhere.
    pub export: Option<PathBuf>,
    /// Search the queries for knocked-out marks ([`SearchOptions::knockouts`]).
    pub knockouts: bool,
}

/// What the per-query passes record.
struct Scored {
    /// The served decision, and whether the served top match was relevant.
    decision: Decision,
    top_correct: bool,
    outcome: QueryOutcome,
    /// `outcome` with its top [`verify::DEPTH`] re-ranked by verification.
    verified: QueryOutcome,
    /// The 10 best gallery rows for the query's first view, for the index's
    /// recall.
    exact_rows: Vec<u32>,
    served: QueryOutcome,
    views: Views,
}

/// Runs every query; `progress` is told after each one.
pub fn evaluate(
    engine: &Engine,
    gallery: &GalleryVectors,
    relevance: &Relevance,
    queries: &[Query],
    config: &RetrievalConfig,
    progress: &(dyn Fn() + Sync),
) -> Result<Evaluation, BenchError> {
    let options = SearchOptions {
        top_k: 10,
        knockouts: config.knockouts,
        ..SearchOptions::default()
    };
    let mut failures = Vec::new();
    let mut stages: [Vec<f64>; 6] = Default::default();
    let mut by_views: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    // Pass 1, one photo at a time as a client would send it: the served search
    // (timed per stage), which also hands back the query's vectors.
    let mut served = Vec::with_capacity(queries.len());
    for q in queries {
        let relevant = match relevance.of(&q.row) {
            Ok(relevant) => relevant,
            Err(e) => {
                failures.push((q.row.file.clone(), e.to_string()));
                served.push(None);
                progress();
                continue;
            }
        };
        match engine.search(&q.bytes, &options) {
            Ok(mut result) => {
                let views = std::mem::take(&mut result.query_views);
                let keypoints = std::mem::take(&mut result.query_keypoints);
                let t = &result.timings;
                let sample = [
                    t.decode_ms,
                    t.preprocess_ms,
                    t.embed_ms,
                    t.search_ms,
                    t.verify_ms,
                    t.total_ms,
                ];
                for (stage, v) in stages.iter_mut().zip(sample) {
                    stage.push(v);
                }
                by_views.entry(views.len()).or_default().push(t.total_ms);
                let ids: Vec<&str> = result
                    .matches
                    .iter()
                    .map(|m| m.record.id.as_str())
                    .collect();
                let outcome = served_outcome(&ids, &relevant, gallery, &result_top(&result));
                let decided = (result.decision, outcome.relevant_ranks.contains(&1));
                served.push(Some((relevant, outcome, (views, keypoints), decided)));
            }
            Err(e) => {
                failures.push((q.row.file.clone(), e.to_string()));
                served.push(None);
            }
        }
        progress();
    }
    // Pass 2, in parallel: exact ranks against every gallery vector, then the
    // exact top verify::DEPTH verified.
    let scored: Vec<Option<Scored>> = served
        .into_par_iter()
        .map(|s| {
            s.map(
                |(relevant, served, (views, keypoints), (decision, top_correct))| {
                    let rows = gallery.row_scores(&views);
                    let scores = gallery.mark_scores(&rows);
                    let outcome = QueryOutcome {
                        relevant_ranks: relevant
                            .iter()
                            .map(|&m| rank_of(&scores, m as usize))
                            .collect(),
                        top_score: scores.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    };
                    let verified =
                        verify_top(engine, gallery, &scores, &keypoints, &relevant, &outcome)?;
                    let first = if views.len() == 1 {
                        rows
                    } else {
                        gallery.row_scores(&views[..1])
                    };
                    Ok(Scored {
                        decision,
                        top_correct,
                        exact_rows: top(&first, 10),
                        outcome,
                        verified,
                        served,
                        views,
                    })
                },
            )
            .transpose()
        })
        .collect::<Result<_, BenchError>>()?;

    let ok: Vec<(&Query, &Scored)> = queries
        .iter()
        .zip(&scored)
        .filter_map(|(q, s)| s.as_ref().map(|s| (q, s)))
        .collect();
    let groups = group_results(&ok, gallery.marks.len());
    let open_set_of = |outcome: fn(&Scored) -> &QueryOutcome| -> Vec<OpenSetPoint> {
        let (unrecorded, recorded): (Vec<&QueryOutcome>, Vec<&QueryOutcome>) = ok
            .iter()
            .map(|(_, s)| outcome(s))
            .partition(|o| o.is_open_set());
        let tops = |o: Vec<&QueryOutcome>| o.iter().map(|o| o.top_score).collect::<Vec<_>>();
        let (recorded, unrecorded) = (tops(recorded), tops(unrecorded));
        [0.01, 0.001]
            .iter()
            .filter_map(|&fpr| open_set_point(&recorded, &unrecorded, fpr))
            .collect()
    };
    let open_set = open_set_of(|s| &s.verified);
    let open_set_embedding = open_set_of(|s| &s.outcome);
    let open_set_queries = ok.iter().filter(|(_, s)| s.outcome.is_open_set()).count();

    let index = engine.info()?.index.to_owned();
    let index_sweep = (!config.ef_values.is_empty())
        .then(|| index_sweep(gallery, &ok, config.hnsw, &config.ef_values));
    if let Some(dir) = &config.export {
        export_queries(dir, &ok, gallery.dim)?;
    }
    let [decode, preprocess, embed, search, verify, total] = stages.map(|s| Percentiles::of(&s));
    Ok(Evaluation {
        decisions: decision_tallies(&ok),
        gallery_marks: gallery.marks.len(),
        gallery_vectors: gallery.row_mark.len(),
        index,
        queries: queries.len(),
        open_set_queries,
        knockouts: config.knockouts,
        groups,
        open_set,
        open_set_embedding,
        stages: StageLatency {
            decode,
            preprocess,
            embed,
            search,
            verify,
            total,
        },
        latency_by_views: by_views
            .into_iter()
            .map(|(views, totals)| ViewsLatency {
                views,
                queries: totals.len(),
                total: Percentiles::of(&totals),
            })
            .collect(),
        index_sweep,
        failures,
    })
}

/// Decisions per group, then "open" and "all" (recorded marks).
fn decision_tallies(ok: &[(&Query, &Scored)]) -> Vec<DecisionTally> {
    let mut tallies: Vec<DecisionTally> = Vec::new();
    for (q, s) in ok {
        let group = q.row.group();
        let mut targets = vec![group.clone()];
        if group != "open" {
            targets.push("all".into());
        }
        for target in targets {
            let at = match tallies.iter().position(|t| t.group == target) {
                Some(at) => at,
                None => {
                    tallies.push(DecisionTally {
                        group: target,
                        ..DecisionTally::default()
                    });
                    tallies.len() - 1
                }
            };
            tallies[at].add(s.decision, s.top_correct);
        }
    }
    tallies.sort_by_key(|t| match t.group.as_str() {
        "all" => (usize::MAX, String::new()),
        "open" => (usize::MAX - 1, String::new()),
        g => group_order(g),
    });
    tallies
}

/// The served scores, best first.
fn result_top(result: &crate::engine::SearchResult) -> Vec<f32> {
    result.matches.iter().map(|m| m.score).collect()
}

/// A served top-10 as an outcome: relevant marks outside it are given the last
/// rank of the gallery, so served recall@1/5/10 are exact, while served MRR and
/// NAR treat "not in the top 10" as "last".
fn served_outcome(
    served: &[&str],
    relevant: &[u32],
    gallery: &GalleryVectors,
    scores: &[f32],
) -> QueryOutcome {
    let n = gallery.marks.len();
    QueryOutcome {
        relevant_ranks: relevant
            .iter()
            .map(|&m| {
                let id = &*gallery.marks[m as usize];
                served.iter().position(|s| *s == id).map_or(n, |p| p + 1)
            })
            .collect(),
        top_score: scores.first().copied().unwrap_or(f32::NEG_INFINITY),
    }
}

fn group_results(ok: &[(&Query, &Scored)], gallery: usize) -> Vec<GroupResult> {
    let mut names: Vec<String> = Vec::new();
    for (q, _) in ok {
        let g = q.row.group();
        if g != "open" && !names.contains(&g) {
            names.push(g);
        }
    }
    names.sort_by_key(|g| group_order(g));
    names.push("all".into());
    names
        .into_iter()
        .map(|group| {
            let members: Vec<&Scored> = ok
                .iter()
                .filter(|(q, _)| group == "all" || q.row.group() == group)
                .map(|(_, s)| *s)
                .collect();
            let exact: Vec<&QueryOutcome> = members.iter().map(|s| &s.outcome).collect();
            let verified: Vec<&QueryOutcome> = members.iter().map(|s| &s.verified).collect();
            let served: Vec<&QueryOutcome> = members.iter().map(|s| &s.served).collect();
            GroupResult {
                exact: summarise(&exact, gallery),
                verified: summarise(&verified, gallery),
                served: summarise(&served, gallery),
                group,
            }
        })
        .collect()
}

/// Levels in order of difficulty, then variant kinds, then anything else.
fn group_order(group: &str) -> (usize, String) {
    const ORDER: [&str; 9] = [
        "clean", "easy", "medium", "hard", "recolour", "reverse", "mirror", "redraw", "remove",
    ];
    let at = ORDER
        .iter()
        .position(|g| *g == group)
        .unwrap_or(ORDER.len());
    (at, group.to_owned())
}

/// hnsw_rs alone (no store, no filters) on the gallery matrix with the
/// engine's graph parameters: build time, then recall@10 against exact search
/// and single-thread speed at each `ef`. The Python peers run hnswlib and faiss
/// on the same vectors with the same parameters.
fn index_sweep(
    gallery: &GalleryVectors,
    ok: &[(&Query, &Scored)],
    params: HnswParams,
    ef_values: &[usize],
) -> IndexSweep {
    let rows = gallery.row_mark.len();
    let mut index = HnswIndex::new(gallery.dim, params, rows);
    let started = Instant::now();
    const CHUNK: usize = 8192;
    for (c, chunk) in gallery.matrix.chunks(CHUNK * gallery.dim).enumerate() {
        let items: Vec<(u64, Vec<f32>)> = chunk
            .chunks_exact(gallery.dim)
            .enumerate()
            .map(|(i, v)| ((c * CHUNK + i) as u64, v.to_vec()))
            .collect();
        index.insert(&items);
    }
    let build_seconds = started.elapsed().as_secs_f64();
    let points = ef_values
        .iter()
        .map(|&ef| {
            index.set_ef_search(ef);
            let mut times = Vec::with_capacity(ok.len());
            let mut overlap = 0.0;
            for (_, s) in ok {
                let started = Instant::now();
                let hits = index.search(&s.views[0], 10, None);
                times.push(started.elapsed().as_secs_f64() * 1e3);
                let found: HashSet<u64> = hits.iter().map(|h| h.label).collect();
                let truth = &s.exact_rows;
                overlap += truth
                    .iter()
                    .filter(|r| found.contains(&(**r as u64)))
                    .count() as f64
                    / truth.len().max(1) as f64;
            }
            let mean_ms = times.iter().sum::<f64>() / times.len().max(1) as f64;
            EfPoint {
                ef,
                recall_at_10_vs_exact: overlap / ok.len().max(1) as f64,
                search_ms: Percentiles::of(&times),
                qps: if mean_ms > 0.0 { 1e3 / mean_ms } else { 0.0 },
            }
        })
        .collect();
    IndexSweep {
        params,
        vectors: rows,
        build_seconds,
        points,
    }
}

fn export_queries(dir: &Path, ok: &[(&Query, &Scored)], dim: usize) -> Result<(), BenchError> {
    let mut vectors = Vec::with_capacity(ok.len() * dim);
    let mut lines = String::from("file\texpected_mark_id\tbrand\tgroup\n");
    for (q, s) in ok {
        vectors.extend_from_slice(&s.views[0]);
        lines += &format!(
            "{}\t{}\t{}\t{}\n",
            q.row.file,
            q.row.expected_mark_id,
            q.row.brand,
            q.row.group()
        );
    }
    write(&dir.join("queries.tsv"), lines.as_bytes())?;
    write(&dir.join("queries.f32"), &f32_bytes(&vectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tied_marks_take_distinct_ranks_in_gallery_order() {
        let scores = [0.5, 0.9, 0.7, 0.9, 0.1];
        assert_eq!(rank_of(&scores, 1), 1);
        assert_eq!(rank_of(&scores, 3), 2);
        assert_eq!(rank_of(&scores, 2), 3);
        assert_eq!(rank_of(&scores, 4), 5);
        assert_eq!(top(&scores, 3), [1, 3, 2]);
        assert_eq!(top(&scores, 10).len(), 5);
        assert!(top(&[], 10).is_empty());
    }

    #[test]
    fn several_views_of_a_mark_score_by_the_best() {
        let gallery = GalleryVectors {
            dim: 2,
            marks: vec!["a".into(), "b".into()],
            row_mark: vec![0, 1, 0],
            matrix: vec![1.0, 0.0, 0.6, 0.8, 0.0, 1.0],
        };
        let rows = gallery.row_scores(&[vec![0.0, 1.0]]);
        assert_eq!(rows, [0.0, 0.8, 1.0]);
        assert_eq!(gallery.mark_scores(&rows), [1.0, 0.8]);
        // A query with two views scores each row by its better view.
        let rows = gallery.row_scores(&[vec![0.0, 1.0], vec![1.0, 0.0]]);
        assert_eq!(rows, [1.0, 0.8, 1.0]);
    }
}
