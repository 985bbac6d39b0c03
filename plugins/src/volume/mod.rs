//! Volume plugins and the pod-level volume manager, modelled on the kubelet's
//! `pkg/volume` plugins and `pkg/kubelet/volumemanager`, for a standalone
//! (static pod) agent: volumes are set up synchronously before the pod's
//! containers start and torn down from the directory layout alone.
//!
//! On-disk layout (as the kubelet's):
//!
//! ```text
//! <root-dir>/pods/<uid>/                      0750
//!     volumes/<plugin-dir>/<volume-name>      e.g. volumes/kubernetes.io~empty-dir/cache
//!     volume-subpaths/<volume>/<container>/<i> bind mounts of subPaths
//!     containers/<container>/<id>             termination message files
//!     etc-hosts                               the managed /etc/hosts
//! ```

pub mod atomic_writer;
pub mod configmap;
mod empty_dir;
mod host_path;
pub mod ownership;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

pub use configmap::{
    ApiObjects, ConfigMapPlugin, NoApiServer, ObjectData, ObjectKind, SecretPlugin,
};
pub use empty_dir::EmptyDirPlugin;
pub use host_path::HostPathPlugin;
pub use ownership::{FsGroupChangePolicy, Ownership, set_volume_ownership};

use crate::error::{Error, Result};
use crate::fsutil::{self, ensure_dir, validate_component};
use crate::mount::{Mounter, SystemMounter};

/// What a volume plugin needs to know about the pod whose volume it sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace` (`default` when unset).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `<root-dir>/pods/<uid>`.
    pub pod_dir: PathBuf,
    /// The pod's memory limit in bytes when every container declares one (the
    /// kubelet's pod cgroup limit); caps memory-backed emptyDirs.
    pub memory_limit: Option<u64>,
    /// `spec.securityContext.fsGroup`: the group given to the volumes that
    /// manage ownership (emptyDir, configMap, secret; see [`ownership`]).
    pub fs_group: Option<u32>,
    /// `spec.securityContext.fsGroupChangePolicy`. As upstream documents it,
    /// it has no effect on the ephemeral volumes (emptyDir, configMap, secret):
    /// those are changed whenever they are (re)written. It is for plugins of
    /// volumes whose data outlives the pod.
    pub fs_group_change_policy: FsGroupChangePolicy,
}

impl PodInfo {
    /// The ownership an ephemeral volume gets (upstream passes no change
    /// policy for them: every set-up that writes the volume changes it all),
    /// `None` without `fsGroup`.
    pub fn ephemeral_ownership(&self, read_only: bool) -> Option<Ownership> {
        self.fs_group.map(|fs_group| Ownership {
            fs_group,
            policy: FsGroupChangePolicy::Always,
            read_only,
        })
    }
}

/// A volume plugin (the kubelet's `VolumePlugin` + `Mounter` + `Unmounter`, reduced).
pub trait VolumePlugin: Send + Sync {
    /// The plugin's qualified name, e.g. `kubernetes.io/empty-dir`. Its on-disk
    /// directory under `volumes/` is this name with `/` replaced by `~`.
    fn name(&self) -> &'static str;

    /// Whether this plugin handles `vol`'s volume source.
    fn can_support(&self, vol: &Volume) -> bool;

    /// Make the volume available on the host and return its host path.
    /// Must be idempotent: it runs again for every pod sync that needs it.
    fn set_up(&self, pod: &PodInfo, vol: &Volume) -> Result<PathBuf>;

    /// Undo [`set_up`](Self::set_up) for the volume `vol_name` of the pod
    /// whose directory is `pod_dir`, knowing nothing but these two (the spec
    /// may be gone after an agent restart). Missing volumes are success.
    fn tear_down(&self, pod_dir: &Path, vol_name: &str) -> Result<()>;

    /// Whether containers should ask the runtime to SELinux-relabel this
    /// volume (the kubelet's `Attributes.SELinuxRelabel` for managed volumes).
    fn selinux_relabel(&self) -> bool {
        false
    }
}

