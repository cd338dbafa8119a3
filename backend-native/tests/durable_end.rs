//! A partition whose log ends before what it had synced has lost acknowledged records.
//! Recovery must say so (a report naming the partition, the synced end and the end
//! found; `Corruption` to readers past what is left and to writers), never cut it off
//! as a torn tail, and never hand the lost offsets to new records. Every way of losing
//! the end (cut at a batch boundary, mid-batch, to zero, the last segment removed), in
//! `sync` and `group_commit` mode, after a clean close and after a crash.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tributary_core::{
    Backend, ConsumerConfig, ErrorKind, Offset, ProducerConfig, ProducerExt, Record, StreamSpec,
};
use tributary_native::{Durability, LostDurable, NativeBackend, NativeConfig};

const PER_BATCH: u64 = 20;

#[derive(Debug, Clone, Copy)]
enum Cut {
    AtBatchBoundary,
    MidBatch,
    ToZero,
    LastSegmentRemoved,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Close,
    Crash,
}

/// The files of partition 0 after each acknowledged batch: (segment, its length).
struct Written {
    after_batch: Vec<(PathBuf, u64)>,
}

impl Written {
    fn last_segment(&self) -> &Path {
        &self.after_batch.last().unwrap().0
    }

    /// Batches (by index) held by the last segment.
    fn in_last_segment(&self) -> Vec<usize> {
        (0..self.after_batch.len())
            .filter(|i| self.after_batch[*i].0 == self.last_segment())
            .collect()
    }
}

fn partition_dir(root: &Path) -> PathBuf {
    root.join("streams").join("s").join("0")
}

