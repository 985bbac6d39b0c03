//! The API server's storage layer: one [`Storage`] trait, two backends.
//!
//! * [`sqlite::SqliteStorage`] — a single SQLite file (WAL) with an etcd-like
//!   multi-version log; no external service.
//! * [`etcd::EtcdStorage`] — a real etcd v3 cluster.
//!
//! Keys are `/registry/<resource>/<namespace>/<name>` (cluster-scoped:
//! `/registry/<resource>/<name>`, see [`object_key`]); values are the object's
//! JSON bytes, which the storage layer does not interpret. Every write bumps a
//! single store-wide revision (like etcd); an object's `mod_revision` is its
//! `metadata.resourceVersion` (see [`set_resource_version`]).
//!
//! Revision semantics shared by both backends:
//!
//! * [`ListOptions::revision`] `None` (or `Some(0)`) lists the latest state;
//!   `Some(r)` lists the state *exactly as of* revision `r` — both backends
//!   keep multi-version history, so this is a true snapshot read. `r` older
//!   than the last compaction → [`Error::Compacted`]; `r` newer than the
//!   current revision → [`Error::FutureRevision`]. The API layer maps
//!   Kubernetes' `NotOlderThan` to "latest" (after checking `r <= current`).
//! * A continue token pins the revision of the first page, so every page of a
//!   paginated list comes from the same snapshot.
//! * [`Storage::watch`] from revision `f` delivers every event with revision
//!   `> f`, in order, without gaps or duplicates, then live events. After
//!   `compact(c)`, `f < c` → [`Error::Compacted`] (sqlite). etcd accepts
//!   `f >= c - 1` (it keeps revision `c` itself) and reports its own compact
//!   revision.

pub mod encryption;
pub mod etcd;
pub mod private_files;
pub mod sqlite;

use std::fmt;

use futures::stream::BoxStream;

/// Result alias for storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The root of every object key.
pub const REGISTRY_ROOT: &str = "/registry/";

/// A storage failure. Every variant names the key (or prefix) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `create` found a live object at the key (HTTP 409 AlreadyExists).
    #[error("{key}: already exists")]
    AlreadyExists {
        /// The object's key.
        key: String,
    },
    /// No live object at the key (HTTP 404).
    #[error("{key}: not found")]
    NotFound {
        /// The object's key.
        key: String,
    },
    /// The object's `mod_revision` is not the expected one (HTTP 409 Conflict).
    #[error("{key}: conflict: expected mod_revision {expected}, found {actual}")]
    Conflict {
        /// The object's key.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// The object's current `mod_revision`.
        actual: i64,
    },
    /// The requested revision is older than the retained history (HTTP 410 Gone).
    #[error("{key}: revision {revision} has been compacted (oldest available: {compact_revision})")]
    Compacted {
        /// The key or prefix read or watched.
        key: String,
        /// The revision asked for.
        revision: i64,
        /// The store's compaction revision (0 when the backend does not say).
        compact_revision: i64,
    },
    /// The requested revision is newer than the store's current revision (HTTP 504 in Kubernetes).
    #[error("{key}: revision {revision} is in the future (current: {current})")]
    FutureRevision {
        /// The key or prefix read.
        key: String,
        /// The revision asked for.
        revision: i64,
        /// The store's current revision (0 when the backend does not say).
        current: i64,
    },
    /// A malformed argument: key, prefix or continue token (HTTP 400).
    #[error("{key}: invalid argument: {reason}")]
    InvalidArgument {
        /// The offending key, prefix or token.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// SQLite failed.
    #[error("{key}: sqlite: {source}")]
    Sqlite {
        /// The key or prefix of the failed operation ("" for store-wide ones).
        key: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// etcd failed (transport, gRPC status, unexpected response).
    #[error("{key}: etcd: {source}")]
    Etcd {
        /// The key or prefix of the failed operation ("" for store-wide ones).
        key: String,
        /// The etcd client error.
        #[source]
        source: etcd_client::Error,
    },
    /// A stored value could not be decrypted, or a value could not be
    /// encrypted, under the encryption provider configuration (HTTP 500, as
    /// kube-apiserver's "unable to transform key"). Never carries key material.
    #[error("unable to transform key \"{key}\": {reason}")]
    Transform {
        /// The object's key.
        key: String,
        /// What failed (provider, key name, reason).
        reason: String,
    },
    /// The backend is not running or answered something impossible (HTTP 503).
    #[error("{key}: storage unavailable: {reason}")]
    Unavailable {
        /// The key or prefix of the failed operation ("" for store-wide ones).
        key: String,
        /// What happened.
        reason: String,
    },
}

impl Error {
    /// The key (or prefix) the error concerns.
    pub fn key(&self) -> &str {
        match self {
            Error::AlreadyExists { key }
            | Error::NotFound { key }
            | Error::Conflict { key, .. }
            | Error::Compacted { key, .. }
            | Error::FutureRevision { key, .. }
            | Error::InvalidArgument { key, .. }
            | Error::Sqlite { key, .. }
            | Error::Etcd { key, .. }
            | Error::Transform { key, .. }
            | Error::Unavailable { key, .. } => key,
        }
    }
}

/// A stored object as read by [`Storage::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The object's JSON bytes.
    pub value: Vec<u8>,
    /// The revision of the object's last write (its `resourceVersion`).
    pub mod_revision: i64,
    /// The revision that created the object.
    pub create_revision: i64,
}

