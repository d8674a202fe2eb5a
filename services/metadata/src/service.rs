//! `MetadataService`: keyed requests go to the key's owner on the ring, which serves reads from
//! its watched cache and writes through etcd transactions. If the owner cannot be reached (it
//! died and the ring has not settled yet), the node serves the request itself from etcd, which
//! is always correct: the cache only saves reads, and every write is a compare-and-swap. Every
//! record a caller sends is checked as the frontend checks a request before it is stored.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::GetOptions;
use parking_lot::Mutex;
use sluice_api::cluster::{self, Placement};
use sluice_api::{wire, Error, QueueDirectory, QueueRecord, Result, Versioned};
use sluice_client::{channel, ManagerClient, Ring};
use sluice_common::rpc;
use sluice_metastore::{EtcdStore, MetaStore, StoreDirectory};
use sluice_proto::v1 as pb;
use sluice_proto::v1::metadata_service_client::MetadataServiceClient;
use sluice_proto::v1::metadata_service_server::MetadataService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::cache::{Cached, RecordCache};
use crate::metrics;

/// Keys under these prefixes are cached by their owner and followed by its watch.
pub const CACHED_PREFIXES: [&str; 2] = ["queues/", "placements/"];

/// Most queue ids one request takes: a frontend asks for a block and hands ids out itself.
const MAX_ID_BLOCK: u32 = 1000;

/// Most names one list returns.
const MAX_LIST: usize = 1000;

/// How long a frontend's registration outlives its last renewal; frontends renew every 3 s.
const FRONTEND_TTL_SECONDS: i64 = 10;
const MAX_FRONTEND_ID_LEN: usize = 64;
const MAX_URL_LEN: usize = 256;

#[derive(Clone)]
pub struct MetadataServiceImpl {
    pub(crate) node_id: String,
    pub(crate) store: EtcdStore,
    /// Queue records over `store`: the code standalone writes its embedded store with.
    pub(crate) records: Arc<StoreDirectory>,
    pub(crate) ring: Arc<Ring>,
    pub(crate) cache: RecordCache,
    pub(crate) manager: Arc<ManagerClient>,
    pub(crate) peers: Arc<Mutex<HashMap<String, MetadataServiceClient<Channel>>>>,
    /// Changes to principals and access keys, from the node's watch of etcd.
    pub(crate) identity_changes: tokio::sync::broadcast::Sender<crate::identity::Changed>,
    /// Cancelled when the node shuts down, which ends the WatchIdentity streams.
    pub(crate) closing: tokio_util::sync::CancellationToken,
}

/// Where a keyed request is served.
enum Route {
    Here,
    Owner(MetadataServiceClient<Channel>),
}

fn placement_key(queue_id: u64) -> Result<String> {
    if queue_id == 0 {
        return Err(Error::invalid("queue_id", "must be set"));
    }
    Ok(cluster::placement_key("", queue_id))
}

fn decode_placement(key: &str, value: &[u8]) -> Result<Placement> {
    serde_json::from_slice(value)
        .map_err(|err| Error::Internal(format!("placement {key} is corrupt: {err}")))
}

