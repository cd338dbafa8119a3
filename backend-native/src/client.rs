//! The contract traits over the engine: producer, consumer, admin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tributary_core::raw::group::{Cursors, MemberId};
use tributary_core::raw::{
    GroupOperation, Pipeline, PipelineSettings, SendTally, group_only, route_batch, validate_group_name,
    validate_stream_name,
};
use tributary_core::{
    Admin, Consumer, ConsumerConfig, ConsumerMode, Delivery, DeliveryHandle, Error, ErrorKind, Offset,
    PartitionId, PartitionInfo, PartitionState, Producer, ProducerConfig, Received, Record, Result,
    SendError, StartFrom, StreamInfo, StreamSpec, Timestamp, async_trait,
};

use crate::blocking::blocking;
use crate::coalesce::Appended;
use crate::config::Durability;
use crate::engine::{Engine, StreamHandle};
use crate::log::PartitionLog;

/// The producer: batch sends written at once (concurrent sends to one partition in one
/// append, see [`crate::coalesce`]), and records handed over one at a time coalesced
/// by a [`Pipeline`] into one append per partition per batch (so one `write()`, and in
/// `sync` mode one fdatasync, covers every record queued meanwhile).
pub(crate) struct NativeProducer {
    batches: Arc<NativeBatches>,
    pipeline: Pipeline,
    closed: AtomicBool,
}

/// What a handed-over record may wait for others (none: records queue up while the
/// previous batch is written, which is the batching that costs no latency).
const DEFAULT_LINGER: Duration = Duration::ZERO;
/// Records per coalesced batch, at most.
const DEFAULT_BATCH_RECORDS: usize = 10_000;
/// Bytes per coalesced batch, at most.
const DEFAULT_BATCH_BYTES: usize = 4 << 20;
/// Bytes handed over and not yet written, at most (Kafka's Java producer's default).
const DEFAULT_BUFFER_BYTES: usize = 32 << 20;

impl NativeProducer {
    pub(crate) fn new(engine: Arc<Engine>, config: &ProducerConfig) -> Result<Self> {
        let settings = PipelineSettings::new(
            DEFAULT_LINGER,
            DEFAULT_BATCH_RECORDS,
            DEFAULT_BATCH_BYTES,
            DEFAULT_BUFFER_BYTES,
        )
        .with_config(config)?;
        let batches = Arc::new(NativeBatches {
            engine,
            closed: AtomicBool::new(false),
        });
        Ok(Self {
            pipeline: Pipeline::new(batches.clone(), settings),
            batches,
            closed: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Producer for NativeProducer {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::nothing_sent(Error::closed("producer"), records));
        }
        self.batches.send(stream, records).await
    }

    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        validate_stream_name(stream)?;
        self.batches.check_record(&record)?;
        if let Some(chosen) = &record.partition {
            // Refused here rather than in its batch, which would be resent singly.
            let partitions = match self.batches.engine.stream(stream) {
                Ok(handle) => handle.partition_count(),
                Err(e) => return Ok(DeliveryHandle::ready(Err(e))),
            };
            if chosen.index().is_none_or(|p| p >= partitions) {
                return Err(Error::invalid_input(format!(
                    "the record targets partition {chosen}, but stream {stream:?} has partitions 0 to {}",
                    partitions.saturating_sub(1)
                )));
            }
        }
        self.pipeline.enqueue(stream, record).await
    }

    async fn flush(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        self.pipeline.flush().await?;
        self.batches.engine.check_open()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let flushed = self.pipeline.close().await;
        self.batches.closed.store(true, Ordering::Release);
        flushed
    }
}

/// Batch sends, straight into the partitions' logs.
pub(crate) struct NativeBatches {
    engine: Arc<Engine>,
    closed: AtomicBool,
}

impl NativeBatches {
    /// Refuses a record no batch can hold, before it is queued with others.
    fn check_record(&self, record: &Record) -> Result<()> {
        let size = record.encoded_len();
        let max = self.engine.config.max_record_bytes;
        if size > max {
            return Err(Error::invalid_input(format!(
                "the record is {size} bytes, over the engine's max_record_bytes of {max}"
            )));
        }
        let framed = crate::codec::encoded_record_len(record);
        let limit = self.engine.max_batch_body();
        if framed > limit {
            return Err(Error::invalid_input(format!(
                "the record takes {framed} bytes once framed ({} headers), above the engine's limit of {limit}",
                record.headers.len(),
            )));
        }
        Ok(())
    }

