//! The audit log: kube-apiserver's `--audit-log-path` backend, one
//! `audit.k8s.io/v1` `Event` per line (JSON), every request at level
//! `Metadata` — who did what to which object and how it ended, never a
//! request or response body (so never a Secret's data).
//!
//! Stages as upstream (`staging/src/k8s.io/apiserver/pkg/endpoints/filters/audit.go`):
//! `RequestReceived` before the handler runs, `ResponseComplete` after it;
//! long-running requests (watch, `pods/log`, `pods/exec`…) get
//! `ResponseStarted` as soon as the response head is out and
//! `ResponseComplete` when the stream ends (for an upgraded `pods/exec`, when
//! the session ends: [`SessionEnd`]). A request that fails
//! authentication gets a single `ResponseStarted` event with an empty user
//! (upstream's `WithFailedAuthenticationAudit`). Every response carries the
//! event's id as the `Audit-Id` header, with or without a log, and a client's
//! own `Audit-ID` header is kept, as upstream's `WithAuditInit` does.
//!
//! The `authorization.k8s.io/decision` annotation: berth's authorizer runs
//! inside the handlers, so the decision is read from the outcome — a 403
//! whose `Status` is the authorizer's ("User … cannot …") is `forbid`, with
//! the authorizer's reason; every other request that got past
//! authentication is `allow`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{self, Peer, User};
use super::objects::{new_uid, query_flag};

/// The response header carrying a request's audit id.
pub const AUDIT_ID_HEADER: &str = "audit-id";
/// The annotation recording the authorization decision (`allow`/`forbid`).
pub const DECISION_ANNOTATION: &str = "authorization.k8s.io/decision";
/// The annotation recording the authorizer's reason.
pub const REASON_ANNOTATION: &str = "authorization.k8s.io/reason";

/// The largest error body read back to copy its `Status` into the event.
const MAX_STATUS_BODY: usize = 64 * 1024;

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log file could not be opened.
    #[error("opening audit log {path}: {source}")]
    Open {
        /// The `--audit-log-path`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where audit events go: a file opened for appending (created 0600) or
/// standard output. Cloning shares the writer; a line is written whole.
#[derive(Clone)]
pub struct AuditLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    target: Arc<str>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.target)
    }
}

impl AuditLog {
    /// Open `--audit-log-path`: `-` is standard output; a file is created
    /// with mode 0600 (events name users and objects) and appended to.
    pub fn open(path: &Path) -> Result<AuditLog, Error> {
        if path == Path::new("-") {
            return Ok(AuditLog::from_writer(Box::new(std::io::stdout()), "-"));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AuditLog::from_writer(
            Box::new(file),
            &path.display().to_string(),
        ))
    }

    /// Events to any writer; `target` names it in diagnostics.
    pub fn from_writer(out: Box<dyn Write + Send>, target: &str) -> AuditLog {
        AuditLog {
            out: Arc::new(Mutex::new(out)),
            target: target.into(),
        }
    }

    /// Append one event. A failure is logged and does not fail the request
    /// (upstream's log backend in its default blocking mode also only
    /// reports it).
    pub fn write(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(target_log = %self.target, error = %e, "encoding audit event");
                return;
            }
        };
        line.push(b'\n');
        // One write of the whole line, so concurrent requests never
        // interleave within a line.
        let result = match self.out.lock() {
            Ok(mut out) => out.write_all(&line).and_then(|()| out.flush()),
            Err(_) => Err(std::io::Error::other("audit log writer poisoned")),
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.target, audit_id = %event.audit_id, error = %e, "writing audit event");
        }
    }
}

