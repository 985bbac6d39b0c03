//! Wiring: start the parts in order and stop them together.
//!
//! Order: status server (so `/healthz` explains a wait) → reach the runtime
//! (retrying with back-off) → manifests → PLEG + workers → `READY=1`. Shutdown
//! (SIGTERM/SIGINT) cancels one token; pods keep running, as with the kubelet.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pleg::{Pleg, RuntimeCache};
use crate::runtime::{RuntimeManager, Settings};
use crate::server::NodeView;
use crate::source::{ManifestError, PodConfig, pod_key, uid_of};
use crate::status::TransientStore;
use crate::workers::PodWorkers;

/// What the status server reads: desired pods, observed state, health.
struct View {
    config: Arc<PodConfig>,
    cache: Arc<RuntimeCache>,
    transient: Arc<TransientStore>,
    node_name: String,
    node_ip: String,
    endpoint: String,
    node: Arc<crate::admission::NodeState>,
    pressure: crate::eviction::SharedPressure,
    host: Arc<crate::hostcheck::HostHealth>,
}

impl View {
    /// `pod` with its status as of now.
    fn with_status(&self, mut pod: Pod, runtime_name: &str) -> Pod {
        let uid = uid_of(&pod);
        pod.status = Some(crate::status::compute_pod_status(
            &pod,
            &self.cache.get(&uid),
            &self.transient.get(&uid),
            &self.node_ip,
            runtime_name,
        ));
        pod
    }

    fn runtime_name(&self) -> String {
        self.cache
            .runtime_version()
            .map(|v| v.runtime_name)
            .unwrap_or_else(|| "containerd".into())
    }
}

impl NodeView for View {
    fn pods(&self) -> Vec<Pod> {
        let runtime_name = self.runtime_name();
        self.config
            .pods()
            .into_iter()
            .map(|sp| self.with_status(sp.pod, &runtime_name))
            .collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        // Only the asked-for pod's status is built (the status of every pod
        // was, for each GET of one).
        let sp = self.config.pods().into_iter().find(|sp| {
            sp.pod.metadata.name.as_deref() == Some(name)
                && sp.pod.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })?;
        Some(self.with_status(sp.pod, &self.runtime_name()))
    }

    fn manifest_errors(&self) -> Vec<ManifestError> {
        self.config.errors()
    }

    fn pod_warnings(&self) -> Vec<(String, Vec<String>)> {
        self.config
            .pods()
            .into_iter()
            .filter(|sp| !sp.warnings.is_empty())
            .map(|sp| (pod_key(&sp.pod), sp.warnings))
            .collect()
    }

    fn health(&self) -> Result<(), String> {
        crate::hostcheck::node_health(&self.cache, &self.host)
    }

    fn runtime_info(&self) -> serde_json::Value {
        let v = self.cache.runtime_version();
        serde_json::json!({
            "endpoint": self.endpoint,
            "name": v.as_ref().map(|v| v.runtime_name.clone()),
            "version": v.as_ref().map(|v| v.runtime_version.clone()),
            "apiVersion": v.as_ref().map(|v| v.runtime_api_version.clone()),
        })
    }

    fn node_name(&self) -> String {
        self.node_name.clone()
    }

    fn pressure(&self) -> serde_json::Value {
        let p = self
            .pressure
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "pressure": p.pressure,
            "thresholdsMet": p.thresholds_met,
        })
    }

    fn node_resources(&self) -> serde_json::Value {
        let r = self.node.resources();
        serde_json::json!({
            "capacity": r.capacity_list(),
            "allocatable": r.allocatable_list(),
        })
    }
}

/// The eviction manager's hands: the admitter's decisions, an event, and a
/// poke of the pod's worker (which stops the pod).
struct Evictions {
    admitter: Arc<crate::admission::Admitter>,
    events: crate::events::EventRecorder,
    trigger: mpsc::UnboundedSender<crate::Uid>,
}

