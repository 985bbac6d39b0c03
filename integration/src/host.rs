//! Host state for assertions and cleanup: mounts, processes, links, cgroups.
//!
//! Cleanup only ever touches things that reference one instance directory
//! (by path) or carry its own names (bridge, cgroup parent); processes are
//! found through `/proc` and signalled by PID, never by name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::Digest as _;

/// One entry of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent_id: u32,
    /// The path inside the mounted filesystem that is mounted here.
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undo the octal escapes (`\040` for a space, …) the kernel uses in mountinfo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(oct) = std::str::from_utf8(&bytes[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All mounts of this mount namespace, in mount order.
pub fn mounts() -> anyhow::Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 2 {
            continue;
        }
        out.push(Mount {
            id: pre[0].parse().unwrap_or(0),
            parent_id: pre[1].parse().unwrap_or(0),
            root: unescape_mountinfo(pre[3]),
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            fs_type: post[0].to_string(),
            source: unescape_mountinfo(post[1]),
        });
    }
    Ok(out)
}

/// Mounts whose mount point is `path` or below it.
pub fn mounts_under(path: &Path) -> anyhow::Result<Vec<Mount>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(path))
        .collect())
}

/// Lazily unmount everything at or below `path`, deepest first (and newest
/// first among mounts stacked on one point).
pub(crate) fn unmount_all_under(path: &Path) -> anyhow::Result<()> {
    for _ in 0..10 {
        let mut ms = mounts_under(path)?;
        if ms.is_empty() {
            return Ok(());
        }
        ms.sort_by(|a, b| {
            let da = a.mount_point.components().count();
            let db = b.mount_point.components().count();
            db.cmp(&da).then(b.id.cmp(&a.id))
        });
        for m in &ms {
            match nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => eprintln!("berth-integration: umount {}: {e}", m.mount_point.display()),
            }
        }
    }
    let left = mounts_under(path)?;
    if left.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "mounts left under {}: {:?}",
            path.display(),
            left.iter().map(|m| &m.mount_point).collect::<Vec<_>>()
        )
    }
}

/// A process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub cmdline: Vec<String>,
}

impl Process {
    /// For a containerd shim: the socket it listens on (see [`kill_processes_under`]).
    pub fn shim_socket(&self) -> Option<PathBuf> {
        shim_socket(&self.cmdline)
    }

    fn is_gone(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // The state is the field after the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => true,
        }
    }
}

fn references(arg: &str, path: &str, prefix: &str) -> bool {
    arg.contains(prefix)
        || arg == path
        || arg.ends_with(&format!("={path}"))
        || arg.ends_with(&format!("//{path}"))
}

