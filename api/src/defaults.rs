//! API defaults (`pkg/apis/core/v1/defaults.go`): what a pod leaves out is
//! filled in here, by the API server on every write and by the agent on static
//! pods (and, idempotently, on API pods), so nothing downstream guesses.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, LifecycleHandler, Pod, PodSecurityContext, PodSpec, Probe, Secret,
};

/// The default termination grace period, in seconds.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// The default scheduler name.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
/// Where a container's termination message is read from by default.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Apply the API defaults to a pod (`SetDefaults_Pod`, `SetDefaults_PodSpec`,
/// `SetDefaults_Container`, …). Only the spec is touched; applying them twice
/// changes nothing.
pub fn apply(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);

    if spec.dns_policy.as_deref().unwrap_or("").is_empty() {
        spec.dns_policy = Some("ClusterFirst".to_string());
    }
    if spec.restart_policy.as_deref().unwrap_or("").is_empty() {
        spec.restart_policy = Some("Always".to_string());
    }
    if spec.security_context.is_none() {
        spec.security_context = Some(PodSecurityContext::default());
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    }
    if spec.scheduler_name.as_deref().unwrap_or("").is_empty() {
        spec.scheduler_name = Some(DEFAULT_SCHEDULER_NAME.to_string());
    }
    if spec.enable_service_links.is_none() {
        spec.enable_service_links = Some(true);
    }
    let host_network = spec.host_network.unwrap_or(false);
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        container(c, host_network);
    }
    for v in spec.volumes.iter_mut().flatten() {
        // A volume without a source is an emptyDir (`SetDefaults_Volume`).
        if v.host_path.is_none() && volume_has_no_source(v) {
            v.empty_dir = Some(Default::default());
        }
        if let Some(ed) = &mut v.empty_dir
            && ed.medium.is_none()
        {
            ed.medium = Some(String::new());
        }
        if let Some(hp) = &mut v.host_path
            && hp.type_.is_none()
        {
            hp.type_ = Some(String::new());
        }
    }
}

fn volume_has_no_source(v: &k8s_openapi::api::core::v1::Volume) -> bool {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(map)) => {
            map.iter().all(|(k, v)| k.as_str() == "name" || v.is_null())
        }
        _ => false,
    }
}

/// `SetDefaults_Container`, the ports, probes, env and resources of one container.
fn container(c: &mut Container, host_network: bool) {
    if c.image_pull_policy.as_deref().unwrap_or("").is_empty() {
        let policy = if image_pulls_always(c.image.as_deref().unwrap_or("")) {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.image_pull_policy = Some(policy.to_string());
    }
    if c.termination_message_path
        .as_deref()
        .unwrap_or("")
        .is_empty()
    {
        c.termination_message_path = Some(DEFAULT_TERMINATION_MESSAGE_PATH.to_string());
    }
    if c.termination_message_policy
        .as_deref()
        .unwrap_or("")
        .is_empty()
    {
        c.termination_message_policy = Some("File".to_string());
    }
    for p in c.ports.iter_mut().flatten() {
        if p.protocol.as_deref().unwrap_or("").is_empty() {
            p.protocol = Some("TCP".to_string());
        }
        // With the host's network, a container port is a host port (`defaultHostNetworkPorts`).
        if host_network && p.host_port.unwrap_or(0) == 0 {
            p.host_port = Some(p.container_port);
        }
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(fr) = e.value_from.as_mut().and_then(|f| f.field_ref.as_mut())
            && fr.api_version.as_deref().unwrap_or("").is_empty()
        {
            fr.api_version = Some("v1".to_string());
        }
    }
    // Requests default to limits where only limits are given (`SetDefaults_Pod`).
    if let Some(res) = &mut c.resources
        && let Some(limits) = &res.limits
    {
        let requests = res.requests.get_or_insert_with(Default::default);
        for (name, q) in limits {
            requests.entry(name.clone()).or_insert_with(|| q.clone());
        }
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        self::probe(probe);
    }
    if let Some(lc) = &mut c.lifecycle {
        for h in [&mut lc.post_start, &mut lc.pre_stop].into_iter().flatten() {
            handler(h);
        }
    }
}

/// `SetDefaults_Probe`.
fn probe(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(h) = &mut p.http_get {
        http_get(h);
    }
}

fn handler(h: &mut LifecycleHandler) {
    if let Some(g) = &mut h.http_get {
        http_get(g);
    }
}

/// `SetDefaults_HTTPGetAction`.
fn http_get(h: &mut HTTPGetAction) {
    if h.path.as_deref().unwrap_or("").is_empty() {
        h.path = Some("/".to_string());
    }
    if h.scheme.as_deref().unwrap_or("").is_empty() {
        h.scheme = Some("HTTP".to_string());
    }
}

/// True when the image's pull policy defaults to `Always`: its tag is `latest`,
/// or it has neither tag nor digest (`parsers.ParseImageName` then says `latest`).
/// A registry port (`localhost:5000/busybox`) is not a tag.
pub fn image_pulls_always(image: &str) -> bool {
    let image = image.trim();
    if image.is_empty() {
        // ParseImageName fails and the kubelet falls back to IfNotPresent;
        // validation rejects the empty image anyway.
        return false;
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => digest.is_none(),
    }
}

/// A Secret's defaults and its v1 conversion (`SetDefaults_Secret`,
/// `Convert_v1_Secret_To_core_Secret`): `type` defaults to `Opaque`, and the
/// write-only `stringData` is merged into `data` (its keys win) and dropped,
/// so it is never stored or returned. Applying it twice changes nothing.
pub fn secret(secret: &mut Secret) {
    if secret.type_.as_deref().unwrap_or("").is_empty() {
        secret.type_ = Some("Opaque".to_string());
    }
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (k, v) in string_data {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_by_tag() {
        assert!(image_pulls_always("busybox"));
        assert!(image_pulls_always("busybox:latest"));
        assert!(!image_pulls_always("busybox:1.36"));
        assert!(!image_pulls_always(
            "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        ));
        assert!(image_pulls_always(
            "busybox:latest@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        ));
        assert!(image_pulls_always("localhost:5000/busybox"));
        assert!(!image_pulls_always("localhost:5000/busybox:1.36"));
        assert!(image_pulls_always("registry.k8s.io/pause"));
        assert!(!image_pulls_always("registry.k8s.io/pause:3.10"));
    }
}
