//! The agent's settings: kubelet-named flags, and a YAML config file (`--config`)
//! carrying the same settings. A flag given on the command line wins over the
//! file; the file wins over the defaults (as with the kubelet).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

/// berth-agent: a Kubernetes node agent that runs pods on containerd over CRI.
#[derive(Debug, Clone, Parser, Default)]
#[command(name = "berth-agent", version, about)]
pub struct Flags {
    /// A YAML file with the settings below (camelCase keys, e.g. `podManifestPath`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The CRI endpoint of the container runtime [default: unix:///run/containerd/containerd.sock].
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// The directory of static pod manifests [default: /etc/berth/manifests].
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// Where the agent keeps per-pod state (volumes, termination messages) [default: /var/lib/berth].
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// Where container logs go: <dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log [default: /var/log/pods].
    #[arg(long)]
    pub pod_logs_dir: Option<PathBuf>,
    /// The node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's IP, reported as status.hostIP [default: the address of the default route].
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Address of the HTTP status server (/healthz, /pods, /metrics) [default: 127.0.0.1:10255].
    #[arg(long)]
    pub status_address: Option<SocketAddr>,
    /// How often the manifest directory is rescanned, on top of inotify [default: 20s].
    #[arg(long, value_parser = parse_duration)]
    pub file_check_frequency: Option<Duration>,
    /// How often every pod is synced even when nothing changed [default: 1m].
    #[arg(long, value_parser = parse_duration)]
    pub sync_frequency: Option<Duration>,
    /// How often the runtime is relisted to notice container changes [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub relist_period: Option<Duration>,
    /// The parent cgroup of pod cgroups (cgroupfs driver) [default: /kubepods].
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// The cgroup driver: cgroupfs (the agent writes cgroupfs) or systemd
    /// (cgroups are systemd slices); a runtime that names its own in CRI
    /// RuntimeConfig (containerd 2.0+) overrides it [default: cgroupfs].
    #[arg(long, value_name = "cgroupfs|systemd")]
    pub cgroup_driver: Option<crate::cgroups::Driver>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// A kubeconfig for the API server: register the node, renew its lease and
    /// run the pods bound to it (in addition to the manifest directory) [default: none].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The port of the authenticated HTTPS server (logs, exec); 0 disables it [default: 10250].
    #[arg(long)]
    pub port: Option<u16>,
    /// The address the authenticated server listens on [default: 0.0.0.0].
    #[arg(long)]
    pub address: Option<IpAddr>,
    /// The authenticated server's certificate (PEM, may hold the chain)
    /// [default: generated into <root-dir>/pki/agent.crt].
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file [default: <root-dir>/pki/agent.key].
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that clients of the authenticated server must
    /// present a certificate of [default: the --kubeconfig cluster's CA; with
    /// neither, the server is not started].
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// A RuntimeClass the node knows without the API server, as
    /// `NAME=HANDLER` (the CRI runtime handler); repeatable. Static pods name
    /// them in `runtimeClassName`; with --kubeconfig, RuntimeClass objects
    /// are looked up too [default: none].
    #[arg(long = "runtime-class", value_name = "NAME=HANDLER")]
    pub runtime_classes: Vec<String>,
    /// The most pods this node runs (capacity and allocatable `pods`) [default: 110].
    #[arg(long)]
    pub max_pods: Option<i64>,
    /// Resources held back for the system's daemons, as
    /// `cpu=500m,memory=1Gi,ephemeral-storage=1Gi,pid=1000` [default: none].
    #[arg(long, value_name = "RESOURCE=QUANTITY,...")]
    pub system_reserved: Option<String>,
    /// Resources held back for Kubernetes' own daemons (the agent, the
    /// runtime), spelled as --system-reserved [default: none].
    #[arg(long, value_name = "RESOURCE=QUANTITY,...")]
    pub kube_reserved: Option<String>,
    /// Hard eviction thresholds, as `memory.available<100Mi,nodefs.available<10%`;
    /// given, it replaces the defaults; empty, there are none [default:
    /// memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%].
    #[arg(long, value_name = "SIGNAL<QUANTITY|PERCENT,...")]
    pub eviction_hard: Option<String>,
    /// How long a pressure condition stays after its signal was last met [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    pub eviction_pressure_transition_period: Option<Duration>,
    /// Soft eviction thresholds, spelled as --eviction-hard; each needs a
    /// grace period in --eviction-soft-grace-period [default: none].
    #[arg(long, value_name = "SIGNAL<QUANTITY|PERCENT,...")]
    pub eviction_soft: Option<String>,
    /// How long each soft threshold must hold before pods are evicted, as
    /// `memory.available=1m30s` [default: none].
    #[arg(long, value_name = "SIGNAL=DURATION,...")]
    pub eviction_soft_grace_period: Option<String>,
    /// How much more than a threshold must be available again before its
    /// pressure ends, as `memory.available=0Mi,nodefs.available=500Mi` [default: none].
    #[arg(long, value_name = "SIGNAL=QUANTITY|PERCENT,...")]
    pub eviction_minimum_reclaim: Option<String>,
    /// The longest termination grace period, in seconds, a pod evicted for a
    /// soft threshold is given [default: 0].
    #[arg(long)]
    pub eviction_max_pod_grace_period: Option<i64>,
    /// Test only: a JSON file whose signals (`{"memory.available":
    /// {"available": 1, "capacity": 2}}`) replace the host's readings.
    #[arg(long, hide = true)]
    pub eviction_signals_file: Option<PathBuf>,
    /// Benchmarks only: false turns off following containerd's own event
    /// service (`/tasks/exit`), leaving the relist alone to notice exits [default: true].
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub runtime_events: Option<bool>,
    /// Make CPU limits a CFS quota (on containers and pod cgroups); false
    /// leaves only CPU shares [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub cpu_cfs_quota: Option<bool>,
    /// The most processes a pod's cgroup may hold (`pids.max`); -1 is
    /// unlimited [default: -1].
    #[arg(long)]
    pub pod_max_pids: Option<i64>,
    /// What the node enforces allocatable on: `pods` (the cgroup root's CPU
    /// shares, memory limit and pids.max become allocatable's, before the
    /// eviction threshold) or `none` [default: pods].
    #[arg(long, value_delimiter = ',')]
    pub enforce_node_allocatable: Option<Vec<String>>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    container_runtime_endpoint: Option<String>,
    pod_manifest_path: Option<PathBuf>,
    root_dir: Option<PathBuf>,
    pod_logs_dir: Option<PathBuf>,
    node_name: Option<String>,
    node_ip: Option<String>,
    status_address: Option<SocketAddr>,
    file_check_frequency: Option<String>,
    sync_frequency: Option<String>,
    relist_period: Option<String>,
    cgroup_root: Option<String>,
    cgroup_driver: Option<String>,
    log_format: Option<LogFormat>,
    kubeconfig: Option<PathBuf>,
    port: Option<u16>,
    address: Option<IpAddr>,
    tls_cert_file: Option<PathBuf>,
    tls_private_key_file: Option<PathBuf>,
    // The kubelet's spelling (its config nests it as authentication.x509.clientCAFile).
    #[serde(rename = "clientCAFile")]
    client_ca_file: Option<PathBuf>,
    /// RuntimeClass name → CRI handler.
    runtime_classes: Option<std::collections::BTreeMap<String, String>>,
    max_pods: Option<i64>,
    system_reserved: Option<std::collections::BTreeMap<String, Scalar>>,
    kube_reserved: Option<std::collections::BTreeMap<String, Scalar>>,
    eviction_hard: Option<std::collections::BTreeMap<String, Scalar>>,
    eviction_pressure_transition_period: Option<String>,
    eviction_soft: Option<std::collections::BTreeMap<String, Scalar>>,
    eviction_soft_grace_period: Option<std::collections::BTreeMap<String, String>>,
    eviction_minimum_reclaim: Option<std::collections::BTreeMap<String, Scalar>>,
    eviction_max_pod_grace_period: Option<i64>,
    // The kubelet's config spellings.
    #[serde(rename = "cpuCFSQuota")]
    cpu_cfs_quota: Option<bool>,
    pod_pids_limit: Option<i64>,
    enforce_node_allocatable: Option<Vec<String>>,
}