impl crate::eviction::Evictor for Evictions {
    fn active_pods(&self) -> Vec<crate::source::SourcedPod> {
        self.admitter.active_pods()
    }

    fn evict(&self, pod: &Pod, grace: i64, message: String) -> bool {
        let uid = uid_of(pod);
        tracing::warn!(pod = %crate::source::pod_key(pod), pod.uid = %uid, grace, message, "eviction manager: evicting pod");
        self.admitter.evict(
            &uid,
            crate::source::Rejection {
                reason: crate::eviction::REASON_EVICTED.to_string(),
                message: message.clone(),
                evicted: Some(grace),
            },
        );
        self.events.record(
            &crate::events::ObjectRef::pod(pod),
            crate::events::EventType::Warning,
            crate::eviction::REASON_EVICTED,
            message,
        );
        let _ = self.trigger.send(uid);
        true
    }
}

/// Run the agent until `cancel` fires.
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let client = berth_cri::RuntimeClient::lazy(
        &config.container_runtime_endpoint,
        berth_cri::ConnectOptions::default(),
    )
    .context("--container-runtime-endpoint")?
    .with_observer(metrics.clone());

    let (trigger_tx, mut trigger_rx) = mpsc::unbounded_channel();
    let pod_config = PodConfig::new(trigger_tx.clone());
    let cache = RuntimeCache::new();
    let transient = Arc::new(TransientStore::default());
    let host_health = Arc::new(crate::hostcheck::HostHealth::default());

    // Capacity and allocatable, as the Node reports them and admission uses them.
    let resources = {
        let capacity = crate::allocatable::host_capacity(&config.root_dir, config.max_pods);
        let allocatable = crate::allocatable::allocatable(
            &capacity,
            &config.system_reserved,
            &config.kube_reserved,
            &config.eviction_hard,
        );
        crate::allocatable::NodeResources {
            capacity,
            allocatable,
        }
    };
    tracing::info!(
        capacity = ?resources.capacity_list(),
        allocatable = ?resources.allocatable_list(),
        "node resources"
    );
    let node_cgroup = crate::allocatable::node_cgroup_config(
        &resources.capacity,
        crate::allocatable::pid_max().unwrap_or(-1),
        &config.system_reserved,
        &config.kube_reserved,
        config.enforce_node_allocatable_pods,
    );
    let pressure: crate::eviction::SharedPressure = Arc::default();
    let node_state = crate::admission::NodeState::new(crate::admission::NodeInfo {
        name: config.node_name.clone(),
        labels: crate::cluster::node::default_labels(&config.node_name),
        taints: Vec::new(),
        resources,
    });

    // The status server comes first, so /healthz can say what the agent waits for.
    let listener = tokio::net::TcpListener::bind(config.status_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on --status-address {}",
                config.status_address
            )
        })?;
    tracing::info!(address = %config.status_address, "status server listening");
    let view: Arc<dyn NodeView> = Arc::new(View {
        config: pod_config.clone(),
        cache: cache.clone(),
        transient: transient.clone(),
        node_name: config.node_name.clone(),
        node_ip: config.node_ip.clone(),
        endpoint: config.container_runtime_endpoint.clone(),
        node: node_state.clone(),
        pressure: pressure.clone(),
        host: host_health.clone(),
    });
    // The Summary API: ready once the runtime manager (and its pod cgroups) is.
    let stats_provider: Arc<std::sync::OnceLock<Arc<crate::stats::StatsProvider>>> = Arc::default();
    let summary: crate::server::SummarySource = {
        let provider = stats_provider.clone();
        let pod_config = pod_config.clone();
        Arc::new(move || {
            let provider = provider.get().cloned();
            let pods: Vec<Pod> = pod_config.pods().into_iter().map(|sp| sp.pod).collect();
            Box::pin(async move {
                match provider {
                    Some(p) => p.summary(&pods).await.map_err(|e| e.to_string()),
                    None => Err("the container runtime has not been reached yet".to_string()),
                }
            })
        })
    };
    let server = tokio::spawn(crate::server::serve(
        listener,
        view.clone(),
        metrics.clone(),
        Some(summary.clone()),
        cancel.clone(),
    ));
    // The authenticated server (logs, exec), when it has a client CA.
    let streaming = crate::streaming::start(
        &config,
        Arc::new(crate::streaming::Host {
            view,
            runtime: client.clone(),
            stats: Some(summary.clone()),
        }),
        cancel.clone(),
    )
    .await?;

    // The API server, when configured: node, lease and the pods bound here.
    // Started before the runtime is reached, so the Node says why it is not Ready.
    // Events are logged; in cluster mode they also go to the API server.
    let mut events = crate::events::EventRecorder::log_only();
    let mut api_client_for_runtime: Option<kube::Client> = None;
    let cluster = match &config.kubeconfig {
        Some(path) => {
            let (api_client, server) = crate::cluster::client_from_kubeconfig(path).await?;
            tracing::info!(kubeconfig = %path.display(), server = %server, "registering with the API server");
            let (recorder, rx) = crate::events::EventRecorder::channel(
                crate::events::QUEUE_CAPACITY,
                Some(metrics.clone()),
            );
            events = recorder;
            tokio::spawn(crate::events::run_sink(
                api_client.clone(),
                config.node_name.clone(),
                rx,
                metrics.clone(),
                cancel.clone(),
            ));
            api_client_for_runtime = Some(api_client.clone());
            Some(crate::cluster::spawn(crate::cluster::Context {
                client: api_client,
                server,
                node_name: config.node_name.clone(),
                node_ip: config.node_ip.clone(),
                root_dir: config.root_dir.clone(),
                status_port: streaming
                    .as_ref()
                    .map_or(config.status_address.port(), |s| s.port),
                pod_config: pod_config.clone(),
                cache: cache.clone(),
                transient: transient.clone(),
                node: node_state.clone(),
                pressure: pressure.clone(),
                host: host_health.clone(),
                cancel: cancel.clone(),
            }))
        }
        None => None,
    };
    // Until the api source has listed once, a pod the runtime holds may be one
    // of its pods: the PLEG must not have it removed as undesired (the kubelet's
    // "sources ready"). Such pods are synced once the list arrives.
    let api_source = config.kubeconfig.is_some();
    let sources_ready = {
        let pod_config = pod_config.clone();
        move |uid: &str| {
            !api_source
                || pod_config.has_source(crate::cluster::API_SOURCE)
                || pod_config.get(uid).is_some()
        }
    };

    // Reach the runtime; a missing runtime is waited for, not fatal.
    crate::notify::status("waiting for the container runtime");
    let mut wait = Duration::from_millis(500);
    loop {
        match client.check_version().await {
            Ok(v) => {
                tracing::info!(runtime = %v.runtime_name, version = %v.runtime_version, api = %v.runtime_api_version, "container runtime reached");
                cache.set_runtime_version(v);
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?wait, "container runtime not reachable");
                cache.set_error(e.to_string());
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }

    // The cgroup driver: the runtime's where its RuntimeConfig names one, else
    // --cgroup-driver (the kubelet's getCgroupDriverFromCRI); one this host
    // cannot run stops the start.
    let cgroup_driver = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        choice = crate::cgroups::driver_from_cri(&client, config.cgroup_driver, Default::default()) => choice?,
    };
    let cgroup_manager = tokio::task::spawn_blocking(move || {
        crate::cgroups::new_manager(cgroup_driver, &crate::cgroups::Host::detect())
    })
    .await
    .context("choosing the cgroup driver")??;
    let pod_cgroups = crate::cgroups::PodCgroups::new(cgroup_manager, &config.cgroup_root)
        .with_context(|| format!("--cgroup-root {:?}", config.cgroup_root))?;

    let manager = RuntimeManager::new(
        client.clone(),
        Settings {
            node_name: config.node_name.clone(),
            node_ip: config.node_ip.clone(),
            root_dir: config.root_dir.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            cgroup_root: config.cgroup_root.clone(),
        },
        metrics.clone(),
    )
    .with_events(events.clone())
    .with_cgroups(pod_cgroups)
    .with_cgroup_limits(config.cpu_cfs_quota, config.pod_max_pids, node_cgroup)
    .with_transient_store(transient.clone())
    .with_runtime_cache(cache.clone())
    .with_runtime_classes(config.runtime_classes.clone());
    let manager = Arc::new(match api_client_for_runtime {
        Some(c) => manager.with_api_client(c),
        None => manager,
    });
    let _ = stats_provider.set(Arc::new(crate::stats::StatsProvider::new(
        client.clone(),
        cache.clone(),
        manager.cgroups().clone(),
        crate::stats::StatsSettings {
            node_name: config.node_name.clone(),
            root_dir: config.root_dir.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            cgroup_root: config.cgroup_root.clone(),
        },
    )));
    // Eviction signals against the hard thresholds: the pressure conditions.
    let image_dir = client
        .image_fs_info(berth_cri::api::ImageFsInfoRequest::default())
        .await
        .ok()
        .and_then(|r| r.image_filesystems.into_iter().next())
        .and_then(|fs| fs.fs_id)
        .map(|id| std::path::PathBuf::from(id.mountpoint))
        .filter(|p| p.is_absolute());
    spawn_qos_cgroups(
        manager.cgroups().clone(),
        pod_config.clone(),
        transient.clone(),
        &config.cgroup_root,
        cancel.clone(),
    );
    let relist_poke = Arc::new(Notify::new());
    let workers = PodWorkers::new(
        manager.clone(),
        pod_config.clone(),
        transient.clone(),
        metrics.clone(),
        config.sync_frequency,
        relist_poke.clone(),
        cancel.clone(),
    );
    {
        // A pod counts against the node until it has finished.
        let (observed, transient, node_ip) =
            (cache.clone(), transient.clone(), config.node_ip.clone());
        let finished: crate::admission::IsFinished = Box::new(move |pod: &Pod| {
            let uid = uid_of(pod);
            let status = crate::status::compute_pod_status(
                pod,
                &observed.get(&uid),
                &transient.get(&uid),
                &node_ip,
                "",
            );
            matches!(
                status.phase.as_deref(),
                Some(crate::status::phase::SUCCEEDED | crate::status::phase::FAILED)
            )
        });
        let admitter = crate::admission::Admitter::new(
            pod_config.clone(),
            cache.clone(),
            node_state.clone(),
            finished,
            Some(config.root_dir.join("admission")),
        );
        admitter.set_pressure(pressure.clone());
        {
            // A pod preempted for a critical one: an event, and its worker
            // stops it (the decision is the admitter's).
            let (events, trigger) = (events.clone(), trigger_tx.clone());
            admitter.set_preemption_hook(Box::new(
                move |pod: &Pod, r: &crate::source::Rejection| {
                    events.record(
                        &crate::events::ObjectRef::pod(pod),
                        crate::events::EventType::Warning,
                        &r.reason,
                        r.message.clone(),
                    );
                    let _ = trigger.send(uid_of(pod));
                },
            ));
        }
        workers.set_admitter(admitter.clone());

        // The eviction manager: signals against the hard and soft thresholds,
        // the pressure conditions, node-level reclaim, and evictions.
        let mut thresholds = config.eviction_hard.clone();
        thresholds.extend(config.eviction_soft.iter().copied());
        let host: Arc<dyn crate::eviction::SignalSource> = Arc::new(crate::eviction::HostSignals {
            root_dir: config.root_dir.clone(),
            image_dir: image_dir.clone(),
        });
        let source: Arc<dyn crate::eviction::SignalSource> = match &config.eviction_signals_file {
            Some(path) => {
                tracing::warn!(file = %path.display(), "eviction signals are read from a test file over the host's");
                Arc::new(crate::eviction::FileSignals {
                    path: path.clone(),
                    host,
                })
            }
            None => host,
        };
        tracing::info!(image_fs = ?image_dir, thresholds = thresholds.len(), "eviction manager");
        crate::eviction::Manager {
            source,
            tracker: crate::eviction::PressureTracker::new(
                thresholds,
                config.eviction_pressure_transition_period,
            ),
            shared: pressure.clone(),
            summary: summary.clone(),
            reclaim: Some(crate::eviction::Reclaimer {
                client: client.clone(),
            }),
            evictor: Arc::new(Evictions {
                admitter,
                events: events.clone(),
                trigger: trigger_tx.clone(),
            }),
            max_pod_grace_period: config.eviction_max_pod_grace_period,
        }
        .spawn(cancel.clone());
    }
    workers.set_prober(crate::prober::ProbeManager::new(
        client.clone(),
        cache.clone(),
        transient,
        events.clone(),
        metrics.probes.clone(),
        trigger_tx.clone(),
        config.node_ip.clone(),
        cancel.clone(),
    ));

    // The first relist adopts what is running (including pods whose manifest
    // went away while the agent was down: their workers remove them). It runs
    // before the manifests are read, so a running static pod keeps its name
    // against a newcomer manifest even right after a restart.
    let mut pleg = Pleg::new(client.clone(), cache.clone(), metrics.clone());
    let adopted = match pleg.relist().await {
        Ok(changed) => changed,
        Err(e) => {
            cache.set_error(e.to_string());
            Vec::new()
        }
    };
    let source = crate::source::file::spawn(
        config.pod_manifest_path.clone(),
        config.node_name.clone(),
        config.file_check_frequency,
        pod_config.clone(),
        crate::source::file::Neighbours {
            runtime_uids: Some({
                let cache = cache.clone();
                Arc::new(move || cache.uids())
            }),
            on_ignored: Some({
                let events = events.clone();
                Arc::new(move |ig: &crate::source::file::IgnoredPod| {
                    events.record(
                        &crate::events::ObjectRef::pod(&ig.pod),
                        crate::events::EventType::Warning,
                        "FailedValidation",
                        ig.event_message(),
                    )
                })
            }),
        },
        cancel.clone(),
    );
    pod_config.wait_loaded().await;
    tracing::info!(pods = pod_config.uids().len(), errors = pod_config.errors().len(), dir = %config.pod_manifest_path.display(), "manifests loaded");
    tracing::info!(
        pods = adopted.len(),
        "first relist done; adopting what runs"
    );
    for uid in adopted {
        if sources_ready(&uid) {
            workers.trigger(uid);
        }
    }
    // containerd 1.6 has no CRI GetContainerEvents; its own event service, on
    // the same socket, reports task exits in milliseconds: each shows in the
    // PLEG cache at once and wakes the relist (the relist stays the truth;
    // see `runtime_events`).
    let runtime_events_task = config.runtime_events.then(|| {
        match crate::runtime_events::Subscriber::new(
            &config.container_runtime_endpoint,
            relist_poke.clone(),
            metrics.runtime_events.clone(),
        ) {
            Ok(sub) => Some(tokio::spawn(sub.with_cri(client.clone()).run(cancel.clone()))),
            Err(error) => {
                tracing::warn!(%error, "not following containerd's task events; relist alone notices exits");
                None
            }
        }
    });
    let pleg_task = {
        let workers = workers.clone();
        let cancel = cancel.clone();
        let period = config.relist_period;
        let sources_ready = sources_ready.clone();
        tokio::spawn(async move {
            pleg.run(period, relist_poke, cancel, |uid| {
                if sources_ready(&uid) {
                    workers.trigger(uid)
                }
            })
            .await
        })
    };
    // Disk, runtime conditions, CNI plugins, the sandbox image: reasons on
    // /healthz and the Node's Ready condition.
    crate::hostcheck::spawn(
        crate::hostcheck::Context {
            client: client.clone(),
            cache: cache.clone(),
            health: host_health.clone(),
            root_dir: config.root_dir.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            node_name: config.node_name.clone(),
            events: events.clone(),
        },
        cancel.clone(),
    );
    crate::housekeeping::spawn(
        workers.clone(),
        manager.clone(),
        pod_config.clone(),
        cache.clone(),
        {
            let pod_config = pod_config.clone();
            move || !api_source || pod_config.has_source(crate::cluster::API_SOURCE)
        },
        cancel.clone(),
    );
    if api_source {
        // Once the api source has listed, sync every pod the runtime holds
        // (those left over are removed then).
        let workers = workers.clone();
        let pod_config = pod_config.clone();
        let cache = cache.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while !pod_config.has_source(crate::cluster::API_SOURCE) {
                if !crate::util::sleep_or_cancel(&cancel, Duration::from_millis(200)).await {
                    return;
                }
            }
            for uid in cache.uids() {
                workers.trigger(uid);
            }
        });
    }
    let events_task = {
        let workers = workers.clone();
        let sources_ready = sources_ready.clone();
        tokio::spawn(crate::pleg::watch_container_events(
            client.clone(),
            cancel.clone(),
            move |uid| {
                if sources_ready(&uid) {
                    workers.trigger(uid)
                }
            },
        ))
    };

    crate::notify::ready(&format!(
        "running {} pods from {}",
        pod_config.uids().len(),
        config.pod_manifest_path.display()
    ));

    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            uid = trigger_rx.recv() => match uid {
                Some(uid) => workers.trigger(uid),
                None => break,
            },
        }
    }
    crate::notify::stopping();
    tracing::info!("shutting down; pods keep running");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = source.await;
        let _ = pleg_task.await;
        let _ = events_task.await;
        if let Some(Some(task)) = runtime_events_task {
            let _ = task.await;
        }
        let _ = server.await;
        if let Some(streaming) = streaming {
            let _ = streaming.task.await;
        }
        if let Some(cluster) = cluster {
            let _ = cluster.await;
        }
    })
    .await;
    Ok(())
}

