//! The Kubernetes REST API over a [`Storage`]: generic handlers driven by a
//! resource table ([`resources::RESOURCES`]), discovery, `Table` output,
//! watch, patch, field validation, bearer-token authentication and
//! authorization ([`authz`]: `system:masters`, Node authorizer, [`rbac`],
//! else 403).
//!
//! ```no_run
//! # async fn run(storage: std::sync::Arc<dyn berth_apiserver::storage::Storage>) -> anyhow::Result<()> {
//! use berth_apiserver::api::{ApiConfig, ApiState};
//! let state = ApiState::new(storage, ApiConfig::default());
//! state.bootstrap().await?;
//! state.clone().spawn_reaper();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6443").await?;
//! axum::serve(listener, berth_apiserver::api::router(state)).await?;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod discovery;
pub mod error;
pub mod handlers;
pub mod healthz;
pub mod metrics;
pub mod noderestriction;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod resources;
pub mod runtimeclass;
pub mod selectors;
pub mod strategy;
pub mod table;
pub mod tls;
pub mod validation;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;

use crate::storage::{self, Storage, object_key};
pub use auth::{Authenticator, User};
pub use error::{ApiError, ApiResult};

/// Tunables of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How often the reaper removes pods whose grace period passed.
    pub reap_interval: Duration,
    /// `Some`: require a bearer token from this authenticator; `None`: no authentication.
    pub authenticator: Option<Authenticator>,
    /// `Some`: write an `audit.k8s.io/v1` event log (`--audit-log-path`).
    pub audit: Option<audit::AuditLog>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            bookmark_interval: Duration::from_secs(60),
            reap_interval: Duration::from_secs(1),
            authenticator: None,
            audit: None,
        }
    }
}

/// The state shared by every handler.
pub struct ApiState {
    /// The object store.
    pub storage: Arc<dyn Storage>,
    /// Tunables.
    pub config: ApiConfig,
    /// The client to node agents (`pods/log`, `pods/exec`); `None`: an
    /// anonymous client (no certificate).
    pub kubelet: Option<proxy::KubeletClient>,
    /// The RBAC policy, cached; [`ApiState::storage`] is wrapped so that
    /// RBAC writes invalidate it ([`rbac::cache`]).
    pub rbac: rbac::cache::PolicyCache,
    /// Node and pod usage for `metrics.k8s.io`, filled by
    /// [`metrics::spawn`] (empty when no scraper runs).
    pub metrics: metrics::Store,
}

/// The namespaces created at startup.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

impl ApiState {
    /// Wrap a storage.
    pub fn new(storage: Arc<dyn Storage>, config: ApiConfig) -> Arc<ApiState> {
        ApiState::with_kubelet_client(storage, config, None)
    }

    /// Wrap a storage; reach node agents with `kubelet`.
    pub fn with_kubelet_client(
        storage: Arc<dyn Storage>,
        config: ApiConfig,
        kubelet: Option<proxy::KubeletClient>,
    ) -> Arc<ApiState> {
        let rbac = rbac::cache::PolicyCache::new();
        Arc::new(ApiState {
            storage: rbac.wrap(storage),
            config,
            kubelet,
            rbac,
            metrics: metrics::Store::new(),
        })
    }

    /// Create the system namespaces when missing, and create or reconcile
    /// the RBAC bootstrap policy ([`rbac::policy`]).
    pub async fn bootstrap(&self) -> Result<(), storage::Error> {
        for ns in SYSTEM_NAMESPACES {
            let key = object_key("namespaces", None, ns)?;
            let obj = json!({
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": ns, "uid": objects::new_uid(),
                    "creationTimestamp": objects::now_rfc3339(),
                    "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            let bytes = serde_json::to_vec(&obj).unwrap_or_default();
            match self.storage.create(&key, bytes).await {
                Ok(_) | Err(storage::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The RBAC bootstrap policy: created when missing, reconciled always.
        rbac::policy::ensure(self).await?;
        Ok(())
    }

    /// Start the background task removing pods whose grace period passed.
    pub fn spawn_reaper(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.config.reap_interval);
            loop {
                tick.tick().await;
                if let Err(e) = handlers::reap_pods(&self).await {
                    tracing::warn!(error = %e, "pod reaper failed");
                }
            }
        })
    }
}

/// The API router: discovery, health, OpenAPI and every served resource.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .merge(healthz::routes())
        .route(
            "/openapi/v3",
            get(|| async { axum::Json(discovery::openapi_v3_index()) }),
        )
        .route("/openapi/v3/{*path}", get(openapi_v3))
        .route("/openapi/v2", get(openapi_v2))
        .route("/api", any(handlers::dispatch))
        .route("/api/{*rest}", any(handlers::dispatch))
        .route("/apis", any(handlers::dispatch))
        .route("/apis/{*rest}", any(handlers::dispatch))
        .fallback(|| async { ApiError::NoRoute })
        // Runs after `authenticate` (layers run outermost first).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rbac::impersonation::impersonate,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), audit::audit))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

async fn openapi_v2(headers: axum::http::HeaderMap) -> Response {
    let protobuf = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("protobuf"));
    let (content_type, body) = discovery::openapi_v2(protobuf);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn openapi_v3(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match discovery::openapi_v3_group(path.trim_end_matches('/')) {
        Some(doc) => axum::Json(doc).into_response(),
        None => ApiError::NoRoute.into_response(),
    }
}

/// Paths anyone may read (kube-apiserver's `system:public-info-viewer`).
pub(crate) fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/livez" | "/version")
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.config.authenticator else {
        return next.run(req).await;
    };
    match auth::authenticate_request(auth, &req) {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None if is_public(req.uri().path()) => next.run(req).await,
        None => ApiError::Unauthorized.into_response(),
    }
}

async fn trace_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status: StatusCode = resp.status();
    tracing::debug!(
        %method,
        path,
        status = status.as_u16(),
        latency_ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}
