//! The manager's view of load and its rebalancer on the dev cluster, every part a real process:
//! a nearly full node or a silent one keeps its cluster from new queues, and load skewed onto
//! one cluster's queues is spread by moves that lose and duplicate nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;
use sluice_tests::dev::DevCluster;
use sluice_tests::disk::SmallDisk;
use sluice_tests::front::{create_queue, delete_entries};

/// Polls the clusters as `sluice admin clusters` shows them until `check` holds.
async fn until_clusters(
    cluster: &DevCluster,
    what: &str,
    timeout: Duration,
    check: impl Fn(&HashMap<String, serde_json::Value>) -> bool,
) -> HashMap<String, serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let listed = cluster.admin(&["clusters"]);
        let by_name: HashMap<String, serde_json::Value> = listed["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_owned(), c.clone()))
            .collect();
        if check(&by_name) {
            return by_name;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The cluster of queue `queue`'s active partition.
fn cluster_of(cluster: &DevCluster, queue: &str) -> String {
    let placement = cluster.admin(&["placement", queue]);
    placement["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nearly_full_node_keeps_its_cluster_from_new_queues_though_its_peers_have_space() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    // Node a2 keeps its data on a 256 MiB disk; the managers want 512 MiB free on every node.
    let disk = SmallDisk::mount_at(&cluster_dir.join("a2"), 256);
    let env = [
        ("SLUICE_MIN_DISK_FREE_BYTES", "536870912"),
        // The node's own floor, under which it refuses writes, stays below its disk.
        ("SLUICE_MIN_FREE_DISK_BYTES", "16777216"),
        ("SLUICE_LOAD_REPORT_INTERVAL_MS", "500"),
    ];
    let cluster = DevCluster::start(&cluster_dir, &[], &env).unwrap();
    let shown = until_clusters(
        &cluster,
        "cluster a refused for a2's disk",
        Duration::from_secs(30),
        |c| {
            c.len() == 2
                && c["a"]["accepting"] == false
                && c["b"]["accepting"] == true
                && c["a"]["unknown"] == ""
        },
    )
    .await;
    let reason = shown["a"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("bytes of disk free, under the low-water mark of 536870912"),
        "{reason}"
    );
    let least_free = shown["a"]["disk_free_bytes"].as_u64().unwrap();
    assert!(
        least_free <= disk.free() + (16 << 20),
        "cluster a's disk free is its fullest node's ({least_free} vs a2's {})",
        disk.free()
    );
    assert!(shown["b"]["disk_free_bytes"].as_u64().unwrap() > 512 << 20);
    assert!(
        shown["a"]["score"]["total"].is_number(),
        "a's load is known: {shown:?}"
    );

    let mut client = cluster.client(0).unwrap();
    for i in 0..4 {
        create_queue(&mut client, &format!("q{i}")).await;
        assert_eq!(cluster_of(&cluster, &format!("q{i}")), "b");
    }
    drop(client);
    cluster.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stops_reporting_makes_its_cluster_ineligible_until_it_reports_again() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SLUICE_LOAD_REPORT_INTERVAL_MS", "500"),
        ("SLUICE_STALE_REPORT_MS", "3000"),
    ];
    let cluster = DevCluster::start(&dir.path().join("cluster"), &[], &env).unwrap();
    until_clusters(
        &cluster,
        "both clusters taking queues",
        Duration::from_secs(30),
        |c| c.len() == 2 && c.values().all(|c| c["accepting"] == true),
    )
    .await;

    // SIGSTOP: the process neither reports nor renews its lease, as a hung node would.
    let b2 = Pid::from_raw(cluster.pid("backend-b2").unwrap());
    kill(b2, Signal::SIGSTOP).unwrap();
    let shown = until_clusters(
        &cluster,
        "cluster b's load unknown",
        Duration::from_secs(30),
        |c| c["b"]["accepting"] == false,
    )
    .await;
    let unknown = shown["b"]["unknown"].as_str().unwrap();
    assert!(
        unknown.contains("member b2 last reported") || unknown.contains("member b2 has no live"),
        "{unknown}"
    );
    assert!(
        shown["b"]["score"].is_null(),
        "no score for an unknown load: {shown:?}"
    );
    let mut client = cluster.client(0).unwrap();
    for i in 0..4 {
        create_queue(&mut client, &format!("q{i}")).await;
        assert_eq!(cluster_of(&cluster, &format!("q{i}")), "a");
    }

    kill(b2, Signal::SIGCONT).unwrap();
    until_clusters(
        &cluster,
        "cluster b known again",
        Duration::from_secs(30),
        |c| c["b"]["accepting"] == true && c["b"]["unknown"] == "",
    )
    .await;
    drop(client);
    cluster.stop().unwrap();
}

/// What the load's producers had acknowledged and its consumers received, by body.
#[derive(Default)]
struct Ledger {
    acked: Vec<String>,
    received: HashMap<String, u32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_skewed_onto_one_cluster_is_spread_by_moves_that_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The score counts messages only, against a capacity of 1,000/s, so 4 queues at 100/s in and
    // 100/s out score 0.8 on one cluster and 0 on the other: the hot one is 0.4 over the mean.
    let env = [
        ("SLUICE_LOAD_REPORT_INTERVAL_MS", "500"),
        ("SLUICE_WEIGHT_CPU", "0"),
        ("SLUICE_WEIGHT_BYTES", "0"),
        ("SLUICE_WEIGHT_STORAGE", "0"),
        ("SLUICE_WEIGHT_LATENCY", "0"),
        ("SLUICE_CAPACITY_MESSAGES_PER_SECOND", "1000"),
        ("SLUICE_REBALANCE_THRESHOLD", "0.1"),
        ("SLUICE_REBALANCE_SUSTAIN_MS", "4000"),
        ("SLUICE_REBALANCE_INTERVAL_MS", "1000"),
        ("SLUICE_REBALANCE_QUEUE_REST_MS", "1000"),
        // A queue placed by hand has its drained partition removed at once, so it may move.
        ("SLUICE_SEALED_KEEP_MS", "0"),
    ];
    let cluster = DevCluster::start(&dir.path().join("cluster"), &[], &env).unwrap();
    let mut client = cluster.client(0).unwrap();
    let queues: Vec<String> = (0..4).map(|i| format!("hot{i}")).collect();
    for queue in &queues {
        create_queue(&mut client, queue).await;
        if cluster_of(&cluster, queue) != "a" {
            cluster.admin(&["place", queue, "--cluster", "a", "--wait"]);
        }
    }
    let paused = cluster.admin(&["rebalance", "pause"]);
    assert_eq!(paused["paused"], true);

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut load = Load::start(&cluster, &queues, &ledger);

    // Paused, the rebalancer only plans: the dry run shows a hot and moves off it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let plan = loop {
        let plan = cluster.admin(&["rebalance", "--dry-run"]);
        if plan["moves"].as_array().is_some_and(|m| !m.is_empty()) {
            break plan;
        }
        assert!(
            Instant::now() < deadline,
            "no plan to move off a hot cluster a: {plan}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("dry run while paused: {plan}");
    assert_eq!(plan["paused"], true);
    for planned in plan["moves"].as_array().unwrap() {
        assert_eq!(planned["from"], "a");
        assert_eq!(planned["to"], "b");
        assert!(planned["reason"]
            .as_str()
            .unwrap()
            .contains("over the mean"));
    }
    assert!(
        queues.iter().all(|q| cluster_of(&cluster, q) == "a"),
        "nothing moves while paused"
    );

    let resumed = cluster.admin(&["rebalance", "resume"]);
    assert_eq!(resumed["paused"], false);
    let balanced = until_clusters(
        &cluster,
        "scores within the threshold",
        Duration::from_secs(90),
        |c| {
            let score = |name: &str| c.get(name).and_then(|c| c["score"]["total"].as_f64());
            match (score("a"), score("b")) {
                (Some(a), Some(b)) => b > 0.1 && (a - b).abs() <= 0.2,
                _ => false,
            }
        },
    )
    .await;
    let on_b = queues
        .iter()
        .filter(|q| cluster_of(&cluster, q) == "b")
        .count();
    println!(
        "balanced: a {} b {}; {on_b} of 4 queues moved to b",
        balanced["a"]["score"]["total"], balanced["b"]["score"]["total"]
    );
    assert!((1..=3).contains(&on_b), "{on_b} queues on b");
    // The load goes on over the moved queues while their old partitions drain.
    tokio::time::sleep(Duration::from_secs(5)).await;

    load.stop.store(true, Ordering::Relaxed);
    load.join().await;
    let ledger = ledger.lock().unwrap();
    let lost: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|b| !ledger.received.contains_key(*b))
        .collect();
    let twice: Vec<(&String, &u32)> = ledger.received.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} acknowledged, {} received, {} lost, {} received twice",
        ledger.acked.len(),
        ledger.received.len(),
        lost.len(),
        twice.len()
    );
    assert!(
        ledger.acked.len() > 1000,
        "too little load to tell: {}",
        ledger.acked.len()
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    assert!(
        twice.is_empty(),
        "received twice: {:?}",
        &twice[..twice.len().min(10)]
    );
    drop(client);
    cluster.stop().unwrap();
}

/// The partitions `admin placement` lists for `queue`: (cluster, sealed, messages visible,
/// in flight or delayed).
fn partitions(cluster: &DevCluster, queue: &str) -> Vec<(String, bool, u64)> {
    let placement = cluster.admin(&["placement", queue]);
    placement["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["cluster"].as_str().unwrap().to_owned(),
                p["sealed"].as_bool().unwrap(),
                ["visible", "in_flight", "delayed"]
                    .iter()
                    .map(|state| p["counts"][state].as_u64().unwrap_or(0))
                    .sum(),
            )
        })
        .collect()
}

