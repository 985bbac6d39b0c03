//! The authenticated server (`:10250`) over real TLS, against the fake CRI:
//! client-certificate authentication and authorization, `/containerLogs` on
//! log files the test writes (tail, limitBytes, timestamps, since, previous,
//! follow until the container exits), and the error answers of exec and run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use berth_agent::server::NodeView;
use berth_agent::source::ManifestError;
use berth_agent::streaming::{self, Host, tls};
use berth_cri::api;
use berth_cri::fake::{ExecResult, FakeRuntime};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "localhost/berth/busybox:1.36";

/// The pods the server sees, with statuses the test sets.
struct View {
    pods: Mutex<Vec<Pod>>,
}

impl NodeView for View {
    fn pods(&self) -> Vec<Pod> {
        self.pods.lock().unwrap().clone()
    }
    fn manifest_errors(&self) -> Vec<ManifestError> {
        Vec::new()
    }
    fn pod_warnings(&self) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    fn runtime_info(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn node_name(&self) -> String {
        "node-a".into()
    }
}

/// A CA and certificates it signs for clients.
struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test-client-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        Pki {
            ca_der: ca.der().clone(),
            ca_params,
            ca_key,
        }
    }

    /// A client certificate with `CN=cn` and one `O=` per group.
    fn client(&self, cn: &str, groups: &[&str]) -> Client {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::new(self.ca_params.clone(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Client {
            cert: Some((
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )),
        }
    }
}

/// Accepts any server certificate, as the API server dials kubelets by default.
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client authenticates.
struct Client {
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Client {
    fn anonymous() -> Client {
        Client { cert: None }
    }

    async fn send(
        &self,
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
    ) -> hyper::Response<hyper::body::Incoming> {
        self.try_send(addr, method, path).await.unwrap()
    }

    async fn try_send(
        &self,
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
        let mut config = match &self.cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    /// Status and whole body.
    async fn call(&self, addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        let resp = self.send(addr, method, path).await;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("the body ends")
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        self.call(addr, "GET", path).await
    }
}

struct Env {
    fake: FakeRuntime,
    _dir: tempfile::TempDir,
    logs: PathBuf,
    pki: Pki,
    addr: std::net::SocketAddr,
    view: Arc<View>,
    cancel: CancellationToken,
    sandbox: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The sandbox config of the pod `default/web` (uid `uid-1`).
fn sandbox_config(log_dir: &std::path::Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    }
}

impl Env {
    async fn new() -> Env {
        let fake = FakeRuntime::start().await;
        fake.add_image(IMAGE);
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("pods").join("default_web_uid-1");
        std::fs::create_dir_all(&logs).unwrap();
        let client = fake.client().await;
        let sandbox = client
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(sandbox_config(&logs)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .pod_sandbox_id;

        let pki = Pki::new();
        let (cert, key) =
            tls::ensure_serving_cert(None, None, dir.path(), "node-a", "127.0.0.1").unwrap();
        let config = tls::server_config(&cert, &key, vec![pki.ca_der.clone()]).unwrap();
        let view = Arc::new(View {
            pods: Mutex::new(Vec::new()),
        });
        // A fixed summary: what the routes serve, not how it is measured.
        let stats: berth_agent::server::SummarySource = Arc::new(|| {
            Box::pin(async {
                let mut s = berth_agent::stats::Summary::default();
                s.node.node_name = "node-a".into();
                Ok(s)
            })
        });
        let host = Arc::new(Host {
            view: view.clone(),
            runtime: client,
            stats: Some(stats),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(streaming::serve(
            listener,
            streaming::router(host),
            config,
            cancel.clone(),
        ));
        Env {
            fake,
            _dir: dir,
            logs,
            pki,
            addr,
            view,
            cancel,
            sandbox,
        }
    }

    /// Create and start container `name` (attempt `attempt`) in the sandbox,
    /// and write `log` as its CRI log file; its runtime ID.
    async fn container(&self, name: &str, attempt: u32, log: &str) -> String {
        let client = self.fake.client().await;
        let id = client
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: self.sandbox.clone(),
                config: Some(api::ContainerConfig {
                    metadata: Some(api::ContainerMetadata {
                        name: name.into(),
                        attempt,
                    }),
                    image: Some(api::ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    log_path: format!("{name}/{attempt}.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config(&self.logs)),
            })
            .await
            .unwrap()
            .container_id;
        client
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        std::fs::create_dir_all(self.logs.join(name)).unwrap();
        std::fs::write(self.log_path(name, attempt), log).unwrap();
        id
    }

    fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        self.logs.join(name).join(format!("{attempt}.log"))
    }

    fn set_pod(&self, pod: serde_json::Value) {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.view.pods.lock().unwrap().push(pod);
    }

    fn admin(&self) -> Client {
        self.pki.client(streaming::APISERVER_KUBELET_CLIENT, &[])
    }
}

fn status(name: &str, state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": name, "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
        "state": state, "lastState": last,
    })
}

const OLD_LOG: &str = "2026-01-01T00:00:00.000000001Z stdout F old line\n";
const LOG: &str = "2026-01-01T00:00:01.000000000Z stdout F one
2026-01-01T00:00:02.000000000Z stderr F two
2026-01-01T00:00:03.000000000Z stdout P thr
2026-01-01T00:00:03.500000000Z stdout F ee
2026-01-01T00:00:04.000000000Z stdout F four
";

/// `default/web`: `app` running (`current`) after `previous` exited;
/// `pending` waiting in ContainerCreating.
async fn web_pod(env: &Env) -> (String, String) {
    let previous = env.container("app", 0, OLD_LOG).await;
    env.fake.exit_container(&previous, 1);
    let current = env.container("app", 1, LOG).await;
    let mut app = status(
        "app",
        serde_json::json!({"running": {}}),
        serde_json::json!({"terminated": {"exitCode": 1, "containerID": format!("containerd://{previous}")}}),
    );
    app["containerID"] = format!("containerd://{current}").into();
    env.set_pod(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
        "spec": {"containers": [{"name": "app", "image": IMAGE}, {"name": "pending", "image": IMAGE}]},
        "status": {"containerStatuses": [
            app,
            status("pending", serde_json::json!({"waiting": {"reason": "ContainerCreating"}}), serde_json::json!({})),
        ]},
    }));
    (previous, current)
}

#[tokio::test]
async fn client_certificates_authenticate_and_authorize() {
    let env = Env::new().await;
    let (code, body) = Client::anonymous().get(env.addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (401, "Unauthorized"));

    let (code, body) = env
        .pki
        .client("mallory", &["devs"])
        .get(env.addr, "/pods")
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body,
        "Forbidden (user=mallory, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
    );
    let (code, body) = env
        .pki
        .client("mallory", &[])
        .call(env.addr, "POST", "/run/default/web/app?cmd=id")
        .await;
    assert_eq!(code, 403);
    assert!(
        body.contains("verb=create") && body.contains("[proxy]"),
        "{body}"
    );

    // Stats and resource metrics are nodes/stats and nodes/metrics, as upstream.
    for (path, sub) in [
        ("/stats/summary", "[stats]"),
        ("/metrics/resource", "[metrics]"),
    ] {
        let (code, body) = env.pki.client("mallory", &[]).get(env.addr, path).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert!(body.contains(sub), "{path}: {body}");
    }
    let (code, body) = env.admin().get(env.addr, "/stats/summary").await;
    assert_eq!(code, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], "node-a");
    let (code, body) = env.admin().get(env.addr, "/metrics/resource").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("resource_scrape_error 0"), "{body}");

    let (code, body) = env.admin().get(env.addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, body) = env
        .pki
        .client("admin", &["system:masters"])
        .get(env.addr, "/pods")
        .await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");

    // A certificate from another CA fails the handshake.
    let other = Pki::new().client(streaming::APISERVER_KUBELET_CLIENT, &[]);
    let res = other.try_send(env.addr, "GET", "/healthz").await;
    assert!(res.is_err(), "an unknown CA must not get through: {res:?}");
}

