//! The alert rules: what pages before users notice. Each alert carries its severity, a summary,
//! a runbook link (an entry of `docs/runbooks.md`), and the series of a `promtool test rules`
//! case that makes it fire and one under which it stays quiet.

use crate::yaml::{map, s, Yaml};

/// The numbers the alerts compare against; the defaults suit most deployments, and the chart
/// lets an operator change them.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// A queue whose oldest message is older than this has consumers that are not keeping up.
    pub oldest_message_age_seconds: f64,
    /// Visible messages in one queue past which its backlog is worth a look.
    pub queue_backlog_messages: f64,
    /// How long entries may wait on a leader for a majority.
    pub replication_lag_seconds: f64,
    pub fsync_p99_seconds: f64,
    pub commit_p99_seconds: f64,
    /// Leader elections in 15 minutes past which a cluster is flapping.
    pub leader_changes_per_15m: f64,
    /// Share of requests failing for the server's fault (INTERNAL, UNAVAILABLE, ...).
    pub error_ratio: f64,
    /// Share of requests refused by a limit.
    pub throttled_ratio: f64,
    /// Share of a data disk that must stay free.
    pub disk_free_ratio: f64,
    /// Where `docs/runbooks.md` is served; each alert links to its entry.
    pub runbook_base: String,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            oldest_message_age_seconds: 900.0,
            queue_backlog_messages: 1_000_000.0,
            replication_lag_seconds: 10.0,
            fsync_p99_seconds: 0.1,
            commit_p99_seconds: 0.25,
            leader_changes_per_15m: 3.0,
            error_ratio: 0.05,
            throttled_ratio: 0.1,
            disk_free_ratio: 0.1,
            runbook_base: "docs/runbooks.md".into(),
        }
    }
}

/// One alert rule.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: &'static str,
    pub expr: String,
    /// How long the expression must hold before the alert fires (pending until then).
    pub for_: &'static str,
    pub severity: &'static str,
    /// One line; may name labels as `{{ $labels.x }}`.
    pub summary: &'static str,
    pub description: &'static str,
    pub runbook_url: String,
    pub test: UnitTest,
}

/// A `promtool test rules` case: series (in promtool's `a+bxn` notation, one sample a minute)
/// under which the alert fires at `eval_time` with `labels`, and series under which it does not.
#[derive(Debug, Clone)]
pub struct UnitTest {
    pub firing: Vec<(&'static str, &'static str)>,
    pub quiet: Vec<(&'static str, &'static str)>,
    pub eval_time: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
}

const SERVICES: &str = "frontend|metadata|backend|manager|standalone|etcd";
/// The codes that are the server's fault, not the caller's.
const SERVER_ERRORS: &str = "INTERNAL|UNKNOWN|DATA_LOSS|UNAVAILABLE|DEADLINE_EXCEEDED";

