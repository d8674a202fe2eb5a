//! The checks a message's content must pass, shared by the two tiers that see it: the frontend
//! applies them to what a client sends, and a backend to what a frontend forwards, so a
//! frontend with a bug (or anything else that reaches the internal port) cannot store what the
//! public API would refuse. Every failure names the field and the limit.

use std::collections::HashMap;

use sluice_proto::v1 as pb;

use crate::limits::{
    MAX_ATTRIBUTE_NAME_LEN, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_DEDUPLICATION_ID_LEN,
    MAX_DELAY_SECS, MAX_GROUP_ID_LEN, MAX_MAX_MESSAGE_BYTES, MAX_MESSAGE_ATTRIBUTES,
    MAX_TRACE_HEADER_LEN,
};
use crate::{Error, Result};

/// What a frontend may add to a message it checked before it forwards it: the system attributes
/// (sender, deduplication id and trace header, under 1.5 KiB) and the encryption envelope
/// (nonce, tag, the protobuf framing of body and attributes, and the attribute naming the queue
/// whose key sealed it). A backend allows this much over the public limits.
pub const FORWARDING_OVERHEAD_BYTES: usize = 4 * 1024;

/// Who wrote the attributes: a client may not use the reserved prefixes, a frontend adds one
/// attribute under them beyond the client's limit (the system attributes; a sealed message
/// has the encryption envelope alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Frontend,
}

/// Checks a message's attributes and returns the bytes they count toward the size limit.
pub fn message_attributes(
    field: &str,
    attributes: &HashMap<String, pb::MessageAttributeValue>,
    origin: Origin,
) -> Result<usize> {
    let limit = match origin {
        Origin::Client => MAX_MESSAGE_ATTRIBUTES,
        Origin::Frontend => MAX_MESSAGE_ATTRIBUTES + 1,
    };
    if attributes.len() > limit {
        return Err(Error::invalid(
            field,
            format!("{} attributes, the limit is {limit}", attributes.len()),
        ));
    }
    for (name, value) in attributes {
        let field = format!("{field}[{name:?}]");
        if name.is_empty()
            || name.len() > MAX_ATTRIBUTE_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(Error::invalid(
                field,
                format!("attribute names are 1 to {MAX_ATTRIBUTE_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '-' and '.'"),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if origin == Origin::Client && (lower.starts_with("aws.") || lower.starts_with("sluice.")) {
            return Err(Error::invalid(
                field,
                "attribute names starting with \"AWS.\" or \"Sluice.\" are reserved",
            ));
        }
        attribute_value(&field, value)?;
    }
    Ok(attributes_size(attributes))
}

/// The bytes attributes count toward a message's size limit: names, types and values.
pub fn attributes_size(attributes: &HashMap<String, pb::MessageAttributeValue>) -> usize {
    attributes
        .iter()
        .map(|(name, value)| {
            name.len() + value.data_type.len() + value.string_value.len() + value.binary_value.len()
        })
        .sum()
}

fn attribute_value(field: &str, value: &pb::MessageAttributeValue) -> Result<()> {
    let (base, suffix) = value
        .data_type
        .split_once('.')
        .unwrap_or((&value.data_type, ""));
    if value.data_type.len() > MAX_ATTRIBUTE_NAME_LEN
        || !suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(Error::invalid(
            field,
            format!("data_type is at most {MAX_ATTRIBUTE_NAME_LEN} characters, and its .suffix of A-Z, a-z, 0-9, '_', '-' and '.'"),
        ));
    }
    match base {
        "String" | "Number" => {
            if value.string_value.is_empty() {
                return Err(Error::invalid(
                    field,
                    format!("a {} attribute needs a string_value", value.data_type),
                ));
            }
            if base == "Number" {
                number(field, &value.string_value)?;
            }
        }
        "Binary" => {
            if value.binary_value.is_empty() {
                return Err(Error::invalid(
                    field,
                    "a Binary attribute needs a binary_value",
                ));
            }
        }
        _ => {
            return Err(Error::invalid(
                field,
                format!(
                    "data_type {:?} must be String, Number or Binary, optionally with a .suffix",
                    value.data_type
                ),
            ))
        }
    }
    Ok(())
}

/// A Number attribute is a finite decimal number, as SQS takes them: digits, a sign, a point
/// and an exponent. Rust's parser alone would also take `NaN`, `inf` and `infinity`, which a
/// consumer in another language may not read back, and which compare with nothing.
fn number(field: &str, value: &str) -> Result<()> {
    let decimal = value
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'));
    let finite = value.parse::<f64>().is_ok_and(f64::is_finite);
    if !decimal || !finite {
        return Err(Error::invalid(
            field,
            format!("{value:?} is not a finite decimal number"),
        ));
    }
    Ok(())
}

/// Checks an id a client chooses: a group or deduplication id. Empty means none was given.
fn client_id(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!(
                "must be 1 to {max} printable ASCII characters, got {} characters",
                value.chars().count()
            ),
        ));
    }
    Ok(())
}

