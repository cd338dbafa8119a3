//! Consumer groups under stress, against kinesis-local with leases on dynalite
//! (TRIBUTARY_TEST_KINESIS and TRIBUTARY_TEST_DYNAMODB; `scripts/kinesis start` and
//! `scripts/dynamodb start` print them; without them the tests skip, except under
//! CI=true). Leases last `common::FAILOVER` (2 s).
//!
//! - The lease stores (DynamoDB and memory) keep their contract: of several members
//!   racing for a lease exactly one wins; stale writes are refused.
//! - A member whose lease was taken cannot checkpoint the shard and stops delivering it
//!   (records already queued included); its next commit says so.
//! - 3 members over 6 shards, committing every third batch, one killed every ~10 s for
//!   2 minutes while a keyed producer runs: nothing lost, duplicates within what the
//!   killed members had processed but not checkpointed, no shard without a live owner
//!   for more than twice the failover time.
//! - 4 members over 8 shards settle at 2 leases each within twice the failover time;
//!   a member leaving hands its shards to the others as fast. Also with fan-out
//!   readers, which share one registered stream consumer.
//! - A stream resharded while a group reads it: every record processed, each key's
//!   records first delivered in send order across parent → child; with polling and
//!   with fan-out readers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tributary_core::{Admin, Consumer, ConsumerConfig, ErrorKind, Offset, PartitionId, Record, StreamSpec};
use tributary_kinesis::{
    Checkpoint, DynamoLeaseStore, KinesisBackend, Lease, LeaseChange, LeaseStore, LeaseStoreKind,
    MemoryLeaseStore, ReaderKind,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A backend on both servers with polling readers, or `None` (a skip) outside CI when
/// either is missing.
fn backend() -> Option<KinesisBackend> {
    backend_reading_by(ReaderKind::Polling)
}

/// A backend on both servers with the given readers.
fn backend_reading_by(reader: ReaderKind) -> Option<KinesisBackend> {
    let endpoint = common::endpoint()?;
    common::dynamodb_endpoint()?;
    let mut config = common::local_config(&endpoint);
    assert_eq!(config.leases, LeaseStoreKind::Dynamodb);
    config.reader = reader;
    Some(common::backend(config).expect("backend"))
}

/// The names of the stream consumers registered for enhanced fan-out on `stream`.
async fn fan_out_registrations(backend: &KinesisBackend, stream: &str) -> Vec<String> {
    let client = backend.sdk_client();
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .expect("describe");
    let arn = summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_string())
        .expect("stream arn");
    let listed = client
        .list_stream_consumers()
        .stream_arn(arn)
        .send()
        .await
        .expect("list stream consumers");
    listed
        .consumers()
        .iter()
        .map(|c| c.consumer_name().to_string())
        .collect()
}

async fn new_stream(backend: &KinesisBackend, prefix: &str, shards: u32) -> String {
    let stream = format!("{prefix}-{:08x}", fastrand::u32(..));
    backend
        .kinesis_admin()
        .create_stream(&StreamSpec::new(&stream).with_partitions(shards))
        .await
        .expect("create");
    stream
}

fn lease(shard: &str) -> Lease {
    Lease::new(PartitionId::new(shard), Vec::new(), None)
}

