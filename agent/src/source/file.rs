//! The manifest directory source, like the kubelet's `--pod-manifest-path`
//! (`pkg/kubelet/config/file.go`, `file_linux.go`): every `*.yaml`, `*.yml` and
//! `*.json` file directly in the directory is one static pod.
//!
//! [`scan`] reads the directory once into a [`Snapshot`]; [`spawn`] keeps
//! [`PodConfig`] up to date by rescanning when inotify reports a change (bursts
//! debounced) and every `period` regardless, and copes with the directory not
//! existing yet, or being deleted and recreated.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::manifest::{
    CONFIG_SEEN_ANNOTATION, MAX_MANIFEST_BYTES, parse_manifest, too_large_reason,
};
use super::{ManifestError, PodConfig, Snapshot, SourcedPod, pod_key, uid_of};
use crate::Uid;

/// How long a burst of file events must be quiet before the directory is
/// rescanned (the first event after a quiet spell is read at once).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A burst never delays a rescan longer than this.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// While the directory is missing (or unwatchable), how often to look for it.
const MISSING_DIR_POLL: Duration = Duration::from_secs(1);

/// Remembers when each (file, UID) was first seen, so the
/// `kubernetes.io/config.seen` annotation stays the same across rescans and an
/// unchanged pod does not look changed every period.
///
/// It also keeps each manifest's last decoding: a rescan that finds a file's
/// bytes unchanged reuses it instead of parsing the YAML again (the periodic
/// rescan of 100 unchanged manifests every 20 s was a tenth of the agent's
/// idle CPU). A file is still read at every scan, so any change is seen.
#[derive(Debug, Default)]
pub struct SeenMemory {
    first_seen: HashMap<(PathBuf, Uid), String>,
    parsed: HashMap<PathBuf, Parsed>,
    /// Keys the content hash per process, so a crafted collision cannot be
    /// computed offline (it could only hide an edit of one's own manifest).
    hasher: std::hash::RandomState,
    /// What the last complete scan read: with the same files, bytes and
    /// incumbents a scan's result is the same, and is not built again.
    last_reading: Option<Reading>,
}

/// The inputs of one scan: every candidate file in order with its length and
/// hash (or why it could not be read), and the incumbents.
#[derive(Debug, PartialEq)]
struct Reading {
    node_name: String,
    files: Vec<(PathBuf, ReadingKey)>,
    incumbents: Incumbents,
}

/// One file of a [`Reading`]: its length and keyed hash, or why it could not
/// be read.
type ReadingKey = Result<(usize, u64), String>;

/// One manifest's last decoding, with what it was decoded from.
#[derive(Debug)]
struct Parsed {
    node_name: String,
    len: usize,
    hash: u64,
    result: Result<SourcedPod, ManifestError>,
}

impl SeenMemory {
    /// An empty memory: everything scanned next is seen now.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first-seen time of this file's pod with this UID (RFC 3339 with
    /// nanoseconds); now, if it is new.
    pub fn stamp(&mut self, file: &Path, uid: &str) -> String {
        self.first_seen
            .entry((file.to_path_buf(), uid.to_string()))
            .or_insert_with(|| jiff::Timestamp::now().to_string())
            .clone()
    }

    /// Forget every (file, UID) not in `live`.
    fn retain(&mut self, live: &HashSet<(PathBuf, Uid)>) {
        self.first_seen.retain(|key, _| live.contains(key));
    }

    /// `path`'s manifest decoded from `bytes`: the last decoding when the
    /// bytes (length and keyed hash) and node name are the same, else parsed
    /// now and remembered.
    fn parse(
        &mut self,
        path: &Path,
        bytes: &[u8],
        node_name: &str,
    ) -> Result<SourcedPod, ManifestError> {
        let hash = self.hash(bytes);
        if let Some(p) = self.parsed.get(path)
            && p.len == bytes.len()
            && p.hash == hash
            && p.node_name == node_name
        {
            return p.result.clone();
        }
        let result = parse_manifest(path, bytes, node_name);
        self.parsed.insert(
            path.to_path_buf(),
            Parsed {
                node_name: node_name.to_string(),
                len: bytes.len(),
                hash,
                result: result.clone(),
            },
        );
        result
    }

    /// What a reading remembers of one file: its length and hash, or why it
    /// could not be read; `None` for a file that is not a manifest after all
    /// (vanished, a directory).
    fn reading_key(&self, read: &Result<Option<Vec<u8>>, ManifestError>) -> Option<ReadingKey> {
        match read {
            Ok(Some(bytes)) => Some(Ok((bytes.len(), self.hash(bytes)))),
            Ok(None) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }

    /// The keyed hash of a manifest's bytes.
    fn hash(&self, bytes: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(bytes)
    }

    /// Forget the decodings of files not read in this scan.
    fn retain_parsed(&mut self, read: &HashSet<PathBuf>) {
        self.parsed.retain(|path, _| read.contains(path));
    }
}

/// True for names the scan skips: hidden files and editor temporaries
/// (`.#x`, `#x#`, `x~`, `x.swp`, `x.swx`, vim's `4913` probe).
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
        || name == "4913"
}

