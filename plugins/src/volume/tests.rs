use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, HostPathVolumeSource, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::host_path::check_type;
use super::*;
use crate::mount::{FakeMounter, MountCall};

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when `test` can run: it needs root (mounts, chown to another group).
/// Otherwise it says why it skips, and fails under `CI=true`, where no tier
/// may skip.
pub(crate) fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !ci,
        "{test} needs root and CI=true: run the unit tests as root"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

pub(crate) fn pod(uid: &str, volumes: Vec<Volume>, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("prod".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(volumes),
            containers,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

pub(crate) fn memory_dir(name: &str, size_limit: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: size_limit.map(|s| Quantity(s.into())),
        }),
        ..Default::default()
    }
}

pub(crate) fn host_path(name: &str, path: &Path, type_: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string_lossy().into_owned(),
            type_: type_.map(str::to_string),
        }),
        ..Default::default()
    }
}

fn with_memory_limit(name: &str, limit: &str) -> Container {
    Container {
        name: name.into(),
        resources: Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity(limit.into()),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn fake_manager(root: &Path) -> (VolumeManager, Arc<FakeMounter>) {
    let fake = Arc::new(FakeMounter::new());
    (VolumeManager::with_mounter(root, fake.clone()), fake)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn in_mountinfo(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    crate::mount::parse_mountinfo(&text)
        .into_iter()
        .find(|m| m.path == path)
        .map(|m| m.fs_type)
}

#[test]
fn empty_dir_set_up_and_tear_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, fake) = fake_manager(tmp.path());
    let vols = vm
        .set_up_pod(&pod("u1", vec![empty_dir("cache")], vec![]))
        .unwrap();
    let dir = tmp
        .path()
        .join("pods/u1/volumes/kubernetes.io~empty-dir/cache");
    let cache = vols.get("cache").unwrap();
    assert_eq!(cache.host_path, dir);
    assert_eq!(cache.plugin, "kubernetes.io/empty-dir");
    assert!(cache.selinux_relabel);
    assert_eq!(vols.pod_dir, tmp.path().join("pods/u1"));
    assert_eq!(mode(&dir), 0o777);
    assert_eq!(mode(&tmp.path().join("pods/u1")), 0o750);
    assert!(fake.calls().is_empty(), "disk emptyDir mounts nothing");

    // Idempotent, keeps content.
    std::fs::write(dir.join("f"), b"data").unwrap();
    vm.set_up_pod(&pod("u1", vec![empty_dir("cache")], vec![]))
        .unwrap();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"data");

    EmptyDirPlugin::new(fake.clone())
        .tear_down(&tmp.path().join("pods/u1"), "cache")
        .unwrap();
    assert!(!dir.exists());
    // Tearing down again is fine.
    EmptyDirPlugin::new(fake)
        .tear_down(&tmp.path().join("pods/u1"), "cache")
        .unwrap();
}

#[test]
fn memory_medium_mounts_sized_tmpfs_once_fake() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, fake) = fake_manager(tmp.path());
    let p = pod(
        "u2",
        vec![memory_dir("shm", Some("64Mi"))],
        vec![
            with_memory_limit("a", "16Mi"),
            with_memory_limit("b", "16Mi"),
        ],
    );
    let vols = vm.set_up_pod(&p).unwrap();
    let dir = vols.get("shm").unwrap().host_path.canonicalize().unwrap();
    assert_eq!(
        fake.calls(),
        vec![MountCall::Tmpfs {
            target: dir.clone(),
            data: Some(format!("size={}", 32u64 << 20)),
        }],
        "pod limit (32Mi) is below sizeLimit (64Mi)"
    );
    vm.set_up_pod(&p).unwrap();
    assert_eq!(fake.calls().len(), 1, "already mounted: no second mount");

    vm.tear_down_pod("u2").unwrap();
    assert!(fake.calls().contains(&MountCall::Unmount { target: dir }));
    assert!(!tmp.path().join("pods/u2").exists());
}