/// The directory name of a plugin under `volumes/` (the kubelet's `EscapeQualifiedName`).
pub fn plugin_dir_name(plugin_name: &str) -> String {
    plugin_name.replace('/', "~")
}

/// One set-up volume of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedVolume {
    /// Name of the plugin that set it up.
    pub plugin: &'static str,
    /// Where the volume is on the host.
    pub host_path: PathBuf,
    /// Whether container mounts of it ask for SELinux relabelling.
    pub selinux_relabel: bool,
}

/// All set-up volumes of a pod, by volume name; input to [`VolumeManager::make_mounts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    /// `<root-dir>/pods/<uid>`.
    pub pod_dir: PathBuf,
    /// The pod's volumes by `spec.volumes[].name`.
    pub volumes: BTreeMap<String, MountedVolume>,
}

impl PodVolumes {
    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Option<&MountedVolume> {
        self.volumes.get(name)
    }
}

/// Sets up and tears down the volumes of pods, with a fixed set of plugins.
pub struct VolumeManager {
    root_dir: PathBuf,
    mounter: Arc<dyn Mounter>,
    plugins: Vec<Box<dyn VolumePlugin>>,
}

impl fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeManager")
            .field("root_dir", &self.root_dir)
            .field(
                "plugins",
                &self.plugins.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl VolumeManager {
    /// A manager under `root_dir` (the kubelet's `--root-dir`) with the real
    /// mounter and the emptyDir and hostPath plugins.
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        Self::with_mounter(root_dir, Arc::new(SystemMounter))
    }

    /// As [`new`](Self::new), with `mounter` for all mount syscalls (a fake in tests).
    pub fn with_mounter(root_dir: impl Into<PathBuf>, mounter: Arc<dyn Mounter>) -> Self {
        let plugins: Vec<Box<dyn VolumePlugin>> = vec![
            Box::new(EmptyDirPlugin::new(mounter.clone())),
            Box::new(HostPathPlugin),
        ];
        Self::with_plugins(root_dir, mounter, plugins)
    }

    /// As [`with_mounter`](Self::with_mounter), plus the configMap and secret
    /// plugins reading their objects from `objects`.
    pub fn with_api_objects(
        root_dir: impl Into<PathBuf>,
        mounter: Arc<dyn Mounter>,
        objects: Arc<dyn ApiObjects>,
    ) -> Self {
        let plugins: Vec<Box<dyn VolumePlugin>> = vec![
            Box::new(EmptyDirPlugin::new(mounter.clone())),
            Box::new(HostPathPlugin),
            Box::new(ConfigMapPlugin::new(objects.clone(), mounter.clone())),
            Box::new(SecretPlugin::new(objects, mounter.clone())),
        ];
        Self::with_plugins(root_dir, mounter, plugins)
    }

    /// A manager with an explicit plugin list (first match wins).
    pub fn with_plugins(
        root_dir: impl Into<PathBuf>,
        mounter: Arc<dyn Mounter>,
        plugins: Vec<Box<dyn VolumePlugin>>,
    ) -> Self {
        Self {
            root_dir: root_dir.into(),
            mounter,
            plugins,
        }
    }

    /// The root directory (`--root-dir`).
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The mounter all plugins share.
    pub fn mounter(&self) -> &Arc<dyn Mounter> {
        &self.mounter
    }

    /// `<root-dir>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }

    /// The [`PodInfo`] of `pod`; `metadata.uid` is required.
    pub fn pod_info(&self, pod: &Pod) -> Result<PodInfo> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        validate_component("metadata.uid", &uid)?;
        let security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let fs_group = match security.and_then(|sc| sc.fs_group) {
            Some(gid) => Some(u32::try_from(gid).map_err(|_| {
                Error::invalid(
                    "spec.securityContext.fsGroup",
                    format!("{gid} is out of range"),
                )
            })?),
            None => None,
        };
        let fs_group_change_policy = FsGroupChangePolicy::from_spec(
            security.and_then(|sc| sc.fs_group_change_policy.as_deref()),
        )?;
        Ok(PodInfo {
            pod_dir: self.pod_dir(&uid),
            uid,
            namespace: pod
                .metadata
                .namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            memory_limit: pod_memory_limit(pod),
            fs_group,
            fs_group_change_policy,
        })
    }

    /// Create the pod's directories and set up every volume of `spec.volumes`.
    ///
    /// A volume without any source is an emptyDir (the API server's default). A
    /// source no plugin handles fails with [`Error::Unsupported`] naming it,
    /// e.g. `spec.volumes[2].configMap: volume type not supported yet`; a plugin
    /// failure is an [`Error::Volume`] naming `spec.volumes[i]`. Idempotent:
    /// call it before every container start.
    pub fn set_up_pod(&self, pod: &Pod) -> Result<PodVolumes> {
        let info = self.pod_info(pod)?;
        ensure_dir(&info.pod_dir, 0o750)?;
        ensure_dir(&info.pod_dir.join("volumes"), 0o750)?;

        let mut volumes = BTreeMap::new();
        let spec_volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        for (i, vol) in spec_volumes.into_iter().flatten().enumerate() {
            let field = format!("spec.volumes[{i}]");
            validate_component(&format!("{field}.name"), &vol.name)?;
            if volumes.contains_key(&vol.name) {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!("duplicate volume name {:?}", vol.name),
                ));
            }
            let defaulted;
            let (vol, kind) = match volume_source_kind(&field, vol)? {
                Some(kind) => (vol, kind),
                None => {
                    defaulted = Volume {
                        empty_dir: Some(Default::default()),
                        ..vol.clone()
                    };
                    (&defaulted, "emptyDir".to_string())
                }
            };
            let Some(plugin) = self.plugins.iter().find(|p| p.can_support(vol)) else {
                return Err(Error::Unsupported {
                    field: format!("{field}.{kind}"),
                    what: "volume type".into(),
                });
            };
            let host_path = plugin.set_up(&info, vol).map_err(|source| Error::Volume {
                field: field.clone(),
                name: vol.name.clone(),
                source: Box::new(source),
            })?;
            volumes.insert(
                vol.name.clone(),
                MountedVolume {
                    plugin: plugin.name(),
                    host_path,
                    selinux_relabel: plugin.selinux_relabel(),
                },
            );
        }
        Ok(PodVolumes {
            pod_dir: info.pod_dir,
            volumes,
        })
    }

    /// Tear down everything of pod `uid` and remove `<root-dir>/pods/<uid>`,
    /// without its spec: volumes are found from `volumes/<plugin-dir>/<name>`
    /// and torn down by their plugin, then every mount still under the pod
    /// directory (tmpfs, subPath binds) is unmounted, deepest first. Only when
    /// nothing under it is mounted any more is the directory removed, without
    /// following symlinks or crossing filesystems; otherwise the error is
    /// [`Error::StillMounted`] and nothing is deleted. A missing directory is
    /// success. Call it only once no container of the pod runs.
    pub fn tear_down_pod(&self, uid: &str) -> Result<()> {
        validate_component("pod uid", uid)?;
        let pod_dir = self.pod_dir(uid);
        match std::fs::symlink_metadata(&pod_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                // Not a directory we made (a symlink or file): drop the entry itself.
                return std::fs::remove_file(&pod_dir).map_err(Error::io("remove", &pod_dir));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("stat", &pod_dir)(e)),
        }

        let volumes_dir = pod_dir.join("volumes");
        for (plugin_dir, vol_name) in list_volume_dirs(&volumes_dir)? {
            let Some(plugin) = self
                .plugins
                .iter()
                .find(|p| plugin_dir_name(p.name()) == plugin_dir)
            else {
                tracing::warn!(
                    pod = uid,
                    plugin_dir,
                    vol_name,
                    "volume of unknown plugin; removing its directory"
                );
                continue;
            };
            if let Err(error) = plugin.tear_down(&pod_dir, &vol_name) {
                // Whatever is left is unmounted (or refused) below.
                tracing::warn!(pod = uid, plugin = plugin.name(), vol_name, %error, "volume tear-down failed");
            }
        }
        fsutil::unmount_and_remove(self.mounter.as_ref(), &pod_dir)
    }

    /// The UIDs of all pod directories under `<root-dir>/pods` (to find pods
    /// whose directories outlived them). A missing `pods` directory is empty.
    pub fn pod_dirs(&self) -> Result<Vec<String>> {
        let pods = self.root_dir.join("pods");
        let entries = match std::fs::read_dir(&pods) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &pods)(e)),
        };
        let mut uids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("read directory", &pods))?;
            let is_dir = entry
                .file_type()
                .map_err(Error::io("stat", entry.path()))?
                .is_dir();
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                uids.push(name.to_string());
            }
        }
        uids.sort();
        Ok(uids)
    }
}

