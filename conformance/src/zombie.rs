//! A zombie group member: one that stops polling past the time its engine allows, while
//! another member takes its partitions, and then comes back. Its commit of what it
//! acknowledged before the pause is refused, it delivers nothing of a partition it no
//! longer owns, and no partition is ever delivered by two members in overlapping time
//! with both committing: each member's ownership of each partition, from its first
//! delivery to its last successful commit, is logged and the intervals are checked.
//!
//! Engines that renew ownership in the background while the process lives (Kinesis
//! lease keepers) never make a member that merely stops polling a zombie; for them the
//! pause must be a frozen process.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tributary_core::{
    Backend, Consumer, ConsumerConfig, ConsumerExt, ErrorKind, Offset, PartitionId, ProducerConfig, Record,
    Result, StreamSpec,
};

/// One member's hold of one partition, as the member saw it.
#[derive(Clone, Debug)]
struct Hold {
    member: &'static str,
    partition: PartitionId,
    first_delivery: Instant,
    /// The last commit that succeeded while the member held records of it.
    last_commit: Option<Instant>,
}

/// What the scenario saw.
#[derive(Debug, Default)]
pub struct ZombieSummary {
    /// Records the zombie acknowledged before its pause whose commit was refused.
    pub refused_acks: usize,
    /// How the zombie's commit was refused.
    pub refusal: String,
    /// Records delivered to the survivor.
    pub survivor_records: usize,
    /// What the zombie's close said, when it reported uncommitted records.
    pub close: String,
    /// Records delivered to the zombie after it came back.
    pub zombie_records_after: usize,
}

struct Member {
    name: &'static str,
    consumer: Box<dyn Consumer>,
    holds: BTreeMap<PartitionId, Hold>,
}