/// Polls `queue`'s partitions until `check` holds.
async fn until_partitions(
    cluster: &DevCluster,
    queue: &str,
    what: &str,
    check: impl Fn(&[(String, bool, u64)]) -> bool,
) -> Vec<(String, bool, u64)> {
    // Generous: a FIFO queue drains 10 messages (one per group) a round trip, on a machine
    // running other tests' clusters at the same time.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let shown = partitions(cluster, queue);
        if check(&shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {queue}: {what}: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn active_clusters(shown: &[(String, bool, u64)]) -> Vec<&str> {
    let mut active: Vec<&str> = shown
        .iter()
        .filter(|(_, sealed, _)| !sealed)
        .map(|(c, _, _)| c.as_str())
        .collect();
    active.sort_unstable();
    active
}

/// A producer and a consumer for each queue, on alternate frontends.
struct Load {
    /// Set: the producers stop, and the consumers once the queues have been empty for 3 s.
    stop: Arc<AtomicBool>,
    /// Cleared: the consumers hold off.
    consuming: Arc<AtomicBool>,
    /// FIFO messages received out of their group's order.
    out_of_order: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &DevCluster, queues: &[String], ledger: &Arc<Mutex<Ledger>>) -> Load {
        let mut load = Load {
            stop: Arc::default(),
            consuming: Arc::new(AtomicBool::new(true)),
            out_of_order: Arc::default(),
            tasks: Vec::new(),
        };
        for (i, queue) in queues.iter().enumerate() {
            load.tasks.push(tokio::spawn(produce(
                cluster.client(i % 2).unwrap(),
                queue.clone(),
                ledger.clone(),
                load.stop.clone(),
            )));
            load.tasks.push(tokio::spawn(consume(
                cluster.client((i + 1) % 2).unwrap(),
                queue.clone(),
                ledger.clone(),
                load.consuming.clone(),
                load.stop.clone(),
                load.out_of_order.clone(),
            )));
        }
        load
    }

    /// Waits for every producer and consumer to end (after `stop`).
    async fn join(&mut self) {
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("the load stops")
                .unwrap();
        }
    }
}

