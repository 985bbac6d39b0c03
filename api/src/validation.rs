//! Pod validation after upstream's `ValidatePod` and `ValidatePodUpdate`
//! (`pkg/apis/core/validation`): the one port, used by the API server on every
//! write, by the agent on static pods and again on every pod the API server
//! hands it, before it runs anything.
//!
//! Every error names the field as Kubernetes does (`spec.containers[0].image`) and
//! words the reason as `field.Error` does (`Required value`, `Invalid value: "x": …`,
//! `Duplicate value: "web"`, `Unsupported value: "x": supported values: …`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::{
    AppArmorProfile, ConfigMap, Container, ContainerPort, EnvVar, ExecAction, GRPCAction,
    HTTPGetAction, Pod, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecurityContext, SleepAction, TCPSocketAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names::{
    dns1123_label_errors, dns1123_subdomain_errors, env_var_name_errors, http_header_name_errors,
    label_value_errors, port_name_errors, qualified_name_errors,
};
use crate::quantity;

// ---------------------------------------------------------------------------
// Field errors
// ---------------------------------------------------------------------------

/// The kind of a validation failure (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// A required field is missing.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value must be unique and is not.
    Duplicate,
    /// The value refers to something that does not exist.
    NotFound,
    /// The value is not allowed here.
    Forbidden,
    /// The value is not one of the supported values.
    NotSupported,
    /// The value is too long.
    TooLong,
}

impl ErrorType {
    /// The `reason` of a `StatusCause` (`metav1.CauseType`).
    pub fn cause_type(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::NotFound => "FieldValueNotFound",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::TooLong => "FieldValueTooLong",
        }
    }
}

/// One validation failure: the field path and the reason, as `field.Error` words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as Kubernetes names it (`spec.containers[0].image`).
    pub field: String,
    /// What kind of failure.
    pub error_type: ErrorType,
    /// Why it is invalid (`Required value`, `Invalid value: "x": …`).
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A value as `field.Error` prints it: strings quoted, numbers and booleans bare.
enum Shown<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Str(s) => write!(f, "{s:?}"),
            Shown::Int(i) => write!(f, "{i}"),
            Shown::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'a> From<&'a str> for Shown<'a> {
    fn from(s: &'a str) -> Self {
        Shown::Str(s)
    }
}
impl From<i64> for Shown<'_> {
    fn from(i: i64) -> Self {
        Shown::Int(i)
    }
}
impl From<i32> for Shown<'_> {
    fn from(i: i32) -> Self {
        Shown::Int(i64::from(i))
    }
}
impl From<bool> for Shown<'_> {
    fn from(b: bool) -> Self {
        Shown::Bool(b)
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, error_type: ErrorType, reason: String) {
        self.0.push(FieldError {
            field: field.into(),
            error_type,
            reason,
        });
    }
    fn required(&mut self, field: impl Into<String>, detail: &str) {
        let reason = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.push(field, ErrorType::Required, reason);
    }
    fn invalid<'a>(&mut self, field: impl Into<String>, value: impl Into<Shown<'a>>, detail: &str) {
        self.push(
            field,
            ErrorType::Invalid,
            format!("Invalid value: {}: {detail}", value.into()),
        );
    }
    fn duplicate<'a>(&mut self, field: impl Into<String>, value: impl Into<Shown<'a>>) {
        self.push(
            field,
            ErrorType::Duplicate,
            format!("Duplicate value: {}", value.into()),
        );
    }
    fn not_found(&mut self, field: impl Into<String>, value: &str) {
        self.push(field, ErrorType::NotFound, format!("Not found: {value:?}"));
    }
    fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.push(field, ErrorType::Forbidden, format!("Forbidden: {detail}"));
    }
    fn not_supported(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.push(
            field,
            ErrorType::NotSupported,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        );
    }
    /// One `Invalid value` per message, as Kubernetes reports `Is…` results.
    fn invalid_each(&mut self, field: &str, value: &str, msgs: Vec<String>) {
        for msg in msgs {
            self.invalid(field, value, &msg);
        }
    }
}

fn valid_port_num(p: i32) -> bool {
    (1..=65535).contains(&p)
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const ID_RANGE: &str = "must be between 0 and 2147483647, inclusive";

/// Path checks of `validatePathNoBacksteps`: no `..` element.
fn has_backsteps(path: &str) -> bool {
    path.split('/').any(|part| part == "..")
}

// ---------------------------------------------------------------------------
// The pod
// ---------------------------------------------------------------------------

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];
const MOUNT_PROPAGATIONS: &[&str] = &["Bidirectional", "HostToContainer", "None"];
/// Downward-API field paths an env var may reference (`validEnvDownwardAPIFieldPathExpressions`).
pub const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// Validate a defaulted pod (`ValidatePodCreate`); every failure, in the order Kubernetes checks them.
pub fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let mut errs = Errors::default();
    object_meta(&pod.metadata, true, NameRule::Subdomain, &mut errs);
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    apparmor_annotations(&pod.metadata, spec, &mut errs);
    validate_spec(spec, &mut errs);
    apparmor_annotations_match_fields(&pod.metadata, spec, &mut errs);
    errs.0
}

/// Validate a defaulted pod's spec (`ValidatePodSpec`), for callers that
/// validate the metadata themselves.
pub fn validate_pod_spec(spec: &PodSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    validate_spec(spec, &mut errs);
    errs.0
}

/// Which names a kind's objects may have (`ValidateNameFunc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (namespaces).
    Label,
    /// Any path segment (`path.IsValidPathSegmentName`: not `.` or `..`, no
    /// `/` or `%`): RBAC roles and bindings, whose names hold colons
    /// (`system:node`).
    PathSegment,
}

/// `ValidateObjectMeta` for any kind: the name by `rule`, the namespace (required
/// for a namespaced kind, forbidden otherwise), label keys and values, annotation
/// keys and their total size.
pub fn validate_object_meta(
    meta: &ObjectMeta,
    namespaced: bool,
    rule: NameRule,
) -> Vec<FieldError> {
    let mut errs = Errors::default();
    object_meta(meta, namespaced, rule, &mut errs);
    errs.0
}

fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain_errors(name),
        NameRule::Label => dns1123_label_errors(name),
        NameRule::PathSegment => crate::names::path_segment_errors(name),
    }
}

fn object_meta(meta: &ObjectMeta, namespaced: bool, rule: NameRule, errs: &mut Errors) {
    if let Some(prefix) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        // A prefix may end in '-' (upstream's maskTrailingDash).
        let masked = match prefix.strip_suffix('-') {
            Some(rest) if !rest.is_empty() => format!("{rest}a"),
            _ => prefix.to_string(),
        };
        errs.invalid_each("metadata.generateName", prefix, name_errors(rule, &masked));
    }
    match meta.name.as_deref() {
        None | Some("") => errs.required("metadata.name", "name or generateName is required"),
        Some(name) => errs.invalid_each("metadata.name", name, name_errors(rule, name)),
    }
    match (namespaced, meta.namespace.as_deref()) {
        (true, Some(ns)) if !ns.is_empty() => {
            errs.invalid_each("metadata.namespace", ns, dns1123_label_errors(ns))
        }
        (true, _) => {}
        (false, Some(ns)) if !ns.is_empty() => {
            errs.forbidden("metadata.namespace", "not allowed on this type")
        }
        (false, _) => {}
    }
    labels("metadata.labels", meta.labels.as_ref(), errs);
    let mut total = 0usize;
    for (key, value) in meta.annotations.iter().flatten() {
        errs.invalid_each(
            "metadata.annotations",
            key,
            qualified_name_errors(&key.to_ascii_lowercase()),
        );
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > ANNOTATIONS_MAX {
        errs.push(
            "metadata.annotations",
            ErrorType::TooLong,
            format!("Too long: may not be more than {ANNOTATIONS_MAX} bytes"),
        );
    }
    owner_references(meta.owner_references.as_deref().unwrap_or_default(), errs);
    finalizers(meta.finalizers.as_deref().unwrap_or_default(), errs);
}

/// `ValidateLabels`: qualified-name keys and label values, every error
/// named by the map's field itself.
fn labels(field: &str, map: Option<&BTreeMap<String, String>>, errs: &mut Errors) {
    for (key, value) in map.into_iter().flatten() {
        errs.invalid_each(field, key, qualified_name_errors(key));
        errs.invalid_each(field, value, label_value_errors(value));
    }
}

