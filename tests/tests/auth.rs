//! Authenticated callers and per-queue permissions over real processes: who gets in with which
//! credentials, what a principal's policy lets it do, that a refused call changes nothing,
//! that a revoked or rotated-out key stops working on every frontend, that failed attempts are
//! limited per source, and that the audit log says who did what.

use std::time::{Duration, Instant};

use sluice_client::{IdentityClient, QueueClient};
use sluice_common::credentials::Credentials;
use sluice_proto::v1 as pb;
use sluice_tests::front::TwoFrontends;
use sluice_tests::{queue_counts, root_credentials, ServerProcess};
use tonic::Code;

/// The tests' deployment, `sluice_tests::front::TwoFrontends`, with a client of each public
/// service presenting given credentials.
struct Deployment(TwoFrontends);

impl Deployment {
    fn start() -> Deployment {
        Deployment(TwoFrontends::start())
    }

    fn queues(&self, i: usize, credentials: &Credentials) -> QueueClient {
        sluice_client::queue_client(self.0.frontends[i].channel(), credentials.clone())
    }

    fn identity(&self, i: usize, credentials: &Credentials) -> IdentityClient {
        sluice_client::identity_client(self.0.frontends[i].channel(), credentials.clone())
    }
}

fn send(queue: &str, body: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        queue: queue.into(),
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, says: &[&str]) {
    let status = result.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{status:?}");
    for word in says {
        assert!(status.message().contains(word), "{word:?} in {status:?}");
    }
}

