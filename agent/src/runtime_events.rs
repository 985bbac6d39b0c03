//! Container exits in milliseconds on containerd 1.6: its own event service.
//!
//! containerd 1.6 has no CRI `GetContainerEvents`, so without this the agent
//! notices a killed container only at its next relist (`--relist-period`).
//! containerd serves `containerd.services.events.v1.Events/Subscribe` on the
//! same socket as CRI; we follow `/tasks/exit` (and `/tasks/oom`) of the CRI
//! namespace (`k8s.io`). Every exit of a container's own task goes at once to
//! the [`ExitSink`](crate::metrics::runtime_events::ExitSink) the PLEG installed on the shared metrics handle (its
//! cache: `/pods` shows the container terminated, with the event's exit
//! status and time, reason `OOMKilled` after an OOM event, else `Completed`
//! or `Error`) and wakes the relist (`relist_poke`).
//!
//! The relist stays the truth: containerd's CRI plugin reports the exit only
//! after it has deleted the task, tens of milliseconds after the event, so
//! the cache keeps the event's exit over a relist that still reads the
//! container running, until one reads it exited or gone (or drops it after
//! `pleg::EXIT_CONFIRM_BOUND`), and the PLEG relists often meanwhile. The
//! pod worker acts only on what CRI reports. Nothing here polls or spawns per
//! exit: a mass exit is as many cache writes and one relist loop.
//!
//! A stream that ends or fails is counted, logged once per streak and
//! subscribed again with back-off (100 ms doubling to 5 s) while the periodic
//! relist keeps converging; a runtime without the service (CRI-O, the fake
//! CRI) gets one info line and the relist alone.
//!
//! Exec'd processes (every exec probe, `kubectl exec`) exit on the same topic
//! with `id` (the exec id) different from `container_id`: those are ignored.

use std::collections::HashMap;
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

use crate::metrics::runtime_events::{ContainerExit, RuntimeEventMetrics};
use crate::observed;

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
/// How many containers' OOM events are remembered until their exit (an
/// exit after one is `OOMKilled`); past this the oldest is forgotten (its
/// exit then shows `Error` until the relist brings CRI's reason).
const OOM_MEMORY: usize = 1024;

