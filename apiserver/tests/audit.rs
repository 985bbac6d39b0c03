//! The audit log (`--audit-log-path`): in-process over the server's real TLS
//! accept loop, the log read back and every line parsed as an upstream
//! `audit.k8s.io/v1` `Event` (unknown fields refused).

mod tls_client;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tls_client::{Creds, Server, start};

/// upstream `staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go` `Event`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Event {
    kind: String,
    api_version: String,
    level: String,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: UserInfo,
    impersonated_user: Option<UserInfo>,
    #[serde(rename = "sourceIPs", default)]
    source_ips: Vec<String>,
    user_agent: Option<String>,
    object_ref: Option<ObjectReference>,
    response_status: Option<Status>,
    request_object: Option<Value>,
    response_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UserInfo {
    username: Option<String>,
    uid: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    extra: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ObjectReference {
    resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    api_group: Option<String>,
    api_version: Option<String>,
    resource_version: Option<String>,
    subresource: Option<String>,
}

/// `metav1.Status` as the audit event carries it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Status {
    metadata: BTreeMap<String, Value>,
    status: Option<String>,
    message: Option<String>,
    reason: Option<String>,
    details: Option<Value>,
    code: Option<u16>,
}

/// Every line of the log, each parsed strictly; the raw text too.
fn events(s: &Server) -> (Vec<Event>, String) {
    let text = std::fs::read_to_string(&s.audit_path).unwrap();
    let events = text
        .lines()
        .map(|l| {
            let e: Event = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(
                (e.kind.as_str(), e.api_version.as_str()),
                ("Event", "audit.k8s.io/v1")
            );
            assert_eq!(e.level, "Metadata");
            assert!(
                e.request_object.is_none() && e.response_object.is_none(),
                "{l}"
            );
            for t in [&e.request_received_timestamp, &e.stage_timestamp] {
                // RFC 3339 with exactly six fractional digits, UTC.
                assert_eq!(t.len(), "2026-01-02T03:04:05.123456Z".len(), "{t}");
                assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
            }
            e
        })
        .collect();
    (events, text)
}

