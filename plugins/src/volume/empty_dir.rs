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
/// - With `fsGroup`, the volume's root gets that group and the setgid bit.
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
        ensure_dir(&dir, 0o777)?;
        let meta = std::fs::symlink_metadata(&dir).map_err(Error::io("stat", &dir))?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                "name",
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        // MkdirAll is subject to the umask; the kubelet then forces 0777.
        if meta.permissions().mode() & 0o7777 != 0o777 {
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
            }
        }

        if let Some(gid) = pod.fs_group {
            // The kubelet's SetVolumeOwnership on the (new) volume root: group
            // fsGroup, group rwx, setgid so new files inherit the group.
            std::os::unix::fs::lchown(&dir, None, Some(gid)).map_err(Error::io("chown", &dir))?;
            let mode = std::fs::symlink_metadata(&dir)
                .map_err(Error::io("stat", &dir))?
                .permissions()
                .mode();
            let wanted = (mode & 0o7777) | 0o2070;
            if mode & 0o7777 != wanted {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(wanted))
                    .map_err(Error::io("chmod", &dir))?;
            }
        }
        Ok(dir)
    }

    fn tear_down(&self, pod_dir: &Path, vol_name: &str) -> Result<()> {
        validate_component("name", vol_name)?;
        let dir = Self::volume_dir(pod_dir, vol_name);
        fsutil::unmount_and_remove(self.mounter.as_ref(), &dir)
    }

    fn selinux_relabel(&self) -> bool {
        true
    }
}
