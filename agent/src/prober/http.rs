//! HTTP probes (the kubelet's `pkg/probe/http`): a GET to the pod IP (or
//! `httpGet.host`) on the probe's port and path, with its `httpHeaders`; HTTPS
//! without verifying the certificate. 2xx passes, 3xx passes with a warning
//! (a redirect to another host is not followed), anything else fails.
//! Redirects to the same host are followed, at most 10, as Go's client does.
//!
//! A probe opens one connection, sends one request and closes it
//! (`Connection: close`, as upstream disables keep-alives). The exchange is
//! written here on `httparse` rather than with hyper's client: a request head
//! built once per worker ([`Prepared`]), one write, reads into one buffer, no
//! connection task and no shutdown; at hundreds of probes a second hyper's
//! connection machinery was most of the prober's own CPU time.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::Uri;
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

/// An httpGet action made ready to run again and again: its URL and the
/// request's bytes are built once, and a worker keeps them while the pod IP
/// and port stay the same (at a probe a second, building the request every
/// time was a good part of the prober's cost).
#[derive(Debug, Clone)]
pub struct Prepared {
    pod_ip: String,
    port: u16,
    url: String,
    headers: Vec<(String, String)>,
    /// The parsed URL and the request head for it, or why there is none.
    first: Result<(Uri, Vec<u8>), String>,
}

impl Prepared {
    pub fn new(h: &HTTPGetAction, pod_ip: &str, port: u16) -> Self {
        let url = url(h, pod_ip, port);
        let headers = headers(h);
        let first = url
            .parse::<Uri>()
            .map_err(|e| format!("invalid URL: {e}"))
            .and_then(|uri| request_head(&uri, &headers).map(|head| (uri, head)));
        Prepared {
            pod_ip: pod_ip.to_string(),
            port,
            url,
            headers,
            first,
        }
    }

    /// True when it was prepared for this pod IP and port.
    pub fn is_for(&self, pod_ip: &str, port: u16) -> bool {
        self.port == port && self.pod_ip == pod_ip
    }

