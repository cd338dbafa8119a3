//! A consumer group under fire, against the real broker (TRIBUTARY_TEST_KAFKA): three
//! member processes over six partitions while a keyed producer runs; for
//! `TRIBUTARY_GROUP_CHAOS_SECS` (default 60) a random member is killed with SIGKILL
//! every few seconds and replaced. Then members are only ever closed cleanly, and the
//! group is drained.
//!
//! Checked: no acknowledged record is lost; within one member's ownership of a
//! partition each key's records arrive in order; every duplicate is a record a killed
//! member had received after its last successful commit (and the total is reported);
//! once members only leave cleanly there are no duplicates at all, and a new member
//! after a clean shutdown receives nothing already processed.
//!
//! Members are this test binary run again with `TRIBUTARY_GROUP_CHAOS_MEMBER` set;
//! they report on stderr and close cleanly when their stdin closes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_core::{Backend, ConsumerConfig, Producer, ProducerConfig, Record, StreamSpec};
use tributary_kafka::{KafkaBackend, KafkaConfig};

const MEMBER: &str = "TRIBUTARY_GROUP_CHAOS_MEMBER";
const TEST_NAME: &str = "group_members_killed_at_random_lose_nothing";
const PARTITIONS: u32 = 6;
const KEYS: u64 = 24;

fn config(bootstrap: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap);
    config.session_timeout = Duration::from_secs(6);
    config.metadata_refresh = Duration::from_secs(1);
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A member process: read, report, acknowledge, commit; close cleanly at stdin EOF.
fn member(spec: &str) {
    let mut parts = spec.split('|');
    let (bootstrap, topic, group) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    runtime().block_on(async {
        let backend = KafkaBackend::new(config(bootstrap)).unwrap();
        let mut consumer = backend
            .consumer(ConsumerConfig::group(topic, group))
            .await
            .unwrap();
        let mut err = std::io::stderr().lock();
        while !stop.load(Ordering::SeqCst) {
            let batch = consumer.poll(200, Duration::from_millis(200)).await.unwrap();
            for r in &batch {
                // One write per line: a kill cannot leave half a line behind.
                let line = format!(
                    "GOT {} {} {}\n",
                    r.partition,
                    r.offset,
                    String::from_utf8_lossy(&r.value)
                );
                err.write_all(line.as_bytes()).unwrap();
                consumer.ack(&r.partition, &r.offset).unwrap();
            }
            err.flush().unwrap();
            if !batch.is_empty() {
                match consumer.commit().await {
                    Ok(()) => err.write_all(b"COMMITTED\n").unwrap(),
                    // A rebalance raced the commit: the revoke commits these, or they are redelivered.
                    Err(e) => err.write_all(format!("COMMIT-FAILED {e}\n").as_bytes()).unwrap(),
                }
                err.flush().unwrap();
            }
        }
        consumer.close().await.unwrap();
        err.write_all(b"CLOSED\n").unwrap();
    });
}

/// One member process and what it reported.
struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    killed: bool,
}

fn spawn_member(spec: &str) -> Session {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(MEMBER, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    Session {
        stdin: child.stdin.take(),
        child,
        lines,
        reader: Some(reader),
        killed: false,
    }
}

impl Session {
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.killed = true;
        self.reader.take().unwrap().join().unwrap();
    }

    fn close(&mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        let tail = &lines[lines.len().saturating_sub(12)..];
        assert!(
            status.success(),
            "a member closing cleanly failed: {status}: {tail:#?}"
        );
        assert_eq!(lines.last().map(String::as_str), Some("CLOSED"));
    }
}

/// One delivery to one member session.
#[derive(Clone, Debug)]
struct Got {
    session: usize,
    partition: u32,
    offset: u64,
    value: String,
    /// Received after the session's last successful commit (only meaningful for killed sessions).
    uncommitted: bool,
}

fn deliveries(sessions: &[Session]) -> Vec<Got> {
    let mut out = Vec::new();
    for (id, s) in sessions.iter().enumerate() {
        let lines = s.lines.lock().unwrap();
        let last_commit = lines.iter().rposition(|l| l == "COMMITTED");
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.strip_prefix("GOT ") else {
                continue;
            };
            let mut f = rest.splitn(3, ' ');
            let (Some(partition), Some(offset), Some(value)) = (f.next(), f.next(), f.next()) else {
                panic!("session {id}: malformed line {line:?}");
            };
            out.push(Got {
                session: id,
                partition: partition.parse().unwrap(),
                offset: offset.parse().unwrap(),
                value: value.to_string(),
                uncommitted: last_commit.is_none_or(|c| i > c),
            });
        }
    }
    out
}

