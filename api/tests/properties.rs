//! Property tests over berth-api's rules: no input panics them (the API server
//! and the agent call them on whatever a client sends), defaulting is
//! idempotent, the name checks agree with themselves, and validation gives the
//! same answer for a pod and its JSON round trip.

use std::collections::BTreeMap;

use berth_api::{defaults, names, qos, resource, validation};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HostPathVolumeSource, Pod, PodSpec, ResourceRequirements,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;

/// Strings that are sometimes valid names and often not.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?",
        "[A-Za-z0-9_./ ;=-]{0,30}",
        "\\PC{0,12}",
        Just(String::new()),
        Just("a".repeat(300)),
    ]
}

/// Strings that are sometimes quantities and often not.
fn quantity() -> impl Strategy<Value = Quantity> {
    prop_oneof![
        "[+-]?[0-9]{0,20}(\\.[0-9]{0,12})?(|m|k|Mi|Gi|Ei|e[+-]?[0-9]{1,4}|n)",
        "\\PC{0,10}",
        Just("1T".to_string()),
        Just("7Ei".to_string()),
        Just("1e1000".to_string()),
    ]
    .prop_map(Quantity)
}

fn resource_list() -> impl Strategy<Value = BTreeMap<String, Quantity>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("cpu".to_string()),
            Just("memory".to_string()),
            Just("example.com/gpu".to_string()),
            text()
        ],
        quantity(),
        0..3,
    )
}

fn resources() -> impl Strategy<Value = Option<ResourceRequirements>> {
    prop::option::of(
        (resource_list(), resource_list()).prop_map(|(requests, limits)| ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
    )
}

fn container() -> impl Strategy<Value = Container> {
    (
        text(),
        prop::option::of(text()),
        prop::collection::vec((any::<i32>(), prop::option::of(any::<i32>())), 0..3),
        prop::collection::vec((text(), text()), 0..3),
        prop::collection::vec((text(), text()), 0..2),
        resources(),
        prop::option::of(prop_oneof![Just("Always".to_string()), text()]),
    )
        .prop_map(
            |(name, image, ports, env, mounts, resources, restart)| Container {
                name,
                image,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(container_port, host_port)| ContainerPort {
                            container_port,
                            host_port,
                            ..Default::default()
                        })
                        .collect(),
                ),
                env: Some(
                    env.into_iter()
                        .map(|(name, value)| EnvVar {
                            name,
                            value: Some(value),
                            ..Default::default()
                        })
                        .collect(),
                ),
                volume_mounts: Some(
                    mounts
                        .into_iter()
                        .map(|(name, mount_path)| VolumeMount {
                            name,
                            mount_path,
                            ..Default::default()
                        })
                        .collect(),
                ),
                resources,
                restart_policy: restart,
                ..Default::default()
            },
        )
}

