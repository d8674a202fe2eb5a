//! Generated requests for the randomized API tests: valid and invalid ones mixed, each with what
//! the public API's documented limits say must happen to it (the oracle). Requests are drawn with
//! `proptest` strategies; a run is not shrunk (the server's state makes a request's outcome
//! depend on those before it), but its seed is printed so it can be replayed.

use std::collections::HashMap;

use proptest::prelude::*;
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;

/// The queues a request may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Standard,
    Fifo,
    /// A well-formed name no queue has.
    Unknown,
    /// A name the limits refuse.
    BadName,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Standard => "fuzzed",
            Target::Fifo => "fuzzed.fifo",
            Target::Unknown => "nobody-made-this",
            Target::BadName => "bad name!",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Body {
    Empty,
    Small(usize),
    Large,
    /// Exactly the queue's `max_message_bytes` without attributes.
    Max,
    TooBig,
}

#[derive(Debug, Clone, Copy)]
pub enum Id {
    Empty,
    Valid,
    TooLong,
    NotAscii,
}

#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub data_type: String,
    pub string_value: String,
    pub binary_value: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub body: Body,
    pub attributes: Vec<Attribute>,
    pub delay: Option<u32>,
    pub group: Id,
    pub dedup: Id,
    pub trace: Id,
}

#[derive(Debug, Clone, Copy)]
pub enum Handle {
    Empty,
    Garbage,
    /// The newest receipt handle of a message the run received, picked by this number.
    Known(usize),
}

#[derive(Debug, Clone)]
pub enum Op {
    Send(Target, Message),
    SendBatch(Target, Vec<(String, Message)>),
    Receive {
        target: Target,
        max: u32,
        wait: Option<u32>,
        visibility: Option<u32>,
    },
    Delete(Target, Handle),
    DeleteBatch(Target, Vec<(String, Handle)>),
    ChangeVisibility(Target, Handle, u32),
}

pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => Just(Target::Standard),
        4 => Just(Target::Fifo),
        1 => Just(Target::Unknown),
        1 => Just(Target::BadName),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => Just(Body::Empty),
        40 => (1usize..200).prop_map(Body::Small),
        2 => Just(Body::Large),
        1 => Just(Body::Max),
        1 => Just(Body::TooBig),
    ]
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        4 => Just(Id::Empty),
        8 => Just(Id::Valid),
        1 => Just(Id::TooLong),
        1 => Just(Id::NotAscii),
    ]
}

fn attribute() -> impl Strategy<Value = Attribute> {
    let name = prop_oneof![
        8 => "[a-z][a-z0-9_.-]{0,8}",
        1 => Just(String::new()),
        1 => Just("has space".to_owned()),
        1 => Just("Sluice.Mine".to_owned()),
        1 => Just("AWS.Trace".to_owned()),
        1 => Just("x".repeat(257)),
        1 => Just("caf\u{e9}".to_owned()),
    ];
    let data_type = prop_oneof![
        4 => Just("String".to_owned()),
        4 => Just("Number".to_owned()),
        2 => Just("Binary".to_owned()),
        1 => Just("Number.int".to_owned()),
        1 => Just("Float".to_owned()),
        1 => Just(String::new()),
        1 => Just("String.bad suffix".to_owned()),
    ];
    let string_value = prop_oneof![
        4 => "[a-z]{1,12}",
        4 => "-?[0-9]{1,6}(\\.[0-9]{1,3})?",
        1 => Just(String::new()),
        1 => Just("NaN".to_owned()),
        1 => Just("inf".to_owned()),
        1 => Just("-Infinity".to_owned()),
        1 => Just("1e999".to_owned()),
    ];
    let binary_value = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 1..16),
        1 => Just(Vec::new()),
    ];
    (name, data_type, string_value, binary_value).prop_map(
        |(name, data_type, string_value, binary_value)| Attribute {
            name,
            data_type,
            string_value,
            binary_value,
        },
    )
}

fn delay() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        6 => Just(None),
        3 => (0u32..=1).prop_map(Some),
        1 => prop_oneof![Just(901u32), Just(u32::MAX)].prop_map(Some),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        body(),
        prop_oneof![
            6 => proptest::collection::vec(attribute(), 0..3),
            1 => proptest::collection::vec(attribute(), 9..12),
        ],
        delay(),
        id(),
        id(),
        id(),
    )
        .prop_map(|(body, attributes, delay, group, dedup, trace)| Message {
            body,
            attributes,
            delay,
            group,
            dedup,
            trace,
        })
}

fn entry_id() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z0-9]{1,4}",
        1 => Just(String::new()),
        1 => Just("bad id".to_owned()),
        1 => Just("i".repeat(81)),
    ]
}

fn handle() -> impl Strategy<Value = Handle> {
    prop_oneof![
        1 => Just(Handle::Empty),
        2 => Just(Handle::Garbage),
        8 => any::<usize>().prop_map(Handle::Known),
    ]
}

