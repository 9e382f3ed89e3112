//! marklens: find the recorded trademarks that a photo of a mark matches.
//!
//! Data flows one way through the modules, each using only those listed before it:
//!
//! - [`seeded`]: the seeded generator the deterministic steps share
//! - [`imaging`]: bytes -> decoded image -> upright views -> model input tensor
//!   and keypoints
//! - [`embed`]: tensor -> unit embedding vector (ONNX Runtime or tract)
//! - [`index`]: vector -> nearest labelled vectors (exact or HNSW)
//! - [`store`]: the recorded marks in SQLite, the source of truth
//! - [`verify`]: keypoints of photo and candidates -> inliers and support -> re-ranked candidates
//! - [`decision`]: calibrated thresholds turning the best match's score and inlier margin into match / possible / no match
//! - [`engine`]: the front door that ties them together: enrol, remove, search
//! - [`report`]: screening reports (JSON, CSV, HTML) over search results
//! - [`service`]: the gRPC API (server and client) over [`engine`]
//! - [`bench`]: the benchmark harness (load generation)
//!
//! The `marklens` binary (CLI and `serve`) is a thin face over [`engine`] and
//! [`service`].

pub mod bench;
pub mod decision;
pub mod embed;
pub mod engine;
pub mod imaging;
pub mod index;
pub mod report;
pub mod seeded;
pub mod service;
pub mod store;
pub mod verify;

pub use engine::{
    Engine, EngineConfig, EngineError, EngineInfo, EnrollOutcome, EnrollRequest, IndexChoice,
    Match, Region, SearchFilter, SearchOptions, SearchResult, StageTimings,
};
pub use store::{ListQuery, MarkFields, MarkRecord, MarkStatus};
