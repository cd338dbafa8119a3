//! Reads from the memory engine: broadcast readers and group members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::state::{Engine, State, StreamState};
use crate::broadcast::{GroupOperation, group_only};
use crate::client::{Consumer, ConsumerConfig, ConsumerMode, validate_group_name};
use crate::error::{Error, Result};
use crate::group::{Cursors, MemberId};
use crate::id::{Offset, PartitionId};
use crate::record::{Received, StartFrom};
use crate::stream::validate_stream_name;

pub(super) struct MemoryConsumer {
    engine: Arc<Engine>,
    stream: String,
    incarnation: u64,
    /// Set for a group member.
    member: Option<Member>,
    start: StartFrom,
    created: Instant,
    cursors: Cursors,
    /// Partition to read first in the next poll, so no partition starves the others.
    rotation: u32,
    closed: bool,
}

struct Member {
    /// (group, stream), the key of the group's state.
    key: (String, String),
    id: MemberId,
}

impl MemoryConsumer {
    pub(super) fn new(engine: Arc<Engine>, config: ConsumerConfig) -> Result<Self> {
        validate_stream_name(&config.stream)?;
        if let ConsumerMode::Group(group) = &config.mode {
            validate_group_name(group)?;
        }
        let mut state = engine.lock();
        let incarnation = state.stream(&config.stream)?.incarnation;
        let member = match config.mode {
            ConsumerMode::Broadcast => None,
            ConsumerMode::Group(group) => {
                let id = state.new_member();
                let key = (group, config.stream.clone());
                state
                    .groups
                    .entry(key.clone())
                    .or_default()
                    .join(id, Instant::now());
                Some(Member { key, id })
            }
        };
        drop(state);
        // Built with the lock released: dropping it on an error below takes the lock.
        let mut consumer = Self {
            engine: engine.clone(),
            stream: config.stream,
            incarnation,
            member,
            start: config.start,
            created: Instant::now(),
            cursors: Cursors::default(),
            rotation: 0,
            closed: false,
        };
        let joined = {
            let mut state = engine.lock();
            consumer.sync(&mut state).map(|_| {
                // Other members rebalance now that this one joined.
                if let Some(stream) = state.streams.get(&consumer.stream) {
                    stream.notify.notify_waiters();
                }
            })
        };
        joined.map(|()| consumer)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer"));
        }
        Ok(())
    }

    /// The stream this consumer started on, or NotFound if it was deleted (or deleted
    /// and created again).
    fn stream<'s>(&self, state: &'s State) -> Result<&'s StreamState> {
        match state.streams.get(&self.stream) {
            Some(s) if s.incarnation == self.incarnation => Ok(s),
            _ => Err(Error::not_found(format!("stream {:?} was deleted", self.stream))),
        }
    }

    /// Brings the assignment up to date (see [`crate::group::GroupState::sync`]);
    /// a broadcast reader just adds partitions created since it last looked. Returns
    /// when to look again if a partition it should get is still held elsewhere.
    fn sync(&mut self, state: &mut State) -> Result<Option<Instant>> {
        self.stream(state)?;
        let (streams, groups) = (&state.streams, &mut state.groups);
        let Some(stream) = streams.get(&self.stream) else {
            return Err(Error::not_found(format!("stream {:?} was deleted", self.stream)));
        };
        let partitions = stream.partition_count();
        // Resolved only for partitions being taken. Partitions created after this
        // consumer started are read from their start: every record in them is new to it.
        let (created, start) = (self.created, &self.start);
        let initial = |p: u32| {
            let log = &stream.partitions[p as usize];
            if log.created > created {
                0
            } else {
                log.resolve(start)
            }
        };
        let Some(member) = &self.member else {
            for p in 0..partitions {
                self.cursors.positions.entry(p).or_insert_with(|| initial(p));
            }
            return Ok(None);
        };
        let outcome = groups.entry(member.key.clone()).or_default().sync(
            member.id,
            &mut self.cursors,
            partitions,
            |p| Ok(initial(p)),
            Instant::now(),
            self.engine.config.session_timeout,
        );
        if outcome.changed {
            stream.notify.notify_waiters();
        }
        Ok(outcome.look_again)
    }

    /// Takes up to `max` records from the assigned partitions, starting with a different
    /// partition each time.
    fn read(&mut self, state: &State, max: usize) -> Result<Vec<Received>> {
        let stream = self.stream(state)?;
        let mut out = Vec::new();
        let assigned: Vec<u32> = self.cursors.positions.keys().copied().collect();
        if assigned.is_empty() || max == 0 {
            return Ok(out);
        }
        let first = assigned.iter().position(|p| *p >= self.rotation).unwrap_or(0);
        self.rotation = assigned[first].wrapping_add(1);
        for &p in assigned[first..].iter().chain(&assigned[..first]) {
            let log = &stream.partitions[p as usize];
            let Some(&start) = self.cursors.positions.get(&p) else {
                continue;
            };
            let partition = PartitionId::from_index(p);
            let mut cursor = start;
            while out.len() < max {
                let Some(record) = log.get(cursor) else { break };
                if self.member.is_some() {
                    self.cursors.delivered(&partition, cursor);
                }
                out.push(Received {
                    stream: stream.name.clone(),
                    partition: partition.clone(),
                    offset: Offset::new(cursor),
                    key: record.key.clone(),
                    value: record.value.clone(),
                    headers: record.headers.clone(),
                    timestamp: Some(record.timestamp),
                });
                cursor += 1;
            }
            self.cursors.positions.insert(p, cursor);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    fn commit_acked(&mut self, state: &mut State) -> Result<()> {
        let member = group_only(self.member.as_ref(), GroupOperation::Commit)?;
        self.stream(state)?;
        let group = state.groups.entry(member.key.clone()).or_default();
        group.commit_acked(member.id, &mut self.cursors).map(drop)
    }

    fn leave(&mut self, state: &mut State) {
        if let Some(member) = &self.member {
            if let Some(group) = state.groups.get_mut(&member.key) {
                group.leave(member.id, &mut self.cursors);
            }
            if let Some(stream) = state.streams.get(&self.stream) {
                stream.notify.notify_waiters();
            }
        }
        self.cursors = Cursors::default();
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = crate::deadline::deadline_after(timeout);
        // Even an idle member must show it is alive well within the session timeout.
        let heartbeat = self.engine.config.session_timeout / 3;
        let engine = self.engine.clone();
        loop {
            let notify = engine.lock().streams.get(&self.stream).map(|s| s.notify.clone());
            let Some(notify) = notify else {
                return Err(Error::not_found(format!("stream {:?} was deleted", self.stream)));
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so an append between the look and the wait
            // still wakes us.
            notified.as_mut().enable();
            let look_again = {
                let mut state = engine.lock();
                let look_again = self.sync(&mut state)?;
                let records = self.read(&state, max)?;
                if !records.is_empty() {
                    return Ok(records);
                }
                look_again
            };
            if !crate::group::wait_for_news(notified.as_mut(), deadline, heartbeat, look_again).await {
                return Ok(Vec::new());
            }
        }
    }

    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        self.check_open()?;
        group_only(self.member.as_ref(), GroupOperation::Ack)?;
        self.cursors.acks.ack(partition, offset)
    }

    async fn commit(&mut self) -> Result<()> {
        self.check_open()?;
        let engine = self.engine.clone();
        let mut state = engine.lock();
        self.commit_acked(&mut state)
    }

    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        self.check_open()?;
        let engine = self.engine.clone();
        let state = engine.lock();
        let stream = self.stream(&state)?;
        let p = self.cursors.held(partition)?;
        let cursor = stream.partitions[p as usize].resolve(&to);
        self.cursors.seek(partition, cursor)
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.cursors.assignment()
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let engine = self.engine.clone();
        let mut state = engine.lock();
        let committed = if self.member.is_some() && self.stream(&state).is_ok() {
            self.commit_acked(&mut state)
        } else {
            Ok(())
        };
        self.leave(&mut state);
        committed
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        if !self.closed {
            // A crash: leave without committing.
            let engine = self.engine.clone();
            let mut state = engine.lock();
            self.leave(&mut state);
        }
    }
}
