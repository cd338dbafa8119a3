#![doc = include_str!("../README.md")]

mod admin;
mod config;
mod consumer;
mod error;
mod headers;
mod metadata;
mod producer;

use std::sync::{Arc, OnceLock};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use tributary_core::raw::BackendUrl;
use tributary_core::raw::EngineConfig;
use tributary_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerConfig, Producer, ProducerConfig, Result, async_trait,
};

pub use admin::KafkaAdmin;
pub use config::{Compression, Isolation, KafkaConfig, SaslMechanism, Secret, SecurityProtocol};
pub use consumer::KafkaConsumer;
pub use producer::KafkaProducer;

use crate::config::Role;

/// The Kafka backend: a handle on one cluster. Cheap to clone. Producers, consumers
/// and admin handles are created on demand; nothing connects before the first one.
#[derive(Clone, Debug)]
pub struct KafkaBackend {
    config: Arc<KafkaConfig>,
    admin: Arc<OnceLock<Arc<AdminClient<DefaultClientContext>>>>,
}

impl KafkaBackend {
    /// A backend for the cluster `config` names.
    ///
    /// # Errors
    /// `InvalidConfig` naming the bad setting.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config: Arc::new(config),
            admin: Arc::default(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// A producer as its concrete type (for [`KafkaProducer::fatal_recoveries`]).
    ///
    /// # Errors
    /// `InvalidConfig` if librdkafka refuses the settings.
    pub fn kafka_producer(&self, config: ProducerConfig) -> Result<KafkaProducer> {
        KafkaProducer::new(self.config.clone(), &config)
    }

    fn admin_client(&self) -> Result<Arc<AdminClient<DefaultClientContext>>> {
        if let Some(client) = self.admin.get() {
            return Ok(client.clone());
        }
        let client = Arc::new(
            self.config
                .client_config(Role::Admin, None)
                .create::<AdminClient<DefaultClientContext>>()
                .map_err(|e| error::convert("creating an admin client", e))?,
        );
        Ok(self.admin.get_or_init(|| client).clone())
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn engine(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::durable_log(self.config.max_record_bytes)
    }

    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        Ok(Box::new(KafkaProducer::new(self.config.clone(), &config)?))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(KafkaConsumer::new(self.config.clone(), config).await?))
    }

    async fn admin(&self) -> Result<Box<dyn Admin>> {
        Ok(Box::new(KafkaAdmin::new(
            self.config.clone(),
            self.admin_client()?,
        )))
    }
}

impl EngineConfig for KafkaConfig {
    const SCHEME: &'static str = "kafka";

    fn from_url(url: &BackendUrl) -> Result<Self> {
        KafkaConfig::from_url(url)
    }

    fn validate(&self) -> Result<()> {
        KafkaConfig::validate(self)
    }

    async fn connect(self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(KafkaBackend::new(self)?))
    }
}
