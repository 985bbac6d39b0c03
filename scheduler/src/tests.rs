//! Filter, score and message tests against kube-scheduler's behaviour.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, PreferredSchedulingTerm,
    ResourceRequirements, Taint as ApiTaint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::plugins::{Failure, PodInfo, filter};
use crate::*;

fn node(name: &str, cpu: &str, mem: &str, pods: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.to_owned());
    n.status = Some(NodeStatus {
        allocatable: Some(
            [("cpu", cpu), ("memory", mem), ("pods", pods)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
                .collect(),
        ),
        ..Default::default()
    });
    n.spec = Some(NodeSpec::default());
    n
}

fn with_taint(mut n: Node, key: &str, value: &str, effect: &str) -> Node {
    let spec = n.spec.get_or_insert_with(Default::default);
    spec.taints.get_or_insert_with(Vec::new).push(ApiTaint {
        key: key.to_owned(),
        value: (!value.is_empty()).then(|| value.to_owned()),
        effect: effect.to_owned(),
        ..Default::default()
    });
    n
}

fn with_labels(mut n: Node, labels: &[(&str, &str)]) -> Node {
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n
}

fn pod(name: &str, cpu: &str, mem: &str) -> Pod {
    let mut requests = BTreeMap::new();
    if !cpu.is_empty() {
        requests.insert("cpu".to_owned(), Quantity(cpu.to_owned()));
    }
    if !mem.is_empty() {
        requests.insert("memory".to_owned(), Quantity(mem.to_owned()));
    }
    let mut p = Pod::default();
    p.metadata.name = Some(name.to_owned());
    p.metadata.namespace = Some("default".to_owned());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".to_owned(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn spec(p: &mut Pod) -> &mut PodSpec {
    p.spec.get_or_insert_with(Default::default)
}

fn bound(mut p: Pod, node: &str) -> Pod {
    spec(&mut p).node_name = Some(node.to_owned());
    p
}

fn toleration(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Toleration {
        key: opt(key),
        operator: opt(op),
        value: opt(value),
        effect: opt(effect),
        ..Default::default()
    }
}

fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_owned(),
        operator: op.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
    }
}

fn required(p: &mut Pod, terms: Vec<NodeSelectorTerm>) {
    spec(p)
        .affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: terms,
    });
}

fn term(exprs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(exprs),
        match_fields: None,
    }
}

/// The filters' verdict for one pod on one node, as reason strings.
fn verdict(p: &Pod, n: &Node, others: &[Pod]) -> Result<(), Vec<String>> {
    let snap = ClusterSnapshot::from_objects([n], others);
    let info = PodInfo::new(p).expect("valid pod");
    let node = &snap.nodes()[0];
    filter(&info, node).map_err(|f: Failure| {
        let mut out = Vec::new();
        f.reasons(&info, node, &mut out);
        out
    })
}

fn reasons(list: &[&str]) -> Result<(), Vec<String>> {
    Err(list.iter().map(|s| s.to_string()).collect())
}

fn message(err: ScheduleError) -> String {
    match err {
        ScheduleError::Unschedulable { message, .. } => message,
        other => panic!("expected Unschedulable, got {other:?}"),
    }
}

#[test]
fn node_unschedulable() {
    let mut n = node("n1", "4", "8Gi", "110");
    n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    let mut p = pod("p", "100m", "");
    assert_eq!(
        verdict(&p, &n, &[]),
        reasons(&["node(s) were unschedulable"])
    );
    spec(&mut p).tolerations = Some(vec![toleration(
        "node.kubernetes.io/unschedulable",
        "Exists",
        "",
        "NoSchedule",
    )]);
    assert_eq!(verdict(&p, &n, &[]), Ok(()));
}

#[test]
fn node_name() {
    let n = node("n1", "4", "8Gi", "110");
    let mut p = pod("p", "", "");
    spec(&mut p).node_name = Some("n2".to_owned());
    assert_eq!(
        verdict(&p, &n, &[]),
        reasons(&["node(s) didn't match the requested node name"])
    );
    spec(&mut p).node_name = Some("n1".to_owned());
    assert_eq!(verdict(&p, &n, &[]), Ok(()));
}

