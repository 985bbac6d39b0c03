//! RBAC: `rbac.authorization.k8s.io/v1` and the authorizer that reads it, as
//! kube-apiserver's `--authorization-mode=Node,RBAC`.
//!
//! - [`rules`]: one request against one `PolicyRule` (upstream
//!   `evaluation_helpers.go`), and rule-set comparison for escalation checks.
//! - this module: the rule resolver (upstream
//!   `pkg/registry/rbac/validation/rule.go` `VisitRulesFor`) reading
//!   ClusterRoleBindings, the RoleBindings of the request's namespace and the
//!   roles they reference straight from storage on every call (so a new
//!   binding takes effect on the next request), and the authorizer
//!   (upstream `plugin/pkg/auth/authorizer/rbac/rbac.go`).
//! - [`policy`]: the bootstrap roles and bindings, created and reconciled at
//!   start-up (upstream `bootstrappolicy` + `reconciliation`).
//! - [`aggregation`]: `aggregationRule` evaluation (upstream
//!   `pkg/controller/clusterroleaggregation`), run at start-up and by
//!   [`crate::controllers::clusterrole_aggregation`].
//! - [`escalation`]: who may write roles and bindings (upstream
//!   `pkg/registry/rbac/*/policybased`), called from admission.
//! - [`reviews`]: `authorization.k8s.io/v1` access and rules reviews.
//! - [`strategy`]: validation of the four kinds (upstream
//!   `pkg/apis/rbac/validation`).
//! - [`impersonation`]: `Impersonate-*` headers (`kubectl --as`), allowed by
//!   the `impersonate` verb.
//!
//! Every authenticated user also counts as a member of
//! `system:authenticated` (upstream's authenticator adds the group; berth's
//! token authenticator does not, so RBAC adds it when it evaluates a request).

pub mod aggregation;
pub mod escalation;
pub mod impersonation;
pub mod policy;
pub mod reviews;
pub mod rules;
pub mod strategy;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde::de::DeserializeOwned;

use super::ApiState;
use super::auth::User;
use super::error::ApiError;
use crate::storage::{ListOptions, collection_prefix, object_key};
pub use rules::Request;

/// The API group of RBAC objects.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The group of unauthenticated requests.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The user name prefix of service accounts.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The identity RBAC evaluates: a user name and its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// The groups, as RBAC sees them.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// An authenticated user as RBAC sees it: its groups plus
    /// `system:authenticated`.
    pub fn authenticated(user: &User) -> UserInfo {
        let mut groups = user.groups.clone();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_string());
        }
        UserInfo {
            name: user.name.clone(),
            groups,
        }
    }
}

/// Where a rule came from (upstream's `*Describer`), for the `reason` of an
/// allowed review: `ClusterRoleBinding "x" of ClusterRole "y" to User "z"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub String);

fn describe_subject(s: &Subject, binding_namespace: &str) -> String {
    if s.kind == "ServiceAccount" {
        let ns = s
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(binding_namespace);
        return format!("{} {:?}", s.kind, format!("{}/{ns}", s.name));
    }
    format!("{} {:?}", s.kind, s.name)
}

/// The rules that apply to a user in a namespace, with where each came from,
/// and the errors met on the way (a binding to a missing role): upstream's
/// `RulesFor` / `VisitRulesFor`.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Every applicable rule and its source, ClusterRoleBindings first.
    pub rules: Vec<(PolicyRule, Source)>,
    /// What could not be resolved (the list is then incomplete).
    pub errors: Vec<String>,
}

impl Resolved {
    /// The rules alone.
    pub fn policy_rules(&self) -> Vec<PolicyRule> {
        self.rules.iter().map(|(r, _)| r.clone()).collect()
    }

    /// The source of the first rule allowing `req`, if any.
    pub fn allows(&self, req: &Request) -> Option<&Source> {
        self.rules
            .iter()
            .find(|(r, _)| rules::rule_allows(req, r))
            .map(|(_, s)| s)
    }
}

/// `appliesToUser`.
fn applies_to(user: &UserInfo, subject: &Subject, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty() && user.name == format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", subject.name)
        }
        _ => false,
    }
}

fn storage_error(e: crate::storage::Error) -> ApiError {
    ApiError::from_storage(e, "", "")
}

/// Every object of `resource` in `namespace` (`None`: cluster-scoped or
/// all), decoded; undecodable objects are skipped with a warning.
pub(crate) async fn list_typed<T: DeserializeOwned>(
    state: &ApiState,
    resource: &str,
    namespace: Option<&str>,
) -> Result<Vec<T>, ApiError> {
    let prefix =
        collection_prefix(resource, namespace).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let page = state
        .storage
        .list(&prefix, ListOptions::default())
        .await
        .map_err(storage_error)?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| match serde_json::from_slice::<T>(&kv.value) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "undecodable RBAC object skipped");
                None
            }
        })
        .collect())
}