/// `audit.k8s.io/v1` `Event`, the fields a `Metadata`-level event has (field
/// order and omission as upstream's JSON).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `Event`.
    pub kind: &'static str,
    /// `audit.k8s.io/v1`.
    pub api_version: &'static str,
    /// Always `Metadata`.
    pub level: &'static str,
    /// Unique per request, shared by its stages.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// `RequestReceived`, `ResponseStarted` or `ResponseComplete`.
    pub stage: &'static str,
    /// Path and query as sent.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// The Kubernetes verb, or the lowercase HTTP method of a non-resource request.
    pub verb: String,
    /// Who (empty when authentication failed).
    pub user: UserInfo,
    /// The client and any proxies it came through.
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// The `User-Agent` header.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    /// The object addressed (resource requests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectReference>,
    /// How it ended (a `metav1.Status`: code, and for failures
    /// status/message/reason/details).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<Value>,
    /// When the request arrived (RFC 3339, microseconds).
    pub request_received_timestamp: String,
    /// When this stage was reached.
    pub stage_timestamp: String,
    /// `authorization.k8s.io/decision` and `authorization.k8s.io/reason`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `authentication.k8s.io/v1` `UserInfo`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserInfo {
    /// The user name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// The uid (empty for certificate users).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl From<&User> for UserInfo {
    fn from(u: &User) -> UserInfo {
        UserInfo {
            username: u.name.clone(),
            uid: u.uid.clone(),
            groups: u.groups.clone(),
        }
    }
}

/// `audit.k8s.io/v1` `ObjectReference`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// The plural resource.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// The namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The object's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The API group (empty for core).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// The API version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// The subresource (`status`, `log`…).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// What a request path means, as upstream's `RequestInfoFactory`
/// (`staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`)
/// parses it: resource requests under `/api/v1/…` and `/apis/G/V/…`,
/// everything else a non-resource request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// A resource request (else the verb is the lowercase HTTP method).
    pub is_resource_request: bool,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `proxy`; a lowercase method for non-resource requests.
    pub verb: String,
    /// The API group.
    pub api_group: String,
    /// The API version.
    pub api_version: String,
    /// The namespace.
    pub namespace: String,
    /// The resource.
    pub resource: String,
    /// The subresource.
    pub subresource: String,
    /// The object name.
    pub name: String,
}

impl RequestInfo {
    /// Parse a request's method, path and query.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
        let non_resource = RequestInfo {
            verb: method.as_str().to_ascii_lowercase(),
            ..RequestInfo::default()
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts.len() < 3 {
            return non_resource;
        }
        let mut info = RequestInfo {
            is_resource_request: true,
            ..RequestInfo::default()
        };
        let mut rest: &[&str] = match parts[0] {
            "api" => &parts[1..],
            "apis" if parts.len() >= 4 => {
                info.api_group = parts[1].to_string();
                &parts[2..]
            }
            _ => return non_resource,
        };
        info.api_version = rest[0].to_string();
        rest = &rest[1..];
        let mut special = false;
        if matches!(rest[0], "watch" | "proxy") {
            if rest.len() < 2 {
                // Upstream answers this with an error; nothing to name.
                return RequestInfo {
                    verb: rest[0].to_string(),
                    ..info
                };
            }
            info.verb = rest[0].to_string();
            rest = &rest[1..];
            special = true;
        } else {
            info.verb = match *method {
                Method::POST => "create",
                Method::GET | Method::HEAD => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "",
            }
            .to_string();
        }
        if rest[0] == "namespaces" && rest.len() > 1 {
            info.namespace = rest[1].to_string();
            // `namespaces/NAME/status` and `/finalize` are the namespace's own.
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        if rest.len() >= 3 && info.verb != "proxy" {
            info.subresource = rest[2].to_string();
        }
        if rest.len() >= 2 {
            info.name = rest[1].to_string();
        }
        info.resource = rest[0].to_string();
        if !special && info.name.is_empty() && info.verb == "get" {
            let mut watch = false;
            let mut field_selector = String::new();
            for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                match &*k {
                    "watch" => watch = query_flag(&v),
                    "fieldSelector" => field_selector = v.into_owned(),
                    _ => {}
                }
            }
            info.verb = if watch { "watch" } else { "list" }.to_string();
            if let Some(name) = exact_name(&field_selector) {
                info.name = name;
            }
        }
        if info.name.is_empty() && info.verb == "delete" {
            info.verb = "deletecollection".to_string();
        }
        info
    }

    /// A long-running request (upstream's `BasicLongRunningRequestCheck`
    /// with kube-apiserver's verbs `watch`, `proxy` and subresources
    /// `attach`, `exec`, `proxy`, `log`, `portforward`).
    pub fn is_long_running(&self) -> bool {
        self.is_resource_request
            && (matches!(self.verb.as_str(), "watch" | "proxy")
                || matches!(
                    self.subresource.as_str(),
                    "attach" | "exec" | "proxy" | "log" | "portforward"
                ))
    }

