//! `sluice consume`: a Consume stream that prints each message and acknowledges it once printed.

use anyhow::anyhow;
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;

use super::print::print_message;
use super::{failed, ConsumeArgs};

/// `sluice consume`: prints messages as the server pushes them and deletes each batch once it
/// is printed, until `--count` messages or Ctrl-C.
pub(crate) async fn consume(
    client: &mut QueueClient,
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
