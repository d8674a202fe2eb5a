//! The client commands: queue administration, send, receive and delete against any endpoint.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sluice_proto::v1 as pb;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use tonic::transport::Channel;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create, inspect, change, purge and delete queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send one message.
    Send(SendArgs),
    /// Receive messages (optionally long polling), and optionally delete them.
    Receive(ReceiveArgs),
    /// Print messages as they arrive and delete each once printed, until --count or Ctrl-C.
    Consume(ConsumeArgs),
    /// Delete a received message by its receipt handle.
    Delete {
        queue: String,
        receipt_handle: String,
    },
    /// Move messages out of a dead-letter queue: redrive tasks.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Each backend cluster's live nodes, load, queue count, and whether it takes new queues.
    Clusters {
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// Move QUEUE to backend cluster CLUSTER: its partition where it is now is sealed (no new
    /// sends) and drained by consumers, then removed; new sends go to CLUSTER at once.
    Place {
        queue: String,
        #[arg(long)]
        cluster: String,
        /// Wait until consumers have drained the sealed partition and it is removed.
        #[arg(long)]
        wait: bool,
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// Where QUEUE's partitions are and how many messages each holds.
    Placement {
        queue: String,
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// The replicated nodes of one backend cluster: who leads, who has caught up, and changes
    /// to its membership. Any node of the cluster takes these.
    #[command(subcommand)]
    Cluster(ClusterAdmin),
}

#[derive(Subcommand)]
pub enum ClusterAdmin {
    /// The cluster's members, its leader, and how far each node has the log.
    Status {
        /// Any node of the cluster (its gRPC URL).
        #[arg(long, env = "SLUICE_BACKEND", default_value = "http://127.0.0.1:7080")]
        node: String,
    },
    /// Add node NAME, started with `sluice-backend --join`, reachable at --url: it catches up
    /// as a learner first, then becomes a voting member. Returns once it votes.
    AddNode {
        name: String,
        /// The new node's gRPC URL.
        #[arg(long)]
        url: String,
        /// Any node of the cluster (its gRPC URL).
        #[arg(long, env = "SLUICE_BACKEND", default_value = "http://127.0.0.1:7080")]
        node: String,
    },
    /// Remove member NAME from the cluster; it no longer receives the log and can be stopped.
    RemoveNode {
        name: String,
        /// Any node of the cluster (its gRPC URL).
        #[arg(long, env = "SLUICE_BACKEND", default_value = "http://127.0.0.1:7080")]
        node: String,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Start moving every message now in SOURCE back to the queue it came from, or to --to.
    Redrive {
        /// The queue to move messages out of, normally a dead-letter queue.
        source: String,
        /// Move every message to this queue instead of each one's source queue.
        #[arg(long)]
        to: Option<String>,
        /// Messages per second at most (1 to 1000) [default: as fast as the server goes].
        #[arg(long)]
        rate: Option<u32>,
        /// Wait until the task ends, printing its progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show the running and the last ended redrive tasks of SOURCE.
    Tasks { source: String },
    /// Stop a running redrive task; the messages it moved stay moved.
    Cancel { task_handle: String },
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Create a queue (idempotent when the attributes are the same).
    Create {
        name: String,
        #[command(flatten)]
        attributes: AttributeArgs,
        /// A tag, KEY=VALUE; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Show a queue's attributes and approximate counts.
    Get { name: String },
    /// List queue names.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Names per request.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Change the given attributes of a queue.
    Set {
        name: String,
        #[command(flatten)]
        attributes: AttributeArgs,
    },
    /// Delete every message in a queue.
    Purge { name: String },
    /// Delete a queue and its messages.
    Delete { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReplicationArg {
    Sync,
    Async,
}

#[derive(Args)]
pub struct AttributeArgs {
    /// Default visibility timeout of a receive, seconds (0 to 43200).
    #[arg(long)]
    visibility_timeout: Option<u32>,
    /// How long a message is kept, seconds (60 to 1209600).
    #[arg(long)]
    retention: Option<u32>,
    /// Default delay of a new message, seconds (0 to 900).
    #[arg(long)]
    delay: Option<u32>,
    /// Largest message, body plus attributes, bytes (1024 to 1048576).
    #[arg(long)]
    max_message_bytes: Option<u32>,
    /// Default long-poll wait of a receive, seconds (0 to 20).
    #[arg(long)]
    receive_wait: Option<u32>,
    /// Replication mode in a backend cluster.
    #[arg(long, value_enum)]
    replication: Option<ReplicationArg>,
    /// A FIFO queue: its name must end in `.fifo`; fixed at creation.
    #[arg(long)]
    fifo: bool,
    /// FIFO only: sends without a deduplication id are deduplicated by the SHA-256 of the body.
    #[arg(long)]
    content_dedup: bool,
    /// Dead-letter queue: a message received --max-receives times moves there; an empty name
    /// removes the policy (the server refuses a non-empty one without --max-receives).
    #[arg(long)]
    dlq: Option<String>,
    /// Receives before a message moves to the dead-letter queue (1 to 1000).
    #[arg(long, requires = "dlq")]
    max_receives: Option<u32>,
}

impl AttributeArgs {
    fn to_proto(&self) -> pb::QueueAttributes {
        pb::QueueAttributes {
            visibility_timeout_seconds: self.visibility_timeout,
            message_retention_seconds: self.retention,
            delay_seconds: self.delay,
            max_message_bytes: self.max_message_bytes,
            receive_wait_time_seconds: self.receive_wait,
            replication: match self.replication {
                None => pb::Replication::Unspecified,
                Some(ReplicationArg::Sync) => pb::Replication::Sync,
                Some(ReplicationArg::Async) => pb::Replication::Async,
            } as i32,
            fifo: self.fifo,
            content_based_deduplication: self.content_dedup,
            redrive_policy: self.dlq.as_ref().map(|dlq| pb::RedrivePolicy {
                dead_letter_queue: dlq.clone(),
                max_receive_count: self.max_receives.unwrap_or_default(),
            }),
        }
    }
}

#[derive(Args)]
pub struct SendArgs {
    queue: String,
    /// The body; `-` or nothing reads it from standard input.
    body: Option<String>,
    /// Seconds before the message becomes visible (0 to 900).
    #[arg(long)]
    delay: Option<u32>,
    /// A message attribute, NAME=TYPE:VALUE, TYPE String, Number or Binary (value in hex);
    /// repeatable.
    #[arg(long = "attr", value_parser = parse_attribute)]
    attributes: Vec<(String, pb::MessageAttributeValue)>,
    /// Message group id; required on a FIFO queue.
    #[arg(long)]
    group: Option<String>,
    /// Deduplication id: another send with the same id within the deduplication window stores
    /// nothing and returns the first message's id.
    #[arg(long)]
    dedup_id: Option<String>,
}

#[derive(Args)]
pub struct ReceiveArgs {
    queue: String,
    /// Long-poll up to this many seconds for a message (0 to 20).
    #[arg(long)]
    wait: Option<u32>,
    /// Messages at most (1 to 10).
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// Hide the received messages for this many seconds instead of the queue's default.
    #[arg(long)]
    visibility_timeout: Option<u32>,
    /// Delete each message after printing it.
    #[arg(long)]
    delete: bool,
}

#[derive(Args)]
pub struct ConsumeArgs {
    queue: String,
    /// Messages the server may push ahead of the ones printed (1 to 1000).
    #[arg(long, default_value_t = 100)]
    prefetch: u32,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Hide the received messages for this many seconds instead of the queue's default.
    #[arg(long)]
    visibility_timeout: Option<u32>,
}

fn parse_tag(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("tag {raw:?} is not KEY=VALUE"))
}

fn parse_attribute(raw: &str) -> Result<(String, pb::MessageAttributeValue), String> {
    let (name, rest) = raw
        .split_once('=')
        .ok_or_else(|| format!("attribute {raw:?} is not NAME=TYPE:VALUE"))?;
    let (data_type, value) = rest
        .split_once(':')
        .ok_or_else(|| format!("attribute {raw:?} is not NAME=TYPE:VALUE"))?;
    let mut attribute = pb::MessageAttributeValue {
        data_type: data_type.to_owned(),
        ..Default::default()
    };
    if data_type.starts_with("Binary") {
        // Binary values are given as hex so any bytes fit on a command line.
        attribute.binary_value = decode_hex(value)
            .ok_or_else(|| format!("Binary value of {name:?} must be hex digits"))?
            .into();
    } else {
        attribute.string_value = value.to_owned();
    }
    Ok((name.to_owned(), attribute))
}

fn decode_hex(raw: &str) -> Option<Vec<u8>> {
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns a gRPC failure into an error that says what went wrong in the user's terms.
fn failed(endpoint: &str, status: tonic::Status) -> anyhow::Error {
    // Only a failed connection is "cannot reach": an UNAVAILABLE the server sent (a cluster
    // electing its leader) is its own answer.
    if sluice_api::error::is_transport_failure(&status) {
        return anyhow!("cannot reach Sluice at {endpoint}: {}", status.message());
    }
    anyhow!(
        "{}: {}",
        sluice_api::error::code_name(status.code()),
        status.message()
    )
}

fn print_queue(json_out: bool, queue: &pb::Queue) {
    let attrs = queue.attributes.clone().unwrap_or_default();
    let counts = queue.counts.unwrap_or_default();
    let replication = pb::Replication::try_from(attrs.replication)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REPLICATION_")
                .to_lowercase()
        })
        .unwrap_or_default();
    if json_out {
        let value = json!({
            "name": queue.name,
            "created_at_ms": queue.created_at_ms,
            "attributes": {
                "visibility_timeout_seconds": attrs.visibility_timeout_seconds,
                "message_retention_seconds": attrs.message_retention_seconds,
                "delay_seconds": attrs.delay_seconds,
                "max_message_bytes": attrs.max_message_bytes,
                "receive_wait_time_seconds": attrs.receive_wait_time_seconds,
                "fifo": attrs.fifo,
                "content_based_deduplication": attrs.content_based_deduplication,
                "redrive_policy": attrs.redrive_policy.as_ref().map(|p| json!({
                    "dead_letter_queue": p.dead_letter_queue,
                    "max_receive_count": p.max_receive_count,
                })),
                "replication": replication,
            },
            "counts": {
                "visible": counts.visible,
                "in_flight": counts.in_flight,
                "delayed": counts.delayed,
            },
            "tags": queue.tags,
        });
        println!("{value}");
        return;
    }
    println!("queue               {}", queue.name);
    println!(
        "messages            {} visible, {} in flight, {} delayed",
        counts.visible, counts.in_flight, counts.delayed
    );
    let secs = |v: Option<u32>| v.map(|s| format!("{s} s")).unwrap_or_default();
    println!(
        "visibility timeout  {}",
        secs(attrs.visibility_timeout_seconds)
    );
    println!(
        "retention           {}",
        secs(attrs.message_retention_seconds)
    );
    println!("delay               {}", secs(attrs.delay_seconds));
    println!(
        "receive wait        {}",
        secs(attrs.receive_wait_time_seconds)
    );
    println!(
        "max message bytes   {}",
        attrs.max_message_bytes.unwrap_or_default()
    );
    println!("replication         {replication}");
    if attrs.fifo {
        let dedup = if attrs.content_based_deduplication {
            "content-based deduplication"
        } else {
            "deduplication by id"
        };
        println!("fifo                yes, {dedup}");
    }
    if let Some(policy) = &attrs.redrive_policy {
        println!(
            "dead-letter queue   {} after {} receives",
            policy.dead_letter_queue, policy.max_receive_count
        );
    }
    let mut tags: Vec<_> = queue.tags.iter().collect();
    tags.sort();
    for (k, v) in tags {
        println!("tag                 {k}={v}");
    }
}

/// Reports a finished action on a queue, e.g. `purged orders`.
fn print_done(json_out: bool, action: &str, name: &str) {
    if json_out {
        println!("{}", json!({ action: name }));
    } else {
        println!("{action} {name}");
    }
}

fn message_json(m: &pb::Message) -> serde_json::Value {
    let attributes: HashMap<&str, serde_json::Value> = m
        .attributes
        .iter()
        .map(|(name, v)| {
            let value = if v.data_type.starts_with("Binary") {
                json!({"data_type": v.data_type, "binary_value_hex": hex(&v.binary_value)})
            } else {
                json!({"data_type": v.data_type, "string_value": v.string_value})
            };
            (name.as_str(), value)
        })
        .collect();
    json!({
        "message_id": m.message_id,
        "receipt_handle": m.receipt_handle,
        "body": String::from_utf8_lossy(&m.body),
        "md5_of_body": m.md5_of_body,
        "md5_of_message_attributes": m.md5_of_message_attributes,
        "attributes": attributes,
        "sent_timestamp_ms": m.sent_timestamp_ms,
        "approximate_receive_count": m.approximate_receive_count,
        "approximate_first_receive_timestamp_ms": m.approximate_first_receive_timestamp_ms,
        "group_id": m.group_id,
        "sequence_number": m.sequence_number,
        "dead_letter_source_queue": m.dead_letter_source_queue,
    })
}

/// One received message, as JSON or for a reader; `receipt` shows its receipt handle.
fn print_message(json_out: bool, m: &pb::Message, receipt: bool) {
    if json_out {
        println!("{}", message_json(m));
        return;
    }
    println!(
        "{}  received {}x  {}",
        m.message_id,
        m.approximate_receive_count,
        String::from_utf8_lossy(&m.body)
    );
    if !m.group_id.is_empty() {
        println!("  group {}, sequence {}", m.group_id, m.sequence_number);
    }
    if !m.dead_letter_source_queue.is_empty() {
        println!("  dead-lettered from {}", m.dead_letter_source_queue);
    }
    let mut names: Vec<_> = m.attributes.keys().collect();
    names.sort();
    for name in names {
        let v = &m.attributes[name];
        let shown = if v.data_type.starts_with("Binary") {
            hex(&v.binary_value)
        } else {
            v.string_value.clone()
        };
        println!("  {name} ({}) = {shown}", v.data_type);
    }
    if receipt {
        println!("  receipt: {}", m.receipt_handle);
    }
}

/// `sluice consume`: prints messages as the server pushes them and deletes each batch once it
/// is printed, until `--count` messages or Ctrl-C.
async fn consume(
    client: &mut QueueServiceClient<Channel>,
    endpoint: &str,
    args: ConsumeArgs,
    json_out: bool,
) -> anyhow::Result<()> {
    let err = |status| failed(endpoint, status);
    let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
    let start = pb::consume_request::Request::Start(pb::ConsumeStart {
        queue: args.queue,
        prefetch: args.prefetch,
        visibility_timeout_seconds: args.visibility_timeout,
    });
    requests
        .send(pb::ConsumeRequest {
            request: Some(start),
        })
        .expect("the receiver is right here");
    let mut responses = client
        .consume(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    let mut requests = Some(requests);
    let mut printed = 0u64;
    let mut failed = 0usize;
    loop {
        let next = tokio::select! {
            next = responses.message() => next.map_err(err)?,
            _ = tokio::signal::ctrl_c(), if requests.is_some() => {
                // Stop taking messages; the server answers the acks sent and returns the rest.
                requests = None;
                continue;
            }
        };
        let Some(response) = next else { break };
        match response.response {
            Some(pb::consume_response::Response::Messages(batch)) => {
                let Some(acks) = &requests else { continue };
                let mut handles = Vec::with_capacity(batch.messages.len());
                for m in &batch.messages {
                    if args.count.is_some_and(|count| printed >= count) {
                        break;
                    }
                    print_message(json_out, m, false);
                    handles.push(m.receipt_handle.clone());
                    printed += 1;
                }
                if !handles.is_empty() {
                    let ack = pb::consume_request::Request::Ack(pb::ConsumeAck {
                        receipt_handles: handles,
                    });
                    acks.send(pb::ConsumeRequest { request: Some(ack) })
                        .map_err(|_| anyhow!("the consume stream closed"))?;
                }
                if args.count.is_some_and(|count| printed >= count) {
                    requests = None;
                }
            }
            Some(pb::consume_response::Response::Acked(acked)) => {
                for f in &acked.failed {
                    eprintln!("delete failed: {}: {}", f.code, f.message);
                }
                failed += acked.failed.len();
            }
            None => {}
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {printed} messages were printed but not deleted");
    }
    Ok(())
}

fn task_status(task: &pb::MessageMoveTask) -> String {
    task.status()
        .as_str_name()
        .trim_start_matches("MESSAGE_MOVE_TASK_STATUS_")
        .to_lowercase()
}

fn print_task(json_out: bool, task: &pb::MessageMoveTask) {
    let destination = if task.destination.is_empty() {
        "each message's source queue"
    } else {
        task.destination.as_str()
    };
    if json_out {
        println!(
            "{}",
            json!({
                "task_handle": task.task_handle,
                "status": task_status(task),
                "source": task.source,
                "destination": task.destination,
                "max_messages_per_second": task.max_messages_per_second,
                "moved": task.moved,
                "total": task.total,
                "failure_reason": task.failure_reason,
                "started_at_ms": task.started_at_ms,
            })
        );
        return;
    }
    let rate = task
        .max_messages_per_second
        .map(|r| format!(", at most {r}/s"))
        .unwrap_or_default();
    println!(
        "{}  {}  moved {} of {} from {} to {destination}{rate}",
        task.task_handle,
        task_status(task),
        task.moved,
        task.total,
        task.source
    );
    if !task.failure_reason.is_empty() {
        println!("  failed: {}", task.failure_reason);
    }
}

fn print_clusters(json_out: bool, listed: &pb::ListClustersResponse) {
    if json_out {
        let clusters: Vec<_> = listed
            .clusters
            .iter()
            .map(|c| {
                let load = c.load.unwrap_or_default();
                json!({
                    "name": c.name,
                    "nodes": c.nodes.iter().map(|n| json!({"node": n.node, "url": n.url})).collect::<Vec<_>>(),
                    "messages_in_per_second": load.messages_in_per_second,
                    "messages_out_per_second": load.messages_out_per_second,
                    "bytes_stored": load.bytes_stored,
                    "disk_free_bytes": load.disk_free_bytes,
                    "queue_count": c.queue_count,
                    "accepting": c.accepting,
                    "reason": c.reason,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "leader": listed.leader, "clusters": clusters })
        );
        return;
    }
    let leader = if listed.leader.is_empty() {
        "none"
    } else {
        listed.leader.as_str()
    };
    println!("leader manager: {leader}");
    println!(
        "{:<12} {:>5} {:>10} {:>10} {:>14} {:>16} {:>7}  new queues",
        "cluster", "nodes", "in msg/s", "out msg/s", "bytes stored", "disk free", "queues"
    );
    for c in &listed.clusters {
        let load = c.load.unwrap_or_default();
        let accepting = if c.accepting {
            "yes".to_owned()
        } else {
            format!("no: {}", c.reason)
        };
        println!(
            "{:<12} {:>5} {:>10.0} {:>10.0} {:>14} {:>16} {:>7}  {accepting}",
            c.name,
            c.nodes.len(),
            load.messages_in_per_second,
            load.messages_out_per_second,
            load.bytes_stored,
            load.disk_free_bytes,
            c.queue_count
        );
        for n in &c.nodes {
            println!("  {} {}", n.node, n.url);
        }
    }
}

fn print_placement(json_out: bool, placement: &pb::QueuePlacement) {
    if json_out {
        let partitions: Vec<_> = placement
            .partitions
            .iter()
            .map(|p| {
                let counts = p.counts.map(|c| {
                    json!({"visible": c.visible, "in_flight": c.in_flight, "delayed": c.delayed})
                });
                json!({
                    "partition": p.partition,
                    "cluster": p.cluster,
                    "sealed": p.sealed,
                    "counts": counts,
                    "error": p.error,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "queue": placement.queue,
                "queue_id": placement.queue_id,
                "moving_to": placement.moving_to,
                "partitions": partitions,
            })
        );
        return;
    }
    println!("queue {} (id {})", placement.queue, placement.queue_id);
    if !placement.moving_to.is_empty() {
        println!("moving to {}", placement.moving_to);
    }
    for p in &placement.partitions {
        let state = if p.sealed {
            "sealed, draining"
        } else {
            "active"
        };
        let counts = match p.counts {
            Some(c) => format!(
                "{} visible, {} in flight, {} delayed",
                c.visible, c.in_flight, c.delayed
            ),
            None => format!("counts unavailable: {}", p.error),
        };
        println!(
            "  partition {} on {}: {state}; {counts}",
            p.partition, p.cluster
        );
    }
}

async fn manager_client(manager: &str) -> anyhow::Result<ManagerServiceClient<Channel>> {
    ManagerServiceClient::connect(manager.to_owned())
        .await
        .map_err(|err| anyhow!("cannot reach the manager at {manager}: {err}"))
}

async fn cluster_client(node: &str) -> anyhow::Result<ClusterServiceClient<Channel>> {
    ClusterServiceClient::connect(node.to_owned())
        .await
        .map_err(|err| anyhow!("cannot reach the backend node at {node}: {err}"))
}

fn print_cluster(json_out: bool, status: &pb::ClusterStatus) {
    if json_out {
        let members: Vec<_> = status
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "url": m.url,
                    "voter": m.voter,
                    "matched_index": m.matched_index,
                })
            })
            .collect();
        let out = serde_json::json!({
            "node": status.node,
            "leader": status.leader,
            "leader_url": status.leader_url,
            "term": status.term,
            "last_log_index": status.last_log_index,
            "applied_index": status.applied_index,
            "serving": status.serving,
            "members": members,
        });
        println!("{out}");
        return;
    }
    println!("leader   {} ({})", status.leader, status.leader_url);
    println!(
        "asked    {}: term {}, log {}, applied {}",
        status.node, status.term, status.last_log_index, status.applied_index
    );
    for m in &status.members {
        let role = if m.voter { "voter" } else { "learner" };
        let matched = m
            .matched_index
            .map_or(String::new(), |i| format!("  has log to {i}"));
        println!("  {:<8} {:<8} {}{matched}", m.name, role, m.url);
    }
}

/// Runs an admin command; these talk to the managers (or a backend cluster's nodes), not to
/// the queue endpoint.
pub async fn run_admin(json_out: bool, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Cluster(command) => {
            let (node, status) = match command {
                ClusterAdmin::Status { node } => {
                    let status = cluster_client(&node)
                        .await?
                        .status(pb::ClusterStatusRequest {})
                        .await;
                    (node, status)
                }
                ClusterAdmin::AddNode { name, url, node } => {
                    let status = cluster_client(&node)
                        .await?
                        .add_node(pb::AddNodeRequest { name, url })
                        .await;
                    (node, status)
                }
                ClusterAdmin::RemoveNode { name, node } => {
                    let status = cluster_client(&node)
                        .await?
                        .remove_node(pb::RemoveNodeRequest { name })
                        .await;
                    (node, status)
                }
            };
            let status = status.map_err(|status| failed(&node, status))?.into_inner();
            print_cluster(json_out, &status);
        }
        AdminCommand::Place {
            queue,
            cluster,
            wait,
            manager,
        } => {
            let mut client = manager_client(&manager).await?;
            let mut placement = client
                .move_queue(pb::MoveQueueRequest {
                    queue: queue.clone(),
                    cluster,
                })
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            // The sealed partitions drain as consumers delete; the leader removes each once empty.
            while wait && placement.partitions.iter().any(|p| p.sealed) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                placement = client
                    .get_placement(pb::GetPlacementRequest {
                        queue: queue.clone(),
                    })
                    .await
                    .map_err(|status| failed(&manager, status))?
                    .into_inner();
            }
            print_placement(json_out, &placement);
        }
        AdminCommand::Placement { queue, manager } => {
            let placement = manager_client(&manager)
                .await?
                .get_placement(pb::GetPlacementRequest { queue })
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            print_placement(json_out, &placement);
        }
        AdminCommand::Clusters { manager } => {
            let mut client = manager_client(&manager).await?;
            let listed = client
                .list_clusters(pb::ListClustersRequest {})
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            print_clusters(json_out, &listed);
        }
    }
    Ok(())
}

pub async fn run(endpoint: String, json_out: bool, command: ClientCommand) -> anyhow::Result<()> {
    let channel = Channel::from_shared(endpoint.clone())
        .with_context(|| format!("endpoint {endpoint:?} is not a URL like http://127.0.0.1:7070"))?
        .connect()
        .await
        .map_err(|err| anyhow!("cannot reach Sluice at {endpoint}: {err}"))?;
    let mut client = QueueServiceClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let err = |status| failed(&endpoint, status);
    match command {
        ClientCommand::Queue(command) => match command {
            QueueCommand::Create {
                name,
                attributes,
                tags,
            } => {
                let queue = client
                    .create_queue(pb::CreateQueueRequest {
                        name,
                        attributes: Some(attributes.to_proto()),
                        tags: tags.into_iter().collect(),
                    })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .queue
                    .unwrap_or_default();
                print_queue(json_out, &queue);
            }
            QueueCommand::Get { name } => {
                let queue = client
                    .get_queue(pb::GetQueueRequest { name })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .queue
                    .unwrap_or_default();
                print_queue(json_out, &queue);
            }
            QueueCommand::List { prefix, page_size } => {
                let mut names = Vec::new();
                let mut page_token = String::new();
                loop {
                    let page = client
                        .list_queues(pb::ListQueuesRequest {
                            prefix: prefix.clone(),
                            page_size,
                            page_token,
                        })
                        .await
                        .map_err(err)?
                        .into_inner();
                    names.extend(page.names);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if json_out {
                    println!("{}", json!({ "names": names }));
                } else {
                    for name in names {
                        println!("{name}");
                    }
                }
            }
            QueueCommand::Set { name, attributes } => {
                let queue = client
                    .set_queue_attributes(pb::SetQueueAttributesRequest {
                        name,
                        attributes: Some(attributes.to_proto()),
                    })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .queue
                    .unwrap_or_default();
                print_queue(json_out, &queue);
            }
            QueueCommand::Purge { name } => {
                client
                    .purge_queue(pb::PurgeQueueRequest { name: name.clone() })
                    .await
                    .map_err(err)?;
                print_done(json_out, "purged", &name);
            }
            QueueCommand::Delete { name } => {
                client
                    .delete_queue(pb::DeleteQueueRequest { name: name.clone() })
                    .await
                    .map_err(err)?;
                print_done(json_out, "deleted", &name);
            }
        },
        ClientCommand::Send(send) => {
            let body = match send.body.as_deref() {
                None | Some("-") => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read the body from standard input")?;
                    buf
                }
                Some(text) => text.as_bytes().to_vec(),
            };
            let sent = client
                .send_message(pb::SendMessageRequest {
                    queue: send.queue,
                    body: body.into(),
                    attributes: send.attributes.into_iter().collect(),
                    delay_seconds: send.delay,
                    deduplication_id: send.dedup_id.unwrap_or_default(),
                    group_id: send.group.unwrap_or_default(),
                })
                .await
                .map_err(err)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({
                        "message_id": sent.message_id,
                        "md5_of_body": sent.md5_of_body,
                        "md5_of_message_attributes": sent.md5_of_message_attributes,
                        "sequence_number": sent.sequence_number,
                    })
                );
            } else {
                println!("{}", sent.message_id);
            }
        }
        ClientCommand::Receive(receive) => {
            let messages = client
                .receive_message(pb::ReceiveMessageRequest {
                    queue: receive.queue.clone(),
                    max_messages: receive.max,
                    wait_time_seconds: receive.wait,
                    visibility_timeout_seconds: receive.visibility_timeout,
                })
                .await
                .map_err(err)?
                .into_inner()
                .messages;
            for m in &messages {
                print_message(json_out, m, !receive.delete);
                if receive.delete {
                    client
                        .delete_message(pb::DeleteMessageRequest {
                            queue: receive.queue.clone(),
                            receipt_handle: m.receipt_handle.clone(),
                        })
                        .await
                        .map_err(err)?;
                }
            }
            if messages.is_empty() && !json_out {
                eprintln!("no message");
            }
        }
        ClientCommand::Consume(args) => consume(&mut client, &endpoint, args, json_out).await?,
        ClientCommand::Delete {
            queue,
            receipt_handle,
        } => {
            client
                .delete_message(pb::DeleteMessageRequest {
                    queue,
                    receipt_handle,
                })
                .await
                .map_err(err)?;
            if json_out {
                println!("{}", json!({ "deleted": true }));
            } else {
                println!("deleted");
            }
        }
        ClientCommand::Dlq(command) => match command {
            DlqCommand::Redrive {
                source,
                to,
                rate,
                wait,
            } => {
                let handle = client
                    .start_message_move_task(pb::StartMessageMoveTaskRequest {
                        source: source.clone(),
                        destination: to.unwrap_or_default(),
                        max_messages_per_second: rate,
                    })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .task_handle;
                if !wait {
                    if json_out {
                        println!("{}", json!({ "task_handle": handle }));
                    } else {
                        println!("{handle}");
                    }
                    return Ok(());
                }
                let mut last_moved = None;
                loop {
                    let tasks = client
                        .list_message_move_tasks(pb::ListMessageMoveTasksRequest {
                            source: source.clone(),
                        })
                        .await
                        .map_err(err)?
                        .into_inner()
                        .tasks;
                    let task = tasks
                        .into_iter()
                        .find(|t| t.task_handle == handle)
                        .ok_or_else(|| anyhow!("task {handle} is no longer listed"))?;
                    let running = task.status() == pb::MessageMoveTaskStatus::Running;
                    if !running || (!json_out && last_moved != Some(task.moved)) {
                        print_task(json_out, &task);
                        last_moved = Some(task.moved);
                    }
                    if !running {
                        if task.status() == pb::MessageMoveTaskStatus::Failed {
                            anyhow::bail!("task {handle} failed: {}", task.failure_reason);
                        }
                        break;
                    }
                    // Polled: the API has no stream of task progress.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            DlqCommand::Tasks { source } => {
                let tasks = client
                    .list_message_move_tasks(pb::ListMessageMoveTasksRequest { source })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .tasks;
                for task in &tasks {
                    print_task(json_out, task);
                }
                if tasks.is_empty() && !json_out {
                    eprintln!("no task");
                }
            }
            DlqCommand::Cancel { task_handle } => {
                let moved = client
                    .cancel_message_move_task(pb::CancelMessageMoveTaskRequest {
                        task_handle: task_handle.clone(),
                    })
                    .await
                    .map_err(err)?
                    .into_inner()
                    .moved;
                if json_out {
                    println!("{}", json!({ "task_handle": task_handle, "moved": moved }));
                } else {
                    println!("cancelled {task_handle} after {moved} moved");
                }
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_flags() {
        let (name, v) = parse_attribute("color=String:blue").unwrap();
        assert_eq!((name.as_str(), v.string_value.as_str()), ("color", "blue"));
        let (_, v) = parse_attribute("blob=Binary:00ff").unwrap();
        assert_eq!(v.binary_value, vec![0, 255]);
        assert!(parse_attribute("blob=Binary:0g").is_err());
        assert!(parse_attribute("novalue").is_err());
    }
}
