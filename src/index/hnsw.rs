//! HNSW graph search (`hnsw_rs`) for large galleries, with tombstones and snapshots.
//!
//! `hnsw_rs` has no deletion, so removed labels become tombstones: they stay in the
//! graph (still useful as routing nodes) but are filtered out of every result. The
//! owner rebuilds the graph when tombstones pile up ([`HnswIndex::tombstones`]).
//!
//! Building a graph costs about a millisecond per vector on two cores, so a restart
//! must not rebuild it: [`HnswIndex::save`] writes a snapshot (the `hnsw_rs` dump plus
//! a small JSON header) and [`HnswIndex::load`] reads it back in seconds.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anndists::dist::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::{Hnsw, Neighbour};
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};

use super::{Hit, VectorIndex, dot, top_k};

/// Cosine distance for unit vectors: `1 - dot`, clamped at zero.
///
/// `anndists`' own `DistDot` asserts that `dot <= 1 + 2e-6`, which rounding can
/// break for a query identical to a stored 1280-d vector and would abort a search;
/// this one clamps instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// Room an unfiltered search asks for beyond twice the removed labels' share of
/// its results: for removed labels that sit together near the query (a removed
/// mark's own views, a removed brand's marks) when a photo of them is searched.
const ROOM_MARGIN: usize = 16;

/// How many more than `k` results an unfiltered search asks for, to drop the
/// removed ones among them: about twice their share of the graph's `labels`,
/// plus [`ROOM_MARGIN`], never more than there are nor more than `k`. Too little
/// room costs only a second, filtered search; too much costs every search a
/// longer candidate list (all of `k` doubled the search stage's time at
/// 116,723 marks with 0.2% of them removed).
fn room(tombstones: usize, labels: usize, k: usize) -> usize {
    if tombstones == 0 {
        return 0;
    }
    let share = tombstones as f64 / labels.max(1) as f64;
    let expected = (2.0 * share * k as f64).ceil() as usize;
    (expected + ROOM_MARGIN).min(tombstones).min(k)
}

/// Graph construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (`M`).
    pub max_connections: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to `k` when smaller).
    pub ef_search: usize,
}

