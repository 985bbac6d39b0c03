//! The API objects a pod refers to by name, as upstream's visitors in
//! `pkg/api/pod/util.go` (`VisitPodSecretNames`, `VisitPodConfigmapNames`
//! with `AllContainers`) and the Node authorizer's graph
//! (`plugin/pkg/auth/authorizer/node/graph.go`, `AddPod`) find them.
//! NodeRestriction refuses mirror pods that refer to any of these, and the
//! Node authorizer grants a node exactly the objects its pods refer to: both
//! read this one list.

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, Pod, PodSpec, Volume};

/// One container's `env` and `envFrom`.
type EnvOf<'a> = (Option<&'a Vec<EnvVar>>, Option<&'a Vec<EnvFromSource>>);

/// Every container of a pod with its env: init, regular and ephemeral
/// (upstream's `AllContainers` mask). Ephemeral containers have their own type.
fn env_lists(spec: &PodSpec) -> Vec<EnvOf<'_>> {
    fn plain(c: &Container) -> EnvOf<'_> {
        (c.env.as_ref(), c.env_from.as_ref())
    }
    let mut out: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(plain)
        .collect();
    out.extend(
        spec.ephemeral_containers
            .iter()
            .flatten()
            .map(|c| (c.env.as_ref(), c.env_from.as_ref())),
    );
    out
}

fn volumes(spec: &PodSpec) -> impl Iterator<Item = &Volume> {
    spec.volumes.iter().flatten()
}

fn push(out: &mut Vec<String>, name: Option<&String>) {
    if let Some(n) = name.filter(|n| !n.is_empty())
        && !out.contains(n)
    {
        out.push(n.clone());
    }
}

/// The Secrets a pod refers to (`VisitPodSecretNames`): image pull secrets,
/// `secretKeyRef`/`secretRef` in every container's env, and every volume
/// source that names a Secret (secret, projected, CSI, and the in-tree
/// drivers' `secretRef`s). Each name once, in the order found.
pub fn secret_names(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for s in spec.image_pull_secrets.iter().flatten() {
        push(&mut out, Some(&s.name));
    }
    for (env, env_from) in env_lists(spec) {
        for from in env_from.into_iter().flatten() {
            push(&mut out, from.secret_ref.as_ref().map(|r| &r.name));
        }
        for e in env.into_iter().flatten() {
            let key_ref = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            push(&mut out, key_ref.map(|r| &r.name));
        }
    }
    for v in volumes(spec) {
        push(
            &mut out,
            v.secret.as_ref().and_then(|s| s.secret_name.as_ref()),
        );
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            push(&mut out, src.secret.as_ref().map(|s| &s.name));
        }
        push(&mut out, v.azure_file.as_ref().map(|a| &a.secret_name));
        push(
            &mut out,
            v.cephfs
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|r| &r.name),
        );
        push(
            &mut out,
            v.cinder
                .as_ref()
                .and_then(|c| c.secret_ref.as_ref())
                .map(|r| &r.name),
        );
        push(
            &mut out,
            v.flex_volume
                .as_ref()
                .and_then(|f| f.secret_ref.as_ref())
                .map(|r| &r.name),
        );
        push(
            &mut out,
            v.rbd
                .as_ref()
                .and_then(|r| r.secret_ref.as_ref())
                .map(|r| &r.name),
        );
        push(&mut out, v.scale_io.as_ref().map(|s| &s.secret_ref.name));
        push(
            &mut out,
            v.iscsi
                .as_ref()
                .and_then(|i| i.secret_ref.as_ref())
                .map(|r| &r.name),
        );
        push(
            &mut out,
            v.storageos
                .as_ref()
                .and_then(|s| s.secret_ref.as_ref())
                .map(|r| &r.name),
        );
        push(
            &mut out,
            v.csi
                .as_ref()
                .and_then(|c| c.node_publish_secret_ref.as_ref())
                .map(|r| &r.name),
        );
    }
    out
}

/// The ConfigMaps a pod refers to (`VisitPodConfigmapNames`):
/// `configMapKeyRef`/`configMapRef` in every container's env, configMap
/// volumes and projected configMap sources.
pub fn configmap_names(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for (env, env_from) in env_lists(spec) {
        for from in env_from.into_iter().flatten() {
            push(&mut out, from.config_map_ref.as_ref().map(|r| &r.name));
        }
        for e in env.into_iter().flatten() {
            let key_ref = e
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref());
            push(&mut out, key_ref.map(|r| &r.name));
        }
    }
    for v in volumes(spec) {
        push(&mut out, v.config_map.as_ref().map(|c| &c.name));
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            push(&mut out, src.config_map.as_ref().map(|c| &c.name));
        }
    }
    out
}

/// The PersistentVolumeClaims a pod refers to: `persistentVolumeClaim`
/// volumes by claim name, and generic ephemeral volumes by the claim the
/// ephemeral volume controller names `<pod>-<volume>`.
pub fn pvc_names(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    for v in volumes(spec) {
        push(
            &mut out,
            v.persistent_volume_claim.as_ref().map(|c| &c.claim_name),
        );
        if v.ephemeral.is_some() {
            push(&mut out, Some(&format!("{pod_name}-{}", v.name)));
        }
    }
    out
}

/// Whether any projected volume source is a ClusterTrustBundle.
pub fn has_cluster_trust_bundles(pod: &Pod) -> bool {
    pod.spec.iter().flat_map(volumes).any(|v| {
        v.projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| s.cluster_trust_bundle.is_some())
    })
}

/// Whether the pod asks for resource claims (`spec.resourceClaims`).
pub fn has_resource_claims(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.resource_claims.as_ref())
        .is_some_and(|c| !c.is_empty())
}

/// The ServiceAccount a pod runs as: `spec.serviceAccountName`, and
/// `default` when unset (the server defaults it so; an undefaulted pod from
/// an old store means the same).
pub fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn every_place_a_secret_or_configmap_is_named() {
        let p = pod(json!({
            "volumes": [
                {"name": "a", "configMap": {"name": "cm-vol"}},
                {"name": "b", "secret": {"secretName": "s-vol"}},
                {"name": "c", "projected": {"sources": [
                    {"configMap": {"name": "cm-proj"}}, {"secret": {"name": "s-proj"}}]}},
                {"name": "d", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "s-csi"}}},
                {"name": "e", "rbd": {"image": "i", "monitors": ["m"], "secretRef": {"name": "s-rbd"}}},
                {"name": "f", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "g", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            ],
            "imagePullSecrets": [{"name": "pull"}, {"name": "pull"}],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "cm-from"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                {"name": "Y", "value": "plain"}]}],
            "ephemeralContainers": [{"name": "dbg", "envFrom": [{"secretRef": {"name": "s-eph"}}]}],
        }));
        assert_eq!(
            secret_names(&p),
            [
                "pull", "s-env", "s-eph", "s-vol", "s-proj", "s-csi", "s-rbd"
            ]
        );
        assert_eq!(configmap_names(&p), ["cm-from", "cm-vol", "cm-proj"]);
        assert_eq!(pvc_names(&p), ["claim", "p-g"]);
        assert_eq!(service_account_name(&p), "default");
        assert!(!has_cluster_trust_bundles(&p));
    }

    #[test]
    fn a_plain_pod_names_nothing() {
        let p = pod(json!({"containers": [{"name": "c", "image": "busybox"}]}));
        assert!(secret_names(&p).is_empty());
        assert!(configmap_names(&p).is_empty());
        assert!(pvc_names(&p).is_empty());
        assert!(!has_resource_claims(&p));
    }
}
