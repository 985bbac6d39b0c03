//! One manifest file → one static pod, as the kubelet's file source reads it
//! (`pkg/kubelet/config/file.go`, `common.go`): decode, check it is a `v1` `Pod`,
//! warn about fields the schema does not know or the agent does not implement,
//! apply the API defaults, the static-pod UID, name, node and annotations, and
//! validate.
//!
//! The `kubernetes.io/config.seen` annotation is not set here: it must not change
//! on every rescan, so [`super::file`] sets it from its memory of when it first
//! saw each (file, UID).

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use md5::{Digest, Md5};
use serde_json::Value;

use berth_api::defaults;
use berth_api::validation::{self, ErrorType, FieldError};

use super::{ManifestError, SourcedPod};

/// Manifests larger than this are rejected before they are read.
pub const MAX_MANIFEST_BYTES: u64 = 10 * 1024 * 1024;

/// Annotation: the source a static pod came from (`file`).
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation: the static pod's hash, which is its UID.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation: when the agent first saw the pod (RFC 3339, nanoseconds).
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// The value of [`CONFIG_SOURCE_ANNOTATION`] for manifest files.
pub const FILE_SOURCE: &str = "file";

/// At most this many further validation errors are appended to the first one.
const MORE_ERRORS_SHOWN: usize = 10;

// ---------------------------------------------------------------------------
// What the agent does not implement (yet). One table: shrink it as features land.
// ---------------------------------------------------------------------------

/// How a table entry decides that a field is used.
enum Check {
    /// Any value other than null, `[]` or `{}`.
    Present,
    /// Any key of the object other than these (each reported on its own).
    KeysExcept(&'static [&'static str]),
    /// A value the predicate does not accept.
    Unless(fn(&Value) -> bool),
}

/// A field the agent does not implement: where, how it is detected, and why it is ignored.
struct Unsupported {
    /// Dotted path; `[*]` walks every element of a list.
    path: &'static str,
    check: Check,
    reason: &'static str,
}

/// Pod-level fields. Scheduling fields (affinity, tolerations, nodeSelector,
/// priority, topologySpreadConstraints, schedulingGates) mean nothing to a static
/// pod and are ignored silently, as the kubelet ignores them; hostNetwork, hostPID,
/// hostIPC and shareProcessNamespace are supported.
const POD_UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        path: "spec.volumes[*]",
        check: Check::KeysExcept(&["name", "emptyDir", "hostPath"]),
        reason: "static pods support only emptyDir and hostPath volumes (configMap and secret volumes are refused as upstream)",
    },
    Unsupported {
        path: "spec.ephemeralContainers",
        check: Check::Present,
        reason: "ephemeral containers are not supported",
    },
    Unsupported {
        path: "spec.readinessGates",
        check: Check::Present,
        reason: "readiness gates are not supported",
    },
    Unsupported {
        path: "spec.resourceClaims",
        check: Check::Present,
        reason: "resource claims are not supported",
    },
    Unsupported {
        path: "spec.os",
        check: Check::Present,
        reason: "not supported, ignored",
    },
    Unsupported {
        path: "spec.imagePullSecrets",
        check: Check::Present,
        reason: "registry credentials are not supported yet; images are pulled anonymously",
    },
    Unsupported {
        path: "spec.resources",
        check: Check::Present,
        reason: "pod-level resources are not supported",
    },
    Unsupported {
        path: "spec.hostUsers",
        check: Check::Unless(is_true),
        reason: "user namespaces are not supported by this runtime; the pod will not start",
    },
    Unsupported {
        path: "spec.activeDeadlineSeconds",
        check: Check::Present,
        reason: "not enforced",
    },
    Unsupported {
        path: "spec.securityContext",
        check: Check::KeysExcept(&[
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "supplementalGroups",
            "sysctls",
            "fsGroup",
            "fsGroupChangePolicy",
            "seccompProfile",
            "appArmorProfile",
        ]),
        reason: "not supported yet, ignored",
    },
];

/// Why a static pod's ConfigMap/Secret reference is reported: the kubelet
/// refuses them (the API server rejects such mirror pods); the runtime keeps
/// the containers waiting with `CreateContainerConfigError`.
const STATIC_REFERENCES: &str = "static pods may not reference ConfigMaps or Secrets (as upstream); the pod's containers will not start";

