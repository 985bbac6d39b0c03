//! The ClusterRole aggregation controller (upstream
//! `pkg/controller/clusterroleaggregation`): keeps the `rules` of every
//! ClusterRole with an `aggregationRule` equal to the union of the rules of
//! the ClusterRoles its selectors match ([`crate::api::rbac::aggregation`]).
//!
//! Level-triggered: every change under `/registry/clusterroles/` (a watch
//! from the revision of the last pass) recomputes all aggregated roles, and
//! so does a periodic resync; a pass writes only roles whose rules changed,
//! so its own writes trigger one more pass that finds nothing to do. A
//! broken watch (compaction, storage restart) falls back to the resync tick
//! and is opened again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::api::ApiState;
use crate::api::rbac::aggregation;

/// Timing of the controller.
#[derive(Debug, Clone)]
pub struct AggregationConfig {
    /// A full pass runs at least this often, events or not.
    pub resync: Duration,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            resync: Duration::from_secs(30),
        }
    }
}

/// One pass; failures are logged and retried on the next trigger.
async fn pass(state: &ApiState) {
    match aggregation::reconcile_all(state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(updated = n, "aggregated cluster roles updated"),
        Err(e) => tracing::warn!(error = %e, "cluster role aggregation failed"),
    }
}

/// Run the controller until the task is dropped.
pub fn spawn(state: Arc<ApiState>, config: AggregationConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let prefix = "/registry/clusterroles/";
        loop {
            let from = match state.storage.current_revision().await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster role aggregation: no revision");
                    tokio::time::sleep(config.resync).await;
                    continue;
                }
            };
            // Pass after taking the revision: a change racing the pass is
            // still delivered by the watch.
            pass(&state).await;
            let mut events = match state.storage.watch(prefix, from).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster role aggregation: watch failed");
                    tokio::time::sleep(config.resync).await;
                    continue;
                }
            };
            let mut tick = tokio::time::interval(config.resync);
            tick.tick().await;
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(_)) => pass(&state).await,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "cluster role watch ended; reopening");
                            break;
                        }
                        None => break,
                    },
                    _ = tick.tick() => pass(&state).await,
                }
            }
        }
    })
}
