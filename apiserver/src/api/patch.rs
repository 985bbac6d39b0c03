//! The three patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and a faithful subset of strategic merge patch.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// A PATCH request's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> ApiResult<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            _ => Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
                    .into(),
            )),
        }
    }
}

/// Apply `patch` of type `kind` to `target`.
pub fn apply(kind: PatchType, target: &Value, patch: &[u8]) -> ApiResult<Value> {
    match kind {
        PatchType::Merge => {
            let p: Value = parse(patch)?;
            let mut out = target.clone();
            merge_patch(&mut out, &p);
            Ok(out)
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            let mut out = target.clone();
            // `patch_unsafe`: on a failed operation `out` is dropped, so there is
            // nothing to undo; json_patch's undo (in `patch`) panics on a `move`
            // of a value into itself that an earlier operation made possible
            // (fuzz/regressions/patch/json-move-into-itself).
            json_patch::patch_unsafe(&mut out, &p).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            Ok(out)
        }
        PatchType::Strategic => {
            let p: Value = parse(patch)?;
            if !p.is_object() {
                return Err(ApiError::BadRequest(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            }
            let mut out = target.clone();
            strategic_merge(&mut out, &p, "")?;
            Ok(out)
        }
    }
}

fn parse(patch: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(patch)
        .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))
}

/// RFC 7386 JSON merge patch, in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge key of a list field (by field name and parent path), as the
/// Kubernetes types declare with `patchMergeKey`; `None`: the list is replaced.
fn merge_key(path: &str, field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "ports" if path.ends_with("containers") || path.contains("ontainers") => {
            Some("containerPort")
        }
        "ports" => Some("port"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        _ => None,
    }
}

/// Primitive lists merged (set union) rather than replaced.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch, in place. `path` is the dotted parent path.
pub fn strategic_merge(target: &mut Value, patch: &Value, path: &str) -> ApiResult<()> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = p.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) if other != "merge" => {
            return Err(ApiError::BadRequest(format!(
                "unknown patch type: {other} in map: {path}"
            )));
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    // Deletions from primitive lists first.
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v)
        {
            list.retain(|x| !del.contains(x));
        }
    }
    for (k, v) in p {
        if k.starts_with('$') {
            continue; // $setElementOrder/…, $retainKeys, $deleteFromPrimitiveList/… (done)
        }
        let child_path = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, v, &child_path)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(items) => {
                if let Some(key) = merge_key(path, k) {
                    let entry = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                    merge_list(entry, items, key, &child_path)?;
                } else if merges_primitives(k) {
                    let entry = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                    if let Value::Array(existing) = entry {
                        for item in items {
                            if !existing.contains(item) {
                                existing.push(item.clone());
                            }
                        }
                    } else {
                        *entry = v.clone();
                    }
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(target: &mut Value, items: &[Value], key: &str, path: &str) -> ApiResult<()> {
    if !target.is_array() {
        *target = Value::Array(vec![]);
    }
    let Value::Array(list) = target else {
        return Ok(());
    };
    // `[{"$patch": "replace"}, …]` replaces the whole list.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *list = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    for item in items {
        let Some(obj) = item.as_object() else {
            return Err(ApiError::BadRequest(format!(
                "{path}: expected objects with merge key {key}"
            )));
        };
        let Some(kv) = obj.get(key) else {
            return Err(ApiError::BadRequest(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = list.iter().position(|e| e.get(key) == Some(kv));
        let delete = obj.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut list[i], item, path)?,
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, item, path)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let out = apply(
            PatchType::Merge,
            &t,
            br#"{"a": null, "b": {"c": 5}, "l": [3]}"#,
        )
        .unwrap();
        assert_eq!(out, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch() {
        let t = json!({"metadata": {"labels": {"a": "1"}}});
        let out = apply(
            PatchType::Json,
            &t,
            br#"[{"op": "add", "path": "/metadata/labels/b", "value": "2"}, {"op": "remove", "path": "/metadata/labels/a"}]"#,
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
        assert!(
            apply(
                PatchType::Json,
                &t,
                br#"[{"op": "remove", "path": "/nope"}]"#
            )
            .is_err()
        );
    }

    #[test]
    fn failed_json_patch_after_a_move_over_the_parent_is_an_error_not_a_panic() {
        let t = json!({"metadata": {"labels": {"a": "1"}}});
        let p = br#"[{"op": "move", "from": "/metadata/labels/a", "path": "/metadata"},
                     {"op": "test", "path": "/nope", "value": 1}]"#;
        assert!(apply(PatchType::Json, &t, p).is_err());
    }

    #[test]
    fn strategic() {
        let t = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}
        ], "tolerations": [{"key": "k"}]}, "metadata": {"finalizers": ["f1"]}});
        let p = json!({
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "metadata": {"finalizers": ["f2"]},
            "spec": {"containers": [
                {"name": "a", "image": "x2", "env": [{"name": "F", "value": "2"}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "z"}
            ], "tolerations": [{"key": "k2"}]}
        });
        let out = apply(PatchType::Strategic, &t, p.to_string().as_bytes()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "x2");
        assert_eq!(
            out["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "c");
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "k2"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f2"]));
    }
}
