//! `MetadataService`: keyed requests go to the key's owner on the ring, which serves reads from
//! its watched cache and writes through etcd transactions. If the owner cannot be reached (it
//! died and the ring has not settled yet), the node serves the request itself from etcd, which
//! is always correct: the cache only saves reads, and every write is a compare-and-swap.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::GetOptions;
use parking_lot::Mutex;
use sluice_common::{cluster, rpc, Error, Result};
use sluice_manager::ManagerClient;
use sluice_metastore::{EtcdStore, MetaStore, Versioned};
use sluice_proto::v1 as pb;
use sluice_proto::v1::metadata_service_client::MetadataServiceClient;
use sluice_proto::v1::metadata_service_server::MetadataService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::cache::{Cached, RecordCache};
use crate::metrics;
use crate::ring::Ring;

/// Keys under this prefix are cached by their owner; the rest (counters) always go to etcd.
pub const CACHED_PREFIX: &str = "queues/";

#[derive(Clone)]
pub struct MetadataServiceImpl {
    pub(crate) node_id: String,
    pub(crate) store: EtcdStore,
    pub(crate) ring: Arc<Ring>,
    pub(crate) cache: RecordCache,
    pub(crate) manager: Arc<ManagerClient>,
    pub(crate) peers: Arc<Mutex<HashMap<String, MetadataServiceClient<Channel>>>>,
}

fn store_error(err: sluice_metastore::Error) -> Error {
    err.into()
}

/// Where a keyed request is served.
enum Route {
    Here,
    Owner(MetadataServiceClient<Channel>),
}

impl MetadataServiceImpl {
    fn route(&self, key: &str, forwarded: bool) -> Result<Route> {
        if forwarded {
            return Ok(Route::Here);
        }
        match self.ring.owner(key) {
            Some((owner, _)) if owner == self.node_id => Ok(Route::Here),
            Some((_, url)) => {
                let mut peers = self.peers.lock();
                if let Some(client) = peers.get(&url) {
                    return Ok(Route::Owner(client.clone()));
                }
                let channel = Endpoint::from_shared(url.clone())
                    .map_err(|err| Error::Internal(format!("peer URL {url:?}: {err}")))?
                    .connect_timeout(std::time::Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .connect_lazy();
                let client = MetadataServiceClient::new(channel);
                peers.insert(url, client.clone());
                Ok(Route::Owner(client))
            }
            // Not even this node is on the ring yet (it is starting): etcd answers.
            None => Ok(Route::Here),
        }
    }

    /// Runs `forward` against the owner; if the owner cannot be reached, serves it here with
    /// `local` instead.
    async fn keyed<T, F, Fut, L, LFut>(
        &self,
        key: &str,
        forwarded: bool,
        forward: F,
        local: L,
    ) -> Result<T>
    where
        F: FnOnce(MetadataServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
        L: FnOnce() -> LFut,
        LFut: std::future::Future<Output = Result<T>>,
    {
        match self.route(key, forwarded)? {
            Route::Here => local().await,
            Route::Owner(client) => {
                metrics::FORWARDS.inc();
                match forward(client).await {
                    Ok(answer) => Ok(answer),
                    Err(status)
                        if sluice_common::error::is_transport_failure(&status)
                            || status.code() == tonic::Code::Unavailable =>
                    {
                        metrics::FORWARD_FALLBACKS.inc();
                        tracing::debug!(key, error = %status, "owner unreachable, serving from etcd");
                        local().await
                    }
                    Err(status) => Err(Error::from(status)),
                }
            }
        }
    }

    async fn get_local(&self, key: &str) -> Result<Option<Versioned>> {
        if !key.starts_with(CACHED_PREFIX) {
            return self.store.get(key).await.map_err(store_error);
        }
        if let Some(cached) = self.cache.get(key) {
            metrics::CACHE_HITS.inc();
            return Ok(cached.value);
        }
        metrics::CACHE_MISSES.inc();
        let full = format!("{}{key}", self.store.root());
        let response = self
            .store
            .client()
            .kv_client()
            .get(full, None)
            .await
            .map_err(|err| Error::Unavailable(format!("etcd: {err}")))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let value = response.kvs().first().map(|kv| Versioned {
            value: kv.value().to_vec(),
            revision: kv.mod_revision() as u64,
        });
        self.cache.offer(
            key,
            Cached {
                value: value.clone(),
                seen_at: revision,
            },
        );
        Ok(value)
    }

    /// Records a write this node made, so its own next read sees it before the watch does.
    fn wrote(&self, key: &str, value: Option<Versioned>, revision: u64) {
        if key.starts_with(CACHED_PREFIX) {
            self.cache.offer(
                key,
                Cached {
                    value,
                    seen_at: revision as i64,
                },
            );
        }
    }

    async fn get(&self, req: pb::MetaGetRequest) -> Result<pb::MetaGetResponse> {
        let key = req.key.clone();
        let found = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let r = c
                        .get(pb::MetaGetRequest {
                            forwarded: true,
                            ..req
                        })
                        .await?
                        .into_inner();
                    Ok(r.found.then_some(Versioned {
                        value: r.value.to_vec(),
                        revision: r.revision,
                    }))
                },
                || self.get_local(&key),
            )
            .await?;
        Ok(match found {
            Some(v) => pb::MetaGetResponse {
                found: true,
                value: v.value.into(),
                revision: v.revision,
            },
            None => pb::MetaGetResponse::default(),
        })
    }

