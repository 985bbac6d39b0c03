//! Filesystem helpers that never follow symlinks or cross mounts where that
//! matters: recursive removal of pod directories, opening and creating paths
//! beneath a volume, plus small validators and the resource-quantity parser.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::libc;
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::{Error, Result};
use crate::mount::{Mounter, mounts_under};

/// Flags to open a directory for reading its entries without following a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The file type bits of a stat result.
pub(crate) fn file_type(st: &FileStat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// A human name of a file type, as the kubelet's hostPath messages use them.
pub(crate) fn type_name(mode_type: libc::mode_t) -> &'static str {
    match mode_type {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "file",
        libc::S_IFSOCK => "socket file",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFLNK => "symlink",
        _ => "unknown file type",
    }
}

/// Check that `value` can be used as one path component (a volume, container
/// or pod UID name): non-empty, no `/`, no NUL, not `.` or `..`.
pub(crate) fn validate_component(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value == "." || value == ".." || value.contains('/') || value.contains('\0') {
        return Err(Error::invalid(
            field,
            format!("{value:?} must be a single path component"),
        ));
    }
    Ok(())
}

/// The kubelet's `ValidatePathNoBacksteps`: no `..` path element.
pub(crate) fn validate_no_backsteps(field: &str, path: &str) -> Result<()> {
    if path.split('/').any(|part| part == "..") {
        return Err(Error::invalid(
            field,
            format!("{path:?} must not contain '..'"),
        ));
    }
    Ok(())
}

/// `mkdir -p` with `mode` for every directory it creates (subject to the umask).
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(Error::io("create directory", path))
}

/// Canonicalize `path` (which must exist), with the error naming it.
pub(crate) fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(Error::io("resolve", path))
}

/// Read the mount table through `mounter`.
pub(crate) fn mount_table(mounter: &dyn Mounter) -> Result<Vec<crate::mount::MountPoint>> {
    mounter
        .mount_table()
        .map_err(|source| Error::MountTable { source })
}

/// Unmount everything mounted at or under `path` (deepest first), check that
/// nothing is left mounted there, then remove `path` recursively without
/// following symlinks or crossing into another filesystem.
///
/// A missing `path` is success. If an unmount fails, nothing is removed and the
/// error is [`Error::StillMounted`] for the first remaining mount point (the
/// unmount errors are logged).
pub(crate) fn unmount_and_remove(mounter: &dyn Mounter, path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path)(e)),
    };
    if !meta.is_dir() {
        // A symlink or file where a directory was expected: remove the entry itself only.
        return fs::remove_file(path).map_err(Error::io("remove", path));
    }
    let real = canonical(path)?;
    for mount_point in mounts_under(&mount_table(mounter)?, &real) {
        if let Err(source) = mounter.unmount(&mount_point) {
            tracing::warn!(path = %mount_point.display(), error = %source, "unmount failed");
        }
    }
    let remaining = mounts_under(&mount_table(mounter)?, &real);
    if let Some(mount_point) = remaining.into_iter().next() {
        return Err(Error::StillMounted {
            path: path.to_path_buf(),
            mount_point,
        });
    }
    remove_all_no_cross(&real, &[])
}

/// One directory being emptied by [`remove_all_no_cross`].
struct Frame {
    fd: OwnedFd,
    path: PathBuf,
    name: Option<CString>,
    pending: Vec<CString>,
}

impl Frame {
    fn new(fd: OwnedFd, path: PathBuf, name: Option<CString>) -> Result<Frame> {
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
        Ok(Frame {
            fd,
            path,
            name,
            pending,
        })
    }
}

/// Remove `path` and everything under it, by file descriptor: symlinks are
/// removed, never followed, and a directory on another device than `path`
/// (or listed in `mount_points`) stops the removal with [`Error::StillMounted`].
/// Iterative, so deep trees do not exhaust the stack.
pub(crate) fn remove_all_no_cross(path: &Path, mount_points: &[PathBuf]) -> Result<()> {
    let root_fd = open(path, dir_flags(), Mode::empty()).map_err(Error::errno("open", path))?;
    let root_dev = fstat(&root_fd).map_err(Error::errno("stat", path))?.st_dev;
    let still_mounted = |mount_point: PathBuf| Error::StillMounted {
        path: path.to_path_buf(),
        mount_point,
    };
    if let Some(mp) = mount_points.iter().find(|m| m.starts_with(path)) {
        return Err(still_mounted(mp.clone()));
    }

    let mut stack = vec![Frame::new(root_fd, path.to_path_buf(), None)?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            let Some(done) = stack.pop() else { break };
            if let (Some(parent), Some(name)) = (stack.last(), done.name.as_deref()) {
                unlinkat(&parent.fd, name, UnlinkatFlags::RemoveDir)
                    .map_err(Error::errno("remove directory", &done.path))?;
            }
            continue;
        };
        let child_path = top.path.join(OsStr::from_bytes(name.as_bytes()));
        let st = match fstatat(
            &top.fd,
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::errno("stat", &child_path)(e)),
        };
        if file_type(&st) != libc::S_IFDIR {
            match unlinkat(&top.fd, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(Error::errno("remove", &child_path)(e)),
            }
            continue;
        }
        if st.st_dev != root_dev || mount_points.contains(&child_path) {
            return Err(still_mounted(child_path));
        }
        let child = openat(&top.fd, name.as_c_str(), dir_flags(), Mode::empty())
            .map_err(Error::errno("open", &child_path))?;
        // The entry could have been swapped between fstatat and openat.
        if fstat(&child)
            .map_err(Error::errno("stat", &child_path))?
            .st_dev
            != root_dev
        {
            return Err(still_mounted(child_path));
        }
        stack.push(Frame::new(child, child_path, Some(name))?);
    }
    fs::remove_dir(path).map_err(Error::io("remove directory", path))
}

