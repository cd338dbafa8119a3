//! Crash test: a child process appends and reports acknowledgements, consumes in a
//! group and commits, and creates, deletes and grows streams meanwhile; the parent
//! kills it with SIGKILL at random moments (each cycle only after the child has
//! acknowledged something), reopens the directory and checks that every acknowledged
//! record is there, that nothing appears that was never sent, that offsets are
//! contiguous, that reopening always succeeds, that the group resumes between its last
//! acknowledged commit and the log's end (never behind it, never ahead of any commit
//! asked for), and that acknowledged stream changes hold. The child's durability mode
//! changes every cycle (`page_cache`, `group_commit`, `sync`): none may lose anything
//! to a kill.
//!
//! The child is this test binary run again with `TRIBUTARY_CRASH_CHILD` set.
//! Cycles: `TRIBUTARY_CRASH_CYCLES` (default 200); seed: `TRIBUTARY_CRASH_SEED`.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tributary_core::{
    Backend, ConsumerConfig, ConsumerExt, Offset, ProducerConfig, Record, StartFrom, StreamSpec,
};
use tributary_native::{Durability, NativeBackend, NativeConfig};

const CHILD: &str = "TRIBUTARY_CRASH_CHILD";
const STREAM: &str = "crash";
const GROUP: &str = "g";
const MODES: [Durability; 3] = [Durability::PageCache, Durability::GroupCommit, Durability::Sync];
/// The most partitions the child grows the stream to.
const MAX_PARTITIONS: u32 = 6;

/// One line to the parent. stderr: the test harness writes its own lines to stdout;
/// each `eprintln!` is one unbuffered write.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!($($arg)*) };
}

