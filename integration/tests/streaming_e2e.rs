//! The agent's authenticated server (the kubelet's `:10250`) against a real
//! containerd: container logs (plain, tail, timestamps, follow until the
//! container exits), exec over WebSocket v5 (output, exit status on channel 3,
//! the normal close), an SPDY/3.1 upgrade passed through to containerd, and
//! `/run`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use berth_integration::{Agent, AgentOptions, Containerd, require_runtime};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

/// A client CA (written for `--client-ca-file`) and the API server's client
/// certificate it signs.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "e2e-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &Issuer::new(ca, &ca_key))?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

/// The API server does not verify the kubelet's serving certificate by default.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

struct Kubelet {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl Kubelet {
    fn new(addr: SocketAddr, pki: &Pki) -> Result<Kubelet> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_client_auth_cert(pki.chain.clone(), pki.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Kubelet {
            addr,
            config: Arc::new(config),
        })
    }

    async fn connect(&self) -> Result<Tls> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        Ok(tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(self.connect().await?)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Empty::<hyper::body::Bytes>::new())?;
        Ok(sender.send_request(req).await?)
    }

    async fn call(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let resp = self.send(method, path).await?;
        let code = resp.status().as_u16();
        let body = tokio::time::timeout(T, resp.into_body().collect())
            .await
            .with_context(|| format!("{method} {path}: the body did not end"))??
            .to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Exec over WebSocket with `protocol`, sending `stdin` (if any) on
    /// channel 0: (stdout, stderr, the status on channel 3, the close code).
    async fn exec_ws(
        &self,
        path: &str,
        protocol: &str,
        stdin: Option<&str>,
    ) -> Result<(String, String, Value, Option<u16>)> {
        let mut req = format!("wss://localhost{path}").into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocol.parse().map_err(|e| anyhow!("{e:?}"))?,
        );
        let (mut ws, resp) = tokio_tungstenite::client_async(req, self.connect().await?)
            .await
            .context("WebSocket handshake")?;
        let proto = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if proto != Some(protocol) {
            bail!("negotiated {proto:?}, want {protocol}");
        }
        if let Some(input) = stdin {
            let mut frame = vec![0u8];
            frame.extend_from_slice(input.as_bytes());
            ws.send(Message::Binary(frame.into())).await?;
        }
        let (mut out, mut err, mut status, mut close) = (Vec::new(), Vec::new(), Vec::new(), None);
        loop {
            let msg = tokio::time::timeout(T, ws.next())
                .await
                .context("exec output")?;
            match msg {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(1) => out.extend_from_slice(&data[1..]),
                    Some(2) => err.extend_from_slice(&data[1..]),
                    Some(3) => status.extend_from_slice(&data[1..]),
                    _ => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("exec stream: {e}"),
                None => break,
            }
        }
        let _ = ws.close(None).await;
        let status: Value = serde_json::from_slice(&status)
            .with_context(|| format!("channel 3: {:?}", String::from_utf8_lossy(&status)))?;
        Ok((
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            status,
            close,
        ))
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: stream
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: IMAGE
      command: ["sh", "-c", "for i in 1 2 3; do echo line $i; done; sleep 0.5; echo oops >&2; exec sleep 3600"]
    - name: counter
      image: IMAGE
      command: ["sh", "-c", "sleep 2; i=1; while [ $i -le 10 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
"#;

fn status_of<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[test]
fn logs_exec_and_run_through_the_authenticated_server() -> Result<()> {
    let Some(_env) = require_runtime("logs_exec_and_run_through_the_authenticated_server") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let pki = pki()?;
    let ca_file = cd.temp_dir().join("client-ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem)?;
    let port = free_port()?;
    let agent = Agent::start_with(AgentOptions::for_containerd(&cd).args([
        "--port".to_string(),
        port.to_string(),
        "--address".to_string(),
        "127.0.0.1".to_string(),
        "--client-ca-file".to_string(),
        ca_file.display().to_string(),
    ]))?;
    agent.write_manifest("stream.yaml", &POD.replace("IMAGE", IMAGE))?;
    let name = agent.static_pod_name("stream");
    agent.poll(T, "main and counter running", || {
        Ok(agent.pod("default", &name)?.filter(|p| {
            ["main", "counter"]
                .iter()
                .all(|c| status_of(p, c).is_some_and(|s| s["state"]["running"].is_object()))
        }))
    })?;

    let rt = tokio::runtime::Runtime::new()?;
    let kubelet = Kubelet::new(SocketAddr::from(([127, 0, 0, 1], port)), &pki)?;
    rt.block_on(async {
        // Follow the counter from its start: every tick, then the end of the
        // body once it exited.
        let follow_path = format!("/containerLogs/default/{name}/counter?follow=true");
        let started = std::time::Instant::now();
        let (code, body) = kubelet.call("GET", &follow_path).await?;
        let ticks: String = (1..=10).map(|i| format!("tick {i}\n")).collect();
        anyhow::ensure!(code == 200 && body == ticks, "follow: {code} {body:?}");
        eprintln!("follow ended {:?} after the request", started.elapsed());

        let logs = format!("/containerLogs/default/{name}/main");
        let want_all = "line 1\nline 2\nline 3\noops\n";
        let (code, body) = kubelet.call("GET", &logs).await?;
        anyhow::ensure!(code == 200 && body == want_all, "logs: {code} {body:?}");
        let (code, body) = kubelet
            .call("GET", &format!("{logs}?tailLines=2&timestamps=true"))
            .await?;
        let lines: Vec<&str> = body.lines().collect();
        anyhow::ensure!(code == 200 && lines.len() == 2, "tail: {code} {body:?}");
        for (line, want) in lines.iter().zip(["line 3", "oops"]) {
            let (ts, text) = line
                .split_once(' ')
                .ok_or_else(|| anyhow!("no timestamp in {line:?}"))?;
            anyhow::ensure!(
                text == want && ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
                "timestamped line {line:?}"
            );
        }
        let (code, body) = kubelet.call("GET", &format!("{logs}?limitBytes=8")).await?;
        anyhow::ensure!(code == 200 && body == "line 1\nl", "limitBytes: {code} {body:?}");
        let (code, body) = kubelet
            .call("GET", &format!("{logs}?previous=true"))
            .await?;
        anyhow::ensure!(
            code == 400
                && body == format!("previous terminated container \"main\" in pod \"{name}\" not found"),
            "previous: {code} {body:?}"
        );

        // Exec over WebSocket v5.
        let exec = format!(
            "/exec/default/{name}/main?command=cat&command=/etc/hostname&stdout=true&stderr=true"
        );
        let (out, err, status, close) = kubelet.exec_ws(&exec, "v5.channel.k8s.io", None).await?;
        anyhow::ensure!(out.trim() == name && err.is_empty(), "exec output {out:?} {err:?}");
        anyhow::ensure!(status["status"] == "Success", "exec status {status}");
        anyhow::ensure!(close == Some(1000), "close code {close:?}");

        let failing = format!(
            "/exec/default/{name}/main?command=sh&command=-c&command=echo%20no%20%3E%262%3B%20exit%203&stdout=true&stderr=true"
        );
        let (out, err, status, _) = kubelet.exec_ws(&failing, "v5.channel.k8s.io", None).await?;
        anyhow::ensure!(out.is_empty() && err == "no\n", "failing exec {out:?} {err:?}");
        anyhow::ensure!(
            status["status"] == "Failure"
                && status["reason"] == "NonZeroExitCode"
                && status["details"]["causes"][0]["reason"] == "ExitCode"
                && status["details"]["causes"][0]["message"] == "3",
            "failing exec status {status}"
        );

        // v4 clients are bridged the same way; stdin reaches the command.
        let reading = format!(
            "/exec/default/{name}/main?command=sh&command=-c&command=read%20x%3B%20echo%20got%20%24x&stdin=true&stdout=true&stderr=true"
        );
        let (out, _, status, close) = kubelet
            .exec_ws(&reading, "v4.channel.k8s.io", Some("hello\n"))
            .await?;
        anyhow::ensure!(out == "got hello\n", "stdin exec output {out:?}");
        anyhow::ensure!(status["status"] == "Success" && close == Some(1000), "stdin exec {status} {close:?}");

        // Exec over SPDY: the upgrade reaches containerd and its 101 comes back.
        let mut tls = kubelet.connect().await?;
        let head = format!(
            "POST /exec/default/{name}/main?command=true&stdout=true HTTP/1.1\r\nHost: localhost\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
             Content-Length: 0\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await?;
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(T, tls.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got).to_lowercase();
        anyhow::ensure!(
            head.starts_with("http/1.1 101")
                && head.contains("upgrade: spdy/3.1")
                && head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "SPDY answer: {head}"
        );
        drop(tls);

        // Not an upgrade.
        let (code, body) = kubelet
            .call("GET", &format!("/exec/default/{name}/main?command=true&stdout=true"))
            .await?;
        anyhow::ensure!(code == 400 && body == "Upgrade request required", "{code} {body}");

        // /run: ExecSync.
        let (code, body) = kubelet
            .call("POST", &format!("/run/default/{name}/main?cmd=echo%20hi"))
            .await?;
        anyhow::ensure!(code == 200 && body == "hi\n", "run: {code} {body:?}");
        let (code, body) = kubelet
            .call("POST", &format!("/run/default/{name}/main?cmd=false"))
            .await?;
        anyhow::ensure!(
            code == 500 && body == "command 'false' exited with 1: ",
            "run false: {code} {body:?}"
        );
        Ok::<_, anyhow::Error>(())
    })
    .map_err(|e| anyhow!("{e:#}\nagent log:\n{}", agent.log_tail(40)))?;
    Ok(())
}

/// Exec over WebSocket v5 sending `frames` as they are (channel byte first),
/// then reading until the close: (stdout, stderr, the status on channel 3,
/// the close code).
async fn exec_ws_frames(
    kubelet: &Kubelet,
    path: &str,
    frames: Vec<Vec<u8>>,
) -> Result<(Vec<u8>, String, Value, Option<u16>)> {
    let mut req = format!("wss://localhost{path}").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
    let (ws, _) = tokio_tungstenite::client_async(req, kubelet.connect().await?)
        .await
        .context("WebSocket handshake")?;
    let (mut tx, mut rx) = ws.split();
    // Written while the output is read, as kubectl does: a command may not
    // read all its input before its output is drained.
    let writer = tokio::spawn(async move {
        for f in frames {
            tx.send(Message::Binary(f.into())).await?;
        }
        Ok::<_, anyhow::Error>(tx)
    });
    let (mut out, mut err, mut status, mut close) = (Vec::new(), Vec::new(), Vec::new(), None);
    loop {
        match tokio::time::timeout(T, rx.next())
            .await
            .context("exec output")?
        {
            Some(Ok(Message::Binary(data))) => match data.first() {
                Some(1) => out.extend_from_slice(&data[1..]),
                Some(2) => err.extend_from_slice(&data[1..]),
                Some(3) => status.extend_from_slice(&data[1..]),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("exec stream: {e}"),
            None => break,
        }
    }
    let _ = writer.await?;
    let status: Value = serde_json::from_slice(&status)
        .with_context(|| format!("channel 3: {:?}", String::from_utf8_lossy(&status)))?;
    Ok((
        out,
        String::from_utf8_lossy(&err).into_owned(),
        status,
        close,
    ))
}

const STDIN_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: stdin
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: IMAGE
      command: ["sleep", "3600"]
"#;

/// v5's "stdin closed" (`[255, 0]`) reaches the command: the agent bridges
/// sessions with stdin to containerd over SPDY/3.1, whose FIN ends stdin.
#[test]
fn exec_stdin_close_reaches_the_command() -> Result<()> {
    let Some(_env) = require_runtime("exec_stdin_close_reaches_the_command") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let pki = pki()?;
    let ca_file = cd.temp_dir().join("client-ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem)?;
    let port = free_port()?;
    let agent = Agent::start_with(AgentOptions::for_containerd(&cd).args([
        "--port".to_string(),
        port.to_string(),
        "--address".to_string(),
        "127.0.0.1".to_string(),
        "--client-ca-file".to_string(),
        ca_file.display().to_string(),
    ]))?;
    agent.write_manifest("stdin.yaml", &STDIN_POD.replace("IMAGE", IMAGE))?;
    let name = agent.static_pod_name("stdin");
    agent.poll(T, "main running", || {
        Ok(agent
            .pod("default", &name)?
            .filter(|p| status_of(p, "main").is_some_and(|s| s["state"]["running"].is_object())))
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let kubelet = Kubelet::new(SocketAddr::from(([127, 0, 0, 1], port)), &pki)?;
    rt.block_on(async {
        // cat ends when stdin does.
        let cat = format!("/exec/default/{name}/main?command=cat&stdin=true&stdout=true&stderr=true");
        let started = std::time::Instant::now();
        let frames = vec![b"\x00hello\n".to_vec(), vec![255, 0]];
        let (out, err, status, close) = tokio::time::timeout(
            Duration::from_secs(10),
            exec_ws_frames(&kubelet, &cat, frames),
        )
        .await
        .context("cat did not end after stdin closed")??;
        let took = started.elapsed();
        anyhow::ensure!(out == b"hello\n" && err.is_empty(), "cat: {:?} {err:?}", String::from_utf8_lossy(&out));
        anyhow::ensure!(status["status"] == "Success", "cat status {status}");
        anyhow::ensure!(close == Some(1000), "cat close {close:?}");
        anyhow::ensure!(took < Duration::from_secs(5), "cat took {took:?}");
        eprintln!("cat with stdin closed: {took:?}");

        // 100 KiB of stdin: more than the 64 KiB initial SPDY window.
        let count = format!(
            "/exec/default/{name}/main?command=sh&command=-c&command=cat%20%3E%20%2Ftmp%2Fx%3B%20wc%20-c%20%3C%20%2Ftmp%2Fx&stdin=true&stdout=true&stderr=true"
        );
        let mut frames: Vec<Vec<u8>> = (0..25)
            .map(|i| {
                let mut f = vec![0u8];
                f.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 4096));
                f
            })
            .collect();
        frames.push(vec![255, 0]);
        let started = std::time::Instant::now();
        let (out, err, status, close) = tokio::time::timeout(
            Duration::from_secs(20),
            exec_ws_frames(&kubelet, &count, frames),
        )
        .await
        .context("wc did not end after 100 KiB of stdin")??;
        let out = String::from_utf8_lossy(&out).into_owned();
        anyhow::ensure!(out.trim() == "102400" && err.is_empty(), "wc: {out:?} {err:?}");
        anyhow::ensure!(status["status"] == "Success" && close == Some(1000), "wc: {status} {close:?}");
        eprintln!("100 KiB through stdin: {:?}", started.elapsed());

        // 1 MiB through cat both ways at once: stdin is written while stdout
        // is read (neither direction may wait for the other).
        let input: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut frames: Vec<Vec<u8>> = input
            .chunks(32 * 1024)
            .map(|c| {
                let mut f = vec![0u8];
                f.extend_from_slice(c);
                f
            })
            .collect();
        frames.push(vec![255, 0]);
        let started = std::time::Instant::now();
        let (out, _, status, close) = tokio::time::timeout(
            Duration::from_secs(30),
            exec_ws_frames(&kubelet, &cat, frames),
        )
        .await
        .context("cat of 1 MiB did not end")??;
        anyhow::ensure!(
            out == input && status["status"] == "Success" && close == Some(1000),
            "cat of 1 MiB: {} bytes back, {status} {close:?}",
            out.len()
        );
        eprintln!("1 MiB through cat: {:?}", started.elapsed());

        // A tty: the resize (channel 4) reaches the terminal. The runtime
        // applies it asynchronously (as for the kubelet), so the command
        // looks a few times.
        let tty = format!(
            "/exec/default/{name}/main?command=sh&command=-c&command=read%20x%3B%20for%20i%20in%201%202%203%204%205%206%207%208%209%2010%3B%20do%20s%3D%24%28stty%20size%202%3E%2Fdev%2Fnull%29%3B%20%5B%20%22%24s%22%20%3D%20%2240%20100%22%20%5D%20%26%26%20break%3B%20sleep%200.2%3B%20done%3B%20echo%20%22size%20%24s%22&stdin=true&stdout=true&tty=true"
        );
        let frames = vec![
            b"\x04{\"Width\":100,\"Height\":40}".to_vec(),
            b"\x00go\n".to_vec(),
        ];
        let (out, _, status, close) = tokio::time::timeout(
            Duration::from_secs(10),
            exec_ws_frames(&kubelet, &tty, frames),
        )
        .await
        .context("the tty session did not end")??;
        let out = String::from_utf8_lossy(&out).into_owned();
        anyhow::ensure!(
            out.contains("size 40 100") && status["status"] == "Success" && close == Some(1000),
            "tty: {out:?} {status} {close:?}"
        );

        // A failing command still reports its exit code.
        let failing = format!(
            "/exec/default/{name}/main?command=sh&command=-c&command=cat%3B%20exit%207&stdin=true&stdout=true"
        );
        let (out, _, status, close) =
            exec_ws_frames(&kubelet, &failing, vec![b"\x00x".to_vec(), vec![255, 0]]).await?;
        anyhow::ensure!(
            out == b"x"
                && status["reason"] == "NonZeroExitCode"
                && status["details"]["causes"][0]["message"] == "7"
                && close == Some(1000),
            "exit 7: {status} {close:?}"
        );
        Ok::<_, anyhow::Error>(())
    })
    .map_err(|e| anyhow!("{e:#}\nagent log:\n{}", agent.log_tail(40)))?;
    Ok(())
}
