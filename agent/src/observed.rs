//! What the runtime reports about a pod: its sandboxes and containers, read
//! from CRI List*/Status calls and the kubelet's labels and annotations.
//!
//! Everything the agent needs to resume after a restart is here: the pod a
//! sandbox belongs to (labels), a container's spec hash and restart count
//! (annotations). Nothing about a pod's runtime state lives only in memory.

use std::collections::BTreeMap;

use berth_cri::api;

use crate::Uid;

/// Label and annotation keys, named as the kubelet names them.
pub mod keys {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
    pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
    pub const CONTAINER_TERMINATION_MESSAGE_PATH: &str =
        "io.kubernetes.container.terminationMessagePath";
    pub const CONTAINER_TERMINATION_MESSAGE_POLICY: &str =
        "io.kubernetes.container.terminationMessagePolicy";
    pub const CONTAINER_PORTS: &str = "io.kubernetes.container.ports";
    pub const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
    pub const POD_DELETION_GRACE_PERIOD: &str = "io.kubernetes.pod.deletionGracePeriod";
    /// berth's own label: whether a container is an init container (the kubelet
    /// tells them apart by its in-memory spec; berth keeps it in the runtime so a
    /// restarted agent reads it back).
    pub const CONTAINER_TYPE: &str = "io.berth.container.type";
    pub const CONTAINER_TYPE_INIT: &str = "init";
    pub const CONTAINER_TYPE_APP: &str = "app";
}

/// A pod sandbox as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedSandbox {
    pub id: String,
    pub uid: Uid,
    pub name: String,
    pub namespace: String,
    pub attempt: u32,
    pub ready: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Primary pod IP and any others, from PodSandboxStatus (empty when stopped
    /// or hostNetwork).
    pub ips: Vec<String>,
    /// Whether the sandbox shares the node's network namespace, from
    /// PodSandboxStatus (`None` when the runtime did not say).
    pub host_network: Option<bool>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The state of a container, as CRI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl From<i32> for ContainerState {
    fn from(value: i32) -> Self {
        match api::ContainerState::try_from(value) {
            Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
            _ => ContainerState::Unknown,
        }
    }
}

/// A container as the runtime reports it (ListContainers + ContainerStatus).
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    /// From the `io.kubernetes.container.hash` annotation.
    pub hash: String,
    /// From the `io.kubernetes.container.restartCount` annotation.
    pub restart_count: i32,
    /// True for init containers (the `io.berth.container.type` label).
    pub init: bool,
    /// Nanoseconds since the epoch (0 when unknown).
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// The runtime's reason (e.g. "Completed", "Error", "OOMKilled") and message.
    pub reason: String,
    pub message: String,
    /// The image as the user wrote it and the resolved image reference.
    pub image: String,
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Everything the runtime holds for one pod UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedPod {
    pub uid: Uid,
    /// Newest first (by `created_at`).
    pub sandboxes: Vec<ObservedSandbox>,
    /// Newest first (by `created_at`).
    pub containers: Vec<ObservedContainer>,
}

impl ObservedPod {
    /// The newest sandbox, ready or not.
    pub fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.first()
    }

    /// The newest ready sandbox.
    pub fn ready_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.iter().find(|s| s.ready)
    }

    /// The newest container of this name (any sandbox, any state).
    pub fn latest_container(&self, name: &str, init: bool) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .find(|c| c.name == name && c.init == init)
    }

    /// Order sandboxes and containers newest first (by creation time).
    pub fn sort_newest_first(&mut self) {
        self.sandboxes
            .sort_by_key(|s| std::cmp::Reverse(s.created_at));
        self.containers
            .sort_by_key(|c| std::cmp::Reverse(c.created_at));
    }

    /// True when nothing of the pod is left in the runtime.
    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && self.containers.is_empty()
    }
}

/// Build an [`ObservedSandbox`] from a ListPodSandbox entry and, when known, its status.
pub fn sandbox_from_cri(
    sb: &api::PodSandbox,
    status: Option<&api::PodSandboxStatus>,
) -> Option<ObservedSandbox> {
    let labels: BTreeMap<String, String> = sb.labels.clone().into_iter().collect();
    let uid = labels.get(keys::POD_UID)?.clone();
    let meta = sb.metadata.clone().unwrap_or_default();
    let mut ips = Vec::new();
    if let Some(net) = status.and_then(|s| s.network.as_ref()) {
        if !net.ip.is_empty() {
            ips.push(net.ip.clone());
        }
        ips.extend(net.additional_ips.iter().map(|ip| ip.ip.clone()));
    }
    let host_network = status
        .and_then(|s| s.linux.as_ref())
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .map(|o| o.network == api::NamespaceMode::Node as i32);
    Some(ObservedSandbox {
        id: sb.id.clone(),
        host_network,
        uid,
        name: meta.name,
        namespace: meta.namespace,
        attempt: meta.attempt,
        ready: sb.state == api::PodSandboxState::SandboxReady as i32,
        created_at: sb.created_at,
        ips,
        labels,
        annotations: sb.annotations.clone().into_iter().collect(),
    })
}

