//! The mount syscalls behind a small trait, so that volume code can be unit
//! tested with a recording fake (`FakeMounter`, feature `fake`) and run for
//! real with [`SystemMounter`].

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    /// Where it is mounted (field 5, unescaped).
    pub path: PathBuf,
    /// Filesystem type (`tmpfs`, `ext4`, …).
    pub fs_type: String,
    /// Mount source (`tmpfs`, `/dev/vda1`, …).
    pub source: String,
}

/// Mount, bind and unmount: the only syscalls the volume plugins need.
///
/// Paths passed in are absolute host paths; implementations must not follow a
/// symlink at the final component when unmounting.
pub trait Mounter: Send + Sync {
    /// Mount a new tmpfs at `target`; `data` is the tmpfs option string
    /// (`size=67108864`) or `None` for the kernel defaults.
    fn mount_tmpfs(&self, target: &Path, data: Option<&str>) -> io::Result<()>;

    /// Bind-mount `source` onto `target`, non-recursively (`mount --bind`).
    /// `source` may be a `/proc/self/fd/N` magic link.
    fn bind(&self, source: &Path, target: &Path) -> io::Result<()>;

    /// Unmount the topmost mount at `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;

    /// The current mount table of this process.
    fn mount_table(&self) -> io::Result<Vec<MountPoint>>;
}

/// The real [`Mounter`]: `mount(2)`/`umount2(2)` through nix, the mount table
/// from `/proc/self/mountinfo`. Needs `CAP_SYS_ADMIN`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount_tmpfs(&self, target: &Path, data: Option<&str>) -> io::Result<()> {
        // The kubelet mounts memory-backed emptyDirs with no flags besides size=.
        nix::mount::mount(Some("tmpfs"), target, Some("tmpfs"), MsFlags::empty(), data)?;
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW)?;
        Ok(())
    }

    fn mount_table(&self) -> io::Result<Vec<MountPoint>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(parse_mountinfo(&text))
    }
}

/// Parse the text of `/proc/<pid>/mountinfo` (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountPoint> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            let path = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?;
            let source = right.next().unwrap_or_default();
            Some(MountPoint {
                path: PathBuf::from(unescape_octal(path)),
                fs_type: unescape_octal(fs_type),
                source: unescape_octal(source),
            })
        })
        .collect()
}

/// Undo the kernel's `\ooo` escaping of space, tab, newline and backslash in mountinfo.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir` (component-wise), deepest first. A path with
/// stacked mounts appears once per mount, so unmounting each entry in order
/// peels all of them.
pub(crate) fn mounts_under(table: &[MountPoint], dir: &Path) -> Vec<PathBuf> {
    let mut under: Vec<PathBuf> = table
        .iter()
        .filter(|m| m.path.starts_with(dir))
        .map(|m| m.path.clone())
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    under
}

#[cfg(any(test, feature = "fake"))]
pub use fake::{FakeMounter, MountCall};

