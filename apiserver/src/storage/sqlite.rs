//! The SQLite backend: one database file (WAL) holding an etcd-like log.
//!
//! Every write appends one row to `log` (primary key: the store-wide
//! revision): the key, what happened (added/modified/deleted), the new value,
//! the previous value and the key's create revision. The live state of a key
//! is its newest row unless that row is a deletion; the state as of revision
//! `r` is its newest row `<= r`. So the log is at once the key-value table,
//! the multi-version snapshot lists read from (exact-as-of, like etcd) and the
//! watch history. `meta` holds the current and the compact revision.
//!
//! Compaction to `c` deletes every row `<= c` that a newer row `<= c`
//! supersedes, and the deletion rows `<= c`: the state at `c` stays readable,
//! watches from `>= c` stay complete, older ones get [`Error::Compacted`]. The
//! writer compacts by itself to keep [`SqliteOptions::retain_events`] events
//! and [`SqliteOptions::retain_age`] of history, whichever keeps more.
//!
//! All writes go through one writer thread that group-commits whatever is
//! queued (up to [`MAX_BATCH`] operations per transaction), then publishes the
//! committed events on a `tokio::sync::broadcast` channel. Reads run on a
//! small pool of read connections on `spawn_blocking`. A watcher subscribes
//! to the broadcast first, then reads the log from its start revision, then
//! forwards broadcast events newer than the last revision it has seen: no
//! gaps, no duplicates. A watcher that falls behind the broadcast buffer
//! re-reads the log from where it was.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ContinueToken, Error, EventKind, KeyValue, ListOptions, ListResult, Result, Storage, Stored,
    WatchEvent, WatchStream, list_start, prefix_end,
};

/// The most operations the writer commits in one transaction.
pub const MAX_BATCH: usize = 512;
/// The database file's name inside the data directory.
pub const DB_FILE: &str = "berth-apiserver.db";

const KIND_ADDED: i64 = 0;
const KIND_MODIFIED: i64 = 1;
const KIND_DELETED: i64 = 2;
/// Rows read per catch-up query of a watcher.
const HISTORY_PAGE: i64 = 1000;
/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Tuning of [`SqliteStorage`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Keep at least this many recent events for watches.
    pub retain_events: i64,
    /// Keep at least this much recent history for watches.
    pub retain_age: Duration,
    /// How often the writer checks whether to compact.
    pub compaction_interval: Duration,
    /// `PRAGMA synchronous=FULL` (every commit survives power loss) when true;
    /// `NORMAL` (survives a crash of the process, not of the machine) when false.
    pub fsync_every_commit: bool,
    /// Events buffered for watchers before a slow one must re-read the log.
    pub broadcast_capacity: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            retain_events: 10_000,
            retain_age: Duration::from_secs(300),
            compaction_interval: Duration::from_secs(30),
            fsync_every_commit: true,
            broadcast_capacity: 4096,
        }
    }
}

/// [`Storage`] on one SQLite file. Cheap to clone (all clones share the store).
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<Command>>,
    readers: Mutex<Vec<Connection>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: Arc<AtomicI64>,
    compact_revision: Arc<AtomicI64>,
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<i64>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
            Op::Compact { .. } => "",
        }
    }
}

enum Reply {
    Revision(i64),
    Deleted(i64, Stored),
    Done,
}

struct Command {
    op: Op,
    reply: oneshot::Sender<Result<Reply>>,
}

