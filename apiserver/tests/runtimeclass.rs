//! `node.k8s.io/v1` RuntimeClasses and the RuntimeClass admission plugin:
//! in-process over SQLite (plain HTTP, token auth), then with the real
//! `kubectl` against a started `berth-apiserver`.
//!
//! The kubectl tests are skipped with a printed reason when kubectl is
//! missing, unless `CI=true` or `BERTH_REQUIRE_RUNTIME=1`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_test_support::{free_port, required};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------

const TOKENS: &str = "admin-token,admin,1,\"system:masters\"\n\
n1-token,system:node:n1,2,system:nodes\n\
nobody-token,nobody,3\n";

const ADMIN: &str = "admin-token";
const RC: &str = "/apis/node.k8s.io/v1/runtimeclasses";
const PODS: &str = "/api/v1/namespaces/default/pods";

struct Server {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    body: Value,
}

async fn start(authenticator: Option<Authenticator>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::new(
        storage,
        ApiConfig {
            authenticator,
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
        _dir: dir,
    }
}

async fn start_with_tokens() -> Server {
    start(Some(Authenticator::parse(TOKENS).unwrap())).await
}

impl Server {
    async fn send(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if !token.is_empty() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let b = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(b))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp { status, body }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self.send(ADMIN, method, path, body).await;
        assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
        r.body
    }
}

fn runtime_class(name: &str, handler: &str) -> Value {
    json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": name}, "handler": handler})
}

/// A class with all three things the admission plugin copies into pods.
fn gvisor() -> Value {
    let mut rc = runtime_class("gvisor", "runsc");
    rc["overhead"] = json!({"podFixed": {"cpu": "250m", "memory": "64Mi"}});
    rc["scheduling"] = json!({"nodeSelector": {"sandbox": "gvisor"},
        "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]});
    rc
}

fn pod(name: &str, spec_extra: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
    if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), spec_extra.as_object()) {
        spec.extend(extra.clone());
    }
    p
}

/// A 422 naming exactly `fields`, each cause also in the message.
#[track_caller]
fn invalid(r: &Resp, fields: &[&str]) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["reason"], "Invalid", "{}", r.body);
    assert_eq!(r.body["details"]["kind"], "RuntimeClass", "{}", r.body);
    let causes = r.body["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let got: Vec<&str> = causes.iter().filter_map(|c| c["field"].as_str()).collect();
    assert_eq!(got, fields, "{}", r.body);
    let message = r.body["message"].as_str().unwrap_or("");
    for c in &causes {
        let field = c["field"].as_str().unwrap_or("");
        let cause = c["message"].as_str().unwrap_or("");
        assert!(message.contains(&format!("{field}: {cause}")), "{}", r.body);
    }
}

/// A 403 with exactly `message`.
#[track_caller]
fn refused(r: &Resp, message: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["reason"], "Forbidden", "{}", r.body);
    assert_eq!(r.body["message"], message, "{}", r.body);
}

