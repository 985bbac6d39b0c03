//! One client over one unix-socket channel, with per-call timeouts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::api;
use crate::api::image_service_client::ImageServiceClient;
use crate::api::runtime_service_client::RuntimeServiceClient;
use crate::error::{Error, Result};

/// Timeouts for calls to the runtime.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Timeout for calls that change state (RunPodSandbox, CreateContainer, PullImage…),
    /// as the kubelet's `--runtime-request-timeout` (2 min).
    pub request_timeout: Duration,
    /// Timeout for List*/Status calls, which should be quick; a runtime that takes
    /// longer than this is treated as unhealthy.
    pub list_timeout: Duration,
    /// Timeout for dialling the socket.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(120),
            list_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Receives the latency and outcome of every CRI call (for metrics).
pub trait CallObserver: Send + Sync {
    /// `code` is `None` on success.
    fn observe(&self, method: &'static str, elapsed: Duration, code: Option<tonic::Code>);
}

/// A CRI v1 client (runtime and image services) over one channel.
#[derive(Clone)]
pub struct RuntimeClient {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
    opts: ConnectOptions,
    observer: Option<Arc<dyn CallObserver>>,
}

impl std::fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeClient")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Parse `unix:///path` (or a bare absolute path) into the socket path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if endpoint.contains("://") {
        return Err(invalid("only unix:// endpoints are supported"));
    } else {
        endpoint
    };
    if path.is_empty() {
        return Err(invalid("the socket path is empty"));
    }
    if !path.starts_with('/') {
        return Err(invalid("the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

/// A lazy tonic channel to the unix socket of `endpoint` (`unix:///path` or a
/// bare absolute path): it dials on first use and redials after the peer
/// restarts. Other services on the runtime's socket (containerd's own event
/// service) share this way of dialling.
pub fn unix_channel(endpoint: &str, connect_timeout: Duration) -> Result<Channel> {
    let path = parse_endpoint(endpoint)?;
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    Ok(Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(connect_timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        })))
}

impl RuntimeClient {
    /// Dial the runtime at `endpoint`, check that it serves CRI v1, and return a client.
    ///
    /// A missing socket, a refused connection or a runtime without CRI v1 gives one
    /// error naming the endpoint and the cause.
    pub async fn connect(endpoint: &str, opts: ConnectOptions) -> Result<Self> {
        let client = Self::lazy(endpoint, opts)?;
        client.check_version().await?;
        Ok(client)
    }

    /// A client that dials on first use and redials after the runtime restarts.
    /// Nothing is checked until the first call; see [`RuntimeClient::check_version`].
    pub fn lazy(endpoint: &str, opts: ConnectOptions) -> Result<Self> {
        let channel = unix_channel(endpoint, opts.connect_timeout)?;
        let endpoint = if endpoint.starts_with("unix://") {
            endpoint.to_string()
        } else {
            format!("unix://{endpoint}")
        };
        Ok(Self {
            endpoint,
            // CRI messages (ListContainers on a busy node) can exceed tonic's 4 MiB default.
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(16 * 1024 * 1024),
            image: ImageServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
            opts,
            observer: None,
        })
    }

    /// Report every call's latency and outcome to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The endpoint this client dials, as `unix:///path`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Call `Version` and require runtime API `v1`.
    pub async fn check_version(&self) -> Result<api::VersionResponse> {
        let missing_socket = parse_endpoint(&self.endpoint)
            .map(|p| !p.exists())
            .unwrap_or(false);
        if missing_socket {
            return Err(Error::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: "no such file — is containerd running?".to_string(),
            });
        }
        let version = self.version().await.map_err(|e| match e {
            Error::Rpc {
                code: tonic::Code::Unimplemented,
                message,
                ..
            } => Error::NotCriV1 {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "runtime.v1.RuntimeService is not implemented ({message}); is the CRI plugin disabled in the runtime's config?"
                ),
            },
            other => other,
        })?;
        if version.runtime_api_version != "v1" {
            return Err(Error::NotCriV1 {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "it reports runtime API version {:?}, berth needs \"v1\"",
                    version.runtime_api_version
                ),
            });
        }
        Ok(version)
    }

    async fn call<T, Fut>(&self, method: &'static str, timeout: Duration, fut: Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(match Error::from_status(&self.endpoint, method, status) {
                Error::Timeout { method, .. } => Error::Timeout { method, timeout },
                e => e,
            }),
            Err(_) => Err(Error::Timeout { method, timeout }),
        };
        if let Some(observer) = &self.observer {
            observer.observe(
                method,
                started.elapsed(),
                result.as_ref().err().map(Error::code),
            );
        }
        result
    }

    fn rt(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    fn img(&self) -> ImageServiceClient<Channel> {
        self.image.clone()
    }
}

/// One wrapper per CRI method: `name(request) -> Result<response>` with the timeout class.
macro_rules! cri_calls {
    ($( $svc:ident $fn:ident $method:literal $timeout:ident ($req:ty) -> $resp:ty; )*) => {
        impl RuntimeClient {
            $(
                #[doc = concat!("CRI `", $method, "`.")]
                pub async fn $fn(&self, req: $req) -> Result<$resp> {
                    let timeout = self.opts.$timeout;
                    let mut client = self.$svc();
                    self.call($method, timeout, async move { client.$fn(req).await }).await
                }
            )*
        }
    };
}

