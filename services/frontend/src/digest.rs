//! Digests the API returns or relies on, computed as Amazon SQS does so its SDKs can check them.

use md5::{Digest, Md5};
use sha2::Sha256;
use sluice_proto::v1 as pb;

/// Lower-case hex MD5 of message attributes by SQS's algorithm: attributes in name order; for
/// each, the name, the data type and the value, each preceded by its length as a 4-byte
/// big-endian integer, with a transport byte before the value (1 for String and Number, 2 for
/// Binary). Empty when there are no attributes, as SQS leaves it out.
pub fn md5_of_attributes<'a>(
    attributes: impl IntoIterator<Item = (&'a String, &'a pb::MessageAttributeValue)>,
) -> String {
    let mut sorted: Vec<_> = attributes.into_iter().collect();
    if sorted.is_empty() {
        return String::new();
    }
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut md5 = Md5::new();
    for (name, value) in sorted {
        length_prefixed(&mut md5, name.as_bytes());
        length_prefixed(&mut md5, value.data_type.as_bytes());
        if value.data_type.starts_with("Binary") {
            md5.update([2u8]);
            length_prefixed(&mut md5, &value.binary_value);
        } else {
            md5.update([1u8]);
            length_prefixed(&mut md5, value.string_value.as_bytes());
        }
    }
    format!("{:x}", md5.finalize())
}

fn length_prefixed(md5: &mut Md5, bytes: &[u8]) {
    md5.update((bytes.len() as u32).to_be_bytes());
    md5.update(bytes);
}

/// The deduplication id of a content-deduplicated FIFO send: the hex SHA-256 of its body.
pub fn content_deduplication_id(body: &[u8]) -> String {
    format!("{:x}", Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn string(data_type: &str, value: &str) -> pb::MessageAttributeValue {
        pb::MessageAttributeValue {
            data_type: data_type.into(),
            string_value: value.into(),
            binary_value: Default::default(),
        }
    }

    /// The bytes SQS's algorithm digests, written out by hand rather than by our encoder.
    #[test]
    fn attributes_md5_matches_sqs_test_vectors() {
        let mut by_hand = Vec::new();
        by_hand.extend_from_slice(&[0, 0, 0, 10]);
        by_hand.extend_from_slice(b"SellerName");
        by_hand.extend_from_slice(&[0, 0, 0, 6]);
        by_hand.extend_from_slice(b"String");
        by_hand.push(1);
        by_hand.extend_from_slice(&[0, 0, 0, 13]);
        by_hand.extend_from_slice(b"Example Store");
        let expected = format!("{:x}", Md5::digest(&by_hand));
        assert_eq!(expected, "cd28f3b68aeee4b2eac9c66f2f694b58");

        let attributes =
            HashMap::from([("SellerName".to_owned(), string("String", "Example Store"))]);
        assert_eq!(md5_of_attributes(&attributes), expected);

        let number = HashMap::from([("timestamp".to_owned(), string("Number", "1493147359900"))]);
        assert_eq!(
            md5_of_attributes(&number),
            "235c5c510d26fb653d073faed50ae77c"
        );
    }

    #[test]
    fn attributes_md5_sorts_by_name_and_marks_binary() {
        let binary = pb::MessageAttributeValue {
            data_type: "Binary".into(),
            string_value: String::new(),
            binary_value: vec![0xde, 0xad].into(),
        };
        let attributes = HashMap::from([
            ("b".to_owned(), binary),
            ("a".to_owned(), string("String.json", "{}")),
        ]);
        let mut by_hand = Vec::new();
        by_hand.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 11]);
        by_hand.extend_from_slice(b"String.json");
        by_hand.extend_from_slice(&[1, 0, 0, 0, 2, b'{', b'}']);
        by_hand.extend_from_slice(&[0, 0, 0, 1, b'b', 0, 0, 0, 6]);
        by_hand.extend_from_slice(b"Binary");
        by_hand.extend_from_slice(&[2, 0, 0, 0, 2, 0xde, 0xad]);
        assert_eq!(
            md5_of_attributes(&attributes),
            format!("{:x}", Md5::digest(&by_hand))
        );
        assert_eq!(md5_of_attributes(&HashMap::new()), "");
    }

    #[test]
    fn content_deduplication_is_sha256_hex() {
        assert_eq!(
            content_deduplication_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
