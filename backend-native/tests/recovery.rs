//! Opening, locking, crash recovery, segments and retention of the native engine.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tributary_core::{
    Backend, ConsumerConfig, ConsumerExt, ErrorKind, Offset, PartitionId, ProducerConfig, ProducerExt,
    Received, Record, StartFrom, StreamSpec, Timestamp,
};
use tributary_native::{NativeBackend, NativeConfig};

fn config(dir: &Path) -> NativeConfig {
    NativeConfig::at(dir)
}

async fn create(backend: &NativeBackend, stream: &str, partitions: u32) {
    backend
        .admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new(stream).with_partitions(partitions))
        .await
        .unwrap();
}

async fn send(backend: &NativeBackend, stream: &str, values: impl IntoIterator<Item = String>) {
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let records: Vec<Record> = values.into_iter().map(Record::new).collect();
    producer.send(stream, records).await.unwrap();
}

async fn read_all(backend: &NativeBackend, stream: &str) -> tributary_core::Result<Vec<Received>> {
    let mut c = backend.consumer(ConsumerConfig::broadcast(stream)).await?;
    let mut out = Vec::new();
    loop {
        let batch = c.poll(10_000, Duration::from_millis(50)).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn texts(records: &[Received]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

fn segments(dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("streams").join(stream).join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

#[tokio::test]
async fn a_second_open_of_the_directory_is_refused_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let first = NativeBackend::open(config(dir.path())).unwrap();
    let err = NativeBackend::open(config(dir.path())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("in use by another open engine"), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    first.close().unwrap();
    let producer = first.producer(ProducerConfig::default()).await.err().unwrap();
    assert_eq!(
        producer.kind(),
        ErrorKind::Closed,
        "handles of a closed engine say Closed"
    );
    NativeBackend::open(config(dir.path())).unwrap().close().unwrap();
}

#[tokio::test]
async fn records_survive_a_crash_without_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = NativeBackend::open(config(dir.path())).unwrap();
        create(&engine, "s", 1).await;
        send(&engine, "s", values("a", 1000)).await;
        // Dropped without close: no index saved, as after kill -9.
        std::mem::forget(engine);
    }
    // The forgotten engine still holds the lock in this process; a crash releases it.
    // Reopen through a copy of the directory instead.
    let copy = tempfile::tempdir().unwrap();
    common::copy_dir(dir.path(), copy.path());
    let engine = NativeBackend::open(config(copy.path())).unwrap();
    assert_eq!(texts(&read_all(&engine, "s").await.unwrap()), values("a", 1000));
    let report = engine.recovery_report();
    assert!(
        report.get("s/0").is_some_and(|r| r.scanned_bytes > 0),
        "the unclean log was scanned: {report:?}"
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_appends_continue() {
    let first = tempfile::tempdir().unwrap();
    let engine = NativeBackend::open(config(first.path())).unwrap();
    create(&engine, "s", 1).await;
    send(&engine, "s", values("a", 10)).await;
    engine.close().unwrap();
    drop(engine);
    // A crash while the next batch was being written, after the last sync (close).
    let engine = NativeBackend::open(config(first.path())).unwrap();
    send(&engine, "s", values("b", 10)).await;
    std::mem::forget(engine);
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(first.path(), dir.path());
    let log = segments(dir.path(), "s").pop().unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    // Tear the last batch: keep its header and part of its body.
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    let report = engine.recovery_report().get("s/0").cloned().unwrap();
    assert!(
        report.truncated_bytes > 0 && report.damage.is_none(),
        "{report:?}"
    );
    assert_eq!(
        texts(&read_all(&engine, "s").await.unwrap()),
        values("a", 10),
        "the torn batch is gone"
    );
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let d = producer.send_one("s", Record::new("after")).await.unwrap();
    assert_eq!(d.offset, Offset::new(10), "offsets continue without a gap");
    // Garbage after the last good batch is a torn tail too.
    engine.close().unwrap();
    drop(engine);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    std::fs::write(&log, bytes).unwrap();
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    assert_eq!(engine.recovery_report().get("s/0").unwrap().truncated_bytes, 100);
    assert_eq!(read_all(&engine, "s").await.unwrap().len(), 11);
}

#[tokio::test]
async fn damage_in_the_middle_is_reported_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    create(&engine, "s", 1).await;
    for batch in 0..5 {
        send(&engine, "s", values(&format!("b{batch}"), 10)).await;
    }
    engine.close().unwrap();
    drop(engine);
    let log = segments(dir.path(), "s").pop().unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&log, &bytes).unwrap();
    std::fs::remove_file(log.with_extension("idx")).unwrap();
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    let report = engine.recovery_report().get("s/0").cloned().unwrap();
    let damage = report.damage.clone().expect("damage reported");
    assert!(damage.contains(".log at byte"), "{damage}");
    assert_eq!(report.truncated_bytes, 0, "valid data after the damage is kept");
    assert_eq!(std::fs::read(&log).unwrap().len(), bytes.len(), "nothing cut off");
    let err = read_all(&engine, "s").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corruption);
    let mut reader = engine.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
    let before = reader.poll(1000, Duration::from_millis(50)).await.unwrap();
    assert!(!before.is_empty(), "records before the damage are readable");
    assert!(
        texts(&before)
            .iter()
            .all(|v| v.starts_with("b0") || v.starts_with("b1"))
    );
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let err = producer.send_one("s", Record::new("x")).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Corruption,
        "a damaged partition takes no writes"
    );
}

