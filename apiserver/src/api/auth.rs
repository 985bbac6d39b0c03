//! Bearer-token authentication from a kube-apiserver-style token file
//! (`token,user,uid,"group1,group2"` per line).

use std::collections::HashMap;
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
}
