//! The client of the metadata tier. It learns the ring from the nodes (`GetRing`) and sends each
//! keyed request (a queue record, a placement) straight to the key's owner, which answers from
//! its cache; when the owner cannot be reached it falls back to the other nodes, any of which
//! serves the request from etcd. Frontends read and write queue records through it as a
//! [`QueueDirectory`], and read placements and cluster membership with its typed calls.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::Retryable;
use parking_lot::Mutex;
use sluice_api::cluster::{self, Placement};
use sluice_api::identity::Sealed;
use sluice_api::{
    wire, AccessKey, DataKeyDirectory, Error, IdentityDirectory, PlacementDirectory, Principal,
    QueueDirectory, QueueId, QueueRecord, Result, Stored,
};
use sluice_proto::v1 as pb;
use sluice_proto::v1::metadata_service_client::MetadataServiceClient;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::channel::{self, ChannelOptions};
use crate::ring::Ring;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts after the first, each on the next node.
const RETRIES: usize = 4;
/// How long the ring as last read is trusted: a change of membership (a node joining, leaving
/// or dying) reaches this client within this bound, or at once when an owner fails.
const RING_TTL: Duration = Duration::from_secs(2);
/// Queue ids taken from the tier at a time; what a client does not hand out is skipped.
const ID_BLOCK: u32 = 100;

type Client = MetadataServiceClient<Channel>;

pub struct MetadataClient {
    /// The nodes this client was given, which it falls back to.
    seeds: Vec<Client>,
    next: AtomicUsize,
    ring: Ring,
    /// When the ring was last read; `None` forces a read before the next keyed call.
    ring_read: Mutex<Option<Instant>>,
    /// Clients of the ring's members, by URL.
    members: Mutex<HashMap<String, Client>>,
    options: ChannelOptions,
    /// Queue ids taken from the tier and not yet handed out.
    ids: Mutex<Range<u64>>,
}

impl MetadataClient {
    /// A client of the metadata nodes at `urls` (at least one; it finds the others itself).
    pub fn new(urls: &[String]) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::invalid(
                "metadata endpoints",
                "name at least one node",
            ));
        }
        let options = ChannelOptions {
            connect_timeout: Duration::from_secs(1),
            ..ChannelOptions::default()
        };
        let seeds = urls
            .iter()
            .map(|url| channel::channel("metadata endpoint", url, &options).map(Client::new))
            .collect::<Result<_>>()?;
        Ok(MetadataClient {
            seeds,
            next: AtomicUsize::new(0),
            ring: Ring::default(),
            ring_read: Mutex::new(None),
            members: Mutex::new(HashMap::new()),
            options,
            ids: Mutex::new(0..0),
        })
    }

    /// Calls `rpc` on one seed node after another until one answers (UNAVAILABLE and
    /// unreachable nodes are skipped, with a jittered pause between attempts).
    async fn call<Req, Resp, F, Fut>(&self, request: Req, rpc: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Client, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let attempt = || {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.seeds.len();
            once(self.seeds[index].clone(), request.clone(), &rpc)
        };
        let backoff = channel::backoff(Duration::from_millis(10), Duration::from_millis(500))
            .with_max_times(RETRIES);
        attempt
            .retry(backoff)
            .when(|err| matches!(err, Error::Unavailable(_)))
            .await
    }

    /// Calls `rpc` on the owner of `key`; if the owner cannot be reached (or the ring is not
    /// known), on the other nodes as [`call`](Self::call) does, which serve it from etcd.
    async fn keyed<Req, Resp, F, Fut>(&self, key: &str, request: Req, rpc: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Client, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        if let Some(owner) = self.owner(key).await {
            match once(owner, request.clone(), &rpc).await {
                Err(Error::Unavailable(reason)) => {
                    tracing::debug!(key, %reason, "metadata owner unreachable; asking another node");
                    // The membership may have changed: read it again before the next call.
                    *self.ring_read.lock() = None;
                }
                other => return other,
            }
        }
        self.call(request, rpc).await
    }

    /// A client of the owner of `key`, reading the ring first if it is stale; `None` if the
    /// ring cannot be read or is empty.
    async fn owner(&self, key: &str) -> Option<Client> {
        let fresh = self
            .ring_read
            .lock()
            .is_some_and(|at| at.elapsed() < RING_TTL);
        if !fresh {
            // Tried once per TTL whatever the outcome: while no node answers, requests go on
            // with the ring as last read (or to the seeds) instead of each waiting for it.
            *self.ring_read.lock() = Some(Instant::now());
            if let Err(err) = self.read_ring().await {
                tracing::debug!(error = %err, "cannot read the metadata ring");
            }
        }
        let (_, url) = self.ring.owner(key)?;
        let mut members = self.members.lock();
        if let Some(client) = members.get(&url) {
            return Some(client.clone());
        }
        let client = channel::channel("metadata member URL", &url, &self.options)
            .map(Client::new)
            .ok()?;
        members.insert(url, client.clone());
        Some(client)
    }

    /// Reads the ring from the next seed node, once.
    async fn read_ring(&self) -> Result<()> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.seeds.len();
        let ring = once(
            self.seeds[index].clone(),
            pb::MetaGetRingRequest {},
            &|mut c: Client, r| async move { c.get_ring(r).await },
        )
        .await?;
        let members = ring.members.into_iter().map(|m| (m.node, m.url)).collect();
        if members != self.ring.members() {
            self.ring.set_members(members);
        }
        Ok(())
    }

    /// Registers frontend `id` (serving at `url`) or renews its registration under `lease` (0
    /// at first); returns the lease to renew next time and how many frontends are registered.
    pub async fn register_frontend(&self, id: &str, url: &str, lease: i64) -> Result<(i64, u32)> {
        let request = pb::RegisterFrontendRequest {
            frontend: id.to_owned(),
            url: url.to_owned(),
            lease,
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.register_frontend(r).await },
            )
            .await?;
        Ok((response.lease, response.frontends))
    }

    /// How many members the ring had when this client last read it.
    pub fn ring_members(&self) -> usize {
        self.ring.members().len()
    }

    /// The URL of the node that owns queue `name`'s record, as this client last read the ring.
    pub fn owner_of_queue(&self, name: &str) -> Option<String> {
        let (_, url) = self.ring.owner(&cluster::queue_record_key("", name))?;
        Some(url)
    }
}

