//! The prober manager: liveness, readiness and startup probes, with the
//! kubelet's semantics (pkg/kubelet/prober).
//!
//! - [`crate::probe_results`]: the latest result of every probe, keyed by
//!   container ID; what the pod status ([`crate::status`]) and the pod sync read.
//! - [`worker`]: one async task per probe of a container (no thread per probe),
//!   ticking every `periodSeconds` and counting results against the thresholds.
//! - [`exec`], [`http`], [`tcp`], [`grpc`]: the four probe actions.
//! - [`crate::metrics::probes`]: `prober_probe_total` and
//!   `prober_probe_duration_seconds`, served at `/metrics/probes`.
//!
//! Workers are started and stopped by [`ProbeManager::update_pod`], which the pod
//! workers call after every sync, so the set of workers follows the desired pods
//! level-triggered. Results live in memory only, as the kubelet's: after an agent
//! restart, a readiness probe reports not ready until it succeeds again and a
//! startup probe runs again (the containers keep running).

pub mod exec;
pub mod grpc;
pub mod http;
pub mod tcp;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Uid;
use crate::events::EventRecorder;
use crate::pleg::RuntimeCache;
use crate::source::uid_of;
use crate::status::TransientStore;

pub use crate::probe_results::{ContainerProbes, ProbeResult, ProbeType};

/// Probe settings with upstream's defaults (`timeoutSeconds` 1, `periodSeconds`
/// 10, `successThreshold` 1, `failureThreshold` 3), clamped to sane values so a
/// zero or negative number from an unvalidated source cannot spin a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(1)).unwrap_or(1))
        };
        let count =
            |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1);
        Timing {
            initial_delay: Duration::from_secs(
                u64::try_from(p.initial_delay_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            period: secs(p.period_seconds, 10),
            timeout: secs(p.timeout_seconds, 1),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
        }
    }
}

/// A probe worker's key: the pod, the container (init containers and app
/// containers have distinct names) and the probe type.
type WorkerKey = (Uid, String, ProbeType);

struct WorkerHandle {
    /// The container spec the worker runs with; a changed spec restarts it.
    container: Container,
    cancel: CancellationToken,
    /// Wakes the worker before its next tick (a readiness probe with no result
    /// yet runs as soon as the pod is synced, as upstream's manual trigger).
    kick: Arc<Notify>,
    /// Its metric series, removed when the probe goes for good (not when a
    /// changed spec restarts the worker: its successor keeps the series).
    labels: crate::metrics::probes::ProbeLabels,
}

/// What every worker shares.
pub(crate) struct Shared {
    pub client: berth_cri::RuntimeClient,
    pub cache: Arc<RuntimeCache>,
    pub transient: Arc<TransientStore>,
    pub events: EventRecorder,
    pub metrics: Arc<crate::metrics::probes::ProbeMetrics>,
    /// Where a pod UID goes to be synced (a liveness or startup failure).
    pub trigger: mpsc::UnboundedSender<Uid>,
    /// The node's IP: the pod IP of hostNetwork pods.
    pub node_ip: String,
    /// When the agent started: workers created in the first period after it
    /// wait a spread-out part of their period, so a restart does not probe
    /// every container at once.
    pub started: Instant,
}

/// Starts, stops and owns the probe workers.
pub struct ProbeManager {
    shared: Arc<Shared>,
    /// Where the workers run: a current-thread runtime on its own thread, so
    /// hundreds of probe timers a second wake one thread instead of handing
    /// work between the agent's worker threads (measured: the cross-thread
    /// wake-ups were most of the prober's cost).
    runtime: tokio::runtime::Handle,
    workers: Mutex<HashMap<WorkerKey, WorkerHandle>>,
    cancel: CancellationToken,
}

