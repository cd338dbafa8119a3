//! The lease keeper of one group member: a task that renews the member's leases, takes
//! leases no one holds (or whose owner stopped renewing), asks over-loaded members to
//! hand one over so that every member holds within one lease of the mean, and makes
//! leases for new shards. It is the only writer of the member's leases, so its writes
//! (renewals, checkpoints, handoffs) never race each other on the lease counter.
//!
//! Safety rests on one rule: a member treats a lease as its own only until `failover`
//! after it *sent* the last write that succeeded, while another member takes a lease
//! only after seeing its counter unchanged for `failover` (the longer of its own and
//! the one the owner wrote into the lease, so members configured differently keep the
//! rule). The two windows cannot overlap, so at most one member delivers a shard's
//! records at any time, and a member that lost a lease cannot checkpoint it (every
//! write is conditional on the counter). Time is measured on each member's monotonic
//! clock; wall clocks are never compared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tributary_core::{Error, ErrorKind, PartitionId, Result, StartFrom, Timestamp};

use crate::Shared;
use crate::leases::{Checkpoint, Lease, LeaseChange, LeaseStore};
use crate::shards::list_shards;

/// A lease this member holds.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) lease: Lease,
    /// The member may deliver the shard's records until then.
    pub(crate) valid_until: Instant,
    /// Another member asked for the lease: the consumer commits and hands it over.
    pub(crate) handoff_to: Option<String>,
    /// When the handoff request was first seen.
    handoff_seen: Option<Instant>,
    /// Which holding of the lease this is: a lease lost and taken again gets a new
    /// one, so work done under the old holding (acks, checkpoints) is refused.
    pub(crate) tenure: u64,
}

/// What the consumer reads of the keeper's state.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    pub(crate) held: BTreeMap<PartitionId, Held>,
    /// A failure retrying will not fix (the table or stream is gone, access denied),
    /// for the consumer to report.
    pub(crate) failure: Option<Error>,
}

