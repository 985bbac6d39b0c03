//! Resource amounts as the scheduler counts them (`framework.Resource`): CPU in
//! millicores, memory, ephemeral storage and extended resources as integers
//! (rounded up, saturating), pods as a count; and a pod's requests as
//! `resourcehelper.PodRequests` computes them, for the scheduler's fit and
//! anything else that needs what a pod asks of its node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

/// CPU requested by a container that requests none, for scoring
/// (`schedutil.DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory requested by a container that requests none, for scoring
/// (`schedutil.DefaultMemoryRequest`, 200Mi).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A quantity in a resource list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {value:?}: {source}")]
pub struct QuantityError {
    /// The text as written.
    pub value: String,
    /// Why it does not parse.
    #[source]
    pub source: quantity::QuantityError,
}

fn parsed(q: &Quantity) -> Result<quantity::Quantity, QuantityError> {
    quantity::Quantity::try_from(q).map_err(|source| QuantityError {
        value: q.0.clone(),
        source,
    })
}

/// A CPU quantity in millicores, rounded up (`Quantity.MilliValue`), saturating.
pub fn milli_value(q: &Quantity) -> Result<i64, QuantityError> {
    parsed(q).map(|q| q.milli_value())
}

/// A quantity as an integer, rounded up (`Quantity.Value`), saturating: bytes for
/// memory and storage, a count for pods and extended resources.
pub fn value(q: &Quantity) -> Result<i64, QuantityError> {
    parsed(q).map(|q| q.value())
}

/// Whether the scheduler counts a resource name as a scalar resource
/// (`schedutil.IsScalarResourceName`): extended resources (`example.com/foo`),
/// prefixed native resources, hugepages and attachable volumes.
pub fn is_scalar_resource_name(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("requests."))
}

/// Amounts of the resources the scheduler tracks (`framework.Resource`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Number of pods (only meaningful for allocatable).
    pub pods: i64,
    /// Scalar resources (extended resources, hugepages), sorted by name.
    pub scalar: Vec<(String, i64)>,
}

impl Resources {
    /// A resource list (`status.allocatable`, a container's requests) as
    /// [`Resources`]; names the scheduler does not track are ignored.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Result<Self, QuantityError> {
        let mut r = Resources::default();
        r.add_list(list)?;
        Ok(r)
    }

    fn add_list(&mut self, list: &BTreeMap<String, Quantity>) -> Result<(), QuantityError> {
        for (name, q) in list {
            match name.as_str() {
                "cpu" => self.milli_cpu = self.milli_cpu.saturating_add(milli_value(q)?),
                "memory" => self.memory = self.memory.saturating_add(value(q)?),
                "ephemeral-storage" => {
                    self.ephemeral_storage = self.ephemeral_storage.saturating_add(value(q)?)
                }
                "pods" => self.pods = self.pods.saturating_add(value(q)?),
                other if is_scalar_resource_name(other) => self.add_scalar(other, value(q)?),
                _ => {}
            }
        }
        Ok(())
    }

    /// The amount of a scalar resource (0 when absent).
    pub fn scalar(&self, name: &str) -> i64 {
        match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalar[i].1,
            Err(_) => 0,
        }
    }

    fn add_scalar(&mut self, name: &str, amount: i64) {
        match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalar[i].1 = self.scalar[i].1.saturating_add(amount),
            Err(i) => self.scalar.insert(i, (name.to_owned(), amount)),
        }
    }

    /// Raises the named extended resource to at least `amount`.
    fn max_scalar(&mut self, name: &str, amount: i64) {
        match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalar[i].1 = self.scalar[i].1.max(amount),
            Err(i) if amount > 0 => self.scalar.insert(i, (name.to_owned(), amount)),
            Err(_) => {}
        }
    }

    /// Adds `other` to `self` (every resource).
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
        for (name, amount) in &other.scalar {
            self.add_scalar(name, *amount);
        }
    }

    /// Subtracts `other` from `self` (every resource).
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        self.pods = self.pods.saturating_sub(other.pods);
        for (name, amount) in &other.scalar {
            self.add_scalar(name, amount.saturating_neg());
        }
    }

    /// Raises each resource of `self` to at least `other`'s.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (name, amount) in &other.scalar {
            self.max_scalar(name, *amount);
        }
    }
}

/// A pod's requests as the scheduler sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// What NodeResourcesFit checks and what binding the pod adds to its node:
    /// `max(Σ app containers + sidecars, each init container + the sidecars
    /// started before it) + overhead`.
    pub requests: Resources,
    /// CPU with containers that request none counted at
    /// [`DEFAULT_MILLI_CPU_REQUEST`] (`GetNonzeroRequests`), for scoring.
    pub non_zero_milli_cpu: i64,
    /// Memory with containers that request none counted at
    /// [`DEFAULT_MEMORY_REQUEST`], for scoring.
    pub non_zero_memory: i64,
}