fn child(dir: &str, cycle: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Small segments: kills also land during rolls (seal, index write, new file).
        let mut config = NativeConfig::at(dir);
        config.segment_bytes = 64 * 1024;
        config.durability = MODES[(cycle % 3) as usize];
        let engine = NativeBackend::open(config).unwrap();
        let admin = engine.admin().await.unwrap();
        if admin.describe_stream(STREAM).await.is_err() {
            admin
                .create_stream(&StreamSpec::new(STREAM).with_partitions(2))
                .await
                .unwrap();
        }
        let producer = engine.producer(ProducerConfig::default()).await.unwrap();
        let mut member = engine
            .consumer(ConsumerConfig::group(STREAM, GROUP))
            .await
            .unwrap();
        let mut seq = 0u64;
        for round in 0u64.. {
            let n = 1 + fastrand::u64(..200);
            let records: Vec<Record> = (seq..seq + n)
                .map(|i| Record::new(format!("c{cycle}-{i}")).with_key(format!("k{}", i % 7)))
                .collect();
            say!("TRY {} {}", seq, seq + n);
            producer.send(STREAM, records).await.unwrap();
            say!("ACK {} {}", seq, seq + n);
            seq += n;
            if round % 3 == 0 {
                // Consume what is there, acknowledge all of it and commit.
                let batch = member.poll(500, Duration::ZERO).await.unwrap();
                member.ack_all(&batch).unwrap();
                let mut next: BTreeMap<u32, u64> = BTreeMap::new();
                for r in &batch {
                    next.insert(r.partition.index().unwrap(), r.offset.as_u64().unwrap() + 1);
                }
                for (p, o) in &next {
                    say!("TRYCOMMIT {p} {o}");
                }
                member.commit().await.unwrap();
                for (p, o) in &next {
                    say!("COMMIT {p} {o}");
                }
            }
            if round % 16 == 5 {
                let name = format!("side-{cycle}-{round}");
                say!("TRYCREATE {name}");
                admin
                    .create_stream(&StreamSpec::new(&name).with_partitions(1))
                    .await
                    .unwrap();
                say!("CREATED {name}");
            }
            if round % 16 == 13 {
                let streams = admin.list_streams().await.unwrap();
                if let Some(oldest) = streams.iter().filter(|s| s.starts_with("side-")).min() {
                    say!("TRYDELETE {oldest}");
                    admin.delete_stream(oldest).await.unwrap();
                    say!("DELETED {oldest}");
                }
            }
            if round % 32 == 21 {
                let count = admin.describe_stream(STREAM).await.unwrap().partitions.len() as u32;
                if count < MAX_PARTITIONS {
                    say!("TRYGROW {}", count + 1);
                    admin.set_partitions(STREAM, count + 1).await.unwrap();
                    say!("GROWN {}", count + 1);
                }
            }
            // Paced now and then, so each cycle adds a bounded amount for the parent to
            // check, while most kills still land inside an operation.
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
    commits: u64,
    stream_changes: u64,
}

/// What the children asked for and were told, over all cycles so far.
#[derive(Default)]
struct Ledger {
    /// Per partition, the largest commit acknowledged to a child.
    committed: BTreeMap<u32, u64>,
    /// Per partition, the largest commit a child asked for.
    commit_asked: BTreeMap<u32, u64>,
    /// Per side stream, the last change a child asked for and whether it was
    /// acknowledged: (`true` for create, `false` for delete, acknowledged).
    streams: BTreeMap<String, (bool, bool)>,
    /// The largest partition count acknowledged, and the largest asked for.
    grown: u32,
    grow_asked: u32,
}

impl Ledger {
    /// Takes one child line; returns whether it was an acknowledgement of a commit or
    /// of a stream change.
    fn note(&mut self, kind: &str, a: &str, b: Option<&str>) -> bool {
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
        match (kind, a.parse::<u32>().ok(), number(b)) {
            ("TRYCOMMIT", Some(p), Some(o)) => {
                let asked = self.commit_asked.entry(p).or_default();
                *asked = (*asked).max(o);
                false
            }
            ("COMMIT", Some(p), Some(o)) => {
                let committed = self.committed.entry(p).or_default();
                *committed = (*committed).max(o);
                true
            }
            ("TRYGROW", Some(n), None) => {
                self.grow_asked = self.grow_asked.max(n);
                false
            }
            ("GROWN", Some(n), None) => {
                self.grown = self.grown.max(n);
                true
            }
            ("TRYCREATE", _, None) => {
                self.streams.insert(a.to_string(), (true, false));
                false
            }
            ("TRYDELETE", _, None) => {
                self.streams.insert(a.to_string(), (false, false));
                false
            }
            ("CREATED" | "DELETED", _, None) => {
                self.streams.insert(a.to_string(), (kind == "CREATED", true));
                true
            }
            _ => false,
        }
    }
}

/// What reopening found.
struct Found {
    /// value → offsets, for records past the previous cycle's ends.
    values: BTreeMap<String, Vec<u64>>,
    /// Per partition, the log's end.
    ends: BTreeMap<u32, u64>,
    /// Per partition, where the group resumes.
    resumes: BTreeMap<u32, u64>,
    streams: BTreeSet<String>,
    truncated: u64,
}

/// Reopens the directory and reads every partition from `from` (its end after the
/// previous cycle), checking offsets are contiguous; finds where the group resumes
/// (a member that acknowledges nothing, so commits nothing) and which streams exist.
fn reopen_and_read(dir: &Path, from: &BTreeMap<u32, u64>) -> Found {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = NativeBackend::open(NativeConfig::at(dir)).expect("reopen always succeeds");
        let truncated: u64 = engine.recovery_report().values().map(|r| r.truncated_bytes).sum();
        for report in engine.recovery_report().values() {
            assert!(report.damage.is_none(), "a kill never damages a log: {report:?}");
        }
        let admin = engine.admin().await.unwrap();
        let streams: BTreeSet<String> = admin.list_streams().await.unwrap().into_iter().collect();
        let mut values: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut ends = from.clone();
        let mut resumes = BTreeMap::new();
        if let Ok(info) = admin.describe_stream(STREAM).await {
            let mut reader = engine.consumer(ConsumerConfig::broadcast(STREAM)).await.unwrap();
            let mut highs = BTreeMap::new();
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
                highs.insert(index, high);
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
            reader.close().await.unwrap();
            // Where the group resumes: the first offset its member is given per
            // partition, or the end where it is given nothing.
            let mut member = engine
                .consumer(ConsumerConfig::group(STREAM, GROUP))
                .await
                .unwrap();
            loop {
                let batch = member.poll(10_000, Duration::from_millis(20)).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    resumes
                        .entry(r.partition.index().unwrap())
                        .or_insert_with(|| r.offset.as_u64().unwrap());
                }
            }
            member.close().await.unwrap();
            for (p, high) in highs {
                resumes.entry(p).or_insert(high);
            }
        }
        engine.close().unwrap();
        Found {
            values,
            ends,
            resumes,
            streams,
            truncated,
        }
    })
}

