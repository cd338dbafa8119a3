//! Stream administration of the memory engine.

use std::sync::Arc;

use async_trait::async_trait;

use super::state::{Engine, MAX_PARTITIONS};
use crate::client::Admin;
use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId};
use crate::stream::{PartitionInfo, PartitionState, StreamInfo, StreamSpec, validate_stream_name};

pub(super) struct MemoryAdmin {
    engine: Arc<Engine>,
}

impl MemoryAdmin {
    pub(super) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn check_count(name: &str, count: u32) -> Result<()> {
    if count == 0 || count > MAX_PARTITIONS {
        return Err(Error::invalid_input(format!(
            "stream {name:?}: a partition count must be 1 to {MAX_PARTITIONS}, got {count}"
        )));
    }
    Ok(())
}

#[async_trait]
impl Admin for MemoryAdmin {
    async fn create_stream(&self, spec: &StreamSpec) -> Result<()> {
        validate_stream_name(&spec.name)?;
        let partitions = spec.partitions.unwrap_or(self.engine.config.partitions);
        check_count(&spec.name, partitions)?;
        if let Some(key) = spec.options.keys().next() {
            return Err(Error::invalid_input(format!(
                "stream {:?}: the memory engine takes no stream options (got {key:?})",
                spec.name
            )));
        }
        self.engine
            .lock()
            .create_stream(&spec.name, partitions, spec.retention)
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        validate_stream_name(name)?;
        self.engine.lock().delete_stream(name)
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
        validate_stream_name(name)?;
        let state = self.engine.lock();
        let stream = state.stream(name)?;
        let partitions = (0..stream.partition_count())
            .zip(&stream.partitions)
            .map(|(i, log)| PartitionInfo {
                id: PartitionId::from_index(i),
                parents: Vec::new(),
                key_range: None,
                state: PartitionState::Open,
                low: (!log.records.is_empty()).then(|| Offset::new(0)),
                high: Some(Offset::new(log.high())),
            })
            .collect();
        Ok(StreamInfo {
            name: name.to_string(),
            partitions,
            retention: stream.retention,
        })
    }

    async fn list_streams(&self) -> Result<Vec<String>> {
        Ok(self.engine.lock().streams.keys().cloned().collect())
    }

    async fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
        validate_stream_name(name)?;
        check_count(name, count)?;
        let mut state = self.engine.lock();
        let stream = state.stream_mut(name)?;
        let current = stream.partition_count();
        if count < current {
            return Err(Error::invalid_input(format!(
                "stream {name:?} has {current} partitions; the count can only grow (asked for {count})"
            )));
        }
        stream.add_partitions(count - current);
        stream.notify.notify_waiters();
        Ok(())
    }
}
