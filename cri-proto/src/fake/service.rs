//! The gRPC side of the fake: `RuntimeService` and `ImageService` over the shared state.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use super::state::State;
use crate::api;
use crate::api::image_service_server::ImageService;
use crate::api::runtime_service_server::RuntimeService;

/// Every CRI v1 method name, as the client's metrics and the call log name them.
pub(crate) const METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// State shared by the server and the [`super::FakeRuntime`] handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// True while serving; flipping it to false cuts short delayed calls.
    pub up: watch::Sender<bool>,
}

impl Shared {
    pub fn new() -> Self {
        // The sandbox image can be pulled from the start, as a node's pause
        // image can (the agent's host check pulls it when absent).
        let mut state = State::default();
        state
            .pullable
            .insert(crate::fake::SANDBOX_IMAGE.to_string());
        Self {
            state: Mutex::new(state),
            up: watch::Sender::new(false),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not poison the fake.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Log the call, then apply any scripted delay and fault for `method`.
    async fn enter(&self, method: &'static str) -> Result<(), Status> {
        let (delay, fault) = {
            let mut st = self.lock();
            st.calls.push(method.to_string());
            let delay = st.delays.get(method).copied();
            let fault = st
                .faults
                .get_mut(method)
                .and_then(|f| f.once.pop_front().or_else(|| f.always.clone()));
            (delay, fault)
        };
        if let Some(delay) = delay {
            let mut up = self.up.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = up.wait_for(|serving| !*serving) => {
                    return Err(Status::unavailable(format!(
                        "{method}: the runtime went away during the call"
                    )));
                }
            }
        }
        match fault {
            Some((code, message)) => Err(Status::new(code, message)),
            None => Ok(()),
        }
    }
}

fn unimplemented(method: &str) -> Status {
    // What a Go gRPC server built on the Unimplemented*Server stubs answers.
    Status::unimplemented(format!("method {method} not implemented"))
}

/// The tonic service; cheap to clone.
#[derive(Clone)]
pub(crate) struct Service(pub Arc<Shared>);

/// Generate the `RuntimeService` impl: the given methods, plus the listed ones
/// answering Unimplemented (after logging, delay and faults like any other).
macro_rules! runtime_service {
    ({ $($body:tt)* } unimplemented { $( $fn:ident $method:literal ($req:ident) -> $resp:ident; )* }) => {
        #[tonic::async_trait]
        impl RuntimeService for Service {
            $($body)*
            $(
                async fn $fn(
                    &self,
                    _request: Request<api::$req>,
                ) -> Result<Response<api::$resp>, Status> {
                    self.0.enter($method).await?;
                    Err(unimplemented($method))
                }
            )*
        }
    };
}

runtime_service! {
    {
        type GetContainerEventsStream =
            UnboundedReceiverStream<Result<api::ContainerEventResponse, Status>>;

        async fn version(
            &self,
            _request: Request<api::VersionRequest>,
        ) -> Result<Response<api::VersionResponse>, Status> {
            self.0.enter("Version").await?;
            Ok(Response::new(api::VersionResponse {
                version: "0.1.0".to_string(),
                runtime_name: "fake".to_string(),
                runtime_version: env!("CARGO_PKG_VERSION").to_string(),
                runtime_api_version: "v1".to_string(),
            }))
        }

        async fn status(
            &self,
            request: Request<api::StatusRequest>,
        ) -> Result<Response<api::StatusResponse>, Status> {
            self.0.enter("Status").await?;
            let status = self.0.lock().runtime_status();
            // Verbose, as containerd: its CRI config, naming the sandbox image.
            let info = if request.get_ref().verbose {
                std::collections::HashMap::from([(
                    "config".to_string(),
                    format!("{{\"sandboxImage\":\"{}\"}}", crate::fake::SANDBOX_IMAGE),
                )])
            } else {
                Default::default()
            };
            Ok(Response::new(api::StatusResponse {
                status: Some(status),
                info,
                ..Default::default()
            }))
        }

        async fn run_pod_sandbox(
            &self,
            request: Request<api::RunPodSandboxRequest>,
        ) -> Result<Response<api::RunPodSandboxResponse>, Status> {
            self.0.enter("RunPodSandbox").await?;
            let pod_sandbox_id = self.0.lock().run_pod_sandbox(request.into_inner())?;
            Ok(Response::new(api::RunPodSandboxResponse { pod_sandbox_id }))
        }

        async fn stop_pod_sandbox(
            &self,
            request: Request<api::StopPodSandboxRequest>,
        ) -> Result<Response<api::StopPodSandboxResponse>, Status> {
            self.0.enter("StopPodSandbox").await?;
            self.0.lock().stop_pod_sandbox(&request.into_inner().pod_sandbox_id)?;
            Ok(Response::new(api::StopPodSandboxResponse {}))
        }

        async fn remove_pod_sandbox(
            &self,
            request: Request<api::RemovePodSandboxRequest>,
        ) -> Result<Response<api::RemovePodSandboxResponse>, Status> {
            self.0.enter("RemovePodSandbox").await?;
            self.0.lock().remove_pod_sandbox(&request.into_inner().pod_sandbox_id)?;
            Ok(Response::new(api::RemovePodSandboxResponse {}))
        }

        async fn pod_sandbox_status(
            &self,
            request: Request<api::PodSandboxStatusRequest>,
        ) -> Result<Response<api::PodSandboxStatusResponse>, Status> {
            self.0.enter("PodSandboxStatus").await?;
            let status = self.0.lock().pod_sandbox_status(&request.into_inner().pod_sandbox_id)?;
            Ok(Response::new(api::PodSandboxStatusResponse {
                status: Some(status),
                timestamp: super::state::now_ns(),
                ..Default::default()
            }))
        }

        async fn list_pod_sandbox(
            &self,
            request: Request<api::ListPodSandboxRequest>,
        ) -> Result<Response<api::ListPodSandboxResponse>, Status> {
            self.0.enter("ListPodSandbox").await?;
            let items = self.0.lock().list_pod_sandbox(request.into_inner().filter);
            Ok(Response::new(api::ListPodSandboxResponse { items }))
        }

        async fn create_container(
            &self,
            request: Request<api::CreateContainerRequest>,
        ) -> Result<Response<api::CreateContainerResponse>, Status> {
            self.0.enter("CreateContainer").await?;
            let container_id = self.0.lock().create_container(request.into_inner())?;
            Ok(Response::new(api::CreateContainerResponse { container_id }))
        }

        async fn start_container(
            &self,
            request: Request<api::StartContainerRequest>,
        ) -> Result<Response<api::StartContainerResponse>, Status> {
            self.0.enter("StartContainer").await?;
            self.0.lock().start_container(&request.into_inner().container_id)?;
            Ok(Response::new(api::StartContainerResponse {}))
        }

        async fn stop_container(
            &self,
            request: Request<api::StopContainerRequest>,
        ) -> Result<Response<api::StopContainerResponse>, Status> {
            self.0.enter("StopContainer").await?;
            let req = request.into_inner();
            self.0.lock().stop_container(&req.container_id, req.timeout)?;
            Ok(Response::new(api::StopContainerResponse {}))
        }

        async fn remove_container(
            &self,
            request: Request<api::RemoveContainerRequest>,
        ) -> Result<Response<api::RemoveContainerResponse>, Status> {
            self.0.enter("RemoveContainer").await?;
            self.0.lock().remove_container(&request.into_inner().container_id)?;
            Ok(Response::new(api::RemoveContainerResponse {}))
        }

        async fn list_containers(
            &self,
            request: Request<api::ListContainersRequest>,
        ) -> Result<Response<api::ListContainersResponse>, Status> {
            self.0.enter("ListContainers").await?;
            let containers = self.0.lock().list_containers(request.into_inner().filter);
            Ok(Response::new(api::ListContainersResponse { containers }))
        }

        async fn container_status(
            &self,
            request: Request<api::ContainerStatusRequest>,
        ) -> Result<Response<api::ContainerStatusResponse>, Status> {
            self.0.enter("ContainerStatus").await?;
            let status = self.0.lock().container_status(&request.into_inner().container_id)?;
            Ok(Response::new(api::ContainerStatusResponse {
                status: Some(status),
                info: Default::default(),
            }))
        }

        async fn exec_sync(
            &self,
            request: Request<api::ExecSyncRequest>,
        ) -> Result<Response<api::ExecSyncResponse>, Status> {
            self.0.enter("ExecSync").await?;
            let req = request.into_inner();
            let result = self.0.lock().exec_sync(&req)?;
            let limit = u64::try_from(req.timeout)
                .ok()
                .filter(|&t| t > 0)
                .map(std::time::Duration::from_secs);
            if let Some(limit) = limit.filter(|&l| result.delay > l) {
                tokio::time::sleep(limit).await;
                return Err(Status::deadline_exceeded(format!(
                    "failed to exec in container: timeout {}s exceeded: context deadline exceeded",
                    req.timeout
                )));
            }
            tokio::time::sleep(result.delay).await;
            Ok(Response::new(api::ExecSyncResponse {
                stdout: result.stdout,
                stderr: result.stderr,
                exit_code: result.exit_code,
            }))
        }

        async fn list_container_stats(
            &self,
            request: Request<api::ListContainerStatsRequest>,
        ) -> Result<Response<api::ListContainerStatsResponse>, Status> {
            self.0.enter("ListContainerStats").await?;
            match self.0.lock().list_container_stats(request.into_inner().filter) {
                Some(stats) => Ok(Response::new(api::ListContainerStatsResponse { stats })),
                None => Err(unimplemented("ListContainerStats")),
            }
        }

        async fn runtime_config(
            &self,
            _request: Request<api::RuntimeConfigRequest>,
        ) -> Result<Response<api::RuntimeConfigResponse>, Status> {
            self.0.enter("RuntimeConfig").await?;
            match self.0.lock().runtime_config {
                Some(config) => Ok(Response::new(config)),
                // containerd 1.6 and 1.7 have no RuntimeConfig (2.0 added it).
                None => Err(unimplemented("RuntimeConfig")),
            }
        }

        async fn get_container_events(
            &self,
            _request: Request<api::GetEventsRequest>,
        ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
            self.0.enter("GetContainerEvents").await?;
            let mut st = self.0.lock();
            if !st.events_enabled {
                // containerd 1.6 has no event stream.
                return Err(unimplemented("GetContainerEvents"));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            st.subscribers.push(tx);
            Ok(Response::new(UnboundedReceiverStream::new(rx)))
        }
    }
    unimplemented {
        update_container_resources "UpdateContainerResources" (UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log "ReopenContainerLog" (ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec "Exec" (ExecRequest) -> ExecResponse;
        attach "Attach" (AttachRequest) -> AttachResponse;
        port_forward "PortForward" (PortForwardRequest) -> PortForwardResponse;
        container_stats "ContainerStats" (ContainerStatsRequest) -> ContainerStatsResponse;
        pod_sandbox_stats "PodSandboxStats" (PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats "ListPodSandboxStats" (ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config "UpdateRuntimeConfig" (UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        checkpoint_container "CheckpointContainer" (CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors "ListMetricDescriptors" (ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics "ListPodSandboxMetrics" (ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    }
}

/// The image named by a request's `ImageSpec`, or InvalidArgument.
fn image_name(spec: Option<api::ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("an image spec with a non-empty image is required"))
}

#[tonic::async_trait]
impl ImageService for Service {
    async fn list_images(
        &self,
        _request: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        self.0.enter("ListImages").await?;
        let images = self.0.lock().list_images();
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<api::ImageStatusRequest>,
    ) -> Result<Response<api::ImageStatusResponse>, Status> {
        self.0.enter("ImageStatus").await?;
        let name = image_name(request.into_inner().image)?;
        let image = self.0.lock().image_status(&name);
        Ok(Response::new(api::ImageStatusResponse {
            image,
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<api::PullImageRequest>,
    ) -> Result<Response<api::PullImageResponse>, Status> {
        self.0.enter("PullImage").await?;
        let name = image_name(request.into_inner().image)?;
        let image_ref = self.0.lock().pull_image(&name)?;
        Ok(Response::new(api::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<api::RemoveImageRequest>,
    ) -> Result<Response<api::RemoveImageResponse>, Status> {
        self.0.enter("RemoveImage").await?;
        let name = image_name(request.into_inner().image)?;
        self.0.lock().remove_image(&name);
        Ok(Response::new(api::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<api::ImageFsInfoRequest>,
    ) -> Result<Response<api::ImageFsInfoResponse>, Status> {
        self.0.enter("ImageFsInfo").await?;
        match self.0.lock().image_fs_info.clone() {
            Some(info) => Ok(Response::new(info)),
            None => Err(unimplemented("ImageFsInfo")),
        }
    }
}
