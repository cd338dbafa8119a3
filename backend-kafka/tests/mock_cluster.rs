//! Faults no real single broker can produce on demand, from librdkafka's in-process
//! mock cluster: brokers going down and produce requests failing while an idempotent
//! producer sends keyed records. What was acknowledged must all be there, once, in
//! order; a timed-out send must say Indeterminate; a retryable failure hands back
//! exactly the records to resend.
//!
//! One limit of the mock: it checks producer sequence numbers only for transactional
//! producers (`rd_kafka_mock_pid_check` returns early without a transactional id), so
//! when a broker goes down after appending a request but before its response left, the
//! idempotent producer's retry is appended a second time — a real broker would drop it
//! as a duplicate sequence. The test therefore tells those re-appends apart (a whole
//! earlier run of the log written again, right behind it or later) from any other
//! duplicate, which still fails it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tributary_core::{Backend, ConsumerConfig, ErrorKind, Producer, ProducerConfig, Record};
use tributary_kafka::{KafkaBackend, KafkaConfig};

const TOPIC: &str = "chaos";
const PARTITIONS: i32 = 6;
const BROKERS: i32 = 3;
const TARGET_ACKED: usize = 10_000;
const BATCH: usize = 20;

/// What the producer task learned.
#[derive(Default)]
struct Ledger {
    /// value -> (partition, offset) of every acknowledged record.
    acked: HashMap<String, (u32, u64)>,
    /// Records whose send ended Indeterminate: may or may not be in the log.
    maybe: HashSet<String>,
    /// Sends that ended with each error kind.
    errors: BTreeMap<String, usize>,
    /// Records handed back as unsent by a retryable error and sent again.
    resent: usize,
}