/// One attempt of `rpc` on `client`, with the request timeout and the trace context.
async fn once<Req, Resp, F, Fut>(client: Client, request: Req, rpc: &F) -> Result<Resp>
where
    F: Fn(Client, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let span = channel::client_span::<Req>("sluice.v1.MetadataService");
    async { rpc(client, channel::request(request, REQUEST_TIMEOUT)).await }
        .instrument(span)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| channel::from_status("metadata node", status))
}

fn write_result(response: pb::MetaWriteResponse) -> Option<u64> {
    response.written.then_some(response.revision)
}

#[async_trait]
impl PlacementDirectory for MetadataClient {
    async fn place(
        &self,
        queue_id: u64,
        queue: &str,
        colocate_with: Option<u64>,
    ) -> Result<String> {
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

    async fn cluster_nodes(&self, cluster: &str) -> Result<Vec<(String, String)>> {
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

    async fn placement(&self, id: QueueId) -> Result<Option<(Placement, u64)>> {
        let request = pb::MetaGetPlacementRequest {
            queue_id: id,
            forwarded: false,
        };
        let response = self
            .keyed(
                &cluster::placement_key("", id),
                request,
                |mut c, r| async move { c.get_placement(r).await },
            )
            .await?;
        Ok(response
            .placement
            .map(|p| (wire::placement_from_pb(p), response.revision)))
    }

    async fn delete_placement(&self, id: QueueId, revision: u64) -> Result<bool> {
        let request = pb::MetaDeletePlacementRequest {
            queue_id: id,
            revision,
            forwarded: false,
        };
        let response = self
            .keyed(
                &cluster::placement_key("", id),
                request,
                |mut c, r| async move { c.delete_placement(r).await },
            )
            .await?;
        Ok(response.deleted)
    }
}

#[async_trait]
impl QueueDirectory for MetadataClient {
    async fn get_queue(&self, name: &str) -> Result<Option<Stored>> {
        let request = pb::MetaGetQueueRequest {
            name: name.to_owned(),
            forwarded: false,
        };
        let response = self
            .keyed(
                &cluster::queue_record_key("", name),
                request,
                |mut c, r| async move { c.get_queue_record(r).await },
            )
            .await?;
        let Some(record) = response.record else {
            return Ok(None);
        };
        // What the tier stores it checked on the way in; a record that fails the checks now
        // was stored by something else and is reported, not used.
        let record = wire::record_from_pb(Some(record)).map_err(|err| {
            Error::Internal(format!(
                "the metadata tier's record of {name:?} is invalid: {err}"
            ))
        })?;
        Ok(Some(Stored {
            record,
            revision: response.revision,
        }))
    }

    async fn list_queues(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let request = pb::MetaListQueuesRequest {
            prefix: prefix.to_owned(),
            start_after: start_after.to_owned(),
            limit: limit.min(u32::MAX as usize) as u32,
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.list_queue_records(r).await },
            )
            .await?;
        Ok(response.names)
    }

    async fn create_queue(&self, record: &QueueRecord) -> Result<Option<u64>> {
        let request = pb::MetaCreateQueueRequest {
            record: Some(wire::record_to_pb(record)),
            forwarded: false,
        };
        let key = cluster::queue_record_key("", &record.name);
        let response = self
            .keyed(&key, request, |mut c, r| async move {
                c.create_queue_record(r).await
            })
            .await?;
        Ok(write_result(response))
    }

    async fn update_queue(&self, record: &QueueRecord, revision: u64) -> Result<Option<u64>> {
        let request = pb::MetaUpdateQueueRequest {
            record: Some(wire::record_to_pb(record)),
            revision,
            forwarded: false,
        };
        let key = cluster::queue_record_key("", &record.name);
        let response = self
            .keyed(&key, request, |mut c, r| async move {
                c.update_queue_record(r).await
            })
            .await?;
        Ok(write_result(response))
    }

    async fn delete_queue(&self, name: &str, revision: u64) -> Result<bool> {
        let request = pb::MetaDeleteQueueRequest {
            name: name.to_owned(),
            revision,
            forwarded: false,
        };
        let response = self
            .keyed(
                &cluster::queue_record_key("", name),
                request,
                |mut c, r| async move { c.delete_queue_record(r).await },
            )
            .await?;
        Ok(response.deleted)
    }

    async fn allocate_queue_id(&self) -> Result<QueueId> {
        if let Some(id) = self.ids.lock().next() {
            return Ok(id);
        }
        let request = pb::MetaAllocateQueueIdsRequest { count: ID_BLOCK };
        let block = self
            .call(
                request,
                |mut c, r| async move { c.allocate_queue_ids(r).await },
            )
            .await?;
        if block.first == 0 || block.count == 0 {
            return Err(Error::Internal(
                "the metadata tier handed out no queue ids".into(),
            ));
        }
        let mut ids = self.ids.lock();
        // Another caller may have taken a block meanwhile; keep whichever, skip the other.
        *ids = block.first..block.first + u64::from(block.count);
        Ok(ids.next().expect("a block holds at least one id"))
    }
}

/// What the tier sends back it checked on the way in; a record that fails the checks now was
/// stored by something else and is reported, not trusted.
fn stored<T>(what: &str, checked: Result<T>) -> Result<T> {
    checked.map_err(|err| Error::Internal(format!("the metadata tier's {what} is invalid: {err}")))
}

fn limit(limit: usize) -> u32 {
    limit.min(u32::MAX as usize) as u32
}

#[async_trait]
impl IdentityDirectory for MetadataClient {
    async fn principal(&self, name: &str) -> Result<Option<(Principal, u64)>> {
        let request = pb::MetaGetPrincipalRequest {
            name: name.to_owned(),
        };
        let response = self
            .call(request, |mut c, r| async move { c.get_principal(r).await })
            .await?;
        let Some(principal) = response.principal else {
            return Ok(None);
        };
        let principal = stored("principal", wire::principal_from_pb(Some(principal)))?;
        Ok(Some((principal, response.revision)))
    }

