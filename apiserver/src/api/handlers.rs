//! The generic REST handlers, driven by [`super::resources::RESOURCES`].

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

/// Check kind/apiVersion of a body against the URL, filling them when absent.
fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the request body is not a JSON object".into(),
        ));
    };
    let api_version = res.api_version();
    match o.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match o.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("kind".into(), json!(res.kind));
        }
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    Ok(())
}

/// Check and fill `metadata.namespace` against the URL.
fn check_namespace(target: &Target, obj: &mut Value) -> ApiResult<()> {
    let meta = meta_mut(obj)?;
    if !target.res.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let url_ns = target.namespace.clone().unwrap_or_default();
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(url_ns));
        }
        Some(ns) if ns == url_ns => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn is_dry_run(params: &Params) -> bool {
    params.get("dryRun").is_some_and(|v| v == "All")
}

/// A create or update body: parsed, of the kind the URL names, checked per
/// `fieldValidation` (returning its warnings), and in the URL's namespace.
fn decode_body(target: &Target, params: &Params, body: &[u8]) -> ApiResult<(Value, Vec<String>)> {
    let res = target.res;
    let mut obj = parse_json(body)?;
    check_type(res, &mut obj)?;
    let mode = FieldValidation::parse(params.get("fieldValidation").map(String::as_str))?;
    let warnings = validation::check(res, &obj, mode)?;
    check_namespace(target, &mut obj)?;
    Ok((obj, warnings))
}

async fn create(
    state: &ApiState,
    target: &Target,
    params: &Params,
    body: &[u8],
) -> ApiResult<Response> {
    let res = target.res;
    let (mut obj, warnings) = decode_body(target, params, body)?;
    let meta = meta_mut(&mut obj)?;
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if generate.is_empty() {
            return Err(ApiError::Invalid {
                kind: res.kind.into(),
                name: String::new(),
                causes: vec![super::error::Cause {
                    reason: "FieldValueRequired".into(),
                    field: "metadata.name".into(),
                    message: "Required value: name or generateName is required".into(),
                }],
            });
        }
        name = format!("{generate}{}", name_suffix());
        meta.insert("name".into(), json!(name));
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(k);
    }
    if let Some(ns) = &target.namespace {
        let ns_key =
            object_key("namespaces", None, ns).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let exists = state
            .storage
            .get(&ns_key)
            .await
            .map_err(|e| ApiError::from_storage(e, "namespaces", ns))?;
        if exists.is_none() {
            return Err(ApiError::NotFound {
                resource: "namespaces".into(),
                name: ns.clone(),
                kind: "namespaces".into(),
            });
        }
    }
    // Every field error at once (one 422 listing every cause, as kube-apiserver does).
    res.strategy.prepare_for_create(&mut obj)?;
    let mut errs = strategy::validate_meta(res, &obj)?;
    errs.extend(res.strategy.validate(&obj)?);
    strategy::invalid(res, &obj, errs)?;
    if is_dry_run(params) {
        return Ok(respond(StatusCode::CREATED, &obj, &warnings));
    }
    let key = key_of(target, &name)?;
    let rev = state
        .storage
        .create(&key, encode(&obj)?)
        .await
        .map_err(storage_err(target, &name))?;
    storage::set_resource_version(&mut obj, rev).map_err(ApiError::Internal)?;
    Ok(respond(StatusCode::CREATED, &obj, &warnings))
}

fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s:?}")))
}

