//! The processor under SIGKILL, on any engine that outlives a process: a child process
//! runs a processor over a stream of numbered records, its handler writing down each
//! record it handles and a [`Witness`] writing down each record a successful commit
//! covered; the parent kills it at random moments (each only after the run handled
//! something) and starts it again, then lets a last run finish and stop cleanly.
//!
//! Checked, per record: none is lost (each was handled in some run); none that a
//! commit covered is handled again in a later run, so the records handled twice are
//! only records no commit of a killed run covered; each record is always at the same
//! place; and after the clean stop a new member of the group reads nothing before a
//! record sent afterwards.
//!
//! The child is the calling test binary run again with [`CHILD`] set: call
//! [`processor_killed_and_restarted_loses_nothing`] from a test of that name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_core::{Backend, ConsumerConfig, Layered, ProducerConfig, Record, Result, StreamSpec};
use tributary_process::{HandlerError, Message, Processor};

use crate::support::drain;
use crate::witness::{Seen, Witness};

/// The environment variable that makes the test binary the child.
pub const CHILD: &str = "TRIBUTARY_PROCESSOR_CRASH_CHILD";
/// The test's name: the child runs only it.
const TEST: &str = "processor_killed_and_restarted_loses_nothing";
const RECORDS: usize = 3_000;
const KEYS: usize = 100;
const PARTITIONS: u32 = 4;
const KILLS: usize = 3;
/// How long any one run may take to make the progress the parent waits for.
const PATIENCE: Duration = Duration::from_secs(120);

/// Connects to the engine under test; `scratch` is a directory the parent made,
/// the same in the parent and every child (where a native engine keeps its data).
pub type Connect = fn(scratch: &Path) -> Result<Arc<dyn Backend>>;

/// Runs the campaign (in the parent) or one processor run (in a child). Call it from
/// a `#[test]` named `processor_killed_and_restarted_loses_nothing`.
///
/// # Panics
/// When a check fails, or the engine fails.
pub fn processor_killed_and_restarted_loses_nothing(connect: Connect) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match std::env::var(CHILD) {
        Ok(spec) => runtime.block_on(child(&spec, connect)),
        Err(_) => parent(&runtime, connect),
    }
}

/// What the parent tells a child: `scratch|stream|group|log`.
struct Spec {
    scratch: PathBuf,
    stream: String,
    group: String,
    log: PathBuf,
}

impl Spec {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.scratch.display(),
            self.stream,
            self.group,
            self.log.display()
        )
    }

    fn decode(spec: &str) -> Self {
        let parts: Vec<&str> = spec.split('|').collect();
        assert_eq!(parts.len(), 4, "a malformed {CHILD}: {spec:?}");
        Self {
            scratch: parts[0].into(),
            stream: parts[1].into(),
            group: parts[2].into(),
            log: parts[3].into(),
        }
    }
}

fn write_line(log: &Mutex<File>, line: String) {
    // One write per line: with O_APPEND the lines of concurrent writers never mix,
    // and what a write put in the page cache survives the kill.
    let mut file = log.lock().unwrap_or_else(PoisonError::into_inner);
    file.write_all(line.as_bytes())
        .expect("the run's log is writable");
}

/// One run: the processor until stdin closes, then a clean stop.
async fn child(spec: &str, connect: Connect) {
    let spec = Spec::decode(spec);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .expect("the run's log opens");
    let log = Arc::new(Mutex::new(log));
    let witness = {
        let log = log.clone();
        Witness::observed(move |seen| {
            if let Seen::Committed((partition, offset)) = seen {
                write_line(&log, format!("C {partition} {offset}\n"));
            }
        })
    };
    let engine = connect(&spec.scratch).expect("the child connects");
    let watched: Arc<dyn Backend> = Arc::new(Layered::new(engine, witness));
    let running = {
        let log = log.clone();
        Processor::builder(&watched, ConsumerConfig::group(&spec.stream, &spec.group))
            .concurrency(8)
            .max_buffered(200, 1 << 20)
            .commit_every(Duration::from_millis(50), 100)
            .start(move |m: Message<Bytes>| {
                let log = log.clone();
                async move {
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(500..3_000))).await;
                    let value = String::from_utf8(m.value.to_vec())
                        .map_err(|e| HandlerError::permanent(format!("not text: {e}")))?;
                    write_line(&log, format!("H {} {} {value}\n", m.partition, m.offset));
                    Ok(())
                }
            })
            .await
            .expect("the processor starts")
    };
    // The parent closes stdin to ask for the clean stop.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .expect("stdin is read to its end");
    let summary = running.stop().await.expect("the last run stops cleanly");
    eprintln!("stopped: {summary:?}");
}

/// What one run wrote down.
#[derive(Debug, Default)]
struct Run {
    /// Each record handled, with its place.
    handled: Vec<((String, String), usize)>,
    /// The places successful commits covered.
    committed: BTreeSet<(String, String)>,
}

fn read_run(log: &Path) -> Run {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut run = Run::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["H", partition, offset, value] => {
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a record sent: {line:?}"));
                assert!(value < RECORDS, "not a record sent: {line:?}");
                run.handled.push((((*partition).into(), (*offset).into()), value));
            }
            ["C", partition, offset] => {
                run.committed.insert(((*partition).into(), (*offset).into()));
            }
            // A kill may cut the last line short.
            _ => {}
        }
    }
    run
}

fn spawn(spec: &Spec, stderr: &Path) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, spec.encode())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(File::create(stderr).expect("the child's stderr file"))
        .spawn()
        .expect("the child starts")
}

