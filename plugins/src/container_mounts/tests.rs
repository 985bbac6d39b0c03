use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use berth_cri::api;
use k8s_openapi::api::core::v1::{Container, HostAlias, SecurityContext, VolumeMount};

use super::*;
use crate::mount::MountCall;
use crate::volume::tests::{empty_dir, fake_manager, host_path, pod, require_root};

fn vm(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

fn container(name: &str, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: name.into(),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn privileged(mut c: Container) -> Container {
    c.security_context = Some(SecurityContext {
        privileged: Some(true),
        ..Default::default()
    });
    c
}

#[test]
fn volume_mounts_map_to_cri_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm_, _) = fake_manager(tmp.path());
    let hp = tmp.path().join("host");
    std::fs::create_dir(&hp).unwrap();
    let vols = vm_
        .set_up_pod(&pod(
            "m1",
            vec![empty_dir("cache"), host_path("logs", &hp, None)],
            vec![],
        ))
        .unwrap();
    let mut ro = vm("logs", "/var/log/app");
    ro.read_only = Some(true);
    ro.mount_propagation = Some("HostToContainer".into());
    let mut none = vm("cache", "/cache");
    none.mount_propagation = Some("None".into());
    let mut bidi = vm("logs", "relative");
    bidi.mount_propagation = Some("Bidirectional".into());
    let c = privileged(container("app", vec![none, ro, bidi]));
    let mounts = vm_.make_mounts(&c, 0, "spec.containers", &vols).unwrap();
    assert_eq!(mounts.len(), 3);

    assert_eq!(mounts[0].container_path, "/cache");
    assert_eq!(
        mounts[0].host_path,
        tmp.path()
            .join("pods/m1/volumes/kubernetes.io~empty-dir/cache")
            .to_string_lossy()
    );
    assert!(!mounts[0].readonly);
    assert!(mounts[0].selinux_relabel, "emptyDir is relabelled");
    assert_eq!(
        mounts[0].propagation,
        api::MountPropagation::PropagationPrivate as i32
    );

    assert_eq!(mounts[1].host_path, hp.to_string_lossy());
    assert!(mounts[1].readonly);
    assert!(!mounts[1].selinux_relabel, "hostPath is not relabelled");
    assert_eq!(
        mounts[1].propagation,
        api::MountPropagation::PropagationHostToContainer as i32
    );

    assert_eq!(mounts[2].container_path, "/relative");
    assert_eq!(
        mounts[2].propagation,
        api::MountPropagation::PropagationBidirectional as i32
    );
}

#[test]
fn propagation_mapping() {
    use api::MountPropagation as P;
    let f = "f";
    assert_eq!(
        translate_mount_propagation(f, None).unwrap(),
        P::PropagationPrivate
    );
    assert_eq!(
        translate_mount_propagation(f, Some("None")).unwrap(),
        P::PropagationPrivate
    );
    assert_eq!(
        translate_mount_propagation(f, Some("HostToContainer")).unwrap(),
        P::PropagationHostToContainer
    );
    assert_eq!(
        translate_mount_propagation(f, Some("Bidirectional")).unwrap(),
        P::PropagationBidirectional
    );
    assert_eq!(
        translate_mount_propagation(f, Some("rshared"))
            .unwrap_err()
            .to_string(),
        "f: invalid MountPropagation mode: \"rshared\""
    );
}