    /// Run the probe once within `timeout`.
    pub async fn run(&self, timeout: Duration) -> Outcome {
        let url = &self.url;
        let result = match &self.first {
            Ok((uri, head)) => {
                let deadline = tokio::time::Instant::now() + timeout;
                tokio::time::timeout(
                    timeout,
                    follow(uri.clone(), head, &self.headers, Some(deadline)),
                )
                .await
            }
            Err(e) => Ok(Err(e.clone())),
        };
        match result {
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
}

/// Run the probe once within `timeout`.
pub async fn probe(h: &HTTPGetAction, pod_ip: &str, port: u16, timeout: Duration) -> Outcome {
    Prepared::new(h, pod_ip, port).run(timeout).await
}

/// GET `url`, following same-host redirects. The final status and (at most
/// 10 KiB of) body.
pub async fn get(url: &str, headers: &[(String, String)]) -> Result<(u16, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let head = request_head(&uri, headers)?;
    follow(uri, &head, headers, None).await
}

/// GET `uri` with the request `head` already built for it, then follow
/// same-host redirects. `deadline`: when the caller's timeout runs out (a
/// name with several addresses shares it among them).
async fn follow(
    mut uri: Uri,
    head: &[u8],
    headers: &[(String, String)],
    deadline: Option<tokio::time::Instant>,
) -> Result<(u16, String), String> {
    let first_host = uri.host().unwrap_or_default().to_string();
    let mut redirects = 0;
    let mut next_head: Option<Vec<u8>> = None;
    loop {
        let (status, location, body) =
            get_once(&uri, next_head.as_deref().unwrap_or(head), deadline).await?;
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
        next_head = Some(request_head(&next, headers)?);
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

/// The host and port `uri` is reached at (brackets off an IPv6 literal).
fn host_port(uri: &Uri) -> (&str, u16) {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let https = uri.scheme_str() == Some("https");
    (host, uri.port_u16().unwrap_or(if https { 443 } else { 80 }))
}

/// The bytes of an HTTP/1.1 GET of `uri` with the probe's headers: Host,
/// `User-Agent: kube-probe/…` and `Accept: */*` unless the probe sets them
/// (an empty Accept removes it, upstream's rule), and `Connection: close`, as
/// upstream disables keep-alives. A header name or value HTTP does not allow
/// (a line break in a value would smuggle a header) is refused.
fn request_head(uri: &Uri, headers: &[(String, String)]) -> Result<Vec<u8>, String> {
    let (host, port) = host_port(uri);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path = if path.is_empty() { "/" } else { path };
    let mut head = Vec::with_capacity(160);
    head.extend_from_slice(format!("GET {path} HTTP/1.1\r\n").as_bytes());
    let mut line = |name: &str, value: &str| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        line("Host", &join_host_port(host, port));
    }
    if !has("user-agent") {
        line("User-Agent", USER_AGENT);
    }
    if !has("accept") {
        line("Accept", "*/*");
    }
    line("Connection", "close");
    for (name, value) in headers {
        if value.is_empty() && name.eq_ignore_ascii_case("accept") {
            continue;
        }
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid request: invalid header name {name:?}"))?;
        hyper::header::HeaderValue::from_str(value)
            .map_err(|_| format!("invalid request: invalid value for header {name:?}"))?;
        line(name, value);
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
}

/// One request on a new connection: status, `Location`, body.
async fn get_once(
    uri: &Uri,
    head: &[u8],
    deadline: Option<tokio::time::Instant>,
) -> Result<(u16, Option<String>, String), String> {
    let (host, port) = host_port(uri);
    let addr = join_host_port(host, port);
    let tcp = super::tcp::connect(&addr, deadline)
        .await
        .and_then(tokio::net::TcpStream::from_std)
        .map_err(|e| format!("dial tcp {addr}: {}", super::tcp::dial_error(&e)))?;
    if uri.scheme_str() == Some("https") {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(tls, head).await
    } else {
        exchange(tcp, head).await
    }
}

/// The most a response head may take (Go's default `MaxResponseHeaderBytes`
/// is 1 MiB; a probe has no use for more than this).
const MAX_HEAD: usize = 64 * 1024;
/// Headers a response may have.
const MAX_HEADERS: usize = 100;

/// Send `head`, read the response: status, `Location`, up to [`MAX_BODY`] of
/// the body (decoded when chunked). The connection is dropped right after
/// (closed, no shutdown: the server closes its side after a `Connection:
/// close` response anyway).
async fn exchange<S>(mut io: S, head: &[u8]) -> Result<(u16, Option<String>, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(head).await.map_err(|e| e.to_string())?;
    io.flush().await.map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut eof = false;
    loop {
        // What is buffered is parsed before reading more: after an interim
        // response the final one may already be here.
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut parsed);
        let len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if eof {
                    return Err(if buf.is_empty() {
                        "EOF".into()
                    } else {
                        "unexpected EOF".into()
                    });
                }
                if buf.len() >= MAX_HEAD {
                    return Err(format!(
                        "net/http: server response headers exceeded {MAX_HEAD} bytes; aborted"
                    ));
                }
                eof = read_some(&mut io, &mut buf).await? == 0;
                continue;
            }
            Err(e) => return Err(format!("malformed HTTP response: {e}")),
        };
        let status = resp.code.unwrap_or_default();
        if (100..200).contains(&status) && status != 101 {
            // An interim response (100 Continue, 103 Early Hints): the real
            // one follows.
            buf.drain(..len);
            continue;
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let location = header("location");
        let chunked = header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let no_body = status == 204 || status == 304;
        buf.drain(..len);
        let body = if no_body {
            Vec::new()
        } else if chunked {
            read_chunked(&mut io, buf, eof).await?
        } else {
            let want = length.unwrap_or(usize::MAX).min(MAX_BODY);
            while buf.len() < want && !eof {
                eof = read_some(&mut io, &mut buf).await? == 0;
            }
            buf.truncate(want);
            buf
        };
        return Ok((
            status,
            location,
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }

    async fn read_some<S: AsyncRead + Unpin>(
        io: &mut S,
        buf: &mut Vec<u8>,
    ) -> Result<usize, String> {
        buf.reserve(1024);
        io.read_buf(buf).await.map_err(|e| e.to_string())
    }

    /// Decode a chunked body from what was read (`buf`) and the rest of `io`,
    /// up to [`MAX_BODY`].
    async fn read_chunked<S: AsyncRead + Unpin>(
        io: &mut S,
        mut buf: Vec<u8>,
        mut eof: bool,
    ) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            // The chunk's size line.
            let (skip, size) = loop {
                match httparse::parse_chunk_size(&buf) {
                    Ok(httparse::Status::Complete((skip, size))) => break (skip, size),
                    Ok(httparse::Status::Partial) if !eof && buf.len() < MAX_HEAD => {
                        eof = read_some(io, &mut buf).await? == 0;
                    }
                    Ok(httparse::Status::Partial) => return Err("unexpected EOF".into()),
                    Err(_) => return Err("invalid byte in chunk length".into()),
                }
            };
            buf.drain(..skip);
            if size == 0 || body.len() >= MAX_BODY {
                return Ok(body);
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let take = size.min(MAX_BODY - body.len());
            while buf.len() < take && !eof {
                eof = read_some(io, &mut buf).await? == 0;
            }
            if buf.len() < take {
                return Err("unexpected EOF".into());
            }
            body.extend_from_slice(&buf[..take]);
            if take < size {
                // Enough body: the rest is not needed.
                return Ok(body);
            }
            buf.drain(..take);
            // The chunk's closing CRLF.
            while buf.len() < 2 && !eof {
                eof = read_some(io, &mut buf).await? == 0;
            }
            if !buf.starts_with(b"\r\n") {
                return Err("malformed chunked encoding".into());
            }
            buf.drain(..2);
        }
    }
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

    /// A server that answers every connection with `response`, byte for byte.
    async fn canned(response: &'static [u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    // In pieces, as a slow server sends them.
                    for piece in response.chunks(7) {
                        let _ = tcp.write_all(piece).await;
                        let _ = tcp.flush().await;
                        tokio::task::yield_now().await;
                    }
                });
            }
        });
        port
    }

    /// An interim response and the final one in one write, on a connection
    /// the server keeps open (it ignores `Connection: close`): the final
    /// response is read from what is buffered, with no wait for more.
    #[tokio::test]
    async fn a_buffered_final_response_after_an_interim_one_needs_no_more_reads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                held.push(tcp);
            }
        });
        let started = std::time::Instant::now();
        assert_eq!(
            probe(&action("/"), "127.0.0.1", port, T).await,
            Outcome::Success("ok".into())
        );
        assert!(started.elapsed() < T / 2, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn chunked_interim_and_truncated_responses() {
        let chunked = canned(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            probe(&action("/"), "127.0.0.1", chunked, T).await,
            Outcome::Success("hello, world".into())
        );
        // Content-Length bounds the body (what follows is not read).
        let sized = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").await;
        assert_eq!(
            probe(&action("/"), "127.0.0.1", sized, T).await,
            Outcome::Success("ok".into())
        );
        let empty = canned(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            probe(&action("/"), "127.0.0.1", empty, T).await,
            Outcome::Success(String::new())
        );
        let until_eof = canned(b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown").await;
        assert_eq!(
            probe(&action("/"), "127.0.0.1", until_eof, T).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        let closed = canned(b"").await;
        assert_eq!(
            probe(&action("/x"), "127.0.0.1", closed, T).await,
            Outcome::Failure(format!("Get \"http://127.0.0.1:{closed}/x\": EOF"))
        );
        let cut = canned(b"HTTP/1.1 200 OK\r\nContent-Le").await;
        assert_eq!(
            probe(&action("/"), "127.0.0.1", cut, T).await,
            Outcome::Failure(format!("Get \"http://127.0.0.1:{cut}/\": unexpected EOF"))
        );
        let garbage = canned(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        let Outcome::Failure(msg) = probe(&action("/"), "127.0.0.1", garbage, T).await else {
            panic!("not HTTP fails");
        };
        assert!(msg.contains("malformed HTTP response"), "{msg}");
        // A chunked body is cut at 10 KiB, as upstream reads no more.
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..20 {
                r.extend_from_slice(b"400\r\n");
                r.extend_from_slice(&[b'a'; 1024]);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        });
        let big = canned(big).await;
        let Outcome::Success(body) = probe(&action("/"), "127.0.0.1", big, T).await else {
            panic!("a big body passes");
        };
        assert_eq!(body.len(), MAX_BODY);
    }

    #[tokio::test]
    async fn a_header_value_with_a_line_break_is_refused_not_sent() {
        let port = server().await;
        let mut a = action("/echo");
        a.http_headers = Some(vec![HTTPHeader {
            name: "X-Probe".into(),
            value: "yes\r\nX-Injected: 1".into(),
        }]);
        let Outcome::Failure(msg) = probe(&a, "127.0.0.1", port, T).await else {
            panic!("an invalid header fails the probe");
        };
        assert!(
            msg.contains("invalid value for header \"X-Probe\""),
            "{msg}"
        );
        a.http_headers = Some(vec![HTTPHeader {
            name: "Bad Name".into(),
            value: "v".into(),
        }]);
        let Outcome::Failure(msg) = probe(&a, "127.0.0.1", port, T).await else {
            panic!("an invalid header name fails the probe");
        };
        assert!(msg.contains("invalid header name"), "{msg}");
    }

    #[test]
    fn the_request_head_is_built_once_per_address() {
        let h = action("healthz?full=1");
        let p = Prepared::new(&h, "10.88.0.5", 8080);
        assert!(p.is_for("10.88.0.5", 8080));
        assert!(!p.is_for("10.88.0.6", 8080));
        assert!(!p.is_for("10.88.0.5", 8081));
        let Ok((_, head)) = &p.first else {
            panic!("a valid action prepares");
        };
        assert_eq!(
            String::from_utf8_lossy(head),
            "GET /healthz?full=1 HTTP/1.1\r\nHost: 10.88.0.5:8080\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }
}
