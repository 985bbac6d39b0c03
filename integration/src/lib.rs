//! Test harness: a private containerd per test and the berth-agent binary.
//!
//! Every runtime test starts with a gate, then its own containerd:
//!
//! ```no_run
//! use berth_integration::{Containerd, require_runtime};
//!
//! #[test]
//! fn my_test() -> anyhow::Result<()> {
//!     let Some(_env) = require_runtime("my_test") else { return Ok(()) };
//!     let cd = Containerd::start()?;
//!     // ... cd.endpoint(), cd.sandboxes()? ...
//!     Ok(())
//! } // Drop removes every pod, stops containerd, and leaves nothing behind.
//! ```
//!
//! Each [`Containerd`] owns a numbered directory `/tmp/berth-it/c<N>` (held by
//! an `flock` on `/tmp/berth-it/c<N>.lock` for the life of the instance), a
//! bridge `brth<N>` and the subnet `10.240.<N>.0/24`; see [`Containerd`] for
//! the full list. Each [`Agent`] likewise owns `/tmp/berth-it/a<M>`. Instances never
//! share anything, so tests run in parallel, in one process or many (nextest).
//! A directory whose lock is free belongs to a test process that died without
//! cleaning up (SIGKILL, timeout): the next instance to get that number sweeps
//! it first.
//!
//! Everything here is synchronous, so it works from `#[test]` and from inside
//! `#[tokio::test]` alike; CRI calls run on a private runtime in a helper thread
//! (see [`block_on`]). For async tests [`Containerd::client`] gives a
//! [`berth_cri::RuntimeClient`] on the caller's runtime.

mod agent;
pub mod cluster;
mod containerd;
mod host;
mod http;
mod images;
mod instance;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use agent::{Agent, AgentOptions, agent_binary};
pub use berth_cri::api;
pub use cluster::{Backend, Cluster, ClusterHost};
pub use containerd::Containerd;
pub use host::{Mount, Process, link_exists, mounts, mounts_under, processes_under, rss_kib};
pub use http::{HttpResponse, http_get, http_request};
pub use images::{GRPC_HEALTH_IMAGE, GRPC_HEALTH_TAR, grpc_health_binary, grpc_health_image};
pub use instance::NO_SWEEP;

/// The image every test container runs: static busybox with its applets on PATH; cmd `sh`.
pub const BUSYBOX_IMAGE: &str = "localhost/berth/busybox:1.36";
/// The sandbox image (containerd's `sandbox_image`): sleeps until SIGTERM/SIGINT, exits 0.
pub const PAUSE_IMAGE: &str = "localhost/berth/pause:3.9";
/// The image archives `integration/setup.sh` builds, in [`images_dir`].
pub const BUSYBOX_TAR: &str = "busybox-1.36.tar";
pub const PAUSE_TAR: &str = "pause-3.9.tar";
/// Where CNI plugins live (Debian's containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The directory with the image archives: `$BERTH_IMAGES_DIR`, else `<workspace>/target/berth-images`
/// (where `integration/setup.sh` puts them).
pub fn images_dir() -> PathBuf {
    match std::env::var_os("BERTH_IMAGES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_dir().join("target").join("berth-images"),
    }
}

/// True when runtime tests must run: `CI=true` or `BERTH_REQUIRE_RUNTIME=1`.
/// Then a missing prerequisite fails the test instead of skipping it.
pub fn strict() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let req = std::env::var("BERTH_REQUIRE_RUNTIME").unwrap_or_default();
    ci.eq_ignore_ascii_case("true") || ci == "1" || req == "1" || req.eq_ignore_ascii_case("true")
}

/// True when `BERTH_SOAK=1` (or `true`): tests may run their long variants.
/// The same switch as every other suite's ([`berth_test_support::soak`]).
pub use berth_test_support::soak;

/// What a runtime test needs from the host, found by [`require_runtime`].
#[derive(Debug, Clone)]
pub struct Env {
    pub containerd_bin: PathBuf,
    pub ctr_bin: PathBuf,
    pub runc_bin: PathBuf,
    pub ip_bin: PathBuf,
    pub images_dir: PathBuf,
    pub busybox_tar: PathBuf,
    pub pause_tar: PathBuf,
}

impl Env {
    /// Look for everything a [`Containerd`] needs; the error says what is missing and how to get it.
    pub fn detect() -> Result<Env, String> {
        let mut missing = Vec::new();
        if !nix::unistd::geteuid().is_root() {
            missing
                .push("not running as root (containerd, mounts and bridges need it)".to_string());
        }
        let mut bin = |name: &str| match find_in_path(name) {
            Some(p) => p,
            None => {
                missing.push(format!("`{name}` not found in PATH"));
                PathBuf::from(name)
            }
        };
        let containerd_bin = bin("containerd");
        let ctr_bin = bin("ctr");
        let runc_bin = bin("runc");
        let ip_bin = bin("ip");
        if find_in_path("containerd-shim-runc-v2").is_none() {
            missing.push("`containerd-shim-runc-v2` not found in PATH".to_string());
        }
        for plugin in ["bridge", "host-local", "loopback", "portmap"] {
            let p = Path::new(CNI_BIN_DIR).join(plugin);
            if !p.exists() {
                missing.push(format!("CNI plugin {} is missing", p.display()));
            }
        }
        let images_dir = images_dir();
        let busybox_tar = images_dir.join(BUSYBOX_TAR);
        let pause_tar = images_dir.join(PAUSE_TAR);
        for tar in [&busybox_tar, &pause_tar] {
            if !tar.is_file() {
                missing.push(format!("image archive {} is missing", tar.display()));
            }
        }
        if missing.is_empty() {
            Ok(Env {
                containerd_bin,
                ctr_bin,
                runc_bin,
                ip_bin,
                images_dir,
                busybox_tar,
                pause_tar,
            })
        } else {
            Err(format!(
                "{} (run `sudo integration/setup.sh` to install and build everything)",
                missing.join("; ")
            ))
        }
    }
}