    async fn principals(&self, start_after: &str, limit_to: usize) -> Result<Vec<Principal>> {
        let request = pb::MetaListPrincipalsRequest {
            start_after: start_after.to_owned(),
            limit: limit(limit_to),
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.list_principals(r).await },
            )
            .await?;
        response
            .principals
            .into_iter()
            .map(|p| stored("principal", wire::principal_from_pb(Some(p))))
            .collect()
    }

    async fn put_principal(
        &self,
        principal: &Principal,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let request = pb::MetaPutPrincipalRequest {
            principal: Some(wire::principal_to_pb(principal)),
            revision: revision.unwrap_or(0),
        };
        let response = self
            .call(request, |mut c, r| async move { c.put_principal(r).await })
            .await?;
        Ok(write_result(response))
    }

    async fn delete_principal(&self, name: &str, revision: u64) -> Result<bool> {
        let request = pb::MetaDeletePrincipalRequest {
            name: name.to_owned(),
            revision,
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.delete_principal(r).await },
            )
            .await?;
        Ok(response.deleted)
    }

    async fn access_key(&self, id: &str) -> Result<Option<(AccessKey, u64)>> {
        let request = pb::MetaGetAccessKeyRequest { id: id.to_owned() };
        let response = self
            .call(request, |mut c, r| async move { c.get_access_key(r).await })
            .await?;
        let Some(key) = response.key else {
            return Ok(None);
        };
        let key = stored("access key", wire::access_key_from_pb(Some(key)))?;
        Ok(Some((key, response.revision)))
    }

    async fn access_keys(
        &self,
        principal: Option<&str>,
        start_after: &str,
        limit_to: usize,
    ) -> Result<Vec<AccessKey>> {
        let request = pb::MetaListAccessKeysRequest {
            principal: principal.unwrap_or_default().to_owned(),
            start_after: start_after.to_owned(),
            limit: limit(limit_to),
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.list_access_keys(r).await },
            )
            .await?;
        response
            .keys
            .into_iter()
            .map(|k| stored("access key", wire::access_key_from_pb(Some(k))))
            .collect()
    }

    async fn put_access_key(&self, key: &AccessKey, revision: Option<u64>) -> Result<Option<u64>> {
        let request = pb::MetaPutAccessKeyRequest {
            key: Some(wire::access_key_to_pb(key)),
            revision: revision.unwrap_or(0),
        };
        let response = self
            .call(request, |mut c, r| async move { c.put_access_key(r).await })
            .await?;
        Ok(write_result(response))
    }

    async fn delete_access_key(&self, id: &str, revision: u64) -> Result<bool> {
        let request = pb::MetaDeleteAccessKeyRequest {
            id: id.to_owned(),
            revision,
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.delete_access_key(r).await },
            )
            .await?;
        Ok(response.deleted)
    }
}

