//! The Grafana dashboards (Grafana 10 and later), one per view an operator takes: the
//! overview, queues, backend clusters, frontends, metadata and etcd, and the manager. Every
//! query names its expectation ([`Expect`]), which the live test holds it to.

use serde_json::{json, Value};

/// What a query should return on a loaded, healthy deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Series.
    Data,
    /// Nothing, unless what is named happens (write stalls, throttling, a queue move, ...).
    EmptyUnless(&'static str),
}

#[derive(Debug, Clone)]
pub struct Query {
    pub expr: String,
    pub legend: &'static str,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TimeSeries,
    Stat,
    Table,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    /// Grafana's unit id: `ops`, `s`, `bytes`, `percentunit`, `short`, ...
    pub unit: &'static str,
    pub queries: Vec<Query>,
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub uid: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// Template variables besides the data source: `namespace`, `cluster`, `node`, `queue`.
    pub variables: &'static [&'static str],
    pub panels: Vec<Panel>,
}

/// Grafana's `$__rate_interval`: at least four scrapes, whatever the scrape interval.
pub const RATE: &str = "$__rate_interval";

fn q(expr: impl Into<String>, legend: &'static str) -> Query {
    Query {
        expr: expr.into(),
        legend,
        expect: Expect::Data,
    }
}

fn q_unless(expr: impl Into<String>, legend: &'static str, unless: &'static str) -> Query {
    Query {
        expr: expr.into(),
        legend,
        expect: Expect::EmptyUnless(unless),
    }
}

fn panel(
    title: &'static str,
    description: &'static str,
    kind: Kind,
    unit: &'static str,
    queries: Vec<Query>,
) -> Panel {
    Panel {
        title,
        description,
        kind,
        unit,
        queries,
    }
}

fn ts(
    title: &'static str,
    description: &'static str,
    unit: &'static str,
    queries: Vec<Query>,
) -> Panel {
    panel(title, description, Kind::TimeSeries, unit, queries)
}

/// Label matchers: the deployment's namespace only.
const NS: &str = r#"namespace=~"$namespace""#;
/// Backend nodes chosen by cluster and node.
const NODE: &str = r#"namespace=~"$namespace", cluster=~"$cluster", node=~"$node""#;
/// Queues chosen by name.
const QUEUE: &str = r#"namespace=~"$namespace", queue=~"$queue""#;

fn p99_and_p50(
    metric: &str,
    by: &str,
    filter: &str,
    legend99: &'static str,
    legend50: &'static str,
) -> Vec<Query> {
    let quantile = |p: &str| {
        format!(
            "histogram_quantile({p}, sum by ({by}le) (rate({metric}_bucket{{{filter}}}[{RATE}])))"
        )
    };
    vec![q(quantile("0.99"), legend99), q(quantile("0.5"), legend50)]
}