/// `ValidateOwnerReferences`: every reference names its owner fully, Events
/// own nothing, and at most one reference is the controller.
fn owner_references(refs: &[OwnerReference], errs: &mut Errors) {
    const FIELD: &str = "metadata.ownerReferences";
    let mut controller: Option<String> = None;
    for r in refs {
        // `schema.FromAPIVersionAndKind`: the version is after the last '/'.
        let (group, version) = r
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &r.api_version));
        if version.is_empty() {
            errs.invalid(
                format!("{FIELD}.apiVersion"),
                r.api_version.as_str(),
                "version must not be empty",
            );
        }
        if r.kind.is_empty() {
            errs.invalid(format!("{FIELD}.kind"), "", "must not be empty");
        }
        if r.name.is_empty() {
            errs.invalid(format!("{FIELD}.name"), "", "must not be empty");
        }
        if r.uid.is_empty() {
            errs.invalid(format!("{FIELD}.uid"), "", "must not be empty");
        }
        if group.is_empty() && version == "v1" && r.kind == "Event" {
            errs.push(
                FIELD,
                ErrorType::Invalid,
                "Invalid value: \"Event\": /v1, Kind=Event is disallowed from being an owner"
                    .to_string(),
            );
        }
        if r.controller == Some(true) {
            let current = format!("{}/{}", r.kind, r.name);
            match &controller {
                Some(first) => errs.push(
                    FIELD,
                    ErrorType::Invalid,
                    format!(
                        "Invalid value: \"ownerReferences\": Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                ),
                None => controller = Some(current),
            }
        }
    }
}

/// The finalizers Kubernetes itself defines (`IsStandardFinalizerName`).
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// `ValidateFinalizers`: qualified names; a name without a domain must be a
/// standard finalizer; `orphan` and `foregroundDeletion` exclude each other.
fn finalizers(list: &[String], errs: &mut Errors) {
    const FIELD: &str = "metadata.finalizers";
    for f in list {
        errs.invalid_each(FIELD, f, qualified_name_errors(f));
        if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
            errs.invalid(
                FIELD,
                f.as_str(),
                "name is neither a standard finalizer name nor is it fully qualified",
            );
        }
    }
    let has = |name: &str| list.iter().any(|f| f == name);
    if has("orphan") && has("foregroundDeletion") {
        errs.push(
            FIELD,
            ErrorType::Invalid,
            format!(
                "Invalid value: []string{{{}}}: finalizer orphan and foregroundDeletion cannot be both set",
                list.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
            ),
        );
    }
}

/// The most bytes all of an object's annotations may hold together
/// (`TotalAnnotationSizeLimitB`).
pub const ANNOTATIONS_MAX: usize = 256 * 1024;

