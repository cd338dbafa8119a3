//! Conveniences over the contract traits, for every implementation at once, plus the
//! forwarding impls that let `Box<dyn …>` and `Arc<dyn …>` be used as the traits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use serde::Serialize;

use crate::Capabilities;
use crate::client::{Admin, Backend, Consumer, ConsumerConfig, Producer, ProducerConfig};
use crate::delivery::DeliveryHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{Offset, PartitionId};
use crate::record::{Delivery, Received, Record, StartFrom};
use crate::send::SendError;
use crate::stream::{StreamInfo, StreamSpec};

/// Conveniences for every [`Producer`].
#[async_trait]
pub trait ProducerExt: Producer {
    /// Sends one record.
    ///
    /// # Errors
    /// As [`Producer::send`], without the unsent record. Not cancel safe.
    async fn send_one(&self, stream: &str, record: Record) -> Result<Delivery> {
        let mut deliveries = self.send(stream, vec![record]).await.map_err(Error::from)?;
        deliveries.pop().ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                "the backend confirmed a send without a delivery",
            )
        })
    }

    /// Sends `value` as JSON, with an optional key.
    ///
    /// # Errors
    /// `InvalidInput` if `value` cannot be encoded, then as [`Producer::send`]. Not
    /// cancel safe.
    async fn send_json<T: Serialize + Sync + ?Sized>(
        &self,
        stream: &str,
        key: Option<&str>,
        value: &T,
    ) -> Result<Delivery> {
        let mut record = Record::json(value)?;
        if let Some(key) = key {
            record = record.with_key(key.to_owned());
        }
        self.send_one(stream, record).await
    }
}

impl<P: Producer + ?Sized> ProducerExt for P {}

/// Conveniences for every [`Consumer`].
#[async_trait]
pub trait ConsumerExt: Consumer {
    /// Acknowledges `record` and commits.
    ///
    /// # Errors
    /// As [`Consumer::ack`] and [`Consumer::commit`]. Cancel safe.
    async fn commit_record(&mut self, record: &Received) -> Result<()> {
        self.ack(&record.partition, &record.offset)?;
        self.commit().await
    }

    /// Acknowledges every record of `records`.
    ///
    /// # Errors
    /// The first failed [`Consumer::ack`]; the records before it stay acknowledged.
    fn ack_all(&mut self, records: &[Received]) -> Result<()> {
        records.iter().try_for_each(|r| self.ack(&r.partition, &r.offset))
    }

    /// Turns the consumer into a stream of records, read in batches of `batch`. Errors
    /// are yielded; the stream ends after a `Closed` error. Nothing can be acknowledged
    /// through it, so it suits broadcast readers; a group member would never commit,
    /// and would keep track of every record it delivered.
    fn into_stream(self, batch: usize) -> impl Stream<Item = Result<Received>> + Send
    where
        Self: Sized + 'static,
    {
        // Waiting per poll is bounded so that a stream that is never polled again does
        // not hold a pending poll open forever; an empty poll just polls again.
        const POLL_WAIT: Duration = Duration::from_secs(1);
        let state = (self, VecDeque::<Received>::new(), false);
        futures::stream::unfold(state, move |(mut consumer, mut buffered, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(record) = buffered.pop_front() {
                    return Some((Ok(record), (consumer, buffered, false)));
                }
                match consumer.poll(batch.max(1), POLL_WAIT).await {
                    Ok(records) => buffered.extend(records),
                    Err(e) => {
                        let closed = e.kind() == ErrorKind::Closed;
                        return Some((Err(e), (consumer, buffered, closed)));
                    }
                }
            }
        })
    }
}

impl<C: Consumer + ?Sized> ConsumerExt for C {}

macro_rules! forward_backend {
    ($ty:ty) => {
        #[async_trait]
        impl<T: Backend + ?Sized> Backend for $ty {
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn engine(&self) -> &'static str {
                (**self).engine()
            }
            async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
                (**self).producer(config).await
            }
            async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
                (**self).consumer(config).await
            }
            async fn admin(&self) -> Result<Box<dyn Admin>> {
                (**self).admin().await
            }
        }
    };
}

macro_rules! forward_producer {
    ($ty:ty) => {
        #[async_trait]
        impl<T: Producer + ?Sized> Producer for $ty {
            async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
                (**self).send(stream, records).await
            }
            async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
                (**self).enqueue(stream, record).await
            }
            async fn flush(&self) -> Result<()> {
                (**self).flush().await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
        }
    };
}

macro_rules! forward_admin {
    ($ty:ty) => {
        #[async_trait]
        impl<T: Admin + ?Sized> Admin for $ty {
            async fn create_stream(&self, spec: &StreamSpec) -> Result<()> {
                (**self).create_stream(spec).await
            }
            async fn delete_stream(&self, name: &str) -> Result<()> {
                (**self).delete_stream(name).await
            }
            async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
                (**self).describe_stream(name).await
            }
            async fn list_streams(&self) -> Result<Vec<String>> {
                (**self).list_streams().await
            }
            async fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
                (**self).set_partitions(name, count).await
            }
        }
    };
}

forward_backend!(Box<T>);
forward_backend!(Arc<T>);
forward_producer!(Box<T>);
forward_producer!(Arc<T>);
forward_admin!(Box<T>);
forward_admin!(Arc<T>);

#[async_trait]
impl<T: Consumer + ?Sized> Consumer for Box<T> {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        (**self).poll(max, timeout).await
    }
    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        (**self).ack(partition, offset)
    }
    async fn commit(&mut self) -> Result<()> {
        (**self).commit().await
    }
    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        (**self).seek(partition, to).await
    }
    fn assignment(&self) -> Vec<PartitionId> {
        (**self).assignment()
    }
    async fn close(&mut self) -> Result<()> {
        (**self).close().await
    }
}
