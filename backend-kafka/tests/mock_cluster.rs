//! Faults no real single broker can produce on demand, from librdkafka's in-process
//! mock cluster: brokers going down and produce requests failing while an idempotent
//! producer sends keyed records. What was acknowledged must all be there, where its
//! delivery said, once, in order; a timed-out send must say Indeterminate; a retryable
//! failure hands back exactly the records to resend.
//!
//! One limit of the mock: it checks producer sequence numbers only for transactional
//! producers (`rd_kafka_mock_validate_records` returns early without a transactional
//! id), so a request that librdkafka retries after its answer was lost is appended a
//! second time, where a real broker would drop it as a duplicate sequence. (A
//! transactional producer cannot be used instead: librdkafka refuses records outside a
//! transaction, and the mock writes no abort markers, so aborted batches would read as
//! committed.) Each send attempt therefore stamps its records with an `attempt` header:
//! two copies from the same attempt are librdkafka's retry of one request appended twice
//! by the mock, counted and printed; copies from different attempts mean a record
//! reported unsent had been written, and fail the test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Copy, Ledger, ReadBack};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tributary_core::{Backend, ConsumerConfig, ErrorKind, Producer, ProducerConfig, Record};
use tributary_kafka::{KafkaBackend, KafkaConfig};

const TOPIC: &str = "chaos";
const PARTITIONS: i32 = 6;
const BROKERS: i32 = 3;
const TARGET_ACKED: usize = 10_000;
const BATCH: u64 = 20;

/// Splits the records found more than once into librdkafka's retries of one request
/// that the mock appended twice (copies of one send attempt) and real duplicates
/// (copies of different attempts: a record reported unsent was written). Returns the
/// number of extra copies of the first kind and the values of the second.
fn duplicates(seen: &HashMap<String, Vec<Copy>>) -> (usize, Vec<String>) {
    let (mut reappended, mut real) = (0, Vec::new());
    for (value, copies) in seen {
        let attempts: HashSet<&str> = copies.iter().map(|c| c.attempt.as_str()).collect();
        if attempts.len() > 1 {
            real.push(value.clone());
        } else {
            reappended += copies.len() - 1;
        }
    }
    real.sort();
    (reappended, real)
}

#[test]
fn duplicates_are_attributed_by_send_attempt_not_by_shape() {
    let copy = |offset, attempt: &str| Copy {
        partition: 0,
        offset,
        attempt: attempt.to_string(),
    };
    let seen = HashMap::from([
        ("once".to_string(), vec![copy(0, "1")]),
        (
            "retried".to_string(),
            vec![copy(1, "1"), copy(5, "1"), copy(9, "1")],
        ),
        ("resent".to_string(), vec![copy(2, "1"), copy(3, "2")]),
    ]);
    assert_eq!(duplicates(&seen), (2, vec!["resent".to_string()]));
    assert_eq!(duplicates(&HashMap::new()), (0, vec![]));
}

#[tokio::test(flavor = "current_thread")]
async fn brokers_down_and_request_errors_lose_and_duplicate_nothing() {
    chaos(Sending::Batches).await;
}

/// The same chaos with every record handed over one at a time (`Producer::enqueue`),
/// up to 1,000 unconfirmed: the same promises hold through the pipeline.
#[tokio::test(flavor = "current_thread")]
async fn brokers_down_and_request_errors_through_the_pipeline_lose_and_duplicate_nothing() {
    chaos(Sending::HandedOver).await;
}

/// How the chaos test produces.
#[derive(Clone, Copy)]
enum Sending {
    /// Batches of BATCH, resending what comes back unsent.
    Batches,
    /// One record at a time through the pipeline.
    HandedOver,
}

