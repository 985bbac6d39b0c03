//! Server-side `Table` rendering (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).

use serde_json::{Value, json};

use super::objects::{parse_time, str_at};

/// What a row's `object` holds (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parse the query value (unknown → Metadata).
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a `meta.k8s.io/v1` Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && params.contains(&"v=v1")
    })
}

fn col(name: &str, ty: &str, format: &str, description: &str, priority: i32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

/// The "Name" and "Age" columns every kind has.
fn name_and_age() -> (Value, Value) {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age = col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    (name, age)
}

fn pod_columns() -> Vec<Value> {
    let (name, age) = name_and_age();
    vec![
        name,
        col(
            "Ready",
            "string",
            "",
            "The aggregate readiness state of this pod for accepting traffic.",
            0,
        ),
        col(
            "Status",
            "string",
            "",
            "The aggregate status of the containers in this pod.",
            0,
        ),
        col(
            "Restarts",
            "string",
            "",
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            0,
        ),
        age,
        col(
            "IP",
            "string",
            "",
            "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            1,
        ),
        col(
            "Node",
            "string",
            "",
            "NodeName is a request to schedule this pod onto a specific node.",
            1,
        ),
        col(
            "Nominated Node",
            "string",
            "",
            "nominatedNodeName is set only when this pod preempts other pods on the node.",
            1,
        ),
        col(
            "Readiness Gates",
            "string",
            "",
            "If specified, all readiness gates will be evaluated for pod readiness.",
            1,
        ),
    ]
}

fn node_columns() -> Vec<Value> {
    let (name, age) = name_and_age();
    vec![
        name,
        col("Status", "string", "", "The status of the node", 0),
        col("Roles", "string", "", "The roles of the node", 0),
        age,
        col(
            "Version",
            "string",
            "",
            "Kubelet Version reported by the node.",
            0,
        ),
        col(
            "Internal-IP",
            "string",
            "",
            "List of addresses reachable to the node.",
            1,
        ),
        col(
            "External-IP",
            "string",
            "",
            "List of addresses reachable to the node.",
            1,
        ),
        col(
            "OS-Image",
            "string",
            "",
            "OS Image reported by the node.",
            1,
        ),
        col(
            "Kernel-Version",
            "string",
            "",
            "Kernel Version reported by the node.",
            1,
        ),
        col(
            "Container-Runtime",
            "string",
            "",
            "Container Runtime Version reported by the node.",
            1,
        ),
    ]
}

fn namespace_columns() -> Vec<Value> {
    let (name, age) = name_and_age();
    vec![
        name,
        col("Status", "string", "", "The status of the namespace", 0),
        age,
    ]
}

/// Upstream's printers.go `eventColumnDefinitions`.
fn event_columns() -> Vec<Value> {
    vec![
        col("Last Seen", "string", "", "", 0),
        col("Type", "string", "", "", 0),
        col("Reason", "string", "", "", 0),
        col("Object", "string", "", "", 0),
        col("Subobject", "string", "", "", 1),
        col("Source", "string", "", "", 1),
        col("Message", "string", "", "", 0),
        col("First Seen", "string", "", "", 1),
        col("Count", "string", "", "", 1),
        col("Name", "string", "", "", 1),
    ]
}

fn default_columns() -> Vec<Value> {
    let (name, age) = name_and_age();
    vec![name, age]
}

fn since(t: &str) -> Option<String> {
    parse_time(t).map(|t| human_duration(jiff::Timestamp::now().as_second() - t.as_second()))
}

/// The cells of an Event, as upstream's `printEvent`.
fn event_cells(obj: &Value) -> Vec<Value> {
    let first = since(str_at(obj, "/firstTimestamp"))
        .or_else(|| since(str_at(obj, "/eventTime")))
        .unwrap_or_else(|| "<unknown>".into());
    let mut last = since(str_at(obj, "/lastTimestamp")).unwrap_or_else(|| first.clone());
    let mut count = obj.pointer("/count").and_then(Value::as_i64).unwrap_or(0);
    if obj.pointer("/series").is_some_and(Value::is_object) {
        if let Some(t) = since(str_at(obj, "/series/lastObservedTime")) {
            last = t;
        }
        count = obj
            .pointer("/series/count")
            .and_then(Value::as_i64)
            .unwrap_or(count);
    } else if count == 0 {
        count = 1;
    }
    let kind = str_at(obj, "/involvedObject/kind").to_lowercase();
    let target = match str_at(obj, "/involvedObject/name") {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let first_non_empty = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty(
        str_at(obj, "/source/component"),
        str_at(obj, "/reportingComponent"),
    );
    let instance = first_non_empty(
        str_at(obj, "/source/host"),
        str_at(obj, "/reportingInstance"),
    );
    let source = match (component.is_empty(), instance.is_empty()) {
        (true, _) => String::new(),
        (false, true) => component,
        (false, false) => format!("{component}, {instance}"),
    };
    vec![
        json!(last),
        json!(str_at(obj, "/type")),
        json!(str_at(obj, "/reason")),
        json!(target),
        json!(str_at(obj, "/involvedObject/fieldPath")),
        json!(source),
        json!(str_at(obj, "/message").trim()),
        json!(first),
        json!(count),
        json!(str_at(obj, "/metadata/name")),
    ]
}

/// kubectl's short human duration (`5s`, `3m`, `2d`, `4y`…).
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let dd = d % 365;
        if dd == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{dd}d", d / 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value) -> String {
    match parse_time(str_at(obj, "/metadata/creationTimestamp")) {
        Some(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.into()
    }
}

/// The pod's STATUS column, computed as kubectl's printer does.
pub fn pod_status(pod: &Value) -> (String, usize, usize, i64) {
    let empty = Vec::new();
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let total = containers.len();
    let mut ready = 0;
    let mut restarts = 0i64;
    let mut reason = str_at(pod, "/status/phase").to_string();
    let status_reason = str_at(pod, "/status/reason");
    if !status_reason.is_empty() {
        reason = status_reason.to_string();
    }
    let init_specs = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    let inits = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, c) in inits.iter().enumerate() {
        restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        let term = c.pointer("/state/terminated");
        let wait_reason = str_at(c, "/state/waiting/reason");
        if let Some(t) = term {
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            let r = str_at(t, "/reason");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if let Some(sig) = t.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                format!("Init:Signal:{sig}")
            } else {
                format!(
                    "Init:ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                )
            };
        } else if !wait_reason.is_empty() && wait_reason != "PodInitializing" {
            reason = format!("Init:{wait_reason}");
        } else {
            reason = format!("Init:{i}/{init_specs}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for c in statuses.iter().rev() {
            restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            let wait_reason = str_at(c, "/state/waiting/reason");
            let term = c.pointer("/state/terminated");
            let term_reason = term.map(|t| str_at(t, "/reason")).unwrap_or("");
            if !wait_reason.is_empty() {
                reason = wait_reason.to_string();
            } else if !term_reason.is_empty() {
                reason = term_reason.to_string();
            } else if let Some(t) = term {
                reason = match t.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                    Some(sig) => format!("Signal:{sig}"),
                    None => format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True")
                });
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if status_reason == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (reason, ready, total, restarts)
}

fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "Ready"))
        .map(|c| str_at(c, "/status").to_string());
    let mut s = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(node: &Value, ty: &str) -> String {
    let addr = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| str_at(x, "/type") == ty))
        .map(|x| str_at(x, "/address"))
        .unwrap_or("");
    or_none(addr)
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    let (status, ready, total, restarts) = pod_status(obj);
    let gates = obj
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .filter(|g| !g.is_empty())
        .map(|g| {
            let conds = obj.pointer("/status/conditions").and_then(Value::as_array);
            let ok = g
                .iter()
                .filter(|gate| {
                    let t = str_at(gate, "/conditionType");
                    conds.is_some_and(|cs| {
                        cs.iter()
                            .any(|c| str_at(c, "/type") == t && str_at(c, "/status") == "True")
                    })
                })
                .count();
            format!("{ok}/{}", g.len())
        })
        .unwrap_or_else(|| "<none>".into());
    vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(obj)),
        json!(or_none(str_at(obj, "/status/podIP"))),
        json!(or_none(str_at(obj, "/spec/nodeName"))),
        json!(or_none(str_at(obj, "/status/nominatedNodeName"))),
        json!(gates),
    ]
}

