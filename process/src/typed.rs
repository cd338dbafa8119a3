//! A producer of typed values: the processor's codecs on the sending side, so a
//! consume-transform-produce handler writes `T`s, not bytes.

use std::fmt;

use tributary_core::{
    Backend, Bytes, Delivery, DeliveryHandle, Error, Producer, ProducerConfig, ProducerExt, Record, Result,
    SendError,
};

use crate::Codec;

/// A producer (over any [`Producer`]) whose values are `C::Value`s, encoded with the codec `C` (the same
/// codecs the processor decodes with). A value the codec cannot encode is refused
/// with `InvalidInput` naming the stream, before anything is handed to the engine.
pub struct TypedProducer<C: Codec> {
    producer: Box<dyn Producer>,
    codec: C,
}

impl<C: Codec> fmt::Debug for TypedProducer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedProducer")
            .field("codec", &std::any::type_name::<C>())
            .finish_non_exhaustive()
    }
}

impl<C: Codec> TypedProducer<C> {
    /// Values encoded with `codec`, sent through `producer`.
    pub fn new(producer: Box<dyn Producer>, codec: C) -> Self {
        Self { producer, codec }
    }

    /// A new producer of `backend` with `config`, for values encoded with `codec`.
    ///
    /// # Errors
    /// As [`Backend::producer`]. Not cancel safe: dropping it may leave a producer
    /// half made, which is then dropped.
    pub async fn open(backend: &dyn Backend, config: ProducerConfig, codec: C) -> Result<Self> {
        Ok(Self::new(backend.producer(config).await?, codec))
    }

    /// The record carrying `value` for `stream`, to add a key, headers, a timestamp or
    /// a partition to before [`send_records`](Self::send_records) or
    /// [`enqueue_record`](Self::enqueue_record).
    ///
    /// # Errors
    /// `InvalidInput` when the codec cannot encode `value`, naming `stream` and the
    /// codec's reason.
    pub fn record(&self, stream: &str, value: &C::Value) -> Result<Record> {
        let bytes = self.codec.encode(value).map_err(|e| {
            Error::invalid_input(format!("cannot encode a value for stream {stream}: {e}")).with_source(e)
        })?;
        Ok(Record::new(bytes))
    }

    /// Sends `value` under `key` (`None`: no key) and waits for its delivery.
    ///
    /// # Errors
    /// `InvalidInput` when the codec cannot encode it (nothing is sent); otherwise as
    /// [`ProducerExt::send_one`]. Cancel safe as `send` is: the record may still be
    /// written.
    pub async fn send(&self, stream: &str, key: Option<Bytes>, value: &C::Value) -> Result<Delivery> {
        let record = self.keyed(stream, key, value)?;
        self.producer.send_one(stream, record).await
    }

    /// Hands `value` under `key` over without waiting for the engine: the handle
    /// tells its fate later (see [`Producer::enqueue`]).
    ///
    /// # Errors
    /// `InvalidInput` when the codec cannot encode it (nothing is handed over);
    /// otherwise as [`Producer::enqueue`]. Cancel safe as `enqueue` is.
    pub async fn enqueue(
        &self,
        stream: &str,
        key: Option<Bytes>,
        value: &C::Value,
    ) -> Result<DeliveryHandle> {
        let record = self.keyed(stream, key, value)?;
        self.producer.enqueue(stream, record).await
    }

    /// Sends records made with [`record`](Self::record), as one batch, with
    /// [`Producer::send`]'s promise on what a partial failure leaves unsent.
    ///
    /// # Errors
    /// As [`Producer::send`]. Cancel safe as `send` is.
    pub async fn send_records(
        &self,
        stream: &str,
        records: Vec<Record>,
    ) -> std::result::Result<Vec<Delivery>, SendError> {
        self.producer.send(stream, records).await
    }

    /// Hands a record made with [`record`](Self::record) over without waiting.
    ///
    /// # Errors
    /// As [`Producer::enqueue`]. Cancel safe as `enqueue` is.
    pub async fn enqueue_record(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        self.producer.enqueue(stream, record).await
    }

    /// Waits until everything handed over has its fate.
    ///
    /// # Errors
    /// As [`Producer::flush`]. Cancel safe: dropping it stops waiting only.
    pub async fn flush(&self) -> Result<()> {
        self.producer.flush().await
    }

    /// Flushes, then refuses further sends.
    ///
    /// # Errors
    /// As [`Producer::close`]. Not cancel safe, as `close` is not.
    pub async fn close(&self) -> Result<()> {
        self.producer.close().await
    }

    /// The producer underneath, for records of other types.
    pub fn producer(&self) -> &dyn Producer {
        &*self.producer
    }

    /// The codec values are encoded with.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    fn keyed(&self, stream: &str, key: Option<Bytes>, value: &C::Value) -> Result<Record> {
        let mut record = self.record(stream, value)?;
        record.key = key;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tributary_core::{ConsumerConfig, ErrorKind, MemoryBackend, StreamSpec};

    use super::*;
    use crate::Json;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
    }

    /// A value serde refuses: JSON object keys must be strings.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Refused {
        map: std::collections::BTreeMap<Vec<u8>, u8>,
    }

    #[tokio::test]
    async fn typed_values_arrive_encoded_with_their_keys() -> Result<()> {
        let engine: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        engine
            .admin()
            .await?
            .create_stream(&StreamSpec::new("orders"))
            .await?;
        let producer = TypedProducer::open(&*engine, ProducerConfig::default(), Json::<Order>::new()).await?;
        producer
            .send("orders", Some("a".into()), &Order { id: 1 })
            .await?;
        let handle = producer.enqueue("orders", None, &Order { id: 2 }).await?;
        let record = producer.record("orders", &Order { id: 3 })?.with_header("h", "v");
        producer.send_records("orders", vec![record]).await?;
        handle.await?;
        producer.close().await?;
        let mut reader = engine.consumer(ConsumerConfig::broadcast("orders")).await?;
        let got = reader.poll(10, Duration::from_secs(1)).await?;
        let values: Vec<Order> = got
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect();
        assert_eq!(values, [Order { id: 1 }, Order { id: 2 }, Order { id: 3 }]);
        assert_eq!(got[0].key.as_deref(), Some(&b"a"[..]));
        assert_eq!(got[1].key, None);
        assert_eq!(got[2].headers.get("h").map(|v| v.as_ref()), Some(&b"v"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn a_value_the_codec_refuses_is_invalid_input_naming_the_stream() -> Result<()> {
        let engine: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        engine.admin().await?.create_stream(&StreamSpec::new("s")).await?;
        let producer =
            TypedProducer::open(&*engine, ProducerConfig::default(), Json::<Refused>::new()).await?;
        let refused = Refused {
            map: [(vec![1], 1)].into_iter().collect(),
        };
        let err = producer.send("s", None, &refused).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.message().contains("stream s"), "{err}");
        assert!(err.message().contains("key must be a string"), "{err}");
        assert!(producer.enqueue("s", None, &refused).await.is_err());
        producer.close().await?;
        let mut reader = engine.consumer(ConsumerConfig::broadcast("s")).await?;
        assert!(
            reader.poll(10, Duration::from_millis(50)).await?.is_empty(),
            "nothing was sent"
        );
        Ok(())
    }
}
