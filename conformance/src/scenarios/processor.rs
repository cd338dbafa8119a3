//! The processor (`tributary-process`) on the engine under test: per-key order under
//! concurrency, retries and the dead-letter stream on another engine, backpressure,
//! shutdown, decode failures, members joining and leaving with work in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_core::{
    Backend, ConsumerConfig, ConsumerExt, ErrorKind, Layered, MemoryBackend, ProducerConfig, Record, Result,
    StreamSpec,
};
use tributary_process::{
    HandlerError, Json, Message, Ordering, Processor, Retry, Running, dead_letter_headers,
};

use crate::harness::Outcome;
use crate::support::{Ctx, drain, texts};
use crate::witness::Witness;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Why a scenario that needs a consumer group skips.
const NO_GROUPS: &str = "capability `consumer_groups` is false";

/// A fresh stream of `partitions` and a fresh group name; `None` where the engine has
/// no consumer groups (a processor needs one).
async fn stream_and_group(ctx: &Ctx, partitions: u32) -> Result<Option<(String, String)>> {
    if !ctx.caps.consumer_groups {
        return Ok(None);
    }
    Ok(Some((ctx.stream(partitions).await?, ctx.fresh_name("g"))))
}

/// Another engine, with a stream `dlq` for dead letters.
async fn dead_letter_engine() -> Result<Arc<dyn Backend>> {
    let dead: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
    dead.admin().await?.create_stream(&StreamSpec::new("dlq")).await?;
    Ok(dead)
}

/// Waits until `done` holds, failing the scenario after `within`.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "never happened within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The longest a processor scenario waits for anything: the engine's settle time,
/// several times over (a processor joins, rebalances and commits more than once).
fn patience(ctx: &Ctx) -> Duration {
    ctx.timing.settle * 3
}

/// Checks what a fresh member of `group` reads first: exactly `expected` (the records
/// the group has not committed), then nothing before a sentinel sent afterwards.
async fn expect_uncommitted(ctx: &Ctx, stream: &str, group: &str, expected: &[&str]) -> Result<()> {
    let mut member = ctx.member(stream, group).await?;
    let got = drain(&mut *member, expected.len(), ctx.timing.settle).await?;
    assert_eq!(texts(&got), expected, "what the group had not committed");
    member.ack_all(&got)?;
    ctx.expect_nothing_before_sentinel(&mut *member, stream).await?;
    member.close().await
}

/// Sends `records` in one batch and returns the deliveries.
async fn produce(ctx: &Ctx, stream: &str, records: Vec<Record>) -> Result<Vec<tributary_core::Delivery>> {
    let producer = ctx.producer().await?;
    let deliveries = ctx.send(&*producer, stream, records).await?;
    producer.close().await?;
    Ok(deliveries)
}

/// Stops `running` within the scenario's patience.
async fn stop(ctx: &Ctx, running: Running) -> Result<tributary_process::Summary> {
    tokio::time::timeout(patience(ctx), running.stop())
        .await
        .expect("the processor stops within the scenario's patience")
}

/// A delay of up to 2 ms derived from the record, so runs vary across records.
fn delay_of(value: &Bytes) -> Duration {
    let seed = value
        .iter()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
    Duration::from_micros(seed % 2_000)
}

/// 32 handlers with random delays: every record handled once, per key in offset
/// order, never two records of a key at once; everything committed at shutdown.
pub async fn processor_keeps_key_order_under_concurrency(ctx: Ctx) -> Result<Outcome> {
    const KEYS: usize = 40;
    const RECORDS: usize = 1_200;
    let Some((stream, group)) = stream_and_group(&ctx, 4).await? else {
        return ctx.skip(NO_GROUPS);
    };
    let records = (0..RECORDS)
        .map(|i| Record::new(format!("{i}")).with_key(format!("k{}", i % KEYS)))
        .collect();
    produce(&ctx, &stream, records).await?;
    let running: Arc<Mutex<HashSet<Bytes>>> = Arc::default();
    let handled: Arc<Mutex<HashMap<Bytes, Vec<usize>>>> = Arc::default();
    let overlaps = Arc::new(Mutex::new(0usize));
    let processor = {
        let (running, handled, overlaps) = (running.clone(), handled.clone(), overlaps.clone());
        Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
            .concurrency(32)
            .start(move |m: Message<Bytes>| {
                let (running, handled, overlaps) = (running.clone(), handled.clone(), overlaps.clone());
                async move {
                    let key = m.key.clone().unwrap_or_default();
                    if !lock(&running).insert(key.clone()) {
                        *lock(&overlaps) += 1;
                    }
                    tokio::time::sleep(delay_of(&m.value)).await;
                    lock(&running).remove(&key);
                    let value = text(&m.value)
                        .parse()
                        .map_err(|e| HandlerError::permanent(format!("not a number: {e}")))?;
                    lock(&handled).entry(key).or_default().push(value);
                    Ok(())
                }
            })
            .await?
    };
    eventually("every record handled", patience(&ctx), || {
        processor.stats().handled >= RECORDS as u64
    })
    .await;
    let summary = stop(&ctx, processor).await?;
    assert_eq!(summary.handled, RECORDS as u64, "each record handled once");
    assert_eq!(*lock(&overlaps), 0, "two records of a key were handled at once");
    let handled = lock(&handled).clone();
    assert_eq!(handled.len(), KEYS);
    for (key, values) in &handled {
        let expected: Vec<usize> = (0..RECORDS)
            .filter(|i| format!("k{}", i % KEYS) == text(key))
            .collect();
        assert_eq!(values, &expected, "key {} out of order or incomplete", text(key));
    }
    expect_uncommitted(&ctx, &stream, &group, &[]).await?;
    Ok(Outcome::Passed)
}

