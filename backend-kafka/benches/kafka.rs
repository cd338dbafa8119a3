//! tributary-kafka against hand-written rdkafka code doing the same work, in one run
//! on this machine's broker (TRIBUTARY_TEST_KAFKA, from `scripts/kafka start`). The
//! engines against each other: `scripts/bench-backends` (`trib bench`).
//!
//! `TRIBUTARY_TEST_KAFKA=127.0.0.1:19092 cargo bench -p tributary-kafka --bench kafka`
//! (`TRIBUTARY_BENCH_SCALE=0.1` for a quick look; `TRIBUTARY_BENCH_ONLY=one-task` or
//! `=batches` for one part). Producing runs three times per
//! client and consuming five (both clients reading the same topic), in alternating
//! order; the table shows medians, and the spread of the consume runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a benchmark: a failed unwrap is a failed run"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tributary_core::{Backend, Bytes, ConsumerConfig, Producer, ProducerConfig, Record, StreamSpec};
use tributary_kafka::{KafkaBackend, KafkaConfig};

const PARTITIONS: u32 = 6;
const SENDERS: usize = 4;
const BATCH: usize = 500;
const LATENCY_SAMPLES: usize = 2_000;

fn scale() -> f64 {
    std::env::var("TRIBUTARY_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn value(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The producer settings tributary-kafka uses, for the raw client: the same memory
/// bound too (its default 32 MiB buffer becomes `queue.buffering.max.kbytes` and, at
/// 640 B counted per record, `queue.buffering.max.messages`), so that both queue as
/// many records at most.
fn raw_producer(bootstrap: &str, linger_ms: u64) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger_ms.to_string())
        .set("message.max.bytes", "1001024")
        .set("queue.buffering.max.kbytes", (32 * 1024).to_string())
        .set("queue.buffering.max.messages", ((32 << 20) / 640).to_string())
        .create()
        .unwrap()
}

fn raw_consumer(bootstrap: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-raw-{:x}", fastrand::u64(..)))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("check.crcs", "true")
        // tributary-kafka's default; librdkafka's own (1 s) paces readers far below this.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap()
}

async fn create(backend: &dyn Backend, topic: &str) {
    backend
        .admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new(topic).with_partitions(PARTITIONS))
        .await
        .unwrap();
}

