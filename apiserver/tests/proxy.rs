//! `pods/log` and `pods/exec` through the API server to a fake node agent:
//! an HTTPS server in this process that verifies client certificates against
//! the API server's CA and implements `/containerLogs` and a WebSocket
//! `/exec` speaking enough of `v5.channel.k8s.io` for kubectl.
//!
//! In-process tests drive the API router over plain HTTP; the kubectl tests
//! run the real `kubectl` against the `berth-apiserver` binary (skipped with
//! a printed reason when kubectl is missing, a failure when `CI=true` or
//! `BERTH_REQUIRE_RUNTIME=1`).

mod tls_client;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use berth_apiserver::api::proxy::KubeletClient;
use berth_apiserver::api::tls::{self, KUBELET_CLIENT_CN, PkiPaths};
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_test_support::{free_port, required};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

const TOKENS: &str = "admin-token,admin,1,\"system:masters\"\n\
n1-token,system:node:n1,2,system:nodes\n\
nobody-token,nobody,3\n";

// ---------------------------------------------------------------------------
// The fake agent.

#[derive(Default)]
struct AgentState {
    /// The subject CN of each connection's client certificate (None: no cert).
    peer_cns: Mutex<Vec<Option<String>>>,
    /// Every request: `METHOD path?query`.
    requests: Mutex<Vec<String>>,
    /// Lets a follow stream send its second line.
    release: Notify,
    /// Set when a follow stream's body was dropped (the connection closed).
    follow_closed: AtomicBool,
    follow_closed_notify: Notify,
}

struct FakeAgent {
    port: u16,
    state: Arc<AgentState>,
}

type AgentBody = BoxBody<Bytes, Infallible>;

fn text(code: StatusCode, body: impl Into<String>) -> Response<AgentBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())).boxed());
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    r
}

impl FakeAgent {
    /// Serve on 127.0.0.1 with a self-signed certificate, trusting client
    /// certificates signed by `client_ca` (but accepting connections without one).
    async fn start(client_ca: &Path) -> FakeAgent {
        let acceptor = tls_client::agent_acceptor(client_ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(AgentState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|der| subject(der).0);
                    st.peer_cns.lock().unwrap().push(cn);
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(agent_handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeAgent { port, state }
    }

    fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    async fn wait_follow_closed(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.state.follow_closed.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "the follow stream to the agent was not closed after the client went away"
            );
            let _ = tokio::time::timeout(left, self.state.follow_closed_notify.notified()).await;
        }
    }
}

/// (CN, O) of a DER certificate's subject.
fn subject(der: &[u8]) -> (String, String) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let s = cert.subject();
    let cn = s.iter_common_name().next().and_then(|a| a.as_str().ok());
    let o = s.iter_organization().next().and_then(|a| a.as_str().ok());
    (cn.unwrap_or("").to_string(), o.unwrap_or("").to_string())
}

async fn agent_handle(st: Arc<AgentState>, req: Request<Incoming>) -> Response<AgentBody> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    st.requests
        .lock()
        .unwrap()
        .push(format!("{} {pq}", req.method()));
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["containerLogs", ns, pod, container] => match *pod {
            "gone" => text(
                StatusCode::NOT_FOUND,
                format!("pod \"{ns}/{pod}\" not found"),
            ),
            "waiting" => text(
                StatusCode::BAD_REQUEST,
                format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                ),
            ),
            _ if query.contains("follow=true") => follow_stream(st),
            _ => text(
                StatusCode::OK,
                format!("hello from {container}\nsecond line\n"),
            ),
        },
        ["exec", _ns, _pod, _container] => agent_exec(req, &query),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `line 1`, then (after `release`) `line 2`, then nothing until the body
/// is dropped, which sets `follow_closed`.
fn follow_stream(st: Arc<AgentState>) -> Response<AgentBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from("line 1\n")))).await;
        st.release.notified().await;
        let _ = tx.send(Ok(Frame::data(Bytes::from("line 2\n")))).await;
        tx.closed().await;
        st.follow_closed.store(true, Ordering::SeqCst);
        st.follow_closed_notify.notify_waiters();
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    r
}

