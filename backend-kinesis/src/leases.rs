//! Leases: which group member reads which shard, and where the group's reading of each
//! shard stands. Every change is a conditional write on the lease's owner and counter,
//! so of two members acting on the same lease exactly one succeeds.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tributary_core::{Error, ErrorKind, Offset, PartitionId, Result, Timestamp, async_trait};

/// One shard's lease, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The shard.
    pub shard: PartitionId,
    /// The member reading it, if any.
    pub owner: Option<String>,
    /// Raised by every change made by the owner (renewals included): a counter that has
    /// not moved for the failover time means its owner is gone.
    pub counter: u64,
    /// Where the group's reading stands; `None` when the group has not read the shard yet
    /// (it then starts where the consumer config says).
    pub checkpoint: Option<Checkpoint>,
    /// The shards this one was split or merged from: it is read only after each of
    /// them is checkpointed at its end.
    pub parents: Vec<PartitionId>,
    /// A member asking the owner to hand the lease over (to balance the group). The
    /// owner commits what was acknowledged and passes the lease on at its next poll.
    pub pending_owner: Option<String>,
    /// The failover time the owner runs with, written when it took the lease: another
    /// member waits for the longer of its own and this before taking the lease, so
    /// members configured differently never read a shard at the same time.
    pub owner_failover: Option<Duration>,
}

impl Lease {
    /// A new lease of `shard`, owned by no one.
    pub fn new(shard: PartitionId, parents: Vec<PartitionId>, checkpoint: Option<Checkpoint>) -> Self {
        Self {
            shard,
            owner: None,
            counter: 0,
            checkpoint,
            parents,
            pending_owner: None,
            owner_failover: None,
        }
    }

    /// Whether the shard was read to its end.
    pub fn ended(&self) -> bool {
        self.checkpoint == Some(Checkpoint::ShardEnd)
    }
}

/// Where a group's reading of a shard stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// From the shard's oldest record (a shard created by a reshard after the group
    /// started: it holds only records the group has not seen).
    TrimHorizon,
    /// From the records that arrived at or after this time: where a group that starts
    /// at the end (`StartFrom::Latest`) starts a shard, fixed when the group first saw
    /// it, so that a lease changing hands before any checkpoint skips nothing.
    AtTimestamp(Timestamp),
    /// Everything up to and including this offset was processed.
    After(Offset),
    /// The shard is closed and every record of it was processed: its children may be
    /// read.
    ShardEnd,
}

/// A change to a lease. Every change but [`LeaseChange::RequestHandoff`] raises the
/// counter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseChange {
    /// The owner is alive.
    Renew,
    /// A member takes the lease (it had no owner, its owner stopped renewing, or the
    /// owner did not hand it over in time); a pending hand-over request is dropped.
    Take {
        /// The new owner.
        owner: String,
        /// The new owner's failover time (see [`Lease::owner_failover`]).
        failover: Duration,
    },
    /// The member a lease was handed to starts holding it: a renewal that also writes
    /// its failover time (a pending hand-over request is kept).
    Confirm {
        /// The owner's failover time (see [`Lease::owner_failover`]).
        failover: Duration,
    },
    /// The owner records progress.
    Checkpoint(Checkpoint),
    /// The owner passes the lease on: to the member that asked for it, or to no one;
    /// with a last checkpoint.
    Transfer {
        /// The new owner, or `None` to release the lease.
        to: Option<String>,
        /// A checkpoint written in the same change.
        checkpoint: Option<Checkpoint>,
    },
    /// A member asks the owner for the lease; refused when another member asked first.
    RequestHandoff {
        /// The member asking.
        to: String,
    },
}

/// Where leases live: a DynamoDB table or process memory. Implementations make each
/// [`update`](LeaseStore::update) atomic and conditional on the expected owner and
/// counter.
#[async_trait]
pub trait LeaseStore: Send + Sync + fmt::Debug {
    /// Makes the store usable (creates the table on first use).
    ///
    /// # Errors
    /// The store's error. Cancel safe.
    async fn prepare(&self) -> Result<()>;

