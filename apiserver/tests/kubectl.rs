//! The real `kubectl` against a started `berth-apiserver` (HTTPS, token auth).
//!
//! Skipped with a printed reason when kubectl is missing, unless `CI=true`
//! or `BERTH_REQUIRE_RUNTIME=1`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_test_support::{free_port, required};

fn kubectl_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

struct Apiserver {
    child: Child,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Apiserver {
    /// Start the server, or `None` (test skipped) when kubectl is missing.
    fn start() -> Option<Apiserver> {
        let Some(kubectl) = kubectl_binary() else {
            if required() {
                panic!("kubectl is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but not on PATH");
            }
            eprintln!("SKIPPED: kubectl not found on PATH");
            return None;
        };
        Some(Self::spawn(
            kubectl,
            tempfile::tempdir().unwrap(),
            free_port(),
        ))
    }

    /// Start the server on `dir` listening on `port`; wait until it is ready.
    fn spawn(kubectl: PathBuf, dir: tempfile::TempDir, port: u16) -> Apiserver {
        let child = Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Apiserver {
            child,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            kubectl,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if server.kubeconfig.exists()
                && server.run(&["get", "--raw", "/readyz"]).status.success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "berth-apiserver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Stop the server and start it again on the same data directory,
    /// listening on `port`.
    fn restart_on(mut self, port: u16) -> Apiserver {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let kubectl = self.kubectl.clone();
        drop(self);
        Self::spawn(kubectl, dir, port)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self._dir.path())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Run kubectl, assert success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self._dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  containers:
  - name: nginx
    image: nginx:1.27
";

fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn kubectl_basics() {
    let Some(k) = Apiserver::start() else { return };
    let ns = k.ok(&["get", "ns"]);
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }

    let res = k.ok(&["api-resources"]);
    for line in ["pods", "po", "Pod"] {
        assert!(res.contains(line), "{res}");
    }
    assert!(res.contains("coordination.k8s.io/v1"), "{res}");

    let pod = k.write("pod.yaml", POD);
    assert!(
        k.ok(&["apply", "-f", path_str(&pod)])
            .contains("pod/web created")
    );
    assert!(
        k.ok(&["apply", "-f", path_str(&pod)])
            .contains("pod/web unchanged")
    );
    let pod2 = k.write("pod2.yaml", &POD.replace("nginx:1.27", "nginx:1.28"));
    assert!(
        k.ok(&["apply", "-f", path_str(&pod2)])
            .contains("pod/web configured")
    );

    let pods = k.ok(&["get", "pods"]);
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert!(
        pods.contains("web") && pods.contains("0/1") && pods.contains("Pending"),
        "{pods}"
    );
    let wide = k.ok(&["get", "pods", "-o", "wide"]);
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );

    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "pod", "web", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["containers"][0]["image"], "nginx:1.28");
    assert!(
        json["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    assert!(
        k.ok(&["label", "pod", "web", "tier=fe"])
            .contains("pod/web labeled")
    );
    let labelled = k.ok(&["get", "pods", "-l", "tier=fe", "-o", "name"]);
    assert_eq!(labelled.trim(), "pod/web");

    assert!(
        k.ok(&["delete", "pod", "web", "--wait=false"])
            .contains("pod \"web\" deleted")
    );
    let after = k.run(&["get", "pod", "web"]);
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("NotFound"));
}

#[test]
fn kubectl_watch_streams_new_pods() {
    let Some(k) = Apiserver::start() else { return };
    let watcher = k
        .command(&["get", "pods", "-w", "--request-timeout=6s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pod = k.write("pod.yaml", &POD.replace("name: web", "name: streamed"));
    k.ok(&["create", "-f", path_str(&pod)]);
    let out = watcher.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("streamed"),
        "watch output: {stdout} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Pending"), "{stdout}");
}

#[test]
fn kubectl_apply_rejects_unknown_fields() {
    let Some(k) = Apiserver::start() else { return };
    let typo = k.write(
        "typo.yaml",
        &POD.replace(
            "    image: nginx:1.27\n",
            "    image: nginx:1.27\n    imagePullPolcy: Always\n",
        ),
    );
    let out = k.run(&["apply", "-f", path_str(&typo)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.containers[0].imagePullPolcy\""),
        "{err}"
    );
    let out = k.run(&["create", "-f", path_str(&typo)]);
    assert!(!out.status.success());
    // With --validate=warn it is created and the warning shown.
    let out = k.run(&["apply", "-f", path_str(&typo), "--validate=warn"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

/// The API server validates pods with berth-api's port of `ValidatePod`, and
/// the metadata of every kind: what the kubelet would refuse is refused at
/// `kubectl create`, with every cause named (issue 7).
#[test]
fn kubectl_create_refuses_what_upstream_validation_refuses() {
    let Some(k) = Apiserver::start() else { return };
    let bad = k.write(
        "bad.yaml",
        "apiVersion: v1
kind: Pod
metadata:
  name: bad
  labels:
    app: a b;c/d
spec:
  containers:
  - name: c
    image: busybox:1.36
    ports: [{containerPort: 70000}]
    resources:
      requests: {cpu: '2'}
      limits: {cpu: '1'}
",
    );
    for _ in 0..2 {
        let out = k.run(&["create", "-f", path_str(&bad)]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Pod \"bad\" is invalid"), "{err}");
        for field in [
            "metadata.labels: Invalid value: \"a b;c/d\"",
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].resources.requests[cpu]: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
        ] {
            assert!(err.contains(field), "{field} in {err}");
        }
    }
    let out = k.run(&["get", "pod", "bad"]);
    assert!(!out.status.success(), "nothing was stored");

    // Metadata is validated for every kind.
    let out = k.run(&["create", "configmap", "cm", "--from-literal=a=b"]);
    assert!(out.status.success());
    // (kubectl label checks values itself; a patch reaches the server.)
    let out = k.run(&[
        "patch",
        "configmap",
        "cm",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"x":"has space"}}}"#,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metadata.labels: Invalid value: \"has space\""),
        "{err}"
    );
    let big = k.write(
        "big.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\n  annotations:\n    big: {}\n",
            "x".repeat(300 * 1024)
        ),
    );
    let out = k.run(&["create", "-f", path_str(&big)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metadata.annotations: Too long: may not be more than 262144 bytes"),
        "{err}"
    );
}