cri_calls! {
    rt run_pod_sandbox "RunPodSandbox" request_timeout (api::RunPodSandboxRequest) -> api::RunPodSandboxResponse;
    rt stop_pod_sandbox "StopPodSandbox" request_timeout (api::StopPodSandboxRequest) -> api::StopPodSandboxResponse;
    rt remove_pod_sandbox "RemovePodSandbox" request_timeout (api::RemovePodSandboxRequest) -> api::RemovePodSandboxResponse;
    rt pod_sandbox_status "PodSandboxStatus" list_timeout (api::PodSandboxStatusRequest) -> api::PodSandboxStatusResponse;
    rt list_pod_sandbox "ListPodSandbox" list_timeout (api::ListPodSandboxRequest) -> api::ListPodSandboxResponse;
    rt create_container "CreateContainer" request_timeout (api::CreateContainerRequest) -> api::CreateContainerResponse;
    rt start_container "StartContainer" request_timeout (api::StartContainerRequest) -> api::StartContainerResponse;
    rt remove_container "RemoveContainer" request_timeout (api::RemoveContainerRequest) -> api::RemoveContainerResponse;
    rt list_containers "ListContainers" list_timeout (api::ListContainersRequest) -> api::ListContainersResponse;
    rt container_status "ContainerStatus" list_timeout (api::ContainerStatusRequest) -> api::ContainerStatusResponse;
    rt status "Status" list_timeout (api::StatusRequest) -> api::StatusResponse;
    rt exec_sync "ExecSync" request_timeout (api::ExecSyncRequest) -> api::ExecSyncResponse;
    rt exec "Exec" request_timeout (api::ExecRequest) -> api::ExecResponse;
    rt list_container_stats "ListContainerStats" list_timeout (api::ListContainerStatsRequest) -> api::ListContainerStatsResponse;
    rt list_pod_sandbox_stats "ListPodSandboxStats" list_timeout (api::ListPodSandboxStatsRequest) -> api::ListPodSandboxStatsResponse;
    rt runtime_config "RuntimeConfig" list_timeout (api::RuntimeConfigRequest) -> api::RuntimeConfigResponse;
    img image_status "ImageStatus" list_timeout (api::ImageStatusRequest) -> api::ImageStatusResponse;
    img pull_image "PullImage" request_timeout (api::PullImageRequest) -> api::PullImageResponse;
    img list_images "ListImages" list_timeout (api::ListImagesRequest) -> api::ListImagesResponse;
    img remove_image "RemoveImage" request_timeout (api::RemoveImageRequest) -> api::RemoveImageResponse;
    img image_fs_info "ImageFsInfo" list_timeout (api::ImageFsInfoRequest) -> api::ImageFsInfoResponse;
}

impl RuntimeClient {
    /// CRI `Version`.
    pub async fn version(&self) -> Result<api::VersionResponse> {
        let timeout = self.opts.list_timeout;
        let mut client = self.rt();
        let req = api::VersionRequest {
            version: "v1".to_string(),
        };
        self.call("Version", timeout, async move { client.version(req).await })
            .await
    }

    /// CRI `StopContainer`: the call may take the whole grace period, so its timeout
    /// is the grace period plus the request timeout.
    pub async fn stop_container(&self, container_id: &str, grace_seconds: i64) -> Result<()> {
        let timeout = self.opts.request_timeout + Duration::from_secs(grace_seconds.max(0) as u64);
        let mut client = self.rt();
        let req = api::StopContainerRequest {
            container_id: container_id.to_string(),
            timeout: grace_seconds.max(0),
        };
        self.call("StopContainer", timeout, async move {
            client.stop_container(req).await
        })
        .await
        .map(|_| ())
    }

    /// CRI `ExecSync` of `cmd` in a container, which the runtime ends after
    /// `timeout` (DeadlineExceeded, an [`Error::Timeout`]); the call itself may
    /// take that long plus the request timeout, as the kubelet allows.
    pub async fn exec_sync_timeout(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse> {
        let call_timeout = self.opts.request_timeout + timeout;
        let mut client = self.rt();
        let req = api::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd,
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        };
        self.call("ExecSync", call_timeout, async move {
            client.exec_sync(req).await
        })
        .await
    }

    /// CRI `GetContainerEvents`: a stream of container lifecycle events, where the
    /// runtime offers it (containerd 1.7+, CRI-O). Unimplemented on containerd 1.6.
    pub async fn get_container_events(
        &self,
    ) -> Result<tonic::Streaming<api::ContainerEventResponse>> {
        let timeout = self.opts.list_timeout;
        let mut client = self.rt();
        self.call("GetContainerEvents", timeout, async move {
            client.get_container_events(api::GetEventsRequest {}).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            parse_endpoint("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            parse_endpoint("/run/crio/crio.sock").unwrap(),
            PathBuf::from("/run/crio/crio.sock")
        );
        assert!(parse_endpoint("tcp://127.0.0.1:1234").is_err());
        assert!(parse_endpoint("unix://").is_err());
        assert!(parse_endpoint("relative.sock").is_err());
    }

    #[tokio::test]
    async fn missing_socket_names_endpoint_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}/nope.sock", dir.path().display());
        let err = RuntimeClient::connect(&endpoint, ConnectOptions::default())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&endpoint), "{text}");
        assert!(
            text.contains("no such file — is containerd running?"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.sock");
        // A socket file with no listener behind it refuses connections.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let endpoint = format!("unix://{}", path.display());
        let err = RuntimeClient::connect(&endpoint, ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    }
}
