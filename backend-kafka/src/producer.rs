//! The producer: an idempotent rdkafka producer, one batch enqueued whole before any
//! delivery is awaited (one linger per batch, not per record).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

type Client = FutureProducer<WatchedContext>;
use tributary_core::raw::{PipelineSettings, SendTally, validate_stream_name};
use tributary_core::{
    Delivery, DeliveryHandle, Error, ErrorKind, Offset, PartitionId, Producer, ProducerConfig, Record,
    Result, SendError, Timestamp, async_trait,
};

use crate::config::{KafkaConfig, Role};
use crate::error::{self, AuthWatch, WatchedContext};
use crate::metadata::{blocking, fetch_partition_count};

/// Sends records to Kafka topics. Cheap to share: `send` takes `&self`.
pub struct KafkaProducer {
    config: Arc<KafkaConfig>,
    client_config: ClientConfig,
    /// Replaced by a fresh producer after a fatal (idempotence) error; taken on drop.
    producer: Mutex<Option<Arc<Client>>>,
    auth: Arc<AuthWatch>,
    closed: AtomicBool,
    /// Held (shared) while a record is checked against `closed` and queued, and taken
    /// (exclusive) by `close` after setting it: a record queued concurrently is queued
    /// before close flushes, or refused.
    queueing: RwLock<()>,
    /// How many times a fatal error replaced the librdkafka producer.
    replaced: std::sync::atomic::AtomicU64,
    /// Partition counts of topics recently seen to exist, and when.
    topics: Mutex<HashMap<String, (u32, Instant)>>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("bootstrap", &self.config.bootstrap)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How one record of a batch ended.
enum Outcome {
    Delivered(Delivery),
    Failed(Error),
}

impl KafkaProducer {
    pub(crate) fn new(config: Arc<KafkaConfig>, producer: &ProducerConfig) -> Result<Self> {
        let mut client_config = config.client_config(Role::Producer, None);
        if let Some(id) = &producer.client_id {
            client_config.set("client.id", id);
        }
        let settings = PipelineSettings::new(
            config.linger,
            DEFAULT_BATCH_RECORDS,
            DEFAULT_BATCH_BYTES,
            DEFAULT_BUFFER_BYTES,
        )
        .with_config(producer)?;
        apply_settings(&mut client_config, &settings, producer);
        let auth = Arc::new(AuthWatch::new(config.secret_values()));
        let producer = create(&client_config, &auth)?;
        Ok(Self {
            auth,
            config,
            client_config,
            producer: Mutex::new(Some(producer)),
            closed: AtomicBool::new(false),
            queueing: RwLock::new(()),
            replaced: std::sync::atomic::AtomicU64::new(0),
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// How many times a fatal error (such as a broken idempotence sequence) made this
    /// producer replace its librdkafka client. Worth a metric: each replacement follows
    /// sends that failed.
    pub fn fatal_recoveries(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    fn current(&self) -> Result<Arc<Client>> {
        self.producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Error::closed("producer"))
    }

    /// Whether `record` needs none of `check_batch`'s lookups: a topic seen to exist
    /// recently (so its name was checked), no chosen partition, within the size limit.
    /// The common case of `enqueue`, kept to one lock and one clock read.
    fn recently_checked(&self, topic: &str, record: &Record) -> bool {
        record.partition.is_none()
            && record.encoded_len() <= self.config.max_record_bytes
            && self
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(topic)
                .is_some_and(|(_, at)| at.elapsed() < self.config.metadata_refresh)
    }

    /// Queues `record` once librdkafka's queue has room (`buffer_bytes`), looking again
    /// soon, then less often the longer it stays full (at most every 10 ms): librdkafka
    /// signals no room. The outer error is `Closed` if the producer closes meanwhile;
    /// the inner one a refusal of the record.
    async fn queue_when_room(
        &self,
        producer: &Client,
        stream: &str,
        record: &Record,
    ) -> Result<std::result::Result<DeliveryFuture, Error>> {
        let mut pause = Duration::from_micros(100);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
            let _queueing = self.queueing.read().unwrap_or_else(PoisonError::into_inner);
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::closed("producer"));
            }
            match producer.send_result(future_record(stream, record)) {
                Ok(delivery) => return Ok(Ok(delivery)),
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {}
                Err((e, _)) => return Ok(Err(queue_refusal(e))),
            }
        }
    }

