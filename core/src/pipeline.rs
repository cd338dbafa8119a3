//! A producer pipeline over an engine's batch `send`: records handed over one at a time
//! with [`Producer::enqueue`](crate::Producer::enqueue) are queued per lane and sent in
//! batches by one task, so that the loop everybody writes first (hand each record over
//! as it comes) runs at batch speed.
//!
//! Records queue in lanes: one per stream, or several when the engine names them
//! ([`Pipeline::enqueue_to_lane`]: the Kinesis engine keeps one per shard, so that one
//! throttled shard holds up no other). Per lane, one batch is in flight at a time and
//! batches go out in the order their records were handed over, so per-key order (a
//! key's records share a lane) is the engine's batch order; while a batch is in flight
//! the next one fills (natural batching), and `linger` may hold a batch back for more
//! records. Buffered bytes (queued and in flight) are bounded: `enqueue` waits
//! for room, in the order callers arrived, and nothing is ever dropped.
//!
//! When records of a batch fail (other than as bad input), the records of their keys
//! still queued fail with them, unsent: so for every key, the records that failed are a
//! suffix of those handed over before the failure was reported, and resending them in
//! order keeps the key's order, as the batch `send`'s `unsent` promises.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::client::{Producer, ProducerConfig};
use crate::delivery::{DeliveryHandle, DeliverySender};
use crate::error::{Error, ErrorKind, Result};
use crate::record::{Delivery, Record};
use crate::send::SendError;

/// How a [`Pipeline`] batches: an engine's defaults, overridden by the portable settings
/// of [`ProducerConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineSettings {
    /// How long a record may wait for others to fill its batch. A batch goes out at once
    /// when it is full, on `flush`, or when its lane has no batch in flight and
    /// `linger` is zero.
    pub linger: Duration,
    /// Records in one batch, at most.
    pub batch_records: usize,
    /// Bytes ([`Record::encoded_len`]) in one batch, at most (a larger record goes alone).
    pub batch_bytes: usize,
    /// Bytes handed over and not yet confirmed, at most, each record counting its
    /// [`Record::encoded_len`] plus [`RECORD_OVERHEAD`]: `enqueue` waits for room.
    pub buffer_bytes: usize,
}

impl PipelineSettings {
    /// Settings with an engine's own defaults.
    pub fn new(linger: Duration, batch_records: usize, batch_bytes: usize, buffer_bytes: usize) -> Self {
        Self {
            linger,
            batch_records,
            batch_bytes,
            buffer_bytes,
        }
    }