fn node_cells(obj: &Value) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    vec![
        name,
        json!(node_status(obj)),
        json!(node_roles(obj)),
        json!(age(obj)),
        json!(str_at(obj, "/status/nodeInfo/kubeletVersion")),
        json!(node_address(obj, "InternalIP")),
        json!(node_address(obj, "ExternalIP")),
        json!(or_none(str_at(obj, "/status/nodeInfo/osImage"))),
        json!(or_none(str_at(obj, "/status/nodeInfo/kernelVersion"))),
        json!(or_none(str_at(
            obj,
            "/status/nodeInfo/containerRuntimeVersion"
        ))),
    ]
}

fn namespace_cells(obj: &Value) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    vec![name, json!(str_at(obj, "/status/phase")), json!(age(obj))]
}

fn default_cells(obj: &Value) -> Vec<Value> {
    vec![json!(str_at(obj, "/metadata/name")), json!(age(obj))]
}

/// How a resource's objects print as Table rows (kube-apiserver's per-resource
/// `TableConvertor`, from printers.go): named by each registry entry.
pub struct Printer {
    /// The column definitions.
    pub columns: fn() -> Vec<Value>,
    /// One object's cells, one per column.
    pub cells: fn(&Value) -> Vec<Value>,
}

/// Pods: `kubectl get pods` columns.
pub static POD: Printer = Printer {
    columns: pod_columns,
    cells: pod_cells,
};
/// Nodes: `kubectl get nodes` columns.
pub static NODE: Printer = Printer {
    columns: node_columns,
    cells: node_cells,
};
/// Namespaces: name, status, age.
pub static NAMESPACE: Printer = Printer {
    columns: namespace_columns,
    cells: namespace_cells,
};
/// Events: `kubectl get events` columns.
pub static EVENT: Printer = Printer {
    columns: event_columns,
    cells: event_cells,
};
/// Every other kind: name and age.
pub static DEFAULT: Printer = Printer {
    columns: default_columns,
    cells: default_cells,
};

