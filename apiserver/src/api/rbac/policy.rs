//! The bootstrap policy (upstream
//! `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go` and
//! `controller_policy.go`), created at start-up when missing and reconciled
//! on every start as upstream's `ensure-rbac-policy` post-start hook does
//! (`pkg/registry/rbac/reconciliation`):
//!
//! - A missing object is created, labelled `kubernetes.io/bootstrapping:
//!   rbac-defaults` and annotated `rbac.authorization.kubernetes.io/autoupdate:
//!   "true"`.
//! - An existing object annotated `autoupdate: "false"` is left alone
//!   (upstream's "protected"); any other gets the missing labels,
//!   annotations, rules (each missing piece as upstream's broken-down rule),
//!   aggregation selectors and subjects added. Nothing a user added is
//!   removed. A binding whose roleRef differs is deleted and created again
//!   (roleRef is immutable), keeping its subjects.
//!
//! The roles keep upstream's rules verbatim, also for resources berth does
//! not serve: they grant nothing there.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{GROUP, rules};
use crate::api::ApiState;
use crate::api::objects;
use crate::storage::{self, object_key};

/// The annotation that lets the server reconcile a bootstrap object.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The label every bootstrap object carries.
pub const BOOTSTRAP_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// The label selecting roles aggregated into `admin`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
/// The label selecting roles aggregated into `edit`.
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
/// The label selecting roles aggregated into `view`.
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

const LEGACY: &str = "";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTOSCALING: &str = "autoscaling";
const BATCH: &str = "batch";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";
const EXTENSIONS: &str = "extensions";
const POLICY: &str = "policy";
const STORAGE: &str = "storage.k8s.io";
const NETWORKING: &str = "networking.k8s.io";
const EVENTS: &str = "events.k8s.io";
const CERTIFICATES: &str = "certificates.k8s.io";
const METRICS: &str = "metrics.k8s.io";

const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const READ: &[&str] = &["get", "list", "watch"];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

/// `rbacv1helpers.NewRule(verbs).Groups(groups).Resources(resources)`.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        ..PolicyRule::default()
    }
}

/// The same rule limited to `names`.
fn named(mut r: PolicyRule, names: &[&str]) -> PolicyRule {
    r.resource_names = Some(strings(names));
    r
}

/// `NewRule(verbs).URLs(urls)`.
fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: Some(strings(urls)),
        ..PolicyRule::default()
    }
}

/// Upstream's `eventsRule()`.
fn events_rule() -> PolicyRule {
    rule(
        &["create", "update", "patch"],
        &[LEGACY, EVENTS],
        &["events"],
    )
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert(BOOTSTRAP_LABEL.0.into(), BOOTSTRAP_LABEL.1.into());
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(l),
        annotations: Some(BTreeMap::from([(
            AUTOUPDATE_ANNOTATION.to_string(),
            "true".to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn aggregated(name: &str, labels: &[(&str, &str)], selects: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: None,
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some(BTreeMap::from([(selects.to_string(), "true".to_string())])),
                match_expressions: None,
            }]),
        }),
    }
}

