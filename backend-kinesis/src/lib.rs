#![doc = include_str!("../README.md")]

mod admin;
mod config;
mod consumer;
mod coordinator;
mod dynamo;
mod envelope;
mod error;
mod fanout;
mod keeper;
mod keys;
mod kpl;
mod leases;
mod polling;
mod position;
mod producer;
mod reader;
mod shards;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use tributary_core::raw::BackendUrl;
use tributary_core::raw::EngineConfig;
use tributary_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerConfig, Error, Producer, ProducerConfig, Result,
    async_trait,
};

pub use admin::KinesisAdmin;
pub use config::{KINESIS_MAX_RECORD_BYTES, KinesisConfig, LeaseStoreKind, ReaderKind};
pub use consumer::KinesisConsumer;
pub use dynamo::DynamoLeaseStore;
pub use leases::{Checkpoint, Lease, LeaseChange, LeaseStore, MemoryLeaseStore};
pub use position::KinesisPosition;
pub use producer::{KinesisProducer, ProducerStats};

/// The Kinesis backend: a handle on one AWS account and region (or an emulator). Cheap
/// to clone. Producers, consumers and admin handles are made on demand.
#[derive(Clone, Debug)]
pub struct KinesisBackend {
    shared: Arc<Shared>,
}

/// What every producer, consumer and admin handle of one backend uses.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: KinesisConfig,
    /// Standard retries and per-attempt timeouts: admin calls and GetRecords.
    pub(crate) client: Client,
    /// No SDK retries: producers retry failed entries themselves, with their own backoff.
    pub(crate) producer_client: Client,
    /// No attempt timeout: SubscribeToShard streams events for minutes.
    pub(crate) streaming_client: Client,
    /// For lease tables (made without connecting; used only by group members).
    pub(crate) dynamodb: aws_sdk_dynamodb::Client,
}

/// In-memory lease stores of this process, by Kinesis endpoint, region and table: the
/// group members of every backend on one stream share them, so a backend made again
/// in the same process finds its group's checkpoints.
static MEMORY_LEASES: OnceLock<Mutex<HashMap<String, Arc<MemoryLeaseStore>>>> = OnceLock::new();

impl Shared {
    /// The in-memory lease store named `table`, made on first use.
    pub(crate) fn memory_leases(&self, table: &str) -> Arc<MemoryLeaseStore> {
        let key = format!(
            "{}|{}|{table}",
            self.config.endpoint.as_deref().unwrap_or(""),
            self.client.config().region().map(|r| r.as_ref()).unwrap_or("")
        );
        let mut stores = match MEMORY_LEASES.get_or_init(Mutex::default).lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        stores.entry(key).or_default().clone()
    }
}

impl KinesisBackend {
    /// A backend with credentials (and the region, unless `config` names one) from the
    /// default AWS chain.
    ///
    /// # Errors
    /// `InvalidConfig` for bad settings or when no region is configured anywhere.
    /// Cancel safe.
    pub async fn new(config: KinesisConfig) -> Result<Self> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        let sdk = loader.load().await;
        Self::with_sdk_config(config, &sdk)
    }

    /// A backend on an SDK config built by the application (its own credentials
    /// provider, HTTP client or interceptors). `config.region` and `config.endpoint`,
    /// when set, override the SDK config's.
    ///
    /// # Errors
    /// `InvalidConfig` for bad settings or when neither names a region.
    pub fn with_sdk_config(config: KinesisConfig, sdk: &SdkConfig) -> Result<Self> {
        config.validate()?;
        if config.region.is_none() && sdk.region().is_none() {
            return Err(Error::invalid_config(
                "kinesis:// needs an AWS region: set region= in the URL or config, or AWS_REGION",
            ));
        }
        let client = build_client(&config, sdk, true, true);
        let producer_client = build_client(&config, sdk, false, true);
        let streaming_client = build_client(&config, sdk, true, false);
        let dynamodb = build_dynamodb_client(&config, sdk);
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                client,
                producer_client,
                streaming_client,
                dynamodb,
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &KinesisConfig {
        &self.shared.config
    }

    /// A producer as its concrete type (for [`KinesisProducer::stats`]).
    pub fn kinesis_producer(&self) -> KinesisProducer {
        KinesisProducer::new(self.shared.clone(), KinesisProducer::default_settings())
    }

    /// A producer with `config`'s settings, as its concrete type.
    ///
    /// # Errors
    /// `InvalidConfig` for bad batching settings.
    pub fn kinesis_producer_with(&self, config: &ProducerConfig) -> Result<KinesisProducer> {
        let settings = KinesisProducer::default_settings().with_config(config)?;
        Ok(KinesisProducer::new(self.shared.clone(), settings))
    }

    /// A consumer as its concrete type (for [`KinesisConsumer::lag`]).
    ///
    /// # Errors
    /// As [`Backend::consumer`]. Cancel safe.
    pub async fn kinesis_consumer(&self, config: ConsumerConfig) -> Result<KinesisConsumer> {
        KinesisConsumer::new(self.shared.clone(), config).await
    }

    /// An admin handle as its concrete type (for split and merge).
    pub fn kinesis_admin(&self) -> KinesisAdmin {
        KinesisAdmin::new(self.shared.clone())
    }

    /// The lease store the members of `group` reading `stream` use (as configured:
    /// DynamoDB or this process's memory), for inspecting or repairing leases.
    ///
    /// # Errors
    /// `InvalidInput` for a bad stream or group name.
    pub fn lease_store(&self, stream: &str, group: &str) -> Result<Arc<dyn LeaseStore>> {
        consumer::lease_store(&self.shared, stream, group)
    }

    /// The SDK client the backend uses, for calls Tributary does not wrap.
    pub fn sdk_client(&self) -> &Client {
        &self.shared.client
    }
}

