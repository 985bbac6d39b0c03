//! kubelet-style plugins behind traits.
//!
//! Volumes, for a standalone (static pod) agent:
//!
//! - [`VolumeManager::set_up_pod`] creates `<root-dir>/pods/<uid>` and sets up
//!   every `spec.volumes[]` through a [`VolumePlugin`] ([`EmptyDirPlugin`],
//!   [`HostPathPlugin`]), returning [`PodVolumes`].
//! - [`VolumeManager::make_mounts`] turns a container's `volumeMounts` into CRI
//!   [`api::Mount`](berth_cri::api::Mount)s (subPath, readOnly, propagation);
//!   [`etc_hosts_mount`] and [`termination_message_mount`] add the kubelet's
//!   managed `/etc/hosts` and termination-message file.
//! - [`VolumeManager::tear_down_pod`] unmounts and removes a pod's directory
//!   from its on-disk layout alone; [`VolumeManager::pod_dirs`] lists them.
//!
//! Mount syscalls go through the [`Mounter`] trait ([`SystemMounter`] for real,
//! `FakeMounter` with the `fake` feature).

mod container_mounts;
mod error;
mod fsutil;
pub mod mount;
pub mod volume;

pub use container_mounts::{
    DEFAULT_TERMINATION_MESSAGE_PATH, ETC_HOSTS_PATH, MAX_TERMINATION_MESSAGE_LENGTH,
    etc_hosts_mount, pod_hostname_and_domain, read_termination_message, termination_message_mount,
    translate_mount_propagation,
};
pub use error::{Error, Result};
pub use mount::{MountPoint, Mounter, SystemMounter};
pub use volume::{
    EmptyDirPlugin, HostPathPlugin, MountedVolume, PodInfo, PodVolumes, VolumeManager,
    VolumePlugin, plugin_dir_name,
};
