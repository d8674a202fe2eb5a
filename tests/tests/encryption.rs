//! Server-side encryption over a real 3-node replicated cluster: the bodies and attribute
//! values of an encrypted queue reach no file under the nodes' data directories (RocksDB
//! files, the Raft log, snapshots), while an unencrypted queue's do (so the scan can find what
//! it looks for), and after the master key is rotated every message still reads back.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_common::keys::MasterKeys;
use sluice_proto::v1 as pb;
use sluice_tests::{root_credentials, EtcdProcess, ServerProcess};

const MESSAGES: usize = 40;

fn write_key_file(path: &Path, keys: &[&str]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut file, keys.concat().as_bytes()).unwrap();
}

fn start_frontend(metadata: &ServerProcess, key_file: &Path) -> ServerProcess {
    ServerProcess::start_frontend_with(
        &[metadata.endpoint()],
        500,
        &["--master-key-file", key_file.to_str().unwrap()],
    )
    .unwrap()
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                found.push((path.display().to_string(), bytes));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn body(queue: &str, i: usize) -> String {
    format!("{queue}-body-{i:04}-a-known-sentence-to-look-for")
}

fn attribute(queue: &str, i: usize) -> String {
    format!("{queue}-attribute-{i:04}-another-known-value")
}

fn trace(queue: &str, i: usize) -> String {
    format!("Root=1-{queue}-trace-{i:04};Sampled=1")
}

async fn send_all(client: &mut sluice_client::QueueClient, queue: &str) {
    for i in 0..MESSAGES {
        let attributes = HashMap::from([(
            "note".to_owned(),
            pb::MessageAttributeValue {
                data_type: "String".into(),
                string_value: attribute(queue, i),
                ..Default::default()
            },
        )]);
        client
            .send_message(pb::SendMessageRequest {
                queue: queue.into(),
                body: body(queue, i).into_bytes().into(),
                attributes,
                trace_header: trace(queue, i),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// Receives every message of `queue` once and checks each is what was sent, MD5 included.
async fn read_back(client: &mut sluice_client::QueueClient, queue: &str) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "read back {} of {MESSAGES}",
            seen.len()
        );
        let received = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: queue.into(),
                max_messages: 10,
                visibility_timeout_seconds: Some(600),
                wait_time_seconds: Some(1),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        for message in received {
            let text = String::from_utf8(message.body.to_vec()).unwrap();
            let i: usize = text[queue.len() + "-body-".len()..][..4].parse().unwrap();
            assert_eq!(text, body(queue, i));
            assert_eq!(
                message.md5_of_body,
                sluice_api::md5_of_body(text.as_bytes())
            );
            assert_eq!(message.attributes["note"].string_value, attribute(queue, i));
            // The system attributes travel sealed with the rest and come out of the map.
            assert_eq!(message.attributes.len(), 1, "{:?}", message.attributes);
            assert_eq!(message.trace_header, trace(queue, i));
            assert_eq!(message.sender_id, "root");
            seen.push(i);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..MESSAGES).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_bodies_and_attributes_reach_no_backend_file_and_read_back_after_a_master_key_rotation(
) {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backends = dir.path().join("backends");
    let nodes = ServerProcess::start_replicated_cluster(&backends, &etcd.endpoint, "a", 3).unwrap();
    let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    let _manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let key_file = dir.path().join("master.key");
    let old = MasterKeys::generate();
    write_key_file(&key_file, &[&old]);
    let mut frontend = start_frontend(&metadata, &key_file);
    let mut client = sluice_tests::queue_client(frontend.channel(), root_credentials());

    // Encrypted by default; the control queue asks not to be.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, encrypt) in [("sealed", None), ("plain", Some(false))] {
        let created = loop {
            let attempt = client
                .create_queue(pb::CreateQueueRequest {
                    name: name.into(),
                    attributes: Some(pb::QueueAttributes {
                        server_side_encryption: encrypt,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
            match attempt {
                Ok(created) => break created.into_inner(),
                // The cluster may still be electing its first leader.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("cannot create {name}: {status:?}"),
            }
        };
        let attributes = created.queue.unwrap().attributes.unwrap();
        assert_eq!(attributes.server_side_encryption, Some(encrypt.is_none()));
    }
    send_all(&mut client, "sealed").await;
    send_all(&mut client, "plain").await;

    // The nodes' files: the plain queue's bodies, attributes and trace headers are there, the
    // sealed queue's are not, on any node.
    let on_disk = files(&backends);
    assert!(on_disk.len() > 10, "the nodes wrote their files");
    for i in 0..MESSAGES {
        for (needle, sealed) in [
            (body("plain", i), false),
            (attribute("plain", i), false),
            (trace("plain", i), false),
            (body("sealed", i), true),
            (attribute("sealed", i), true),
            (trace("sealed", i), true),
        ] {
            let holders: Vec<&str> = on_disk
                .iter()
                .filter(|(_, bytes)| contains(bytes, needle.as_bytes()))
                .map(|(path, _)| path.as_str())
                .collect();
            if sealed {
                assert!(
                    holders.is_empty(),
                    "{needle:?} in plain text in {holders:?}"
                );
            } else {
                assert!(!holders.is_empty(), "the scan finds {needle:?}");
            }
        }
    }

    // Rotation: the new key first and the old one still there, re-wrap, then the old key goes.
    let new = MasterKeys::generate();
    write_key_file(&key_file, &[&new, &old]);
    drop(frontend);
    frontend = start_frontend(&metadata, &key_file);
    let rotated = sluice_client::identity_client(frontend.channel(), root_credentials())
        .rotate_master_key(pb::RotateMasterKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rotated.master_key,
        MasterKeys::parse(&new).unwrap().current(),
        "sealed under the new key"
    );
    assert!(rotated.data_keys_rewrapped >= 1, "{rotated:?}");
    write_key_file(&key_file, &[&new]);
    drop(frontend);
    let frontend = start_frontend(&metadata, &key_file);
    let mut client = sluice_tests::queue_client(frontend.channel(), root_credentials());
    read_back(&mut client, "sealed").await;
    read_back(&mut client, "plain").await;
    drop(nodes);
}
