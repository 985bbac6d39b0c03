//! Validation of a defaulted static pod, after the parts of
//! `pkg/apis/core/validation` (and `apimachinery/pkg/util/validation`) that matter
//! for running it; and resource quantities (`100m`, `64Mi`), which the runtime
//! manager reuses for CRI resources.
//!
//! Every error names the field as Kubernetes does (`spec.containers[0].image`) and
//! words the reason as `field.Error` does (`Required value`, `Invalid value: "x": …`,
//! `Duplicate value: "web"`, `Unsupported value: "x": supported values: …`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Pod, PodSpec, ResourceRequirements, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

// ---------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------

/// Why a resource quantity could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<signedNumber><suffix>`.
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Invalid,
    /// Well formed, but too large (or too precise) to represent.
    #[error("quantity is too large")]
    TooLarge,
}

/// The value of a Kubernetes quantity in thousandths of its unit, rounded up
/// (as Kubernetes rounds `0.1m` up to `1m`).
///
/// Accepts `<signedNumber><suffix>` with a decimal SI suffix (`n u m "" k M G T P E`),
/// a binary one (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`e3`, `E-2`).
pub fn parse_quantity_millis(s: &str) -> Result<i128, QuantityError> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    match bytes.first() {
        Some(b'-') => {
            negative = true;
            pos = 1;
        }
        Some(b'+') => pos = 1,
        _ => {}
    }
    let int_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &s[int_start..pos];
    let mut frac_digits = "";
    if pos < bytes.len() && bytes[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &s[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(QuantityError::Invalid);
    }
    let suffix = &s[pos..];
    let (dec_exp, bin_exp): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or(QuantityError::Invalid)?;
            let digits = rest
                .strip_prefix('-')
                .or_else(|| rest.strip_prefix('+'))
                .unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Invalid);
            }
            let exp: i64 = rest.parse().map_err(|_| QuantityError::TooLarge)?;
            if exp.abs() > 1000 {
                return Err(QuantityError::TooLarge);
            }
            (exp, 0)
        }
    };

    // The digits as one integer N, so value = N × 10^(dec_exp - frac_len) × 2^bin_exp.
    let frac_trimmed = frac_digits.trim_end_matches('0');
    let all: String = format!("{int_digits}{frac_trimmed}");
    let significant = all.trim_start_matches('0');
    if significant.len() > 36 {
        return Err(QuantityError::TooLarge);
    }
    let n: i128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| QuantityError::TooLarge)?
    };
    let frac_len = i64::try_from(frac_trimmed.len()).map_err(|_| QuantityError::TooLarge)?;
    let n = n
        .checked_mul(1i128 << bin_exp)
        .ok_or(QuantityError::TooLarge)?;
    // Thousandths: scale by 10^(dec_exp - frac_len + 3).
    let exp = dec_exp - frac_len + 3;
    let magnitude = if n == 0 {
        0
    } else if exp >= 0 {
        let scale = u32::try_from(exp)
            .ok()
            .and_then(|e| 10i128.checked_pow(e))
            .ok_or(QuantityError::TooLarge)?;
        n.checked_mul(scale).ok_or(QuantityError::TooLarge)?
    } else {
        match u32::try_from(-exp).ok().and_then(|e| 10i128.checked_pow(e)) {
            // Round up, as Kubernetes does.
            Some(div) => (n + div - 1) / div,
            // Smaller than a thousandth, but not zero: one thousandth.
            None => 1,
        }
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// A CPU quantity (`100m`, `0.5`, `2`) in millicores, rounded up.
pub fn parse_cpu_millis(q: &Quantity) -> Result<i64, QuantityError> {
    let millis = parse_quantity_millis(&q.0)?;
    i64::try_from(millis).map_err(|_| QuantityError::TooLarge)
}

/// A memory (or storage) quantity (`64Mi`, `1G`, `1000`) in bytes, rounded up.
pub fn parse_memory_bytes(q: &Quantity) -> Result<i64, QuantityError> {
    let millis = parse_quantity_millis(&q.0)?;
    let bytes = if millis >= 0 {
        (millis + 999) / 1000
    } else {
        millis / 1000
    };
    i64::try_from(bytes).map_err(|_| QuantityError::TooLarge)
}

// ---------------------------------------------------------------------------
// Field errors
// ---------------------------------------------------------------------------

/// One validation failure: the field path and the reason, as `field.Error` words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as Kubernetes names it (`spec.containers[0].image`).
    pub field: String,
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
    fn push(&mut self, field: impl Into<String>, reason: String) {
        self.0.push(FieldError {
            field: field.into(),
            reason,
        });
    }
    fn required(&mut self, field: impl Into<String>, detail: &str) {
        let reason = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.push(field, reason);
    }
    fn invalid<'a>(&mut self, field: impl Into<String>, value: impl Into<Shown<'a>>, detail: &str) {
        self.push(field, format!("Invalid value: {}: {detail}", value.into()));
    }
    fn duplicate<'a>(&mut self, field: impl Into<String>, value: impl Into<Shown<'a>>) {
        self.push(field, format!("Duplicate value: {}", value.into()));
    }
    fn not_found(&mut self, field: impl Into<String>, value: &str) {
        self.push(field, format!("Not found: {value:?}"));
    }
    fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.push(field, format!("Forbidden: {detail}"));
    }
    fn not_supported(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.push(
            field,
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

// ---------------------------------------------------------------------------
// String formats (apimachinery/pkg/util/validation)
// ---------------------------------------------------------------------------

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const ENV_VAR_NAME_MSG: &str = "a valid environment variable name must consist only of printable ASCII characters other than '='";

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// `IsDNS1123Label`: the messages for an invalid label (empty when valid).
pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !matches_dns1123_label(s) {
        if matches_dns1123_subdomain(s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`: the messages for an invalid subdomain (empty when valid).
pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if !matches_dns1123_subdomain(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `IsQualifiedName` (label and annotation keys): `[prefix/]name`.
fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for msg in dns1123_subdomain_errors(prefix) {
                    errs.push(format!("prefix part {msg}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {}",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !name.is_empty() && !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

fn label_value_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !s.is_empty() && !matches_qualified_name_part(s) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsValidPortName` (IANA_SVC_NAME).
fn port_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(max_len_error(15));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// `IsRelaxedEnvVarName`: printable ASCII other than `=`.
fn env_var_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.is_empty() {
        errs.push("environment variable name must be non-empty".to_string());
    }
    if s.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        errs.push(ENV_VAR_NAME_MSG.to_string());
    }
    errs
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

/// Validate a defaulted static pod; every failure, in the order Kubernetes checks them.
pub fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let mut errs = Errors::default();
    validate_metadata(pod, &mut errs);
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    validate_spec(spec, &mut errs);
    errs.0
}

fn validate_metadata(pod: &Pod, errs: &mut Errors) {
    let meta = &pod.metadata;
    match meta.name.as_deref() {
        None | Some("") => errs.required("metadata.name", "name or generateName is required"),
        Some(name) => errs.invalid_each("metadata.name", name, dns1123_subdomain_errors(name)),
    }
    if let Some(ns) = meta.namespace.as_deref() {
        errs.invalid_each("metadata.namespace", ns, dns1123_label_errors(ns));
    }
    for (key, value) in meta.labels.iter().flatten() {
        errs.invalid_each("metadata.labels", key, qualified_name_errors(key));
        errs.invalid_each("metadata.labels", value, label_value_errors(value));
    }
    let mut total = 0usize;
    for (key, value) in meta.annotations.iter().flatten() {
        errs.invalid_each(
            "metadata.annotations",
            key,
            qualified_name_errors(&key.to_ascii_lowercase()),
        );
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    const ANNOTATIONS_MAX: usize = 256 * 1024;
    if total > ANNOTATIONS_MAX {
        errs.push(
            "metadata.annotations",
            format!("Too long: may not be more than {ANNOTATIONS_MAX} bytes"),
        );
    }
}

fn validate_spec(spec: &PodSpec, errs: &mut Errors) {
    let volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default(), errs);
    let host_network = spec.host_network.unwrap_or(false);

    if spec.containers.is_empty() {
        errs.required("spec.containers", "");
    }
    // Container names are unique across init and app containers.
    let mut names: HashSet<&str> = HashSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let path = format!("spec.initContainers[{i}]");
        validate_container(c, &path, true, &volumes, &mut names, host_network, errs);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        validate_container(c, &path, false, &volumes, &mut names, host_network, errs);
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
    }
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

fn check_quantity(errs: &mut Errors, field: &str, q: &Quantity) -> Option<i128> {
    match parse_quantity_millis(&q.0) {
        Ok(v) if v < 0 => {
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
    volumes: &BTreeSet<&str>,
    names: &mut HashSet<&'a str>,
    host_network: bool,
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
        host_network,
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
        volumes,
        privileged,
        errs,
    );
    if let Some(r) = &c.resources {
        validate_resources(r, &format!("{path}.resources"), errs);
    }
    if let Some(sc) = &c.security_context {
        validate_security_context(sc, &format!("{path}.securityContext"), errs);
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
    let mut limits: BTreeMap<&str, (i128, &str)> = BTreeMap::new();
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

fn validate_security_context(sc: &SecurityContext, path: &str, errs: &mut Errors) {
    check_id(errs, &format!("{path}.runAsUser"), sc.run_as_user);
    check_id(errs, &format!("{path}.runAsGroup"), sc.run_as_group);
    if sc.privileged == Some(true) && sc.allow_privilege_escalation == Some(false) {
        errs.invalid(
            format!("{path}.allowPrivilegeEscalation"),
            false,
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu_millis(&q("100m")), Ok(100));
        assert_eq!(parse_cpu_millis(&q("0.5")), Ok(500));
        assert_eq!(parse_cpu_millis(&q("2")), Ok(2000));
        assert_eq!(parse_cpu_millis(&q(".25")), Ok(250));
        assert_eq!(parse_cpu_millis(&q("1.")), Ok(1000));
        assert_eq!(parse_cpu_millis(&q("0.1m")), Ok(1), "rounded up");
        assert_eq!(parse_cpu_millis(&q("1e3")), Ok(1_000_000));
        assert_eq!(parse_cpu_millis(&q("+1")), Ok(1000));
        assert_eq!(parse_cpu_millis(&q("-1")), Ok(-1000));
        assert_eq!(parse_cpu_millis(&q("500u")), Ok(1));
        assert_eq!(parse_cpu_millis(&q("0")), Ok(0));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory_bytes(&q("64Mi")), Ok(64 << 20));
        assert_eq!(parse_memory_bytes(&q("1G")), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes(&q("1000")), Ok(1000));
        assert_eq!(parse_memory_bytes(&q("1.5Ki")), Ok(1536));
        assert_eq!(parse_memory_bytes(&q("1k")), Ok(1000));
        assert_eq!(parse_memory_bytes(&q("1E")), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_memory_bytes(&q("1Ei")), Ok(1 << 60));
        assert_eq!(parse_memory_bytes(&q("1.5")), Ok(2), "rounded up");
        assert_eq!(parse_memory_bytes(&q("129e6")), Ok(129_000_000));
        assert_eq!(parse_memory_bytes(&q("12E-1")), Ok(2));
    }

    #[test]
    fn bad_quantities() {
        for bad in [
            "", "abc", "1Qi", "1 Mi", " 1", "1.2.3", ".", "Mi", "1e", "1e+", "--1", "1mm", "0x10",
        ] {
            assert_eq!(
                parse_quantity_millis(bad),
                Err(QuantityError::Invalid),
                "{bad:?}"
            );
        }
        assert_eq!(parse_memory_bytes(&q("16Ei")), Err(QuantityError::TooLarge));
        assert_eq!(
            parse_quantity_millis("1e99999999999999999999"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(
            parse_quantity_millis("99999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge)
        );
        // Tiny but non-zero rounds up to a thousandth.
        assert_eq!(parse_quantity_millis("1e-900"), Ok(1));
    }

    #[test]
    fn string_formats() {
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
    }
}
