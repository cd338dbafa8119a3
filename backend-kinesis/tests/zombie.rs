//! A frozen group member (SIGSTOP past its lease failover), with leases on dynalite:
//! while it is frozen another member takes its shards; thawed, its commit of records it
//! had acknowledged is refused (`NotAssigned`), it delivers nothing of a shard it no
//! longer holds, and no shard is held by both members committing at once (each
//! member's hold of each shard, from its first delivery to its last successful commit,
//! is logged in wall-clock milliseconds and the intervals are checked).
//!
//! The member is this test binary run again with `TRIBUTARY_ZOMBIE_CHILD` set; it
//! reports on stderr and waits for `RESUME` on stdin. Needs TRIBUTARY_TEST_KINESIS and
//! TRIBUTARY_TEST_DYNAMODB (skipped without them, except under CI=true).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tributary_core::{Admin as _, Consumer, ConsumerConfig, ConsumerExt as _, ErrorKind, Record, StreamSpec};
use tributary_kinesis::{KinesisBackend, LeaseStoreKind};

const CHILD: &str = "TRIBUTARY_ZOMBIE_CHILD";
const SHARDS: u32 = 2;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn backend() -> Option<KinesisBackend> {
    let endpoint = common::endpoint()?;
    common::dynamodb_endpoint()?;
    let config = common::local_config(&endpoint);
    assert_eq!(config.leases, LeaseStoreKind::Dynamodb);
    Some(common::backend(config).expect("backend"))
}

/// The member's lines up to and including the first starting with `prefix`.
///
/// # Panics
/// If none comes within `within`.
fn wait_for(lines: &mpsc::Receiver<String>, prefix: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = line.starts_with(prefix);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no {prefix} from the member within {within:?}: {seen:?}"),
        }
    }
}

/// A hold of one shard by one member: first delivery and last successful commit, in
/// wall-clock milliseconds.
#[derive(Clone, Debug)]
struct Hold {
    member: &'static str,
    shard: String,
    first: u128,
    last_commit: Option<u128>,
}

/// Polls once, acknowledging and (when `commit`) committing what arrived; tracks holds.
/// Returns the batch.
async fn step(
    member: &mut Box<dyn Consumer>,
    name: &'static str,
    commit: bool,
    holds: &mut BTreeMap<String, Hold>,
    ended: &mut Vec<Hold>,
) -> Vec<tributary_core::Received> {
    let batch = member.poll(100, Duration::from_millis(100)).await.expect("poll");
    let at = now_ms();
    for r in &batch {
        holds.entry(r.partition.to_string()).or_insert_with(|| Hold {
            member: name,
            shard: r.partition.to_string(),
            first: at,
            last_commit: None,
        });
    }
    let assigned: BTreeSet<String> = member.assignment().iter().map(ToString::to_string).collect();
    let gone: Vec<String> = holds.keys().filter(|s| !assigned.contains(*s)).cloned().collect();
    for s in gone {
        ended.extend(holds.remove(&s));
    }
    if batch.is_empty() {
        return batch;
    }
    match member.ack_all(&batch) {
        Err(e) if e.kind() == ErrorKind::NotAssigned => return batch,
        other => other.expect("ack"),
    }
    if commit && member.commit().await.is_ok() {
        let done = now_ms();
        for r in &batch {
            if let Some(h) = holds.get_mut(&r.partition.to_string()) {
                h.last_commit = Some(done);
            }
        }
    }
    batch
}