pub fn overview() -> Dashboard {
    let rate = |metric: &str| format!("sum(rate({metric}{{{NS}}}[{RATE}]))");
    Dashboard {
        uid: "sluice-overview",
        title: "Sluice / Overview",
        description: "The four golden signals of the whole deployment: traffic, errors, latency, saturation (backlog and throttling).",
        variables: &["namespace"],
        panels: vec![
            ts(
                "Messages per second",
                "Messages stored, delivered and deleted, over every queue.",
                "ops",
                vec![
                    q(rate("sluice_messages_sent_total"), "sent"),
                    q(rate("sluice_messages_received_total"), "received"),
                    q(rate("sluice_messages_deleted_total"), "deleted"),
                ],
            ),
            ts(
                "Error ratio by code",
                "Share of requests that failed, by gRPC code. NOT_FOUND and INVALID_ARGUMENT are the callers' mistakes; INTERNAL, UNAVAILABLE and DEADLINE_EXCEEDED are ours.",
                "percentunit",
                vec![q(
                    format!("sum by (code) (rate(sluice_rpc_requests_total{{{NS}, code!=\"OK\"}}[{RATE}])) / scalar(sum(rate(sluice_rpc_requests_total{{{NS}}}[{RATE}])))"),
                    "{{code}}",
                )],
            ),
            ts(
                "Latency by operation",
                "p99 and p50 of each public RPC, long polls included.",
                "s",
                p99_and_p50("sluice_rpc_duration_seconds", "method, ", NS, "p99 {{method}}", "p50 {{method}}"),
            ),
            ts(
                "Throttled requests",
                "Requests refused with RESOURCE_EXHAUSTED, by the limit they were over.",
                "ops",
                vec![q_unless(
                    format!("sum by (reason) (rate(sluice_frontend_throttled_total{{{NS}}}[{RATE}]))"),
                    "{{reason}}",
                    "a rate limit, bulkhead or backend pressure refused requests",
                )],
            ),
            ts(
                "Backlog",
                "Messages stored, by state, over every queue.",
                "short",
                vec![q(format!("sum by (state) (sluice_queue_messages{{{NS}}})"), "{{state}}")],
            ),
            ts(
                "Oldest message",
                "Age of the oldest message of the queue that has the oldest.",
                "s",
                vec![q(format!("max(sluice_queue_oldest_message_age_seconds{{{NS}}})"), "oldest")],
            ),
            ts(
                "Dead-letter inflow",
                "Messages moved to dead-letter queues per second: consumers failing on them.",
                "ops",
                vec![q_unless(
                    rate("sluice_storage_dead_letter_moves_total"),
                    "dead-lettered",
                    "a message reached its queue's max receive count",
                )],
            ),
            panel(
                "Services up",
                "Targets Prometheus scrapes, up and down, by service.",
                Kind::Stat,
                "short",
                vec![
                    q(format!("sum by (service) (up{{{NS}}})"), "{{service}} up"),
                    q_unless(
                        format!("count by (service) (up{{{NS}}} == 0)"),
                        "{{service}} down",
                        "a service is down",
                    ),
                ],
            ),
        ],
    }
}

pub fn queues() -> Dashboard {
    let top = |expr: String| format!("topk(10, {expr})");
    let per_queue_rate = |metric: &str| {
        top(format!(
            "sum by (queue) (rate({metric}{{{QUEUE}}}[{RATE}]))"
        ))
    };
    Dashboard {
        uid: "sluice-queues",
        title: "Sluice / Queues",
        description: "Per queue, the ten busiest or fullest: rates, backlog, age, dead letters and move tasks. Queues past each process's label cap show as _other.",
        variables: &["namespace", "queue"],
        panels: vec![
            ts(
                "Backlog (top 10)",
                "Messages stored per queue, every state.",
                "short",
                vec![q(top(format!("sum by (queue) (sluice_queue_messages{{{QUEUE}}})")), "{{queue}}")],
            ),
            ts(
                "Backlog by state",
                "Visible, in flight and delayed messages of each chosen queue.",
                "short",
                vec![q(format!("sum by (queue, state) (sluice_queue_messages{{{QUEUE}}})"), "{{queue}} {{state}}")],
            ),
            ts(
                "Sends per second (top 10)",
                "Messages stored per queue.",
                "ops",
                vec![q(per_queue_rate("sluice_messages_sent_total"), "{{queue}}")],
            ),
            ts(
                "Receives per second (top 10)",
                "Messages delivered per queue.",
                "ops",
                vec![q(per_queue_rate("sluice_messages_received_total"), "{{queue}}")],
            ),
            ts(
                "Deletes per second (top 10)",
                "Messages deleted by receipt handle per queue.",
                "ops",
                vec![q(per_queue_rate("sluice_messages_deleted_total"), "{{queue}}")],
            ),
            ts(
                "Empty receives per second (top 10)",
                "Receives that found no message: consumers polling an empty queue.",
                "ops",
                vec![q_unless(
                    per_queue_rate("sluice_empty_receives_total"),
                    "{{queue}}",
                    "a receive found its queue empty",
                )],
            ),
            ts(
                "Oldest message age (top 10)",
                "Age of each queue's oldest message: how far behind its consumers are.",
                "s",
                vec![q(top(format!("max by (queue) (sluice_queue_oldest_message_age_seconds{{{QUEUE}}})")), "{{queue}}")],
            ),
            ts(
                "Receives per message sent",
                "Deliveries per message stored: above 1, messages come back after their visibility timeout (consumers fail or are too slow to delete).",
                "short",
                vec![q(
                    format!("sum by (queue) (rate(sluice_messages_received_total{{{QUEUE}}}[{RATE}])) / sum by (queue) (rate(sluice_messages_sent_total{{{QUEUE}}}[{RATE}]))"),
                    "{{queue}}",
                )],
            ),
            ts(
                "Dead-letter moves per second",
                "Messages moved from each queue to its dead-letter queue.",
                "ops",
                vec![q_unless(
                    format!("sum by (queue) (rate(sluice_storage_dead_letter_moves_total{{{QUEUE}}}[{RATE}]))"),
                    "{{queue}}",
                    "a message reached its queue's max receive count",
                )],
            ),
            ts(
                "Move tasks: messages moved per second",
                "Messages moved out of each queue by message move tasks (dead-letter redrive).",
                "ops",
                vec![q_unless(
                    format!("sum by (queue) (rate(sluice_storage_task_moves_total{{{QUEUE}}}[{RATE}]))"),
                    "{{queue}}",
                    "a message move task ran",
                )],
            ),
        ],
    }
}

