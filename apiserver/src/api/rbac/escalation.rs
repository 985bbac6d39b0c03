//! Escalation prevention (upstream `pkg/registry/rbac/{role,clusterrole,
//! rolebinding,clusterrolebinding}/policybased` and `ConfirmNoEscalation`
//! in `pkg/registry/rbac/validation/rule.go`), run from admission on every
//! create and update of the four RBAC kinds:
//!
//! - `system:masters` may write anything (`EscalationAllowed`).
//! - A Role or ClusterRole is written when the user holds every rule it
//!   grants (in its namespace for a Role), or may `escalate` the role
//!   resource (`RoleEscalationAuthorized`). Setting a ClusterRole's
//!   `aggregationRule` also needs `*` on everything.
//! - A RoleBinding or ClusterRoleBinding is written when the user may `bind`
//!   the referenced role (resourceNames honoured; namespace: the binding's),
//!   or holds every rule of that role in the binding's scope.
//! - An update touching only ownerReferences and finalizers is never
//!   checked (`IsOnlyMutatingGCFields`), so the garbage collector works.

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde::Deserialize;
use serde_json::Value;

use super::rules::{self, Request};
use super::{GROUP, UserInfo, authorize, role_ref_rules, rules_for};
use crate::api::ApiState;
use crate::api::admission::{Attributes, Operation};
use crate::api::auth::User;
use crate::api::authz::MASTERS_GROUP;
use crate::api::error::{ApiError, ApiResult};

/// The rule set of `cluster-admin` (`fullAuthority`).
fn full_authority() -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            verbs: vec!["*".into()],
            api_groups: Some(vec!["*".into()]),
            resources: Some(vec!["*".into()]),
            ..PolicyRule::default()
        },
        PolicyRule {
            verbs: vec!["*".into()],
            non_resource_urls: Some(vec!["*".into()]),
            ..PolicyRule::default()
        },
    ]
}

/// `IsOnlyMutatingGCFields`: `new` equals `old` once the fields the garbage
/// collector changes, and those the server owns, are taken from `old`.
fn only_gc_fields(old: &Value, new: &Value) -> bool {
    let mut copy = new.clone();
    for key in ["apiVersion", "kind"] {
        match old.get(key) {
            Some(v) => copy[key] = v.clone(),
            None => {
                if let Some(o) = copy.as_object_mut() {
                    o.remove(key);
                }
            }
        }
    }
    let old_meta = old.get("metadata").cloned().unwrap_or(Value::Null);
    if let Some(m) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "ownerReferences",
            "finalizers",
            "selfLink",
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            match old_meta.get(key) {
                Some(v) => {
                    m.insert(key.into(), v.clone());
                }
                None => {
                    m.remove(key);
                }
            }
        }
    }
    copy == *old
}

/// The escalation check of admission; `Ok` for every other resource.
pub async fn admit(state: &ApiState, user: &User, attrs: &Attributes<'_>) -> ApiResult<()> {
    let res = attrs.res;
    if res.group != GROUP || attrs.sub.is_some() {
        return Ok(());
    }
    if !matches!(attrs.operation, Operation::Create | Operation::Update) {
        return Ok(());
    }
    if user.groups.iter().any(|g| g == MASTERS_GROUP) {
        return Ok(());
    }
    let Some(obj) = attrs.object else {
        return Ok(());
    };
    if let (Operation::Update, Some(old)) = (attrs.operation, attrs.old)
        && only_gc_fields(old, obj)
    {
        return Ok(());
    }
    let info = UserInfo::authenticated(user);
    let namespace = attrs.namespace.unwrap_or("");
    // The request's own name, as upstream's RequestInfo has it: empty for a
    // create (so `escalate` limited by resourceNames never covers creates).
    let url_name = match attrs.operation {
        Operation::Update => attrs.name,
        _ => "",
    };
    match res.name {
        "roles" | "clusterroles" => {
            let escalate = Request::resource("escalate", GROUP, res.name, "", namespace, url_name);
            if authorize(state, &info, &escalate).await?.is_some() {
                return Ok(());
            }
            // Undecodable: schema validation answers it.
            let rules = match obj.get("rules") {
                None | Some(Value::Null) => Vec::new(),
                Some(r) => match Vec::<PolicyRule>::deserialize(r) {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                },
            };
            confirm_no_escalation(state, &info, namespace, &rules, attrs).await?;
            let aggregation = obj.get("aggregationRule").is_some_and(|a| !a.is_null());
            if res.name == "clusterroles" && aggregation {
                let owner = rules_for(state, &info, namespace).await?.policy_rules();
                if !rules::uncovered(&owner, &full_authority()).is_empty() {
                    return Err(attrs.forbidden(
                        "must have cluster-admin privileges to use the aggregationRule",
                    ));
                }
            }
            Ok(())
        }
        "rolebindings" | "clusterrolebindings" => {
            let Some(role_ref) = obj
                .get("roleRef")
                .and_then(|r| RoleRef::deserialize(r).ok())
            else {
                return Ok(());
            };
            let resource = match role_ref.kind.as_str() {
                "ClusterRole" => "clusterroles",
                "Role" => "roles",
                // Validation refuses other kinds with a field error.
                _ => return Ok(()),
            };
            let bind = Request::resource(
                "bind",
                &role_ref.api_group,
                resource,
                "",
                namespace,
                &role_ref.name,
            );
            if authorize(state, &info, &bind).await?.is_some() {
                return Ok(());
            }
            let granted = match role_ref_rules(state, &role_ref, namespace).await? {
                Ok(r) => r,
                Err(_) => {
                    return Err(ApiError::NotFound {
                        resource: format!("{resource}.{GROUP}"),
                        name: role_ref.name.clone(),
                        kind: resource.into(),
                    });
                }
            };
            confirm_no_escalation(state, &info, namespace, &granted, attrs).await
        }
        _ => Ok(()),
    }
}

/// `ConfirmNoEscalation`: 403 listing the rules `user` does not hold.
async fn confirm_no_escalation(
    state: &ApiState,
    user: &UserInfo,
    namespace: &str,
    granted: &[PolicyRule],
    attrs: &Attributes<'_>,
) -> ApiResult<()> {
    let resolved = rules_for(state, user, namespace).await?;
    let missing = rules::uncovered(&resolved.policy_rules(), granted);
    if missing.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        rules::quoted_list(&user.groups),
        rules::describe_missing(&missing)
    );
    if !resolved.errors.is_empty() {
        msg.push_str(&format!(
            "; resolution errors: [{}]",
            resolved.errors.join(" ")
        ));
    }
    tracing::debug!(user = %user.name, resource = attrs.res.name, name = attrs.name, missing = missing.len(), "RBAC escalation refused");
    Err(attrs.forbidden(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gc_only_updates() {
        let old = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "r", "uid": "u", "resourceVersion": "5"}, "rules": []});
        let mut new = json!({"metadata": {"name": "r", "finalizers": ["x"],
            "ownerReferences": [{"name": "o"}]}, "rules": []});
        assert!(only_gc_fields(&old, &new));
        new["metadata"]["labels"] = json!({"a": "b"});
        assert!(!only_gc_fields(&old, &new));
        let mut rules = old.clone();
        rules["rules"] = json!([{"verbs": ["get"]}]);
        assert!(!only_gc_fields(&old, &rules));
    }
}
