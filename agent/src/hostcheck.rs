//! Host checks: what the node needs besides a runtime that answers, checked
//! every [`PERIOD`] ([`FAILING_PERIOD`] while something fails, so a fix is
//! seen within seconds), each failure a reason on `/healthz` and in the
//! Node's `Ready` condition (the kubelet's `runtimeState` errors):
//!
//! - the runtime's own conditions (CRI `Status`): `container runtime not
//!   ready: RuntimeReady=false reason:… message:…` and `container runtime
//!   network not ready: NetworkReady=false …`, as upstream words them;
//! - the network plugins: containerd says `NetworkReady=true` once a CNI
//!   config loads, even when a plugin it names is not installed (every
//!   RunPodSandbox then fails). Where the runtime's verbose `Status` tells its
//!   CNI `confDir` and `binDir` (containerd), the config it loads is read as
//!   libcni picks it (first by name) and every plugin `type` must be an
//!   executable in `binDir`. CRI-O says neither: the check is skipped there;
//! - the pod sandbox (pause) image (`config.sandboxImage`): present, or
//!   pulled now; one that is absent and cannot be pulled fails every pod;
//! - `--root-dir` and `--pod-logs-dir`: less than [`MIN_AVAILABLE`] bytes or no
//!   inode left, a read-only filesystem, or a write that fails.
//!
//! The kubelet records `NodeNotReady`/`NodeReady` events when its Ready
//! condition changes; so does this, with every check's reason in the log.
//! Pods show their own side of the same fault: `FailedCreatePodSandBox`,
//! `CreateContainerError`…, as the runtime manager reports them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_cri::{RuntimeClient, api};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{EventRecorder, EventType, ObjectRef};
use crate::pleg::RuntimeCache;

/// How often the host is checked while everything passes.
pub const PERIOD: Duration = Duration::from_secs(10);
/// How often while a check fails: recovery is seen within this.
pub const FAILING_PERIOD: Duration = Duration::from_secs(2);
/// Less than this free on the root or log dir's filesystem is "full".
pub const MIN_AVAILABLE: u64 = 1 << 20;
/// How long one pull of the sandbox image may take here.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// After a failed pull of the sandbox image, the next waits this long (its
/// presence is still checked every pass, so an image put there by hand is
/// seen at once).
const PULL_RETRY: Duration = Duration::from_secs(30);
/// The file a writability check writes and removes.
pub const PROBE_FILE: &str = ".berth-write-check";

/// One host check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Runtime,
    Network,
    SandboxImage,
    RootDir,
    PodLogsDir,
}

/// The failing host checks, each with its reason.
#[derive(Debug, Default)]
pub struct HostHealth {
    failing: RwLock<BTreeMap<Check, String>>,
    /// The last failed pull of the sandbox image: when, and why.
    failed_pull: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl HostHealth {
    /// The reasons of the failing checks, in a fixed order.
    pub fn errors(&self) -> Vec<String> {
        let f = self.failing.read().unwrap_or_else(|e| e.into_inner());
        f.values().cloned().collect()
    }

    /// Record one check's result; true when its reason changed.
    pub fn set(&self, check: Check, result: Result<(), String>) -> bool {
        let mut f = self.failing.write().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => f.remove(&check).is_some(),
            Err(reason) => f.insert(check, reason.clone()).as_ref() != Some(&reason),
        }
    }
}

/// The node's health as `/healthz` and the Ready condition say it: the
/// runtime and PLEG first, then the host checks; reasons joined by "; ".
pub fn node_health(cache: &RuntimeCache, host: &HostHealth) -> Result<(), String> {
    let mut errors = Vec::new();
    if let Err(e) = cache.health() {
        errors.push(e);
    }
    errors.extend(host.errors());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// What the checks look at.
pub struct Context {
    pub client: RuntimeClient,
    pub cache: Arc<RuntimeCache>,
    pub health: Arc<HostHealth>,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub node_name: String,
    pub events: EventRecorder,
}

/// Check the host until `cancel` fires.
pub fn spawn(ctx: Context, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_ready: Option<bool> = None;
        loop {
            check_once(&ctx).await;
            let ready = node_health(&ctx.cache, &ctx.health);
            // Like the kubelet's node status: an event when Ready changes.
            // (The runtime not yet reached is the start, not a change.)
            if ctx.cache.runtime_version().is_some() {
                let now_ready = ready.is_ok();
                if was_ready.is_some_and(|w| w != now_ready) || (was_ready.is_none() && !now_ready)
                {
                    let status = if now_ready {
                        "NodeReady"
                    } else {
                        "NodeNotReady"
                    };
                    ctx.events.record(
                        &ObjectRef::node(&ctx.node_name),
                        EventType::Normal,
                        status,
                        format!("Node {} status is now: {status}", ctx.node_name),
                    );
                }
                was_ready = Some(now_ready);
            }
            let period = if ctx.health.errors().is_empty() {
                PERIOD
            } else {
                FAILING_PERIOD
            };
            if !crate::util::sleep_or_cancel(&cancel, period).await {
                return;
            }
        }
    })
}

