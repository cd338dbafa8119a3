//! Sends into the memory engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::state::{Engine, StoredRecord};
use crate::client::Producer;
use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId, Timestamp};
use crate::partitioner::partition_for_key;
use crate::record::{Delivery, Record};
use crate::send::SendError;
use crate::stream::validate_stream_name;

pub(super) struct MemoryProducer {
    engine: Arc<Engine>,
    closed: AtomicBool,
}

impl MemoryProducer {
    pub(super) fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            closed: AtomicBool::new(false),
        }
    }

    /// Checks every record before anything is appended, so a bad batch changes nothing.
    fn check(&self, records: &[Record], partitions: u32) -> Result<()> {
        let max = self.engine.config.max_record_bytes;
        for (i, record) in records.iter().enumerate() {
            let size = record.encoded_len();
            if size > max {
                return Err(Error::invalid_input(format!(
                    "record {i} of the batch is {size} bytes (key + value + headers), above the limit of {max}"
                )));
            }
            if let Some(p) = &record.partition
                && p.index().is_none_or(|p| p >= partitions)
            {
                return Err(Error::invalid_input(format!(
                    "record {i} targets partition {p}, but the stream has partitions 0 to {}",
                    partitions.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::nothing_sent(Error::closed("producer"), records));
        }
        if let Err(e) = validate_stream_name(stream) {
            return Err(SendError::nothing_sent(e, records));
        }
        let mut state = self.engine.lock();
        let log = match state.stream_mut(stream) {
            Ok(log) => log,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        let partitions = log.partition_count();
        if let Err(e) = self.check(&records, partitions) {
            return Err(SendError::nothing_sent(e, records));
        }
        // Unkeyed records of one batch stay together (like Kafka's sticky partitioner);
        // successive batches rotate.
        let unkeyed = log.next_unkeyed % partitions;
        if records.iter().any(|r| r.key.is_none() && r.partition.is_none()) {
            log.next_unkeyed = (unkeyed + 1) % partitions;
        }
        let now = Timestamp::now();
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let p = match (&record.partition, &record.key) {
                (Some(p), _) => p.index().unwrap_or(0),
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => unkeyed,
            };
            let partition = &mut log.partitions[p as usize];
            let offset = partition.high();
            let timestamp = record.timestamp.unwrap_or(now);
            partition.records.push(StoredRecord {
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp,
            });
            deliveries.push(Delivery {
                partition: PartitionId::from_index(p),
                offset: Offset::new(offset),
                timestamp: Some(timestamp),
            });
        }
        log.notify.notify_waiters();
        Ok(deliveries)
    }

    async fn flush(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        // Sends complete before they return: there is never anything in flight.
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