/// True for the manifest extensions: `.yaml`, `.yml`, `.json`.
pub fn has_manifest_extension(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

fn dir_error(dir: &Path, e: &io::Error) -> ManifestError {
    let reason = match e.kind() {
        io::ErrorKind::NotFound => "manifest directory does not exist".to_string(),
        io::ErrorKind::NotADirectory => "manifest path is not a directory".to_string(),
        _ => format!("cannot read the manifest directory: {e}"),
    };
    ManifestError {
        file: dir.to_path_buf(),
        field: None,
        reason,
    }
}

/// Read one manifest: `Ok(None)` when it is not a regular file or vanished
/// since the listing; too large files are refused by size before reading.
fn read_manifest(path: &Path) -> Result<Option<Vec<u8>>, ManifestError> {
    let error = |reason: String| ManifestError {
        file: path.to_path_buf(),
        field: None,
        reason,
    };
    // Follows symlinks, as the kubelet's os.Stat does.
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(format!("cannot read the file: {e}"))),
    };
    if meta.is_dir() {
        debug!(path = %path.display(), "not recursing into manifest subdirectory");
        return Ok(None);
    }
    if !meta.is_file() {
        // A FIFO, socket or device named like a manifest: never opened (a
        // FIFO would block the scan), reported as upstream's file source does.
        return Err(error(
            "not a regular file (a FIFO, socket or device); not read".to_string(),
        ));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(error(too_large_reason(meta.len())));
    }
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(format!("cannot read the file: {e}"))),
    };
    let mut bytes = Vec::new();
    // The file may grow after the size check: never read more than the limit + 1.
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(format!("cannot read the file: {e}")))?;
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_MANIFEST_BYTES {
        return Err(error(too_large_reason(meta.len().max(len))));
    }
    Ok(Some(bytes))
}

/// The pods the agent already has, which keep their names when a second
/// manifest claims one of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incumbents {
    /// UIDs the agent already runs or holds: the runtime's pods and the last
    /// reading's.
    pub uids: HashSet<Uid>,
    /// The file that held each `namespace/name` in the last reading (so an
    /// incumbent edited at the same moment as a duplicate appears still wins).
    pub files: HashMap<String, PathBuf>,
}

/// A manifest whose pod is valid but is not run because another manifest's
/// pod holds its name (upstream's `FailedValidation`).
#[derive(Debug, Clone, PartialEq)]
pub struct IgnoredPod {
    pub pod: k8s_openapi::api::core::v1::Pod,
    pub file: PathBuf,
    /// The manifest that keeps the name.
    pub winner: PathBuf,
}

impl IgnoredPod {
    /// The event upstream's `filterInvalidPods` records for it.
    pub fn event_message(&self) -> String {
        let meta = &self.pod.metadata;
        let name = meta.name.as_deref().unwrap_or_default();
        format!(
            "Error validating pod {name}_{}({}) from file due to duplicate pod name {name:?}, ignoring",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.uid.as_deref().unwrap_or_default(),
        )
    }
}

/// Read every manifest directly in `dir` (not recursively) into pods and
/// errors, as [`scan_preferring`] does with no incumbents: when two files
/// define the same name, the lexically first wins.
pub fn scan(dir: &Path, node_name: &str, seen: &mut SeenMemory) -> Snapshot {
    scan_preferring(dir, node_name, seen, &Incumbents::default()).0
}

/// Read every manifest directly in `dir` (not recursively) into pods and errors.
///
/// Each rejected file becomes a [`ManifestError`]; the scan never stops at one.
/// A missing directory yields one error for the directory and no pods. When two
/// files define the same `namespace/name` (after the node suffix), the pod the
/// agent already has keeps it ([`Incumbents`]: a running pod is never replaced
/// by a newcomer that repeats its name); among newcomers the lexically first
/// file wins (upstream's order). The others are rejected and returned as
/// [`IgnoredPod`]s. Two files with the same explicit UID: the first wins. Pods
/// come out sorted by file, errors by file and field. `seen` supplies stable
/// `kubernetes.io/config.seen` annotations.
pub fn scan_preferring(
    dir: &Path,
    node_name: &str,
    seen: &mut SeenMemory,
    incumbents: &Incumbents,
) -> (Snapshot, Vec<IgnoredPod>) {
    seen.last_reading = None;
    scan_if_changed(dir, node_name, seen, incumbents).unwrap_or_default()
}

