//! Network counters from `/proc/<pid>/net/dev` (the network namespace of a
//! process: a pod's, through any process of its cgroup) or `/proc/net/dev`
//! (the agent's own, the node's). Loopback and the host ends of container
//! links are left out, as cadvisor leaves them out (`lo`, `veth*`, `docker*`).

use std::path::Path;

use super::summary::{InterfaceStats, NetworkStats, Time};
use super::{Result, StatsError, read_file};

/// The interface the Summary API reports inline (the kubelet's default).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Interfaces cadvisor does not report.
const IGNORED_PREFIXES: &[&str] = &["lo", "veth", "docker"];

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parse `net/dev`: two header lines, then `name: rx(8 fields) tx(8 fields)`.
/// Ignored interfaces and malformed lines are skipped.
pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || IGNORED_PREFIXES.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if f.len() < 16 {
                return None;
            }
            Some(Interface {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

/// The interfaces of `pid`'s network namespace (`None`: the agent's own).
pub fn read_net_dev(proc_root: &Path, pid: Option<i32>) -> Result<Vec<Interface>> {
    let path = match pid {
        Some(pid) if pid > 0 => proc_root.join(pid.to_string()).join("net/dev"),
        Some(pid) => {
            return Err(StatsError::Parse {
                path: proc_root.to_path_buf(),
                message: format!("invalid pid {pid}"),
            });
        }
        None => proc_root.join("net/dev"),
    };
    Ok(parse_net_dev(&read_file(&path)?))
}

/// The Summary's network stats: every interface, `eth0` also inline.
pub fn network_stats(time: Time, interfaces: &[Interface]) -> NetworkStats {
    let to_stats = |i: &Interface| InterfaceStats {
        name: i.name.clone(),
        rx_bytes: Some(i.rx_bytes),
        rx_errors: Some(i.rx_errors),
        tx_bytes: Some(i.tx_bytes),
        tx_errors: Some(i.tx_errors),
    };
    NetworkStats {
        time,
        default_interface: interfaces
            .iter()
            .find(|i| i.name == DEFAULT_INTERFACE)
            .map(to_stats)
            .unwrap_or_default(),
        interfaces: interfaces.iter().map(to_stats).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3293      31    0    0    0     0          0         0     3293      31    0    0    0     0       0          0
  eth0: 149075792    4858    3    0    0     0          0         0   298798    2776    1    0    0     0       0          0
vethab12: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
  ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    #[test]
    fn net_dev_skips_loopback_and_veths() {
        let ifaces = parse_net_dev(NET_DEV);
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "ifb0"]);
        assert_eq!(
            ifaces[0],
            Interface {
                name: "eth0".into(),
                rx_bytes: 149_075_792,
                rx_errors: 3,
                tx_bytes: 298_798,
                tx_errors: 1,
            }
        );
        let stats = network_stats(Time::from_nanos(1), &ifaces);
        assert_eq!(stats.default_interface.name, "eth0");
        assert_eq!(stats.default_interface.tx_bytes, Some(298_798));
        assert_eq!(stats.interfaces.len(), 2);
        // No eth0: nothing inline.
        let stats = network_stats(Time::from_nanos(1), &ifaces[1..]);
        assert_eq!(stats.default_interface, InterfaceStats::default());
    }

    #[test]
    fn a_pods_namespace_through_its_pid() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("4242/net")).unwrap();
        std::fs::write(proc.path().join("4242/net/dev"), NET_DEV).unwrap();
        assert_eq!(read_net_dev(proc.path(), Some(4242)).unwrap().len(), 2);
        assert!(
            read_net_dev(proc.path(), Some(1))
                .unwrap_err()
                .is_not_found()
        );
        assert!(read_net_dev(proc.path(), Some(-1)).is_err());
        assert!(read_net_dev(proc.path(), None).unwrap_err().is_not_found());
    }
}
