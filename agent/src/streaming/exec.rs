//! `/exec/{namespace}/{pod}/{container}` and `POST /run/{namespace}/{pod}/{container}`.
//!
//! Exec asks the runtime for a streaming URL (CRI `Exec`) and connects the
//! client to it:
//!
//! - **WebSocket** (`Sec-WebSocket-Protocol` `v5.channel.k8s.io`, preferred, or
//!   `v4.channel.k8s.io`): terminated here and bridged frame by frame to the
//!   runtime's URL, dialled as `v4.channel.k8s.io` (containerd's streaming
//!   server speaks v1–v4 and SPDY). Both protocols frame data the same way:
//!   one leading byte naming the channel (0 stdin, 1 stdout, 2 stderr, 3 error:
//!   a JSON `metav1.Status`, 4 resize). v5 adds the client's `[255, channel]`
//!   "stream closed" message, which v4 cannot express: it is dropped, so a
//!   command reading stdin to its end does not see the end (a limit of
//!   bridging to a v4-only runtime; the kubelet instead translates v5 to SPDY,
//!   which can half-close). When the runtime closes (after the exit status on
//!   channel 3) the client gets a normal close (1000), which is how kubectl
//!   knows the streams ended.
//! - **SPDY/3.1** (`Upgrade: SPDY/3.1`, older kubectl): the upgrade request is
//!   replayed to the runtime's URL and the two connections are joined byte for
//!   byte after the runtime's 101, which the client gets as is.
//! - Not an upgrade: 400 `Upgrade request required`.
//!
//! `/run` (`?cmd=a b c`, split on spaces as the kubelet does) runs CRI
//! `ExecSync` and answers stdout then stderr; a failure or a non-zero exit is a
//! 500 with the kubelet's text (`command 'false' exited with 1: `).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use berth_cri::api;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Host, container_status, runtime_id, text};

/// The WebSocket subprotocols served, preferred first.
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// v5's client message meaning "this stream is closed": `[255, channel]`.
pub const STREAM_CLOSE: u8 = 255;
/// How long dialling the runtime's streaming server may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a runtime's response head may take.
const MAX_HEAD: usize = 64 * 1024;

/// What an exec request asks for (the kubelet's `remotecommand.Options`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Parse the query of an exec request. Both spellings are read: the
/// API's `stdin`/`stdout`/`stderr`/`tty` and the kubelet's
/// `input`/`output`/`error`/`tty`, each `1` or `true`. A tty has no separate
/// stderr (CRI rule), so `tty` drops `stderr`.
pub fn parse_exec_options(query: &str) -> Result<ExecOptions, String> {
    let mut o = ExecOptions::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let on = v == "1" || v.eq_ignore_ascii_case("true");
        match k.as_ref() {
            "command" => o.command.push(v.into_owned()),
            "stdin" | "input" => o.stdin = on,
            "stdout" | "output" => o.stdout = on,
            "stderr" | "error" => o.stderr = on,
            "tty" => o.tty = on,
            _ => {}
        }
    }
    if o.tty {
        o.stderr = false;
    }
    if !o.stdin && !o.stdout && !o.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".to_string());
    }
    Ok(o)
}

/// The kind of upgrade a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// WebSocket with the chosen subprotocol.
    WebSocket(&'static str),
    /// A WebSocket none of whose subprotocols is served (the list it asked for).
    WebSocketUnsupported(String),
    Spdy,
    None,
}

/// Classify a request's upgrade headers.
pub fn upgrade_of(headers: &HeaderMap) -> Upgrade {
    let upgrade = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|v| !v.is_empty());
    match upgrade {
        Some(u) if u.eq_ignore_ascii_case("websocket") => {
            let asked: Vec<&str> = headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            for p in [V5, V4] {
                if asked.contains(&p) {
                    return Upgrade::WebSocket(p);
                }
            }
            Upgrade::WebSocketUnsupported(asked.join(","))
        }
        Some(u) if u.len() >= 5 && u[..5].eq_ignore_ascii_case("spdy/") => Upgrade::Spdy,
        _ => Upgrade::None,
    }
}

/// The runtime ID of the running container `name` in `pod` (the kubelet's
/// `findContainer` over running containers).
fn running_container(pod: &Pod, name: &str) -> Option<String> {
    let status = container_status(pod, name)?;
    let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
    let id = status.container_id.as_deref().filter(|id| !id.is_empty())?;
    running.then(|| runtime_id(id).to_string())
}

/// A CRI error as the kubelet's `streaming.WriteError` answers it.
fn cri_error(e: &berth_cri::Error) -> Response {
    let code = if e.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    text(code, e.to_string())
}

