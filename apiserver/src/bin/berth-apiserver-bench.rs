//! `berth-apiserver-bench`: the API server as its users see it — the real
//! `berth-apiserver` binary over HTTPS with the admin token — on SQLite and on
//! a private etcd.
//!
//! ```text
//! berth-apiserver-bench [--pods N] [--quick] [--http1] [--storage sqlite,etcd]
//! ```
//!
//! For each backend it starts the server (`$BERTH_APISERVER_BIN`, else
//! `berth-apiserver` next to this binary) in a temporary data directory on a
//! free port and measures:
//!
//! - RSS (VmRSS) idle, after startup and a short settle;
//! - N pod creates (POST) at concurrency 1, then N more at concurrency 16
//!   (each burst in its own namespace): pods/s, p50/p99 latency;
//! - for each burst, a watch opened before it (`?watch=1&resourceVersion=<rv
//!   before the burst>`): events/s delivered and the lag of the last event
//!   behind the last create's response; then a new watch from the same
//!   resourceVersion replaying all N events;
//! - a full list of all pods (one response) and the same list in `limit=500`
//!   pages (median of 3 each), after the first burst (N pods stored) and
//!   after the second (2N);
//! - RSS after each of those lists;
//! - authorization: the same GET of one pod (sequential, 300 times) as the
//!   admin (`system:masters`, allowed before RBAC is consulted), as a user
//!   RBAC allows (a ClusterRoleBinding to `view`), and a GET of a Secret the
//!   same user is denied (403: every binding visited): p50/p99 each; and a
//!   node reading a Secret a pod bound to it names (the Node authorizer,
//!   which scans the namespace's N pods per request).
//!
//! Then it stops the server by PID (SIGINT, SIGKILL after 10 s). Figures, not
//! assertions: one JSON object on stdout, progress on stderr. HTTP/2 on one
//! connection per client by default (what client-go and kubectl do);
//! `--http1` uses HTTP/1.1 with one connection per concurrent writer (what
//! kube-rs's pooled client does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_apiserver::storage::etcd::EtcdProcess;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// Writers of the concurrent burst.
const CONCURRENCY: usize = 16;
/// Page size of the paged list.
const PAGE: usize = 500;
/// How long any single step may take before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Etcd,
}

#[derive(Debug, Parser)]
#[command(
    name = "berth-apiserver-bench",
    about = "berth-apiserver throughput and RSS over HTTPS on SQLite and etcd"
)]
struct Cli {
    /// Pods per create burst (default 1000; 300 with --quick).
    #[arg(long)]
    pods: Option<usize>,
    /// A short run: 300 pods per burst, 1 s settle.
    #[arg(long)]
    quick: bool,
    /// HTTP/1.1 (one connection per concurrent writer) instead of HTTP/2.
    #[arg(long)]
    http1: bool,
    /// Backends to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite,etcd")]
    storage: Vec<Backend>,
}

/// Where the `berth-apiserver` binary is: `$BERTH_APISERVER_BIN`, else next to
/// this executable (`target/debug/`), or one level up (`target/debug/deps/`).
fn apiserver_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_APISERVER_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("berth-apiserver"))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `/proc/PID/status` memory field in KiB (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// VmRSS of `pid` in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(rss_detail(pid)?.0)
}

/// VmRSS, RssAnon (heap) and RssFile (mapped files: the binary, SQLite's
/// shared memory) of `pid` in KiB.
fn rss_detail(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |f: &str| status_kib(&status, f).with_context(|| format!("no {f} line in {path}"));
    Ok((field("VmRSS")?, field("RssAnon")?, field("RssFile")?))
}

fn rss_json(pid: u32) -> anyhow::Result<Value> {
    let (rss, anon, file) = rss_detail(pid)?;
    Ok(json!({"vm_rss_kib": rss, "rss_anon_kib": anon, "rss_file_kib": file}))
}

