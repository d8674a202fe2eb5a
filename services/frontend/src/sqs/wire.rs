//! SQS's two protocols on the wire. Both are read into the JSON protocol's input shape, so each
//! action is written once: the JSON protocol (`X-Amz-Target: AmazonSQS.<Action>`, a JSON body)
//! as it comes, the query protocol (`Action=...&Version=2012-11-05`, form-encoded or in the URL)
//! by turning its flattened, numbered parameters (`Attribute.1.Name`) into maps and lists. An
//! action's output is the JSON protocol's too, written as the query protocol's XML when the
//! request came that way.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{Code, SqsError};

/// The namespace of the query protocol's XML replies.
pub const XMLNS: &str = "http://queue.amazonaws.com/doc/2012-11-05/";
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.0";
const TARGET_PREFIX: &str = "AmazonSQS.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Query,
}

/// A request read off the wire: its action and input in the JSON protocol's shape.
#[derive(Debug)]
pub struct Decoded {
    pub action: String,
    pub input: Map<String, Value>,
}

/// Which protocol a request speaks: the JSON protocol names its action in `X-Amz-Target`.
pub fn protocol(target: Option<&str>) -> Protocol {
    match target {
        Some(_) => Protocol::Json,
        None => Protocol::Query,
    }
}

/// A JSON protocol request: the action from `X-Amz-Target`, the input from the body.
pub fn decode_json(target: &str, body: &[u8]) -> Result<Decoded, SqsError> {
    let action = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
        SqsError::new(
            Code::InvalidAction,
            format!("X-Amz-Target must be {TARGET_PREFIX}<Action>, not {target:?}"),
        )
    })?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice(body) {
            Ok(Value::Object(input)) => input,
            Ok(_) => {
                return Err(SqsError::invalid(
                    "body",
                    "the request body must be a JSON object",
                ))
            }
            Err(err) => return Err(SqsError::invalid("body", format!("not valid JSON: {err}"))),
        }
    };
    Ok(Decoded {
        action: action.to_owned(),
        input,
    })
}

/// Parameters of the query protocol that are not the action's input.
fn is_envelope(name: &str) -> bool {
    matches!(name, "Action" | "Version") || name.starts_with("X-Amz-")
}

/// Members whose values are integers in the JSON protocol.
/// The actions whose answers have no output shape, and so no result element.
const NO_OUTPUT: &[&str] = &[
    "DeleteQueue",
    "SetQueueAttributes",
    "PurgeQueue",
    "DeleteMessage",
    "ChangeMessageVisibility",
    "TagQueue",
    "UntagQueue",
    "AddPermission",
    "RemovePermission",
];

/// The list members of SQS's requests, by their JSON names.
const LISTS: &[&str] = &[
    "Entries",
    "AttributeNames",
    "MessageAttributeNames",
    "MessageSystemAttributeNames",
    "TagKeys",
    "AWSAccountIds",
    "Actions",
];

const INTEGERS: &[&str] = &[
    "DelaySeconds",
    "MaxNumberOfMessages",
    "VisibilityTimeout",
    "WaitTimeSeconds",
    "MaxResults",
    "MaxNumberOfMessagesPerSecond",
];

/// The parameters of a query protocol request, as name and value pairs in order.
pub fn decode_query(params: &[(String, String)], path: &str) -> Result<Decoded, SqsError> {
    let action = params
        .iter()
        .find(|(name, _)| name == "Action")
        .map(|(_, value)| value.clone())
        .ok_or_else(|| SqsError::missing("Action"))?;
    let mut tree = Tree::default();
    for (name, value) in params.iter().filter(|(name, _)| !is_envelope(name)) {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(SqsError::invalid(
                name,
                "a parameter name has an empty part",
            ));
        }
        tree.insert(name.split('.'), name, value)?;
    }
    let mut input = members(&tree, &action)?;
    // The Java SDK v1 posts to the queue's URL and leaves QueueUrl out.
    if !input.contains_key("QueueUrl") && path != "/" && !path.is_empty() {
        input.insert("QueueUrl".into(), Value::String(path.to_owned()));
    }
    Ok(Decoded { action, input })
}

/// The query parameters as a tree: `A.1.B=x` is `A -> 1 -> B -> x`.
#[derive(Debug, Default)]
struct Tree {
    value: Option<String>,
    children: BTreeMap<String, Tree>,
}