pub fn backend() -> Dashboard {
    Dashboard {
        uid: "sluice-backend",
        title: "Sluice / Backend clusters",
        description: "The replicated storage: leaders and elections, group commits, fsyncs, replication lag, snapshots, RocksDB and disks, per cluster and node.",
        variables: &["namespace", "cluster", "node"],
        panels: vec![
            panel(
                "Leaders",
                "The node leading each cluster (1).",
                Kind::Table,
                "short",
                vec![q(format!("max by (cluster, node) (sluice_backend_raft_leader{{{NODE}}}) == 1"), "{{cluster}} {{node}}")],
            ),
            ts(
                "Leader elections (15 min)",
                "Terms started in the last 15 minutes, by cluster: each is an election, and a pause.",
                "short",
                vec![
                    q(format!("max by (cluster) (changes(sluice_backend_raft_term{{{NODE}}}[15m]))"), "{{cluster}} elections"),
                    q(format!("max by (cluster) (sluice_backend_raft_term{{{NODE}}})"), "{{cluster}} term"),
                ],
            ),
            ts(
                "Group commit latency",
                "From a group's first request to every request in it durable: the RocksDB write and fsync, or on a replicated node the local log append.",
                "s",
                p99_and_p50("sluice_storage_commit_duration_seconds", "cluster, node, ", NODE, "p99 {{node}}", "p50 {{node}}"),
            ),
            ts(
                "Group commit size",
                "Requests that shared one commit, on average: how well concurrent sends are batched.",
                "short",
                vec![q(
                    format!("sum by (cluster, node) (rate(sluice_storage_commit_batch_requests_sum{{{NODE}}}[{RATE}])) / sum by (cluster, node) (rate(sluice_storage_commit_batch_requests_count{{{NODE}}}[{RATE}]))"),
                    "{{node}}",
                )],
            ),
            ts(
                "fsync latency",
                "p99 and p50 of one fsync, by database: queues (the engine's WAL), raft (a synced log append).",
                "s",
                p99_and_p50("sluice_storage_fsync_duration_seconds", "node, db, ", NODE, "p99 {{node}} {{db}}", "p50 {{node}} {{db}}"),
            ),
            ts(
                "Replication lag",
                "On each leader: entries not yet on a majority, and how long they have waited.",
                "short",
                vec![
                    q(format!("max by (cluster) (sluice_backend_replication_lag_entries{{{NODE}}})"), "{{cluster}} entries"),
                    q(format!("max by (cluster) (sluice_backend_replication_lag_seconds{{{NODE}}})"), "{{cluster}} seconds"),
                ],
            ),
            ts(
                "Applied index",
                "The last log index each node applied; a follower falling behind its leader shows here.",
                "short",
                vec![q(format!("max by (cluster, node) (sluice_backend_raft_applied_index{{{NODE}}})"), "{{node}}")],
            ),
            ts(
                "Snapshots and purges",
                "Snapshots built (each lets the log be purged), sent to and installed on followers, per hour; and the purged index.",
                "short",
                vec![
                    q(format!("sum by (cluster) (increase(sluice_backend_raft_snapshots_built_total{{{NODE}}}[1h]))"), "{{cluster}} built"),
                    q(format!("sum by (cluster) (increase(sluice_backend_raft_snapshots_installed_total{{{NODE}}}[1h]))"), "{{cluster}} installed"),
                    q(format!("max by (cluster, node) (sluice_backend_raft_purged_index{{{NODE}}})"), "{{node}} purged index"),
                ],
            ),
            ts(
                "RocksDB write stalls",
                "Share of time each database had writes delayed or stopped, and whether they are stopped now.",
                "percentunit",
                vec![
                    q(format!("sum by (node, db) (rate(sluice_rocksdb_write_stall_seconds_total{{{NODE}}}[{RATE}]))"), "{{node}} {{db}} stalled"),
                    q(format!("max by (node, db) (sluice_rocksdb_write_stopped{{{NODE}}})"), "{{node}} {{db}} stopped"),
                ],
            ),
            ts(
                "Memtables and compaction debt",
                "Bytes in memtables, and bytes compaction still has to rewrite, by database.",
                "bytes",
                vec![
                    q(format!("sum by (node, db) (sluice_rocksdb_memtable_bytes{{{NODE}}})"), "{{node}} {{db}} memtables"),
                    q(format!("sum by (node, db) (sluice_rocksdb_pending_compaction_bytes{{{NODE}}})"), "{{node}} {{db}} pending compaction"),
                    q(format!("sum by (node, db) (sluice_rocksdb_live_sst_bytes{{{NODE}}})"), "{{node}} {{db}} SST files"),
                ],
            ),
            ts(
                "Disk free",
                "Free space of the file system holding each node's data.",
                "bytes",
                vec![q(format!("min by (cluster, node) (sluice_storage_disk_free_bytes{{{NODE}}})"), "{{node}}")],
            ),
            ts(
                "Backend request latency",
                "p99 of the calls frontends and managers make to backend nodes, by method.",
                "s",
                vec![q(
                    format!("histogram_quantile(0.99, sum by (method, le) (rate(sluice_backend_request_duration_seconds_bucket{{{NODE}}}[{RATE}])))"),
                    "p99 {{method}}",
                )],
            ),
        ],
    }
}

