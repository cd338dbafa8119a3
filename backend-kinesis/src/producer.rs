//! Sending: records batched into PutRecords calls per shard, only failed entries
//! retried, per-key order kept.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use tokio::time::Instant;
use tributary_core::raw::{Pipeline, PipelineSettings, SendTally, backoff};
use tributary_core::{
    Delivery, DeliveryHandle, Error, ErrorKind, PartitionId, Producer, Record, Result, SendError, async_trait,
};

use crate::Shared;
use crate::error::{convert, kind_of_code, maybe_applied};
use crate::shards::{Lanes, ShardMap, list_shards};
use crate::{envelope, keys, position};

/// Kinesis's limits on one PutRecords call.
const MAX_ENTRIES_PER_CALL: usize = 500;
const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;

/// Sends records with PutRecords.
///
/// A batch is split by shard and each shard's records go out in calls of up to 500
/// records and 5 MiB, shards concurrently. Only the entries Kinesis refuses are sent
/// again, after an exponential backoff with full jitter, until `delivery_timeout`.
/// With `strict_key_order` (the default) a call never holds two records of one key, so
/// a refused entry can never be overtaken by a later record of its key.
///
/// Records handed over with [`Producer::enqueue`] are gathered per shard, from every
/// caller, into such batches (up to the producer's `batch_records`, default 5,000: ten
/// full calls, and `batch_bytes`, default 20 MiB), one batch in flight per shard while
/// the next fills (so one throttled shard holds up no other; the shards are those open
/// when the first record for the stream was handed over, whose `enqueue` waits for the
/// shard listing, and a key keeps its lane across reshards), in the spirit of the KPL's buffering (`linger` is its
/// `RecordMaxBufferedTime`; default 0: a batch leaves as soon as the previous one is
/// done). At most `buffer_bytes` (default 32 MiB) are buffered.
#[derive(Clone, Debug)]
pub struct KinesisProducer {
    batches: Batches,
    pipeline: Arc<Pipeline>,
    /// Each stream's pipeline lanes, fixed when a record is first handed over for it.
    lanes: Arc<Mutex<HashMap<String, Arc<Lanes>>>>,
    /// Held while a stream's lanes are made, so that callers arriving together list
    /// its shards once.
    making_lanes: Arc<tokio::sync::Mutex<()>>,
    /// Closed for callers: the pipeline still sends what was handed over before.
    closed: Arc<AtomicBool>,
}

/// Batch sends: what the pipeline and `send` call.
#[derive(Clone, Debug)]
struct Batches {
    inner: Arc<Inner>,
}

const DEFAULT_LINGER: std::time::Duration = std::time::Duration::ZERO;
const DEFAULT_BATCH_RECORDS: usize = 10 * MAX_ENTRIES_PER_CALL;
const DEFAULT_BATCH_BYTES: usize = 4 * MAX_BYTES_PER_CALL;
const DEFAULT_BUFFER_BYTES: usize = 32 << 20;

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    maps: Mutex<HashMap<String, (Instant, Arc<ShardMap>)>>,
    closed: AtomicBool,
    /// Sends hold it shared; flush takes it exclusively to wait for them.
    gate: tokio::sync::RwLock<()>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    entries: AtomicU64,
    acknowledged: AtomicU64,
    refused: AtomicU64,
}

/// What a producer has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerStats {
    /// PutRecords calls made.
    pub put_records_calls: u64,
    /// Entries sent, retries included.
    pub entries_sent: u64,
    /// Records Kinesis acknowledged.
    pub records_acknowledged: u64,
    /// Entries Kinesis refused (throttled or failed) and that were retried or given up.
    pub entries_refused: u64,
}

/// One record ready to send.
struct Entry {
    index: usize,
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Bytes,
    size: usize,
    /// The shard the map expects it in.
    shard: Option<PartitionId>,
}

/// How one shard's records fared.
struct ShardOutcome {
    delivered: Vec<(usize, Delivery)>,
    failure: Option<Error>,
    /// Indexes of records in a call whose outcome is unknown.
    maybe_persisted: HashSet<usize>,
    /// A record landed in another shard than the map said: the map is out of date.
    stale_map: bool,
}

