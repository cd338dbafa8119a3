//! The coordinator: owns a consumer's shard readers, starts them in lineage order (a
//! child only after all its parents reached their end) and restarts them on seek.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tributary_core::{ErrorKind, PartitionId, Result, StartFrom, Timestamp};

use crate::position::KinesisPosition;
use crate::reader::{Event, Floor, LeaseCheck, ReaderContext, ReaderExit, Start, View};
use crate::shards::list_shards;
use crate::{Shared, fanout, polling};

/// What the consumer asks of the coordinator.
pub(crate) enum Control {
    Seek {
        shard: PartitionId,
        to: StartFrom,
        epoch: u64,
        done: oneshot::Sender<()>,
    },
    /// A group member got the lease of a shard: read it from there.
    Assign {
        shard: PartitionId,
        start: Start,
        floor: Option<Floor>,
        epoch: u64,
        lease: LeaseCheck,
    },
    /// A group member no longer holds the lease of a shard: stop reading it.
    Revoke { shard: PartitionId },
}

/// A shard the coordinator knows.
pub(crate) struct ShardState {
    pub(crate) parents: Vec<PartitionId>,
    pub(crate) status: Status,
    /// Where it starts when its reader starts.
    pub(crate) start: Start,
    pub(crate) floor: Option<Floor>,
    pub(crate) epoch: u64,
    /// The lease a group member reads it under.
    pub(crate) lease: Option<LeaseCheck>,
}

pub(crate) enum Status {
    Waiting,
    Reading(AbortHandle),
    Ended,
    /// Its reader failed before the end: its children keep waiting (a seek restarts it).
    Failed,
}

/// Owns the shard readers: starts them in lineage order, restarts them on seek.
pub(crate) struct Coordinator {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream: Arc<str>,
    pub(crate) start: StartFrom,
    pub(crate) shards: BTreeMap<PartitionId, ShardState>,
    pub(crate) readers: JoinSet<(PartitionId, u64, ReaderExit)>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) view: Arc<Mutex<View>>,
    pub(crate) fan_out_arn: Option<Arc<str>>,
    /// While the consumer is being made: receivers of its first readers' positions.
    pub(crate) positioning: Option<Vec<oneshot::Receiver<()>>>,
    /// A group member reads the shards it is assigned, not the whole lineage.
    pub(crate) group: bool,
}

impl Coordinator {
    /// The start and floor of a shard for a start position; `initial` for shards that
    /// existed when the consumer was made.
    pub(crate) fn placement(to: &StartFrom, initial: bool) -> Result<(Start, Option<Floor>)> {
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

    pub(crate) fn add_shard(
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
                lease: None,
            },
        );
        if let Ok(mut view) = self.view.lock() {
            view.known.insert(id);
        }
        Ok(())
    }

    /// Starts every waiting shard whose parents all ended (or are gone from the
    /// listing: trimmed after the retention period).
    pub(crate) fn start_ready(&mut self) {
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
    pub(crate) fn spawn_reader(&mut self, id: &PartitionId, positioned: Option<oneshot::Sender<()>>) {
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
            lease: state.lease.clone(),
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

    /// Reads a shard this group member now leases, from where the group stands.
    pub(crate) fn assign(
        &mut self,
        id: PartitionId,
        start: Start,
        floor: Option<Floor>,
        epoch: u64,
        lease: LeaseCheck,
    ) {
        if let Some(ShardState {
            status: Status::Reading(handle),
            ..
        }) = self.shards.get(&id)
        {
            handle.abort();
        }
        self.shards.insert(
            id.clone(),
            ShardState {
                parents: Vec::new(),
                status: Status::Waiting,
                start,
                floor,
                epoch,
                lease: Some(lease),
            },
        );
        if let Ok(mut view) = self.view.lock() {
            view.known.insert(id.clone());
        }
        self.spawn_reader(&id, None);
    }

    pub(crate) fn revoke(&mut self, id: &PartitionId) {
        if let Some(ShardState {
            status: Status::Reading(handle),
            ..
        }) = self.shards.remove(id)
        {
            handle.abort();
        }
        if let Ok(mut view) = self.view.lock() {
            view.known.remove(id);
            view.lag.remove(id);
        }
    }

    pub(crate) async fn refresh(&mut self) -> Result<()> {
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
    pub(crate) fn seek(
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

    pub(crate) async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut refresh = tokio::time::interval(self.shared.config.shard_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        self.start_ready();
        loop {
            tokio::select! {
                message = control.recv() => match message {
                    Some(Control::Assign { shard, start, floor, epoch, lease }) => {
                        self.assign(shard, start, floor, epoch, lease);
                    }
                    Some(Control::Revoke { shard }) => self.revoke(&shard),
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
                        ReaderExit::Ended(_) if self.group => {
                            if let Some(state) = self.shards.get_mut(&shard) {
                                state.status = Status::Ended;
                            }
                            // The member checkpoints the end once every record is
                            // acknowledged; the group's keepers then take the children.
                            if self.events.send(Event::Ended { shard, epoch }).await.is_err() {
                                return;
                            }
                        }
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
                        ReaderExit::Failed(error) if self.group => {
                            if let Some(state) = self.shards.get_mut(&shard) {
                                state.status = Status::Failed;
                            }
                            if self.events.send(Event::ShardFailed { shard, epoch, error }).await.is_err() {
                                return;
                            }
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
                _ = refresh.tick(), if !self.group => {
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
