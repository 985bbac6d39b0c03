//! The kubelet's Summary API types (`k8s.io/kubelet/pkg/apis/stats/v1alpha1`),
//! with the JSON names upstream gives them. Optional fields are left out
//! when unknown, as upstream's `omitempty` pointers; `time` fields are RFC 3339
//! in UTC with whole seconds (`metav1.Time`), and `null` when unset.
//!
//! Left out: accelerators, user-defined metrics, swap, IO/PSI stats (berth
//! reads none of them).

use serde::{Deserialize, Serialize};

/// A point in time, kept as nanoseconds since the epoch (so the metrics keep
/// millisecond timestamps) and written as `metav1.Time` is: RFC 3339, UTC,
/// whole seconds; `null` when unset (0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(i64);

impl Time {
    /// The time `nanos` nanoseconds after the epoch (0: unset).
    pub fn from_nanos(nanos: i64) -> Self {
        Time(nanos)
    }

    /// Now, by the wall clock.
    pub fn now() -> Self {
        Time(super::now_ns())
    }

    /// Nanoseconds since the epoch (0 when unset).
    pub fn nanos(self) -> i64 {
        self.0
    }

    /// True when no time was set.
    pub fn is_unset(self) -> bool {
        self.0 == 0
    }

    /// The later of two times.
    pub fn max(self, other: Time) -> Time {
        Time(self.0.max(other.0))
    }

    fn rfc3339(self) -> Option<String> {
        if self.is_unset() {
            return None;
        }
        let ts = jiff::Timestamp::from_nanosecond(i128::from(self.0)).ok()?;
        Some(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            Some(text) => serializer.serialize_str(&text),
            None => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(Time::default());
        };
        let ts: jiff::Timestamp = text.parse().map_err(serde::de::Error::custom)?;
        let nanos = i64::try_from(ts.as_nanosecond())
            .map_err(|_| serde::de::Error::custom("time out of range"))?;
        Ok(Time(nanos))
    }
}

/// The top-level container for node and pod stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Overall node stats.
    pub node: NodeStats,
    /// Per-pod stats.
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

/// Node-level stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node measured.
    pub node_name: String,
    /// Stats of system daemons tracked as raw containers (`pods`: the cgroup
    /// root all pods sit in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_containers: Vec<ContainerStats>,
    /// When collection of the node-scoped stats started (the node's boot).
    pub start_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// The filesystem of the agent's root directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
}

/// The system container holding every pod (the cgroup root).
pub const SYSTEM_CONTAINER_PODS: &str = "pods";

/// Process limits of the OS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RlimitStats {
    pub time: Time,
    /// The largest PID (`/proc/sys/kernel/pid_max`).
    #[serde(default, rename = "maxpid", skip_serializing_if = "Option::is_none")]
    pub max_pid: Option<i64>,
    /// The number of processes (sysinfo's `procs`).
    #[serde(default, rename = "curproc", skip_serializing_if = "Option::is_none")]
    pub num_of_running_processes: Option<i64>,
}

/// Stats of the container runtime's filesystems.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// Where images are stored; `usedBytes` is what images take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
    /// Where containers' writable layers are stored (the image filesystem
    /// unless the runtime reports a separate one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_fs: Option<FsStats>,
}

/// Process stats of a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

/// Pod-level stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    /// When collection of the pod-scoped stats started (the sandbox's creation).
    pub start_time: Time,
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
    /// The pod cgroup's CPU (every container and the pod overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// The pod cgroup's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(default, rename = "volume", skip_serializing_if = "Vec::is_empty")]
    pub volume_stats: Vec<VolumeStats>,
    /// Containers' writable layers and logs, and the pod's local ephemeral volumes.
    #[serde(
        default,
        rename = "ephemeral-storage",
        skip_serializing_if = "Option::is_none"
    )]
    pub ephemeral_storage: Option<FsStats>,
    #[serde(
        default,
        rename = "process_stats",
        skip_serializing_if = "Option::is_none"
    )]
    pub process_stats: Option<ProcessStats>,
}

/// Container-level stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    /// The container's creation time.
    pub start_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The writable layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
    /// The container's log directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

/// Enough to find the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// One network interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

/// Network stats: the default interface (`eth0`) inline, and every interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStats {
    pub time: Time,
    /// The default interface, when found (empty name otherwise, as upstream).
    #[serde(flatten)]
    pub default_interface: InterfaceStats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

