//! The generic REST handlers, driven by the registry ([`super::resources::RESOURCES`]
//! and each entry's strategy): routing and the helpers every verb shares here;
//! the verbs by concern in [`write`], [`read`], [`watch`] and [`delete`].

mod delete;
mod read;
mod watch;
mod write;

pub use delete::reap_pods;
use delete::{delete, delete_collection};
use read::list;
use watch::watch_handler;
use write::{bind, create, patch_handler, update};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::ApiState;
use super::admission::{self, Operation};
use super::authz;
use super::discovery;
use super::error::{ApiError, ApiResult, MODIFIED};
use super::objects::{
    format_time, meta_mut, name_suffix, new_uid, now_rfc3339, parse_time, str_at,
};
use super::patch::{self, PatchType};
use super::protobuf;
use super::resources::{self, Resource};
use super::selectors::{FieldSelector, LabelSelector};
use super::strategy;
use super::table::{self, IncludeObject};
use super::validation::{self, FieldValidation};
use crate::storage::{
    self, ContinueToken, EventKind, ListOptions, collection_prefix, decode_with_resource_version,
    object_key,
};

/// The largest request body accepted (kube-apiserver's 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

type Params = HashMap<String, String>;

/// What a request addresses.
#[derive(Debug, Clone)]
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    /// The authenticated user (`None`: the server runs without authentication).
    user: Option<super::auth::User>,
}

impl Target {
    /// The admission attributes of a write of `name` to this target.
    fn admission<'a>(
        &'a self,
        operation: super::admission::Operation,
        name: &'a str,
        object: Option<&'a Value>,
        old: Option<&'a Value>,
    ) -> super::admission::Attributes<'a> {
        super::admission::Attributes {
            user: self.user.as_ref(),
            operation,
            res: self.res,
            sub: self.sub.as_deref(),
            namespace: self.namespace.as_deref(),
            name,
            object,
            old,
        }
    }
}

fn not_found_path() -> ApiError {
    ApiError::NoRoute
}

