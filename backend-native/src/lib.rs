#![doc = include_str!("../README.md")]

mod blocking;
mod client;
mod coalesce;
mod codec;
mod config;
mod engine;
mod log;
mod mark;
mod offsets;
pub mod storage;

use std::collections::BTreeMap;
use std::sync::Arc;

use tributary_core::raw::BackendUrl;
use tributary_core::raw::EngineConfig;
use tributary_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerConfig, Producer, ProducerConfig, Result, async_trait,
};

pub use config::{Durability, NativeConfig, default_dir};
pub use log::{LostDurable, RecoveryReport};

/// The on-disk formats' decoders and encoder, public for the fuzz targets and the codec
/// benchmark; not for applications, and not covered by semver.
pub mod raw {
    /// The batch format of segment files.
    pub mod codec {
        pub use crate::codec::*;
    }
    pub use crate::log::check_index;
}
use storage::{DiskStorage, Storage};

/// The most partitions a native stream may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// The native engine. Cheap to clone; clones share the open data directory, which is
/// locked until [`close`](NativeBackend::close) or the last clone is dropped.
#[derive(Clone, Debug)]
pub struct NativeBackend {
    engine: Arc<engine::Engine>,
}

impl NativeBackend {
    /// Opens (creating if needed) the data directory `config.path`, recovering from an
    /// unclean shutdown.
    ///
    /// # Errors
    /// `InvalidConfig` for bad settings; `Unavailable` if another open engine holds the
    /// directory; `Io` or `Corruption` if it cannot be read.
    pub fn open(config: NativeConfig) -> Result<Self> {
        Self::open_with_storage(config, Arc::new(DiskStorage))
    }

    /// Opens the engine over another storage layer (for fault-injection tests).
    ///
    /// # Errors
    /// As [`NativeBackend::open`].
    pub fn open_with_storage(config: NativeConfig, storage: Arc<dyn Storage>) -> Result<Self> {
        Ok(Self {
            engine: engine::Engine::open(config, storage)?,
        })
    }

    /// Syncs everything, saves the indexes so the next open is fast, and releases the
    /// directory. Producers, consumers and admin handles still open get `Closed`.
    ///
    /// # Errors
    /// The first failed sync (the engine is closed anyway).
    pub fn close(&self) -> Result<()> {
        self.engine.close()
    }

    /// What recovery found at open, per `stream/partition` that needed any: bytes of
    /// torn tail cut off, bytes scanned, damage found in a log, synced records lost;
    /// and as `offsets`, bytes of the group commits log dropped as damaged (groups
    /// resume from the commits before them: records are delivered again, never
    /// skipped).
    pub fn recovery_report(&self) -> &BTreeMap<String, RecoveryReport> {
        &self.engine.recovery
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &NativeConfig {
        &self.engine.config
    }
}

#[async_trait]
impl Backend for NativeBackend {
    fn engine(&self) -> &'static str {
        "native"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::durable_log(self.engine.config.max_record_bytes)
    }

    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        self.engine.check_open()?;
        Ok(Box::new(client::NativeProducer::new(
            self.engine.clone(),
            &config,
        )?))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(
            client::NativeConsumer::new(self.engine.clone(), config).await?,
        ))
    }

    async fn admin(&self) -> Result<Box<dyn Admin>> {
        self.engine.check_open()?;
        Ok(Box::new(client::NativeAdmin {
            engine: self.engine.clone(),
        }))
    }
}

impl EngineConfig for NativeConfig {
    const SCHEME: &'static str = "native";

    fn from_url(url: &BackendUrl) -> Result<Self> {
        NativeConfig::from_url(url)
    }

    fn validate(&self) -> Result<()> {
        NativeConfig::validate(self)
    }

    async fn connect(self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(NativeBackend::open(self)?))
    }
}