/// Records/s for `total` keyed records from SENDERS tasks, each calling `send_batch`
/// with the keys of one BATCH at a time and waiting for it.
async fn in_senders<F, Fut>(total: usize, send_batch: F) -> f64
where
    F: Fn(Vec<String>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let batches = total / SENDERS / BATCH;
    let start = Instant::now();
    let tasks: Vec<_> = (0..SENDERS)
        .map(|s| {
            let send_batch = send_batch.clone();
            tokio::spawn(async move {
                for b in 0..batches {
                    send_batch(
                        (0..BATCH)
                            .map(|i| format!("k{}", (s * 7 + b + i) % 1000))
                            .collect(),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (batches * SENDERS * BATCH) as f64 / start.elapsed().as_secs_f64()
}

async fn produce_tributary(producer: Arc<dyn Producer>, topic: &str, total: usize, size: usize) -> f64 {
    let (payload, topic) = (value(size), Arc::<str>::from(topic));
    in_senders(total, move |keys| {
        let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
        async move {
            let records = keys
                .into_iter()
                .map(|k| Record::new(payload.clone()).with_key(k))
                .collect();
            producer.send(&topic, records).await.unwrap();
        }
    })
    .await
}

async fn produce_raw(producer: Arc<FutureProducer>, topic: &str, total: usize, size: usize) -> f64 {
    let (payload, topic) = (value(size), Arc::<str>::from(topic));
    in_senders(total, move |keys| {
        let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
        async move {
            let futures: Vec<_> = keys
                .iter()
                .map(|k| {
                    producer
                        .send_result(FutureRecord::to(&topic).key(k.as_str()).payload(payload.as_ref()))
                        .map_err(|(e, _)| e)
                        .unwrap()
                })
                .collect();
            for f in futures {
                f.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    })
    .await
}

/// One acknowledged single-record send through tributary, in microseconds.
async fn one_tributary(producer: &dyn Producer, topic: &str, payload: &Bytes, i: usize) -> u64 {
    let start = Instant::now();
    producer
        .send(
            topic,
            vec![Record::new(payload.clone()).with_key(format!("k{i}"))],
        )
        .await
        .unwrap();
    start.elapsed().as_micros() as u64
}

/// The same send with the raw client, in microseconds.
async fn one_raw(producer: &FutureProducer, topic: &str, payload: &Bytes, i: usize) -> u64 {
    let key = format!("k{i}");
    let start = Instant::now();
    producer
        .send_result(
            FutureRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_ref()),
        )
        .map_err(|(e, _)| e)
        .unwrap()
        .await
        .unwrap()
        .map_err(|(e, _)| e)
        .unwrap();
    start.elapsed().as_micros() as u64
}

/// Single-send latency of the two clients, after a warm-up, samples interleaved so
/// the machine's noise falls on all of them alike.
async fn latencies(
    ours: &dyn Producer,
    raw: &FutureProducer,
    topic: &str,
    size: usize,
) -> [Histogram<u64>; 2] {
    let payload = value(size);
    for i in 0..200 {
        one_tributary(ours, topic, &payload, i).await;
        one_raw(raw, topic, &payload, i).await;
    }
    let mut h = [(); 2].map(|_| Histogram::new(3).unwrap());
    for i in 0..LATENCY_SAMPLES {
        h[0].record(one_tributary(ours, topic, &payload, i).await)
            .unwrap();
        h[1].record(one_raw(raw, topic, &payload, i).await).unwrap();
    }
    h
}

/// Records/s reading `total` records from the start of every partition.
async fn consume_tributary(backend: &dyn Backend, topic: &str, total: usize) -> f64 {
    let mut consumer = backend.consumer(ConsumerConfig::broadcast(topic)).await.unwrap();
    // The clock starts at the first record: connecting is not reading.
    let first = consumer.poll(10_000, Duration::from_secs(10)).await.unwrap();
    let start = Instant::now();
    let mut read = first.len();
    let mut bytes = 0usize;
    while read < total {
        let batch = consumer.poll(10_000, Duration::from_secs(10)).await.unwrap();
        assert!(!batch.is_empty(), "tributary consumer stalled at {read}");
        read += batch.len();
        bytes += batch.iter().map(|r| r.value.len()).sum::<usize>();
    }
    let rate = (read - first.len()) as f64 / start.elapsed().as_secs_f64();
    assert!(bytes > 0);
    consumer.close().await.unwrap();
    rate
}

async fn consume_raw(bootstrap: &str, topic: &str, total: usize) -> f64 {
    let consumer = raw_consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        tpl.add_partition_offset(topic, p, KafkaOffset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut stream = consumer.stream();
    // The clock starts at the first record: connecting is not reading.
    drop(stream.next().await.unwrap().unwrap());
    let start = Instant::now();
    let mut read = 1;
    let mut bytes = 0usize;
    let mut owned = Vec::with_capacity(1024);
    while read < total {
        let m = stream.next().await.unwrap().unwrap();
        // The same work tributary does: hand the application an owned record with its
        // position, key, value, headers and timestamp.
        let headers: Vec<(String, Bytes)> = m.headers().map_or_else(Vec::new, |hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        });
        let record = (
            m.partition(),
            m.offset(),
            m.key().map(Bytes::copy_from_slice),
            m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            headers,
            m.timestamp().to_millis(),
        );
        bytes += record.3.len();
        owned.push(record);
        if owned.len() == 1024 {
            owned.clear();
        }
        read += 1;
    }
    assert!(bytes > 0);
    (read - 1) as f64 / start.elapsed().as_secs_f64()
}

/// Records handed over at most before the oldest is awaited, in the one-task loops.
const IN_FLIGHT: usize = 100_000;
/// Keys used in turn by the one-task loops.
const KEYS: usize = 100;

/// Records/s of one task handing `total` records over one at a time through
/// `Producer::enqueue`, with up to IN_FLIGHT unconfirmed.
async fn one_task_tributary(producer: &dyn Producer, topic: &str, total: usize, size: usize) -> f64 {
    let payload = value(size);
    let keys: Vec<Bytes> = (0..KEYS).map(|k| Bytes::from(format!("key-{k}"))).collect();
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for i in 0..total {
        if in_flight.len() >= IN_FLIGHT {
            let oldest: tributary_core::DeliveryHandle = in_flight.pop_front().unwrap();
            oldest.await.unwrap();
        }
        let record = Record::new(payload.clone()).with_key(keys[i % KEYS].clone());
        in_flight.push_back(producer.enqueue(topic, record).await.unwrap());
    }
    for handle in in_flight {
        handle.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The same loop written against rdkafka's `FutureProducer` directly.
async fn one_task_raw(producer: &FutureProducer, topic: &str, total: usize, size: usize) -> f64 {
    let payload = value(size);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for i in 0..total {
        if in_flight.len() >= IN_FLIGHT {
            let oldest: rdkafka::producer::DeliveryFuture = in_flight.pop_front().unwrap();
            oldest.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        let mut record = FutureRecord::to(topic)
            .key(keys[i % KEYS].as_str())
            .payload(payload.as_ref());
        let future = loop {
            match producer.send_result(record) {
                Ok(future) => break future,
                Err((e, returned))
                    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => panic!("{e}"),
            }
        };
        in_flight.push_back(future);
    }
    for future in in_flight {
        future.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// One task handing records over one at a time: tributary's `enqueue` against the same
/// loop on rdkafka, three runs each in alternating order, medians.
async fn one_task_pair(kafka: &KafkaBackend, bootstrap: &str, run: &str) {
    let total = ((2_000_000.0 * scale()) as usize).max(IN_FLIGHT);
    let size = 100;
    let ours_producer = kafka.producer(ProducerConfig::default()).await.unwrap();
    let raw = raw_producer(bootstrap, 5);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let admin = kafka.admin().await.unwrap();
    for round in 0..3 {
        let (t_ours, t_raw) = (
            format!("bench-{run}-one-t{round}"),
            format!("bench-{run}-one-r{round}"),
        );
        create(kafka, &t_ours).await;
        create(kafka, &t_raw).await;
        if round % 2 == 0 {
            ours.push(one_task_tributary(&*ours_producer, &t_ours, total, size).await);
            theirs.push(one_task_raw(&raw, &t_raw, total, size).await);
        } else {
            theirs.push(one_task_raw(&raw, &t_raw, total, size).await);
            ours.push(one_task_tributary(&*ours_producer, &t_ours, total, size).await);
        }
        admin.delete_stream(&t_ours).await.unwrap();
        admin.delete_stream(&t_raw).await.unwrap();
    }
    eprintln!("one task, runs: tributary {ours:.0?} raw {theirs:.0?}");
    let (o, r) = (median(ours), median(theirs));
    println!(
        "| {size} B | produce, one task handing over {total} records one at a time, {IN_FLIGHT} in flight, {KEYS} keys (rec/s) | {o:.0} | {r:.0} | {:.2} |",
        o / r
    );
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

fn main() {
    let Ok(bootstrap) = std::env::var("TRIBUTARY_TEST_KAFKA") else {
        eprintln!("set TRIBUTARY_TEST_KAFKA (scripts/kafka start prints it)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = KafkaConfig::new(&bootstrap);
        config.max_record_bytes = 1_000_000;
        let kafka = KafkaBackend::new(config.clone()).unwrap();
        let mut low_latency = config.clone();
        low_latency.linger = Duration::ZERO;
        let kafka_low_latency = KafkaBackend::new(low_latency).unwrap();
        let run = format!("{:x}", fastrand::u32(..));
        println!("| record | metric | tributary-kafka | raw rdkafka | ratio |");
        println!("|---|---|---|---|---|");
        let only = std::env::var("TRIBUTARY_BENCH_ONLY").unwrap_or_default();
        if only.is_empty() || only.split(',').any(|o| o == "one-task") {
            one_task_pair(&kafka, &bootstrap, &run).await;
        }
        if !only.is_empty() && !only.split(',').any(|o| o == "batches") {
            return;
        }
        for (size, total) in [(100usize, 400_000.0), (1024, 150_000.0)] {
            let total = ((total * scale()) as usize).max(SENDERS * BATCH);
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            let tributary_producer: Arc<dyn Producer> =
                Arc::from(kafka.producer(ProducerConfig::default()).await.unwrap());
            let raw_prod = Arc::new(raw_producer(&bootstrap, 5));
            let mut topics = Vec::new();
            for round in 0..3 {
                let (t_ours, t_raw) = (
                    format!("bench-{run}-{size}-t{round}"),
                    format!("bench-{run}-{size}-r{round}"),
                );
                create(&kafka, &t_ours).await;
                create(&kafka, &t_raw).await;
                if round % 2 == 0 {
                    ours.push(produce_tributary(tributary_producer.clone(), &t_ours, total, size).await);
                    raw.push(produce_raw(raw_prod.clone(), &t_raw, total, size).await);
                } else {
                    raw.push(produce_raw(raw_prod.clone(), &t_raw, total, size).await);
                    ours.push(produce_tributary(tributary_producer.clone(), &t_ours, total, size).await);
                }
                topics.push((t_ours, t_raw));
            }
            let (o, r) = (median(ours), median(raw));
            println!(
                "| {size} B | produce, {SENDERS} senders x {BATCH}-record batches (rec/s) | {o:.0} | {r:.0} | {:.2} |",
                o / r
            );
            let read_total = total / SENDERS / BATCH * SENDERS * BATCH;
            // Both clients read the same topic, five times each, in alternating order:
            // fetch timing on this machine swings run to run, so one pair means little.
            let (mut ours, mut raw) = (Vec::new(), Vec::new());
            let (shared_topic, _) = &topics[0];
            for round in 0..5 {
                if round % 2 == 0 {
                    ours.push(consume_tributary(&kafka, shared_topic, read_total).await);
                    raw.push(consume_raw(&bootstrap, shared_topic, read_total).await);
                } else {
                    raw.push(consume_raw(&bootstrap, shared_topic, read_total).await);
                    ours.push(consume_tributary(&kafka, shared_topic, read_total).await);
                }
            }
            let spread = |v: &[f64]| {
                let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                format!("{lo:.0}–{hi:.0}")
            };
            println!(
                "| {size} B | consume, spread of 5 runs (rec/s) | {} | {} | |",
                spread(&ours),
                spread(&raw)
            );
            let (o, r) = (median(ours), median(raw));
            println!(
                "| {size} B | consume from the start (rec/s) | {o:.0} | {r:.0} | {:.2} |",
                o / r
            );
            let topic = format!("bench-{run}-{size}-latency");
            create(&kafka, &topic).await;
            let ours_lat = kafka_low_latency.producer(ProducerConfig::default()).await.unwrap();
            let raw_lat = raw_producer(&bootstrap, 0);
            let [h_ours, h_raw] = latencies(&*ours_lat, &raw_lat, &topic, size).await;
            for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
                let (o, r) = (pct(&h_ours, q), pct(&h_raw, q));
                println!(
                    "| {size} B | single send, acknowledged, {label} (us; linger 0) | {o:.0} | {r:.0} | {:.2} |",
                    r / o
                );
            }
            let admin = kafka.admin().await.unwrap();
            for (t_ours, t_raw) in topics {
                admin.delete_stream(&t_ours).await.unwrap();
                admin.delete_stream(&t_raw).await.unwrap();
            }
            admin.delete_stream(&topic).await.unwrap();
        }
    });
}