/// `application/json` response with optional `Warning` headers.
fn respond(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Entry point for everything under `/api` and `/apis`.
pub async fn dispatch(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    match dispatch_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch_inner(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let params: Params = Query::<Params>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let accept_header = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if matches!(segs.as_slice(), ["api"] | ["apis"]) && discovery::wants_aggregated(accept_header) {
        let doc = discovery::aggregated(segs == ["api"]);
        let mut resp = respond(StatusCode::OK, &doc, &[]);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
        );
        return Ok(resp);
    }
    // Discovery documents.
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(respond(StatusCode::OK, &discovery::api_versions(), &[])),
        ["apis"] => return Ok(respond(StatusCode::OK, &discovery::api_group_list(), &[])),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => {
            let doc = discovery::api_group(g).ok_or_else(not_found_path)?;
            return Ok(respond(StatusCode::OK, &doc, &[]));
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    if rest.is_empty() {
        let doc = discovery::resource_list(group, version).ok_or_else(not_found_path)?;
        return Ok(respond(StatusCode::OK, &doc, &[]));
    }
    // metrics.k8s.io is computed, not stored: its own handlers.
    if group == super::metrics::GROUP {
        let call = super::metrics::rest::Call {
            user: parts.extensions.get::<super::auth::User>(),
            method: &parts.method,
            accept: accept_header,
            params: &params,
        };
        return super::metrics::rest::serve(&state, &call, version, rest).await;
    }
    let (mut rest, watch_path) = match rest {
        ["watch", r @ ..] => (r, true),
        r => (r, false),
    };
    let mut namespace = None;
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced)
    {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let first = rest.first().ok_or_else(not_found_path)?;
    let res = resources::find(group, version, first).ok_or_else(not_found_path)?;
    if rest.len() > 3 || (res.namespaced && namespace.is_none() && rest.len() > 1) {
        return Err(not_found_path());
    }
    let target = Target {
        res,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
        user: parts.extensions.get::<super::auth::User>().cloned(),
    };
    if let Some(sub) = &target.sub
        && !res.subresources.contains(&sub.as_str())
    {
        return Err(not_found_path());
    }
    // pods/log and pods/exec go to the node agent before the body is read:
    // exec needs the raw request to take over the connection.
    if let Some(stream) = super::proxy::Stream::of(res, target.sub.as_deref()) {
        let (Some(ns), Some(name), false) = (&target.namespace, &target.name, watch_path) else {
            return Err(not_found_path());
        };
        let req = Request::from_parts(parts, body);
        return Ok(super::proxy::serve(&state, res, stream, ns, name, req).await);
    }
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let as_table = table::wants_table(&accept);
    let watch = watch_path
        || params
            .get("watch")
            .is_some_and(|v| super::objects::query_flag(v));
    let method = parts.method.clone();
    let headers = parts.headers.clone();
    let mut protobuf_body = false;
    if matches!(method, Method::POST | Method::PUT) {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        let base = ct.split(';').next().unwrap_or("").trim();
        if base == protobuf::MEDIA_TYPE {
            protobuf_body = true;
        } else if !base.is_empty() && base != "application/json" && base != "*/*" {
            return Err(ApiError::UnsupportedMediaType("application/json".into()));
        }
    }
    let body = match method {
        Method::GET => Bytes::new(),
        _ => read_body(&headers, body, protobuf_body).await?,
    };
    let attrs = authz::Attributes {
        verb: authz::verb(&method, target.name.is_some(), watch),
        res,
        namespace: target.namespace.as_deref(),
        name: target.name.as_deref(),
        sub: target.sub.as_deref(),
        field_selector: params.get("fieldSelector").map_or("", String::as_str),
        body: &body,
    };
    if let Err(denied) = authz::authorize(&state, parts.extensions.get(), &attrs).await {
        return Ok(denied.into_response());
    }
    match (method, &target.name, target.sub.as_deref()) {
        // authorization.k8s.io reviews: create-only, answered, never stored.
        (method, name, _) if super::rbac::reviews::is_review(res) => {
            super::rbac::reviews::serve(
                &state,
                target.user.as_ref(),
                res,
                target.namespace.as_deref(),
                &method,
                name.is_some(),
                &body,
            )
            .await
        }
        (Method::GET, None, None) if watch => {
            watch_handler(&state, &target, &params, as_table).await
        }
        (Method::GET, None, None) => list(&state, &target, &params, as_table).await,
        (Method::GET, Some(name), None | Some("status")) => {
            let (obj, _) = get_object(&state, &target, name).await?;
            if as_table {
                let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
                let meta = json!({"resourceVersion": str_at(&obj, "/metadata/resourceVersion")});
                let t = table::table(res.printer, std::slice::from_ref(&obj), include, meta);
                return Ok(respond(StatusCode::OK, &t, &[]));
            }
            Ok(respond(StatusCode::OK, &obj, &[]))
        }
        (Method::POST, None, None) => create(&state, &target, &params, &body).await,
        (Method::POST, Some(name), Some("binding")) => bind(&state, &target, name, &body).await,
        (Method::PUT, Some(name), None | Some("status")) => {
            update(&state, &target, name, &params, &body).await
        }
        (Method::PATCH, Some(name), None | Some("status")) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchType::from_content_type(ct)?;
            patch_handler(&state, &target, name, &params, kind, &body).await
        }
        (Method::DELETE, Some(name), None) => delete(&state, &target, name, &params, &body).await,
        (Method::DELETE, None, None) => delete_collection(&state, &target, &params).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Read the body, rejecting more than [`MAX_BODY`] bytes with 413; a
/// protobuf body is converted to JSON.
async fn read_body(headers: &HeaderMap, body: Body, protobuf_body: bool) -> ApiResult<Bytes> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > MAX_BODY
    {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    if protobuf_body {
        let json = protobuf::decode(&bytes)?;
        return Ok(Bytes::from(json.to_string()));
    }
    Ok(bytes)
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// A create or update body of `res` in `namespace` decoded as the handlers
/// decode it, without a connection: a protobuf body converted to JSON as
/// [`read_body`] does, then `decode_body` (with `fieldValidation`). With `old`,
/// the decoded object then goes through `prepare_update` (strategy defaults
/// and validation) as an update of `old`. For the fuzz targets (`berth-fuzz`).
#[doc(hidden)]
pub fn decode_request_body(
    res: &'static Resource,
    namespace: Option<&str>,
    field_validation: Option<&str>,
    protobuf_body: bool,
    body: &[u8],
    old: Option<&Value>,
) -> ApiResult<(Value, Vec<String>)> {
    let converted;
    let body = if protobuf_body {
        converted = protobuf::decode(body)?.to_string();
        converted.as_bytes()
    } else {
        body
    };
    let target = Target {
        res,
        namespace: namespace.map(str::to_string),
        name: None,
        sub: None,
        user: None,
    };
    let mut params = Params::new();
    if let Some(v) = field_validation {
        params.insert("fieldValidation".into(), v.into());
    }
    let (obj, warnings) = write::decode_body(&target, &params, body)?;
    match old {
        Some(old) => Ok((write::prepare_update(&target, old, obj)?, warnings)),
        None => Ok((obj, warnings)),
    }
}

fn key_of(target: &Target, name: &str) -> ApiResult<String> {
    object_key(target.res.name, target.namespace.as_deref(), name)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn storage_err(target: &Target, name: &str) -> impl Fn(storage::Error) -> ApiError {
    let resource = target.res.qualified();
    let name = name.to_string();
    move |e| ApiError::from_storage(e, &resource, &name)
}

fn decode(value: &[u8], rev: i64) -> ApiResult<Value> {
    decode_with_resource_version(value, rev).map_err(ApiError::Internal)
}

fn encode(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).map_err(|e| ApiError::Internal(e.to_string()))
}

async fn get_object(state: &ApiState, target: &Target, name: &str) -> ApiResult<(Value, i64)> {
    let key = key_of(target, name)?;
    let stored = state
        .storage
        .get(&key)
        .await
        .map_err(storage_err(target, name))?
        .ok_or_else(|| {
            ApiError::from_storage(
                storage::Error::NotFound { key },
                &target.res.qualified(),
                name,
            )
        })?;
    Ok((
        decode(&stored.value, stored.mod_revision)?,
        stored.mod_revision,
    ))
}

fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s:?}")))
}