/// Build an [`ObservedContainer`] from a ListContainers entry and, when known, its status.
pub fn container_from_cri(
    c: &api::Container,
    status: Option<&api::ContainerStatus>,
) -> Option<ObservedContainer> {
    let labels: BTreeMap<String, String> = c.labels.clone().into_iter().collect();
    // Only containers created by a kubelet-shaped agent carry these.
    labels.get(keys::POD_UID)?;
    let annotations: BTreeMap<String, String> = c.annotations.clone().into_iter().collect();
    let meta = c.metadata.clone().unwrap_or_default();
    let name = labels
        .get(keys::CONTAINER_NAME)
        .cloned()
        .unwrap_or(meta.name);
    let state = status
        .map(|s| ContainerState::from(s.state))
        .unwrap_or_else(|| ContainerState::from(c.state));
    Some(ObservedContainer {
        id: c.id.clone(),
        sandbox_id: c.pod_sandbox_id.clone(),
        name,
        attempt: meta.attempt,
        state,
        hash: annotations
            .get(keys::CONTAINER_HASH)
            .cloned()
            .unwrap_or_default(),
        restart_count: annotations
            .get(keys::CONTAINER_RESTART_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        init: labels.get(keys::CONTAINER_TYPE).map(String::as_str)
            == Some(keys::CONTAINER_TYPE_INIT),
        created_at: c.created_at,
        started_at: status.map(|s| s.started_at).unwrap_or(0),
        finished_at: status.map(|s| s.finished_at).unwrap_or(0),
        exit_code: status.map(|s| s.exit_code).unwrap_or(0),
        reason: status.map(|s| s.reason.clone()).unwrap_or_default(),
        message: status.map(|s| s.message.clone()).unwrap_or_default(),
        image: c
            .image
            .as_ref()
            .map(|i| {
                if i.user_specified_image.is_empty() {
                    i.image.clone()
                } else {
                    i.user_specified_image.clone()
                }
            })
            .unwrap_or_default(),
        image_ref: status
            .map(|s| s.image_ref.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| c.image_ref.clone()),
        labels,
        annotations,
    })
}

/// The kubelet's limit on a message taken from the log (`FallbackToLogsOnError`).
const FALLBACK_LOG_BYTES: usize = 2048;
/// How many log lines `FallbackToLogsOnError` looks at.
const FALLBACK_LOG_LINES: usize = 80;

/// Fill in an exited container's message as the kubelet does: from its
/// termination-message file, or, with `FallbackToLogsOnError` and a failure,
/// from the tail of its log. Read once, when the exited status is first seen.
pub fn fill_termination_message(status: &mut api::ContainerStatus) {
    if status.state != api::ContainerState::ContainerExited as i32 || !status.message.is_empty() {
        return;
    }
    let path = status
        .annotations
        .get(keys::CONTAINER_TERMINATION_MESSAGE_PATH)
        .cloned()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let from_file = status
        .mounts
        .iter()
        .find(|m| m.container_path == path)
        .and_then(|m| {
            berth_plugins::read_termination_message(
                std::path::Path::new(&m.host_path),
                berth_plugins::MAX_TERMINATION_MESSAGE_LENGTH,
            )
            .ok()
            .flatten()
        })
        .filter(|m| !m.is_empty());
    if let Some(message) = from_file {
        status.message = message;
        return;
    }
    let policy = status
        .annotations
        .get(keys::CONTAINER_TERMINATION_MESSAGE_POLICY)
        .map(String::as_str);
    if policy == Some("FallbackToLogsOnError") && status.exit_code != 0 {
        status.message = log_tail(std::path::Path::new(&status.log_path));
    }
}

/// The last lines of a CRI-format log (`<time> <stream> <tag> <text>`), as text.
fn log_tail(path: &std::path::Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = lines.len().saturating_sub(FALLBACK_LOG_LINES);
    let mut out = String::new();
    for line in &lines[start..] {
        // The same parser as `containerLogs`; a partial record ("P") has no
        // line end, so it joins the next one.
        if let Some(record) = crate::crilog::parse_cri_record(line.as_bytes()) {
            out.push_str(&String::from_utf8_lossy(record.message));
        }
    }
    if out.len() > FALLBACK_LOG_BYTES {
        let mut cut = out.len() - FALLBACK_LOG_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_strips_cri_prefixes_and_joins_partials() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00Z stdout F first\n2026-01-01T00:00:01Z stderr P par\n2026-01-01T00:00:01Z stderr F tial\n",
        )
        .unwrap();
        assert_eq!(log_tail(&log), "first\npartial\n");
    }

    #[test]
    fn message_from_file_then_log_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let msg = dir.path().join("termination");
        std::fs::write(&msg, "bye").unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "2026-01-01T00:00:00Z stdout F boom\n").unwrap();
        let mut status = api::ContainerStatus {
            state: api::ContainerState::ContainerExited as i32,
            exit_code: 1,
            log_path: log.display().to_string(),
            mounts: vec![api::Mount {
                container_path: "/dev/termination-log".into(),
                host_path: msg.display().to_string(),
                ..Default::default()
            }],
            annotations: [(
                keys::CONTAINER_TERMINATION_MESSAGE_POLICY.to_string(),
                "FallbackToLogsOnError".to_string(),
            )]
            .into(),
            ..Default::default()
        };
        let mut with_file = status.clone();
        fill_termination_message(&mut with_file);
        assert_eq!(with_file.message, "bye");
        std::fs::write(&msg, "").unwrap();
        fill_termination_message(&mut status);
        assert_eq!(status.message, "boom\n");
    }
}
