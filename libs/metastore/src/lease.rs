//! Keeping an etcd lease alive, for the keys a process holds only while it lives (a backend
//! node's membership, a manager's leadership).

use std::time::{Duration, Instant};

use etcd_client::Client;

/// Renews `lease` (granted with `ttl`) at a third of its TTL, so one lost renewal does not
/// expire it. Returns once the lease is gone: etcd reports it expired or revoked, or no renewal
/// has succeeded for a whole TTL, after which etcd has dropped it too.
pub async fn keep_alive(mut client: Client, lease: i64, ttl: Duration) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut last_renewed = Instant::now();
    while last_renewed.elapsed() < ttl {
        match client.lease_keep_alive(lease).await {
            Ok((mut renewer, mut responses)) => loop {
                if let Err(err) = renewer.keep_alive().await {
                    tracing::warn!(lease, error = %err, "etcd lease renewal failed");
                    break;
                }
                match responses.message().await {
                    Ok(Some(response)) if response.ttl() > 0 => last_renewed = Instant::now(),
                    Ok(_) => {
                        tracing::warn!(lease, "etcd lease expired or was revoked");
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(lease, error = %err, "etcd lease renewal failed");
                        break;
                    }
                }
                tokio::time::sleep(period).await;
            },
            Err(err) => tracing::warn!(lease, error = %err, "cannot renew etcd lease"),
        }
        tokio::time::sleep(period).await;
    }
    tracing::warn!(
        lease,
        ?ttl,
        "no etcd lease renewal succeeded for a whole TTL"
    );
}