/// A quantity in the config file, written as a string (`500m`) or a bare
/// number (`pid: 1000`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// A map of scalars as text.
fn texts(
    map: &std::collections::BTreeMap<String, Scalar>,
) -> std::collections::BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.text())).collect()
}

/// The settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub container_runtime_endpoint: String,
    pub pod_manifest_path: PathBuf,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub node_name: String,
    pub node_ip: String,
    pub status_address: SocketAddr,
    pub file_check_frequency: Duration,
    pub sync_frequency: Duration,
    pub relist_period: Duration,
    pub cgroup_root: String,
    /// `--cgroup-driver` (the runtime's RuntimeConfig may override it at start).
    pub cgroup_driver: crate::cgroups::Driver,
    pub log_format: LogFormat,
    /// The API server's kubeconfig; `None` runs static pods only.
    pub kubeconfig: Option<PathBuf>,
    /// The authenticated server's port (0: disabled) and address.
    pub port: u16,
    pub address: IpAddr,
    /// Its serving certificate and key (`None`: generated under `root_dir`).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA its clients' certificates must chain to (`None`: the kubeconfig's).
    pub client_ca_file: Option<PathBuf>,
    /// RuntimeClasses known locally: name → CRI runtime handler.
    pub runtime_classes: std::collections::BTreeMap<String, String>,
    /// `--max-pods`.
    pub max_pods: i64,
    /// `--system-reserved` and `--kube-reserved`.
    pub system_reserved: crate::allocatable::Reserved,
    pub kube_reserved: crate::allocatable::Reserved,
    /// `--eviction-hard`.
    pub eviction_hard: Vec<crate::allocatable::Threshold>,
    /// `--eviction-pressure-transition-period`.
    pub eviction_pressure_transition_period: Duration,
    /// `--eviction-soft` with `--eviction-soft-grace-period` (the hard and
    /// soft thresholds both carry `--eviction-minimum-reclaim`).
    pub eviction_soft: Vec<crate::allocatable::Threshold>,
    /// `--eviction-max-pod-grace-period`.
    pub eviction_max_pod_grace_period: i64,
    /// Test only: signals read from this file instead of the host.
    pub eviction_signals_file: Option<PathBuf>,
    /// `--runtime-events`: follow containerd's event service for task exits.
    pub runtime_events: bool,
    /// `--cpu-cfs-quota`.
    pub cpu_cfs_quota: bool,
    /// `--pod-max-pids` (-1: unlimited).
    pub pod_max_pids: i64,
    /// `--enforce-node-allocatable` holds `pods`.
    pub enforce_node_allocatable_pods: bool,
}

