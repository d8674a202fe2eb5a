//! Sending, receiving, deleting and changing the visibility of messages, alone or in batches:
//! each request is checked against its queue's limits, then handed to the backend.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sluice_api::identity::{Action, Principal};
use sluice_api::{
    attach_system, AttributeValue, Error, NewMessage, QueueBackend, QueueRecord, ReceivedMessage,
    Result, SystemAttributes,
};
use sluice_proto::v1 as pb;

use crate::convert::{batch_error, split_results, to_proto_message};
use crate::service::QueueServiceImpl;
use crate::throttle::{Caller, Kind};
use crate::{digest, metrics, validate};

/// The fields of a send, whether it came alone or in a batch.
pub(crate) struct SendFields<'a> {
    body: &'a bytes::Bytes,
    attributes: &'a HashMap<String, pb::MessageAttributeValue>,
    delay_seconds: Option<u32>,
    deduplication_id: &'a str,
    group_id: &'a str,
    trace_header: &'a str,
    /// Who sends it, as receivers see it (`Caller::as_str`).
    sender: &'a str,
}

impl QueueServiceImpl {
    /// Checks one message against the queue's limits and turns it into what the engine stores,
    /// with its size as `max_message_bytes` counts it.
    pub(crate) fn message(
        &self,
        queue: &QueueRecord,
        fields: SendFields<'_>,
    ) -> Result<(NewMessage, usize)> {
        let limit = queue.attributes.max_message_bytes as usize;
        if fields.body.is_empty() {
            return Err(Error::invalid("body", "must not be empty"));
        }
        let attributes_size = validate::message_attributes(fields.attributes)?;
        let size = fields.body.len() + attributes_size;
        if size > limit {
            return Err(Error::invalid(
                "body",
                format!(
                    "message is {size} bytes (body {} + attributes {attributes_size}), the queue's max_message_bytes is {limit}",
                    fields.body.len()
                ),
            ));
        }
        let fifo = queue.attributes.fifo;
        let delay =
            match fields.delay_seconds {
                Some(_) if fifo => return Err(Error::invalid(
                    "delay_seconds",
                    "FIFO queues take no per-message delay; set the queue's delay_seconds instead",
                )),
                Some(secs) => validate::delay("delay_seconds", secs)?,
                None => Duration::from_secs(queue.attributes.delay_seconds.into()),
            };
        validate::group_id(fields.group_id)?;
        if fifo && fields.group_id.is_empty() {
            return Err(Error::invalid("group_id", "required on FIFO queues"));
        }
        validate::deduplication_id(fields.deduplication_id)?;
        let deduplication_id = if !fields.deduplication_id.is_empty() {
            fields.deduplication_id.to_owned()
        } else if fifo && queue.attributes.content_based_deduplication {
            digest::content_deduplication_id(fields.body)
        } else if fifo {
            return Err(Error::invalid(
                "deduplication_id",
                "required on a FIFO queue without content_based_deduplication",
            ));
        } else {
            String::new()
        };
        validate::trace_header(fields.trace_header)?;
        let mut message = NewMessage {
            body: fields.body.clone(),
            attributes: fields
                .attributes
                .iter()
                .map(|(name, v)| {
                    (
                        name.clone(),
                        AttributeValue {
                            data_type: v.data_type.clone(),
                            string_value: v.string_value.clone(),
                            binary_value: v.binary_value.clone(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            delay,
            group_id: fields.group_id.to_owned(),
            deduplication_id,
            // Named and digested by the engine, or by `store` if the queue encrypts its
            // messages.
            message_id: String::new(),
            md5_of_body: String::new(),
        };
        let system = SystemAttributes {
            sender_id: fields.sender.to_owned(),
            deduplication_id: message.deduplication_id.clone(),
            trace_header: fields.trace_header.to_owned(),
        };
        attach_system(&mut message.attributes, &system);
        Ok((message, size))
    }

    pub(crate) async fn send_message(
        &self,
        caller: &Caller,
        req: &pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        let (message, size) = self.message(
            &queue,
            SendFields {
                body: &req.body,
                attributes: &req.attributes,
                delay_seconds: req.delay_seconds,
                deduplication_id: &req.deduplication_id,
                group_id: &req.group_id,
                trace_header: &req.trace_header,
                sender: caller.as_str(),
            },
        )?;
        let _pass = self.bulkheads.send(&queue.name, size)?;
        self.rates.admit_send(caller, &queue, 1, size)?;
        let mut sent = self.store(&queue, vec![message]).await?;
        let sent = sent
            .pop()
            .ok_or_else(|| Error::Internal("engine stored no message".into()))?;
        metrics::count_sent(&queue.name, 1);
        Ok(pb::SendMessageResponse {
            message_id: sent.message_id,
            md5_of_body: sent.md5_of_body,
            sequence_number: sent.sequence.to_string(),
            md5_of_message_attributes: digest::md5_of_attributes(&req.attributes),
        })
    }

    pub(crate) async fn send_message_batch(
        &self,
        caller: &Caller,
        req: &pb::SendMessageBatchRequest,
    ) -> Result<pb::SendMessageBatchResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::batch_size("entries", req.entries.len())?;
        validate::batch_ids("entries.id", req.entries.iter().map(|e| e.id.as_str()))?;
        validate::batch_bytes(
            "entries",
            req.entries
                .iter()
                .map(|e| e.body.len() + sluice_api::content::attributes_size(&e.attributes)),
        )?;
        let mut failed = Vec::new();
        let mut accepted = Vec::new();
        let mut messages = Vec::new();
        let mut bytes = 0;
        for entry in &req.entries {
            let fields = SendFields {
                body: &entry.body,
                attributes: &entry.attributes,
                delay_seconds: entry.delay_seconds,
                deduplication_id: &entry.deduplication_id,
                group_id: &entry.group_id,
                trace_header: &entry.trace_header,
                sender: caller.as_str(),
            };
            match self.message(&queue, fields) {
                Ok((message, size)) => {
                    accepted.push(entry);
                    messages.push(message);
                    bytes += size;
                }
                Err(err) => failed.push(batch_error(entry.id.clone(), &err)),
            }
        }
        let mut successful = Vec::with_capacity(accepted.len());
        if !messages.is_empty() {
            let _pass = self.bulkheads.send(&queue.name, bytes)?;
            // The batch passes whole or fails whole: a client retries it as it sent it.
            self.rates
                .admit_send(caller, &queue, messages.len(), bytes)?;
            match self.store(&queue, messages).await {
                Ok(sent) => {
                    metrics::count_sent(&queue.name, sent.len());
                    for (entry, sent) in accepted.into_iter().zip(sent) {
                        successful.push(pb::SendMessageBatchResultEntry {
                            id: entry.id.clone(),
                            message_id: sent.message_id,
                            md5_of_body: sent.md5_of_body,
                            sequence_number: sent.sequence.to_string(),
                            md5_of_message_attributes: digest::md5_of_attributes(&entry.attributes),
                        });
                    }
                }
                // A refusal to come back later is the whole call's, as the rate limits' are
                // above: clients and SDKs retry a throttled call by themselves, but not the
                // failed entries of a batch that went through.
                Err(err @ Error::Throttled { .. }) => return Err(err),
                Err(err) => {
                    // Nothing of the batch was stored: every entry fails with the same cause.
                    failed.extend(
                        accepted
                            .into_iter()
                            .map(|e| batch_error(e.id.clone(), &err)),
                    );
                }
            }
        }
        Ok(pb::SendMessageBatchResponse { successful, failed })
    }

    pub(crate) async fn receive_message(
        &self,
        caller: &Caller,
        req: &pb::ReceiveMessageRequest,
    ) -> Result<pb::ReceiveMessageResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        let max = validate::max_messages(req.max_messages)?;
        let wait = validate::wait_time(
            "wait_time_seconds",
            req.wait_time_seconds
                .unwrap_or(queue.attributes.receive_wait_time_seconds),
        )?;
        let visibility = validate::visibility_timeout(
            "visibility_timeout_seconds",
            req.visibility_timeout_seconds
                .unwrap_or(queue.attributes.visibility_timeout_seconds),
        )?;
        // A receive that waits holds its place for up to 20 s: it must not take one that quick
        // work needs.
        let _pass = if wait.is_zero() {
            self.bulkheads.short(&queue.name)?
        } else {
            self.bulkheads.long_poll(caller, &queue.name)?
        };
        self.rates.admit(caller, &queue, Kind::Receives, 1)?;
        let received = self
            .backend
            .receive(queue.id, max, visibility, wait)
            .await?;
        let received = crate::sse::opened(self.encryption.as_ref(), received).await?;
        let received = readable(
            self.backend.as_ref(),
            &caller.identity().principal,
            &queue,
            received,
        )
        .await?;
        metrics::count_received(&queue.name, received.len());
        let messages = received.into_iter().map(to_proto_message).collect();
        Ok(pb::ReceiveMessageResponse { messages })
    }

    pub(crate) async fn delete_message(
        &self,
        caller: &Caller,
        req: &pb::DeleteMessageRequest,
    ) -> Result<pb::DeleteMessageResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::receipt_handle("receipt_handle", &req.receipt_handle)?;
        let _pass = self.bulkheads.short(&queue.name)?;
        self.rates.admit(caller, &queue, Kind::Deletes, 1)?;
        let mut results = self
            .backend
            .delete(queue.id, vec![req.receipt_handle.clone()])
            .await?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("engine returned no result".into()))??;
        metrics::count_deleted(&queue.name, 1);
        Ok(pb::DeleteMessageResponse {})
    }

    pub(crate) async fn delete_message_batch(
        &self,
        caller: &Caller,
        req: &pb::DeleteMessageBatchRequest,
    ) -> Result<pb::DeleteMessageBatchResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::batch_size("entries", req.entries.len())?;
        validate::batch_ids("entries.id", req.entries.iter().map(|e| e.id.as_str()))?;
        let mut failed = Vec::new();
        let mut ids = Vec::new();
        let mut handles = Vec::new();
        for entry in &req.entries {
            match validate::receipt_handle("receipt_handle", &entry.receipt_handle) {
                Ok(()) => {
                    ids.push(entry.id.clone());
                    handles.push(entry.receipt_handle.clone());
                }
                Err(err) => failed.push(batch_error(entry.id.clone(), &err)),
            }
        }
        let _pass = self.bulkheads.short(&queue.name)?;
        if !handles.is_empty() {
            self.rates
                .admit(caller, &queue, Kind::Deletes, handles.len())?;
        }
        let results = self.backend.delete(queue.id, handles).await?;
        let successful = split_results(ids, results, &mut failed);
        metrics::count_deleted(&queue.name, successful.len());
        Ok(pb::DeleteMessageBatchResponse { successful, failed })
    }

