//! Pods bound to this node: a watch with `fieldSelector=spec.nodeName=<node>`
//! feeds [`PodConfig`] as the [`API_SOURCE`]; a status loop patches
//! `pods/<name>/status` from the runtime when it changed (at most once per pod
//! per second); a pod with `deletionTimestamp` is not desired, so its worker
//! stops it, and once nothing of it is left in the runtime it is deleted for
//! good (`gracePeriodSeconds=0`, uid precondition), as the kubelet's status
//! manager does.
//!
//! While the API server is away the source keeps its last snapshot (the
//! watcher reconnects with back-off), so running pods are never stopped for it.
//! Status is rebuilt from the runtime after a restart: nothing is kept locally.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use super::{API_SOURCE, Context, is_not_found, sleep_or_cancel};
use crate::Uid;
use crate::source::manifest::CONFIG_HASH_ANNOTATION;
use crate::source::{FILE_SOURCE, Snapshot, SourcedPod, pod_key, uid_of};

/// How often pod statuses are computed and compared.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Status fields the agent owns: when it no longer reports one, it is cleared.
const OWNED_STATUS_FIELDS: &[&str] = &[
    "phase",
    "reason",
    "message",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "qosClass",
    "initContainerStatuses",
    "containerStatuses",
    "ephemeralContainerStatuses",
];

/// The API's pods bound to this node, by UID, as last seen by the watch.
type Store = Arc<Mutex<BTreeMap<Uid, Pod>>>;

/// Watch the node's pods, report their status, finish their deletion.
pub async fn run(ctx: Context) {
    let store: Store = Arc::default();
    let status = tokio::spawn(status_loop(ctx.clone(), store.clone()));
    watch_loop(&ctx, &store).await;
    let _ = status.await;
}

/// The pod as the agent runs it: server-side bookkeeping and status dropped,
/// API defaults applied (so spec hashes stay stable across status updates).
pub fn desired(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    pod.status = None;
    pod.metadata.resource_version = None;
    pod.metadata.managed_fields = None;
    pod.metadata.generation = None;
    berth_api::defaults::apply(&mut pod);
    pod
}

/// The annotation marking a mirror pod (its value: the static pod's config hash).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// True for a mirror pod (the API's copy of a static pod: never run from the API).
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, MIRROR_ANNOTATION).is_some()
}

fn annotation<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The mirror pod of static pod `pod`: its metadata and spec, annotated with its config hash.
pub fn mirror_of(pod: &Pod) -> Pod {
    let mut m = pod.clone();
    m.status = None;
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    let hash = annotation(pod, CONFIG_HASH_ANNOTATION)
        .unwrap_or_default()
        .to_string();
    m.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR_ANNOTATION.to_string(), hash);
    m
}

/// The api source's snapshot (mirror pods excluded): every pod of `store` not being deleted.
pub fn snapshot(store: &BTreeMap<Uid, Pod>) -> Snapshot {
    Snapshot {
        pods: store
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_mirror(p))
            .map(|p| SourcedPod {
                pod: desired(p),
                file: PathBuf::from(API_SOURCE),
                warnings: Vec::new(),
            })
            .collect(),
        errors: Vec::new(),
    }
}

async fn watch_loop(ctx: &Context, store: &Store) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // Objects of a (re)list in progress; replaces the store when complete.
    let mut listing: Option<BTreeMap<Uid, Pod>> = None;
    loop {
        let event = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            e = events.next() => e,
        };
        let changed = match event {
            None => return,
            Some(Err(e)) => {
                // The back-off wrapper retries; the last snapshot stays in force.
                tracing::warn!(server = %ctx.server, error = %super::error_chain(&e), "pod watch failed; pods keep running, retrying");
                false
            }
            Some(Ok(Event::Init)) => {
                listing = Some(BTreeMap::new());
                false
            }
            Some(Ok(Event::InitApply(pod))) => {
                listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(uid_of(&pod), pod);
                false
            }
            Some(Ok(Event::InitDone)) => {
                let listed = listing.take().unwrap_or_default();
                *store.lock().unwrap_or_else(|e| e.into_inner()) = listed;
                true
            }
            Some(Ok(Event::Apply(pod))) => {
                let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                s.insert(uid_of(&pod), pod);
                true
            }
            Some(Ok(Event::Delete(pod))) => {
                let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                s.remove(&uid_of(&pod));
                true
            }
        };
        if changed {
            let snap = snapshot(&store.lock().unwrap_or_else(|e| e.into_inner()));
            let n = snap.pods.len();
            let changed = ctx.pod_config.apply_source(API_SOURCE, snap);
            if !changed.is_empty() {
                tracing::info!(pods = n, changed = changed.len(), "api pods updated");
            }
        }
    }
}

