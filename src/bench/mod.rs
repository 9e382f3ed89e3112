//! The benchmark harness: load generation against a running server, and large
//! synthetic galleries for measuring the index at scale.

pub mod load;
pub mod metrics;
pub mod report;
pub mod retrieval;
