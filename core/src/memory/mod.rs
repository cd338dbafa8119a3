//! The in-memory engine (`memory://`): the reference implementation of every semantic
//! of the contract — partitions, keyed routing with Kafka's murmur2, headers,
//! timestamps, broadcast readers, groups that rebalance as members join, leave or are
//! dropped, low-watermark commits, seeks by offset and time, and admin.
//!
//! Nothing is persisted: records live until their stream is deleted or the backend is
//! dropped. Each [`MemoryBackend::new`] is an independent engine; clone the backend (or
//! the facade's client) to share one.

mod admin;
mod consumer;
mod producer;
mod state;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::capabilities::Capabilities;
use crate::client::{Admin, Backend, Consumer, ConsumerConfig, Producer, ProducerConfig};
use crate::engine::EngineConfig;
use crate::error::{Error, Result};
use crate::group::MAX_SESSION_TIMEOUT;
use crate::url::BackendUrl;

use state::Engine;

/// Settings of the memory engine, from `memory://?key=value&...` or a config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Partitions of a stream created without a count (default 1).
    pub partitions: u32,
    /// The largest record accepted, key + value + headers (default 1 MiB).
    pub max_record_bytes: usize,
    /// A group member that has not polled for this long loses its partitions to the
    /// other members (default 30 s), like Kafka's poll interval limit.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            max_record_bytes: 1024 * 1024,
            session_timeout: Duration::from_secs(30),
        }
    }
}

impl MemoryConfig {
    /// Reads `memory://?partitions=4&max_record_bytes=1000&session_timeout=10s`.
    ///
    /// # Errors
    /// `InvalidConfig` for another scheme, a target after `memory://`, or a bad or
    /// unknown key (the message lists the valid keys).
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        url.expect_scheme(Self::SCHEME)?;
        if !url.target.is_empty() {
            return Err(Error::invalid_config(format!(
                "memory:// takes no host or path (got {:?}); options go in the query, as memory://?partitions=4",
                url.target
            )));
        }
        let config: Self = url.query_config()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// `InvalidConfig` naming the bad key.
    pub fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > state::MAX_PARTITIONS {
            return Err(Error::invalid_config(format!(
                "memory:// partitions must be 1 to {}, got {}",
                state::MAX_PARTITIONS,
                self.partitions
            )));
        }
        if self.max_record_bytes == 0 {
            return Err(Error::invalid_config(
                "memory:// max_record_bytes must be at least 1",
            ));
        }
        if self.session_timeout.is_zero() || self.session_timeout > MAX_SESSION_TIMEOUT {
            return Err(Error::invalid_config(
                "memory:// session_timeout must be above zero and at most one day",
            ));
        }
        Ok(())
    }
}

impl EngineConfig for MemoryConfig {
    const SCHEME: &'static str = "memory";

    fn from_url(url: &BackendUrl) -> Result<Self> {
        MemoryConfig::from_url(url)
    }

    fn validate(&self) -> Result<()> {
        MemoryConfig::validate(self)
    }

    async fn connect(self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(MemoryBackend::new(self)?))
    }
}

/// The in-memory engine. Cheap to clone; clones share the same streams.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    engine: Arc<Engine>,
}

impl MemoryBackend {
    /// A new, empty engine.
    ///
    /// # Errors
    /// `InvalidConfig` if `config` does not validate.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            engine: Arc::new(Engine::new(config)),
        })
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            engine: Arc::new(Engine::new(MemoryConfig::default())),
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn engine(&self) -> &'static str {
        "memory"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            consumer_groups: true,
            headers: true,
            event_timestamps: true,
            seek_to_timestamp: true,
            dynamic_partitions: true,
            durable: false,
            max_record_bytes: Some(self.engine.config.max_record_bytes),
        }
    }

    async fn producer(&self, _config: ProducerConfig) -> Result<Box<dyn Producer>> {
        Ok(Box::new(producer::MemoryProducer::new(self.engine.clone())))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(consumer::MemoryConsumer::new(
            self.engine.clone(),
            config,
        )?))
    }

    async fn admin(&self) -> Result<Box<dyn Admin>> {
        Ok(Box::new(admin::MemoryAdmin::new(self.engine.clone())))
    }
}