/// `(plugin-dir, volume-name)` for every directory `volumes/<plugin-dir>/<name>`.
fn list_volume_dirs(volumes_dir: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let plugin_dirs = match std::fs::read_dir(volumes_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io("read directory", volumes_dir)(e)),
    };
    for plugin_dir in plugin_dirs {
        let plugin_dir = plugin_dir.map_err(Error::io("read directory", volumes_dir))?;
        let is_dir = plugin_dir.file_type().is_ok_and(|t| t.is_dir());
        let Some(plugin_name) = plugin_dir.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_dir {
            continue;
        }
        let vols = std::fs::read_dir(plugin_dir.path())
            .map_err(Error::io("read directory", plugin_dir.path()))?;
        for vol in vols {
            let vol = vol.map_err(Error::io("read directory", plugin_dir.path()))?;
            if let Some(name) = vol.file_name().to_str() {
                found.push((plugin_name.clone(), name.to_string()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The JSON name of the volume source set in `vol` (`emptyDir`, `configMap`,
/// …), found from its serialization so new API fields are never mistaken for
/// "no source". `None` when no source is set.
fn volume_source_kind(field: &str, vol: &Volume) -> Result<Option<String>> {
    let value = serde_json::to_value(vol)
        .map_err(|e| Error::invalid(field, format!("cannot serialize volume: {e}")))?;
    let kinds: Vec<String> = value
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| k.as_str() != "name" && !v.is_null())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    match kinds.as_slice() {
        [] => Ok(None),
        [kind] => Ok(Some(kind.clone())),
        many => Err(Error::invalid(
            field,
            format!(
                "may not specify more than 1 volume type (found {})",
                many.join(", ")
            ),
        )),
    }
}

/// The pod's memory limit as the kubelet's pod cgroup would get it: only when
/// every container declares one; the larger of the app containers' sum (plus
/// restartable init "sidecar" containers) and the largest one-shot init
/// container (plus the sidecars started before it), plus `spec.overhead`.
fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    use berth_api::quantity::non_negative_int_value;
    let spec = pod.spec.as_ref()?;
    let limit = |c: &Container| -> Option<u128> {
        let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        non_negative_int_value(q).map(u128::from).filter(|v| *v > 0)
    };
    let mut sidecars: u128 = 0;
    let mut max_init: u128 = 0;
    for c in spec.init_containers.iter().flatten() {
        let l = limit(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.checked_add(l)?;
        } else {
            max_init = max_init.max(sidecars.checked_add(l)?);
        }
    }
    let mut app: u128 = 0;
    for c in &spec.containers {
        app = app.checked_add(limit(c)?)?;
    }
    let mut total = app.checked_add(sidecars)?.max(max_init);
    if let Some(overhead) = spec.overhead.as_ref().and_then(|o| o.get("memory")) {
        total = total.checked_add(u128::from(non_negative_int_value(overhead)?))?;
    }
    u64::try_from(total).ok()
}

#[cfg(test)]
pub(crate) mod tests;
