//! The emptyDir plugin (the kubelet's `pkg/volume/emptydir`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Volume;

use super::{PodInfo, VolumePlugin, plugin_dir_name};
use crate::error::{Error, Result};
use crate::fsutil::{self, ensure_dir, validate_component};
use crate::mount::Mounter;

/// An emptyDir's storage medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Medium {
    /// The node's disk (the pod directory's filesystem).
    Default,
    /// A tmpfs.
    Memory,
}

/// `emptyDir` volumes: a directory `<pod-dir>/volumes/kubernetes.io~empty-dir/<name>`
/// with mode 0777, or a tmpfs mounted there for `medium: Memory`.
///
/// - The tmpfs is sized `size=` the smaller of `sizeLimit` and the pod's memory
///   limit (when every container has one), as the kubelet's
///   `SizeMemoryBackedVolumes`; with neither it gets the kernel default (half
///   of RAM) where the kubelet would use node allocatable memory.
/// - `sizeLimit` of a disk-backed emptyDir is not enforced (the kubelet does
///   it by eviction).
/// - `HugePages` media are unsupported.
/// - With `fsGroup`, the volume gets the kubelet's `SetVolumeOwnership`
///   ([`super::ownership`]) when it is set up: once, as upstream's emptyDir,
///   whose `ready` marker (`<pod-dir>/plugins/kubernetes.io~empty-dir/<name>/ready`)
///   this plugin keeps too. Later syncs leave the volume's contents and modes
///   to the pod; a memory-backed volume whose tmpfs had to be mounted again
///   (the host rebooted) is set up again.
pub struct EmptyDirPlugin {
    mounter: Arc<dyn Mounter>,
}

impl EmptyDirPlugin {
    /// The plugin's name.
    pub const NAME: &'static str = "kubernetes.io/empty-dir";

    /// An emptyDir plugin mounting through `mounter`.
    pub fn new(mounter: Arc<dyn Mounter>) -> Self {
        Self { mounter }
    }

    /// `<pod_dir>/volumes/kubernetes.io~empty-dir/<name>`.
    pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
        pod_dir
            .join("volumes")
            .join(plugin_dir_name(Self::NAME))
            .join(name)
    }

    /// `<pod_dir>/plugins/kubernetes.io~empty-dir/<name>`: the volume's
    /// metadata (upstream's `getMetaDir`), holding its `ready` marker.
    pub fn meta_dir(pod_dir: &Path, name: &str) -> PathBuf {
        pod_dir
            .join("plugins")
            .join(plugin_dir_name(Self::NAME))
            .join(name)
    }
}

impl VolumePlugin for EmptyDirPlugin {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_support(&self, vol: &Volume) -> bool {
        vol.empty_dir.is_some()
    }

    fn set_up(&self, pod: &PodInfo, vol: &Volume) -> Result<PathBuf> {
        validate_component("name", &vol.name)?;
        let source = vol.empty_dir.clone().unwrap_or_default();
        let medium = match source.medium.as_deref().unwrap_or_default() {
            "" => Medium::Default,
            "Memory" => Medium::Memory,
            hp if hp == "HugePages" || hp.starts_with("HugePages-") => {
                return Err(Error::Unsupported {
                    field: "emptyDir.medium".into(),
                    what: format!("medium {hp:?}"),
                });
            }
            other => {
                return Err(Error::invalid(
                    "emptyDir.medium",
                    format!("unknown storage medium {other:?}"),
                ));
            }
        };
        let size_limit = match &source.size_limit {
            Some(q) => Some(
                berth_api::quantity::non_negative_int_value(q)
                    .map(u128::from)
                    .ok_or_else(|| {
                        Error::invalid("emptyDir.sizeLimit", format!("invalid quantity {:?}", q.0))
                    })?,
            ),
            None => None,
        };

        let dir = Self::volume_dir(&pod.pod_dir, &vol.name);
        let ready = Self::meta_dir(&pod.pod_dir, &vol.name).join("ready");
        let mut set_up = !ready.exists();
        ensure_dir(&dir, 0o777)?;
        let meta = std::fs::symlink_metadata(&dir).map_err(Error::io("stat", &dir))?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                "name",
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        // MkdirAll is subject to the umask; the kubelet then forces 0777 (once:
        // afterwards the mode is the pod's business).
        if set_up && meta.permissions().mode() & 0o7777 != 0o777 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(Error::io("chmod", &dir))?;
        }

        if medium == Medium::Memory {
            let real = fsutil::canonical(&dir)?;
            let table = fsutil::mount_table(self.mounter.as_ref())?;
            let mounted = table.iter().any(|m| m.path == real && m.fs_type == "tmpfs");
            if !mounted {
                let size = [size_limit, pod.memory_limit.map(u128::from)]
                    .into_iter()
                    .flatten()
                    .filter(|s| *s > 0)
                    .min();
                let data = size.map(|s| format!("size={s}"));
                tracing::debug!(pod = pod.uid, volume = vol.name, ?data, "mounting tmpfs");
                self.mounter
                    .mount_tmpfs(&real, data.as_deref())
                    .map_err(|source| Error::Mount {
                        path: dir.clone(),
                        what: "tmpfs".into(),
                        source,
                    })?;
                // A fresh tmpfs: whatever was set up before is gone.
                set_up = true;
            }
        }

        if !set_up {
            return Ok(dir);
        }
        if let Some(ownership) = pod.ephemeral_ownership(false) {
            super::ownership::set_volume_ownership(&dir, &ownership)?;
            tracing::debug!(
                pod = pod.uid,
                volume = vol.name,
                fs_group = ownership.fs_group,
                "emptyDir owned by fsGroup"
            );
        }
        if let Some(meta_dir) = ready.parent() {
            ensure_dir(meta_dir, 0o750)?;
        }
        std::fs::write(&ready, b"").map_err(Error::io("write", &ready))?;
        Ok(dir)
    }

    fn tear_down(&self, pod_dir: &Path, vol_name: &str) -> Result<()> {
        validate_component("name", vol_name)?;
        let dir = Self::volume_dir(pod_dir, vol_name);
        fsutil::unmount_and_remove(self.mounter.as_ref(), &dir)?;
        fsutil::unmount_and_remove(self.mounter.as_ref(), &Self::meta_dir(pod_dir, vol_name))
    }

    fn selinux_relabel(&self) -> bool {
        true
    }
}