    /// Every record's partition, after checking the whole batch (so a bad batch
    /// changes nothing).
    fn route(&self, stream: &StreamHandle, records: &[Record]) -> Result<Vec<u32>> {
        let partitions = stream.partition_count();
        let unkeyed = stream.next_unkeyed.load(Ordering::Relaxed) % partitions;
        let routes = route_batch(records, partitions, unkeyed, self.engine.config.max_record_bytes)?;
        // Headers cost more framed than counted (names, lengths): a record within
        // max_record_bytes can still exceed what one batch may hold.
        let limit = self.engine.max_batch_body();
        for (i, record) in records.iter().enumerate() {
            let framed = crate::codec::encoded_record_len(record);
            if framed > limit {
                return Err(Error::invalid_input(format!(
                    "record {i} of the batch takes {framed} bytes once framed ({} headers), above the engine's limit of {limit}",
                    record.headers.len(),
                )));
            }
        }
        if routes.used_unkeyed {
            stream
                .next_unkeyed
                .store((unkeyed + 1) % partitions, Ordering::Relaxed);
        }
        Ok(routes.partitions)
    }
}

/// Makes what was written to `log` below `end` durable (a group commit, off the async
/// threads). A failure is `Indeterminate`: the records were written but may not
/// survive, so they are neither acknowledged nor failed.
async fn sync_written(log: Arc<PartitionLog>, end: u64) -> Result<()> {
    blocking(move || log.sync_to(end)).await.map_err(|e| {
        Error::new(
            ErrorKind::Indeterminate,
            format!("written but not made durable: {e}"),
        )
        .with_source(e)
    })
}

