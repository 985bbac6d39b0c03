//! The status server: `/healthz`, `/pods`, `/pods/{namespace}/{name}`,
//! `/status` and `/metrics`, read-only, over plain HTTP.
//!
//! `/pods` answers as the kubelet's read-only `/pods` endpoint does (a v1
//! `PodList` with statuses), so tools written for the kubelet can read it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};
use crate::source::ManifestError;
use crate::status::phase;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the status server shows: the agent's view of its node.
///
/// Called on every request; implementations should answer from memory (the
/// latest computed statuses, the cached runtime health) without blocking on I/O.
pub trait NodeView: Send + Sync + 'static {
    /// Every pod the agent runs, with `status` filled in.
    fn pods(&self) -> Vec<Pod>;
    /// One pod by namespace and name, with `status` filled in. Views whose
    /// status is costly override this to build only that one.
    fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.pods().into_iter().find(|p| {
            p.metadata.name.as_deref() == Some(name)
                && p.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })
    }
    /// The manifests rejected in the latest reading.
    fn manifest_errors(&self) -> Vec<ManifestError>;
    /// Unsupported fields per pod, as (`namespace/name`, warnings).
    fn pod_warnings(&self) -> Vec<(String, Vec<String>)>;
    /// `Ok` when the agent can do its work, else why not (e.g. "container
    /// runtime is unreachable: …").
    fn health(&self) -> Result<(), String>;
    /// What the runtime reported about itself (name, version, conditions).
    fn runtime_info(&self) -> serde_json::Value;
    /// The node's name.
    fn node_name(&self) -> String;
    /// The node's `capacity` and `allocatable` resource lists.
    fn node_resources(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The pressure conditions in force and the eviction thresholds met.
    fn pressure(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// What `/stats/summary` and `/metrics/resource` read: a summary taken now,
/// or why there is none (e.g. the runtime has not been reached yet).
pub type SummarySource = Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, Result<crate::stats::Summary, String>>
        + Send
        + Sync,
>;

#[derive(Clone)]
struct AppState {
    view: Arc<dyn NodeView>,
    metrics: Arc<Metrics>,
    stats: Option<SummarySource>,
}

/// The routes, for [`serve`] and for tests. Unknown paths answer 404 and other
/// methods than GET (and HEAD) on a known path answer 405.
pub fn router(view: Arc<dyn NodeView>, metrics: Arc<Metrics>) -> Router {
    router_with_stats(view, metrics, None)
}

/// [`router`] with the Summary API (`/stats/summary`) and the kubelet's
/// `/metrics/resource` over `stats`.
pub fn router_with_stats(
    view: Arc<dyn NodeView>,
    metrics: Arc<Metrics>,
    stats: Option<SummarySource>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(list_pods))
        .route("/pods/{namespace}/{name}", get(get_pod))
        .route("/status", get(node_status))
        .route("/metrics", get(scrape))
        .route("/metrics/probes", get(scrape_probes))
        .route("/metrics/resource", get(scrape_resource))
        .route("/stats/summary", get(stats_summary))
        .fallback(not_found)
        .with_state(AppState {
            view,
            metrics,
            stats,
        })
}

/// `GET /stats/summary`: the kubelet's Summary API (`stats/v1alpha1`).
async fn stats_summary(State(state): State<AppState>) -> Response {
    summary_response(state.stats.as_ref()).await
}

/// `GET /metrics/resource`: the kubelet's resource metrics (what
/// metrics-server scrapes).
async fn scrape_resource(State(state): State<AppState>) -> Response {
    resource_metrics_response(state.stats.as_ref()).await
}

/// The `/stats/summary` answer over `stats` (this server's and the
/// authenticated one's).
pub async fn summary_response(stats: Option<&SummarySource>) -> Response {
    let Some(stats) = stats else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "stats are not available on this server".to_string(),
        );
    };
    match stats().await {
        Ok(summary) => json(StatusCode::OK, &summary),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to get node stats: {e}"),
        ),
    }
}

/// The `/metrics/resource` answer over `stats`: `resource_scrape_error 1`
/// when no summary could be taken.
pub async fn resource_metrics_response(stats: Option<&SummarySource>) -> Response {
    let body = match stats {
        Some(stats) => match stats().await {
            Ok(summary) => crate::stats::resource_metrics(&summary),
            Err(e) => {
                tracing::debug!(error = %e, "resource metrics: no summary");
                crate::stats::resource_scrape_failed()
            }
        },
        None => crate::stats::resource_scrape_failed(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::stats::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// Serve the status endpoints on `listener` until `cancel` fires, then finish
/// the requests in flight and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: Arc<dyn NodeView>,
    metrics: Arc<Metrics>,
    stats: Option<SummarySource>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "status server listening");
    axum::serve(listener, router_with_stats(view, metrics, stats))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("status server on {addr}: {e}"))?;
    tracing::info!(%addr, "status server stopped");
    Ok(())
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.view.health() {
        Ok(()) => text(StatusCode::OK, "ok".to_string()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn list_pods(State(state): State<AppState>) -> Response {
    let list = k8s_openapi::List::<Pod> {
        items: state.view.pods(),
        metadata: Default::default(),
    };
    json(StatusCode::OK, &list)
}

async fn get_pod(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match state.view.pod(&namespace, &name) {
        Some(pod) => json(StatusCode::OK, &pod),
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("pods {name:?} not found"),
                "reason": "NotFound",
                "details": {"name": name, "kind": "pods"},
                "code": 404,
            }),
        ),
    }
}