/// Upstream's `NodeRules()`: the `system:node` role, and what the Node
/// authorizer grants for the resources it does not subdivide.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(READ, &[LEGACY], &["services"]),
        rule(&["create", "get", "list", "watch"], &[LEGACY], &["nodes"]),
        rule(&["update", "patch"], &[LEGACY], &["nodes/status"]),
        rule(&["update", "patch"], &[LEGACY], &["nodes"]),
        rule(&["create", "update", "patch"], &[LEGACY], &["events"]),
        rule(READ, &[LEGACY], &["pods"]),
        rule(&["create", "delete"], &[LEGACY], &["pods"]),
        rule(&["update", "patch"], &[LEGACY], &["pods/status"]),
        rule(&["create"], &[LEGACY], &["pods/eviction"]),
        rule(
            &["get", "list", "watch"],
            &[LEGACY],
            &["secrets", "configmaps"],
        ),
        rule(
            &["get"],
            &[LEGACY],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["get"], &[LEGACY], &["endpoints"]),
        rule(
            &["create", "get", "list", "watch"],
            &[CERTIFICATES],
            &["certificatesigningrequests"],
        ),
        rule(
            &["get", "list", "watch"],
            &[CERTIFICATES],
            &["clustertrustbundles"],
        ),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[COORDINATION],
            &["leases"],
        ),
        rule(&["get"], &[STORAGE], &["volumeattachments"]),
        rule(&["create"], &[LEGACY], &["serviceaccounts/token"]),
        rule(
            &["get", "update", "patch"],
            &[LEGACY],
            &["persistentvolumeclaims/status"],
        ),
        rule(&["get", "watch", "list"], &[STORAGE], &["csidrivers"]),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[STORAGE],
            &["csinodes"],
        ),
        rule(
            &["get", "list", "watch"],
            &["node.k8s.io"],
            &["runtimeclasses"],
        ),
    ]
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<ClusterRole> {
    vec![
        role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &[AUTHORIZATION],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], &[AUTHENTICATION], &["selfsubjectreviews"]),
            ],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
        ),
        aggregated("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        // metrics-server's manifest (components.yaml): `kubectl top` for
        // whoever may view.
        role(
            "system:aggregated-metrics-reader",
            &[
                (AGGREGATE_TO_ADMIN, "true"),
                (AGGREGATE_TO_EDIT, "true"),
                (AGGREGATE_TO_VIEW, "true"),
            ],
            vec![rule(READ, &[METRICS], &["pods", "nodes"])],
        ),
        role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            vec![
                rule(
                    &["create"],
                    &[AUTHORIZATION],
                    &["localsubjectaccessreviews"],
                ),
                rule(READ_WRITE, &[GROUP], &["roles", "rolebindings"]),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[(AGGREGATE_TO_EDIT, "true")],
            vec![
                rule(
                    READ,
                    &[LEGACY],
                    &[
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[LEGACY], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &[LEGACY],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                    ],
                ),
                rule(&["create"], &[LEGACY], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[LEGACY],
                    &[
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                        "persistentvolumeclaims",
                        "configmaps",
                        "secrets",
                        "events",
                    ],
                ),
                rule(&["create"], &[LEGACY], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &[APPS],
                    &[
                        "statefulsets",
                        "statefulsets/scale",
                        "daemonsets",
                        "deployments",
                        "deployments/scale",
                        "deployments/rollback",
                        "replicasets",
                        "replicasets/scale",
                    ],
                ),
                rule(WRITE, &[AUTOSCALING], &["horizontalpodautoscalers"]),
                rule(WRITE, &[BATCH], &["jobs", "cronjobs"]),
                rule(
                    WRITE,
                    &[EXTENSIONS],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/scale",
                        "deployments/rollback",
                        "ingresses",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                        "networkpolicies",
                    ],
                ),
                rule(WRITE, &[POLICY], &["poddisruptionbudgets"]),
                rule(WRITE, &[NETWORKING], &["networkpolicies", "ingresses"]),
                rule(READ_WRITE, &[COORDINATION], &["leases"]),
            ],
        ),
        role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            vec![
                rule(
                    READ,
                    &[LEGACY],
                    &[
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "configmaps",
                    ],
                ),
                rule(
                    READ,
                    &[LEGACY],
                    &[
                        "limitranges",
                        "resourcequotas",
                        "bindings",
                        "events",
                        "pods/status",
                        "resourcequotas/status",
                        "namespaces/status",
                        "replicationcontrollers/status",
                        "pods/log",
                    ],
                ),
                rule(READ, &[LEGACY], &["namespaces"]),
                rule(READ, &[DISCOVERY], &["endpointslices"]),
                rule(
                    READ,
                    &[APPS],
                    &[
                        "controllerrevisions",
                        "statefulsets",
                        "statefulsets/status",
                        "statefulsets/scale",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/status",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/status",
                        "replicasets/scale",
                    ],
                ),
                rule(
                    READ,
                    &[AUTOSCALING],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &[BATCH],
                    &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
                ),
                rule(
                    READ,
                    &[EXTENSIONS],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                        "networkpolicies",
                    ],
                ),
                rule(
                    READ,
                    &[POLICY],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &[NETWORKING],
                    &["networkpolicies", "ingresses", "ingresses/status"],
                ),
            ],
        ),
        role("system:node", &[], node_rules()),
        role(
            "system:node-proxier",
            &[],
            vec![
                rule(&["list", "watch"], &[LEGACY], &["services", "endpoints"]),
                rule(&["get", "list", "watch"], &[LEGACY], &["nodes"]),
                events_rule(),
                rule(&["list", "watch"], &[DISCOVERY], &["endpointslices"]),
            ],
        ),
        role(
            "system:kube-controller-manager",
            &[],
            vec![
                events_rule(),
                rule(&["create"], &[COORDINATION], &["leases"]),
                named(
                    rule(&["get", "update"], &[COORDINATION], &["leases"]),
                    &["kube-controller-manager"],
                ),
                rule(&["create"], &[LEGACY], &["endpoints"]),
                named(
                    rule(&["get", "update"], &[LEGACY], &["endpoints"]),
                    &["kube-controller-manager"],
                ),
                rule(&["create"], &[LEGACY], &["secrets", "serviceaccounts"]),
                rule(&["delete"], &[LEGACY], &["secrets"]),
                rule(
                    &["get"],
                    &[LEGACY],
                    &["namespaces", "secrets", "serviceaccounts", "configmaps"],
                ),
                rule(&["update"], &[LEGACY], &["secrets", "serviceaccounts"]),
                rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
                rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(&["create"], &[LEGACY], &["serviceaccounts/token"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            &[],
            vec![
                events_rule(),
                rule(&["create"], &[COORDINATION], &["leases"]),
                named(
                    rule(&["get", "update"], &[COORDINATION], &["leases"]),
                    &["kube-scheduler"],
                ),
                rule(&["create"], &[LEGACY], &["endpoints"]),
                named(
                    rule(&["get", "update"], &[LEGACY], &["endpoints"]),
                    &["kube-scheduler"],
                ),
                rule(READ, &[LEGACY], &["nodes"]),
                rule(&["get", "list", "watch", "delete"], &[LEGACY], &["pods"]),
                rule(&["create"], &[LEGACY], &["pods/binding", "bindings"]),
                rule(&["patch", "update"], &[LEGACY], &["pods/status"]),
                rule(READ, &[LEGACY], &["services", "replicationcontrollers"]),
                rule(READ, &[APPS, EXTENSIONS], &["replicasets"]),
                rule(READ, &[APPS], &["statefulsets"]),
                rule(READ, &[POLICY], &["poddisruptionbudgets"]),
                rule(
                    READ,
                    &[LEGACY],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
                rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
                rule(READ, &[STORAGE], &["csinodes"]),
                rule(READ, &[LEGACY], &["namespaces"]),
                rule(READ, &[STORAGE], &["csidrivers"]),
                rule(READ, &[STORAGE], &["csistoragecapacities"]),
            ],
        ),
        // controller_policy.go: the controllers berth runs in-process (they
        // write storage directly and need no identity; the roles are there
        // for an external controller manager).
        role(
            "system:controller:node-controller",
            &[],
            vec![
                rule(
                    &["get", "list", "update", "delete", "patch"],
                    &[LEGACY],
                    &["nodes"],
                ),
                rule(&["patch", "update"], &[LEGACY], &["nodes/status"]),
                rule(&["patch", "update"], &[LEGACY], &["pods/status"]),
                rule(&["list", "delete"], &[LEGACY], &["pods"]),
                events_rule(),
            ],
        ),
        role(
            "system:controller:clusterrole-aggregation-controller",
            &[],
            vec![rule(
                &["escalate", "get", "list", "watch", "update", "patch"],
                &[GROUP],
                &["clusterroles"],
            )],
        ),
    ]
}

fn subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: Some(GROUP.into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

fn service_account(namespace: &str, name: &str) -> Subject {
    Subject {
        api_group: Some(String::new()),
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
    }
}

fn binding(role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(role, &[]),
        role_ref: RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: (!subjects.is_empty()).then_some(subjects),
    }
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let group = |g: &str| subject("Group", g);
    let user = |u: &str| subject("User", u);
    vec![
        binding("cluster-admin", vec![group("system:masters")]),
        binding("system:discovery", vec![group(super::AUTHENTICATED_GROUP)]),
        binding("system:basic-user", vec![group(super::AUTHENTICATED_GROUP)]),
        binding(
            "system:public-info-viewer",
            vec![
                group(super::AUTHENTICATED_GROUP),
                group(super::UNAUTHENTICATED_GROUP),
            ],
        ),
        binding("system:node-proxier", vec![user("system:kube-proxy")]),
        binding(
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        binding("system:kube-scheduler", vec![user("system:kube-scheduler")]),
        // Bound to nobody since 1.8: the Node authorizer serves nodes.
        binding("system:node", vec![]),
        binding(
            "system:controller:node-controller",
            vec![service_account("kube-system", "node-controller")],
        ),
        binding(
            "system:controller:clusterrole-aggregation-controller",
            vec![service_account(
                "kube-system",
                "clusterrole-aggregation-controller",
            )],
        ),
    ]
}

/// What reconciling one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was missing and was created.
    Created,
    /// It lacked something and was updated (or recreated).
    Updated,
    /// It was complete, or protected (`autoupdate: "false"`).
    Unchanged,
}

fn protected(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(AUTOUPDATE_ANNOTATION))
        .is_some_and(|v| v == "false")
}

/// Add the expected labels and annotations the object lacks (existing
/// values win, as upstream's merge).
fn merge_meta(existing: &mut ObjectMeta, expected: &ObjectMeta) {
    for (have, want) in [
        (&mut existing.labels, &expected.labels),
        (&mut existing.annotations, &expected.annotations),
    ] {
        for (k, v) in want.iter().flatten() {
            have.get_or_insert_with(BTreeMap::new)
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
    }
}

/// Upstream's `computeReconciledRole` (without removing extra permissions).
pub fn reconcile_role(existing: &ClusterRole, expected: &ClusterRole) -> Option<ClusterRole> {
    if protected(&existing.metadata) {
        return None;
    }
    let mut out = existing.clone();
    merge_meta(&mut out.metadata, &expected.metadata);
    match &expected.aggregation_rule {
        // The aggregation controller owns the rules of an aggregated role.
        Some(want) => {
            let have = out
                .aggregation_rule
                .get_or_insert_with(AggregationRule::default);
            for sel in want.cluster_role_selectors.iter().flatten() {
                let sels = have.cluster_role_selectors.get_or_insert_with(Vec::new);
                if !sels.contains(sel) {
                    sels.push(sel.clone());
                }
            }
        }
        None => {
            let have = out.rules.clone().unwrap_or_default();
            let missing = rules::uncovered(&have, expected.rules.as_deref().unwrap_or(&[]));
            if !missing.is_empty() {
                out.rules.get_or_insert_with(Vec::new).extend(missing);
            }
        }
    }
    (out != *existing).then_some(out)
}

/// Upstream's `computeReconciledRoleBinding` (without removing extra
/// subjects). The flag: the roleRef differs, so the object must be recreated.
pub fn reconcile_binding(
    existing: &ClusterRoleBinding,
    expected: &ClusterRoleBinding,
) -> Option<(ClusterRoleBinding, bool)> {
    if protected(&existing.metadata) {
        return None;
    }
    let mut out = existing.clone();
    merge_meta(&mut out.metadata, &expected.metadata);
    let recreate = existing.role_ref != expected.role_ref;
    out.role_ref = expected.role_ref.clone();
    for s in expected.subjects.iter().flatten() {
        let subjects = out.subjects.get_or_insert_with(Vec::new);
        if !subjects.contains(s) {
            subjects.push(s.clone());
        }
    }
    (out != *existing).then_some((out, recreate))
}

fn to_bytes<T: Serialize>(obj: &T) -> Result<Vec<u8>, storage::Error> {
    let mut v = serde_json::to_value(obj).map_err(|e| storage::Error::Unavailable {
        key: String::new(),
        reason: format!("encoding a bootstrap RBAC object: {e}"),
    })?;
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).map_err(|e| storage::Error::Unavailable {
        key: String::new(),
        reason: format!("encoding a bootstrap RBAC object: {e}"),
    })
}

fn fresh_meta(meta: &mut ObjectMeta) {
    meta.uid = Some(objects::new_uid());
    meta.creation_timestamp = objects::parse_time(&objects::now_rfc3339())
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
}

/// Read `key` decoded with its revision; undecodable objects are treated
/// as user-owned and left alone (`Ok(None)` with a warning would hide them
/// from reconciliation, so they are reported as an error instead).
async fn read<T: DeserializeOwned>(
    state: &ApiState,
    key: &str,
) -> Result<Option<(T, i64)>, storage::Error> {
    let Some(stored) = state.storage.get(key).await? else {
        return Ok(None);
    };
    let obj = serde_json::from_slice(&stored.value).map_err(|e| storage::Error::Unavailable {
        key: key.to_string(),
        reason: format!("stored RBAC object does not decode: {e}"),
    })?;
    Ok(Some((obj, stored.mod_revision)))
}

async fn ensure_role(state: &ApiState, expected: &ClusterRole) -> Result<Outcome, storage::Error> {
    let name = expected.metadata.name.as_deref().unwrap_or_default();
    let key = object_key("clusterroles", None, name)?;
    match read::<ClusterRole>(state, &key).await? {
        None => {
            let mut obj = expected.clone();
            fresh_meta(&mut obj.metadata);
            match state.storage.create(&key, to_bytes(&obj)?).await {
                Ok(_) => Ok(Outcome::Created),
                // Another server of the same cluster won the race.
                Err(storage::Error::AlreadyExists { .. }) => Ok(Outcome::Unchanged),
                Err(e) => Err(e),
            }
        }
        Some((existing, rev)) => match reconcile_role(&existing, expected) {
            None => Ok(Outcome::Unchanged),
            Some(updated) => {
                state
                    .storage
                    .update(&key, to_bytes(&updated)?, Some(rev))
                    .await?;
                Ok(Outcome::Updated)
            }
        },
    }
}

async fn ensure_binding(
    state: &ApiState,
    expected: &ClusterRoleBinding,
) -> Result<Outcome, storage::Error> {
    let name = expected.metadata.name.as_deref().unwrap_or_default();
    let key = object_key("clusterrolebindings", None, name)?;
    match read::<ClusterRoleBinding>(state, &key).await? {
        None => {
            let mut obj = expected.clone();
            fresh_meta(&mut obj.metadata);
            match state.storage.create(&key, to_bytes(&obj)?).await {
                Ok(_) => Ok(Outcome::Created),
                Err(storage::Error::AlreadyExists { .. }) => Ok(Outcome::Unchanged),
                Err(e) => Err(e),
            }
        }
        Some((existing, rev)) => match reconcile_binding(&existing, expected) {
            None => Ok(Outcome::Unchanged),
            Some((mut updated, false)) => {
                updated.metadata.resource_version = None;
                state
                    .storage
                    .update(&key, to_bytes(&updated)?, Some(rev))
                    .await?;
                Ok(Outcome::Updated)
            }
            Some((mut updated, true)) => {
                // roleRef is immutable: a new object, as upstream recreates.
                state.storage.delete(&key, Some(rev)).await?;
                fresh_meta(&mut updated.metadata);
                updated.metadata.resource_version = None;
                state.storage.create(&key, to_bytes(&updated)?).await?;
                Ok(Outcome::Updated)
            }
        },
    }
}

/// Counts of what [`ensure`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Objects created.
    pub created: usize,
    /// Objects updated.
    pub updated: usize,
    /// Objects left as they were.
    pub unchanged: usize,
}

