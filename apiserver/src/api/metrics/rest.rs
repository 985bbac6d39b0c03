//! The `metrics.k8s.io/v1beta1` endpoints, as metrics-server serves them
//! (`pkg/api/node.go`, `pod.go`, `filter.go`, `table.go`):
//!
//! - `GET /apis/metrics.k8s.io/v1beta1/nodes[/{name}]`: `NodeMetrics`;
//! - `GET .../pods` (every namespace), `.../namespaces/{ns}/pods[/{name}]`:
//!   `PodMetrics`.
//!
//! A list walks the stored Nodes (Pods) that match `labelSelector` and
//! `fieldSelector` (`metadata.name`, `metadata.namespace` only: upstream's
//! `DefaultMetaV1FieldSelectorConversion`) and shows those the store has
//! usage for, with the object's labels, in name (namespace, name) order. A
//! get of a missing Node (Pod) answers the lister's 404 (`node "x" not
//! found`, `pods "x" not found`), of one without usage
//! `nodemetrics.metrics.k8s.io "x" not found` /
//! `podmetrics.metrics.k8s.io "ns/x" not found`. Watch is answered 405
//! `MethodNotSupported`, other verbs 405. Requests are authorized like any
//! other: group `metrics.k8s.io`, resources `nodes` and `pods`.

use std::collections::HashMap;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::decode::PodRef;
use super::format::{cpu_quantity, go_duration, memory_quantity, sum};
use super::store::Usage;
use crate::api::ApiState;
use crate::api::auth::User;
use crate::api::authz;
use crate::api::error::{ApiError, ApiResult};
use crate::api::objects::{format_time, now_rfc3339, query_flag, str_at};
use crate::api::resources::Resource;
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::api::strategy::Plain;
use crate::api::table::{self, IncludeObject};
use crate::storage::{ListOptions, collection_prefix, object_key};

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its one version.
pub const VERSION: &str = "v1beta1";
/// `apiVersion` of its objects.
pub const API_VERSION: &str = "metrics.k8s.io/v1beta1";

fn read_only(_: &Value) -> Result<Value, String> {
    Err("metrics.k8s.io objects are computed, never written".to_string())
}

/// `nodes.metrics.k8s.io` (kind `NodeMetrics`), for authorization and
/// discovery. Not in [`crate::api::resources::RESOURCES`]: nothing is stored.
pub static NODES: Resource = Resource {
    name: "nodes",
    singular: "",
    kind: "NodeMetrics",
    group: GROUP,
    version: VERSION,
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &Plain,
    printer: &table::DEFAULT,
    schema: read_only,
};

/// `pods.metrics.k8s.io` (kind `PodMetrics`); see [`NODES`].
pub static PODS: Resource = Resource {
    name: "pods",
    singular: "",
    kind: "PodMetrics",
    group: GROUP,
    version: VERSION,
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &Plain,
    printer: &table::DEFAULT,
    schema: read_only,
};

/// The verbs served.
pub const VERBS: &[&str] = &["get", "list"];

// ---------------------------------------------------------------------------
// Discovery.

fn group_version() -> Value {
    json!({"groupVersion": API_VERSION, "version": VERSION})
}

/// The group's entry in `/apis` (`APIGroupList.groups[]`).
pub fn api_group_entry() -> Value {
    json!({"name": GROUP, "versions": [group_version()], "preferredVersion": group_version()})
}

/// `/apis/metrics.k8s.io`.
pub fn api_group() -> Value {
    let mut doc = json!({"kind": "APIGroup", "apiVersion": "v1"});
    if let (Some(d), Value::Object(e)) = (doc.as_object_mut(), api_group_entry()) {
        d.extend(e);
    }
    doc
}