/// `/status`: the node at a glance.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    node_name: String,
    runtime: serde_json::Value,
    healthy: bool,
    health_message: String,
    pods: usize,
    /// `capacity` and `allocatable`, as the Node status has them.
    resources: serde_json::Value,
    /// `pressure` (MemoryPressure, DiskPressure, PIDPressure in force) and
    /// `thresholdsMet`.
    eviction: serde_json::Value,
    manifest_errors: Vec<ManifestErrorView>,
    pod_warnings: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize)]
struct ManifestErrorView {
    file: String,
    field: Option<String>,
    reason: String,
    message: String,
}

async fn node_status(State(state): State<AppState>) -> Response {
    let view = &state.view;
    let health = view.health();
    let body = NodeStatus {
        node_name: view.node_name(),
        runtime: view.runtime_info(),
        healthy: health.is_ok(),
        health_message: health.err().unwrap_or_else(|| "ok".to_string()),
        pods: view.pods().len(),
        resources: view.node_resources(),
        eviction: view.pressure(),
        manifest_errors: view
            .manifest_errors()
            .into_iter()
            .map(|e| ManifestErrorView {
                file: e.file.display().to_string(),
                message: e.to_string(),
                field: e.field,
                reason: e.reason,
            })
            .collect(),
        pod_warnings: view.pod_warnings().into_iter().collect(),
    };
    json(StatusCode::OK, &body)
}

/// The kubelet's `/metrics/probes`: `prober_probe_total` and
/// `prober_probe_duration_seconds`.
async fn scrape_probes(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.probes.encode(),
    )
        .into_response()
}

async fn scrape(State(state): State<AppState>) -> Response {
    let mut by_phase: BTreeMap<String, i64> = BTreeMap::new();
    for pod in state.view.pods() {
        let p = pod
            .status
            .and_then(|s| s.phase)
            .unwrap_or_else(|| phase::UNKNOWN.to_string());
        *by_phase.entry(p).or_insert(0) += 1;
    }
    let by_phase: Vec<(&str, i64)> = by_phase.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let manifest_errors = i64::try_from(state.view.manifest_errors().len()).unwrap_or(i64::MAX);
    let body = state.metrics.encode(&by_phase, manifest_errors);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    // As Go's net/http answers an unknown path.
    text(StatusCode::NOT_FOUND, "404 page not found\n".to_string())
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, TEXT)], body).into_response()
}

