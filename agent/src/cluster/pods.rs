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
use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use super::{API_SOURCE, Context};
use crate::Uid;
use crate::source::manifest::CONFIG_HASH_ANNOTATION;
use crate::source::{FILE_SOURCE, Snapshot, SourcedPod, is_terminating, pod_key, uid_of};
use crate::util::{is_not_found, sleep_or_cancel};

/// How often pod statuses are computed and compared.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long a mirror pod the API server refused (403 from NodeRestriction,
/// 422 from validation: the same static pod is refused again) waits before
/// the next attempt.
pub const MIRROR_REFUSED_RETRY: Duration = Duration::from_secs(60);

/// A mirror pod the API server refused: for which version of the static pod
/// (its config hash), and when to try again. The warning is logged once per
/// version; retries log at debug.
struct Refused {
    config_hash: Option<String>,
    retry_at: std::time::Instant,
}

/// True when the API refused the request for what it is (403 Forbidden or
/// 422 Invalid), not for a passing condition: sending it again unchanged gets
/// the same answer.
fn is_refusal(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 || s.code == 422)
}

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

/// The mirror pod of static pod `pod`: its metadata and spec, annotated with
/// its config hash, and owned by this node's Node object (`node`, `node_uid`)
/// as the kubelet's mirror client sets it — the API server's NodeRestriction
/// accepts a mirror pod from a node only with exactly that controller reference.
pub fn mirror_of(pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut m = pod.clone();
    m.status = None;
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.to_string(),
        uid: node_uid.to_string(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    let hash = annotation(pod, CONFIG_HASH_ANNOTATION)
        .unwrap_or_default()
        .to_string();
    m.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR_ANNOTATION.to_string(), hash);
    m
}

/// The reason of the status of a pod the agent refuses to run (`rejectPod`).
pub const REASON_INVALID: &str = "InvalidPod";

/// The pod as the agent would run it, or why it refuses to: every pod from the
/// API server goes through berth-api's `ValidatePod` again before admission, so a
/// pod an older or foreign API server let through never reaches the runtime.
/// The message names every field, as the API server's 422 would.
pub fn admit(pod: &Pod) -> Result<Pod, String> {
    let pod = desired(pod);
    let errors = berth_api::validation::validate_pod(&pod);
    if errors.is_empty() {
        return Ok(pod);
    }
    let causes: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Err(format!("Pod was rejected: {}", causes.join(", ")))
}

/// The status reported for a pod the agent refuses to run: phase Failed, and why.
pub fn rejected_status(pod: &Pod, message: String) -> PodStatus {
    crate::status::rejected_status(pod, REASON_INVALID, message)
}

/// The admission refusal or eviction the API's status records for `pod`, if
/// any: phase Failed with an admission reason and the kubelet's "Pod was
/// rejected: " message, or reason `Evicted` (an eviction of the running pod,
/// its message without that prefix). Such a pod never runs again (a Failed
/// pod is terminal), also after the agent restarts.
pub fn earlier_rejection(pod: &Pod) -> Option<crate::admission::Rejection> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some(crate::status::phase::FAILED) {
        return None;
    }
    let reason = status.reason.as_deref()?;
    let message = status.message.as_deref()?;
    match message.strip_prefix("Pod was rejected: ") {
        Some(message) => {
            crate::admission::is_admission_reason(reason).then(|| crate::admission::Rejection {
                reason: reason.to_string(),
                message: message.to_string(),
                evicted: None,
            })
        }
        None => matches!(
            reason,
            crate::eviction::REASON_EVICTED | crate::admission::REASON_PREEMPTING
        )
        .then(|| crate::admission::Rejection {
            reason: reason.to_string(),
            message: message.to_string(),
            // Stopped at once, if a restart left anything running.
            evicted: Some(0),
        }),
    }
}

