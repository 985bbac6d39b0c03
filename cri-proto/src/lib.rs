//! The CRI v1 API and a client for it over a unix socket.
//!
//! [`api`] re-exports the generated types and services of the `k8s-cri` crate.
//! [`RuntimeClient`] wraps one tonic `Channel` dialled over a unix socket and
//! hands out typed calls with a per-call timeout (the kubelet's
//! `runtimeRequestTimeout`, 2 min by default, shorter for List/Status calls).
//! Every `tonic::Status` is mapped once, here, to an [`Error`] whose variants
//! carry meaning (not found, unavailable, timed out), so callers never match on
//! strings.

pub mod client;
pub mod error;
#[cfg(feature = "fake")]
pub mod fake;

pub use client::{CallObserver, ConnectOptions, RuntimeClient, parse_endpoint, unix_channel};
pub use error::{Error, Result};

/// The generated CRI v1 types, clients and servers.
pub mod api {
    pub use k8s_cri::v1::*;
}

/// The default runtime endpoint, as the kubelet's `--container-runtime-endpoint`.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