pub fn frontend() -> Dashboard {
    Dashboard {
        uid: "sluice-frontend",
        title: "Sluice / Frontends",
        description: "The stateless tier: requests, latency, bulkheads, throttling, caches, and what it sees of the backend clusters.",
        variables: &["namespace"],
        panels: vec![
            ts(
                "Requests per second by RPC",
                "Public requests, by method.",
                "reqps",
                vec![q(format!("sum by (method) (rate(sluice_rpc_requests_total{{{NS}}}[{RATE}]))"), "{{method}}")],
            ),
            ts(
                "Latency by RPC",
                "p99 and p50 of each public RPC.",
                "s",
                p99_and_p50("sluice_rpc_duration_seconds", "method, ", NS, "p99 {{method}}", "p50 {{method}}"),
            ),
            ts(
                "SQS requests per second by action",
                "Requests to the frontends' SQS endpoints, by action and SQS code (OK when served).",
                "reqps",
                vec![q(format!("sum by (action, code) (rate(sluice_sqs_requests_total{{{NS}}}[{RATE}]))"), "{{action}} {{code}}")],
            ),
            ts(
                "SQS latency by action",
                "p99 and p50 of each SQS action, long polls included.",
                "s",
                p99_and_p50("sluice_sqs_duration_seconds", "action, ", NS, "p99 {{action}}", "p50 {{action}}"),
            ),
            ts(
                "In flight per bulkhead",
                "Requests (and Consume streams) held by each bulkhead, over every frontend.",
                "short",
                vec![q(format!("sum by (bulkhead) (sluice_frontend_in_flight{{{NS}}})"), "{{bulkhead}}")],
            ),
            ts(
                "Throttles by reason",
                "Requests refused by each limit.",
                "ops",
                vec![q_unless(
                    format!("sum by (reason) (rate(sluice_frontend_throttled_total{{{NS}}}[{RATE}]))"),
                    "{{reason}}",
                    "a limit refused requests",
                )],
            ),
            ts(
                "Cache hit ratio",
                "Share of lookups of queues, placements and cluster members answered fresh from the frontends' caches.",
                "percentunit",
                vec![q(
                    format!("sum by (cache) (rate(sluice_frontend_cache_lookups_total{{{NS}, result=\"hit\"}}[{RATE}])) / sum by (cache) (rate(sluice_frontend_cache_lookups_total{{{NS}}}[{RATE}]))"),
                    "{{cache}}",
                )],
            ),
            ts(
                "Retries and failovers",
                "Calls to a backend cluster tried again: on its next node (unavailable), behind a queue move (moving, placement_changed).",
                "ops",
                vec![q(format!("sum by (reason) (rate(sluice_frontend_backend_retries_total{{{NS}}}[{RATE}]))"), "{{reason}}")],
            ),
            ts(
                "Backend call latency by cluster",
                "p99 and p50 of the frontends' calls to each backend cluster, long polls aside.",
                "s",
                p99_and_p50("sluice_frontend_backend_call_duration_seconds", "cluster, ", NS, "p99 {{cluster}}", "p50 {{cluster}}"),
            ),
            ts(
                "Calls in flight per cluster",
                "Calls held to each backend cluster, and the adaptive cap that backs off while the cluster is slow.",
                "short",
                vec![
                    q(format!("sum by (cluster) (sluice_frontend_backend_in_flight{{{NS}}})"), "{{cluster}} in flight"),
                    q(format!("min by (cluster) (sluice_frontend_backend_limit{{{NS}}})"), "{{cluster}} cap"),
                ],
            ),
            ts(
                "Authentication failures",
                "Requests refused as unauthenticated, by reason; never by key.",
                "ops",
                vec![q(format!("sum by (reason) (rate(sluice_auth_failures_total{{{NS}}}[{RATE}]))"), "{{reason}}")],
            ),
            ts(
                "Connections and streams",
                "gRPC connections held, and Consume streams open.",
                "short",
                vec![
                    q(format!("sum by (instance) (sluice_grpc_connections{{{NS}, service=~\"frontend|standalone\"}})"), "{{instance}} connections"),
                    q(format!("sum(sluice_consume_streams{{{NS}}})"), "Consume streams"),
                ],
            ),
        ],
    }
}