/// Carry server-owned fields from `old` into `new` and apply subresource
/// semantics; returns the object to store.
fn prepare_update(target: &Target, old: &Value, mut new: Value) -> ApiResult<Value> {
    let res = target.res;
    let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
    {
        let meta = meta_mut(&mut new)?;
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => meta.insert(k.into(), v.clone()),
                None => meta.remove(k),
            };
        }
    }
    if target.sub.as_deref() == Some("status") {
        if let Some(o) = new.as_object_mut() {
            match old.get("spec") {
                Some(s) => o.insert("spec".into(), s.clone()),
                None => o.remove("spec"),
            };
        }
    } else if res.has_status()
        && let Some(o) = new.as_object_mut()
    {
        match old.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    res.strategy.prepare_for_update(old, &mut new)?;
    let mut errs = strategy::validate_meta_update(res, old, &new)?;
    errs.extend(res.strategy.validate_update(
        old,
        &new,
        target.sub.as_deref() == Some("status"),
    )?);
    strategy::invalid(res, &new, errs)?;
    if old.get("spec") != new.get("spec") {
        let g = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut new)?.insert("generation".into(), json!(g + 1));
    }
    Ok(new)
}

async fn update(
    state: &ApiState,
    target: &Target,
    name: &str,
    params: &Params,
    body: &[u8],
) -> ApiResult<Response> {
    let res = target.res;
    let (obj, warnings) = decode_body(target, params, body)?;
    let body_name = str_at(&obj, "/metadata/name").to_string();
    if body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let expected = match str_at(&obj, "/metadata/resourceVersion") {
        "" => None,
        rv => Some(parse_rv(rv)?),
    };
    let (old, old_rev) = get_object(state, target, name).await?;
    if let Some(e) = expected
        && e != old_rev
    {
        return Err(ApiError::Conflict {
            resource: res.qualified(),
            name: name.into(),
            detail: MODIFIED.into(),
        });
    }
    let mut new = prepare_update(target, &old, obj)?;
    if is_dry_run(params) {
        return Ok(respond(StatusCode::OK, &new, &warnings));
    }
    let key = key_of(target, name)?;
    let rev = state
        .storage
        .update(&key, encode(&new)?, Some(expected.unwrap_or(old_rev)))
        .await
        .map_err(storage_err(target, name))?;
    storage::set_resource_version(&mut new, rev).map_err(ApiError::Internal)?;
    Ok(respond(StatusCode::OK, &new, &warnings))
}

async fn patch_handler(
    state: &ApiState,
    target: &Target,
    name: &str,
    params: &Params,
    kind: PatchType,
    body: &[u8],
) -> ApiResult<Response> {
    let res = target.res;
    let mode = FieldValidation::parse(params.get("fieldValidation").map(String::as_str))?;
    let key = key_of(target, name)?;
    for _ in 0..5 {
        let (old, old_rev) = get_object(state, target, name).await?;
        let mut patched = patch::apply(kind, &old, body)?;
        check_type(res, &mut patched)?;
        let warnings = validation::check(res, &patched, mode)?;
        check_namespace(target, &mut patched)?;
        if str_at(&patched, "/metadata/name") != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                str_at(&patched, "/metadata/name")
            )));
        }
        let rv = str_at(&patched, "/metadata/resourceVersion").to_string();
        let user_rv = !rv.is_empty() && rv != old_rev.to_string();
        let expected = if user_rv { parse_rv(&rv)? } else { old_rev };
        let mut new = prepare_update(target, &old, patched)?;
        if is_dry_run(params) {
            return Ok(respond(StatusCode::OK, &new, &warnings));
        }
        match state
            .storage
            .update(&key, encode(&new)?, Some(expected))
            .await
        {
            Ok(rev) => {
                storage::set_resource_version(&mut new, rev).map_err(ApiError::Internal)?;
                return Ok(respond(StatusCode::OK, &new, &warnings));
            }
            Err(storage::Error::Conflict { .. }) if !user_rv => continue,
            Err(e) => return Err(ApiError::from_storage(e, &res.qualified(), name)),
        }
    }
    Err(ApiError::Conflict {
        resource: res.qualified(),
        name: name.into(),
        detail: MODIFIED.into(),
    })
}

