//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log, read
//! from the CRI log file the runtime writes
//! (`<pod-logs-dir>/<ns>_<name>_<uid>/<container>/<restartCount>.log`), as the
//! kubelet's `kuberuntime/logs.ReadLogs` reads it.
//!
//! - The container: the one the pod status names (`containerID` of the
//!   running or last terminated container; with `previous`, the
//!   `lastState.terminated` one), its log path from CRI `ContainerStatus`.
//! - Options (`v1.PodLogOptions`): `tailLines` (the last N records),
//!   `limitBytes` (output cut after N bytes), `sinceSeconds`/`sinceTime`
//!   (records older are skipped), `timestamps` (each record prefixed with its
//!   time, RFC 3339 with 9 fraction digits), `follow` (stream until the
//!   container is no longer running and the file is drained, or the client
//!   goes away). A partial record (`P`) is written without a line end, so it
//!   joins the next one.
//! - `follow` waits on inotify (the `notify` crate) with a 1 s poll as a safety
//!   net, checks with `ContainerStatus` whether the container still runs, and
//!   reopens the path when the file is recreated (as the kubelet does; the
//!   runtime writes a new container's log to a new file, which is not
//!   followed: one request follows one container).
//!
//! Errors answer as the kubelet's, in plain text: 404 `pod "p" does not
//! exist`, 404 `container "c" not found in pod "p"`, 400 `container "c" in pod
//! "p" is waiting to start: ContainerCreating`, 400 `previous terminated
//! container "c" in pod "p" not found`, 400/422 for a bad query. One
//! difference: a log file that cannot be opened is a 400 here, where the
//! kubelet has already sent 200 and appends the error to the body.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_cri::{RuntimeClient, api};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ContainerStatus;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{Host, container_status, has_container, runtime_id, text};
use crate::crilog::{CriRecord, parse_cri_record};

/// How often a follower checks for new data when no inotify event arrives.
const FORCE_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Output is sent in chunks of about this size (and at every wait for data).
const CHUNK: usize = 32 * 1024;

/// A record's time as the kubelet writes it with `timestamps=true`
/// (`RFC3339NanoFixed`: always 9 fraction digits).
pub fn format_time(record: &CriRecord<'_>) -> String {
    let t = record.time_text.as_bytes();
    // containerd already writes this format; keep its text (and zone offset).
    let fixed = t.len() >= 30
        && t[19] == b'.'
        && t[20..29].iter().all(u8::is_ascii_digit)
        && matches!(t[29], b'Z' | b'+' | b'-');
    if fixed {
        record.time_text.to_string()
    } else {
        record.time.strftime("%Y-%m-%dT%H:%M:%S.%NZ").to_string()
    }
}

/// The kubelet's `PodLogOptions`, as its `ReadLogs` uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    /// Records from the end to start at; -1: all.
    pub tail: i64,
    /// Bytes to write at most; -1: no limit.
    pub limit_bytes: i64,
    /// Records older than this are skipped.
    pub since: Option<Timestamp>,
    pub follow: bool,
    pub timestamps: bool,
    pub previous: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            tail: -1,
            limit_bytes: -1,
            since: None,
            follow: false,
            timestamps: false,
            previous: false,
        }
    }
}

/// Why a query was refused, as the kubelet answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A value of the wrong type: 400 `{"message": "Unable to decode query."}`.
    Decode,
    /// Values the API rejects (negative tail, both since forms…): 422.
    Invalid,
}

impl QueryError {
    fn response(&self) -> Response {
        match self {
            QueryError::Decode => text(
                StatusCode::BAD_REQUEST,
                r#"{"message": "Unable to decode query."}"#,
            ),
            QueryError::Invalid => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"message": "Invalid request."}"#,
            ),
        }
    }
}

/// A boolean query parameter as Kubernetes converts one: false only for
/// `0`, `f`, `false`, `n`, `no` (any case).
fn query_bool(v: &str) -> bool {
    !(v == "0"
        || ["f", "false", "n", "no"]
            .iter()
            .any(|f| v.eq_ignore_ascii_case(f)))
}

