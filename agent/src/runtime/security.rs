//! Security profiles over CRI and what this node refuses to run.
//!
//! - seccomp: a container's own `seccompProfile`, else the pod's, else
//!   `Unconfined` (the kubelet's `getSeccompProfile` without `SeccompDefault`);
//!   `Localhost` profiles are files under `<root-dir>/seccomp` (upstream's
//!   `<root-dir>/seccomp` of the kubelet's root directory). A privileged
//!   container runs `Unconfined`. A profile file that does not exist is the
//!   runtime's error at CreateContainer (`CreateContainerError`), as upstream,
//!   where the kubelet passes the path on without looking at it.
//! - AppArmor: a container's own `appArmorProfile`, else the deprecated
//!   `container.apparmor.security.beta.kubernetes.io/<container>` annotation,
//!   else the pod's (the kubelet's `apparmor.GetProfile`), passed as CRI's
//!   `apparmor` and its deprecated `apparmor_profile` string, where the host
//!   enforces AppArmor.
//! - User namespaces (`hostUsers: false`): containerd 1.6 has none, so such a
//!   pod is refused before its sandbox is created, with upstream's message.

use std::path::PathBuf;

use berth_api::validation::{
    APPARMOR_ANNOTATION_LOCALHOST_PREFIX, APPARMOR_ANNOTATION_PREFIX,
    APPARMOR_ANNOTATION_RUNTIME_DEFAULT, APPARMOR_ANNOTATION_UNCONFINED,
};
use berth_cri::api;
use berth_cri::api::security_profile::ProfileType;
use k8s_openapi::api::core::v1::{AppArmorProfile, Container, Pod, SeccompProfile};

use super::RuntimeManager;
use crate::events::{EventType, ObjectRef};

/// Where the kernel says whether AppArmor is enabled (`Y` or `N`).
pub const APPARMOR_ENABLED_PATH: &str = "/sys/module/apparmor/parameters/enabled";

/// The directory of `Localhost` seccomp profiles under `--root-dir`.
pub const SECCOMP_DIR: &str = "seccomp";

/// The event and pod reason of a pod refused for AppArmor (upstream's admit handler's).
pub const REASON_APPARMOR: &str = "AppArmor";
/// The event and pod reason of a sandbox that cannot be created.
pub const REASON_FAILED_CREATE_SANDBOX: &str = "FailedCreatePodSandBox";

/// Whether the host enforces AppArmor (runc's `apparmor.IsEnabled`, which the
/// kubelet and containerd use): the module's `enabled` parameter reads `Y`.
pub fn host_apparmor_enabled() -> bool {
    std::fs::read_to_string(APPARMOR_ENABLED_PATH).is_ok_and(|v| v.starts_with('Y'))
}

/// Why this node does not run a pod at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reason of the event and of the pod's status (`FailedCreatePodSandBox`, `AppArmor`).
    pub reason: &'static str,
    /// The pod's status message.
    pub message: String,
    /// The Warning event's message.
    pub event_message: String,
}

/// A container's AppArmor profile (upstream's `apparmor.GetProfile`): its own
/// field, else the deprecated annotation (static pods keep it; nothing copies
/// it into the field for them), else the pod's field.
pub fn apparmor_profile(pod: &Pod, c: &Container) -> Option<AppArmorProfile> {
    if let Some(p) = c
        .security_context
        .as_ref()
        .and_then(|sc| sc.app_armor_profile.clone())
    {
        return Some(p);
    }
    let key = format!("{APPARMOR_ANNOTATION_PREFIX}{}", c.name);
    if let Some(value) = pod.metadata.annotations.as_ref().and_then(|a| a.get(&key)) {
        let profile = |type_: &str, localhost_profile: Option<&str>| AppArmorProfile {
            type_: type_.to_string(),
            localhost_profile: localhost_profile.map(str::to_string),
        };
        // An annotation that names no profile is ignored, as upstream.
        match value.as_str() {
            APPARMOR_ANNOTATION_RUNTIME_DEFAULT => return Some(profile("RuntimeDefault", None)),
            APPARMOR_ANNOTATION_UNCONFINED => return Some(profile("Unconfined", None)),
            v => {
                if let Some(name) = v.strip_prefix(APPARMOR_ANNOTATION_LOCALHOST_PREFIX) {
                    return Some(profile("Localhost", Some(name)));
                }
            }
        }
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.app_armor_profile.clone())
}

