//! Idempotency keys: what makes retrying a send after an ambiguous failure safe.
//!
//! A send whose answer was lost (the leader died between commit and reply, the connection
//! broke) may or may not have been stored. The caller that retries it sends the same key each
//! time; the backend writes the key in the same replicated write as the messages and, for a
//! short window, answers another send with that key by the first one's answer instead of
//! storing the messages again, on whichever node leads by then.

use crate::{Error, Result};

/// Names one send request across its retries. Random, so two sends never share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(u128);

impl IdempotencyKey {
    /// Bytes on the wire.
    pub const LEN: usize = 16;

    pub fn random() -> Self {
        IdempotencyKey(uuid::Uuid::new_v4().as_u128())
    }

    /// Reads a key off the wire: empty means the send has none.
    pub fn from_wire(bytes: &[u8]) -> Result<Option<Self>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let bytes: [u8; Self::LEN] = bytes.try_into().map_err(|_| {
            Error::invalid(
                "idempotency_key",
                format!("must be {} bytes, not {}", Self::LEN, bytes.len()),
            )
        })?;
        Ok(Some(IdempotencyKey(u128::from_be_bytes(bytes))))
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        self.0.to_be_bytes()
    }

    /// The key of the part of a send made of the messages at `indices`, when the send is split
    /// over the partitions of a queue spread over clusters: the same part of a retried send
    /// gets the same key, so each partition answers the retry of what it stored.
    pub fn part(self, indices: &[usize]) -> Self {
        // A multiplicative mix (odd constant, the 128-bit golden ratio): a different set of
        // indices gives an unrelated key.
        const MIX: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
        let mixed = indices
            .iter()
            .fold(self.0, |h, &i| (h ^ (i as u128 + 1)).wrapping_mul(MIX));
        IdempotencyKey(mixed)
    }

    /// The id of the send's `index`th message. Derived from the key rather than drawn, so a
    /// retry is answered with the ids the first attempt gave without the backend keeping them:
    /// the key is random, and so is every id made from it.
    pub fn message_id(self, index: usize) -> String {
        let bytes = self.0.wrapping_add(index as u128).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_other_lengths() {
        let key = IdempotencyKey::random();
        assert_eq!(
            IdempotencyKey::from_wire(&key.to_bytes()).unwrap(),
            Some(key)
        );
        assert_eq!(IdempotencyKey::from_wire(&[]).unwrap(), None);
        let err = IdempotencyKey::from_wire(&[1, 2, 3]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("idempotency_key"), "{err}");
    }

    #[test]
    fn parts_of_a_send_have_keys_of_their_own() {
        let key = IdempotencyKey::random();
        assert_eq!(key.part(&[0, 2]), key.part(&[0, 2]));
        assert_ne!(key.part(&[0, 2]), key.part(&[1]));
        assert_ne!(key.part(&[0, 2]), key);
        assert_ne!(key.part(&[0]), IdempotencyKey::random().part(&[0]));
    }

    #[test]
    fn message_ids_are_stable_per_key_and_index_and_look_like_uuids() {
        let key = IdempotencyKey::random();
        assert_eq!(key.message_id(3), key.message_id(3));
        assert_ne!(key.message_id(3), key.message_id(4));
        assert_ne!(key.message_id(0), IdempotencyKey::random().message_id(0));
        let id = uuid::Uuid::parse_str(&key.message_id(7)).unwrap();
        assert_eq!(id.get_version_num(), 4);
    }
}
