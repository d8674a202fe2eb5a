//! Moving a queue to another backend cluster by hand (DESIGN section 7). Nothing is copied
//! under traffic: the active partition is sealed (it takes no more sends), the next partition
//! opens on the target cluster and continues the sequence numbers, frontends send there from
//! then on and keep receiving from the sealed one until consumers have drained it, and the
//! leader removes the sealed partition once it is empty.
//!
//! The intent goes into the placement first (`moving_to`) and every later step can be done
//! twice, so a leader that dies halfway leaves the move for the next leader to finish. Every
//! placement write is fenced by the leadership and made against the revision it read.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use sluice_api::cluster::{self, NodeRecord, Placement, SealedPartition};
use sluice_api::{Error, QueueBackend, QueueConfig, QueueRecord, Replication, Result};
use sluice_client::{BackendClient, BackendClientOptions};
use sluice_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::service::{etcd, ManagerServiceImpl};

impl ManagerServiceImpl {
    /// The id of queue `name`, from its record in etcd.
    async fn queue_id(&self, name: &str) -> Result<u64> {
        Ok(self.queue_record(name).await?.id)
    }

    /// What a new partition of queue `name` is created with, from its record in etcd. A queue
    /// linked to a dead-letter queue cannot spread: messages move to it inside one cluster.
    pub(crate) async fn partition_config(&self, name: &str) -> Result<QueueConfig> {
        let record = self.queue_record(name).await?;
        let attributes = &record.attributes;
        if let Some(policy) = &attributes.redrive_policy {
            return Err(Error::FailedPrecondition(format!(
                "queue {name} has the dead-letter queue {}; a queue spreads over clusters only \
                 without one",
                policy.dead_letter_queue
            )));
        }
        Ok(QueueConfig {
            name: record.name.clone(),
            retention: Duration::from_secs(attributes.message_retention_seconds.into()),
            fifo: attributes.fifo,
            dead_letter: None,
            replication: Replication::from_async(
                attributes.replication == pb::Replication::Async as i32,
            ),
        })
    }

    async fn queue_record(&self, name: &str) -> Result<QueueRecord> {
        sluice_api::limits::queue_name("queue", name)?;
        let key = cluster::queue_record_key(&self.root, name);
        let got = self
            .client
            .kv_client()
            .get(key.clone(), None)
            .await
            .map_err(etcd)?;
        let kv = got
            .kvs()
            .first()
            .ok_or_else(|| Error::not_found(format!("queue {name:?}")))?;
        QueueRecord::decode(&key, kv.value())
    }

    /// The queue's placement and the revision it was read at.
    pub(crate) async fn read_placement(&self, id: u64) -> Result<Option<(Placement, i64)>> {
        let key = cluster::placement_key(&self.root, id);
        let got = self
            .client
            .kv_client()
            .get(key.clone(), None)
            .await
            .map_err(etcd)?;
        got.kvs()
            .first()
            .map(|kv| {
                serde_json::from_slice(kv.value())
                    .map(|placement| (placement, kv.mod_revision()))
                    .map_err(|err| Error::Internal(format!("placement {key} is corrupt: {err}")))
            })
            .transpose()
    }

    /// Replaces the placement read at `revision`; false if it changed since (or was deleted
    /// with its queue). Fails if this manager no longer leads.
    pub(crate) async fn write_placement(
        &self,
        id: u64,
        placement: &Placement,
        revision: i64,
    ) -> Result<bool> {
        let fence = self
            .leadership
            .fence()
            .ok_or_else(|| Error::Unavailable("lost the manager leadership; retry".into()))?;
        let key = cluster::placement_key(&self.root, id);
        let value = serde_json::to_vec(placement).expect("a placement serializes");
        let index = cluster::move_key(&self.root, id);
        let index = if placement.unsettled() {
            TxnOp::put(index, "", None)
        } else {
            TxnOp::delete(index, None)
        };
        let txn = Txn::new()
            .when([
                fence.clone(),
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
            ])
            .and_then([TxnOp::put(key, value, None), index]);
        let written = self.client.kv_client().txn(txn).await.map_err(etcd)?;
        if written.succeeded() {
            return Ok(true);
        }
        if self.leadership.fence().is_none() {
            return Err(Error::Unavailable(
                "lost the manager leadership; retry".into(),
            ));
        }
        Ok(false)
    }