/// The exec handler.
pub async fn exec(
    State(host): State<Arc<Host>>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let opts = match parse_exec_options(query.as_deref().unwrap_or("")) {
        Ok(o) => o,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let Some(pod) = host.pod(&namespace, &pod_name) else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    // Checked before the runtime hands out a single-use URL for nothing.
    let upgrade = upgrade_of(req.headers());
    match &upgrade {
        Upgrade::None => return text(StatusCode::BAD_REQUEST, "Upgrade request required"),
        Upgrade::WebSocketUnsupported(asked) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("requested protocol(s) are not supported: [{asked}]; supports [{V5} {V4}]"),
            );
        }
        Upgrade::WebSocket(_) | Upgrade::Spdy => {}
    }
    let Some(container_id) = running_container(&pod, &container) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container not found ({container:?})"),
        );
    };
    let resp = host
        .runtime
        .exec(api::ExecRequest {
            container_id: container_id.clone(),
            cmd: opts.command.clone(),
            tty: opts.tty,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        })
        .await;
    let url = match resp {
        Ok(r) => r.url,
        Err(e) => return cri_error(&e),
    };
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's streaming URL {url:?} is not valid: {e}"),
            );
        }
    };
    tracing::info!(pod = %format!("{namespace}/{pod_name}"), %container, container_id = %container_id, command = ?opts.command, upgrade = ?upgrade, "exec");
    match upgrade {
        Upgrade::WebSocket(protocol) => websocket(req, &uri, protocol).await,
        _ => spdy(req, &uri).await,
    }
}

/// Dial the runtime's URL as a v4 WebSocket, then upgrade the client and
/// relay between the two.
async fn websocket(req: Request, uri: &Uri, protocol: &'static str) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let ws_url = match uri.scheme_str() {
        Some("http") => uri.to_string().replacen("http://", "ws://", 1),
        Some("https") => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's streaming URL {uri} uses TLS, which berth does not dial"),
            );
        }
        _ => uri.to_string(),
    };
    let mut request = match ws_url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's streaming URL {uri}: {e}"),
            );
        }
    };
    request
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(V4));
    let upstream =
        match tokio::time::timeout(DIAL_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("error dialing the runtime's streaming server {uri}: {e}"),
                );
            }
            Err(_) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("timed out dialing the runtime's streaming server {uri}"),
                );
            }
        };
    upgrade
        .protocols([protocol])
        .on_upgrade(move |client| relay(client, upstream, protocol == V5))
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Copy frames both ways until one side closes; the client then gets a
/// normal close.
async fn relay(client: WebSocket, upstream: Upstream, v5: bool) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            msg = client_rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if v5 && data.first() == Some(&STREAM_CLOSE) {
                        // v4 has no way to say it: see the module docs.
                        tracing::debug!(channel = ?data.get(1), "client closed a stream; not expressible in v4, dropped");
                        continue;
                    }
                    if up_tx.send(tungstenite::Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(data))) => {
                    let t = tungstenite::Message::Text(data.as_str().into());
                    if up_tx.send(t).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                    return;
                }
            },
            msg = up_rx.next() => match msg {
                Some(Ok(tungstenite::Message::Binary(data))) => {
                    if client_tx.send(Message::Binary(data)).await.is_err() {
                        let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                        return;
                    }
                }
                Some(Ok(tungstenite::Message::Text(data))) => {
                    if client_tx.send(Message::Text(data.as_str().into())).await.is_err() {
                        let _ = up_tx.send(tungstenite::Message::Close(None)).await;
                        return;
                    }
                }
                Some(Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) | tungstenite::Message::Frame(_))) => {}
                Some(Ok(tungstenite::Message::Close(_))) | Some(Err(_)) | None => break,
            },
        }
    }
    // The runtime is done (the exit status went out on channel 3).
    let _ = client_tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = client_tx.close().await;
}

/// The request headers that make an SPDY upgrade, replayed to the runtime.
fn spdy_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let names = [
        header::CONNECTION,
        header::UPGRADE,
        HeaderName::from_static("x-stream-protocol-version"),
    ];
    names
        .iter()
        .flat_map(|n| {
            headers
                .get_all(n)
                .iter()
                .map(move |v| (n.clone(), v.clone()))
        })
        .collect()
}