#[test]
fn taint_toleration_filter() {
    let n = with_taint(
        node("n1", "4", "8Gi", "110"),
        "dedicated",
        "gpu",
        "NoSchedule",
    );
    let mut p = pod("p", "", "");
    assert_eq!(
        verdict(&p, &n, &[]),
        reasons(&["node(s) had untolerated taint {dedicated: gpu}"])
    );
    let n2 = with_taint(node("n1", "4", "8Gi", "110"), "gone", "", "NoExecute");
    assert_eq!(
        verdict(&p, &n2, &[]),
        reasons(&["node(s) had untolerated taint {gone: }"])
    );
    // PreferNoSchedule never filters.
    let n3 = with_taint(
        node("n1", "4", "8Gi", "110"),
        "soft",
        "x",
        "PreferNoSchedule",
    );
    assert_eq!(verdict(&p, &n3, &[]), Ok(()));
    spec(&mut p).tolerations = Some(vec![toleration("dedicated", "Equal", "gpu", "NoSchedule")]);
    assert_eq!(verdict(&p, &n, &[]), Ok(()));
}

#[test]
fn tolerations_table() {
    let taint = |k: &str, v: &str, e: &str| Taint {
        key: k.to_owned(),
        value: v.to_owned(),
        effect: Effect::parse(e),
    };
    let cases = [
        // (toleration key, op, value, effect), taint, tolerated
        (
            ("k", "Equal", "v", "NoSchedule"),
            taint("k", "v", "NoSchedule"),
            true,
        ),
        (
            ("k", "", "v", "NoSchedule"),
            taint("k", "v", "NoSchedule"),
            true,
        ),
        (
            ("k", "Equal", "v", "NoSchedule"),
            taint("k", "w", "NoSchedule"),
            false,
        ),
        (
            ("k", "Equal", "v", "NoSchedule"),
            taint("k", "v", "NoExecute"),
            false,
        ),
        (("k", "Equal", "v", ""), taint("k", "v", "NoExecute"), true),
        (
            ("k", "Exists", "", ""),
            taint("k", "anything", "NoSchedule"),
            true,
        ),
        (
            ("k", "Exists", "", "NoExecute"),
            taint("k", "x", "NoSchedule"),
            false,
        ),
        (
            ("", "Exists", "", ""),
            taint("any", "thing", "NoExecute"),
            true,
        ),
        (
            ("", "Exists", "", "NoSchedule"),
            taint("any", "", "NoSchedule"),
            true,
        ),
        (
            ("", "Exists", "", "NoSchedule"),
            taint("any", "", "PreferNoSchedule"),
            false,
        ),
        (
            ("other", "Exists", "", ""),
            taint("k", "", "NoSchedule"),
            false,
        ),
        (("k", "Equal", "", ""), taint("k", "", "NoSchedule"), true),
        (("k", "Lt", "5", ""), taint("k", "5", "NoSchedule"), false),
    ];
    for ((k, op, v, e), t, want) in cases {
        let mut p = pod("p", "", "");
        spec(&mut p).tolerations = Some(vec![toleration(k, op, v, e)]);
        let info = PodInfo::new(&p).expect("valid pod");
        assert_eq!(
            info.tolerations[0].tolerates(&t),
            want,
            "toleration {k}/{op}/{v}/{e} vs taint {t:?}"
        );
    }
}

