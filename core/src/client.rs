//! The contract traits every backend implements.
//!
//! They are dyn-safe and minimal: conveniences live in the blanket
//! [`ProducerExt`](crate::ProducerExt) and [`ConsumerExt`](crate::ConsumerExt) traits so
//! that wrappers (layers, mocks) never silently lose a backend's own behaviour.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::capabilities::Capabilities;
use crate::delivery::DeliveryHandle;
use crate::error::Result;
use crate::id::{Offset, PartitionId};
use crate::record::{Delivery, Received, Record, StartFrom};
use crate::send::SendError;
use crate::stream::{StreamInfo, StreamSpec};

/// An engine: hands out producers, consumers and an admin handle.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The engine's name, as URLs spell it (`kafka`, `kinesis`, `native`, `memory`):
    /// what tools built on the contract (the processor's dead-letter headers, logs)
    /// name it by. `custom` unless the backend says otherwise. A `MockBackend` (feature
    /// `mock`) answers only as told: `expect_engine().return_const("memory")`, when a
    /// processor or `Client::engine` asks.
    fn engine(&self) -> &'static str {
        "custom"
    }

    /// A producer. Share it behind an `Arc`: every method takes `&self`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) for a bad config,
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) if the backend is closed, or a
    /// connection error. Cancel safe: dropping the future creates nothing.
    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>>;

    /// A consumer of one stream, in the mode of `config`. A group member joins its
    /// group here.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) if the stream does not
    /// exist, [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a bad
    /// stream or group name, [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// for a group on a backend without groups. Cancel safe.
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>>;

    /// An admin handle.
    ///
    /// # Errors
    /// A connection error. Cancel safe.
    async fn admin(&self) -> Result<Box<dyn Admin>>;
}

/// Sends records. Every method takes `&self`: share one producer behind an `Arc`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Producer: Send + Sync {
    /// Sends a batch and returns one [`Delivery`] per record, in order, once the engine
    /// acknowledged every record. Records with the same key land in the same partition
    /// in the order given.
    ///
    /// # Errors
    /// A [`SendError`] with the deliveries of what was confirmed and the records that
    /// were not (retry them without having kept copies): `NotFound` for a missing
    /// stream, `InvalidInput` for a bad record (nothing of the batch is sent),
    /// `Throttled`/`Timeout`/`Unavailable` (retryable), `Indeterminate` when records
    /// may have been persisted, `Closed` after [`close`](Producer::close).
    ///
    /// Not cancel safe: dropping the future leaves it unknown which records were sent.
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError>;

    /// Hands one record over and returns as soon as it is queued, waiting only for
    /// room in the producer's buffer (its `buffer_bytes`): the producer batches records
    /// handed over by every caller (its `linger` and batch sizes) and sends them in the
    /// background. The [`DeliveryHandle`] resolves to the record's delivery or to the
    /// error that ended it; await it, poll it or drop it. Records with the same key
    /// handed over one after another land in the same partition in that order.
    ///
    /// Dropping the producer without [`close`](Producer::close) still sends what was
    /// handed over, and resolves its handles, as long as the runtime runs.
    ///
    /// # Errors
    /// `Closed` after [`close`](Producer::close), `InvalidInput` for a record or stream
    /// name the producer can refuse at once (other failures, such as `NotFound` for a
    /// missing stream, reach the record's handle), `Unsupported` outside a tokio
    /// runtime. Cancel safe: dropped before it returns, it has queued nothing.
    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle>;

    /// Waits until every send started and every record handed over before this call
    /// has completed (failures of handed-over records reach their handles).
    ///
    /// # Errors
    /// `Closed`, or the engine's error. Cancel safe: dropping it stops waiting only.
    async fn flush(&self) -> Result<()>;

    /// Refuses further sends and records with `Closed`, then flushes. Idempotent.
    ///
    /// # Errors
    /// As [`flush`](Producer::flush). Cancel safe once the producer is marked closed.
    async fn close(&self) -> Result<()>;
}

/// Reads one stream: one cursor per partition it is assigned. Needs `&mut self`.
///
/// Records are acknowledged with [`ack`](Consumer::ack) in any order; a
/// [`commit`](Consumer::commit) advances each partition's committed position over the
/// contiguous acknowledged prefix only (low watermark), so a restart never skips an
/// unacknowledged record.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Consumer: Send {
    /// Returns up to `max` records, waiting up to `timeout` for the first one; an empty
    /// vector when none arrived in time. Records of one partition come in offset order.
    /// In a group, handles rebalances first (revoked partitions are committed up to
    /// their acknowledged prefix, then released).
    ///
    /// # Errors
    /// `Closed` after close, `Unavailable`/`Timeout` for a lost connection,
    /// `NotFound` if the stream was deleted, `Corruption` for damaged data.
    ///
    /// Cancel safe: a dropped poll loses no record; the next poll returns it.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>>;

    /// Marks one delivered record as processed. Cheap and local: nothing is sent until
    /// [`commit`](Consumer::commit).
    ///
    /// # Errors
    /// `NotAssigned` if the partition is not assigned to this consumer (any more),
    /// `InvalidInput` if that offset was not delivered by this consumer,
    /// `Unsupported` for a broadcast consumer (it has no group to commit to).
    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()>;

    /// Commits, for every assigned partition, the position after its contiguous
    /// acknowledged prefix. A committed position never moves backwards.
    ///
    /// # Errors
    /// `Unsupported` for a broadcast consumer, `Closed` after close, the engine's
    /// error (then nothing is lost: the same acks are committed by the next commit).
    /// Cancel safe: a dropped commit may or may not have been applied; acks are kept.
    async fn commit(&mut self) -> Result<()>;

    /// Moves the cursor of an assigned partition. Acknowledgements of that partition
    /// not yet committed are dropped.
    ///
    /// # Errors
    /// `NotAssigned` for a partition not assigned here, `Unsupported` for
    /// `StartFrom::Timestamp` where the engine has no time index, `Closed`.
    /// Cancel safe.
    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()>;

    /// The partitions this consumer reads now, ordered.
    fn assignment(&self) -> Vec<PartitionId>;

    /// Commits what is acknowledged (groups), leaves the group so its partitions move
    /// to the other members at once, and refuses further calls with `Closed`.
    /// Idempotent. Dropping a consumer without closing it acts like a crash: nothing is
    /// committed and its partitions move after the engine notices.
    ///
    /// # Errors
    /// The commit's error (the consumer is closed anyway). Cancel safe.
    async fn close(&mut self) -> Result<()>;
}

