//! fsync and write failures (EIO, ENOSPC, short writes) injected under the engine: no
//! acknowledgement after the fault, a typed error to every waiter, no "retry the sync
//! and call it good", and nothing acknowledged lost after reopening.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tributary_core::{Backend, ConsumerConfig, ErrorKind, PartitionId, ProducerConfig, Record, StreamSpec};
use tributary_native::storage::{DiskStorage, Storage, StorageFile};
use tributary_native::{Durability, NativeBackend, NativeConfig};

const OK: u8 = 0;
const SYNC_EIO: u8 = 1;
const WRITE_ENOSPC: u8 = 2;
const SHORT_WRITE: u8 = 3;
/// One failed fdatasync, then syncs succeed again: a retry would now "work", and must
/// still not be trusted.
const SYNC_EIO_ONCE: u8 = 4;
/// The next segment write succeeds, then writes fail with ENOSPC.
const WRITE_ENOSPC_AFTER_ONE: u8 = 5;

/// The real disk, except that segment files fail as `mode` says (those of partition 1
/// as `partition_one` says, when set).
#[derive(Debug)]
struct Faulty {
    mode: Arc<AtomicU8>,
    partition_one: Option<Arc<AtomicU8>>,
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    mode: Arc<AtomicU8>,
    segment: bool,
}

impl StorageFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        match (self.segment, self.mode.load(Ordering::SeqCst)) {
            (true, WRITE_ENOSPC) => Err(io::Error::from_raw_os_error(28)),
            (true, WRITE_ENOSPC_AFTER_ONE) => {
                self.mode.store(WRITE_ENOSPC, Ordering::SeqCst);
                self.inner.write_all_at(buf, pos)
            }
            (true, SHORT_WRITE) => {
                self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
                Err(io::Error::from_raw_os_error(5))
            }
            _ => self.inner.write_all_at(buf, pos),
        }
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.segment {
            match self.mode.load(Ordering::SeqCst) {
                SYNC_EIO => return Err(io::Error::from_raw_os_error(5)),
                SYNC_EIO_ONCE => {
                    self.mode.store(OK, Ordering::SeqCst);
                    return Err(io::Error::from_raw_os_error(5));
                }
                _ => {}
            }
        }
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for Faulty {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        DiskStorage.create_dir_all(path)
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        DiskStorage.list(path)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let of_partition_one = path.parent().is_some_and(|p| p.ends_with("1"));
        let mode = match &self.partition_one {
            Some(one) if of_partition_one => one.clone(),
            _ => self.mode.clone(),
        };
        Ok(Arc::new(FaultyFile {
            inner: DiskStorage.open(path, create)?,
            mode,
            segment: path.extension().is_some_and(|e| e == "log")
                && path.to_string_lossy().contains("streams"),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        DiskStorage.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        DiskStorage.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        DiskStorage.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        DiskStorage.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        DiskStorage.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        DiskStorage.lock(path)
    }
}

struct Outcome {
    acked: Vec<String>,
    errors: Vec<ErrorKind>,
}

/// Sends 20 rounds of 4 concurrent single-record sends, switching the fault on
/// after 30, and returns what was acknowledged and how the rest failed.
async fn run(dir: &Path, durability: Durability, fault: u8) -> Outcome {
    let mode = Arc::new(AtomicU8::new(OK));
    let mut config = NativeConfig::at(dir);
    config.durability = durability;
    let storage = Faulty {
        mode: mode.clone(),
        partition_one: None,
    };
    let engine = engine_with_stream(config, storage, StreamSpec::new("s")).await;
    let producer: Arc<dyn tributary_core::Producer> =
        Arc::from(engine.producer(ProducerConfig::default()).await.unwrap());
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for round in 0..20 {
        if round == 6 {
            mode.store(fault, Ordering::SeqCst);
        }
        let sends = (0..4).map(|task| {
            let producer = producer.clone();
            let value = format!("r{round:02}-t{task}");
            async move { (value.clone(), producer.send("s", vec![Record::new(value)]).await) }
        });
        for (value, result) in futures::future::join_all(sends).await {
            match result {
                Ok(_) => acked.push(value),
                Err(e) => {
                    assert_eq!(e.unsent.len(), 1, "the failed record is handed back");
                    errors.push(e.kind());
                }
            }
        }
    }
    engine.close().ok();
    Outcome { acked, errors }
}

/// An engine over `storage` with the stream `spec` (named `s`).
async fn engine_with_stream(config: NativeConfig, storage: Faulty, spec: StreamSpec) -> NativeBackend {
    let engine = NativeBackend::open_with_storage(config, Arc::new(storage)).unwrap();
    engine.admin().await.unwrap().create_stream(&spec).await.unwrap();
    engine
}

async fn reread(dir: &Path) -> Vec<String> {
    let engine = NativeBackend::open(NativeConfig::at(dir)).unwrap();
    let mut c = engine.consumer(ConsumerConfig::broadcast("s")).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = c.poll(1000, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        out.extend(
            batch
                .iter()
                .map(|r| String::from_utf8_lossy(&r.value).into_owned()),
        );
    }
    out
}

fn summary(name: &str, o: &Outcome, after: &[String]) {
    let lost = o.acked.iter().filter(|v| !after.contains(v)).count();
    println!(
        "{name}: attempted 80, acked {}, failed {}, lost {lost}, recovered {}, seed n/a",
        o.acked.len(),
        o.errors.len(),
        after.len()
    );
}

#[tokio::test]
async fn fsync_failure_in_sync_mode_acknowledges_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), Durability::Sync, SYNC_EIO).await;
    assert_eq!(o.acked.len(), 24, "everything before the fault was acknowledged");
    assert_eq!(o.errors.len(), 56, "nothing after it");
    assert_eq!(
        o.errors[0],
        ErrorKind::Indeterminate,
        "written but not durable: outcome unknown"
    );
    assert!(
        o.errors[1..]
            .iter()
            .all(|k| matches!(k, ErrorKind::Io | ErrorKind::Indeterminate)),
        "{:?}",
        o.errors
    );
    let after = reread(dir.path()).await;
    summary("fsync EIO", &o, &after);
    for v in &o.acked {
        assert!(after.contains(v), "acknowledged {v} was lost");
    }
}

