//! RuntimeClass → CRI runtime handler (the kubelet's `runtimeclass.Manager`):
//! a pod's `runtimeClassName` names the handler its sandbox runs under. The
//! node's own mapping (`--runtime-class NAME=HANDLER`, for static pods and
//! nodes without an API server) comes first; then the API server's
//! `node.k8s.io/v1` RuntimeClass objects, read when a sandbox is created (a
//! rare event, so no watch is kept). An unknown class fails the sandbox with
//! the API's own message, `runtimeclasses.node.k8s.io "x" not found`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::node::v1::RuntimeClass;

/// The node's RuntimeClasses.
#[derive(Default)]
pub struct RuntimeClasses {
    local: BTreeMap<String, String>,
    client: OnceLock<kube::Client>,
}

impl RuntimeClasses {
    pub fn new(local: BTreeMap<String, String>) -> Self {
        RuntimeClasses {
            local,
            client: OnceLock::new(),
        }
    }

    /// Look RuntimeClasses up in the API server too.
    pub fn set_client(&self, client: kube::Client) {
        let _ = self.client.set(client);
    }

    /// The handler of class `name`; `Err` is why there is none.
    pub async fn handler(&self, name: &str) -> Result<String, String> {
        if let Some(h) = self.local.get(name) {
            return Ok(h.clone());
        }
        let not_found = || format!("runtimeclasses.node.k8s.io {name:?} not found");
        let Some(client) = self.client.get() else {
            return Err(not_found());
        };
        let api: kube::Api<RuntimeClass> = kube::Api::all(client.clone());
        match api.get_opt(name).await {
            Ok(Some(rc)) => Ok(rc.handler),
            Ok(None) => Err(not_found()),
            Err(e) => Err(format!(
                "failed to get RuntimeClass {name:?}: {}",
                crate::util::error_chain(&e)
            )),
        }
    }
}
