//! The client commands: queue administration, send, receive and delete against any endpoint
//! (`run`); the operators' commands are in `admin`, the printing of what comes back in `print`.

mod admin;
mod consume;
mod identity;
mod print;

use std::io::Read;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sluice_client::retry_throttled;
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;

pub use admin::{run_admin, AdminCommand};
use print::{print_done, print_message, print_queue, print_task};

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
    /// Messages sent per second at most, all callers together; 0 goes back to the frontends'
    /// default.
    #[arg(long)]
    send_rate: Option<u32>,
    /// Bytes sent per second at most (bodies and attributes; at least 1048576); 0 goes back to
    /// the default.
    #[arg(long)]
    send_bytes_rate: Option<u32>,
    /// Receives per second at most; 0 goes back to the default.
    #[arg(long)]
    receive_rate: Option<u32>,
    /// Deletes and visibility changes per second at most; 0 goes back to the default.
    #[arg(long)]
    delete_rate: Option<u32>,
    /// Encrypt bodies and attributes at rest under the queue's own key [default at creation:
    /// on wherever the frontends have a master key].
    #[arg(long)]
    encrypt: Option<bool>,
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
            server_side_encryption: self.encrypt,
            redrive_policy: self.dlq.as_ref().map(|dlq| pb::RedrivePolicy {
                dead_letter_queue: dlq.clone(),
                max_receive_count: self.max_receives.unwrap_or_default(),
            }),
            rate_limits: Some(pb::RateLimits {
                send_messages_per_second: self.send_rate,
                send_bytes_per_second: self.send_bytes_rate,
                receives_per_second: self.receive_rate,
                deletes_per_second: self.delete_rate,
            }),
            redrive_allow_policy: None,
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
    /// A trace context handed to the message's receivers (an X-Ray or W3C traceparent header).
    #[arg(long)]
    trace_header: Option<String>,
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

pub(crate) fn parse_tag(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("tag {raw:?} is not KEY=VALUE"))
}

pub(crate) fn parse_attribute(raw: &str) -> Result<(String, pb::MessageAttributeValue), String> {
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

pub(crate) fn decode_hex(raw: &str) -> Option<Vec<u8>> {
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Turns a gRPC failure into an error that says what went wrong in the user's terms.
pub(crate) fn failed(endpoint: &str, status: tonic::Status) -> anyhow::Error {
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

/// Deletes a message, backing off while throttled.
async fn delete(
    client: &QueueClient,
    queue: &str,
    receipt_handle: &str,
) -> Result<(), tonic::Status> {
    let request = pb::DeleteMessageRequest {
        queue: queue.to_owned(),
        receipt_handle: receipt_handle.to_owned(),
    };
    retry_throttled(|| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.delete_message(request).await }
    })
    .await
    .map(|_| ())
}

/// A client of the identity service at `endpoint`, presenting the installed access key.
fn identity_client(endpoint: &str) -> anyhow::Result<sluice_client::IdentityClient> {
    let channel = sluice_common::tls::channel(endpoint, None, |endpoint| endpoint)
        .with_context(|| format!("endpoint {endpoint:?}"))?;
    Ok(sluice_client::identity_client(
        channel,
        sluice_common::credentials::installed(),
    ))
}

pub async fn run(endpoint: String, json_out: bool, command: ClientCommand) -> anyhow::Result<()> {
    let channel = sluice_common::tls::channel(&endpoint, None, |endpoint| endpoint)
        .with_context(|| format!("endpoint {endpoint:?}"))?;
    let mut client = sluice_client::queue_client(channel, sluice_common::credentials::installed())
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
            let request = pb::SendMessageRequest {
                queue: send.queue,
                body: body.into(),
                attributes: send.attributes.into_iter().collect(),
                delay_seconds: send.delay,
                deduplication_id: send.dedup_id.unwrap_or_default(),
                group_id: send.group.unwrap_or_default(),
                trace_header: send.trace_header.unwrap_or_default(),
            };
            let sent = retry_throttled(|| {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.send_message(request).await }
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
            let request = pb::ReceiveMessageRequest {
                queue: receive.queue.clone(),
                max_messages: receive.max,
                wait_time_seconds: receive.wait,
                visibility_timeout_seconds: receive.visibility_timeout,
            };
            let messages = retry_throttled(|| {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.receive_message(request).await }
            })
            .await
            .map_err(err)?
            .into_inner()
            .messages;
            for m in &messages {
                print_message(json_out, m, !receive.delete);
                if receive.delete {
                    delete(&client, &receive.queue, &m.receipt_handle)
                        .await
                        .map_err(err)?;
                }
            }
            if messages.is_empty() && !json_out {
                eprintln!("no message");
            }
        }
        ClientCommand::Consume(args) => {
            consume::consume(&mut client, &endpoint, args, json_out).await?
        }
        ClientCommand::Delete {
            queue,
            receipt_handle,
        } => {
            delete(&client, &queue, &receipt_handle)
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
