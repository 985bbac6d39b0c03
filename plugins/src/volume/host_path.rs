//! The hostPath plugin (the kubelet's `pkg/volume/hostpath`).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Volume;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;

use super::{PodInfo, VolumePlugin};
use crate::error::{Error, Result};
use crate::fsutil::{self, validate_no_backsteps};

/// `hostPath` volumes: the host path itself, after the kubelet's `type` checks.
///
/// | `type`              | check (following symlinks, as `os.Stat`)                     |
/// |---------------------|--------------------------------------------------------------|
/// | unset or `""`       | none, not even existence                                     |
/// | `DirectoryOrCreate` | created with 0755 (and parents, umask applies) if missing; then must be a directory |
/// | `Directory`         | must exist and be a directory                                |
/// | `FileOrCreate`      | created empty with 0644 (umask applies) if missing, parent directories are *not* created; then must be a file |
/// | `File`              | must exist and be a regular file                             |
/// | `Socket`            | must exist and be a unix socket                              |
/// | `CharDevice`        | must exist and be a character device                         |
/// | `BlockDevice`       | must exist and be a block device                             |
///
/// The path must be absolute and contain no `..`. Tear-down does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostPathPlugin;

impl HostPathPlugin {
    /// The plugin's name.
    pub const NAME: &'static str = "kubernetes.io/host-path";
}

impl VolumePlugin for HostPathPlugin {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_support(&self, vol: &Volume) -> bool {
        vol.host_path.is_some()
    }

    fn set_up(&self, _pod: &PodInfo, vol: &Volume) -> Result<PathBuf> {
        let source = vol.host_path.clone().unwrap_or_default();
        if source.path.is_empty() {
            return Err(Error::invalid("hostPath.path", "must not be empty"));
        }
        validate_no_backsteps("hostPath.path", &source.path)?;
        let path = PathBuf::from(&source.path);
        if !path.is_absolute() {
            return Err(Error::invalid(
                "hostPath.path",
                format!("{:?} must be an absolute path", source.path),
            ));
        }
        check_type(&path, source.type_.as_deref().unwrap_or_default())?;
        Ok(path)
    }

    fn tear_down(&self, _pod_dir: &Path, _vol_name: &str) -> Result<()> {
        Ok(())
    }
}

/// The kubelet's `checkType`.
pub(crate) fn check_type(path: &Path, path_type: &str) -> Result<()> {
    match path_type {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if file_type(path)?.is_none() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(Error::io("create directory", path))?;
            }
            expect(path, libc::S_IFDIR)
        }
        "Directory" => expect(path, libc::S_IFDIR),
        "FileOrCreate" => {
            if file_type(path)?.is_none() {
                // os.OpenFile(path, O_CREATE, 0644): no parents, an existing entry is fine.
                match nix::fcntl::open(
                    path,
                    OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                ) {
                    Ok(_fd) => {}
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(Error::errno("create file", path)(e)),
                }
            }
            expect(path, libc::S_IFREG)
        }
        "File" => expect(path, libc::S_IFREG),
        "Socket" => expect(path, libc::S_IFSOCK),
        "CharDevice" => expect(path, libc::S_IFCHR),
        "BlockDevice" => expect(path, libc::S_IFBLK),
        other => Err(Error::invalid(
            "hostPath.type",
            format!("{other} is an invalid volume type"),
        )),
    }
}

/// The type bits of `path` following symlinks; `None` if it does not exist
/// (a dangling symlink does not exist, as for `os.Stat`).
fn file_type(path: &Path) -> Result<Option<libc::mode_t>> {
    match nix::sys::stat::stat(path) {
        Ok(st) => Ok(Some(fsutil::file_type(&st))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::Io {
            op: "stat",
            path: path.to_path_buf(),
            source: io::Error::from(e),
        }),
    }
}

/// The kubelet's `typeMatchedOrError`.
fn expect(path: &Path, wanted: libc::mode_t) -> Result<()> {
    match file_type(path)? {
        None => Err(Error::HostPathMissing {
            path: path.to_path_buf(),
        }),
        Some(actual) if actual == wanted => Ok(()),
        Some(actual) => Err(Error::HostPathType {
            path: path.to_path_buf(),
            expected: fsutil::type_name(wanted),
            actual: fsutil::type_name(actual),
        }),
    }
}
