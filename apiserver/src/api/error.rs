//! The API layer's error type and its mapping to Kubernetes `Status` objects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::storage;

/// One field-level cause of an `Invalid` error (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueForbidden`…
    pub reason: String,
    /// The field path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// A human message.
    pub message: String,
}

impl Cause {
    /// A `FieldValueRequired` cause.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired".into(),
            field: field.into(),
            message: "Required value".into(),
        }
    }

    /// A `FieldValueInvalid` cause.
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid".into(),
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {detail}"),
        }
    }

    /// A `FieldValueDuplicate` cause.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Cause {
        Cause {
            reason: "FieldValueDuplicate".into(),
            field: field.into(),
            message: format!("Duplicate value: \"{value}\""),
        }
    }

    /// A `FieldValueForbidden` cause.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden".into(),
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// Everything a request can fail with; each variant maps to one `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404 NotFound: `<resource> "<name>" not found`.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// The plural resource (group-qualified for non-core groups).
        resource: String,
        /// The object's name.
        name: String,
        /// The kind for `details.kind` (the resource, as kube-apiserver does).
        kind: String,
    },
    /// 404 NotFound for a path the server does not serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// 409 AlreadyExists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// The plural resource.
        resource: String,
        /// The object's name.
        name: String,
    },
    /// 409 Conflict (optimistic concurrency or a binding to an assigned pod).
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict {
        /// The plural resource.
        resource: String,
        /// The object's name.
        name: String,
        /// Why.
        detail: String,
    },
    /// 422 Invalid with field causes.
    #[error("{kind} \"{name}\" is invalid: {}", causes_message(.causes))]
    Invalid {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The field errors.
        causes: Vec<Cause>,
    },
    /// 400 BadRequest.
    #[error("{0}")]
    BadRequest(String),
    /// 410 Gone, reason Expired (a compacted resourceVersion).
    #[error("{0}")]
    Expired(String),
    /// 405 MethodNotAllowed.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 413 RequestEntityTooLarge.
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// 415 UnsupportedMediaType.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 401 Unauthorized.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403 Forbidden.
    #[error("{0}")]
    Forbidden(String),
    /// 504 Timeout (a resourceVersion newer than the store's).
    #[error("{0}")]
    Timeout(String),
    /// 500 InternalError.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// 503 ServiceUnavailable (the storage is unreachable).
    #[error("{0}")]
    Unavailable(String),
}

fn causes_message(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Expired(_) => "Expired",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// The Kubernetes `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound {
                resource,
                name,
                kind,
            } => {
                let mut d = json!({"name": name, "kind": kind});
                // `NewNotFound(qualifiedResource, name)`: the group too.
                if let (_, Some(g)) = split_group(resource) {
                    d["group"] = json!(g);
                }
                Some(d)
            }
            ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. } => {
                let (kind, group) = split_group(resource);
                let mut d = json!({"name": name, "kind": kind});
                if let Some(g) = group {
                    d["group"] = json!(g);
                }
                Some(d)
            }
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

fn split_group(resource: &str) -> (&str, Option<&str>) {
    match resource.split_once('.') {
        Some((r, g)) => (r, Some(g)),
        None => (resource, None),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let body = self.status().to_string();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl ApiError {
    /// Map a storage error for `resource`/`name` (a compacted revision → 410 Expired).
    pub fn from_storage(err: storage::Error, resource: &str, name: &str) -> ApiError {
        match err {
            storage::Error::NotFound { .. } => ApiError::NotFound {
                resource: resource.to_string(),
                name: name.to_string(),
                kind: split_group(resource).0.to_string(),
            },
            storage::Error::AlreadyExists { .. } => ApiError::AlreadyExists {
                resource: resource.to_string(),
                name: name.to_string(),
            },
            storage::Error::Conflict { .. } => ApiError::Conflict {
                resource: resource.to_string(),
                name: name.to_string(),
                detail: MODIFIED.to_string(),
            },
            storage::Error::Compacted {
                revision,
                compact_revision,
                ..
            } => ApiError::Expired(format!(
                "The resourceVersion for the provided list is too old: {revision} (oldest available: {compact_revision})"
            )),
            storage::Error::FutureRevision {
                revision, current, ..
            } => ApiError::Timeout(format!(
                "Too large resource version: {revision}, current: {current}"
            )),
            storage::Error::InvalidArgument { reason, .. } => ApiError::BadRequest(reason),
            storage::Error::Unavailable { reason, .. } => ApiError::Unavailable(reason),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// kube-apiserver's optimistic-concurrency conflict detail.
pub const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// Result alias of the API layer.
pub type ApiResult<T> = Result<T, ApiError>;
