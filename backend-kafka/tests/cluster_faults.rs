//! Faults of a real cluster: three Apache Kafka nodes (`scripts/kafka-cluster`,
//! replication factor 3, `min.insync.replicas=2`) whose partition leaders are killed
//! with SIGKILL (and started again) or frozen with SIGSTOP past the brokers' session
//! timeout (and thawed), while an idempotent producer sends keyed records and a group
//! consumes them. Afterwards: no acknowledged record is lost or away from where its
//! delivery said, the log holds no record twice, every record in it was sent, per-key
//! order holds, and the group received every acknowledged record.
//!
//! Needs TRIBUTARY_TEST_KAFKA_CLUSTER and TRIBUTARY_TEST_KAFKA_CLUSTER_SCRIPT (printed by
//! `scripts/kafka-cluster start`); without them the test is skipped, except under
//! CI=true. Faults: `TRIBUTARY_CLUSTER_FAULTS` (default 4, alternately kill and stop).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tributary_core::{Backend, ConsumerConfig, ConsumerExt, ErrorKind, ProducerConfig, StreamSpec};
use tributary_kafka::{KafkaBackend, KafkaConfig};

const PARTITIONS: i32 = 3;
const KEYS: u64 = 30;
const BATCH: u64 = 20;

/// What the group received: value → deliveries, and the errors its member rode out.
#[derive(Default)]
struct Received {
    values: HashMap<String, usize>,
    errors: BTreeMap<String, usize>,
}

async fn consume(
    backend: Arc<KafkaBackend>,
    topic: String,
    group: String,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
) {
    let mut member = backend
        .consumer(ConsumerConfig::group(&topic, &group))
        .await
        .unwrap();
    let note = |what: String| *got.lock().unwrap().errors.entry(what).or_default() += 1;
    while !stop.load(Ordering::SeqCst) {
        let batch = match member.poll(1000, Duration::from_millis(200)).await {
            Ok(batch) => batch,
            Err(e) if e.is_retryable() => {
                note(format!("poll {:?}", e.kind()));
                continue;
            }
            Err(e) => panic!("the group member failed: {e}"),
        };
        {
            let mut got = got.lock().unwrap();
            for r in &batch {
                *got.values
                    .entry(String::from_utf8(r.value.to_vec()).unwrap())
                    .or_default() += 1;
            }
        }
        match member.ack_all(&batch) {
            Err(e) if e.kind() == ErrorKind::NotAssigned => note("ack NotAssigned".into()),
            other => other.unwrap(),
        }
        if let Err(e) = member.commit().await {
            assert!(
                e.is_retryable() || e.kind() == ErrorKind::NotAssigned,
                "commit failed: {e}"
            );
            note(format!("commit {:?}", e.kind()));
        }
    }
    member.close().await.unwrap();
}

/// Runs the cluster script (`start-node N`, `pid N`).
fn script(script: &str, args: &[&str]) -> String {
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Partition → (leader, in-sync replicas) from the cluster's metadata.
fn leaders(watcher: &BaseConsumer, topic: &str) -> BTreeMap<i32, (i32, usize)> {
    let Ok(metadata) = watcher.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return BTreeMap::new();
    };
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), (p.leader(), p.isr().len())))
        .collect()
}

