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
pub mod synthetic;

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
    /// The `k` best hits whose label passes `accept` (every label: `None`), best
    /// first.
    fn search(&self, query: &[f32], k: usize, accept: Option<&dyn Fn(u64) -> bool>) -> Vec<Hit>;
    /// Number of live vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Removed vectors still occupying space (zero for exact search).
    fn tombstones(&self) -> usize;
    /// A short name for logs and `info`.
    fn kind(&self) -> &'static str;
    /// Sets the candidate list size of approximate searches (the speed/recall
    /// trade-off); exact search has none and ignores it.
    fn set_ef_search(&mut self, _ef: usize) {}
    /// Writes a snapshot for a fast restart into `dir`, if this kind of index is
    /// worth one; returns whether it wrote one.
    fn save_snapshot(&self, _dir: &std::path::Path, _tag: &str) -> Result<bool, SnapshotError> {
        Ok(false)
    }
}

/// Dot product of two equally long slices: AVX2 + FMA where the CPU has them
/// (detected once at run time), else a portable loop the compiler vectorises.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { simd::dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Eight independent accumulators break the floating-point dependency chain so
/// that the loop vectorises with the baseline instruction set.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b` must be equally long.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let chunks = n / 32;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: every load reads 8 floats at offsets below `chunks * 32 <= n`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in 0..chunks {
                let base = c * 32;
                for (k, slot) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(base + 8 * k));
                    let y = _mm256_loadu_ps(pb.add(base + 8 * k));
                    *slot = _mm256_fmadd_ps(x, y, *slot);
                }
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
            let tail: f32 = a[chunks * 32..n]
                .iter()
                .zip(&b[chunks * 32..n])
                .map(|(x, y)| x * y)
                .sum();
            lanes.iter().sum::<f32>() + tail
        }
    }
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
    use super::synthetic::clustered;
    use super::*;

    /// `data` labelled by position, the first as `first`.
    fn labelled(data: &[Vec<f32>], first: u64) -> Vec<(u64, Vec<f32>)> {
        (first..).zip(data.iter().cloned()).collect()
    }

    /// An exact and an HNSW index over the same `items`.
    fn exact_and_hnsw(dim: usize, items: &[(u64, Vec<f32>)]) -> (ExactIndex, HnswIndex) {
        let mut exact = ExactIndex::new(dim);
        exact.insert(items);
        let mut hnsw = HnswIndex::new(dim, HnswParams::default(), items.len());
        hnsw.insert(items);
        (exact, hnsw)
    }

    fn labels(hits: &[Hit]) -> Vec<u64> {
        hits.iter().map(|h| h.label).collect()
    }

    #[test]
    fn dot_matches_naive_sum() {
        for len in [0, 1, 7, 8, 31, 32, 37, 1280] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-3, "len {len}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - naive).abs() < 1e-3,
                "len {len}"
            );
        }
    }

    #[test]
    fn hnsw_agrees_with_exact_search() {
        let dim = 64;
        // Queries come from the gallery's own clusters but are not in it, as photos
        // of recorded marks are. Queries from unrelated clusters sit nearly equidistant
        // from everything, and the agreement then varies with the graph's random build
        // (recall@10 0.946 to 0.986 over 200 builds).
        let all = clustered(2050, dim, 7);
        let (data, queries) = all.split_at(2000);
        let (exact, hnsw) = exact_and_hnsw(dim, &labelled(data, 1));
        let mut found = 0;
        for q in queries {
            let truth = labels(&exact.search(q, 10, None));
            let approx = hnsw.search(q, 10, None);
            found += approx.iter().filter(|h| truth.contains(&h.label)).count();
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        assert!(recall >= 0.99, "recall@10 {recall}");
    }

    #[test]
    fn removed_and_filtered_labels_never_come_back() {
        let dim = 32;
        let data = clustered(300, dim, 3);
        let items = labelled(&data, 0);
        let mut indexes: Vec<Box<dyn VectorIndex>> = vec![
            Box::new(ExactIndex::new(dim)),
            Box::new(HnswIndex::new(dim, HnswParams::default(), 300)),
        ];
        for index in &mut indexes {
            index.insert(&items);
            // The query is vector 5 itself: before removal it is the best hit.
            assert_eq!(index.search(&data[5], 1, None)[0].label, 5);
            index.remove(5);
            let hits = index.search(&data[5], 50, Some(&|label| label % 2 == 1));
            assert!(
                hits.iter().all(|h| h.label != 5 && h.label % 2 == 1),
                "{}",
                index.kind()
            );
            assert_eq!(index.len(), 299);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn an_unfiltered_search_still_skips_removed_labels() {
        let dim = 32;
        let data = clustered(400, dim, 5);
        let (mut exact, mut hnsw) = exact_and_hnsw(dim, &labelled(&data, 0));
        // Remove one label, then the 30 nearest to the query: more than the room
        // an unfiltered search of 10 leaves for removed labels.
        let nearest = labels(&exact.search(&data[7], 30, None));
        let mut gone = Vec::new();
        for removed in [&[7u64][..], &nearest[..]] {
            for &label in removed {
                hnsw.remove(label);
                exact.remove(label);
                gone.push(label);
            }
            let truth = labels(&exact.search(&data[7], 10, None));
            let hits = hnsw.search(&data[7], 10, None);
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| !gone.contains(&h.label)), "{hits:?}");
            let found = hits.iter().filter(|h| truth.contains(&h.label)).count();
            assert!(found >= 9, "{found} of the exact 10");
        }
    }
}
