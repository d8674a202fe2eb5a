//! How far the control plane goes: a real etcd (Debian's, with its defaults) holding the records
//! and placements of many queues, and a manager started over it, measured. Run by hand, with
//! the queue count in `SLUICE_SCALE_QUEUES` (docs/placement.md has the results):
//!
//! ```sh
//! cargo build --release -p sluice-manager
//! SLUICE_SCALE_QUEUES=1000000 SLUICE_MANAGER_BIN=target/release/sluice-manager \
//!   cargo test -p sluice-tests --test scale -- --ignored --nocapture
//! ```
//!
//! The suite runs it at 50,000 queues, past the 4 MiB that one read of a prefix could return
//! before snapshots were read a page at a time.

use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use sluice_api::cluster::{self, Placement};
use sluice_api::{EffectiveAttributes, QueueRecord};
use sluice_client::{ManagerClient, ManagerClientOptions};
use sluice_proto::v1 as pb;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use sluice_tests::{EtcdProcess, ServerProcess};

/// etcd's default limit on the operations of one transaction.
const TXN_OPS: usize = 128;

/// Writes the records and placements of queues `from..to`, as the metadata tier and the
/// manager write them, alternating clusters a and b.
async fn fill(client: etcd_client::Client, from: u64, to: u64) {
    let mut kv = client.kv_client();
    let mut ops = Vec::with_capacity(TXN_OPS);
    for id in from..to {
        let name = format!("queue-{id:09}");
        let record = QueueRecord {
            id,
            name: name.clone(),
            attributes: EffectiveAttributes::default(),
            tags: Default::default(),
            created_at_ms: sluice_api::now_ms(),
            modified_at_ms: 0,
            purged_at_ms: 0,
        };
        let placement = Placement::new(&name, if id % 2 == 0 { "a" } else { "b" });
        ops.push(TxnOp::put(
            cluster::queue_record_key("/sluice/", &name),
            record.encode(),
            None,
        ));
        ops.push(TxnOp::put(
            cluster::placement_key("/sluice/", id),
            serde_json::to_vec(&placement).unwrap(),
            None,
        ));
        if ops.len() + 2 > TXN_OPS || id + 1 == to {
            let txn = Txn::new().and_then(std::mem::take(&mut ops));
            kv.txn(txn).await.unwrap();
        }
    }
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn measure(queues: u64) {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _a =
        ServerProcess::start_backend(&dir.path().join("a1"), &etcd.endpoint, "a", "a1").unwrap();
    let _b =
        ServerProcess::start_backend(&dir.path().join("b1"), &etcd.endpoint, "b", "b1").unwrap();
    let client = etcd.client().await;
    let filled = Instant::now();
    let writers = 8;
    let per = queues.div_ceil(writers);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (from, to) = (1 + w * per, (1 + (w + 1) * per).min(queues + 1));
            tokio::spawn(fill(client.clone(), from, to))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let fill_seconds = filled.elapsed().as_secs_f64();
    let status = client.clone().status().await.unwrap();
    let db_mib = status.db_size() as f64 / (1 << 20) as f64;

    let started = Instant::now();
    let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let mut admin = ManagerServiceClient::new(manager.channel());
    let deadline = Instant::now() + Duration::from_secs(30 + queues / 5_000);
    let listed = loop {
        if let Ok(listed) = admin.list_clusters(pb::ListClustersRequest {}).await {
            let listed = listed.into_inner();
            let total: u64 = listed.clusters.iter().map(|c| c.queue_count).sum();
            if total == queues && !listed.leader.is_empty() {
                break listed;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the manager never saw {queues} placements"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready_seconds = started.elapsed().as_secs_f64();
    assert_eq!(listed.clusters.len(), 2);

    sluice_tests::install_client_tls(sluice_tests::Kind::Manager);
    let placer = ManagerClient::connect(
        std::slice::from_ref(&etcd.endpoint),
        "/sluice/",
        ManagerClientOptions::default(),
    )
    .await
    .unwrap();
    let mut took = Vec::new();
    for i in 0..200 {
        let id = queues + 1 + i;
        let at = Instant::now();
        placer.place(id, &format!("new-{id}"), None).await.unwrap();
        took.push(at.elapsed());
    }
    took.sort();
    let rss = rss_mib(manager.pid());
    println!(
        "{queues} queues: etcd filled in {fill_seconds:.1} s, db {db_mib:.0} MiB; the manager \
         saw every placement {ready_seconds:.2} s after it started, holds {rss:.0} MiB; a \
         placement takes {:.1} ms at the median, {:.1} ms at p99",
        took[took.len() / 2].as_secs_f64() * 1000.0,
        took[took.len() * 99 / 100].as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_manager_follows_fifty_thousand_placements_past_one_message_of_etcd() {
    measure(50_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes of etcd writes; run by hand with SLUICE_SCALE_QUEUES"]
async fn the_manager_follows_as_many_placements_as_asked() {
    let queues = std::env::var("SLUICE_SCALE_QUEUES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    measure(queues).await;
}