pub fn metadata() -> Dashboard {
    Dashboard {
        uid: "sluice-metadata",
        title: "Sluice / Metadata and etcd",
        description: "The metadata ring over etcd: members, caches, watches, and etcd's latency and errors as Sluice sees them and as etcd reports them.",
        variables: &["namespace"],
        panels: vec![
            ts(
                "Ring members",
                "Metadata nodes on each node's view of the ring; views that disagree mean a node is joining or leaving.",
                "short",
                vec![q(format!("max by (instance) (sluice_metadata_ring_members{{{NS}}})"), "{{instance}}")],
            ),
            ts(
                "Cache hit ratio",
                "Share of reads of owned records served from each node's cache.",
                "percentunit",
                vec![q(
                    format!("sum by (instance) (rate(sluice_metadata_cache_hits_total{{{NS}}}[{RATE}])) / (sum by (instance) (rate(sluice_metadata_cache_hits_total{{{NS}}}[{RATE}])) + sum by (instance) (rate(sluice_metadata_cache_misses_total{{{NS}}}[{RATE}])))"),
                    "{{instance}}",
                )],
            ),
            ts(
                "Requests by method",
                "MetadataService requests per second.",
                "reqps",
                vec![q(format!("sum by (method) (rate(sluice_metadata_requests_total{{{NS}}}[{RATE}]))"), "{{method}}")],
            ),
            ts(
                "Forwards",
                "Requests forwarded to their key's owner, and those served from etcd because the owner was unreachable.",
                "ops",
                vec![
                    q(format!("sum(rate(sluice_metadata_forwards_total{{{NS}}}[{RATE}]))"), "forwarded"),
                    q(format!("sum(rate(sluice_metadata_forward_fallbacks_total{{{NS}}}[{RATE}]))"), "fell back to etcd"),
                ],
            ),
            ts(
                "Watch events and restarts",
                "Changes heard on the etcd watches, and watches started again after breaking.",
                "ops",
                vec![
                    q(format!("sum(rate(sluice_metadata_watch_events_total{{{NS}}}[{RATE}]))"), "events"),
                    q(format!("sum(increase(sluice_metadata_watch_restarts_total{{{NS}}}[1h]))"), "restarts per hour"),
                ],
            ),
            ts(
                "etcd request latency (Sluice's view)",
                "p99 and p50 of requests to etcd through the metadata store, by operation.",
                "s",
                p99_and_p50("sluice_etcd_request_duration_seconds", "op, ", NS, "p99 {{op}}", "p50 {{op}}"),
            ),
            ts(
                "etcd request errors",
                "Requests to etcd that failed, by operation.",
                "ops",
                vec![q(format!("sum by (op) (rate(sluice_etcd_request_errors_total{{{NS}}}[{RATE}]))"), "{{op}}")],
            ),
            ts(
                "etcd: leader and WAL fsync",
                "From etcd's own metrics: whether each member has a leader, and its WAL fsync p99.",
                "s",
                vec![
                    q(format!("min(etcd_server_has_leader{{{NS}}})"), "has leader"),
                    q(
                        format!("histogram_quantile(0.99, sum by (instance, le) (rate(etcd_disk_wal_fsync_duration_seconds_bucket{{{NS}}}[{RATE}])))"),
                        "p99 WAL fsync {{instance}}",
                    ),
                ],
            ),
            ts(
                "etcd: database size",
                "Bytes of each member's database; etcd refuses writes past its quota.",
                "bytes",
                vec![q(format!("max by (instance) (etcd_mvcc_db_total_size_in_bytes{{{NS}}})"), "{{instance}}")],
            ),
        ],
    }
}