/// `/apis/metrics.k8s.io/v1beta1` (metrics-server's singular names are empty).
pub fn resource_list() -> Value {
    let resources: Vec<Value> = [&NODES, &PODS]
        .iter()
        .map(|r| {
            json!({"name": r.name, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": VERBS})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": resources})
}

/// The group's item in aggregated discovery (`APIGroupDiscoveryList.items[]`).
pub fn aggregated_item() -> Value {
    let resources: Vec<Value> = [&NODES, &PODS]
        .iter()
        .map(|r| {
            json!({
                "resource": r.name,
                "responseKind": {"group": GROUP, "version": VERSION, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": VERBS,
            })
        })
        .collect();
    json!({"metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{"version": VERSION, "resources": resources, "freshness": "Current"}]})
}

// ---------------------------------------------------------------------------
// Requests.

/// What a request addresses.
struct Target<'a> {
    res: &'static Resource,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

/// The request of one API call.
pub struct Call<'a> {
    /// The authenticated user (`None`: no authentication configured).
    pub user: Option<&'a User>,
    /// The method.
    pub method: &'a Method,
    /// The `Accept` header.
    pub accept: &'a str,
    /// The query parameters.
    pub params: &'a HashMap<String, String>,
}

/// Serve `/apis/metrics.k8s.io/{version}/{rest...}`.
pub async fn serve(
    state: &ApiState,
    call: &Call<'_>,
    version: &str,
    rest: &[&str],
) -> ApiResult<Response> {
    if version != VERSION {
        return Err(ApiError::NoRoute);
    }
    let (rest, watch_path) = match rest {
        ["watch", r @ ..] => (r, true),
        r => (r, false),
    };
    let target = match rest {
        ["nodes"] => Target {
            res: &NODES,
            namespace: None,
            name: None,
        },
        ["nodes", name] => Target {
            res: &NODES,
            namespace: None,
            name: Some(name),
        },
        ["pods"] => Target {
            res: &PODS,
            namespace: None,
            name: None,
        },
        ["namespaces", ns, "pods"] => Target {
            res: &PODS,
            namespace: Some(ns),
            name: None,
        },
        ["namespaces", ns, "pods", name] => Target {
            res: &PODS,
            namespace: Some(ns),
            name: Some(name),
        },
        _ => return Err(ApiError::NoRoute),
    };
    let watch = watch_path || call.params.get("watch").is_some_and(|v| query_flag(v));
    let param = |k: &str| call.params.get(k).map_or("", String::as_str);
    let attrs = authz::Attributes {
        verb: authz::verb(call.method, target.name.is_some(), watch),
        res: target.res,
        namespace: target.namespace,
        name: target.name,
        sub: None,
        field_selector: param("fieldSelector"),
        body: &[],
    };
    if let Err(denied) = authz::authorize(state, call.user, &attrs).await {
        return Ok(denied.into_response());
    }
    if *call.method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    if watch_path {
        // No watch routes are installed for these resources upstream.
        return Err(ApiError::NoRoute);
    }
    if watch {
        return Ok(watch_not_supported(target.res));
    }
    let include = IncludeObject::parse(call.params.get("includeObject").map(String::as_str));
    let as_table = table::wants_table(call.accept);
    let (items, single) = match (target.res.kind, target.name) {
        ("NodeMetrics", Some(name)) => (vec![get_node(state, name).await?], true),
        ("NodeMetrics", None) => (list_nodes(state, call.params).await?, false),
        (_, Some(name)) => {
            let ns = target.namespace.unwrap_or("");
            (vec![get_pod(state, ns, name).await?], true)
        }
        (_, None) => (
            list_pods(state, target.namespace, call.params).await?,
            false,
        ),
    };
    let body = if as_table {
        metrics_table(target.res, &items, include)
    } else if single {
        let mut obj = json!({"kind": target.res.kind, "apiVersion": API_VERSION});
        if let (Some(o), Some(Value::Object(item))) = (
            obj.as_object_mut(),
            items.into_iter().next().map(|i| i.object),
        ) {
            o.extend(item);
        }
        obj
    } else {
        json!({
            "kind": format!("{}List", target.res.kind),
            "apiVersion": API_VERSION,
            "metadata": {},
            "items": items.into_iter().map(|i| i.object).collect::<Vec<_>>(),
        })
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

/// apimachinery's `NewMethodNotSupported(resource, "watch")`.
fn watch_not_supported(res: &Resource) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("watch is not supported on resources of kind {:?}", res.qualified()),
        "reason": "MethodNotAllowed",
        "details": {"group": res.group, "kind": res.name},
        "code": 405,
    });
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One metrics object and its usage (for Table cells).
struct Item {
    object: Value,
    /// Total CPU (nanocores) and memory (bytes).
    cpu: u64,
    memory: u64,
    window: std::time::Duration,
}

/// The upstream Table (`addNodeMetricsToTable`, `addPodMetricsToTable`):
/// name, `cpu`, `memory` (a pod's summed over its containers), window.
fn metrics_table(res: &Resource, items: &[Item], include: IncludeObject) -> Value {
    let col = |name: &str, format: &str, description: &str| {
        json!({"name": name, "type": "string", "format": format,
            "description": description, "priority": 0})
    };
    let columns = vec![
        col("Name", "name", "Name of the resource"),
        col("cpu", "quantity", ""),
        col("memory", "quantity", ""),
        col("Window", "duration", ""),
    ];
    let rows: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut row = json!({"cells": [
                str_at(&i.object, "/metadata/name"),
                cpu_quantity(i.cpu),
                memory_quantity(i.memory),
                go_duration(i.window),
            ]});
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => {
                    let mut obj = json!({"kind": res.kind, "apiVersion": API_VERSION});
                    if let (Some(o), Value::Object(fields)) =
                        (obj.as_object_mut(), i.object.clone())
                    {
                        o.extend(fields);
                    }
                    row["object"] = obj;
                }
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": i.object.get("metadata").cloned().unwrap_or(json!({})),
                    });
                }
            }
            row
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": columns, "rows": rows})
}

