//! The etcd backend: keys live under an optional root prefix in a real etcd
//! (v3 API, tested against Debian's etcd 3.4).
//!
//! An object's `mod_revision` is etcd's `ModRevision`. `create` is a Txn
//! comparing `CreateRevision == 0`; `update`/`delete` compare
//! `ModRevision == expected` (or `CreateRevision > 0` without an expectation)
//! and read the key in the else branch to tell NotFound from Conflict. Lists
//! are ranges with a limit at a fixed revision (the first page's), so every
//! page comes from one snapshot. Watches start at `from + 1` with `prev_kv`;
//! etcd reports a compacted start (or a watcher it dropped for falling behind
//! compaction) with `compact_revision`, which becomes [`Error::Compacted`].
//!
//! [`EtcdProcess`] runs a private etcd on loopback for tests and benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions,
    KeyValue as EtcdKeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ContinueToken, Error, EventKind, KeyValue, ListOptions, ListResult, Result, Storage, Stored,
    WatchEvent, WatchStream, list_start, prefix_end,
};

/// [`Storage`] on etcd. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStorage {
    client: Client,
    root: String,
}

impl EtcdStorage {
    /// Connect to `endpoints` (`http://host:port`); every key is stored as
    /// `root` + key (`root` may be empty).
    pub async fn connect(endpoints: &[String], root: &str) -> Result<EtcdStorage> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(etcd_err(&endpoints.join(",")))?;
        Ok(EtcdStorage {
            client,
            root: root.to_string(),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn strip(&self, key: &[u8]) -> Result<String> {
        let key = std::str::from_utf8(key).map_err(|_| Error::Unavailable {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "etcd returned a non-UTF-8 key".into(),
        })?;
        key.strip_prefix(self.root.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Unavailable {
                key: key.to_string(),
                reason: "etcd returned a key outside the root prefix".into(),
            })
    }

    /// A Txn: if `compare` then `then` else get the key; the response and the
    /// key's state in the else branch (`None`: missing).
    async fn guarded(
        &self,
        key: &str,
        compare: Compare,
        then: TxnOp,
    ) -> Result<(TxnResponse, Option<EtcdKeyValue>)> {
        let txn = Txn::new()
            .when([compare])
            .and_then([then])
            .or_else([TxnOp::get(self.full(key), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd_err(key))?;
        let current = if resp.succeeded() {
            None
        } else {
            resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            })
        };
        Ok((resp, current))
    }
}

fn etcd_err(key: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
    move |source| {
        if let etcd_client::Error::GRpcStatus(status) = &source {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                return Error::Compacted {
                    key: key.to_string(),
                    revision: 0,
                    compact_revision: 0,
                };
            }
            if msg.contains("required revision is a future revision") {
                return Error::FutureRevision {
                    key: key.to_string(),
                    revision: 0,
                    current: 0,
                };
            }
        }
        Error::Etcd {
            key: key.to_string(),
            source,
        }
    }
}

fn header_revision(key: &str, header: Option<&etcd_client::ResponseHeader>) -> Result<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::Unavailable {
            key: key.to_string(),
            reason: "etcd response without a header".into(),
        })
}

fn conflict_or_missing(key: &str, expected: Option<i64>, current: Option<EtcdKeyValue>) -> Error {
    match current {
        None => Error::NotFound {
            key: key.to_string(),
        },
        Some(kv) => Error::Conflict {
            key: key.to_string(),
            expected: expected.unwrap_or_default(),
            actual: kv.mod_revision(),
        },
    }
}

fn exists_or(key: String, expected: Option<i64>) -> Compare {
    match expected {
        Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
        None => Compare::create_revision(key, CompareOp::Greater, 0),
    }
}

