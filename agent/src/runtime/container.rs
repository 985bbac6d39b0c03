//! The container config, shaped as the kubelet's `generateContainerConfig`:
//! command and args with `$(VAR)` expansion, env (values and fieldRefs),
//! resources, security context, and the kubelet's labels and annotations.

use std::collections::{BTreeMap, HashMap};

use berth_cri::api;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use sha2::{Digest, Sha256};

use super::RuntimeManager;
use crate::observed::keys;

/// The kubelet's default masked paths for unprivileged containers.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The kubelet's default read-only paths for unprivileged containers.
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

use crate::cgroups::resources::{QUOTA_PERIOD, milli_cpu_to_quota, milli_cpu_to_shares};

/// A stable hash of a container's spec (the `io.kubernetes.container.hash`
/// annotation). A changed hash means the running container no longer matches
/// its spec and is replaced.
pub fn container_hash(container: &Container) -> String {
    // serde_json output of k8s-openapi types is deterministic (fixed field order,
    // sorted maps), so the same spec hashes the same across agent restarts.
    let json = serde_json::to_vec(container).unwrap_or_default();
    let digest = Sha256::digest(&json);
    hex::encode(&digest[..8])
}

/// Everything the container config needs besides the pod and the container.
pub struct ContainerContext<'a> {
    pub sandbox_id: &'a str,
    pub pod_ips: &'a [String],
    pub restart_count: i32,
    pub init: bool,
    /// The resolved image reference (image ID) to run.
    pub image_ref: &'a str,
    pub mounts: Vec<api::Mount>,
    /// The resolved environment ([`RuntimeManager::container_env`]).
    pub env: Vec<(String, String)>,
}

impl RuntimeManager {
    /// The CreateContainer config of `container` of `pod`.
    pub fn container_config(
        &self,
        pod: &Pod,
        container: &Container,
        ctx: ContainerContext<'_>,
    ) -> api::ContainerConfig {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let name = container.name.clone();

        let env = ctx.env;
        let env_map: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
            list.iter()
                .flatten()
                .map(|s| expand(s, |var| env_map.get(var).map(|v| v.to_string())))
                .collect()
        };

        let mut labels: HashMap<String, String> = HashMap::new();
        labels.insert(keys::POD_NAME.into(), meta.name.clone().unwrap_or_default());
        labels.insert(
            keys::POD_NAMESPACE.into(),
            meta.namespace.clone().unwrap_or_default(),
        );
        labels.insert(keys::POD_UID.into(), meta.uid.clone().unwrap_or_default());
        labels.insert(keys::CONTAINER_NAME.into(), name.clone());
        labels.insert(
            keys::CONTAINER_TYPE.into(),
            if ctx.init {
                keys::CONTAINER_TYPE_INIT
            } else {
                keys::CONTAINER_TYPE_APP
            }
            .into(),
        );