fn time(ns: i64) -> String {
    format_time(
        jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

fn usage_json(cpu: u64, memory: u64) -> Value {
    json!({"cpu": cpu_quantity(cpu), "memory": memory_quantity(memory)})
}

/// `metadata` of a metrics object: the source object's name (namespace)
/// and labels, created now (as upstream: these objects are made per request).
fn metadata(source: &Value, namespaced: bool) -> Value {
    let mut meta = json!({"name": str_at(source, "/metadata/name")});
    if namespaced {
        meta["namespace"] = json!(str_at(source, "/metadata/namespace"));
    }
    meta["creationTimestamp"] = json!(now_rfc3339());
    if let Some(labels) = source
        .pointer("/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
    {
        meta["labels"] = labels.clone();
    }
    meta
}

fn node_item(node: &Value, u: &Usage) -> Item {
    Item {
        object: json!({
            "metadata": metadata(node, false),
            "timestamp": time(u.timestamp_ns),
            "window": go_duration(u.window),
            "usage": usage_json(u.cpu_nanocores, u.memory_bytes),
        }),
        cpu: u.cpu_nanocores,
        memory: u.memory_bytes,
        window: u.window,
    }
}

fn pod_item(state: &ApiState, pod: &Value) -> Option<Item> {
    let key = PodRef {
        namespace: str_at(pod, "/metadata/namespace").to_string(),
        name: str_at(pod, "/metadata/name").to_string(),
    };
    let u = state.metrics.pod(&key)?;
    let containers: Vec<Value> = u
        .containers
        .iter()
        .map(
            |(name, c)| json!({"name": name, "usage": usage_json(c.cpu_nanocores, c.memory_bytes)}),
        )
        .collect();
    Some(Item {
        object: json!({
            "metadata": metadata(pod, true),
            "timestamp": time(u.timestamp_ns),
            "window": go_duration(u.window),
            "containers": containers,
        }),
        cpu: sum(u.containers.iter().map(|(_, c)| c.cpu_nanocores)),
        memory: sum(u.containers.iter().map(|(_, c)| c.memory_bytes)),
        window: u.window,
    })
}

/// A stored object (`None`: absent).
async fn load(
    state: &ApiState,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Option<Value>> {
    let key =
        object_key(resource, namespace, name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(kv) = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::from_storage(e, resource, name))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| ApiError::Internal(format!("decoding {resource} {name:?}: {e}")))
}

/// Every stored object of `resource` (in `namespace`), in key order.
async fn load_all(
    state: &ApiState,
    resource: &str,
    namespace: Option<&str>,
) -> ApiResult<Vec<Value>> {
    let prefix =
        collection_prefix(resource, namespace).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let listed = state
        .storage
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| ApiError::from_storage(e, resource, ""))?;
    listed
        .items
        .iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::Internal(format!("decoding {}: {e}", kv.key)))
        })
        .collect()
}

/// The selectors of a list: labels on the source object, fields
/// `metadata.name` and `metadata.namespace` (anything else is a 400
/// `field label not supported`, as upstream).
fn selectors(
    res: &Resource,
    params: &HashMap<String, String>,
) -> ApiResult<(LabelSelector, FieldSelector)> {
    let get = |k: &str| params.get(k).map_or("", String::as_str);
    Ok((
        LabelSelector::parse(get("labelSelector"))?,
        FieldSelector::parse(get("fieldSelector"), res.kind)?,
    ))
}

fn not_found(resource: &str, kind: &str, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: resource.to_string(),
        name: name.to_string(),
        kind: kind.to_string(),
    }
}

async fn get_node(state: &ApiState, name: &str) -> ApiResult<Item> {
    // The Node lister's own NotFound: `node "x" not found`.
    let node = load(state, "nodes", None, name)
        .await?
        .ok_or_else(|| not_found("node", "node", name))?;
    let usage = state
        .metrics
        .node(name)
        .ok_or_else(|| not_found("nodemetrics.metrics.k8s.io", "nodemetrics", name))?;
    Ok(node_item(&node, &usage))
}

async fn list_nodes(state: &ApiState, params: &HashMap<String, String>) -> ApiResult<Vec<Item>> {
    let (labels, fields) = selectors(&NODES, params)?;
    let nodes = load_all(state, "nodes", None).await?;
    Ok(nodes
        .iter()
        .filter(|n| labels.matches(n) && fields.matches(n))
        .filter_map(|n| {
            let usage = state.metrics.node(str_at(n, "/metadata/name"))?;
            Some(node_item(n, &usage))
        })
        .collect())
}

async fn get_pod(state: &ApiState, namespace: &str, name: &str) -> ApiResult<Item> {
    let pod = load(state, "pods", Some(namespace), name)
        .await?
        .ok_or_else(|| not_found("pods", "pods", name))?;
    pod_item(state, &pod).ok_or_else(|| {
        not_found(
            "podmetrics.metrics.k8s.io",
            "podmetrics",
            &format!("{namespace}/{name}"),
        )
    })
}

async fn list_pods(
    state: &ApiState,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> ApiResult<Vec<Item>> {
    let (labels, fields) = selectors(&PODS, params)?;
    let pods = load_all(state, "pods", namespace).await?;
    Ok(pods
        .iter()
        .filter(|p| labels.matches(p) && fields.matches(p))
        .filter_map(|p| pod_item(state, p))
        .collect())
}