/// Sends batches of 10 to `queue` every 100 ms until `stop`, with bodies `<queue>/g<k>/<n>`:
/// one for each k from 0 to 9, n counting the batches. On a FIFO queue `g<k>` is the message's
/// group and its body its deduplication id.
async fn produce(
    mut client: QueueClient,
    queue: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let fifo = queue.ends_with(".fifo");
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let bodies: Vec<(String, String)> = (0..10)
            .map(|g| (format!("g{g}"), format!("{queue}/g{g}/{n}")))
            .collect();
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, (group, body))| pb::SendMessageBatchEntry {
                id: i.to_string(),
                body: body.as_bytes().to_vec().into(),
                group_id: if fifo { group.clone() } else { String::new() },
                deduplication_id: if fifo { body.clone() } else { String::new() },
                ..Default::default()
            })
            .collect();
        let sent = client
            .send_message_batch(pb::SendMessageBatchRequest {
                queue: queue.clone(),
                entries,
            })
            .await;
        match sent {
            Ok(sent) => {
                let sent = sent.into_inner();
                let mut ledger = ledger.lock().unwrap();
                for ok in sent.successful {
                    let i: usize = ok.id.parse().unwrap();
                    ledger.acked.push(bodies[i].1.clone());
                }
            }
            // A FIFO group's next message must come after this one: a send that failed is
            // not followed by later ones of the same count, so the order checked holds.
            Err(status) => println!("{queue}: a batch failed: {status}"),
        }
        n += 1;
    }
}

