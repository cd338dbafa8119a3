//! Broadcast consumers: one reader task per shard, started in lineage order (a child
//! only after all its parents reached their end), feeding one channel that `poll`
//! drains.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::types::{ChildShard, Record as KinesisRecord};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tributary_core::{
    Consumer, ConsumerConfig, ConsumerMode, Error, ErrorKind, Headers, Offset, PartitionId, Received, Result,
    StartFrom, Timestamp, async_trait,
};

use crate::config::ReaderKind;
use crate::kpl::{self, Deaggregated};
use crate::position::{KinesisPosition, offset_of};
use crate::shards::list_shards;
use crate::{Shared, envelope, fanout, keys, polling};

/// Batches a reader may queue before it waits for `poll`.
const QUEUED_BATCHES: usize = 4;

/// A broadcast reader of every shard of one stream, by polling or enhanced fan-out
/// (the backend config's `reader`).
///
/// Shards are read in lineage order: a shard created by a split or merge is read only
/// after every parent it has was read to its end, so records of one key come in the
/// order they were written across a reshard. New shards are found when their parents
/// end and by listing every `shard_refresh`. An expired iterator, a throttled or failed
/// call, or the end of a fan-out subscription resume after the last record delivered.
pub struct KinesisConsumer {
    stream: Arc<str>,
    events: mpsc::Receiver<Event>,
    buffer: VecDeque<Received>,
    control: mpsc::UnboundedSender<Control>,
    epochs: HashMap<PartitionId, u64>,
    view: Arc<Mutex<View>>,
    coordinator: AbortHandle,
    fan_out: Option<fanout::Registration>,
    shared: Arc<Shared>,
    closed: bool,
}

impl std::fmt::Debug for KinesisConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisConsumer")
            .field("stream", &self.stream)
            .field("buffered", &self.buffer.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// What readers report to the consumer.
pub(crate) enum Event {
    Records {
        shard: PartitionId,
        epoch: u64,
        records: Vec<Received>,
    },
    Failed(Error),
}

/// What the consumer asks of the coordinator.
enum Control {
    Seek {
        shard: PartitionId,
        to: StartFrom,
        epoch: u64,
        done: oneshot::Sender<()>,
    },
}

/// What the consumer can see of the coordinator's state.
#[derive(Default)]
struct View {
    known: BTreeSet<PartitionId>,
    lag: BTreeMap<PartitionId, Duration>,
}

/// Where a reader starts.
#[derive(Clone, Debug)]
pub(crate) enum Start {
    TrimHorizon,
    Latest,
    /// At this sequence number (records below the floor are skipped).
    AtSequence(String),
    /// After this sequence number (an enhanced fan-out continuation).
    AfterSequence(String),
    Timestamp(Timestamp),
}

impl Start {
    /// This start as Kinesis can take it now: a time in the future (which Kinesis
    /// refuses) starts at the end, as it does on other engines.
    pub(crate) fn effective(&self) -> Start {
        match self {
            Start::Timestamp(t) if *t > Timestamp::now() => Start::Latest,
            other => other.clone(),
        }
    }
}

/// Everything one shard reader needs.
pub(crate) struct ReaderContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream: Arc<str>,
    pub(crate) shard: PartitionId,
    pub(crate) epoch: u64,
    pub(crate) start: Start,
    /// Records at or below this offset (or below it, when inclusive) are not delivered.
    pub(crate) floor: Option<Floor>,
    pub(crate) events: mpsc::Sender<Event>,
    view: Arc<Mutex<View>>,
    /// Told once the reader holds its first position, so that a consumer made to
    /// start at the end misses nothing written after it was made.
    positioned: Option<oneshot::Sender<()>>,
    /// For a start at a time: records stamped earlier are skipped until the first one
    /// at or after it. Kinesis finds the place by arrival time; with the envelope a
    /// record's time is its event time, which may be earlier.
    time_gate: Option<Timestamp>,
}

/// A bound below which records are skipped.
#[derive(Clone, Debug)]
pub(crate) struct Floor {
    pub(crate) offset: Offset,
    /// Whether the record at `offset` itself is delivered.
    pub(crate) inclusive: bool,
}

impl Floor {
    fn admits(&self, offset: &Offset) -> bool {
        if self.inclusive {
            offset >= &self.offset
        } else {
            offset > &self.offset
        }
    }
}

/// How a reader stopped.
pub(crate) enum ReaderExit {
    /// The shard is closed and every record of it was delivered.
    Ended(Vec<ChildShard>),
    Failed(Error),
    /// The consumer is gone.
    Stopped,
}

