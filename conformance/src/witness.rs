//! A layer that watches every consumer of a group from outside: what each one was
//! delivered, acknowledged, committed and released, in one order of events, so a
//! scenario can check that no record was committed by two members and that nothing a
//! member settled was delivered again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tributary_core::{Consumer, Layer, Offset, PartitionId, Received, Result, StartFrom, async_trait};

/// A record's place: its partition and offset.
pub type Position = (PartitionId, Offset);

/// Watches the consumers of the backend it wraps (with [`Layered`](tributary_core::Layered)).
#[derive(Clone, Default)]
pub struct Witness {
    log: Arc<Mutex<Log>>,
    clock: Arc<AtomicU64>,
    observer: Option<Arc<Observer>>,
}

type Observer = dyn Fn(Seen<'_>) + Send + Sync;

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("log", &self.log)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// One event a [`Witness`] saw, as its observer is told it, in the order it happened.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// A consumer was delivered this record.
    Delivered(&'a Position),
    /// A successful commit (or close) of the consumer covered this record.
    Committed(&'a Position),
    /// The record's partition left the consumer with the record acknowledged.
    Released(&'a Position),
}

#[derive(Debug, Default)]
struct Log {
    members: usize,
    /// Per consumer: when each position was delivered to it.
    delivered: Vec<Vec<(u64, Position)>>,
    /// Per consumer, per position: when it was settled there (its commit covered it,
    /// or its partition was released with it acknowledged), and whether by a commit.
    settled: Vec<BTreeMap<Position, (u64, bool)>>,
}

/// What a [`Witness`] saw that breaks the group contract.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Consumers watched.
    pub members: usize,
    /// Positions that commits of two different consumers covered.
    pub committed_twice: Vec<Position>,
    /// Positions delivered (to any consumer) after a commit covered them.
    pub delivered_after_commit: Vec<Position>,
    /// Positions delivered (to any consumer) after a consumer released their partition
    /// with them acknowledged: the engine commits that prefix on release, so only an
    /// engine whose handoffs may redeliver (a broker refusing a commit in a rebalance)
    /// may do this.
    pub delivered_after_release: Vec<Position>,
}

impl Witness {
    /// A witness that also tells `observer` every event as it happens (a process that
    /// may be killed writes them down). The observer runs with the witness's lock
    /// held, so it must not call [`report`](Witness::report).
    pub fn observed(observer: impl Fn(Seen<'_>) + Send + Sync + 'static) -> Self {
        Self {
            observer: Some(Arc::new(observer)),
            ..Self::default()
        }
    }

    fn tell(&self, seen: Seen<'_>) {
        if let Some(observer) = &self.observer {
            observer(seen);
        }
    }

    /// What was seen so far.
    pub fn report(&self) -> Report {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = Report {
            members: log.members,
            ..Report::default()
        };
        let mut committers: BTreeMap<&Position, usize> = BTreeMap::new();
        for settled in &log.settled {
            for (position, (_, by_commit)) in settled {
                if *by_commit {
                    *committers.entry(position).or_default() += 1;
                }
            }
        }
        report.committed_twice = committers
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(p, _)| p.clone())
            .collect();
        // The earliest settling of each position, and whether it was a commit.
        let mut first_settled: BTreeMap<&Position, (u64, bool)> = BTreeMap::new();
        for settled in &log.settled {
            for (position, &(at, by_commit)) in settled {
                let entry = first_settled.entry(position).or_insert((at, by_commit));
                if at < entry.0 {
                    *entry = (at, by_commit);
                }
            }
        }
        let mut after_commit = BTreeSet::new();
        let mut after_release = BTreeSet::new();
        for delivered in &log.delivered {
            for (at, position) in delivered {
                if let Some(&(settled_at, by_commit)) = first_settled.get(position)
                    && *at > settled_at
                {
                    if by_commit {
                        after_commit.insert(position.clone());
                    } else {
                        after_release.insert(position.clone());
                    }
                }
            }
        }
        report.delivered_after_commit = after_commit.into_iter().collect();
        report.delivered_after_release = after_release.into_iter().collect();
        report
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

impl Layer for Witness {
    fn wrap_consumer(&self, inner: Box<dyn Consumer>) -> Box<dyn Consumer> {
        let id = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            log.members += 1;
            log.delivered.push(Vec::new());
            log.settled.push(BTreeMap::new());
            log.members - 1
        };
        Box::new(Watched {
            inner,
            witness: self.clone(),
            id,
            delivered: BTreeMap::new(),
            acked: BTreeSet::new(),
            assignment: BTreeSet::new(),
        })
    }
}

struct Watched {
    inner: Box<dyn Consumer>,
    witness: Witness,
    id: usize,
    /// Per partition, the offsets delivered here that are not yet settled, in order.
    delivered: BTreeMap<PartitionId, BTreeSet<Offset>>,
    acked: BTreeSet<Position>,
    assignment: BTreeSet<PartitionId>,
}

impl Watched {
    /// Settles, in `partitions`, the delivered offsets up to the first one not
    /// acknowledged: what a commit or a release covers.
    fn settle(&mut self, partitions: &BTreeSet<PartitionId>, by_commit: bool) {
        let at = self.witness.tick();
        let mut log = self.witness.log.lock().unwrap_or_else(PoisonError::into_inner);
        for partition in partitions {
            let Some(offsets) = self.delivered.get_mut(partition) else {
                continue;
            };
            while let Some(offset) = offsets.first().cloned() {
                let position = (partition.clone(), offset);
                if !self.acked.remove(&position) {
                    break;
                }
                offsets.pop_first();
                self.witness.tell(if by_commit {
                    Seen::Committed(&position)
                } else {
                    Seen::Released(&position)
                });
                log.settled[self.id].insert(position, (at, by_commit));
            }
        }
    }

    /// After a poll: partitions no longer assigned were released with their
    /// acknowledged prefix committed; what was delivered there and not settled is
    /// forgotten (it will be delivered again, to someone).
    fn follow_assignment(&mut self) {
        let now: BTreeSet<PartitionId> = self.inner.assignment().into_iter().collect();
        let released: BTreeSet<PartitionId> = self.assignment.difference(&now).cloned().collect();
        if !released.is_empty() {
            self.settle(&released, false);
            for partition in &released {
                self.delivered.remove(partition);
                self.acked.retain(|(p, _)| p != partition);
            }
        }
        self.assignment = now;
    }
}

#[async_trait]
impl Consumer for Watched {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        let polled = self.inner.poll(max, timeout).await;
        // A poll that failed may have rebalanced too.
        self.follow_assignment();
        let records = polled?;
        let at = self.witness.tick();
        let mut log = self.witness.log.lock().unwrap_or_else(PoisonError::into_inner);
        for record in &records {
            self.delivered
                .entry(record.partition.clone())
                .or_default()
                .insert(record.offset.clone());
            let position = (record.partition.clone(), record.offset.clone());
            self.witness.tell(Seen::Delivered(&position));
            log.delivered[self.id].push((at, position));
        }
        Ok(records)
    }

    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        self.inner.ack(partition, offset)?;
        self.acked.insert((partition.clone(), offset.clone()));
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.inner.commit().await?;
        // Only what was and still is assigned: a partition lost meanwhile (a Kinesis
        // lease that lapsed) is not claimed as committed here.
        let now: BTreeSet<PartitionId> = self.inner.assignment().into_iter().collect();
        let assigned = self.assignment.intersection(&now).cloned().collect();
        self.settle(&assigned, true);
        Ok(())
    }

    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        self.inner.seek(partition, to).await?;
        self.delivered.remove(partition);
        self.acked.retain(|(p, _)| p != partition);
        Ok(())
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.inner.assignment()
    }

    async fn close(&mut self) -> Result<()> {
        let assigned = self.assignment.clone();
        self.inner.close().await?;
        self.settle(&assigned, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tributary_core::{
        Backend, ConsumerConfig, ConsumerExt, Layered, MemoryBackend, ProducerConfig, Record, StreamSpec,
    };

    use super::*;

    /// A memory engine watched by a fresh witness, with `records` in its stream `s`.
    async fn watched_stream(records: Vec<Record>) -> Result<(Witness, Layered)> {
        let witness = Witness::default();
        let backend = Layered::new(Arc::new(MemoryBackend::default()), witness.clone());
        backend
            .admin()
            .await?
            .create_stream(&StreamSpec::new("s"))
            .await?;
        let producer = backend.producer(ProducerConfig::default()).await?;
        producer.send("s", records).await?;
        Ok((witness, backend))
    }

    /// Two groups read the same records, so to the witness (which sees every consumer
    /// as one group) each record is committed twice and delivered after a commit: the
    /// checks can fail.
    #[tokio::test]
    async fn a_second_commit_and_a_delivery_after_a_commit_are_reported() -> Result<()> {
        let (witness, backend) = watched_stream(vec![Record::new("a"), Record::new("b")]).await?;
        let mut members = Vec::new();
        for group in ["one", "two"] {
            let mut member = backend.consumer(ConsumerConfig::group("s", group)).await?;
            let got = member.poll(10, Duration::from_secs(1)).await?;
            assert_eq!(got.len(), 2);
            assert!(witness.report().committed_twice.is_empty());
            member.ack_all(&got)?;
            member.commit().await?;
            members.push(member);
        }
        let report = witness.report();
        assert_eq!(report.members, 2);
        assert_eq!(report.committed_twice.len(), 2);
        assert_eq!(report.delivered_after_commit.len(), 2);
        assert!(report.delivered_after_release.is_empty());
        Ok(())
    }

    /// A partition released with a record acknowledged settles it (the engine commits
    /// it on release), so a later delivery of it is reported as after a release.
    #[tokio::test]
    async fn a_delivery_after_a_release_is_reported() -> Result<()> {
        let witness = Witness::default();
        let backend = Layered::new(Arc::new(MemoryBackend::default()), witness.clone());
        let spec = StreamSpec::new("s").with_partitions(2);
        backend.admin().await?.create_stream(&spec).await?;
        // Both records in partition 1, which a second member of the group takes over.
        let in_one = |value: &str| {
            let mut record = Record::new(value.to_string());
            record.partition = Some(PartitionId::from_index(1));
            record
        };
        let producer = backend.producer(ProducerConfig::default()).await?;
        producer.send("s", vec![in_one("a"), in_one("b")]).await?;
        let mut first = backend.consumer(ConsumerConfig::group("s", "one")).await?;
        let got = first.poll(10, Duration::from_secs(1)).await?;
        assert_eq!(got.len(), 2);
        first.ack(&got[0].partition, &got[0].offset)?;
        let mut second = backend.consumer(ConsumerConfig::group("s", "one")).await?;
        let (released, taken) = tokio::join!(
            first.poll(10, Duration::from_millis(500)),
            second.poll(10, Duration::from_secs(2))
        );
        assert!(released?.is_empty());
        assert_eq!(
            first.assignment(),
            [PartitionId::from_index(0)],
            "partition 1 released"
        );
        assert_eq!(
            taken?.len(),
            1,
            "the second member starts after the released prefix"
        );
        assert!(witness.report().delivered_after_release.is_empty());
        // Another group reads both again; to the witness that is a redelivery.
        let mut other = backend.consumer(ConsumerConfig::group("s", "other")).await?;
        assert_eq!(other.poll(10, Duration::from_secs(1)).await?.len(), 2);
        let report = witness.report();
        let released = vec![(got[0].partition.clone(), got[0].offset.clone())];
        assert_eq!(report.delivered_after_release, released);
        assert!(report.delivered_after_commit.is_empty());
        Ok(())
    }

    /// A commit covers the acknowledged records up to the first one not acknowledged,
    /// not those after it.
    #[tokio::test]
    async fn a_partial_prefix_settles_only_up_to_the_first_unacknowledged_record() -> Result<()> {
        let (witness, backend) =
            watched_stream(vec![Record::new("a"), Record::new("b"), Record::new("c")]).await?;
        let mut first = backend.consumer(ConsumerConfig::group("s", "one")).await?;
        let got = first.poll(10, Duration::from_secs(1)).await?;
        first.ack(&got[0].partition, &got[0].offset)?;
        first.ack(&got[2].partition, &got[2].offset)?;
        first.commit().await?;
        let mut second = backend.consumer(ConsumerConfig::group("s", "two")).await?;
        assert_eq!(second.poll(10, Duration::from_secs(1)).await?.len(), 3);
        let report = witness.report();
        let first_only = vec![(got[0].partition.clone(), got[0].offset.clone())];
        assert_eq!(
            report.delivered_after_commit, first_only,
            "only the contiguous prefix"
        );
        Ok(())
    }
}
