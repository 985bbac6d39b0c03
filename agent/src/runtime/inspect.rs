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
        for sb in &sandboxes {
            // Only a ready sandbox has a network worth asking about.
            let status = if sb.state == api::PodSandboxState::SandboxReady as i32 {
                self.sandbox_status(&sb.id).await?
            } else {
                None
            };
            if let Some(s) = observed::sandbox_from_cri(sb, status.as_ref()) {
                pod.sandboxes.push(s);
            }
        }
        for c in &containers {
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
