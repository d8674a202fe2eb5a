//! TLS on the public port and mutual TLS on the internal ones, over real processes: who gets
//! in, who is refused and how, certificates rotated on disk, and the refusal to run open
//! (without TLS or without authentication). Credentials and policies are in `auth.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use sluice_tests::{
    backend_bin, certs, free_port, frontend_bin, make_certs, metadata_bin, sluice_bin, tls_env,
    ClientTls, Kind, ServerProcess,
};
use tonic::transport::Channel;

/// A channel to `url` over TLS trusting `ca`, presenting `identity` if given.
fn tls_channel(url: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let tls = ClientTls::new(Some(ca), identity).unwrap();
    sluice_common::tls::channel(url, Some(Arc::new(tls)), |endpoint| endpoint).unwrap()
}

/// A plain-text channel to `addr`, whatever the process serves.
fn plain_channel(addr: std::net::SocketAddr) -> Channel {
    sluice_common::tls::channel(&format!("http://{addr}"), None, |endpoint| endpoint).unwrap()
}

/// Starts `sluice standalone` serving TLS with the certificate and key at `cert`/`key`.
fn standalone_tls(data: &Path, cert: &Path, key: &Path) -> ServerProcess {
    ServerProcess::start_with(data, |command| {
        command
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
    })
    .unwrap()
}

async fn list(channel: Channel) -> Result<Vec<String>, tonic::Status> {
    QueueServiceClient::new(channel)
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .map(|listed| listed.into_inner().names)
}

#[tokio::test]
async fn the_public_port_refuses_plain_text_and_clients_that_trust_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca");
    make_certs(&other).unwrap();
    let certs = certs();
    let server = standalone_tls(
        &dir.path().join("data"),
        &certs.join("frontend.pem"),
        &certs.join("frontend.key"),
    );
    let url = format!("https://{}", server.grpc_addr);

    let mut client = QueueServiceClient::new(tls_channel(&url, &certs.join("ca.pem"), None));
    client
        .create_queue(pb::CreateQueueRequest {
            name: "orders".into(),
            ..Default::default()
        })
        .await
        .expect("a client trusting the server's CA gets in, without a certificate of its own");

    let plain = list(plain_channel(server.grpc_addr)).await;
    assert!(
        matches!(&plain, Err(status) if sluice_api::error::is_transport_failure(status)),
        "a plain-text client was served: {plain:?}"
    );
    let distrusting = list(tls_channel(&url, &other.join("ca.pem"), None)).await;
    let refused = distrusting.expect_err("a client trusting another CA must not accept the server");
    assert!(
        refused.message().contains("certificate"),
        "the client says why: {refused:?}"
    );
    assert!(
        server
            .metric_sum("sluice_tls_handshakes_failed_total")
            .unwrap()
            >= 1.0
    );
    let listed = client
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.names,
        ["orders"],
        "the refused clients changed nothing"
    );
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_to_the_next_connection_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    make_certs(&first).unwrap();
    make_certs(&second).unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let install = |from: &Path| {
        // As Kubernetes updates a mounted Secret: new files swapped in whole.
        for (name, target) in [("frontend.pem", "tls.crt"), ("frontend.key", "tls.key")] {
            let tmp = served.join(format!("{target}.new"));
            std::fs::copy(from.join(name), &tmp).unwrap();
            std::fs::rename(&tmp, served.join(target)).unwrap();
        }
    };
    install(&first);
    let server = standalone_tls(
        &dir.path().join("data"),
        &served.join("tls.crt"),
        &served.join("tls.key"),
    );
    let url = format!("https://{}", server.grpc_addr);
    let (first_ca, second_ca) = (first.join("ca.pem"), second.join("ca.pem"));
    let kept = tls_channel(&url, &first_ca, None);
    list(kept.clone())
        .await
        .expect("the first certificate is served");
    assert!(list(tls_channel(&url, &second_ca, None)).await.is_err());

    install(&second);
    list(tls_channel(&url, &second_ca, None))
        .await
        .expect("the next connection is served the new certificate");
    assert!(
        list(tls_channel(&url, &first_ca, None)).await.is_err(),
        "the old certificate is no longer served"
    );
    list(kept)
        .await
        .expect("a connection opened before the rotation goes on working");
    assert!(server.metric_sum("sluice_tls_reloads_total").unwrap() >= 1.0);
}

/// A one-node replicated backend cluster: it serves both `BackendService` and Raft's
/// `ClusterService` on its internal port.
fn replicated_node(data: &Path) -> (ServerProcess, String) {
    let port = free_port().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let peers = format!("a1={url}");
    let node =
        ServerProcess::start_replica(&backend_bin(), data, "a1", port, &["--peers", &peers], &[])
            .unwrap();
    (node, url)
}

