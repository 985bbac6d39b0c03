//! Test images built on demand: the gRPC health image.
//!
//! The busybox and pause images are built by `integration/setup.sh` before
//! anything is compiled. The gRPC health image holds `berth-grpc-health`, a
//! binary of this crate, so it can only be built after cargo has built that:
//! the first test that asks for it runs `integration/images/build.sh
//! --grpc-health <binary> <images dir>`, which rebuilds the archive only when
//! the binary (or a library it loads, or the recipe) changed, and serialises
//! concurrent callers with a lock of its own.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;

/// The gRPC health image: busybox plus `berth-grpc-health` (grpc.health.v1 on
/// port 9000, SERVING for `""` and `berth.test.Health` until `/tmp/unhealthy`
/// exists; see `integration/src/bin/berth-grpc-health.rs`). Cmd `berth-grpc-health`.
pub const GRPC_HEALTH_IMAGE: &str = "localhost/berth/grpc-health:1";
/// Its archive in [`crate::images_dir`].
pub const GRPC_HEALTH_TAR: &str = "grpc-health-1.tar";
/// The binary's name (a `[[bin]]` of this crate).
const GRPC_HEALTH_BIN: &str = "berth-grpc-health";

/// The berth-grpc-health binary: `$BERTH_GRPC_HEALTH_BIN`, else the one in the
/// cargo profile directory of the running executable (`target/<profile>/`;
/// cargo builds a package's binaries before its integration tests).
pub fn grpc_health_binary() -> anyhow::Result<PathBuf> {
    crate::cluster::workspace_binary(GRPC_HEALTH_BIN, "BERTH_GRPC_HEALTH_BIN")
}

/// Build the gRPC health image archive when it is missing or stale, and return
/// its path ([`crate::images_dir`]`/`[`GRPC_HEALTH_TAR`]). Needs what the other
/// test images need (umoci, jq, the static busybox) and root.
pub fn grpc_health_image() -> anyhow::Result<PathBuf> {
    let binary = grpc_health_binary()?;
    let dir = crate::images_dir();
    let script = crate::workspace_dir().join("integration/images/build.sh");
    crate::run(
        Command::new("bash")
            .arg(&script)
            .arg("--grpc-health")
            .arg(&binary)
            .arg(&dir),
    )
    .with_context(|| format!("building {GRPC_HEALTH_IMAGE} from {}", binary.display()))?;
    let tar = dir.join(GRPC_HEALTH_TAR);
    anyhow::ensure!(
        tar.is_file(),
        "{} did not produce {}",
        script.display(),
        tar.display()
    );
    Ok(tar)
}
