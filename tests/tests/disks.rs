//! Disks that fail, with real processes: a file system the test makes small (a tmpfs with a
//! size) and fills, and an fsync that fails (a fail point of `sluice-backend-failpoints`, since
//! no real disk fails on demand).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_tests::disk::SmallDisk;
use sluice_tests::{free_port_range, queue_counts, Kind, ServerProcess};
use tonic::Code;

/// Writes a file of `bytes` real bytes (a sparse file would take no space).
fn ballast(path: &Path, bytes: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1024 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
}

/// Polls `attempt` until it succeeds, for up to 30 s.
async fn until_ok<T, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(status) => assert!(
                std::time::Instant::now() < deadline,
                "{what}: still {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(client: &mut sluice_client::QueueClient, body: &str) -> Result<(), tonic::Status> {
    client
        .send_message(pb::SendMessageRequest {
            queue: "orders".into(),
            body: body.to_owned().into_bytes().into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_sends_serves_receives_and_deletes_and_takes_sends_once_freed() {
    const RESERVE: u64 = 48 * 1024 * 1024;
    let disk = SmallDisk::mount(256);
    let mut server = ServerProcess::start_with(&disk.path.join("data"), |command| {
        command
            .arg("--min-free-disk-bytes")
            .arg(RESERVE.to_string());
    })
    .unwrap();
    let mut client = server.client().await.unwrap();
    sluice_tests::front::create_queue(&mut client, "orders").await;
    for n in 0..5 {
        send(&mut client, &format!("before-{n}")).await.unwrap();
    }

    // Fill the disk to 16 MiB free: below the reserve, with room for what deletes write.
    let filler = disk.path.join("ballast");
    ballast(&filler, disk.free().saturating_sub(16 * 1024 * 1024));
    let mut acked = 5;
    let refusal = loop {
        // The node reads the free space at most 100 ms late.
        match send(&mut client, &format!("filling-{acked}")).await {
            Ok(()) => acked += 1,
            Err(status) => break status,
        }
        assert!(acked < 1_000, "sends never refused on a full disk");
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("disk is nearly full"),
        "{refusal:?}"
    );
    let counts = queue_counts(&mut client, "orders").await;
    assert_eq!(counts.visible, acked, "a refused send stored something");

    // Receives and deletes go on.
    let received = client
        .receive_message(pb::ReceiveMessageRequest {
            queue: "orders".into(),
            max_messages: 2,
            wait_time_seconds: Some(0),
            visibility_timeout_seconds: Some(600),
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(received.len(), 2);
    client
        .delete_message(pb::DeleteMessageRequest {
            queue: "orders".into(),
            receipt_handle: received[0].receipt_handle.clone(),
        })
        .await
        .unwrap();

    // Space freed: sends go on by themselves.
    std::fs::remove_file(&filler).unwrap();
    until_ok("sends taken again", || {
        let mut client = client.clone();
        async move { send(&mut client, "after").await }
    })
    .await;
    let counts = queue_counts(&mut client, "orders").await;
    assert_eq!(counts.visible + counts.in_flight, acked - 1 + 1);
    assert!(server.exited().unwrap().is_none(), "the server stopped");
}

/// Sends one message at a time to a single node until one fails; the node must have stopped by
/// itself on the injected fsync failure, and every acknowledged message must be there when it
/// comes back on the same data directory (plain build).
async fn an_fsync_failure_stops_the_node(fail_point: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a1");
    let port = free_port_range(2).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let failpoints = format!("{fail_point}=40*off->return");
    let mut with_failpoint = vec![("FAILPOINTS", failpoints.as_str())];
    with_failpoint.extend_from_slice(env);
    let node = ServerProcess::start_replica(
        &sluice_tests::backend_failpoints_bin(),
        &data,
        "a1",
        port,
        &[],
        &with_failpoint,
    )
    .unwrap();
    let client = || BackendServiceClient::new(sluice_tests::channel_as(&url, Kind::Frontend));
    let put = pb::PutQueueRequest {
        queue_id: 1,
        config: Some(pb::EngineQueueConfig {
            name: "q".into(),
            retention_seconds: 3600,
            ..Default::default()
        }),
        first_sequence: 0,
    };
    until_ok("the node to serve", || {
        let (mut client, put) = (client(), put.clone());
        async move { client.put_queue(put).await }
    })
    .await;
    let mut acked = Vec::new();
    for n in 0..1_000 {
        let body = format!("m{n}");
        let mut request = tonic::Request::new(pb::SendRequest {
            queue_id: 1,
            messages: vec![pb::NewMessage {
                body: body.clone().into_bytes().into(),
                ..Default::default()
            }],
            idempotency_key: Default::default(),
        });
        request.set_timeout(Duration::from_secs(10));
        match client().send(request).await {
            Ok(_) => acked.push(body),
            Err(_) => break,
        }
    }
    assert!(
        !acked.is_empty(),
        "no send was acknowledged before the failure"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), node.wait_exit())
        .await
        .expect("the node stops by itself after a failed fsync")
        .unwrap();
    assert!(!status.success(), "{status:?}");
    println!(
        "{} sends acknowledged, then the node stopped: {status:?}",
        acked.len()
    );

    let _node =
        ServerProcess::start_replica(&sluice_tests::backend_bin(), &data, "a1", port, &[], env)
            .unwrap();
    let mut found = Vec::new();
    until_ok("the node to serve again", || {
        let mut client = client();
        async move { client.counts(pb::CountsRequest { queue_id: 1 }).await }
    })
    .await;
    loop {
        let messages = client()
            .receive(pb::ReceiveRequest {
                queue_id: 1,
                max_messages: 100,
                visibility_ms: 600_000,
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if messages.is_empty() {
            break;
        }
        found.extend(
            messages
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
        );
    }
    for body in &acked {
        assert!(found.contains(body), "{body} was acknowledged and is lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fsync_failure_of_the_raft_log_stops_the_node_and_it_comes_back_from_its_log() {
    an_fsync_failure_stops_the_node("backend::log_fsync_error", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fsync_failure_of_an_unreplicated_engine_stops_it_and_it_comes_back_from_its_wal() {
    an_fsync_failure_stops_the_node(
        "storage::wal_fsync_error",
        &[("SLUICE_UNREPLICATED", "true")],
    )
    .await;
}
