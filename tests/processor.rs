//! The processor on the memory engine: per-key order under concurrency, retries and
//! the dead-letter stream, backpressure, shutdown, decode failures.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tributary::process::{HandlerError, Json, Message, Processor, Retry, dead_letter_headers};
use tributary::{Bytes, Client, ConsumerConfig, ErrorKind, Received, Record, StreamSpec};

/// Long enough for anything these tests wait for; reaching it is a failure.
const PATIENCE: Duration = Duration::from_secs(30);

async fn client_with(stream: &str, partitions: u32) -> Client {
    let client = Client::from_url("memory://").await.unwrap();
    client
        .ensure_stream(&StreamSpec::new(stream).with_partitions(partitions))
        .await
        .unwrap();
    client
}

async fn produce(client: &Client, stream: &str, records: Vec<Record>) {
    let producer = client.producer().await.unwrap();
    producer.send(stream, records).await.unwrap();
}

/// Waits until `done` holds, failing the test after [`PATIENCE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Everything a fresh member of `group` reads: what the group has not committed.
async fn uncommitted(client: &Client, stream: &str, group: &str) -> Vec<Received> {
    let mut consumer = client
        .consumer(ConsumerConfig::group(stream, group))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let batch = consumer.poll(1000, Duration::from_millis(300)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    consumer.close().await.unwrap();
    got
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_with_32_handlers_and_random_delays() {
    const KEYS: usize = 40;
    const RECORDS: usize = 1_200;
    let client = client_with("s", 4).await;
    let records = (0..RECORDS)
        .map(|i| Record::new(format!("{i}")).with_key(format!("k{}", i % KEYS)))
        .collect();
    produce(&client, "s", records).await;
    // Per key: whether a handler is running on it, and the values handled, in order.
    let running: Arc<Mutex<HashSet<Bytes>>> = Arc::default();
    let handled: Arc<Mutex<HashMap<Bytes, Vec<usize>>>> = Arc::default();
    let overlaps = Arc::new(Mutex::new(0usize));
    let processor = {
        let (running, handled, overlaps) = (running.clone(), handled.clone(), overlaps.clone());
        Processor::builder(&client, ConsumerConfig::group("s", "g"))
            .concurrency(32)
            .start(move |m: Message<Bytes>| {
                let (running, handled, overlaps) = (running.clone(), handled.clone(), overlaps.clone());
                async move {
                    let key = m.key.clone().unwrap();
                    if !running.lock().unwrap().insert(key.clone()) {
                        *overlaps.lock().unwrap() += 1;
                    }
                    tokio::time::sleep(Duration::from_micros(fastrand_delay(&m.value))).await;
                    running.lock().unwrap().remove(&key);
                    let value: usize = text(&m.value).parse().unwrap();
                    handled.lock().unwrap().entry(key).or_default().push(value);
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    eventually("every record handled", || {
        processor.stats().handled == RECORDS as u64
    })
    .await;
    let summary = processor.stop().await.unwrap();
    assert_eq!(summary.handled, RECORDS as u64);
    assert_eq!(
        *overlaps.lock().unwrap(),
        0,
        "two records of a key were handled at once"
    );
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), KEYS);
    for (key, values) in handled.iter() {
        let expected: Vec<usize> = (0..RECORDS)
            .filter(|i| format!("k{}", i % KEYS) == text(key))
            .collect();
        assert_eq!(values, &expected, "key {} out of order or incomplete", text(key));
    }
    assert!(
        uncommitted(&client, "s", "g").await.is_empty(),
        "everything was committed"
    );
}

/// A delay of up to 2 ms derived from the record, so runs vary across records.
fn fastrand_delay(value: &Bytes) -> u64 {
    let seed = value
        .iter()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
    seed % 2_000
}

#[tokio::test]
async fn a_poison_record_goes_to_the_dead_letter_stream_on_another_engine_and_commits_pass_it() {
    let client = client_with("s", 1).await;
    let dead = client_with("dlq", 1).await;
    let records = ["a", "b", "poison", "c", "d"]
        .iter()
        .map(|v| Record::new(*v).with_key("k").with_header("trace", "t"))
        .collect();
    produce(&client, "s", records).await;
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let processor = {
        let seen = seen.clone();
        Processor::builder(&client, ConsumerConfig::group("s", "g"))
            .retry(Retry::new(3, Duration::from_millis(1), Duration::from_millis(5)))
            .dead_letter(&dead, "dlq")
            .commit_every(Duration::from_millis(20), 1)
            .start(move |m: Message<Bytes>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push((text(&m.value), m.attempt));
                    if m.value == "poison" {
                        return Err(HandlerError::retryable("it never works"));
                    }
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    eventually("all five finished", || {
        let s = processor.stats();
        s.handled == 4 && s.dead_lettered == 1
    })
    .await;
    let summary = processor.stop().await.unwrap();
    assert_eq!((summary.handled, summary.dead_lettered), (4, 1));
    let order: Vec<(String, u32)> = seen.lock().unwrap().clone();
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
    assert_eq!(order, expected, "three runs, and its key waited for them");
    let mut reader = dead.consumer(ConsumerConfig::broadcast("dlq")).await.unwrap();
    let copies = reader.poll(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(copies.len(), 1);
    let copy = &copies[0];
    assert_eq!(copy.value, "poison");
    assert_eq!(copy.key.as_deref(), Some(&b"k"[..]));
    let header = |name: &str| copy.headers.get(name).map(text);
    assert_eq!(header("trace").as_deref(), Some("t"));
    assert_eq!(header(dead_letter_headers::ENGINE).as_deref(), Some("memory"));
    assert_eq!(header(dead_letter_headers::STREAM).as_deref(), Some("s"));
    assert_eq!(header(dead_letter_headers::PARTITION).as_deref(), Some("0"));
    assert_eq!(header(dead_letter_headers::OFFSET).as_deref(), Some("2"));
    assert_eq!(header(dead_letter_headers::ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(header(dead_letter_headers::REASON).as_deref(), Some("handler"));
    assert_eq!(
        header(dead_letter_headers::ERROR).as_deref(),
        Some("it never works")
    );
    assert!(
        header(dead_letter_headers::FIRST_FAILURE)
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    assert!(
        uncommitted(&client, "s", "g").await.is_empty(),
        "the commit passed the poison record"
    );
}

#[tokio::test]
async fn without_a_dead_letter_stream_a_record_given_up_stops_the_processor() {
    let client = client_with("s", 1).await;
    produce(
        &client,
        "s",
        vec![Record::new("ok"), Record::new("bad"), Record::new("after")],
    )
    .await;
    let processor = Processor::builder(&client, ConsumerConfig::group("s", "g"))
        .retry(Retry::never())
        .commit_every(Duration::from_millis(10), 1)
        .ordering(tributary::process::Ordering::PerPartition)
        .start(|m: Message<Bytes>| async move {
            if m.value == "bad" {
                return Err(HandlerError::permanent("refused"));
            }
            Ok(())
        })
        .await
        .unwrap();
    let err = tokio::time::timeout(PATIENCE, processor.wait())
        .await
        .expect("the processor stops by itself")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("s/0@1"), "names the record: {err}");
    assert!(
        err.message().contains("refused"),
        "and the handler's error: {err}"
    );
    let left: Vec<String> = uncommitted(&client, "s", "g")
        .await
        .iter()
        .map(|r| text(&r.value))
        .collect();
    assert_eq!(
        left,
        ["bad", "after"],
        "nothing from the failed record on was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_handler_pauses_polling_at_the_bound_and_loses_nothing() {
    let client = client_with("s", 2).await;
    let records = (0..500)
        .map(|i| Record::new(format!("{i}")).with_key(format!("{i}")))
        .collect();
    produce(&client, "s", records).await;
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let closed = gate.clone().write_owned().await;
    let processor = {
        let gate = gate.clone();
        Processor::builder(&client, ConsumerConfig::group("s", "g"))
            .concurrency(8)
            .max_buffered(50, 1 << 20)
            .start(move |_m: Message<Bytes>| {
                let gate = gate.clone();
                async move {
                    drop(gate.read().await);
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    eventually("the buffer filled", || processor.stats().buffered == 50).await;
    // Polls would come every 100 ms if they were not paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = processor.stats();
    assert_eq!((stats.buffered, stats.max_buffered, stats.handled), (50, 50, 0));
    drop(closed);
    eventually("everything handled once the handler resumed", || {
        processor.stats().handled == 500
    })
    .await;
    assert!(processor.stats().max_buffered <= 50);
    processor.stop().await.unwrap();
    assert!(uncommitted(&client, "s", "g").await.is_empty());
}

#[tokio::test]
async fn shutdown_waits_for_handlers_up_to_its_deadline_and_reports_those_it_abandons() {
    let client = client_with("s", 1).await;
    produce(
        &client,
        "s",
        vec![
            Record::new("quick").with_key("a"),
            Record::new("stuck").with_key("b"),
        ],
    )
    .await;
    let processor = Processor::builder(&client, ConsumerConfig::group("s", "g"))
        .shutdown_deadline(Duration::from_millis(200))
        .start(|m: Message<Bytes>| async move {
            if m.value == "stuck" {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
        .await
        .unwrap();
    eventually("the quick record handled", || processor.stats().handled == 1).await;
    let summary = tokio::time::timeout(PATIENCE, processor.stop())
        .await
        .expect("shutdown does not wait for a handler forever")
        .unwrap();
    assert_eq!((summary.handled, summary.abandoned), (1, 1));
    let left: Vec<String> = uncommitted(&client, "s", "g")
        .await
        .iter()
        .map(|r| text(&r.value))
        .collect();
    assert_eq!(left, ["stuck"], "the abandoned record was not acknowledged");
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
}

#[tokio::test]
async fn a_record_that_does_not_decode_goes_to_the_dead_letter_stream_at_once() {
    let client = client_with("s", 1).await;
    let dead = client_with("dlq", 1).await;
    produce(
        &client,
        "s",
        vec![
            Record::new(r#"{"id": 1}"#),
            Record::new("not json"),
            Record::new(r#"{"id": 3}"#),
        ],
    )
    .await;
    let ids: Arc<Mutex<Vec<u64>>> = Arc::default();
    let processor = {
        let ids = ids.clone();
        Processor::builder(&client, ConsumerConfig::group("s", "g"))
            .codec(Json::<Order>::new())
            .dead_letter(&dead, "dlq")
            .start(move |m: Message<Order>| {
                let ids = ids.clone();
                async move {
                    ids.lock().unwrap().push(m.value.id);
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    eventually("all three finished", || {
        let s = processor.stats();
        s.handled == 2 && s.dead_lettered == 1
    })
    .await;
    processor.stop().await.unwrap();
    let mut handled = ids.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(handled, [1, 3]);
    let mut reader = dead.consumer(ConsumerConfig::broadcast("dlq")).await.unwrap();
    let copies = reader.poll(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(copies.len(), 1);
    let header = |name: &str| copies[0].headers.get(name).map(text);
    assert_eq!(header(dead_letter_headers::REASON).as_deref(), Some("decode"));
    assert_eq!(header(dead_letter_headers::ATTEMPTS).as_deref(), Some("0"));
    let error = header(dead_letter_headers::ERROR).unwrap();
    assert!(error.contains("s/0@1"), "the error names the record: {error}");
    assert!(error.contains("expected"), "and what is wrong: {error}");
}

#[tokio::test]
async fn a_processor_refuses_a_broadcast_consumer() {
    let client = client_with("s", 1).await;
    let err = Processor::builder(&client, ConsumerConfig::broadcast("s"))
        .start(|_m: Message<Bytes>| async { Ok(()) })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.message().contains("consumer group"), "{err}");
}

#[tokio::test]
async fn a_panicking_handler_is_retried_like_a_failing_one() {
    let client = client_with("s", 1).await;
    produce(&client, "s", vec![Record::new("early"), Record::new("late")]).await;
    let runs: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let processor = {
        let runs = runs.clone();
        Processor::builder(&client, ConsumerConfig::group("s", "g"))
            .retry(Retry::new(2, Duration::from_millis(1), Duration::from_millis(1)))
            .start(move |m: Message<Bytes>| {
                runs.lock().unwrap().push((text(&m.value), m.attempt));
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
            .await
            .unwrap()
    };
    eventually("both handled on their second run", || {
        processor.stats().handled == 2
    })
    .await;
    processor.stop().await.unwrap();
    let mut seen = runs.lock().unwrap().clone();
    seen.sort();
    let expected: Vec<(String, u32)> = [("early", 1), ("early", 2), ("late", 1), ("late", 2)]
        .iter()
        .map(|(v, a)| (v.to_string(), *a))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_with_work_in_flight_lose_nothing() {
    const RECORDS: usize = 600;
    let client = client_with("s", 4).await;
    let records = (0..RECORDS)
        .map(|i| Record::new(format!("{i}")).with_key(format!("k{}", i % 30)))
        .collect();
    produce(&client, "s", records).await;
    let handled: Arc<Mutex<Vec<usize>>> = Arc::default();
    let start = |handled: Arc<Mutex<Vec<usize>>>| {
        Processor::builder(&client, ConsumerConfig::group("s", "g"))
            .concurrency(8)
            .commit_every(Duration::from_millis(20), 50)
            .start(move |m: Message<Bytes>| {
                let handled = handled.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    handled.lock().unwrap().push(text(&m.value).parse().unwrap());
                    Ok(())
                }
            })
    };
    let first = start(handled.clone()).await.unwrap();
    eventually("the first member got going", || first.stats().handled >= 50).await;
    let second = start(handled.clone()).await.unwrap();
    eventually("the second member got partitions", || {
        second.stats().handled >= 20
    })
    .await;
    second.stop().await.unwrap();
    eventually("every record handled at least once", || {
        let seen: HashSet<usize> = handled.lock().unwrap().iter().copied().collect();
        seen.len() == RECORDS
    })
    .await;
    first.stop().await.unwrap();
    assert!(
        uncommitted(&client, "s", "g").await.is_empty(),
        "everything was committed"
    );
    let handled = handled.lock().unwrap().clone();
    println!(
        "handled {} times for {RECORDS} records ({} again after the rebalances)",
        handled.len(),
        handled.len() - RECORDS
    );
}
