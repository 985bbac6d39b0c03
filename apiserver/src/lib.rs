//! berth's minimal Kubernetes-compatible API server.
//!
//! - [`storage`]: [`storage::Storage`] with a SQLite backend
//!   ([`storage::sqlite::SqliteStorage`]) and an etcd backend
//!   ([`storage::etcd::EtcdStorage`]).
//! - [`api`]: the Kubernetes REST API over a storage.
//! - [`controllers`]: the loops upstream runs in kube-controller-manager that
//!   a node agent's users rely on (node lifecycle).

pub mod api;
pub mod controllers;
pub mod storage;