/// Regressions (issue 7): the QoS class compares quantities (`1`/`64Mi` equals
/// `1000m`/`67108864`), and `x:latest@sha256:…` pulls Always, as upstream.
#[test]
fn kubectl_sees_upstream_qos_and_pull_policy() {
    let Some(k) = Apiserver::start() else { return };
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let pod = k.write(
        "pod.yaml",
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: g
spec:
  containers:
  - name: c
    image: busybox:latest@{digest}
    resources:
      requests: {{cpu: '1', memory: 64Mi}}
      limits: {{cpu: 1000m, memory: '67108864'}}
"
        ),
    );
    k.ok(&["create", "-f", path_str(&pod)]);
    let got = k.ok(&[
        "get",
        "pod",
        "g",
        "-o",
        "jsonpath={.status.qosClass} {.spec.containers[0].imagePullPolicy}",
    ]);
    assert_eq!(got.trim(), "Guaranteed Always");
}

/// `kubectl get -o yaml` writes a `kind: List`; applying it back must work with
/// kubectl's default validation (which checks Lists against /openapi/v2), and
/// an unknown field in one item is still refused, by this server.
#[test]
fn kubectl_apply_of_a_list() {
    let Some(k) = Apiserver::start() else { return };
    let list = k.write(
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {x: \"1\"}}\n\
         - {apiVersion: v1, kind: ConfigMap, metadata: {name: b}, bogus: 1}\n",
    );
    let out = k.run(&["apply", "-f", path_str(&list)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configmap/a created"),
        "{err}"
    );
    assert!(
        err.contains("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"bogus\""),
        "{err}"
    );
    // Round trip: get -o yaml, apply the List back.
    let out = k.run(&["get", "configmaps", "-o", "yaml"]);
    assert!(out.status.success());
    let all = k.write("all.yaml", &String::from_utf8_lossy(&out.stdout));
    let out = k.run(&["apply", "-f", path_str(&all)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configmap/a"));
}

const NODE: &str = r#"{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
 "status": {"conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-berth", "machineID": "", "systemUUID": "", "bootID": "",
              "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion": "containerd://2.0",
              "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}"#;

#[test]
fn node_kubeconfig_and_node_table() {
    let Some(k) = Apiserver::start() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
        .args(["kubeconfig", "--data-dir"])
        .arg(k._dir.path())
        .args(["--node", "n1", "--server"])
        .arg(server_url(&k.kubeconfig))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8(out.stdout).unwrap();
    assert!(config.contains("system:node:n1"));
    assert!(config.contains("certificate-authority-data"));
    let node_config = k.write("node.kubeconfig", &config);
    let node = k.write("node.json", NODE);
    let out = k
        .command(&["apply", "-f", path_str(&node)])
        .env("KUBECONFIG", &node_config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A role label is the admin's to give (NodeRestriction): not the node's.
    let out = k
        .command(&["label", "node", "n1", "node-role.kubernetes.io/worker="])
        .env("KUBECONFIG", &node_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("is not allowed to modify labels: node-role.kubernetes.io/worker"),
        "{stderr}"
    );
    k.ok(&["label", "node", "n1", "node-role.kubernetes.io/worker="]);
    // The node's credentials cannot delete (other) nodes.
    let out = k
        .command(&["delete", "node", "n2"])
        .env("KUBECONFIG", &node_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Forbidden")
            && stderr.contains("User \"system:node:n1\" cannot delete resource \"nodes\""),
        "{stderr}"
    );
    let nodes = k.ok(&["get", "nodes"]);
    assert_eq!(
        header(&nodes),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    );
    let row = nodes.lines().nth(1).unwrap();
    assert!(
        row.contains("n1")
            && row.contains("Ready")
            && row.contains("worker")
            && row.contains("v1.33.0-berth"),
        "{nodes}"
    );
}

fn server_url(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string()
}

/// `berth-apiserver kubeconfig --data-dir DIR --node NAME` with no `--server`.
fn node_kubeconfig(dir: &Path, node: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth-apiserver"))
        .args(["kubeconfig", "--data-dir"])
        .arg(dir)
        .args(["--node", node])
        .output()
        .unwrap()
}

/// `kubeconfig --node NAME` writes NAME into tokens.csv: a crafted name (commas,
/// quotes, a line break) must not mint a token with other groups, and nothing
/// is written for a refused name.
#[test]
fn node_kubeconfig_refuses_names_that_are_not_node_names() {
    let Some(k) = Apiserver::start() else { return };
    let tokens = k._dir.path().join("tokens.csv");
    let before = std::fs::read_to_string(&tokens).unwrap();
    for evil in [
        "evil,system:masters",
        "n1,u,1,\"system:masters\"",
        "n1\nabc,admin,1,system:masters",
        "Node_1",
        "",
        &"a".repeat(254),
    ] {
        let out = node_kubeconfig(k._dir.path(), evil);
        assert!(!out.status.success(), "{evil:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a valid node name"), "{evil:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(&tokens).unwrap(),
            before,
            "{evil:?}"
        );
    }
    // A good name still works, twice (two tokens, same user).
    for _ in 0..2 {
        let out = node_kubeconfig(k._dir.path(), "node-a.example");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let after = std::fs::read_to_string(&tokens).unwrap();
    let lines: Vec<&str> = after.lines().skip(before.lines().count()).collect();
    assert_eq!(lines.len(), 2, "{after}");
    for line in lines {
        assert!(line.contains(",system:node:node-a.example,"), "{line}");
        assert!(line.ends_with(",system:nodes"), "{line}");
    }
}

/// The README's by-hand cluster path as a newcomer types it: a server on a
/// port other than 6443, then `kubeconfig --node` without `--server`. It wrote
/// `https://127.0.0.1:6443` before, and the node never connected.
#[test]
fn node_kubeconfig_names_the_address_the_server_serves() {
    let Some(k) = Apiserver::start() else { return };
    let served = server_url(&k.kubeconfig);
    let out = node_kubeconfig(k._dir.path(), "n1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = k.write("n1.kubeconfig", &String::from_utf8(out.stdout).unwrap());
    assert_eq!(server_url(&config), served);
    let node = k.write("node.json", NODE);
    let out = k
        .command(&["apply", "-f", path_str(&node)])
        .env("KUBECONFIG", &config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restarted under another --listen: admin.kubeconfig follows it with the
    // same token, and so does the default of `kubeconfig --node`.
    let port = free_port();
    let k = k.restart_on(port);
    assert_eq!(
        server_url(&k.kubeconfig),
        format!("https://127.0.0.1:{port}")
    );
    assert!(k.ok(&["get", "nodes", "-o", "name"]).contains("node/n1"));
    let out = node_kubeconfig(k._dir.path(), "n2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = k.write("n2.kubeconfig", &String::from_utf8(out.stdout).unwrap());
    assert_eq!(server_url(&config), format!("https://127.0.0.1:{port}"));
    // The same restart twice changes nothing.
    let before = std::fs::read_to_string(&k.kubeconfig).unwrap();
    let k = k.restart_on(port);
    assert_eq!(std::fs::read_to_string(&k.kubeconfig).unwrap(), before);

    // A directory no server ever ran in: a clear error, nothing written.
    let empty = tempfile::tempdir().unwrap();
    let out = node_kubeconfig(empty.path(), "n3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("admin.kubeconfig") && stderr.contains("--server"),
        "{stderr}"
    );
    assert!(!empty.path().join("tokens.csv").exists());
}

/// kubectl's generators write through typed clients with protobuf bodies.
#[test]
fn kubectl_create_generators_protobuf() {
    let Some(k) = Apiserver::start() else { return };
    assert!(
        k.ok(&["create", "namespace", "foo"])
            .contains("namespace/foo created")
    );
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=b",
        "-n",
        "foo",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=p=q",
        "-n",
        "foo",
    ]);
    k.ok(&["create", "serviceaccount", "bot", "-n", "foo"]);
    let cm: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "cfg", "-n", "foo", "-o", "json"])).unwrap();
    assert_eq!(cm["data"], serde_json::json!({"a": "b"}));
    assert!(cm["metadata"].get("generateName").is_none());
    let data = k.ok(&[
        "get",
        "secret",
        "sec",
        "-n",
        "foo",
        "-o",
        "jsonpath={.data.p}",
    ]);
    assert_eq!(data, "cQ==");
    k.ok(&["get", "sa", "bot", "-n", "foo"]);
    assert!(k.ok(&["delete", "namespace", "foo"]).contains("deleted"));
    assert!(!k.run(&["get", "ns", "foo"]).status.success());
}
