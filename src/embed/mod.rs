//! Embedding: the model contract and the runtime that executes it.
//!
//! A [`ModelSpec`] says what the network expects (input name, square size,
//! normalisation) and what it returns (a pooled feature vector); an [`Embedder`] runs
//! it on batches of preprocessed tensors and returns L2-normalised embeddings, so that
//! a dot product between two of them is their cosine similarity.
//!
//! Every embedding is tied to a [`ModelSpec::fingerprint`]: vectors made by different
//! models (or the same weights with different preprocessing) live in different spaces
//! and must never be compared. The store refuses to mix them.

pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{Array4, ArrayView4};
use ort::session::{Session, builder::GraphOptimizationLevel};
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use crate::imaging::{Framing, Preprocess};
pub use runtime::{Backend, BackendChoice};

/// The default model, compiled into the binary so that marklens runs from a single
/// file: EfficientNet-Lite0 (ImageNet-1k) with its convolutions in 8-bit integers,
/// see models/README.md.
static BUILTIN_MODEL: &[u8] = include_bytes!("../../models/lite0_lw256_int8.onnx");

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model runtime unavailable: {0}")]
    Runtime(String),
    #[error("cannot load model {name}: {reason}")]
    Model { name: String, reason: String },
    #[error("model inference failed: {0}")]
    Inference(String),
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a model is and how to feed it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Human-readable name, e.g. `efficientnet-lite0`.
    pub name: String,
    /// The ONNX file's bytes.
    bytes: std::borrow::Cow<'static, [u8]>,
    /// Name of the input tensor, shaped `[N, 3, size, size]`.
    pub input: String,
    /// Name of the output tensor, shaped `[N, dim]`.
    pub output: String,
    /// Length of an embedding; 0 in a spec not yet loaded means "as the model
    /// says" ([`Embedder::new`] fills it in).
    pub dim: usize,
    /// How images become input tensors.
    pub preprocess: Preprocess,
}

impl ModelSpec {
    /// The default: EfficientNet-Lite0 with a learned-whitening head, its
    /// backbone quantised to 8 bits (models/README.md), shown the mark found in
    /// the image; 224 px input showing 112 px of detail, `(p - 127) / 128`,
    /// 256-d output.
    pub fn builtin() -> Self {
        ModelSpec {
            name: "lite0-lw256-int8".to_owned(),
            bytes: std::borrow::Cow::Borrowed(BUILTIN_MODEL),
            input: "input".to_owned(),
            output: "features".to_owned(),
            dim: 256,
            preprocess: Preprocess {
                framing: Framing::Mark,
                size: 224,
                detail: 112,
                mean: [127.0; 3],
                std: [128.0; 3],
            },
        }
    }

    /// A model file with the built-in model's input, output names and
    /// preprocessing, e.g. the bare backbone or a retrained head; its vector size is
    /// read from the model when it is loaded.
    pub fn from_file(path: &Path) -> Result<Self, EmbedError> {
        let bytes = std::fs::read(path).map_err(|source| EmbedError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path
            .file_stem()
            .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
        Ok(ModelSpec {
            name,
            bytes: std::borrow::Cow::Owned(bytes),
            dim: 0,
            ..ModelSpec::builtin()
        })
    }

    /// Identifies the vector space: a hash of the model bytes, of every
    /// preprocessing parameter and of the keypoint algorithm stored beside the
    /// vectors. Two specs with equal fingerprints embed identically.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(&self.bytes);
        let p = &self.preprocess;
        hasher.update(format!(
            "|in={}|out={}|dim={}|framing={}|size={}|detail={}|mean={:?}|std={:?}|keypoints={}",
            self.input,
            self.output,
            self.dim,
            p.framing.tag(),
            p.size,
            p.detail,
            p.mean,
            p.std,
            crate::imaging::keypoints::VERSION
        ));
        let digest = hasher.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.name)
    }

    /// SHA-256 of the ONNX file, as published in models/README.md.
    pub fn file_sha256(&self) -> String {
        Sha256::digest(&self.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Runs a [`ModelSpec`] on a runtime and returns normalised embeddings.
pub struct Embedder {
    spec: ModelSpec,
    fingerprint: String,
    backend: Backend,
    // `Session::run` needs exclusive access. One session already uses every core
    // (intra-op threads), so callers queue here rather than oversubscribing the CPU.
    session: Mutex<Session>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.spec.name)
            .field("fingerprint", &self.fingerprint)
            .field("backend", &self.backend)
            .finish()
    }
}

