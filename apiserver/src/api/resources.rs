//! The table of served resources that drives every generic handler: one entry
//! per resource, with its [`Strategy`] for what differs by kind. Adding a
//! resource is one entry here (and a strategy if the generic rules are not enough).

use std::fmt;

use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

use super::rbac::strategy::{BindingStrategy, ClusterRoleStrategy, RoleStrategy};
use super::strategy::{
    ConfigMapStrategy, NamespaceStrategy, Plain, PodStrategy, RuntimeClassStrategy, SecretStrategy,
    Strategy,
};
use super::table::{self, Printer};
use super::validation::round_trip;

/// One served resource.
#[derive(Clone, Copy)]
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
    /// Create, update and delete rules beyond the generic store's.
    pub strategy: &'static dyn Strategy,
    /// How its objects print as Table rows.
    pub printer: &'static Printer,
    /// The round trip through its typed form (decoding errors, unknown fields).
    pub schema: fn(&serde_json::Value) -> Result<serde_json::Value, String>,
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resource({})", self.qualified())
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.name) == (other.group, other.version, other.name)
    }
}
impl Eq for Resource {}

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

    /// The verbs served (discovery's `verbs`): `create` only for the
    /// `authorization.k8s.io` reviews, which are never stored.
    pub fn verbs(&self) -> &'static [&'static str] {
        if super::rbac::reviews::is_review(self) {
            return &["create"];
        }
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
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
        strategy: &NamespaceStrategy,
        printer: &table::NAMESPACE,
        schema: round_trip::<Namespace>,
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
        strategy: &PodStrategy,
        printer: &table::POD,
        schema: round_trip::<Pod>,
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
        strategy: &Plain,
        printer: &table::NODE,
        schema: round_trip::<Node>,
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
        strategy: &Plain,
        printer: &table::EVENT,
        schema: round_trip::<Event>,
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
        strategy: &ConfigMapStrategy,
        printer: &table::DEFAULT,
        schema: round_trip::<ConfigMap>,
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
        strategy: &SecretStrategy,
        printer: &table::DEFAULT,
        schema: round_trip::<Secret>,
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
        strategy: &Plain,
        printer: &table::DEFAULT,
        schema: round_trip::<ServiceAccount>,
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
        strategy: &Plain,
        printer: &table::DEFAULT,
        schema: round_trip::<Lease>,
    },
    Resource {
        name: "runtimeclasses",
        singular: "runtimeclass",
        kind: "RuntimeClass",
        group: "node.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &RuntimeClassStrategy,
        printer: &table::RUNTIME_CLASS,
        schema: round_trip::<RuntimeClass>,
    },
    Resource {
        name: "roles",
        singular: "role",
        kind: "Role",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &RoleStrategy,
        printer: &table::ROLE,
        schema: round_trip::<Role>,
    },
    Resource {
        name: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &BindingStrategy { cluster: false },
        printer: &table::ROLE_BINDING,
        schema: round_trip::<RoleBinding>,
    },
    Resource {
        name: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &ClusterRoleStrategy,
        printer: &table::ROLE,
        schema: round_trip::<ClusterRole>,
    },
    Resource {
        name: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        group: "rbac.authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &BindingStrategy { cluster: true },
        printer: &table::ROLE_BINDING,
        schema: round_trip::<ClusterRoleBinding>,
    },
    Resource {
        name: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &Plain,
        printer: &table::DEFAULT,
        schema: round_trip::<SelfSubjectAccessReview>,
    },
    Resource {
        name: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &Plain,
        printer: &table::DEFAULT,
        schema: round_trip::<SelfSubjectRulesReview>,
    },
    Resource {
        name: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &Plain,
        printer: &table::DEFAULT,
        schema: round_trip::<SubjectAccessReview>,
    },
    Resource {
        name: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        kind: "LocalSubjectAccessReview",
        group: "authorization.k8s.io",
        version: "v1",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &Plain,
        printer: &table::DEFAULT,
        schema: round_trip::<LocalSubjectAccessReview>,
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
