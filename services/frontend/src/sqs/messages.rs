//! SQS's message actions: send, receive, delete and change visibility, one at a time and in
//! batches. A batch is checked as SQS checks it (count, distinct ids, total size) before any of
//! it is written; an entry SQS would refuse alone fails alone, the rest go through.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_api::limits::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_BATCH_ENTRY_ID_LEN};
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;

use super::error::{Code, SqsError};
use super::queues::output;
use super::{ranged, required, Ctx, Sqs};
use crate::digest;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AttributeValue {
    data_type: Option<String>,
    string_value: Option<String>,
    binary_value: Option<String>,
    #[serde(default)]
    string_list_values: Vec<String>,
    #[serde(default)]
    binary_list_values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendInput {
    queue_url: Option<String>,
    #[serde(flatten)]
    entry: SendEntry,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendEntry {
    id: Option<String>,
    message_body: Option<String>,
    delay_seconds: Option<i64>,
    #[serde(default)]
    message_attributes: HashMap<String, AttributeValue>,
    #[serde(default)]
    message_system_attributes: HashMap<String, AttributeValue>,
    message_deduplication_id: Option<String>,
    message_group_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendBatchInput {
    queue_url: Option<String>,
    entries: Option<Vec<SendEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ReceiveInput {
    queue_url: Option<String>,
    #[serde(default)]
    attribute_names: Vec<String>,
    #[serde(default)]
    message_system_attribute_names: Vec<String>,
    #[serde(default)]
    message_attribute_names: Vec<String>,
    max_number_of_messages: Option<i64>,
    visibility_timeout: Option<i64>,
    wait_time_seconds: Option<i64>,
    receive_request_attempt_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteInput {
    queue_url: Option<String>,
    receipt_handle: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HandleEntry {
    id: Option<String>,
    receipt_handle: Option<String>,
    visibility_timeout: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HandleBatchInput {
    queue_url: Option<String>,
    entries: Option<Vec<HandleEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct VisibilityInput {
    queue_url: Option<String>,
    receipt_handle: Option<String>,
    visibility_timeout: Option<i64>,
}

/// The system attributes a receive can ask for.
const SYSTEM_ATTRIBUTES: &[&str] = &[
    "All",
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    TRACE_HEADER,
    "DeadLetterQueueSourceArn",
];

/// The one message system attribute a send may set.
const TRACE_HEADER: &str = "AWSTraceHeader";

/// Whether SQS allows `c` in a message: XML's characters, #x9, #xA, #xD, #x20 to #xD7FF,
/// #xE000 to #xFFFD and #x10000 to #x10FFFF (Rust strings hold no surrogates).
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

fn check_text(parameter: &str, text: &str) -> Result<(), SqsError> {
    match text.chars().position(|c| !allowed(c)) {
        None => Ok(()),
        Some(at) => Err(SqsError::new(
            Code::InvalidMessageContents,
            format!(
                "Invalid characters found in {parameter}: character {at} (U+{:04X}) is outside \
                 the allowed set #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 \
                 to #x10FFFF",
                text.chars().nth(at).map_or(0, u32::from)
            ),
        )),
    }
}

/// SQS's message attributes as Sluice's.
fn to_attributes(
    attributes: HashMap<String, AttributeValue>,
    parameter: &str,
) -> Result<HashMap<String, pb::MessageAttributeValue>, SqsError> {
    let mut out = HashMap::with_capacity(attributes.len());
    for (name, value) in attributes {
        let field = |member: &str| format!("{parameter} {name:?} {member}");
        let data_type = required(value.data_type, &field("DataType"))?;
        if !value.string_list_values.is_empty() || !value.binary_list_values.is_empty() {
            return Err(SqsError::invalid(
                &field("StringListValues"),
                "list values are reserved by SQS and not accepted",
            ));
        }
        let binary_value = match value.binary_value {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|err| {
                    SqsError::invalid(&field("BinaryValue"), format!("not base64: {err}"))
                })?,
            None => Vec::new(),
        };
        let string_value = value.string_value.unwrap_or_default();
        check_text(&field("StringValue"), &string_value)?;
        out.insert(
            name,
            pb::MessageAttributeValue {
                data_type,
                string_value,
                binary_value: binary_value.into(),
            },
        );
    }
    Ok(out)
}

/// A message attribute as SQS returns it.
fn from_attribute(value: &pb::MessageAttributeValue) -> Value {
    if value.data_type.starts_with("Binary") {
        json!({
            "DataType": value.data_type,
            "BinaryValue": base64::engine::general_purpose::STANDARD.encode(&value.binary_value),
        })
    } else {
        json!({"DataType": value.data_type, "StringValue": value.string_value})
    }
}

/// Checks what SQS checks of a batch as a whole: some entries, at most ten, each id well formed
/// and distinct.
fn check_batch<'a>(ids: impl Iterator<Item = Option<&'a str>>) -> Result<(), SqsError> {
    let ids: Vec<Option<&str>> = ids.collect();
    if ids.is_empty() {
        return Err(SqsError::new(
            Code::EmptyBatchRequest,
            "There should be at least one entry in the request.",
        ));
    }
    if ids.len() > MAX_BATCH_ENTRIES {
        return Err(SqsError::new(
            Code::TooManyEntriesInBatchRequest,
            format!(
                "Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {}.",
                ids.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for id in ids {
        let id = required(id, "Entries.N.Id")?;
        let valid = (1..=MAX_BATCH_ENTRY_ID_LEN).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(SqsError::new(
                Code::InvalidBatchEntryId,
                format!(
                    "A batch entry id can only contain alphanumeric characters, hyphens and \
                     underscores, 1 to {MAX_BATCH_ENTRY_ID_LEN} of them: {id:?}"
                ),
            ));
        }
        if !seen.insert(id) {
            return Err(SqsError::new(
                Code::BatchEntryIdsNotDistinct,
                format!("Id {id} repeated."),
            ));
        }
    }
    Ok(())
}

/// A per-entry failure as SQS reports it.
fn failure(id: String, err: &SqsError) -> Value {
    json!({
        "Id": id,
        "SenderFault": err.code.sender_fault(),
        "Code": err.code.legacy(),
        "Message": err.message,
    })
}

/// A per-entry failure of Sluice's batch APIs, in SQS's words.
fn from_batch_error(err: pb::BatchResultError) -> Value {
    let code = match err.code.as_str() {
        "INVALID_ARGUMENT" => tonic::Code::InvalidArgument,
        "NOT_FOUND" => tonic::Code::NotFound,
        "FAILED_PRECONDITION" => tonic::Code::FailedPrecondition,
        "RESOURCE_EXHAUSTED" => tonic::Code::ResourceExhausted,
        "PERMISSION_DENIED" => tonic::Code::PermissionDenied,
        "UNAVAILABLE" => tonic::Code::Unavailable,
        "ABORTED" => tonic::Code::Aborted,
        _ => tonic::Code::Internal,
    };
    let sqs = SqsError::from(tonic::Status::new(code, err.message));
    failure(err.id, &sqs)
}

/// A send's message system attributes: SQS takes only `AWSTraceHeader`, a String. Returns the
/// trace header and the MD5 of the attributes (empty without them), which the answer carries.
fn to_trace_header(
    attributes: HashMap<String, AttributeValue>,
) -> Result<(String, String), SqsError> {
    let attributes = to_attributes(attributes, "MessageSystemAttribute")?;
    if let Some((name, _)) = attributes.iter().find(|(name, _)| *name != TRACE_HEADER) {
        return Err(SqsError::invalid(
            &format!("MessageSystemAttribute {name:?}"),
            format!("the only message system attribute a send may set is {TRACE_HEADER}"),
        ));
    }
    let Some(trace) = attributes.get(TRACE_HEADER) else {
        return Ok((String::new(), String::new()));
    };
    if trace.data_type != "String" {
        return Err(SqsError::invalid(
            &format!("MessageSystemAttribute {TRACE_HEADER:?} DataType"),
            format!("must be String, got {:?}", trace.data_type),
        ));
    }
    sluice_api::content::trace_header(
        &format!("MessageSystemAttribute {TRACE_HEADER:?} StringValue"),
        &trace.string_value,
    )?;
    Ok((
        trace.string_value.clone(),
        digest::md5_of_attributes(&attributes),
    ))
}

impl Sqs {
    /// One SQS send entry as Sluice's, with the MD5 of its system attributes for the answer.
    fn to_entry(entry: SendEntry) -> Result<(pb::SendMessageBatchEntry, String), SqsError> {
        let body = required(entry.message_body, "MessageBody")?;
        check_text("MessageBody", &body)?;
        let (trace_header, md5_of_system) = to_trace_header(entry.message_system_attributes)?;
        let attributes = to_attributes(entry.message_attributes, "MessageAttribute")?;
        let delay = ranged(entry.delay_seconds, "DelaySeconds", 0..=900)?;
        let entry = pb::SendMessageBatchEntry {
            id: entry.id.unwrap_or_default(),
            body: body.into_bytes().into(),
            attributes,
            delay_seconds: delay,
            deduplication_id: entry.message_deduplication_id.unwrap_or_default(),
            group_id: entry.message_group_id.unwrap_or_default(),
            trace_header,
        };
        Ok((entry, md5_of_system))
    }

    pub(crate) async fn send_message(
        &self,
        ctx: &Ctx,
        input: SendInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let (entry, md5_of_system) = Self::to_entry(input.entry)?;
        let sent = QueueService::send_message(
            &self.service,
            ctx.request(pb::SendMessageRequest {
                queue,
                body: entry.body,
                attributes: entry.attributes,
                delay_seconds: entry.delay_seconds,
                deduplication_id: entry.deduplication_id,
                group_id: entry.group_id,
                trace_header: entry.trace_header,
            }),
        )
        .await?
        .into_inner();
        Ok(sent_output(
            sent.message_id,
            sent.md5_of_body,
            sent.md5_of_message_attributes,
            md5_of_system,
            sent.sequence_number,
        ))
    }

    pub(crate) async fn send_message_batch(
        &self,
        ctx: &Ctx,
        input: SendBatchInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let entries = input.entries.unwrap_or_default();
        check_batch(entries.iter().map(|e| e.id.as_deref()))?;
        let size: usize = entries
            .iter()
            .map(|e| {
                e.message_body.as_ref().map_or(0, String::len)
                    + e.message_attributes
                        .iter()
                        .map(|(name, value)| {
                            name.len()
                                + value.data_type.as_ref().map_or(0, String::len)
                                + value.string_value.as_ref().map_or(0, String::len)
                                + value.binary_value.as_ref().map_or(0, |b| b.len() * 3 / 4)
                        })
                        .sum::<usize>()
            })
            .sum();
        if size > MAX_BATCH_BYTES {
            return Err(SqsError::new(
                Code::BatchRequestTooLong,
                format!(
                    "Batch requests cannot be longer than {MAX_BATCH_BYTES} bytes. You have sent \
                     {size} bytes."
                ),
            ));
        }
        let mut failed = Vec::new();
        let mut good = Vec::with_capacity(entries.len());
        let mut md5s_of_system = HashMap::new();
        for entry in entries {
            let id = entry.id.clone().unwrap_or_default();
            match Self::to_entry(entry) {
                Ok((entry, md5_of_system)) => {
                    md5s_of_system.insert(id, md5_of_system);
                    good.push(entry);
                }
                Err(err) => failed.push(failure(id, &err)),
            }
        }
        let mut successful = Vec::new();
        if !good.is_empty() {
            let sent = QueueService::send_message_batch(
                &self.service,
                ctx.request(pb::SendMessageBatchRequest {
                    queue,
                    entries: good,
                }),
            )
            .await?
            .into_inner();
            for entry in sent.successful {
                let mut out = sent_output(
                    entry.message_id,
                    entry.md5_of_body,
                    entry.md5_of_message_attributes,
                    md5s_of_system.remove(&entry.id).unwrap_or_default(),
                    entry.sequence_number,
                );
                out.insert("Id".into(), json!(entry.id));
                successful.push(Value::Object(out));
            }
            failed.extend(sent.failed.into_iter().map(from_batch_error));
        }
        Ok(output(json!({"Successful": successful, "Failed": failed})))
    }

    pub(crate) async fn receive_message(
        &self,
        ctx: &Ctx,
        input: ReceiveInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let max = ranged(input.max_number_of_messages, "MaxNumberOfMessages", 1..=10)?;
        let wait = ranged(input.wait_time_seconds, "WaitTimeSeconds", 0..=20)?;
        let visibility = ranged(input.visibility_timeout, "VisibilityTimeout", 0..=43_200)?;
        if let Some(attempt) = &input.receive_request_attempt_id {
            let valid = (1..=128).contains(&attempt.len())
                && attempt.chars().all(|c| {
                    c.is_ascii_alphanumeric() || "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".contains(c)
                });
            if !valid {
                return Err(SqsError::invalid(
                    "ReceiveRequestAttemptId",
                    "must be 1 to 128 characters of a-z, A-Z, 0-9 and punctuation",
                ));
            }
        }
        let mut system: Vec<&str> = input
            .attribute_names
            .iter()
            .chain(&input.message_system_attribute_names)
            .map(String::as_str)
            .collect();
        if let Some(unknown) = system.iter().find(|n| !SYSTEM_ATTRIBUTES.contains(n)) {
            return Err(SqsError::new(
                Code::InvalidAttributeName,
                format!("Unknown Attribute {unknown}."),
            ));
        }
        if system.contains(&"All") {
            system = SYSTEM_ATTRIBUTES.to_vec();
        }
        // A FIFO receive retried with its attempt id gets what the first one got.
        let attempt = match input.receive_request_attempt_id {
            Some(attempt) if self.service.queue("queue", &queue).await?.attributes.fifo => {
                let key = (ctx.identity.name().to_owned(), queue.clone(), attempt);
                if let Some(answered) = self.attempts.get(&key) {
                    return Ok(answered.as_ref().clone());
                }
                Some(key)
            }
            _ => None,
        };
        let received = QueueService::receive_message(
            &self.service,
            ctx.request(pb::ReceiveMessageRequest {
                queue,
                max_messages: max.unwrap_or(1),
                wait_time_seconds: wait,
                visibility_timeout_seconds: visibility,
            }),
        )
        .await?
        .into_inner();
        let messages: Vec<Value> = received
            .messages
            .into_iter()
            .map(|message| self.message(message, &system, &input.message_attribute_names))
            .collect();
        let mut out = Map::new();
        if !messages.is_empty() {
            out.insert("Messages".into(), Value::Array(messages));
        }
        if let Some(key) = attempt {
            self.attempts.insert(key, Arc::new(out.clone()));
        }
        Ok(out)
    }

    /// A received message as SQS returns it, with the system attributes in `system` and the
    /// message attributes `names` asks for (`All`, `.*`, a name, or a prefix ending in `.*`).
    fn message(&self, message: pb::Message, system: &[&str], names: &[String]) -> Value {
        let body = String::from_utf8_lossy(&message.body).into_owned();
        let mut out = output(json!({
            "MessageId": message.message_id,
            "ReceiptHandle": message.receipt_handle,
            "MD5OfBody": sluice_api::md5_of_body(body.as_bytes()),
            "Body": body,
        }));
        let mut attributes = Map::new();
        let mut put = |name: &str, value: String| {
            if system.contains(&name) && !value.is_empty() {
                attributes.insert(name.to_owned(), Value::String(value));
            }
        };
        put("SenderId", message.sender_id.clone());
        put("MessageDeduplicationId", message.deduplication_id.clone());
        put(TRACE_HEADER, message.trace_header.clone());
        put("SentTimestamp", message.sent_timestamp_ms.to_string());
        put(
            "ApproximateReceiveCount",
            message.approximate_receive_count.to_string(),
        );
        put(
            "ApproximateFirstReceiveTimestamp",
            message.approximate_first_receive_timestamp_ms.to_string(),
        );
        put("SequenceNumber", message.sequence_number.clone());
        put("MessageGroupId", message.group_id.clone());
        if !message.dead_letter_source_queue.is_empty() {
            put(
                "DeadLetterQueueSourceArn",
                self.queue_arn(&message.dead_letter_source_queue),
            );
        }
        if !attributes.is_empty() {
            out.insert("Attributes".into(), Value::Object(attributes));
        }
        let wanted = |name: &str| {
            names.iter().any(|n| {
                n == "All"
                    || n == ".*"
                    || n == name
                    || n.strip_suffix(".*").is_some_and(|prefix| {
                        name.starts_with(prefix) && name[prefix.len()..].starts_with('.')
                    })
            })
        };
        let returned: HashMap<&String, &pb::MessageAttributeValue> = message
            .attributes
            .iter()
            .filter(|(name, _)| wanted(name))
            .collect();
        if !returned.is_empty() {
            out.insert(
                "MD5OfMessageAttributes".into(),
                json!(digest::md5_of_attributes(
                    returned.iter().map(|(k, v)| (*k, *v))
                )),
            );
            let map: Map<String, Value> = returned
                .into_iter()
                .map(|(name, value)| (name.clone(), from_attribute(value)))
                .collect();
            out.insert("MessageAttributes".into(), Value::Object(map));
        }
        Value::Object(out)
    }

    pub(crate) async fn delete_message(
        &self,
        ctx: &Ctx,
        input: DeleteInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let receipt_handle = required(input.receipt_handle, "ReceiptHandle")?;
        QueueService::delete_message(
            &self.service,
            ctx.request(pb::DeleteMessageRequest {
                queue,
                receipt_handle,
            }),
        )
        .await?;
        Ok(Map::new())
    }

    pub(crate) async fn delete_message_batch(
        &self,
        ctx: &Ctx,
        input: HandleBatchInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let (good, refused) = handle_entries(input.entries, |id, entry| {
            let receipt_handle = required(entry.receipt_handle, "ReceiptHandle")?;
            Ok(pb::DeleteMessageBatchEntry { id, receipt_handle })
        })?;
        if good.is_empty() {
            return Ok(handles_output(Vec::new(), Vec::new(), refused));
        }
        let deleted = QueueService::delete_message_batch(
            &self.service,
            ctx.request(pb::DeleteMessageBatchRequest {
                queue,
                entries: good,
            }),
        )
        .await?
        .into_inner();
        Ok(handles_output(deleted.successful, deleted.failed, refused))
    }

    pub(crate) async fn change_message_visibility(
        &self,
        ctx: &Ctx,
        input: VisibilityInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let receipt_handle = required(input.receipt_handle, "ReceiptHandle")?;
        let visibility_timeout_seconds = visibility_timeout(input.visibility_timeout)?;
        QueueService::change_message_visibility(
            &self.service,
            ctx.request(pb::ChangeMessageVisibilityRequest {
                queue,
                receipt_handle,
                visibility_timeout_seconds,
            }),
        )
        .await?;
        Ok(Map::new())
    }

    pub(crate) async fn change_message_visibility_batch(
        &self,
        ctx: &Ctx,
        input: HandleBatchInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let queue = self.queue_name(&required(input.queue_url, "QueueUrl")?)?;
        let (good, refused) = handle_entries(input.entries, |id, entry| {
            Ok(pb::ChangeMessageVisibilityBatchEntry {
                id,
                receipt_handle: required(entry.receipt_handle, "ReceiptHandle")?,
                visibility_timeout_seconds: visibility_timeout(entry.visibility_timeout)?,
            })
        })?;
        if good.is_empty() {
            return Ok(handles_output(Vec::new(), Vec::new(), refused));
        }
        let changed = QueueService::change_message_visibility_batch(
            &self.service,
            ctx.request(pb::ChangeMessageVisibilityBatchRequest {
                queue,
                entries: good,
            }),
        )
        .await?
        .into_inner();
        Ok(handles_output(changed.successful, changed.failed, refused))
    }
}

/// A required `VisibilityTimeout`, 0 to 12 hours.
fn visibility_timeout(value: Option<i64>) -> Result<u32, SqsError> {
    let timeout = required(value, "VisibilityTimeout")?;
    Ok(ranged(Some(timeout), "VisibilityTimeout", 0..=43_200)?.unwrap_or_default())
}

/// A batch of receipt handles checked as SQS checks it: as a whole first (refused whole), then
/// each entry alone with `check`. Returns the entries that passed, and the failure of each
/// that did not.
fn handle_entries<T>(
    entries: Option<Vec<HandleEntry>>,
    check: impl Fn(String, HandleEntry) -> Result<T, SqsError>,
) -> Result<(Vec<T>, Vec<Value>), SqsError> {
    let entries = entries.unwrap_or_default();
    check_batch(entries.iter().map(|e| e.id.as_deref()))?;
    let mut good = Vec::with_capacity(entries.len());
    let mut refused = Vec::new();
    for mut entry in entries {
        let id = entry.id.take().unwrap_or_default();
        match check(id.clone(), entry) {
            Ok(checked) => good.push(checked),
            Err(err) => refused.push(failure(id, &err)),
        }
    }
    Ok((good, refused))
}

/// The answer to a batch of handles: Sluice's results in SQS's shape, after the entries
/// refused before they were sent.
fn handles_output(
    successful: Vec<String>,
    failed: Vec<pb::BatchResultError>,
    mut refused: Vec<Value>,
) -> Map<String, Value> {
    let successful: Vec<Value> = successful.into_iter().map(|id| json!({"Id": id})).collect();
    refused.extend(failed.into_iter().map(from_batch_error));
    output(json!({"Successful": successful, "Failed": refused}))
}

/// A send's answer as SQS gives it; attributes' MD5s and sequence number only when there are.
fn sent_output(
    message_id: String,
    md5_of_body: String,
    md5_of_attributes: String,
    md5_of_system_attributes: String,
    sequence_number: String,
) -> Map<String, Value> {
    let mut out = output(json!({"MessageId": message_id, "MD5OfMessageBody": md5_of_body}));
    if !md5_of_attributes.is_empty() {
        out.insert("MD5OfMessageAttributes".into(), json!(md5_of_attributes));
    }
    if !md5_of_system_attributes.is_empty() {
        out.insert(
            "MD5OfMessageSystemAttributes".into(),
            json!(md5_of_system_attributes),
        );
    }
    if !sequence_number.is_empty() {
        out.insert("SequenceNumber".into(), json!(sequence_number));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_characters_are_those_sqs_allows() {
        assert!(check_text("MessageBody", "tab\there\r\nand ünïcode 😀").is_ok());
        let err = check_text("MessageBody", "bell\u{7}").unwrap_err();
        assert_eq!(err.code, Code::InvalidMessageContents);
        assert!(err.message.contains("U+0007"), "{err}");
        assert!(check_text("MessageBody", "\u{FFFF}").is_err());
    }

    #[test]
    fn batches_are_checked_as_sqs_checks_them() {
        let check = |ids: &[&str]| check_batch(ids.iter().map(|id| Some(*id))).map_err(|e| e.code);
        assert_eq!(check(&[]), Err(Code::EmptyBatchRequest));
        assert_eq!(check(&["a"; 11]), Err(Code::TooManyEntriesInBatchRequest));
        assert_eq!(check(&["a", "b", "a"]), Err(Code::BatchEntryIdsNotDistinct));
        assert_eq!(check(&["a b"]), Err(Code::InvalidBatchEntryId));
        assert_eq!(check(&["a", "b-1", "c_2"]), Ok(()));
    }
}