/// Parse a Go-style duration such as `20s`, `1m`, `1m30s`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

impl Config {
    /// Merge flags, the config file they name (if any), and the defaults.
    pub fn load(flags: Flags) -> anyhow::Result<Self> {
        let file = match &flags.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let dur = |flag: Option<Duration>,
                   file: &Option<String>,
                   key: &str,
                   default: Duration|
         -> anyhow::Result<Duration> {
            if let Some(d) = flag {
                return Ok(d);
            }
            match file {
                Some(s) => parse_duration(s).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {key}: {e}",
                        flags
                            .config
                            .as_deref()
                            .unwrap_or(Path::new("config"))
                            .display()
                    )
                }),
                None => Ok(default),
            }
        };
        let node_name = match flags.node_name.or(file.node_name) {
            Some(n) => n,
            None => hostname::get()
                .context("cannot read the hostname for --node-name")?
                .to_string_lossy()
                .into_owned(),
        }
        .to_lowercase();
        if node_name.is_empty() {
            bail!("--node-name: must not be empty");
        }
        // Soft thresholds, their grace periods and every threshold's minimum
        // reclaim (flags over the file, as the other settings).
        let soft = match (flags.eviction_soft.as_deref(), file.eviction_soft.as_ref()) {
            (Some(text), _) => crate::allocatable::parse_thresholds("--eviction-soft", text),
            (None, Some(map)) => {
                crate::allocatable::thresholds_from_map("evictionSoft", &texts(map))
            }
            (None, None) => Ok(Vec::new()),
        }
        .map_err(anyhow::Error::msg)?;
        let grace_periods = match (
            flags.eviction_soft_grace_period.as_deref(),
            file.eviction_soft_grace_period.clone(),
        ) {
            (Some(text), _) => {
                crate::allocatable::parse_signal_map("--eviction-soft-grace-period", text)
                    .map_err(anyhow::Error::msg)?
            }
            (None, Some(map)) => map,
            (None, None) => Default::default(),
        };
        let min_reclaims = match (
            flags.eviction_minimum_reclaim.as_deref(),
            file.eviction_minimum_reclaim.as_ref(),
        ) {
            (Some(text), _) => {
                crate::allocatable::parse_signal_map("--eviction-minimum-reclaim", text)
                    .map_err(anyhow::Error::msg)?
            }
            (None, Some(map)) => texts(map),
            (None, None) => Default::default(),
        };
        let mut config = Config {
            container_runtime_endpoint: flags
                .container_runtime_endpoint
                .or(file.container_runtime_endpoint)
                .unwrap_or_else(|| berth_cri::DEFAULT_ENDPOINT.to_string()),
            pod_manifest_path: flags
                .pod_manifest_path
                .or(file.pod_manifest_path)
                .unwrap_or_else(|| "/etc/berth/manifests".into()),
            root_dir: flags
                .root_dir
                .or(file.root_dir)
                .unwrap_or_else(|| "/var/lib/berth".into()),
            pod_logs_dir: flags
                .pod_logs_dir
                .or(file.pod_logs_dir)
                .unwrap_or_else(|| "/var/log/pods".into()),
            node_ip: flags
                .node_ip
                .or(file.node_ip)
                .unwrap_or_else(default_node_ip),
            node_name,
            status_address: flags
                .status_address
                .or(file.status_address)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10255))),
            file_check_frequency: dur(
                flags.file_check_frequency,
                &file.file_check_frequency,
                "fileCheckFrequency",
                Duration::from_secs(20),
            )?,
            sync_frequency: dur(
                flags.sync_frequency,
                &file.sync_frequency,
                "syncFrequency",
                Duration::from_secs(60),
            )?,
            relist_period: dur(
                flags.relist_period,
                &file.relist_period,
                "relistPeriod",
                Duration::from_secs(1),
            )?,
            cgroup_root: flags
                .cgroup_root
                .or(file.cgroup_root)
                .unwrap_or_else(|| "/kubepods".into()),
            cgroup_driver: match (flags.cgroup_driver, file.cgroup_driver.as_deref()) {
                (Some(driver), _) => driver,
                (None, Some(text)) => text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("cgroupDriver: {e}"))?,
                (None, None) => crate::cgroups::Driver::default(),
            },
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            kubeconfig: flags.kubeconfig.or(file.kubeconfig),
            port: flags.port.or(file.port).unwrap_or(10250),
            address: flags
                .address
                .or(file.address)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            tls_cert_file: flags.tls_cert_file.or(file.tls_cert_file),
            tls_private_key_file: flags.tls_private_key_file.or(file.tls_private_key_file),
            client_ca_file: flags.client_ca_file.or(file.client_ca_file),
            runtime_classes: runtime_classes(&flags.runtime_classes, file.runtime_classes)?,
            max_pods: flags
                .max_pods
                .or(file.max_pods)
                .unwrap_or(crate::allocatable::DEFAULT_MAX_PODS),
            system_reserved: reserved(
                "--system-reserved",
                flags.system_reserved.as_deref(),
                file.system_reserved.as_ref(),
            )?,
            kube_reserved: reserved(
                "--kube-reserved",
                flags.kube_reserved.as_deref(),
                file.kube_reserved.as_ref(),
            )?,
            eviction_hard: match (flags.eviction_hard.as_deref(), file.eviction_hard.as_ref()) {
                (Some(text), _) => crate::allocatable::parse_thresholds("--eviction-hard", text),
                (None, Some(map)) => {
                    crate::allocatable::thresholds_from_map("evictionHard", &texts(map))
                }
                (None, None) => crate::allocatable::parse_thresholds(
                    "--eviction-hard",
                    crate::allocatable::DEFAULT_EVICTION_HARD,
                ),
            }
            .map_err(anyhow::Error::msg)?,
            eviction_pressure_transition_period: dur(
                flags.eviction_pressure_transition_period,
                &file.eviction_pressure_transition_period,
                "evictionPressureTransitionPeriod",
                crate::eviction::DEFAULT_PRESSURE_TRANSITION_PERIOD,
            )?,
            eviction_soft: Vec::new(),
            eviction_max_pod_grace_period: flags
                .eviction_max_pod_grace_period
                .or(file.eviction_max_pod_grace_period)
                .unwrap_or(0),
            eviction_signals_file: flags.eviction_signals_file.clone(),
            runtime_events: flags.runtime_events.unwrap_or(true),
            cpu_cfs_quota: flags.cpu_cfs_quota.or(file.cpu_cfs_quota).unwrap_or(true),
            pod_max_pids: flags.pod_max_pids.or(file.pod_pids_limit).unwrap_or(-1),
            enforce_node_allocatable_pods: crate::allocatable::parse_enforce(
                "--enforce-node-allocatable",
                &flags
                    .enforce_node_allocatable
                    .or(file.enforce_node_allocatable)
                    .unwrap_or_else(|| vec!["pods".to_string()]),
            )
            .map_err(anyhow::Error::msg)?,
        };
        // Every threshold with its grace period and minimum reclaim; the hard
        // ones stay apart (allocatable subtracts them).
        let all = crate::allocatable::complete_thresholds(
            std::mem::take(&mut config.eviction_hard),
            soft,
            &grace_periods,
            &min_reclaims,
        )
        .map_err(anyhow::Error::msg)?;
        (config.eviction_hard, config.eviction_soft) = all.into_iter().partition(|t| t.is_hard());
        if config.pod_max_pids < -1 || config.pod_max_pids == 0 {
            bail!(
                "--pod-max-pids: {} must be -1 (unlimited) or at least 1",
                config.pod_max_pids
            );
        }
        if config.max_pods < 1 {
            bail!("--max-pods: {} must be at least 1", config.max_pods);
        }
        if config.tls_cert_file.is_some() != config.tls_private_key_file.is_some() {
            bail!("--tls-cert-file and --tls-private-key-file must be given together");
        }
        berth_cri::parse_endpoint(&config.container_runtime_endpoint)
            .context("--container-runtime-endpoint")?;
        for (name, path) in [
            ("--pod-manifest-path", &config.pod_manifest_path),
            ("--root-dir", &config.root_dir),
            ("--pod-logs-dir", &config.pod_logs_dir),
        ] {
            if !path.is_absolute() {
                bail!("{name}: {} must be an absolute path", path.display());
            }
        }
        if !config.cgroup_root.starts_with('/') {
            bail!(
                "--cgroup-root: {:?} must start with '/'",
                config.cgroup_root
            );
        }
        if let Err(e) = crate::cgroups::CgroupName::from_cgroupfs(&config.cgroup_root) {
            bail!("--cgroup-root: {:?}: {e}", config.cgroup_root);
        }
        if config.relist_period.is_zero() || config.sync_frequency.is_zero() {
            bail!("--relist-period and --sync-frequency must be greater than zero");
        }
        Ok(config)
    }
}

