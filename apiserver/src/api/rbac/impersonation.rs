//! User impersonation (upstream
//! `staging/src/k8s.io/apiserver/pkg/endpoints/filters/impersonation.go`):
//! `Impersonate-User`, `Impersonate-Group` (repeatable), `Impersonate-Uid`
//! and `Impersonate-Extra-<key>` headers (`kubectl --as`, `--as-group`).
//!
//! The authenticated requester needs the `impersonate` verb, through the
//! whole chain, on `users/<name>` (core group; a service account name
//! `system:serviceaccount:<ns>:<sa>` needs `serviceaccounts/<sa>` in `<ns>`),
//! on `groups/<group>` for each group, on `uids/<uid>` and
//! `userextras/<key>` (group `authentication.k8s.io`). Then the request runs
//! as the impersonated user, in the impersonated groups plus
//! `system:authenticated`. Extras are checked, then dropped: berth's users
//! have none.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::reviews::decide;
use super::{AUTHENTICATED_GROUP, Request as RbacRequest, SERVICE_ACCOUNT_PREFIX, UserInfo};
use crate::api::ApiState;
use crate::api::auth::User;
use crate::api::error::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

/// What to check, and how upstream names it in a denial.
struct Check {
    req: RbacRequest,
    /// `users "bob"`.
    object: String,
}

fn check(group: &str, resource: &str, namespace: &str, name: &str) -> Check {
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    Check {
        req: RbacRequest::resource("impersonate", group, resource, "", namespace, name),
        object: format!("{qualified} {name:?}"),
    }
}

/// The middleware: after authentication, before everything else.
pub async fn impersonate(
    State(state): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let user = values(headers, USER).into_iter().next();
    let groups = values(headers, GROUP);
    let uid = values(headers, UID).into_iter().next();
    let extras: Vec<(String, Vec<String>)> = headers
        .keys()
        .filter_map(|k| k.as_str().strip_prefix(EXTRA_PREFIX).map(str::to_string))
        .map(|k| {
            let v = values(headers, &format!("{EXTRA_PREFIX}{k}"));
            (k, v)
        })
        .collect();
    if user.is_none() && groups.is_empty() && uid.is_none() && extras.is_empty() {
        return next.run(req).await;
    }
    let Some(requester) = req.extensions().get::<User>().cloned() else {
        // No authentication configured: nobody to check; impersonation
        // would change nothing (everything is allowed).
        return next.run(req).await;
    };
    let Some(name) = user.filter(|u| !u.is_empty()) else {
        return ApiError::BadRequest(
            "requested impersonation of groups, uid or extras without impersonating a user".into(),
        )
        .into_response();
    };
    let mut checks = Vec::new();
    match name
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) => checks.push(check("", "serviceaccounts", ns, sa)),
        None => checks.push(check("", "users", "", &name)),
    }
    for g in &groups {
        checks.push(check("", "groups", "", g));
    }
    if let Some(u) = &uid {
        checks.push(check("authentication.k8s.io", "uids", "", u));
    }
    for (key, vals) in &extras {
        for v in vals {
            let mut c = check("authentication.k8s.io", "userextras", "", v);
            c.req.subresource = key.clone();
            checks.push(c);
        }
    }
    let as_requester = UserInfo::authenticated(&requester);
    for c in checks {
        match decide(&state, &as_requester, &c.req).await {
            Ok((true, _)) => {}
            Ok((false, _)) => {
                let scope = if c.req.namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace {:?}", c.req.namespace)
                };
                let resource = if c.req.subresource.is_empty() {
                    c.req.resource.clone()
                } else {
                    format!("{}/{}", c.req.resource, c.req.subresource)
                };
                tracing::debug!(requester = %requester.name, impersonated = %name, "impersonation refused");
                return ApiError::Forbidden(format!(
                    "{} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group {:?} {scope}",
                    c.object, requester.name, c.req.api_group
                ))
                .into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    // As upstream: `system:authenticated` joins unless the caller named it
    // or `system:unauthenticated`, or impersonates the anonymous user.
    let mut impersonated_groups = groups;
    if name != "system:anonymous"
        && !impersonated_groups
            .iter()
            .any(|g| g == AUTHENTICATED_GROUP || g == super::UNAUTHENTICATED_GROUP)
    {
        impersonated_groups.push(AUTHENTICATED_GROUP.to_string());
    }
    tracing::debug!(requester = %requester.name, impersonated = %name, "impersonating");
    req.extensions_mut().insert(User {
        name,
        uid: uid.unwrap_or_default(),
        groups: impersonated_groups,
    });
    next.run(req).await
}