async fn bind(state: &ApiState, target: &Target, name: &str, body: &[u8]) -> ApiResult<Response> {
    let binding = parse_json(body)?;
    let node = str_at(&binding, "/target/name").to_string();
    if node.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            name: name.into(),
            causes: vec![super::error::Cause::required("target.name")],
        });
    }
    let conflict = |detail: String| ApiError::Conflict {
        resource: "pods/binding".into(),
        name: name.into(),
        detail,
    };
    let key = key_of(target, name)?;
    let (mut pod, rev) = get_object(state, target, name).await?;
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Err(conflict(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        )));
    }
    let current = str_at(&pod, "/spec/nodeName");
    if !current.is_empty() {
        return Err(conflict(format!(
            "pod {name} is already assigned to node \"{current}\""
        )));
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("nodeName".into(), json!(node));
    }
    if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
        let conds = status.entry("conditions").or_insert_with(|| json!([]));
        if let Some(list) = conds.as_array_mut() {
            list.retain(|c| str_at(c, "/type") != "PodScheduled");
            list.push(json!({"type": "PodScheduled", "status": "True",
                "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        }
    }
    state
        .storage
        .update(&key, encode(&pod)?, Some(rev))
        .await
        .map_err(|e| match e {
            storage::Error::Conflict { .. } => conflict(MODIFIED.into()),
            e => ApiError::from_storage(e, "pods", name),
        })?;
    Ok(respond(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// The DeleteOptions of a request (body and query).
fn delete_options(params: &Params, body: &[u8]) -> ApiResult<Value> {
    let mut opts = if body.iter().all(|b| b.is_ascii_whitespace()) {
        json!({})
    } else {
        parse_json(body)?
    };
    if let Some(g) = params.get("gracePeriodSeconds") {
        let g: i64 = g
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds: {g:?}")))?;
        opts["gracePeriodSeconds"] = json!(g);
    }
    if let Some(d) = params.get("dryRun") {
        opts["dryRun"] = json!([d]);
    }
    Ok(opts)
}

async fn delete(
    state: &ApiState,
    target: &Target,
    name: &str,
    params: &Params,
    body: &[u8],
) -> ApiResult<Response> {
    let opts = delete_options(params, body)?;
    // Like kube-apiserver's GuaranteedUpdate: a write that lost a race with
    // another writer (the scheduler or an agent patching status) is retried
    // on the fresh object; only a resourceVersion precondition from the
    // client turns it into 409.
    for _ in 0..16 {
        if let Some(resp) = delete_attempt(state, target, name, &opts).await? {
            return Ok(resp);
        }
    }
    Err(ApiError::Conflict {
        resource: target.res.qualified(),
        name: name.into(),
        detail: MODIFIED.into(),
    })
}

/// One try of [`delete`]; `None` when the object changed under it.
async fn delete_attempt(
    state: &ApiState,
    target: &Target,
    name: &str,
    opts: &Value,
) -> ApiResult<Option<Response>> {
    let res = target.res;
    let (old, rev) = get_object(state, target, name).await?;
    let conflict = |detail: String| ApiError::Conflict {
        resource: res.qualified(),
        name: name.into(),
        detail,
    };
    let pre_uid = str_at(&opts, "/preconditions/uid");
    if !pre_uid.is_empty() && pre_uid != str_at(&old, "/metadata/uid") {
        return Err(conflict(format!(
            "Precondition failed: UID in precondition: {pre_uid}, UID in object meta: {}",
            str_at(&old, "/metadata/uid")
        )));
    }
    let pre_rv = str_at(&opts, "/preconditions/resourceVersion");
    if !pre_rv.is_empty() && pre_rv != rev.to_string() {
        return Err(conflict(format!(
            "Precondition failed: ResourceVersion in precondition: {pre_rv}, ResourceVersion in object meta: {rev}"
        )));
    }
    let retry_on_conflict = pre_rv.is_empty();
    let dry = opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    let key = key_of(target, name)?;
    res.strategy.check_delete(name)?;
    let requested = opts.get("gracePeriodSeconds").and_then(Value::as_i64);
    if let Some(grace) = res.strategy.graceful_delete(&old, requested) {
        let existing = old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if existing.is_some_and(|e| e <= grace) {
            return Ok(Some(respond(StatusCode::OK, &old, &[])));
        }
        let mut new = old.clone();
        let at = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(grace))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let meta = meta_mut(&mut new)?;
        meta.insert("deletionTimestamp".into(), json!(format_time(at)));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if dry {
            return Ok(Some(respond(StatusCode::OK, &new, &[])));
        }
        let new_rev = match state.storage.update(&key, encode(&new)?, Some(rev)).await {
            Err(storage::Error::Conflict { .. }) if retry_on_conflict => return Ok(None),
            r => r.map_err(storage_err(target, name))?,
        };
        storage::set_resource_version(&mut new, new_rev).map_err(ApiError::Internal)?;
        return Ok(Some(respond(StatusCode::OK, &new, &[])));
    }
    if dry {
        return Ok(Some(respond(StatusCode::OK, &old, &[])));
    }
    if res.strategy.deletes_contents() {
        delete_namespace_contents(state, name).await?;
    }
    let (del_rev, _) = match state.storage.delete(&key, Some(rev)).await {
        Err(storage::Error::Conflict { .. }) if retry_on_conflict => return Ok(None),
        r => r.map_err(storage_err(target, name))?,
    };
    let mut obj = old;
    storage::set_resource_version(&mut obj, del_rev).map_err(ApiError::Internal)?;
    Ok(Some(respond(StatusCode::OK, &obj, &[])))
}

async fn delete_namespace_contents(state: &ApiState, ns: &str) -> ApiResult<()> {
    for r in resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let prefix =
            collection_prefix(r.name, Some(ns)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let list = state
            .storage
            .list(&prefix, ListOptions::default())
            .await
            .map_err(|e| ApiError::from_storage(e, &r.qualified(), ""))?;
        for kv in list.items {
            match state.storage.delete(&kv.key, None).await {
                Ok(_) | Err(storage::Error::NotFound { .. }) => {}
                Err(e) => return Err(ApiError::from_storage(e, &r.qualified(), "")),
            }
        }
    }
    Ok(())
}

async fn delete_collection(
    state: &ApiState,
    target: &Target,
    params: &Params,
) -> ApiResult<Response> {
    let (items, rev, _, _) = collect(state, target, params, None).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = str_at(&obj, "/metadata/name").to_string();
        let t = Target {
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or(target.namespace.clone()),
            name: Some(name.clone()),
            ..target.clone()
        };
        match delete(state, &t, &name, params, b"").await {
            Ok(_) => deleted.push(obj),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(respond(
        StatusCode::OK,
        &list_body(target.res, deleted, rev, None, None),
        &[],
    ))
}

fn list_body(
    res: &Resource,
    items: Vec<Value>,
    rev: i64,
    cont: Option<String>,
    remaining: Option<i64>,
) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": meta, "items": items})
}

/// The selectors of a list or watch request.
struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(res: &Resource, params: &Params) -> ApiResult<Filter> {
        Ok(Filter {
            labels: LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldSelector::parse(
                params.get("fieldSelector").map_or("", String::as_str),
                res.kind,
            )?,
        })
    }

    fn is_empty(&self) -> bool {
        self.labels.0.is_empty() && self.fields.0.is_empty()
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// List the matching objects: `(items, revision, continue, remaining)`.
/// `limit_override` replaces the `limit` parameter.
async fn collect(
    state: &ApiState,
    target: &Target,
    params: &Params,
    limit_override: Option<u64>,
) -> ApiResult<(Vec<Value>, i64, Option<String>, Option<i64>)> {
    let res = target.res;
    let filter = Filter::new(res, params)?;
    let prefix = collection_prefix(res.name, target.namespace.as_deref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = match limit_override {
        Some(l) => l,
        None => match params.get("limit") {
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit: {l:?}")))?
                .max(0) as u64,
            None => 0,
        },
    };
    let mut cont = params.get("continue").filter(|c| !c.is_empty()).cloned();
    let rv = params.get("resourceVersion").map_or("", String::as_str);
    let rv_match = params
        .get("resourceVersionMatch")
        .map_or("", String::as_str);
    let mut revision = None;
    if cont.is_some() {
        if !rv.is_empty() && rv != "0" {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
    } else if !rv.is_empty() && rv != "0" {
        let n = parse_rv(rv)?;
        if rv_match == "Exact" || (rv_match.is_empty() && limit > 0) {
            revision = Some(n);
        } else {
            let current = state
                .storage
                .current_revision()
                .await
                .map_err(|e| ApiError::from_storage(e, &res.qualified(), ""))?;
            if n > current {
                return Err(ApiError::Timeout(format!(
                    "Too large resource version: {n}, current: {current}"
                )));
            }
        }
    } else if rv_match == "Exact" {
        return Err(ApiError::BadRequest(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\" or unset".into(),
        ));
    }
    let mut items = Vec::new();
    loop {
        let page = state
            .storage
            .list(
                &prefix,
                ListOptions {
                    limit: (limit > 0).then_some(limit),
                    continue_key: cont.clone(),
                    revision,
                },
            )
            .await
            .map_err(|e| match e {
                storage::Error::Compacted { .. } if cont.is_none() => ApiError::Expired(
                    "The resourceVersion for the provided list is too old.".into(),
                ),
                storage::Error::Compacted { .. } => ApiError::Expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
                ),
                e => ApiError::from_storage(e, &res.qualified(), ""),
            })?;
        let rev = page.revision;
        if filter.is_empty() {
            for kv in &page.items {
                items.push(decode(&kv.value, kv.mod_revision)?);
            }
            return Ok((items, rev, page.continue_key, page.remaining));
        }
        let mut last_key = None;
        for kv in &page.items {
            let obj = decode(&kv.value, kv.mod_revision)?;
            if filter.matches(&obj) {
                items.push(obj);
                if limit > 0 && items.len() as u64 >= limit {
                    last_key = Some(kv.key.clone());
                    break;
                }
            }
        }
        if let Some(last) = last_key {
            // Full page: continue after the last returned item unless the
            // storage had nothing more anyway.
            let is_last_of_page = page.items.last().map(|kv| &kv.key) == Some(&last);
            let next = if is_last_of_page && page.continue_key.is_none() {
                None
            } else {
                Some(
                    ContinueToken {
                        last_key: last,
                        revision: rev,
                    }
                    .to_string(),
                )
            };
            return Ok((items, rev, next, None));
        }
        match page.continue_key {
            Some(c) => {
                cont = Some(c);
                revision = None;
            }
            None => return Ok((items, rev, None, None)),
        }
    }
}

async fn list(
    state: &ApiState,
    target: &Target,
    params: &Params,
    as_table: bool,
) -> ApiResult<Response> {
    let (items, rev, cont, remaining) = collect(state, target, params, None).await?;
    if as_table {
        let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if let Some(c) = &cont {
            meta["continue"] = json!(c);
        }
        if let Some(r) = remaining {
            meta["remainingItemCount"] = json!(r);
        }
        return Ok(respond(
            StatusCode::OK,
            &table::table(target.res.printer, &items, include, meta),
            &[],
        ));
    }
    Ok(respond(
        StatusCode::OK,
        &list_body(target.res, items, rev, cont, remaining),
        &[],
    ))
}

fn expired_event(msg: String) -> Value {
    json!({"type": "ERROR", "object": ApiError::Expired(msg).status()})
}

/// Serve a watch: one JSON event per line, flushed per event.
async fn watch_handler(
    state: &Arc<ApiState>,
    target: &Target,
    params: &Params,
    as_table: bool,
) -> ApiResult<Response> {
    let res = target.res;
    let filter = Filter::new(res, params)?;
    let prefix = collection_prefix(res.name, target.namespace.as_deref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| super::objects::query_flag(v));
    let timeout = match params.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds: {t:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
    let rv = params.get("resourceVersion").map_or("", String::as_str);
    let mut initial = Vec::new();
    let from = if rv.is_empty() || rv == "0" {
        let mut p = params.clone();
        p.remove("resourceVersion");
        p.remove("limit");
        p.remove("continue");
        let (items, rev, _, _) = collect(state, target, &p, Some(0)).await?;
        for obj in items {
            initial.push(("ADDED", obj));
        }
        rev
    } else {
        parse_rv(rv)?
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let storage = state.storage.clone();
    let bookmark_every = state.config.bookmark_interval;
    let kind = res.kind;
    let printer = res.printer;
    let api_version = res.api_version();
    let render = move |ty: &str, obj: Value| -> Bytes {
        let object = if as_table && ty != "ERROR" && ty != "BOOKMARK" {
            table::table(
                printer,
                std::slice::from_ref(&obj),
                include,
                json!({"resourceVersion": str_at(&obj, "/metadata/resourceVersion")}),
            )
        } else {
            obj
        };
        let mut line = json!({"type": ty, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    };
    let stream = storage.watch(&prefix, from).await;
    tokio::spawn(async move {
        for (ty, obj) in initial {
            if tx.send(Ok(render(ty, obj))).await.is_err() {
                return;
            }
        }
        let mut events = match stream {
            Ok(s) => s,
            Err(storage::Error::Compacted {
                revision,
                compact_revision,
                ..
            }) => {
                let ev = expired_event(format!(
                    "too old resource version: {revision} ({compact_revision})"
                ));
                let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                return;
            }
            Err(e) => {
                let ev =
                    json!({"type": "ERROR", "object": ApiError::Internal(e.to_string()).status()});
                let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        let mut last_rv = from;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(Ok(render("BOOKMARK", obj))).await.is_err() {
                        return;
                    }
                }
                ev = events.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Ok(ev)) => ev,
                        Some(Err(storage::Error::Compacted { revision, compact_revision, .. })) => {
                            let ev = expired_event(format!("too old resource version: {revision} ({compact_revision})"));
                            let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                            return;
                        }
                        Some(Err(e)) => {
                            let ev = json!({"type": "ERROR", "object": ApiError::Internal(e.to_string()).status()});
                            let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                            return;
                        }
                    };
                    last_rv = ev.revision;
                    let Ok(obj) = decode_with_resource_version(&ev.value, ev.revision) else { continue };
                    let now = filter.matches(&obj);
                    let before = ev
                        .prev_value
                        .as_deref()
                        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                        .is_some_and(|p| filter.matches(&p));
                    let ty = match ev.kind {
                        EventKind::Added if now => "ADDED",
                        EventKind::Deleted if now || before => "DELETED",
                        EventKind::Modified if now && before => "MODIFIED",
                        EventKind::Modified if now => "ADDED",
                        EventKind::Modified if before => "DELETED",
                        _ => continue,
                    };
                    if tx.send(Ok(render(ty, obj))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;stream=watch"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// Remove pods whose grace period has passed (`deletionTimestamp` ≤ now).
pub async fn reap_pods(state: &ApiState) -> Result<usize, storage::Error> {
    let prefix = collection_prefix("pods", None)?;
    let list = state.storage.list(&prefix, ListOptions::default()).await?;
    let now = jiff::Timestamp::now();
    let mut removed = 0;
    for kv in list.items {
        let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let due = parse_time(str_at(&obj, "/metadata/deletionTimestamp")).is_some_and(|t| t <= now);
        if due {
            match state.storage.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => removed += 1,
                Err(storage::Error::NotFound { .. } | storage::Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}