/// [`scan_preferring`], or `None` when the directory holds exactly what the
/// last scan through `seen` read (the same files with the same bytes) and the
/// incumbents are the same: its result would be the same too. The periodic
/// rescan of a quiet directory then costs a listing and reading the files.
pub fn scan_if_changed(
    dir: &Path,
    node_name: &str,
    seen: &mut SeenMemory,
    incumbents: &Incumbents,
) -> Option<(Snapshot, Vec<IgnoredPod>)> {
    let mut snapshot = Snapshot::default();
    let mut ignored = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            snapshot.errors.push(dir_error(dir, &e));
            seen.retain(&HashSet::new());
            seen.retain_parsed(&HashSet::new());
            seen.last_reading = None;
            return Some((snapshot, ignored));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                snapshot.errors.push(dir_error(dir, &e));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            debug!(path = %entry.path().display(), "manifest name is not UTF-8, skipped");
            continue;
        };
        if is_ignored_name(name) || !has_manifest_extension(name) {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();

    // With a last reading to compare against, first read and hash every file
    // (one at a time, the bytes dropped at once: a directory of large
    // manifests is never held in memory together): unchanged, nothing more
    // is done.
    // (A listing that failed for an entry is read in full: its error is new.)
    if let Some(last) = seen
        .last_reading
        .as_ref()
        .filter(|_| snapshot.errors.is_empty())
    {
        let mut now = Vec::with_capacity(files.len());
        for path in &files {
            if let Some(key) = seen.reading_key(&read_manifest(path)) {
                now.push((path.clone(), key));
            }
        }
        if last.node_name == node_name && &last.incumbents == incumbents && last.files == now {
            return None;
        }
    }

    // The reading remembered is what is parsed now (a file may change
    // between the two passes: the next scan then sees it changed).
    let mut reading = Reading {
        node_name: node_name.to_string(),
        files: Vec::with_capacity(files.len()),
        incumbents: incumbents.clone(),
    };
    let mut parsed = Vec::new();
    let mut read = HashSet::new();
    for path in files {
        let bytes = read_manifest(&path);
        if let Some(key) = seen.reading_key(&bytes) {
            reading.files.push((path.clone(), key));
        }
        let bytes = match bytes {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                snapshot.errors.push(e);
                continue;
            }
        };
        let result = seen.parse(&path, &bytes, node_name);
        read.insert(path);
        match result {
            Ok(sp) => parsed.push(sp),
            Err(e) => snapshot.errors.push(e),
        }
    }
    seen.retain_parsed(&read);

    // Who keeps each name: the incumbent by UID, then by file, then the
    // lexically first (`parsed` is in file order; ties keep the first).
    let rank = |sp: &SourcedPod| {
        if incumbents.uids.contains(&uid_of(&sp.pod)) {
            0
        } else if incumbents.files.get(&pod_key(&sp.pod)) == Some(&sp.file) {
            1
        } else {
            2
        }
    };
    let mut winners: HashMap<String, (usize, u8)> = HashMap::new();
    for (i, sp) in parsed.iter().enumerate() {
        let r = rank(sp);
        let best = winners.entry(pod_key(&sp.pod)).or_insert((i, r));
        if r < best.1 {
            *best = (i, r);
        }
    }

    let mut by_uid: HashMap<Uid, PathBuf> = HashMap::new();
    let files: Vec<PathBuf> = parsed.iter().map(|sp| sp.file.clone()).collect();
    for (i, sp) in parsed.into_iter().enumerate() {
        let key = pod_key(&sp.pod);
        let uid = uid_of(&sp.pod);
        if let Some(&(w, r)) = winners.get(&key)
            && w != i
        {
            let name = sp.pod.metadata.name.as_deref().unwrap_or_default();
            let winner = files[w].clone();
            let held = if r < 2 {
                ", whose pod the agent already has: that pod keeps the name and this manifest is ignored"
            } else {
                ""
            };
            snapshot.errors.push(ManifestError {
                file: sp.file.clone(),
                field: Some("metadata.name".to_string()),
                reason: format!(
                    "Duplicate value: {name:?}: already defined in {}{held}",
                    winner.display()
                ),
            });
            ignored.push(IgnoredPod {
                pod: sp.pod,
                file: sp.file,
                winner,
            });
            continue;
        }
        if let Some(first) = by_uid.get(&uid) {
            snapshot.errors.push(ManifestError {
                file: sp.file.clone(),
                field: Some("metadata.uid".to_string()),
                reason: format!(
                    "Duplicate value: {uid:?}: already defined in {}",
                    first.display()
                ),
            });
            continue;
        }
        by_uid.insert(uid, sp.file.clone());
        snapshot.pods.push(sp);
    }

    let mut live = HashSet::new();
    for sp in &mut snapshot.pods {
        let uid = uid_of(&sp.pod);
        let stamp = seen.stamp(&sp.file, &uid);
        sp.pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CONFIG_SEEN_ANNOTATION.to_string(), stamp);
        live.insert((sp.file.clone(), uid));
    }
    seen.retain(&live);

    snapshot.pods.sort_by(|a, b| a.file.cmp(&b.file));
    snapshot
        .errors
        .sort_by(|a, b| (&a.file, &a.field).cmp(&(&b.file, &b.field)));
    // Remembered last, once the result is complete (a scan that panicked
    // midway is not taken for one that was applied).
    seen.last_reading = Some(reading);
    Some((snapshot, ignored))
}

/// Watch the manifest directory and keep `config` up to date until `cancel`.
///
/// The first scan is applied at once (so [`PodConfig::wait_loaded`] returns even
/// when the directory is missing). Then the directory is rescanned when inotify
/// reports a change in it (bursts debounced by ~100 ms) and every `period` (the
/// kubelet's file-check frequency). A missing directory is looked for every
/// second and watched once it appears; a deleted and recreated one is watched
/// anew. Each manifest error is logged once when it appears, each pod's warnings
/// once per pod UID.
pub fn spawn(
    dir: PathBuf,
    node_name: String,
    period: Duration,
    config: Arc<PodConfig>,
    neighbours: Neighbours,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(dir, node_name, period, config, neighbours, cancel))
}

/// Told of each ignored duplicate manifest.
pub type OnIgnored = Arc<dyn Fn(&IgnoredPod) + Send + Sync>;

