//! In-process tests of RBAC (`rbac.authorization.k8s.io/v1`, the RBAC
//! authorizer after the Node authorizer, escalation checks, aggregation, the
//! bootstrap policy, `authorization.k8s.io/v1` reviews) over SQLite, one case
//! over etcd, and the real kubectl (`kubectl auth can-i`, `kubectl get
//! clusterroles`, `kubectl create rolebinding`).
//!
//! etcd and kubectl cases skip with a printed reason when the binary is
//! missing, and fail instead when `CI=true` or `BERTH_REQUIRE_RUNTIME=1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator, tls};
use berth_apiserver::controllers::clusterrole_aggregation::{self, AggregationConfig};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::etcd::{EtcdProcess, EtcdStorage};
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const TOKENS: &str = "admin-token,admin,1,\"system:masters\"\n\
bob-token,bob,2\n\
carol-token,carol,3,devs\n\
dana-token,dana,4\n\
nobody-token,nobody,5\n\
n1-token,system:node:n1,6,system:nodes\n";

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";
const AUTHZ: &str = "/apis/authorization.k8s.io/v1";

fn strict() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let req = std::env::var("BERTH_REQUIRE_RUNTIME").unwrap_or_default();
    ci.eq_ignore_ascii_case("true") || ci == "1" || req == "1" || req.eq_ignore_ascii_case("true")
}

struct Server {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Arc<ApiState>,
    _dir: tempfile::TempDir,
    _guard: Option<EtcdProcess>,
}

struct Resp {
    status: StatusCode,
    body: Value,
}

fn sqlite(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(SqliteStorage::open(dir, SqliteOptions::default()).expect("sqlite"))
}

async fn serve(
    storage: Arc<dyn Storage>,
    dir: tempfile::TempDir,
    guard: Option<EtcdProcess>,
) -> Server {
    let s = serve_bare(storage, dir, guard).await;
    s.fixtures().await;
    s
}

