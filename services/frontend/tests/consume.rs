//! `Consume` over a real gRPC connection to a served `QueueService`, on the real engine and
//! embedded metadata store: the prefetch window, acks that delete, unacknowledged messages
//! returned when the stream ends, and the refusals that name their field.

use std::collections::HashMap;

use sluice_common::grpc::GrpcServer;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

mod common;
use common::assert_code;

struct Server {
    client: QueueServiceClient<Channel>,
    shutdown: CancellationToken,
    _server: GrpcServer,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let (service, dir) = common::service();
    let shutdown = CancellationToken::new();
    let server = sluice_frontend::serve(
        ([127, 0, 0, 1], 0).into(),
        service,
        shutdown.clone(),
        &Default::default(),
        &sluice_common::tls::PortTls::Plain,
    )
    .await
    .unwrap();
    let client = QueueServiceClient::connect(format!("http://{}", server.local_addr))
        .await
        .unwrap();
    Server {
        client,
        shutdown,
        _server: server,
        _dir: dir,
    }
}

impl Server {
    async fn create(&mut self, name: &str) {
        self.client
            .create_queue(pb::CreateQueueRequest {
                name: name.into(),
                attributes: Some(pb::QueueAttributes::default()),
                tags: HashMap::new(),
            })
            .await
            .unwrap();
    }

