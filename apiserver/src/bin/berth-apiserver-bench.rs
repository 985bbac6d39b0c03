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
//! Those are the `core` section. The others (`--sections`) each run on a
//! fresh server (and, for etcd, a fresh private etcd):
//!
//! - `fanout`: 1,000 watches (`--quick`: 100) of one namespace's pods,
//!   100 streams per HTTP/2 connection, opened before 200 creates (100) at
//!   concurrency 16: events/s delivered in total, each watcher's last-event
//!   lag behind the last create's response (p50/p99/max), server (and etcd)
//!   CPU, RSS before, with the watches open, after delivery, after closing;
//! - `leases`: 5,000 Ready nodes (500) with Leases, the server started with
//!   `--metric-resolution 1h --node-monitor-grace-period 10m`: CPU and RSS
//!   idle without nodes, idle with them (the node lifecycle controller's pass
//!   every 5 s is then all the server does: it has no switch to turn the
//!   controller off), and while every Lease is renewed every 10 s (a PUT with
//!   its last resourceVersion, spread evenly: 500/s); then the controller's
//!   `monitor_once` over the same number of nodes timed in this process on
//!   the same kind of storage (wall and CPU per pass);
//! - `scale`: RSS after 10,000 and 50,000 pods are stored (`--quick`:
//!   2,000), created at concurrency 16, and after one walk of all of them in
//!   pages of 500.
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
    /// Sections to run per backend, in order; each but `core` on a fresh
    /// server.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "core,fanout,leases,scale"
    )]
    sections: Vec<Section>,
    /// Fan-out: watchers (default 1000; 100 with --quick).
    #[arg(long)]
    watchers: Option<usize>,
    /// Fan-out: pods created while the watchers are open (default 200; 100
    /// with --quick).
    #[arg(long)]
    fanout_pods: Option<usize>,
    /// Scale: pods stored at which RSS is read (default 10000,50000; 2000
    /// with --quick).
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,
    /// Leases: nodes renewing their Lease every 10 s (default 5000; 500 with
    /// --quick).
    #[arg(long)]
    lease_nodes: Option<usize>,
    /// Leases: seconds of each idle window; the renewals run twice as long
    /// (default 15; 5 with --quick).
    #[arg(long)]
    lease_window: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Creates, watches, lists, RSS and authorization (see the module docs).
    Core,
    /// Many watchers on one namespace's pods.
    Fanout,
    /// Node Leases renewed at upstream's interval; the node lifecycle
    /// controller's pass.
    Leases,
    /// RSS with many pods stored.
    Scale,
}

/// The sizes of one run.
struct Params {
    n: usize,
    settle: Duration,
    http1: bool,
    sections: Vec<Section>,
    watchers: usize,
    fanout_pods: usize,
    scale: Vec<usize>,
    lease_nodes: usize,
    lease_window: Duration,
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
        extra: &[&str],
    ) -> anyhow::Result<(Server, Conn)> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(binary, etcd, http1, extra).await {
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
        extra: &[&str],
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
            .args(extra)
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

/// Creates pods `first..first + n` in `ns` at `concurrency` (HTTP/2 streams
/// on `conn`'s connection; with `--http1`, a connection per writer): each
/// create's latency (sorted), and the largest response body.
async fn create_pods(
    conn: &Conn,
    ns: &str,
    first: usize,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut c = conn.for_worker().await?;
        let ns = ns.to_string();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n / concurrency + 1);
            let mut bytes = 0usize;
            let path = format!("/api/v1/namespaces/{ns}/pods");
            let mut i = w;
            while i < n {
                let t = Instant::now();
                let body = c
                    .call(
                        Method::POST,
                        &path,
                        Some(pod_json(&ns, first + i)),
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
    let mut bytes = 0;
    for w in workers {
        let (l, b) = tokio::time::timeout(STEP_TIMEOUT, w)
            .await
            .context("creates did not finish")???;
        latencies.extend(l);
        bytes = bytes.max(b);
    }
    latencies.sort();
    Ok((latencies, bytes))
}

/// Creates namespace `ns`.
async fn create_namespace(conn: &mut Conn, ns: &str) -> anyhow::Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    conn.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(body.to_string().into_bytes()),
        StatusCode::CREATED,
    )
    .await?;
    Ok(())
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
    create_namespace(conn, ns).await?;
    let rv = current_rv(conn, ns).await?;
    let watch_path = format!("/api/v1/namespaces/{ns}/pods?watch=1&resourceVersion={rv}");

    // The live watcher is another client: a connection of its own.
    let mut watch_conn = conn.config.connect().await?;
    let watch_resp = watch_conn.send(Method::GET, &watch_path, None).await?;
    let watcher = tokio::spawn(count_events(watch_resp, n));

    let start = Instant::now();
    let (latencies, pod_bytes) = create_pods(conn, ns, 0, n, concurrency)
        .await
        .with_context(|| format!("{label}: creates"))?;
    let creates_done = Instant::now();
    let create_elapsed = creates_done - start;
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

// ---------------------------------------------------------------------------
// Process and machine figures

/// utime + stime of `pid` in seconds, from /proc/PID/stat (in USER_HZ ticks,
/// 100 per second on every Linux this runs on).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: count fields after its ')'.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: no command name"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    Ok((tick(11)? + tick(12)?) as f64 / 100.0)
}

