//! The RBAC policy cache: every ClusterRole, ClusterRoleBinding, Role and
//! RoleBinding decoded once and kept in memory, so authorizing a request reads
//! no storage (upstream's authorizer reads the same four kinds from informer
//! caches).
//!
//! Freshness, strongest first:
//!
//! - *Writes through this server* go through [`InvalidatingStorage`], which
//!   bumps the cache's generation as soon as a write under one of the four
//!   prefixes has committed, before the write's response is sent: the next
//!   request after `kubectl create rolebinding` returns sees the binding
//!   (read-your-writes, as berth had when it read storage on every request).
//! - *Writes by anyone else* (another API server on the same etcd, a tool
//!   writing storage directly) arrive through a watch of the four prefixes,
//!   which bumps the generation per event: eventually consistent, as
//!   upstream's informers are.
//! - While that watch is down (compaction, etcd restart) nothing is cached:
//!   every request loads the policy from storage until the watch is open
//!   again, so a gap can never serve a stale policy.
//!
//! A snapshot records the generation read *before* its lists started; it is
//! used only while the generation is unchanged, so a write racing a load
//! makes the next request load again. Loads are single-flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde::de::DeserializeOwned;

use super::{Source, UserInfo, applies_to, describe_subject};
use crate::api::error::ApiError;
use crate::storage::{
    ListOptions, ListResult, Result as StorageResult, Storage, Stored, WatchStream,
    collection_prefix,
};

/// The storage prefixes of the four RBAC kinds.
pub const PREFIXES: [&str; 4] = [
    "/registry/clusterroles/",
    "/registry/clusterrolebindings/",
    "/registry/roles/",
    "/registry/rolebindings/",
];

/// How long the watch waits before opening again after it failed.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

fn is_rbac_key(key: &str) -> bool {
    PREFIXES.iter().any(|p| key.starts_with(p))
}

/// What the cache, the storage wrapper and the watch task share.
#[derive(Debug, Default)]
struct Shared {
    /// Bumped on every RBAC change seen (local write or watch event).
    generation: AtomicU64,
    /// Whether the watch is open (snapshots are trusted only then).
    watching: AtomicBool,
    /// How many times the policy was loaded from storage.
    loads: AtomicU64,
}

impl Shared {
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The policy cache of one [`crate::api::ApiState`].
#[derive(Debug)]
pub struct PolicyCache {
    shared: Arc<Shared>,
    current: RwLock<Option<Arc<Snapshot>>>,
    load: tokio::sync::Mutex<()>,
    watch: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Default for PolicyCache {
    fn default() -> Self {
        PolicyCache::new()
    }
}

impl Drop for PolicyCache {
    fn drop(&mut self) {
        if let Ok(mut w) = self.watch.lock()
            && let Some(handle) = w.take()
        {
            handle.abort();
        }
    }
}

impl PolicyCache {
    /// An empty cache (the first request loads the policy).
    pub fn new() -> PolicyCache {
        PolicyCache {
            shared: Arc::new(Shared::default()),
            current: RwLock::new(None),
            load: tokio::sync::Mutex::new(()),
            watch: Mutex::new(None),
        }
    }

    /// `storage` wrapped so that its RBAC writes invalidate this cache: the
    /// storage the API server must write through.
    pub fn wrap(&self, storage: Arc<dyn Storage>) -> Arc<dyn Storage> {
        Arc::new(InvalidatingStorage {
            inner: storage,
            shared: self.shared.clone(),
        })
    }

    /// How many times the policy has been loaded from storage (a figure for
    /// tests and benchmarks: a steady state loads nothing).
    pub fn loads(&self) -> u64 {
        self.shared.loads.load(Ordering::Acquire)
    }

    /// The current policy: the cached snapshot while nothing changed and the
    /// watch is open, else a fresh load from `storage`.
    pub async fn snapshot(&self, storage: &Arc<dyn Storage>) -> Result<Arc<Snapshot>, ApiError> {
        self.ensure_watch(storage);
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let _single_flight = self.load.lock().await;
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        // Read the generation before listing: a change committed while the
        // lists run bumps it, and this snapshot is then never served again.
        let generation = self.shared.generation.load(Ordering::Acquire);
        let snap = Arc::new(Snapshot::load(storage.as_ref(), generation).await?);
        self.shared.loads.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut cur) = self.current.write() {
            *cur = Some(snap.clone());
        }
        Ok(snap)
    }

