//! `pods/log` and `pods/exec`: the API server as a proxy to the node agent's
//! authenticated server (the kubelet API on `:10250`).
//!
//! As kube-apiserver does: the pod is looked up and the container checked
//! (`pkg/registry/core/pod/strategy.go`: `LogLocation`, `streamLocation`,
//! `validateContainer`), the pod's Node gives the address (`InternalIP`, then
//! `ExternalIP`, then `Hostname` from `status.addresses`) and the port
//! (`status.daemonEndpoints.kubeletEndpoint.port`), and the request goes to
//! `https://<node>:<port>/containerLogs/{ns}/{pod}/{container}` or
//! `/exec/{ns}/{pod}/{container}` with the client certificate of
//! [`KubeletClient`].
//!
//! - `pods/log` streams the agent's body through as it comes (no buffering;
//!   `follow=true` streams last for minutes). When the client goes away the
//!   response body is dropped, which ends the upstream connection.
//! - `pods/exec` is an upgrade passthrough: the client's upgrade headers
//!   (`Connection`, `Upgrade`, `Sec-WebSocket-*`, `X-Stream-Protocol-Version`)
//!   go to the agent, the agent's `101` and its headers come back, then bytes
//!   are copied both ways, whatever protocol was negotiated (WebSocket
//!   `v5.channel.k8s.io`/`v4.channel.k8s.io`, or SPDY/3.1).
//!
//! A non-2xx (log) or non-101 (exec) answer of the agent becomes a `Status`
//! with the agent's code and its text as message (400 and 500 as upstream's
//! `GenericHttpResponseChecker`: `BadRequest` and `InternalError`).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ApiState;
use super::authz;
use super::error::{ApiError, Cause};
use super::resources::Resource;
use crate::storage::object_key;

/// How long connecting to a node agent (TCP and TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an agent's error body becomes the `Status` message
/// (upstream's `maxReadLength`).
const MAX_ERROR_BODY: usize = 50_000;

/// The streaming subresources of pods served by proxying to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `pods/log`.
    Log,
    /// `pods/exec`.
    Exec,
}

impl Stream {
    /// The proxied subresource `sub` of `res`, if it is one.
    pub fn of(res: &Resource, sub: Option<&str>) -> Option<Stream> {
        if !res.group.is_empty() || res.name != "pods" {
            return None;
        }
        match sub {
            Some("log") => Some(Stream::Log),
            Some("exec") => Some(Stream::Exec),
            _ => None,
        }
    }

    fn sub(self) -> &'static str {
        match self {
            Stream::Log => "log",
            Stream::Exec => "exec",
        }
    }

    /// The authorization verb: `get` for logs; `create` for exec whatever the
    /// method, as upstream (`AuthorizePodWebsocketUpgradeCreatePermission`
    /// turns a WebSocket `GET` into `create`).
    fn verb(self) -> &'static str {
        match self {
            Stream::Log => "get",
            Stream::Exec => "create",
        }
    }
}

/// Why a [`KubeletClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A PEM file could not be read or holds no certificate/key.
    #[error("reading {path}: {source}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration (e.g. the key does not match).
    #[error("kubelet client TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The API server's client to node agents: a rustls configuration
/// presenting the kubelet client certificate.
///
/// The agent's serving certificate is **not** verified: that is
/// kube-apiserver's behaviour without `--kubelet-certificate-authority`
/// (agents serve self-signed certificates by default). The TLS handshake
/// signatures are still checked, so the peer holds the key of the
/// certificate it shows.
#[derive(Clone)]
pub struct KubeletClient {
    connector: TlsConnector,
    connect_timeout: Duration,
    has_identity: bool,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("connect_timeout", &self.connect_timeout)
            .field("has_identity", &self.has_identity)
            .finish()
    }
}