    pub(crate) async fn change_message_visibility(
        &self,
        caller: &Caller,
        req: &pb::ChangeMessageVisibilityRequest,
    ) -> Result<pb::ChangeMessageVisibilityResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::receipt_handle("receipt_handle", &req.receipt_handle)?;
        let visibility = validate::visibility_timeout(
            "visibility_timeout_seconds",
            req.visibility_timeout_seconds,
        )?;
        let _pass = self.bulkheads.short(&queue.name)?;
        self.rates.admit(caller, &queue, Kind::Deletes, 1)?;
        let mut results = self
            .backend
            .change_visibility(queue.id, vec![(req.receipt_handle.clone(), visibility)])
            .await?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("engine returned no result".into()))??;
        Ok(pb::ChangeMessageVisibilityResponse {})
    }

    pub(crate) async fn change_message_visibility_batch(
        &self,
        caller: &Caller,
        req: &pb::ChangeMessageVisibilityBatchRequest,
    ) -> Result<pb::ChangeMessageVisibilityBatchResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::batch_size("entries", req.entries.len())?;
        validate::batch_ids("entries.id", req.entries.iter().map(|e| e.id.as_str()))?;
        let mut failed = Vec::new();
        let mut ids = Vec::new();
        let mut changes = Vec::new();
        for entry in &req.entries {
            let checked = validate::receipt_handle("receipt_handle", &entry.receipt_handle)
                .and_then(|()| {
                    validate::visibility_timeout(
                        "visibility_timeout_seconds",
                        entry.visibility_timeout_seconds,
                    )
                });
            match checked {
                Ok(visibility) => {
                    ids.push(entry.id.clone());
                    changes.push((entry.receipt_handle.clone(), visibility));
                }
                Err(err) => failed.push(batch_error(entry.id.clone(), &err)),
            }
        }
        let _pass = self.bulkheads.short(&queue.name)?;
        if !changes.is_empty() {
            self.rates
                .admit(caller, &queue, Kind::Deletes, changes.len())?;
        }
        let results = self.backend.change_visibility(queue.id, changes).await?;
        let successful = split_results(ids, results, &mut failed);
        Ok(pb::ChangeMessageVisibilityBatchResponse { successful, failed })
    }
}

