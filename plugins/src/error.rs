//! The one error type of this crate.
//!
//! Every variant names what it failed on: a pod-spec field path
//! (`spec.volumes[2].configMap`, `spec.containers[0].volumeMounts[1].name`) for
//! errors in the spec, a host path for errors on the node.

use std::io;
use std::path::PathBuf;

/// Errors of volume set-up, tear-down and container mount preparation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec asks for something this agent does not implement (yet).
    ///
    /// `field` is the spec path, `what` says what is unsupported; for a volume
    /// source the message reads `spec.volumes[2].configMap: volume type not supported yet`.
    #[error("{field}: {what} not supported yet")]
    Unsupported {
        /// Spec path of the offending field.
        field: String,
        /// What is not supported (`volume type`, `subPathExpr`, …).
        what: String,
    },

    /// A spec field has a value the kubelet would reject.
    #[error("{field}: {reason}")]
    Invalid {
        /// Spec path of the offending field.
        field: String,
        /// Why it is rejected.
        reason: String,
    },

    /// Setting up one volume of the pod failed; `field` is `spec.volumes[i]`.
    #[error("{field} ({name:?}): {source}")]
    Volume {
        /// `spec.volumes[i]`.
        field: String,
        /// The volume's name.
        name: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// A filesystem operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`create directory`, `remove`, …).
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Mounting at `path` failed.
    #[error("mount {what} at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What was being mounted (`tmpfs`, `bind of /proc/self/fd/7`).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Unmounting `path` failed.
    #[error("unmount {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The mount table (`/proc/self/mountinfo`) could not be read.
    #[error("read mount table: {source}")]
    MountTable {
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A directory was not removed because something under it is still mounted.
    #[error("refusing to remove {path}: {mount_point} is still a mount point")]
    StillMounted {
        /// The directory that was to be removed.
        path: PathBuf,
        /// The mount point found under it.
        mount_point: PathBuf,
    },

    /// A hostPath volume's path does not exist (for a `type` that requires it).
    #[error("hostPath {path} doesn't exist")]
    HostPathMissing {
        /// The host path.
        path: PathBuf,
    },

    /// A hostPath volume's path exists but is not of the declared `type`.
    #[error("hostPath type check failed: {path} is not a {expected}, it's a {actual}")]
    HostPathType {
        /// The host path.
        path: PathBuf,
        /// The declared type (`directory`, `socket file`, …).
        expected: &'static str,
        /// The type found (`file`, `directory`, `fifo`, …).
        actual: &'static str,
    },

    /// A `subPath` resolves (through symlinks) to outside its volume.
    #[error("subPath {sub_path:?} of volume {volume} resolves to {resolved}, outside the volume")]
    SubPathEscape {
        /// The volume's host path.
        volume: PathBuf,
        /// The `subPath` as written in the spec.
        sub_path: String,
        /// Where it resolved to.
        resolved: PathBuf,
    },
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// An [`Error::Io`] from a nix errno.
    pub(crate) fn errno(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::errno::Errno) -> Error {
        let path = path.into();
        move |errno| Error::Io {
            op,
            path,
            source: io::Error::from(errno),
        }
    }

    /// An [`Error::Invalid`].
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