impl Embedder {
    /// Loads `spec` on the runtime picked by `choice`; `threads` is ONNX Runtime's
    /// intra-op thread count (0: one per core).
    pub fn new(
        spec: ModelSpec,
        choice: &BackendChoice,
        library: Option<&Path>,
        threads: usize,
    ) -> Result<Self, EmbedError> {
        let (backend, environment) = runtime::start(choice, library)?;
        let model_err = |e: ort::Error| EmbedError::Model {
            name: spec.name.clone(),
            reason: e.to_string(),
        };
        // Both runtimes optimise the graph only when asked (tract: 10x faster).
        let mut builder = Session::builder(environment)
            .map_err(model_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| model_err(e.into()))?;
        if matches!(backend, Backend::OnnxRuntime { .. }) {
            let threads = if threads == 0 {
                std::thread::available_parallelism().map_or(1, usize::from)
            } else {
                threads
            };
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| model_err(e.into()))?;
        }
        let session = builder.commit_from_memory(&spec.bytes).map_err(model_err)?;
        let mut embedder = Embedder {
            fingerprint: String::new(),
            spec,
            backend,
            session: Mutex::new(session),
        };
        // A model file states its output size only in its graph: learn it from one
        // blank image (this also proves the model runs before any real work).
        let size = embedder.spec.preprocess.size as usize;
        let dim = embedder
            .run(Array4::<f32>::zeros((1, 3, size, size)).view())?
            .1;
        if embedder.spec.dim != 0 && embedder.spec.dim != dim {
            return Err(EmbedError::Model {
                name: embedder.spec.name.clone(),
                reason: format!("makes {dim}-d vectors, expected {}", embedder.spec.dim),
            });
        }
        embedder.spec.dim = dim;
        embedder.fingerprint = embedder.spec.fingerprint();
        tracing::debug!(model = %embedder.spec.name, fingerprint = %embedder.fingerprint,
            backend = %embedder.backend, dim, "model loaded");
        Ok(embedder)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn dim(&self) -> usize {
        self.spec.dim
    }

    /// Embeds a batch shaped `[N, 3, size, size]` and returns N unit vectors.
    pub fn embed(&self, batch: ArrayView4<'_, f32>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if batch.shape()[0] == 0 {
            return Ok(Vec::new());
        }
        let (data, dim) = self.run(batch)?;
        if dim != self.spec.dim {
            return Err(EmbedError::Inference(format!(
                "model returned {dim}-d vectors, expected {}",
                self.spec.dim
            )));
        }
        Ok(data.chunks_exact(dim).map(normalised).collect())
    }

    /// Runs the model on a non-empty batch: the raw output, row-major, and its
    /// row length.
    fn run(&self, batch: ArrayView4<'_, f32>) -> Result<(Vec<f32>, usize), EmbedError> {
        let n = batch.shape()[0];
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(batch.view())
            .map_err(|e| EmbedError::Inference(e.to_string()))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| EmbedError::Inference("model session poisoned by a panic".into()))?;
        let outputs = session
            .run(ort::inputs![self.spec.input.as_str() => input])
            .map_err(|e| EmbedError::Inference(e.to_string()))?;
        let (shape, data) = outputs[self.spec.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| EmbedError::Inference(e.to_string()))?;
        if shape.len() != 2 || shape[0] as usize != n || shape[1] <= 0 {
            return Err(EmbedError::Inference(format!(
                "model returned shape {shape:?}, expected [{n}, dim]"
            )));
        }
        Ok((data.to_vec(), shape[1] as usize))
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}
