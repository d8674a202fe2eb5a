//! `sluice top` reads every process of the dev cluster and shows who is up, each cluster's
//! leader and log, the message rates and the backlog; a node that dies shows as down.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_proto::v1 as pb;
use sluice_tests::dev::DevCluster;
use sluice_tests::front::create_queue;
use sluice_tests::sluice_bin;

/// `sluice top --once` over the dev cluster in `dir`.
fn top(dir: &std::path::Path) -> String {
    let out = Command::new(sluice_bin())
        .args(["top", "--once", "--interval", "2s", "--targets"])
        .arg(dir.join("prometheus").join("targets.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice top failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The row of `cluster` in the clusters section.
fn cluster_row<'a>(view: &'a str, cluster: &str) -> &'a str {
    view.lines()
        .find(|line| line.split_whitespace().next() == Some(cluster))
        .unwrap_or_else(|| panic!("no row for cluster {cluster}:\n{view}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sluice_top_shows_clusters_leaders_rates_and_backlog_and_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(&dir.path().join("cluster"), &[], &[]).unwrap();
    let mut client = cluster.client(0).unwrap();
    create_queue(&mut client, "orders").await;
    // Sends go on while top takes its two readings.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut client = cluster.client(1).unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .send_message(pb::SendMessageRequest {
                        queue: "orders".into(),
                        body: b"hello".to_vec().into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let view = tokio::task::spawn_blocking({
        let dir = cluster.dir.clone();
        move || top(&dir)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!("{view}");
    assert!(view.contains("backend 6/6"), "{view}");
    assert!(view.contains("frontend 2/2"), "{view}");
    for name in ["a", "b"] {
        let row = cluster_row(&view, name);
        let leader = row.split_whitespace().nth(1).unwrap();
        assert!(
            leader.starts_with(name),
            "cluster {name} shows leader {leader}: {row}"
        );
    }
    let sent: f64 = view
        .split("sent ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no send rate in:\n{view}"));
    assert!(sent > 0.0, "no sends per second while sending:\n{view}");
    let orders = view
        .lines()
        .find(|line| line.starts_with("orders "))
        .unwrap_or_else(|| panic!("no backlog row for orders:\n{view}"));
    let visible: f64 = orders.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(visible > 0.0, "{orders}");

    // A follower of cluster b dies: top says so.
    let leader_b = cluster_row(&view, "b")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let follower = ["b1", "b2", "b3"]
        .into_iter()
        .find(|n| *n != leader_b)
        .unwrap();
    let pid = cluster.pid(&format!("backend-{follower}")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let dir = cluster.dir.clone();
    let view = tokio::task::spawn_blocking(move || top(&dir))
        .await
        .unwrap();
    assert!(
        view.contains(&format!("backend 5/6 (down: {follower})")),
        "{view}"
    );
    assert!(
        cluster_row(&view, "b").contains(&format!("{follower} DOWN")),
        "{view}"
    );
}
