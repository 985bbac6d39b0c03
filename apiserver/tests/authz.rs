//! In-process tests of authorization (Node authorizer + NodeRestriction,
//! `system:masters`, everyone else forbidden) over SQLite storage.

use std::sync::Arc;

use axum::body::Bytes;
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const TOKENS: &str = "admin-token,admin,1,\"system:masters\"\n\
n1-token,system:node:n1,2,system:nodes\n\
n2-token,system:node:n2,3,system:nodes\n\
nobody-token,nobody,4\n\
fake-node-token,system:node:n1,5,\"some-group\"\n";

struct Server {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    body: Value,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::new(
        storage,
        ApiConfig {
            authenticator: Some(Authenticator::parse(TOKENS).unwrap()),
            ..ApiConfig::default()
        },
    );
    state.bootstrap().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(state)).await.unwrap();
    });
    let s = Server {
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
        _dir: dir,
    };
    s.fixtures().await;
    s
}

impl Server {
    async fn req(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        ct: &str,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", ct);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
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

    async fn send(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.req(Some(token), method, path, "application/json", body)
            .await
    }

    async fn patch(&self, token: &str, path: &str, body: Value) -> Resp {
        self.req(
            Some(token),
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(body),
        )
        .await
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self.send("admin-token", method, path, body).await;
        assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
        r.body
    }

    async fn fixtures(&self) {
        for n in ["n1", "n2"] {
            self.admin(Method::POST, "/api/v1/nodes", Some(node(n)))
                .await;
            self.admin(Method::POST, LEASES, Some(lease(n))).await;
        }
        let mut p1 = pod("p1", "n1");
        p1["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "cm-used"}}]);
        p1["spec"]["containers"][0]["env"] = json!([{"name": "PW",
            "valueFrom": {"secretKeyRef": {"name": "secret-used", "key": "pw"}}}]);
        self.admin(Method::POST, PODS, Some(p1)).await;
        self.admin(Method::POST, PODS, Some(pod("x", "n2"))).await;
        self.admin(Method::POST, PODS, Some(pod("unbound", "")))
            .await;
        for name in ["cm-used", "cm-other"] {
            self.admin(
                Method::POST,
                "/api/v1/namespaces/default/configmaps",
                Some(json!({"metadata": {"name": name}, "data": {"k": "v"}})),
            )
            .await;
        }
        for name in ["secret-used", "secret-other"] {
            self.admin(
                Method::POST,
                "/api/v1/namespaces/default/secrets",
                Some(json!({"metadata": {"name": name}, "stringData": {"pw": "v"}})),
            )
            .await;
        }
    }
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn lease(name: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}})
}

fn pod(name: &str, node: &str) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
    if !node.is_empty() {
        p["spec"]["nodeName"] = json!(node);
    }
    p
}

fn mirror_pod(name: &str, node: &str) -> Value {
    let mut p = pod(name, node);
    p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
    p
}

#[track_caller]
fn forbidden(r: &Resp) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["apiVersion"], "v1");
    assert_eq!(r.body["status"], "Failure");
    assert_eq!(r.body["reason"], "Forbidden");
    assert_eq!(r.body["code"], 403);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains(" is forbidden: User \""),
        "{}",
        r.body
    );
}

/// A 403 from admission (NodeRestriction), with exactly `message`.
#[track_caller]
fn refused(r: &Resp, message: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["reason"], "Forbidden", "{}", r.body);
    assert_eq!(r.body["message"], message, "{}", r.body);
}

const N1: &str = "n1-token";