#[tokio::test]
async fn a_bad_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    let engine = NativeBackend::open(cfg.clone()).unwrap();
    create(&engine, "s", 1).await;
    for i in 0..20 {
        send(&engine, "s", values(&format!("r{i:02}"), 50)).await;
    }
    engine.close().unwrap();
    drop(engine);
    let logs = segments(dir.path(), "s");
    assert!(logs.len() > 3, "small segments roll: {}", logs.len());
    for log in &logs {
        std::fs::write(log.with_extension("idx"), b"garbage").unwrap();
    }
    let engine = NativeBackend::open(cfg).unwrap();
    let all = read_all(&engine, "s").await.unwrap();
    assert_eq!(all.len(), 1000);
    assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
    let mut reader = engine
        .consumer(ConsumerConfig::broadcast("s").start_from(StartFrom::At(Offset::new(777))))
        .await
        .unwrap();
    let got = reader.poll(1, Duration::from_millis(50)).await.unwrap();
    assert_eq!(
        got[0].offset,
        Offset::new(777),
        "seek by offset through the rebuilt index"
    );
}

#[tokio::test]
async fn timestamps_seek_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    let engine = NativeBackend::open(cfg).unwrap();
    create(&engine, "s", 1).await;
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let base = 1_700_000_000_000i64;
    for i in 0..500 {
        let r = Record::new(vec![b'x'; 100]).with_timestamp(Timestamp::from_millis(base + i * 1000));
        producer.send_one("s", r).await.unwrap();
    }
    for (t, expected) in [
        (base - 5, 0u64),
        (base + 250_500, 251),
        (base + 499_000, 499),
        (base + 10_000_000, 500),
    ] {
        let mut c = engine
            .consumer(
                ConsumerConfig::broadcast("s").start_from(StartFrom::Timestamp(Timestamp::from_millis(t))),
            )
            .await
            .unwrap();
        let got = c.poll(1, Duration::from_millis(20)).await.unwrap();
        let first = got.first().map_or(500, |r| r.offset.as_u64().unwrap());
        assert_eq!(first, expected, "timestamp {t}");
    }
}

#[tokio::test]
async fn retention_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    cfg.retention_bytes = Some(16 * 1024);
    let engine = NativeBackend::open(cfg).unwrap();
    create(&engine, "s", 1).await;
    for i in 0..100 {
        send(&engine, "s", vec![format!("{i:03}-{}", "x".repeat(400))]).await;
    }
    // The background thread applies retention about once a second.
    let admin = engine.admin().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let low = loop {
        let info = admin.describe_stream("s").await.unwrap();
        let low = info.partitions[0].low.clone().unwrap();
        if low > Offset::new(0) || std::time::Instant::now() > deadline {
            break low;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(low > Offset::new(50), "old segments were deleted (low = {low})");
    let kept = read_all(&engine, "s").await.unwrap();
    assert_eq!(
        kept.first().map(|r| r.offset.clone()),
        Some(low),
        "earliest starts at the new low"
    );
    assert_eq!(
        kept.last().unwrap().offset,
        Offset::new(99),
        "the newest records stay"
    );
    let bytes: u64 = segments(dir.path(), "s")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        bytes <= 16 * 1024 + 4096,
        "within the size bound plus one segment: {bytes}"
    );
}

#[tokio::test]
async fn directories_are_private_and_names_cannot_escape() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("data");
    let engine = NativeBackend::open(config(&root)).unwrap();
    create(&engine, "s", 1).await;
    send(&engine, "s", values("a", 3)).await;
    for bad in ["../escape", "..", "a/../../b", "/abs"] {
        let err = engine
            .admin()
            .await
            .unwrap()
            .create_stream(&StreamSpec::new(bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
    }
    let names: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("data")],
        "nothing outside the data root"
    );
    check_modes(&root);
}

fn check_modes(path: &Path) {
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{}", entry.path().display());
            check_modes(&entry.path());
        } else {
            assert_eq!(mode, 0o600, "{}", entry.path().display());
        }
    }
}

