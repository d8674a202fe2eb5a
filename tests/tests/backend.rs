//! A `sluice-backend` node as a real process with a real etcd: its membership key, the engine
//! over `BackendService` through the typed client, SIGKILL durability, and the public
//! `QueueService` working unchanged with the network between frontend and backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_api::cluster::{node_key, NodeRecord};
use sluice_api::{Error, NewMessage, QueueBackend, QueueConfig};
use sluice_client::{BackendClient, BackendClientOptions};
use sluice_frontend::auth::{AuthOpts, Authenticator};
use sluice_frontend::{Catalog, QueueServiceImpl};
use sluice_metastore::{EmbeddedStore, StoreDirectory};
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;
use sluice_tests::{EtcdProcess, ServerProcess};
use tonic::Request;

const QUEUE: u64 = 1;

async fn etcd_node(etcd: &EtcdProcess, cluster: &str, node: &str) -> Option<NodeRecord> {
    let mut client = etcd.client().await;
    let response = client
        .get(node_key("/sluice/", cluster, node), None)
        .await
        .unwrap();
    response
        .kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

/// Waits until the node's key is present (or absent), polling etcd.
async fn wait_for_membership(etcd: &EtcdProcess, node: &str, present: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while etcd_node(etcd, "a", node).await.is_some() != present {
        assert!(
            std::time::Instant::now() < deadline,
            "node {node} never became {}",
            if present {
                "registered"
            } else {
                "unregistered"
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(body: &str) -> NewMessage {
    NewMessage {
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// A client of `node` calling as a frontend does.
fn client_of(node: &ServerProcess) -> BackendClient {
    sluice_tests::install_client_tls(sluice_tests::Kind::Frontend);
    BackendClient::new(&node.endpoint(), BackendClientOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_registers_serves_the_engine_and_keeps_acknowledged_messages_across_sigkill() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = ServerProcess::start_backend(dir.path(), &etcd.endpoint, "a", "a1").unwrap();
    let record = etcd_node(&etcd, "a", "a1").await.expect("registered");
    assert_eq!(record.url, node.endpoint());

    let backend = client_of(&node);
    backend
        .create_queue(
            QUEUE,
            QueueConfig::standard("orders", Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    for batch in 0..10 {
        let messages = (0..10)
            .map(|i| message(&format!("m{}", batch * 10 + i)))
            .collect();
        let sent = backend.send(QUEUE, messages).await.unwrap();
        assert_eq!(sent.len(), 10);
    }
    let counts = backend.counts(QUEUE).await.unwrap();
    assert_eq!(counts.visible, 100);

    // Deliver and delete ten; the rest stay.
    let got = backend
        .receive(QUEUE, 10, Duration::from_secs(300), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
    let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    let deleted = backend.delete(QUEUE, handles.clone()).await.unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");

    // The engine's refusals cross the network with their codes.
    let garbled = backend
        .change_visibility(QUEUE, vec![("garbage".into(), Duration::ZERO)])
        .await
        .unwrap();
    assert!(
        matches!(&garbled[0], Err(Error::InvalidArgument { field, .. }) if field == "receipt_handle"),
        "{garbled:?}"
    );
    let gone = backend
        .change_visibility(QUEUE, vec![(handles[0].clone(), Duration::ZERO)])
        .await
        .unwrap();
    assert!(matches!(&gone[0], Err(Error::NotFound { .. })), "{gone:?}");
    let missing = backend.counts(99).await.unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");

    // SIGKILL: the node's lease lapses, calls fail as UNAVAILABLE, nothing acknowledged is lost.
    node.kill9().unwrap();
    let down = backend.counts(QUEUE).await.unwrap_err();
    assert!(matches!(down, Error::Unavailable(_)), "{down:?}");
    wait_for_membership(&etcd, "a1", false).await;

    let node = ServerProcess::start_backend(dir.path(), &etcd.endpoint, "a", "a1").unwrap();
    wait_for_membership(&etcd, "a1", true).await;
    let backend = client_of(&node);
    let counts = backend.counts(QUEUE).await.unwrap();
    assert_eq!(counts.visible + counts.in_flight, 90);
    let mut bodies = Vec::new();
    loop {
        let got = backend
            .receive(QUEUE, 10, Duration::from_secs(300), Duration::ZERO)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        bodies.extend(
            got.iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
    }
    bodies.sort();
    let mut expected: Vec<String> = (10..100).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected);

    // SIGTERM: the node leaves its cluster (the key goes at once, not after the lease TTL).
    let status = node.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(etcd_node(&etcd, "a", "a1").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_service_works_unchanged_over_a_remote_backend() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node =
        ServerProcess::start_backend(&dir.path().join("node"), &etcd.endpoint, "a", "a1").unwrap();
    let meta = EmbeddedStore::open(&dir.path().join("meta")).unwrap();
    let directory = Arc::new(StoreDirectory::new(Arc::new(meta)));
    // Callers without credentials are let in, as by standalone on loopback.
    let auth = Authenticator::new(directory.clone(), None, &AuthOpts::default(), true).unwrap();
    let service = QueueServiceImpl::new(
        Catalog::new(directory),
        Arc::new(client_of(&node)),
        Arc::new(auth),
    );

    for (name, dlq) in [("jobs-dead", None), ("jobs", Some("jobs-dead"))] {
        service
            .create_queue(Request::new(pb::CreateQueueRequest {
                name: name.into(),
                attributes: Some(pb::QueueAttributes {
                    redrive_policy: dlq.map(|dlq| pb::RedrivePolicy {
                        dead_letter_queue: dlq.into(),
                        max_receive_count: 1,
                    }),
                    ..Default::default()
                }),
                tags: HashMap::new(),
            }))
            .await
            .unwrap();
    }
    let sent = service
        .send_message(Request::new(pb::SendMessageRequest {
            queue: "jobs".into(),
            body: b"hello".to_vec().into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let receive = |queue: &'static str| {
        service.receive_message(Request::new(pb::ReceiveMessageRequest {
            queue: queue.into(),
            max_messages: 10,
            wait_time_seconds: Some(0),
            visibility_timeout_seconds: Some(0),
        }))
    };
    let first = receive("jobs").await.unwrap().into_inner().messages;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message_id, sent.message_id);
    assert_eq!(first[0].md5_of_body, sent.md5_of_body);
    // Received once already: the next receive moves it to the dead-letter queue.
    assert!(receive("jobs")
        .await
        .unwrap()
        .into_inner()
        .messages
        .is_empty());
    let dead = receive("jobs-dead").await.unwrap().into_inner().messages;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_letter_source_queue, "jobs");

    let handle = service
        .start_message_move_task(Request::new(pb::StartMessageMoveTaskRequest {
            source: "jobs-dead".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .task_handle;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = service
            .list_message_move_tasks(Request::new(pb::ListMessageMoveTasksRequest {
                source: "jobs-dead".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .tasks;
        let task = tasks.iter().find(|t| t.task_handle == handle).unwrap();
        if task.status() == pb::MessageMoveTaskStatus::Completed {
            assert_eq!(task.moved, 1);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{tasks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = receive("jobs").await.unwrap().into_inner().messages;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id, sent.message_id);

    // The first delivery's receipt names a message that has since moved twice: its refusal keeps
    // its code across the network.
    let gone = service
        .change_message_visibility(Request::new(pb::ChangeMessageVisibilityRequest {
            queue: "jobs".into(),
            receipt_handle: first[0].receipt_handle.clone(),
            visibility_timeout_seconds: 5,
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_lease_is_lost_registers_again() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _node = ServerProcess::start_backend(dir.path(), &etcd.endpoint, "a", "a1").unwrap();
    let mut client = etcd.client().await;
    let key = node_key("/sluice/", "a", "a1");
    let lease = client.get(key.clone(), None).await.unwrap().kvs()[0].lease();
    // As if etcd had lost the node for longer than the TTL: the lease and its keys go.
    client.lease_revoke(lease).await.unwrap();
    assert!(client
        .get(key.clone(), None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
    wait_for_membership(&etcd, "a1", true).await;
    let again = client.get(key, None).await.unwrap().kvs()[0].lease();
    assert_ne!(again, lease, "registered under a new lease");
}
