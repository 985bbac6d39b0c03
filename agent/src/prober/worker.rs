//! One probe of one container, run every `periodSeconds` (the kubelet's
//! prober `worker`): it follows the container through restarts (a new ID starts
//! from the initial result), waits for `initialDelaySeconds` and, for liveness
//! and readiness, for the startup probe to pass; a result only takes effect after
//! `successThreshold`/`failureThreshold` runs in a row. A failed liveness or
//! startup probe asks for a pod sync (which kills the container) and holds the
//! worker until the container is replaced.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outcome, ProbeResult, ProbeType, Shared, Timing};
use crate::Uid;
use crate::events::{EventType, ObjectRef};
use crate::metrics::probes::{ProbeLabels, ProbeSeries};
use crate::observed::ContainerState;
use crate::pleg::ProbeView;

/// Upstream retries a probe that errored (not one that failed) this often.
const MAX_PROBE_RETRIES: usize = 3;

/// The grid probe ticks fall on (see [`Worker::run`]); a period (whole
/// seconds) is a multiple of it, so a worker stays on the grid.
const TICK_SLOT: Duration = Duration::from_millis(50);

/// The first instant on the [`TICK_SLOT`] grid from `origin` that is not
/// before `at`.
fn slot_at_or_after(origin: Instant, at: Instant) -> Instant {
    let since = at.saturating_duration_since(origin).as_nanos();
    let slot = TICK_SLOT.as_nanos();
    let slots = since.div_ceil(slot);
    let offset = u64::try_from(slots.saturating_mul(slot)).unwrap_or(u64::MAX);
    origin
        .checked_add(Duration::from_nanos(offset))
        .unwrap_or(at)
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    uid: Uid,
    obj: ObjectRef,
    labels: ProbeLabels,
    series: ProbeSeries,
    container: Container,
    init: bool,
    probe_type: ProbeType,
    probe: Probe,
    timing: Timing,
    /// The pod's restart policy: a container that exited under `Never` is not
    /// probed again and its worker ends.
    never_restarts: bool,
    host_network: bool,
    cancel: CancellationToken,
    kick: Arc<Notify>,
    /// The container instance being probed.
    container_id: Option<String>,
    last: ProbeResult,
    run: u32,
    /// After a liveness/startup failure: nothing more until the container is new.
    on_hold: bool,
    /// A grpc probe's connection, kept between probes (see [`super::grpc`]).
    grpc: super::grpc::Connection,
    /// An httpGet probe's request, built once for the pod IP and port.
    http: Option<super::http::Prepared>,
}

