//! Pod sources: where desired pods come from.
//!
//! [`PodConfig`] holds the desired pods (keyed by UID) and the manifest errors;
//! [`file`] fills it from the manifest directory; [`manifest`] parses one file
//! into a defaulted, validated static pod. Every change of a pod (added, updated,
//! removed) is announced on the trigger channel so its worker syncs.

mod defaults;
pub mod file;
pub mod manifest;
pub mod validation;

use std::collections::BTreeMap;
use std::path::PathBuf;
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

#[derive(Debug, Default)]
struct State {
    pods: BTreeMap<Uid, SourcedPod>,
    errors: Vec<ManifestError>,
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

    /// Replace everything with `snapshot`, announce the UIDs that were added,
    /// changed or removed, and return them.
    pub fn apply(&self, snapshot: Snapshot) -> Vec<Uid> {
        let mut changed = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let mut next: BTreeMap<Uid, SourcedPod> = BTreeMap::new();
            for sp in snapshot.pods {
                let uid = uid_of(&sp.pod);
                next.insert(uid, sp);
            }
            for (uid, sp) in &next {
                if state.pods.get(uid) != Some(sp) {
                    changed.push(uid.clone());
                }
            }
            for uid in state.pods.keys() {
                if !next.contains_key(uid) {
                    changed.push(uid.clone());
                }
            }
            state.pods = next;
            state.errors = snapshot.errors;
        }
        for uid in &changed {
            // A closed channel means the agent is shutting down; nothing to announce.
            let _ = self.trigger.send(uid.clone());
        }
        self.loaded.send_replace(true);
        changed
    }

    /// The desired pod with this UID, if any source holds it.
    pub fn get(&self, uid: &str) -> Option<SourcedPod> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.pods.get(uid).cloned()
    }

    /// Every desired pod, by UID.
    pub fn pods(&self) -> Vec<SourcedPod> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.pods.values().cloned().collect()
    }

    /// The UIDs of every desired pod.
    pub fn uids(&self) -> Vec<Uid> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.pods.keys().cloned().collect()
    }

    /// The manifests rejected in the latest reading.
    pub fn errors(&self) -> Vec<ManifestError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.errors.clone()
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

/// `namespace/name` of a pod, for logs.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}
