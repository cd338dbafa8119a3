//! tributary-kinesis against hand-written aws-sdk-kinesis code doing the same
//! PutRecords and GetRecords work, in one run against the same emulator
//! (TRIBUTARY_TEST_KINESIS, from `scripts/kinesis start`).
//!
//! `TRIBUTARY_TEST_KINESIS=http://127.0.0.1:4568 cargo bench -p tributary-kinesis --bench kinesis`
//! (`TRIBUTARY_BENCH_SCALE=0.5` for a quick look). Each client produces and consumes
//! three times, in alternating order, on fresh 4-shard streams; the table shows medians
//! and the records per PutRecords call under a steady keyed load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a benchmark: a failed unwrap is a failed run"
)]

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use tributary_core::{Admin, Backend, Bytes, ConsumerConfig, Producer, Record, StreamSpec};
use tributary_kinesis::{KinesisBackend, KinesisConfig};

const SHARDS: u32 = 4;
const KEYS: usize = 100;
const BATCH: usize = 500;
const VALUE_BYTES: usize = 100;

fn scale() -> f64 {
    std::env::var("TRIBUTARY_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "bench",
        )))
        .behavior_version(BehaviorVersion::latest())
        .build()
}

/// The keyed load both clients send: `KEYS` keys round robin, in batches of `BATCH`.
fn batches(total: usize) -> Vec<Vec<(String, Bytes)>> {
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    (0..total)
        .map(|i| (format!("key-{}", i % KEYS), value.clone()))
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[_]>::to_vec)
        .collect()
}

async fn fresh_stream(admin: &dyn Admin) -> String {
    let name = format!("bench-{:08x}", fastrand::u32(..));
    admin
        .create_stream(&StreamSpec::new(&name).with_partitions(SHARDS))
        .await
        .unwrap();
    name
}

/// Raw SDK: one PutRecords per batch, refused entries resent until none are left.
async fn raw_produce(client: &Client, stream: &str, load: &[Vec<(String, Bytes)>]) -> (f64, u64) {
    let start = Instant::now();
    let mut calls = 0;
    for batch in load {
        let mut pending: Vec<PutRecordsRequestEntry> = batch
            .iter()
            .map(|(k, v)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(k)
                    .data(Blob::new(v.to_vec()))
                    .build()
                    .unwrap()
            })
            .collect();
        while !pending.is_empty() {
            calls += 1;
            let out = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(pending.clone()))
                .send()
                .await
                .unwrap();
            pending = pending
                .into_iter()
                .zip(out.records())
                .filter(|(_, r)| r.error_code().is_some())
                .map(|(e, _)| e)
                .collect();
        }
    }
    (start.elapsed().as_secs_f64(), calls)
}

async fn tributary_produce(
    backend: &KinesisBackend,
    stream: &str,
    load: &[Vec<(String, Bytes)>],
) -> (f64, u64) {
    let producer = backend.kinesis_producer();
    let start = Instant::now();
    for batch in load {
        let records = batch
            .iter()
            .map(|(k, v)| Record::new(v.clone()).with_key(k.clone()))
            .collect();
        producer.send(stream, records).await.unwrap();
    }
    (start.elapsed().as_secs_f64(), producer.stats().put_records_calls)
}

/// The same records handed over one at a time (`Producer::enqueue`) from one task, with
/// strict key order; every handle awaited at the end.
async fn tributary_hand_over(
    backend: &KinesisBackend,
    stream: &str,
    load: &[Vec<(String, Bytes)>],
) -> (f64, u64) {
    let producer = backend.kinesis_producer();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (k, v) in load.iter().flatten() {
        let record = Record::new(v.clone()).with_key(k.clone());
        handles.push(producer.enqueue(stream, record).await.unwrap());
    }
    for handle in handles {
        handle.await.unwrap();
    }
    (start.elapsed().as_secs_f64(), producer.stats().put_records_calls)
}

/// Raw SDK: every shard read from TRIM_HORIZON with GetRecords, one shard after the
/// other, 200 ms apart as Kinesis's five calls per second allow, until `total` records.
async fn raw_consume(client: &Client, stream: &str, total: usize) -> f64 {
    let start = Instant::now();
    let shards = client.list_shards().stream_name(stream).send().await.unwrap();
    let mut iterators = Vec::new();
    for shard in shards.shards() {
        let it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        iterators.push(it.shard_iterator.unwrap());
    }
    let mut read = 0;
    let mut round = Instant::now();
    while read < total {
        for it in &mut iterators {
            let out = client
                .get_records()
                .shard_iterator(it.clone())
                .send()
                .await
                .unwrap();
            read += out.records.len();
            if let Some(next) = out.next_shard_iterator {
                *it = next;
            }
        }
        if read < total {
            tokio::time::sleep_until((round + Duration::from_millis(200)).into()).await;
            round = Instant::now();
        }
    }
    start.elapsed().as_secs_f64()
}

