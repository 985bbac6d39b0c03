//! The CRI mounts of one container, as the kubelet's `makeMounts`
//! (`pkg/kubelet/kubelet_pods.go`) and the termination-message mount of
//! `kuberuntime_container.go`, plus the managed `/etc/hosts`.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_cri::api;
use k8s_openapi::api::core::v1::{Container, HostAlias, Pod};
use nix::libc;

use crate::error::{Error, Result};
use crate::fsutil::{self, ensure_dir, validate_component, validate_no_backsteps};
use crate::mount::mounts_under;
use crate::volume::{PodVolumes, VolumeManager};

/// Where containers see the hosts file.
pub const ETC_HOSTS_PATH: &str = "/etc/hosts";
/// The default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The kubelet's `MaxContainerTerminationMessageLength` (4 KiB).
pub const MAX_TERMINATION_MESSAGE_LENGTH: usize = 4096;

const MANAGED_HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const MANAGED_HOSTS_HEADER_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";

impl VolumeManager {
    /// The CRI mounts for the `volumeMounts` of `container`, the
    /// `container_index`-th entry of `field_prefix` (`spec.containers` or
    /// `spec.initContainers`), whose volumes `vols` were set up by
    /// [`set_up_pod`](Self::set_up_pod).
    ///
    /// Per mount, as the kubelet: the volume must exist (error on
    /// `…volumeMounts[i].name`); `subPath` must be relative without `..`, is
    /// created inside the volume if missing (directories with the volume's
    /// mode, never following a symlink out of it), and is then bind-mounted
    /// from an `O_PATH` descriptor to `<pod-dir>/volume-subpaths/<volume>/<container>/<i>`,
    /// which becomes the host path, so the container cannot swap in a symlink
    /// between the check and the runtime's mount (CVE-2017-1002101);
    /// `mountPropagation` maps None/unset → PRIVATE, HostToContainer →
    /// HOST_TO_CONTAINER, Bidirectional → BIDIRECTIONAL (privileged
    /// containers only); `recursiveReadOnly: Enabled` needs `readOnly` and no
    /// propagation and sets `recursive_read_only` (the runtime must support
    /// it), `IfPossible` is treated as `Disabled`; `subPathExpr` is unsupported.
    ///
    /// The `/etc/hosts` and termination-message mounts are separate:
    /// [`etc_hosts_mount`], [`termination_message_mount`].
    pub fn make_mounts(
        &self,
        container: &Container,
        container_index: usize,
        field_prefix: &str,
        vols: &PodVolumes,
    ) -> Result<Vec<api::Mount>> {
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|sc| sc.privileged)
            .unwrap_or(false);
        let mut mounts: Vec<api::Mount> = Vec::new();
        for (i, vm) in container.volume_mounts.iter().flatten().enumerate() {
            let field = format!("{field_prefix}[{container_index}].volumeMounts[{i}]");
            if vm.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
                return Err(Error::Unsupported {
                    field: format!("{field}.subPathExpr"),
                    what: "subPathExpr".into(),
                });
            }
            let Some(vol) = vols.get(&vm.name) else {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!(
                        "volume {:?} not found in spec.volumes (cannot mount it into container {:?})",
                        vm.name, container.name
                    ),
                ));
            };
            if vm.mount_path.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.mountPath"),
                    "must not be empty",
                ));
            }
            let container_path = if vm.mount_path.starts_with('/') {
                vm.mount_path.clone()
            } else {
                format!("/{}", vm.mount_path)
            };
            if mounts.iter().any(|m| m.container_path == container_path) {
                return Err(Error::invalid(
                    format!("{field}.mountPath"),
                    format!("{container_path:?} must be unique"),
                ));
            }
            let propagation = translate_mount_propagation(
                &format!("{field}.mountPropagation"),
                vm.mount_propagation.as_deref(),
            )?;
            if propagation == api::MountPropagation::PropagationBidirectional && !privileged {
                return Err(Error::invalid(
                    format!("{field}.mountPropagation"),
                    "Bidirectional mount propagation is available only to privileged containers",
                ));
            }
            let readonly = vm.read_only.unwrap_or(false);
            let recursive_read_only = match vm.recursive_read_only.as_deref() {
                None | Some("") | Some("Disabled") | Some("IfPossible") => false,
                Some("Enabled") => {
                    if !readonly {
                        return Err(Error::invalid(
                            format!("{field}.recursiveReadOnly"),
                            "Enabled requires readOnly: true",
                        ));
                    }
                    if propagation != api::MountPropagation::PropagationPrivate {
                        return Err(Error::invalid(
                            format!("{field}.recursiveReadOnly"),
                            "Enabled requires mountPropagation None",
                        ));
                    }
                    true
                }
                Some(other) => {
                    return Err(Error::invalid(
                        format!("{field}.recursiveReadOnly"),
                        format!("unknown mode {other:?}"),
                    ));
                }
            };

            let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                None => vol.host_path.clone(),
                Some(sub_path) => {
                    let sub_field = format!("{field}.subPath");
                    if sub_path.starts_with('/') {
                        return Err(Error::invalid(
                            sub_field,
                            format!("{sub_path:?} must not be an absolute path"),
                        ));
                    }
                    validate_no_backsteps(&sub_field, sub_path)?;
                    self.prepare_subpath(
                        &vol.host_path,
                        sub_path,
                        &vols.pod_dir,
                        &vm.name,
                        &container.name,
                        i,
                    )?
                }
            };

            mounts.push(api::Mount {
                container_path,
                host_path: host_path.to_string_lossy().into_owned(),
                readonly,
                selinux_relabel: vol.selinux_relabel,
                propagation: propagation as i32,
                recursive_read_only,
                ..Default::default()
            });
        }
        Ok(mounts)
    }

    /// The kubelet's `SafeMakeDir` + `PrepareSafeSubpath`: returns the bind
    /// mount of the resolved subpath under `volume-subpaths`.
    fn prepare_subpath(
        &self,
        volume_path: &Path,
        sub_path: &str,
        pod_dir: &Path,
        volume_name: &str,
        container_name: &str,
        index: usize,
    ) -> Result<PathBuf> {
        validate_component("volumeMounts[].name", volume_name)?;
        validate_component("container name", container_name)?;
        let base = fsutil::canonical(volume_path)?;
        let rel = Path::new(sub_path);
        let joined = base.join(rel);

        // Create the subpath now: if the runtime auto-created it later it would
        // get the wrong mode. Directories get the volume's permissions.
        if fs::metadata(&joined).is_err() {
            let perm = fs::metadata(&base)
                .map_err(Error::io("stat", &base))?
                .permissions()
                .mode()
                & 0o777;
            fsutil::safe_make_dir(&base, rel, sub_path, perm)?;
        }

        let resolved = fsutil::canonical(&joined)?;
        let Ok(inside) = resolved.strip_prefix(&base) else {
            return Err(Error::SubPathEscape {
                volume: volume_path.to_path_buf(),
                sub_path: sub_path.to_string(),
                resolved,
            });
        };
        let fd = fsutil::open_beneath(&base, inside)?;
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| fsutil::file_type(&st) == libc::S_IFDIR)
            .map_err(Error::errno("stat", &resolved))?;

        let target = pod_dir
            .join("volume-subpaths")
            .join(volume_name)
            .join(container_name)
            .join(index.to_string());
        if let Some(parent) = target.parent() {
            ensure_dir(parent, 0o750)?;
        }
        // A previous start of this container left its bind here: replace it,
        // the subpath may have changed since.
        if let Ok(meta) = fs::symlink_metadata(&target) {
            let real = fsutil::canonical(&target)?;
            let table = fsutil::mount_table(self.mounter().as_ref())?;
            for mount_point in mounts_under(&table, &real) {
                self.mounter()
                    .unmount(&mount_point)
                    .map_err(|source| Error::Unmount {
                        path: mount_point.clone(),
                        source,
                    })?;
            }
            if meta.is_dir() != is_dir || meta.file_type().is_symlink() {
                if meta.is_dir() {
                    fs::remove_dir(&target).map_err(Error::io("remove", &target))?;
                } else {
                    fs::remove_file(&target).map_err(Error::io("remove", &target))?;
                }
            }
        }
        if fs::symlink_metadata(&target).is_err() {
            if is_dir {
                fs::DirBuilder::new()
                    .create(&target)
                    .map_err(Error::io("create directory", &target))?;
            } else {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o640)
                    .open(&target)
                    .map_err(Error::io("create file", &target))?;
            }
        }
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        self.mounter()
            .bind(&source, &target)
            .map_err(|err| Error::Mount {
                path: target.clone(),
                what: format!("bind of {} ({})", resolved.display(), source.display()),
                source: err,
            })?;
        Ok(target)
    }
}

