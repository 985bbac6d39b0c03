//! `berth-scheduler-e2e-bench`: end-to-end scheduling throughput through a
//! real `berth-apiserver` (SQLite).
//!
//! ```text
//! berth-scheduler-e2e-bench [--nodes 1000] [--pods 2000] [--quick]
//! ```
//!
//! Starts the API server (`$BERTH_APISERVER_BIN`, else `berth-apiserver` next
//! to this binary), creates the nodes and the pending pods, then runs the
//! scheduler until every pod is bound (watched through the API) and prints
//! `{"pods", "nodes", "seconds", "pods_per_sec", ...}` as one JSON line.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_scheduler::harness::{Apiserver, apiserver_binary};
use berth_scheduler::{RunConfig, run};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "berth-scheduler-e2e-bench")]
struct Cli {
    /// Nodes to create.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods to schedule.
    #[arg(long, default_value_t = 2000)]
    pods: usize,
    /// 100 nodes, 300 pods.
    #[arg(long)]
    quick: bool,
    /// Binding cycles in flight at once.
    #[arg(long, default_value_t = 16)]
    parallel_binds: usize,
    /// Don't post Scheduled events.
    #[arg(long)]
    no_events: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn node(i: usize) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{i:05}"),
                     "labels": {"kubernetes.io/hostname": format!("node-{i:05}"),
                                "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))?)
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:06}"), "namespace": "default",
                     "labels": {"app": format!("app-{}", i % 10)}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    }))?)
}

async fn create_all<K>(api: &Api<K>, objects: Vec<K>) -> anyhow::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .context("creating objects")?;
    Ok(())
}

async fn wait_bound(client: Client, want: usize) -> anyhow::Result<()> {
    let mut stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).boxed();
    let mut bound = HashSet::new();
    while let Some(ev) = stream.try_next().await? {
        let pods: Vec<Pod> = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
            _ => continue,
        };
        for p in pods {
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                bound.insert(p.metadata.name.unwrap_or_default());
            }
        }
        if bound.len() >= want {
            return Ok(());
        }
    }
    bail!("pod watch ended")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.quick {
        cli.nodes = 100;
        cli.pods = 300;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(bin) = apiserver_binary() else {
        bail!(
            "berth-apiserver not found: run `cargo build -p berth-apiserver` or set BERTH_APISERVER_BIN"
        );
    };
    let (server, client) = Apiserver::start(&bin).await?;

    let setup = Instant::now();
    let nodes: Vec<Node> = (0..cli.nodes).map(node).collect::<anyhow::Result<_>>()?;
    create_all(&Api::<Node>::all(client.clone()), nodes).await?;
    let pods: Vec<Pod> = (0..cli.pods).map(pod).collect::<anyhow::Result<_>>()?;
    create_all(&Api::<Pod>::namespaced(client.clone(), "default"), pods).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();

    let watch = tokio::spawn(wait_bound(client.clone(), cli.pods));
    let cancel = CancellationToken::new();
    let config = RunConfig {
        max_in_flight_binds: cli.parallel_binds,
        post_events: !cli.no_events,
        ..RunConfig::default()
    };
    let start = Instant::now();
    // As deployed: the scheduler's own identity, authorized by RBAC.
    let sched_client = server.scheduler_client().await?;
    let scheduler = tokio::spawn(run(sched_client, config, cancel.clone()));
    let waited = tokio::time::timeout(Duration::from_secs(cli.timeout), watch).await;
    let seconds = start.elapsed().as_secs_f64();
    cancel.cancel();
    scheduler.await??;
    match waited {
        Ok(r) => r??,
        Err(_) => bail!(
            "not all pods bound within {}s; apiserver log:\n{}",
            cli.timeout,
            server.log()
        ),
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "scheduler-e2e",
            "storage": "sqlite",
            "pods": cli.pods,
            "nodes": cli.nodes,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "pods_per_sec": (cli.pods as f64 / seconds * 10.0).round() / 10.0,
            "events": !cli.no_events,
            "parallel_binds": cli.parallel_binds,
            "setup_seconds": (setup_seconds * 1000.0).round() / 1000.0,
        })
    );
    drop(server);
    Ok(())
}