impl Worker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        pod: &Pod,
        container: Container,
        init: bool,
        probe_type: ProbeType,
        cancel: CancellationToken,
        kick: Arc<Notify>,
    ) -> Self {
        let probe = probe_type.of(&container).cloned().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let never_restarts =
            !init && berth_api::restart::pod_restart_policy(spec) == berth_api::restart::NEVER;
        let labels = ProbeLabels::new(pod, &container.name, probe_type);
        Worker {
            uid: crate::source::uid_of(pod),
            obj: ObjectRef::pod(pod).container(&container.name, init),
            series: shared.metrics.series(&labels),
            labels,
            timing: Timing::of(&probe),
            probe,
            init,
            probe_type,
            never_restarts,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            container,
            shared,
            cancel,
            kick,
            container_id: None,
            last: probe_type.initial(),
            run: 0,
            on_hold: false,
            grpc: super::grpc::Connection::default(),
            http: None,
        }
    }

    pub(crate) async fn run(mut self) {
        // Right after an agent start every worker is new: spread their first
        // probes over a period (by a hash of the key, so no RNG is needed).
        let mut first = Instant::now();
        if self.shared.started.elapsed() < self.timing.period {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&self.uid, &self.container.name, self.probe_type).hash(&mut h);
            let period_ms = self.timing.period.as_millis().max(1) as u64;
            first += Duration::from_millis(h.finish() % period_ms);
        }
        // Ticks fall on a grid of TICK_SLOT from the manager's start, so the
        // probes of many workers due at about the same time run in one wake-up
        // of the prober thread (and their connections complete in one poll)
        // instead of one wake-up each: at hundreds of probes a second the
        // wake-ups cost more than the probes' own work.
        let mut ticker = tokio::time::interval_at(
            slot_at_or_after(self.shared.started, first),
            self.timing.period,
        );
        // As Go's ticker: a tick missed (a probe slower than its period) is
        // dropped, and the grid is kept.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Waiting on the cancellation and the kick is set up once, not at
        // every tick (each wait registers with a lock held).
        let cancelled = self.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        let mut kicked = Box::pin(self.kick.clone().notified_owned());
        loop {
            tokio::select! {
                _ = &mut cancelled => break,
                _ = ticker.tick() => {}
                _ = &mut kicked => {
                    kicked.set(self.kick.clone().notified_owned());
                    // Only a probe that has no result for the current container
                    // runs early (upstream kicks readiness probes not yet run).
                    if !self.awaits_first_result() {
                        continue;
                    }
                }
            }
            if !self.do_probe().await {
                break;
            }
        }
        self.finish();
    }

    /// True when the container probed is not the newest one, or a readiness
    /// probe has not passed on it yet.
    fn awaits_first_result(&self) -> bool {
        let newest = self.newest().map(|c| c.id);
        newest.is_some() && (newest != self.container_id || self.run == 0)
    }

    fn newest(&self) -> Option<ProbeView> {
        self.shared
            .cache
            .probe_view(&self.uid, &self.container.name, self.init)
    }

    /// Its metric series' labels.
    pub(crate) fn labels(&self) -> &ProbeLabels {
        &self.labels
    }

    /// The worker ends: its result goes with it (its metric series are the
    /// manager's to remove, see [`super::ProbeManager::update_pod`]).
    fn finish(&self) {
        if let Some(id) = &self.container_id {
            self.shared
                .transient
                .set_probe(&self.uid, id, self.probe_type, None);
        }
    }

    fn set_result(&self, id: &str, result: ProbeResult) {
        let changed = self
            .shared
            .transient
            .set_probe(&self.uid, id, self.probe_type, Some(result));
        // A liveness or startup failure is acted on by the pod sync (it kills
        // the container); a startup success lets the next sidecar start.
        if changed
            && (result == ProbeResult::Failure || self.probe_type == ProbeType::Startup)
            && self.probe_type != ProbeType::Readiness
        {
            let _ = self.shared.trigger.send(self.uid.clone());
        }
    }

    /// One tick of the kubelet's `doProbe`. False when the worker should end.
    async fn do_probe(&mut self) -> bool {
        let Some(c) = self.newest() else {
            // Not created yet.
            return true;
        };
        if self.container_id.as_deref() != Some(c.id.as_str()) {
            if let Some(old) = self.container_id.take() {
                self.shared
                    .transient
                    .set_probe(&self.uid, &old, self.probe_type, None);
            }
            self.container_id = Some(c.id.clone());
            self.last = self.probe_type.initial();
            self.run = 0;
            self.on_hold = false;
            self.set_result(&c.id, self.probe_type.initial());
        }
        if self.on_hold {
            return true;
        }
        if c.state != ContainerState::Running {
            // Not running: not ready, not live; a container that will not run
            // again ends the worker.
            if c.state == ContainerState::Exited {
                self.set_result(&c.id, ProbeResult::Failure);
                return !self.never_restarts;
            }
            return true;
        }
        let probes = self.shared.transient.probe(&self.uid, &c.id);
        let started =
            self.container.startup_probe.is_none() || probes.startup == Some(ProbeResult::Success);
        match self.probe_type {
            // The startup probe runs until it has passed once.
            ProbeType::Startup if started => return true,
            // Liveness and readiness wait for the startup probe.
            ProbeType::Liveness | ProbeType::Readiness if !started => return true,
            _ => {}
        }
        let running_for = crate::util::unix_nanos_now().saturating_sub(c.started_at);
        if c.started_at > 0 && running_for < self.timing.initial_delay.as_nanos() as i64 {
            return true;
        }

        let Some(result) = self.probe_once(&c).await else {
            // An error (not a failure): the result is thrown away.
            return true;
        };
        if result == self.last {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = result;
            self.run = 1;
        }
        if (result == ProbeResult::Failure && self.run < self.timing.failure_threshold)
            || (result == ProbeResult::Success && self.run < self.timing.success_threshold)
        {
            return true;
        }
        self.set_result(&c.id, result);
        if result == ProbeResult::Failure && self.probe_type != ProbeType::Readiness {
            // The container is killed and replaced; nothing more until then.
            self.on_hold = true;
            self.run = 0;
        }
        true
    }

    /// Run the probe (retrying errors), record its metrics and events, and
    /// return its result; None when it could not be run at all.
    async fn probe_once(&mut self, c: &ProbeView) -> Option<ProbeResult> {
        let started = Instant::now();
        let mut outcome = Outcome::Error(String::new());
        for _ in 0..MAX_PROBE_RETRIES {
            outcome = self.act(c).await;
            if !matches!(outcome, Outcome::Error(_)) {
                break;
            }
        }
        let kind = self.probe_type.as_str();
        let result = match &outcome {
            Outcome::Success(_) => ProbeResult::Success,
            Outcome::Warning(output) => {
                self.shared.events.record(
                    &self.obj,
                    EventType::Warning,
                    "ProbeWarning",
                    format!("{kind} probe warning: {output}"),
                );
                ProbeResult::Success
            }
            Outcome::Failure(output) => {
                tracing::info!(pod = %self.pod_key(), container = %self.container.name, probe = kind, output = %output, "probe failed");
                self.shared.events.record(
                    &self.obj,
                    EventType::Warning,
                    "Unhealthy",
                    format!("{kind} probe failed: {output}"),
                );
                ProbeResult::Failure
            }
            Outcome::Error(err) => {
                tracing::warn!(pod = %self.pod_key(), container = %self.container.name, probe = kind, error = %err, "probe errored");
                self.shared.events.record(
                    &self.obj,
                    EventType::Warning,
                    "Unhealthy",
                    format!("{kind} probe errored and resulted in unknown state: {err}"),
                );
                self.series.observe(ProbeResult::Unknown, started.elapsed());
                return None;
            }
        };
        self.series.observe(result, started.elapsed());
        Some(result)
    }

    /// The probe's action against container `c`, once.
    async fn act(&mut self, c: &ProbeView) -> Outcome {
        let timeout = self.timing.timeout;
        if let Some(e) = &self.probe.exec {
            let cmd =
                super::exec::command(&self.container, e.command.as_deref().unwrap_or_default());
            return super::exec::probe(&self.shared.client, &c.id, cmd, timeout).await;
        }
        let pod_ip: &str = if self.host_network {
            &self.shared.node_ip
        } else {
            &c.pod_ip
        };
        if let Some(h) = &self.probe.http_get {
            let port = match super::resolve_port(&h.port, &self.container) {
                Ok(port) => port,
                Err(e) => return Outcome::Error(e),
            };
            let prepared = match &self.http {
                Some(p) if p.is_for(pod_ip, port) => p,
                _ => self
                    .http
                    .insert(super::http::Prepared::new(h, pod_ip, port)),
            };
            return prepared.run(timeout).await;
        }
        if let Some(t) = &self.probe.tcp_socket {
            let host = t
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .unwrap_or(pod_ip);
            return match super::resolve_port(&t.port, &self.container) {
                Ok(port) => super::tcp::probe(host, port, timeout).await,
                Err(e) => Outcome::Error(e),
            };
        }
        if let Some(g) = &self.probe.grpc {
            let Some(port) = u16::try_from(g.port).ok().filter(|p| *p > 0) else {
                return Outcome::Error(format!("invalid port number: {}", g.port));
            };
            return super::grpc::probe(&mut self.grpc, pod_ip, port, g.service.as_deref(), timeout)
                .await;
        }
        Outcome::Error("missing probe handler".into())
    }

    fn pod_key(&self) -> String {
        format!("{}/{}", self.obj.namespace, self.obj.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_the_grid_at_or_after_the_asked_instant() {
        let origin = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        // On the grid: that very instant.
        assert_eq!(slot_at_or_after(origin, origin), origin);
        assert_eq!(slot_at_or_after(origin, origin + ms(100)), origin + ms(100));
        // Between two slots: the next one, never an earlier one.
        assert_eq!(slot_at_or_after(origin, origin + ms(1)), origin + ms(50));
        assert_eq!(slot_at_or_after(origin, origin + ms(149)), origin + ms(150));
        assert_eq!(
            slot_at_or_after(origin, origin + Duration::from_nanos(50_000_001)),
            origin + ms(100)
        );
        // Before the origin (a clock read earlier): the origin itself.
        let later = origin + ms(500);
        assert_eq!(slot_at_or_after(later, origin), later);
        // Far ahead: still on the grid, no overflow.
        let far = origin + Duration::from_secs(10 * 365 * 24 * 3600) + ms(7);
        let slot = slot_at_or_after(origin, far);
        assert!(slot >= far && slot - far < TICK_SLOT);
        assert_eq!((slot - origin).as_nanos() % TICK_SLOT.as_nanos(), 0);
    }
}