#[test]
fn make_mounts_errors_name_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = fake_manager(tmp.path());
    let vols = m
        .set_up_pod(&pod("m2", vec![empty_dir("cache")], vec![]))
        .unwrap();
    let field_of =
        |c: &Container, idx: usize, prefix: &str| match m.make_mounts(c, idx, prefix, &vols) {
            Err(Error::Invalid { field, .. }) | Err(Error::Unsupported { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };

    let c = container("app", vec![vm("cache", "/a"), vm("missing", "/b")]);
    assert_eq!(
        field_of(&c, 0, "spec.containers"),
        "spec.containers[0].volumeMounts[1].name"
    );
    let err = m.make_mounts(&c, 0, "spec.containers", &vols).unwrap_err();
    assert!(err.to_string().contains("\"missing\""), "{err}");

    let mut expr = vm("cache", "/a");
    expr.sub_path_expr = Some("$(POD_NAME)".into());
    let c = container("init", vec![expr]);
    assert_eq!(
        field_of(&c, 2, "spec.initContainers"),
        "spec.initContainers[2].volumeMounts[0].subPathExpr"
    );
    assert_eq!(
        m.make_mounts(&c, 2, "spec.initContainers", &vols)
            .unwrap_err()
            .to_string(),
        "spec.initContainers[2].volumeMounts[0].subPathExpr: subPathExpr not supported yet"
    );

    let mut bidi = vm("cache", "/a");
    bidi.mount_propagation = Some("Bidirectional".into());
    let c = container("app", vec![bidi]);
    assert_eq!(
        field_of(&c, 1, "spec.containers"),
        "spec.containers[1].volumeMounts[0].mountPropagation"
    );

    let mut bad = vm("cache", "/a");
    bad.mount_propagation = Some("Shared".into());
    assert_eq!(
        field_of(&container("app", vec![bad]), 0, "spec.containers"),
        "spec.containers[0].volumeMounts[0].mountPropagation"
    );

    let c = container("app", vec![vm("cache", "/a"), vm("cache", "/a")]);
    assert_eq!(
        field_of(&c, 0, "spec.containers"),
        "spec.containers[0].volumeMounts[1].mountPath"
    );

    let mut rro = vm("cache", "/a");
    rro.recursive_read_only = Some("Enabled".into());
    let c = container("app", vec![rro.clone()]);
    assert_eq!(
        field_of(&c, 0, "spec.containers"),
        "spec.containers[0].volumeMounts[0].recursiveReadOnly"
    );
    rro.read_only = Some(true);
    let mounts = m
        .make_mounts(&container("app", vec![rro]), 0, "spec.containers", &vols)
        .unwrap();
    assert!(mounts[0].recursive_read_only && mounts[0].readonly);
}

#[test]
fn sub_path_is_created_and_bind_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, fake) = fake_manager(tmp.path());
    let vols = m
        .set_up_pod(&pod("m3", vec![empty_dir("data")], vec![]))
        .unwrap();
    let mut sub = vm("data", "/srv");
    sub.sub_path = Some("a/b".into());
    let mut file_sub = vm("data", "/etc/app.conf");
    file_sub.sub_path = Some("conf".into());
    let vol_dir = vols.get("data").unwrap().host_path.clone();
    std::fs::write(vol_dir.join("conf"), b"k=v").unwrap();

    let mounts = m
        .make_mounts(
            &container("app", vec![sub, file_sub]),
            0,
            "spec.containers",
            &vols,
        )
        .unwrap();

    let created = vol_dir.join("a/b");
    assert!(created.is_dir());
    assert_eq!(
        std::fs::metadata(&created).unwrap().permissions().mode() & 0o7777,
        0o777,
        "subPath directories get the volume's mode"
    );
    let target0 = tmp.path().join("pods/m3/volume-subpaths/data/app/0");
    let target1 = tmp.path().join("pods/m3/volume-subpaths/data/app/1");
    assert_eq!(mounts[0].host_path, target0.to_string_lossy());
    assert_eq!(mounts[1].host_path, target1.to_string_lossy());
    assert!(target0.is_dir());
    assert!(target1.is_file(), "a file subPath gets a file mount point");
    let binds: Vec<(PathBuf, PathBuf)> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            MountCall::Bind { source, target } => Some((source, target)),
            _ => None,
        })
        .collect();
    assert_eq!(binds.len(), 2);
    assert!(binds[0].0.starts_with("/proc/self/fd/"), "{:?}", binds[0]);
    assert_eq!(binds[0].1, target0);

    // A restart of the container replaces its binds.
    m.make_mounts(
        &container(
            "app",
            vec![{
                let mut s = vm("data", "/srv");
                s.sub_path = Some("a/b".into());
                s
            }],
        ),
        0,
        "spec.containers",
        &vols,
    )
    .unwrap();
    assert!(fake.calls().contains(&MountCall::Unmount {
        target: target0.clone()
    }));

    // And the pod tear-down unmounts them.
    m.tear_down_pod("m3").unwrap();
    assert!(!fake.is_mounted(&target0));
    assert!(!tmp.path().join("pods/m3").exists());
}

