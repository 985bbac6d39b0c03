//! systemd readiness (`Type=notify`): `READY=1` once the agent has reached the
//! runtime and loaded its manifests, `STATUS=` lines along the way,
//! `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` these do nothing.

/// Tell systemd the agent is ready, with a status line.
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tell systemd what the agent is doing.
pub fn status(status: &str) {
    send(&[sd_notify::NotifyState::Status(status)]);
}

/// Tell systemd the agent is stopping.
pub fn stopping() {
    send(&[sd_notify::NotifyState::Stopping]);
}

fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
