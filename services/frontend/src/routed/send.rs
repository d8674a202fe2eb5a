//! Sends through the routed backend: to the one active partition, or split over the active
//! partitions of a queue spread over clusters, after asking the other partitions whether they
//! already stored the send's deduplication ids.

use sluice_api::cluster::{Placement, Route};
use sluice_api::{Error, IdempotencyKey, NewMessage, QueueId, Result, SentMessage};

use super::RoutedBackend;
use crate::spread;

/// How long after a queue moved or changed its partitions a send with deduplication ids asks
/// the other partitions first whether they stored them: the backends' default deduplication
/// window.
const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;

impl RoutedBackend {
    /// Sends with the caller's idempotency key, if any. Every attempt over the network carries
    /// one key: an attempt whose answer was lost (the leader died after commit, the connection
    /// broke) may have stored the messages, and the key makes the backend answer the next
    /// attempt with what the first one stored. A node in this process loses no answer, so a
    /// send there needs no key of its own, nor the engine's work of remembering it.
    pub(super) async fn send_with(
        &self,
        id: QueueId,
        key: Option<IdempotencyKey>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        let messages = &messages;
        let network_key = key.unwrap_or_else(IdempotencyKey::random);
        self.with_placement(id, |placement| async move {
            let mut answered = self.answered_elsewhere(id, &placement, messages).await;
            let remaining: Vec<usize> = (0..messages.len())
                .filter(|&i| answered[i].is_none())
                .collect();
            let routes = placement.active(id);
            let sent = match routes.as_slice() {
                _ if remaining.is_empty() => Vec::new(),
                [route] if remaining.len() == messages.len() => {
                    let (node, _slot) = self.on(route.cluster).await?;
                    let sent = if key.is_none() && self.is_local(route.cluster) {
                        node.send(route.storage, messages.clone()).await?
                    } else {
                        node.send_idempotent(route.storage, network_key, messages.clone())
                            .await?
                    };
                    remaining.iter().copied().zip(sent).collect()
                }
                [route] => {
                    let (node, _slot) = self.on(route.cluster).await?;
                    let part = part_of(messages, &remaining, network_key);
                    let sent = node
                        .send_idempotent(route.storage, network_key.part(&remaining), part)
                        .await?;
                    remaining.iter().copied().zip(sent).collect()
                }
                routes => {
                    self.send_spread(routes, network_key, messages, &remaining)
                        .await?
                }
            };
            for (i, message) in sent {
                answered[i] = Some(message);
            }
            answered
                .into_iter()
                .map(|s| {
                    s.ok_or_else(|| Error::Internal("a partition answered fewer messages".into()))
                })
                .collect()
        })
        .await
    }

    /// The messages of a send that another partition of the queue already stored by their
    /// deduplication ids, answered as duplicates from there: a client's retry (a new request
    /// with the same deduplication ids) after a move or a change of the queue's partitions
    /// must not be stored again where the ids now route. Asked only within the deduplication
    /// window after such a change, of the partitions sealed in that window and, when the
    /// queue has several active ones, of those. A partition that cannot be asked is passed
    /// over with a warning: the send goes on rather than fail.
    async fn answered_elsewhere(
        &self,
        id: QueueId,
        placement: &Placement,
        messages: &[NewMessage],
    ) -> Vec<Option<SentMessage>> {
        let mut answers: Vec<Option<SentMessage>> = vec![None; messages.len()];
        let now = sluice_api::now_ms();
        let recent = |at: u64| now.saturating_sub(at) < DEDUP_WINDOW_MS;
        if !placement.moved_at_ms.is_some_and(recent) {
            return answers;
        }
        let mut routes: Vec<Route<'_>> = placement
            .sealed_routes(id)
            .zip(&placement.sealed)
            .filter(|(_, p)| recent(p.sealed_at_ms))
            .map(|(route, _)| route)
            .collect();
        let active = placement.active(id);
        if active.len() > 1 {
            routes.extend(active);
        }
        for route in routes {
            let asked: Vec<usize> = (0..messages.len())
                .filter(|&i| answers[i].is_none() && !messages[i].deduplication_id.is_empty())
                .collect();
            if asked.is_empty() {
                break;
            }
            let ids = asked
                .iter()
                .map(|&i| messages[i].deduplication_id.clone())
                .collect();
            let found = match self.on(route.cluster).await {
                Ok((node, _slot)) => node.deduplicated(route.storage, ids).await,
                Err(err) => Err(err),
            };
            match found {
                Ok(found) => {
                    for (i, first) in asked.into_iter().zip(found) {
                        answers[i] = first.map(|first| SentMessage {
                            message_id: first.message_id,
                            sequence: first.sequence,
                            duplicate: true,
                            md5_of_body: match messages[i].md5_of_body.as_str() {
                                "" => sluice_api::md5_of_body(&messages[i].body),
                                given => given.to_owned(),
                            },
                        });
                    }
                }
                // A sealed partition drained and removed since the placement was read.
                Err(Error::NotFound { .. }) => {}
                Err(err) => {
                    tracing::warn!(queue_id = id, cluster = %route.cluster, error = %err, "cannot ask a partition for a send's deduplication ids; sending on");
                }
            }
        }
        answers
    }

    /// Sends the messages at `remaining` to a queue with several active partitions: each part
    /// of the send to the partition `spread::split` routes it to, all parts at once. A part's
    /// key is derived from the send's and its messages' places in it, and so are the message
    /// ids, so a retry of the whole send (after one part failed) is answered by each partition
    /// with what it stored. Returns each message's place with its answer.
    async fn send_spread(
        &self,
        routes: &[Route<'_>],
        key: IdempotencyKey,
        messages: &[NewMessage],
        remaining: &[usize],
    ) -> Result<Vec<(usize, SentMessage)>> {
        let parts: Vec<(usize, Vec<usize>)> = spread::split(routes, messages, key)
            .into_iter()
            .map(|(route, indices)| {
                let indices: Vec<usize> = indices
                    .into_iter()
                    .filter(|i| remaining.contains(i))
                    .collect();
                (route, indices)
            })
            .filter(|(_, indices)| !indices.is_empty())
            .collect();
        let calls = parts.iter().map(|(route, indices)| {
            let route = routes[*route];
            let batch = part_of(messages, indices, key);
            let part_key = key.part(indices);
            async move {
                let (node, _slot) = self.on(route.cluster).await?;
                node.send_idempotent(route.storage, part_key, batch).await
            }
        });
        let answers = futures::future::join_all(calls).await;
        let mut sent = Vec::with_capacity(remaining.len());
        for ((_, indices), answer) in parts.iter().zip(answers) {
            sent.extend(indices.iter().copied().zip(answer?));
        }
        Ok(sent)
    }
}

/// The messages at `indices`, each named by its place in the whole send (as the backend would
/// name it from `key` had the send gone whole), so a part keeps the ids of the whole.
fn part_of(messages: &[NewMessage], indices: &[usize], key: IdempotencyKey) -> Vec<NewMessage> {
    indices
        .iter()
        .map(|&i| {
            let mut message = messages[i].clone();
            if message.message_id.is_empty() {
                message.message_id = key.message_id(i);
            }
            message
        })
        .collect()
}
