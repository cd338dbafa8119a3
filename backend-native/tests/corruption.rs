//! Random damage to every file of a data directory: segments, indexes, partition
//! checkpoints, `stream.json` and the group commits log; bit flips, truncation,
//! appended garbage, zeroed blocks. Whatever the damage: opening never panics, and
//! succeeds unless `stream.json` is damaged (then it fails with `Corruption` naming the
//! file); no record is returned with bytes other than those written; and each round
//! holds its own rule: fewer records only with a `Corruption` error or a damage report,
//! index, checkpoint and commits-log damage lose no record, and the group never resumes
//! ahead of its commit, nor behind it unless the commits log reports dropped bytes.
//!
//! Mutations: `TRIBUTARY_CORRUPTIONS` (default 1000); seed: `TRIBUTARY_CORRUPTION_SEED`.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tributary_core::{Backend, ConsumerConfig, ConsumerExt, ErrorKind, ProducerConfig, Record, StreamSpec};
use tributary_native::{NativeBackend, NativeConfig};

fn config(dir: &Path) -> NativeConfig {
    let mut c = NativeConfig::at(dir);
    c.segment_bytes = 8 * 1024;
    c
}

/// Every file of the data directory, relative path → bytes.
fn snapshot(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            snapshot(&entry.path(), base, out);
        } else if entry.file_name() != "LOCK" {
            out.insert(
                entry.path().strip_prefix(base).unwrap().to_path_buf(),
                std::fs::read(entry.path()).unwrap(),
            );
        }
    }
}

fn restore(files: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path) {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn mutate(bytes: &mut Vec<u8>, rng: &mut fastrand::Rng) -> &'static str {
    if bytes.is_empty() {
        bytes.extend((0..rng.usize(1..64)).map(|_| rng.u8(..)));
        return "garbage";
    }
    match rng.u8(..4) {
        0 => {
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(..bytes.len());
                bytes[i] ^= 1 << rng.u8(..8);
            }
            "bit flips"
        }
        1 => {
            bytes.truncate(rng.usize(..bytes.len()));
            "truncation"
        }
        2 => {
            bytes.extend((0..rng.usize(1..600)).map(|_| rng.u8(..)));
            "garbage"
        }
        _ => {
            let start = rng.usize(..bytes.len());
            let end = (start + rng.usize(1..4096)).min(bytes.len());
            bytes[start..end].fill(0);
            "zeroed block"
        }
    }
}

/// Where the reference data's group has committed (partition 0).
const COMMITTED: u64 = 200;

#[derive(Default, Debug)]
struct Tally {
    mutations: u64,
    refused_open: u64,
    commits_lost: u64,
    intact: u64,
    corruption_reported: u64,
    truncated_bytes: u64,
    records_checked: u64,
}