/// The spec fields a pod update may change (`ValidatePodUpdate`), as upstream lists them.
const POD_UPDATE_MESSAGE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`: the new pod is valid, and its spec differs from the old
/// one only in container images, `activeDeadlineSeconds` and added tolerations.
pub fn validate_pod_update(new: &Pod, old: &Pod) -> Vec<FieldError> {
    let mut errs = validate_pod(new);
    let default_spec = PodSpec::default();
    errs.extend(validate_pod_spec_update(
        new.spec.as_ref().unwrap_or(&default_spec),
        old.spec.as_ref().unwrap_or(&default_spec),
    ));
    errs
}

/// The immutability half of `ValidatePodUpdate`, on the specs alone.
pub fn validate_pod_spec_update(new: &PodSpec, old: &PodSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let strip = |spec: &PodSpec| {
        let mut spec = spec.clone();
        spec.active_deadline_seconds = None;
        spec.tolerations = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.image = None;
        }
        serde_json::to_value(spec).unwrap_or_default()
    };
    if strip(new) != strip(old) {
        errs.forbidden("spec", POD_UPDATE_MESSAGE);
    }
    let tolerations = |spec: &PodSpec| spec.tolerations.clone().unwrap_or_default();
    let new_tolerations = tolerations(new);
    if tolerations(old)
        .iter()
        .any(|t| !new_tolerations.contains(t))
    {
        errs.forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        );
    }
    errs.0
}

fn validate_spec(spec: &PodSpec, errs: &mut Errors) {
    let volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default(), errs);
    let host_network = spec.host_network.unwrap_or(false);
    // `hostUsers` defaults to true: the pod shares the node's user namespace.
    let host_users = spec.host_users.unwrap_or(true);
    let pod = PodContext {
        volumes: &volumes,
        host_network,
        host_users,
    };

    if spec.containers.is_empty() {
        errs.required("spec.containers", "");
    }
    // Container names are unique across init and app containers.
    let mut names: HashSet<&str> = HashSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let path = format!("spec.initContainers[{i}]");
        validate_container(c, &path, true, &pod, &mut names, errs);
        validate_probes_and_lifecycle(c, &path, true, spec.termination_grace_period_seconds, errs);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        validate_container(c, &path, false, &pod, &mut names, errs);
        validate_probes_and_lifecycle(c, &path, false, spec.termination_grace_period_seconds, errs);
    }
    validate_host_ports(&spec.containers, "spec.containers", errs);
    if let Some(init) = &spec.init_containers {
        validate_host_ports(init, "spec.initContainers", errs);
    }

    match spec.restart_policy.as_deref() {
        None | Some("") => errs.required("spec.restartPolicy", ""),
        Some(p) if !RESTART_POLICIES.contains(&p) => {
            errs.not_supported("spec.restartPolicy", p, RESTART_POLICIES)
        }
        Some(_) => {}
    }
    match spec.dns_policy.as_deref() {
        None | Some("") => errs.required("spec.dnsPolicy", ""),
        Some(p) if !DNS_POLICIES.contains(&p) => {
            errs.not_supported("spec.dnsPolicy", p, DNS_POLICIES)
        }
        Some("None") if spec.dns_config.is_none() => errs.required(
            "spec.dnsConfig",
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ),
        Some(_) => {}
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.invalid(
            "spec.terminationGracePeriodSeconds",
            g,
            "must be greater than or equal to 0",
        );
    }
    if let Some(d) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&d)
    {
        errs.invalid(
            "spec.activeDeadlineSeconds",
            d,
            "must be between 1 and 2147483647, inclusive",
        );
    }
    if let Some(h) = spec.hostname.as_deref() {
        errs.invalid_each("spec.hostname", h, dns1123_label_errors(h));
    }
    if let Some(s) = spec.subdomain.as_deref() {
        errs.invalid_each("spec.subdomain", s, dns1123_label_errors(s));
    }
    if let Some(sc) = &spec.security_context {
        check_id(errs, "spec.securityContext.runAsUser", sc.run_as_user);
        check_id(errs, "spec.securityContext.runAsGroup", sc.run_as_group);
        check_id(errs, "spec.securityContext.fsGroup", sc.fs_group);
        for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
            check_id(
                errs,
                &format!("spec.securityContext.supplementalGroups[{i}]"),
                Some(*g),
            );
        }
        if let Some(policy) = sc.fs_group_change_policy.as_deref()
            && !FS_GROUP_CHANGE_POLICIES.contains(&policy)
        {
            errs.not_supported(
                "spec.securityContext.fsGroupChangePolicy",
                policy,
                FS_GROUP_CHANGE_POLICIES,
            );
        }
        seccomp_profile(
            sc.seccomp_profile.as_ref(),
            "spec.securityContext.seccompProfile",
            errs,
        );
        apparmor_profile(
            sc.app_armor_profile.as_ref(),
            "spec.securityContext.appArmorProfile",
            errs,
        );
    }
    if !host_users {
        // `validateHostUsers`: a user namespace does not mix with the node's
        // other namespaces (the field names are upstream's, capitals included).
        for (shared, field) in [
            (spec.host_network, "spec.hostNetwork"),
            (spec.host_pid, "spec.HostPID"),
            (spec.host_ipc, "spec.HostIPC"),
        ] {
            if shared == Some(true) {
                errs.forbidden(field, "when `pod.Spec.HostUsers` is false");
            }
        }
    }
}

/// What every container's validation needs to know about its pod.
struct PodContext<'a> {
    /// The declared volume names.
    volumes: &'a BTreeSet<&'a str>,
    host_network: bool,
    /// `spec.hostUsers` (default true).
    host_users: bool,
}

fn check_id(errs: &mut Errors, field: &str, id: Option<i64>) {
    if let Some(id) = id
        && !(0..=i64::from(i32::MAX)).contains(&id)
    {
        errs.invalid(field, id, ID_RANGE);
    }
}

/// Volume names, one source each, hostPath paths. Returns the declared names.
fn validate_volumes<'a>(volumes: &'a [Volume], errs: &mut Errors) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        if v.name.is_empty() {
            errs.required(format!("{path}.name"), "");
        } else {
            let msgs = dns1123_label_errors(&v.name);
            if !msgs.is_empty() {
                errs.invalid_each(&format!("{path}.name"), &v.name, msgs);
            } else if !names.insert(v.name.as_str()) {
                errs.duplicate(format!("{path}.name"), v.name.as_str());
            }
        }
        let sources = volume_source_count(v);
        if sources == 0 {
            errs.required(path.clone(), "must specify a volume type");
        } else if sources > 1 {
            errs.forbidden(path.clone(), "may not specify more than 1 volume type");
        }
        if let Some(hp) = &v.host_path {
            let field = format!("{path}.hostPath.path");
            if hp.path.is_empty() {
                errs.required(field, "");
            } else if !hp.path.starts_with('/') {
                errs.invalid(field, hp.path.as_str(), "must be an absolute path");
            } else if has_backsteps(&hp.path) {
                errs.invalid(field, hp.path.as_str(), "must not contain '..'");
            }
            if let Some(t) = hp.type_.as_deref()
                && !HOST_PATH_TYPES.contains(&t)
            {
                errs.not_supported(format!("{path}.hostPath.type"), t, HOST_PATH_TYPES);
            }
        }
        if let Some(ed) = &v.empty_dir
            && let Some(limit) = &ed.size_limit
        {
            check_quantity(errs, &format!("{path}.emptyDir.sizeLimit"), limit);
        }
    }
    names
}

/// How many volume sources a volume sets (all its fields but `name`).
fn volume_source_count(v: &Volume) -> usize {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .filter(|(k, v)| k.as_str() != "name" && !v.is_null())
            .count(),
        _ => 0,
    }
}

fn check_quantity(errs: &mut Errors, field: &str, q: &Quantity) -> Option<quantity::Quantity> {
    match quantity::Quantity::try_from(q) {
        Ok(v) if v.signum() < 0 => {
            errs.invalid(field, q.0.as_str(), "must be greater than or equal to 0");
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            errs.invalid(field, q.0.as_str(), &e.to_string());
            None
        }
    }
}

fn validate_container<'a>(
    c: &'a Container,
    path: &str,
    init: bool,
    pod: &PodContext<'_>,
    names: &mut HashSet<&'a str>,
    errs: &mut Errors,
) {
    let name_field = format!("{path}.name");
    if c.name.is_empty() {
        errs.required(name_field, "");
    } else {
        let msgs = dns1123_label_errors(&c.name);
        if !msgs.is_empty() {
            errs.invalid_each(&name_field, &c.name, msgs);
        } else if !names.insert(c.name.as_str()) {
            errs.duplicate(name_field, c.name.as_str());
        }
    }
    match c.image.as_deref() {
        None | Some("") => errs.required(format!("{path}.image"), ""),
        Some(image) if image.trim() != image => errs.invalid(
            format!("{path}.image"),
            image,
            "must not have leading or trailing whitespace",
        ),
        Some(_) => {}
    }
    match c.image_pull_policy.as_deref() {
        None | Some("") => errs.required(format!("{path}.imagePullPolicy"), ""),
        Some(p) if !PULL_POLICIES.contains(&p) => {
            errs.not_supported(format!("{path}.imagePullPolicy"), p, PULL_POLICIES)
        }
        Some(_) => {}
    }
    match c.termination_message_policy.as_deref() {
        None | Some("") => errs.required(format!("{path}.terminationMessagePolicy"), ""),
        Some(p) if !TERMINATION_MESSAGE_POLICIES.contains(&p) => errs.not_supported(
            format!("{path}.terminationMessagePolicy"),
            p,
            TERMINATION_MESSAGE_POLICIES,
        ),
        Some(_) => {}
    }
    match (init, c.restart_policy.as_deref()) {
        (_, None) => {}
        (false, Some(_)) => errs.forbidden(
            format!("{path}.restartPolicy"),
            "may not be set for non-init containers",
        ),
        (true, Some("Always")) => {}
        (true, Some(p)) => errs.not_supported(format!("{path}.restartPolicy"), p, &["Always"]),
    }
    validate_ports(
        c.ports.as_deref().unwrap_or_default(),
        path,
        pod.host_network,
        errs,
    );
    validate_env(c.env.as_deref().unwrap_or_default(), path, errs);
    let privileged = c
        .security_context
        .as_ref()
        .and_then(|sc| sc.privileged)
        .unwrap_or(false);
    validate_volume_mounts(
        c.volume_mounts.as_deref().unwrap_or_default(),
        path,
        pod.volumes,
        privileged,
        errs,
    );
    if let Some(r) = &c.resources {
        validate_resources(r, &format!("{path}.resources"), errs);
    }
    if let Some(sc) = &c.security_context {
        validate_security_context(sc, &format!("{path}.securityContext"), pod.host_users, errs);
    }
}

// ---------------------------------------------------------------------------
// Probes and lifecycle hooks (`validateLivenessProbe`, `validateReadinessProbe`,
// `validateStartupProbe`, `validateLifecycle`, `validateHandler`)
// ---------------------------------------------------------------------------

const NOT_FOR_INIT: &str = "may not be set for init containers without restartPolicy=Always";
const NEGATIVE: &str = "must be greater than or equal to 0";
const HTTP_SCHEMES: &[&str] = &["HTTP", "HTTPS"];

/// A probe's or hook's handler: at most one action is set (a probe has no
/// `sleep`, a hook no `grpc`).
struct Handler<'a> {
    exec: Option<&'a ExecAction>,
    http_get: Option<&'a HTTPGetAction>,
    tcp_socket: Option<&'a TCPSocketAction>,
    grpc: Option<&'a GRPCAction>,
    sleep: Option<&'a SleepAction>,
}

/// Probes and hooks of a regular container, or of a restartable (sidecar)
/// init container; other init containers may have none of them.
fn validate_probes_and_lifecycle(
    c: &Container,
    path: &str,
    init: bool,
    grace: Option<i64>,
    errs: &mut Errors,
) {
    if init && c.restart_policy.as_deref() != Some("Always") {
        for (field, set) in [
            ("lifecycle", c.lifecycle.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
        ] {
            if set {
                errs.forbidden(format!("{path}.{field}"), NOT_FOR_INIT);
            }
        }
        return;
    }
    if let Some(lc) = &c.lifecycle {
        for (field, hook) in [("postStart", &lc.post_start), ("preStop", &lc.pre_stop)] {
            if let Some(h) = hook {
                let handler = Handler {
                    exec: h.exec.as_ref(),
                    http_get: h.http_get.as_ref(),
                    tcp_socket: h.tcp_socket.as_ref(),
                    grpc: None,
                    sleep: h.sleep.as_ref(),
                };
                validate_handler(&handler, grace, &format!("{path}.lifecycle.{field}"), errs);
            }
        }
    }
    if let Some(p) = &c.liveness_probe {
        let pp = format!("{path}.livenessProbe");
        validate_probe(p, grace, &pp, errs);
        success_threshold_one(p, &pp, errs);
    }
    if let Some(p) = &c.readiness_probe {
        let pp = format!("{path}.readinessProbe");
        validate_probe(p, grace, &pp, errs);
        if let Some(g) = p.termination_grace_period_seconds {
            errs.invalid(
                format!("{pp}.terminationGracePeriodSeconds"),
                g,
                "must not be set for readinessProbes",
            );
        }
    }
    if let Some(p) = &c.startup_probe {
        let pp = format!("{path}.startupProbe");
        validate_probe(p, grace, &pp, errs);
        success_threshold_one(p, &pp, errs);
    }
}

fn success_threshold_one(p: &Probe, path: &str, errs: &mut Errors) {
    let t = p.success_threshold.unwrap_or(0);
    if t != 1 {
        errs.invalid(format!("{path}.successThreshold"), t, "must be 1");
    }
}

/// `validateProbe`.
fn validate_probe(p: &Probe, grace: Option<i64>, path: &str, errs: &mut Errors) {
    let handler = Handler {
        exec: p.exec.as_ref(),
        http_get: p.http_get.as_ref(),
        tcp_socket: p.tcp_socket.as_ref(),
        grpc: p.grpc.as_ref(),
        sleep: None,
    };
    validate_handler(&handler, grace, path, errs);
    for (field, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        let v = v.unwrap_or(0);
        if v < 0 {
            errs.invalid(format!("{path}.{field}"), v, NEGATIVE);
        }
    }
    if let Some(g) = p.termination_grace_period_seconds
        && g <= 0
    {
        errs.invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than 0",
        );
    }
}

/// `validateHandler`: exactly one action, each valid.
fn validate_handler(h: &Handler<'_>, grace: Option<i64>, path: &str, errs: &mut Errors) {
    let mut count = 0;
    let mut one = |errs: &mut Errors, field: &str| -> bool {
        if count > 0 {
            errs.forbidden(
                format!("{path}.{field}"),
                "may not specify more than 1 handler type",
            );
            return false;
        }
        count += 1;
        true
    };
    if let Some(e) = h.exec
        && one(errs, "exec")
        && e.command.as_ref().is_none_or(Vec::is_empty)
    {
        errs.required(format!("{path}.exec.command"), "");
    }
    if let Some(g) = h.http_get
        && one(errs, "httpGet")
    {
        let gp = format!("{path}.httpGet");
        if g.path.as_deref().unwrap_or("").is_empty() {
            errs.required(format!("{gp}.path"), "");
        }
        port_num_or_name(&g.port, &format!("{gp}.port"), errs);
        let scheme = g.scheme.as_deref().unwrap_or("");
        if !HTTP_SCHEMES.contains(&scheme) {
            errs.not_supported(format!("{gp}.scheme"), scheme, HTTP_SCHEMES);
        }
        for header in g.http_headers.iter().flatten() {
            errs.invalid_each(
                &format!("{gp}.httpHeaders"),
                &header.name,
                http_header_name_errors(&header.name),
            );
        }
    }
    if let Some(t) = h.tcp_socket
        && one(errs, "tcpSocket")
    {
        port_num_or_name(&t.port, &format!("{path}.tcpSocket.port"), errs);
    }
    if let Some(g) = h.grpc
        && one(errs, "grpc")
        && !valid_port_num(g.port)
    {
        errs.invalid(format!("{path}.grpc.port"), g.port, PORT_RANGE);
    }
    if let Some(s) = h.sleep
        && one(errs, "sleep")
        && let Some(grace) = grace
        && (s.seconds < 0 || s.seconds > grace)
    {
        errs.invalid(
            format!("{path}.sleep"),
            s.seconds,
            &format!("must be non-negative and less than terminationGracePeriodSeconds ({grace})"),
        );
    }
    if count == 0 {
        errs.required(path, "must specify a handler type");
    }
}

/// `ValidatePortNumOrName`.
fn port_num_or_name(port: &IntOrString, path: &str, errs: &mut Errors) {
    match port {
        IntOrString::Int(n) => {
            if !valid_port_num(*n) {
                errs.invalid(path, *n, PORT_RANGE);
            }
        }
        IntOrString::String(name) => errs.invalid_each(path, name, port_name_errors(name)),
    }
}

fn validate_ports(ports: &[ContainerPort], path: &str, host_network: bool, errs: &mut Errors) {
    let mut names: HashSet<&str> = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        if let Some(name) = p.name.as_deref()
            && !name.is_empty()
        {
            let msgs = port_name_errors(name);
            if !msgs.is_empty() {
                errs.invalid_each(&format!("{pp}.name"), name, msgs);
            } else if !names.insert(name) {
                errs.duplicate(format!("{pp}.name"), name);
            }
        }
        if p.container_port == 0 {
            errs.required(format!("{pp}.containerPort"), "");
        } else if !valid_port_num(p.container_port) {
            errs.invalid(format!("{pp}.containerPort"), p.container_port, PORT_RANGE);
        }
        let host_port = p.host_port.unwrap_or(0);
        if host_port != 0 && !valid_port_num(host_port) {
            errs.invalid(format!("{pp}.hostPort"), host_port, PORT_RANGE);
        }
        if host_network && host_port != 0 && host_port != p.container_port {
            errs.invalid(
                format!("{pp}.hostPort"),
                host_port,
                "must match `containerPort` when `hostNetwork` is true",
            );
        }
        match p.protocol.as_deref() {
            None | Some("") => errs.required(format!("{pp}.protocol"), ""),
            Some(proto) if !PROTOCOLS.contains(&proto) => {
                errs.not_supported(format!("{pp}.protocol"), proto, PROTOCOLS)
            }
            Some(_) => {}
        }
    }
}

/// Host ports are unique per (hostIP, protocol, port) across a container list.
fn validate_host_ports(containers: &[Container], list_path: &str, errs: &mut Errors) {
    let mut seen: HashSet<(String, String, i32)> = HashSet::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let port = p.host_port.unwrap_or(0);
            if port == 0 {
                continue;
            }
            let proto = p.protocol.clone().unwrap_or_default();
            let key = (p.host_ip.clone().unwrap_or_default(), proto.clone(), port);
            if !seen.insert(key) {
                let shown = format!("{port}/{proto}");
                errs.duplicate(
                    format!("{list_path}[{ci}].ports[{pi}].hostPort"),
                    shown.as_str(),
                );
            }
        }
    }
}

fn validate_env(env: &[EnvVar], path: &str, errs: &mut Errors) {
    for (i, e) in env.iter().enumerate() {
        let ep = format!("{path}.env[{i}]");
        if e.name.is_empty() {
            errs.required(format!("{ep}.name"), "");
        } else {
            errs.invalid_each(&format!("{ep}.name"), &e.name, env_var_name_errors(&e.name));
        }
        let Some(from) = &e.value_from else { continue };
        let fp = format!("{ep}.valueFrom");
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errs.invalid(
                fp.clone(),
                "",
                "may not be specified when `value` is not empty",
            );
        }
        let sources = [
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources == 0 {
            errs.invalid(fp.clone(), "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`");
        } else if sources > 1 {
            errs.invalid(
                fp.clone(),
                "",
                "may not have more than one field specified at a time",
            );
        }
        if let Some(fr) = &from.field_ref {
            let frp = format!("{fp}.fieldRef");
            match fr.api_version.as_deref() {
                None | Some("") => errs.required(format!("{frp}.apiVersion"), ""),
                Some("v1") => {}
                Some(v) => errs.not_supported(format!("{frp}.apiVersion"), v, &["v1"]),
            }
            let field_path = fr.field_path.as_str();
            if field_path.is_empty() {
                errs.required(format!("{frp}.fieldPath"), "");
            } else if let Some(key) = subscripted_key(field_path) {
                errs.invalid_each(
                    &format!("{frp}.fieldPath"),
                    field_path,
                    qualified_name_errors(&key.to_ascii_lowercase()),
                );
            } else if !ENV_FIELD_PATHS.contains(&field_path) {
                errs.not_supported(format!("{frp}.fieldPath"), field_path, ENV_FIELD_PATHS);
            }
        }
    }
}

