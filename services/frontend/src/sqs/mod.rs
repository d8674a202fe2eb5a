//! Amazon SQS's wire protocols on a port of their own, so code written for SQS (the AWS SDKs,
//! the AWS CLI, tools built on them) works against Sluice by changing its endpoint. Requests are
//! authenticated with AWS Signature Version 4 under Sluice's access keys, then served by the same
//! `QueueService` as gRPC calls, with the same permissions, limits, throttling and metrics.

mod attributes;
mod error;
mod messages;
mod queues;
mod server;
mod sigv4;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tonic::transport::server::TcpConnectInfo;

pub use server::{serve, SqsServer};

use crate::auth::{Authenticated, Identity};
use crate::service::QueueServiceImpl;
use error::{Code, SqsError};

/// Where the SQS endpoint listens and how it names queues.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SqsOpts {
    /// Address of the SQS endpoint (HTTP, or HTTPS where the gRPC port has TLS).
    #[serde(default = "default_addr")]
    pub sqs_addr: SocketAddr,
    /// The account id in queue URLs and ARNs: twelve digits.
    #[serde(default = "default_account")]
    pub sqs_account_id: String,
    /// The region clients sign their requests for, and that ARNs name.
    #[serde(default = "default_region")]
    pub sqs_region: String,
    /// The base of queue URLs, e.g. `https://sqs.example.com` behind a load balancer; default:
    /// the scheme and `Host` of each request.
    #[serde(default)]
    pub sqs_url: Option<String>,
}

fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9324))
}

fn default_account() -> String {
    "000000000000".into()
}

fn default_region() -> String {
    "us-east-1".into()
}

impl Default for SqsOpts {
    fn default() -> Self {
        SqsOpts {
            sqs_addr: default_addr(),
            sqs_account_id: default_account(),
            sqs_region: default_region(),
            sqs_url: None,
        }
    }
}

impl SqsOpts {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sqs_account_id.len() == 12
                && self.sqs_account_id.chars().all(|c| c.is_ascii_digit()),
            "sqs_account_id must be twelve digits, as AWS account ids are"
        );
        anyhow::ensure!(
            !self.sqs_region.is_empty()
                && self
                    .sqs_region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "sqs_region must be letters, digits and '-', like us-east-1"
        );
        if let Some(url) = &self.sqs_url {
            anyhow::ensure!(
                (url.starts_with("http://") || url.starts_with("https://"))
                    && !url.trim_end_matches('/').ends_with(':'),
                "sqs_url must be an http:// or https:// URL, like https://sqs.example.com"
            );
        }
        Ok(())
    }
}

/// The flags of [`SqsOpts`], for the command lines of the frontend and standalone.
#[derive(clap::Args, serde::Serialize, Debug, Default)]
pub struct SqsFlags {
    /// Address of the SQS endpoint [default: 127.0.0.1:9324] [env: SLUICE_SQS_ADDR]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqs_addr: Option<SocketAddr>,
    /// Account id in SQS queue URLs and ARNs [default: 000000000000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqs_account_id: Option<String>,
    /// Region SQS clients sign for [default: us-east-1]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqs_region: Option<String>,
    /// Base of SQS queue URLs [default: the scheme and Host of each request]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqs_url: Option<String>,
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_sqs_requests_total",
        "Requests to the SQS endpoint by action, protocol (json or query) and SQS error code \
         (OK when it succeeded)",
        &["action", "protocol", "code"]
    )
    .expect("metric registers once")
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_sqs_duration_seconds",
        "SQS endpoint request latency by action (long polls included)",
        &["action"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

/// The actions the endpoint serves, for the metric's labels: any other name counts as `unknown`,
/// so a client cannot add series.
const ACTIONS: &[&str] = &[
    "CreateQueue",
    "GetQueueUrl",
    "ListQueues",
    "DeleteQueue",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "PurgeQueue",
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "ListDeadLetterSourceQueues",
    "StartMessageMoveTask",
    "ListMessageMoveTasks",
    "CancelMessageMoveTask",
    "AddPermission",
    "RemovePermission",
];

fn action_label(action: &str) -> &'static str {
    ACTIONS
        .iter()
        .find(|known| **known == action)
        .copied()
        .unwrap_or("unknown")
}