impl ReaderContext {
    /// Turns Kinesis records into delivered records: de-aggregates KPL records, opens
    /// envelopes, skips what is below the floor, and moves the floor past what it
    /// returns.
    pub(crate) fn convert(&mut self, records: Vec<KinesisRecord>) -> Vec<Received> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let arrival = record
                .approximate_arrival_timestamp
                .and_then(|t| t.to_millis().ok())
                .map(Timestamp::from_millis);
            let data = Bytes::from(record.data.into_inner());
            let users = match kpl::deaggregate(&data) {
                Ok(Deaggregated::Plain) => vec![(record.partition_key.clone().unwrap_or_default(), data)],
                Ok(Deaggregated::Aggregate(users)) => {
                    users.into_iter().map(|u| (u.partition_key, u.data)).collect()
                }
                Err(why) => {
                    tracing::warn!(
                        stream = %self.stream, shard = %self.shard, sequence = %record.sequence_number,
                        "a KPL aggregate cannot be read ({why}): delivered as it is"
                    );
                    vec![(record.partition_key.clone().unwrap_or_default(), data)]
                }
            };
            for (sub, (partition_key, data)) in users.into_iter().enumerate() {
                let offset = match u32::try_from(sub)
                    .map_err(|_| ())
                    .and_then(|sub| offset_of(&record.sequence_number, sub).map_err(|_| ()))
                {
                    Ok(o) => o,
                    Err(()) => {
                        tracing::warn!(
                            stream = %self.stream, shard = %self.shard, sequence = %record.sequence_number,
                            "a record has a position that no offset can hold: skipped"
                        );
                        continue;
                    }
                };
                if self.floor.as_ref().is_some_and(|f| !f.admits(&offset)) {
                    continue;
                }
                let (value, headers, event_time) = if self.shared.config.headers_envelope {
                    let unwrapped = envelope::unwrap(data);
                    (unwrapped.value, unwrapped.headers, unwrapped.timestamp)
                } else {
                    (data, Headers::new(), None)
                };
                let timestamp = event_time.or(arrival);
                if let Some(gate) = self.time_gate {
                    if timestamp.is_some_and(|t| t < gate) {
                        continue;
                    }
                    self.time_gate = None;
                }
                self.floor = Some(Floor {
                    offset: offset.clone(),
                    inclusive: false,
                });
                out.push(Received {
                    stream: self.stream.clone(),
                    partition: self.shard.clone(),
                    offset,
                    key: keys::record_key(&partition_key),
                    value,
                    headers,
                    timestamp,
                });
            }
        }
        out
    }

    /// Where to start again after an error: after the last record delivered, else the
    /// original start.
    pub(crate) fn resume_point(&self) -> Start {
        match &self.floor {
            Some(floor) if !floor.inclusive || matches!(self.start, Start::AtSequence(_)) => {
                match KinesisPosition::from_offset(&floor.offset) {
                    Ok(p) => Start::AtSequence(p.sequence_number),
                    Err(_) => self.start.clone(),
                }
            }
            _ => self.start.clone(),
        }
    }

    /// Pins a LATEST start to the time it was taken, so that a reader that starts
    /// over before delivering anything resumes from there, not from a later end.
    pub(crate) fn pin_latest(&mut self, start: &Start, taken_at: Timestamp) {
        if matches!(start, Start::Latest) {
            self.start = Start::Timestamp(taken_at);
        }
    }

    /// Says the reader has its first position (an iterator or a subscription).
    pub(crate) fn positioned(&mut self) {
        if let Some(tell) = self.positioned.take() {
            let _ = tell.send(());
        }
    }

    /// Hands records to the consumer; false when it is gone.
    pub(crate) async fn deliver(&self, records: Vec<Received>) -> bool {
        if records.is_empty() {
            return true;
        }
        self.events
            .send(Event::Records {
                shard: self.shard.clone(),
                epoch: self.epoch,
                records,
            })
            .await
            .is_ok()
    }

    /// Waits before retrying after `failures` failures in a row: exponential backoff
    /// with jitter, at least `floor`.
    pub(crate) async fn pause(&self, failures: u32, error: &Error, floor: Duration) {
        let config = &self.shared.config;
        let ceiling = config
            .retry_base
            .saturating_mul(1 << failures.min(16))
            .min(config.retry_max)
            .max(floor);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let pause = Duration::from_nanos(fastrand::u64(nanos / 2..=nanos));
        tracing::debug!(stream = %self.stream, shard = %self.shard, ?pause, "retrying after: {error}");
        tokio::time::sleep(pause).await;
    }

    pub(crate) fn record_lag(&self, millis: i64) {
        let lag = Duration::from_millis(u64::try_from(millis).unwrap_or(0));
        if let Ok(mut view) = self.view.lock() {
            view.lag.insert(self.shard.clone(), lag);
        }
    }
}