/// The kubelet's `translateMountPropagation`; `field` names the spec field in errors.
pub fn translate_mount_propagation(
    field: &str,
    mode: Option<&str>,
) -> Result<api::MountPropagation> {
    match mode {
        None | Some("None") => Ok(api::MountPropagation::PropagationPrivate),
        Some("HostToContainer") => Ok(api::MountPropagation::PropagationHostToContainer),
        Some("Bidirectional") => Ok(api::MountPropagation::PropagationBidirectional),
        Some(other) => Err(Error::invalid(
            field,
            format!("invalid MountPropagation mode: {other:?}"),
        )),
    }
}

/// Create a fresh termination-message file for a new instance of `container`,
/// `<pod_dir>/containers/<name>/<8 random hex digits>` (directory 0750, file
/// 0666 regardless of umask), and the mount of it at `terminationMessagePath`
/// (`/dev/termination-log` when unset or empty), as the kubelet does for every
/// container start. The file stays until the pod directory is removed; read it
/// back after exit with [`read_termination_message`] (its host path is the
/// mount's `host_path`, also reported in the CRI `ContainerStatus.mounts`).
pub fn termination_message_mount(container: &Container, pod_dir: &Path) -> Result<api::Mount> {
    validate_component("container name", &container.name)?;
    let container_path = container
        .termination_message_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_string());
    let container_path = if container_path.starts_with('/') {
        container_path
    } else {
        format!("/{container_path}")
    };
    let dir = pod_dir.join("containers").join(&container.name);
    ensure_dir(&dir, 0o750)?;
    let mut attempts = 0;
    let path = loop {
        let path = dir.join(format!("{:08x}", random_u32()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&path)
        {
            Ok(_) => break path,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(Error::io("create file", &path)(e)),
        }
    };
    // create() is subject to the umask; the kubelet chmods to 0666.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
        .map_err(Error::io("chmod", &path))?;
    Ok(api::Mount {
        container_path,
        host_path: path.to_string_lossy().into_owned(),
        selinux_relabel: selinux_enabled(),
        ..Default::default()
    })
}

