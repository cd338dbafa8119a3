//! What a backend can do, so portable code (and the conformance suite) can adapt.

use serde::{Deserialize, Serialize};

/// What a backend supports. Every flag is exercised by at least one conformance
/// scenario, which skips with the flag's name where it is false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`ConsumerMode::Group`](crate::ConsumerMode::Group) works: members split
    /// partitions and resume from the group's commits.
    pub consumer_groups: bool,
    /// Record headers are stored and delivered.
    pub headers: bool,
    /// Timestamps given on records are kept as the record's timestamp.
    pub event_timestamps: bool,
    /// [`StartFrom::Timestamp`](crate::StartFrom::Timestamp) is supported.
    pub seek_to_timestamp: bool,
    /// The partition count of an existing stream can change
    /// ([`Admin::set_partitions`](crate::Admin::set_partitions)).
    pub dynamic_partitions: bool,
    /// Acknowledged records survive closing and reopening the backend.
    pub durable: bool,
    /// The largest record (key + value + headers) accepted, where there is a limit.
    pub max_record_bytes: Option<usize>,
}

impl Capabilities {
    /// Every capability off and no record size limit; set the fields that apply.
    pub const fn none() -> Self {
        Self {
            consumer_groups: false,
            headers: false,
            event_timestamps: false,
            seek_to_timestamp: false,
            dynamic_partitions: false,
            durable: false,
            max_record_bytes: None,
        }
    }

    /// What a durable partitioned log with Kafka's feature set offers: groups,
    /// headers, event timestamps, time seeks, growing partition counts, durability,
    /// and records up to `max_record_bytes`.
    pub const fn durable_log(max_record_bytes: usize) -> Self {
        Self {
            consumer_groups: true,
            headers: true,
            event_timestamps: true,
            seek_to_timestamp: true,
            dynamic_partitions: true,
            durable: true,
            max_record_bytes: Some(max_record_bytes),
        }
    }
}
