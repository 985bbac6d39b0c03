//! HTTP probes (the kubelet's `pkg/probe/http`): a GET to the pod IP (or
//! `httpGet.host`) on the probe's port and path, with its `httpHeaders`; HTTPS
//! without verifying the certificate. 2xx passes, 3xx passes with a warning
//! (a redirect to another host is not followed), anything else fails.
//! Redirects to the same host are followed, at most 10, as Go's client does.
//!
//! Written on hyper's connection API rather than a full client: a probe opens
//! one connection, sends one request and closes it (`Connection: close`, as
//! upstream disables keep-alives), so pooling and DNS would only cost memory.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::HTTPGetAction;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Outcome, join_host_port};

/// As Go's client: the 11th redirect is an error.
const MAX_REDIRECTS: usize = 10;
/// Upstream reads at most 10 KiB of a probe's body.
const MAX_BODY: usize = 10 * 1024;
/// The kubelet's probe user agent, `kube-probe/<major>.<minor>`.
pub const USER_AGENT: &str = "kube-probe/1.33";

/// The probe's URL: `scheme://host:port/path`, path given a leading `/`.
pub fn url(h: &HTTPGetAction, pod_ip: &str, port: u16) -> String {
    let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    let host = h
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(pod_ip);
    let path = h.path.as_deref().unwrap_or_default();
    let slash = if path.starts_with('/') { "" } else { "/" };
    format!("{scheme}://{}{slash}{path}", join_host_port(host, port))
}