/// The container's own `seccompProfile`, else the pod's.
fn seccomp_field<'p>(pod: &'p Pod, c: Option<&'p Container>) -> Option<&'p SeccompProfile> {
    c.and_then(|c| c.security_context.as_ref())
        .and_then(|sc| sc.seccomp_profile.as_ref())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|sc| sc.seccomp_profile.as_ref())
        })
}

fn security_profile(profile_type: ProfileType, localhost_ref: String) -> api::SecurityProfile {
    api::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    }
}

/// The CRI AppArmor settings of `profile`: the profile and the deprecated
/// string (`runtime/default`, `localhost/<name>`, `unconfined`) that older
/// runtimes read instead, both set as the kubelet sets them.
fn cri_apparmor(profile: &AppArmorProfile) -> Option<(api::SecurityProfile, String)> {
    let name = profile.localhost_profile.clone().unwrap_or_default();
    match profile.type_.as_str() {
        "RuntimeDefault" => Some((
            security_profile(ProfileType::RuntimeDefault, String::new()),
            APPARMOR_ANNOTATION_RUNTIME_DEFAULT.to_string(),
        )),
        "Unconfined" => Some((
            security_profile(ProfileType::Unconfined, String::new()),
            APPARMOR_ANNOTATION_UNCONFINED.to_string(),
        )),
        "Localhost" => Some((
            security_profile(ProfileType::Localhost, name.clone()),
            format!("{APPARMOR_ANNOTATION_LOCALHOST_PREFIX}{name}"),
        )),
        // Validation refuses any other type.
        _ => None,
    }
}

impl RuntimeManager {
    /// `<root-dir>/seccomp`: where `Localhost` seccomp profiles are found.
    pub fn seccomp_root(&self) -> PathBuf {
        self.settings.root_dir.join(SECCOMP_DIR)
    }