/// What the directory source asks of the rest of the agent.
#[derive(Clone, Default)]
pub struct Neighbours {
    /// The UIDs of the pods the runtime holds: with the last reading's, they
    /// keep their names against a newcomer (also right after a restart).
    pub runtime_uids: Option<Arc<dyn Fn() -> Vec<Uid> + Send + Sync>>,
    /// Called once per ignored duplicate (per UID) while it stays ignored:
    /// the agent records upstream's `FailedValidation` event with
    /// [`IgnoredPod::event_message`]. (A callback: the sources sit below
    /// the event recorder.)
    pub on_ignored: Option<OnIgnored>,
}

impl std::fmt::Debug for Neighbours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neighbours")
            .field("runtime_uids", &self.runtime_uids.is_some())
            .field("on_ignored", &self.on_ignored.is_some())
            .finish()
    }
}

impl Neighbours {
    /// The incumbents now: the runtime's pods and the file source's last reading.
    fn incumbents(&self, config: &PodConfig) -> Incumbents {
        let mut incumbents = Incumbents::default();
        if let Some(runtime_uids) = &self.runtime_uids {
            incumbents.uids.extend(runtime_uids());
        }
        config.for_each_source_pod(super::FILE_SOURCE, |uid, pod, file| {
            incumbents.uids.insert(uid.clone());
            incumbents.files.insert(pod_key(pod), file.to_path_buf());
        });
        incumbents
    }
}

/// An inotify watch on the directory, and which directory (device, inode) it is on.
struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    id: (u64, u64),
}

/// True for events worth a rescan: not reads, not hidden or temporary files.
fn is_relevant(event: &notify::Event, dir: &Path) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    if event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|p| {
        p == dir
            || p.file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| !is_ignored_name(n))
    })
}

/// The inotify watch on the manifest directory, following it as it is created,
/// deleted and recreated.
struct DirWatcher {
    dir: PathBuf,
    tx: mpsc::UnboundedSender<()>,
    current: Option<DirWatch>,
    /// The directory (device, inode) watching failed for, not retried until the
    /// next periodic rescan (so an exhausted inotify limit is not retried and
    /// logged every second).
    failed: Option<(u64, u64)>,
    /// Whether a watch failure was logged at warn since the last successful watch.
    warned: bool,
}

impl DirWatcher {
    fn new(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tx,
            current: None,
            failed: None,
            warned: false,
        }
    }

    /// True while there is no directory to watch: it is looked for every second.
    fn waiting_for_dir(&self) -> bool {
        self.current.is_none() && self.failed.is_none()
    }

    /// Allow another try at a watch that failed.
    fn retry_failed(&mut self) {
        self.failed = None;
    }

    /// Make sure the directory now at the path is the one watched: start a watch
    /// when there is none or the directory was replaced, drop it when the
    /// directory is gone. True when a new watch started (the directory may have
    /// changed unseen, so it must be rescanned).
    fn ensure(&mut self) -> bool {
        let dir = self.dir.as_path();
        let id = match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => (meta.dev(), meta.ino()),
            _ => {
                if self.current.take().is_some() {
                    info!(dir = %dir.display(), "manifest directory is gone; waiting for it to reappear");
                }
                self.failed = None;
                return false;
            }
        };
        if self.current.as_ref().is_some_and(|w| w.id == id) || self.failed == Some(id) {
            return false;
        }
        self.current = None;
        let events = self.tx.clone();
        let watched = dir.to_path_buf();
        let handler = move |res: notify::Result<notify::Event>| {
            let relevant = match &res {
                Ok(event) => is_relevant(event, &watched),
                Err(e) => {
                    debug!(error = %e, "manifest watch error; rescanning");
                    true
                }
            };
            if relevant {
                // Closed only when the source stops.
                let _ = events.send(());
            }
        };
        let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match started {
            Ok(watcher) => {
                debug!(dir = %dir.display(), "watching the manifest directory");
                self.current = Some(DirWatch {
                    _watcher: watcher,
                    id,
                });
                self.failed = None;
                self.warned = false;
                true
            }
            Err(e) => {
                if self.warned {
                    debug!(dir = %dir.display(), error = %e, "cannot watch the manifest directory");
                } else {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the manifest directory; relying on periodic rescans");
                    self.warned = true;
                }
                self.failed = Some(id);
                // Scan now: the directory may be new.
                true
            }
        }
    }
}

/// What has been logged, so each error and each pod's warnings are logged once.
#[derive(Default)]
struct Logged {
    errors: HashSet<(PathBuf, Option<String>, String)>,
    pods: HashSet<Uid>,
    ignored: HashSet<Uid>,
}

impl Logged {
    /// Report each ignored duplicate once (by UID) while it stays ignored.
    fn report_ignored(&mut self, ignored: &[IgnoredPod], on_ignored: Option<&OnIgnored>) {
        let mut now = HashSet::new();
        for ig in ignored {
            let uid = uid_of(&ig.pod);
            if !self.ignored.contains(&uid)
                && let Some(report) = on_ignored
            {
                report(ig);
            }
            now.insert(uid);
        }
        self.ignored = now;
    }

    fn report(&mut self, snapshot: &Snapshot) {
        let mut errors = HashSet::new();
        for e in &snapshot.errors {
            let key = (e.file.clone(), e.field.clone(), e.reason.clone());
            if !self.errors.contains(&key) {
                warn!(
                    file = %e.file.display(),
                    field = e.field.as_deref().unwrap_or(""),
                    reason = %e.reason,
                    "manifest rejected"
                );
            }
            errors.insert(key);
        }
        self.errors = errors;

        let mut pods = HashSet::new();
        for sp in &snapshot.pods {
            let uid = uid_of(&sp.pod);
            if !self.pods.contains(&uid) {
                log_warnings(sp, &uid);
            }
            pods.insert(uid);
        }
        self.pods = pods;
    }
}

