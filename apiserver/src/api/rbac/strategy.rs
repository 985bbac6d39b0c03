//! The registry strategies of the four RBAC kinds (upstream
//! `pkg/registry/rbac/*/strategy.go`, defaults from
//! `pkg/apis/rbac/v1/defaults.go`, validation from `pkg/apis/rbac/validation`):
//!
//! - names are any path segment (`system:node` is valid);
//! - a rule needs verbs; a resource rule needs apiGroups and resources; a
//!   non-resource rule may not name groups, resources or names, and only a
//!   ClusterRole may hold one;
//! - a binding's `roleRef.apiGroup` is `rbac.authorization.k8s.io` (the
//!   default), its kind `Role` or `ClusterRole` (`ClusterRole` only for a
//!   ClusterRoleBinding), its name set; `roleRef` never changes ("cannot
//!   change roleRef");
//! - a subject is a `User` or `Group` (apiGroup `rbac.authorization.k8s.io`,
//!   the default) or a `ServiceAccount` (apiGroup `""`, a namespace required
//!   in a ClusterRoleBinding).

use berth_api::names::path_segment_errors;
use berth_api::validation::{ErrorType, FieldError, NameRule};
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use serde::Deserialize;
use serde_json::{Value, json};

use super::GROUP;
use super::rules::items;
use crate::api::error::{ApiError, ApiResult};
use crate::api::strategy::Strategy;

fn err(field: impl Into<String>, error_type: ErrorType, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        error_type,
        reason: reason.into(),
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(v: Option<&Value>, what: &str) -> ApiResult<Option<T>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| ApiError::BadRequest(format!("{what} does not decode: {e}"))),
    }
}

/// `ValidatePolicyRule`.
fn validate_rules(obj: &Value, namespaced: bool) -> ApiResult<Vec<FieldError>> {
    let rules: Vec<PolicyRule> = decode(obj.get("rules"), "rules")?.unwrap_or_default();
    let mut errs = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errs.push(err(
                format!("{path}.verbs"),
                ErrorType::Required,
                "Required value: verbs must contain at least one value",
            ));
        }
        let urls = items(&rule.non_resource_urls);
        if !urls.is_empty() {
            let shown = serde_json::to_string(urls).unwrap_or_default();
            if namespaced {
                errs.push(err(
                    format!("{path}.nonResourceURLs"),
                    ErrorType::Invalid,
                    format!(
                        "Invalid value: {shown}: namespaced rules cannot apply to non-resource URLs"
                    ),
                ));
            }
            if !items(&rule.api_groups).is_empty()
                || !items(&rule.resources).is_empty()
                || !items(&rule.resource_names).is_empty()
            {
                errs.push(err(
                    format!("{path}.nonResourceURLs"),
                    ErrorType::Invalid,
                    format!(
                        "Invalid value: {shown}: rules cannot apply to both regular resources and non-resource URLs"
                    ),
                ));
            }
            continue;
        }
        if items(&rule.api_groups).is_empty() {
            errs.push(err(
                format!("{path}.apiGroups"),
                ErrorType::Required,
                "Required value: resource rules must supply at least one api group",
            ));
        }
        if items(&rule.resources).is_empty() {
            errs.push(err(
                format!("{path}.resources"),
                ErrorType::Required,
                "Required value: resource rules must supply at least one resource",
            ));
        }
    }
    Ok(errs)
}

/// Roles: namespaced rules only.
pub struct RoleStrategy;
impl Strategy for RoleStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        validate_rules(obj, true)
    }

    fn validate_update(
        &self,
        _old: &Value,
        new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        validate_rules(new, true)
    }
}

/// ClusterRoles: rules (non-resource URLs allowed) and the aggregation rule.
pub struct ClusterRoleStrategy;

fn validate_cluster_role(obj: &Value) -> ApiResult<Vec<FieldError>> {
    let mut errs = validate_rules(obj, false)?;
    if let Some(agg) = obj.get("aggregationRule").filter(|a| !a.is_null()) {
        let selectors = agg
            .get("clusterRoleSelectors")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if selectors == 0 {
            errs.push(err(
                "aggregationRule.clusterRoleSelectors",
                ErrorType::Required,
                "Required value: at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
    }
    Ok(errs)
}

impl Strategy for ClusterRoleStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        validate_cluster_role(obj)
    }

    fn validate_update(
        &self,
        _old: &Value,
        new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        validate_cluster_role(new)
    }
}

/// RoleBindings (`cluster: false`) and ClusterRoleBindings (`cluster: true`).
pub struct BindingStrategy {
    /// A ClusterRoleBinding.
    pub cluster: bool,
}

/// `SetDefaults_Subject` and the roleRef's apiGroup default.
fn default_binding(obj: &mut Value) {
    if let Some(r) = obj.get_mut("roleRef").and_then(Value::as_object_mut)
        && r.get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
    {
        r.insert("apiGroup".into(), json!(GROUP));
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
            if s.get("apiGroup")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                let group = match s.get("kind").and_then(Value::as_str) {
                    Some("User" | "Group") => GROUP,
                    _ => "",
                };
                s.insert("apiGroup".into(), json!(group));
            }
        }
    }
}