/// Container fields, checked on every init and app container.
const CONTAINER_UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        path: "lifecycle.stopSignal",
        check: Check::Present,
        reason: "this container runtime's CRI has no stop signal (containerd 1.6); the image's STOPSIGNAL (else SIGTERM) is used",
    },
    Unsupported {
        path: "envFrom",
        check: Check::Present,
        reason: STATIC_REFERENCES,
    },
    Unsupported {
        path: "env[*].valueFrom",
        check: Check::KeysExcept(&[
            "fieldRef",
            "resourceFieldRef",
            "configMapKeyRef",
            "secretKeyRef",
        ]),
        reason: "not supported",
    },
    Unsupported {
        path: "env[*].valueFrom.configMapKeyRef",
        check: Check::Present,
        reason: STATIC_REFERENCES,
    },
    Unsupported {
        path: "env[*].valueFrom.secretKeyRef",
        check: Check::Present,
        reason: STATIC_REFERENCES,
    },
    Unsupported {
        path: "env[*].valueFrom.fieldRef.fieldPath",
        check: Check::Unless(is_supported_field_path),
        reason: "this field path is not supported yet",
    },
    Unsupported {
        path: "resources.claims",
        check: Check::Present,
        reason: "resource claims are not supported",
    },
    Unsupported {
        path: "volumeDevices",
        check: Check::Present,
        reason: "block devices are not supported",
    },
    Unsupported {
        path: "volumeMounts[*].subPathExpr",
        check: Check::Present,
        reason: "subPathExpr is not supported yet",
    },
    Unsupported {
        path: "securityContext",
        check: Check::KeysExcept(&[
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "privileged",
            "readOnlyRootFilesystem",
            "capabilities",
            "allowPrivilegeEscalation",
            "seccompProfile",
            "appArmorProfile",
            "procMount",
        ]),
        reason: "not supported yet, ignored",
    },
];

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// The downward-API env field paths the agent resolves.
fn is_supported_field_path(v: &Value) -> bool {
    let Some(path) = v.as_str() else { return false };
    matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.podIP"
            | "status.podIPs"
            | "status.hostIP"
            | "status.hostIPs"
    ) || validation::subscripted_key(path).is_some()
}

fn is_meaningful(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Every value at `path` (with `[*]` walking lists), with its concrete path.
fn select<'v>(v: &'v Value, segments: &[&str], at: String, out: &mut Vec<(String, &'v Value)>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push((at, v));
        return;
    };
    let (key, all) = match first.strip_suffix("[*]") {
        Some(key) => (key, true),
        None => (*first, false),
    };
    let Some(child) = v.get(key) else { return };
    let at = if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    };
    if all {
        for (i, item) in child.as_array().into_iter().flatten().enumerate() {
            select(item, rest, format!("{at}[{i}]"), out);
        }
    } else {
        select(child, rest, at, out);
    }
}

fn check_rules(v: &Value, base: &str, rules: &[Unsupported], warnings: &mut Vec<String>) {
    for rule in rules {
        let segments: Vec<&str> = rule.path.split('.').collect();
        let mut found = Vec::new();
        select(v, &segments, base.to_string(), &mut found);
        for (path, value) in found {
            match &rule.check {
                Check::Present => {
                    if is_meaningful(value) {
                        warnings.push(format!("{path}: {}", rule.reason));
                    }
                }
                Check::KeysExcept(allowed) => {
                    for (key, child) in value.as_object().into_iter().flatten() {
                        if !allowed.contains(&key.as_str()) && is_meaningful(child) {
                            warnings.push(format!("{path}.{key}: {}", rule.reason));
                        }
                    }
                }
                Check::Unless(accepts) => {
                    if !value.is_null() && !accepts(value) {
                        warnings.push(format!("{path}: {}", rule.reason));
                    }
                }
            }
        }
    }
}

/// Warnings for the fields of `pod` (as the schema read it) the agent does not implement.
fn unsupported_fields(pod: &Value) -> Vec<String> {
    let mut warnings = Vec::new();
    check_rules(pod, "", POD_UNSUPPORTED, &mut warnings);
    for list in ["initContainers", "containers"] {
        let containers = pod
            .get("spec")
            .and_then(|s| s.get(list))
            .and_then(Value::as_array);
        for (i, c) in containers.into_iter().flatten().enumerate() {
            check_rules(
                c,
                &format!("spec.{list}[{i}]"),
                CONTAINER_UNSUPPORTED,
                &mut warnings,
            );
        }
    }
    warnings
}

