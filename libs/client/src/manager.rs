//! The client of the managers, for the tiers that place queues. It finds the leader through
//! etcd, follows it across failovers, and owns timeouts, retries and error mapping.

use std::collections::HashMap;
use std::time::Duration;

use backon::Retryable;
use parking_lot::Mutex;
use sluice_api::{cluster, Error, Result};
use sluice_proto::v1 as pb;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::channel::{self, ChannelOptions};

#[derive(Debug, Clone)]
pub struct ManagerClientOptions {
    pub request_timeout: Duration,
    /// How long a placement keeps trying while no manager leads (a failover takes about the
    /// leader lease's TTL).
    pub failover_timeout: Duration,
}

impl Default for ManagerClientOptions {
    fn default() -> Self {
        ManagerClientOptions {
            request_timeout: Duration::from_secs(5),
            failover_timeout: Duration::from_secs(30),
        }
    }
}

pub struct ManagerClient {
    etcd: etcd_client::Client,
    election: String,
    options: ManagerClientOptions,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ManagerClient {
    /// A client that finds the managers through the etcd at `endpoints`, under `root`.
    pub async fn connect(
        endpoints: &[String],
        root: &str,
        options: ManagerClientOptions,
    ) -> Result<Self> {
        let etcd = etcd_client::Client::connect(endpoints, Some(sluice_common::etcd::options()))
            .await
            .map_err(|err| Error::Unavailable(format!("cannot connect to etcd: {err}")))?;
        Ok(ManagerClient {
            etcd,
            election: cluster::manager_election(root),
            options,
            channels: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, url: &str) -> Result<Channel> {
        if let Some(channel) = self.channels.lock().get(url) {
            return Ok(channel.clone());
        }
        let options = ChannelOptions {
            connect_timeout: self.options.request_timeout,
            ..ChannelOptions::default()
        };
        let channel = channel::channel("manager leader URL", url, &options)?;
        self.channels.lock().insert(url.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The leader's client; UNAVAILABLE while no manager leads.
    async fn leader(&self) -> Result<ManagerServiceClient<Channel>> {
        let url = leader_url(&self.etcd, &self.election)
            .await
            .map_err(|err| Error::Unavailable(format!("etcd: {err}")))?
            .ok_or_else(|| Error::Unavailable("no manager leads right now".into()))?;
        Ok(ManagerServiceClient::new(self.channel(&url)?))
    }

    /// The cluster for queue `queue_id` (the same answer every time for one id): the cluster of
    /// queue `colocate_with` if set, else the least-utilized one. Follows the leadership while
    /// it moves, for up to the failover timeout.
    pub async fn place(
        &self,
        queue_id: u64,
        queue: &str,
        colocate_with: Option<u64>,
    ) -> Result<String> {
        let attempt = || async {
            let mut client = self.leader().await?;
            let request = pb::PlaceQueueRequest {
                queue_id,
                queue: queue.to_owned(),
                colocate_with: colocate_with.unwrap_or(0),
            };
            let timeout = self.options.request_timeout;
            async { client.place_queue(channel::request(request, timeout)).await }
                .instrument(channel::client_span::<pb::PlaceQueueRequest>(
                    "sluice.v1.ManagerService",
                ))
                .await
                .map(|r| r.into_inner().cluster)
                .map_err(from_status)
        };
        let backoff = channel::backoff(Duration::from_millis(50), Duration::from_secs(1))
            .without_max_times()
            .with_total_delay(Some(self.options.failover_timeout));
        attempt
            .retry(backoff)
            .when(|err| matches!(err, Error::Unavailable(_)))
            .notify(
                |err, pause| tracing::debug!(error = %err, ?pause, "placement failed, retrying"),
            )
            .await
    }
}

/// A transport failure (tonic's UNKNOWN with a source) or a manager that is no longer the
/// leader both mean: find the leader again.
fn from_status(status: tonic::Status) -> Error {
    let unreachable = sluice_api::error::is_transport_failure(&status);
    let deposed = status.code() == tonic::Code::FailedPrecondition
        && status.message().starts_with("not the leader");
    if unreachable || deposed {
        return Error::Unavailable(format!("manager: {}", status.message()));
    }
    Error::from(status)
}

/// The URL of the manager leading in `election`, from the value its leader key holds; `None`
/// while no manager leads.
pub async fn leader_url(
    client: &etcd_client::Client,
    election: &str,
) -> Result<Option<String>, etcd_client::Error> {
    let mut client = client.clone();
    match client.leader(election).await {
        Ok(response) => Ok(response
            .kv()
            .and_then(|kv| kv.value_str().ok())
            .map(str::to_owned)),
        // etcd answers "election: no leader" as an error.
        Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("no leader") => {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}