#[tokio::test]
async fn a_sync_that_failed_once_is_never_retried_into_an_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), Durability::Sync, SYNC_EIO_ONCE).await;
    assert_eq!(o.acked.len(), 24, "everything before the fault was acknowledged");
    assert_eq!(
        o.errors.len(),
        56,
        "nothing after it, although later syncs would succeed"
    );
    let after = reread(dir.path()).await;
    summary("fsync EIO once", &o, &after);
    for v in &o.acked {
        assert!(after.contains(v), "acknowledged {v} was lost");
    }
}

#[tokio::test]
async fn write_failure_poisons_the_partition_and_loses_nothing_acknowledged() {
    for (name, fault) in [("ENOSPC", WRITE_ENOSPC), ("short write", SHORT_WRITE)] {
        let dir = tempfile::tempdir().unwrap();
        let o = run(dir.path(), Durability::PageCache, fault).await;
        assert_eq!(o.acked.len(), 24, "{name}");
        assert!(
            o.errors.iter().all(|k| *k == ErrorKind::Io),
            "{name}: {:?}",
            o.errors
        );
        let after = reread(dir.path()).await;
        summary(name, &o, &after);
        assert_eq!(
            after, o.acked,
            "{name}: exactly the acknowledged records, in order; the torn write is cut off"
        );
    }
}

/// One send over two partitions in `sync` mode: partition 0's write fails (nothing of
/// it written), partition 1's records are written but their fdatasync fails (they may
/// survive). The send must say Indeterminate, not the first failure's plain Io: a
/// caller resending "unsent" records after an Io error would duplicate partition 1's.
#[tokio::test]
async fn a_failed_sync_after_a_successful_write_is_not_hidden_by_an_earlier_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (zero, one) = (Arc::new(AtomicU8::new(OK)), Arc::new(AtomicU8::new(OK)));
    let mut config = NativeConfig::at(dir.path());
    config.durability = Durability::Sync;
    let storage = Faulty {
        mode: zero.clone(),
        partition_one: Some(one.clone()),
    };
    let engine = engine_with_stream(config, storage, StreamSpec::new("s").with_partitions(2)).await;
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let to = |p: u32, v: &str| Record::new(v.to_string()).to_partition(PartitionId::from_index(p));
    producer
        .send("s", vec![to(0, "warm"), to(1, "warm")])
        .await
        .unwrap();
    zero.store(WRITE_ENOSPC, Ordering::SeqCst);
    one.store(SYNC_EIO, Ordering::SeqCst);
    let err = producer
        .send("s", vec![to(0, "a0"), to(1, "a1"), to(0, "b0"), to(1, "b1")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{}", err.error);
    assert!(err.delivered.is_empty());
    let unsent: Vec<String> = err
        .unsent
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(unsent, ["a0", "a1", "b0", "b1"], "handed back in the order given");
}

/// One send large enough to be written in several batches, whose second write fails:
/// the first batch is readable, so the send must say Indeterminate (not Io, which
/// would invite a resend of records already in the log), and hand every record back.
#[tokio::test]
async fn a_write_failing_partway_through_a_large_send_is_indeterminate() {
    let dir = tempfile::tempdir().unwrap();
    let mode = Arc::new(AtomicU8::new(OK));
    let storage = Faulty {
        mode: mode.clone(),
        partition_one: None,
    };
    let engine = engine_with_stream(NativeConfig::at(dir.path()), storage, StreamSpec::new("s")).await;
    let producer = engine.producer(ProducerConfig::default()).await.unwrap();
    let values: Vec<String> = (0..600).map(|i| format!("{i:04}-{}", "x".repeat(1024))).collect();
    mode.store(WRITE_ENOSPC_AFTER_ONE, Ordering::SeqCst);
    let err = producer
        .send("s", values.iter().map(|v| Record::new(v.clone())).collect())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{}", err.error);
    assert!(
        err.error.message().contains("before a write failed"),
        "{}",
        err.error
    );
    assert!(err.delivered.is_empty());
    assert_eq!(err.unsent.len(), 600, "every record handed back");
    engine.close().ok();
    let after = reread(dir.path()).await;
    assert!(!after.is_empty(), "the first batch was written");
    assert!(after.len() < 600, "the rest was not");
    assert_eq!(
        after[..],
        values[..after.len()],
        "what survived is the send's first records, in order"
    );
}
