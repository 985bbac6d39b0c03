//! A tiny gRPC server for probe tests: `grpc.health.v1.Health` on a port,
//! SERVING for the server as a whole (`""`) and for each `--service`, until a
//! file (`--unhealthy-file`, default `/tmp/unhealthy`) exists; then every one
//! of them answers NOT_SERVING, and SERVING again once the file is gone. A
//! test flips it from inside the container with `touch /tmp/unhealthy`.
//!
//! It runs as the main process of the `localhost/berth/grpc-health:1` test
//! image (see `integration/images/build.sh --grpc-health`), usually as PID 1
//! of its PID namespace, where signals without a handler are ignored: SIGTERM
//! and SIGINT are handled, so stopping the container does not have to wait
//! for SIGKILL.
//!
//! Usage: `berth-grpc-health [--port 9000] [--service NAME]... [--unhealthy-file PATH]`

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often the unhealthy file is looked for.
const CHECK_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Parser)]
#[command(
    name = "berth-grpc-health",
    about = "gRPC health server for berth's probe tests"
)]
struct Args {
    /// The TCP port to serve on (all IPv4 addresses).
    #[arg(long, env = "BERTH_GRPC_HEALTH_PORT", default_value_t = 9000)]
    port: u16,
    /// A service name reported besides the server as a whole (""); repeatable.
    #[arg(long = "service", default_value = "berth.test.Health")]
    services: Vec<String>,
    /// While this file exists, every service answers NOT_SERVING.
    #[arg(long, default_value = "/tmp/unhealthy")]
    unhealthy_file: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Container logs: plain text.
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let (reporter, service) = tonic_health::server::health_reporter();
    let mut names = vec![String::new()];
    names.extend(args.services.iter().cloned());
    set_all(&reporter, &names, ServingStatus::Serving).await;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, services = ?names, unhealthy_file = %args.unhealthy_file.display(), "serving grpc.health.v1");

    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
    };
    tokio::spawn(watch_file(reporter, names, args.unhealthy_file));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("serving gRPC")?;
    Ok(())
}

/// Follow the unhealthy file: NOT_SERVING while it exists, SERVING otherwise.
async fn watch_file(reporter: HealthReporter, names: Vec<String>, file: PathBuf) {
    let mut serving = true;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let healthy = !tokio::fs::try_exists(&file).await.unwrap_or(false);
        if healthy != serving {
            serving = healthy;
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(file = %file.display(), status = ?status, "health changed");
            set_all(&reporter, &names, status).await;
        }
    }
}

async fn set_all(reporter: &HealthReporter, names: &[String], status: ServingStatus) {
    for name in names {
        reporter.set_service_status(name.as_str(), status).await;
    }
}
