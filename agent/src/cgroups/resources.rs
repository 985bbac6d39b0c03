//! From a pod to cgroup values, with the kubelet's formulas
//! (`pkg/kubelet/cm/helpers_linux.go`): CPU shares from requests, a CFS
//! quota from limits, a memory limit; overflow-safe on absurd quantities.

use berth_api::resource::{QuantityError, pod_limits, pod_requests};
use k8s_openapi::api::core::v1::Pod;

/// The least CPU shares a cgroup gets (`MinShares`; BestEffort's).
pub const MIN_SHARES: u64 = 2;
/// The most (`MaxShares`, the kernel's limit).
pub const MAX_SHARES: u64 = 262_144;
/// Shares of one CPU (`SharesPerCPU`).
pub const SHARES_PER_CPU: i64 = 1024;
/// The CFS period, µs (`QuotaPeriod`, 100 ms).
pub const QUOTA_PERIOD: u64 = 100_000;
/// The least CFS quota, µs (`MinQuotaPeriod`, 1 ms).
pub const MIN_QUOTA_PERIOD: i64 = 1000;
/// The largest CFS quota the kernel accepts (`MAX_BW`, 2^44 - 1 µs): a larger
/// limit (`cpu: 1T`) would make the cgroup write fail with EINVAL, so it is
/// clamped here, which for any real host means "no limit".
pub const MAX_QUOTA: i64 = (1 << 44) - 1;

/// What a cgroup is set to; `None` leaves a value as it is (the kernel's
/// default on a new cgroup: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceConfig {
    /// `cpu.shares` (v1); `cpu.weight` on v2, converted ([`shares_to_weight`]).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period; -1 is unlimited.
    pub cpu_quota: Option<i64>,
    /// CFS period in µs.
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes; -1 is unlimited.
    pub memory: Option<i64>,
    /// Most processes; -1 is unlimited.
    pub pids_limit: Option<i64>,
}

/// CPU shares for `milli_cpu` of requests (`MilliCPUToShares`): 1024 per CPU,
/// within [2, 262144]; none requested is 2.
pub fn milli_cpu_to_shares(milli_cpu: i64) -> u64 {
    if milli_cpu <= 0 {
        return MIN_SHARES;
    }
    let shares = milli_cpu.saturating_mul(SHARES_PER_CPU) / 1000;
    u64::try_from(shares)
        .unwrap_or(MIN_SHARES)
        .clamp(MIN_SHARES, MAX_SHARES)
}

/// The CFS quota (µs) for `milli_cpu` of limits over `period` µs
/// (`MilliCPUToQuota`): at least 1 ms, at most [`MAX_QUOTA`]; 0 for no limit.
pub fn milli_cpu_to_quota(milli_cpu: i64, period: u64) -> i64 {
    if milli_cpu <= 0 {
        return 0;
    }
    let quota = i128::from(milli_cpu) * i128::from(period) / 1000;
    i64::try_from(quota.clamp(i128::from(MIN_QUOTA_PERIOD), i128::from(MAX_QUOTA)))
        .unwrap_or(MAX_QUOTA)
}