#[test]
fn memory_medium_size_limit_and_kernel_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, fake) = fake_manager(tmp.path());
    vm.set_up_pod(&pod(
        "u3",
        vec![memory_dir("a", Some("1Mi")), memory_dir("b", None)],
        vec![Container::default()],
    ))
    .unwrap();
    let data: Vec<Option<String>> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            MountCall::Tmpfs { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(data, vec![Some("size=1048576".to_string()), None]);
}

#[test]
fn memory_medium_real_tmpfs() {
    if !require_root("memory_medium_real_tmpfs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let vm = VolumeManager::new(tmp.path());
    let vols = vm
        .set_up_pod(&pod("real1", vec![memory_dir("mem", Some("1Mi"))], vec![]))
        .unwrap();
    let dir = vols.get("mem").unwrap().host_path.canonicalize().unwrap();
    assert_eq!(in_mountinfo(&dir).as_deref(), Some("tmpfs"));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(dir.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("size=1024k"), "{line}");
    std::fs::write(dir.join("f"), b"in memory").unwrap();
    // Idempotent: no stacked second tmpfs.
    vm.set_up_pod(&pod("real1", vec![memory_dir("mem", Some("1Mi"))], vec![]))
        .unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(info.matches(dir.to_str().unwrap()).count(), 1);
    assert!(dir.join("f").exists());

    vm.tear_down_pod("real1").unwrap();
    assert_eq!(in_mountinfo(&dir), None);
    assert!(!tmp.path().join("pods/real1").exists());
}

#[test]
fn tear_down_pod_refuses_while_real_tmpfs_is_busy() {
    if !require_root("tear_down_pod_refuses_while_real_tmpfs_is_busy") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let vm = VolumeManager::new(tmp.path());
    let vols = vm
        .set_up_pod(&pod("busy", vec![memory_dir("mem", None)], vec![]))
        .unwrap();
    let dir = vols.get("mem").unwrap().host_path.canonicalize().unwrap();
    std::fs::write(dir.join("f"), b"x").unwrap();
    // An open file keeps the tmpfs busy: umount fails with EBUSY.
    let open = std::fs::File::open(dir.join("f")).unwrap();
    let err = vm.tear_down_pod("busy").unwrap_err();
    assert!(
        matches!(&err, Error::StillMounted { mount_point, .. } if *mount_point == dir),
        "{err}"
    );
    assert!(dir.join("f").exists(), "nothing deleted while mounted");
    drop(open);
    vm.tear_down_pod("busy").unwrap();
    assert_eq!(in_mountinfo(&dir), None);
    assert!(!tmp.path().join("pods/busy").exists());
}

#[test]
fn unsupported_volume_type_names_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, _) = fake_manager(tmp.path());
    let cm = Volume {
        name: "cfg".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: "cfg".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = vm
        .set_up_pod(&pod(
            "u4",
            vec![empty_dir("a"), host_path("b", tmp.path(), None), cm],
            vec![],
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.volumes[2].configMap: volume type not supported yet"
    );
    assert!(
        matches!(err, Error::Unsupported { ref field, .. } if field == "spec.volumes[2].configMap")
    );
}

#[test]
fn volume_without_source_is_empty_dir_and_two_sources_are_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, _) = fake_manager(tmp.path());
    let bare = Volume {
        name: "bare".into(),
        ..Default::default()
    };
    let vols = vm.set_up_pod(&pod("u5", vec![bare], vec![])).unwrap();
    assert_eq!(vols.get("bare").unwrap().plugin, EmptyDirPlugin::NAME);

    let mut two = empty_dir("two");
    two.host_path = Some(HostPathVolumeSource {
        path: "/tmp".into(),
        type_: None,
    });
    let err = vm.set_up_pod(&pod("u5", vec![two], vec![])).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.volumes[0]: may not specify more than 1 volume type"),
        "{err}"
    );

    let err = vm
        .set_up_pod(&pod("u5", vec![empty_dir("x"), empty_dir("x")], vec![]))
        .unwrap_err();
    assert!(err.to_string().starts_with("spec.volumes[1].name"), "{err}");
}