pub fn group_id(field: &str, value: &str) -> Result<()> {
    client_id(field, value, MAX_GROUP_ID_LEN)
}

pub fn deduplication_id(field: &str, value: &str) -> Result<()> {
    client_id(field, value, MAX_DEDUPLICATION_ID_LEN)
}

/// A send's trace header: printable ASCII and spaces (W3C's `tracestate` has them).
pub fn trace_header(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TRACE_HEADER_LEN || !value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {MAX_TRACE_HEADER_LEN} printable ASCII characters, got {} characters",
                value.chars().count()
            ),
        ));
    }
    Ok(())
}

/// The deduplication ids one internal lookup asks about: 1 to 10 (a send's messages), each one
/// a send could carry.
pub fn deduplication_ids(ids: &[String]) -> Result<()> {
    if ids.is_empty() || ids.len() > MAX_BATCH_ENTRIES {
        return Err(Error::invalid(
            "deduplication_ids",
            format!(
                "a lookup holds 1 to {MAX_BATCH_ENTRIES} ids, got {}",
                ids.len()
            ),
        ));
    }
    for (index, id) in ids.iter().enumerate() {
        let field = format!("deduplication_ids[{index}]");
        if id.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        deduplication_id(&field, id)?;
    }
    Ok(())
}

/// The messages of one internal send, as a frontend forwards them: 1 to 10 of them, each within
/// the public limits plus what a frontend adds, and all together within the batch limit plus the
/// same. The queue's own `max_message_bytes` is the frontend's to apply: the engine does not
/// keep it.
pub fn forwarded_messages(messages: &[pb::NewMessage]) -> Result<()> {
    if messages.is_empty() || messages.len() > MAX_BATCH_ENTRIES {
        return Err(Error::invalid(
            "messages",
            format!(
                "a send holds 1 to {MAX_BATCH_ENTRIES} messages, got {}",
                messages.len()
            ),
        ));
    }
    let mut total = 0;
    for (index, message) in messages.iter().enumerate() {
        let field = |name: &str| format!("messages[{index}].{name}");
        if message.body.is_empty() {
            return Err(Error::invalid(field("body"), "must not be empty"));
        }
        let attributes =
            message_attributes(&field("attributes"), &message.attributes, Origin::Frontend)?;
        let size = message.body.len() + attributes;
        let limit = MAX_MAX_MESSAGE_BYTES as usize + FORWARDING_OVERHEAD_BYTES;
        if size > limit {
            return Err(Error::invalid(
                field("body"),
                format!("message is {size} bytes with its attributes, the limit is {limit}"),
            ));
        }
        let max_delay_ms = u64::from(MAX_DELAY_SECS) * 1000;
        if message.delay_ms > max_delay_ms {
            return Err(Error::invalid(
                field("delay_ms"),
                format!("{} is more than {max_delay_ms}", message.delay_ms),
            ));
        }
        group_id(&field("group_id"), &message.group_id)?;
        deduplication_id(&field("deduplication_id"), &message.deduplication_id)?;
        total += size;
    }
    let limit = MAX_BATCH_BYTES + messages.len() * FORWARDING_OVERHEAD_BYTES;
    if total > limit {
        return Err(Error::invalid(
            "messages",
            format!("the messages add up to {total} bytes, the limit is {limit}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(data_type: &str, value: &str) -> HashMap<String, pb::MessageAttributeValue> {
        [(
            "n".to_owned(),
            pb::MessageAttributeValue {
                data_type: data_type.into(),
                string_value: value.into(),
                binary_value: Default::default(),
            },
        )]
        .into()
    }

    #[test]
    fn number_attributes_are_finite_decimals() {
        for good in ["1", "-2.5", "1e10", "+0.000001", "6.02E23"] {
            message_attributes("attributes", &attribute("Number", good), Origin::Client)
                .unwrap_or_else(|err| panic!("{good}: {err}"));
        }
        for bad in [
            "NaN",
            "nan",
            "inf",
            "-infinity",
            "1e999",
            "0x10",
            "1,5",
            " 1",
        ] {
            let err = message_attributes("attributes", &attribute("Number", bad), Origin::Client)
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(err.to_string().contains("not a finite decimal"), "{err}");
        }
    }

    #[test]
    fn reserved_names_are_the_frontends() {
        let mut attributes = attribute("String", "x");
        attributes.insert("Sluice.Envelope".into(), attributes["n"].clone());
        assert!(message_attributes("attributes", &attributes, Origin::Client).is_err());
        assert!(message_attributes("attributes", &attributes, Origin::Frontend).is_ok());
    }

    #[test]
    fn client_chosen_ids() {
        assert!(deduplication_id("d", &"x".repeat(128)).is_ok());
        for bad in ["x".repeat(129), "has space".into(), "caf\u{e9}".into()] {
            let err = deduplication_id("deduplication_id", &bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.to_string().starts_with("invalid deduplication_id:"),
                "{err}"
            );
        }
        assert!(group_id("group_id", "orders/eu-1").is_ok());
    }

    #[test]
    fn a_deduplication_lookup_names_its_bad_id() {
        let ids = |n: usize| (0..n).map(|i| format!("d{i}")).collect::<Vec<_>>();
        assert!(deduplication_ids(&ids(10)).is_ok());
        for bad in [ids(0), ids(11)] {
            let err = deduplication_ids(&bad).unwrap_err().to_string();
            assert!(err.contains("1 to 10 ids"), "{err}");
        }
        let mut empty = ids(3);
        empty[1].clear();
        let err = deduplication_ids(&empty).unwrap_err().to_string();
        assert!(err.contains("deduplication_ids[1]"), "{err}");
        let mut spaced = ids(3);
        spaced[2] = "has space".into();
        let err = deduplication_ids(&spaced).unwrap_err().to_string();
        assert!(err.contains("deduplication_ids[2]"), "{err}");
    }

    #[test]
    fn forwarded_sends_are_bounded() {
        let message = |bytes: usize| pb::NewMessage {
            body: vec![b'x'; bytes].into(),
            ..Default::default()
        };
        assert!(forwarded_messages(&[message(10)]).is_ok());
        let empty = forwarded_messages(&[]).unwrap_err();
        assert!(empty.to_string().contains("1 to 10 messages"), "{empty}");
        let eleven = forwarded_messages(&vec![message(1); 11]).unwrap_err();
        assert!(eleven.to_string().contains("got 11"), "{eleven}");
        let huge = forwarded_messages(&[message(2 * 1024 * 1024)]).unwrap_err();
        assert!(huge.to_string().contains("messages[0].body"), "{huge}");
        // Ten messages of 1 MiB each: each within its limit, together ten times the batch's.
        let many = forwarded_messages(&vec![message(1024 * 1024); 10]).unwrap_err();
        assert!(many.to_string().contains("add up to"), "{many}");
        let mut late = message(1);
        late.delay_ms = u64::MAX;
        let err = forwarded_messages(&[late]).unwrap_err();
        assert!(err.to_string().contains("messages[0].delay_ms"), "{err}");
    }
}