    /// The partition count of a topic, from a short-lived cache or the brokers.
    async fn partitions(&self, topic: &str, refresh: bool) -> Result<u32> {
        let fresh_for = self.config.metadata_refresh;
        if !refresh
            && let Some((count, at)) = self
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(topic)
            && at.elapsed() < fresh_for
        {
            return Ok(*count);
        }
        let producer = self.current()?;
        let name = topic.to_string();
        let timeout = self.config.operation_timeout;
        let count = blocking(move || fetch_partition_count(producer.client(), &name, timeout)).await??;
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string(), (count, Instant::now()));
        Ok(count)
    }

    /// Refuses a batch with a record the brokers would refuse, before sending any.
    async fn check_batch(&self, topic: &str, records: &[Record]) -> Result<()> {
        validate_stream_name(topic)?;
        let mut needed = 0u32;
        for (i, record) in records.iter().enumerate() {
            let size = record.encoded_len();
            if size > self.config.max_record_bytes {
                return Err(Error::invalid_input(format!(
                    "record {i} is {size} bytes, over the limit of {} (max_record_bytes)",
                    self.config.max_record_bytes
                )));
            }
            if let Some(p) = &record.partition {
                let Some(index) = p.index().filter(|i| *i <= i32::MAX as u32) else {
                    return Err(Error::invalid_input(format!(
                        "record {i} targets partition {p:?}: Kafka partitions are numbers"
                    )));
                };
                needed = needed.max(index + 1);
            }
        }
        let mut count = self.partitions(topic, false).await?;
        if needed > count {
            count = self.partitions(topic, true).await?;
        }
        if needed > count {
            return Err(Error::not_found(format!(
                "kafka: topic {topic:?} has {count} partition(s): partition {} does not exist",
                needed - 1
            )));
        }
        Ok(())
    }

    /// The librdkafka producer to queue records in: the current one, replaced first if
    /// it failed fatally since it was last used.
    fn usable(&self) -> Result<Arc<Client>> {
        let producer = self.current()?;
        if producer.client().fatal_error().is_none() {
            return Ok(producer);
        }
        self.recover_if_fatal(&producer);
        drop_off_runtime(producer);
        self.current()
    }

    /// After a fatal error the producer cannot send again: swap in a new one.
    fn recover_if_fatal(&self, failed: &Arc<Client>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut guard = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(current) = guard.as_mut() else {
            return;
        };
        if !Arc::ptr_eq(current, failed) {
            return; // another send already replaced it
        }
        tracing::warn!(%code, %reason, "kafka producer hit a fatal error; creating a new producer");
        match create(&self.client_config, &self.auth) {
            Ok(fresh) => {
                drop_off_runtime(std::mem::replace(current, fresh));
                self.replaced.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "kafka producer could not be recreated"),
        }
    }
}

/// librdkafka's `batch.num.messages` default.
const DEFAULT_BATCH_RECORDS: usize = 10_000;
/// librdkafka's `batch.size` default.
const DEFAULT_BATCH_BYTES: usize = 1_000_000;
/// Kafka's Java producer's `buffer.memory` default (librdkafka's is 1 GiB).
const DEFAULT_BUFFER_BYTES: usize = 32 << 20;
/// What one record queued in librdkafka costs besides its key and value, which are
/// all that `queue.buffering.max.kbytes` counts: librdkafka's message, the delivery
/// channel and the handle. Measured: 2,000,000 records of 100 B handed over to a
/// stalled broker held ~700 B each in all. `queue.buffering.max.messages` is set to
/// `buffer_bytes` / this, so that small records too stay within the buffer.
const RECORD_OVERHEAD: usize = 640;