/// Sends until TARGET_ACKED records are acknowledged and the chaos has had its turn
/// (`chaos_done`), however fast the sends go.
async fn produce(producer: Box<dyn Producer>, chaos_done: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    let mut seq = 0u64;
    while ledger.acked.len() < TARGET_ACKED || !chaos_done.load(Ordering::SeqCst) {
        let mut records: Vec<Record> = (0..BATCH)
            .map(|_| {
                seq += 1;
                let key = format!("k{}", seq % 40);
                Record::new(format!("{key}:{seq:08}")).with_key(key)
            })
            .collect();
        // Resend what a retryable failure handed back; never what may be persisted.
        for _attempt in 0..50 {
            let values: Vec<String> = records
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect();
            match producer.send(TOPIC, records).await {
                Ok(deliveries) => {
                    for (v, d) in values.into_iter().zip(deliveries) {
                        ledger
                            .acked
                            .insert(v, (d.partition.index().unwrap(), d.offset.as_u64().unwrap()));
                    }
                    break;
                }
                Err(e) => {
                    *ledger.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
                    for (i, d) in &e.delivered {
                        ledger.acked.insert(
                            values[*i].clone(),
                            (d.partition.index().unwrap(), d.offset.as_u64().unwrap()),
                        );
                    }
                    let confirmed: HashSet<usize> = e.delivered.iter().map(|(i, _)| *i).collect();
                    assert_eq!(
                        confirmed.len() + e.unsent.len(),
                        values.len(),
                        "every record is either confirmed or handed back"
                    );
                    if e.kind() == ErrorKind::Indeterminate {
                        for r in &e.unsent {
                            ledger.maybe.insert(String::from_utf8(r.value.to_vec()).unwrap());
                        }
                        break;
                    }
                    assert!(e.is_retryable(), "unexpected error: {}", e.error);
                    ledger.resent += e.unsent.len();
                    records = e.unsent;
                    if records.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    producer.close().await.unwrap();
    ledger
}

#[tokio::test(flavor = "current_thread")]
async fn brokers_down_and_request_errors_lose_and_duplicate_nothing() {
    let cluster = MockCluster::new(BROKERS).expect("a mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, BROKERS).unwrap();
    // Leaders spread over every broker, so taking any one down stalls some partitions.
    for p in 0..PARTITIONS {
        cluster.partition_leader(TOPIC, p, Some(p % BROKERS + 1)).unwrap();
    }
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    // Short enough that a broker down for a few seconds times sends out.
    config.delivery_timeout = Duration::from_millis(2500);
    config.request_timeout = Duration::from_millis(1000);
    config.operation_timeout = Duration::from_secs(10);
    config.linger = Duration::from_millis(2);
    config.librdkafka.insert("retry.backoff.ms".into(), "50".into());
    let backend = KafkaBackend::new(config).unwrap();
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let chaos_done = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(produce(producer, chaos_done.clone()));

    let mut rng = fastrand::Rng::with_seed(0x7121_b07a);
    let produce_errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
    ];
    let (mut downs, mut injected) = (0, 0);
    // One outage longer than the delivery timeout: its sends must end Indeterminate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    cluster.broker_up(1).unwrap();
    downs += 1;
    while !task.is_finished() {
        // Enough of every kind of fault, however fast the producer is.
        if downs >= 4 && injected >= 15 {
            chaos_done.store(true, Ordering::SeqCst);
        }
        match rng.u8(0..10) {
            0..=2 => {
                let broker = rng.i32(1..=BROKERS);
                cluster.broker_down(broker).unwrap();
                downs += 1;
                tokio::time::sleep(Duration::from_millis(rng.u64(200..4000))).await;
                cluster.broker_up(broker).unwrap();
            }
            3..=6 => {
                let errors: Vec<RDKafkaRespErr> = (0..rng.usize(1..6))
                    .map(|_| produce_errors[rng.usize(..produce_errors.len())])
                    .collect();
                injected += errors.len();
                cluster.request_errors(RDKafkaApiKey::Produce, &errors);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..200))).await;
    }
    let ledger = task.await.unwrap();
    for broker in 1..=BROKERS {
        cluster.broker_up(broker).unwrap();
    }
    cluster.clear_request_errors(RDKafkaApiKey::Produce);

    // Read everything back.
    let mut consumer = backend.consumer(ConsumerConfig::broadcast(TOPIC)).await.unwrap();
    let expected_min = ledger.acked.len();
    let mut seen: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
    let mut per_partition: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    let mut quiet = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while quiet < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of at least {expected_min} records in 2 minutes",
            seen.len()
        );
        let batch = consumer.poll(10_000, Duration::from_secs(1)).await.unwrap();
        if batch.is_empty() {
            if seen.len() >= expected_min {
                quiet += 1;
            }
            continue;
        }
        quiet = 0;
        for r in batch {
            let v = String::from_utf8(r.value.to_vec()).unwrap();
            let at = (r.partition.index().unwrap(), r.offset.as_u64().unwrap());
            seen.entry(v.clone()).or_default().push(at);
            per_partition.entry(at.0).or_default().push((at.1, v));
        }
    }
    consumer.close().await.unwrap();

    let lost: Vec<&String> = ledger.acked.keys().filter(|v| !seen.contains_key(*v)).collect();
    let moved: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|(v, at)| seen.get(*v).is_some_and(|s| !s.contains(at)))
        .map(|(v, _)| v)
        .collect();
    let (reappended, duplicated) = mock_reappends(&per_partition);
    let unexplained: Vec<&String> = seen
        .keys()
        .filter(|v| !ledger.acked.contains_key(*v) && !ledger.maybe.contains(*v))
        .collect();
    let maybe_persisted = ledger.maybe.iter().filter(|v| seen.contains_key(*v)).count();
    eprintln!(
        "acknowledged {}, indeterminate {} (of which in the log: {maybe_persisted}), resent {}, \
         errors {:?}, broker outages {downs}, injected produce errors {injected}, \
         records the mock appended twice for a retried request {reappended}",
        ledger.acked.len(),
        ledger.maybe.len(),
        ledger.resent,
        ledger.errors
    );
    assert!(ledger.acked.len() >= TARGET_ACKED);
    assert!(
        lost.is_empty(),
        "acknowledged records lost: {:?}",
        &lost[..lost.len().min(5)]
    );
    assert!(
        moved.is_empty(),
        "records not where their delivery said: {:?}",
        &moved[..moved.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "duplicates that are no re-append of a retried request: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(
        unexplained.is_empty(),
        "records nobody sent: {:?}",
        &unexplained[..unexplained.len().min(5)]
    );
    assert!(
        ledger.errors.contains_key("Indeterminate"),
        "sends that timed out while a broker was down end Indeterminate"
    );
    // Per partition, records of one key keep the order they were sent in (first copies;
    // the mock's re-appends repeat an earlier run).
    for (partition, records) in &per_partition {
        let mut last: HashMap<&str, &str> = HashMap::new();
        let mut first_copies = HashSet::new();
        for (_, v) in records {
            if !first_copies.insert(v.as_str()) {
                continue;
            }
            let (key, seq) = v.split_once(':').unwrap();
            if let Some(prev) = last.insert(key, seq) {
                assert!(
                    prev < seq,
                    "partition {partition}: key {key} went {prev} then {seq}"
                );
            }
        }
    }
}

/// Splits the records found more than once into the mock's re-appends of retried
/// requests and everything else. When a broker goes down after appending some of the
/// requests in flight to a partition, the producer retries all of them in order, so the
/// log repeats exactly its own tail from the first unanswered request: a copy starting at
/// position `i` whose first copy is at `start` must be followed by the rest of
/// `start..i`, in order. Returns the number of re-appended records and the values of any
/// other duplicate.
fn mock_reappends(per_partition: &BTreeMap<u32, Vec<(u64, String)>>) -> (usize, Vec<String>) {
    let (mut reappended, mut other) = (0, Vec::new());
    for records in per_partition.values() {
        let mut first_at: HashMap<&str, usize> = HashMap::new();
        let mut i = 0;
        while i < records.len() {
            let Some(&start) = first_at.get(records[i].1.as_str()) else {
                first_at.insert(&records[i].1, i);
                i += 1;
                continue;
            };
            let tail = &records[start..i];
            let repeats_tail = records
                .get(i..i + tail.len())
                .is_some_and(|copy| copy.iter().zip(tail).all(|(c, t)| c.1 == t.1));
            if repeats_tail {
                reappended += tail.len();
                i += tail.len();
            } else {
                other.push(records[i].1.clone());
                i += 1;
            }
        }
    }
    (reappended, other)
}

#[test]
fn mock_reappends_are_told_apart_from_other_duplicates() {
    let log = |values: &[&str]| -> BTreeMap<u32, Vec<(u64, String)>> {
        let records = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.to_string()))
            .collect();
        BTreeMap::from([(0, records)])
    };
    assert_eq!(mock_reappends(&log(&["a", "b", "c"])), (0, vec![]));
    assert_eq!(mock_reappends(&log(&["a", "b", "a", "b", "c"])), (2, vec![]));
    assert_eq!(mock_reappends(&log(&["a", "b", "c", "b", "c", "d"])), (2, vec![]));
    assert_eq!(mock_reappends(&log(&["a", "a", "b", "b"])), (2, vec![]));
    // A copy of an older record, or a repeat cut short, is not a retried request.
    assert_eq!(
        mock_reappends(&log(&["a", "b", "c", "a"])),
        (0, vec!["a".to_string()])
    );
    assert_eq!(
        mock_reappends(&log(&["a", "b", "a", "c"])),
        (0, vec!["a".to_string()])
    );
    assert_eq!(
        mock_reappends(&log(&["a", "b", "b", "a"])),
        (1, vec!["a".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_not_found_and_never_created() {
    // The mock cluster creates topics on request, as brokers do by default.
    let cluster = MockCluster::new(1).expect("a mock cluster");
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.operation_timeout = Duration::from_secs(5);
    let backend = KafkaBackend::new(config).unwrap();
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let err = producer.send("nope", vec![Record::new("x")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.error);
    let admin = backend.admin().await.unwrap();
    assert_eq!(
        admin.describe_stream("nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let consumer = backend.consumer(ConsumerConfig::broadcast("nope")).await;
    assert_eq!(consumer.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert!(!admin.list_streams().await.unwrap().contains(&"nope".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_idempotence_error_is_reported_and_the_producer_replaced() {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic("fatal", 1, 1).unwrap();
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.delivery_timeout = Duration::from_secs(5);
    // With the gapless guarantee, a sequence gap is fatal instead of bumping the epoch.
    config
        .librdkafka
        .insert("enable.gapless.guarantee".into(), "true".into());
    let backend = KafkaBackend::new(config).unwrap();
    let producer = backend.kafka_producer(ProducerConfig::default()).unwrap();
    producer.send("fatal", vec![Record::new("before")]).await.unwrap();
    assert_eq!(producer.fatal_recoveries(), 0);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let err = producer
        .send("fatal", vec![Record::new("during")])
        .await
        .unwrap_err();
    eprintln!("fatal send: {:?} {}", err.kind(), err.error);
    assert_eq!(err.unsent.len(), 1);
    assert_eq!(
        producer.fatal_recoveries(),
        1,
        "the fatal error replaced the client"
    );
    // The next send goes through a new producer.
    let after = producer.send("fatal", vec![Record::new("after")]).await;
    assert!(
        after.is_ok(),
        "the producer was not replaced: {:?}",
        after.err().map(|e| e.error)
    );
}