fn newest_segment(root: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(partition_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

/// The offset below which partition 0's checkpoint says everything is synced (its
/// on-disk form: two 40-byte slots, magic, CRC-32C of the rest, sequence, segment
/// base, position, offset).
fn synced_offset(root: &Path) -> Option<u64> {
    let bytes = std::fs::read(partition_dir(root).join("checkpoint")).ok()?;
    bytes
        .chunks_exact(40)
        .filter(|s| s[0..4] == *b"TRC\x02" && s[4..8] == crc32c::crc32c(&s[8..]).to_le_bytes())
        .map(|s| {
            let word = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
            (word(8), word(32))
        })
        .max()
        .map(|(_, offset)| offset)
}

fn value(i: u64) -> String {
    format!("r{i:05}-{}", "x".repeat(80))
}

/// Writes batches until the partition has several segments and the last one holds two
/// batches, then stops the engine as asked. Returns the directory to reopen.
async fn write_and_stop(durability: Durability, stop: Stop) -> (tempfile::TempDir, Written) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NativeConfig::at(dir.path());
    config.durability = durability;
    config.segment_bytes = 5000;
    let engine = NativeBackend::open(config).unwrap();
    engine
        .admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new("s").with_partitions(1))
        .await
        .unwrap();
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let mut written = Written {
        after_batch: Vec::new(),
    };
    let several_segments = |w: &Written| {
        w.after_batch
            .first()
            .is_some_and(|(first, _)| first != w.last_segment())
    };
    while !several_segments(&written) || written.in_last_segment().len() < 2 {
        let first = written.after_batch.len() as u64 * PER_BATCH;
        let records = (first..first + PER_BATCH)
            .map(|i| Record::new(value(i)))
            .collect();
        producer.send("s", records).await.unwrap();
        let segment = newest_segment(dir.path());
        let len = std::fs::metadata(&segment).unwrap().len();
        written.after_batch.push((segment, len));
        assert!(written.after_batch.len() < 50, "segments never rolled");
    }
    let sent = written.after_batch.len() as u64 * PER_BATCH;
    match stop {
        Stop::Close => {
            engine.close().unwrap();
            (dir, written)
        }
        Stop::Crash => {
            if durability == Durability::GroupCommit {
                // Acknowledged before the sync: wait for the background one to cover all.
                let deadline = Instant::now() + Duration::from_secs(10);
                while synced_offset(dir.path()) < Some(sent) {
                    assert!(Instant::now() < deadline, "no group commit in 10 s");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            assert_eq!(synced_offset(dir.path()), Some(sent), "all of it synced");
            // Dropped without close, as after kill -9; the engine left in this process
            // keeps its lock, so the crashed state is reopened from a copy.
            std::mem::forget(engine);
            let copy = tempfile::tempdir().unwrap();
            common::copy_dir(dir.path(), copy.path());
            let written = Written {
                after_batch: written
                    .after_batch
                    .into_iter()
                    .map(|(p, len)| (copy.path().join(p.strip_prefix(dir.path()).unwrap()), len))
                    .collect(),
            };
            (copy, written)
        }
    }
}

/// Damages the end of the log; returns the offset it now ends at.
fn cut(written: &Written, how: Cut) -> u64 {
    let last = written.last_segment();
    let batches = written.in_last_segment();
    let first_in_last = batches[0] as u64 * PER_BATCH;
    let set_len = |len: u64| {
        let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
        file.set_len(len).unwrap();
    };
    let after_first = written.after_batch[batches[0]].1;
    match how {
        Cut::AtBatchBoundary => {
            set_len(after_first);
            first_in_last + PER_BATCH
        }
        Cut::MidBatch => {
            set_len(after_first + 7);
            first_in_last + PER_BATCH
        }
        Cut::ToZero => {
            set_len(0);
            first_in_last
        }
        Cut::LastSegmentRemoved => {
            std::fs::remove_file(last).unwrap();
            let _ = std::fs::remove_file(last.with_extension("idx"));
            first_in_last
        }
    }
}

async fn check(durability: Durability, stop: Stop, how: Cut) {
    let case = format!("{durability:?}, {stop:?}, {how:?}");
    let (dir, written) = write_and_stop(durability, stop).await;
    let sent = written.after_batch.len() as u64 * PER_BATCH;
    let found = cut(&written, how);
    for reopen in 0..2 {
        let mut config = NativeConfig::at(dir.path());
        config.durability = durability;
        config.segment_bytes = 5000;
        let engine = NativeBackend::open(config).unwrap();
        let report = engine.recovery_report().get("s/0").cloned();
        let report = report.unwrap_or_else(|| panic!("{case}: no recovery report"));
        assert_eq!(
            report.lost,
            Some(LostDurable {
                durable_end: sent,
                found_end: found
            }),
            "{case} (open {reopen}): {report:?}"
        );
        assert_eq!(report.truncated_bytes, 0, "{case}: nothing cut as a torn tail");
        let damage = report
            .damage
            .clone()
            .unwrap_or_else(|| panic!("{case} (open {reopen}): no damage reported: {report:?}"));
        assert!(
            damage.contains("streams/s/0") && damage.contains(&sent.to_string()),
            "{case}: the message names the partition and the synced end: {damage}"
        );

        // Everything before the end found is there; past it, Corruption.
        let mut reader = engine.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
        let mut read = Vec::new();
        let err = loop {
            match reader.poll(1000, Duration::from_millis(20)).await {
                Ok(batch) if batch.is_empty() => panic!("{case}: the read ended without an error"),
                Ok(batch) => read.extend(batch),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::Corruption, "{case}: {err}");
        let expected: Vec<String> = (0..found).map(value).collect();
        let got: Vec<String> = read
            .iter()
            .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
            .collect();
        assert_eq!(got, expected, "{case}: the records before the end found");

        // The lost offsets are never given to new records.
        let producer = engine.producer(ProducerConfig::default()).await.unwrap();
        let refused = producer.send_one("s", Record::new("new")).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Corruption, "{case}: {refused}");
        let high = engine
            .admin()
            .await
            .unwrap()
            .describe_stream("s")
            .await
            .unwrap()
            .partitions[0]
            .high
            .clone();
        assert_eq!(high, Some(Offset::new(found)), "{case}");
        engine.close().unwrap();
    }
}

async fn every_mode_and_stop(how: Cut) {
    for durability in [Durability::Sync, Durability::GroupCommit] {
        for stop in [Stop::Close, Stop::Crash] {
            check(durability, stop, how).await;
        }
    }
}

#[tokio::test]
async fn a_log_cut_at_a_batch_boundary_before_its_synced_end_is_damage() {
    every_mode_and_stop(Cut::AtBatchBoundary).await;
}

#[tokio::test]
async fn a_log_cut_mid_batch_before_its_synced_end_is_damage() {
    every_mode_and_stop(Cut::MidBatch).await;
}

#[tokio::test]
async fn a_log_cut_to_zero_is_damage() {
    every_mode_and_stop(Cut::ToZero).await;
}

#[tokio::test]
async fn a_removed_last_segment_is_damage() {
    every_mode_and_stop(Cut::LastSegmentRemoved).await;
}

#[tokio::test]
async fn a_partition_without_any_segment_is_damage() {
    let (dir, written) = write_and_stop(Durability::Sync, Stop::Close).await;
    let sent = written.after_batch.len() as u64 * PER_BATCH;
    for entry in std::fs::read_dir(partition_dir(dir.path())).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log" || e == "idx") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let engine = NativeBackend::open(NativeConfig::at(dir.path())).unwrap();
    let report = engine.recovery_report().get("s/0").cloned().unwrap();
    assert_eq!(
        report.lost,
        Some(LostDurable {
            durable_end: sent,
            found_end: 0
        })
    );
    let mut reader = engine.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
    let err = reader.poll(10, Duration::from_millis(20)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corruption);
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let refused = producer.send_one("s", Record::new("new")).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Corruption);
}