/// What one envelope means to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A container's own task (its init process) exited.
    ContainerExit {
        container_id: String,
        exit_status: u32,
        /// Nanoseconds since the epoch, when containerd said.
        exited_at: Option<i64>,
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
                exited_at: e.exited_at.map(|t| {
                    t.seconds
                        .saturating_mul(1_000_000_000)
                        .saturating_add(i64::from(t.nanos))
                }),
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

/// Follows containerd's task events: shows container exits at once and
/// wakes the relist.
pub struct Subscriber {
    client: EventsClient<tonic::transport::Channel>,
    /// CRI, to read an exited container's termination message before its
    /// exit is shown; without it exits only wake the relist.
    cri: Option<RuntimeClient>,
    namespace: String,
    poke: Arc<Notify>,
    /// Containers that ran out of memory, until their exit.
    oom: HashMap<String, Instant>,
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
    /// endpoint: containerd serves both there), poking `poke` and handing
    /// exits to the sink installed on `metrics` (see
    /// [`ExitSink`](crate::metrics::runtime_events::ExitSink)).
    pub fn new(
        endpoint: &str,
        poke: Arc<Notify>,
        metrics: RuntimeEventMetrics,
    ) -> berth_cri::Result<Self> {
        let channel = berth_cri::unix_channel(endpoint, Duration::from_secs(5))?;
        Ok(Self {
            client: EventsClient::new(channel),
            cri: None,
            namespace: CRI_NAMESPACE.to_string(),
            poke,
            oom: HashMap::new(),
            metrics,
            initial_backoff: INITIAL_BACKOFF,
            max_backoff: MAX_BACKOFF,
        })
    }

    /// Read exited containers' termination messages over CRI, so their exits
    /// can be shown at once (see [`termination_message`]).
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
    pub async fn run(self, cancel: CancellationToken) {
        let metrics = self.metrics.clone();
        self.follow(cancel).await;
        metrics.set_following(false);
    }

    async fn follow(mut self, cancel: CancellationToken) {
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
                    // In flight, the subscription is live on the server (it
                    // answers with the first event); a runtime that is down
                    // or lacks the service fails it at once.
                    self.metrics.set_following(true);
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
                            self.metrics.set_following(false);
                            tracing::info!(
                                code = ?status.code(),
                                "runtime has no containerd event service; relist alone notices container exits"
                            );
                            return;
                        }
                        Err(status) => {
                            self.metrics.set_following(false);
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
                            self.handle(&env).await;
                            State::Following { stream, delay }
                        }
                        ended => {
                            self.metrics.set_following(false);
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

    async fn handle(&mut self, env: &Envelope) {
        match classify(env, &self.namespace) {
            Event::ContainerExit {
                container_id,
                exit_status,
                exited_at,
            } => {
                self.metrics.inc("task_exit");
                let mut exit = ContainerExit {
                    message: String::new(),
                    oom: self.oom.remove(&container_id).is_some(),
                    // containerd's CRI plugin keeps the status as this int32.
                    exit_code: exit_status as i32,
                    finished_at: exited_at.unwrap_or_else(crate::util::unix_nanos_now),
                    container_id,
                };
                tracing::debug!(container.id = %exit.container_id, exit_code = exit.exit_code, oom = exit.oom, "container task exited");
                // The exit is shown only with its termination message, as the
                // kubelet never shows one without the other.
                let message = match &self.cri {
                    Some(cri) => termination_message(cri, &exit).await,
                    None => None,
                };
                let shown = message.is_some_and(|m| {
                    exit.message = m;
                    self.metrics
                        .exit_sink()
                        .is_some_and(|sink| sink.container_exited(&exit))
                });
                if shown {
                    self.metrics.inc("exit_reflected");
                }
                self.poke.notify_one();
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
                if self.oom.len() >= OOM_MEMORY
                    && !self.oom.contains_key(&container_id)
                    && let Some(oldest) = self
                        .oom
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(id, _)| id.clone())
                {
                    self.oom.remove(&oldest);
                }
                self.oom.insert(container_id, Instant::now());
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

/// The termination message of the container whose exit is `exit`, read as
/// the relist will read it once CRI reports the exit
/// ([`observed::fill_termination_message`]): the termination-message file is
/// complete when the process has exited. `None` when it cannot be known yet:
/// CRI cannot be asked, or `FallbackToLogsOnError` with a failure and no
/// file message, whose log tail containerd may still be copying. Then only
/// the relist shows the exit.
async fn termination_message(cri: &RuntimeClient, exit: &ContainerExit) -> Option<String> {
    let status = cri
        .container_status(api::ContainerStatusRequest {
            container_id: exit.container_id.clone(),
            verbose: false,
        })
        .await
        .ok()?
        .status?;
    let mut from_file = status.clone();
    from_file.state = api::ContainerState::ContainerExited as i32;
    from_file.exit_code = exit.exit_code;
    from_file.message.clear();
    from_file
        .annotations
        .remove(observed::keys::CONTAINER_TERMINATION_MESSAGE_POLICY);
    observed::fill_termination_message(&mut from_file);
    let fallback = status
        .annotations
        .get(observed::keys::CONTAINER_TERMINATION_MESSAGE_POLICY)
        .is_some_and(|p| p == "FallbackToLogsOnError");
    if fallback && exit.exit_code != 0 && from_file.message.is_empty() {
        return None;
    }
    Some(from_file.message)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use berth_cri::fake::FakeRuntime;
    use berth_cri::{RuntimeClient, api};
    use prometheus_client::registry::Registry;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::{UnboundedReceiverStream, UnixListenerStream};
    use tonic::Status;

    use super::*;
    use crate::observed::ContainerState;
    use crate::pleg::{Pleg, RuntimeCache};

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
        task_exit_with(namespace, container_id, id, 137, None)
    }

    fn task_exit_with(
        namespace: &str,
        container_id: &str,
        id: &str,
        exit_status: u32,
        exited_at: Option<prost_types::Timestamp>,
    ) -> Envelope {
        let exit = TaskExit {
            container_id: container_id.to_string(),
            id: id.to_string(),
            pid: 42,
            exit_status,
            exited_at,
        };
        envelope(
            namespace,
            TOPIC_EXIT,
            exit.encode_to_vec(),
            "containerd.events.TaskExit",
        )
    }

    fn task_oom(container_id: &str) -> Envelope {
        let oom = TaskOom {
            container_id: container_id.to_string(),
        };
        envelope(
            "k8s.io",
            TOPIC_OOM,
            oom.encode_to_vec(),
            "containerd.events.TaskOOM",
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
    ) -> (Arc<Notify>, CancellationToken, tokio::task::JoinHandle<()>) {
        spawn_with(endpoint, m, None)
    }

    /// [`spawn`], reading termination messages over `cri` when given.
    fn spawn_with(
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
                exit_status: 137,
                exited_at: None
            }
        );
        assert_eq!(
            classify(&task_exit("k8s.io", "c1", ""), "k8s.io"),
            Event::ContainerExit {
                container_id: "c1".into(),
                exit_status: 137,
                exited_at: None
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
        assert_eq!(
            classify(
                &task_exit_with(
                    "k8s.io",
                    "c1",
                    "c1",
                    0,
                    Some(prost_types::Timestamp {
                        seconds: 2,
                        nanos: 5
                    })
                ),
                "k8s.io"
            ),
            Event::ContainerExit {
                container_id: "c1".into(),
                exit_status: 0,
                exited_at: Some(2_000_000_005)
            }
        );
        assert_eq!(
            classify(&task_oom("c1"), "k8s.io"),
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
        let (poke, cancel, task) = spawn(&events.endpoint(), &m);
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
        let (poke, cancel, task) = spawn(&events.endpoint(), &m);
        events.wait_subscribes(1).await;
        assert!(m.following(), "a live subscription is followed");

        events.end_streams();
        events.wait_subscribes(2).await;
        assert_eq!(m.get("stream_error"), 1);
        // The end itself wakes a relist (what happened in the gap).
        assert!(poked(&poke, Duration::from_secs(1)).await);

        events.publish(task_exit("k8s.io", "c1", "c1"));
        assert!(poked(&poke, Duration::from_secs(5)).await);
        assert_eq!(m.get("task_exit"), 1);
        assert_eq!(m.get("subscribed"), 2);
        assert!(m.following());

        cancel.cancel();
        task.await.unwrap();
        assert!(!m.following(), "a stopped subscriber follows nothing");
    }

    #[tokio::test]
    async fn a_runtime_that_comes_late_is_subscribed_with_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let m = metrics();
        let (_poke, cancel, task) = spawn(&format!("unix://{}", socket.display()), &m);
        // No socket yet: failures are counted, the subscriber keeps trying.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(m.get("stream_error") >= 2, "{}", m.get("stream_error"));
        assert!(!task.is_finished());
        // Between attempts nothing is followed (the PLEG relists at its own
        // period); an attempt in flight is brief against a missing socket.
        let mut followed = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            followed += usize::from(m.following());
        }
        assert!(followed < 20, "not followed while the runtime is away");
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_runtime_without_the_event_service_is_left_to_the_relist() {
        // The fake CRI serves CRI only, as CRI-O: Subscribe is Unimplemented.
        let cri = FakeRuntime::start().await;
        let m = metrics();
        let (poke, _cancel, task) = spawn(&cri.endpoint(), &m);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("gives up at once")
            .unwrap();
        assert_eq!(m.get("stream_error"), 0);
        assert_eq!(m.get("subscribed"), 0);
        assert!(!m.following(), "the relist alone: at its own period");
        assert!(!poked(&poke, Duration::from_millis(50)).await);
    }

    /// A running container `name` in a new sandbox of pod `uid` on the fake.
    async fn running_container(
        client: &RuntimeClient,
        image: &str,
        uid: &str,
        name: &str,
    ) -> String {
        let labels: HashMap<String, String> =
            [(crate::observed::keys::POD_UID.to_string(), uid.to_string())].into();
        let sandbox = client
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(api::PodSandboxConfig {
                    metadata: Some(api::PodSandboxMetadata {
                        name: format!("p-{name}"),
                        uid: uid.into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    labels: labels.clone(),
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
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(api::ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    labels,
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
        id
    }

    /// The newest state of container `id` of pod `uid` as `/pods` would show it.
    fn shown(cache: &RuntimeCache, uid: &str, id: &str) -> crate::observed::ObservedContainer {
        cache
            .get(uid)
            .containers
            .into_iter()
            .find(|c| c.id == id)
            .expect("container in the cache")
    }

    async fn wait_shown_exited(cache: &RuntimeCache, uid: &str, id: &str) {
        for _ in 0..200 {
            if shown(cache, uid, id).state == ContainerState::Exited {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("container {id} not shown exited");
    }

    #[tokio::test]
    async fn an_exit_is_shown_at_once_before_cri_reports_it_and_an_oom_makes_it_oom_killed() {
        let cri = FakeRuntime::start().await;
        let client = cri.client().await;
        let image = cri.add_image("busybox");
        let killed = running_container(&client, &image, "u1", "killed").await;
        let oomed = running_container(&client, &image, "u2", "oomed").await;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let cache = RuntimeCache::new();
        let mut pleg = Pleg::new(client.clone(), cache.clone(), metrics.clone());
        pleg.relist().await.unwrap();
        assert_eq!(shown(&cache, "u1", &killed).state, ContainerState::Running);

        let events = FakeEvents::start().await;
        let m = metrics.runtime_events.clone();
        let (poke, cancel, task) = spawn_with(&events.endpoint(), &m, Some(client.clone()));
        events.wait_subscribes(1).await;

        // An exec'd process of the container exits: the container runs on.
        events.publish(task_exit("k8s.io", &killed, "exec-1"));
        assert!(!poked(&poke, Duration::from_millis(100)).await);
        assert_eq!(shown(&cache, "u1", &killed).state, ContainerState::Running);

        // Its own task exits: shown exited at once, CRI still says running.
        let at = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 7,
        };
        events.publish(task_exit_with("k8s.io", &killed, &killed, 137, Some(at)));
        wait_shown_exited(&cache, "u1", &killed).await;
        assert!(
            poked(&poke, Duration::from_secs(1)).await,
            "the relist is woken"
        );
        let c = shown(&cache, "u1", &killed);
        assert_eq!(
            (c.exit_code, c.finished_at, c.reason.as_str()),
            (137, 1_700_000_000_000_000_007, "Error")
        );
        assert_eq!(
            cri.container(&killed).map(|c| c.state),
            Some(api::ContainerState::ContainerRunning)
        );

        // An OOM, then the exit: OOMKilled, as CRI will say.
        events.publish(task_oom(&oomed));
        events.publish(task_exit("k8s.io", &oomed, &oomed));
        wait_shown_exited(&cache, "u2", &oomed).await;
        assert_eq!(shown(&cache, "u2", &oomed).reason, "OOMKilled");

        // An exit of a container the cache never listed: the relist judges.
        events.publish(task_exit("k8s.io", "unknown", "unknown"));
        for _ in 0..200 {
            if m.get("task_exit") == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(m.get("task_exit"), 3);
        assert_eq!(m.get("task_oom"), 1);
        assert_eq!(m.get("exit_reflected"), 2);
        assert_eq!(m.get("exec_exit_ignored"), 1);

        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_a_pleg_an_exit_only_pokes() {
        let events = FakeEvents::start().await;
        let m = metrics();
        let (poke, cancel, task) = spawn(&events.endpoint(), &m);
        events.wait_subscribes(1).await;
        events.publish(task_exit("k8s.io", "c1", "c1"));
        assert!(poked(&poke, Duration::from_secs(5)).await);
        assert_eq!(m.get("exit_reflected"), 0);
        cancel.cancel();
        task.await.unwrap();
    }
}