#[test]
fn node_affinity_and_selector() {
    let n = with_labels(
        node("n1", "4", "8Gi", "110"),
        &[("zone", "a"), ("gen", "5"), ("disk", "ssd")],
    );
    let fail = reasons(&["node(s) didn't match Pod's node affinity/selector"]);
    let mut p = pod("p", "", "");
    spec(&mut p).node_selector = Some([("zone".to_owned(), "a".to_owned())].into());
    assert_eq!(verdict(&p, &n, &[]), Ok(()));
    spec(&mut p).node_selector = Some([("zone".to_owned(), "b".to_owned())].into());
    assert_eq!(verdict(&p, &n, &[]), fail);

    let cases: Vec<(Vec<NodeSelectorRequirement>, bool)> = vec![
        (vec![req("zone", "In", &["a", "b"])], true),
        (vec![req("zone", "In", &["b"])], false),
        (vec![req("zone", "NotIn", &["b"])], true),
        (vec![req("missing", "NotIn", &["b"])], true),
        (vec![req("zone", "NotIn", &["a"])], false),
        (vec![req("disk", "Exists", &[])], true),
        (vec![req("gpu", "Exists", &[])], false),
        (vec![req("gpu", "DoesNotExist", &[])], true),
        (vec![req("disk", "DoesNotExist", &[])], false),
        (vec![req("gen", "Gt", &["4"])], true),
        (vec![req("gen", "Gt", &["5"])], false),
        (vec![req("gen", "Lt", &["6"])], true),
        (vec![req("zone", "Lt", &["6"])], false),
        (vec![req("gen", "Gt", &["x"])], false),
        (
            vec![req("zone", "In", &["a"]), req("disk", "In", &["hdd"])],
            false,
        ),
    ];
    for (exprs, want) in cases {
        let mut p = pod("p", "", "");
        required(&mut p, vec![term(exprs.clone())]);
        let got = verdict(&p, &n, &[]);
        assert_eq!(got.is_ok(), want, "{exprs:?}");
        if !want {
            assert_eq!(got, fail);
        }
    }
    // Terms are ORed; an empty term matches nothing.
    let mut p = pod("p", "", "");
    required(
        &mut p,
        vec![
            term(vec![req("zone", "In", &["b"])]),
            term(vec![req("zone", "In", &["a"])]),
        ],
    );
    assert_eq!(verdict(&p, &n, &[]), Ok(()));
    required(&mut p, vec![NodeSelectorTerm::default()]);
    assert_eq!(verdict(&p, &n, &[]), fail);
    // matchFields metadata.name.
    let fields = |op: &str, name: &str| NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![req("metadata.name", op, &[name])]),
    };
    required(&mut p, vec![fields("In", "n1")]);
    assert_eq!(verdict(&p, &n, &[]), Ok(()));
    required(&mut p, vec![fields("NotIn", "n1")]);
    assert_eq!(verdict(&p, &n, &[]), fail);
}

#[test]
fn affinity_prefilter_by_node_name() {
    let nodes = [
        node("a", "4", "8Gi", "110"),
        node("b", "4", "8Gi", "110"),
        node("c", "1", "8Gi", "110"),
    ];
    let snap = ClusterSnapshot::from_objects(&nodes, &[]);
    let mut s = Scheduler::new(SchedulerConfig::default());
    let fields = |name: &str| NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![req("metadata.name", "In", &[name])]),
    };
    let mut p = pod("p", "2", "");
    required(&mut p, vec![fields("c")]);
    assert_eq!(
        message(s.schedule(&snap, &p).expect_err("no fit")),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    required(&mut p, vec![fields("b")]);
    assert_eq!(s.schedule(&snap, &p), Ok("b".to_owned()));
    let mut conflict = fields("a");
    conflict
        .match_fields
        .get_or_insert_with(Vec::new)
        .push(req("metadata.name", "In", &["b"]));
    required(&mut p, vec![conflict]);
    assert_eq!(
        message(s.schedule(&snap, &p).expect_err("conflict")),
        "0/3 nodes are available: pod affinity terms conflict. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
}

#[test]
fn node_ports() {
    let n = node("n1", "4", "8Gi", "110");
    let with_port = |name: &str, ip: &str, proto: &str, port: i32| {
        let mut p = pod(name, "", "");
        spec(&mut p).containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: (!ip.is_empty()).then(|| ip.to_owned()),
            protocol: (!proto.is_empty()).then(|| proto.to_owned()),
            ..Default::default()
        }]);
        p
    };
    let fail = reasons(&["node(s) didn't have free ports for the requested pod ports"]);
    let cases = [
        // existing (ip, proto, port), wanted, conflicts
        (("", "", 8080), ("", "TCP", 8080), true),
        (("", "", 8080), ("", "UDP", 8080), false),
        (("", "", 8080), ("", "", 8081), false),
        (
            ("127.0.0.1", "TCP", 8080),
            ("127.0.0.2", "TCP", 8080),
            false,
        ),
        (("127.0.0.1", "TCP", 8080), ("127.0.0.1", "TCP", 8080), true),
        (("127.0.0.1", "TCP", 8080), ("0.0.0.0", "TCP", 8080), true),
        (("0.0.0.0", "TCP", 8080), ("127.0.0.1", "TCP", 8080), true),
        (("", "SCTP", 9000), ("10.0.0.1", "SCTP", 9000), true),
    ];
    for ((eip, eproto, eport), (wip, wproto, wport), conflict) in cases {
        let existing = bound(with_port("e", eip, eproto, eport), "n1");
        let want = with_port("w", wip, wproto, wport);
        let got = verdict(&want, &n, &[existing]);
        assert_eq!(
            got.is_err(),
            conflict,
            "{eip}/{eproto}/{eport} vs {wip}/{wproto}/{wport}"
        );
        if conflict {
            assert_eq!(got, fail);
        }
    }
}

