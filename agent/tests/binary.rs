//! The `berth-agent` binary against the fake CRI server: systemd readiness
//! over a NOTIFY_SOCKET this test listens on, and `/healthz` explaining an
//! unreachable runtime.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_cri::fake::FakeRuntime;
use berth_test_support::free_port;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(
    endpoint: &str,
    dir: &std::path::Path,
    port: u16,
    notify: Option<&std::path::Path>,
) -> Agent {
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-agent"));
    cmd.args(["--container-runtime-endpoint", endpoint])
        .arg("--pod-manifest-path")
        .arg(dir.join("manifests"))
        .arg("--root-dir")
        .arg(dir.join("root"))
        .arg("--pod-logs-dir")
        .arg(dir.join("logs"))
        .args(["--node-name", "node-a", "--status-address"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match notify {
        Some(path) => cmd.env("NOTIFY_SOCKET", path),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    Agent(cmd.spawn().expect("berth-agent starts"))
}

/// GET `path`, returning status code and body (None while nothing listens).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_ready_once_runtime_reached_and_manifests_loaded() {
    let fake = FakeRuntime::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let _agent = start_agent(&fake.endpoint(), dir.path(), port, Some(&sock_path));

    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        let n =
            tokio::task::block_in_place(|| sock.recv(&mut buf)).expect("a notify message arrives");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let ready = msg.lines().any(|l| l == "READY=1");
        messages.push(msg);
        if ready {
            break;
        }
    }
    assert!(
        messages.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1 among {messages:?}"
    );
    // Ready means the runtime was reached: Version was called before.
    assert!(fake.call_count("Version") >= 1);
    let (code, body) = get(port, "/healthz").expect("status server answers");
    assert_eq!((code, body.trim()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_names_a_missing_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/absent.sock", dir.path().display());
    let port = free_port();
    let _agent = start_agent(&endpoint, dir.path(), port, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = get(port, "/healthz");
        if let Some((503, body)) = &last
            && body.contains("no such file — is containerd running?")
        {
            assert!(body.contains(&endpoint), "{body}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/healthz never explained the missing runtime; last answer {last:?}");
}

/// An API server that is not there: the log names the URL the agent tried
/// and the cause, not only kube's "client error (Connect)" (a kubeconfig
/// pointing at the wrong port left a newcomer with nothing else to go on).
#[tokio::test(flavor = "multi_thread")]
async fn log_names_an_unreachable_api_server() {
    let fake = FakeRuntime::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = format!("https://127.0.0.1:{}", free_port());
    let kubeconfig = dir.path().join("node.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    let log = dir.path().join("agent.log");
    let child = Command::new(env!("CARGO_BIN_EXE_berth-agent"))
        .args(["--container-runtime-endpoint", &fake.endpoint()])
        .arg("--pod-manifest-path")
        .arg(dir.path().join("manifests"))
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--pod-logs-dir")
        .arg(dir.path().join("logs"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", "node-a", "--port", "0", "--status-address"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("berth-agent starts");
    let _agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("lease renewal failed") || l.contains("node status update failed"))
        {
            assert!(
                line.contains(&server),
                "the failure does not name {server}: {line}"
            );
            assert!(
                line.to_lowercase().contains("connection refused"),
                "the failure does not say why: {line}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no failed API call in the agent's log within 20 s:\n{text}");
}
