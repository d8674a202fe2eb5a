//! The typed client of the metadata tier, for frontends: any node answers, so the client spreads
//! requests over the nodes it knows and moves to the next one when a node cannot be reached. It
//! implements `MetaStore`, so the frontend's catalog works over it as over etcd or the embedded
//! store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use sluice_common::Error;
use sluice_metastore::{MetaStore, Versioned};
use sluice_proto::v1 as pb;
use sluice_proto::v1::metadata_service_client::MetadataServiceClient;
use tonic::transport::{Channel, Endpoint};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts after the first, each on the next node.
const RETRIES: usize = 4;

pub struct MetadataClient {
    nodes: Vec<MetadataServiceClient<Channel>>,
    next: AtomicUsize,
}

impl MetadataClient {
    /// A client of the metadata nodes at `urls` (at least one).
    pub fn new(urls: &[String]) -> sluice_common::Result<Self> {
        if urls.is_empty() {
            return Err(Error::invalid(
                "metadata endpoints",
                "name at least one node",
            ));
        }
        let nodes = urls
            .iter()
            .map(|url| {
                Endpoint::from_shared(url.clone())
                    .map(|e| {
                        let channel = e
                            .connect_timeout(Duration::from_secs(1))
                            .tcp_nodelay(true)
                            .connect_lazy();
                        MetadataServiceClient::new(channel)
                    })
                    .map_err(|err| Error::invalid("metadata endpoint", format!("{url:?}: {err}")))
            })
            .collect::<sluice_common::Result<_>>()?;
        Ok(MetadataClient {
            nodes,
            next: AtomicUsize::new(0),
        })
    }

    /// Calls `rpc` on one node after another until one answers (UNAVAILABLE and unreachable
    /// nodes are skipped, with a jittered pause between attempts).
    async fn call<Req, Resp, F, Fut>(&self, request: Req, rpc: F) -> sluice_common::Result<Resp>
    where
        Req: Clone,
        F: Fn(MetadataServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let attempt = || {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(REQUEST_TIMEOUT);
            sluice_common::telemetry::inject_trace(request.metadata_mut());
            let call = rpc(self.nodes[index].clone(), request);
            async move {
                call.await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| {
                        if sluice_common::error::is_transport_failure(&status) {
                            Error::Unavailable(format!(
                                "metadata node unreachable: {}",
                                status.message()
                            ))
                        } else {
                            Error::from(status)
                        }
                    })
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(500))
            .with_max_times(RETRIES);
        attempt
            .retry(backoff)
            .when(|err| matches!(err, Error::Unavailable(_)))
            .await
    }

    /// The backend cluster for a new queue (the same answer for the same id); with
    /// `colocate_with`, the cluster of that queue.
    pub async fn place(
        &self,
        queue_id: u64,
        queue: &str,
        colocate_with: Option<u64>,
    ) -> sluice_common::Result<String> {
        let request = pb::PlaceQueueRequest {
            queue_id,
            queue: queue.to_owned(),
            colocate_with: colocate_with.unwrap_or(0),
        };
        let response = self
            .call(request, |mut c, r| async move { c.place_queue(r).await })
            .await?;
        Ok(response.cluster)
    }

    /// The live nodes of backend cluster `cluster`: (node, URL).
    pub async fn cluster_nodes(
        &self,
        cluster: &str,
    ) -> sluice_common::Result<Vec<(String, String)>> {
        let request = pb::MetaGetClusterRequest {
            cluster: cluster.to_owned(),
        };
        let response = self
            .call(request, |mut c, r| async move { c.get_cluster(r).await })
            .await?;
        Ok(response
            .nodes
            .into_iter()
            .map(|n| (n.node, n.url))
            .collect())
    }
}

fn store_error(err: Error) -> sluice_metastore::Error {
    sluice_metastore::Error::Backend(err.to_string())
}

#[async_trait]
impl MetaStore for MetadataClient {
    async fn get(&self, key: &str) -> sluice_metastore::Result<Option<Versioned>> {
        let request = pb::MetaGetRequest {
            key: key.to_owned(),
            forwarded: false,
        };
        let r = self
            .call(request, |mut c, r| async move { c.get(r).await })
            .await
            .map_err(store_error)?;
        Ok(r.found.then_some(Versioned {
            value: r.value.to_vec(),
            revision: r.revision,
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> sluice_metastore::Result<Vec<(String, Versioned)>> {
        let request = pb::MetaListRequest {
            prefix: prefix.to_owned(),
            start_after: start_after.to_owned(),
            limit: limit.min(u32::MAX as usize) as u32,
        };
        let r = self
            .call(request, |mut c, r| async move { c.list(r).await })
            .await
            .map_err(store_error)?;
        Ok(r.entries
            .into_iter()
            .map(|e| {
                (
                    e.key,
                    Versioned {
                        value: e.value.to_vec(),
                        revision: e.revision,
                    },
                )
            })
            .collect())
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> sluice_metastore::Result<Option<u64>> {
        let request = pb::MetaCreateRequest {
            key: key.to_owned(),
            value: value.into(),
            forwarded: false,
        };
        let r = self
            .call(request, |mut c, r| async move { c.create(r).await })
            .await
            .map_err(store_error)?;
        Ok(r.written.then_some(r.revision))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> sluice_metastore::Result<Option<u64>> {
        let request = pb::MetaUpdateRequest {
            key: key.to_owned(),
            value: value.into(),
            revision,
            forwarded: false,
        };
        let r = self
            .call(request, |mut c, r| async move { c.update(r).await })
            .await
            .map_err(store_error)?;
        Ok(r.written.then_some(r.revision))
    }

    async fn delete(&self, key: &str, revision: u64) -> sluice_metastore::Result<bool> {
        let request = pb::MetaDeleteRequest {
            key: key.to_owned(),
            revision,
            forwarded: false,
        };
        let r = self
            .call(request, |mut c, r| async move { c.delete(r).await })
            .await
            .map_err(store_error)?;
        Ok(r.deleted)
    }

    async fn next_id(&self, key: &str) -> sluice_metastore::Result<u64> {
        let request = pb::MetaNextIdRequest {
            key: key.to_owned(),
            forwarded: false,
        };
        let r = self
            .call(request, |mut c, r| async move { c.next_id(r).await })
            .await
            .map_err(store_error)?;
        Ok(r.id)
    }
}