fn query_values(query: &str, key: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn agent_exec(mut req: Request<Incoming>, query: &str) -> Response<AgentBody> {
    let h = req.headers();
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if upgrade.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return text(
            StatusCode::BAD_REQUEST,
            format!("the fake agent does not speak {upgrade}"),
        );
    }
    let protocols: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(protocol) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| protocols.iter().any(|x| x == p))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("no supported protocol in {protocols:?}"),
        );
    };
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let command = query_values(query, "command");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        exec_session(ws, command).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(header::UPGRADE, "websocket".parse().unwrap());
    hs.insert(header::CONNECTION, "Upgrade".parse().unwrap());
    hs.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
    hs.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.parse().unwrap());
    r
}

fn chan(id: u8, data: &[u8]) -> Message {
    let mut v = vec![id];
    v.extend_from_slice(data);
    Message::binary(v)
}

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

/// `echo ARGS` prints them on stdout; `cat` echoes stdin until the v5
/// close signal `[255, 0]`; `fail` prints on stderr and exits 3.
async fn exec_session<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, command: Vec<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let status = match command.first().map(String::as_str) {
        Some("echo") => {
            let line = format!("{}\n", command[1..].join(" "));
            let _ = ws.send(chan(1, line.as_bytes())).await;
            SUCCESS.to_string()
        }
        Some("cat") => {
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Binary(b) if b.first() == Some(&0) => {
                        let _ = ws.send(chan(1, &b[1..])).await;
                    }
                    Message::Binary(b) if b.as_ref() == [255, 0] => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            SUCCESS.to_string()
        }
        Some("fail") => {
            let _ = ws.send(chan(2, b"oops\n")).await;
            json!({"metadata": {}, "status": "Failure",
                "message": "command terminated with non-zero exit code: exit status 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}})
            .to_string()
        }
        _ => json!({"metadata": {}, "status": "Failure",
            "message": format!("unknown command {command:?}")})
        .to_string(),
    };
    let _ = ws.send(chan(3, status.as_bytes())).await;
    // A normal closure: client-go treats anything else as a read error.
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await;
    while let Some(Ok(_)) = ws.next().await {}
}

// ---------------------------------------------------------------------------
// Fixtures.

fn node(name: &str, agent_port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {
            "addresses": [{"type": "Hostname", "address": "localhost"},
                          {"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}}}})
}

fn pod(name: &str, node: &str, containers: &[&str], init: &[&str]) -> Value {
    let cs = |names: &[&str]| -> Value {
        names
            .iter()
            .map(|n| json!({"name": n, "image": "busybox:1.36"}))
            .collect()
    };
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": cs(containers)}});
    if !init.is_empty() {
        p["spec"]["initContainers"] = cs(init);
    }
    if !node.is_empty() {
        p["spec"]["nodeName"] = json!(node);
    }
    p
}

/// Every object the tests use, as (collection path, object).
fn fixtures(agent_port: u16) -> Vec<(&'static str, Value)> {
    const PODS: &str = "/api/v1/namespaces/default/pods";
    vec![
        ("/api/v1/nodes", node("n1", agent_port)),
        (
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"},
                "status": {"addresses": [{"type": "InternalDNS", "address": "n2.internal"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}}}}),
        ),
        (
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n3"},
                "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
        ),
        (
            "/api/v1/nodes",
            // Nothing listens there: the connection is refused.
            node("dead", free_port()),
        ),
        (PODS, pod("p", "n1", &["c"], &[])),
        (PODS, pod("multi", "n1", &["a", "b"], &["init"])),
        (PODS, pod("unscheduled", "", &["c"], &[])),
        (PODS, pod("orphan", "ghost", &["c"], &[])),
        (PODS, pod("noaddr", "n2", &["c"], &[])),
        (PODS, pod("noport", "n3", &["c"], &[])),
        (PODS, pod("unreachable", "dead", &["c"], &[])),
        (PODS, pod("gone", "n1", &["c"], &[])),
        (PODS, pod("waiting", "n1", &["c"], &[])),
    ]
}

// ---------------------------------------------------------------------------
// The in-process API server (plain HTTP).

struct Api {
    addr: SocketAddr,
    agent: FakeAgent,
    /// The audit log (`--audit-log-path`).
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Value,
    text: String,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiPaths::new(dir.path());
    tls::ensure_pki(&pki, &[]).unwrap();
    tls::ensure_kubelet_client_cert(&pki).unwrap();
    let kubelet = KubeletClient::from_pem_files(&pki.kubelet_client_cert, &pki.kubelet_client_key)
        .unwrap()
        .with_connect_timeout(Duration::from_secs(3));
    let agent = FakeAgent::start(&pki.ca_cert).await;
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::with_kubelet_client(
        storage,
        ApiConfig {
            authenticator: Some(Authenticator::parse(TOKENS).unwrap()),
            audit: Some(api::audit::AuditLog::open(&dir.path().join("audit.log")).unwrap()),
            ..ApiConfig::default()
        },
        Some(kubelet),
    );
    state.bootstrap().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(state)).await.unwrap();
    });
    let api = Api {
        addr,
        agent,
        audit: dir.path().join("audit.log"),
        _dir: dir,
    };
    for (path, obj) in fixtures(api.agent.port) {
        let r = api
            .send("admin-token", Method::POST, path, &[], Some(obj))
            .await;
        assert!(r.status.is_success(), "{path}: {} {}", r.status, r.text);
    }
    api
}