#[tokio::test]
async fn an_internal_port_takes_calls_only_from_sluice_certificates_of_the_right_kind() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca");
    make_certs(&other).unwrap();
    let (node, url) = replicated_node(&dir.path().join("a1"));
    let certs = certs();
    let ca = certs.join("ca.pem");
    let pair = |dir: &Path, kind: &str| {
        (
            dir.join(format!("{kind}.pem")),
            dir.join(format!("{kind}.key")),
        )
    };

    // A frontend may call BackendService: the call reaches the node (which knows no queue 7).
    let (cert, key) = pair(certs, "frontend");
    let as_frontend = tls_channel(&url, &ca, Some((&cert, &key)));
    let counts = BackendServiceClient::new(as_frontend.clone())
        .counts(pb::CountsRequest { queue_id: 7 })
        .await;
    assert!(
        !matches!(&counts, Err(status) if status.code() == tonic::Code::PermissionDenied
            || sluice_api::error::is_transport_failure(status)),
        "a frontend's call reaches BackendService: {counts:?}"
    );

    // Refused at the handshake: no certificate, or one from another CA.
    let handshakes = || {
        node.metric_sum("sluice_tls_handshakes_failed_total")
            .unwrap()
    };
    let before = handshakes();
    let anonymous = BackendServiceClient::new(tls_channel(&url, &ca, None))
        .counts(pb::CountsRequest { queue_id: 7 })
        .await;
    let refused_at_handshake = |result: &Result<_, tonic::Status>| matches!(result, Err(status) if sluice_api::error::is_transport_failure(status));
    assert!(
        refused_at_handshake(&anonymous),
        "a client without a certificate was served: {anonymous:?}"
    );
    let (cert, key) = pair(&other, "frontend");
    let foreign = BackendServiceClient::new(tls_channel(&url, &ca, Some((&cert, &key))))
        .counts(pb::CountsRequest { queue_id: 7 })
        .await;
    assert!(
        refused_at_handshake(&foreign),
        "a certificate from another CA was served: {foreign:?}"
    );
    assert!(
        handshakes() >= before + 2.0,
        "both were refused at the handshake"
    );
    let plain = BackendServiceClient::new(plain_channel(node.grpc_addr))
        .counts(pb::CountsRequest { queue_id: 7 })
        .await;
    assert!(
        refused_at_handshake(&plain),
        "a plain-text client was served: {plain:?}"
    );

    // A frontend's certificate is good, but not for Raft or the cluster's membership.
    let mut raft = ClusterServiceClient::new(as_frontend);
    let vote = raft
        .vote(pb::RaftMessage::default())
        .await
        .expect_err("a frontend may not vote");
    assert_eq!(vote.code(), tonic::Code::PermissionDenied, "{vote:?}");
    assert!(
        vote.message().contains("frontend") && vote.message().contains("ClusterService/Vote"),
        "the refusal names who and what: {}",
        vote.message()
    );
    let append = raft.append_entries(pb::RaftMessage::default()).await;
    assert_eq!(append.unwrap_err().code(), tonic::Code::PermissionDenied);
    let remove = raft
        .remove_node(pb::RemoveNodeRequest { name: "a1".into() })
        .await;
    assert_eq!(remove.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert!(node.metric_sum("sluice_grpc_access_denied_total").unwrap() >= 3.0);

    // An operator's certificate may read the cluster's status; the node is still its own
    // single member, so nothing above changed it.
    let (cert, key) = pair(certs, "admin");
    let status = ClusterServiceClient::new(tls_channel(&url, &ca, Some((&cert, &key))))
        .status(pb::ClusterStatusRequest {})
        .await
        .expect("an admin certificate reads the status")
        .into_inner();
    assert_eq!(status.members.len(), 1);
}

/// Runs `bin` with `args` until it exits (it must, refusing to start) or prints its ready line.
fn refuses_to_start(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .args(["--admin-addr", "127.0.0.1:0"])
        .env_remove("SLUICE_TLS_CERT")
        .env_remove("SLUICE_TLS_KEY")
        .env_remove("SLUICE_TLS_CA")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{bin:?} {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn services_refuse_to_run_open_unless_told_insecure_and_then_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a1");
    let data = data.to_str().unwrap();
    let open = [
        "--cluster",
        "a",
        "--node-id",
        "a1",
        "--data-dir",
        data,
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    let refused = refuses_to_start(&backend_bin(), &open);
    assert!(
        refused.contains("--tls-cert") && refused.contains("--insecure"),
        "the refusal says what to give: {refused}"
    );

    let mut insecure = Command::new(backend_bin());
    insecure
        .args(open)
        .args(["--admin-addr", "127.0.0.1:0", "--insecure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = insecure.spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.starts_with("INSECURE:"), "it says so first: {line}");

    // With TLS of its own, a service still refuses to reach etcd in plain text.
    let out = Command::new(metadata_bin())
        .args(["--etcd", "http://127.0.0.1:1", "--node-id", "m1"])
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .envs(tls_env(Kind::Metadata))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused.contains("plain text") && refused.contains("https://"),
        "{refused}"
    );

    // A frontend with TLS still refuses to let callers in without credentials.
    let out = Command::new(frontend_bin())
        .args(["--metadata", "https://127.0.0.1:1"])
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .envs(tls_env(Kind::Frontend))
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("SLUICE_MASTER_KEY_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused.contains("without authentication")
            && refused.contains("--master-key-file")
            && refused.contains("--insecure"),
        "{refused}"
    );

    // Standalone reachable from other machines needs credentials as well as TLS.
    let remote = dir.path().join("remote");
    let out = Command::new(sluice_bin())
        .args(["standalone", "--data-dir", remote.to_str().unwrap()])
        .args(["--grpc-addr", "0.0.0.0:0", "--admin-addr", "127.0.0.1:0"])
        .envs(tls_env(Kind::Frontend))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused.contains("--root-credentials-file") && refused.contains("other machines"),
        "{refused}"
    );

    // Standalone may run open on loopback only.
    let standalone = dir.path().join("standalone");
    let standalone = standalone.to_str().unwrap();
    let refused = refuses_to_start(
        &sluice_bin(),
        &[
            "standalone",
            "--data-dir",
            standalone,
            "--grpc-addr",
            "0.0.0.0:0",
        ],
    );
    assert!(
        refused.contains("--tls-cert") && refused.contains("127.0.0.1"),
        "{refused}"
    );
    let local = ServerProcess::start(&dir.path().join("local")).unwrap();
    assert!(!local.tls);
    list(plain_channel(local.grpc_addr)).await.unwrap();
}