/// A server on `storage` without the fixtures (a second server on a store
/// that already has them).
async fn serve_bare(
    storage: Arc<dyn Storage>,
    dir: tempfile::TempDir,
    guard: Option<EtcdProcess>,
) -> Server {
    let state = ApiState::new(
        storage,
        ApiConfig {
            authenticator: Some(Authenticator::parse(TOKENS).expect("tokens")),
            ..ApiConfig::default()
        },
    );
    state.bootstrap().await.expect("bootstrap");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = api::router(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Server {
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
        state,
        _dir: dir,
        _guard: guard,
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    serve(sqlite(dir.path()), dir, None).await
}

impl Server {
    async fn req(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.req_as(token, &[], method, path, body).await
    }

    /// A request with extra headers (`Impersonate-*`).
    async fn req_as(
        &self,
        token: &str,
        headers: &[(&str, &str)],
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        let ct = if method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", ct)
            .header("authorization", format!("Bearer {token}"));
        let req = headers.iter().fold(req, |req, (k, v)| req.header(*k, *v));
        let b = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(b))).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp { status, body }
    }

    async fn get(&self, token: &str, path: &str) -> Resp {
        self.req(token, Method::GET, path, None).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Resp {
        self.req(token, Method::POST, path, Some(body)).await
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self.req("admin-token", method, path, body).await;
        assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
        r.body
    }

    async fn fixtures(&self) {
        for ns in ["a", "b"] {
            self.admin(
                Method::POST,
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": ns}})),
            )
            .await;
            self.admin(
                Method::POST,
                &format!("/api/v1/namespaces/{ns}/pods"),
                Some(json!({"metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}})),
            )
            .await;
        }
        self.admin(
            Method::POST,
            "/api/v1/namespaces/a/secrets",
            Some(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        )
        .await;
    }

    /// A RoleBinding in `ns` of `kind`/`role` to `subject` (`User:bob`).
    async fn bind(&self, ns: &str, name: &str, kind: &str, role: &str, subject: &str) {
        self.admin(
            Method::POST,
            &format!("{RBAC}/namespaces/{ns}/rolebindings"),
            Some(rolebinding(name, kind, role, subject)),
        )
        .await;
    }
}

fn rolebinding(name: &str, kind: &str, role: &str, subject: &str) -> Value {
    let (skind, sname) = subject.split_once(':').expect("Kind:name");
    json!({"metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": skind, "name": sname}]})
}

fn forbidden(r: &Resp) -> String {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["reason"], "Forbidden", "{}", r.body);
    r.body["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_binding_scopes_reads_to_its_namespace() {
    let s = start().await;
    s.bind("a", "bob-view", "ClusterRole", "view", "User:bob")
        .await;
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/a/pods").await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/a/pods/p")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        s.get(
            "bob-token",
            "/api/v1/namespaces/a/pods?watch=1&timeoutSeconds=1"
        )
        .await
        .status,
        StatusCode::OK
    );
    // The same request twice: same answer.
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/a/pods").await.status,
        StatusCode::OK
    );
    assert_eq!(
        forbidden(&s.get("bob-token", "/api/v1/namespaces/b/pods").await),
        "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
    );
    assert_eq!(
        forbidden(&s.get("bob-token", "/api/v1/pods").await),
        "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
    );
    assert_eq!(
        forbidden(&s.get("bob-token", "/api/v1/namespaces/a/secrets/s").await),
        "secrets \"s\" is forbidden: User \"bob\" cannot get resource \"secrets\" in API group \"\" in the namespace \"a\""
    );
    let create = s
        .req(
            "bob-token",
            Method::POST,
            "/api/v1/namespaces/a/pods",
            Some(json!({"metadata": {"name": "q"},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}})),
        )
        .await;
    assert_eq!(
        forbidden(&create),
        "pods \"q\" is forbidden: User \"bob\" cannot create resource \"pods\" in API group \"\" in the namespace \"a\""
    );
    // view covers pods/status and pods/log reads, not status writes.
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/a/pods/p/status")
            .await
            .status,
        StatusCode::OK
    );
    forbidden(
        &s.req(
            "bob-token",
            Method::PATCH,
            "/api/v1/namespaces/a/pods/p/status",
            Some(json!({})),
        )
        .await,
    );
    // view may read its namespace, not others, and not the RBAC objects.
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/a").await.status,
        StatusCode::OK
    );
    forbidden(&s.get("bob-token", "/api/v1/namespaces/b").await);
    forbidden(
        &s.get("bob-token", &format!("{RBAC}/namespaces/a/rolebindings"))
            .await,
    );

    // A second actor: nothing until a group binding, which applies on the
    // next request, and stops applying once deleted.

    forbidden(&s.get("carol-token", "/api/v1/namespaces/b/pods").await);
    forbidden(
        &s.req(
            "nobody-token",
            Method::GET,
            "/api/v1/namespaces/b/pods",
            None,
        )
        .await,
    );
    s.bind("b", "devs-view", "ClusterRole", "view", "Group:devs")
        .await;
    assert_eq!(
        s.get("carol-token", "/api/v1/namespaces/b/pods")
            .await
            .status,
        StatusCode::OK
    );
    forbidden(
        &s.req("bob-token", Method::GET, "/api/v1/namespaces/b/pods", None)
            .await,
    );
    s.admin(
        Method::DELETE,
        &format!("{RBAC}/namespaces/b/rolebindings/devs-view"),
        None,
    )
    .await;
    forbidden(&s.get("carol-token", "/api/v1/namespaces/b/pods").await);

    // A figure: what RBAC costs per request (storage reads on every request,
    // no cache), against system:masters which short-circuits.
    for token in ["admin-token", "bob-token"] {
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                s.get(token, "/api/v1/namespaces/a/pods/p").await.status,
                StatusCode::OK
            );
        }
        eprintln!(
            "GET pod as {token}: {} us/request",
            t0.elapsed().as_micros() / 100
        );
    }

    // A RoleBinding to a namespaced Role.
    s.admin(
        Method::POST,
        &format!("{RBAC}/namespaces/b/roles"),
        Some(json!({"metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                       "resourceNames": ["only"]}]})),
    )
    .await;
    s.bind("b", "bob-secret", "Role", "secret-reader", "User:bob")
        .await;
    s.admin(
        Method::POST,
        "/api/v1/namespaces/b/secrets",
        Some(json!({"metadata": {"name": "only"}})),
    )
    .await;
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/b/secrets/only")
            .await
            .status,
        StatusCode::OK
    );
    forbidden(&s.get("bob-token", "/api/v1/namespaces/b/secrets").await);
    // The same Role name in another namespace is another role.
    forbidden(
        &s.get("bob-token", "/api/v1/namespaces/a/secrets/only")
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_needs_held_rules_bind_or_escalate() {
    let s = start().await;
    // dana may manage RoleBindings and Roles in `a`, and read pods.
    s.admin(
        Method::POST,
        &format!("{RBAC}/namespaces/a/roles"),
        Some(json!({"metadata": {"name": "rbac-writer"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"],
             "verbs": ["create", "get", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})),
    )
    .await;
    s.bind("a", "dana-rbac", "Role", "rbac-writer", "User:dana")
        .await;
    let rbs = format!("{RBAC}/namespaces/a/rolebindings");

    // Binding `edit`: dana holds none of its write rules.
    let r = s
        .post(
            "dana-token",
            &rbs.clone(),
            rolebinding("eve-edit", "ClusterRole", "edit", "User:eve"),
        )
        .await;
    let msg = forbidden(&r);
    let head = "rolebindings.rbac.authorization.k8s.io \"eve-edit\" is forbidden: user \"dana\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n";
    assert!(msg.starts_with(head), "{msg}");
    assert!(
        msg.contains("\n{APIGroups:[\"\"], Resources:[\"configmaps\"], Verbs:[\"create\" \"update\" \"patch\" \"delete\" \"deletecollection\" \"get\" \"list\" \"watch\"]}\n"),
        "{msg}"
    );
    // Binding a role whose rules dana holds is fine.
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})),
    )
    .await;
    let r = s
        .post(
            "dana-token",
            &rbs.clone(),
            rolebinding("eve-pods", "ClusterRole", "pod-reader", "User:eve"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // The same create again: 409, not a second object.
    let r = s
        .post(
            "dana-token",
            &rbs.clone(),
            rolebinding("eve-pods", "ClusterRole", "pod-reader", "User:eve"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // A binding to a missing role: 404 for that role.
    let r = s
        .post(
            "dana-token",
            &rbs.clone(),
            rolebinding("ghost", "ClusterRole", "no-such-role", "User:eve"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // `bind` on clusterroles/edit (resourceNames honoured) lets dana bind edit, not admin.
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "edit-binder"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
             "verbs": ["bind"], "resourceNames": ["edit"]}]})),
    )
    .await;
    s.bind(
        "a",
        "dana-binds-edit",
        "ClusterRole",
        "edit-binder",
        "User:dana",
    )
    .await;
    let r = s
        .post(
            "dana-token",
            &rbs.clone(),
            rolebinding("eve-edit", "ClusterRole", "edit", "User:eve"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    forbidden(
        &s.post(
            "dana-token",
            &rbs.clone(),
            rolebinding("eve-admin", "ClusterRole", "admin", "User:eve"),
        )
        .await,
    );
    // The bind grant is per namespace: not in `b`.
    forbidden(
        &s.post(
            "dana-token",
            &format!("{RBAC}/namespaces/b/rolebindings"),
            rolebinding("eve-edit", "ClusterRole", "edit", "User:eve"),
        )
        .await,
    );
    // Roles: not more than dana holds…
    let roles = format!("{RBAC}/namespaces/a/roles");
    let deleter = json!({"metadata": {"name": "pod-deleter"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}]});
    let msg = forbidden(&s.post("dana-token", &roles.clone(), deleter.clone()).await);
    assert!(
        msg.ends_with("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"),
        "{msg}"
    );
    assert!(
        msg.starts_with(
            "roles.rbac.authorization.k8s.io \"pod-deleter\" is forbidden: user \"dana\""
        ),
        "{msg}"
    );
    let held = json!({"metadata": {"name": "pod-lister"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]});
    let r = s.post("dana-token", &roles.clone(), held).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // …an update adding a rule dana lacks is refused too…
    let r = s
        .req(
            "dana-token",
            Method::PATCH,
            &format!("{roles}/pod-lister"),
            Some(json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "deletecollection"]}]})),
        )
        .await;
    forbidden(&r);
    // …unless dana may `escalate` roles.
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "role-escalator"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}]})),
    )
    .await;
    s.bind(
        "a",
        "dana-escalates",
        "ClusterRole",
        "role-escalator",
        "User:dana",
    )
    .await;
    let r = s.post("dana-token", &roles.clone(), deleter).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Validation as upstream.
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &rbs,
            Some(rolebinding("bad", "Robot", "x", "User:eve")),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("roleRef.kind: Unsupported value: \"Robot\""),
        "{}",
        r.body
    );
    let r = s
        .req(
            "admin-token",
            Method::PATCH,
            &format!("{rbs}/eve-pods"),
            Some(json!({"roleRef": {"name": "edit"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot change roleRef"),
        "{}",
        r.body
    );
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &roles,
            Some(json!({"metadata": {"name": "urls"},
                "rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &format!("{RBAC}/clusterrolebindings"),
            Some(json!({"metadata": {"name": "sa-no-ns"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "robot"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("subjects[0].namespace: Required value"),
        "{}",
        r.body
    );
    // Names with colons are valid RBAC names; absurd ones are not.
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "team:reader"}, "rules": []})),
    )
    .await;
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &format!("{RBAC}/clusterroles"),
            Some(json!({"metadata": {"name": "100%"}, "rules": []})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    // Only cluster admins may set an aggregation rule.
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "cr-writer"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]}]})),
    )
    .await;
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterrolebindings"),
        Some(json!({"metadata": {"name": "dana-cr-writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cr-writer"},
            "subjects": [{"kind": "User", "name": "dana"}]})),
    )
    .await;
    let r = s.post("dana-token", &format!("{RBAC}/clusterroles"),
        json!({"metadata": {"name": "grabber"}, "aggregationRule": {"clusterRoleSelectors": [{}]}}),
    )
    .await;
    assert_eq!(
        forbidden(&r),
        "clusterroles.rbac.authorization.k8s.io \"grabber\" is forbidden: must have cluster-admin privileges to use the aggregationRule"
    );
}

