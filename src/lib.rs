#![doc = include_str!("../README.md")]

mod client;
mod config;
mod mirror;

pub use client::Client;
pub use config::{Config, SchemeSupport, scheme_support};
pub use mirror::{MirrorOptions, MirrorProgress, mirror};
pub use tributary_core::{
    Admin, Backend, BoxError, Bytes, Capabilities, Consumer, ConsumerConfig, ConsumerExt, ConsumerMode,
    Delivery, DeliveryHandle, Error, ErrorKind, Headers, KeyRange, Layer, Layered, MAX_STREAM_NAME_LEN,
    MemoryBackend, MemoryConfig, Offset, PartitionId, PartitionInfo, PartitionState, Producer,
    ProducerConfig, ProducerExt, Received, Record, Result, RetryLayer, RetryPolicy, SendError, StartFrom,
    StreamInfo, StreamSpec, Timestamp, async_trait,
};
#[cfg(feature = "mock")]
pub use tributary_core::{MockAdmin, MockBackend, MockConsumer, MockProducer};
/// The processor: a consumer group's records through async handlers (the
/// `tributary-process` crate).
pub use tributary_process as process;

/// What only engine implementers need (see docs/writing-an-engine.md); applications
/// should not have to name anything here.
pub mod raw {
    pub use tributary_core::raw::*;
}

/// The Kafka engine (`kafka://`, feature `kafka`): its settings, its handle and the
/// engine's own producer, consumer and admin, which expose rdkafka where the contract
/// stops.
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use tributary_kafka::*;
}

/// The Kinesis engine (`kinesis://`, feature `kinesis`): its settings, its handle,
/// lease stores and the engine's own producer, consumer and admin, which expose the AWS
/// SDK where the contract stops.
#[cfg(feature = "kinesis")]
pub mod kinesis {
    pub use tributary_kinesis::*;
}

/// The native embedded engine (`native://`, feature `native`): its settings, its
/// handle, durability modes, recovery reports and the storage seam used to inject
/// faults.
#[cfg(feature = "native")]
pub mod native {
    // By name: the crate's `raw` (its disk formats, for fuzzing) is not the facade's.
    pub use tributary_native::{
        Durability, LostDurable, MAX_PARTITIONS, NativeBackend, NativeConfig, RecoveryReport, default_dir,
        storage,
    };
}
