//! Synthetic embeddings for tests and benchmarks of the index at scales the
//! bundled gallery cannot reach.

/// `n` deterministic unit vectors of `dim` dimensions, drawn around 16 random
/// centres with noise, so that they cluster the way embeddings of similar marks
/// do. The same `seed` gives the same vectors.
pub fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
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
            let centre = &centres[i % centres.len()];
            let v: Vec<f32> = centre.iter().map(|x| x + 0.3 * next()).collect();
            crate::embed::normalised(&v)
        })
        .collect()
}
