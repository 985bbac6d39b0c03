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
    forbidden(
        &s.send(N1, Method::POST, "/api/v1/nodes", Some(node("n3")))
            .await,
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

    // Creates: mirror pods bound to itself only.
    let r = s
        .send(N1, Method::POST, PODS, Some(pod("plain", "n1")))
        .await;
    forbidden(&r);
    assert_eq!(
        r.body["message"],
        "pods \"plain\" is forbidden: User \"system:node:n1\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\": pod does not have \"kubernetes.io/config.mirror\" annotation, node 'n1' can only create mirror pods"
    );
    forbidden(
        &s.send(N1, Method::POST, PODS, Some(mirror_pod("m2", "n2")))
            .await,
    );
    forbidden(
        &s.send(N1, Method::POST, PODS, Some(mirror_pod("m0", "")))
            .await,
    );
    let r = s
        .send(N1, Method::POST, PODS, Some(mirror_pod("static-n1", "n1")))
        .await;
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