impl Member {
    /// One poll: acknowledges what arrived; commits it when `commit`. Returns the batch.
    async fn poll(
        &mut self,
        commit: bool,
        settled: &mut BTreeSet<(PartitionId, Offset)>,
        log: &mut Vec<Hold>,
    ) -> Result<Vec<tributary_core::Received>> {
        let batch = self.consumer.poll(50, Duration::from_millis(50)).await?;
        let now = Instant::now();
        for r in &batch {
            let at = (r.partition.clone(), r.offset.clone());
            assert!(
                !settled.contains(&at),
                "{}: delivered {at:?} again after a commit covering it succeeded",
                self.name
            );
            self.holds.entry(r.partition.clone()).or_insert_with(|| Hold {
                member: self.name,
                partition: r.partition.clone(),
                first_delivery: now,
                last_commit: None,
            });
        }
        // Holds of partitions no longer assigned end here.
        let assigned: BTreeSet<PartitionId> = self.consumer.assignment().into_iter().collect();
        let gone: Vec<PartitionId> = self
            .holds
            .keys()
            .filter(|p| !assigned.contains(p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(hold) = self.holds.remove(&p) {
                log.push(hold);
            }
        }
        if batch.is_empty() {
            return Ok(batch);
        }
        match self.consumer.ack_all(&batch) {
            Err(e) if e.kind() == ErrorKind::NotAssigned => return Ok(batch),
            other => other?,
        }
        if commit {
            match self.consumer.commit().await {
                Ok(()) => {
                    let done = Instant::now();
                    for r in &batch {
                        settled.insert((r.partition.clone(), r.offset.clone()));
                        if let Some(hold) = self.holds.get_mut(&r.partition) {
                            hold.last_commit = Some(done);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotAssigned || e.is_retryable() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(batch)
    }
}

/// Runs the zombie scenario on `backend` (a fresh stream and group). `pause` must be
/// longer than the engine lets a member go without polling; `settle` bounds every wait.
///
/// # Errors
/// A failed engine call.
///
/// # Panics
/// When a promise is broken: the zombie's commit accepted, a record of a lost partition
/// delivered to it, a record delivered after a commit covering it, or two members'
/// holds of one partition overlapping while both committed.
pub async fn paused_member_is_fenced(
    backend: &dyn Backend,
    name: &str,
    pause: Duration,
    settle: Duration,
) -> Result<ZombieSummary> {
    let stream = format!("{name}-s");
    let group = format!("{name}-g");
    let admin = backend.admin().await?;
    admin
        .create_stream(&StreamSpec::new(&stream).with_partitions(4))
        .await?;
    let producer = backend.producer(ProducerConfig::default()).await?;
    let send = |from: usize| {
        (from..from + 200)
            .map(|i| Record::new(format!("v{i}")).with_key(format!("k{}", i % 40)))
            .collect::<Vec<_>>()
    };
    producer.send(&stream, send(0)).await?;
    let mut settled = BTreeSet::new();
    let mut log = Vec::new();
    let mut summary = ZombieSummary::default();
    let mut zombie = Member {
        name: "zombie",
        consumer: backend.consumer(ConsumerConfig::group(&stream, &group)).await?,
        holds: BTreeMap::new(),
    };
    // The zombie reads and commits, then acknowledges one more batch without committing.
    let deadline = Instant::now() + settle;
    let mut read = 0;
    while read < 100 {
        assert!(
            Instant::now() < deadline,
            "the first member read {read} records in {settle:?}"
        );
        read += zombie.poll(true, &mut settled, &mut log).await?.len();
    }
    let mut unacked_batch = Vec::new();
    while unacked_batch.is_empty() {
        assert!(Instant::now() < deadline, "the first member read no more records");
        unacked_batch = zombie.poll(false, &mut settled, &mut log).await?;
    }
    let zombie_had: BTreeSet<PartitionId> = zombie.consumer.assignment().into_iter().collect();

    // It stops polling; a second member joins and takes everything.
    let mut survivor = Member {
        name: "survivor",
        consumer: backend.consumer(ConsumerConfig::group(&stream, &group)).await?,
        holds: BTreeMap::new(),
    };
    let paused_at = Instant::now();
    let deadline = paused_at + pause + settle;
    loop {
        summary.survivor_records += survivor.poll(true, &mut settled, &mut log).await?.len();
        let all = survivor.consumer.assignment().len() == 4;
        if all && paused_at.elapsed() >= pause {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second member holds {:?} after {:?}",
            survivor.consumer.assignment(),
            paused_at.elapsed()
        );
    }
    producer.send(&stream, send(200)).await?;
    // The survivor held every partition: whatever the zombie held ended during its
    // pause, even if it is given some back when it returns.
    log.extend(std::mem::take(&mut zombie.holds).into_values());

    // The zombie comes back: its commit is refused.
    let refused = zombie.consumer.commit().await;
    let Err(refusal) = refused else {
        panic!(
            "the zombie's commit of {} acknowledged records was accepted",
            unacked_batch.len()
        );
    };
    summary.refused_acks = unacked_batch.len();
    summary.refusal = format!("{:?}: {}", refusal.kind(), refusal);
    assert!(
        refusal.kind() == ErrorKind::NotAssigned,
        "the zombie's commit was refused, but as {:?} rather than NotAssigned: {refusal}",
        refusal.kind()
    );
    // Both poll on; whatever the zombie is given now is its own (a rebalance may hand
    // it partitions back), and no record is delivered after a commit covering it.
    let until = Instant::now() + settle.min(Duration::from_secs(10));
    while Instant::now() < until {
        // What the survivor holds as the zombie polls: a partition moves only after its
        // holder gave it up in a poll of its own, so none of these may reach the zombie
        // (records it had fetched before its pause included).
        let survivor_holds: BTreeSet<PartitionId> = survivor.consumer.assignment().into_iter().collect();
        let batch = zombie.poll(true, &mut settled, &mut log).await?;
        for r in &batch {
            assert!(
                !survivor_holds.contains(&r.partition),
                "the zombie delivered {:?}@{:?} of a partition the other member holds ({survivor_holds:?}; it had {zombie_had:?})",
                r.partition,
                r.offset
            );
        }
        summary.zombie_records_after += batch.len();
        summary.survivor_records += survivor.poll(true, &mut settled, &mut log).await?.len();
    }
    // The zombie may say on closing that records it acknowledged were not committed
    // (a commit on revoke refused because it had been out of the group): true, and
    // what a zombie is. The survivor must close cleanly.
    match zombie.consumer.close().await {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::NotAssigned) => {
            summary.close = format!("{:?}: {e}", e.kind());
        }
        Err(e) => return Err(e),
    }
    survivor.consumer.close().await?;
    log.extend(zombie.holds.into_values());
    log.extend(survivor.holds.into_values());
    check_holds(&log);
    Ok(summary)
}

/// No two members' holds of one partition overlap while both committed: a hold that
/// committed ended (its last commit) before another member's hold that committed began
/// (its first delivery), or began after that one's last commit.
///
/// # Panics
/// On an overlap.
fn check_holds(log: &[Hold]) {
    let committed: Vec<&Hold> = log.iter().filter(|h| h.last_commit.is_some()).collect();
    for (i, a) in committed.iter().enumerate() {
        for b in &committed[i + 1..] {
            if a.partition != b.partition || a.member == b.member {
                continue;
            }
            let (Some(a_end), Some(b_end)) = (a.last_commit, b.last_commit) else {
                continue;
            };
            let apart = a_end <= b.first_delivery || b_end <= a.first_delivery;
            assert!(
                apart,
                "partition {:?}: {} held it {:?}..{:?} and {} {:?}..{:?}, both committing",
                a.partition, a.member, a.first_delivery, a_end, b.member, b.first_delivery, b_end
            );
        }
    }
}