/// Parse the query of a `containerLogs` request (first value of each key wins),
/// validated as `ValidatePodLogOptions`; `now` anchors `sinceSeconds`.
pub fn parse_log_options(query: &str, now: Timestamp) -> Result<LogOptions, QueryError> {
    let mut first: std::collections::HashMap<String, String> = Default::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        first
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    // The old `tail` parameter; "all" is the same as none.
    if let Some(tail) = first.remove("tail") {
        if tail == "all" {
            first.remove("tailLines");
        } else {
            first.insert("tailLines".into(), tail);
        }
    }
    let int = |key: &str| -> Result<Option<i64>, QueryError> {
        first
            .get(key)
            .map(|v| v.parse::<i64>().map_err(|_| QueryError::Decode))
            .transpose()
    };
    let flag = |key: &str| first.get(key).is_some_and(|v| query_bool(v));
    let tail = int("tailLines")?;
    let limit = int("limitBytes")?;
    let since_seconds = int("sinceSeconds")?;
    let since_time = first
        .get("sinceTime")
        .map(|v| v.parse::<Timestamp>().map_err(|_| QueryError::Decode))
        .transpose()?;
    if tail.is_some_and(|t| t < 0)
        || limit.is_some_and(|l| l < 1)
        || since_seconds.is_some_and(|s| s < 1)
        || (since_seconds.is_some() && since_time.is_some())
    {
        return Err(QueryError::Invalid);
    }
    let mut since = since_seconds.map(|s| {
        now.checked_sub(jiff::SignedDuration::from_secs(s))
            .unwrap_or(Timestamp::MIN)
    });
    if let Some(t) = since_time
        && since.is_none_or(|s| t > s)
    {
        since = Some(t);
    }
    Ok(LogOptions {
        tail: tail.unwrap_or(-1),
        limit_bytes: limit.unwrap_or(-1),
        since,
        follow: flag("follow"),
        timestamps: flag("timestamps"),
        previous: flag("previous"),
    })
}

/// The kubelet's `validateContainerLogStatus`: the `containerID` whose log to
/// read, or the message explaining why there is none.
pub fn log_container_id(
    pod_name: &str,
    container: &str,
    status: Option<&ContainerStatus>,
    previous: bool,
) -> Result<String, String> {
    let Some(status) = status else {
        return Err(format!(
            "container {container:?} in pod {pod_name:?} is not available"
        ));
    };
    let last_terminated = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let last_id = last_terminated
        .and_then(|t| t.container_id.clone())
        .filter(|id| !id.is_empty());
    let state = status.state.clone().unwrap_or_default();
    let is_terminated = || format!("container {container:?} in pod {pod_name:?} is terminated");
    if previous {
        return last_id.ok_or_else(|| {
            format!("previous terminated container {container:?} in pod {pod_name:?} not found")
        });
    }
    if state.running.is_some() {
        return status
            .container_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(is_terminated);
    }
    if let Some(t) = &state.terminated {
        return match t.container_id.clone().filter(|id| !id.is_empty()) {
            Some(id) => Ok(id),
            None => last_id.ok_or_else(is_terminated),
        };
    }
    if last_terminated.is_some() {
        return last_id.ok_or_else(is_terminated);
    }
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or("");
        let why = match reason {
            "ErrImagePull" => "image can't be pulled".to_string(),
            "ImagePullBackOff" => "trying and failing to pull image".to_string(),
            other => other.to_string(),
        };
        return Err(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {why}"
        ));
    }
    Err(format!(
        "container {container:?} in pod {pod_name:?} is waiting to start - no logs yet"
    ))
}

/// The handler.
pub async fn container_logs(
    State(host): State<Arc<Host>>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let opts = match parse_log_options(query.as_deref().unwrap_or(""), Timestamp::now()) {
        Ok(o) => o,
        Err(e) => return e.response(),
    };
    let Some(pod) = host.pod(&namespace, &pod_name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {pod_name:?} does not exist"),
        );
    };
    if !has_container(&pod, &container) {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod_name:?}"),
        );
    }
    let container_id = match log_container_id(
        &pod_name,
        &container,
        container_status(&pod, &container),
        opts.previous,
    ) {
        Ok(id) => id,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let id = runtime_id(&container_id).to_string();
    let log_path = match host
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
    {
        Ok(r) => match r.status {
            Some(s) => PathBuf::from(s.log_path),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unable to retrieve container logs for {container_id}"),
                );
            }
        },
        Err(e) => {
            tracing::debug!(container = %container_id, error = %e, "ContainerStatus failed");
            return text(
                StatusCode::BAD_REQUEST,
                format!("unable to retrieve container logs for {container_id}"),
            );
        }
    };
    match stream_log(log_path, id, opts, host.runtime.clone()).await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(msg) => text(StatusCode::BAD_REQUEST, msg),
    }
}

