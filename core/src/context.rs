//! A backend whose every error names the engine and the operation it arose in.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::client::{Admin, Backend, Consumer, ConsumerConfig, Producer, ProducerConfig};
use crate::delivery::DeliveryHandle;
use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId};
use crate::record::{Delivery, Received, Record, StartFrom};
use crate::send::SendError;
use crate::stream::{StreamInfo, StreamSpec};

/// Wraps a backend so that every error it and its handles return names `engine` and
/// the operation ([`Error::in_operation`]); an error that already names them keeps
/// its own. `tributary::Client::connect` applies it to every engine it opens.
#[derive(Clone, Debug)]
pub struct Named {
    engine: &'static str,
    inner: Arc<dyn Backend>,
}

impl Named {
    /// `inner`, its errors naming `engine` (the engine's URL scheme).
    pub fn new(engine: &'static str, inner: Arc<dyn Backend>) -> Self {
        Self { engine, inner }
    }
}

#[async_trait]
impl Backend for Named {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn engine(&self) -> &'static str {
        self.engine
    }
    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        let inner = self
            .inner
            .producer(config)
            .await
            .map_err(|e| e.in_operation(self.engine, "open producer"))?;
        Ok(Box::new(NamedProducer {
            engine: self.engine,
            inner,
        }))
    }
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        let inner = self
            .inner
            .consumer(config)
            .await
            .map_err(|e| e.in_operation(self.engine, "open consumer"))?;
        Ok(Box::new(NamedConsumer {
            engine: self.engine,
            inner,
        }))
    }
    async fn admin(&self) -> Result<Box<dyn Admin>> {
        let inner = self
            .inner
            .admin()
            .await
            .map_err(|e| e.in_operation(self.engine, "open admin"))?;
        Ok(Box::new(NamedAdmin {
            engine: self.engine,
            inner,
        }))
    }
}

struct NamedProducer {
    engine: &'static str,
    inner: Box<dyn Producer>,
}

#[async_trait]
impl Producer for NamedProducer {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        self.inner.send(stream, records).await.map_err(|mut e| {
            e.error = e.error.in_operation(self.engine, "send");
            e
        })
    }
    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        match self.inner.enqueue(stream, record).await {
            Ok(handle) => Ok(handle.in_operation(self.engine, "send")),
            Err(e) => Err(e.in_operation(self.engine, "enqueue")),
        }
    }
    async fn flush(&self) -> Result<()> {
        self.inner
            .flush()
            .await
            .map_err(|e| e.in_operation(self.engine, "flush"))
    }
    async fn close(&self) -> Result<()> {
        self.inner
            .close()
            .await
            .map_err(|e| e.in_operation(self.engine, "close producer"))
    }
}

struct NamedConsumer {
    engine: &'static str,
    inner: Box<dyn Consumer>,
}

impl NamedConsumer {
    fn name(&self, operation: &'static str) -> impl FnOnce(Error) -> Error + use<> {
        let engine = self.engine;
        move |e| e.in_operation(engine, operation)
    }
}

#[async_trait]
impl Consumer for NamedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        let name = self.name("poll");
        self.inner.poll(max, timeout).await.map_err(name)
    }
    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        let name = self.name("ack");
        self.inner.ack(partition, offset).map_err(name)
    }
    async fn commit(&mut self) -> Result<()> {
        let name = self.name("commit");
        self.inner.commit().await.map_err(name)
    }
    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        let name = self.name("seek");
        self.inner.seek(partition, to).await.map_err(name)
    }
    fn assignment(&self) -> Vec<PartitionId> {
        self.inner.assignment()
    }
    async fn close(&mut self) -> Result<()> {
        let name = self.name("close consumer");
        self.inner.close().await.map_err(name)
    }
}

struct NamedAdmin {
    engine: &'static str,
    inner: Box<dyn Admin>,
}

#[async_trait]
impl Admin for NamedAdmin {
    async fn create_stream(&self, spec: &StreamSpec) -> Result<()> {
        self.inner
            .create_stream(spec)
            .await
            .map_err(|e| e.in_operation(self.engine, "create_stream"))
    }
    async fn delete_stream(&self, name: &str) -> Result<()> {
        self.inner
            .delete_stream(name)
            .await
            .map_err(|e| e.in_operation(self.engine, "delete_stream"))
    }
    async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
        self.inner
            .describe_stream(name)
            .await
            .map_err(|e| e.in_operation(self.engine, "describe_stream"))
    }
    async fn list_streams(&self) -> Result<Vec<String>> {
        self.inner
            .list_streams()
            .await
            .map_err(|e| e.in_operation(self.engine, "list_streams"))
    }
    async fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
        self.inner
            .set_partitions(name, count)
            .await
            .map_err(|e| e.in_operation(self.engine, "set_partitions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ConsumerConfig;
    use crate::error::ErrorKind;
    use crate::memory::{MemoryBackend, MemoryConfig};

    #[tokio::test]
    async fn every_handle_names_the_engine_and_the_operation() {
        let backend = Named::new(
            "memory",
            Arc::new(MemoryBackend::new(MemoryConfig::default()).unwrap()),
        );
        let admin = backend.admin().await.unwrap();
        let err = admin.describe_stream("missing").await.unwrap_err();
        assert_eq!(
            (err.engine(), err.operation()),
            (Some("memory"), Some("describe_stream"))
        );
        assert!(err.to_string().ends_with("(memory describe_stream)"), "{err}");

        let producer = backend.producer(ProducerConfig::default()).await.unwrap();
        let err = producer
            .send("missing", vec![Record::new("x")])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.error.operation(), Some("send"));
        assert_eq!(err.unsent.len(), 1, "the records still come back");

        admin.create_stream(&StreamSpec::new("s")).await.unwrap();
        let mut reader = backend.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
        let err = reader.commit().await.unwrap_err();
        assert_eq!(
            (err.kind(), err.operation()),
            (ErrorKind::Unsupported, Some("commit"))
        );
        let err = reader
            .ack(&PartitionId::from_index(0), &Offset::new(0))
            .unwrap_err();
        assert_eq!(err.operation(), Some("ack"));

        let Err(err) = backend.consumer(ConsumerConfig::group("s", "")).await else {
            panic!("an empty group name is refused");
        };
        assert_eq!(err.operation(), Some("open consumer"));
    }
}
