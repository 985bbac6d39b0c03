//! Authentication, as kube-apiserver's union authenticator: a verified
//! client certificate first (the x509 authenticator; the certificate is
//! checked in [`super::tls`]), then a bearer token from a kube-apiserver-style
//! token file (`token,user,uid,"group1,group2"` per line). Every
//! authenticated user also gets the group `system:authenticated`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (`admin`, `system:node:n1`).
    pub name: String,
    /// The user's uid.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
}

/// The group upstream adds to every authenticated user.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The user name of an unauthenticated request.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of an unauthenticated request.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

/// What a request's connection established: its remote address and its
/// client certificate. The TLS server inserts it into every request's
/// extensions (absent on plain-HTTP test servers).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer.
    pub remote_addr: SocketAddr,
    /// The client certificate.
    pub certificate: PeerCertificate,
}

/// A connection's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCertificate {
    /// None was presented.
    None,
    /// Signed by the cluster CA, valid, for client auth: its subject's user.
    Verified(User),
    /// Presented but not accepted (another CA, expired, no CN…): why.
    Invalid(String),
}

/// The user of a request, as kube-apiserver's union authenticator finds
/// it: a verified client certificate, else a bearer token known to `auth`;
/// `None` when neither authenticates. The user gets `system:authenticated`.
pub fn authenticate_request<B>(auth: &Authenticator, req: &axum::http::Request<B>) -> Option<User> {
    let from_cert = req
        .extensions()
        .get::<Peer>()
        .and_then(|p| match &p.certificate {
            PeerCertificate::Verified(user) => Some(user.clone()),
            PeerCertificate::None | PeerCertificate::Invalid(_) => None,
        });
    let mut user = match from_cert {
        Some(user) => user,
        None => auth.authenticate(bearer_token(req.headers())?)?,
    };
    if !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        user.groups.push(AUTHENTICATED_GROUP.to_string());
    }
    Some(user)
}

/// The token of an `Authorization: Bearer <token>` header, split as
/// upstream's bearer-token authenticator does (scheme case-insensitive, the
/// token is the second space-separated part, anything after it ignored).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user of a request nobody authenticated (upstream's anonymous
/// authenticator).
pub fn anonymous() -> User {
    User {
        name: ANONYMOUS_USER.to_string(),
        uid: String::new(),
        groups: vec![UNAUTHENTICATED_GROUP.to_string()],
    }
}

/// The tokens the server accepts. Loaded from a file, it re-reads the file
/// when an unknown token arrives and the file changed (so tokens added by
/// `berth-apiserver kubeconfig` work without a restart). Its `Debug` never
/// prints tokens.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Arc<RwLock<HashMap<String, User>>>,
    source: Option<(PathBuf, Arc<RwLock<Option<SystemTime>>>)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tokens.read().map(|t| t.len()).unwrap_or(0);
        write!(f, "Authenticator({n} tokens)")
    }
}

/// Split one CSV line (double quotes group commas; `""` is a quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl Authenticator {
    /// Parse a token file's contents; errors name the line, never the token.
    pub fn parse(contents: &str) -> Result<Authenticator, String> {
        Ok(Authenticator {
            tokens: Arc::new(RwLock::new(Self::parse_map(contents)?)),
            source: None,
        })
    }

    fn parse_map(contents: &str) -> Result<HashMap<String, User>, String> {
        let mut tokens = HashMap::new();
        for (i, line) in contents.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                return Err(format!(
                    "token file line {}: expected token,user,uid[,\"groups\"]",
                    i + 1
                ));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                User {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                },
            );
        }
        Ok(tokens)
    }

    /// Load a token file (re-read when it changes).
    pub fn load(path: &Path) -> Result<Authenticator, String> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let contents = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(Authenticator {
            tokens: Arc::new(RwLock::new(Self::parse_map(&contents)?)),
            source: Some((path.to_path_buf(), Arc::new(RwLock::new(mtime)))),
        })
    }

    fn lookup(&self, token: &str) -> Option<User> {
        self.tokens.read().ok()?.get(token).cloned()
    }

    /// Re-read the source file if its modification time changed.
    fn reload_if_changed(&self) {
        let Some((path, seen)) = &self.source else {
            return;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if seen.read().map(|s| *s == mtime).unwrap_or(true) {
            return;
        }
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|c| Self::parse_map(&c))
        {
            Ok(map) => {
                if let Ok(mut t) = self.tokens.write() {
                    *t = map;
                }
                if let Ok(mut s) = seen.write() {
                    *s = mtime;
                }
                tracing::info!(path = %path.display(), "reloaded token file");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "token file reload failed")
            }
        }
    }

    /// The user a token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        if let Some(u) = self.lookup(token) {
            return Some(u);
        }
        self.reload_if_changed();
        self.lookup(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file() {
        let a = Authenticator::parse(
            "# comment\nabc,admin,1,\"system:masters,other\"\ndef,system:node:n1,2,system:nodes\n",
        )
        .unwrap();
        let u = a.authenticate("abc").unwrap();
        assert_eq!(u.name, "admin");
        assert_eq!(u.groups, vec!["system:masters", "other"]);
        assert_eq!(a.authenticate("def").unwrap().groups, vec!["system:nodes"]);
        assert!(a.authenticate("nope").is_none());
        assert!(Authenticator::parse("onlytoken\n").is_err());
        assert!(!format!("{a:?}").contains("abc"));
    }

    #[test]
    fn union_certificate_first_then_token() {
        let a = Authenticator::parse("tok,bob,7,team\n").unwrap();
        let req = |auth: Option<&str>, cert: Option<PeerCertificate>| {
            let mut b = axum::http::Request::builder();
            if let Some(h) = auth {
                b = b.header("authorization", h);
            }
            let mut r = b.body(()).unwrap();
            if let Some(certificate) = cert {
                r.extensions_mut().insert(Peer {
                    remote_addr: "127.0.0.1:1".parse().unwrap(),
                    certificate,
                });
            }
            r
        };
        let bob = authenticate_request(&a, &req(Some("Bearer tok"), None)).unwrap();
        assert_eq!(bob.groups, ["team", AUTHENTICATED_GROUP]);
        // The scheme is case-insensitive; an empty or unknown token is nobody.
        assert!(authenticate_request(&a, &req(Some("bearer tok extra"), None)).is_some());
        assert!(authenticate_request(&a, &req(Some("Bearer  tok"), None)).is_none());
        assert!(authenticate_request(&a, &req(Some("Bearer "), None)).is_none());
        assert!(authenticate_request(&a, &req(Some("Basic tok"), None)).is_none());
        let alice = User {
            name: "alice".into(),
            uid: String::new(),
            groups: vec!["system:masters".into()],
        };
        let cert = PeerCertificate::Verified(alice);
        let u = authenticate_request(&a, &req(Some("Bearer tok"), Some(cert))).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["system:masters", AUTHENTICATED_GROUP]);
        let bad = PeerCertificate::Invalid("unknown issuer".into());
        let u = authenticate_request(&a, &req(Some("Bearer tok"), Some(bad.clone()))).unwrap();
        assert_eq!(u.name, "bob");
        assert!(authenticate_request(&a, &req(None, Some(bad))).is_none());
    }
}
