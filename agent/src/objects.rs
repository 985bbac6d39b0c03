//! ConfigMaps and Secrets the pods reference, fetched from the API server
//! (`GET`, which the Node authorizer allows for objects a pod bound to this
//! node references) at every sync of such a pod, and kept for the synchronous
//! lookups of env resolution and the volume plugins ([`ApiObjects`]).
//!
//! While the API server cannot be reached, the last copy fetched is used (as
//! the kubelet's caching managers do); without one the lookup fails and the
//! container waits. Values are never logged or put into errors.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

use berth_plugins::volume::{ApiObjects, ObjectData, ObjectKind};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;

/// What the last fetch of one object said.
#[derive(Debug, Clone)]
enum Fetched {
    Found(ObjectData),
    NotFound,
    Failed(String),
}

type Key = (ObjectKind, String, String);

/// The ConfigMaps and Secrets of the node's pods, as last fetched.
#[derive(Default)]
pub struct ObjectStore {
    client: OnceLock<kube::Client>,
    cache: Mutex<HashMap<Key, Fetched>>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("client", &self.client.get().is_some())
            .finish_non_exhaustive()
    }
}

/// The ConfigMaps and Secrets `pod` references (volumes, `env[].valueFrom`,
/// `envFrom`, in init and app containers), sorted.
pub fn references(pod: &Pod) -> BTreeSet<(ObjectKind, String)> {
    let mut out = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            out.insert((ObjectKind::ConfigMap, cm.name.clone()));
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.insert((ObjectKind::Secret, name));
        }
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                out.insert((ObjectKind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &e.secret_ref {
                out.insert((ObjectKind::Secret, r.name.clone()));
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                out.insert((ObjectKind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                out.insert((ObjectKind::Secret, r.name.clone()));
            }
        }
    }
    out
}

impl ObjectStore {
    /// A store without an API server (standalone mode): every lookup fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fetch from the API server through `client` from now on.
    pub fn set_client(&self, client: kube::Client) {
        let _ = self.client.set(client);
    }

    /// Fetch every object `pod` references (in its namespace) again.
    pub async fn refresh(&self, pod: &Pod) {
        let Some(client) = self.client.get() else {
            return;
        };
        let ns = pod
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        for (kind, name) in references(pod) {
            let fetched = match kind {
                ObjectKind::ConfigMap => {
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                    match api.get_opt(&name).await {
                        Ok(Some(cm)) => Fetched::Found(ObjectData {
                            data: cm
                                .data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes()))
                                .collect(),
                            binary_data: cm
                                .binary_data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect(),
                        }),
                        Ok(None) => Fetched::NotFound,
                        Err(e) => {
                            Fetched::Failed(format!("couldn't get configmap {ns}/{name}: {e}"))
                        }
                    }
                }
                ObjectKind::Secret => {
                    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                    match api.get_opt(&name).await {
                        Ok(Some(s)) => {
                            let mut data: std::collections::BTreeMap<String, Vec<u8>> = s
                                .data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect();
                            // stringData is write-only upstream (merged by the
                            // server); a server that keeps it gets it merged here.
                            for (k, v) in s.string_data.unwrap_or_default() {
                                data.insert(k, v.into_bytes());
                            }
                            Fetched::Found(ObjectData {
                                data,
                                binary_data: Default::default(),
                            })
                        }
                        Ok(None) => Fetched::NotFound,
                        Err(e) => Fetched::Failed(format!("couldn't get secret {ns}/{name}: {e}")),
                    }
                }
            };
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let key = (kind, ns.clone(), name);
            match (fetched, cache.get(&key)) {
                // Unreachable API server: keep the copy we have.
                (Fetched::Failed(msg), Some(Fetched::Found(_))) => {
                    tracing::debug!(error = %msg, "keeping the last copy");
                }
                (f, _) => {
                    cache.insert(key, f);
                }
            }
        }
    }

    /// Insert an object directly (tests, and callers that already hold it).
    pub fn insert(&self, kind: ObjectKind, namespace: &str, name: &str, data: Option<ObjectData>) {
        let f = match data {
            Some(d) => Fetched::Found(d),
            None => Fetched::NotFound,
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((kind, namespace.to_string(), name.to_string()), f);
    }
}

impl ApiObjects for ObjectStore {
    fn get(
        &self,
        kind: ObjectKind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectData>, String> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&(kind, namespace.to_string(), name.to_string())) {
            Some(Fetched::Found(d)) => Ok(Some(d.clone())),
            Some(Fetched::NotFound) => Ok(None),
            Some(Fetched::Failed(m)) => Err(m.clone()),
            None if self.client.get().is_none() => Err(format!(
                "couldn't get {} {namespace}/{name}: no API server (--kubeconfig) configured",
                kind.noun()
            )),
            None => Err(format!(
                "couldn't get {} {namespace}/{name}: not fetched yet",
                kind.noun()
            )),
        }
    }
}
