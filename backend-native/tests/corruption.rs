//! Random damage to segment and index files: bit flips, truncation, appended garbage,
//! zeroed blocks. Whatever the damage: opening never panics and always succeeds, no
//! record is returned with bytes other than those written, a damaged index is rebuilt
//! (index-only damage loses nothing), and damage inside the log is reported as
//! `Corruption` rather than silently skipped.
//!
//! Mutations: `TRIBUTARY_CORRUPTIONS` (default 1000); seed: `TRIBUTARY_CORRUPTION_SEED`.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tributary_core::{Backend, ConsumerConfig, ErrorKind, ProducerConfig, Record, StreamSpec};
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

#[derive(Default, Debug)]
struct Tally {
    mutations: u64,
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
        engine.close().unwrap();
    });
    let mut files = BTreeMap::new();
    snapshot(origin.path(), origin.path(), &mut files);
    let targets: Vec<PathBuf> = files
        .keys()
        .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "idx") && p.starts_with("streams"))
        .cloned()
        .collect();
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
        let index_only = target.extension().is_some_and(|e| e == "idx");
        let dir = tempfile::tempdir().unwrap();
        restore(&damaged, dir.path());
        let context = format!("round {round} (seed {seed}): {kind} in {}", target.display());
        rt.block_on(async {
            let engine = match NativeBackend::open(config(dir.path())) {
                Ok(e) => e,
                Err(e) => panic!("{context}: open failed: {e}"),
            };
            tally.truncated_bytes += engine
                .recovery_report()
                .values()
                .map(|r| r.truncated_bytes)
                .sum::<u64>();
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
            if index_only {
                assert!(
                    !corrupted && next == expected.len() as u64,
                    "{context}: index damage loses nothing (read {next})"
                );
            }
            if next == expected.len() as u64 && !corrupted {
                tally.intact += 1;
            }
            if corrupted || engine.recovery_report().values().any(|r| r.damage.is_some()) {
                tally.corruption_reported += 1;
            }
            tally.mutations += 1;
        });
    }
    println!(
        "corruption: mutations {} ({kinds:?}), fully readable {}, corruption reported {}, truncated bytes {}, records checked {}, wrong records 0, panics 0, seed {seed}",
        tally.mutations,
        tally.intact,
        tally.corruption_reported,
        tally.truncated_bytes,
        tally.records_checked
    );
    assert!(tally.corruption_reported > 0, "some damage was detected");
}