#[tokio::test]
async fn container_logs_with_the_kubelets_options() {
    let env = Env::new().await;
    web_pod(&env).await;
    let c = env.admin();
    let get = |q: &'static str| {
        let c = &c;
        let addr = env.addr;
        async move {
            c.get(addr, &format!("/containerLogs/default/web/app{q}"))
                .await
        }
    };
    assert_eq!(get("").await, (200, "one\ntwo\nthree\nfour\n".into()));
    assert_eq!(get("?tailLines=1").await, (200, "four\n".into()));
    // Records are counted: "thr" (partial) and "ee" are two.
    assert_eq!(get("?tailLines=3").await, (200, "three\nfour\n".into()));
    assert_eq!(get("?tailLines=0").await, (200, "".into()));
    assert_eq!(get("?limitBytes=6").await, (200, "one\ntw".into()));
    assert_eq!(
        get("?timestamps=true&tailLines=1").await,
        (200, "2026-01-01T00:00:04.000000000Z four\n".into())
    );
    assert_eq!(
        get("?sinceTime=2026-01-01T00:00:03Z").await,
        (200, "three\nfour\n".into())
    );
    assert_eq!(get("?previous=true").await, (200, "old line\n".into()));

    // Errors, as the kubelet words them.
    let c = &c;
    let at = |p: &'static str| async move { c.get(env.addr, p).await };
    assert_eq!(
        at("/containerLogs/default/nope/app").await,
        (404, "pod \"nope\" does not exist".into())
    );
    assert_eq!(
        at("/containerLogs/default/web/ghost").await,
        (404, "container \"ghost\" not found in pod \"web\"".into())
    );
    assert_eq!(
        at("/containerLogs/default/web/pending").await,
        (
            400,
            "container \"pending\" in pod \"web\" is waiting to start: ContainerCreating".into()
        )
    );
    assert_eq!(
        at("/containerLogs/default/web/pending?previous=true").await,
        (
            400,
            "previous terminated container \"pending\" in pod \"web\" not found".into()
        )
    );
    assert_eq!(
        at("/containerLogs/default/web/app?tailLines=x").await,
        (400, r#"{"message": "Unable to decode query."}"#.into())
    );
    assert_eq!(
        at("/containerLogs/default/web/app?limitBytes=0").await,
        (422, r#"{"message": "Invalid request."}"#.into())
    );
}

#[tokio::test]
async fn follow_streams_until_the_container_exits() {
    let env = Env::new().await;
    let (_, current) = web_pod(&env).await;
    let resp = env
        .admin()
        .send(
            env.addr,
            "GET",
            "/containerLogs/default/web/app?follow=true&tailLines=1",
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = String::new();
    let mut read_until = async |want: &str, seen: &mut String| {
        while !seen.contains(want) {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {want:?}; got {seen:?}"));
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                other => panic!("the body ended before {want:?}: {other:?}; got {seen:?}"),
            }
        }
    };
    read_until("four\n", &mut seen).await;
    // New records appear as they are written, a partial one joined to its end.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.log_path("app", 1))
        .unwrap();
    f.write_all(b"2026-01-01T00:00:05.000000000Z stdout P fi\n")
        .unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.write_all(b"2026-01-01T00:00:05.100000000Z stdout F ve\n")
        .unwrap();
    read_until("five\n", &mut seen).await;
    assert_eq!(seen, "four\nfive\n");

    // The container exits: what is left is drained and the body ends.
    f.write_all(b"2026-01-01T00:00:06.000000000Z stderr F bye\n")
        .unwrap();
    assert!(env.fake.exit_container(&current, 0));
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the body ends once the container exited")
        .unwrap()
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&rest), "bye\n");
}

