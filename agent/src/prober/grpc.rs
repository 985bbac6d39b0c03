//! gRPC probes: the standard `grpc.health.v1.Health/Check` on the pod IP and
//! the probe's port (upstream's `pkg/probe/grpc`, messages included), plain
//! text HTTP/2.
//!
//! Unlike upstream, which dials anew for every probe, a worker keeps its
//! connection ([`Connection`]) while probes pass: at a probe a second for
//! every container, the HTTP/2 handshake was most of the prober's cost. Any
//! failure drops it, so the next probe dials again and a server that stopped
//! accepting connections is still noticed.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{Outcome, join_host_port};

/// A probe's connection, kept between probes to the same address.
#[derive(Debug, Default)]
pub struct Connection {
    addr: String,
    channel: Option<tonic::transport::Channel>,
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
    let addr = join_host_port(host, port);
    if conn.addr != addr {
        conn.addr.clone_from(&addr);
        conn.channel = None;
    }
    let outcome = check(conn, &addr, service, timeout).await;
    if !matches!(outcome, Outcome::Success(_)) {
        conn.channel = None;
    }
    outcome
}

async fn check(
    conn: &mut Connection,
    addr: &str,
    service: Option<&str>,
    timeout: Duration,
) -> Outcome {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Error(format!("invalid address {addr:?}: {e}")),
    };
    let connect = async {
        match conn.channel.clone() {
            Some(c) => Ok(c),
            None => endpoint.connect().await,
        }
    };
    let channel = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => {
            conn.channel = Some(c.clone());
            c
        }
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {addr:?} within {}: {}",
                go_duration(timeout),
                crate::util::error_chain(&e)
            ));
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
                go_duration(timeout)
            ));
        }
    };
    let request = HealthCheckRequest {
        service: service.unwrap_or_default().to_string(),
    };
    let resp = tokio::time::timeout(timeout, HealthClient::new(channel).check(request)).await;
    match resp {
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        )),
        Ok(Err(status)) => match status.code() {
            tonic::Code::Unimplemented => Outcome::Failure(format!(
                "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                status.message()
            )),
            tonic::Code::DeadlineExceeded => Outcome::Failure(format!(
                "timeout: health rpc did not complete within {}",
                go_duration(timeout)
            )),
            _ => Outcome::Failure(format!(
                "error: health rpc probe failed: {}",
                status.message()
            )),
        },
        Ok(Ok(resp)) => {
            let status = resp.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Outcome::Success("service healthy".into())
            } else {
                let name = ServingStatus::try_from(status)
                    .map(|s| s.as_str_name().to_string())
                    .unwrap_or_else(|_| status.to_string());
                Outcome::Failure(format!("service unhealthy (responded with {name:?})"))
            }
        }
    }
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
            assert!(conn.channel.is_some());
        }
        let unhealthy = serve(Some(ServingStatus::NotServing)).await;
        assert!(matches!(
            probe(&mut conn, "127.0.0.1", unhealthy, None, t).await,
            Outcome::Failure(_)
        ));
        assert!(conn.channel.is_none(), "a failure drops the connection");
    }
}
