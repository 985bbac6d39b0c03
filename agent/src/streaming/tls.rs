//! TLS for the authenticated server: the serving certificate (given, or
//! generated once as the kubelet does), the client CA, and who a client
//! certificate names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Where the generated serving certificate and key go: `<root-dir>/pki/`.
pub fn self_signed_paths(root_dir: &Path) -> (PathBuf, PathBuf) {
    let pki = root_dir.join("pki");
    (pki.join("agent.crt"), pki.join("agent.key"))
}

/// The serving certificate and key: `--tls-cert-file`/`--tls-private-key-file`
/// when given, else `<root-dir>/pki/agent.crt|.key`, generated on first start
/// (a CA named `<node>-ca@<unix time>` and a certificate signed by it, the file
/// holding both, as the kubelet's `GenerateSelfSignedCertKey`). SANs: the node
/// IP, the node name, `localhost`, `127.0.0.1`.
pub fn ensure_serving_cert(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    root_dir: &Path,
    node_name: &str,
    node_ip: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    match (cert_file, key_file) {
        (Some(c), Some(k)) => return Ok((c.to_path_buf(), k.to_path_buf())),
        (None, None) => {}
        _ => anyhow::bail!("--tls-cert-file and --tls-private-key-file must be given together"),
    }
    let (cert, key) = self_signed_paths(root_dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ca_key = KeyPair::generate().context("generating the serving CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{node_name}-ca@{now}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut sans = Vec::new();
    for s in [node_ip, node_name, "localhost", "127.0.0.1"] {
        if !s.is_empty() && !sans.iter().any(|x| x == s) {
            sans.push(s.to_string());
        }
    }
    let mut params = CertificateParams::new(sans)
        .with_context(|| format!("serving certificate names for node {node_name:?}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{node_name}@{now}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let leaf_key = KeyPair::generate().context("generating the serving key")?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf = params.signed_by(&leaf_key, &issuer)?;

    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_file(&key, &leaf_key.serialize_pem(), true)?;
    write_file(&cert, &format!("{}{}", leaf.pem(), ca_cert.pem()), false)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed serving certificate");
    Ok((cert, key))
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The certificates of a PEM file (`--client-ca-file`).
pub fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

/// A rustls server configuration: the serving certificate, client certificates
/// verified against `client_cas` when presented (a client without one gets a
/// 401 from the server rather than a failed handshake), ALPN `http/1.1` only
/// (exec upgrades need HTTP/1.1).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_cas: Vec<CertificateDer<'static>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = read_pem_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots
            .add(ca)
            .context("adding a client CA certificate to the trust store")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the serving certificate {} and key {}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who a verified client certificate names, as the kube-apiserver's x509
/// authenticator reads it: the user is the subject's CN, the groups its O's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The identity in a DER client certificate (`None` when it has no CN, which
/// the x509 authenticator rejects too).
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    if user.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Identity { user, groups })
}