/// One object of a [`ListResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The object's key.
    pub key: String,
    /// The object's JSON bytes.
    pub value: Vec<u8>,
    /// The revision of the object's last write (its `resourceVersion`).
    pub mod_revision: i64,
    /// The revision that created the object.
    pub create_revision: i64,
}

/// Options of [`Storage::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// At most this many items (`None` or 0: all).
    pub limit: Option<u64>,
    /// The `continue_key` of the previous page; it pins that page's revision
    /// and overrides [`ListOptions::revision`].
    pub continue_key: Option<String>,
    /// List the state exactly as of this revision (`None`/`Some(0)`: latest).
    pub revision: Option<i64>,
}

/// One page of [`Storage::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListResult {
    /// The objects, in key order.
    pub items: Vec<KeyValue>,
    /// The store revision this page is consistent at (the list's `resourceVersion`).
    pub revision: i64,
    /// Set when more items follow: pass it as [`ListOptions::continue_key`].
    pub continue_key: Option<String>,
    /// How many items follow this page (`Some` only when `continue_key` is).
    pub remaining: Option<i64>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created.
    Added,
    /// The key was updated.
    Modified,
    /// The key was deleted.
    Deleted,
}

/// One change delivered by [`Storage::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventKind,
    /// The object's key.
    pub key: String,
    /// The object after the change; for [`EventKind::Deleted`], its last value
    /// before the deletion (what Kubernetes sends in a DELETED event).
    pub value: Vec<u8>,
    /// The object before the change (`None` for [`EventKind::Added`]).
    pub prev_value: Option<Vec<u8>>,
    /// The revision of the change (for Deleted: the deletion's revision).
    pub revision: i64,
}

/// A stream of watch events; it ends with an `Err` (then nothing more) on failure.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// The API server's storage: a revisioned key-value store with watch.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The live object at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Stored>>;

    /// The live objects whose keys start with `prefix` (use a trailing `/`:
    /// `/registry/pods/ns1/` does not match `ns10`), in key order, paginated.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult>;

    /// Create `key`; the new revision. [`Error::AlreadyExists`] if it is live.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64>;

    /// Replace `key`'s value; the new revision. [`Error::NotFound`] if it is
    /// not live; [`Error::Conflict`] if `expected_mod_revision` is given and is
    /// not the current `mod_revision`.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64>;

    /// Delete `key`; the deletion's revision and the deleted value. Errors as
    /// for [`Storage::update`].
    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, Stored)>;

    /// Every change under `prefix` with revision `> from_revision`, in order,
    /// then live changes. [`Error::Compacted`] (as the call's error or the
    /// stream's last item) when that history is gone.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream>;

    /// The store's current revision (that of the last write).
    async fn current_revision(&self) -> Result<i64>;

    /// Forget history older than `revision` (the state at `revision` stays readable).
    async fn compact(&self, revision: i64) -> Result<()>;
}

/// The key of a namespaced (`Some(namespace)`) or cluster-scoped object:
/// `/registry/<resource>/<namespace>/<name>` or `/registry/<resource>/<name>`.
pub fn object_key(resource: &str, namespace: Option<&str>, name: &str) -> Result<String> {
    let mut key = collection_prefix(resource, namespace)?;
    check_segment(name, "name")?;
    key.push_str(name);
    Ok(key)
}

/// The list/watch prefix of a resource (`namespace: None`: all namespaces, or
/// a cluster-scoped resource) — always with a trailing `/`.
pub fn collection_prefix(resource: &str, namespace: Option<&str>) -> Result<String> {
    check_segment(resource, "resource")?;
    let mut key = format!("{REGISTRY_ROOT}{resource}/");
    if let Some(ns) = namespace {
        check_segment(ns, "namespace")?;
        key.push_str(ns);
        key.push('/');
    }
    Ok(key)
}

