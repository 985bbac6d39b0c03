//! Secrets encrypted at rest (`--encryption-provider-config`) on both
//! backends, and the data directory private at rest.
//!
//! In-process tests run the real HTTP API over the real storage (SQLite in a
//! temp dir; a private etcd per test, skipped with a printed reason when there
//! is no etcd binary, a failure when `CI=true` or `BERTH_REQUIRE_RUNTIME=1`)
//! and read the raw bytes underneath. Start-up behaviour (bad config, file
//! modes under umask 022, rotation with kubectl) runs the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine;
use berth_apiserver::api::{self, ApiConfig, ApiState};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::encryption::EncryptedStorage;
use berth_apiserver::storage::encryption::config::EncryptionConfiguration;
use berth_apiserver::storage::etcd::{EtcdProcess, EtcdStorage};
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_test_support::{free_port, required};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// A value no other test data contains, so finding it in raw bytes means a leak.
const PLAIN: &str = "correct-horse-battery-staple-7f3a";
const PLAIN2: &str = "second-secret-value-after-update-9c1e";

fn secret_key(fill: u8, len: usize) -> String {
    B64.encode(vec![fill; len])
}

fn config_text(providers: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
{providers}"
    )
}

fn aesgcm(name: &str, fill: u8) -> String {
    format!(
        "      - aesgcm:\n          keys:\n            - name: {name}\n              secret: {}\n",
        secret_key(fill, 32)
    )
}

fn secretbox(name: &str, fill: u8) -> String {
    format!(
        "      - secretbox:\n          keys:\n            - name: {name}\n              secret: {}\n",
        secret_key(fill, 32)
    )
}

const IDENTITY: &str = "      - identity: {}\n";

fn served() -> Vec<(&'static str, &'static str)> {
    api::resources::RESOURCES
        .iter()
        .map(|r| (r.group, r.name))
        .collect()
}

fn wrap(inner: Arc<dyn Storage>, providers: &str) -> Arc<EncryptedStorage> {
    let config =
        EncryptionConfiguration::parse(Path::new("test.yaml"), &config_text(providers)).unwrap();
    Arc::new(EncryptedStorage::new(inner, &config, &served()).unwrap().0)
}

fn sqlite(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(SqliteStorage::open(dir, SqliteOptions::default()).unwrap())
}

/// The real REST API over `storage` on a loopback port.
struct Server {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn serve(storage: Arc<dyn Storage>) -> Server {
    let state = ApiState::new(
        storage,
        ApiConfig {
            authenticator: None,
            ..ApiConfig::default()
        },
    );
    state.bootstrap().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(state)).await.unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Server {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }
}

fn secret(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {"password": B64.encode(value)}})
}

const SECRETS: &str = "/api/v1/namespaces/default/secrets";

/// `haystack` holds `value` raw or base64-encoded.
fn leaks(haystack: &[u8], value: &str) -> bool {
    let b64 = B64.encode(value);
    let found = |needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    found(value.as_bytes()) || found(b64.as_bytes())
}

