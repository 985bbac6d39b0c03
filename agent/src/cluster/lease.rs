//! The node's heartbeat: the Lease `kube-node-lease/<node>`, held by the node
//! and renewed every [`RENEW_INTERVAL`] (the kubelet's node lease controller).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::Context;
use crate::util::{is_conflict, is_not_found, sleep_or_cancel};

/// The namespace of node leases.
pub const NAMESPACE: &str = "kube-node-lease";
/// How often the lease is renewed.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// `spec.leaseDurationSeconds`.
pub const DURATION_SECONDS: i32 = 40;

/// Create and renew the node's lease until cancelled.
pub async fn run(ctx: Context) {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let mut retry = Duration::from_millis(200);
    loop {
        let wait = match renew(&leases, &ctx.node_name).await {
            Ok(()) => {
                retry = Duration::from_millis(200);
                RENEW_INTERVAL
            }
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, server = %ctx.server, error = %crate::util::error_chain(&e), retry_in = ?retry, "lease renewal failed");
                let r = retry;
                retry = (retry * 2).min(Duration::from_secs(7));
                r
            }
        };
        if !sleep_or_cancel(&ctx.cancel, wait).await {
            return;
        }
    }
}

fn spec(node: &str) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(DURATION_SECONDS),
        renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        ..Default::default()
    }
}

/// Renew the lease (creating it when missing).
async fn renew(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "spec": spec(node) });
    match leases
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    ..Default::default()
                },
                spec: Some(spec(node)),
            };
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                // Created meanwhile: the next renewal patches it.
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
