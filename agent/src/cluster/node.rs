//! The `Node` object: register it, then keep its status current (the kubelet's
//! node status manager: compute, compare with what was last reported, patch
//! `nodes/<name>/status` on change and at least every [`REPORT_FREQUENCY`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{Context, KUBELET_VERSION};
use crate::util::{is_conflict, sleep_or_cancel};

/// How often the node status is computed and compared (`nodeStatusUpdateFrequency`).
pub const UPDATE_FREQUENCY: Duration = Duration::from_secs(10);
/// An unchanged status is still reported this often (`nodeStatusReportFrequency`).
pub const REPORT_FREQUENCY: Duration = Duration::from_secs(300);

/// Register the node and keep its status current until cancelled.
pub async fn run(ctx: Context) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut registered = false;
    // The last status reported (heartbeat times cleared) and when.
    let mut last: Option<(NodeStatus, Instant)> = None;
    // When each condition last changed its status.
    let mut transitions: BTreeMap<String, (String, Time)> = BTreeMap::new();
    let mut retry = Duration::from_secs(1);
    loop {
        let status = compute(&ctx);
        let result = async {
            if !registered {
                register(&nodes, &ctx).await?;
                registered = true;
                tracing::info!(node = %ctx.node_name, "node registered");
            }
            let mut due = match &last {
                Some((prev, at)) => *prev != status || at.elapsed() >= REPORT_FREQUENCY,
                None => true,
            };
            // The Node as the API server holds it: its labels and taints are
            // what admission checks pods against (an admin may change them).
            let stored = nodes.get(&ctx.node_name).await?;
            ctx.node.set_labels_and_taints(
                stored.metadata.labels.clone().unwrap_or_default(),
                stored
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .into_iter()
                    .flatten()
                    .map(berth_api::scheduling::Taint::from_api)
                    .collect(),
            );
            if !due {
                // Like the kubelet, compare with what the API server holds, not
                // only with what we last sent: the node lifecycle controller
                // marks a silent node's conditions Unknown (after an API server
                // outage, say), and that must be corrected now, not in 5 min.
                due = !conditions_match(stored.status.as_ref(), &status);
            }
            if due {
                let body = stamp(&status, &mut transitions);
                nodes
                    .patch_status(
                        &ctx.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "status": body })),
                    )
                    .await?;
                last = Some((status.clone(), Instant::now()));
            }
            Ok::<(), kube::Error>(())
        }
        .await;
        let wait = match result {
            Ok(()) if is_ready(&status) => {
                retry = Duration::from_secs(1);
                UPDATE_FREQUENCY
            }
            // Not ready yet (runtime not reached): look again soon, so
            // readiness is reported as soon as it is true.
            Ok(()) => Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, server = %ctx.server, error = %crate::util::error_chain(&e), retry_in = ?retry, "node status update failed");
                if crate::util::is_not_found(&e) {
                    // Deleted behind our back: register again.
                    registered = false;
                }
                let r = retry;
                retry = (retry * 2).min(UPDATE_FREQUENCY);
                r
            }
        };
        if !sleep_or_cancel(&ctx.cancel, wait).await {
            return;
        }
    }
}

/// Whether `stored` has every condition of `ours` with the same status and reason.
fn conditions_match(stored: Option<&NodeStatus>, ours: &NodeStatus) -> bool {
    let stored = stored.and_then(|s| s.conditions.as_ref());
    ours.conditions.iter().flatten().all(|c| {
        stored
            .into_iter()
            .flatten()
            .any(|s| s.type_ == c.type_ && s.status == c.status && s.reason == c.reason)
    })
}

fn is_ready(status: &NodeStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn register(nodes: &Api<Node>, ctx: &Context) -> Result<(), kube::Error> {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(ctx.node_name.clone()),
            labels: Some(default_labels(&ctx.node_name)),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        // Already registered (e.g. before a restart): the status patch updates it.
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The labels the kubelet gives its Node (`kubernetes.io/hostname`, os, arch).
pub fn default_labels(node_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node_name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
    ])
}