/// Run every check once and record the results (logging each change).
pub async fn check_once(ctx: &Context) {
    let mut results = Vec::new();
    for (check, label, dir) in [
        (Check::RootDir, "root dir", ctx.root_dir.clone()),
        (Check::PodLogsDir, "pod logs dir", ctx.pod_logs_dir.clone()),
    ] {
        let r = tokio::task::spawn_blocking(move || check_dir(label, &dir))
            .await
            .unwrap_or_else(|e| Err(format!("{label} check failed: {e}")));
        results.push((check, r));
    }
    // An unreachable runtime is the PLEG's to say; these wait for it.
    if let Ok(status) = ctx
        .client
        .status(api::StatusRequest { verbose: true })
        .await
    {
        let config: Option<serde_json::Value> = status
            .info
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok());
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        results.push((Check::Runtime, runtime_condition(&conditions)));
        let network = match network_condition(&conditions) {
            Ok(()) => match config.as_ref().and_then(cni_dirs) {
                Some((conf_dir, bin_dir)) => {
                    tokio::task::spawn_blocking(move || check_cni(&conf_dir, &bin_dir))
                        .await
                        .unwrap_or(Ok(()))
                }
                None => Ok(()),
            },
            err => err,
        };
        results.push((Check::Network, network));
        let image = config
            .as_ref()
            .and_then(|c| c.get("sandboxImage"))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(image) = image {
            results.push((
                Check::SandboxImage,
                ensure_sandbox_image(&ctx.client, &image, &ctx.health).await,
            ));
        }
    }
    for (check, result) in results {
        let failing = result.as_ref().err().cloned();
        if ctx.health.set(check, result) {
            match failing {
                Some(reason) => tracing::warn!(?check, %reason, "host check failing"),
                None => tracing::info!(?check, "host check passing again"),
            }
        }
    }
}

/// `RuntimeReady` must be true (absent counts as not ready, as upstream).
fn runtime_condition(conditions: &[api::RuntimeCondition]) -> Result<(), String> {
    condition(conditions, "RuntimeReady", "container runtime not ready")
}

/// `NetworkReady` must be true.
fn network_condition(conditions: &[api::RuntimeCondition]) -> Result<(), String> {
    condition(
        conditions,
        "NetworkReady",
        "container runtime network not ready",
    )
}

fn condition(conditions: &[api::RuntimeCondition], type_: &str, what: &str) -> Result<(), String> {
    match conditions.iter().find(|c| c.r#type == type_) {
        Some(c) if c.status => Ok(()),
        Some(c) => Err(format!(
            "{what}: {type_}=false reason:{} message:{}",
            c.reason, c.message
        )),
        None => Err(format!("{what}: {type_} is not reported by the runtime")),
    }
}

/// containerd's CNI `confDir` and `binDir` from its verbose Status config.
fn cni_dirs(config: &serde_json::Value) -> Option<(PathBuf, Vec<PathBuf>)> {
    let cni = config.get("cni")?;
    let conf = cni.get("confDir")?.as_str().filter(|s| !s.is_empty())?;
    let bins: Vec<PathBuf> = cni
        .get("binDir")?
        .as_str()?
        .split([':', ','])
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    (!bins.is_empty()).then(|| (PathBuf::from(conf), bins))
}

/// Every plugin of the network config the runtime loads (libcni's first file
/// by name with a `.conf`, `.conflist` or `.json` extension) is installed.
/// No config at all is the runtime's to report (`NetworkReady=false`).
pub fn check_cni(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<(), String> {
    let what = "container runtime network not ready";
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    let Some(file) = files.first() else {
        return Ok(());
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{what}: reading CNI config {}: {e}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{what}: CNI config {} is not valid JSON: {e}",
            file.display()
        )
    })?;
    let network = value
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let plugins: Vec<&serde_json::Value> = match value.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list.iter().collect(),
        None => vec![&value],
    };
    for plugin in plugins {
        let Some(type_) = plugin.get("type").and_then(|t| t.as_str()) else {
            return Err(format!(
                "{what}: a plugin of network \"{network}\" in {} has no type",
                file.display()
            ));
        };
        let found = !type_.contains('/')
            && bin_dirs.iter().any(|d| {
                std::fs::metadata(d.join(type_)).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.is_file() && m.permissions().mode() & 0o111 != 0
                })
            });
        if !found {
            let dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(format!(
                "{what}: CNI plugin \"{type_}\" of network \"{network}\" ({}) not found in [{}]",
                file.display(),
                dirs.join(" ")
            ));
        }
    }
    Ok(())
}

