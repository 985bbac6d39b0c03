//! gRPC probes: the standard `grpc.health.v1.Health/Check` on the pod IP and
//! the probe's port (upstream's `pkg/probe/grpc`, messages included), plain
//! text HTTP/2.
//!
//! Unlike upstream, which dials anew for every probe, a worker keeps its
//! connection ([`Connection`]) while probes pass: at a probe a second for
//! every container, the HTTP/2 handshake was most of the prober's cost. Any
//! failure drops it, so the next probe dials again and a server that stopped
//! accepting connections is still noticed.
//!
//! The call is made on the `h2` crate directly, with the gRPC framing (a
//! 5-byte prefix around one protobuf message, the status in the trailers)
//! written here: tonic's client put a buffer task, a codec stream and a body
//! pipe task between the probe and the connection, and sent the request's
//! headers and message as two writes (two packets, two wake-ups of the
//! server); here they leave in one.

use std::time::Duration;

use prost::Message;
use tokio_util::bytes::{BufMut, Bytes, BytesMut};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::{Outcome, join_host_port};

/// The method probed.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// gRPC status codes upstream's messages tell apart.
const UNIMPLEMENTED: u32 = 12;
const DEADLINE_EXCEEDED: u32 = 4;
/// A health response is a few bytes; more is not a health server.
const MAX_MESSAGE: usize = 64 * 1024;

/// A probe's connection, kept between probes to the same address.
#[derive(Debug, Default)]
pub struct Connection {
    host: String,
    port: u16,
    addr: String,
    sender: Option<h2::client::SendRequest<Bytes>>,
}

/// Open a plain-text HTTP/2 connection to `addr`; its connection task runs
/// until the connection ends or every handle to it is dropped.
async fn dial(addr: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {}", super::tcp::dial_error(&e)))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Check `service` (empty: the server as a whole) at `host:port`, over
/// `conn` when it is open to that address.
pub async fn probe(
    conn: &mut Connection,
    host: &str,
    port: u16,
    service: Option<&str>,
    timeout: Duration,
) -> Outcome {
    if conn.addr.is_empty() || conn.port != port || conn.host != host {
        conn.host = host.to_string();
        conn.port = port;
        conn.addr = join_host_port(host, port);
        conn.sender = None;
    }
    let outcome = check(conn, service.unwrap_or_default(), timeout).await;
    if !matches!(outcome, Outcome::Success(_)) {
        conn.sender = None;
    }
    outcome
}

/// Why a call did not return a message.
enum CallError {
    /// The server answered with a gRPC status other than OK.
    Status(u32, String),
    /// The connection or the HTTP/2 exchange failed.
    Transport(String),
}

async fn check(conn: &mut Connection, service: &str, timeout: Duration) -> Outcome {
    // Upstream's probe dials within the timeout, then calls within the
    // timeout: a probe may take twice the timeout, and a redial below does
    // not stretch that.
    let budget = tokio::time::Instant::now() + timeout.saturating_mul(2);
    let addr = conn.addr.clone();
    let kept = conn.sender.take();
    let reused = kept.is_some();
    let sender = match kept {
        Some(s) => s,
        None => match dial_within(&addr, timeout).await {
            Ok(s) => s,
            Err(failure) => return failure,
        },
    };
    conn.sender = Some(sender.clone());
    let mut result = tokio::time::timeout(timeout, call(sender, &addr, service, timeout)).await;
    if reused && matches!(result, Ok(Err(CallError::Transport(_)))) {
        // The kept connection died (the server restarted, an idle timeout):
        // upstream dials for every probe, so this is not the server's
        // failure; try once on a new connection.
        conn.sender = None;
        let left = budget.saturating_duration_since(tokio::time::Instant::now());
        let sender = match dial_within(&addr, timeout.min(left)).await {
            Ok(s) => s,
            Err(failure) => return failure,
        };
        conn.sender = Some(sender.clone());
        let left = budget.saturating_duration_since(tokio::time::Instant::now());
        result = tokio::time::timeout(
            timeout.min(left),
            call(sender, &addr, service, timeout.min(left)),
        )
        .await;
    }
    let resp = match result {
        Err(_) | Ok(Err(CallError::Status(DEADLINE_EXCEEDED, _))) => {
            return Outcome::Failure(format!(
                "timeout: health rpc did not complete within {}",
                go_duration(timeout)
            ));
        }
        Ok(Err(CallError::Status(UNIMPLEMENTED, message))) => {
            return Outcome::Failure(format!(
                "this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"
            ));
        }
        Ok(Err(CallError::Status(_, message) | CallError::Transport(message))) => {
            return Outcome::Failure(format!("error: health rpc probe failed: {message}"));
        }
        Ok(Ok(resp)) => resp,
    };
    if resp.status == ServingStatus::Serving as i32 {
        Outcome::Success("service healthy".into())
    } else {
        let name = ServingStatus::try_from(resp.status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| resp.status.to_string());
        Outcome::Failure(format!("service unhealthy (responded with {name:?})"))
    }
}

/// Dial `addr` within `timeout`, or the probe's failure as upstream words it.
async fn dial_within(
    addr: &str,
    timeout: Duration,
) -> Result<h2::client::SendRequest<Bytes>, Outcome> {
    match tokio::time::timeout(timeout, dial(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Outcome::Failure(format!(
            "timeout: failed to connect service {addr:?} within {}: {e}",
            go_duration(timeout),
        ))),
        Err(_) => Err(Outcome::Failure(format!(
            "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
            go_duration(timeout)
        ))),
    }
}

/// One unary `Health/Check` call: the request's headers and message go out
/// in one write; the response's message and trailers are read back.
async fn call(
    sender: h2::client::SendRequest<Bytes>,
    addr: &str,
    service: &str,
    timeout: Duration,
) -> Result<HealthCheckResponse, CallError> {
    let transport = |e: h2::Error| CallError::Transport(e.to_string());
    let mut sender = sender.ready().await.map_err(transport)?;
    let request = hyper::Request::post(format!("http://{addr}{CHECK_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", super::http::USER_AGENT)
        .header("grpc-timeout", format!("{}m", timeout.as_millis()))
        .body(())
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let message = HealthCheckRequest {
        service: service.to_string(),
    };
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut frame)
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let (response, mut stream) = sender.send_request(request, false).map_err(transport)?;
    stream.send_data(frame.freeze(), true).map_err(transport)?;

    let response = response.await.map_err(transport)?;
    let (parts, mut body) = response.into_parts();
    if parts.status != hyper::StatusCode::OK {
        return Err(CallError::Transport(format!(
            "unexpected HTTP status code received from server: {}",
            parts.status.as_u16()
        )));
    }
    // A "trailers-only" answer: the status is in the headers, no body.
    if let Some(status) = grpc_status(&parts.headers) {
        return Err(status);
    }
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(transport)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > MAX_MESSAGE {
            return Err(CallError::Transport(format!(
                "received message larger than max ({} vs. {MAX_MESSAGE})",
                data.len()
            )));
        }
    }
    let trailers = body.trailers().await.map_err(transport)?;
    match trailers.as_ref().and_then(grpc_status) {
        Some(status) => return Err(status),
        None if trailers.is_none() => {
            return Err(CallError::Transport(
                "server closed the stream without sending trailers".into(),
            ));
        }
        None => {}
    }
    if data.len() < 5 || data[0] != 0 {
        return Err(CallError::Transport(
            "the response is not one uncompressed gRPC message".into(),
        ));
    }
    HealthCheckResponse::decode(&data[5..])
        .map_err(|e| CallError::Transport(format!("failed to decode the response: {e}")))
}

