//! `authorization.k8s.io/v1` reviews (upstream `pkg/registry/authorization`):
//! `selfsubjectaccessreviews`, `subjectaccessreviews`,
//! `localsubjectaccessreviews` (namespaced, about its namespace only) and
//! `selfsubjectrulesreviews`. Create-only and never stored: the answer is
//! the posted object with `status` filled in, code 201 as upstream.
//!
//! - An access review runs the whole chain: `system:masters`, the Node
//!   authorizer (for node identities and resources berth serves), RBAC.
//!   A SubjectAccessReview judges `spec.user`/`spec.groups` exactly as sent
//!   (no `system:authenticated` added, as upstream); a self review judges the
//!   caller, who counts as authenticated.
//! - A rules review lists the caller's RBAC rules in `spec.namespace`
//!   (`RulesFor`); for a node identity it is `incomplete`, as upstream's Node
//!   authorizer cannot enumerate its rules.
//!
//! Who may create a review is decided before this module, by the chain:
//! self reviews through `system:basic-user` (bound to every authenticated
//! user), SubjectAccessReviews through `cluster-admin` or a role granting
//! `create` on them, LocalSubjectAccessReviews also through `admin`.

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, NonResourceRule, ResourceAttributes, ResourceRule,
    SubjectRulesReviewStatus,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Request, UserInfo, rules_for};
use crate::api::ApiState;
use crate::api::auth::User;
use crate::api::authz::{self, MASTERS_GROUP};
use crate::api::error::{ApiError, ApiResult, Cause};
use crate::api::resources::{self, Resource};

/// The API group of the reviews.
pub const GROUP: &str = "authorization.k8s.io";

/// Whether `res` is one of the review resources served here.
pub fn is_review(res: &Resource) -> bool {
    res.group == GROUP
}

/// Serve a request to a review resource: POST to the collection only.
pub async fn serve(
    state: &ApiState,
    user: Option<&User>,
    res: &Resource,
    namespace: Option<&str>,
    method: &Method,
    has_name: bool,
    body: &[u8],
) -> ApiResult<Response> {
    if *method != Method::POST || has_name {
        return Err(ApiError::MethodNotAllowed);
    }
    let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !obj.is_object() {
        return Err(ApiError::BadRequest(format!(
            "the body of a {} must be a JSON object",
            res.kind
        )));
    }
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let status = match res.name {
        "selfsubjectrulesreviews" => rules_review(state, user, &spec).await?,
        "selfsubjectaccessreviews" => {
            let subject = user.map(UserInfo::authenticated);
            access_review(state, res, subject, &spec, false).await?
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            if res.namespaced {
                check_local(res, namespace.unwrap_or(""), &obj, &spec)?;
            }
            let name = spec.get("user").and_then(Value::as_str).unwrap_or("");
            let groups: Vec<String> = spec
                .get("groups")
                .and_then(|g| Vec::<String>::deserialize(g).ok())
                .unwrap_or_default();
            let subject = UserInfo {
                name: name.to_string(),
                groups,
            };
            access_review(state, res, Some(subject), &spec, true).await?
        }
        _ => return Err(ApiError::NoRoute),
    };
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    if obj.get("metadata").is_none_or(|m| !m.is_object()) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = status;
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        obj.to_string(),
    )
        .into_response())
}

/// A LocalSubjectAccessReview asks about its own namespace only (upstream
/// `ValidateLocalSubjectAccessReview` and the namespace check of its REST).
fn check_local(res: &Resource, namespace: &str, obj: &Value, spec: &Value) -> ApiResult<()> {
    let meta_ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(namespace);
    if meta_ns != namespace {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| !v.is_null()) {
        return Err(invalid(
            res.kind,
            "spec.nonResourceAttributes",
            &n.to_string(),
            "disallowed on this kind of request",
        ));
    }
    let attr_ns = spec
        .pointer("/resourceAttributes/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if attr_ns != namespace {
        return Err(invalid(
            res.kind,
            "spec.resourceAttributes.namespace",
            &format!("{attr_ns:?}"),
            "must match metadata.namespace",
        ));
    }
    Ok(())
}

fn invalid(kind: &str, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::Invalid {
        kind: kind.into(),
        name: String::new(),
        causes: vec![Cause {
            reason: "FieldValueInvalid".into(),
            field: field.into(),
            message: format!("Invalid value: {value}: {why}"),
        }],
    }
}

