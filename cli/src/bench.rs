//! `trib bench`: producers and consumers on a fresh stream, with records/s, MB/s and
//! latency percentiles from HDR histograms.
//!
//! Each value starts with the microseconds since the run began at which its send
//! started, so consumers in the same process measure end-to-end latency (send call →
//! delivered by `poll`). Send latency is per `send` call (one batch), or with
//! `--in-flight` per record, from hand-over to confirmation.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tributary::{Client, Consumer, ConsumerConfig, DeliveryHandle, Producer, Record, StreamSpec};

use crate::Io;
use crate::error::CliError;

/// Options of `trib bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent producers (each a task with its own producer).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub producers: u32,
    /// Concurrent consumers: members of one group where the engine has groups (they
    /// share the partitions), else independent readers (each reads everything).
    /// 0 measures producing only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub consumers: u32,
    /// Bytes of each record's value (at least 8: the send time).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(8..=1_048_576))]
    pub record_size: u64,
    /// Records per send call.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,
    /// Records each producer hands over without waiting (`Producer::enqueue`) and has
    /// not yet seen confirmed, at most; it then waits for the oldest. 0 (the default)
    /// sends batches of --batch-size and waits for each (a closed loop).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub in_flight: u64,
    /// How long producers send (default 10s unless --count is given).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// How many records to send in all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Send at most this many records per second in all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Partitions of the benchmark stream.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
    /// Distinct keys, used in turn (0: records without keys).
    #[arg(long, default_value_t = 100)]
    pub keys: u32,
    /// How long consumers may take to catch up after producers stopped.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// A name for this run in the report (e.g. "native sync").
    #[arg(long)]
    pub label: Option<String>,
    /// Keep the benchmark stream instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run measured.
