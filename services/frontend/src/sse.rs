//! Server-side encryption: a queue with `server_side_encryption` has a data key of its own
//! (AES-256-GCM, 32 random bytes) kept sealed under the master key in the metadata store, and
//! each message's body and attributes are encrypted with it here, before they leave the
//! frontend: the backends' Raft log, RocksDB files and snapshots never hold them in plain text.
//!
//! Messages are sealed with `ring`'s AES-256-GCM, the implementation rustls runs on: on the
//! benchmark's workload (a) the `aes-gcm` crate's AES and GHASH took about 6% of the server's
//! CPU, ring's assembly (vectorised AES and carry-less multiplication over several blocks at
//! once) under 1%. Data keys, sealed rarely, stay with `sluice_common::keys` (`aes-gcm`).
//!
//! A sealed message is what the engine stores as any other: its body is a random 96-bit nonce
//! followed by the ciphertext of the message's body and attributes (one protobuf `NewMessage`)
//! and the 128-bit tag, and its only attribute is `Sluice.SSE`, naming the queue whose data key sealed it (a message
//! moved to a dead-letter queue stays sealed under its first queue's key). The associated data
//! binds the ciphertext to that queue id and to the message id, which the frontend therefore
//! chooses. Receives open any message that carries `Sluice.SSE`, so a queue's setting can change
//! without making its messages unreadable. The body's MD5 clients see is of the plain text: the
//! frontend computes it and the engine stores it with the sealed body.
//!
//! Rotating the master key re-wraps the data keys (`rewrap`), never the messages.

use std::sync::Arc;

use prost::Message as _;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sluice_api::identity::NONCE_LEN;
use sluice_api::{
    md5_of_body, wire, AttributeValue, DataKeyDirectory, Error, NewMessage, QueueId, QueueRecord,
    ReceivedMessage, Result,
};
use sluice_common::keys::MasterKeys;
use sluice_proto::v1 as pb;
use zeroize::Zeroizing;

/// The attribute that marks a sealed message; names starting with `Sluice.` are not clients'.
pub const ENVELOPE: &str = "Sluice.SSE";
const DATA_KEY_LEN: usize = 32;
/// AES-GCM's authentication tag, after the ciphertext.
const TAG_LEN: usize = 16;
/// Data keys kept opened; a few dozen bytes each.
const CACHE_CAPACITY: u64 = 100_000;
/// Data keys re-wrapped per page of the metadata store.
const REWRAP_PAGE: usize = 500;

fn data_key_aad(queue: QueueId) -> Vec<u8> {
    format!("sluice data key {queue}").into_bytes()
}

fn message_aad(queue: QueueId, message_id: &str) -> Vec<u8> {
    format!("sluice message {queue}/{message_id}").into_bytes()
}

pub struct Encryption {
    keys: Arc<MasterKeys>,
    directory: Arc<dyn DataKeyDirectory>,
    /// Opened data keys by queue id. A data key never changes (a re-wrap seals the same bytes),
    /// so an entry is never stale.
    ciphers: moka::sync::Cache<QueueId, Arc<LessSafeKey>>,
}

impl Encryption {
    pub fn new(keys: Arc<MasterKeys>, directory: Arc<dyn DataKeyDirectory>) -> Self {
        Encryption {
            keys,
            directory,
            ciphers: moka::sync::Cache::new(CACHE_CAPACITY),
        }
    }

    pub fn master_keys(&self) -> &Arc<MasterKeys> {
        &self.keys
    }

    /// Makes queue `queue`'s data key unless it has one.
    pub async fn ensure_key(&self, queue: QueueId) -> Result<()> {
        if self.directory.data_key(queue).await?.is_some() {
            return Ok(());
        }
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let sealed = self.keys.seal(key.as_ref(), &data_key_aad(queue));
        // Another frontend may have made one meanwhile: then its key is the queue's.
        self.directory.put_data_key(queue, &sealed, None).await?;
        Ok(())
    }