/// Open the log at `path`, find the start (`tail`), and stream it as a body
/// from a task that ends with the log (or the client).
pub async fn stream_log(
    path: PathBuf,
    container_id: String,
    opts: LogOptions,
    runtime: RuntimeClient,
) -> Result<Body, String> {
    let tail = opts.tail;
    let (path, file) = tokio::task::spawn_blocking(move || open_at_tail(&path, tail))
        .await
        .map_err(|e| format!("reading the log: {e}"))??;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let reader = Reader {
        remain: if opts.limit_bytes >= 0 {
            opts.limit_bytes
        } else {
            i64::MAX
        },
        limited: (opts.tail >= 0 && !opts.follow).then_some(opts.tail),
        path,
        file: BufReader::new(tokio::fs::File::from_std(file)),
        opts,
        container_id,
        runtime,
        tx,
        watcher: None,
        last_running_check: None,
    };
    tokio::spawn(reader.run());
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Body::from_stream(stream))
}

/// Resolve symlinks, open, and seek to the start of the last `tail` records.
fn open_at_tail(path: &FsPath, tail: i64) -> Result<(PathBuf, std::fs::File), String> {
    use std::io::{Seek, SeekFrom};
    let resolved = std::fs::canonicalize(path).map_err(|e| {
        format!(
            "failed to try resolving symlinks in path {:?}: {e}",
            path.display().to_string()
        )
    })?;
    let shown = resolved.display().to_string();
    let mut f = std::fs::File::open(&resolved)
        .map_err(|e| format!("failed to open log file {shown:?}: {e}"))?;
    let start = tail_start(&mut f, tail)
        .map_err(|e| format!("failed to tail {tail} lines of log file {shown:?}: {e}"))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| format!("failed to seek {start} in log file {shown:?}: {e}"))?;
    Ok((resolved, f))
}

/// The offset where the last `n` lines start (the kubelet's
/// `tail.FindTailLineStartIndex`); 0 for `n < 0`.
pub fn tail_start<F: std::io::Read + std::io::Seek>(f: &mut F, n: i64) -> std::io::Result<u64> {
    use std::io::SeekFrom;
    const BLOCK: u64 = 1024;
    if n < 0 {
        return Ok(0);
    }
    let n = n as u64;
    let size = f.seek(SeekFrom::End(0))?;
    let mut right = size;
    let mut left = size;
    let mut count: u64 = 0;
    let mut buf: Vec<u8> = Vec::new();
    // Read blocks backwards until more than n line ends are seen (the last
    // line's own end is one of them).
    while right > 0 && count <= n {
        left = right.saturating_sub(BLOCK);
        buf = vec![0; (right - left) as usize];
        f.seek(SeekFrom::Start(left))?;
        f.read_exact(&mut buf)?;
        count += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        right = left;
    }
    // Skip the surplus line ends at the front of the earliest block read.
    let mut skip = &buf[..];
    while count > n {
        match skip.iter().position(|&b| b == b'\n') {
            Some(i) => {
                skip = &skip[i + 1..];
                left += i as u64 + 1;
            }
            None => break,
        }
        count -= 1;
    }
    Ok(left)
}

enum Stop {
    /// The client went away: nothing more to send.
    ClientGone,
    /// An error to append to the body (as the kubelet does once streaming).
    Failed(String),
}

struct Reader {
    path: PathBuf,
    file: BufReader<tokio::fs::File>,
    opts: LogOptions,
    /// Bytes still allowed.
    remain: i64,
    /// Records still to write in tail mode without follow.
    limited: Option<i64>,
    container_id: String,
    runtime: RuntimeClient,
    tx: mpsc::Sender<Bytes>,
    watcher: Option<(
        notify::RecommendedWatcher,
        mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    )>,
    last_running_check: Option<Instant>,
}

impl Reader {
    async fn run(mut self) {
        let mut out = Vec::with_capacity(CHUNK);
        match self.read(&mut out).await {
            Ok(()) | Err(Stop::ClientGone) => {}
            Err(Stop::Failed(msg)) => {
                tracing::warn!(path = %self.path.display(), error = %msg, "reading a container log failed");
                out.extend_from_slice(msg.as_bytes());
            }
        }
        let _ = self.flush(&mut out).await;
    }