#[tokio::test]
async fn runtimeclasses_are_served_and_discovered() {
    let s = start_with_tokens().await;
    let list = s.admin(Method::GET, "/apis/node.k8s.io/v1", None).await;
    let entry = list["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["name"] == "runtimeclasses"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["kind"], "RuntimeClass", "{list}");
    assert_eq!(entry["namespaced"], false, "{list}");
    assert_eq!(entry["singularName"], "runtimeclass", "{list}");
    assert!(entry.get("shortNames").is_none(), "{list}");
    let groups = s.admin(Method::GET, "/apis", None).await;
    assert!(
        groups["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["name"] == "node.k8s.io")),
        "{groups}"
    );

    let created = s
        .admin(Method::POST, RC, Some(runtime_class("runc", "runc")))
        .await;
    assert_eq!(created["handler"], "runc");
    assert!(created["metadata"]["namespace"].is_null(), "{created}");
    let got = s.admin(Method::GET, &format!("{RC}/runc"), None).await;
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
    let list = s.admin(Method::GET, RC, None).await;
    assert_eq!(list["kind"], "RuntimeClassList");
    assert_eq!(list["items"][0]["metadata"]["name"], "runc");

    // The same create twice.
    let r = s
        .send(ADMIN, Method::POST, RC, Some(runtime_class("runc", "runc")))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["reason"], "AlreadyExists");
    assert_eq!(
        r.body["message"],
        "runtimeclasses.node.k8s.io \"runc\" already exists"
    );

    // A cluster-scoped resource: no namespaced URL.
    let r = s
        .send(
            ADMIN,
            Method::GET,
            "/apis/node.k8s.io/v1/namespaces/default/runtimeclasses",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    s.admin(Method::DELETE, &format!("{RC}/runc"), None).await;
    let r = s
        .send(ADMIN, Method::GET, &format!("{RC}/runc"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

#[tokio::test]
async fn runtimeclass_validation() {
    let s = start_with_tokens().await;
    let label_msg = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";

    let r = s
        .send(
            ADMIN,
            Method::POST,
            RC,
            Some(runtime_class("upper", "RunSC")),
        )
        .await;
    invalid(&r, &["handler"]);
    let msg = r.body["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(&format!(
            "RuntimeClass \"upper\" is invalid: handler: Invalid value: \"RunSC\": {label_msg}"
        )),
        "{msg}"
    );
    // No handler at all is the empty handler: invalid, not a decoding error.
    let mut missing = runtime_class("missing", "");
    missing.as_object_mut().map(|o| o.remove("handler"));
    for body in [runtime_class("empty", ""), missing] {
        let r = s.send(ADMIN, Method::POST, RC, Some(body)).await;
        invalid(&r, &["handler"]);
        assert!(
            r.body["details"]["causes"][0]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("Invalid value: \"\": {label_msg}"))),
            "{}",
            r.body
        );
    }
    // The name is a DNS subdomain.
    let r = s
        .send(
            ADMIN,
            Method::POST,
            RC,
            Some(runtime_class("Not_OK", "runc")),
        )
        .await;
    invalid(&r, &["metadata.name"]);

    // Overhead quantities and scheduling, named as upstream names them.
    let mut bad = runtime_class("bad", "runc");
    bad["overhead"] = json!({"podFixed": {"cpu": "-1", "memory": "64Mi"}});
    bad["scheduling"] = json!({"nodeSelector": {"not a key!": "v"},
        "tolerations": [{"key": "k", "operator": "Maybe"},
                        {"key": "k", "operator": "Exists", "effect": "NoExecute"},
                        {"key": "k", "operator": "Exists", "effect": "NoExecute"}]});
    let r = s.send(ADMIN, Method::POST, RC, Some(bad)).await;
    invalid(
        &r,
        &[
            "overhead.limits[cpu]",
            "scheduling.nodeSelector",
            "scheduling.tolerations[0].operator",
            "scheduling.tolerations[2]",
        ],
    );
    assert_eq!(
        r.body["details"]["causes"][0]["message"],
        "Invalid value: \"-1\": must be greater than or equal to 0"
    );
    assert_eq!(
        r.body["details"]["causes"][2]["message"],
        "Unsupported value: \"Maybe\": supported values: \"Equal\", \"Exists\""
    );
    assert_eq!(
        r.body["details"]["causes"][3]["reason"],
        "FieldValueDuplicate"
    );

    // Unknown fields are refused under strict field validation.
    let mut unknown = runtime_class("unknown", "runc");
    unknown["handlr"] = json!("x");
    let r = s
        .send(
            ADMIN,
            Method::POST,
            &format!("{RC}?fieldValidation=Strict"),
            Some(unknown),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field \"handlr\"")),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn runtimeclass_handler_is_immutable() {
    let s = start_with_tokens().await;
    let mut rc = s.admin(Method::POST, RC, Some(gvisor())).await;
    // Labels and scheduling may change.
    rc["metadata"]["labels"] = json!({"tier": "sandboxed"});
    rc["scheduling"]["nodeSelector"] = json!({"sandbox": "gvisor", "disk": "ssd"});
    let rc = s
        .admin(Method::PUT, &format!("{RC}/gvisor"), Some(rc))
        .await;
    assert_eq!(rc["scheduling"]["nodeSelector"]["disk"], "ssd");

    let mut changed = rc.clone();
    changed["handler"] = json!("kata");
    let r = s
        .send(ADMIN, Method::PUT, &format!("{RC}/gvisor"), Some(changed))
        .await;
    invalid(&r, &["handler"]);
    assert_eq!(
        r.body["details"]["causes"][0]["message"],
        "Invalid value: \"kata\": field is immutable"
    );
    // A merge patch goes through the same rule.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(format!("{}{RC}/gvisor", s.base))
        .header("content-type", "application/merge-patch+json")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::from(
            json!({"handler": "kata"}).to_string(),
        )))
        .unwrap();
    let resp = s.client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let got = s.admin(Method::GET, &format!("{RC}/gvisor"), None).await;
    assert_eq!(got["handler"], "runsc");
}