fn container_requests(c: &Container) -> Result<(Resources, bool, bool), QuantityError> {
    match c.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        Some(list) => Ok((
            Resources::from_list(list)?,
            list.contains_key("cpu"),
            list.contains_key("memory"),
        )),
        None => Ok((Resources::default(), false, false)),
    }
}

/// A pod's requests (`resourcehelper.PodRequests`, with and without
/// `NonMissingContainerRequests`), including restartable init containers
/// (sidecars) and `spec.overhead`.
pub fn pod_requests(spec: &PodSpec) -> Result<PodRequests, QuantityError> {
    // `nz` tracks (cpu, memory) with missing requests defaulted.
    let mut sum = Resources::default();
    let mut nz = (0i64, 0i64);
    let defaulted = |r: &Resources, has_cpu: bool, has_mem: bool| {
        (
            if has_cpu {
                r.milli_cpu
            } else {
                DEFAULT_MILLI_CPU_REQUEST
            },
            if has_mem {
                r.memory
            } else {
                DEFAULT_MEMORY_REQUEST
            },
        )
    };
    for c in &spec.containers {
        let (r, has_cpu, has_mem) = container_requests(c)?;
        let (cpu, mem) = defaulted(&r, has_cpu, has_mem);
        nz = (nz.0.saturating_add(cpu), nz.1.saturating_add(mem));
        sum.add(&r);
    }
    let mut sidecars = Resources::default();
    let mut sidecars_nz = (0i64, 0i64);
    let mut init_max = Resources::default();
    let mut init_max_nz = (0i64, 0i64);
    for c in spec.init_containers.iter().flatten() {
        let (r, has_cpu, has_mem) = container_requests(c)?;
        let (cpu, mem) = defaulted(&r, has_cpu, has_mem);
        let (use_r, use_nz) = if c.restart_policy.as_deref() == Some("Always") {
            sum.add(&r);
            nz = (nz.0.saturating_add(cpu), nz.1.saturating_add(mem));
            sidecars.add(&r);
            sidecars_nz = (
                sidecars_nz.0.saturating_add(cpu),
                sidecars_nz.1.saturating_add(mem),
            );
            (sidecars.clone(), sidecars_nz)
        } else {
            let mut t = r;
            t.add(&sidecars);
            (
                t,
                (
                    cpu.saturating_add(sidecars_nz.0),
                    mem.saturating_add(sidecars_nz.1),
                ),
            )
        };
        init_max.max_with(&use_r);
        init_max_nz = (init_max_nz.0.max(use_nz.0), init_max_nz.1.max(use_nz.1));
    }
    sum.max_with(&init_max);
    nz = (nz.0.max(init_max_nz.0), nz.1.max(init_max_nz.1));
    if let Some(overhead) = &spec.overhead {
        let o = Resources::from_list(overhead)?;
        sum.add(&o);
        nz = (
            nz.0.saturating_add(o.milli_cpu),
            nz.1.saturating_add(o.memory),
        );
    }
    // A pod's own "pods" request is meaningless; the fit check counts pods itself.
    sum.pods = 0;
    Ok(PodRequests {
        requests: sum,
        non_zero_milli_cpu: nz.0,
        non_zero_memory: nz.1,
    })
}

/// A pod's limits (`resourcehelper.PodLimits`): `max(Σ app containers +
/// sidecars, each init container + the sidecars started before it)`, plus
/// `spec.overhead` on the limits that are set (a limit left unset stays
/// unlimited). Also whether every container declares a CPU and a memory limit
/// (the `ContainerFn` the kubelet's `ResourceConfigForPod` passes): init
/// containers are judged by their effective limits (their own plus the
/// sidecars' before them), as upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// The pod's limits (zero: not limited).
    pub limits: Resources,
    /// Every container has a non-zero CPU limit.
    pub cpu_limits_declared: bool,
    /// Every container has a non-zero memory limit.
    pub memory_limits_declared: bool,
}

fn container_limits(c: &Container) -> Result<Resources, QuantityError> {
    match c.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        Some(list) => Resources::from_list(list),
        None => Ok(Resources::default()),
    }
}

