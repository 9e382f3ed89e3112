//! `marklens serve`: the gRPC service, plus the runtime helpers the CLI's client
//! mode shares with it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use marklens::service::{self, ServeConfig};

use super::Global;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    pub addr: SocketAddr,
    /// Requests doing CPU work at once (default: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Requests allowed to wait for a worker; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// Largest gRPC message accepted (default: the image limit plus 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Deadline for requests that carry none, in milliseconds (0: none).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub default_deadline_ms: u64,
    /// Enrol the bundled demo gallery before serving.
    #[arg(long)]
    pub demo: bool,
}

impl ServeArgs {
    pub fn config(&self, global: &Global) -> ServeConfig {
        let mut config = ServeConfig::new(self.addr);
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        config.queue = self.queue;
        config.max_message_bytes = self
            .max_message_bytes
            .unwrap_or(global.max_image_bytes + (1 << 20));
        config.default_deadline =
            (self.default_deadline_ms > 0).then(|| Duration::from_millis(self.default_deadline_ms));
        config
    }
}

/// A multi-threaded tokio runtime for the server or the client.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Serves `engine` until Ctrl-C or SIGTERM.
pub fn serve(engine: marklens::Engine, config: ServeConfig) -> anyhow::Result<ExitCode> {
    let info = engine.info()?;
    let addr = config.addr;
    runtime()?.block_on(async move {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(service::serve(
            Arc::new(engine),
            config,
            shutdown_signal(),
            Some(ready_tx),
        ));
        if let Ok(bound) = ready_rx.await {
            println!(
                "serving {} marks ({} on {}) at http://{bound}; Ctrl-C to stop",
                info.marks, info.model, info.backend
            );
        }
        server
            .await
            .map_err(|e| anyhow::anyhow!("server task failed: {e}"))?
            .map_err(|e| anyhow::anyhow!("{e} ({addr})"))
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let engine = global.open_warm()?;
    if args.demo {
        super::demo::enroll_demo_gallery(&engine, &super::demo::fixtures_dir(), global)?;
    }
    serve(engine, args.config(global))
}
