//! Criterion benches of the search pipeline's stages with the real model:
//! decode + preprocess, embedding at batch 1 and 8, and index search over
//! synthetic clustered vectors at 10k and 100k.
//!
//! Run: `cargo bench --bench pipeline` (ONNX Runtime from models/setup_runtime.sh;
//! MARKLENS_BACKEND=tract to measure tract instead).

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use marklens::embed::{BackendChoice, Embedder, ModelSpec, normalised};
use marklens::imaging::{self, Limits};
use marklens::index::{ExactIndex, HnswIndex, HnswParams, VectorIndex};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(path),
    )
    .expect("fixture exists")
}

fn backend() -> BackendChoice {
    std::env::var("MARKLENS_BACKEND")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or_default()
}

fn decode_and_preprocess(c: &mut Criterion) {
    let spec = ModelSpec::builtin();
    let mut group = c.benchmark_group("decode+preprocess");
    for (name, file) in [
        ("gallery png 256px", "gallery/si-adidas.png"),
        ("photo jpeg 384px", "queries/q002_medium.jpg"),
    ] {
        let bytes = fixture(file);
        group.bench_function(name, |b| {
            b.iter(|| {
                let decoded = imaging::decode(black_box(&bytes), &Limits::default()).unwrap();
                black_box(spec.preprocess.tensor(&[&decoded.image]))
            })
        });
    }
    group.finish();
}

fn embed(c: &mut Criterion) {
    let embedder = Embedder::new(ModelSpec::builtin(), &backend(), None, 0).expect("model loads");
    let decoded = imaging::decode(&fixture("queries/q002_medium.jpg"), &Limits::default()).unwrap();
    let mut group = c.benchmark_group(format!("embed ({})", embedder.backend().name()));
    for batch in [1usize, 8] {
        let images: Vec<_> = (0..batch).map(|_| &decoded.image).collect();
        let tensor = embedder.spec().preprocess.tensor(&images);
        group.bench_with_input(BenchmarkId::new("batch", batch), &tensor, |b, t| {
            b.iter(|| black_box(embedder.embed(t.view()).unwrap()))
        });
    }
    group.finish();
}

/// Unit vectors around 64 random centres, like embeddings of a gallery.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..64)
        .map(|_| (0..dim).map(|_| next()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            normalised(&c.iter().map(|x| x + 0.4 * next()).collect::<Vec<_>>())
        })
        .collect()
}

fn index_search(c: &mut Criterion) {
    let dim = 1280;
    let mut group = c.benchmark_group("index search k=10");
    group.sample_size(20);
    for n in [10_000usize, 100_000] {
        let items: Vec<(u64, Vec<f32>)> = clustered(n, dim, 1)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect();
        let queries = clustered(64, dim, 2);
        let mut exact = ExactIndex::new(dim);
        exact.insert(&items);
        let mut q = queries.iter().cycle();
        group.bench_function(BenchmarkId::new("exact", n), |b| {
            b.iter(|| black_box(exact.search(q.next().unwrap(), 10, &|_| true)))
        });
        drop(exact);
        if std::env::var_os("MARKLENS_BENCH_SKIP_HNSW").is_some() {
            continue;
        }
        let mut hnsw = HnswIndex::new(dim, HnswParams::default(), n);
        hnsw.insert(&items);
        group.bench_function(BenchmarkId::new("hnsw ef=64", n), |b| {
            b.iter(|| black_box(hnsw.search(q.next().unwrap(), 10, &|_| true)))
        });
    }
    group.finish();
}

criterion_group!(benches, decode_and_preprocess, embed, index_search);
criterion_main!(benches);
