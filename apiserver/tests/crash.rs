//! Crash-anywhere tests of the control plane's storage path (issue 11,
//! "Reliability suite", item 2), against the real `berth-apiserver` binary
//! over HTTPS with the admin token:
//!
//! * `kill -9` of the API server at seeded random moments while concurrent
//!   writers create, update and delete ConfigMaps and Pods, on SQLite and on a
//!   private etcd; restarted on the same data each time. Every write answered
//!   2xx before the kill is there afterwards, exactly; reads and lists decode;
//!   resourceVersions only grow; reflectors resumed from before the kill see
//!   every later event in order (or 410 Gone, then re-list), which a second,
//!   fresh watch from the same resourceVersion confirms.
//! * `kill -9` of etcd under a running API server: requests fail promptly
//!   with a 5xx, `/readyz` says `[-]etcd failed`, and once etcd is back on
//!   the same data the API server recovers by itself, acknowledged writes
//!   intact, watches resumed.
//!
//! The seed is printed; `BERTH_SEED=<n>` replays it, `BERTH_SOAK=1` runs many
//! more kills. Without an etcd binary the etcd tests skip with a printed
//! reason, except under `CI=true` or `BERTH_REQUIRE_RUNTIME=1`, where that is
//! a failure. Every process is killed by PID when its guard drops (also on a
//! panic); data lives under Cargo's per-target test directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use berth_apiserver::api::tls::PkiPaths;
use berth_apiserver::storage::etcd::EtcdProcess;
use berth_test_support::{TestRng, free_port, skip_or_fail, soak};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::sync::RwLock;

// ---------------------------------------------------------------------------
// Seeds, soak, skipping.

/// The etcd binary, or `None` (skip, reason printed); a failure under CI.
fn etcd_binary(test: &str) -> Option<PathBuf> {
    let binary = EtcdProcess::binary();
    if binary.is_none() {
        let reason = "no etcd binary (/usr/bin/etcd, $BERTH_ETCD or PATH); install it with \
                      `apt-get install etcd-server` or run integration/setup.sh";
        skip_or_fail(test, "etcd", reason);
    }
    binary
}

/// A fresh directory for `test` under Cargo's per-target test directory.
fn test_dir(test: &str) -> tempfile::TempDir {
    berth_test_support::test_dir(env!("CARGO_TARGET_TMPDIR"), test)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILL to the child's PID (std's `Child::kill`), then reap it.
fn kill9(child: &mut Child) -> u32 {
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    pid
}

// ---------------------------------------------------------------------------
// A private etcd that can be killed and started again on its data.