async fn lease_store_contract(store: Arc<dyn LeaseStore>) {
    store.prepare().await.expect("prepare");
    store.prepare().await.expect("prepare twice");
    assert!(store.create(&lease("s-0")).await.expect("create"));
    assert!(
        !store.create(&lease("s-0")).await.expect("create again"),
        "one lease per shard"
    );
    // Eight members race to take the same free lease: exactly one wins.
    let free = lease("s-0");
    let races = (0..8).map(|i| {
        let store = store.clone();
        let free = free.clone();
        async move {
            store
                .update(
                    &free,
                    &LeaseChange::Take {
                        owner: format!("m{i}"),
                        failover: Duration::from_millis(2_500),
                    },
                )
                .await
        }
    });
    let results = futures::future::join_all(races).await;
    let winners: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one taker wins");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::NotAssigned, "{e}");
        }
    }
    let held = winners[0].clone();
    assert_eq!(held.counter, 1);
    assert_eq!(held.owner_failover, Some(Duration::from_millis(2_500)));
    let renewed = store.update(&held, &LeaseChange::Renew).await.expect("renew");
    assert_eq!(renewed.counter, 2);
    assert_eq!(renewed.owner_failover, held.owner_failover, "kept by renewals");
    // A write made with the old counter (a member that missed the renewal) fails.
    let stale = store
        .update(&held, &LeaseChange::Checkpoint(Checkpoint::TrimHorizon))
        .await
        .expect_err("stale counter");
    assert_eq!(stale.kind(), ErrorKind::NotAssigned);
    // A non-owner cannot checkpoint even with the current counter.
    let mut impostor = renewed.clone();
    impostor.owner = Some("someone-else".into());
    let offset: Offset = "49590338271490256608559692538361571095921575989136588898000000"
        .parse()
        .expect("offset");
    assert!(
        store
            .update(
                &impostor,
                &LeaseChange::Checkpoint(Checkpoint::After(offset.clone()))
            )
            .await
            .is_err()
    );
    let checkpointed = store
        .update(
            &renewed,
            &LeaseChange::Checkpoint(Checkpoint::After(offset.clone())),
        )
        .await
        .expect("checkpoint");
    assert_eq!(checkpointed.checkpoint, Some(Checkpoint::After(offset.clone())));
    // Handoff: the first request wins, the counter does not move, the owner passes it.
    let asked = store
        .update(&checkpointed, &LeaseChange::RequestHandoff { to: "a".into() })
        .await
        .expect("ask");
    assert_eq!((asked.counter, asked.pending_owner.as_deref()), (3, Some("a")));
    assert!(
        store
            .update(&checkpointed, &LeaseChange::RequestHandoff { to: "b".into() })
            .await
            .is_err(),
        "a second request is refused"
    );
    let passed = store
        .update(
            &asked,
            &LeaseChange::Transfer {
                to: Some("a".into()),
                checkpoint: None,
            },
        )
        .await
        .expect("transfer");
    assert_eq!(passed.owner.as_deref(), Some("a"));
    assert_eq!(passed.pending_owner, None);
    assert_eq!(passed.owner_failover, None, "the new owner writes its own");
    assert_eq!(passed.checkpoint, Some(Checkpoint::After(offset)));
    assert!(
        !store.delete_ended(&passed.shard).await.expect("delete"),
        "not ended"
    );
    let ended = store
        .update(
            &passed,
            &LeaseChange::Transfer {
                to: None,
                checkpoint: Some(Checkpoint::ShardEnd),
            },
        )
        .await
        .expect("end");
    assert!(ended.ended() && ended.owner.is_none());
    let mut child = lease("s-1");
    child.parents = vec![PartitionId::new("s-0")];
    child.checkpoint = Some(Checkpoint::TrimHorizon);
    assert!(store.create(&child).await.expect("child"));
    let listed = store.list().await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&ended) && listed.contains(&child), "{listed:?}");
    assert!(
        store
            .delete_ended(&PartitionId::new("s-0"))
            .await
            .expect("delete")
    );
    assert_eq!(store.list().await.expect("list"), vec![child]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_stores_keep_the_contract() {
    lease_store_contract(Arc::new(MemoryLeaseStore::new())).await;
    let Some(backend) = backend() else { return };
    let table = format!("tributary-contract-{:08x}", fastrand::u32(..));
    let store = backend.lease_store("contract", &table).expect("lease store");
    lease_store_contract(store).await;
    // The DynamoDB store on its own, named explicitly, too.
    let endpoint = common::dynamodb_endpoint().expect("checked above");
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&common::sdk_config(None))
            .endpoint_url(endpoint)
            .build(),
    );
    let store = DynamoLeaseStore::new(client, format!("{table}-x"), Duration::from_secs(30));
    lease_store_contract(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_lease_was_taken_cannot_checkpoint_and_stops_delivering() {
    let Some(backend) = backend() else { return };
    let stream = new_stream(&backend, "taken", 1).await;
    let group = "g-taken";
    let producer = backend.kinesis_producer();
    let values = |from: usize| (from..from + 5).map(|i| Record::new(format!("v{i}"))).collect();
    tributary_core::Producer::send(&producer, &stream, values(0))
        .await
        .expect("send");
    let mut member = backend
        .kinesis_consumer(ConsumerConfig::group(&stream, group))
        .await
        .expect("member");
    let got = tributary_conformance::drain(&mut member, 5, Duration::from_secs(30))
        .await
        .expect("poll");
    assert_eq!(got.len(), 5);
    for r in &got {
        member.ack(&r.partition, &r.offset).expect("ack");
    }
    // Five more records reach the member's reader (polled every 200 ms) but are not
    // polled yet: they wait in its queue when the lease goes.
    tributary_core::Producer::send(&producer, &stream, values(5))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another member takes the lease (as it would after a long pause of this one);
    // a renewal landing between the read and the take makes it read again.
    let store = backend.lease_store(&stream, group).expect("lease store");
    let take = LeaseChange::Take {
        owner: "the-other-member".into(),
        failover: common::FAILOVER,
    };
    let mut attempts = 0;
    let (current, taken) = loop {
        let current = store.list().await.expect("list").remove(0);
        assert_eq!(current.owner.as_deref(), member.member_id());
        match store.update(&current, &take).await {
            Ok(taken) => break (current, taken),
            Err(e) if e.kind() == ErrorKind::NotAssigned && attempts < 10 => attempts += 1,
            Err(e) => panic!("take: {e}"),
        }
    };
    // ... and keeps it, renewing as a live member does.
    let renewing = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut lease = taken;
            loop {
                tokio::time::sleep(common::FAILOVER / 4).await;
                lease = store.update(&lease, &LeaseChange::Renew).await.expect("renew");
            }
        })
    };
    // The member finds out at its next renewal at the latest.
    let noticed = Instant::now() + common::FAILOVER * 2;
    while !member.assignment().is_empty() && Instant::now() < noticed {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        member.assignment().is_empty(),
        "the member still reads the taken shard"
    );
    let err = member.commit().await.expect_err("the lease is gone");
    assert_eq!(err.kind(), ErrorKind::NotAssigned, "{err}");
    assert!(err.to_string().contains("shardId-000000000000"), "{err}");
    let after = store.list().await.expect("list").remove(0);
    assert_eq!(after.checkpoint, None, "no checkpoint was written");
    assert_eq!(after.owner.as_deref(), Some("the-other-member"));
    // The lease moved on: every write of the old owner is refused.
    let stale = store
        .update(&current, &LeaseChange::Checkpoint(Checkpoint::TrimHorizon))
        .await
        .expect_err("stale");
    assert_eq!(stale.kind(), ErrorKind::NotAssigned);
    // Neither the queued records nor later ones are delivered.
    tributary_core::Producer::send(&producer, &stream, values(10))
        .await
        .expect("send");
    let late = tributary_conformance::drain(&mut member, 10, common::FAILOVER * 2)
        .await
        .expect("poll");
    assert!(
        late.is_empty(),
        "delivered {} records of a lost shard",
        late.len()
    );
    assert!(member.assignment().is_empty());
    assert!(member.commit().await.is_ok(), "the loss was reported once");
    renewing.abort();
    member.close().await.expect("close");
}

