//! Discovery documents, `/version` and the minimal OpenAPI v3 kubectl needs
//! to use server-side field validation.

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource, groups};

/// The version the server reports.
pub const GIT_VERSION: &str = "v1.33.0-berth";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64", "aarch64" => "arm64", other => other,
        }),
    })
}

/// `/api`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    // metrics.k8s.io last, where kube-apiserver lists aggregated groups.
    let mut groups = groups;
    groups.push(super::metrics::rest::api_group_entry());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>` (`None` when the group is not served).
pub fn api_group(group: &str) -> Option<Value> {
    if group == super::metrics::GROUP {
        return Some(super::metrics::rest::api_group());
    }
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    Some(json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
        "versions": [gv.clone()], "preferredVersion": gv}))
}

fn verbs(r: &Resource) -> Vec<&'static str> {
    r.verbs().to_vec()
}

/// The APIResourceList of `group`/`version` (`None` when not served).
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (super::metrics::GROUP, super::metrics::rest::VERSION) {
        return Some(super::metrics::rest::resource_list());
    }
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &served {
        let mut entry = json!({
            "name": r.name,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in r.subresources {
            let (kind, group_version, sub_verbs) = match *sub {
                "binding" => ("Binding", None, vec!["create"]),
                "log" => ("Pod", None, vec!["get"]),
                "exec" => ("PodExecOptions", None, vec!["create", "get"]),
                _ => (r.kind, None::<&str>, vec!["get", "patch", "update"]),
            };
            let mut e = json!({
                "name": format!("{}/{sub}", r.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": sub_verbs,
            });
            if let Some(gv) = group_version {
                e["version"] = json!(gv);
            }
            resources.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The protobuf media type of `/openapi/v2` (gnostic's `openapi_v2.Document`)
/// as kube-openapi answers it: clients ask for `…spec.v2@v1.0+protobuf`, but
/// `@` is no MIME token character and Go's `mime.ParseMediaType` in kubectl
/// rejects it, so the answer uses the dotted form.
pub const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2`: a document with no definitions, as protobuf (what kubectl
/// asks for) or JSON.
///
/// Why serve it at all: kubectl validates a `kind: List` (what `kubectl get -o
/// yaml` writes) on the client against the v2 models, because the v3
/// field-validation check answers "unsupported" for `v1/List`; with no
/// `/openapi/v2` every `kubectl apply -f list.yaml` fails. With no
/// definitions, kubectl finds no model for the items and skips them, and
/// each item is still validated by this server (kubectl sends every item
/// with `fieldValidation=Strict`), so nothing goes unchecked. The v3
/// documents stay the schema source.
pub fn openapi_v2(protobuf: bool) -> (&'static str, Vec<u8>) {
    let title = "berth-apiserver";
    let version = env!("CARGO_PKG_VERSION");
    if !protobuf {
        let doc = serde_json::json!({"swagger": "2.0",
            "info": {"title": title, "version": version}, "paths": {}, "definitions": {}});
        return (
            "application/json",
            serde_json::to_vec(&doc).unwrap_or_default(),
        );
    }
    // Document { swagger = 1: "2.0", info = 2: Info { title = 1, version = 2 } },
    // encoded by hand: two strings and one nested message.
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push(number << 3 | 2);
        // Lengths here are far below 128: one varint byte.
        out.push(u8::try_from(bytes.len()).unwrap_or(0));
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, title.as_bytes());
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    (OPENAPI_V2_PROTOBUF, doc)
}

/// The `/openapi/v3` index.
pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("".to_string(), "v1")];
    gvs.extend(groups().into_iter().map(|(g, v)| (g.to_string(), v)));
    for (g, v) in gvs {
        let p = gv_path(&g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=berth-{}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The `/openapi/v3/<api/v1|apis/g/v>` document: only the PATCH operations
/// and their `fieldValidation` parameter, which is what kubectl's
/// server-side-validation check reads. Schemas are not served.
pub fn openapi_v3_group(path: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| gv_path(r.group, r.version) == path)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for r in served {
        let base = if r.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", r.name)
        } else {
            format!("/{path}/{}/{{name}}", r.name)
        };
        let op = json!({
            "description": format!("partially update the specified {}", r.kind),
            "operationId": format!("patch{}", r.kind),
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        });
        paths.insert(base, json!({"patch": op}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// The content type of aggregated discovery (`apidiscovery.k8s.io/v2`).
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=APIGroupDiscoveryList")
            && params.contains(&"v=v2")
            && params.contains(&"g=apidiscovery.k8s.io")
    })
}

/// The aggregated discovery document of `/api` (`legacy`) or `/apis`.
pub fn aggregated(legacy: bool) -> Value {
    let gvs: Vec<(&str, &str)> = if legacy { vec![("", "v1")] } else { groups() };
    let items: Vec<Value> = gvs
        .into_iter()
        .map(|(g, v)| {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == g && r.version == v)
                .map(|r| {
                    let kind = json!({"group": g, "version": v, "kind": r.kind});
                    let subs: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|s| match *s {
                            "binding" => json!({"subresource": s,
                                "responseKind": {"group": "", "version": "v1", "kind": "Binding"},
                                "verbs": ["create"]}),
                            "log" => json!({"subresource": s, "responseKind": kind,
                                "verbs": ["get"]}),
                            "exec" => json!({"subresource": s,
                                "responseKind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
                                "verbs": ["create", "get"]}),
                            _ => json!({"subresource": s, "responseKind": kind,
                                "verbs": ["get", "patch", "update"]}),
                        })
                        .collect();
                    let mut e = json!({
                        "resource": r.name,
                        "responseKind": kind,
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": verbs(r),
                    });
                    if !r.short_names.is_empty() {
                        e["shortNames"] = json!(r.short_names);
                    }
                    if !r.categories.is_empty() {
                        e["categories"] = json!(r.categories);
                    }
                    if !subs.is_empty() {
                        e["subresources"] = json!(subs);
                    }
                    e
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !g.is_empty() {
                metadata["name"] = json!(g);
            }
            json!({"metadata": metadata,
                "versions": [{"version": v, "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    let mut items = items;
    if !legacy {
        items.push(super::metrics::rest::aggregated_item());
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items})
}