/// The status to report: computed from the runtime, keeping the conditions
/// others own (`PodScheduled` from the scheduler, readiness gates…).
pub fn merge_conditions(mut computed: PodStatus, server: Option<&PodStatus>) -> PodStatus {
    let theirs = server.and_then(|s| s.conditions.as_ref());
    if let Some(theirs) = theirs {
        let ours = computed.conditions.get_or_insert_with(Vec::new);
        for c in theirs {
            if !ours.iter().any(|o| o.type_ == c.type_) {
                ours.push(c.clone());
            }
        }
    }
    computed
}

/// A merge patch that sets `status` and clears the owned fields it lacks.
pub fn status_patch(status: &PodStatus) -> Value {
    let mut body =
        serde_json::to_value(status).unwrap_or_else(|_| Value::Object(Default::default()));
    if let Some(obj) = body.as_object_mut() {
        for field in OWNED_STATUS_FIELDS {
            obj.entry(field.to_string()).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": body })
}

/// `DELETE` with `gracePeriodSeconds=0` and a uid precondition; true when
/// the object is gone.
async fn delete_now(api: &Api<Pod>, pod: &Pod) -> bool {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid_of(pod)),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api.delete(&name, &params).await {
        Ok(_) => true,
        Err(e) if is_not_found(&e) => true,
        Err(e) => {
            tracing::warn!(pod = %pod_key(pod), error = %e, "deleting the pod failed; retrying");
            false
        }
    }
}

fn pods_api(ctx: &Context, pod: &Pod) -> Api<Pod> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    Api::namespaced(ctx.client.clone(), namespace)
}

/// Compute the status of `spec_pod` (runtime state by its UID) and patch it
/// onto the API object `target` when it differs from what was last sent.
async fn report(
    ctx: &Context,
    runtime_name: &str,
    target: &Pod,
    spec_pod: &Pod,
    sent: &mut HashMap<Uid, PodStatus>,
) {
    let uid = uid_of(spec_pod);
    let computed = crate::status::compute_pod_status(
        spec_pod,
        &ctx.cache.get(&uid),
        &ctx.transient.get(&uid),
        &ctx.node_ip,
        runtime_name,
    );
    let status = merge_conditions(computed, target.status.as_ref());
    let target_uid = uid_of(target);
    if sent.get(&target_uid) == Some(&status) {
        return;
    }
    let name = target.metadata.name.clone().unwrap_or_default();
    match pods_api(ctx, target)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(status_patch(&status)),
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(pod = %pod_key(target), phase = ?status.phase, "pod status patched");
            sent.insert(target_uid, status);
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            tracing::warn!(pod = %pod_key(target), error = %e, "pod status update failed; retrying");
        }
    }
}

/// The worker stops a removed pod's containers with the grace period recorded
/// on them (the spec's `terminationGracePeriodSeconds`); a deletion asking for
/// less (`kubectl delete --grace-period=N`) stops them again with that, and the
/// shorter stop wins. Each container is asked once (`done`).
fn shorten_grace(
    ctx: &Context,
    pod: &Pod,
    observed: &crate::observed::ObservedPod,
    grace: i64,
    done: &mut HashSet<String>,
) {
    for c in &observed.containers {
        let recorded = c
            .annotations
            .get(crate::observed::keys::POD_TERMINATION_GRACE_PERIOD)
            .and_then(|g| g.parse::<i64>().ok());
        let running = c.state == crate::observed::ContainerState::Running;
        if !running || recorded.is_some_and(|r| r <= grace) || !done.insert(c.id.clone()) {
            continue;
        }
        tracing::info!(pod = %pod_key(pod), container = %c.name, grace, "stopping within the deletion grace period");
        let runtime = ctx.runtime.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.stop_container(&id, grace).await {
                tracing::debug!(container = %id, error = %e, "stop within the deletion grace period failed");
            }
        });
    }
}