fn db_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    [
        "berth-apiserver.db",
        "berth-apiserver.db-wal",
        "berth-apiserver.db-shm",
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.exists())
    .map(|p| {
        let bytes = std::fs::read(&p).unwrap();
        (p, bytes)
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_never_hold_a_secrets_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let storage = wrap(sqlite(dir.path()), &aesgcm("key1", 1));
    let server = serve(storage.clone()).await;
    let (status, _) = server
        .send(Method::POST, SECRETS, Some(secret("s1", PLAIN)))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The same create twice: AlreadyExists through the wrapper, as without it.
    let (status, _) = server
        .send(Method::POST, SECRETS, Some(secret("s1", PLAIN)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // ConfigMaps are not listed: stored as plain JSON.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"},
        "data": {"note": "plain-configmap-value-5d2b"}});
    let (status, _) = server
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let files = db_files(dir.path());
    assert!(files.len() >= 2, "expected the db and its WAL: {files:?}");
    for (path, bytes) in &files {
        assert!(!leaks(bytes, PLAIN), "{} holds the secret", path.display());
    }
    assert!(
        files
            .iter()
            .any(|(_, b)| leaks(b, "plain-configmap-value-5d2b")),
        "the ConfigMap should be stored in plaintext"
    );
    // Update: neither the old nor the new value reaches the files.
    let (status, mut current) = server
        .send(Method::GET, &format!("{SECRETS}/s1"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(current["data"]["password"], B64.encode(PLAIN));
    current["data"]["password"] = json!(B64.encode(PLAIN2));
    let (status, _) = server
        .send(Method::PUT, &format!("{SECRETS}/s1"), Some(current))
        .await;
    assert_eq!(status, StatusCode::OK);
    for (path, bytes) in db_files(dir.path()) {
        assert!(
            !leaks(&bytes, PLAIN),
            "{} holds the old secret",
            path.display()
        );
        assert!(
            !leaks(&bytes, PLAIN2),
            "{} holds the new secret",
            path.display()
        );
    }
    // Read back through the API: get and list give the data.
    let (_, got) = server
        .send(Method::GET, &format!("{SECRETS}/s1"), None)
        .await;
    assert_eq!(got["data"]["password"], B64.encode(PLAIN2));
    let (_, list) = server.send(Method::GET, SECRETS, None).await;
    assert_eq!(list["items"][0]["data"]["password"], B64.encode(PLAIN2));
    // An absurdly large Secret (1 MiB of data) round-trips too.
    let big = "x".repeat(1 << 20);
    let (status, _) = server
        .send(Method::POST, SECRETS, Some(secret("big", &big)))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, got) = server
        .send(Method::GET, &format!("{SECRETS}/big"), None)
        .await;
    assert_eq!(got["data"]["password"], B64.encode(&big));
    assert_eq!(storage.stale_reads(), 0);
}

/// A private etcd (skipped with a reason on a laptop, a failure under CI).
async fn etcd(test: &str) -> Option<EtcdProcess> {
    EtcdProcess::for_test(test).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_raw_value_is_aesgcm_ciphertext() {
    let Some(process) = etcd("etcd_raw_value_is_aesgcm_ciphertext").await else {
        return;
    };
    // Root "" as the binary uses it: the stored key is upstream's etcd key,
    // which is also the ciphertext's authenticated data.
    let etcd: Arc<dyn Storage> = Arc::new(
        EtcdStorage::connect(&[process.endpoint().to_string()], "")
            .await
            .unwrap(),
    );
    let storage = wrap(etcd.clone(), &aesgcm("key1", 1));
    let mut watch = storage.watch("/registry/secrets/", 0).await.unwrap();
    let server = serve(storage.clone()).await;
    let (status, _) = server
        .send(Method::POST, SECRETS, Some(secret("s1", PLAIN)))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut client = etcd_client::Client::connect([process.endpoint()], None)
        .await
        .unwrap();
    let raw = client
        .get("/registry/secrets/default/s1", None)
        .await
        .unwrap();
    let value = raw.kvs()[0].value().to_vec();
    assert!(
        value.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "raw etcd value: {:?}",
        String::from_utf8_lossy(&value[..value.len().min(40)])
    );
    assert!(!leaks(&value, PLAIN));
    let (_, got) = server
        .send(Method::GET, &format!("{SECRETS}/s1"), None)
        .await;
    assert_eq!(got["data"]["password"], B64.encode(PLAIN));
    // Update, then delete: watch events (and their previous values) arrive decrypted.
    let mut obj = got.clone();
    obj["data"]["password"] = json!(B64.encode(PLAIN2));
    let (status, _) = server
        .send(Method::PUT, &format!("{SECRETS}/s1"), Some(obj))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .send(Method::DELETE, &format!("{SECRETS}/s1"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut events = Vec::new();
    while events.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch event")
            .expect("stream open")
            .expect("decrypted event");
        events.push(ev);
    }
    let password = |v: &[u8]| -> Value {
        serde_json::from_slice::<Value>(v).unwrap()["data"]["password"].clone()
    };
    assert_eq!(password(&events[0].value), B64.encode(PLAIN));
    assert_eq!(password(&events[1].value), B64.encode(PLAIN2));
    assert_eq!(
        password(events[1].prev_value.as_deref().unwrap()),
        B64.encode(PLAIN)
    );
    assert_eq!(password(&events[2].value), B64.encode(PLAIN2));
    // A ConfigMap is not listed: plain JSON in etcd.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"a": "b"}});
    server
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm),
        )
        .await;
    let raw = client
        .get("/registry/configmaps/default/c1", None)
        .await
        .unwrap();
    assert!(raw.kvs()[0].value().starts_with(b"{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_first_writes_plaintext_but_reads_encrypted_data() {
    let dir = tempfile::tempdir().unwrap();
    let inner = sqlite(dir.path());
    let encrypted = wrap(inner.clone(), &secretbox("box1", 3));
    serve(encrypted)
        .await
        .send(Method::POST, SECRETS, Some(secret("old", PLAIN)))
        .await;
    let raw = inner
        .get("/registry/secrets/default/old")
        .await
        .unwrap()
        .unwrap();
    assert!(raw.value.starts_with(b"k8s:enc:secretbox:v1:box1:"));
    // Migrating away from encryption: identity first, the old key still listed.
    let storage = wrap(
        inner.clone(),
        &format!("{IDENTITY}{}", secretbox("box1", 3)),
    );
    let server = serve(storage.clone()).await;
    let (status, got) = server
        .send(Method::GET, &format!("{SECRETS}/old"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["data"]["password"], B64.encode(PLAIN));
    assert_eq!(storage.stale_reads(), 1);
    server
        .send(Method::POST, SECRETS, Some(secret("new", PLAIN2)))
        .await;
    let raw = inner
        .get("/registry/secrets/default/new")
        .await
        .unwrap()
        .unwrap();
    assert!(
        raw.value.starts_with(b"{"),
        "identity first writes plain JSON"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_a_500_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let inner = sqlite(dir.path());
    serve(wrap(inner.clone(), &aesgcm("key1", 1)))
        .await
        .send(Method::POST, SECRETS, Some(secret("s1", PLAIN)))
        .await;
    // The old key dropped from the configuration, and no identity.
    let server = serve(wrap(inner.clone(), &aesgcm("key2", 2))).await;
    for path in [format!("{SECRETS}/s1"), SECRETS.to_string()] {
        let (status, body) = server.send(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(r#"aesgcm key "key1""#), "{message}");
        assert!(
            message.contains("/registry/secrets/default/s1"),
            "{message}"
        );
        assert_eq!(body["reason"], "InternalError");
        assert!(!leaks(body.to_string().as_bytes(), PLAIN));
    }
    // Other resources are unaffected.
    let (status, _) = server
        .send(Method::GET, "/api/v1/namespaces/default/configmaps", None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ciphertext_is_an_error_not_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let inner = sqlite(dir.path());
    let server = serve(wrap(inner.clone(), &aesgcm("key1", 1))).await;
    server
        .send(Method::POST, SECRETS, Some(secret("s1", PLAIN)))
        .await;
    let key = "/registry/secrets/default/s1";
    let mut raw = inner.get(key).await.unwrap().unwrap().value;
    let last = raw.len() - 20;
    raw[last] ^= 0x01;
    inner.update(key, raw, None).await.unwrap();
    let (status, body) = server
        .send(Method::GET, &format!("{SECRETS}/s1"), None)
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("message authentication failed"),
        "{body}"
    );
    // A value moved to another key does not open either (the key is authenticated).
    let good = wrap(inner.clone(), &aesgcm("key1", 1));
    good.create(
        "/registry/secrets/default/a",
        b"{\"kind\":\"Secret\"}".to_vec(),
    )
    .await
    .unwrap();
    let moved = inner
        .get("/registry/secrets/default/a")
        .await
        .unwrap()
        .unwrap()
        .value;
    inner
        .create("/registry/secrets/default/b", moved)
        .await
        .unwrap();
    assert!(good.get("/registry/secrets/default/b").await.is_err());
}

// ---- the real binary ----

/// A running `berth-apiserver` whose log goes to DIR/../server.log.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// The server's log so far, without colour codes.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Start the binary under `umask 022` (the umask is set in a shell that then
/// execs the server: this test process's umask is never touched).
fn spawn(root: &Path, data: &Path, extra: &[&str]) -> Binary {
    let log = root.join(format!("server-{}.log", free_port()));
    let port = free_port();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 022; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_berth-apiserver"))
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    Binary {
        child: cmd.spawn().unwrap(),
        log,
    }
}

/// Wait until the server logs that it serves (bootstrap written), or exits.
fn wait_serving(server: &mut Binary) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if server.log().contains("berth-apiserver serving") {
            return;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("berth-apiserver exited ({status}):\n{}", server.log());
        }
        assert!(Instant::now() < deadline, "not serving:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(server: &mut Binary) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn bad_config_fails_start_up_naming_file_and_field() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let config = root.path().join("enc.yaml");
    let short = B64.encode(b"eight-by");
    std::fs::write(
        &config,
        config_text(&format!(
            "      - identity: {{}}\n      - aesgcm:\n          keys:\n            - name: key1\n              secret: {short}\n"
        )),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut server = spawn(root.path(), &data, &["--encryption-provider-config", cfg]);
    assert!(!wait_exit(&mut server).success());
    let log = server.log();
    assert!(log.contains(cfg), "{log}");
    assert!(
        log.contains("resources[0].providers[1].aesgcm.keys[0].secret")
            && log.contains("secret is not of the expected length, got 8"),
        "{log}"
    );
    assert!(!log.contains(&short), "the key leaked: {log}");
    // Nothing was written: the failure came before storage and PKI.
    assert!(!data.join("berth-apiserver.db").exists());
    assert!(!data.join("pki").exists());
    // A missing file names itself too.
    let missing = root.path().join("nope.yaml");
    let mut server = spawn(
        root.path(),
        &data,
        &["--encryption-provider-config", missing.to_str().unwrap()],
    );
    assert!(!wait_exit(&mut server).success());
    assert!(server.log().contains("nope.yaml"), "{}", server.log());
}

#[test]
fn data_files_are_private_under_umask_022() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = spawn(root.path(), &data, &[]);
    wait_serving(&mut server);
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("pki")), 0o700, "pki dir");
    for file in [
        "berth-apiserver.db",
        "berth-apiserver.db-wal",
        "berth-apiserver.db-shm",
        "tokens.csv",
        "admin.kubeconfig",
        "pki/ca.key",
        "pki/apiserver.key",
        "pki/apiserver-kubelet-client.key",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    // Certificates are public; they are inside the private directory anyway.
    assert_eq!(mode(&data.join("pki/ca.crt")) & 0o600, 0o600);
    assert!(!server.log().contains("made private"), "{}", server.log());
}

#[test]
fn open_data_dir_and_db_are_fixed_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // As an older version under umask 022 left them.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An empty database file is a new database to SQLite.
    let db = data.join("berth-apiserver.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A world-readable encryption config is flagged (not changed: it is the operator's).
    let config = root.path().join("enc.yaml");
    std::fs::write(&config, config_text(&aesgcm("key1", 1))).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut server = spawn(
        root.path(),
        &data,
        &["--encryption-provider-config", config.to_str().unwrap()],
    );
    wait_serving(&mut server);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("berth-apiserver.db")), 0o600);
    let log = server.log();
    let warned = |path: &Path, old: &str| {
        log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("made private")
                && l.contains(&format!("path={}", path.display()))
                && l.contains(old)
        })
    };
    assert!(warned(&data, "0755"), "{log}");
    assert!(warned(&data.join("berth-apiserver.db"), "0644"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("enc.yaml") && l.contains("0644")),
        "{log}"
    );
    assert_eq!(mode(&config), 0o644);
    // Secret values never reach the log.
    assert!(!log.contains(&secret_key(1, 32)), "{log}");
}

// ---- rotation with the real kubectl ----

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn kubectl_present() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("kubectl").is_file()));
    if !found {
        assert!(
            !required(),
            "kubectl is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but not on PATH"
        );
        eprintln!("SKIPPED: kubectl not found on PATH");
    }
    found
}

