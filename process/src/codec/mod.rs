//! Typed payloads: how a processor turns record values into `T` and a typed producer
//! turns `T` into values.

#[cfg(feature = "avro")]
mod avro;
#[cfg(feature = "protobuf")]
mod protobuf;

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tributary_core::{BoxError, Bytes};

#[cfg(feature = "avro")]
pub use avro::Avro;
#[cfg(feature = "protobuf")]
pub use protobuf::Protobuf;

/// Encodes values of one type into record values and decodes them back.
pub trait Codec: Send + Sync + 'static {
    /// The type records carry.
    type Value: Send + 'static;

    /// The record value for `value`.
    ///
    /// # Errors
    /// Why `value` cannot be encoded (the caller names the record).
    fn encode(&self, value: &Self::Value) -> Result<Bytes, BoxError>;

    /// The value a record carries.
    ///
    /// # Errors
    /// Why `bytes` are not a valid value (the caller names the record).
    fn decode(&self, bytes: &Bytes) -> Result<Self::Value, BoxError>;
}

/// Record values as they are: no decoding, never an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec for Raw {
    type Value = Bytes;

    fn encode(&self, value: &Bytes) -> Result<Bytes, BoxError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &Bytes) -> Result<Bytes, BoxError> {
        Ok(bytes.clone())
    }
}

/// JSON with serde: values of `T` as UTF-8 JSON documents.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Json<T> {
    /// A JSON codec for `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for Json<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T> Codec for Json<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type Value = T;

    fn encode(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(serde_json::to_vec(value)?))
    }

    fn decode(&self, bytes: &Bytes) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        item: String,
    }

    #[test]
    fn json_round_trips_and_names_what_is_wrong_with_bad_bytes() {
        let codec = Json::<Order>::new();
        let order = Order {
            id: 7,
            item: "tea".into(),
        };
        let bytes = codec.encode(&order).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), order);
        let wrong = codec
            .decode(&Bytes::from_static(b"{\"id\": \"seven\"}"))
            .unwrap_err();
        assert!(wrong.to_string().contains("invalid type"), "{wrong}");
        let torn = codec
            .decode(&Bytes::from_static(b"{\"id\": 7, \"it"))
            .unwrap_err();
        assert!(torn.to_string().contains("EOF"), "{torn}");
    }

    #[test]
    fn raw_hands_the_bytes_over_as_they_are() {
        let bytes = Bytes::from_static(&[0xff, 0, 1]);
        assert_eq!(Raw.decode(&bytes).unwrap(), bytes);
        assert_eq!(Raw.encode(&bytes).unwrap(), bytes);
    }
}