impl NativeBatches {
    /// The common case of a send whose records all go to one partition (every
    /// single-record send): no regrouping, and appended together with concurrent
    /// sends to the partition (see [`crate::coalesce`]).
    async fn send_to_one(
        &self,
        stream: &StreamHandle,
        p: u32,
        records: Vec<Record>,
    ) -> Result<Vec<Delivery>, SendError> {
        let Some((log, id, appends)) = stream.partition(p) else {
            let e = Error::new(ErrorKind::Backend, format!("partition {p} vanished"));
            return Err(SendError::nothing_sent(e, records));
        };
        let (appended, records) = appends
            .append(records, |records| {
                let now = Timestamp::now();
                log.append(records, now).map(|base| Appended { base, now })
            })
            .await;
        let Appended { base, now } = match appended {
            Ok(appended) => appended,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        stream.notify.notify_waiters();
        if self.engine.config.durability == Durability::Sync {
            let end = base + records.len() as u64;
            if let Err(e) = sync_written(log, end).await {
                return Err(SendError::nothing_sent(e, records));
            }
            // Readers of a `sync` engine see records once synced: wake them now.
            stream.notify.notify_waiters();
        }
        Ok(records
            .iter()
            .enumerate()
            .map(|(k, r)| Delivery {
                partition: id.clone(),
                offset: Offset::new(base + k as u64),
                timestamp: Some(r.timestamp.unwrap_or(now)),
            })
            .collect())
    }
}

#[async_trait]
impl Producer for NativeBatches {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::nothing_sent(Error::closed("producer"), records));
        }
        let handle = match self.engine.stream(stream) {
            Ok(h) => h,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        let routes = match self.route(&handle, &records) {
            Ok(r) => r,
            Err(e) => return Err(SendError::nothing_sent(e, records)),
        };
        if let Some(&p) = routes.first()
            && routes.iter().all(|r| *r == p)
        {
            return self.send_to_one(&handle, p, records).await;
        }
        let now = Timestamp::now();
        // Records of each partition, in the caller's order, with their batch indexes.
        let mut by_partition: std::collections::BTreeMap<u32, (Vec<usize>, Vec<Record>)> = Default::default();
        let mut slots: Vec<Option<Record>> = records.into_iter().map(Some).collect();
        for (i, p) in routes.iter().enumerate() {
            let entry = by_partition.entry(*p).or_default();
            entry.0.push(i);
            if let Some(r) = slots[i].take() {
                entry.1.push(r);
            }
        }
        let mut tally = SendTally::new(routes.len());
        let mut to_sync: Vec<(Arc<PartitionLog>, u64, Vec<usize>, Vec<Record>)> = Vec::new();
        for (p, (indexes, recs)) in by_partition {
            let Some(log) = handle.log(p) else {
                tally.failed(Error::new(ErrorKind::Backend, format!("partition {p} vanished")));
                for (i, r) in indexes.into_iter().zip(recs) {
                    tally.unconfirmed(i, r);
                }
                continue;
            };
            match log.append(&recs, now) {
                Ok(base) => {
                    for (k, (&i, r)) in indexes.iter().zip(&recs).enumerate() {
                        tally.delivered(
                            i,
                            Delivery {
                                partition: PartitionId::from_index(p),
                                offset: Offset::new(base + k as u64),
                                timestamp: Some(r.timestamp.unwrap_or(now)),
                            },
                        );
                    }
                    if self.engine.config.durability == Durability::Sync {
                        let end = base + recs.len() as u64;
                        to_sync.push((log, end, indexes, recs));
                    }
                }
                Err(e) => {
                    tally.failed(e);
                    for (i, r) in indexes.into_iter().zip(recs) {
                        tally.unconfirmed(i, r);
                    }
                }
            }
        }
        handle.notify.notify_waiters();
        for (log, end, indexes, recs) in to_sync {
            if let Err(e) = sync_written(log, end).await {
                tally.failed(e);
                for (i, r) in indexes.into_iter().zip(recs) {
                    tally.unconfirmed(i, r);
                    tally.maybe_written(i);
                }
            }
        }
        if self.engine.config.durability == Durability::Sync {
            handle.notify.notify_waiters();
        }
        tally.finish()
    }

    /// Only [`NativeProducer`] hands records over, to its pipeline over this.
    async fn enqueue(&self, _stream: &str, _record: Record) -> Result<DeliveryHandle> {
        Err(Error::new(
            ErrorKind::Backend,
            "native: the batch sender takes no handed-over records",
        ))
    }

    async fn flush(&self) -> Result<()> {
        self.engine.check_open()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

pub(crate) struct NativeAdmin {
    pub engine: Arc<Engine>,
}

#[async_trait]
impl Admin for NativeAdmin {
    async fn create_stream(&self, spec: &StreamSpec) -> Result<()> {
        validate_stream_name(&spec.name)?;
        let partitions = spec.partitions.unwrap_or(self.engine.config.partitions);
        if partitions == 0 || partitions > crate::MAX_PARTITIONS {
            return Err(Error::invalid_input(format!(
                "stream {:?}: a partition count must be 1 to {}, got {partitions}",
                spec.name,
                crate::MAX_PARTITIONS
            )));
        }
        if let Some(key) = spec.options.keys().next() {
            return Err(Error::invalid_input(format!(
                "stream {:?}: the native engine takes no stream options (got {key:?})",
                spec.name
            )));
        }
        self.engine.create_stream(&spec.name, partitions, spec.retention)
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        self.engine.delete_stream(name)
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamInfo> {
        let handle = self.engine.stream(name)?;
        let partitions = handle
            .partitions()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (low, high) = (p.log.low(), p.log.next_offset());
                PartitionInfo {
                    id: PartitionId::from_index(i as u32),
                    parents: Vec::new(),
                    key_range: None,
                    state: PartitionState::Open,
                    low: (low < high).then(|| Offset::new(low)),
                    high: Some(Offset::new(high)),
                }
            })
            .collect();
        Ok(StreamInfo {
            name: name.to_owned(),
            partitions,
            retention: handle.retention,
        })
    }

    async fn list_streams(&self) -> Result<Vec<String>> {
        self.engine.check_open()?;
        Ok(self.engine.streams().keys().cloned().collect())
    }

    async fn set_partitions(&self, name: &str, count: u32) -> Result<()> {
        if count == 0 || count > crate::MAX_PARTITIONS {
            return Err(Error::invalid_input(format!(
                "stream {name:?}: a partition count must be 1 to {}, got {count}",
                crate::MAX_PARTITIONS
            )));
        }
        self.engine.set_partitions(name, count)
    }
}