/// Creates, deletes and describes streams.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Admin: Send + Sync {
    /// Creates a stream; returns once it accepts writes.
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidInput` for a bad name or partition count. Not cancel
    /// safe: the stream may have been created.
    async fn create_stream(&self, spec: &StreamSpec) -> Result<()>;

    /// Deletes a stream and its records.
    ///
    /// # Errors
    /// `NotFound`. Not cancel safe.
    async fn delete_stream(&self, name: &str) -> Result<()>;

    /// Describes a stream's partitions.
    ///
    /// # Errors
    /// `NotFound`. Cancel safe.
    async fn describe_stream(&self, name: &str) -> Result<StreamInfo>;

    /// Lists stream names, sorted.
    ///
    /// # Errors
    /// A connection error. Cancel safe.
    async fn list_streams(&self) -> Result<Vec<String>>;

    /// Changes the number of open partitions (Kafka adds partitions; Kinesis reshards).
    /// Consumers pick the change up without restarting.
    ///
    /// # Errors
    /// `NotFound`, `Unsupported` where the engine cannot, `InvalidInput` for a count
    /// the engine refuses (Kafka cannot shrink). Not cancel safe.
    async fn set_partitions(&self, name: &str, count: u32) -> Result<()>;
}

/// How a consumer shares a stream with other consumers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerMode {
    /// An independent reader of every partition from its start position. Keeps no
    /// shared state; many broadcast readers each see every record.
    Broadcast,
    /// A member of the named group: the group's live members split the partitions,
    /// and each partition resumes from the group's committed position. Every group
    /// sees every record.
    Group(String),
}

/// Settings of a consumer that every backend understands. Engine-specific settings
/// are in the backend's own config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The stream to read.
    pub stream: String,
    /// Broadcast or group member.
    pub mode: ConsumerMode,
    /// Where to start a partition that has no committed position (default: earliest).
    pub start: StartFrom,
}

impl ConsumerConfig {
    /// An independent reader of `stream`, from the earliest record.
    pub fn broadcast(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            mode: ConsumerMode::Broadcast,
            start: StartFrom::Earliest,
        }
    }

    /// A member of `group` reading `stream`; partitions without commits start at the
    /// earliest record.
    pub fn group(stream: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            mode: ConsumerMode::Group(group.into()),
            start: StartFrom::Earliest,
        }
    }

    /// Sets where partitions without a committed position start.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// The group name, for a group member.
    pub fn group_id(&self) -> Option<&str> {
        match &self.mode {
            ConsumerMode::Group(g) => Some(g),
            ConsumerMode::Broadcast => None,
        }
    }
}

/// Settings of a producer that every backend understands. The batching settings apply
/// to records handed over with [`Producer::enqueue`]; unset, each engine uses its own
/// defaults (listed in its config's documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// A name for this producer in the engine's logs and metrics, where it has any.
    #[serde(default)]
    pub client_id: Option<String>,
    /// How long a handed-over record may wait for others to fill its batch (Kafka's
    /// `linger.ms`, the KPL's `RecordMaxBufferedTime`).
    #[serde(default, with = "humantime_serde")]
    pub linger: Option<Duration>,
    /// Records in one batch, at most (Kafka's `batch.num.messages`).
    #[serde(default)]
    pub batch_records: Option<usize>,
    /// Bytes in one batch, at most (Kafka's `batch.size`).
    #[serde(default)]
    pub batch_bytes: Option<usize>,
    /// Bytes handed over and not yet confirmed, at most: beyond it `enqueue` waits
    /// (Kafka's `buffer.memory`, librdkafka's `queue.buffering.max.kbytes`).
    #[serde(default)]
    pub buffer_bytes: Option<usize>,
}

impl ProducerConfig {
    /// Sets the client id.
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Sets how long a handed-over record may wait for others to fill its batch.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// Sets the most records in one batch.
    pub fn with_batch_records(mut self, records: usize) -> Self {
        self.batch_records = Some(records);
        self
    }

    /// Sets the most bytes in one batch.
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = Some(bytes);
        self
    }

    /// Sets the most bytes handed over and not yet confirmed.
    pub fn with_buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = Some(bytes);
        self
    }
}

/// Checks a consumer group name: 1 to 249 printable characters without spaces.
///
/// # Errors
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the problem.
pub fn validate_group_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > crate::MAX_STREAM_NAME_LEN {
        return Err(crate::Error::invalid_input(format!(
            "invalid group name {name:?}: it must be 1 to {} characters",
            crate::MAX_STREAM_NAME_LEN
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(crate::Error::invalid_input(format!(
            "invalid group name {name:?}: {c:?} is not allowed"
        )));
    }
    Ok(())
}
