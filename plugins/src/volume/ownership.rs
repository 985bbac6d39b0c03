//! `fsGroup` ownership of a volume: the kubelet's `SetVolumeOwnership`
//! (`pkg/volume/volume_linux.go`). Every file and directory of the volume gets
//! group `fsGroup` and group read (plus write, unless the volume is read-only);
//! directories also get group search and the setgid bit, so what a container
//! creates there later is the pod's group's too. Bits are only added, never
//! taken away; symlinks get the group but no mode change.
//!
//! The walk runs as root over a tree a container may be writing to, so it goes
//! by file descriptor and never follows a symlink: an entry swapped for a
//! symlink between listing and changing is changed itself, never its target.
//! As upstream, a file that cannot be changed is logged and skipped; only a
//! volume root that cannot be opened, or a directory that cannot be listed,
//! fails the set-up.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::libc;
use nix::sys::stat::{FileStat, Mode, fstat};
use nix::unistd::{Gid, fchownat};

use crate::error::{Error, Result};
use crate::fsutil::file_type;

/// Group read and write (upstream's `rwMask`).
const RW_MASK: u32 = 0o660;
/// Group read only, for read-only volumes (upstream's `roMask`).
const RO_MASK: u32 = 0o440;
/// Search permission on directories (upstream's `execMask`).
const EXEC_MASK: u32 = 0o110;
/// The setgid bit: new entries of a directory inherit its group.
const SETGID: u32 = 0o2000;

/// `spec.securityContext.fsGroupChangePolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsGroupChangePolicy {
    /// Change every file at every set-up that asks for ownership (the default).
    #[default]
    Always,
    /// Skip the walk when the volume's root already has the group and the
    /// permissions (a change is applied to the root last, so a walk that was
    /// cut short is done again).
    OnRootMismatch,
}

impl FsGroupChangePolicy {
    /// The policy named in the spec (`Always` when unset).
    pub fn from_spec(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("Always") => Ok(Self::Always),
            Some("OnRootMismatch") => Ok(Self::OnRootMismatch),
            Some(other) => Err(Error::invalid(
                "spec.securityContext.fsGroupChangePolicy",
                format!(
                    "Unsupported value: {other:?}: supported values: \"Always\", \"OnRootMismatch\""
                ),
            )),
        }
    }
}

/// What [`set_volume_ownership`] gives a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// The pod's `fsGroup`.
    pub fs_group: u32,
    pub policy: FsGroupChangePolicy,
    /// A read-only volume (configMap, secret) gets no group write bit.
    pub read_only: bool,
}

impl Ownership {
    fn mask(&self) -> u32 {
        if self.read_only { RO_MASK } else { RW_MASK }
    }

    /// The permission bits a file with bits `mode` ends up with.
    pub fn file_mode(&self, mode: u32) -> u32 {
        (mode & 0o7777) | self.mask()
    }

    /// The permission bits a directory with bits `mode` ends up with.
    pub fn dir_mode(&self, mode: u32) -> u32 {
        (mode & 0o7777) | self.mask() | EXEC_MASK | SETGID
    }

    /// Upstream's `requiresPermissionChange`: the root has another group, is
    /// not a directory, lacks a needed permission bit, or lacks setgid.
    fn root_needs_change(&self, st: &FileStat) -> bool {
        let wanted = self.mask() | EXEC_MASK;
        st.st_gid != self.fs_group
            || file_type(st) != libc::S_IFDIR
            || st.st_mode & wanted != wanted
            || st.st_mode & SETGID == 0
    }
}