/// Upstream's `clusterRoleColumnDefinitions` (roles too).
fn role_columns() -> Vec<Value> {
    let (name, _) = name_and_age();
    vec![
        name,
        col(
            "Created At",
            "date",
            "",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0,
        ),
    ]
}

/// `printRole` / `printClusterRole`: the name and the creation time (RFC 3339, UTC).
fn role_cells(obj: &Value) -> Vec<Value> {
    let created = parse_time(str_at(obj, "/metadata/creationTimestamp"))
        .map(super::objects::format_time)
        .unwrap_or_default();
    vec![json!(str_at(obj, "/metadata/name")), json!(created)]
}

/// Upstream's `roleBindingsColumnDefinitions` (cluster role bindings too).
fn role_binding_columns() -> Vec<Value> {
    let (name, age) = name_and_age();
    vec![
        name,
        col(
            "Role",
            "string",
            "",
            "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable.",
            0,
        ),
        age,
        col("Users", "string", "", "Users in the roleBinding", 1),
        col("Groups", "string", "", "Groups in the roleBinding", 1),
        col(
            "ServiceAccounts",
            "string",
            "",
            "ServiceAccounts in the roleBinding",
            1,
        ),
    ]
}

/// `printRoleBinding`: `Kind/name` of the role, then the subjects by kind
/// (`SubjectsStrings`: service accounts as `namespace/name`).
fn role_binding_cells(obj: &Value) -> Vec<Value> {
    let role = format!(
        "{}/{}",
        str_at(obj, "/roleRef/kind"),
        str_at(obj, "/roleRef/name")
    );
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in obj
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(s, "/name").to_string();
        match str_at(s, "/kind") {
            "User" => users.push(name),
            "Group" => groups.push(name),
            "ServiceAccount" => match str_at(s, "/namespace") {
                "" => sas.push(name),
                ns => sas.push(format!("{ns}/{name}")),
            },
            _ => {}
        }
    }
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(role),
        json!(age(obj)),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