/// The key of `metadata.labels['key']` / `metadata.annotations['key']`.
pub fn subscripted_key(field_path: &str) -> Option<&str> {
    ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .find_map(|prefix| field_path.strip_prefix(prefix))
        .and_then(|rest| rest.strip_suffix("']"))
}

fn validate_volume_mounts(
    mounts: &[VolumeMount],
    path: &str,
    volumes: &BTreeSet<&str>,
    privileged: bool,
    errs: &mut Errors,
) {
    let mut mount_points: HashSet<&str> = HashSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            errs.required(format!("{mp}.name"), "");
        } else if !volumes.contains(m.name.as_str()) {
            errs.not_found(format!("{mp}.name"), &m.name);
        }
        if m.mount_path.is_empty() {
            errs.required(format!("{mp}.mountPath"), "");
        } else if !m.mount_path.starts_with('/') {
            errs.invalid(
                format!("{mp}.mountPath"),
                m.mount_path.as_str(),
                "must be an absolute path",
            );
        } else if !mount_points.insert(m.mount_path.as_str()) {
            errs.invalid(
                format!("{mp}.mountPath"),
                m.mount_path.as_str(),
                "must be unique",
            );
        }
        if let Some(sub) = m.sub_path.as_deref()
            && !sub.is_empty()
        {
            if sub.starts_with('/') {
                errs.invalid(format!("{mp}.subPath"), sub, "must be a relative path");
            } else if has_backsteps(sub) {
                errs.invalid(format!("{mp}.subPath"), sub, "must not contain '..'");
            }
            if m.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
                errs.invalid(
                    format!("{mp}.subPathExpr"),
                    m.sub_path_expr.as_deref().unwrap_or_default(),
                    "subPathExpr and subPath are mutually exclusive",
                );
            }
        }
        if let Some(prop) = m.mount_propagation.as_deref() {
            if !MOUNT_PROPAGATIONS.contains(&prop) {
                errs.not_supported(format!("{mp}.mountPropagation"), prop, MOUNT_PROPAGATIONS);
            } else if prop == "Bidirectional" && !privileged {
                errs.forbidden(
                    format!("{mp}.mountPropagation"),
                    "Bidirectional mount propagation is available only to privileged containers",
                );
            }
        }
    }
}

fn is_standard_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

/// A resource name is standard or fully qualified (`example.com/gpu`).
fn resource_name_ok(name: &str) -> bool {
    is_standard_resource(name) || (name.contains('/') && qualified_name_errors(name).is_empty())
}

fn validate_resources(r: &ResourceRequirements, path: &str, errs: &mut Errors) {
    let mut limits: BTreeMap<&str, (quantity::Quantity, &str)> = BTreeMap::new();
    for (name, q) in r.limits.iter().flatten() {
        let field = format!("{path}.limits[{name}]");
        if !resource_name_ok(name) {
            errs.invalid(
                field.clone(),
                name.as_str(),
                "must be a standard resource type or fully qualified",
            );
        }
        if let Some(v) = check_quantity(errs, &field, q) {
            limits.insert(name, (v, q.0.as_str()));
        }
    }
    for (name, q) in r.requests.iter().flatten() {
        let field = format!("{path}.requests[{name}]");
        if !resource_name_ok(name) {
            errs.invalid(
                field.clone(),
                name.as_str(),
                "must be a standard resource type or fully qualified",
            );
        }
        let Some(v) = check_quantity(errs, &field, q) else {
            continue;
        };
        if let Some((limit, shown)) = limits.get(name.as_str()) {
            if !is_standard_resource(name) && v != *limit {
                errs.invalid(
                    field,
                    q.0.as_str(),
                    &format!("must be equal to {name} limit of {shown}"),
                );
            } else if v > *limit {
                errs.invalid(
                    field,
                    q.0.as_str(),
                    &format!("must be less than or equal to {name} limit of {shown}"),
                );
            }
        }
    }
}