impl KubeletClient {
    /// A client presenting `identity` (certificate chain and key), or none.
    pub fn new(
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<KubeletClient, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let has_identity = identity.is_some();
        let mut config = match identity {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
            None => builder.with_no_client_auth(),
        };
        // HTTP/1.1 only: exec needs an HTTP/1.1 upgrade.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            connector: TlsConnector::from(Arc::new(config)),
            connect_timeout: CONNECT_TIMEOUT,
            has_identity,
        })
    }

    /// A client presenting the certificate and key in PEM files
    /// (`--kubelet-client-certificate`, `--kubelet-client-key`).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<KubeletClient, ClientError> {
        let pem_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ClientError::Pem {
                path: path.clone(),
                source,
            }
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(pem_err(cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(cert))?;
        if certs.is_empty() {
            return Err(ClientError::Pem {
                path: cert.display().to_string(),
                source: rustls::pki_types::pem::Error::NoItemsFound,
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
        KubeletClient::new(Some((certs, key)))
    }

    /// A client without a certificate (agents answer it 401).
    pub fn anonymous() -> Result<KubeletClient, ClientError> {
        KubeletClient::new(None)
    }

    /// Override the connect timeout (default [`CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> KubeletClient {
        self.connect_timeout = timeout;
        self
    }

    /// TCP connect and TLS handshake to `host:port`, within the timeout.
    async fn connect(&self, host: &str, port: u16) -> Result<TlsStream<TcpStream>, String> {
        let addr = join_host_port(host, port);
        let dial = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("dial tcp {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("invalid node address {host:?}: {e}"))?;
            self.connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))
        };
        match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "dial tcp {addr}: i/o timeout after {:?}",
                self.connect_timeout
            )),
        }
    }

    /// `GET path` from the agent at `host:port` on a connection of its own:
    /// the whole body of a `200` answer, at most `limit` bytes. Dropping the
    /// future (a caller's timeout) closes the connection.
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        limit: usize,
    ) -> Result<Bytes, GetError> {
        use http_body_util::BodyExt as _;
        let authority = join_host_port(host, port);
        let url = format!("https://{authority}{path}");
        let tls = self
            .connect(host, port)
            .await
            .map_err(|reason| GetError::Connect { reason })?;
        let http = |source| GetError::Http {
            url: url.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http)?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "node agent connection ended");
            }
        });
        let _abort = AbortOnDrop(conn_task.abort_handle());
        let request = axum::http::Request::get(path)
            .header(header::HOST, &authority)
            .header(header::USER_AGENT, "berth-apiserver")
            .body(Body::empty())
            .map_err(|e| GetError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let resp = sender.send_request(request).await.map_err(http)?;
        let code = resp.status();
        if code != StatusCode::OK {
            let text = read_error_body(resp.into_body()).await;
            let mut text = text.trim().to_string();
            if let Some((cut, _)) = text.char_indices().nth(MAX_LOGGED_BODY) {
                text.truncate(cut);
            }
            return Err(GetError::Status {
                url,
                code: code.as_u16(),
                body: text,
            });
        }
        let mut body = resp.into_body();
        let mut out: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http)?;
            if let Ok(data) = frame.into_data() {
                if out.len().saturating_add(data.len()) > limit {
                    return Err(GetError::TooLarge { url, limit });
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How much of an agent's error answer a [`GetError`] quotes.
const MAX_LOGGED_BODY: usize = 200;

/// Why [`KubeletClient::get`] got no body.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// TCP connect or TLS handshake failed (or timed out).
    #[error("{reason}")]
    Connect {
        /// What happened (names the address).
        reason: String,
    },
    /// The request could not be built (an invalid path).
    #[error("GET {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// HTTP failed on the connection.
    #[error("GET {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// The agent answered something other than 200.
    #[error("GET {url}: HTTP {code}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP code.
        code: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The body is larger than the caller's limit.
    #[error("GET {url}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
}

/// Accepts any server certificate (see [`KubeletClient`]); checks the
/// handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A `Status` response with any code, reason and message.
fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The `Status.reason` kube-apiserver gives an HTTP code.
fn reason_for(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        c if c >= 500 => "InternalError",
        _ => "",
    }
}

/// Why a proxied request failed: an [`ApiError`], or a `Status` with a code
/// and reason of its own (an agent's answer, upstream's errors that are not
/// API statuses).
#[derive(Debug)]
pub enum Failure {
    /// A regular API error.
    Api(ApiError),
    /// Any other `Status`.
    Status {
        /// The HTTP code.
        code: StatusCode,
        /// `Status.reason` (empty: `Unknown`).
        reason: &'static str,
        /// `Status.message`.
        message: String,
        /// `Status.details`.
        details: Option<Value>,
    },
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Api(e) => e.into_response(),
            Failure::Status {
                code,
                reason,
                message,
                details,
            } => status(code, reason, &message, details),
        }
    }
}

