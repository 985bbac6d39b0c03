//! In-process scheduling benchmark, after scheduler_perf's SchedulingBasic:
//! schedule N pods (mixed requests; some with nodeSelector, node affinity,
//! tolerations or host ports) onto clusters of the given sizes, binding each
//! into the snapshot, and print one JSON object with pods/s, total time and
//! per-pod latency percentiles per cluster size.
//!
//! `berth-scheduler-bench [--pods N] [--nodes 1000,5000] [--quick]`

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_scheduler::{ClusterSnapshot, ScheduleError, Scheduler, SchedulerConfig};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodSpec, PreferredSchedulingTerm,
    ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const ZONES: usize = 10;

/// A deterministic generator for the workload (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn quantities(list: &[(&str, String)]) -> BTreeMap<String, Quantity> {
    list.iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
        .collect()
}

fn make_node(i: usize) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(format!("node-{i}"));
    n.metadata.labels = Some(
        [
            ("kubernetes.io/hostname".to_owned(), format!("node-{i}")),
            (
                "topology.kubernetes.io/zone".to_owned(),
                format!("zone-{}", i % ZONES),
            ),
            (
                "disk".to_owned(),
                if i.is_multiple_of(3) { "ssd" } else { "hdd" }.to_owned(),
            ),
        ]
        .into(),
    );
    n.spec = Some(NodeSpec {
        taints: (i % 11 == 10).then(|| {
            vec![Taint {
                key: "dedicated".to_owned(),
                value: Some("infra".to_owned()),
                effect: "NoSchedule".to_owned(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    n.status = Some(NodeStatus {
        allocatable: Some(quantities(&[
            ("cpu", "4".to_owned()),
            ("memory", "32Gi".to_owned()),
            ("pods", "110".to_owned()),
        ])),
        ..Default::default()
    });
    n
}

fn make_pod(i: usize, rng: &mut Rng) -> Pod {
    let cpu = [100, 200, 250, 500][rng.below(4)];
    let mem = [128, 256, 512, 1024][rng.below(4)];
    let mut container = Container {
        name: "app".to_owned(),
        image: Some("registry.k8s.io/pause:3.10".to_owned()),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", format!("{cpu}m")),
                ("memory", format!("{mem}Mi")),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut spec = PodSpec::default();
    let zone_req = |values: Vec<String>| NodeSelectorRequirement {
        key: "topology.kubernetes.io/zone".to_owned(),
        operator: "In".to_owned(),
        values: Some(values),
    };
    match rng.below(20) {
        // nodeSelector
        0 | 1 => {
            spec.node_selector = Some(
                [(
                    "topology.kubernetes.io/zone".to_owned(),
                    format!("zone-{}", rng.below(ZONES)),
                )]
                .into(),
            )
        }
        // required + preferred node affinity
        2 | 3 => {
            spec.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![zone_req(
                                (0..3)
                                    .map(|z| format!("zone-{}", (i + z) % ZONES))
                                    .collect(),
                            )]),
                            match_fields: None,
                        }],
                    }),
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        PreferredSchedulingTerm {
                            weight: 50,
                            preference: NodeSelectorTerm {
                                match_expressions: Some(vec![NodeSelectorRequirement {
                                    key: "disk".to_owned(),
                                    operator: "In".to_owned(),
                                    values: Some(vec!["ssd".to_owned()]),
                                }]),
                                match_fields: None,
                            },
                        },
                    ]),
                }),
                ..Default::default()
            })
        }
        // tolerations
        4 => {
            spec.tolerations = Some(vec![Toleration {
                key: Some("dedicated".to_owned()),
                operator: Some("Equal".to_owned()),
                value: Some("infra".to_owned()),
                effect: Some("NoSchedule".to_owned()),
                ..Default::default()
            }])
        }
        // host ports
        5 => {
            container.ports = Some(vec![ContainerPort {
                container_port: 8080,
                host_port: Some(8000 + rng.below(10) as i32),
                ..Default::default()
            }])
        }
        _ => {}
    }
    spec.containers = vec![container];
    let mut p = Pod::default();
    p.metadata.name = Some(format!("pod-{i}"));
    p.metadata.namespace = Some("bench".to_owned());
    p.metadata.uid = Some(format!("uid-{i}"));
    p.spec = Some(spec);
    p
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn run(nodes: usize, pods: usize) -> serde_json::Value {
    let node_objs: Vec<Node> = (0..nodes).map(make_node).collect();
    let mut snapshot = ClusterSnapshot::from_objects(&node_objs, &[]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ nodes as u64);
    let pod_objs: Vec<Pod> = (0..pods).map(|i| make_pod(i, &mut rng)).collect();
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut latencies = Vec::with_capacity(pods);
    let mut unschedulable = 0usize;
    let start = Instant::now();
    for pod in &pod_objs {
        let t = Instant::now();
        match scheduler.schedule_and_assume(&mut snapshot, pod) {
            Ok(_) => {}
            Err(ScheduleError::Unschedulable { message, .. }) => {
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("{message}");
                }
                unschedulable += 1
            }
            Err(e) => eprintln!("{e}"),
        }
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    latencies.sort_unstable();
    serde_json::json!({
        "nodes": nodes,
        "pods": pods,
        "scheduled": pods - unschedulable,
        "unschedulable": unschedulable,
        "pods_per_sec": (pods as f64 / total.as_secs_f64()).round(),
        "total_ms": (total.as_secs_f64() * 1e4).round() / 10.0,
        "p50_us": (percentile(&latencies, 0.50) * 10.0).round() / 10.0,
        "p99_us": (percentile(&latencies, 0.99) * 10.0).round() / 10.0,
    })
}

fn main() -> ExitCode {
    let mut pods = 10_000usize;
    let mut nodes = vec![1000usize, 5000];
    let mut mode = "full";
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let parsed = match arg.as_str() {
            "--quick" => {
                pods = 1000;
                if mode == "full" {
                    mode = "quick";
                }
                Ok(())
            }
            "--pods" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| {
                    pods = v;
                    mode = "custom";
                })
                .ok_or("--pods needs a number"),
            "--nodes" => args
                .next()
                .and_then(|v| v.split(',').map(|n| n.trim().parse().ok()).collect())
                .map(|v| {
                    nodes = v;
                    mode = "custom";
                })
                .ok_or("--nodes needs a comma-separated list of numbers"),
            _ => Err("usage: berth-scheduler-bench [--pods N] [--nodes a,b] [--quick]"),
        };
        if let Err(msg) = parsed {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    }
    let cases: Vec<_> = nodes.iter().map(|&n| run(n, pods)).collect();
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "berth-scheduler SchedulingBasic-like",
            "mode": mode,
            "machine": machine(),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "cases": cases,
        })
    );
    ExitCode::SUCCESS
}

/// What the figures depend on besides the code: CPUs, model, memory, kernel.
fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let memory_kib = line(&read("/proc/meminfo"), "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok());
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": line(&cpuinfo, "model name"),
        "memory_kib": memory_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