/// What the members of a test process, in delivery order.
#[derive(Default)]
struct Processed {
    /// (member, value) per delivery.
    deliveries: Mutex<Vec<(usize, String)>>,
}

/// A member running in its own task: polls, processes (logs) and acknowledges every
/// batch, and commits every `commit_every` batches.
struct Member {
    id: usize,
    task: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    lease_owner: Arc<Mutex<Option<String>>>,
    assignment: Arc<Mutex<Vec<PartitionId>>>,
    /// Records processed whose checkpoint was not (yet) written.
    uncommitted: Arc<Mutex<usize>>,
    /// Records of failed commits (a lease lost meanwhile).
    failed_commits: Arc<Mutex<usize>>,
}

impl Member {
    async fn start(
        id: usize,
        backend: &KinesisBackend,
        stream: &str,
        group: &str,
        log: Arc<Processed>,
        commit_every: usize,
    ) -> Self {
        let mut consumer = backend
            .kinesis_consumer(ConsumerConfig::group(stream, group))
            .await
            .expect("member");
        let lease_owner = Arc::new(Mutex::new(consumer.member_id().map(str::to_string)));
        let assignment = Arc::new(Mutex::new(consumer.assignment()));
        let stop = Arc::new(AtomicBool::new(false));
        let uncommitted = Arc::new(Mutex::new(0));
        let failed_commits = Arc::new(Mutex::new(0));
        let task = {
            let (assignment, stop) = (assignment.clone(), stop.clone());
            let (uncommitted, failed_commits) = (uncommitted.clone(), failed_commits.clone());
            tokio::spawn(async move {
                let mut batches = 0;
                while !stop.load(Ordering::SeqCst) {
                    let batch = match consumer.poll(500, Duration::from_millis(100)).await {
                        Ok(b) => b,
                        Err(e) => {
                            eprintln!("member {id}: poll: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if !batch.is_empty() {
                        {
                            let mut log = lock(&log.deliveries);
                            for r in &batch {
                                log.push((id, String::from_utf8_lossy(&r.value).into_owned()));
                            }
                        }
                        *lock(&uncommitted) += batch.len();
                        for r in &batch {
                            let _ = consumer.ack(&r.partition, &r.offset);
                        }
                        batches += 1;
                        if batches % commit_every != 0 {
                            *lock(&assignment) = consumer.assignment();
                            continue;
                        }
                        match consumer.commit().await {
                            Ok(()) => *lock(&uncommitted) = 0,
                            Err(e) => {
                                eprintln!("member {id}: commit: {e}");
                                *lock(&failed_commits) += std::mem::take(&mut *lock(&uncommitted));
                            }
                        }
                    }
                    *lock(&assignment) = consumer.assignment();
                }
                // Closing commits what is acknowledged; a lease lost meanwhile makes
                // its records count as processed without a checkpoint.
                if let Err(e) = consumer.close().await {
                    eprintln!("member {id}: close: {e}");
                    *lock(&failed_commits) += std::mem::take(&mut *lock(&uncommitted));
                }
            })
        };
        Self {
            id,
            task,
            stop,
            lease_owner,
            assignment,
            uncommitted,
            failed_commits,
        }
    }

    /// Members 0 to n - 1, started one after another.
    async fn start_many(
        n: usize,
        backend: &KinesisBackend,
        stream: &str,
        group: &str,
        log: &Arc<Processed>,
        commit_every: usize,
    ) -> Vec<Self> {
        let mut members = Vec::new();
        for id in 0..n {
            members.push(Self::start(id, backend, stream, group, log.clone(), commit_every).await);
        }
        members
    }

    /// Kills the member (no commit, no release); returns what it had processed
    /// without a checkpoint (including records of commits that failed).
    async fn kill(self) -> usize {
        self.task.abort();
        let _ = self.task.await;
        *lock(&self.uncommitted) + *lock(&self.failed_commits)
    }

    /// Stops the member with `close`; returns the records it processed whose
    /// checkpoint failed (0 unless a lease was lost while it ran).
    async fn leave(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("member task");
        *lock(&self.failed_commits)
    }

    fn assignment(&self) -> Vec<PartitionId> {
        lock(&self.assignment).clone()
    }
}

/// A keyed producer: `keys` keys, one record each per `every`, values `k<key>:<n>`.
fn produce(
    backend: &KinesisBackend,
    stream: &str,
    keys: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<String>> {
    let producer = backend.kinesis_producer();
    let stream = stream.to_string();
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let values: Vec<String> = (0..keys).map(|k| format!("k{k}:{n:06}")).collect();
            let records = values
                .iter()
                .enumerate()
                .map(|(k, v)| Record::new(v.clone()).with_key(format!("k{k}")))
                .collect();
            tributary_core::Producer::send(&producer, &stream, records)
                .await
                .expect("send");
            acknowledged.extend(values);
            tokio::time::sleep(every).await;
        }
        acknowledged
    })
}

