//! `/healthz`, `/livez` and `/readyz`, as kube-apiserver's
//! `k8s.io/apiserver/pkg/server/healthz`: a list of named checks, each also
//! served on its own path (`/readyz/etcd`).
//!
//! * The root path runs every check (`?exclude=NAME` skips one and says so).
//!   All pass: `200 ok`, or with `?verbose` one `[+]NAME ok` line per check
//!   and `readyz check passed`. One fails: always verbose, `500`, the failed
//!   check as `[-]NAME failed: reason withheld` (the root paths are public,
//!   so the error itself goes to the log only) and `readyz check failed`.
//! * `/readyz/NAME`: `200 ok`, or `500 internal server error: <error>`.
//!
//! The `etcd` check reads from the storage within [`STORAGE_CHECK_TIMEOUT`]
//! (kube-apiserver's `--etcd-healthcheck-timeout`, 2 s), as upstream's etcd
//! check gets a key. It keeps its name on the SQLite backend, as k3s's does
//! on kine: clients and probes look for `etcd`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;

/// How long the `etcd` check waits for the storage to answer.
pub const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One named health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Always passes: the server answers HTTP.
    Ping,
    /// The storage answers a read within [`STORAGE_CHECK_TIMEOUT`].
    Etcd,
}

/// The checks of every endpoint, in the order they are reported.
const CHECKS: &[Check] = &[Check::Ping, Check::Etcd];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Ping => "ping",
            Check::Etcd => "etcd",
        }
    }

    fn find(name: &str) -> Option<Check> {
        CHECKS.iter().copied().find(|c| c.name() == name)
    }

    async fn run(self, state: &ApiState) -> Result<(), String> {
        match self {
            Check::Ping => Ok(()),
            Check::Etcd => {
                match tokio::time::timeout(STORAGE_CHECK_TIMEOUT, state.storage.current_revision())
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("error getting data from etcd: {e}")),
                    Err(_) => Err(format!(
                        "error getting data from etcd: no answer within {}s",
                        STORAGE_CHECK_TIMEOUT.as_secs()
                    )),
                }
            }
        }
    }
}

/// The three health endpoints and their per-check paths.
pub fn routes() -> Router<Arc<ApiState>> {
    let mut router = Router::new();
    for endpoint in ["healthz", "livez", "readyz"] {
        router = router
            .route(
                &format!("/{endpoint}"),
                get(move |state, query| root(endpoint, state, query)),
            )
            .route(&format!("/{endpoint}/{{check}}"), get(single));
    }
    router
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /readyz`: every check (`handleRootHealth`).
async fn root(
    endpoint: &'static str,
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let mut verbose = false;
    let mut excluded = BTreeSet::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "verbose" => verbose = true,
            "exclude" => {
                excluded.insert(v.into_owned());
            }
            _ => {}
        }
    }
    let mut out = String::new();
    let mut failed = Vec::new();
    for check in CHECKS {
        let name = check.name();
        if excluded.remove(name) {
            out.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match check.run(&state).await {
            Ok(()) => out.push_str(&format!("[+]{name} ok\n")),
            Err(error) => {
                out.push_str(&format!("[-]{name} failed: reason withheld\n"));
                tracing::info!(endpoint, check = name, error, "health check failed");
                failed.push(name);
            }
        }
    }
    if !excluded.is_empty() {
        let names: Vec<String> = excluded.iter().map(|n| format!("{n:?}")).collect();
        out.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            names.join(",")
        ));
    }
    if !failed.is_empty() {
        out.push_str(&format!("{endpoint} check failed\n"));
        return text(StatusCode::INTERNAL_SERVER_ERROR, out);
    }
    if !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    out.push_str(&format!("{endpoint} check passed\n"));
    text(StatusCode::OK, out)
}

/// `GET /readyz/NAME`: one check (`adaptCheckToHandler`).
async fn single(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    let Some(check) = Check::find(&name) else {
        return super::ApiError::NoRoute.into_response();
    };
    match check.run(&state).await {
        Ok(()) => text(StatusCode::OK, "ok".into()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal server error: {e}\n"),
        ),
    }
}