/// Roles and cluster roles: `NAME, CREATED AT`.
pub static ROLE: Printer = Printer {
    columns: role_columns,
    cells: role_cells,
};
/// Role bindings and cluster role bindings: `NAME, ROLE, AGE` (+ wide
/// `USERS, GROUPS, SERVICEACCOUNTS`).
pub static ROLE_BINDING: Printer = Printer {
    columns: role_binding_columns,
    cells: role_binding_cells,
};

/// Upstream's `runtimeClassColumnDefinitions`.
fn runtime_class_columns() -> Vec<Value> {
    let (name, age) = name_and_age();
    vec![
        name,
        col(
            "Handler",
            "string",
            "",
            "handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class. The possible values are specific to the node & CRI configuration.  It is assumed that all handlers are available on every node, and handlers of the same name are equivalent on every node. For example, a handler called \"runc\" might specify that the runc OCI runtime (using native Linux containers) will be used to run the containers in a pod. The Handler must be lowercase, conform to the DNS Label (RFC 1123) requirements, and is immutable.",
            0,
        ),
        age,
    ]
}

/// `printRuntimeClass`: name, handler, age.
fn runtime_class_cells(obj: &Value) -> Vec<Value> {
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(str_at(obj, "/handler")),
        json!(age(obj)),
    ]
}

/// RuntimeClasses: `NAME, HANDLER, AGE`.
pub static RUNTIME_CLASS: Printer = Printer {
    columns: runtime_class_columns,
    cells: runtime_class_cells,
};

/// One table row.
pub fn row(printer: &Printer, obj: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": (printer.cells)(obj)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => r["object"] = obj.clone(),
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
    }
    r
}

/// A whole table of `objects`; `list_meta` becomes the table's `metadata`.
pub fn table(
    printer: &Printer,
    objects: &[Value],
    include: IncludeObject,
    list_meta: Value,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": (printer.columns)(),
        "rows": objects.iter().map(|o| row(printer, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_rows_match_kubectl_get_events() {
        let ev = json!({"kind": "Event", "metadata": {"name": "web.1"},
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{web}"},
            "reason": "BackOff", "type": "Warning", "message": " Back-off restarting \n",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2020-01-01T00:00:00Z", "count": 3});
        let cells = (EVENT.cells)(&ev);
        assert_eq!(cells.len(), (EVENT.columns)().len());
        assert_eq!(cells[1], "Warning");
        assert_eq!(cells[2], "BackOff");
        assert_eq!(cells[3], "pod/web");
        assert_eq!(cells[4], "spec.containers{web}");
        assert_eq!(cells[5], "kubelet, node-a");
        assert_eq!(cells[6], "Back-off restarting");
        // No lastTimestamp: last seen is the first.
        assert_eq!(cells[0], cells[7]);
        assert_eq!(cells[8], 3);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 3), "3h");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn statuses() {
        let p = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "a", "ready": false, "restartCount": 4,
              "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status(&p), ("CrashLoopBackOff".into(), 0, 1, 4));
        let p = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0,
              "state": {"running": {}}}]}});
        assert_eq!(pod_status(&p).0, "Running");
        let p = json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&p).0, "Terminating");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