        let mut annotations: HashMap<String, String> = HashMap::new();
        annotations.insert(keys::CONTAINER_HASH.into(), container_hash(container));
        annotations.insert(
            keys::CONTAINER_RESTART_COUNT.into(),
            ctx.restart_count.to_string(),
        );
        annotations.insert(
            keys::CONTAINER_TERMINATION_MESSAGE_PATH.into(),
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        );
        annotations.insert(
            keys::CONTAINER_TERMINATION_MESSAGE_POLICY.into(),
            container
                .termination_message_policy
                .clone()
                .unwrap_or_else(|| "File".into()),
        );
        annotations.insert(
            keys::POD_TERMINATION_GRACE_PERIOD.into(),
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .to_string(),
        );
        if let Some(ports) = &container.ports
            && let Ok(json) = serde_json::to_string(ports)
        {
            annotations.insert(keys::CONTAINER_PORTS.into(), json);
        }
        // As the kubelet: the preStop hook runs even when the spec is gone.
        if let Some(pre_stop) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            && let Ok(json) = serde_json::to_string(pre_stop)
        {
            annotations.insert(super::hooks::PRE_STOP_HANDLER.into(), json);
        }

        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.clone(),
                attempt: ctx.restart_count.max(0) as u32,
            }),
            image: Some(api::ImageSpec {
                image: ctx.image_ref.to_string(),
                user_specified_image: container.image.clone().unwrap_or_default(),
                ..Default::default()
            }),
            command: expand_all(&container.command),
            args: expand_all(&container.args),
            working_dir: container.working_dir.clone().unwrap_or_default(),
            envs: env
                .iter()
                .map(|(key, value)| api::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: ctx.mounts,
            labels,
            annotations,
            log_path: format!("{name}/{}.log", ctx.restart_count),
            stdin: container.stdin.unwrap_or(false),
            stdin_once: container.stdin_once.unwrap_or(false),
            tty: container.tty.unwrap_or(false),
            linux: Some(self.linux_container_config(pod, container, ctx.init)),
            ..Default::default()
        }
    }

    /// Resources and security context of a container (cgroup v1 semantics, as the
    /// kubelet's `generateLinuxContainerConfig`).
    fn linux_container_config(
        &self,
        pod: &Pod,
        container: &Container,
        init: bool,
    ) -> api::LinuxContainerConfig {
        let spec = pod.spec.clone().unwrap_or_default();
        let resources = container.resources.clone().unwrap_or_default();
        let quantity =
            |map: &Option<
                BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >,
             key: &str| map.as_ref().and_then(|m| m.get(key)).cloned();
        // Validation refused quantities that do not parse; what is left saturates.
        let cpu = |q: Option<_>| {
            q.and_then(|q| berth_api::quantity::cpu_millis(&q).ok())
                .unwrap_or(0)
        };
        let mem = |q: Option<_>| {
            q.and_then(|q| berth_api::quantity::int_value(&q).ok())
                .unwrap_or(0)
        };
        let cpu_request = cpu(quantity(&resources.requests, "cpu"));
        let cpu_limit = cpu(quantity(&resources.limits, "cpu"));
        let mem_request = mem(quantity(&resources.requests, "memory"));
        let mem_limit = mem(quantity(&resources.limits, "memory"));

        let shares = if cpu_request == 0 && cpu_limit > 0 {
            milli_cpu_to_shares(cpu_limit)
        } else {
            milli_cpu_to_shares(cpu_request)
        };
        // At most MaxShares (262144): fits.
        let cpu_shares = i64::try_from(shares).unwrap_or(i64::MAX);
        // `--cpu-cfs-quota=false`: limits do not throttle (shares only).
        let (cpu_period, cpu_quota) = if cpu_limit > 0 && self.cgroups.enforce_cpu_limits {
            (
                i64::try_from(QUOTA_PERIOD).unwrap_or(i64::MAX),
                milli_cpu_to_quota(cpu_limit, QUOTA_PERIOD),
            )
        } else {
            (0, 0)
        };
        let oom_score_adj = match berth_api::qos::pod_qos_class(pod) {
            berth_api::qos::GUARANTEED => -997,
            berth_api::qos::BEST_EFFORT => 1000,
            _ => burstable_oom_score_adj(mem_request, crate::capacity::memory_bytes()),
        };

        let sc = container.security_context.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        let privileged = sc.privileged.unwrap_or(false);
        let capabilities = sc.capabilities.as_ref().map(|c| api::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        });
        // `procMount: Unmasked` (only ever admitted with a user namespace) and
        // privileged containers see /proc and /sys as they are.
        let unmasked = sc.proc_mount.as_deref() == Some(berth_api::validation::PROC_MOUNT_UNMASKED);
        let (masked, readonly) = if privileged || unmasked {
            (Vec::new(), Vec::new())
        } else {
            (
                DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                DEFAULT_READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        };
        let (apparmor, apparmor_profile) = self.apparmor(pod, container, init);
        // `apparmor_profile` is deprecated in CRI but, as the kubelet does, still
        // set beside `apparmor` for runtimes that read only the string.
        #[allow(deprecated)]
        api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period,
                cpu_quota,
                cpu_shares,
                memory_limit_in_bytes: mem_limit,
                oom_score_adj,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                capabilities,
                privileged,
                namespace_options: Some(super::sandbox::namespace_options(&spec)),
                run_as_user: sc
                    .run_as_user
                    .or(psc.run_as_user)
                    .map(|value| api::Int64Value { value }),
                run_as_group: sc
                    .run_as_group
                    .or(psc.run_as_group)
                    .map(|value| api::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: supplemental_groups(&psc),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                masked_paths: masked,
                readonly_paths: readonly,
                seccomp: Some(self.seccomp_profile(pod, Some(container))),
                apparmor,
                apparmor_profile,
                ..Default::default()
            }),
        }
    }

    /// The container's environment, in order (the kubelet's
    /// `makeEnvironmentVariables`): `envFrom` sources first (ConfigMap/Secret
    /// keys, with `prefix`; keys that are not valid variable names skipped
    /// with an `InvalidEnvironmentVariableNames` event), then `env` with
    /// `$(VAR)` references to earlier variables expanded, fieldRefs and
    /// configMapKeyRef/secretKeyRef resolved. A missing object or key that is
    /// not `optional` is the container's config error (`Err`, upstream's message:
    /// `configmap "x" not found`); messages never carry values.
    pub fn container_env(
        &self,
        pod: &Pod,
        container: &Container,
        pod_ips: &[String],
    ) -> Result<Vec<(String, String)>, String> {
        use berth_plugins::volume::{ApiObjects as _, ObjectKind};
        let ns = pod
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let get = |kind: ObjectKind, name: &str, optional: bool| match self
            .objects
            .get(kind, &ns, name)
        {
            Ok(Some(o)) => Ok(Some(o)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(format!("{} \"{name}\" not found", kind.noun())),
            Err(message) => Err(message),
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut defined: HashMap<String, String> = HashMap::new();
        let set = |out: &mut Vec<(String, String)>, name: &str, value: String| {
            if let Some(existing) = out.iter_mut().find(|(k, _)| k == name) {
                existing.1 = value;
            } else {
                out.push((name.to_string(), value));
            }
        };
        for from in container.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
                (Some(r), _) => (ObjectKind::ConfigMap, &r.name, r.optional.unwrap_or(false)),
                (None, Some(r)) => (ObjectKind::Secret, &r.name, r.optional.unwrap_or(false)),
                (None, None) => continue,
            };
            let Some(object) = get(kind, name, optional)? else {
                continue;
            };
            let mut invalid = Vec::new();
            for (k, v) in &object.data {
                let key = format!("{prefix}{k}");
                if !berth_api::names::is_env_var_name(&key) {
                    invalid.push(key);
                    continue;
                }
                let value = String::from_utf8_lossy(v).into_owned();
                defined.insert(key.clone(), value.clone());
                set(&mut out, &key, value);
            }
            if !invalid.is_empty() {
                invalid.sort();
                let what = match kind {
                    ObjectKind::ConfigMap => "configMap",
                    ObjectKind::Secret => "secret",
                };
                self.events.record(
                    &crate::events::ObjectRef::pod(pod),
                    crate::events::EventType::Warning,
                    "InvalidEnvironmentVariableNames",
                    format!(
                        "Keys [{}] from the EnvFrom {what} {ns}/{name} were skipped since they are considered invalid environment variable names.",
                        invalid.join(", ")
                    ),
                );
            }
        }
        for EnvVar {
            name,
            value,
            value_from,
        } in container.env.iter().flatten()
        {
            let from = value_from.as_ref();
            let resolved = if let Some(v) = value {
                Some(expand(v, |var| defined.get(var).cloned()))
            } else if let Some(field) = from.and_then(|f| f.field_ref.as_ref()) {
                self.field_value(pod, &field.field_path, pod_ips)
            } else if let Some((kind, label, name, key, optional)) = from.and_then(|f| {
                let cm = f.config_map_key_ref.as_ref().map(|r| {
                    (
                        ObjectKind::ConfigMap,
                        "ConfigMap",
                        &r.name,
                        &r.key,
                        r.optional,
                    )
                });
                cm.or_else(|| {
                    f.secret_key_ref
                        .as_ref()
                        .map(|r| (ObjectKind::Secret, "Secret", &r.name, &r.key, r.optional))
                })
            }) {
                let optional = optional.unwrap_or(false);
                match get(kind, name, optional)? {
                    None => continue,
                    Some(o) => match o.data.get(key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if optional => continue,
                        None => {
                            return Err(format!("couldn't find key {key} in {label} {ns}/{name}"));
                        }
                    },
                }
            } else if let Some(sel) = from.and_then(|f| f.resource_field_ref.as_ref()) {
                let node = super::downward::NodeAllocatable::of_node(&self.settings.root_dir);
                // The selector may name another container of the pod.
                let target = sel
                    .container_name
                    .as_deref()
                    .filter(|n| !n.is_empty() && *n != container.name)
                    .and_then(|n| {
                        let spec = pod.spec.as_ref()?;
                        spec.containers
                            .iter()
                            .chain(spec.init_containers.iter().flatten())
                            .find(|c| c.name == n)
                    })
                    .unwrap_or(container);
                Some(
                    super::downward::resource_field_value(target, sel, &node)
                        .map_err(|e| format!("env {name}: resourceFieldRef: {e}"))?,
                )
            } else {
                None
            };
            let value = resolved.unwrap_or_default();
            defined.insert(name.clone(), value.clone());
            set(&mut out, name, value);
        }
        Ok(out)
    }

    /// The value of a downward-API field path.
    fn field_value(&self, pod: &Pod, path: &str, pod_ips: &[String]) -> Option<String> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let from_map = |map: &Option<BTreeMap<String, String>>, rest: &str| {
            let key = rest.strip_prefix("['")?.strip_suffix("']")?;
            map.as_ref()?.get(key).cloned()
        };
        match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "status.hostIP" | "status.hostIPs" => Some(self.settings.node_ip.clone()),
            "status.podIP" => pod_ips.first().cloned().or_else(|| {
                spec.and_then(|s| s.host_network)
                    .filter(|h| *h)
                    .map(|_| self.settings.node_ip.clone())
            }),
            "status.podIPs" => Some(pod_ips.join(",")),
            p if p.starts_with("metadata.labels") => {
                from_map(&meta.labels, &p["metadata.labels".len()..])
            }
            p if p.starts_with("metadata.annotations") => {
                from_map(&meta.annotations, &p["metadata.annotations".len()..])
            }
            _ => None,
        }
    }
}

