//! Every target of the native engine measured in one run, next to a raw baseline that
//! writes the same bytes to a file in 256 KiB write() calls with no engine.
//!
//! `cargo bench -p tributary-native --bench native` (release build). Volumes scale with
//! `TRIBUTARY_BENCH_SCALE` (default 1.0; 0.05 for a quick look); data goes to
//! `TRIBUTARY_BENCH_DIR` (default: a temporary directory).

#![allow(
    clippy::unwrap_used,
    missing_docs,
    reason = "a benchmark: a failed unwrap is a failed run"
)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tributary_core::{
    Backend, ConsumerConfig, Offset, PartitionId, Producer, ProducerConfig, ProducerExt, Record, StartFrom,
    StreamSpec, Timestamp,
};
use tributary_native::storage::{DiskStorage, Storage, StorageFile};
use tributary_native::{Durability, NativeBackend, NativeConfig};

const CHUNK: usize = 256 * 1024;

struct Row {
    metric: String,
    target: String,
    measured: String,
    note: String,
}

/// Whether scenario `name` runs: all unless `TRIBUTARY_BENCH_ONLY` names others.
fn wanted(name: &str) -> bool {
    std::env::var("TRIBUTARY_BENCH_ONLY").map_or(true, |only| only.split(',').any(|o| o == name))
}