/// cgroup v2 `cpu.weight` for v1 shares, as the kubelet and runc convert
/// them: `1 + ((shares - 2) * 9999) / 262142`, within [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// A pod's cgroup values (`ResourceConfigForPod`): Guaranteed gets shares,
/// quota and period, and its memory limit; Burstable shares, and a quota or
/// a memory limit only when every container declares that limit;
/// BestEffort the least shares. `enforce_cpu_limits` false
/// (`--cpu-cfs-quota=false`) leaves the quota unlimited. `pids_limit`
/// (`--pod-max-pids`) applies when positive.
pub fn resource_config_for_pod(
    pod: &Pod,
    enforce_cpu_limits: bool,
    cpu_period: u64,
    pids_limit: i64,
) -> Result<ResourceConfig, QuantityError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let requests = pod_requests(&spec)?.requests;
    let limits = pod_limits(&spec)?;
    let shares = milli_cpu_to_shares(requests.milli_cpu);
    let quota = if enforce_cpu_limits {
        milli_cpu_to_quota(limits.limits.milli_cpu, cpu_period)
    } else {
        -1
    };
    let mut config = ResourceConfig::default();
    match berth_api::qos::pod_qos_class(pod) {
        berth_api::qos::GUARANTEED => {
            config.cpu_shares = Some(shares);
            config.cpu_quota = Some(quota);
            config.cpu_period = Some(cpu_period);
            config.memory = Some(limits.limits.memory);
        }
        berth_api::qos::BURSTABLE => {
            config.cpu_shares = Some(shares);
            if limits.cpu_limits_declared {
                config.cpu_quota = Some(quota);
                config.cpu_period = Some(cpu_period);
            }
            if limits.memory_limits_declared {
                config.memory = Some(limits.limits.memory);
            }
        }
        _ => config.cpu_shares = Some(MIN_SHARES),
    }
    if pids_limit > 0 {
        config.pids_limit = Some(pids_limit);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_quota_and_weight_as_upstream() {
        // Upstream's test values (helpers_linux_test.go).
        for (milli, shares) in [
            (0, 2),
            (1, 2),
            (100, 102),
            (250, 256),
            (500, 512),
            (1000, 1024),
            (1500, 1536),
            (300_000, 262_144),
            (i64::MAX, 262_144),
            (-5, 2),
        ] {
            assert_eq!(milli_cpu_to_shares(milli), shares, "{milli}m");
        }
        for (milli, quota) in [
            (0, 0),
            (5, 1000),
            (9, 1000),
            (10, 1000),
            (100, 10_000),
            (250, 25_000),
            (1500, 150_000),
        ] {
            assert_eq!(milli_cpu_to_quota(milli, QUOTA_PERIOD), quota, "{milli}m");
        }
        assert_eq!(milli_cpu_to_quota(i64::MAX, QUOTA_PERIOD), MAX_QUOTA);
        for (shares, weight) in [
            (2, 1),
            (1024, 39),
            (262_144, 10_000),
            (0, 1),
            (u64::MAX, 10_000),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "{shares} shares");
        }
    }

    fn pod(containers: &str) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata": {{"uid": "u1"}}, "spec": {{"containers": {containers}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn each_qos_class_gets_the_kubelets_values() {
        let guaranteed = pod(
            r#"[{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "500m", "memory": "128Mi"}}}]"#,
        );
        assert_eq!(
            resource_config_for_pod(&guaranteed, true, QUOTA_PERIOD, 0).unwrap(),
            ResourceConfig {
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                memory: Some(128 << 20),
                pids_limit: None,
            }
        );
        // --cpu-cfs-quota=false: unlimited quota; --pod-max-pids.
        let c = resource_config_for_pod(&guaranteed, false, QUOTA_PERIOD, 1024).unwrap();
        assert_eq!((c.cpu_quota, c.pids_limit), (Some(-1), Some(1024)));

        // Burstable with a CPU limit on one container only: no quota; the
        // memory limit is declared by both.
        let burstable = pod(
            r#"[{"name": "a", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1", "memory": "64Mi"}}},
               {"name": "b", "resources": {"limits": {"memory": "32Mi"}}}]"#,
        );
        assert_eq!(
            resource_config_for_pod(&burstable, true, QUOTA_PERIOD, -1).unwrap(),
            ResourceConfig {
                cpu_shares: Some(256),
                memory: Some(96 << 20),
                ..Default::default()
            }
        );

        let best_effort = pod(r#"[{"name": "a"}]"#);
        assert_eq!(
            resource_config_for_pod(&best_effort, true, QUOTA_PERIOD, 0).unwrap(),
            ResourceConfig {
                cpu_shares: Some(2),
                ..Default::default()
            }
        );

        // Absurd quantities clamp instead of overflowing.
        let huge = pod(
            r#"[{"name": "a", "resources": {"limits": {"cpu": "1T", "memory": "8Ei"}, "requests": {"cpu": "1T", "memory": "8Ei"}}}]"#,
        );
        let c = resource_config_for_pod(&huge, true, QUOTA_PERIOD, 0).unwrap();
        assert_eq!(c.cpu_shares, Some(262_144));
        assert_eq!(c.cpu_quota, Some(MAX_QUOTA));
        assert!(c.memory.unwrap() > 0);

        let bad = pod(r#"[{"name": "a", "resources": {"limits": {"cpu": "lots"}}}]"#);
        assert!(resource_config_for_pod(&bad, true, QUOTA_PERIOD, 0).is_err());
    }
}