fn json<T: Serialize>(code: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (code, [(header::CONTENT_TYPE, JSON)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding a status response failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the response failed: {error}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use tower::ServiceExt;

    struct FakeView {
        pods: Vec<Pod>,
        health: Mutex<Result<(), String>>,
    }

    impl NodeView for FakeView {
        fn pods(&self) -> Vec<Pod> {
            self.pods.clone()
        }
        fn manifest_errors(&self) -> Vec<ManifestError> {
            vec![ManifestError {
                file: PathBuf::from("/etc/berth/manifests/bad.yaml"),
                field: Some("spec.containers[0].image".to_string()),
                reason: "required".to_string(),
            }]
        }
        fn pod_warnings(&self) -> Vec<(String, Vec<String>)> {
            vec![(
                "default/web".to_string(),
                vec!["spec.affinity: ignored".to_string()],
            )]
        }
        fn health(&self) -> Result<(), String> {
            self.health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }
        fn runtime_info(&self) -> serde_json::Value {
            serde_json::json!({"runtimeName": "containerd", "runtimeVersion": "v2.0.0"})
        }
        fn node_name(&self) -> String {
            "node-1".to_string()
        }
    }

    fn fake(health: Result<(), String>) -> Arc<FakeView> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
            "status": {"phase": "Running"},
        }))
        .expect("pod");
        Arc::new(FakeView {
            pods: vec![pod],
            health: Mutex::new(health),
        })
    }

    async fn call(view: Arc<FakeView>, method: &str, uri: &str) -> (StatusCode, String, String) {
        call_with(view, Arc::new(Metrics::new()), method, uri).await
    }

    async fn call_with(
        view: Arc<FakeView>,
        metrics: Arc<Metrics>,
        method: &str,
        uri: &str,
    ) -> (StatusCode, String, String) {
        let app = router(view, metrics);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("response");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, ctype, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn stats_say_why_there_are_none() {
        // No source: 503; a source that fails: 500 naming why, and the
        // resource metrics report a scrape error instead of failing.
        let (code, _, body) = call(fake(Ok(())), "GET", "/stats/summary").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let failing: SummarySource =
            Arc::new(|| Box::pin(async { Err("runtime unreachable".to_string()) }));
        for (path, want_code, want_body) in [
            (
                "/stats/summary",
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to get node stats: runtime unreachable",
            ),
            (
                "/metrics/resource",
                StatusCode::OK,
                "resource_scrape_error 1",
            ),
        ] {
            let app = router_with_stats(
                fake(Ok(())),
                Arc::new(Metrics::new()),
                Some(failing.clone()),
            );
            let req = Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request");
            let resp = app.oneshot(req).await.expect("response");
            assert_eq!(resp.status(), want_code, "{path}");
            let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains(want_body), "{path}: {body}");
        }
    }

    #[tokio::test]
    async fn healthz_ok_and_unhealthy() {
        let (code, ctype, body) = call(fake(Ok(())), "GET", "/healthz").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype, TEXT);
        assert_eq!(body, "ok");

        let reason = "container runtime is unreachable: connection refused".to_string();
        let (code, _, body) = call(fake(Err(reason.clone())), "GET", "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, reason);
    }

    #[tokio::test]
    async fn pods_is_a_pod_list() {
        let (code, ctype, body) = call(fake(Ok(())), "GET", "/pods").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype, JSON);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["kind"], "PodList");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["metadata"], serde_json::json!({}));
        assert_eq!(v["items"][0]["metadata"]["name"], "web");
        assert_eq!(v["items"][0]["status"]["phase"], "Running");
    }

    #[tokio::test]
    async fn one_pod_or_not_found() {
        let (code, ctype, body) = call(fake(Ok(())), "GET", "/pods/default/web").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype, JSON);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["metadata"]["uid"], "u1");

        let (code, ctype, body) = call(fake(Ok(())), "GET", "/pods/default/x").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(ctype, JSON);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "pods \"x\" not found",
                "reason": "NotFound",
                "details": {"name": "x", "kind": "pods"},
                "code": 404,
            })
        );

        let (code, _, _) = call(fake(Ok(())), "GET", "/pods/kube-system/web").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn node_status_summary() {
        let (code, ctype, body) =
            call(fake(Err("runtime down".to_string())), "GET", "/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype, JSON);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["nodeName"], "node-1");
        assert_eq!(v["runtime"]["runtimeName"], "containerd");
        assert_eq!(v["healthy"], false);
        assert_eq!(v["healthMessage"], "runtime down");
        assert_eq!(v["pods"], 1);
        assert_eq!(
            v["manifestErrors"][0],
            serde_json::json!({
                "file": "/etc/berth/manifests/bad.yaml",
                "field": "spec.containers[0].image",
                "reason": "required",
                "message": "/etc/berth/manifests/bad.yaml: spec.containers[0].image: required",
            })
        );
        assert_eq!(
            v["podWarnings"],
            serde_json::json!({"default/web": ["spec.affinity: ignored"]})
        );

        let (_, _, body) = call(fake(Ok(())), "GET", "/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["healthy"], true);
        assert_eq!(v["healthMessage"], "ok");
    }

    #[tokio::test]
    async fn metrics_text() {
        use berth_cri::CallObserver;
        let metrics = Arc::new(Metrics::new());
        metrics.observe(
            "ListContainers",
            std::time::Duration::from_millis(2),
            Some(tonic::Code::DeadlineExceeded),
        );
        let (code, ctype, body) = call_with(fake(Ok(())), metrics, "GET", "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ctype, metrics::CONTENT_TYPE);
        for name in [
            "berth_running_pods",
            "berth_pods",
            "berth_pod_sync_duration_seconds",
            "berth_cri_operations_duration_seconds",
            "berth_cri_operations_errors",
            "berth_pleg_relist_duration_seconds",
            "berth_pleg_last_seen_seconds",
            "berth_manifest_errors",
            "berth_image_pulls",
        ] {
            assert!(
                body.contains(&format!("# TYPE {name} ")),
                "{name} in\n{body}"
            );
        }
        assert!(body.contains("berth_pods{phase=\"Running\"} 1"), "{body}");
        assert!(body.contains("berth_manifest_errors 1"), "{body}");
    }

    #[tokio::test]
    async fn unknown_path_and_wrong_method() {
        let (code, _, body) = call(fake(Ok(())), "GET", "/nope").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body, "404 page not found\n");
        let (code, _, _) = call(fake(Ok(())), "GET", "/pods/default").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        for (method, uri) in [
            ("POST", "/pods"),
            ("DELETE", "/pods/default/web"),
            ("PUT", "/healthz"),
            ("POST", "/metrics"),
            ("PATCH", "/status"),
        ] {
            let (code, _, _) = call(fake(Ok(())), method, uri).await;
            assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        }
    }

    #[tokio::test]
    async fn serves_until_cancelled() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            fake(Ok(())),
            Arc::new(Metrics::new()),
            None,
            cancel.clone(),
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut resp = String::new();
        conn.read_to_string(&mut resp).await.expect("read");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("ok"), "{resp}");

        cancel.cancel();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("stops after cancel")
            .expect("task");
        assert!(result.is_ok(), "{result:?}");
    }
}