/// The normal components of a relative path; `.` is skipped, anything else
/// (root, `..`) is an error naming `field`.
pub(crate) fn normal_components<'a>(field: &str, rel: &'a Path) -> Result<Vec<&'a OsStr>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(Error::invalid(
                field,
                format!("{} must be a relative path without '..'", rel.display()),
            )),
        })
        .collect()
}

/// Open `rel` beneath the directory `base` one component at a time with
/// `O_PATH|O_NOFOLLOW`, refusing any symlink on the way (the kubelet's
/// `doSafeOpen`). `base` must be canonical.
pub(crate) fn open_beneath(base: &Path, rel: &Path) -> Result<OwnedFd> {
    let mut fd = open(
        base,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(Error::errno("open", base))?;
    let mut path = base.to_path_buf();
    for name in normal_components("subPath", rel)? {
        path.push(name);
        let next = openat(
            &fd,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(Error::errno("open", &path))?;
        let st = fstat(&next).map_err(Error::errno("stat", &path))?;
        if file_type(&st) == libc::S_IFLNK {
            return Err(Error::Io {
                op: "open (symlinks are not followed here)",
                path,
                source: io::Error::from_raw_os_error(libc::ELOOP),
            });
        }
        fd = next;
    }
    Ok(fd)
}

/// Create the directory `rel` (and missing parents) beneath the canonical
/// directory `base` with permissions `perm`, never following a symlink out of
/// `base` (the kubelet's `SafeMakeDir`). Existing parts may be symlinks that
/// resolve inside `base`.
pub(crate) fn safe_make_dir(base: &Path, rel: &Path, sub_path: &str, perm: u32) -> Result<()> {
    let names = normal_components("subPath", rel)?;
    let mut existing = 0;
    for i in 0..names.len() {
        let probe: PathBuf = names[..=i]
            .iter()
            .fold(base.to_path_buf(), |p, n| p.join(n));
        match fs::symlink_metadata(&probe) {
            Ok(_) => existing = i + 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io("stat", probe)(e)),
        }
    }
    if existing == names.len() {
        return Ok(());
    }
    let existing_path: PathBuf = names[..existing]
        .iter()
        .fold(base.to_path_buf(), |p, n| p.join(n));
    let resolved = canonical(&existing_path)?;
    let Ok(inside) = resolved.strip_prefix(base) else {
        return Err(Error::SubPathEscape {
            volume: base.to_path_buf(),
            sub_path: sub_path.to_string(),
            resolved,
        });
    };
    let mut fd = open_beneath(base, inside)?;
    let mode = Mode::from_bits_truncate(perm & 0o7777);
    let mut path = resolved.clone();
    for name in &names[existing..] {
        path.push(name);
        let created = match mkdirat(&fd, *name, mode) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(Error::errno("create directory", &path)(e)),
        };
        let next =
            openat(&fd, *name, dir_flags(), Mode::empty()).map_err(Error::errno("open", &path))?;
        if created {
            // mkdirat is subject to the umask; the kubelet sets the volume's mode explicitly.
            fchmod(&next, mode).map_err(Error::errno("chmod", &path))?;
        }
        fd = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn components_and_backsteps() {
        assert!(validate_component("f", "data").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(validate_component("f", bad).is_err(), "{bad:?}");
        }
        assert!(validate_no_backsteps("f", "a/b..c/d").is_ok());
        assert!(validate_no_backsteps("f", "a/../b").is_err());
        assert!(validate_no_backsteps("f", "..").is_err());
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"keep").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pod");
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/b/c/file"), b"x").unwrap();
        symlink(outside.path(), root.join("a/link")).unwrap();
        symlink(outside.path().join("precious"), root.join("a/b/filelink")).unwrap();
        remove_all_no_cross(&root, &[]).unwrap();
        assert!(!root.exists());
        assert_eq!(
            std::fs::read(outside.path().join("precious")).unwrap(),
            b"keep"
        );
    }

    #[test]
    fn remove_all_handles_deep_trees_iteratively() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("deep");
        let mut p = root.clone();
        for _ in 0..300 {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        remove_all_no_cross(&root, &[]).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn remove_all_refuses_listed_mount_points() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pod");
        std::fs::create_dir_all(root.join("vol/inner")).unwrap();
        std::fs::write(root.join("vol/inner/data"), b"x").unwrap();
        let err = remove_all_no_cross(&root, &[root.join("vol/inner")]).unwrap_err();
        assert!(matches!(err, Error::StillMounted { .. }), "{err}");
        assert!(root.join("vol/inner/data").exists());
    }

    #[test]
    fn safe_make_dir_creates_with_mode_and_refuses_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap().join("vol");
        std::fs::create_dir(&base).unwrap();
        safe_make_dir(&base, Path::new("a/b"), "a/b", 0o777).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(base.join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o777);

        let outside = tmp.path().canonicalize().unwrap().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, base.join("evil")).unwrap();
        let err = safe_make_dir(&base, Path::new("evil/x"), "evil/x", 0o777).unwrap_err();
        assert!(matches!(err, Error::SubPathEscape { .. }), "{err}");
        assert!(!outside.join("x").exists());

        // A symlink that stays inside the volume is fine (as the kubelet allows).
        symlink("a", base.join("alias")).unwrap();
        safe_make_dir(&base, Path::new("alias/c"), "alias/c", 0o755).unwrap();
        assert!(base.join("a/c").is_dir());
        assert!(open_beneath(&base, Path::new("alias")).is_err());
        assert!(open_beneath(&base, Path::new("a/c")).is_ok());
    }
}
