//! NodeRestriction: what a node identity (`system:node:<name>` in
//! `system:nodes`) may write, rule for rule as upstream's admission plugin
//! (`plugin/pkg/admission/noderestriction/admission.go`), with its messages.
//! The Node authorizer ([`super::authz`]) decides which requests a node may
//! make at all; this decides, looking at the objects, whether this one is
//! harmless.
//!
//! | resource | rule |
//! |---|---|
//! | `pods` create | mirror pods only (annotation `kubernetes.io/config.mirror`), bound to itself, exactly one owner reference: its own v1 Node (name and UID), `controller: true`, no `blockOwnerDeletion`; no service account, Secrets, ConfigMaps, ClusterTrustBundles, PVCs or resource claims |
//! | `pods` delete | pods bound to itself only |
//! | `pods` update | never (only through `status`) |
//! | `pods/status` | pods bound to itself, labels and resource claim statuses unchanged |
//! | `pods/<other>` | never |
//! | `nodes` | its own Node only; create: no `spec.configSource`, no labels outside the kubelet's set; update: no new `configSource`, no taint changes, no label changes outside the kubelet's set |
//! | `leases` | in `kube-node-lease`, named as the node |
//!
//! `pods/eviction`, `serviceaccounts/token`, `persistentvolumeclaims/status`,
//! `csinodes`, `resourceslices` and CSRs are not served by berth, so there is
//! nothing to restrict; each gains its rule when it is served.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::Value;

use super::ApiState;
use super::admission::{Attributes, Operation};
use super::auth::User;
use super::authz::{self, MIRROR_ANNOTATION, NODE_LEASE_NAMESPACE};
use super::error::{ApiError, ApiResult};
use crate::storage::object_key;

/// The label namespace only the control plane may set on Nodes
/// (`v1.LabelNamespaceNodeRestriction`).
pub const LABEL_NAMESPACE_NODE_RESTRICTION: &str = "node-restriction.kubernetes.io";

/// The `kubernetes.io`/`k8s.io` labels a kubelet may set on its own Node
/// (`k8s.io/kubelet/pkg/apis` `kubeletLabels`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// The label namespaces a kubelet may use freely (`kubeletLabelNamespaces`).
const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Apply the plugin to a request of `user`; other users pass untouched.
pub async fn admit(state: &ApiState, user: &User, a: &Attributes<'_>) -> ApiResult<()> {
    // Upstream's NodeIdentity: the `system:node:` prefix *and* the group.
    let Some(node) = authz::node_name(user) else {
        return Ok(());
    };
    if node.is_empty() {
        return Err(a.forbidden(format!(
            "could not determine node from user \"{}\"",
            user.name
        )));
    }
    match (a.res.group, a.res.name) {
        ("", "pods") => match a.sub {
            None => admit_pod(state, node, a).await,
            Some("status") => admit_pod_status(node, a),
            Some(other) => Err(a.forbidden(format!(
                "unexpected pod subresource \"{other}\", only 'status' and 'eviction' are allowed"
            ))),
        },
        ("", "nodes") => admit_node(node, a),
        ("coordination.k8s.io", "leases") => admit_lease(node, a),
        _ => Ok(()),
    }
}

fn typed<T: serde::de::DeserializeOwned>(a: &Attributes<'_>, obj: Option<&Value>) -> ApiResult<T> {
    let Some(obj) = obj else {
        return Err(a.forbidden("unexpected type <nil>"));
    };
    serde_json::from_value(obj.clone()).map_err(|e| a.forbidden(format!("unexpected type: {e}")))
}

fn node_name_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

