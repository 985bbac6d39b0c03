//! The table of served resources that drives every generic handler.

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// Plural name in URLs and storage keys (`pods`).
    pub name: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// The kind (`Pod`).
    pub kind: &'static str,
    /// The API group (`""` for core).
    pub group: &'static str,
    /// The API version (`v1`).
    pub version: &'static str,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Discovery categories.
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `binding`; `log` and `exec` are
    /// proxied to the node agent, see [`super::proxy`]).
    pub subresources: &'static [&'static str],
}

impl Resource {
    /// `apiVersion` of the resource's objects (`v1`, `coordination.k8s.io/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group-qualified resource as kube-apiserver names it in messages
    /// (`pods`, `leases.coordination.k8s.io`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.name.to_string()
        } else {
            format!("{}.{}", self.name, self.group)
        }
    }

    /// The kind of the resource's lists (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether the objects have a status subresource (then a main-resource
    /// update keeps the stored status).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

/// Every resource the server serves.
pub static RESOURCES: &[Resource] = &[
    Resource {
        name: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        group: "",
        version: "v1",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &["status"],
    },
    Resource {
        name: "pods",
        singular: "pod",
        kind: "Pod",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &["status", "binding", "log", "exec"],
    },
    Resource {
        name: "nodes",
        singular: "node",
        kind: "Node",
        group: "",
        version: "v1",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &["status"],
    },
    Resource {
        name: "events",
        singular: "event",
        kind: "Event",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        name: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        name: "secrets",
        singular: "secret",
        kind: "Secret",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        name: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        group: "",
        version: "v1",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        name: "leases",
        singular: "lease",
        kind: "Lease",
        group: "coordination.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
];

/// The resource `name` of `group`/`version`, if served.
pub fn find(group: &str, version: &str, name: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.name == name)
}

/// The served group/versions other than core: `(group, version)`.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
