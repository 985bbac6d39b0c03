//! Restart rules (`pkg/kubelet/container.ShouldContainerBeRestarted` and the
//! pod phase rules that follow from them): which exited container runs again,
//! and which container is a sidecar. The agent's sync and its status computation
//! both decide with these functions.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// `restartPolicy: Always`, the default.
pub const ALWAYS: &str = "Always";
/// `restartPolicy: OnFailure`.
pub const ON_FAILURE: &str = "OnFailure";
/// `restartPolicy: Never`.
pub const NEVER: &str = "Never";
/// Every value `spec.restartPolicy` may take.
pub const POLICIES: &[&str] = &[ALWAYS, ON_FAILURE, NEVER];

/// The pod's restart policy; anything but `OnFailure` and `Never` is `Always`
/// (the default, and what validation leaves).
pub fn pod_restart_policy(spec: Option<&PodSpec>) -> &'static str {
    match spec.and_then(|s| s.restart_policy.as_deref()) {
        Some(NEVER) => NEVER,
        Some(ON_FAILURE) => ON_FAILURE,
        _ => ALWAYS,
    }
}

/// A sidecar: an init container with `restartPolicy: Always`.
pub fn is_restartable_init_container(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some(ALWAYS)
}

/// The policy that applies to a container: a sidecar's own `Always`, else the pod's.
pub fn container_restart_policy(spec: Option<&PodSpec>, c: &Container, init: bool) -> &'static str {
    if init && is_restartable_init_container(c) {
        ALWAYS
    } else {
        pod_restart_policy(spec)
    }
}

/// Whether a container that exited with `exit_code` runs again under `policy`.
pub fn restarts_after_exit(policy: &str, exit_code: i32) -> bool {
    match policy {
        NEVER => false,
        ON_FAILURE => exit_code != 0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(restarts_after_exit(ALWAYS, 0));
        assert!(restarts_after_exit(ON_FAILURE, 1));
        assert!(!restarts_after_exit(ON_FAILURE, 0));
        assert!(!restarts_after_exit(NEVER, 1));
        assert_eq!(pod_restart_policy(None), ALWAYS);
        let spec = PodSpec {
            restart_policy: Some("Never".into()),
            ..Default::default()
        };
        assert_eq!(pod_restart_policy(Some(&spec)), NEVER);
        let sidecar = Container {
            restart_policy: Some("Always".into()),
            ..Default::default()
        };
        assert_eq!(
            container_restart_policy(Some(&spec), &sidecar, true),
            ALWAYS
        );
        assert_eq!(
            container_restart_policy(Some(&spec), &sidecar, false),
            NEVER
        );
    }
}