/// The gate of every runtime test: `Some(env)` when root, containerd, runc, the
/// CNI plugins and the image archives are all there. Otherwise prints
/// `SKIP <test>: <reason>` and returns `None` — or panics with the reason when
/// [`strict`] (`CI=true` / `BERTH_REQUIRE_RUNTIME=1`).
pub fn require_runtime(test: &str) -> Option<Env> {
    require(test, Env::detect())
}

/// [`require_runtime`] plus the berth-agent binary ([`agent_binary`]): the
/// gate of end-to-end tests that run the agent.
pub fn require_agent(test: &str) -> Option<Env> {
    require(
        test,
        Env::detect().and_then(|env| agent_binary().map(|_| env).map_err(|e| format!("{e:#}"))),
    )
}

/// [`require_agent`] plus the gRPC health image, built when missing or stale
/// ([`grpc_health_image`]): the gate of tests that run [`GRPC_HEALTH_IMAGE`].
/// Gives the environment and the image archive, for [`Containerd::import_image`].
pub fn require_grpc_health(test: &str) -> Option<(Env, PathBuf)> {
    require(
        test,
        Env::detect()
            .and_then(|env| agent_binary().map(|_| env).map_err(|e| format!("{e:#}")))
            .and_then(|env| {
                grpc_health_image()
                    .map(|tar| (env, tar))
                    .map_err(|e| format!("{e:#}"))
            }),
    )
}

/// The general gate: `Ok(v)` → `Some(v)`; `Err(reason)` → skip (or panic when [`strict`]).
pub fn require<T>(test: &str, check: Result<T, String>) -> Option<T> {
    match check {
        Ok(v) => Some(v),
        Err(reason) => {
            if strict() {
                panic!(
                    "{test}: the runtime environment is required (CI / BERTH_REQUIRE_RUNTIME=1) but: {reason}"
                );
            }
            eprintln!("SKIP {test}: {reason}");
            None
        }
    }
}

/// Gate on one executable: its path, or skip/panic like [`require_runtime`].
pub fn require_tool(test: &str, tool: &str) -> Option<PathBuf> {
    require(
        test,
        find_in_path(tool).ok_or_else(|| format!("`{tool}` not found in PATH")),
    )
}

/// The first executable named `name` in `$PATH` (plus the sbin dirs, which a
/// non-login root shell may lack).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Clean up every instance directory (containerd, agent, cluster) left behind by
/// test processes that died without cleaning up (SIGKILL, a timeout), as
/// [`Containerd::start`] does for the number it picks. Live instances are
/// never touched. Returns the directories swept.
pub fn sweep_stale() -> anyhow::Result<Vec<PathBuf>> {
    // Clusters first (their API server would keep feeding pods to the
    // agents), then agents (which would recreate pods), then the containerds.
    // A containerd keeps its network namespace alive after the cluster sweep
    // removed its name, so tearing its pods down still works.
    let mut swept = instance::InstanceDir::sweep_all("k", cluster::sweep)?;
    swept.extend(instance::InstanceDir::sweep_all("a", |path, _| {
        host::cleanup_dir(path, None, None)
    })?);
    swept.extend(instance::InstanceDir::sweep_all("c", containerd::sweep)?);
    Ok(swept)
}

/// [`sweep_stale`], once per test process (at the first instance it starts).
pub(crate) fn sweep_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match sweep_stale() {
        Ok(swept) if !swept.is_empty() => {
            eprintln!("berth-integration: swept stale instances {swept:?}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("berth-integration: sweeping stale instances: {e:#}"),
    });
}

/// Poll `f` every 100 ms until it returns `Some`, or fail after `timeout`
/// with an error naming `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    poll(timeout, what, || Ok(f()))
}

/// Like [`wait_for`], for checks that can fail: an `Err` counts as "not yet",
/// and the last one is part of the timeout error.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            let mut msg = format!("timed out after {timeout:?} waiting for {what}");
            if let Some(e) = last_err {
                msg.push_str(&format!("; last error: {e:#}"));
            }
            anyhow::bail!(msg);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run a future to completion on a fresh current-thread tokio runtime in a
/// helper thread. Works from sync code and from inside another runtime (where
/// `Runtime::block_on` would panic); the calling thread just blocks.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        rt.block_on(fut)
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The last `lines` lines of a (log) file, or a note saying why there are none.
pub fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Run a command, failing with its stdout/stderr when it exits non-zero.
pub(crate) fn run(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
