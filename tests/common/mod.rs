//! Shared helpers for the integration tests: the committed fixtures and engines
//! opened on temporary data directories with the real model.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use marklens::{Engine, EngineConfig, EnrollRequest, MarkFields};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The gallery's mark ids and image files, sorted by id.
pub fn gallery() -> Vec<(String, PathBuf)> {
    let dir = fixtures().join("gallery");
    let mut marks: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("fixtures/gallery exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    marks.sort();
    marks
}

/// Every `step`-th gallery mark: a spread-out subset for faster tests.
pub fn gallery_subset(step: usize) -> Vec<(String, PathBuf)> {
    gallery().into_iter().step_by(step).collect()
}

/// Another model with the built-in contract, written into `dir`: the backbone
/// with one weight byte changed. A store it enrols into is stale to the
/// built-in model.
pub fn another_model(dir: &Path) -> PathBuf {
    let mut bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet_lite0.onnx"))
            .unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let path = dir.join("other.onnx");
    std::fs::write(&path, &bytes).unwrap();
    path
}

pub fn open(dir: &Path) -> Engine {
    Engine::open(EngineConfig::new(dir)).expect("engine opens")
}

pub fn requests(marks: &[(String, PathBuf)]) -> Vec<EnrollRequest> {
    marks
        .iter()
        .map(|(id, path)| EnrollRequest {
            id: id.clone(),
            fields: MarkFields {
                name: Some(format!("{id} name")),
                ..MarkFields::default()
            },
            image: std::fs::read(path).unwrap(),
            create_only: false,
        })
        .collect()
}

/// Enrols `marks` and asserts every one succeeded.
pub fn enroll_all(engine: &Engine, marks: &[(String, PathBuf)]) {
    for (result, (id, _)) in engine.enroll_many(requests(marks)).into_iter().zip(marks) {
        result.unwrap_or_else(|e| panic!("enrolling {id}: {e}"));
    }
}
