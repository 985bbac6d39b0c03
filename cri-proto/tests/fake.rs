//! The fake CRI runtime, driven through the real `RuntimeClient`.
#![cfg(feature = "fake")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_cri::api;
use berth_cri::fake::{ExecResult, FakeRuntime};
use berth_cri::{ConnectOptions, Error, RuntimeClient};

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sandbox_config(name: &str, uid: &str, attempt: u32) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: "default".to_string(),
            attempt,
        }),
        log_directory: format!("/var/log/pods/default_{name}_{uid}"),
        labels: labels(&[
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", "default"),
            ("io.kubernetes.pod.uid", uid),
        ]),
        ..Default::default()
    }
}

fn host_network(mut config: api::PodSandboxConfig) -> api::PodSandboxConfig {
    config.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

async fn run_sandbox(client: &RuntimeClient, config: &api::PodSandboxConfig) -> String {
    client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .pod_sandbox_id
}

fn create_request(
    sandbox_id: &str,
    sandbox: &api::PodSandboxConfig,
    name: &str,
    attempt: u32,
    image: &str,
) -> api::CreateContainerRequest {
    let uid = sandbox
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    api::CreateContainerRequest {
        pod_sandbox_id: sandbox_id.to_string(),
        config: Some(api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.to_string(),
                attempt,
            }),
            image: Some(api::ImageSpec {
                image: image.to_string(),
                user_specified_image: image.to_string(),
                ..Default::default()
            }),
            log_path: format!("{name}/{attempt}.log"),
            labels: labels(&[
                ("io.kubernetes.pod.uid", &uid),
                ("io.kubernetes.container.name", name),
            ]),
            annotations: labels(&[("io.kubernetes.container.restartCount", &attempt.to_string())]),
            ..Default::default()
        }),
        sandbox_config: Some(sandbox.clone()),
    }
}

async fn create(
    client: &RuntimeClient,
    sandbox_id: &str,
    sandbox: &api::PodSandboxConfig,
    name: &str,
    attempt: u32,
) -> String {
    client
        .create_container(create_request(
            sandbox_id, sandbox, name, attempt, "busybox",
        ))
        .await
        .expect("CreateContainer")
        .container_id
}

async fn status(client: &RuntimeClient, id: &str) -> api::ContainerStatus {
    client
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .status
        .expect("a status")
}

async fn sandbox_status(
    client: &RuntimeClient,
    id: &str,
) -> berth_cri::Result<api::PodSandboxStatus> {
    Ok(client
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        })
        .await?
        .status
        .expect("a status"))
}

async fn list_sandboxes(
    client: &RuntimeClient,
    filter: api::PodSandboxFilter,
) -> Vec<api::PodSandbox> {
    client
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .expect("ListPodSandbox")
        .items
}

