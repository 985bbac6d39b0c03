//! The configMap and secret volume plugins (the kubelet's `pkg/volume/configmap`
//! and `pkg/volume/secret`): the object's keys as files, written with the
//! [`atomic_writer`](super::atomic_writer) and rewritten on every set-up, so a
//! changed object reaches the pod's files at its next sync.
//!
//! The objects come through the [`ApiObjects`] trait (the agent implements it
//! over its API client), so this crate does not depend on a Kubernetes client.
//!
//! Secret volumes are a tmpfs (as upstream: secrets never touch the disk);
//! configMap volumes are plain directories. With `fsGroup`, every write gives
//! the volume that group, read-only ([`super::ownership`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{KeyToPath, Volume};

use super::atomic_writer::{self, FileProjection};
use super::{PodInfo, VolumePlugin, plugin_dir_name};
use crate::error::{Error, Result};
use crate::fsutil::{self, ensure_dir, validate_component};
use crate::mount::Mounter;

/// `defaultMode` when the spec leaves it out (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// The kind of an API object a pod references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    /// The singular lower-case name the kubelet's messages use (`configmap "x" not found`).
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        }
    }
}

/// A ConfigMap's or Secret's keys and values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ObjectData {
    /// ConfigMap `data` / Secret `data` (with `stringData` merged in).
    pub data: BTreeMap<String, Vec<u8>>,
    /// ConfigMap `binaryData` (files only, never env).
    pub binary_data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for ObjectData {
    // Never print values: they may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectData")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("binary_keys", &self.binary_data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where ConfigMaps and Secrets come from (the API server, through the agent).
pub trait ApiObjects: Send + Sync {
    /// The object, `Ok(None)` when it does not exist, `Err(message)` when it
    /// could not be had (the message names the object, never its data).
    fn get(
        &self,
        kind: ObjectKind,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Option<ObjectData>, String>;
}

/// [`ApiObjects`] without an API server: every lookup fails.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoApiServer;

impl ApiObjects for NoApiServer {
    fn get(
        &self,
        kind: ObjectKind,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Option<ObjectData>, String> {
        Err(format!(
            "couldn't get {} {namespace}/{name}: no API server (--kubeconfig) configured",
            kind.noun()
        ))
    }
}

/// The files of a configMap/secret volume: `items` (or every key) with modes.
/// A missing key is an error unless `optional`.
pub fn payload(
    kind: ObjectKind,
    name: &str,
    object: &ObjectData,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<BTreeMap<String, FileProjection>> {
    let default_mode = mode_bits("defaultMode", default_mode.unwrap_or(DEFAULT_MODE as i32))?;
    let lookup = |k: &str| object.data.get(k).or_else(|| object.binary_data.get(k));
    let mut out = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let Some(value) = lookup(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(Error::invalid(
                        format!("{}.items[{i}].key", field_of(kind)),
                        format!(
                            "{} references non-existent {} key: {}",
                            kind.noun(),
                            match kind {
                                ObjectKind::ConfigMap => "config",
                                ObjectKind::Secret => "secret",
                            },
                            item.key
                        ),
                    ));
                };
                atomic_writer::validate_path(
                    &format!("{}.items[{i}].path", field_of(kind)),
                    &item.path,
                )?;
                let mode = match item.mode {
                    Some(m) => mode_bits(&format!("{}.items[{i}].mode", field_of(kind)), m)?,
                    None => default_mode,
                };
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: value.clone(),
                        mode,
                    },
                );
            }
        }
        _ => {
            for (k, v) in object.data.iter().chain(object.binary_data.iter()) {
                atomic_writer::validate_path(&format!("{} {name:?} key", kind.noun()), k)?;
                out.insert(
                    k.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn field_of(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::ConfigMap => "configMap",
        ObjectKind::Secret => "secret",
    }
}

fn mode_bits(field: &str, mode: i32) -> Result<u32> {
    match u32::try_from(mode) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(Error::invalid(
            field,
            format!("{mode} must be a number between 0 and 0777 (octal), both inclusive"),
        )),
    }
}

/// What one plugin instance projects.
struct Projection {
    kind: ObjectKind,
    name: &'static str,
    objects: Arc<dyn ApiObjects>,
    mounter: Arc<dyn Mounter>,
}

impl Projection {
    fn volume_dir(&self, pod_dir: &Path, vol: &str) -> PathBuf {
        pod_dir
            .join("volumes")
            .join(plugin_dir_name(self.name))
            .join(vol)
    }

    fn set_up(&self, pod: &PodInfo, vol: &Volume) -> Result<PathBuf> {
        validate_component("name", &vol.name)?;
        let (object_name, items, default_mode, optional) = match self.kind {
            ObjectKind::ConfigMap => {
                let s = vol.config_map.clone().unwrap_or_default();
                (s.name, s.items, s.default_mode, s.optional.unwrap_or(false))
            }
            ObjectKind::Secret => {
                let s = vol.secret.clone().unwrap_or_default();
                (
                    s.secret_name.unwrap_or_default(),
                    s.items,
                    s.default_mode,
                    s.optional.unwrap_or(false),
                )
            }
        };
        let object = match self.objects.get(self.kind, &pod.namespace, &object_name) {
            Ok(Some(o)) => o,
            Ok(None) if optional => ObjectData::default(),
            Ok(None) => {
                return Err(Error::invalid(
                    field_of(self.kind),
                    format!("{} {object_name:?} not found", self.kind.noun()),
                ));
            }
            Err(message) => return Err(Error::invalid(field_of(self.kind), message)),
        };
        let files = payload(
            self.kind,
            &object_name,
            &object,
            items.as_deref(),
            default_mode,
            optional,
        )?;

        let dir = self.volume_dir(&pod.pod_dir, &vol.name);
        ensure_dir(&dir, 0o755)?;
        if self.kind == ObjectKind::Secret {
            // Secrets live in memory only, as upstream's tmpfs-backed secret volumes.
            let real = fsutil::canonical(&dir)?;
            let table = fsutil::mount_table(self.mounter.as_ref())?;
            if !table.iter().any(|m| m.path == real && m.fs_type == "tmpfs") {
                let size = pod.memory_limit.map(|l| format!("size={l}"));
                self.mounter
                    .mount_tmpfs(&real, size.as_deref())
                    .map_err(|source| Error::Mount {
                        path: dir.clone(),
                        what: "tmpfs".into(),
                        source,
                    })?;
            }
        }
        // Read-only to the pod: group read, never group write.
        let ownership = pod.ephemeral_ownership(true);
        if atomic_writer::write(&dir, &files, ownership.as_ref())? {
            // Keys only: values never reach the log.
            tracing::info!(
                pod = pod.uid,
                volume = vol.name,
                kind = self.kind.noun(),
                object = object_name,
                files = files.len(),
                "volume contents updated"
            );
        }
        Ok(dir)
    }

    fn tear_down(&self, pod_dir: &Path, vol_name: &str) -> Result<()> {
        validate_component("name", vol_name)?;
        fsutil::unmount_and_remove(self.mounter.as_ref(), &self.volume_dir(pod_dir, vol_name))
    }
}

/// `configMap` volumes: `<pod-dir>/volumes/kubernetes.io~configmap/<name>`.
pub struct ConfigMapPlugin(Projection);

impl ConfigMapPlugin {
    /// The plugin's name.
    pub const NAME: &'static str = "kubernetes.io/configmap";

    /// A plugin reading ConfigMaps from `objects`.
    pub fn new(objects: Arc<dyn ApiObjects>, mounter: Arc<dyn Mounter>) -> Self {
        Self(Projection {
            kind: ObjectKind::ConfigMap,
            name: Self::NAME,
            objects,
            mounter,
        })
    }
}

impl VolumePlugin for ConfigMapPlugin {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_support(&self, vol: &Volume) -> bool {
        vol.config_map.is_some()
    }

    fn set_up(&self, pod: &PodInfo, vol: &Volume) -> Result<PathBuf> {
        self.0.set_up(pod, vol)
    }

    fn tear_down(&self, pod_dir: &Path, vol_name: &str) -> Result<()> {
        self.0.tear_down(pod_dir, vol_name)
    }

    fn selinux_relabel(&self) -> bool {
        true
    }
}

/// `secret` volumes: a tmpfs at `<pod-dir>/volumes/kubernetes.io~secret/<name>`.
pub struct SecretPlugin(Projection);

impl SecretPlugin {
    /// The plugin's name.
    pub const NAME: &'static str = "kubernetes.io/secret";

    /// A plugin reading Secrets from `objects`, mounting its tmpfs through `mounter`.
    pub fn new(objects: Arc<dyn ApiObjects>, mounter: Arc<dyn Mounter>) -> Self {
        Self(Projection {
            kind: ObjectKind::Secret,
            name: Self::NAME,
            objects,
            mounter,
        })
    }
}

impl VolumePlugin for SecretPlugin {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_support(&self, vol: &Volume) -> bool {
        vol.secret.is_some()
    }

    fn set_up(&self, pod: &PodInfo, vol: &Volume) -> Result<PathBuf> {
        self.0.set_up(pod, vol)
    }

    fn tear_down(&self, pod_dir: &Path, vol_name: &str) -> Result<()> {
        self.0.tear_down(pod_dir, vol_name)
    }

    fn selinux_relabel(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::FakeMounter;
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, SecretVolumeSource};
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Objects(Mutex<HashMap<(ObjectKind, String), ObjectData>>);

    impl ApiObjects for Objects {
        fn get(
            &self,
            kind: ObjectKind,
            _ns: &str,
            name: &str,
        ) -> std::result::Result<Option<ObjectData>, String> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(&(kind, name.to_string()))
                .cloned())
        }
    }

    fn data(pairs: &[(&str, &str)]) -> ObjectData {
        ObjectData {
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            binary_data: BTreeMap::new(),
        }
    }

    fn pod(dir: &Path) -> PodInfo {
        PodInfo {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "p".into(),
            pod_dir: dir.join("pods/u1"),
            memory_limit: None,
            fs_group: None,
            fs_group_change_policy: Default::default(),
        }
    }

    #[test]
    fn config_map_volume_items_modes_updates_and_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Arc::new(Objects::default());
        objects.0.lock().unwrap().insert(
            (ObjectKind::ConfigMap, "cfg".into()),
            data(&[("a", "1"), ("b", "2")]),
        );
        let plugin = ConfigMapPlugin::new(objects.clone(), Arc::new(FakeMounter::new()));
        let vol = Volume {
            name: "v".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "cfg".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(tmp.path());
        let dir = plugin.set_up(&p, &vol).unwrap();
        assert!(dir.ends_with("volumes/kubernetes.io~configmap/v"));
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        let mode = std::fs::metadata(dir.join("b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);

        // Changed object: the files follow.
        objects
            .0
            .lock()
            .unwrap()
            .insert((ObjectKind::ConfigMap, "cfg".into()), data(&[("a", "new")]));
        plugin.set_up(&p, &vol).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "new");
        assert!(!dir.join("b").exists());

        // Items with a path and mode.
        let with_items = Volume {
            name: "w".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "cfg".into(),
                default_mode: Some(0o600),
                items: Some(vec![KeyToPath {
                    key: "a".into(),
                    path: "conf/a.txt".into(),
                    mode: Some(0o400),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let dir = plugin.set_up(&p, &with_items).unwrap();
        let mode = std::fs::metadata(dir.join("conf/a.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);

        // Missing object: an error naming it; optional: an empty volume.
        let missing = Volume {
            name: "m".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "nope".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = plugin.set_up(&p, &missing).unwrap_err().to_string();
        assert!(err.contains("configmap \"nope\" not found"), "{err}");
        let optional = Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "nope".into(),
                optional: Some(true),
                ..Default::default()
            }),
            ..missing
        };
        plugin.set_up(&p, &optional).unwrap();
    }

    #[test]
    fn secret_volume_is_a_tmpfs_and_missing_keys_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Arc::new(Objects::default());
        objects.0.lock().unwrap().insert(
            (ObjectKind::Secret, "s".into()),
            data(&[("token", "hunter2")]),
        );
        let mounter = Arc::new(FakeMounter::new());
        let plugin = SecretPlugin::new(objects, mounter.clone());
        let vol = Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(tmp.path());
        let dir = plugin.set_up(&p, &vol).unwrap();
        assert!(mounter.is_mounted(&std::fs::canonicalize(&dir).unwrap()));
        assert_eq!(
            std::fs::read_to_string(dir.join("token")).unwrap(),
            "hunter2"
        );
        plugin.set_up(&p, &vol).unwrap();
        assert_eq!(
            mounter
                .calls()
                .iter()
                .filter(|c| matches!(c, crate::mount::MountCall::Tmpfs { .. }))
                .count(),
            1,
            "mounted once"
        );
        let bad = Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                items: Some(vec![KeyToPath {
                    key: "absent".into(),
                    path: "x".into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..vol.clone()
        };
        let err = plugin.set_up(&p, &bad).unwrap_err().to_string();
        assert!(
            err.contains("secret references non-existent secret key: absent"),
            "{err}"
        );
        assert!(!format!("{:?}", data(&[("k", "hunter2")])).contains("hunter2"));
        plugin.tear_down(&p.pod_dir, "creds").unwrap();
        assert!(!dir.exists());
    }
}
