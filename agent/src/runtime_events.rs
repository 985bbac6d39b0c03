//! Container exits in milliseconds on containerd 1.6: its own event service.
//!
//! containerd 1.6 has no CRI `GetContainerEvents`, so without this the agent
//! notices a killed container only at its next relist (`--relist-period`).
//! containerd serves `containerd.services.events.v1.Events/Subscribe` on the
//! same socket as CRI; we follow `/tasks/exit` (and `/tasks/oom`) of the CRI
//! namespace (`k8s.io`) and, for every exit of a container's own task, wake
//! the PLEG (`relist_poke`). The relist stays the truth: an event only says
//! "look now", never what the state is, and nothing depends on the stream
//! alone. A stream that ends or fails is counted, logged once per streak and
//! subscribed again with back-off (100 ms doubling to 5 s) while the periodic
//! relist keeps converging; a runtime without the service (CRI-O, the fake
//! CRI) gets one info line and the relist alone.
//!
//! Exec'd processes (every exec probe, `kubectl exec`) exit on the same topic
//! with `id` (the exec id) different from `container_id`: those are ignored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cri::{RuntimeClient, api};
use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::types::Envelope;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::runtime_events::RuntimeEventMetrics;

/// The containerd namespace the CRI plugin keeps its containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The topic of a task's (or an exec'd process's) exit.
pub const TOPIC_EXIT: &str = "/tasks/exit";
/// The topic of a container's out-of-memory kill.
pub const TOPIC_OOM: &str = "/tasks/oom";

/// First wait after the stream failed; doubled at every failure in a row.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between subscribe attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often, and how long at most, to ask CRI whether it has caught up with
/// an exit before waking the relist anyway.
const SETTLE_POLL: Duration = Duration::from_millis(5);
const SETTLE_DEADLINE: Duration = Duration::from_secs(2);

/// What one envelope means to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A container's own task (its init process) exited.
    ContainerExit {
        container_id: String,
        exit_status: u32,
    },
    /// A process exec'd in a container exited: not the container's exit.
    ExecExit {
        container_id: String,
        exec_id: String,
    },
    /// A container's cgroup hit its memory limit (its exit follows).
    Oom { container_id: String },
    /// Another namespace or topic, or a payload that did not decode.
    Other,
}

/// Read `env` as seen from `namespace`. Never fails: anything unexpected is
/// [`Event::Other`] (the relist will see whatever happened).
pub fn classify(env: &Envelope, namespace: &str) -> Event {
    if env.namespace != namespace {
        return Event::Other;
    }
    let Some(any) = env.event.as_ref() else {
        return Event::Other;
    };
    match env.topic.as_str() {
        TOPIC_EXIT => match TaskExit::decode(any.value.as_slice()) {
            Ok(e) if e.container_id.is_empty() => Event::Other,
            // An exec'd process carries its exec id; the container's init
            // process carries the container id (older shims leave `id` empty).
            Ok(e) if e.id.is_empty() || e.id == e.container_id => Event::ContainerExit {
                container_id: e.container_id,
                exit_status: e.exit_status,
            },
            Ok(e) => Event::ExecExit {
                container_id: e.container_id,
                exec_id: e.id,
            },
            Err(_) => Event::Other,
        },
        TOPIC_OOM => match TaskOom::decode(any.value.as_slice()) {
            Ok(e) if !e.container_id.is_empty() => Event::Oom {
                container_id: e.container_id,
            },
            _ => Event::Other,
        },
        _ => Event::Other,
    }
}

/// The subscription's filters: one per topic, each limited to `namespace`
/// (containerd ORs filters and ANDs the conditions within one).
pub fn filters(namespace: &str) -> Vec<String> {
    [TOPIC_EXIT, TOPIC_OOM]
        .iter()
        .map(|t| format!("topic=={t:?},namespace=={namespace:?}"))
        .collect()
}