/// `--runtime-class NAME=HANDLER` flags over the file's `runtimeClasses`,
/// each checked as the API server checks a RuntimeClass (name a DNS
/// subdomain, handler a DNS label).
fn runtime_classes(
    flags: &[String],
    file: Option<std::collections::BTreeMap<String, String>>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = file.unwrap_or_default();
    for flag in flags {
        let Some((name, handler)) = flag.split_once('=') else {
            bail!("--runtime-class: {flag:?} is not NAME=HANDLER");
        };
        out.insert(name.to_string(), handler.to_string());
    }
    for (name, handler) in &out {
        if let Some(why) = berth_api::names::dns1123_subdomain_errors(name).first() {
            bail!("--runtime-class: name {name:?}: {why}");
        }
        if let Some(why) = berth_api::names::dns1123_label_errors(handler).first() {
            bail!("--runtime-class: handler {handler:?} of {name:?}: {why}");
        }
    }
    Ok(out)
}

/// A reservation flag over the config file's map.
fn reserved(
    flag: &str,
    text: Option<&str>,
    file: Option<&std::collections::BTreeMap<String, Scalar>>,
) -> anyhow::Result<crate::allocatable::Reserved> {
    let parsed = match (text, file) {
        (Some(text), _) => crate::allocatable::parse_reserved(flag, text),
        (None, Some(map)) => crate::allocatable::reserved_from_map(flag, &texts(map)),
        (None, None) => Ok(Default::default()),
    };
    parsed.map_err(anyhow::Error::msg)
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The source address of the default IPv4 route (what the kubelet reports as the
/// node IP when none is given), or 127.0.0.1.
fn default_node_ip() -> String {
    // Connecting a UDP socket sends nothing; it only asks the kernel which source
    // address it would route from. The destination is never contacted.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_kubelet() {
        let c = Config::load(Flags {
            node_name: Some("Node-A".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.container_runtime_endpoint, berth_cri::DEFAULT_ENDPOINT);
        assert_eq!(c.pod_manifest_path, PathBuf::from("/etc/berth/manifests"));
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.pod_logs_dir, PathBuf::from("/var/log/pods"));
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.status_address.to_string(), "127.0.0.1:10255");
        assert_eq!(c.file_check_frequency, Duration::from_secs(20));
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.kubeconfig, None);
        assert_eq!(c.port, 10250);
        assert_eq!(c.address.to_string(), "0.0.0.0");
        assert_eq!(c.client_ca_file, None);
    }

    #[test]
    fn soft_thresholds_grace_periods_and_minimum_reclaim() {
        let c = Config::load(Flags {
            node_name: Some("n".into()),
            eviction_hard: Some("memory.available<100Mi".into()),
            eviction_soft: Some("memory.available<1Gi,nodefs.available<20%".into()),
            eviction_soft_grace_period: Some("memory.available=1m30s,nodefs.available=2m".into()),
            eviction_minimum_reclaim: Some("memory.available=500Mi".into()),
            eviction_max_pod_grace_period: Some(20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.eviction_hard.len(), 1);
        assert!(c.eviction_hard[0].is_hard());
        assert_eq!(
            c.eviction_hard[0].min_reclaim,
            Some(crate::allocatable::ThresholdValue::Quantity(500 << 20))
        );
        assert_eq!(c.eviction_soft.len(), 2);
        assert_eq!(c.eviction_soft[0].grace_period, Duration::from_secs(90));
        assert_eq!(
            c.eviction_soft[0].min_reclaim, c.eviction_hard[0].min_reclaim,
            "the minimum reclaim is the signal's, hard or soft"
        );
        assert_eq!(c.eviction_max_pod_grace_period, 20);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "nodeName: n\nevictionSoft: {memory.available: 1Gi}\nevictionSoftGracePeriod: {memory.available: 30s}\nevictionMinimumReclaim: {memory.available: 10%}\n",
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.eviction_soft[0].grace_period, Duration::from_secs(30));
        assert_eq!(
            c.eviction_soft[0].min_reclaim,
            Some(crate::allocatable::ThresholdValue::Percentage(0.1))
        );

        for (flags, want) in [
            (
                Flags {
                    eviction_soft: Some("memory.available<1Gi".into()),
                    ..Default::default()
                },
                "--eviction-soft: grace period must be specified for the soft eviction threshold memory.available",
            ),
            (
                Flags {
                    eviction_soft_grace_period: Some("memory.free=1m".into()),
                    ..Default::default()
                },
                "--eviction-soft-grace-period: unsupported eviction signal \"memory.free\"",
            ),
            (
                Flags {
                    eviction_soft_grace_period: Some("memory.available".into()),
                    ..Default::default()
                },
                "--eviction-soft-grace-period: invalid item \"memory.available\"",
            ),
            (
                Flags {
                    eviction_minimum_reclaim: Some("memory.available=-1Mi".into()),
                    ..Default::default()
                },
                "--eviction-minimum-reclaim: memory.available: minimum reclaim must be positive: -1Mi",
            ),
            (
                Flags {
                    eviction_minimum_reclaim: Some("nodefs.available=120%".into()),
                    ..Default::default()
                },
                "--eviction-minimum-reclaim: nodefs.available: minimum reclaim percentage must be >= 0% and <= 100%: 120%",
            ),
        ] {
            let err = Config::load(Flags {
                node_name: Some("n".into()),
                ..flags
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn reservations_eviction_and_max_pods_from_flags_and_file() {
        let c = Config::load(Flags {
            node_name: Some("n".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_pods, 110);
        assert!(c.cpu_cfs_quota && c.enforce_node_allocatable_pods);
        assert_eq!(c.pod_max_pids, -1);
        assert_eq!(c.eviction_hard.len(), 4, "the kubelet's four defaults");
        assert_eq!(c.system_reserved, Default::default());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "nodeName: n\nmaxPods: 20\nsystemReserved: {cpu: 250m, memory: 128Mi}\nkubeReserved: {pid: 100}\nevictionHard: {memory.available: 50Mi}\ncpuCFSQuota: false\npodPidsLimit: 100\nenforceNodeAllocatable: [none]\n",
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(path.clone()),
            kube_reserved: Some("cpu=100m".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_pods, 20);
        assert!(!c.cpu_cfs_quota && !c.enforce_node_allocatable_pods);
        assert_eq!(c.pod_max_pids, 100);
        assert_eq!(c.system_reserved.resources.milli_cpu, 250);
        assert_eq!(c.system_reserved.resources.memory, 128 << 20);
        // The flag wins over the file, whole.
        assert_eq!(c.kube_reserved.resources.milli_cpu, 100);
        assert_eq!(c.kube_reserved.pids, 0);
        assert_eq!(c.eviction_hard.len(), 1);
        // Empty: no threshold at all.
        let c = Config::load(Flags {
            node_name: Some("n".into()),
            eviction_hard: Some(String::new()),
            ..Default::default()
        })
        .unwrap();
        assert!(c.eviction_hard.is_empty());

        for (flags, want) in [
            (
                Flags {
                    max_pods: Some(0),
                    ..Default::default()
                },
                "--max-pods: 0 must be at least 1",
            ),
            (
                Flags {
                    pod_max_pids: Some(0),
                    ..Default::default()
                },
                "--pod-max-pids: 0 must be -1 (unlimited) or at least 1",
            ),
            (
                Flags {
                    enforce_node_allocatable: Some(vec!["pods".into(), "kube-reserved".into()]),
                    ..Default::default()
                },
                "--enforce-node-allocatable: \"kube-reserved\" needs --kube-reserved-cgroup",
            ),
            (
                Flags {
                    system_reserved: Some("gpu=1".into()),
                    ..Default::default()
                },
                "--system-reserved: cannot reserve \"gpu\" resource",
            ),
            (
                Flags {
                    eviction_hard: Some("memory.available<lots".into()),
                    ..Default::default()
                },
                "--eviction-hard: memory.available: \"lots\"",
            ),
        ] {
            let flags = Flags {
                node_name: Some("n".into()),
                ..flags
            };
            let e = Config::load(flags).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        std::fs::write(&path, "nodeName: n\nsystemReserved: {cpu: -1}\n").unwrap();
        let e = Config::load(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot be negative"), "{e}");
    }

    #[test]
    fn runtime_classes_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "nodeName: n\nruntimeClasses: {gvisor: runsc, fast: crun}\n",
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(path.clone()),
            runtime_classes: vec!["fast=runc".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.runtime_classes.get("fast").map(String::as_str),
            Some("runc")
        );
        assert_eq!(
            c.runtime_classes.get("gvisor").map(String::as_str),
            Some("runsc")
        );
        for bad in ["nohandler", "x=Bad_Handler", "Bad=runc"] {
            let err = Config::load(Flags {
                node_name: Some("n".into()),
                runtime_classes: vec![bad.into()],
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                err.to_string().starts_with("--runtime-class"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn authenticated_server_keys_are_the_kubelets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "nodeName: n\nport: 11250\naddress: 127.0.0.1\ntlsCertFile: /p/c.crt\ntlsPrivateKeyFile: /p/c.key\nclientCAFile: /p/ca.crt\n",
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(path.clone()),
            port: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.address.to_string(), "127.0.0.1");
        assert_eq!(c.tls_cert_file, Some(PathBuf::from("/p/c.crt")));
        assert_eq!(c.tls_private_key_file, Some(PathBuf::from("/p/c.key")));
        assert_eq!(c.client_ca_file, Some(PathBuf::from("/p/ca.crt")));
        std::fs::write(&path, "nodeName: n\ntlsCertFile: /p/c.crt\n").unwrap();
        let err = Config::load(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--tls-private-key-file"), "{err}");
    }

    #[test]
    fn kubeconfig_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "kubeconfig: /etc/berth/kubeconfig\nnodeName: n\n").unwrap();
        let c = Config::load(Flags {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/berth/kubeconfig")));
        let c = Config::load(Flags {
            config: Some(path),
            kubeconfig: Some("/tmp/k".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/tmp/k")));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "podManifestPath: /srv/manifests\nfileCheckFrequency: 5s\nstatusAddress: 127.0.0.1:9999\nlogFormat: json\nnodeName: file-node\n",
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(path),
            status_address: Some("127.0.0.1:1234".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.pod_manifest_path, PathBuf::from("/srv/manifests"));
        assert_eq!(c.file_check_frequency, Duration::from_secs(5));
        assert_eq!(c.status_address.to_string(), "127.0.0.1:1234");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.node_name, "file-node");
    }

    #[test]
    fn bad_file_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "syncFrequency: soon\n").unwrap();
        let err = Config::load(Flags {
            config: Some(path.clone()),
            node_name: Some("n".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("config.yaml") && err.contains("syncFrequency"),
            "{err}"
        );

        std::fs::write(&path, "podManifestPat: /x\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(Flags {
                config: Some(path),
                node_name: Some("n".into()),
                ..Default::default()
            })
            .unwrap_err()
        );
        assert!(err.contains("podManifestPat"), "{err}");
    }

    #[test]
    fn cgroup_driver_from_flag_or_file() {
        let c = Config::load(Flags {
            node_name: Some("n".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.cgroup_driver, crate::cgroups::Driver::Cgroupfs);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "nodeName: n\ncgroupDriver: systemd\n").unwrap();
        let c = Config::load(Flags {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.cgroup_driver, crate::cgroups::Driver::Systemd);
        // The flag wins over the file.
        let flags = Flags::try_parse_from([
            "berth-agent",
            "--config",
            path.to_str().unwrap(),
            "--cgroup-driver",
            "cgroupfs",
        ])
        .unwrap();
        assert_eq!(
            Config::load(flags).unwrap().cgroup_driver,
            crate::cgroups::Driver::Cgroupfs
        );

        let e = Flags::try_parse_from(["berth-agent", "--cgroup-driver", "systemd2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid cgroup driver \"systemd2\""), "{e}");
        std::fs::write(&path, "nodeName: n\ncgroupDriver: cgroupfs2\n").unwrap();
        let e = Config::load(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("cgroupDriver: invalid cgroup driver \"cgroupfs2\""),
            "{e}"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }
}