    async fn read(&mut self, out: &mut Vec<u8>) -> Result<(), Stop> {
        let mut line: Vec<u8> = Vec::new();
        let mut stop = false;
        // False once the container is seen not running: read to the next EOF, then end.
        let mut found = true;
        loop {
            if stop || self.limited == Some(0) {
                return Ok(());
            }
            self.file.read_until(b'\n', &mut line).await.map_err(|e| {
                Stop::Failed(format!("failed to read log file {:?}: {e}", self.path))
            })?;
            if line.last() != Some(&b'\n') {
                // End of the file; `line` holds an incomplete record, if any.
                if self.opts.follow {
                    if !found {
                        return Ok(());
                    }
                    // Keep the incomplete record: the rest of it comes next.
                    self.flush(out).await?;
                    if self.watcher.is_none() {
                        self.watch()?;
                        // An event may have been missed before the watch began.
                        continue;
                    }
                    let (now_found, recreated) = self.wait().await?;
                    found = now_found;
                    if recreated {
                        self.reopen(&mut line).await?;
                    }
                    continue;
                }
                stop = true;
                if line.is_empty() {
                    continue;
                }
            }
            match parse_cri_record(&line) {
                Some(record) => {
                    if self.write(&record, out) {
                        return Ok(());
                    }
                    if let Some(n) = self.limited.as_mut() {
                        *n -= 1;
                    }
                }
                None => {
                    tracing::debug!(path = %self.path.display(), "skipping a log line not in CRI format");
                }
            }
            line.clear();
            if out.len() >= CHUNK {
                self.flush(out).await?;
            }
        }
    }

    /// Append one record to `out`; true when `limitBytes` is used up.
    fn write(&mut self, record: &CriRecord<'_>, out: &mut Vec<u8>) -> bool {
        if self.opts.since.is_some_and(|since| record.time < since) {
            return false;
        }
        let start = out.len();
        if self.opts.timestamps {
            out.extend_from_slice(format_time(record).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(record.message);
        let written = (out.len() - start) as i64;
        if written > self.remain {
            out.truncate(start + self.remain as usize);
            self.remain = 0;
        } else {
            self.remain -= written;
        }
        self.remain <= 0
    }

    async fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), Stop> {
        if out.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(out, Vec::with_capacity(CHUNK)));
        self.tx.send(chunk).await.map_err(|_| Stop::ClientGone)
    }

    fn watch(&mut self) -> Result<(), Stop> {
        use notify::Watcher as _;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .map_err(|e| Stop::Failed(format!("failed to create fsnotify watcher: {e}")))?;
        watcher
            .watch(&self.path, notify::RecursiveMode::NonRecursive)
            .map_err(|e| Stop::Failed(format!("failed to watch file {:?}: {e}", self.path)))?;
        self.watcher = Some((watcher, rx));
        Ok(())
    }