impl Tree {
    fn insert<'a>(
        &mut self,
        mut parts: impl Iterator<Item = &'a str>,
        name: &str,
        value: &str,
    ) -> Result<(), SqsError> {
        match parts.next() {
            None => {
                if self.value.is_some() || !self.children.is_empty() {
                    return Err(SqsError::invalid(name, "the parameter is given twice"));
                }
                self.value = Some(value.to_owned());
                Ok(())
            }
            Some(part) => {
                if self.value.is_some() {
                    return Err(SqsError::invalid(name, "the parameter is given twice"));
                }
                self.children
                    .entry(part.to_owned())
                    .or_default()
                    .insert(parts, name, value)
            }
        }
    }

    /// The numbered children (`1`, `2`, ...) in their order; other names are an error.
    fn numbered(&self, name: &str) -> Result<Vec<&Tree>, SqsError> {
        let mut numbered = Vec::with_capacity(self.children.len());
        for (index, child) in &self.children {
            let n: u32 = index.parse().map_err(|_| {
                SqsError::invalid(
                    &format!("{name}.{index}"),
                    "expected a number from 1 after the list's name",
                )
            })?;
            if n == 0 {
                return Err(SqsError::invalid(
                    &format!("{name}.0"),
                    "list members are numbered from 1",
                ));
            }
            numbered.push((n, child));
        }
        numbered.sort_by_key(|(n, _)| *n);
        Ok(numbered.into_iter().map(|(_, child)| child).collect())
    }

    fn leaf(&self, name: &str) -> Result<&str, SqsError> {
        match (&self.value, self.children.is_empty()) {
            (Some(value), true) => Ok(value),
            _ => Err(SqsError::invalid(name, "expected a single value")),
        }
    }

    fn child_leaf(&self, name: &str, member: &str) -> Result<Option<&str>, SqsError> {
        self.children
            .get(member)
            .map(|child| child.leaf(&format!("{name}.{member}")))
            .transpose()
    }
}

/// The JSON members of the query parameters under `tree`.
fn members(tree: &Tree, action: &str) -> Result<Map<String, Value>, SqsError> {
    let mut out = Map::new();
    for (name, child) in &tree.children {
        let (member, value) = match name.as_str() {
            // Maps of names to strings.
            "Attribute" => ("Attributes", string_map(child, name, "Name", "Value")?),
            "Tag" => (
                // CreateQueue's member is lower case in SQS's model.
                if action == "CreateQueue" {
                    "tags"
                } else {
                    "Tags"
                },
                string_map(child, name, "Key", "Value")?,
            ),
            // Maps of names to typed values.
            "MessageAttribute" => ("MessageAttributes", value_map(child, name, action)?),
            "MessageSystemAttribute" => {
                ("MessageSystemAttributes", value_map(child, name, action)?)
            }
            // Lists of strings.
            "AttributeName" => ("AttributeNames", string_list(child, name)?),
            "MessageAttributeName" => ("MessageAttributeNames", string_list(child, name)?),
            "MessageSystemAttributeName" => {
                ("MessageSystemAttributeNames", string_list(child, name)?)
            }
            "TagKey" => ("TagKeys", string_list(child, name)?),
            "AWSAccountId" => ("AWSAccountIds", string_list(child, name)?),
            "ActionName" => ("Actions", string_list(child, name)?),
            "StringListValue" => ("StringListValues", string_list(child, name)?),
            "BinaryListValue" => ("BinaryListValues", string_list(child, name)?),
            // Lists of batch entries.
            "SendMessageBatchRequestEntry"
            | "DeleteMessageBatchRequestEntry"
            | "ChangeMessageVisibilityBatchRequestEntry" => {
                let entries = child
                    .numbered(name)?
                    .into_iter()
                    .map(|entry| members(entry, action).map(Value::Object))
                    .collect::<Result<_, _>>()?;
                ("Entries", Value::Array(entries))
            }
            // botocore sends an empty list as its member's name with an empty value.
            member if LISTS.contains(&member) && child.leaf(name)?.is_empty() => {
                (member, Value::Array(Vec::new()))
            }
            member => {
                let value = child.leaf(name)?;
                let value = if INTEGERS.contains(&member) {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| SqsError::invalid(member, "must be an integer"))?;
                    Value::from(n)
                } else {
                    Value::String(value.to_owned())
                };
                (member, value)
            }
        };
        out.insert(member.to_owned(), value);
    }
    Ok(out)
}