/// Starts a child for `cycle`, waits until it acknowledged a send, lets it run a random
/// while and kills it; returns its lines.
fn run_child(exe: &Path, dir: &Path, cycle: u64) -> Vec<String> {
    let mut child = Command::new(exe)
        .args([
            "kill_minus_nine_loses_no_acknowledged_record",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{}|{cycle}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (first_ack, acked) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ACK ") {
                let _ = first_ack.send(());
            }
            lines.push(line);
        }
        lines
    });
    // A kill before anything was acknowledged would check nothing.
    let started = acked.recv_timeout(Duration::from_secs(60)).is_ok();
    std::thread::sleep(Duration::from_millis(fastrand::u64(..60)));
    child.kill().unwrap();
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert!(
        started,
        "cycle {cycle}: the child acknowledged nothing in 60 s: {lines:?}"
    );
    lines
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
    let mut ledger = Ledger::default();
    // Per partition, the offset up to which earlier cycles verified the log.
    let mut checked: BTreeMap<u32, u64> = BTreeMap::new();
    for cycle in 0..cycles {
        let lines = run_child(&exe, dir.path(), cycle);
        let mut acked_this_cycle = 0;
        for line in &lines {
            let mut parts = line.split_whitespace();
            let (Some(kind), Some(a)) = (parts.next(), parts.next()) else {
                continue;
            };
            let b = parts.next();
            if ledger.note(kind, a, b) {
                match kind {
                    "COMMIT" => totals.commits += 1,
                    _ => totals.stream_changes += 1,
                }
            }
            let (Ok(a), Some(Ok(b))) = (a.parse::<u64>(), b.map(str::parse::<u64>)) else {
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
                        acked_this_cycle += 1;
                        acked_all.insert(value);
                    }
                    _ => {}
                }
            }
        }
        assert!(acked_this_cycle > 0, "cycle {cycle} acknowledged nothing");
        let found = reopen_and_read(dir.path(), &checked);
        checked = found.ends.clone();
        totals.truncated_bytes += found.truncated;
        let acked: Vec<&String> = acked_all
            .iter()
            .filter(|v| v.starts_with(&format!("c{cycle}-")))
            .collect();
        for v in acked {
            if !found.values.contains_key(v) {
                totals.lost += 1;
                eprintln!("cycle {cycle}: acknowledged {v} is missing");
            }
        }
        for (v, offsets) in &found.values {
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
        check_group(cycle, seed, &ledger, &found);
        check_streams(cycle, seed, &ledger, &found);
    }
    println!(
        "kill -9: cycles {cycles} (each acknowledged something), attempted {}, acked {}, indeterminate (present, never acked) {}, lost {}, duplicated {}, truncated bytes {}, commits acknowledged {}, stream changes acknowledged {}, seed {seed}",
        totals.attempted,
        totals.acked,
        totals.indeterminate,
        totals.lost,
        totals.duplicated,
        totals.truncated_bytes,
        totals.commits,
        totals.stream_changes
    );
    assert!(totals.commits > 0, "the children committed something");
    assert!(totals.stream_changes > 0, "the children changed streams");
}

/// The group resumes between its last acknowledged commit and the log's end, and never
/// ahead of every commit asked for.
fn check_group(cycle: u64, seed: u64, ledger: &Ledger, found: &Found) {
    for (p, resume) in &found.resumes {
        let committed = ledger.committed.get(p).copied().unwrap_or(0);
        let asked = ledger.commit_asked.get(p).copied().unwrap_or(0);
        let end = found.ends.get(p).copied().unwrap_or(0);
        assert!(
            *resume >= committed,
            "cycle {cycle}, seed {seed}: partition {p} resumes at {resume}, behind its acknowledged commit {committed}"
        );
        assert!(
            *resume <= asked.min(end),
            "cycle {cycle}, seed {seed}: partition {p} resumes at {resume}, ahead of every commit asked for ({asked}) or the log's end ({end})"
        );
    }
}

/// Acknowledged creations and deletions hold; the partition count is at least the
/// last one acknowledged and at most the largest asked for.
fn check_streams(cycle: u64, seed: u64, ledger: &Ledger, found: &Found) {
    for (name, (create, acknowledged)) in &ledger.streams {
        if *acknowledged {
            assert_eq!(
                found.streams.contains(name),
                *create,
                "cycle {cycle}, seed {seed}: stream {name} was {} and acknowledged",
                if *create { "created" } else { "deleted" }
            );
        }
    }
    let count = found.ends.len() as u32;
    assert!(
        count >= ledger.grown.max(2) && count <= ledger.grow_asked.max(2),
        "cycle {cycle}, seed {seed}: {STREAM} has {count} partitions; acknowledged {}, asked {}",
        ledger.grown,
        ledger.grow_asked
    );
}