async fn status_loop(ctx: Context, store: Store) {
    // The status last patched per API object (not what the server holds: others
    // may add to it, which must not make us patch every second).
    let mut sent: HashMap<Uid, PodStatus> = HashMap::new();
    // API objects whose final DELETE went through.
    let mut deleted: HashSet<Uid> = HashSet::new();
    // Containers already told to stop within a pod's deletionGracePeriodSeconds.
    let mut shortened: HashMap<Uid, HashSet<String>> = HashMap::new();
    loop {
        if !sleep_or_cancel(&ctx.cancel, STATUS_INTERVAL).await {
            return;
        }
        // Until the runtime has been relisted the cache says nothing true.
        if ctx.cache.health().is_err() {
            continue;
        }
        let pods: Vec<Pod> = store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let live: HashSet<Uid> = pods.iter().map(uid_of).collect();
        sent.retain(|uid, _| live.contains(uid));
        deleted.retain(|uid| live.contains(uid));
        shortened.retain(|uid, _| live.contains(uid));
        let runtime_name = ctx
            .cache
            .runtime_version()
            .map(|v| v.runtime_name)
            .unwrap_or_else(|| "containerd".into());

        // Pods run from the API: status, and the end of graceful deletion.
        for pod in pods.iter().filter(|p| !is_mirror(p)) {
            let uid = uid_of(pod);
            if pod.metadata.deletion_timestamp.is_some() {
                let observed = ctx.cache.get(&uid);
                let gone = observed.sandboxes.is_empty()
                    && observed.containers.is_empty()
                    && ctx.pod_config.get(&uid).is_none();
                if gone {
                    if !deleted.contains(&uid) && delete_now(&pods_api(&ctx, pod), pod).await {
                        tracing::info!(pod = %pod_key(pod), "pod terminated; deleted from the API");
                        deleted.insert(uid);
                    }
                    continue;
                }
                if let Some(grace) = pod.metadata.deletion_grace_period_seconds {
                    let done = shortened.entry(uid.clone()).or_default();
                    shorten_grace(&ctx, pod, &observed, grace, done);
                }
            }
            let spec_pod = ctx
                .pod_config
                .get(&uid)
                .map(|sp| sp.pod)
                .unwrap_or_else(|| desired(pod));
            report(&ctx, &runtime_name, pod, &spec_pod, &mut sent).await;
        }

        // Mirror pods of static pods: once the API's pods are known, create the
        // missing, replace the outdated, delete the orphaned, report status.
        if !ctx.pod_config.has_source(API_SOURCE) {
            continue;
        }
        let statics: HashMap<(String, String), Pod> = ctx
            .pod_config
            .source_pods(FILE_SOURCE)
            .into_iter()
            .map(|sp| {
                let key = (
                    sp.pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    sp.pod.metadata.name.clone().unwrap_or_default(),
                );
                (key, sp.pod)
            })
            .collect();
        let mut mirrored: HashSet<(String, String)> = HashSet::new();
        for m in pods.iter().filter(|p| is_mirror(p)) {
            let key = (
                m.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                m.metadata.name.clone().unwrap_or_default(),
            );
            let current = statics.get(&key).filter(|sp| {
                m.metadata.deletion_timestamp.is_none()
                    && annotation(m, MIRROR_ANNOTATION) == annotation(sp, CONFIG_HASH_ANNOTATION)
            });
            match current {
                Some(sp) => {
                    mirrored.insert(key);
                    report(&ctx, &runtime_name, m, sp, &mut sent).await;
                }
                None => {
                    let uid = uid_of(m);
                    if !deleted.contains(&uid) && delete_now(&pods_api(&ctx, m), m).await {
                        tracing::info!(pod = %pod_key(m), "mirror pod deleted");
                        deleted.insert(uid);
                    }
                }
            }
        }
        for (key, sp) in &statics {
            if mirrored.contains(key) {
                continue;
            }
            // A same-named object that is not a current mirror is deleted above
            // (or is an ordinary pod, which the create then reports as a conflict).
            match pods_api(&ctx, sp)
                .create(&PostParams::default(), &mirror_of(sp))
                .await
            {
                Ok(_) => tracing::info!(pod = %pod_key(sp), "mirror pod created"),
                Err(e) if super::is_conflict(&e) => {}
                Err(e) => {
                    tracing::warn!(pod = %pod_key(sp), error = %e, "creating the mirror pod failed; retrying")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(uid: &str, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                resource_version: Some("7".into()),
                deletion_timestamp: deleting.then(|| Time(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n".into()),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn snapshot_skips_deleting_pods_and_strips_server_state() {
        let store = BTreeMap::from([
            ("a".to_string(), pod("a", false)),
            ("b".to_string(), pod("b", true)),
        ]);
        let snap = snapshot(&store);
        assert_eq!(snap.pods.len(), 1);
        let p = &snap.pods[0].pod;
        assert_eq!(uid_of(p), "a");
        assert!(p.status.is_none());
        assert!(p.metadata.resource_version.is_none());
        // Defaults applied (as the file source does).
        assert_eq!(
            p.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Always")
        );
    }

    #[test]
    fn keeps_foreign_conditions_and_clears_owned_fields() {
        let cond = |t: &str| PodCondition {
            type_: t.into(),
            status: "True".into(),
            ..Default::default()
        };
        let server = PodStatus {
            conditions: Some(vec![cond("PodScheduled"), cond("Ready")]),
            ..Default::default()
        };
        let ours = PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                status: "False".into(),
                ..cond("Ready")
            }]),
            ..Default::default()
        };
        let merged = merge_conditions(ours, Some(&server));
        let conds = merged.conditions.as_ref().unwrap();
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[0].status, "False");
        assert_eq!(conds[1].type_, "PodScheduled");
        let patch = status_patch(&merged);
        assert_eq!(patch["status"]["phase"], "Pending");
        assert!(patch["status"]["reason"].is_null());
        assert!(
            patch["status"]
                .as_object()
                .unwrap()
                .contains_key("containerStatuses")
        );
    }
}
