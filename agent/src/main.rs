//! `berth-agent`: the node agent binary.

use anyhow::Context;
use berth_agent::config::{Config, Flags, LogFormat};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The blocking pool's bound: its work (file system, cgroups, mounts) is
/// short, and every idle thread there is kept alive by the periodic work
/// that wakes one now and then, so the pool would stay at its high-water
/// mark (tokio's default bound is 512).
const MAX_BLOCKING_THREADS: usize = 8;

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config = Config::load(flags)?;
    init_logging(config.log_format);
    tracing::info!(
        node = %config.node_name,
        runtime = %config.container_runtime_endpoint,
        manifests = %config.pod_manifest_path.display(),
        "berth-agent starting"
    );
    // Two worker threads are plenty for a node agent and keep memory small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        berth_agent::agent::run(config, cancel).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers the agent still runs; only kill stops it.
            std::future::pending::<()>().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