fn build_client(config: &KinesisConfig, sdk: &SdkConfig, retries: bool, attempt_timeout: bool) -> Client {
    let mut builder = aws_sdk_kinesis::config::Builder::from(sdk);
    if sdk.behavior_version().is_none() {
        builder = builder.behavior_version(BehaviorVersion::latest());
    }
    if let Some(region) = &config.region {
        builder = builder.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    builder = builder.retry_config(if retries {
        RetryConfig::standard().with_max_attempts(3)
    } else {
        RetryConfig::disabled()
    });
    let mut timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(10));
    if attempt_timeout {
        timeouts = timeouts.operation_attempt_timeout(config.request_timeout);
    }
    builder = builder.timeout_config(timeouts.build());
    Client::from_conf(builder.build())
}

fn build_dynamodb_client(config: &KinesisConfig, sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let mut builder = aws_sdk_dynamodb::config::Builder::from(sdk);
    if sdk.behavior_version().is_none() {
        builder = builder.behavior_version(BehaviorVersion::latest());
    }
    if let Some(region) = &config.region {
        builder = builder.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.dynamodb_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    // A lease write that is late is worse than one that fails: the member retries at
    // its next renewal, and a slow attempt must not outlive the lease.
    let attempt = config.request_timeout.min(config.failover / 3);
    builder = builder
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10).min(attempt))
                .operation_attempt_timeout(attempt)
                .build(),
        );
    aws_sdk_dynamodb::Client::from_conf(builder.build())
}

#[async_trait]
impl Backend for KinesisBackend {
    fn engine(&self) -> &'static str {
        "kinesis"
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::none();
        caps.headers = self.shared.config.headers_envelope;
        caps.event_timestamps = self.shared.config.headers_envelope;
        caps.seek_to_timestamp = true;
        caps.dynamic_partitions = true;
        caps.durable = true;
        caps.consumer_groups = true;
        caps.max_record_bytes = Some(self.shared.config.max_record_bytes);
        caps
    }

    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.kinesis_producer_with(&config)?))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.kinesis_consumer(config).await?))
    }

    async fn admin(&self) -> Result<Box<dyn Admin>> {
        Ok(Box::new(self.kinesis_admin()))
    }
}

/// Checks a stream name against Kinesis's rules (1 to 128 of `A-Z a-z 0-9 _ . -`) and
/// Tributary's (not `.` or `..`).
pub(crate) fn validate_stream_name(name: &str) -> Result<()> {
    tributary_core::raw::validate_stream_name(name)?;
    if name.len() > 128 {
        return Err(Error::invalid_input(format!(
            "invalid stream name {name:?}: Kinesis stream names are at most 128 characters"
        )));
    }
    Ok(())
}

impl EngineConfig for KinesisConfig {
    const SCHEME: &'static str = "kinesis";

    fn from_url(url: &BackendUrl) -> Result<Self> {
        KinesisConfig::from_url(url)
    }

    fn validate(&self) -> Result<()> {
        KinesisConfig::validate(self)
    }

    /// Kinesis records have no headers: keeping them means the headers envelope.
    fn keep_headers(&mut self) {
        self.headers_envelope = true;
    }

    async fn connect(self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(KinesisBackend::new(self).await?))
    }
}
