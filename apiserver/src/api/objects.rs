//! Object metadata helpers and per-kind defaulting and validation.

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult, Cause};

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS RNG failing is not recoverable; fall back to time-derived bytes.
    if getrandom::fill(&mut buf).is_err() {
        let t = jiff::Timestamp::now().as_nanosecond();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8);
        }
    }
    buf
}

/// A new random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A 5-character suffix for `generateName` (kube's alphabet: no vowels, no
/// confusable characters).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes(5)
        .into_iter()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The current time as an RFC 3339 timestamp with second precision (`2024-01-01T00:00:00Z`).
pub fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

/// Format a timestamp the way Kubernetes serialises `metav1.Time`.
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parse a `metav1.Time`.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A boolean query parameter as kube-apiserver decodes it
/// (apimachinery's `Convert_Slice_string_To_bool`, for a parameter that is
/// present): "0" and "false" in any case are false, everything else (`true`,
/// `True`, `1`, even the empty string) is true. The Python client sends
/// `watch=True`.
pub fn query_flag(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

/// Whether `s` is a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (dot-separated labels, ≤ 253).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// `metadata` of an object as a mutable map (created when missing).
pub fn meta_mut(obj: &mut Value) -> ApiResult<&mut Map<String, Value>> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the object is not a JSON object".into()))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    m.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata is not a JSON object".into()))
}

/// A string at a JSON pointer, or "".
pub fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Validate the name (and, for namespaces, that it is a label).
pub fn validate_name(kind: &str, name: &str) -> ApiResult<()> {
    let ok = if kind == "Namespace" {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name)
    };
    if ok {
        return Ok(());
    }
    let msg = if kind == "Namespace" {
        LABEL_MSG
    } else {
        SUBDOMAIN_MSG
    };
    Err(ApiError::Invalid {
        kind: kind.into(),
        name: name.into(),
        causes: vec![Cause::invalid("metadata.name", name, msg)],
    })
}

/// Apply the Pod defaults kube-apiserver applies (every write).
pub fn default_pod(pod: &mut Value) {
    let Some(o) = pod.as_object_mut() else {
        return;
    };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        for (k, v) in [
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("schedulerName", json!("default-scheduler")),
            ("securityContext", json!({})),
            ("enableServiceLinks", json!(true)),
            ("preemptionPolicy", json!("PreemptLowerPriority")),
            ("priority", json!(0)),
        ] {
            spec.entry(k).or_insert(v);
        }
        for list in ["initContainers", "containers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(list) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                    let policy = if image_tag(image) == "latest" {
                        "Always"
                    } else {
                        "IfNotPresent"
                    };
                    c.entry("imagePullPolicy").or_insert(json!(policy));
                    c.entry("terminationMessagePath")
                        .or_insert(json!("/dev/termination-log"));
                    c.entry("terminationMessagePolicy").or_insert(json!("File"));
                    c.entry("resources").or_insert(json!({}));
                    if let Some(Value::Array(ports)) = c.get_mut("ports") {
                        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                            p.entry("protocol").or_insert(json!("TCP"));
                        }
                    }
                }
            }
        }
    }
    let qos = qos_class(o.get("spec").unwrap_or(&Value::Null));
    let status = o.entry("status").or_insert_with(|| json!({}));
    if let Some(status) = status.as_object_mut() {
        status.entry("phase").or_insert(json!("Pending"));
        status.entry("qosClass").or_insert(json!(qos));
    }
}

/// The tag of an image reference (`latest` when none and no digest).
fn image_tag(image: &str) -> &str {
    if image.contains('@') {
        return "";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag,
        None => "latest",
    }
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut containers: Vec<&Value> = Vec::new();
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = spec.get(list) {
            containers.extend(cs.iter());
        }
    }
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for res in ["cpu", "memory"] {
            let r = req.and_then(|m| m.get(res));
            let l = lim.and_then(|m| m.get(res));
            if r.is_some() || l.is_some() {
                any = true;
            }
            match (r, l) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Validate a pod's essentials (after defaulting).
pub fn validate_pod(pod: &Value) -> ApiResult<()> {
    let name = str_at(pod, "/metadata/name");
    let mut causes = Vec::new();
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required("spec.containers")),
        Some(cs) if cs.is_empty() => causes.push(Cause::required("spec.containers")),
        Some(_) => {}
    }
    let mut seen: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for (i, c) in cs.iter().enumerate() {
            let cname = str_at(c, "/name");
            let field = format!("spec.{list}[{i}]");
            if cname.is_empty() {
                causes.push(Cause::required(format!("{field}.name")));
            } else if !is_dns1123_label(cname) {
                causes.push(Cause::invalid(format!("{field}.name"), cname, LABEL_MSG));
            } else if seen.iter().any(|s| s == cname) {
                causes.push(Cause::duplicate(format!("{field}.name"), cname));
            } else {
                seen.push(cname.to_string());
            }
            if str_at(c, "/image").trim().is_empty() {
                causes.push(Cause::required(format!("{field}.image")));
            }
        }
    }
    let rp = str_at(pod, "/spec/restartPolicy");
    if !["Always", "OnFailure", "Never"].contains(&rp) {
        causes.push(Cause {
            reason: "FieldValueNotSupported".into(),
            field: "spec.restartPolicy".into(),
            message: format!(
                "Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            kind: "Pod".into(),
            name: name.into(),
            causes,
        })
    }
}

/// Check a pod update only changes the mutable spec fields: container
/// images, `activeDeadlineSeconds`, and additions to `tolerations`.
pub fn validate_pod_update(old: &Value, new: &Value) -> ApiResult<()> {
    let (Some(old_spec), Some(new_spec)) = (old.get("spec"), new.get("spec")) else {
        return Ok(());
    };
    let mut a = old_spec.clone();
    let mut b = new_spec.clone();
    for spec in [&mut a, &mut b] {
        if let Some(s) = spec.as_object_mut() {
            s.remove("activeDeadlineSeconds");
            s.remove("tolerations");
            for list in ["initContainers", "containers"] {
                if let Some(Value::Array(cs)) = s.get_mut(list) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
    }
    let name = str_at(new, "/metadata/name").to_string();
    let forbidden = |detail: &str, field: &str| ApiError::Invalid {
        kind: "Pod".into(),
        name: name.clone(),
        causes: vec![Cause::forbidden(field, detail)],
    };
    if a != b {
        return Err(forbidden(
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            "spec",
        ));
    }
    let empty = Vec::new();
    let old_tol = old_spec
        .get("tolerations")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let new_tol = new_spec
        .get("tolerations")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if old_tol.iter().any(|t| !new_tol.contains(t)) {
        return Err(forbidden(
            "existing toleration can not be modified except its tolerationSeconds",
            "spec.tolerations",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_label("a.b"));
        assert_eq!(new_uid().len(), 36);
        assert_eq!(name_suffix().len(), 5);
    }

    #[test]
    fn pod_defaults_and_validation() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "nginx"}, {"name": "d", "image": "busybox:1.36",
             "resources": {"limits": {"cpu": "1"}}}]}});
        default_pod(&mut p);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["status"]["qosClass"], "Burstable");
        validate_pod(&p).unwrap();
        let mut bad = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        default_pod(&mut bad);
        let err = validate_pod(&bad).unwrap_err();
        assert_eq!(
            err.status()["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
    }
}