/// Every alert, with `t`'s thresholds.
pub fn all(t: &Thresholds) -> Vec<Alert> {
    let runbook = |name: &str| format!("{}#{}", t.runbook_base, name.to_lowercase());
    let alert = |name: &'static str,
                 expr: String,
                 for_: &'static str,
                 severity: &'static str,
                 summary: &'static str,
                 description: &'static str,
                 test: UnitTest| Alert {
        name,
        expr,
        for_,
        severity,
        summary,
        description,
        runbook_url: runbook(name),
        test,
    };
    let node_labels = vec![("cluster", "a"), ("node", "a1")];
    vec![
        alert(
            "SluiceServiceDown",
            format!("up{{service=~\"{SERVICES}\"}} == 0"),
            "2m",
            "critical",
            "{{ $labels.service }} {{ $labels.instance }} is down",
            "Prometheus cannot scrape {{ $labels.service }} at {{ $labels.instance }}: the process is gone, stuck, or unreachable.",
            UnitTest {
                firing: vec![(r#"up{instance="a1:7081", service="backend", cluster="a", node="a1"}"#, "0x10")],
                quiet: vec![(r#"up{instance="a1:7081", service="backend", cluster="a", node="a1"}"#, "1x10")],
                eval_time: "5m",
                labels: vec![("instance", "a1:7081"), ("service", "backend"), ("cluster", "a"), ("node", "a1")],
            },
        ),
        alert(
            "SluiceBackendNoLeader",
            "max by (namespace, cluster) (sluice_backend_raft_leader) == 0".into(),
            "1m",
            "critical",
            "backend cluster {{ $labels.cluster }} has no leader",
            "No node of backend cluster {{ $labels.cluster }} leads it, so its queues take no sends and give no messages.",
            UnitTest {
                firing: vec![
                    (r#"sluice_backend_raft_leader{cluster="a", node="a1"}"#, "0x10"),
                    (r#"sluice_backend_raft_leader{cluster="a", node="a2"}"#, "0x10"),
                ],
                quiet: vec![
                    (r#"sluice_backend_raft_leader{cluster="a", node="a1"}"#, "1x10"),
                    (r#"sluice_backend_raft_leader{cluster="a", node="a2"}"#, "0x10"),
                ],
                eval_time: "5m",
                labels: vec![("cluster", "a")],
            },
        ),
        alert(
            "SluiceFrequentLeaderChanges",
            format!(
                "max by (namespace, cluster) (changes(sluice_backend_raft_term[15m])) > {}",
                t.leader_changes_per_15m
            ),
            "0m",
            "warning",
            "backend cluster {{ $labels.cluster }} keeps electing leaders",
            "Backend cluster {{ $labels.cluster }} held more elections in 15 minutes than the threshold; every election pauses its queues.",
            UnitTest {
                firing: vec![(r#"sluice_backend_raft_term{cluster="a", node="a1"}"#, "1+1x20")],
                quiet: vec![(r#"sluice_backend_raft_term{cluster="a", node="a1"}"#, "5x20")],
                eval_time: "20m",
                labels: vec![("cluster", "a")],
            },
        ),
        alert(
            "SluiceReplicationLagHigh",
            format!(
                "max by (namespace, cluster, node) (sluice_backend_replication_lag_seconds) > {}",
                t.replication_lag_seconds
            ),
            "2m",
            "warning",
            "replication on {{ $labels.cluster }} lags",
            "Entries have waited on the leader {{ $labels.node }} of cluster {{ $labels.cluster }} for a majority longer than the threshold: SYNC sends wait as long, and ASYNC sends that a leader crash would lose pile up.",
            UnitTest {
                firing: vec![(r#"sluice_backend_replication_lag_seconds{cluster="a", node="a1"}"#, "30x10")],
                quiet: vec![(r#"sluice_backend_replication_lag_seconds{cluster="a", node="a1"}"#, "0x10")],
                eval_time: "5m",
                labels: node_labels.clone(),
            },
        ),
        alert(
            "SluiceFsyncSlow",
            format!(
                "histogram_quantile(0.99, sum by (namespace, cluster, node, db, le) (rate(sluice_storage_fsync_duration_seconds_bucket[5m]))) > {}",
                t.fsync_p99_seconds
            ),
            "10m",
            "warning",
            "fsyncs on {{ $labels.node }} are slow",
            "The 99th percentile fsync of the {{ $labels.db }} database on {{ $labels.node }} is over the threshold; every durable send waits for one.",
            UnitTest {
                firing: vec![
                    (r#"sluice_storage_fsync_duration_seconds_bucket{cluster="a", node="a1", db="queues", le="0.05"}"#, "0x30"),
                    (r#"sluice_storage_fsync_duration_seconds_bucket{cluster="a", node="a1", db="queues", le="0.25"}"#, "0+10x30"),
                    (r#"sluice_storage_fsync_duration_seconds_bucket{cluster="a", node="a1", db="queues", le="+Inf"}"#, "0+10x30"),
                ],
                quiet: vec![
                    (r#"sluice_storage_fsync_duration_seconds_bucket{cluster="a", node="a1", db="queues", le="0.05"}"#, "0+10x30"),
                    (r#"sluice_storage_fsync_duration_seconds_bucket{cluster="a", node="a1", db="queues", le="0.25"}"#, "0+10x30"),
                    (r#"sluice_storage_fsync_duration_seconds_bucket{cluster="a", node="a1", db="queues", le="+Inf"}"#, "0+10x30"),
                ],
                eval_time: "25m",
                labels: vec![("cluster", "a"), ("node", "a1"), ("db", "queues")],
            },
        ),
        alert(
            "SluiceCommitSlow",
            format!(
                "histogram_quantile(0.99, sum by (namespace, cluster, node, le) (rate(sluice_storage_commit_duration_seconds_bucket[5m]))) > {}",
                t.commit_p99_seconds
            ),
            "10m",
            "warning",
            "group commits on {{ $labels.node }} are slow",
            "The 99th percentile group commit on {{ $labels.node }} is over the threshold: sends are acknowledged that much later.",
            UnitTest {
                firing: vec![
                    (r#"sluice_storage_commit_duration_seconds_bucket{cluster="a", node="a1", le="0.1"}"#, "0x30"),
                    (r#"sluice_storage_commit_duration_seconds_bucket{cluster="a", node="a1", le="1"}"#, "0+10x30"),
                    (r#"sluice_storage_commit_duration_seconds_bucket{cluster="a", node="a1", le="+Inf"}"#, "0+10x30"),
                ],
                quiet: vec![
                    (r#"sluice_storage_commit_duration_seconds_bucket{cluster="a", node="a1", le="0.1"}"#, "0+10x30"),
                    (r#"sluice_storage_commit_duration_seconds_bucket{cluster="a", node="a1", le="1"}"#, "0+10x30"),
                    (r#"sluice_storage_commit_duration_seconds_bucket{cluster="a", node="a1", le="+Inf"}"#, "0+10x30"),
                ],
                eval_time: "25m",
                labels: node_labels.clone(),
            },
        ),
        alert(
            "SluiceDiskWillFill",
            format!(
                "predict_linear(sluice_storage_disk_free_bytes[1h], 4 * 3600) < 0 and sluice_storage_disk_free_bytes / sluice_storage_disk_size_bytes < {}",
                (t.disk_free_ratio * 4.0).min(0.5)
            ),
            "30m",
            "warning",
            "the disk of {{ $labels.node }} will be full within 4 hours",
            "At the rate it has filled in the last hour, the file system holding the {{ $labels.db }} database on {{ $labels.node }} runs out within 4 hours.",
            UnitTest {
                firing: vec![
                    (r#"sluice_storage_disk_free_bytes{cluster="a", node="a1", db="queues"}"#, "100000000000-1000000000x70"),
                    (r#"sluice_storage_disk_size_bytes{cluster="a", node="a1", db="queues"}"#, "200000000000x70"),
                ],
                quiet: vec![
                    (r#"sluice_storage_disk_free_bytes{cluster="a", node="a1", db="queues"}"#, "100000000000x70"),
                    (r#"sluice_storage_disk_size_bytes{cluster="a", node="a1", db="queues"}"#, "200000000000x70"),
                ],
                eval_time: "65m",
                labels: vec![("cluster", "a"), ("node", "a1"), ("db", "queues")],
            },
        ),
        alert(
            "SluiceDiskAlmostFull",
            format!(
                "sluice_storage_disk_free_bytes / sluice_storage_disk_size_bytes < {}",
                t.disk_free_ratio
            ),
            "5m",
            "critical",
            "the disk of {{ $labels.node }} is almost full",
            "Less than the threshold share of the file system holding the {{ $labels.db }} database on {{ $labels.node }} is free; when none is, the node stops taking writes.",
            UnitTest {
                firing: vec![
                    (r#"sluice_storage_disk_free_bytes{cluster="a", node="a1", db="queues"}"#, "10000000000x10"),
                    (r#"sluice_storage_disk_size_bytes{cluster="a", node="a1", db="queues"}"#, "200000000000x10"),
                ],
                quiet: vec![
                    (r#"sluice_storage_disk_free_bytes{cluster="a", node="a1", db="queues"}"#, "100000000000x10"),
                    (r#"sluice_storage_disk_size_bytes{cluster="a", node="a1", db="queues"}"#, "200000000000x10"),
                ],
                eval_time: "8m",
                labels: vec![("cluster", "a"), ("node", "a1"), ("db", "queues")],
            },
        ),
        alert(
            "SluiceWriteStalls",
            "rate(sluice_rocksdb_write_stall_seconds_total[5m]) > 0.1".into(),
            "5m",
            "warning",
            "RocksDB on {{ $labels.node }} stalls writes",
            "The {{ $labels.db }} database on {{ $labels.node }} spent over a tenth of the last 5 minutes with writes delayed or stopped, behind on flushes or compactions.",
            UnitTest {
                firing: vec![(r#"sluice_rocksdb_write_stall_seconds_total{cluster="a", node="a1", db="queues"}"#, "0+30x20")],
                quiet: vec![(r#"sluice_rocksdb_write_stall_seconds_total{cluster="a", node="a1", db="queues"}"#, "0x20")],
                eval_time: "15m",
                labels: vec![("cluster", "a"), ("node", "a1"), ("db", "queues")],
            },
        ),
        alert(
            "SluiceWritesStopped",
            "sluice_rocksdb_write_stopped == 1".into(),
            "1m",
            "critical",
            "RocksDB on {{ $labels.node }} has stopped writes",
            "The {{ $labels.db }} database on {{ $labels.node }} takes no writes until its flushes or compactions catch up: sends on its queues wait.",
            UnitTest {
                firing: vec![(r#"sluice_rocksdb_write_stopped{cluster="a", node="a1", db="queues"}"#, "1x10")],
                quiet: vec![(r#"sluice_rocksdb_write_stopped{cluster="a", node="a1", db="queues"}"#, "0x10")],
                eval_time: "5m",
                labels: vec![("cluster", "a"), ("node", "a1"), ("db", "queues")],
            },
        ),
        alert(
            "SluiceQueueOldestMessageOld",
            format!(
                "max by (namespace, queue) (sluice_queue_oldest_message_age_seconds) > {}",
                t.oldest_message_age_seconds
            ),
            "5m",
            "warning",
            "queue {{ $labels.queue }} holds old messages",
            "The oldest message in queue {{ $labels.queue }} is older than the threshold: its consumers are not keeping up, or are gone.",
            UnitTest {
                firing: vec![(r#"sluice_queue_oldest_message_age_seconds{queue="orders", cluster="a", node="a1"}"#, "0+120x20")],
                quiet: vec![(r#"sluice_queue_oldest_message_age_seconds{queue="orders", cluster="a", node="a1"}"#, "30x20")],
                eval_time: "20m",
                labels: vec![("queue", "orders")],
            },
        ),
        alert(
            "SluiceQueueBacklogHigh",
            format!(
                "sum by (namespace, queue) (sluice_queue_messages{{state=\"visible\"}}) > {}",
                t.queue_backlog_messages
            ),
            "15m",
            "warning",
            "queue {{ $labels.queue }} has a large backlog",
            "Queue {{ $labels.queue }} has held more visible messages than the threshold for 15 minutes.",
            UnitTest {
                firing: vec![(r#"sluice_queue_messages{queue="orders", state="visible", cluster="a", node="a1"}"#, "2000000x30")],
                quiet: vec![(r#"sluice_queue_messages{queue="orders", state="visible", cluster="a", node="a1"}"#, "1000x30")],
                eval_time: "20m",
                labels: vec![("queue", "orders")],
            },
        ),
        alert(
            "SluiceDeadLetterArrivals",
            "sum by (namespace, queue) (increase(sluice_storage_dead_letter_moves_total[5m])) > 0".into(),
            "0m",
            "warning",
            "messages of queue {{ $labels.queue }} are going to its dead-letter queue",
            "Messages of queue {{ $labels.queue }} reached its max receive count and were moved to its dead-letter queue: its consumers fail on them.",
            UnitTest {
                firing: vec![(r#"sluice_storage_dead_letter_moves_total{queue="orders", cluster="a", node="a1"}"#, "0+1x10")],
                quiet: vec![(r#"sluice_storage_dead_letter_moves_total{queue="orders", cluster="a", node="a1"}"#, "5x10")],
                eval_time: "8m",
                labels: vec![("queue", "orders")],
            },
        ),
        alert(
            "SluiceErrorRatioHigh",
            format!(
                "sum by (namespace) (rate(sluice_rpc_requests_total{{code=~\"{SERVER_ERRORS}\"}}[5m])) / sum by (namespace) (rate(sluice_rpc_requests_total[5m])) > {}",
                t.error_ratio
            ),
            "5m",
            "critical",
            "the frontends fail requests",
            "More than the threshold share of requests to the frontends failed for the server's fault (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...).",
            UnitTest {
                firing: vec![
                    (r#"sluice_rpc_requests_total{method="SendMessage", code="OK"}"#, "0+100x20"),
                    (r#"sluice_rpc_requests_total{method="SendMessage", code="UNAVAILABLE"}"#, "0+20x20"),
                ],
                quiet: vec![
                    (r#"sluice_rpc_requests_total{method="SendMessage", code="OK"}"#, "0+100x20"),
                    (r#"sluice_rpc_requests_total{method="SendMessage", code="UNAVAILABLE"}"#, "0+1x20"),
                ],
                eval_time: "15m",
                labels: vec![],
            },
        ),
        alert(
            "SluiceSustainedThrottling",
            format!(
                "sum by (namespace) (rate(sluice_frontend_throttled_total[10m])) / sum by (namespace) (rate(sluice_rpc_requests_total[10m])) > {}",
                t.throttled_ratio
            ),
            "15m",
            "warning",
            "the frontends throttle many requests",
            "More than the threshold share of requests has been refused by rate limits, bulkheads or backend pressure for 15 minutes.",
            UnitTest {
                firing: vec![
                    (r#"sluice_frontend_throttled_total{reason="queue_send", queue="orders"}"#, "0+30x40"),
                    (r#"sluice_rpc_requests_total{method="SendMessage", code="OK"}"#, "0+100x40"),
                ],
                quiet: vec![
                    (r#"sluice_frontend_throttled_total{reason="queue_send", queue="orders"}"#, "0+1x40"),
                    (r#"sluice_rpc_requests_total{method="SendMessage", code="OK"}"#, "0+100x40"),
                ],
                eval_time: "35m",
                labels: vec![],
            },
        ),
        alert(
            "SluiceEtcdUnreachable",
            "sum by (namespace) (rate(sluice_etcd_request_errors_total[2m])) > 0.1 or min by (namespace) (up{service=\"etcd\"}) == 0".into(),
            "1m",
            "critical",
            "etcd cannot be reached",
            "Sluice's requests to etcd fail, or etcd cannot be scraped: queues cannot be created or changed, and nodes cannot renew their leases.",
            UnitTest {
                firing: vec![(r#"sluice_etcd_request_errors_total{op="get", service="metadata"}"#, "0+60x10")],
                quiet: vec![
                    (r#"sluice_etcd_request_errors_total{op="get", service="metadata"}"#, "0x10"),
                    (r#"up{service="etcd", instance="etcd:2381"}"#, "1x10"),
                ],
                eval_time: "5m",
                labels: vec![],
            },
        ),
        alert(
            "SluiceNoManagerLeader",
            "sum by (namespace) (sluice_manager_is_leader) == 0".into(),
            "2m",
            "critical",
            "no manager leads",
            "No manager holds the leadership: new queues cannot be placed and moves do not advance.",
            UnitTest {
                firing: vec![
                    (r#"sluice_manager_is_leader{instance="m1"}"#, "0x10"),
                    (r#"sluice_manager_is_leader{instance="m2"}"#, "0x10"),
                ],
                quiet: vec![
                    (r#"sluice_manager_is_leader{instance="m1"}"#, "1x10"),
                    (r#"sluice_manager_is_leader{instance="m2"}"#, "0x10"),
                ],
                eval_time: "5m",
                labels: vec![],
            },
        ),
    ]
}

fn annotations(alert: &Alert) -> Yaml {
    map([
        ("summary", s(alert.summary)),
        ("description", s(alert.description)),
        ("runbook_url", s(alert.runbook_url.clone())),
    ])
}

fn groups(alerts: &[Alert]) -> Yaml {
    let rules = alerts
        .iter()
        .map(|alert| {
            map([
                ("alert", s(alert.name)),
                ("expr", s(alert.expr.clone())),
                ("for", s(alert.for_)),
                ("labels", map([("severity", s(alert.severity))])),
                ("annotations", annotations(alert)),
            ])
        })
        .collect();
    Yaml::List(vec![map([
        ("name", s("sluice")),
        ("rules", Yaml::List(rules)),
    ])])
}

const HEADER: &str =
    "# Generated by `sluice monitoring render` from libs/monitoring; edit it there.\n";

/// The rules as a Prometheus rules file.
pub fn rules_file(alerts: &[Alert]) -> String {
    format!("{HEADER}{}", map([("groups", groups(alerts))]).render())
}

/// The same rules as a Prometheus Operator `PrometheusRule`.
pub fn prometheus_rule(alerts: &[Alert]) -> String {
    let doc = map([
        ("apiVersion", s("monitoring.coreos.com/v1")),
        ("kind", s("PrometheusRule")),
        (
            "metadata",
            map([
                ("name", s("sluice")),
                ("labels", map([("app.kubernetes.io/name", s("sluice"))])),
            ]),
        ),
        ("spec", map([("groups", groups(alerts))])),
    ]);
    format!("{HEADER}{}", doc.render())
}

/// `text` with each `{{ $labels.x }}` replaced as Prometheus would for `labels`.
fn expand(text: &str, labels: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (key, value) in labels {
        out = out.replace(&format!("{{{{ $labels.{key} }}}}"), value);
    }
    out
}

/// A `promtool test rules` file with two cases per alert: firing, and quiet.
pub fn promtool_tests(alerts: &[Alert]) -> String {
    let series = |list: &[(&str, &str)]| {
        Yaml::List(
            list.iter()
                .map(|(series, values)| map([("series", s(*series)), ("values", s(*values))]))
                .collect(),
        )
    };
    let mut tests = Vec::new();
    for alert in alerts {
        let test = &alert.test;
        let mut labels: Vec<(&str, &str)> = test.labels.clone();
        labels.push(("severity", alert.severity));
        let expected = map([
            (
                "exp_labels",
                Yaml::Map(labels.iter().map(|(k, v)| (k.to_string(), s(*v))).collect()),
            ),
            (
                "exp_annotations",
                map([
                    ("summary", s(expand(alert.summary, &test.labels))),
                    ("description", s(expand(alert.description, &test.labels))),
                    ("runbook_url", s(alert.runbook_url.clone())),
                ]),
            ),
        ]);
        for (case, expected) in [
            (&test.firing, Yaml::List(vec![expected])),
            (&test.quiet, Yaml::List(vec![])),
        ] {
            tests.push(map([
                ("interval", s("1m")),
                ("input_series", series(case)),
                (
                    "alert_rule_test",
                    Yaml::List(vec![map([
                        ("eval_time", s(test.eval_time)),
                        ("alertname", s(alert.name)),
                        ("exp_alerts", expected),
                    ])]),
                ),
            ]));
        }
    }
    let doc = map([
        ("rule_files", Yaml::List(vec![s("sluice-alerts.yaml")])),
        ("evaluation_interval", s("1m")),
        ("tests", Yaml::List(tests)),
    ]);
    format!("{HEADER}{}", doc.render())
}