impl Default for HnswParams {
    /// M = 16, ef_construction = 200, ef_search = 64: recall@10 of 0.9998 against
    /// exact search on 100k clustered 256-d vectors, 0.7 ms a query on one core.
    fn default() -> Self {
        HnswParams {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

/// Why a snapshot could not be written or read. A failed load is never fatal: the
/// owner rebuilds from the store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no index snapshot in {0}")]
    Missing(PathBuf),
    #[error("index snapshot {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("index snapshot was built for {found}, not {expected}")]
    Stale { found: String, expected: String },
    #[error("index snapshot I/O in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

const HEADER: &str = "snapshot.json";
const FORMAT: u32 = 1;

/// The JSON header written beside the `hnsw_rs` dump.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    /// Opaque tag chosen by the owner (the model fingerprint): a snapshot is only
    /// loaded under the same tag.
    tag: String,
    dim: usize,
    params: HnswParams,
    basename: String,
    /// Every label in the graph, tombstoned or not.
    labels: Vec<u64>,
    tombstones: Vec<u64>,
}

/// An HNSW graph over labelled unit vectors.
pub struct HnswIndex {
    graph: Hnsw<'static, f32, UnitCosine>,
    dim: usize,
    params: HnswParams,
    labels: HashSet<u64>,
    tombstones: HashSet<u64>,
}

impl HnswIndex {
    /// An empty graph sized for about `capacity` vectors.
    pub fn new(dim: usize, params: HnswParams, capacity: usize) -> Self {
        let mut graph = Hnsw::new(
            params.max_connections,
            capacity.max(1024),
            16,
            params.ef_construction,
            UnitCosine,
        );
        graph.set_searching_mode(true);
        HnswIndex {
            graph,
            dim,
            params,
            labels: HashSet::new(),
            tombstones: HashSet::new(),
        }
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Every label in the graph, including tombstoned ones.
    pub fn labels(&self) -> &HashSet<u64> {
        &self.labels
    }

    /// Writes a snapshot into `dir` (created if needed), replacing any older one only
    /// once the new one is complete.
    pub fn save(&self, dir: &Path, tag: &str) -> Result<(), SnapshotError> {
        let io_err = |source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let staging = dir.with_extension("partial");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err)?;
        }
        std::fs::create_dir_all(&staging).map_err(io_err)?;
        let basename =
            self.graph
                .file_dump(&staging, "graph")
                .map_err(|e| SnapshotError::Invalid {
                    path: staging.clone(),
                    reason: e.to_string(),
                })?;
        let mut labels: Vec<u64> = self.labels.iter().copied().collect();
        labels.sort_unstable();
        let mut tombstones: Vec<u64> = self.tombstones.iter().copied().collect();
        tombstones.sort_unstable();
        let header = Header {
            format: FORMAT,
            tag: tag.to_owned(),
            dim: self.dim,
            params: self.params,
            basename,
            labels,
            tombstones,
        };
        let json = serde_json::to_vec(&header).map_err(|e| SnapshotError::Invalid {
            path: staging.clone(),
            reason: e.to_string(),
        })?;
        write_synced(&staging.join(HEADER), &json).map_err(io_err)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err)?;
        }
        std::fs::rename(&staging, dir).map_err(io_err)?;
        Ok(())
    }

    /// Reads a snapshot written by [`save`](Self::save) under the same `tag`.
    pub fn load(dir: &Path, tag: &str, dim: usize) -> Result<HnswIndex, SnapshotError> {
        let header_path = dir.join(HEADER);
        if !header_path.is_file() {
            return Err(SnapshotError::Missing(dir.to_path_buf()));
        }
        let invalid = |reason: String| SnapshotError::Invalid {
            path: dir.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(&header_path).map_err(|source| SnapshotError::Io {
            path: header_path.clone(),
            source,
        })?;
        let header: Header = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if header.format != FORMAT || header.dim != dim {
            return Err(invalid(format!(
                "format {} dim {}, expected format {FORMAT} dim {dim}",
                header.format, header.dim
            )));
        }
        if header.tag != tag {
            return Err(SnapshotError::Stale {
                found: header.tag,
                expected: tag.to_owned(),
            });
        }
        // The loaded graph borrows from its loader for its whole life; the loader is
        // a few paths, so it is leaked to give the graph a 'static lifetime.
        let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, &header.basename)));
        // hnsw_rs asserts on some inconsistencies instead of returning errors: a
        // damaged snapshot must mean "rebuild", not a crash.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            // Moving the `'static` borrow in makes the graph's lifetime `'static` too.
            let loader = loader;
            loader.load_hnsw::<f32, UnitCosine>()
        }))
        .map_err(|_| invalid("hnsw_rs panicked while reading the dump".into()))?
        .map_err(|e| invalid(e.to_string()))?;
        let mut graph = loaded;
        graph.set_searching_mode(true);
        if graph.get_nb_point() != header.labels.len() {
            return Err(invalid(format!(
                "graph holds {} points, header lists {}",
                graph.get_nb_point(),
                header.labels.len()
            )));
        }
        Ok(HnswIndex {
            graph,
            dim,
            params: header.params,
            labels: header.labels.into_iter().collect(),
            tombstones: header.tombstones.into_iter().collect(),
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl VectorIndex for HnswIndex {
    fn insert(&mut self, items: &[(u64, Vec<f32>)]) {
        let fresh: Vec<(&[f32], usize)> = items
            .iter()
            .filter(|(label, _)| {
                // A label is inserted once; re-adding a tombstoned one revives it.
                self.tombstones.remove(label);
                !self.labels.contains(label)
            })
            .map(|(label, v)| {
                assert_eq!(v.len(), self.dim, "vector dimension mismatch");
                (v.as_slice(), *label as usize)
            })
            .collect();
        if fresh.is_empty() {
            return;
        }
        self.graph.set_searching_mode(false);
        if fresh.len() >= 64 {
            self.graph.parallel_insert_slice(&fresh);
        } else {
            for item in &fresh {
                self.graph.insert_slice(*item);
            }
        }
        self.graph.set_searching_mode(true);
        self.labels
            .extend(fresh.iter().map(|(_, label)| *label as u64));
    }

    fn remove(&mut self, label: u64) {
        if self.labels.contains(&label) {
            self.tombstones.insert(label);
        }
    }

    fn search(&self, query: &[f32], k: usize, accept: Option<&dyn Fn(u64) -> bool>) -> Vec<Hit> {
        if k == 0 || self.len() == 0 {
            return Vec::new();
        }
        let hit = |n: Neighbour| Hit {
            label: n.d_id as u64,
            score: 1.0 - n.distance,
        };
        if accept.is_none() {
            // hnsw_rs stops a search once no candidate can better its list only
            // when it has no filter; with one it explores every candidate. So an
            // unfiltered search runs without one, asks for room for removed
            // labels, drops them, and falls back to the filtered search if too
            // few are left. Its candidate list is half again as long as the
            // number asked: with that it ranked the calibration split as the
            // filtered search did, in about 0.55x the time at 149,069 vectors.
            let room = room(self.tombstones.len(), self.labels.len(), k);
            let ef = self.params.ef_search.max((k + room) * 3 / 2);
            let hits: Vec<Hit> = self
                .graph
                .search_filter(query, k + room, ef, None)
                .into_iter()
                .map(hit)
                .filter(|h| !self.tombstones.contains(&h.label))
                .collect();
            if hits.len() >= k.min(self.len()) {
                return top_k(hits, k);
            }
        }
        let filter = |id: &usize| {
            let label = *id as u64;
            !self.tombstones.contains(&label) && accept.is_none_or(|accept| accept(label))
        };
        let ef = self.params.ef_search.max(k);
        let hits = self
            .graph
            .search_filter(query, k, ef, Some(&filter))
            .into_iter()
            .map(hit)
            .collect();
        top_k(hits, k)
    }

    fn len(&self) -> usize {
        self.labels.len() - self.tombstones.len()
    }

    fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    fn kind(&self) -> &'static str {
        "hnsw"
    }

    fn save_snapshot(&self, dir: &Path, tag: &str) -> Result<bool, SnapshotError> {
        self.save(dir, tag).map(|()| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::synthetic::clustered;

    #[test]
    fn room_for_removed_labels_follows_their_share() {
        assert_eq!(room(0, 1_000, 180), 0);
        assert_eq!(room(1, 1_000, 180), 1);
        // 260 of 149,069 vectors removed: their share of 180 results is under
        // one, so the margin is what is asked.
        assert_eq!(room(260, 149_069, 180), 1 + ROOM_MARGIN);
        // A tenth removed: twice its share.
        assert_eq!(room(10_000, 100_000, 180), 36 + ROOM_MARGIN);
        // Never more than k.
        assert_eq!(room(60_000, 100_000, 180), 180);
    }

    #[test]
    fn snapshot_round_trip_gives_identical_results() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("index");
        let dim = 48;
        let data = clustered(500, dim, 11);
        let items: Vec<(u64, Vec<f32>)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 * 3, v.clone()))
            .collect();
        let mut index = HnswIndex::new(dim, HnswParams::default(), 500);
        index.insert(&items);
        index.remove(30);
        index.save(&snap, "model-a").unwrap();

        assert!(matches!(
            HnswIndex::load(&snap, "model-b", dim),
            Err(SnapshotError::Stale { .. })
        ));
        let loaded = HnswIndex::load(&snap, "model-a", dim).unwrap();
        assert_eq!(loaded.len(), 499);
        assert_eq!(loaded.tombstones(), 1);
        for q in clustered(20, dim, 5) {
            assert_eq!(index.search(&q, 5, None), loaded.search(&q, 5, None));
        }
        // A damaged header means "rebuild", never a crash.
        std::fs::write(snap.join(HEADER), b"{not json").unwrap();
        assert!(matches!(
            HnswIndex::load(&snap, "model-a", dim),
            Err(SnapshotError::Invalid { .. })
        ));
    }
}