async fn view_rules(s: &Server) -> Vec<Value> {
    s.admin(Method::GET, &format!("{RBAC}/clusterroles/view"), None)
        .await["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_feeds_view_and_the_bound_user() {
    let s = start().await;
    let _ctl = clusterrole_aggregation::spawn(
        s.state.clone(),
        AggregationConfig {
            resync: Duration::from_millis(500),
        },
    );
    // At start-up the aggregated roles are already filled (bootstrap pass).
    let before = view_rules(&s).await;
    assert!(
        before.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("pods")))),
        "{before:?}"
    );
    s.bind("a", "bob-view", "ClusterRole", "view", "User:bob")
        .await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/a/leases";
    forbidden(&s.req("bob-token", Method::GET, leases, None).await);
    let lease_rule = json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list"]});
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "lease-reader",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [lease_rule.clone()]})),
    )
    .await;
    let t0 = Instant::now();
    while !view_rules(&s).await.contains(&lease_rule) {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "view never aggregated lease-reader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    eprintln!("aggregation converged in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        s.req("bob-token", Method::GET, leases, None).await.status,
        StatusCode::OK
    );
    // view feeds edit feeds admin.
    for role in ["edit", "admin"] {
        let t0 = Instant::now();
        loop {
            let r = s
                .admin(Method::GET, &format!("{RBAC}/clusterroles/{role}"), None)
                .await;
            if r["rules"]
                .as_array()
                .is_some_and(|a| a.contains(&lease_rule))
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{role} never aggregated"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // No duplicates although two selected roles share nothing and view is
    // re-aggregated several times.
    let rules = view_rules(&s).await;
    let unique: std::collections::HashSet<String> = rules.iter().map(Value::to_string).collect();
    assert_eq!(unique.len(), rules.len());
    // Removing the label takes the rule away again.
    s.admin(
        Method::PATCH,
        &format!("{RBAC}/clusterroles/lease-reader"),
        Some(
            json!({"metadata": {"labels": {"rbac.authorization.k8s.io/aggregate-to-view": null}}}),
        ),
    )
    .await;
    let t0 = Instant::now();
    while view_rules(&s).await.contains(&lease_rule) {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "view kept lease-reader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    forbidden(&s.req("bob-token", Method::GET, leases, None).await);
}

async fn names(s: &Server, path: &str) -> Vec<String> {
    s.admin(Method::GET, path, None).await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_idempotent_and_reconciles() {
    let s = start().await;
    let roles = names(&s, &format!("{RBAC}/clusterroles")).await;
    let bindings = names(&s, &format!("{RBAC}/clusterrolebindings")).await;
    for want in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:aggregate-to-view",
    ] {
        assert!(
            roles.contains(&want.to_string()),
            "{want} missing from {roles:?}"
        );
    }
    let cr = s
        .admin(Method::GET, &format!("{RBAC}/clusterroles/view"), None)
        .await;
    assert_eq!(
        cr["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
        "true"
    );
    assert_eq!(
        cr["metadata"]["labels"]["kubernetes.io/bootstrapping"],
        "rbac-defaults"
    );
    let node = s
        .admin(
            Method::GET,
            &format!("{RBAC}/clusterrolebindings/system:node"),
            None,
        )
        .await;
    assert!(node.get("subjects").is_none_or(Value::is_null), "{node}");

    // Restart twice: nothing created or changed, no duplicates.
    for _ in 0..2 {
        let again = ApiState::new(s.state.storage.clone(), ApiConfig::default());
        let summary = berth_apiserver::api::rbac::policy::ensure(&again)
            .await
            .expect("ensure");
        assert_eq!((summary.created, summary.updated), (0, 0), "{summary:?}");
    }
    assert_eq!(names(&s, &format!("{RBAC}/clusterroles")).await, roles);
    assert_eq!(
        names(&s, &format!("{RBAC}/clusterrolebindings")).await,
        bindings
    );

    // A user trims a bootstrap role, adds a subject, and protects another role.
    s.admin(
        Method::PATCH,
        &format!("{RBAC}/clusterroles/system:basic-user"),
        Some(json!({"rules": [{"apiGroups": ["x.example"], "resources": ["things"], "verbs": ["get"]}]})),
    )
    .await;
    s.admin(
        Method::PATCH,
        &format!("{RBAC}/clusterrolebindings/system:basic-user"),
        Some(json!({"subjects": [{"kind": "User", "name": "carol", "apiGroup": "rbac.authorization.k8s.io"}]})),
    )
    .await;
    s.admin(
        Method::PATCH,
        &format!("{RBAC}/clusterroles/system:discovery"),
        Some(json!({"metadata": {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "false"}},
            "rules": []})),
    )
    .await;
    // Nobody (not even bob) may create self reviews now…
    let ssar = json!({"spec": {"resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "a"}}});
    forbidden(
        &s.req(
            "bob-token",
            Method::POST,
            &format!("{AUTHZ}/selfsubjectaccessreviews"),
            Some(ssar.clone()),
        )
        .await,
    );

    // …until a restart reconciles.
    s.state.bootstrap().await.expect("bootstrap again");
    let basic = s
        .admin(
            Method::GET,
            &format!("{RBAC}/clusterroles/system:basic-user"),
            None,
        )
        .await;
    let rules = basic["rules"].as_array().cloned().unwrap_or_default();
    assert!(
        rules.contains(
            &json!({"apiGroups": ["x.example"], "resources": ["things"], "verbs": ["get"]})
        ),
        "user rule kept: {basic}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == json!(["selfsubjectaccessreviews"])
                && r["verbs"] == json!(["create"])),
        "rule restored: {basic}"
    );
    let b = s
        .admin(
            Method::GET,
            &format!("{RBAC}/clusterrolebindings/system:basic-user"),
            None,
        )
        .await;
    let subjects: Vec<String> = b["subjects"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["kind"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(subjects, ["User:carol", "Group:system:authenticated"]);
    let d = s
        .admin(
            Method::GET,
            &format!("{RBAC}/clusterroles/system:discovery"),
            None,
        )
        .await;
    assert_eq!(d["rules"], json!([]), "protected role untouched: {d}");
    let r = s
        .req(
            "bob-token",
            Method::POST,
            &format!("{AUTHZ}/selfsubjectaccessreviews"),
            Some(ssar),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // A third start changes nothing more.
    let summary = berth_apiserver::api::rbac::policy::ensure(&s.state)
        .await
        .expect("ensure");
    assert_eq!((summary.created, summary.updated), (0, 0), "{summary:?}");
    // A deleted bootstrap binding comes back.
    s.admin(
        Method::DELETE,
        &format!("{RBAC}/clusterrolebindings/system:kube-scheduler"),
        None,
    )
    .await;
    let summary = berth_apiserver::api::rbac::policy::ensure(&s.state)
        .await
        .expect("ensure");
    assert_eq!(summary.created, 1, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_and_rules_reviews() {
    let s = start().await;
    s.bind("a", "bob-view", "ClusterRole", "view", "User:bob")
        .await;
    let ssar = |verb: &str, resource: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}})
    };
    let path = format!("{AUTHZ}/selfsubjectaccessreviews");
    let r = s
        .req(
            "bob-token",
            Method::POST,
            &path,
            Some(ssar("list", "pods", "a")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["kind"], "SelfSubjectAccessReview");
    assert_eq!(r.body["status"]["allowed"], true);
    assert_eq!(
        r.body["status"]["reason"],
        "RBAC: allowed by RoleBinding \"bob-view/a\" of ClusterRole \"view\" to User \"bob\""
    );
    let r = s
        .req(
            "bob-token",
            Method::POST,
            &path,
            Some(ssar("create", "pods", "a")),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], false, "{}", r.body);
    let r = s
        .req(
            "nobody-token",
            Method::POST,
            &path,
            Some(ssar("get", "pods", "a")),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], false, "{}", r.body);
    // Non-resource: discovery for everyone authenticated.
    let r = s
        .req(
            "nobody-token",
            Method::POST,
            &path,
            Some(json!({"spec": {"nonResourceAttributes": {"verb": "get", "path": "/apis/apps"}}})),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], true, "{}", r.body);
    // Not stored, create only.
    // A GET is a `list`, refused by authorization first (as upstream), and
    // not served to whoever may list.
    forbidden(&s.get("bob-token", &path).await);
    assert_eq!(
        s.get("admin-token", &path).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let r = s
        .req("bob-token", Method::POST, &path, Some(json!({"spec": {}})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // SubjectAccessReview: cluster-admin only; judged through the whole chain.
    let sar = |user: &str, groups: &[&str], verb: &str, resource: &str, ns: &str| {
        json!({"spec": {"user": user, "groups": groups,
            "resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}})
    };
    let sar_path = format!("{AUTHZ}/subjectaccessreviews");
    forbidden(
        &s.req(
            "bob-token",
            Method::POST,
            &sar_path,
            Some(sar("bob", &[], "list", "pods", "a")),
        )
        .await,
    );
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &sar_path,
            Some(sar("bob", &[], "list", "pods", "a")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"]["allowed"], true, "{}", r.body);
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &sar_path,
            Some(sar("bob", &[], "list", "pods", "b")),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], false, "{}", r.body);
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &sar_path,
            Some(sar("x", &["system:masters"], "delete", "nodes", "")),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], true, "{}", r.body);
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &sar_path,
            Some(sar(
                "system:node:n1",
                &["system:nodes"],
                "get",
                "namespaces",
                "",
            )),
        )
        .await;
    assert_eq!(
        r.body["status"]["allowed"], true,
        "Node authorizer: {}",
        r.body
    );
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &sar_path,
            Some(sar(
                "system:node:n1",
                &["system:nodes"],
                "delete",
                "nodes",
                "",
            )),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], false, "{}", r.body);
    let r = s
        .req(
            "admin-token",
            Method::POST,
            &sar_path,
            Some(sar("", &[], "get", "pods", "a")),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // LocalSubjectAccessReview: about its own namespace only; `admin` in
    // that namespace may create one.
    let local = |ns: &str| {
        json!({"metadata": {"namespace": "a"}, "spec": {"user": "bob",
            "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": ns}}})
    };
    let lsar = format!("{AUTHZ}/namespaces/a/localsubjectaccessreviews");
    forbidden(&s.post("dana-token", &lsar, local("a")).await);
    s.bind("a", "dana-admin", "ClusterRole", "admin", "User:dana")
        .await;
    let r = s.post("dana-token", &lsar, local("a")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"]["allowed"], true, "{}", r.body);
    let r = s.post("dana-token", &lsar, local("b")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // Rules review.
    let ssrr = |ns: &str| json!({"spec": {"namespace": ns}});
    let rr = format!("{AUTHZ}/selfsubjectrulesreviews");
    let r = s.req("bob-token", Method::POST, &rr, Some(ssrr("a"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let st = &r.body["status"];
    assert_eq!(st["incomplete"], false);
    let rules = st["resourceRules"].as_array().cloned().unwrap_or_default();
    assert!(
        rules.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("pods")))
            && r["verbs"] == json!(["get", "list", "watch"])),
        "{st}"
    );
    let urls: Vec<Value> = st["nonResourceRules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|r| r["nonResourceURLs"].as_array().cloned().unwrap_or_default())
        .collect();
    for u in ["/api/*", "/apis", "/version", "/healthz"] {
        assert!(urls.contains(&json!(u)), "{u} not in {urls:?}");
    }
    let r = s.req("bob-token", Method::POST, &rr, Some(ssrr("b"))).await;
    let in_b = r.body["status"]["resourceRules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !in_b.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("pods")))),
        "{in_b:?}"
    );
    let r = s.req("bob-token", Method::POST, &rr, Some(ssrr(""))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = s.req("n1-token", Method::POST, &rr, Some(ssrr("a"))).await;
    assert_eq!(r.body["status"]["incomplete"], true, "{}", r.body);

    // Impersonation, limited by resourceNames: carol may act as bob only.
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "impersonate-bob"}, "rules": [
            {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["bob"]}]})),
    )
    .await;
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterrolebindings"),
        Some(json!({"metadata": {"name": "carol-as-bob"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "impersonate-bob"},
            "subjects": [{"kind": "User", "name": "carol"}]})),
    )
    .await;
    let pods_a = "/api/v1/namespaces/a/pods";
    let as_bob = s
        .req_as(
            "carol-token",
            &[("Impersonate-User", "bob")],
            Method::GET,
            pods_a,
            None,
        )
        .await;
    assert_eq!(as_bob.status, StatusCode::OK, "{}", as_bob.body);
    let as_dana = s
        .req_as(
            "carol-token",
            &[("Impersonate-User", "dana")],
            Method::GET,
            pods_a,
            None,
        )
        .await;
    assert_eq!(
        forbidden(&as_dana),
        "users \"dana\" is forbidden: User \"carol\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    // A group needs its own grant.
    let r = s
        .req_as(
            "carol-token",
            &[
                ("Impersonate-User", "bob"),
                ("Impersonate-Group", "system:masters"),
            ],
            Method::GET,
            pods_a,
            None,
        )
        .await;
    assert!(
        forbidden(&r).starts_with("groups \"system:masters\" is forbidden"),
        "{}",
        r.body
    );
    let r = s
        .req_as(
            "admin-token",
            &[("Impersonate-Group", "devs")],
            Method::GET,
            pods_a,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // The impersonated self review answers for bob.
    let r = s
        .req_as(
            "admin-token",
            &[("Impersonate-User", "bob")],
            Method::POST,
            &path,
            Some(ssar("list", "pods", "b")),
        )
        .await;
    assert_eq!(r.body["status"]["allowed"], false, "{}", r.body);

    // Discovery: the reviews are create-only.
    let d = s.admin(Method::GET, AUTHZ, None).await;
    for r in d["resources"].as_array().cloned().unwrap_or_default() {
        assert_eq!(r["verbs"], json!(["create"]), "{r}");
    }
}

/// The etcd backend: a binding takes effect and bootstrap is idempotent there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backed_rbac() {
    let test = "etcd_backed_rbac";
    let Some(process) = EtcdProcess::for_test(test).await else {
        return;
    };
    let store = EtcdStorage::connect(&[process.endpoint().to_string()], "/berth-rbac-test")
        .await
        .expect("etcd connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let s = serve(Arc::new(store), dir, Some(process)).await;
    forbidden(
        &s.req("bob-token", Method::GET, "/api/v1/namespaces/a/pods", None)
            .await,
    );
    s.bind("a", "bob-view", "ClusterRole", "view", "User:bob")
        .await;
    assert_eq!(
        s.req("bob-token", Method::GET, "/api/v1/namespaces/a/pods", None)
            .await
            .status,
        StatusCode::OK
    );
    let summary = berth_apiserver::api::rbac::policy::ensure(&s.state)
        .await
        .expect("ensure");
    assert_eq!((summary.created, summary.updated), (0, 0), "{summary:?}");

    // A second API server on the same etcd (scale-out): its policy cache
    // learns of the first one's RBAC writes through its watch, both ways
    // (a grant, and the revocation that matters more).
    let store2 = EtcdStorage::connect(&[s_endpoint(&s)], "/berth-rbac-test")
        .await
        .expect("etcd connects");
    let s2 = serve_bare(
        Arc::new(store2),
        tempfile::tempdir().expect("tempdir"),
        None,
    )
    .await;
    let path_b = "/api/v1/namespaces/b/pods";
    forbidden(&s2.get("bob-token", path_b).await);
    s.bind("b", "bob-view", "ClusterRole", "view", "User:bob")
        .await;
    let granted = wait_status(&s2, "bob-token", path_b, StatusCode::OK).await;
    s.admin(
        Method::DELETE,
        &format!("{RBAC}/namespaces/b/rolebindings/bob-view"),
        None,
    )
    .await;
    let revoked = wait_status(&s2, "bob-token", path_b, StatusCode::FORBIDDEN).await;
    eprintln!(
        "etcd_backed_rbac: second server saw the grant in {granted:?}, the revocation in {revoked:?}"
    );
}

fn s_endpoint(s: &Server) -> String {
    s._guard
        .as_ref()
        .map(|p| p.endpoint().to_string())
        .expect("an etcd-backed server")
}

/// Poll `path` as `token` until it answers `want` (at most 5 s); how long it took.
async fn wait_status(s: &Server, token: &str, path: &str, want: StatusCode) -> Duration {
    let start = Instant::now();
    loop {
        let r = s.get(token, path).await;
        if r.status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{path} as {token}: still {} after 5 s, want {want}: {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The policy cache: loaded once and then served from memory; every RBAC
/// write through this server takes effect on the very next request (no
/// sleep), grants and revocations alike, including a role's rules changing
/// under an existing binding; writes of other kinds do not reload it; and
/// an RBAC object written into storage behind the server's back (as another
/// API server would) arrives through the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_cache_follows_every_rbac_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = sqlite(dir.path());
    let s = serve(raw.clone(), dir, None).await;
    let pods_a = "/api/v1/namespaces/a/pods";
    // Warm: the first request starts the watch, whose opening reloads once.
    let start = Instant::now();
    let mut loads = u64::MAX;
    while s.state.rbac.loads() != loads {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "policy cache never settled"
        );
        loads = s.state.rbac.loads();
        forbidden(&s.get("bob-token", pods_a).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        forbidden(&s.get("bob-token", pods_a).await);
    }
    // Other writes (a pod, a namespace) do not touch the policy.
    s.admin(
        Method::POST,
        "/api/v1/namespaces/a/pods",
        Some(json!({"metadata": {"name": "q"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}})),
    )
    .await;
    forbidden(&s.get("bob-token", pods_a).await);
    assert_eq!(
        s.state.rbac.loads(),
        loads,
        "steady state reloaded the policy"
    );

    // Grant, then revoke: each effective immediately.
    s.bind("a", "bob-edit", "ClusterRole", "bob-reader", "User:bob")
        .await;
    let missing = s.get("bob-token", pods_a).await;
    forbidden(&missing);
    s.admin(
        Method::POST,
        &format!("{RBAC}/clusterroles"),
        Some(json!({"metadata": {"name": "bob-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})),
    )
    .await;
    assert_eq!(s.get("bob-token", pods_a).await.status, StatusCode::OK);
    // The role loses the verb: the binding stays, the access goes.
    s.admin(
        Method::PUT,
        &format!("{RBAC}/clusterroles/bob-reader"),
        Some(json!({"metadata": {"name": "bob-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})),
    )
    .await;
    forbidden(&s.get("bob-token", pods_a).await);
    assert_eq!(
        s.get("bob-token", "/api/v1/namespaces/a/pods/p")
            .await
            .status,
        StatusCode::OK
    );
    s.admin(
        Method::DELETE,
        &format!("{RBAC}/namespaces/a/rolebindings/bob-edit"),
        None,
    )
    .await;
    forbidden(&s.get("bob-token", "/api/v1/namespaces/a/pods/p").await);

    // Behind the server's back: a ClusterRoleBinding written straight into
    // storage reaches the cache through the watch.
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "dana-view", "uid": "u-dana-view",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dana"}]});
    forbidden(&s.get("dana-token", pods_a).await);
    raw.create(
        "/registry/clusterrolebindings/dana-view",
        crb.to_string().into_bytes(),
    )
    .await
    .expect("raw write");
    let took = wait_status(&s, "dana-token", pods_a, StatusCode::OK).await;
    raw.delete("/registry/clusterrolebindings/dana-view", None)
        .await
        .expect("raw delete");
    wait_status(&s, "dana-token", pods_a, StatusCode::FORBIDDEN).await;
    eprintln!("policy cache: a write behind the server's back took {took:?} to apply");
}

// ---------------------------------------------------------------------------
// The real kubectl.

fn kubectl() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/kubectl");
    if p.exists() {
        return Some(p);
    }
    let reason = "no kubectl at /usr/bin/kubectl";
    assert!(
        !strict(),
        "kubectl is required (CI / BERTH_REQUIRE_RUNTIME=1) but: {reason}"
    );
    eprintln!("SKIP kubectl_auth_can_i_and_rbac_objects: {reason}");
    None
}

fn kubeconfig(dir: &Path, name: &str, server: &str, ca: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: {name}\n    namespace: a\n\
         current-context: x\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(bin: &Path, config: &Path, args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(bin);
    cmd.env("KUBECONFIG", config)
        .env("HOME", config.parent().expect("dir"))
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("kubectl runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_and_rbac_objects() {
    let Some(bin) = kubectl() else { return };
    let s = start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // kubectl sends bearer tokens only over TLS: the same state, served over
    // TLS on a second listener, with the CA in the kubeconfig.
    let pki = tls::PkiPaths::new(dir.path());
    std::fs::create_dir_all(dir.path().join("pki")).expect("pki dir");
    tls::ensure_pki(&pki, &[]).expect("pki");
    let server_tls = tls::server_config(&pki).expect("tls config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let https = format!("https://{}", listener.local_addr().expect("addr"));
    let router = api::router(s.state.clone());
    tokio::spawn(async move {
        let _ = tls::serve(listener, router, server_tls, std::future::pending()).await;
    });
    let ca = pki.ca_cert.display().to_string();
    let admin = kubeconfig(dir.path(), "admin", &https, &ca, "admin-token");
    let bob = kubeconfig(dir.path(), "bob", &https, &ca, "bob-token");

    let out = run(
        &bin,
        &admin,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "a",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("rolebinding.rbac.authorization.k8s.io/bob-view created"),
        "{}",
        out.stdout
    );

    let out = run(&bin, &bob, &["auth", "can-i", "--list", "-n", "a"]).await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let pods = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("pods"))
        .unwrap_or_else(|| panic!("no pods line in:\n{}", out.stdout));
    assert!(pods.ends_with("[get list watch]"), "{pods}");
    assert!(
        out.stdout
            .contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("[/api/*]") && l.ends_with("[get]")),
        "{}",
        out.stdout
    );

    let out = run(&bin, &bob, &["auth", "can-i", "create", "pods", "-n", "a"]).await;
    assert_eq!((out.code, out.stdout.trim()), (1, "no"), "{}", out.stderr);
    let out = run(&bin, &bob, &["auth", "can-i", "get", "pods", "-n", "a"]).await;
    assert_eq!((out.code, out.stdout.trim()), (0, "yes"), "{}", out.stderr);
    let out = run(&bin, &bob, &["auth", "can-i", "get", "pods", "-n", "b"]).await;
    assert_eq!((out.code, out.stdout.trim()), (1, "no"), "{}", out.stderr);
    let out = run(&bin, &bob, &["get", "pods", "-n", "b"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
        ),
        "{}",
        out.stderr
    );

    // Impersonation: cluster-admin may act as bob; bob may not act as admin.
    let out = run(
        &bin,
        &admin,
        &["auth", "can-i", "get", "pods", "-n", "a", "--as", "bob"],
    )
    .await;
    assert_eq!((out.code, out.stdout.trim()), (0, "yes"), "{}", out.stderr);
    let out = run(
        &bin,
        &admin,
        &["auth", "can-i", "create", "pods", "-n", "a", "--as", "bob"],
    )
    .await;
    assert_eq!((out.code, out.stdout.trim()), (1, "no"), "{}", out.stderr);
    let out = run(&bin, &admin, &["get", "pods", "-n", "b", "--as", "bob"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("User \"bob\" cannot list resource \"pods\""),
        "{}",
        out.stderr
    );
    let out = run(
        &bin,
        &bob,
        &[
            "get",
            "pods",
            "-n",
            "a",
            "--as",
            "admin",
            "--as-group",
            "system:masters",
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("users \"admin\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        out.stderr
    );

    let out = run(&bin, &admin, &["get", "clusterroles"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CREATED", "AT"]);
    for role in [
        "cluster-admin",
        "view",
        "edit",
        "admin",
        "system:basic-user",
        "system:kube-scheduler",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(role)),
            "{role}:\n{}",
            out.stdout
        );
    }
    let out = run(
        &bin,
        &admin,
        &["get", "rolebindings", "-n", "a", "-o", "wide"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[3]),
        ("bob-view", "ClusterRole/view", "bob"),
        "{}",
        out.stdout
    );

    let out = run(
        &bin,
        &admin,
        &[
            "create",
            "clusterrole",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let out = run(
        &bin,
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "carol-reads",
            "--clusterrole=pod-reader",
            "--group=devs",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    let carol = kubeconfig(dir.path(), "carol", &https, &ca, "carol-token");
    let out = run(&bin, &carol, &["get", "pods", "-A"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // bob cannot grant what he lacks through kubectl either.
    let out = run(
        &bin,
        &bob,
        &[
            "create",
            "rolebinding",
            "x",
            "--clusterrole=edit",
            "--user=eve",
            "-n",
            "a",
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("Forbidden") || out.stderr.contains("forbidden"),
        "{}",
        out.stderr
    );
}