async fn chaos(sending: Sending) {
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
    let done = chaos_done.clone();
    let task = tokio::spawn(async move {
        let finished =
            move |ledger: &common::Ledger| ledger.acked.len() >= TARGET_ACKED && done.load(Ordering::SeqCst);
        match sending {
            Sending::Batches => common::produce(producer, TOPIC, BATCH, 40, Duration::ZERO, finished).await,
            Sending::HandedOver => common::hand_over(producer, TOPIC, 40, 1_000, finished).await,
        }
    });

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

    // Read everything back: every partition up to the end it has now that producing
    // is over, whatever was acknowledged.
    let ends = high_watermarks(&cluster);
    let mut consumer = backend.consumer(ConsumerConfig::broadcast(TOPIC)).await.unwrap();
    let mut log = ReadBack::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !log.reached(&ends) && std::time::Instant::now() < deadline {
        log.take(consumer.poll(10_000, Duration::from_secs(1)).await.unwrap());
    }
    consumer.close().await.unwrap();

    let findings = common::compare(&ledger, &log);
    let (reappended, duplicated) = duplicates(&log.copies);
    if !findings.lost.is_empty() {
        report_lost(&ledger, &findings.lost, &log.partitions, &ends);
    }
    eprintln!(
        "acknowledged {}, indeterminate {} (of which in the log: {}), resent {}, \
         errors {:?}, broker outages {downs}, injected produce errors {injected}, \
         extra copies the mock appended for librdkafka's retries {reappended}",
        ledger.acked.len(),
        ledger.maybe.len(),
        findings.maybe_persisted,
        ledger.resent,
        ledger.errors
    );
    assert!(ledger.acked.len() >= TARGET_ACKED);
    assert!(
        log.reached(&ends),
        "the partitions were not read to {ends:?} in 2 minutes: {:?}",
        log.next
    );
    common::assert_nothing_wrong(&findings);
    assert!(
        duplicated.is_empty(),
        "records written by two send attempts (reported unsent, yet written): {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(
        ledger.errors.contains_key("Indeterminate"),
        "sends that timed out while a broker was down end Indeterminate"
    );
    // The mock's re-appends of a retried request come after the first copy.
    common::assert_key_order(&log);
}

/// The end (high watermark) of every partition of the test topic.
fn high_watermarks(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
) -> BTreeMap<u32, u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let watcher: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = watcher
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .unwrap();
            (p as u32, u64::try_from(high).unwrap())
        })
        .collect()
}

/// Prints, for each lost record, what every send attempt said of it and what the log
/// holds where its delivery pointed, and each partition's end and what was read.
fn report_lost(
    ledger: &Ledger,
    lost: &[String],
    per_partition: &BTreeMap<u32, Vec<(u64, String)>>,
    ends: &BTreeMap<u32, u64>,
) {
    for (partition, end) in ends {
        let records = per_partition.get(partition).map_or(&[][..], Vec::as_slice);
        eprintln!(
            "partition {partition}: end {end}, read {} records, last offset {:?}",
            records.len(),
            records.last().map(|r| r.0)
        );
    }
    for value in lost.iter().take(20) {
        let at = ledger.acked[value];
        let there: Vec<&String> = per_partition
            .get(&at.0)
            .into_iter()
            .flatten()
            .filter(|r| r.0 == at.1)
            .map(|r| &r.1)
            .collect();
        eprintln!(
            "lost {value}: delivery said {at:?}, the log holds {there:?} there, ever indeterminate: {}, history: {:?}",
            ledger.maybe.contains(value),
            ledger.history.get(value)
        );
    }
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

/// librdkafka confirms a request implicitly when a later one to the same partition
/// succeeds (a broker checking sequences would have refused the later one otherwise),
/// and such a report carries no offset. The mock checks no sequences of idempotent
/// producers, so a first request refused and the next ones appended make it happen on
/// demand: the first record is in no log. Tributary used to report it delivered at
/// offset 0 (librdkafka's -1001 read as 0): the cause of the fault test's misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_confirmed_without_an_offset_is_indeterminate() {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic("implicit", 1, 1).unwrap();
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.linger = Duration::ZERO;
    // One record per request, so five records are five requests in flight at once.
    config.librdkafka.insert("batch.num.messages".into(), "1".into());
    let backend = KafkaBackend::new(config).unwrap();
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    producer
        .send("implicit", vec![Record::new("first")])
        .await
        .unwrap();
    // Slow answers: every request is on the wire before the first answer returns.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
    );
    let records: Vec<Record> = (0..5).map(|i| Record::new(format!("r{i}"))).collect();
    let err = producer.send("implicit", records).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{}", err.error);
    assert!(
        err.error.to_string().contains("without an offset"),
        "{}",
        err.error
    );
    let unsent: Vec<String> = err
        .unsent
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    assert_eq!(unsent, ["r0"], "only the implicitly confirmed record is in doubt");
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();

    let mut consumer = backend
        .consumer(ConsumerConfig::broadcast("implicit"))
        .await
        .unwrap();
    let mut log = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.len() < 5 && std::time::Instant::now() < deadline {
        for r in consumer.poll(100, Duration::from_millis(200)).await.unwrap() {
            log.insert(
                r.offset.as_u64().unwrap(),
                String::from_utf8(r.value.to_vec()).unwrap(),
            );
        }
    }
    // What the mock did (a real broker would have refused r1..r4): r0 is nowhere.
    assert_eq!(
        log.values().collect::<Vec<_>>(),
        ["first", "r1", "r2", "r3", "r4"],
        "the mock appended the requests after the refused one"
    );
    for (i, d) in &err.delivered {
        assert_eq!(
            log.get(&d.offset.as_u64().unwrap()),
            Some(&format!("r{i}")),
            "every delivery points at its record"
        );
    }
    assert_eq!(err.delivered.len(), 4);
}
