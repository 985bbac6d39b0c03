//! Authorization: kube-apiserver's `--authorization-mode=Node,RBAC`. Every
//! resource request of an authenticated user goes through a chain of
//! authorizers; the first one to allow wins, otherwise 403:
//!
//! 1. **`system:masters`** may do everything.
//! 2. The **Node authorizer** (upstream `plugin/pkg/auth/authorizer/node`)
//!    for users `system:node:<name>` in the group `system:nodes`; what the
//!    written objects may contain is NodeRestriction's
//!    ([`super::noderestriction`], an admission check on the decoded object):
//!    - `nodes`: get/list/watch every node (kubelets read other nodes);
//!      create (NodeRestriction: only its own); update/patch its own Node and
//!      `nodes/<name>/status`. Other nodes and every delete are forbidden.
//!      (Upstream, with `AuthorizeNodeWithSelectors`, now limits reads to the
//!      node's own object; berth keeps reads open.)
//!    - `pods`: get a pod bound to it (a missing pod gives 404); list/watch
//!      only with the field selector `spec.nodeName=<name>` — upstream's
//!      behaviour since `AuthorizeNodeWithSelectors` (beta, on by default in
//!      1.32); update/patch `pods/<name>/status` and delete only of pods whose
//!      stored `spec.nodeName` is the node; create (NodeRestriction: mirror
//!      pods bound to itself, owned by its Node, referring to nothing). Pod
//!      spec updates, bindings and delete-collection are forbidden.
//!    - `leases` in `kube-node-lease`: get/create/update/patch of the lease
//!      named like the node only.
//!    - `events`: create/update/patch in any namespace.
//!    - `configmaps`, `secrets`, `serviceaccounts`: get of the objects
//!      referenced by a pod bound to the node (volumes, projected volumes,
//!      `env[].valueFrom`, `envFrom`, `imagePullSecrets`,
//!      `serviceAccountName`: berth-api's `references`), found by scanning the
//!      namespace's pods (upstream keeps a graph instead). Mirror pods are
//!      not edges of that graph: only pods someone else bound to the node grant it anything.
//!    - `namespaces`: get.
//!    - every other resource (not subdivided by node): the static node rules
//!      (upstream's `NodeRules()`, also the `system:node` role), e.g.
//!      get/list/watch of `runtimeclasses`, create of `subjectaccessreviews`.
//!    - `pods/log` (verb `get`) and `pods/exec` (verb `create`, also for a
//!      WebSocket `GET`): never, as upstream.
//! 3. **RBAC** ([`super::rbac`]): ClusterRoleBindings, and RoleBindings of
//!    the request's namespace, whose subjects match the user (every
//!    authenticated user is also in `system:authenticated`) and whose role
//!    has a matching rule.
//! 4. **Everything else** is forbidden.
//!
//! Discovery (`/api`, `/apis`, `/api/v1`…), `/version`, `/openapi/*` and the
//! health endpoints are open to every authenticated user; they never reach
//! this module. Without an authenticator (no user at all) everything is
//! allowed, as before.

use std::sync::LazyLock;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_api::references;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::User;
use super::error::ApiError;
use super::rbac::policy;
use super::rbac::rules::{self, Request};
use super::resources::Resource;
use super::selectors::FieldSelector;
use crate::storage::{ListOptions, collection_prefix, object_key};

/// The group of cluster administrators.
pub const MASTERS_GROUP: &str = "system:masters";
/// The group of node (kubelet) identities.
pub const NODES_GROUP: &str = "system:nodes";
/// The user name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The namespace of node heartbeat leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The annotation marking a mirror pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What a resource request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`); see [`verb`].
    pub verb: &'a str,
    /// The resource.
    pub res: &'static Resource,
    /// The namespace from the URL.
    pub namespace: Option<&'a str>,
    /// The object name from the URL.
    pub name: Option<&'a str>,
    /// The subresource (`status`, `binding`).
    pub sub: Option<&'a str>,
    /// The raw `fieldSelector` parameter.
    pub field_selector: &'a str,
    /// The request body (JSON; empty for reads).
    pub body: &'a [u8],
}

/// The verb of a request as the generic handlers serve it.
pub fn verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET if has_name => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if has_name => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// A denied request: a 403 `Status` shaped like kube-apiserver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// `details.name` (empty for collections).
    pub name: String,
    /// `details.kind`: the plural resource.
    pub resource: String,
    /// `details.group`.
    pub group: String,
    /// The full message.
    pub message: String,
}

