//! Errors of the CRI client: one place where `tonic::Status` codes get meaning.

use std::time::Duration;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint string is not a unix socket address we can dial.
    #[error("invalid container runtime endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// The socket is missing, refused the connection, or the transport broke.
    #[error("cannot reach the container runtime at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },

    /// The runtime answered but does not serve the CRI v1 API.
    #[error("the container runtime at {endpoint} does not serve CRI v1: {reason}")]
    NotCriV1 { endpoint: String, reason: String },

    /// The object named in the call does not exist (gRPC NotFound).
    #[error("{method}: not found: {message}")]
    NotFound {
        method: &'static str,
        message: String,
    },

    /// The call did not finish within its timeout.
    #[error("{method}: timed out after {timeout:?}")]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },

    /// The runtime answered with another gRPC error.
    #[error("{method}: {code:?}: {message}")]
    Rpc {
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl Error {
    /// Map a `tonic::Status` from `method` to an error with meaning.
    pub fn from_status(endpoint: &str, method: &'static str, status: tonic::Status) -> Self {
        let message = status.message().to_string();
        // A status raised on the client side (a broken connection: Unknown
        // "transport error", or Cancelled when the runtime died mid-call) carries
        // the transport error as its source; statuses the runtime sent never do.
        if std::error::Error::source(&status).is_some() {
            return Error::Unreachable {
                endpoint: endpoint.to_string(),
                reason: describe_transport(&status),
            };
        }
        match status.code() {
            tonic::Code::NotFound => Error::NotFound { method, message },
            tonic::Code::Unavailable => Error::Unreachable {
                endpoint: endpoint.to_string(),
                reason: describe_transport(&status),
            },
            tonic::Code::DeadlineExceeded => Error::Timeout {
                method,
                timeout: Duration::ZERO,
            },
            code => Error::Rpc {
                method,
                code,
                message,
            },
        }
    }

    /// The gRPC code this error stands for (for metrics labels).
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InvalidEndpoint { .. } => tonic::Code::InvalidArgument,
            Error::Unreachable { .. } => tonic::Code::Unavailable,
            Error::NotCriV1 { .. } => tonic::Code::Unimplemented,
            Error::NotFound { .. } => tonic::Code::NotFound,
            Error::Timeout { .. } => tonic::Code::DeadlineExceeded,
            Error::Rpc { code, .. } => *code,
        }
    }

    /// True when the object named in the call does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True when the runtime could not be reached at all (socket gone, refused, timed out).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }

    /// True when the runtime does not implement the call.
    pub fn is_unimplemented(&self) -> bool {
        self.code() == tonic::Code::Unimplemented
    }
}

/// Turn tonic's transport errors into a sentence a user can act on.
fn describe_transport(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    let lower = text.to_lowercase();
    if lower.contains("no such file") {
        "no such file — is containerd running?".to_string()
    } else if lower.contains("connection refused") {
        "connection refused — is containerd running?".to_string()
    } else {
        text
    }
}
