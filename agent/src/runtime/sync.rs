//! The per-pod reconcile: look at the desired pod and what the runtime holds,
//! and do only what differs (the kubelet's `computePodActions` + `SyncPod`).
//!
//! Every decision is taken from the runtime's own record (labels, annotations,
//! states, exit codes), so a restarted agent decides exactly as before: running
//! containers whose spec hash matches are adopted, never restarted.

use std::collections::HashSet;
use std::time::Duration;

use berth_api::restart;
use berth_cri::api;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use tokio::time::Instant;

use super::container::{ContainerContext, container_hash};
use super::hooks::{self, HookTarget};
use super::images::ImageError;
use super::{Result, RuntimeManager, SyncError, cri, ignore_not_found};
use crate::events::{EventType, ObjectRef};
use crate::observed::{ContainerState, ObservedContainer, ObservedPod, ObservedSandbox, keys};
use crate::probe_results::ProbeType;
use crate::source::SourcedPod;
use crate::status::{Transient, Waiting};

/// A container that ran at least this long before exiting resets its back-off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Grace period when neither the spec nor the runtime says otherwise.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The cluster domain written into /etc/hosts for pods with a subdomain.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// What a sync achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The pod is as desired (or waiting on a back-off): sync again after
    /// `requeue` if set, else at the periodic resync.
    Synced { requeue: Option<Duration> },
    /// The pod is not desired and nothing of it is left in the runtime.
    Gone,
}

/// True when the pod has finished for good: no container will run again
/// (the condition behind the Succeeded and Failed phases).
pub fn pod_is_done(spec: &PodSpec, observed: &ObservedPod) -> bool {
    let policy = restart::pod_restart_policy(Some(spec));
    if policy == restart::ALWAYS {
        return false;
    }
    // An init container that failed under restartPolicy Never fails the pod.
    // Sidecars restart whatever the pod's policy: they never fail it.
    let init_failed = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !restart::is_restartable_init_container(c))
        .any(|c| {
            observed.latest_container(&c.name, true).is_some_and(|l| {
                l.state == ContainerState::Exited && l.exit_code != 0 && policy == restart::NEVER
            })
        });
    if init_failed {
        return true;
    }
    !spec.containers.is_empty()
        && spec.containers.iter().all(|c| {
            observed.latest_container(&c.name, false).is_some_and(|l| {
                l.state == ContainerState::Exited
                    && !restart::restarts_after_exit(policy, l.exit_code)
            })
        })
}

use crate::util::unix_nanos_now;

/// The monotonic instant matching a wall-clock time in nanoseconds.
fn instant_of(unix_nanos: i64) -> Instant {
    let ago = unix_nanos_now().saturating_sub(unix_nanos).max(0) as u64;
    Instant::now()
        .checked_sub(Duration::from_nanos(ago))
        .unwrap_or_else(Instant::now)
}

/// Milliseconds since `start`, for the step timings logged at debug level.
fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn min_requeue(current: &mut Option<Duration>, d: Duration) {
    *current = Some(current.map_or(d, |c| c.min(d)));
}

/// True for a static pod (from the manifest directory).
fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::source::manifest::CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s == crate::source::manifest::FILE_SOURCE)
}

/// The kubelet's `minimumGracePeriodInSeconds`: what a container's stop
/// signal gets at least after its preStop hook ran.
const MIN_GRACE_AFTER_HOOK: i64 = 2;

/// The event object of a runtime container; the spec may be gone (pod
/// removal), so the pod is named by the runtime's labels.
fn container_object(c: &ObservedContainer) -> ObjectRef {
    let label = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or_default();
    ObjectRef::from_parts(
        label(keys::POD_NAMESPACE),
        label(keys::POD_NAME),
        label(keys::POD_UID),
    )
    .container(&c.name, c.init)
}

/// The probe whose failure means `running` must be killed, if any.
fn failed_probe(transient: &Transient, running: &ObservedContainer) -> Option<ProbeType> {
    transient
        .probes
        .get(&running.id)
        .and_then(|p| p.kill_reason())
}

/// How soon a container that failed to be created or started is tried again.
const CONTAINER_RETRY: Duration = Duration::from_secs(10);

/// Record why a container could not be started (its waiting reason, and the
/// kubelet's `Failed` event `Error: <message>` on `obj`), and retry it soon.
fn container_waits(
    ps: &mut PodSync<'_>,
    transient: &mut Transient,
    obj: &ObjectRef,
    name: &str,
    reason: &str,
    message: String,
) {
    ps.events.record(
        obj,
        EventType::Warning,
        "Failed",
        format!("Error: {message}"),
    );
    transient.waiting.insert(
        name.to_string(),
        Waiting {
            reason: reason.to_string(),
            message,
        },
    );
    min_requeue(&mut ps.requeue, CONTAINER_RETRY);
}

/// Per-sync state: the pod, its sandbox, and what the sync learned.
struct PodSync<'a> {
    pod: &'a Pod,
    spec: PodSpec,
    uid: &'a str,
    sandbox_id: String,
    sandbox_config: api::PodSandboxConfig,
    pod_ips: Vec<String>,
    requeue: Option<Duration>,
    events: crate::events::EventRecorder,
}

