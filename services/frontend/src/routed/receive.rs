//! Receives through the routed backend: from sealed partitions first (a FIFO queue's
//! generation by generation), then from the active ones, in turn and with one long poll over
//! all of them when the queue spreads over clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_api::cluster::{Placement, Route};
use sluice_api::{Error, QueueCounts, QueueId, ReceivedMessage, Result};

use super::{tag, RoutedBackend};

impl RoutedBackend {
    /// Receives from one partition.
    async fn receive_from(
        &self,
        route: &Route<'_>,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        // A long poll is slow on purpose: its bulkhead bounds it, not the cluster's cap.
        let (node, _slot) = if wait.is_zero() {
            let (node, slot) = self.on(route.cluster).await?;
            (node, Some(slot))
        } else {
            (self.node(route.cluster).await?, None)
        };
        Ok(tagged(
            route.partition,
            node.receive(route.storage, max, visibility, wait).await?,
        ))
    }

    /// What a partition holds; nothing if it is sealed and gone (drained and removed since the
    /// placement was read).
    pub(super) async fn partition_counts(&self, route: &Route<'_>) -> Result<QueueCounts> {
        let (node, _slot) = self.on(route.cluster).await?;
        match node.counts(route.storage).await {
            Err(Error::NotFound { .. }) if route.sealed => Ok(QueueCounts::default()),
            other => other,
        }
    }

