//! berth-api: the Kubernetes API rules every part of berth shares, on top of
//! `k8s-openapi`'s types. The agent, the API server, the scheduler and the
//! plugins call these; none keeps its own copy of an API rule.
//!
//! | module | upstream |
//! |---|---|
//! | [`quantity`] | `apimachinery/pkg/api/resource` (`ParseQuantity`, `Cmp`, `Add`, `Value`, `MilliValue`) |
//! | [`names`] | `apimachinery/pkg/util/validation` (DNS-1123, qualified names, label values) |
//! | [`defaults`] | `pkg/apis/core/v1/defaults.go` (`SetDefaults_Pod` and friends) |
//! | [`validation`] | `pkg/apis/core/validation` (`ValidatePod`, `ValidatePodUpdate`, object metadata, tolerations) and `pkg/apis/node/validation` (`ValidateRuntimeClass`) |
//! | [`qos`] | `pkg/apis/core/v1/helper/qos` (`ComputePodQOS`) |
//! | [`restart`] | the kubelet's restart rules (`ShouldContainerBeRestarted`) |
//! | [`references`] | `pkg/api/pod/util.go` (`VisitPodSecretNames`, `VisitPodConfigmapNames`) and the Node authorizer's pod edges |
//! | [`scheduling`] | `Toleration.ToleratesTaint` and `component-helpers/scheduling/corev1/nodeaffinity` (`RequiredNodeAffinity`), for the scheduler and the kubelet's admission |
//! | [`resource`] | `component-helpers/resource` (`PodRequests`) and the scheduler's `framework.Resource` |

pub mod defaults;
pub mod names;
pub mod qos;
pub mod quantity;
pub mod references;
pub mod resource;
pub mod restart;
pub mod scheduling;
pub mod validation;