/// Receives and deletes from `queue` while `consuming`, until `stop` and then until it has
/// been empty for 3 s. Records each FIFO group's order breaks: a message of a group whose
/// number is not above the last one received.
async fn consume(
    mut client: QueueClient,
    queue: String,
    ledger: Arc<Mutex<Ledger>>,
    consuming: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    out_of_order: Arc<Mutex<Vec<String>>>,
) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut empty_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed)
            && empty_since.is_some_and(|at| at.elapsed() > Duration::from_secs(3))
        {
            return;
        }
        if !consuming.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let got = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: queue.clone(),
                max_messages: 10,
                wait_time_seconds: Some(1),
                visibility_timeout_seconds: Some(60),
            })
            .await;
        let Ok(got) = got else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let messages = got.into_inner().messages;
        if messages.is_empty() {
            empty_since.get_or_insert_with(Instant::now);
            continue;
        }
        empty_since = None;
        {
            let mut ledger = ledger.lock().unwrap();
            for m in &messages {
                let body = String::from_utf8(m.body.to_vec()).unwrap();
                let mut parts = body.rsplitn(3, '/');
                let (n, group) = (parts.next().unwrap(), parts.next().unwrap());
                let n: u64 = n.parse().unwrap();
                if let Some(before) = last.insert(group.to_owned(), n) {
                    if queue.ends_with(".fifo") && n <= before {
                        out_of_order
                            .lock()
                            .unwrap()
                            .push(format!("{body} after {before}"));
                    }
                }
                *ledger.received.entry(body).or_default() += 1;
            }
        }
        let _ = client
            .delete_message_batch(pb::DeleteMessageBatchRequest {
                queue: queue.clone(),
                entries: delete_entries(&messages),
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_queue_spreads_to_the_other_cluster_and_back_losing_nothing_and_keeping_groups_in_order(
) {
    let dir = tempfile::tempdir().unwrap();
    // Against a capacity of 1,000 messages/s, a partition carries 100/s (in and out) at most:
    // 100/s sent and received makes a queue spread. The rebalancer's threshold is out of reach,
    // so no queue moves.
    let env = [
        ("SLUICE_LOAD_REPORT_INTERVAL_MS", "500"),
        ("SLUICE_WEIGHT_CPU", "0"),
        ("SLUICE_WEIGHT_BYTES", "0"),
        ("SLUICE_WEIGHT_STORAGE", "0"),
        ("SLUICE_WEIGHT_LATENCY", "0"),
        ("SLUICE_CAPACITY_MESSAGES_PER_SECOND", "1000"),
        ("SLUICE_PARTITION_SHARE", "0.1"),
        ("SLUICE_REBALANCE_THRESHOLD", "100"),
        ("SLUICE_REBALANCE_INTERVAL_MS", "1000"),
        ("SLUICE_REBALANCE_QUEUE_REST_MS", "2000"),
        // Drained partitions stay 15 s, answering retries by deduplication id meanwhile.
        ("SLUICE_SEALED_KEEP_MS", "15000"),
    ];
    let cluster = DevCluster::start(&dir.path().join("cluster"), &[], &env).unwrap();
    let mut client = cluster.client(0).unwrap();
    let queues = ["wide".to_owned(), "wide.fifo".to_owned()];
    create_queue(&mut client, "wide").await;
    sluice_tests::front::create_queue_with(
        &mut client,
        "wide.fifo",
        pb::QueueAttributes {
            fifo: true,
            ..Default::default()
        },
    )
    .await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Before the load: messages with deduplication ids, which a client sends again after the
    // queues spread. On the FIFO queue they are a group of their own.
    let deduplicated = |queue: &str| pb::SendMessageBatchRequest {
        queue: queue.to_owned(),
        entries: (0..10)
            .map(|i| pb::SendMessageBatchEntry {
                id: i.to_string(),
                body: format!("{queue}/retried/{i}").into_bytes().into(),
                deduplication_id: format!("retried-{i}"),
                group_id: if queue.ends_with(".fifo") {
                    "retried".into()
                } else {
                    String::new()
                },
                ..Default::default()
            })
            .collect(),
    };
    let mut first_ids = HashMap::new();
    for queue in &queues {
        let sent = client
            .send_message_batch(deduplicated(queue))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sent.successful.len(), 10, "{sent:?}");
        let mut ledger = ledger.lock().unwrap();
        for ok in sent.successful {
            ledger.acked.push(format!("{queue}/retried/{}", ok.id));
            first_ids.insert(format!("{queue}/{}", ok.id), ok.message_id);
        }
    }
    let mut load = Load::start(&cluster, &queues, &ledger);

    for queue in &queues {
        let shown = until_partitions(
            &cluster,
            queue,
            "an active partition on each cluster",
            |p| active_clusters(p) == ["a", "b"],
        )
        .await;
        println!("{queue} spread: {shown:?}");
    }
    // The FIFO queue sealed its first partition when it spread; the consumers drain it, and
    // the manager keeps it a while for its deduplication ids.
    until_partitions(&cluster, "wide.fifo", "the sealed partition drained", |p| {
        p.iter().any(|(_, sealed, n)| *sealed && *n == 0)
    })
    .await;
    // The client's retry, a new request with the same deduplication ids, through the other
    // frontend: answered from wherever the first send went, stored nowhere again.
    let mut other = cluster.client(1).unwrap();
    for queue in &queues {
        let again = other
            .send_message_batch(deduplicated(queue))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.successful.len(), 10, "{again:?}");
        for ok in again.successful {
            assert_eq!(
                Some(&ok.message_id),
                first_ids.get(&format!("{queue}/{}", ok.id)),
                "{queue}: the retry of entry {} has the first send's id",
                ok.id
            );
        }
    }
    until_partitions(&cluster, "wide.fifo", "the sealed partition removed", |p| {
        p.iter().all(|(_, sealed, _)| !sealed)
    })
    .await;

    // With the consumers held, what is sent piles up on both clusters.
    load.consuming.store(false, Ordering::Relaxed);
    for queue in &queues {
        let shown = until_partitions(&cluster, queue, "messages on both partitions", |p| {
            p.iter()
                .filter(|(_, sealed, visible)| !sealed && *visible >= 20)
                .count()
                == 2
        })
        .await;
        println!("{queue} with consumers held: {shown:?}");
    }

    // The sends stop with the consumers still held: the queues cool and retire a partition
    // that still holds messages. It is sealed and drained once the consumers go on, and then
    // removed.
    load.stop.store(true, Ordering::Relaxed);
    for queue in &queues {
        let shown = until_partitions(&cluster, queue, "a partition retired with messages", |p| {
            active_clusters(p).len() == 1 && p.iter().any(|(_, sealed, n)| *sealed && *n > 0)
        })
        .await;
        println!("{queue} retired a partition: {shown:?}");
    }
    load.consuming.store(true, Ordering::Relaxed);
    for queue in &queues {
        let shown =
            until_partitions(&cluster, queue, "one partition again", |p| p.len() == 1).await;
        println!("{queue} shrank back: {shown:?}");
    }
    load.join().await;
    let ledger = ledger.lock().unwrap();
    let lost: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|b| !ledger.received.contains_key(*b))
        .collect();
    let twice: Vec<(&String, &u32)> = ledger.received.iter().filter(|(_, n)| **n > 1).collect();
    let out_of_order = load.out_of_order.lock().unwrap();
    println!(
        "{} acknowledged, {} received, {} lost, {} received twice, {} out of order",
        ledger.acked.len(),
        ledger.received.len(),
        lost.len(),
        twice.len(),
        out_of_order.len()
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    assert!(
        twice.is_empty(),
        "received twice: {:?}",
        &twice[..twice.len().min(10)]
    );
    assert!(
        out_of_order.is_empty(),
        "out of order: {:?}",
        &out_of_order[..out_of_order.len().min(10)]
    );
    drop((client, other));
    cluster.stop().unwrap();
}