/// The `Status` for an agent's error answer `code` with body `text`.
fn agent_error(code: StatusCode, text: &str, stream: Stream, pod: &str) -> Failure {
    match code {
        StatusCode::BAD_REQUEST => ApiError::BadRequest(text.to_string()).into(),
        StatusCode::INTERNAL_SERVER_ERROR => ApiError::Internal(text.to_string()).into(),
        _ => Failure::Status {
            code,
            reason: reason_for(code),
            message: text.to_string(),
            details: Some(json!({"name": pod, "kind": format!("pods/{}", stream.sub())})),
        },
    }
}

/// A 500 for an error that is not an API status (upstream: reason Unknown).
fn unknown(message: &str) -> Failure {
    Failure::Status {
        code: StatusCode::INTERNAL_SERVER_ERROR,
        reason: "",
        message: message.to_string(),
        details: None,
    }
}

type Outcome = Result<Response, Failure>;

/// Serve `pods/{name}/log` or `pods/{name}/exec` in `namespace`. The body of
/// `req` is not read (exec needs the raw request for the upgrade).
pub async fn serve(
    state: &ApiState,
    res: &'static Resource,
    stream: Stream,
    namespace: &str,
    name: &str,
    req: Request,
) -> Response {
    let allowed = match stream {
        Stream::Log => req.method() == Method::GET,
        Stream::Exec => req.method() == Method::GET || req.method() == Method::POST,
    };
    if !allowed {
        return ApiError::MethodNotAllowed.into_response();
    }
    let attrs = authz::Attributes {
        verb: stream.verb(),
        res,
        namespace: Some(namespace),
        name: Some(name),
        sub: Some(stream.sub()),
        field_selector: "",
        body: &[],
    };
    if let Err(denied) = authz::authorize(state, req.extensions().get(), &attrs).await {
        return denied.into_response();
    }
    let out = match stream {
        Stream::Log => logs(state, namespace, name, req).await,
        Stream::Exec => exec(state, namespace, name, req).await,
    };
    out.unwrap_or_else(IntoResponse::into_response)
}

/// The query parameters, in order, decoded.
fn query_pairs(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// apimachinery's `Convert_Slice_string_To_bool`: absent, `false` (any case)
/// and `0` are false; anything else, even empty, is true.
fn query_bool(q: &[(String, String)], key: &str) -> bool {
    first(q, key).is_some_and(super::objects::query_flag)
}

/// apimachinery's `Convert_Slice_string_To_Pointer_int64` (absent or empty: none).
fn query_i64(q: &[(String, String)], key: &str) -> Result<Option<i64>, ApiError> {
    match first(q, key) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|e| {
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            ApiError::BadRequest(format!("strconv.ParseInt: parsing {v:?}: {why}"))
        }),
    }
}

/// `v1.PodLogOptions` from the query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// `container`.
    pub container: String,
    /// `follow`.
    pub follow: bool,
    /// `previous`.
    pub previous: bool,
    /// `timestamps`.
    pub timestamps: bool,
    /// `sinceSeconds`.
    pub since_seconds: Option<i64>,
    /// `sinceTime` (RFC 3339).
    pub since_time: Option<jiff::Timestamp>,
    /// `tailLines`.
    pub tail_lines: Option<i64>,
    /// `limitBytes`.
    pub limit_bytes: Option<i64>,
}

impl LogOptions {
    /// Parse the query (`insecureSkipTLSVerifyBackend` is accepted and
    /// ignored: agent certificates are never verified). A malformed value is
    /// a 400.
    pub fn parse(q: &[(String, String)]) -> Result<LogOptions, ApiError> {
        let since_time = match first(q, "sinceTime") {
            None | Some("") => None,
            Some(v) => Some(v.parse::<jiff::Timestamp>().map_err(|e| {
                ApiError::BadRequest(format!(
                    "parsing time {v:?} as \"2006-01-02T15:04:05Z07:00\": {e}"
                ))
            })?),
        };
        Ok(LogOptions {
            container: first(q, "container").unwrap_or("").to_string(),
            follow: query_bool(q, "follow"),
            previous: query_bool(q, "previous"),
            timestamps: query_bool(q, "timestamps"),
            since_seconds: query_i64(q, "sinceSeconds")?,
            since_time,
            tail_lines: query_i64(q, "tailLines")?,
            limit_bytes: query_i64(q, "limitBytes")?,
        })
    }