/// The action's `httpHeaders` as (name, value) pairs.
pub fn headers(h: &HTTPGetAction) -> Vec<(String, String)> {
    h.http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// Run the probe once within `timeout`.
pub async fn probe(h: &HTTPGetAction, pod_ip: &str, port: u16, timeout: Duration) -> Outcome {
    let url = url(h, pod_ip, port);
    match tokio::time::timeout(timeout, get(&url, &headers(h))).await {
        Err(_) => Outcome::Failure(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Outcome::Failure(format!("Get \"{url}\": {e}")),
        Ok(Ok((status, body))) => match status {
            200..=299 => Outcome::Success(body),
            300..=399 => {
                Outcome::Warning(format!("Probe terminated redirects, Response body: {body}"))
            }
            code => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        },
    }
}

/// GET `url`, following same-host redirects. The final status and (at most
/// 10 KiB of) body.
pub async fn get(url: &str, headers: &[(String, String)]) -> Result<(u16, String), String> {
    let mut uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let first_host = uri.host().unwrap_or_default().to_string();
    let mut redirects = 0;
    loop {
        let (status, location, body) = get_once(&uri, headers).await?;
        let next = match location {
            Some(loc) if (300..400).contains(&status) => resolve(&uri, &loc)?,
            _ => return Ok((status, body)),
        };
        if next.host().unwrap_or_default() != first_host {
            // Go's CheckRedirect in the prober: another host ends the chain
            // with the redirect itself.
            return Ok((status, body));
        }
        redirects += 1;
        if redirects >= MAX_REDIRECTS {
            return Err(format!("stopped after {MAX_REDIRECTS} redirects"));
        }
        uri = next;
    }
}

/// A `Location` relative to the request it answers.
fn resolve(base: &Uri, location: &str) -> Result<Uri, String> {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base
            .path()
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or_default();
        format!("{scheme}://{authority}{dir}/{location}")
    };
    absolute
        .parse()
        .map_err(|e| format!("failed to parse Location header {location:?}: {e}"))
}

/// One request on a new connection: status, `Location`, body.
async fn get_once(
    uri: &Uri,
    headers: &[(String, String)],
) -> Result<(u16, Option<String>, String), String> {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = join_host_port(host, port);
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {}", super::tcp::dial_error(&e)))?;
    let _ = tcp.set_nodelay(true);

    let mut req = Request::get(
        uri.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string(),
    );
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    // Host may be overridden by a header, as upstream allows.
    if !has("host") {
        req = req.header(hyper::header::HOST, join_host_port(host, port));
    }
    if !has("user-agent") {
        req = req.header(hyper::header::USER_AGENT, USER_AGENT);
    }
    if !has("accept") {
        req = req.header(hyper::header::ACCEPT, "*/*");
    }
    req = req.header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        // An empty Accept removes the default (upstream's rule).
        if value.is_empty() && name.eq_ignore_ascii_case("accept") {
            continue;
        }
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request: {e}"))?;

    if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(tls, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<S>(io: S, req: Request<Empty<Bytes>>) -> Result<(u16, Option<String>, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut body = resp.into_body();
            let mut data = Vec::new();
            while data.len() < MAX_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(chunk) = frame.data_ref() {
                            data.extend_from_slice(chunk);
                        }
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => break,
                }
            }
            data.truncate(MAX_BODY);
            Ok((
                status,
                location,
                String::from_utf8_lossy(&data).into_owned(),
            ))
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

/// TLS that accepts any certificate, as the kubelet's probes do
/// (`InsecureSkipVerify`): the probe checks the server answers, not who it is.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => Arc::new(c),
                // The ring provider supports the default versions; unreachable.
                Err(e) => {
                    tracing::error!(error = %e, "probe TLS configuration failed");
                    Arc::new(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                }
            }
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
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
        cert: &rustls::pki_types::CertificateDer<'_>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::Redirect;
    use axum::routing::get as route;
    use k8s_openapi::api::core::v1::HTTPHeader;

    async fn server() -> u16 {
        let app = Router::new()
            .route("/ok", route(|| async { "fine" }))
            .route(
                "/bad",
                route(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "nope") }),
            )
            .route("/hop", route(|| async { Redirect::temporary("/ok") }))
            .route(
                "/away",
                route(|| async { Redirect::temporary("http://192.0.2.1:1/ok") }),
            )
            .route("/loop", route(|| async { Redirect::temporary("/loop") }))
            .route(
                "/slow",
                route(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/echo",
                route(|headers: HeaderMap| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    format!(
                        "{} {} {} {}",
                        h("host"),
                        h("user-agent"),
                        h("accept"),
                        h("x-probe")
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn action(path: &str) -> HTTPGetAction {
        HTTPGetAction {
            path: Some(path.into()),
            ..Default::default()
        }
    }

    const T: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn status_codes_redirects_and_timeouts_as_upstream() {
        let port = server().await;
        let ip = "127.0.0.1";
        assert_eq!(
            probe(&action("/ok"), ip, port, T).await,
            Outcome::Success("fine".into())
        );
        assert_eq!(
            probe(&action("/bad"), ip, port, T).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        // Same host: followed.
        assert_eq!(
            probe(&action("/hop"), ip, port, T).await,
            Outcome::Success("fine".into())
        );
        // Another host: not followed, a warning.
        assert!(matches!(
            probe(&action("/away"), ip, port, T).await,
            Outcome::Warning(w) if w.starts_with("Probe terminated redirects")
        ));
        assert_eq!(
            probe(&action("/loop"), ip, port, T).await,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/loop\": stopped after 10 redirects"
            ))
        );
        assert!(matches!(
            probe(&action("/slow"), ip, port, T).await,
            Outcome::Failure(f) if f.contains("context deadline exceeded")
        ));
        // A path without its slash gets one.
        assert_eq!(
            probe(&action("ok"), ip, port, T).await,
            Outcome::Success("fine".into())
        );
    }

    #[tokio::test]
    async fn headers_defaults_and_overrides() {
        let port = server().await;
        assert_eq!(
            probe(&action("/echo"), "127.0.0.1", port, T).await,
            Outcome::Success(format!("127.0.0.1:{port} kube-probe/1.33 */* -"))
        );
        let mut a = action("/echo");
        a.http_headers = Some(vec![
            HTTPHeader {
                name: "Host".into(),
                value: "example.test".into(),
            },
            HTTPHeader {
                name: "X-Probe".into(),
                value: "yes".into(),
            },
            HTTPHeader {
                name: "User-Agent".into(),
                value: "mine".into(),
            },
        ]);
        assert_eq!(
            probe(&a, "127.0.0.1", port, T).await,
            Outcome::Success("example.test mine */* yes".into())
        );
    }

    #[tokio::test]
    async fn https_does_not_verify_the_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let mut a = action("/");
        a.scheme = Some("HTTPS".into());
        assert_eq!(
            probe(&a, "127.0.0.1", port, T).await,
            Outcome::Success("secure".into())
        );
    }
}