#[tokio::test]
async fn exec_and_run_errors() {
    let env = Env::new().await;
    web_pod(&env).await;
    let c = env.admin();
    assert_eq!(
        c.get(env.addr, "/exec/default/web/app?command=ls&stdout=true")
            .await,
        (400, "Upgrade request required".into())
    );
    assert_eq!(
        c.get(env.addr, "/exec/default/web/app?command=ls").await,
        (
            400,
            "you must specify at least 1 of stdin, stdout, stderr".into()
        )
    );
    assert_eq!(
        c.get(env.addr, "/exec/default/nope/app?command=ls&stdout=1")
            .await,
        (404, "pod does not exist".into())
    );
    assert_eq!(
        c.call(env.addr, "POST", "/run/default/web/pending?cmd=echo%20hi")
            .await,
        (500, "container not found (\"pending\")".into())
    );
    // ExecSync: stdout then stderr; a non-zero exit is the kubelet's 500 text;
    // a runtime error is the answer as it is.
    env.fake.script_exec(
        "app",
        [
            ExecResult {
                stdout: b"hi\n".to_vec(),
                stderr: b"warn\n".to_vec(),
                ..ExecResult::default()
            },
            ExecResult {
                exit_code: 1,
                stderr: b"boom".to_vec(),
                ..ExecResult::default()
            },
        ],
    );
    assert_eq!(
        c.call(env.addr, "POST", "/run/default/web/app?cmd=echo%20hi")
            .await,
        (200, "hi\nwarn\n".into())
    );
    assert_eq!(
        c.call(env.addr, "POST", "/run/default/web/app?cmd=echo%20hi")
            .await,
        (500, "command 'echo hi' exited with 1: boom".into())
    );
    assert_eq!(env.fake.execs()[0].cmd, ["echo", "hi"]);
    env.fake
        .fail_next("ExecSync", tonic::Code::Internal, "runtime trouble");
    let (code, body) = c
        .call(env.addr, "POST", "/run/default/web/app?cmd=echo%20hi")
        .await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("runtime trouble"), "{body}");
    // /run is POST only.
    assert_eq!(c.get(env.addr, "/run/default/web/app?cmd=id").await.0, 405);
}