impl BindingStrategy {
    fn validate_binding(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        let mut errs = Vec::new();
        let role_ref: RoleRef = decode(obj.get("roleRef"), "roleRef")?.unwrap_or_default();
        if role_ref.api_group != GROUP {
            errs.push(err(
                "roleRef.apiGroup",
                ErrorType::NotSupported,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    quoted(&role_ref.api_group),
                    quoted(GROUP)
                ),
            ));
        }
        let kinds: &[&str] = if self.cluster {
            &["ClusterRole"]
        } else {
            &["Role", "ClusterRole"]
        };
        if !kinds.contains(&role_ref.kind.as_str()) {
            let supported: Vec<String> = kinds.iter().map(|k| quoted(k)).collect();
            errs.push(err(
                "roleRef.kind",
                ErrorType::NotSupported,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    quoted(&role_ref.kind),
                    supported.join(", ")
                ),
            ));
        }
        if role_ref.name.is_empty() {
            errs.push(err("roleRef.name", ErrorType::Required, "Required value"));
        } else {
            for msg in path_segment_errors(&role_ref.name) {
                errs.push(err(
                    "roleRef.name",
                    ErrorType::Invalid,
                    format!("Invalid value: {}: {msg}", quoted(&role_ref.name)),
                ));
            }
        }
        let subjects: Vec<Subject> = decode(obj.get("subjects"), "subjects")?.unwrap_or_default();
        for (i, s) in subjects.iter().enumerate() {
            let path = format!("subjects[{i}]");
            if s.name.is_empty() {
                errs.push(err(
                    format!("{path}.name"),
                    ErrorType::Required,
                    "Required value",
                ));
            }
            let group = s.api_group.as_deref().unwrap_or("");
            match s.kind.as_str() {
                "ServiceAccount" => {
                    if !s.name.is_empty() {
                        for msg in berth_api::names::dns1123_subdomain_errors(&s.name) {
                            errs.push(err(
                                format!("{path}.name"),
                                ErrorType::Invalid,
                                format!("Invalid value: {}: {msg}", quoted(&s.name)),
                            ));
                        }
                    }
                    if !group.is_empty() {
                        errs.push(err(
                            format!("{path}.apiGroup"),
                            ErrorType::NotSupported,
                            format!("Unsupported value: {}: supported values: \"\"", quoted(group)),
                        ));
                    }
                    if self.cluster && s.namespace.as_deref().unwrap_or("").is_empty() {
                        errs.push(err(
                            format!("{path}.namespace"),
                            ErrorType::Required,
                            "Required value",
                        ));
                    }
                }
                "User" | "Group" => {
                    if group != GROUP {
                        errs.push(err(
                            format!("{path}.apiGroup"),
                            ErrorType::NotSupported,
                            format!(
                                "Unsupported value: {}: supported values: {}",
                                quoted(group),
                                quoted(GROUP)
                            ),
                        ));
                    }
                }
                kind => errs.push(err(
                    format!("{path}.kind"),
                    ErrorType::NotSupported,
                    format!(
                        "Unsupported value: {}: supported values: \"ServiceAccount\", \"User\", \"Group\"",
                        quoted(kind)
                    ),
                )),
            }
        }
        Ok(errs)
    }
}

impl Strategy for BindingStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn prepare_for_create(&self, obj: &mut Value) -> ApiResult<()> {
        default_binding(obj);
        Ok(())
    }

    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        self.validate_binding(obj)
    }

    fn prepare_for_update(&self, _old: &Value, new: &mut Value) -> ApiResult<()> {
        default_binding(new);
        Ok(())
    }

    fn validate_update(
        &self,
        old: &Value,
        new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        let mut errs = self.validate_binding(new)?;
        let old_ref = old.get("roleRef").cloned().unwrap_or(Value::Null);
        let new_ref = new.get("roleRef").cloned().unwrap_or(Value::Null);
        if old_ref != new_ref {
            errs.push(err(
                "roleRef",
                ErrorType::Invalid,
                format!("Invalid value: {new_ref}: cannot change roleRef"),
            ));
        }
        Ok(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn rules() {
        let bad = json!({"rules": [
            {"verbs": [], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"]},
            {"verbs": ["get"], "nonResourceURLs": ["/x"], "resources": ["pods"]},
        ]});
        let errs = RoleStrategy.validate(&bad).expect("decodes");
        assert_eq!(
            fields(&errs),
            [
                "rules[0].verbs",
                "rules[1].apiGroups",
                "rules[1].resources",
                "rules[2].nonResourceURLs",
                "rules[2].nonResourceURLs"
            ]
        );
        let urls = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        assert_eq!(
            fields(&RoleStrategy.validate(&urls).expect("ok")),
            ["rules[0].nonResourceURLs"]
        );
        assert!(ClusterRoleStrategy.validate(&urls).expect("ok").is_empty());
        let agg = json!({"aggregationRule": {"clusterRoleSelectors": []}});
        assert_eq!(
            fields(&ClusterRoleStrategy.validate(&agg).expect("ok")),
            ["aggregationRule.clusterRoleSelectors"]
        );
    }

    #[test]
    fn bindings() {
        let mut b = json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "bob"}, {"kind": "ServiceAccount", "name": "sa"},
                         {"kind": "Robot", "name": "r"}]});
        let s = BindingStrategy { cluster: true };
        s.prepare_for_create(&mut b).expect("defaults");
        assert_eq!(b["roleRef"]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][0]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][1]["apiGroup"], "");
        let errs = s.validate(&b).expect("decodes");
        assert_eq!(fields(&errs), ["subjects[1].namespace", "subjects[2].kind"]);
        // A RoleBinding may omit the service account's namespace.
        let rb = BindingStrategy { cluster: false };
        assert_eq!(
            fields(&rb.validate(&b).expect("decodes")),
            ["subjects[2].kind"]
        );
        let mut role = b.clone();
        role["roleRef"]["kind"] = json!("Role");
        assert!(fields(&s.validate(&role).expect("decodes")).contains(&"roleRef.kind"));
        let errs = rb.validate_update(&b, &role, false).expect("decodes");
        assert_eq!(
            errs.last()
                .map(|e| e.reason.ends_with("cannot change roleRef")),
            Some(true)
        );
    }
}