async fn admit_pod(state: &ApiState, node: &str, a: &Attributes<'_>) -> ApiResult<()> {
    match a.operation {
        Operation::Create => admit_pod_create(state, node, a).await,
        Operation::Delete => {
            let existing: Pod = typed(a, a.old)?;
            if node_name_of(&existing) != node {
                return Err(a.forbidden(format!(
                    "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                )));
            }
            Ok(())
        }
        op => Err(a.forbidden(format!(
            "unexpected operation \"{}\", node \"{node}\" can only create and delete mirror pods",
            op.as_str()
        ))),
    }
}

async fn admit_pod_create(state: &ApiState, node: &str, a: &Attributes<'_>) -> ApiResult<()> {
    let pod: Pod = typed(a, a.object)?;
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|m| m.contains_key(MIRROR_ANNOTATION));
    if !mirror {
        return Err(a.forbidden(format!(
            "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
        )));
    }
    if node_name_of(&pod) != node {
        return Err(a.forbidden(format!(
            "node \"{node}\" can only create pods with spec.nodeName set to itself"
        )));
    }
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    match owners {
        [] => {
            return Err(a.forbidden(format!(
                "node \"{node}\" can only create pods with an owner reference set to itself"
            )));
        }
        [owner] => {
            if owner.api_version != "v1" || owner.kind != "Node" || owner.name != node {
                return Err(a.forbidden(format!(
                    "node \"{node}\" can only create pods with an owner reference set to itself"
                )));
            }
            if owner.controller != Some(true) {
                return Err(a.forbidden(format!(
                    "node \"{node}\" can only create pods with a controller owner reference set to itself"
                )));
            }
            if owner.block_owner_deletion == Some(true) {
                return Err(a.forbidden(format!(
                    "node \"{node}\" must not set blockOwnerDeletion on an owner reference"
                )));
            }
            // The UID pins the reference to this incarnation of the Node: a
            // mirror pod never outlives a deleted and re-created Node object.
            let key = object_key("nodes", None, node).map_err(|e| a.forbidden(e))?;
            let stored = state
                .storage
                .get(&key)
                .await
                .map_err(|e| ApiError::from_storage(e, "nodes", node))?
                .ok_or_else(|| ApiError::NotFound {
                    resource: "nodes".into(),
                    name: node.to_string(),
                    kind: "nodes".into(),
                })?;
            let uid = serde_json::from_slice::<Value>(&stored.value)
                .ok()
                .and_then(|n| {
                    n.pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            if owner.uid != uid {
                return Err(a.forbidden(format!(
                    "node {node} UID mismatch: expected {} got {uid}",
                    owner.uid
                )));
            }
        }
        _ => {
            return Err(a.forbidden(format!(
                "node \"{node}\" can only create pods with a single owner reference set to itself"
            )));
        }
    }
    // A node may not create a pod that refers to any other API object: the
    // Node authorizer grants a node what its pods refer to.
    let spec = pod.spec.as_ref();
    if spec
        .and_then(|s| s.service_account_name.as_deref())
        .is_some_and(|s| !s.is_empty())
    {
        return Err(a.forbidden(format!(
            "node \"{node}\" can not create pods that reference a service account"
        )));
    }
    if !berth_api::references::secret_names(&pod).is_empty() {
        return Err(a.forbidden(format!(
            "node \"{node}\" can not create pods that reference secrets"
        )));
    }
    if !berth_api::references::configmap_names(&pod).is_empty() {
        return Err(a.forbidden(format!(
            "node \"{node}\" can not create pods that reference configmaps"
        )));
    }
    if berth_api::references::has_cluster_trust_bundles(&pod) {
        return Err(a.forbidden(format!(
            "node \"{node}\" can not create pods that reference clustertrustbundles"
        )));
    }
    let claims = spec.and_then(|s| s.volumes.as_ref()).is_some_and(|v| {
        v.iter()
            .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
    });
    if claims {
        return Err(a.forbidden(format!(
            "node \"{node}\" can not create pods that reference persistentvolumeclaims"
        )));
    }
    // Upstream keeps resource claims off static pods in the kubelet; berth
    // refuses them here too, so no mirror pod can name a claim.
    if berth_api::references::has_resource_claims(&pod) {
        return Err(a.forbidden(format!(
            "node \"{node}\" can not create pods that reference resourceclaims"
        )));
    }
    Ok(())
}

fn admit_pod_status(node: &str, a: &Attributes<'_>) -> ApiResult<()> {
    if a.operation != Operation::Update {
        return Err(a.forbidden(format!("unexpected operation \"{}\"", a.operation.as_str())));
    }
    let old: Pod = typed(a, a.old)?;
    if node_name_of(&old) != node {
        return Err(a.forbidden(format!(
            "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
        )));
    }
    let new: Pod = typed(a, a.object)?;
    let labels = |p: &Pod| p.metadata.labels.clone().unwrap_or_default();
    if labels(&old) != labels(&new) {
        return Err(a.forbidden(format!(
            "node \"{node}\" cannot update labels through pod status"
        )));
    }
    let claims = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.resource_claim_statuses.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.resource_claim_name))
            .collect::<Vec<_>>()
    };
    if claims(&old) != claims(&new) {
        return Err(a.forbidden(format!(
            "node \"{node}\" cannot update resource claim statues"
        )));
    }
    Ok(())
}

/// The label keys added, removed or changed between `a` and `b`.
fn modified_labels(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for (k, v) in b {
        if a.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    out
}

fn label_namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

fn in_namespace(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// `kubeletapis.IsKubeletLabel`.
pub fn is_kubelet_label(key: &str) -> bool {
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|ns| in_namespace(label_namespace(key), ns))
}

/// The labels of `modified` a node may not add, remove or change
/// (`getForbiddenLabels`): the node-restriction namespace, and
/// `kubernetes.io`/`k8s.io` labels outside the kubelet's set.
pub fn forbidden_labels(modified: &BTreeSet<String>) -> Vec<String> {
    modified
        .iter()
        .filter(|key| {
            let ns = label_namespace(key);
            let restricted = in_namespace(ns, LABEL_NAMESPACE_NODE_RESTRICTION);
            let kubernetes = in_namespace(ns, "kubernetes.io") || in_namespace(ns, "k8s.io");
            restricted || (kubernetes && !is_kubelet_label(key))
        })
        .cloned()
        .collect()
}

fn admit_node(node: &str, a: &Attributes<'_>) -> ApiResult<()> {
    if a.name != node {
        return Err(a.forbidden(format!(
            "node \"{node}\" is not allowed to modify node \"{}\"",
            a.name
        )));
    }
    let labels = |n: &Node| n.metadata.labels.clone().unwrap_or_default();
    match a.operation {
        Operation::Create => {
            let new: Node = typed(a, a.object)?;
            if new.spec.as_ref().is_some_and(|s| s.config_source.is_some()) {
                return Err(a.forbidden(format!(
                    "node \"{node}\" is not allowed to create pods with a non-nil configSource"
                )));
            }
            let forbidden = forbidden_labels(&modified_labels(&labels(&new), &BTreeMap::new()));
            if !forbidden.is_empty() {
                return Err(a.forbidden(format!(
                    "node \"{node}\" is not allowed to set the following labels: {}",
                    forbidden.join(", ")
                )));
            }
        }
        Operation::Update => {
            let new: Node = typed(a, a.object)?;
            let old: Node = typed(a, a.old)?;
            let config_source = |n: &Node| n.spec.as_ref().and_then(|s| s.config_source.clone());
            // Only a new non-nil source counts: old kubelets drop the field.
            if config_source(&new).is_some() && config_source(&new) != config_source(&old) {
                return Err(a.forbidden(format!(
                    "node \"{node}\" is not allowed to update configSource to a new non-nil configSource"
                )));
            }
            let taints = |n: &Node| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default()
            };
            if taints(&new) != taints(&old) {
                return Err(a.forbidden(format!("node \"{node}\" is not allowed to modify taints")));
            }
            let forbidden = forbidden_labels(&modified_labels(&labels(&new), &labels(&old)));
            if !forbidden.is_empty() {
                // Upstream's message has no node name here.
                return Err(a.forbidden(format!(
                    "is not allowed to modify labels: {}",
                    forbidden.join(", ")
                )));
            }
        }
        Operation::Delete => {}
    }
    Ok(())
}

fn admit_lease(node: &str, a: &Attributes<'_>) -> ApiResult<()> {
    if a.namespace != Some(NODE_LEASE_NAMESPACE) {
        return Err(a.forbidden(format!(
            "can only access leases in the \"{NODE_LEASE_NAMESPACE}\" system namespace"
        )));
    }
    if a.name != node {
        return Err(
            a.forbidden("can only access node lease with the same name as the requesting node")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn kubelet_labels_and_restricted_namespaces() {
        let modified = set(&[
            "kubernetes.io/hostname",
            "node.kubernetes.io/instance-type",
            "foo.node.kubernetes.io/x",
            "kubelet.kubernetes.io/y",
            "node-restriction.kubernetes.io/role",
            "a.node-restriction.kubernetes.io/role",
            "node-role.kubernetes.io/master",
            "example.k8s.io/z",
            "k8s.io/w",
            "example.com/ok",
            "plain",
            // Not a subdomain of kubernetes.io: allowed.
            "notkubernetes.io/ok",
        ]);
        assert_eq!(
            forbidden_labels(&modified),
            [
                "a.node-restriction.kubernetes.io/role",
                "example.k8s.io/z",
                "k8s.io/w",
                "node-restriction.kubernetes.io/role",
                "node-role.kubernetes.io/master",
            ]
        );
    }

    #[test]
    fn modified_labels_are_the_symmetric_difference() {
        let a = BTreeMap::from([("x".to_string(), "1".to_string()), ("y".into(), "2".into())]);
        let b = BTreeMap::from([("x".to_string(), "1".to_string()), ("z".into(), "3".into())]);
        assert_eq!(modified_labels(&a, &b), set(&["y", "z"]));
        assert!(modified_labels(&a, &a).is_empty());
    }
}