/// Follows containerd's task events and wakes the relist on container exits.
pub struct Subscriber {
    client: EventsClient<tonic::transport::Channel>,
    namespace: String,
    cri: Option<RuntimeClient>,
    poke: Arc<Notify>,
    metrics: RuntimeEventMetrics,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// Where the subscription is, and how each phase recovers.
enum State {
    /// Subscribe after `delay` (zero at first). Unimplemented ends the
    /// subscriber; any other failure comes back here with the delay doubled.
    Subscribing { delay: Duration },
    /// Reading the stream. Its end or failure is counted and goes back to
    /// `Subscribing` with the back-off, reset to the initial delay whenever a
    /// stream delivered.
    Following {
        stream: tonic::Streaming<Envelope>,
        delay: Duration,
    },
}

impl Subscriber {
    /// A subscriber to the event service on `endpoint`'s socket (the CRI
    /// endpoint: containerd serves both there), poking `poke`.
    pub fn new(
        endpoint: &str,
        poke: Arc<Notify>,
        metrics: RuntimeEventMetrics,
    ) -> berth_cri::Result<Self> {
        let channel = berth_cri::unix_channel(endpoint, Duration::from_secs(5))?;
        Ok(Self {
            client: EventsClient::new(channel),
            namespace: CRI_NAMESPACE.to_string(),
            cri: None,
            poke,
            metrics,
            initial_backoff: INITIAL_BACKOFF,
            max_backoff: MAX_BACKOFF,
        })
    }

    /// Before poking, wait (briefly) until CRI reports the exited container
    /// as no longer running. containerd's CRI plugin learns of the exit from
    /// the same event, then deletes the task before it updates its store, so
    /// a relist right at the event would still see the container running.
    pub fn with_cri(mut self, cri: RuntimeClient) -> Self {
        self.cri = Some(cri);
        self
    }

    /// Another back-off (tests).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Follow the events until cancelled, or until the runtime says it has
    /// no event service.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut state = State::Subscribing {
            delay: Duration::ZERO,
        };
        // Failures in a row: only the first of a streak is logged above debug.
        let mut failing = false;
        loop {
            state = match state {
                State::Subscribing { delay } => {
                    if !delay.is_zero() && !crate::util::sleep_or_cancel(&cancel, delay).await {
                        return;
                    }
                    let request = SubscribeRequest {
                        filters: filters(&self.namespace),
                    };
                    // containerd (grpc-go) sends the response headers with the
                    // first event, so this may wait until something exits; the
                    // subscription is live on the server meanwhile.
                    let answer = tokio::select! {
                        _ = cancel.cancelled() => return,
                        a = self.client.subscribe(request) => a,
                    };
                    match answer {
                        Ok(r) => {
                            self.metrics.inc("subscribed");
                            if failing {
                                tracing::info!("following containerd's task events again");
                            } else {
                                tracing::debug!("following containerd's task events");
                            }
                            failing = false;
                            State::Following {
                                stream: r.into_inner(),
                                delay: self.initial_backoff,
                            }
                        }
                        Err(status) if unsupported(&status) => {
                            tracing::info!(
                                code = ?status.code(),
                                "runtime has no containerd event service; relist alone notices container exits"
                            );
                            return;
                        }
                        Err(status) => {
                            self.metrics.inc("stream_error");
                            if !failing {
                                tracing::warn!(error = %status, "cannot subscribe to containerd's task events; retrying with back-off, relist meanwhile");
                            } else {
                                tracing::debug!(error = %status, "subscribing to containerd's task events failed again");
                            }
                            failing = true;
                            State::Subscribing {
                                delay: self.next_delay(delay),
                            }
                        }
                    }
                }
                State::Following { mut stream, delay } => {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(env)) => {
                            self.handle(&env);
                            State::Following { stream, delay }
                        }
                        ended => {
                            self.metrics.inc("stream_error");
                            let error = ended.err().map(|s| s.to_string()).unwrap_or_default();
                            tracing::warn!(%error, "containerd's task event stream ended; subscribing again, relist meanwhile");
                            failing = true;
                            // Exits in the gap are the periodic relist's; one
                            // now also covers what happened just before.
                            self.poke.notify_one();
                            State::Subscribing { delay }
                        }
                    }
                }
            };
        }
    }

    fn next_delay(&self, delay: Duration) -> Duration {
        if delay.is_zero() {
            self.initial_backoff
        } else {
            (delay * 2).min(self.max_backoff)
        }
    }

    fn handle(&self, env: &Envelope) {
        match classify(env, &self.namespace) {
            Event::ContainerExit {
                container_id,
                exit_status,
            } => {
                self.metrics.inc("task_exit");
                tracing::debug!(container.id = %container_id, exit_status, "container task exited");
                match &self.cri {
                    None => self.poke.notify_one(),
                    Some(cri) => {
                        let (cri, poke) = (cri.clone(), self.poke.clone());
                        tokio::spawn(async move {
                            settle(&cri, &container_id).await;
                            poke.notify_one();
                        });
                    }
                }
            }
            Event::ExecExit {
                container_id,
                exec_id,
            } => {
                self.metrics.inc("exec_exit_ignored");
                tracing::trace!(container.id = %container_id, exec.id = %exec_id, "exec'd process exited");
            }
            Event::Oom { container_id } => {
                self.metrics.inc("task_oom");
                tracing::debug!(container.id = %container_id, "container ran out of memory");
            }
            Event::Other => self.metrics.inc("other_ignored"),
        }
    }
}