/// The batching settings as librdkafka's: `linger.ms`, `batch.num.messages`,
/// `batch.size`, `queue.buffering.max.kbytes` (rounded up) and
/// `queue.buffering.max.messages` (the buffer over [`RECORD_OVERHEAD`]). The engine's own settings
/// (`linger` and `librdkafka.*` in the URL) give way to the producer's where it sets one.
fn apply_settings(client_config: &mut ClientConfig, settings: &PipelineSettings, producer: &ProducerConfig) {
    if producer.linger.is_some() {
        client_config.set("linger.ms", settings.linger.as_millis().to_string());
    }
    let mut set = |key: &str, value: Option<usize>, default: usize| {
        if value.is_some() || client_config.get(key).is_none() {
            client_config.set(key, value.unwrap_or(default).to_string());
        }
    };
    set(
        "batch.num.messages",
        producer.batch_records,
        settings.batch_records,
    );
    set("batch.size", producer.batch_bytes, settings.batch_bytes);
    set(
        "queue.buffering.max.kbytes",
        producer.buffer_bytes.map(|b| b.div_ceil(1024)),
        settings.buffer_bytes.div_ceil(1024),
    );
    if producer.buffer_bytes.is_some() || client_config.get("queue.buffering.max.messages").is_none() {
        let records = (settings.buffer_bytes / RECORD_OVERHEAD).clamp(1, 10_000_000);
        client_config.set("queue.buffering.max.messages", records.to_string());
    }
}

/// Destroying a producer purges what is queued and joins librdkafka's threads: when
/// this is the last handle, and not on an async worker, what was handed over is first
/// given the delivery timeout to go out (so a producer dropped without `close` still
/// delivers, as the other engines' pipelines do); what is left then fails its handles.
fn drop_off_runtime(producer: Arc<Client>) {
    retire(producer, Duration::ZERO);
}

/// As [`drop_off_runtime`], first waiting up to `drain` for what is queued.
fn retire(producer: Arc<Client>, drain: Duration) {
    if let Some(last) = Arc::into_inner(producer) {
        let finish = move || {
            if !drain.is_zero()
                && last.in_flight_count() > 0
                && let Err(e) = last.flush(drain)
            {
                tracing::warn!(error = %e, "kafka: records were still queued when the dropped producer gave up");
            }
            drop(last);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(finish)),
            Err(_) => finish(),
        }
    }
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        if let Some(producer) = self
            .producer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            retire(producer, self.config.delivery_timeout);
        }
    }
}

fn create(client_config: &ClientConfig, auth: &Arc<AuthWatch>) -> Result<Arc<Client>> {
    client_config
        .create_with_context::<_, Client>(WatchedContext { auth: auth.clone() })
        .map(Arc::new)
        .map_err(|e| error::convert("creating a producer", e))
}

/// `record` as librdkafka takes it (which copies what it borrows when it is queued).
fn future_record<'a>(stream: &'a str, record: &'a Record) -> FutureRecord<'a, [u8], [u8]> {
    let mut future_record = FutureRecord::<[u8], [u8]>::to(stream).payload(record.value.as_ref());
    if let Some(key) = &record.key {
        future_record = future_record.key(key.as_ref());
    }
    if let Some(index) = record.partition.as_ref().and_then(PartitionId::index) {
        future_record = future_record.partition(i32::try_from(index).unwrap_or(i32::MAX));
    }
    if let Some(ts) = record.timestamp {
        future_record = future_record.timestamp(ts.as_millis());
    }
    if let Some(headers) = headers_of(record) {
        future_record = future_record.headers(headers);
    }
    future_record
}

/// A refusal to queue a record: it was never sent, so whatever the code, not
/// `Indeterminate`.
fn queue_refusal(e: KafkaError) -> Error {
    let refused = error::convert("queueing a record", e);
    if refused.kind() == ErrorKind::Indeterminate {
        Error::new(ErrorKind::Unavailable, refused.message().to_string())
    } else {
        refused
    }
}

fn headers_of(record: &Record) -> Option<OwnedHeaders> {
    if record.headers.is_empty() {
        return None;
    }
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in record.headers.iter() {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_ref()),
        });
    }
    Some(headers)
}

/// A failed delivery as an error, `Indeterminate` where the record may have reached
/// the log: besides what `error::convert` says, a broker that appended it without
/// enough replicas or timed out waiting for them.
fn delivery_error(error: KafkaError) -> Error {
    let maybe_written = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::NotEnoughReplicasAfterAppend | RDKafkaErrorCode::RequestTimedOut)
    );
    let converted = error::convert("delivering a record", error);
    if maybe_written {
        Error::new(
            ErrorKind::Indeterminate,
            format!("{} (the broker may have written it)", converted.message()),
        )
    } else {
        converted
    }
}