/// How long a FIFO receive's answer is kept for a retry with its `ReceiveRequestAttemptId`,
/// as SQS keeps it.
const ATTEMPT_TTL: Duration = Duration::from_secs(5 * 60);
const ATTEMPT_CAPACITY: u64 = 100_000;

/// A receive attempt: the caller, the queue and the attempt id.
type Attempt = (String, String, String);

/// The SQS endpoint's state: the service it translates to, and how it names queues.
#[derive(Clone)]
pub struct Sqs {
    service: QueueServiceImpl,
    opts: SqsOpts,
    /// The scheme of this port's URLs.
    scheme: &'static str,
    /// Answers of FIFO receives that named an attempt id, for their retries.
    attempts: moka::sync::Cache<Attempt, Arc<Map<String, Value>>>,
}

/// Who sent a request, and from where.
pub(crate) struct Ctx {
    identity: Identity,
    peer: Option<SocketAddr>,
    /// The base of queue URLs for this request: the configured one, else scheme and `Host`.
    base_url: String,
    /// The W3C trace context the client sent, continued by the request's span.
    traceparent: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Ctx {
    /// A request to the `QueueService` on behalf of this caller.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .extensions_mut()
            .insert(Authenticated(self.identity.clone()));
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: self.peer,
        });
        if let Some(traceparent) = &self.traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.clone());
        }
        request
    }
}

impl Sqs {
    pub(crate) fn new(service: QueueServiceImpl, opts: SqsOpts, tls: bool) -> Self {
        LazyLock::force(&REQUESTS);
        LazyLock::force(&DURATION);
        Sqs {
            service,
            opts,
            scheme: if tls { "https" } else { "http" },
            attempts: moka::sync::Cache::builder()
                .max_capacity(ATTEMPT_CAPACITY)
                .time_to_live(ATTEMPT_TTL)
                .build(),
        }
    }

    /// Runs `action` on `input`; the output is in the JSON protocol's shape.
    async fn dispatch(
        &self,
        ctx: &Ctx,
        action: &str,
        input: Map<String, Value>,
    ) -> Result<Map<String, Value>, SqsError> {
        match action {
            "CreateQueue" => self.create_queue(ctx, parse(input)?).await,
            "GetQueueUrl" => self.get_queue_url(ctx, parse(input)?).await,
            "ListQueues" => self.list_queues(ctx, parse(input)?).await,
            "DeleteQueue" => self.delete_queue(ctx, parse(input)?).await,
            "GetQueueAttributes" => self.get_queue_attributes(ctx, parse(input)?).await,
            "SetQueueAttributes" => self.set_queue_attributes(ctx, parse(input)?).await,
            "PurgeQueue" => self.purge_queue(ctx, parse(input)?).await,
            "TagQueue" => self.tag_queue(ctx, parse(input)?).await,
            "UntagQueue" => self.untag_queue(ctx, parse(input)?).await,
            "ListQueueTags" => self.list_queue_tags(ctx, parse(input)?).await,
            "ListDeadLetterSourceQueues" => {
                self.list_dead_letter_source_queues(ctx, parse(input)?)
                    .await
            }
            "StartMessageMoveTask" => self.start_message_move_task(ctx, parse(input)?).await,
            "ListMessageMoveTasks" => self.list_message_move_tasks(ctx, parse(input)?).await,
            "CancelMessageMoveTask" => self.cancel_message_move_task(ctx, parse(input)?).await,
            "SendMessage" => self.send_message(ctx, parse(input)?).await,
            "SendMessageBatch" => self.send_message_batch(ctx, parse(input)?).await,
            "ReceiveMessage" => self.receive_message(ctx, parse(input)?).await,
            "DeleteMessage" => self.delete_message(ctx, parse(input)?).await,
            "DeleteMessageBatch" => self.delete_message_batch(ctx, parse(input)?).await,
            "ChangeMessageVisibility" => self.change_message_visibility(ctx, parse(input)?).await,
            "ChangeMessageVisibilityBatch" => {
                self.change_message_visibility_batch(ctx, parse(input)?)
                    .await
            }
            "AddPermission" | "RemovePermission" => Err(SqsError::new(
                Code::UnsupportedOperation,
                format!(
                    "{action}: Sluice grants rights to its own principals, not to AWS accounts; \
                     use `sluice admin grant` (README, \"Security\")"
                ),
            )),
            other => Err(SqsError::new(
                Code::InvalidAction,
                format!("The action {other} is not valid for this endpoint."),
            )),
        }
    }

