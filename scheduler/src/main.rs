//! `berth-scheduler`: schedules pending pods against a Kubernetes API server.
//!
//! ```text
//! berth-scheduler --kubeconfig FILE [--scheduler-name default-scheduler]
//! ```

use std::path::PathBuf;

use berth_scheduler::{RunConfig, client_from_kubeconfig, run};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "berth-scheduler",
    about = "berth's scheduler: binds pending pods to nodes"
)]
struct Cli {
    /// Kubeconfig with the API server and credentials.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Pods whose spec.schedulerName is this are scheduled.
    #[arg(long, default_value = berth_scheduler::DEFAULT_SCHEDULER_NAME)]
    scheduler_name: String,
    /// percentageOfNodesToScore (0: kube-scheduler's adaptive default).
    #[arg(long, default_value_t = 0)]
    percentage_of_nodes_to_score: u32,
    /// Binding cycles in flight at once.
    #[arg(long, default_value_t = 16)]
    parallel_binds: usize,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let client = client_from_kubeconfig(&cli.kubeconfig).await?;
    let mut config = RunConfig {
        scheduler_name: cli.scheduler_name,
        max_in_flight_binds: cli.parallel_binds,
        ..RunConfig::default()
    };
    config.scheduler.percentage_of_nodes_to_score = cli.percentage_of_nodes_to_score;
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        signals.cancel();
    });
    run(client, config, cancel).await
}