/// Keys present (non-null) in `input` that vanished in `read` (the pod serialized
/// back): fields the Pod schema does not know, such as a misspelled `imagePullPolcy`.
fn unknown_fields(input: &Value, read: &Value, at: &str, out: &mut Vec<String>) {
    match (input, read) {
        (Value::Object(inp), Value::Object(got)) => {
            for (key, value) in inp {
                if value.is_null() {
                    continue;
                }
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match got.get(key) {
                    None => out.push(format!("{path}: unknown field")),
                    Some(child) => unknown_fields(value, child, &path, out),
                }
            }
        }
        (Value::Array(inp), Value::Array(got)) => {
            for (i, (a, b)) in inp.iter().zip(got).enumerate() {
                unknown_fields(a, b, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// The longest reason kept whole: a reason echoes the offending value, which
/// a hostile manifest can make megabytes long (it goes to `/status`, the log
/// and events).
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason` cut to [`MAX_REASON_BYTES`] (at a character boundary), saying
/// how much was left out.
pub fn shorten_reason(reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… ({} more bytes not shown)",
        &reason[..cut],
        reason.len() - cut
    )
}

/// The reason a file of `n` bytes is rejected.
pub fn too_large_reason(n: u64) -> String {
    format!("file is {n} bytes, larger than the 10 MiB limit")
}

fn yaml_options() -> serde_saphyr::Options {
    // A static pod manifest is small and shallow; these budgets keep a hostile
    // file (alias bombs, deep nesting, huge scalars) from eating memory or time.
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_MANIFEST_BYTES as usize),
            max_events: 1_000_000,
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_depth: 64,
            max_nodes: MAX_VALUES,
            max_total_scalar_bytes: MAX_MANIFEST_BYTES as usize,
            max_total_comment_bytes: MAX_MANIFEST_BYTES as usize,
            max_merge_keys: 1_000,
            max_recorded_anchor_events: 100_000,
            max_recorded_anchor_bytes: MAX_MANIFEST_BYTES as usize,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 200_000,
            max_replay_stack_depth: 16,
        },
        // YAML 1.1 like the Kubernetes decoder (go-yaml): 0644 is octal.
        legacy_octal_numbers: true,
        emit_comments: false,
        with_snippet: false,
    }
}

fn decode_yaml(bytes: &[u8]) -> Result<Value, String> {
    match serde_saphyr::from_slice_with_options::<Value>(bytes, yaml_options()) {
        Ok(v) => Ok(v),
        Err(serde_saphyr::Error::MultipleDocuments { .. }) => Err(
            "the file holds more than one YAML document; a static pod manifest holds exactly one Pod"
                .to_string(),
        ),
        Err(e) => {
            let msg = e.to_string();
            // Drop the developer hint serde-saphyr adds to duplicate keys.
            let msg = msg
                .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
                .trim()
                .to_string();
            match e.location() {
                Some(loc) if !msg.contains("line") => Err(format!(
                    "invalid YAML at line {}, column {}: {msg}",
                    loc.line(),
                    loc.column()
                )),
                _ => Err(format!("invalid YAML: {msg}")),
            }
        }
    }
}

/// The most values a manifest may hold (YAML nodes, JSON values): far above any
/// real pod, far below what would make the parsed tree eat memory.
const MAX_VALUES: usize = 250_000;

/// A count of the values in a JSON text (separators and openers outside strings),
/// so a hostile file of millions of tiny values is refused before it is parsed.
fn json_value_count(bytes: &[u8]) -> usize {
    let (mut count, mut in_string, mut escaped) = (1usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' | b',' => count += 1,
                _ => {}
            }
        }
    }
    count
}

fn decode_json(bytes: &[u8]) -> Result<Value, String> {
    if json_value_count(bytes) > MAX_VALUES {
        return Err(format!(
            "invalid JSON: more than {MAX_VALUES} values; a pod manifest is far smaller"
        ));
    }
    serde_json::from_slice::<Value>(bytes).map_err(|e| format!("invalid JSON: {e}"))
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Require `obj[key] == want`, naming the field when it is not.
fn check_type_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    want: &str,
) -> Option<FieldError> {
    let (error_type, reason) = match obj.get(key) {
        None | Some(Value::Null) => (
            ErrorType::Required,
            format!("Required value: must be {want:?}"),
        ),
        Some(Value::String(s)) if s == want => return None,
        Some(Value::String(s)) => (ErrorType::Invalid, format!("must be {want:?}, got {s:?}")),
        Some(other) => (ErrorType::Invalid, format!("must be {want:?}, got {other}")),
    };
    Some(FieldError {
        field: key.to_string(),
        error_type,
        reason,
    })
}

/// A schema error from the typed decoding, with the field it happened at.
fn schema_error(e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let msg = e.inner().to_string();
    // serde says "missing field `name`" at the enclosing object.
    if let Some(missing) = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let field = if path.is_empty() {
            missing.to_string()
        } else {
            format!("{path}.{missing}")
        };
        return FieldError {
            field,
            error_type: ErrorType::Required,
            reason: "Required value".to_string(),
        };
    }
    FieldError {
        field: if path.is_empty() {
            "(root)".to_string()
        } else {
            path
        },
        error_type: ErrorType::Invalid,
        reason: msg,
    }
}

/// The canonical JSON text of a value: keys sorted, no whitespace.
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The UID of a static pod without one: md5 over the node, the file and the pod
/// as read (canonical JSON, before defaults and renaming), hex-encoded like the
/// kubelet's (32 characters, no dashes).
pub fn static_pod_uid(path: &Path, node_name: &str, pod_as_read: &Value) -> String {
    let mut text = String::new();
    canonical_json(pod_as_read, &mut text);
    let mut hasher = Md5::new();
    hasher.update(b"host:");
    hasher.update(node_name.as_bytes());
    hasher.update(b"file:");
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update(text.as_bytes());
    hex::encode(hasher.finalize())
}

/// The name a static pod runs under on this node: `<name>-<node name, lowercased>`.
pub fn static_pod_name(name: &str, node_name: &str) -> String {
    format!("{name}-{}", node_name.to_lowercase())
}

/// Static-pod semantics (`applyDefaults` in common.go): UID, name, namespace,
/// node, source and hash annotations, and the NoExecute toleration.
fn apply_static(pod: &mut Pod, uid: String, node_name: &str) {
    let meta = &mut pod.metadata;
    if let Some(name) = &meta.name {
        meta.name = Some(static_pod_name(name, node_name));
    }
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".to_string());
    }
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(
        CONFIG_SOURCE_ANNOTATION.to_string(),
        FILE_SOURCE.to_string(),
    );
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), uid.clone());
    meta.uid = Some(uid);

    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.to_string());
    // Static pods tolerate every NoExecute taint, so node problems don't evict them.
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let present = tolerations.iter().any(|t| {
        t.key.as_deref().unwrap_or("").is_empty()
            && t.operator.as_deref() == Some("Exists")
            && t.effect.as_deref() == Some("NoExecute")
            && t.value.as_deref().unwrap_or("").is_empty()
            && t.toleration_seconds.is_none()
    });
    if !present {
        tolerations.push(Toleration {
            operator: Some("Exists".to_string()),
            effect: Some("NoExecute".to_string()),
            ..Default::default()
        });
    }
}

/// Parse one manifest file into the static pod the agent runs.
///
/// `path` decides the format (`.json` is JSON, anything else YAML) and goes into
/// the derived UID with `node_name`. The result is defaulted, renamed
/// (`<name>-<node>`), bound to the node, annotated (`config.source`,
/// `config.hash`; not `config.seen`, which the caller keeps stable) and validated.
/// Fields the schema does not know and fields the agent does not implement come
/// back as warnings; anything that stops the pod from running is an error naming
/// the file, the field and the reason.
pub fn parse_manifest(
    path: &Path,
    bytes: &[u8],
    node_name: &str,
) -> Result<SourcedPod, ManifestError> {
    // The field path names map keys as written (a resource name, a label), so a
    // hostile key makes it as long as a reason: both are cut the same way.
    let error = |field: Option<String>, reason: String| ManifestError {
        file: path.to_path_buf(),
        field: field.map(shorten_reason),
        reason: shorten_reason(reason),
    };
    let field_error = |e: FieldError| error(Some(e.field), e.reason);

    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_MANIFEST_BYTES {
        return Err(error(None, too_large_reason(len)));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(error(None, "file is empty".to_string()));
    }
    let input = if is_json(path) {
        decode_json(bytes)
    } else {
        decode_yaml(bytes)
    }
    .map_err(|reason| error(None, reason))?;

    let obj = match &input {
        Value::Object(obj) => obj,
        Value::Null => {
            return Err(error(
                None,
                "the file holds no document (only comments or an empty document)".to_string(),
            ));
        }
        _ => {
            return Err(error(
                None,
                "the document is not a mapping; a static pod manifest holds one Pod object"
                    .to_string(),
            ));
        }
    };
    if let Some(e) = check_type_field(obj, "kind", "Pod") {
        return Err(field_error(e));
    }
    if let Some(e) = check_type_field(obj, "apiVersion", "v1") {
        return Err(field_error(e));
    }

    let mut pod: Pod =
        serde_path_to_error::deserialize(&input).map_err(|e| field_error(schema_error(e)))?;
    let read = serde_json::to_value(&pod)
        .map_err(|e| error(None, format!("cannot re-encode the pod: {e}")))?;

    let mut warnings = Vec::new();
    unknown_fields(&input, &read, "", &mut warnings);
    warnings.extend(unsupported_fields(&read));

    if pod.metadata.name.as_deref().unwrap_or("").is_empty() {
        return Err(error(
            Some("metadata.name".to_string()),
            "Required value: name or generateName is required".to_string(),
        ));
    }
    let uid = match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => static_pod_uid(path, node_name, &read),
    };

    // A manifest's status means nothing.
    pod.status = None;
    defaults::apply(&mut pod);
    apply_static(&mut pod, uid, node_name);

    let mut errors = validation::validate_pod(&pod).into_iter();
    if let Some(first) = errors.next() {
        let rest: Vec<String> = errors.map(|e| e.to_string()).collect();
        let mut reason = first.reason;
        if !rest.is_empty() {
            let shown = rest.len().min(MORE_ERRORS_SHOWN);
            reason.push_str("; also ");
            reason.push_str(&rest[..shown].join("; "));
            if rest.len() > shown {
                reason.push_str(&format!("; and {} more", rest.len() - shown));
            }
        }
        return Err(error(Some(first.field), reason));
    }

    Ok(SourcedPod {
        pod,
        file: path.to_path_buf(),
        warnings,
        rejected: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "Node-1";

    const BASIC: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - containerPort: 80
";

    fn parse(text: &str) -> Result<SourcedPod, ManifestError> {
        parse_manifest(
            Path::new("/etc/berth/manifests/web.yaml"),
            text.as_bytes(),
            NODE,
        )
    }

    fn ok(text: &str) -> SourcedPod {
        match parse(text) {
            Ok(sp) => sp,
            Err(e) => panic!("expected a pod, got {e}"),
        }
    }

    fn err(text: &str) -> ManifestError {
        match parse(text) {
            Ok(sp) => panic!("expected an error, got {:?}", sp.pod.metadata.name),
            Err(e) => e,
        }
    }

    fn with_container(extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n{extra}"
        )
    }

    fn image_policy(image: &str) -> String {
        let sp = ok(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - {{name: c, image: \"{image}\"}}\n"
        ));
        let spec = sp.pod.spec.unwrap_or_default();
        spec.containers[0]
            .image_pull_policy
            .clone()
            .unwrap_or_default()
    }

    #[test]
    fn parses_yaml() {
        let sp = ok(BASIC);
        let spec = sp.pod.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[0].name, "nginx");
        assert_eq!(spec.containers[0].image.as_deref(), Some("nginx:1.27"));
        assert!(sp.warnings.is_empty(), "{:?}", sp.warnings);
        assert_eq!(sp.file, Path::new("/etc/berth/manifests/web.yaml"));
    }

    #[test]
    fn parses_json() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},
            "spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}"#;
        let sp = parse_manifest(Path::new("/m/web.json"), json.as_bytes(), NODE).expect("pod");
        assert_eq!(sp.pod.metadata.name.as_deref(), Some("web-node-1"));
        // The same pod in YAML and JSON differs only by path.
        let yaml = parse_manifest(Path::new("/m/web.json"), BASIC.as_bytes(), NODE);
        assert!(yaml.is_err(), "YAML is not JSON");
    }

    #[test]
    fn applies_defaults() {
        let sp = ok(&with_container(
            "    resources:\n      limits: {cpu: 500m, memory: 64Mi}\n      requests: {cpu: 100m}\n    env:\n    - name: NODE\n      valueFrom:\n        fieldRef: {fieldPath: spec.nodeName}\n  volumes:\n  - name: scratch\n  - name: data\n    hostPath: {path: /var/data}\n",
        ));
        let meta = &sp.pod.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        let spec = sp.pod.spec.as_ref().expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
        assert_eq!(spec.security_context, Some(Default::default()));
        assert_eq!(spec.enable_service_links, Some(true));
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
        let res = c.resources.as_ref().expect("resources");
        let requests = res.requests.as_ref().expect("requests");
        assert_eq!(requests["cpu"].0, "100m", "explicit request kept");
        assert_eq!(requests["memory"].0, "64Mi", "request defaulted to limit");
        let env = &c.env.as_ref().expect("env")[0];
        let fr = env
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .expect("fieldRef");
        assert_eq!(fr.api_version.as_deref(), Some("v1"));
        let volumes = spec.volumes.as_ref().expect("volumes");
        let ed = volumes[0]
            .empty_dir
            .as_ref()
            .expect("a volume without source is an emptyDir");
        assert_eq!(ed.medium.as_deref(), Some(""));
        assert_eq!(
            volumes[1]
                .host_path
                .as_ref()
                .and_then(|h| h.type_.as_deref()),
            Some("")
        );
        assert!(sp.pod.status.is_none());
        assert!(sp.warnings.is_empty(), "{:?}", sp.warnings);
    }

    #[test]
    fn port_protocol_defaults_to_tcp() {
        let sp = ok(BASIC);
        let spec = sp.pod.spec.expect("spec");
        let port = &spec.containers[0].ports.as_ref().expect("ports")[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn pull_policy_by_tag() {
        assert_eq!(image_policy("busybox"), "Always");
        assert_eq!(image_policy("busybox:latest"), "Always");
        assert_eq!(image_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(
            image_policy(
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            ),
            "IfNotPresent"
        );
        assert_eq!(image_policy("localhost:5000/busybox"), "Always");
        // An explicit policy is kept.
        let sp = ok(&with_container("    imagePullPolicy: Never\n"));
        let spec = sp.pod.spec.expect("spec");
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Never")
        );
    }

    #[test]
    fn static_pod_naming_node_annotations_tolerations() {
        let sp = ok(BASIC);
        let meta = &sp.pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-node-1"));
        let uid = meta.uid.clone().expect("uid");
        assert_eq!(uid.len(), 32);
        assert!(uid.bytes().all(|b| b.is_ascii_hexdigit()));
        let ann = meta.annotations.as_ref().expect("annotations");
        assert_eq!(ann[CONFIG_SOURCE_ANNOTATION], "file");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], uid);
        assert!(
            !ann.contains_key(CONFIG_SEEN_ANNOTATION),
            "set by the file source"
        );
        let spec = sp.pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "node name as given");
        let tolerations = spec.tolerations.as_ref().expect("tolerations");
        assert_eq!(
            tolerations,
            &vec![Toleration {
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                ..Default::default()
            }]
        );
        // Not added twice.
        let sp = ok(&format!(
            "{BASIC}  tolerations:\n  - {{operator: Exists, effect: NoExecute}}\n"
        ));
        assert_eq!(
            sp.pod.spec.and_then(|s| s.tolerations).map(|t| t.len()),
            Some(1)
        );
    }

    #[test]
    fn uid_is_deterministic() {
        let uid = |path: &str, text: &str, node: &str| {
            parse_manifest(Path::new(path), text.as_bytes(), node)
                .expect("pod")
                .pod
                .metadata
                .uid
                .expect("uid")
        };
        let base = uid("/m/a.yaml", BASIC, "n1");
        assert_eq!(base, uid("/m/a.yaml", BASIC, "n1"));
        // Formatting and comments do not change the pod as read.
        let reformatted = format!("# a comment\n{}", BASIC.replace("name: web", "name: 'web'"));
        assert_eq!(base, uid("/m/a.yaml", &reformatted, "n1"));
        assert_ne!(base, uid("/m/b.yaml", BASIC, "n1"), "path");
        assert_ne!(base, uid("/m/a.yaml", BASIC, "n2"), "node");
        let changed = BASIC.replace("nginx:1.27", "nginx:1.28");
        assert_ne!(base, uid("/m/a.yaml", &changed, "n1"), "content");
        // An explicit UID is kept.
        let explicit = BASIC.replace("  name: web\n", "  name: web\n  uid: 1234-abcd\n");
        assert_eq!(uid("/m/a.yaml", &explicit, "n1"), "1234-abcd");
        let sp = parse_manifest(Path::new("/m/a.yaml"), explicit.as_bytes(), "n1").expect("pod");
        let ann = sp.pod.metadata.annotations.expect("annotations");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], "1234-abcd");
    }

    #[test]
    fn rejects_invalid_yaml_with_line() {
        let e = err("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\nspec: {}\n");
        assert!(e.reason.contains("line"), "{e}");
        assert!(e.reason.starts_with("invalid YAML"), "{e}");
        let e = err("apiVersion: v1\nkind: Pod\n  bad indent: 1\n");
        assert!(e.reason.contains("line 3"), "{e}");
        let e = err("apiVersion: v1\nkind: Pod\nkind: Pod\n");
        assert_eq!(
            e.reason,
            "invalid YAML: duplicate mapping key: kind at line 3, column 1"
        );
    }

    #[test]
    fn rejects_invalid_json_with_line() {
        let e = parse_manifest(Path::new("/m/p.json"), b"{\n\"kind\": \"Pod\",\n}", NODE)
            .expect_err("invalid");
        assert!(e.reason.contains("line 3"), "{e}");
    }

    #[test]
    fn rejects_other_kinds() {
        let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
        assert_eq!(e.field.as_deref(), Some("kind"));
        assert_eq!(e.reason, r#"must be "Pod", got "Deployment""#);
        let e = err("apiVersion: v2\nkind: Pod\nmetadata: {name: x}\n");
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
        assert_eq!(e.reason, r#"must be "v1", got "v2""#);
        let e = err("kind: Pod\nmetadata: {name: x}\n");
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
        assert!(e.reason.starts_with("Required value"), "{e}");
        let e = err("- a\n- b\n");
        assert!(e.reason.contains("not a mapping"), "{e}");
    }

    #[test]
    fn rejects_missing_image() {
        let e = err(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n",
        );
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].image"));
        assert_eq!(e.reason, "Required value");
        let e = err(&with_container(
            "  initContainers:\n  - name: init\n    image: ' busybox'\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.initContainers[0].image"));
        assert!(e.reason.contains("leading or trailing whitespace"), "{e}");
    }

    #[test]
    fn rejects_invalid_name() {
        let e = err(&BASIC.replace("name: web", "name: Bad_Name"));
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        assert!(
            e.reason
                .starts_with(r#"Invalid value: "Bad_Name-node-1": a lowercase RFC 1123 subdomain"#),
            "{e}"
        );
        let e = err(&BASIC.replace("name: nginx", "name: Foo_bar"));
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].name"));
        assert!(
            e.reason.starts_with(
                r#"Invalid value: "Foo_bar": a lowercase RFC 1123 label must consist of"#
            ),
            "{e}"
        );
        let e = err(
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\nspec: {containers: [{name: c, image: i}]}\n",
        );
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        assert!(e.reason.starts_with("Required value"), "{e}");
        let e = err(&BASIC.replace("  name: web\n", "  name: web\n  namespace: Kube_System\n"));
        assert_eq!(e.field.as_deref(), Some("metadata.namespace"));
    }

    #[test]
    fn rejects_duplicate_container_name() {
        let e = err(&with_container("  - name: c\n    image: busybox:1.36\n"));
        assert_eq!(e.field.as_deref(), Some("spec.containers[1].name"));
        assert_eq!(e.reason, r#"Duplicate value: "c""#);
        let e = err(&with_container(
            "  initContainers:\n  - name: c\n    image: busybox\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].name"), "{e}");
    }

    #[test]
    fn rejects_bad_ports_and_policies() {
        let e = err(&with_container("    ports:\n    - containerPort: 70000\n"));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].ports[0].containerPort")
        );
        assert_eq!(
            e.reason,
            "Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        let e = err(&with_container(
            "    ports:\n    - {containerPort: 80, protocol: ICMP}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].ports[0].protocol")
        );
        assert!(e.reason.starts_with(r#"Unsupported value: "ICMP""#), "{e}");
        let e = err(&with_container(
            "    ports:\n    - {containerPort: 80, name: http}\n    - {containerPort: 81, name: http}\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].ports[1].name"));
        let e = err(&with_container(
            "    ports:\n    - {containerPort: 80, name: HTTP}\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].ports[0].name"));
        let e = err(&with_container("  restartPolicy: Sometimes\n"));
        assert_eq!(e.field.as_deref(), Some("spec.restartPolicy"));
        let e = err(&with_container("  dnsPolicy: Weird\n"));
        assert_eq!(e.field.as_deref(), Some("spec.dnsPolicy"));
        let e = err(&with_container("  terminationGracePeriodSeconds: -1\n"));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.terminationGracePeriodSeconds")
        );
        let e = err(&with_container("    ports:\n    - containerPort: \"80\"\n"));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].ports[0].containerPort")
        );
        assert!(e.reason.contains("invalid type"), "{e}");
        let e = err(&with_container("    ports:\n    - name: x\n"));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].ports[0].containerPort")
        );
        assert_eq!(e.reason, "Required value");
    }

    #[test]
    fn rejects_bad_env_mounts_volumes() {
        let e = err(&with_container("    env:\n    - {name: 'A=B', value: x}\n"));
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].env[0].name"));
        let e = err(&with_container(
            "    env:\n    - name: X\n      valueFrom:\n        fieldRef: {fieldPath: spec.bogus}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].env[0].valueFrom.fieldRef.fieldPath")
        );
        let e = err(&with_container(
            "    volumeMounts:\n    - {name: nope, mountPath: /x}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].volumeMounts[0].name")
        );
        assert_eq!(e.reason, r#"Not found: "nope""#);
        let e = err(&with_container(
            "    volumeMounts:\n    - {name: v, mountPath: /x}\n    - {name: v, mountPath: /x}\n  volumes:\n  - {name: v, emptyDir: {}}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].volumeMounts[1].mountPath")
        );
        let e = err(&with_container(
            "    volumeMounts:\n    - {name: v, mountPath: relative}\n  volumes:\n  - {name: v, emptyDir: {}}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].volumeMounts[0].mountPath")
        );
        let e = err(&with_container(
            "  volumes:\n  - {name: v, emptyDir: {}}\n  - {name: v, emptyDir: {}}\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.volumes[1].name"));
        assert_eq!(e.reason, r#"Duplicate value: "v""#);
        let e = err(&with_container(
            "  volumes:\n  - {name: v, hostPath: {path: etc}}\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.volumes[0].hostPath.path"));
        let e = err(&with_container(
            "  volumes:\n  - {name: v, hostPath: {path: /etc}, emptyDir: {}}\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.volumes[0]"));
    }

    #[test]
    fn rejects_bad_resources() {
        let e = err(&with_container(
            "    resources:\n      limits: {cpu: 100m}\n      requests: {cpu: 200m}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].resources.requests[cpu]")
        );
        assert_eq!(
            e.reason,
            r#"Invalid value: "200m": must be less than or equal to cpu limit of 100m"#
        );
        let e = err(&with_container(
            "    resources:\n      limits: {memory: lots}\n",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.containers[0].resources.limits[memory]")
        );
        assert!(e.reason.contains("quantities must match"), "{e}");
        // Numbers are quantities too.
        let sp = ok(&with_container(
            "    resources:\n      limits: {cpu: 1, memory: 1000}\n",
        ));
        let spec = sp.pod.spec.expect("spec");
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(berth_api::quantity::cpu_millis(&limits["cpu"]), Ok(1000));
        assert_eq!(berth_api::quantity::int_value(&limits["memory"]), Ok(1000));
    }

    #[test]
    fn combines_all_errors() {
        let e = err(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: A\n  - name: b\n    image: x\n    ports: [{containerPort: 0}]\n",
        );
        assert_eq!(e.field.as_deref(), Some("spec.containers[0].name"));
        assert!(
            e.reason
                .contains("spec.containers[0].image: Required value"),
            "{e}"
        );
        assert!(
            e.reason
                .contains("spec.containers[1].ports[0].containerPort: Required value"),
            "{e}"
        );
    }

    #[test]
    fn rejects_multi_document_yaml() {
        let e = err(&format!("{BASIC}---\n{BASIC}"));
        assert!(e.reason.contains("more than one YAML document"), "{e}");
        assert_eq!(e.file, Path::new("/etc/berth/manifests/web.yaml"));
    }

    #[test]
    fn accepts_document_markers() {
        ok(&format!("---\n{BASIC}"));
        ok(&format!("---\n{BASIC}...\n"));
    }

    #[test]
    fn rejects_empty_files() {
        assert_eq!(err("").reason, "file is empty");
        assert_eq!(err(" \n\n").reason, "file is empty");
        assert!(err("# only a comment\n").reason.contains("no document"));
        assert!(err("---\n").reason.contains("no document"));
    }

    #[test]
    fn rejects_large_input() {
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        let e = parse_manifest(Path::new("/m/big.yaml"), &big, NODE).expect_err("too large");
        assert_eq!(
            e.reason,
            "file is 10485761 bytes, larger than the 10 MiB limit"
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let long = format!("Invalid value: \"{}\"", "é".repeat(2000));
        let short = shorten_reason(long.clone());
        assert!(short.len() < MAX_REASON_BYTES + 64, "{}", short.len());
        assert!(short.ends_with("more bytes not shown)"), "{short}");
        assert_eq!(shorten_reason("fine".into()), "fine");
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}}}\nspec: {{containers: [{{name: c, image: i}}]}}\n",
            "x".repeat(100_000)
        );
        let e = parse_manifest(Path::new("/m/long.yaml"), yaml.as_bytes(), NODE).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        assert!(e.reason.len() < 1200, "{}", e.reason.len());
    }

    #[test]
    fn long_field_paths_are_cut_like_reasons() {
        // The field names a map key as written: a 20 KB resource name made a
        // 20 KB field (found by fuzzing: fuzz/regressions/manifest/long-field-path.json).
        let json = format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "p"}}, "spec": {{"containers":
                [{{"name": "c", "image": "i", "resources": {{"requests": {{"{}": "1"}}}}}}]}}}}"#,
            "r".repeat(20_000)
        );
        let e = parse_manifest(Path::new("/m/key.json"), json.as_bytes(), NODE).unwrap_err();
        let field = e.field.expect("a field");
        assert!(field.len() < MAX_REASON_BYTES + 64, "{}", field.len());
        assert!(
            field.starts_with("spec.containers[0].resources.requests"),
            "{field}"
        );
    }

    #[test]
    fn survives_garbage() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![0xff, 0xfe, 0x00, 0x12, 0x80],
            b"\x00\x00\x00".to_vec(),
            "[".repeat(100_000).into_bytes(),
            "- ".repeat(10_000).into_bytes(),
            (0..200)
                .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
                .collect::<String>()
                .into_bytes(),
            b"a: &a [*a]\n".to_vec(),
            b"a: &a [x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n".to_vec(),
            b"apiVersion: v1\nkind: Pod\nmetadata: 7\n".to_vec(),
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 3}\n".to_vec(),
            b"apiVersion: 1\nkind: [Pod]\n".to_vec(),
            b"!!binary aGVsbG8=".to_vec(),
            b"? [a, b]\n: c\n".to_vec(),
            b"1e999".to_vec(),
        ];
        for input in inputs {
            for path in ["/m/x.yaml", "/m/x.json"] {
                let r = parse_manifest(Path::new(path), &input, NODE);
                assert!(r.is_err(), "{path}: {:?}", String::from_utf8_lossy(&input));
            }
        }
        let wide_json = format!("[{}0]", "0,".repeat(MAX_VALUES));
        let e = parse_manifest(Path::new("/m/x.json"), wide_json.as_bytes(), NODE)
            .expect_err("too many values");
        assert!(e.reason.contains("more than 250000 values"), "{e}");
        assert_eq!(json_value_count(br#"{"a": "x,[{\\\"", "b": [1, 2]}"#), 5);
        let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_manifest(Path::new("/m/x.json"), deep_json.as_bytes(), NODE).is_err());
    }

    #[test]
    fn warns_about_unknown_fields() {
        let sp = ok(&with_container(
            "    imagePullPolcy: Always\n    resources: {limits: {cpu: 1}, extra: null}\n  bogus: {a: 1}\nstatus2: x\n",
        ));
        let mut got = sp.warnings.clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                "spec.bogus: unknown field",
                "spec.containers[0].imagePullPolcy: unknown field",
                "status2: unknown field",
            ]
        );
        // Null-valued and empty keys are not reported.
        let sp = ok(&BASIC.replace(
            "  name: web\n",
            "  name: web\n  creationTimestamp: null\n  labels: {}\n",
        ));
        assert!(sp.warnings.is_empty(), "{:?}", sp.warnings);
    }

    #[test]
    fn warns_about_unsupported_fields() {
        let sp = ok("\
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  hostPID: true
  hostIPC: true
  hostNetwork: true
  shareProcessNamespace: true
  nodeSelector: {a: b}
  priority: 5
  affinity: {}
  topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}
  hostAliases: [{ip: 10.0.0.1, hostnames: [a]}]
  imagePullSecrets: [{name: creds}]
  securityContext: {runAsUser: 1000, sysctls: [{name: net.core.somaxconn, value: '1024'}], seLinuxOptions: {level: 's0'}, fsGroup: 2000, fsGroupChangePolicy: OnRootMismatch, seccompProfile: {type: RuntimeDefault}, appArmorProfile: {type: Unconfined}}
  volumes:
  - {name: cm, configMap: {name: cfg}}
  - {name: tmp, emptyDir: {}}
  initContainers:
  - name: init
    image: busybox:1.36
    restartPolicy: Always
    lifecycle: {preStop: {exec: {command: [x]}}}
  containers:
  - name: app
    image: busybox:1.36
    stdin: true
    tty: true
    livenessProbe: {exec: {command: [check]}}
    envFrom: [{configMapRef: {name: cfg}}]
    env:
    - {name: A, value: x}
    - name: B
      valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}
    - name: C
      valueFrom: {secretKeyRef: {name: s, key: k}}
    - name: D
      valueFrom: {fieldRef: {fieldPath: status.hostIPs}}
    securityContext:
      privileged: true
      capabilities: {add: [NET_ADMIN]}
      seccompProfile: {type: RuntimeDefault}
      appArmorProfile: {type: RuntimeDefault}
      procMount: Default
      seLinuxOptions: {level: 's0'}
    volumeMounts:
    - {name: tmp, mountPath: /tmp}
");
        let expected = [
            "spec.volumes[0].configMap: static pods support only emptyDir and hostPath volumes (configMap and secret volumes are refused as upstream)",
            "spec.imagePullSecrets: registry credentials are not supported yet; images are pulled anonymously",
            "spec.securityContext.seLinuxOptions: not supported yet, ignored",
            "spec.containers[0].envFrom: static pods may not reference ConfigMaps or Secrets (as upstream); the pod's containers will not start",
            "spec.containers[0].env[2].valueFrom.secretKeyRef: static pods may not reference ConfigMaps or Secrets (as upstream); the pod's containers will not start",
            "spec.containers[0].securityContext.seLinuxOptions: not supported yet, ignored",
        ];
        for w in expected {
            assert!(
                sp.warnings.iter().any(|got| got == w),
                "missing {w:?} in {:#?}",
                sp.warnings
            );
        }
        assert_eq!(sp.warnings.len(), expected.len(), "{:#?}", sp.warnings);
    }
}
