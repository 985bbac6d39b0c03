//! Exec probes: the command runs in the container through CRI `ExecSync`, which
//! the runtime ends after the probe's timeout (upstream's `ExecProbeTimeout`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use super::Outcome;

/// Upstream keeps at most this much of a probe's output.
pub const MAX_OUTPUT: usize = 10 * 1024;

/// The command with `$(VAR)` references to the container's literal `env` values
/// expanded (upstream's `ExpandContainerCommandOnlyStatic`: values from
/// `valueFrom` are not known here and stay as written).
pub fn command(c: &Container, cmd: &[String]) -> Vec<String> {
    let env = c.env.as_deref().unwrap_or_default();
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|e| e.name == name && e.value_from.is_none())
            .map(|e| e.value.clone().unwrap_or_default())
    };
    cmd.iter()
        .map(|arg| crate::util::expand(arg, lookup))
        .collect()
}

/// Run `cmd` in container `id`: exit 0 passes, any other code fails with the
/// command's output, a timeout fails.
pub async fn probe(
    client: &berth_cri::RuntimeClient,
    id: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Outcome {
    let joined = cmd.join(" ");
    match client.exec_sync_timeout(id, cmd, timeout).await {
        Ok(r) => {
            let mut data = r.stdout;
            data.extend_from_slice(&r.stderr);
            data.truncate(MAX_OUTPUT);
            let output = String::from_utf8_lossy(&data).into_owned();
            if r.exit_code == 0 {
                Outcome::Success(output)
            } else {
                Outcome::Failure(output)
            }
        }
        Err(berth_cri::Error::Timeout { .. }) => {
            Outcome::Failure(format!("command {joined:?} timed out"))
        }
        Err(e) => Outcome::Error(e.to_string()),
    }
}
