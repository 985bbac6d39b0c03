//! The scrape loop: metrics-server's `scraper` and `server.tick` in the API
//! server. Every `--metric-resolution` it lists the Nodes from storage, GETs
//! each node agent's `/metrics/resource` (all at once, each within its own
//! timeout, so a slow or unreachable node costs only itself), decodes the
//! answers and replaces the [`Store`](super::store::Store) with the round.
//!
//! A failing node is logged once when its failures start (warning, with the
//! error), at debug level while they go on, and once when it recovers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::decode::{self, NodeBatch};
use super::store::Round;
use super::text::ParseError;
use crate::api::ApiState;
use crate::api::proxy::{self, EndpointError, GetError, KubeletClient};
use crate::storage::{ListOptions, collection_prefix};

/// The path scraped on every agent.
pub const RESOURCE_METRICS_PATH: &str = "/metrics/resource";
/// The largest `/metrics/resource` answer read (a few hundred bytes per
/// container: this is tens of thousands of containers).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// The per-node timeout when the resolution allows it (metrics-server's
/// `--kubelet-request-timeout` default).
pub const MAX_NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// metrics-server's default resolution in its deployment manifests.
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(15);
/// The shortest resolution taken (metrics-server wants 10 s; tests go
/// shorter).
pub const MIN_RESOLUTION: Duration = Duration::from_millis(100);

/// How often and how patiently to scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScraperConfig {
    /// The time between rounds (`--metric-resolution`).
    pub resolution: Duration,
    /// How long one node's scrape may take, connection included.
    pub node_timeout: Duration,
}

impl ScraperConfig {
    /// Rounds every `resolution`; each node gets 9/10 of it, at most
    /// [`MAX_NODE_TIMEOUT`] (metrics-server insists the timeout stays
    /// under 9/10 of the resolution, so a round ends before the next).
    pub fn new(resolution: Duration) -> ScraperConfig {
        ScraperConfig {
            resolution,
            node_timeout: resolution
                .checked_mul(9)
                .map_or(MAX_NODE_TIMEOUT, |d| d / 10)
                .min(MAX_NODE_TIMEOUT),
        }
    }
}

impl Default for ScraperConfig {
    fn default() -> ScraperConfig {
        ScraperConfig::new(DEFAULT_RESOLUTION)
    }
}

/// Why one node's scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The Node object names no address or port.
    #[error("node {node}: {source}")]
    Endpoint {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: EndpointError,
    },
    /// The GET failed.
    #[error("node {node}: {source}")]
    Get {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: GetError,
    },
    /// No whole answer within the per-node timeout.
    #[error("node {node}: no answer from {url} within {timeout:?}")]
    Timeout {
        /// The node.
        node: String,
        /// What was asked.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The answer is not UTF-8.
    #[error("node {node}: {url} answered something that is not UTF-8 text")]
    NotText {
        /// The node.
        node: String,
        /// What was asked.
        url: String,
    },
    /// The agent answered `resource_scrape_error 1` and no node reading.
    #[error("node {node}: no node readings in /metrics/resource (resource_scrape_error 1)")]
    NoStats {
        /// The node.
        node: String,
    },
    /// The answer is not the text format.
    #[error("node {node}: parsing {url}: {source}")]
    Parse {
        /// The node.
        node: String,
        /// What was asked.
        url: String,
        /// The bad line.
        #[source]
        source: ParseError,
    },
}

/// Scrape the agent of the Node object `node_obj` named `node` once.
pub async fn scrape_node(
    client: &KubeletClient,
    node: &str,
    node_obj: &Value,
    timeout: Duration,
) -> Result<NodeBatch, ScrapeError> {
    let (host, port) =
        proxy::kubelet_endpoint(node_obj, node).map_err(|source| ScrapeError::Endpoint {
            node: node.to_string(),
            source,
        })?;
    let url = format!("https://{host}:{port}{RESOURCE_METRICS_PATH}");
    let request_ns = now_ns();
    let body = tokio::time::timeout(
        timeout,
        client.get(&host, port, RESOURCE_METRICS_PATH, MAX_BODY),
    )
    .await
    .map_err(|_| ScrapeError::Timeout {
        node: node.to_string(),
        url: url.clone(),
        timeout,
    })?
    .map_err(|source| ScrapeError::Get {
        node: node.to_string(),
        source,
    })?;
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::NotText {
        node: node.to_string(),
        url: url.clone(),
    })?;
    decode::decode(text, request_ns).map_err(|source| ScrapeError::Parse {
        node: node.to_string(),
        url,
        source,
    })
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// A node's run of failed scrapes.
#[derive(Debug, Clone, Copy)]
struct Streak {
    since: Instant,
    failures: u64,
}

/// The loop's state between rounds.
pub struct Scraper {
    state: Arc<ApiState>,
    config: ScraperConfig,
    failing: HashMap<String, Streak>,
}

