//! Streams: create, delete, describe, list, reshard.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::types::{ScalingType, StreamMode, StreamModeDetails, StreamStatus};
use tokio::time::Instant;
use tributary_core::{
    Admin, Error, ErrorKind, KeyRange, PartitionId, PartitionInfo, PartitionState, Result, StreamInfo,
    StreamSpec, async_trait,
};

use crate::Shared;
use crate::error::{code, convert};
use crate::shards::list_shards;

/// The options [`StreamSpec::options`] may hold for Kinesis.
const STREAM_OPTIONS: &str = "mode (provisioned or on_demand)";

/// Creates, deletes, describes and reshards Kinesis streams. Every change waits until
/// the stream is ACTIVE again (at most `operation_timeout`).
#[derive(Clone, Debug)]
pub struct KinesisAdmin {
    shared: Arc<Shared>,
}

impl KinesisAdmin {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Splits an open shard in two at `at`, the first hash key of the new upper half
    /// (the middle of its range when `None`), and waits until the stream is ACTIVE.
    /// Readers finish the shard before they read its children.
    ///
    /// # Errors
    /// `NotFound` for a missing stream or shard, `InvalidInput` for a hash key outside
    /// the shard or a closed shard, `Throttled` when Kinesis limits resharding. Not
    /// cancel safe: the split may have started.
    pub async fn split_shard(&self, stream: &str, shard: &PartitionId, at: Option<u128>) -> Result<()> {
        crate::validate_stream_name(stream)?;
        let shards = list_shards(&self.shared.client, stream).await?;
        let Some(desc) = shards.iter().find(|s| &s.id == shard) else {
            return Err(Error::not_found(format!("stream {stream} has no shard {shard}")));
        };
        if !desc.is_open() {
            return Err(Error::invalid_input(format!(
                "shard {shard} of {stream} is closed"
            )));
        }
        let (start, end) = desc.range;
        let at = at.unwrap_or(start + (end - start) / 2 + 1);
        if at <= start || at > end {
            return Err(Error::invalid_input(format!(
                "hash key {at} does not split shard {shard}, which owns {start} to {end}"
            )));
        }
        self.shared
            .client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard.as_str())
            .new_starting_hash_key(at.to_string())
            .send()
            .await
            .map_err(|e| convert(&format!("splitting {shard} of {stream}"), e))?;
        self.wait_active(stream).await
    }

    /// Merges two adjacent open shards into one and waits until the stream is ACTIVE.
    ///
    /// # Errors
    /// `NotFound` for a missing stream or shard, `InvalidInput` for shards that are not
    /// adjacent or not open, `Throttled` when Kinesis limits resharding. Not cancel safe.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard: &PartitionId,
        adjacent: &PartitionId,
    ) -> Result<()> {
        crate::validate_stream_name(stream)?;
        self.shared
            .client
            .merge_shards()
            .stream_name(stream)
            .shard_to_merge(shard.as_str())
            .adjacent_shard_to_merge(adjacent.as_str())
            .send()
            .await
            .map_err(|e| convert(&format!("merging {shard} and {adjacent} of {stream}"), e))?;
        self.wait_active(stream).await
    }

    /// Waits until `stream` is ACTIVE.
    async fn wait_active(&self, stream: &str) -> Result<()> {
        let deadline = Instant::now() + self.shared.config.operation_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let status = self
                .shared
                .client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await;
            let last = match status {
                Ok(out) => match out
                    .stream_description_summary()
                    .map(|s| s.stream_status().clone())
                {
                    Some(StreamStatus::Active) => return Ok(()),
                    Some(StreamStatus::Deleting) => {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            format!("stream {stream} is being deleted"),
                        ));
                    }
                    other => format!("it is {other:?}"),
                },
                // Just after a create, Kinesis may not list the stream yet.
                Err(e) if code(&e) == Some("ResourceNotFoundException") => "it is not listed yet".to_string(),
                Err(e) => {
                    let err = convert(&format!("waiting for {stream} to become ACTIVE"), e);
                    if !err.is_retryable() {
                        return Err(err);
                    }
                    err.to_string()
                }
            };
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "stream {stream} did not become ACTIVE within {:?}: {last}",
                        self.shared.config.operation_timeout
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn retention_hours(spec: &StreamSpec) -> Result<Option<i32>> {
        let Some(retention) = spec.retention else {
            return Ok(None);
        };
        let hours = retention.as_secs() / 3600;
        let whole = retention.as_secs() % 3600 == 0 && retention.subsec_nanos() == 0;
        if !whole || !(24..=8760).contains(&hours) {
            return Err(Error::invalid_input(format!(
                "Kinesis keeps records for whole hours from 24 to 8760, not {retention:?}"
            )));
        }
        Ok(i32::try_from(hours).ok())
    }
}

