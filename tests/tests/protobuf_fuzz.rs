//! The protobuf decode path under fuzzing, against a real `sluice standalone`: random bytes, and
//! valid requests with bytes flipped, cut or appended, sent as they are to every unary method.
//! `SLUICE_FUZZ_REQUESTS` sets how many (a third of it; 3,000 by default).

use std::collections::HashMap;
use std::time::Duration;

use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sluice_proto::v1 as pb;
use sluice_tests::hostile::create;
use sluice_tests::{queue_counts, ServerProcess};
use tonic::Code;

/// Sends bytes as they are: the byte-level fuzz's client codec.
#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Random bytes, and valid requests with bytes flipped, cut or appended, to every unary method
/// of the public API: each is answered (no hang) with a code that names the caller's mistake
/// or a success, never INTERNAL or UNKNOWN (what a panic or a decode failure gave), and the
/// server lives on with a bystander queue untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protobuf_bytes_fuzzed_into_every_method_get_a_caller_error_and_never_break_the_server() {
    use proptest::prelude::*;
    use prost::Message;

    let requests: usize = std::env::var("SLUICE_FUZZ_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .map_or(3_000, |n: usize| n.div_ceil(3));
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    create(&mut client, "target", false).await;
    create(&mut client, "keep", false).await;
    client
        .send_message(pb::SendMessageRequest {
            queue: "keep".into(),
            body: b"bystander".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let attribute = pb::MessageAttributeValue {
        data_type: "Number".into(),
        string_value: "12.5".into(),
        binary_value: Default::default(),
    };
    // A valid request of each kind, for the mutations to start from.
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "/sluice.v1.QueueService/SendMessage",
            pb::SendMessageRequest {
                queue: "target".into(),
                body: b"hello".to_vec().into(),
                attributes: [("n".to_owned(), attribute.clone())].into(),
                delay_seconds: Some(0),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/sluice.v1.QueueService/SendMessageBatch",
            pb::SendMessageBatchRequest {
                queue: "target".into(),
                entries: vec![pb::SendMessageBatchEntry {
                    id: "a".into(),
                    body: b"hi".to_vec().into(),
                    attributes: [("n".to_owned(), attribute)].into(),
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        ),
        (
            "/sluice.v1.QueueService/ReceiveMessage",
            pb::ReceiveMessageRequest {
                queue: "target".into(),
                max_messages: 10,
                wait_time_seconds: Some(0),
                visibility_timeout_seconds: Some(0),
            }
            .encode_to_vec(),
        ),
        (
            "/sluice.v1.QueueService/ChangeMessageVisibility",
            pb::ChangeMessageVisibilityRequest {
                queue: "target".into(),
                receipt_handle: "AQAAAAAAAAABAAAAAAAAAAE".into(),
                visibility_timeout_seconds: 5,
            }
            .encode_to_vec(),
        ),
        (
            "/sluice.v1.QueueService/SetQueueAttributes",
            pb::SetQueueAttributesRequest {
                name: "target".into(),
                attributes: Some(pb::QueueAttributes {
                    visibility_timeout_seconds: Some(1),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        ),
        (
            "/sluice.v1.QueueService/CreateQueue",
            pb::CreateQueueRequest {
                name: "made".into(),
                attributes: Some(pb::QueueAttributes {
                    delay_seconds: Some(1),
                    ..Default::default()
                }),
                tags: [("team".to_owned(), "a".to_owned())].into(),
            }
            .encode_to_vec(),
        ),
    ];
    // Methods that only take random bytes (RotateMasterKey would rotate on an empty request).
    let others = [
        "/sluice.v1.QueueService/GetQueue",
        "/sluice.v1.QueueService/ListQueues",
        "/sluice.v1.QueueService/DeleteQueue",
        "/sluice.v1.QueueService/PurgeQueue",
        "/sluice.v1.QueueService/DeleteMessage",
        "/sluice.v1.QueueService/DeleteMessageBatch",
        "/sluice.v1.QueueService/ChangeMessageVisibilityBatch",
        "/sluice.v1.QueueService/StartMessageMoveTask",
        "/sluice.v1.QueueService/ListMessageMoveTasks",
        "/sluice.v1.QueueService/CancelMessageMoveTask",
        "/sluice.v1.IdentityService/CreatePrincipal",
        "/sluice.v1.IdentityService/ListPrincipals",
        "/sluice.v1.IdentityService/GetPolicy",
        "/sluice.v1.IdentityService/Grant",
    ];
    let mutation = (
        0..seeds.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        prop_oneof![Just(None), any::<prop::sample::Index>().prop_map(Some)],
        proptest::collection::vec(any::<u8>(), 0..8),
    );
    let random = (
        0..others.len() + seeds.len(),
        proptest::collection::vec(any::<u8>(), 0..96),
    );
    let mut runner = TestRunner::default();
    let mut grpc = tonic::client::Grpc::new(server.channel());
    let mut codes: HashMap<String, usize> = HashMap::new();
    for step in 0..requests {
        let (path, bytes) = if step % 2 == 0 {
            let (seed, flips, cut, tail) = mutation.new_tree(&mut runner).unwrap().current();
            let (path, mut bytes) = seeds[seed].clone();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes.extend(tail);
            (path, bytes)
        } else {
            let (method, bytes) = random.new_tree(&mut runner).unwrap().current();
            let path = others
                .get(method)
                .copied()
                .unwrap_or_else(|| seeds[method - others.len()].0);
            (path, bytes)
        };
        grpc.ready().await.expect("the server takes calls");
        let call = grpc.unary(
            tonic::Request::new(bytes.clone()),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        );
        let Ok(result) = tokio::time::timeout(Duration::from_secs(30), call).await else {
            panic!("{path} with {bytes:?} did not return within 30 s");
        };
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        assert!(
            matches!(
                code,
                Code::Ok
                    | Code::InvalidArgument
                    | Code::NotFound
                    | Code::AlreadyExists
                    | Code::FailedPrecondition
                    | Code::PermissionDenied
            ),
            "{path} with bytes {bytes:?}: {:?}",
            result.err()
        );
        *codes.entry(format!("{code:?}")).or_default() += 1;
    }
    println!("codes: {codes:?}");
    assert!(server.exited().unwrap().is_none(), "the server died");
    let keep = queue_counts(&mut client, "keep").await;
    assert_eq!((keep.visible, keep.in_flight, keep.delayed), (1, 0, 0));
    assert!(
        codes.get("InvalidArgument").copied().unwrap_or(0) > requests / 10,
        "{codes:?}"
    );
}
