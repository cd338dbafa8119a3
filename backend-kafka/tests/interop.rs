//! Interop with Apache Kafka's own Java client against the real broker
//! (TRIBUTARY_TEST_KAFKA; the jars `scripts/kafka` installed): what Tributary writes
//! reads back in Java with keys, values, headers and timestamps intact, and keyed
//! records land in the partition Java's default partitioner picks for the same key.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use tributary_core::{Backend, ProducerConfig, Record, StreamSpec, Timestamp};
use tributary_kafka::{KafkaBackend, KafkaConfig};

fn bootstrap() -> Option<String> {
    tributary_conformance::server_from_env("TRIBUTARY_TEST_KAFKA", "scripts/kafka start")
}

/// The Kafka jars `scripts/kafka` installed.
fn kafka_libs() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache");
    std::fs::read_dir(&cache)
        .expect("scripts/kafka start installs Kafka into .cache/")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("libs"))
        .find(|p| {
            p.file_name().is_some()
                && p.parent().is_some_and(|d| d.to_string_lossy().contains("kafka-"))
                && p.is_dir()
        })
        .expect("a .cache/kafka-*/libs folder")
}

/// Runs the Java client (a single-file program, compiled by `java` on the fly).
fn java(args: &[&str]) -> Vec<Vec<String>> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/java/Interop.java");
    let classpath = format!("{}/*", kafka_libs().display());
    let out = Command::new("java")
        .arg("-Dorg.apache.logging.log4j.level=OFF")
        .arg("-cp")
        .arg(&classpath)
        .arg(&source)
        .args(args)
        .output()
        .expect("java runs");
    assert!(
        out.status.success(),
        "java {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("REC\t") || l.starts_with("KEY\t"))
        .map(|l| l.split('\t').skip(1).map(str::to_string).collect())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_reads_what_tributary_writes_and_partitions_keys_alike() {
    let Some(bootstrap) = bootstrap() else { return };
    let backend = KafkaBackend::new(KafkaConfig::new(&bootstrap)).unwrap();
    let admin = backend.admin().await.unwrap();
    let run = format!("{:x}", fastrand::u64(..));
    let ours = format!("interop-tributary-{run}");
    let theirs = format!("interop-java-{run}");
    for topic in [&ours, &theirs] {
        admin
            .create_stream(&StreamSpec::new(topic.as_str()).with_partitions(6))
            .await
            .unwrap();
    }

    // Tributary writes keyed records with odd headers, and unkeyed ones.
    let keys: Vec<String> = (0..60).map(|i| format!("customer-{i}-ключ")).collect();
    let mut records = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        records.push(
            Record::new(format!("value-{i}"))
                .with_key(key.clone())
                .with_header("trace-id", format!("t{i}"))
                .with_header("ünï-çødé ☃", "")
                .with_header("bin", vec![0u8, 255, 10])
                .with_timestamp(Timestamp::from_millis(1_700_000_000_000 + i as i64)),
        );
    }
    records.push(Record::new(Vec::<u8>::new()));
    records.push(Record::new("no key"));
    let sent = records.clone();
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let deliveries = producer.send(&ours, records).await.unwrap();
    producer.close().await.unwrap();

    // Java reads them back.
    let read = java(&["read", &bootstrap, &ours, &sent.len().to_string()]);
    assert_eq!(read.len(), sent.len(), "Java read every record");
    let by_position: BTreeMap<(String, String), &Vec<String>> =
        read.iter().map(|r| ((r[0].clone(), r[1].clone()), r)).collect();
    for (record, delivery) in sent.iter().zip(&deliveries) {
        let position = (delivery.partition.to_string(), delivery.offset.to_string());
        let row = by_position
            .get(&position)
            .unwrap_or_else(|| panic!("Java did not see {position:?}"));
        let key = record.key.as_ref().map_or_else(|| "-".to_string(), |k| hex(k));
        assert_eq!(row[2], key, "key at {position:?}");
        assert_eq!(row[3], hex(&record.value), "value at {position:?}");
        let headers: Vec<String> = record
            .headers
            .iter()
            .map(|(name, value)| format!("{}={}", hex(name.as_bytes()), hex(value)))
            .collect();
        assert_eq!(row[4], headers.join(","), "headers at {position:?}");
        if let Some(ts) = record.timestamp {
            assert_eq!(row[5], ts.as_millis().to_string(), "timestamp at {position:?}");
        }
    }

    // Java's default partitioner puts the same keys in the same partitions.
    let mut args = vec!["write", bootstrap.as_str(), theirs.as_str()];
    args.extend(keys.iter().map(String::as_str));
    let java_partitions: BTreeMap<String, String> = java(&args)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(java_partitions.len(), keys.len());
    for (key, delivery) in keys.iter().zip(&deliveries) {
        assert_eq!(
            java_partitions[key],
            delivery.partition.to_string(),
            "key {key}: Java and Tributary disagree on the partition"
        );
    }
    for topic in [&ours, &theirs] {
        admin.delete_stream(topic).await.unwrap();
    }
}