/// Add heartbeat and transition times to `status`'s conditions.
fn stamp(status: &NodeStatus, transitions: &mut BTreeMap<String, (String, Time)>) -> NodeStatus {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut out = status.clone();
    for c in out.conditions.iter_mut().flatten() {
        let since = match transitions.get(&c.type_) {
            Some((s, at)) if *s == c.status => at.clone(),
            _ => {
                transitions.insert(c.type_.clone(), (c.status.clone(), now.clone()));
                now.clone()
            }
        };
        c.last_heartbeat_time = Some(now.clone());
        c.last_transition_time = Some(since);
    }
    out
}

/// The pressure conditions as the kubelet words them (`nodestatus`
/// `MemoryPressureCondition` and friends): (type, status, reason, message).
pub fn pressure_conditions(
    pressure: &std::collections::BTreeSet<crate::eviction::Pressure>,
) -> [(&'static str, &'static str, &'static str, &'static str); 3] {
    use crate::eviction::Pressure;
    let on = |p| pressure.contains(&p);
    [
        if on(Pressure::Memory) {
            (
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if on(Pressure::Disk) {
            (
                "DiskPressure",
                "True",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            (
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if on(Pressure::Pid) {
            (
                "PIDPressure",
                "True",
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            (
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
    ]
}

/// The node's status as of now, without heartbeat or transition times.
pub fn compute(ctx: &Context) -> NodeStatus {
    let resources = ctx.node.resources();

    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        ..Default::default()
    };
    let ready = match crate::hostcheck::node_health(&ctx.cache, &ctx.host) {
        Ok(()) => condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        Err(e) => condition("Ready", "False", "KubeletNotReady", &e),
    };
    let pressure = ctx
        .pressure
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .conditions
        .clone();
    let [memory, disk, pid] = pressure_conditions(&pressure);
    let conditions = vec![
        condition(memory.0, memory.1, memory.2, memory.3),
        condition(disk.0, disk.1, disk.2, disk.3),
        condition(pid.0, pid.1, pid.2, pid.3),
        condition(
            "NetworkUnavailable",
            "False",
            "RouteCreated",
            "berth-agent uses the host network configuration",
        ),
        ready,
    ];

    let runtime = ctx
        .cache
        .runtime_version()
        .map(|v| format!("{}://{}", v.runtime_name, v.runtime_version))
        .unwrap_or_default();
    let node_info = NodeSystemInfo {
        architecture: go_arch().to_string(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: runtime,
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.to_string(),
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: "linux".to_string(),
        os_image: os_image(),
        system_uuid: String::new(),
        swap: None,
    };

    NodeStatus {
        capacity: Some(resources.capacity_list()),
        allocatable: Some(resources.allocatable_list()),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_string(),
                address: ctx.node_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".to_string(),
                address: ctx.node_name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(ctx.status_port),
            }),
        }),
        node_info: Some(node_info),
        ..Default::default()
    }
}

/// `GOARCH` of this machine, as Kubernetes names architectures.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` from /proc/meminfo, in KiB.
/// `PRETTY_NAME` from /etc/os-release (as the kubelet's `osImage`).
fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_pretty_name(&text).unwrap_or_else(|| "Linux".to_string())
}

fn parse_pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_conditions_are_worded_as_the_kubelets() {
        use crate::eviction::Pressure;
        let none = pressure_conditions(&Default::default());
        assert!(none.iter().all(|c| c.1 == "False"));
        assert_eq!(none[0].2, "KubeletHasSufficientMemory");
        let some = pressure_conditions(&[Pressure::Disk].into_iter().collect());
        assert_eq!(
            some[1],
            (
                "DiskPressure",
                "True",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure"
            )
        );
        assert_eq!(some[0].1, "False");
        assert_eq!(some[2].1, "False");
    }

    #[test]
    fn parses_os_release() {
        assert_eq!(
            parse_pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(parse_pretty_name("NAME=x\n"), None);
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let status = NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let mut transitions = BTreeMap::new();
        let a = stamp(&status, &mut transitions);
        let b = stamp(&status, &mut transitions);
        let t = |s: &NodeStatus| {
            s.conditions.as_ref().unwrap()[0]
                .last_transition_time
                .clone()
        };
        assert!(t(&a).is_some());
        assert_eq!(t(&a), t(&b));
    }
}