    /// The cached snapshot if it may be served.
    fn fresh(&self) -> Option<Arc<Snapshot>> {
        if !self.shared.watching.load(Ordering::Acquire) {
            return None;
        }
        let generation = self.shared.generation.load(Ordering::Acquire);
        let cur = self.current.read().ok()?;
        cur.as_ref().filter(|s| s.generation == generation).cloned()
    }

    /// Start the watch task once (it needs a runtime, which the first
    /// request brings).
    fn ensure_watch(&self, storage: &Arc<dyn Storage>) {
        let Ok(mut w) = self.watch.lock() else {
            return;
        };
        if w.is_some() {
            return;
        }
        let task = tokio::spawn(watch_loop(storage.clone(), self.shared.clone()));
        *w = Some(task.abort_handle());
    }
}

/// Watch the four prefixes; bump the generation per event; reopen on failure.
async fn watch_loop(storage: Arc<dyn Storage>, shared: Arc<Shared>) {
    loop {
        match open_watches(storage.as_ref()).await {
            Ok(mut events) => {
                // Changes before the watch's start revision are covered by
                // the load this bump forces.
                shared.changed();
                shared.watching.store(true, Ordering::Release);
                // However this ends (the stream fails, the task is aborted or
                // its runtime goes away), the cache stops trusting snapshots.
                let _open = WatchOpen(shared.clone());
                loop {
                    match events.next().await {
                        Some(Some(Ok(_))) => shared.changed(),
                        Some(Some(Err(e))) => {
                            tracing::debug!(error = %e, "RBAC policy watch ended; reopening");
                            break;
                        }
                        // One of the streams ended without an error, or all did.
                        Some(None) | None => break,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "RBAC policy watch could not be opened; policy not cached");
            }
        }
        tokio::time::sleep(REOPEN_BACKOFF).await;
    }
}

/// While alive, the watch is open; dropped, it marks the cache untrusted.
struct WatchOpen(Arc<Shared>);

impl Drop for WatchOpen {
    fn drop(&mut self) {
        self.0.watching.store(false, Ordering::Release);
        self.0.changed();
    }
}

type Merged = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, Option<StorageResult<crate::storage::WatchEvent>>>,
>;

/// The four watches from the current revision, merged; each stream ends with
/// a `None` item so that the end of any one of them is seen.
async fn open_watches(storage: &dyn Storage) -> StorageResult<Merged> {
    let from = storage.current_revision().await?;
    let mut streams = Vec::with_capacity(PREFIXES.len());
    for prefix in PREFIXES {
        let s = storage.watch(prefix, from).await?;
        streams.push(
            s.map(Some)
                .chain(futures::stream::once(async { None }))
                .boxed(),
        );
    }
    Ok(futures::stream::select_all(streams))
}

/// Every RBAC object at one moment, decoded and indexed.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// namespace → name → rules.
    roles: HashMap<String, HashMap<String, Vec<PolicyRule>>>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    /// namespace → bindings.
    role_bindings: HashMap<String, Vec<RoleBinding>>,
}

/// A binding that applies to a user, as [`Snapshot::bindings_for`] yields it.
pub struct Applicable<'a> {
    kind: BindingKind<'a>,
    subject: &'a Subject,
    /// The rules of the role it references, or why they are missing.
    pub rules: Result<&'a [PolicyRule], String>,
}

enum BindingKind<'a> {
    Cluster(&'a ClusterRoleBinding),
    Namespaced(&'a RoleBinding, &'a str),
}

impl Applicable<'_> {
    /// Upstream's describer: `ClusterRoleBinding "x" of ClusterRole "y" to User "z"`.
    pub fn source(&self) -> Source {
        match self.kind {
            BindingKind::Cluster(b) => Source(format!(
                "ClusterRoleBinding {:?} of {} {:?} to {}",
                b.metadata.name.as_deref().unwrap_or(""),
                b.role_ref.kind,
                b.role_ref.name,
                describe_subject(self.subject, "")
            )),
            BindingKind::Namespaced(b, ns) => Source(format!(
                "RoleBinding {:?} of {} {:?} to {}",
                format!("{}/{ns}", b.metadata.name.as_deref().unwrap_or("")),
                b.role_ref.kind,
                b.role_ref.name,
                describe_subject(self.subject, ns)
            )),
        }
    }
}

