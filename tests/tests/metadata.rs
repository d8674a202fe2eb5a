//! The metadata ring as real processes over a real etcd: the typed queue-record contract through
//! any node, owners caching what they own and keeping it true with the watch, clients going to
//! each key's owner, and the loss of a node.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_api::cluster::{self, Placement};
use sluice_api::{EffectiveAttributes, PlacementDirectory, QueueDirectory, QueueRecord};
use sluice_client::MetadataClient;
use sluice_metastore::MetaStore;
use sluice_proto::v1 as pb;
use sluice_proto::v1::metadata_service_client::MetadataServiceClient;
use sluice_tests::{EtcdProcess, Kind, ServerProcess};

fn url(node: &ServerProcess) -> String {
    node.endpoint()
}

/// The metadata tier's client, calling as a frontend does.
fn metadata_client(urls: &[String]) -> sluice_api::Result<MetadataClient> {
    sluice_tests::install_client_tls(Kind::Frontend);
    MetadataClient::new(urls)
}

fn total(nodes: &[&ServerProcess], metric: &str) -> f64 {
    nodes.iter().map(|n| n.metric(metric).unwrap()).sum()
}

/// Waits until every node sees `members` members on the ring.
async fn wait_for_ring(nodes: &[&ServerProcess], members: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.metric("sluice_metadata_ring_members").unwrap() == members)
    {
        assert!(
            Instant::now() < deadline,
            "the ring never settled at {members}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn record(id: u64, name: &str) -> QueueRecord {
    QueueRecord {
        id,
        name: name.into(),
        attributes: EffectiveAttributes::default(),
        tags: HashMap::from([("team".to_owned(), "payments".to_owned())]),
        created_at_ms: 1,
        modified_at_ms: 0,
        purged_at_ms: 0,
    }
}

/// Three metadata nodes on one etcd, once all of them see the whole ring.
async fn three_nodes(etcd: &EtcdProcess) -> Vec<ServerProcess> {
    let nodes: Vec<ServerProcess> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| ServerProcess::start_metadata(&etcd.endpoint, id).unwrap())
        .collect();
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3.0).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_keeps_the_queue_record_contract_and_owners_cache_what_they_own() {
    let etcd = EtcdProcess::start().unwrap();
    let nodes = three_nodes(&etcd).await;
    let all: Vec<&ServerProcess> = nodes.iter().collect();
    let tier = metadata_client(&[url(&nodes[0])]).unwrap();

    // Create once; a second create of the name writes nothing.
    let created = tier.create_queue(&record(1, "orders")).await.unwrap();
    let revision = created.expect("the name was free");
    assert_eq!(tier.create_queue(&record(2, "orders")).await.unwrap(), None);
    let stored = tier.get_queue("orders").await.unwrap().unwrap();
    assert_eq!(
        (stored.record, stored.revision),
        (record(1, "orders"), revision)
    );
    assert!(tier.get_queue("missing").await.unwrap().is_none());

    // Updates and deletes compare the revision the record was read at.
    let mut changed = record(1, "orders");
    changed.attributes.delay_seconds = 5;
    assert_eq!(
        tier.update_queue(&changed, revision + 100).await.unwrap(),
        None
    );
    let updated = tier
        .update_queue(&changed, revision)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tier.get_queue("orders").await.unwrap().unwrap().record,
        changed
    );
    assert!(
        !tier.delete_queue("orders", revision).await.unwrap(),
        "stale"
    );

    // Listing pages through names in order.
    for (id, name) in [(3, "a-1"), (4, "a-2"), (5, "a-3"), (6, "b-1")] {
        tier.create_queue(&record(id, name)).await.unwrap().unwrap();
    }
    assert_eq!(tier.list_queues("a-", "", 2).await.unwrap(), ["a-1", "a-2"]);
    assert_eq!(tier.list_queues("a-", "a-2", 10).await.unwrap(), ["a-3"]);

    // Ids come in blocks and are never handed out twice, by one client or two.
    let other = metadata_client(&[url(&nodes[1])]).unwrap();
    let mut ids = HashSet::new();
    for _ in 0..150 {
        assert!(ids.insert(tier.allocate_queue_id().await.unwrap()));
        assert!(ids.insert(other.allocate_queue_id().await.unwrap()));
    }

    // Repeated reads are served from the owner's cache.
    let hits = total(&all, "sluice_metadata_cache_hits_total");
    for _ in 0..6 {
        tier.get_queue("orders").await.unwrap().unwrap();
    }
    assert!(total(&all, "sluice_metadata_cache_hits_total") >= hits + 5.0);

    // A change made behind the tier's back (straight to etcd) reaches the cache by the watch.
    let direct = etcd.store("/sluice/").await;
    let mut behind = changed.clone();
    behind.attributes.delay_seconds = 9;
    direct
        .update("queues/orders", behind.encode(), updated)
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tier.get_queue("orders").await.unwrap().unwrap().record != behind {
        assert!(Instant::now() < deadline, "the cache kept the old record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let current = tier.get_queue("orders").await.unwrap().unwrap();
    assert!(tier.delete_queue("orders", current.revision).await.unwrap());
    assert!(tier.get_queue("orders").await.unwrap().is_none());

    // A node that does not own a key forwards a request for it to the owner.
    let forwards = total(&all, "sluice_metadata_forwards_total");
    for node in &nodes {
        let mut raw = MetadataServiceClient::new(node.channel_as(Kind::Frontend));
        for name in ["a-1", "a-2", "a-3", "b-1"] {
            let request = pb::MetaGetQueueRequest {
                name: name.into(),
                forwarded: false,
            };
            let found = raw.get_queue_record(request).await.unwrap().into_inner();
            assert_eq!(found.record.unwrap().name, name);
        }
    }
    assert!(total(&all, "sluice_metadata_forwards_total") >= forwards + 8.0);
}

/// The manager writes a placement straight to etcd, not through the placement's owner; the
/// frontend that asked for the queue to be placed reads the placement back at once. An owner that
/// had cached the placement's absence would answer "not found" until its watch caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_written_behind_its_owner_is_found_by_the_next_read() {
    let etcd = EtcdProcess::start().unwrap();
    let node = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    wait_for_ring(&[&node], 1.0).await;
    let tier = metadata_client(&[url(&node)]).unwrap();
    let direct = etcd.store("/sluice/").await;
    // The race is lost only when the watch lags (on a loaded machine), so first the mechanism:
    // the owner never answers a placement's absence from its cache.
    let hits = node.metric("sluice_metadata_cache_hits_total").unwrap();
    for _ in 0..3 {
        assert!(tier.placement(1).await.unwrap().is_none());
    }
    assert_eq!(
        node.metric("sluice_metadata_cache_hits_total").unwrap(),
        hits,
        "an absent placement was answered from the cache"
    );
    for id in 1..=50 {
        assert!(tier.placement(id).await.unwrap().is_none());
        let placement = Placement::new(format!("q-{id}"), "c1");
        let key = cluster::placement_key("", id);
        direct
            .create(&key, serde_json::to_vec(&placement).unwrap())
            .await
            .unwrap()
            .unwrap();
        let (found, _) = tier.placement(id).await.unwrap().unwrap_or_else(|| {
            panic!("placement of queue {id} not found right after it was written")
        });
        assert_eq!(found, placement);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tier_refuses_a_record_no_frontend_could_make_and_stores_nothing() {
    let etcd = EtcdProcess::start().unwrap();
    let node = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    wait_for_ring(&[&node], 1.0).await;
    let mut raw = MetadataServiceClient::new(node.channel_as(Kind::Frontend));
    let good = sluice_api::wire::record_to_pb(&record(7, "orders"));
    let cases = [
        (
            pb::MetaQueueRecord {
                name: "no spaces".into(),
                ..good.clone()
            },
            "record.name",
        ),
        (
            pb::MetaQueueRecord {
                id: 0,
                ..good.clone()
            },
            "record.id",
        ),
        (
            pb::MetaQueueRecord {
                attributes: None,
                ..good.clone()
            },
            "record.attributes",
        ),
        (
            pb::MetaQueueRecord {
                attributes: Some(pb::QueueAttributes {
                    delay_seconds: Some(901),
                    ..good.attributes.clone().unwrap()
                }),
                ..good.clone()
            },
            "attributes.delay_seconds",
        ),
        (
            pb::MetaQueueRecord {
                attributes: Some(pb::QueueAttributes {
                    fifo: true,
                    ..good.attributes.clone().unwrap()
                }),
                ..good.clone()
            },
            "attributes.fifo",
        ),
        (
            pb::MetaQueueRecord {
                attributes: Some(pb::QueueAttributes {
                    rate_limits: Some(pb::RateLimits {
                        send_bytes_per_second: Some(10),
                        ..Default::default()
                    }),
                    ..good.attributes.clone().unwrap()
                }),
                ..good.clone()
            },
            "attributes.rate_limits.send_bytes_per_second",
        ),
    ];
    for (bad, field) in cases {
        let request = pb::MetaCreateQueueRequest {
            record: Some(bad),
            forwarded: false,
        };
        let status = raw.create_queue_record(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status}"
        );
        assert!(status.message().contains(field), "{field}: {status}");
    }
    let status = raw
        .allocate_queue_ids(pb::MetaAllocateQueueIdsRequest { count: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    for (bad, field) in [
        (
            pb::RegisterFrontendRequest {
                frontend: String::new(),
                ..Default::default()
            },
            "frontend",
        ),
        (
            pb::RegisterFrontendRequest {
                frontend: "../x".into(),
                ..Default::default()
            },
            "frontend",
        ),
        (
            pb::RegisterFrontendRequest {
                frontend: "f1".into(),
                url: "u".repeat(300),
                lease: 0,
            },
            "url",
        ),
        (
            pb::RegisterFrontendRequest {
                frontend: "f1".into(),
                url: String::new(),
                lease: -1,
            },
            "lease",
        ),
    ] {
        let status = raw.register_frontend(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(field), "{field}: {status}");
    }
    let direct = etcd.store("/sluice/").await;
    assert!(direct
        .list("", "", 10)
        .await
        .unwrap()
        .iter()
        .all(|(k, _)| !k.starts_with("queues/") && !k.starts_with("frontends/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frontends_register_under_leases_they_renew_and_are_counted() {
    let etcd = EtcdProcess::start().unwrap();
    let node = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    wait_for_ring(&[&node], 1.0).await;
    let mut raw = MetadataServiceClient::new(node.channel_as(Kind::Frontend));
    let register = |frontend: &str, lease: i64| pb::RegisterFrontendRequest {
        frontend: frontend.into(),
        url: format!("http://{frontend}:7070"),
        lease,
    };
    let first = raw
        .register_frontend(register("f1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.frontends, 1);
    assert!(first.lease > 0);
    // Renewed under the same lease; a second frontend makes two.
    let renewed = raw
        .register_frontend(register("f1", first.lease))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((renewed.lease, renewed.frontends), (first.lease, 1));
    let second = raw
        .register_frontend(register("f2", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.frontends, 2);
    // A lease etcd no longer has is replaced, and the registration written again.
    let mut etcd_client = etcd.client().await;
    etcd_client.lease_revoke(second.lease).await.unwrap();
    let back = raw
        .register_frontend(register("f2", second.lease))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(back.lease, second.lease);
    assert_eq!(back.frontends, 2);
    let listed = etcd_client
        .get(
            "/sluice/frontends/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let keys: Vec<_> = listed
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["/sluice/frontends/f1", "/sluice/frontends/f2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_goes_to_each_keys_owner_and_falls_back_when_the_owner_is_killed() {
    let etcd = EtcdProcess::start().unwrap();
    let mut nodes: Vec<Option<ServerProcess>> =
        three_nodes(&etcd).await.into_iter().map(Some).collect();
    // One seed: the client learns the others from the ring.
    let client = metadata_client(&[url(nodes[0].as_ref().unwrap())]).unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("q{i}")).collect();
    let live: Vec<&ServerProcess> = nodes.iter().flatten().collect();
    let forwards = total(&live, "sluice_metadata_forwards_total");
    for (id, name) in names.iter().enumerate() {
        client
            .create_queue(&record(id as u64 + 1, name))
            .await
            .unwrap()
            .unwrap();
        client.get_queue(name).await.unwrap().unwrap();
    }
    assert_eq!(client.ring_members(), 3);
    assert_eq!(
        total(&live, "sluice_metadata_forwards_total"),
        forwards,
        "every request went to its key's owner, so no node forwarded one"
    );

    // Kill a node other than the seed, and with it the owner of some names.
    let victim_url = url(nodes[1].as_ref().unwrap());
    let orphans: Vec<&String> = names
        .iter()
        .filter(|name| client.owner_of_queue(name).as_ref() == Some(&victim_url))
        .collect();
    assert!(
        !orphans.is_empty(),
        "the ring gives the second node some names"
    );
    nodes[1].take().unwrap().kill9().unwrap();
    // At once, before the ring has settled: the owner is unreachable, the client falls back
    // to the seed, and the seed serves the dead node's names from etcd.
    for name in &names {
        let got = client.get_queue(name).await.unwrap().unwrap();
        assert_eq!(&got.record.name, name);
    }
    let survivors: Vec<&ServerProcess> = nodes.iter().flatten().collect();
    wait_for_ring(&survivors, 2.0).await;
    // Settled: the client reads the ring again and writes go to the new owners.
    for name in orphans {
        let current = client.get_queue(name).await.unwrap().unwrap();
        let mut changed = current.record.clone();
        changed.attributes.delay_seconds = 3;
        assert!(client
            .update_queue(&changed, current.revision)
            .await
            .unwrap()
            .is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_keep_succeeding_when_a_metadata_node_is_killed() {
    let etcd = EtcdProcess::start().unwrap();
    let mut nodes: Vec<Option<ServerProcess>> =
        three_nodes(&etcd).await.into_iter().map(Some).collect();
    let urls: Vec<String> = nodes.iter().map(|n| url(n.as_ref().unwrap())).collect();
    let client = metadata_client(&urls).unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for (id, name) in names.iter().enumerate() {
        client
            .create_queue(&record(id as u64 + 1, name))
            .await
            .unwrap()
            .unwrap();
    }

    nodes[1].take().unwrap().kill9().unwrap();
    let killed = Instant::now();
    // At once, before the ring has settled: the client skips the dead node, and the living
    // ones serve its keys from etcd.
    for name in &names {
        let got = client.get_queue(name).await.unwrap().unwrap();
        assert_eq!(&got.record.name, name);
    }
    let survivors: Vec<&ServerProcess> = nodes.iter().flatten().collect();
    wait_for_ring(&survivors, 2.0).await;
    println!(
        "the ring settled {:?} after SIGKILL of a metadata node",
        killed.elapsed()
    );
    // Settled: the dead node's keys have new owners, and nothing needs the fallback any more.
    let fallbacks = total(&survivors, "sluice_metadata_forward_fallbacks_total");
    for name in &names {
        let current = client.get_queue(name).await.unwrap().unwrap();
        let mut changed = current.record.clone();
        changed.attributes.delay_seconds = 7;
        let written = client
            .update_queue(&changed, current.revision)
            .await
            .unwrap();
        assert!(written.is_some(), "{name}");
    }
    assert_eq!(
        total(&survivors, "sluice_metadata_forward_fallbacks_total"),
        fallbacks
    );
    let after = metadata_client(&urls[..1]).unwrap();
    for name in &names {
        let record = after.get_queue(name).await.unwrap().unwrap().record;
        assert_eq!(record.attributes.delay_seconds, 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_leaves_the_ring_at_once() {
    let etcd = EtcdProcess::start().unwrap();
    let staying = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    let leaving = ServerProcess::start_metadata(&etcd.endpoint, "m2").unwrap();
    wait_for_ring(&[&staying, &leaving], 2.0).await;
    let status = leaving.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    // The lease was revoked on the way out, not left to expire: the key is gone already.
    let mut client = etcd.client().await;
    let key = sluice_metadata::member_key("/sluice/", "m2");
    assert!(client.get(key, None).await.unwrap().kvs().is_empty());
    wait_for_ring(&[&staying], 1.0).await;
}

/// What a watch follower saw: the keys it holds and how many snapshots it took.
#[derive(Default)]
struct Seen {
    keys: std::collections::BTreeSet<String>,
    snapshots: usize,
}

struct Recorder(std::sync::Arc<std::sync::Mutex<Seen>>);

impl sluice_metastore::watch::Follower for Recorder {
    fn snapshot(&mut self, kvs: &[etcd_client::KeyValue]) {
        let mut seen = self.0.lock().unwrap();
        seen.snapshots += 1;
        seen.keys = kvs
            .iter()
            .map(|kv| kv.key_str().unwrap().to_owned())
            .collect();
    }

    fn event(&mut self, event: &etcd_client::Event) {
        let kv = event.kv().unwrap();
        let key = kv.key_str().unwrap().to_owned();
        let mut seen = self.0.lock().unwrap();
        match event.event_type() {
            etcd_client::EventType::Put => seen.keys.insert(key),
            etcd_client::EventType::Delete => seen.keys.remove(&key),
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_takes_a_snapshot_and_resumes() {
    let etcd = EtcdProcess::start().unwrap();
    let mut client = etcd.client().await;
    let known = client.put("/w/k1", "1", None).await.unwrap();
    let known = known.header().unwrap().revision();
    client.put("/w/k2", "2", None).await.unwrap();
    client.delete("/w/k1", None).await.unwrap();
    let last = client.put("/w/k3", "3", None).await.unwrap();
    // The changes after `known` are gone from etcd's history.
    client
        .compact(last.header().unwrap().revision(), None)
        .await
        .unwrap();

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    static EVENTS: std::sync::LazyLock<prometheus::IntCounter> =
        std::sync::LazyLock::new(|| prometheus::IntCounter::new("events", "events").unwrap());
    static RESTARTS: std::sync::LazyLock<prometheus::IntCounter> =
        std::sync::LazyLock::new(|| prometheus::IntCounter::new("restarts", "restarts").unwrap());
    let counters = sluice_metastore::watch::WatchCounters {
        events: &EVENTS,
        restarts: &RESTARTS,
    };
    let follower = tokio::spawn(sluice_metastore::watch::follow_since(
        client.clone(),
        "/w/".into(),
        Recorder(seen.clone()),
        counters,
        shutdown.clone(),
        Some(known),
    ));
    let holds = |keys: &[&str]| {
        let seen = seen.lock().unwrap();
        seen.keys
            .iter()
            .map(String::as_str)
            .eq(keys.iter().copied())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !holds(&["/w/k2", "/w/k3"]) {
        assert!(
            Instant::now() < deadline,
            "the follower never caught up past the compaction: {:?}",
            seen.lock().unwrap().keys
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen.lock().unwrap().snapshots,
        1,
        "a snapshot replaced the lost changes"
    );
    // And the watch goes on after the snapshot.
    client.put("/w/k4", "4", None).await.unwrap();
    while !holds(&["/w/k2", "/w/k3", "/w/k4"]) {
        assert!(Instant::now() < deadline, "the watch did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    follower.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_a_grpc_message_is_read_whole_at_one_revision() {
    let etcd = EtcdProcess::start().unwrap();
    let mut client = etcd.client().await;
    // 12,000 keys of 500 bytes: 6 MB, past the 4 MiB a client takes in one message, and more
    // keys than one page of a snapshot.
    let value = "v".repeat(500);
    for batch in 0..120 {
        let puts = (0..100)
            .map(|i| {
                etcd_client::TxnOp::put(format!("/big/{:05}", batch * 100 + i), value.clone(), None)
            })
            .collect::<Vec<_>>();
        client
            .txn(etcd_client::Txn::new().and_then(puts))
            .await
            .unwrap();
    }
    client
        .put("/bigger", "outside the prefix", None)
        .await
        .unwrap();
    let whole = client
        .get("/big/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await;
    assert!(whole.is_err(), "one message would have held it all");

    let (kvs, revision) = sluice_metastore::watch::snapshot(&client, "/big/")
        .await
        .unwrap();
    assert_eq!(kvs.len(), 12_000);
    let keys: Vec<String> = kvs
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..12_000).map(|i| format!("/big/{i:05}")).collect();
    assert_eq!(keys, expected);
    let last = client.get("/bigger", None).await.unwrap();
    assert_eq!(revision, last.header().unwrap().revision());
}