/// The supplemental groups of a pod's containers and sandbox, as the kubelet
/// lists them: `fsGroup` first (so the pod's volumes are the processes' group),
/// then `supplementalGroups`.
pub fn supplemental_groups(psc: &k8s_openapi::api::core::v1::PodSecurityContext) -> Vec<i64> {
    psc.fs_group
        .into_iter()
        .chain(psc.supplemental_groups.iter().flatten().copied())
        .collect()
}

/// A Burstable container's `oom_score_adj` (the kubelet's `GetContainerOOMScoreAdjust`):
/// `1000 - 1000 × request / capacity`, kept within `[3, 999]`: above a
/// Guaranteed container's (`1000 + -997`), below a BestEffort one's.
/// Computed in 128 bits: a request of `7Ei` must not wrap.
pub fn burstable_oom_score_adj(memory_request: i64, memory_capacity: i64) -> i64 {
    let capacity = i128::from(memory_capacity.max(1));
    let adj = 1000 - 1000 * i128::from(memory_request.max(0)) / capacity;
    i64::try_from(adj.clamp(3, 999)).unwrap_or(999)
}

pub use crate::util::expand;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "1-two");
        assert_eq!(expand("$(MISSING)", &e), "$(MISSING)");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("cost: $5", &e), "cost: $5");
        assert_eq!(expand("$(A", &e), "$(A");
        assert_eq!(expand("tail$", &e), "tail$");
        assert_eq!(expand("ünï$(A)cødé", &e), "ünï1cødé");
    }

    /// Regression (issue 7): `limits: {cpu: 1T}` and `requests: {memory: 7Ei}`
    /// multiplied unchecked, panicking the pod's worker in a debug build and
    /// wrapping into a garbage quota or `oom_score_adj` in a release build.
    #[test]
    fn huge_quantities_clamp_instead_of_overflowing() {
        let one_t = berth_api::quantity::cpu_millis(&Quantity("1T".into())).expect("1T");
        assert_eq!(one_t, 1_000_000_000_000_000);
        assert_eq!(milli_cpu_to_shares(one_t), 262_144);
        assert_eq!(milli_cpu_to_quota(one_t, QUOTA_PERIOD), (1 << 44) - 1);
        let seven_ei = berth_api::quantity::int_value(&Quantity("7Ei".into())).expect("7Ei");
        // Burstable within [3, 999], as upstream's policy.go.
        assert_eq!(burstable_oom_score_adj(seven_ei, 8 << 30), 3);
        assert_eq!(burstable_oom_score_adj(i64::MAX, i64::MAX), 3);
        assert_eq!(burstable_oom_score_adj(0, 8 << 30), 999);
        assert_eq!(burstable_oom_score_adj(1 << 30, 4 << 30), 750);
        assert_eq!(burstable_oom_score_adj(1, 0), 3);
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = Container {
            name: "web".into(),
            image: Some("busybox:1.36".into()),
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(container_hash(&a), container_hash(&b));
        b.args = Some(vec!["x".into()]);
        assert_ne!(container_hash(&a), container_hash(&b));
        assert_eq!(container_hash(&a).len(), 16);
    }
}
