//! Storage throughput: creates/s and watch events/s on SQLite and on etcd.
//!
//! `berth-storage-bench [--quick] [--objects N] [--sqlite-normal]` prints one JSON document.
//! Each backend gets N creates of ~2 KiB pod JSON, sequentially, then N more
//! from 16 concurrent writers while a watcher counts the live events; then a
//! new watcher replays those N events from history. etcd runs as a private
//! process on loopback (skipped, `null`, when there is no etcd binary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_apiserver::storage::etcd::{EtcdProcess, EtcdStorage};
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_apiserver::storage::{Storage, object_key};
use futures::StreamExt;
use serde_json::json;

const WRITERS: usize = 16;

fn pod_json(ns: &str, name: &str) -> Vec<u8> {
    let pad = "x".repeat(1500);
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{ns}","labels":{{"app":"bench"}},"annotations":{{"pad":"{pad}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36","command":["sleep","3600"],"resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}}}}}}],"restartPolicy":"Always"}},"status":{{"phase":"Pending"}}}}"#
    )
    .into_bytes()
}

async fn run(store: Arc<dyn Storage>, n: usize) -> anyhow::Result<serde_json::Value> {
    let value_bytes = pod_json("bench", "p0").len();
    // Sequential creates.
    let start = Instant::now();
    for i in 0..n {
        store
            .create(
                &object_key("pods", Some("seq"), &format!("p{i}"))?,
                pod_json("seq", "p"),
            )
            .await?;
    }
    let sequential = n as f64 / start.elapsed().as_secs_f64();

    // Concurrent creates with a live watcher.
    let from = store.current_revision().await?;
    let mut watch = store.watch("/registry/pods/conc/", from).await?;
    let watcher = tokio::spawn(async move {
        let mut count = 0usize;
        let mut first: Option<Instant> = None;
        while count < n {
            match tokio::time::timeout(Duration::from_secs(60), watch.next()).await {
                Ok(Some(Ok(_))) => {
                    first.get_or_insert_with(Instant::now);
                    count += 1;
                }
                other => anyhow::bail!("watch stopped after {count} events: {other:?}"),
            }
        }
        Ok((count, first.map(|f| f.elapsed())))
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let key = object_key("pods", Some("conc"), &format!("p{i}"))?;
                store.create(&key, pod_json("conc", "p")).await?;
                i += WRITERS;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let concurrent_elapsed = start.elapsed();
    let (events, _) = watcher.await??;
    let live_elapsed = start.elapsed();

    // Replay from history.
    let start = Instant::now();
    let mut replay = store.watch("/registry/pods/conc/", from).await?;
    let mut replayed = 0usize;
    while replayed < n {
        match tokio::time::timeout(Duration::from_secs(60), replay.next()).await {
            Ok(Some(Ok(_))) => replayed += 1,
            other => anyhow::bail!("replay stopped after {replayed} events: {other:?}"),
        }
    }
    let replay_rate = n as f64 / start.elapsed().as_secs_f64();

    Ok(json!({
        "objects": n,
        "value_bytes": value_bytes,
        "creates_per_sec_sequential": sequential.round(),
        "creates_per_sec_16_writers": (n as f64 / concurrent_elapsed.as_secs_f64()).round(),
        "watch_events_per_sec_live": (events as f64 / live_elapsed.as_secs_f64()).round(),
        "watch_events_per_sec_replay": replay_rate.round(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut n = if quick { 500 } else { 5000 };
    let mut mode = if quick { "quick" } else { "full" };
    if let Some(pos) = args.iter().position(|a| a == "--objects") {
        mode = "custom";
        n = args
            .get(pos + 1)
            .and_then(|v| v.parse().ok())
            .context("--objects needs a number")?;
    }

    let dir = tempfile::tempdir()?;
    // `--sqlite-normal`: PRAGMA synchronous=NORMAL (no fsync per commit).
    let fsync = !args.iter().any(|a| a == "--sqlite-normal");
    let options = SqliteOptions {
        fsync_every_commit: fsync,
        ..SqliteOptions::default()
    };
    let sqlite = SqliteStorage::open(dir.path(), options)?;
    let sqlite_result = run(Arc::new(sqlite), n).await.context("sqlite")?;

    let etcd_result = match EtcdProcess::binary() {
        None => serde_json::Value::Null,
        Some(binary) => {
            let process = EtcdProcess::start(&binary)
                .await
                .map_err(anyhow::Error::msg)
                .context("starting etcd")?;
            let store = EtcdStorage::connect(&[process.endpoint().to_string()], "").await?;
            let mut r = run(Arc::new(store), n).await.context("etcd")?;
            r["etcd_version"] = json!(etcd_version(&binary));
            r
        }
    };
    let out = json!({
        "bench": "storage",
        "mode": mode,
        "machine": machine(),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "sqlite": sqlite_result,
        "sqlite_synchronous": if fsync { "FULL" } else { "NORMAL" },
        "etcd": etcd_result,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn etcd_version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

/// What the figures depend on besides the code: CPUs, model, memory, kernel.
fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let memory_kib = line(&read("/proc/meminfo"), "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok());
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": line(&cpuinfo, "model name"),
        "memory_kib": memory_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