impl ProbeManager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: berth_cri::RuntimeClient,
        cache: Arc<RuntimeCache>,
        transient: Arc<TransientStore>,
        events: EventRecorder,
        metrics: Arc<crate::metrics::probes::ProbeMetrics>,
        trigger: mpsc::UnboundedSender<Uid>,
        node_ip: String,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let runtime = dedicated_runtime(cancel.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no thread for the prober; probes share the agent's runtime");
            tokio::runtime::Handle::current()
        });
        Arc::new(Self {
            runtime,
            shared: Arc::new(Shared {
                client,
                cache,
                transient,
                events,
                metrics,
                trigger,
                node_ip,
                started: Instant::now(),
            }),
            workers: Mutex::new(HashMap::new()),
            cancel,
        })
    }

    /// Make the workers of `pod` match its spec: one per probe of each
    /// container (sidecars included), restarted when the container's spec
    /// changes; a terminating pod keeps only its readiness probes, as upstream.
    /// Workers without a result for the current container are woken.
    pub fn update_pod(&self, pod: &Pod) {
        let uid = uid_of(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let spec = pod.spec.as_ref();
        let containers = spec
            .into_iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .filter(|c| berth_api::restart::is_restartable_init_container(c))
                    .map(|c| (c, true))
                    .chain(s.containers.iter().map(|c| (c, false)))
            })
            .collect::<Vec<_>>();
        let mut wanted: Vec<(WorkerKey, &Container, bool)> = Vec::new();
        for (c, init) in &containers {
            for t in ProbeType::ALL {
                if t.of(c).is_none() || (terminating && t != ProbeType::Readiness) {
                    continue;
                }
                wanted.push(((uid.clone(), c.name.clone(), t), c, *init));
            }
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = &self.shared.metrics;
        workers.retain(|key, handle| {
            let keep = key.0 != uid
                || wanted
                    .iter()
                    .any(|(k, c, _)| k == key && **c == handle.container);
            if !keep {
                handle.cancel.cancel();
                if !wanted.iter().any(|(k, _, _)| k == key) {
                    metrics.forget(&handle.labels);
                }
            }
            keep
        });
        for (key, c, init) in wanted {
            if let Some(handle) = workers.get(&key) {
                handle.kick.notify_one();
                continue;
            }
            let cancel = self.cancel.child_token();
            let kick = Arc::new(Notify::new());
            let w = worker::Worker::new(
                self.shared.clone(),
                pod,
                c.clone(),
                init,
                key.2,
                cancel.clone(),
                kick.clone(),
            );
            let labels = w.labels().clone();
            self.runtime.spawn(w.run());
            workers.insert(
                key,
                WorkerHandle {
                    container: c.clone(),
                    cancel,
                    kick,
                    labels,
                },
            );
        }
    }

    /// Stop every worker of pod `uid` (the pod is gone).
    pub fn remove_pod(&self, uid: &str) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.retain(|key, handle| {
            let keep = key.0 != uid;
            if !keep {
                handle.cancel.cancel();
                self.shared.metrics.forget(&handle.labels);
            }
            keep
        });
        drop(workers);
        self.shared.transient.clear_probes(uid);
    }

    /// The number of running probe workers.
    pub fn workers(&self) -> usize {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The probe metrics, for `/metrics/probes`.
    pub fn metrics(&self) -> &Arc<crate::metrics::probes::ProbeMetrics> {
        &self.shared.metrics
    }
}

/// A current-thread runtime on a thread of its own, until `cancel` fires.
fn dedicated_runtime(cancel: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("berth-prober".into())
        .spawn(move || rt.block_on(cancel.cancelled()))?;
    Ok(handle)
}

/// A port given by number or by the name of one of the container's ports, as
/// upstream's `probe.ResolveContainerPort`.
pub fn resolve_port(
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    c: &Container,
) -> Result<u16, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
        {
            Some(p) => p.container_port,
            None => name
                .parse::<i32>()
                .map_err(|_| format!("couldn't find port: {name:?} in {:?}", c.name))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

/// `host:port`, bracketing IPv6 addresses (Go's `net.JoinHostPort`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The outcome of running a probe action once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; the output (body, command output).
    Success(String),
    /// Passed with a warning (an HTTP redirect to another host); recorded as a
    /// `ProbeWarning` event.
    Warning(String),
    /// Failed; why, as upstream words it (`HTTP probe failed with statuscode: 500`).
    Failure(String),
    /// Could not be run (an unresolvable port, the runtime refused the exec):
    /// the result is thrown away, as upstream's worker does.
    Error(String),
}
