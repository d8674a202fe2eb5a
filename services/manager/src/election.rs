//! Leadership among managers through etcd's election API. A manager campaigns with a lease;
//! once elected it holds the leader key until its lease is lost or it shuts down. Every write
//! of the leader is fenced: its transaction requires the leader key still to exist at the
//! revision it was created with, so a deposed leader's late write fails.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaderKey};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// A lost leader's key vanishes this long after its last renewal, and a standby takes over.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// The leader key while this manager leads.
#[derive(Clone, Default)]
pub struct Leadership(Arc<RwLock<Option<LeaderKey>>>);

impl Leadership {
    /// The condition that fences a write: this manager's leader key still stands.
    pub fn fence(&self) -> Option<Compare> {
        self.0
            .read()
            .as_ref()
            .map(|key| Compare::create_revision(key.key().to_vec(), CompareOp::Equal, key.rev()))
    }

    fn set(&self, key: Option<LeaderKey>) {
        metrics::IS_LEADER.set(i64::from(key.is_some()));
        *self.0.write() = key;
    }
}

/// Campaigns until `shutdown`: waits to be elected, leads while the lease holds, and campaigns
/// again with a new lease when it is lost. On shutdown the lease is revoked, which hands the
/// leadership to a standby at once.
pub async fn run(
    client: Client,
    election: String,
    url: String,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let mut campaigner = client.clone();
        let lease = match campaigner
            .lease_grant(LEASE_TTL.as_secs() as i64, None)
            .await
        {
            Ok(lease) => lease.id(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot get an etcd lease to campaign with");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let kept = sluice_metastore::lease::keep_alive(client.clone(), lease, LEASE_TTL);
        tokio::pin!(kept);
        let elected = tokio::select! {
            elected = campaigner.campaign(election.clone(), url.clone(), lease) => elected,
            _ = &mut kept => {
                tracing::warn!("lease lost while campaigning");
                continue;
            }
            _ = shutdown.cancelled() => {
                let _ = campaigner.lease_revoke(lease).await;
                return;
            }
        };
        match elected.map(|mut r| r.take_leader()) {
            Ok(Some(key)) => {
                tracing::info!(url = %url, revision = key.rev(), "elected manager leader");
                leadership.set(Some(key));
            }
            Ok(None) => {
                tracing::warn!("campaign answered without a leader key");
                let _ = campaigner.lease_revoke(lease).await;
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "campaign failed");
                let _ = campaigner.lease_revoke(lease).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
        tokio::select! {
            _ = &mut kept => {
                tracing::warn!("lost the manager leadership: lease expired");
                leadership.set(None);
            }
            _ = shutdown.cancelled() => {
                leadership.set(None);
                if let Err(err) = campaigner.lease_revoke(lease).await {
                    tracing::warn!(error = %err, "cannot revoke the leader lease; it expires on its own");
                }
                return;
            }
        }
    }
}