    /// These defaults, overridden by what `config` sets, checked.
    ///
    /// # Errors
    /// `InvalidConfig` naming a setting of zero or a buffer smaller than a batch.
    pub fn with_config(self, config: &ProducerConfig) -> Result<Self> {
        let settings = Self {
            linger: config.linger.unwrap_or(self.linger),
            batch_records: config.batch_records.unwrap_or(self.batch_records),
            batch_bytes: config.batch_bytes.unwrap_or(self.batch_bytes),
            buffer_bytes: config.buffer_bytes.unwrap_or(self.buffer_bytes),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// `InvalidConfig` naming a setting of zero, one too large, or a buffer smaller
    /// than a batch.
    pub fn validate(&self) -> Result<()> {
        if self.batch_records == 0 || self.batch_bytes == 0 || self.buffer_bytes == 0 {
            return Err(Error::invalid_config(format!(
                "producer: batch_records ({}), batch_bytes ({}) and buffer_bytes ({}) must be above 0",
                self.batch_records, self.batch_bytes, self.buffer_bytes
            )));
        }
        if self.buffer_bytes > MAX_BUFFER_BYTES {
            return Err(Error::invalid_config(format!(
                "producer: buffer_bytes ({}) is above the limit of {MAX_BUFFER_BYTES}",
                self.buffer_bytes
            )));
        }
        if self.buffer_bytes < self.batch_bytes {
            return Err(Error::invalid_config(format!(
                "producer: buffer_bytes ({}) is smaller than batch_bytes ({}): no batch could fill",
                self.buffer_bytes, self.batch_bytes
            )));
        }
        if self.linger > MAX_LINGER {
            return Err(Error::invalid_config(format!(
                "producer: linger ({:?}) is above the limit of {MAX_LINGER:?}",
                self.linger
            )));
        }
        Ok(())
    }
}

/// What one queued record costs besides its bytes (its queue entry, handle and
/// channel), counted against `buffer_bytes` so that the bound holds for small records.
pub const RECORD_OVERHEAD: usize = 256;

/// The largest `buffer_bytes`: what a semaphore can count, rounded down to 1 TiB.
const MAX_BUFFER_BYTES: usize = 1 << 40;
/// The longest `linger` (Kafka's `linger.ms` allows 900 s).
const MAX_LINGER: Duration = Duration::from_secs(900);

/// Records handed over without waiting, batched into an engine's [`Producer::send`].
///
/// An engine keeps one per producer and answers `enqueue`, `flush` and `close` with it.
/// Its task starts with the first `enqueue`, on the runtime of that call. Dropping the
/// pipeline without `close` lets the task send everything already handed over (without
/// lingering) and resolve every handle, then end. If the task's runtime stops first,
/// the handles of records in flight resolve to `Indeterminate`, those still queued to
/// `Unavailable` (never sent), and the next `enqueue` starts a task on its runtime.
pub struct Pipeline {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Pipeline")
            .field("settings", &self.shared.settings)
            .field("streams", &state.lanes.len())
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

struct Shared {
    sender: Arc<dyn Producer>,
    settings: PipelineSettings,
    /// One permit per byte of buffer (queued and in flight).
    room: Semaphore,
    state: Mutex<State>,
    /// `State::closed`, readable without the lock.
    closed: AtomicBool,
    /// Wakes the task: a lane may have a batch to send, or the pipeline closes.
    work: Notify,
    /// Wakes `flush` callers: a batch completed.
    progress: Notify,
}

#[derive(Default)]
struct State {
    /// Each stream's lanes, by lane number.
    lanes: HashMap<String, HashMap<u32, Lane>>,
    /// Sequence number of the next record handed over.
    next_seq: u64,
    /// Records numbered below this go out without lingering (a flush waits for them).
    hurry_below: u64,
    /// Records and bytes handed over and not yet resolved.
    buffered_records: usize,
    buffered_bytes: usize,
    closed: bool,
    /// The pipeline was dropped: the task sends what is left, then ends.
    detached: bool,
    task_started: bool,
    /// Permits taken by records handed over and not yet resolved (given back when they
    /// are, or all at once if the task dies).
    held_permits: usize,
}

/// One lane's records: queued in the order handed over, and the batch in flight.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Sequence number of the first record of the batch in flight.
    in_flight: Option<u64>,
    /// When the oldest queued record was handed over.
    since: Option<Instant>,
}

impl Lane {
    fn oldest(&self) -> Option<u64> {
        self.in_flight.or_else(|| self.queue.front().map(|q| q.seq))
    }

    /// Removes the queued records of `keys`, in order.
    fn take_keys(&mut self, keys: &HashSet<Bytes>) -> Vec<Queued> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for queued in self.queue.drain(..) {
            if queued.record.key.as_ref().is_some_and(|k| keys.contains(k)) {
                self.queued_bytes -= queued.size;
                taken.push(queued);
            } else {
                kept.push_back(queued);
            }
        }
        self.queue = kept;
        if self.queue.is_empty() {
            self.since = None;
        }
        taken
    }
}

struct Queued {
    seq: u64,
    record: Record,
    size: usize,
    permits: u32,
    reply: DeliverySender,
}

/// A batch taken from a lane.
struct Batch {
    stream: String,
    lane: u32,
    records: Vec<Record>,
    replies: Vec<DeliverySender>,
    bytes: usize,
    permits: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn permits_for(&self, size: usize) -> u32 {
        // A record larger than the whole buffer waits for all of it and goes alone.
        let permits = (size + RECORD_OVERHEAD).min(self.settings.buffer_bytes);
        u32::try_from(permits).unwrap_or(u32::MAX)
    }
}

impl Pipeline {
    /// A pipeline sending through `sender`'s batch [`Producer::send`].
    pub fn new(sender: Arc<dyn Producer>, settings: PipelineSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                sender,
                settings,
                room: Semaphore::new(settings.buffer_bytes.min(Semaphore::MAX_PERMITS)),
                state: Mutex::new(State::default()),
                closed: AtomicBool::new(false),
                work: Notify::new(),
                progress: Notify::new(),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> PipelineSettings {
        self.shared.settings
    }

    /// Records and bytes handed over and not yet resolved.
    pub fn buffered(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.buffered_records, state.buffered_bytes)
    }

    /// Queues `record` for `stream`, waiting only for room in the buffer.
    ///
    /// # Errors
    /// `Closed` after [`close`](Pipeline::close) (also for a call waiting for room
    /// when the pipeline closes), `Unsupported` outside a tokio runtime. Cancel safe:
    /// dropped before it returns, it has queued nothing.
    pub async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        self.enqueue_to_lane(stream, 0, record).await
    }

