//! The consistent-hash ring of metadata nodes. Every node builds the same ring from the same
//! membership (the `metadata/nodes/` keys in etcd), and so does every client from the members
//! the nodes report, so all agree on each key's owner once they have seen the same members. Each node stands on the ring many times (virtual nodes), so keys
//! spread evenly and a departing node's keys spread over all the others.

use std::collections::BTreeMap;

use hashring::HashRing;
use parking_lot::RwLock;

/// Places each node takes on the ring.
const VIRTUAL_NODES: u16 = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VirtualNode {
    node: String,
    replica: u16,
}

#[derive(Default)]
struct State {
    members: BTreeMap<String, String>,
    ring: HashRing<VirtualNode>,
    /// One more with every change of membership: what a node cached of the keys it owned under
    /// one membership is not trusted under the next.
    generation: u64,
}

/// Members by node id, with their URLs, and the ring they form.
#[derive(Default)]
pub struct Ring(RwLock<State>);

impl Ring {
    /// Replaces the membership (node id → URL).
    pub fn set_members(&self, members: BTreeMap<String, String>) {
        let mut ring = HashRing::new();
        for node in members.keys() {
            for replica in 0..VIRTUAL_NODES {
                ring.add(VirtualNode {
                    node: node.clone(),
                    replica,
                });
            }
        }
        let mut state = self.0.write();
        let generation = state.generation + 1;
        *state = State {
            members,
            ring,
            generation,
        };
    }

    /// How many times the membership was set.
    pub fn generation(&self) -> u64 {
        self.0.read().generation
    }

    /// The members, node id → URL.
    pub fn members(&self) -> BTreeMap<String, String> {
        self.0.read().members.clone()
    }

    /// The owner of `key`: its node id and URL.
    pub fn owner(&self, key: &str) -> Option<(String, String)> {
        let state = self.0.read();
        let node = &state.ring.get(&key)?.node;
        let url = state.members.get(node)?;
        Some((node.clone(), url.clone()))
    }

    /// The URL of member `node`, if it is on the ring.
    pub fn owner_url(&self, node: &str) -> Option<String> {
        self.0.read().members.get(node).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> BTreeMap<String, String> {
        ids.iter()
            .map(|id| (id.to_string(), format!("http://{id}")))
            .collect()
    }

    #[test]
    fn owners_agree_spread_and_move_little_when_a_node_leaves() {
        let one = Ring::default();
        let other = Ring::default();
        one.set_members(members(&["m1", "m2", "m3"]));
        // Built in another order, the ring is the same.
        other.set_members(members(&["m3", "m1", "m2"]));
        let keys: Vec<String> = (0..3000).map(|i| format!("queues/q{i}")).collect();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for key in &keys {
            let owner = one.owner(key).unwrap();
            assert_eq!(Some(&owner), other.owner(key).as_ref());
            *per_node.entry(owner.0).or_default() += 1;
        }
        for (node, count) in &per_node {
            assert!((600..=1400).contains(count), "{node} owns {count} of 3000");
        }

        // m2 leaves: only its keys move.
        let before: Vec<_> = keys.iter().map(|k| one.owner(k).unwrap().0).collect();
        one.set_members(members(&["m1", "m3"]));
        for (key, owner) in keys.iter().zip(before) {
            let now = one.owner(key).unwrap().0;
            if owner != "m2" {
                assert_eq!(now, owner, "{key} moved although its owner stayed");
            } else {
                assert_ne!(now, "m2");
            }
        }
        assert!(Ring::default().owner("queues/x").is_none());
    }
}