/// CPU time of `pid` in seconds with nanosecond resolution: the sum over its
/// threads of /proc/PID/task/TID/schedstat's first field (time on a CPU, ns).
/// For short spans (a controller pass of a few ms); threads that exit in
/// between take their time with them.
fn cpu_seconds_fine(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{}: no CPU time", path.display()))?;
    }
    Ok(ns as f64 / 1e9)
}

/// CPU of one process over a window, in % of one core.
struct CpuWindow {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuWindow {
    fn start(pid: u32) -> anyhow::Result<CpuWindow> {
        Ok(CpuWindow {
            pid,
            cpu: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    fn percent(&self) -> anyhow::Result<f64> {
        let used = cpu_seconds(self.pid)? - self.cpu;
        let pct = used / self.at.elapsed().as_secs_f64() * 100.0;
        Ok((pct * 100.0).round() / 100.0)
    }
}

/// What the figures depend on besides the code: CPUs, model, memory, kernel.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "memory_kib": status_kib(&read("/proc/meminfo"), "MemTotal"),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

// ---------------------------------------------------------------------------
// Watch fan-out

/// Watch streams per HTTP/2 connection in the fan-out (hyper's server allows
/// 200 concurrent streams per connection; client-go multiplexes its watches
/// the same way).
const WATCHES_PER_CONN: usize = 100;

/// The `type` of one watch event line without decoding the object (the
/// server writes `{"object":…,"type":"ADDED"}`; either key order is accepted).
fn event_type(line: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"type\":\"";
    let find = |hay: &[u8]| hay.windows(KEY.len()).position(|w| w == KEY);
    let tail = line.len().saturating_sub(40);
    let at = find(&line[tail..])
        .map(|p| tail + p)
        .or_else(|| find(&line[..line.len().min(40)]))?;
    let rest = &line[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// Like [`count_events`], for many watchers at once: scans lines instead of
/// decoding them (a thousand decoding clients would measure this process).
async fn count_added(resp: Response<Incoming>, n: usize) -> anyhow::Result<Instant> {
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        bail!("watch: {status}: {}", String::from_utf8_lossy(&body));
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let (mut count, mut last) = (0usize, Instant::now());
    while count < n {
        let frame = match body.frame().await {
            Some(f) => f.context("reading the watch stream")?,
            None => bail!("watch stream ended after {count} of {n} events"),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + pos];
            match event_type(line) {
                Some(b"ADDED") => {
                    count += 1;
                    last = Instant::now();
                }
                Some(b"ERROR") => bail!(
                    "watch error after {count} events: {}",
                    String::from_utf8_lossy(line)
                ),
                _ => {}
            }
            start += pos + 1;
        }
        buf.drain(..start);
    }
    Ok(last)
}

/// `watchers` watches on the pods of one namespace, then `n` creates there
/// at concurrency 16: events/s delivered in total, the last event's lag per
/// watcher (p50/p99/max), the server's RSS and CPU.
async fn fanout(
    conn: &mut Conn,
    pids: Pids,
    watchers: usize,
    n: usize,
    settle: Duration,
) -> anyhow::Result<Value> {
    let ns = "bench-fanout";
    create_namespace(conn, ns).await?;
    let rss_before = rss_json(pids.server)?;
    let rv = current_rv(conn, ns).await?;
    let path = format!("/api/v1/namespaces/{ns}/pods?watch=1&resourceVersion={rv}");
    let connections = watchers.div_ceil(WATCHES_PER_CONN);
    let mut pool = Vec::with_capacity(connections);
    for _ in 0..connections {
        pool.push(conn.config.connect().await?);
    }
    let opened = Instant::now();
    let mut opens = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut c = pool[i % connections].for_worker().await?;
        let path = path.clone();
        opens.push(async move { c.send(Method::GET, &path, None).await });
    }
    let responses = tokio::time::timeout(STEP_TIMEOUT, futures::future::try_join_all(opens))
        .await
        .context("opening the watches")??;
    let open_elapsed = opened.elapsed();
    let tasks: Vec<_> = responses
        .into_iter()
        .map(|r| tokio::spawn(count_added(r, n)))
        .collect();
    tokio::time::sleep(settle).await;
    let rss_open = rss_json(pids.server)?;
    eprintln!(
        "apiserver-bench: fan-out: {watchers} watches open on {connections} connections in {:.2} s",
        open_elapsed.as_secs_f64()
    );

    let cpu = CpuWindow::start(pids.server)?;
    let etcd_cpu = pids.etcd.map(CpuWindow::start).transpose()?;
    let start = Instant::now();
    let (latencies, _) = create_pods(conn, ns, 0, n, CONCURRENCY).await?;
    let creates_done = Instant::now();
    let mut lasts = Vec::with_capacity(watchers);
    for t in tasks {
        let last = tokio::time::timeout(STEP_TIMEOUT, t)
            .await
            .context("fan-out: a watcher did not get every event")???;
        lasts.push(last);
    }
    let all_done = lasts.iter().max().copied().unwrap_or(creates_done);
    let (cpu, etcd_cpu) = (cpu.percent()?, etcd_cpu.map(|c| c.percent()).transpose()?);
    let rss_delivered = rss_json(pids.server)?;
    let mut lags: Vec<Duration> = lasts
        .iter()
        .map(|l| l.saturating_duration_since(creates_done))
        .collect();
    lags.sort();
    let delivered = watchers * n;
    eprintln!(
        "apiserver-bench: fan-out: {delivered} events in {:.2} s ({} creates in {:.2} s)",
        (all_done - start).as_secs_f64(),
        n,
        (creates_done - start).as_secs_f64()
    );
    drop(pool);
    tokio::time::sleep(settle).await;
    let rss_closed = rss_json(pids.server)?;
    Ok(json!({
        "watchers": watchers,
        "connections": connections,
        "watches_per_connection": WATCHES_PER_CONN,
        "http": if conn.config.http1 { "http/1.1" } else { "h2" },
        "scope": "pods of one namespace, from the resourceVersion before the creates",
        "pods_created": n,
        "events_delivered": delivered,
        "open_seconds": (open_elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "seconds": ((all_done - start).as_secs_f64() * 1000.0).round() / 1000.0,
        "events_per_sec": rate(delivered, all_done - start),
        "creates_per_sec": rate(n, creates_done - start),
        "create_p99_ms": ms(quantile(&latencies, 0.99)),
        "last_event_lag_ms": {
            "p50": ms(quantile(&lags, 0.5)),
            "p99": ms(quantile(&lags, 0.99)),
            "max": ms(lags.last().copied().unwrap_or_default()),
        },
        "server_cpu_percent_of_one_core": cpu,
        "etcd_cpu_percent_of_one_core": etcd_cpu,
        "rss_before_kib": rss_before["vm_rss_kib"],
        "rss_watchers_open_kib": rss_open["vm_rss_kib"],
        "rss_after_delivery_kib": rss_delivered["vm_rss_kib"],
        "rss_watchers_closed_kib": rss_closed["vm_rss_kib"],
        "rss_detail": {"before": rss_before, "watchers_open": rss_open,
                       "after_delivery": rss_delivered, "watchers_closed": rss_closed},
    }))
}

// ---------------------------------------------------------------------------
// RSS with many pods

/// On a fresh server: pods created (concurrency 16) until `targets` pods are
/// stored, the server's RSS at each; then one walk of all pods in pages of
/// [`PAGE`] (what an informer's initial list does) and the RSS after it.
async fn scale(
    conn: &mut Conn,
    pids: Pids,
    targets: &[usize],
    settle: Duration,
) -> anyhow::Result<Value> {
    let ns = "bench-scale";
    create_namespace(conn, ns).await?;
    let rss_idle = rss_json(pids.server)?;
    let mut stored = 0usize;
    let mut points = Vec::new();
    for &target in targets {
        let n = target.saturating_sub(stored);
        let t = Instant::now();
        let (latencies, _) = create_pods(conn, ns, stored, n, CONCURRENCY).await?;
        let elapsed = t.elapsed();
        stored = target;
        tokio::time::sleep(settle).await;
        let rss = rss_json(pids.server)?;
        eprintln!(
            "apiserver-bench: scale: {target} pods stored ({n} created in {:.1} s), RSS {} KiB",
            elapsed.as_secs_f64(),
            rss["vm_rss_kib"]
        );
        let etcd_rss = pids.etcd.map(rss_kib).transpose()?;
        points.push(json!({
            "pods": target,
            "created": n,
            "creates_per_sec": rate(n, elapsed),
            "create_p99_ms": ms(quantile(&latencies, 0.99)),
            "rss_kib": rss["vm_rss_kib"],
            "rss_detail": rss,
            "etcd_rss_kib": etcd_rss,
        }));
    }
    let (paged, pages) = paged_list(conn, stored).await?;
    let rss_listed = rss_json(pids.server)?;
    eprintln!(
        "apiserver-bench: scale: {stored} pods in {pages} pages: {:.0} ms, RSS {} KiB",
        ms(paged),
        rss_listed["vm_rss_kib"]
    );
    Ok(json!({
        "rss_idle_kib": rss_idle["vm_rss_kib"],
        "points": points,
        "paged_list": {
            "pods": stored,
            "page_limit": PAGE,
            "pages": pages,
            "ms": ms(paged),
            "rss_after_kib": rss_listed["vm_rss_kib"],
        },
    }))
}

// ---------------------------------------------------------------------------
// Node leases and the node lifecycle controller

/// Upstream's node lease renewal interval (kubelet: a quarter of the 40 s
/// lease duration, 10 s).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Renewals in flight at once, at most.
const LEASE_IN_FLIGHT: usize = 64;
/// Connections the renewals share (HTTP/2).
const LEASE_CONNECTIONS: usize = 8;

/// Now as a Kubernetes MicroTime (`…T…:…:….ffffffZ`).
fn micro_time() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

fn node_object(name: &str, now: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}]
        }
    })
}