pub(crate) struct NativeConsumer {
    engine: Arc<Engine>,
    stream: Arc<StreamHandle>,
    member: Option<(String, MemberId)>,
    start: StartFrom,
    created: Instant,
    cursors: Cursors,
    rotation: u32,
    closed: bool,
    /// Read buffer reused across polls (see `PartitionLog::read`).
    scratch: bytes::BytesMut,
}

fn resolve(log: &PartitionLog, start: &StartFrom) -> Result<u64> {
    Ok(match start {
        StartFrom::Earliest => log.low(),
        StartFrom::Latest => log.next_offset(),
        StartFrom::At(o) => o.as_u64().unwrap_or(u64::MAX),
        StartFrom::After(o) => o.as_u64().map_or(u64::MAX, |n| n.saturating_add(1)),
        StartFrom::Timestamp(t) => log.offset_for_timestamp(*t)?,
    })
}

impl NativeConsumer {
    pub(crate) async fn new(engine: Arc<Engine>, config: ConsumerConfig) -> Result<Self> {
        let stream = engine.stream(&config.stream)?;
        let member = match config.mode {
            ConsumerMode::Broadcast => None,
            ConsumerMode::Group(group) => {
                validate_group_name(&group)?;
                let id = engine.groups().new_member();
                engine.with_group(&group, &stream.name, |state| state.join(id, Instant::now()));
                Some((group, id))
            }
        };
        let mut consumer = Self {
            engine,
            stream,
            member,
            start: config.start,
            created: Instant::now(),
            cursors: Cursors::default(),
            rotation: 0,
            closed: false,
            scratch: bytes::BytesMut::new(),
        };
        consumer.sync().await?;
        consumer.stream.notify.notify_waiters();
        Ok(consumer)
    }