/// How often the QoS tiers' values follow the node's pods
/// (`periodicQOSCgroupUpdateInterval`).
const QOS_CGROUP_UPDATE_INTERVAL: Duration = Duration::from_secs(60);

/// Make the cgroup root and QoS tiers, and keep the Burstable tier's CPU
/// shares at the sum of its pods' requests (the kubelet's QoS container
/// manager). A failure is logged once (a host without writable cgroups),
/// then at debug level. Orphaned pod cgroups (the kubelet's
/// `cleanupOrphanedPodCgroups`) are the orphan sweep's
/// ([`crate::housekeeping`]).
fn spawn_qos_cgroups(
    cgroups: crate::cgroups::PodCgroups,
    pod_config: Arc<crate::source::PodConfig>,
    transient: Arc<TransientStore>,
    cgroup_root: &str,
    cancel: CancellationToken,
) {
    tracing::info!(
        mode = %crate::cgroups::detect_mode(),
        driver = cgroups.manager().driver().as_str(),
        cgroup_root,
        "cgroups"
    );
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            // Pods admission refused run nowhere: their requests count for nothing.
            let pods: Vec<Pod> = pod_config
                .pods()
                .into_iter()
                .map(|p| p.pod)
                .filter(|p| transient.get(&uid_of(p)).rejected.is_none())
                .collect();
            let c = cgroups.clone();
            let result = tokio::task::spawn_blocking(move || {
                c.ensure_qos_cgroups()?;
                c.update_qos_cgroups(pods.iter())
            })
            .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "setting the QoS cgroups failed");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "setting the QoS cgroups failed"),
                Err(e) => tracing::warn!(error = %e, "QoS cgroup task failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(QOS_CGROUP_UPDATE_INTERVAL) => {}
            }
        }
    });
}
