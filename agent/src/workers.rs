//! Pod workers: one task per pod UID, so a pod is never synced twice at once.
//!
//! A trigger (a manifest change, a PLEG event, a back-off expiring) only marks
//! the pod dirty; however many arrive during a sync, one more sync follows
//! (a channel of capacity one deduplicates them, as kube-runtime's runner does).
//! Each sync is level-triggered: it reads the desired pod afresh and compares
//! it with the runtime, so a missed trigger costs latency, never correctness.
//! A worker ends when its pod is neither desired nor present in the runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Uid;
use crate::metrics::Metrics;
use crate::runtime::RuntimeManager;
use crate::runtime::sync::SyncOutcome;
use crate::source::{PodConfig, is_terminating, pod_key, termination_grace};
use crate::status::TransientStore;

/// Back-off after a failed sync: 1 s doubling to 30 s.
const ERROR_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The pod workers.
pub struct PodWorkers {
    manager: Arc<RuntimeManager>,
    config: Arc<PodConfig>,
    transient: Arc<TransientStore>,
    metrics: Arc<Metrics>,
    sync_frequency: Duration,
    /// Poked after a sync changed something, so the PLEG relists soon.
    relist: Arc<Notify>,
    cancel: CancellationToken,
    workers: Mutex<HashMap<Uid, mpsc::Sender<()>>>,
    /// The probe workers, kept in step with each pod after its sync.
    prober: std::sync::OnceLock<Arc<crate::prober::ProbeManager>>,
    /// Admission: a pod it refuses never reaches the runtime.
    admitter: std::sync::OnceLock<Arc<crate::admission::Admitter>>,
}

