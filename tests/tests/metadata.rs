//! The metadata ring as real processes over a real etcd: the store contract through any node,
//! owners caching what they own and keeping it true with the watch, and the loss of a node.

use std::time::{Duration, Instant};

use sluice_metadata::MetadataClient;
use sluice_metastore::{EtcdStore, MetaStore};
use sluice_tests::{EtcdProcess, ServerProcess};

fn url(node: &ServerProcess) -> String {
    format!("http://{}", node.grpc_addr)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_serves_the_store_contract_and_owners_cache_what_they_own() {
    let etcd = EtcdProcess::start().unwrap();
    let nodes: Vec<ServerProcess> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| ServerProcess::start_metadata(&etcd.endpoint, id).unwrap())
        .collect();
    let all: Vec<&ServerProcess> = nodes.iter().collect();
    wait_for_ring(&all, 3.0).await;

    // Every request through one node: the keys it does not own are forwarded.
    let through_one = MetadataClient::new(&[url(&nodes[0])]).unwrap();
    sluice_metastore::conformance::check(&through_one).await;
    assert!(total(&all, "sluice_metadata_forwards_total") > 0.0);

    // Repeated reads are served from the owner's cache.
    let everywhere = MetadataClient::new(&nodes.iter().map(url).collect::<Vec<_>>()).unwrap();
    let hits = total(&all, "sluice_metadata_cache_hits_total");
    for _ in 0..6 {
        let b = everywhere.get("queues/b").await.unwrap().unwrap();
        assert_eq!(b.value, b"x");
    }
    assert!(total(&all, "sluice_metadata_cache_hits_total") >= hits + 5.0);

    // A change made behind the tier's back (straight to etcd) reaches the cache by the watch.
    let direct = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/sluice/")
        .await
        .unwrap();
    let current = direct.get("queues/b").await.unwrap().unwrap();
    direct
        .update("queues/b", b"changed".to_vec(), current.revision)
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while everywhere.get("queues/b").await.unwrap().unwrap().value != b"changed" {
        assert!(Instant::now() < deadline, "the cache kept the old record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_keep_succeeding_when_a_metadata_node_is_killed() {
    let etcd = EtcdProcess::start().unwrap();
    let mut nodes: Vec<Option<ServerProcess>> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| Some(ServerProcess::start_metadata(&etcd.endpoint, id).unwrap()))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| url(n.as_ref().unwrap())).collect();
    wait_for_ring(&nodes.iter().flatten().collect::<Vec<_>>(), 3.0).await;
    let client = MetadataClient::new(&urls).unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("queues/k{i}")).collect();
    for key in &keys {
        client
            .create(key, key.as_bytes().to_vec())
            .await
            .unwrap()
            .unwrap();
    }

    nodes[1].take().unwrap().kill9().unwrap();
    let killed = Instant::now();
    // At once, before the ring has settled: the client skips the dead node, and the living
    // ones serve its keys from etcd.
    for key in &keys {
        let got = client.get(key).await.unwrap().unwrap();
        assert_eq!(got.value, key.as_bytes());
    }
    let survivors: Vec<&ServerProcess> = nodes.iter().flatten().collect();
    wait_for_ring(&survivors, 2.0).await;
    println!(
        "the ring settled {:?} after SIGKILL of a metadata node",
        killed.elapsed()
    );
    // Settled: the dead node's keys have new owners, and nothing needs the fallback any more.
    let fallbacks = total(&survivors, "sluice_metadata_forward_fallbacks_total");
    for key in &keys {
        let current = client.get(key).await.unwrap().unwrap();
        let written = client
            .update(key, b"after".to_vec(), current.revision)
            .await
            .unwrap();
        assert!(written.is_some(), "{key}");
    }
    assert_eq!(
        total(&survivors, "sluice_metadata_forward_fallbacks_total"),
        fallbacks
    );
    let after = MetadataClient::new(&urls[..1]).unwrap();
    for key in &keys {
        assert_eq!(after.get(key).await.unwrap().unwrap().value, b"after");
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
    let mut client = etcd_client::Client::connect([&etcd.endpoint], None)
        .await
        .unwrap();
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

impl sluice_metadata::watch::Follower for Recorder {
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
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
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
    let follower = tokio::spawn(sluice_metadata::watch::follow_since(
        client.clone(),
        "/w/".into(),
        Recorder(seen.clone()),
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
