#![doc = include_str!("../README.md")]

mod ack;
mod backoff;
mod broadcast;
mod capabilities;
mod client;
mod context;
mod deadline;
mod delivery;
mod engine;
mod error;
mod ext;
mod group;
mod id;
mod layer;
mod memory;
mod partitioner;
mod pipeline;
mod record;
mod routing;
mod send;
mod stream;
mod url;

pub use capabilities::Capabilities;
pub use client::{Admin, Backend, Consumer, ConsumerConfig, ConsumerMode, Producer, ProducerConfig};
#[cfg(feature = "mock")]
pub use client::{MockAdmin, MockBackend, MockConsumer, MockProducer};
pub use delivery::DeliveryHandle;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use ext::{ConsumerExt, ProducerExt};
pub use id::{Offset, PartitionId, Timestamp};
pub use layer::{Layer, Layered, RetryLayer, RetryPolicy};
pub use memory::{MemoryBackend, MemoryConfig};
pub use record::{Delivery, Headers, Received, Record, StartFrom};
pub use send::SendError;
pub use stream::{KeyRange, MAX_STREAM_NAME_LEN, PartitionInfo, PartitionState, StreamInfo, StreamSpec};

/// What only engine implementers need, kept apart from the applications' API so that
/// each audience sees its own names (see docs/writing-an-engine.md): the trait an
/// engine's settings implement so the facade can list the engine, the ack tracker
/// behind low-watermark commits, the group protocol the embedded engines share,
/// URL-to-settings helpers, Kafka's key partitioner, and the name validators every
/// engine applies.
pub mod raw {
    pub use crate::ack::AckTracker;
    pub use crate::backoff::{backoff, backoff_ceiling};
    pub use crate::broadcast::{GroupOperation, group_only};
    pub use crate::client::validate_group_name;
    pub use crate::context::Named;
    pub use crate::deadline::deadline_after;
    pub use crate::delivery::DeliverySender;
    pub use crate::engine::EngineConfig;
    /// Consumer groups coordinated inside one process, for engines without a broker to
    /// do it: membership, safe handoff, commit on revoke, fencing, members' cursors.
    pub mod group {
        pub use crate::group::*;
    }
    pub use crate::partitioner::{murmur2, partition_for_key};
    pub use crate::pipeline::{Pipeline, PipelineSettings, RECORD_OVERHEAD};
    pub use crate::routing::{Routes, route_batch};
    pub use crate::send::SendTally;
    pub use crate::stream::validate_stream_name;
    pub use crate::url::{BackendUrl, describe_config_error, query_config, redact_query};
}

/// Re-exported so backends and applications name the same versions.
pub use async_trait::async_trait;
pub use bytes::Bytes;
