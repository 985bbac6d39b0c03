//! HTTPS: a CA and a serving certificate generated on first start (rcgen),
//! served with rustls (ring provider), HTTP/2 and HTTP/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files of a data directory's PKI.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    /// The CA certificate (`ca.crt`).
    pub ca_cert: PathBuf,
    /// The CA key (`ca.key`, mode 0600).
    pub ca_key: PathBuf,
    /// The serving certificate (`apiserver.crt`).
    pub cert: PathBuf,
    /// The serving key (`apiserver.key`, mode 0600).
    pub key: PathBuf,
    /// The client certificate presented to node agents
    /// (`apiserver-kubelet-client.crt`), as kubeadm names it.
    pub kubelet_client_cert: PathBuf,
    /// Its key (`apiserver-kubelet-client.key`, mode 0600).
    pub kubelet_client_key: PathBuf,
}

impl PkiPaths {
    /// The PKI files under `dir/pki/`.
    pub fn new(dir: &Path) -> PkiPaths {
        let pki = dir.join("pki");
        PkiPaths {
            ca_cert: pki.join("ca.crt"),
            ca_key: pki.join("ca.key"),
            cert: pki.join("apiserver.crt"),
            key: pki.join("apiserver.key"),
            kubelet_client_cert: pki.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: pki.join("apiserver-kubelet-client.key"),
        }
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// Generate the CA and serving certificate unless they exist. The serving
/// certificate's SANs: 127.0.0.1, ::1, localhost, the hostname, and `extra`.
pub fn ensure_pki(paths: &PkiPaths, extra_sans: &[String]) -> anyhow::Result<()> {
    if paths.ca_cert.exists() && paths.cert.exists() && paths.key.exists() {
        return Ok(());
    }
    if let Some(parent) = paths.ca_cert.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "berth-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut sans = vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ];
    if let Some(h) = hostname::get().ok().and_then(|h| h.into_string().ok())
        && !h.is_empty()
        && !sans.contains(&h)
    {
        sans.push(h);
    }
    sans.extend(extra_sans.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "berth-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    write_file(&paths.ca_key, &ca_key.serialize_pem(), true)?;
    write_file(&paths.key, &key.serialize_pem(), true)?;
    write_file(&paths.cert, &cert.pem(), false)?;
    write_file(&paths.ca_cert, &ca_cert.pem(), false)?;
    Ok(())
}

/// The subject CN of the kubelet client certificate (kubeadm's).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Generate the client certificate the server presents to node agents
/// (`pods/log`, `pods/exec`) unless it exists: signed by the CA, subject
/// CN=`kube-apiserver-kubelet-client`, O=`system:masters`, client auth only.
/// Separate from [`ensure_pki`] so data directories made before it get one.
pub fn ensure_kubelet_client_cert(paths: &PkiPaths) -> anyhow::Result<()> {
    use anyhow::Context;
    if paths.kubelet_client_cert.exists() && paths.kubelet_client_key.exists() {
        return Ok(());
    }
    let ca_key_pem = std::fs::read_to_string(&paths.ca_key)
        .with_context(|| format!("reading {}", paths.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("parsing {}", paths.ca_key.display()))?;
    let ca_pem = std::fs::read_to_string(&paths.ca_cert)
        .with_context(|| format!("reading {}", paths.ca_cert.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)
        .with_context(|| format!("parsing {}", paths.ca_cert.display()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, KUBELET_CLIENT_CN);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&paths.kubelet_client_key, &key.serialize_pem(), true)?;
    write_file(&paths.kubelet_client_cert, &cert.pem(), false)?;
    Ok(())
}

/// A rustls server configuration from the serving certificate and key
/// (ALPN: h2, http/1.1).
pub fn server_config(paths: &PkiPaths) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&paths.cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve `router` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
