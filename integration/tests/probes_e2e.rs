//! Probes end to end, against a real containerd (one per test), real runc and
//! CNI: an httpGet liveness probe restarts a container whose page went away,
//! an exec readiness probe flips Ready both ways, a tcpSocket readiness probe
//! passes, and a startup probe holds `started` (and liveness) off; gRPC
//! liveness and readiness probes against the `berth-grpc-health` server of the
//! gRPC health test image.

use std::time::Duration;

use anyhow::Result;
use berth_integration::{
    Agent, Containerd, GRPC_HEALTH_IMAGE, require_grpc_health, require_runtime,
};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

fn status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn wait_pod(
    agent: &Agent,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let full = agent.static_pod_name(name);
    agent.poll(T, &format!("pod {full}: {what}"), || {
        Ok(agent.pod("default", &full)?.filter(|p| check(p)))
    })
}

fn condition(pod: &Value, type_: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

#[test]
fn http_liveness_exec_and_tcp_readiness_and_startup_in_a_real_runtime() -> Result<()> {
    let Some(_env) =
        require_runtime("http_liveness_exec_and_tcp_readiness_and_startup_in_a_real_runtime")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    // web: serves /index.html; its first run removes the page after 4 s (an
    // emptyDir remembers it did), so liveness fails once and the restarted
    // container keeps its page.
    // flip: ready from 3 s to 9 s only.
    // tcp: listens on 9090 (an httpd), a tcpSocket readiness probe.
    // slow: its startup probe passes after 5 s; its liveness probe would fail
    // if it ran before that.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: state, emptyDir: {{}}}}]
  containers:
    - name: web
      image: {IMAGE}
      ports: [{{name: http, containerPort: 8080}}]
      volumeMounts: [{{name: state, mountPath: /state}}]
      command: ["sh", "-c", "mkdir -p /www; echo ok > /www/index.html; httpd -p 8080 -h /www; if [ ! -f /state/broke ]; then touch /state/broke; sleep 4; rm /www/index.html; fi; while true; do sleep 1; done"]
      livenessProbe:
        httpGet: {{path: /index.html, port: http}}
        periodSeconds: 1
        failureThreshold: 2
    - name: flip
      image: {IMAGE}
      command: ["sh", "-c", "sleep 3; touch /tmp/ready; sleep 6; rm /tmp/ready; while true; do sleep 1; done"]
      readinessProbe:
        exec: {{command: [test, -f, /tmp/ready]}}
        periodSeconds: 1
        failureThreshold: 1
    - name: tcp
      image: {IMAGE}
      command: ["sh", "-c", "mkdir -p /w; httpd -f -p 9090 -h /w"]
      readinessProbe:
        tcpSocket: {{port: 9090}}
        periodSeconds: 1
    - name: slow
      image: {IMAGE}
      command: ["sh", "-c", "sleep 5; touch /tmp/started; while true; do sleep 1; done"]
      startupProbe:
        exec: {{command: [test, -f, /tmp/started]}}
        periodSeconds: 1
        failureThreshold: 30
      livenessProbe:
        exec: {{command: [test, -f, /tmp/started]}}
        periodSeconds: 1
        failureThreshold: 1
"#
    );
    agent.write_manifest("probed.yaml", &manifest)?;

    // Running but not Ready: flip is not ready yet and slow not started.
    let pod = wait_pod(&agent, "probed", "all running", |p| {
        ["web", "flip", "tcp", "slow"]
            .iter()
            .all(|c| status(p, c)["state"]["running"].is_object())
    })?;
    assert_eq!(status(&pod, "slow")["started"], false, "{pod:#}");
    assert_eq!(status(&pod, "slow")["ready"], false);
    assert_eq!(condition(&pod, "Ready"), "False");

    // flip turns ready, and so does the pod once slow has started.
    let pod = wait_pod(&agent, "probed", "flip ready", |p| {
        status(p, "flip")["ready"] == true
    })?;
    assert_eq!(status(&pod, "tcp")["ready"], true, "{pod:#}");
    wait_pod(&agent, "probed", "slow started and ready", |p| {
        status(p, "slow")["started"] == true && status(p, "slow")["ready"] == true
    })?;
    // flip goes back to not ready (and is not restarted for it).
    let pod = wait_pod(&agent, "probed", "flip not ready again", |p| {
        status(p, "flip")["ready"] == false && status(p, "web")["restartCount"] == 1
    })?;
    assert_eq!(status(&pod, "flip")["restartCount"], 0);
    assert_eq!(condition(&pod, "Ready"), "False");
    // The startup probe kept the liveness probe off: slow never restarted.
    assert_eq!(status(&pod, "slow")["restartCount"], 0, "{pod:#}");

    // web was killed for its liveness probe and came back with its page.
    let web = status(&pod, "web");
    assert_eq!(web["lastState"]["terminated"]["exitCode"], 137, "{web}");
    wait_pod(&agent, "probed", "web ready again", |p| {
        status(p, "web")["ready"] == true && status(p, "web")["restartCount"] == 1
    })?;
    let log = agent.log();
    assert!(
        log.contains("Liveness probe failed: HTTP probe failed with statuscode: 404"),
        "{}",
        agent.log_tail(60)
    );
    assert!(
        log.contains("probe failed; killing the container"),
        "{}",
        agent.log_tail(60)
    );
    assert!(log.contains("Readiness probe failed: "));

    // The probe metrics count by result.
    let (code, text) = agent.get_text("/metrics/probes")?;
    assert_eq!(code, 200);
    for want in [
        "prober_probe_total{probe_type=\"Liveness\",result=\"failed\",container=\"web\"",
        "prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"tcp\"",
        "prober_probe_total{probe_type=\"Startup\",result=\"successful\",container=\"slow\"",
        "prober_probe_duration_seconds_count{probe_type=\"Readiness\",container=\"flip\"",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    Ok(())
}

#[test]
fn grpc_liveness_and_readiness_in_a_real_runtime() -> Result<()> {
    let Some((_env, image_tar)) =
        require_grpc_health("grpc_liveness_and_readiness_in_a_real_runtime")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    cd.import_image(&image_tar, GRPC_HEALTH_IMAGE)?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    // The server answers SERVING for "" and for berth.test.Ready. On its first
    // run only (the emptyDir remembers), the container makes itself unhealthy
    // after 8 s: readiness (threshold 1) fails at once, liveness (threshold 4)
    // a few seconds later, which leaves the test time to see the pod not ready
    // before the restart. The restarted server stays healthy.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: grpc
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: state, emptyDir: {{}}}}]
  containers:
    - name: health
      image: {GRPC_HEALTH_IMAGE}
      volumeMounts: [{{name: state, mountPath: /state}}]
      command: ["sh", "-c", "if [ ! -f /state/broke ]; then touch /state/broke; (sleep 8; touch /tmp/unhealthy) & fi; exec berth-grpc-health --port 9000 --service berth.test.Ready"]
      livenessProbe:
        grpc: {{port: 9000}}
        periodSeconds: 1
        failureThreshold: 4
      readinessProbe:
        grpc: {{port: 9000, service: berth.test.Ready}}
        periodSeconds: 1
        failureThreshold: 1
