//! In-process tests of the REST API over SQLite storage (plain HTTP on loopback).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

struct Server {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    storage: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn start_with(config: ApiConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::new(storage.clone(), config);
    state.bootstrap().await.unwrap();
    state.clone().spawn_reaper();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(state)).await.unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
        storage,
        _dir: dir,
    }
}

async fn start() -> Server {
    start_with(ApiConfig {
        bookmark_interval: Duration::from_millis(200),
        reap_interval: Duration::from_millis(200),
        authenticator: None,
        ..ApiConfig::default()
    })
    .await
}

impl Server {
    async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let b = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, &[("content-type", "application/json")], b)
            .await
    }

    async fn patch(&self, path: &str, ct: &str, body: Value) -> Resp {
        self.raw(
            Method::PATCH,
            path,
            &[("content-type", ct)],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Read the first `n` watch events of `path` (10 s at most).
    async fn watch(&self, path: &str, n: usize) -> (HeaderMap, Vec<Value>) {
        let req = Request::builder()
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events.len() < n {
            let frame = tokio::time::timeout_at(deadline, body.frame()).await;
            let Ok(Some(Ok(frame))) = frame else { break };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                events.push(serde_json::from_slice(&line).unwrap());
            }
        }
        (headers, events)
    }
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}})
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn crud_defaults_and_conflict() {
    let s = start().await;
    let r = s.send(Method::POST, PODS, Some(pod("web"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let p = r.body;
    assert_eq!(p["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_eq!(p["metadata"]["generation"], 1);
    assert!(p["metadata"]["creationTimestamp"].is_string());
    assert_eq!(p["spec"]["restartPolicy"], "Always");
    assert_eq!(p["spec"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(p["spec"]["schedulerName"], "default-scheduler");
    assert_eq!(
        p["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(
        p["spec"]["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    let rv = p["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let got = s.send(Method::GET, &format!("{PODS}/web"), None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["metadata"]["resourceVersion"], rv.as_str());

    // Update with the current resourceVersion succeeds; the stale one conflicts.
    let mut upd = got.body.clone();
    upd["metadata"]["labels"]["x"] = json!("y");
    upd["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    let r = s
        .send(Method::PUT, &format!("{PODS}/web"), Some(upd.clone()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 2);
    assert_ne!(r.body["metadata"]["resourceVersion"], rv.as_str());
    let r = s
        .send(Method::PUT, &format!("{PODS}/web"), Some(upd.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["reason"], "Conflict");
    assert_eq!(r.body["code"], 409);
    assert_eq!(
        r.body["message"],
        "Operation cannot be fulfilled on pods \"web\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(r.body["details"], json!({"name": "web", "kind": "pods"}));

    // Pod spec immutability.
    let cur = s.send(Method::GET, &format!("{PODS}/web"), None).await.body;
    let mut bad = cur.clone();
    bad["spec"]["restartPolicy"] = json!("Never");
    let r = s.send(Method::PUT, &format!("{PODS}/web"), Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["reason"], "Invalid");

    // Status subresource: PUT on the main resource keeps the stored status.
    let mut st = cur.clone();
    st["status"]["phase"] = json!("Running");
    let r = s
        .send(Method::PUT, &format!("{PODS}/web"), Some(st.clone()))
        .await;
    assert_eq!(r.body["status"]["phase"], "Pending");
    st["metadata"]["resourceVersion"] = r.body["metadata"]["resourceVersion"].clone();
    let r = s
        .send(Method::PUT, &format!("{PODS}/web/status"), Some(st))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Running");

    // List and delete (unscheduled: removed at once).
    let l = s.send(Method::GET, PODS, None).await.body;
    assert_eq!(l["kind"], "PodList");
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert!(l["metadata"]["resourceVersion"].is_string());
    let r = s.send(Method::DELETE, &format!("{PODS}/web"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.send(Method::GET, &format!("{PODS}/web"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Cluster-scoped resources and other groups.
    let r = s
        .send(
            Method::POST,
            "/api/v1/nodes",
            Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["metadata"].get("namespace").is_none());
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}});
    let r = s
        .send(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            Some(lease),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn error_statuses() {
    let s = start().await;
    let r = s.send(Method::GET, &format!("{PODS}/nope"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["apiVersion"], "v1");
    assert_eq!(r.body["status"], "Failure");
    assert_eq!(r.body["reason"], "NotFound");
    assert_eq!(r.body["message"], "pods \"nope\" not found");
    assert_eq!(r.body["details"], json!({"name": "nope", "kind": "pods"}));

    let r = s
        .send(
            Method::POST,
            "/api/v1/namespaces/missing/pods",
            Some(pod("p")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], "namespaces \"missing\" not found");

    let mut bad = pod("bad");
    bad["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let r = s.send(Method::POST, PODS, Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(
        r.body["details"]["causes"][0],
        json!({"reason": "FieldValueRequired", "field": "spec.containers[0].image", "message": "Required value"})
    );
    let r = s.send(Method::POST, PODS, Some(pod("Bad_Name"))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    // A bad name and a bad spec: one 422 naming both, as kube-apiserver.
    let mut both = pod("Bad_Name");
    both["spec"]["containers"] = json!([]);
    let r = s.send(Method::POST, PODS, Some(both)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = r.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["metadata.name", "spec.containers"], "{}", r.body);

    let r = s
        .raw(
            Method::POST,
            PODS,
            &[("content-type", "application/json")],
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["reason"], "BadRequest");

    let r = s.send(Method::POST, PODS, Some(cm("x", json!({})))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let big = vec![b' '; 3 * 1024 * 1024 + 10];
    let r = s
        .raw(
            Method::POST,
            CMS,
            &[("content-type", "application/json")],
            big,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.body["reason"], "RequestEntityTooLarge");

    assert_eq!(
        s.send(Method::POST, PODS, Some(pod("dup"))).await.status,
        StatusCode::CREATED
    );
    let r = s.send(Method::POST, PODS, Some(pod("dup"))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["reason"], "AlreadyExists");

    let mut g = pod("");
    g["metadata"] = json!({"generateName": "gen-"});
    let r = s.send(Method::POST, PODS, Some(g)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let name = r.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let r = s.send(Method::PUT, PODS, Some(pod("x"))).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body["reason"], "MethodNotAllowed");

    // Field validation.
    let mut typo = pod("typo");
    typo["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
    let r = s
        .send(
            Method::POST,
            &format!("{PODS}?fieldValidation=Strict"),
            Some(typo.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("strict decoding error: unknown field \"spec.containers[0].imagePullPolcy\"")
    );
    let r = s
        .send(
            Method::POST,
            &format!("{PODS}?fieldValidation=Warn"),
            Some(typo),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.headers.get("warning").unwrap(),
        "299 - \"unknown field \\\"spec.containers[0].imagePullPolcy\\\"\""
    );
}

#[tokio::test]
async fn selectors_and_pagination() {
    let s = start().await;
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        let r = s
            .send(
                Method::POST,
                CMS,
                Some(cm(
                    &format!("cm{i}"),
                    json!({"tier": tier, "i": i.to_string()}),
                )),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = s
        .send(
            Method::GET,
            &format!("{CMS}?labelSelector=tier%3Dodd"),
            None,
        )
        .await;
    assert_eq!(names(&r.body), ["cm1", "cm3", "cm5"]);
    let r = s
        .send(
            Method::GET,
            &format!("{CMS}?labelSelector=tier!%3Dodd,i%20notin%20(0,2)"),
            None,
        )
        .await;
    assert_eq!(names(&r.body), ["cm4", "cm6"]);
    let r = s
        .send(
            Method::GET,
            &format!("{CMS}?labelSelector=i%20in%20(1,2),tier"),
            None,
        )
        .await;
    assert_eq!(names(&r.body), ["cm1", "cm2"]);
    let r = s
        .send(Method::GET, &format!("{CMS}?labelSelector=!tier"), None)
        .await;
    assert!(names(&r.body).is_empty());
    let r = s
        .send(
            Method::GET,
            &format!("{CMS}?fieldSelector=metadata.name%3D%3Dcm2"),
            None,
        )
        .await;
    assert_eq!(names(&r.body), ["cm2"]);
    let r = s
        .send(
            Method::GET,
            &format!("{CMS}?fieldSelector=spec.nodeName%3Dx"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Pagination: 3 + 3 + 1, one snapshot.
    let p1 = s
        .send(Method::GET, &format!("{CMS}?limit=3"), None)
        .await
        .body;
    assert_eq!(names(&p1), ["cm0", "cm1", "cm2"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 4);
    let rv = p1["metadata"]["resourceVersion"].clone();
    s.send(Method::POST, CMS, Some(cm("cm9", json!({})))).await;
    let c = p1["metadata"]["continue"].as_str().unwrap();
    let p2 = s
        .send(Method::GET, &format!("{CMS}?limit=3&continue={c}"), None)
        .await
        .body;
    assert_eq!(names(&p2), ["cm3", "cm4", "cm5"]);
    assert_eq!(p2["metadata"]["resourceVersion"], rv);
    let c = p2["metadata"]["continue"].as_str().unwrap();
    let p3 = s
        .send(Method::GET, &format!("{CMS}?limit=3&continue={c}"), None)
        .await
        .body;
    assert_eq!(names(&p3), ["cm6"]);
    assert!(p3["metadata"].get("continue").is_none());

    // Pagination with a selector.
    let q = format!("{CMS}?limit=2&labelSelector=tier%3Deven");
    let p1 = s.send(Method::GET, &q, None).await.body;
    assert_eq!(names(&p1), ["cm0", "cm2"]);
    let c = p1["metadata"]["continue"].as_str().unwrap();
    let p2 = s
        .send(Method::GET, &format!("{q}&continue={c}"), None)
        .await
        .body;
    assert_eq!(names(&p2), ["cm4", "cm6"]);

    // All namespaces.
    let r = s.send(Method::GET, "/api/v1/configmaps", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn watch_from_resource_version() {
    let s = start().await;
    let r = s
        .send(Method::POST, CMS, Some(cm("a", json!({"w": "1"}))))
        .await;
    let rv0: i64 = r.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    s.send(Method::POST, CMS, Some(cm("b", json!({"w": "1"}))))
        .await;
    let mut a = s.send(Method::GET, &format!("{CMS}/a"), None).await.body;
    a["data"]["k"] = json!("v2");
    s.send(Method::PUT, &format!("{CMS}/a"), Some(a)).await;
    s.send(Method::DELETE, &format!("{CMS}/b"), None).await;
    let (headers, events) = s
        // `True`, as the Python client spells it.
        .watch(&format!("{CMS}?watch=True&resourceVersion={rv0}"), 3)
        .await;
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json;stream=watch"
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    let rvs: Vec<i64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(rvs, [rv0 + 1, rv0 + 2, rv0 + 3]);

    // Without resourceVersion: the current state as ADDED, then live events.
    let s2 = Arc::new(s);
    let s3 = s2.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s3.send(Method::POST, CMS, Some(cm("c", json!({"w": "1"}))))
            .await;
    });
    let (_, events) = s2
        .watch(
            &format!("{CMS}?watch=1&labelSelector=w%3D1&allowWatchBookmarks=true"),
            3,
        )
        .await;
    writer.await.unwrap();
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .filter(|(t, _)| t != "BOOKMARK")
        .collect();
    assert_eq!(summary[0], ("ADDED".to_string(), "a".to_string()));

    // Bookmarks, and timeoutSeconds ends the stream.
    let (_, events) = s2
        .watch(
            &format!(
                "{CMS}?watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds=1",
                rv0 + 5
            ),
            10,
        )
        .await;
    assert!(events.iter().any(|e| e["type"] == "BOOKMARK"), "{events:?}");
}

#[tokio::test]
async fn compacted_versions_are_gone() {
    let s = start().await;
    let r = s.send(Method::POST, CMS, Some(cm("a", json!({})))).await;
    let rv0: i64 = r.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..3 {
        s.send(Method::POST, CMS, Some(cm(&format!("x{i}"), json!({}))))
            .await;
    }
    let cur = s.storage.current_revision().await.unwrap();
    s.storage.compact(cur).await.unwrap();
    let r = s
        .send(
            Method::GET,
            &format!("{CMS}?resourceVersion={rv0}&resourceVersionMatch=Exact"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert_eq!(r.body["reason"], "Expired");
    assert_eq!(r.body["code"], 410);
    let (_, events) = s
        .watch(&format!("{CMS}?watch=true&resourceVersion={rv0}"), 1)
        .await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}

#[tokio::test]
async fn patch_types() {
    let s = start().await;
    let mut p = pod("pp");
    p["spec"]["containers"] = json!([
        {"name": "a", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
        {"name": "b", "image": "busybox:1"}
    ]);
    assert_eq!(
        s.send(Method::POST, PODS, Some(p)).await.status,
        StatusCode::CREATED
    );
    let path = format!("{PODS}/pp");
    let r = s
        .patch(
            &path,
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"m": "1", "app": null}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["labels"], json!({"m": "1"}));
    let r = s
        .patch(
            &path,
            "application/json-patch+json",
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"j": "2"}}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["annotations"]["j"], "2");
    let r = s
        .patch(
            &path,
            "application/strategic-merge-patch+json",
            json!({"spec": {"containers": [{"name": "b", "image": "busybox:2"}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let cs = r.body["spec"]["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["image"], "nginx:1");
    assert_eq!(cs[1]["image"], "busybox:2");
    let r = s
        .patch(&format!("{path}/status"), "application/strategic-merge-patch+json",
            json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Running");
    let r = s
        .patch(
            &path,
            "application/strategic-merge-patch+json",
            json!({"metadata": {"resourceVersion": "1"}, "spec": {"activeDeadlineSeconds": 5}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = s.patch(&path, "text/plain", json!({})).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = s
        .patch(
            &path,
            "application/merge-patch+json",
            json!({"spec": {"restartPolicy": "Never"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn graceful_pod_deletion() {
    let s = start().await;
    let mut p = pod("g");
    p["spec"]["terminationGracePeriodSeconds"] = json!(1);
    s.send(Method::POST, PODS, Some(p)).await;
    let r = s
        .send(Method::POST, &format!("{PODS}/g/binding"),
            Some(json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "g"}, "target": {"kind": "Node", "name": "n1"}})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = s
        .send(Method::POST, &format!("{PODS}/g/binding"),
            Some(json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "g"}, "target": {"kind": "Node", "name": "n2"}})))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let got = s.send(Method::GET, &format!("{PODS}/g"), None).await.body;
    assert_eq!(got["spec"]["nodeName"], "n1");

    let r = s.send(Method::DELETE, &format!("{PODS}/g"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 1);
    let t = s
        .raw(
            Method::GET,
            &format!("{PODS}/g"),
            &[("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            vec![],
        )
        .await;
    assert_eq!(t.body["rows"][0]["cells"][2], "Terminating");
    // The reaper removes it once the grace period passed.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.send(Method::GET, &format!("{PODS}/g"), None).await.status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
    }
    assert!(gone, "the reaper did not remove the pod");

    // gracePeriodSeconds=0 removes a scheduled pod at once.
    s.send(Method::POST, PODS, Some(pod("h"))).await;
    s.send(
        Method::POST,
        &format!("{PODS}/h/binding"),
        Some(json!({"target": {"name": "n1"}, "metadata": {"name": "h"}})),
    )
    .await;
    let r = s
        .send(
            Method::DELETE,
            &format!("{PODS}/h"),
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        s.send(Method::GET, &format!("{PODS}/h"), None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn tables_and_discovery() {
    let s = start().await;
    s.send(Method::POST, PODS, Some(pod("t1"))).await;
    let r = s
        .raw(
            Method::GET,
            PODS,
            &[(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )],
            vec![],
        )
        .await;
    assert_eq!(r.body["kind"], "Table");
    assert_eq!(r.body["apiVersion"], "meta.k8s.io/v1");
    let cols: Vec<(String, i64)> = r.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        &cols[..5],
        &[
            ("Name".into(), 0),
            ("Ready".into(), 0),
            ("Status".into(), 0),
            ("Restarts".into(), 0),
            ("Age".into(), 0)
        ]
    );
    assert_eq!(cols[5], ("IP".into(), 1));
    assert_eq!(cols[6], ("Node".into(), 1));
    let row = &r.body["rows"][0];
    assert_eq!(row["cells"][0], "t1");
    assert_eq!(row["cells"][1], "0/1");
    assert_eq!(row["cells"][2], "Pending");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["name"], "t1");
    assert!(r.body["metadata"]["resourceVersion"].is_string());

    let r = s
        .raw(
            Method::GET,
            "/api/v1/namespaces",
            &[("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            vec![],
        )
        .await;
    assert_eq!(r.body["rows"].as_array().unwrap().len(), 4);

    let r = s.send(Method::GET, "/api/v1", None).await.body;
    let pods = r["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "pods")
        .unwrap()
        .clone();
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["categories"], json!(["all"]));
    assert_eq!(pods["namespaced"], true);
    let r = s.send(Method::GET, "/apis", None).await.body;
    assert_eq!(r["groups"][0]["name"], "coordination.k8s.io");
    let r = s.send(Method::GET, "/version", None).await.body;
    assert_eq!(r["gitVersion"], "v1.33.0-berth");
    let r = s.send(Method::GET, "/openapi/v3/api/v1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        s.send(Method::GET, "/healthz", None).await.status,
        StatusCode::OK
    );
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let r = s
        .raw(Method::GET, "/apis", &[("accept", accept)], vec![])
        .await;
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(
        r.body["items"][0]["metadata"]["name"],
        "coordination.k8s.io"
    );
    let r = s
        .raw(Method::GET, "/api", &[("accept", accept)], vec![])
        .await;
    let res = &r.body["items"][0]["versions"][0]["resources"];
    let pods = res
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["resource"] == "pods")
        .unwrap();
    assert_eq!(pods["scope"], "Namespaced");
    // status, binding, log, exec.
    assert_eq!(pods["subresources"].as_array().unwrap().len(), 4);
    let r = s
        .raw(
            Method::GET,
            "/api",
            &[("accept", "application/json")],
            vec![],
        )
        .await;
    assert_eq!(r.body["kind"], "APIVersions");
    for path in [
        "/api/v1/widgets",
        "/api/v1/watch",
        "/api/v2",
        "/apis/x/v1",
        "/api/v1/pods/x",
        "/nothing",
    ] {
        let r = s.send(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.body["reason"], "NotFound");
    }
}

#[tokio::test]
async fn bearer_tokens() {
    let auth = Authenticator::parse("secret-token,admin,1,\"system:masters\"\n").unwrap();
    let s = start_with(ApiConfig {
        authenticator: Some(auth),
        ..ApiConfig::default()
    })
    .await;
    let r = s.send(Method::GET, "/api/v1/namespaces", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["reason"], "Unauthorized");
    let r = s
        .raw(
            Method::GET,
            "/api/v1/namespaces",
            &[("authorization", "Bearer wrong")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .raw(
            Method::GET,
            "/api/v1/namespaces",
            &[("authorization", "Bearer secret-token")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        s.send(Method::GET, "/healthz", None).await.status,
        StatusCode::OK
    );
}