    /// `ValidatePodLogOptions`: a 422 `PodLogOptions "<pod>" is invalid`.
    pub fn validate(&self, pod: &str) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        let invalid = |field: &str, v: i64, detail: &str| Cause {
            reason: "FieldValueInvalid".into(),
            field: field.into(),
            message: format!("Invalid value: {v}: {detail}"),
        };
        if let Some(n) = self.tail_lines
            && n < 0
        {
            causes.push(invalid(
                "tailLines",
                n,
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = self.limit_bytes
            && n < 1
        {
            causes.push(invalid("limitBytes", n, "must be greater than 0"));
        }
        match (self.since_seconds, self.since_time) {
            (Some(_), Some(_)) => causes.push(Cause {
                reason: "FieldValueForbidden".into(),
                field: String::new(),
                message: "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                    .into(),
            }),
            (Some(n), None) if n < 1 => {
                causes.push(invalid("sinceSeconds", n, "must be greater than 0"));
            }
            _ => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: "PodLogOptions".into(),
                name: pod.into(),
                causes,
            })
        }
    }

    /// The agent's query (`/containerLogs/...?...`), as `LogLocation` builds it.
    pub fn agent_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if self.follow {
            q.append_pair("follow", "true");
        }
        if self.previous {
            q.append_pair("previous", "true");
        }
        if self.timestamps {
            q.append_pair("timestamps", "true");
        }
        if let Some(n) = self.since_seconds {
            q.append_pair("sinceSeconds", &n.to_string());
        }
        if let Some(t) = self.since_time {
            q.append_pair("sinceTime", &t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        if let Some(n) = self.tail_lines {
            q.append_pair("tailLines", &n.to_string());
        }
        if let Some(n) = self.limit_bytes {
            q.append_pair("limitBytes", &n.to_string());
        }
        q.finish()
    }
}

/// `v1.PodExecOptions` from the query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// `container`.
    pub container: String,
    /// `command` (repeated).
    pub command: Vec<String>,
    /// `stdin`.
    pub stdin: bool,
    /// `stdout`.
    pub stdout: bool,
    /// `stderr`.
    pub stderr: bool,
    /// `tty`.
    pub tty: bool,
}

impl ExecOptions {
    /// Parse the query.
    pub fn parse(q: &[(String, String)]) -> ExecOptions {
        ExecOptions {
            container: first(q, "container").unwrap_or("").to_string(),
            command: q
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: query_bool(q, "stdin"),
            stdout: query_bool(q, "stdout"),
            stderr: query_bool(q, "stderr"),
            tty: query_bool(q, "tty"),
        }
    }

    /// The agent's query, in the contract's spelling
    /// (`command=..&stdin=true&stdout=true&stderr=true&tty=false`).
    pub fn agent_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for c in &self.command {
            q.append_pair("command", c);
        }
        q.append_pair("stdin", bool_str(self.stdin));
        q.append_pair("stdout", bool_str(self.stdout));
        q.append_pair("stderr", bool_str(self.stderr));
        q.append_pair("tty", bool_str(self.tty));
        q.finish()
    }
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// The names of a pod's containers in `VisitContainers` order: init,
/// regular, ephemeral.
fn container_names(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        {
            out.extend(
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string),
            );
        }
    }
    out
}

/// `validateContainer`: the container to use, or a 400.
pub fn validate_container(
    container: &str,
    pod_name: &str,
    pod: &Value,
) -> Result<String, ApiError> {
    if container.is_empty() {
        let apps: Vec<&str> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        return match apps.as_slice() {
            [only] => Ok(only.to_string()),
            [] => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {pod_name}"
            ))),
            _ => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                container_names(pod).join(" ")
            ))),
        };
    }
    if container_names(pod).iter().any(|c| c == container) {
        Ok(container.to_string())
    } else {
        Err(ApiError::BadRequest(format!(
            "container {container} is not valid for pod {pod_name}"
        )))
    }
}

/// Read a stored object (`None`: absent).
async fn load(
    state: &ApiState,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let key =
        object_key(resource, namespace, name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let got = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::from_storage(e, resource, name))?;
    match got {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| ApiError::Internal(format!("decoding {resource} {name:?}: {e}"))),
    }
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: resource.into(),
        name: name.into(),
        kind: resource.into(),
    }
}