/// CPU usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Time,
    /// Usage of all cores averaged over the sample window, in core-nanoseconds
    /// per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative usage of all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: Time,
    /// The limit minus the working set; left out when there is no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// Usage less inactive file pages (what the OOM killer and eviction see).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

/// A volume's filesystem usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStats {
    #[serde(flatten)]
    pub fs: FsStats,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_ref: Option<PvcReference>,
}

/// The claim behind a volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PvcReference {
    pub name: String,
    pub namespace: String,
}

/// Filesystem usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Bytes used for the task measured (not necessarily capacity - available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_upstreams() {
        let t = Time::from_nanos(1_624_396_278_302_091_597);
        let summary = Summary {
            node: NodeStats {
                node_name: "node-a".into(),
                start_time: t,
                cpu: Some(CpuStats {
                    time: t,
                    usage_nano_cores: Some(5),
                    usage_core_nano_seconds: Some(10),
                }),
                rlimit: Some(RlimitStats {
                    time: t,
                    max_pid: Some(32768),
                    num_of_running_processes: Some(12),
                }),
                runtime: Some(RuntimeStats {
                    image_fs: Some(FsStats::default()),
                    container_fs: None,
                }),
                ..Default::default()
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u1".into(),
                },
                start_time: t,
                memory: Some(MemoryStats {
                    time: t,
                    working_set_bytes: Some(1000),
                    rss_bytes: Some(3),
                    page_faults: Some(1),
                    major_page_faults: Some(0),
                    ..Default::default()
                }),
                network: Some(NetworkStats {
                    time: t,
                    default_interface: InterfaceStats {
                        name: "eth0".into(),
                        rx_bytes: Some(7),
                        ..Default::default()
                    },
                    interfaces: vec![],
                }),
                volume_stats: vec![VolumeStats {
                    fs: FsStats {
                        time: t,
                        used_bytes: Some(4096),
                        ..Default::default()
                    },
                    name: "cache".into(),
                    pvc_ref: None,
                }],
                ephemeral_storage: Some(FsStats {
                    time: t,
                    inodes_used: Some(2),
                    ..Default::default()
                }),
                process_stats: Some(ProcessStats {
                    process_count: Some(3),
                }),
                ..Default::default()
            }],
        };
        let v = serde_json::to_value(&summary).unwrap();
        let node = &v["node"];
        assert_eq!(node["nodeName"], "node-a");
        assert_eq!(node["startTime"], "2021-06-22T21:11:18Z");
        assert_eq!(node["cpu"]["usageNanoCores"], 5);
        assert_eq!(node["cpu"]["usageCoreNanoSeconds"], 10);
        assert_eq!(node["rlimit"]["maxpid"], 32768);
        assert_eq!(node["rlimit"]["curproc"], 12);
        assert!(node["runtime"]["imageFs"].is_object());
        assert_eq!(node["runtime"]["imageFs"]["time"], serde_json::Value::Null);
        // Unknown optionals are left out, not null.
        let node_keys: Vec<&str> = node
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            node_keys,
            ["cpu", "nodeName", "rlimit", "runtime", "startTime"]
        );
        let pod = &v["pods"][0];
        assert_eq!(pod["podRef"]["uid"], "u1");
        assert_eq!(pod["containers"], serde_json::json!([]));
        assert_eq!(pod["memory"]["workingSetBytes"], 1000);
        assert_eq!(pod["memory"]["rssBytes"], 3);
        assert_eq!(pod["memory"]["pageFaults"], 1);
        assert_eq!(pod["memory"]["majorPageFaults"], 0);
        assert!(pod["memory"].get("availableBytes").is_none());
        // The default interface is inline.
        assert_eq!(pod["network"]["name"], "eth0");
        assert_eq!(pod["network"]["rxBytes"], 7);
        assert_eq!(pod["volume"][0]["name"], "cache");
        assert_eq!(pod["volume"][0]["usedBytes"], 4096);
        assert_eq!(pod["ephemeral-storage"]["inodesUsed"], 2);
        assert_eq!(pod["process_stats"]["process_count"], 3);

        // And back.
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back.pods[0].volume_stats[0].fs.used_bytes, Some(4096));
        assert_eq!(
            back.node.start_time.nanos(),
            1_624_396_278_000_000_000,
            "whole seconds, as metav1.Time"
        );
    }
}
