//! `metrics.k8s.io/v1beta1` (`kubectl top`) served by the API server
//! itself: what metrics-server computes, without a separate server and
//! aggregation layer.
//!
//! The pipeline, one module per stage:
//!
//! 1. [`scraper`]: every `--metric-resolution` (15 s by default), GET each
//!    node agent's `/metrics/resource` with the API server's kubelet-client
//!    certificate, concurrently, each node within its own timeout;
//! 2. [`text`]: read the Prometheus text format 0.0.4 (with the samples'
//!    own timestamps);
//! 3. [`decode`]: the node's and each container's CPU counter, working set
//!    and start time;
//! 4. [`store`]: keep the last two points per node and per container;
//!    usage is the counter's rate between the two points' timestamps and
//!    the newest working set;
//! 5. [`rest`]: `NodeMetrics` / `PodMetrics` with the Node's (Pod's) labels,
//!    selectors, Tables; discovery entries; [`format`] writes quantities and
//!    durations as the Go types marshal.
//!
//! The RBAC bootstrap policy carries metrics-server's
//! `system:aggregated-metrics-reader` role, aggregated into view, edit and
//! admin ([`crate::api::rbac::policy`]).

pub mod decode;
pub mod format;
pub mod rest;
pub mod scraper;
pub mod store;
pub mod text;

pub use rest::GROUP;
pub use scraper::{ScraperConfig, spawn};
pub use store::Store;