    /// Queues `record` for `stream` in lane `lane`, waiting only for room in the buffer.
    /// Lanes of one stream send their batches independently (one in flight per lane),
    /// so per-key order holds only if every record of a key goes to the same lane.
    /// [`enqueue`](Pipeline::enqueue) uses lane 0. Lane numbers are an engine's to
    /// choose (the Kinesis engine uses the shard a key hashed to when it first sent to
    /// the stream).
    ///
    /// # Errors
    /// As [`enqueue`](Pipeline::enqueue). Cancel safe, as it.
    pub async fn enqueue_to_lane(&self, stream: &str, lane: u32, record: Record) -> Result<DeliveryHandle> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer"));
        }
        let size = record.encoded_len();
        let permits = shared.permits_for(size);
        let room = shared
            .room
            .acquire_many(permits)
            .await
            .map_err(|_| Error::closed("producer"))?;
        let mut state = shared.lock();
        if state.closed {
            return Err(Error::closed("producer"));
        }
        // The task is spawned once the lock is released: a runtime that is shutting
        // down drops the task's future at once, and its clean-up takes the lock.
        let start_task_on = if state.task_started {
            None
        } else {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                Error::unsupported("handing records over to a producer needs a tokio runtime")
            })?;
            state.task_started = true;
            Some(runtime)
        };
        // From here the permits are released when the record is resolved.
        room.forget();
        state.held_permits += permits as usize;
        let seq = state.next_seq;
        state.next_seq += 1;
        state.buffered_records += 1;
        state.buffered_bytes += size;
        let (reply, handle) = DeliveryHandle::channel();
        let settings = shared.settings;
        let lanes = match state.lanes.get_mut(stream) {
            Some(lanes) => lanes,
            None => state.lanes.entry(stream.to_owned()).or_default(),
        };
        let lane = lanes.entry(lane).or_default();
        let was_empty = lane.queue.is_empty();
        if was_empty {
            lane.since = Some(Instant::now());
        }
        lane.queue.push_back(Queued {
            seq,
            record,
            size,
            permits,
            reply,
        });
        lane.queued_bytes += size;
        // The task needs waking only when this lane may have become sendable: it looks
        // at every lane again whenever a batch completes.
        let full = lane.queue.len() >= settings.batch_records || lane.queued_bytes >= settings.batch_bytes;
        let wake = lane.in_flight.is_none() && (was_empty || full);
        drop(state);
        if let Some(runtime) = start_task_on {
            // The clean-up guard exists before the task is spawned, so a task dropped
            // without ever running still fails what it was handed.
            runtime.spawn(run(shared.clone(), TaskEnds(shared.clone())));
        }
        if wake {
            shared.work.notify_one();
        }
        Ok(handle)
    }

    /// Waits until every record handed over before this call is resolved (delivered or
    /// failed: failures reach the records' handles), sending lingering batches at once.
    ///
    /// # Errors
    /// None of its own today; `Result` for the engines' flushes around it. Cancel safe.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.shared;
        let target = {
            let mut state = shared.lock();
            state.hurry_below = state.hurry_below.max(state.next_seq);
            state.next_seq
        };
        shared.work.notify_one();
        loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let pending = shared
                .lock()
                .lanes
                .values()
                .flat_map(HashMap::values)
                .filter_map(Lane::oldest)
                .any(|seq| seq < target);
            if !pending {
                return Ok(());
            }
            progress.await;
        }
    }

    /// Refuses further records with `Closed`, then flushes. Idempotent.
    ///
    /// # Errors
    /// As [`flush`](Pipeline::flush). Cancel safe: the pipeline is closed at once.
    pub async fn close(&self) -> Result<()> {
        self.shared.lock().closed = true;
        self.shared.closed.store(true, Ordering::Release);
        // Callers waiting for room are refused as soon as they get it.
        self.flush().await
    }

    /// Whether [`close`](Pipeline::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.lock().detached = true;
        self.shared.work.notify_one();
    }
}

/// The batches to send now from lanes with none in flight, and the earliest time a
/// lingering lane becomes due. `hurry` sends every non-empty lane at once.
fn take_due(
    lanes: &mut HashMap<String, HashMap<u32, Lane>>,
    settings: &PipelineSettings,
    hurry_below: u64,
    hurry: bool,
    now: Instant,
) -> (Vec<Batch>, Option<Instant>) {
    let mut batches = Vec::new();
    let mut next_due: Option<Instant> = None;
    let lanes = lanes
        .iter_mut()
        .flat_map(|(stream, lanes)| lanes.iter_mut().map(move |(n, lane)| (stream, *n, lane)));
    for (stream, number, lane) in lanes {
        if lane.in_flight.is_some() {
            continue;
        }
        let Some(front) = lane.queue.front() else {
            continue;
        };
        let due_at = lane.since.unwrap_or(now) + settings.linger;
        let full = lane.queue.len() >= settings.batch_records || lane.queued_bytes >= settings.batch_bytes;
        if !(hurry || full || front.seq < hurry_below || due_at <= now) {
            next_due = Some(next_due.map_or(due_at, |d| d.min(due_at)));
            continue;
        }
        lane.in_flight = Some(front.seq);
        let mut batch = Batch {
            stream: stream.clone(),
            lane: number,
            records: Vec::with_capacity(lane.queue.len().min(settings.batch_records)),
            replies: Vec::with_capacity(lane.queue.len().min(settings.batch_records)),
            bytes: 0,
            permits: 0,
        };
        while let Some(next) = lane.queue.front() {
            let fits = batch.records.is_empty()
                || (batch.records.len() < settings.batch_records
                    && batch.bytes + next.size <= settings.batch_bytes);
            if !fits {
                break;
            }
            let Some(queued) = lane.queue.pop_front() else {
                break;
            };
            batch.bytes += queued.size;
            batch.permits += queued.permits as usize;
            batch.records.push(queued.record);
            batch.replies.push(queued.reply);
        }
        lane.queued_bytes -= batch.bytes;
        // What is left has waited since the batch's records did: it is due by then.
        if lane.queue.is_empty() {
            lane.since = None;
        }
        batches.push(batch);
    }
    (batches, next_due)
}