#[test]
fn plugin_errors_name_the_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, _) = fake_manager(tmp.path());
    let mut huge = empty_dir("huge");
    huge.empty_dir = Some(EmptyDirVolumeSource {
        medium: Some("HugePages-2Mi".into()),
        ..Default::default()
    });
    let err = vm
        .set_up_pod(&pod("u6", vec![empty_dir("ok"), huge], vec![]))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.volumes[1] (\"huge\"): emptyDir.medium"),
        "{err}"
    );
    let missing = host_path("hp", &tmp.path().join("nope"), Some("Directory"));
    let err = vm
        .set_up_pod(&pod("u6", vec![missing], vec![]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Volume { field, source, .. }
            if field == "spec.volumes[0]" && matches!(**source, Error::HostPathMissing { .. })),
        "{err}"
    );
}

#[test]
fn host_path_type_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    let file = tmp.path().join("file");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(&file, b"").unwrap();
    let sock = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let missing = tmp.path().join("missing");
    let dev_null = Path::new("/dev/null");
    let link_to_dir = tmp.path().join("link");
    symlink(&dir, &link_to_dir).unwrap();

    let ok = |p: &Path, t: &str| {
        check_type(p, t).unwrap_or_else(|e| panic!("{t} on {}: {e}", p.display()))
    };
    let type_err = |p: &Path, t: &str| match check_type(p, t) {
        Err(Error::HostPathType { .. }) => {}
        other => panic!("{t} on {}: expected type error, got {other:?}", p.display()),
    };
    let missing_err = |p: &Path, t: &str| match check_type(p, t) {
        Err(Error::HostPathMissing { .. }) => {}
        other => panic!("{t} on {}: expected missing, got {other:?}", p.display()),
    };

    // Unset: nothing is checked.
    ok(&missing, "");

    ok(&dir, "Directory");
    ok(&link_to_dir, "Directory");
    type_err(&file, "Directory");
    missing_err(&missing, "Directory");

    let created = tmp.path().join("new/nested/dir");
    ok(&created, "DirectoryOrCreate");
    assert!(created.is_dir());
    assert_eq!(mode(&created), 0o755 & !umask());
    ok(&dir, "DirectoryOrCreate");
    type_err(&file, "DirectoryOrCreate");

    ok(&file, "File");
    type_err(&dir, "File");
    missing_err(&missing, "File");

    let new_file = tmp.path().join("new-file");
    ok(&new_file, "FileOrCreate");
    assert!(new_file.is_file());
    assert_eq!(std::fs::metadata(&new_file).unwrap().len(), 0);
    assert_eq!(mode(&new_file), 0o644 & !umask());
    ok(&file, "FileOrCreate");
    type_err(&dir, "FileOrCreate");
    // FileOrCreate does not create parent directories (as the kubelet).
    assert!(matches!(
        check_type(&tmp.path().join("no-parent/file"), "FileOrCreate"),
        Err(Error::Io { .. })
    ));

    ok(&sock, "Socket");
    type_err(&file, "Socket");
    missing_err(&missing, "Socket");

    ok(dev_null, "CharDevice");
    type_err(&file, "CharDevice");
    missing_err(&missing, "CharDevice");

    type_err(dev_null, "BlockDevice");
    missing_err(&missing, "BlockDevice");
    match find_block_device() {
        Some(blk) => ok(&blk, "BlockDevice"),
        None => eprintln!("no block device under /dev: BlockDevice pass case not run"),
    }

    let err = check_type(&dir, "Dir").unwrap_err();
    assert_eq!(
        err.to_string(),
        "hostPath.type: Dir is an invalid volume type"
    );
    let err = check_type(&file, "Directory").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "hostPath type check failed: {} is not a directory, it's a file",
            file.display()
        )
    );
}

/// The process umask, read without changing it (tests run in parallel).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