    /// A client of a live node of `cluster`.
    pub(crate) async fn backend(&self, cluster_name: &str) -> Result<BackendClient> {
        let prefix = format!("{}clusters/{cluster_name}/nodes/", self.root);
        let listed = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd)?;
        let node: NodeRecord = listed
            .kvs()
            .iter()
            .find_map(|kv| serde_json::from_slice(kv.value()).ok())
            .ok_or_else(|| {
                Error::Unavailable(format!("backend cluster {cluster_name} has no live node"))
            })?;
        let mut backends = self.backends.lock();
        if let Some(backend) = backends.get(&node.url) {
            return Ok(backend.clone());
        }
        let backend = BackendClient::new(&node.url, BackendClientOptions::default())?;
        backends.insert(node.url, backend.clone());
        Ok(backend)
    }

    /// Moves queue `name` so that its sends go to `target` (the leader's side of MoveQueue).
    pub(crate) async fn move_queue(&self, name: &str, target: &str) -> Result<pb::QueuePlacement> {
        if target.is_empty() {
            return Err(Error::invalid("cluster", "must name a backend cluster"));
        }
        let id = self.queue_id(name).await?;
        self.fleet.ready().await?;
        let clusters = self.fleet.clusters(self.stale_after);
        match clusters.iter().find(|c| c.name == target) {
            None => return Err(Error::not_found(format!("backend cluster {target:?}"))),
            Some(c) if c.nodes.is_empty() => {
                return Err(Error::FailedPrecondition(format!(
                    "backend cluster {target} has no live node"
                )))
            }
            Some(_) => {}
        }
        loop {
            let (mut placement, revision) = self
                .read_placement(id)
                .await?
                .ok_or_else(|| Error::not_found(format!("placement of queue {name:?}")))?;
            if placement.cluster == target && placement.moving_to.is_none() {
                return self.describe(name, id, &placement).await;
            }
            if let Some(moving_to) = placement.moving_to.as_deref() {
                if moving_to != target {
                    return Err(Error::FailedPrecondition(format!(
                        "queue {name} is already moving to cluster {moving_to}"
                    )));
                }
            } else {
                if placement.spread.len() + usize::from(placement.resize.is_some()) > 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "queue {name} is spread over several backend clusters; the manager \
                         retires its partitions when it cools, and it can move once it has one"
                    )));
                }
                let next =
                    cluster::storage_id(id, placement.next_partition(), placement.spread_from);
                if next == id && placement.holds_queue_id_on(id, target) {
                    return Err(Error::FailedPrecondition(format!(
                        "queue {name} still has a sealed partition on cluster {target}; move it \
                         there again once that partition is drained (sluice admin placement {name})"
                    )));
                }
                placement.moving_to = Some(target.to_owned());
                if !self.write_placement(id, &placement, revision).await? {
                    continue;
                }
            }
            let placement = self.finish_move(id).await?;
            return self.describe(name, id, &placement).await;
        }
    }

    /// Carries out the move the placement of queue `id` records in `moving_to`: seals the
    /// active partition, opens the next one on the target, and makes it the active one. A move
    /// the old partition refuses (a queue linked by a dead-letter policy) is called off.
    async fn finish_move(&self, id: u64) -> Result<Placement> {
        loop {
            let Some((mut placement, revision)) = self.read_placement(id).await? else {
                return Err(Error::not_found("queue (deleted while moving)"));
            };
            let Some(target) = placement.moving_to.clone() else {
                return Ok(placement);
            };
            let old = self.backend(&placement.cluster).await?;
            let storage = cluster::storage_id(id, placement.partition, placement.spread_from);
            let (config, next_sequence) = match old.seal(storage).await {
                Ok(sealed) => sealed,
                Err(refused @ Error::FailedPrecondition(_)) => {
                    placement.moving_to = None;
                    self.write_placement(id, &placement, revision).await?;
                    return Err(refused);
                }
                Err(err) => return Err(err),
            };
            let next = placement.next_partition();
            self.backend(&target)
                .await?
                .create_partition(
                    cluster::storage_id(id, next, placement.spread_from),
                    &config,
                    next_sequence,
                )
                .await?;
            let sealed = SealedPartition {
                partition: placement.partition,
                cluster: std::mem::replace(&mut placement.cluster, target.clone()),
                sealed_at_ms: sluice_api::now_ms(),
                fifo: config.fifo,
            };
            placement.sealed.push(sealed);
            placement.partition = next;
            placement.moving_to = None;
            placement.moved_at_ms = Some(sluice_api::now_ms());
            if self.write_placement(id, &placement, revision).await? {
                metrics::MOVES.with_label_values(&["sealed"]).inc();
                tracing::info!(queue = %placement.queue, queue_id = id, cluster = %target, partition = placement.partition, "queue moved; its old partition drains");
                return Ok(placement);
            }
        }
    }

    /// Removes sealed partitions of queue `id` that consumers have emptied: drops the queue on
    /// the old cluster, then takes the partition out of the placement. A partition already
    /// dropped (a leader died in between) is taken out too.
    async fn remove_drained(&self, id: u64, placement: &Placement) -> Result<()> {
        let now = sluice_api::now_ms();
        for partition in &placement.sealed {
            let backend = self.backend(&partition.cluster).await?;
            let storage = cluster::storage_id(id, partition.partition, placement.spread_from);
            // A retired partition is sealed after the placement says so (frontends stop
            // sending to it first); sealing again changes nothing.
            match backend.seal(storage).await {
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
            let empty = match backend.counts(storage).await {
                Ok(counts) => counts.visible + counts.in_flight + counts.delayed == 0,
                Err(Error::NotFound { .. }) => true,
                Err(err) => return Err(err),
            };
            // Kept a while when empty: its deduplication ids answer a client's retry.
            if !empty || now.saturating_sub(partition.sealed_at_ms) < self.sealed_keep_ms {
                continue;
            }
            // Sealed, so nothing new arrives. A send that got in just before the seal and is
            // still being written fails with NOT_FOUND once the queue is dropped: its sender
            // was never told it was stored.
            backend.delete_queue(storage).await?;
            loop {
                let Some((mut current, revision)) = self.read_placement(id).await? else {
                    return Ok(());
                };
                current
                    .sealed
                    .retain(|p| p.partition != partition.partition);
                if self.write_placement(id, &current, revision).await? {
                    metrics::MOVES.with_label_values(&["removed"]).inc();
                    tracing::info!(queue = %current.queue, queue_id = id, cluster = %partition.cluster, partition = partition.partition, "drained partition removed");
                    break;
                }
            }
        }
        Ok(())
    }

    /// One pass of the leader over the queues with moves under way: finishes interrupted
    /// moves and removes drained partitions.
    pub(crate) async fn reconcile(&self) -> Result<()> {
        let mut kv = self.client.kv_client();
        let listed = kv
            .get(
                cluster::moves_prefix(&self.root),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(etcd)?;
        let mut draining = 0;
        for entry in listed.kvs() {
            let Some(id) = entry
                .key_str()
                .ok()
                .and_then(|key| key.rsplit('/').next())
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            let step = async {
                let Some((placement, _)) = self.read_placement(id).await? else {
                    // The queue was deleted; its partitions went with it.
                    kv.clone().delete(entry.key(), None).await.map_err(etcd)?;
                    return Ok(0);
                };
                let placement = if placement.moving_to.is_some() {
                    self.finish_move(id).await?
                } else if placement.resize.is_some() {
                    self.finish_resize(id).await?
                } else {
                    placement
                };
                self.remove_drained(id, &placement).await?;
                Ok::<_, Error>(placement.sealed.len())
            };
            match step.await {
                Ok(sealed) => draining += sealed,
                Err(err) => {
                    tracing::warn!(queue_id = id, error = %err, "cannot advance the queue's move; trying again later")
                }
            }
        }
        metrics::SEALED_PARTITIONS.set(draining as i64);
        Ok(())
    }

    /// Where queue `name`'s partitions are, with each one's counts.
    pub(crate) async fn placement_of(&self, name: &str) -> Result<pb::QueuePlacement> {
        let id = self.queue_id(name).await?;
        let (placement, _) = self
            .read_placement(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("placement of queue {name:?}")))?;
        self.describe(name, id, &placement).await
    }

    async fn describe(
        &self,
        name: &str,
        id: u64,
        placement: &Placement,
    ) -> Result<pb::QueuePlacement> {
        let mut partitions = Vec::with_capacity(1 + placement.sealed.len());
        for route in placement
            .active(id)
            .into_iter()
            .chain(placement.sealed_routes(id))
        {
            let (partition, cluster_name, sealed) = (route.partition, route.cluster, route.sealed);
            let counts = match self.backend(cluster_name).await {
                Ok(backend) => backend.counts(route.storage).await,
                Err(err) => Err(err),
            };
            let (counts, error) = match counts {
                Ok(c) => (
                    Some(pb::QueueCounts {
                        visible: c.visible,
                        in_flight: c.in_flight,
                        delayed: c.delayed,
                    }),
                    String::new(),
                ),
                Err(err) => (None, err.to_string()),
            };
            partitions.push(pb::PartitionInfo {
                partition,
                cluster: cluster_name.to_owned(),
                sealed,
                counts,
                error,
                weight: route.weight,
            });
        }
        Ok(pb::QueuePlacement {
            queue: name.to_owned(),
            queue_id: id,
            partitions,
            moving_to: placement.moving_to.clone().unwrap_or_default(),
        })
    }
}

/// While this manager leads, advances every move once per `interval`, until `shutdown`.
pub(crate) async fn run(
    service: ManagerServiceImpl,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut viewed: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if service.leadership.fence().is_none() {
            metrics::forget_leader_view();
            continue;
        }
        if let Err(err) = service.reconcile().await {
            tracing::warn!(error = %err, "cannot read the placements to advance moves");
        }
        // The utilization gauges: a dashboard's view of what placement decides on.
        if viewed.is_none_or(|at| at.elapsed() >= VIEW_EVERY) && service.fleet.ready().await.is_ok()
        {
            viewed = Some(std::time::Instant::now());
            let clusters = service.fleet.clusters(service.stale_after);
            metrics::export_clusters(&clusters, &service.limits, &service.score);
        }
    }
}

/// How often the leader exports the clusters' utilization.
const VIEW_EVERY: Duration = Duration::from_secs(5);
