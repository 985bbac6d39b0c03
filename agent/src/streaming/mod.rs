//! The authenticated server, the kubelet's `:10250`: what the API server
//! proxies `pods/log` and `pods/exec` to.
//!
//! - HTTPS (rustls) on `--address:--port` (default `0.0.0.0:10250`; port 0
//!   disables it), serving `--tls-cert-file`/`--tls-private-key-file` or a
//!   certificate generated once into `<root-dir>/pki/agent.crt|.key`.
//! - Authentication: a TLS client certificate chained to `--client-ca-file`
//!   (else the CA of the `--kubeconfig` cluster; with neither the server does
//!   not start). No certificate: 401 `Unauthorized`. Authorization: the
//!   certificate's subject must have `O=system:masters` or
//!   `CN=kube-apiserver-kubelet-client`; otherwise 403 naming the user, as the
//!   kubelet's `Forbidden (user=…, verb=…, resource=nodes, subresource(s)=[…])`.
//! - [`logs`]: `GET /containerLogs/{namespace}/{pod}/{container}` (the CRI log
//!   files, `v1.PodLogOptions` query parameters, `follow` streams until the
//!   container exits).
//! - [`exec`]: `/exec/{namespace}/{pod}/{container}`: a WebSocket
//!   (`v5.channel.k8s.io`, `v4.channel.k8s.io`) terminated here and bridged to
//!   the runtime's streaming URL (CRI `Exec`; over [`spdy`] when the session
//!   has stdin, so that its end reaches the command), or an SPDY/3.1 upgrade
//!   passed through byte for byte; and `POST /run/...` (CRI `ExecSync`).
//! - `/healthz` and `/pods`, as on the status server.
//!
//! Pods are found among the pods the agent runs ([`NodeView::pods`], with
//! statuses), containers by the IDs in those statuses, as the kubelet does.

pub mod exec;
pub mod logs;
pub mod spdy;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_cri::RuntimeClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::Config;
use crate::server::NodeView;
pub use tls::Identity;

/// The group whose members may do anything (kube-apiserver's superusers).
pub const SYSTEM_MASTERS: &str = "system:masters";
/// The user the API server's kubelet client certificate names.
pub const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

const TEXT: &str = "text/plain; charset=utf-8";
/// How long a client gets for the TLS handshake, and for a request head.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the handlers need from the agent: the pods it runs (with statuses)
/// and the container runtime.
pub struct Host {
    pub view: Arc<dyn NodeView>,
    pub runtime: RuntimeClient,
    /// `/stats/summary` and `/metrics/resource` (`nodes/stats`,
    /// `nodes/metrics`), when the agent has them.
    pub stats: Option<crate::server::SummarySource>,
}

impl Host {
    /// The pod `namespace/name` among the pods the agent runs.
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.view.pods().into_iter().find(|p| {
            p.metadata.name.as_deref() == Some(name)
                && p.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })
    }
}

/// The status of container `name` (app, init or ephemeral) in `pod`.
pub(crate) fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    [
        status.container_statuses.as_deref(),
        status.init_container_statuses.as_deref(),
        status.ephemeral_container_statuses.as_deref(),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|c| c.name == name)
}

/// True when `pod`'s spec has a container (app, init or ephemeral) named `name`.
pub(crate) fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

/// The runtime's ID in a `containerID` such as `containerd://abc`.
pub(crate) fn runtime_id(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map(|(_, id)| id)
        .unwrap_or(container_id)
}

/// A plain-text response.
pub(crate) fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (code, [(header::CONTENT_TYPE, TEXT)], body.into()).into_response()
}

/// Who the connection's client certificate names (`None`: no certificate).
#[derive(Debug, Clone)]
struct Peer(Option<Identity>);

/// The routes, behind authentication and authorization. Requests must carry
/// the connection's identity (inserted by [`serve`]).
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route("/run/{namespace}/{pod}/{container}", post(exec::run))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/resource", get(resource_metrics))
        .fallback(not_found)
        .with_state(host)
        .layer(axum::middleware::from_fn(authenticate))
}

async fn stats_summary(State(host): State<Arc<Host>>) -> Response {
    crate::server::summary_response(host.stats.as_ref()).await
}

