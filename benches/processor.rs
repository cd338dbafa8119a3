//! The processor against the loop an application writes by hand, on one engine, in one
//! run: a handler that waits 10 ms (an I/O call) at several concurrencies against a
//! sequential `poll` / handle / `ack` / `commit` loop, and a handler that does nothing
//! against the same hand loop (what the runtime itself costs).
//!
//! Run: `cargo bench -p tributary --bench processor --features kafka` with
//! `TRIBUTARY_BENCH_URL` (default `native://<temporary directory>`). Sizes:
//! `TRIBUTARY_BENCH_RECORDS` (default 100,000: the records of each concurrent 10 ms
//! run), `TRIBUTARY_BENCH_SLOW_RECORDS` (default 1,000: the records of the sequential
//! loop and of concurrency 1, which handle 100 a second), `TRIBUTARY_BENCH_NOOP_RECORDS`
//! (default 1,000,000). Rates run from the first record handled to the last, so the
//! time a new group takes to join is left out of both programs. Prints a Markdown
//! table.

use std::time::{Duration, Instant};

use tributary::process::{Message, Processor};
use tributary::{Bytes, Client, ConsumerConfig, Record, StreamSpec};

const KEYS: usize = 1_000;
const PARTITIONS: u32 = 8;
const HANDLER_WAIT: Duration = Duration::from_millis(10);
/// Records per poll, in the hand loop as in the processor (its default).
const POLL_RECORDS: usize = 500;
/// The hand loop commits as often as the processor does by default.
const COMMIT_RECORDS: usize = 10_000;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Sends `n` records of 100 bytes with 1,000 keys to a new stream.
async fn stream_of(client: &Client, name: &str, n: usize) -> tributary::Result<()> {
    client
        .ensure_stream(&StreamSpec::new(name).with_partitions(PARTITIONS))
        .await?;
    let producer = client.producer().await?;
    let value = Bytes::from(vec![b'x'; 100]);
    for start in (0..n).step_by(5_000) {
        let records = (start..n.min(start + 5_000))
            .map(|i| Record::new(value.clone()).with_key(format!("key-{}", i % KEYS)))
            .collect();
        producer.send(name, records).await?;
    }
    producer.close().await
}

/// The loop written by hand: poll, handle each record in turn, ack, commit every
/// `COMMIT_RECORDS`. Records per second over `n`.
async fn hand_loop(
    client: &Client,
    stream: &str,
    group: &str,
    n: usize,
    wait: Option<Duration>,
) -> tributary::Result<f64> {
    let mut consumer = client.consumer(ConsumerConfig::group(stream, group)).await?;
    let mut handled = 0;
    let mut since_commit = 0;
    let mut start = None;
    while handled < n {
        let batch = consumer
            .poll(POLL_RECORDS.min(n - handled), Duration::from_millis(100))
            .await?;
        // From the first record on, in both programs: joining the group is not counted.
        if !batch.is_empty() {
            start.get_or_insert_with(Instant::now);
        }
        for record in &batch {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            std::hint::black_box(&record.value);
            consumer.ack(&record.partition, &record.offset)?;
        }
        handled += batch.len();
        since_commit += batch.len();
        if since_commit >= COMMIT_RECORDS {
            consumer.commit().await?;
            since_commit = 0;
        }
    }
    consumer.commit().await?;
    let rate = handled as f64 / start.map_or(0.0, |start| start.elapsed().as_secs_f64());
    consumer.close().await?;
    Ok(rate)
}

/// The processor with `concurrency` handlers. Records per second over `n`.
async fn processor(
    client: &Client,
    stream: &str,
    group: &str,
    n: usize,
    concurrency: usize,
    wait: Option<Duration>,
) -> tributary::Result<f64> {
    let running = Processor::builder(client, ConsumerConfig::group(stream, group))
        .concurrency(concurrency)
        .start(move |m: Message<Bytes>| async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            std::hint::black_box(&m.value);
            Ok(())
        })
        .await?;
    let mut start = None;
    loop {
        let handled = running.stats().handled;
        if handled > 0 {
            // Sampled every millisecond: the clock may start up to 1 ms late, under
            // 0.1% of any run here.
            start.get_or_insert_with(Instant::now);
        }
        if handled >= n as u64 {
            break;
        }
        if running.is_finished() {
            running.wait().await?;
            return Err(tributary::Error::invalid_input("the processor stopped early"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / start.map_or(0.0, |start| start.elapsed().as_secs_f64());
    running.stop().await?;
    Ok(rate)
}

#[tokio::main]
async fn main() -> tributary::Result<()> {
    let scratch = std::env::temp_dir().join(format!("tributary-bench-processor-{}", std::process::id()));
    let url =
        std::env::var("TRIBUTARY_BENCH_URL").unwrap_or_else(|_| format!("native://{}", scratch.display()));
    let records = count("TRIBUTARY_BENCH_RECORDS", 100_000);
    let slow = count("TRIBUTARY_BENCH_SLOW_RECORDS", 1_000);
    let noop = count("TRIBUTARY_BENCH_NOOP_RECORDS", 1_000_000);
    let client = Client::from_url(&url).await?;
    let run = format!("{}-{}", std::process::id(), clock_suffix());
    let waits = format!("bench-processor-wait-{run}");
    let free = format!("bench-processor-noop-{run}");
    stream_of(&client, &waits, records.max(slow)).await?;
    stream_of(&client, &free, noop).await?;
    let group = |what: &str| format!("bench-{what}-{run}");
    let engine = client.engine();

    println!("| engine | handler | program | records | records/s | ratio |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    let sequential = hand_loop(&client, &waits, &group("seq"), slow, Some(HANDLER_WAIT)).await?;
    println!("| {engine} | waits 10 ms | sequential poll loop | {slow} | {sequential:.0} | 1.00x |");
    for concurrency in [1, 16, 64, 256] {
        let n = if concurrency == 1 { slow } else { records };
        let rate = processor(
            &client,
            &waits,
            &group(&format!("c{concurrency}")),
            n,
            concurrency,
            Some(HANDLER_WAIT),
        )
        .await?;
        println!(
            "| {engine} | waits 10 ms | processor, concurrency {concurrency} | {n} | {rate:.0} | {:.2}x |",
            rate / sequential
        );
    }
    let by_hand = hand_loop(&client, &free, &group("noop-hand"), noop, None).await?;
    println!("| {engine} | does nothing | poll / ack / commit loop | {noop} | {by_hand:.0} | 1.00x |");
    let rate = processor(&client, &free, &group("noop-processor"), noop, 64, None).await?;
    println!(
        "| {engine} | does nothing | processor, concurrency 64 | {noop} | {rate:.0} | {:.2}x |",
        rate / by_hand
    );
    drop(client);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn clock_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}
