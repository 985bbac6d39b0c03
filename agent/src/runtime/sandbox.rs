//! The pod sandbox config, shaped as the kubelet's `generatePodSandboxConfig`.

use std::collections::HashMap;

use berth_cri::api;
use k8s_openapi::api::core::v1::Pod;

use super::RuntimeManager;
use crate::observed::keys;

/// The kubelet's limit on hostnames (a DNS label).
const HOSTNAME_MAX_LEN: usize = 63;

impl RuntimeManager {
    /// The RunPodSandbox config of `pod` for sandbox attempt `attempt`.
    pub fn sandbox_config(&self, pod: &Pod, attempt: u32) -> api::PodSandboxConfig {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);

        let mut labels: HashMap<String, String> = meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        labels.insert(keys::POD_NAME.into(), name.clone());
        labels.insert(keys::POD_NAMESPACE.into(), namespace.clone());
        labels.insert(keys::POD_UID.into(), uid.clone());
        let annotations: HashMap<String, String> = meta
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();

        // Host-network pods keep the node's hostname, as with the kubelet.
        let hostname = if host_network {
            String::new()
        } else {
            let mut h = spec.hostname.clone().unwrap_or_else(|| name.clone());
            if h.len() > HOSTNAME_MAX_LEN {
                h.truncate(HOSTNAME_MAX_LEN);
                h = h.trim_end_matches(['-', '.']).to_string();
            }
            h
        };

        let mut port_mappings = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let host_port = p.host_port.unwrap_or(0);
                if host_port <= 0 {
                    continue;
                }
                port_mappings.push(api::PortMapping {
                    protocol: protocol(p.protocol.as_deref()) as i32,
                    container_port: p.container_port,
                    host_port,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }

        let psc = spec.security_context.clone().unwrap_or_default();
        let privileged = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| {
                c.security_context
                    .as_ref()
                    .and_then(|s| s.privileged)
                    .unwrap_or(false)
            });
        let namespace_options = namespace_options(&spec);
        let sysctls: HashMap<String, String> = psc
            .sysctls
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect();

        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: namespace.clone(),
                attempt,
            }),
            hostname,
            log_directory: self
                .pod_log_dir(&namespace, &name, &uid)
                .to_string_lossy()
                .into_owned(),
            dns_config: Some(dns_config(&spec)),
            port_mappings,
            labels,
            annotations,
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: self.pod_cgroup_parent(pod),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options),
                    run_as_user: psc.run_as_user.map(|value| api::Int64Value { value }),
                    run_as_group: psc.run_as_group.map(|value| api::Int64Value { value }),
                    supplemental_groups: super::container::supplemental_groups(&psc),
                    privileged,
                    seccomp: Some(self.seccomp_profile(pod, None)),
                    ..Default::default()
                }),
                sysctls,
                ..Default::default()
            }),
            windows: None,
        }
    }

    /// The pod's cgroup as the runtime is given it, as the kubelet lays it
    /// out: `<root>/pod<uid>` for Guaranteed, `<root>/burstable/pod<uid>`,
    /// `<root>/besteffort/pod<uid>` (cgroupfs spelling; slices with the
    /// systemd driver). A pod whose cgroup cannot be named never gets this
    /// far: its sandbox is refused when the cgroup is made.
    pub fn pod_cgroup_parent(&self, pod: &Pod) -> String {
        self.cgroups.cgroup_parent(pod).unwrap_or_default()
    }
}

/// CRI protocol of a Kubernetes port protocol name (TCP when unset).
pub fn protocol(name: Option<&str>) -> api::Protocol {
    match name {
        Some("UDP") => api::Protocol::Udp,
        Some("SCTP") => api::Protocol::Sctp,
        _ => api::Protocol::Tcp,
    }
}

/// Which namespaces the pod shares with the node.
pub fn namespace_options(spec: &k8s_openapi::api::core::v1::PodSpec) -> api::NamespaceOption {
    let node_or = |host: Option<bool>, other: api::NamespaceMode| {
        if host.unwrap_or(false) {
            api::NamespaceMode::Node as i32
        } else {
            other as i32
        }
    };
    let pid_mode = if spec.share_process_namespace.unwrap_or(false) {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    api::NamespaceOption {
        network: node_or(spec.host_network, api::NamespaceMode::Pod),
        pid: node_or(spec.host_pid, pid_mode),
        ipc: node_or(spec.host_ipc, api::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// DNS settings for the sandbox. With no cluster DNS on a standalone node, the
/// kubelet falls back from `ClusterFirst` to the node's resolv.conf (`Default`);
/// `None` takes only `spec.dnsConfig`; `spec.dnsConfig` is merged in every case.
pub fn dns_config(spec: &k8s_openapi::api::core::v1::PodSpec) -> api::DnsConfig {
    let mut dns = if spec.dns_policy.as_deref() == Some("None") {
        api::DnsConfig::default()
    } else {
        host_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    };
    if let Some(extra) = &spec.dns_config {
        for ns in extra.nameservers.iter().flatten() {
            if !dns.servers.contains(ns) {
                dns.servers.push(ns.clone());
            }
        }
        for s in extra.searches.iter().flatten() {
            if !dns.searches.contains(s) {
                dns.searches.push(s.clone());
            }
        }
        for o in extra.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            if !opt.is_empty() && !dns.options.contains(&opt) {
                dns.options.push(opt);
            }
        }
    }
    dns
}

/// Parse a resolv.conf into CRI DNS settings (the kubelet's `parseResolvConf`).
pub fn host_resolv_conf(text: &str) -> api::DnsConfig {
    let mut dns = api::DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => dns.servers.extend(fields.next().map(String::from)),
            // The last search line wins, as in resolv.conf(5).
            Some("search") => dns.searches = fields.map(String::from).collect(),
            Some("options") => dns.options.extend(fields.map(String::from)),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let dns = host_resolv_conf(
            "# comment\nnameserver 10.0.0.2\nnameserver 10.0.0.3 # x\nsearch a.example b.example\noptions ndots:2 edns0\n",
        );
        assert_eq!(dns.servers, vec!["10.0.0.2", "10.0.0.3"]);
        assert_eq!(dns.searches, vec!["a.example", "b.example"]);
        assert_eq!(dns.options, vec!["ndots:2", "edns0"]);
    }

    #[test]
    fn host_namespaces() {
        let spec = k8s_openapi::api::core::v1::PodSpec {
            host_network: Some(true),
            share_process_namespace: Some(true),
            ..Default::default()
        };
        let ns = namespace_options(&spec);
        assert_eq!(ns.network, api::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, api::NamespaceMode::Pod as i32);
        assert_eq!(ns.ipc, api::NamespaceMode::Pod as i32);
    }
}