#[async_trait]
impl Admin for KinesisAdmin {
    async fn create_stream(&self, spec: &StreamSpec) -> Result<()> {
        crate::validate_stream_name(&spec.name)?;
        let mut on_demand = false;
        for (key, value) in &spec.options {
            match (key.as_str(), value.as_str()) {
                ("mode", "provisioned") => on_demand = false,
                ("mode", "on_demand") => on_demand = true,
                ("mode", other) => {
                    return Err(Error::invalid_input(format!(
                        "stream option mode={other:?}: expected provisioned or on_demand"
                    )));
                }
                (other, _) => {
                    return Err(Error::invalid_input(format!(
                        "unknown Kinesis stream option {other:?}; valid: {STREAM_OPTIONS}"
                    )));
                }
            }
        }
        let retention = Self::retention_hours(spec)?;
        let mut request = self.shared.client.create_stream().stream_name(&spec.name);
        if on_demand {
            if spec.partitions.is_some() {
                return Err(Error::invalid_input(
                    "an on-demand Kinesis stream chooses its own shard count: give no partition count",
                ));
            }
            let mode = StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()
                .map_err(|e| Error::new(ErrorKind::Backend, format!("building the stream mode: {e}")))?;
            request = request.stream_mode_details(mode);
        } else {
            let shards = spec.partitions.unwrap_or(1);
            let shards = i32::try_from(shards).ok().filter(|n| *n >= 1).ok_or_else(|| {
                Error::invalid_input(format!("a Kinesis stream needs 1 or more shards, not {shards}"))
            })?;
            request = request.shard_count(shards);
        }
        match request.send().await {
            Ok(_) => {}
            Err(e) if code(&e) == Some("ResourceInUseException") => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("stream {} already exists", spec.name),
                ));
            }
            Err(e) => return Err(convert(&format!("creating stream {}", spec.name), e)),
        }
        self.wait_active(&spec.name).await?;
        if let Some(hours) = retention.filter(|h| *h != 24) {
            self.shared
                .client
                .increase_stream_retention_period()
                .stream_name(&spec.name)
                .retention_period_hours(hours)
                .send()
                .await
                .map_err(|e| convert(&format!("setting the retention of {}", spec.name), e))?;
            self.wait_active(&spec.name).await?;
        }
        Ok(())
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        crate::validate_stream_name(name)?;
        let deadline = Instant::now() + self.shared.config.operation_timeout;
        loop {
            let result = self
                .shared
                .client
                .delete_stream()
                .stream_name(name)
                .enforce_consumer_deletion(true)
                .send()
                .await;
            match result {
                Ok(_) => break,
                // Still being created or resharded: Kinesis refuses until it settles.
                Err(e) if code(&e) == Some("ResourceInUseException") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(convert(&format!("deleting stream {name}"), e)),
            }
        }
        loop {
            match self
                .shared
                .client
                .describe_stream_summary()
                .stream_name(name)
                .send()
                .await
            {
                Err(e) if code(&e) == Some("ResourceNotFoundException") => return Ok(()),
                Err(e) => {
                    let err = convert(&format!("waiting for {name} to be deleted"), e);
                    if !err.is_retryable() {
                        return Err(err);
                    }
                }
                Ok(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "stream {name} was still being deleted after {:?}",
                        self.shared.config.operation_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
        crate::validate_stream_name(name)?;
        let summary = self
            .shared
            .client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(|e| convert(&format!("describing stream {name}"), e))?;
        let retention = summary
            .stream_description_summary()
            .and_then(|s| u64::try_from(s.retention_period_hours()).ok())
            .map(|h| Duration::from_secs(h * 3600));
        let mut partitions: Vec<PartitionInfo> = list_shards(&self.shared.client, name)
            .await?
            .into_iter()
            .map(|s| PartitionInfo {
                state: if s.is_open() {
                    PartitionState::Open
                } else {
                    PartitionState::Closed
                },
                id: s.id,
                parents: s.parents,
                key_range: Some(KeyRange {
                    start: s.range.0,
                    end: s.range.1,
                }),
                // Kinesis tells neither the oldest retained record nor the next one.
                low: None,
                high: None,
            })
            .collect();
        partitions.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(StreamInfo {
            name: name.to_string(),
            partitions,
            retention,
        })
    }

    async fn list_streams(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = self.shared.client.list_streams().limit(1000);
            if let Some(last) = &after {
                request = request.exclusive_start_stream_name(last);
            }
            let out = request.send().await.map_err(|e| convert("listing streams", e))?;
            names.extend(out.stream_names().iter().cloned());
            match (out.has_more_streams(), out.stream_names().last()) {
                (true, Some(last)) => after = Some(last.clone()),
                _ => break,
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
        crate::validate_stream_name(name)?;
        let target = i32::try_from(count).ok().filter(|n| *n >= 1).ok_or_else(|| {
            Error::invalid_input(format!("a Kinesis stream needs 1 or more shards, not {count}"))
        })?;
        let open = list_shards(&self.shared.client, name)
            .await?
            .iter()
            .filter(|s| s.is_open())
            .count();
        if open == count as usize {
            return Ok(());
        }
        self.shared
            .client
            .update_shard_count()
            .stream_name(name)
            .target_shard_count(target)
            .scaling_type(ScalingType::UniformScaling)
            .send()
            .await
            .map_err(|e| convert(&format!("changing the shard count of {name} to {count}"), e))?;
        self.wait_active(name).await
    }
}