fn find_block_device() -> Option<PathBuf> {
    std::fs::read_dir("/dev").ok()?.flatten().find_map(|e| {
        use std::os::unix::fs::FileTypeExt;
        let p = e.path();
        std::fs::metadata(&p)
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .map(|_| p)
    })
}

#[test]
fn host_path_validates_path_and_does_not_tear_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, _) = fake_manager(tmp.path());
    let info = vm.pod_info(&pod("u7", vec![], vec![])).unwrap();
    let plugin = HostPathPlugin;
    let vol = |path: &str| Volume {
        name: "h".into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        plugin.set_up(&info, &vol("/var/log")).unwrap(),
        PathBuf::from("/var/log")
    );
    for bad in ["", "relative/path", "/var/../etc"] {
        assert!(
            matches!(plugin.set_up(&info, &vol(bad)), Err(Error::Invalid { .. })),
            "{bad}"
        );
    }
    let target = tmp.path().join("keep");
    std::fs::create_dir(&target).unwrap();
    plugin.tear_down(&info.pod_dir, "h").unwrap();
    assert!(target.exists());
}

#[test]
fn tear_down_pod_without_spec_removes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    let fake = Arc::new(FakeMounter::new());
    {
        let vm = VolumeManager::with_mounter(tmp.path(), fake.clone());
        let vols = vm
            .set_up_pod(&pod(
                "u8",
                vec![
                    empty_dir("disk"),
                    memory_dir("mem", None),
                    host_path("host", outside.path(), Some("Directory")),
                ],
                vec![],
            ))
            .unwrap();
        let disk = &vols.get("disk").unwrap().host_path;
        std::fs::create_dir_all(disk.join("a/b")).unwrap();
        std::fs::write(disk.join("a/b/file"), b"x").unwrap();
        // A container wrote a symlink to the host into its emptyDir.
        symlink(outside.path(), disk.join("escape")).unwrap();
        std::fs::create_dir_all(tmp.path().join("pods/u8/containers/c")).unwrap();
        std::fs::write(tmp.path().join("pods/u8/etc-hosts"), b"").unwrap();
    }
    assert_eq!(
        VolumeManager::with_mounter(tmp.path(), fake.clone())
            .pod_dirs()
            .unwrap(),
        vec!["u8"]
    );
    // "After a restart": a new manager, only the uid.
    let vm = VolumeManager::with_mounter(tmp.path(), fake.clone());
    vm.tear_down_pod("u8").unwrap();
    assert!(!tmp.path().join("pods/u8").exists());
    assert!(vm.pod_dirs().unwrap().is_empty());
    let mem = tmp
        .path()
        .canonicalize()
        .unwrap()
        .join("pods/u8/volumes/kubernetes.io~empty-dir/mem");
    assert!(fake.calls().contains(&MountCall::Unmount {
        target: mem.clone()
    }));
    assert!(!fake.is_mounted(&mem));
    assert_eq!(
        std::fs::read(outside.path().join("precious")).unwrap(),
        b"keep"
    );
    // Missing pod dir: nothing to do.
    vm.tear_down_pod("u8").unwrap();
    assert!(matches!(
        vm.tear_down_pod("../etc"),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn tear_down_pod_refuses_when_a_mount_cannot_be_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, fake) = fake_manager(tmp.path());
    let vols = vm
        .set_up_pod(&pod("u9", vec![memory_dir("mem", None)], vec![]))
        .unwrap();
    let mem = vols.get("mem").unwrap().host_path.canonicalize().unwrap();
    std::fs::write(mem.join("data"), b"x").unwrap();
    fake.set_busy(&mem);
    let err = vm.tear_down_pod("u9").unwrap_err();
    assert!(
        matches!(&err, Error::StillMounted { mount_point, .. } if *mount_point == mem),
        "{err}"
    );
    assert!(mem.join("data").exists());
    assert_eq!(vm.pod_dirs().unwrap(), vec!["u9"]);

    // A mount the agent did not make (an unknown plugin's, a stray bind) is
    // unmounted too; if that fails, nothing is removed either.
    let tmp2 = tempfile::tempdir().unwrap();
    let (vm2, fake2) = fake_manager(tmp2.path());
    let stray = tmp2
        .path()
        .canonicalize()
        .unwrap()
        .join("pods/u10/volumes/x~y/v");
    std::fs::create_dir_all(&stray).unwrap();
    fake2.add_mount(&stray, "nfs");
    fake2.set_busy(&stray);
    assert!(matches!(
        vm2.tear_down_pod("u10"),
        Err(Error::StillMounted { .. })
    ));
    assert!(stray.exists());
}

