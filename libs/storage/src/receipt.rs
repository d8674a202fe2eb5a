//! Receipt handles: an HMAC-signed (queue, sequence, receive count) triple. The signature makes
//! them unforgeable; the receive count makes each name exactly one delivery, so a handle from an
//! earlier delivery is recognised as stale instead of deleting a redelivered message.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::QueueId;

const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 8 + 8 + 4;
const MAC_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub queue: QueueId,
    pub seq: u64,
    pub receive_count: u32,
}

pub(crate) struct ReceiptSigner {
    key: [u8; 32],
}

impl ReceiptSigner {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        ReceiptSigner { key }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    pub(crate) fn encode(&self, receipt: Receipt) -> String {
        let mut raw = Vec::with_capacity(BODY_LEN + MAC_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&receipt.queue.to_be_bytes());
        raw.extend_from_slice(&receipt.seq.to_be_bytes());
        raw.extend_from_slice(&receipt.receive_count.to_be_bytes());
        let mac = self.mac(&raw);
        raw.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub(crate) fn decode(&self, handle: &str) -> Result<Receipt> {
        let raw = URL_SAFE_NO_PAD
            .decode(handle)
            .map_err(|_| Error::InvalidReceipt("not a receipt handle"))?;
        if raw.len() != BODY_LEN + MAC_LEN || raw[0] != VERSION {
            return Err(Error::InvalidReceipt("not a receipt handle"));
        }
        let (body, mac) = raw.split_at(BODY_LEN);
        // Verify through the hmac crate so the comparison takes constant time.
        let mut check = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        check.update(body);
        check
            .verify_truncated_left(mac)
            .map_err(|_| Error::InvalidReceipt("signature does not match"))?;
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Ok(Receipt {
            queue: u64_at(1),
            seq: u64_at(9),
            receive_count: u32::from_be_bytes(body[17..21].try_into().expect("4 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_tampering() {
        let signer = ReceiptSigner::new([7; 32]);
        let receipt = Receipt {
            queue: 3,
            seq: 99,
            receive_count: 2,
        };
        let handle = signer.encode(receipt);
        assert_eq!(signer.decode(&handle).unwrap(), receipt);

        let mut raw = URL_SAFE_NO_PAD.decode(&handle).unwrap();
        raw[10] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert!(matches!(
            signer.decode(&forged),
            Err(Error::InvalidReceipt(_))
        ));
        assert!(matches!(
            signer.decode("not base64 !"),
            Err(Error::InvalidReceipt(_))
        ));
        let other_key = ReceiptSigner::new([8; 32]);
        assert!(other_key.decode(&handle).is_err());
    }
}