struct Etcd {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

impl Etcd {
    async fn start(binary: PathBuf, dir: PathBuf) -> Etcd {
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = Etcd {
            binary,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            starts: 0,
        };
        etcd.restart().await;
        etcd
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn kill9(&mut self) -> Option<u32> {
        let mut child = self.child.take()?;
        Some(kill9(&mut child))
    }

    /// Start etcd on its data directory and ports; wait until it serves.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        self.starts += 1;
        let log = self.dir.join(format!("etcd-{}.log", self.starts));
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&self.binary)
            .arg("--name=berth-crash")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=berth-crash={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited with {status}:\n{}", tail(&log, 20));
            }
            let probe = async {
                let mut c = etcd_client::Client::connect([client.as_str()], None).await?;
                c.get("/", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not serve within 30 s:\n{}",
                tail(&log, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The API server binary, killed and restarted on the same data and port.

struct Apiserver {
    data: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    starts: u32,
    client: Option<Arc<Https>>,
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

impl Apiserver {
    async fn start(data: PathBuf, extra: Vec<String>) -> Apiserver {
        let mut server = Apiserver {
            data,
            port: free_port(),
            extra,
            child: None,
            starts: 0,
            client: None,
        };
        server.restart().await;
        server
    }

    fn log(&self) -> PathBuf {
        self.data
            .parent()
            .unwrap()
            .join(format!("apiserver-{}.log", self.starts))
    }

    fn client(&self) -> Arc<Https> {
        self.client.clone().unwrap()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill9(&mut self) -> u32 {
        let mut child = self.child.take().expect("the API server is not running");
        kill9(&mut child)
    }

    /// Still running (not exited by itself)?
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Start the binary on its data directory and port; wait until `/readyz`.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "the API server is running");
        self.starts += 1;
        let log = self.log();
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("berth-apiserver exited with {status}:\n{}", tail(&log, 30));
            }
            if self.client.is_none() {
                self.client = Https::from_data_dir(&self.data, self.port);
            }
            if let Some(c) = &self.client
                && let Ok(r) = c.request(Method::GET, "/readyz", None).await
                && r.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berth-apiserver not ready within 30 s:\n{}",
                tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// HTTPS: one request per fresh connection (a killed server never leaves a
// pooled connection behind), the admin token, the cluster CA.

/// No request of these tests may take longer: past it, it counts as a hang.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

struct Https {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    token: String,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
    text: String,
}

impl Https {
    /// A client once the server wrote its CA and admin token.
    fn from_data_dir(data: &Path, port: u16) -> Option<Arc<Https>> {
        let tokens = std::fs::read_to_string(data.join("tokens.csv")).ok()?;
        let token = tokens
            .lines()
            .find(|l| l.contains(",admin,"))?
            .split(',')
            .next()?
            .to_string();
        let ca = PkiPaths::new(data).ca_cert;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).ok()? {
            roots.add(c.ok()?).ok()?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Some(Arc::new(Https {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            token,
        }))
    }

    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .tls
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))
    }

    /// One request; `Err` is a transport failure (refused, reset, cut short)
    /// or no answer within [`REQUEST_DEADLINE`] (prefixed `hang:`).
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Resp, String> {
        let call = async {
            let resp = self.open(method, path, body).await?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Ok(Resp {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                text,
            })
        };
        match tokio::time::timeout(REQUEST_DEADLINE, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("hang: no answer within {REQUEST_DEADLINE:?}")),
        }
    }
}

// ---------------------------------------------------------------------------
// The objects written: ConfigMaps and Pods in one namespace; each carries its
// writer's generation in the `gen` label (a ConfigMap also in `data.gen`, so a
// half-written object shows as a mismatch).

const NS: &str = "crash";
const SENTINEL: &str = "sentinel";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ConfigMap,
    Pod,
}

const KINDS: [Kind; 2] = [Kind::ConfigMap, Kind::Pod];

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Pod => "pods",
        }
    }

    fn collection(self) -> String {
        format!("/api/v1/namespaces/{NS}/{}", self.plural())
    }

    fn path(self, name: &str) -> String {
        format!("{}/{name}", self.collection())
    }

    fn object(self, name: &str, generation: u64, payload: usize) -> Value {
        let meta = json!({"name": name, "labels": {"gen": generation.to_string()}});
        match self {
            Kind::ConfigMap => json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                "data": {"gen": generation.to_string(), "payload": "p".repeat(payload)}}),
            Kind::Pod => json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}),
        }
    }

    /// The next generation of a stored object (its resourceVersion kept: the
    /// update's precondition).
    fn bump(self, mut obj: Value, generation: u64) -> Value {
        obj["metadata"]["labels"]["gen"] = json!(generation.to_string());
        if self == Kind::ConfigMap {
            obj["data"]["gen"] = json!(generation.to_string());
        }
        obj
    }

    fn delete_query(self) -> &'static str {
        match self {
            Kind::ConfigMap => "",
            Kind::Pod => "?gracePeriodSeconds=0",
        }
    }
}

fn rv_of(obj: &Value) -> Result<i64, String> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no numeric resourceVersion: {obj}"))
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An object is whole: it decodes as its type, has the metadata a write
/// gives it, and its generation reads the same everywhere. Its (rv, generation).
fn check_whole(kind: Kind, obj: &Value) -> Result<(i64, u64), String> {
    let typed = match kind {
        Kind::ConfigMap => serde_json::from_value::<ConfigMap>(obj.clone()).map(|_| ()),
        Kind::Pod => serde_json::from_value::<Pod>(obj.clone()).map(|_| ()),
    };
    typed.map_err(|e| format!("does not decode as {kind:?}: {e}: {obj}"))?;
    for field in [
        "/metadata/name",
        "/metadata/uid",
        "/metadata/creationTimestamp",
    ] {
        if obj
            .pointer(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("{field} missing: {obj}"));
        }
    }
    let rv = rv_of(obj)?;
    let generation: u64 = obj
        .pointer("/metadata/labels/gen")
        .and_then(Value::as_str)
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("no gen label: {obj}"))?;
    if kind == Kind::ConfigMap
        && obj.pointer("/data/gen").and_then(Value::as_str) != Some(&generation.to_string())
    {
        return Err(format!(
            "data.gen differs from the gen label (half-written): {obj}"
        ));
    }
    Ok((rv, generation))
}

// ---------------------------------------------------------------------------
// What the server acknowledged.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    Absent,
    Present { generation: u64, rv: i64 },
}