enum Unready {
    Invalid(Error),
    UnknownShard(PartitionId),
}

impl KinesisProducer {
    pub(crate) fn default_settings() -> PipelineSettings {
        PipelineSettings::new(
            DEFAULT_LINGER,
            DEFAULT_BATCH_RECORDS,
            DEFAULT_BATCH_BYTES,
            DEFAULT_BUFFER_BYTES,
        )
    }

    pub(crate) fn new(shared: Arc<Shared>, settings: PipelineSettings) -> Self {
        let batches = Batches {
            inner: Arc::new(Inner {
                shared,
                maps: Mutex::default(),
                closed: AtomicBool::new(false),
                gate: tokio::sync::RwLock::new(()),
                counters: Counters::default(),
            }),
        };
        Self {
            pipeline: Arc::new(Pipeline::new(Arc::new(batches.clone()), settings)),
            batches,
            lanes: Arc::default(),
            making_lanes: Arc::default(),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The pipeline lane of `record`: for a keyed record, the lane of the shard its
    /// key hashed to when the stream's lanes were made (on the first record handed
    /// over for it), wherever the record is sent, so that a key's records share one
    /// lane; for a record without a key sent to a shard, that shard's lane.
    ///
    /// # Errors
    /// The error of listing the stream's shards (`NotFound` for a missing stream) when
    /// its lanes are not made yet. Cancel safe.
    async fn lane_of(&self, stream: &str, record: &Record) -> Result<u32> {
        let lock = || {
            self.lanes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let known = lock().get(stream).cloned();
        let lanes = match known {
            Some(lanes) => lanes,
            None => {
                let _making = self.making_lanes.lock().await;
                let known = lock().get(stream).cloned();
                match known {
                    Some(lanes) => lanes,
                    None => {
                        let made = Arc::new(Lanes::new(&*self.batches.shard_map(stream, false).await?));
                        lock().insert(stream.to_owned(), made.clone());
                        made
                    }
                }
            }
        };
        lanes
            .for_record(record.key.as_ref(), record.partition.as_ref())
            .map_err(Error::invalid_input)
    }

    /// Counters of calls and entries, for monitoring and benchmarks.
    pub fn stats(&self) -> ProducerStats {
        let c = &self.batches.inner.counters;
        ProducerStats {
            put_records_calls: c.calls.load(Ordering::Relaxed),
            entries_sent: c.entries.load(Ordering::Relaxed),
            records_acknowledged: c.acknowledged.load(Ordering::Relaxed),
            entries_refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// Refuses what no batch could send, before the record is queued with others: a
    /// bad key, headers without the envelope, or a record over the size limit before
    /// any envelope (with one, the batch finds out and the record fails alone).
    fn check_record(&self, record: &Record) -> Result<()> {
        let config = &self.batches.inner.shared.config;
        let key = keys::partition_key(record.key.as_ref()).map_err(Error::invalid_input)?;
        if !config.headers_envelope && !record.headers.is_empty() {
            return Err(Error::invalid_input(
                "the record has headers, which Kinesis records cannot hold: enable headers_envelope \
                 to keep them inside the data (see the tributary-kinesis docs)",
            ));
        }
        let size = key.len() + record.value.len();
        if size > config.max_record_bytes {
            return Err(Error::invalid_input(format!(
                "the record is {size} bytes (partition key + data), above the limit of {} bytes",
                config.max_record_bytes
            )));
        }
        Ok(())
    }
}

impl Batches {
    async fn shard_map(&self, stream: &str, fresh: bool) -> Result<Arc<ShardMap>> {
        let ttl = self.inner.shared.config.metadata_refresh;
        if !fresh
            && let Some((at, map)) = self.lock_maps().get(stream)
            && at.elapsed() < ttl
        {
            return Ok(map.clone());
        }
        let map = Arc::new(ShardMap::new(
            &list_shards(&self.inner.shared.client, stream).await?,
        ));
        self.lock_maps()
            .insert(stream.to_string(), (Instant::now(), map.clone()));
        Ok(map)
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<ShardMap>)>> {
        self.inner
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prepare(&self, index: usize, record: &Record, map: &ShardMap) -> Result<Entry, Unready> {
        let config = &self.inner.shared.config;
        let invalid = |why: String| Unready::Invalid(Error::invalid_input(format!("record {index}: {why}")));
        let partition_key = keys::partition_key(record.key.as_ref()).map_err(invalid)?;
        let data = if config.headers_envelope {
            envelope::wrap(&record.value, &record.headers, record.timestamp).map_err(invalid)?
        } else if !record.headers.is_empty() {
            return Err(invalid(
                "it has headers, which Kinesis records cannot hold: enable headers_envelope to keep \
                 them inside the data (see the tributary-kinesis docs)"
                    .into(),
            ));
        } else {
            record.value.clone()
        };
        let size = partition_key.len() + data.len();
        if size > config.max_record_bytes {
            return Err(invalid(format!(
                "{size} bytes (partition key + data{}) is above the limit of {} bytes",
                if config.headers_envelope {
                    " with the header envelope"
                } else {
                    ""
                },
                config.max_record_bytes
            )));
        }
        let explicit = match &record.partition {
            Some(p) => Some(map.start_of(p).ok_or_else(|| Unready::UnknownShard(p.clone()))?),
            None => None,
        };
        let hash = explicit.unwrap_or_else(|| keys::hash_key(&partition_key));
        Ok(Entry {
            index,
            shard: map.shard_for(hash).cloned(),
            explicit_hash_key: explicit.map(|h| h.to_string()),
            partition_key,
            data,
            size,
        })
    }

    async fn prepare_all(&self, stream: &str, records: &[Record]) -> Result<Vec<Entry>> {
        let mut map = self.shard_map(stream, false).await?;
        let mut refreshed = false;
        let mut entries = Vec::with_capacity(records.len());
        let mut i = 0;
        while let Some(record) = records.get(i) {
            match self.prepare(i, record, &map) {
                Ok(entry) => entries.push(entry),
                Err(Unready::Invalid(e)) => return Err(e),
                Err(Unready::UnknownShard(p)) if !refreshed => {
                    // A reshard may have opened it since the map was made.
                    map = self.shard_map(stream, true).await?;
                    refreshed = true;
                    entries.clear();
                    i = 0;
                    let _ = p;
                    continue;
                }
                Err(Unready::UnknownShard(p)) => {
                    return Err(Error::invalid_input(format!(
                        "record {i}: {p} is not an open shard of {stream}"
                    )));
                }
            }
            i += 1;
        }
        Ok(entries)
    }

    /// Sends one shard's entries, in order, until all are acknowledged or it gives up.
    async fn send_shard(&self, stream: &str, entries: Vec<Entry>, deadline: Instant) -> ShardOutcome {
        let config = &self.inner.shared.config;
        let counters = &self.inner.counters;
        let mut pending: VecDeque<Entry> = entries.into();
        let mut outcome = ShardOutcome {
            delivered: Vec::new(),
            failure: None,
            maybe_persisted: HashSet::new(),
            stale_map: false,
        };
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let chosen = choose(&pending, config.strict_key_order);
            let request: Vec<PutRecordsRequestEntry> = chosen
                .iter()
                .filter_map(|&pos| pending.get(pos))
                .filter_map(|e| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(e.data.to_vec()))
                        .partition_key(&e.partition_key)
                        .set_explicit_hash_key(e.explicit_hash_key.clone())
                        .build()
                        .ok()
                })
                .collect();
            counters.calls.fetch_add(1, Ordering::Relaxed);
            counters
                .entries
                .fetch_add(request.len() as u64, Ordering::Relaxed);
            let sent = self
                .inner
                .shared
                .producer_client
                .put_records()
                .stream_name(stream)
                .set_records(Some(request))
                .send()
                .await;
            let last_error = match sent {
                Ok(out) if out.records().len() == chosen.len() => {
                    let mut refused: Option<Error> = None;
                    // A failure retrying cannot mend. The rest of the answer is still
                    // read, so records Kinesis accepted are never handed back as unsent.
                    let mut fatal: Option<Error> = None;
                    let mut acked = Vec::new();
                    for (&pos, result) in chosen.iter().zip(out.records()) {
                        let Some(entry) = pending.get(pos) else { continue };
                        match (result.sequence_number(), result.shard_id()) {
                            (Some(seq), Some(shard)) => {
                                let offset = match position::offset_of(seq, 0) {
                                    Ok(o) => o,
                                    Err(e) => {
                                        outcome.maybe_persisted.insert(entry.index);
                                        fatal.get_or_insert(e);
                                        continue;
                                    }
                                };
                                let partition = PartitionId::new(shard);
                                if entry.shard.as_ref() != Some(&partition) {
                                    outcome.stale_map = true;
                                }
                                outcome.delivered.push((
                                    entry.index,
                                    Delivery {
                                        partition,
                                        offset,
                                        timestamp: None,
                                    },
                                ));
                                acked.push(pos);
                            }
                            _ => {
                                counters.refused.fetch_add(1, Ordering::Relaxed);
                                let code = result.error_code().unwrap_or("UnknownError");
                                let kind = kind_of_code(code);
                                let error = Error::new(
                                    kind,
                                    format!(
                                        "Kinesis refused a record of {stream}: {code}: {}",
                                        result.error_message().unwrap_or("no message")
                                    ),
                                );
                                if kind.is_retryable() {
                                    refused = Some(error);
                                } else {
                                    fatal.get_or_insert(error);
                                }
                            }
                        }
                    }
                    counters
                        .acknowledged
                        .fetch_add(acked.len() as u64, Ordering::Relaxed);
                    remove_positions(&mut pending, &acked);
                    // Sending more of this shard now could put later records of a key
                    // before the failed one: stop and hand the rest back.
                    if let Some(error) = fatal {
                        outcome.failure = Some(error);
                        return outcome;
                    }
                    match refused {
                        None => {
                            attempt = 0;
                            continue;
                        }
                        Some(error) => error,
                    }
                }
                Ok(out) => {
                    for &pos in &chosen {
                        if let Some(e) = pending.get(pos) {
                            outcome.maybe_persisted.insert(e.index);
                        }
                    }
                    outcome.failure = Some(Error::new(
                        ErrorKind::Backend,
                        format!(
                            "Kinesis answered {} entries for {} records sent to {stream}",
                            out.records().len(),
                            chosen.len()
                        ),
                    ));
                    return outcome;
                }
                Err(e) => {
                    if maybe_applied(&e) {
                        for &pos in &chosen {
                            if let Some(entry) = pending.get(pos) {
                                outcome.maybe_persisted.insert(entry.index);
                            }
                        }
                    }
                    let error = convert(&format!("sending records to {stream}"), e);
                    if !error.is_retryable() {
                        outcome.failure = Some(error);
                        return outcome;
                    }
                    error
                }
            };
            attempt = attempt.saturating_add(1);
            let pause = backoff(config.retry_base, config.retry_max, attempt - 1);
            let now = Instant::now();
            if now + pause >= deadline {
                outcome.failure = Some(Error::new(
                    last_error.kind(),
                    format!(
                        "gave up after {:?} (delivery_timeout): {}",
                        config.delivery_timeout,
                        last_error.message()
                    ),
                ));
                return outcome;
            }
            tracing::debug!(attempt, ?pause, "retrying refused Kinesis entries: {last_error}");
            tokio::time::sleep(pause).await;
        }
        outcome
    }
}

/// The positions in `pending` of the next call's entries.
fn choose(pending: &VecDeque<Entry>, strict_key_order: bool) -> Vec<usize> {
    let mut chosen = Vec::new();
    let mut bytes = 0usize;
    let mut keys: HashSet<&str> = HashSet::new();
    for (pos, entry) in pending.iter().enumerate() {
        if chosen.len() == MAX_ENTRIES_PER_CALL {
            break;
        }
        // The first pending record of a key blocks the later ones, chosen or not.
        if strict_key_order && !keys.insert(entry.partition_key.as_str()) {
            continue;
        }
        if bytes + entry.size > MAX_BYTES_PER_CALL {
            break;
        }
        bytes += entry.size;
        chosen.push(pos);
    }
    chosen
}

fn remove_positions(pending: &mut VecDeque<Entry>, positions: &[usize]) {
    let mut positions = positions.to_vec();
    positions.sort_unstable();
    for pos in positions.into_iter().rev() {
        pending.remove(pos);
    }
}

#[async_trait]
impl Producer for KinesisProducer {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::nothing_sent(Error::closed("producer"), records));
        }
        self.batches.send(stream, records).await
    }

    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        crate::validate_stream_name(stream)?;
        self.check_record(&record)?;
        // A stream whose shards cannot be listed fails the record as a batch send
        // would: it was never sent, and a later record of its key may go.
        let lane = match self.lane_of(stream, &record).await {
            Ok(lane) => lane,
            Err(e) => return Ok(DeliveryHandle::ready(Err(e))),
        };
        self.pipeline.enqueue_to_lane(stream, lane, record).await
    }

    async fn flush(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        self.pipeline.flush().await?;
        self.batches.flush().await
    }

    async fn close(&self) -> Result<()> {
        // Callers are refused from here; what was handed over still goes out.
        self.closed.store(true, Ordering::Release);
        let flushed = self.pipeline.close().await;
        self.batches.close().await?;
        flushed
    }
}

