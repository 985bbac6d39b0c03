//! The orphan sweep: upstream's `HandlePodCleanups`, run every
//! [`HOUSEKEEPING_PERIOD`].
//!
//! The agent learns of pods from its sources and from the runtime. A pod that
//! is in neither any more — its manifest deleted while the agent was down
//! between `RemovePodSandbox` and its own clean-up, or during a
//! `RunPodSandbox` that never finished — leaves what only the agent made: its
//! directory under `<root-dir>/pods/<uid>` (volumes, tmpfs mounts of
//! memory-backed emptyDirs), its log directory
//! `<pod-logs-dir>/<namespace>_<name>_<uid>` and its pod cgroup. The sweep
//! lists all three, keeps every UID that is desired, held by the runtime or
//! has a pod worker, and hands each remaining UID to a pod worker: the worker
//! of a pod neither desired nor running removes everything of it by UID
//! (unmounting first, refusing to delete under a live mount), serialised with
//! any other sync of that UID, so the sweep never races a pod coming back.
//!
//! It runs only once the runtime has been relisted and every source has
//! listed (before that, "not desired" means "not read yet").

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Uid;
use crate::pleg::RuntimeCache;
use crate::runtime::log_dir_uid;
use crate::source::PodConfig;
use crate::workers::PodWorkers;

/// How often the sweep looks for orphans (upstream's housekeeping runs every
/// 2 s; a directory listing and a cgroup walk are cheap, but the agent aims
/// at near-zero idle CPU, and orphans are rare).
pub const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(10);

/// Every pod UID something of is left on the node: pod directories, log
/// directories, pod cgroups.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub pod_dirs: Vec<Uid>,
    pub log_dirs: Vec<Uid>,
    pub cgroups: Vec<Uid>,
}

impl Leftovers {
    /// Read them from the host.
    pub fn read(
        volumes: &berth_plugins::VolumeManager,
        pod_logs_dir: &Path,
        cgroups: &crate::cgroups::PodCgroups,
    ) -> Self {
        let pod_dirs = volumes.pod_dirs().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "housekeeping: listing pod directories failed");
            Vec::new()
        });
        let log_dirs = match std::fs::read_dir(pod_logs_dir) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(log_dir_uid)
                        .map(str::to_string)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Self {
            pod_dirs,
            log_dirs,
            cgroups: cgroups.pod_uids(),
        }
    }

    /// The UIDs left over that `keep` does not hold, sorted, each once: those
    /// with directories (for a pod worker's removal), then those with only a
    /// cgroup.
    pub fn orphans(&self, keep: &HashSet<Uid>) -> (Vec<Uid>, Vec<Uid>) {
        let dirs: BTreeSet<&Uid> = self
            .pod_dirs
            .iter()
            .chain(&self.log_dirs)
            .filter(|uid| !keep.contains(*uid))
            .collect();
        let cgroups: BTreeSet<&Uid> = self
            .cgroups
            .iter()
            .filter(|uid| !keep.contains(*uid) && !dirs.contains(uid))
            .collect();
        (
            dirs.into_iter().cloned().collect(),
            cgroups.into_iter().cloned().collect(),
        )
    }
}

/// Run the sweep until `cancel`. `ready` says whether the sources have listed
/// (cluster mode: the API source); the runtime must have been relisted too.
pub fn spawn(
    workers: Arc<PodWorkers>,
    manager: Arc<crate::runtime::RuntimeManager>,
    pod_config: Arc<PodConfig>,
    cache: Arc<RuntimeCache>,
    ready: impl Fn() -> bool + Send + 'static,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Soon after the start (a restart is when orphans appear), then
        // every period.
        let mut wait = Duration::from_secs(2);
        // Busy orphaned cgroups are warned about once each.
        let mut reported = HashSet::new();
        loop {
            if !crate::util::sleep_or_cancel(&cancel, wait).await {
                return;
            }
            if !(ready() && cache.health().is_ok()) {
                wait = Duration::from_secs(2);
                continue;
            }
            wait = HOUSEKEEPING_PERIOD;
            let m = manager.clone();
            let Ok(leftovers) = tokio::task::spawn_blocking(move || {
                Leftovers::read(&m.volumes, &m.settings.pod_logs_dir, m.cgroups())
            })
            .await
            else {
                continue;
            };
            // Read after the host: a pod added meanwhile is kept.
            let keep: HashSet<Uid> = pod_config
                .uids()
                .into_iter()
                .chain(cache.uids())
                .chain(workers.uids())
                .collect();
            let (with_dirs, only_cgroups) = leftovers.orphans(&keep);
            for uid in with_dirs {
                tracing::info!(pod_uid = %uid, "housekeeping: removing what an orphaned pod left");
                workers.trigger(uid);
            }
            if only_cgroups.is_empty() {
                continue;
            }
            // The kubelet's `cleanupOrphanedPodCgroups`: asked again under
            // the lock pod cgroups are made under (a pod may just be back).
            let (m, desired) = (manager.clone(), pod_config.clone());
            let removed = tokio::task::spawn_blocking(move || {
                only_cgroups
                    .into_iter()
                    .map(|uid| {
                        let result = m
                            .cgroups()
                            .remove_orphan(&uid, |u| desired.get(u).is_none());
                        (uid, result)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (uid, result) in removed {
                match result {
                    Ok(true) => tracing::info!(pod_uid = %uid, "removed orphaned pod cgroup"),
                    Ok(false) => {}
                    Err(e) if reported.insert(uid.clone()) => tracing::warn!(
                        pod_uid = %uid,
                        error = %e,
                        "orphaned pod cgroup left in place"
                    ),
                    Err(e) => {
                        tracing::debug!(pod_uid = %uid, error = %e, "orphaned pod cgroup left in place")
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::log_dirs_of;

    #[test]
    fn log_dir_names_give_their_uid() {
        assert_eq!(log_dir_uid("default_web-node1_1234-ab"), Some("1234-ab"));
        assert_eq!(log_dir_uid("kube-system_a.b_u"), Some("u"));
        assert_eq!(log_dir_uid("default_web"), None);
        assert_eq!(log_dir_uid("_web_u"), None);
        assert_eq!(log_dir_uid("a_b_c_d"), None);
        assert_eq!(log_dir_uid("a__u"), None);
    }

    #[test]
    fn orphans_are_what_nothing_keeps() {
        let l = Leftovers {
            pod_dirs: vec!["a".into(), "b".into()],
            log_dirs: vec!["b".into(), "c".into()],
            cgroups: vec!["d".into(), "a".into()],
        };
        let keep = HashSet::from(["a".to_string(), "c".to_string()]);
        assert_eq!(
            l.orphans(&keep),
            (vec!["b".to_string()], vec!["d".to_string()])
        );
        let only_cgroup = Leftovers {
            pod_dirs: vec!["b".into()],
            cgroups: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(only_cgroup.orphans(&keep), (vec!["b".to_string()], vec![]));
        assert_eq!(Leftovers::default().orphans(&keep), (vec![], vec![]));
    }

    #[test]
    fn log_dirs_of_a_uid_are_found_by_suffix() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "default_web_u1",
            "kube-system_dns_u1",
            "default_web_u11",
            "x",
        ] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("default_file_u1"), "").unwrap();
        let mut found = log_dirs_of(dir.path(), "u1");
        found.sort();
        assert_eq!(
            found,
            vec![
                dir.path().join("default_web_u1"),
                dir.path().join("kube-system_dns_u1")
            ]
        );
        assert!(log_dirs_of(&dir.path().join("missing"), "u1").is_empty());
    }
}
