//! Reads: list with label and field selectors, as objects or a Table.

use super::*;

pub(super) fn list_body(
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
pub(super) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub(super) fn new(res: &Resource, params: &Params) -> ApiResult<Filter> {
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

    pub(super) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// List the matching objects: `(items, revision, continue, remaining)`.
/// `limit_override` replaces the `limit` parameter.
pub(super) async fn collect(
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

pub(super) async fn list(
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