async fn tributary_consume(backend: &KinesisBackend, stream: &str, total: usize) -> f64 {
    let start = Instant::now();
    let mut consumer = backend.consumer(ConsumerConfig::broadcast(stream)).await.unwrap();
    let mut read = 0;
    while read < total {
        read += consumer.poll(10_000, Duration::from_secs(5)).await.unwrap().len();
    }
    consumer.close().await.unwrap();
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(endpoint) = std::env::var("TRIBUTARY_TEST_KINESIS") else {
        eprintln!("set TRIBUTARY_TEST_KINESIS (scripts/kinesis start) to run this benchmark");
        return;
    };
    let total = ((5_000.0 * scale()) as usize).max(BATCH);
    let load = batches(total);
    let sdk = sdk_config();
    let raw = Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&sdk)
            .endpoint_url(&endpoint)
            .build(),
    );
    let backend =
        KinesisBackend::with_sdk_config(KinesisConfig::local("us-east-1", &endpoint), &sdk).unwrap();
    let mut unordered_config = KinesisConfig::local("us-east-1", &endpoint);
    unordered_config.strict_key_order = false;
    let unordered = KinesisBackend::with_sdk_config(unordered_config, &sdk).unwrap();
    let (mut loose_rates, mut loose_calls) = (vec![], 0);
    let (mut handed_rates, mut handed_calls) = (vec![], 0);
    let admin = backend.kinesis_admin();
    let (mut raw_rates, mut trib_rates, mut raw_reads, mut trib_reads) = (vec![], vec![], vec![], vec![]);
    let (mut raw_calls, mut trib_calls) = (0, 0);
    for round in 0..3 {
        let (a, b) = (fresh_stream(&admin).await, fresh_stream(&admin).await);
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for tributary in order {
            if tributary {
                let (secs, calls) = tributary_produce(&backend, &a, &load).await;
                trib_rates.push(total as f64 / secs);
                trib_calls += calls;
                trib_reads.push(total as f64 / tributary_consume(&backend, &a, total).await);
            } else {
                let (secs, calls) = raw_produce(&raw, &b, &load).await;
                raw_rates.push(total as f64 / secs);
                raw_calls += calls;
                raw_reads.push(total as f64 / raw_consume(&raw, &b, total).await);
            }
        }
        let c = fresh_stream(&admin).await;
        let (secs, calls) = tributary_produce(&unordered, &c, &load).await;
        loose_rates.push(total as f64 / secs);
        loose_calls += calls;
        let d = fresh_stream(&admin).await;
        let (secs, calls) = tributary_hand_over(&backend, &d, &load).await;
        handed_rates.push(total as f64 / secs);
        handed_calls += calls;
        for stream in [a, b, c, d] {
            admin.delete_stream(&stream).await.unwrap();
        }
    }
    let (rp, tp, rc, tc) = (
        median(raw_rates),
        median(trib_rates),
        median(raw_reads),
        median(trib_reads),
    );
    let records = 3.0 * total as f64;
    println!(
        "{total} records of {VALUE_BYTES} B over {KEYS} keys, {SHARDS} shards, batches of {BATCH}, 3 runs each"
    );
    let lp = median(loose_rates);
    println!(
        "| | raw aws-sdk-kinesis | tributary-kinesis | ratio | tributary, strict_key_order=false | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| produce, records/s | {rp:.0} | {tp:.0} | {:.2} | {lp:.0} | {:.2} |",
        tp / rp,
        lp / rp
    );
    println!(
        "| consume (polling), records/s | {rc:.0} | {tc:.0} | {:.2} | | |",
        tc / rc
    );
    println!(
        "| records per PutRecords call | {:.0} | {:.0} | | {:.0} | |",
        records / raw_calls as f64,
        records / trib_calls as f64,
        records / loose_calls as f64
    );
    let hp = median(handed_rates);
    println!(
        "| produce, one task handing over single records (enqueue), strict key order, records/s | {rp:.0} | {hp:.0} | {:.2} | | |",
        hp / rp
    );
    println!(
        "| records per PutRecords call, handed over | | {:.0} | | | |",
        records / handed_calls as f64
    );
}