/// Create or reconcile every bootstrap role and binding, then aggregate.
pub async fn ensure(state: &ApiState) -> Result<Summary, storage::Error> {
    let mut summary = Summary::default();
    let mut count = |o: Outcome| match o {
        Outcome::Created => summary.created += 1,
        Outcome::Updated => summary.updated += 1,
        Outcome::Unchanged => summary.unchanged += 1,
    };
    for r in cluster_roles() {
        count(ensure_role(state, &r).await?);
    }
    for b in cluster_role_bindings() {
        count(ensure_binding(state, &b).await?);
    }
    super::aggregation::reconcile_all(state)
        .await
        .map_err(|e| storage::Error::Unavailable {
            key: "/registry/clusterroles/".into(),
            reason: format!("aggregating cluster roles: {e}"),
        })?;
    tracing::info!(
        created = summary.created,
        updated = summary.updated,
        unchanged = summary.unchanged,
        "RBAC bootstrap policy ensured"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_adds_and_keeps() {
        let expected = cluster_roles()
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some("system:basic-user"))
            .expect("basic-user");
        assert_eq!(reconcile_role(&expected, &expected), None);
        let mut trimmed = expected.clone();
        trimmed.rules = Some(vec![rule(&["get"], &["x"], &["y"])]);
        let fixed = reconcile_role(&trimmed, &expected).expect("changed");
        let rules = fixed.rules.expect("rules");
        assert_eq!(rules[0], rule(&["get"], &["x"], &["y"]), "user rule kept");
        assert!(rules::uncovered(&rules, expected.rules.as_deref().unwrap_or(&[])).is_empty());
        let mut off = trimmed.clone();
        off.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(AUTOUPDATE_ANNOTATION.into(), "false".into());
        assert_eq!(reconcile_role(&off, &expected), None);

        let b = cluster_role_bindings().remove(0);
        let mut extra = b.clone();
        extra
            .subjects
            .get_or_insert_with(Vec::new)
            .push(subject("User", "carol"));
        assert_eq!(reconcile_binding(&extra, &b), None);
        let mut none = b.clone();
        none.subjects = None;
        let (fixed, recreate) = reconcile_binding(&none, &b).expect("changed");
        assert!(!recreate);
        assert_eq!(fixed.subjects, b.subjects);
    }

    #[test]
    fn every_bootstrap_object_is_labelled_and_bound_roles_exist() {
        let roles = cluster_roles();
        for r in &roles {
            let labels = r.metadata.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get(BOOTSTRAP_LABEL.0).map(String::as_str),
                Some("rbac-defaults")
            );
        }
        for b in cluster_role_bindings() {
            assert!(
                roles
                    .iter()
                    .any(|r| r.metadata.name == Some(b.role_ref.name.clone()))
            );
        }
    }
}