    async fn create(&self, req: pb::MetaCreateRequest) -> Result<pb::MetaWriteResponse> {
        let key = req.key.clone();
        let value = req.value.to_vec();
        let written = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let r = c
                        .create(pb::MetaCreateRequest {
                            forwarded: true,
                            ..req
                        })
                        .await?
                        .into_inner();
                    Ok(r.written.then_some(r.revision))
                },
                || async {
                    let written = self
                        .store
                        .create(&key, value.clone())
                        .await
                        .map_err(store_error)?;
                    if let Some(revision) = written {
                        self.wrote(&key, Some(Versioned { value, revision }), revision);
                    }
                    Ok(written)
                },
            )
            .await?;
        Ok(write_response(written))
    }

    async fn update(&self, req: pb::MetaUpdateRequest) -> Result<pb::MetaWriteResponse> {
        let key = req.key.clone();
        let (value, expected) = (req.value.to_vec(), req.revision);
        let written = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let r = c
                        .update(pb::MetaUpdateRequest {
                            forwarded: true,
                            ..req
                        })
                        .await?
                        .into_inner();
                    Ok(r.written.then_some(r.revision))
                },
                || async {
                    let written = self
                        .store
                        .update(&key, value.clone(), expected)
                        .await
                        .map_err(store_error)?;
                    if let Some(revision) = written {
                        self.wrote(&key, Some(Versioned { value, revision }), revision);
                    }
                    Ok(written)
                },
            )
            .await?;
        Ok(write_response(written))
    }

    async fn delete(&self, req: pb::MetaDeleteRequest) -> Result<pb::MetaDeleteResponse> {
        let key = req.key.clone();
        let expected = req.revision;
        let deleted = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let r = c
                        .delete(pb::MetaDeleteRequest {
                            forwarded: true,
                            ..req
                        })
                        .await?
                        .into_inner();
                    Ok(r.deleted)
                },
                || async {
                    let deleted = self
                        .store
                        .delete(&key, expected)
                        .await
                        .map_err(store_error)?;
                    if deleted {
                        // The watch brings the deletion's revision; until then, forget the key.
                        self.cache.forget(&key);
                    }
                    Ok(deleted)
                },
            )
            .await?;
        Ok(pb::MetaDeleteResponse { deleted })
    }

    async fn next_id(&self, req: pb::MetaNextIdRequest) -> Result<pb::MetaNextIdResponse> {
        let key = req.key.clone();
        let id = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    Ok(c.next_id(pb::MetaNextIdRequest {
                        forwarded: true,
                        ..req
                    })
                    .await?
                    .into_inner()
                    .id)
                },
                || async { self.store.next_id(&key).await.map_err(store_error) },
            )
            .await?;
        Ok(pb::MetaNextIdResponse { id })
    }

    async fn list(&self, req: pb::MetaListRequest) -> Result<pb::MetaListResponse> {
        let limit = (req.limit as usize).clamp(1, 1000);
        let entries = self
            .store
            .list(&req.prefix, &req.start_after, limit)
            .await
            .map_err(store_error)?;
        Ok(pb::MetaListResponse {
            entries: entries
                .into_iter()
                .map(|(key, v)| pb::MetaEntry {
                    key,
                    value: v.value.into(),
                    revision: v.revision,
                })
                .collect(),
        })
    }

    async fn place(&self, req: pb::PlaceQueueRequest) -> Result<pb::PlaceQueueResponse> {
        let colocate = (req.colocate_with != 0).then_some(req.colocate_with);
        let cluster = self
            .manager
            .place(req.queue_id, &req.queue, colocate)
            .await?;
        Ok(pb::PlaceQueueResponse { cluster })
    }

    async fn get_cluster(
        &self,
        req: pb::MetaGetClusterRequest,
    ) -> Result<pb::MetaGetClusterResponse> {
        let prefix = cluster::node_key(self.store.root(), &req.cluster, "");
        let listed = self
            .store
            .client()
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|err| Error::Unavailable(format!("etcd: {err}")))?;
        let nodes = listed
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<cluster::NodeRecord>(kv.value()).ok())
            .map(|n| pb::MetaClusterNode {
                node: n.node,
                url: n.url,
            })
            .collect();
        Ok(pb::MetaGetClusterResponse { nodes })
    }
}