    /// Receives from the active partitions of a spread queue: each in turn without waiting,
    /// starting from a different one each call so that no partition is drained before the
    /// others; then, if none had a message and the caller waits, a long poll on all of them at
    /// once, answered by the first that gets a message.
    async fn receive_spread(
        &self,
        id: QueueId,
        routes: &[Route<'_>],
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut got = Vec::new();
        let (mut failures, mut failed) = (0, None);
        for k in 0..routes.len() {
            let route = &routes[(start + k) % routes.len()];
            match self
                .receive_from(route, max - got.len(), visibility, Duration::ZERO)
                .await
            {
                Ok(messages) => got.extend(messages),
                Err(err) => {
                    if matches!(err, Error::NotFound { .. }) {
                        self.placements.expire(&id);
                    }
                    // One cluster out of reach does not stop the others' messages.
                    tracing::debug!(queue_id = id, cluster = %route.cluster, error = %err, "cannot receive from a partition");
                    failures += 1;
                    failed = Some(err);
                }
            }
            if got.len() >= max {
                break;
            }
        }
        if let Some(err) = failed.filter(|_| failures == routes.len()) {
            return Err(err);
        }
        if !got.is_empty() || wait.is_zero() {
            return Ok(got);
        }
        let mut polls = Vec::with_capacity(routes.len());
        for route in routes {
            let node = self.node(route.cluster).await?;
            let (storage, partition) = (route.storage, route.partition);
            polls.push(Box::pin(async move {
                let got = node.receive(storage, max, visibility, wait).await;
                (node, storage, partition, got)
            }));
        }
        let (mut failures, mut failed) = (0, None);
        while !polls.is_empty() {
            let ((_, _, partition, got), _, rest) = futures::future::select_all(polls).await;
            polls = rest;
            match got {
                Ok(messages) if !messages.is_empty() => {
                    // The polls still waiting are not cancelled: one may have taken messages
                    // and be writing that down, and cancelled then it would leave them in
                    // flight until their visibility timeout, holding their FIFO groups. They
                    // run to their end, and what they take is made visible again at once.
                    if !polls.is_empty() {
                        tokio::spawn(async move {
                            for (node, storage, _, got) in futures::future::join_all(polls).await {
                                let Ok(late) = got else { continue };
                                if late.is_empty() {
                                    continue;
                                }
                                let released = late
                                    .into_iter()
                                    .map(|m| (m.receipt_handle, Duration::ZERO))
                                    .collect();
                                if let Err(err) = node.change_visibility(storage, released).await {
                                    tracing::warn!(queue_id = id, error = %err, "cannot make messages a late long poll took visible again; they return when their visibility timeout ends");
                                }
                            }
                        });
                    }
                    return Ok(tagged(partition, messages));
                }
                Ok(_) => {}
                Err(err) => {
                    failures += 1;
                    failed = Some(err);
                }
            }
        }
        match failed.filter(|_| failures == routes.len()) {
            Some(err) => Err(err),
            None => Ok(Vec::new()),
        }
    }

    /// Receives from `placement`'s partitions: the sealed ones first; a FIFO queue holds its
    /// active partition back while a sealed one still holds messages.
    pub(super) async fn receive_on(
        &self,
        id: QueueId,
        placement: &Placement,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        if placement.sealed.iter().any(|p| p.fifo) {
            return self
                .receive_fifo(id, placement, max, visibility, wait)
                .await;
        }
        let sealed: Vec<Route<'_>> = placement.sealed_routes(id).collect();
        let got = self
            .receive_each(id, &sealed, max, visibility, false)
            .await?;
        if !got.is_empty() {
            return Ok(got);
        }
        self.receive_active(id, placement, max, visibility, wait)
            .await
    }

    /// Receives from `routes` in turn without waiting, up to `max` in all. A sealed partition
    /// gone since the placement was read gives nothing. Another error is the answer if
    /// `strict` (a FIFO queue must not skip a partition, or its groups would go out of order);
    /// otherwise it is logged and the partition passed over.
    async fn receive_each(
        &self,
        id: QueueId,
        routes: &[Route<'_>],
        max: usize,
        visibility: Duration,
        strict: bool,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut got = Vec::new();
        for route in routes {
            match self
                .receive_from(route, max - got.len(), visibility, Duration::ZERO)
                .await
            {
                Ok(messages) => got.extend(messages),
                Err(Error::NotFound { .. }) if route.sealed => self.placements.expire(&id),
                Err(err) if strict => return Err(err),
                Err(err) => {
                    tracing::warn!(queue_id = id, cluster = %route.cluster, error = %err, "cannot receive from a sealed partition; receiving from the others")
                }
            }
            if got.len() >= max {
                break;
            }
        }
        Ok(got)
    }

    /// Receives from a FIFO queue with sealed partitions. Partitions sealed together (by one
    /// move or one change of partitions) are a generation; every message of a generation was
    /// sent before any of the next, so each generation is drained before the next one, and
    /// the active partitions come last. A partition must not be skipped, or its groups would
    /// go out of order: an error is the answer.
    async fn receive_fifo(
        &self,
        id: QueueId,
        placement: &Placement,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut generations: BTreeMap<u64, Vec<Route<'_>>> = BTreeMap::new();
        for (route, sealed) in placement.sealed_routes(id).zip(&placement.sealed) {
            generations
                .entry(sealed.sealed_at_ms)
                .or_default()
                .push(route);
        }
        for routes in generations.values() {
            let got = self.receive_each(id, routes, max, visibility, true).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            // Messages in flight (or delayed) hold their groups in this generation: wait on it.
            for route in routes {
                if total(&self.partition_counts(route).await?) > 0 {
                    return self.receive_from(route, max, visibility, wait).await;
                }
            }
        }
        self.receive_active(id, placement, max, visibility, wait)
            .await
    }

    async fn receive_active(
        &self,
        id: QueueId,
        placement: &Placement,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        match placement.active(id).as_slice() {
            [route] => self.receive_from(route, max, visibility, wait).await,
            routes => self.receive_spread(id, routes, max, visibility, wait).await,
        }
    }
}

fn tagged(partition: u32, messages: Vec<ReceivedMessage>) -> Vec<ReceivedMessage> {
    if partition == 0 {
        return messages;
    }
    messages
        .into_iter()
        .map(|mut m| {
            m.receipt_handle = tag(partition, std::mem::take(&mut m.receipt_handle));
            m
        })
        .collect()
}

fn total(counts: &QueueCounts) -> u64 {
    counts.visible + counts.in_flight + counts.delayed
}