    /// The URL of queue `name`.
    fn queue_url(&self, ctx: &Ctx, name: &str) -> String {
        format!("{}/{}/{name}", ctx.base_url, self.opts.sqs_account_id)
    }

    /// The ARN of queue `name`.
    fn queue_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:sqs:{}:{}:{name}",
            self.opts.sqs_region, self.opts.sqs_account_id
        )
    }

    /// The queue a queue URL (or its path) names. Any host is accepted, as a load balancer's
    /// name may differ from the one in the URL; the account must be this endpoint's.
    fn queue_name(&self, url: &str) -> Result<String, SqsError> {
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
            None => url,
        };
        let mut parts = path.trim_start_matches('/').split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(account), Some(name), None) if !name.is_empty() => {
                if account != self.opts.sqs_account_id {
                    return Err(SqsError::no_queue());
                }
                Ok(name.to_owned())
            }
            _ => Err(SqsError::new(
                Code::InvalidAddress,
                format!(
                    "The address {url} is not valid for this endpoint: a queue URL is \
                     <endpoint>/<account id>/<queue name>"
                ),
            )),
        }
    }

    /// The queue an ARN names; it must be of this endpoint's region and account.
    fn arn_queue(&self, parameter: &str, arn: &str) -> Result<String, SqsError> {
        let prefix = format!(
            "arn:aws:sqs:{}:{}:",
            self.opts.sqs_region, self.opts.sqs_account_id
        );
        match arn.strip_prefix(&prefix) {
            Some(name) if !name.is_empty() && !name.contains(':') => Ok(name.to_owned()),
            _ => Err(SqsError::invalid(
                parameter,
                format!("{arn:?} is not the ARN of a queue of this endpoint ({prefix}<name>)"),
            )),
        }
    }
}

/// Reads an action's input into its typed shape; a member of the wrong type is named.
fn parse<T: DeserializeOwned>(input: Map<String, Value>) -> Result<T, SqsError> {
    serde_json::from_value(Value::Object(input)).map_err(|err| {
        SqsError::new(
            Code::InvalidParameterValue,
            format!("The request is not valid: {err}"),
        )
    })
}

/// Counts and times one request.
fn observe(action: &str, protocol: wire::Protocol, started: Instant, outcome: Option<&SqsError>) {
    let action = action_label(action);
    let protocol = match protocol {
        wire::Protocol::Json => "json",
        wire::Protocol::Query => "query",
    };
    let code = outcome.map_or("OK", |err| err.code.shape());
    REQUESTS.with_label_values(&[action, protocol, code]).inc();
    DURATION
        .with_label_values(&[action])
        .observe(started.elapsed().as_secs_f64());
}

/// A required member.
fn required<T>(value: Option<T>, name: &str) -> Result<T, SqsError> {
    value.ok_or_else(|| SqsError::missing(name))
}

/// An integer member within `range`.
fn ranged(
    value: Option<i64>,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<u32>, SqsError> {
    match value {
        None => Ok(None),
        Some(v) if range.contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(SqsError::invalid(
            name,
            format!("{v} is outside {} to {}", range.start(), range.end()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_refuse_a_malformed_account_region_or_url() {
        assert!(SqsOpts::default().check().is_ok());
        for opts in [
            SqsOpts {
                sqs_account_id: "12345".into(),
                ..Default::default()
            },
            SqsOpts {
                sqs_region: "us east".into(),
                ..Default::default()
            },
            SqsOpts {
                sqs_url: Some("sqs.example.com".into()),
                ..Default::default()
            },
        ] {
            assert!(opts.check().is_err(), "{opts:?}");
        }
    }
}