/// Waits until every acknowledged value was processed, or `within`.
async fn wait_for_all(log: &Processed, acknowledged: &[String], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let seen: HashSet<String> = lock(&log.deliveries).iter().map(|(_, v)| v.clone()).collect();
        let missing: Vec<String> = acknowledged
            .iter()
            .filter(|v| !seen.contains(*v))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Per key, the first delivery of each value comes in send order.
fn assert_first_deliveries_in_key_order(log: &Processed) {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, String> = HashMap::new();
    for (_, value) in lock(&log.deliveries).iter() {
        if !seen.insert(value.clone()) {
            continue;
        }
        let (key, n) = value.split_once(':').expect("key:n");
        if let Some(prev) = last.insert(key.to_string(), n.to_string()) {
            assert!(prev.as_str() < n, "key {key}: {prev} first delivered before {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_member_every_ten_seconds_loses_nothing() {
    let Some(backend) = backend() else { return };
    let stream = new_stream(&backend, "kills", 6).await;
    let group = "g-kills";
    let log = Arc::new(Processed::default());
    // Commits every third batch, so a killed member leaves processed records without
    // a checkpoint: the duplicates they cause are what the bound is about.
    let mut members = Member::start_many(3, &backend, &stream, group, &log, 3).await;
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producing = produce(
        &backend,
        &stream,
        20,
        Duration::from_millis(100),
        stop_producing.clone(),
    );

    // Watches the lease table: how long each shard goes without a live owner.
    let killed: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (store, killed, watching) = (
            backend.lease_store(&stream, group).expect("lease store"),
            killed.clone(),
            watching.clone(),
        );
        tokio::spawn(async move {
            let mut orphaned_since: BTreeMap<PartitionId, Instant> = BTreeMap::new();
            let mut longest = Duration::ZERO;
            while watching.load(Ordering::SeqCst) {
                let now = Instant::now();
                for lease in store.list().await.expect("list leases") {
                    let dead = lease.owner.as_ref().is_none_or(|o| lock(&killed).contains(o));
                    if dead {
                        let since = *orphaned_since.entry(lease.shard.clone()).or_insert(now);
                        longest = longest.max(now - since);
                    } else {
                        orphaned_since.remove(&lease.shard);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            longest
        })
    };

    let started = Instant::now();
    let mut next_id = 3;
    let mut kills = 0;
    let mut unchecked_at_kills = 0;
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(8_000 + fastrand::u64(..4_000))).await;
        let victim = members.remove(fastrand::usize(..members.len()));
        if let Some(owner) = lock(&victim.lease_owner).clone() {
            lock(&killed).insert(owner);
        }
        let victim_id = victim.id;
        let unchecked = victim.kill().await;
        unchecked_at_kills += unchecked;
        kills += 1;
        eprintln!(
            "{:>5.1}s: killed member {victim_id} ({unchecked} processed records unchecked)",
            started.elapsed().as_secs_f64()
        );
        members.push(Member::start(next_id, &backend, &stream, group, log.clone(), 3).await);
        next_id += 1;
    }
    stop_producing.store(true, Ordering::SeqCst);
    let acknowledged = producing.await.expect("producer");
    let missing = wait_for_all(&log, &acknowledged, Duration::from_secs(60)).await;
    watching.store(false, Ordering::SeqCst);
    let longest_orphaned = watcher.await.expect("watcher");
    let mut failed_commits = 0;
    for member in members {
        failed_commits += member.leave().await;
    }

    let deliveries = lock(&log.deliveries).len();
    let distinct: HashSet<String> = lock(&log.deliveries).iter().map(|(_, v)| v.clone()).collect();
    let duplicates = deliveries - distinct.len();
    eprintln!(
        "{} records, {kills} kills, {duplicates} duplicates (bound {unchecked_at_kills} unchecked at kills + \
         {failed_commits} in failed commits), longest without a live owner {longest_orphaned:?}",
        acknowledged.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} records never processed, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(kills >= 10, "{kills} kills");
    assert!(
        duplicates <= unchecked_at_kills + failed_commits,
        "{duplicates} duplicates, more than the {unchecked_at_kills} + {failed_commits} records processed \
         without a checkpoint"
    );
    assert!(
        longest_orphaned <= common::FAILOVER * 2,
        "a shard had no live owner for {longest_orphaned:?}"
    );
    assert_first_deliveries_in_key_order(&log);
}

/// Waits until the members hold disjoint leases covering `shards` with the given
/// counts (sorted); returns how long it took, or `None` after `within`.
async fn settle(members: &[Member], shards: usize, counts: &[usize], within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let assignments: Vec<Vec<PartitionId>> = members.iter().map(Member::assignment).collect();
        let mut sizes: Vec<usize> = assignments.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        let all: BTreeSet<&PartitionId> = assignments.iter().flatten().collect();
        if sizes == counts && all.len() == shards {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sizes: Vec<usize> = members.iter().map(|m| m.assignment().len()).collect();
    eprintln!("not settled: {sizes:?}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_settle_at_two_leases_each_and_a_leaver_hands_over() {
    balance(ReaderKind::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_members_settle_and_hand_over_through_one_registration() {
    balance(ReaderKind::FanOut).await;
}

async fn balance(reader: ReaderKind) {
    let Some(backend) = backend_reading_by(reader) else {
        return;
    };
    let stream = new_stream(&backend, "balance", 8).await;
    let group = "g-balance";
    let log = Arc::new(Processed::default());
    let mut members = Member::start_many(4, &backend, &stream, group, &log, 1).await;
    let limit = common::FAILOVER * 2;
    let took = settle(&members, 8, &[2, 2, 2, 2], limit * 2).await;
    eprintln!("4 members over 8 shards settled at 2 each in {took:?}");
    assert!(
        took.is_some_and(|t| t <= limit),
        "settled in {took:?}, limit {limit:?}"
    );
    let leaver = members.remove(1);
    leaver.leave().await;
    let took = settle(&members, 8, &[2, 3, 3], limit * 2).await;
    eprintln!("after one left, 3 members settled at 3 + 3 + 2 in {took:?}");
    assert!(
        took.is_some_and(|t| t <= limit),
        "settled in {took:?}, limit {limit:?}"
    );
    for member in members {
        member.leave().await;
    }
    if reader == ReaderKind::FanOut {
        // Every member read through the group's one stream consumer, kept after they
        // left for the next members.
        let registered = fan_out_registrations(&backend, &stream).await;
        assert_eq!(registered.len(), 1, "{registered:?}");
        let expected = format!("tributary-{stream}-g-balance-");
        assert!(registered[0].starts_with(&expected), "{registered:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reads_across_a_reshard_in_key_order() {
    group_across_a_reshard(ReaderKind::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_group_reads_across_a_reshard_in_key_order() {
    group_across_a_reshard(ReaderKind::FanOut).await;
}

async fn group_across_a_reshard(reader: ReaderKind) {
    let Some(backend) = backend_reading_by(reader) else {
        return;
    };
    let stream = new_stream(&backend, "group-reshard", 2).await;
    let group = "g-reshard";
    let log = Arc::new(Processed::default());
    let members = Member::start_many(2, &backend, &stream, group, &log, 1).await;
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producing = produce(
        &backend,
        &stream,
        20,
        Duration::from_millis(50),
        stop_producing.clone(),
    );
    let admin = backend.kinesis_admin();
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin
        .split_shard(&stream, &PartitionId::new("shardId-000000000000"), None)
        .await
        .expect("split");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = admin.describe_stream(&stream).await.expect("describe");
    let mut open: Vec<_> = info.open_partitions().cloned().collect();
    open.sort_by_key(|p| p.key_range.map(|r| r.start));
    admin
        .merge_shards(&stream, &open[1].id, &open[2].id)
        .await
        .expect("merge");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_producing.store(true, Ordering::SeqCst);
    let acknowledged = producing.await.expect("producer");
    let missing = wait_for_all(&log, &acknowledged, Duration::from_secs(60)).await;
    let leases = backend
        .lease_store(&stream, group)
        .expect("lease store")
        .list()
        .await
        .expect("leases");
    for member in members {
        member.leave().await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} records never processed, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    assert_first_deliveries_in_key_order(&log);
    let ended: Vec<&Lease> = leases.iter().filter(|l| l.ended()).collect();
    assert_eq!(
        ended.len(),
        3,
        "the split parent and the two merged shards ended: {leases:?}"
    );
    assert_eq!(
        leases.len(),
        5,
        "2 + 2 children of the split + 1 of the merge: {leases:?}"
    );
    let deliveries = lock(&log.deliveries).len();
    eprintln!(
        "{reader:?}: {} records across a split and a merge, {} duplicates",
        acknowledged.len(),
        deliveries - acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_started_at_the_end_skips_nothing_when_the_lease_moves() {
    let Some(backend) = backend() else { return };
    let stream = new_stream(&backend, "latest", 1).await;
    let producer = backend.kinesis_producer();
    tributary_core::Producer::send(&producer, &stream, vec![Record::new("before")])
        .await
        .expect("send");
    let config = ConsumerConfig::group(&stream, "g-latest").start_from(tributary_core::StartFrom::Latest);
    let mut first = backend.kinesis_consumer(config.clone()).await.expect("member");
    tributary_core::Producer::send(&producer, &stream, vec![Record::new("after")])
        .await
        .expect("send");
    let got = tributary_conformance::drain(&mut first, 1, Duration::from_secs(30))
        .await
        .expect("poll");
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].value[..], b"after");
    // Closed without acknowledging: the group never checkpointed the shard.
    first.close().await.expect("close");
    tributary_core::Producer::send(&producer, &stream, vec![Record::new("later")])
        .await
        .expect("send");
    let mut next = backend.kinesis_consumer(config).await.expect("member");
    let got = tributary_conformance::drain(&mut next, 2, Duration::from_secs(30))
        .await
        .expect("poll");
    let values: Vec<&[u8]> = got.iter().map(|r| &r.value[..]).collect();
    assert_eq!(
        values,
        [&b"after"[..], b"later"],
        "the group's end was fixed when it first saw the shard"
    );
    next.close().await.expect("close");
}
