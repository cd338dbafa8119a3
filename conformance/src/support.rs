//! Helpers the scenarios share: fresh names, handles, draining, several members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tributary_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerConfig, ConsumerExt, Delivery, ErrorKind, Offset,
    PartitionId, Producer, ProducerConfig, Received, Record, Result, StartFrom, StreamSpec,
};

use crate::harness::{Harness, Outcome, Timing};

/// What a scenario works with.
#[derive(Clone)]
pub struct Ctx {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// Its capabilities.
    pub caps: Capabilities,
    /// How long it may take.
    pub timing: Timing,
    harness: Arc<dyn Harness>,
    scenario: &'static str,
    run: String,
    counter: Arc<AtomicU32>,
}

impl Ctx {
    pub(crate) fn new(scenario: &'static str, backend: Arc<dyn Backend>, harness: Arc<dyn Harness>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            caps: backend.capabilities(),
            timing: harness.timing(),
            backend,
            harness,
            scenario,
            run: format!("{:x}{:04x}", nanos & 0xffff_ffff_ffff, fastrand::u16(..)),
            counter: Arc::new(AtomicU32::new(0)),
        }
    }

    /// A name no other run or scenario uses (valid as a stream and a group name, at
    /// most 100 characters).
    pub fn fresh_name(&self, tag: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let short: String = self.scenario.chars().take(48).collect();
        format!("t-{short}-{tag}-{}-{n}", self.run)
    }

    /// A skip with its reason.
    pub fn skip(&self, why: impl Into<String>) -> Result<Outcome> {
        Ok(Outcome::Skipped(why.into()))
    }

    /// An admin handle.
    pub async fn admin(&self) -> Result<Box<dyn Admin>> {
        self.backend.admin().await
    }

    /// A producer.
    pub async fn producer(&self) -> Result<Box<dyn Producer>> {
        self.backend.producer(ProducerConfig::default()).await
    }

    /// Creates a stream with a fresh name and `partitions` partitions.
    pub async fn stream(&self, partitions: u32) -> Result<String> {
        let name = self.fresh_name("s");
        self.admin()
            .await?
            .create_stream(&StreamSpec::new(&name).with_partitions(partitions))
            .await?;
        Ok(name)
    }

    /// A broadcast reader of `stream` from `start`.
    pub async fn broadcast(&self, stream: &str, start: StartFrom) -> Result<Box<dyn Consumer>> {
        self.backend
            .consumer(ConsumerConfig::broadcast(stream).start_from(start))
            .await
    }

    /// A member of `group` reading `stream` from the earliest record.
    pub async fn member(&self, stream: &str, group: &str) -> Result<Box<dyn Consumer>> {
        self.backend.consumer(ConsumerConfig::group(stream, group)).await
    }

    /// Sends `records` and checks a delivery came back for each.
    pub async fn send(
        &self,
        producer: &dyn Producer,
        stream: &str,
        records: Vec<Record>,
    ) -> Result<Vec<Delivery>> {
        let n = records.len();
        let deliveries = producer.send(stream, records).await?;
        assert_eq!(deliveries.len(), n, "one delivery per record sent");
        Ok(deliveries)
    }

    /// Sends one record per value, keyed by `key`, in one batch.
    pub async fn send_values(
        &self,
        stream: &str,
        key: Option<&str>,
        values: &[String],
    ) -> Result<Vec<Delivery>> {
        let producer = self.producer().await?;
        let records = values
            .iter()
            .map(|v| {
                let r = Record::new(v.clone().into_bytes());
                match key {
                    Some(k) => r.with_key(k.to_owned()),
                    None => r,
                }
            })
            .collect();
        let deliveries = self.send(&*producer, stream, records).await?;
        producer.close().await?;
        Ok(deliveries)
    }

    /// What the suite is pinned to for this engine.
    pub fn expected(&self) -> crate::Expected {
        self.harness.expected()
    }

    /// Checks the duplicates `members` saw: none at all where the engine hands
    /// partitions over in process, else only ones a failed commit explains.
    ///
    /// # Panics
    /// On a duplicate the engine's promises do not allow.
    pub fn check_duplicates(&self, members: &Members) {
        assert_eq!(
            members.unexplained_duplicates(),
            &[],
            "records delivered again after a commit covering them succeeded"
        );
        if !self.expected().handoffs_redeliver {
            assert_eq!(
                members.duplicates(),
                0,
                "this engine hands partitions over without delivering anything twice"
            );
        }
    }

    /// Reopens the backend (durable engines) and returns the new one.
    pub async fn reopen(&self) -> Result<Option<Arc<dyn Backend>>> {
        self.harness.reopen(self.backend.clone()).await
    }
}