/// The last `max_bytes` bytes of a termination-message file (the kubelet's
/// `tail.ReadAtMost` with [`MAX_TERMINATION_MESSAGE_LENGTH`]), lossily decoded
/// as UTF-8. `None` when the file does not exist (the kubelet then falls back
/// to the log tail if the policy says so). Symlinks are not followed.
pub fn read_termination_message(host_path: &Path, max_bytes: usize) -> Result<Option<String>> {
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(host_path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", host_path)(e)),
    };
    let meta = file.metadata().map_err(Error::io("stat", host_path))?;
    if !meta.is_file() {
        return Err(Error::Io {
            op: "read",
            path: host_path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let max = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    let start = meta.len().saturating_sub(max);
    file.seek(SeekFrom::Start(start))
        .map_err(Error::io("seek", host_path))?;
    let mut data = Vec::new();
    file.take(max)
        .read_to_end(&mut data)
        .map_err(Error::io("read", host_path))?;
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

/// The pod's hostname and, with `spec.subdomain`, its domain
/// `<subdomain>.<namespace>.svc.<cluster_domain>` (the kubelet's
/// `GeneratePodHostNameAndDomain`): `spec.hostname` or else the pod name,
/// truncated to 63 characters.
pub fn pod_hostname_and_domain(
    pod: &Pod,
    cluster_domain: &str,
) -> Result<(String, Option<String>)> {
    let spec = pod.spec.as_ref();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let hostname = match spec
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
    {
        Some(h) => {
            check_dns1123_label("spec.hostname", h)?;
            h.to_string()
        }
        None if pod_name.is_empty() => {
            return Err(Error::invalid("metadata.name", "must not be empty"));
        }
        None => pod_name.clone(),
    };
    let hostname = if hostname.len() > 63 {
        let truncated = hostname
            .get(..63)
            .unwrap_or(&hostname)
            .trim_end_matches(['-', '.']);
        if truncated.is_empty() {
            return Err(Error::invalid(
                "metadata.name",
                format!("hostname {hostname:?} is invalid"),
            ));
        }
        truncated.to_string()
    } else {
        hostname
    };
    let domain = match spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) => {
            check_dns1123_label("spec.subdomain", sub)?;
            let ns = pod
                .metadata
                .namespace
                .as_deref()
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default");
            Some(format!("{sub}.{ns}.svc.{cluster_domain}"))
        }
        None => None,
    };
    Ok((hostname, domain))
}

/// RFC 1123 label (`berth_api::names`), or an error naming the field.
fn check_dns1123_label(field: &str, value: &str) -> Result<()> {
    if berth_api::names::is_dns1123_label(value) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{value:?} is not a valid DNS label"),
        ))
    }
}