/// A partition's end, asked until its leader answers (metadata may still name the
/// leader a fault replaced).
fn high_watermark(watcher: &BaseConsumer, topic: &str, partition: i32) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match watcher.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok((_, high)) => return high,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no end for partition {partition} in 30 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// 1 if, asked of the nodes still up, `partition` is led by another node than
/// `old` (its leadership moved while `old` was down), else 0.
async fn moved_away(bootstrap: &str, topic: &str, partition: i32, old: i32) -> usize {
    // Asked of the other nodes only: a client may otherwise wait on the frozen one.
    let live: Vec<&str> = bootstrap
        .split(',')
        .enumerate()
        .filter(|(i, _)| i32::try_from(*i + 1).ok() != Some(old))
        .map(|(_, b)| b)
        .collect();
    let (bootstrap, topic) = (live.join(","), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let watcher: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = leaders(&watcher, &topic).get(&partition).map(|(l, _)| *l);
            if leader.is_some_and(|l| l > 0 && l != old) {
                return 1;
            }
            if Instant::now() >= deadline {
                eprintln!("partition {partition} still led by {leader:?} (was {old})");
                return 0;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await
    .unwrap()
}

/// The leader of `partition` (asked until the metadata names one) and the whole state.
fn leader_of(watcher: &BaseConsumer, topic: &str, partition: i32) -> (i32, BTreeMap<i32, (i32, usize)>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = leaders(watcher, topic);
        if let Some((leader, _)) = state.get(&partition).filter(|(l, _)| *l > 0) {
            return (*leader, state);
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition} has no leader: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until every partition has a leader and all three replicas in sync.
fn wait_in_sync(watcher: &BaseConsumer, topic: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let state = leaders(watcher, topic);
        if state.len() == PARTITIONS as usize && state.values().all(|(l, isr)| *l > 0 && *isr == 3) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not heal in {within:?}: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_frozen_leaders_lose_and_duplicate_nothing() {
    let Some(bootstrap) = tributary_conformance::server_from_env(
        "TRIBUTARY_TEST_KAFKA_CLUSTER",
        "start the cluster with scripts/kafka-cluster start",
    ) else {
        return;
    };
    let cluster_script = tributary_conformance::server_from_env(
        "TRIBUTARY_TEST_KAFKA_CLUSTER_SCRIPT",
        "scripts/kafka-cluster start prints it",
    )
    .unwrap();
    let faults: usize = std::env::var("TRIBUTARY_CLUSTER_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let run = format!(
        "{:x}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        fastrand::u32(..)
    );
    let topic = format!("cluster-faults-{run}");
    let group = format!("cluster-faults-{run}");
    let mut config = KafkaConfig::new(bootstrap.clone());
    config.replication_factor = Some(3);
    // Longer than a leader's failover, so most sends ride it out; a frozen leader past
    // it makes some end Indeterminate.
    config.delivery_timeout = Duration::from_secs(20);
    config.request_timeout = Duration::from_secs(5);
    config.session_timeout = Duration::from_secs(6);
    config.metadata_refresh = Duration::from_secs(1);
    config.operation_timeout = Duration::from_secs(30);
    let backend = Arc::new(KafkaBackend::new(config).unwrap());
    backend
        .admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new(&topic).with_partitions(PARTITIONS as u32))
        .await
        .unwrap();
    let watcher: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    wait_in_sync(&watcher, &topic, Duration::from_secs(60));

    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let (produce_to, stop) = (topic.clone(), stop_producing.clone());
    let producing = tokio::spawn(async move {
        common::produce(
            producer,
            &produce_to,
            BATCH,
            KEYS,
            Duration::from_millis(5),
            move |_| stop.load(Ordering::SeqCst),
        )
        .await
    });
    let received = Arc::new(Mutex::new(Received::default()));
    let consuming = tokio::spawn(consume(
        backend.clone(),
        topic.clone(),
        group.clone(),
        received.clone(),
        stop_consuming.clone(),
    ));

    let (mut kills, mut stops, mut failovers) = (0, 0, 0);
    for fault in 0..faults {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let partition = (fault as i32) % PARTITIONS;
        let (leader, state) = leader_of(&watcher, &topic, partition);
        assert!(
            leader > 0,
            "partition {partition} has a leader before fault {fault}: {state:?}"
        );
        let node = leader.to_string();
        let pid = script(&cluster_script, &["pid", &node]);
        if fault % 2 == 0 {
            eprintln!("fault {fault}: SIGKILL node {node}, leader of partition {partition}");
            signal(&pid, "-KILL");
            kills += 1;
            tokio::time::sleep(Duration::from_secs(6)).await;
            failovers += moved_away(&bootstrap, &topic, partition, leader).await;
            let script_path = cluster_script.clone();
            tokio::task::spawn_blocking(move || script(&script_path, &["start-node", &node]))
                .await
                .unwrap();
        } else {
            eprintln!("fault {fault}: SIGSTOP node {node}, leader of partition {partition}, for 8 s");
            signal(&pid, "-STOP");
            stops += 1;
            tokio::time::sleep(Duration::from_secs(8)).await;
            failovers += moved_away(&bootstrap, &topic, partition, leader).await;
            signal(&pid, "-CONT");
        }
        let (watcher_topic, within) = (topic.clone(), Duration::from_secs(90));
        let watcher_bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let watcher: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &watcher_bootstrap)
                .create()
                .unwrap();
            wait_in_sync(&watcher, &watcher_topic, within);
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_producing.store(true, Ordering::SeqCst);
    let ledger = producing.await.unwrap();

    // Read the whole log back, to its ends now that producing is over.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, high_watermark(&watcher, &topic, p)))
        .collect();
    let ends: BTreeMap<u32, u64> = ends
        .into_iter()
        .map(|(p, end)| (p as u32, u64::try_from(end).unwrap()))
        .collect();
    let mut log = common::ReadBack::default();
    let mut reader = backend.consumer(ConsumerConfig::broadcast(&topic)).await.unwrap();
    while !log.reached(&ends) {
        assert!(
            Instant::now() < deadline,
            "the log was not read to {ends:?} in 60 s: {:?}",
            log.next
        );
        log.take(reader.poll(10_000, Duration::from_secs(1)).await.unwrap());
    }
    reader.close().await.unwrap();
    // The group gets every acknowledged record, within the same bound.
    loop {
        let missing = {
            let got = received.lock().unwrap();
            ledger
                .acked
                .keys()
                .filter(|v| !got.values.contains_key(*v))
                .count()
        };
        if missing == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_consuming.store(true, Ordering::SeqCst);
    consuming.await.unwrap();
    let received = std::mem::take(&mut *received.lock().unwrap());

    let findings = common::compare(&ledger, &log);
    let duplicated: Vec<&String> = log
        .copies
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(v, _)| v)
        .collect();
    let not_consumed: Vec<&String> = ledger
        .acked
        .keys()
        .filter(|v| !received.values.contains_key(*v))
        .collect();
    let redelivered: usize = received.values.values().map(|n| n - 1).sum();
    eprintln!(
        "cluster faults: {kills} leaders killed, {stops} frozen, {failovers} failovers seen; attempted {}, acknowledged {}, \
         indeterminate {} (in the log: {}), resent {}, errors {:?}; in the log {}, lost {}, moved {}, \
         duplicated {}; group received {} ({} redelivered), missing {}, member errors {:?}",
        ledger.attempted,
        ledger.acked.len(),
        ledger.maybe.len(),
        findings.maybe_persisted,
        ledger.resent,
        ledger.errors,
        log.copies.len(),
        findings.lost.len(),
        findings.moved.len(),
        duplicated.len(),
        received.values.len(),
        redelivered,
        not_consumed.len(),
        received.errors
    );
    assert!(kills > 0 && stops > 0, "both kinds of fault happened");
    assert_eq!(
        failovers,
        kills + stops,
        "every fault moved its partition's leadership"
    );
    assert!(
        ledger.acked.len() > 1000,
        "the producer kept acknowledging through the faults"
    );
    common::assert_nothing_wrong(&findings);
    assert!(
        duplicated.is_empty(),
        "records in the log twice: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(
        not_consumed.is_empty(),
        "acknowledged records the group never received: {:?}",
        &not_consumed[..not_consumed.len().min(5)]
    );
    common::assert_key_order(&log);
}