#[tokio::test]
async fn node_manages_its_own_node_and_lease() {
    let s = start().await;
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "ok"}]}});
    // Its own Node and status.
    let r = s.patch(N1, "/api/v1/nodes/n1/status", status.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["conditions"][0]["type"], "Ready");
    let mut n1 = s.send(N1, Method::GET, "/api/v1/nodes/n1", None).await.body;
    n1["metadata"]["labels"] = json!({"a": "b"});
    let r = s.send(N1, Method::PUT, "/api/v1/nodes/n1", Some(n1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Reads of every node.
    let r = s.send(N1, Method::GET, "/api/v1/nodes", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let r = s.send(N1, Method::GET, "/api/v1/nodes/n2", None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Not other nodes.
    let r = s.patch(N1, "/api/v1/nodes/n2/status", status.clone()).await;
    forbidden(&r);
    assert_eq!(
        r.body["message"],
        "nodes \"n2\" is forbidden: User \"system:node:n1\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope: node 'n1' cannot modify node 'n2'"
    );
    assert_eq!(r.body["details"], json!({"name": "n2", "kind": "nodes"}));
    let n2 = s.send(N1, Method::GET, "/api/v1/nodes/n2", None).await.body;
    forbidden(&s.send(N1, Method::PUT, "/api/v1/nodes/n2", Some(n2)).await);
    refused(
        &s.send(N1, Method::POST, "/api/v1/nodes", Some(node("n3")))
            .await,
        "nodes \"n3\" is forbidden: node \"n1\" is not allowed to modify node \"n3\"",
    );
    // No deletes, not even its own.
    for n in ["n1", "n2"] {
        let r = s
            .send(N1, Method::DELETE, &format!("/api/v1/nodes/{n}"), None)
            .await;
        forbidden(&r);
        assert_eq!(
            r.body["message"],
            format!(
                "nodes \"{n}\" is forbidden: User \"system:node:n1\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
            )
        );
    }
    forbidden(&s.send(N1, Method::DELETE, "/api/v1/nodes", None).await);
    // A fresh node creates its own Node.
    let r = s
        .send("n2-token", Method::DELETE, "/api/v1/nodes/n2", None)
        .await;
    forbidden(&r);
    s.admin(Method::DELETE, "/api/v1/nodes/n2", None).await;
    let r = s
        .send("n2-token", Method::POST, "/api/v1/nodes", Some(node("n2")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Leases: renew its own, not n2's.
    let path = format!("{LEASES}/n1");
    let mut l = s.send(N1, Method::GET, &path, None).await.body;
    l["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    let r = s.send(N1, Method::PUT, &path, Some(l)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let renew = json!({"spec": {"renewTime": "2026-01-01T00:00:10.000000Z"}});
    let r = s.patch(N1, &path, renew.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s.patch(N1, &format!("{LEASES}/n2"), renew.clone()).await;
    forbidden(&r);
    assert_eq!(
        r.body["message"],
        "leases.coordination.k8s.io \"n2\" is forbidden: User \"system:node:n1\" cannot patch resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\": can only access node lease with the same name as the requesting node"
    );
    assert_eq!(
        r.body["details"],
        json!({"name": "n2", "kind": "leases", "group": "coordination.k8s.io"})
    );
    forbidden(&s.send(N1, Method::GET, &format!("{LEASES}/n2"), None).await);
    forbidden(&s.send(N1, Method::DELETE, &path, None).await);
    forbidden(&s.send(N1, Method::GET, LEASES, None).await);
    // Creating: its own name only, and only in kube-node-lease.
    s.admin(Method::DELETE, &path, None).await;
    let r = s.send(N1, Method::POST, LEASES, Some(lease("n1"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    forbidden(&s.send(N1, Method::POST, LEASES, Some(lease("n9"))).await);
    let r = s
        .send(
            N1,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            Some(lease("n1")),
        )
        .await;
    forbidden(&r);
}

#[tokio::test]
async fn node_pod_rules() {
    let s = start().await;
    let status = json!({"status": {"phase": "Running"}});
    // Status of its own pod.
    let r = s
        .patch(N1, &format!("{PODS}/p1/status"), status.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Running");
    let p1 = s.send(N1, Method::GET, &format!("{PODS}/p1"), None).await;
    assert_eq!(p1.status, StatusCode::OK);
    let r = s
        .send(
            N1,
            Method::PUT,
            &format!("{PODS}/p1/status"),
            Some(p1.body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Not the pod spec.
    forbidden(
        &s.send(N1, Method::PUT, &format!("{PODS}/p1"), Some(p1.body))
            .await,
    );
    forbidden(
        &s.patch(
            N1,
            &format!("{PODS}/p1"),
            json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .await,
    );
    // Not n2's pods, nor unbound ones.
    let r = s
        .patch(N1, &format!("{PODS}/x/status"), status.clone())
        .await;
    forbidden(&r);
    assert_eq!(
        r.body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"x\" is forbidden: User \"system:node:n1\" cannot patch resource \"pods/status\" in API group \"\" in the namespace \"default\": node 'n1' cannot update pods bound to node 'n2'",
            "reason": "Forbidden", "details": {"name": "x", "kind": "pods"}, "code": 403})
    );
    forbidden(
        &s.patch(N1, &format!("{PODS}/unbound/status"), status.clone())
            .await,
    );
    forbidden(&s.send(N1, Method::GET, &format!("{PODS}/x"), None).await);
    let r = s.send(N1, Method::DELETE, &format!("{PODS}/x"), None).await;
    forbidden(&r);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .ends_with("node 'n1' cannot delete pods bound to node 'n2'")
    );
    forbidden(&s.send(N1, Method::DELETE, PODS, None).await);
    forbidden(
        &s.send(
            N1,
            Method::POST,
            &format!("{PODS}/unbound/binding"),
            Some(
                json!({"metadata": {"name": "unbound"}, "target": {"kind": "Node", "name": "n1"}}),
            ),
        )
        .await,
    );
    // The status of x is untouched; n2 may update it.
    let r = s
        .patch("n2-token", &format!("{PODS}/x/status"), status.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Lists and watches only with spec.nodeName=<itself>.
    let r = s
        .send(
            N1,
            Method::GET,
            &format!("{PODS}?fieldSelector=spec.nodeName%3Dn1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1"]);
    let r = s
        .send(
            N1,
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s
        .send(
            N1,
            Method::GET,
            "/api/v1/pods?watch=true&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dn1",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.send(N1, Method::GET, PODS, None).await;
    forbidden(&r);
    assert_eq!(
        r.body["message"],
        "pods is forbidden: User \"system:node:n1\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\": can only list/watch pods with spec.nodeName field selector"
    );
    assert_eq!(r.body["details"], json!({"kind": "pods"}));
    forbidden(
        &s.send(
            N1,
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn2",
            None,
        )
        .await,
    );
    forbidden(
        &s.send(
            N1,
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName!%3Dn1",
            None,
        )
        .await,
    );
    forbidden(
        &s.send(N1, Method::GET, "/api/v1/pods?watch=true", None)
            .await,
    );

    // Creates: mirror pods bound to itself, owned by its Node (NodeRestriction;
    // every rule in tests/noderestriction.rs).
    refused(
        &s.send(N1, Method::POST, PODS, Some(pod("plain", "n1")))
            .await,
        "pods \"plain\" is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node \"n1\" can only create mirror pods",
    );
    refused(
        &s.send(N1, Method::POST, PODS, Some(mirror_pod("m2", "n2")))
            .await,
        "pods \"m2\" is forbidden: node \"n1\" can only create pods with spec.nodeName set to itself",
    );
    let uid = s.admin(Method::GET, "/api/v1/nodes/n1", None).await["metadata"]["uid"].clone();
    let mut m = mirror_pod("static-n1", "n1");
    m["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node",
        "name": "n1", "uid": uid, "controller": true}]);
    let r = s.send(N1, Method::POST, PODS, Some(m)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // And deletes pods bound to itself.
    let r = s
        .send(
            N1,
            Method::DELETE,
            &format!("{PODS}/static-n1?gracePeriodSeconds=0"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A missing pod is a 404, not a 403.
    let r = s.send(N1, Method::GET, &format!("{PODS}/nope"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn node_reads_of_referenced_objects_and_events() {
    let s = start().await;
    let get = |path: String| {
        let s = &s;
        async move { s.send(N1, Method::GET, &path, None).await }
    };
    let ns = "/api/v1/namespaces/default";
    assert_eq!(
        get(format!("{ns}/configmaps/cm-used")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(format!("{ns}/secrets/secret-used")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(format!("{ns}/serviceaccounts/default")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = get(format!("{ns}/configmaps/cm-other")).await;
    forbidden(&r);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .ends_with("no relationship found between node 'n1' and this object")
    );
    forbidden(&get(format!("{ns}/secrets/secret-other")).await);
    forbidden(&get(format!("{ns}/serviceaccounts/other")).await);
    forbidden(&get(format!("{ns}/secrets")).await);
    forbidden(&get(format!("{ns}/configmaps")).await);
    // n2's pods reference nothing: n2 may read neither.
    let r = s
        .send(
            "n2-token",
            Method::GET,
            &format!("{ns}/secrets/secret-used"),
            None,
        )
        .await;
    forbidden(&r);
    forbidden(
        &s.send(
            N1,
            Method::POST,
            &format!("{ns}/configmaps"),
            Some(json!({"metadata": {"name": "new"}})),
        )
        .await,
    );
    // Namespaces: get only.
    assert_eq!(
        get("/api/v1/namespaces/default".into()).await.status,
        StatusCode::OK
    );
    forbidden(&get("/api/v1/namespaces".into()).await);
    forbidden(
        &s.send(N1, Method::DELETE, "/api/v1/namespaces/kube-public", None)
            .await,
    );
    // Events: create in any namespace, not read.
    for events_ns in ["default", "kube-system"] {
        let ev = json!({"metadata": {"name": format!("n1.{events_ns}")},
            "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Starting",
            "message": "Starting kubelet.", "type": "Normal", "source": {"component": "kubelet", "host": "n1"}});
        let r = s
            .send(
                N1,
                Method::POST,
                &format!("/api/v1/namespaces/{events_ns}/events"),
                Some(ev),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = s
        .patch(
            N1,
            "/api/v1/namespaces/default/events/n1.default",
            json!({"count": 2}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    forbidden(&get("/api/v1/namespaces/default/events".into()).await);
}

#[tokio::test]
async fn admin_others_and_anonymous() {
    let s = start().await;
    // No token: 401 as before (health stays public).
    let r = s
        .req(None, Method::GET, "/api/v1/nodes", "application/json", None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .req(None, Method::GET, "/healthz", "application/json", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A valid token without groups: discovery only.
    for path in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/coordination.k8s.io/v1",
        "/version",
        "/healthz",
        "/openapi/v3",
    ] {
        let r = s.send("nobody-token", Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    for (method, path) in [
        (Method::GET, "/api/v1/nodes"),
        (Method::GET, "/api/v1/namespaces/default"),
        (Method::GET, "/api/v1/pods"),
        (Method::GET, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"),
        (Method::DELETE, "/api/v1/nodes/n1"),
        (Method::POST, "/api/v1/namespaces/default/configmaps"),
    ] {
        let r = s
            .send(
                "nobody-token",
                method,
                path,
                Some(json!({"metadata": {"name": "c"}})),
            )
            .await;
        forbidden(&r);
    }
    let r = s
        .send("nobody-token", Method::GET, "/api/v1/nodes/n1", None)
        .await;
    assert_eq!(
        r.body["message"],
        "nodes \"n1\" is forbidden: User \"nobody\" cannot get resource \"nodes\" in API group \"\" at the cluster scope"
    );
    // A node-looking name without the system:nodes group is nobody.
    forbidden(
        &s.send("fake-node-token", Method::GET, "/api/v1/nodes/n1", None)
            .await,
    );
    forbidden(
        &s.patch(
            "fake-node-token",
            &format!("{PODS}/p1/status"),
            json!({"status": {}}),
        )
        .await,
    );

    // system:masters may do everything.
    s.admin(Method::GET, "/api/v1/pods", None).await;
    s.admin(Method::GET, "/api/v1/namespaces/default/secrets", None)
        .await;
    let r = s
        .patch(
            "admin-token",
            "/api/v1/nodes/n2/status",
            json!({"status": {}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s
        .patch(
            "admin-token",
            &format!("{PODS}/x/status"),
            json!({"status": {"phase": "Running"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.admin(Method::DELETE, &format!("{LEASES}/n2"), None).await;
    s.admin(Method::DELETE, "/api/v1/nodes/n2", None).await;
    s.admin(Method::POST, PODS, Some(pod("plain", "n1"))).await;
    s.admin(
        Method::DELETE,
        &format!("{PODS}/x?gracePeriodSeconds=0"),
        None,
    )
    .await;
}

/// One NodeRestriction case: `n1` (unless `token` says otherwise) sends
/// `body` and gets `want`: `Ok(code)` or `Err(message)` (a 403).
struct Case {
    name: &'static str,
    token: &'static str,
    method: Method,
    path: String,
    merge_patch: bool,
    body: Value,
    want: Result<StatusCode, String>,
}

impl Case {
    fn create_pod(name: &'static str, body: Value, want: Result<StatusCode, String>) -> Case {
        Case {
            name,
            token: N1,
            method: Method::POST,
            path: PODS.into(),
            merge_patch: false,
            body,
            want,
        }
    }

    fn patch(
        name: &'static str,
        path: &str,
        body: Value,
        want: Result<StatusCode, String>,
    ) -> Case {
        Case {
            name,
            token: N1,
            method: Method::PATCH,
            path: path.into(),
            merge_patch: true,
            body,
            want,
        }
    }
}

async fn run_cases(s: &Server, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let ct = if c.merge_patch {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let r = s
            .req(
                Some(c.token),
                c.method.clone(),
                &c.path,
                ct,
                Some(c.body.clone()),
            )
            .await;
        let ok = match &c.want {
            Ok(code) => r.status == *code,
            Err(message) => {
                r.status == StatusCode::FORBIDDEN
                    && r.body["reason"] == "Forbidden"
                    && r.body["message"] == json!(message)
            }
        };
        if !ok {
            failures.push(format!(
                "{}: want {:?}, got {} {}",
                c.name, c.want, r.status, r.body
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A mirror pod of `n1` as the agent (and the kubelet) makes it: bound to
/// the node, owned by its Node object.
fn owned_mirror(name: &str, uid: &Value) -> Value {
    let mut p = mirror_pod(name, "n1");
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node",
        "name": "n1", "uid": uid, "controller": true}]);
    p
}

fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut at = &mut v;
    for seg in parent.split('/').filter(|s| !s.is_empty()) {
        at = match seg.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[seg],
        };
    }
    at[key] = value;
    v
}

/// Upstream's NodeRestriction pod-create cases (`admission_test.go`,
/// "mirror pod" family), against the real server: each mirror pod refers to
/// or is owned by something it must not be.
#[tokio::test]
async fn noderestriction_pod_create_cases() {
    let s = start().await;
    let uid = s.admin(Method::GET, "/api/v1/nodes/n1", None).await["metadata"]["uid"].clone();
    let n2_uid = s.admin(Method::GET, "/api/v1/nodes/n2", None).await["metadata"]["uid"].clone();
    let m = |name: &str| owned_mirror(name, &uid);
    let owner = |fields: Value| {
        let mut o = json!({"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid, "controller": true});
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                o.as_object_mut().unwrap().remove(k);
            } else {
                o[k] = v.clone();
            }
        }
        o
    };
    let msg =
        |pod: &str, reason: &str| Err(format!("pods \"{pod}\" is forbidden: node \"n1\" {reason}"));
    let created = Ok(StatusCode::CREATED);
    let cases = vec![
        Case::create_pod("ok: a mirror pod owned by its node", m("ok"), created.clone()),
        Case::create_pod("same pod twice: a conflict, not a 403", m("ok"), Ok(StatusCode::CONFLICT)),
        Case::create_pod(
            "not a mirror pod",
            with(m("plain"), "/metadata/annotations", json!({})),
            Err("pods \"plain\" is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node \"n1\" can only create mirror pods".into()),
        ),
        Case::create_pod("bound to another node", with(m("other"), "/spec/nodeName", json!("n2")),
            msg("other", "can only create pods with spec.nodeName set to itself")),
        Case::create_pod("unbound", with(m("unbound"), "/spec/nodeName", json!("")),
            msg("unbound", "can only create pods with spec.nodeName set to itself")),
        Case::create_pod("no owner", with(m("noowner"), "/metadata/ownerReferences", json!([])),
            msg("noowner", "can only create pods with an owner reference set to itself")),
        Case::create_pod("two owners",
            with(m("two"), "/metadata/ownerReferences", json!([owner(json!({})), owner(json!({"name": "n1", "kind": "Node", "uid": "x"}))])),
            msg("two", "can only create pods with a single owner reference set to itself")),
        Case::create_pod("owner of another kind",
            with(m("kind"), "/metadata/ownerReferences", json!([owner(json!({"kind": "Pod"}))])),
            msg("kind", "can only create pods with an owner reference set to itself")),
        Case::create_pod("owner of another apiVersion",
            with(m("apiv"), "/metadata/ownerReferences", json!([owner(json!({"apiVersion": "v2"}))])),
            msg("apiv", "can only create pods with an owner reference set to itself")),
        Case::create_pod("owned by another node",
            with(m("othernode"), "/metadata/ownerReferences", json!([owner(json!({"name": "n2", "uid": n2_uid}))])),
            msg("othernode", "can only create pods with an owner reference set to itself")),
        Case::create_pod("controller unset",
            with(m("ctlnil"), "/metadata/ownerReferences", json!([owner(json!({"controller": null}))])),
            msg("ctlnil", "can only create pods with a controller owner reference set to itself")),
        Case::create_pod("controller false",
            with(m("ctlfalse"), "/metadata/ownerReferences", json!([owner(json!({"controller": false}))])),
            msg("ctlfalse", "can only create pods with a controller owner reference set to itself")),
        Case::create_pod("blockOwnerDeletion",
            with(m("block"), "/metadata/ownerReferences", json!([owner(json!({"blockOwnerDeletion": true}))])),
            msg("block", "must not set blockOwnerDeletion on an owner reference")),
        Case::create_pod("another incarnation's uid",
            with(m("uid"), "/metadata/ownerReferences", json!([owner(json!({"uid": "bogus"}))])),
            Err(format!("pods \"uid\" is forbidden: node n1 UID mismatch: expected bogus got {}", uid.as_str().unwrap()))),
        Case::create_pod("service account",
            with(m("sa"), "/spec/serviceAccountName", json!("builder")),
            msg("sa", "can not create pods that reference a service account")),
        Case::create_pod("secret volume",
            with(m("secvol"), "/spec/volumes", json!([{"name": "v", "secret": {"secretName": "secret-other"}}])),
            msg("secvol", "can not create pods that reference secrets")),
        Case::create_pod("secret in projected volume",
            with(m("secproj"), "/spec/volumes", json!([{"name": "v", "projected": {"sources": [{"secret": {"name": "secret-other"}}]}}])),
            msg("secproj", "can not create pods that reference secrets")),
        Case::create_pod("secret as CSI publish secret",
            with(m("seccsi"), "/spec/volumes", json!([{"name": "v", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "secret-other"}}}])),
            msg("seccsi", "can not create pods that reference secrets")),
        Case::create_pod("secret env",
            with(m("secenv"), "/spec/containers/0/env", json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "secret-other", "key": "pw"}}}])),
            msg("secenv", "can not create pods that reference secrets")),
        Case::create_pod("secret envFrom in an init container",
            with(m("secinit"), "/spec/initContainers", json!([{"name": "i", "image": "busybox", "envFrom": [{"secretRef": {"name": "secret-other"}}]}])),
            msg("secinit", "can not create pods that reference secrets")),
        Case::create_pod("image pull secret",
            with(m("pull"), "/spec/imagePullSecrets", json!([{"name": "secret-other"}])),
            msg("pull", "can not create pods that reference secrets")),
        Case::create_pod("configmap volume",
            with(m("cmvol"), "/spec/volumes", json!([{"name": "v", "configMap": {"name": "cm-other"}}])),
            msg("cmvol", "can not create pods that reference configmaps")),
        Case::create_pod("configmap in projected volume",
            with(m("cmproj"), "/spec/volumes", json!([{"name": "v", "projected": {"sources": [{"configMap": {"name": "cm-other"}}]}}])),
            msg("cmproj", "can not create pods that reference configmaps")),
        Case::create_pod("configmap env",
            with(m("cmenv"), "/spec/containers/0/env", json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm-other", "key": "k"}}}])),
            msg("cmenv", "can not create pods that reference configmaps")),
        Case::create_pod("configmap envFrom",
            with(m("cmfrom"), "/spec/containers/0/envFrom", json!([{"configMapRef": {"name": "cm-other"}}])),
            msg("cmfrom", "can not create pods that reference configmaps")),
        Case::create_pod("cluster trust bundle",
            with(m("ctb"), "/spec/volumes", json!([{"name": "v", "projected": {"sources": [{"clusterTrustBundle": {"name": "b", "path": "ca.crt"}}]}}])),
            msg("ctb", "can not create pods that reference clustertrustbundles")),
        Case::create_pod("persistent volume claim",
            with(m("pvc"), "/spec/volumes", json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}])),
            msg("pvc", "can not create pods that reference persistentvolumeclaims")),
        Case::create_pod("ephemeral volume (a claim of its own)",
            with(m("eph"), "/spec/volumes", json!([{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}}])),
            msg("eph", "can not create pods that reference persistentvolumeclaims")),
        Case::create_pod("resource claims",
            with(m("claims"), "/spec/resourceClaims", json!([{"name": "gpu", "resourceClaimName": "gpu-claim"}])),
            msg("claims", "can not create pods that reference resourceclaims")),
        Case {
            token: "n2-token",
            ..Case::create_pod("another node's mirror pod", m("byn2"),
                Err("pods \"byn2\" is forbidden: node \"n2\" can only create pods with spec.nodeName set to itself".into()))
        },
    ];
    run_cases(&s, cases).await;
    // Nothing refused was stored.
    let pods = s.admin(Method::GET, PODS, None).await;
    let names: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ok", "p1", "unbound", "x"]);
}

/// Upstream's node and pod-status cases: a node may not relabel its pods
/// through status, set restricted labels or change its taints (the
/// unreachable taint the lifecycle controller sets included), or take a
/// config source; everything else about its own Node is its own.
#[tokio::test]
async fn noderestriction_node_and_status_cases() {
    let s = start().await;
    // The lifecycle controller's taint and an admin's, on n1.
    let r = s
        .patch(
            "admin-token",
            "/api/v1/nodes/n1",
            json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let n1 = "/api/v1/nodes/n1";
    let forbidden_labels = |labels: &str| {
        Err(format!(
            "nodes \"n1\" is forbidden: is not allowed to modify labels: {labels}"
        ))
    };
    let ok = Ok(StatusCode::OK);
    let cases = vec![
        Case::patch("kubelet labels are its own", n1, json!({"metadata": {"labels": {
            "kubernetes.io/hostname": "n1", "node.kubernetes.io/instance-type": "big",
            "kubelet.kubernetes.io/x": "y", "topology.kubernetes.io/zone": "z1",
            "example.com/team": "a", "plain": "b"}}}), ok.clone()),
        Case::patch("the same labels again", n1, json!({"metadata": {"labels": {"plain": "b"}}}), ok.clone()),
        Case::patch("node-restriction labels", n1,
            json!({"metadata": {"labels": {"node-restriction.kubernetes.io/trusted": "yes"}}}),
            forbidden_labels("node-restriction.kubernetes.io/trusted")),
        Case::patch("a subdomain of node-restriction", n1,
            json!({"metadata": {"labels": {"a.node-restriction.kubernetes.io/trusted": "yes"}}}),
            forbidden_labels("a.node-restriction.kubernetes.io/trusted")),
        Case::patch("other kubernetes.io labels (node-role)", n1,
            json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "", "k8s.io/x": "y"}}}),
            forbidden_labels("k8s.io/x, node-role.kubernetes.io/control-plane")),
        Case::patch("restricted labels through nodes/status", &format!("{n1}/status"),
            json!({"metadata": {"labels": {"node-restriction.kubernetes.io/trusted": "yes"}}}),
            forbidden_labels("node-restriction.kubernetes.io/trusted")),
        Case::patch("removing its taints", n1, json!({"spec": {"taints": null}}),
            Err("nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints".into())),
        Case::patch("removing only the unreachable taint", n1,
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
            Err("nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints".into())),
        Case::patch("changing taints through nodes/status", &format!("{n1}/status"),
            json!({"spec": {"taints": null}}),
            Err("nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints".into())),
        Case::patch("a config source", n1,
            json!({"spec": {"configSource": {"configMap": {"name": "c", "namespace": "kube-system", "kubeletConfigKey": "k"}}}}),
            Err("nodes \"n1\" is forbidden: node \"n1\" is not allowed to update configSource to a new non-nil configSource".into())),
        Case::patch("its status", &format!("{n1}/status"),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}), ok.clone()),
        Case::patch("pod status of its own pod", &format!("{PODS}/p1/status"),
            json!({"status": {"phase": "Running"}}), ok.clone()),
        Case::patch("pod labels through status", &format!("{PODS}/p1/status"),
            json!({"metadata": {"labels": {"app": "payments"}}, "status": {"phase": "Running"}}),
            Err("pods \"p1\" is forbidden: node \"n1\" cannot update labels through pod status".into())),
        Case::patch("pod spec through status (reset, not stored)", &format!("{PODS}/p1/status"),
            json!({"spec": {"volumes": [{"name": "s", "secret": {"secretName": "secret-other"}}]}}), ok.clone()),
    ];
    run_cases(&s, cases).await;
    let stored = s.admin(Method::GET, n1, None).await;
    assert_eq!(
        stored["spec"]["taints"].as_array().unwrap().len(),
        2,
        "{stored}"
    );
    assert!(
        stored["metadata"]["labels"]
            .get("node-restriction.kubernetes.io/trusted")
            .is_none()
    );
    let p1 = s.admin(Method::GET, &format!("{PODS}/p1"), None).await;
    assert!(p1["metadata"].get("labels").is_none(), "{p1}");
    assert_eq!(
        p1["spec"]["volumes"][0]["configMap"]["name"], "cm-used",
        "{p1}"
    );
    // The smuggled reference grants nothing.
    forbidden(
        &s.send(
            N1,
            Method::GET,
            "/api/v1/namespaces/default/secrets/secret-other",
            None,
        )
        .await,
    );

    // Registration: only itself, only kubelet labels, no config source.
    s.admin(Method::DELETE, "/api/v1/nodes/n2", None).await;
    let mut restricted = node("n2");
    restricted["metadata"]["labels"] = json!({"node-restriction.kubernetes.io/a": "b",
        "kubernetes.io/hostname": "n2"});
    let mut sourced = node("n2");
    sourced["spec"] = json!({"configSource": {"configMap": {"name": "c", "namespace": "kube-system", "kubeletConfigKey": "k"}}});
    let mut tainted = node("n2");
    tainted["spec"] = json!({"taints": [{"key": "own", "effect": "NoSchedule"}]});
    let create = |name: &'static str, body: Value, want| Case {
        token: "n2-token",
        method: Method::POST,
        path: "/api/v1/nodes".into(),
        ..Case::create_pod(name, body, want)
    };
    run_cases(&s, vec![
        create("restricted labels at registration", restricted,
            Err("nodes \"n2\" is forbidden: node \"n2\" is not allowed to set the following labels: node-restriction.kubernetes.io/a".into())),
        create("a config source at registration", sourced,
            Err("nodes \"n2\" is forbidden: node \"n2\" is not allowed to create pods with a non-nil configSource".into())),
        create("another node", node("n9"),
            Err("nodes \"n9\" is forbidden: node \"n2\" is not allowed to modify node \"n9\"".into())),
        // Upstream lets a kubelet register with taints (--register-with-taints).
        create("its own taints at registration", tainted, Ok(StatusCode::CREATED)),
    ]).await;
}

/// The Node authorizer's graph counts only pods someone else bound to the
/// node: a mirror pod naming a Secret (however it got stored) grants nothing.
#[tokio::test]
async fn mirror_pods_grant_no_secrets() {
    let s = start().await;
    let mut m = mirror_pod("sneaky", "n1");
    m["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "secret-other"}},
        {"name": "c", "configMap": {"name": "cm-other"}}]);
    // An admin is not restricted; the pod is stored, bound to n1.
    s.admin(Method::POST, PODS, Some(m)).await;
    for path in [
        "/api/v1/namespaces/default/secrets/secret-other",
        "/api/v1/namespaces/default/configmaps/cm-other",
    ] {
        forbidden(&s.send(N1, Method::GET, path, None).await);
    }
    // A pod bound the ordinary way does grant what it names.
    let r = s
        .send(
            N1,
            Method::GET,
            "/api/v1/namespaces/default/secrets/secret-used",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