fn lease_object(name: &str, rv: Option<&str>, now: &str) -> Value {
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NS},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}
    });
    if let Some(rv) = rv {
        lease["metadata"]["resourceVersion"] = json!(rv);
    }
    lease
}

const LEASE_NS: &str = "kube-node-lease";

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Creates nodes `0..nodes` (Ready, heartbeat now) and their Leases at
/// concurrency 16; the Leases' resourceVersions.
async fn create_nodes(conn: &Conn, nodes: usize) -> anyhow::Result<Vec<String>> {
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases");
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let mut c = conn.for_worker().await?;
        let leases = leases.clone();
        workers.push(tokio::spawn(async move {
            let mut rvs = Vec::new();
            for i in (w..nodes).step_by(CONCURRENCY) {
                let (name, now) = (node_name(i), micro_time());
                let node = node_object(&name, &now).to_string().into_bytes();
                c.call(
                    Method::POST,
                    "/api/v1/nodes",
                    Some(node),
                    StatusCode::CREATED,
                )
                .await?;
                let lease = lease_object(&name, None, &now).to_string().into_bytes();
                let body = c
                    .call(Method::POST, &leases, Some(lease), StatusCode::CREATED)
                    .await?;
                rvs.push((i, resource_version(&body)?));
            }
            anyhow::Ok(rvs)
        }));
    }
    let mut rvs = vec![String::new(); nodes];
    for w in workers {
        let got = tokio::time::timeout(STEP_TIMEOUT, w)
            .await
            .context("creating nodes did not finish")???;
        for (i, rv) in got {
            rvs[i] = rv;
        }
    }
    Ok(rvs)
}