/// Percent-encode a query value (continue tokens are base64 and may hold
/// `+`, `/`, `=`).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// HTTPS client

/// The admin credentials and TLS setup read from `admin.kubeconfig`.
#[derive(Clone)]
struct ClientConfig {
    port: u16,
    token: String,
    tls: tokio_rustls::TlsConnector,
    http1: bool,
}

/// The value of the first `key: value` line in a kubeconfig. The server
/// writes its kubeconfig itself, with one cluster and one user, so a line scan
/// is enough (no YAML parser in this crate).
fn kubeconfig_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .find_map(|rest| rest.strip_prefix(':'))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl ClientConfig {
    fn from_kubeconfig(path: &Path, port: u16, http1: bool) -> anyhow::Result<ClientConfig> {
        use base64::Engine;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let token = kubeconfig_field(&text, "token")
            .with_context(|| format!("{}: no user token", path.display()))?
            .to_string();
        let ca_b64 = kubeconfig_field(&text, "certificate-authority-data")
            .with_context(|| format!("{}: no certificate-authority-data", path.display()))?;
        let ca_pem = base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .with_context(|| format!("{}: certificate-authority-data", path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            roots
                .add(cert.context("parsing the CA certificate")?)
                .context("adding the CA certificate")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = if http1 {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec()]
        };
        Ok(ClientConfig {
            port,
            token,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            http1,
        })
    }

    /// A new TCP + TLS connection with its HTTP handshake done; the
    /// connection is driven by a spawned task.
    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{}", self.port))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let io = TokioIo::new(tls);
        let sender = if self.http1 {
            let (sender, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/1.1 connection ended");
                }
            });
            Sender::H1(sender)
        } else {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                }
            });
            Sender::H2(sender)
        };
        Ok(Conn {
            config: self.clone(),
            sender,
        })
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection (HTTP/2: shareable between tasks with
/// [`Conn::for_worker`]).
struct Conn {
    config: ClientConfig,
    sender: Sender,
}

impl Conn {
    /// The connection a concurrent worker uses: HTTP/2 multiplexes streams on
    /// this one; HTTP/1.1 needs a connection of its own.
    async fn for_worker(&self) -> anyhow::Result<Conn> {
        match &self.sender {
            Sender::H2(s) => Ok(Conn {
                config: self.config.clone(),
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => self.config.connect().await,
        }
    }

    /// Send a request; the response with its body unread.
    async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        let authority = format!("127.0.0.1:{}", self.config.port);
        // HTTP/2 takes :scheme/:authority from an absolute URI; HTTP/1.1
        // sends the origin form with a Host header.
        let uri = match self.sender {
            Sender::H2(_) => format!("https://{authority}{path_and_query}"),
            Sender::H1(_) => path_and_query.to_string(),
        };
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("authorization", format!("Bearer {}", self.config.token))
            .header("accept", "application/json")
            .header("user-agent", "berth-apiserver-bench");
        if matches!(self.sender, Sender::H1(_)) {
            builder = builder.header("host", &authority);
        }
        let req = match body {
            Some(b) => builder
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(b))),
            None => builder.body(Full::new(Bytes::new())),
        }
        .with_context(|| format!("building {method} {path_and_query}"))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.context("connection closed")?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.context("connection closed")?;
                s.send_request(req).await
            }
        }
        .with_context(|| format!("{method} {path_and_query}"))?;
        Ok(resp)
    }

    /// Send a request and read the whole body; fails unless the status is `want`.
    async fn call(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        want: StatusCode,
    ) -> anyhow::Result<Bytes> {
        let resp = self.send(method.clone(), path_and_query, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the body of {method} {path_and_query}"))?
            .to_bytes();
        if status != want {
            bail!(
                "{method} {path_and_query}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }

    async fn get_json(&mut self, path_and_query: &str) -> anyhow::Result<Value> {
        let bytes = self
            .call(Method::GET, path_and_query, None, StatusCode::OK)
            .await?;
        serde_json::from_slice(&bytes).with_context(|| format!("decoding GET {path_and_query}"))
    }
}

// ---------------------------------------------------------------------------
// The server process

/// A running `berth-apiserver` in a temporary data directory.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// Start `binary` (`etcd`: the etcd endpoint for `--storage etcd`) and wait
    /// until it answers an authenticated request. Free ports are picked by
    /// binding port 0 and releasing it; another process may take one in
    /// between, so a server that exits during startup is retried.
    async fn start(
        binary: &Path,
        etcd: Option<&str>,
        http1: bool,
    ) -> anyhow::Result<(Server, Conn)> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(binary, etcd, http1).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    eprintln!("apiserver-bench: start failed, retrying: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("berth-apiserver did not start")))
    }

    async fn try_start(
        binary: &Path,
        etcd: Option<&str>,
        http1: bool,
    ) -> anyhow::Result<(Server, Conn)> {
        let dir = tempfile::Builder::new()
            .prefix("berth-apiserver-bench-")
            .tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("apiserver.log"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        match etcd {
            Some(endpoint) => cmd.args(["--storage", "etcd", "--etcd-servers", endpoint]),
            None => cmd.args(["--storage", "sqlite"]),
        };
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = Server { child, port, dir };
        let kubeconfig = server.dir.path().join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "berth-apiserver exited with {status}; log:\n{}",
                    server.log()
                );
            }
            if kubeconfig.exists() {
                let ready = async {
                    let config = ClientConfig::from_kubeconfig(&kubeconfig, port, http1)?;
                    let mut conn = config.connect().await?;
                    conn.get_json("/api/v1/namespaces?limit=1").await?;
                    anyhow::Ok(conn)
                };
                if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), ready).await {
                    return Ok((server, conn));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "berth-apiserver did not become ready within 30 s; log:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// SIGINT (the server's graceful stop) to this PID, then SIGKILL if it
    /// has not exited within 10 s.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.child.try_wait()?.is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!("apiserver-bench: berth-apiserver {pid} ignored SIGINT; killing it");
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached on an error path (stop() reaps the child first); std's
        // Child::kill sends SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Measurements

fn pod_json(ns: &str, i: usize) -> Vec<u8> {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:06}"), "namespace": ns,
                     "labels": {"app": format!("app-{}", i % 10), "bench": "apiserver"}},
        "spec": {
            "containers": [{
                "name": "c", "image": "localhost/berth/busybox:1.36",
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
            }],
            "restartPolicy": "Always"
        }
    })
    .to_string()
    .into_bytes()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn rate(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64() * 10.0).round() / 10.0
}