fn log_warnings(sp: &SourcedPod, uid: &str) {
    let pod = pod_key(&sp.pod);
    for w in &sp.warnings {
        let (field, reason) = w.split_once(": ").unwrap_or((w.as_str(), ""));
        if reason == "unknown field" {
            warn!(pod = %pod, uid, file = %sp.file.display(), field, "unknown field in manifest, ignored");
        } else {
            warn!(pod = %pod, uid, file = %sp.file.display(), field, reason, "unsupported field");
        }
    }
}

/// Scan on a blocking thread (file IO), keeping the memory of first sightings
/// and of the last reading: `None` when nothing changed since it (or the
/// scan failed); the config keeps its pods.
async fn scan_blocking(
    dir: &Path,
    node_name: &str,
    seen: &Arc<Mutex<SeenMemory>>,
    incumbents: Incumbents,
) -> Option<(Snapshot, Vec<IgnoredPod>)> {
    let dir = dir.to_path_buf();
    let node_name = node_name.to_string();
    let seen = Arc::clone(seen);
    let result = tokio::task::spawn_blocking(move || {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        scan_if_changed(&dir, &node_name, &mut seen, &incumbents)
    })
    .await;
    match result {
        Ok(snapshot) => snapshot,
        Err(e) => {
            warn!(error = %e, "manifest scan failed; keeping the previous pods");
            None
        }
    }
}