fn decode_all<T: DeserializeOwned>(page: &ListResult) -> Vec<T> {
    page.items
        .iter()
        .filter_map(|kv| match serde_json::from_slice::<T>(&kv.value) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "undecodable RBAC object skipped");
                None
            }
        })
        .collect()
}

async fn list_all(storage: &dyn Storage, resource: &str) -> Result<ListResult, ApiError> {
    let prefix =
        collection_prefix(resource, None).map_err(|e| ApiError::Internal(e.to_string()))?;
    storage
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| ApiError::from_storage(e, "", ""))
}

impl Snapshot {
    /// Load all four kinds from `storage`.
    pub async fn load(storage: &dyn Storage, generation: u64) -> Result<Snapshot, ApiError> {
        let mut snap = Snapshot {
            generation,
            ..Snapshot::default()
        };
        for r in decode_all::<ClusterRole>(&list_all(storage, "clusterroles").await?) {
            let name = r.metadata.name.clone().unwrap_or_default();
            snap.cluster_roles.insert(name, r.rules.unwrap_or_default());
        }
        for r in decode_all::<Role>(&list_all(storage, "roles").await?) {
            let ns = r.metadata.namespace.clone().unwrap_or_default();
            let name = r.metadata.name.clone().unwrap_or_default();
            snap.roles
                .entry(ns)
                .or_default()
                .insert(name, r.rules.unwrap_or_default());
        }
        snap.cluster_role_bindings =
            decode_all::<ClusterRoleBinding>(&list_all(storage, "clusterrolebindings").await?);
        for b in decode_all::<RoleBinding>(&list_all(storage, "rolebindings").await?) {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            snap.role_bindings.entry(ns).or_default().push(b);
        }
        Ok(snap)
    }

    /// `GetRoleReferenceRules`: the rules of the role a binding references
    /// (`namespace`: the binding's, for `Role` references), or upstream's
    /// message when the role is missing or the kind unknown.
    pub fn role_ref_rules(
        &self,
        role_ref: &RoleRef,
        namespace: &str,
    ) -> Result<&[PolicyRule], String> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&role_ref.name)
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io \"{}\" not found",
                        role_ref.name
                    )
                }),
            "Role" if !namespace.is_empty() => self
                .roles
                .get(namespace)
                .and_then(|m| m.get(&role_ref.name))
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io \"{}\" not found",
                        role_ref.name
                    )
                }),
            kind => Err(format!("unsupported role reference kind: {kind:?}")),
        }
    }

    /// `VisitRulesFor`'s walk: the ClusterRoleBindings that apply to `user`,
    /// then (for a non-empty `namespace`) the RoleBindings there, each with
    /// its role's rules. Lazy: the authorizer stops at the first allow.
    pub fn bindings_for<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
    ) -> impl Iterator<Item = Applicable<'a>> + 'a {
        let cluster = self.cluster_role_bindings.iter().filter_map(move |b| {
            let subject = b
                .subjects
                .iter()
                .flatten()
                .find(|s| applies_to(user, s, ""))?;
            Some(Applicable {
                kind: BindingKind::Cluster(b),
                subject,
                rules: self.role_ref_rules(&b.role_ref, ""),
            })
        });
        let namespaced = (!namespace.is_empty())
            .then(|| self.role_bindings.get(namespace))
            .flatten()
            .into_iter()
            .flatten()
            .filter_map(move |b| {
                let subject = b
                    .subjects
                    .iter()
                    .flatten()
                    .find(|s| applies_to(user, s, namespace))?;
                Some(Applicable {
                    kind: BindingKind::Namespaced(b, namespace),
                    subject,
                    rules: self.role_ref_rules(&b.role_ref, namespace),
                })
            });
        cluster.chain(namespaced)
    }
}

/// A [`Storage`] that tells its [`PolicyCache`] about every committed write
/// under the RBAC prefixes (see the module docs).
struct InvalidatingStorage {
    inner: Arc<dyn Storage>,
    shared: Arc<Shared>,
}

impl InvalidatingStorage {
    fn wrote<T>(&self, key: &str, result: StorageResult<T>) -> StorageResult<T> {
        if result.is_ok() && is_rbac_key(key) {
            self.shared.changed();
        }
        result
    }
}