/// Keeps the promise that a key's unsent records are a suffix of its records: a record
/// delivered after an earlier record of its key failed (an implicit confirmation can
/// do that) is handed back with it, as `Indeterminate`, since it is in the log.
fn keep_key_suffixes(records: &[Record], outcomes: &mut [Option<Outcome>]) {
    let mut failed_keys: HashSet<&[u8]> = HashSet::new();
    for (record, outcome) in records.iter().zip(outcomes.iter_mut()) {
        let Some(key) = record.key.as_deref() else {
            continue;
        };
        match outcome {
            Some(Outcome::Delivered(d)) if failed_keys.contains(key) => {
                *outcome = Some(Outcome::Failed(Error::new(
                    ErrorKind::Indeterminate,
                    format!(
                        "kafka: written at partition {:?} offset {:?} after an earlier record of its key \
                         failed; handed back with it to keep the key's order",
                        d.partition, d.offset
                    ),
                )));
            }
            Some(Outcome::Delivered(_)) => {}
            _ => {
                failed_keys.insert(key);
            }
        }
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::nothing_sent(Error::closed("producer"), records));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Err(e) = self.check_batch(stream, &records).await {
            return Err(SendError::nothing_sent(self.auth.explain(e), records));
        }
        let producer = match self.usable() {
            Ok(p) => p,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        let mut pending: Vec<Option<DeliveryFuture>> = Vec::with_capacity(records.len());
        let mut outcomes: Vec<Option<Outcome>> = (0..records.len()).map(|_| None).collect();
        let mut enqueue_error = None;
        // Deliveries already awaited to make room in librdkafka's queue.
        let mut awaited = 0usize;
        for (i, record) in records.iter().enumerate() {
            let mut future_record = future_record(stream, record);
            loop {
                // As in `enqueue`: a `close` under way either sees this record queued
                // before its flush, or this send sees it closed and stops.
                let queued = {
                    let _queueing = self.queueing.read().unwrap_or_else(PoisonError::into_inner);
                    if self.closed.load(Ordering::Acquire) {
                        None
                    } else {
                        Some(producer.send_result(future_record))
                    }
                };
                let Some(queued) = queued else {
                    enqueue_error = Some((i, Error::closed("producer")));
                    break;
                };
                match queued {
                    Ok(delivery) => {
                        pending.push(Some(delivery));
                        break;
                    }
                    Err((e, returned)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        // The local queue is full: wait for our oldest delivery, then try again.
                        future_record = returned;
                        if let Some(future) = pending.get_mut(awaited).and_then(Option::take) {
                            outcomes[awaited] = Some(resolve(future.await));
                            awaited += 1;
                        } else {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Err((e, _)) => {
                        enqueue_error = Some((i, queue_refusal(e)));
                        break;
                    }
                }
            }
            if enqueue_error.is_some() {
                break;
            }
        }
        for (index, slot) in pending.into_iter().enumerate() {
            if let Some(future) = slot {
                outcomes[index] = Some(resolve(future.await));
            }
        }
        keep_key_suffixes(&records, &mut outcomes);
        let mut tally = SendTally::new(records.len());
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Some(Outcome::Delivered(d)) => tally.delivered(index, d),
                Some(Outcome::Failed(e)) => tally.failed(e),
                None => {}
            }
        }
        // Records never queued after the refusal: refused with it, after what was queued.
        if let Some((_, e)) = enqueue_error {
            tally.failed(e);
        }
        tally.give_back(records);
        self.recover_if_fatal(&producer);
        drop_off_runtime(producer);
        tally.finish()
    }

    /// Queued in librdkafka's own queue, whose `DeliveryFuture` is the handle: no copy
    /// or task of ours per record. Waits while the queue is full (`buffer_bytes`).
    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        // The slow paths are boxed so that the common one stays a small future.
        if !self.recently_checked(stream, &record)
            && let Err(e) = Box::pin(self.check_batch(stream, std::slice::from_ref(&record))).await
        {
            let e = self.auth.explain(e);
            return match e.kind() {
                ErrorKind::InvalidInput | ErrorKind::Closed => Err(e),
                _ => Ok(DeliveryHandle::ready(Err(e))),
            };
        }
        let producer = self.usable()?;
        let queueing = self.queueing.read().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        let queued = producer.send_result(future_record(stream, &record));
        drop(queueing);
        let delivery = match queued {
            Ok(delivery) => delivery,
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                match Box::pin(self.queue_when_room(&producer, stream, &record)).await? {
                    Ok(delivery) => delivery,
                    Err(refused) => return Ok(DeliveryHandle::ready(Err(refused))),
                }
            }
            Err((e, _)) => return Ok(DeliveryHandle::ready(Err(queue_refusal(e)))),
        };
        drop(producer);
        Ok(DeliveryHandle::from_future(async move {
            match resolve(delivery.await) {
                Outcome::Delivered(d) => Ok(d),
                Outcome::Failed(e) => Err(e),
            }
        }))
    }

    async fn flush(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        self.flush_all().await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Records being queued now go in before the flush below looks.
        drop(self.queueing.write().unwrap_or_else(PoisonError::into_inner));
        self.flush_all().await
    }
}