/// Give the volume at `dir` the group and permissions of `ownership`. Returns
/// false when [`FsGroupChangePolicy::OnRootMismatch`] found nothing to do.
pub fn set_volume_ownership(dir: &Path, ownership: &Ownership) -> Result<bool> {
    let root = open(dir, dir_flags(), Mode::empty()).map_err(Error::errno("open", dir))?;
    if ownership.policy == FsGroupChangePolicy::OnRootMismatch {
        let st = fstat(&root).map_err(Error::errno("stat", dir))?;
        if !ownership.root_needs_change(&st) {
            tracing::debug!(volume = %dir.display(), fs_group = ownership.fs_group, "volume root already owned; ownership change skipped");
            return Ok(false);
        }
    }
    let mut failed = 0usize;
    // Children before their directory, the root last (upstream's `walkDeep`):
    // a root that looks done means the whole tree is.
    let mut stack = vec![Frame::new(root, dir.to_path_buf())?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            let Some(done) = stack.pop() else { break };
            change(&done.fd, &done.path, ownership, &mut failed);
            continue;
        };
        let path = top.path.join(OsStr::from_bytes(name.as_bytes()));
        match openat(&top.fd, name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => {
                stack.push(Frame::new(fd, path)?);
                continue;
            }
            // Not a directory (or a symlink): changed below, by itself.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::errno("open", &path)(e)),
        }
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&top.fd, name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => change(&fd, &path, ownership, &mut failed),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(Error::errno("open", &path)(e)),
        }
    }
    if failed > 0 {
        tracing::warn!(volume = %dir.display(), fs_group = ownership.fs_group, failed, "some files of the volume could not be given the pod's fsGroup");
    }
    Ok(true)
}

/// Flags to open a directory for listing without following a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// One directory being walked.
struct Frame {
    fd: OwnedFd,
    path: PathBuf,
    pending: Vec<CString>,
}

impl Frame {
    fn new(fd: OwnedFd, path: PathBuf) -> Result<Frame> {
        let dup = fd
            .try_clone()
            .map_err(Error::io("duplicate fd of", &path))?;
        let mut dir = Dir::from_fd(dup).map_err(Error::errno("open directory", &path))?;
        let mut pending = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(Error::errno("read directory", &path))?;
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                pending.push(name.to_owned());
            }
        }
        Ok(Frame { fd, path, pending })
    }
}