impl Forbidden {
    fn new(user: &User, attrs: &Attributes<'_>, name: &str, reason: &str) -> Forbidden {
        let res = attrs.res;
        let resource = match attrs.sub {
            Some(s) => format!("{}/{s}", res.name),
            None => res.name.to_string(),
        };
        let scope = match attrs.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let mut why = format!(
            "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, attrs.verb, res.group
        );
        if !reason.is_empty() {
            why = format!("{why}: {reason}");
        }
        let message = if name.is_empty() {
            format!("{} is forbidden: {why}", res.qualified())
        } else {
            format!("{} \"{name}\" is forbidden: {why}", res.qualified())
        };
        Forbidden {
            name: name.to_string(),
            resource: res.name.to_string(),
            group: res.group.to_string(),
            message,
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut details = json!({"kind": self.resource});
        if !self.name.is_empty() {
            details["name"] = json!(self.name);
        }
        if !self.group.is_empty() {
            details["group"] = json!(self.group);
        }
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": "Forbidden",
            "details": details, "code": 403,
        })
    }
}

/// Why a request did not go through.
#[derive(Debug)]
pub enum Denied {
    /// 403.
    Forbidden(Forbidden),
    /// Authorization itself failed (storage error).
    Error(ApiError),
}

impl From<ApiError> for Denied {
    fn from(e: ApiError) -> Denied {
        Denied::Error(e)
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Forbidden(f) => (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "application/json")],
                f.status().to_string(),
            )
                .into_response(),
            Denied::Error(e) => e.into_response(),
        }
    }
}

/// One authorizer's answer.
enum Decision {
    Allow,
    /// Not allowed, with an optional reason appended to the message.
    NoOpinion(String),
}

fn no(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// The node name of a node identity (`system:node:<name>` in `system:nodes`).
pub fn node_name(user: &User) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    user.name.strip_prefix(NODE_USER_PREFIX)
}

/// Authorize a resource request. `user: None` (no authentication
/// configured) is allowed everything.
pub async fn authorize(
    state: &ApiState,
    user: Option<&User>,
    attrs: &Attributes<'_>,
) -> Result<(), Denied> {
    let Some(user) = user else { return Ok(()) };
    if user.groups.iter().any(|g| g == MASTERS_GROUP) {
        return Ok(());
    }
    let mut reason = String::new();
    if let Some(node) = node_name(user) {
        match authorize_node(state, node, attrs).await? {
            Decision::Allow => return Ok(()),
            Decision::NoOpinion(r) => reason = r,
        }
    }
    if super::rbac::authorize_resource_request(state, user, attrs).await? {
        return Ok(());
    }
    let name = match attrs.name {
        Some(n) => n.to_string(),
        None if attrs.verb == "create" => body_name(attrs.body),
        None => String::new(),
    };
    tracing::debug!(user = %user.name, verb = attrs.verb, resource = attrs.res.name, %name, %reason, "forbidden");
    Err(Denied::Forbidden(Forbidden::new(
        user, attrs, &name, &reason,
    )))
}

fn body_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

