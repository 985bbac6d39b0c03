//! Deletion: one object (graceful where the kind's strategy says so), a
//! collection, a namespace's contents, and the reaper of pods whose grace period ended.

use super::read::{collect, list_body};
use super::*;

/// The DeleteOptions of a request (body and query).
pub(super) fn delete_options(params: &Params, body: &[u8]) -> ApiResult<Value> {
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

pub(super) async fn delete(
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
pub(super) async fn delete_attempt(
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
    let pre_uid = str_at(opts, "/preconditions/uid");
    if !pre_uid.is_empty() && pre_uid != str_at(&old, "/metadata/uid") {
        return Err(conflict(format!(
            "Precondition failed: UID in precondition: {pre_uid}, UID in object meta: {}",
            str_at(&old, "/metadata/uid")
        )));
    }
    let pre_rv = str_at(opts, "/preconditions/resourceVersion");
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
    admission::admit(
        state,
        &target.admission(Operation::Delete, name, None, Some(&old)),
    )
    .await?;
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

pub(super) async fn delete_namespace_contents(state: &ApiState, ns: &str) -> ApiResult<()> {
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

pub(super) async fn delete_collection(
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
