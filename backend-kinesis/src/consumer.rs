//! The consumer the application holds: a broadcast reader of every shard, or a group
//! member reading the shards it leases; its coordinator (`coordinator.rs`) runs the
//! shard readers and feeds one channel that `poll` drains.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tributary_core::raw::{AckTracker, GroupOperation, group_only};
use tributary_core::{
    Consumer, ConsumerConfig, ConsumerMode, Error, ErrorKind, Offset, PartitionId, Received, Result,
    StartFrom, async_trait,
};

use crate::config::{LeaseStoreKind, ReaderKind};
use crate::coordinator::{Control, Coordinator};
use crate::keeper::{Keeper, KeeperHandle, Request};
use crate::leases::{Checkpoint, LeaseStore};
use crate::position::KinesisPosition;
use crate::reader::{Event, Floor, LeaseCheck, Start, View};
use crate::shards::list_shards;
use crate::{Shared, fanout};

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
    /// A group member's leases and acknowledgements.
    group: Option<Membership>,
    /// An error for the next poll (records already queued came first).
    pending_error: Option<Error>,
    closed: bool,
}

/// A leased shard a group member reads.
#[derive(Clone, Copy, Debug)]
struct Reading {
    /// The holding of the lease it reads under (see `keeper::Held::tenure`).
    tenure: u64,
    /// Its reader reached the shard's end.
    ended: bool,
    /// Its reader failed: the lease is released for another try.
    failed: bool,
}

