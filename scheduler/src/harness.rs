//! Starting a real `berth-apiserver` for the end-to-end tests and benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};

/// Where the `berth-apiserver` binary is: `$BERTH_APISERVER_BIN`, else next
/// to the running executable's target directory (`target/debug`).
pub fn apiserver_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_APISERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    // target/debug/deps/test-hash or target/debug/bin-name.
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("berth-apiserver"))
        .find(|p| p.is_file())
}

/// A running `berth-apiserver` (SQLite) in a temporary data directory;
/// killed on drop.
pub struct Apiserver {
    child: Child,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Apiserver {
    /// Starts `binary` and waits until the admin kubeconfig exists and the
    /// server answers a node list.
    pub async fn start(binary: &Path) -> anyhow::Result<(Apiserver, Client)> {
        Self::start_in(binary, tempfile::tempdir()?).await
    }

    /// As [`Apiserver::start`], with its data in `dir` (removed when the
    /// server is dropped): tests keep their files under their own directory.
    pub async fn start_in(
        binary: &Path,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<(Apiserver, Client)> {
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("apiserver.log"))?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Apiserver {
            child,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            url: format!("https://127.0.0.1:{port}"),
            binary: binary.to_path_buf(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if server.kubeconfig.exists()
                && let Ok(client) = crate::client_from_kubeconfig(&server.kubeconfig).await
                && Api::<Node>::all(client.clone())
                    .list(&ListParams::default().limit(1))
                    .await
                    .is_ok()
            {
                return Ok((server, client));
            }
            if Instant::now() > deadline {
                bail!(
                    "berth-apiserver did not become ready; log:\n{}",
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A token kubeconfig for `user` (`berth-apiserver kubeconfig --user`),
    /// written next to the admin one: what a least-privileged component
    /// (the scheduler as `system:kube-scheduler`) runs with.
    pub fn user_kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        let out = Command::new(&self.binary)
            .args(["kubeconfig", "--data-dir"])
            .arg(self.dir.path())
            .args(["--user", user, "--server", &self.url])
            .output()
            .with_context(|| format!("running {} kubeconfig", self.binary.display()))?;
        if !out.status.success() {
            bail!(
                "berth-apiserver kubeconfig --user {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace(':', "-")));
        std::fs::write(&path, out.stdout).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A client for the scheduler's own identity, `system:kube-scheduler`
    /// (bound by the bootstrap policy to the role of the same name).
    pub async fn scheduler_client(&self) -> anyhow::Result<Client> {
        crate::client_from_kubeconfig(&self.user_kubeconfig("system:kube-scheduler")?).await
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }
}