#[test]
fn random_damage_never_yields_wrong_records() {
    let rounds: u64 = std::env::var("TRIBUTARY_CORRUPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("TRIBUTARY_CORRUPTION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The reference data: several segments of records of varied sizes.
    let origin = tempfile::tempdir().unwrap();
    let mut expected: BTreeMap<u64, (Option<Bytes>, Bytes)> = BTreeMap::new();
    rt.block_on(async {
        let engine = NativeBackend::open(config(origin.path())).unwrap();
        engine
            .admin()
            .await
            .unwrap()
            .create_stream(&StreamSpec::new("s"))
            .await
            .unwrap();
        let producer = engine.producer(ProducerConfig::default()).await.unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for batch in 0..40 {
            let records: Vec<Record> = (0..rng.usize(1..12))
                .map(|i| {
                    let value: Vec<u8> = (0..rng.usize(0..700)).map(|_| rng.u8(..)).collect();
                    Record::new(value).with_key(format!("b{batch}-{i}"))
                })
                .collect();
            let sent = records.clone();
            let deliveries = producer.send("s", records).await.unwrap();
            for (d, r) in deliveries.iter().zip(sent) {
                expected.insert(d.offset.as_u64().unwrap(), (r.key, r.value));
            }
        }
        // A group that commits twice, so the commits log holds more than one batch.
        let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
        let mut read = 0;
        while read < COMMITTED as usize {
            let want = (COMMITTED as usize - read).min(100);
            let batch = member.poll(want, Duration::from_millis(50)).await.unwrap();
            read += batch.len();
            member.ack_all(&batch).unwrap();
            member.commit().await.unwrap();
        }
        assert_eq!(read, COMMITTED as usize);
        member.close().await.unwrap();
        engine.close().unwrap();
    });
    let mut files = BTreeMap::new();
    snapshot(origin.path(), origin.path(), &mut files);
    let targets: Vec<PathBuf> = files.keys().cloned().collect();
    for name in [
        "commits.log",
        "checkpoint",
        "stream.json",
        "00000000000000000000.idx",
    ] {
        assert!(
            targets.iter().any(|t| t.ends_with(name)),
            "{name} is among the targets: {targets:?}"
        );
    }
    assert!(
        targets
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .count()
            >= 3,
        "several segments"
    );

    let mut tally = Tally::default();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for round in 0..rounds {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(round));
        let mut damaged = files.clone();
        let target = &targets[rng.usize(..targets.len())];
        let kind = mutate(damaged.get_mut(target).unwrap(), &mut rng);
        *kinds.entry(kind).or_default() += 1;
        let file = target.file_name().unwrap().to_string_lossy().into_owned();
        let segment = file.ends_with(".log") && target.starts_with("streams");
        let dir = tempfile::tempdir().unwrap();
        restore(&damaged, dir.path());
        let context = format!("round {round} (seed {seed}): {kind} in {}", target.display());
        rt.block_on(async {
            tally.mutations += 1;
            let engine = match NativeBackend::open(config(dir.path())) {
                Ok(e) => e,
                Err(e) if file == "stream.json" => {
                    assert_eq!(e.kind(), ErrorKind::Corruption, "{context}: {e}");
                    assert!(e.to_string().contains("stream.json"), "{context}: {e}");
                    tally.refused_open += 1;
                    return;
                }
                Err(e) => panic!("{context}: open failed: {e}"),
            };
            let report = engine.recovery_report().clone();
            tally.truncated_bytes += report.values().map(|r| r.truncated_bytes).sum::<u64>();
            let mut reader = engine.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
            let mut next = 0u64;
            let mut corrupted = false;
            loop {
                match reader.poll(64, Duration::ZERO).await {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => {
                        for r in batch {
                            let o = r.offset.as_u64().unwrap();
                            assert_eq!(o, next, "{context}: offsets contiguous");
                            next += 1;
                            let (key, value) = expected
                                .get(&o)
                                .unwrap_or_else(|| panic!("{context}: unknown offset {o}"));
                            assert_eq!(&r.key, key, "{context}: key of offset {o}");
                            assert_eq!(&r.value, value, "{context}: value of offset {o}");
                            tally.records_checked += 1;
                        }
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Corruption, "{context}: {e}");
                        corrupted = true;
                        break;
                    }
                }
            }
            let damage_reported = report.values().any(|r| r.damage.is_some());
            let all = next == expected.len() as u64 && !corrupted;
            if segment {
                assert!(
                    all || damage_reported || corrupted,
                    "{context}: read {next} records without a Corruption error or a damage report: {report:?}"
                );
            } else {
                assert!(all, "{context}: damage outside the segments loses no record (read {next}, {report:?})");
            }
            if all {
                tally.intact += 1;
            }
            if corrupted || damage_reported {
                tally.corruption_reported += 1;
            }
            // Where the group resumes: never ahead of its commit; behind it only when
            // the commits log reports what it dropped, or the log now ends earlier.
            let mut member = engine.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
            let resume = match member.poll(1, Duration::ZERO).await {
                Ok(batch) => batch.first().map_or(next, |r| r.offset.as_u64().unwrap()),
                Err(e) => {
                    assert!(segment && e.kind() == ErrorKind::Corruption, "{context}: {e}");
                    return;
                }
            };
            assert!(resume <= COMMITTED, "{context}: the group resumes at {resume}, past its commit");
            if resume < COMMITTED.min(next) {
                let dropped = report.get("offsets").map_or(0, |r| r.truncated_bytes);
                assert!(
                    file == "commits.log" && dropped > 0,
                    "{context}: the group resumes at {resume}, before its commit {COMMITTED}, with no report: {report:?}"
                );
                tally.commits_lost += 1;
            }
        });
    }
    println!(
        "corruption: mutations {} ({kinds:?}), open refused (stream.json) {}, fully readable {}, corruption reported {}, group commits lost (reported) {}, truncated bytes {}, records checked {}, wrong records 0, panics 0, seed {seed}",
        tally.mutations,
        tally.refused_open,
        tally.intact,
        tally.corruption_reported,
        tally.commits_lost,
        tally.truncated_bytes,
        tally.records_checked
    );
    assert!(tally.corruption_reported > 0, "some damage was detected");
}