    async fn cipher(&self, queue: QueueId) -> Result<Arc<LessSafeKey>> {
        if let Some(cipher) = self.ciphers.get(&queue) {
            return Ok(cipher);
        }
        let (sealed, _) = self.directory.data_key(queue).await?.ok_or_else(|| {
            Error::Internal(format!(
                "queue {queue} encrypts its messages but has no data key"
            ))
        })?;
        let key = self.keys.open(&sealed, &data_key_aad(queue))?;
        let cipher = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key)
                .map_err(|_| Error::Internal(format!("queue {queue}'s data key is malformed")))?,
        ));
        self.ciphers.insert(queue, cipher.clone());
        Ok(cipher)
    }

    /// Seals `messages` for `queue` if it encrypts its messages, giving each an id and the MD5
    /// of its plain body, which the engine stores instead of the sealed body's.
    pub async fn seal(&self, queue: &QueueRecord, messages: &mut [NewMessage]) -> Result<()> {
        if !queue.attributes.server_side_encryption {
            return Ok(());
        }
        let cipher = self.cipher(queue.id).await?;
        let mut rng = rand::thread_rng();
        for message in messages.iter_mut() {
            message.md5_of_body = md5_of_body(&message.body);
            message.message_id = uuid::Uuid::new_v4().to_string();
            let plain = pb::NewMessage {
                body: std::mem::take(&mut message.body),
                attributes: std::mem::take(&mut message.attributes)
                    .into_iter()
                    .map(|(name, value)| (name, wire::attribute_to_pb(value)))
                    .collect(),
                ..Default::default()
            };
            // One buffer: the nonce, then the plain text encrypted where it lies, then the tag.
            let mut body = Vec::with_capacity(NONCE_LEN + plain.encoded_len() + TAG_LEN);
            body.resize(NONCE_LEN, 0);
            rng.fill_bytes(&mut body);
            plain
                .encode(&mut body)
                .expect("a Vec grows to take the message");
            let nonce =
                Nonce::try_assume_unique_for_key(&body[..NONCE_LEN]).expect("the nonce is 96 bits");
            let aad = message_aad(queue.id, &message.message_id);
            let tag = cipher
                .seal_in_place_separate_tag(nonce, Aad::from(&aad), &mut body[NONCE_LEN..])
                .map_err(|_| Error::Internal("cannot encrypt a message".into()))?;
            body.extend_from_slice(tag.as_ref());
            message.body = body.into();
            message.attributes.insert(
                ENVELOPE.to_owned(),
                AttributeValue {
                    data_type: "String".into(),
                    string_value: queue.id.to_string(),
                    binary_value: Default::default(),
                },
            );
        }
        Ok(())
    }

    /// Opens every sealed message of `messages` in place. The MD5 the engine hands back is the
    /// plain body's already: the frontend gave it when it sealed the message.
    pub async fn open(&self, messages: &mut [ReceivedMessage]) -> Result<()> {
        for message in messages.iter_mut() {
            let Some(envelope) = message.attributes.get(ENVELOPE) else {
                continue;
            };
            let queue: QueueId = envelope.string_value.parse().map_err(|_| {
                Error::Internal(format!(
                    "message {} has a malformed {ENVELOPE} attribute",
                    message.message_id
                ))
            })?;
            let cipher = self.cipher(queue).await?;
            let corrupt = || {
                Error::Internal(format!(
                    "message {} does not open under queue {queue}'s data key: altered, or moved \
                     from where it was sealed",
                    message.message_id
                ))
            };
            if message.body.len() < NONCE_LEN + TAG_LEN {
                return Err(corrupt());
            }
            let (nonce, sealed) = message.body.split_at(NONCE_LEN);
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
            // Ciphertext and tag, opened where they lie in a copy the message owns.
            let mut plain = sealed.to_vec();
            let opened = cipher
                .open_in_place(
                    nonce,
                    Aad::from(&message_aad(queue, &message.message_id)),
                    &mut plain,
                )
                .map_err(|_| corrupt())?
                .len();
            plain.truncate(opened);
            // Decoded from shared bytes: the body is a slice of the buffer, not a copy.
            let inner = pb::NewMessage::decode(bytes::Bytes::from(plain)).map_err(|_| corrupt())?;
            message.body = inner.body;
            message.attributes = inner
                .attributes
                .into_iter()
                .map(|(name, value)| (name, wire::attribute_from_pb(value)))
                .collect();
        }
        Ok(())
    }

    /// Seals every data key and every access key's secret that is under an older master key
    /// again under the current one; returns how many of each it re-wrapped. The messages stay
    /// as they are: their data keys do not change.
    pub async fn rewrap(
        &self,
        identities: &dyn sluice_api::IdentityDirectory,
    ) -> Result<(u64, u64)> {
        let mut data_keys = 0;
        let mut after = 0;
        loop {
            let page = self.directory.data_keys(after, REWRAP_PAGE).await?;
            for (queue, sealed, revision) in &page {
                if let Some(rewrapped) = self.keys.rewrap(sealed, &data_key_aad(*queue))? {
                    if self
                        .directory
                        .put_data_key(*queue, &rewrapped, Some(*revision))
                        .await?
                        .is_none()
                    {
                        return Err(Error::Aborted(format!(
                            "queue {queue}'s data key changed while it was re-wrapped; run the \
                             rotation again"
                        )));
                    }
                    data_keys += 1;
                }
            }
            match page.last() {
                Some((last, _, _)) if page.len() == REWRAP_PAGE => after = *last,
                _ => break,
            }
        }
        let mut secrets = 0;
        let mut after = String::new();
        loop {
            let page = identities.access_keys(None, &after, REWRAP_PAGE).await?;
            for key in &page {
                // Read again for the revision to compare-and-swap on.
                let Some((mut current, revision)) = identities.access_key(&key.id).await? else {
                    continue;
                };
                if let Some(rewrapped) = self.keys.rewrap(&current.secret, current.id.as_bytes())? {
                    current.secret = rewrapped;
                    if identities
                        .put_access_key(&current, Some(revision))
                        .await?
                        .is_none()
                    {
                        return Err(Error::Aborted(format!(
                            "access key {} changed while it was re-wrapped; run the rotation \
                             again",
                            current.id
                        )));
                    }
                    secrets += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == REWRAP_PAGE => after = last.id.clone(),
                _ => break,
            }
        }
        Ok((data_keys, secrets))
    }
}