/// Latencies of `n` sequential GETs of `path` on `conn`, answered `want`.
async fn timed_gets(
    conn: &mut Conn,
    path: &str,
    want: StatusCode,
    n: usize,
) -> anyhow::Result<Value> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.call(Method::GET, path, None, want).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(json!({
        "requests": n,
        "p50_ms": ms(quantile(&lat, 0.5)),
        "p99_ms": ms(quantile(&lat, 0.99)),
    }))
}

/// Authorization cost: the admin, an RBAC-allowed user and an RBAC-denied
/// request, side by side (see the module docs). `pod_path`: a pod that exists.
async fn authz(
    server: &Server,
    binary: &Path,
    admin: &mut Conn,
    pod_path: &str,
) -> anyhow::Result<Value> {
    const N: usize = 300;
    let user = "bench-viewer";
    let text = kubeconfig_text(server, binary, &["--user", user])?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "bench-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    });
    admin
        .call(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            Some(binding.to_string().into_bytes()),
            StatusCode::CREATED,
        )
        .await?;
    let mut viewer = Conn {
        config: ClientConfig {
            token: kubeconfig_field(&text, "token")
                .context("the user kubeconfig has no token")?
                .to_string(),
            ..admin.config.clone()
        },
        sender: admin.for_worker().await?.sender,
    };
    // Warm both paths (connection, caches) before timing.
    timed_gets(admin, pod_path, StatusCode::OK, 10).await?;
    timed_gets(&mut viewer, pod_path, StatusCode::OK, 10).await?;
    let secret = "/api/v1/namespaces/default/secrets/none";
    let mut out = json!({
        "get_pod_admin": timed_gets(admin, pod_path, StatusCode::OK, N).await?,
        "get_pod_rbac_allowed": timed_gets(&mut viewer, pod_path, StatusCode::OK, N).await?,
        "get_secret_rbac_denied": timed_gets(&mut viewer, secret, StatusCode::FORBIDDEN, N).await?,
    });
    // The Node authorizer: a node reading a Secret that a pod bound to it
    // names, in a namespace of `pods_in_namespace` pods (the authorizer
    // scans that namespace's pods per request).
    let ns = pod_path
        .split('/')
        .nth(4)
        .context("pod path has no namespace")?;
    let node = "bench-node";
    let node_text = kubeconfig_text(server, binary, &["--node", node])?;
    let secret_obj = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bench-secret"}, "stringData": {"k": "v"}});
    admin
        .call(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/secrets"),
            Some(secret_obj.to_string().into_bytes()),
            StatusCode::CREATED,
        )
        .await?;
    let bound = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench-secret-user"},
        "spec": {"nodeName": node,
            "containers": [{"name": "c", "image": "localhost/berth/busybox:1.36"}],
            "volumes": [{"name": "s", "secret": {"secretName": "bench-secret"}}]}});
    admin
        .call(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/pods"),
            Some(bound.to_string().into_bytes()),
            StatusCode::CREATED,
        )
        .await?;
    let pods_in_namespace = admin
        .get_json(&format!("/api/v1/namespaces/{ns}/pods"))
        .await?["items"]
        .as_array()
        .map_or(0, Vec::len);
    let mut node_conn = Conn {
        config: ClientConfig {
            token: kubeconfig_field(&node_text, "token")
                .context("the node kubeconfig has no token")?
                .to_string(),
            ..admin.config.clone()
        },
        sender: admin.for_worker().await?.sender,
    };
    let secret_path = format!("/api/v1/namespaces/{ns}/secrets/bench-secret");
    timed_gets(&mut node_conn, &secret_path, StatusCode::OK, 10).await?;
    out["get_secret_node_authorizer"] =
        timed_gets(&mut node_conn, &secret_path, StatusCode::OK, N).await?;
    out["get_secret_node_authorizer"]["pods_in_namespace"] = json!(pods_in_namespace);
    Ok(out)
}