/// Start scraping every `config.resolution` into `state.metrics`.
pub fn spawn(state: Arc<ApiState>, config: ScraperConfig) -> tokio::task::JoinHandle<()> {
    tracing::info!(
        resolution = ?config.resolution,
        node_timeout = ?config.node_timeout,
        "metrics.k8s.io: scraping node agents"
    );
    let mut scraper = Scraper::new(state, config);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.resolution.max(MIN_RESOLUTION));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            scraper.round().await;
        }
    })
}

impl Scraper {
    /// A scraper writing into `state.metrics`.
    pub fn new(state: Arc<ApiState>, config: ScraperConfig) -> Scraper {
        Scraper {
            state,
            config,
            failing: HashMap::new(),
        }
    }

    /// One round: every node scraped, the store replaced. A failure to list
    /// the Nodes skips the round (the store keeps the last one).
    pub async fn round(&mut self) {
        let started = Instant::now();
        let nodes = match self.list_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "metrics scrape: listing nodes failed; round skipped");
                return;
            }
        };
        let client = match self.state.kubelet_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics scrape: no client for node agents");
                return;
            }
        };
        let timeout = self.config.node_timeout;
        let results = futures::future::join_all(nodes.iter().map(|(name, obj)| {
            let client = &client;
            async move {
                let t0 = Instant::now();
                let r = scrape_node(client, name, obj, timeout).await;
                (r, t0.elapsed())
            }
        }))
        .await;
        let mut round = Round::default();
        for ((name, obj), (result, took)) in nodes.iter().zip(results) {
            match result {
                Ok(batch) if batch.agent_error && batch.node.is_none() => {
                    let e = ScrapeError::NoStats { node: name.clone() };
                    self.failed(name, obj, &e);
                    round.add(name, batch);
                }
                Ok(batch) => {
                    self.succeeded(name);
                    if !batch.dropped.is_empty() {
                        tracing::debug!(node = %name, dropped = ?batch.dropped,
                            "metrics scrape: absurd values ignored");
                    }
                    if batch.node.is_none() {
                        tracing::debug!(node = %name, "metrics scrape: incomplete node metrics");
                    }
                    tracing::trace!(node = %name, pods = batch.pods.len(),
                        took_ms = took.as_secs_f64() * 1000.0, "node scraped");
                    round.add(name, batch);
                }
                Err(e) => self.failed(name, obj, &e),
            }
        }
        // Nodes gone from the cluster leave their streaks.
        self.failing
            .retain(|n, _| nodes.iter().any(|(name, _)| name == n));
        let (node_points, pod_points) = (round.nodes.len(), round.pods.len());
        self.state.metrics.store(round);
        tracing::debug!(
            nodes = nodes.len(),
            node_points,
            pod_points,
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "metrics scrape round done"
        );
    }

    async fn list_nodes(&self) -> Result<Vec<(String, Value)>, crate::storage::Error> {
        let prefix = collection_prefix("nodes", None)?;
        let listed = self
            .state
            .storage
            .list(&prefix, ListOptions::default())
            .await?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|kv| {
                let obj: Value = match serde_json::from_slice(&kv.value) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "metrics scrape: undecodable Node");
                        return None;
                    }
                };
                let name = obj.pointer("/metadata/name")?.as_str()?.to_string();
                Some((name, obj))
            })
            .collect())
    }

    fn succeeded(&mut self, node: &str) {
        if let Some(streak) = self.failing.remove(node) {
            tracing::info!(
                node,
                failed_scrapes = streak.failures,
                failing_for_s = streak.since.elapsed().as_secs(),
                "metrics scrape of the node works again"
            );
        }
    }

    fn failed(&mut self, node: &str, obj: &Value, error: &ScrapeError) {
        match self.failing.get_mut(node) {
            Some(streak) => {
                streak.failures = streak.failures.saturating_add(1);
                tracing::debug!(node, error = %error, failures = streak.failures,
                    "metrics scrape of the node still failing");
            }
            None => {
                self.failing.insert(
                    node.to_string(),
                    Streak {
                        since: Instant::now(),
                        failures: 1,
                    },
                );
                tracing::warn!(node, ready = is_ready(obj), error = %error,
                    "metrics scrape of the node failed (logged again when it recovers)");
            }
        }
    }
}

/// Whether the Node's `Ready` condition is `True`.
fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_resolution() {
        assert_eq!(
            ScraperConfig::new(Duration::from_secs(2)).node_timeout,
            Duration::from_millis(1800)
        );
        assert_eq!(ScraperConfig::default().node_timeout, MAX_NODE_TIMEOUT);
        assert_eq!(ScraperConfig::default().resolution, DEFAULT_RESOLUTION);
        assert_eq!(
            ScraperConfig::new(Duration::MAX).node_timeout,
            MAX_NODE_TIMEOUT
        );
    }
}