#[cfg(any(test, feature = "fake"))]
mod fake {
    use std::collections::HashSet;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, MutexGuard};

    use super::{MountPoint, Mounter};

    /// One call made to a [`FakeMounter`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum MountCall {
        /// [`Mounter::mount_tmpfs`].
        Tmpfs {
            /// Mount point.
            target: PathBuf,
            /// Option string.
            data: Option<String>,
        },
        /// [`Mounter::bind`].
        Bind {
            /// Bind source.
            source: PathBuf,
            /// Mount point.
            target: PathBuf,
        },
        /// [`Mounter::unmount`].
        Unmount {
            /// Mount point.
            target: PathBuf,
        },
    }

    #[derive(Debug, Default)]
    struct State {
        calls: Vec<MountCall>,
        table: Vec<MountPoint>,
        busy: HashSet<PathBuf>,
    }

    /// A [`Mounter`] that records calls and keeps an in-memory mount table
    /// instead of touching the kernel (youki-style test double).
    #[derive(Debug, Default)]
    pub struct FakeMounter {
        state: Mutex<State>,
    }

    impl FakeMounter {
        /// An empty fake with no mounts.
        pub fn new() -> Self {
            Self::default()
        }

        fn state(&self) -> MutexGuard<'_, State> {
            // A panicking test thread must not hide the calls from the others.
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Every call so far, in order.
        pub fn calls(&self) -> Vec<MountCall> {
            self.state().calls.clone()
        }

        /// Pretend `path` is mounted (with `fs_type`).
        pub fn add_mount(&self, path: impl Into<PathBuf>, fs_type: &str) {
            self.state().table.push(MountPoint {
                path: path.into(),
                fs_type: fs_type.into(),
                source: fs_type.into(),
            });
        }

        /// Make every later unmount of `path` fail with `EBUSY`.
        pub fn set_busy(&self, path: impl Into<PathBuf>) {
            self.state().busy.insert(path.into());
        }

        /// Whether `path` is in the fake mount table.
        pub fn is_mounted(&self, path: &Path) -> bool {
            self.state().table.iter().any(|m| m.path == path)
        }
    }

    impl Mounter for FakeMounter {
        fn mount_tmpfs(&self, target: &Path, data: Option<&str>) -> io::Result<()> {
            let mut state = self.state();
            state.calls.push(MountCall::Tmpfs {
                target: target.to_path_buf(),
                data: data.map(str::to_string),
            });
            state.table.push(MountPoint {
                path: target.to_path_buf(),
                fs_type: "tmpfs".into(),
                source: "tmpfs".into(),
            });
            Ok(())
        }

        fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
            let mut state = self.state();
            state.calls.push(MountCall::Bind {
                source: source.to_path_buf(),
                target: target.to_path_buf(),
            });
            state.table.push(MountPoint {
                path: target.to_path_buf(),
                fs_type: "bind".into(),
                source: source.display().to_string(),
            });
            Ok(())
        }

        fn unmount(&self, target: &Path) -> io::Result<()> {
            let mut state = self.state();
            state.calls.push(MountCall::Unmount {
                target: target.to_path_buf(),
            });
            if state.busy.contains(target) {
                return Err(io::Error::from_raw_os_error(nix::libc::EBUSY));
            }
            match state.table.iter().rposition(|m| m.path == target) {
                Some(i) => {
                    state.table.remove(i);
                    Ok(())
                }
                None => Err(io::Error::from_raw_os_error(nix::libc::EINVAL)),
            }
        }

        fn mount_table(&self) -> io::Result<Vec<MountPoint>> {
            Ok(self.state().table.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
42 22 0:39 / /var/lib/berth/pods/u1/volumes/kubernetes.io~empty-dir/my\\040vol rw,relatime shared:7 master:3 - tmpfs tmpfs rw,size=1024k
garbage line
";
        let table = parse_mountinfo(text);
        assert_eq!(table.len(), 2);
        assert_eq!(table[0].path, PathBuf::from("/"));
        assert_eq!(table[0].fs_type, "ext4");
        assert_eq!(
            table[1].path,
            PathBuf::from("/var/lib/berth/pods/u1/volumes/kubernetes.io~empty-dir/my vol")
        );
        assert_eq!(table[1].fs_type, "tmpfs");
        assert_eq!(unescape_octal("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn mounts_under_is_component_wise_and_deepest_first() {
        let mp = |p: &str| MountPoint {
            path: p.into(),
            fs_type: "tmpfs".into(),
            source: "tmpfs".into(),
        };
        let table = vec![
            mp("/a/pod"),
            mp("/a/pod2"),
            mp("/a/pod/x/y"),
            mp("/a/pod/x"),
        ];
        assert_eq!(
            mounts_under(&table, Path::new("/a/pod")),
            vec![
                PathBuf::from("/a/pod/x/y"),
                PathBuf::from("/a/pod/x"),
                PathBuf::from("/a/pod")
            ]
        );
    }
}