    /// Every lease, read consistently.
    ///
    /// # Errors
    /// The store's error. Cancel safe.
    async fn list(&self) -> Result<Vec<Lease>>;

    /// Adds `lease` unless the shard already has one; true when added.
    ///
    /// # Errors
    /// The store's error. Not cancel safe: the lease may have been added.
    async fn create(&self, lease: &Lease) -> Result<bool>;

    /// Applies `change` if the stored lease still has `expected`'s owner and counter
    /// (and, for a handoff request, no pending owner); returns the lease as changed.
    ///
    /// # Errors
    /// `NotAssigned` when the condition fails (the lease moved on), else the store's
    /// error. Not cancel safe: the change may have been applied.
    async fn update(&self, expected: &Lease, change: &LeaseChange) -> Result<Lease>;

    /// Deletes the lease of a shard that was read to its end; false when it had
    /// changed or was gone.
    ///
    /// # Errors
    /// The store's error. Not cancel safe.
    async fn delete_ended(&self, shard: &PartitionId) -> Result<bool>;
}

/// The error of an update whose condition failed.
pub(crate) fn moved_on(shard: &PartitionId) -> Error {
    Error::new(
        ErrorKind::NotAssigned,
        format!("the lease of shard {shard} changed hands"),
    )
}

/// Applies `change` to `lease` (the condition already checked).
pub(crate) fn apply(lease: &Lease, change: &LeaseChange) -> Lease {
    let mut next = lease.clone();
    match change {
        LeaseChange::Renew => {}
        LeaseChange::Take { owner, failover } => {
            next.owner = Some(owner.clone());
            next.pending_owner = None;
            next.owner_failover = Some(*failover);
        }
        LeaseChange::Confirm { failover } => next.owner_failover = Some(*failover),
        LeaseChange::Checkpoint(c) => next.checkpoint = Some(c.clone()),
        LeaseChange::Transfer { to, checkpoint } => {
            next.owner = to.clone();
            next.pending_owner = None;
            // The new owner writes its own when it confirms the lease.
            next.owner_failover = None;
            if let Some(c) = checkpoint {
                next.checkpoint = Some(c.clone());
            }
        }
        LeaseChange::RequestHandoff { to } => {
            next.pending_owner = Some(to.clone());
            return next;
        }
    }
    next.counter += 1;
    next
}

/// Leases in this process's memory, shared by the members of one backend.
#[derive(Debug, Default)]
pub struct MemoryLeaseStore {
    leases: Mutex<BTreeMap<PartitionId, Lease>>,
}

impl MemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<PartitionId, Lease>) -> T) -> Result<T> {
        let mut leases = self
            .leases
            .lock()
            .map_err(|_| Error::new(ErrorKind::Backend, "the in-memory lease store was poisoned"))?;
        Ok(f(&mut leases))
    }
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn prepare(&self) -> Result<()> {
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        self.with(|leases| leases.values().cloned().collect())
    }

    async fn create(&self, lease: &Lease) -> Result<bool> {
        self.with(|leases| {
            if leases.contains_key(&lease.shard) {
                return false;
            }
            leases.insert(lease.shard.clone(), lease.clone());
            true
        })
    }

    async fn update(&self, expected: &Lease, change: &LeaseChange) -> Result<Lease> {
        self.with(|leases| {
            let stored = leases
                .get_mut(&expected.shard)
                .ok_or_else(|| moved_on(&expected.shard))?;
            let holds = stored.owner == expected.owner && stored.counter == expected.counter;
            let free =
                !matches!(change, LeaseChange::RequestHandoff { .. }) || stored.pending_owner.is_none();
            if !holds || !free {
                return Err(moved_on(&expected.shard));
            }
            *stored = apply(stored, change);
            Ok(stored.clone())
        })?
    }

    async fn delete_ended(&self, shard: &PartitionId) -> Result<bool> {
        self.with(|leases| {
            if leases.get(shard).is_some_and(Lease::ended) {
                leases.remove(shard);
                true
            } else {
                false
            }
        })
    }
}