/// Replay the upgrade to the runtime, answer with its response head, then join
/// the two connections.
async fn spdy(mut req: Request, uri: &Uri) -> Response {
    let fail = |msg: String| text(StatusCode::INTERNAL_SERVER_ERROR, msg);
    if uri.scheme_str() != Some("http") {
        return fail(format!(
            "the runtime's streaming URL {uri} is not plain http, which berth does not dial"
        ));
    }
    let Some(host) = uri.host() else {
        return fail(format!("the runtime's streaming URL {uri} has no host"));
    };
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let dial = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((host, port))).await;
    let mut upstream = match dial {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return fail(format!(
                "error dialing the runtime's streaming server {uri}: {e}"
            ));
        }
        Err(_) => {
            return fail(format!(
                "timed out dialing the runtime's streaming server {uri}"
            ));
        }
    };
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\n",
        req.method(),
        uri.authority().map(|a| a.as_str()).unwrap_or(host)
    )
    .into_bytes();
    for (name, value) in spdy_headers(req.headers()) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    if let Err(e) = upstream.write_all(&head).await {
        return fail(format!("error sending the upgrade to {uri}: {e}"));
    }

    // Read the response head; bytes after it already belong to the stream.
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let (code, headers, head_len) = loop {
        let mut chunk = [0u8; 4096];
        let n = match upstream.read(&mut chunk).await {
            Ok(0) => {
                return fail(format!(
                    "the runtime's streaming server {uri} closed the connection before answering"
                ));
            }
            Ok(n) => n,
            Err(e) => {
                return fail(format!(
                    "error reading the runtime's answer from {uri}: {e}"
                ));
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut parsed);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(502);
                let headers: Vec<(String, Vec<u8>)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.to_vec()))
                    .collect();
                break (code, headers, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return fail(format!(
                    "the runtime's answer from {uri} has a head over {MAX_HEAD} bytes"
                ));
            }
            Err(e) => return fail(format!("the runtime's answer from {uri} is not HTTP: {e}")),
        }
    };
    let leftover = buf.split_off(head_len);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = Response::builder().status(status);
    for (name, value) in &headers {
        // Framing of a non-101 answer is redone by our server.
        if status != StatusCode::SWITCHING_PROTOCOLS
            && (name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_slice());
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // An error (an expired URL, say): pass its body on, bounded.
        let mut body = leftover;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 4096];
            while body.len() < MAX_HEAD {
                match upstream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        return builder
            .body(Body::from(body))
            .unwrap_or_else(|e| fail(format!("relaying the runtime's answer: {e}")));
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return fail("the connection cannot be upgraded".to_string());
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
            return;
        }
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((to_runtime, to_client)) => {
                tracing::debug!(to_runtime, to_client, "SPDY exec stream ended");
            }
            Err(e) => tracing::debug!(error = %e, "SPDY exec stream ended with an error"),
        }
    });
    builder
        .body(Body::empty())
        .unwrap_or_else(|e| fail(format!("relaying the runtime's answer: {e}")))
}

/// The `/run` handler.
pub async fn run(
    State(host): State<Arc<Host>>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(pod) = host.pod(&namespace, &pod_name) else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    let cmd_text = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "cmd")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let cmd: Vec<String> = cmd_text.split(' ').map(str::to_string).collect();
    let Some(container_id) = running_container(&pod, &container) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container not found ({container:?})"),
        );
    };
    let resp = host
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id,
            cmd: cmd.clone(),
            timeout: 0,
        })
        .await;
    match resp {
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Ok(r) if r.exit_code != 0 => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "command '{}' exited with {}: {}",
                cmd.join(" "),
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            ),
        ),
        Ok(r) => {
            let mut body = r.stdout;
            body.extend_from_slice(&r.stderr);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_both_spellings() {
        let o = parse_exec_options("command=cat&command=%2Fetc%2Fhostname&stdout=true&stderr=1")
            .unwrap();
        assert_eq!(o.command, vec!["cat", "/etc/hostname"]);
        assert!(o.stdout && o.stderr && !o.stdin && !o.tty);
        let o = parse_exec_options("command=sh&input=1&output=1&error=1&tty=1").unwrap();
        assert!(o.stdin && o.stdout && o.tty);
        assert!(!o.stderr, "a tty has no stderr");
        assert_eq!(
            parse_exec_options("command=ls").unwrap_err(),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
    }

    #[test]
    fn upgrades() {
        let mut h = HeaderMap::new();
        assert_eq!(upgrade_of(&h), Upgrade::None);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(upgrade_of(&h), Upgrade::WebSocket(V5));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        assert!(matches!(upgrade_of(&h), Upgrade::WebSocketUnsupported(_)));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert_eq!(upgrade_of(&h), Upgrade::Spdy);
    }
}
