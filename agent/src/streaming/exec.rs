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
//!   "stream closed" message, which v4 cannot express. So a session with
//!   stdin is bridged to the runtime over **SPDY/3.1** instead (remotecommand
//!   `v4.channel.k8s.io` on [`super::spdy`], as the kubelet's client-go does):
//!   one SPDY stream per channel (error, stdin, stdout, stderr, resize with a
//!   tty), channel 0 → stdin data, `[255, 0]` → FIN on the stdin stream (the
//!   command sees the end of its input: `echo hi | kubectl exec -i … cat`,
//!   `kubectl cp`), channel 4 → the resize stream, stdout/stderr data →
//!   channels 1/2, the error stream's `metav1.Status` → channel 3. A v4 client
//!   never closes stdin; its session ends when the command does, as before.
//!   Sessions without stdin keep the v4 WebSocket to the runtime. When the
//!   runtime is done (after the exit status on channel 3) the client gets a
//!   normal close (1000), which is how kubectl knows the streams ended.
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

use super::{Host, container_status, runtime_id, spdy, text};

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
        // Only SPDY can carry the end of stdin to the runtime.
        Upgrade::WebSocket(protocol) if opts.stdin => {
            websocket_spdy(req, &uri, protocol, opts).await
        }
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

/// Dial the runtime's URL over SPDY/3.1 (`v4.channel.k8s.io`), then upgrade
/// the client's WebSocket and bridge the two. Used for sessions with stdin:
/// only SPDY can tell the runtime that stdin ended (see the module docs).
async fn websocket_spdy(
    req: Request,
    uri: &Uri,
    protocol: &'static str,
    opts: ExecOptions,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let (tcp, leftover) = match tokio::time::timeout(DIAL_TIMEOUT, spdy::dial(uri, V4)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error dialing the runtime's streaming server: {e}"),
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
        .on_upgrade(move |client| spdy_relay(client, tcp, leftover, opts, protocol == V5))
}

/// The remotecommand streams of one session, opened in client-go's order
/// (`streamProtocolV3.createStreams`: error first, resize only with a tty).
struct Streams {
    error: u32,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Streams {
    async fn open(
        writer: &mut spdy::Writer<tokio::net::tcp::OwnedWriteHalf>,
        opts: &ExecOptions,
    ) -> Result<Streams, spdy::Error> {
        let mut open = async |kind: &str, wanted: bool| -> Result<Option<u32>, spdy::Error> {
            if !wanted {
                return Ok(None);
            }
            let headers = vec![("streamtype".to_string(), vec![kind.to_string()])];
            writer.open_stream(headers).await.map(Some)
        };
        let error = open("error", true).await?.unwrap_or_default();
        Ok(Streams {
            error,
            stdin: open("stdin", opts.stdin).await?,
            stdout: open("stdout", opts.stdout).await?,
            stderr: open("stderr", opts.stderr && !opts.tty).await?,
            resize: open("resize", opts.tty).await?,
        })
    }

    fn all(&self) -> Vec<u32> {
        [
            Some(self.error),
            self.stdin,
            self.stdout,
            self.stderr,
            self.resize,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// How a bridged SPDY session ended.
enum SpdyEnd {
    /// The runtime finished (its streams or its connection ended).
    Done,
    /// The WebSocket client went away.
    ClientGone,
    /// The runtime's connection failed.
    Failed(String),
}

/// A `metav1.Status` failure for channel 3, when the runtime's connection
/// ended without an exit status.
fn failure_status(message: &str) -> Vec<u8> {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
    .to_string()
    .into_bytes()
}

/// Bridge the client's WebSocket to the runtime's SPDY connection; then hand
/// the exit status (channel 3) on and close the WebSocket normally, as
/// [`relay`] does.
async fn spdy_relay(
    client: WebSocket,
    tcp: TcpStream,
    leftover: Vec<u8>,
    opts: ExecOptions,
    v5: bool,
) {
    let (read, write) = tcp.into_split();
    let (mut frames, reader) = spdy::spawn_reader(read, leftover);
    let (mut client_tx, mut client_rx) = client.split();
    let mut status = Vec::new();
    let end = match spdy::Writer::new(write) {
        Ok(mut writer) => match Streams::open(&mut writer, &opts).await {
            Ok(streams) => {
                let (queues, writer_task) = spdy::spawn_writer(writer);
                let end = spdy_session(
                    &mut client_tx,
                    &mut client_rx,
                    &mut frames,
                    queues,
                    &streams,
                    v5,
                    &mut status,
                )
                .await;
                // The queues are gone: the writer flushes and shuts down, or
                // is stopped if the runtime no longer reads.
                match tokio::time::timeout(Duration::from_secs(5), writer_task).await {
                    Ok(_) => {}
                    Err(_) => tracing::debug!("SPDY writer did not finish; dropped"),
                }
                end
            }
            Err(e) => SpdyEnd::Failed(e.to_string()),
        },
        Err(e) => SpdyEnd::Failed(e.to_string()),
    };
    reader.abort();
    match end {
        SpdyEnd::ClientGone => return,
        SpdyEnd::Failed(reason) => {
            tracing::debug!(error = %reason, "SPDY exec session failed");
            if status.is_empty() {
                status = failure_status(&format!("error streaming from the runtime: {reason}"));
            }
        }
        SpdyEnd::Done => {
            if status.is_empty() {
                status = failure_status(
                    "the runtime's streaming connection ended without an exit status",
                );
            }
        }
    }
    let mut frame = vec![3u8];
    frame.extend_from_slice(&status);
    let _ = client_tx.send(Message::Binary(frame.into())).await;
    let _ = client_tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = client_tx.close().await;
}

/// The bridge proper: WebSocket channel 0 → the stdin stream (v5's
/// `[255, 0]` → FIN on it), channel 4 → the resize stream; the stdout and
/// stderr streams → channels 1 and 2; the error stream's content (a
/// `metav1.Status`) is collected into `status`. Ends when the runtime has
/// finished its error, stdout and stderr streams, or sent GOAWAY, or closed.
async fn spdy_session(
    client_tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    client_rx: &mut futures::stream::SplitStream<WebSocket>,
    frames: &mut tokio::sync::mpsc::Receiver<Result<spdy::Frame, spdy::Error>>,
    queues: spdy::WriterQueues,
    streams: &Streams,
    v5: bool,
    status: &mut Vec<u8>,
) -> SpdyEnd {
    use spdy::Frame;
    let control = |f: Frame| queues.control.send(f).is_ok();
    let mut send = spdy::SendWindows::default();
    let mut recv = spdy::RecvWindows::default();
    let mut unreplied: std::collections::HashSet<u32> = streams.all().into_iter().collect();
    for id in &unreplied {
        send.open(*id);
    }
    // The runtime's halves still open, of the streams the session waits for.
    let mut remote_open: std::collections::HashSet<u32> =
        [Some(streams.error), streams.stdout, streams.stderr]
            .into_iter()
            .flatten()
            .collect();
    // stdin read from the client and not yet sent (the peer's window is shut),
    // and whether the client closed stdin.
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_closing = false;
    let mut stdin_open = streams.stdin.is_some();
    loop {
        if remote_open.is_empty() {
            return SpdyEnd::Done;
        }
        let stdin_id = streams.stdin.filter(|_| stdin_open);
        // As client-go, data waits for the runtime to accept every stream.
        let read_client = unreplied.is_empty() && pending.is_empty() && !stdin_closing;
        let write_stdin = stdin_id.is_some_and(|id| {
            (!pending.is_empty() && send.available(id) > 0) || (pending.is_empty() && stdin_closing)
        });
        tokio::select! {
            permit = queues.data.reserve(), if write_stdin => {
                let (Ok(permit), Some(id)) = (permit, stdin_id) else {
                    return SpdyEnd::Failed("the connection's writer stopped".into());
                };
                if pending.is_empty() {
                    permit.send(Frame::Data { stream_id: id, flags: spdy::FLAG_FIN, data: Vec::new() });
                    stdin_open = false;
                    stdin_closing = false;
                    tracing::debug!(stream = id, "stdin closed by the client: FIN sent");
                } else {
                    let n = pending.len().min(send.available(id)).min(spdy::MAX_DATA_CHUNK);
                    let data: Vec<u8> = pending.drain(..n).collect();
                    send.consume(id, n);
                    permit.send(Frame::Data { stream_id: id, flags: 0, data });
                }
            }
            msg = client_rx.next(), if read_client => match msg {
                Some(Ok(Message::Binary(data))) => match (data.first().copied(), data.get(1).copied()) {
                    (Some(0), _) if stdin_id.is_some() => pending.extend_from_slice(&data[1..]),
                    (Some(4), _) => {
                        if let Some(id) = streams.resize {
                            let data = data[1..].to_vec();
                            if !control(Frame::Data { stream_id: id, flags: 0, data }) {
                                return SpdyEnd::Failed("the connection's writer stopped".into());
                            }
                        }
                    }
                    (Some(STREAM_CLOSE), Some(0)) if v5 => stdin_closing = stdin_id.is_some(),
                    (Some(STREAM_CLOSE), channel) if v5 => {
                        tracing::debug!(?channel, "client closed a stream other than stdin; ignored");
                    }
                    _ => {}
                },
                // Pings are answered by the WebSocket layer; text is not part
                // of the channel protocols.
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return SpdyEnd::ClientGone,
            },
            frame = frames.recv() => match frame {
                None => return SpdyEnd::Done,
                Some(Err(e)) => return SpdyEnd::Failed(e.to_string()),
                Some(Ok(Frame::SynReply { stream_id, flags, .. })) => {
                    unreplied.remove(&stream_id);
                    if flags & spdy::FLAG_FIN != 0 {
                        remote_open.remove(&stream_id);
                    }
                }
                Some(Ok(Frame::Data { stream_id, flags, data })) => {
                    let channel = if Some(stream_id) == streams.stdout {
                        Some(1u8)
                    } else if Some(stream_id) == streams.stderr {
                        Some(2)
                    } else {
                        None
                    };
                    let n = data.len();
                    if stream_id == streams.error {
                        if status.len() + n > MAX_HEAD {
                            return SpdyEnd::Failed(format!("an exit status over {MAX_HEAD} bytes"));
                        }
                        status.extend_from_slice(&data);
                    } else if let (Some(channel), false) = (channel, data.is_empty()) {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(channel);
                        frame.extend_from_slice(&data);
                        if client_tx.send(Message::Binary(frame.into())).await.is_err() {
                            return SpdyEnd::ClientGone;
                        }
                    }
                    if n > 0 {
                        // Consumed: give the window back.
                        for update in recv.consumed(stream_id, n) {
                            control(update);
                        }
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        remote_open.remove(&stream_id);
                        recv.close(stream_id);
                    }
                }
                Some(Ok(Frame::Headers { stream_id, flags, .. })) => {
                    if flags & spdy::FLAG_FIN != 0 {
                        remote_open.remove(&stream_id);
                    }
                }
                Some(Ok(Frame::RstStream { stream_id, status: code })) => {
                    tracing::debug!(stream = stream_id, code, "runtime reset a stream");
                    remote_open.remove(&stream_id);
                    unreplied.remove(&stream_id);
                    if Some(stream_id) == streams.stdin {
                        stdin_open = false;
                        stdin_closing = false;
                        pending.clear();
                    }
                }
                Some(Ok(Frame::Settings { entries, .. })) => send.on_settings(&entries),
                Some(Ok(Frame::WindowUpdate { stream_id, delta })) => {
                    send.on_window_update(stream_id, delta);
                }
                // The runtime's pings (even ids) are echoed; this client sends none.
                Some(Ok(Frame::Ping { id })) => {
                    if id % 2 == 0 && !control(Frame::Ping { id }) {
                        return SpdyEnd::Failed("the connection's writer stopped".into());
                    }
                }
                Some(Ok(Frame::GoAway { .. })) => return SpdyEnd::Done,
                // No server push here.
                Some(Ok(Frame::SynStream { stream_id, .. })) => {
                    control(Frame::RstStream { stream_id, status: spdy::REFUSED_STREAM });
                }
                Some(Ok(Frame::Unknown { .. })) => {}
            },
        }
    }
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
