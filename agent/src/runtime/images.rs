//! Images: `imagePullPolicy` (Always / IfNotPresent / Never) and pulls through
//! the CRI image service, with the kubelet's pull back-off.

use berth_cri::api;
use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;

use super::RuntimeManager;
use crate::status::Waiting;

/// Why a container's image is not available to run.
#[derive(Debug)]
pub enum ImageError {
    /// The pull failed or is backing off, or the runtime failed: the container
    /// waits with this reason (`ErrImagePull`, `ImagePullBackOff`, `ErrImageNeverPull`).
    Waiting(Waiting),
    /// The runtime could not be reached: retry the sync.
    Runtime(berth_cri::Error),
}

impl RuntimeManager {
    /// Make sure the image of `container` is present per its pull policy, and
    /// return the image reference to create the container from.
    pub async fn ensure_image(
        &self,
        uid: &str,
        container: &Container,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String, ImageError> {
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let spec = api::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let present = self
            .client
            .image_status(api::ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            })
            .await
            .map_err(ImageError::Runtime)?
            .image
            .map(|i| i.id);

        match (policy.as_str(), present) {
            ("Never", Some(id)) | ("IfNotPresent", Some(id)) => return Ok(id),
            ("Never", None) => {
                return Err(ImageError::Waiting(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    ),
                }));
            }
            _ => {}
        }

        let key = format!("{uid}/{image}");
        if let Some(wait) = self.image_backoff.remaining(&key, Instant::now()) {
            return Err(ImageError::Waiting(Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!(
                    "Back-off pulling image \"{image}\" (retry in {}s)",
                    wait.as_secs().max(1)
                ),
            }));
        }

        tracing::info!(image = %image, policy = %policy, "pulling image");
        match self
            .client
            .pull_image(api::PullImageRequest {
                image: Some(spec),
                auth: None,
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
        {
            Ok(resp) => {
                self.metrics.observe_pull(true);
                self.image_backoff.reset(&key);
                Ok(resp.image_ref)
            }
            Err(e) if e.is_unreachable() => Err(ImageError::Runtime(e)),
            Err(e) => {
                self.metrics.observe_pull(false);
                self.image_backoff.next(&key, Instant::now());
                tracing::warn!(image = %image, error = %e, "image pull failed");
                Err(ImageError::Waiting(Waiting {
                    reason: "ErrImagePull".into(),
                    message: format!("failed to pull image \"{image}\": {e}"),
                }))
            }
        }
    }
}