/// What the consumer asks of the keeper.
pub(crate) enum Request {
    /// Records progress on a held lease (`SHARD_END` also releases it).
    Checkpoint {
        shard: PartitionId,
        tenure: u64,
        checkpoint: Checkpoint,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Passes a held lease to the member that asked for it (or, with `release`, to no
    /// one), with a last checkpoint.
    HandOver {
        shard: PartitionId,
        tenure: u64,
        checkpoint: Option<Checkpoint>,
        release: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Releases every lease (the consumer is closing), each with the last checkpoint
    /// given for its tenure, and stops.
    ReleaseAll {
        checkpoints: BTreeMap<PartitionId, (u64, Checkpoint)>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The consumer's end of a running keeper.
#[derive(Debug)]
pub(crate) struct KeeperHandle {
    pub(crate) worker: Arc<str>,
    pub(crate) holdings: Arc<Mutex<Holdings>>,
    /// Told whenever the set of held leases or a handoff request changes.
    pub(crate) changed: Arc<Notify>,
    requests: mpsc::UnboundedSender<Request>,
    task: tokio::task::AbortHandle,
}

impl KeeperHandle {
    /// Sends a request and waits for its answer.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .map_err(|_| Error::new(ErrorKind::Unavailable, "the group's lease keeper stopped"))?;
        answer
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "the group's lease keeper stopped"))?
    }

    /// A snapshot of the held leases.
    pub(crate) fn held(&self) -> BTreeMap<PartitionId, Held> {
        self.holdings.lock().map(|h| h.held.clone()).unwrap_or_default()
    }
}

impl Drop for KeeperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease as another member last saw it change.
struct Observed {
    counter: u64,
    owner: Option<String>,
    /// The failover time its owner wrote (zero when none).
    owner_failover: Duration,
    since: Instant,
}

/// The keeper task's state.
pub(crate) struct Keeper {
    shared: Arc<Shared>,
    stream: Arc<str>,
    store: Arc<dyn LeaseStore>,
    worker: Arc<str>,
    /// Where the consumer starts shards the group never read.
    start: StartFrom,
    failover: Duration,
    /// The tenure the next lease taken gets.
    next_tenure: u64,
    /// A shard ended: list shards and look for children at once.
    scan_soon: bool,
    holdings: Arc<Mutex<Holdings>>,
    changed: Arc<Notify>,
    observed: BTreeMap<PartitionId, Observed>,
    /// The handoff this member asked for and when.
    asked: Option<(PartitionId, Instant)>,
    /// When shards were last listed to make leases for new ones.
    synced: Option<Instant>,
    /// Shards with an unfinished lease that listings stopped naming, and since when.
    unlisted: BTreeMap<PartitionId, Instant>,
}

impl Keeper {
    /// A keeper for a new member of the group; nothing is read or written yet.
    pub(crate) fn new(
        shared: Arc<Shared>,
        stream: Arc<str>,
        store: Arc<dyn LeaseStore>,
        start: StartFrom,
    ) -> Self {
        let worker: Arc<str> = format!("tributary-{}-{:016x}", std::process::id(), fastrand::u64(..)).into();
        Self {
            failover: shared.config.failover,
            shared,
            stream,
            store,
            worker,
            start,
            next_tenure: 1,
            scan_soon: false,
            holdings: Arc::new(Mutex::new(Holdings::default())),
            changed: Arc::new(Notify::new()),
            observed: BTreeMap::new(),
            asked: None,
            synced: None,
            unlisted: BTreeMap::new(),
        }
    }

    /// Prepares the store and takes a first share of the leases, so that a consumer
    /// made with this keeper starts with its shards (and reports a store it cannot
    /// reach as an error, not in the background).
    pub(crate) async fn join(&mut self) -> Result<()> {
        self.store.prepare().await?;
        self.scan().await
    }

    /// Starts the keeper task.
    pub(crate) fn spawn(self) -> KeeperHandle {
        let (requests, receiver) = mpsc::unbounded_channel();
        let worker = self.worker.clone();
        let holdings = self.holdings.clone();
        let changed = self.changed.clone();
        let task = tokio::spawn(self.run(receiver)).abort_handle();
        KeeperHandle {
            worker,
            holdings,
            changed,
            requests,
            task,
        }
    }

    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut renew = tokio::time::interval(self.failover / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let scan_every = self.failover / 2;
        let mut next_scan = Instant::now() + jittered(scan_every);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => {
                        let closing = matches!(request, Request::ReleaseAll { .. });
                        self.handle(request).await;
                        if closing {
                            return;
                        }
                        if std::mem::take(&mut self.scan_soon) {
                            next_scan = Instant::now();
                        }
                    }
                    None => return,
                },
                _ = renew.tick() => self.renew_all().await,
                () = tokio::time::sleep_until(next_scan) => {
                    // Renewals wait while a scan runs: a slow store or Kinesis must not
                    // hold them past the failover time. A scan cut short is harmless:
                    // a lease it took without recording is found owned here and renewed
                    // by the next one.
                    let budget = self.failover / 3;
                    let scanned = tokio::time::timeout(budget, self.scan()).await.unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "a lease scan took longer than a third of failover ({budget:?}); it is tried \
                                 again (a failover this short may be too short for the lease store)"
                            ),
                        ))
                    });
                    if let Err(e) = scanned {
                        tracing::warn!(stream = %self.stream, worker = %self.worker, "lease scan failed: {e}");
                        if !e.is_retryable() {
                            self.with_holdings(|h| h.failure = Some(e));
                            self.changed.notify_one();
                        }
                    }
                    // While waiting for a lease it asked for, the member looks again
                    // soon, so a group evens out in a few hand-overs, not scans.
                    let pause = if self.waiting_for_handoff(Instant::now()) {
                        scan_every / 4
                    } else {
                        jittered(scan_every)
                    };
                    next_scan = Instant::now() + pause;
                    // Look again just after another member's lease would expire, so a
                    // crashed member's shards move within 1.6 × failover of its last
                    // renewal, not up to a whole scan interval later.
                    // (Never sooner than a tenth of it: an expired lease this member
                    // does not take must not make it scan in a loop.)
                    if let Some(expiry) = self.next_expiry() {
                        next_scan = next_scan.min(expiry.max(Instant::now() + self.failover / 10));
                    }
                }
            }
        }
    }

    fn with_holdings<T>(&self, f: impl FnOnce(&mut Holdings) -> T) -> T {
        let mut guard = match self.holdings.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    fn held(&self, shard: &PartitionId) -> Option<Held> {
        self.with_holdings(|h| h.held.get(shard).cloned())
    }

    /// Records a successful write to a held lease, sent at `sent`.
    fn confirm(&mut self, lease: Lease, sent: Instant) {
        let valid_until = sent + self.failover;
        let now = Instant::now();
        let tenure = self.next_tenure;
        let mut is_new = false;
        let changed = self.with_holdings(|h| {
            let entry = h.held.entry(lease.shard.clone());
            is_new = matches!(entry, std::collections::btree_map::Entry::Vacant(_));
            let held = entry.or_insert_with(|| Held {
                lease: lease.clone(),
                valid_until,
                handoff_to: None,
                handoff_seen: None,
                tenure,
            });
            let asked_before = held.handoff_to.is_some();
            held.handoff_to = lease.pending_owner.clone();
            if held.handoff_to.is_some() {
                held.handoff_seen.get_or_insert(now);
            } else {
                held.handoff_seen = None;
            }
            held.lease = lease;
            held.valid_until = valid_until;
            is_new || asked_before != held.handoff_to.is_some()
        });
        if is_new {
            self.next_tenure += 1;
        }
        if changed {
            self.changed.notify_one();
        }
    }

    fn drop_lease(&self, shard: &PartitionId, why: &str) {
        let removed = self.with_holdings(|h| h.held.remove(shard).is_some());
        if removed {
            tracing::info!(stream = %self.stream, worker = %self.worker, %shard, "lease given up: {why}");
            self.changed.notify_one();
        }
    }

    /// Writes `change` to a held lease (of the given tenure, when one is given); a
    /// write refused on its condition means the lease moved on, and it is dropped.
    async fn write(
        &mut self,
        shard: &PartitionId,
        tenure: Option<u64>,
        change: &LeaseChange,
    ) -> Result<Lease> {
        let held = self.held(shard).filter(|h| tenure.is_none_or(|t| t == h.tenure));
        let Some(held) = held else {
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!("shard {shard} is not leased to this member (any more)"),
            ));
        };
        if held.valid_until <= Instant::now() {
            self.drop_lease(shard, "not renewed within the failover time");
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!("the lease of shard {shard} expired before it could be renewed"),
            ));
        }
        let sent = Instant::now();
        match self.store.update(&held.lease, change).await {
            Ok(lease) => {
                if lease.owner.as_deref() == Some(&*self.worker) {
                    self.confirm(lease.clone(), sent);
                } else {
                    self.drop_lease(shard, "handed over");
                }
                Ok(lease)
            }
            Err(e) if e.kind() == ErrorKind::NotAssigned => {
                self.drop_lease(shard, "another member holds it now");
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Checkpoint {
                shard,
                tenure,
                checkpoint,
                reply,
            } => {
                let ended = checkpoint == Checkpoint::ShardEnd;
                let change = if ended {
                    // An ended shard needs no reader: the lease is released with it.
                    LeaseChange::Transfer {
                        to: None,
                        checkpoint: Some(checkpoint),
                    }
                } else {
                    LeaseChange::Checkpoint(checkpoint)
                };
                let result = self.write(&shard, Some(tenure), &change).await.map(drop);
                if ended {
                    // Also when the outcome is unknown: the lease may be released
                    // already. If it was not, the next scan finds it still owned here
                    // and reads the shard's end again.
                    self.drop_lease(&shard, "read to its end");
                    // Its children can be read now: make their leases and take them.
                    self.synced = None;
                    self.scan_soon = true;
                }
                let _ = reply.send(result);
            }
            Request::HandOver {
                shard,
                tenure,
                checkpoint,
                release,
                reply,
            } => {
                let to = match release {
                    true => None,
                    false => self.held(&shard).and_then(|h| h.handoff_to),
                };
                let result = self
                    .write(&shard, Some(tenure), &LeaseChange::Transfer { to, checkpoint })
                    .await
                    .map(drop);
                // Also when the outcome is unknown: the new owner may be reading.
                self.drop_lease(&shard, "handed over");
                let _ = reply.send(result);
            }
            Request::ReleaseAll { checkpoints, reply } => {
                let _ = reply.send(self.release_all(checkpoints).await);
            }
        }
    }

    /// Releases every held lease with its checkpoint from `checkpoints` (when given for
    /// the tenure held). Fails when a checkpoint could not be written, or a lease could
    /// not be released (it then moves after the failover time).
    async fn release_all(&mut self, mut checkpoints: BTreeMap<PartitionId, (u64, Checkpoint)>) -> Result<()> {
        let held: Vec<Held> = self.with_holdings(|h| h.held.values().cloned().collect());
        let mut unwritten = Vec::new();
        let mut first_error = None;
        for h in held {
            let shard = h.lease.shard.clone();
            // A checkpoint of an earlier holding stays unwritten (reported below).
            let checkpoint = match checkpoints.get(&shard) {
                Some((tenure, _)) if *tenure == h.tenure => checkpoints.remove(&shard).map(|(_, c)| c),
                _ => None,
            };
            let carried = checkpoint.is_some();
            let change = LeaseChange::Transfer {
                to: h.handoff_to,
                checkpoint,
            };
            match self.write(&shard, Some(h.tenure), &change).await {
                Ok(_) => self.drop_lease(&shard, "released on close"),
                Err(e) if carried => unwritten.push(format!("{shard} ({e})")),
                Err(e) if e.kind() == ErrorKind::NotAssigned => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Checkpoints of leases no longer held (in that holding) were not written either.
        unwritten.extend(
            checkpoints
                .into_keys()
                .map(|shard| format!("{shard} (lease no longer held)")),
        );
        self.with_holdings(|h| h.held.clear());
        self.changed.notify_one();
        if !unwritten.is_empty() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "acknowledged records were not checkpointed and may be delivered again: {}",
                    unwritten.join(", ")
                ),
            ));
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn renew_all(&mut self) {
        let now = Instant::now();
        let held: Vec<Held> = self.with_holdings(|h| h.held.values().cloned().collect());
        let mut renewals = Vec::new();
        for h in held {
            // A member that does not poll to hand a lease over in time lets it lapse,
            // so the member that asked takes it after the failover time.
            let overdue = h
                .handoff_seen
                .is_some_and(|seen| now.duration_since(seen) > self.failover / 2);
            if overdue {
                tracing::info!(stream = %self.stream, shard = %h.lease.shard, "not renewing a lease whose handoff is overdue");
                continue;
            }
            renewals.push(h.lease);
        }
        let store = &self.store;
        let sent = Instant::now();
        let results = futures::future::join_all(
            renewals
                .iter()
                .map(|lease| async move { (lease, store.update(lease, &LeaseChange::Renew).await) }),
        )
        .await;
        for (lease, result) in results {
            match result {
                Ok(renewed) => self.confirm(renewed, sent),
                Err(e) if e.kind() == ErrorKind::NotAssigned => {
                    self.drop_lease(&lease.shard, "another member holds it now");
                }
                Err(e) => {
                    tracing::debug!(stream = %self.stream, shard = %lease.shard, "renewing a lease: {e}")
                }
            }
        }
        let expired: Vec<PartitionId> = self.with_holdings(|h| {
            h.held
                .values()
                .filter(|h| h.valid_until <= Instant::now())
                .map(|h| h.lease.shard.clone())
                .collect()
        });
        for shard in expired {
            self.drop_lease(&shard, "not renewed within the failover time");
        }
    }

    /// Reads every lease, makes leases for new shards, takes free or expired leases up
    /// to this member's share, and asks for one when the group is uneven.
    pub(crate) async fn scan(&mut self) -> Result<()> {
        let mut leases = self.store.list().await?;
        let due = self
            .synced
            .is_none_or(|at| at.elapsed() >= self.shared.config.shard_refresh);
        if due {
            self.sync_shards(&mut leases).await?;
            self.synced = Some(Instant::now());
        }
        // After the last read: a counter must not look older than it is.
        let now = Instant::now();
        self.observe(&leases, now);
        // Leases handed to this member (or left owned by it) start with a renewal: the
        // write's send time bounds how long the member may read.
        let mine_unknown: Vec<Lease> = leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some(&*self.worker) && !l.ended())
            .filter(|l| self.held(&l.shard).is_none())
            .cloned()
            .collect();
        for lease in mine_unknown {
            let sent = Instant::now();
            if lease.pending_owner.is_some() {
                // Asked for while this member did not hold it (a hand-over whose
                // outcome was unknown): pass it on rather than read it again.
                let to = lease.pending_owner.clone();
                let change = LeaseChange::Transfer { to, checkpoint: None };
                if let Err(e) = self.store.update(&lease, &change).await {
                    tracing::debug!(stream = %self.stream, shard = %lease.shard, "passing a lease on: {e}");
                }
                continue;
            }
            let confirm = LeaseChange::Confirm {
                failover: self.failover,
            };
            if let Ok(renewed) = self.store.update(&lease, &confirm).await {
                self.confirm(renewed, sent);
            }
        }
        let plan = plan(&leases, &self.observed, &self.worker, self.failover, now);
        for lease in plan.take {
            let sent = Instant::now();
            let change = LeaseChange::Take {
                owner: self.worker.to_string(),
                failover: self.failover,
            };
            match self.store.update(&lease, &change).await {
                Ok(taken) => {
                    tracing::info!(stream = %self.stream, worker = %self.worker, shard = %taken.shard, previous = ?lease.owner, "lease taken");
                    self.confirm(taken, sent);
                }
                Err(e) if e.kind() == ErrorKind::NotAssigned => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(lease) = plan.ask
            && !self.waiting_for_handoff(now)
        {
            let change = LeaseChange::RequestHandoff {
                to: self.worker.to_string(),
            };
            // Noted before the write: a scan cut short after the request was applied
            // must not ask for a second lease.
            self.asked = Some((lease.shard.clone(), now));
            match self.store.update(&lease, &change).await {
                Ok(_) => {
                    tracing::info!(stream = %self.stream, worker = %self.worker, shard = %lease.shard, owner = ?lease.owner, "asked for a lease");
                }
                Err(e) if e.kind() == ErrorKind::NotAssigned => self.asked = None,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// When the first lease of another member expires unless renewed meanwhile.
    fn next_expiry(&self) -> Option<Instant> {
        self.observed
            .values()
            .filter(|o| o.owner.as_ref().is_some_and(|owner| **owner != *self.worker))
            .filter_map(|o| {
                o.since
                    .checked_add(self.failover.max(o.owner_failover) + Duration::from_millis(10))
            })
            .min()
    }

    /// Whether a lease this member asked for has neither come nor been given up on
    /// (after twice the failover time).
    fn waiting_for_handoff(&self, now: Instant) -> bool {
        self.asked.as_ref().is_some_and(|(shard, at)| {
            now.duration_since(*at) < self.failover * 2 && self.held(shard).is_none()
        })
    }

    fn observe(&mut self, leases: &[Lease], now: Instant) {
        let present: BTreeSet<&PartitionId> = leases.iter().map(|l| &l.shard).collect();
        self.observed.retain(|shard, _| present.contains(shard));
        for lease in leases {
            let unchanged = self
                .observed
                .get(&lease.shard)
                .is_some_and(|seen| seen.counter == lease.counter && seen.owner == lease.owner);
            if !unchanged {
                let current = Observed {
                    counter: lease.counter,
                    owner: lease.owner.clone(),
                    owner_failover: lease.owner_failover.unwrap_or_default(),
                    since: now,
                };
                self.observed.insert(lease.shard.clone(), current);
            }
        }
    }

    /// Lists the stream's shards, adds a lease for every shard without one, ends the
    /// leases of shards that vanished unread, and deletes the leases of ended shards
    /// Kinesis no longer lists.
    async fn sync_shards(&mut self, leases: &mut Vec<Lease>) -> Result<()> {
        let shards = list_shards(&self.shared.client, &self.stream).await?;
        let before: BTreeSet<PartitionId> = leases.iter().map(|l| l.shard.clone()).collect();
        let listed: BTreeSet<PartitionId> = shards.iter().map(|s| s.id.clone()).collect();
        for shard in shards {
            if before.contains(&shard.id) {
                continue;
            }
            // A shard made by a reshard the group already reads holds only records the
            // group has not seen: from its start. Shards the group finds on its first
            // look start where the consumer config says; a start at the end is fixed
            // now (closed shards have nothing after it), so that a lease changing
            // hands before its first checkpoint skips nothing.
            let checkpoint = if shard.parents.iter().any(|p| before.contains(p)) {
                Some(Checkpoint::TrimHorizon)
            } else if self.start == StartFrom::Latest {
                Some(match shard.is_open() {
                    true => Checkpoint::AtTimestamp(Timestamp::now()),
                    false => Checkpoint::ShardEnd,
                })
            } else {
                None
            };
            let lease = Lease::new(shard.id, shard.parents, checkpoint);
            if self.store.create(&lease).await? {
                leases.push(lease);
            }
        }
        // Reread: another member may have added the same leases meanwhile.
        if leases.len() != before.len() {
            *leases = self.store.list().await?;
        }
        self.end_vanished(leases, &before, &listed).await?;
        let gone: Vec<PartitionId> = leases
            .iter()
            .filter(|l| l.ended() && !listed.contains(&l.shard))
            .map(|l| l.shard.clone())
            .collect();
        for shard in gone {
            if self.store.delete_ended(&shard).await? {
                leases.retain(|l| l.shard != shard);
            }
        }
        Ok(())
    }

    /// Ends the leases of shards Kinesis stopped listing before the group read them to
    /// their end. Kinesis drops a closed shard from its listings once its records
    /// passed the retention period (a group stopped for that long), so nothing is left
    /// to read, and its children would otherwise wait for it forever. Only leases read
    /// before this listing count (a lease made since may be of a shard newer than the
    /// listing); the shard must be missing from every listing for `shard_refresh`; and
    /// the lease must be free, this member's, or expired, so that no other member is
    /// still delivering the shard when its children become readable.
    async fn end_vanished(
        &mut self,
        leases: &mut [Lease],
        before: &BTreeSet<PartitionId>,
        listed: &BTreeSet<PartitionId>,
    ) -> Result<()> {
        let now = Instant::now();
        let missed_since = std::mem::take(&mut self.unlisted);
        self.unlisted = leases
            .iter()
            .filter(|l| !l.ended() && before.contains(&l.shard) && !listed.contains(&l.shard))
            .map(|l| {
                (
                    l.shard.clone(),
                    missed_since.get(&l.shard).copied().unwrap_or(now),
                )
            })
            .collect();
        for lease in leases.iter_mut() {
            let long_missing = self
                .unlisted
                .get(&lease.shard)
                .is_some_and(|since| now.duration_since(*since) >= self.shared.config.shard_refresh);
            let unread = match &lease.owner {
                None => true,
                Some(owner) if **owner == *self.worker => true,
                Some(_) => self.observed.get(&lease.shard).is_some_and(|o| {
                    o.counter == lease.counter
                        && o.owner == lease.owner
                        && now.duration_since(o.since) > self.failover.max(o.owner_failover)
                }),
            };
            if !long_missing || !unread {
                continue;
            }
            tracing::warn!(
                stream = %self.stream, shard = %lease.shard,
                "the shard is gone from the stream before the group read it to its end (its records \
                 expired); its lease ends so that its children are read"
            );
            let change = LeaseChange::Transfer {
                to: None,
                checkpoint: Some(Checkpoint::ShardEnd),
            };
            match self.store.update(lease, &change).await {
                Ok(ended) => {
                    self.drop_lease(&lease.shard, "its shard is gone");
                    *lease = ended;
                }
                // Changed meanwhile: looked at again at the next listing.
                Err(e) if e.kind() == ErrorKind::NotAssigned => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// What one scan decides.
#[derive(Debug, Default)]
struct Plan {
    /// Leases to take: free or expired, up to this member's share.
    take: Vec<Lease>,
    /// A lease of the most loaded member to ask for, when the group is uneven.
    ask: Option<Lease>,
}

/// Decides which leases to take and which to ask for. A lease can be read once every
/// parent it has in the table ended; a lease with an owner is expired once its counter
/// has not moved for `failover` or the owner's own failover, whichever is longer. The members are the owners of unexpired leases plus
/// this one; each should hold the number of readable leases divided by the number of
/// members, rounded up (so counts differ by at most one).
fn plan(
    leases: &[Lease],
    observed: &BTreeMap<PartitionId, Observed>,
    me: &str,
    failover: Duration,
    now: Instant,
) -> Plan {
    let by_shard: BTreeMap<&PartitionId, &Lease> = leases.iter().map(|l| (&l.shard, l)).collect();
    let readable: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.ended())
        .filter(|l| {
            l.parents
                .iter()
                .all(|p| by_shard.get(p).is_none_or(|parent| parent.ended()))
        })
        .collect();
    let expired = |l: &Lease| {
        l.owner.is_none()
            || observed
                .get(&l.shard)
                .is_some_and(|o| now.duration_since(o.since) > failover.max(o.owner_failover))
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::from([(me, 0)]);
    for lease in &readable {
        if let Some(owner) = &lease.owner
            && (!expired(lease) || owner == me)
        {
            *counts.entry(owner.as_str()).or_default() += 1;
        }
    }
    let mine = counts.get(me).copied().unwrap_or(0);
    let target = readable.len().div_ceil(counts.len());
    let mut plan = Plan::default();
    if mine >= target {
        return plan;
    }
    let mut free: Vec<&Lease> = readable
        .iter()
        .copied()
        .filter(|l| l.owner.as_deref() != Some(me) && expired(l))
        .collect();
    fastrand::shuffle(&mut free);
    plan.take = free.into_iter().take(target - mine).cloned().collect();
    if !plan.take.is_empty() {
        return plan;
    }
    let Some((busiest, most)) = counts
        .iter()
        .filter(|(owner, _)| **owner != me)
        .max_by_key(|(_, n)| **n)
        .map(|(o, n)| (*o, *n))
    else {
        return plan;
    };
    if most > target || (most == target && mine + 1 < target) {
        let mut theirs: Vec<&Lease> = readable
            .iter()
            .copied()
            .filter(|l| l.owner.as_deref() == Some(busiest) && l.pending_owner.is_none())
            .collect();
        fastrand::shuffle(&mut theirs);
        plan.ask = theirs.first().map(|l| (*l).clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        Lease {
            owner: owner.map(str::to_string),
            ..Lease::new(PartitionId::new(shard), Vec::new(), None)
        }
    }

    fn fresh(leases: &[Lease], now: Instant) -> BTreeMap<PartitionId, Observed> {
        leases
            .iter()
            .map(|l| {
                (
                    l.shard.clone(),
                    Observed {
                        counter: l.counter,
                        owner: l.owner.clone(),
                        owner_failover: l.owner_failover.unwrap_or_default(),
                        since: now,
                    },
                )
            })
            .collect()
    }

    const FAILOVER: Duration = Duration::from_secs(10);

    #[test]
    fn a_lone_member_takes_every_free_lease() {
        let leases: Vec<Lease> = (0..6).map(|i| lease(&format!("s{i}"), None)).collect();
        let now = Instant::now();
        let plan = plan(&leases, &fresh(&leases, now), "me", FAILOVER, now);
        assert_eq!(plan.take.len(), 6);
        assert!(plan.ask.is_none());
    }

    #[test]
    fn a_newcomer_asks_the_busiest_member_for_one_lease() {
        let leases: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), Some("a"))).collect();
        let now = Instant::now();
        let plan = plan(&leases, &fresh(&leases, now), "me", FAILOVER, now);
        assert!(plan.take.is_empty(), "no lease is free or expired");
        assert_eq!(plan.ask.map(|l| l.owner), Some(Some("a".to_string())));
    }

    #[test]
    fn an_even_group_stays_put() {
        // 6 leases, 4 members holding 2, 2, 1, 1: within one of the mean.
        let owners = ["a", "a", "b", "b", "c", "me"];
        let leases: Vec<Lease> = owners
            .iter()
            .enumerate()
            .map(|(i, o)| lease(&format!("s{i}"), Some(o)))
            .collect();
        let now = Instant::now();
        let plan = plan(&leases, &fresh(&leases, now), "me", FAILOVER, now);
        assert!(plan.take.is_empty() && plan.ask.is_none(), "{plan:?}");
    }

    #[test]
    fn expired_leases_are_taken_up_to_the_share() {
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), Some("dead"))).collect();
        leases.extend((4..6).map(|i| lease(&format!("s{i}"), Some("alive"))));
        let now = Instant::now();
        let mut observed = fresh(&leases, now);
        for o in observed
            .values_mut()
            .filter(|o| o.owner.as_deref() == Some("dead"))
        {
            o.since = now.checked_sub(FAILOVER * 2).unwrap_or(now);
        }
        // Members: alive and me (dead's leases expired): a share of 3 each.
        let plan = plan(&leases, &observed, "me", FAILOVER, now);
        assert_eq!(plan.take.len(), 3);
        assert!(plan.take.iter().all(|l| l.owner.as_deref() == Some("dead")));
    }

    /// A keeper on a backend that never connects (only the lease store is used),
    /// listing shards every 100 ms.
    fn offline_keeper(store: Arc<dyn LeaseStore>) -> Keeper {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let mut config = crate::KinesisConfig::local("us-east-1", "http://127.0.0.1:9");
        config.shard_refresh = SHARD_REFRESH;
        let backend = crate::KinesisBackend::with_sdk_config(config, &sdk).expect("backend");
        Keeper::new(backend.shared, "s".into(), store, StartFrom::Earliest)
    }

    const SHARD_REFRESH: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn a_free_shard_missing_from_listings_ends_and_frees_its_children() {
        let store = Arc::new(crate::leases::MemoryLeaseStore::new());
        let parent = lease("p", None);
        let read = lease("r", Some("a-live-reader"));
        let child = Lease::new(PartitionId::new("c"), vec![PartitionId::new("p")], None);
        let newer = lease("n", None);
        for l in [&parent, &read, &child, &newer] {
            assert!(store.create(l).await.expect("create"));
        }
        let mut keeper = offline_keeper(store.clone());
        let listed: BTreeSet<PartitionId> = [PartitionId::new("c")].into();
        // "n" was made after the listing (it is not in `before`): never ended here.
        let before: BTreeSet<PartitionId> = ["p", "r", "c"].into_iter().map(PartitionId::new).collect();
        let mut leases = store.list().await.expect("list");
        keeper
            .end_vanished(&mut leases, &before, &listed)
            .await
            .expect("first");
        keeper
            .end_vanished(&mut leases, &before, &listed)
            .await
            .expect("second");
        assert!(
            !leases.iter().any(Lease::ended),
            "missing only just now: {leases:?}"
        );
        tokio::time::sleep(SHARD_REFRESH + Duration::from_millis(20)).await;
        keeper
            .end_vanished(&mut leases, &before, &listed)
            .await
            .expect("third");
        let stored = store.list().await.expect("list");
        let ended: Vec<&str> = stored
            .iter()
            .filter(|l| l.ended())
            .map(|l| l.shard.as_str())
            .collect();
        assert_eq!(
            ended,
            ["p"],
            "the lease a live member holds waits until it expires"
        );
        let now = Instant::now();
        let taken: Vec<String> = plan(&stored, &fresh(&stored, now), "me", FAILOVER, now)
            .take
            .iter()
            .map(|l| l.shard.to_string())
            .collect();
        assert!(taken.contains(&"c".to_string()), "the child is free: {taken:?}");
    }

    #[tokio::test]
    async fn a_shard_listed_again_is_not_ended() {
        let store = Arc::new(crate::leases::MemoryLeaseStore::new());
        assert!(store.create(&lease("p", None)).await.expect("create"));
        let mut keeper = offline_keeper(store.clone());
        let before: BTreeSet<PartitionId> = [PartitionId::new("p")].into();
        let mut leases = store.list().await.expect("list");
        keeper
            .end_vanished(&mut leases, &before, &BTreeSet::new())
            .await
            .expect("missed");
        tokio::time::sleep(SHARD_REFRESH + Duration::from_millis(20)).await;
        keeper
            .end_vanished(&mut leases, &before, &before)
            .await
            .expect("listed");
        keeper
            .end_vanished(&mut leases, &before, &BTreeSet::new())
            .await
            .expect("missed");
        assert!(
            !store.list().await.expect("list")[0].ended(),
            "missing again only just now"
        );
    }

    #[test]
    fn a_lease_lasts_its_owners_longer_failover() {
        // The owner runs with 30 s; this member with 10 s. Unchanged for 15 s: still
        // the owner's, and only taken after 30 s.
        let mut slow = lease("s0", Some("slow"));
        slow.owner_failover = Some(Duration::from_secs(30));
        let leases = vec![slow];
        let seen = Instant::now();
        let observed = fresh(&leases, seen);
        let after_15 = plan(&leases, &observed, "me", FAILOVER, seen + Duration::from_secs(15));
        assert!(after_15.take.is_empty(), "{after_15:?}");
        let after_31 = plan(&leases, &observed, "me", FAILOVER, seen + Duration::from_secs(31));
        assert_eq!(after_31.take.len(), 1);
    }

    #[test]
    fn children_wait_for_every_parent_to_end() {
        let mut parent_a = lease("a", None);
        let mut parent_b = lease("b", None);
        parent_a.checkpoint = Some(Checkpoint::ShardEnd);
        let child = Lease::new(
            PartitionId::new("c"),
            vec![PartitionId::new("a"), PartitionId::new("b")],
            Some(Checkpoint::TrimHorizon),
        );
        let now = Instant::now();
        let leases = vec![parent_a.clone(), parent_b.clone(), child.clone()];
        let taken: Vec<String> = plan(&leases, &fresh(&leases, now), "me", FAILOVER, now)
            .take
            .iter()
            .map(|l| l.shard.to_string())
            .collect();
        assert_eq!(taken, ["b"], "the child waits for b; the ended a is not read");
        parent_b.checkpoint = Some(Checkpoint::ShardEnd);
        let leases = vec![parent_a, parent_b, child];
        let taken: Vec<String> = plan(&leases, &fresh(&leases, now), "me", FAILOVER, now)
            .take
            .iter()
            .map(|l| l.shard.to_string())
            .collect();
        assert_eq!(taken, ["c"]);
    }
}
