//! Hostile input to the manifest directory (issue 11): a corpus of broken,
//! absurd and tricky files beside one good manifest. Each bad file is refused
//! with an error naming the file (and the field where there is one); none
//! hangs or crashes the scan, and the good pod is read every time.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_agent::source::file::{SeenMemory, scan};

const NODE: &str = "node-a";

const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  containers:\n  - {name: c, image: busybox:1.36}\n";

fn pod_with(container_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bad}}\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n{container_extra}"
    )
}

/// (file name, contents, the field the error must name, a word its reason must hold)
fn corpus() -> Vec<(String, Vec<u8>, Option<&'static str>, &'static str)> {
    let mut c: Vec<(String, Vec<u8>, Option<&'static str>, &'static str)> = vec![
        ("malformed.yaml".into(), b"kind: Pod\nmetadata: {name: x\n".to_vec(), None, ""),
        ("malformed.json".into(), b"{\"kind\": \"Pod\", ".to_vec(), None, ""),
        ("wrong-type.yaml".into(), b"apiVersion: v1\nkind: Pod\nmetadata: {name: 5}\nspec: {containers: 7}\n".to_vec(), None, ""),
        ("unknown-kind.yaml".into(), b"apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n".to_vec(), None, "Pod"),
        ("bad-name.yaml".into(), GOOD.replace("name: good", "name: Bad_Name!").into_bytes(), Some("metadata.name"), ""),
        ("bad-label.yaml".into(), GOOD.replace("{name: good}", "{name: lab, labels: {'-x': 'a b'}}").into_bytes(), Some("metadata.labels"), ""),
        ("negative-cpu.yaml".into(), pod_with("    resources: {requests: {cpu: '-1'}}\n").into_bytes(), Some("spec.containers[0].resources.requests"), ""),
        ("absurd-quantity.yaml".into(), pod_with("    resources: {limits: {memory: '1e999999'}}\n").into_bytes(), Some("spec.containers[0].resources"), ""),
        ("request-over-limit.yaml".into(), pod_with("    resources: {requests: {cpu: 1T}, limits: {cpu: 1}}\n").into_bytes(), Some("spec.containers[0].resources.requests"), ""),
        ("empty.yaml".into(), Vec::new(), None, ""),
        ("null.yaml".into(), b"null\n".to_vec(), None, ""),
        ("deep.json".into(), format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), None, ""),
        ("deep.yaml".into(), format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), None, ""),
        ("alias-bomb.yaml".into(), b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n".to_vec(), None, ""),
        ("binary.yaml".into(), (0..=255u8).cycle().take(4096).collect(), None, ""),
        ("two-docs.yaml".into(), format!("{GOOD}---\n{GOOD}").into_bytes(), None, ""),
    ];
    // A 9 MB string (under the size limit): refused by validation, not by
    // running out of memory.
    let long = "x".repeat(9 * 1024 * 1024);
    c.push((
        "long-string.yaml".into(),
        GOOD.replace("name: good", &format!("name: {long}"))
            .into_bytes(),
        Some("metadata.name"),
        "",
    ));
    // Over the size limit.
    c.push((
        "huge.yaml".into(),
        vec![b'#'; 11 * 1024 * 1024],
        None,
        "larger than the 10 MiB limit",
    ));
    c
}

#[test]
fn every_hostile_manifest_is_refused_by_name_and_the_good_pod_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), GOOD).unwrap();
    let corpus = corpus();
    for (name, bytes, _, _) in &corpus {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    // Special files named like manifests: never opened, never a hang.
    nix::unistd::mkfifo(&dir.path().join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink("loop-b.yaml", dir.path().join("loop-a.yaml")).unwrap();
    std::os::unix::fs::symlink("loop-a.yaml", dir.path().join("loop-b.yaml")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/pod.yaml", dir.path().join("dangling.yaml")).unwrap();
    // A symlink out of the directory to a good manifest is followed, as the
    // kubelet's os.Stat does (the directory is root's; config management
    // links manifests in).
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("linked.yaml"),
        GOOD.replace("name: good", "name: linked"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("linked.yaml"),
        dir.path().join("linked.yaml"),
    )
    .unwrap();

    let started = Instant::now();
    let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "the scan took {took:?}");

    let names: Vec<_> = snap
        .pods
        .iter()
        .filter_map(|p| p.pod.metadata.name.clone())
        .collect();
    assert_eq!(
        names,
        ["good-node-a", "linked-node-a"],
        "{:#?}",
        snap.errors
    );
    let error_of = |file: &str| {
        let path = dir.path().join(file);
        snap.errors
            .iter()
            .find(|e| e.file == path)
            .unwrap_or_else(|| panic!("no error for {file}: {:#?}", snap.errors))
            .clone()
    };
    for (name, _, field, word) in &corpus {
        let e = error_of(name);
        assert!(!e.reason.is_empty(), "{name}: an empty reason");
        assert!(
            e.reason.len() < 2048,
            "{name}: a reason of {} bytes",
            e.reason.len()
        );
        if let Some(field) = field {
            let got = e.field.as_deref().unwrap_or_default();
            assert!(
                got.starts_with(field),
                "{name}: field {got:?}, want {field}: {e}"
            );
        }
        assert!(e.reason.contains(word), "{name}: {e}");
        // The error names the file when displayed.
        assert!(e.to_string().contains(name.as_str()), "{e}");
    }
    assert!(error_of("fifo.yaml").reason.contains("not a regular file"));
    assert!(error_of("zero.yaml").reason.contains("not a regular file"));
    assert!(error_of("loop-a.yaml").reason.contains("cannot read"));
    // A dangling link is a file that vanished: nothing to read, no error.
    assert!(
        snap.errors
            .iter()
            .all(|e| e.file != dir.path().join("dangling.yaml"))
    );
}

/// A manifest rewritten while the agent reads it, over and over: every scan
/// sees either the old or the new pod or an error for that file, never a
/// crash, and the neighbour is always read.
#[test]
fn a_file_changing_while_read_never_breaks_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), GOOD).unwrap();
    let path = dir.path().join("flux.yaml");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = GOOD.replace("name: good", &format!("name: flux-{}", i % 7));
                // Truncate-and-write (not atomic): readers may see it half done.
                std::fs::write(&path, &text[..text.len() * ((i % 3) as usize + 1) / 3]).ok();
                i += 1;
            }
        })
    };
    let mut seen = SeenMemory::new();
    for _ in 0..200 {
        let snap = scan(dir.path(), NODE, &mut seen);
        assert!(
            snap.pods
                .iter()
                .any(|p| p.pod.metadata.name.as_deref() == Some("good-node-a")),
            "{:#?}",
            snap.errors
        );
        assert!(snap.pods.len() <= 2);
        assert!(
            snap.errors.iter().all(|e| e.file == path),
            "{:#?}",
            snap.errors
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(Path::new(&path).exists());
}