#[test]
fn sub_path_rejects_backsteps_absolute_and_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, fake) = fake_manager(tmp.path());
    let vols = m
        .set_up_pod(&pod("m4", vec![empty_dir("data")], vec![]))
        .unwrap();
    let with_sub = |s: &str| {
        let mut v = vm("data", "/x");
        v.sub_path = Some(s.into());
        container("app", vec![v])
    };
    for bad in ["../other", "a/../../b", "/etc"] {
        match m.make_mounts(&with_sub(bad), 0, "spec.containers", &vols) {
            Err(Error::Invalid { field, .. }) => {
                assert_eq!(field, "spec.containers[0].volumeMounts[0].subPath")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }

    // A symlink a container left in the volume must not lead out of it.
    let outside = tempfile::tempdir().unwrap();
    let vol_dir = &vols.get("data").unwrap().host_path;
    symlink(outside.path(), vol_dir.join("escape")).unwrap();
    for sub in ["escape", "escape/new"] {
        match m.make_mounts(&with_sub(sub), 0, "spec.containers", &vols) {
            Err(Error::SubPathEscape { .. }) => {}
            other => panic!("{sub}: {other:?}"),
        }
    }
    assert!(!outside.path().join("new").exists());
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| matches!(c, MountCall::Bind { .. })),
        "nothing bound"
    );
}

#[test]
fn sub_path_real_bind_mount() {
    if !require_root("sub_path_real_bind_mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = VolumeManager::new(tmp.path());
    let vols = m
        .set_up_pod(&pod("m5", vec![empty_dir("data")], vec![]))
        .unwrap();
    let vol_dir = vols.get("data").unwrap().host_path.clone();
    std::fs::create_dir_all(vol_dir.join("sub")).unwrap();
    std::fs::write(vol_dir.join("sub/f"), b"seen").unwrap();
    let mut v = vm("data", "/x");
    v.sub_path = Some("sub".into());
    let mounts = m
        .make_mounts(&container("app", vec![v]), 0, "spec.containers", &vols)
        .unwrap();
    let target = PathBuf::from(&mounts[0].host_path);
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"seen");
    let real = target.canonicalize().unwrap();
    let mounted = |p: &Path| {
        crate::mount::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
            .iter()
            .any(|mp| mp.path == p)
    };
    assert!(mounted(&real));
    m.tear_down_pod("m5").unwrap();
    assert!(!mounted(&real));
    assert!(!tmp.path().join("pods/m5").exists());
}

#[test]
fn termination_message_file_and_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let pod_dir = tmp.path().join("pods/t1");
    let c = Container {
        name: "app".into(),
        ..Default::default()
    };
    let first = termination_message_mount(&c, &pod_dir).unwrap();
    assert_eq!(first.container_path, "/dev/termination-log");
    assert!(!first.readonly);
    let host = PathBuf::from(&first.host_path);
    assert_eq!(host.parent().unwrap(), pod_dir.join("containers/app"));
    let name = host.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.len() == 8 && name.chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    let meta = std::fs::metadata(&host).unwrap();
    assert!(meta.is_file() && meta.len() == 0);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o666);

    // A new file per container start.
    let custom = Container {
        termination_message_path: Some("/tmp/why".into()),
        ..c.clone()
    };
    let second = termination_message_mount(&custom, &pod_dir).unwrap();
    assert_eq!(second.container_path, "/tmp/why");
    assert_ne!(second.host_path, first.host_path);

    assert_eq!(
        read_termination_message(&host, 4096).unwrap().as_deref(),
        Some("")
    );
    std::fs::write(&host, b"0123456789").unwrap();
    assert_eq!(
        read_termination_message(&host, 4096).unwrap().as_deref(),
        Some("0123456789")
    );
    assert_eq!(
        read_termination_message(&host, 4).unwrap().as_deref(),
        Some("6789"),
        "the tail, as tail.ReadAtMost"
    );
    assert_eq!(
        read_termination_message(&pod_dir.join("nope"), 4096).unwrap(),
        None
    );
    let link = pod_dir.join("link");
    symlink(&host, &link).unwrap();
    assert!(
        read_termination_message(&link, 4096).is_err(),
        "symlinks are not followed"
    );

    let bad = Container {
        name: "../x".into(),
        ..Default::default()
    };
    assert!(termination_message_mount(&bad, &pod_dir).is_err());
}