async fn resource_metrics(State(host): State<Arc<Host>>) -> Response {
    crate::server::resource_metrics_response(host.stats.as_ref()).await
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

async fn healthz(State(host): State<Arc<Host>>) -> Response {
    match host.view.health() {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn pods(State(host): State<Arc<Host>>) -> Response {
    let list = k8s_openapi::List::<Pod> {
        items: host.view.pods(),
        metadata: Default::default(),
    };
    match serde_json::to_vec(&list) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// True when `identity` may use the server.
pub fn authorized(identity: &Identity) -> bool {
    identity.user == APISERVER_KUBELET_CLIENT || identity.groups.iter().any(|g| g == SYSTEM_MASTERS)
}

/// The kubelet's authentication filter, then its authorization with the
/// attributes it would check (`nodes/<subresource>`), answered as it answers.
async fn authenticate(req: Request, next: Next) -> Response {
    let identity = req.extensions().get::<Peer>().and_then(|p| p.0.clone());
    let Some(identity) = identity else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if authorized(&identity) {
        return next.run(req).await;
    }
    let verb = match *req.method() {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let path = req.uri().path();
    // kubelet's GetRequestAttributes (with the KubeletFineGrainedAuthz gate on, as in 1.33).
    let subresources: &[&str] = if path.starts_with("/stats") {
        &["stats"]
    } else if path.starts_with("/metrics") {
        &["metrics"]
    } else if path.starts_with("/logs") {
        &["log"]
    } else if path.starts_with("/checkpoint") {
        &["checkpoint"]
    } else if path.starts_with("/pods") {
        &["pods", "proxy"]
    } else if path.starts_with("/healthz") {
        &["healthz", "proxy"]
    } else if path.starts_with("/configz") {
        &["configz", "proxy"]
    } else {
        &["proxy"]
    };
    tracing::info!(user = %identity.user, groups = ?identity.groups, %path, "forbidden");
    text(
        StatusCode::FORBIDDEN,
        format!(
            "Forbidden (user={}, verb={verb}, resource=nodes, subresource(s)=[{}])\n",
            identity.user,
            subresources.join(" ")
        ),
    )
}

/// Serve `router` over TLS on `listener` until `cancel` fires. Each
/// connection's verified client certificate (if any) is read once and handed
/// to every request on it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "accept failed");
                    // EMFILE and the like: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small TLS records (a stats answer, an exec frame) go out at once,
        // not after the peer's delayed ACK (a ~40 ms Nagle stall otherwise).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(tls::identity_of);
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(identity.clone()));
                    router.clone().oneshot(req)
                });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client that never finishes its request head does not hold a task forever.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {
                    // Let a request in flight finish; upgraded streams are
                    // detached from the connection and end on their own.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracing::info!(%addr, "authenticated server stopped");
    Ok(())
}

/// The CA that client certificates must chain to: `--client-ca-file`, else
/// the CA of the kubeconfig's cluster, else none.
pub async fn client_ca(config: &Config) -> anyhow::Result<Option<Vec<CertificateDer<'static>>>> {
    if let Some(path) = &config.client_ca_file {
        return tls::read_pem_certs(path)
            .map(Some)
            .context("--client-ca-file");
    }
    match &config.kubeconfig {
        Some(path) => {
            let cas = crate::cluster::kubeconfig_ca(path).await?;
            Ok(cas.map(|cas| cas.into_iter().map(CertificateDer::from).collect()))
        }
        None => Ok(None),
    }
}

/// The authenticated server, once started.
pub struct Running {
    /// The port it listens on (`status.daemonEndpoints.kubeletEndpoint.port`).
    pub port: u16,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Start the authenticated server as `config` says, or return `None` when it
/// is disabled (`--port 0`), has no client CA to authenticate with, or cannot
/// bind its port (each logged). Unreadable certificate or CA files are errors.
pub async fn start(
    config: &Config,
    host: Arc<Host>,
    cancel: CancellationToken,
) -> anyhow::Result<Option<Running>> {
    if config.port == 0 {
        tracing::info!("authenticated server disabled (--port 0)");
        return Ok(None);
    }
    let Some(cas) = client_ca(config).await? else {
        tracing::info!(
            "authenticated server (logs, exec) not started: no --client-ca-file and no --kubeconfig CA to authenticate clients with"
        );
        return Ok(None);
    };
    let (cert, key) = tls::ensure_serving_cert(
        config.tls_cert_file.as_deref(),
        config.tls_private_key_file.as_deref(),
        &config.root_dir,
        &config.node_name,
        &config.node_ip,
    )?;
    let tls_config = tls::server_config(&cert, &key, cas)?;
    let addr = SocketAddr::new(config.address, config.port);
    // Unlike the kubelet (which exits), a taken port does not stop the agent:
    // pods keep being run; only logs and exec are unavailable (and the Node
    // reports the status port).
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "authenticated server (logs, exec) not started: cannot listen on --address/--port");
            return Ok(None);
        }
    };
    let port = listener.local_addr()?.port();
    tracing::info!(%addr, cert = %cert.display(), "authenticated server listening");
    let task = tokio::spawn(serve(listener, router(host), tls_config, cancel));
    Ok(Some(Running { port, task }))
}
