//! The operator's view, proven: the files under `deploy/grafana/` and `deploy/prometheus/` are
//! what `libs/monitoring` renders; promtool accepts the rules and their unit tests pass; every
//! alert has a runbook; and on a dev cluster under load, scraped by a real Prometheus, every
//! dashboard query returns data (or is one that is expected to be empty), and killing a backend
//! leader and filling a queue make the matching alerts go pending or firing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_monitoring::alerts::{self, Thresholds};
use sluice_monitoring::catalog;
use sluice_monitoring::dashboards::{self, Expect};
use sluice_proto::v1 as pb;
use sluice_tests::dev::DevCluster;
use sluice_tests::front::create_queue_with;
use sluice_tests::prometheus::Prometheus;
use sluice_tests::wait_for;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_owned()
}

#[test]
fn deploy_files_are_what_libs_monitoring_renders() {
    for (path, rendered) in sluice_monitoring::render(&Thresholds::default()) {
        let committed = repo().join("deploy").join(&path);
        let text = std::fs::read_to_string(&committed)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", committed.display()));
        assert!(
            text == rendered,
            "deploy/{} differs from what libs/monitoring renders: run `sluice monitoring render`",
            path.display()
        );
    }
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy").join("prometheus"))
        .output()
        .expect("promtool runs (install Debian's prometheus: ./scripts/setup.sh)");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_every_alert_fires_and_stays_quiet_in_its_unit_tests() {
    promtool(&["check", "rules", "sluice-alerts.yaml"]);
    promtool(&["test", "rules", "sluice-alerts.test.yaml"]);
    // Each alert has a firing case and a quiet one in the tests promtool just ran.
    let tests = std::fs::read_to_string(
        repo()
            .join("deploy")
            .join("prometheus")
            .join("sluice-alerts.test.yaml"),
    )
    .unwrap();
    for alert in alerts::all(&Thresholds::default()) {
        let cases = tests
            .matches(&format!("alertname: \"{}\"\n", alert.name))
            .count();
        assert_eq!(cases, 2, "{} has {cases} promtool cases", alert.name);
    }
}

#[test]
fn every_alert_links_to_its_runbook_entry() {
    let runbooks = std::fs::read_to_string(repo().join("docs").join("runbooks.md")).unwrap();
    for alert in alerts::all(&Thresholds::default()) {
        let heading = format!("\n## {}\n", alert.name);
        assert!(
            runbooks.contains(&heading),
            "docs/runbooks.md has no entry for {}",
            alert.name
        );
        assert_eq!(
            alert.runbook_url,
            format!("docs/runbooks.md#{}", alert.name.to_lowercase())
        );
    }
}

/// A dashboard query with its template variables set to "All" and Grafana's rate interval to
/// a minute (many scrapes at the dev cluster's one a second).
fn instantiate(expr: &str) -> String {
    let mut expr = expr.replace(dashboards::RATE, "1m");
    for variable in ["namespace", "cluster", "node", "queue"] {
        expr = expr.replace(&format!("${variable}"), ".*");
    }
    expr
}

/// Keeps every part of the cluster busy until `stop`: sends, receives, deletes, empty
/// receives, sends over a queue's rate limit and sends to a queue that does not exist. Errors
/// are expected (a killed leader, the limit) and ignored.
async fn load(mut client: sluice_client::QueueClient, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let _ = client.send_message_batch(batch("orders", 10, None)).await;
        if let Ok(received) = client
            .receive_message(receive("orders", 10, Some(30)))
            .await
        {
            for message in received.into_inner().messages {
                let _ = client
                    .delete_message(pb::DeleteMessageRequest {
                        queue: "orders".into(),
                        receipt_handle: message.receipt_handle,
                    })
                    .await;
            }
        }
        let _ = client.receive_message(receive("empty", 1, None)).await;
        let _ = client.send_message_batch(batch("limited", 10, None)).await;
        let _ = client.send_message_batch(batch("missing", 1, None)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SQS clients of the frontend's SQS endpoint, until `stop`: a send and a receive of `orders`
/// through the AWS SDK, and a call for a queue that does not exist.
async fn sqs_load(client: aws_sdk_sqs::Client, url: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let _ = client
            .send_message()
            .queue_url(&url)
            .message_body("over sqs")
            .send()
            .await;
        let _ = client.receive_message().queue_url(&url).send().await;
        let _ = client.get_queue_url().queue_name("missing").send().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batch(queue: &str, count: usize, delay_seconds: Option<u32>) -> pb::SendMessageBatchRequest {
    pb::SendMessageBatchRequest {
        queue: queue.into(),
        entries: (0..count)
            .map(|i| pb::SendMessageBatchEntry {
                id: i.to_string(),
                body: format!("message {i}").into_bytes().into(),
                delay_seconds,
                ..Default::default()
            })
            .collect(),
    }
}

fn receive(queue: &str, max: u32, visibility: Option<u32>) -> pb::ReceiveMessageRequest {
    pb::ReceiveMessageRequest {
        queue: queue.into(),
        max_messages: max,
        wait_time_seconds: Some(0),
        visibility_timeout_seconds: visibility,
    }
}

fn redrive_to(dead_letter_queue: &str) -> pb::QueueAttributes {
    pb::QueueAttributes {
        redrive_policy: Some(pb::RedrivePolicy {
            dead_letter_queue: dead_letter_queue.into(),
            max_receive_count: 1,
        }),
        ..Default::default()
    }
}

/// Waits until alert `name` (with `label` if given) is pending or firing.
async fn until_alert(prometheus: &Prometheus, name: &str, label: Option<(&str, &str)>) {
    wait_for(
        &format!("alert {name} {label:?}"),
        Duration::from_secs(90),
        || {
            Ok(prometheus.alerts()?.iter().any(|alert| {
                alert.name == name
                    && (alert.state == "pending" || alert.state == "firing")
                    && label.is_none_or(|(key, value)| {
                        alert.labels.get(key).and_then(|v| v.as_str()) == Some(value)
                    })
            }))
        },
    )
    .await
    .unwrap();
}

/// Between these lines `docs/metrics.md` is what the services serve.
const DOC_START: &str =
    "<!-- generated from the services' /metrics by tests/tests/monitoring.rs -->\n";
const DOC_END: &str = "<!-- end of generated part -->\n";

/// `docs/metrics.md` lists exactly the metrics every service of the cluster serves (all but
/// `dead`, which was killed), after the load and faults that bring out the lazily made ones.
/// `SLUICE_BLESS=1` writes the document instead of comparing.
fn check_metrics_doc(cluster: &DevCluster, dead: &str) {
    let targets: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir.join("prometheus").join("targets.json")).unwrap(),
    )
    .unwrap();
    let mut pages = Vec::new();
    for target in targets.as_array().unwrap() {
        let service = target["labels"]["service"].as_str().unwrap();
        if service == "etcd" || target["labels"]["node"] == dead {
            continue;
        }
        let addr = target["targets"][0].as_str().unwrap().parse().unwrap();
        let (status, page) = sluice_tests::http_get(addr, "/metrics").unwrap();
        assert_eq!(status, 200, "{service} at {addr}");
        pages.push(catalog::parse(service, &page));
    }
    let generated = catalog::render(&catalog::merge(pages));
    let path = repo().join("docs").join("metrics.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = doc
        .split_once(DOC_START)
        .expect("docs/metrics.md has its start marker");
    let (_, tail) = rest
        .split_once(DOC_END)
        .expect("docs/metrics.md has its end marker");
    let expected = format!("{head}{DOC_START}{generated}{DOC_END}{tail}");
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, expected).unwrap();
        return;
    }
    assert!(
        doc == expected,
        "docs/metrics.md does not list what the services serve; the served table is:\n{generated}\n\
         (SLUICE_BLESS=1 cargo test -p sluice-tests --test monitoring writes it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_and_alerts_answer_against_a_live_prometheus_under_load_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    // The rules as shipped, but with a backlog and an age a test can reach in seconds.
    let thresholds = Thresholds {
        oldest_message_age_seconds: 5.0,
        queue_backlog_messages: 300.0,
        ..Thresholds::default()
    };
    std::fs::create_dir_all(cluster_dir.join("prometheus")).unwrap();
    std::fs::write(
        cluster_dir.join("prometheus").join("sluice-alerts.yaml"),
        alerts::rules_file(&alerts::all(&thresholds)),
    )
    .unwrap();
    // High-water marks far above this load, so the manager exports them.
    let marks = [
        ("SLUICE_MAX_MESSAGES_PER_SECOND", "1000000"),
        ("SLUICE_MAX_BYTES_STORED", "1000000000000"),
        ("SLUICE_MIN_DISK_FREE_BYTES", "1"),
        // Idle clusters differ in CPU and commit time by noise alone; without those parts the
        // queues spread over both clusters, so killing cluster a's leader leaves cluster b's
        // queue gauges served while a's new leader builds its index.
        ("SLUICE_WEIGHT_CPU", "0"),
        ("SLUICE_WEIGHT_LATENCY", "0"),
    ];
    let cluster = DevCluster::start(&cluster_dir, &["--prometheus"], &marks).unwrap();
    let prometheus = Prometheus {
        addr: ([127, 0, 0, 1], cluster.base + 3).into(),
    };

    let mut client = cluster.client(0).unwrap();
    create_queue_with(&mut client, "orders-dlq", Default::default()).await;
    create_queue_with(&mut client, "orders", redrive_to("orders-dlq")).await;
    create_queue_with(&mut client, "poison-dlq", Default::default()).await;
    create_queue_with(&mut client, "poison", redrive_to("poison-dlq")).await;
    create_queue_with(&mut client, "empty", Default::default()).await;
    create_queue_with(&mut client, "backlog", Default::default()).await;
    create_queue_with(
        &mut client,
        "limited",
        pb::QueueAttributes {
            rate_limits: Some(pb::RateLimits {
                send_messages_per_second: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut loads: Vec<_> = (0..2)
        .map(|i| tokio::spawn(load(cluster.client(i).unwrap(), stop.clone())))
        .collect();
    let (id, secret) = cluster.root_key().unwrap();
    let ca = cluster.certs().join("ca.pem");
    for i in 0..2 {
        let endpoint = cluster.sqs_endpoint(i);
        let sqs = sluice_tests::sqs::client_trusting(&ca, &endpoint, &id, &secret).unwrap();
        let url = format!("{endpoint}/{}/orders", sluice_tests::sqs::ACCOUNT);
        loads.push(tokio::spawn(sqs_load(sqs, url, stop.clone())));
    }

    // A backlog past the threshold, some of it delayed.
    for _ in 0..40 {
        client
            .send_message_batch(batch("backlog", 10, None))
            .await
            .unwrap();
    }
    client
        .send_message_batch(batch("backlog", 5, Some(600)))
        .await
        .unwrap();
    // Messages received twice with a max receive count of 1 go to the dead-letter queue; a
    // redrive task takes them back. First Prometheus sees the counters at 0, as it would on
    // any queue that has lived a while: a counter first seen at 10 shows no increase.
    wait_for("the move counters scraped", Duration::from_secs(30), || {
        Ok(!prometheus
            .query(r#"sluice_storage_dead_letter_moves_total{queue="poison"} == 0 and on () sluice_storage_task_moves_total{queue="poison-dlq"} == 0"#)?
            .is_empty())
    })
    .await
    .unwrap();
    client
        .send_message_batch(batch("poison", 10, None))
        .await
        .unwrap();
    let mut dead_lettered = 0;
    for _ in 0..20 {
        let _ = client.receive_message(receive("poison", 10, Some(0))).await;
        let counts = client
            .get_queue(pb::GetQueueRequest {
                name: "poison-dlq".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .queue
            .and_then(|q| q.counts)
            .unwrap_or_default();
        dead_lettered = counts.visible;
        if dead_lettered > 0 {
            break;
        }
    }
    assert!(dead_lettered > 0, "no message reached poison-dlq");
    client
        .start_message_move_task(pb::StartMessageMoveTaskRequest {
            source: "poison-dlq".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Every dashboard query that should have data has it, once Prometheus has scraped the load.
    let all = dashboards::all();
    let expected: Vec<(&str, &str, &str, String)> = all
        .iter()
        .flat_map(|d| {
            d.panels.iter().flat_map(move |p| {
                p.queries
                    .iter()
                    .filter(|q| q.expect == Expect::Data)
                    .map(move |q| (d.uid, p.title, q.legend, instantiate(&q.expr)))
            })
        })
        .collect();
    let mut missing = Vec::new();
    let waited = wait_for(
        "every dashboard query to return data",
        Duration::from_secs(90),
        || {
            missing.clear();
            for (uid, title, legend, expr) in &expected {
                if prometheus.query(expr)?.is_empty() {
                    missing.push(format!("{uid} / {title} / {legend}: {expr}"));
                }
            }
            Ok(missing.is_empty())
        },
    )
    .await;
    assert!(
        waited.is_ok(),
        "queries without data:\n{}",
        missing.join("\n")
    );
    for dashboard in &all {
        let (mut with_data, mut total, mut empty) = (0, 0, Vec::new());
        for panel in &dashboard.panels {
            for query in &panel.queries {
                total += 1;
                if !prometheus
                    .query(&instantiate(&query.expr))
                    .unwrap()
                    .is_empty()
                {
                    with_data += 1;
                } else if let Expect::EmptyUnless(unless) = query.expect {
                    empty.push(format!("{} (empty unless {unless})", panel.title));
                }
            }
        }
        println!(
            "{}: {with_data} of {total} queries returned data{}",
            dashboard.uid,
            if empty.is_empty() {
                String::new()
            } else {
                format!("; empty as allowed: {}", empty.join(", "))
            }
        );
    }
    // The template variables list what there is.
    let clusters = prometheus
        .label_values("cluster", "sluice_backend_raft_leader")
        .unwrap();
    assert_eq!(clusters, ["a", "b"]);
    let nodes = prometheus
        .label_values("node", r#"up{service="backend", cluster=~".*"}"#)
        .unwrap();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let queues = prometheus
        .label_values("queue", "sluice_queue_messages")
        .unwrap();
    for queue in ["orders", "backlog", "poison"] {
        assert!(queues.iter().any(|q| q == queue), "{queues:?}");
    }

    // The alerts the load provokes go pending (or firing); those about a broken deployment
    // have nothing to say yet.
    let rules = alerts::all(&thresholds);
    for alert in &rules {
        let series = prometheus.query(&alert.expr).unwrap();
        println!("alert {}: {} series", alert.name, series.len());
    }
    for quiet in [
        "SluiceServiceDown",
        "SluiceBackendNoLeader",
        "SluiceNoManagerLeader",
        "SluiceEtcdUnreachable",
    ] {
        let alert = rules.iter().find(|a| a.name == quiet).unwrap();
        let series = prometheus.query(&alert.expr).unwrap();
        assert!(
            series.is_empty(),
            "{quiet} on a healthy cluster: {series:?}"
        );
    }
    until_alert(
        &prometheus,
        "SluiceQueueBacklogHigh",
        Some(("queue", "backlog")),
    )
    .await;
    until_alert(
        &prometheus,
        "SluiceQueueOldestMessageOld",
        Some(("queue", "backlog")),
    )
    .await;
    until_alert(
        &prometheus,
        "SluiceDeadLetterArrivals",
        Some(("queue", "poison")),
    )
    .await;

    // Kill cluster a's leader: it is down, and the cluster elects another.
    let leader = |prometheus: &Prometheus| -> anyhow::Result<Option<String>> {
        let series = prometheus.query(r#"sluice_backend_raft_leader{cluster="a"} == 1"#)?;
        Ok(series
            .first()
            .and_then(|s| s["metric"]["node"].as_str())
            .map(str::to_owned))
    };
    let old = leader(&prometheus)
        .unwrap()
        .expect("cluster a has a leader");
    let pid = cluster.pid(&format!("backend-{old}")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    until_alert(&prometheus, "SluiceServiceDown", Some(("node", &old))).await;
    wait_for("a new leader of cluster a", Duration::from_secs(60), || {
        Ok(leader(&prometheus)?.is_some_and(|new| new != old))
    })
    .await
    .unwrap();
    let elections = prometheus
        .query(r#"max(changes(sluice_backend_raft_term{cluster="a"}[15m]))"#)
        .unwrap();
    let counted: f64 = elections[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        counted >= 1.0,
        "the leader elections panel shows no election"
    );

    stop.store(true, Ordering::Relaxed);
    for load in loads {
        load.await.unwrap();
    }
    check_metrics_doc(&cluster, &old);
    let mut by_state = BTreeMap::new();
    for alert in prometheus.alerts().unwrap() {
        *by_state
            .entry(format!("{} {}", alert.name, alert.state))
            .or_insert(0) += 1;
    }
    println!("alerts at the end: {by_state:?}");
}