    fn object_ref(&self) -> Option<ObjectReference> {
        self.is_resource_request.then(|| ObjectReference {
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            api_group: self.api_group.clone(),
            api_version: self.api_version.clone(),
            subresource: self.subresource.clone(),
        })
    }
}

/// The name a field selector pins with `metadata.name=` (or `==`), when it
/// is a valid path segment (upstream's `RequiresExactMatch` check).
fn exact_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        let valid =
            !value.is_empty() && value != "." && value != ".." && !value.contains(['/', '%']);
        valid.then(|| value.to_string())
    })
}

/// A timestamp as `metav1.MicroTime` serialises it.
fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// upstream's `utilnet.SourceIPs`: `X-Forwarded-For`, then `X-Real-Ip`, then
/// the connection's address unless it repeats the last one.
fn source_ips(req: &Request) -> Vec<String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut ips: Vec<IpAddr> = header("x-forwarded-for")
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    if let Ok(ip) = header("x-real-ip").trim().parse::<IpAddr>()
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    let remote = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.remote_addr.ip())
        .or_else(|| {
            req.extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip())
        });
    if let Some(ip) = remote
        && ips.last() != Some(&ip)
    {
        ips.push(ip);
    }
    ips.iter().map(ToString::to_string).collect()
}

/// The `Status` fields upstream copies into `responseStatus`
/// (`audit.LogResponseObject`): status, message, reason, details, code.
fn status_of(code: u16, body: Option<&Value>) -> Value {
    let mut status = json!({"metadata": {}});
    if let Some(b) = body.filter(|b| b.get("kind").and_then(Value::as_str) == Some("Status")) {
        for key in ["status", "message", "reason", "details"] {
            if let Some(v) = b.get(key).filter(|v| !v.is_null() && *v != "") {
                status[key] = v.clone();
            }
        }
    }
    status["code"] = json!(code);
    status
}

/// The authorizer's verdict read from a 403 `Status` message
/// (`… is forbidden: User "NAME" cannot VERB resource …[: REASON]`): the
/// reason, or `None` when the 403 came from elsewhere (admission).
fn forbidden_reason(user: &str, message: &str) -> Option<String> {
    let start = message.find(&format!("User {user:?} cannot "))?;
    let rest = &message[start..];
    let scope_end = if let Some(i) = rest.find(" at the cluster scope") {
        i + " at the cluster scope".len()
    } else {
        let i = rest.find(" in the namespace \"")? + " in the namespace \"".len();
        i + rest[i..].find('"')? + 1
    };
    Some(
        rest[scope_end..]
            .strip_prefix(": ")
            .unwrap_or("")
            .to_string(),
    )
}

/// The end of an upgraded session (`pods/exec` after its 101), attached by
/// the handler to the 101 response: the 101's body is empty and done at once,
/// so `ResponseComplete` waits for this instead, as upstream writes it when
/// the exec stream ends.
#[derive(Clone, Debug)]
pub struct SessionEnd(tokio::sync::watch::Receiver<()>);

/// Held by the task serving an upgraded session; dropping it ends the session.
#[derive(Debug)]
pub struct SessionGuard {
    _end: tokio::sync::watch::Sender<()>,
}

/// A session's guard (for the task serving it) and end (for its response).
pub fn session() -> (SessionGuard, SessionEnd) {
    let (tx, rx) = tokio::sync::watch::channel(());
    (SessionGuard { _end: tx }, SessionEnd(rx))
}

/// Writes `ResponseComplete` of a long-running request when its body is
/// done: streamed to the end, or dropped because the client went away.
struct CompleteOnDrop {
    log: AuditLog,
    event: Event,
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        self.event.stage = "ResponseComplete";
        self.event.stage_timestamp = micro_time(jiff::Timestamp::now());
        self.log.write(&self.event);
    }
}

fn set_audit_id(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(AUDIT_ID_HEADER, v);
    }
}