async fn get_pod(state: &ApiState, namespace: &str, name: &str) -> Result<Value, ApiError> {
    load(state, "pods", Some(namespace), name)
        .await?
        .ok_or_else(|| not_found("pods", name))
}

/// The address types tried, in order.
pub const PREFERRED_ADDRESS_TYPES: &[&str] = &["InternalIP", "ExternalIP", "Hostname"];

/// `GetConnectionInfo`: the agent's host and port of node `node`.
async fn node_endpoint(state: &ApiState, node: &str) -> Result<(String, u16), Failure> {
    let obj = load(state, "nodes", None, node)
        .await?
        .ok_or_else(|| not_found("nodes", node))?;
    node_address(&obj, node)
}

/// Why a Node object gives no agent endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// None of [`PREFERRED_ADDRESS_TYPES`] in `status.addresses` (upstream's
    /// `NoMatchError`, `%v` of the `[]NodeAddress`).
    #[error("no preferred addresses found; known addresses: [{known}]")]
    NoAddress {
        /// The addresses it has, as `{Type address}`.
        known: String,
    },
    /// No usable `status.daemonEndpoints.kubeletEndpoint.Port`.
    #[error(
        "node {node:?} has no kubelet endpoint port (status.daemonEndpoints.kubeletEndpoint.Port is {port})"
    )]
    NoPort {
        /// The node.
        node: String,
        /// The port found (0 when none).
        port: i64,
    },
}

/// The preferred address (`InternalIP`, `ExternalIP`, `Hostname`) and the
/// kubelet port of Node object `node_obj` (named `node`): where its agent's
/// authenticated server is (`GetConnectionInfo`).
pub fn kubelet_endpoint(node_obj: &Value, node: &str) -> Result<(String, u16), EndpointError> {
    let addresses: Vec<(&str, &str)> = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x.get("type").and_then(Value::as_str).unwrap_or(""),
                        x.get("address").and_then(Value::as_str).unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let host = PREFERRED_ADDRESS_TYPES.iter().find_map(|t| {
        addresses
            .iter()
            .find(|(ty, addr)| ty == t && !addr.is_empty())
            .map(|(_, a)| a.to_string())
    });
    let Some(host) = host else {
        let known: Vec<String> = addresses
            .iter()
            .map(|(t, a)| format!("{{{t} {a}}}"))
            .collect();
        return Err(EndpointError::NoAddress {
            known: known.join(" "),
        });
    };
    // The JSON name is `Port` (DaemonEndpoint's odd tag); `port` accepted too.
    let endpoint = node_obj.pointer("/status/daemonEndpoints/kubeletEndpoint");
    let port = endpoint
        .and_then(|e| e.get("Port").or_else(|| e.get("port")))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(EndpointError::NoPort {
            node: node.to_string(),
            port,
        }),
    }
}

/// The preferred address and kubelet port of a Node object, or the `Status`
/// kube-apiserver answers a proxied request with (reason Unknown).
pub fn node_address(node_obj: &Value, node: &str) -> Result<(String, u16), Failure> {
    kubelet_endpoint(node_obj, node).map_err(|e| unknown(&e.to_string()))
}

/// Read up to [`MAX_ERROR_BODY`] bytes of an agent's error answer.
async fn read_error_body(mut body: Incoming) -> String {
    let mut out = Vec::new();
    while out.len() < MAX_ERROR_BODY {
        match futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading the node agent's error answer");
                break;
            }
            None => break,
        }
    }
    out.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&out).into_owned()
}

/// The pod's container and node endpoint, or the error to answer. `None`
/// as endpoint: the pod has no node.
async fn locate(
    state: &ApiState,
    namespace: &str,
    name: &str,
    container: &str,
) -> Result<(String, Option<(String, u16)>), Failure> {
    let pod = get_pod(state, namespace, name).await?;
    let container = validate_container(container, name, &pod)?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Ok((container, None));
    }
    let endpoint = node_endpoint(state, node).await?;
    Ok((container, Some(endpoint)))
}

impl ApiState {
    /// The client to node agents: the configured one, else an anonymous one
    /// (which agents answer 401).
    pub fn kubelet_client(&self) -> Result<KubeletClient, ClientError> {
        match &self.kubelet {
            Some(c) => Ok(c.clone()),
            None => KubeletClient::anonymous(),
        }
    }
}