    fn check_live(&self) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        self.engine.check_open()?;
        match self.engine.streams().get(&*self.stream.name) {
            Some(s) if s.incarnation == self.stream.incarnation => Ok(()),
            _ => Err(Error::not_found(format!(
                "stream {:?} was deleted",
                self.stream.name
            ))),
        }
    }

    /// Brings the assignment up to date (see `tributary_core::raw::group::GroupState::sync`),
    /// persisting every commit it makes; a broadcast reader just adds partitions
    /// created since it last looked.
    async fn sync(&mut self) -> Result<Option<Instant>> {
        let stream = self.stream.clone();
        let Some((group, id)) = &self.member else {
            let parts = stream.partitions();
            let created = self.created;
            for (p, part) in (0u32..).zip(parts.iter()) {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.cursors.positions.entry(p) {
                    // Partitions created after this consumer started are read from their
                    // start: every record in them is new to it.
                    slot.insert(if part.created > created {
                        part.log.low()
                    } else {
                        resolve(&part.log, &self.start)?
                    });
                }
            }
            return Ok(None);
        };
        let outcome = {
            let parts = stream.partitions();
            let partitions = u32::try_from(parts.len()).unwrap_or(u32::MAX);
            // Resolved only for partitions being taken (see the broadcast case above).
            let (created, start) = (self.created, &self.start);
            let initial = |p: u32| {
                let part = &parts[p as usize];
                if part.created > created {
                    Ok(part.log.low())
                } else {
                    resolve(&part.log, start)
                }
            };
            let session_timeout = self.engine.config.session_timeout;
            let cursors = &mut self.cursors;
            self.engine.with_group(group, &stream.name, |state| {
                state.sync(*id, cursors, partitions, initial, Instant::now(), session_timeout)
            })
        };
        if outcome.changed {
            stream.notify.notify_waiters();
        }
        self.engine
            .persist_commits(group, &stream, outcome.committed)
            .await?;
        match outcome.error {
            Some(e) => Err(e),
            None => Ok(outcome.look_again),
        }
    }

    fn read(&mut self, max: usize) -> Result<Vec<Received>> {
        let assigned: Vec<u32> = self.cursors.positions.keys().copied().collect();
        let mut out = Vec::new();
        if assigned.is_empty() || max == 0 {
            return Ok(out);
        }
        let first = assigned.iter().position(|p| *p >= self.rotation).unwrap_or(0);
        self.rotation = assigned[first].wrapping_add(1);
        for &p in assigned[first..].iter().chain(&assigned[..first]) {
            if out.len() >= max {
                break;
            }
            let (Some(log), Some(&from)) = (self.stream.log(p), self.cursors.positions.get(&p)) else {
                continue;
            };
            let records = match log.read(from, max - out.len(), &mut self.scratch) {
                Ok(records) => records,
                // A damaged partition must not cost the records already taken from the
                // others (their cursors moved): they go out now, the error with the next
                // poll that reaches it first.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            let Some(last) = records.last() else { continue };
            self.cursors.positions.insert(p, last.offset + 1);
            let partition = PartitionId::from_index(p);
            for r in records {
                if self.member.is_some() {
                    self.cursors.delivered(&partition, r.offset);
                }
                out.push(Received {
                    stream: self.stream.name.clone(),
                    partition: partition.clone(),
                    offset: Offset::new(r.offset),
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                    timestamp: Some(r.timestamp),
                });
            }
        }
        Ok(out)
    }

    async fn commit_acked(&mut self) -> Result<()> {
        let (group, id) = group_only(self.member.as_ref(), GroupOperation::Commit)?;
        let cursors = &mut self.cursors;
        let made = self
            .engine
            .with_group(group, &self.stream.name, |state| state.commit_acked(*id, cursors));
        let commits = match &made {
            Ok(c) => c.clone(),
            Err(_) => Vec::new(),
        };
        self.engine.persist_commits(group, &self.stream, commits).await?;
        made.map(drop)
    }

    fn leave(&mut self) {
        if let Some((group, id)) = &self.member {
            let mut groups = self.engine.groups();
            if let Some(state) = groups
                .states
                .get_mut(&(group.clone(), self.stream.name.to_string()))
            {
                state.leave(*id, &mut self.cursors);
            }
            drop(groups);
            self.stream.notify.notify_waiters();
        }
        self.cursors = Cursors::default();
    }
}

#[async_trait]
impl Consumer for NativeConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.check_live()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tributary_core::raw::deadline_after(timeout);
        let heartbeat = self.engine.config.session_timeout / 3;
        let stream = self.stream.clone();
        loop {
            let notified = stream.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so an append in between still wakes us.
            notified.as_mut().enable();
            self.check_live()?;
            let look_again = self.sync().await?;
            let records = self.read(max)?;
            if !records.is_empty() {
                return Ok(records);
            }
            if !tributary_core::raw::group::wait_for_news(notified.as_mut(), deadline, heartbeat, look_again)
                .await
            {
                return Ok(Vec::new());
            }
        }
    }

    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        group_only(self.member.as_ref(), GroupOperation::Ack)?;
        self.cursors.acks.ack(partition, offset)
    }

    async fn commit(&mut self) -> Result<()> {
        self.check_live()?;
        self.commit_acked().await
    }

    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        self.check_live()?;
        let p = self.cursors.held(partition)?;
        let log = self
            .stream
            .log(p)
            .ok_or_else(|| Error::new(ErrorKind::NotAssigned, format!("no partition {partition}")))?;
        let cursor = resolve(&log, &to)?;
        self.cursors.seek(partition, cursor)
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.cursors.assignment()
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let committed = if self.member.is_some() && self.engine.check_open().is_ok() {
            self.commit_acked().await
        } else {
            Ok(())
        };
        // Only now: a close dropped while its commit was written must still leave the
        // group when the consumer is dropped (Drop leaves unless closed).
        self.closed = true;
        self.leave();
        committed
    }
}

impl Drop for NativeConsumer {
    fn drop(&mut self) {
        if !self.closed {
            self.leave();
        }
    }
}
