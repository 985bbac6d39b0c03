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
