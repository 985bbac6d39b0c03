//! `labelSelector` and `fieldSelector` parsing and matching.

use serde_json::Value;

use super::error::{ApiError, ApiResult};

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelReq {
    /// `key=value`, `key==value`.
    Eq(String, String),
    /// `key!=value`.
    NotEq(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelReq>);

/// Split at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(rest: &str, sel: &str) -> ApiResult<Vec<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad_label(sel, "expected a parenthesised value set"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn bad_label(sel: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement: invalid label selector \"{sel}\": {why}"
    ))
}

fn check_key(key: &str, sel: &str) -> ApiResult<String> {
    let key = key.trim();
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(bad_label(sel, &format!("invalid key {key:?}")))
    }
}

impl LabelSelector {
    /// Parse the `labelSelector` query syntax.
    pub fn parse(sel: &str) -> ApiResult<LabelSelector> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(sel) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad_label(sel, "empty requirement"));
            }
            if let Some(key) = part.strip_prefix('!') {
                reqs.push(LabelReq::NotExists(check_key(key, sel)?));
            } else if let Some((k, v)) = part.split_once("!=") {
                reqs.push(LabelReq::NotEq(check_key(k, sel)?, v.trim().to_string()));
            } else if let Some((k, v)) = part.split_once("==") {
                reqs.push(LabelReq::Eq(check_key(k, sel)?, v.trim().to_string()));
            } else if let Some((k, v)) = part.split_once('=') {
                reqs.push(LabelReq::Eq(check_key(k, sel)?, v.trim().to_string()));
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                reqs.push(LabelReq::NotIn(check_key(k, sel)?, set_values(rest, sel)?));
            } else if let Some((k, rest)) = part.split_once(" in ") {
                reqs.push(LabelReq::In(check_key(k, sel)?, set_values(rest, sel)?));
            } else {
                reqs.push(LabelReq::Exists(check_key(part, sel)?));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector: `(json pointer, equal?, value)` triples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

/// The fields every resource supports, plus per-kind ones.
fn field_pointer(kind: &str, field: &str) -> Option<&'static str> {
    match (kind, field) {
        (_, "metadata.name") => Some("/metadata/name"),
        (_, "metadata.namespace") => Some("/metadata/namespace"),
        ("Pod", "spec.nodeName") => Some("/spec/nodeName"),
        ("Pod", "status.phase") => Some("/status/phase"),
        ("Pod", "spec.restartPolicy") => Some("/spec/restartPolicy"),
        ("Pod", "spec.schedulerName") => Some("/spec/schedulerName"),
        ("Pod", "spec.serviceAccountName") => Some("/spec/serviceAccountName"),
        ("Pod", "status.podIP") => Some("/status/podIP"),
        ("Node", "spec.unschedulable") => Some("/spec/unschedulable"),
        ("Namespace", "status.phase") => Some("/status/phase"),
        ("Event", "involvedObject.name") => Some("/involvedObject/name"),
        ("Event", "involvedObject.namespace") => Some("/involvedObject/namespace"),
        ("Event", "involvedObject.kind") => Some("/involvedObject/kind"),
        ("Event", "involvedObject.uid") => Some("/involvedObject/uid"),
        ("Event", "reason") => Some("/reason"),
        ("Event", "type") => Some("/type"),
        ("Secret", "type") => Some("/type"),
        _ => None,
    }
}

impl FieldSelector {
    /// Parse `fieldSelector` for objects of `kind`; unsupported fields → 400.
    pub fn parse(sel: &str, kind: &str) -> ApiResult<FieldSelector> {
        let mut reqs = Vec::new();
        for part in sel.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid selector: '{sel}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let pointer = field_pointer(kind, field).ok_or_else(|| {
                ApiError::BadRequest(format!("field label not supported: {field}"))
            })?;
            reqs.push((pointer.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether `object` satisfies every requirement (a missing field is "").
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(ptr, eq, want)| {
            let got = match object.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m(""));
        assert!(LabelSelector::parse("a in x").is_err());
    }

    #[test]
    fn fields() {
        let o = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let m = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&o);
        assert!(m("spec.nodeName=n1"));
        assert!(m("status.phase!=Pending,metadata.name==p"));
        assert!(!m("spec.nodeName="));
        assert!(FieldSelector::parse("spec.nodeName=x", "ConfigMap").is_err());
    }
}