/// The pipeline's task: sends due batches, resolves their handles, and ends once the
/// pipeline is dropped and everything handed over is resolved.
async fn run(shared: Arc<Shared>, ends: TaskEnds) {
    let _ends = ends;
    let mut sending = FuturesUnordered::new();
    loop {
        let (batches, next_due, finished) = {
            let mut state = shared.lock();
            let hurry = state.closed || state.detached;
            let hurry_below = state.hurry_below;
            let (batches, next_due) = take_due(
                &mut state.lanes,
                &shared.settings,
                hurry_below,
                hurry,
                Instant::now(),
            );
            let finished = state.detached && state.buffered_records == 0 && batches.is_empty();
            (batches, next_due, finished)
        };
        if finished && sending.is_empty() {
            return;
        }
        for batch in batches {
            sending.push(send_batch(shared.sender.clone(), batch));
        }
        tokio::select! {
            Some(sent) = sending.next(), if !sending.is_empty() => complete(&shared, sent),
            () = shared.work.notified() => {}
            () = sleep_until(next_due), if next_due.is_some() => {}
        }
    }
}

/// Cleans up after the task however it ends. Ended early (its runtime shut down, or an
/// engine's `send` panicked), it fails every queued record with `Unavailable` (none
/// was sent; the handles of records in flight resolve `Indeterminate` as their
/// senders drop), gives the buffer back and lets the next `enqueue` start a new task,
/// so nothing waits for a task that is gone.
struct TaskEnds(Arc<Shared>);

