//! The downward API's `resourceFieldRef` for env (upstream's
//! `resource.ExtractContainerResourceValue` after the kubelet's
//! `MergeContainerResourceLimits`): a container's requests or limits of cpu,
//! memory or ephemeral-storage, divided by the divisor and rounded up; a limit
//! the container does not set is the node's capacity (berth has no reserved
//! resources yet, so allocatable is capacity).

use k8s_openapi::api::core::v1::{Container, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What an unset limit stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

impl NodeAllocatable {
    /// This node's, from the kernel (see [`crate::capacity`]).
    pub fn of_node(root_dir: &std::path::Path) -> Self {
        NodeAllocatable {
            milli_cpu: crate::capacity::cpus().saturating_mul(1000),
            memory: crate::capacity::memory_bytes(),
            ephemeral_storage: crate::capacity::ephemeral_storage_bytes(root_dir)
                .and_then(|b| i64::try_from(b).ok())
                .unwrap_or(0),
        }
    }
}

/// The value of `sel` for container `c`, as the env var's string. `Err` names
/// the field and the reason (the container's config error).
pub fn resource_field_value(
    c: &Container,
    sel: &ResourceFieldSelector,
    node: &NodeAllocatable,
) -> Result<String, String> {
    let resources = c.resources.as_ref();
    let get = |limits: bool, name: &str| -> Result<Option<i64>, String> {
        let list = resources.and_then(|r| {
            if limits {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }
        });
        let Some(q) = list.and_then(|l| l.get(name)) else {
            return Ok(None);
        };
        let parsed = if name == "cpu" {
            berth_api::resource::milli_value(q)
        } else {
            berth_api::resource::value(q)
        };
        parsed.map(Some).map_err(|e| e.to_string())
    };
    let divisor = sel.divisor.clone().unwrap_or_else(|| Quantity("1".into()));
    let (limits, name) = match sel.resource.split_once('.') {
        Some(("limits", n)) => (true, n),
        Some(("requests", n)) => (false, n),
        _ => return Err(format!("unsupported container resource : {}", sel.resource)),
    };
    let fallback = |name: &str| match name {
        "cpu" => Some(node.milli_cpu),
        "memory" => Some(node.memory),
        "ephemeral-storage" => Some(node.ephemeral_storage),
        _ => None,
    };
    let amount = match get(limits, name)? {
        Some(v) => v,
        None if limits => fallback(name)
            .ok_or_else(|| format!("unsupported container resource : {}", sel.resource))?,
        None if fallback(name).is_some() || name.starts_with("hugepages-") => 0,
        None => return Err(format!("unsupported container resource : {}", sel.resource)),
    };
    let div = if name == "cpu" {
        berth_api::resource::milli_value(&divisor)
    } else {
        berth_api::resource::value(&divisor)
    }
    .map_err(|e| format!("divisor: {e}"))?;
    if div <= 0 {
        return Err(format!("divisor: {:?} must be positive", divisor.0));
    }
    // ceil(amount / div) for non-negative amounts, in 128 bits.
    let value = (i128::from(amount.max(0)) + i128::from(div) - 1) / i128::from(div);
    Ok(i64::try_from(value).unwrap_or(i64::MAX).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let list = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        Container {
            name: "c".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sel(resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: None,
        }
    }

    const NODE: NodeAllocatable = NodeAllocatable {
        milli_cpu: 2000,
        memory: 8 << 30,
        ephemeral_storage: 100 << 30,
    };

    #[test]
    fn values_as_upstream() {
        let c = container(
            &[("cpu", "250m"), ("memory", "64Mi")],
            &[("memory", "128Mi")],
        );
        let v = |r: &str, d: Option<&str>| resource_field_value(&c, &sel(r, d), &NODE);
        // CPU rounds up to whole cores by default, exact with a 1m divisor.
        assert_eq!(v("requests.cpu", None).as_deref(), Ok("1"));
        assert_eq!(v("requests.cpu", Some("1m")).as_deref(), Ok("250"));
        assert_eq!(v("limits.memory", Some("1Mi")).as_deref(), Ok("128"));
        assert_eq!(v("requests.memory", None).as_deref(), Ok("67108864"));
        // No limit: the node's allocatable.
        assert_eq!(v("limits.cpu", None).as_deref(), Ok("2"));
        assert_eq!(
            v("limits.ephemeral-storage", Some("1Gi")).as_deref(),
            Ok("100")
        );
        // No request: zero.
        assert_eq!(v("requests.ephemeral-storage", None).as_deref(), Ok("0"));
        assert!(v("limits.gpu", None).is_err());
        assert!(v("limits.cpu", Some("0")).is_err());
    }
}