#[tokio::test]
async fn pods_get_their_runtimeclass_applied() {
    let s = start_with_tokens().await;
    s.admin(Method::POST, RC, Some(gvisor())).await;
    s.admin(Method::POST, RC, Some(runtime_class("runc", "runc")))
        .await;

    // Unknown class.
    let r = s
        .send(
            ADMIN,
            Method::POST,
            PODS,
            Some(pod("lost", json!({"runtimeClassName": "nope"}))),
        )
        .await;
    refused(
        &r,
        "pods \"lost\" is forbidden: pod rejected: RuntimeClass \"nope\" not found",
    );

    // Overhead, nodeSelector and tolerations come from the class; the pod's
    // own selector and tolerations stay, before the class's.
    let p = pod(
        "sandboxed",
        json!({"runtimeClassName": "gvisor", "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]}),
    );
    let created = s.admin(Method::POST, PODS, Some(p)).await;
    let stored = s
        .admin(Method::GET, &format!("{PODS}/sandboxed"), None)
        .await;
    for spec in [&created["spec"], &stored["spec"]] {
        assert_eq!(spec["overhead"], json!({"cpu": "250m", "memory": "64Mi"}));
        assert_eq!(
            spec["nodeSelector"],
            json!({"disk": "ssd", "sandbox": "gvisor"})
        );
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"},
                {"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}
            ])
        );
    }
    // A toleration the pod already has is not added twice; the pod's own
    // overhead may be given if it is the class's (by value).
    let p = pod(
        "again",
        json!({"runtimeClassName": "gvisor", "overhead": {"cpu": "0.25", "memory": "64Mi"},
            "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]}),
    );
    let created = s.admin(Method::POST, PODS, Some(p)).await;
    assert_eq!(
        created["spec"]["tolerations"],
        json!([{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        created["spec"]["nodeSelector"],
        json!({"sandbox": "gvisor"})
    );

    // A class without overhead or scheduling changes nothing.
    let created = s
        .admin(
            Method::POST,
            PODS,
            Some(pod("plain", json!({"runtimeClassName": "runc"}))),
        )
        .await;
    assert!(created["spec"]["overhead"].is_null(), "{created}");
    assert!(created["spec"]["nodeSelector"].is_null(), "{created}");

    // Refusals.
    let cases = [
        (
            pod(
                "conflict",
                json!({"runtimeClassName": "gvisor", "nodeSelector": {"sandbox": "kata"}}),
            ),
            "pods \"conflict\" is forbidden: conflict: runtimeClass.scheduling.nodeSelector[sandbox] = gvisor; pod.spec.nodeSelector[sandbox] = kata",
        ),
        (
            pod(
                "other-overhead",
                json!({"runtimeClassName": "gvisor", "overhead": {"cpu": "1"}}),
            ),
            "pods \"other-overhead\" is forbidden: pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead",
        ),
        (
            pod("no-class", json!({"overhead": {"cpu": "100m"}})),
            "pods \"no-class\" is forbidden: pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead",
        ),
        (
            pod(
                "class-without-overhead",
                json!({"runtimeClassName": "runc", "overhead": {"cpu": "100m"}}),
            ),
            "pods \"class-without-overhead\" is forbidden: pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead",
        ),
    ];
    for (body, message) in cases {
        refused(
            &s.send(ADMIN, Method::POST, PODS, Some(body)).await,
            message,
        );
    }
    // Refused pods were not stored; dry runs are admitted the same way.
    let r = s
        .send(ADMIN, Method::GET, &format!("{PODS}/conflict"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = s
        .send(
            ADMIN,
            Method::POST,
            &format!("{PODS}?dryRun=All"),
            Some(pod("dry", json!({"runtimeClassName": "nope"}))),
        )
        .await;
    refused(
        &r,
        "pods \"dry\" is forbidden: pod rejected: RuntimeClass \"nope\" not found",
    );

    // Updates are not admitted again (upstream's plugin handles CREATE only):
    // deleting the class leaves its pods alone and their labels writable.
    s.admin(Method::DELETE, &format!("{RC}/gvisor"), None).await;
    let mut p = s
        .admin(Method::GET, &format!("{PODS}/sandboxed"), None)
        .await;
    p["metadata"]["labels"] = json!({"app": "web"});
    s.admin(Method::PUT, &format!("{PODS}/sandboxed"), Some(p))
        .await;
}

/// Admission is not an authorization step: it runs without authentication too.
#[tokio::test]
async fn admission_runs_without_authentication() {
    let s = start(None).await;
    let r = s
        .send(
            "",
            Method::POST,
            PODS,
            Some(pod("lost", json!({"runtimeClassName": "nope"}))),
        )
        .await;
    refused(
        &r,
        "pods \"lost\" is forbidden: pod rejected: RuntimeClass \"nope\" not found",
    );
}

#[tokio::test]
async fn nodes_read_runtimeclasses_but_do_not_write_them() {
    let s = start_with_tokens().await;
    s.admin(Method::POST, RC, Some(gvisor())).await;
    let node = "n1-token";
    let r = s
        .send(node, Method::GET, &format!("{RC}/gvisor"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s.send(node, Method::GET, RC, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["items"][0]["handler"], "runsc");
    let r = s
        .send(
            node,
            Method::GET,
            &format!("{RC}?watch=true&timeoutSeconds=1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let r = s
        .send(node, Method::POST, RC, Some(runtime_class("kata", "kata")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(
        r.body["message"],
        "runtimeclasses.node.k8s.io \"kata\" is forbidden: User \"system:node:n1\" cannot create resource \"runtimeclasses\" in API group \"node.k8s.io\" at the cluster scope"
    );
    let r = s
        .send(node, Method::DELETE, &format!("{RC}/gvisor"), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // A user with no role reads nothing.
    let r = s.send("nobody-token", Method::GET, RC, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // The bootstrap `system:node` role holds the same rule, as upstream.
    let role = s
        .admin(
            Method::GET,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node",
            None,
        )
        .await;
    assert!(
        role["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|r| {
                r["apiGroups"] == json!(["node.k8s.io"])
                    && r["resources"] == json!(["runtimeclasses"])
                    && r["verbs"] == json!(["get", "list", "watch"])
            })),
        "{role}"
    );
    // view/edit/admin do not include runtimeclasses (upstream neither).
    for name in ["view", "edit", "admin"] {
        let role = s
            .admin(
                Method::GET,
                &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
                None,
            )
            .await;
        assert!(
            !role.to_string().contains("runtimeclasses"),
            "{name}: {role}"
        );
    }
}

// ---------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------

fn kubectl_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

struct Apiserver {
    child: Child,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Apiserver {
    /// Start the server, or `None` (test skipped) when kubectl is missing.
    fn start() -> Option<Apiserver> {
        let Some(kubectl) = kubectl_binary() else {
            if required() {
                panic!("kubectl is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but not on PATH");
            }
            eprintln!("SKIPPED: kubectl not found on PATH");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Apiserver {
            child,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            kubectl,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(server.kubeconfig.exists()
            && server.run(&["get", "--raw", "/readyz"]).status.success())
        {
            assert!(
                Instant::now() < deadline,
                "berth-apiserver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    fn run_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_as(&self.kubeconfig, args)
    }

    /// Run kubectl, assert success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run kubectl, assert failure, return stderr.
    fn fails(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let out = self.run_as(kubeconfig, args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

const GVISOR: &str = "apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: runsc
overhead:
  podFixed:
    cpu: 250m
    memory: 64Mi
scheduling:
  nodeSelector:
    sandbox: gvisor
";

#[test]
fn kubectl_runtimeclasses() {
    let Some(k) = Apiserver::start() else { return };
    let res = k.ok(&["api-resources", "--api-group=node.k8s.io"]);
    assert!(
        res.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols == ["runtimeclasses", "node.k8s.io/v1", "false", "RuntimeClass"]
        }),
        "{res}"
    );

    let file = k.write("gvisor.yaml", GVISOR);
    assert!(
        k.ok(&["apply", "-f", &file])
            .contains("runtimeclass.node.k8s.io/gvisor created")
    );
    assert!(
        k.ok(&["apply", "-f", &file])
            .contains("runtimeclass.node.k8s.io/gvisor unchanged")
    );
    let runc = k.write(
        "runc.yaml",
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: runc\nhandler: runc\n",
    );
    assert!(
        k.ok(&["create", "-f", &runc])
            .contains("runtimeclass.node.k8s.io/runc created")
    );

    let table = k.ok(&["get", "runtimeclasses"]);
    assert_eq!(header(&table), ["NAME", "HANDLER", "AGE"], "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(rows, [["gvisor", "runsc"], ["runc", "runc"]], "{table}");
    let yaml = k.ok(&["get", "runtimeclass", "gvisor", "-o", "yaml"]);
    for line in [
        "apiVersion: node.k8s.io/v1",
        "kind: RuntimeClass",
        "handler: runsc",
        "cpu: 250m",
        "sandbox: gvisor",
    ] {
        assert!(yaml.contains(line), "{line} not in {yaml}");
    }
    assert_eq!(
        k.ok(&["get", "runtimeclass", "runc", "-o", "jsonpath={.handler}"]),
        "runc"
    );

    // A handler change is refused, naming the field.
    let stderr = k.fails(
        &k.kubeconfig,
        &[
            "apply",
            "-f",
            &k.write("kata.yaml", &GVISOR.replace("runsc", "kata")),
        ],
    );
    assert!(
        stderr.contains("handler: Invalid value: \"kata\": field is immutable"),
        "{stderr}"
    );
    // An invalid handler on create.
    let stderr = k.fails(
        &k.kubeconfig,
        &[
            "create",
            "-f",
            &k.write(
                "bad.yaml",
                &GVISOR
                    .replace("name: gvisor", "name: bad")
                    .replace("runsc", "RunSC"),
            ),
        ],
    );
    assert!(
        stderr
            .contains("is invalid: handler: Invalid value: \"RunSC\": a lowercase RFC 1123 label"),
        "{stderr}"
    );
    // The same create twice.
    let stderr = k.fails(&k.kubeconfig, &["create", "-f", &runc]);
    assert!(
        stderr.contains("AlreadyExists") && stderr.contains("\"runc\" already exists"),
        "{stderr}"
    );

    // Pods: an unknown class is refused with upstream's message.
    let pod = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: {class}\n  containers:\n  - name: c\n    image: nginx:1.27\n"
        )
    };
    let stderr = k.fails(
        &k.kubeconfig,
        &["apply", "-f", &k.write("lost.yaml", &pod("lost", "nope"))],
    );
    assert!(
        stderr
            .contains("pods \"lost\" is forbidden: pod rejected: RuntimeClass \"nope\" not found"),
        "{stderr}"
    );
    k.ok(&["apply", "-f", &k.write("web.yaml", &pod("web", "gvisor"))]);
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.spec.overhead.cpu} {.spec.nodeSelector.sandbox}"
        ]),
        "250m gvisor"
    );
    // Applying the same manifest again leaves the admitted fields alone.
    assert!(
        k.ok(&["apply", "-f", &k.write("web.yaml", &pod("web", "gvisor"))])
            .contains("pod/web unchanged")
    );

    // A node reads classes but may not write them.
    let out = Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
        .args(["kubeconfig", "--data-dir"])
        .arg(k.dir.path())
        .args(["--node", "n1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node_config =
        PathBuf::from(k.write("node.kubeconfig", &String::from_utf8_lossy(&out.stdout)));
    let out = k.run_as(&node_config, &["get", "runtimeclasses"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("gvisor"));
    let stderr = k.fails(
        &node_config,
        &[
            "create",
            "-f",
            &k.write("kata2.yaml", &GVISOR.replace("name: gvisor", "name: kata")),
        ],
    );
    assert!(
        stderr.contains("User \"system:node:n1\" cannot create resource \"runtimeclasses\" in API group \"node.k8s.io\""),
        "{stderr}"
    );

    assert!(
        k.ok(&["delete", "runtimeclass", "runc"])
            .contains("runtimeclass.node.k8s.io \"runc\" deleted")
    );
    let stderr = k.fails(&k.kubeconfig, &["get", "runtimeclass", "runc"]);
    assert!(
        stderr.contains("NotFound") && stderr.contains("\"runc\" not found"),
        "{stderr}"
    );
}