async fn list_containers(
    client: &RuntimeClient,
    filter: api::ContainerFilter,
) -> Vec<api::Container> {
    client
        .list_containers(api::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .expect("ListContainers")
        .containers
}

fn short_timeouts() -> ConnectOptions {
    ConnectOptions {
        request_timeout: Duration::from_millis(300),
        list_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn version_and_status() {
    let fake = FakeRuntime::start().await;
    assert!(fake.endpoint().starts_with("unix:///"));
    let client = fake.client().await;
    let version = client.check_version().await.unwrap();
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.runtime_name, "fake");
    let status = client
        .status(api::StatusRequest { verbose: false })
        .await
        .unwrap();
    let conditions = status.status.unwrap().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status)
    );
    fake.set_network_ready(false);
    let status = client
        .status(api::StatusRequest { verbose: false })
        .await
        .unwrap();
    assert!(
        status
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && !c.status)
    );
    // connect() and check_version() each called Version.
    assert_eq!(fake.call_count("Version"), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn sandbox_and_container_lifecycle() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let before = berth_cri_now();

    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    assert_eq!(sb.len(), 64);
    let st = sandbox_status(&client, &sb).await.unwrap();
    assert_eq!(st.state, api::PodSandboxState::SandboxReady as i32);
    assert!(
        st.network.as_ref().unwrap().ip.starts_with("10.99.0."),
        "{st:?}"
    );
    assert!(st.created_at >= before);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(
        st.labels.get("io.kubernetes.pod.uid").map(String::as_str),
        Some("uid-1")
    );

    let c = create(&client, &sb, &config, "app", 0).await;
    let s = status(&client, &c).await;
    assert_eq!(s.state, api::ContainerState::ContainerCreated as i32);
    assert_eq!(s.log_path, "/var/log/pods/default_web_uid-1/app/0.log");
    // containerd reports the normalized tag and the repo digest.
    assert_eq!(
        s.image.as_ref().unwrap().image,
        "docker.io/library/busybox:latest"
    );
    assert!(
        s.image_ref.starts_with("docker.io/library/busybox@sha256:"),
        "{}",
        s.image_ref
    );
    let listed = list_containers(&client, Default::default()).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].image_ref.starts_with("sha256:"));
    assert_eq!(
        listed[0].image.as_ref().unwrap().user_specified_image,
        "busybox"
    );

    client
        .start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
    let s = status(&client, &c).await;
    assert_eq!(s.state, api::ContainerState::ContainerRunning as i32);
    assert!(s.started_at >= s.created_at && s.created_at >= before);
    // Starting twice fails like containerd.
    let err = client
        .start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("container is in CONTAINER_RUNNING state"),
        "{err}"
    );

    client.stop_container(&c, 30).await.unwrap();
    let s = status(&client, &c).await;
    assert_eq!(s.state, api::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));
    assert!(s.finished_at >= s.started_at);
    // Idempotent on an exited container; the timeout is recorded, not slept.
    client.stop_container(&c, 5).await.unwrap();
    assert_eq!(fake.container(&c).unwrap().stop_timeouts, vec![30, 5]);

    client
        .remove_container(api::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
    assert!(status_err(&client, &c).await.is_not_found());
    // Idempotent.
    client
        .remove_container(api::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();

    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    let st = sandbox_status(&client, &sb).await.unwrap();
    assert_eq!(st.state, api::PodSandboxState::SandboxNotready as i32);
    assert_eq!(st.network.unwrap().ip, "", "the IP is released on stop");
    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .expect("StopPodSandbox is idempotent");
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    assert!(
        sandbox_status(&client, &sb)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(list_sandboxes(&client, Default::default()).await.is_empty());
    // RemovePodSandbox of an unknown sandbox is OK; StopPodSandbox is NotFound.
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    let err = client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

async fn status_err(client: &RuntimeClient, id: &str) -> Error {
    client
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .unwrap_err()
}

fn berth_cri_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test]
async fn stopping_or_removing_a_sandbox_kills_its_containers() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let running = create(&client, &sb, &config, "app", 0).await;
    let created = create(&client, &sb, &config, "side", 0).await;
    client
        .start_container(api::StartContainerRequest {
            container_id: running.clone(),
        })
        .await
        .unwrap();
    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    let s = status(&client, &running).await;
    assert_eq!(
        (s.state, s.exit_code),
        (api::ContainerState::ContainerExited as i32, 137)
    );
    // A never-started container stays created, as in containerd.
    assert_eq!(
        status(&client, &created).await.state,
        api::ContainerState::ContainerCreated as i32
    );
    // No new containers in a stopped sandbox.
    let err = client
        .create_container(create_request(&sb, &config, "late", 0, "busybox"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
    assert!(fake.containers().is_empty());
    assert!(fake.sandboxes().is_empty());
}

#[tokio::test]
async fn host_network_sandbox_has_no_pod_ip_and_ips_are_distinct() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    let a = run_sandbox(&client, &sandbox_config("a", "uid-a", 0)).await;
    let b = run_sandbox(&client, &sandbox_config("b", "uid-b", 0)).await;
    let h = run_sandbox(&client, &host_network(sandbox_config("h", "uid-h", 0))).await;
    let ip = |id: String| {
        let client = client.clone();
        async move {
            sandbox_status(&client, &id)
                .await
                .unwrap()
                .network
                .unwrap()
                .ip
        }
    };
    let (ip_a, ip_b, ip_h) = (ip(a).await, ip(b).await, ip(h.clone()).await);
    assert_ne!(ip_a, ip_b);
    assert_eq!(ip_h, "");
    let st = sandbox_status(&client, &h).await.unwrap();
    let opts = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(opts.network, api::NamespaceMode::Node as i32);
    assert!(fake.sandbox(&h).unwrap().host_network);
}

#[tokio::test]
async fn names_are_reserved_like_containerd() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;

    let err = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.to_string()
            .contains("failed to reserve sandbox name \"web_default_uid-1_0\""),
        "{err}"
    );
    assert_eq!(fake.call_count("RunPodSandbox"), 2);
    assert_eq!(fake.sandboxes().len(), 1);

    // A new attempt of the same pod is a new name …
    let config1 = sandbox_config("web", "uid-1", 1);
    let sb1 = run_sandbox(&client, &config1).await;
    // … but a container name does not include the sandbox attempt: the same
    // container name and attempt in the new sandbox collides while the old exists.
    let old = create(&client, &sb, &config, "app", 0).await;
    let err = client
        .create_container(create_request(&sb1, &config1, "app", 0, "busybox"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("failed to reserve container name \"app_web_default_uid-1_0\""),
        "{err}"
    );
    create(&client, &sb1, &config1, "app", 1).await;
    client
        .remove_container(api::RemoveContainerRequest { container_id: old })
        .await
        .unwrap();
    create(&client, &sb1, &config1, "app", 0).await;

    // Removing the sandbox releases its name.
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: sb })
        .await
        .unwrap();
    run_sandbox(&client, &config).await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    let err = client
        .run_pod_sandbox(api::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut config = sandbox_config("web", "uid-1", 0);
    config.metadata = None;
    let err = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .create_container(api::CreateContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .pull_image(api::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn list_filters() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let web = sandbox_config("web", "uid-web", 0);
    let db = sandbox_config("db", "uid-db", 0);
    let sb_web = run_sandbox(&client, &web).await;
    let sb_db = run_sandbox(&client, &db).await;
    let c_web = create(&client, &sb_web, &web, "app", 0).await;
    let c_db = create(&client, &sb_db, &db, "app", 0).await;
    client
        .start_container(api::StartContainerRequest {
            container_id: c_db.clone(),
        })
        .await
        .unwrap();
    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sb_web.clone(),
        })
        .await
        .unwrap();

    let by_label = list_sandboxes(
        &client,
        api::PodSandboxFilter {
            label_selector: labels(&[("io.kubernetes.pod.uid", "uid-db")]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, sb_db);
    // Every selector label must match.
    let none = list_sandboxes(
        &client,
        api::PodSandboxFilter {
            label_selector: labels(&[
                ("io.kubernetes.pod.uid", "uid-db"),
                ("io.kubernetes.pod.name", "web"),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let ready = list_sandboxes(
        &client,
        api::PodSandboxFilter {
            state: Some(api::PodSandboxStateValue {
                state: api::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        ready.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![sb_db.clone()]
    );
    // An ID prefix works, as with containerd's truncindex.
    let by_prefix = list_sandboxes(
        &client,
        api::PodSandboxFilter {
            id: sb_web[..12].to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_prefix.len(), 1);
    assert_eq!(by_prefix[0].id, sb_web);

    let in_web = list_containers(
        &client,
        api::ContainerFilter {
            pod_sandbox_id: sb_web.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        in_web.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![c_web.clone()]
    );
    let running = list_containers(
        &client,
        api::ContainerFilter {
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        running.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![c_db.clone()]
    );
    let by_label = list_containers(
        &client,
        api::ContainerFilter {
            label_selector: labels(&[
                ("io.kubernetes.pod.uid", "uid-web"),
                ("io.kubernetes.container.name", "app"),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, c_web);
    let by_id = list_containers(
        &client,
        api::ContainerFilter {
            id: c_db.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_id.len(), 1);
}

#[tokio::test]
async fn scripted_errors_map_to_client_errors() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    let list = || client.list_pod_sandbox(api::ListPodSandboxRequest { filter: None });

    fake.fail_next("ListPodSandbox", tonic::Code::NotFound, "gone");
    let err = list().await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("gone"));
    list().await.expect("fail_next is one-shot");

    fake.fail_next("ListPodSandbox", tonic::Code::Unavailable, "busy");
    fake.fail_next("ListPodSandbox", tonic::Code::Internal, "boom");
    assert!(list().await.unwrap_err().is_unreachable());
    match list().await.unwrap_err() {
        Error::Rpc {
            code,
            message,
            method,
        } => {
            assert_eq!(
                (code, message.as_str(), method),
                (tonic::Code::Internal, "boom", "ListPodSandbox")
            );
        }
        other => panic!("{other:?}"),
    }
    list().await.unwrap();

    fake.fail_always("ListPodSandbox", tonic::Code::ResourceExhausted, "full");
    for _ in 0..3 {
        assert_eq!(
            list().await.unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }
    fake.clear_faults();
    list().await.unwrap();
    assert_eq!(fake.call_count("ListPodSandbox"), 9);
}

#[tokio::test]
#[should_panic(expected = "unknown CRI method")]
async fn typo_in_method_name_panics() {
    let fake = FakeRuntime::start().await;
    fake.fail_next("RunPodSandBox", tonic::Code::Internal, "x");
}

#[tokio::test]
async fn delay_longer_than_the_timeout_is_a_timeout() {
    let fake = FakeRuntime::start().await;
    let client = fake.client_with(short_timeouts()).await.unwrap();
    fake.delay("ListContainers", Duration::from_secs(2));
    let started = Instant::now();
    let err = client
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                method: "ListContainers",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_unreachable());
    assert!(started.elapsed() < Duration::from_secs(1));
    fake.delay("ListContainers", Duration::ZERO);
    client
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .unwrap();
    // A delay shorter than the timeout just makes the call slow.
    fake.delay("ListContainers", Duration::from_millis(100));
    let started = Instant::now();
    client
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn outage_then_the_same_client_reconnects() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client_with(short_timeouts()).await.unwrap();
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let c = create(&client, &sb, &config, "app", 0).await;
    client
        .start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();

    for round in 0..2 {
        fake.stop_serving().await;
        assert!(!fake.is_serving());
        assert!(!fake.socket_path().exists());
        for _ in 0..3 {
            let err = client
                .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                .await
                .unwrap_err();
            assert!(err.is_unreachable(), "round {round}: {err:?}");
        }
        let err = client.check_version().await.unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");

        fake.resume_serving().await.unwrap();
        // The same client (same tonic channel) redials on the next call.
        let items = client
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
            .expect("the channel reconnects after the outage");
        assert_eq!(items.items.len(), 1, "state survives the outage");
        assert_eq!(
            status(&client, &c).await.state,
            api::ContainerState::ContainerRunning as i32
        );
    }

    // A crash leaves a dead socket behind: connection refused, then back.
    fake.crash().await;
    assert!(fake.socket_path().exists());
    let err = client.check_version().await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    fake.restart().await.unwrap();
    client.check_version().await.unwrap();
    // A restart between two calls is invisible: the first call after it succeeds.
    for _ in 0..3 {
        fake.restart().await.unwrap();
        client
            .check_version()
            .await
            .expect("the first call after a restart");
    }
    // A lazily-dialled client made during the outage works too once it is back.
    fake.stop_serving().await;
    let lazy = RuntimeClient::lazy(&fake.endpoint(), short_timeouts()).unwrap();
    assert!(lazy.version().await.unwrap_err().is_unreachable());
    fake.resume_serving().await.unwrap();
    lazy.version().await.unwrap();
}

#[tokio::test]
async fn outage_cuts_a_slow_call_short() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    fake.delay("ListPodSandbox", Duration::from_secs(30));
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    fake.stop_serving().await;
    let err = slow.await.unwrap().unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    fake.clear_delays();
    fake.resume_serving().await.unwrap();
    client
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_fails_in_flight_calls_and_the_client_recovers() {
    let fake = FakeRuntime::start().await;
    let client = fake.client_with(short_timeouts()).await.unwrap();
    fake.delay("Version", Duration::from_secs(30));
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.version().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.crash().await;
    // The connection is cut under the call: tonic reports a client-side transport
    // error (Unknown "transport error", or Cancelled when the request raced the
    // close), not a server status.
    let err = slow.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable
        ),
        "{err:?}"
    );
    fake.clear_delays();
    // While down: refused, and the client keeps redialling.
    assert!(client.version().await.unwrap_err().is_unreachable());
    fake.resume_serving().await.unwrap();
    client
        .version()
        .await
        .expect("the channel reconnects after a crash");
}

#[tokio::test]
async fn on_start_exit_and_scripted_exits() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    fake.on_start_exit("job", 0);
    fake.on_start_exit("crasher", 2);
    let client = fake.client().await;
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let start = |id: String| {
        let client = client.clone();
        async move {
            client
                .start_container(api::StartContainerRequest { container_id: id })
                .await
                .unwrap()
        }
    };

    let job = create(&client, &sb, &config, "job", 0).await;
    start(job.clone()).await;
    let s = status(&client, &job).await;
    assert_eq!(s.state, api::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);

    let crash0 = create(&client, &sb, &config, "crasher", 0).await;
    start(crash0.clone()).await;
    let s0 = status(&client, &crash0).await;
    assert_eq!((s0.exit_code, s0.reason.as_str()), (2, "Error"));
    let crash1 = create(&client, &sb, &config, "crasher", 1).await;
    start(crash1.clone()).await;
    let s1 = status(&client, &crash1).await;
    assert!(
        s1.finished_at >= s0.finished_at,
        "wall-clock times only go forward"
    );
    fake.clear_on_start_exit("crasher");
    let crash2 = create(&client, &sb, &config, "crasher", 2).await;
    start(crash2.clone()).await;
    assert_eq!(
        status(&client, &crash2).await.state,
        api::ContainerState::ContainerRunning as i32
    );

    // exit_container and exit_containers_named.
    let a = create(&client, &sb, &config, "app", 0).await;
    start(a.clone()).await;
    assert!(fake.exit_container_with(&a, 137, Some("OOMKilled"), "out of memory"));
    let s = status(&client, &a).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str(), s.message.as_str()),
        (137, "OOMKilled", "out of memory")
    );
    assert!(!fake.exit_container(&a, 1), "already exited");
    assert_eq!(fake.exit_containers_named("crasher", 0), 1);
    let s = status(&client, &crash2).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    // on_stop_exit: a process that handles SIGTERM.
    fake.on_stop_exit("graceful", 0);
    let g = create(&client, &sb, &config, "graceful", 0).await;
    start(g.clone()).await;
    client.stop_container(&g, 30).await.unwrap();
    assert_eq!(status(&client, &g).await.reason, "Completed");

    // RemoveContainer force-stops a running container, as containerd does.
    let r = create(&client, &sb, &config, "running", 0).await;
    start(r.clone()).await;
    client
        .remove_container(api::RemoveContainerRequest {
            container_id: r.clone(),
        })
        .await
        .unwrap();
    assert!(fake.container(&r).is_none());
}

#[tokio::test]
async fn dead_sandbox_is_not_ready_and_refuses_starts() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let c = create(&client, &sb, &config, "app", 0).await;
    assert!(fake.set_sandbox_not_ready(&sb));
    let st = sandbox_status(&client, &sb).await.unwrap();
    assert_eq!(st.state, api::PodSandboxState::SandboxNotready as i32);
    let err = client
        .start_container(api::StartContainerRequest { container_id: c })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not running"), "{err}");
}

#[tokio::test]
async fn images_pull_like_containerd() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    let spec = |image: &str| {
        Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        })
    };

    let err = client
        .pull_image(api::PullImageRequest {
            image: spec("nope:1.0"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        err.to_string().contains(
            "failed to pull and unpack image \"docker.io/library/nope:1.0\": failed to resolve reference \"docker.io/library/nope:1.0\": docker.io/library/nope:1.0: not found"
        ),
        "{err}"
    );
    let missing = client
        .image_status(api::ImageStatusRequest {
            image: spec("nope:1.0"),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(missing.image.is_none());

    fake.set_pullable("docker.io/library/nginx:1.25");
    let pulled = client
        .pull_image(api::PullImageRequest {
            image: spec("nginx:1.25"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(pulled.image_ref.starts_with("sha256:"));
    for name in [
        "nginx:1.25",
        "docker.io/library/nginx:1.25",
        pulled.image_ref.as_str(),
    ] {
        let found = client
            .image_status(api::ImageStatusRequest {
                image: spec(name),
                verbose: false,
            })
            .await
            .unwrap()
            .image
            .unwrap_or_else(|| panic!("{name} should resolve"));
        assert_eq!(found.id, pulled.image_ref);
        assert_eq!(
            found.repo_tags,
            vec!["docker.io/library/nginx:1.25".to_string()]
        );
    }
    assert_eq!(
        client
            .list_images(Default::default())
            .await
            .unwrap()
            .images
            .len(),
        1
    );

    // CreateContainer needs the image locally.
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let err = client
        .create_container(create_request(&sb, &config, "app", 0, "redis"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        err.to_string()
            .contains("failed to resolve image \"redis\""),
        "{err}"
    );
    client
        .create_container(create_request(&sb, &config, "app", 0, &pulled.image_ref))
        .await
        .expect("create by image ID");

    client
        .remove_image(api::RemoveImageRequest {
            image: spec("nginx:1.25"),
        })
        .await
        .unwrap();
    client
        .remove_image(api::RemoveImageRequest {
            image: spec("nginx:1.25"),
        })
        .await
        .expect("RemoveImage is idempotent");
    assert!(fake.images().is_empty());
}

#[tokio::test]
async fn container_events_are_unimplemented_unless_enabled() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let err = client.get_container_events().await.unwrap_err();
    assert!(err.is_unimplemented(), "{err:?}");
    fake.enable_container_events(true);
    let mut events = client.get_container_events().await.unwrap();
    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let c = create(&client, &sb, &config, "app", 0).await;
    client
        .start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
    fake.exit_container(&c, 3);
    client
        .remove_container(api::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("an event in time")
            .expect("a healthy stream")
            .expect("an open stream");
        seen.push(event);
    }
    use api::ContainerEventType as T;
    let kinds: Vec<(bool, i32)> = seen
        .iter()
        .map(|e| (e.container_id == sb, e.container_event_type))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (true, T::ContainerCreatedEvent as i32),
            (true, T::ContainerStartedEvent as i32),
            (false, T::ContainerCreatedEvent as i32),
            (false, T::ContainerStartedEvent as i32),
            (false, T::ContainerStoppedEvent as i32),
            (false, T::ContainerDeletedEvent as i32),
        ]
    );
    let stopped = &seen[4];
    assert_eq!(stopped.pod_sandbox_status.as_ref().unwrap().id, sb);
    assert_eq!(stopped.containers_statuses.len(), 1);
    assert_eq!(stopped.containers_statuses[0].exit_code, 3);
    assert!(seen[5].containers_statuses.is_empty());

    // An outage ends the stream.
    fake.stop_serving().await;
    let end = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test]
async fn call_log_records_every_rpc_in_order() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    fake.clear_calls();
    fake.fail_next("RunPodSandbox", tonic::Code::Internal, "x");
    let _ = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_config("web", "uid-1", 0)),
            runtime_handler: String::new(),
        })
        .await;
    run_sandbox(&client, &sandbox_config("web", "uid-1", 0)).await;
    list_sandboxes(&client, Default::default()).await;
    assert_eq!(
        fake.calls(),
        vec!["RunPodSandbox", "RunPodSandbox", "ListPodSandbox"]
    );
    assert_eq!(fake.call_count("RunPodSandbox"), 2);
}

#[tokio::test]
async fn exec_sync_answers_from_a_script() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let exec = |id: &str, timeout: i64| api::ExecSyncRequest {
        container_id: id.to_string(),
        cmd: vec!["check".into(), "--ready".into()],
        timeout,
    };
    // Unknown container: NotFound, as containerd.
    let err = client.exec_sync(exec("nope", 1)).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");

    let config = sandbox_config("web", "uid-1", 0);
    let sb = run_sandbox(&client, &config).await;
    let c = create(&client, &sb, &config, "app", 0).await;
    // Created, not running: refused.
    let err = client.exec_sync(exec(&c, 1)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("container is in CONTAINER_CREATED state"),
        "{err}"
    );
    client
        .start_container(api::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
    // Nothing scripted: exit 0, no output.
    let r = client.exec_sync(exec(&c, 1)).await.unwrap();
    assert_eq!((r.exit_code, r.stdout.len()), (0, 0));
    // A script: answers in order, the last one repeats.
    fake.script_exec(
        "app",
        [ExecResult::exit(1, "not yet"), ExecResult::exit(0, "ok")],
    );
    let codes: Vec<(i32, Vec<u8>)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = client.exec_sync(exec(&c, 1)).await.unwrap();
            v.push((r.exit_code, r.stdout));
        }
        v
    };
    assert_eq!(
        codes,
        [
            (1, b"not yet".to_vec()),
            (0, b"ok".to_vec()),
            (0, b"ok".to_vec())
        ]
    );
    // A hang past the timeout: DeadlineExceeded after the timeout.
    fake.script_exec("app", [ExecResult::hang(Duration::from_secs(5))]);
    let start = std::time::Instant::now();
    let err = client.exec_sync(exec(&c, 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // Every call is recorded with its command and timeout.
    let execs = fake.execs();
    assert_eq!(execs.len(), 5, "{execs:?}");
    assert!(execs.iter().all(|e| e.container_id == c
        && e.container_name == "app"
        && e.cmd == ["check", "--ready"]
        && e.timeout == 1));
    // Exited: refused again.
    fake.exit_container(&c, 0);
    let err = client.exec_sync(exec(&c, 1)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("container is in CONTAINER_EXITED state"),
        "{err}"
    );
}

#[tokio::test]
async fn runtime_config_is_unimplemented_unless_scripted() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    // containerd 1.6 and 1.7 have no RuntimeConfig.
    let err = client
        .runtime_config(api::RuntimeConfigRequest {})
        .await
        .unwrap_err();
    assert!(err.is_unimplemented(), "{err:?}");

    fake.set_cgroup_driver(Some(api::CgroupDriver::Systemd));
    let answer = client
        .runtime_config(api::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig once scripted");
    assert_eq!(
        answer.linux.map(|l| l.cgroup_driver),
        Some(api::CgroupDriver::Systemd as i32)
    );
    fake.set_cgroup_driver(Some(api::CgroupDriver::Cgroupfs));
    let answer = client
        .runtime_config(api::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig");
    assert_eq!(
        answer.linux.map(|l| l.cgroup_driver),
        Some(api::CgroupDriver::Cgroupfs as i32)
    );
    // Faults apply to it like any other call.
    fake.fail_next("RuntimeConfig", tonic::Code::Unavailable, "starting up");
    assert!(
        client
            .runtime_config(api::RuntimeConfigRequest {})
            .await
            .is_err()
    );
    fake.set_cgroup_driver(None);
    assert!(
        client
            .runtime_config(api::RuntimeConfigRequest {})
            .await
            .unwrap_err()
            .is_unimplemented()
    );
    assert_eq!(fake.call_count("RuntimeConfig"), 5);
}
