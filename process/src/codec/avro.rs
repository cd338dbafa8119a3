//! Apache Avro payloads on apache-avro, in Avro's single-object encoding: each value
//! starts with the marker `C3 01` and the schema's 8-byte Rabin fingerprint, then the
//! datum, so a reader knows a value written with another schema instead of misreading it.

use std::fmt;
use std::marker::PhantomData;

use apache_avro::Schema;
use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tributary_core::{BoxError, Bytes};

use super::Codec;

/// Apache Avro with serde: values of `T` written and read with one schema, in the
/// single-object encoding. A value whose header names another schema is refused
/// (`written with another schema`), as is one that is not a valid datum of the
/// schema or does not fit `T`.
///
/// Decoding allocates what a datum's lengths claim, up to apache-avro's allocation
/// limit (`apache_avro::util::max_allocation_bytes`, 512 MiB unless the application
/// sets another), one record at a time. With a recursive schema, decoding recurses
/// as deep as a value nests: keep such schemas to values from producers you trust.
pub struct Avro<T> {
    schema: Schema,
    header: Vec<u8>,
    value: PhantomData<fn() -> T>,
}

impl<T> Avro<T> {
    /// An Avro codec for `T` with `schema` (Avro's JSON form).
    ///
    /// # Errors
    /// `schema` is not a valid Avro schema (the parser's message).
    pub fn new(schema: &str) -> Result<Self, BoxError> {
        let schema = Schema::parse_str(schema)?;
        Ok(Self::with_schema(schema))
    }

    /// An Avro codec for `T` with a schema already parsed.
    pub fn with_schema(schema: Schema) -> Self {
        let header = RabinFingerprintHeader::from_schema(&schema).build_header();
        Self {
            schema,
            header,
            value: PhantomData,
        }
    }

    /// The schema values are written and read with.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

impl<T> Clone for Avro<T> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            header: self.header.clone(),
            value: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Avro<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Avro<{}>({})",
            std::any::type_name::<T>(),
            self.schema.canonical_form()
        )
    }
}

impl<T> Codec for Avro<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type Value = T;

    fn encode(&self, value: &T) -> Result<Bytes, BoxError> {
        let datum = GenericDatumWriter::builder(&self.schema)
            .build()?
            .write_ser_to_vec(value)?;
        let mut bytes = self.header.clone();
        bytes.extend(datum);
        Ok(Bytes::from(bytes))
    }

    fn decode(&self, bytes: &Bytes) -> Result<T, BoxError> {
        let Some(mut datum) = bytes.strip_prefix(self.header.as_slice()) else {
            return Err(
                if bytes.starts_with(&self.header[..2]) && bytes.len() >= self.header.len() {
                    "written with another schema (its fingerprint differs)".into()
                } else {
                    "not Avro's single-object encoding (no C3 01 header with a fingerprint)".into()
                },
            );
        };
        let value = GenericDatumReader::builder(&self.schema)
            .build()?
            .read_deser(&mut datum)?;
        if !datum.is_empty() {
            return Err(format!("{} bytes after the datum", datum.len()).into());
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "long"}, {"name": "item", "type": "string"}]}"#;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: i64,
        item: String,
    }

    #[test]
    fn avro_round_trips_in_the_single_object_encoding() {
        let codec = Avro::<Order>::new(SCHEMA).unwrap();
        let order = Order {
            id: 7,
            item: "tea".into(),
        };
        let bytes = codec.encode(&order).unwrap();
        assert_eq!(&bytes[..2], [0xc3, 0x01]);
        // The datum: long 7 zig-zag (14), string of 3 (6) "tea".
        assert_eq!(&bytes[10..], b"\x0e\x06tea");
        assert_eq!(codec.decode(&bytes).unwrap(), order);
    }

    #[test]
    fn avro_names_what_is_wrong_with_bad_bytes() {
        let codec = Avro::<Order>::new(SCHEMA).unwrap();
        let bytes = codec
            .encode(&Order {
                id: 1,
                item: "x".into(),
            })
            .unwrap();
        let torn = codec.decode(&bytes.slice(..bytes.len() - 1)).unwrap_err();
        assert!(torn.to_string().contains("failed to fill whole buffer"), "{torn}");
        let mut longer = bytes.to_vec();
        longer.push(0);
        let extra = codec.decode(&Bytes::from(longer)).unwrap_err();
        assert!(extra.to_string().contains("1 bytes after the datum"), "{extra}");
        let plain = codec.decode(&Bytes::from_static(b"{\"id\": 1}")).unwrap_err();
        assert!(plain.to_string().contains("single-object"), "{plain}");
        let other = Avro::<Order>::new(
            r#"{"type": "record", "name": "Other", "fields": [{"name": "id", "type": "long"}]}"#,
        )
        .unwrap();
        let foreign = other.decode(&bytes).unwrap_err();
        assert!(foreign.to_string().contains("another schema"), "{foreign}");
    }

    #[test]
    fn a_value_that_does_not_fit_the_schema_is_refused_on_encode() {
        #[derive(Serialize, Deserialize)]
        struct Wrong {
            id: String,
        }
        let codec = Avro::<Wrong>::new(SCHEMA).unwrap();
        assert!(codec.encode(&Wrong { id: "seven".into() }).is_err());
    }

    #[test]
    fn a_bad_schema_is_refused() {
        let err = Avro::<Order>::new(r#"{"type": "record"}"#).unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }
}