fn check_segment(segment: &str, what: &str) -> Result<()> {
    if segment.is_empty() || segment.contains('/') || segment == "." || segment == ".." {
        return Err(Error::InvalidArgument {
            key: segment.to_string(),
            reason: format!("a {what} must be non-empty and contain no '/'"),
        });
    }
    Ok(())
}

/// The first key after every key starting with `prefix` (etcd's range end);
/// `None` when there is none (empty or all-0xff prefix: the range is unbounded).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Set `metadata.resourceVersion` of a JSON object to `revision` (as a
/// string, as Kubernetes does), creating `metadata` if needed. Fails when the
/// value is not an object, or its `metadata` is not.
pub fn set_resource_version(object: &mut serde_json::Value, revision: i64) -> Result<(), String> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| "the stored value is not a JSON object".to_string())?;
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| "metadata is not a JSON object".to_string())?;
    meta.insert(
        "resourceVersion".to_string(),
        serde_json::Value::String(revision.to_string()),
    );
    Ok(())
}

/// Parse stored bytes and stamp their `metadata.resourceVersion` (see [`set_resource_version`]).
pub fn decode_with_resource_version(
    value: &[u8],
    revision: i64,
) -> Result<serde_json::Value, String> {
    let mut object: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("stored value is not JSON: {e}"))?;
    set_resource_version(&mut object, revision)?;
    Ok(object)
}

/// The opaque continue token: the last key returned and the list's revision.
/// Encoded as `<revision>:<hex(last key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    /// The last key of the previous page; the next page starts after it.
    pub last_key: String,
    /// The revision every page is read at.
    pub revision: i64,
}

impl ContinueToken {
    /// Decode a token and check it belongs to `prefix`.
    pub fn decode(token: &str, prefix: &str) -> Result<ContinueToken> {
        let invalid = |reason: &str| Error::InvalidArgument {
            key: token.to_string(),
            reason: format!("invalid continue token: {reason}"),
        };
        let (rev, key) = token.split_once(':').ok_or_else(|| invalid("no ':'"))?;
        let revision: i64 = rev.parse().map_err(|_| invalid("bad revision"))?;
        if revision <= 0 {
            return Err(invalid("bad revision"));
        }
        let key = hex::decode(key).map_err(|_| invalid("bad key encoding"))?;
        let last_key = String::from_utf8(key).map_err(|_| invalid("key is not UTF-8"))?;
        if !last_key.starts_with(prefix) {
            return Err(invalid("it belongs to another list"));
        }
        Ok(ContinueToken { last_key, revision })
    }
}

impl fmt::Display for ContinueToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.revision, hex::encode(&self.last_key))
    }
}

/// Resolve a list's start key (exclusive) and revision from its options:
/// `(after_key, revision)`; revision 0 = latest.
pub(crate) fn list_start(prefix: &str, options: &ListOptions) -> Result<(Option<String>, i64)> {
    match &options.continue_key {
        Some(token) if !token.is_empty() => {
            let t = ContinueToken::decode(token, prefix)?;
            Ok((Some(t.last_key), t.revision))
        }
        _ => {
            let rev = options.revision.unwrap_or(0);
            if rev < 0 {
                return Err(Error::InvalidArgument {
                    key: prefix.to_string(),
                    reason: format!("negative revision {rev}"),
                });
            }
            Ok((None, rev))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            object_key("pods", Some("ns1"), "web").unwrap(),
            "/registry/pods/ns1/web"
        );
        assert_eq!(
            object_key("nodes", None, "n1").unwrap(),
            "/registry/nodes/n1"
        );
        assert_eq!(
            collection_prefix("pods", Some("ns1")).unwrap(),
            "/registry/pods/ns1/"
        );
        assert!(object_key("pods", Some("a/b"), "x").is_err());
        assert!(object_key("pods", None, "").is_err());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn resource_version() {
        let v = decode_with_resource_version(br#"{"kind":"Pod"}"#, 42).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        let mut v = serde_json::json!({"metadata": {"name": "x", "resourceVersion": "1"}});
        set_resource_version(&mut v, 7).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert_eq!(v["metadata"]["name"], "x");
        assert!(set_resource_version(&mut serde_json::json!([1]), 1).is_err());
        assert!(set_resource_version(&mut serde_json::json!({"metadata": 1}), 1).is_err());
    }

    #[test]
    fn continue_tokens() {
        let t = ContinueToken {
            last_key: "/registry/pods/ns1/b".into(),
            revision: 12,
        };
        let s = t.to_string();
        assert_eq!(ContinueToken::decode(&s, "/registry/pods/ns1/").unwrap(), t);
        assert!(ContinueToken::decode(&s, "/registry/pods/ns2/").is_err());
        assert!(ContinueToken::decode("garbage", "/").is_err());
        assert!(ContinueToken::decode("-1:00", "").is_err());
    }
}