/// What a group member keeps besides its readers.
struct Membership {
    keeper: KeeperHandle,
    acks: AckTracker,
    /// The shards it reads (it holds their leases).
    reading: BTreeMap<PartitionId, Reading>,
    /// Where a shard the group never read starts.
    start: StartFrom,
    /// Shards this member stopped reading with acknowledged records no checkpoint
    /// covers (their lease moved on): the next commit reports them.
    uncommitted_losses: Vec<String>,
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

impl KinesisConsumer {
    pub(crate) async fn new(shared: Arc<Shared>, config: ConsumerConfig) -> Result<Self> {
        crate::validate_stream_name(&config.stream)?;
        let stream: Arc<str> = config.stream.as_str().into();
        let store = match &config.mode {
            ConsumerMode::Group(group) => Some(lease_store(&shared, &stream, group)?),
            ConsumerMode::Broadcast => None,
        };
        let listed = match store {
            None => list_shards(&shared.client, &stream).await?,
            Some(_) => Vec::new(),
        };
        // Registration may wait long for ACTIVE: before any lease is taken, so none
        // lapses meanwhile.
        let fan_out = match shared.config.reader {
            ReaderKind::Polling => None,
            ReaderKind::FanOut => {
                // Members of a group whose leases live in DynamoDB share one stream
                // consumer, named after their lease table (which names the stream and
                // group); with leases in memory each process is a group of its own, so
                // each member registers its own.
                let shared_by = match (&config.mode, shared.config.leases) {
                    (ConsumerMode::Group(group), LeaseStoreKind::Dynamodb) => {
                        Some(lease_table_name(&shared, &stream, group))
                    }
                    _ => None,
                };
                Some(fanout::Registration::register(&shared, &stream, shared_by.as_deref()).await?)
            }
        };
        let keeper = match store {
            Some(store) => {
                let mut keeper = Keeper::new(shared.clone(), stream.clone(), store, config.start.clone());
                if let Err(e) = keeper.join().await {
                    if let Some(registration) = fan_out {
                        let _ = registration.release(&shared).await;
                    }
                    return Err(e);
                }
                Some(keeper)
            }
            None => None,
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
            group: keeper.is_some(),
        };
        for shard in listed {
            let closed = !shard.is_open();
            coordinator.add_shard(shard.id, shard.parents, closed, true)?;
        }
        let mut epochs = HashMap::new();
        let group = match keeper {
            None => {
                // The first readers start here, and the consumer is returned once each
                // holds its position: a start at LATEST then means "after this call".
                coordinator.start_ready();
                None
            }
            Some(keeper) => {
                let keeper = keeper.spawn();
                let mut membership = Membership {
                    keeper,
                    acks: AckTracker::new(),
                    reading: BTreeMap::new(),
                    start: config.start.clone(),
                    uncommitted_losses: Vec::new(),
                };
                for held in membership.keeper.held().into_values() {
                    let shard = held.lease.shard.clone();
                    // A lease that cannot be started is left unread here: the first
                    // poll tries again, gives it back and reports the error.
                    let Ok((start, floor)) =
                        membership.begin(&shard, held.tenure, held.lease.checkpoint.as_ref())
                    else {
                        continue;
                    };
                    epochs.insert(shard.clone(), 1);
                    let lease = LeaseCheck {
                        holdings: membership.keeper.holdings.clone(),
                        tenure: held.tenure,
                    };
                    coordinator.assign(shard, start, floor, 1, lease);
                }
                Some(membership)
            }
        };
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
            epochs,
            view,
            coordinator: task.abort_handle(),
            fan_out,
            shared,
            group,
            pending_error: None,
            closed: false,
        })
    }

    /// How far each shard's reader is behind the newest record (Kinesis's
    /// MillisBehindLatest), as of its last read.
    pub fn lag(&self) -> BTreeMap<PartitionId, Duration> {
        self.view.lock().map(|v| v.lag.clone()).unwrap_or_default()
    }

    /// This group member's id, as the lease table names lease owners; `None` for a
    /// broadcast consumer.
    pub fn member_id(&self) -> Option<&str> {
        self.group.as_ref().map(|g| &*g.keeper.worker)
    }

    fn take(&mut self, max: usize) -> Vec<Received> {
        let n = max.min(self.buffer.len());
        let batch: Vec<Received> = self.buffer.drain(..n).collect();
        if let Some(group) = &mut self.group {
            for r in &batch {
                group.acks.delivered(&r.partition, r.offset.clone());
            }
        }
        batch
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
            Event::Ended { shard, epoch } => {
                if self.epochs.get(&shard).copied().unwrap_or(0) == epoch
                    && let Some(reading) = self.group.as_mut().and_then(|g| g.reading.get_mut(&shard))
                {
                    reading.ended = true;
                }
                None
            }
            Event::ShardFailed { shard, epoch, error } => {
                if self.epochs.get(&shard).copied().unwrap_or(0) != epoch {
                    return None;
                }
                if let Some(reading) = self.group.as_mut().and_then(|g| g.reading.get_mut(&shard)) {
                    reading.failed = true;
                }
                Some(error)
            }
            Event::Failed(e) => Some(e),
        }
    }

    /// Stops reading a shard whose lease this member no longer holds: its queued
    /// records are dropped and its acknowledgements forgotten (those no checkpoint
    /// covers are noted for the next commit to report).
    fn stop_reading(&mut self, shard: &PartitionId) {
        let Some(group) = &mut self.group else { return };
        if let Some(offset) = group.acks.committable(shard) {
            group
                .uncommitted_losses
                .push(format!("{shard} (acknowledged up to {offset})"));
        }
        group.reading.remove(shard);
        group.acks.forget(shard);
        *self.epochs.entry(shard.clone()).or_default() += 1;
        self.buffer.retain(|r| &r.partition != shard);
        let _ = self.control.send(Control::Revoke { shard: shard.clone() });
    }

    /// Stops reading, before they are delivered, the shards whose lease is no longer
    /// valid (or was lost and taken again since reading started).
    fn drop_lapsed(&mut self) {
        let Some(group) = &self.group else { return };
        let now = tokio::time::Instant::now();
        let held = group.keeper.held();
        let lapsed: Vec<PartitionId> = group
            .reading
            .iter()
            .filter(|(shard, reading)| {
                held.get(*shard)
                    .is_none_or(|h| h.valid_until <= now || h.tenure != reading.tenure)
            })
            .map(|(shard, _)| shard.clone())
            .collect();
        for shard in lapsed {
            tracing::info!(stream = %self.stream, %shard, "lease lost: no longer reading the shard");
            self.stop_reading(&shard);
        }
    }

    /// Asks the keeper to write a shard's end or pass its lease on; the shard is no
    /// longer read here whatever the outcome (an unknown outcome may have applied).
    async fn let_go(
        &mut self,
        shard: &PartitionId,
        request: impl FnOnce(oneshot::Sender<Result<()>>) -> Request,
    ) {
        let Some(group) = &mut self.group else { return };
        match group.keeper.ask(request).await {
            // The checkpoint written covers every acknowledged record.
            Ok(()) => group.acks.forget(shard),
            Err(e) if e.kind() == ErrorKind::NotAssigned => {}
            Err(e) => tracing::warn!(stream = %self.stream, %shard, "letting a lease go: {e}"),
        }
        self.stop_reading(shard);
    }

    /// Brings the readers in line with the leases: stops shards whose lease was lost,
    /// checkpoints the end of shards read and acknowledged to the end, releases shards
    /// whose reader failed, hands over the leases other members asked for (committing
    /// what was acknowledged first), and starts reading newly leased shards.
    async fn reconcile(&mut self) {
        self.drop_lapsed();
        let Some(group) = &mut self.group else { return };
        if let Some(failure) = group
            .keeper
            .holdings
            .lock()
            .ok()
            .and_then(|mut h| h.failure.take())
        {
            self.pending_error.get_or_insert(failure);
        }
        let Some(group) = &self.group else { return };
        let finished: Vec<(PartitionId, Reading)> = group
            .reading
            .iter()
            .filter(|(shard, reading)| {
                reading.failed
                    || (reading.ended
                        && !group.acks.has_unacked(shard)
                        && !self.buffer.iter().any(|r| &r.partition == *shard))
            })
            .map(|(shard, reading)| (shard.clone(), *reading))
            .collect();
        for (shard, reading) in finished {
            let Some(group) = &self.group else { return };
            let tenure = reading.tenure;
            if reading.failed {
                // Released with what was acknowledged, for any member to try again.
                let checkpoint = group.acks.committable(&shard).cloned().map(Checkpoint::After);
                self.let_go(&shard, |reply| Request::HandOver {
                    shard: shard.clone(),
                    tenure,
                    checkpoint,
                    release: true,
                    reply,
                })
                .await;
            } else {
                self.let_go(&shard, |reply| Request::Checkpoint {
                    shard: shard.clone(),
                    tenure,
                    checkpoint: Checkpoint::ShardEnd,
                    reply,
                })
                .await;
            }
        }
        let Some(group) = &self.group else { return };
        let now = tokio::time::Instant::now();
        let held = group.keeper.held();
        let asked: Vec<(PartitionId, u64, Option<Checkpoint>)> = held
            .values()
            .filter(|h| h.handoff_to.is_some() && h.valid_until > now)
            .map(|h| {
                let shard = h.lease.shard.clone();
                let checkpoint = match group.reading.contains_key(&shard) {
                    true => group.acks.committable(&shard).cloned().map(Checkpoint::After),
                    false => None,
                };
                (shard, h.tenure, checkpoint)
            })
            .collect();
        for (shard, tenure, checkpoint) in asked {
            tracing::info!(stream = %self.stream, %shard, ?checkpoint, "handing a lease over");
            self.let_go(&shard, |reply| Request::HandOver {
                shard: shard.clone(),
                tenure,
                checkpoint,
                release: false,
                reply,
            })
            .await;
        }
        let Some(group) = &mut self.group else { return };
        let now = tokio::time::Instant::now();
        let held = group.keeper.held();
        let mut unstartable = Vec::new();
        for h in held.values() {
            let shard = &h.lease.shard;
            if h.valid_until <= now || h.handoff_to.is_some() || group.reading.contains_key(shard) {
                continue;
            }
            let (start, floor) = match group.begin(shard, h.tenure, h.lease.checkpoint.as_ref()) {
                Ok(p) => p,
                Err(e) => {
                    self.pending_error.get_or_insert(e);
                    unstartable.push((shard.clone(), h.tenure));
                    continue;
                }
            };
            let epoch = self.epochs.entry(shard.clone()).or_default();
            *epoch += 1;
            tracing::info!(stream = %self.stream, %shard, checkpoint = ?h.lease.checkpoint, "reading a newly leased shard");
            let lease = LeaseCheck {
                holdings: group.keeper.holdings.clone(),
                tenure: h.tenure,
            };
            let _ = self.control.send(Control::Assign {
                shard: shard.clone(),
                start,
                floor,
                epoch: *epoch,
                lease,
            });
        }
        // A lease this member cannot read is given back rather than held unread: the
        // error is reported, and another member (or this one) tries again.
        for (shard, tenure) in unstartable {
            let request = |reply| Request::HandOver {
                shard: shard.clone(),
                tenure,
                checkpoint: None,
                release: true,
                reply,
            };
            if let Err(e) = group.keeper.ask(request).await {
                tracing::warn!(stream = %self.stream, %shard, "giving back a lease that cannot be read: {e}");
            }
        }
    }

    /// Commits the acknowledged prefix of every shard this member reads.
    async fn commit_group(&mut self) -> Result<()> {
        self.drop_lapsed();
        let group = group_only(self.group.as_ref(), GroupOperation::Commit)?;
        let work: Vec<(PartitionId, u64, Offset)> = group
            .acks
            .all_committable()
            .into_iter()
            .filter_map(|(shard, offset)| group.reading.get(&shard).map(|r| (shard, r.tenure, offset)))
            .collect();
        let mut first_error = None;
        for (shard, tenure, offset) in work {
            let Some(group) = &self.group else { break };
            let result = group
                .keeper
                .ask(|reply| Request::Checkpoint {
                    shard: shard.clone(),
                    tenure,
                    checkpoint: Checkpoint::After(offset.clone()),
                    reply,
                })
                .await;
            match result {
                Ok(()) => {
                    if let Some(group) = &mut self.group {
                        group.acks.committed(&shard, offset);
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotAssigned => self.stop_reading(&shard),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.reconcile().await;
        if let Some(e) = first_error {
            return Err(e);
        }
        self.take_losses().map_or(Ok(()), Err)
    }

    /// A `NotAssigned` error naming the shards read with acknowledged records no
    /// checkpoint covers, if there are any (each is reported once).
    fn take_losses(&mut self) -> Option<Error> {
        let losses = std::mem::take(&mut self.group.as_mut()?.uncommitted_losses);
        if losses.is_empty() {
            return None;
        }
        Some(Error::new(
            ErrorKind::NotAssigned,
            format!(
                "the leases of shards of {} lapsed or moved on before their acknowledged records were \
                 checkpointed; those records may be delivered again: {}",
                self.stream,
                losses.join(", ")
            ),
        ))
    }

    /// The last checkpoint of every shard read, from what is acknowledged, for the
    /// leases released on close.
    fn closing_checkpoints(&self) -> BTreeMap<PartitionId, (u64, Checkpoint)> {
        let Some(group) = &self.group else {
            return BTreeMap::new();
        };
        group
            .acks
            .all_committable()
            .into_iter()
            .filter_map(|(shard, offset)| {
                let tenure = group.reading.get(&shard)?.tenure;
                Some((shard, (tenure, Checkpoint::After(offset))))
            })
            .collect()
    }
}

impl Membership {
    /// Starts reading a leased shard under `tenure`: tracks its acks from the group's
    /// checkpoint (so a commit never moves it back) and says where its reader starts.
    fn begin(
        &mut self,
        shard: &PartitionId,
        tenure: u64,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(Start, Option<Floor>)> {
        let placement = match checkpoint {
            None => Coordinator::placement(&self.start, true)?,
            Some(Checkpoint::TrimHorizon) => (Start::TrimHorizon, None),
            Some(Checkpoint::AtTimestamp(t)) => (Start::Timestamp(*t), None),
            Some(Checkpoint::After(offset)) => {
                Coordinator::placement(&StartFrom::After(offset.clone()), true)?
            }
            Some(Checkpoint::ShardEnd) => {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!("the lease of {shard}, a shard read to its end, was handed out"),
                ));
            }
        };
        self.reading.insert(
            shard.clone(),
            Reading {
                tenure,
                ended: false,
                failed: false,
            },
        );
        self.acks.forget(shard);
        self.acks.assign(shard);
        if let Some(Checkpoint::After(offset)) = checkpoint {
            self.acks.committed(shard, offset.clone());
        }
        Ok(placement)
    }
}

/// The lease table of `group` reading `stream`: the configured one or the default.
fn lease_table_name(shared: &Shared, stream: &str, group: &str) -> String {
    shared
        .config
        .lease_table
        .clone()
        .unwrap_or_else(|| crate::dynamo::default_table_name(stream, group))
}

/// The lease store of `group` reading `stream`, as the backend config says.
pub(crate) fn lease_store(shared: &Arc<Shared>, stream: &str, group: &str) -> Result<Arc<dyn LeaseStore>> {
    crate::validate_stream_name(stream)?;
    tributary_core::raw::validate_group_name(group)?;
    let table = lease_table_name(shared, stream, group);
    Ok(match shared.config.leases {
        LeaseStoreKind::Dynamodb => Arc::new(crate::dynamo::DynamoLeaseStore::new(
            shared.dynamodb.clone(),
            table,
            shared.config.operation_timeout,
        )),
        LeaseStoreKind::Memory => shared.memory_leases(&table),
    })
}

#[async_trait]
impl Consumer for KinesisConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.reconcile().await;
            if let Some(e) = self.pending_error.take() {
                return Err(e);
            }
            if !self.buffer.is_empty() {
                break;
            }
            let changed = self.group.as_ref().map(|g| g.keeper.changed.clone());
            let lease_change = async {
                match changed {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = tokio::time::timeout_at(deadline, self.events.recv()) => match received {
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
                },
                () = lease_change => {}
            }
        }
        let mut failure = None;
        while self.buffer.len() < max && failure.is_none() {
            match self.events.try_recv() {
                Ok(event) => failure = self.absorb(event),
                Err(_) => break,
            }
        }
        // No await since the last check: what is taken now is of valid leases.
        self.drop_lapsed();
        let batch = self.take(max);
        match failure {
            // Records first; the error comes with the next poll.
            Some(e) if batch.is_empty() => Err(e),
            Some(e) => {
                self.pending_error.get_or_insert(e);
                Ok(batch)
            }
            None => Ok(batch),
        }
    }

    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        let group = group_only(self.group.as_mut(), GroupOperation::Ack)?;
        if !group.reading.contains_key(partition) {
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!(
                    "shard {partition} of {} is not leased to this member",
                    self.stream
                ),
            ));
        }
        group.acks.ack(partition, offset)
    }

    async fn commit(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        self.commit_group().await
    }

    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        let known = match &self.group {
            Some(group) => group.reading.contains_key(partition),
            None => self
                .view
                .lock()
                .map(|v| v.known.contains(partition))
                .unwrap_or(false),
        };
        if !known {
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!(
                    "{} has no shard {partition} assigned to this consumer",
                    self.stream
                ),
            ));
        }
        if let StartFrom::At(o) | StartFrom::After(o) = &to {
            KinesisPosition::from_offset(o)?;
        }
        if let Some(group) = &mut self.group {
            group.acks.reset(partition);
            if let Some(reading) = group.reading.get_mut(partition) {
                reading.ended = false;
                reading.failed = false;
            }
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
        match &self.group {
            Some(group) => {
                let now = tokio::time::Instant::now();
                let held = group.keeper.held();
                group
                    .reading
                    .keys()
                    .filter(|s| held.get(*s).is_some_and(|h| h.valid_until > now))
                    .cloned()
                    .collect()
            }
            None => self
                .view
                .lock()
                .map(|v| v.known.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let committed = if self.group.is_some() {
            self.commit_group().await
        } else {
            Ok(())
        };
        // A commit that failed for a passing reason is tried once more with the release.
        let checkpoints = self.closing_checkpoints();
        self.closed = true;
        self.coordinator.abort();
        self.buffer.clear();
        let released = match &self.group {
            Some(group) => {
                group
                    .keeper
                    .ask(|reply| Request::ReleaseAll { checkpoints, reply })
                    .await
            }
            None => Ok(()),
        };
        let deregistered = match self.fan_out.take() {
            Some(registration) => registration.release(&self.shared).await,
            None => Ok(()),
        };
        // Closed for good: retrying the call cannot help, whatever the cause.
        let closed_but =
            |e: Error| Error::new(ErrorKind::Unavailable, format!("closed, but {e}")).with_retryable(false);
        let committed = match committed {
            Err(e) if !(e.kind() == ErrorKind::NotAssigned || e.is_retryable()) => Err(e),
            Err(e) if e.kind() == ErrorKind::NotAssigned => Err(closed_but(e)),
            // Losses the commit did not get to report (a passing error came first); a
            // passing error itself was retried by the release, whose outcome says.
            _ => self.take_losses().map_or(Ok(()), |e| Err(closed_but(e))),
        };
        committed.and(released).and(deregistered)
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