fn sql_err(key: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        key: key.to_string(),
        source,
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn open_connection(path: &Path, fsync: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compact_revision) VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    kind INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB,
    prev_value BLOB,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_revision ON log (key, revision);
";

impl SqliteStorage {
    /// Open (creating if needed) the store in `data_dir` ([`DB_FILE`]) and
    /// start its writer thread. Call from within a tokio runtime.
    pub fn open(data_dir: &Path, options: SqliteOptions) -> Result<SqliteStorage> {
        let dir_key = data_dir.display().to_string();
        let private = |e: super::private_files::PrivateError| Error::Unavailable {
            key: dir_key.clone(),
            reason: e.to_string(),
        };
        // The database holds every Secret: the directory is 0700 and the
        // file is created 0600 before SQLite opens it, whatever the umask
        // (SQLite gives -wal and -shm the database file's mode).
        super::private_files::ensure_private_dir(data_dir).map_err(private)?;
        let path = data_dir.join(DB_FILE);
        super::private_files::create_private_file(&path).map_err(private)?;
        let conn = open_connection(&path, options.fsync_every_commit).map_err(sql_err(&dir_key))?;
        conn.execute_batch(SCHEMA).map_err(sql_err(&dir_key))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            super::private_files::ensure_private_file(Path::new(&side)).map_err(private)?;
        }
        let (revision, compact_revision): (i64, i64) = conn
            .query_row(
                "SELECT revision, compact_revision FROM meta WHERE id = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql_err(&dir_key))?;
        let revision = Arc::new(AtomicI64::new(revision));
        let compact_revision = Arc::new(AtomicI64::new(compact_revision));
        let (events, _) = broadcast::channel(options.broadcast_capacity.max(16));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            rx,
            events: events.clone(),
            revision: revision.clone(),
            compact_revision: compact_revision.clone(),
            options,
        };
        std::thread::Builder::new()
            .name("berth-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Unavailable {
                key: dir_key,
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(tx),
                readers: Mutex::new(Vec::new()),
                events,
                revision,
                compact_revision,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn submit(&self, op: Op) -> Result<Reply> {
        let key = op.key().to_string();
        let (reply, rx) = oneshot::channel();
        let sent = match self.inner.writer.lock() {
            Ok(writer) => writer.send(Command { op, reply }).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return Err(Error::Unavailable {
                key,
                reason: "the sqlite writer thread has stopped".into(),
            });
        }
        rx.await.map_err(|_| Error::Unavailable {
            key,
            reason: "the sqlite writer thread dropped the request".into(),
        })?
    }
}

impl Inner {
    /// Run `f` on a pooled read connection on the blocking pool.
    async fn read<T, F>(self: &Arc<Self>, key: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.clone();
        let key = key.to_string();
        let join_key = key.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut r| r.pop());
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let c = open_connection(&inner.path, false).map_err(sql_err(&key))?;
                    c.pragma_update(None, "query_only", "ON")
                        .map_err(sql_err(&key))?;
                    c
                }
            };
            let out = f(&mut conn);
            if let Ok(mut readers) = inner.readers.lock()
                && readers.len() < MAX_IDLE_READERS
            {
                readers.push(conn);
            }
            out
        })
        .await
        .map_err(|e| Error::Unavailable {
            key: join_key,
            reason: format!("sqlite read task failed: {e}"),
        })?
    }
}

fn read_meta(conn: &Connection, key: &str) -> Result<(i64, i64)> {
    conn.query_row(
        "SELECT revision, compact_revision FROM meta WHERE id = 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .map_err(sql_err(key))
}

fn key_string(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::Unavailable {
        key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        reason: "the database holds a non-UTF-8 key".into(),
    })
}

/// The newest row of `key`: (revision, kind, create_revision, value).
type Latest = (i64, i64, i64, Option<Vec<u8>>);