impl KafkaProducer {
    /// Waits for every queued record, whichever send queued it.
    async fn flush_all(&self) -> Result<()> {
        let producer = self.current()?;
        let timeout = self.config.delivery_timeout + Duration::from_secs(1);
        blocking(move || producer.flush(timeout))
            .await?
            .map_err(|e| self.auth.explain(error::convert("flushing the producer", e)))
    }
}

fn resolve<E>(result: Result<OwnedDeliveryResult, E>) -> Outcome {
    match result {
        Ok(Ok(d)) => match (u32::try_from(d.partition), u64::try_from(d.offset)) {
            (Ok(partition), Ok(offset)) => Outcome::Delivered(Delivery {
                partition: PartitionId::from_index(partition),
                offset: Offset::new(offset),
                timestamp: d.timestamp.to_millis().map(Timestamp::from_millis),
            }),
            // librdkafka confirms a request implicitly when a later request to the same
            // partition succeeds, since a broker checking producer sequences would have
            // refused the later one; such a report has no offset. Where the record is
            // (or whether it is there at all, on a broker that checks no sequences) is
            // unknown, so it is not reported as delivered anywhere.
            _ => Outcome::Failed(Error::new(
                ErrorKind::Indeterminate,
                format!(
                    "kafka: partition {} confirmed the record without an offset (implicitly, \
                     by a later request's success): it may be in the log",
                    d.partition
                ),
            )),
        },
        Ok(Err((e, _))) => Outcome::Failed(delivery_error(e)),
        Err(_) => Outcome::Failed(Error::new(
            ErrorKind::Indeterminate,
            "kafka: the producer was dropped before the broker answered",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(offset: u64) -> Option<Outcome> {
        Some(Outcome::Delivered(Delivery {
            partition: PartitionId::from_index(0),
            offset: Offset::new(offset),
            timestamp: None,
        }))
    }

    fn is_delivered(o: &Option<Outcome>) -> bool {
        matches!(o, Some(Outcome::Delivered(_)))
    }

    #[test]
    fn records_delivered_after_a_failed_one_of_their_key_are_handed_back() {
        let records = vec![
            Record::new("a0").with_key("a"),
            Record::new("b0").with_key("b"),
            Record::new("a1").with_key("a"),
            Record::new("b1").with_key("b"),
            Record::new("n0"),
        ];
        let mut outcomes = vec![
            Some(Outcome::Failed(Error::new(ErrorKind::Indeterminate, "implicit"))),
            delivered(1),
            delivered(2),
            delivered(3),
            delivered(4),
        ];
        keep_key_suffixes(&records, &mut outcomes);
        let kept: Vec<bool> = outcomes.iter().map(is_delivered).collect();
        assert_eq!(kept, [false, true, false, true, true]);
        let Some(Outcome::Failed(e)) = &outcomes[2] else {
            panic!("a1 handed back")
        };
        assert_eq!(e.kind(), ErrorKind::Indeterminate);
        // Never queued (None) counts as failed too.
        let mut outcomes = vec![None, delivered(1), delivered(2), delivered(3), delivered(4)];
        keep_key_suffixes(&records, &mut outcomes);
        assert!(!is_delivered(&outcomes[2]));
    }
}