    async fn send(&mut self, queue: &str, n: usize) {
        for i in 0..n {
            self.client
                .send_message(pb::SendMessageRequest {
                    queue: queue.into(),
                    body: format!("m{i}").into_bytes().into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }

    async fn counts(&mut self, queue: &str) -> pb::QueueCounts {
        self.client
            .get_queue(pb::GetQueueRequest { name: queue.into() })
            .await
            .unwrap()
            .into_inner()
            .queue
            .unwrap()
            .counts
            .unwrap()
    }

    /// Opens a stream whose first request is `first`.
    async fn open(&mut self, first: pb::consume_request::Request) -> Result<Stream, tonic::Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        requests
            .send(pb::ConsumeRequest {
                request: Some(first),
            })
            .unwrap();
        let responses = self
            .client
            .consume(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Stream {
            requests: Some(requests),
            responses,
        })
    }

    async fn consume(&mut self, queue: &str, prefetch: u32) -> Stream {
        self.open(start(queue, prefetch)).await.unwrap()
    }
}

fn start(queue: &str, prefetch: u32) -> pb::consume_request::Request {
    pb::consume_request::Request::Start(pb::ConsumeStart {
        queue: queue.into(),
        prefetch,
        visibility_timeout_seconds: Some(300),
    })
}

struct Stream {
    requests: Option<mpsc::UnboundedSender<pb::ConsumeRequest>>,
    responses: Streaming<pb::ConsumeResponse>,
}

impl Stream {
    async fn next(&mut self) -> Result<Option<pb::consume_response::Response>, tonic::Status> {
        Ok(self.responses.message().await?.map(|r| r.response.unwrap()))
    }

    /// Reads pushed messages until `n` have come.
    async fn messages(&mut self, n: usize) -> Vec<pb::Message> {
        let mut messages = Vec::new();
        while messages.len() < n {
            match self.next().await.unwrap().unwrap() {
                pb::consume_response::Response::Messages(batch) => messages.extend(batch.messages),
                other => panic!("expected messages, got {other:?}"),
            }
        }
        assert_eq!(messages.len(), n, "more messages than the window allows");
        messages
    }

    fn ack(&self, handles: Vec<String>) {
        let ack = pb::consume_request::Request::Ack(pb::ConsumeAck {
            receipt_handles: handles,
        });
        self.requests
            .as_ref()
            .unwrap()
            .send(pb::ConsumeRequest { request: Some(ack) })
            .unwrap();
    }

    /// The answer to the next ack, skipping nothing: messages pushed before it are returned too.
    async fn acked(&mut self) -> (pb::ConsumeAcked, Vec<pb::Message>) {
        let mut pushed = Vec::new();
        loop {
            match self.next().await.unwrap().unwrap() {
                pb::consume_response::Response::Acked(acked) => return (acked, pushed),
                pb::consume_response::Response::Messages(batch) => pushed.extend(batch.messages),
            }
        }
    }

    /// Reads until the stream ends in an error, which it must.
    async fn error(&mut self) -> tonic::Status {
        loop {
            match self.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    }

    /// Closes the client's side and reads to the end of the stream.
    async fn close(&mut self) -> Result<(), tonic::Status> {
        self.requests = None;
        while self.next().await?.is_some() {}
        Ok(())
    }
}

fn handles(messages: &[pb::Message]) -> Vec<String> {
    messages.iter().map(|m| m.receipt_handle.clone()).collect()
}

#[tokio::test]
async fn pushes_within_the_window_and_acks_delete() {
    let mut server = server().await;
    server.create("orders").await;
    // Opened on an empty queue, the stream waits for the first send.
    let mut stream = server.consume("orders", 10).await;
    server.send("orders", 25).await;

    let first = stream.messages(10).await;
    // The window is full: the server took no more than ten.
    let counts = server.counts("orders").await;
    assert_eq!((counts.in_flight, counts.visible), (10, 15));

    stream.ack(handles(&first[..4]));
    let (acked, mut pushed) = stream.acked().await;
    assert_eq!(acked.deleted, 4);
    assert!(acked.failed.is_empty(), "{:?}", acked.failed);
    // Four places came free; acking the other six frees six more.
    stream.ack(handles(&first[4..]));
    let (acked, more) = stream.acked().await;
    assert_eq!(acked.deleted, 6);
    pushed.extend(more);
    let rest = 10 - pushed.len();
    pushed.extend(stream.messages(rest).await);
    let counts = server.counts("orders").await;
    assert_eq!((counts.in_flight, counts.visible), (10, 5));

    stream.ack(handles(&pushed));
    let (acked, mut last) = stream.acked().await;
    assert_eq!(acked.deleted, 10);
    let rest = 5 - last.len();
    last.extend(stream.messages(rest).await);
    stream.ack(handles(&last));
    let (acked, extra) = stream.acked().await;
    assert_eq!((acked.deleted, extra.len()), (5, 0));

    let mut bodies: Vec<_> = first
        .iter()
        .chain(&pushed)
        .chain(&last)
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 25, "every message once");
    stream.close().await.unwrap();
    let counts = server.counts("orders").await;
    assert_eq!((counts.visible, counts.in_flight), (0, 0));
}

#[tokio::test]
async fn ending_the_stream_returns_what_was_not_acked() {
    let mut server = server().await;
    server.create("jobs").await;
    server.send("jobs", 5).await;
    let mut stream = server.consume("jobs", 5).await;
    let received = stream.messages(5).await;
    stream.ack(handles(&received[..2]));
    stream.close().await.unwrap();

    // Visible again at once, not after the 300 s visibility timeout.
    let counts = server.counts("jobs").await;
    assert_eq!((counts.visible, counts.in_flight), (3, 0));
    let again = server
        .client
        .receive_message(pb::ReceiveMessageRequest {
            queue: "jobs".into(),
            max_messages: 10,
            wait_time_seconds: Some(0),
            visibility_timeout_seconds: None,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|m| m.approximate_receive_count == 2));
}

#[tokio::test]
async fn a_server_shutting_down_ends_the_stream_unavailable() {
    let mut server = server().await;
    server.create("mail").await;
    server.send("mail", 3).await;
    let mut stream = server.consume("mail", 10).await;
    let received = stream.messages(3).await;
    stream.ack(handles(&received[..1]));
    let (acked, _) = stream.acked().await;
    assert_eq!(acked.deleted, 1);

    server.shutdown.cancel();
    let status = stream.error().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
}

#[tokio::test]
async fn bad_starts_and_acks_are_refused_by_name() {
    let mut server = server().await;
    server.create("q").await;
    server.send("q", 1).await;

    let ack_first = pb::consume_request::Request::Ack(pb::ConsumeAck {
        receipt_handles: vec!["x".into()],
    });
    assert_code(
        server.open(ack_first).await.map(|_| ()),
        Code::InvalidArgument,
        "start",
    );
    assert_code(
        server.open(start("nope", 10)).await.map(|_| ()),
        Code::NotFound,
        "nope",
    );
    assert_code(
        server.open(start("q", 1001)).await.map(|_| ()),
        Code::InvalidArgument,
        "start.prefetch",
    );
    let too_long = pb::consume_request::Request::Start(pb::ConsumeStart {
        queue: "q".into(),
        prefetch: 1,
        visibility_timeout_seconds: Some(43_201),
    });
    assert_code(
        server.open(too_long).await.map(|_| ()),
        Code::InvalidArgument,
        "start.visibility_timeout_seconds",
    );
    // Nothing was received by the refused streams.
    assert_eq!(server.counts("q").await.visible, 1);

    // Handles that are empty or not receipts fail alone, by position; the good one deletes.
    let mut stream = server.consume("q", 1).await;
    let received = stream.messages(1).await;
    stream.ack(vec![
        String::new(),
        "garbage".into(),
        received[0].receipt_handle.clone(),
    ]);
    let (acked, _) = stream.acked().await;
    assert_eq!(acked.deleted, 1);
    let failed: Vec<_> = acked.failed.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(failed, ["0", "1"], "{:?}", acked.failed);
    assert_eq!(acked.failed[0].code, "INVALID_ARGUMENT");

    // An ack of more handles than the limit ends the stream and deletes nothing.
    server.send("q", 1).await;
    let received = stream.messages(1).await;
    stream.ack(vec![received[0].receipt_handle.clone(); 1001]);
    let err = stream.error().await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ack.receipt_handles"), "{err:?}");
    let counts = server.counts("q").await;
    // Not deleted, and given back when the stream ended.
    assert_eq!((counts.visible, counts.in_flight), (1, 0));

    // A second start is refused.
    let mut stream = server.consume("q", 1).await;
    stream.messages(1).await;
    stream
        .requests
        .as_ref()
        .unwrap()
        .send(pb::ConsumeRequest {
            request: Some(start("q", 1)),
        })
        .unwrap();
    let err = stream.error().await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ack"), "{err:?}");
}