/// The api source's snapshot: every pod of `store` the agent admits (mirror
/// pods excluded). A pod being deleted stays, with its `deletionTimestamp` and
/// `deletionGracePeriodSeconds`: its worker stops it within that grace period.
pub fn snapshot(store: &BTreeMap<Uid, Pod>) -> Snapshot {
    Snapshot {
        pods: store
            .values()
            .filter(|p| !is_mirror(p))
            .filter_map(|p| Some((admit(p).ok()?, earlier_rejection(p))))
            .map(|(pod, rejected)| SourcedPod {
                pod,
                file: PathBuf::from(API_SOURCE),
                warnings: Vec::new(),
                rejected,
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
                tracing::warn!(server = %ctx.server, error = %crate::util::error_chain(&e), "pod watch failed; pods keep running, retrying");
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
    patch_status(ctx, target, status, sent).await;
}

/// Patch `status` onto `target` unless it is what was last sent.
async fn patch_status(
    ctx: &Context,
    target: &Pod,
    status: PodStatus,
    sent: &mut HashMap<Uid, PodStatus>,
) {
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

async fn status_loop(ctx: Context, store: Store) {
    // The status last patched per API object (not what the server holds: others
    // may add to it, which must not make us patch every second).
    let mut sent: HashMap<Uid, PodStatus> = HashMap::new();
    // API objects whose final DELETE went through.
    let mut deleted: HashSet<Uid> = HashSet::new();
    // Static pods whose mirror pod the API server refused.
    let mut refused: HashMap<(String, String), Refused> = HashMap::new();
    // The version of each static pod already warned about.
    let mut refused_before: HashMap<(String, String), Option<String>> = HashMap::new();
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
        let runtime_name = ctx
            .cache
            .runtime_version()
            .map(|v| v.runtime_name)
            .unwrap_or_else(|| "containerd".into());

        // Pods run from the API: status, and the end of graceful deletion.
        for pod in pods.iter().filter(|p| !is_mirror(p)) {
            let uid = uid_of(pod);
            if is_terminating(pod) {
                // Its worker stops it (within the deletion's grace period); once
                // nothing of it is left in the runtime, the object goes.
                let observed = ctx.cache.get(&uid);
                let runs = ctx
                    .pod_config
                    .get(&uid)
                    .is_some_and(|sp| !is_terminating(&sp.pod));
                if observed.sandboxes.is_empty() && observed.containers.is_empty() && !runs {
                    if !deleted.contains(&uid) && delete_now(&pods_api(&ctx, pod), pod).await {
                        tracing::info!(pod = %pod_key(pod), "pod terminated; deleted from the API");
                        deleted.insert(uid);
                    }
                    continue;
                }
            }
            let spec_pod = match ctx.pod_config.get(&uid) {
                Some(sp) => sp.pod,
                None => match admit(pod) {
                    Ok(spec_pod) => spec_pod,
                    Err(message) => {
                        // Refused: never run; Failed, saying which fields are wrong.
                        let status =
                            merge_conditions(rejected_status(pod, message), pod.status.as_ref());
                        patch_status(&ctx, pod, status, &mut sent).await;
                        continue;
                    }
                },
            };
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
        // A refusal holds until it is due again or the static pod changed.
        let now = std::time::Instant::now();
        refused_before.retain(|key, _| statics.contains_key(key) && !mirrored.contains(key));
        refused.retain(|key, r| {
            statics.get(key).is_some_and(|sp| {
                r.retry_at > now
                    && r.config_hash.as_deref() == annotation(sp, CONFIG_HASH_ANNOTATION)
            })
        });
        let missing: Vec<(&(String, String), &Pod)> = statics
            .iter()
            .filter(|(key, _)| !mirrored.contains(*key) && !refused.contains_key(*key))
            .collect();
        if missing.is_empty() {
            continue;
        }
        // The owner reference names this incarnation of our Node object.
        let node_uid = match Api::<Node>::all(ctx.client.clone())
            .get(&ctx.node_name)
            .await
        {
            Ok(node) => node.metadata.uid.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, error = %e, "reading our Node for mirror pods failed; retrying");
                continue;
            }
        };
        for (key, sp) in missing {
            // A same-named object that is not a current mirror is deleted above
            // (or is an ordinary pod, which the create then reports as a conflict).
            match pods_api(&ctx, sp)
                .create(
                    &PostParams::default(),
                    &mirror_of(sp, &ctx.node_name, &node_uid),
                )
                .await
            {
                Ok(_) => tracing::info!(pod = %pod_key(sp), "mirror pod created"),
                Err(e) if crate::util::is_conflict(&e) => {}
                Err(e) if is_refusal(&e) => {
                    // Deterministic (a static pod naming a Secret, say): the
                    // pod runs, the API shows no mirror of it. Say so once per
                    // version of the manifest, retry now and then.
                    let config_hash = annotation(sp, CONFIG_HASH_ANNOTATION).map(str::to_string);
                    let again = refused_before.get(key) == Some(&config_hash);
                    if again {
                        tracing::debug!(pod = %pod_key(sp), error = %e, "mirror pod still refused");
                    } else {
                        tracing::warn!(
                            pod = %pod_key(sp),
                            error = %e,
                            retry_in_s = MIRROR_REFUSED_RETRY.as_secs(),
                            "the API server refused the mirror pod; the static pod runs without one"
                        );
                    }
                    refused_before.insert(key.clone(), config_hash.clone());
                    refused.insert(
                        key.clone(),
                        Refused {
                            config_hash,
                            retry_at: now + MIRROR_REFUSED_RETRY,
                        },
                    );
                }
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

    /// A pod being deleted stays in the snapshot, marked (its worker stops it
    /// within the deletion's grace period); server state is stripped.
    #[test]
    fn snapshot_keeps_deleting_pods_and_strips_server_state() {
        let mut deleting = pod("b", true);
        deleting.metadata.deletion_grace_period_seconds = Some(3);
        let store = BTreeMap::from([
            ("a".to_string(), pod("a", false)),
            ("b".to_string(), deleting),
        ]);
        let snap = snapshot(&store);
        assert_eq!(snap.pods.len(), 2);
        let p = &snap.pods[0].pod;
        assert_eq!(uid_of(p), "a");
        assert!(!is_terminating(p));
        assert!(p.status.is_none());
        assert!(p.metadata.resource_version.is_none());
        // Defaults applied (as the file source does).
        assert_eq!(
            p.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Always")
        );
        let b = &snap.pods[1].pod;
        assert!(is_terminating(b));
        assert_eq!(crate::source::termination_grace(b), Some(3));
    }

    /// A pod berth-api's validation refuses is not admitted; its status says why.
    #[test]
    fn invalid_pods_are_refused_with_the_fields_named() {
        let mut bad = pod("c", false);
        if let Some(spec) = bad.spec.as_mut() {
            spec.containers[0].name = "Not_A_Label".into();
            spec.active_deadline_seconds = Some(0);
        }
        let store = BTreeMap::from([
            ("a".to_string(), pod("a", false)),
            ("c".to_string(), bad.clone()),
        ]);
        let snap = snapshot(&store);
        assert_eq!(snap.pods.len(), 1);
        let message = admit(&bad).expect_err("refused");
        assert!(message.starts_with("Pod was rejected: "), "{message}");
        assert!(
            message.contains("spec.containers[0].name: Invalid value: \"Not_A_Label\""),
            "{message}"
        );
        assert!(
            message.contains("spec.activeDeadlineSeconds: Invalid value: 0"),
            "{message}"
        );
        let status = rejected_status(&bad, message);
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.reason.as_deref(), Some(REASON_INVALID));
    }

    /// A pod the node refused before a restart stays refused: the API's
    /// Failed status is read back; other failures are not refusals.
    #[test]
    fn an_admission_refusal_in_the_api_status_holds() {
        let mut refused = pod("r", false);
        refused.status = Some(crate::status::rejected_status(
            &refused,
            "OutOfcpu",
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 9000, used: 0, capacity: 2000".into(),
        ));
        let mut failed = pod("f", false);
        failed.status = Some(PodStatus {
            phase: Some("Failed".into()),
            reason: Some("DeadlineExceeded".into()),
            message: Some("Pod was active on the node longer than the specified deadline".into()),
            ..Default::default()
        });
        let mut evicted = pod("e", false);
        evicted.status = Some(PodStatus {
            phase: Some("Failed".into()),
            reason: Some("Evicted".into()),
            message: Some("The node was low on resource: memory. ".into()),
            ..Default::default()
        });
        assert_eq!(
            earlier_rejection(&evicted),
            Some(crate::admission::Rejection {
                reason: "Evicted".into(),
                message: "The node was low on resource: memory. ".into(),
                evicted: Some(0),
            }),
            "an eviction reads back as one: the pod stays stopped"
        );
        let store = BTreeMap::from([
            ("r".to_string(), refused.clone()),
            ("f".to_string(), failed),
            ("a".to_string(), pod("a", false)),
        ]);
        let snap = snapshot(&store);
        let rejected: Vec<_> = snap
            .pods
            .iter()
            .filter_map(|sp| sp.rejected.clone())
            .collect();
        assert_eq!(
            rejected,
            vec![crate::admission::Rejection {
                reason: "OutOfcpu".into(),
                message: "Node didn't have enough resource: cpu, requested: 9000, used: 0, capacity: 2000".into(),
                evicted: None,
            }]
        );
        // Unchanged status, unchanged snapshot: no trigger storm.
        assert_eq!(snapshot(&store).pods, snap.pods);
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
