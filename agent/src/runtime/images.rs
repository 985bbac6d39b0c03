//! Images: `imagePullPolicy` (Always / IfNotPresent / Never) and pulls through
//! the CRI image service, with the kubelet's pull back-off.

use berth_cri::api;
use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;

use super::RuntimeManager;
use crate::events::{EventType, ObjectRef};
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
    /// Events (`Pulling`, `Pulled`, `Failed`, `BackOff`, `ErrImageNeverPull`)
    /// are recorded on `obj`, the container's reference, as the kubelet's image manager does.
    pub async fn ensure_image(
        &self,
        uid: &str,
        container: &Container,
        sandbox_config: &api::PodSandboxConfig,
        obj: &ObjectRef,
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
            ("Never", Some(id)) | ("IfNotPresent", Some(id)) => {
                self.events.record(
                    obj,
                    EventType::Normal,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                return Ok(id);
            }
            ("Never", None) => {
                let message =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.events.record(
                    obj,
                    EventType::Warning,
                    "ErrImageNeverPull",
                    message.clone(),
                );
                return Err(ImageError::Waiting(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message,
                }));
            }
            _ => {}
        }

        let key = format!("{uid}/{image}");
        if let Some(wait) = self.image_backoff.remaining(&key, Instant::now()) {
            self.events.record(
                obj,
                EventType::Normal,
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            );
            return Err(ImageError::Waiting(Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!(
                    "Back-off pulling image \"{image}\" (retry in {}s)",
                    wait.as_secs().max(1)
                ),
            }));
        }

        tracing::info!(image = %image, policy = %policy, "pulling image");
        self.events.record(
            obj,
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        let started = std::time::Instant::now();
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
                let pulled_in = started.elapsed();
                // The size, as the kubelet reports it (0 when the runtime does not say).
                let size = self
                    .client
                    .image_status(api::ImageStatusRequest {
                        image: Some(api::ImageSpec {
                            image: resp.image_ref.clone(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|s| s.image)
                    .map(|i| i.size)
                    .unwrap_or(0);
                // Pulls are not queued here, so the time including waiting is the same.
                let took = go_duration(pulled_in);
                self.events.record(
                    obj,
                    EventType::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {took} ({took} including waiting). Image size: {size} bytes."
                    ),
                );
                Ok(resp.image_ref)
            }
            Err(e) if e.is_unreachable() => Err(ImageError::Runtime(e)),
            Err(e) => {
                self.metrics.observe_pull(false);
                self.image_backoff.next(&key, Instant::now());
                tracing::warn!(image = %image, error = %e, "image pull failed");
                self.events.record(
                    obj,
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {e}"),
                );
                Err(ImageError::Waiting(Waiting {
                    reason: "ErrImagePull".into(),
                    message: format!("failed to pull image \"{image}\": {e}"),
                }))
            }
        }
    }
}

/// A duration truncated to milliseconds and written as Go's `time.Duration`
/// prints it (`523ms`, `1.2s`, `1m2.345s`), as the kubelet's `Pulled` message has it.
pub fn go_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;
    use std::time::Duration;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_micros(500)), "0s");
        assert_eq!(go_duration(Duration::from_millis(523)), "523ms");
        assert_eq!(go_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(go_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(go_duration(Duration::from_millis(62_345)), "1m2.345s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }
}