impl Ctx {
    /// Checks that `consumer` has nothing to read: sends a sentinel record to
    /// `stream` and expects it to be the first record the consumer receives. (A quiet
    /// poll alone proves nothing on a slow engine.)
    ///
    /// # Errors
    /// A failed send or poll.
    ///
    /// # Panics
    /// If anything arrives before the sentinel, or the sentinel does not arrive.
    pub async fn expect_nothing_before_sentinel(
        &self,
        consumer: &mut dyn Consumer,
        stream: &str,
    ) -> Result<()> {
        let sentinel = self.fresh_name("sentinel");
        let producer = self.producer().await?;
        producer.send(stream, vec![Record::new(sentinel.clone())]).await?;
        producer.close().await?;
        let got = drain(consumer, 1, self.timing.settle).await?;
        assert_eq!(
            texts(&got),
            [sentinel],
            "nothing arrives before the sentinel sent afterwards"
        );
        Ok(())
    }
}

/// `values` as `"{prefix}-{i}"` for `i` in `0..n`.
pub(crate) fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The values of `records` as text.
pub(crate) fn texts(records: &[Received]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// Polls until `n` records arrived or `within` passed; returns what arrived.
///
/// # Errors
/// A failed poll.
pub async fn drain(consumer: &mut dyn Consumer, n: usize, within: Duration) -> Result<Vec<Received>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(
            consumer
                .poll(n - out.len(), left.min(Duration::from_secs(1)))
                .await?,
        );
    }
    Ok(out)
}

