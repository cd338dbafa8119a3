//! What flows through a stream: records going in, received records coming out.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId, Timestamp};

/// Ordered record headers. Names may repeat (as in Kafka); order is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header, keeping any earlier one of the same name.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }

    /// The value of the last header named `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Every header in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes taken by names and values, counted toward a record's size.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(n, v)| (n.into(), v.into())).collect())
    }
}

impl IntoIterator for Headers {
    type Item = (String, Bytes);
    type IntoIter = std::vec::IntoIter<(String, Bytes)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A record to send. Build it with [`Record::new`] and the `with_*` methods.
///
/// ```
/// use tributary_core::{Record, Timestamp};
/// let record = Record::new("hello")
///     .with_key("user-42")
///     .with_header("trace-id", "abc")
///     .with_timestamp(Timestamp::from_millis(1_700_000_000_000));
/// assert_eq!(record.key.as_deref(), Some(&b"user-42"[..]));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Chooses the partition (same key ⇒ same partition while the count is unchanged).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers (see [`Capabilities::headers`](crate::Capabilities::headers)).
    pub headers: Headers,
    /// The event time; the engine's append time when `None`.
    pub timestamp: Option<Timestamp>,
    /// Sends to this partition instead of choosing one from the key.
    pub partition: Option<PartitionId>,
}

impl Record {
    /// A record with this value and nothing else.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }

    /// A record whose value is `value` as JSON.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when `value` cannot be serialized.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            Error::invalid_input(format!("cannot encode the record as JSON: {e}")).with_source(e)
        })?;
        Ok(Self::new(bytes))
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Sets the event time.
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Sends to this partition instead of choosing one from the key.
    pub fn to_partition(mut self, partition: PartitionId) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Bytes of key, value and headers: what record size limits count.
    pub fn encoded_len(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len) + self.value.len() + self.headers.encoded_len()
    }
}

/// What an acknowledged send returns for one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The partition the record went to.
    pub partition: PartitionId,
    /// Its position there.
    pub offset: Offset,
    /// The timestamp the engine stored, when it reports one.
    pub timestamp: Option<Timestamp>,
}

/// A record read from a stream. Owns its data (cheaply shared [`Bytes`]): it can be
/// sent to other tasks and outlive the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The stream it was read from.
    pub stream: std::sync::Arc<str>,
    /// Its partition.
    pub partition: PartitionId,
    /// Its position in the partition.
    pub offset: Offset,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its payload.
    pub value: Bytes,
    /// Its headers.
    pub headers: Headers,
    /// Its timestamp, when the engine keeps one.
    pub timestamp: Option<Timestamp>,
}

impl Received {
    /// Decodes the value as JSON.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the record when the value is not valid JSON for `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.value).map_err(|e| {
            Error::invalid_input(format!(
                "record {}/{}@{} is not the expected JSON: {e}",
                self.stream, self.partition, self.offset
            ))
            .with_source(e)
        })
    }
}

/// Where a consumer starts reading a partition (or where [`seek`](crate::Consumer::seek) moves it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained record. The default: nothing already in the stream is skipped.
    #[default]
    Earliest,
    /// Only records appended from now on.
    Latest,
    /// The first record whose offset is at least this one.
    At(Offset),
    /// The first record whose offset is greater than this one.
    After(Offset),
    /// The first record whose timestamp is at least this one.
    Timestamp(Timestamp),
}