impl RuntimeManager {
    /// Bring pod `uid` to its desired state (or remove it when `desired` is None).
    pub async fn sync_pod(
        &self,
        uid: &str,
        desired: Option<&SourcedPod>,
        transient: &mut Transient,
    ) -> Result<SyncOutcome> {
        let started = Instant::now();
        let observed = self.inspect_pod(uid).await?;
        tracing::debug!(took_ms = ms_since(started), "inspected the pod");
        let Some(sourced) = desired else {
            return self.remove_pod(&observed, None).await;
        };
        if crate::source::is_terminating(&sourced.pod) {
            // Being deleted: stopped within the deletion's grace period, by this
            // worker alone (the one actor on the pod's containers).
            let grace = crate::source::termination_grace(&sourced.pod);
            return self.remove_pod(&observed, grace).await;
        }
        let pod = &sourced.pod;
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = restart::pod_restart_policy(Some(&spec));
        let grace = spec
            .termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS);

        // One ready sandbox per pod: a second one (say, from a RunPodSandbox that
        // timed out on our side but succeeded in the runtime) is torn down.
        let ready: Vec<&ObservedSandbox> = observed.sandboxes.iter().filter(|s| s.ready).collect();
        for extra in ready.iter().skip(1) {
            tracing::warn!(sandbox = %extra.id, "stopping duplicate sandbox");
            self.kill_sandbox(&observed, extra, grace).await?;
        }

        if pod_is_done(&spec, &observed) {
            // A finished pod keeps its containers (for status and logs) but gives
            // back its network.
            for sb in ready.iter().take(1) {
                tracing::info!(sandbox = %sb.id, "pod finished; stopping its sandbox");
                self.kill_sandbox(&observed, sb, grace).await?;
            }
            transient.waiting.clear();
            transient.pod_error = None;
            self.gc(&observed).await;
            return Ok(SyncOutcome::Synced { requeue: None });
        }

        // ConfigMaps and Secrets: fetched again at every sync, so env of new
        // containers and volume files follow the objects.
        let refs = crate::objects::references(pod);
        if let Some((kind, name)) = refs.iter().next() {
            if is_static(pod) {
                // As upstream, where the API server refuses mirror pods that
                // reference them: a static pod never gets its containers.
                let message = format!(
                    "static pods may not reference configmaps or secrets (it references {} \"{name}\")",
                    kind.noun()
                );
                self.events.record(
                    &ObjectRef::pod(pod),
                    EventType::Warning,
                    "Failed",
                    format!("Error: {message}"),
                );
                for c in spec
                    .containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                {
                    transient.waiting.insert(
                        c.name.clone(),
                        Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: message.clone(),
                        },
                    );
                }
                return Ok(SyncOutcome::Synced { requeue: None });
            }
            self.objects.refresh(pod).await;
            let projected = spec
                .volumes
                .iter()
                .flatten()
                .any(|v| v.config_map.is_some() || v.secret.is_some());
            if projected && let Err(e) = self.volumes.set_up_pod(pod) {
                let message = match &e {
                    berth_plugins::Error::Volume { name, source, .. } => {
                        let why = match source.as_ref() {
                            berth_plugins::Error::Invalid { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        };
                        format!("MountVolume.SetUp failed for volume \"{name}\" : {why}")
                    }
                    other => other.to_string(),
                };
                self.events.record(
                    &ObjectRef::pod(pod),
                    EventType::Warning,
                    "FailedMount",
                    message,
                );
                if ready.is_empty() {
                    // As the kubelet: no sandbox until the volumes are there; the
                    // containers show ContainerCreating meanwhile.
                    return Ok(SyncOutcome::Synced {
                        requeue: Some(CONTAINER_RETRY),
                    });
                }
            }
        }

        // The kubelet's PodSandboxChanged: a sandbox whose network mode no longer
        // matches the spec, or a pod-network sandbox without an IP, is replaced.
        let host_network = spec.host_network.unwrap_or(false);
        let current = match ready.first() {
            Some(sb)
                if sb.host_network.is_some_and(|h| h != host_network)
                    || (!host_network && sb.ips.is_empty()) =>
            {
                tracing::info!(sandbox = %sb.id, "pod sandbox changed; replacing it");
                self.kill_sandbox(&observed, sb, grace).await?;
                None
            }
            other => other.copied(),
        };
        let (sandbox_id, sandbox_config, pod_ips) = match current {
            Some(sb) => (
                sb.id.clone(),
                self.sandbox_config(pod, sb.attempt),
                sb.ips.clone(),
            ),
            None => {
                // What this node cannot run at all (user namespaces, a named
                // AppArmor profile without AppArmor): no sandbox, the reason shown.
                if let Some(r) = self.pod_refusal(pod) {
                    self.events.record(
                        &ObjectRef::pod(pod),
                        EventType::Warning,
                        r.reason,
                        r.event_message,
                    );
                    transient.pod_error = Some(Waiting {
                        reason: r.reason.into(),
                        message: r.message,
                    });
                    return Ok(SyncOutcome::Synced { requeue: None });
                }
                let created_before = observed.containers.iter().any(|c| !c.init);
                if policy == restart::NEVER && created_before {
                    // The kubelet does not give a Never pod a new sandbox once its
                    // containers ran: they are done, and so is the pod.
                    self.stop_running(&observed.containers.iter().collect::<Vec<_>>(), grace)
                        .await?;
                    self.gc(&observed).await;
                    return Ok(SyncOutcome::Synced { requeue: None });
                }
                if !observed.sandboxes.is_empty() {
                    // The kubelet's event whenever a pod that had a sandbox gets a new one.
                    self.events.record(
                        &ObjectRef::pod(pod),
                        EventType::Normal,
                        "SandboxChanged",
                        "Pod sandbox changed, it will be killed and re-created.",
                    );
                }
                match self.create_sandbox(pod, &observed, transient, grace).await {
                    Ok(created) => created,
                    Err(e) => {
                        if !e.is_unreachable() {
                            self.events.record(
                                &ObjectRef::pod(pod),
                                EventType::Warning,
                                "FailedCreatePodSandBox",
                                format!("Failed to create pod sandbox: {e}"),
                            );
                            transient.pod_error = Some(Waiting {
                                reason: "FailedCreatePodSandBox".into(),
                                message: e.to_string(),
                            });
                        }
                        return Err(e);
                    }
                }
            }
        };
        transient.pod_error = None;