/// Read a small JSON error body back (to copy its `Status`), leaving the
/// response as it was.
async fn read_status_body(resp: Response) -> (Response, Option<Value>) {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !is_json {
        return (resp, None);
    }
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, MAX_STATUS_BODY).await {
        Ok(bytes) => {
            let status = serde_json::from_slice(&bytes).ok();
            (Response::from_parts(parts, Body::from(bytes)), status)
        }
        // Larger than any Status: the body is gone; say so rather than
        // send a truncated one.
        Err(_) => (
            axum::response::IntoResponse::into_response(super::ApiError::Internal(
                "response too large to audit".into(),
            )),
            None,
        ),
    }
}

/// The audit middleware: assigns the audit id, and with a log configured
/// writes the request's events.
pub async fn audit(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let audit_id = req
        .headers()
        .get("audit-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map_or_else(new_uid, str::to_string);
    let Some(log) = state.config.audit.clone() else {
        let mut resp = next.run(req).await;
        set_audit_id(&mut resp, &audit_id);
        return resp;
    };
    let received = micro_time(jiff::Timestamp::now());
    let info = RequestInfo::parse(req.method(), req.uri().path(), req.uri().query());
    // The same union authenticator the `authenticate` layer inside runs:
    // the event names the user before the handler does anything.
    let (user, failed_authentication) = match &state.config.authenticator {
        None => (Some(auth::anonymous()), false),
        Some(a) => match auth::authenticate_request(a, &req) {
            Some(u) => (Some(u), false),
            None if super::is_public(req.uri().path()) => (Some(auth::anonymous()), false),
            None => (None, true),
        },
    };
    let mut event = Event {
        kind: "Event",
        api_version: "audit.k8s.io/v1",
        level: "Metadata",
        audit_id: audit_id.clone(),
        stage: "RequestReceived",
        request_uri: req.uri().path_and_query().map_or_else(
            || req.uri().path().to_string(),
            |pq| pq.as_str().to_string(),
        ),
        verb: info.verb.clone(),
        user: user.as_ref().map(UserInfo::from).unwrap_or_default(),
        source_ips: source_ips(&req),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        object_ref: info.object_ref(),
        response_status: None,
        request_received_timestamp: received.clone(),
        stage_timestamp: received,
        annotations: BTreeMap::new(),
    };
    if failed_authentication {
        // Upstream: one ResponseStarted event, no user, no decision.
        let resp = next.run(req).await;
        let code = resp.status().as_u16();
        let (mut resp, body) = read_status_body(resp).await;
        event.stage = "ResponseStarted";
        event.response_status = Some(status_of(code, body.as_ref()));
        event.stage_timestamp = micro_time(jiff::Timestamp::now());
        log.write(&event);
        set_audit_id(&mut resp, &audit_id);
        return resp;
    }
    log.write(&event);

    // A create names its object in the body; upstream fills objectRef.name
    // (and an empty namespace) from the decoded object once the handler
    // has it. Only a body whose length is declared and within the limit is
    // read here: anything else is the handler's to refuse.
    let (req, created) = if info.verb == "create"
        && info.is_resource_request
        && info.subresource.is_empty()
        && info.name.is_empty()
    {
        peek_created_object(req).await
    } else {
        (req, None)
    };

    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    let (mut resp, body) = if code >= 400 {
        read_status_body(resp).await
    } else {
        (resp, None)
    };
    let forbid = (code == 403)
        .then(|| {
            let message = body.as_ref()?.get("message")?.as_str()?;
            forbidden_reason(&event.user.username, message)
        })
        .flatten();
    match &forbid {
        Some(reason) => {
            event
                .annotations
                .insert(DECISION_ANNOTATION.into(), "forbid".into());
            event
                .annotations
                .insert(REASON_ANNOTATION.into(), reason.clone());
        }
        None => {
            event
                .annotations
                .insert(DECISION_ANNOTATION.into(), "allow".into());
            event
                .annotations
                .insert(REASON_ANNOTATION.into(), String::new());
            if let (Some((name, namespace)), Some(obj)) = (created, event.object_ref.as_mut()) {
                if obj.name.is_empty() {
                    obj.name = name;
                }
                if obj.namespace.is_empty() {
                    obj.namespace = namespace;
                }
            }
        }
    }
    event.response_status = Some(status_of(code, body.as_ref()));
    set_audit_id(&mut resp, &audit_id);
    if info.is_long_running() {
        event.stage = "ResponseStarted";
        event.stage_timestamp = micro_time(jiff::Timestamp::now());
        log.write(&event);
        let guard = CompleteOnDrop { log, event };
        if let Some(SessionEnd(mut end)) = resp.extensions_mut().remove::<SessionEnd>() {
            tokio::spawn(async move {
                // Err once the session's guard is dropped.
                while end.changed().await.is_ok() {}
                drop(guard);
            });
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let stream = body.into_data_stream().map(move |chunk| {
            // The stream owns the guard: it fires when the stream is dropped.
            let _ = &guard;
            chunk
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    event.stage = "ResponseComplete";
    event.stage_timestamp = micro_time(jiff::Timestamp::now());
    log.write(&event);
    resp
}

/// Buffer a create's body (declared length within the API's limit) and read
/// its `metadata.name` and `metadata.namespace`.
async fn peek_created_object(req: Request) -> (Request, Option<(String, String)>) {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_none_or(|n| n > super::handlers::MAX_BODY) {
        return (req, None);
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, super::handlers::MAX_BODY).await {
        Ok(b) => b,
        // The client broke off mid-body; the handler sees an empty body.
        Err(_) => return (Request::from_parts(parts, Body::empty()), None),
    };
    let names = serde_json::from_slice::<Value>(&bytes).ok().map(|obj| {
        let meta = |k: &str| {
            obj.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        (meta("name"), meta("namespace"))
    });
    (Request::from_parts(parts, Body::from(bytes)), names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, uri: &str) -> RequestInfo {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        RequestInfo::parse(&method, path, query)
    }

    #[test]
    fn request_info_as_upstream() {
        let i = parse(Method::GET, "/api/v1/namespaces/default/pods/p1");
        assert_eq!(
            (
                i.verb.as_str(),
                i.namespace.as_str(),
                i.resource.as_str(),
                i.name.as_str()
            ),
            ("get", "default", "pods", "p1")
        );
        let i = parse(Method::GET, "/api/v1/namespaces/default/pods?watch=true");
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("watch", ""));
        assert!(i.is_long_running());
        let i = parse(Method::GET, "/api/v1/watch/namespaces/default/pods");
        assert_eq!((i.verb.as_str(), i.resource.as_str()), ("watch", "pods"));
        let i = parse(Method::GET, "/api/v1/pods?fieldSelector=metadata.name%3Dp1");
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "p1"));
        let i = parse(Method::DELETE, "/apis/apps/v1/namespaces/ns/deployments");
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group.as_str(),
                i.api_version.as_str()
            ),
            ("deletecollection", "apps", "v1")
        );
        let i = parse(Method::PUT, "/api/v1/nodes/n1/status");
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str()
            ),
            ("update", "nodes", "n1", "status")
        );
        // A namespace is its own namespace, as upstream has it.
        let i = parse(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!(
            (i.namespace.as_str(), i.resource.as_str(), i.name.as_str()),
            ("kube-system", "namespaces", "kube-system")
        );
        let i = parse(Method::POST, "/api/v1/namespaces/d/pods/p/exec");
        assert!(i.is_long_running());
        for non_resource in [
            "/healthz",
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/version",
            "/",
        ] {
            let i = parse(Method::GET, non_resource);
            assert!(!i.is_resource_request, "{non_resource}");
            assert_eq!(i.verb, "get");
        }
        assert_eq!(parse(Method::POST, "/apis/apps").verb, "post");
    }

    #[test]
    fn forbidden_reason_from_the_authorizer_message() {
        let m = r#"secrets "s" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n1' and this object"#;
        assert_eq!(
            forbidden_reason("system:node:n1", m).as_deref(),
            Some("no relationship found between node 'n1' and this object")
        );
        let m = r#"nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope"#;
        assert_eq!(forbidden_reason("bob", m).as_deref(), Some(""));
        // An admission plugin's 403 is not the authorizer's.
        assert_eq!(
            forbidden_reason(
                "bob",
                r#"pods "p" is forbidden: node "n1" can only create mirror pods"#
            ),
            None
        );
    }

    #[test]
    fn micro_time_has_six_digits() {
        let t: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(micro_time(t), "2026-01-02T03:04:05.000000Z");
    }
}
