//! Pod sources: where desired pods come from.
//!
//! [`PodConfig`] holds the desired pods (keyed by UID) and the manifest errors;
//! [`file`] fills it from the manifest directory; [`manifest`] parses one file
//! into a defaulted, validated static pod. Every change of a pod (added, updated,
//! removed) is announced on the trigger channel so its worker syncs.
//! Pods are held per source ([`FILE_SOURCE`], and `api` when the agent talks
//! to an API server): each source replaces only its own pods.

pub mod file;
pub mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};

use crate::Uid;

/// A desired pod and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedPod {
    /// The pod as the agent runs it: defaulted, static-pod naming and UID applied.
    pub pod: Pod,
    /// The manifest file it was read from.
    pub file: PathBuf,
    /// Fields present in the manifest that the agent does not support (yet), as
    /// `field: reason`; logged once per pod and shown on the status endpoint.
    pub warnings: Vec<String>,
    /// A refusal recorded before (an API pod whose status says this node's
    /// admission rejected it, read back after a restart): it stays refused,
    /// as a pod Failed in the API never runs again.
    pub rejected: Option<Rejection>,
}

/// Why admission refused a pod: the status reason (`OutOfcpu`) and the
/// message (without upstream's "Pod was rejected: " prefix, which the status
/// adds). Here, beside the desired pods, so every layer can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
    /// `Some(grace)`: the pod was admitted, ran, and was evicted (reason
    /// `Evicted`, the message without the prefix); it is stopped within
    /// `grace` seconds and keeps its containers' statuses.
    pub evicted: Option<i64>,
}

/// A manifest that was rejected. The error names the file, the field and the reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ManifestError {
    pub file: PathBuf,
    /// The offending field as a path (`spec.containers[0].image`), when there is one.
    pub field: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.file.display(), field, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// One complete reading of a source: every pod it holds and every file it rejected.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pods: Vec<SourcedPod>,
    pub errors: Vec<ManifestError>,
}

/// The name of the manifest-directory source (the one [`PodConfig::apply`] fills).
pub const FILE_SOURCE: &str = "file";

/// The name of the API server's source (cluster mode); its pods' `file` is
/// this name too.
pub const API_SOURCE: &str = "api";

#[derive(Debug, Default)]
struct State {
    /// Pods by source name, then by UID.
    sources: BTreeMap<String, BTreeMap<Uid, SourcedPod>>,
    /// Rejected manifests by source name.
    errors: BTreeMap<String, Vec<ManifestError>>,
}

impl State {
    fn find(&self, uid: &str) -> Option<&SourcedPod> {
        self.sources.values().find_map(|pods| pods.get(uid))
    }
}

/// The desired pods, shared by the sources (writers) and the workers (readers).
#[derive(Debug)]
pub struct PodConfig {
    state: RwLock<State>,
    trigger: mpsc::UnboundedSender<Uid>,
    loaded: watch::Sender<bool>,
}