/// Change the one file `fd` refers to (upstream's `changeFilePermission`);
/// a failure is logged and counted in `failed`.
fn change(fd: &OwnedFd, path: &Path, ownership: &Ownership, failed: &mut usize) {
    let st = match fstat(fd) {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "stat for fsGroup failed");
            *failed += 1;
            return;
        }
    };
    if st.st_gid != ownership.fs_group {
        let group = Some(Gid::from_raw(ownership.fs_group));
        if let Err(e) = fchownat(fd, "", None, group, AtFlags::AT_EMPTY_PATH) {
            tracing::warn!(path = %path.display(), error = %e, "chown to fsGroup failed");
            *failed += 1;
        }
    }
    let kind = file_type(&st);
    // A symlink's own mode means nothing, and changing it through the link
    // would change its target.
    if kind == libc::S_IFLNK {
        return;
    }
    let mode = st.st_mode & 0o7777;
    let wanted = if kind == libc::S_IFDIR {
        ownership.dir_mode(mode)
    } else {
        ownership.file_mode(mode)
    };
    if wanted == mode {
        return;
    }
    // fchmod does not take an O_PATH descriptor; its /proc link names exactly
    // the inode opened (not a symlink: checked above), so nothing is followed.
    let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if let Err(e) = std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(wanted)) {
        tracing::warn!(path = %path.display(), error = %e, "chmod for fsGroup failed");
        *failed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tests::require_root;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn meta(path: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(path).expect("stat");
        (m.gid(), m.mode() & 0o7777)
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn ownership(gid: u32, policy: FsGroupChangePolicy, read_only: bool) -> Ownership {
        Ownership {
            fs_group: gid,
            policy,
            read_only,
        }
    }

    #[test]
    fn modes_only_gain_bits() {
        let rw = ownership(7, FsGroupChangePolicy::Always, false);
        let ro = ownership(7, FsGroupChangePolicy::Always, true);
        assert_eq!(rw.file_mode(0o600), 0o660);
        assert_eq!(rw.file_mode(0o644), 0o664);
        assert_eq!(rw.dir_mode(0o700), 0o2770);
        assert_eq!(rw.dir_mode(0o777), 0o2777);
        assert_eq!(ro.file_mode(0o400), 0o440);
        assert_eq!(ro.file_mode(0o666), 0o666, "existing write bits stay");
        assert_eq!(ro.dir_mode(0o755), 0o2755);
        assert_eq!(
            FsGroupChangePolicy::from_spec(None).expect("default"),
            FsGroupChangePolicy::Always
        );
        assert_eq!(
            FsGroupChangePolicy::from_spec(Some("OnRootMismatch")).expect("valid"),
            FsGroupChangePolicy::OnRootMismatch
        );
        let err = FsGroupChangePolicy::from_spec(Some("Never")).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("spec.securityContext.fsGroupChangePolicy: Unsupported value"),
            "{err}"
        );
    }

    #[test]
    fn ownership_walks_the_tree_without_following_symlinks() {
        if !require_root("ownership_walks_the_tree_without_following_symlinks") {
            return;
        }
        let outside = tempfile::tempdir().expect("tempdir");
        let precious = outside.path().join("precious");
        std::fs::write(&precious, b"keep").expect("write");
        chmod(&precious, 0o600);
        let tmp = tempfile::tempdir().expect("tempdir");
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b")).expect("mkdir");
        chmod(&vol, 0o755);
        chmod(&vol.join("a"), 0o700);
        std::fs::write(vol.join("a/b/file"), b"x").expect("write");
        chmod(&vol.join("a/b/file"), 0o600);
        symlink(&precious, vol.join("a/link")).expect("symlink");
        symlink(outside.path(), vol.join("dirlink")).expect("symlink");

        let rw = ownership(4321, FsGroupChangePolicy::Always, false);
        assert!(set_volume_ownership(&vol, &rw).expect("ownership"));
        assert_eq!(meta(&vol), (4321, 0o2775));
        assert_eq!(meta(&vol.join("a")), (4321, 0o2770));
        assert_eq!(meta(&vol.join("a/b/file")), (4321, 0o660));
        // Links get the group themselves; their targets are left alone.
        assert_eq!(meta(&vol.join("a/link")).0, 4321);
        assert_eq!(meta(&precious), (0, 0o600));
        assert_eq!(meta(outside.path()).0, 0);

        // Read-only: group read, no group write.
        let ro_vol = tmp.path().join("ro");
        std::fs::create_dir(&ro_vol).expect("mkdir");
        chmod(&ro_vol, 0o755);
        std::fs::write(ro_vol.join("key"), b"v").expect("write");
        chmod(&ro_vol.join("key"), 0o400);
        let ro = ownership(4321, FsGroupChangePolicy::Always, true);
        set_volume_ownership(&ro_vol, &ro).expect("ownership");
        assert_eq!(meta(&ro_vol), (4321, 0o2755));
        assert_eq!(meta(&ro_vol.join("key")), (4321, 0o440));
    }

    #[test]
    fn on_root_mismatch_skips_a_volume_whose_root_is_done() {
        if !require_root("on_root_mismatch_skips_a_volume_whose_root_is_done") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).expect("mkdir");
        std::fs::write(vol.join("f"), b"x").expect("write");
        chmod(&vol.join("f"), 0o600);
        let lazy = ownership(555, FsGroupChangePolicy::OnRootMismatch, false);
        // The root does not match yet: the whole tree is changed.
        assert!(set_volume_ownership(&vol, &lazy).expect("ownership"));
        assert_eq!(meta(&vol.join("f")), (555, 0o660));

        // The root matches: nothing below it is looked at.
        std::os::unix::fs::lchown(vol.join("f"), None, Some(0)).expect("chown");
        chmod(&vol.join("f"), 0o600);
        assert!(!set_volume_ownership(&vol, &lazy).expect("ownership"));
        assert_eq!(meta(&vol.join("f")), (0, 0o600));
        // Always walks anyway.
        let always = ownership(555, FsGroupChangePolicy::Always, false);
        assert!(set_volume_ownership(&vol, &always).expect("ownership"));
        assert_eq!(meta(&vol.join("f")), (555, 0o660));

        // A root without setgid, or without group write, is a mismatch.
        chmod(&vol, 0o775);
        assert!(set_volume_ownership(&vol, &lazy).expect("ownership"));
        assert_eq!(meta(&vol).1 & SETGID, SETGID);
        chmod(&vol, 0o2755);
        assert!(set_volume_ownership(&vol, &lazy).expect("ownership"));
        assert_eq!(meta(&vol).1, 0o2775);
    }
}