async fn run(
    dir: PathBuf,
    node_name: String,
    period: Duration,
    config: Arc<PodConfig>,
    neighbours: Neighbours,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let seen = Arc::new(Mutex::new(SeenMemory::new()));
    let mut logged = Logged::default();
    let mut watcher = DirWatcher::new(&dir, tx);
    let period = period.max(Duration::from_millis(100));
    let mut periodic = tokio::time::interval_at(Instant::now() + period, period);
    periodic.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let poll = MISSING_DIR_POLL.min(period);
    let mut missing_poll = tokio::time::interval_at(Instant::now() + poll, poll);
    missing_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);

    info!(dir = %dir.display(), period_secs = period.as_secs_f64(), "watching the manifest directory");
    let mut rescan = true;
    // When the last scan began: a change after a quiet spell is read at
    // once (the leading edge; the kubelet reads each event as it comes),
    // the rest of a burst once it has been quiet for DEBOUNCE.
    let mut last_scan = Instant::now();
    loop {
        // Watch before scanning, so a change right after the scan is not missed.
        if watcher.ensure() {
            rescan = true;
        }
        if rescan {
            rescan = false;
            last_scan = Instant::now();
            let incumbents = neighbours.incumbents(&config);
            if let Some((snapshot, ignored)) =
                scan_blocking(&dir, &node_name, &seen, incumbents).await
            {
                logged.report(&snapshot);
                logged.report_ignored(&ignored, neighbours.on_ignored.as_ref());
                let (pods, errors) = (snapshot.pods.len(), snapshot.errors.len());
                let changed = config.apply(snapshot);
                if !changed.is_empty() {
                    info!(
                        pods,
                        errors,
                        changed = changed.len(),
                        "static pods updated from the manifest directory"
                    );
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = periodic.tick() => {
                watcher.retry_failed();
                rescan = true;
            }
            _ = missing_poll.tick(), if watcher.waiting_for_dir() => {}
            Some(()) = rx.recv() => {
                if last_scan.elapsed() >= DEBOUNCE {
                    rescan = true;
                    continue;
                }
                // Within a burst: wait until it has been quiet for DEBOUNCE.
                let deadline = Instant::now() + DEBOUNCE_MAX;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                        Some(()) = rx.recv() => {}
                    }
                }
                rescan = true;
            }
        }
    }
    debug!(dir = %dir.display(), "manifest source stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node1";

    fn pod_yaml(name: &str, image: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: {image}\n"
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write manifest");
        path
    }

    fn names(s: &Snapshot) -> Vec<String> {
        s.pods
            .iter()
            .map(|p| p.pod.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn scans_good_and_broken_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", &pod_yaml("a", "busybox:1.36"));
        write(dir.path(), "b.yml", &pod_yaml("b", "busybox:1.36"));
        write(dir.path(), "c.json", "{ not json");
        let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
        assert_eq!(names(&snap), vec!["a-node1", "b-node1"]);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors[0].file, dir.path().join("c.json"));
        assert!(snap.errors[0].reason.starts_with("invalid JSON"));
    }

    #[test]
    fn ignores_hidden_temp_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "good.yaml", &pod_yaml("good", "busybox:1.36"));
        for name in [
            ".hidden.yaml",
            "good.yaml~",
            ".good.yaml.swp",
            "good.yaml.swp",
            "good.yaml.swx",
            "#good.yaml#",
            ".#good.yaml",
            "4913",
            "README.md",
            "pod.yaml.bak",
        ] {
            write(dir.path(), name, "garbage: [");
        }
        fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
        write(
            &dir.path().join("sub.yaml"),
            "nested.yaml",
            &pod_yaml("nested", "x:1"),
        );
        let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
        assert_eq!(names(&snap), vec!["good-node1"]);
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert!(is_ignored_name("#x#"));
        assert!(!is_ignored_name("#"));
        assert!(has_manifest_extension("a.json"));
        assert!(!has_manifest_extension("yaml"));
    }

    #[test]
    fn missing_dir_is_one_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let snap = scan(&missing, NODE, &mut SeenMemory::new());
        assert!(snap.pods.is_empty());
        assert_eq!(snap.errors.len(), 1);
        assert_eq!(snap.errors[0].file, missing);
        assert_eq!(snap.errors[0].reason, "manifest directory does not exist");
    }

    #[test]
    fn rejects_duplicate_names_first_file_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", &pod_yaml("web", "busybox:1.36"));
        write(dir.path(), "b.yaml", &pod_yaml("web", "busybox:1.37"));
        let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
        assert_eq!(snap.pods.len(), 1);
        assert_eq!(snap.pods[0].file, dir.path().join("a.yaml"));
        assert_eq!(snap.errors.len(), 1);
        let e = &snap.errors[0];
        assert_eq!(e.file, dir.path().join("b.yaml"));
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        assert_eq!(
            e.reason,
            format!(
                "Duplicate value: \"web-node1\": already defined in {}",
                dir.path().join("a.yaml").display()
            )
        );
    }

    #[test]
    fn the_pod_the_agent_has_keeps_its_name_against_a_newcomer() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "web.yaml", &pod_yaml("web", "busybox:1.36"));
        let mut seen = SeenMemory::new();
        let (first, ignored) = scan_preferring(dir.path(), NODE, &mut seen, &Incumbents::default());
        assert!(ignored.is_empty());
        let running = uid_of(&first.pods[0].pod);

        // A newcomer that sorts first repeats the name: upstream would keep
        // it (first in the source's order); berth keeps the running pod.
        write(dir.path(), "a-web.yaml", &pod_yaml("web", "busybox:1.37"));
        let by_uid = Incumbents {
            uids: HashSet::from([running.clone()]),
            files: HashMap::new(),
        };
        for _ in 0..2 {
            // The same reading twice gives the same answer.
            let (snap, ignored) = scan_preferring(dir.path(), NODE, &mut seen, &by_uid);
            assert_eq!(snap.pods.len(), 1);
            assert_eq!(uid_of(&snap.pods[0].pod), running);
            assert_eq!(snap.errors.len(), 1);
            let e = &snap.errors[0];
            assert_eq!(e.file, dir.path().join("a-web.yaml"));
            assert_eq!(e.field.as_deref(), Some("metadata.name"));
            assert!(
                e.reason.starts_with(&format!(
                    "Duplicate value: \"web-node1\": already defined in {}, whose pod the agent already has",
                    dir.path().join("web.yaml").display()
                )),
                "{}",
                e.reason
            );
            assert_eq!(ignored.len(), 1);
            assert_eq!(ignored[0].file, dir.path().join("a-web.yaml"));
            assert_eq!(ignored[0].winner, dir.path().join("web.yaml"));
            let message = ignored[0].event_message();
            assert!(
                message.starts_with("Error validating pod web-node1_default(")
                    && message
                        .ends_with(") from file due to duplicate pod name \"web-node1\", ignoring"),
                "{message}"
            );
        }

        // The incumbent edited at the same moment (a new UID): its file still
        // holds the name.
        write(dir.path(), "web.yaml", &pod_yaml("web", "busybox:1.38"));
        let by_file = Incumbents {
            uids: HashSet::from([running.clone()]),
            files: HashMap::from([("default/web-node1".to_string(), dir.path().join("web.yaml"))]),
        };
        let (snap, _) = scan_preferring(dir.path(), NODE, &mut seen, &by_file);
        assert_eq!(snap.pods[0].file, dir.path().join("web.yaml"));
        assert_eq!(snap.errors[0].file, dir.path().join("a-web.yaml"));

        // Two newcomers and no incumbent: the lexically first, as upstream.
        let (snap, _) = scan_preferring(dir.path(), NODE, &mut seen, &Incumbents::default());
        assert_eq!(snap.pods[0].file, dir.path().join("a-web.yaml"));
        assert!(!snap.errors[0].reason.contains("already has"));

        // The incumbent's manifest goes: the newcomer runs.
        fs::remove_file(dir.path().join("web.yaml")).expect("remove");
        let (snap, ignored) = scan_preferring(dir.path(), NODE, &mut seen, &by_file);
        assert_eq!(snap.pods[0].file, dir.path().join("a-web.yaml"));
        assert!(snap.errors.is_empty() && ignored.is_empty());
    }

    #[test]
    fn rejects_duplicate_uids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with_uid = |name: &str| {
            pod_yaml(name, "busybox:1.36").replace(
                &format!("  name: {name}\n"),
                &format!("  name: {name}\n  uid: same-uid\n"),
            )
        };
        write(dir.path(), "a.yaml", &with_uid("one"));
        write(dir.path(), "b.yaml", &with_uid("two"));
        let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
        assert_eq!(names(&snap), vec!["one-node1"]);
        assert_eq!(snap.errors.len(), 1);
        assert_eq!(snap.errors[0].field.as_deref(), Some("metadata.uid"));
    }

    #[test]
    fn rejects_large_file_by_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.yaml");
        let file = fs::File::create(&path).expect("create");
        file.set_len(50 * 1024 * 1024).expect("sparse file");
        write(dir.path(), "ok.yaml", &pod_yaml("ok", "busybox:1.36"));
        let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
        assert_eq!(names(&snap), vec!["ok-node1"]);
        assert_eq!(snap.errors.len(), 1);
        assert_eq!(snap.errors[0].file, path);
        assert_eq!(
            snap.errors[0].reason,
            "file is 52428800 bytes, larger than the 10 MiB limit"
        );
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A dangling symlink with a manifest name: metadata fails with NotFound → skipped;
        // a symlink loop fails otherwise → an error, and the scan goes on.
        std::os::unix::fs::symlink("loop.yaml", dir.path().join("loop.yaml")).expect("symlink");
        std::os::unix::fs::symlink("nowhere", dir.path().join("dangling.yaml")).expect("symlink");
        write(dir.path(), "ok.yaml", &pod_yaml("ok", "busybox:1.36"));
        let snap = scan(dir.path(), NODE, &mut SeenMemory::new());
        assert_eq!(names(&snap), vec!["ok-node1"]);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors[0].file, dir.path().join("loop.yaml"));
        assert!(snap.errors[0].reason.starts_with("cannot read the file"));
    }

    #[test]
    fn config_seen_is_stable_across_rescans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "a.yaml", &pod_yaml("a", "busybox:1.36"));
        let mut seen = SeenMemory::new();
        let first = scan(dir.path(), NODE, &mut seen);
        let seen_at = |s: &Snapshot| {
            s.pods[0]
                .pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_SEEN_ANNOTATION).cloned())
                .expect("config.seen")
        };
        let stamp = seen_at(&first);
        assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
        std::thread::sleep(Duration::from_millis(5));
        let second = scan(dir.path(), NODE, &mut seen);
        assert_eq!(seen_at(&second), stamp);
        assert_eq!(first.pods, second.pods);

        let (tx, _rx) = mpsc::unbounded_channel();
        let config = PodConfig::new(tx);
        assert_eq!(config.apply(first).len(), 1);
        assert!(config.apply(second).is_empty(), "a rescan changes nothing");

        // A changed pod is a new pod, first seen now.
        std::thread::sleep(Duration::from_millis(5));
        fs::write(&path, pod_yaml("a", "busybox:1.37")).expect("rewrite");
        let third = scan(dir.path(), NODE, &mut seen);
        assert_ne!(seen_at(&third), stamp);
        assert_eq!(seen.first_seen.len(), 1, "old entries forgotten");
    }

    #[test]
    fn a_rescan_of_an_unchanged_directory_builds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(dir.path(), "a.yaml", &pod_yaml("a", "busybox:1.36"));
        write(dir.path(), "b.yaml", "kind: [unclosed");
        let mut seen = SeenMemory::new();
        let none = Incumbents::default();
        let first = scan_if_changed(dir.path(), NODE, &mut seen, &none).expect("first reading");
        assert_eq!((first.0.pods.len(), first.0.errors.len()), (1, 1));
        assert!(scan_if_changed(dir.path(), NODE, &mut seen, &none).is_none());

        // The same bytes written again: still nothing new.
        fs::write(&a, pod_yaml("a", "busybox:1.36")).expect("rewrite");
        assert!(scan_if_changed(dir.path(), NODE, &mut seen, &none).is_none());

        // Other incumbents may decide a duplicate otherwise: read again.
        let mut held = Incumbents::default();
        held.uids.insert("some-uid".to_string());
        assert!(scan_if_changed(dir.path(), NODE, &mut seen, &held).is_some());
        assert!(scan_if_changed(dir.path(), NODE, &mut seen, &held).is_none());

        // A changed, an added and a removed file are each a new reading.
        fs::write(&a, pod_yaml("a", "busybox:1.37")).expect("rewrite");
        let changed = scan_if_changed(dir.path(), NODE, &mut seen, &held).expect("changed");
        let image = changed.0.pods[0]
            .pod
            .spec
            .as_ref()
            .expect("spec")
            .containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some("busybox:1.37"));
        write(dir.path(), "c.yaml", &pod_yaml("c", "busybox:1.36"));
        let added = scan_if_changed(dir.path(), NODE, &mut seen, &held).expect("added");
        assert_eq!(
            names(&added.0),
            vec!["a-node1".to_string(), "c-node1".to_string()]
        );
        fs::remove_file(dir.path().join("b.yaml")).expect("remove");
        let removed = scan_if_changed(dir.path(), NODE, &mut seen, &held).expect("removed");
        assert!(removed.0.errors.is_empty(), "{:?}", removed.0.errors);

        // scan_preferring always builds its result.
        let again = scan_preferring(dir.path(), NODE, &mut seen, &held).0;
        assert_eq!(again.pods, removed.0.pods);
    }

    #[test]
    fn rescans_reuse_decodings_of_unchanged_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = write(dir.path(), "a.yaml", &pod_yaml("a", "busybox:1.36"));
        write(dir.path(), "b.yaml", "kind: [unclosed");
        let mut seen = SeenMemory::new();
        let first = scan(dir.path(), NODE, &mut seen);
        assert_eq!((first.pods.len(), first.errors.len()), (1, 1));
        assert_eq!(seen.parsed.len(), 2);

        // Unchanged: the same pods and the same error, from the memory.
        let second = scan(dir.path(), NODE, &mut seen);
        assert_eq!(first.pods, second.pods);
        assert_eq!(
            first.errors, second.errors,
            "a remembered error is still reported"
        );

        // Same length, other bytes: decoded anew (the image changes).
        fs::write(&good, pod_yaml("a", "busybox:1.37")).expect("rewrite");
        let third = scan(dir.path(), NODE, &mut seen);
        let image = third.pods[0].pod.spec.as_ref().expect("spec").containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some("busybox:1.37"));
        assert_ne!(
            third.pods[0].pod.metadata.uid,
            first.pods[0].pod.metadata.uid
        );

        // Another node name: decoded anew (the node suffix is part of the name).
        let other = scan(dir.path(), "node2", &mut seen);
        assert_eq!(names(&other), vec!["a-node2".to_string()]);

        // A fixed file and a removed one.
        write(dir.path(), "b.yaml", &pod_yaml("b", "busybox:1.36"));
        fs::remove_file(&good).expect("remove");
        let fourth = scan(dir.path(), NODE, &mut seen);
        assert_eq!(names(&fourth), vec!["b-node1".to_string()]);
        assert!(fourth.errors.is_empty(), "{:?}", fourth.errors);
        assert_eq!(
            seen.parsed.len(),
            1,
            "the removed file's decoding is forgotten"
        );
    }

    async fn recv_within(rx: &mut mpsc::UnboundedReceiver<Uid>, secs: u64) -> Option<Uid> {
        tokio::time::timeout(Duration::from_secs(secs), rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Wait until `cond` holds on the config, up to `secs`.
    async fn eventually(config: &PodConfig, secs: u64, cond: impl Fn(&PodConfig) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond(config) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond(config)
    }

    fn images(config: &PodConfig) -> Vec<String> {
        config
            .pods()
            .iter()
            .filter_map(|p| p.pod.spec.as_ref()?.containers[0].image.clone())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_reacts_to_changes_via_inotify() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "keep.yaml", &pod_yaml("keep", "busybox:1.36"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = PodConfig::new(tx);
        let cancel = CancellationToken::new();
        let handle = spawn(
            dir.path().to_path_buf(),
            NODE.to_string(),
            Duration::from_secs(60),
            Arc::clone(&config),
            Neighbours::default(),
            cancel.clone(),
        );
        tokio::time::timeout(Duration::from_secs(5), config.wait_loaded())
            .await
            .expect("first scan");
        assert_eq!(config.pods().len(), 1);
        let keep_uid = recv_within(&mut rx, 2)
            .await
            .expect("initial pod announced");

        // Add.
        write(dir.path(), "web.yaml", &pod_yaml("web", "nginx:1.27"));
        let added = recv_within(&mut rx, 2)
            .await
            .expect("add noticed within 2s");
        assert_ne!(added, keep_uid);
        assert!(config.get(&added).is_some());

        // Modify: the old UID goes, a new one comes.
        write(dir.path(), "web.yaml", &pod_yaml("web", "nginx:1.28"));
        assert!(
            eventually(&config, 2, |c| images(c)
                .contains(&"nginx:1.28".to_string()))
            .await,
            "modify noticed within 2s"
        );
        assert!(config.get(&added).is_none());

        // A broken file shows up as an error; the others stay.
        write(dir.path(), "broken.yaml", "kind: [");
        assert!(eventually(&config, 2, |c| c.errors().len() == 1).await);
        assert_eq!(config.pods().len(), 2);

        // Delete.
        fs::remove_file(dir.path().join("web.yaml")).expect("remove");
        assert!(
            eventually(&config, 2, |c| c.pods().len() == 1).await,
            "delete noticed within 2s"
        );
        assert!(config.get(&keep_uid).is_some());

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), handle)
            .await
            .expect("stops on cancel")
            .expect("no panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_waits_for_the_dir_and_survives_recreation() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("manifests");
        let (tx, _rx) = mpsc::unbounded_channel();
        let config = PodConfig::new(tx);
        let cancel = CancellationToken::new();
        let handle = spawn(
            dir.clone(),
            NODE.to_string(),
            Duration::from_secs(60),
            Arc::clone(&config),
            Neighbours::default(),
            cancel.clone(),
        );
        tokio::time::timeout(Duration::from_secs(5), config.wait_loaded())
            .await
            .expect("first scan");
        assert!(config.pods().is_empty());
        assert_eq!(config.errors().len(), 1);
        assert_eq!(config.errors()[0].file, dir);

        // The directory appears, with a pod: found by the missing-dir poll.
        fs::create_dir(&dir).expect("mkdir");
        write(&dir, "a.yaml", &pod_yaml("a", "busybox:1.36"));
        assert!(eventually(&config, 4, |c| c.pods().len() == 1 && c.errors().is_empty()).await);

        // Deleted: the pods go.
        fs::remove_dir_all(&dir).expect("rmdir");
        assert!(eventually(&config, 4, |c| c.pods().is_empty()).await);

        // Recreated: watched anew, and changes in it are noticed.
        fs::create_dir(&dir).expect("mkdir again");
        assert!(eventually(&config, 4, |c| c.errors().is_empty()).await);
        write(&dir, "b.yaml", &pod_yaml("b", "busybox:1.36"));
        assert!(eventually(&config, 4, |c| c.pods().len() == 1).await);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), handle)
            .await
            .expect("stops on cancel")
            .expect("no panic");
    }
}