/// Write `<pod_dir>/etc-hosts` and return its mount at `/etc/hosts` for
/// `container`, as the kubelet's `makeHostsMount`/`ensureHostsFile`:
///
/// - not mounted (`None`) when the pod is on the pod network and has no IP
///   yet, or when the container mounts a volume at exactly `/etc/hosts`;
/// - `hostNetwork` pods get the node's `/etc/hosts` under a
///   `# Kubernetes-managed hosts file (host network).` header;
/// - others get the managed file: localhost and IPv6 entries, then
///   `<ip>\t<hostname>` per pod IP, or `<ip>\t<hostname>.<domain>\t<hostname>`
///   with `spec.subdomain` (see [`pod_hostname_and_domain`]);
/// - both end with the `spec.hostAliases` entries.
///
/// The file is rewritten in place (0644) on each call, so every container
/// start sees current pod IPs. The mount is read-write with SELinux relabel,
/// as the kubelet's.
pub fn etc_hosts_mount(
    pod: &Pod,
    container: &Container,
    pod_dir: &Path,
    pod_ips: &[String],
    cluster_domain: &str,
) -> Result<Option<api::Mount>> {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mounts_own = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == ETC_HOSTS_PATH);
    if (pod_ips.is_empty() && !host_network) || mounts_own {
        return Ok(None);
    }
    let aliases = spec
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    let content = if host_network {
        node_hosts_file_content(Path::new(ETC_HOSTS_PATH), aliases)?
    } else {
        let (hostname, domain) = pod_hostname_and_domain(pod, cluster_domain)?;
        managed_hosts_file_content(pod_ips, &hostname, domain.as_deref(), aliases)
    };
    ensure_dir(pod_dir, 0o750)?;
    let path = pod_dir.join("etc-hosts");
    write_in_place(&path, content.as_bytes(), 0o644)?;
    Ok(Some(api::Mount {
        container_path: ETC_HOSTS_PATH.into(),
        host_path: path.to_string_lossy().into_owned(),
        readonly: false,
        selinux_relabel: true,
        ..Default::default()
    }))
}

/// The kubelet's `managedHostsFileContent`.
pub(crate) fn managed_hosts_file_content(
    pod_ips: &[String],
    hostname: &str,
    domain: Option<&str>,
    aliases: &[HostAlias],
) -> String {
    let mut out = String::from(MANAGED_HOSTS_HEADER);
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        match domain {
            Some(domain) => out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    out.push_str(&host_aliases_entries(aliases));
    out
}

/// The kubelet's `nodeHostsFileContent`.
pub(crate) fn node_hosts_file_content(hosts: &Path, aliases: &[HostAlias]) -> Result<String> {
    let node = fs::read(hosts).map_err(Error::io("read", hosts))?;
    let mut out = String::from(MANAGED_HOSTS_HEADER_HOST_NETWORK);
    out.push_str(&String::from_utf8_lossy(&node));
    out.push_str(&host_aliases_entries(aliases));
    Ok(out)
}

/// The kubelet's `hostsEntriesFromHostAliases`.
fn host_aliases_entries(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
        out.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    out
}

/// Truncate and rewrite `path` (not following a symlink there), then force `mode`.
fn write_in_place(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(Error::io("open", path))?;
    file.write_all(content).map_err(Error::io("write", path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(Error::io("chmod", path))
}

/// Whether SELinux is enabled on the host (selinuxfs is mounted).
fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Four random bytes from the kernel (falling back to time and pid bits,
/// which is enough: the name only has to differ from earlier files).
fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
    {
        return u32::from_ne_bytes(buf);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests;