fn latest(conn: &Connection, key: &str) -> rusqlite::Result<Option<Latest>> {
    conn.prepare_cached(
        "SELECT revision, kind, create_revision, value FROM log
         WHERE key = ?1 ORDER BY revision DESC LIMIT 1",
    )?
    .query_row([key.as_bytes()], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .optional()
}

/// The key's live state, if any: (mod_revision, create_revision, value).
fn live(conn: &Connection, key: &str) -> rusqlite::Result<Option<(i64, i64, Vec<u8>)>> {
    Ok(match latest(conn, key)? {
        Some((rev, kind, create, value)) if kind != KIND_DELETED => {
            Some((rev, create, value.unwrap_or_default()))
        }
        _ => None,
    })
}

/// `key >= lower` (or `> lower` when `exclusive`) and `key < end` if any, as SQL.
fn range_sql(exclusive: bool, has_end: bool, first_param: usize) -> String {
    let mut sql = format!("key {} ?{first_param}", if exclusive { ">" } else { ">=" });
    if has_end {
        sql.push_str(&format!(" AND key < ?{}", first_param + 1));
    }
    sql
}

fn list_blocking(
    conn: &mut Connection,
    prefix: &str,
    after: Option<String>,
    revision: i64,
    limit: Option<u64>,
) -> Result<ListResult> {
    let tx = conn.transaction().map_err(sql_err(prefix))?;
    let (current, compact) = read_meta(&tx, prefix)?;
    let at = if revision == 0 { current } else { revision };
    if at < compact {
        return Err(Error::Compacted {
            key: prefix.to_string(),
            revision: at,
            compact_revision: compact,
        });
    }
    if at > current {
        return Err(Error::FutureRevision {
            key: prefix.to_string(),
            revision: at,
            current,
        });
    }
    let end = prefix_end(prefix.as_bytes());
    let lower: Vec<u8> = after.as_deref().unwrap_or(prefix).as_bytes().to_vec();
    let range = range_sql(after.is_some(), end.is_some(), 2);
    let grouped = format!(
        "SELECT key, MAX(revision) AS revision, kind, value, create_revision FROM log
         WHERE revision <= ?1 AND {range} GROUP BY key"
    );
    let limit = limit.filter(|l| *l > 0);
    let fetch = limit.map_or(-1, |l| {
        i64::try_from(l.saturating_add(1)).unwrap_or(i64::MAX)
    });
    let limit_param = if end.is_some() { 4 } else { 3 };
    let sql = format!(
        "SELECT key, value, revision, create_revision FROM ({grouped})
         WHERE kind != {KIND_DELETED} ORDER BY key LIMIT ?{limit_param}"
    );
    let mut items = Vec::new();
    {
        let mut stmt = tx.prepare_cached(&sql).map_err(sql_err(prefix))?;
        let mut rows = match &end {
            Some(end) => stmt.query(params![at, lower, end, fetch]),
            None => stmt.query(params![at, lower, fetch]),
        }
        .map_err(sql_err(prefix))?;
        while let Some(row) = rows.next().map_err(sql_err(prefix))? {
            let key: Vec<u8> = row.get(0).map_err(sql_err(prefix))?;
            let value: Option<Vec<u8>> = row.get(1).map_err(sql_err(prefix))?;
            items.push(KeyValue {
                key: key_string(key)?,
                value: value.unwrap_or_default(),
                mod_revision: row.get(2).map_err(sql_err(prefix))?,
                create_revision: row.get(3).map_err(sql_err(prefix))?,
            });
        }
    }
    let mut result = ListResult {
        items,
        revision: at,
        continue_key: None,
        remaining: None,
    };
    if let Some(limit) = limit
        && result.items.len() as u64 > limit
    {
        result
            .items
            .truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        if let Some(last) = result.items.last() {
            let count_sql = format!(
                "SELECT COUNT(*) FROM ({}) WHERE kind != {KIND_DELETED}",
                grouped.replace(&range, &range_sql(true, end.is_some(), 2))
            );
            let last_key = last.key.as_bytes().to_vec();
            let remaining: i64 = match &end {
                Some(end) => tx.query_row(&count_sql, params![at, last_key, end], |r| r.get(0)),
                None => tx.query_row(&count_sql, params![at, last_key], |r| r.get(0)),
            }
            .map_err(sql_err(prefix))?;
            result.remaining = Some(remaining);
            result.continue_key = Some(
                ContinueToken {
                    last_key: last.key.clone(),
                    revision: at,
                }
                .to_string(),
            );
        }
    }
    tx.commit().map_err(sql_err(prefix))?;
    Ok(result)
}

/// Events under `prefix` after `after`, at most [`HISTORY_PAGE`]: (events,
/// revision the read is complete up to, whether more may follow).
fn history_blocking(
    conn: &mut Connection,
    prefix: &str,
    after: i64,
) -> Result<(Vec<WatchEvent>, i64, bool)> {
    let tx = conn.transaction().map_err(sql_err(prefix))?;
    let (current, compact) = read_meta(&tx, prefix)?;
    if after < compact {
        return Err(Error::Compacted {
            key: prefix.to_string(),
            revision: after,
            compact_revision: compact,
        });
    }
    let end = prefix_end(prefix.as_bytes());
    let sql = format!(
        "SELECT revision, key, kind, value, prev_value FROM log
         WHERE revision > ?1 AND revision <= ?2 AND {} ORDER BY revision LIMIT {HISTORY_PAGE}",
        range_sql(false, end.is_some(), 3)
    );
    let mut events = Vec::new();
    {
        let mut stmt = tx.prepare_cached(&sql).map_err(sql_err(prefix))?;
        let mut rows = match &end {
            Some(end) => stmt.query(params![after, current, prefix.as_bytes(), end]),
            None => stmt.query(params![after, current, prefix.as_bytes()]),
        }
        .map_err(sql_err(prefix))?;
        while let Some(row) = rows.next().map_err(sql_err(prefix))? {
            let revision: i64 = row.get(0).map_err(sql_err(prefix))?;
            let key: Vec<u8> = row.get(1).map_err(sql_err(prefix))?;
            let kind: i64 = row.get(2).map_err(sql_err(prefix))?;
            let value: Option<Vec<u8>> = row.get(3).map_err(sql_err(prefix))?;
            let prev_value: Option<Vec<u8>> = row.get(4).map_err(sql_err(prefix))?;
            events.push(event_from_row(
                key_string(key)?,
                kind,
                value,
                prev_value,
                revision,
            ));
        }
    }
    tx.commit().map_err(sql_err(prefix))?;
    let full = events.len() as i64 >= HISTORY_PAGE;
    let upto = if full {
        events.last().map_or(current, |e| e.revision)
    } else {
        current
    };
    Ok((events, upto, full))
}

fn event_from_row(
    key: String,
    kind: i64,
    value: Option<Vec<u8>>,
    prev_value: Option<Vec<u8>>,
    revision: i64,
) -> WatchEvent {
    let kind = match kind {
        KIND_ADDED => EventKind::Added,
        KIND_DELETED => EventKind::Deleted,
        _ => EventKind::Modified,
    };
    let value = match kind {
        EventKind::Deleted => prev_value.clone().unwrap_or_default(),
        _ => value.unwrap_or_default(),
    };
    WatchEvent {
        kind,
        key,
        value,
        prev_value,
        revision,
    }
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        let k = key.to_string();
        self.inner
            .read(key, move |conn| {
                Ok(live(conn, &k).map_err(sql_err(&k))?.map(
                    |(mod_revision, create_revision, value)| Stored {
                        value,
                        mod_revision,
                        create_revision,
                    },
                ))
            })
            .await
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let (after, revision) = list_start(prefix, &options)?;
        let p = prefix.to_string();
        self.inner
            .read(prefix, move |conn| {
                list_blocking(conn, &p, after, revision, options.limit)
            })
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        match self
            .submit(Op::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            Reply::Revision(rev) => Ok(rev),
            _ => Err(unexpected(key)),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64> {
        match self
            .submit(Op::Update {
                key: key.to_string(),
                value,
                expected: expected_mod_revision,
            })
            .await?
        {
            Reply::Revision(rev) => Ok(rev),
            _ => Err(unexpected(key)),
        }
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, Stored)> {
        match self
            .submit(Op::Delete {
                key: key.to_string(),
                expected: expected_mod_revision,
            })
            .await?
        {
            Reply::Deleted(rev, old) => Ok((rev, old)),
            _ => Err(unexpected(key)),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        // Subscribe before reading the log, so nothing committed in between is missed.
        let live = self.inner.events.subscribe();
        let compact = self.inner.compact_revision.load(Ordering::SeqCst);
        if from_revision < compact {
            return Err(Error::Compacted {
                key: prefix.to_string(),
                revision: from_revision,
                compact_revision: compact,
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(run_watch(
            self.inner.clone(),
            prefix.to_string(),
            from_revision,
            live,
            tx,
        ));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.inner.revision.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self.submit(Op::Compact { revision }).await? {
            Reply::Done => Ok(()),
            _ => Err(unexpected("")),
        }
    }
}

fn unexpected(key: &str) -> Error {
    Error::Unavailable {
        key: key.to_string(),
        reason: "the sqlite writer sent a reply of the wrong kind".into(),
    }
}

async fn run_watch(
    inner: Arc<Inner>,
    prefix: String,
    from_revision: i64,
    mut live: broadcast::Receiver<Arc<WatchEvent>>,
    tx: tokio::sync::mpsc::Sender<Result<WatchEvent>>,
) {
    // Every event with revision <= seen has been delivered (or is not under prefix).
    let mut seen = from_revision;
    loop {
        // Catch up from the log.
        loop {
            let p = prefix.clone();
            let after = seen;
            let page = inner
                .read(&prefix, move |conn| history_blocking(conn, &p, after))
                .await;
            match page {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Ok((events, upto, more)) => {
                    for event in events {
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    seen = seen.max(upto);
                    if !more {
                        break;
                    }
                }
            }
        }
        // Then live events, skipping what the log already gave.
        loop {
            let received = tokio::select! {
                _ = tx.closed() => return,
                r = live.recv() => r,
            };
            match received {
                Ok(event) => {
                    if event.revision <= seen {
                        continue;
                    }
                    seen = event.revision;
                    if event.key.starts_with(&prefix)
                        && tx.send(Ok((*event).clone())).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break, // re-read the log
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: Arc<AtomicI64>,
    compact_revision: Arc<AtomicI64>,
    options: SqliteOptions,
}

impl Writer {
    fn run(mut self) {
        let interval = self
            .options
            .compaction_interval
            .max(Duration::from_millis(10));
        let mut last_check = Instant::now();
        loop {
            let first = match self.rx.recv_timeout(interval) {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if let Some(first) = first {
                let mut writes = vec![first];
                while writes.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(cmd) => writes.push(cmd),
                        Err(_) => break,
                    }
                }
                let (compactions, writes): (Vec<_>, Vec<_>) = writes
                    .into_iter()
                    .partition(|c| matches!(c.op, Op::Compact { .. }));
                if !writes.is_empty() {
                    self.commit_batch(writes);
                }
                for cmd in compactions {
                    if let Op::Compact { revision } = cmd.op {
                        let _ = cmd.reply.send(self.compact(revision).map(|()| Reply::Done));
                    }
                }
            }
            if last_check.elapsed() >= interval {
                last_check = Instant::now();
                if let Err(e) = self.auto_compact() {
                    tracing::warn!(error = %e, "sqlite storage: retention compaction failed");
                }
            }
        }
    }

    /// Apply `batch` in one transaction; reply and publish only after the commit.
    fn commit_batch(&mut self, batch: Vec<Command>) {
        let start = self.revision.load(Ordering::SeqCst);
        let now = now_millis();
        type Applied = Vec<(Result<Reply>, Option<WatchEvent>)>;
        let outcome = (|| -> rusqlite::Result<Applied> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut rev = start;
            let mut done = Vec::with_capacity(batch.len());
            for cmd in &batch {
                let (reply, event) = apply(&tx, &cmd.op, rev + 1, now)?;
                if event.is_some() {
                    rev += 1;
                }
                done.push((reply, event));
            }
            if rev != start {
                tx.execute("UPDATE meta SET revision = ?1 WHERE id = 0", [rev])?;
            }
            tx.commit()?;
            Ok(done)
        })();
        match outcome {
            Ok(done) => {
                if let Some(last) = done.iter().rev().find_map(|(_, e)| e.as_ref()) {
                    self.revision.store(last.revision, Ordering::SeqCst);
                }
                for (cmd, (reply, event)) in batch.into_iter().zip(done) {
                    if let Some(event) = event {
                        // No receivers is fine: nobody is watching.
                        let _ = self.events.send(Arc::new(event));
                    }
                    let _ = cmd.reply.send(reply);
                }
            }
            Err(e) => {
                // The transaction rolled back: nothing of the batch happened.
                tracing::error!(error = %e, "sqlite storage: write transaction failed");
                for cmd in batch {
                    let _ = cmd.reply.send(Err(Error::Unavailable {
                        key: cmd.op.key().to_string(),
                        reason: format!("sqlite write transaction failed: {e}"),
                    }));
                }
            }
        }
    }

    fn compact(&mut self, revision: i64) -> Result<()> {
        let current = self.revision.load(Ordering::SeqCst);
        if revision > current {
            return Err(Error::FutureRevision {
                key: String::new(),
                revision,
                current,
            });
        }
        if revision <= self.compact_revision.load(Ordering::SeqCst) {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(""))?;
        tx.execute(
            "DELETE FROM log WHERE revision <= ?1 AND (kind = 2 OR EXISTS (
                SELECT 1 FROM log AS newer WHERE newer.key = log.key
                AND newer.revision > log.revision AND newer.revision <= ?1))",
            [revision],
        )
        .map_err(sql_err(""))?;
        tx.execute(
            "UPDATE meta SET compact_revision = ?1 WHERE id = 0",
            [revision],
        )
        .map_err(sql_err(""))?;
        tx.commit().map_err(sql_err(""))?;
        self.compact_revision.store(revision, Ordering::SeqCst);
        Ok(())
    }

    /// Compact what is older than both retention limits.
    fn auto_compact(&mut self) -> Result<()> {
        let current = self.revision.load(Ordering::SeqCst);
        let by_count = current - self.options.retain_events.max(0);
        let age_ms = i64::try_from(self.options.retain_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_millis().saturating_sub(age_ms);
        let by_age: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(revision) FROM log WHERE created_at < ?1",
                [cutoff],
                |r| r.get(0),
            )
            .map_err(sql_err(""))?;
        let target = by_count.min(by_age.unwrap_or(0));
        if target > self.compact_revision.load(Ordering::SeqCst) {
            self.compact(target)?;
        }
        Ok(())
    }
}

/// Apply one write at revision `rev` (if it succeeds): the caller's reply and
/// the event to publish (`None` when nothing was written).
fn apply(
    tx: &Connection,
    op: &Op,
    rev: i64,
    now: i64,
) -> rusqlite::Result<(Result<Reply>, Option<WatchEvent>)> {
    let insert = |key: &str,
                  kind: i64,
                  create: i64,
                  prev_rev: i64,
                  value: Option<&[u8]>,
                  prev: Option<&[u8]>|
     -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO log (revision, key, kind, create_revision, prev_revision, value, prev_value, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![rev, key.as_bytes(), kind, create, prev_rev, value, prev, now])?;
        Ok(())
    };
    match op {
        Op::Create { key, value } => {
            if live(tx, key)?.is_some() {
                return Ok((Err(Error::AlreadyExists { key: key.clone() }), None));
            }
            insert(key, KIND_ADDED, rev, 0, Some(value), None)?;
            Ok((
                Ok(Reply::Revision(rev)),
                Some(WatchEvent {
                    kind: EventKind::Added,
                    key: key.clone(),
                    value: value.clone(),
                    prev_value: None,
                    revision: rev,
                }),
            ))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let (old_rev, create, old) = match check(tx, key, *expected)? {
                Ok(found) => found,
                Err(e) => return Ok((Err(e), None)),
            };
            insert(key, KIND_MODIFIED, create, old_rev, Some(value), Some(&old))?;
            Ok((
                Ok(Reply::Revision(rev)),
                Some(WatchEvent {
                    kind: EventKind::Modified,
                    key: key.clone(),
                    value: value.clone(),
                    prev_value: Some(old),
                    revision: rev,
                }),
            ))
        }
        Op::Delete { key, expected } => {
            let (old_rev, create, old) = match check(tx, key, *expected)? {
                Ok(found) => found,
                Err(e) => return Ok((Err(e), None)),
            };
            insert(key, KIND_DELETED, create, old_rev, None, Some(&old))?;
            Ok((
                Ok(Reply::Deleted(
                    rev,
                    Stored {
                        value: old.clone(),
                        mod_revision: old_rev,
                        create_revision: create,
                    },
                )),
                Some(WatchEvent {
                    kind: EventKind::Deleted,
                    key: key.clone(),
                    value: old.clone(),
                    prev_value: Some(old),
                    revision: rev,
                }),
            ))
        }
        Op::Compact { .. } => Ok((Err(unexpected("")), None)),
    }
}

/// The live state of `key` if it matches `expected`, else the error to return.
#[allow(clippy::type_complexity)]
fn check(
    tx: &Connection,
    key: &str,
    expected: Option<i64>,
) -> rusqlite::Result<Result<(i64, i64, Vec<u8>)>> {
    Ok(match live(tx, key)? {
        None => Err(Error::NotFound {
            key: key.to_string(),
        }),
        Some((actual, _, _)) if expected.is_some_and(|e| e != actual) => Err(Error::Conflict {
            key: key.to_string(),
            expected: expected.unwrap_or_default(),
            actual,
        }),
        Some(found) => Ok(found),
    })
}