    /// The CRI seccomp profile of container `c` of `pod`, or of the pod's
    /// sandbox when `c` is `None` (the pod's own profile only).
    pub fn seccomp_profile(&self, pod: &Pod, c: Option<&Container>) -> api::SecurityProfile {
        let privileged = c
            .and_then(|c| c.security_context.as_ref())
            .and_then(|sc| sc.privileged)
            .unwrap_or(false);
        if privileged {
            return security_profile(ProfileType::Unconfined, String::new());
        }
        match seccomp_field(pod, c).map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())) {
            Some(("RuntimeDefault", _)) => {
                security_profile(ProfileType::RuntimeDefault, String::new())
            }
            // Validation requires a relative name without `..`. Were it empty, the
            // reference is the directory itself, which the runtime fails to load:
            // never an unconfined container where a profile was asked for.
            Some(("Localhost", name)) => security_profile(
                ProfileType::Localhost,
                self.seccomp_root()
                    .join(name.unwrap_or_default())
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => security_profile(ProfileType::Unconfined, String::new()),
        }
    }

    /// The CRI AppArmor profile and deprecated profile string of container `c`.
    ///
    /// On a host without AppArmor nothing is passed (containerd would refuse
    /// any profile but `Unconfined`). A `Localhost` profile there refuses the
    /// whole pod ([`pod_refusal`](Self::pod_refusal)); `RuntimeDefault` runs
    /// without AppArmor, with a Warning event: see there why.
    pub fn apparmor(
        &self,
        pod: &Pod,
        c: &Container,
        init: bool,
    ) -> (Option<api::SecurityProfile>, String) {
        let Some(profile) = apparmor_profile(pod, c) else {
            return (None, String::new());
        };
        if self.apparmor_enabled {
            return cri_apparmor(&profile).map_or((None, String::new()), |(p, s)| (Some(p), s));
        }
        if profile.type_ == "RuntimeDefault" {
            let message = format!(
                "AppArmor is not enabled on the host: container {:?} runs without the runtime's default AppArmor profile",
                c.name
            );
            tracing::warn!(container = %c.name, profile = "RuntimeDefault", "AppArmor is not enabled on the host; running without it");
            self.events.record(
                &ObjectRef::pod(pod).container(&c.name, init),
                EventType::Warning,
                REASON_APPARMOR,
                message,
            );
        }
        (None, String::new())
    }

    /// Why this node will not run `pod` at all, or `None`. Checked before the
    /// pod's sandbox is created; a refused pod gets neither sandbox nor
    /// containers, and nothing changes that but a new spec.
    ///
    /// - `hostUsers: false`: containerd 1.6 cannot create user namespaces. As
    ///   upstream, where the sandbox config cannot be made: the pod stays
    ///   Pending with `FailedCreatePodSandBox` and upstream's message.
    /// - A `Localhost` AppArmor profile on a host without AppArmor: upstream's
    ///   AppArmor admit handler's reason and message. Upstream refuses any
    ///   profile but `Unconfined` there; berth refuses only what it cannot
    ///   honour. A `Localhost` profile is a promise about one named policy that
    ///   the pod's author relies on, and running without it would silently drop
    ///   that confinement. `RuntimeDefault` asks for whatever the runtime does
    ///   by default, and on a host without AppArmor that is nothing, exactly
    ///   what every pod that says nothing gets: such a pod runs, with a Warning
    ///   event per container ([`apparmor`](Self::apparmor)).
    pub fn pod_refusal(&self, pod: &Pod) -> Option<Refusal> {
        let spec = pod.spec.as_ref()?;
        if spec.host_users == Some(false) {
            let message =
                "can't set `spec.hostUsers: false`, runtime does not support user namespaces"
                    .to_string();
            return Some(Refusal {
                reason: REASON_FAILED_CREATE_SANDBOX,
                event_message: format!("Failed to create pod sandbox: {message}"),
                message,
            });
        }
        if self.apparmor_enabled {
            return None;
        }
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers);
        for c in containers {
            let Some(profile) = apparmor_profile(pod, c) else {
                continue;
            };
            if profile.type_ == "Localhost" {
                let message = format!(
                    "Cannot enforce AppArmor: AppArmor is not enabled on the host (container {:?} asks for profile \"localhost/{}\")",
                    c.name,
                    profile.localhost_profile.unwrap_or_default()
                );
                return Some(Refusal {
                    reason: REASON_APPARMOR,
                    event_message: message.clone(),
                    message,
                });
            }
        }
        None
    }

    /// What makes container `c`'s security options impossible to build (the
    /// kubelet's `CreateContainerConfigError` cases): a `Localhost` profile
    /// without a name. Validation leaves only an empty name possible.
    pub fn container_security_error(&self, pod: &Pod, c: &Container) -> Result<(), String> {
        let seccomp_unnamed = seccomp_field(pod, Some(c)).is_some_and(|p| {
            p.type_ == "Localhost"
                && p.localhost_profile
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
        });
        if seccomp_unnamed {
            return Err("localhostProfile must be set if seccompProfile type is Localhost.".into());
        }
        let apparmor_unnamed = apparmor_profile(pod, c).is_some_and(|p| {
            p.type_ == "Localhost"
                && p.localhost_profile
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
        });
        if apparmor_unnamed {
            return Err("missing localhost apparmor profile name".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::runtime::Settings;
    use crate::runtime::container::ContainerContext;

    /// A manager whose runtime is never called (the configs are built locally).
    fn manager(root: &Path, apparmor: bool) -> RuntimeManager {
        let client = berth_cri::RuntimeClient::lazy(
            "unix:///nonexistent/berth-test.sock",
            Default::default(),
        )
        .expect("lazy client");
        RuntimeManager::new(
            client,
            Settings {
                node_name: "node-a".into(),
                node_ip: "192.0.2.10".into(),
                root_dir: root.to_path_buf(),
                pod_logs_dir: root.join("logs"),
                cgroup_root: "/berth-test-kubepods".into(),
            },
            Arc::new(crate::metrics::Metrics::new()),
        )
        .with_cgroups(
            crate::cgroups::PodCgroups::new(
                Arc::new(crate::cgroups::RecordingManager::default()),
                "/berth-test-kubepods",
            )
            .expect("a valid cgroup root"),
        )
        .with_apparmor_enabled(apparmor)
    }

    /// A pod from JSON: `spec` merged over a pod with containers `a` and `b`.
    fn pod(annotations: serde_json::Value, spec: serde_json::Value) -> Pod {
        let mut p = serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "annotations": annotations},
            "spec": {"containers": [
                {"name": "a", "image": "busybox"},
                {"name": "b", "image": "busybox"},
            ]}
        });
        for (k, v) in spec.as_object().into_iter().flatten() {
            p["spec"][k] = v.clone();
        }
        serde_json::from_value(p).expect("pod")
    }

    fn security(m: &RuntimeManager, pod: &Pod, i: usize) -> api::LinuxContainerSecurityContext {
        let spec = pod.spec.as_ref().expect("spec");
        let config = m.container_config(
            pod,
            &spec.containers[i],
            ContainerContext {
                sandbox_id: "sb",
                pod_ips: &[],
                restart_count: 0,
                init: false,
                image_ref: "sha256:abc",
                mounts: Vec::new(),
                env: Vec::new(),
            },
        );
        config
            .linux
            .and_then(|l| l.security_context)
            .expect("security context")
    }

    fn profile(t: ProfileType, localhost_ref: &str) -> Option<api::SecurityProfile> {
        Some(security_profile(t, localhost_ref.to_string()))
    }

    #[tokio::test]
    async fn seccomp_container_wins_over_pod_and_privileged_is_unconfined() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = manager(tmp.path(), false);
        let p = pod(
            serde_json::json!({}),
            serde_json::json!({
                "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}},
                "containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
                    {"name": "c", "image": "busybox", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
                    {"name": "d", "image": "busybox", "securityContext": {"privileged": true}},
                ]
            }),
        );
        let audit = tmp.path().join("seccomp/profiles/audit.json");
        let audit = audit.to_str().expect("utf-8 path");
        assert_eq!(
            security(&m, &p, 0).seccomp,
            profile(ProfileType::Localhost, audit)
        );
        assert_eq!(
            security(&m, &p, 1).seccomp,
            profile(ProfileType::RuntimeDefault, "")
        );
        assert_eq!(
            security(&m, &p, 2).seccomp,
            profile(ProfileType::Unconfined, "")
        );
        assert_eq!(
            security(&m, &p, 3).seccomp,
            profile(ProfileType::Unconfined, "")
        );
        // The sandbox runs with the pod's own profile.
        let sandbox = m
            .sandbox_config(&p, 0)
            .linux
            .and_then(|l| l.security_context)
            .expect("sandbox security context");
        assert_eq!(sandbox.seccomp, profile(ProfileType::Localhost, audit));

        // Nothing asked for: Unconfined, said explicitly as the kubelet does.
        let plain = pod(serde_json::json!({}), serde_json::json!({}));
        assert_eq!(
            security(&m, &plain, 0).seccomp,
            profile(ProfileType::Unconfined, "")
        );
        assert!(
            m.container_security_error(&plain, &plain.spec.as_ref().expect("spec").containers[0])
                .is_ok()
        );

        // An unnamed Localhost profile is the container's config error.
        let unnamed = pod(
            serde_json::json!({}),
            serde_json::json!({"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": ""}}}),
        );
        let c = &unnamed.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            m.container_security_error(&unnamed, c),
            Err("localhostProfile must be set if seccompProfile type is Localhost.".to_string())
        );
    }

    #[tokio::test]
    async fn fs_group_leads_the_supplemental_groups_and_unmasked_proc_has_no_masks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = manager(tmp.path(), false);
        let p = pod(
            serde_json::json!({}),
            serde_json::json!({
                "securityContext": {"fsGroup": 2000, "supplementalGroups": [5, 6]},
                "containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox", "securityContext": {"procMount": "Unmasked"}},
                ]
            }),
        );
        let a = security(&m, &p, 0);
        assert_eq!(a.supplemental_groups, vec![2000, 5, 6]);
        assert!(a.masked_paths.contains(&"/proc/kcore".to_string()));
        assert!(a.readonly_paths.contains(&"/proc/sys".to_string()));
        let b = security(&m, &p, 1);
        assert!(b.masked_paths.is_empty() && b.readonly_paths.is_empty());
        let sandbox = m
            .sandbox_config(&p, 0)
            .linux
            .and_then(|l| l.security_context)
            .expect("sandbox security context");
        assert_eq!(sandbox.supplemental_groups, vec![2000, 5, 6]);
    }

    #[tokio::test]
    #[allow(deprecated)] // `apparmor_profile`: still set for runtimes that read only it.
    async fn apparmor_from_field_annotation_or_pod_where_the_host_has_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = manager(tmp.path(), true);
        let key = APPARMOR_ANNOTATION_PREFIX;
        let p = pod(
            serde_json::json!({format!("{key}a"): "runtime/default", format!("{key}b"): "localhost/from-annotation"}),
            serde_json::json!({
                "securityContext": {"appArmorProfile": {"type": "Unconfined"}},
                "containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox",
                     "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-deny-write"}}},
                    {"name": "c", "image": "busybox"},
                ]
            }),
        );
        let a = security(&m, &p, 0);
        assert_eq!(a.apparmor, profile(ProfileType::RuntimeDefault, ""));
        assert_eq!(a.apparmor_profile, "runtime/default");
        let b = security(&m, &p, 1);
        assert_eq!(
            b.apparmor,
            profile(ProfileType::Localhost, "k8s-deny-write")
        );
        assert_eq!(b.apparmor_profile, "localhost/k8s-deny-write");
        let c = security(&m, &p, 2);
        assert_eq!(c.apparmor, profile(ProfileType::Unconfined, ""));
        assert_eq!(c.apparmor_profile, "unconfined");
        assert_eq!(m.pod_refusal(&p), None);

        let plain = pod(serde_json::json!({"other": "x"}), serde_json::json!({}));
        let a = security(&m, &plain, 0);
        assert_eq!((a.apparmor, a.apparmor_profile.as_str()), (None, ""));
    }

    #[tokio::test]
    #[allow(deprecated)] // `apparmor_profile`: still set for runtimes that read only it.
    async fn without_host_apparmor_localhost_refuses_the_pod_and_runtime_default_runs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = manager(tmp.path(), false);
        let runtime_default = pod(
            serde_json::json!({}),
            serde_json::json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
        );
        assert_eq!(m.pod_refusal(&runtime_default), None);
        let a = security(&m, &runtime_default, 0);
        assert_eq!((a.apparmor, a.apparmor_profile.as_str()), (None, ""));

        let localhost = pod(
            serde_json::json!({format!("{APPARMOR_ANNOTATION_PREFIX}b"): "localhost/k8s-deny-write"}),
            serde_json::json!({}),
        );
        let refusal = m.pod_refusal(&localhost).expect("refused");
        assert_eq!(refusal.reason, "AppArmor");
        assert_eq!(
            refusal.message,
            "Cannot enforce AppArmor: AppArmor is not enabled on the host (container \"b\" asks for profile \"localhost/k8s-deny-write\")"
        );
        assert_eq!(refusal.event_message, refusal.message);
    }

    #[tokio::test]
    async fn host_users_false_is_refused_before_the_sandbox() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = manager(tmp.path(), true);
        let p = pod(
            serde_json::json!({}),
            serde_json::json!({"hostUsers": false}),
        );
        let refusal = m.pod_refusal(&p).expect("refused");
        assert_eq!(refusal.reason, "FailedCreatePodSandBox");
        assert_eq!(
            refusal.message,
            "can't set `spec.hostUsers: false`, runtime does not support user namespaces"
        );
        assert_eq!(
            refusal.event_message,
            "Failed to create pod sandbox: can't set `spec.hostUsers: false`, runtime does not support user namespaces"
        );
        let p = pod(
            serde_json::json!({}),
            serde_json::json!({"hostUsers": true}),
        );
        assert_eq!(m.pod_refusal(&p), None);
    }
}
