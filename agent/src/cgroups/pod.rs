//! Pod and QoS cgroups (the kubelet's pod container manager and QoS
//! container manager): where a pod's cgroup goes, its values, the QoS tiers'
//! values as pods come and go, and its removal.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;

use super::resources::{self, MIN_SHARES, QUOTA_PERIOD, ResourceConfig};
use super::{CgroupError, CgroupManager, CgroupName};

/// The QoS tier directories below the cgroup root (Guaranteed pods sit in the root).
const BURSTABLE: &str = "burstable";
const BEST_EFFORT: &str = "besteffort";

/// The pod cgroups below one cgroup root.
#[derive(Debug, Clone)]
pub struct PodCgroups {
    manager: Arc<dyn CgroupManager>,
    root: CgroupName,
    /// `--cpu-cfs-quota`: CPU limits become a CFS quota.
    pub enforce_cpu_limits: bool,
    /// `--cpu-cfs-quota-period`, µs.
    pub cpu_period: u64,
    /// `--pod-max-pids` (-1: unlimited).
    pub pod_pids_limit: i64,
    /// The cgroup root's own values (`kubepods`: the node's allocatable, or
    /// its capacity when allocatable is not enforced), set with the tiers.
    pub node_config: ResourceConfig,
    /// Pods whose cgroup is being removed, and the lock every pod cgroup
    /// change takes: a pod that comes back (a static pod's UID repeats)
    /// takes its UID out, so a late retry of the old removal does nothing.
    removing: Arc<Mutex<HashSet<String>>>,
}

impl PodCgroups {
    /// Pod cgroups under `root` (a cgroupfs path, e.g. `/kubepods`).
    pub fn new(
        manager: Arc<dyn CgroupManager>,
        root: &str,
    ) -> Result<Self, super::names::InvalidName> {
        Ok(PodCgroups {
            manager,
            root: CgroupName::from_cgroupfs(root)?,
            enforce_cpu_limits: true,
            cpu_period: QUOTA_PERIOD,
            pod_pids_limit: -1,
            node_config: ResourceConfig::default(),
            removing: Arc::default(),
        })
    }

    /// The manager underneath.
    pub fn manager(&self) -> &Arc<dyn CgroupManager> {
        &self.manager
    }

    fn child(&self, name: &CgroupName, component: &str) -> Result<CgroupName, CgroupError> {
        name.child(component)
            .map_err(|e| CgroupError::Unsupported(e.to_string()))
    }

    /// The tier of a QoS class.
    fn tier(&self, qos: &str) -> Result<CgroupName, CgroupError> {
        match qos {
            berth_api::qos::GUARANTEED => Ok(self.root.clone()),
            berth_api::qos::BURSTABLE => self.child(&self.root, BURSTABLE),
            _ => self.child(&self.root, BEST_EFFORT),
        }
    }

