//! The agent's side of a control plane (`--kubeconfig`): what the kubelet does
//! against the API server, next to the static pods from the manifest directory.
//!
//! - [`node`]: register the `Node` and keep its status (capacity, conditions,
//!   addresses, nodeInfo) current: compute, compare, patch on change and at
//!   least every [`node::REPORT_FREQUENCY`].
//! - [`lease`]: renew `kube-node-lease/<node>` every [`lease::RENEW_INTERVAL`].
//! - [`pods`]: watch the pods bound to this node and feed them into
//!   [`PodConfig`] as the [`API_SOURCE`]; patch their status from the runtime;
//!   finish graceful deletions once nothing of a pod is left in the runtime.
//!
//! Losing the API server never stops running pods: the api source keeps its
//! last snapshot while the watch reconnects, and every call is retried on its
//! next period. `/healthz` stays about the runtime.

pub mod lease;
pub mod node;
pub mod pods;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pleg::RuntimeCache;
use crate::source::PodConfig;
use crate::status::TransientStore;

/// The name of the API server's source in [`PodConfig`].
pub use crate::source::API_SOURCE;

/// The kubelet version the node reports.
pub const KUBELET_VERSION: &str = "v1.33.0-berth";

/// Build a client from a kubeconfig file (its current context), with the
/// server URL it talks to (for logs: an unreachable server is named, not
/// just "client error (Connect)"). Nothing is contacted yet, so an
/// unreachable API server is not an error here.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<(kube::Client, String)> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("--kubeconfig: cannot read {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("--kubeconfig: {}", path.display()))?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .with_context(|| format!("--kubeconfig: {}", path.display()))?;
    Ok((client, server))
}

/// The CA certificates (DER) of the kubeconfig's cluster
/// (`certificate-authority-data` or `certificate-authority`), if it names any:
/// the default client CA of the authenticated server, as the API server's
/// kubelet client certificate is signed by it.
pub async fn kubeconfig_ca(path: &Path) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("--kubeconfig: cannot read {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("--kubeconfig: {}", path.display()))?;
    Ok(config.root_cert.filter(|certs| !certs.is_empty()))
}

/// What the cluster tasks share with the rest of the agent.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    /// The API server's URL, as the kubeconfig names it (for logs).
    pub server: String,
    pub node_name: String,
    pub node_ip: String,
    /// Measured for `ephemeral-storage`.
    pub root_dir: PathBuf,
    /// `status.daemonEndpoints.kubeletEndpoint.port`: the authenticated
    /// server's port when it runs, else the status server's.
    pub status_port: u16,
    pub pod_config: Arc<PodConfig>,
    pub cache: Arc<RuntimeCache>,
    pub transient: Arc<TransientStore>,
    /// Capacity and allocatable (reported), labels and taints (kept from the Node).
    pub node: Arc<crate::admission::NodeState>,
    /// The eviction manager's pressure conditions.
    pub pressure: crate::eviction::SharedPressure,
    /// The host checks' reasons, beside the runtime's, for the Ready condition.
    pub host: Arc<crate::hostcheck::HostHealth>,
    pub cancel: CancellationToken,
}

/// Start the node, lease and pod tasks; they end when `ctx.cancel` fires.
pub fn spawn(ctx: Context) -> JoinHandle<()> {
    tokio::spawn(async move {
        let node = tokio::spawn(node::run(ctx.clone()));
        let lease = tokio::spawn(lease::run(ctx.clone()));
        let pods = tokio::spawn(pods::run(ctx.clone()));
        let _ = tokio::join!(node, lease, pods);
    })
}