/// `ValidateSecurityContext` of a container; `host_users` is the pod's
/// `spec.hostUsers` (default true).
fn validate_security_context(
    sc: &SecurityContext,
    path: &str,
    host_users: bool,
    errs: &mut Errors,
) {
    check_id(errs, &format!("{path}.runAsUser"), sc.run_as_user);
    check_id(errs, &format!("{path}.runAsGroup"), sc.run_as_group);
    if let Some(proc_mount) = sc.proc_mount.as_deref() {
        let field = format!("{path}.procMount");
        if !PROC_MOUNT_TYPES.contains(&proc_mount) {
            errs.not_supported(field.clone(), proc_mount, PROC_MOUNT_TYPES);
        }
        // An unmasked /proc is only safe inside a user namespace.
        if host_users && proc_mount == PROC_MOUNT_UNMASKED {
            errs.invalid(
                field,
                proc_mount,
                "`hostUsers` must be false to use `Unmasked`",
            );
        }
    }
    seccomp_profile(
        sc.seccomp_profile.as_ref(),
        &format!("{path}.seccompProfile"),
        errs,
    );
    if sc.privileged == Some(true) && sc.allow_privilege_escalation == Some(false) {
        errs.invalid(
            format!("{path}.allowPrivilegeEscalation"),
            false,
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        );
    }
    apparmor_profile(
        sc.app_armor_profile.as_ref(),
        &format!("{path}.appArmorProfile"),
        errs,
    );
}

// ---------------------------------------------------------------------------
// Security profiles (`validateSeccompProfileField`, `ValidateAppArmorProfileField`,
// `ValidateAppArmorPodAnnotations`, `validateAppArmorAnnotationsAndFieldsMatchOnCreate`)
// ---------------------------------------------------------------------------

/// `procMount` values (`ProcMountType`).
const PROC_MOUNT_TYPES: &[&str] = &["Default", "Unmasked"];
/// The `procMount` that leaves /proc unmasked.
pub const PROC_MOUNT_UNMASKED: &str = "Unmasked";
/// `fsGroupChangePolicy` values, sorted as upstream lists them.
const FS_GROUP_CHANGE_POLICIES: &[&str] = &["Always", "OnRootMismatch"];
/// `seccompProfile.type` values.
const SECCOMP_PROFILE_TYPES: &[&str] = &["Localhost", "RuntimeDefault", "Unconfined"];
/// `appArmorProfile.type` values.
const APPARMOR_PROFILE_TYPES: &[&str] = &["Localhost", "RuntimeDefault", "Unconfined"];
/// The longest AppArmor `localhostProfile` (PATH_MAX - 1).
const APPARMOR_PROFILE_MAX: usize = 4095;

/// The deprecated per-container AppArmor annotation: `<prefix><container name>`.
pub const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
/// The annotation value for the runtime's default AppArmor profile.
pub const APPARMOR_ANNOTATION_RUNTIME_DEFAULT: &str = "runtime/default";
/// The annotation value for no AppArmor profile.
pub const APPARMOR_ANNOTATION_UNCONFINED: &str = "unconfined";
/// The annotation value prefix for a profile loaded on the node: `localhost/<name>`.
pub const APPARMOR_ANNOTATION_LOCALHOST_PREFIX: &str = "localhost/";

/// `validateSeccompProfileField`.
fn seccomp_profile(sp: Option<&SeccompProfile>, path: &str, errs: &mut Errors) {
    let Some(sp) = sp else { return };
    match sp.type_.as_str() {
        "" => errs.required(
            format!("{path}.type"),
            "type is required when seccompProfile is set",
        ),
        t if !SECCOMP_PROFILE_TYPES.contains(&t) => {
            errs.not_supported(format!("{path}.type"), t, SECCOMP_PROFILE_TYPES)
        }
        _ => {}
    }
    let field = format!("{path}.localhostProfile");
    match (sp.type_.as_str(), sp.localhost_profile.as_deref()) {
        ("Localhost", None) => errs.required(field, "must be set when seccomp type is Localhost"),
        ("Localhost", Some(profile)) => local_descending_path(profile, &field, errs),
        (_, Some(profile)) => errs.invalid(
            field,
            profile,
            "can only be set when seccomp type is Localhost",
        ),
        (_, None) => {}
    }
}

/// `validateLocalDescendingPath`: relative, without a `..` element.
fn local_descending_path(path: &str, field: &str, errs: &mut Errors) {
    if path.starts_with('/') {
        errs.invalid(field, path, "must be a relative path");
    }
    if has_backsteps(path) {
        errs.invalid(field, path, "must not contain '..'");
    }
}

/// `ValidateAppArmorProfileField`.
fn apparmor_profile(profile: Option<&AppArmorProfile>, path: &str, errs: &mut Errors) {
    let Some(profile) = profile else { return };
    let field = format!("{path}.localhostProfile");
    match profile.type_.as_str() {
        "Localhost" => match profile.localhost_profile.as_deref() {
            None => errs.required(field, "must be set when AppArmor type is Localhost"),
            Some(name) => {
                if name.trim() != name {
                    errs.invalid(field.clone(), name, "must not be padded with whitespace");
                } else if name.is_empty() {
                    errs.required(field.clone(), "must be set when AppArmor type is Localhost");
                }
                if name.len() > APPARMOR_PROFILE_MAX {
                    errs.push(
                        field,
                        ErrorType::TooLong,
                        format!("Too long: may not be more than {APPARMOR_PROFILE_MAX} bytes"),
                    );
                }
            }
        },
        "RuntimeDefault" | "Unconfined" => {
            if let Some(name) = profile.localhost_profile.as_deref() {
                errs.invalid(
                    field,
                    name,
                    "can only be set when AppArmor type is Localhost",
                );
            }
        }
        "" => errs.required(
            format!("{path}.type"),
            "type is required when appArmorProfile is set",
        ),
        other => errs.not_supported(format!("{path}.type"), other, APPARMOR_PROFILE_TYPES),
    }
}

/// Every container of a spec (init containers first) with its field path.
fn containers_with_paths(spec: &PodSpec) -> impl Iterator<Item = (&Container, String)> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (c, format!("spec.initContainers[{i}]")));
    let app = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c, format!("spec.containers[{i}]")));
    init.chain(app)
}

/// `ValidateAppArmorPodAnnotations`: each deprecated AppArmor annotation
/// names a container of the pod and holds a profile name.
fn apparmor_annotations(meta: &ObjectMeta, spec: &PodSpec, errs: &mut Errors) {
    for (key, value) in meta.annotations.iter().flatten() {
        let Some(container) = key.strip_prefix(APPARMOR_ANNOTATION_PREFIX) else {
            continue;
        };
        let field = format!("metadata.annotations[{key}]");
        if !containers_with_paths(spec).any(|(c, _)| c.name == container) {
            errs.invalid(field.clone(), container, "container not found");
        }
        let known = value.is_empty()
            || value == APPARMOR_ANNOTATION_RUNTIME_DEFAULT
            || value == APPARMOR_ANNOTATION_UNCONFINED
            || value.starts_with(APPARMOR_ANNOTATION_LOCALHOST_PREFIX);
        if !known {
            errs.invalid(
                field,
                value.as_str(),
                &format!("invalid AppArmor profile name: {value:?}"),
            );
        }
    }
}

/// `validateAppArmorAnnotationsAndFieldsMatchOnCreate`: where a container has
/// both an AppArmor profile (its own or the pod's) and the deprecated
/// annotation, they agree.
fn apparmor_annotations_match_fields(meta: &ObjectMeta, spec: &PodSpec, errs: &mut Errors) {
    let pod_profile = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.app_armor_profile.as_ref());
    for (c, path) in containers_with_paths(spec) {
        let profile = c
            .security_context
            .as_ref()
            .and_then(|sc| sc.app_armor_profile.as_ref())
            .or(pod_profile);
        let key = format!("{APPARMOR_ANNOTATION_PREFIX}{}", c.name);
        let (Some(profile), Some(annotation)) =
            (profile, meta.annotations.as_ref().and_then(|a| a.get(&key)))
        else {
            continue;
        };
        let field = format!("{path}.securityContext.appArmorProfile");
        let type_mismatch = match profile.type_.as_str() {
            "Unconfined" => annotation != APPARMOR_ANNOTATION_UNCONFINED,
            "RuntimeDefault" => annotation != APPARMOR_ANNOTATION_RUNTIME_DEFAULT,
            "Localhost" => !annotation.starts_with(APPARMOR_ANNOTATION_LOCALHOST_PREFIX),
            _ => false,
        };
        if type_mismatch {
            errs.forbidden(
                format!("{field}.type"),
                "apparmor type in annotation and field must match",
            );
        } else if profile.type_ == "Localhost"
            && annotation.strip_prefix(APPARMOR_ANNOTATION_LOCALHOST_PREFIX)
                != profile.localhost_profile.as_deref()
        {
            errs.forbidden(
                format!("{field}.localhostProfile"),
                "apparmor profile in annotation and field must match",
            );
        }
    }
}

