//! Lifecycle hooks (the kubelet's `lifecycle.HandlerRunner`): `postStart` runs
//! right after StartContainer and a failure kills the container
//! (`FailedPostStartHook`); `preStop` runs before the stop signal, sharing the
//! grace period with it (`FailedPreStopHook`). Handlers: `exec` (CRI
//! ExecSync), `httpGet` (any answer will do, as upstream: only a failed
//! request fails the hook) and `sleep`; a `tcpSocket` handler is invalid for
//! hooks, as upstream's runner says.
//!
//! The preStop handler is also written on the container as the kubelet's
//! `io.kubernetes.container.preStopHandler` annotation, so a container whose
//! pod spec is gone (manifest removed, agent restarted) still gets its hook.

use std::time::Duration;

use berth_cri::api;
use k8s_openapi::api::core::v1::{Container, ContainerPort, LifecycleHandler};

use super::RuntimeManager;
use crate::observed::{ObservedContainer, keys};

/// The kubelet's annotation with a container's preStop handler (JSON).
pub const PRE_STOP_HANDLER: &str = "io.kubernetes.container.preStopHandler";

/// What a hook runs against.
pub(crate) struct HookTarget<'a> {
    pub container_id: &'a str,
    pub container: &'a str,
    /// The pod as upstream's `format.Pod` prints it: `name_namespace(uid)`.
    pub pod: String,
    /// The host of an httpGet handler without one.
    pub pod_ip: String,
    /// For named ports of an httpGet handler.
    pub ports: Vec<ContainerPort>,
}

impl HookTarget<'_> {
    /// A running container as the runtime knows it (its labels and annotations).
    pub fn of(c: &ObservedContainer, pod_ip: String) -> HookTarget<'_> {
        let label = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or_default();
        HookTarget {
            container_id: &c.id,
            container: &c.name,
            pod: format!(
                "{}_{}({})",
                label(keys::POD_NAME),
                label(keys::POD_NAMESPACE),
                label(keys::POD_UID)
            ),
            pod_ip,
            ports: c
                .annotations
                .get(keys::CONTAINER_PORTS)
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default(),
        }
    }
}

/// The preStop handler recorded on a container, if any.
pub(crate) fn pre_stop_of(c: &ObservedContainer) -> Option<LifecycleHandler> {
    c.annotations
        .get(PRE_STOP_HANDLER)
        .and_then(|j| serde_json::from_str(j).ok())
}

impl RuntimeManager {
    /// Run `handler` against `t` (the kubelet's `HandlerRunner.Run`). An exec
    /// handler is given `limit` as its timeout (none for postStart, as
    /// upstream; the CRI call still ends after the request timeout). `Err` is
    /// upstream's message.
    pub(crate) async fn run_hook(
        &self,
        t: &HookTarget<'_>,
        handler: &LifecycleHandler,
        limit: Option<Duration>,
    ) -> Result<(), String> {
        if let Some(e) = &handler.exec {
            let cmd = e.command.clone().unwrap_or_default();
            let shown = format!("[{}]", cmd.join(" "));
            let joined = cmd.join(" ");
            let out = self
                .client
                .exec_sync_timeout(t.container_id, cmd, limit.unwrap_or(Duration::ZERO))
                .await;
            let (error, output) = match out {
                Ok(r) if r.exit_code == 0 => return Ok(()),
                Ok(r) => {
                    let mut data = r.stdout;
                    data.extend_from_slice(&r.stderr);
                    let output = String::from_utf8_lossy(&data).into_owned();
                    (
                        format!("command '{joined}' exited with {}: {output}", r.exit_code),
                        output,
                    )
                }
                Err(e) => (e.to_string(), String::new()),
            };
            return Err(format!(
                "Exec lifecycle hook ({shown}) for Container {:?} in Pod {:?} failed - error: {error}, message: {output:?}",
                t.container, t.pod
            ));
        }
        if let Some(h) = &handler.http_get {
            let path = h.path.clone().unwrap_or_default();
            let fail = |error: String| {
                format!(
                    "HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - error: {error}",
                    t.container, t.pod
                )
            };
            let holder = Container {
                name: t.container.to_string(),
                ports: Some(t.ports.clone()),
                ..Default::default()
            };
            let port = crate::prober::resolve_port(&h.port, &holder).map_err(fail)?;
            let url = crate::prober::http::url(h, &t.pod_ip, port);
            let headers = crate::prober::http::headers(h);
            let get = crate::prober::http::get(&url, &headers);
            let answer = match limit {
                Some(limit) => tokio::time::timeout(limit, get)
                    .await
                    .unwrap_or_else(|_| Err("context deadline exceeded".into())),
                None => get.await,
            };
            return answer
                .map(|_| ())
                .map_err(|e| fail(format!("Get {url:?}: {e}")));
        }
        if let Some(s) = &handler.sleep {
            let seconds = u64::try_from(s.seconds).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            return Ok(());
        }
        let what = if handler.tcp_socket.is_some() {
            "tcpSocket"
        } else {
            "none"
        };
        Err(format!(
            "Cannot run handler: invalid handler: {what} is not a lifecycle handler"
        ))
    }

    /// The IP of sandbox `id`, for a preStop httpGet without a host.
    pub(crate) async fn sandbox_ip(&self, id: &str) -> String {
        self.client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|s| s.status)
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }
}