#[async_trait::async_trait]
impl Storage for InvalidatingStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Stored>> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> StorageResult<ListResult> {
        self.inner.list(prefix, options).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> StorageResult<i64> {
        let r = self.inner.create(key, value).await;
        self.wrote(key, r)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> StorageResult<i64> {
        let r = self.inner.update(key, value, expected_mod_revision).await;
        self.wrote(key, r)
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> StorageResult<(i64, Stored)> {
        let r = self.inner.delete(key, expected_mod_revision).await;
        self.wrote(key, r)
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> StorageResult<WatchStream> {
        self.inner.watch(prefix, from_revision).await
    }

    async fn current_revision(&self) -> StorageResult<i64> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: i64) -> StorageResult<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Error;
    use crate::storage::sqlite::{SqliteOptions, SqliteStorage};

    /// A store whose watches cannot be opened (as etcd mid-restart).
    struct NoWatch(Arc<dyn Storage>);

    #[async_trait::async_trait]
    impl Storage for NoWatch {
        async fn get(&self, key: &str) -> StorageResult<Option<Stored>> {
            self.0.get(key).await
        }
        async fn list(&self, prefix: &str, options: ListOptions) -> StorageResult<ListResult> {
            self.0.list(prefix, options).await
        }
        async fn create(&self, key: &str, value: Vec<u8>) -> StorageResult<i64> {
            self.0.create(key, value).await
        }
        async fn update(&self, key: &str, value: Vec<u8>, rev: Option<i64>) -> StorageResult<i64> {
            self.0.update(key, value, rev).await
        }
        async fn delete(&self, key: &str, rev: Option<i64>) -> StorageResult<(i64, Stored)> {
            self.0.delete(key, rev).await
        }
        async fn watch(&self, prefix: &str, _from: i64) -> StorageResult<WatchStream> {
            Err(Error::Unavailable {
                key: prefix.into(),
                reason: "no watch in this test".into(),
            })
        }
        async fn current_revision(&self) -> StorageResult<i64> {
            self.0.current_revision().await
        }
        async fn compact(&self, revision: i64) -> StorageResult<()> {
            self.0.compact(revision).await
        }
    }

    fn role(name: &str) -> Vec<u8> {
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": []})
        .to_string()
        .into_bytes()
    }

    fn sqlite(dir: &std::path::Path) -> Arc<dyn Storage> {
        Arc::new(SqliteStorage::open(dir, SqliteOptions::default()).expect("sqlite"))
    }

    async fn settled(cache: &PolicyCache, storage: &Arc<dyn Storage>) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // The first call loads and starts the watch, whose opening forces
        // one more load: settled once two calls in a row load nothing.
        cache.snapshot(storage).await.expect("snapshot");
        loop {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let before = cache.loads();
            cache.snapshot(storage).await.expect("snapshot");
            cache.snapshot(storage).await.expect("snapshot");
            if cache.loads() == before {
                return before;
            }
            assert!(std::time::Instant::now() < deadline, "cache never settled");
        }
    }

    #[tokio::test]
    async fn cached_until_an_rbac_write_and_only_then() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PolicyCache::new();
        let storage = cache.wrap(sqlite(dir.path()));
        let loads = settled(&cache, &storage).await;
        for _ in 0..3 {
            cache.snapshot(&storage).await.expect("snapshot");
        }
        storage
            .create("/registry/pods/default/p", b"{}".to_vec())
            .await
            .expect("pod");
        cache.snapshot(&storage).await.expect("snapshot");
        assert_eq!(cache.loads(), loads, "a non-RBAC write reloaded");
        storage
            .create("/registry/clusterroles/r1", role("r1"))
            .await
            .expect("role");
        let snap = cache.snapshot(&storage).await.expect("snapshot");
        assert_eq!(cache.loads(), loads + 1);
        assert!(snap.cluster_roles.contains_key("r1"));
    }

    #[tokio::test]
    async fn nothing_is_cached_while_the_watch_is_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PolicyCache::new();
        let raw = sqlite(dir.path());
        let storage = cache.wrap(Arc::new(NoWatch(raw.clone())));
        for i in 1..=3u64 {
            cache.snapshot(&storage).await.expect("snapshot");
            assert_eq!(cache.loads(), i, "served a snapshot without a watch");
        }
        // A write behind the cache's back is seen at once.
        raw.create("/registry/clusterroles/r2", role("r2"))
            .await
            .expect("role");
        let snap = cache.snapshot(&storage).await.expect("snapshot");
        assert!(snap.cluster_roles.contains_key("r2"));
    }
}
