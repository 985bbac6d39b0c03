//! An in-process berth-apiserver served over real TLS (the server's own
//! accept loop, [`tls::serve`]) and a one-request-per-connection HTTPS
//! client that may present a client certificate. Shared by the
//! client-certificate and audit tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use berth_apiserver::api::audit::AuditLog;
use berth_apiserver::api::tls::{self, ClientCertificate, PkiPaths};
use berth_apiserver::api::{self, ApiConfig, ApiState, Authenticator};
use berth_apiserver::storage::Storage;
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// The token file of every test server.
pub const TOKENS: &str = "admin-token,admin,uid-admin,system:masters
node-token,system:node:n1,uid-n1,system:nodes
bob-token,bob,uid-bob,
";

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: PkiPaths,
    pub audit_path: PathBuf,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A response, body read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

/// Start a server on its own temp dir (PKI, SQLite, `audit.log`) with the
/// tokens of [`TOKENS`] and the audit log at `audit` (default: DIR/audit.log).
pub async fn start(audit: Option<&Path>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiPaths::new(dir.path());
    tls::ensure_pki(&pki, &[]).unwrap();
    let audit_path = audit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("audit.log"));
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::new(
        storage,
        ApiConfig {
            authenticator: Some(Authenticator::parse(TOKENS).unwrap()),
            audit: Some(AuditLog::open(&audit_path).unwrap()),
            ..ApiConfig::default()
        },
    );
    state.bootstrap().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = tls::server_config(&pki).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tls::serve(listener, api::router(state), config, async {
            let _ = rx.await;
        })
        .await;
    });
    Server {
        addr,
        pki,
        audit_path,
        dir,
        shutdown: Some(tx),
    }
}

/// Credentials of a request.
#[derive(Default, Clone)]
pub struct Creds<'a> {
    pub token: Option<&'a str>,
    pub cert: Option<&'a ClientCertificate>,
}

impl<'a> Creds<'a> {
    pub fn token(t: &'a str) -> Creds<'a> {
        Creds {
            token: Some(t),
            cert: None,
        }
    }
    pub fn cert(c: &'a ClientCertificate) -> Creds<'a> {
        Creds {
            token: None,
            cert: Some(c),
        }
    }
}

fn client_config(ca: &Path, cert: Option<&ClientCertificate>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

impl Server {
    /// Open one request on a fresh TLS connection; the response, body unread.
    pub async fn open(
        &self,
        creds: &Creds<'_>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Response<Incoming> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
            &self.pki.ca_cert,
            creds.cert,
        )));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::USER_AGENT, "berth-test/1.0")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = creds.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let b = body.map(|b| b.to_string()).unwrap_or_default();
        sender
            .send_request(req.body(Full::new(Bytes::from(b))).unwrap())
            .await
            .unwrap()
    }

    /// One request; the whole body.
    pub async fn send(
        &self,
        creds: &Creds<'_>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        self.send_with(creds, method, path, &[], body).await
    }

    /// One request with extra headers; the whole body.
    pub async fn send_with(
        &self,
        creds: &Creds<'_>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let resp = self.open(creds, method, path, headers, body).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Resp {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }
}

/// A fake node agent's TLS acceptor: a self-signed certificate for
/// 127.0.0.1, asking for client certificates signed by `client_ca` (the
/// kubelet client's) but also accepting connections without one.
pub fn agent_acceptor(client_ca: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