/// The gRPC status in `headers`: `None` when OK (or absent), else its code
/// and (percent-decoded) message.
fn grpc_status(headers: &hyper::HeaderMap) -> Option<CallError> {
    let code: u32 = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if code == 0 {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(CallError::Status(code, message))
}

/// `grpc-message` is percent-encoded (the gRPC HTTP/2 protocol).
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole-second duration as Go prints it (`1s`, `10s`).
fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(status: Option<ServingStatus>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (reporter, service) = tonic_health::server::health_reporter();
        match status {
            Some(ServingStatus::Serving) => {
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await
            }
            Some(_) => {
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await
            }
            None => {}
        }
        let router =
            tonic::transport::Server::builder().add_optional_service(status.map(|_| service));
        tokio::spawn(async move { router.serve_with_incoming(incoming).await });
        port
    }

    #[tokio::test]
    async fn serving_passes_others_fail_as_upstream_words_it() {
        let t = Duration::from_secs(1);
        let port = serve(Some(ServingStatus::Serving)).await;
        assert_eq!(
            probe(&mut Connection::default(), "127.0.0.1", port, None, t).await,
            Outcome::Success("service healthy".into())
        );
        let port = serve(Some(ServingStatus::NotServing)).await;
        assert_eq!(
            probe(&mut Connection::default(), "127.0.0.1", port, None, t).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let port = serve(None).await;
        let Outcome::Failure(msg) =
            probe(&mut Connection::default(), "127.0.0.1", port, None, t).await
        else {
            panic!("a server without the health service fails");
        };
        assert!(
            msg.starts_with("this server does not implement the grpc health protocol"),
            "{msg}"
        );
        // Nothing listening.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().port();
        drop(listener);
        let Outcome::Failure(msg) =
            probe(&mut Connection::default(), "127.0.0.1", closed, None, t).await
        else {
            panic!("a closed port fails");
        };
        assert!(
            msg.starts_with(&format!(
                "timeout: failed to connect service \"127.0.0.1:{closed}\" within 1s"
            )),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_passing_connection_is_kept_and_a_failing_one_dropped() {
        let t = Duration::from_secs(1);
        let port = serve(Some(ServingStatus::Serving)).await;
        let mut conn = Connection::default();
        for _ in 0..3 {
            assert_eq!(
                probe(&mut conn, "127.0.0.1", port, None, t).await,
                Outcome::Success("service healthy".into())
            );
            assert!(conn.sender.is_some());
        }
        let unhealthy = serve(Some(ServingStatus::NotServing)).await;
        assert!(matches!(
            probe(&mut conn, "127.0.0.1", unhealthy, None, t).await,
            Outcome::Failure(_)
        ));
        assert!(conn.sender.is_none(), "a failure drops the connection");
    }

    #[tokio::test]
    async fn a_kept_connection_that_died_is_redialed_within_the_probe() {
        let t = Duration::from_secs(1);
        let start = |port: u16| async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let (reporter, service) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let router = tonic::transport::Server::builder().add_service(service);
            let task = tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
            });
            (port, stop, task)
        };
        let (port, stop, first) = start(0).await;
        let mut conn = Connection::default();
        assert_eq!(
            probe(&mut conn, "127.0.0.1", port, None, t).await,
            Outcome::Success("service healthy".into())
        );
        // The server goes away (its connections closed) and comes back on
        // the same port: the kept connection is dead.
        let _ = stop.send(());
        let _ = first.await;
        let (_, _stop, _second) = start(port).await;
        assert_eq!(
            probe(&mut conn, "127.0.0.1", port, None, t).await,
            Outcome::Success("service healthy".into()),
            "a restarted server is not a failed probe"
        );
    }
}