#[derive(Default)]
struct Stats {
    acked: AtomicU64,
    conn_errors: AtomicU64,
    server_errors: AtomicU64,
    hangs: AtomicU64,
    /// The slowest failed request, in milliseconds.
    slowest_failure_ms: AtomicU64,
    /// The newest resourceVersion any acknowledged write returned.
    max_rv: AtomicI64,
}

impl Stats {
    fn failed(&self, err: &Result<Resp, String>, took: Duration) {
        match err {
            Err(e) if e.starts_with("hang:") => self.hangs.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.conn_errors.fetch_add(1, Ordering::Relaxed),
            Ok(_) => self.server_errors.fetch_add(1, Ordering::Relaxed),
        };
        self.slowest_failure_ms
            .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        format!(
            "acked={} conn_errors={} 5xx={} hangs={} slowest_failure={}ms max_rv={}",
            self.acked.load(Ordering::Relaxed),
            self.conn_errors.load(Ordering::Relaxed),
            self.server_errors.load(Ordering::Relaxed),
            self.hangs.load(Ordering::Relaxed),
            self.slowest_failure_ms.load(Ordering::Relaxed),
            self.max_rv.load(Ordering::Relaxed),
        )
    }
}

type Ledger = Mutex<BTreeMap<(Kind, String), Acked>>;

/// Everything writers, reflectors and the checker share.
struct World {
    api: Arc<Https>,
    ledger: Ledger,
    stats: Stats,
    /// Writers hold it (read) for a whole operation, retries included; the
    /// checker takes it (write) to see a quiet store.
    gate: RwLock<()>,
    stop: AtomicBool,
}

/// How long one write may stay unresolved (server or etcd down) before the
/// test gives up on it.
const OP_DEADLINE: Duration = Duration::from_secs(60);

impl World {
    fn ack(&self, kind: Kind, name: &str, state: Acked) {
        let mut ledger = self.ledger.lock().unwrap();
        let previous = ledger.insert((kind, name.to_string()), state);
        if let (Some(Acked::Present { rv: old, .. }), Acked::Present { rv, .. }) = (previous, state)
        {
            assert!(
                rv > old,
                "{kind:?} {name}: resourceVersion went from {old} to {rv}"
            );
        }
        if let Acked::Present { rv, .. } = state {
            self.stats.max_rv.fetch_max(rv, Ordering::Relaxed);
        }
        self.stats.acked.fetch_add(1, Ordering::Relaxed);
    }