fn string_map(tree: &Tree, name: &str, key: &str, value: &str) -> Result<Value, SqsError> {
    let mut map = Map::new();
    for entry in tree.numbered(name)? {
        let k = entry
            .child_leaf(name, key)?
            .ok_or_else(|| SqsError::missing(&format!("{name}.N.{key}")))?;
        let v = entry.child_leaf(name, value)?.unwrap_or_default();
        map.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(Value::Object(map))
}

fn value_map(tree: &Tree, name: &str, action: &str) -> Result<Value, SqsError> {
    let mut map = Map::new();
    for entry in tree.numbered(name)? {
        let k = entry
            .child_leaf(name, "Name")?
            .ok_or_else(|| SqsError::missing(&format!("{name}.N.Name")))?;
        let value = entry
            .children
            .get("Value")
            .ok_or_else(|| SqsError::missing(&format!("{name}.N.Value")))?;
        map.insert(k.to_owned(), Value::Object(members(value, action)?));
    }
    Ok(Value::Object(map))
}

fn string_list(tree: &Tree, name: &str) -> Result<Value, SqsError> {
    tree.numbered(name)?
        .into_iter()
        .map(|item| item.leaf(name).map(|v| Value::String(v.to_owned())))
        .collect::<Result<_, _>>()
        .map(Value::Array)
}

/// The query protocol's XML reply of `action` with output `output` (the JSON protocol's shape).
pub fn xml_reply(action: &str, output: &Map<String, Value>, request_id: &str) -> String {
    let mut xml = String::with_capacity(512);
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    xml.push_str(&format!("<{action}Response xmlns=\"{XMLNS}\">"));
    // An action with an output shape has its result element even when it is empty (a
    // ReceiveMessage of no message, a ListQueues of no queue): botocore's parser requires it.
    if !NO_OUTPUT.contains(&action) {
        xml.push_str(&format!("<{action}Result>"));
        xml_members(&mut xml, action, output);
        xml.push_str(&format!("</{action}Result>"));
    }
    xml.push_str("<ResponseMetadata><RequestId>");
    xml.push_str(&escape(request_id));
    xml.push_str("</RequestId></ResponseMetadata>");
    xml.push_str(&format!("</{action}Response>"));
    xml
}

/// The query protocol's `<ErrorResponse>`.
pub fn xml_error(err: &SqsError, request_id: &str) -> String {
    let fault = if err.code.sender_fault() {
        "Sender"
    } else {
        "Receiver"
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><ErrorResponse xmlns="{XMLNS}"><Error><Type>{fault}</Type><Code>{}</Code><Message>{}</Message><Detail/></Error><RequestId>{}</RequestId></ErrorResponse>"#,
        err.code.legacy(),
        escape(&err.message),
        escape(request_id)
    )
}

/// The JSON protocol's error body.
pub fn json_error(err: &SqsError) -> String {
    serde_json::json!({
        "__type": format!("com.amazonaws.sqs#{}", err.code.shape()),
        "message": err.message,
    })
    .to_string()
}

/// The value of `x-amzn-query-error`, from which the SDKs take the legacy code.
pub fn query_error_header(err: &SqsError) -> String {
    let fault = if err.code.sender_fault() {
        "Sender"
    } else {
        "Receiver"
    };
    format!("{};{fault}", err.code.legacy())
}

fn xml_members(xml: &mut String, action: &str, members: &Map<String, Value>) {
    for (name, value) in members {
        match (name.as_str(), value) {
            ("QueueUrls" | "queueUrls", Value::Array(urls)) => {
                for url in urls {
                    element(xml, "QueueUrl", url);
                }
            }
            ("Attributes", Value::Object(map)) => {
                for (k, v) in map {
                    xml.push_str("<Attribute>");
                    element(xml, "Name", &Value::String(k.clone()));
                    element(xml, "Value", v);
                    xml.push_str("</Attribute>");
                }
            }
            ("Tags", Value::Object(map)) => {
                for (k, v) in map {
                    xml.push_str("<Tag>");
                    element(xml, "Key", &Value::String(k.clone()));
                    element(xml, "Value", v);
                    xml.push_str("</Tag>");
                }
            }
            ("MessageAttributes", Value::Object(map)) => {
                for (k, v) in map {
                    xml.push_str("<MessageAttribute>");
                    element(xml, "Name", &Value::String(k.clone()));
                    element(xml, "Value", v);
                    xml.push_str("</MessageAttribute>");
                }
            }
            ("Messages", Value::Array(items)) => list(xml, action, "Message", items),
            ("Successful", Value::Array(items)) => {
                list(xml, action, &format!("{action}ResultEntry"), items)
            }
            ("Failed", Value::Array(items)) => list(xml, action, "BatchResultErrorEntry", items),
            ("Results", Value::Array(items)) => {
                list(xml, action, "ListMessageMoveTasksResultEntry", items)
            }
            ("StringListValues", Value::Array(items)) => {
                list(xml, action, "StringListValue", items)
            }
            ("BinaryListValues", Value::Array(items)) => {
                list(xml, action, "BinaryListValue", items)
            }
            (_, Value::Object(inner)) => {
                xml.push_str(&format!("<{name}>"));
                xml_members(xml, action, inner);
                xml.push_str(&format!("</{name}>"));
            }
            (_, value) => element(xml, name, value),
        }
    }
}

fn list(xml: &mut String, action: &str, element_name: &str, items: &[Value]) {
    for item in items {
        match item {
            Value::Object(inner) => {
                xml.push_str(&format!("<{element_name}>"));
                xml_members(xml, action, inner);
                xml.push_str(&format!("</{element_name}>"));
            }
            other => element(xml, element_name, other),
        }
    }
}

fn element(xml: &mut String, name: &str, value: &Value) {
    let text = match value {
        Value::Null => return,
        Value::String(s) => escape(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(inner) => {
            xml.push_str(&format!("<{name}>"));
            xml_members(xml, "", inner);
            xml.push_str(&format!("</{name}>"));
            return;
        }
        Value::Array(items) => {
            list(xml, "", name, items);
            return;
        }
    };
    xml.push_str(&format!("<{name}>{text}</{name}>"));
}

/// Escapes text for XML. Carriage returns are escaped too: an XML parser turns a literal one
/// into a line feed, and the body would no longer match its MD5.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_parameters_become_the_json_protocols_maps_and_lists() {
        let decoded = decode_query(
            &params(&[
                ("Action", "SendMessageBatch"),
                ("Version", "2012-11-05"),
                ("QueueUrl", "http://h/000000000000/q"),
                ("SendMessageBatchRequestEntry.2.Id", "b"),
                ("SendMessageBatchRequestEntry.2.MessageBody", "two"),
                ("SendMessageBatchRequestEntry.1.Id", "a"),
                ("SendMessageBatchRequestEntry.1.MessageBody", "one"),
                ("SendMessageBatchRequestEntry.1.DelaySeconds", "5"),
                (
                    "SendMessageBatchRequestEntry.1.MessageAttribute.1.Name",
                    "colour",
                ),
                (
                    "SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType",
                    "String",
                ),
                (
                    "SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue",
                    "red",
                ),
            ]),
            "/",
        )
        .unwrap();
        assert_eq!(decoded.action, "SendMessageBatch");
        assert_eq!(
            Value::Object(decoded.input),
            json!({
                "QueueUrl": "http://h/000000000000/q",
                "Entries": [
                    {"Id": "a", "MessageBody": "one", "DelaySeconds": 5,
                     "MessageAttributes": {"colour": {"DataType": "String", "StringValue": "red"}}},
                    {"Id": "b", "MessageBody": "two"},
                ],
            })
        );
    }

    #[test]
    fn an_empty_list_as_botocore_sends_it_is_an_empty_list() {
        let decoded = decode_query(
            &params(&[
                ("Action", "SendMessageBatch"),
                ("QueueUrl", "http://h/000000000000/q"),
                ("Entries", ""),
                ("AttributeNames", ""),
            ]),
            "/",
        )
        .unwrap();
        assert_eq!(
            Value::Object(decoded.input),
            json!({"QueueUrl": "http://h/000000000000/q", "Entries": [], "AttributeNames": []})
        );
    }

    #[test]
    fn query_attributes_tags_and_names_are_read_and_the_path_names_the_queue() {
        let decoded = decode_query(
            &params(&[
                ("Action", "CreateQueue"),
                ("QueueName", "q"),
                ("Attribute.1.Name", "DelaySeconds"),
                ("Attribute.1.Value", "3"),
                ("Tag.1.Key", "team"),
                ("Tag.1.Value", "billing"),
            ]),
            "/",
        )
        .unwrap();
        assert_eq!(
            Value::Object(decoded.input),
            json!({"QueueName": "q", "Attributes": {"DelaySeconds": "3"}, "tags": {"team": "billing"}})
        );
        let decoded = decode_query(
            &params(&[
                ("Action", "ReceiveMessage"),
                ("AttributeName.1", "All"),
                ("MaxNumberOfMessages", "10"),
            ]),
            "/000000000000/q",
        )
        .unwrap();
        assert_eq!(
            Value::Object(decoded.input),
            json!({"AttributeNames": ["All"], "MaxNumberOfMessages": 10, "QueueUrl": "/000000000000/q"})
        );
    }

    #[test]
    fn malformed_query_parameters_are_refused_by_name() {
        let err = decode_query(&params(&[("QueueName", "q")]), "/").unwrap_err();
        assert_eq!(err.code, Code::MissingParameter);
        let err = decode_query(
            &params(&[("Action", "ReceiveMessage"), ("MaxNumberOfMessages", "ten")]),
            "/",
        )
        .unwrap_err();
        assert_eq!(err.code, Code::InvalidParameterValue);
        assert!(err.message.contains("MaxNumberOfMessages"), "{err}");
        let err = decode_query(
            &params(&[("Action", "GetQueueAttributes"), ("AttributeName.x", "All")]),
            "/",
        )
        .unwrap_err();
        assert!(err.message.contains("AttributeName.x"), "{err}");
    }

    #[test]
    fn xml_replies_flatten_lists_and_maps_as_sqs_does() {
        let output = json!({
            "Messages": [{
                "MessageId": "m1",
                "Body": "a<b>\r\n",
                "Attributes": {"SentTimestamp": "1"},
                "MessageAttributes": {"colour": {"DataType": "String", "StringValue": "red"}},
            }],
        });
        let xml = xml_reply("ReceiveMessage", output.as_object().unwrap(), "rid");
        assert!(xml.contains(&format!(
            "<ReceiveMessageResponse xmlns=\"{XMLNS}\"><ReceiveMessageResult><Message>"
        )));
        assert!(xml.contains("<Body>a&lt;b&gt;&#xD;\n</Body>"), "{xml}");
        assert!(xml.contains("<Attribute><Name>SentTimestamp</Name><Value>1</Value></Attribute>"));
        assert!(xml.contains("<MessageAttribute><Name>colour</Name><Value><DataType>String</DataType><StringValue>red</StringValue></Value></MessageAttribute>"), "{xml}");
        assert!(xml.ends_with(
            "<ResponseMetadata><RequestId>rid</RequestId></ResponseMetadata></ReceiveMessageResponse>"
        ));
        // No message, no queue: the result element is there, empty.
        for action in ["ReceiveMessage", "ListQueues"] {
            let xml = xml_reply(action, &Map::new(), "rid");
            assert!(
                xml.contains(&format!(
                    "<{action}Result></{action}Result><ResponseMetadata>"
                )),
                "{xml}"
            );
        }
        let xml = xml_reply("DeleteQueue", &Map::new(), "rid");
        assert!(!xml.contains("Result"), "{xml}");
        let output =
            json!({"Successful": [{"Id": "a"}], "Failed": [{"Id": "b", "SenderFault": true}]});
        let xml = xml_reply("DeleteMessageBatch", output.as_object().unwrap(), "rid");
        assert!(
            xml.contains(
                "<DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<BatchResultErrorEntry><Id>b</Id><SenderFault>true</SenderFault></BatchResultErrorEntry>"),
            "{xml}"
        );
        let xml = xml_reply("DeleteQueue", &Map::new(), "rid");
        assert!(!xml.contains("DeleteQueueResult"));
    }

    #[test]
    fn errors_carry_the_shape_and_the_legacy_code() {
        let err = SqsError::no_queue();
        let body: Value = serde_json::from_str(&json_error(&err)).unwrap();
        assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
        assert_eq!(
            query_error_header(&err),
            "AWS.SimpleQueueService.NonExistentQueue;Sender"
        );
        let xml = xml_error(&err, "rid");
        assert!(xml.contains(
            "<Error><Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>"
        ));
    }
}
