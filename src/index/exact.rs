//! Exact (brute-force) search: the reference, and the fastest choice for small
//! galleries, where a linear scan beats graph traversal and needs no build time.

use std::collections::HashMap;

use super::{Hit, VectorIndex, dot, top_k};

/// Every vector in one contiguous matrix, scanned in full for each query.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    dim: usize,
    labels: Vec<u64>,
    data: Vec<f32>,
    position: HashMap<u64, usize>,
}

impl ExactIndex {
    pub fn new(dim: usize) -> Self {
        ExactIndex {
            dim,
            labels: Vec::new(),
            data: Vec::new(),
            position: HashMap::new(),
        }
    }

    /// The stored vectors with their labels, e.g. to build a graph index from them.
    pub fn items(&self) -> impl Iterator<Item = (u64, &[f32])> {
        self.labels
            .iter()
            .copied()
            .zip(self.data.chunks_exact(self.dim))
    }
}

impl VectorIndex for ExactIndex {
    fn insert(&mut self, items: &[(u64, Vec<f32>)]) {
        for (label, vector) in items {
            assert_eq!(vector.len(), self.dim, "vector dimension mismatch");
            if let Some(&at) = self.position.get(label) {
                self.data[at * self.dim..(at + 1) * self.dim].copy_from_slice(vector);
                continue;
            }
            self.position.insert(*label, self.labels.len());
            self.labels.push(*label);
            self.data.extend_from_slice(vector);
        }
    }

    fn remove(&mut self, label: u64) {
        let Some(at) = self.position.remove(&label) else {
            return;
        };
        let last = self.labels.len() - 1;
        self.labels.swap_remove(at);
        if at != last {
            let (head, tail) = self.data.split_at_mut(last * self.dim);
            head[at * self.dim..(at + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
            self.position.insert(self.labels[at], at);
        }
        self.data.truncate(last * self.dim);
    }

    fn search(&self, query: &[f32], k: usize, accept: Option<&dyn Fn(u64) -> bool>) -> Vec<Hit> {
        let hits = self
            .labels
            .iter()
            .zip(self.data.chunks_exact(self.dim))
            .filter(|(label, _)| accept.is_none_or(|accept| accept(**label)))
            .map(|(&label, v)| Hit {
                label,
                score: dot(query, v),
            })
            .collect();
        top_k(hits, k)
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn tombstones(&self) -> usize {
        0
    }

    fn kind(&self) -> &'static str {
        "exact"
    }
}
