//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): the
//! request JSON is diffed against its round trip through the k8s-openapi type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::resources::Resource;

/// The `fieldValidation` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields fail the request (400).
    Strict,
    /// Unknown fields are reported in `Warning` headers (the default).
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// Parse the query parameter (absent → Warn).
    pub fn parse(v: Option<&str>) -> ApiResult<FieldValidation> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

/// The object's round trip through its typed form `T`, or the decoding error:
/// each registry entry names its own (`Resource::schema`).
pub fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn diff(orig: &Value, rt: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, rt) {
        (Value::Object(o), Value::Object(r)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match r.get(k) {
                    None => out.push(p),
                    Some(rv) => diff(v, rv, &p, out),
                }
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            for (i, (a, b)) in o.iter().zip(r.iter()).enumerate() {
                diff(a, b, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Check `obj` (of resource `res`) decodes as its type and report its unknown
/// fields: `Strict` → 400, otherwise the warnings to send.
pub fn check(res: &Resource, obj: &Value, mode: FieldValidation) -> ApiResult<Vec<String>> {
    let (kind, version) = (res.kind, res.version);
    let result = (res.schema)(obj);
    let cannot = |msg: String| {
        ApiError::BadRequest(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {msg}"
        ))
    };
    let rt = result.map_err(cannot)?;
    if mode == FieldValidation::Ignore {
        return Ok(vec![]);
    }
    let mut unknown = Vec::new();
    diff(obj, &rt, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(vec![]);
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match mode {
        FieldValidation::Strict => Err(cannot(format!(
            "strict decoding error: {}",
            msgs.join(", ")
        ))),
        _ => Ok(msgs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields() {
        let pods = crate::api::resources::find("", "v1", "pods").expect("pods");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "creationTimestamp": null,
            "labels": {"a.b/c": "d"}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Always", "resources": {}}]}});
        let err = check(pods, &pod, FieldValidation::Strict).unwrap_err();
        assert!(
            err.to_string().contains(
                "strict decoding error: unknown field \"spec.containers[0].imagePullPolcy\""
            ),
            "{err}"
        );
        let w = check(pods, &pod, FieldValidation::Warn).unwrap();
        assert_eq!(
            w,
            vec!["unknown field \"spec.containers[0].imagePullPolcy\"".to_string()]
        );
        assert!(
            check(pods, &pod, FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 5}});
        assert!(check(pods, &bad, FieldValidation::Ignore).is_err());
    }
}
