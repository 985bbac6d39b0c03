//! Writes: create, update (and the status subresource), patch, and binding.

use super::*;

/// Check kind/apiVersion of a body against the URL, filling them when absent.
pub(super) fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
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
pub(super) fn check_namespace(target: &Target, obj: &mut Value) -> ApiResult<()> {
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

pub(super) fn is_dry_run(params: &Params) -> bool {
    params.get("dryRun").is_some_and(|v| v == "All")
}

/// A create or update body: parsed, of the kind the URL names, checked per
/// `fieldValidation` (returning its warnings), and in the URL's namespace.
pub(super) fn decode_body(
    target: &Target,
    params: &Params,
    body: &[u8],
) -> ApiResult<(Value, Vec<String>)> {
    let res = target.res;
    let mut obj = parse_json(body)?;
    check_type(res, &mut obj)?;
    let mode = FieldValidation::parse(params.get("fieldValidation").map(String::as_str))?;
    let warnings = validation::check(res, &obj, mode)?;
    check_namespace(target, &mut obj)?;
    Ok((obj, warnings))
}

pub(super) async fn create(
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
                causes: vec![crate::api::error::Cause {
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
    admission::admit(
        state,
        &target.admission(Operation::Create, &name, Some(&obj), None),
    )
    .await?;
    admission::mutate(
        state,
        &target.admission(Operation::Create, &name, None, None),
        &mut obj,
    )
    .await?;
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

/// Carry server-owned fields from `old` into `new` and apply subresource
/// semantics; returns the object to store.
pub(super) fn prepare_update(target: &Target, old: &Value, mut new: Value) -> ApiResult<Value> {
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

pub(super) async fn update(
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
    admission::admit(
        state,
        &target.admission(Operation::Update, name, Some(&obj), Some(&old)),
    )
    .await?;
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

pub(super) async fn patch_handler(
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
        admission::admit(
            state,
            &target.admission(Operation::Update, name, Some(&patched), Some(&old)),
        )
        .await?;
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

/// How often a binding reads the pod again after losing a write race.
const BIND_ATTEMPTS: usize = 16;

pub(super) async fn bind(
    state: &ApiState,
    target: &Target,
    name: &str,
    body: &[u8],
) -> ApiResult<Response> {
    let binding = parse_json(body)?;
    let node = str_at(&binding, "/target/name").to_string();
    if node.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            name: name.into(),
            causes: vec![crate::api::error::Cause::required("target.name")],
        });
    }
    let conflict = |detail: String| ApiError::Conflict {
        resource: "pods/binding".into(),
        name: name.into(),
        detail,
    };
    let key = key_of(target, name)?;
    // As upstream's `assignPod` (a GuaranteedUpdate): a write that lost a
    // race reads the pod again and judges it again, so the loser of two
    // bindings learns the pod "is already assigned", not merely "modified".
    for _ in 0..BIND_ATTEMPTS {
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
        match state.storage.update(&key, encode(&pod)?, Some(rev)).await {
            Ok(_) => {
                return Ok(respond(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    &[],
                ));
            }
            Err(storage::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_storage(e, "pods", name)),
        }
    }
    Err(conflict(MODIFIED.into()))
}
