//! Protocol Buffers payloads on prost: a value is one message, encoded without a length
//! prefix (what other languages' `SerializeToString` / `toByteArray` write).

use std::fmt;
use std::marker::PhantomData;

use tributary_core::{BoxError, Bytes};

use super::Codec;

/// Protocol Buffers with prost: values of a generated (or `#[derive(prost::Message)]`)
/// message type `T`, one message per record value. Decoding fails on bytes that are
/// not a valid `T` (a truncated field, a wrong wire type), not on unknown fields, as
/// Protocol Buffers readers do.
pub struct Protobuf<T>(PhantomData<fn() -> T>);

impl<T> Protobuf<T> {
    /// A Protocol Buffers codec for `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for Protobuf<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Protobuf<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Protobuf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protobuf<{}>", std::any::type_name::<T>())
    }
}

impl<T> Codec for Protobuf<T>
where
    T: prost::Message + Default + Send + 'static,
{
    type Value = T;

    fn encode(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(value.encode_to_vec()))
    }

    fn decode(&self, bytes: &Bytes) -> Result<T, BoxError> {
        Ok(T::decode(bytes.as_ref())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Order {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(string, tag = "2")]
        item: String,
    }

    #[test]
    fn protobuf_round_trips_and_names_what_is_wrong_with_bad_bytes() {
        let codec = Protobuf::<Order>::new();
        let order = Order {
            id: 7,
            item: "tea".into(),
        };
        let bytes = codec.encode(&order).unwrap();
        // Field 1 varint 7, field 2 length 3 "tea": the standard encoding.
        assert_eq!(bytes.as_ref(), b"\x08\x07\x12\x03tea");
        assert_eq!(codec.decode(&bytes).unwrap(), order);
        let torn = codec.decode(&bytes.slice(..bytes.len() - 1)).unwrap_err();
        assert!(torn.to_string().contains("failed to decode"), "{torn}");
        // Field 2 with the varint wire type.
        let wrong = codec.decode(&Bytes::from_static(b"\x10\x01")).unwrap_err();
        assert!(wrong.to_string().contains("wire type"), "{wrong}");
    }
}