#[derive(Debug, Serialize)]
struct Report {
    label: Option<String>,
    stream: String,
    producers: u32,
    consumers: u32,
    consumer_mode: &'static str,
    record_size: u64,
    batch_size: u64,
    in_flight: u64,
    partitions: u32,
    keys: u32,
    produce: Throughput,
    send_latency_ms: Percentiles,
    consume: Option<Throughput>,
    end_to_end_latency_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
struct Throughput {
    records: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; longer values are clamped to the top.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// Shared counters of a run.
#[derive(Default)]
struct Counters {
    /// Records claimed by producers (count mode).
    claimed: AtomicU64,
    produced: AtomicU64,
    consumed: AtomicU64,
    /// Microseconds since the start when the last record was consumed.
    last_consumed_micros: AtomicU64,
    stop_consumers: AtomicBool,
}

pub(crate) async fn run(args: BenchArgs, client: Client, io: &mut Io) -> Result<(), CliError> {
    let stream = format!("trib-bench-{:08x}", fastrand::u32(..));
    let admin = client
        .admin()
        .await
        .map_err(|e| CliError::engine("opening admin", &e))?;
    admin
        .create_stream(&StreamSpec::new(&stream).with_partitions(args.partitions))
        .await
        .map_err(|e| CliError::engine(&format!("creating the benchmark stream {stream}"), &e))?;
    let outcome = measure(&args, &client, &stream, io).await;
    if !args.keep
        && let Err(e) = admin.delete_stream(&stream).await
    {
        writeln!(io.stderr, "could not delete the benchmark stream {stream}: {e}")
            .map_err(|e| CliError::io("writing standard error", &e))?;
    }
    let report = outcome?;
    if args.json {
        serde_json::to_writer_pretty(&mut io.stdout, &report).map_err(|e| CliError::usage(e.to_string()))?;
        writeln!(io.stdout).map_err(|e| CliError::io("writing standard output", &e))?;
    } else {
        print_report(&report, &mut io.stdout).map_err(|e| CliError::io("writing standard output", &e))?;
    }
    if let Some(consume) = &report.consume {
        let expected = expected_consumed(
            report.consumer_mode == "group",
            report.produce.records,
            report.consumers,
        );
        if consume.records < expected {
            return Err(CliError {
                code: 1,
                message: format!(
                    "consumers received {} of {expected} records within --drain-timeout {}",
                    consume.records,
                    humantime::format_duration(args.drain_timeout)
                ),
            });
        }
    }
    Ok(())
}

async fn measure(args: &BenchArgs, client: &Client, stream: &str, io: &mut Io) -> Result<Report, CliError> {
    let grouped = client.capabilities().consumer_groups;
    let group = format!("{stream}-group");
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let config = if grouped {
            ConsumerConfig::group(stream, &group)
        } else {
            ConsumerConfig::broadcast(stream)
        };
        consumers.push(
            client
                .consumer(config)
                .await
                .map_err(|e| CliError::engine("opening a consumer", &e))?,
        );
    }
    wait_for_assignment(&mut consumers, args.partitions).await?;
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        producers.push(
            client
                .producer()
                .await
                .map_err(|e| CliError::engine("opening a producer", &e))?,
        );
    }

    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let consumer_tasks: Vec<_> = consumers
        .into_iter()
        .map(|consumer| tokio::spawn(consume(consumer, epoch, counters.clone())))
        .collect();
    let duration = match (args.duration, args.count) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let plan = Arc::new(Plan {
        stream: stream.to_owned(),
        record_size: usize::try_from(args.record_size).unwrap_or(8),
        batch_size: args.batch_size,
        in_flight: args.in_flight,
        keys: args.keys,
        deadline: duration.map(|d| epoch + d),
        count: args.count,
        rate_per_producer: args.rate.map(|r| r as f64 / f64::from(args.producers)),
    });
    let producer_tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(i, producer)| tokio::spawn(produce(producer, i, plan.clone(), epoch, counters.clone())))
        .collect();

    let bar = (io.terminal && !args.json).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let counters = counters.clone();
        tokio::spawn(async move {
            loop {
                let secs = epoch.elapsed().as_secs_f64().max(1e-9);
                let produced = counters.produced.load(Ordering::Relaxed);
                let consumed = counters.consumed.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{secs:.0} s  produced {produced} ({:.0}/s)  consumed {consumed}",
                    produced as f64 / secs
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });

    let mut failure = None;
    let send_latency = join(producer_tasks, "producer", &mut failure).await;
    let produce_secs = epoch.elapsed().as_secs_f64();
    let produced = counters.produced.load(Ordering::SeqCst);
    let expected = expected_consumed(grouped, produced, args.consumers);
    let drain_until = Instant::now() + args.drain_timeout;
    while args.consumers > 0
        && counters.consumed.load(Ordering::SeqCst) < expected
        && Instant::now() < drain_until
        && failure.is_none()
        && !consumer_tasks.iter().any(tokio::task::JoinHandle::is_finished)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    counters.stop_consumers.store(true, Ordering::SeqCst);
    let end_to_end = join(consumer_tasks, "consumer", &mut failure).await;
    if let Some(task) = ticker {
        task.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let consumed = counters.consumed.load(Ordering::SeqCst);
    let consume_secs = counters.last_consumed_micros.load(Ordering::SeqCst) as f64 / 1e6;
    let mb = |records: u64, secs: f64| records as f64 * args.record_size as f64 / 1e6 / secs.max(1e-9);
    Ok(Report {
        label: args.label.clone(),
        stream: stream.to_owned(),
        producers: args.producers,
        consumers: args.consumers,
        consumer_mode: if grouped { "group" } else { "broadcast" },
        record_size: args.record_size,
        batch_size: args.batch_size,
        in_flight: args.in_flight,
        partitions: args.partitions,
        keys: args.keys,
        produce: Throughput {
            records: produced,
            seconds: produce_secs,
            records_per_sec: produced as f64 / produce_secs.max(1e-9),
            mb_per_sec: mb(produced, produce_secs),
        },
        send_latency_ms: Percentiles::of(&send_latency),
        consume: (args.consumers > 0).then(|| Throughput {
            records: consumed,
            seconds: consume_secs,
            records_per_sec: consumed as f64 / consume_secs.max(1e-9),
            mb_per_sec: mb(consumed, consume_secs),
        }),
        end_to_end_latency_ms: (args.consumers > 0).then(|| Percentiles::of(&end_to_end)),
    })
}

/// Records the consumers must receive in all: each once for a group, every record by
/// every reader otherwise.
fn expected_consumed(grouped: bool, produced: u64, consumers: u32) -> u64 {
    if grouped {
        produced
    } else {
        produced * u64::from(consumers)
    }
}

/// Waits for the tasks and merges their histograms; the first failure goes to `failure`.
async fn join(
    tasks: Vec<tokio::task::JoinHandle<Result<Histogram<u64>, CliError>>>,
    role: &str,
    failure: &mut Option<CliError>,
) -> Histogram<u64> {
    let mut merged = histogram();
    for task in tasks {
        match task.await {
            Ok(Ok(h)) => {
                // Same bounds on both sides, so adding cannot fail.
                merged.add(h).ok();
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(CliError {
                    code: 1,
                    message: format!("a {role} task failed: {e}"),
                });
            }
        }
    }
    merged
}

/// Polls the consumers until their assignments cover the stream (joining a group takes
/// a while on some engines), so that latency does not count the join; at most 60 s.
async fn wait_for_assignment(consumers: &mut [Box<dyn Consumer>], partitions: u32) -> Result<(), CliError> {
    if consumers.is_empty() {
        return Ok(());
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let assigned: usize = consumers.iter().map(|c| c.assignment().len()).sum();
        // Every member holding some partition: the group's first assignments settled,
        // so no partition moves (and is read twice) during the run.
        let everyone =
            consumers.len() > partitions as usize || consumers.iter().all(|c| !c.assignment().is_empty());
        if assigned >= partitions as usize && everyone {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(CliError {
                code: 1,
                message: format!("consumers were assigned {assigned} of {partitions} partitions after 60 s"),
            });
        }
        for consumer in consumers.iter_mut() {
            let records = consumer
                .poll(1, Duration::from_millis(50))
                .await
                .map_err(|e| CliError::engine("waiting for partitions", &e))?;
            if !records.is_empty() {
                return Err(CliError::usage("the benchmark stream was not empty"));
            }
        }
    }
}

/// What every producer sends.
struct Plan {
    stream: String,
    record_size: usize,
    batch_size: u64,
    in_flight: u64,
    keys: u32,
    deadline: Option<Instant>,
    count: Option<u64>,
    rate_per_producer: Option<f64>,
}

async fn produce(
    producer: Box<dyn Producer>,
    index: usize,
    plan: Arc<Plan>,
    epoch: Instant,
    counters: Arc<Counters>,
) -> Result<Histogram<u64>, CliError> {
    let mut latency = histogram();
    let filler = vec![b'x'; plan.record_size - 8];
    let mut sent = 0u64;
    let mut n = index as u64;
    let mut in_flight: VecDeque<(Instant, DeliveryHandle)> = VecDeque::new();
    loop {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let size = match plan.count {
            Some(count) => {
                let claimed = counters.claimed.fetch_add(plan.batch_size, Ordering::SeqCst);
                if claimed >= count {
                    break;
                }
                plan.batch_size.min(count - claimed)
            }
            None => plan.batch_size,
        };
        if let Some(rate) = plan.rate_per_producer {
            tokio::time::sleep_until((epoch + Duration::from_secs_f64(sent as f64 / rate)).into()).await;
        }
        let started = Instant::now();
        let micros = u64::try_from(started.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        let records = (0..size).map(|_| {
            let mut value = BytesMut::with_capacity(plan.record_size);
            value.put_u64_le(micros);
            value.put_slice(&filler);
            let record = Record::new(value.freeze());
            n += 1;
            if plan.keys == 0 {
                record
            } else {
                record.with_key(Bytes::from(format!("key-{}", n % u64::from(plan.keys))))
            }
        });
        if plan.in_flight == 0 {
            producer
                .send(&plan.stream, records.collect())
                .await
                .map_err(|e| CliError::engine("sending", &e.error))?;
            record_latency(&mut latency, started);
            counters.produced.fetch_add(size, Ordering::SeqCst);
        } else {
            for record in records {
                while in_flight.len() as u64 >= plan.in_flight {
                    confirm_oldest(&mut in_flight, &mut latency, &counters).await?;
                }
                let handle = producer
                    .enqueue(&plan.stream, record)
                    .await
                    .map_err(|e| CliError::engine("handing a record over", &e))?;
                in_flight.push_back((Instant::now(), handle));
            }
        }
        // An engine in this process (memory) answers at once; let the consumers run
        // (now and then only when handing over: a yield per record would hand the
        // thread to the producer's own task after every record and defeat batching).
        if plan.in_flight == 0 || sent / YIELD_EVERY != (sent + size) / YIELD_EVERY {
            tokio::task::yield_now().await;
        }
        sent += size;
    }
    while !in_flight.is_empty() {
        confirm_oldest(&mut in_flight, &mut latency, &counters).await?;
    }
    producer
        .close()
        .await
        .map_err(|e| CliError::engine("closing a producer", &e))?;
    Ok(latency)
}

/// Records handed over between two yields to other tasks.
const YIELD_EVERY: u64 = 1024;

/// Waits for the oldest record handed over: its latency is from hand-over to
/// confirmation.
async fn confirm_oldest(
    in_flight: &mut VecDeque<(Instant, DeliveryHandle)>,
    latency: &mut Histogram<u64>,
    counters: &Counters,
) -> Result<(), CliError> {
    if let Some((started, handle)) = in_flight.pop_front() {
        handle.await.map_err(|e| CliError::engine("sending", &e))?;
        record_latency(latency, started);
        counters.produced.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

fn record_latency(latency: &mut Histogram<u64>, started: Instant) {
    latency.saturating_record(
        u64::try_from(started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1),
    );
}

async fn consume(
    mut consumer: Box<dyn Consumer>,
    epoch: Instant,
    counters: Arc<Counters>,
) -> Result<Histogram<u64>, CliError> {
    let mut latency = histogram();
    while !counters.stop_consumers.load(Ordering::SeqCst) {
        let batch = consumer
            .poll(1000, Duration::from_millis(100))
            .await
            .map_err(|e| CliError::engine("reading", &e))?;
        // Once told to stop, another consumer may have closed and left its partitions
        // to this one, which would read them again from the start: not part of the run.
        if batch.is_empty() || counters.stop_consumers.load(Ordering::SeqCst) {
            continue;
        }
        let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        for record in &batch {
            let sent = record
                .value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| CliError::usage("a record shorter than 8 bytes in the benchmark stream"))?;
            latency.saturating_record(now.saturating_sub(sent).max(1));
        }
        counters.consumed.fetch_add(batch.len() as u64, Ordering::SeqCst);
        counters.last_consumed_micros.fetch_max(now, Ordering::SeqCst);
    }
    consumer
        .close()
        .await
        .map_err(|e| CliError::engine("closing a consumer", &e))?;
    Ok(latency)
}

fn print_report(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(label) = &r.label {
        writeln!(out, "{label}")?;
    }
    let sending = if r.in_flight == 0 {
        format!("{} per send", r.batch_size)
    } else {
        format!("handed over one at a time, up to {} in flight", r.in_flight)
    };
    writeln!(
        out,
        "{} producers, {} consumers ({}), {} B records, {sending}, {} partitions, {} keys",
        r.producers, r.consumers, r.consumer_mode, r.record_size, r.partitions, r.keys
    )?;
    let line = |name: &str, t: &Throughput| {
        format!(
            "{name:<8} {:>10} records in {:>6.2} s  {:>10.0} records/s  {:>8.2} MB/s",
            t.records, t.seconds, t.records_per_sec, t.mb_per_sec
        )
    };
    let percentiles = |name: &str, p: &Percentiles| {
        format!(
            "{name:<22} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            p.p50, p.p90, p.p99, p.p99_9, p.max
        )
    };
    writeln!(out, "{}", line("produce", &r.produce))?;
    if let Some(consume) = &r.consume {
        writeln!(out, "{}", line("consume", consume))?;
    }
    writeln!(out, "{}", percentiles("send latency ms", &r.send_latency_ms))?;
    if let Some(e2e) = &r.end_to_end_latency_ms {
        writeln!(out, "{}", percentiles("end-to-end latency ms", e2e))?;
    }
    Ok(())
}