/// A shard the coordinator knows.
struct ShardState {
    parents: Vec<PartitionId>,
    status: Status,
    /// Where it starts when its reader starts.
    start: Start,
    floor: Option<Floor>,
    epoch: u64,
}

enum Status {
    Waiting,
    Reading(AbortHandle),
    Ended,
    /// Its reader failed before the end: its children keep waiting (a seek restarts it).
    Failed,
}

/// Owns the shard readers: starts them in lineage order, restarts them on seek.
struct Coordinator {
    shared: Arc<Shared>,
    stream: Arc<str>,
    start: StartFrom,
    shards: BTreeMap<PartitionId, ShardState>,
    readers: JoinSet<(PartitionId, u64, ReaderExit)>,
    events: mpsc::Sender<Event>,
    view: Arc<Mutex<View>>,
    fan_out_arn: Option<Arc<str>>,
    /// While the consumer is being made: receivers of its first readers' positions.
    positioning: Option<Vec<oneshot::Receiver<()>>>,
}

impl Coordinator {
    /// The start and floor of a shard for a start position; `initial` for shards that
    /// existed when the consumer was made.
    fn placement(to: &StartFrom, initial: bool) -> Result<(Start, Option<Floor>)> {
        Ok(match to {
            StartFrom::Earliest => (Start::TrimHorizon, None),
            StartFrom::Latest if initial => (Start::Latest, None),
            // Shards made after the consumer started hold only new records.
            StartFrom::Latest => (Start::TrimHorizon, None),
            StartFrom::At(offset) | StartFrom::After(offset) => {
                let position = KinesisPosition::from_offset(offset)?;
                (
                    Start::AtSequence(position.sequence_number),
                    Some(Floor {
                        offset: offset.clone(),
                        inclusive: matches!(to, StartFrom::At(_)),
                    }),
                )
            }
            StartFrom::Timestamp(t) => (Start::Timestamp(*t), None),
        })
    }

    fn add_shard(
        &mut self,
        id: PartitionId,
        parents: Vec<PartitionId>,
        closed: bool,
        initial: bool,
    ) -> Result<()> {
        if self.shards.contains_key(&id) {
            return Ok(());
        }
        let (start, floor) = Self::placement(&self.start, initial)?;
        // A shard already closed when a reader starts at Latest has nothing to give.
        let status = if initial && closed && matches!(self.start, StartFrom::Latest) {
            Status::Ended
        } else {
            Status::Waiting
        };
        self.shards.insert(
            id.clone(),
            ShardState {
                parents,
                status,
                start,
                floor,
                epoch: 0,
            },
        );
        if let Ok(mut view) = self.view.lock() {
            view.known.insert(id);
        }
        Ok(())
    }

