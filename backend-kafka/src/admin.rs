//! Topics: create, delete, describe (with watermarks), list, add partitions. Every
//! change waits until the brokers' metadata shows it, so the next call sees it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication, TopicResult};
use rdkafka::client::DefaultClientContext;
use tributary_core::raw::validate_stream_name;
use tributary_core::{
    Admin, Error, ErrorKind, Offset, PartitionId, PartitionInfo, PartitionState, Result, StreamInfo,
    StreamSpec, async_trait,
};

use crate::config::KafkaConfig;
use crate::error;
use crate::metadata::{blocking, fetch_partition_count, missing, partition_count, retry_transient};

type Client = AdminClient<DefaultClientContext>;

/// Manages topics.
pub struct KafkaAdmin {
    config: Arc<KafkaConfig>,
    client: Arc<Client>,
}

impl std::fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("bootstrap", &self.config.bootstrap)
            .finish_non_exhaustive()
    }
}

/// How often a change is looked for in the metadata.
const SETTLE_POLL: Duration = Duration::from_millis(50);

impl KafkaAdmin {
    pub(crate) fn new(config: Arc<KafkaConfig>, client: Arc<Client>) -> Self {
        Self { config, client }
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(self.config.operation_timeout))
            .request_timeout(Some(self.config.request_timeout))
    }

    /// The partition count the brokers report (blocking call off the workers).
    async fn partitions(&self, topic: &str) -> Result<u32> {
        let client = self.client.clone();
        let topic = topic.to_string();
        let timeout = self.config.operation_timeout;
        blocking(move || fetch_partition_count(client.inner(), &topic, timeout)).await?
    }

    /// Waits until the metadata satisfies `done` (a topic change propagates to every
    /// broker asynchronously).
    async fn settle(&self, what: &str, done: impl Fn(Result<u32>) -> bool) -> Result<()> {
        let deadline = Instant::now() + self.config.operation_timeout;
        loop {
            if done(self.partitions_fresh(what).await) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("kafka: the change to topic {what:?} was accepted but is not visible yet"),
                ));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Like `partitions`, but also requires every partition to have a leader.
    async fn partitions_fresh(&self, topic: &str) -> Result<u32> {
        let client = self.client.clone();
        let name = topic.to_string();
        let timeout = self.config.operation_timeout;
        blocking(move || {
            let metadata = client
                .inner()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| error::convert("metadata", e))?;
            let count = partition_count(&metadata, &name)?;
            let led = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == name)
                .flat_map(|t| t.partitions())
                .all(|p| p.leader() >= 0 && p.error().is_none());
            if led {
                Ok(count)
            } else {
                Err(Error::new(ErrorKind::Unavailable, "partitions without a leader"))
            }
        })
        .await?
    }
}

fn topic_result(doing: &str, results: Vec<TopicResult>) -> Result<()> {
    for result in results {
        if let Err((topic, code)) = result {
            return Err(match error::kind_of(code) {
                ErrorKind::NotFound => missing(&topic),
                ErrorKind::AlreadyExists => Error::new(
                    ErrorKind::AlreadyExists,
                    format!("kafka: topic {topic:?} already exists"),
                ),
                _ => error::from_code(&format!("{doing} {topic:?}"), code),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl Admin for KafkaAdmin {
    async fn create_stream(&self, spec: &StreamSpec) -> Result<()> {
        validate_stream_name(&spec.name)?;
        let partitions = spec.partitions.unwrap_or(1);
        let partitions = i32::try_from(partitions)
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| {
                Error::invalid_input(format!("partitions must be 1 to {}, got {partitions}", i32::MAX))
            })?;
        let retention_ms = spec.retention.map(|r| r.as_millis().to_string());
        let replication = TopicReplication::Fixed(self.config.replication_factor.map_or(-1, i32::from));
        let mut topic = NewTopic::new(&spec.name, partitions, replication);
        if let Some(ms) = &retention_ms {
            topic = topic.set("retention.ms", ms);
        }
        for (key, value) in &spec.options {
            topic = topic.set(key, value);
        }
        let results = self
            .client
            .create_topics([&topic], &self.options())
            .await
            .map_err(|e| error::convert("creating a topic", e))?;
        topic_result("creating topic", results)?;
        let wanted = u32::try_from(partitions).unwrap_or_default();
        self.settle(&spec.name, |r| r.is_ok_and(|n| n == wanted)).await
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        validate_stream_name(name)?;
        let results = self
            .client
            .delete_topics(&[name], &self.options())
            .await
            .map_err(|e| error::convert("deleting a topic", e))?;
        topic_result("deleting topic", results)?;
        self.settle(name, |r| r.is_err_and(|e| e.kind() == ErrorKind::NotFound))
            .await
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
        validate_stream_name(name)?;
        let count = self.partitions(name).await?;
        let client = self.client.clone();
        let topic = name.to_string();
        let timeout = self.config.operation_timeout;
        let partitions = blocking(move || {
            (0..count)
                .map(|p| {
                    let partition = i32::try_from(p).unwrap_or(i32::MAX);
                    let (low, high) = retry_transient(timeout, || {
                        client
                            .inner()
                            .fetch_watermarks(&topic, partition, timeout)
                            .map_err(|e| error::convert(&format!("watermarks of {topic}/{p}"), e))
                    })?;
                    let offset = |o: i64| u64::try_from(o).ok().map(Offset::new);
                    Ok(PartitionInfo {
                        id: PartitionId::from_index(p),
                        parents: Vec::new(),
                        key_range: None,
                        state: PartitionState::Open,
                        low: offset(low),
                        high: offset(high),
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .await??;
        Ok(StreamInfo {
            name: name.to_string(),
            partitions,
            retention: None,
        })
    }

    async fn list_streams(&self) -> Result<Vec<String>> {
        let client = self.client.clone();
        let timeout = self.config.operation_timeout;
        let metadata = blocking(move || client.inner().fetch_metadata(None, timeout))
            .await?
            .map_err(|e| error::convert("listing topics", e))?;
        let mut names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !n.starts_with("__"))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
        validate_stream_name(name)?;
        let current = self.partitions(name).await?;
        if count == current {
            return Ok(());
        }
        if count < current {
            return Err(Error::invalid_input(format!(
                "kafka cannot remove partitions: topic {name:?} has {current}, asked for {count}"
            )));
        }
        let wanted = usize::try_from(count).unwrap_or(usize::MAX);
        let results = self
            .client
            .create_partitions([&NewPartitions::new(name, wanted)], &self.options())
            .await
            .map_err(|e| error::convert("adding partitions", e))?;
        topic_result("adding partitions to topic", results)?;
        self.settle(name, |r| r.is_ok_and(|n| n == count)).await
    }
}
