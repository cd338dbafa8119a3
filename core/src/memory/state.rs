//! The engine's shared state, behind one mutex: every operation is short and never
//! awaits while holding it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::MemoryConfig;
use crate::error::{Error, Result};
use crate::group::{GroupState, MemberId};
use crate::id::Timestamp;
use crate::record::{Headers, StartFrom};

/// The most partitions a memory stream may have.
pub(super) const MAX_PARTITIONS: u32 = 10_000;

#[derive(Debug)]
pub(super) struct Engine {
    pub config: MemoryConfig,
    state: Mutex<State>,
}

impl Engine {
    pub(super) fn new(config: MemoryConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The state. A panic while holding the lock cannot leave it half-updated in a way
    /// that matters more than losing the engine, so a poisoned lock is recovered.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub streams: BTreeMap<String, StreamState>,
    /// Keyed by (group, stream).
    pub groups: HashMap<(String, String), GroupState>,
    next_incarnation: u64,
    next_member: MemberId,
}

impl State {
    pub(super) fn stream(&self, name: &str) -> Result<&StreamState> {
        self.streams
            .get(name)
            .ok_or_else(|| Error::not_found(format!("stream {name:?} does not exist")))
    }

    pub(super) fn stream_mut(&mut self, name: &str) -> Result<&mut StreamState> {
        self.streams
            .get_mut(name)
            .ok_or_else(|| Error::not_found(format!("stream {name:?} does not exist")))
    }

    pub(super) fn create_stream(
        &mut self,
        name: &str,
        partitions: u32,
        retention: Option<Duration>,
    ) -> Result<()> {
        if self.streams.contains_key(name) {
            return Err(Error::new(
                crate::ErrorKind::AlreadyExists,
                format!("stream {name:?} already exists"),
            ));
        }
        self.next_incarnation += 1;
        let now = Instant::now();
        self.streams.insert(
            name.to_string(),
            StreamState {
                name: name.into(),
                incarnation: self.next_incarnation,
                partitions: (0..partitions).map(|_| PartitionLog::new(now)).collect(),
                retention,
                notify: Arc::new(Notify::new()),
                next_unkeyed: 0,
            },
        );
        Ok(())
    }

    pub(super) fn delete_stream(&mut self, name: &str) -> Result<()> {
        let stream = self
            .streams
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("stream {name:?} does not exist")))?;
        self.groups.retain(|(_, s), _| s != name);
        // Readers waiting on it learn that it is gone.
        stream.notify.notify_waiters();
        Ok(())
    }

    pub(super) fn new_member(&mut self) -> MemberId {
        self.next_member += 1;
        self.next_member
    }
}

#[derive(Debug)]
pub(super) struct StreamState {
    pub name: Arc<str>,
    /// Tells a re-created stream of the same name from the one a consumer started on.
    pub incarnation: u64,
    pub partitions: Vec<PartitionLog>,
    pub retention: Option<Duration>,
    /// Woken on every append and group change of this stream.
    pub notify: Arc<Notify>,
    /// Where the next unkeyed batch goes (round robin over batches).
    pub next_unkeyed: u32,
}

impl StreamState {
    pub(super) fn add_partitions(&mut self, more: u32) {
        let now = Instant::now();
        self.partitions.extend((0..more).map(|_| PartitionLog::new(now)));
    }

    pub(super) fn partition_count(&self) -> u32 {
        // Bounded by MAX_PARTITIONS at creation and growth.
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }
}

#[derive(Debug)]
pub(super) struct StoredRecord {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Headers,
    pub timestamp: Timestamp,
}

#[derive(Debug)]
pub(super) struct PartitionLog {
    pub records: Vec<StoredRecord>,
    /// When the partition was created: partitions added after a consumer started are
    /// read from their start, whatever the consumer's start position.
    pub created: Instant,
}

impl PartitionLog {
    fn new(created: Instant) -> Self {
        Self {
            records: Vec::new(),
            created,
        }
    }

    /// The offset the next record gets.
    pub(super) fn high(&self) -> u64 {
        self.records.len() as u64
    }

    /// The cursor (next offset to read) that `start` means in this partition.
    pub(super) fn resolve(&self, start: &StartFrom) -> u64 {
        match start {
            StartFrom::Earliest => 0,
            StartFrom::Latest => self.high(),
            StartFrom::At(o) => o.as_u64().unwrap_or(u64::MAX),
            StartFrom::After(o) => o.as_u64().map_or(u64::MAX, |n| n.saturating_add(1)),
            StartFrom::Timestamp(t) => self
                .records
                .iter()
                .position(|r| r.timestamp >= *t)
                .map_or(self.high(), |i| i as u64),
        }
    }

    pub(super) fn get(&self, offset: u64) -> Option<&StoredRecord> {
        usize::try_from(offset).ok().and_then(|i| self.records.get(i))
    }
}