impl Drop for TaskEnds {
    fn drop(&mut self) {
        let shared = &self.0;
        let permits = {
            let mut state = shared.lock();
            state.task_started = false;
            let why = "the producer's pipeline stopped (its runtime shut down) before sending this record";
            for (_, lanes) in state.lanes.drain() {
                for queued in lanes.into_values().flat_map(|lane| lane.queue) {
                    queued.reply.resolve(Err(Error::new(ErrorKind::Unavailable, why)));
                }
            }
            state.buffered_records = 0;
            state.buffered_bytes = 0;
            std::mem::take(&mut state.held_permits)
        };
        shared.room.add_permits(permits);
        shared.progress.notify_waiters();
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// A sent batch, its outcomes not yet given to its handles: what it held of the lane
/// and the buffer, and the keys of its records that failed (not as bad records), with
/// the error. [`complete`] takes the failed keys' queued records out of the lane before
/// any handle resolves, so no one sees a failure while records queued behind it may
/// still go out.
struct Sent {
    stream: String,
    lane: u32,
    records: usize,
    bytes: usize,
    permits: usize,
    outcomes: Vec<(DeliverySender, Result<Delivery>)>,
    failed_keys: HashSet<Bytes>,
    failure: Option<Error>,
}

/// Sends one batch and pairs each handle with its outcome. A batch the engine refused
/// as bad input is sent again record by record (the records it confirmed aside), so
/// that a bad record fails its own handle and no other.
async fn send_batch(sender: Arc<dyn Producer>, batch: Batch) -> Sent {
    let Batch {
        stream,
        lane,
        records,
        replies,
        bytes,
        permits,
    } = batch;
    let count = replies.len();
    let mut failures = KeyFailures::default();
    let outcomes = match sender.send(&stream, records).await {
        Ok(deliveries) => pair_all(replies, deliveries),
        Err(e)
            if e.kind() == ErrorKind::InvalidInput
                && e.unsent.len() > 1
                && e.delivered.len() + e.unsent.len() == count =>
        {
            send_singly(&*sender, &stream, replies, e, &mut failures).await
        }
        Err(e) => {
            // Every unsent record's key: its queued records must not overtake it.
            // A single record refused as bad input was never written, and its key's
            // later records may go.
            let one_bad = e.kind() == ErrorKind::InvalidInput && e.unsent.len() == 1;
            if !one_bad {
                for record in &e.unsent {
                    failures.add(record.key.as_ref(), &e.error);
                }
            }
            pair_failed(replies, e)
        }
    };
    Sent {
        stream,
        lane,
        records: count,
        bytes,
        permits,
        outcomes,
        failed_keys: failures.keys,
        failure: failures.first,
    }
}

/// Keys whose records failed in a batch, and the first such failure.
#[derive(Default)]
struct KeyFailures {
    keys: HashSet<Bytes>,
    first: Option<Error>,
}

impl KeyFailures {
    fn add(&mut self, key: Option<&Bytes>, error: &Error) {
        if let Some(key) = key {
            self.keys.insert(key.clone());
            self.first.get_or_insert_with(|| error.copy_for_another());
        }
    }

    /// The error for a record of a failed key, not sent so as not to overtake it.
    fn behind(&self, record: &Record) -> Option<Error> {
        let key = record.key.as_ref()?;
        let first = self.first.as_ref()?;
        self.keys.contains(key).then(|| not_sent_behind(first))
    }
}

/// The records of a batch refused as bad input, each sent on its own, in order, the
/// confirmed ones aside; after a record fails (other than as a bad record), the later
/// records of its key are not sent.
async fn send_singly(
    sender: &dyn Producer,
    stream: &str,
    replies: Vec<DeliverySender>,
    refused: SendError,
    failures: &mut KeyFailures,
) -> Vec<(DeliverySender, Result<Delivery>)> {
    let SendError {
        delivered, unsent, ..
    } = refused;
    let (mut outcomes, unconfirmed) = split_confirmed(replies, delivered);
    let mut unsent = unsent.into_iter();
    for reply in unconfirmed {
        let Some(record) = unsent.next() else {
            outcomes.push((reply, Err(missing())));
            continue;
        };
        if let Some(e) = failures.behind(&record) {
            outcomes.push((reply, Err(e)));
            continue;
        }
        let key = record.key.clone();
        match sender.send(stream, vec![record]).await {
            Ok(mut deliveries) => outcomes.push((reply, deliveries.pop().ok_or_else(missing))),
            Err(e) => {
                if e.kind() != ErrorKind::InvalidInput {
                    failures.add(key.as_ref(), &e.error);
                }
                outcomes.push((reply, Err(e.error)));
            }
        }
    }
    outcomes
}

fn missing() -> Error {
    Error::new(
        ErrorKind::Backend,
        "the engine confirmed a send without a delivery",
    )
}

fn pair_all(
    replies: Vec<DeliverySender>,
    deliveries: Vec<Delivery>,
) -> Vec<(DeliverySender, Result<Delivery>)> {
    let mut deliveries = deliveries.into_iter();
    replies
        .into_iter()
        .map(|reply| (reply, deliveries.next().ok_or_else(missing)))
        .collect()
}

/// The handles of the records a failed send confirmed, with their deliveries, and the
/// other handles, in batch order.
fn split_confirmed(
    replies: Vec<DeliverySender>,
    delivered: Vec<(usize, Delivery)>,
) -> (Vec<(DeliverySender, Result<Delivery>)>, Vec<DeliverySender>) {
    let mut delivered = delivered.into_iter().peekable();
    let mut confirmed = Vec::with_capacity(delivered.len());
    let mut others = Vec::with_capacity(replies.len() - delivered.len().min(replies.len()));
    for (index, reply) in replies.into_iter().enumerate() {
        match delivered.next_if(|(i, _)| *i == index) {
            Some((_, d)) => confirmed.push((reply, Ok(d))),
            None => others.push(reply),
        }
    }
    (confirmed, others)
}

/// The confirmed records with their deliveries and every other with the error.
fn pair_failed(replies: Vec<DeliverySender>, failure: SendError) -> Vec<(DeliverySender, Result<Delivery>)> {
    let SendError { error, delivered, .. } = failure;
    let (mut outcomes, unconfirmed) = split_confirmed(replies, delivered);
    let mut error = Some(error);
    let mut copy = None;
    for reply in unconfirmed {
        let e = match error.take() {
            Some(e) => {
                copy = Some(e.copy_for_another());
                e
            }
            None => copy.as_ref().map_or_else(missing, Error::copy_for_another),
        };
        outcomes.push((reply, Err(e)));
    }
    outcomes
}

fn complete(shared: &Shared, sent: Sent) {
    let mut permits = sent.permits;
    let mut followers = Vec::new();
    {
        let mut state = shared.lock();
        state.buffered_records -= sent.records;
        state.buffered_bytes -= sent.bytes;
        if let Some(lanes) = state.lanes.get_mut(&sent.stream)
            && let Some(lane) = lanes.get_mut(&sent.lane)
        {
            lane.in_flight = None;
            if !sent.failed_keys.is_empty() {
                followers = lane.take_keys(&sent.failed_keys);
            }
            if lane.queue.is_empty() {
                lanes.remove(&sent.lane);
                if lanes.is_empty() {
                    state.lanes.remove(&sent.stream);
                }
            }
        }
        for follower in &followers {
            state.buffered_records -= 1;
            state.buffered_bytes -= follower.size;
            permits += follower.permits as usize;
        }
        state.held_permits -= permits;
        // Resolved under the lock, so that a flush that finds the lane drained finds
        // its handles resolved too.
        for (reply, outcome) in sent.outcomes {
            reply.resolve(outcome);
        }
        if let Some(failure) = &sent.failure {
            for follower in followers {
                follower.reply.resolve(Err(not_sent_behind(failure)));
            }
        }
    }
    shared.room.add_permits(permits);
    shared.progress.notify_waiters();
}

/// The error of a record not sent because an earlier record of its key failed: the
/// same kind, except that it was certainly not written.
fn not_sent_behind(failure: &Error) -> Error {
    let kind = match failure.kind() {
        ErrorKind::Indeterminate => ErrorKind::Unavailable,
        kind => kind,
    };
    Error::new(
        kind,
        format!(
            "not sent, to keep its key's order: an earlier record of its key failed: {}",
            failure.message()
        ),
    )
    .with_context_of(failure)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use async_trait::async_trait;
    use futures::FutureExt;

    use super::*;
    use crate::id::{Offset, PartitionId};

    /// Writes batches to one partition, after waiting for `gate` when it is closed,
    /// and refuses a whole batch holding a record whose value is `bad`.
    struct Recorder {
        batches: Mutex<Vec<Vec<String>>>,
        gate: tokio::sync::RwLock<()>,
        /// Held back further: batches holding a record `stall`.
        stall_gate: tokio::sync::RwLock<()>,
        next: AtomicU64,
    }

    impl Recorder {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                batches: Mutex::new(Vec::new()),
                gate: tokio::sync::RwLock::new(()),
                stall_gate: tokio::sync::RwLock::new(()),
                next: AtomicU64::new(0),
            })
        }
        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Producer for Recorder {
        async fn send(&self, _: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
            drop(self.gate.read().await);
            let values: Vec<String> = records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                .collect();
            if values.iter().any(|v| v == "stall") {
                drop(self.stall_gate.read().await);
            }
            if values.iter().any(|v| v == "bad") {
                return Err(SendError::nothing_sent(
                    Error::invalid_input("bad record"),
                    records,
                ));
            }
            if values.iter().any(|v| v == "fail") {
                let e = Error::new(ErrorKind::Unavailable, "engine away");
                return Err(SendError::nothing_sent(e, records));
            }
            self.batches.lock().unwrap().push(values);
            Ok(records
                .iter()
                .map(|_| Delivery {
                    partition: PartitionId::from_index(0),
                    offset: Offset::new(self.next.fetch_add(1, Ordering::SeqCst)),
                    timestamp: None,
                })
                .collect())
        }
        async fn enqueue(&self, _: &str, _: Record) -> Result<DeliveryHandle> {
            Err(Error::unsupported("batches only"))
        }
        async fn flush(&self) -> Result<()> {
            Ok(())
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn settings(linger_ms: u64, batch_records: usize, buffer_bytes: usize) -> PipelineSettings {
        PipelineSettings::new(
            Duration::from_millis(linger_ms),
            batch_records,
            buffer_bytes,
            buffer_bytes,
        )
    }

    #[tokio::test]
    async fn records_handed_over_while_a_batch_is_in_flight_go_out_together_in_order() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, 1 << 20));
        let stalled = recorder.gate.write().await;
        let mut handles = vec![pipeline.enqueue("s", Record::new("0")).await.unwrap()];
        tokio::task::yield_now().await; // the first batch leaves and waits at the gate
        for i in 1..10 {
            handles.push(pipeline.enqueue("s", Record::new(i.to_string())).await.unwrap());
        }
        drop(stalled);
        let mut offsets = Vec::new();
        for handle in handles {
            offsets.push(handle.await.unwrap().offset);
        }
        assert_eq!(offsets, (0..10).map(Offset::new).collect::<Vec<_>>());
        let batches = recorder.batches();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), 9);
        assert_eq!(pipeline.buffered(), (0, 0));
    }

    #[tokio::test]
    async fn resent_singly_a_record_that_fails_holds_back_its_keys_later_records() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, 1 << 20));
        let stalled = recorder.gate.write().await;
        let first = pipeline.enqueue("s", Record::new("0")).await.unwrap();
        tokio::task::yield_now().await; // the first batch leaves and waits at the gate
        let keyed = |value: &'static str, key: &'static str| Record::new(value).with_key(key);
        let bad = pipeline.enqueue("s", keyed("bad", "k1")).await.unwrap();
        let failing = pipeline.enqueue("s", keyed("fail", "k2")).await.unwrap();
        let behind = pipeline.enqueue("s", keyed("after", "k2")).await.unwrap();
        let other = pipeline.enqueue("s", keyed("other", "k3")).await.unwrap();
        let same_key_as_bad = pipeline.enqueue("s", keyed("later", "k1")).await.unwrap();
        drop(stalled);
        first.await.unwrap();
        assert_eq!(bad.await.unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(failing.await.unwrap_err().kind(), ErrorKind::Unavailable);
        let held_back = behind.await.unwrap_err();
        assert_eq!(held_back.kind(), ErrorKind::Unavailable);
        assert!(held_back.message().contains("not sent"), "{held_back}");
        other.await.unwrap();
        same_key_as_bad.await.unwrap();
        assert_eq!(
            recorder.batches(),
            vec![vec!["0".to_string()], vec!["other".into()], vec!["later".into()]],
            "the record behind the failed one of k2 was never sent"
        );
        assert_eq!(pipeline.buffered(), (0, 0));
    }

    #[test]
    fn a_pipeline_whose_runtime_stopped_fails_what_it_held_and_starts_again() {
        let recorder = Recorder::new();
        let buffer = 1 << 20;
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, buffer));
        let stalled = recorder.gate.try_write().unwrap();
        let first = current_thread();
        let (in_flight, queued) = first.block_on(async {
            let in_flight = pipeline.enqueue("s", Record::new("0")).await.unwrap();
            tokio::task::yield_now().await; // the first batch leaves and waits at the gate
            let queued = pipeline.enqueue("s", Record::new("1")).await.unwrap();
            (in_flight, queued)
        });
        drop(first);
        drop(stalled);
        current_thread().block_on(async {
            assert_eq!(in_flight.await.unwrap_err().kind(), ErrorKind::Indeterminate);
            assert_eq!(queued.await.unwrap_err().kind(), ErrorKind::Unavailable);
            assert_eq!(pipeline.buffered(), (0, 0));
            assert_eq!(
                pipeline.shared.room.available_permits(),
                buffer,
                "the buffer was given back"
            );
            let again = pipeline.enqueue("s", Record::new("2")).await.unwrap();
            pipeline.flush().await.unwrap();
            again.await.unwrap();
        });
        assert_eq!(recorder.batches(), vec![vec!["2".to_string()]]);
    }

    #[tokio::test]
    async fn a_stalled_lane_holds_up_no_other_lane_of_its_stream() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, 1 << 20));
        let stalled = recorder.stall_gate.write().await;
        let mut stuck = pipeline
            .enqueue_to_lane("s", 1, Record::new("stall"))
            .await
            .unwrap();
        let mut behind = pipeline
            .enqueue_to_lane("s", 1, Record::new("after"))
            .await
            .unwrap();
        let mut others = Vec::new();
        for round in 0..3 {
            for lane in [0, 2] {
                let value = format!("{lane}-{round}");
                others.push(
                    pipeline
                        .enqueue_to_lane("s", lane, Record::new(value))
                        .await
                        .unwrap(),
                );
            }
            tokio::task::yield_now().await;
        }
        for handle in others {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("lanes 0 and 2 went on while lane 1 was stalled")
                .unwrap();
        }
        assert!(
            !stuck.is_done() && !behind.is_done(),
            "lane 1 waits for its batch"
        );
        drop(stalled);
        stuck.await.unwrap();
        behind.await.unwrap();
        let batches = recorder.batches();
        let lane_one: Vec<_> = batches.iter().flatten().filter(|v| !v.contains('-')).collect();
        assert_eq!(lane_one, ["stall", "after"], "lane 1 in its own order");
        for lane in ["0-", "2-"] {
            let values: Vec<_> = batches.iter().flatten().filter(|v| v.starts_with(lane)).collect();
            let expected: Vec<String> = (0..3).map(|round| format!("{lane}{round}")).collect();
            assert_eq!(
                values,
                expected.iter().collect::<Vec<_>>(),
                "each lane in its own order"
            );
        }
        assert_eq!(pipeline.buffered(), (0, 0));
    }

    #[test]
    fn a_pipeline_whose_task_never_ran_fails_what_it_held_and_starts_again() {
        let recorder = Recorder::new();
        let buffer = 1 << 20;
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, buffer));
        // The task is spawned, but the runtime is dropped before it is ever polled.
        let first = current_thread();
        let queued = first.block_on(pipeline.enqueue("s", Record::new("0"))).unwrap();
        drop(first);
        current_thread().block_on(async {
            let failed = tokio::time::timeout(Duration::from_secs(10), queued)
                .await
                .expect("a task dropped before it ran still resolves what it held");
            assert_eq!(failed.unwrap_err().kind(), ErrorKind::Unavailable);
            assert_eq!(pipeline.buffered(), (0, 0));
            assert_eq!(pipeline.shared.room.available_permits(), buffer);
            let again = pipeline.enqueue("s", Record::new("1")).await.unwrap();
            pipeline.flush().await.unwrap();
            again.await.unwrap();
        });
        assert_eq!(recorder.batches(), vec![vec!["1".to_string()]]);
    }

    #[test]
    fn a_record_handed_over_on_a_runtime_that_shut_down_fails_without_a_deadlock() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, 1 << 20));
        let gone = current_thread().handle().clone();
        // Spawning on a runtime that shut down drops the task's future within the spawn,
        // and with it the clean-up guard, which takes the pipeline's lock.
        let queued = {
            let _entered = gone.enter();
            pipeline
                .enqueue("s", Record::new("0"))
                .now_or_never()
                .expect("room at once: it returns without waiting")
                .unwrap()
        };
        current_thread().block_on(async {
            let failed = tokio::time::timeout(Duration::from_secs(10), queued)
                .await
                .expect("the record's handle resolves");
            assert_eq!(failed.unwrap_err().kind(), ErrorKind::Unavailable);
            assert_eq!(pipeline.buffered(), (0, 0));
            let again = pipeline.enqueue("s", Record::new("1")).await.unwrap();
            pipeline.flush().await.unwrap();
            again.await.unwrap();
        });
        assert_eq!(recorder.batches(), vec![vec!["1".to_string()]]);
    }

    #[tokio::test]
    async fn a_full_buffer_makes_enqueue_wait_until_a_batch_completes() {
        let recorder = Recorder::new();
        // Records of 40 bytes (296 with the overhead), 700 bytes of buffer: two fit.
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, 700));
        let value = "x".repeat(40);
        let stalled = recorder.gate.write().await;
        let first = pipeline.enqueue("s", Record::new(value.clone())).await.unwrap();
        let second = pipeline.enqueue("s", Record::new(value.clone())).await.unwrap();
        assert_eq!(pipeline.buffered(), (2, 80));
        let mut third = Box::pin(pipeline.enqueue("s", Record::new(value.clone())));
        for _ in 0..10 {
            tokio::task::yield_now().await;
            assert!((&mut third).now_or_never().is_none(), "no room: it waits");
        }
        drop(stalled);
        let third = third.await.unwrap();
        for handle in [first, second, third] {
            handle.await.unwrap();
        }
        assert_eq!(recorder.batches().concat().len(), 3);
    }

    #[tokio::test]
    async fn a_bad_record_fails_its_own_handle_and_no_other() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 100, 1 << 20));
        let stalled = recorder.gate.write().await;
        let mut handles = Vec::new();
        for value in ["a", "b", "bad", "c"] {
            handles.push(pipeline.enqueue("s", Record::new(value)).await.unwrap());
        }
        drop(stalled);
        let outcomes: Vec<Option<ErrorKind>> = futures::future::join_all(handles)
            .await
            .into_iter()
            .map(|r| r.err().map(|e| e.kind()))
            .collect();
        assert_eq!(outcomes, [None, None, Some(ErrorKind::InvalidInput), None]);
        assert_eq!(recorder.batches().concat(), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn records_queued_behind_a_failed_record_of_their_key_fail_unsent() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(0, 1, 1 << 20));
        let stalled = recorder.gate.write().await;
        let mut handles = vec![
            pipeline
                .enqueue("s", Record::new("x").with_key("k"))
                .await
                .unwrap(),
        ];
        tokio::task::yield_now().await; // x is in flight
        for (value, key) in [("fail", "k"), ("z", "k"), ("w", "j")] {
            handles.push(
                pipeline
                    .enqueue("s", Record::new(value).with_key(key))
                    .await
                    .unwrap(),
            );
        }
        drop(stalled);
        let outcomes: Vec<Result<Delivery>> = futures::future::join_all(handles).await;
        assert!(outcomes[0].is_ok());
        assert_eq!(outcomes[1].as_ref().unwrap_err().kind(), ErrorKind::Unavailable);
        let behind = outcomes[2].as_ref().unwrap_err();
        assert_eq!(behind.kind(), ErrorKind::Unavailable);
        assert!(behind.message().contains("earlier record of its key"), "{behind}");
        assert!(outcomes[3].is_ok(), "another key goes on");
        assert_eq!(recorder.batches(), [vec!["x".to_string()], vec!["w".to_string()]]);
        assert_eq!(pipeline.buffered(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn linger_holds_a_batch_back_and_flush_sends_it_at_once() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(50, 3, 1 << 20));
        let start = Instant::now();
        let one = pipeline.enqueue("s", Record::new("1")).await.unwrap();
        let delivered = one.await.unwrap();
        assert_eq!(delivered.offset, Offset::new(0));
        assert!(start.elapsed() >= Duration::from_millis(50), "it lingered");
        // A full batch goes at once.
        let start = Instant::now();
        let handles: Vec<_> =
            futures::future::join_all((0..3).map(|i| pipeline.enqueue("s", Record::new(i.to_string()))))
                .await;
        for handle in handles {
            handle.unwrap().await.unwrap();
        }
        assert!(start.elapsed() < Duration::from_millis(50));
        // So does a flushed one.
        let start = Instant::now();
        let _lone = pipeline.enqueue("s", Record::new("lone")).await.unwrap();
        pipeline.flush().await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(50));
        assert_eq!(recorder.batches().concat().len(), 5);
    }

    #[tokio::test]
    async fn close_waits_for_everything_then_refuses() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(1_000, 100, 1 << 20));
        let mut handles = Vec::new();
        for i in 0..5 {
            handles.push(pipeline.enqueue("s", Record::new(i.to_string())).await.unwrap());
        }
        pipeline.close().await.unwrap();
        assert_eq!(
            recorder.batches().concat().len(),
            5,
            "close flushed past the linger"
        );
        let err = pipeline.enqueue("s", Record::new("late")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        for mut handle in handles {
            assert!(handle.try_result().unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_dropped_pipeline_still_delivers_what_was_handed_over() {
        let recorder = Recorder::new();
        let pipeline = Pipeline::new(recorder.clone(), settings(60_000, 100, 1 << 20));
        let handles: Vec<_> =
            futures::future::join_all((0..5).map(|i| pipeline.enqueue("s", Record::new(i.to_string()))))
                .await;
        drop(pipeline);
        for handle in handles {
            handle.unwrap().await.unwrap();
        }
        assert_eq!(recorder.batches().concat().len(), 5);
    }

    #[test]
    fn settings_refuse_zero_and_a_buffer_smaller_than_a_batch() {
        let defaults = settings(0, 10, 1000);
        let zero = ProducerConfig::default().with_batch_records(0);
        assert_eq!(
            defaults.with_config(&zero).unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
        let small = ProducerConfig::default().with_buffer_bytes(10);
        let err = defaults.with_config(&small).unwrap_err();
        assert!(err.message().contains("buffer_bytes"), "{err}");
        let linger = ProducerConfig::default().with_linger(Duration::from_millis(7));
        assert_eq!(
            defaults.with_config(&linger).unwrap().linger,
            Duration::from_millis(7)
        );
    }
}