/// Waits until `done` holds of the run's log, failing if the child exits first.
fn wait_for(child: &mut Child, log: &Path, stderr: &Path, what: &str, done: impl Fn(&Run) -> bool) {
    let start = Instant::now();
    loop {
        if done(&read_run(log)) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let errors = std::fs::read_to_string(stderr).unwrap_or_default();
            panic!("the child exited ({status}) before {what}:\n{errors}");
        }
        assert!(start.elapsed() < PATIENCE, "not within {PATIENCE:?}: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn parent(runtime: &tokio::runtime::Runtime, connect: Connect) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let run_id = format!("{:x}{:04x}", nanos & 0xffff_ffff_ffff, fastrand::u16(..));
    let scratch = std::env::temp_dir().join(format!("tributary-processor-crash-{run_id}"));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let stream = format!("processor-crash-{run_id}");
    let group = format!("processor-crash-g-{run_id}");
    runtime
        .block_on(async {
            let engine = connect(&scratch).expect("the parent connects");
            let spec = StreamSpec::new(&stream).with_partitions(PARTITIONS);
            engine.admin().await?.create_stream(&spec).await?;
            let producer = engine.producer(ProducerConfig::default()).await?;
            for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(500) {
                let records = chunk
                    .iter()
                    .map(|i| Record::new(i.to_string()).with_key(format!("k{}", i % KEYS)))
                    .collect();
                producer.send(&stream, records).await?;
            }
            producer.close().await
        })
        .expect("the records are sent");
    // (A native engine's directory is free again once the parent's handles are gone.)
    let mut runs = Vec::new();
    for cycle in 0..=KILLS {
        let spec = Spec {
            scratch: scratch.clone(),
            stream: stream.clone(),
            group: group.clone(),
            log: scratch.join(format!("run-{cycle}.log")),
        };
        let stderr = scratch.join(format!("run-{cycle}.stderr"));
        let mut child = spawn(&spec, &stderr);
        if cycle < KILLS {
            let target = fastrand::usize(100..400);
            wait_for(&mut child, &spec.log, &stderr, "the run handled records", |run| {
                run.handled.len() >= target
            });
            std::thread::sleep(Duration::from_millis(fastrand::u64(..20)));
            child.kill().expect("SIGKILL");
            child.wait().expect("the killed child is reaped");
        } else {
            let before: BTreeSet<usize> = handled_values(&runs);
            wait_for(&mut child, &spec.log, &stderr, "every record handled", |run| {
                let mut all = before.clone();
                all.extend(run.handled.iter().map(|(_, v)| *v));
                all.len() == RECORDS
            });
            drop(child.stdin.take());
            let status = child.wait().expect("the last child is reaped");
            let errors = std::fs::read_to_string(&stderr).unwrap_or_default();
            assert!(status.success(), "the last run did not stop cleanly:\n{errors}");
        }
        runs.push(read_run(&spec.log));
    }
    check(&runs);
    runtime
        .block_on(nothing_left(connect, &scratch, &stream, &group))
        .expect("a new member reads the group");
    let _ = std::fs::remove_dir_all(&scratch);
}

fn handled_values(runs: &[Run]) -> BTreeSet<usize> {
    runs.iter()
        .flat_map(|run| run.handled.iter().map(|(_, v)| *v))
        .collect()
}

fn check(runs: &[Run]) {
    let handled = handled_values(runs);
    let lost: Vec<usize> = (0..RECORDS).filter(|v| !handled.contains(v)).collect();
    assert!(lost.is_empty(), "records never handled: {lost:?}");
    let mut places: BTreeMap<usize, &(String, String)> = BTreeMap::new();
    for (place, value) in runs.iter().flat_map(|run| &run.handled) {
        let first = places.entry(*value).or_insert(place);
        assert_eq!(*first, place, "record {value} at two places");
    }
    let mut again = 0;
    for (k, run) in runs.iter().enumerate() {
        let later: BTreeSet<&(String, String)> = runs[k + 1..]
            .iter()
            .flat_map(|r| r.handled.iter().map(|(place, _)| place))
            .collect();
        let recommitted: Vec<_> = run.committed.iter().filter(|p| later.contains(p)).collect();
        assert!(
            recommitted.is_empty(),
            "run {k}: records its commits covered were handled again later: {recommitted:?}"
        );
        let uncommitted = run
            .handled
            .iter()
            .filter(|(place, _)| !run.committed.contains(place))
            .count();
        let handled_again = run
            .handled
            .iter()
            .filter(|(place, _)| later.contains(place))
            .count();
        eprintln!(
            "run {k}: handled {}, committed {}, handled but not committed {uncommitted}, handled again later {handled_again}",
            run.handled.len(),
            run.committed.len()
        );
        again += handled_again;
    }
    let last = runs.last().expect("at least one run");
    assert!(
        !last.committed.is_empty(),
        "the last run's commits were seen (else the checks above check nothing)"
    );
    eprintln!(
        "{RECORDS} records, {again} handled again after a kill, over {} runs",
        runs.len()
    );
}

/// After the clean stop, a new member of the group reads only a record sent after it.
async fn nothing_left(connect: Connect, scratch: &Path, stream: &str, group: &str) -> Result<()> {
    let engine = connect(scratch)?;
    let mut member = engine.consumer(ConsumerConfig::group(stream, group)).await?;
    let producer = engine.producer(ProducerConfig::default()).await?;
    producer.send(stream, vec![Record::new("sentinel")]).await?;
    producer.close().await?;
    let got = drain(&mut *member, 1, PATIENCE).await?;
    let values: Vec<Bytes> = got.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        values,
        [Bytes::from("sentinel")],
        "what the group had not committed"
    );
    member.close().await
}
