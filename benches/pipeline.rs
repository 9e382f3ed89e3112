//! Criterion benches of the search pipeline's stages with the real model:
//! decode + preprocess, embedding at batch 1 and 8, a whole library search at
//! the demo gallery's size, and index search over synthetic clustered vectors at
//! 10k and 100k of 256-d (the model's size), and 1M with MARKLENS_BENCH_1M=1 (set
//! MARKLENS_BENCH_SKIP_HNSW=1 to skip the slow graph builds).
//!
//! Run: `cargo bench --bench pipeline` (ONNX Runtime from models/setup_runtime.sh;
//! MARKLENS_BACKEND=tract to measure tract instead).

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use marklens::embed::{BackendChoice, Embedder, ModelSpec};
use marklens::imaging::{self, Limits};
use marklens::index::synthetic::clustered;
use marklens::index::{ExactIndex, HnswIndex, HnswParams, VectorIndex};
use marklens::seeded::SplitMix;
use marklens::{Engine, EngineConfig, EnrollRequest, MarkFields, SearchOptions};

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

/// `file` enlarged to `width` x `height` and encoded again as JPEG at quality 90:
/// a phone's photo in size (the fixtures are kept small). With `noise`, each
/// channel gets seeded noise of up to that many levels, the sensor grain that
/// makes a real photo's JPEG larger and slower to decode than a smooth one.
fn enlarged_jpeg(file: &str, width: u32, height: u32, noise: u8) -> Vec<u8> {
    let image = image::load_from_memory(&fixture(file)).expect("fixture decodes");
    let mut large = image
        .resize_exact(width, height, image::imageops::FilterType::Triangle)
        .to_rgb8();
    if noise > 0 {
        let mut rng = SplitMix::new(0x0067_7261_696e);
        let span = 2 * usize::from(noise) + 1;
        for c in large.iter_mut() {
            let n = rng.below(span) as i32 - i32::from(noise);
            *c = (i32::from(*c) + n).clamp(0, 255) as u8;
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&large)
        .expect("encodes");
    out
}

fn decode_and_preprocess(c: &mut Criterion) {
    let spec = ModelSpec::builtin();
    let mut group = c.benchmark_group("decode+preprocess");
    for (name, bytes) in [
        ("gallery png 256px", fixture("gallery/si-adidas.png")),
        ("photo jpeg 384px", fixture("queries/q002_medium.jpg")),
        (
            "photo jpeg 384px, table showing",
            fixture("queries/q015_easy.jpg"),
        ),
        (
            "photo jpeg 3072px (9 MP)",
            enlarged_jpeg("queries/q002_medium.jpg", 3072, 3072, 0),
        ),
        (
            "photo jpeg 4000x3000 (12 MP, grain)",
            enlarged_jpeg("queries/q002_medium.jpg", 4000, 3000, 8),
        ),
        (
            // The same photo as a client would best send it (proto: SearchRequest.image).
            "photo jpeg 1024x768 (grain)",
            enlarged_jpeg("queries/q002_medium.jpg", 1024, 768, 8),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let decoded = imaging::decode(black_box(&bytes), &Limits::default()).unwrap();
                // The whole path a request takes: find the mark, views, tensor.
                black_box(
                    spec.preprocess
                        .input(&decoded.image, SearchOptions::default().knockouts),
                )
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

fn index_search(c: &mut Criterion) {
    let mut group = c.benchmark_group("index search k=10");
    group.sample_size(20);
    // 256-d, as the model's head gives; the 1M case (a long graph build) is opt-in.
    let mut scales = vec![(10_000usize, 256usize), (100_000, 256)];
    if std::env::var_os("MARKLENS_BENCH_1M").is_some() {
        scales.push((1_000_000, 256));
    }
    for (n, dim) in scales {
        let items: Vec<(u64, Vec<f32>)> = clustered(n, dim, 1)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect();
        let queries = clustered(64, dim, 2);
        let mut exact = ExactIndex::new(dim);
        exact.insert(&items);
        let mut q = queries.iter().cycle();
        group.bench_function(BenchmarkId::new(format!("exact {dim}-d"), n), |b| {
            b.iter(|| black_box(exact.search(q.next().unwrap(), 10, None)))
        });
        drop(exact);
        if std::env::var_os("MARKLENS_BENCH_SKIP_HNSW").is_some() {
            continue;
        }
        let mut hnsw = HnswIndex::new(dim, HnswParams::default(), n);
        hnsw.insert(&items);
        group.bench_function(BenchmarkId::new(format!("hnsw ef=64 {dim}-d"), n), |b| {
            b.iter(|| black_box(hnsw.search(q.next().unwrap(), 10, None)))
        });
    }
    group.finish();
}

/// A whole library search (decode, preprocess, embed, rank) against the demo
/// gallery of 300 real marks, the way `marklens search` runs it.
fn engine_search(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        backend: backend(),
        ..EngineConfig::new(dir.path())
    })
    .unwrap();
    let gallery = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gallery");
    let requests: Vec<EnrollRequest> = std::fs::read_dir(&gallery)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| EnrollRequest {
            id: path.file_stem().unwrap().to_string_lossy().into_owned(),
            fields: MarkFields::default(),
            image: std::fs::read(&path).unwrap(),
            create_only: false,
        })
        .collect();
    let count = requests.len();
    for result in engine.enroll_many(requests) {
        result.unwrap();
    }
    let photo = fixture("queries/q002_medium.jpg");
    let options = SearchOptions::default();
    c.bench_function(&format!("search, {count} marks, photo 384px"), |b| {
        b.iter(|| black_box(engine.search(&photo, &options).unwrap()))
    });
}

criterion_group!(
    benches,
    decode_and_preprocess,
    embed,
    engine_search,
    index_search
);
criterion_main!(benches);