// ---------------------------------------------------------------------------
// ConfigMaps and Secrets
// ---------------------------------------------------------------------------

/// The most bytes a ConfigMap's `data` and `binaryData` hold together
/// (`MaxConfigMapSize`), and a Secret's `data` (`MaxSecretSize`): 1 MiB, so
/// an object stays well under etcd's request limit.
pub const DATA_MAX: usize = 1024 * 1024;

fn data_keys<'a>(field: &str, keys: impl Iterator<Item = &'a String>, errs: &mut Errors) {
    for key in keys {
        errs.invalid_each(
            &format!("{field}[{key}]"),
            key,
            crate::names::config_map_key_errors(key),
        );
    }
}

/// `ValidateConfigMap` (beyond object metadata): valid keys, none in both
/// `data` and `binaryData`, at most [`DATA_MAX`] bytes in all.
pub fn validate_configmap(cm: &ConfigMap) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let data = cm.data.clone().unwrap_or_default();
    let binary = cm.binary_data.clone().unwrap_or_default();
    data_keys("data", data.keys(), &mut errs);
    for key in data.keys().filter(|k| binary.contains_key(*k)) {
        errs.invalid(
            format!("data[{key}]"),
            key.as_str(),
            "duplicate of key present in binaryData",
        );
    }
    data_keys("binaryData", binary.keys(), &mut errs);
    let total = data
        .values()
        .map(String::len)
        .chain(binary.values().map(|b| b.0.len()))
        .fold(0usize, usize::saturating_add);
    if total > DATA_MAX {
        // The whole object: upstream's `field.NewPath("")` prints as `[]`.
        errs.push(
            "[]",
            ErrorType::TooLong,
            format!("Too long: may not be more than {DATA_MAX} bytes"),
        );
    }
    errs.0
}

/// `ValidateSecret` (beyond object metadata): valid keys, at most
/// [`DATA_MAX`] bytes, and what each well-known `type` requires. Secret
/// values never appear in a message.
pub fn validate_secret(secret: &Secret) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let data = secret.data.clone().unwrap_or_default();
    data_keys("data", data.keys(), &mut errs);
    let total = data
        .values()
        .map(|b| b.0.len())
        .fold(0usize, usize::saturating_add);
    if total > DATA_MAX {
        errs.push(
            "data",
            ErrorType::TooLong,
            format!("Too long: may not be more than {DATA_MAX} bytes"),
        );
    }
    let required = |errs: &mut Errors, key: &str| errs.required(format!("data[{key}]"), "");
    let json_in = |errs: &mut Errors, key: &str| match data.get(key) {
        None => required(errs, key),
        Some(bytes) => {
            if let Err(e) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&bytes.0)
            {
                errs.invalid(
                    format!("data[{key}]"),
                    "<secret contents redacted>",
                    &e.to_string(),
                );
            }
        }
    };
    match secret.type_.as_deref().unwrap_or("") {
        "kubernetes.io/service-account-token" => {
            let named = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .is_some_and(|v| !v.is_empty());
            if !named {
                errs.required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                );
            }
        }
        "kubernetes.io/dockercfg" => json_in(&mut errs, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => json_in(&mut errs, ".dockerconfigjson"),
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            required(&mut errs, "username");
            required(&mut errs, "password");
        }
        "kubernetes.io/ssh-auth" if data.get("ssh-privatekey").is_none_or(|b| b.0.is_empty()) => {
            required(&mut errs, "ssh-privatekey");
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !data.contains_key(key) {
                    required(&mut errs, key);
                }
            }
        }
        _ => {}
    }
    errs.0
}

/// The rule of `immutable: true` shared by ConfigMaps and Secrets.
fn immutable_data(
    old_immutable: Option<bool>,
    new_immutable: Option<bool>,
    data_changed: &[&str],
    errs: &mut Errors,
) {
    if old_immutable != Some(true) {
        return;
    }
    if new_immutable != Some(true) {
        errs.forbidden("immutable", "field is immutable when `immutable` is set");
    }
    for field in data_changed {
        errs.forbidden(*field, "field is immutable when `immutable` is set");
    }
}

/// `ValidateConfigMapUpdate` (beyond metadata): the new object is valid, and
/// an immutable one keeps its data.
pub fn validate_configmap_update(new: &ConfigMap, old: &ConfigMap) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let mut changed = Vec::new();
    if new.data != old.data {
        changed.push("data");
    }
    if new.binary_data != old.binary_data {
        changed.push("binaryData");
    }
    immutable_data(old.immutable, new.immutable, &changed, &mut errs);
    errs.0.extend(validate_configmap(new));
    errs.0
}

/// `ValidateSecretUpdate` (beyond metadata): the type is immutable, an
/// immutable Secret keeps its data, and the new object is valid.
pub fn validate_secret_update(new: &Secret, old: &Secret) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if new.type_ != old.type_ {
        errs.invalid(
            "type",
            new.type_.as_deref().unwrap_or(""),
            "field is immutable",
        );
    }
    let changed: &[&str] = if new.data != old.data { &["data"] } else { &[] };
    immutable_data(old.immutable, new.immutable, changed, &mut errs);
    errs.0.extend(validate_secret(new));
    errs.0
}

// ---------------------------------------------------------------------------
// Tolerations
// ---------------------------------------------------------------------------