/// A record that always fails: after its retries it is in the dead-letter stream on
/// another engine, with the source's key, headers and every dead-letter header; its
/// key waited for it, and the commits pass it.
pub async fn processor_dead_letters_a_poison_record_on_another_engine(ctx: Ctx) -> Result<Outcome> {
    let Some((stream, group)) = stream_and_group(&ctx, 1).await? else {
        return ctx.skip(NO_GROUPS);
    };
    let dead = dead_letter_engine().await?;
    let records = ["a", "b", "poison", "c", "d"]
        .iter()
        .map(|v| {
            let record = Record::new(*v).with_key("k");
            if ctx.caps.headers {
                record.with_header("trace", "t")
            } else {
                record
            }
        })
        .collect();
    let deliveries = produce(&ctx, &stream, records).await?;
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let processor = {
        let seen = seen.clone();
        Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
            .retry(Retry::new(3, Duration::from_millis(1), Duration::from_millis(5)))
            .dead_letter(&dead, "dlq")
            .commit_every(Duration::from_millis(20), 1)
            .start(move |m: Message<Bytes>| {
                let seen = seen.clone();
                async move {
                    lock(&seen).push((text(&m.value), m.attempt));
                    if m.value == "poison" {
                        return Err(HandlerError::retryable("it never works"));
                    }
                    Ok(())
                }
            })
            .await?
    };
    eventually("all five finished", patience(&ctx), || {
        let s = processor.stats();
        s.handled == 4 && s.dead_lettered == 1
    })
    .await;
    let summary = stop(&ctx, processor).await?;
    assert_eq!((summary.handled, summary.dead_lettered), (4, 1));
    let expected: Vec<(String, u32)> = [
        ("a", 1),
        ("b", 1),
        ("poison", 1),
        ("poison", 2),
        ("poison", 3),
        ("c", 1),
        ("d", 1),
    ]
    .iter()
    .map(|(v, a)| (v.to_string(), *a))
    .collect();
    assert_eq!(*lock(&seen), expected, "three runs, and its key waited for them");
    let mut reader = dead.consumer(ConsumerConfig::broadcast("dlq")).await?;
    let copies = drain(&mut *reader, 2, ctx.timing.quiet).await?;
    assert_eq!(copies.len(), 1, "one dead-letter copy");
    let copy = &copies[0];
    assert_eq!(copy.value, "poison");
    assert_eq!(copy.key.as_deref(), Some(&b"k"[..]));
    let header = |name: &str| copy.headers.get(name).map(text);
    if ctx.caps.headers {
        assert_eq!(header("trace").as_deref(), Some("t"), "the source's own headers");
    }
    let poison = &deliveries[2];
    assert_ne!(
        ctx.backend.engine(),
        "custom",
        "the engine under test names itself"
    );
    assert_eq!(
        header(dead_letter_headers::ENGINE).as_deref(),
        Some(ctx.backend.engine())
    );
    assert_eq!(header(dead_letter_headers::STREAM), Some(stream.clone()));
    assert_eq!(
        header(dead_letter_headers::PARTITION),
        Some(poison.partition.to_string())
    );
    assert_eq!(
        header(dead_letter_headers::OFFSET),
        Some(poison.offset.to_string())
    );
    assert_eq!(header(dead_letter_headers::ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(header(dead_letter_headers::REASON).as_deref(), Some("handler"));
    assert_eq!(
        header(dead_letter_headers::ERROR).as_deref(),
        Some("it never works")
    );
    let first_failure: i64 = header(dead_letter_headers::FIRST_FAILURE)
        .and_then(|ms| ms.parse().ok())
        .expect("a first-failure time in milliseconds");
    assert!(
        first_failure > 1_500_000_000_000,
        "a plausible time: {first_failure}"
    );
    reader.close().await?;
    expect_uncommitted(&ctx, &stream, &group, &[]).await?;
    Ok(Outcome::Passed)
}

/// Without a dead-letter stream, a record given up stops the processor with an error
/// naming it; nothing from it on is acknowledged.
pub async fn processor_without_dead_letter_stream_stops_on_a_record_given_up(ctx: Ctx) -> Result<Outcome> {
    let Some((stream, group)) = stream_and_group(&ctx, 1).await? else {
        return ctx.skip(NO_GROUPS);
    };
    let deliveries = produce(
        &ctx,
        &stream,
        vec![Record::new("ok"), Record::new("bad"), Record::new("after")],
    )
    .await?;
    let processor = Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
        .retry(Retry::never())
        .commit_every(Duration::from_millis(10), 1)
        .ordering(Ordering::PerPartition)
        .start(|m: Message<Bytes>| async move {
            if m.value == "bad" {
                return Err(HandlerError::permanent("refused"));
            }
            Ok(())
        })
        .await?;
    let err = tokio::time::timeout(patience(&ctx), processor.wait())
        .await
        .expect("the processor stops by itself")
        .expect_err("a record given up without a dead-letter stream is an error");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let bad = &deliveries[1];
    let named = format!("{stream}/{}@{}", bad.partition, bad.offset);
    assert!(err.message().contains(&named), "names the record {named}: {err}");
    assert!(
        err.message().contains("refused"),
        "and the handler's error: {err}"
    );
    expect_uncommitted(&ctx, &stream, &group, &["bad", "after"]).await?;
    Ok(Outcome::Passed)
}

/// A handler that blocks: polling pauses with exactly the bound buffered, and
/// everything is handled once the handler resumes.
pub async fn processor_pauses_polling_at_its_buffer_bound(ctx: Ctx) -> Result<Outcome> {
    const RECORDS: u64 = 500;
    const BOUND: u64 = 50;
    let Some((stream, group)) = stream_and_group(&ctx, 2).await? else {
        return ctx.skip(NO_GROUPS);
    };
    let records = (0..RECORDS)
        .map(|i| Record::new(format!("{i}")).with_key(format!("{i}")))
        .collect();
    produce(&ctx, &stream, records).await?;
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let closed = gate.clone().write_owned().await;
    let processor = {
        let gate = gate.clone();
        Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
            .concurrency(8)
            .max_buffered(BOUND as usize, 1 << 20)
            .start(move |_m: Message<Bytes>| {
                let gate = gate.clone();
                async move {
                    drop(gate.read().await);
                    Ok(())
                }
            })
            .await?
    };
    eventually("the buffer filled", patience(&ctx), || {
        processor.stats().buffered == BOUND
    })
    .await;
    // Polls come every 100 ms or sooner while they are not paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = processor.stats();
    assert_eq!(
        (stats.buffered, stats.max_buffered, stats.handled),
        (BOUND, BOUND, 0),
        "paused at the bound"
    );
    drop(closed);
    eventually(
        "everything handled once the handler resumed",
        patience(&ctx),
        || processor.stats().handled == RECORDS,
    )
    .await;
    assert!(processor.stats().max_buffered <= BOUND);
    stop(&ctx, processor).await?;
    expect_uncommitted(&ctx, &stream, &group, &[]).await?;
    Ok(Outcome::Passed)
}

/// Shutdown waits for handlers up to its deadline, commits what finished, and reports
/// the handler that ignored the deadline instead of waiting for it forever.
pub async fn processor_shutdown_abandons_handlers_past_its_deadline(ctx: Ctx) -> Result<Outcome> {
    let Some((stream, group)) = stream_and_group(&ctx, 1).await? else {
        return ctx.skip(NO_GROUPS);
    };
    produce(
        &ctx,
        &stream,
        vec![
            Record::new("quick").with_key("a"),
            Record::new("stuck").with_key("b"),
        ],
    )
    .await?;
    let stuck_started = Arc::new(AtomicBool::new(false));
    let processor = {
        let stuck_started = stuck_started.clone();
        Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
            .shutdown_deadline(Duration::from_millis(200))
            .start(move |m: Message<Bytes>| {
                let stuck_started = stuck_started.clone();
                async move {
                    if m.value == "stuck" {
                        stuck_started.store(true, AtomicOrdering::Relaxed);
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(())
                }
            })
            .await?
    };
    eventually(
        "the quick record handled, the stuck one started",
        patience(&ctx),
        || processor.stats().handled == 1 && stuck_started.load(AtomicOrdering::Relaxed),
    )
    .await;
    let summary = stop(&ctx, processor).await?;
    assert_eq!((summary.handled, summary.abandoned), (1, 1));
    expect_uncommitted(&ctx, &stream, &group, &["stuck"]).await?;
    Ok(Outcome::Passed)
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
}

/// A value the codec cannot decode goes to the dead-letter stream at once, with an
/// error naming the record and what is wrong; the others are handled.
pub async fn processor_dead_letters_a_record_that_does_not_decode(ctx: Ctx) -> Result<Outcome> {
    let Some((stream, group)) = stream_and_group(&ctx, 1).await? else {
        return ctx.skip(NO_GROUPS);
    };
    let dead = dead_letter_engine().await?;
    let deliveries = produce(
        &ctx,
        &stream,
        vec![
            Record::new(r#"{"id": 1}"#),
            Record::new("not json"),
            Record::new(r#"{"id": 3}"#),
        ],
    )
    .await?;
    let ids: Arc<Mutex<Vec<u64>>> = Arc::default();
    let processor = {
        let ids = ids.clone();
        Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
            .codec(Json::<Order>::new())
            .dead_letter(&dead, "dlq")
            .start(move |m: Message<Order>| {
                let ids = ids.clone();
                async move {
                    lock(&ids).push(m.value.id);
                    Ok(())
                }
            })
            .await?
    };
    eventually("all three finished", patience(&ctx), || {
        let s = processor.stats();
        s.handled == 2 && s.dead_lettered == 1
    })
    .await;
    stop(&ctx, processor).await?;
    let mut handled = lock(&ids).clone();
    handled.sort_unstable();
    assert_eq!(handled, [1, 3]);
    let mut reader = dead.consumer(ConsumerConfig::broadcast("dlq")).await?;
    let copies = drain(&mut *reader, 2, ctx.timing.quiet).await?;
    assert_eq!(copies.len(), 1, "one dead-letter copy");
    assert_eq!(copies[0].value, "not json");
    let header = |name: &str| copies[0].headers.get(name).map(text);
    assert_eq!(header(dead_letter_headers::REASON).as_deref(), Some("decode"));
    assert_eq!(header(dead_letter_headers::ATTEMPTS).as_deref(), Some("0"));
    let error = header(dead_letter_headers::ERROR).unwrap_or_default();
    let bad = &deliveries[1];
    let named = format!("{stream}/{}@{}", bad.partition, bad.offset);
    assert!(
        error.contains(&named),
        "the error names the record {named}: {error}"
    );
    assert!(error.contains("expected"), "and what is wrong: {error}");
    reader.close().await?;
    expect_uncommitted(&ctx, &stream, &group, &[]).await?;
    Ok(Outcome::Passed)
}

/// A processor commits, so a broadcast reader is refused with a clear error.
pub async fn processor_refuses_a_broadcast_consumer(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let err = Processor::builder(&ctx.backend, ConsumerConfig::broadcast(&stream))
        .start(|_m: Message<Bytes>| async { Ok(()) })
        .await
        .expect_err("a broadcast reader cannot commit");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.message().contains("consumer group"), "{err}");
    Ok(Outcome::Passed)
}

/// A handler that panics, in its call or in its future, is retried like one that
/// fails.
pub async fn processor_retries_a_panicking_handler(ctx: Ctx) -> Result<Outcome> {
    let Some((stream, group)) = stream_and_group(&ctx, 1).await? else {
        return ctx.skip(NO_GROUPS);
    };
    produce(&ctx, &stream, vec![Record::new("early"), Record::new("late")]).await?;
    let runs: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let processor = {
        let runs = runs.clone();
        Processor::builder(&ctx.backend, ConsumerConfig::group(&stream, &group))
            .retry(Retry::new(2, Duration::from_millis(1), Duration::from_millis(1)))
            .start(move |m: Message<Bytes>| {
                lock(&runs).push((text(&m.value), m.attempt));
                // Before the future exists: a panic in the call itself.
                assert!(!(m.value == "early" && m.attempt == 1), "a bug in the handler");
                async move {
                    assert!(
                        !(m.value == "late" && m.attempt == 1),
                        "a bug in the handler's future"
                    );
                    Ok(())
                }
            })
            .await?
    };
    eventually("both handled on their second run", patience(&ctx), || {
        processor.stats().handled == 2
    })
    .await;
    stop(&ctx, processor).await?;
    let mut seen = lock(&runs).clone();
    seen.sort();
    let expected: Vec<(String, u32)> = [("early", 1), ("early", 2), ("late", 1), ("late", 2)]
        .iter()
        .map(|(v, a)| (v.to_string(), *a))
        .collect();
    assert_eq!(seen, expected);
    expect_uncommitted(&ctx, &stream, &group, &[]).await?;
    Ok(Outcome::Passed)
}

/// A second processor joins a group while records flow and are in flight, then
/// leaves: every record is handled, everything ends committed, and no record is
/// committed by two members. On engines that hand partitions over in process, no
/// record a member acknowledged is handled by another at all.
pub async fn processor_members_join_and_leave_with_work_in_flight(ctx: Ctx) -> Result<Outcome> {
    let Some((stream, group)) = stream_and_group(&ctx, 4).await? else {
        return ctx.skip(NO_GROUPS);
    };
    let witness = Witness::default();
    let watched: Arc<dyn Backend> = Arc::new(Layered::new(ctx.backend.clone(), witness.clone()));
    // Records keep coming while members join and leave, so each member has work in
    // flight at every handover, however long the engine takes to rebalance.
    let keep_sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let (backend, stream, keep_sending) = (ctx.backend.clone(), stream.clone(), keep_sending.clone());
        tokio::spawn(async move {
            let producer = backend.producer(ProducerConfig::default()).await?;
            let mut sent = 0usize;
            while keep_sending.load(AtomicOrdering::Relaxed) {
                let records = (sent..sent + 20)
                    .map(|i| Record::new(format!("{i}")).with_key(format!("k{}", i % 30)))
                    .collect();
                producer.send(&stream, records).await?;
                sent += 20;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            producer.close().await?;
            Ok::<usize, tributary_core::Error>(sent)
        })
    };
    let handled: Arc<Mutex<BTreeMap<usize, usize>>> = Arc::default();
    let start = |handled: Arc<Mutex<BTreeMap<usize, usize>>>| {
        Processor::builder(&watched, ConsumerConfig::group(&stream, &group))
            .concurrency(8)
            .commit_every(Duration::from_millis(20), 50)
            .start(move |m: Message<Bytes>| {
                let handled = handled.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let value = text(&m.value)
                        .parse()
                        .map_err(|e| HandlerError::permanent(format!("not a number: {e}")))?;
                    *lock(&handled).entry(value).or_default() += 1;
                    Ok(())
                }
            })
    };
    let first = start(handled.clone()).await?;
    eventually("the first member got going", patience(&ctx), || {
        first.stats().handled >= 100
    })
    .await;
    let second = start(handled.clone()).await?;
    eventually("the second member got partitions", patience(&ctx), || {
        second.stats().handled >= 100
    })
    .await;
    let before_leaving = first.stats().handled;
    stop(&ctx, second).await?;
    eventually(
        "the first member went on after the second left",
        patience(&ctx),
        || first.stats().handled >= before_leaving + 200,
    )
    .await;
    keep_sending.store(false, AtomicOrdering::Relaxed);
    let sent = sender.await.expect("the sending task ran")?;
    eventually("every record sent handled at least once", patience(&ctx), || {
        lock(&handled).len() == sent
    })
    .await;
    stop(&ctx, first).await?;
    let handled = lock(&handled).clone();
    assert_eq!(
        handled.keys().copied().collect::<Vec<_>>(),
        (0..sent).collect::<Vec<_>>()
    );
    let again: usize = handled.values().map(|n| n - 1).sum();
    eprintln!(
        "handled {} times for {sent} records ({again} again after the handovers)",
        sent + again
    );
    let report = witness.report();
    assert!(
        report.committed_twice.is_empty(),
        "records committed by two members: {:?}",
        report.committed_twice
    );
    assert!(
        report.delivered_after_commit.is_empty(),
        "records delivered again after a commit covered them: {:?}",
        report.delivered_after_commit
    );
    if !ctx.expected().handoffs_redeliver {
        assert!(
            report.delivered_after_release.is_empty(),
            "records a member acknowledged before its partition moved, delivered again: {:?}",
            report.delivered_after_release
        );
    }
    assert!(report.members >= 2, "both members' consumers were watched");
    expect_uncommitted(&ctx, &stream, &group, &[]).await?;
    Ok(Outcome::Passed)
}
