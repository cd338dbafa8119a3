//! Reads from the memory engine: broadcast readers and group members.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::state::{Engine, GroupState, MemberId, State, StreamState};
use crate::ack::AckTracker;
use crate::client::{Consumer, ConsumerConfig, ConsumerMode, validate_group_name};
use crate::error::{Error, ErrorKind, Result};
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
    /// Next offset to read, per assigned partition.
    cursors: BTreeMap<u32, u64>,
    acks: AckTracker,
    /// Partition to read first in the next poll, so no partition starves the others.
    rotation: u32,
    closed: bool,
}

struct Member {
    group: String,
    id: MemberId,
}

impl MemoryConsumer {
    pub fn new(engine: Arc<Engine>, config: ConsumerConfig) -> Result<Self> {
        validate_stream_name(&config.stream)?;
        let member = match &config.mode {
            ConsumerMode::Broadcast => None,
            ConsumerMode::Group(group) => {
                validate_group_name(group)?;
                Some(group.clone())
            }
        };
        let mut consumer = {
            let mut state = engine.lock();
            let incarnation = state.stream(&config.stream)?.incarnation;
            let member = member.map(|group| {
                let id = state.new_member();
                let members = &mut state
                    .groups
                    .entry((group.clone(), config.stream.clone()))
                    .or_default()
                    .members;
                members.insert(id, Instant::now());
                Member { group, id }
            });
            Self {
                engine: engine.clone(),
                stream: config.stream,
                incarnation,
                member,
                start: config.start,
                created: Instant::now(),
                cursors: BTreeMap::new(),
                acks: AckTracker::new(),
                rotation: 0,
                closed: false,
            }
        };
        let mut state = engine.lock();
        consumer.sync(&mut state)?;
        // Other members rebalance now that this one joined.
        state.stream(&consumer.stream)?.notify.notify_waiters();
        drop(state);
        Ok(consumer)
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

    /// Where a newly assigned partition starts when the group has no commit for it.
    fn initial_cursor(&self, stream: &StreamState, p: u32) -> u64 {
        let log = &stream.partitions[p as usize];
        if log.created > self.created {
            // Created after this consumer started: every record in it is new to us.
            0
        } else {
            log.resolve(&self.start)
        }
    }

    /// Brings the assignment up to date: new partitions for a broadcast reader; for a
    /// group member, releases partitions that now belong to others (committing their
    /// acknowledged prefix first) and takes the free partitions that belong to it.
    /// Returns when to look again if a partition it should get is still held by a
    /// member that may yet be evicted.
    fn sync(&mut self, state: &mut State) -> Result<Option<Instant>> {
        let stream = self.stream(state)?;
        let partitions = stream.partition_count();
        let notify = stream.notify.clone();
        let Some(member) = &self.member else {
            for p in 0..partitions {
                if !self.cursors.contains_key(&p) {
                    let cursor = self.initial_cursor(stream, p);
                    self.cursors.insert(p, cursor);
                }
            }
            return Ok(None);
        };
        let (group_name, me) = (member.group.clone(), member.id);
        let initial: BTreeMap<u32, u64> = (0..partitions)
            .map(|p| (p, self.initial_cursor(stream, p)))
            .collect();
        let timeout = self.engine.config.session_timeout;
        let now = Instant::now();
        let group = state.groups.entry((group_name, self.stream.clone())).or_default();
        let mut changed = group.evict_stale(now, timeout, me);
        if group.members.insert(me, now).is_none() {
            // Evicted while away: rejoin. What was delivered but not committed will be
            // delivered again to whoever holds those partitions now.
            self.release_all_without_commit();
            changed = true;
        }
        let target = group.target(me, partitions);
        let held: Vec<u32> = self.cursors.keys().copied().collect();
        for p in held {
            if !target.contains(&p) {
                self.release(group, p);
                changed = true;
            }
        }
        for &p in &target {
            if self.cursors.contains_key(&p) {
                continue;
            }
            if group.owners.get(&p).is_some_and(|owner| *owner != me) {
                continue;
            }
            group.owners.insert(p, me);
            let cursor = group.committed.get(&p).copied().unwrap_or(initial[&p]);
            self.cursors.insert(p, cursor);
            self.acks.assign(&PartitionId::from_index(p));
            changed = true;
        }
        let wanted: BTreeSet<u32> = target
            .into_iter()
            .filter(|p| !self.cursors.contains_key(p))
            .collect();
        let look_again = group.next_eviction(me, &wanted, timeout);
        if changed {
            notify.notify_waiters();
        }
        Ok(look_again)
    }

    /// Gives a partition back to the group, committing its acknowledged prefix first
    /// (commit on revoke).
    fn release(&mut self, group: &mut GroupState, p: u32) {
        let id = PartitionId::from_index(p);
        if let Some(last) = self.acks.committable(&id).and_then(Offset::as_u64) {
            group.commit(p, last + 1);
        }
        self.acks.forget(&id);
        self.cursors.remove(&p);
        if let Some(member) = &self.member {
            if group.owners.get(&p) == Some(&member.id) {
                group.owners.remove(&p);
            }
        }
    }

    fn release_all_without_commit(&mut self) {
        for p in std::mem::take(&mut self.cursors).into_keys() {
            self.acks.forget(&PartitionId::from_index(p));
        }
    }

    /// Takes up to `max` records from the assigned partitions, starting with a different
    /// partition each time.
    fn read(&mut self, state: &State, max: usize) -> Result<Vec<Received>> {
        let stream = self.stream(state)?;
        let mut out = Vec::new();
        let assigned: Vec<u32> = self.cursors.keys().copied().collect();
        if assigned.is_empty() || max == 0 {
            return Ok(out);
        }
        let first = assigned.iter().position(|p| *p >= self.rotation).unwrap_or(0);
        self.rotation = assigned[first].wrapping_add(1);
        for &p in assigned[first..].iter().chain(&assigned[..first]) {
            let log = &stream.partitions[p as usize];
            let Some(cursor) = self.cursors.get_mut(&p) else {
                continue;
            };
            let partition = PartitionId::from_index(p);
            while out.len() < max {
                let Some(record) = log.get(*cursor) else { break };
                let offset = Offset::new(*cursor);
                if self.member.is_some() {
                    self.acks.delivered(&partition, offset.clone());
                }
                out.push(Received {
                    stream: stream.name.clone(),
                    partition: partition.clone(),
                    offset,
                    key: record.key.clone(),
                    value: record.value.clone(),
                    headers: record.headers.clone(),
                    timestamp: Some(record.timestamp),
                });
                *cursor += 1;
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    fn commit_acked(&mut self, state: &mut State) -> Result<()> {
        let Some(member) = &self.member else {
            return Err(Error::unsupported(
                "a broadcast consumer has no group to commit to; use ConsumerMode::Group",
            ));
        };
        self.stream(state)?;
        let key = (member.group.clone(), self.stream.clone());
        let me = member.id;
        let group = state.groups.entry(key).or_default();
        let mut refused = Vec::new();
        for (partition, last) in self.acks.all_committable() {
            let (Some(p), Some(n)) = (partition.index(), last.as_u64()) else {
                continue;
            };
            if group.owners.get(&p) == Some(&me) {
                group.commit(p, n + 1);
                self.acks.committed(&partition, last);
            } else {
                // Evicted meanwhile: another member may already read it.
                self.acks.forget(&partition);
                self.cursors.remove(&p);
                refused.push(partition);
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotAssigned,
                format!(
                    "not committed: partition(s) {} are no longer assigned to this consumer",
                    refused
                        .iter()
                        .map(PartitionId::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    fn leave(&mut self, state: &mut State) {
        if let Some(member) = &self.member {
            if let Some(group) = state.groups.get_mut(&(member.group.clone(), self.stream.clone())) {
                group.remove_member(member.id);
            }
            if let Some(stream) = state.streams.get(&self.stream) {
                stream.notify.notify_waiters();
            }
        }
        self.release_all_without_commit();
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.check_open()?;
        let deadline = tokio::time::Instant::now() + timeout;
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
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline.min(now + heartbeat);
            if let Some(at) = look_again {
                wake = wake.min(tokio::time::Instant::from_std(at));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        self.check_open()?;
        if self.member.is_none() {
            return Err(Error::unsupported(
                "a broadcast consumer has no group to acknowledge to; use ConsumerMode::Group",
            ));
        }
        self.acks.ack(partition, offset)
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
        let p = partition
            .index()
            .filter(|p| self.cursors.contains_key(p))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotAssigned,
                    format!("cannot seek partition {partition}: it is not assigned to this consumer"),
                )
            })?;
        let cursor = stream.partitions[p as usize].resolve(&to);
        self.cursors.insert(p, cursor);
        if self.member.is_some() {
            self.acks.forget(partition);
            self.acks.assign(partition);
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.cursors.keys().map(|p| PartitionId::from_index(*p)).collect()
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
