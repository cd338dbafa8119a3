//! Streams and their partitions, as created and described through [`Admin`](crate::Admin).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId};

/// The longest stream name any backend accepts (Kafka's topic limit; Kinesis allows 128).
pub const MAX_STREAM_NAME_LEN: usize = 249;

/// Checks a stream name: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
/// Names that pass can be used as a directory name and as a Kafka topic.
///
/// # Errors
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) saying what is wrong with the name.
pub fn validate_stream_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_STREAM_NAME_LEN {
        Some(format!(
            "it is {} characters long, the limit is {MAX_STREAM_NAME_LEN}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved".to_string())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("{c:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"))
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(Error::invalid_input(format!(
            "invalid stream name {name:?}: {why}"
        ))),
    }
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// The stream's name (see [`validate_stream_name`]).
    pub name: String,
    /// How many partitions; the backend's default when `None`.
    pub partitions: Option<u32>,
    /// How long records are kept; the backend's default when `None`.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Engine-specific settings (for example Kafka topic configs), passed through.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl StreamSpec {
    /// A stream with the backend's default partition count and retention.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            retention: None,
            options: BTreeMap::new(),
        }
    }

    /// Sets the partition count.
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Sets the retention.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Adds an engine-specific option.
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }
}

/// A range of hash keys a partition owns (Kinesis shards; 128-bit MD5 space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// First hash key, inclusive.
    pub start: u128,
    /// Last hash key, inclusive.
    pub end: u128,
}

/// Whether a partition still takes writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Takes writes.
    Open,
    /// Closed by a reshard: readable until its end, then its children take over.
    Closed,
}

/// One partition of a described stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Its id.
    pub id: PartitionId,
    /// The partitions it was split or merged from (Kinesis); empty otherwise.
    pub parents: Vec<PartitionId>,
    /// The hash keys it owns, where the engine routes by hash range.
    pub key_range: Option<KeyRange>,
    /// Open or closed.
    pub state: PartitionState,
    /// Offset of the oldest retained record, when the engine can tell and the partition
    /// is not empty.
    pub low: Option<Offset>,
    /// The offset the next record will get (Kafka's high watermark), when the engine can tell.
    pub high: Option<Offset>,
}

/// A described stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Its name.
    pub name: String,
    /// Its partitions, ordered by id.
    pub partitions: Vec<PartitionInfo>,
    /// How long records are kept, when the engine says.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl StreamInfo {
    /// The partitions that take writes.
    pub fn open_partitions(&self) -> impl Iterator<Item = &PartitionInfo> {
        self.partitions.iter().filter(|p| p.state == PartitionState::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        for good in ["a", "orders", "orders.v2", "A_b-c.9", &"x".repeat(249)] {
            validate_stream_name(good).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "reserved"),
            ("..", "reserved"),
            ("a/b", "'/'"),
            ("../etc", "'/'"),
            ("a b", "' '"),
            ("ünï", "'ü'"),
            ("nul\0", "'\\0'"),
            (&"x".repeat(250), "250 characters"),
        ] {
            let err = validate_stream_name(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
            assert!(err.message().contains(why), "{bad:?}: {err}");
        }
    }
}
