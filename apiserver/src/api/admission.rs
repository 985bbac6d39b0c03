//! Admission: the checks that need the decoded object (and, for updates and
//! deletes, the stored one) and the requesting user, after authorization let
//! the request through and before the kind's strategy prepares and validates
//! it — where kube-apiserver runs its admission chain. The chain here:
//!
//! 1. [`super::noderestriction`] (upstream's `NodeRestriction` plugin):
//!    what a node identity may write.
//! 2. [`super::rbac::escalation`] (upstream's RBAC registry's policy-based
//!    storage): nobody grants RBAC permissions they do not hold.
//!
//! Every plugin sees the object as the request would store it: for a patch,
//! the patched object; for a status update, before the status strategy puts
//! the stored spec back (as upstream, whose mutating admission runs inside
//! `UpdatedObject`, before `BeforeUpdate`).
//!
//! Then, on a create, [`mutate`]: the plugins that change the object
//! ([`super::runtimeclass`]), for every request, authenticated or not. They
//! run after the checks above, as upstream orders `RuntimeClass` after
//! `NodeRestriction`.

use serde_json::Value;

use super::ApiState;
use super::auth::User;
use super::error::{ApiError, ApiResult};
use super::noderestriction;
use super::resources::Resource;
use super::runtimeclass;

/// The kind of write (`admission.Operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST of a new object.
    Create,
    /// PUT or PATCH of an existing object (or of its subresource).
    Update,
    /// DELETE of one object.
    Delete,
}

impl Operation {
    /// Upstream's spelling (`CREATE`, `UPDATE`, `DELETE`), used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// What one admission check sees (`admission.Attributes`).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The requesting user; `None` when the server runs without authentication.
    pub user: Option<&'a User>,
    /// Create, update or delete.
    pub operation: Operation,
    /// The resource.
    pub res: &'static Resource,
    /// The subresource (`status`), if any.
    pub sub: Option<&'a str>,
    /// The namespace of the request.
    pub namespace: Option<&'a str>,
    /// The object name (for a create, the name in the body).
    pub name: &'a str,
    /// The object as it would be stored (create and update).
    pub object: Option<&'a Value>,
    /// The stored object (update and delete).
    pub old: Option<&'a Value>,
}

impl Attributes<'_> {
    /// A 403 for this request with `reason`, shaped as upstream's
    /// `admission.NewForbidden`: `pods "x" is forbidden: <reason>`.
    pub fn forbidden(&self, reason: impl std::fmt::Display) -> ApiError {
        let resource = self.res.qualified();
        if self.name.is_empty() {
            ApiError::Forbidden(format!("{resource} is forbidden: {reason}"))
        } else {
            ApiError::Forbidden(format!(
                "{resource} \"{}\" is forbidden: {reason}",
                self.name
            ))
        }
    }
}

/// Run the admission chain; the first refusal wins.
pub async fn admit(state: &ApiState, attrs: &Attributes<'_>) -> ApiResult<()> {
    let Some(user) = attrs.user else {
        return Ok(());
    };
    noderestriction::admit(state, user, attrs).await?;
    super::rbac::escalation::admit(state, user, attrs).await?;
    Ok(())
}

/// Run the plugins that may change `object` (a create's new object; its
/// `attrs.object` is left unset, as `object` is borrowed mutably here).
pub async fn mutate(state: &ApiState, attrs: &Attributes<'_>, object: &mut Value) -> ApiResult<()> {
    runtimeclass::admit(state, attrs, object).await
}