fn pod() -> impl Strategy<Value = Pod> {
    (
        text(),
        prop::option::of(text()),
        prop::collection::btree_map(text(), text(), 0..3),
        prop::collection::btree_map(text(), text(), 0..2),
        prop::collection::vec(container(), 0..3),
        prop::collection::vec(container(), 0..2),
        prop::collection::vec((text(), text()), 0..2),
        (
            prop::option::of(text()),
            prop::option::of(any::<i64>()),
            prop::option::of(any::<i64>()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(name, namespace, labels, annotations, containers, init, volumes, extra)| {
                let (restart_policy, grace, deadline, host_network) = extra;
                Pod {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace,
                        labels: Some(labels),
                        annotations: Some(annotations),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers,
                        init_containers: Some(init),
                        volumes: Some(
                            volumes
                                .into_iter()
                                .map(|(name, path)| Volume {
                                    name,
                                    host_path: Some(HostPathVolumeSource { path, type_: None }),
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                        restart_policy,
                        termination_grace_period_seconds: grace,
                        active_deadline_seconds: deadline,
                        host_network: Some(host_network),
                        ..Default::default()
                    }),
                    status: None,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Nothing a client can send panics defaulting, validation (create and
    /// update), the QoS class or the requests sum.
    #[test]
    fn no_pod_panics_the_rules(mut a in pod(), b in pod()) {
        defaults::apply(&mut a);
        let errs = validation::validate_pod(&a);
        let _ = validation::validate_pod_update(&a, &b);
        let _ = qos::pod_qos_class(&a);
        if let Some(spec) = &a.spec {
            let _ = resource::pod_requests(spec);
        }
        for e in &errs {
            prop_assert!(!e.field.is_empty());
            prop_assert!(!e.reason.is_empty());
        }
    }

    /// Defaulting twice is defaulting once.
    #[test]
    fn defaulting_is_idempotent(mut p in pod()) {
        defaults::apply(&mut p);
        let once = p.clone();
        defaults::apply(&mut p);
        prop_assert_eq!(once, p);
    }

    /// A pod and its JSON round trip get the same verdict (what the API server
    /// stores is what the agent validates again).
    #[test]
    fn validation_survives_a_json_round_trip(mut p in pod()) {
        defaults::apply(&mut p);
        let back: Pod = serde_json::from_value(serde_json::to_value(&p).expect("encodes"))
            .expect("decodes");
        prop_assert_eq!(validation::validate_pod(&p), validation::validate_pod(&back));
        prop_assert_eq!(qos::pod_qos_class(&p), qos::pod_qos_class(&back));
    }

    /// The boolean name checks and the message lists agree.
    #[test]
    fn name_checks_agree(s in text()) {
        prop_assert_eq!(names::is_dns1123_label(&s), names::dns1123_label_errors(&s).is_empty());
        prop_assert_eq!(
            names::is_dns1123_subdomain(&s),
            names::dns1123_subdomain_errors(&s).is_empty()
        );
        if names::is_dns1123_label(&s) {
            prop_assert!(names::is_dns1123_subdomain(&s));
        }
    }

    /// A valid pod stays valid with its own spec as the old one.
    #[test]
    fn an_unchanged_pod_is_a_valid_update(mut p in pod()) {
        defaults::apply(&mut p);
        let create = validation::validate_pod(&p);
        prop_assert_eq!(validation::validate_pod_update(&p, &p), create);
    }
}

/// Metadata validation applies to any kind: a namespace in a cluster-scoped
/// object is refused, a label value with spaces is refused, 256 KiB of
/// annotations is the limit.
#[test]
fn object_meta_for_any_kind() {
    use validation::{NameRule, validate_object_meta};
    let meta = |labels: &[(&str, &str)], annotations: &[(&str, String)]| ObjectMeta {
        name: Some("x".into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        annotations: Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ),
        ..Default::default()
    };
    assert!(validate_object_meta(&meta(&[("a", "b")], &[]), false, NameRule::Label).is_empty());
    let errs = validate_object_meta(&meta(&[("a", "b c;d/e")], &[]), true, NameRule::Subdomain);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "metadata.labels");
    let just_fits = "x".repeat(validation::ANNOTATIONS_MAX - 1);
    assert!(
        validate_object_meta(&meta(&[], &[("k", just_fits)]), true, NameRule::Subdomain).is_empty()
    );
    let too_big = "x".repeat(512 * 1024);
    let errs = validate_object_meta(&meta(&[], &[("k", too_big)]), true, NameRule::Subdomain);
    assert_eq!(
        errs[0].reason,
        "Too long: may not be more than 262144 bytes"
    );
    assert_eq!(errs[0].error_type.cause_type(), "FieldValueTooLong");
    let mut namespaced = meta(&[], &[]);
    namespaced.namespace = Some("default".into());
    let errs = validate_object_meta(&namespaced, false, NameRule::Label);
    assert_eq!(errs[0].field, "metadata.namespace");
}