/// Whether an owner may cache that a key has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absence {
    /// Every write of the key goes through its owner, which records it: a cached absence stays
    /// true until the owner's own write or the watch replaces it.
    Cache,
    /// Another service writes the key; absence is read from etcd every time.
    Reread,
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
                let options = channel::ChannelOptions {
                    connect_timeout: std::time::Duration::from_secs(1),
                    ..channel::ChannelOptions::default()
                };
                let client = MetadataServiceClient::new(channel::channel(
                    "metadata peer URL",
                    &url,
                    &options,
                )?);
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
                        if sluice_api::error::is_transport_failure(&status)
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

    /// The value under `key`: from the cache if this node owns the key and has it, otherwise
    /// from etcd (cached if this node owns the key). `absence` says whether finding no value
    /// may be cached too.
    async fn get_local(&self, key: &str, absence: Absence) -> Result<Option<Versioned>> {
        if let Some(cached) = self.cache.get(key) {
            metrics::CACHE_HITS.inc();
            return Ok(cached.value);
        }
        metrics::CACHE_MISSES.inc();
        // Taken before the read: if the ring changes meanwhile, the entry is not served.
        let owned = self.cache.owned(key);
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
        let cacheable = value.is_some() || absence == Absence::Cache;
        if let (Some(generation), true) = (owned, cacheable) {
            let cached = Cached {
                value: value.clone(),
                seen_at: revision,
            };
            self.cache.offer(key, cached, generation);
        }
        Ok(value)
    }

    /// Records a write this node made, so its own next read sees it before the watch does.
    fn wrote(&self, key: &str, value: Option<Versioned>, revision: u64) {
        if let Some(generation) = self.cache.owned(key) {
            let cached = Cached {
                value,
                seen_at: revision as i64,
            };
            self.cache.offer(key, cached, generation);
        }
    }

    /// Records a record this node wrote at `written`, if it did.
    fn wrote_record(&self, record: &QueueRecord, written: Option<u64>) -> Option<u64> {
        if let Some(revision) = written {
            let key = cluster::queue_record_key("", &record.name);
            let value = record.encode();
            self.wrote(&key, Some(Versioned { value, revision }), revision);
        }
        written
    }

    /// Records that this node deleted `key`, if it did.
    fn deleted(&self, key: &str, deleted: bool) -> bool {
        if deleted {
            // The watch brings the deletion's revision; until then, forget the key.
            self.cache.forget(key);
        }
        deleted
    }

    async fn get_queue(&self, req: pb::MetaGetQueueRequest) -> Result<pb::MetaGetQueueResponse> {
        sluice_api::limits::queue_name("name", &req.name)?;
        let key = cluster::queue_record_key("", &req.name);
        let found = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let request = pb::MetaGetQueueRequest {
                        forwarded: true,
                        ..req
                    };
                    Ok(c.get_queue_record(request).await?.into_inner())
                },
                || async {
                    let Some(v) = self.get_local(&key, Absence::Cache).await? else {
                        return Ok(pb::MetaGetQueueResponse::default());
                    };
                    let record = QueueRecord::decode(&key, &v.value)?;
                    Ok(pb::MetaGetQueueResponse {
                        record: Some(wire::record_to_pb(&record)),
                        revision: v.revision,
                    })
                },
            )
            .await?;
        Ok(found)
    }

    async fn create_queue(&self, req: pb::MetaCreateQueueRequest) -> Result<pb::MetaWriteResponse> {
        let record = wire::record_from_pb(req.record.clone())?;
        let key = cluster::queue_record_key("", &record.name);
        let written = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let request = pb::MetaCreateQueueRequest {
                        forwarded: true,
                        ..req
                    };
                    let r = c.create_queue_record(request).await?.into_inner();
                    Ok(r.written.then_some(r.revision))
                },
                || async {
                    let written = self.records.create_queue(&record).await?;
                    Ok(self.wrote_record(&record, written))
                },
            )
            .await?;
        Ok(write_response(written))
    }

    async fn update_queue(&self, req: pb::MetaUpdateQueueRequest) -> Result<pb::MetaWriteResponse> {
        let record = wire::record_from_pb(req.record.clone())?;
        if req.revision == 0 {
            return Err(Error::invalid(
                "revision",
                "must be the revision the record was read at",
            ));
        }
        let key = cluster::queue_record_key("", &record.name);
        let expected = req.revision;
        let written = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let request = pb::MetaUpdateQueueRequest {
                        forwarded: true,
                        ..req
                    };
                    let r = c.update_queue_record(request).await?.into_inner();
                    Ok(r.written.then_some(r.revision))
                },
                || async {
                    let written = self.records.update_queue(&record, expected).await?;
                    Ok(self.wrote_record(&record, written))
                },
            )
            .await?;
        Ok(write_response(written))
    }

    async fn delete_queue(
        &self,
        req: pb::MetaDeleteQueueRequest,
    ) -> Result<pb::MetaDeleteResponse> {
        sluice_api::limits::queue_name("name", &req.name)?;
        let key = cluster::queue_record_key("", &req.name);
        let (name, expected) = (req.name.clone(), req.revision);
        let deleted = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let request = pb::MetaDeleteQueueRequest {
                        forwarded: true,
                        ..req
                    };
                    Ok(c.delete_queue_record(request).await?.into_inner().deleted)
                },
                || async {
                    let deleted = self.records.delete_queue(&name, expected).await?;
                    Ok(self.deleted(&key, deleted))
                },
            )
            .await?;
        Ok(pb::MetaDeleteResponse { deleted })
    }

    async fn list_queues(
        &self,
        req: pb::MetaListQueuesRequest,
    ) -> Result<pb::MetaListQueuesResponse> {
        let limit = (req.limit as usize).clamp(1, MAX_LIST);
        let names = self
            .records
            .list_queues(&req.prefix, &req.start_after, limit)
            .await?;
        Ok(pb::MetaListQueuesResponse { names })
    }

    async fn allocate_ids(
        &self,
        req: pb::MetaAllocateQueueIdsRequest,
    ) -> Result<pb::MetaAllocateQueueIdsResponse> {
        let count = sluice_api::limits::in_range("count", req.count, 1, MAX_ID_BLOCK)?;
        let first = self.records.allocate_queue_ids(count.into()).await?;
        Ok(pb::MetaAllocateQueueIdsResponse { first, count })
    }

    async fn get_placement(
        &self,
        req: pb::MetaGetPlacementRequest,
    ) -> Result<pb::MetaGetPlacementResponse> {
        let key = placement_key(req.queue_id)?;
        self.keyed(
            &key,
            req.forwarded,
            |mut c| async move {
                let request = pb::MetaGetPlacementRequest {
                    forwarded: true,
                    ..req
                };
                Ok(c.get_placement(request).await?.into_inner())
            },
            || async {
                // The manager writes placements straight to etcd, not through this node, so a
                // cached absence could hide a placement just written until the watch brought it:
                // a frontend that places a queue and reads its placement back must find it.
                let Some(v) = self.get_local(&key, Absence::Reread).await? else {
                    return Ok(pb::MetaGetPlacementResponse::default());
                };
                Ok(pb::MetaGetPlacementResponse {
                    placement: Some(wire::placement_to_pb(&decode_placement(&key, &v.value)?)),
                    revision: v.revision,
                })
            },
        )
        .await
    }

    async fn delete_placement(
        &self,
        req: pb::MetaDeletePlacementRequest,
    ) -> Result<pb::MetaDeleteResponse> {
        let key = placement_key(req.queue_id)?;
        let expected = req.revision;
        let deleted = self
            .keyed(
                &key,
                req.forwarded,
                |mut c| async move {
                    let request = pb::MetaDeletePlacementRequest {
                        forwarded: true,
                        ..req
                    };
                    Ok(c.delete_placement(request).await?.into_inner().deleted)
                },
                || async {
                    let deleted = self.store.delete(&key, expected).await?;
                    Ok(self.deleted(&key, deleted))
                },
            )
            .await?;
        Ok(pb::MetaDeleteResponse { deleted })
    }

    async fn place(&self, req: pb::PlaceQueueRequest) -> Result<pb::PlaceQueueResponse> {
        if req.queue_id == 0 {
            return Err(Error::invalid("queue_id", "must be set"));
        }
        sluice_api::limits::queue_name("queue", &req.queue)?;
        let colocate = (req.colocate_with != 0).then_some(req.colocate_with);
        let cluster = self
            .manager
            .place(req.queue_id, &req.queue, colocate)
            .await?;
        Ok(pb::PlaceQueueResponse { cluster })
    }

    fn ring(&self) -> pb::MetaGetRingResponse {
        pb::MetaGetRingResponse {
            members: self
                .ring
                .members()
                .into_iter()
                .map(|(node, url)| pb::MetaRingMember { node, url })
                .collect(),
        }
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

impl MetadataServiceImpl {
    /// Renews the frontend's lease (or grants a new one if it expired), writes its key under
    /// it, and counts the frontends' keys.
    async fn register_frontend(
        &self,
        req: pb::RegisterFrontendRequest,
    ) -> Result<pb::RegisterFrontendResponse> {
        let id = &req.frontend;
        if id.is_empty()
            || id.len() > MAX_FRONTEND_ID_LEN
            || !id.chars().all(sluice_api::limits::is_name_char)
        {
            return Err(Error::invalid(
                "frontend",
                format!(
                    "must be 1 to {MAX_FRONTEND_ID_LEN} characters of A-Z, a-z, 0-9, '_' and '-'"
                ),
            ));
        }
        if req.url.len() > MAX_URL_LEN {
            return Err(Error::invalid(
                "url",
                format!(
                    "is {} characters, the limit is {MAX_URL_LEN}",
                    req.url.len()
                ),
            ));
        }
        if req.lease < 0 {
            return Err(Error::invalid("lease", "must not be negative"));
        }
        let etcd = |err: etcd_client::Error| Error::Unavailable(format!("etcd: {err}"));
        let mut client = self.store.client().clone();
        let mut lease = req.lease;
        let renewed = lease != 0 && renew_once(&mut client, lease).await.map_err(etcd)?;
        if !renewed {
            lease = client
                .lease_grant(FRONTEND_TTL_SECONDS, None)
                .await
                .map_err(etcd)?
                .id();
        }
        let record = serde_json::json!({ "frontend": id, "url": req.url });
        client
            .kv_client()
            .put(
                cluster::frontend_key(self.store.root(), id),
                record.to_string(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd)?;
        let counted = client
            .kv_client()
            .get(
                cluster::frontend_key(self.store.root(), ""),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(etcd)?;
        Ok(pb::RegisterFrontendResponse {
            lease,
            frontends: u32::try_from(counted.count()).unwrap_or(u32::MAX),
        })
    }
}

/// Renews `lease` once; false if etcd no longer has it (expired, or revoked).
async fn renew_once(
    client: &mut etcd_client::Client,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let (mut renewer, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(renewal) => renewal,
        // etcd-client reports a lease it was told is gone as an error of this kind.
        Err(etcd_client::Error::LeaseKeepAliveError(reason)) if reason == "lease not found" => {
            return Ok(false)
        }
        Err(err) => return Err(err),
    };
    renewer.keep_alive().await?;
    Ok(responses
        .message()
        .await?
        .is_some_and(|response| response.ttl() > 0))
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
    async fn get_queue_record(
        &self,
        request: Request<pb::MetaGetQueueRequest>,
    ) -> Result<Response<pb::MetaGetQueueResponse>, Status> {
        observed(
            "GetQueueRecord",
            request,
            |r| r.name.clone(),
            |r| self.get_queue(r),
        )
        .await
    }

    async fn list_queue_records(
        &self,
        request: Request<pb::MetaListQueuesRequest>,
    ) -> Result<Response<pb::MetaListQueuesResponse>, Status> {
        observed(
            "ListQueueRecords",
            request,
            |r| r.prefix.clone(),
            |r| self.list_queues(r),
        )
        .await
    }

    async fn create_queue_record(
        &self,
        request: Request<pb::MetaCreateQueueRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed(
            "CreateQueueRecord",
            request,
            |r| record_name_of(&r.record),
            |r| self.create_queue(r),
        )
        .await
    }

    async fn update_queue_record(
        &self,
        request: Request<pb::MetaUpdateQueueRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed(
            "UpdateQueueRecord",
            request,
            |r| record_name_of(&r.record),
            |r| self.update_queue(r),
        )
        .await
    }

    async fn delete_queue_record(
        &self,
        request: Request<pb::MetaDeleteQueueRequest>,
    ) -> Result<Response<pb::MetaDeleteResponse>, Status> {
        observed(
            "DeleteQueueRecord",
            request,
            |r| r.name.clone(),
            |r| self.delete_queue(r),
        )
        .await
    }

    async fn allocate_queue_ids(
        &self,
        request: Request<pb::MetaAllocateQueueIdsRequest>,
    ) -> Result<Response<pb::MetaAllocateQueueIdsResponse>, Status> {
        observed(
            "AllocateQueueIds",
            request,
            |_| String::new(),
            |r| self.allocate_ids(r),
        )
        .await
    }

    async fn get_placement(
        &self,
        request: Request<pb::MetaGetPlacementRequest>,
    ) -> Result<Response<pb::MetaGetPlacementResponse>, Status> {
        observed(
            "GetPlacement",
            request,
            |_| String::new(),
            |r| self.get_placement(r),
        )
        .await
    }

    async fn delete_placement(
        &self,
        request: Request<pb::MetaDeletePlacementRequest>,
    ) -> Result<Response<pb::MetaDeleteResponse>, Status> {
        observed(
            "DeletePlacement",
            request,
            |_| String::new(),
            |r| self.delete_placement(r),
        )
        .await
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
            |_| String::new(),
            |r| self.get_cluster(r),
        )
        .await
    }

    async fn get_ring(
        &self,
        request: Request<pb::MetaGetRingRequest>,
    ) -> Result<Response<pb::MetaGetRingResponse>, Status> {
        observed(
            "GetRing",
            request,
            |_| String::new(),
            |_| async { Ok(self.ring()) },
        )
        .await
    }

    async fn register_frontend(
        &self,
        request: Request<pb::RegisterFrontendRequest>,
    ) -> Result<Response<pb::RegisterFrontendResponse>, Status> {
        observed(
            "RegisterFrontend",
            request,
            |r| r.frontend.clone(),
            |r| self.register_frontend(r),
        )
        .await
    }

    async fn get_principal(
        &self,
        request: Request<pb::MetaGetPrincipalRequest>,
    ) -> Result<Response<pb::MetaGetPrincipalResponse>, Status> {
        observed(
            "GetPrincipal",
            request,
            |r| r.name.clone(),
            |r| self.get_principal(r),
        )
        .await
    }

    async fn list_principals(
        &self,
        request: Request<pb::MetaListPrincipalsRequest>,
    ) -> Result<Response<pb::MetaListPrincipalsResponse>, Status> {
        observed(
            "ListPrincipals",
            request,
            |_| String::new(),
            |r| self.list_principals(r),
        )
        .await
    }

    async fn put_principal(
        &self,
        request: Request<pb::MetaPutPrincipalRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed(
            "PutPrincipal",
            request,
            |r| {
                r.principal
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default()
            },
            |r| self.put_principal(r),
        )
        .await
    }

    async fn delete_principal(
        &self,
        request: Request<pb::MetaDeletePrincipalRequest>,
    ) -> Result<Response<pb::MetaDeleteResponse>, Status> {
        observed(
            "DeletePrincipal",
            request,
            |r| r.name.clone(),
            |r| self.delete_principal(r),
        )
        .await
    }

    async fn get_access_key(
        &self,
        request: Request<pb::MetaGetAccessKeyRequest>,
    ) -> Result<Response<pb::MetaGetAccessKeyResponse>, Status> {
        observed(
            "GetAccessKey",
            request,
            |r| r.id.clone(),
            |r| self.get_access_key(r),
        )
        .await
    }

    async fn list_access_keys(
        &self,
        request: Request<pb::MetaListAccessKeysRequest>,
    ) -> Result<Response<pb::MetaListAccessKeysResponse>, Status> {
        observed(
            "ListAccessKeys",
            request,
            |r| r.principal.clone(),
            |r| self.list_access_keys(r),
        )
        .await
    }

    async fn put_access_key(
        &self,
        request: Request<pb::MetaPutAccessKeyRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed(
            "PutAccessKey",
            request,
            |r| r.key.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
            |r| self.put_access_key(r),
        )
        .await
    }

    async fn delete_access_key(
        &self,
        request: Request<pb::MetaDeleteAccessKeyRequest>,
    ) -> Result<Response<pb::MetaDeleteResponse>, Status> {
        observed(
            "DeleteAccessKey",
            request,
            |r| r.id.clone(),
            |r| self.delete_access_key(r),
        )
        .await
    }

    async fn get_data_key(
        &self,
        request: Request<pb::MetaGetDataKeyRequest>,
    ) -> Result<Response<pb::MetaGetDataKeyResponse>, Status> {
        observed(
            "GetDataKey",
            request,
            |r| r.queue_id.to_string(),
            |r| self.get_data_key(r),
        )
        .await
    }

    async fn put_data_key(
        &self,
        request: Request<pb::MetaPutDataKeyRequest>,
    ) -> Result<Response<pb::MetaWriteResponse>, Status> {
        observed(
            "PutDataKey",
            request,
            |r| r.queue_id.to_string(),
            |r| self.put_data_key(r),
        )
        .await
    }

    async fn list_data_keys(
        &self,
        request: Request<pb::MetaListDataKeysRequest>,
    ) -> Result<Response<pb::MetaListDataKeysResponse>, Status> {
        observed(
            "ListDataKeys",
            request,
            |_| String::new(),
            |r| self.list_data_keys(r),
        )
        .await
    }

    type WatchIdentityStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::MetaIdentityChange, Status>>;

    async fn watch_identity(
        &self,
        _: Request<pb::MetaWatchIdentityRequest>,
    ) -> Result<Response<Self::WatchIdentityStream>, Status> {
        Ok(Response::new(self.watch_identity(self.closing.clone())))
    }
}

/// The queue a write names, for the RPC span.
fn record_name_of(record: &Option<pb::MetaQueueRecord>) -> String {
    record.as_ref().map(|r| r.name.clone()).unwrap_or_default()
}
