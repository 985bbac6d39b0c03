//! The kubelet's `AtomicWriter` (`pkg/volume/util/atomic_writer.go`): a
//! volume's files are replaced all at once, so a reader never sees a mix of
//! old and new contents.
//!
//! Layout of a target directory:
//!
//! ```text
//! <dir>/..1735830245.123456789   the current payload (a timestamped directory)
//! <dir>/..data -> ..1735830245.…  swapped atomically by rename(2) of `..data_tmp`
//! <dir>/<key>  -> ..data/<key>   one user-visible symlink per top-level path
//! ```
//!
//! A write whose payload equals the current one does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use super::ownership::{Ownership, set_volume_ownership};
use crate::error::{Error, Result};

/// The symlink to the current payload directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
}

/// Check a payload path: relative, no `..` element, not starting with `..`.
pub fn validate_path(field: &str, path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{path:?} must be a relative path"),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(
            field,
            format!("{path:?} must not contain '..'"),
        ));
    }
    if path.starts_with("..") {
        return Err(Error::invalid(
            field,
            format!("{path:?} must not start with '..'"),
        ));
    }
    Ok(())
}

/// Write `payload` (relative path → file) into `dir` atomically. Returns
/// true when something changed.
///
/// With `ownership` (the pod's `fsGroup`), the volume is given it after the
/// new files are written and before they become visible (upstream's
/// `setPerms` step), so a reader never sees a file without its group; the
/// current payload counts as unchanged only when it has that group and those
/// modes.
pub fn write(
    dir: &Path,
    payload: &BTreeMap<String, FileProjection>,
    ownership: Option<&Ownership>,
) -> Result<bool> {
    for path in payload.keys() {
        validate_path("path", path)?;
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(Error::io("create directory", dir))?;

    let data_link = dir.join(DATA_DIR);
    let current = match fs::read_link(&data_link) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read link", &data_link)(e)),
    };
    if let Some(cur) = &current
        && matches_payload(&dir.join(cur), payload, ownership)?
    {
        // Still make sure the user-visible links exist (a crash may have cut them).
        create_user_links(dir, payload)?;
        return Ok(false);
    }

    // The new payload directory.
    // Upstream names it after the wall-clock time; seconds.nanoseconds since
    // the epoch serve the same purpose (unique, sortable).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts_name = format!("..{}.{:09}", now.as_secs(), now.subsec_nanos());
    let ts_dir = dir.join(&ts_name);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&ts_dir)
        .map_err(Error::io("create directory", &ts_dir))?;
    for (path, file) in payload {
        let full = ts_dir.join(path);
        if let Some(parent) = full.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(Error::io("create directory", parent))?;
        }
        {
            use std::io::Write as _;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&full)
                .map_err(Error::io("create", &full))?;
            f.write_all(&file.data).map_err(Error::io("write", &full))?;
        }
        // The mode asked for, not the umask's version of it.
        fs::set_permissions(&full, fs::Permissions::from_mode(file.mode))
            .map_err(Error::io("chmod", &full))?;
    }

    if let Some(ownership) = ownership {
        set_volume_ownership(dir, ownership)?;
    }

    // Swap `..data` to the new directory in one rename.
    let tmp_link = dir.join(DATA_DIR_TMP);
    match fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &tmp_link)(e)),
    }
    std::os::unix::fs::symlink(&ts_name, &tmp_link).map_err(Error::io("symlink", &tmp_link))?;
    fs::rename(&tmp_link, &data_link).map_err(Error::io("rename", &data_link))?;

    create_user_links(dir, payload)?;
    remove_stale_user_links(dir, payload)?;
    if let Some(old) = current {
        let old_dir = dir.join(&old);
        if old_dir != ts_dir {
            match fs::remove_dir_all(&old_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &old_dir)(e)),
            }
        }
    }
    Ok(true)
}

/// The top-level names of a payload (`a/b` → `a`).
fn top_level(payload: &BTreeMap<String, FileProjection>) -> BTreeSet<String> {
    payload
        .keys()
        .filter_map(|p| p.split('/').find(|s| !s.is_empty() && *s != "."))
        .map(str::to_string)
        .collect()
}