fn resource_version(body: &[u8]) -> anyhow::Result<String> {
    let v: Value = serde_json::from_slice(body).context("decoding a response")?;
    v["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
        .context("response without metadata.resourceVersion")
}

/// The server's CPU and RSS over `window` with nothing asked of it.
async fn idle_window(pids: Pids, window: Duration) -> anyhow::Result<Value> {
    let cpu = CpuWindow::start(pids.server)?;
    let etcd_cpu = pids.etcd.map(CpuWindow::start).transpose()?;
    tokio::time::sleep(window).await;
    Ok(json!({
        "seconds": window.as_secs_f64(),
        "server_cpu_percent_of_one_core": cpu.percent()?,
        "etcd_cpu_percent_of_one_core": etcd_cpu.map(|c| c.percent()).transpose()?,
        "rss_kib": rss_kib(pids.server)?,
    }))
}

/// Every node renews its Lease once per [`LEASE_RENEW_INTERVAL`], spread
/// evenly (nodes / 10 renewals per second), for `window`: PUTs with the
/// resourceVersion of the Lease's previous write, as the kubelet does.
async fn renew_leases(
    conn: &Conn,
    pids: Pids,
    rvs: Vec<String>,
    window: Duration,
) -> anyhow::Result<Value> {
    let nodes = rvs.len();
    let interval = LEASE_RENEW_INTERVAL / nodes.max(1) as u32;
    let total = (window.as_secs_f64() / interval.as_secs_f64()) as usize;
    let rvs: Arc<Vec<std::sync::Mutex<String>>> =
        Arc::new(rvs.into_iter().map(std::sync::Mutex::new).collect());
    let mut pool = Vec::with_capacity(LEASE_CONNECTIONS);
    for _ in 0..LEASE_CONNECTIONS {
        pool.push(conn.config.connect().await?);
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(LEASE_IN_FLIGHT));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cpu = CpuWindow::start(pids.server)?;
    let etcd_cpu = pids.etcd.map(CpuWindow::start).transpose()?;
    let own_cpu = CpuWindow::start(std::process::id())?;
    let start = Instant::now();
    let mut late = Vec::with_capacity(total);
    for k in 0..total {
        let due = start + interval * k as u32;
        tokio::time::sleep_until(due.into()).await;
        let slot = slots.clone().acquire_owned().await?;
        late.push(due.elapsed());
        let i = k % nodes;
        let mut c = pool[k % LEASE_CONNECTIONS].for_worker().await?;
        let (rvs, tx) = (rvs.clone(), tx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let name = node_name(i);
            let rv = rvs[i].lock().map(|g| g.clone()).unwrap_or_default();
            let lease = lease_object(&name, Some(&rv), &micro_time());
            let path = format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{name}");
            let t = Instant::now();
            let r = c
                .call(
                    Method::PUT,
                    &path,
                    Some(lease.to_string().into_bytes()),
                    StatusCode::OK,
                )
                .await
                .and_then(|body| resource_version(&body));
            let elapsed = t.elapsed();
            if let (Ok(new), Ok(mut slot)) = (&r, rvs[i].lock()) {
                *slot = new.clone();
            }
            let _ = tx.send(r.map(|_| elapsed));
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = tokio::time::timeout(STEP_TIMEOUT, rx.recv())
        .await
        .context("lease renewals did not finish")?
    {
        match r {
            Ok(d) => latencies.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let elapsed = start.elapsed();
    let (cpu, own_cpu) = (cpu.percent()?, own_cpu.percent()?);
    let etcd_cpu = etcd_cpu.map(|c| c.percent()).transpose()?;
    latencies.sort();
    late.sort();
    eprintln!(
        "apiserver-bench: leases: {} renewals of {nodes} leases in {:.1} s ({failed} failed), server CPU {cpu:.1}%",
        latencies.len(),
        elapsed.as_secs_f64()
    );
    Ok(json!({
        "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "renewals": latencies.len(),
        "failed": failed,
        "first_error": first_error,
        "target_per_sec": rate(nodes, LEASE_RENEW_INTERVAL),
        "renewals_per_sec": rate(latencies.len(), elapsed),
        "p50_ms": ms(quantile(&latencies, 0.5)),
        "p99_ms": ms(quantile(&latencies, 0.99)),
        "max_ms": ms(latencies.last().copied().unwrap_or_default()),
        "start_late_p99_ms": ms(quantile(&late, 0.99)),
        "connections": LEASE_CONNECTIONS,
        "max_in_flight": LEASE_IN_FLIGHT,
        "server_cpu_percent_of_one_core": cpu,
        "etcd_cpu_percent_of_one_core": etcd_cpu,
        "bench_client_cpu_percent_of_one_core": own_cpu,
        "rss_kib": rss_kib(pids.server)?,
    }))
}

/// Passes of the node lifecycle controller timed in this process.
const NLC_PASSES: usize = 5;

/// The controller's pass ([`monitor_once`]) over `nodes` Ready nodes with
/// fresh Leases, in this process on the same kind of storage (SQLite in a
/// temporary directory, or `etcd` under a root of its own): wall time and
/// CPU per pass, and what that CPU is at upstream's 5 s monitor period.
async fn nlc_pass(etcd: Option<&str>, nodes: usize) -> anyhow::Result<Value> {
    use berth_apiserver::api::{ApiConfig, ApiState};
    use berth_apiserver::controllers::node_lifecycle::{NodeLifecycleConfig, monitor_once};
    use berth_apiserver::storage::{Storage, object_key};
    let dir = tempfile::Builder::new()
        .prefix("berth-nlc-bench-")
        .tempdir()?;
    let storage: Arc<dyn Storage> = match etcd {
        None => Arc::new(berth_apiserver::storage::sqlite::SqliteStorage::open(
            dir.path(),
            Default::default(),
        )?),
        Some(endpoint) => Arc::new(
            berth_apiserver::storage::etcd::EtcdStorage::connect(
                &[endpoint.to_string()],
                "/berth-nlc-bench",
            )
            .await?,
        ),
    };
    for i in 0..nodes {
        let (name, now) = (node_name(i), micro_time());
        let mut node = node_object(&name, &now);
        node["metadata"]["creationTimestamp"] = json!(now);
        storage
            .create(
                &object_key("nodes", None, &name)?,
                serde_json::to_vec(&node)?,
            )
            .await?;
        storage
            .create(
                &object_key("leases", Some(LEASE_NS), &name)?,
                serde_json::to_vec(&lease_object(&name, None, &now))?,
            )
            .await?;
    }
    let state = ApiState::new(storage, ApiConfig::default());
    let config = NodeLifecycleConfig::default();
    let me = std::process::id();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..NLC_PASSES {
        let (c0, t) = (cpu_seconds_fine(me)?, Instant::now());
        let written = monitor_once(&state, &config, jiff::Timestamp::now()).await?;
        wall.push(t.elapsed());
        cpu.push(Duration::from_secs_f64(
            (cpu_seconds_fine(me)? - c0).max(0.0),
        ));
        if written != 0 {
            bail!("node lifecycle pass wrote {written} nodes; expected all Ready");
        }
    }
    wall.sort();
    cpu.sort();
    let period = config.monitor_period;
    let cpu_p50 = quantile(&cpu, 0.5);
    eprintln!(
        "apiserver-bench: node lifecycle pass over {nodes} nodes: {:.1} ms wall, {:.0} ms CPU",
        ms(quantile(&wall, 0.5)),
        ms(cpu_p50)
    );
    Ok(json!({
        "nodes": nodes,
        "passes": NLC_PASSES,
        "pass_ms_p50": ms(quantile(&wall, 0.5)),
        "pass_ms_max": ms(wall.last().copied().unwrap_or_default()),
        "pass_cpu_ms_p50": ms(cpu_p50),
        "monitor_period_seconds": period.as_secs_f64(),
        "cpu_percent_of_one_core": ((cpu_p50.as_secs_f64() / period.as_secs_f64()) * 1e4).round() / 100.0,
    }))
}

/// On a fresh server (`--metric-resolution 1h`, so the metrics scraper's
/// rounds over the nodes stay out of the figures; `--node-monitor-grace-period
/// 10m`, so no node goes stale between the phases): CPU and RSS idle without
/// nodes, idle with `nodes` Ready nodes and fresh Leases (the node lifecycle
/// controller's passes every 5 s are then all the server does), and while
/// every node renews its Lease every 10 s.
async fn leases(
    conn: &mut Conn,
    pids: Pids,
    nodes: usize,
    window: Duration,
) -> anyhow::Result<Value> {
    let no_nodes = idle_window(pids, window).await?;
    let t = Instant::now();
    let rvs = create_nodes(conn, nodes).await?;
    let setup = t.elapsed();
    eprintln!(
        "apiserver-bench: leases: {nodes} nodes and leases created in {:.1} s",
        setup.as_secs_f64()
    );
    let with_nodes = idle_window(pids, window).await?;
    let renewing = renew_leases(conn, pids, rvs, window * 2).await?;
    Ok(json!({
        "nodes": nodes,
        "server_flags": "--metric-resolution 1h --node-monitor-grace-period 10m",
        "controller_disable_switch": false,
        "setup_seconds": (setup.as_secs_f64() * 1000.0).round() / 1000.0,
        "idle_no_nodes": no_nodes,
        "idle_with_nodes": with_nodes,
        "renewing": renewing,
    }))
}

/// The server and (with etcd) the etcd process, for CPU and RSS.
#[derive(Clone, Copy)]
struct Pids {
    server: u32,
    etcd: Option<u32>,
}

/// Runs `section` on a fresh server (and the backend's etcd, if any).
async fn on_fresh_server<F, Fut>(
    binary: &Path,
    etcd: Option<(&str, u32)>,
    http1: bool,
    extra: &[&str],
    settle: Duration,
    section: F,
) -> anyhow::Result<Value>
where
    F: FnOnce(Conn, Pids) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let (server, conn) = Server::start(binary, etcd.map(|e| e.0), http1, extra).await?;
    let pids = Pids {
        server: server.pid(),
        etcd: etcd.map(|e| e.1),
    };
    tokio::time::sleep(settle).await;
    match section(conn, pids).await {
        Ok(v) => {
            server.stop().await?;
            Ok(v)
        }
        Err(e) => Err(e.context(format!("berth-apiserver log:\n{}", server.log()))),
    }
}

/// Everything for one backend: `etcd` is the endpoint with `--storage etcd`.
async fn run_backend(
    binary: &Path,
    etcd: Option<&str>,
    n: usize,
    settle: Duration,
    http1: bool,
) -> anyhow::Result<Value> {
    let (server, mut conn) = Server::start(binary, etcd, http1, &[]).await?;
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

/// A private etcd (none for SQLite): one per section, so no section sees
/// another's objects. Dropping it kills that PID and removes its directory.
async fn private_etcd(binary: Option<&Path>) -> anyhow::Result<Option<EtcdProcess>> {
    let Some(binary) = binary else {
        return Ok(None);
    };
    let etcd = EtcdProcess::start(binary)
        .await
        .map_err(anyhow::Error::msg)
        .context("starting etcd")?;
    eprintln!(
        "apiserver-bench: etcd pid {} at {}",
        etcd.pid(),
        etcd.endpoint()
    );
    Ok(Some(etcd))
}

/// The sections of `p` for one backend (`etcd_bin`: etcd's binary with
/// `--storage etcd`).
async fn run_sections(binary: &Path, etcd_bin: Option<&Path>, p: &Params) -> anyhow::Result<Value> {
    let has = |s| p.sections.contains(&s);
    let ep = |e: &Option<EtcdProcess>| e.as_ref().map(|e| (e.endpoint().to_string(), e.pid()));
    let mut r = json!({});
    if has(Section::Core) {
        let etcd = private_etcd(etcd_bin).await?;
        r = run_backend(
            binary,
            etcd.as_ref().map(|e| e.endpoint()),
            p.n,
            p.settle,
            p.http1,
        )
        .await?;
        if let Some(e) = &etcd {
            r["etcd_rss_kib"] = json!(rss_kib(e.pid())?);
        }
    }
    if has(Section::Fanout) {
        let t = Instant::now();
        let etcd = private_etcd(etcd_bin).await?;
        let e = ep(&etcd);
        r["fanout"] = on_fresh_server(
            binary,
            e.as_ref().map(|(a, b)| (a.as_str(), *b)),
            p.http1,
            &[],
            p.settle,
            |mut conn, pids| async move {
                fanout(&mut conn, pids, p.watchers, p.fanout_pods, p.settle).await
            },
        )
        .await
        .context("fan-out")?;
        r["fanout"]["section_seconds"] = json!(t.elapsed().as_secs());
    }
    if has(Section::Leases) {
        let t = Instant::now();
        let etcd = private_etcd(etcd_bin).await?;
        let e = ep(&etcd);
        let e = e.as_ref().map(|(a, b)| (a.as_str(), *b));
        let extra = [
            "--metric-resolution",
            "1h",
            "--node-monitor-grace-period",
            "10m",
        ];
        r["leases"] =
            on_fresh_server(
                binary,
                e,
                p.http1,
                &extra,
                p.settle,
                |mut conn, pids| async move {
                    leases(&mut conn, pids, p.lease_nodes, p.lease_window).await
                },
            )
            .await
            .context("leases")?;
        // The same etcd, under a root of its own.
        r["leases"]["in_process_pass"] = nlc_pass(e.map(|e| e.0), p.lease_nodes)
            .await
            .context("node lifecycle pass")?;
        r["leases"]["section_seconds"] = json!(t.elapsed().as_secs());
    }
    if has(Section::Scale) {
        let t = Instant::now();
        let etcd = private_etcd(etcd_bin).await?;
        let e = ep(&etcd);
        r["scale"] = on_fresh_server(
            binary,
            e.as_ref().map(|(a, b)| (a.as_str(), *b)),
            p.http1,
            &[],
            p.settle,
            |mut conn, pids| async move { scale(&mut conn, pids, &p.scale, p.settle).await },
        )
        .await
        .context("scale")?;
        r["scale"]["section_seconds"] = json!(t.elapsed().as_secs());
    }
    Ok(r)
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
    let quick = cli.quick;
    let p = Params {
        n: cli.pods.unwrap_or(if quick { 300 } else { 1000 }),
        settle: Duration::from_secs(if quick { 1 } else { 3 }),
        http1: cli.http1,
        sections: cli.sections.clone(),
        watchers: cli.watchers.unwrap_or(if quick { 100 } else { 1000 }),
        fanout_pods: cli.fanout_pods.unwrap_or(if quick { 100 } else { 200 }),
        scale: cli.scale.clone().unwrap_or_else(|| {
            if quick {
                vec![2000]
            } else {
                vec![10_000, 50_000]
            }
        }),
        lease_nodes: cli.lease_nodes.unwrap_or(if quick { 500 } else { 5000 }),
        lease_window: Duration::from_secs(cli.lease_window.unwrap_or(if quick { 5 } else { 15 })),
    };
    if p.n == 0 || p.watchers == 0 || p.fanout_pods == 0 || p.lease_nodes == 0 {
        bail!("--pods, --watchers, --fanout-pods and --lease-nodes must be at least 1");
    }
    if !p.scale.is_sorted() {
        bail!("--scale: give the pod counts in increasing order");
    }
    let Some(binary) = apiserver_binary() else {
        bail!(
            "berth-apiserver not found: run `cargo build -p berth-apiserver` or set BERTH_APISERVER_BIN"
        );
    };

    let started = Instant::now();
    let mut out = json!({
        "bench": "apiserver",
        "mode": match (quick, cli.pods.is_some() || cli.watchers.is_some() || cli.fanout_pods.is_some()
            || cli.scale.is_some() || cli.lease_nodes.is_some() || cli.lease_window.is_some()) {
            (_, true) => "custom",
            (true, false) => "quick",
            (false, false) => "full",
        },
        "sections": p.sections.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>(),
        "pods": p.n,
        "http": if p.http1 { "http/1.1" } else { "h2" },
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "machine": machine(),
        "apiserver_version": env!("CARGO_PKG_VERSION"),
    });
    for backend in &cli.storage {
        match backend {
            Backend::Sqlite => {
                eprintln!("apiserver-bench: sqlite, {} pods per burst", p.n);
                out["sqlite"] = run_sections(&binary, None, &p).await.context("sqlite")?;
            }
            Backend::Etcd => {
                let Some(etcd_bin) = EtcdProcess::binary() else {
                    eprintln!(
                        "apiserver-bench: no etcd binary (integration/setup.sh installs etcd-server; or set BERTH_ETCD): etcd skipped"
                    );
                    out["etcd"] = Value::Null;
                    continue;
                };
                eprintln!("apiserver-bench: etcd, {} pods per burst", p.n);
                let mut r = run_sections(&binary, Some(&etcd_bin), &p)
                    .await
                    .context("etcd")?;
                r["etcd_version"] = json!(etcd_version(&etcd_bin));
                out["etcd"] = r;
            }
        }
    }
    out["seconds"] = json!(started.elapsed().as_secs());
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
    fn watch_event_types_are_found_at_either_end() {
        let sorted = br#"{"object":{"metadata":{"name":"p"}},"type":"ADDED"}"#;
        assert_eq!(event_type(sorted), Some(&b"ADDED"[..]));
        let first =
            br#"{"type":"ERROR","object":{"code":410,"message":"gone, and a long message"}}"#;
        assert_eq!(event_type(first), Some(&b"ERROR"[..]));
        assert_eq!(event_type(b"{}"), None);
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