async fn produce(
    producer: Box<dyn Producer>,
    topic: String,
    stop: Arc<AtomicBool>,
) -> HashMap<String, (u32, u64)> {
    let mut acked = HashMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let records: Vec<Record> = (0..KEYS)
            .map(|_| {
                seq += 1;
                let key = format!("k{}", seq % KEYS);
                Record::new(format!("{key}:{seq:09}")).with_key(key)
            })
            .collect();
        let values: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
            .collect();
        let deliveries = producer.send(&topic, records).await.unwrap();
        for (v, d) in values.into_iter().zip(deliveries) {
            acked.insert(v, (d.partition.index().unwrap(), d.offset.as_u64().unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    producer.close().await.unwrap();
    acked
}

#[test]
fn group_members_killed_at_random_lose_nothing() {
    if let Ok(spec) = std::env::var(MEMBER) {
        member(&spec);
        return;
    }
    let Some(bootstrap) =
        tributary_conformance::server_from_env("TRIBUTARY_TEST_KAFKA", "scripts/kafka start")
    else {
        return;
    };
    let chaos = Duration::from_secs(
        std::env::var("TRIBUTARY_GROUP_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let seed: u64 = std::env::var("TRIBUTARY_GROUP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (TRIBUTARY_GROUP_CHAOS_SEED)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let rt = runtime();
    let backend = KafkaBackend::new(config(&bootstrap)).unwrap();
    let run = format!("{:x}", fastrand::u64(..));
    let topic = format!("group-chaos-{run}");
    let group = format!("group-chaos-{run}");
    rt.block_on(async {
        let admin = backend.admin().await.unwrap();
        admin
            .create_stream(&StreamSpec::new(&topic).with_partitions(PARTITIONS))
            .await
            .unwrap();
    });
    let spec = format!("{bootstrap}|{topic}|{group}");
    let stop = Arc::new(AtomicBool::new(false));
    let producer = rt.block_on(backend.producer(ProducerConfig::default())).unwrap();
    let producing = rt.spawn(produce(producer, topic.clone(), stop.clone()));

    let mut sessions: Vec<Session> = Vec::new();
    let mut live: Vec<usize> = Vec::new();
    for _ in 0..3 {
        live.push(sessions.len());
        sessions.push(spawn_member(&spec));
    }

    // Phase 1: kill -9 a random member every few seconds and replace it.
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < chaos {
        std::thread::sleep(Duration::from_millis(rng.u64(2_000..8_000)));
        let victim = live.remove(rng.usize(..live.len()));
        sessions[victim].kill();
        kills += 1;
        live.push(sessions.len());
        sessions.push(spawn_member(&spec));
    }
    let chaos_deliveries = deliveries(&sessions).len();

    // Phase 2: membership changes only by clean close; the producer keeps going.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(4));
        let leaving = live.remove(rng.usize(..live.len()));
        sessions[leaving].close();
        live.push(sessions.len());
        sessions.push(spawn_member(&spec));
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let acked = rt.block_on(producing).unwrap();

    // Drain: wait until everything acknowledged was seen, then close every member.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen: HashSet<String> = deliveries(&sessions).into_iter().map(|g| g.value).collect();
        let missing = acked.keys().filter(|v| !seen.contains(*v)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged records never delivered"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for id in live.drain(..) {
        sessions[id].close();
    }

    // After a clean shutdown, a new member gets only what was produced afterwards.
    rt.block_on(async {
        let producer = backend.producer(ProducerConfig::default()).await.unwrap();
        producer
            .send(&topic, vec![Record::new("sentinel").with_key("k0")])
            .await
            .unwrap();
        producer.close().await.unwrap();
        let mut after = backend
            .consumer(ConsumerConfig::group(&topic, &group))
            .await
            .unwrap();
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(30);
        while got.is_empty() && Instant::now() < until {
            got = after.poll(100, Duration::from_millis(500)).await.unwrap();
        }
        let texts: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        assert_eq!(
            texts,
            ["sentinel"],
            "after a clean shutdown nothing processed comes again"
        );
        after.close().await.unwrap();
    });

    // The verdict.
    let all = deliveries(&sessions);
    let mut by_value: HashMap<&str, Vec<&Got>> = HashMap::new();
    for g in &all {
        by_value.entry(&g.value).or_default().push(g);
    }
    let lost: Vec<&String> = acked
        .keys()
        .filter(|v| !by_value.contains_key(v.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "lost {} acknowledged records, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let mut duplicates = 0;
    for (value, gots) in &by_value {
        let (partition, offset) = acked[*value];
        for g in gots {
            assert_eq!(
                (g.partition, g.offset),
                (partition, offset),
                "{value} read where it was not written"
            );
        }
        duplicates += gots.len() - 1;
        // A record read more than once must have been read by a member that was then
        // killed before it committed: never after clean closes and rebalances.
        // Each extra delivery needs its own crash: all deliveries but the last must be
        // to members killed before committing them.
        let explained = gots
            .iter()
            .filter(|g| sessions[g.session].killed && g.uncommitted)
            .count();
        assert!(
            explained + 1 >= gots.len(),
            "{value} was delivered again without a crash to explain it: {gots:?}"
        );
    }
    // Per key, order holds within each member's ownership of a partition.
    let mut last: BTreeMap<(usize, u32, String), String> = BTreeMap::new();
    for g in &all {
        let (key, seq) = g.value.split_once(':').unwrap();
        if let Some(prev) = last.insert((g.session, g.partition, key.to_string()), seq.to_string()) {
            assert!(
                prev.as_str() < seq,
                "session {} partition {} key {key}: {prev} then {seq}",
                g.session,
                g.partition
            );
        }
    }
    eprintln!(
        "group chaos: {} acknowledged, {} deliveries ({chaos_deliveries} during {:?} of chaos), {kills} kills, \
         {} member sessions, {duplicates} duplicates (each after a kill before a commit)",
        acked.len(),
        all.len(),
        chaos,
        sessions.len()
    );
    rt.block_on(async {
        backend
            .admin()
            .await
            .unwrap()
            .delete_stream(&topic)
            .await
            .unwrap()
    });
}