#[async_trait::async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        let mut resp = self
            .client
            .kv_client()
            .get(self.full(key), None)
            .await
            .map_err(etcd_err(key))?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| Stored {
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            value: kv.into_key_value().1,
        }))
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let (after, revision) = list_start(prefix, &options)?;
        let full_prefix = self.full(prefix);
        let start = match &after {
            Some(last) => {
                let mut k = self.full(last).into_bytes();
                k.push(0);
                k
            }
            None => full_prefix.clone().into_bytes(),
        };
        // An unbounded range ("\0" = every key >= start) when the prefix has no end.
        let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let mut get = GetOptions::new().with_range(end).with_revision(revision);
        let limit = options.limit.filter(|l| *l > 0);
        if let Some(limit) = limit {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let mut resp = self
            .client
            .kv_client()
            .get(start, Some(get))
            .await
            .map_err(|e| match etcd_err(prefix)(e) {
                Error::Compacted { key, .. } => Error::Compacted {
                    key,
                    revision,
                    compact_revision: 0,
                },
                Error::FutureRevision { key, .. } => Error::FutureRevision {
                    key,
                    revision,
                    current: 0,
                },
                other => other,
            })?;
        let at = if revision > 0 {
            revision
        } else {
            header_revision(prefix, resp.header())?
        };
        let more = resp.more();
        let count = resp.count();
        let mut items = Vec::new();
        for kv in resp.take_kvs() {
            let key = self.strip(kv.key())?;
            items.push(KeyValue {
                key,
                mod_revision: kv.mod_revision(),
                create_revision: kv.create_revision(),
                value: kv.into_key_value().1,
            });
        }
        let mut result = ListResult {
            revision: at,
            ..ListResult::default()
        };
        if more && let Some(last) = items.last() {
            result.continue_key = Some(
                ContinueToken {
                    last_key: last.key.clone(),
                    revision: at,
                }
                .to_string(),
            );
            result.remaining = Some(count - items.len() as i64);
        }
        result.items = items;
        Ok(result)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let full = self.full(key);
        let (resp, _) = self
            .guarded(
                key,
                Compare::create_revision(full.clone(), CompareOp::Equal, 0),
                TxnOp::put(full, value, None),
            )
            .await?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        header_revision(key, resp.header())
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64> {
        let full = self.full(key);
        let (resp, current) = self
            .guarded(
                key,
                exists_or(full.clone(), expected_mod_revision),
                TxnOp::put(full, value, None),
            )
            .await?;
        if !resp.succeeded() {
            return Err(conflict_or_missing(key, expected_mod_revision, current));
        }
        header_revision(key, resp.header())
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, Stored)> {
        let full = self.full(key);
        let (resp, current) = self
            .guarded(
                key,
                exists_or(full.clone(), expected_mod_revision),
                TxnOp::delete(full, Some(DeleteOptions::new().with_prev_key())),
            )
            .await?;
        if !resp.succeeded() {
            return Err(conflict_or_missing(key, expected_mod_revision, current));
        }
        let revision = header_revision(key, resp.header())?;
        let old = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(mut d) => d.take_prev_kvs().into_iter().next(),
                _ => None,
            })
            .ok_or_else(|| Error::Unavailable {
                key: key.to_string(),
                reason: "etcd deleted the key but returned no previous value".into(),
            })?;
        Ok((
            revision,
            Stored {
                mod_revision: old.mod_revision(),
                create_revision: old.create_revision(),
                value: old.into_key_value().1,
            },
        ))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let full_prefix = self.full(prefix);
        let end = prefix_end(full_prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from_revision.saturating_add(1))
            .with_prev_key();
        let mut stream = self
            .client
            .watch_client()
            .watch(full_prefix, Some(options))
            .await
            .map_err(etcd_err(prefix))?;
        // The first response confirms the watch (or reports a compacted start).
        match stream.message().await.map_err(etcd_err(prefix))? {
            Some(resp) if resp.compact_revision() > 0 => {
                return Err(Error::Compacted {
                    key: prefix.to_string(),
                    revision: from_revision,
                    compact_revision: resp.compact_revision(),
                });
            }
            Some(resp) if resp.canceled() => {
                return Err(Error::Unavailable {
                    key: prefix.to_string(),
                    reason: format!("etcd canceled the watch: {}", resp.cancel_reason()),
                });
            }
            Some(resp) if resp.created() => {}
            Some(_) | None => {
                return Err(Error::Unavailable {
                    key: prefix.to_string(),
                    reason: "etcd did not confirm the watch".into(),
                });
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let this = self.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            // `stream` (and so the etcd watch) lives as long as this task.
            loop {
                let message = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Error::Unavailable {
                                key: prefix.clone(),
                                reason: "etcd closed the watch stream".into(),
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(etcd_err(&prefix)(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    let err = if resp.compact_revision() > 0 {
                        Error::Compacted {
                            key: prefix.clone(),
                            revision: from_revision,
                            compact_revision: resp.compact_revision(),
                        }
                    } else {
                        Error::Unavailable {
                            key: prefix.clone(),
                            reason: format!("etcd canceled the watch: {}", resp.cancel_reason()),
                        }
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                for event in resp.events() {
                    let converted = this.convert(&prefix, event);
                    let failed = converted.is_err();
                    if tx.send(converted).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .client
            .kv_client()
            .get(self.full("/"), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(etcd_err(""))?;
        header_revision("", resp.header())
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self
            .client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(etcd_err(""))
        {
            Ok(_) | Err(Error::Compacted { .. }) => Ok(()),
            Err(Error::FutureRevision { key, .. }) => Err(Error::FutureRevision {
                key,
                revision,
                current: 0,
            }),
            Err(e) => Err(e),
        }
    }
}

impl EtcdStorage {
    fn convert(&self, prefix: &str, event: &etcd_client::Event) -> Result<WatchEvent> {
        let kv = event.kv().ok_or_else(|| Error::Unavailable {
            key: prefix.to_string(),
            reason: "etcd watch event without a key".into(),
        })?;
        let key = self.strip(kv.key())?;
        let prev_value = event.prev_kv().map(|p| p.value().to_vec());
        Ok(match event.event_type() {
            EventType::Put => WatchEvent {
                kind: if kv.create_revision() == kv.mod_revision() {
                    EventKind::Added
                } else {
                    EventKind::Modified
                },
                key,
                value: kv.value().to_vec(),
                prev_value,
                revision: kv.mod_revision(),
            },
            EventType::Delete => WatchEvent {
                kind: EventKind::Deleted,
                key,
                value: prev_value.clone().unwrap_or_default(),
                prev_value,
                revision: kv.mod_revision(),
            },
        })
    }
}

/// A private etcd on loopback (client and peer ports picked free), with its
/// data in a temporary directory. Dropping it kills the process (by PID) and
/// removes the directory.
pub struct EtcdProcess {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// The etcd binary: `$BERTH_ETCD`, else `/usr/bin/etcd`, else `etcd` in `$PATH`.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("BERTH_ETCD").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let usr = Path::new("/usr/bin/etcd");
        if usr.is_file() {
            return Some(usr.to_path_buf());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    }

    /// A private etcd for the test named `test`, or `None` (with the reason
    /// printed) where there is no etcd binary. Under `CI=true` or
    /// `BERTH_REQUIRE_RUNTIME=1` a missing or failing etcd panics instead: a
    /// backend check that cannot fail there is a defect.
    pub async fn for_test(test: &str) -> Option<EtcdProcess> {
        let strict = ["CI", "BERTH_REQUIRE_RUNTIME"].iter().any(|var| {
            let v = std::env::var(var).unwrap_or_default();
            v == "1" || v.eq_ignore_ascii_case("true")
        });
        let Some(binary) = Self::binary() else {
            let reason = "no etcd binary (/usr/bin/etcd, $BERTH_ETCD or PATH); \
                          install it with `apt-get install etcd-server` or run integration/setup.sh";
            assert!(
                !strict,
                "{test}: etcd is required (CI / BERTH_REQUIRE_RUNTIME=1) but: {reason}"
            );
            eprintln!("SKIP {test}: {reason}");
            return None;
        };
        match Self::start(&binary).await {
            Ok(p) => Some(p),
            Err(e) => panic!("{test}: cannot start etcd: {e}"),
        }
    }

    /// Start `binary` and wait (up to 20 s) until it serves requests.
    pub async fn start(binary: &Path) -> std::result::Result<EtcdProcess, String> {
        let mut last_error = String::new();
        // Free ports are picked by binding port 0 and releasing it; another
        // process may grab one in between, so try a few times.
        for _ in 0..3 {
            match Self::try_start(binary).await {
                Ok(p) => return Ok(p),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn try_start(binary: &Path) -> std::result::Result<EtcdProcess, String> {
        let dir = tempfile::Builder::new()
            .prefix("berth-etcd-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("etcd log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("etcd log: {e}"))?;
        let child = Command::new(binary)
            .arg("--name=berth-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=berth-test={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let mut process = EtcdProcess {
            child,
            endpoint: client_url,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(format!("etcd exited with {status}: {tail}"));
            }
            let probe = async {
                let mut client = Client::connect([process.endpoint.as_str()], None).await?;
                client.get("/", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err("etcd did not become ready within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory's parent (holds `data/` and `etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        // std's Child::kill sends SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::result::Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