impl PodWorkers {
    /// Workers syncing pods from `config` through `manager`.
    pub fn new(
        manager: Arc<RuntimeManager>,
        config: Arc<PodConfig>,
        transient: Arc<TransientStore>,
        metrics: Arc<Metrics>,
        sync_frequency: Duration,
        relist: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            manager,
            config,
            transient,
            metrics,
            sync_frequency,
            relist,
            cancel,
            workers: Mutex::new(HashMap::new()),
            prober: std::sync::OnceLock::new(),
            admitter: std::sync::OnceLock::new(),
        })
    }

    /// Start and stop each pod's probes with `prober` after its syncs (see
    /// [`crate::prober`]); without one, no probe runs.
    pub fn set_prober(&self, prober: Arc<crate::prober::ProbeManager>) {
        let _ = self.prober.set(prober);
    }

    /// Admit each pod with `admitter` before its first sync (see
    /// [`crate::admission`]); without one, every pod is admitted.
    pub fn set_admitter(&self, admitter: Arc<crate::admission::Admitter>) {
        let _ = self.admitter.set(admitter);
    }

    /// Ask for a sync of pod `uid`, starting its worker if it has none.
    pub fn trigger(self: &Arc<Self>, uid: Uid) {
        if uid.is_empty() || self.cancel.is_cancelled() {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = workers.get(&uid) {
            // Full means a sync is already pending: the trigger is deduplicated.
            match tx.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => return,
                Err(mpsc::error::TrySendError::Closed(())) => {}
            }
        }
        let (tx, rx) = mpsc::channel(1);
        // The first sync runs at once.
        let _ = tx.try_send(());
        workers.insert(uid.clone(), tx);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run(uid, rx).await });
    }

    /// The number of pods with a worker.
    pub fn len(&self) -> usize {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no pod has a worker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The UIDs of the pods with a worker.
    pub fn uids(&self) -> Vec<Uid> {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.keys().cloned().collect()
    }

    async fn run(self: Arc<Self>, uid: Uid, mut rx: mpsc::Receiver<()>) {
        let mut transient = self.transient.get(&uid);
        let mut delay = self.sync_frequency;
        let mut error_backoff = ERROR_BACKOFF_INITIAL;
        // An evicted pod stopped by this worker: nothing starts it again, so
        // later syncs need not read the runtime for it (a new worker, after a
        // restart of the agent, stops it once more).
        let mut evicted_stopped = false;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                msg = rx.recv() => if msg.is_none() { break },
                _ = tokio::time::sleep(delay) => {}
            }
            let desired = self.config.get(&uid);
            let pod_name = desired
                .as_ref()
                .map(|d| pod_key(&d.pod))
                .unwrap_or_else(|| "(removed)".to_string());
            let span = tracing::info_span!("sync", pod = %pod_name, pod.uid = %uid);
            if let (Some(admitter), Some(d)) = (self.admitter.get(), desired.as_ref())
                && !is_terminating(&d.pod)
                && let (crate::admission::Decision::Rejected(r), new) = admitter.decide(&uid)
            {
                // Refused: never run; Failed with the reason, an event once.
                if new {
                    span.in_scope(|| tracing::warn!(reason = %r.reason, message = %r.message, "pod rejected at admission"));
                    self.manager.events.record(
                        &crate::events::ObjectRef::pod(&d.pod),
                        crate::events::EventType::Warning,
                        &r.reason,
                        r.message.clone(),
                    );
                }
                if let Some(grace) = r.evicted.filter(|_| !evicted_stopped) {
                    // Evicted after it ran: stopped (idempotent; the runtime is
                    // read afresh), its containers kept as its record.
                    if let Err(e) = self
                        .manager
                        .stop_evicted(&uid, grace)
                        .instrument(span.clone())
                        .await
                    {
                        span.in_scope(|| tracing::warn!(error = %e, retry_in = ?error_backoff, "stopping an evicted pod failed"));
                        delay = error_backoff;
                        error_backoff = (error_backoff * 2).min(ERROR_BACKOFF_MAX);
                        continue;
                    }
                    error_backoff = ERROR_BACKOFF_INITIAL;
                    evicted_stopped = true;
                    if let Some(prober) = self.prober.get() {
                        prober.remove_pod(&uid);
                    }
                    self.relist.notify_one();
                    transient.waiting.clear();
                    transient.pod_error = None;
                }
                if transient.rejected.as_ref() != Some(&r) {
                    transient.rejected = Some(r);
                    self.transient.set(&uid, transient.clone());
                }
                delay = self.sync_frequency;
                continue;
            }
            let started = Instant::now();
            let grace = desired.as_ref().and_then(|d| termination_grace(&d.pod));
            // The probe results as of now: a liveness failure kills the container.
            transient.probes = self.transient.probes(&uid);
            // A trigger taken during the sync: one more sync follows at once.
            let mut again = false;
            let sync = self
                .manager
                .sync_pod(&uid, desired.as_ref(), &mut transient)
                .instrument(span.clone());
            let result = match grace {
                None => sync.await,
                Some(grace) => {
                    // A terminating pod's sync only stops and removes (each step
                    // idempotent), so it may be abandoned and redone at once when the
                    // deletion asks for less time (`kubectl delete --grace-period=1`
                    // after a 30 s delete), as upstream's pod workers cancel theirs.
                    let mut sync = std::pin::pin!(sync);
                    let result = loop {
                        tokio::select! {
                            r = &mut sync => break Some(r),
                            msg = rx.recv() => {
                                if msg.is_none() {
                                    break Some(sync.await);
                                }
                                again = true;
                                let now = self.config.get(&uid).and_then(|d| termination_grace(&d.pod));
                                if now.is_some_and(|g| g < grace) {
                                    span.in_scope(|| tracing::info!(grace = now, "deletion grace period shortened; stopping again"));
                                    break None;
                                }
                            }
                        }
                    };
                    match result {
                        Some(r) => r,
                        None => {
                            delay = Duration::ZERO;
                            continue;
                        }
                    }
                }
            };
            self.metrics.observe_sync(started.elapsed(), result.is_ok());
            self.relist.notify_one();
            if let (Some(prober), Ok(SyncOutcome::Synced { .. })) = (self.prober.get(), &result) {
                match &desired {
                    Some(d) => prober.update_pod(&d.pod),
                    None => prober.remove_pod(&uid),
                }
            }
            match result {
                Ok(SyncOutcome::Synced { requeue }) => {
                    self.transient.set(&uid, transient.clone());
                    error_backoff = ERROR_BACKOFF_INITIAL;
                    delay = requeue
                        .map(|r| r.min(self.sync_frequency))
                        .unwrap_or(self.sync_frequency);
                }
                Ok(SyncOutcome::Gone) => {
                    // Leave only if no trigger arrived meanwhile; under the lock,
                    // so `trigger` either sees us gone or reaches our channel.
                    let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                    // A pod being deleted stays known until its object goes, but
                    // nothing of it is left to stop.
                    let runs = self
                        .config
                        .get(&uid)
                        .is_some_and(|d| !is_terminating(&d.pod));
                    if rx.try_recv().is_ok() || runs {
                        drop(workers);
                        delay = Duration::ZERO;
                        continue;
                    }
                    workers.remove(&uid);
                    self.transient.remove(&uid);
                    if let Some(prober) = self.prober.get() {
                        prober.remove_pod(&uid);
                    }
                    span.in_scope(|| tracing::info!("pod removed"));
                    return;
                }
                Err(e) => {
                    self.transient.set(&uid, transient.clone());
                    span.in_scope(|| {
                        if e.is_unreachable() {
                            tracing::warn!(error = %e, retry_in = ?error_backoff, "sync failed: runtime unreachable");
                        } else {
                            tracing::warn!(error = %e, retry_in = ?error_backoff, "sync failed");
                        }
                    });
                    delay = error_backoff;
                    error_backoff = (error_backoff * 2).min(ERROR_BACKOFF_MAX);
                }
            }
            if again {
                delay = Duration::ZERO;
            }
        }
    }
}