fn create_user_links(dir: &Path, payload: &BTreeMap<String, FileProjection>) -> Result<()> {
    for name in top_level(payload) {
        let link = dir.join(&name);
        match fs::symlink_metadata(&link) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &link)(e)),
        }
        std::os::unix::fs::symlink(Path::new(DATA_DIR).join(&name), &link)
            .map_err(Error::io("symlink", &link))?;
    }
    Ok(())
}

fn remove_stale_user_links(dir: &Path, payload: &BTreeMap<String, FileProjection>) -> Result<()> {
    let wanted = top_level(payload);
    for entry in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || wanted.contains(&name) {
            continue;
        }
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link {
            let path = entry.path();
            fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        }
    }
    Ok(())
}

/// True when `ts_dir` holds exactly `payload` (contents and modes, and the
/// group and modes of `ownership` when given).
fn matches_payload(
    ts_dir: &Path,
    payload: &BTreeMap<String, FileProjection>,
    ownership: Option<&Ownership>,
) -> Result<bool> {
    let mut found = 0usize;
    for (path, file) in payload {
        let full = ts_dir.join(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat", &full)(e)),
        };
        let (mode, group_ok) = match ownership {
            Some(o) => (o.file_mode(file.mode), meta.gid() == o.fs_group),
            None => (file.mode, true),
        };
        if !meta.is_file() || meta.permissions().mode() & 0o7777 != mode || !group_ok {
            return Ok(false);
        }
        let data = fs::read(&full).map_err(Error::io("read", &full))?;
        if data != file.data {
            return Ok(false);
        }
        found += 1;
    }
    // No extra files.
    Ok(count_files(ts_dir)? == found)
}

fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read directory", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        let ft = entry.file_type().map_err(Error::io("stat", entry.path()))?;
        if ft.is_dir() {
            n += count_files(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(items: &[(&str, &str, u32)]) -> BTreeMap<String, FileProjection> {
        items
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn writes_swaps_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(
            write(
                &dir,
                &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]),
                None
            )
            .unwrap()
        );
        let first = fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert!(first.to_string_lossy().starts_with(".."));
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        let mode = fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        // Same payload: nothing happens.
        assert!(
            !write(
                &dir,
                &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]),
                None
            )
            .unwrap()
        );
        assert_eq!(fs::read_link(dir.join(DATA_DIR)).unwrap(), first);

        // Changed: new directory, stale link and old directory gone.
        assert!(write(&dir, &payload(&[("a", "changed", 0o644)]), None).unwrap());
        let second = fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(
            fs::symlink_metadata(dir.join("sub")).is_err(),
            "stale link removed"
        );
        assert!(!dir.join(&first).exists(), "old payload removed");
        assert!(!dir.join("..data_tmp").exists());
    }

    #[test]
    fn rejects_escaping_paths() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "..hidden", ""] {
            assert!(
                write(tmp.path(), &payload(&[(bad, "x", 0o644)]), None).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn fs_group_is_given_before_the_swap_and_kept() {
        if !crate::volume::tests::require_root("fs_group_is_given_before_the_swap_and_kept") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let o = Ownership {
            fs_group: 3456,
            policy: super::super::FsGroupChangePolicy::Always,
            read_only: true,
        };
        let files = payload(&[("token", "t", 0o400), ("conf/a", "1", 0o644)]);
        assert!(write(&dir, &files, Some(&o)).unwrap());
        let meta = |p: &str| {
            let m = fs::metadata(dir.join(p)).unwrap();
            (m.gid(), m.permissions().mode() & 0o7777)
        };
        assert_eq!(meta("token"), (3456, 0o440));
        assert_eq!(meta("conf/a"), (3456, 0o644));
        assert_eq!(meta("conf"), (3456, 0o2755));
        assert_eq!(meta("."), (3456, 0o2755));
        // The owned payload is the current one: nothing is rewritten.
        assert!(!write(&dir, &files, Some(&o)).unwrap());
        // A file that lost its group is written again.
        std::os::unix::fs::chown(dir.join("token"), None, Some(0)).unwrap();
        assert!(write(&dir, &files, Some(&o)).unwrap());
        assert_eq!(meta("token"), (3456, 0o440));
    }
}