#[tokio::test]
async fn groups_resume_at_their_commits_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    create(&engine, "s", 3).await;
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let records: Vec<Record> = (0..30)
        .map(|i| Record::new(format!("v{i}")).with_key(format!("k{i}")))
        .collect();
    producer.send("s", records).await.unwrap();
    let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
    let got = member.poll(1000, Duration::from_millis(100)).await.unwrap();
    assert_eq!(got.len(), 30);
    // Acknowledge all but the last record of each partition.
    let mut last: std::collections::BTreeMap<PartitionId, Offset> = Default::default();
    for r in &got {
        last.insert(r.partition.clone(), r.offset.clone());
    }
    for r in &got {
        if last.get(&r.partition) != Some(&r.offset) {
            member.ack(&r.partition, &r.offset).unwrap();
        }
    }
    member.commit().await.unwrap();
    drop(member); // a crash: close would commit nothing more anyway
    engine.close().unwrap();
    drop(engine);
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
    let again = member.poll(1000, Duration::from_millis(100)).await.unwrap();
    let mut again_offsets: Vec<(PartitionId, Offset)> = again
        .iter()
        .map(|r| (r.partition.clone(), r.offset.clone()))
        .collect();
    again_offsets.sort();
    let expected: Vec<(PartitionId, Offset)> = last.into_iter().collect();
    assert_eq!(
        again_offsets, expected,
        "exactly the unacknowledged last record of each partition"
    );
}

#[tokio::test]
async fn memory_mode_acknowledges_before_writing_and_writes_on_flush_or_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = tributary_native::Durability::Memory;
    cfg.group_commit_interval = Duration::from_secs(3600); // only size and close write
    let engine = NativeBackend::open(cfg.clone()).unwrap();
    create(&engine, "s", 1).await;
    send(&engine, "s", values("m", 100)).await;
    let on_disk = || std::fs::metadata(&segments(dir.path(), "s")[0]).unwrap().len();
    assert_eq!(on_disk(), 0, "acknowledged before any write()");
    assert_eq!(
        read_all(&engine, "s").await.unwrap().len(),
        100,
        "readers see buffered records"
    );
    // 256 KiB gathered: written without waiting for the interval.
    send(
        &engine,
        "s",
        (0..300).map(|i| format!("{i:0>1000}")).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        on_disk() >= 256 * 1024,
        "a full buffer is written at once ({} bytes)",
        on_disk()
    );
    send(&engine, "s", values("tail", 5)).await;
    engine.close().unwrap();
    drop(engine);
    let engine = NativeBackend::open(cfg).unwrap();
    assert_eq!(
        read_all(&engine, "s").await.unwrap().len(),
        405,
        "close wrote the rest"
    );
}

#[tokio::test]
async fn retention_by_time_deletes_segments_older_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    cfg.retention = Some(Duration::from_secs(24 * 3600));
    let engine = NativeBackend::open(cfg).unwrap();
    create(&engine, "s", 1).await;
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let old = Timestamp::now().saturating_sub(Duration::from_secs(2 * 24 * 3600));
    for i in 0..60 {
        let r = Record::new(format!("old-{i:03}-{}", "x".repeat(300))).with_timestamp(old);
        producer.send_one("s", r).await.unwrap();
    }
    for i in 0..60 {
        producer
            .send_one("s", Record::new(format!("new-{i:03}-{}", "x".repeat(300))))
            .await
            .unwrap();
    }
    let admin = engine.admin().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let low = admin.describe_stream("s").await.unwrap().partitions[0]
            .low
            .clone()
            .unwrap();
        if low >= Offset::new(55) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = texts(&read_all(&engine, "s").await.unwrap());
    assert!(
        kept.iter().filter(|v| v.starts_with("old")).count() < 10,
        "old segments went: {} old left",
        kept.iter().filter(|v| v.starts_with("old")).count()
    );
    assert_eq!(
        kept.iter().filter(|v| v.starts_with("new")).count(),
        60,
        "every recent record stays"
    );
}

#[tokio::test]
async fn commits_past_the_end_of_a_recovered_log_are_moved_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    create(&engine, "s", 1).await;
    for i in 0..10 {
        send(&engine, "s", vec![format!("r{i}")]).await; // one batch each
    }
    let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
    let got = member.poll(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(got.len(), 10);
    member.ack_all(&got).unwrap();
    member.close().await.unwrap(); // the group's commit: offset 10
    // A crash took the last four batches, never synced, but not the commit (as after
    // power loss in a mode where readers see unsynced data).
    std::mem::forget(engine);
    let crashed = dir;
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(crashed.path(), dir.path());
    let log = segments(dir.path(), "s").pop().unwrap();
    let bytes = std::fs::read(&log).unwrap();
    let keep = bytes.len() - 4 * (bytes.len() / 10);
    std::fs::write(&log, &bytes[..keep]).unwrap();
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    let end = engine
        .admin()
        .await
        .unwrap()
        .describe_stream("s")
        .await
        .unwrap()
        .partitions[0]
        .high
        .clone()
        .unwrap();
    assert_eq!(end, Offset::new(6));
    send(&engine, "s", values("after", 3)).await;
    let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
    let got = member.poll(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(
        texts(&got),
        values("after", 3),
        "the group resumes at the log's end and skips nothing new"
    );
    member.ack_all(&got).unwrap();
    member.close().await.unwrap();
    engine.close().unwrap();
    drop(engine);
    // The move back is persisted: the old, larger commit does not come back.
    let engine = NativeBackend::open(config(dir.path())).unwrap();
    send(&engine, "s", values("later", 2)).await;
    let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
    let got = member.poll(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(texts(&got), values("later", 2));
}
