//! RBAC: `rbac.authorization.k8s.io/v1` and the authorizer that reads it, as
//! kube-apiserver's `--authorization-mode=Node,RBAC`.
//!
//! - [`rules`]: one request against one `PolicyRule` (upstream
//!   `evaluation_helpers.go`), and rule-set comparison for escalation checks.
//! - this module: the rule resolver (upstream
//!   `pkg/registry/rbac/validation/rule.go` `VisitRulesFor`) walking
//!   ClusterRoleBindings, the RoleBindings of the request's namespace and the
//!   roles they reference, and the authorizer (upstream
//!   `plugin/pkg/auth/authorizer/rbac/rbac.go`).
//! - [`cache`]: the four kinds decoded in memory, invalidated by this
//!   server's own RBAC writes before they are answered (so a new binding
//!   takes effect on the next request) and by a watch for everyone else's.
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
pub mod cache;
pub mod escalation;
pub mod impersonation;
pub mod policy;
pub mod reviews;
pub mod rules;
pub mod strategy;

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};

use super::ApiState;
use super::auth::User;
use super::error::ApiError;
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

/// `GetRoleReferenceRules`: the rules of the role a binding references
/// (`namespace`: the binding's, for `Role` references). `Err(message)` when
/// the role is missing or the kind unknown.
pub async fn role_ref_rules(
    state: &ApiState,
    role_ref: &RoleRef,
    namespace: &str,
) -> Result<Result<Vec<PolicyRule>, String>, ApiError> {
    let snap = state.rbac.snapshot(&state.storage).await?;
    Ok(snap.role_ref_rules(role_ref, namespace).map(<[_]>::to_vec))
}

/// `RulesFor`: every rule bound to `user` cluster-wide, plus those bound
/// in `namespace` (empty: cluster-wide only).
pub async fn rules_for(
    state: &ApiState,
    user: &UserInfo,
    namespace: &str,
) -> Result<Resolved, ApiError> {
    let snap = state.rbac.snapshot(&state.storage).await?;
    let mut out = Resolved::default();
    for b in snap.bindings_for(user, namespace) {
        match &b.rules {
            Ok(rules) => {
                let source = b.source();
                out.rules
                    .extend(rules.iter().map(|r| (r.clone(), source.clone())));
            }
            Err(e) => out.errors.push(e.clone()),
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
    // Upstream's VisitRulesFor with a visitor that stops at the first
    // allowing rule; errors (a binding to a missing role) only matter when
    // nothing allows.
    let snap = state.rbac.snapshot(&state.storage).await?;
    Ok(snap
        .bindings_for(user, &req.namespace)
        .find(|b| {
            b.rules
                .as_ref()
                .is_ok_and(|rules| rules.iter().any(|r| rules::rule_allows(req, r)))
        })
        .map(|b| format!("RBAC: allowed by {}", b.source().0)))
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