/// The object `resource/name` in `namespace`, decoded; `None` when absent.
pub(crate) async fn get_typed<T: DeserializeOwned>(
    state: &ApiState,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    let key =
        object_key(resource, namespace, name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let got = state.storage.get(&key).await.map_err(storage_error)?;
    match got {
        None => Ok(None),
        Some(s) => serde_json::from_slice(&s.value)
            .map(Some)
            .map_err(|e| ApiError::Internal(format!("{key}: {e}"))),
    }
}

/// `GetRoleReferenceRules`: the rules of the role a binding references
/// (`namespace`: the binding's, for `Role` references). `Err(message)` when
/// the role is missing or the kind unknown.
pub async fn role_ref_rules(
    state: &ApiState,
    role_ref: &RoleRef,
    namespace: &str,
) -> Result<Result<Vec<PolicyRule>, String>, ApiError> {
    match role_ref.kind.as_str() {
        "ClusterRole" => {
            match get_typed::<ClusterRole>(state, "clusterroles", None, &role_ref.name).await? {
                Some(r) => Ok(Ok(r.rules.unwrap_or_default())),
                None => Ok(Err(format!(
                    "clusterrole.rbac.authorization.k8s.io \"{}\" not found",
                    role_ref.name
                ))),
            }
        }
        "Role" if !namespace.is_empty() => {
            match get_typed::<Role>(state, "roles", Some(namespace), &role_ref.name).await? {
                Some(r) => Ok(Ok(r.rules.unwrap_or_default())),
                None => Ok(Err(format!(
                    "role.rbac.authorization.k8s.io \"{}\" not found",
                    role_ref.name
                ))),
            }
        }
        kind => Ok(Err(format!("unsupported role reference kind: {kind:?}"))),
    }
}

/// `RulesFor`: every rule bound to `user` cluster-wide, plus those bound
/// in `namespace` (empty: cluster-wide only).
pub async fn rules_for(
    state: &ApiState,
    user: &UserInfo,
    namespace: &str,
) -> Result<Resolved, ApiError> {
    let mut out = Resolved::default();
    let crbs: Vec<ClusterRoleBinding> = list_typed(state, "clusterrolebindings", None).await?;
    for b in &crbs {
        let name = b.metadata.name.as_deref().unwrap_or("");
        let Some(subject) = b
            .subjects
            .iter()
            .flatten()
            .find(|s| applies_to(user, s, ""))
        else {
            continue;
        };
        match role_ref_rules(state, &b.role_ref, "").await? {
            Ok(rules) => {
                let source = Source(format!(
                    "ClusterRoleBinding {name:?} of {} {:?} to {}",
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe_subject(subject, "")
                ));
                out.rules
                    .extend(rules.into_iter().map(|r| (r, source.clone())));
            }
            Err(e) => out.errors.push(e),
        }
    }
    if namespace.is_empty() {
        return Ok(out);
    }
    let rbs: Vec<RoleBinding> = list_typed(state, "rolebindings", Some(namespace)).await?;
    for b in &rbs {
        let name = b.metadata.name.as_deref().unwrap_or("");
        let Some(subject) = b
            .subjects
            .iter()
            .flatten()
            .find(|s| applies_to(user, s, namespace))
        else {
            continue;
        };
        match role_ref_rules(state, &b.role_ref, namespace).await? {
            Ok(rules) => {
                let source = Source(format!(
                    "RoleBinding {:?} of {} {:?} to {}",
                    format!("{name}/{namespace}"),
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe_subject(subject, namespace)
                ));
                out.rules
                    .extend(rules.into_iter().map(|r| (r, source.clone())));
            }
            Err(e) => out.errors.push(e),
        }
    }
    Ok(out)
}

/// The RBAC authorizer: `Some(reason)` when a binding allows `req` for
/// `user` (`RBAC: allowed by …`), `None` when RBAC has no opinion.
pub async fn authorize(
    state: &ApiState,
    user: &UserInfo,
    req: &Request,
) -> Result<Option<String>, ApiError> {
    let resolved = rules_for(state, user, &req.namespace).await?;
    Ok(resolved
        .allows(req)
        .map(|s| format!("RBAC: allowed by {}", s.0)))
}

/// The RBAC step of [`super::authz::authorize`]: whether a binding allows
/// the resource request `attrs` of the authenticated `user`.
pub async fn authorize_resource_request(
    state: &ApiState,
    user: &User,
    attrs: &super::authz::Attributes<'_>,
) -> Result<bool, ApiError> {
    // Upstream's RequestInfo reads `/api/v1/namespaces/<ns>` as a request
    // in the namespace `<ns>`: a RoleBinding there may grant reading it.
    let namespace = match (attrs.res.group, attrs.res.name, attrs.name) {
        ("", "namespaces", Some(name)) => name,
        _ => attrs.namespace.unwrap_or(""),
    };
    let req = Request::resource(
        attrs.verb,
        attrs.res.group,
        attrs.res.name,
        attrs.sub.unwrap_or(""),
        namespace,
        attrs.name.unwrap_or(""),
    );
    let info = UserInfo::authenticated(user);
    let allowed = authorize(state, &info, &req).await?;
    if let Some(reason) = &allowed {
        tracing::debug!(user = %user.name, verb = attrs.verb, resource = attrs.res.name, %reason, "allowed");
    }
    Ok(allowed.is_some())
}