    /// The kubelet's `waitLogs`: (new data may be there, the file was recreated).
    /// `found` is false when the container no longer runs.
    async fn wait(&mut self) -> Result<(bool, bool), Stop> {
        if !self.running().await? {
            return Ok((false, false));
        }
        let Some((_, events)) = self.watcher.as_mut() else {
            return Ok((true, false));
        };
        let deadline = tokio::time::sleep(FORCE_CHECK_PERIOD);
        tokio::pin!(deadline);
        let mut errors_left = 5;
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Err(Stop::ClientGone),
                _ = &mut deadline => return Ok((true, false)),
                ev = events.recv() => {
                    use notify::EventKind;
                    use notify::event::ModifyKind;
                    match ev {
                        Some(Ok(ev)) => match ev.kind {
                            EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => {
                                return Ok((true, false));
                            }
                            EventKind::Create(_)
                            | EventKind::Remove(_)
                            | EventKind::Modify(ModifyKind::Name(_))
                            | EventKind::Modify(ModifyKind::Metadata(_)) => return Ok((true, true)),
                            _ => {}
                        },
                        Some(Err(e)) => {
                            if errors_left == 0 {
                                return Err(Stop::Failed(format!("watching {:?}: {e}", self.path)));
                            }
                            errors_left -= 1;
                        }
                        // The watcher is kept in `self`, so its sender lives; be safe anyway.
                        None => return Ok((true, false)),
                    }
                }
            }
        }
    }

    /// Whether the container still runs (CRI `ContainerStatus`), asked at most
    /// once per [`FORCE_CHECK_PERIOD`] while it does (a busy log would otherwise
    /// ask on every write).
    async fn running(&mut self) -> Result<bool, Stop> {
        if self
            .last_running_check
            .is_some_and(|at| at.elapsed() < FORCE_CHECK_PERIOD)
        {
            return Ok(true);
        }
        let status = self
            .runtime
            .container_status(api::ContainerStatusRequest {
                container_id: self.container_id.clone(),
                verbose: false,
            })
            .await;
        match status {
            Ok(r) => {
                let running = r
                    .status
                    .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32);
                if running {
                    self.last_running_check = Some(Instant::now());
                }
                Ok(running)
            }
            // Removed while followed: it is not running.
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(Stop::Failed(e.to_string())),
        }
    }

    /// The file at `path` was recreated (rotation): continue with the new one.
    async fn reopen(&mut self, line: &mut Vec<u8>) -> Result<(), Stop> {
        let file = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Stop::Failed(format!(
                    "failed to open log file {:?}: {e}",
                    self.path
                )));
            }
        };
        line.clear();
        self.file = BufReader::new(file);
        if let Some((watcher, _)) = self.watcher.as_mut() {
            use notify::Watcher as _;
            let _ = watcher.unwatch(&self.path);
            watcher
                .watch(&self.path, notify::RecursiveMode::NonRecursive)
                .map_err(|e| Stop::Failed(format!("failed to watch file {:?}: {e}", self.path)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crilog::LogStream;

    #[test]
    fn parses_cri_records() {
        let r = parse_cri_record(b"2016-10-06T00:17:09.669794202Z stdout F text\n").unwrap();
        assert_eq!(r.stream, LogStream::Stdout);
        assert!(!r.partial);
        assert_eq!(r.message, b"text\n");
        let r = parse_cri_record(b"2016-10-06T00:17:09.669794202Z stderr P par\n").unwrap();
        assert!(r.partial);
        assert_eq!(r.message, b"par");
        assert!(parse_cri_record(b"garbage\n").is_none());
        assert!(parse_cri_record(b"2016-10-06T00:17:09Z stdin F x\n").is_none());
        assert!(parse_cri_record(b"soon stdout F x\n").is_none());
    }

    #[test]
    fn time_is_written_with_nine_digits() {
        let r = parse_cri_record(b"2016-10-06T00:17:09.669794202Z stdout F x\n").unwrap();
        assert_eq!(format_time(&r), "2016-10-06T00:17:09.669794202Z");
        let r = parse_cri_record(b"2016-10-06T00:17:09.5Z stdout F x\n").unwrap();
        assert_eq!(format_time(&r), "2016-10-06T00:17:09.500000000Z");
    }

    #[test]
    fn tail_start_counts_records_from_the_end() {
        let data = b"a\nb\nc\n".to_vec();
        let mut c = std::io::Cursor::new(data.clone());
        assert_eq!(tail_start(&mut c, 0).unwrap(), 6);
        assert_eq!(tail_start(&mut c, 1).unwrap(), 4);
        assert_eq!(tail_start(&mut c, 2).unwrap(), 2);
        assert_eq!(tail_start(&mut c, 3).unwrap(), 0);
        assert_eq!(tail_start(&mut c, 10).unwrap(), 0);
        assert_eq!(tail_start(&mut c, -1).unwrap(), 0);
        // Across blocks.
        let long: Vec<u8> = (0..1000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let mut c = std::io::Cursor::new(long.clone());
        let at = tail_start(&mut c, 3).unwrap() as usize;
        assert_eq!(&long[at..], b"line 997\nline 998\nline 999\n");
    }

    #[test]
    fn options_as_the_kubelet_reads_them() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let o =
            parse_log_options("tailLines=2&limitBytes=10&timestamps=true&follow=1", now).unwrap();
        assert_eq!(o.tail, 2);
        assert_eq!(o.limit_bytes, 10);
        assert!(o.timestamps && o.follow && !o.previous);
        let o = parse_log_options("sinceSeconds=60&previous=false", now).unwrap();
        assert_eq!(o.since, Some("2026-01-01T00:00:00Z".parse().unwrap()));
        let o = parse_log_options("tail=all&tailLines=3", now).unwrap();
        assert_eq!(o.tail, -1);
        assert_eq!(
            parse_log_options("tailLines=x", now),
            Err(QueryError::Decode)
        );
        assert_eq!(
            parse_log_options("tailLines=-1", now),
            Err(QueryError::Invalid)
        );
        assert_eq!(
            parse_log_options("sinceSeconds=1&sinceTime=2026-01-01T00:00:00Z", now),
            Err(QueryError::Invalid)
        );
    }
}