pub fn manager() -> Dashboard {
    let utilization = |resource: &str| {
        format!("max by (cluster) (sluice_manager_cluster_utilization{{{NS}, resource=\"{resource}\"}})")
    };
    let mark =
        |resource: &str| format!("max(sluice_manager_high_water{{{NS}, resource=\"{resource}\"}})");
    let unset = "the mark is configured (--max-messages-per-second, --max-bytes-stored, --min-disk-free-bytes)";
    Dashboard {
        uid: "sluice-manager",
        title: "Sluice / Manager",
        description: "Placement: which manager leads, where queues go, moves, and each cluster's load against its high-water marks.",
        variables: &["namespace"],
        panels: vec![
            panel(
                "Leader",
                "1 on the manager that leads.",
                Kind::Stat,
                "short",
                vec![q(format!("max by (instance) (sluice_manager_is_leader{{{NS}}})"), "{{instance}}")],
            ),
            ts(
                "Placements per hour",
                "Queues placed on each cluster.",
                "short",
                vec![q(format!("sum by (cluster) (increase(sluice_manager_placements_total{{{NS}}}[1h]))"), "{{cluster}}")],
            ),
            ts(
                "Moves",
                "Sealed partitions still draining (moves in progress), and move steps completed per hour.",
                "short",
                vec![
                    q(format!("max(sluice_manager_sealed_partitions{{{NS}}})"), "draining"),
                    q(
                        format!("sum by (step) (increase(sluice_manager_queue_moves_total{{{NS}}}[1h]))"),
                        "{{step}}",
                    ),
                ],
            ),
            ts(
                "Messages per second against the high-water mark",
                "Each cluster's message rate, in and out, and the mark past which it takes no new queues.",
                "ops",
                vec![q(utilization("messages_per_second"), "{{cluster}}"), q_unless(mark("messages_per_second"), "high-water mark", unset)],
            ),
            ts(
                "Bytes stored against the high-water mark",
                "Each cluster's stored bytes.",
                "bytes",
                vec![q(utilization("bytes_stored"), "{{cluster}}"), q_unless(mark("bytes_stored"), "high-water mark", unset)],
            ),
            ts(
                "Disk free against the low-water mark",
                "Each cluster's free disk.",
                "bytes",
                vec![q(utilization("disk_free_bytes"), "{{cluster}}"), q_unless(mark("disk_free_bytes"), "low-water mark", unset)],
            ),
            ts(
                "Queues per cluster",
                "Queues placed on each cluster, and whether it takes new ones (1).",
                "short",
                vec![
                    q(utilization("queues"), "{{cluster}} queues"),
                    q(format!("max by (cluster) (sluice_manager_cluster_accepting{{{NS}}})"), "{{cluster}} accepting"),
                ],
            ),
        ],
    }
}