/// The IDs of containers and sandboxes a containerd with its state in
/// `<dir>/state` has tasks for (its shim and runc state directories).
fn task_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for base in ["state/io.containerd.runtime.v2.task", "state/runc"] {
        let Ok(namespaces) = std::fs::read_dir(dir.join(base)) else {
            continue;
        };
        for ns in namespaces.flatten() {
            if let Ok(tasks) = std::fs::read_dir(ns.path()) {
                ids.extend(
                    tasks
                        .flatten()
                        .map(|t| t.file_name().to_string_lossy().into_owned())
                        .filter(|id| id.len() >= 12),
                );
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Processes that belong to the instance directory `path`:
/// - a command-line argument names it or something below it (containerd,
///   shims, the agent);
/// - their cgroup is named after a container or sandbox ID that a containerd
///   with its state under `path` has a task for (container processes — their
///   root is in another mount namespace, so `/proc/<pid>/root` cannot tell);
/// - or they descend from one of those (processes a shim or container started).
pub fn processes_under(path: &Path) -> anyhow::Result<Vec<Process>> {
    let path_s = path.to_string_lossy().trim_end_matches('/').to_string();
    let prefix = format!("{path_s}/");
    let ids = task_ids(path);
    let me = std::process::id() as i32;
    let mut all = Vec::new();
    let mut matched = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let by_args = cmdline.iter().any(|a| references(a, &path_s, &prefix));
        let by_cgroup = !ids.is_empty()
            && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|cg| {
                    cg.lines().any(|l| {
                        l.rsplit(':')
                            .next()
                            .map(|p| {
                                p.split('/')
                                    .any(|seg| ids.iter().any(|id| seg.contains(id.as_str())))
                            })
                            .unwrap_or(false)
                    })
                })
                .unwrap_or(false);
        if by_args || by_cgroup {
            matched.insert(pid);
        }
        all.push(Process { pid, ppid, cmdline });
    }
    // Add descendants until nothing changes.
    loop {
        let before = matched.len();
        for p in &all {
            if matched.contains(&p.ppid) {
                matched.insert(p.pid);
            }
        }
        if matched.len() == before {
            break;
        }
    }
    Ok(all
        .into_iter()
        .filter(|p| matched.contains(&p.pid) && !p.is_gone())
        .collect())
}

/// SIGKILL every process [`processes_under`] `path` and wait (up to 5 s) for
/// them to die. Shims killed this way leave their socket in
/// `/run/containerd/s`; those are removed too.
pub(crate) fn kill_processes_under(path: &Path) -> anyhow::Result<Vec<Process>> {
    let procs = processes_under(path)?;
    for p in &procs {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs.iter().any(|p| !p.is_gone()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &procs {
        if let Some(sock) = shim_socket(&p.cmdline) {
            let _ = std::fs::remove_file(sock);
        }
    }
    let alive: Vec<_> = procs.iter().filter(|p| !p.is_gone()).collect();
    if !alive.is_empty() {
        anyhow::bail!(
            "processes under {} survived SIGKILL: {alive:?}",
            path.display()
        );
    }
    Ok(procs)
}

/// The socket a containerd runc v2 shim listens on, from its command line:
/// containerd 1.6 puts it at `/run/containerd/s/<sha256(address/namespace/id)>`.
fn shim_socket(cmdline: &[String]) -> Option<PathBuf> {
    if !cmdline.first()?.contains("containerd-shim") {
        return None;
    }
    let arg = |name: &str| {
        cmdline
            .iter()
            .position(|a| a == name)
            .and_then(|i| cmdline.get(i + 1))
            .cloned()
    };
    let (ns, id, address) = (arg("-namespace")?, arg("-id")?, arg("-address")?);
    let joined = Path::new(&address).join(ns).join(id);
    let digest = sha2::Sha256::digest(joined.to_string_lossy().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(PathBuf::from("/run/containerd/s").join(hex))
}

/// Delete network link `name` if it exists.
pub(crate) fn delete_link(name: &str) -> anyhow::Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    crate::run(std::process::Command::new("ip").args(["link", "del", name]))?;
    Ok(())
}

/// True when network link `name` exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Remove cgroup `parent` (e.g. `/berth-it-c3`) and everything below it in
/// every mounted hierarchy, killing any process still in it.
pub(crate) fn remove_cgroup(parent: &str) -> anyhow::Result<()> {
    let rel = parent.trim_matches('/');
    anyhow::ensure!(
        rel.starts_with("berth-it"),
        "refusing to remove cgroup {parent:?}: not a test cgroup"
    );
    let hierarchies: Vec<PathBuf> = mounts()?
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    let mut failures = Vec::new();
    for h in hierarchies {
        let top = h.join(rel);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        failures.push(format!("{}: {e}", d.display()));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cannot remove cgroups: {}", failures.join("; "))
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Tear down everything of one instance directory after its processes have
/// been asked to stop: kill what still references it, unmount, delete the
/// bridge and cgroup, remove the directory. Best effort: every step runs, and
/// the error lists all that failed.
pub(crate) fn cleanup_dir(
    dir: &Path,
    bridge: Option<&str>,
    cgroup_parent: Option<&str>,
) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = kill_processes_under(dir) {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = unmount_all_under(dir) {
        errors.push(format!("{e:#}"));
    }
    if let Some(bridge) = bridge
        && let Err(e) = delete_link(bridge)
    {
        errors.push(format!("{e:#}"));
    }
    if let Some(cg) = cgroup_parent
        && let Err(e) = remove_cgroup(cg)
    {
        errors.push(format!("{e:#}"));
    }
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("; "))
    }
}

/// The resident set size of process `pid` (`VmRSS` of /proc/<pid>/status), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\134"), r"/x\");
    }

    #[test]
    fn argument_references() {
        let p = "/tmp/berth-it/c3";
        let pre = "/tmp/berth-it/c3/";
        assert!(references("/tmp/berth-it/c3/c.sock", p, pre));
        assert!(references("unix:///tmp/berth-it/c3/c.sock", p, pre));
        assert!(references("--root-dir=/tmp/berth-it/c3", p, pre));
        assert!(!references("/tmp/berth-it/c31/c.sock", p, pre));
        assert!(!references("/tmp/berth-it/c31", p, pre));
    }

    #[test]
    fn shim_socket_path() {
        let cmd: Vec<String> = [
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "abc",
            "-address",
            "/run/containerd/containerd.sock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sock = shim_socket(&cmd).unwrap();
        assert!(sock.starts_with("/run/containerd/s/"));
        assert_eq!(sock.file_name().unwrap().len(), 64);
        assert!(shim_socket(&["/bin/sh".to_string()]).is_none());
    }
}
