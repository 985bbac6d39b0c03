//! The eviction manager's node-level reclaim against the in-process fake
//! CRI server: dead containers beyond the newest dead one of each name go
//! (a running container and its `lastState` stay), then images no
//! container uses go — never the runtime's sandbox image.

use berth_agent::eviction::Reclaimer;
use berth_cri::api;
use berth_cri::fake::{FakeRuntime, SANDBOX_IMAGE};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
const UNUSED: &str = "docker.io/library/unused:1";

async fn container(client: &berth_cri::RuntimeClient, sandbox: &str, attempt: u32) -> String {
    client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: "c".into(),
                    attempt,
                }),
                image: Some(api::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                labels: [("io.kubernetes.pod.uid".to_string(), "u1".to_string())].into(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await
        .expect("create")
        .container_id
}

#[tokio::test]
async fn reclaim_keeps_running_and_last_dead_containers_and_the_sandbox_image() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    for image in [BUSYBOX, UNUSED, SANDBOX_IMAGE] {
        fake.add_image(image);
    }
    let sandbox = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: "p".into(),
                    namespace: "default".into(),
                    uid: "u1".into(),
                    attempt: 0,
                }),
                labels: [("io.kubernetes.pod.uid".to_string(), "u1".to_string())].into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .expect("sandbox")
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for attempt in 0..3 {
        let id = container(&client, &sandbox, attempt).await;
        client
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("start");
        if attempt < 2 {
            assert!(fake.exit_container(&id, 1));
        }
        ids.push(id);
    }

    Reclaimer {
        client: client.clone(),
    }
    .run()
    .await;

    let left: Vec<String> = client
        .list_containers(api::ListContainersRequest::default())
        .await
        .expect("list")
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(!left.contains(&ids[0]), "the oldest dead container goes");
    assert!(left.contains(&ids[1]), "the newest dead one is lastState");
    assert!(left.contains(&ids[2]), "the running one stays");
    let images: Vec<Vec<String>> = client
        .list_images(api::ListImagesRequest::default())
        .await
        .expect("images")
        .images
        .into_iter()
        .map(|i| i.repo_tags)
        .collect();
    let has = |name: &str| images.iter().any(|tags| tags.iter().any(|t| t == name));
    assert!(has(BUSYBOX), "in use: {images:?}");
    assert!(has(SANDBOX_IMAGE), "the sandbox image: {images:?}");
    assert!(!has(UNUSED), "unused: {images:?}");

    // Again: nothing more to take, nothing breaks.
    Reclaimer { client }.run().await;
}
