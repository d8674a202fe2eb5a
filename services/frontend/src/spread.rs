//! Which active partition of a queue spread over several clusters takes a message.
//!
//! Rendezvous hashing, so every frontend routes alike without talking to the others, and a
//! partition added or retired moves only the keys it takes or gave:
//!
//! - a FIFO message goes by its group: a group lives on one active partition, in order;
//! - a message with a deduplication id goes by that id, so a resend of it meets the first one;
//! - the rest of a send goes to one partition chosen by its idempotency key, weighted by the
//!   partitions' weights (their clusters' headroom, as the manager last weighed it). The
//!   frontend's keys are random, so sends spread by weight, and a client's retry with the same
//!   key goes where the first attempt went.
//!
//! The hash is SHA-256, not the standard library's hasher, which may change between Rust
//! releases: frontends of two versions must agree on where a group lives.

use sha2::{Digest, Sha256};
use sluice_api::cluster::Route;
use sluice_api::{IdempotencyKey, NewMessage};

/// A point in (0, 1) for `key` on `partition`.
fn point(tag: u8, partition: u32, key: &[u8]) -> f64 {
    let digest = Sha256::new()
        .chain_update([tag])
        .chain_update(partition.to_be_bytes())
        .chain_update(key)
        .finalize();
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) >> 11;
    // 53 bits, shifted off zero: ln(0) would be infinite.
    (bits as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0)
}

/// The route `key` goes to: the highest of `-weight / ln(point)` (weighted rendezvous), which
/// picks each route with a chance proportional to its weight.
fn rendezvous(tag: u8, key: &[u8], routes: &[Route<'_>], weighted: bool) -> usize {
    let score = |r: &Route<'_>| {
        let weight = if weighted { r.weight.max(1e-6) } else { 1.0 };
        -weight / point(tag, r.partition, key).ln()
    };
    (0..routes.len())
        .max_by(|&a, &b| score(&routes[a]).total_cmp(&score(&routes[b])))
        .unwrap_or(0)
}

/// The messages of a send, grouped by the route (an index into `routes`) each goes to, in
/// their order within the send.
pub(crate) fn split(
    routes: &[Route<'_>],
    messages: &[NewMessage],
    key: IdempotencyKey,
) -> Vec<(usize, Vec<usize>)> {
    let mut parts: Vec<(usize, Vec<usize>)> = Vec::new();
    let by_key = rendezvous(b'k', &key.to_bytes(), routes, true);
    for (index, message) in messages.iter().enumerate() {
        let route = if routes.len() == 1 {
            0
        } else if !message.group_id.is_empty() {
            rendezvous(b'g', message.group_id.as_bytes(), routes, false)
        } else if !message.deduplication_id.is_empty() {
            rendezvous(b'd', message.deduplication_id.as_bytes(), routes, false)
        } else {
            by_key
        };
        match parts.iter_mut().find(|(r, _)| *r == route) {
            Some((_, indices)) => indices.push(index),
            None => parts.push((route, vec![index])),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(partition: u32, weight: f64) -> Route<'static> {
        Route {
            partition,
            cluster: "a",
            storage: u64::from(partition),
            weight,
            sealed: false,
        }
    }

    fn message(group: &str, dedup: &str) -> NewMessage {
        NewMessage {
            group_id: group.into(),
            deduplication_id: dedup.into(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_and_deduplication_ids_stay_on_one_partition() {
        let routes = [route(0, 1.0), route(3, 1.0), route(4, 1.0)];
        let messages: Vec<NewMessage> = (0..60)
            .map(|i| message(&format!("g{}", i % 20), ""))
            .collect();
        let parts = split(&routes, &messages, IdempotencyKey::random());
        assert_eq!(parts.len(), 3, "20 groups fall on all three partitions");
        for (_, indices) in &parts {
            for &i in indices {
                // Every message of a group is in the part its first one is in.
                let group = &messages[i].group_id;
                assert!(indices
                    .iter()
                    .any(|&j| j < 20 && &messages[j].group_id == group));
            }
            assert!(
                indices.windows(2).all(|w| w[0] < w[1]),
                "send order is kept"
            );
        }
        // Another send, another key: the groups go where they went.
        let again = split(&routes, &messages, IdempotencyKey::random());
        assert_eq!(parts, again);
        let dedup = [message("", "order-17")];
        let first = split(&routes, &dedup, IdempotencyKey::random());
        for _ in 0..10 {
            assert_eq!(split(&routes, &dedup, IdempotencyKey::random()), first);
        }
    }

    #[test]
    fn a_partition_added_takes_only_the_groups_it_wins() {
        let two = [route(0, 1.0), route(1, 1.0)];
        let three = [route(0, 1.0), route(1, 1.0), route(2, 1.0)];
        let mut moved = 0;
        for g in 0..1000 {
            let m = [message(&format!("g{g}"), "")];
            let key = IdempotencyKey::random();
            let before = two[split(&two, &m, key)[0].0].partition;
            let after = three[split(&three, &m, key)[0].0].partition;
            if before != after {
                assert_eq!(after, 2, "a group only moves to the new partition");
                moved += 1;
            }
        }
        assert!((250..420).contains(&moved), "about a third moved: {moved}");
    }

    #[test]
    fn sends_without_keys_spread_by_weight() {
        let routes = [route(0, 1.0), route(1, 3.0)];
        let mut on_second = 0;
        for _ in 0..4000 {
            let parts = split(
                &routes,
                &[message("", ""), message("", "")],
                IdempotencyKey::random(),
            );
            assert_eq!(parts.len(), 1, "a send without keys stays whole");
            on_second += usize::from(parts[0].0 == 1);
        }
        assert!(
            (2800..3200).contains(&on_second),
            "about 3 in 4: {on_second}"
        );
        // The same key goes to the same partition.
        let key = IdempotencyKey::random();
        let m = [message("", "")];
        assert_eq!(split(&routes, &m, key), split(&routes, &m, key));
    }
}