impl PodConfig {
    /// A config that announces every changed UID on `trigger`.
    pub fn new(trigger: mpsc::UnboundedSender<Uid>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(State::default()),
            trigger,
            loaded: watch::channel(false).0,
        })
    }

    /// Replace the file source's pods with `snapshot`, announce the UIDs that
    /// were added, changed or removed, and return them.
    pub fn apply(&self, snapshot: Snapshot) -> Vec<Uid> {
        self.apply_source(FILE_SOURCE, snapshot)
    }

    /// Replace the pods of `source` with `snapshot` (other sources keep theirs),
    /// announce the UIDs that were added, changed or removed, and return them.
    /// The first reading of the file source marks the config loaded.
    pub fn apply_source(&self, source: &str, snapshot: Snapshot) -> Vec<Uid> {
        let mut changed = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let mut next: BTreeMap<Uid, SourcedPod> = BTreeMap::new();
            for sp in snapshot.pods {
                let uid = uid_of(&sp.pod);
                next.insert(uid, sp);
            }
            let prev = state.sources.remove(source).unwrap_or_default();
            for (uid, sp) in &next {
                if prev.get(uid) != Some(sp) {
                    changed.push(uid.clone());
                }
            }
            for uid in prev.keys() {
                if !next.contains_key(uid) {
                    changed.push(uid.clone());
                }
            }
            state.sources.insert(source.to_string(), next);
            state.errors.insert(source.to_string(), snapshot.errors);
        }
        for uid in &changed {
            // A closed channel means the agent is shutting down; nothing to announce.
            let _ = self.trigger.send(uid.clone());
        }
        if source == FILE_SOURCE {
            self.loaded.send_replace(true);
        }
        changed
    }

    /// The desired pod with this UID, if any source holds it.
    pub fn get(&self, uid: &str) -> Option<SourcedPod> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.find(uid).cloned()
    }

    /// True once `source` has applied a first snapshot (until then, pods the
    /// runtime holds may be that source's and must not be removed).
    pub fn has_source(&self, source: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.sources.contains_key(source)
    }

    /// The desired pods of one source.
    pub fn source_pods(&self, source: &str) -> Vec<SourcedPod> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .sources
            .get(source)
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `f(uid, pod, file)` for each pod of `source`, without copying the pods.
    pub fn for_each_source_pod(&self, source: &str, mut f: impl FnMut(&Uid, &Pod, &Path)) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(pods) = state.sources.get(source) {
            for (uid, sp) in pods {
                f(uid, &sp.pod, &sp.file);
            }
        }
    }

    /// Every desired pod, by UID.
    pub fn pods(&self) -> Vec<SourcedPod> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut all: BTreeMap<&Uid, &SourcedPod> = BTreeMap::new();
        for pods in state.sources.values() {
            all.extend(pods.iter());
        }
        all.into_values().cloned().collect()
    }

    /// The UIDs of every desired pod.
    pub fn uids(&self) -> Vec<Uid> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Uid> = state
            .sources
            .values()
            .flat_map(|pods| pods.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The manifests rejected in the latest reading (of every source).
    pub fn errors(&self) -> Vec<ManifestError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.errors.values().flatten().cloned().collect()
    }

    /// Wait until the first complete reading has been applied.
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        // Err only if the sender is gone, which it cannot be while `self` lives.
        let _ = rx.wait_for(|loaded| *loaded).await;
    }
}

/// The UID of a pod (empty if unset; sources always set it).
pub fn uid_of(pod: &Pod) -> Uid {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// True for a pod being deleted (`metadata.deletionTimestamp` set): still
/// desired in the sense that its worker owns it, but never run again; the worker
/// stops it within [`termination_grace`].
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The grace period a terminating pod's deletion asked for
/// (`metadata.deletionGracePeriodSeconds`), if any: it overrides the spec's.
pub fn termination_grace(pod: &Pod) -> Option<i64> {
    pod.metadata
        .deletion_grace_period_seconds
        .filter(|_| is_terminating(pod))
        .map(|g| g.max(0))
}

/// `namespace/name` of a pod, for logs.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(uid: &str) -> SourcedPod {
        let mut pod = Pod::default();
        pod.metadata.uid = Some(uid.to_string());
        SourcedPod {
            pod,
            file: PathBuf::from("x"),
            warnings: Vec::new(),
            rejected: None,
        }
    }

    fn snap(uids: &[&str]) -> Snapshot {
        Snapshot {
            pods: uids.iter().map(|u| sp(u)).collect(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn sources_replace_only_their_own_pods() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = PodConfig::new(tx);
        assert!(!config.has_source("api"));
        assert_eq!(config.apply(snap(&["a", "b"])), vec!["a", "b"]);
        assert_eq!(config.apply_source("api", snap(&["c"])), vec!["c"]);
        assert!(config.has_source("api"));
        assert_eq!(config.uids(), vec!["a", "b", "c"]);
        // A new file reading leaves the api pods alone, and vice versa.
        assert_eq!(config.apply(snap(&["a"])), vec!["b"]);
        assert_eq!(config.apply_source("api", Snapshot::default()), vec!["c"]);
        assert_eq!(config.uids(), vec!["a"]);
        assert!(config.get("a").is_some() && config.get("c").is_none());
        assert_eq!(config.source_pods(FILE_SOURCE).len(), 1);
        let mut announced = Vec::new();
        while let Ok(uid) = rx.try_recv() {
            announced.push(uid);
        }
        assert_eq!(announced, vec!["a", "b", "c", "b", "c"]);
    }
}