fn kubelet_client(state: &ApiState) -> Result<KubeletClient, Failure> {
    state
        .kubelet_client()
        .map_err(|e| ApiError::Internal(e.to_string()).into())
}

async fn logs(state: &ApiState, namespace: &str, name: &str, req: Request) -> Outcome {
    let q = query_pairs(&req);
    let opts = LogOptions::parse(&q)?;
    opts.validate(name)?;
    let (container, endpoint) = locate(state, namespace, name, &opts.container).await?;
    let Some((host, port)) = endpoint else {
        // LogLocation returns no location for an unscheduled pod and
        // kube-apiserver answers 204 No Content.
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let client = kubelet_client(state)?;
    let query = opts.agent_query();
    let mut path = format!("/containerLogs/{namespace}/{name}/{container}");
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let url = format!("https://{}{path}", join_host_port(&host, port));
    let fail = |e: String| unknown(&format!("Get {url:?}: {e}"));
    let tls = client.connect(&host, port).await.map_err(fail)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "node agent log connection ended");
        }
    });
    let upstream = axum::http::Request::get(&path)
        .header(header::HOST, join_host_port(&host, port))
        .header(header::USER_AGENT, "berth-apiserver")
        .body(Body::empty())
        .map_err(|e| fail(e.to_string()))?;
    let resp = match sender.send_request(upstream).await {
        Ok(r) => r,
        Err(e) => {
            conn_task.abort();
            return Err(fail(e.to_string()));
        }
    };
    let code = resp.status();
    // 200..=206 pass, as GenericHttpResponseChecker.
    if !(200..=206).contains(&code.as_u16()) {
        let text = read_error_body(resp.into_body()).await;
        conn_task.abort();
        return Err(agent_error(code, &text, Stream::Log, name));
    }
    tracing::debug!(namespace, pod = name, container, node = %host, follow = opts.follow, "streaming logs");
    let body = UpstreamBody {
        inner: resp.into_body(),
        conn: conn_task.abort_handle(),
    };
    let mut out = Response::new(Body::new(body));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