#[test]
fn rotation_by_rewriting_every_secret() {
    if !kubectl_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let config = root.path().join("enc.yaml");
    let kubeconfig = data.join("admin.kubeconfig");
    let cfg = config.to_str().unwrap().to_string();
    let start = |providers: &str| {
        std::fs::write(&config, config_text(providers)).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = spawn(root.path(), &data, &["--encryption-provider-config", &cfg]);
        wait_serving(&mut s);
        s
    };
    // The live Secrets' stored values: (all, those starting with `want`).
    let raw_prefixes = |want: &[u8]| -> (usize, usize) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let storage = SqliteStorage::open(&data, SqliteOptions::default()).unwrap();
            let list = storage
                .list("/registry/secrets/", Default::default())
                .await
                .unwrap();
            let matching = list
                .items
                .iter()
                .filter(|kv| kv.value.starts_with(want))
                .count();
            (list.items.len(), matching)
        })
    };
    let home = root.path();
    // key1 only: three Secrets in two namespaces.
    let server = start(&aesgcm("key1", 1));
    kubectl(&kubeconfig, home, &["create", "namespace", "other"], None);
    for (ns, name, value) in [
        ("default", "a", PLAIN),
        ("default", "b", PLAIN2),
        ("other", "c", "third-value"),
    ] {
        kubectl(
            &kubeconfig,
            home,
            &[
                "-n",
                ns,
                "create",
                "secret",
                "generic",
                name,
                &format!("--from-literal=password={value}"),
            ],
            None,
        );
    }
    drop(server);
    assert_eq!(raw_prefixes(b"k8s:enc:aesgcm:v1:key1:"), (3, 3));
    // Rotate: the new key first, the old one still readable; rewrite all.
    let server = start(&format!("{}{}", aesgcm("key2", 2), aesgcm("key1", 1)));
    let all = kubectl(
        &kubeconfig,
        home,
        &["get", "secrets", "-A", "-o", "json"],
        None,
    );
    kubectl(&kubeconfig, home, &["replace", "-f", "-"], Some(&all));
    drop(server);
    assert_eq!(raw_prefixes(b"k8s:enc:aesgcm:v1:key2:"), (3, 3));
    // Drop the old key: every Secret still reads, with its data.
    let server = start(&aesgcm("key2", 2));
    let out = kubectl(
        &kubeconfig,
        home,
        &["get", "secrets", "-A", "-o", "json"],
        None,
    );
    let list: Value = serde_json::from_slice(&out).unwrap();
    let mut got: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let pw = B64.decode(s["data"]["password"].as_str().unwrap()).unwrap();
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                String::from_utf8(pw).unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("a".to_string(), PLAIN.to_string()),
            ("b".to_string(), PLAIN2.to_string()),
            ("c".to_string(), "third-value".to_string())
        ]
    );
    drop(server);
}