/// The member that will be frozen: reads and commits, acknowledges one more batch
/// without committing, reports `ACKED`, and waits for `RESUME`; then commits (reporting
/// the outcome), polls for 8 s reporting deliveries with its assignment, and its holds.
async fn child(stream: &str, group: &str) {
    {
        let backend = backend().expect("servers");
        let mut member = tributary_core::Backend::consumer(&backend, ConsumerConfig::group(stream, group))
            .await
            .expect("member");
        let (mut holds, mut ended) = (BTreeMap::new(), Vec::new());
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while read < 40 || member.assignment().len() < SHARDS as usize {
            assert!(Instant::now() < deadline, "the child read {read} records");
            read += step(&mut member, "zombie", true, &mut holds, &mut ended)
                .await
                .len();
        }
        let mut acked = Vec::new();
        while acked.is_empty() {
            assert!(Instant::now() < deadline, "nothing more to acknowledge");
            acked = step(&mut member, "zombie", false, &mut holds, &mut ended).await;
        }
        eprintln!("ACKED {}", acked.len());
        let (resume_tx, resume) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if line.is_ok_and(|l| l == "RESUME") {
                    let _ = resume_tx.send(());
                    return;
                }
            }
        });
        tokio::task::spawn_blocking(move || resume.recv().expect("RESUME"))
            .await
            .expect("resume");
        // Whatever it held ended while it was frozen (the parent checked it took all).
        ended.extend(std::mem::take(&mut holds).into_values());
        match member.commit().await {
            Ok(()) => eprintln!("COMMIT ok"),
            Err(e) => eprintln!("COMMIT err {:?} {e}", e.kind()),
        }
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let batch = step(&mut member, "zombie", true, &mut holds, &mut ended).await;
            let owned: Vec<String> = member.assignment().iter().map(ToString::to_string).collect();
            for r in &batch {
                eprintln!("DELIVER {} {} owned={}", r.partition, r.offset, owned.join(","));
            }
        }
        member.close().await.expect("close");
        ended.extend(holds.into_values());
        for h in ended {
            eprintln!(
                "HOLD {} {} {}",
                h.shard,
                h.first,
                h.last_commit.map_or("-".to_string(), |c| c.to_string())
            );
        }
        eprintln!("DONE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_is_fenced_when_it_thaws() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (stream, group) = spec.split_once('|').expect("stream|group");
        child(stream, group).await;
        return;
    }
    let Some(backend) = backend() else { return };
    let stream = format!("zombie-{:08x}", fastrand::u32(..));
    let group = format!("{stream}-g");
    backend
        .kinesis_admin()
        .create_stream(&StreamSpec::new(&stream).with_partitions(SHARDS))
        .await
        .expect("create");
    let producer = backend.kinesis_producer();
    let records = |from: usize| -> Vec<Record> {
        (from..from + 200)
            .map(|i| Record::new(format!("v{i}")).with_key(format!("k{}", i % 20)))
            .collect()
    };
    tributary_core::Producer::send(&producer, &stream, records(0))
        .await
        .expect("send");

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "a_frozen_member_is_fenced_when_it_thaws",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, format!("{stream}|{group}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child");
    let pid = child.id().to_string();
    let stderr = child.stderr.take().expect("stderr");
    let (line_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for(&lines, "ACKED", Duration::from_secs(90));

    // Frozen: its lease keeper stops too. Another member takes both shards.
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().expect("kill");
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let frozen_at = Instant::now();
    let mut survivor = tributary_core::Backend::consumer(&backend, ConsumerConfig::group(&stream, &group))
        .await
        .expect("survivor");
    let (mut holds, mut ended) = (BTreeMap::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while survivor.assignment().len() < SHARDS as usize || frozen_at.elapsed() < common::FAILOVER * 2 {
        assert!(
            Instant::now() < deadline,
            "the survivor holds {:?}",
            survivor.assignment()
        );
        step(&mut survivor, "survivor", true, &mut holds, &mut ended).await;
    }
    tributary_core::Producer::send(&producer, &stream, records(200))
        .await
        .expect("send");
    signal("-CONT");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"RESUME\n")
        .expect("resume");
    // Both run on while the thawed member reports.
    let (report_tx, report) = mpsc::channel();
    std::thread::spawn(move || report_tx.send(wait_for(&lines, "DONE", Duration::from_secs(60))));
    let report = loop {
        step(&mut survivor, "survivor", true, &mut holds, &mut ended).await;
        if let Ok(report) = report.try_recv() {
            break report;
        }
    };
    let status = child.wait().expect("child exit");
    assert!(status.success(), "the member failed: {report:?}");
    survivor.close().await.expect("close");
    ended.extend(holds.into_values());

    let commit = report
        .iter()
        .find(|l| l.starts_with("COMMIT"))
        .expect("a commit outcome");
    assert!(
        commit.starts_with("COMMIT err NotAssigned"),
        "the thawed member's commit was not refused as NotAssigned: {commit}"
    );
    let mut delivered_after = 0;
    for line in report.iter().filter(|l| l.starts_with("DELIVER ")) {
        let parts: Vec<&str> = line.split(' ').collect();
        let owned = parts[3].trim_start_matches("owned=");
        assert!(
            owned.split(',').any(|s| s == parts[1]),
            "the thawed member delivered a record of a shard it does not hold: {line}"
        );
        delivered_after += 1;
    }
    for line in report.iter().filter(|l| l.starts_with("HOLD ")) {
        let parts: Vec<&str> = line.split(' ').collect();
        ended.push(Hold {
            member: "zombie",
            shard: parts[1].to_string(),
            first: parts[2].parse().expect("ms"),
            last_commit: parts[3].parse().ok(),
        });
    }
    let committing: Vec<&Hold> = ended.iter().filter(|h| h.last_commit.is_some()).collect();
    for (i, a) in committing.iter().enumerate() {
        for b in &committing[i + 1..] {
            if a.shard != b.shard || a.member == b.member {
                continue;
            }
            let (Some(a_end), Some(b_end)) = (a.last_commit, b.last_commit) else {
                continue;
            };
            assert!(
                a_end <= b.first || b_end <= a.first,
                "shard {}: {a:?} and {b:?} overlap, both committing",
                a.shard
            );
        }
    }
    println!(
        "kinesis zombie: frozen {:?}, its commit: {commit}; {delivered_after} records delivered to it after thawing, all of shards it held; {} holds checked",
        common::FAILOVER * 2,
        committing.len()
    );
}