#[test]
fn pod_dirs_lists_directories_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, _) = fake_manager(tmp.path());
    assert!(vm.pod_dirs().unwrap().is_empty(), "no pods dir yet");
    std::fs::create_dir_all(tmp.path().join("pods/b")).unwrap();
    std::fs::create_dir_all(tmp.path().join("pods/a")).unwrap();
    std::fs::write(tmp.path().join("pods/file"), b"").unwrap();
    symlink(tmp.path(), tmp.path().join("pods/link")).unwrap();
    assert_eq!(vm.pod_dirs().unwrap(), vec!["a", "b"]);
    // A symlink in place of a pod dir is removed, never followed.
    vm.tear_down_pod("link").unwrap();
    assert!(tmp.path().join("pods/a").exists());
    assert!(!tmp.path().join("pods/link").exists());
}

#[test]
fn fs_group_owns_empty_dir() {
    if !require_root("fs_group_owns_empty_dir") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (vm, _) = fake_manager(tmp.path());
    let mut p = pod("u11", vec![empty_dir("data")], vec![]);
    if let Some(spec) = p.spec.as_mut() {
        spec.security_context = Some(PodSecurityContext {
            fs_group: Some(2345),
            ..Default::default()
        });
    }
    let vols = vm.set_up_pod(&p).unwrap();
    let dir = &vols.get("data").unwrap().host_path;
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(meta.gid(), 2345);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o2777);
    let ready = tmp
        .path()
        .join("pods/u11/plugins/kubernetes.io~empty-dir/data/ready");
    assert!(ready.exists(), "set-up marked ready");

    // Set up once, as upstream: later syncs leave what the pod did alone.
    let file = dir.join("private");
    std::fs::write(&file, b"x").unwrap();
    // (The setgid directory gave it group 2345; the pod changes that.)
    std::os::unix::fs::chown(&file, None, Some(0)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    vm.set_up_pod(&p).unwrap();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::metadata(&file).unwrap().gid(), 0);
    assert_eq!(mode(dir), 0o2770);

    // Without the marker (an agent that died mid-set-up) it is done again, all of it.
    std::fs::remove_file(&ready).unwrap();
    vm.set_up_pod(&p).unwrap();
    assert_eq!(mode(&file), 0o660);
    assert_eq!(std::fs::metadata(&file).unwrap().gid(), 2345);
    assert_eq!(mode(dir), 0o2777);

    EmptyDirPlugin::new(Arc::new(FakeMounter::new()))
        .tear_down(&tmp.path().join("pods/u11"), "data")
        .unwrap();
    assert!(!dir.exists());
    assert!(!ready.exists(), "the marker goes with the volume");
}

#[test]
fn pod_memory_limit_as_pod_cgroup() {
    let mut p = pod(
        "u12",
        vec![],
        vec![
            with_memory_limit("a", "100Mi"),
            with_memory_limit("b", "50Mi"),
        ],
    );
    assert_eq!(pod_memory_limit(&p), Some(150 << 20));
    if let Some(spec) = p.spec.as_mut() {
        let mut sidecar = with_memory_limit("side", "10Mi");
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers = Some(vec![with_memory_limit("init", "500Mi"), sidecar]);
    }
    assert_eq!(pod_memory_limit(&p), Some(500 << 20));
    if let Some(spec) = p.spec.as_mut() {
        spec.containers.push(Container::default());
    }
    assert_eq!(pod_memory_limit(&p), None, "a container without a limit");
}
