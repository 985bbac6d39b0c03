//! Read what the runtime holds for one pod, by the kubelet's `io.kubernetes.pod.uid` label.

use std::collections::HashMap;

use berth_cri::api;

use super::{Result, RuntimeManager, cri};
use crate::observed::{self, ObservedPod, keys};

impl RuntimeManager {
    /// Every sandbox and container of pod `uid`, with their statuses, newest first.
    pub async fn inspect_pod(&self, uid: &str) -> Result<ObservedPod> {
        let selector: HashMap<String, String> =
            [(keys::POD_UID.to_string(), uid.to_string())].into();
        let sandboxes = self
            .client
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: selector.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(cri("list pod sandboxes"))?
            .items;
        let containers = self
            .client
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    label_selector: selector,
                    ..Default::default()
                }),
            })
            .await
            .map_err(cri("list containers"))?
            .containers;

        let mut pod = ObservedPod {
            uid: uid.to_string(),
            ..Default::default()
        };
        // The lists above are the truth of what exists and in which state. A
        // status adds nothing new to an object the relist (or this manager's
        // own call) already read in that same state: a sandbox's network is
        // fixed for its life, a container's times and exit change only with
        // its state. So status calls go only to what is new or changed. An
        // exit only containerd's event has reported is no such reading: it
        // lacks CRI's termination message, so it is not reused.
        let known = self.runtime_cache.as_ref().map(|c| c.confirmed(uid));
        let known = known.as_ref();
        for sb in &sandboxes {
            let ready = sb.state == api::PodSandboxState::SandboxReady as i32;
            if let Some(o) = known
                .and_then(|k| k.sandboxes.iter().find(|o| o.id == sb.id))
                .filter(|o| o.ready == ready)
            {
                pod.sandboxes.push(o.clone());
                continue;
            }
            // Only a ready sandbox has a network worth asking about.
            let status = if ready {
                self.sandbox_status(&sb.id).await?
            } else {
                None
            };
            if let Some(s) = observed::sandbox_from_cri(sb, status.as_ref()) {
                pod.sandboxes.push(s);
            }
        }
        for c in &containers {
            let state = observed::ContainerState::from(c.state);
            if let Some(o) = known
                .and_then(|k| k.containers.iter().find(|o| o.id == c.id))
                .filter(|o| o.state == state && state != observed::ContainerState::Unknown)
            {
                pod.containers.push(o.clone());
                continue;
            }
            let status = self.container_status(&c.id).await?;
            if let Some(c) = observed::container_from_cri(c, status.as_ref()) {
                pod.containers.push(c);
            }
        }
        pod.sort_newest_first();
        Ok(pod)
    }

    /// PodSandboxStatus, or `None` if the sandbox vanished meanwhile.
    pub async fn sandbox_status(&self, id: &str) -> Result<Option<api::PodSandboxStatus>> {
        match self
            .client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
        {
            Ok(resp) => Ok(resp.status),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(cri(format!("status of sandbox {id}"))(e)),
        }
    }

    /// ContainerStatus, or `None` if the container vanished meanwhile.
    pub async fn container_status(&self, id: &str) -> Result<Option<api::ContainerStatus>> {
        match self
            .client
            .container_status(api::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
        {
            Ok(resp) => Ok(resp.status),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(cri(format!("status of container {id}"))(e)),
        }
    }
}
