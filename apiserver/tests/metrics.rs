//! `metrics.k8s.io` end to end inside one process: fake node agents (HTTPS
//! servers that require the API server's kubelet-client certificate and
//! answer `/metrics/resource` in the kubelet's text format, their counters
//! moving by a fixed amount per scrape), the scraper driven one round at a
//! time, and the API router asked as kubectl asks.
//!
//! Beside the working node sit one that accepts connections and never
//! answers, one that refuses them and one that answers garbage: they cost
//! only themselves.

mod tls_client;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use berth_apiserver::api::metrics::scraper::Scraper;
use berth_apiserver::api::metrics::{self, ScraperConfig};
use berth_apiserver::api::proxy::KubeletClient;
use berth_apiserver::api::tls::{self, PkiPaths};
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_apiserver::storage::{Storage, object_key};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;

const TOKENS: &str = "admin-token,admin,1,\"system:masters\"\n\
bob-token,bob,2\n\
nobody-token,nobody,3\n";

/// The fake agents' clock: 2024-01-01T00:00:00Z, one second per scrape.
const T0_MS: i64 = 1_704_067_200_000;

// ---------------------------------------------------------------------------
// Fake agents.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The kubelet's text, counters moving per scrape.
    Good,
    /// Not the text format.
    Garbage,
}

struct AgentState {
    mode: Mode,
    /// Scrapes answered so far.
    scrapes: AtomicU64,
    /// Answer 500 (a broken agent).
    broken: AtomicBool,
    /// Client certificate CNs seen.
    peers: Mutex<Vec<String>>,
}

/// The kubelet's `/metrics/resource` at scrape `n`: one second apart; the
/// node uses 1.5 cores, `busy` 0.5, `idle` 1 ms per second; `web` in
/// namespace `other` 0.25.
fn kubelet_text(n: u64) -> String {
    let n = n as f64;
    let ts = T0_MS + (n as i64) * 1000;
    let start = 1_704_000_000.5_f64;
    let c = |ns: &str, pod: &str, container: &str| {
        format!("{{container=\"{container}\",namespace=\"{ns}\",pod=\"{pod}\"}}")
    };
    format!(
        "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{busy} {} {ts}
container_cpu_usage_seconds_total{idle} {} {ts}
container_cpu_usage_seconds_total{sidecar} {} {ts}
container_cpu_usage_seconds_total{web} {} {ts}
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{busy} 1.6777216e+07 {ts}
container_memory_working_set_bytes{idle} 1.048576e+06 {ts}
container_memory_working_set_bytes{sidecar} 2.097152e+06 {ts}
container_memory_working_set_bytes{web} 1.2345e+06 {ts}
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{busy} {start}
container_start_time_seconds{idle} {start}
container_start_time_seconds{sidecar} {start}
container_start_time_seconds{web} {start}
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total {} {ts}
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 2.147483648e+09 {ts}
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{{namespace=\"default\",pod=\"busy\"}} {} {ts}
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
",
        100.0 + 0.5 * n,
        1.0 + 0.001 * n,
        3.0 + 0.002 * n,
        7.0 + 0.25 * n,
        1000.0 + 1.5 * n,
        100.0 + 0.5 * n,
        busy = c("default", "busy", "main"),
        idle = c("default", "idle", "main"),
        sidecar = c("default", "idle", "sidecar"),
        web = c("other", "web", "app"),
    )
}

type AgentBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn reply(code: StatusCode, body: String) -> Response<AgentBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = code;
    r
}

/// (CN) of a DER certificate's subject.
fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string()
}