fn write_response(written: Option<u64>) -> pb::MetaWriteResponse {
    pb::MetaWriteResponse {
        written: written.is_some(),
        revision: written.unwrap_or(0),
    }
}

/// Runs one RPC about `key` under the shared span and metrics.
async fn observed<R, T, Fut>(
    method: &'static str,
    request: Request<R>,
    key: impl FnOnce(&R) -> String,
    work: impl FnOnce(R) -> Fut,
) -> Result<Response<T>, Status>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let (metadata, _, request) = request.into_parts();
    let key = key(&request);
    rpc::observe(
        "sluice.v1.MetadataService",
        method,
        &key,
        &metadata,
        &metrics::RPC,
        work(request),
    )
    .await
}

#[tonic::async_trait]
impl MetadataService for MetadataServiceImpl {
    async fn get(
        &self,
        request: Request<pb::MetaGetRequest>,
    ) -> Result<Response<pb::MetaGetResponse>, Status> {
        observed("Get", request, |r| r.key.clone(), |r| self.get(r)).await
    }

    async fn list(
        &self,
        request: Request<pb::MetaListRequest>,
    ) -> Result<Response<pb::MetaListResponse>, Status> {
        observed("List", request, |r| r.prefix.clone(), |r| self.list(r)).await
    }

    async fn create(
        &self,
        request: Request<pb::MetaCreateRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed("Create", request, |r| r.key.clone(), |r| self.create(r)).await
    }

    async fn update(
        &self,
        request: Request<pb::MetaUpdateRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed("Update", request, |r| r.key.clone(), |r| self.update(r)).await
    }

    async fn delete(
        &self,
        request: Request<pb::MetaDeleteRequest>,
    ) -> Result<Response<pb::MetaDeleteResponse>, Status> {
        observed("Delete", request, |r| r.key.clone(), |r| self.delete(r)).await
    }

    async fn next_id(
        &self,
        request: Request<pb::MetaNextIdRequest>,
    ) -> Result<Response<pb::MetaNextIdResponse>, Status> {
        observed("NextId", request, |r| r.key.clone(), |r| self.next_id(r)).await
    }

    async fn place_queue(
        &self,
        request: Request<pb::PlaceQueueRequest>,
    ) -> Result<Response<pb::PlaceQueueResponse>, Status> {
        observed(
            "PlaceQueue",
            request,
            |r| r.queue.clone(),
            |r| self.place(r),
        )
        .await
    }

    async fn get_cluster(
        &self,
        request: Request<pb::MetaGetClusterRequest>,
    ) -> Result<Response<pb::MetaGetClusterResponse>, Status> {
        observed(
            "GetCluster",
            request,
            |r| r.cluster.clone(),
            |r| self.get_cluster(r),
        )
        .await
    }
}