#[test]
fn node_resources_fit() {
    let n = node("n1", "2", "4Gi", "2");
    let others = [bound(pod("o", "1500m", "1Gi"), "n1")];
    assert_eq!(verdict(&pod("p", "500m", "3Gi"), &n, &others), Ok(()));
    assert_eq!(
        verdict(&pod("p", "501m", "3Gi"), &n, &others),
        reasons(&["Insufficient cpu"])
    );
    assert_eq!(
        verdict(&pod("p", "1", "4Gi"), &n, &others),
        reasons(&["Insufficient cpu", "Insufficient memory"])
    );
    // No requests: only the pod count matters.
    let full = [bound(pod("a", "", ""), "n1"), bound(pod("b", "", ""), "n1")];
    assert_eq!(
        verdict(&pod("p", "", ""), &n, &full),
        reasons(&["Too many pods"])
    );
    // Extended resources.
    let mut p = pod("p", "", "");
    spec(&mut p).containers[0]
        .resources
        .get_or_insert_with(Default::default)
        .requests
        .get_or_insert_with(Default::default)
        .insert("example.com/gpu".to_owned(), Quantity("1".to_owned()));
    assert_eq!(
        verdict(&p, &n, &[]),
        reasons(&["Insufficient example.com/gpu"])
    );
}

