//! Choosing and starting the inference runtime, once per process.
//!
//! `ort` talks to ONNX Runtime through a single process-wide API table, so the choice
//! between the native ONNX Runtime library and the pure-Rust tract backend is made
//! exactly once, by the first [`start`] call, and every later call sees the same
//! answer. ONNX Runtime is loaded from a shared library at run time (never linked or
//! downloaded at build time); when no library can be found, tract runs instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::EmbedError;

/// File name of the ONNX Runtime shared library that the setup script installs.
pub const LIBRARY_FILE: &str = "libonnxruntime.so";
/// Folder, relative to the project root or the working directory, that the setup
/// script fills with [`LIBRARY_FILE`].
pub const LOCAL_DIR: &str = ".ort";

/// Which runtime executes the model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Backend {
    /// Native ONNX Runtime, loaded from this shared library.
    OnnxRuntime { library: PathBuf },
    /// The pure-Rust tract engine (slower, always available).
    Tract,
}

impl Backend {
    /// A short name for logs and replies: `onnxruntime` or `tract`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::OnnxRuntime { .. } => "onnxruntime",
            Backend::Tract => "tract",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::OnnxRuntime { library } => write!(f, "onnxruntime ({})", library.display()),
            Backend::Tract => f.write_str("tract"),
        }
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// ONNX Runtime if a library is found (at `library`, when given), else tract.
    #[default]
    Auto,
    /// ONNX Runtime or an error; `library` overrides discovery.
    OnnxRuntime,
    /// tract, even when ONNX Runtime is available.
    Tract,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "onnxruntime" | "ort" => Ok(BackendChoice::OnnxRuntime),
            "tract" => Ok(BackendChoice::Tract),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, onnxruntime or tract)"
            )),
        }
    }
}

struct Started {
    backend: Backend,
    // Sessions are built from the environment; it lives as long as the process.
    environment: ort::environment::Environment,
}

static STARTED: OnceLock<Result<Started, String>> = OnceLock::new();

/// Starts the runtime on first call and returns the backend in use.
///
/// `library` is an explicit path to `libonnxruntime.so` (an error if it is missing);
/// without it the library is looked for in `$ORT_DYLIB_PATH`, `./.ort/`, beside the
/// executable, and in a `.ort/` folder of any ancestor of the executable (which
/// covers `target/release/` inside a checkout). Later calls return the first
/// call's backend, whatever they ask for; asking for a different one is an error.
pub fn start(
    choice: &BackendChoice,
    library: Option<&Path>,
) -> Result<(Backend, &'static ort::environment::Environment), EmbedError> {
    let started = STARTED.get_or_init(|| start_once(choice, library).map_err(|e| e.to_string()));
    let started = started
        .as_ref()
        .map_err(|reason| EmbedError::Runtime(reason.clone()))?;
    let compatible = match choice {
        BackendChoice::Auto => true,
        BackendChoice::OnnxRuntime => matches!(started.backend, Backend::OnnxRuntime { .. }),
        BackendChoice::Tract => started.backend == Backend::Tract,
    };
    if !compatible {
        return Err(EmbedError::Runtime(format!(
            "the {} backend is already running in this process",
            started.backend.name()
        )));
    }
    Ok((started.backend.clone(), &started.environment))
}

fn start_once(choice: &BackendChoice, library: Option<&Path>) -> Result<Started, EmbedError> {
    let found = match choice {
        BackendChoice::Tract => None,
        _ => library.map(Path::to_path_buf).or_else(find_library),
    };
    match (choice, found) {
        (BackendChoice::Tract, _) => start_tract(),
        (BackendChoice::OnnxRuntime, None) => Err(EmbedError::Runtime(format!(
            "ONNX Runtime requested but no {LIBRARY_FILE} was found \
             (set MARKLENS_ORT_LIB or run models/setup_runtime.sh)"
        ))),
        (BackendChoice::OnnxRuntime, Some(path)) => start_onnxruntime(&path),
        (BackendChoice::Auto, Some(path)) => start_onnxruntime(&path),
        (BackendChoice::Auto, None) => {
            tracing::warn!(
                "ONNX Runtime library ({LIBRARY_FILE}) not found; running the model on the \
                 pure-Rust tract backend (about 3x slower). Run models/setup_runtime.sh or set \
                 MARKLENS_ORT_LIB to use ONNX Runtime."
            );
            start_tract()
        }
    }
}

fn start_onnxruntime(path: &Path) -> Result<Started, EmbedError> {
    if !path.is_file() {
        return Err(EmbedError::Runtime(format!(
            "ONNX Runtime library {} does not exist",
            path.display()
        )));
    }
    let builder = ort::init_from(path).map_err(|e| {
        EmbedError::Runtime(format!(
            "cannot load ONNX Runtime from {}: {e}",
            path.display()
        ))
    })?;
    let environment = builder
        .with_name("marklens")
        .with_telemetry(false)
        .build()
        .map_err(|e| EmbedError::Runtime(format!("cannot start ONNX Runtime: {e}")))?;
    let library = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    tracing::info!(library = %library.display(), "model runtime: ONNX Runtime");
    Ok(Started {
        backend: Backend::OnnxRuntime { library },
        environment,
    })
}

fn start_tract() -> Result<Started, EmbedError> {
    ort::set_api(ort_tract::api());
    let environment = ort::init()
        .with_name("marklens")
        .build()
        .map_err(|e| EmbedError::Runtime(format!("cannot start tract: {e}")))?;
    tracing::info!("model runtime: tract (pure Rust)");
    Ok(Started {
        backend: Backend::Tract,
        environment,
    })
}

/// Looks for the ONNX Runtime library in the documented places, in order.
fn find_library() -> Option<PathBuf> {
    let from_env = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let local = std::env::current_dir()
        .ok()
        .map(|dir| dir.join(LOCAL_DIR).join(LIBRARY_FILE));
    let beside_exe = std::env::current_exe().ok().into_iter().flat_map(|exe| {
        let dirs: Vec<PathBuf> = exe.ancestors().skip(1).map(Path::to_path_buf).collect();
        let mut candidates = Vec::new();
        if let Some(first) = dirs.first() {
            candidates.push(first.join(LIBRARY_FILE));
        }
        candidates.extend(dirs.iter().map(|d| d.join(LOCAL_DIR).join(LIBRARY_FILE)));
        candidates
    });
    from_env
        .into_iter()
        .chain(local)
        .chain(beside_exe)
        .find(|candidate| candidate.is_file())
}
