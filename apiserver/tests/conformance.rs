//! One conformance suite for every [`Storage`] backend.
//!
//! Each behaviour is one generic `async fn(Arc<dyn Storage>)`; the
//! `conformance!` macro runs each against SQLite (always) and against a
//! private etcd started per test (skipped with a printed reason when there is
//! no etcd binary; a failure when `CI=true` or `BERTH_REQUIRE_RUNTIME=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth_apiserver::storage::etcd::{EtcdProcess, EtcdStorage};
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_apiserver::storage::{
    Error, EventKind, ListOptions, Storage, WatchEvent, WatchStream, object_key,
};
use futures::StreamExt;

type Store = Arc<dyn Storage>;

/// A backend and whatever must live as long as it (temp dir, etcd process).
struct Backend {
    store: Store,
    _guard: Box<dyn std::any::Any + Send>,
}

fn sqlite_backend() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        // Keep every test's history unless it compacts explicitly.
        retain_events: i64::MAX / 2,
        fsync_every_commit: false,
        ..SqliteOptions::default()
    };
    let store = SqliteStorage::open(dir.path(), options).expect("open sqlite store");
    Backend {
        store: Arc::new(store),
        _guard: Box::new(dir),
    }
}

async fn etcd_backend(test: &str) -> Option<Backend> {
    let process = EtcdProcess::for_test(test).await?;
    let store = EtcdStorage::connect(&[process.endpoint().to_string()], "/berth-test")
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot connect to etcd: {e}"));
    Some(Backend {
        store: Arc::new(store),
        _guard: Box::new(process),
    })
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::sqlite_backend();
                    super::$name(backend.store.clone()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::etcd_backend(concat!("etcd::", stringify!($name))).await
                    else {
                        return;
                    };
                    super::$name(backend.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    crud,
    already_exists,
    conflict_one_of_two_concurrent_updaters_wins,
    not_found,
    list_prefix_isolation,
    pagination_consistent_snapshot,
    list_at_revision,
    watch_from_revision_no_gaps_no_repeats,
    watch_from_compacted_revision,
    deleted_event_carries_previous_value,
    revisions_strictly_increase,
    concurrent_creates_get_distinct_revisions,
);

fn pod(ns: &str, name: &str) -> String {
    object_key("pods", Some(ns), name).expect("valid key")
}

fn body(name: &str, n: usize) -> Vec<u8> {
    format!(r#"{{"kind":"Pod","metadata":{{"name":"{name}"}},"n":{n}}}"#).into_bytes()
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 20 s"),
    }
}

async fn crud(s: Store) {
    let key = pod("default", "web");
    let r1 = s.create(&key, body("web", 1)).await.expect("create");
    assert!(r1 > 0);
    let got = s.get(&key).await.expect("get").expect("present");
    assert_eq!(got.value, body("web", 1));
    assert_eq!((got.mod_revision, got.create_revision), (r1, r1));

    let r2 = s
        .update(&key, body("web", 2), Some(r1))
        .await
        .expect("update");
    assert!(r2 > r1);
    let got = s.get(&key).await.expect("get").expect("present");
    assert_eq!(got.value, body("web", 2));
    assert_eq!((got.mod_revision, got.create_revision), (r2, r1));

    let r3 = s
        .update(&key, body("web", 3), None)
        .await
        .expect("unconditional update");
    assert!(r3 > r2);

    let (r4, old) = s.delete(&key, Some(r3)).await.expect("delete");
    assert!(r4 > r3);
    assert_eq!(old.value, body("web", 3));
    assert_eq!((old.mod_revision, old.create_revision), (r3, r1));
    assert_eq!(s.get(&key).await.expect("get"), None);
    assert_eq!(s.current_revision().await.expect("revision"), r4);
}

async fn already_exists(s: Store) {
    let key = pod("default", "dup");
    let r1 = s.create(&key, body("dup", 1)).await.expect("create");
    match s.create(&key, body("dup", 2)).await {
        Err(Error::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // The failed create changed nothing.
    let got = s.get(&key).await.expect("get").expect("present");
    assert_eq!((got.value, got.mod_revision), (body("dup", 1), r1));
    // After a delete the key can be created again, with a new create revision.
    s.delete(&key, None).await.expect("delete");
    let r2 = s.create(&key, body("dup", 3)).await.expect("re-create");
    let got = s.get(&key).await.expect("get").expect("present");
    assert_eq!(got.create_revision, r2);
}

async fn conflict_one_of_two_concurrent_updaters_wins(s: Store) {
    let key = pod("default", "contended");
    let r1 = s.create(&key, body("c", 0)).await.expect("create");
    let (a, b) = tokio::join!(
        s.update(&key, body("c", 1), Some(r1)),
        s.update(&key, body("c", 2), Some(r1)),
    );
    let (winner, loser, winning_body) = match (a, b) {
        (Ok(w), Err(l)) => (w, l, body("c", 1)),
        (Err(l), Ok(w)) => (w, l, body("c", 2)),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    match loser {
        Error::Conflict {
            key: k,
            expected,
            actual,
        } => {
            assert_eq!(k, key);
            assert_eq!(expected, r1);
            assert_eq!(actual, winner);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let got = s.get(&key).await.expect("get").expect("present");
    assert_eq!((got.value, got.mod_revision), (winning_body, winner));
    // A stale delete conflicts too, and deletes nothing.
    assert!(matches!(
        s.delete(&key, Some(r1)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(s.get(&key).await.expect("get").is_some());
}

async fn not_found(s: Store) {
    let key = pod("default", "ghost");
    assert_eq!(s.get(&key).await.expect("get"), None);
    for result in [
        s.update(&key, body("g", 1), None).await.map(|_| ()),
        s.update(&key, body("g", 1), Some(5)).await.map(|_| ()),
        s.delete(&key, None).await.map(|_| ()),
        s.delete(&key, Some(5)).await.map(|_| ()),
    ] {
        match result {
            Err(Error::NotFound { key: k }) => assert_eq!(k, key),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}

async fn list_prefix_isolation(s: Store) {
    for (ns, name) in [
        ("ns1", "a"),
        ("ns1", "b"),
        ("ns1", "c"),
        ("ns10", "a"),
        ("ns10", "z"),
        ("ns2", "a"),
    ] {
        s.create(&pod(ns, name), body(name, 0))
            .await
            .expect("create");
    }
    s.create(
        &object_key("nodes", None, "n1").expect("key"),
        body("n1", 0),
    )
    .await
    .expect("create node");
    let keys = |r: &berth_apiserver::storage::ListResult| {
        r.items.iter().map(|i| i.key.clone()).collect::<Vec<_>>()
    };
    let ns1 = s
        .list("/registry/pods/ns1/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(
        keys(&ns1),
        vec![pod("ns1", "a"), pod("ns1", "b"), pod("ns1", "c")]
    );
    assert_eq!(ns1.continue_key, None);
    let ns10 = s
        .list("/registry/pods/ns10/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(keys(&ns10), vec![pod("ns10", "a"), pod("ns10", "z")]);
    let all = s
        .list("/registry/pods/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(all.items.len(), 6);
    assert!(all.items.windows(2).all(|w| w[0].key < w[1].key));
    let nodes = s
        .list("/registry/nodes/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(keys(&nodes), vec!["/registry/nodes/n1".to_string()]);
    let none = s
        .list("/registry/pods/ns3/", ListOptions::default())
        .await
        .expect("list");
    assert!(none.items.is_empty());
    assert_eq!(none.revision, s.current_revision().await.expect("rev"));
}

async fn pagination_consistent_snapshot(s: Store) {
    let mut expected = BTreeMap::new();
    for i in 0..25 {
        let key = pod("paged", &format!("p{i:03}"));
        let rev = s.create(&key, body("p", i)).await.expect("create");
        expected.insert(key, rev);
    }
    let mut seen = BTreeMap::new();
    let mut options = ListOptions {
        limit: Some(7),
        ..ListOptions::default()
    };
    let mut snapshot = None;
    let mut pages = 0;
    loop {
        let page = s
            .list("/registry/pods/paged/", options.clone())
            .await
            .expect("list");
        pages += 1;
        let rev = *snapshot.get_or_insert(page.revision);
        assert_eq!(
            page.revision, rev,
            "every page is read at the first page's revision"
        );
        assert!(page.items.len() <= 7);
        for item in &page.items {
            assert!(
                seen.insert(item.key.clone(), item.mod_revision).is_none(),
                "{} listed twice",
                item.key
            );
        }
        // Writes between pages must not show up in later pages.
        let n = pages * 100;
        s.create(&pod("paged", &format!("p{n:03}-new")), body("new", n))
            .await
            .expect("create between pages");
        if pages == 1 {
            assert_eq!(page.remaining, Some(25 - 7));
            s.delete(&pod("paged", "p024"), None).await.expect("delete");
            s.update(&pod("paged", "p020"), body("changed", 1), None)
                .await
                .expect("update");
        }
        match page.continue_key {
            Some(token) => {
                assert!(page.remaining.is_some_and(|r| r > 0));
                options.continue_key = Some(token);
            }
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, expected);
    // A garbage token is an invalid argument, not a crash.
    let bad = s
        .list(
            "/registry/pods/paged/",
            ListOptions {
                continue_key: Some("nonsense".into()),
                ..ListOptions::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(Error::InvalidArgument { .. })), "{bad:?}");
}

async fn list_at_revision(s: Store) {
    let a = pod("hist", "a");
    let b = pod("hist", "b");
    let r1 = s.create(&a, body("a", 1)).await.expect("create");
    let r2 = s.create(&b, body("b", 1)).await.expect("create");
    s.update(&a, body("a", 2), None).await.expect("update");
    s.delete(&b, None).await.expect("delete");
    let at = |revision| ListOptions {
        revision: Some(revision),
        ..ListOptions::default()
    };
    let old = s.list("/registry/pods/hist/", at(r2)).await.expect("list");
    assert_eq!(old.revision, r2);
    let got: Vec<_> = old
        .items
        .iter()
        .map(|i| (i.key.clone(), i.value.clone(), i.mod_revision))
        .collect();
    assert_eq!(
        got,
        vec![(a.clone(), body("a", 1), r1), (b, body("b", 1), r2)]
    );
    let now = s
        .list("/registry/pods/hist/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(now.items.len(), 1);
    assert_eq!(now.items[0].value, body("a", 2));
    let future = s
        .list("/registry/pods/hist/", at(now.revision + 1000))
        .await;
    assert!(
        matches!(future, Err(Error::FutureRevision { .. })),
        "{future:?}"
    );
}

async fn watch_from_revision_no_gaps_no_repeats(s: Store) {
    let prefix = "/registry/pods/watched/";
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(
            s.create(&pod("watched", &format!("w{i}")), body("w", i))
                .await
                .expect("create"),
        );
    }
    let from = revisions[1];
    // Writes keep happening while the watch is set up and catches up.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..300usize {
                let key = pod("watched", &format!("w{}", i % 5));
                let rev = match i % 3 {
                    0 => s.update(&key, body("w", i), None).await,
                    1 => {
                        // Outside the watched prefix: must not be delivered.
                        s.create(&pod("elsewhere", &format!("x{i}")), body("x", i))
                            .await
                            .map(|_| -1)
                    }
                    _ => s.update(&key, body("w", i), None).await,
                }
                .expect("write");
                if rev > 0 {
                    revs.push(rev);
                }
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            revs
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut stream = s.watch(prefix, from).await.expect("watch");
    let written = writer.await.expect("writer");
    revisions.extend(written);
    let last = *revisions.last().expect("some writes");
    let expected: Vec<i64> = revisions.into_iter().filter(|r| *r > from).collect();
    let mut got = Vec::new();
    while got.last().is_none_or(|r| *r < last) {
        let event = next_event(&mut stream).await;
        assert!(event.key.starts_with(prefix), "foreign key {}", event.key);
        if got.len() < 3 {
            assert_eq!(event.kind, EventKind::Added);
        } else {
            assert_eq!(event.kind, EventKind::Modified);
            assert!(event.prev_value.is_some());
        }
        got.push(event.revision);
    }
    assert_eq!(got, expected, "exactly the events after {from}, in order");
    // Live events keep coming after the catch-up.
    let rev = s
        .update(&pod("watched", "w0"), body("live", 1), None)
        .await
        .expect("update");
    let event = next_event(&mut stream).await;
    assert_eq!((event.revision, event.value), (rev, body("live", 1)));
}

async fn watch_from_compacted_revision(s: Store) {
    let prefix = "/registry/pods/compacted/";
    let mut revs = Vec::new();
    for i in 0..10 {
        let key = pod("compacted", "c");
        revs.push(if i == 0 {
            s.create(&key, body("c", i)).await.expect("create")
        } else {
            s.update(&key, body("c", i), None).await.expect("update")
        });
    }
    let compact_at = revs[6];
    s.compact(compact_at).await.expect("compact");
    // Compacting again (or older) is a no-op.
    s.compact(revs[2]).await.expect("compact older");

    let too_old = revs[3];
    match s.watch(prefix, too_old).await {
        Err(Error::Compacted {
            compact_revision, ..
        }) => assert!(compact_revision == 0 || compact_revision >= compact_at),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(mut stream) => {
            match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
                Ok(Some(Err(Error::Compacted { .. }))) => {}
                other => panic!("expected Compacted, got {other:?}"),
            }
        }
    }
    let listed = s
        .list(
            prefix,
            ListOptions {
                revision: Some(too_old),
                ..ListOptions::default()
            },
        )
        .await;
    assert!(matches!(listed, Err(Error::Compacted { .. })), "{listed:?}");

    // From the compact revision on, history is complete.
    let mut stream = s.watch(prefix, compact_at).await.expect("watch");
    for want in &revs[7..] {
        assert_eq!(next_event(&mut stream).await.revision, *want);
    }
    // The state at the compact revision is still readable.
    let at = s
        .list(
            prefix,
            ListOptions {
                revision: Some(compact_at),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list at compact revision");
    assert_eq!(at.items.len(), 1);
    assert_eq!(at.items[0].value, body("c", 6));
}

async fn deleted_event_carries_previous_value(s: Store) {
    let key = pod("del", "x");
    s.create(&key, body("x", 1)).await.expect("create");
    let r2 = s.update(&key, body("x", 2), None).await.expect("update");
    let mut stream = s.watch("/registry/pods/del/", r2).await.expect("watch");
    let (r3, old) = s.delete(&key, None).await.expect("delete");
    assert_eq!(old.value, body("x", 2));
    let event = next_event(&mut stream).await;
    assert_eq!(event.kind, EventKind::Deleted);
    assert_eq!(event.key, key);
    assert_eq!(event.revision, r3);
    assert_eq!(event.value, body("x", 2));
    assert_eq!(event.prev_value, Some(body("x", 2)));
    // The same from a watch that replays history.
    let mut replay = s.watch("/registry/pods/del/", r2).await.expect("watch");
    let event = next_event(&mut replay).await;
    assert_eq!(
        (event.kind, event.revision, event.prev_value),
        (EventKind::Deleted, r3, Some(body("x", 2)))
    );
}

async fn revisions_strictly_increase(s: Store) {
    let mut last = s.current_revision().await.expect("revision");
    for i in 0..20 {
        let key = pod("mono", &format!("m{}", i % 4));
        let rev = match s.get(&key).await.expect("get") {
            None => s.create(&key, body("m", i)).await.expect("create"),
            Some(cur) if i % 3 == 0 => {
                s.delete(&key, Some(cur.mod_revision))
                    .await
                    .expect("delete")
                    .0
            }
            Some(cur) => s
                .update(&key, body("m", i), Some(cur.mod_revision))
                .await
                .expect("update"),
        };
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
        // Failed writes do not advance the revision.
        let _ = s.create(&key, body("dup", i)).await;
        let _ = s.update(&pod("mono", "missing"), body("x", i), None).await;
    }
    assert_eq!(s.current_revision().await.expect("revision"), last);
}

async fn concurrent_creates_get_distinct_revisions(s: Store) {
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.create(&pod("many", &format!("p{i:04}")), body("p", i))
                    .await
            })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    for task in tasks {
        let rev = task.await.expect("task").expect("create");
        assert!(revisions.insert(rev), "revision {rev} given twice");
    }
    assert_eq!(revisions.len(), 1000);
    let listed = s
        .list("/registry/pods/many/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1000);
    let max = revisions.last().copied().unwrap_or_default();
    assert!(listed.revision >= max);
    let listed_revs: BTreeSet<i64> = listed.items.iter().map(|i| i.mod_revision).collect();
    assert_eq!(listed_revs, revisions);
}

/// SQLite only: a watcher that falls behind the broadcast buffer re-reads the
/// log and still gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lagging_watcher_resyncs_from_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        broadcast_capacity: 16,
        fsync_every_commit: false,
        ..SqliteOptions::default()
    };
    let s = SqliteStorage::open(dir.path(), options).expect("open");
    let mut stream = s.watch("/registry/pods/", 0).await.expect("watch");
    let mut expected = Vec::new();
    for i in 0..600 {
        expected.push(
            s.create(&pod("lag", &format!("p{i}")), body("p", i))
                .await
                .expect("create"),
        );
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(next_event(&mut stream).await.revision);
    }
    assert_eq!(got, expected);
}

/// SQLite only: the writer compacts history beyond the retention window by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retention_compacts_old_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        retain_events: 10,
        retain_age: Duration::ZERO,
        compaction_interval: Duration::from_millis(20),
        fsync_every_commit: false,
        ..SqliteOptions::default()
    };
    let s = SqliteStorage::open(dir.path(), options).expect("open");
    let key = pod("ret", "x");
    let mut last = s.create(&key, body("x", 0)).await.expect("create");
    for i in 1..100 {
        last = s.update(&key, body("x", i), None).await.expect("update");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        s.watch("/registry/pods/ret/", 1).await,
        Err(Error::Compacted { .. })
    ));
    let mut stream = s
        .watch("/registry/pods/ret/", last - 10)
        .await
        .expect("watch");
    assert_eq!(next_event(&mut stream).await.revision, last - 9);
    // The live state survives compaction, and the store reopens with it.
    drop(stream);
    drop(s);
    let s = SqliteStorage::open(dir.path(), SqliteOptions::default()).expect("reopen");
    let got = s.get(&key).await.expect("get").expect("present");
    assert_eq!((got.value, got.mod_revision), (body("x", 99), last));
    assert_eq!(s.current_revision().await.expect("revision"), last);
}