/// An access review's answer: `{allowed, denied?, reason?}`.
async fn access_review(
    state: &ApiState,
    res: &Resource,
    subject: Option<UserInfo>,
    spec: &Value,
    check_user: bool,
) -> ApiResult<Value> {
    let resource_attrs = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non_resource_attrs = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (resource_attrs, non_resource_attrs) {
        (Some(_), Some(n)) => {
            return Err(invalid(
                res.kind,
                "spec.nonResourceAttributes",
                &n.to_string(),
                "cannot be specified in combination with resourceAttributes",
            ));
        }
        (None, None) => {
            return Err(invalid(
                res.kind,
                "spec.resourceAttributes",
                "null",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
        _ => {}
    }
    if check_user
        && let Some(u) = &subject
        && u.name.is_empty()
        && u.groups.is_empty()
    {
        return Err(invalid(
            res.kind,
            "spec.user",
            "\"\"",
            "at least one of user or group must be specified",
        ));
    }
    // No authentication configured: everything is allowed (AlwaysAllow).
    let Some(user) = subject else {
        return Ok(json!({"allowed": true}));
    };
    let request = match (resource_attrs, non_resource_attrs) {
        (Some(r), _) => {
            let a = ResourceAttributes::deserialize(r)
                .map_err(|e| ApiError::BadRequest(format!("spec.resourceAttributes: {e}")))?;
            let s = |o: &Option<String>| o.clone().unwrap_or_default();
            Request::resource(
                &s(&a.verb),
                &s(&a.group),
                &s(&a.resource),
                &s(&a.subresource),
                &s(&a.namespace),
                &s(&a.name),
            )
        }
        (None, Some(n)) => {
            let a = NonResourceAttributes::deserialize(n)
                .map_err(|e| ApiError::BadRequest(format!("spec.nonResourceAttributes: {e}")))?;
            Request::non_resource(
                a.verb.as_deref().unwrap_or(""),
                a.path.as_deref().unwrap_or(""),
            )
        }
        (None, None) => return Ok(json!({"allowed": false})),
    };
    let (allowed, reason) = decide(state, &user, &request).await?;
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    Ok(status)
}

/// The chain for one request: `(allowed, reason)`.
pub async fn decide(state: &ApiState, user: &UserInfo, req: &Request) -> ApiResult<(bool, String)> {
    if user.groups.iter().any(|g| g == MASTERS_GROUP) {
        return Ok((true, String::new()));
    }
    let mut node_reason = String::new();
    let as_user = User {
        name: user.name.clone(),
        uid: String::new(),
        groups: user.groups.clone(),
    };
    if req.resource_request
        && authz::node_name(&as_user).is_some()
        && let Some(res) = resources::RESOURCES
            .iter()
            .find(|r| r.group == req.api_group && r.name == req.resource)
    {
        let attrs = authz::Attributes {
            verb: &req.verb,
            res,
            namespace: (!req.namespace.is_empty()).then_some(req.namespace.as_str()),
            name: (!req.name.is_empty()).then_some(req.name.as_str()),
            sub: (!req.subresource.is_empty()).then_some(req.subresource.as_str()),
            field_selector: "",
            body: b"",
        };
        match authz::authorize(state, Some(&as_user), &attrs).await {
            Ok(()) => return Ok((true, String::new())),
            Err(authz::Denied::Forbidden(f)) => {
                node_reason = f
                    .message
                    .split_once(" in the namespace ")
                    .or_else(|| f.message.split_once(" at the cluster scope"))
                    .and_then(|(_, rest)| rest.split_once(": "))
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
            }
            Err(authz::Denied::Error(e)) => return Err(e),
        }
    }
    match super::authorize(state, user, req).await? {
        Some(reason) => Ok((true, reason)),
        None => Ok((false, node_reason)),
    }
}

/// A rules review's answer.
async fn rules_review(state: &ApiState, user: Option<&User>, spec: &Value) -> ApiResult<Value> {
    let namespace = spec.get("namespace").and_then(Value::as_str).unwrap_or("");
    if namespace.is_empty() {
        return Err(ApiError::BadRequest("no namespace on request".into()));
    }
    let Some(user) = user else {
        let all = SubjectRulesReviewStatus {
            resource_rules: vec![ResourceRule {
                verbs: vec!["*".into()],
                api_groups: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                resource_names: None,
            }],
            non_resource_rules: vec![NonResourceRule {
                verbs: vec!["*".into()],
                non_resource_urls: Some(vec!["*".into()]),
            }],
            incomplete: false,
            evaluation_error: None,
        };
        return serde_json::to_value(all).map_err(|e| ApiError::Internal(e.to_string()));
    };
    let info = UserInfo::authenticated(user);
    let resolved = rules_for(state, &info, namespace).await?;
    let mut errors = Vec::new();
    let mut incomplete = false;
    if authz::node_name(user).is_some() {
        incomplete = true;
        errors.push("node authorizer does not support user rule resolution".to_string());
    }
    errors.extend(resolved.errors.iter().cloned());
    let mut status = SubjectRulesReviewStatus {
        resource_rules: Vec::new(),
        non_resource_rules: Vec::new(),
        incomplete,
        evaluation_error: None,
    };
    for (rule, _) in &resolved.rules {
        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
            status.resource_rules.push(ResourceRule {
                verbs: rule.verbs.clone(),
                api_groups: rule.api_groups.clone(),
                resources: rule.resources.clone(),
                resource_names: rule.resource_names.clone(),
            });
        }
        if rule
            .non_resource_urls
            .as_ref()
            .is_some_and(|u| !u.is_empty())
        {
            status.non_resource_rules.push(NonResourceRule {
                verbs: rule.verbs.clone(),
                non_resource_urls: rule.non_resource_urls.clone(),
            });
        }
    }
    if !errors.is_empty() {
        status.evaluation_error = Some(errors.join(", "));
    }
    serde_json::to_value(status).map_err(|e| ApiError::Internal(e.to_string()))
}
