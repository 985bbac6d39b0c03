//! berth's minimal Kubernetes-compatible API server.
//!
//! For now only its storage layer: [`storage::Storage`] with a SQLite backend
//! ([`storage::sqlite::SqliteStorage`]) and an etcd backend
//! ([`storage::etcd::EtcdStorage`]).

pub mod api;
pub mod storage;