    /// Send until the answer is definite (< 500): a refused or cut-short
    /// request, or a 5xx, may or may not have been applied. `true` in the
    /// answer's second field: an earlier attempt was ambiguous.
    async fn definite(&self, method: Method, path: &str, body: Option<&Value>) -> (Resp, bool) {
        let start = Instant::now();
        let mut ambiguous = false;
        loop {
            let sent = Instant::now();
            let r = self.api.request(method.clone(), path, body).await;
            match r {
                Ok(resp) if resp.status < 500 => return (resp, ambiguous),
                other => {
                    self.stats.failed(&other, sent.elapsed());
                    ambiguous = true;
                    assert!(
                        start.elapsed() < OP_DEADLINE,
                        "{method} {path}: no definite answer within {OP_DEADLINE:?}; last: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }

    async fn get(&self, kind: Kind, name: &str) -> Option<Value> {
        let (r, _) = self.definite(Method::GET, &kind.path(name), None).await;
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("GET {kind:?} {name}: {s} {}", r.text),
        }
    }

    async fn create(&self, kind: Kind, name: &str, generation: u64, payload: usize) -> Value {
        let body = kind.object(name, generation, payload);
        let (r, ambiguous) = self
            .definite(Method::POST, &kind.collection(), Some(&body))
            .await;
        let obj = match r.status {
            201 => r.body,
            // Our own earlier attempt was applied.
            409 if ambiguous => self
                .get(kind, name)
                .await
                .unwrap_or_else(|| panic!("{kind:?} {name}: 409 on create, then 404")),
            s => panic!("create {kind:?} {name}: {s} {}", r.text),
        };
        let (rv, got) = check_whole(kind, &obj).unwrap();
        assert_eq!(got, generation, "{kind:?} {name}: created with another gen");
        self.ack(kind, name, Acked::Present { generation, rv });
        obj
    }

    async fn update(&self, kind: Kind, name: &str, last: Value, generation: u64) -> Value {
        let body = kind.bump(last, generation);
        let (r, ambiguous) = self
            .definite(Method::PUT, &kind.path(name), Some(&body))
            .await;
        let obj = match r.status {
            200 => r.body,
            // Nobody else writes this object: a conflict after an ambiguous
            // attempt means that attempt was applied.
            409 if ambiguous => self
                .get(kind, name)
                .await
                .unwrap_or_else(|| panic!("{kind:?} {name}: 409 on update, then 404")),
            s => panic!(
                "update {kind:?} {name} to generation {generation}: {s} {}",
                r.text
            ),
        };
        let (rv, got) = check_whole(kind, &obj).unwrap();
        assert_eq!(
            got, generation,
            "{kind:?} {name}: update to generation {generation} acknowledged, found {obj}"
        );
        self.ack(kind, name, Acked::Present { generation, rv });
        obj
    }

    async fn delete(&self, kind: Kind, name: &str) {
        let path = format!("{}{}", kind.path(name), kind.delete_query());
        let (r, ambiguous) = self.definite(Method::DELETE, &path, None).await;
        match r.status {
            200 | 202 => {}
            404 if ambiguous => {}
            s => panic!("delete {kind:?} {name}: {s} {}", r.text),
        }
        self.ack(kind, name, Acked::Absent);
    }
}

/// One writer: its own names, creates, updates and deletes at random.
async fn writer(world: Arc<World>, id: usize, mut rng: TestRng) {
    let mut live: Vec<(Kind, String, Value)> = Vec::new();
    let mut next = 0u64;
    while !world.stop.load(Ordering::Relaxed) {
        let _quiet = world.gate.read().await;
        let roll = rng.below(100);
        if live.len() < 4 || roll < 40 {
            let kind = if rng.below(5) == 0 {
                Kind::Pod
            } else {
                Kind::ConfigMap
            };
            next += 1;
            let name = format!("w{id}-{next}");
            let obj = world.create(kind, &name, 1, rng.below(4096) as usize).await;
            live.push((kind, name, obj));
        } else if roll < 80 {
            let i = rng.below(live.len() as u64) as usize;
            let (kind, name, last) = live[i].clone();
            let generation = check_whole(kind, &last).unwrap().1 + 1;
            live[i].2 = world.update(kind, &name, last, generation).await;
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let (kind, name, _) = live.swap_remove(i);
            world.delete(kind, &name).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Reflectors: list, then watch, resuming from the last resourceVersion seen
// after every break (410 Gone: list again), as client-go's reflector.

#[derive(Default)]
struct Reflected {
    /// name → (rv, generation)
    objects: BTreeMap<String, (i64, u64)>,
    last_rv: i64,
    /// Every event applied: (rv, type, name).
    log: Vec<(i64, String, String)>,
    /// The log is complete for events after this revision (its last list).
    complete_after: i64,
    lists: u64,
    resumes: u64,
    gone: u64,
    violations: Vec<String>,
}

async fn list_checked(
    world: &World,
    kind: Kind,
) -> Result<(i64, BTreeMap<String, (i64, u64)>), String> {
    let r = world
        .api
        .request(Method::GET, &kind.collection(), None)
        .await?;
    if r.status != 200 {
        return Err(format!("list {kind:?}: {} {}", r.status, r.text));
    }
    let list_rv = rv_of(&r.body)?;
    let mut out = BTreeMap::new();
    for item in r.body["items"].as_array().ok_or("no items")? {
        let (rv, generation) = check_whole(kind, item)?;
        if rv > list_rv {
            return Err(format!(
                "list {kind:?} at resourceVersion {list_rv} holds {} at {rv}",
                name_of(item)
            ));
        }
        out.insert(name_of(item), (rv, generation));
    }
    Ok((list_rv, out))
}

async fn reflector(world: Arc<World>, kind: Kind, state: Arc<Mutex<Reflected>>) {
    let mut need_list = true;
    while !world.stop.load(Ordering::Relaxed) {
        if need_list {
            match list_checked(&world, kind).await {
                Ok((rv, objects)) => {
                    let mut s = state.lock().unwrap();
                    s.objects = objects;
                    s.last_rv = rv;
                    s.complete_after = rv;
                    s.lists += 1;
                    need_list = false;
                }
                Err(e) => {
                    if e.contains("does not decode") || e.contains("holds") || e.contains("half") {
                        state.lock().unwrap().violations.push(e);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let from = state.lock().unwrap().last_rv;
        let path = format!(
            "{}?watch=1&resourceVersion={from}&timeoutSeconds=600",
            kind.collection()
        );
        let resp = match world.api.open(Method::GET, &path, None).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match resp.status().as_u16() {
            200 => {}
            410 => {
                state.lock().unwrap().gone += 1;
                need_list = true;
                continue;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        state.lock().unwrap().resumes += 1;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        'stream: while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    state.lock().unwrap().violations.push(format!(
                        "undecodable watch line: {}",
                        String::from_utf8_lossy(&line)
                    ));
                    break 'stream;
                };
                let ty = ev["type"].as_str().unwrap_or_default().to_string();
                let obj = &ev["object"];
                if ty == "ERROR" {
                    if obj["code"] == 410 {
                        state.lock().unwrap().gone += 1;
                        need_list = true;
                    }
                    break 'stream;
                }
                let mut s = state.lock().unwrap();
                let (rv, generation) = match check_whole(kind, obj) {
                    Ok(v) => v,
                    Err(e) => {
                        s.violations.push(format!("watch {ty}: {e}"));
                        break 'stream;
                    }
                };
                if rv <= s.last_rv {
                    let last = s.last_rv;
                    s.violations.push(format!(
                        "watch of {kind:?} went back: {ty} {} at {rv} after {last}",
                        name_of(obj)
                    ));
                }
                let name = name_of(obj);
                match ty.as_str() {
                    "ADDED" | "MODIFIED" => {
                        s.objects.insert(name.clone(), (rv, generation));
                    }
                    "DELETED" => {
                        s.objects.remove(&name);
                    }
                    other => s.violations.push(format!("unexpected watch event {other}")),
                }
                s.last_rv = rv;
                s.log.push((rv, ty, name));
            }
        }
    }
}

/// Every event after `from` up to and including `until`, from a fresh
/// watch; `None` when the server answers 410 Gone.
async fn replay(
    world: &World,
    kind: Kind,
    from: i64,
    until: i64,
) -> Option<Vec<(i64, String, String)>> {
    let path = format!(
        "{}?watch=1&resourceVersion={from}&timeoutSeconds=30",
        kind.collection()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let resp = world.api.open(Method::GET, &path, None).await.unwrap();
    match resp.status().as_u16() {
        200 => {}
        410 => return None,
        s => panic!("replay watch of {kind:?} from {from}: {s}"),
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| {
                panic!("replay of {kind:?} from {from} stalled before {until}: {out:?}")
            });
        let Some(Ok(frame)) = frame else {
            panic!("replay of {kind:?} from {from} ended before {until}: {out:?}");
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let ev: Value = serde_json::from_slice(&line).unwrap();
            let ty = ev["type"].as_str().unwrap_or_default().to_string();
            if ty == "ERROR" {
                assert_eq!(ev["object"]["code"], 410, "replay: {ev}");
                return None;
            }
            let (rv, _) = check_whole(kind, &ev["object"]).unwrap();
            out.push((rv, ty, name_of(&ev["object"])));
            if rv >= until {
                return Some(out);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The checker.

struct Harness {
    world: Arc<World>,
    reflected: BTreeMap<Kind, Arc<Mutex<Reflected>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.world.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Harness {
    /// The namespace and the sentinels, then `writers` writers and one
    /// reflector per kind.
    async fn start(api: Arc<Https>, writers: usize, rng: &mut TestRng) -> Harness {
        let world = Arc::new(World {
            api,
            ledger: Mutex::new(BTreeMap::new()),
            stats: Stats::default(),
            gate: RwLock::new(()),
            stop: AtomicBool::new(false),
        });
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
        let (r, _) = world
            .definite(Method::POST, "/api/v1/namespaces", Some(&ns))
            .await;
        assert!(matches!(r.status, 201 | 409), "namespace: {}", r.text);
        for kind in KINDS {
            let body = kind.object(SENTINEL, 1, 0);
            let (r, _) = world
                .definite(Method::POST, &kind.collection(), Some(&body))
                .await;
            assert!(matches!(r.status, 201 | 409), "sentinel: {}", r.text);
        }
        let mut reflected = BTreeMap::new();
        let mut tasks = Vec::new();
        for kind in KINDS {
            let state = Arc::new(Mutex::new(Reflected::default()));
            reflected.insert(kind, state.clone());
            tasks.push(tokio::spawn(reflector(world.clone(), kind, state)));
        }
        for id in 0..writers {
            tasks.push(tokio::spawn(writer(world.clone(), id, rng.fork())));
        }
        Harness {
            world,
            reflected,
            tasks,
        }
    }

    /// The last resourceVersion each reflector has seen.
    fn positions(&self) -> BTreeMap<Kind, i64> {
        self.reflected
            .iter()
            .map(|(k, s)| (*k, s.lock().unwrap().last_rv))
            .collect()
    }

    /// With every writer paused: the store holds exactly what was
    /// acknowledged, whole; new writes get newer resourceVersions than any
    /// acknowledged before; each reflector (resumed across the outage) agrees
    /// with a fresh list, and a fresh watch from `before` (positions taken
    /// before the outage) replays what the reflector saw, or answers 410.
    async fn check(&self, what: &str, before: &BTreeMap<Kind, i64>) -> CheckReport {
        let world = &self.world;
        let _quiet = world.gate.write().await;
        let max_rv = world.stats.max_rv.load(Ordering::Relaxed);
        let ledger = world.ledger.lock().unwrap().clone();
        let mut report = CheckReport::default();
        for kind in KINDS {
            let (list_rv, listed) = list_checked(world, kind)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                list_rv >= max_rv,
                "{what}: list of {kind:?} at {list_rv}, but a write was acknowledged at {max_rv}"
            );
            for ((k, name), acked) in ledger.iter().filter(|((k, _), _)| *k == kind) {
                let found = listed.get(name);
                match (acked, found) {
                    (Acked::Absent, None) => {}
                    (Acked::Present { generation, rv }, Some((frv, fgeneration)))
                        if generation == fgeneration && rv == frv => {}
                    (acked, found) => panic!(
                        "{what}: {k:?} {name}: acknowledged {acked:?}, stored {found:?} (rv, generation)"
                    ),
                }
                report.objects += 1;
            }
            for name in listed.keys() {
                assert!(
                    name == SENTINEL || ledger.contains_key(&(kind, name.clone())),
                    "{what}: {kind:?} {name} is stored but was never acknowledged"
                );
            }
            // A sample of single reads agrees with the list.
            for (name, (rv, generation)) in listed.iter().take(20) {
                let obj = world
                    .get(kind, name)
                    .await
                    .unwrap_or_else(|| panic!("{what}: {name} listed, GET 404"));
                assert_eq!(
                    check_whole(kind, &obj).unwrap(),
                    (*rv, *generation),
                    "{what}: {name}"
                );
            }
            // A write now: a resourceVersion newer than everything before.
            let sentinel = world.get(kind, SENTINEL).await.expect("sentinel");
            let generation = check_whole(kind, &sentinel).unwrap().1 + 1;
            let (r, _) = world
                .definite(
                    Method::PUT,
                    &kind.path(SENTINEL),
                    Some(&kind.bump(sentinel, generation)),
                )
                .await;
            assert_eq!(r.status, 200, "{what}: sentinel update: {}", r.text);
            let until = rv_of(&r.body).unwrap();
            assert!(
                until > list_rv,
                "{what}: a new write got resourceVersion {until}, not newer than the list's {list_rv}"
            );
            // The reflector catches up to the sentinel and agrees with a list.
            let state = &self.reflected[&kind];
            let deadline = Instant::now() + Duration::from_secs(20);
            while state.lock().unwrap().last_rv < until {
                assert!(
                    Instant::now() < deadline,
                    "{what}: the {kind:?} reflector did not reach {until} (at {})",
                    state.lock().unwrap().last_rv
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (_, listed) = list_checked(world, kind).await.unwrap();
            let (seen, log, complete_after, violations) = {
                let s = state.lock().unwrap();
                (
                    s.objects.clone(),
                    s.log.clone(),
                    s.complete_after,
                    s.violations.clone(),
                )
            };
            assert!(
                violations.is_empty(),
                "{what}: {kind:?} watch: {violations:#?}"
            );
            assert_eq!(
                seen, listed,
                "{what}: the {kind:?} reflector differs from a list (a skipped event)"
            );
            // A fresh watch from before the outage replays the same events.
            let from = before[&kind];
            match replay(world, kind, from, until).await {
                None => report.gone += 1,
                Some(events) => {
                    if complete_after <= from {
                        let expected: Vec<_> = log
                            .into_iter()
                            .filter(|(rv, ..)| *rv > from && *rv <= until)
                            .collect();
                        assert_eq!(events, expected, "{what}: replay of {kind:?} from {from}");
                    }
                    assert!(
                        events.windows(2).all(|w| w[0].0 < w[1].0),
                        "{what}: replay out of order"
                    );
                    report.replayed += events.len();
                }
            }
            world.stats.max_rv.fetch_max(until, Ordering::Relaxed);
        }
        report
    }

    fn summary(&self) -> String {
        let mut out = self.world.stats.line();
        for (kind, s) in &self.reflected {
            let s = s.lock().unwrap();
            out.push_str(&format!(
                " | {kind:?} reflector: events={} lists={} watches={} gone={}",
                s.log.len(),
                s.lists,
                s.resumes,
                s.gone
            ));
        }
        out
    }
}

#[derive(Default, Debug)]
struct CheckReport {
    objects: usize,
    replayed: usize,
    gone: usize,
}

// ---------------------------------------------------------------------------
// The tests.

/// Kill the API server `kills` times at seeded moments under writers,
/// restart it on the same data, check after each restart.
async fn kill_apiserver_repeatedly(
    test: &str,
    backend: &str,
    server: &mut Apiserver,
    rng: &mut TestRng,
) {
    let kills = if soak() { 40 } else { 5 };
    let harness = Harness::start(server.client(), 4, rng).await;
    // Writers get going before the first kill.
    tokio::time::sleep(rng.millis(300, 600)).await;
    for round in 1..=kills {
        // Replays start from here: every event of the round, before and
        // after the kill.
        let before = harness.positions();
        tokio::time::sleep(rng.millis(150, 1200)).await;
        let acked = harness.world.stats.acked.load(Ordering::Relaxed);
        let pid = server.kill9();
        // Sometimes stay down a while: writers pile up connection errors.
        tokio::time::sleep(rng.millis(0, 400)).await;
        let down = Instant::now();
        server.restart().await;
        let what = format!("{test} ({backend}) after kill {round} of pid {pid}");
        let report = harness.check(&what, &before).await;
        eprintln!(
            "{what}: restarted in {:?}; {} acked before the kill; {report:?}; {}",
            down.elapsed(),
            acked,
            harness.summary()
        );
    }
    let stats = &harness.world.stats;
    assert!(
        stats.acked.load(Ordering::Relaxed) > 50,
        "too few writes: {}",
        harness.summary()
    );
    assert!(
        stats.conn_errors.load(Ordering::Relaxed) > 0,
        "writers never saw the outage: {}",
        harness.summary()
    );
    assert_eq!(
        stats.hangs.load(Ordering::Relaxed),
        0,
        "{}",
        harness.summary()
    );
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apiserver_kill9_on_sqlite_keeps_every_acknowledged_write() {
    let test = "apiserver_kill9_on_sqlite";
    let mut rng = TestRng::for_test(test);
    let dir = test_dir(test);
    let mut server = Apiserver::start(dir.path().join("data"), vec![]).await;
    assert_healthy(&server.client()).await;
    kill_apiserver_repeatedly(test, "sqlite", &mut server, &mut rng).await;
    assert_healthy(&server.client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apiserver_kill9_on_etcd_keeps_every_acknowledged_write() {
    let test = "apiserver_kill9_on_etcd";
    let Some(binary) = etcd_binary(test) else {
        return;
    };
    let mut rng = TestRng::for_test(test);
    let dir = test_dir(test);
    let etcd = Etcd::start(binary, dir.path().join("etcd")).await;
    let mut server = Apiserver::start(
        dir.path().join("data"),
        vec![
            "--storage=etcd".into(),
            format!("--etcd-servers={}", etcd.endpoint()),
        ],
    )
    .await;
    kill_apiserver_repeatedly(test, "etcd", &mut server, &mut rng).await;
    drop(server);
    drop(etcd);
}

/// The health endpoints of a healthy server, as upstream's: `ok`, or with
/// `?verbose` one line per check; each check on its own path.
async fn assert_healthy(api: &Https) {
    for endpoint in ["healthz", "livez", "readyz"] {
        let verbose = format!("[+]ping ok\n[+]etcd ok\n{endpoint} check passed\n");
        // Path, status, and the exact body (`None`: any body).
        let checks = [
            (format!("/{endpoint}"), 200, Some("ok")),
            (format!("/{endpoint}?verbose"), 200, Some(verbose.as_str())),
            (format!("/{endpoint}/etcd"), 200, Some("ok")),
            (format!("/{endpoint}/nope"), 404, None),
        ];
        for (path, status, body) in checks {
            let r = api.request(Method::GET, &path, None).await.unwrap();
            match body {
                Some(body) => assert_eq!((r.status, r.text.as_str()), (status, body), "{path}"),
                None => assert_eq!(r.status, status, "{path}: {}", r.text),
            }
        }
    }
}

/// `/readyz` (and `?verbose`, and `/readyz/etcd`) while etcd is down: 500,
/// the etcd check failed as upstream words it, answered promptly.
async fn assert_not_ready(api: &Https) {
    for path in ["/readyz", "/readyz?verbose"] {
        let start = Instant::now();
        let r = api.request(Method::GET, path, None).await.unwrap();
        assert_eq!(r.status, 500, "{path} with etcd down: {}", r.text);
        assert!(r.text.contains("[+]ping ok\n"), "{path}: {}", r.text);
        assert!(
            r.text.contains("[-]etcd failed: reason withheld\n"),
            "{path}: {}",
            r.text
        );
        assert!(
            r.text.ends_with("readyz check failed\n"),
            "{path}: {}",
            r.text
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            start.elapsed()
        );
    }
    let r = api
        .request(Method::GET, "/readyz/etcd", None)
        .await
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text);
    assert!(
        r.text
            .starts_with("internal server error: error getting data from etcd"),
        "{}",
        r.text
    );
    // Excluding the failing check is ready again (upstream's `?exclude=`).
    let r = api
        .request(Method::GET, "/readyz?exclude=etcd&verbose", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("[+]etcd excluded: ok\n"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_kill9_under_a_running_apiserver_fails_fast_and_recovers() {
    let test = "etcd_kill9_under_a_running_apiserver";
    let Some(binary) = etcd_binary(test) else {
        return;
    };
    let mut rng = TestRng::for_test(test);
    let dir = test_dir(test);
    let mut etcd = Etcd::start(binary, dir.path().join("etcd")).await;
    let mut server = Apiserver::start(
        dir.path().join("data"),
        vec![
            "--storage=etcd".into(),
            format!("--etcd-servers={}", etcd.endpoint()),
        ],
    )
    .await;
    let api = server.client();
    let pid = server.pid();
    assert_healthy(&api).await;
    let harness = Harness::start(api.clone(), 4, &mut rng).await;
    let outages = if soak() { 12 } else { 2 };
    for round in 1..=outages {
        let before = harness.positions();
        tokio::time::sleep(rng.millis(300, 1000)).await;
        let etcd_pid = etcd.kill9().unwrap();
        let killed = Instant::now();
        // Requests fail promptly with a 5xx naming the cause, no hang.
        let start = Instant::now();
        let r = api
            .request(Method::GET, &Kind::ConfigMap.path(SENTINEL), None)
            .await
            .unwrap_or_else(|e| panic!("GET with etcd down: {e}"));
        assert!(
            r.status >= 500,
            "GET with etcd down: {} {}",
            r.status,
            r.text
        );
        assert_eq!(r.body["kind"], "Status", "{}", r.text);
        // Upstream's shape for a storage failure: 500 InternalError, the
        // cause in the message.
        assert_eq!(r.body["reason"], "InternalError", "{}", r.text);
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("/registry/configmaps/crash/sentinel: etcd: "),
            "{}",
            r.text
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "GET took {:?}",
            start.elapsed()
        );
        let start = Instant::now();
        let cm = Kind::ConfigMap.object("during-outage", 1, 10);
        let r = api
            .request(Method::POST, &Kind::ConfigMap.collection(), Some(&cm))
            .await
            .unwrap_or_else(|e| panic!("POST with etcd down: {e}"));
        assert!(
            r.status >= 500,
            "POST with etcd down: {} {}",
            r.status,
            r.text
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "POST took {:?}",
            start.elapsed()
        );
        assert_not_ready(&api).await;
        // Down a little longer, writers and reflectors retrying.
        tokio::time::sleep(rng.millis(200, 1500)).await;
        assert!(server.alive(), "the API server died with etcd");
        let outage = killed.elapsed();
        etcd.restart().await;
        // Ready again by itself, same process.
        let back = Instant::now();
        loop {
            let r = api.request(Method::GET, "/readyz?verbose", None).await;
            if r.as_ref().is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "not ready 30 s after etcd came back: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let recovered = back.elapsed();
        assert_eq!(server.pid(), pid);
        assert!(server.alive());
        // The write attempted during the outage was refused: it is not there.
        let r = api
            .request(Method::DELETE, &Kind::ConfigMap.path("during-outage"), None)
            .await
            .unwrap();
        assert!(matches!(r.status, 200 | 404), "{}", r.text);
        let what = format!("{test} after etcd kill {round} (pid {etcd_pid})");
        let report = harness.check(&what, &before).await;
        eprintln!(
            "{what}: down {outage:?}, ready {recovered:?} after etcd's restart; {report:?}; {}",
            harness.summary()
        );
    }
    assert_healthy(&api).await;
    let stats = &harness.world.stats;
    assert_eq!(
        stats.hangs.load(Ordering::Relaxed),
        0,
        "{}",
        harness.summary()
    );
    assert!(
        stats.server_errors.load(Ordering::Relaxed) > 0,
        "writers never saw etcd's outage: {}",
        harness.summary()
    );
    let slowest = stats.slowest_failure_ms.load(Ordering::Relaxed);
    assert!(
        slowest < 10_000,
        "a failed request took {slowest} ms: {}",
        harness.summary()
    );
    drop(harness);
    drop(server);
    drop(etcd);
}
