//! Sends into the memory engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::state::{Engine, StoredRecord};
use crate::client::Producer;
use crate::delivery::DeliveryHandle;
use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId, Timestamp};
use crate::record::{Delivery, Record};
use crate::routing::route_batch;
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
        // Unkeyed records of one batch stay together (like Kafka's sticky partitioner);
        // successive batches rotate.
        let unkeyed = log.next_unkeyed % partitions;
        let routes = match route_batch(&records, partitions, unkeyed, self.engine.config.max_record_bytes) {
            Ok(routes) => routes,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        if routes.used_unkeyed {
            log.next_unkeyed = (unkeyed + 1) % partitions;
        }
        let now = Timestamp::now();
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, p) in records.into_iter().zip(routes.partitions) {
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

    /// Written at once, like a send of one record: the handle is resolved on return.
    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        match self.send(stream, vec![record]).await {
            Ok(mut deliveries) => Ok(DeliveryHandle::ready(deliveries.pop().ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::Backend,
                    "the memory engine confirmed a send without a delivery",
                )
            }))),
            Err(e) if e.kind() == crate::ErrorKind::Closed => Err(e.error),
            Err(e) => Ok(DeliveryHandle::ready(Err(e.error))),
        }
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