#[test]
fn etc_hosts_for_pod_ip() {
    let tmp = tempfile::tempdir().unwrap();
    let pod_dir = tmp.path().join("pods/h1");
    let p = pod("h1", vec![], vec![]);
    let c = container("app", vec![]);
    let mount = etc_hosts_mount(&p, &c, &pod_dir, &["10.0.0.5".into()], "cluster.local")
        .unwrap()
        .unwrap();
    assert_eq!(mount.container_path, "/etc/hosts");
    assert_eq!(mount.host_path, pod_dir.join("etc-hosts").to_string_lossy());
    assert!(!mount.readonly && mount.selinux_relabel);
    let content = std::fs::read_to_string(pod_dir.join("etc-hosts")).unwrap();
    assert_eq!(
        content,
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\
         10.0.0.5\tweb\n"
    );
    assert_eq!(
        std::fs::metadata(pod_dir.join("etc-hosts"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );

    // hostname + subdomain + aliases, dual stack.
    let mut p2 = p.clone();
    if let Some(spec) = p2.spec.as_mut() {
        spec.hostname = Some("db-0".into());
        spec.subdomain = Some("db".into());
        spec.host_aliases = Some(vec![HostAlias {
            ip: "10.1.1.1".into(),
            hostnames: Some(vec!["foo.local".into(), "bar.local".into()]),
        }]);
    }
    etc_hosts_mount(
        &p2,
        &c,
        &pod_dir,
        &["10.0.0.5".into(), "fd00::5".into()],
        "cluster.local",
    )
    .unwrap()
    .unwrap();
    let content = std::fs::read_to_string(pod_dir.join("etc-hosts")).unwrap();
    assert!(
        content.ends_with(
            "fe00::2\tip6-allrouters\n\
             10.0.0.5\tdb-0.db.prod.svc.cluster.local\tdb-0\n\
             fd00::5\tdb-0.db.prod.svc.cluster.local\tdb-0\n\
             \n# Entries added by HostAliases.\n\
             10.1.1.1\tfoo.local\tbar.local\n"
        ),
        "{content}"
    );

    // No pod IP yet: no mount (the sandbox is still being created).
    assert!(
        etc_hosts_mount(&p, &c, &pod_dir, &[], "cluster.local")
            .unwrap()
            .is_none()
    );
    // The container mounts its own /etc/hosts.
    let own = container("app", vec![vm("x", "/etc/hosts")]);
    assert!(
        etc_hosts_mount(&p, &own, &pod_dir, &["10.0.0.5".into()], "cluster.local")
            .unwrap()
            .is_none()
    );
}

#[test]
fn etc_hosts_for_host_network() {
    let tmp = tempfile::tempdir().unwrap();
    let pod_dir = tmp.path().join("pods/h2");
    let mut p = pod("h2", vec![], vec![]);
    if let Some(spec) = p.spec.as_mut() {
        spec.host_network = Some(true);
    }
    let c = container("app", vec![]);
    // hostNetwork pods get the file even without pod IPs.
    let mount = etc_hosts_mount(&p, &c, &pod_dir, &[], "cluster.local")
        .unwrap()
        .unwrap();
    let content = std::fs::read_to_string(&mount.host_path).unwrap();
    let node = std::fs::read_to_string("/etc/hosts").unwrap();
    assert_eq!(
        content,
        format!("# Kubernetes-managed hosts file (host network).\n{node}")
    );

    // With aliases, from a given node file.
    let node_file = tmp.path().join("hosts");
    std::fs::write(&node_file, "127.0.0.1 localhost\n").unwrap();
    let aliases = [HostAlias {
        ip: "1.2.3.4".into(),
        hostnames: Some(vec!["a".into()]),
    }];
    assert_eq!(
        node_hosts_file_content(&node_file, &aliases).unwrap(),
        "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n\n# Entries added by HostAliases.\n1.2.3.4\ta\n"
    );
}

#[test]
fn hostname_and_domain() {
    let mut p = pod("h3", vec![], vec![]);
    assert_eq!(
        pod_hostname_and_domain(&p, "cluster.local").unwrap(),
        ("web".to_string(), None)
    );
    p.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b"));
    let (h, _) = pod_hostname_and_domain(&p, "cluster.local").unwrap();
    assert_eq!(h, "a".repeat(62), "truncated to 63, trailing '-' trimmed");
    if let Some(spec) = p.spec.as_mut() {
        spec.hostname = Some("Bad_Name".into());
    }
    assert!(matches!(
        pod_hostname_and_domain(&p, "cluster.local"),
        Err(Error::Invalid { field, .. }) if field == "spec.hostname"
    ));
    if let Some(spec) = p.spec.as_mut() {
        spec.hostname = Some("h".into());
        spec.subdomain = Some("s".into());
    }
    p.metadata.namespace = None;
    assert_eq!(
        pod_hostname_and_domain(&p, "example.org").unwrap(),
        (
            "h".to_string(),
            Some("s.default.svc.example.org".to_string())
        )
    );
}