impl Api {
    /// One request on a fresh connection; the whole body.
    async fn send(
        &self,
        token: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let resp = self.open(token, method, path, headers, body).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// One request on a fresh connection; the response with its body unread.
    /// Dropping it closes the connection.
    async fn open(
        &self,
        token: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Response<Incoming> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let b = body.map(|b| b.to_string()).unwrap_or_default();
        sender
            .send_request(req.body(Full::new(Bytes::from(b))).unwrap())
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Resp {
        self.send("admin-token", Method::GET, path, &[], None).await
    }
}

const LOG: &str = "/api/v1/namespaces/default/pods";

#[track_caller]
fn status_is(r: &Resp, code: u16, reason: &str, message: &str) {
    assert_eq!(r.status.as_u16(), code, "{}", r.text);
    assert_eq!(r.body["kind"], "Status", "{}", r.text);
    assert_eq!(r.body["status"], "Failure", "{}", r.text);
    assert_eq!(r.body["code"], code, "{}", r.text);
    assert_eq!(r.body["reason"], reason, "{}", r.text);
    assert_eq!(r.body["message"], message, "{}", r.text);
}

// ---------------------------------------------------------------------------
// Logs.

#[tokio::test(flavor = "multi_thread")]
async fn log_passthrough_with_client_certificate() {
    let api = start().await;
    let r = api
        .get(&format!(
            "{LOG}/p/log?tailLines=5&timestamps=true&insecureSkipTLSVerifyBackend=true"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain");
    assert_eq!(r.text, "hello from c\nsecond line\n");
    // The container named explicitly; sinceTime normalised to UTC.
    let r = api
        .get(&format!(
            "{LOG}/multi/log?container=init&sinceTime=2024-05-06T07:08:09%2B02:00&limitBytes=100"
        ))
        .await;
    assert_eq!(r.text, "hello from init\nsecond line\n");
    let reqs = api.agent.requests();
    assert_eq!(
        reqs,
        [
            "GET /containerLogs/default/p/c?timestamps=true&tailLines=5",
            "GET /containerLogs/default/multi/init?sinceTime=2024-05-06T05%3A08%3A09Z&limitBytes=100",
        ]
    );
    let cns = api.agent.state.peer_cns.lock().unwrap().clone();
    assert!(!cns.is_empty());
    for cn in cns {
        assert_eq!(cn.as_deref(), Some(KUBELET_CLIENT_CN));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn log_errors_as_upstream() {
    let api = start().await;
    let r = api.get(&format!("{LOG}/nope/log")).await;
    status_is(&r, 404, "NotFound", "pods \"nope\" not found");
    let r = api.get(&format!("{LOG}/multi/log")).await;
    status_is(
        &r,
        400,
        "BadRequest",
        "a container name must be specified for pod multi, choose one of: [init a b]",
    );
    let r = api.get(&format!("{LOG}/p/log?container=x")).await;
    status_is(&r, 400, "BadRequest", "container x is not valid for pod p");
    // An unscheduled pod: no location, 204 as kube-apiserver.
    let r = api.get(&format!("{LOG}/unscheduled/log")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = api.get(&format!("{LOG}/orphan/log")).await;
    status_is(&r, 404, "NotFound", "nodes \"ghost\" not found");
    let r = api.get(&format!("{LOG}/noaddr/log")).await;
    status_is(
        &r,
        500,
        "",
        "no preferred addresses found; known addresses: [{InternalDNS n2.internal}]",
    );
    let r = api.get(&format!("{LOG}/noport/log")).await;
    assert_eq!(r.status.as_u16(), 500, "{}", r.text);
    assert!(
        r.body["message"].as_str().unwrap().contains("\"n3\""),
        "{}",
        r.text
    );
    let r = api.get(&format!("{LOG}/unreachable/log")).await;
    assert_eq!(r.status.as_u16(), 500, "{}", r.text);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("/containerLogs/default/unreachable/c"),
        "{}",
        r.text
    );
    let r = api
        .send(
            "admin-token",
            Method::PUT,
            &format!("{LOG}/p/log"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    // Malformed and invalid options.
    let r = api.get(&format!("{LOG}/p/log?tailLines=ten")).await;
    status_is(
        &r,
        400,
        "BadRequest",
        "strconv.ParseInt: parsing \"ten\": invalid syntax",
    );
    let r = api.get(&format!("{LOG}/p/log?sinceTime=yesterday")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = api.get(&format!("{LOG}/p/log?tailLines=-1")).await;
    status_is(
        &r,
        422,
        "Invalid",
        "PodLogOptions \"p\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0",
    );
    let r = api
        .get(&format!(
            "{LOG}/p/log?sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    // The agent's own errors: its code and text.
    let r = api.get(&format!("{LOG}/gone/log")).await;
    status_is(&r, 404, "NotFound", "pod \"default/gone\" not found");
    let r = api.get(&format!("{LOG}/waiting/log")).await;
    status_is(
        &r,
        400,
        "BadRequest",
        "container \"c\" in pod \"waiting\" is waiting to start: ContainerCreating",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_follow_streams_and_disconnect_ends_upstream() {
    async fn next(b: &mut Incoming) -> Bytes {
        tokio::time::timeout(Duration::from_secs(5), b.frame())
            .await
            .expect("no log data within 5 s")
            .expect("stream ended")
            .unwrap()
            .into_data()
            .unwrap()
    }
    let api = start().await;
    let resp = api
        .open(
            "admin-token",
            Method::GET,
            &format!("{LOG}/p/log?follow=true"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // Line 1 arrives while the agent holds line 2 back: nothing is buffered.
    assert_eq!(next(&mut body).await, "line 1\n");
    api.agent.state.release.notify_one();
    assert_eq!(next(&mut body).await, "line 2\n");
    assert_eq!(
        api.agent.requests(),
        ["GET /containerLogs/default/p/c?follow=true"]
    );
    // The client goes away: the upstream request must end too.
    drop(body);
    api.agent.wait_follow_closed().await;
}

// ---------------------------------------------------------------------------
// Authorization and discovery.

#[tokio::test(flavor = "multi_thread")]
async fn nodes_and_strangers_are_forbidden() {
    let api = start().await;
    for (token, user) in [("n1-token", "system:node:n1"), ("nobody-token", "nobody")] {
        let r = api
            .send(token, Method::GET, &format!("{LOG}/p/log"), &[], None)
            .await;
        status_is(
            &r,
            403,
            "Forbidden",
            &format!(
                "pods \"p\" is forbidden: User \"{user}\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"default\""
            ),
        );
        for method in [Method::GET, Method::POST] {
            let r = api
                .send(
                    token,
                    method,
                    &format!("{LOG}/p/exec?command=ls&stdout=true"),
                    &[],
                    None,
                )
                .await;
            status_is(
                &r,
                403,
                "Forbidden",
                &format!(
                    "pods \"p\" is forbidden: User \"{user}\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
                ),
            );
        }
    }
    assert!(api.agent.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_lists_log_and_exec() {
    let api = start().await;
    let r = api.get("/api/v1").await;
    let find = |name: &str| {
        r.body["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in /api/v1"))
    };
    let log = find("pods/log");
    assert_eq!(log["kind"], "Pod");
    assert_eq!(log["verbs"], json!(["get"]));
    let exec = find("pods/exec");
    assert_eq!(exec["kind"], "PodExecOptions");
    assert_eq!(exec["verbs"], json!(["create", "get"]));
}

// ---------------------------------------------------------------------------
// Exec.

const WS_HEADERS: &[(&str, &str)] = &[
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-protocol", "v5.channel.k8s.io"),
];

#[tokio::test(flavor = "multi_thread")]
async fn exec_errors() {
    let api = start().await;
    let exec = |pod: &str, q: &str| format!("{LOG}/{pod}/exec?command=ls&{q}");
    let r = api.get(&exec("p", "stdout=true")).await;
    status_is(&r, 400, "BadRequest", "Upgrade request required");
    let r = api
        .send("admin-token", Method::GET, &exec("p", ""), WS_HEADERS, None)
        .await;
    status_is(
        &r,
        400,
        "BadRequest",
        "you must specify at least 1 of stdin, stdout, stderr",
    );
    let r = api
        .send(
            "admin-token",
            Method::GET,
            &exec("multi", "stdout=1"),
            WS_HEADERS,
            None,
        )
        .await;
    status_is(
        &r,
        400,
        "BadRequest",
        "a container name must be specified for pod multi, choose one of: [init a b]",
    );
    let r = api
        .send(
            "admin-token",
            Method::GET,
            &exec("unscheduled", "stdout=1"),
            WS_HEADERS,
            None,
        )
        .await;
    status_is(
        &r,
        400,
        "BadRequest",
        "pod unscheduled does not have a host assigned",
    );
    let r = api
        .send(
            "admin-token",
            Method::GET,
            &exec("nope", "stdout=1"),
            WS_HEADERS,
            None,
        )
        .await;
    status_is(&r, 404, "NotFound", "pods \"nope\" not found");
    // SPDY goes through to the agent, which refuses it: its code and text.
    let spdy = [
        ("connection", "Upgrade"),
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", "v4.channel.k8s.io"),
    ];
    let r = api
        .send(
            "admin-token",
            Method::POST,
            &exec("p", "stdout=true"),
            &spdy,
            None,
        )
        .await;
    status_is(
        &r,
        400,
        "BadRequest",
        "the fake agent does not speak SPDY/3.1",
    );
    assert_eq!(
        api.agent.requests(),
        ["POST /exec/default/p/c?command=ls&stdin=false&stdout=true&stderr=false&tty=false"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_websocket_passthrough() {
    let api = start().await;
    let url = format!(
        "ws://{}{LOG}/multi/exec?container=a&command=cat&stdin=true&stdout=true",
        api.addr
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer admin-token".parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
    );
    let tcp = TcpStream::connect(api.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    let audit_id = resp.headers()["audit-id"].to_str().unwrap().to_string();
    for chunk in ["hello ", "world\n"] {
        ws.send(chan(0, chunk.as_bytes())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, chan(1, chunk.as_bytes()));
    }
    // The session is open: the audit log has its start, not its end.
    assert_eq!(
        exec_stages(&api, &audit_id),
        ["RequestReceived", "ResponseStarted"]
    );
    // v5: stdin closed → the command ends → status on channel 3, then close.
    ws.send(Message::binary(vec![255u8, 0])).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, chan(3, SUCCESS.as_bytes()));
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(got, Message::Close(Some(ref f)) if f.code == CloseCode::Normal),
        "{got:?}"
    );
    let reqs = api.agent.requests();
    assert_eq!(
        reqs,
        ["GET /exec/default/multi/a?command=cat&stdin=true&stdout=true&stderr=false&tty=false"]
    );
    // Closed: ResponseComplete follows (with the 101), as upstream's.
    drop(ws);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while exec_stages(&api, &audit_id).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no ResponseComplete for the exec session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        exec_stages(&api, &audit_id),
        ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    );
}

/// The stages the audit log holds for `audit_id`, in order.
fn exec_stages(api: &Api, audit_id: &str) -> Vec<String> {
    std::fs::read_to_string(&api.audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["auditID"] == audit_id)
        .map(|e| {
            assert_eq!(e["objectRef"]["subresource"], "exec", "{e}");
            e["stage"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The real kubectl against the berth-apiserver binary.

fn kubectl_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

struct Binary {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Binary {
    async fn start() -> Option<Binary> {
        let Some(kubectl) = kubectl_binary() else {
            if required() {
                panic!("kubectl is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but not on PATH");
            }
            eprintln!("SKIPPED: kubectl not found on PATH");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "berth_apiserver=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let b = Binary {
            _child: child,
            dir,
            kubectl,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if b.dir.path().join("admin.kubeconfig").exists()
                && b.run(&["get", "--raw", "/readyz"], None).await.0 == 0
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "berth-apiserver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(b)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.kubectl);
        c.env("KUBECONFIG", self.dir.path().join("admin.kubeconfig"))
            .env("HOME", self.dir.path())
            .args(args)
            .kill_on_drop(true);
        c
    }

    /// Run kubectl with `stdin`; (exit code, stdout, stderr).
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(input) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(input.as_bytes()).await.unwrap();
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl did not finish within 60 s")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (code, out, err) = self.run(args, stdin).await;
        assert_eq!(
            code,
            0,
            "kubectl {args:?}: {out}{err}\n{}",
            self.server_log()
        );
        out
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_and_exec() {
    let Some(b) = Binary::start().await else {
        return;
    };
    // The binary wrote its kubelet client certificate, signed by its CA.
    let pki = PkiPaths::new(b.dir.path());
    let pem = std::fs::read(&pki.kubelet_client_cert).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(
        subject(&der),
        (KUBELET_CLIENT_CN.to_string(), "system:masters".to_string())
    );
    let agent = FakeAgent::start(&pki.ca_cert).await;
    for (_, obj) in fixtures(agent.port) {
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let file = b.dir.path().join(format!("{name}.json"));
        std::fs::write(&file, obj.to_string()).unwrap();
        b.ok(&["create", "-f", file.to_str().unwrap()], None).await;
    }

    assert_eq!(
        b.ok(&["logs", "p"], None).await,
        "hello from c\nsecond line\n"
    );
    assert_eq!(
        b.ok(&["logs", "multi", "-c", "b", "--tail=1"], None).await,
        "hello from b\nsecond line\n"
    );
    let (code, _, err) = b.run(&["logs", "p", "-c", "x"], None).await;
    assert_ne!(code, 0);
    assert!(err.contains("container x is not valid for pod p"), "{err}");

    // logs -f: line 1 while the agent holds line 2, then line 2, then
    // killing kubectl ends the stream at the agent.
    let mut child = b
        .command(&["logs", "-f", "p"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("kubectl logs -f printed nothing within 20 s")
            .unwrap()
            .unwrap_or_default()
    };
    assert_eq!(next_line().await, "line 1");
    agent.state.release.notify_one();
    assert_eq!(next_line().await, "line 2");
    child.kill().await.unwrap();
    agent.wait_follow_closed().await;

    // exec over WebSocket v5.
    assert_eq!(
        b.ok(&["exec", "p", "--", "echo", "hello", "world"], None)
            .await,
        "hello world\n"
    );
    assert_eq!(
        b.ok(&["exec", "-i", "p", "--", "cat"], Some("piped\ninput\n"))
            .await,
        "piped\ninput\n"
    );
    let (code, out, err) = b.run(&["exec", "p", "--", "fail"], None).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.starts_with("oops\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    let cns = agent.state.peer_cns.lock().unwrap().clone();
    assert!(
        cns.iter().all(|c| c.as_deref() == Some(KUBELET_CLIENT_CN)),
        "{cns:?}"
    );
    let reqs = agent.requests();
    assert!(
        reqs.contains(&"GET /exec/default/p/c?command=echo&command=hello&command=world&stdin=false&stdout=true&stderr=true&tty=false".to_string()),
        "{reqs:?}"
    );
}