/// The messages of a receive, the sealed ones opened.
pub async fn opened(
    encryption: Option<&Arc<Encryption>>,
    mut messages: Vec<ReceivedMessage>,
) -> Result<Vec<ReceivedMessage>> {
    match encryption {
        Some(encryption) => encryption.open(&mut messages).await?,
        None if messages.iter().any(|m| m.attributes.contains_key(ENVELOPE)) => {
            return Err(Error::FailedPrecondition(
                "the messages are encrypted and this frontend has no master key \
                 (--master-key-file)"
                    .into(),
            ))
        }
        None => {}
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_api::{EffectiveAttributes, QueueRecord};
    use sluice_metastore::{EmbeddedStore, StoreDirectory};

    use super::*;

    fn record(id: QueueId, encrypted: bool) -> QueueRecord {
        QueueRecord {
            id,
            name: format!("q{id}"),
            attributes: EffectiveAttributes {
                server_side_encryption: encrypted,
                ..Default::default()
            },
            tags: Default::default(),
            created_at_ms: 0,
            modified_at_ms: 0,
            purged_at_ms: 0,
        }
    }

    fn message(body: &str, note: &str) -> NewMessage {
        NewMessage {
            body: body.as_bytes().to_vec().into(),
            attributes: BTreeMap::from([(
                "note".to_owned(),
                AttributeValue {
                    data_type: "String".into(),
                    string_value: note.into(),
                    binary_value: Default::default(),
                },
            )]),
            ..Default::default()
        }
    }

    /// What a receive would hand back of a stored message.
    fn received(stored: &NewMessage) -> ReceivedMessage {
        ReceivedMessage {
            message_id: stored.message_id.clone(),
            receipt_handle: "r".into(),
            body: stored.body.clone(),
            attributes: stored.attributes.clone(),
            sent_timestamp_ms: 0,
            receive_count: 1,
            first_receive_timestamp_ms: 0,
            group_id: String::new(),
            sequence: 1,
            dead_letter_source: String::new(),
            md5_of_body: stored.md5_of_body.clone(),
        }
    }

    #[tokio::test]
    async fn a_sealed_message_opens_only_as_what_was_sent_where_it_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StoreDirectory::new(Arc::new(
            EmbeddedStore::open(dir.path()).unwrap(),
        )));
        let keys = Arc::new(MasterKeys::parse(&MasterKeys::generate()).unwrap());
        let encryption = Encryption::new(keys, store);
        let queue = record(7, true);
        encryption.ensure_key(7).await.unwrap();

        let mut messages = vec![message("hello there", "a note")];
        encryption.seal(&queue, &mut messages).await.unwrap();
        let stored = &messages[0];
        assert_eq!(stored.md5_of_body, md5_of_body(b"hello there"));
        assert!(!contains(&stored.body, b"hello there"));
        assert_eq!(stored.attributes.len(), 1, "only the envelope is left");
        assert_eq!(stored.attributes[ENVELOPE].string_value, "7");
        assert!(!stored.message_id.is_empty(), "the frontend names it");

        let mut back = vec![received(stored)];
        encryption.open(&mut back).await.unwrap();
        assert_eq!(&back[0].body[..], b"hello there");
        assert_eq!(back[0].attributes["note"].string_value, "a note");
        assert_eq!(back[0].md5_of_body, md5_of_body(b"hello there"));

        // Bound to its message id: the same ciphertext under another id does not open.
        let mut moved = vec![ReceivedMessage {
            message_id: "another-id".into(),
            ..received(stored)
        }];
        let err = encryption.open(&mut moved).await.unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");

        // A queue without encryption stores what it is given.
        let mut plain = vec![message("clear", "n")];
        encryption
            .seal(&record(8, false), &mut plain)
            .await
            .unwrap();
        assert_eq!(&plain[0].body[..], b"clear");
        assert!(plain[0].md5_of_body.is_empty(), "the engine digests it");
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