/// The agent's response body, streamed frame by frame. Dropping it (the
/// client went away, or the stream ended) aborts the connection task, which
/// closes the connection to the agent: a `follow` stream must not outlive
/// its client.
struct UpstreamBody {
    inner: Incoming,
    conn: tokio::task::AbortHandle,
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Whether the request asks for a protocol upgrade (`httpstream.IsUpgradeRequest`:
/// a `Connection` header with the `upgrade` token).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    })
}

/// Whether a client header is forwarded to the agent on exec.
fn forwarded(name: &header::HeaderName) -> bool {
    let n = name.as_str();
    n == "connection"
        || n == "upgrade"
        || n.starts_with("sec-websocket-")
        || n == "x-stream-protocol-version"
}

async fn exec(state: &ApiState, namespace: &str, name: &str, mut req: Request) -> Outcome {
    let q = query_pairs(&req);
    let opts = ExecOptions::parse(&q);
    let (container, endpoint) = locate(state, namespace, name, &opts.container).await?;
    let Some((host, port)) = endpoint else {
        return Err(
            ApiError::BadRequest(format!("pod {name} does not have a host assigned")).into(),
        );
    };
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        )
        .into());
    }
    // No OnUpgrade (e.g. HTTP/2): the connection cannot be taken over.
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let (true, Some(on_upgrade)) = (is_upgrade_request(req.headers()), on_upgrade) else {
        return Err(ApiError::BadRequest("Upgrade request required".into()).into());
    };
    let client = kubelet_client(state)?;
    let path = format!(
        "/exec/{namespace}/{name}/{container}?{}",
        opts.agent_query()
    );
    let fail = |e: String| unknown(&format!("error dialing backend: {e}"));
    let tls = client.connect(&host, port).await.map_err(fail)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| fail(e.to_string()))?;
    // `with_upgrades`: after a 101 the connection task hands the stream
    // (with any bytes it read past the response head) to `upgrade::on`.
    let conn_task = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node agent exec connection ended");
        }
    });
    let method = if req.method() == Method::POST {
        Method::POST
    } else {
        Method::GET
    };
    let mut upstream = axum::http::Request::builder()
        .method(method)
        .uri(&path)
        .header(header::HOST, join_host_port(&host, port))
        .header(header::USER_AGENT, "berth-apiserver");
    for (k, v) in req.headers() {
        if forwarded(k) {
            upstream = upstream.header(k, v);
        }
    }
    let upstream = upstream
        .body(Body::empty())
        .map_err(|e| fail(e.to_string()))?;
    let resp = match sender.send_request(upstream).await {
        Ok(r) => r,
        Err(e) => {
            conn_task.abort();
            return Err(fail(e.to_string()));
        }
    };
    let code = resp.status();
    if code != StatusCode::SWITCHING_PROTOCOLS {
        let text = read_error_body(resp.into_body()).await;
        conn_task.abort();
        if code.as_u16() < 300 {
            return Err(ApiError::Internal(format!(
                "the node agent did not upgrade the connection (HTTP {code}): {text}"
            ))
            .into());
        }
        return Err(agent_error(code, &text, Stream::Exec, name));
    }
    let headers = resp.headers().clone();
    let agent_io = hyper::upgrade::on(resp)
        .await
        .map_err(|e| fail(format!("upgrading the connection to the node agent: {e}")))?;
    tracing::debug!(namespace, pod = name, container, node = %host, "exec: connection upgraded");
    let (session, session_end) = super::audit::session();
    tokio::spawn(async move {
        // Dropped when this task ends: the audit log's ResponseComplete.
        let _session = session;
        let client_io = match on_upgrade.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "exec: client upgrade failed");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let mut agent_io = TokioIo::new(agent_io);
        match tokio::io::copy_bidirectional(&mut client_io, &mut agent_io).await {
            Ok((up, down)) => {
                tracing::debug!(to_agent = up, to_client = down, "exec stream ended")
            }
            Err(e) => tracing::debug!(error = %e, "exec stream ended with an error"),
        }
    });
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    out.extensions_mut().insert(session_end);
    for (k, v) in &headers {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            out.headers_mut().append(k, v.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(s.as_bytes()).into_owned().collect()
    }

    #[test]
    fn log_options() {
        let o = LogOptions::parse(&q(
            "container=c&follow=true&previous=0&timestamps=&tailLines=10&limitBytes=5&sinceTime=2024-01-02T03:04:05%2B01:00",
        ))
        .unwrap();
        assert_eq!(o.container, "c");
        assert!(o.follow && !o.previous && o.timestamps);
        assert_eq!(o.tail_lines, Some(10));
        assert_eq!(
            o.agent_query(),
            "follow=true&timestamps=true&sinceTime=2024-01-02T02%3A04%3A05Z&tailLines=10&limitBytes=5"
        );
        o.validate("p").unwrap();
        let e = LogOptions::parse(&q("tailLines=x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        let bad = LogOptions::parse(&q("tailLines=-1&limitBytes=0&sinceSeconds=0")).unwrap();
        assert_eq!(
            bad.validate("p").unwrap_err().to_string(),
            "PodLogOptions \"p\" is invalid: [tailLines: Invalid value: -1: must be greater than or equal to 0, \
             limitBytes: Invalid value: 0: must be greater than 0, sinceSeconds: Invalid value: 0: must be greater than 0]"
        );
    }

    #[test]
    fn exec_options() {
        let o = ExecOptions::parse(&q("command=sh&command=-c&command=echo+a&stdout=true&tty=1"));
        assert_eq!(o.command, ["sh", "-c", "echo a"]);
        assert_eq!(
            o.agent_query(),
            "command=sh&command=-c&command=echo+a&stdin=false&stdout=true&stderr=false&tty=true"
        );
    }

    #[test]
    fn containers() {
        let pod = json!({"spec": {"initContainers": [{"name": "i"}],
            "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(
            validate_container("", "p", &pod).unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [i a b]"
        );
        assert_eq!(validate_container("i", "p", &pod).unwrap(), "i");
        assert_eq!(
            validate_container("c", "p", &pod).unwrap_err().to_string(),
            "container c is not valid for pod p"
        );
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(validate_container("", "p", &one).unwrap(), "a");
    }

    #[test]
    fn addresses() {
        let node = json!({"status": {"addresses": [
            {"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(
            node_address(&node, "n1").unwrap(),
            ("10.0.0.1".to_string(), 10250)
        );
        let no_port = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert!(node_address(&no_port, "n1").is_err());
        assert!(is_upgrade_request(&{
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("keep-alive, Upgrade"),
            );
            h
        }));
    }
}
