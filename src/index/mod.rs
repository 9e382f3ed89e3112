//! Nearest-neighbour search over unit vectors: the candidates stage.
//!
//! Two implementations sit behind [`VectorIndex`]: [`ExactIndex`] compares the query
//! with every vector (exact, and fastest below a few tens of thousands of vectors),
//! and [`HnswIndex`], an `hnsw_rs` graph for large galleries. Both score by cosine
//! similarity (vectors are unit length, so the dot product) and take a filter that
//! the caller uses for removed vectors and for recordation filters.
//!
//! Labels (`u64`) are the store's vector ids; this module knows nothing about marks.

mod exact;
mod hnsw;

pub use exact::ExactIndex;
pub use hnsw::{HnswIndex, HnswParams, SnapshotError};

/// A candidate: a vector label and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub label: u64,
    pub score: f32,
}

/// The operations the search pipeline needs from an index.
pub trait VectorIndex: Send + Sync {
    /// Adds labelled unit vectors.
    fn insert(&mut self, items: &[(u64, Vec<f32>)]);
    /// Forgets a label (a no-op for unknown labels).
    fn remove(&mut self, label: u64);
    /// The `k` best hits whose label passes `accept`, best first.
    fn search(&self, query: &[f32], k: usize, accept: &dyn Fn(u64) -> bool) -> Vec<Hit>;
    /// Number of live vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Removed vectors still occupying space (zero for exact search).
    fn tombstones(&self) -> usize;
    /// A short name for logs and `info`.
    fn kind(&self) -> &'static str;
    /// Writes a snapshot for a fast restart into `dir`, if this kind of index is
    /// worth one; returns whether it wrote one.
    fn save_snapshot(&self, _dir: &std::path::Path, _tag: &str) -> Result<bool, SnapshotError> {
        Ok(false)
    }
}

/// Dot product of two equally long slices, written so the compiler vectorises it
/// (eight independent accumulators break the floating-point dependency chain).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, ra) = a.split_at(a.len() - a.len() % 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Keeps the `k` best hits, best first (ties broken by label for determinism).
fn top_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let order = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.label.cmp(&b.label));
    if hits.len() > k && k > 0 {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    hits.sort_unstable_by(order);
    hits.truncate(k);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random unit vectors in clusters, like real embeddings.
    pub(crate) fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..16)
            .map(|_| (0..dim).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let v: Vec<f32> = c.iter().map(|x| x + 0.3 * next()).collect();
                crate::embed::normalised(&v)
            })
            .collect()
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.01).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn hnsw_agrees_with_exact_search() {
        let dim = 64;
        let data = clustered(2000, dim, 7);
        let items: Vec<(u64, Vec<f32>)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, v.clone()))
            .collect();
        let mut exact = ExactIndex::new(dim);
        exact.insert(&items);
        let mut hnsw = HnswIndex::new(dim, HnswParams::default(), items.len());
        hnsw.insert(&items);
        let queries = clustered(50, dim, 99);
        let mut found = 0;
        for q in &queries {
            let truth: Vec<u64> = exact
                .search(q, 10, &|_| true)
                .iter()
                .map(|h| h.label)
                .collect();
            let approx = hnsw.search(q, 10, &|_| true);
            found += approx.iter().filter(|h| truth.contains(&h.label)).count();
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        assert!(recall > 0.95, "recall@10 {recall}");
    }

    #[test]
    fn removed_and_filtered_labels_never_come_back() {
        let dim = 32;
        let data = clustered(300, dim, 3);
        let items: Vec<(u64, Vec<f32>)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.clone()))
            .collect();
        let mut indexes: Vec<Box<dyn VectorIndex>> = vec![
            Box::new(ExactIndex::new(dim)),
            Box::new(HnswIndex::new(dim, HnswParams::default(), 300)),
        ];
        for index in &mut indexes {
            index.insert(&items);
            // The query is vector 5 itself: before removal it is the best hit.
            assert_eq!(index.search(&data[5], 1, &|_| true)[0].label, 5);
            index.remove(5);
            let hits = index.search(&data[5], 50, &|label| label % 2 == 1);
            assert!(
                hits.iter().all(|h| h.label != 5 && h.label % 2 == 1),
                "{}",
                index.kind()
            );
            assert_eq!(index.len(), 299);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }
}
