//! The gRPC face of the engine: `marklens.v1` (Registry, Matcher, Info), health and
//! reflection, served by tonic.
//!
//! Async boundary: handlers are async and never do CPU work themselves. Decoding,
//! embedding and searching run on a [`pool::WorkPool`]: a bounded set of blocking
//! workers behind an admission queue, so that a burst is shed at once with
//! RESOURCE_EXHAUSTED instead of piling up, and work that cannot start before the
//! client's deadline is dropped with DEADLINE_EXCEEDED.

pub mod client;
pub mod convert;
mod deadline;
pub mod pool;
mod server;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;

pub use server::{ServeError, ServiceState, serve};

/// The generated protobuf types and gRPC stubs of `marklens.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("marklens.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("marklens_descriptor");
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// Requests doing CPU work at once.
    pub workers: usize,
    /// Requests allowed to wait for a worker; beyond that: RESOURCE_EXHAUSTED.
    pub queue: usize,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Deadline applied when the client sends none.
    pub default_deadline: Option<Duration>,
}

impl ServeConfig {
    pub fn new(addr: SocketAddr) -> Self {
        ServeConfig {
            addr,
            workers: std::thread::available_parallelism().map_or(2, usize::from),
            queue: 64,
            max_message_bytes: 33 << 20,
            default_deadline: Some(Duration::from_secs(30)),
        }
    }
}

/// Shared state handed to every handler.
pub(crate) type Shared = Arc<ServiceState>;

/// Keeps `engine` reachable from the async side.
pub(crate) fn shared(engine: Arc<Engine>, config: &ServeConfig) -> Shared {
    Arc::new(ServiceState::new(engine, config))
}