impl MetadataClient {
    /// Changes to principals and access keys from now on, from the next node: a reset first,
    /// then each change. No timeout: it lasts until either side ends it.
    pub async fn watch_identity(&self) -> Result<tonic::Streaming<pb::MetaIdentityChange>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.seeds.len();
        let mut client = self.seeds[index].clone();
        let mut request = tonic::Request::new(pb::MetaWatchIdentityRequest {});
        sluice_common::telemetry::inject_trace(request.metadata_mut());
        client
            .watch_identity(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| channel::from_status("metadata node", status))
    }
}

#[async_trait]
impl DataKeyDirectory for MetadataClient {
    async fn data_key(&self, id: QueueId) -> Result<Option<(Sealed, u64)>> {
        let request = pb::MetaGetDataKeyRequest { queue_id: id };
        let response = self
            .call(request, |mut c, r| async move { c.get_data_key(r).await })
            .await?;
        if response.key.is_none() {
            return Ok(None);
        }
        let key = stored("data key", wire::sealed_from_pb("key", response.key))?;
        Ok(Some((key, response.revision)))
    }

    async fn put_data_key(
        &self,
        id: QueueId,
        key: &Sealed,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let request = pb::MetaPutDataKeyRequest {
            queue_id: id,
            key: Some(wire::sealed_to_pb(key)),
            revision: revision.unwrap_or(0),
        };
        let response = self
            .call(request, |mut c, r| async move { c.put_data_key(r).await })
            .await?;
        Ok(write_result(response))
    }

    async fn data_keys(
        &self,
        after: QueueId,
        limit_to: usize,
    ) -> Result<Vec<(QueueId, Sealed, u64)>> {
        let request = pb::MetaListDataKeysRequest {
            after,
            limit: limit(limit_to),
        };
        let response = self
            .call(request, |mut c, r| async move { c.list_data_keys(r).await })
            .await?;
        response
            .keys
            .into_iter()
            .map(|k| {
                let key = stored("data key", wire::sealed_from_pb("key", k.key))?;
                Ok((k.queue_id, key, k.revision))
            })
            .collect()
    }
}