    /// Starts every waiting shard whose parents all ended (or are gone from the
    /// listing: trimmed after the retention period).
    fn start_ready(&mut self) {
        let ready: Vec<PartitionId> = self
            .shards
            .iter()
            .filter(|(_, s)| matches!(s.status, Status::Waiting))
            .filter(|(_, s)| {
                s.parents.iter().all(|p| match self.shards.get(p) {
                    Some(parent) => matches!(parent.status, Status::Ended),
                    None => true,
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            self.spawn_reader(&id, None);
        }
    }

    /// Starts (or restarts) a shard's reader; `positioned` is told once it holds its
    /// first position.
    fn spawn_reader(&mut self, id: &PartitionId, positioned: Option<oneshot::Sender<()>>) {
        let Some(state) = self.shards.get_mut(id) else {
            return;
        };
        if let Status::Reading(handle) = &state.status {
            handle.abort();
        }
        let positioned = positioned.or_else(|| {
            self.positioning.as_mut().map(|waiting| {
                let (tell, told) = oneshot::channel();
                waiting.push(told);
                tell
            })
        });
        let context = ReaderContext {
            positioned,
            shared: self.shared.clone(),
            stream: self.stream.clone(),
            shard: id.clone(),
            epoch: state.epoch,
            start: state.start.clone(),
            floor: state.floor.clone(),
            events: self.events.clone(),
            view: self.view.clone(),
            time_gate: match state.start {
                // A time still to come starts at the end, with nothing to skip.
                Start::Timestamp(t) if state.floor.is_none() && t <= Timestamp::now() => Some(t),
                _ => None,
            },
        };
        let (shard, epoch) = (id.clone(), state.epoch);
        let handle = match &self.fan_out_arn {
            Some(arn) => {
                let arn = arn.clone();
                self.readers
                    .spawn(async move { (shard, epoch, fanout::read_shard(context, arn).await) })
            }
            None => self
                .readers
                .spawn(async move { (shard, epoch, polling::read_shard(context).await) }),
        };
        state.status = Status::Reading(handle);
    }

    async fn refresh(&mut self) -> Result<()> {
        let listed = list_shards(&self.shared.client, &self.stream).await?;
        for shard in listed {
            let closed = !shard.is_open();
            self.add_shard(shard.id, shard.parents, closed, false)?;
        }
        self.start_ready();
        Ok(())
    }

    /// Moves a shard; `done` is told once its reader holds the new position (at once
    /// for a shard still waiting for its parents).
    fn seek(
        &mut self,
        shard: PartitionId,
        to: &StartFrom,
        epoch: u64,
        done: oneshot::Sender<()>,
    ) -> Result<()> {
        let (start, floor) = Self::placement(to, true)?;
        let Some(state) = self.shards.get_mut(&shard) else {
            return Ok(());
        };
        state.start = start;
        state.floor = floor;
        state.epoch = epoch;
        match state.status {
            Status::Waiting => drop(done),
            Status::Reading(_) | Status::Ended | Status::Failed => self.spawn_reader(&shard, Some(done)),
        }
        Ok(())
    }

    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut refresh = tokio::time::interval(self.shared.config.shard_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        self.start_ready();
        loop {
            tokio::select! {
                message = control.recv() => match message {
                    Some(Control::Seek { shard, to, epoch, done }) => {
                        // `done` goes to the new reader, or is dropped: either ends the
                        // consumer's wait.
                        if let Err(e) = self.seek(shard, &to, epoch, done) {
                            let _ = self.events.send(Event::Failed(e)).await;
                        }
                    }
                    None => return,
                },
                Some(joined) = self.readers.join_next() => {
                    let Ok((shard, epoch, exit)) = joined else { continue };
                    let current = self.shards.get(&shard).is_some_and(|s| s.epoch == epoch);
                    if !current {
                        continue;
                    }
                    match exit {
                        ReaderExit::Ended(children) => {
                            if let Some(state) = self.shards.get_mut(&shard) {
                                state.status = Status::Ended;
                            }
                            for child in &children {
                                let parents = child.parent_shards().iter().map(|p| PartitionId::new(p.as_str())).collect();
                                if let Err(e) = self.add_shard(PartitionId::new(child.shard_id()), parents, false, false) {
                                    let _ = self.events.send(Event::Failed(e)).await;
                                }
                            }
                            if children.is_empty()
                                && let Err(e) = self.refresh().await
                            {
                                tracing::debug!("listing shards after {shard} ended: {e}");
                            }
                            self.start_ready();
                        }
                        ReaderExit::Failed(e) => {
                            if let Some(state) = self.shards.get_mut(&shard) {
                                state.status = Status::Failed;
                            }
                            if self.events.send(Event::Failed(e)).await.is_err() {
                                return;
                            }
                        }
                        ReaderExit::Stopped => return,
                    }
                },
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh().await {
                        if e.kind() == ErrorKind::NotFound {
                            let _ = self.events.send(Event::Failed(e)).await;
                            return;
                        }
                        tracing::debug!("listing shards of {}: {e}", self.stream);
                    }
                },
            }
        }
    }
}

impl KinesisConsumer {
    pub(crate) async fn new(shared: Arc<Shared>, config: ConsumerConfig) -> Result<Self> {
        crate::validate_stream_name(&config.stream)?;
        if let ConsumerMode::Group(group) = &config.mode {
            tributary_core::validate_group_name(group)?;
            return Err(Error::unsupported(
                "Kinesis consumer groups (leases and checkpoints in DynamoDB) are not in this \
                 version: use a broadcast consumer",
            ));
        }
        let stream: Arc<str> = config.stream.as_str().into();
        let listed = list_shards(&shared.client, &stream).await?;
        let fan_out = match shared.config.reader {
            ReaderKind::Polling => None,
            ReaderKind::FanOut => Some(fanout::Registration::register(&shared, &stream).await?),
        };
        let (events_tx, events) = mpsc::channel(QUEUED_BATCHES);
        let (control, control_rx) = mpsc::unbounded_channel();
        let view = Arc::new(Mutex::new(View::default()));
        let mut coordinator = Coordinator {
            shared: shared.clone(),
            stream: stream.clone(),
            start: config.start.clone(),
            shards: BTreeMap::new(),
            readers: JoinSet::new(),
            events: events_tx,
            view: view.clone(),
            fan_out_arn: fan_out.as_ref().map(|r| r.consumer_arn.clone()),
            positioning: Some(Vec::new()),
        };
        for shard in listed {
            let closed = !shard.is_open();
            coordinator.add_shard(shard.id, shard.parents, closed, true)?;
        }
        // The first readers start here, and the consumer is returned once each holds
        // its position: a start at LATEST then means "after this call".
        coordinator.start_ready();
        let positioning = coordinator.positioning.take().unwrap_or_default();
        let task = tokio::spawn(coordinator.run(control_rx));
        let all_positioned = futures::future::join_all(positioning);
        if tokio::time::timeout(shared.config.operation_timeout, all_positioned)
            .await
            .is_err()
        {
            tracing::warn!(
                "the readers of {stream} took longer than {:?} to start",
                shared.config.operation_timeout
            );
        }
        Ok(Self {
            stream,
            events,
            buffer: VecDeque::new(),
            control,
            epochs: HashMap::new(),
            view,
            coordinator: task.abort_handle(),
            fan_out,
            shared,
            closed: false,
        })
    }

    /// How far each shard's reader is behind the newest record (Kinesis's
    /// MillisBehindLatest), as of its last read.
    pub fn lag(&self) -> BTreeMap<PartitionId, Duration> {
        self.view.lock().map(|v| v.lag.clone()).unwrap_or_default()
    }

    fn take(&mut self, max: usize) -> Vec<Received> {
        let n = max.min(self.buffer.len());
        self.buffer.drain(..n).collect()
    }

    /// Files one event; an error is returned for the caller to report.
    fn absorb(&mut self, event: Event) -> Option<Error> {
        match event {
            Event::Records {
                shard,
                epoch,
                records,
            } => {
                if self.epochs.get(&shard).copied().unwrap_or(0) == epoch {
                    self.buffer.extend(records);
                }
                None
            }
            Event::Failed(e) => Some(e),
        }
    }
}

#[async_trait]
impl Consumer for KinesisConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.buffer.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("the readers of {} stopped", self.stream),
                    ));
                }
                Ok(Some(event)) => {
                    if let Some(e) = self.absorb(event) {
                        return Err(e);
                    }
                }
            }
        }
        let mut failure = None;
        while self.buffer.len() < max && failure.is_none() {
            match self.events.try_recv() {
                Ok(event) => failure = self.absorb(event),
                Err(_) => break,
            }
        }
        let batch = self.take(max);
        match failure {
            // Records first; the error comes with the next poll.
            Some(e) if batch.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!("{} reader failed: {e}", self.stream);
                Ok(batch)
            }
            None => Ok(batch),
        }
    }

    fn ack(&mut self, _partition: &PartitionId, _offset: &Offset) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        Err(Error::unsupported(
            "a broadcast consumer has no group to acknowledge to",
        ))
    }

    async fn commit(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        Err(Error::unsupported(
            "a broadcast consumer has no group to commit to",
        ))
    }

    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        let known = self
            .view
            .lock()
            .map(|v| v.known.contains(partition))
            .unwrap_or(false);
        if !known {
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!("{} has no shard {partition} known to this consumer", self.stream),
            ));
        }
        if let StartFrom::At(o) | StartFrom::After(o) = &to {
            KinesisPosition::from_offset(o)?;
        }
        let epoch = self.epochs.get(partition).copied().unwrap_or(0) + 1;
        self.epochs.insert(partition.clone(), epoch);
        self.buffer.retain(|r| &r.partition != partition);
        let (done, finished) = oneshot::channel();
        self.control
            .send(Control::Seek {
                shard: partition.clone(),
                to,
                epoch,
                done,
            })
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("the readers of {} stopped", self.stream),
                )
            })?;
        // Returns once the shard's reader holds the new position (bounded, so a
        // server that is down cannot hold the call forever; the reader keeps trying).
        let _ = tokio::time::timeout(self.shared.config.operation_timeout, finished).await;
        Ok(())
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.view
            .lock()
            .map(|v| v.known.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.coordinator.abort();
        self.buffer.clear();
        match self.fan_out.take() {
            Some(registration) => registration.release(&self.shared).await,
            None => Ok(()),
        }
    }
}

impl Drop for KinesisConsumer {
    fn drop(&mut self) {
        self.coordinator.abort();
        if let Some(registration) = self.fan_out.take() {
            registration.release_in_background(&self.shared);
        }
    }
}
