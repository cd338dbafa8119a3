//! One partition's log: a chain of segment files with sparse indexes, an in-memory
//! cache of recent batches for caught-up readers, group-committed syncs, retention,
//! and recovery that truncates torn tails but reports damage in the middle. The state
//! and its lock are here; each child module holds one part of what the log does.

mod checkpoint;
mod read;
mod recovery;
mod retention;
mod segment;
mod write;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tributary_core::{Error, ErrorKind, Result};

use crate::codec::DecodeError;
use crate::storage::Storage;

use checkpoint::{Checkpoint, CheckpointFile};
use read::Cached;
pub use recovery::{LostDurable, RecoveryReport};
use segment::Segment;
pub use segment::check_index;

/// Bytes of records per batch the writer aims for: large writes are fast, but past
/// 256 KiB per write() these machines slow down sharply.
const BATCH_TARGET: usize = 256 * 1024;

/// Bytes a reader asks for per read from disk.
const READ_CHUNK: usize = 256 * 1024;

/// Size of the buffer batches are encoded into (see `Inner::arena`).
const ARENA_BYTES: usize = 8 * 1024 * 1024;

/// How a partition log is kept.
#[derive(Debug, Clone)]
pub(crate) struct LogConfig {
    pub segment_bytes: u64,
    pub segment_age: Option<Duration>,
    pub max_batch_body: usize,
    pub index_interval: u64,
    pub cache_bytes: usize,
    pub retention_bytes: Option<u64>,
    pub retention: Option<Duration>,
    /// Acknowledge before writing: batches wait in memory until 256 KiB gather or the
    /// background flush runs (durability `memory`).
    pub buffered: bool,
    /// Readers see only what is synced (durability `sync`): nothing a power loss can
    /// take back is ever delivered, so no commit can get ahead of the log.
    pub read_synced_only: bool,
}

#[derive(Debug)]
struct Damage {
    offset: u64,
    message: String,
}

#[derive(Debug, Default)]
struct Inner {
    segments: BTreeMap<u64, Segment>,
    next_offset: u64,
    /// Set after a failed write or sync: nothing more is acknowledged until reopen.
    poisoned: Option<String>,
    damage: Option<Damage>,
    /// Recent batches, oldest first, for readers that are caught up.
    cache: VecDeque<Cached>,
    cache_bytes: usize,
    dirty: bool,
    /// Batches are encoded into this and split off it; once the cache and readers have
    /// dropped them, its memory is reclaimed instead of freshly allocated (and faulted
    /// in) for every batch.
    arena: BytesMut,
    /// Batches appended but not yet written (durability `memory`), oldest first.
    unwritten: Vec<Bytes>,
    unwritten_bytes: usize,
    /// Offset below which every batch is written to the file.
    written_offset: u64,
}

/// One partition's log.
#[derive(Debug)]
pub(crate) struct PartitionLog {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: LogConfig,
    inner: Mutex<Inner>,
    /// Offset below which everything is durable. Its lock is also what makes syncs
    /// group commits: one caller syncs, the others wait and find their data covered.
    synced: Mutex<u64>,
    /// Offset below which readers may read: everything appended, or with
    /// `read_synced_only` everything synced.
    visible: AtomicU64,
    checkpoint: Mutex<CheckpointFile>,
}

fn corruption(path: &Path, position: u64, e: &DecodeError) -> Error {
    Error::new(
        ErrorKind::Corruption,
        format!("{} at byte {position}: {e}", path.display()),
    )
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display())).with_source(e)
}

impl PartitionLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn empty(dir: PathBuf, storage: Arc<dyn Storage>, config: LogConfig) -> Self {
        Self {
            dir,
            storage,
            config,
            inner: Mutex::new(Inner::default()),
            synced: Mutex::new(0),
            visible: AtomicU64::new(0),
            checkpoint: Mutex::default(),
        }
    }

    /// Creates an empty partition in `dir` (which must not exist yet).
    pub(crate) fn create(dir: PathBuf, storage: Arc<dyn Storage>, config: LogConfig) -> Result<Self> {
        storage
            .create_dir_all(&dir)
            .map_err(|e| io_error("creating", &dir, e))?;
        let log = Self::empty(dir, storage, config);
        {
            let mut inner = log.lock();
            log.new_segment(&mut inner, 0)?;
        }
        log.open_checkpoint(None)?;
        Ok(log)
    }

    /// Whether there are writes not yet synced.
    pub(crate) fn is_dirty(&self) -> bool {
        self.lock().dirty
    }

    /// The offset the next record gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.lock().next_offset
    }

    /// The offset of the oldest retained record (the next offset if empty).
    pub(crate) fn low(&self) -> u64 {
        let inner = self.lock();
        inner.segments.keys().next().copied().unwrap_or(inner.next_offset)
    }

    /// Makes the log durable and saves the active segment's index, so the next open
    /// needs no scan. Called on clean shutdown.
    pub(crate) fn close(&self) -> Result<()> {
        let mut inner = self.lock();
        if inner.poisoned.is_some() || inner.damage.is_some() {
            return Ok(());
        }
        self.write_out(&mut inner)?;
        self.save_active(&inner)?;
        if let Some((_, active)) = inner.segments.iter().next_back() {
            self.record_durable(Checkpoint {
                base: active.base,
                position: active.written,
                offset: inner.written_offset,
            });
        }
        Ok(())
    }
}
