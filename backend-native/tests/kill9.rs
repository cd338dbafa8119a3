//! Crash test: a child process appends and reports acknowledgements; the parent kills
//! it with SIGKILL at random moments, reopens the directory and checks that every
//! acknowledged record is there, that nothing appears that was never sent, that
//! offsets are contiguous, and that reopening always succeeds.
//!
//! The child is this test binary run again with `TRIBUTARY_CRASH_CHILD` set.
//! Cycles: `TRIBUTARY_CRASH_CYCLES` (default 200); seed: `TRIBUTARY_CRASH_SEED`.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tributary_core::{Backend, ConsumerConfig, Offset, ProducerConfig, Record, StartFrom, StreamSpec};
use tributary_native::{NativeBackend, NativeConfig};

const CHILD: &str = "TRIBUTARY_CRASH_CHILD";

fn child(dir: &str, cycle: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Small segments: kills also land during rolls (seal, index write, new file).
        let mut config = NativeConfig::at(dir);
        config.segment_bytes = 64 * 1024;
        let engine = NativeBackend::open(config).unwrap();
        let admin = engine.admin().await.unwrap();
        if admin.describe_stream("crash").await.is_err() {
            admin
                .create_stream(&StreamSpec::new("crash").with_partitions(2))
                .await
                .unwrap();
        }
        let producer = engine.producer(ProducerConfig::default()).await.unwrap();
        // stderr: the test harness writes its own lines to stdout.
        let mut out = std::io::stderr().lock();
        let mut seq = 0u64;
        loop {
            let n = 1 + fastrand::u64(..200);
            let records: Vec<Record> = (seq..seq + n)
                .map(|i| Record::new(format!("c{cycle}-{i}")).with_key(format!("k{}", i % 7)))
                .collect();
            writeln!(out, "TRY {} {}", seq, seq + n).unwrap();
            out.flush().unwrap();
            producer.send("crash", records).await.unwrap();
            writeln!(out, "ACK {} {}", seq, seq + n).unwrap();
            out.flush().unwrap();
            seq += n;
            // Paced now and then, so each cycle adds a bounded amount for the parent to
            // check, while most kills still land inside a send.
            if seq.is_multiple_of(8) {
                tokio::time::sleep(Duration::from_micros(fastrand::u64(..500))).await;
            }
        }
    });
}

#[derive(Default)]
struct Totals {
    attempted: u64,
    acked: u64,
    indeterminate: u64,
    lost: u64,
    duplicated: u64,
    truncated_bytes: u64,
}

/// Reopens the directory and reads every partition from `from` (its end after the
/// previous cycle), checking offsets are contiguous. Returns value → offsets, the new
/// ends, and the bytes recovery cut off.
fn read_since(
    dir: &Path,
    from: &BTreeMap<u32, u64>,
) -> (BTreeMap<String, Vec<u64>>, BTreeMap<u32, u64>, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = NativeBackend::open(NativeConfig::at(dir)).expect("reopen always succeeds");
        let truncated: u64 = engine.recovery_report().values().map(|r| r.truncated_bytes).sum();
        for report in engine.recovery_report().values() {
            assert!(
                report.damage.is_none(),
                "a kill never damages the middle of a log: {report:?}"
            );
        }
        let mut values: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut ends = from.clone();
        if let Ok(info) = engine.admin().await.unwrap().describe_stream("crash").await {
            let mut reader = engine.consumer(ConsumerConfig::broadcast("crash")).await.unwrap();
            for p in &info.partitions {
                let index = p.id.index().unwrap();
                let high = p.high.as_ref().and_then(Offset::as_u64).unwrap();
                let start = from.get(&index).copied().unwrap_or(0);
                assert!(
                    high >= start,
                    "partition {index} shrank from {start} to {high}: acknowledged data lost"
                );
                reader
                    .seek(&p.id, StartFrom::At(Offset::new(start)))
                    .await
                    .unwrap();
                ends.insert(index, start);
            }
            loop {
                let batch = reader.poll(100_000, Duration::from_millis(20)).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    let index = r.partition.index().unwrap();
                    let o = r.offset.as_u64().unwrap();
                    let end = ends.get_mut(&index).unwrap();
                    assert_eq!(o, *end, "partition {index}: offsets contiguous");
                    *end += 1;
                    values
                        .entry(String::from_utf8(r.value.to_vec()).unwrap())
                        .or_default()
                        .push(o);
                }
            }
        }
        engine.close().unwrap();
        (values, ends, truncated)
    })
}

#[test]
fn kill_minus_nine_loses_no_acknowledged_record() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (dir, cycle) = spec.rsplit_once('|').unwrap();
        child(dir, cycle.parse().unwrap());
        return;
    }
    let cycles: u64 = std::env::var("TRIBUTARY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("TRIBUTARY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_all: BTreeSet<String> = BTreeSet::new();
    let mut tried_all: BTreeSet<String> = BTreeSet::new();
    let mut totals = Totals::default();
    // Per partition, the offset up to which earlier cycles verified the log.
    let mut checked: BTreeMap<u32, u64> = BTreeMap::new();
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "kill_minus_nine_loses_no_acknowledged_record",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{}|{cycle}", dir.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(5 + fastrand::u64(..60)));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            let mut parts = line.split_whitespace();
            let (Some(kind), Some(a), Some(b)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) else {
                continue;
            };
            for i in a..b {
                let value = format!("c{cycle}-{i}");
                match kind {
                    "TRY" => {
                        totals.attempted += 1;
                        tried_all.insert(value);
                    }
                    "ACK" => {
                        totals.acked += 1;
                        acked_all.insert(value);
                    }
                    _ => {}
                }
            }
        }
        let (present, ends, truncated) = read_since(dir.path(), &checked);
        checked = ends;
        totals.truncated_bytes += truncated;
        let acked: Vec<&String> = acked_all
            .iter()
            .filter(|v| v.starts_with(&format!("c{cycle}-")))
            .collect();
        for v in acked {
            if !present.contains_key(v) {
                totals.lost += 1;
                eprintln!("cycle {cycle}: acknowledged {v} is missing");
            }
        }
        for (v, offsets) in &present {
            assert!(tried_all.contains(v), "cycle {cycle}: {v} was never sent");
            if offsets.len() > 1 {
                totals.duplicated += 1;
            }
            if !acked_all.contains(v) {
                totals.indeterminate += 1;
            }
        }
        assert_eq!(totals.lost, 0, "seed {seed}");
        assert_eq!(totals.duplicated, 0, "seed {seed}");
    }
    println!(
        "kill -9: cycles {cycles}, attempted {}, acked {}, indeterminate (present, never acked) {}, lost {}, duplicated {}, truncated bytes {}, seed {seed}",
        totals.attempted,
        totals.acked,
        totals.indeterminate,
        totals.lost,
        totals.duplicated,
        totals.truncated_bytes
    );
    assert!(totals.acked > 0, "the children acknowledged something");
    assert_eq!(totals.duplicated, 0);
}