/// See [`PodLimits`].
pub fn pod_limits(spec: &PodSpec) -> Result<PodLimits, QuantityError> {
    let mut cpu_declared = true;
    let mut memory_declared = true;
    let mut judge = |r: &Resources| {
        cpu_declared &= r.milli_cpu != 0;
        memory_declared &= r.memory != 0;
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        let r = container_limits(c)?;
        judge(&r);
        sum.add(&r);
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_limits(c)?;
        let effective = if c.restart_policy.as_deref() == Some("Always") {
            sum.add(&r);
            sidecars.add(&r);
            sidecars.clone()
        } else {
            let mut t = r;
            t.add(&sidecars);
            t
        };
        judge(&effective);
        init_max.max_with(&effective);
    }
    sum.max_with(&init_max);
    if let Some(overhead) = &spec.overhead {
        let o = Resources::from_list(overhead)?;
        if sum.milli_cpu != 0 {
            sum.milli_cpu = sum.milli_cpu.saturating_add(o.milli_cpu);
        }
        if sum.memory != 0 {
            sum.memory = sum.memory.saturating_add(o.memory);
        }
        if sum.ephemeral_storage != 0 {
            sum.ephemeral_storage = sum.ephemeral_storage.saturating_add(o.ephemeral_storage);
        }
        for (name, amount) in &o.scalar {
            if sum.scalar(name) != 0 {
                sum.add_scalar(name, *amount);
            }
        }
    }
    sum.pods = 0;
    Ok(PodLimits {
        limits: sum,
        cpu_limits_declared: cpu_declared,
        memory_limits_declared: memory_declared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_owned())
    }

    /// A negative extended resource on one side and a huge one on the other
    /// (found by the property test) must not overflow taking the maximum.
    #[test]
    fn max_of_extreme_extended_resources_does_not_overflow() {
        let mut low = Resources::default();
        low.add_scalar("example.com/dev", i64::MIN + 1);
        let mut high = Resources::default();
        high.add_scalar("example.com/dev", i64::MAX);
        low.max_with(&high);
        assert_eq!(low.scalar("example.com/dev"), i64::MAX);
        let mut empty = Resources::default();
        let mut negative = Resources::default();
        negative.add_scalar("example.com/dev", -5);
        empty.max_with(&negative);
        assert_eq!(empty.scalar, vec![], "absent counts as zero");
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(milli_value(&q("100m")), Ok(100));
        assert_eq!(value(&q("200Mi")), Ok(200 * 1024 * 1024));
        assert_eq!(value(&q("99Ei")), Ok(i64::MAX), "saturated");
        let err = value(&q("1Xi")).expect_err("invalid");
        assert_eq!(err.source, quantity::QuantityError::Invalid);
        assert!(
            err.to_string()
                .starts_with("quantity \"1Xi\": quantities must match")
        );
    }

    fn container(name: &str, limits: &[(&str, &str)]) -> Container {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                limits: (!limits.is_empty())
                    .then(|| limits.iter().map(|(k, v)| (k.to_string(), q(v))).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_limits_sum_containers_take_the_init_maximum_and_judge_declared() {
        let mut spec = PodSpec {
            containers: vec![
                container("a", &[("cpu", "500m"), ("memory", "100Mi")]),
                container("b", &[("cpu", "250m"), ("memory", "50Mi")]),
            ],
            ..Default::default()
        };
        let l = pod_limits(&spec).unwrap();
        assert_eq!(l.limits.milli_cpu, 750);
        assert_eq!(l.limits.memory, 150 << 20);
        assert!(l.cpu_limits_declared && l.memory_limits_declared);

        // A bigger init container raises the pod's limit; a sidecar adds to
        // the app containers and to each init container after it.
        let mut sidecar = container("side", &[("cpu", "100m"), ("memory", "10Mi")]);
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers = Some(vec![
            sidecar,
            container("init", &[("cpu", "2"), ("memory", "10Mi")]),
        ]);
        let l = pod_limits(&spec).unwrap();
        assert_eq!(l.limits.milli_cpu, 2100, "init 2 + sidecar 100m");
        assert_eq!(l.limits.memory, 160 << 20, "apps 150Mi + sidecar 10Mi");
        assert!(l.cpu_limits_declared && l.memory_limits_declared);

        // An init container without a memory limit after a sidecar with one
        // is judged by its effective limits: still declared (upstream).
        spec.init_containers.as_mut().unwrap()[1] = container("init", &[("cpu", "1")]);
        let l = pod_limits(&spec).unwrap();
        assert!(l.memory_limits_declared);
        // An app container without a CPU limit: not declared.
        spec.containers.push(container("c", &[("memory", "1Mi")]));
        let l = pod_limits(&spec).unwrap();
        assert!(!l.cpu_limits_declared && l.memory_limits_declared);

        // Overhead only on limits that are set.
        let spec = PodSpec {
            containers: vec![container("a", &[("memory", "100Mi")])],
            overhead: Some(
                [
                    ("cpu".to_string(), q("250m")),
                    ("memory".to_string(), q("10Mi")),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let l = pod_limits(&spec).unwrap();
        assert_eq!(l.limits.milli_cpu, 0, "no CPU limit stays unlimited");
        assert_eq!(l.limits.memory, 110 << 20);
        assert!(!l.cpu_limits_declared);
    }
}