#[test]
fn pod_requests_init_sidecars_overhead() {
    let mut p = pod("p", "100m", "100Mi");
    let init = |cpu: &str, always: bool| Container {
        name: "i".to_owned(),
        restart_policy: always.then(|| "Always".to_owned()),
        resources: Some(ResourceRequirements {
            requests: Some([("cpu".to_owned(), Quantity(cpu.to_owned()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    spec(&mut p).init_containers = Some(vec![init("50m", true), init("500m", false)]);
    spec(&mut p).overhead = Some([("cpu".to_owned(), Quantity("10m".to_owned()))].into());
    let r = resources::pod_requests(p.spec.as_ref().expect("spec")).expect("valid");
    // max(100 + 50 sidecar, 500 + 50) + 10 overhead
    assert_eq!(r.requests.milli_cpu, 560);
    assert_eq!(r.requests.memory, 100 * 1024 * 1024);
    // Neither init container requests memory: 200Mi each for scoring, so the
    // regular one needs 200Mi + the sidecar's 200Mi > 100Mi + 200Mi.
    assert_eq!(r.non_zero_memory, 400 * 1024 * 1024);
    let empty =
        resources::pod_requests(pod("e", "", "").spec.as_ref().expect("spec")).expect("valid");
    assert_eq!(empty.requests.milli_cpu, 0);
    assert_eq!(
        (empty.non_zero_milli_cpu, empty.non_zero_memory),
        (100, 200 * 1024 * 1024)
    );
}

#[test]
fn fit_error_message_for_mixed_cluster() {
    let nodes = [
        node("a", "2", "8Gi", "110"),
        node("b", "2", "8Gi", "110"),
        with_taint(
            node("c", "8", "8Gi", "110"),
            "dedicated",
            "gpu",
            "NoSchedule",
        ),
    ];
    let others = [
        bound(pod("x", "1500m", ""), "a"),
        bound(pod("y", "1500m", ""), "b"),
    ];
    let snap = ClusterSnapshot::from_objects(&nodes, &others);
    let mut s = Scheduler::new(SchedulerConfig {
        preemption_message: false,
        ..Default::default()
    });
    // kube-scheduler sorts the "count reason" strings, so "1 node(s)…" comes first.
    let err = s.schedule(&snap, &pod("p", "1", "")).expect_err("no fit");
    assert_eq!(
        err.to_string(),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."
    );
    let mut s = Scheduler::new(SchedulerConfig::default());
    assert_eq!(
        message(s.schedule(&snap, &pod("p", "1", "")).expect_err("no fit")),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
         2 No preemption victims found for incoming pod."
    );
    // More than the node's whole allocatable: preemption cannot help.
    assert_eq!(
        message(s.schedule(&snap, &pod("p", "9", "")).expect_err("no fit")),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    let mut never = pod("p", "1", "");
    spec(&mut never).preemption_policy = Some("Never".to_owned());
    assert_eq!(
        message(s.schedule(&snap, &never).expect_err("no fit")),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. \
         preemption: not eligible due to preemptionPolicy=Never."
    );
    assert_eq!(
        Scheduler::new(SchedulerConfig::default())
            .schedule(&ClusterSnapshot::new(), &pod("p", "", "")),
        Err(ScheduleError::NoNodes)
    );
}

#[test]
fn preemption_candidates_from_lower_priority_pods() {
    let nodes = [node("a", "1", "8Gi", "110")];
    let mut low = bound(pod("low", "800m", ""), "a");
    spec(&mut low).priority = Some(-1);
    let snap = ClusterSnapshot::from_objects(&nodes, [&low]);
    let mut s = Scheduler::new(SchedulerConfig::default());
    match s.schedule(&snap, &pod("p", "500m", "")) {
        Err(ScheduleError::Unschedulable {
            message,
            preemption_candidates,
        }) => {
            assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");
            assert_eq!(preemption_candidates, vec!["a".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scoring_prefers_least_allocated() {
    let nodes = [
        node("busy", "4", "8Gi", "110"),
        node("idle", "4", "8Gi", "110"),
    ];
    let others = [bound(pod("o", "2", "4Gi"), "busy")];
    let snap = ClusterSnapshot::from_objects(&nodes, &others);
    let mut s = Scheduler::new(SchedulerConfig::default());
    for _ in 0..5 {
        assert_eq!(
            s.schedule(&snap, &pod("p", "100m", "100Mi")),
            Ok("idle".to_owned())
        );
    }
}

#[test]
fn preferred_node_affinity_weights() {
    let nodes = [
        with_labels(node("a", "4", "8Gi", "110"), &[("zone", "a")]),
        with_labels(
            node("b", "4", "8Gi", "110"),
            &[("zone", "b"), ("disk", "ssd")],
        ),
        with_labels(
            node("c", "4", "8Gi", "110"),
            &[("zone", "c"), ("disk", "ssd")],
        ),
    ];
    let snap = ClusterSnapshot::from_objects(&nodes, &[]);
    let mut s = Scheduler::new(SchedulerConfig::default());
    let mut p = pod("p", "100m", "");
    let pref = |w: i32, exprs| PreferredSchedulingTerm {
        weight: w,
        preference: term(exprs),
    };
    spec(&mut p)
        .affinity
        .get_or_insert_with(Default::default)
        .node_affinity
        .get_or_insert_with(Default::default)
        .preferred_during_scheduling_ignored_during_execution = Some(vec![
        pref(10, vec![req("zone", "In", &["a"])]),
        pref(20, vec![req("disk", "In", &["ssd"])]),
        pref(15, vec![req("zone", "In", &["c"])]),
    ]);
    // a: 10, b: 20, c: 35.
    assert_eq!(s.schedule(&snap, &p), Ok("c".to_owned()));
    // A busier c still wins: affinity weighs 2 × 100 against resource scores.
    let others = [bound(pod("o", "2", "4Gi"), "c")];
    let snap = ClusterSnapshot::from_objects(&nodes, &others);
    assert_eq!(s.schedule(&snap, &p), Ok("c".to_owned()));
}

#[test]
fn prefer_no_schedule_taints_score() {
    let nodes = [
        with_taint(
            node("a", "4", "8Gi", "110"),
            "soft",
            "x",
            "PreferNoSchedule",
        ),
        node("b", "4", "8Gi", "110"),
    ];
    let others = [bound(pod("o", "1", "1Gi"), "b")];
    let snap = ClusterSnapshot::from_objects(&nodes, &others);
    let mut s = Scheduler::new(SchedulerConfig::default());
    assert_eq!(s.schedule(&snap, &pod("p", "100m", "")), Ok("b".to_owned()));
    let mut p = pod("p", "100m", "");
    spec(&mut p).tolerations = Some(vec![toleration("soft", "Exists", "", "PreferNoSchedule")]);
    assert_eq!(s.schedule(&snap, &p), Ok("a".to_owned()));
}

#[test]
fn spreads_across_equal_nodes() {
    let nodes = [node("a", "4", "8Gi", "110"), node("b", "4", "8Gi", "110")];
    let mut snap = ClusterSnapshot::from_objects(&nodes, &[]);
    let mut s = Scheduler::new(SchedulerConfig::default());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..10 {
        let chosen = s
            .schedule_and_assume(&mut snap, &pod(&format!("p{i}"), "100m", "200Mi"))
            .expect("fits");
        *counts.entry(chosen).or_default() += 1;
    }
    assert_eq!(counts, [("a".to_owned(), 5), ("b".to_owned(), 5)].into());
    // Pods without requests score with the non-zero defaults, so they spread too.
    let mut snap = ClusterSnapshot::from_objects(&nodes, &[]);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..10 {
        let chosen = s
            .schedule_and_assume(&mut snap, &pod(&format!("q{i}"), "", ""))
            .expect("fits");
        *counts.entry(chosen).or_default() += 1;
    }
    assert_eq!(counts, [("a".to_owned(), 5), ("b".to_owned(), 5)].into());
}

#[test]
fn incremental_pods_and_nodes() {
    let mut snap = ClusterSnapshot::new();
    snap.add_node(&node("n1", "1", "1Gi", "110"));
    let mut s = Scheduler::new(SchedulerConfig::default());
    let mut big = bound(pod("big", "800m", ""), "n1");
    big.metadata.uid = Some("uid-big".to_owned());
    snap.add_pod(&big);
    assert_eq!(snap.node("n1").map(|n| n.requested().milli_cpu), Some(800));
    assert!(s.schedule(&snap, &pod("p", "500m", "")).is_err());
    snap.remove_pod(&big);
    assert_eq!(
        s.schedule(&snap, &pod("p", "500m", "")),
        Ok("n1".to_owned())
    );
    // A finished pod releases its node.
    snap.add_pod(&big);
    big.status = Some(PodStatus {
        phase: Some("Succeeded".to_owned()),
        ..Default::default()
    });
    snap.update_pod(&big);
    assert_eq!(snap.node("n1").map(|n| n.pod_count()), Some(0));
    // Pods bound to a node not yet known count once it arrives, and survive its removal.
    let early = bound(pod("early", "900m", ""), "n2");
    snap.add_pod(&early);
    snap.add_node(&node("n2", "1", "1Gi", "110"));
    assert_eq!(snap.node("n2").map(|n| n.requested().milli_cpu), Some(900));
    assert!(snap.remove_node("n2"));
    assert!(snap.node("n2").is_none());
    snap.add_node(&node("n2", "1", "1Gi", "110"));
    assert_eq!(snap.node("n2").map(|n| n.requested().milli_cpu), Some(900));
    // update_node keeps the pods and applies the new allocatable.
    snap.update_node(&node("n2", "2", "1Gi", "110"));
    assert_eq!(
        snap.node("n2").map(|n| n.allocatable().milli_cpu),
        Some(2000)
    );
    assert_eq!(snap.node("n2").map(|n| n.pod_count()), Some(1));
    assert_eq!(snap.node_count(), 2);
}

#[test]
fn percentage_of_nodes_to_score() {
    let s = Scheduler::new(SchedulerConfig::default());
    assert_eq!(s.num_feasible_nodes_to_find(50), 50);
    assert_eq!(s.num_feasible_nodes_to_find(100), 100);
    assert_eq!(s.num_feasible_nodes_to_find(1000), 420);
    assert_eq!(s.num_feasible_nodes_to_find(5000), 500);
    assert_eq!(s.num_feasible_nodes_to_find(6000), 300);
    assert_eq!(s.num_feasible_nodes_to_find(1500), 570);
    let all = Scheduler::new(SchedulerConfig {
        percentage_of_nodes_to_score: 100,
        ..Default::default()
    });
    assert_eq!(all.num_feasible_nodes_to_find(5000), 5000);
}