"#
    );
    agent.write_manifest("grpc.yaml", &manifest)?;

    let pod = wait_pod(&agent, "grpc", "ready", |p| {
        status(p, "health")["ready"] == true
    })?;
    assert_eq!(condition(&pod, "Ready"), "True", "{pod:#}");
    assert_eq!(status(&pod, "health")["restartCount"], 0, "{pod:#}");

    // NOT_SERVING: not ready while the first container still runs ...
    let pod = wait_pod(&agent, "grpc", "not ready before the restart", |p| {
        status(p, "health")["ready"] == false && status(p, "health")["restartCount"] == 0
    })?;
    assert_eq!(condition(&pod, "Ready"), "False", "{pod:#}");
    assert!(
        status(&pod, "health")["state"]["running"].is_object(),
        "{pod:#}"
    );
    // ... then killed for its liveness probe, and back (healthy) and ready.
    let pod = wait_pod(&agent, "grpc", "restarted", |p| {
        status(p, "health")["restartCount"] == 1
    })?;
    // The server handles SIGTERM and exits 0 (no SIGKILL needed).
    let health = status(&pod, "health");
    assert_eq!(health["lastState"]["terminated"]["exitCode"], 0, "{health}");
    let pod = wait_pod(&agent, "grpc", "ready again", |p| {
        status(p, "health")["ready"] == true && status(p, "health")["restartCount"] == 1
    })?;
    assert_eq!(condition(&pod, "Ready"), "True", "{pod:#}");

    let log = agent.log();
    for want in [
        r#"Liveness probe failed: service unhealthy (responded with "NOT_SERVING")"#,
        r#"Readiness probe failed: service unhealthy (responded with "NOT_SERVING")"#,
        "probe failed; killing the container",
    ] {
        assert!(log.contains(want), "{want:?} in:\n{}", agent.log_tail(80));
    }
    let (code, text) = agent.get_text("/metrics/probes")?;
    assert_eq!(code, 200);
    for want in [
        "prober_probe_total{probe_type=\"Liveness\",result=\"failed\",container=\"health\"",
        "prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"health\"",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    Ok(())
}