/// `berth-apiserver kubeconfig --data-dir <server's> <who...>`: the kubeconfig text.
fn kubeconfig_text(server: &Server, binary: &Path, who: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .args(["kubeconfig", "--data-dir"])
        .arg(server.dir.path())
        .args(who)
        .output()
        .context("berth-apiserver kubeconfig")?;
    if !out.status.success() {
        bail!(
            "berth-apiserver kubeconfig {}: {}",
            who.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("kubeconfig is not UTF-8")
}

/// The `q` quantile of sorted durations (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Counts watch events on an open watch response until `n` ADDED events
/// arrived; the instant the last one arrived.
async fn count_events(resp: Response<Incoming>, n: usize) -> anyhow::Result<Instant> {
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        bail!("watch: {status}: {}", String::from_utf8_lossy(&body));
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut count = 0usize;
    let mut last = Instant::now();
    while count < n {
        let frame = match body.frame().await {
            Some(f) => f.context("reading the watch stream")?,
            None => bail!("watch stream ended after {count} of {n} events"),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        // One JSON event per line.
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = serde_json::from_slice(&line).context("decoding a watch event")?;
            match ev["type"].as_str() {
                Some("ADDED") => {
                    count += 1;
                    last = Instant::now();
                }
                Some("ERROR") => bail!("watch error after {count} events: {}", ev["object"]),
                _ => {}
            }
        }
    }
    Ok(last)
}

/// The current resourceVersion of the pods in `ns` (a list's revision).
async fn current_rv(conn: &mut Conn, ns: &str) -> anyhow::Result<String> {
    let list = conn
        .get_json(&format!("/api/v1/namespaces/{ns}/pods?limit=1"))
        .await?;
    list["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("pod list of {ns} has no resourceVersion"))
}

/// N creates in `ns` at `concurrency`, with a live watch opened before them
/// and a replaying watch after.
async fn burst(
    conn: &mut Conn,
    label: &str,
    ns: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    conn.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                .to_string()
                .into_bytes(),
        ),
        StatusCode::CREATED,
    )
    .await?;
    let rv = current_rv(conn, ns).await?;
    let watch_path = format!("/api/v1/namespaces/{ns}/pods?watch=1&resourceVersion={rv}");

    // The live watcher is another client: a connection of its own.
    let mut watch_conn = conn.config.connect().await?;
    let watch_resp = watch_conn.send(Method::GET, &watch_path, None).await?;
    let watcher = tokio::spawn(count_events(watch_resp, n));

    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut c = conn.for_worker().await?;
        let ns = ns.to_string();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n / concurrency + 1);
            let mut bytes = 0usize;
            let mut i = w;
            while i < n {
                let path = format!("/api/v1/namespaces/{ns}/pods");
                let t = Instant::now();
                let body = c
                    .call(
                        Method::POST,
                        &path,
                        Some(pod_json(&ns, i)),
                        StatusCode::CREATED,
                    )
                    .await?;
                latencies.push(t.elapsed());
                bytes = body.len();
                i += concurrency;
            }
            anyhow::Ok((latencies, bytes))
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut pod_bytes = 0;
    for w in workers {
        let (l, b) = tokio::time::timeout(STEP_TIMEOUT, w)
            .await
            .with_context(|| format!("{label}: creates did not finish"))???;
        latencies.extend(l);
        pod_bytes = pod_bytes.max(b);
    }
    let creates_done = Instant::now();
    let create_elapsed = creates_done - start;
    latencies.sort();
    eprintln!(
        "apiserver-bench: {label}: {n} creates at concurrency {concurrency}: {:.2} s",
        create_elapsed.as_secs_f64()
    );

    let last_event = tokio::time::timeout(STEP_TIMEOUT, watcher)
        .await
        .with_context(|| format!("{label}: live watch did not get {n} events"))???;
    let watch_elapsed = last_event - start;
    // The event of the last create may even arrive before that create's
    // response does: then the lag is 0.
    let lag = last_event.saturating_duration_since(creates_done);
    drop(watch_conn);

    // Replay: a new watch from the same resourceVersion.
    let mut replay_conn = conn.config.connect().await?;
    let t = Instant::now();
    let resp = replay_conn.send(Method::GET, &watch_path, None).await?;
    let replay_last = tokio::time::timeout(STEP_TIMEOUT, count_events(resp, n))
        .await
        .with_context(|| format!("{label}: replay did not get {n} events"))??;
    let replay_elapsed = replay_last - t;
    drop(replay_conn);
    eprintln!(
        "apiserver-bench: {label}: watch live {:.2} s, replay {:.2} s",
        watch_elapsed.as_secs_f64(),
        replay_elapsed.as_secs_f64()
    );

    Ok(json!({
        "create": {
            "pods": n,
            "concurrency": concurrency,
            "seconds": (create_elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "pods_per_sec": rate(n, create_elapsed),
            "p50_ms": ms(quantile(&latencies, 0.50)),
            "p99_ms": ms(quantile(&latencies, 0.99)),
            "max_ms": ms(latencies.last().copied().unwrap_or_default()),
            "response_bytes": pod_bytes,
        },
        "watch_live": {
            "events": n,
            "events_per_sec": rate(n, watch_elapsed),
            "last_event_lag_ms": ms(lag),
        },
        "watch_replay": {
            "events": n,
            "events_per_sec": rate(n, replay_elapsed),
            "seconds": (replay_elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        },
    }))
}

/// Lists per measurement; the median is reported (one list is short enough
/// for a scheduler tick or a GC pause to double it).
const LIST_RUNS: usize = 3;

/// One full list of all pods: its latency and size in bytes.
async fn full_list(conn: &mut Conn, want: usize) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let bytes = conn
        .call(Method::GET, "/api/v1/pods", None, StatusCode::OK)
        .await?;
    let list: Value = serde_json::from_slice(&bytes).context("decoding the pod list")?;
    let elapsed = t.elapsed();
    let items = list["items"].as_array().map_or(0, Vec::len);
    if items != want {
        bail!("full list returned {items} pods, expected {want}");
    }
    Ok((elapsed, bytes.len()))
}

/// All pods in pages of [`PAGE`]: the latency of the whole walk and the
/// number of pages.
async fn paged_list(conn: &mut Conn, want: usize) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let mut pages = 0usize;
    let mut items = 0usize;
    let mut cont: Option<String> = None;
    loop {
        let path = match &cont {
            None => format!("/api/v1/pods?limit={PAGE}"),
            Some(c) => format!("/api/v1/pods?limit={PAGE}&continue={}", encode_query(c)),
        };
        let page = conn.get_json(&path).await?;
        pages += 1;
        items += page["items"].as_array().map_or(0, Vec::len);
        cont = page["metadata"]["continue"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if cont.is_none() {
            break;
        }
        if pages > want / PAGE + 2 {
            bail!("paged list did not end after {pages} pages");
        }
    }
    let elapsed = t.elapsed();
    if items != want {
        bail!("paged list returned {items} pods, expected {want}");
    }
    Ok((elapsed, pages))
}

/// The full list and the paged list of all pods, [`LIST_RUNS`] times each.
async fn list_all(conn: &mut Conn, want: usize) -> anyhow::Result<Value> {
    let mut full = Vec::new();
    let mut paged = Vec::new();
    let mut bytes = 0;
    let mut pages = 0;
    for _ in 0..LIST_RUNS {
        let (d, b) = full_list(conn, want).await?;
        full.push(d);
        bytes = b;
        let (d, p) = paged_list(conn, want).await?;
        paged.push(d);
        pages = p;
    }
    full.sort();
    paged.sort();
    let (full, paged) = (quantile(&full, 0.5), quantile(&paged, 0.5));
    eprintln!(
        "apiserver-bench: list of {want} pods: full {:.1} ms ({bytes} bytes), {pages} pages {:.1} ms",
        ms(full),
        ms(paged)
    );
    Ok(json!({
        "pods": want,
        "full_ms": ms(full),
        "full_bytes": bytes,
        "paged_ms": ms(paged),
        "page_limit": PAGE,
        "pages": pages,
        "runs": LIST_RUNS,
    }))
}

/// Everything for one backend: `etcd` is the endpoint with `--storage etcd`.
async fn run_backend(
    binary: &Path,
    etcd: Option<&str>,
    n: usize,
    settle: Duration,
    http1: bool,
) -> anyhow::Result<Value> {
    let (server, mut conn) = Server::start(binary, etcd, http1).await?;
    let pid = server.pid();
    eprintln!(
        "apiserver-bench: berth-apiserver pid {pid} on port {}",
        server.port
    );
    tokio::time::sleep(settle).await;
    let rss_idle = rss_json(pid)?;

    let result = async {
        let c1 = burst(&mut conn, "concurrency 1", "bench-c1", n, 1).await?;
        let list_n = list_all(&mut conn, n).await?;
        let rss_n = rss_json(pid)?;
        let c16 = burst(&mut conn, "concurrency 16", "bench-c16", n, CONCURRENCY).await?;
        let list_2n = list_all(&mut conn, 2 * n).await?;
        let rss_2n = rss_json(pid)?;
        let authz = authz(
            &server,
            binary,
            &mut conn,
            "/api/v1/namespaces/bench-c1/pods/pod-000000",
        )
        .await?;
        anyhow::Ok(json!({
            "rss_idle_kib": rss_idle["vm_rss_kib"],
            "rss_n_pods_kib": rss_n["vm_rss_kib"],
            "rss_2n_pods_kib": rss_2n["vm_rss_kib"],
            "rss_detail": {"idle": rss_idle, "n_pods": rss_n, "2n_pods": rss_2n},
            "concurrency_1": c1,
            "concurrency_16": c16,
            "list_n_pods": list_n,
            "list_2n_pods": list_2n,
            "authz": authz,
        }))
    }
    .await;
    match result {
        Ok(v) => {
            drop(conn);
            server.stop().await?;
            Ok(v)
        }
        Err(e) => Err(e.context(format!("berth-apiserver log:\n{}", server.log()))),
    }
}

fn etcd_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let n = cli.pods.unwrap_or(if cli.quick { 300 } else { 1000 });
    if n == 0 {
        bail!("--pods must be at least 1");
    }
    let settle = Duration::from_secs(if cli.quick { 1 } else { 3 });
    let Some(binary) = apiserver_binary() else {
        bail!(
            "berth-apiserver not found: run `cargo build -p berth-apiserver` or set BERTH_APISERVER_BIN"
        );
    };

    let mut out = json!({
        "bench": "apiserver",
        "pods": n,
        "http": if cli.http1 { "http/1.1" } else { "h2" },
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    for backend in &cli.storage {
        match backend {
            Backend::Sqlite => {
                eprintln!("apiserver-bench: sqlite, {n} pods per burst");
                out["sqlite"] = run_backend(&binary, None, n, settle, cli.http1)
                    .await
                    .context("sqlite")?;
            }
            Backend::Etcd => {
                let Some(etcd_bin) = EtcdProcess::binary() else {
                    eprintln!(
                        "apiserver-bench: no etcd binary (integration/setup.sh installs etcd-server; or set BERTH_ETCD): etcd skipped"
                    );
                    out["etcd"] = Value::Null;
                    continue;
                };
                eprintln!("apiserver-bench: etcd, {n} pods per burst");
                let etcd = EtcdProcess::start(&etcd_bin)
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("starting etcd")?;
                eprintln!(
                    "apiserver-bench: etcd pid {} at {}",
                    etcd.pid(),
                    etcd.endpoint()
                );
                let mut r = run_backend(&binary, Some(etcd.endpoint()), n, settle, cli.http1)
                    .await
                    .context("etcd")?;
                r["etcd_rss_kib"] = json!(rss_kib(etcd.pid())?);
                r["etcd_version"] = json!(etcd_version(&etcd_bin));
                // Dropping EtcdProcess kills that PID and removes its directory.
                drop(etcd);
                out["etcd"] = r;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_fields_are_found() {
        let text = "clusters:\n- cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: QUJD\nusers:\n- name: admin\n  user:\n    token: abc123\n";
        assert_eq!(
            kubeconfig_field(text, "certificate-authority-data"),
            Some("QUJD")
        );
        assert_eq!(kubeconfig_field(text, "token"), Some("abc123"));
        assert_eq!(kubeconfig_field(text, "password"), None);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn continue_tokens_are_percent_encoded() {
        assert_eq!(encode_query("ab+/=c-_.~"), "ab%2B%2F%3Dc-_.~");
    }

    #[test]
    fn proc_status_fields_parse() {
        let status =
            "Name:\tx\nVmRSS:\t   23504 kB\nRssAnon:\t    2904 kB\nRssFile:\t   20600 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(23504));
        assert_eq!(status_kib(status, "RssAnon"), Some(2904));
        assert_eq!(status_kib(status, "Rss"), None);
    }
}
