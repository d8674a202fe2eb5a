//! Changing a queue's active partitions (docs/placement.md). The leader writes its decision
//! into the placement (`resize`) first and every later step can be done twice, so a leader
//! that dies halfway leaves the change for the next leader to finish, as with a move.
//!
//! - A standard queue gains a partition by creating it on the new cluster and listing it as
//!   active. It retires one by listing it as sealed, so frontends stop sending to it, and then
//!   sealing it; consumers drain it and the leader removes it as it removes a moved queue's old
//!   partition.
//! - A FIFO queue keeps each message group on one partition, and which partition a group goes
//!   to changes with the set of partitions. So a FIFO queue's change seals every active
//!   partition and opens a new set, whose messages are delivered once the sealed ones are
//!   drained: each group's order holds across the change, as across a move.

use sluice_api::cluster::{self, Placement, Resize, SealedPartition, SpreadPartition};
use sluice_api::{Error, QueueConfig, Result};

use crate::metrics;
use crate::service::ManagerServiceImpl;

impl ManagerServiceImpl {
    /// Records the decision to change queue `id`'s partitions, then carries it out.
    pub(crate) async fn resize(&self, id: u64, change: Resize) -> Result<Placement> {
        loop {
            let (mut placement, revision) = self
                .read_placement(id)
                .await?
                .ok_or_else(|| Error::not_found(format!("placement of queue id {id}")))?;
            if placement.moving_to.is_some() || placement.resize.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "queue {} is already moving or changing its partitions",
                    placement.queue
                )));
            }
            match &change {
                Resize::Add(to) if placement.active(id).iter().any(|r| r.cluster == to) => {
                    return Err(Error::FailedPrecondition(format!(
                        "queue {} already has an active partition on cluster {to}",
                        placement.queue
                    )));
                }
                Resize::Retire(partition)
                    if !placement.spread.iter().any(|p| p.partition == *partition) =>
                {
                    return Err(Error::FailedPrecondition(format!(
                        "partition {partition} of queue {} is not one it spread to",
                        placement.queue
                    )));
                }
                _ => {}
            }
            placement.resize = Some(change.clone());
            if self.write_placement(id, &placement, revision).await? {
                break;
            }
        }
        self.finish_resize(id).await
    }

    /// Carries out the change the placement of queue `id` records in `resize`. A change the
    /// queue cannot take (it has a dead-letter queue, or is one) is called off.
    pub(crate) async fn finish_resize(&self, id: u64) -> Result<Placement> {
        loop {
            let Some((mut placement, revision)) = self.read_placement(id).await? else {
                return Err(Error::not_found(
                    "queue (deleted while changing its partitions)",
                ));
            };
            let Some(change) = placement.resize.clone() else {
                return Ok(placement);
            };
            let outcome = match self.partition_config(&placement.queue).await {
                Ok(config) if config.fifo => {
                    self.regroup(id, &mut placement, &change, &config).await
                }
                Ok(config) => self.respread(id, &mut placement, &change, &config).await,
                Err(err) => Err(err),
            };
            if let Err(refused @ Error::FailedPrecondition(_)) = outcome {
                placement = self
                    .read_placement(id)
                    .await?
                    .map(|(p, _)| p)
                    .unwrap_or(placement);
                placement.resize = None;
                // Against the revision read first: anything written since is left alone.
                self.write_placement(id, &placement, revision).await?;
                return Err(refused);
            }
            let retired = outcome?;
            placement.resize = None;
            placement.moved_at_ms = Some(sluice_api::now_ms());
            if !self.write_placement(id, &placement, revision).await? {
                continue;
            }
            let (step, partitions) = match change {
                Resize::Add(_) => ("added", placement.active(id).len()),
                Resize::Retire(_) => ("retired", placement.active(id).len()),
            };
            metrics::SPREAD_CHANGES.with_label_values(&[step]).inc();
            tracing::info!(queue = %placement.queue, queue_id = id, ?change, partitions, "queue partitions changed");
            // Sealed now rather than on the leader's next pass; a failure here is repaired
            // there.
            if let Some((cluster_name, storage)) = retired {
                match self.backend(&cluster_name).await {
                    Ok(backend) => {
                        if let Err(err) = backend.seal(storage).await {
                            tracing::warn!(queue_id = id, cluster = %cluster_name, error = %err, "cannot seal a retired partition yet");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(queue_id = id, cluster = %cluster_name, error = %err, "cannot seal a retired partition yet")
                    }
                }
            }
            return Ok(placement);
        }
    }

    /// A standard queue's change: opens the new partition, or lists the retired one as sealed.
    /// Returns the retired partition's cluster and storage id, to seal once the placement is
    /// written.
    async fn respread(
        &self,
        id: u64,
        placement: &mut Placement,
        change: &Resize,
        config: &QueueConfig,
    ) -> Result<Option<(String, u64)>> {
        let now = sluice_api::now_ms();
        let spread_from = *placement
            .spread_from
            .get_or_insert(placement.next_partition());
        match change {
            Resize::Add(to) => {
                let partition = placement.next_partition();
                let storage = cluster::storage_id(id, partition, Some(spread_from));
                self.backend(to)
                    .await?
                    .create_partition(storage, config, 1)
                    .await?;
                placement.spread.push(SpreadPartition {
                    partition,
                    cluster: to.clone(),
                    weight: 1.0,
                    opened_at_ms: now,
                });
                Ok(None)
            }
            Resize::Retire(partition) => {
                let Some(at) = placement
                    .spread
                    .iter()
                    .position(|p| p.partition == *partition)
                else {
                    return Ok(None);
                };
                let retired = placement.spread.remove(at);
                placement.sealed.push(SealedPartition {
                    partition: retired.partition,
                    cluster: retired.cluster.clone(),
                    sealed_at_ms: now,
                    fifo: false,
                });
                let storage = cluster::storage_id(id, retired.partition, Some(spread_from));
                Ok(Some((retired.cluster, storage)))
            }
        }
    }

    /// A FIFO queue's change: seals every active partition and opens the new set after them,
    /// continuing their sequence numbers.
    async fn regroup(
        &self,
        id: u64,
        placement: &mut Placement,
        change: &Resize,
        config: &QueueConfig,
    ) -> Result<Option<(String, u64)>> {
        let now = sluice_api::now_ms();
        let active: Vec<(u32, String, u64)> = placement
            .active(id)
            .iter()
            .map(|r| (r.partition, r.cluster.to_owned(), r.storage))
            .collect();
        let mut clusters: Vec<String> = active.iter().map(|(_, c, _)| c.clone()).collect();
        match change {
            Resize::Add(to) => clusters.push(to.clone()),
            Resize::Retire(partition) => {
                let gone = active.iter().position(|(p, _, _)| p == partition);
                if let Some(gone) = gone {
                    clusters.remove(gone);
                }
            }
        }
        // The first partition first: it alone may be a dead-letter queue, which refuses the
        // seal before anything else is sealed.
        let mut next_sequence = 1;
        for (_, cluster_name, storage) in &active {
            let (_, next) = self.backend(cluster_name).await?.seal(*storage).await?;
            next_sequence = next_sequence.max(next);
        }
        let first = placement.next_partition();
        let spread_from = *placement.spread_from.get_or_insert(first);
        for (k, cluster_name) in clusters.iter().enumerate() {
            let storage = cluster::storage_id(id, first + k as u32, Some(spread_from));
            self.backend(cluster_name)
                .await?
                .create_partition(storage, config, next_sequence)
                .await?;
        }
        for (partition, cluster_name, _) in active {
            placement.sealed.push(SealedPartition {
                partition,
                cluster: cluster_name,
                sealed_at_ms: now,
                fifo: true,
            });
        }
        let mut clusters = clusters.into_iter();
        placement.cluster = clusters.next().ok_or_else(|| {
            Error::Internal("a FIFO queue's new set of partitions is empty".into())
        })?;
        placement.partition = first;
        placement.weight = None;
        placement.spread = clusters
            .enumerate()
            .map(|(k, cluster)| SpreadPartition {
                partition: first + 1 + k as u32,
                cluster,
                weight: 1.0,
                opened_at_ms: now,
            })
            .collect();
        Ok(None)
    }

    /// Writes new weights for queue `id`'s active partitions, if its placement is still the
    /// one they were worked out on.
    pub(crate) async fn reweigh(&self, id: u64, weights: &[(u32, f64)]) -> Result<()> {
        let Some((mut placement, revision)) = self.read_placement(id).await? else {
            return Ok(());
        };
        for (partition, weight) in weights {
            if *partition == placement.partition {
                placement.weight = Some(*weight);
            }
            if let Some(p) = placement
                .spread
                .iter_mut()
                .find(|p| p.partition == *partition)
            {
                p.weight = *weight;
            }
        }
        self.write_placement(id, &placement, revision).await?;
        Ok(())
    }
}
