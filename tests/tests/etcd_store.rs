//! The etcd metadata store against a real etcd (Debian's `etcd-server`) started on free ports.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_metastore::MetaStore;
use sluice_tests::EtcdProcess;

#[tokio::test]
async fn follows_the_store_contract() {
    let etcd = EtcdProcess::start().unwrap();
    let store = etcd.store("/sluice/").await;
    sluice_metastore::conformance::check(&store).await;

    // Another root on the same etcd sees none of it.
    let other = etcd.store("/other/").await;
    assert!(other.list("", "", 100).await.unwrap().is_empty());
    assert_eq!(other.next_ids("ids/queue", 1).await.unwrap(), 1);
    assert_eq!(store.next_ids("ids/queue", 1).await.unwrap(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_and_counters_have_one_winner_each() {
    let etcd = EtcdProcess::start().unwrap();
    let store = Arc::new(etcd.store("/sluice/").await);
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let created = store.create("queues/q", vec![i]).await.unwrap();
            // Blocks of three, as the metadata tier hands them to frontends.
            let first = store.next_ids("ids/queue", 3).await.unwrap();
            (created.is_some(), first)
        }));
    }
    let mut winners = 0;
    let mut ids = HashSet::new();
    for task in tasks {
        let (won, first) = task.await.unwrap();
        winners += usize::from(won);
        for id in first..first + 3 {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(winners, 1, "exactly one create of the same name succeeds");
    assert_eq!(ids, (1..=48).collect(), "the blocks leave no gap");
}

#[tokio::test]
async fn an_unreachable_etcd_is_unavailable() {
    let etcd = EtcdProcess::start().unwrap();
    let store = etcd.store("/sluice/").await;
    etcd.kill9().unwrap();
    let err = store.get("queues/q").await.unwrap_err();
    let status: sluice_api::Error = err.into();
    assert!(
        matches!(status, sluice_api::Error::Unavailable(_)),
        "{status:?}"
    );
}