pub fn all() -> Vec<Dashboard> {
    vec![
        overview(),
        queues(),
        backend(),
        frontend(),
        metadata(),
        manager(),
    ]
}

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

fn variable(name: &str) -> Value {
    let (label, query) = match name {
        "namespace" => ("Namespace", "label_values(up{service=~\"frontend|standalone|backend\"}, namespace)"),
        "cluster" => ("Cluster", "label_values(sluice_backend_raft_leader{namespace=~\"$namespace\"}, cluster)"),
        "node" => ("Node", "label_values(up{namespace=~\"$namespace\", service=\"backend\", cluster=~\"$cluster\"}, node)"),
        "queue" => ("Queue", "label_values(sluice_queue_messages{namespace=~\"$namespace\"}, queue)"),
        other => panic!("no template variable {other}"),
    };
    json!({
        "name": name,
        "label": label,
        "type": "query",
        "datasource": datasource(),
        "definition": query,
        "query": {"query": query, "refId": format!("var-{name}")},
        "includeAll": true,
        "allValue": ".*",
        "multi": true,
        "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
    })
}

impl Panel {
    fn to_json(&self, id: usize, x: usize, y: usize) -> Value {
        let targets: Vec<Value> = self
            .queries
            .iter()
            .enumerate()
            .map(|(i, query)| {
                json!({
                    "refId": ((b'A' + i as u8) as char).to_string(),
                    "datasource": datasource(),
                    "expr": query.expr,
                    "legendFormat": query.legend,
                    "range": self.kind == Kind::TimeSeries,
                    "instant": self.kind != Kind::TimeSeries,
                })
            })
            .collect();
        let kind = match self.kind {
            Kind::TimeSeries => "timeseries",
            Kind::Stat => "stat",
            Kind::Table => "table",
        };
        json!({
            "id": id,
            "type": kind,
            "title": self.title,
            "description": self.description,
            "datasource": datasource(),
            "gridPos": {"x": x, "y": y, "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": self.unit}, "overrides": []},
            "options": {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
            "targets": targets,
        })
    }
}

impl Dashboard {
    pub fn to_json(&self) -> Value {
        let panels: Vec<Value> = self
            .panels
            .iter()
            .enumerate()
            .map(|(i, panel)| panel.to_json(i + 1, (i % 2) * 12, (i / 2) * 8))
            .collect();
        let mut variables = vec![json!({
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        })];
        variables.extend(self.variables.iter().map(|name| variable(name)));
        json!({
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["sluice"],
            "schemaVersion": 39,
            "version": 1,
            "editable": true,
            "graphTooltip": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "browser",
            "templating": {"list": variables},
            "annotations": {"list": []},
            "links": [],
            "panels": panels,
        })
    }

    pub fn to_json_string(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&self.to_json()).expect("a dashboard serializes");
        text.push('\n');
        text
    }
}
