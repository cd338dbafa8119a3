#![doc = include_str!("../README.md")]

mod client;
mod config;
mod mirror;

pub use client::Client;
pub use config::{Config, SchemeSupport, scheme_support};
pub use mirror::{MirrorOptions, MirrorProgress, mirror};
pub use tributary_core::*;
/// The Kafka backend's settings and handle (feature `kafka`).
#[cfg(feature = "kafka")]
pub use tributary_kafka::{KafkaBackend, KafkaConfig};
/// The Kinesis backend's settings and handle (feature `kinesis`).
#[cfg(feature = "kinesis")]
pub use tributary_kinesis::{KinesisBackend, KinesisConfig, KinesisPosition, LeaseStoreKind, ReaderKind};
/// The native engine's own settings and handle (feature `native`).
#[cfg(feature = "native")]
pub use tributary_native::{Durability, NativeBackend, NativeConfig};