/// The sandbox image is present, or pulled now. After a failed pull its
/// reason stands for [`PULL_RETRY`] before the next try; the image's presence
/// is still checked every pass.
async fn ensure_sandbox_image(
    client: &RuntimeClient,
    image: &str,
    health: &HostHealth,
) -> Result<(), String> {
    let last_failure = || health.failed_pull.lock().unwrap_or_else(|e| e.into_inner());
    let spec = || {
        Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        })
    };
    match client
        .image_status(api::ImageStatusRequest {
            image: spec(),
            verbose: false,
        })
        .await
    {
        Ok(r) if r.image.is_some() => {
            *last_failure() = None;
            return Ok(());
        }
        Ok(_) => {}
        // Unreachable: the PLEG says so; nothing to add here.
        Err(_) => return Ok(()),
    }
    if let Some((at, reason)) = last_failure().as_ref()
        && at.elapsed() < PULL_RETRY
    {
        return Err(reason.clone());
    }
    tracing::info!(image, "pod sandbox image is not present; pulling it");
    let pull = client.pull_image(api::PullImageRequest {
        image: spec(),
        auth: None,
        sandbox_config: None,
    });
    let result = match tokio::time::timeout(PULL_TIMEOUT, pull).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "pod sandbox image \"{image}\" is not present and could not be pulled: {e}"
        )),
        Err(_) => Err(format!(
            "pod sandbox image \"{image}\" is not present and could not be pulled within {}s",
            PULL_TIMEOUT.as_secs()
        )),
    };
    *last_failure() = result
        .as_ref()
        .err()
        .map(|e| (std::time::Instant::now(), e.clone()));
    result
}

