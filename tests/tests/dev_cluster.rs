//! `sluice dev cluster up` starts the whole distributed deployment as separate processes, serves
//! queues through its frontends, and stops everything on SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_common::credentials::Credentials;
use sluice_proto::v1 as pb;
use sluice_tests::{free_port_range, sluice_bin, ClientTls};

/// `sluice dev cluster up`, stopped with SIGINT (so it stops its parts) if the test fails first.
struct Up(Option<Child>);

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut up) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(up.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = up.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_cluster_serves_queues_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_range(44).unwrap();
    let mut up = Up(Some(
        Command::new(sluice_bin())
            .args([
                "dev",
                "cluster",
                "up",
                "--base-port",
                &base.to_string(),
                "--dir",
            ])
            .arg(dir.path().join("cluster"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    ));
    let stdout = up.0.as_mut().and_then(|up| up.stdout.take()).unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.starts_with("sluice dev cluster up:"))
        .expect("the cluster came up");
    std::thread::spawn(move || for _ in lines {});
    let frontends: Vec<String> = ready
        .split("frontends=")
        .nth(1)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(frontends.len(), 2);
    assert!(
        frontends.iter().all(|url| url.starts_with("https://")),
        "the dev cluster serves TLS: {frontends:?}"
    );

    // Clients trust the CA the cluster made for itself.
    let certs = dir.path().join("cluster").join("certs");
    let tls = Arc::new(ClientTls::new(Some(&certs.join("ca.pem")), None).unwrap());
    let channel = |url: &str| {
        sluice_common::tls::channel(url, Some(tls.clone()), |endpoint| endpoint).unwrap()
    };
    // And authenticate with its root key.
    let root = || {
        let text = std::fs::read_to_string(certs.join("root.credentials")).unwrap();
        let (id, secret) = text.trim().split_once(':').unwrap();
        Credentials::new(id, secret).unwrap()
    };
    let mut first = sluice_client::queue_client(channel(&frontends[0]), root());
    let mut second = sluice_client::queue_client(channel(&frontends[1]), root());
    first
        .create_queue(pb::CreateQueueRequest {
            name: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    first
        .send_message(pb::SendMessageRequest {
            queue: "orders".into(),
            body: b"hello".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = second
        .receive_message(pb::ReceiveMessageRequest {
            queue: "orders".into(),
            max_messages: 1,
            wait_time_seconds: Some(5),
            visibility_timeout_seconds: None,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.as_ref(), b"hello");
    drop((first, second));

    let mut up = up.0.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || up.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!dir.path().join("cluster").join("pids").exists());
    let frontend_port: u16 = frontends[0].rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], frontend_port).into(),
            Duration::from_millis(200)
        )
        .is_err(),
        "a frontend still listens after the cluster stopped"
    );
}