fn body_name(body: &[u8]) -> String {
    body_json(body)
        .and_then(|o| {
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The stored object addressed by the request (`None`: absent).
async fn stored(
    state: &ApiState,
    attrs: &Attributes<'_>,
    name: &str,
) -> Result<Option<Value>, Denied> {
    let key = object_key(attrs.res.name, attrs.namespace, name)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let got = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::from_storage(e, &attrs.res.qualified(), name))?;
    Ok(got.and_then(|s| serde_json::from_slice(&s.value).ok()))
}

fn pod_node(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn bound_elsewhere(node: &str, action: &str, other: &str) -> Decision {
    if other.is_empty() {
        no(format!(
            "node '{node}' cannot {action} pods not bound to a node"
        ))
    } else {
        no(format!(
            "node '{node}' cannot {action} pods bound to node '{other}'"
        ))
    }
}

async fn authorize_node(
    state: &ApiState,
    node: &str,
    attrs: &Attributes<'_>,
) -> Result<Decision, Denied> {
    if node.is_empty() {
        return Ok(no("unknown node for user"));
    }
    let res = attrs.res;
    let verb = attrs.verb;
    let name = attrs.name.unwrap_or("");
    Ok(match (res.group, res.name, attrs.sub) {
        ("", "nodes", None | Some("status")) => match verb {
            "get" | "list" | "watch" => Decision::Allow,
            // Which Node it may create: NodeRestriction, on the decoded object.
            "create" if attrs.sub.is_none() => Decision::Allow,
            "update" | "patch" if name == node => Decision::Allow,
            "update" | "patch" => no(format!("node '{node}' cannot modify node '{name}'")),
            _ => no(""),
        },
        ("", "pods", None) => match verb {
            "get" => match stored(state, attrs, name).await? {
                None => Decision::Allow,
                Some(pod) if pod_node(&pod) == node => Decision::Allow,
                Some(_) => no(format!(
                    "no relationship found between node '{node}' and this object"
                )),
            },
            "list" | "watch" => {
                let sel = FieldSelector::parse(attrs.field_selector, res.kind).unwrap_or_default();
                if sel
                    .0
                    .iter()
                    .any(|(p, eq, v)| p == "/spec/nodeName" && *eq && v == node)
                {
                    Decision::Allow
                } else {
                    no("can only list/watch pods with spec.nodeName field selector")
                }
            }
            // Only mirror pods bound to itself that refer to nothing:
            // NodeRestriction decides on the decoded object.
            "create" => Decision::Allow,
            "delete" => match stored(state, attrs, name).await? {
                None => Decision::Allow,
                Some(pod) if pod_node(&pod) == node => Decision::Allow,
                Some(pod) => bound_elsewhere(node, "delete", pod_node(&pod)),
            },
            _ => no(""),
        },
        ("", "pods", Some("status")) => match verb {
            "get" | "update" | "patch" => match stored(state, attrs, name).await? {
                None => Decision::Allow,
                Some(pod) if pod_node(&pod) == node => Decision::Allow,
                Some(pod) => bound_elsewhere(
                    node,
                    if verb == "get" { "read" } else { "update" },
                    pod_node(&pod),
                ),
            },
            _ => no(""),
        },
        ("coordination.k8s.io", "leases", None) => {
            if attrs.namespace != Some(NODE_LEASE_NAMESPACE) {
                return Ok(no(format!(
                    "can only access leases in the {NODE_LEASE_NAMESPACE} namespace"
                )));
            }
            let lease = match verb {
                "create" => body_name(attrs.body),
                _ => name.to_string(),
            };
            match verb {
                "get" | "create" | "update" | "patch" if lease == node => Decision::Allow,
                "get" | "create" | "update" | "patch" => {
                    no("can only access node lease with the same name as the requesting node")
                }
                _ => no(""),
            }
        }
        ("", "events", None) => match verb {
            "create" | "update" | "patch" => Decision::Allow,
            _ => no(""),
        },
        ("", kind @ ("configmaps" | "secrets" | "serviceaccounts"), None) => match verb {
            "get" => {
                let ns = attrs.namespace.unwrap_or("");
                if referenced(state, node, ns, kind, name).await? {
                    Decision::Allow
                } else {
                    no(format!(
                        "no relationship found between node '{node}' and this object"
                    ))
                }
            }
            _ => no(""),
        },
        ("", "namespaces", None) if verb == "get" => Decision::Allow,
        // Access to other resources is not subdivided: upstream evaluates the
        // static node rules (`NodeRules()`, the `system:node` role's rules).
        _ => {
            let req = Request::resource(
                verb,
                res.group,
                res.name,
                attrs.sub.unwrap_or(""),
                attrs.namespace.unwrap_or(""),
                name,
            );
            if NODE_RULES.iter().any(|rule| rules::rule_allows(&req, rule)) {
                Decision::Allow
            } else {
                no("")
            }
        }
    })
}

/// Upstream's `bootstrappolicy.NodeRules()`, built once.
static NODE_RULES: LazyLock<Vec<PolicyRule>> = LazyLock::new(policy::node_rules);

/// Whether a pod bound to `node` in `namespace` refers to the `kind`
/// (`configmaps`, `secrets`, `serviceaccounts`) object `name` — the edges of
/// upstream's graph (pod → secret/configmap/serviceaccount, pod → node),
/// found by scanning the namespace's pods. Mirror pods are not edges: a node
/// creates them itself, NodeRestriction refuses any that refer to an object,
/// and one stored before that rule (or written around it) must not grant its
/// node anything.
async fn referenced(
    state: &ApiState,
    node: &str,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<bool, Denied> {
    if namespace.is_empty() || name.is_empty() {
        return Ok(false);
    }
    let prefix = collection_prefix("pods", Some(namespace))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let page = state
        .storage
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| ApiError::from_storage(e, "pods", ""))?;
    Ok(page.items.iter().any(|kv| {
        serde_json::from_slice::<Pod>(&kv.value).is_ok_and(|pod| {
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
            bound && !is_mirror(&pod) && pod_references(&pod, kind).iter().any(|r| r == name)
        })
    }))
}

fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// The names of the `kind` objects a pod refers to (berth-api's visitors).
pub fn pod_references(pod: &Pod, kind: &str) -> Vec<String> {
    match kind {
        "secrets" => references::secret_names(pod),
        "configmaps" => references::configmap_names(pod),
        "serviceaccounts" => vec![references::service_account_name(pod)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identity() {
        let user = |name: &str, groups: &[&str]| User {
            name: name.into(),
            uid: "1".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(
            node_name(&user("system:node:n1", &[NODES_GROUP])),
            Some("n1")
        );
        assert_eq!(node_name(&user("system:node:n1", &[])), None);
        assert_eq!(node_name(&user("admin", &[NODES_GROUP])), None);
    }
}