/// A new key for `principal`: its id, its secret, and the two as a client presents them.
async fn new_key(identity: &mut IdentityClient, principal: &str) -> (String, String, Credentials) {
    let created = identity
        .create_access_key(pb::CreateAccessKeyRequest {
            principal: principal.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.key.unwrap().id;
    let credentials = Credentials::new(&id, &created.secret).unwrap();
    (id, created.secret, credentials)
}

/// Grants `principal` the `actions` on `queues`, as an admin.
async fn grant(identity: &mut IdentityClient, principal: &str, actions: &[&str], queues: &str) {
    identity
        .grant(pb::GrantRequest {
            principal: principal.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            queues: queues.into(),
        })
        .await
        .unwrap();
}

/// Receives every message of `queue` (as root, which may) and returns their bodies, sorted.
async fn bodies(client: &mut QueueClient, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let received = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: queue.into(),
                max_messages: 10,
                visibility_timeout_seconds: Some(600),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if received.is_empty() {
            break;
        }
        bodies.extend(received.into_iter().map(|m| {
            format!(
                "{} by {}",
                String::from_utf8(m.body.to_vec()).unwrap(),
                m.sender_id
            )
        }));
    }
    bodies.sort();
    bodies
}

/// Sends with `credentials` through frontend `i` until refused; how long that took.
async fn until_unauthenticated(
    deployment: &Deployment,
    i: usize,
    credentials: &Credentials,
) -> Duration {
    let started = Instant::now();
    let mut client = deployment.queues(i, credentials);
    loop {
        match client.send_message(send("orders-1", "probe")).await {
            Err(status) if status.code() == Code::Unauthenticated => return started.elapsed(),
            Err(status) => panic!("unexpected refusal: {status:?}"),
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "frontend {i} still takes the key"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_and_policies_decide_every_call_and_a_refused_call_changes_nothing() {
    let deployment = Deployment::start();
    let root = root_credentials();
    let mut admin = deployment.queues(0, &root);
    for name in ["orders-1", "billing"] {
        admin
            .create_queue(pb::CreateQueueRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        admin.send_message(send(name, "before")).await.unwrap();
    }
    let mut identity = deployment.identity(0, &root);
    identity
        .create_principal(pb::CreatePrincipalRequest {
            name: "svc".into(),
            admin: false,
        })
        .await
        .unwrap();
    grant(&mut identity, "svc", &["send"], "orders-*").await;
    let (first_id, _, first) = new_key(&mut identity, "svc").await;

    // Allowed: send to orders-*, through either frontend.
    for i in 0..2 {
        deployment
            .queues(i, &first)
            .send_message(send("orders-1", &format!("svc via {i}")))
            .await
            .unwrap();
    }

    // Denied, naming the action and the queue.
    let mut svc = deployment.queues(1, &first);
    assert_refused(
        svc.receive_message(pb::ReceiveMessageRequest {
            queue: "orders-1".into(),
            max_messages: 10,
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        &["\"svc\"", "receive", "\"orders-1\""],
    );
    assert_refused(
        svc.purge_queue(pb::PurgeQueueRequest {
            name: "orders-1".into(),
        })
        .await,
        Code::PermissionDenied,
        &["purge", "\"orders-1\""],
    );
    assert_refused(
        svc.delete_queue(pb::DeleteQueueRequest {
            name: "orders-1".into(),
        })
        .await,
        Code::PermissionDenied,
        &["delete_queue", "\"orders-1\""],
    );
    assert_refused(
        svc.send_message(send("billing", "not allowed")).await,
        Code::PermissionDenied,
        &["send", "\"billing\""],
    );
    assert_refused(
        deployment
            .identity(1, &first)
            .grant(pb::GrantRequest {
                principal: "svc".into(),
                actions: vec!["receive".into()],
                queues: "*".into(),
            })
            .await,
        Code::PermissionDenied,
        &["admin"],
    );
    // It sees only the queues it may use.
    let listed = svc
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(listed, ["orders-1"]);

    // Missing, malformed, unknown and wrong credentials.
    let wrong_secret =
        Credentials::new(&first_id, "0123456789abcdefghij0123456789abcdefghij").unwrap();
    let unknown = Credentials::new("SLKAAAAAAAAAAAAAAAAA", "whatever-secret-0123456789").unwrap();
    for credentials in [Credentials::none(), wrong_secret, unknown] {
        assert_refused(
            deployment
                .queues(0, &credentials)
                .send_message(send("orders-1", "refused"))
                .await,
            Code::Unauthenticated,
            &["credentials"],
        );
    }

    // Rotated out at once: the old key stops on both frontends (the one that did not rotate
    // hears it from the metadata tier's watch), the new one works.
    let heard_before = deployment.0.frontends[1]
        .metric_sample("sluice_identity_changes_total{kind=\"key\"}")
        .unwrap();
    let rotated = identity
        .rotate_access_key(pb::RotateAccessKeyRequest {
            id: first_id.clone(),
            grace_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let second_id = rotated.key.unwrap().id;
    let second = Credentials::new(&second_id, &rotated.secret).unwrap();
    for i in 0..2 {
        until_unauthenticated(&deployment, i, &first).await;
        deployment
            .queues(i, &second)
            .send_message(send("orders-1", &format!("rotated via {i}")))
            .await
            .unwrap();
    }
    assert!(
        deployment.0.frontends[1]
            .metric_sample("sluice_identity_changes_total{kind=\"key\"}")
            .unwrap()
            > heard_before,
        "the other frontend heard of the rotation from the watch"
    );

    // Rotated with a grace period: both keys work until the old one expires.
    let graced = identity
        .rotate_access_key(pb::RotateAccessKeyRequest {
            id: second_id.clone(),
            grace_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(graced.replaced.unwrap().expires_at_ms.is_some());
    let third = Credentials::new(&graced.key.unwrap().id, &graced.secret).unwrap();
    for credentials in [&second, &third] {
        deployment
            .queues(1, credentials)
            .send_message(send("orders-1", "graced"))
            .await
            .unwrap();
    }

    // Revoked: gone on both frontends.
    identity
        .revoke_access_key(pb::RevokeAccessKeyRequest { id: second_id })
        .await
        .unwrap();
    for i in 0..2 {
        until_unauthenticated(&deployment, i, &second).await;
    }

    // Counts and contents: exactly what the allowed calls sent.
    let counts = queue_counts(&mut admin, "billing").await;
    assert_eq!(counts.visible, 1);
    assert_eq!(bodies(&mut admin, "billing").await, ["before by root"]);
    // Each message names the principal whose key sent it.
    assert_eq!(
        bodies(&mut admin, "orders-1").await,
        [
            "before by root",
            "graced by svc",
            "graced by svc",
            "rotated via 0 by svc",
            "rotated via 1 by svc",
            "svc via 0 by svc",
            "svc via 1 by svc"
        ]
    );

    // A deleted principal's keys stop working everywhere.
    let deleted = identity
        .delete_principal(pb::DeletePrincipalRequest { name: "svc".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.keys_deleted, 1);
    for i in 0..2 {
        until_unauthenticated(&deployment, i, &third).await;
    }
}

/// Standalone with a root key on loopback: callers must authenticate.
fn standalone_with_root(data: &std::path::Path, log: &std::path::Path) -> ServerProcess {
    let certs = sluice_tests::certs();
    let log = std::fs::File::create(log).unwrap();
    let mut server = ServerProcess::start_with(data, |command| {
        command
            .arg("--root-credentials-file")
            .arg(certs.join("root.credentials"))
            .env("RUST_LOG", "warn,sluice::audit=info")
            .stderr(log);
    })
    .unwrap();
    server.credentials = root_credentials();
    server
}

#[tokio::test]
async fn failed_attempts_are_limited_per_source_and_the_audit_log_says_who_did_what() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let server = standalone_with_root(&dir.path().join("data"), &log);
    let root = root_credentials();
    let mut admin = server.client().await.unwrap();
    admin
        .create_queue(pb::CreateQueueRequest {
            name: "orders-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut identity = sluice_client::identity_client(server.channel(), root.clone());
    identity
        .create_principal(pb::CreatePrincipalRequest {
            name: "svc".into(),
            admin: false,
        })
        .await
        .unwrap();
    let (id, secret, svc) = new_key(&mut identity, "svc").await;
    assert_refused(
        sluice_client::queue_client(server.channel(), svc.clone())
            .purge_queue(pb::PurgeQueueRequest {
                name: "orders-1".into(),
            })
            .await,
        Code::PermissionDenied,
        &["purge"],
    );
    // Without credentials, standalone with a root key lets no one in.
    assert_refused(
        sluice_client::queue_client(server.channel(), Credentials::none())
            .list_queues(pb::ListQueuesRequest::default())
            .await,
        Code::Unauthenticated,
        &["no credentials"],
    );

    // Guessing: every wrong secret is refused, until the source is over its budget; then even
    // the right key is refused from that source for a while, with a time to retry after.
    let mut refused_for_guessing = None;
    for attempt in 0..100 {
        let guess = Credentials::new(&id, &format!("guess-{attempt:034}")).unwrap();
        let result = sluice_client::queue_client(server.channel(), guess)
            .list_queues(pb::ListQueuesRequest::default())
            .await;
        match result {
            Err(status) if status.code() == Code::Unauthenticated => continue,
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused_for_guessing = Some(status);
                break;
            }
            other => panic!("a guess was answered with {other:?}"),
        }
    }
    let status = refused_for_guessing.expect("guessing is cut off");
    assert!(
        sluice_api::error::retry_after(&status).is_some(),
        "{status:?}"
    );
    let right = sluice_client::queue_client(server.channel(), svc)
        .list_queues(pb::ListQueuesRequest::default())
        .await;
    assert_eq!(right.unwrap_err().code(), Code::ResourceExhausted);
    assert!(
        server
            .metric_sample("sluice_auth_failures_total{reason=\"blocked\"}")
            .unwrap()
            >= 2.0
    );

    // The audit log: one structured line per attempt at a change, never a secret.
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sluice::audit"))
        .collect();
    let has = |words: &[&str]| audit.iter().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(
        has(&[
            "principal=\"root\"",
            "action=\"create_queue\"",
            "queue=\"orders-1\"",
            "outcome=\"OK\""
        ]),
        "{audit:#?}"
    );
    assert!(
        has(&[
            "principal=\"root\"",
            "action=\"create_principal\"",
            "subject=\"svc\"",
            "outcome=\"OK\""
        ]),
        "{audit:#?}"
    );
    assert!(
        has(&[
            "principal=\"root\"",
            "action=\"create_access_key\"",
            "subject=\"svc\""
        ]),
        "{audit:#?}"
    );
    assert!(
        has(&[
            "principal=\"svc\"",
            "action=\"purge\"",
            "queue=\"orders-1\"",
            "outcome=\"PERMISSION_DENIED\""
        ]),
        "{audit:#?}"
    );
    let (root_id, root_secret) = sluice_tests::root_key();
    assert!(!text.contains(&secret), "a secret reached the log");
    assert!(
        !text.contains(&root_secret),
        "the root secret reached the log"
    );
    assert!(
        !text.contains(&format!("{root_id}:")),
        "credentials reached the log"
    );
}

#[tokio::test]
async fn the_cli_manages_principals_keys_and_policies_and_uses_a_key() {
    let dir = tempfile::tempdir().unwrap();
    // Standalone on loopback without a root key lets the operator in without credentials.
    let server = ServerProcess::start(&dir.path().join("data")).unwrap();
    server.cli_ok(&["queue", "create", "orders-1"]);
    server.cli_ok(&["queue", "create", "billing"]);
    server.cli_ok(&["admin", "principal", "create", "svc"]);
    let granted = server.cli_ok(&[
        "admin",
        "grant",
        "svc",
        "--actions",
        "send,receive,delete",
        "--queues",
        "orders-*",
    ]);
    assert!(
        granted.contains("send, receive, delete on orders-*"),
        "{granted}"
    );
    let created = server.cli_ok(&["--json", "admin", "key", "create", "svc"]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let (id, secret) = (
        created["key"]["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let listed = server.cli_ok(&["admin", "key", "list", "--principal", "svc"]);
    assert!(
        listed.contains(&id) && !listed.contains(&secret),
        "{listed}"
    );

    let as_svc = |args: &[&str]| {
        std::process::Command::new(sluice_tests::sluice_bin())
            .args(args)
            .env("SLUICE_ENDPOINT", server.endpoint())
            .env("SLUICE_ACCESS_KEY_ID", &id)
            .env("SLUICE_SECRET_ACCESS_KEY", &secret)
            .output()
            .unwrap()
    };
    assert!(as_svc(&["send", "orders-1", "hello"]).status.success());
    let out = as_svc(&["receive", "orders-1", "--delete"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    let out = as_svc(&["send", "billing", "x"]);
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && refused.contains("PERMISSION_DENIED")
            && refused.contains("billing"),
        "{refused}"
    );
    let policy = String::from_utf8(as_svc(&["admin", "policy", "show"]).stdout).unwrap();
    assert!(policy.contains("principal svc"), "{policy}");

    server.cli_ok(&[
        "admin",
        "revoke",
        "svc",
        "--actions",
        "receive",
        "--queues",
        "orders-*",
    ]);
    let out = as_svc(&["receive", "orders-1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    server.cli_ok(&["admin", "key", "revoke", &id]);
    let out = as_svc(&["send", "orders-1", "late"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
    let deleted = server.cli_ok(&["admin", "principal", "delete", "svc"]);
    assert!(deleted.contains("deleted principal svc"), "{deleted}");
}

#[tokio::test]
async fn a_dead_letter_is_read_only_by_a_caller_who_may_read_the_queue_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let server = standalone_with_root(&dir.path().join("data"), &dir.path().join("log"));
    let mut admin = server.client().await.unwrap();
    for (name, dlq) in [("dead", None), ("orders-1", Some("dead"))] {
        admin
            .create_queue(pb::CreateQueueRequest {
                name: name.into(),
                attributes: Some(pb::QueueAttributes {
                    redrive_policy: dlq.map(|dlq| pb::RedrivePolicy {
                        dead_letter_queue: dlq.into(),
                        max_receive_count: 1,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    admin
        .send_message(send("orders-1", "poison"))
        .await
        .unwrap();
    let receive = |queue: &str| pb::ReceiveMessageRequest {
        queue: queue.into(),
        max_messages: 10,
        visibility_timeout_seconds: Some(0),
        ..Default::default()
    };
    // Received once and visible again at once: the next receive moves it to the dead letters.
    let first = admin.receive_message(receive("orders-1")).await.unwrap();
    assert_eq!(first.into_inner().messages.len(), 1);
    let second = admin.receive_message(receive("orders-1")).await.unwrap();
    assert!(second.into_inner().messages.is_empty());

    let mut identity = sluice_client::identity_client(server.channel(), root_credentials());
    identity
        .create_principal(pb::CreatePrincipalRequest {
            name: "ops".into(),
            admin: false,
        })
        .await
        .unwrap();
    grant(&mut identity, "ops", &["receive"], "dead").await;
    let (_, _, ops) = new_key(&mut identity, "ops").await;
    let mut ops_client = sluice_client::queue_client(server.channel(), ops);
    assert_refused(
        ops_client.receive_message(receive("dead")).await,
        Code::PermissionDenied,
        &["\"ops\"", "receive", "\"orders-1\"", "\"dead\""],
    );
    // Withheld and visible again at once: one who may read both queues gets it.
    let dead = admin
        .receive_message(receive("dead"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.messages.len(), 1);
    assert_eq!(&dead.messages[0].body[..], b"poison");
    grant(&mut identity, "ops", &["receive"], "orders-*").await;
    let read = ops_client.receive_message(receive("dead")).await.unwrap();
    assert_eq!(read.into_inner().messages.len(), 1);
}