/// The events of one audit id, waiting up to 5 s for `stages`.
async fn stages_of(s: &Server, id: &str, stages: &[&str]) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (all, text) = events(s);
        let mine: Vec<Event> = all.into_iter().filter(|e| e.audit_id == id).collect();
        let got: Vec<&str> = mine.iter().map(|e| e.stage.as_str()).collect();
        if got == stages {
            return mine;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: stages {got:?}, want {stages:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn audit_id(r: &tls_client::Resp) -> String {
    r.headers
        .get("audit-id")
        .expect("Audit-Id header")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn secret_create_logs_metadata_and_never_the_data() {
    let s = start(None).await;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db"},
        "data": {"password": "c3VwZXJzZWNyZXQ="},
    });
    let r = s
        .send(
            &Creds::token("admin-token"),
            Method::POST,
            "/api/v1/namespaces/default/secrets?fieldManager=kubectl",
            Some(secret),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = audit_id(&r);
    let evs = stages_of(&s, &id, &["RequestReceived", "ResponseComplete"]).await;
    let done = &evs[1];
    assert_eq!(done.verb, "create");
    assert_eq!(
        done.request_uri,
        "/api/v1/namespaces/default/secrets?fieldManager=kubectl"
    );
    assert_eq!(done.user.username.as_deref(), Some("admin"));
    assert_eq!(done.user.uid.as_deref(), Some("uid-admin"));
    assert_eq!(done.user.groups, ["system:masters", "system:authenticated"]);
    assert_eq!(done.source_ips, ["127.0.0.1"]);
    assert_eq!(done.user_agent.as_deref(), Some("berth-test/1.0"));
    let obj = done.object_ref.as_ref().unwrap();
    assert_eq!(obj.resource.as_deref(), Some("secrets"));
    assert_eq!(obj.namespace.as_deref(), Some("default"));
    assert_eq!(obj.name.as_deref(), Some("db"));
    assert_eq!(obj.api_version.as_deref(), Some("v1"));
    assert_eq!(obj.api_group, None);
    let st = done.response_status.as_ref().unwrap();
    assert_eq!((st.code, st.status.as_deref()), (Some(201), None));
    assert_eq!(done.annotations["authorization.k8s.io/decision"], "allow");
    // RequestReceived comes before the handler decoded the body: no name
    // yet, no status, no decision (as upstream).
    let first = &evs[0];
    assert!(first.response_status.is_none() && first.annotations.is_empty());
    assert_eq!(first.object_ref.as_ref().unwrap().name, None);
    assert_eq!(first.stage_timestamp, first.request_received_timestamp);

    // Read it back and update it: the data appears in neither form.
    let r = s
        .send(
            &Creds::token("admin-token"),
            Method::GET,
            "/api/v1/namespaces/default/secrets/db",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let get = stages_of(&s, &audit_id(&r), &["RequestReceived", "ResponseComplete"]).await;
    assert_eq!(get[1].verb, "get");
    let (_, text) = events(&s);
    assert!(!text.contains("c3VwZXJzZWNyZXQ"), "{text}");
    assert!(!text.contains("supersecret"), "{text}");

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.audit_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn forbidden_and_unauthorized_requests_are_logged() {
    let s = start(None).await;
    let r = s
        .send(
            &Creds::token("node-token"),
            Method::GET,
            "/api/v1/namespaces/default/secrets/db",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let evs = stages_of(&s, &audit_id(&r), &["RequestReceived", "ResponseComplete"]).await;
    let e = &evs[1];
    assert_eq!(e.user.username.as_deref(), Some("system:node:n1"));
    assert_eq!(e.verb, "get");
    assert_eq!(e.annotations["authorization.k8s.io/decision"], "forbid");
    assert!(e.annotations.contains_key("authorization.k8s.io/reason"));
    let st = e.response_status.as_ref().unwrap();
    assert_eq!(st.code, Some(403));
    assert_eq!(st.status.as_deref(), Some("Failure"));
    assert_eq!(st.reason.as_deref(), Some("Forbidden"));
    assert_eq!(st.message.as_deref(), r.body["message"].as_str());
    assert_eq!(st.details.as_ref().unwrap()["name"], "db");

    // A bad token: one ResponseStarted event, no user, no decision.
    for creds in [Creds::token("wrong"), Creds::default()] {
        let r = s
            .send(&creds, Method::GET, "/api/v1/namespaces", None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let evs = stages_of(&s, &audit_id(&r), &["ResponseStarted"]).await;
        let e = &evs[0];
        assert!(
            e.user.username.is_none() && e.user.groups.is_empty(),
            "{e:?}"
        );
        assert!(e.annotations.is_empty());
        assert_eq!(e.verb, "list");
        let st = e.response_status.as_ref().unwrap();
        assert_eq!(
            (st.code, st.reason.as_deref(), st.message.as_deref()),
            (Some(401), Some("Unauthorized"), Some("Unauthorized"))
        );
    }
    let (_, text) = events(&s);
    assert!(text.contains(r#""user":{}"#), "{text}");
    assert!(!text.contains("wrong"), "a token in the log: {text}");

    // Public paths: anonymous, a non-resource verb, no objectRef.
    let r = s
        .send(&Creds::default(), Method::GET, "/healthz", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let evs = stages_of(&s, &audit_id(&r), &["RequestReceived", "ResponseComplete"]).await;
    assert_eq!(evs[1].user.username.as_deref(), Some("system:anonymous"));
    assert_eq!(evs[1].user.groups, ["system:unauthenticated"]);
    assert_eq!(evs[1].verb, "get");
    assert!(evs[1].object_ref.is_none());
}

#[tokio::test]
async fn watch_gets_response_started_then_complete() {
    let s = start(None).await;
    let resp = s
        .open(
            &Creds::token("admin-token"),
            Method::GET,
            "/api/v1/namespaces/default/configmaps?watch=true",
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let id = resp.headers()["audit-id"].to_str().unwrap().to_string();
    // While the watch is open: RequestReceived and ResponseStarted only.
    let evs = stages_of(&s, &id, &["RequestReceived", "ResponseStarted"]).await;
    assert_eq!(evs[1].verb, "watch");
    assert_eq!(evs[1].response_status.as_ref().unwrap().code, Some(200));
    // An event flows through the audited stream.
    let mut body = resp.into_body();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}});
    let r = s
        .send(
            &Creds::token("admin-token"),
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a watch event")
        .unwrap()
        .unwrap();
    let chunk = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
    assert!(
        chunk.contains("\"ADDED\"") && chunk.contains("c1"),
        "{chunk}"
    );
    // The client goes away: ResponseComplete.
    drop(body);
    stages_of(
        &s,
        &id,
        &["RequestReceived", "ResponseStarted", "ResponseComplete"],
    )
    .await;
}

#[tokio::test]
async fn audit_id_header_and_client_supplied_id() {
    let s = start(None).await;
    let r = s
        .send_with(
            &Creds::token("admin-token"),
            Method::GET,
            "/api/v1/namespaces/default",
            &[
                ("Audit-ID", "my-request-1"),
                ("X-Forwarded-For", "10.0.0.7, 10.0.0.8"),
            ],
            None,
        )
        .await;
    assert_eq!(audit_id(&r), "my-request-1");
    let evs = stages_of(&s, "my-request-1", &["RequestReceived", "ResponseComplete"]).await;
    assert_eq!(evs[1].source_ips, ["10.0.0.7", "10.0.0.8", "127.0.0.1"]);
    // A namespace is its own namespace in the objectRef, as upstream.
    let obj = evs[1].object_ref.as_ref().unwrap();
    assert_eq!(
        (
            obj.resource.as_deref(),
            obj.namespace.as_deref(),
            obj.name.as_deref()
        ),
        (Some("namespaces"), Some("default"), Some("default"))
    );
    // Fresh ids otherwise, one per request, each in the log.
    let a = s
        .send(
            &Creds::token("admin-token"),
            Method::GET,
            "/api/v1/nodes",
            None,
        )
        .await;
    let b = s
        .send(
            &Creds::token("admin-token"),
            Method::GET,
            "/api/v1/nodes",
            None,
        )
        .await;
    assert_ne!(audit_id(&a), audit_id(&b));
    for r in [&a, &b] {
        let evs = stages_of(&s, &audit_id(r), &["RequestReceived", "ResponseComplete"]).await;
        assert_eq!(evs[1].verb, "list");
    }
}

#[tokio::test]
async fn write_errors_do_not_fail_requests_and_restarts_append() {
    // /dev/full: every write fails with ENOSPC.
    let full = std::path::Path::new("/dev/full");
    if full.exists() {
        let s = start(Some(full)).await;
        let r = s
            .send(
                &Creds::token("admin-token"),
                Method::GET,
                "/api/v1/nodes",
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers.contains_key("audit-id"));
    }
    // Two servers one after the other on the same log: the second appends.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let s = start(Some(&path)).await;
        let r = s
            .send(
                &Creds::token("bob-token"),
                Method::GET,
                "/api/v1/pods",
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        ids.push(audit_id(&r));
        stages_of(&s, &audit_id(&r), &["RequestReceived", "ResponseComplete"]).await;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    for id in ids {
        assert_eq!(text.matches(&id).count(), 2, "{text}");
    }
}
