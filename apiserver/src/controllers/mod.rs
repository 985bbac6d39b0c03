//! Controllers that run inside the API server process, where upstream runs
//! them in kube-controller-manager. berth has no controller manager; the few
//! loops a node agent's users rely on live here, next to the storage, and
//! read and write it directly (every write a compare-and-swap on the object's
//! revision, so a concurrent client update wins and the loop retries on its
//! next tick).
//!
//! - [`node_lifecycle`]: a node whose agent stops renewing its Lease and
//!   posting status goes `Ready=Unknown` after the grace period, gets the
//!   `unreachable`/`not-ready` taints, and its pods go `Ready=False`.
//! - [`clusterrole_aggregation`]: ClusterRoles with an `aggregationRule`
//!   get the rules of the ClusterRoles their selectors match.

pub mod clusterrole_aggregation;
pub mod node_lifecycle;