fn scale() -> f64 {
    std::env::var("TRIBUTARY_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(1)
}

fn engine(dir: &Path, durability: Durability) -> NativeBackend {
    let mut c = NativeConfig::at(dir);
    c.durability = durability;
    NativeBackend::open(c).unwrap()
}

async fn stream(e: &NativeBackend, name: &str, partitions: u32) {
    e.admin()
        .await
        .unwrap()
        .create_stream(&StreamSpec::new(name).with_partitions(partitions))
        .await
        .unwrap();
}

fn value(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// Raw baseline: `total` bytes in 256 KiB write() calls.
fn raw_write(dir: &Path, total: u64) -> f64 {
    let path = dir.join("raw.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let buf = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        f.write_all(&buf).unwrap();
        written += CHUNK as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path).unwrap();
    written as f64 / secs
}

/// Raw baseline for small records: each copied into 256 KiB buffers, CRC32C per
/// buffer, one write() per buffer. Returns records per second.
fn raw_records(dir: &Path, records: u64, size: usize) -> f64 {
    let path = dir.join("raw-records.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let v = value(size);
    let mut buf = BytesMut::with_capacity(CHUNK);
    let start = Instant::now();
    let mut crc = 0u32;
    for _ in 0..records {
        if buf.len() + size + 4 > CHUNK {
            crc ^= crc32c::crc32c(&buf);
            f.write_all(&buf).unwrap();
            buf.clear();
        }
        buf.extend_from_slice(&(size as u32).to_le_bytes());
        buf.extend_from_slice(&v);
    }
    f.write_all(&buf).unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(crc);
    std::fs::remove_file(path).unwrap();
    records as f64 / secs
}

async fn append_batches(
    e: &NativeBackend,
    name: &str,
    records: u64,
    size: usize,
    batch: usize,
) -> (f64, f64) {
    let producer = e.producer(ProducerConfig::default()).await.unwrap();
    let template: Vec<Record> = (0..batch).map(|_| Record::new(value(size))).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < records {
        producer.send(name, template.clone()).await.unwrap();
        sent += batch as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    (sent as f64 / secs, (sent * size as u64) as f64 / secs)
}

/// Records/s of one task handing `records` over one at a time (`Producer::enqueue`),
/// with up to `in_flight` unconfirmed.
async fn hand_over(e: &NativeBackend, name: &str, records: u64, size: usize, in_flight: usize) -> f64 {
    let producer = e.producer(ProducerConfig::default()).await.unwrap();
    let v = value(size);
    let mut pending = std::collections::VecDeque::with_capacity(in_flight);
    let start = Instant::now();
    for _ in 0..records {
        if pending.len() >= in_flight {
            let oldest: tributary_core::DeliveryHandle = pending.pop_front().unwrap();
            oldest.await.unwrap();
        }
        pending.push_back(producer.enqueue(name, Record::new(v.clone())).await.unwrap());
    }
    for handle in pending {
        handle.await.unwrap();
    }
    let rps = records as f64 / start.elapsed().as_secs_f64();
    producer.close().await.unwrap();
    rps
}

/// Records/s of `tasks` tasks sharing one producer, each awaiting its single-record
/// sends one after another: through `enqueue` (coalesced by the pipeline) or through
/// `send_one` (one append each).
async fn concurrent_singles(e: &NativeBackend, name: &str, records: u64, tasks: u64, handed: bool) -> f64 {
    let producer: Arc<dyn Producer> = Arc::from(e.producer(ProducerConfig::default()).await.unwrap());
    let v = value(100);
    let start = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (producer, v, name) = (producer.clone(), v.clone(), name.to_string());
            tokio::spawn(async move {
                for _ in 0..records / tasks {
                    if handed {
                        producer
                            .enqueue(&name, Record::new(v.clone()))
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                    } else {
                        producer.send_one(&name, Record::new(v.clone())).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    (records / tasks * tasks) as f64 / start.elapsed().as_secs_f64()
}

fn fmt_rate(per_sec: f64, unit: &str) -> String {
    if per_sec >= 1e9 {
        format!("{:.2} G{unit}/s", per_sec / 1e9)
    } else if per_sec >= 1e6 {
        format!("{:.2} M{unit}/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1} k{unit}/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} {unit}/s")
    }
}

#[derive(Debug)]
struct CountingStorage {
    syncs: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn StorageFile>,
    syncs: Arc<AtomicU64>,
}

impl StorageFile for CountingFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for CountingStorage {
    fn create_dir_all(&self, p: &Path) -> std::io::Result<()> {
        DiskStorage.create_dir_all(p)
    }
    fn list(&self, p: &Path) -> std::io::Result<Vec<String>> {
        DiskStorage.list(p)
    }
    fn open(&self, p: &Path, create: bool) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(CountingFile {
            inner: DiskStorage.open(p, create)?,
            syncs: self.syncs.clone(),
        }))
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        DiskStorage.remove_file(p)
    }
    fn remove_dir_all(&self, p: &Path) -> std::io::Result<()> {
        DiskStorage.remove_dir_all(p)
    }
    fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
        DiskStorage.rename(a, b)
    }
    fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
        DiskStorage.sync_dir(p)
    }
    fn exists(&self, p: &Path) -> bool {
        DiskStorage.exists(p)
    }
    fn lock(&self, p: &Path) -> std::io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        DiskStorage.lock(p)
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keep = std::env::var_os("TRIBUTARY_BENCH_DIR");
    let tmp = tempfile::tempdir().unwrap();
    let base = keep.map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    std::fs::create_dir_all(&base).unwrap();
    let mut rows: Vec<Row> = Vec::new();
    // The baselines run unless a filter leaves "raw" out.
    let (raw_bytes, raw_100b) = if wanted("raw") {
        (
            raw_write(&base, scaled(2 << 30)),
            raw_records(&base, scaled(20_000_000), 100),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    println!(
        "raw baseline: {} in 256 KiB writes; {} for 100 B records",
        fmt_rate(raw_bytes, "B"),
        fmt_rate(raw_100b, "rec")
    );

    rt.block_on(async {
        if wanted("batch") {
            // 1. Batch API, 100 B records.
            let dir = base.join("batch");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "s", 1).await;
            let (rps, _) = append_batches(&e, "s", scaled(10_000_000), 100, 1000).await;
            rows.push(Row {
                metric: "append, 1 partition, batch API (1,000/send), 100 B".into(),
                target: "≥5 M rec/s (stretch 10 M)".into(),
                measured: fmt_rate(rps, "rec"),
                note: format!(
                    "raw loop {}: engine/raw {:.2}",
                    fmt_rate(raw_100b, "rec"),
                    rps / raw_100b
                ),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("handed") {
            // Records handed over one at a time, coalesced by the producer pipeline.
            for (durability, label, n, target) in [
                (
                    Durability::PageCache,
                    "page_cache",
                    scaled(10_000_000),
                    "≥3 M rec/s",
                ),
                (Durability::Sync, "sync", scaled(3_000_000), "≥1 M rec/s"),
            ] {
                let dir = base.join(format!("handed-{label}"));
                let e = engine(&dir, durability);
                stream(&e, "s", 1).await;
                let rps = hand_over(&e, "s", n, 100, 10_000).await;
                rows.push(Row {
                    metric: format!(
                        "append, one task handing over single records, 10,000 in flight, {label}, 100 B"
                    ),
                    target: target.into(),
                    measured: fmt_rate(rps, "rec"),
                    note: "Producer::enqueue; one append per batch the pipeline gathers".into(),
                });
                e.close().unwrap();
                drop(e);
                std::fs::remove_dir_all(&dir).unwrap();
            }
            let dir = base.join("concurrent");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "s", 1).await;
            let handed = concurrent_singles(&e, "s", scaled(4_000_000), 8, true).await;
            let direct = concurrent_singles(&e, "s", scaled(4_000_000), 8, false).await;
            rows.push(Row {
                metric: "append, 8 tasks each awaiting single-record sends, page_cache, 100 B".into(),
                target: "≥2 M rec/s".into(),
                measured: fmt_rate(handed, "rec"),
                note: format!(
                    "enqueue + await (coalesced); send_one: {}",
                    fmt_rate(direct, "rec")
                ),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("single") {
            // 2. Single-record API, 100 B, with per-call latency.
            let dir = base.join("single");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "s", 1).await;
            let producer = e.producer(ProducerConfig::default()).await.unwrap();
            let v = value(100);
            let n = scaled(1_000_000);
            let mut h = Histogram::<u64>::new(3).unwrap();
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                producer.send_one("s", Record::new(v.clone())).await.unwrap();
                h.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            let rps = n as f64 / start.elapsed().as_secs_f64();
            rows.push(Row {
                metric: "append, single-record API, 100 B".into(),
                target: "≥2 M rec/s".into(),
                measured: fmt_rate(rps, "rec"),
                note: "one write() per send".into(),
            });
            rows.push(Row {
                metric: "append latency, 100 B single append".into(),
                target: "p50 ≤5 µs, p99 ≤150 µs".into(),
                measured: format!(
                    "p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
                    us(&h, 0.5),
                    us(&h, 0.99),
                    us(&h, 0.999)
                ),
                note: String::new(),
            });

            // 3. Append → in-process reader visible (ping-pong).
            let mut reader = e
                .consumer(ConsumerConfig::broadcast("s").start_from(StartFrom::Latest))
                .await
                .unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<Instant>(1);
            let rounds = scaled(50_000);
            let reader_task = tokio::spawn(async move {
                for _ in 0..rounds {
                    let mut got = Vec::new();
                    while got.is_empty() {
                        got = reader.poll(16, Duration::from_secs(5)).await.unwrap();
                    }
                    seen_tx.send(Instant::now()).await.unwrap();
                }
            });
            let mut h = Histogram::<u64>::new(3).unwrap();
            for _ in 0..rounds {
                let t = Instant::now();
                producer.send_one("s", Record::new(v.clone())).await.unwrap();
                let seen = seen_rx.recv().await.unwrap();
                h.record(seen.duration_since(t).as_nanos() as u64).unwrap();
            }
            drop(tx);
            let _ = rx.try_recv();
            reader_task.await.unwrap();
            rows.push(Row {
                metric: "append → in-process reader visible".into(),
                target: "p50 ≤20 µs, p99 ≤200 µs".into(),
                measured: format!("p50 {:.1} µs, p99 {:.1} µs", us(&h, 0.5), us(&h, 0.99)),
                note: "send to the reader's poll returning, ping-pong".into(),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("memory") {
            // Single-record API again, in `memory` durability: no write() per send.
            let dir = base.join("single-memory");
            let e = engine(&dir, Durability::Memory);
            stream(&e, "s", 1).await;
            let producer = e.producer(ProducerConfig::default()).await.unwrap();
            let v = value(100);
            let n = scaled(2_000_000);
            let start = Instant::now();
            for _ in 0..n {
                producer.send_one("s", Record::new(v.clone())).await.unwrap();
            }
            let rps = n as f64 / start.elapsed().as_secs_f64();
            rows.push(Row {
                metric: "append, single-record API, 100 B, `memory` durability".into(),
                target: "(no target; shows what the write() per send costs)".into(),
                measured: fmt_rate(rps, "rec"),
                note: "acknowledged once buffered; written per 256 KiB".into(),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("sustained") {
            // 4. 1 KiB records, sustained; then catch-up read of the same data.
            let dir = base.join("sustained");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "s", 1).await;
            let total = scaled(4 << 30);
            let (_, bps) = append_batches(&e, "s", total / 1024, 1024, 256).await;
            rows.push(Row {
                metric: format!(
                    "append, 1 KiB records, sustained over {:.1} GB",
                    total as f64 / 1e9
                ),
                target: "≥1.0 GB/s".into(),
                measured: fmt_rate(bps, "B"),
                note: format!(
                    "raw {}: engine/raw {:.2}",
                    fmt_rate(raw_bytes, "B"),
                    bps / raw_bytes
                ),
            });
            let mut reader = e.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
            let start = Instant::now();
            let mut bytes = 0u64;
            loop {
                let batch = reader.poll(10_000, Duration::ZERO).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                bytes += batch.iter().map(|r| r.value.len() as u64).sum::<u64>();
            }
            let read_bps = bytes as f64 / start.elapsed().as_secs_f64();
            rows.push(Row {
                metric: "catch-up read, page cache, CRC on".into(),
                target: "≥3 GB/s".into(),
                measured: fmt_rate(read_bps, "B"),
                note: format!("{:.1} GB read", bytes as f64 / 1e9),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("fanout") {
            // 5. Fan-out: producer alone, then with 8 broadcast readers.
            let dir = base.join("fanout");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "alone", 1).await;
            stream(&e, "shared", 1).await;
            let volume = scaled(1 << 30) / 1024;
            let (_, alone) = append_batches(&e, "alone", volume, 1024, 256).await;
            let mut readers = Vec::new();
            for _ in 0..8 {
                let mut r = e.consumer(ConsumerConfig::broadcast("shared")).await.unwrap();
                readers.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while n < volume {
                        n += r.poll(10_000, Duration::from_secs(10)).await.unwrap().len() as u64;
                    }
                    Instant::now()
                }));
            }
            let start = Instant::now();
            let (_, with_readers) = append_batches(&e, "shared", volume, 1024, 256).await;
            let produced = Instant::now();
            let mut max_lag = Duration::ZERO;
            for r in readers {
                max_lag = max_lag.max(r.await.unwrap().saturating_duration_since(produced));
            }
            rows.push(Row {
                metric: "8 fan-out readers of a partition while ingesting 1 KiB records".into(),
                target: "all keep up, producer slowdown ≤10%".into(),
                measured: format!(
                    "ingest {} alone, {} with readers: slowdown {:.0}%",
                    fmt_rate(alone, "B"),
                    fmt_rate(with_readers, "B"),
                    (alone / with_readers - 1.0) * 100.0
                ),
                note: format!(
                    "last reader done {:.0} ms after the producer ({:.2} s run)",
                    max_lag.as_secs_f64() * 1e3,
                    start.elapsed().as_secs_f64()
                ),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("sync") {
            // 6. Sync mode, 8 concurrent producers, 1 KiB records.
            let dir = base.join("sync");
            let syncs = Arc::new(AtomicU64::new(0));
            let mut c = NativeConfig::at(&dir);
            c.durability = Durability::Sync;
            let e = NativeBackend::open_with_storage(c, Arc::new(CountingStorage { syncs: syncs.clone() }))
                .unwrap();
            stream(&e, "s", 1).await;
            let producer: Arc<dyn Producer> = Arc::from(e.producer(ProducerConfig::default()).await.unwrap());
            let run_for = Duration::from_secs_f64((5.0 * scale()).max(1.0));
            let before = syncs.load(Ordering::Relaxed);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let p = producer.clone();
                tasks.push(tokio::spawn(async move {
                    let batch: Vec<Record> = (0..16).map(|_| Record::new(value(1024))).collect();
                    let mut bytes = 0u64;
                    while start.elapsed() < run_for {
                        p.send("s", batch.clone()).await.unwrap();
                        bytes += 16 * 1024;
                    }
                    bytes
                }));
            }
            let mut bytes = 0;
            for t in tasks {
                bytes += t.await.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let fsyncs = (syncs.load(Ordering::Relaxed) - before) as f64 / secs;
            rows.push(Row {
                metric: "Sync mode, 8 concurrent producers, 1 KiB (16 per send)".into(),
                target: "≥200 MB/s with ≤300 fsyncs/s".into(),
                measured: format!("{} with {fsyncs:.0} fsyncs/s", fmt_rate(bytes as f64 / secs, "B")),
                note: "group commit: one fdatasync covers every waiting sender".into(),
            });
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("commits") {
            // 7. Offset commits.
            let dir = base.join("commits");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "s", 1).await;
            let n = scaled(200_000);
            let p = e.producer(ProducerConfig::default()).await.unwrap();
            let template: Vec<Record> = (0..1000).map(|_| Record::new(value(10))).collect();
            for _ in 0..n.div_ceil(1000) {
                p.send("s", template.clone()).await.unwrap();
            }
            let mut member = e.consumer(ConsumerConfig::group("s", "g")).await.unwrap();
            let mut done = 0u64;
            let start = Instant::now();
            while done < n {
                let batch = member.poll(1000, Duration::from_secs(1)).await.unwrap();
                for r in &batch {
                    member.ack(&r.partition, &r.offset).unwrap();
                    member.commit().await.unwrap();
                }
                done += batch.len() as u64;
            }
            let cps = done as f64 / start.elapsed().as_secs_f64();
            rows.push(Row {
                metric: "offset commits (ack + commit per record)".into(),
                target: "≥500k/s".into(),
                measured: fmt_rate(cps, "commit"),
                note: "each commit appends to the offsets log".into(),
            });
            member.close().await.unwrap();
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        if wanted("restart") {
            // 8. Clean restart with 1,000 partitions; unclean restart of one large partition.
            let dir = base.join("restart");
            let e = engine(&dir, Durability::PageCache);
            let p = e.producer(ProducerConfig::default()).await.unwrap();
            for s in 0..10 {
                let name = format!("s{s}");
                stream(&e, &name, 100).await;
                let records = (0..100u32)
                    .map(|i| Record::new(value(100)).to_partition(PartitionId::from_index(i)))
                    .collect();
                p.send(&name, records).await.unwrap();
            }
            e.close().unwrap();
            drop(e);
            let start = Instant::now();
            let e = engine(&dir, Durability::PageCache);
            let clean = start.elapsed();
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
            rows.push(Row {
                metric: "clean restart, 1,000 partitions".into(),
                target: "≤200 ms".into(),
                measured: format!("{:.0} ms", clean.as_secs_f64() * 1e3),
                note: String::new(),
            });
            let dir = base.join("unclean");
            let e = engine(&dir, Durability::PageCache);
            stream(&e, "s", 1).await;
            let seg = scaled(256 << 20);
            append_batches(&e, "s", seg / 1024, 1024, 256).await;
            e.close().unwrap();
            drop(e);
            let part = dir.join("streams").join("s").join("0");
            for entry in std::fs::read_dir(&part).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|x| x == "idx") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            let start = Instant::now();
            let e = engine(&dir, Durability::PageCache);
            let unclean = start.elapsed();
            let scanned: u64 = e.recovery_report().values().map(|r| r.scanned_bytes).sum();
            e.close().unwrap();
            drop(e);
            std::fs::remove_dir_all(&dir).unwrap();
            rows.push(Row {
                metric: "unclean restart, one partition (no saved index: full scan)".into(),
                target: "≤0.5 s per partition worst case".into(),
                measured: format!("{:.0} ms", unclean.as_secs_f64() * 1e3),
                note: format!("{:.0} MB scanned, both CRCs checked", scanned as f64 / 1e6),
            });
        }
        let _ = (Offset::new(0), Timestamp::now());
    });

    println!("\n| metric | target | measured | notes |\n| --- | --- | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.metric, r.target, r.measured, r.note);
    }
}
