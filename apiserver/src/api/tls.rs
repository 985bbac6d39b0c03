//! HTTPS: a CA and a serving certificate generated on first start (rcgen),
//! served with rustls (ring provider), HTTP/2 and HTTP/1.1.
//!
//! Client certificates: the server asks for one but does not require it, as
//! kube-apiserver does (`tls.RequestClientCert` with `--client-ca-file`).
//! The chain is checked against the cluster CA after the handshake, not
//! during it, so that a certificate from another CA or an expired one gets
//! the same answer as upstream: 401 Unauthorized (unless a bearer token
//! authenticates the request), not a failed handshake. The verified identity
//! travels with every request of the connection as a [`Peer`] extension.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::auth::{Peer, PeerCertificate, User};

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
        crate::storage::private_files::ensure_private_dir(parent)?;
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

/// The TLS side of the server: the rustls configuration and the verifier
/// that checks client certificates against the cluster CA after the
/// handshake.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls configuration (requests, never requires, a client certificate).
    pub config: Arc<rustls::ServerConfig>,
    /// Verifies a presented chain against the cluster CA (client auth EKU).
    verifier: Arc<dyn ClientCertVerifier>,
}

/// A rustls server configuration from the serving certificate and key
/// (ALPN: h2, http/1.1), asking clients for a certificate signed by the
/// cluster CA (`ca.crt`).
pub fn server_config(paths: &PkiPaths) -> anyhow::Result<ServerTls> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&paths.cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&paths.ca_cert)
        .with_context(|| format!("reading {}", paths.ca_cert.display()))?
    {
        let ca = ca.with_context(|| format!("parsing {}", paths.ca_cert.display()))?;
        roots
            .add(ca)
            .with_context(|| format!("adding {} to the client CAs", paths.ca_cert.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("building the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(DeferredClientVerifier(verifier.clone())))
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        verifier,
    })
}

impl ServerTls {
    /// What a connection's client certificate chain (leaf first) proves:
    /// upstream's x509 authenticator (`CommonNameUserConversion`): the user
    /// is the subject CN, the groups every subject O, no uid. A chain that
    /// does not verify, or a leaf without CN, authenticates nobody.
    pub fn identify(&self, chain: Option<&[CertificateDer<'_>]>) -> PeerCertificate {
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return PeerCertificate::None;
        };
        if let Err(e) = self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            return PeerCertificate::Invalid(e.to_string());
        }
        match subject_identity(leaf) {
            Some(user) => PeerCertificate::Verified(user),
            None => PeerCertificate::Invalid("the certificate has no subject common name".into()),
        }
    }
}

/// The user a certificate's subject names (CN, every O); `None` without a CN.
fn subject_identity(cert: &CertificateDer<'_>) -> Option<User> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User {
        name,
        uid: String::new(),
        groups,
    })
}

/// Requests a client certificate and checks that the peer holds its key,
/// but accepts any chain during the handshake: kube-apiserver verifies the
/// chain in its x509 authenticator, so a bad certificate is a 401 there,
/// not a TLS alert. [`ServerTls::identify`] does the chain check right
/// after the handshake; nothing trusts a certificate it did not verify.
#[derive(Debug)]
struct DeferredClientVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    // The handshake signatures prove possession of the certificate's key;
    // those are checked here, whatever the chain.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A client certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// Issue a client certificate signed by the cluster CA: subject CN=`user`,
