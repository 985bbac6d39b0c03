//! TCP probes: a connection that opens within the timeout passes (it is closed
//! at once, as upstream's). Also the probes' way to connect ([`connect`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

use super::{Outcome, join_host_port};

/// Connect to `host:port` within `timeout`. Failures read as Go's dialer
/// words them (`dial tcp 10.88.0.5:80: connect: connection refused`).
pub async fn probe(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    let deadline = Instant::now() + timeout;
    match tokio::time::timeout(timeout, connect(&addr, Some(deadline))).await {
        Ok(Ok(_stream)) => Outcome::Success(String::new()),
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {}", dial_error(&e))),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// The least time an address gets when a name resolves to several and the
/// deadline is shared among them (Go's dialer: `saneMinimum`).
const SANE_MINIMUM: Duration = Duration::from_secs(2);

/// Connect to `addr` (`host:port`): a connected, non-blocking socket.
///
/// A name that resolves to several addresses (`localhost`: `::1` and
/// `127.0.0.1`) is tried address by address until one connects, as Go's
/// dialer does, each getting its share of the time left before `deadline`
/// (at least [`SANE_MINIMUM`] of it); if none connects the first error is
/// returned.
pub(crate) async fn connect(
    addr: &str,
    deadline: Option<Instant>,
) -> std::io::Result<std::net::TcpStream> {
    if let Ok(target) = addr.parse::<SocketAddr>() {
        return connect_one(target).await;
    }
    let targets: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    connect_any(&targets, deadline).await
}

/// Connect to the first of `targets` that answers (see [`connect`]).
async fn connect_any(
    targets: &[SocketAddr],
    deadline: Option<Instant>,
) -> std::io::Result<std::net::TcpStream> {
    let mut first_error = None;
    for (i, &target) in targets.iter().enumerate() {
        let attempt = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let remaining = u32::try_from(targets.len() - i).unwrap_or(u32::MAX);
                let share = (left / remaining).max(SANE_MINIMUM.min(left));
                match tokio::time::timeout(share, connect_one(target)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "i/o timeout",
                    )),
                }
            }
            None => connect_one(target).await,
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")))
}

/// Connect to one address.
///
/// To a pod on this node the kernel runs the whole handshake inside
/// `connect()` (the veth hands the SYN to the pod's stack in this thread, and
/// the answer comes back the same way), so the socket is usually connected
/// when `connect()` returns "in progress": it is checked before waiting on
/// the event loop, which saves registering it, a wake-up and deregistering it
/// (a tcpSocket probe then never touches the event loop).
async fn connect_one(target: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&target.into()) {
        Ok(()) => return Ok(socket.into()),
        Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
        Err(e) => return Err(e),
    }
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    if socket.peer_addr().is_ok() {
        return Ok(socket.into());
    }
    // Still connecting (a remote host, a slow peer): wait on the event loop.
    let stream = tokio::net::TcpStream::from_std(socket.into())?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    stream.peer_addr()?;
    stream.into_std()
}

/// EINPROGRESS, the answer of a non-blocking `connect()` still under way.
fn libc_einprogress() -> i32 {
    nix::errno::Errno::EINPROGRESS as i32
}

/// An I/O error as Go's `net` package prints it.
pub(crate) fn dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::HostUnreachable => "connect: no route to host".into(),
        std::io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => format!("connect: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_port_passes_closed_port_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            probe("127.0.0.1", port, Duration::from_secs(1)).await,
            Outcome::Success(String::new())
        );
        drop(listener);
        assert_eq!(
            probe("127.0.0.1", port, Duration::from_secs(1)).await,
            Outcome::Failure(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    /// A name with several addresses: each is tried until one connects; one
    /// that does not answer gets its share of the deadline, not all of it;
    /// when none connects, the first error is the answer.
    #[tokio::test]
    async fn every_address_of_a_name_is_tried_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let deadline = || Some(Instant::now() + Duration::from_secs(5));
        let stream = connect_any(&[closed, open], deadline()).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        // TEST-NET-1 (nothing answers, or no route): the next address still
        // gets its turn within the deadline.
        let silent: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let started = Instant::now();
        let stream = connect_any(&[silent, open], deadline()).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        drop(listener);
        let e = connect_any(&[closed, open], deadline()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let e = connect_any(&[], deadline()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_host_name_resolves_and_a_silent_peer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            probe("localhost", port, Duration::from_secs(1)).await,
            Outcome::Success(String::new())
        );
        // TEST-NET-1: nothing answers, so connect() stays in progress and the
        // probe waits on the event loop until its timeout (or, on a host with
        // no route there, fails at once).
        let Outcome::Failure(msg) = probe("192.0.2.1", 9, Duration::from_millis(300)).await else {
            panic!("nothing answers at 192.0.2.1");
        };
        assert!(
            msg == "dial tcp 192.0.2.1:9: i/o timeout"
                || msg.starts_with("dial tcp 192.0.2.1:9: connect: "),
            "{msg}"
        );
    }
}