    /// A pod's cgroup: `pod<uid>` in its QoS class's tier.
    pub fn pod_name(&self, pod: &Pod) -> Result<CgroupName, CgroupError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let tier = self.tier(berth_api::qos::pod_qos_class(pod))?;
        self.child(&tier, &format!("pod{uid}"))
    }

    /// The pod's cgroup as the runtime is given it (the sandbox's cgroup parent).
    pub fn cgroup_parent(&self, pod: &Pod) -> Result<String, CgroupError> {
        Ok(self.manager.name(&self.pod_name(pod)?))
    }

    /// Make the root with the node's values and the QoS tiers (BestEffort at
    /// the least shares), as the kubelet does at start; every call sets the
    /// values again (level-triggered: a value changed behind our back returns).
    pub fn ensure_qos_cgroups(&self) -> Result<(), CgroupError> {
        self.manager.create(&self.root, &self.node_config)?;
        self.manager.create(
            &self.tier(berth_api::qos::BURSTABLE)?,
            &ResourceConfig::default(),
        )?;
        self.manager.create(
            &self.tier(berth_api::qos::BEST_EFFORT)?,
            &ResourceConfig {
                cpu_shares: Some(MIN_SHARES),
                ..Default::default()
            },
        )
    }

    /// The QoS tiers' values for the node's pods (`UpdateCgroups`):
    /// Burstable's shares from the sum of its pods' CPU requests, BestEffort's
    /// the least. A pod whose requests do not parse counts nothing.
    pub fn update_qos_cgroups<'a>(
        &self,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Result<(), CgroupError> {
        let burstable_milli_cpu = pods
            .into_iter()
            .filter(|p| berth_api::qos::pod_qos_class(p) == berth_api::qos::BURSTABLE)
            .filter_map(|p| {
                berth_api::resource::pod_requests(p.spec.as_ref()?)
                    .ok()
                    .map(|r| r.requests.milli_cpu)
            })
            .fold(0i64, i64::saturating_add);
        let burstable = ResourceConfig {
            cpu_shares: Some(resources::milli_cpu_to_shares(burstable_milli_cpu)),
            ..Default::default()
        };
        let best_effort = ResourceConfig {
            cpu_shares: Some(MIN_SHARES),
            ..Default::default()
        };
        for (name, config) in [
            (self.tier(berth_api::qos::BURSTABLE)?, burstable),
            (self.tier(berth_api::qos::BEST_EFFORT)?, best_effort),
        ] {
            if self.manager.exists(&name) {
                self.manager.update(&name, &config)?;
            } else {
                self.manager.create(&name, &config)?;
            }
        }
        Ok(())
    }

    fn removing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.removing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make the pod's cgroup with its values unless it exists
    /// (`EnsureExists`: an existing pod cgroup is not set again).
    pub fn ensure_pod(&self, pod: &Pod) -> Result<(), CgroupError> {
        let name = self.pod_name(pod)?;
        let mut removing = self.removing();
        removing.remove(pod.metadata.uid.as_deref().unwrap_or_default());
        if self.manager.exists(&name) {
            return Ok(());
        }
        let config = resources::resource_config_for_pod(
            pod,
            self.enforce_cpu_limits,
            self.cpu_period,
            self.pod_pids_limit,
        )
        .map_err(|e| CgroupError::Unsupported(format!("pod resources: {e}")))?;
        self.manager.create(&name, &config)
    }

    /// Remove pod `uid`'s cgroup (the pod is gone from the runtime) from
    /// whichever tier holds it: processes still in it are killed first
    /// (SIGKILL, as upstream's `Destroy`), then the cgroup is removed.
    /// [`CgroupError::Busy`] when something is still letting go of it: then
    /// [`retry_destroy_pod`](Self::retry_destroy_pod) later.
    pub fn destroy_pod(&self, uid: &str) -> Result<(), CgroupError> {
        let mut removing = self.removing();
        removing.insert(uid.to_string());
        let result = self.destroy_tiers(uid, true);
        if result.is_ok() {
            removing.remove(uid);
        }
        result
    }

    /// Try again to remove pod `uid`'s cgroup, without killing anything:
    /// `None` when the pod came back meanwhile (its cgroup is its new one's).
    pub fn retry_destroy_pod(&self, uid: &str) -> Option<Result<(), CgroupError>> {
        let mut removing = self.removing();
        if !removing.contains(uid) {
            return None;
        }
        let result = self.destroy_tiers(uid, false);
        if result.is_ok() {
            removing.remove(uid);
        }
        Some(result)
    }

    /// The UIDs of the pod cgroups in the tiers (the kubelet's
    /// `GetAllPodsFromCgroups`).
    pub fn pod_uids(&self) -> Vec<String> {
        let mut uids = Vec::new();
        for qos in [
            berth_api::qos::GUARANTEED,
            berth_api::qos::BURSTABLE,
            berth_api::qos::BEST_EFFORT,
        ] {
            let Ok(tier) = self.tier(qos) else { continue };
            uids.extend(
                self.manager
                    .children(&tier)
                    .into_iter()
                    .filter_map(|c| c.strip_prefix("pod").map(str::to_string))
                    .filter(|u| !u.is_empty()),
            );
        }
        uids.sort();
        uids.dedup();
        uids
    }

    /// Remove the cgroup of a pod the node no longer has (an orphan, e.g.
    /// left by a `kill -9` mid-removal). `still_orphan` is asked again under
    /// the lock pod cgroups are made under, so a pod that has just come back
    /// (a static pod's UID repeats) keeps the cgroup it was given. Nothing is
    /// killed: a cgroup that still has processes stays, and the error says so.
    /// `Ok(false)`: left alone (its pod's own removal is still retrying, or
    /// the pod is back).
    pub fn remove_orphan(
        &self,
        uid: &str,
        still_orphan: impl Fn(&str) -> bool,
    ) -> Result<bool, CgroupError> {
        let removing = self.removing();
        if removing.contains(uid) || !still_orphan(uid) {
            return Ok(false);
        }
        self.destroy_tiers(uid, false).map(|()| true)
    }

    /// Give up removing pod `uid`'s cgroup.
    pub fn forget_pod(&self, uid: &str) {
        self.removing().remove(uid);
    }

    fn destroy_tiers(&self, uid: &str, kill: bool) -> Result<(), CgroupError> {
        let component = format!("pod{uid}");
        let mut first_error = None;
        for qos in [
            berth_api::qos::GUARANTEED,
            berth_api::qos::BURSTABLE,
            berth_api::qos::BEST_EFFORT,
        ] {
            let name = self.child(&self.tier(qos)?, &component)?;
            if kill {
                for pid in self.manager.pids(&name) {
                    if pid > 1 {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            if let Err(e) = self.manager.destroy(&name) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Call, Driver, RecordingManager};
    use super::*;

    fn pod(uid: &str, resources: &str) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata": {{"uid": "{uid}"}}, "spec": {{"containers": [{{"name": "a", "resources": {resources}}}]}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn pods_go_to_their_tier_with_their_values_once() {
        let fake = Arc::new(RecordingManager::new(Driver::Cgroupfs));
        let pods = PodCgroups::new(fake.clone(), "/kubepods").unwrap();
        pods.ensure_qos_cgroups().unwrap();
        let g = pod("g-1", r#"{"limits": {"cpu": "1", "memory": "1Gi"}}"#);
        // Requests default from limits only through defaulting: spell them.
        let g = {
            let mut g = g;
            let c = &mut g.spec.as_mut().unwrap().containers[0];
            let r = c.resources.as_mut().unwrap();
            r.requests = r.limits.clone();
            g
        };
        let b = pod("b-2", r#"{"requests": {"cpu": "250m"}}"#);
        let be = pod("e-3", "{}");
        for p in [&g, &b, &be] {
            pods.ensure_pod(p).unwrap();
            pods.ensure_pod(p).unwrap();
        }
        assert_eq!(pods.cgroup_parent(&g).unwrap(), "/kubepods/podg-1");
        assert_eq!(
            pods.cgroup_parent(&b).unwrap(),
            "/kubepods/burstable/podb-2"
        );
        assert_eq!(
            pods.cgroup_parent(&be).unwrap(),
            "/kubepods/besteffort/pode-3"
        );
        let cgroups = fake.cgroups();
        assert_eq!(cgroups["/kubepods/podg-1"].memory, Some(1 << 30));
        assert_eq!(cgroups["/kubepods/podg-1"].cpu_quota, Some(100_000));
        assert_eq!(cgroups["/kubepods/burstable/podb-2"].cpu_shares, Some(256));
        assert_eq!(cgroups["/kubepods/besteffort/pode-3"].cpu_shares, Some(2));
        assert_eq!(cgroups["/kubepods/besteffort"].cpu_shares, Some(2));
        // Each pod's cgroup was made once: the second ensure found it.
        let creates = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Create(n, _) if n.contains("/pod")))
            .count();
        assert_eq!(creates, 3);

        // The burstable tier follows its pods' requests.
        let b2 = pod("b-4", r#"{"requests": {"cpu": "1500m"}}"#);
        pods.update_qos_cgroups([&g, &b, &be, &b2]).unwrap();
        assert_eq!(fake.cgroups()["/kubepods/burstable"].cpu_shares, Some(1792));
        pods.update_qos_cgroups([]).unwrap();
        assert_eq!(fake.cgroups()["/kubepods/burstable"].cpu_shares, Some(2));

        // Removal finds the pod in whichever tier; busy is reported and
        // retried.
        fake.fail_destroys_busy(1);
        assert!(matches!(
            pods.destroy_pod("b-2"),
            Err(CgroupError::Busy { .. })
        ));
        assert!(matches!(pods.retry_destroy_pod("b-2"), Some(Ok(()))));
        assert!(!fake.cgroups().contains_key("/kubepods/burstable/podb-2"));
        assert!(
            pods.retry_destroy_pod("b-2").is_none(),
            "done: nothing to retry"
        );

        // A pod that comes back while its old cgroup is being removed: the
        // retry leaves the new one alone.
        fake.fail_destroys_busy(3);
        assert!(pods.destroy_pod("e-3").is_err());
        pods.ensure_pod(&be).unwrap();
        let destroys = fake.calls().len();
        assert!(pods.retry_destroy_pod("e-3").is_none());
        assert_eq!(
            fake.calls().len(),
            destroys,
            "no call after the pod came back"
        );

        // Orphans: the pod cgroups in the tiers, by UID.
        assert_eq!(pods.pod_uids(), ["e-3", "g-1"]);
        pods.remove_orphan("e-3", |_| false).unwrap();
        assert_eq!(
            pods.pod_uids(),
            ["e-3", "g-1"],
            "a pod that came back keeps its cgroup"
        );
        pods.remove_orphan("g-1", |_| true).unwrap();
        assert_eq!(pods.pod_uids(), ["e-3"]);
    }

    #[test]
    fn the_systemd_driver_spells_the_same_tree_as_slices() {
        let fake = Arc::new(RecordingManager::new(Driver::Systemd));
        let pods = PodCgroups::new(fake.clone(), "/kubepods").unwrap();
        let b = pod("b-2", r#"{"requests": {"cpu": "250m"}}"#);
        assert_eq!(
            pods.cgroup_parent(&b).unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podb_2.slice"
        );
        // A UID that would leave the tree is refused, not used.
        let bad = pod("../../etc", "{}");
        assert!(pods.cgroup_parent(&bad).is_err());
    }
}
