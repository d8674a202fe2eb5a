//! Traces leave `sluice standalone` over OTLP, continue a caller's W3C trace context, and the
//! request's log lines carry the trace id. The collector is a real OTLP/gRPC server on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use sluice_proto::v1 as pb;
use sluice_tests::dev::DevCluster;
use sluice_tests::{wait_for, StandaloneProcess};
use tonic::{Request, Response, Status};

/// An exported span with the resource it came from.
#[derive(Clone)]
struct Exported {
    service_name: String,
    span: Span,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    }
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_collector() -> (std::net::SocketAddr, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, collector)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// `message` as a request from a caller that is itself traced, in trace `TRACE_ID`.
fn traced<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    request
}

#[tokio::test]
async fn spans_reach_the_collector_and_logs_carry_the_trace_id() {
    let (collector_addr, collector) = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = StandaloneProcess::start_with(&dir.path().join("data"), |command| {
        command
            .arg("--log-json")
            .env("SLUICE_OTLP_ENDPOINT", format!("http://{collector_addr}"))
            // Refused requests log at debug; export quickly instead of every 5 s.
            .env("RUST_LOG", "warn,sluice_rpc=debug")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stderr(log);
    })
    .unwrap();
    let mut client = server.client().await.unwrap();

    // A caller that is itself traced: the server's span joins its trace.
    let request = traced(pb::GetQueueRequest {
        name: "no-such-queue".into(),
    });
    let status = client.get_queue(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // A caller without trace context gets a trace of its own.
    client
        .create_queue(pb::CreateQueueRequest {
            name: "traced".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let find = |method: &str| -> Option<Exported> {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.attribute("method").as_deref() == Some(method))
            .cloned()
    };
    wait_for(
        "both RPC spans at the collector",
        Duration::from_secs(20),
        || Ok(find("GetQueue").is_some() && find("CreateQueue").is_some()),
    )
    .await
    .unwrap();

    let joined = find("GetQueue").unwrap();
    assert_eq!(joined.service_name, "sluice-standalone");
    assert_eq!(joined.span.name, "sluice.v1.QueueService/GetQueue");
    assert_eq!(joined.span.kind, SpanKind::Server as i32);
    assert_eq!(int_attribute(&joined, "rpc.grpc.status_code"), Some(5));
    assert_eq!(hex(&joined.span.trace_id), TRACE_ID);
    assert_eq!(hex(&joined.span.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(joined.attribute("queue").as_deref(), Some("no-such-queue"));
    assert_eq!(joined.attribute("trace_id").as_deref(), Some(TRACE_ID));

    let own = find("CreateQueue").unwrap();
    assert_ne!(hex(&own.span.trace_id), TRACE_ID);
    assert!(
        own.span.parent_span_id.is_empty(),
        "a root span has no parent"
    );
    assert_eq!(own.attribute("trace_id"), Some(hex(&own.span.trace_id)));

    server.terminate().await.unwrap();
    // The refused request's log line names the caller's trace.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let refused = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "request refused")
        .unwrap_or_else(|| panic!("no 'request refused' line in:\n{logs}"));
    assert_eq!(refused["span"]["trace_id"], TRACE_ID, "{refused}");
    assert_eq!(refused["span"]["method"], "GetQueue", "{refused}");
}

fn int_attribute(exported: &Exported, key: &str) -> Option<i64> {
    exported
        .span
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(v) => Some(*v),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One trace crosses every tier: a traced CreateQueue through a frontend produces spans in the
/// frontend, the metadata ring, the manager and the backend, all in the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_crosses_every_tier() {
    let (collector_addr, collector) = start_collector().await;
    // Every service exports to the collector, quickly; RPC spans are at info level.
    let endpoint = format!("http://{collector_addr}");
    sluice_tests::set_child_env(&[
        ("SLUICE_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "warn,sluice_rpc=info"),
    ]);
    let etcd = sluice_tests::EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _backend = sluice_tests::ServerProcess::start_backend(
        &dir.path().join("a1"),
        &etcd.endpoint,
        "a",
        "a1",
    )
    .unwrap();
    let metadata = sluice_tests::ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    let _manager = sluice_tests::ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let frontend =
        sluice_tests::ServerProcess::start_frontend(&[metadata.endpoint()], 1000).unwrap();
    sluice_tests::set_child_env(&[]);

    let mut client = frontend.client().await.unwrap();
    let request = traced(pb::CreateQueueRequest {
        name: "traced".into(),
        ..Default::default()
    });
    // The manager may still be campaigning; the frontend waits for it through the ring.
    client.create_queue(request).await.unwrap();

    let in_trace = |service: &str, span: &str| {
        collector.spans.lock().unwrap().iter().any(|e| {
            e.service_name == service && e.span.name == span && hex(&e.span.trace_id) == TRACE_ID
        })
    };
    wait_for(
        "spans of every tier in the caller's trace",
        Duration::from_secs(20),
        || {
            Ok(
                in_trace("sluice-frontend", "sluice.v1.QueueService/CreateQueue")
                    && in_trace(
                        "sluice-metadata",
                        "sluice.v1.MetadataService/CreateQueueRecord",
                    )
                    && in_trace("sluice-manager", "sluice.v1.ManagerService/PlaceQueue")
                    && in_trace("sluice-backend", "sluice.v1.BackendService/PutQueue"),
            )
        },
    )
    .await
    .unwrap_or_else(|err| {
        let seen: Vec<_> = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.service_name.clone(),
                    e.span.name.clone(),
                    hex(&e.span.trace_id),
                )
            })
            .collect();
        panic!("{err}: {seen:?}")
    });
}

/// The spans of `trace` the collector holds, by span id.
fn trace_spans(collector: &Collector, trace: &str) -> HashMap<Vec<u8>, Exported> {
    collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|e| hex(&e.span.trace_id) == trace)
        .map(|e| (e.span.span_id.clone(), e.clone()))
        .collect()
}

/// One send to a SYNC queue of the dev cluster (three replicas) is one trace, from the
/// frontend's RPC down to the leader's fsync of the Raft log: the frontend's server span, its
/// client span to the backend, the backend's server span, the group commit, the Raft
/// replication of the commit's entry, its append to the leader's log and the fsync of that
/// append, and its apply; each a child of the one before, each with a duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_is_traced_from_the_frontend_through_raft_to_the_fsync() {
    let (collector_addr, collector) = start_collector().await;
    let endpoint = format!("http://{collector_addr}");
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(
        &dir.path().join("cluster"),
        &[],
        &[
            ("SLUICE_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            (
                "RUST_LOG",
                "warn,sluice_rpc=info,sluice_storage=info,sluice_backend=info",
            ),
        ],
    )
    .unwrap();
    let mut client = cluster.client(0).unwrap();
    client
        .create_queue(pb::CreateQueueRequest {
            name: "traced".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let request = traced(pb::SendMessageRequest {
        queue: "traced".into(),
        body: b"where does the time go".to_vec().into(),
        ..Default::default()
    });
    client.send_message(request).await.unwrap();

    // (service, span name, kind) from the top down; each is the parent of the next.
    let chain = [
        (
            "sluice-frontend",
            "sluice.v1.QueueService/SendMessage",
            SpanKind::Server,
        ),
        (
            "sluice-frontend",
            "sluice.v1.BackendService/Send",
            SpanKind::Client,
        ),
        (
            "sluice-backend",
            "sluice.v1.BackendService/Send",
            SpanKind::Server,
        ),
        ("sluice-backend", "storage.group_commit", SpanKind::Internal),
        ("sluice-backend", "raft.replicate", SpanKind::Internal),
        ("sluice-backend", "raft.append", SpanKind::Internal),
        ("sluice-backend", "storage.fsync", SpanKind::Internal),
    ];
    let find = |spans: &HashMap<Vec<u8>, Exported>,
                (service, name, kind): (&str, &str, SpanKind)| {
        spans
            .values()
            .find(|e| {
                e.service_name == service && e.span.name == name && e.span.kind == kind as i32
            })
            .cloned()
    };
    let complete = || {
        let spans = trace_spans(&collector, TRACE_ID);
        chain.iter().all(|link| find(&spans, *link).is_some())
            && spans.values().any(|e| e.span.name == "raft.apply")
    };
    wait_for(
        "the send's trace down to the fsync",
        Duration::from_secs(30),
        || Ok(complete()),
    )
    .await
    .unwrap_or_else(|err| {
        let seen: Vec<_> = trace_spans(&collector, TRACE_ID)
            .values()
            .map(|e| (e.service_name.clone(), e.span.name.clone(), e.span.kind))
            .collect();
        panic!("{err}: {seen:?}")
    });

    let spans = trace_spans(&collector, TRACE_ID);
    let mut parent_id = hex_bytes(PARENT_SPAN_ID);
    for link in chain {
        let span = find(&spans, link).unwrap();
        assert_eq!(
            span.span.parent_span_id, parent_id,
            "{} {} is not a child of the span before it",
            link.0, link.1
        );
        assert!(
            span.span.end_time_unix_nano > span.span.start_time_unix_nano,
            "{} has no duration",
            link.1
        );
        println!(
            "{:<16} {:<40} {:>9.3} ms",
            link.0,
            link.1,
            (span.span.end_time_unix_nano - span.span.start_time_unix_nano) as f64 / 1e6
        );
        parent_id = span.span.span_id.clone();
    }
    let replicate = find(&spans, chain[4]).unwrap();
    let apply = spans
        .values()
        .find(|e| e.span.name == "raft.apply")
        .unwrap();
    assert_eq!(apply.span.parent_span_id, replicate.span.span_id);
    drop(cluster);
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