/// An HTTPS agent on 127.0.0.1 trusting client certificates of `client_ca`.
async fn fake_agent(client_ca: &std::path::Path, mode: Mode) -> (u16, Arc<AgentState>) {
    let acceptor = tls_client::agent_acceptor(client_ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(AgentState {
        mode,
        scrapes: AtomicU64::new(0),
        broken: AtomicBool::new(false),
        peers: Mutex::new(Vec::new()),
    });
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let st = st.clone();
            // As the agent's server: no Nagle delay between head and body.
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|d| common_name(d.as_ref()));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let st = st.clone();
                    let cn = cn.clone();
                    async move {
                        let Some(cn) = cn else {
                            return Ok::<_, Infallible>(reply(
                                StatusCode::UNAUTHORIZED,
                                "Unauthorized".into(),
                            ));
                        };
                        st.peers.lock().unwrap().push(cn);
                        if req.uri().path() != "/metrics/resource" {
                            return Ok(reply(StatusCode::NOT_FOUND, "404 page not found".into()));
                        }
                        if st.broken.load(Ordering::SeqCst) {
                            return Ok(reply(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "failed to get node stats".into(),
                            ));
                        }
                        let n = st.scrapes.fetch_add(1, Ordering::SeqCst);
                        Ok(match st.mode {
                            Mode::Good => reply(StatusCode::OK, kubelet_text(n)),
                            Mode::Garbage => reply(
                                StatusCode::OK,
                                "node_cpu_usage_seconds_total 1 1000\n<html>no metrics here</html>\n"
                                    .into(),
                            ),
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, state)
}

/// A port that accepts connections and never says anything.
async fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    port
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    berth_test_support::free_port()
}

// ---------------------------------------------------------------------------
// The server.

struct Server {
    state: Arc<ApiState>,
    scraper: Scraper,
    agent: Arc<AgentState>,
    _dir: tempfile::TempDir,
}

fn node(name: &str, port: u16, labels: Value) -> Value {
    json!({"kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"),
            "creationTimestamp": "2024-01-01T00:00:00Z", "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                 {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
            "creationTimestamp": "2024-01-01T00:00:00Z", "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "busybox"}]}})
}

async fn put(storage: &Arc<dyn Storage>, resource: &str, obj: Value) {
    let ns = obj["metadata"]["namespace"].as_str();
    let name = obj["metadata"]["name"].as_str().unwrap();
    let key = object_key(resource, ns, name).unwrap();
    storage
        .create(&key, serde_json::to_vec(&obj).unwrap())
        .await
        .unwrap();
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiPaths::new(dir.path());
    tls::ensure_pki(&pki, &[]).unwrap();
    tls::ensure_kubelet_client_cert(&pki).unwrap();
    let kubelet =
        KubeletClient::from_pem_files(&pki.kubelet_client_cert, &pki.kubelet_client_key).unwrap();
    let (good, agent) = fake_agent(&pki.ca_cert, Mode::Good).await;
    let (garbage, _) = fake_agent(&pki.ca_cert, Mode::Garbage).await;
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::with_kubelet_client(
        storage,
        ApiConfig {
            authenticator: Some(Authenticator::parse(TOKENS).unwrap()),
            ..ApiConfig::default()
        },
        Some(kubelet),
    );
    state.bootstrap().await.unwrap();
    let s = &state.storage;
    put(
        s,
        "nodes",
        node("n1", good, json!({"zone": "a", "role": "worker"})),
    )
    .await;
    put(
        s,
        "nodes",
        node("n2-silent", black_hole().await, json!({"zone": "b"})),
    )
    .await;
    put(
        s,
        "nodes",
        node("n3-refusing", closed_port(), json!({"zone": "b"})),
    )
    .await;
    put(
        s,
        "nodes",
        node("n4-garbage", garbage, json!({"zone": "b"})),
    )
    .await;
    put(s, "pods", pod("default", "busy", json!({"app": "busy"}))).await;
    put(s, "pods", pod("default", "idle", json!({"app": "idle"}))).await;
    // Stored, never on an agent.
    put(s, "pods", pod("default", "pending", json!({"app": "busy"}))).await;
    put(s, "pods", pod("other", "web", json!({}))).await;
    let scraper = Scraper::new(
        state.clone(),
        ScraperConfig {
            resolution: Duration::from_secs(1),
            node_timeout: Duration::from_millis(500),
        },
    );
    Server {
        state,
        scraper,
        agent,
        _dir: dir,
    }
}

impl Server {
    async fn request(
        &self,
        token: &str,
        method: Method,
        path: &str,
        accept: &str,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap();
        let resp = api::router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .request("admin-token", Method::GET, path, "application/json")
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn status(&self, path: &str) -> (StatusCode, Value) {
        self.request("admin-token", Method::GET, path, "application/json")
            .await
    }
}

const M: &str = "/apis/metrics.k8s.io/v1beta1";

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn discovery_lists_the_metrics_group() {
    let s = start().await;
    let apis = s.get("/apis").await;
    let groups = apis["groups"].as_array().unwrap();
    let metrics = groups
        .iter()
        .find(|g| g["name"] == "metrics.k8s.io")
        .unwrap();
    assert_eq!(
        metrics["preferredVersion"],
        json!({"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"})
    );
    let group = s.get("/apis/metrics.k8s.io").await;
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["name"], "metrics.k8s.io");
    assert_eq!(
        s.get(M).await,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ]})
    );
    let (status, agg) = s
        .request(
            "admin-token",
            Method::GET,
            "/apis",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let item = agg["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "metrics.k8s.io")
        .unwrap();
    let res = &item["versions"][0]["resources"];
    assert_eq!(res[0]["resource"], "nodes");
    assert_eq!(res[0]["scope"], "Cluster");
    assert_eq!(res[0]["responseKind"]["kind"], "NodeMetrics");
    assert_eq!(res[1]["resource"], "pods");
    assert_eq!(res[1]["scope"], "Namespaced");
    assert_eq!(res[1]["verbs"], json!(["get", "list"]));
    // Another version of the group is not served.
    assert_eq!(
        s.status("/apis/metrics.k8s.io/v1").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.status("/apis/metrics.k8s.io/v1/nodes").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn scrape_rounds_make_usage_and_bad_nodes_cost_only_themselves() {
    let mut s = start().await;

    // One round: one point each; nothing to show yet.
    let t0 = Instant::now();
    s.scraper.round().await;
    let first = t0.elapsed();
    // The silent node is cut at its timeout; the round does not wait longer.
    assert!(first < Duration::from_secs(3), "round took {first:?}");
    assert_eq!(
        names(&s.get(&format!("{M}/nodes")).await),
        Vec::<String>::new()
    );
    let (code, body) = s.status(&format!("{M}/nodes/n1")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "nodemetrics.metrics.k8s.io \"n1\" not found", "reason": "NotFound",
            "details": {"name": "n1", "group": "metrics.k8s.io", "kind": "nodemetrics"}, "code": 404})
    );
    let (code, body) = s.status(&format!("{M}/namespaces/default/pods/busy")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        body["message"],
        "podmetrics.metrics.k8s.io \"default/busy\" not found"
    );
    let (code, body) = s.status(&format!("{M}/pods")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["items"], json!([]));

    // The second round: usage over the points' own one-second window.
    s.scraper.round().await;
    let list = s.get(&format!("{M}/nodes")).await;
    assert_eq!(list["kind"], "NodeMetricsList");
    assert_eq!(list["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(list["metadata"], json!({}));
    assert_eq!(names(&list), ["n1"], "only the working node: {list}");
    let n1 = &list["items"][0];
    assert!(n1.get("kind").is_none(), "list items carry no kind: {n1}");
    assert_eq!(n1["usage"], json!({"cpu": "1500m", "memory": "2Gi"}));
    assert_eq!(n1["window"], "1s");
    assert_eq!(n1["timestamp"], "2024-01-01T00:00:01Z");
    assert_eq!(
        n1["metadata"]["labels"],
        json!({"zone": "a", "role": "worker"})
    );
    assert!(n1["metadata"]["creationTimestamp"].is_string());

    let one = s.get(&format!("{M}/nodes/n1")).await;
    assert_eq!(one["kind"], "NodeMetrics");
    assert_eq!(one["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(one["usage"], n1["usage"]);
    // A node that exists but cannot be scraped; one that does not exist.
    let (code, body) = s.status(&format!("{M}/nodes/n2-silent")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        body["message"],
        "nodemetrics.metrics.k8s.io \"n2-silent\" not found"
    );
    let (code, body) = s.status(&format!("{M}/nodes/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "node \"nope\" not found");

    // Pods: per container, sorted by namespace and name; the pending pod
    // (stored, never scraped) is absent.
    let pods = s.get(&format!("{M}/pods")).await;
    assert_eq!(pods["kind"], "PodMetricsList");
    let keys: Vec<(String, String)> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["namespace"].as_str().unwrap().to_string(),
                p["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("default", "busy"), ("default", "idle"), ("other", "web")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let busy = s.get(&format!("{M}/namespaces/default/pods/busy")).await;
    assert_eq!(busy["kind"], "PodMetrics");
    assert_eq!(busy["metadata"]["labels"], json!({"app": "busy"}));
    assert_eq!(busy["window"], "1s");
    assert_eq!(
        busy["containers"],
        json!([{"name": "main", "usage": {"cpu": "500m", "memory": "16Mi"}}])
    );
    let idle = s.get(&format!("{M}/namespaces/default/pods/idle")).await;
    assert_eq!(
        idle["containers"],
        json!([{"name": "main", "usage": {"cpu": "1m", "memory": "1Mi"}},
               {"name": "sidecar", "usage": {"cpu": "2m", "memory": "2Mi"}}])
    );
    let web = s.get(&format!("{M}/namespaces/other/pods/web")).await;
    assert_eq!(web["containers"][0]["usage"]["memory"], "1234500");
    assert!(
        web["metadata"].get("labels").is_none(),
        "no empty labels: {web}"
    );
    let (code, body) = s
        .status(&format!("{M}/namespaces/default/pods/pending"))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        body["message"],
        "podmetrics.metrics.k8s.io \"default/pending\" not found"
    );
    let (code, body) = s.status(&format!("{M}/namespaces/default/pods/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "pods \"nope\" not found");

    // The agent broke: gone at the next round, back two rounds after it heals.
    s.agent.broken.store(true, Ordering::SeqCst);
    s.scraper.round().await;
    assert_eq!(
        names(&s.get(&format!("{M}/nodes")).await),
        Vec::<String>::new()
    );
    assert_eq!(s.get(&format!("{M}/pods")).await["items"], json!([]));
    s.agent.broken.store(false, Ordering::SeqCst);
    s.scraper.round().await;
    assert_eq!(
        names(&s.get(&format!("{M}/nodes")).await),
        Vec::<String>::new()
    );
    s.scraper.round().await;
    assert_eq!(names(&s.get(&format!("{M}/nodes")).await), ["n1"]);
    assert_eq!(state_counts(&s), (1, 3));
    // Every request carried the kubelet-client certificate.
    let peers = s.agent.peers.lock().unwrap().clone();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p == tls::KUBELET_CLIENT_CN),
        "{peers:?}"
    );
}

fn state_counts(s: &Server) -> (usize, usize) {
    s.state.metrics.counts()
}

#[tokio::test]
async fn selectors_tables_and_verbs() {
    let mut s = start().await;
    s.scraper.round().await;
    s.scraper.round().await;
    let sel = |q: &str| format!("{M}/namespaces/default/pods?{q}");
    assert_eq!(
        names(&s.get(&sel("labelSelector=app%3Dbusy")).await),
        ["busy"]
    );
    assert_eq!(
        names(&s.get(&sel("labelSelector=app%21%3Dbusy")).await),
        ["idle"]
    );
    assert_eq!(
        names(&s.get(&sel("fieldSelector=metadata.name%3Didle")).await),
        ["idle"]
    );
    assert_eq!(
        names(
            &s.get(&format!(
                "{M}/pods?fieldSelector=metadata.namespace%3Dother"
            ))
            .await
        ),
        ["web"]
    );
    assert_eq!(
        names(&s.get(&format!("{M}/nodes?labelSelector=zone%3Da")).await),
        ["n1"]
    );
    assert_eq!(
        names(&s.get(&format!("{M}/nodes?labelSelector=zone%3Db")).await),
        Vec::<String>::new()
    );
    assert_eq!(
        names(
            &s.get(&format!("{M}/nodes?fieldSelector=metadata.name%21%3Dn1"))
                .await
        ),
        Vec::<String>::new()
    );
    let (code, body) = s
        .status(&format!(
            "{M}/nodes?fieldSelector=spec.unschedulable%3Dtrue"
        ))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["message"],
        "field label not supported: spec.unschedulable"
    );
    let (code, _) = s
        .status(&format!("{M}/nodes?labelSelector=a%20in%20x"))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // Tables: name, cpu, memory, window (a pod summed over its containers).
    let (code, t) = s
        .request(
            "admin-token",
            Method::GET,
            &format!("{M}/namespaces/default/pods"),
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "cpu", "memory", "Window"]);
    assert_eq!(t["rows"][1]["cells"], json!(["idle", "3m", "3Mi", "1s"]));
    assert_eq!(t["rows"][1]["object"]["kind"], "PartialObjectMetadata");

    // Read-only, no watch.
    let (code, body) = s.status(&format!("{M}/nodes?watch=true")).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["reason"], "MethodNotAllowed");
    assert_eq!(
        body["message"],
        "watch is not supported on resources of kind \"nodes.metrics.k8s.io\""
    );
    assert_eq!(
        s.status(&format!("{M}/watch/nodes")).await.0,
        StatusCode::NOT_FOUND
    );
    let (code, _) = s
        .request("admin-token", Method::POST, &format!("{M}/nodes"), "*/*")
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let (code, _) = s
        .request(
            "admin-token",
            Method::DELETE,
            &format!("{M}/namespaces/default/pods/busy"),
            "*/*",
        )
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    for path in [
        format!("{M}/pods/busy"),
        format!("{M}/nodes/n1/status"),
        format!("{M}/namespaces/default/nodes"),
        format!("{M}/widgets"),
    ] {
        assert_eq!(s.status(&path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn authorization_and_the_aggregated_reader_role() {
    let s = start().await;
    // The bootstrap role as metrics-server's manifest has it.
    let role = s
        .get("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:aggregated-metrics-reader")
        .await;
    let labels = &role["metadata"]["labels"];
    for l in ["admin", "edit", "view"] {
        assert_eq!(
            labels[format!("rbac.authorization.k8s.io/aggregate-to-{l}")],
            "true"
        );
    }
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
            "verbs": ["get", "list", "watch"]}])
    );
    // Nobody may not.
    let (code, body) = s
        .request("nobody-token", Method::GET, &format!("{M}/nodes"), "*/*")
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "nodes.metrics.k8s.io is forbidden: User \"nobody\" cannot list resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope"
    );
    let (code, body) = s
        .request(
            "nobody-token",
            Method::GET,
            &format!("{M}/namespaces/default/pods/busy"),
            "*/*",
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "pods.metrics.k8s.io \"busy\" is forbidden: User \"nobody\" cannot get resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"default\""
    );
    // Bob gets view in "default" (aggregated at start-up): pods there, not nodes.
    let binding = json!({"metadata": {"name": "bob-view", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}]});
    let req = Request::builder()
        .method(Method::POST)
        .uri("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings")
        .header(header::AUTHORIZATION, "Bearer admin-token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(binding.to_string()))
        .unwrap();
    let resp = api::router(s.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (code, body) = s
        .request(
            "bob-token",
            Method::GET,
            &format!("{M}/namespaces/default/pods"),
            "*/*",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = s
        .request("bob-token", Method::GET, &format!("{M}/nodes"), "*/*")
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // Watch is authorized first (the role grants it), then refused.
    let (code, _) = s
        .request(
            "bob-token",
            Method::GET,
            &format!("{M}/namespaces/default/pods?watch=1"),
            "*/*",
        )
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

/// What one scrape costs against a local agent: printed, and bounded loosely.
#[tokio::test]
async fn scrape_cost_per_node() {
    let s = start().await;
    let client = s.state.kubelet_client().unwrap();
    let n1 = s.get("/api/v1/nodes/n1").await;
    let rounds = 50u32;
    let t0 = Instant::now();
    for _ in 0..rounds {
        metrics::scraper::scrape_node(&client, "n1", &n1, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let per = t0.elapsed() / rounds;
    eprintln!(
        "metrics scrape of one node (new TLS connection, {} bytes, decode): {:.2} ms",
        kubelet_text(0).len(),
        per.as_secs_f64() * 1000.0
    );
    assert!(per < Duration::from_secs(1), "{per:?}");
    // The decode alone, on a body the size of 100 pods' worth of containers.
    let body: String = (0..100)
        .map(|i| kubelet_text(i).replace("busy", &format!("busy{i}")))
        .collect();
    let t0 = Instant::now();
    for _ in 0..20 {
        metrics::decode::decode(&body, 0).unwrap();
    }
    eprintln!(
        "decoding {} bytes ({} samples): {:.2} ms",
        body.len(),
        body.lines().filter(|l| !l.starts_with('#')).count(),
        (t0.elapsed() / 20).as_secs_f64() * 1000.0
    );
}
