//! Resharding under load, against kinesis-local: a keyed producer runs while a shard is
//! split and two shards are then merged. A reader (polling, then enhanced fan-out) must
//! get every acknowledged record, each key's records in send order across parent →
//! child, and never a child's record before all its parents' records.
//!
//! Also here, because it needs the same server: KPL-aggregated records written by
//! another producer come out as their user records.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use serde_json::Value;
use tributary_conformance::drain;
use tributary_core::{Admin, Backend, ConsumerConfig, PartitionId, Producer, Received, Record, StreamSpec};
use tributary_kinesis::{KinesisBackend, KinesisPosition, ReaderKind};

const KEYS: usize = 30;

async fn reshard_under_load(reader: ReaderKind) {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let mut config = common::local_config(&endpoint);
    config.reader = reader;
    let backend = common::backend(config).expect("backend");
    let admin = backend.kinesis_admin();
    let stream = format!("reshard-{:08x}", fastrand::u32(..));
    admin
        .create_stream(&StreamSpec::new(&stream).with_partitions(2))
        .await
        .expect("create");
    let mut consumer = backend
        .consumer(ConsumerConfig::broadcast(&stream))
        .await
        .expect("consumer");

    let producing = {
        let backend = backend.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let producer = backend.kinesis_producer();
            let mut next = [0usize; KEYS];
            let mut acknowledged = Vec::new();
            for _round in 0..60 {
                let records: Vec<Record> = (0..KEYS)
                    .map(|k| {
                        next[k] += 1;
                        Record::new(format!("k{k}:{:05}", next[k])).with_key(format!("k{k}"))
                    })
                    .collect();
                let values: Vec<String> = records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                    .collect();
                producer.send(&stream, records).await.expect("send");
                acknowledged.extend(values);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acknowledged
        })
    };
    let mut got: Vec<Received> = Vec::new();
    got.extend(
        drain(&mut *consumer, usize::MAX, Duration::from_millis(800))
            .await
            .expect("poll"),
    );
    let shard0 = PartitionId::new("shardId-000000000000");
    admin.split_shard(&stream, &shard0, None).await.expect("split");
    got.extend(
        drain(&mut *consumer, usize::MAX, Duration::from_millis(800))
            .await
            .expect("poll"),
    );
    // Merge the upper child of the split with its neighbour, the other original shard.
    let info = admin.describe_stream(&stream).await.expect("describe");
    let mut open: Vec<_> = info.open_partitions().cloned().collect();
    open.sort_by_key(|p| p.key_range.map(|r| r.start));
    let (low, high) = (open[1].id.clone(), open[2].id.clone());
    admin.merge_shards(&stream, &low, &high).await.expect("merge");
    let acknowledged = producing.await.expect("producer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.len() < acknowledged.len() && tokio::time::Instant::now() < deadline {
        got.extend(
            drain(
                &mut *consumer,
                acknowledged.len() - got.len(),
                Duration::from_secs(2),
            )
            .await
            .expect("poll"),
        );
    }

    // Every acknowledged record, once.
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    let distinct: HashSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "no duplicates");
    let missing: Vec<&String> = acknowledged.iter().filter(|v| !distinct.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    // Per-key order across the reshard.
    let mut last: HashMap<&str, &str> = HashMap::new();
    for v in &values {
        let (key, n) = v.split_once(':').expect("key:n");
        if let Some(prev) = last.insert(key, n) {
            assert!(prev < n, "key {key}: {prev} then {n}");
        }
    }
    // No child read before its parents ended: its first record comes after every
    // record of each parent.
    let info = admin.describe_stream(&stream).await.expect("describe");
    let mut first: BTreeMap<&PartitionId, usize> = BTreeMap::new();
    let mut last_seen: BTreeMap<&PartitionId, usize> = BTreeMap::new();
    for (i, r) in got.iter().enumerate() {
        first.entry(&r.partition).or_insert(i);
        last_seen.insert(&r.partition, i);
    }
    let mut checked = 0;
    for shard in &info.partitions {
        let Some(child_first) = first.get(&shard.id) else {
            continue;
        };
        for parent in &shard.parents {
            if let Some(parent_last) = last_seen.get(parent) {
                assert!(
                    parent_last < child_first,
                    "{} read before its parent {parent} ended",
                    shard.id
                );
                checked += 1;
            }
        }
    }
    println!(
        "{reader:?}: {} records over {} shards, {checked} parent → child handovers checked",
        values.len(),
        first.len()
    );
    assert!(
        checked >= 3,
        "the split and the merge each handed over ({checked})"
    );
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_under_load_with_a_polling_reader() {
    reshard_under_load(ReaderKind::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_under_load_with_a_fan_out_reader() {
    reshard_under_load(ReaderKind::FanOut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregated_records_are_read_as_their_user_records() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let backend: KinesisBackend = common::backend(common::local_config(&endpoint)).expect("backend");
    let stream = format!("kpl-{:08x}", fastrand::u32(..));
    backend
        .kinesis_admin()
        .create_stream(&StreamSpec::new(&stream).with_partitions(1))
        .await
        .expect("create");
    let vectors: Value = serde_json::from_str(include_str!("data/kpl_vectors.json")).expect("vectors");
    let cases: Vec<&Value> = vectors
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c["expect"] == "aggregate" && c["records"].as_array().is_some_and(|r| !r.is_empty()))
        .collect();
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for case in &cases {
        // As a KPL producer does: the aggregate under the first user record's key.
        let records = case["records"].as_array().expect("records");
        backend
            .sdk_client()
            .put_record()
            .stream_name(&stream)
            .partition_key(records[0]["partition_key"].as_str().expect("key"))
            .data(Blob::new(hex(case["aggregate_hex"].as_str().expect("hex"))))
            .send()
            .await
            .expect("put an aggregate");
        for r in records {
            expected.push((
                r["partition_key"].as_str().expect("key").to_string(),
                hex(r["data_hex"].as_str().expect("hex")),
            ));
        }
    }
    let mut reader = backend
        .consumer(ConsumerConfig::broadcast(&stream))
        .await
        .expect("reader");
    let got = drain(&mut *reader, expected.len(), Duration::from_secs(60))
        .await
        .expect("poll");
    let got_pairs: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                r.value.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        got_pairs, expected,
        "every user record, in order, with its own key"
    );
    // Each user record has its own offset, ordered, sharing its aggregate's sequence
    // number.
    for pair in got.windows(2) {
        assert!(pair[0].offset < pair[1].offset, "offsets increase");
    }
    let subs: Vec<u32> = got
        .iter()
        .map(|r| {
            KinesisPosition::from_offset(&r.offset)
                .expect("position")
                .sub_sequence
        })
        .collect();
    assert!(subs.iter().any(|s| *s > 0), "sub-sequence numbers are used");
    println!("{} aggregates gave {} user records", cases.len(), got.len());
}