const TOLERATION_OPERATORS: &[&str] = &["Equal", "Exists"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A toleration as `field.Error` prints an internal struct (`%#v`); the
/// `tolerationSeconds` pointer shows its value, not an address.
fn shown_toleration(t: &Toleration) -> String {
    let seconds = t
        .toleration_seconds
        .map_or("(*int64)(nil)".to_string(), |s| s.to_string());
    format!(
        "core.Toleration{{Key:{:?}, Operator:{:?}, Value:{:?}, Effect:{:?}, TolerationSeconds:{seconds}}}",
        t.key.as_deref().unwrap_or(""),
        t.operator.as_deref().unwrap_or(""),
        t.value.as_deref().unwrap_or(""),
        t.effect.as_deref().unwrap_or(""),
    )
}

/// `ValidateTolerations`: label-name keys, `Exists` for an empty key,
/// `tolerationSeconds` only with `NoExecute`, the operator and its value, the effect.
fn tolerations(list: &[Toleration], path: &str, errs: &mut Errors) {
    for (i, t) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let key = t.key.as_deref().unwrap_or("");
        let operator = t.operator.as_deref().unwrap_or("");
        let value = t.value.as_deref().unwrap_or("");
        let effect = t.effect.as_deref().unwrap_or("");
        if !key.is_empty() {
            errs.invalid_each(&format!("{at}.key"), key, qualified_name_errors(key));
        }
        if key.is_empty() && operator != "Exists" {
            errs.invalid(
                format!("{at}.operator"),
                operator,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            );
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            errs.invalid(
                format!("{at}.effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
        match operator {
            "" | "Equal" => {
                let msgs = label_value_errors(value);
                if !msgs.is_empty() {
                    errs.invalid(format!("{at}.operator"), value, &msgs.join(";"));
                }
            }
            "Exists" if !value.is_empty() => errs.push(
                format!("{at}.operator"),
                ErrorType::Invalid,
                format!(
                    "Invalid value: {}: value must be empty when `operator` is 'Exists'",
                    shown_toleration(t)
                ),
            ),
            "Exists" => {}
            other => errs.not_supported(format!("{at}.operator"), other, TOLERATION_OPERATORS),
        }
        if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
            errs.not_supported(format!("{at}.effect"), effect, TAINT_EFFECTS);
        }
    }
}

// ---------------------------------------------------------------------------
// RuntimeClasses (node.k8s.io)
// ---------------------------------------------------------------------------

/// `ValidateRuntimeClass` (`pkg/apis/node/validation`, beyond object
/// metadata): the handler is a DNS-1123 label; `overhead.podFixed` is
/// checked as a container's limits (so upstream names its errors
/// `overhead.limits[cpu]`); `scheduling.nodeSelector` holds labels and
/// `scheduling.tolerations` valid, unique tolerations.
pub fn validate_runtime_class(rc: &RuntimeClass) -> Vec<FieldError> {
    let mut errs = Errors::default();
    errs.invalid_each("handler", &rc.handler, dns1123_label_errors(&rc.handler));
    if let Some(overhead) = &rc.overhead {
        let limits = ResourceRequirements {
            limits: overhead.pod_fixed.clone(),
            ..ResourceRequirements::default()
        };
        validate_resources(&limits, "overhead", &mut errs);
    }
    if let Some(scheduling) = &rc.scheduling {
        labels(
            "scheduling.nodeSelector",
            scheduling.node_selector.as_ref(),
            &mut errs,
        );
        let list = scheduling.tolerations.as_deref().unwrap_or_default();
        tolerations(list, "scheduling.tolerations", &mut errs);
        // Unique by the API's list keys (key, operator, value, effect).
        let mut seen = HashSet::new();
        for (i, t) in list.iter().enumerate() {
            let list_key = [&t.key, &t.operator, &t.value, &t.effect].map(|f| f.as_deref());
            if !seen.insert(list_key.map(|f| f.unwrap_or(""))) {
                errs.push(
                    format!("scheduling.tolerations[{i}]"),
                    ErrorType::Duplicate,
                    format!("Duplicate value: {}", shown_toleration(t)),
                );
            }
        }
    }
    errs.0
}

/// `ValidateRuntimeClassUpdate` (beyond metadata): the new object is valid
/// and its handler unchanged.
pub fn validate_runtime_class_update(new: &RuntimeClass, old: &RuntimeClass) -> Vec<FieldError> {
    let mut errs = validate_runtime_class(new);
    if new.handler != old.handler {
        errs.push(FieldError {
            field: "handler".into(),
            error_type: ErrorType::Invalid,
            reason: format!("Invalid value: {:?}: field is immutable", new.handler),
        });
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_formats() {
        use crate::names::*;
        assert!(dns1123_label_errors("web-1").is_empty());
        assert!(!dns1123_label_errors("Foo_bar").is_empty());
        assert_eq!(dns1123_label_errors("a.b"), vec!["must not contain dots"]);
        assert!(!dns1123_label_errors(&"a".repeat(64)).is_empty());
        assert!(dns1123_subdomain_errors("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain_errors("a..b").is_empty());
        assert!(!dns1123_subdomain_errors("").is_empty());
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name_errors("a/b/c").is_empty());
        assert!(!qualified_name_errors("/b").is_empty());
        assert!(port_name_errors("http").is_empty());
        assert!(!port_name_errors("80").is_empty());
        assert!(!port_name_errors("a--b").is_empty());
        assert!(!port_name_errors("Http").is_empty());
        assert!(env_var_name_errors("MY_VAR.1-x y").is_empty());
        assert!(!env_var_name_errors("A=B").is_empty());
        assert!(!env_var_name_errors("é").is_empty());
        assert_eq!(subscripted_key("metadata.labels['app']"), Some("app"));
        assert_eq!(subscripted_key("metadata.name"), None);
        assert!(http_header_name_errors("X-Header-1").is_empty());
        assert!(!http_header_name_errors("X Header").is_empty());
        assert!(!http_header_name_errors("").is_empty());
    }

    /// A defaulted pod with `container` merged into its one container (and
    /// `init`, when given, as its one init container); its errors as text.
    fn probe_errors(container: serde_json::Value, init: Option<serde_json::Value>) -> Vec<String> {
        let mut c = serde_json::json!({"name": "c", "image": "busybox"});
        for (k, v) in container.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        let mut pod = serde_json::json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [c]}});
        if let Some(mut i) = init {
            i["name"] = "i".into();
            i["image"] = "busybox".into();
            pod["spec"]["initContainers"] = serde_json::json!([i]);
        }
        let mut pod: Pod = serde_json::from_value(pod).expect("pod");
        crate::defaults::apply(&mut pod);
        validate_pod(&pod).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn probes_as_upstream() {
        use serde_json::json;
        let ok = json!({
            "livenessProbe": {"httpGet": {"port": 8080, "httpHeaders": [{"name": "X-A", "value": "1"}]},
                              "terminationGracePeriodSeconds": 5},
            "readinessProbe": {"exec": {"command": ["true"]}, "successThreshold": 3},
            "startupProbe": {"tcpSocket": {"port": "http"}, "failureThreshold": 30},
            "lifecycle": {"postStart": {"exec": {"command": ["true"]}},
                          "preStop": {"sleep": {"seconds": 5}}},
        });
        assert_eq!(probe_errors(ok, None), Vec::<String>::new());
        let c = "spec.containers[0]";
        let cases = [
            (
                json!({"readinessProbe": {"exec": {"command": ["true"]},
                                       "terminationGracePeriodSeconds": 30}}),
                format!(
                    "{c}.readinessProbe.terminationGracePeriodSeconds: Invalid value: 30: must not be set for readinessProbes"
                ),
            ),
            (
                json!({"livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}}),
                format!("{c}.livenessProbe.successThreshold: Invalid value: 2: must be 1"),
            ),
            (
                json!({"startupProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}}),
                format!("{c}.startupProbe.successThreshold: Invalid value: 2: must be 1"),
            ),
            (
                json!({"livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": -1}}),
                format!(
                    "{c}.livenessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0"
                ),
            ),
            (
                json!({"livenessProbe": {"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 0}}),
                format!(
                    "{c}.livenessProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0"
                ),
            ),
            (
                json!({"livenessProbe": {"periodSeconds": 5}}),
                format!("{c}.livenessProbe: Required value: must specify a handler type"),
            ),
            (
                json!({"livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}}),
                format!(
                    "{c}.livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"
                ),
            ),
            (
                json!({"readinessProbe": {"exec": {"command": []}}}),
                format!("{c}.readinessProbe.exec.command: Required value"),
            ),
            (
                json!({"readinessProbe": {"httpGet": {"port": 0}}}),
                format!(
                    "{c}.readinessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive"
                ),
            ),
            (
                json!({"readinessProbe": {"httpGet": {"port": 80, "scheme": "FTP"}}}),
                format!(
                    "{c}.readinessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\""
                ),
            ),
            (
                json!({"readinessProbe": {"grpc": {"port": 70000}}}),
                format!(
                    "{c}.readinessProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive"
                ),
            ),
            (
                json!({"lifecycle": {"preStop": {"sleep": {"seconds": 31}}}}),
                format!(
                    "{c}.lifecycle.preStop.sleep: Invalid value: 31: must be non-negative and less than terminationGracePeriodSeconds (30)"
                ),
            ),
            (
                json!({"lifecycle": {"postStart": {}}}),
                format!("{c}.lifecycle.postStart: Required value: must specify a handler type"),
            ),
        ];
        for (container, want) in cases {
            let got = probe_errors(container.clone(), None);
            assert_eq!(got, vec![want], "{container}");
        }
        // Init containers: none of it, unless restartable (a sidecar).
        let probe = json!({"exec": {"command": ["true"]}});
        assert_eq!(
            probe_errors(json!({}), Some(json!({"readinessProbe": probe}))),
            vec![
                "spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always"
            ]
        );
        assert_eq!(
            probe_errors(
                json!({}),
                Some(json!({"restartPolicy": "Always", "readinessProbe": probe}))
            ),
            Vec::<String>::new()
        );
    }

    fn runtime_class_errors(rc: serde_json::Value) -> Vec<String> {
        let rc: RuntimeClass = serde_json::from_value(rc).expect("decodes");
        validate_runtime_class(&rc)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Upstream's `TestValidateRuntimeClass`, `TestValidateOverhead` and
    /// `TestValidateScheduling`, with the messages.
    #[test]
    fn runtime_classes() {
        use serde_json::json;
        let ok = json!({"metadata": {"name": "gvisor"}, "handler": "runsc",
            "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}},
            "scheduling": {"nodeSelector": {"runtime": "gvisor"},
                "tolerations": [{"key": "runtime", "operator": "Exists", "effect": "NoSchedule"}]}});
        assert_eq!(runtime_class_errors(ok), Vec::<String>::new());
        let label = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
        assert_eq!(
            runtime_class_errors(json!({"handler": "RunSC"})),
            vec![format!("handler: Invalid value: \"RunSC\": {label}")]
        );
        assert_eq!(
            runtime_class_errors(json!({})),
            vec![format!("handler: Invalid value: \"\": {label}")]
        );
        assert_eq!(
            runtime_class_errors(
                json!({"handler": "h", "overhead": {"podFixed": {"cpu": "-1", "my.org": "10m"}}})
            ),
            vec![
                "overhead.limits[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
                "overhead.limits[my.org]: Invalid value: \"my.org\": must be a standard resource type or fully qualified",
            ]
        );
        let errs = runtime_class_errors(json!({"handler": "h", "scheduling": {
            "nodeSelector": {"not a valid key!!!": "nope"},
            "tolerations": [
                {"key": "valid", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
                {"key": "valid", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10},
                {"operator": "Equal", "value": "x"},
                {"key": "k", "operator": "Exists", "value": "v", "effect": "Sometimes"},
                {"key": "k", "operator": "Less", "tolerationSeconds": 1}]}}));
        let fields: Vec<&str> = errs
            .iter()
            .map(|e| e.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            fields,
            [
                "scheduling.nodeSelector",
                "scheduling.tolerations[2].operator",
                "scheduling.tolerations[3].operator",
                "scheduling.tolerations[3].effect",
                "scheduling.tolerations[4].effect",
                "scheduling.tolerations[4].operator",
                "scheduling.tolerations[1]",
            ],
            "{errs:#?}"
        );
        assert_eq!(
            errs[6],
            "scheduling.tolerations[1]: Duplicate value: core.Toleration{Key:\"valid\", Operator:\"Exists\", Value:\"\", Effect:\"NoExecute\", TolerationSeconds:10}"
        );
        assert_eq!(
            errs[5],
            "scheduling.tolerations[4].operator: Unsupported value: \"Less\": supported values: \"Equal\", \"Exists\""
        );
    }

    #[test]
    fn runtime_class_handler_is_immutable() {
        let rc = |handler: &str| RuntimeClass {
            handler: handler.into(),
            ..RuntimeClass::default()
        };
        assert!(validate_runtime_class_update(&rc("runc"), &rc("runc")).is_empty());
        let errs = validate_runtime_class_update(&rc("crun"), &rc("runc"));
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "handler: Invalid value: \"crun\": field is immutable"
        );
    }

    /// A defaulted pod from `pod` (JSON merged over a one-container pod); its errors as text.
    fn pod_errors(pod: serde_json::Value) -> Vec<String> {
        let mut base = serde_json::json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        merge(&mut base, pod);
        let mut pod: Pod = serde_json::from_value(base).expect("pod");
        crate::defaults::apply(&mut pod);
        validate_pod(&pod).iter().map(ToString::to_string).collect()
    }

    fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    #[test]
    fn proc_mount_unmasked_needs_a_user_namespace() {
        let unmasked = serde_json::json!({"securityContext": {"procMount": "Unmasked"}});
        assert_eq!(
            probe_errors(unmasked.clone(), None),
            vec![
                "spec.containers[0].securityContext.procMount: Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`"
            ]
        );
        let errs = probe_errors(
            serde_json::json!({"securityContext": {"procMount": "Weird"}}),
            None,
        );
        assert_eq!(
            errs,
            vec![
                "spec.containers[0].securityContext.procMount: Unsupported value: \"Weird\": supported values: \"Default\", \"Unmasked\""
            ]
        );
        assert!(
            probe_errors(
                serde_json::json!({"securityContext": {"procMount": "Default"}}),
                None
            )
            .is_empty()
        );
        // With hostUsers: false the API accepts it (the node may still refuse the pod).
        let errs = pod_errors(serde_json::json!({"spec": {"hostUsers": false,
            "initContainers": [{"name": "i", "image": "busybox", "securityContext": {"procMount": "Unmasked"}}]}}));
        assert!(errs.is_empty(), "{errs:?}");
        // The init container is held to the same rule.
        let errs = pod_errors(serde_json::json!({"spec": {
            "initContainers": [{"name": "i", "image": "busybox", "securityContext": {"procMount": "Unmasked"}}]}}));
        assert_eq!(
            errs,
            vec![
                "spec.initContainers[0].securityContext.procMount: Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`"
            ]
        );
    }

    #[test]
    fn host_users_false_excludes_host_namespaces() {
        let errs = pod_errors(serde_json::json!({"spec": {"hostUsers": false,
            "hostNetwork": true, "hostPID": true, "hostIPC": true}}));
        assert_eq!(
            errs,
            vec![
                "spec.hostNetwork: Forbidden: when `pod.Spec.HostUsers` is false",
                "spec.HostPID: Forbidden: when `pod.Spec.HostUsers` is false",
                "spec.HostIPC: Forbidden: when `pod.Spec.HostUsers` is false",
            ]
        );
        assert!(
            pod_errors(serde_json::json!({"spec": {"hostUsers": true, "hostPID": true}}))
                .is_empty()
        );
    }

    #[test]
    fn seccomp_profiles_as_upstream() {
        let c = |sp: serde_json::Value| {
            probe_errors(
                serde_json::json!({"securityContext": {"seccompProfile": sp}}),
                None,
            )
        };
        assert!(c(serde_json::json!({"type": "RuntimeDefault"})).is_empty());
        assert!(c(serde_json::json!({"type": "Unconfined"})).is_empty());
        assert!(
            c(serde_json::json!({"type": "Localhost", "localhostProfile": "profiles/audit.json"}))
                .is_empty()
        );
        let base = "spec.containers[0].securityContext.seccompProfile";
        assert_eq!(
            c(serde_json::json!({"type": "Localhost"})),
            vec![format!(
                "{base}.localhostProfile: Required value: must be set when seccomp type is Localhost"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "Localhost", "localhostProfile": "/etc/x.json"})),
            vec![format!(
                "{base}.localhostProfile: Invalid value: \"/etc/x.json\": must be a relative path"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "Localhost", "localhostProfile": "../x.json"})),
            vec![format!(
                "{base}.localhostProfile: Invalid value: \"../x.json\": must not contain '..'"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "RuntimeDefault", "localhostProfile": "x.json"})),
            vec![format!(
                "{base}.localhostProfile: Invalid value: \"x.json\": can only be set when seccomp type is Localhost"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "Strict"})),
            vec![format!(
                "{base}.type: Unsupported value: \"Strict\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": ""})),
            vec![format!(
                "{base}.type: Required value: type is required when seccompProfile is set"
            )]
        );
        // Pod level, with fsGroupChangePolicy.
        let errs = pod_errors(serde_json::json!({"spec": {"securityContext": {
            "seccompProfile": {"type": "Localhost"},
            "fsGroup": 2000,
            "fsGroupChangePolicy": "Sometimes"}}}));
        assert_eq!(
            errs,
            vec![
                "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnRootMismatch\"",
                "spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost",
            ]
        );
        assert!(
            pod_errors(serde_json::json!({"spec": {"securityContext": {
            "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"}}}))
            .is_empty()
        );
    }

    #[test]
    fn apparmor_profiles_and_annotations_as_upstream() {
        let c = |p: serde_json::Value| {
            probe_errors(
                serde_json::json!({"securityContext": {"appArmorProfile": p}}),
                None,
            )
        };
        let base = "spec.containers[0].securityContext.appArmorProfile";
        assert!(c(serde_json::json!({"type": "RuntimeDefault"})).is_empty());
        assert!(
            c(serde_json::json!({"type": "Localhost", "localhostProfile": "k8s-deny-write"}))
                .is_empty()
        );
        assert_eq!(
            c(serde_json::json!({"type": "Localhost"})),
            vec![format!(
                "{base}.localhostProfile: Required value: must be set when AppArmor type is Localhost"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "Localhost", "localhostProfile": " x"})),
            vec![format!(
                "{base}.localhostProfile: Invalid value: \" x\": must not be padded with whitespace"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "Unconfined", "localhostProfile": "x"})),
            vec![format!(
                "{base}.localhostProfile: Invalid value: \"x\": can only be set when AppArmor type is Localhost"
            )]
        );
        assert_eq!(
            c(serde_json::json!({"type": "Other"})),
            vec![format!(
                "{base}.type: Unsupported value: \"Other\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""
            )]
        );
        let key = "container.apparmor.security.beta.kubernetes.io";
        let errs = pod_errors(serde_json::json!({"metadata": {"annotations": {
            format!("{key}/c"): "enforce-me", format!("{key}/ghost"): "runtime/default"}}}));
        assert_eq!(
            errs,
            vec![
                format!(
                    "metadata.annotations[{key}/c]: Invalid value: \"enforce-me\": invalid AppArmor profile name: \"enforce-me\""
                ),
                format!(
                    "metadata.annotations[{key}/ghost]: Invalid value: \"ghost\": container not found"
                ),
            ]
        );
        // Annotation and field (the container's, or the pod's) must agree.
        let errs = pod_errors(serde_json::json!({
            "metadata": {"annotations": {format!("{key}/c"): "localhost/a"}},
            "spec": {"securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "b"}}}}));
        assert_eq!(
            errs,
            vec![
                "spec.containers[0].securityContext.appArmorProfile.localhostProfile: Forbidden: apparmor profile in annotation and field must match"
            ]
        );
        let errs = pod_errors(serde_json::json!({
            "metadata": {"annotations": {format!("{key}/c"): "unconfined"}},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}]}}));
        assert_eq!(
            errs,
            vec![
                "spec.containers[0].securityContext.appArmorProfile.type: Forbidden: apparmor type in annotation and field must match"
            ]
        );
        assert!(
            pod_errors(serde_json::json!({
            "metadata": {"annotations": {format!("{key}/c"): "runtime/default"}},
            "spec": {"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}}))
            .is_empty()
        );
    }
}