/// The directory's filesystem has room and takes a write.
pub fn check_dir(label: &str, dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    // The agent makes both directories when it needs them; so does this.
    std::fs::create_dir_all(dir).map_err(|e| format!("{label} {shown} cannot be made: {e}"))?;
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| format!("{label} {shown} cannot be checked: {e}"))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(format!(
            "{label} {shown} is on a read-only file system (os error 30)"
        ));
    }
    let available = st.blocks_available().saturating_mul(st.fragment_size());
    if available < MIN_AVAILABLE {
        return Err(format!(
            "{label} {shown} is out of space: {available} bytes available (no space left on device)"
        ));
    }
    if st.files() > 0 && st.files_available() == 0 {
        return Err(format!(
            "{label} {shown} is out of inodes: 0 of {} free (no space left on device)",
            st.files()
        ));
    }
    let probe = dir.join(PROBE_FILE);
    let written = std::fs::File::create(&probe).and_then(|mut f| f.write_all(&[0u8; 512]));
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| format!("{label} {shown} is not writable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: bool) -> api::RuntimeCondition {
        api::RuntimeCondition {
            r#type: type_.into(),
            status,
            reason: if status { "" } else { "NetworkPluginNotReady" }.into(),
            message: if status {
                ""
            } else {
                "cni plugin not initialized"
            }
            .into(),
        }
    }

    #[test]
    fn conditions_are_worded_as_upstream() {
        let all = [cond("RuntimeReady", true), cond("NetworkReady", false)];
        assert_eq!(runtime_condition(&all), Ok(()));
        assert_eq!(
            network_condition(&all),
            Err("container runtime network not ready: NetworkReady=false \
                 reason:NetworkPluginNotReady message:cni plugin not initialized"
                .into())
        );
        assert!(runtime_condition(&[]).unwrap_err().contains("RuntimeReady"));
    }

    #[tokio::test]
    async fn a_sandbox_image_that_cannot_be_pulled_is_retried_after_a_while() {
        let fake = berth_cri::fake::FakeRuntime::start().await;
        let client = fake.client().await;
        let health = HostHealth::default();
        let image = "registry.example/berth/pause:none";
        let err = ensure_sandbox_image(&client, image, &health)
            .await
            .unwrap_err();
        assert!(
            err.starts_with(&format!(
                "pod sandbox image \"{image}\" is not present and could not be pulled"
            )),
            "{err}"
        );
        // Within the retry period: the same reason, no second pull.
        assert_eq!(
            ensure_sandbox_image(&client, image, &health).await,
            Err(err)
        );
        assert_eq!(fake.call_count("PullImage"), 1);
        // Put there by hand: seen at once.
        fake.add_image(image);
        assert_eq!(ensure_sandbox_image(&client, image, &health).await, Ok(()));
        assert!(health.failed_pull.lock().unwrap().is_none());
        // The fake's own sandbox image is pulled when absent.
        let sandbox = berth_cri::fake::SANDBOX_IMAGE;
        assert_eq!(
            ensure_sandbox_image(&client, sandbox, &health).await,
            Ok(())
        );
        assert_eq!(fake.call_count("PullImage"), 2);
    }

    #[test]
    fn health_set_reports_changes_only() {
        let h = HostHealth::default();
        assert!(!h.set(Check::RootDir, Ok(())));
        assert!(h.set(Check::RootDir, Err("full".into())));
        assert!(!h.set(Check::RootDir, Err("full".into())));
        assert!(h.set(Check::Network, Err("no bridge".into())));
        assert_eq!(
            h.errors(),
            vec!["no bridge".to_string(), "full".to_string()]
        );
        assert!(h.set(Check::RootDir, Ok(())));
        assert_eq!(h.errors(), vec!["no bridge".to_string()]);
    }

    #[test]
    fn cni_check_finds_the_missing_plugin_of_the_first_config() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("net.d");
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let exe = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = bin.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // No config: the runtime's NetworkReady says so, not this.
        assert_eq!(check_cni(&conf, std::slice::from_ref(&bin)), Ok(()));
        std::fs::write(
            conf.join("10-net.conflist"),
            r#"{"name":"net","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        // A later file is not loaded, so its plugins do not matter.
        std::fs::write(
            conf.join("20-other.conf"),
            r#"{"name":"o","type":"macvlan"}"#,
        )
        .unwrap();
        let err = check_cni(&conf, std::slice::from_ref(&bin)).unwrap_err();
        assert!(
            err.contains("CNI plugin \"bridge\" of network \"net\""),
            "{err}"
        );
        assert!(err.contains("10-net.conflist"), "{err}");
        exe("bridge");
        let err = check_cni(&conf, std::slice::from_ref(&bin)).unwrap_err();
        assert!(err.contains("\"portmap\""), "{err}");
        // Present but not executable is missing too.
        std::fs::write(bin.join("portmap"), "").unwrap();
        assert!(check_cni(&conf, std::slice::from_ref(&bin)).is_err());
        exe("portmap");
        assert_eq!(check_cni(&conf, std::slice::from_ref(&bin)), Ok(()));
        // A single-plugin .conf, and a type that tries to leave the bin dir.
        std::fs::write(
            conf.join("05-x.conf"),
            r#"{"name":"x","type":"../bin/bridge"}"#,
        )
        .unwrap();
        assert!(check_cni(&conf, std::slice::from_ref(&bin)).is_err());
        std::fs::write(conf.join("05-x.conf"), "not json").unwrap();
        let err = check_cni(&conf, std::slice::from_ref(&bin)).unwrap_err();
        assert!(
            err.contains("05-x.conf") && err.contains("not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn cni_dirs_from_containerd_config() {
        let c = serde_json::json!({"cni": {"binDir": "/usr/lib/cni", "confDir": "/etc/cni/net.d"}});
        assert_eq!(
            cni_dirs(&c),
            Some((
                PathBuf::from("/etc/cni/net.d"),
                vec![PathBuf::from("/usr/lib/cni")]
            ))
        );
        assert_eq!(cni_dirs(&serde_json::json!({})), None);
    }

    #[test]
    fn a_writable_dir_passes_and_a_missing_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(check_dir("root dir", d.path()), Ok(()));
        assert!(!d.path().join(PROBE_FILE).exists());
        // A missing dir is made, as the agent would.
        let missing = d.path().join("made");
        assert_eq!(check_dir("root dir", &missing), Ok(()));
        assert!(missing.is_dir());
        // One that cannot be made is named.
        std::fs::write(d.path().join("file"), "").unwrap();
        let bad = d.path().join("file/nope");
        let err = check_dir("root dir", &bad).unwrap_err();
        assert!(
            err.starts_with(&format!("root dir {} cannot be made", bad.display())),
            "{err}"
        );
    }
}