#[async_trait]
impl Producer for Batches {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SendError::nothing_sent(Error::closed("producer"), records));
        }
        let _sending = self.inner.gate.read().await;
        if let Err(e) = crate::validate_stream_name(stream) {
            return Err(SendError::nothing_sent(e, records));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let entries = match self.prepare_all(stream, &records).await {
            Ok(entries) => entries,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        let deadline = Instant::now() + self.inner.shared.config.delivery_timeout;
        let mut by_shard: BTreeMap<Option<PartitionId>, Vec<Entry>> = BTreeMap::new();
        for entry in entries {
            by_shard.entry(entry.shard.clone()).or_default().push(entry);
        }
        let outcomes = futures::future::join_all(
            by_shard
                .into_values()
                .map(|entries| self.send_shard(stream, entries, deadline)),
        )
        .await;
        let mut tally = SendTally::new(records.len());
        for outcome in outcomes {
            for (index, delivery) in outcome.delivered {
                tally.delivered(index, delivery);
            }
            for index in outcome.maybe_persisted {
                tally.maybe_written(index);
            }
            if outcome.stale_map {
                self.lock_maps().remove(stream);
            }
            if let Some(error) = outcome.failure {
                tally.failed(error);
            }
        }
        tally.give_back(records);
        tally.finish()
    }

    /// Only [`KinesisProducer`] hands records over, to its pipeline over this.
    async fn enqueue(&self, _stream: &str, _record: Record) -> Result<DeliveryHandle> {
        Err(Error::new(
            ErrorKind::Backend,
            "kinesis: the batch sender takes no handed-over records",
        ))
    }

    async fn flush(&self) -> Result<()> {
        drop(self.inner.gate.write().await);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        drop(self.inner.gate.write().await);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, key: &str, size: usize) -> Entry {
        Entry {
            index,
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::new(),
            size,
            shard: None,
        }
    }

    #[test]
    fn a_call_takes_the_first_pending_record_of_each_key() {
        let pending: VecDeque<Entry> = [("a", 1), ("a", 1), ("b", 1), ("c", 1), ("b", 1)]
            .iter()
            .enumerate()
            .map(|(i, (k, s))| entry(i, k, *s))
            .collect();
        assert_eq!(choose(&pending, true), vec![0, 2, 3]);
        assert_eq!(choose(&pending, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_call_stays_within_kinesis_limits() {
        let many: VecDeque<Entry> = (0..1200).map(|i| entry(i, &format!("k{i}"), 10)).collect();
        assert_eq!(choose(&many, true).len(), MAX_ENTRIES_PER_CALL);
        let big: VecDeque<Entry> = (0..10).map(|i| entry(i, &format!("k{i}"), 1024 * 1024)).collect();
        assert_eq!(choose(&big, true).len(), 5);
    }
}
