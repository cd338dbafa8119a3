//! `trib mirror` killed (SIGKILL) in the middle and started again, between real engines:
//! native → Kafka and Kafka → Kinesis, 10,000 keyed records with headers. Nothing may
//! be lost, each key's records keep their order, and the duplicates the kill causes are
//! counted and bounded by one batch.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use tributary::{Client, Record, StreamSpec};

const RECORDS: usize = 10_000;
const KEYS: usize = 50;
const BATCH: &str = "50";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), fastrand::u32(..))
}

fn keyed_records() -> Vec<Record> {
    (0..RECORDS)
        .map(|i| {
            let key = format!("key{}", i % KEYS);
            Record::new(format!("{key}:{i:06}"))
                .with_key(key)
                .with_header("seq", i.to_string())
        })
        .collect()
}

/// `trib mirror SRC DST` in `group`, in batches of `BATCH`, reporting as JSON.
fn mirror_command(source: &str, destination: &str, group: &str) -> std::process::Command {
    let mut command = common::trib_command();
    command.args([
        "mirror",
        source,
        destination,
        "-g",
        group,
        "--batch",
        BATCH,
        "--json",
    ]);
    command
}

/// Runs `trib mirror SRC DST` and kills it once it reported at least `kill_after`
/// records; returns how many it had reported.
fn mirror_killed(source: &str, destination: &str, group: &str, kill_after: u64) -> u64 {
    let mut child = mirror_command(source, destination, group)
        .args(["--interval", "50ms"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("trib mirror starts");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reported = 0;
    for line in lines {
        let progress: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        reported = progress["mirrored"].as_u64().unwrap();
        if reported >= kill_after {
            break;
        }
    }
    assert!(
        reported >= kill_after,
        "the mirror ended before reporting {kill_after} records"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the mirror is still running when killed"
    );
    // Somewhere in the next batch: before, during or after its send or commit.
    std::thread::sleep(std::time::Duration::from_millis(fastrand::u64(0..40)));
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the mirror was killed, not finished: {status}");
    reported
}

/// Runs the mirror to the end (until the source is idle) and returns its last report.
fn mirror_to_end(source: &str, destination: &str, group: &str) -> serde_json::Value {
    let out = mirror_command(source, destination, group)
        .args(["--idle", "5s"])
        .output()
        .expect("trib mirror runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Reads the destination back with `trib consume`: every record there, none lost,
/// per-key order of first copies, keys and headers kept; returns the number of
/// duplicates.
fn check_destination(url: &str, stream: &str) -> usize {
    let out = common::ok(url, &["consume", stream, "--format", "json", "--idle", "5s"], "");
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut last_of_key: HashMap<String, String> = HashMap::new();
    let mut read = 0;
    for line in out.lines() {
        read += 1;
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let value = r["value"].as_str().unwrap().to_owned();
        let (key, seq) = value.split_once(':').unwrap();
        assert_eq!(r["key"].as_str(), Some(key), "key kept: {line}");
        let header = r["headers"]["seq"].as_str().map(|h| h.parse::<usize>().unwrap());
        assert_eq!(header, Some(seq.parse().unwrap()), "header kept: {line}");
        let n = copies.entry(value.clone()).or_default();
        *n += 1;
        if *n == 1
            && let Some(prev) = last_of_key.insert(key.to_owned(), seq.to_owned())
        {
            assert!(prev.as_str() < seq, "key {key}: {prev} then {seq}");
        }
    }
    let lost: Vec<String> = keyed_records()
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .filter(|v| !copies.contains_key(v))
        .collect();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "{stream}: {read} records read, {} distinct, {} lost, {duplicates} duplicates",
        copies.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} records, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(copies.len(), RECORDS, "nothing but the sent records");
    duplicates
}

/// Mirrors `source_url#source_stream` into a new stream at `destination_url`, killing
/// the mirror once in the middle; `read_url` reads the destination back.
fn mirror_with_a_kill(source_url: &str, source_stream: &str, destination_url: &str, read_url: &str) {
    let destination_stream = unique("mirror-dst");
    common::ok(
        destination_url,
        &["streams", "create", &destination_stream, "--partitions", "2"],
        "",
    );
    let (source, target) = (
        format!("{source_url}#{source_stream}"),
        format!("{destination_url}#{destination_stream}"),
    );
    let group = unique("mirror");
    let reported = mirror_killed(&source, &target, &group, 2_000);
    assert!(reported < RECORDS as u64, "killed in the middle, at {reported}");
    let last = mirror_to_end(&source, &target, &group);
    let duplicates = check_destination(read_url, &destination_stream);
    eprintln!(
        "killed after {reported} reported; the restarted mirror reported {last}; {duplicates} duplicates"
    );
    assert!(
        duplicates <= BATCH.parse().unwrap(),
        "at most the batch in flight at the kill: {duplicates}"
    );
    common::ok(destination_url, &["streams", "delete", &destination_stream], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_to_kafka_survives_a_kill() {
    let Some(kafka) = tributary_conformance::server_from_env("TRIBUTARY_TEST_KAFKA", "scripts/kafka start")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let native_url = format!("native://{}", dir.path().display());
    {
        // The native engine is one process's at a time: write, then let the mirror open it.
        let native = Client::from_url(&native_url).await.unwrap();
        native
            .ensure_stream(&StreamSpec::new("orders").with_partitions(4))
            .await
            .unwrap();
        let producer = native.producer().await.unwrap();
        producer.send("orders", keyed_records()).await.unwrap();
        producer.close().await.unwrap();
    }
    let kafka_url = format!("kafka://{kafka}");
    mirror_with_a_kill(&native_url, "orders", &kafka_url, &kafka_url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_kinesis_survives_a_kill() {
    let Some(kafka) = tributary_conformance::server_from_env("TRIBUTARY_TEST_KAFKA", "scripts/kafka start")
    else {
        return;
    };
    let Some(kinesis) =
        tributary_conformance::server_from_env("TRIBUTARY_TEST_KINESIS", "scripts/kinesis start")
    else {
        return;
    };
    let kafka_url = format!("kafka://{kafka}");
    let source = Client::from_url(&kafka_url).await.unwrap();
    let source_stream = unique("mirror-src");
    source
        .admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new(&source_stream).with_partitions(4))
        .await
        .unwrap();
    let producer = source.producer().await.unwrap();
    producer.send(&source_stream, keyed_records()).await.unwrap();
    producer.close().await.unwrap();
    // The mirror turns the envelope on for a Kinesis side; the reader must too.
    let kinesis_url = format!("kinesis://?region=us-east-1&endpoint={kinesis}");
    mirror_with_a_kill(
        &kafka_url,
        &source_stream,
        &kinesis_url,
        &format!("{kinesis_url}&headers_envelope=true"),
    );
}