/// Polls until a poll of `quiet` returns nothing; returns everything received.
///
/// # Errors
/// A failed poll.
pub async fn drain_quiet(consumer: &mut dyn Consumer, quiet: Duration) -> Result<Vec<Received>> {
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(1000, quiet).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

/// Several members of one group polled in turn from one task, each acknowledging and
/// committing what it receives (so handoffs cause no redelivery).
///
/// Every duplicate delivery is checked against what was committed: a record delivered
/// again after a member acknowledged it and a commit covering it returned `Ok` (or
/// after the member closed cleanly) is an unexplained duplicate. Only a failed commit
/// or a member that vanished without closing explains one.
pub struct Members {
    /// The members, in join order.
    pub consumers: Vec<Box<dyn Consumer>>,
    /// What each member received, in order.
    pub received: Vec<Vec<Received>>,
    /// Every delivery to any member, in the order they happened (closed members'
    /// included).
    pub delivered: Vec<Received>,
    /// Records acknowledged by a member and covered by a commit that succeeded.
    settled: BTreeSet<(PartitionId, Offset)>,
    /// Records delivered again although settled.
    unexplained: Vec<(PartitionId, Offset)>,
    /// Per member, the records it acknowledged whose commit has not been seen succeed.
    acked: Vec<Vec<(PartitionId, Offset)>>,
    poll: Duration,
    commit: bool,
}

impl Members {
    /// No members yet; each poll waits up to `poll`.
    pub fn new(poll: Duration) -> Self {
        Self {
            consumers: Vec::new(),
            received: Vec::new(),
            delivered: Vec::new(),
            settled: BTreeSet::new(),
            unexplained: Vec::new(),
            acked: Vec::new(),
            poll,
            commit: true,
        }
    }

    /// Members that acknowledge what they receive but never commit explicitly (only
    /// revocation and close commit).
    pub fn without_commits(poll: Duration) -> Self {
        Self {
            commit: false,
            ..Self::new(poll)
        }
    }

    /// Adds a member.
    pub fn join(&mut self, consumer: Box<dyn Consumer>) {
        self.consumers.push(consumer);
        self.received.push(Vec::new());
        self.acked.push(Vec::new());
    }

    /// Closes member `i` and removes it; returns what it had received.
    ///
    /// # Errors
    /// The close's error.
    pub async fn close(&mut self, i: usize) -> Result<Vec<Received>> {
        let mut c = self.consumers.remove(i);
        let acked = self.acked.remove(i);
        c.close().await?;
        // A clean close commits everything acknowledged.
        self.settled.extend(acked);
        Ok(self.received.remove(i))
    }

    /// One poll of every member, acknowledging and (unless made
    /// [`without_commits`](Self::without_commits)) committing what arrived. A commit or
    /// ack refused because a rebalance moved the partition meanwhile is tolerated:
    /// at-least-once allows the redelivery that follows.
    ///
    /// # Errors
    /// A failed poll, or a failed ack or commit for another reason.
    pub async fn round(&mut self) -> Result<usize> {
        let mut n = 0;
        for ((consumer, received), pending) in self
            .consumers
            .iter_mut()
            .zip(&mut self.received)
            .zip(&mut self.acked)
        {
            let batch = consumer.poll(1000, self.poll).await?;
            if batch.is_empty() {
                continue;
            }
            for r in &batch {
                let at = (r.partition.clone(), r.offset.clone());
                if self.settled.contains(&at) {
                    self.unexplained.push(at);
                }
            }
            let acked = match consumer.ack_all(&batch) {
                Err(e) if e.kind() == ErrorKind::NotAssigned => false,
                other => other.map(|()| true)?,
            };
            if acked {
                pending.extend(batch.iter().map(|r| (r.partition.clone(), r.offset.clone())));
            }
            if self.commit {
                match consumer.commit().await {
                    // A commit covers the partitions assigned now; acknowledged records
                    // of one taken away before it were committed on revoke or not at
                    // all, which nothing here can tell: they do not count as settled.
                    Ok(()) => {
                        let assigned: BTreeSet<PartitionId> = consumer.assignment().into_iter().collect();
                        self.settled
                            .extend(pending.drain(..).filter(|(p, _)| assigned.contains(p)));
                    }
                    // What the failed commit covered may never be committed (a refused
                    // commit on revoke is reported once): none of it counts as settled.
                    Err(e) if e.kind() == ErrorKind::NotAssigned || e.is_retryable() => pending.clear(),
                    Err(e) => return Err(e),
                }
            }
            n += batch.len();
            self.delivered.extend(batch.iter().cloned());
            received.extend(batch);
        }
        Ok(n)
    }

    /// Records delivered again after a commit covering them succeeded: each one a
    /// broken promise of the engine (see [`Members`]).
    pub fn unexplained_duplicates(&self) -> &[(PartitionId, Offset)] {
        &self.unexplained
    }

    /// Whether the members' assignments are disjoint, cover `partitions`, and differ
    /// in size by at most one.
    pub fn balanced(&self, partitions: &BTreeSet<PartitionId>) -> bool {
        let mut seen = BTreeSet::new();
        let mut sizes = Vec::new();
        for c in &self.consumers {
            let a = c.assignment();
            sizes.push(a.len());
            for p in a {
                if !seen.insert(p) {
                    return false;
                }
            }
        }
        let spread = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0);
        &seen == partitions && spread <= 1
    }

    /// Polls rounds until [`balanced`](Self::balanced) or `within` passed; returns
    /// whether it balanced.
    ///
    /// # Errors
    /// A failed round.
    pub async fn settle(&mut self, partitions: &BTreeSet<PartitionId>, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            self.round().await?;
            if self.balanced(partitions) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Polls rounds until `total` records arrived across members (counted since
    /// creation) or `within` passed, then rounds until a quiet period.
    ///
    /// # Errors
    /// A failed round.
    pub async fn drain(&mut self, total: usize, within: Duration, quiet: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.total() < total && Instant::now() < deadline {
            self.round().await?;
        }
        let quiet_until = Instant::now() + quiet;
        while Instant::now() < quiet_until {
            self.round().await?;
        }
        Ok(())
    }

    /// Distinct records delivered across members, closed ones included (a redelivery
    /// counts once).
    pub fn total(&self) -> usize {
        self.delivered
            .iter()
            .map(|r| (r.partition.clone(), r.offset.clone()))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Deliveries beyond the first of each record, across members.
    pub fn duplicates(&self) -> usize {
        self.delivered.len() - self.total()
    }

    /// Closes every member.
    ///
    /// # Errors
    /// The first failed close.
    pub async fn close_all(&mut self) -> Result<()> {
        for (c, acked) in self.consumers.iter_mut().zip(&mut self.acked) {
            c.close().await?;
            self.settled.extend(acked.drain(..));
        }
        Ok(())
    }
}