/// Of a receive's messages, those `principal` may read. A message moved here from another queue
/// (a dead letter, or one a redrive sent on) holds that queue's content, so reading it takes
/// `receive` on that queue too. The others are made visible again at once, and if none is left
/// the receive is refused, naming the queue they came from.
pub(crate) async fn readable(
    backend: &dyn QueueBackend,
    principal: &Principal,
    queue: &QueueRecord,
    messages: Vec<ReceivedMessage>,
) -> Result<Vec<ReceivedMessage>> {
    let may_read = |m: &ReceivedMessage| {
        m.dead_letter_source.is_empty()
            || m.dead_letter_source == queue.name
            || principal.allows(Action::Receive, &m.dead_letter_source)
    };
    if messages.iter().all(may_read) {
        return Ok(messages);
    }
    let (readable, withheld): (Vec<_>, Vec<_>) = messages.into_iter().partition(may_read);
    let source = withheld[0].dead_letter_source.clone();
    let released = withheld
        .into_iter()
        .map(|m| (m.receipt_handle, Duration::ZERO))
        .collect();
    backend.change_visibility(queue.id, released).await?;
    if readable.is_empty() {
        metrics::PERMISSION_DENIED
            .with_label_values(&[Action::Receive.as_str()])
            .inc();
        return Err(Error::PermissionDenied(format!(
            "principal {:?} may not receive on queue {source:?}, where messages in {:?} come \
             from",
            principal.name, queue.name
        )));
    }
    Ok(readable)
}