        let mut ps = PodSync {
            pod,
            spec,
            uid,
            sandbox_id,
            sandbox_config,
            pod_ips,
            requeue: None,
            events: self.events.clone(),
        };

        if self
            .sync_init_containers(&mut ps, &observed, transient, grace)
            .await?
        {
            self.sync_app_containers(&mut ps, &observed, transient, grace)
                .await?;
        }
        // Forget waiting reasons of containers that left the spec.
        let names: HashSet<&str> = ps
            .spec
            .containers
            .iter()
            .chain(ps.spec.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .collect();
        transient.waiting.retain(|k, _| names.contains(k.as_str()));

        self.gc(&observed).await;
        Ok(SyncOutcome::Synced {
            requeue: ps.requeue,
        })
    }

    /// Stop what is left of older sandboxes and run a new one. Returns its id,
    /// config and IPs.
    async fn create_sandbox(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
        transient: &mut Transient,
        grace: i64,
    ) -> Result<(String, api::PodSandboxConfig, Vec<String>)> {
        self.stop_running(&observed.containers.iter().collect::<Vec<_>>(), grace)
            .await?;
        let attempt = observed
            .latest_sandbox()
            .map(|s| s.attempt + 1)
            .unwrap_or(0)
            .max(
                transient
                    .last_sandbox_attempt
                    .map_or(0, |a| a.saturating_add(1)),
            );
        transient.last_sandbox_attempt = Some(attempt);
        // The pod's cgroup with its values, before the runtime puts the
        // sandbox in it (the kubelet's EnsureExists, after UpdateQOSCgroups).
        let started = Instant::now();
        let cgroups = self.cgroups.clone();
        let owned = pod.clone();
        tokio::task::spawn_blocking(move || cgroups.ensure_pod(&owned))
            .await
            .map_err(|e| SyncError::PodCgroup {
                source: crate::cgroups::CgroupError::Unsupported(format!("cgroup task: {e}")),
            })?
            .map_err(|source| SyncError::PodCgroup { source })?;
        let config = self.sandbox_config(pod, attempt);
        let log_dir = std::path::PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&log_dir).map_err(|source| SyncError::Io {
            op: "create pod log directory",
            path: log_dir.clone(),
            source,
        })?;
        let runtime_handler = match pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            Some(class) => self
                .runtime_classes
                .handler(class)
                .await
                .map_err(|message| SyncError::RuntimeClass { message })?,
            None => String::new(),
        };
        tracing::debug!(
            took_ms = ms_since(started),
            "pod cgroup and log directory made"
        );
        tracing::info!(attempt, runtime_handler, "creating pod sandbox");
        let started = Instant::now();
        let id = self
            .client
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler,
            })
            .await
            .map_err(cri("RunPodSandbox"))?
            .pod_sandbox_id;
        tracing::debug!(took_ms = ms_since(started), "RunPodSandbox answered");
        let started = Instant::now();
        let status = self.sandbox_status(&id).await?;
        let ips = status
            .as_ref()
            .and_then(|s| s.network.clone())
            .map(|n| {
                let mut ips = vec![n.ip];
                ips.extend(n.additional_ips.into_iter().map(|i| i.ip));
                ips.retain(|ip| !ip.is_empty());
                ips
            })
            .unwrap_or_default();
        tracing::debug!(took_ms = ms_since(started), "PodSandboxStatus answered");
        if let Some(status) = &status {
            self.reflect_sandbox(&id, status);
        }
        tracing::info!(sandbox = %id, ips = ?ips, "pod sandbox running");
        Ok((id, config, ips))
    }

    /// Show the sandbox this worker just ran in the status at once (see
    /// [`crate::pleg::RuntimeCache::reflect_sandbox`]): what its
    /// PodSandboxStatus said, as a relist would read it.
    fn reflect_sandbox(&self, id: &str, status: &api::PodSandboxStatus) {
        let Some(cache) = &self.runtime_cache else {
            return;
        };
        let listed = api::PodSandbox {
            id: id.to_string(),
            metadata: status.metadata.clone(),
            state: status.state,
            created_at: status.created_at,
            labels: status.labels.clone(),
            annotations: status.annotations.clone(),
            runtime_handler: status.runtime_handler.clone(),
        };
        if let Some(o) = crate::observed::sandbox_from_cri(&listed, Some(status)) {
            cache.reflect_sandbox(o);
        }
    }

    /// Show container `id`, which this worker just created and started, as
    /// running at once (see [`crate::pleg::RuntimeCache::reflect_container`]),
    /// from the config it was created with; the next relist brings the
    /// runtime's own record.
    fn reflect_started(&self, uid: &str, id: &str, mut listed: api::Container) {
        let Some(cache) = &self.runtime_cache else {
            return;
        };
        let running = api::ContainerState::ContainerRunning as i32;
        listed.id = id.to_string();
        listed.state = running;
        let status = api::ContainerStatus {
            id: id.to_string(),
            metadata: listed.metadata.clone(),
            state: running,
            created_at: listed.created_at,
            started_at: crate::util::unix_nanos_now(),
            image: listed.image.clone(),
            image_ref: listed.image_ref.clone(),
            ..Default::default()
        };
        if let Some(o) = crate::observed::container_from_cri(&listed, Some(&status)) {
            cache.reflect_container(uid, o);
        }
    }

    /// Run init containers in order (the kubelet's `computeInitContainerActions`).
    /// A regular init container runs to completion before the next starts; a
    /// sidecar (`restartPolicy: Always`) is started, and the next one starts
    /// once it has started (its startup probe passed, if it has one). Sidecars
    /// are kept running (restarted with back-off, killed when their liveness
    /// probe fails) for the pod's whole life. Returns true once the pod is
    /// initialized (app containers may run).
    async fn sync_init_containers(
        &self,
        ps: &mut PodSync<'_>,
        observed: &ObservedPod,
        transient: &mut Transient,
        grace: i64,
    ) -> Result<bool> {
        // Initialized once an app container exists in this sandbox: regular
        // init containers do not run again, and a sidecar's restart no longer
        // holds the app containers back.
        let initialized = observed
            .containers
            .iter()
            .any(|o| !o.init && o.sandbox_id == ps.sandbox_id);
        let inits = ps.spec.init_containers.clone().unwrap_or_default();
        for (index, c) in inits.iter().enumerate() {
            let sidecar = restart::is_restartable_init_container(c);
            if initialized && !sidecar {
                continue;
            }
            // Init containers run again in a new sandbox: only this sandbox's count.
            let here = observed
                .containers
                .iter()
                .find(|o| o.init && o.name == c.name && o.sandbox_id == ps.sandbox_id);
            let restart_count = observed
                .latest_container(&c.name, true)
                .map(|l| l.restart_count + 1)
                .unwrap_or(0);
            match here {
                Some(o) if o.state == ContainerState::Running && sidecar => {
                    if let Some(probe) = failed_probe(transient, o) {
                        self.kill_for_probe(c, o, probe, true, grace).await?;
                        self.start_container(ps, c, index, true, restart_count, transient)
                            .await?;
                        if !initialized {
                            return Ok(false);
                        }
                        continue;
                    }
                    transient.waiting.remove(&c.name);
                    let started = c.startup_probe.is_none()
                        || transient.probes.get(&o.id).is_some_and(|p| {
                            p.startup == Some(crate::probe_results::ProbeResult::Success)
                        });
                    if !started && !initialized {
                        return Ok(false);
                    }
                }
                Some(o) if o.state == ContainerState::Running => return Ok(false),
                Some(o) if o.state == ContainerState::Exited && o.exit_code == 0 && !sidecar => {
                    transient.waiting.remove(&c.name);
                }
                Some(o) if o.state == ContainerState::Exited => {
                    if !self.crash_backoff_wait(ps, c, o, transient) {
                        self.start_container(ps, c, index, true, restart_count, transient)
                            .await?;
                    }
                    if !initialized {
                        return Ok(false);
                    }
                }
                Some(o) => {
                    // Created but never started (a failed StartContainer): start over.
                    self.remove_container(&o.id).await;
                    self.start_container(ps, c, index, true, restart_count, transient)
                        .await?;
                    if !initialized {
                        return Ok(false);
                    }
                }
                None => {
                    self.start_container(ps, c, index, true, restart_count, transient)
                        .await?;
                    if !initialized {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Start, restart or replace app containers as their spec and restart policy say.
    async fn sync_app_containers(
        &self,
        ps: &mut PodSync<'_>,
        observed: &ObservedPod,
        transient: &mut Transient,
        grace: i64,
    ) -> Result<()> {
        let policy = restart::pod_restart_policy(Some(&ps.spec));
        let containers = ps.spec.containers.clone();
        for (index, c) in containers.iter().enumerate() {
            let latest = observed.latest_container(&c.name, false);
            let next_count = latest.map(|l| l.restart_count + 1).unwrap_or(0);
            match latest {
                Some(l) if l.sandbox_id == ps.sandbox_id && l.state == ContainerState::Running => {
                    if l.hash != container_hash(c) {
                        tracing::info!(container = %c.name, id = %l.id, "container spec changed; replacing it");
                        self.stop_running_with(&[l], grace, |o| {
                            format!("Container {} definition changed, will be restarted", o.name)
                        })
                        .await?;
                    } else if let Some(probe) = failed_probe(transient, l) {
                        // The kubelet's computePodActions: a failed liveness or
                        // startup probe kills the container; the restart policy
                        // decides whether it comes back.
                        let restart = policy != restart::NEVER;
                        self.kill_for_probe(c, l, probe, restart, grace).await?;
                        if !restart {
                            continue;
                        }
                    } else {
                        transient.waiting.remove(&c.name);
                        continue;
                    }
                }
                Some(l) if l.sandbox_id == ps.sandbox_id && l.state == ContainerState::Exited => {
                    if !restart::restarts_after_exit(policy, l.exit_code) {
                        transient.waiting.remove(&c.name);
                        continue;
                    }
                    if self.crash_backoff_wait(ps, c, l, transient) {
                        continue;
                    }
                }
                Some(l) if l.sandbox_id == ps.sandbox_id => {
                    // Created but never started: remove it and start over.
                    self.remove_container(&l.id).await;
                }
                // From an older sandbox: in the new one, OnFailure does not
                // rerun a container that already succeeded.
                Some(l)
                    if policy == restart::ON_FAILURE
                        && l.state == ContainerState::Exited
                        && l.exit_code == 0 =>
                {
                    continue;
                }
                Some(_) => {}
                None => {}
            }
            self.start_container(ps, c, index, false, next_count, transient)
                .await?;
        }
        Ok(())
    }

    /// Kill `running` (container `c`) because its `probe` failed: with the
    /// probe's own `terminationGracePeriodSeconds` when it has one, and the
    /// kubelet's `Killing` event ("Container x failed liveness probe, will be
    /// restarted").
    async fn kill_for_probe(
        &self,
        c: &Container,
        running: &ObservedContainer,
        probe: ProbeType,
        restart: bool,
        pod_grace: i64,
    ) -> Result<()> {
        let grace = probe
            .of(c)
            .and_then(|p| p.termination_grace_period_seconds)
            .unwrap_or(pod_grace);
        let what = match probe {
            ProbeType::Startup => "startup",
            _ => "liveness",
        };
        tracing::info!(container = %c.name, id = %running.id, probe = what, grace, "probe failed; killing the container");
        self.stop_running_with(&[running], grace, |o| {
            if restart {
                format!(
                    "Container {} failed {what} probe, will be restarted",
                    o.name
                )
            } else {
                format!("Container {} failed {what} probe", o.name)
            }
        })
        .await
    }

    /// The kubelet's `doBackOff`: true (and a CrashLoopBackOff reason) while the
    /// exited container `last` must wait before it is started again.
    fn crash_backoff_wait(
        &self,
        ps: &mut PodSync<'_>,
        c: &Container,
        last: &ObservedContainer,
        transient: &mut Transient,
    ) -> bool {
        let key = format!("{}/{}/{}", ps.uid, c.name, container_hash(c));
        if last.started_at > 0
            && last.finished_at.saturating_sub(last.started_at)
                >= BACKOFF_RESET_AFTER.as_nanos() as i64
        {
            self.crash_backoff.reset(&key);
        }
        let now = Instant::now();
        if let Some(wait) =
            self.crash_backoff
                .remaining_since(&key, instant_of(last.finished_at), now)
        {
            let backoff = self.crash_backoff.get(&key);
            let pod_name = ps.pod.metadata.name.as_deref().unwrap_or_default();
            let pod_ns = ps.pod.metadata.namespace.as_deref().unwrap_or_default();
            self.events.record(
                &ObjectRef::pod(ps.pod).container(&c.name, last.init),
                EventType::Warning,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {pod_name}_{pod_ns}({})",
                    c.name, ps.uid
                ),
            );
            transient.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        backoff.as_secs(),
                        c.name,
                        ps.pod.metadata.name.as_deref().unwrap_or_default(),
                        ps.pod.metadata.namespace.as_deref().unwrap_or_default(),
                        ps.uid
                    ),
                },
            );
            min_requeue(&mut ps.requeue, wait);
            return true;
        }
        self.crash_backoff.next(&key, now);
        false
    }

    /// Pull (per policy), create and start one container. A failure that is the
    /// container's own (image, config, start) becomes its waiting reason; only
    /// an unreachable runtime fails the sync.
    async fn start_container(
        &self,
        ps: &mut PodSync<'_>,
        c: &Container,
        index: usize,
        init: bool,
        restart_count: i32,
        transient: &mut Transient,
    ) -> Result<()> {
        let obj = ObjectRef::pod(ps.pod).container(&c.name, init);
        let started = Instant::now();
        let image_ref = match self.ensure_image(ps.uid, c, &ps.sandbox_config, &obj).await {
            Ok(r) => r,
            Err(ImageError::Runtime(e)) => return Err(cri(format!("image of {}", c.name))(e)),
            Err(ImageError::Waiting(w)) => {
                // The kubelet's `Error: ErrImagePull` / `Error: ImagePullBackOff`.
                self.events.record(
                    &obj,
                    EventType::Warning,
                    "Failed",
                    format!("Error: {}", w.reason),
                );
                let key = format!("{}/{}", ps.uid, c.image.as_deref().unwrap_or_default());
                let retry = self
                    .image_backoff
                    .remaining(&key, Instant::now())
                    .unwrap_or(CONTAINER_RETRY);
                min_requeue(&mut ps.requeue, retry);
                transient.waiting.insert(c.name.clone(), w);
                return Ok(());
            }
        };
        // Everything that can leave the container waiting with
        // CreateContainerConfigError (as the kubelet's generateContainerConfig):
        // runAsNonRoot, mounts (subPath, configMap/secret volumes), env.
        let prepared = match self.verify_run_as_non_root(ps.pod, c, &image_ref).await? {
            Err(message) => Err(message),
            Ok(()) => self
                .container_security_error(ps.pod, c)
                .and_then(|()| self.container_mounts(ps.pod, c, index, init, &ps.pod_ips))
                .and_then(|mounts| Ok((mounts, self.container_env(ps.pod, c, &ps.pod_ips)?))),
        };
        let (mounts, env) = match prepared {
            Ok(p) => p,
            Err(message) => {
                container_waits(
                    ps,
                    transient,
                    &obj,
                    &c.name,
                    "CreateContainerConfigError",
                    message,
                );
                return Ok(());
            }
        };
        tracing::debug!(container = %c.name, took_ms = ms_since(started), "image, mounts and env ready");
        let started = Instant::now();
        let log_dir = std::path::Path::new(&ps.sandbox_config.log_directory).join(&c.name);
        std::fs::create_dir_all(&log_dir).map_err(|source| SyncError::Io {
            op: "create container log directory",
            path: log_dir.clone(),
            source,
        })?;
        let config = self.container_config(
            ps.pod,
            c,
            ContainerContext {
                sandbox_id: &ps.sandbox_id,
                pod_ips: &ps.pod_ips,
                restart_count,
                init,
                image_ref: &image_ref,
                mounts,
                env,
            },
        );
        // What the status shows of the container once started, before a relist has seen it.
        let shown = api::Container {
            pod_sandbox_id: ps.sandbox_id.clone(),
            metadata: config.metadata.clone(),
            image: config.image.clone(),
            image_ref: image_ref.clone(),
            created_at: crate::util::unix_nanos_now(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            ..Default::default()
        };
        let created = self
            .client
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: ps.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(ps.sandbox_config.clone()),
            })
            .await;
        let id = match created {
            Ok(resp) => {
                tracing::debug!(container = %c.name, took_ms = ms_since(started), "CreateContainer answered");
                self.events.record(
                    &obj,
                    EventType::Normal,
                    "Created",
                    format!("Created container: {}", c.name),
                );
                resp.container_id
            }
            Err(e) if e.is_unreachable() => return Err(cri("CreateContainer")(e)),
            Err(e) => {
                tracing::warn!(container = %c.name, error = %e, "creating container failed");
                container_waits(
                    ps,
                    transient,
                    &obj,
                    &c.name,
                    "CreateContainerError",
                    e.to_string(),
                );
                return Ok(());
            }
        };
        let started = Instant::now();
        if let Err(e) = self
            .client
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            if e.is_unreachable() {
                return Err(cri("StartContainer")(e));
            }
            tracing::warn!(container = %c.name, id = %id, error = %e, "starting container failed");
            container_waits(
                ps,
                transient,
                &obj,
                &c.name,
                "RunContainerError",
                e.to_string(),
            );
            return Ok(());
        }
        tracing::debug!(container = %c.name, took_ms = ms_since(started), "StartContainer answered");
        self.reflect_started(ps.uid, &id, shown);
        tracing::info!(container = %c.name, id = %id, restart_count, init, "container started");
        self.events.record(
            &obj,
            EventType::Normal,
            "Started",
            format!("Started container {}", c.name),
        );
        transient.waiting.remove(&c.name);
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Err(message) = self.post_start(ps, c, &id, hook).await
        {
            // As the kubelet: the message stays out of the event (it may hold
            // secrets), the container is killed and waits with PostStartHookError.
            tracing::warn!(container = %c.name, id = %id, message = %message, "postStart hook failed; killing the container");
            self.events.record(
                &obj,
                EventType::Warning,
                "FailedPostStartHook",
                "PostStartHook failed",
            );
            let grace = ps
                .spec
                .termination_grace_period_seconds
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            let observed = self.inspect_pod(ps.uid).await?;
            if let Some(running) = observed.containers.iter().find(|o| o.id == id) {
                self.stop_running_with(&[running], grace, |_| "FailedPostStartHook".into())
                    .await?;
            }
            transient.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: "PostStartHookError".into(),
                    message,
                },
            );
            min_requeue(&mut ps.requeue, CONTAINER_RETRY);
        }
        Ok(())
    }

    /// Run container `c`'s postStart hook; the status shows the container
    /// neither started nor ready until it returns.
    async fn post_start(
        &self,
        ps: &PodSync<'_>,
        c: &Container,
        id: &str,
        hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    ) -> std::result::Result<(), String> {
        let meta = &ps.pod.metadata;
        let target = HookTarget {
            container_id: id,
            container: &c.name,
            pod: format!(
                "{}_{}({})",
                meta.name.as_deref().unwrap_or_default(),
                meta.namespace.as_deref().unwrap_or_default(),
                ps.uid
            ),
            pod_ip: ps
                .pod_ips
                .first()
                .cloned()
                .unwrap_or_else(|| self.settings.node_ip.clone()),
            ports: c.ports.clone().unwrap_or_default(),
        };
        self.live.set_post_start(ps.uid, id, true);
        let ran = self.run_hook(&target, hook, None).await;
        self.live.set_post_start(ps.uid, id, false);
        ran
    }

    /// The kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot`, the container
    /// must run as a non-zero UID, from its securityContext or its image.
    /// `Ok(Err(message))` is the container's config error.
    async fn verify_run_as_non_root(
        &self,
        pod: &Pod,
        c: &Container,
        image_ref: &str,
    ) -> Result<std::result::Result<(), String>> {
        let csc = c.security_context.as_ref();
        let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let non_root = csc
            .and_then(|s| s.run_as_non_root)
            .or_else(|| psc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false);
        if !non_root {
            return Ok(Ok(()));
        }
        let who = format!(
            "(pod: \"{}_{}({})\", container: {})",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default(),
            c.name
        );
        let run_as_user = csc
            .and_then(|s| s.run_as_user)
            .or_else(|| psc.and_then(|s| s.run_as_user));
        if let Some(uid) = run_as_user {
            return Ok(if uid == 0 {
                Err(format!(
                    "container's runAsUser breaks non-root policy {who}"
                ))
            } else {
                Ok(())
            });
        }
        let image = self
            .client
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image_ref.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(cri("ImageStatus"))?
            .image;
        let uid = image.as_ref().and_then(|i| i.uid.as_ref()).map(|u| u.value);
        let username = image.map(|i| i.username).unwrap_or_default();
        Ok(match uid {
            Some(0) => Err(format!(
                "container has runAsNonRoot and image will run as root {who}"
            )),
            Some(_) => Ok(()),
            None if !username.is_empty() => Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({username}), cannot verify user is non-root {who}"
            )),
            // No user in the image means root.
            None => Err(format!(
                "container has runAsNonRoot and image will run as root {who}"
            )),
        })
    }

    /// Stop the running ones among `containers`, in parallel, each with its
    /// grace period (a `Killing` event `Stopping container <c>` for each).
    async fn stop_running(&self, containers: &[&ObservedContainer], grace: i64) -> Result<()> {
        self.stop_running_with(containers, grace, |c| {
            format!("Stopping container {}", c.name)
        })
        .await
    }

    /// [`stop_running`](Self::stop_running) with the `Killing` event's message from `why`.
    async fn stop_running_with(
        &self,
        containers: &[&ObservedContainer],
        grace: i64,
        why: impl Fn(&ObservedContainer) -> String,
    ) -> Result<()> {
        let stops = containers
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Unknown))
            .inspect(|c| {
                self.events
                    .record(&container_object(c), EventType::Normal, "Killing", why(c));
            })
            .map(|c| async move {
                let grace = self.pre_stop(c, grace).await;
                tracing::info!(container = %c.name, id = %c.id, grace, "stopping container");
                ignore_not_found(self.client.stop_container(&c.id, grace).await)
                    .map_err(cri(format!("StopContainer {}", c.id)))
            });
        join_all(stops).await.into_iter().collect()
    }

    /// Run `c`'s preStop hook, if it has one and there is time (the kubelet's
    /// `executePreStopHook`): it may take the whole grace period; what is left
    /// (at least the kubelet's minimum of 2 s) is the stop signal's.
    async fn pre_stop(&self, c: &ObservedContainer, grace: i64) -> i64 {
        let Some(handler) = hooks::pre_stop_of(c).filter(|_| grace > 0) else {
            return grace;
        };
        let needs_ip = handler
            .http_get
            .as_ref()
            .is_some_and(|h| h.host.as_deref().unwrap_or_default().is_empty());
        let pod_ip = if needs_ip {
            self.sandbox_ip(&c.sandbox_id).await
        } else {
            String::new()
        };
        let target = HookTarget::of(c, pod_ip);
        let started = Instant::now();
        let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        tracing::info!(container = %c.name, id = %c.id, grace, "running preStop hook");
        match tokio::time::timeout(limit, self.run_hook(&target, &handler, Some(limit))).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                tracing::warn!(container = %c.name, id = %c.id, message = %message, "preStop hook failed");
                self.events.record(
                    &container_object(c),
                    EventType::Warning,
                    "FailedPreStopHook",
                    message,
                );
            }
            Err(_) => {
                tracing::info!(container = %c.name, id = %c.id, grace, "preStop hook not completed in grace period");
            }
        }
        let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
        grace.saturating_sub(spent).max(MIN_GRACE_AFTER_HOOK)
    }

    /// Stop a pod's containers as the kubelet does since sidecars: the app (and
    /// regular init) containers first, in parallel; then the init containers
    /// still running (sidecars), one at a time in reverse order of their start
    /// (the spec may be gone, so the runtime's start times stand for the spec
    /// order), each with what is left of the grace period.
    async fn stop_pod_containers(
        &self,
        containers: &[&ObservedContainer],
        grace: i64,
    ) -> Result<()> {
        let (mut sidecars, main): (Vec<&ObservedContainer>, Vec<&ObservedContainer>) = containers
            .iter()
            .copied()
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Unknown))
            .partition(|c| c.init);
        let started = Instant::now();
        self.stop_running(&main, grace).await?;
        sidecars.sort_by_key(|c| std::cmp::Reverse(c.started_at));
        for sidecar in sidecars {
            let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
            let left = if grace <= 0 {
                grace
            } else {
                grace
                    .saturating_sub(spent)
                    .max(grace.min(MIN_GRACE_AFTER_HOOK))
            };
            self.stop_running(&[sidecar], left).await?;
        }
        Ok(())
    }

    /// Stop a sandbox and the containers in it.
    /// Stop an evicted pod within `grace` seconds: its containers and its
    /// ready sandboxes. The containers stay (their statuses and logs are the
    /// evicted pod's record), as the kubelet's killPod leaves them.
    pub async fn stop_evicted(&self, uid: &str, grace: i64) -> Result<()> {
        let observed = self.inspect_pod(uid).await?;
        for sb in observed.sandboxes.iter().filter(|s| s.ready) {
            tracing::info!(sandbox = %sb.id, grace, "pod evicted; stopping it");
            self.kill_sandbox(&observed, sb, grace).await?;
        }
        // Anything still running outside a ready sandbox.
        let running: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        if !running.is_empty() {
            self.stop_pod_containers(&running, grace).await?;
        }
        Ok(())
    }

    async fn kill_sandbox(
        &self,
        observed: &ObservedPod,
        sb: &ObservedSandbox,
        grace: i64,
    ) -> Result<()> {
        let inside: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.sandbox_id == sb.id)
            .collect();
        self.stop_pod_containers(&inside, grace).await?;
        self.stop_sandbox(sb).await
    }

    /// StopPodSandbox (its containers already stopped).
    async fn stop_sandbox(&self, sb: &ObservedSandbox) -> Result<()> {
        let stopped = self
            .client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await;
        ignore_not_found(stopped)
            .map(|_| ())
            .map_err(cri(format!("StopPodSandbox {}", sb.id)))
    }

    /// RemoveContainer, logging (not failing) on error: GC is retried next sync.
    async fn remove_container(&self, id: &str) {
        if let Err(e) = self
            .client
            .remove_container(api::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            && !e.is_not_found()
        {
            tracing::warn!(id = %id, error = %e, "removing container failed");
        }
    }

    /// Remove dead containers, keeping the newest dead one of each name (for
    /// `lastState` and logs), and dead sandboxes nothing refers to any more.
    async fn gc(&self, observed: &ObservedPod) {
        let mut seen: HashSet<(bool, &str)> = HashSet::new();
        let mut kept_sandboxes: HashSet<&str> = HashSet::new();
        for c in &observed.containers {
            // Like the kubelet's MaxPerPodContainer = 1: the newest dead
            // container of each name stays (it is `lastState`, and its log is
            // `--previous`); live ones are never touched here.
            if c.state != ContainerState::Exited || seen.insert((c.init, c.name.as_str())) {
                kept_sandboxes.insert(c.sandbox_id.as_str());
                continue;
            }
            tracing::debug!(container = %c.name, id = %c.id, "removing dead container");
            self.remove_container(&c.id).await;
        }
        for (i, sb) in observed.sandboxes.iter().enumerate() {
            if i == 0 || sb.ready || kept_sandboxes.contains(sb.id.as_str()) {
                continue;
            }
            tracing::debug!(sandbox = %sb.id, "removing dead sandbox");
            if let Err(e) = self
                .client
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await
            {
                tracing::warn!(sandbox = %sb.id, error = %e, "removing sandbox failed");
            }
        }
    }

    /// Remove everything of a pod that is no longer desired: stop its containers
    /// with their grace period, stop and remove its sandboxes, then its volumes,
    /// directories, logs and cgroup.
    /// Stop and remove everything of a pod that is no longer to run: with the
    /// deletion's grace period when it gave one (`deletionGracePeriodSeconds`),
    /// else the one recorded on its containers (the spec is gone).
    async fn remove_pod(&self, observed: &ObservedPod, grace: Option<i64>) -> Result<SyncOutcome> {
        let grace = grace.unwrap_or_else(|| {
            observed
                .containers
                .iter()
                .filter_map(|c| c.annotations.get(keys::POD_TERMINATION_GRACE_PERIOD))
                .filter_map(|g| g.parse::<i64>().ok())
                .max()
                .unwrap_or(DEFAULT_GRACE_SECONDS)
        });
        if !observed.is_empty() {
            tracing::info!(grace, "pod no longer to run; removing it");
        }
        self.stop_pod_containers(&observed.containers.iter().collect::<Vec<_>>(), grace)
            .await?;
        // Every container is stopped above (one Killing event each).
        for sb in &observed.sandboxes {
            self.stop_sandbox(sb).await?;
        }
        for c in &observed.containers {
            let removed = self
                .client
                .remove_container(api::RemoveContainerRequest {
                    container_id: c.id.clone(),
                })
                .await;
            ignore_not_found(removed).map_err(cri(format!("RemoveContainer {}", c.id)))?;
        }
        for sb in &observed.sandboxes {
            let removed = self
                .client
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await;
            ignore_not_found(removed).map_err(cri(format!("RemovePodSandbox {}", sb.id)))?;
        }
        // Every log directory of the UID, also one whose sandbox is already
        // gone (an agent killed after RemovePodSandbox; the orphan sweep).
        for log_dir in super::log_dirs_of(&self.settings.pod_logs_dir, &observed.uid) {
            if let Err(e) = std::fs::remove_dir_all(&log_dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %log_dir.display(), error = %e, "removing pod logs failed");
            }
        }
        self.volumes
            .tear_down_pod(&observed.uid)
            .map_err(|source| SyncError::Volume {
                op: "tear down volumes".into(),
                source,
            })?;
        self.remove_pod_cgroup(&observed.uid);
        Ok(SyncOutcome::Gone)
    }

    /// Remove the pod's cgroup. The runtime may still be letting go of it
    /// (EBUSY while its last process exits): then it is tried again in the
    /// background with back-off, quietly, and one warning only if it never
    /// lets go; a pod that comes back meanwhile keeps its cgroup.
    fn remove_pod_cgroup(&self, uid: &str) {
        let cgroups = self.cgroups.clone();
        let uid = uid.to_string();
        tokio::spawn(async move {
            const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_millis(200);
            let mut first = true;
            loop {
                let (c, u) = (cgroups.clone(), uid.clone());
                let attempt = tokio::task::spawn_blocking(move || {
                    if first {
                        Some(c.destroy_pod(&u))
                    } else {
                        c.retry_destroy_pod(&u)
                    }
                })
                .await;
                first = false;
                match attempt {
                    Ok(None) => return,
                    Ok(Some(Ok(()))) => {
                        tracing::debug!(pod_uid = %uid, "removed pod cgroup");
                        return;
                    }
                    Ok(Some(Err(crate::cgroups::CgroupError::Busy { cgroup })))
                        if started.elapsed() < GIVE_UP_AFTER =>
                    {
                        tracing::debug!(pod_uid = %uid, cgroup, retry_in = ?wait, "pod cgroup still busy");
                    }
                    Ok(Some(Err(e))) => {
                        tracing::warn!(pod_uid = %uid, error = %e, "removing pod cgroup failed");
                        cgroups.forget_pod(&uid);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pod_uid = %uid, error = %e, "removing pod cgroup failed");
                        return;
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// The mounts of a container: its volumeMounts, /etc/hosts and the
    /// termination message file. An error is the container's config error.
    fn container_mounts(
        &self,
        pod: &Pod,
        c: &Container,
        index: usize,
        init: bool,
        pod_ips: &[String],
    ) -> std::result::Result<Vec<api::Mount>, String> {
        let vols = self.volumes.set_up_pod(pod).map_err(|e| e.to_string())?;
        let prefix = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        let mut mounts = self
            .volumes
            .make_mounts(c, index, prefix, &vols)
            .map_err(|e| e.to_string())?;
        if let Some(hosts) =
            berth_plugins::etc_hosts_mount(pod, c, &vols.pod_dir, pod_ips, CLUSTER_DOMAIN)
                .map_err(|e| e.to_string())?
        {
            mounts.push(hosts);
        }
        mounts.push(
            berth_plugins::termination_message_mount(c, &vols.pod_dir)
                .map_err(|e| e.to_string())?,
        );
        Ok(mounts)
    }
}