/// one O per group, client auth only, valid from five minutes ago (clock
/// skew, as upstream's CSR signer backdates) for `valid_for`.
pub fn issue_client_certificate(
    paths: &PkiPaths,
    user: &str,
    groups: &[String],
    valid_for: std::time::Duration,
) -> anyhow::Result<ClientCertificate> {
    let ca_key_pem = std::fs::read_to_string(&paths.ca_key)
        .with_context(|| format!("reading {}", paths.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("parsing {}", paths.ca_key.display()))?;
    let ca_pem = std::fs::read_to_string(&paths.ca_cert)
        .with_context(|| format!("reading {}", paths.ca_cert.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)
        .with_context(|| format!("parsing {}", paths.ca_cert.display()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // The subject is replaced below (rcgen holds one value per attribute
    // type; a user has any number of groups).
    params.distinguished_name.push(DnType::CommonName, user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(300)).into();
    params.not_after = (now + valid_for).into();
    let key = KeyPair::generate()?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the client certificate")?;
    let der = with_subject(cert.der(), &subject_der(user, groups), &ca_key)
        .context("writing the client certificate's subject")?;
    Ok(ClientCertificate {
        cert_pem: pem("CERTIFICATE", &der),
        key_pem: key.serialize_pem(),
    })
}

/// A DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The header length and total length of the DER element at the start of `buf`.
fn der_element(buf: &[u8]) -> Option<(usize, usize)> {
    let first = *buf.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        let bytes = buf.get(2..2 + n)?;
        (
            2 + n,
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
        )
    };
    Some((header, header + len))
}

/// An X.509 Name: one O (UTF8String) per group, then the CN — the order
/// kubeadm's certificates have (`O=system:masters, CN=kubernetes-admin`).
fn subject_der(cn: &str, orgs: &[String]) -> Vec<u8> {
    const ORGANIZATION: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x0a];
    const COMMON_NAME: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let rdn = |oid: &[u8], value: &str| {
        der(
            0x31,
            &der(0x30, &[oid, &der(0x0c, value.as_bytes())].concat()),
        )
    };
    let mut names: Vec<u8> = orgs.iter().flat_map(|o| rdn(&ORGANIZATION, o)).collect();
    if !cn.is_empty() {
        names.extend(rdn(&COMMON_NAME, cn));
    }
    der(0x30, &names)
}

/// `cert` with its subject replaced by `subject`, signed again by `ca_key`
/// with the same algorithm.
fn with_subject(cert: &[u8], subject: &[u8], ca_key: &KeyPair) -> anyhow::Result<Vec<u8>> {
    use rcgen::SigningKey;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)?;
    let tbs: &[u8] = parsed.tbs_certificate.as_ref();
    let old = parsed.tbs_certificate.subject.as_raw();
    // Both are slices of `cert`: the subject's place inside the TBS.
    let at = (old.as_ptr() as usize)
        .checked_sub(tbs.as_ptr() as usize)
        .filter(|at| at + old.len() <= tbs.len())
        .context("subject outside the TBS certificate")?;
    let (tbs_header, _) = der_element(tbs).context("TBS certificate header")?;
    let content = [&tbs[tbs_header..at], subject, &tbs[at + old.len()..]].concat();
    let new_tbs = der(0x30, &content);
    // Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature }.
    let (cert_header, _) = der_element(cert).context("certificate header")?;
    let after_tbs = &cert[cert_header + tbs.len()..];
    let (_, alg_len) = der_element(after_tbs).context("signature algorithm")?;
    let signature = ca_key.sign(&new_tbs)?;
    let bits = der(0x03, &[&[0u8][..], &signature].concat());
    Ok(der(
        0x30,
        &[&new_tbs, &after_tbs[..alg_len], &bits].concat(),
    ))
}

/// PEM armour, 64 columns.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Serve `router` over TLS on `listener` until `shutdown` completes. Every
/// request carries a [`Peer`] extension: the remote address and what the
/// connection's client certificate proves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: ServerTls,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let tls = Arc::new(tls);
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let certificate = tls.identify(stream.get_ref().1.peer_certificates());
            if let PeerCertificate::Invalid(reason) = &certificate {
                // Upstream logs this at the same low level: the request
                // may still authenticate with a token.
                tracing::debug!(%peer, %reason, "client certificate not accepted");
            }
            let conn = Peer {
                remote_addr: peer,
                certificate,
            };
            // Per connection, not global: each request of this connection
            // gets a copy of what its handshake established.
            let router =
                tower::ServiceExt::map_request(router, move |mut req: hyper::Request<_>| {
                    req.extensions_mut().insert(conn.clone());
                    req
                });
            let service = TowerToHyperService::new(router);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
