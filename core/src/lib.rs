#![doc = include_str!("../README.md")]

mod ack;
mod capabilities;
mod client;
mod engine;
mod error;
mod ext;
pub mod group;
mod id;
mod layer;
pub mod memory;
mod partitioner;
mod record;
mod send;
mod stream;
mod url;

pub use ack::AckTracker;
pub use capabilities::Capabilities;
pub use client::{
    Admin, Backend, Consumer, ConsumerConfig, ConsumerMode, Producer, ProducerConfig, validate_group_name,
};
#[cfg(feature = "mock")]
pub use client::{MockAdmin, MockBackend, MockConsumer, MockProducer};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use ext::{ConsumerExt, ProducerExt};
pub use id::{Offset, PartitionId, Timestamp};
pub use layer::{Layer, Layered, RetryLayer, RetryPolicy};
pub use memory::{MemoryBackend, MemoryConfig};
pub use partitioner::{murmur2, partition_for_key};
pub use record::{Delivery, Headers, Received, Record, StartFrom};
pub use send::SendError;
pub use stream::{
    KeyRange, MAX_STREAM_NAME_LEN, PartitionInfo, PartitionState, StreamInfo, StreamSpec,
    validate_stream_name,
};
pub use url::{BackendUrl, describe_config_error, query_config, redact_query};

/// The instant `timeout` from now, or a far-future instant for timeouts too large to
/// add (`Duration::MAX` means "wait as long as it takes").
pub fn deadline_after(timeout: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(100 * 365 * 24 * 3600))
}

/// What only engine implementers need: the trait an engine's settings implement so
/// the facade can list the engine (see docs/writing-an-engine.md).
pub mod raw {
    pub use crate::engine::EngineConfig;
}

/// Re-exported so backends and applications name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