/// Unimplemented (tonic, grpc-go) or grpc-go's "unknown service": the runtime
/// has no such service, and asking again will not change that.
fn unsupported(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unimplemented || status.message().contains("unknown service")
}

/// Wait until CRI no longer reports `id` (a container, or a pod's sandbox) as
/// running, at most [`SETTLE_DEADLINE`]. Any error ends the wait: the relist
/// then judges.
async fn settle(cri: &RuntimeClient, id: &str) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while still_running(cri, id).await && Instant::now() < deadline {
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

async fn still_running(cri: &RuntimeClient, id: &str) -> bool {
    let container = cri
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await;
    match container {
        Ok(r) => r
            .status
            .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32),
        // Not a container: the exit may be a pod sandbox's (pause) task.
        Err(e) if e.is_not_found() => cri
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.state == api::PodSandboxState::SandboxReady as i32),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use berth_cri::fake::FakeRuntime;
    use prometheus_client::registry::Registry;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::{UnboundedReceiverStream, UnixListenerStream};
    use tonic::Status;

    use super::*;

    type Sender = mpsc::UnboundedSender<Result<Envelope, Status>>;

    /// A containerd event service on a unix socket: every subscriber gets
    /// what `publish` sends; `end_streams` ends every open stream.
    struct FakeEvents {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        shared: Arc<Shared>,
    }

    #[derive(Default)]
    struct Shared {
        subscribers: Mutex<Vec<Sender>>,
        subscribes: AtomicUsize,
        filters: Mutex<Vec<String>>,
    }

    #[derive(Clone)]
    struct EventsService(Arc<Shared>);

    impl tonic::server::NamedService for EventsService {
        const NAME: &'static str = "containerd.services.events.v1.Events";
    }

    struct SubscribeSvc(Arc<Shared>);

    impl tonic::server::ServerStreamingService<SubscribeRequest> for SubscribeSvc {
        type Response = Envelope;
        type ResponseStream = UnboundedReceiverStream<Result<Envelope, Status>>;
        type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

        fn call(&mut self, request: tonic::Request<SubscribeRequest>) -> Self::Future {
            let (tx, rx) = mpsc::unbounded_channel();
            *self.0.filters.lock().unwrap() = request.into_inner().filters;
            self.0.subscribers.lock().unwrap().push(tx);
            self.0.subscribes.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(tonic::Response::new(UnboundedReceiverStream::new(rx))))
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for EventsService {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let shared = self.0.clone();
            Box::pin(async move {
                if req.uri().path() != "/containerd.services.events.v1.Events/Subscribe" {
                    return Ok(Status::unimplemented("not in this fake").into_http());
                }
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(SubscribeSvc(shared), req).await)
            })
        }
    }

    impl FakeEvents {
        async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("containerd.sock");
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            let shared = Arc::new(Shared::default());
            let service = EventsService(shared.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(UnixListenerStream::new(listener)),
            );
            Self {
                _dir: dir,
                socket,
                shared,
            }
        }

        fn endpoint(&self) -> String {
            format!("unix://{}", self.socket.display())
        }

        fn publish(&self, env: Envelope) {
            for tx in self.shared.subscribers.lock().unwrap().iter() {
                let _ = tx.send(Ok(env.clone()));
            }
        }

        fn end_streams(&self) {
            self.shared.subscribers.lock().unwrap().clear();
        }

        fn subscribes(&self) -> usize {
            self.shared.subscribes.load(Ordering::SeqCst)
        }

        async fn wait_subscribes(&self, n: usize) {
            for _ in 0..500 {
                if self.subscribes() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} subscribes, want {n}", self.subscribes());
        }
    }

    fn envelope(namespace: &str, topic: &str, value: Vec<u8>, type_url: &str) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(prost_types::Any {
                // containerd leaves out the leading slash.
                type_url: type_url.to_string(),
                value,
            }),
        }
    }

    fn task_exit(namespace: &str, container_id: &str, id: &str) -> Envelope {
        let exit = TaskExit {
            container_id: container_id.to_string(),
            id: id.to_string(),
            pid: 42,
            exit_status: 137,
            exited_at: None,
        };
        envelope(
            namespace,
            TOPIC_EXIT,
            exit.encode_to_vec(),
            "containerd.events.TaskExit",
        )
    }

    fn metrics() -> RuntimeEventMetrics {
        RuntimeEventMetrics::register(&mut Registry::default())
    }

    async fn poked(poke: &Notify, within: Duration) -> bool {
        tokio::time::timeout(within, poke.notified()).await.is_ok()
    }

    /// A subscriber with a short back-off, running until the returned token fires.
    fn spawn(
        endpoint: &str,
        m: &RuntimeEventMetrics,
        cri: Option<RuntimeClient>,
    ) -> (Arc<Notify>, CancellationToken, tokio::task::JoinHandle<()>) {
        let poke = Arc::new(Notify::new());
        let mut sub = Subscriber::new(endpoint, poke.clone(), m.clone())
            .unwrap()
            .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
        if let Some(cri) = cri {
            sub = sub.with_cri(cri);
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(sub.run(cancel.clone()));
        (poke, cancel, task)
    }

    #[test]
    fn classifies_exits_execs_namespaces_and_garbage() {
        assert_eq!(
            classify(&task_exit("k8s.io", "c1", "c1"), "k8s.io"),
            Event::ContainerExit {
                container_id: "c1".into(),
                exit_status: 137
            }
        );
        assert_eq!(
            classify(&task_exit("k8s.io", "c1", ""), "k8s.io"),
            Event::ContainerExit {
                container_id: "c1".into(),
                exit_status: 137
            }
        );
        assert_eq!(
            classify(&task_exit("k8s.io", "c1", "exec-7"), "k8s.io"),
            Event::ExecExit {
                container_id: "c1".into(),
                exec_id: "exec-7".into()
            }
        );
        assert_eq!(
            classify(&task_exit("moby", "c1", "c1"), "k8s.io"),
            Event::Other
        );
        let oom = TaskOom {
            container_id: "c1".into(),
        };
        assert_eq!(
            classify(
                &envelope(
                    "k8s.io",
                    TOPIC_OOM,
                    oom.encode_to_vec(),
                    "containerd.events.TaskOOM"
                ),
                "k8s.io"
            ),
            Event::Oom {
                container_id: "c1".into()
            }
        );
        // Runtime input that does not decode is never trusted, never a panic.
        let garbage = envelope("k8s.io", TOPIC_EXIT, vec![0xff, 0xff, 0xff], "x");
        assert_eq!(classify(&garbage, "k8s.io"), Event::Other);
        let mut empty = task_exit("k8s.io", "c1", "c1");
        empty.event = None;
        assert_eq!(classify(&empty, "k8s.io"), Event::Other);
        assert_eq!(
            filters("k8s.io"),
            [
                r#"topic=="/tasks/exit",namespace=="k8s.io""#,
                r#"topic=="/tasks/oom",namespace=="k8s.io""#
            ]
        );
    }

    #[tokio::test]
    async fn a_container_exit_pokes_an_exec_exit_or_another_namespace_does_not() {
        let events = FakeEvents::start().await;
        let m = metrics();
        let (poke, cancel, task) = spawn(&events.endpoint(), &m, None);
        events.wait_subscribes(1).await;
        assert_eq!(
            *events.shared.filters.lock().unwrap(),
            filters(CRI_NAMESPACE)
        );

        events.publish(task_exit("k8s.io", "c1", "exec-1"));
        events.publish(task_exit("moby", "c2", "c2"));
        assert!(!poked(&poke, Duration::from_millis(200)).await);
        assert_eq!(m.get("exec_exit_ignored"), 1);
        assert_eq!(m.get("other_ignored"), 1);
        assert_eq!(m.get("task_exit"), 0);

        events.publish(task_exit("k8s.io", "c1", "c1"));
        assert!(poked(&poke, Duration::from_secs(5)).await);
        assert_eq!(m.get("task_exit"), 1);
        assert_eq!(m.get("subscribed"), 1);
        assert_eq!(m.get("stream_error"), 0);

        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_ends_is_subscribed_again() {
        let events = FakeEvents::start().await;
        let m = metrics();
        let (poke, cancel, task) = spawn(&events.endpoint(), &m, None);
        events.wait_subscribes(1).await;

        events.end_streams();
        events.wait_subscribes(2).await;
        assert_eq!(m.get("stream_error"), 1);
        // The end itself wakes a relist (what happened in the gap).
        assert!(poked(&poke, Duration::from_secs(1)).await);

        events.publish(task_exit("k8s.io", "c1", "c1"));
        assert!(poked(&poke, Duration::from_secs(5)).await);
        assert_eq!(m.get("task_exit"), 1);
        assert_eq!(m.get("subscribed"), 2);

        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_runtime_that_comes_late_is_subscribed_with_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let m = metrics();
        let (_poke, cancel, task) = spawn(&format!("unix://{}", socket.display()), &m, None);
        // No socket yet: failures are counted, the subscriber keeps trying.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(m.get("stream_error") >= 2, "{}", m.get("stream_error"));
        assert!(!task.is_finished());
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_runtime_without_the_event_service_is_left_to_the_relist() {
        // The fake CRI serves CRI only, as CRI-O: Subscribe is Unimplemented.
        let cri = FakeRuntime::start().await;
        let m = metrics();
        let (poke, _cancel, task) = spawn(&cri.endpoint(), &m, None);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("gives up at once")
            .unwrap();
        assert_eq!(m.get("stream_error"), 0);
        assert_eq!(m.get("subscribed"), 0);
        assert!(!poked(&poke, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn the_poke_waits_until_cri_has_seen_the_exit() {
        let cri = FakeRuntime::start().await;
        let client = cri.client().await;
        let image = cri.add_image("busybox");
        let sandbox = client
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(api::PodSandboxConfig {
                    metadata: Some(api::PodSandboxMetadata {
                        name: "p".into(),
                        uid: "u1".into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    ..Default::default()
                }),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .pod_sandbox_id;
        let id = client
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox,
                config: Some(api::ContainerConfig {
                    metadata: Some(api::ContainerMetadata {
                        name: "c".into(),
                        attempt: 0,
                    }),
                    image: Some(api::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await
            .unwrap()
            .container_id;
        client
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();

        let events = FakeEvents::start().await;
        let m = metrics();
        let (poke, cancel, task) = spawn(&events.endpoint(), &m, Some(client));
        events.wait_subscribes(1).await;
        // The event comes before CRI has seen the exit: no poke yet…
        events.publish(task_exit("k8s.io", &id, &id));
        assert!(!poked(&poke, Duration::from_millis(200)).await);
        // …then CRI reports it exited, and the relist is woken.
        assert!(cri.exit_container(&id, 137));
        assert!(poked(&poke, Duration::from_secs(2)).await);

        cancel.cancel();
        task.await.unwrap();
    }
}