fn visibility() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..=1,
        1 => prop_oneof![Just(43_201u32), Just(u32::MAX)],
    ]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (target(), message()).prop_map(|(t, m)| Op::Send(t, m)),
        3 => (
            target(),
            prop_oneof![
                8 => proptest::collection::vec((entry_id(), message()), 1..=10),
                1 => Just(Vec::new()),
                1 => proptest::collection::vec((entry_id(), message()), 11..=12),
            ]
        )
            .prop_map(|(t, entries)| Op::SendBatch(t, entries)),
        6 => (
            target(),
            0u32..=12,
            prop_oneof![
                4 => Just(None),
                4 => Just(Some(0u32)),
                1 => prop_oneof![Just(21u32), Just(u32::MAX)].prop_map(Some),
            ],
            prop_oneof![
                1 => Just(None),
                4 => visibility().prop_map(Some),
            ],
        )
            .prop_map(|(target, max, wait, visibility)| Op::Receive {
                target,
                max,
                wait,
                visibility,
            }),
        4 => (target(), handle()).prop_map(|(t, h)| Op::Delete(t, h)),
        2 => (
            target(),
            proptest::collection::vec((entry_id(), handle()), 0..=11)
        )
            .prop_map(|(t, entries)| Op::DeleteBatch(t, entries)),
        2 => (target(), handle(), visibility()).prop_map(|(t, h, v)| Op::ChangeVisibility(t, h, v)),
    ]
}

/// Makes the request's bytes: bodies start with `tag`, so every stored message is told apart,
/// and valid client ids are drawn from `counter` so none repeats (a repeated deduplication id
/// would store nothing, by design).
pub fn body_bytes(body: Body, tag: &str) -> Vec<u8> {
    let len = match body {
        Body::Empty => return Vec::new(),
        Body::Small(n) => tag.len() + n,
        Body::Large => 256 * 1024,
        Body::Max => MAX_MESSAGE_BYTES,
        Body::TooBig => MAX_MESSAGE_BYTES + 1,
    };
    let mut bytes = tag.as_bytes().to_vec();
    bytes.resize(len.max(tag.len()), b'.');
    bytes
}

pub fn id_string(id: Id, counter: u64, group: bool) -> String {
    match id {
        Id::Empty => String::new(),
        // A few groups, so FIFO ordering and in-flight groups come into play.
        Id::Valid if group => format!("g{}", counter % 3),
        Id::Valid => format!("d{counter}"),
        Id::TooLong => "x".repeat(129),
        Id::NotAscii => "gr\u{fc}n".to_owned(),
    }
}

/// A send's trace header: valid ones are X-Ray's, with a space as W3C's `tracestate` may hold.
pub fn trace_string(id: Id, counter: u64) -> String {
    match id {
        Id::Empty => String::new(),
        Id::Valid => format!("Root=1-5759e988-{counter:024x};Sampled=1, vendor=x"),
        Id::TooLong => "t".repeat(1025),
        Id::NotAscii => "tr\u{e4}ce".to_owned(),
    }
}

pub fn attributes_pb(attributes: &[Attribute]) -> HashMap<String, pb::MessageAttributeValue> {
    attributes
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                pb::MessageAttributeValue {
                    data_type: a.data_type.clone(),
                    string_value: a.string_value.clone(),
                    binary_value: a.binary_value.clone().into(),
                },
            )
        })
        .collect()
}

/// Whether the public API must accept this message on `target` (a queue that exists), by the
/// limits DESIGN section 3 documents; the map holds the attributes as sent (a repeated name
/// keeps the last).
pub fn message_valid(
    target: Target,
    body: &[u8],
    attributes: &HashMap<String, pb::MessageAttributeValue>,
    m: &Message,
    group: &str,
    dedup: &str,
    trace: &str,
) -> bool {
    let fifo = target == Target::Fifo;
    let attributes_ok = attributes.len() <= 10 && attributes.iter().all(attribute_valid);
    let size = body.len() + attributes_size(attributes);
    let delay_ok = match m.delay {
        Some(_) if fifo => false,
        Some(secs) => secs <= 900,
        None => true,
    };
    let id_ok = |id: &str| id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic());
    !body.is_empty()
        && attributes_ok
        && size <= MAX_MESSAGE_BYTES
        && delay_ok
        && id_ok(group)
        && id_ok(dedup)
        && trace.len() <= 1024
        && trace.bytes().all(|b| (b' '..=b'~').contains(&b))
        && (!fifo || (!group.is_empty() && !dedup.is_empty()))
}

pub fn attributes_size(attributes: &HashMap<String, pb::MessageAttributeValue>) -> usize {
    attributes
        .iter()
        .map(|(n, v)| n.len() + v.data_type.len() + v.string_value.len() + v.binary_value.len())
        .sum()
}

fn attribute_valid((name, value): (&String, &pb::MessageAttributeValue)) -> bool {
    let lower = name.to_ascii_lowercase();
    let name_ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !lower.starts_with("aws.")
        && !lower.starts_with("sluice.");
    let (base, suffix) = value
        .data_type
        .split_once('.')
        .unwrap_or((&value.data_type, ""));
    let suffix_ok = suffix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let value_ok = match base {
        "String" => !value.string_value.is_empty(),
        "Number" => {
            value
                .string_value
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
                && value
                    .string_value
                    .parse::<f64>()
                    .is_ok_and(|n| n.is_finite())
        }
        "Binary" => !value.binary_value.is_empty(),
        _ => false,
    };
    name_ok && suffix_ok && value_ok
}

/// Whether a batch's entry ids pass: each 1 to 80 of `A-Z a-z 0-9 _ -`, none twice.
pub fn entry_ids_valid<'a>(ids: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().all(|id| {
        !id.is_empty()
            && id.len() <= 80
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && seen.insert(id)
    })
}

/// Creates queue `name` with a visibility timeout of one second, so that what a run leaves in
/// flight comes back soon for the final check.
pub async fn create(client: &mut QueueClient, name: &str, fifo: bool) {
    client
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            attributes: Some(pb::QueueAttributes {
                visibility_timeout_seconds: Some(1),
                fifo,
                ..Default::default()
            }),
            tags: Default::default(),
        })
        .await
        .unwrap();
}
