//! Record keys as Kinesis partition keys, and partition keys as hash keys.
//!
//! A partition key is 1 to 256 Unicode characters. A record key that is such a string
//! is used unchanged, so other Kinesis clients agree on it. Two private-use characters
//! mark what Kinesis cannot hold directly: U+E000 starts the random key of a record
//! without a key (read back as no key), U+E001 starts the base64 text of a key that is
//! not 1 to 256 characters of UTF-8 (read back as the original bytes).

use bytes::Bytes;
use md5::{Digest, Md5};

/// Kinesis's longest partition key, in characters.
pub(crate) const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Starts the random partition key of a record that has no key.
const KEYLESS: char = '\u{E000}';
/// Starts the base64 form of a key that cannot be a partition key as it is.
const ENCODED: char = '\u{E001}';
/// The longest key the base64 form can hold: 255 characters of base64.
pub(crate) const MAX_ENCODED_KEY_BYTES: usize = 189;

/// The partition key for a record key.
///
/// # Errors
/// A message when the key is neither a usable partition key nor short enough to encode.
pub(crate) fn partition_key(key: Option<&Bytes>) -> Result<String, String> {
    let Some(key) = key else {
        return Ok(format!("{KEYLESS}{:016x}", fastrand::u64(..)));
    };
    if let Ok(text) = std::str::from_utf8(key) {
        let chars = text.chars().count();
        let reserved = text.starts_with([KEYLESS, ENCODED]);
        if (1..=MAX_PARTITION_KEY_CHARS).contains(&chars) && !reserved {
            return Ok(text.to_string());
        }
    }
    if key.len() > MAX_ENCODED_KEY_BYTES {
        return Err(format!(
            "a key of {} bytes cannot be a Kinesis partition key: keys that are not 1 to 256 \
             characters of UTF-8 are stored base64-encoded, which holds at most {MAX_ENCODED_KEY_BYTES} bytes",
            key.len()
        ));
    }
    Ok(format!("{ENCODED}{}", aws_smithy_types::base64::encode(key)))
}

/// The record key a partition key stands for.
pub(crate) fn record_key(partition_key: &str) -> Option<Bytes> {
    if partition_key.starts_with(KEYLESS) {
        return None;
    }
    if let Some(encoded) = partition_key.strip_prefix(ENCODED)
        && let Ok(key) = aws_smithy_types::base64::decode(encoded)
    {
        return Some(Bytes::from(key));
    }
    Some(Bytes::copy_from_slice(partition_key.as_bytes()))
}

/// Kinesis's hash key of a partition key: the MD5 of its UTF-8 bytes as a 128-bit
/// big-endian number.
pub(crate) fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip() -> Result<(), String> {
        let cases: Vec<Option<Bytes>> = vec![
            None,
            Some(Bytes::from_static(b"order-17")),
            Some(Bytes::from_static("ünïcödé 🎉".as_bytes())),
            Some(Bytes::from_static(b"")),
            Some(Bytes::from_static(&[0, 255, 10, 13])),
            Some(Bytes::from("k".repeat(256))),
            Some(Bytes::from("ü".repeat(256))),
            Some(Bytes::from(vec![7u8; MAX_ENCODED_KEY_BYTES])),
            Some(Bytes::from(format!("{KEYLESS}looks private"))),
        ];
        for key in cases {
            let pk = partition_key(key.as_ref())?;
            let chars = pk.chars().count();
            assert!(
                (1..=MAX_PARTITION_KEY_CHARS).contains(&chars),
                "{key:?}: {chars} characters"
            );
            assert_eq!(record_key(&pk), key, "{pk:?}");
        }
        Ok(())
    }

    #[test]
    fn plain_keys_are_used_unchanged_and_keyless_keys_are_random() -> Result<(), String> {
        assert_eq!(partition_key(Some(&Bytes::from_static(b"user-1")))?, "user-1");
        let a = partition_key(None)?;
        let b = partition_key(None)?;
        assert_ne!(a, b, "keyless records spread over shards");
        Ok(())
    }

    #[test]
    fn too_long_binary_key_is_refused() {
        let err =
            partition_key(Some(&Bytes::from(vec![0xffu8; MAX_ENCODED_KEY_BYTES + 1]))).expect_err("too long");
        assert!(err.contains("190 bytes"), "{err}");
    }

    #[test]
    fn hash_key_is_md5_big_endian() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }
}
