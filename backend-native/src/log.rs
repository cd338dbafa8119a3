//! One partition's log: a chain of segment files with sparse indexes, an in-memory
//! cache of recent batches for caught-up readers, group-committed syncs, retention,
//! and recovery that truncates torn tails but reports damage in the middle.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tributary_core::{Error, ErrorKind, Record, Result, Timestamp};

use crate::codec::{self, BatchHeader, DecodeError, DecodedRecord, HEADER_LEN};
use crate::mark;
use crate::storage::{Storage, StorageFile, read_all, write_atomic};

/// Bytes of records per batch the writer aims for: large writes are fast, but past
/// 256 KiB per write() these machines slow down sharply.
const BATCH_TARGET: usize = 256 * 1024;
/// Bytes a reader asks for per read from disk.
const READ_CHUNK: usize = 256 * 1024;
/// Size of the buffer batches are encoded into (see `Inner::arena`).
const ARENA_BYTES: usize = 8 * 1024 * 1024;
const INDEX_MAGIC: [u8; 4] = *b"TRI\x01";
const INDEX_HEADER_LEN: usize = 40;
const INDEX_ENTRY_LEN: usize = 16;

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

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    position: u64,
    /// The largest timestamp of every record before this position in the segment.
    max_ts_before: i64,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Bytes of batches appended, written or not: positions are in this space.
    size: u64,
    /// Bytes actually written to the file; below `size` only in `memory` durability.
    written: u64,
    next_offset: u64,
    max_ts: i64,
    index: Vec<IndexEntry>,
    created: Instant,
}

impl Segment {
    fn index_path(&self) -> PathBuf {
        self.path.with_extension("idx")
    }

    /// Where to start reading to find `offset`: the last index entry at or before it.
    fn position_for(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|e| e.offset <= offset);
        if i == 0 { 0 } else { self.index[i - 1].position }
    }

    fn index_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + self.index.len() * INDEX_ENTRY_LEN);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&[0; 4]); // checksum, below
        out.extend_from_slice(&u32::try_from(self.index.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.max_ts.to_le_bytes());
        for e in &self.index {
            // Bounded: segments are at most 2 GiB and hold fewer than 2^32 records.
            out.extend_from_slice(&((e.offset - self.base) as u32).to_le_bytes());
            out.extend_from_slice(&(e.position as u32).to_le_bytes());
            out.extend_from_slice(&e.max_ts_before.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Loads the index saved for this segment, if it is intact and describes the file
    /// as it is now (same size); otherwise the segment must be scanned.
    fn load_index(&mut self, storage: &dyn Storage) -> bool {
        let Ok(bytes) = read_all(storage, &self.index_path()) else {
            return false;
        };
        let Some(parsed) = parse_index(&bytes, self.base) else {
            return false;
        };
        if parsed.size != self.size {
            return false;
        }
        self.next_offset = parsed.next_offset;
        self.max_ts = parsed.max_ts;
        self.index = parsed.entries;
        true
    }
}

struct ParsedIndex {
    size: u64,
    next_offset: u64,
    max_ts: i64,
    entries: Vec<IndexEntry>,
}

fn parse_index(bytes: &[u8], base: u64) -> Option<ParsedIndex> {
    if bytes.len() < INDEX_HEADER_LEN || bytes[0..4] != INDEX_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if crc != crc32c::crc32c(&bytes[8..]) {
        return None;
    }
    let count = u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize;
    if bytes.len() != INDEX_HEADER_LEN + count.checked_mul(INDEX_ENTRY_LEN)? {
        return None;
    }
    let size = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    let next_offset = u64::from_le_bytes(bytes[24..32].try_into().ok()?);
    let max_ts = i64::from_le_bytes(bytes[32..40].try_into().ok()?);
    let mut entries = Vec::with_capacity(count);
    for chunk in bytes[INDEX_HEADER_LEN..].chunks_exact(INDEX_ENTRY_LEN) {
        let rel = u32::from_le_bytes(chunk[0..4].try_into().ok()?);
        let position = u32::from_le_bytes(chunk[4..8].try_into().ok()?);
        let max_ts_before = i64::from_le_bytes(chunk[8..16].try_into().ok()?);
        let entry = IndexEntry {
            offset: base.checked_add(u64::from(rel))?,
            position: u64::from(position),
            max_ts_before,
        };
        if entries
            .last()
            .is_some_and(|p: &IndexEntry| p.offset >= entry.offset || p.position >= entry.position)
        {
            return None;
        }
        if entry.position >= size || entry.offset >= next_offset {
            return None;
        }
        entries.push(entry);
    }
    Some(ParsedIndex {
        size,
        next_offset,
        max_ts,
        entries,
    })
}

/// Decodes an index file for a segment based at `base`: `None` if it is damaged or
/// inconsistent (then the engine rebuilds it from the log). Exposed for fuzzing.
pub fn check_index(bytes: &[u8], base: u64) -> bool {
    parse_index(bytes, base).is_some()
}

const CHECKPOINT_MAGIC: [u8; 4] = *b"TRC\x02";
const CHECKPOINT_SLOT: usize = mark::slot_len(3);
const CHECKPOINT_FILE: &str = "checkpoint";

/// How far a partition is known to be durable: everything before `position` of the
/// segment based at `base` (and every earlier segment) was synced, and `offset` is the
/// offset of the first record not covered. Kept in two CRC-checked slots written in
/// turn without a sync of their own: a lost or torn write only leaves the older slot,
/// which is conservative. Once read back, a log ending before it has lost synced data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Checkpoint {
    base: u64,
    position: u64,
    offset: u64,
}

fn encode_checkpoint(seq: u64, c: Checkpoint) -> Vec<u8> {
    mark::encode(CHECKPOINT_MAGIC, seq, [c.base, c.position, c.offset])
}

/// The newest valid slot: (sequence number, checkpoint).
fn decode_checkpoint(bytes: &[u8]) -> Option<(u64, Checkpoint)> {
    mark::decode(CHECKPOINT_MAGIC, bytes).map(|(seq, [base, position, offset])| {
        (
            seq,
            Checkpoint {
                base,
                position,
                offset,
            },
        )
    })
}

/// Where a partition's log was found to end at open: the end of its last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogEnd {
    base: u64,
    size: u64,
    offset: u64,
}

/// Whether a log found ending at `end` has lost records its checkpoint says were
/// synced: it ends at a smaller offset, or its last synced segment is shorter than the
/// synced position (cut, zeroed, or removed with the records after it). A missing
/// empty segment at the durable end loses nothing and is not a loss.
fn lost_durable(end: LogEnd, durable: Option<Checkpoint>) -> Option<LostDurable> {
    let c = durable?;
    let short = end.offset < c.offset || (end.base == c.base && end.size < c.position);
    short.then_some(LostDurable {
        durable_end: c.offset,
        found_end: end.offset,
    })
}

/// Whether damage found while scanning a segment at byte `pos` is a torn tail to cut
/// off. Only the last segment has one, and only past what was synced: before it the
/// bytes were durable, so the damage is real. Without a readable checkpoint, damage
/// followed by a valid batch (`valid_after`) is taken as real.
fn is_torn_tail(
    is_last: bool,
    at: Checkpoint,
    durable: Option<Checkpoint>,
    valid_after: impl FnOnce() -> bool,
) -> bool {
    if !is_last {
        return false;
    }
    match durable {
        Some(c) => (at.base, at.position) >= (c.base, c.position),
        None => !valid_after(),
    }
}

#[derive(Debug, Default)]
struct CheckpointFile {
    file: Option<Arc<dyn StorageFile>>,
    seq: u64,
    last: Checkpoint,
}

/// What recovery found when a partition was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes of torn tail cut off the last segment.
    pub truncated_bytes: u64,
    /// Bytes verified by scanning (segments whose saved index did not match).
    pub scanned_bytes: u64,
    /// Damage found in the log: readable up to it, refused after (reads at or past it
    /// and every write get `Corruption`). Also set when the log lost synced records.
    pub damage: Option<String>,
    /// Set when the log ends before what its checkpoint says was synced (cut, zeroed,
    /// or its last segment removed): those records are gone, and their offsets are
    /// never given to new records.
    pub lost: Option<LostDurable>,
}

/// A partition's log ends before records it had synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostDurable {
    /// The offset the checkpoint says every record before was synced.
    pub durable_end: u64,
    /// The offset the log was found to end at.
    pub found_end: u64,
}

/// A recent batch kept in memory, decoded at most once for all readers.
#[derive(Debug, Clone)]
struct Cached {
    header: BatchHeader,
    bytes: Bytes,
    decoded: Arc<OnceLock<Result<Arc<[DecodedRecord]>, DecodeError>>>,
}

impl Cached {
    fn records(&self) -> Result<&Arc<[DecodedRecord]>, DecodeError> {
        self.decoded
            .get_or_init(|| codec::parse_records(&self.header, &self.bytes, 0).map(Arc::from))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Where a read from disk goes: records from offset `from`, in `file` from byte `pos`
/// up to `size` (what was written), none at or past offset `limit`.
struct DiskSpan<'a> {
    from: u64,
    file: &'a dyn StorageFile,
    path: &'a Path,
    pos: u64,
    size: u64,
    limit: u64,
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

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
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

    /// Opens (creating, durably, if missing) the checkpoint file and records `durable`.
    fn open_checkpoint(&self, durable: Option<Checkpoint>) -> Result<()> {
        let path = self.dir.join(CHECKPOINT_FILE);
        let existed = self.storage.exists(&path);
        let file = self
            .storage
            .open(&path, true)
            .map_err(|e| io_error("opening", &path, e))?;
        if !existed {
            file.write_all_at(&encode_checkpoint(1, Checkpoint::default()), 0)
                .and_then(|()| file.sync_data())
                .and_then(|()| self.storage.sync_dir(&self.dir))
                .map_err(|e| io_error("creating", &path, e))?;
        }
        let mut bytes = [0u8; 2 * CHECKPOINT_SLOT];
        let n = file
            .read_at(&mut bytes, 0)
            .map_err(|e| io_error("reading", &path, e))?;
        let (seq, last) = decode_checkpoint(&bytes[..n]).unwrap_or_default();
        *self.checkpoint.lock().unwrap_or_else(PoisonError::into_inner) = CheckpointFile {
            file: Some(file),
            seq,
            last,
        };
        if let Some(c) = durable {
            self.record_durable(c);
        }
        Ok(())
    }

    /// Notes that everything before `c` is durable (only ever forward). A failed
    /// write is only logged: the older checkpoint stays, which is conservative.
    fn record_durable(&self, c: Checkpoint) {
        let ck = self.checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
        if c <= ck.last {
            return;
        }
        self.write_checkpoint(ck, c);
    }

    /// Records `c` as the durable position even if it is behind the one recorded.
    fn reset_durable(&self, c: Checkpoint) {
        let ck = self.checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
        self.write_checkpoint(ck, c);
    }

    fn write_checkpoint(&self, mut ck: MutexGuard<'_, CheckpointFile>, c: Checkpoint) {
        let Some(file) = ck.file.clone() else { return };
        let seq = ck.seq + 1;
        let slot = mark::position(seq, 3);
        match file.write_all_at(&encode_checkpoint(seq, c), slot) {
            Ok(()) => {
                ck.seq = seq;
                ck.last = c;
            }
            Err(e) => {
                tracing::warn!(partition = %self.dir.display(), error = %e, "could not record the durable position")
            }
        }
    }

    /// Opens the partition in `dir`, recovering from an unclean shutdown.
    pub(crate) fn open(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        config: LogConfig,
    ) -> Result<(Self, RecoveryReport)> {
        let mut report = RecoveryReport::default();
        let names = storage.list(&dir).map_err(|e| io_error("listing", &dir, e))?;
        let mut bases: Vec<u64> = Vec::new();
        for name in &names {
            if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse().ok()) {
                bases.push(base);
            } else if name.ends_with(".tmp") {
                let _ = storage.remove_file(&dir.join(name));
            }
        }
        bases.sort_unstable();
        let log = Self::empty(dir.clone(), storage.clone(), config);
        let checkpoint = read_all(&*storage, &dir.join(CHECKPOINT_FILE))
            .ok()
            .and_then(|b| decode_checkpoint(&b))
            .map(|(_, c)| c);
        let mut inner = log.lock();
        if bases.is_empty() {
            let nothing = LogEnd {
                base: 0,
                size: 0,
                offset: 0,
            };
            let Some(lost) = lost_durable(nothing, checkpoint) else {
                log.new_segment(&mut inner, 0)?;
                drop(inner);
                log.open_checkpoint(None)?;
                return Ok((log, report));
            };
            // Kept as found, without a segment: every read and write is refused.
            log.note_lost(&mut inner, &mut report, lost, "has no segment files");
            drop(inner);
            log.open_checkpoint(None)?;
            return Ok((log, report));
        }
        let last = bases.len() - 1;
        let mut unclean = false;
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            let file = storage
                .open(&path, false)
                .map_err(|e| io_error("opening", &path, e))?;
            let size = file.size().map_err(|e| io_error("reading", &path, e))?;
            let mut segment = Segment {
                base,
                path,
                file,
                size,
                written: size,
                next_offset: base,
                max_ts: i64::MIN,
                index: Vec::new(),
                created: Instant::now(),
            };
            let expected_end = bases.get(i + 1).copied();
            if inner.damage.is_none() && !segment.load_index(&*storage) {
                report.scanned_bytes += segment.size;
                unclean |= i == last;
                log.scan(&mut segment, i == last, checkpoint, &mut report, &mut inner)?;
            }
            if let (Some(end), None) = (expected_end, &inner.damage)
                && segment.next_offset != end
            {
                inner.damage = Some(Damage {
                    offset: segment.next_offset.min(end),
                    message: format!(
                        "{} ends at offset {} but the next segment starts at {end}",
                        segment.path.display(),
                        segment.next_offset
                    ),
                });
            }
            inner.next_offset = segment.next_offset;
            inner.segments.insert(base, segment);
        }
        if inner.damage.is_none()
            && let Some((_, active)) = inner.segments.iter().next_back()
        {
            let end = LogEnd {
                base: active.base,
                size: active.size,
                offset: active.next_offset,
            };
            if let Some(lost) = lost_durable(end, checkpoint) {
                let found = format!("ends at byte {} of {}", active.size, active.path.display());
                log.note_lost(&mut inner, &mut report, lost, &found);
            }
        }
        if let Some(d) = &inner.damage
            && report.damage.is_none()
        {
            report.damage = Some(d.message.clone());
            tracing::error!(partition = %dir.display(), damage = %d.message, "log damaged: readable up to the damage, writes refused");
        }
        let next = inner.next_offset;
        inner.written_offset = next;
        // After an unclean shutdown the recovered tail may still sit in the page cache
        // only: sync it before calling it durable.
        let durable = match inner.segments.iter().next_back() {
            Some((_, active)) if unclean && inner.damage.is_none() => {
                active
                    .file
                    .sync_data()
                    .map_err(|e| io_error("syncing", &active.path, e))?;
                Some(Checkpoint {
                    base: active.base,
                    position: active.size,
                    offset: active.next_offset,
                })
            }
            _ => None,
        };
        // A checkpoint ahead of a log that lost nothing (it named an empty segment that
        // is gone) would hold back every later one and make a torn tail of the segment
        // written next look like damage: it is set back to the end found.
        let behind = match inner.segments.iter().next_back() {
            Some((_, active)) if inner.damage.is_none() => {
                let end = Checkpoint {
                    base: active.base,
                    position: active.size,
                    offset: active.next_offset,
                };
                checkpoint.filter(|c| *c > end).map(|_| end)
            }
            _ => None,
        };
        drop(inner);
        log.open_checkpoint(durable)?;
        if let Some(end) = behind {
            log.reset_durable(end);
        }
        *log.synced.lock().unwrap_or_else(PoisonError::into_inner) = next;
        log.visible.store(next, Ordering::Release);
        Ok((log, report))
    }

    /// Records that the log lost synced records: damage at the end found, so reads
    /// there and every write are refused and no offset is handed out twice.
    fn note_lost(&self, inner: &mut Inner, report: &mut RecoveryReport, lost: LostDurable, found: &str) {
        inner.next_offset = lost.found_end;
        let message = format!(
            "{}: the records below offset {} were synced, but the log {found} and holds only those below {}: {} record(s) lost",
            self.dir.display(),
            lost.durable_end,
            lost.found_end,
            lost.durable_end.saturating_sub(lost.found_end)
        );
        tracing::error!(partition = %self.dir.display(), damage = %message, "log lost synced records: readable up to them, writes refused");
        report.damage = Some(message.clone());
        report.lost = Some(lost);
        inner.damage = Some(Damage {
            offset: lost.found_end,
            message,
        });
    }

    /// Verifies a segment batch by batch, rebuilding its index. A bad batch in the last
    /// segment past its synced position is a torn tail (cut off); anywhere else it is
    /// damage (reported, kept), see [`is_torn_tail`].
    fn scan(
        &self,
        segment: &mut Segment,
        is_last: bool,
        checkpoint: Option<Checkpoint>,
        report: &mut RecoveryReport,
        inner: &mut Inner,
    ) -> Result<()> {
        let mut pos = 0u64;
        let mut expected = segment.base;
        let mut max_ts = i64::MIN;
        let mut index = Vec::new();
        let mut last_indexed: Option<u64> = None;
        let mut failure = None;
        while pos < segment.size {
            match read_batch(&*segment.file, pos, segment.size, self.config.max_batch_body) {
                Ok((header, _)) if header.base_offset == expected => {
                    if last_indexed.is_none_or(|p| pos - p >= self.config.index_interval) {
                        index.push(IndexEntry {
                            offset: header.base_offset,
                            position: pos,
                            max_ts_before: max_ts,
                        });
                        last_indexed = Some(pos);
                    }
                    max_ts = max_ts.max(header.max_timestamp);
                    expected = header.next_offset();
                    pos += header.total_len() as u64;
                }
                Ok((header, _)) => {
                    failure = Some(format!(
                        "batch at byte {pos} has offset {} where {expected} was expected",
                        header.base_offset
                    ));
                    break;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        segment.index = index;
        segment.next_offset = expected;
        segment.max_ts = max_ts;
        let Some(why) = failure else {
            return Ok(());
        };
        // Past the last synced position, a power loss may have kept later pages and lost
        // earlier ones (writeback has no order): damage there is a torn tail, whatever
        // follows it. Before it, the bytes were durable: damage is real and reported.
        let at = Checkpoint {
            base: segment.base,
            position: pos,
            offset: expected,
        };
        if !is_torn_tail(is_last, at, checkpoint, || {
            self.valid_batch_after(segment, pos, expected)
        }) {
            let mut message = format!("{} at byte {pos}: {why}", segment.path.display());
            // The last segment damaged before its synced end: the log ends early.
            if let Some(c) = checkpoint.filter(|c| is_last && c.offset > expected) {
                report.lost = Some(LostDurable {
                    durable_end: c.offset,
                    found_end: expected,
                });
                message = format!(
                    "{message}; the records below offset {} were synced, only those below {expected} are readable",
                    c.offset
                );
            }
            inner.damage = Some(Damage {
                offset: expected,
                message,
            });
            return Ok(());
        }
        let cut = segment.size - pos;
        tracing::warn!(segment = %segment.path.display(), position = pos, bytes = cut, reason = %why, "truncating torn tail");
        segment
            .file
            .set_len(pos)
            .map_err(|e| io_error("truncating", &segment.path, e))?;
        segment
            .file
            .sync_data()
            .map_err(|e| io_error("syncing", &segment.path, e))?;
        segment.size = pos;
        segment.written = pos;
        report.truncated_bytes += cut;
        Ok(())
    }

    /// Whether a whole, valid batch with an offset at or past `expected` starts
    /// anywhere after `pos`: then the damage at `pos` is not a torn tail.
    fn valid_batch_after(&self, segment: &Segment, pos: u64, expected: u64) -> bool {
        let mut at = pos + 1;
        let mut buf = vec![0u8; READ_CHUNK];
        while at + HEADER_LEN as u64 <= segment.size {
            let Ok(n) = segment.file.read_at(&mut buf, at) else {
                return false;
            };
            if n < HEADER_LEN {
                return false;
            }
            for i in 0..=n - HEADER_LEN {
                if buf[i..i + 4] == *b"TRB\x01" {
                    let candidate = at + i as u64;
                    if let Ok((h, _)) = read_batch(
                        &*segment.file,
                        candidate,
                        segment.size,
                        self.config.max_batch_body,
                    ) && h.base_offset >= expected
                    {
                        return true;
                    }
                }
            }
            at += (n - HEADER_LEN + 1) as u64;
        }
        false
    }

    fn new_segment(&self, inner: &mut Inner, base: u64) -> Result<()> {
        let path = segment_path(&self.dir, base);
        let file = self
            .storage
            .open(&path, true)
            .map_err(|e| io_error("creating", &path, e))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| io_error("syncing", &self.dir, e))?;
        inner.segments.insert(
            base,
            Segment {
                base,
                path,
                file,
                size: 0,
                written: 0,
                next_offset: base,
                max_ts: i64::MIN,
                index: Vec::new(),
                created: Instant::now(),
            },
        );
        Ok(())
    }

    /// Makes the active segment's data durable and saves its index, so the next open
    /// needs no scan of it.
    fn save_active(&self, inner: &Inner) -> Result<()> {
        if let Some((_, active)) = inner.segments.iter().next_back() {
            active
                .file
                .sync_data()
                .map_err(|e| io_error("syncing", &active.path, e))?;
            write_atomic(&*self.storage, &active.index_path(), &active.index_bytes())
                .map_err(|e| io_error("writing the index of", &active.path, e))?;
        }
        Ok(())
    }

    /// Seals the active segment (data and index durable) and starts a new one.
    fn roll(&self, inner: &mut Inner) -> Result<()> {
        self.write_out(inner)?;
        let next = inner.next_offset;
        self.save_active(inner)?;
        self.new_segment(inner, next)?;
        self.record_durable(Checkpoint {
            base: next,
            position: 0,
            offset: next,
        });
        Ok(())
    }

    fn check_writable(inner: &Inner) -> Result<()> {
        if let Some(why) = &inner.poisoned {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the partition refuses writes after a failed write or sync ({why}); reopen the engine to recover"
                ),
            ));
        }
        if let Some(d) = &inner.damage {
            return Err(Error::new(
                ErrorKind::Corruption,
                format!("the partition is damaged and takes no writes: {}", d.message),
            ));
        }
        Ok(())
    }

    /// Appends `records` (already checked against size limits) in batches of about
    /// 256 KiB, and returns the offset of the first record. The data is written
    /// (in the page cache) when this returns; call [`sync_to`](Self::sync_to) for more.
    pub(crate) fn append(&self, records: &[Record], now: Timestamp) -> Result<u64> {
        let mut inner = self.lock();
        Self::check_writable(&inner)?;
        let first = inner.next_offset;
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len() {
                let size = codec::encoded_record_len(&records[end]);
                if end > start && bytes + size > BATCH_TARGET {
                    break;
                }
                bytes += size;
                end += 1;
            }
            self.append_batch(&mut inner, &records[start..end], now)?;
            start = end;
        }
        Ok(first)
    }

    fn append_batch(&self, inner: &mut Inner, records: &[Record], now: Timestamp) -> Result<()> {
        let needs_roll = inner.segments.values().next_back().is_some_and(|s| {
            s.size >= self.config.segment_bytes
                || (s.size > 0
                    && self
                        .config
                        .segment_age
                        .is_some_and(|age| s.created.elapsed() >= age))
        });
        if needs_roll && let Err(e) = self.roll(inner) {
            inner.poisoned = Some(e.to_string());
            return Err(e);
        }
        let base = inner.next_offset;
        let needed = HEADER_LEN + records.iter().map(codec::encoded_record_len).sum::<usize>();
        if inner.arena.capacity() < needed {
            inner.arena.reserve(needed.max(ARENA_BYTES));
        }
        let header = codec::encode_batch(&mut inner.arena, base, records, now);
        let bytes = inner.arena.split().freeze();
        let Some((_, active)) = inner.segments.iter_mut().next_back() else {
            return Err(Error::new(ErrorKind::Backend, "a partition without a segment"));
        };
        if !self.config.buffered {
            if let Err(e) = active.file.write_all_at(&bytes, active.size) {
                let err = io_error("writing", &active.path, e);
                inner.poisoned = Some(err.to_string());
                return Err(err);
            }
            active.written += bytes.len() as u64;
        }
        let is_first = active.index.is_empty();
        let since_index = active.index.last().map_or(u64::MAX, |e| active.size - e.position);
        if is_first || since_index >= self.config.index_interval {
            active.index.push(IndexEntry {
                offset: base,
                position: active.size,
                max_ts_before: active.max_ts,
            });
        }
        active.size += bytes.len() as u64;
        active.max_ts = active.max_ts.max(header.max_timestamp);
        active.next_offset = header.next_offset();
        inner.next_offset = header.next_offset();
        inner.dirty = true;
        inner.cache_bytes += bytes.len();
        inner.cache.push_back(Cached {
            header,
            bytes: bytes.clone(),
            decoded: Arc::default(),
        });
        if self.config.buffered {
            inner.unwritten_bytes += bytes.len();
            inner.unwritten.push(bytes);
            if inner.unwritten_bytes >= BATCH_TARGET {
                self.write_out(inner)?;
            }
        } else {
            inner.written_offset = inner.next_offset;
        }
        if !self.config.read_synced_only {
            self.visible.store(inner.next_offset, Ordering::Release);
        }
        // Unwritten batches stay: until written, the cache is the only copy readers have.
        while inner.cache_bytes > self.config.cache_bytes
            && inner.cache.len() > 1
            && inner
                .cache
                .front()
                .is_some_and(|c| c.header.next_offset() <= inner.written_offset)
        {
            if let Some(old) = inner.cache.pop_front() {
                inner.cache_bytes -= old.bytes.len();
            }
        }
        Ok(())
    }

    /// Writes the batches waiting in memory (durability `memory`) in one write().
    fn write_out(&self, inner: &mut Inner) -> Result<()> {
        if inner.unwritten.is_empty() {
            return Ok(());
        }
        Self::check_writable(inner)?;
        let mut joined = BytesMut::with_capacity(inner.unwritten_bytes);
        for b in &inner.unwritten {
            joined.extend_from_slice(b);
        }
        let Some((_, active)) = inner.segments.iter_mut().next_back() else {
            return Err(Error::new(ErrorKind::Backend, "a partition without a segment"));
        };
        if let Err(e) = active.file.write_all_at(&joined, active.written) {
            let err = io_error("writing", &active.path, e);
            inner.poisoned = Some(err.to_string());
            return Err(err);
        }
        active.written += joined.len() as u64;
        inner.unwritten.clear();
        inner.unwritten_bytes = 0;
        inner.written_offset = inner.next_offset;
        Ok(())
    }

    /// Writes out what waits in memory (durability `memory`); the background thread
    /// calls this every flush interval.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut inner = self.lock();
        self.write_out(&mut inner)
    }

    /// Blocks until everything below `target` is durable, syncing if no one else is.
    /// Many callers share one sync (group commit). After a failed sync the partition
    /// is poisoned and every caller gets the error; the sync is never retried.
    pub(crate) fn sync_to(&self, target: u64) -> Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if *synced >= target {
            return Ok(());
        }
        let (file, path, upto, durable) = {
            let mut inner = self.lock();
            self.write_out(&mut inner)?;
            if let Some(why) = &inner.poisoned {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("not durable: an earlier failure ({why})"),
                ));
            }
            let Some((_, active)) = inner.segments.iter().next_back() else {
                return Ok(());
            };
            let found = (
                active.file.clone(),
                active.path.clone(),
                inner.next_offset,
                Checkpoint {
                    base: active.base,
                    position: active.written,
                    offset: inner.written_offset,
                },
            );
            inner.dirty = false;
            found
        };

        match file.sync_data() {
            Ok(()) => {
                *synced = upto;
                self.record_durable(durable);
                if self.config.read_synced_only {
                    self.visible.fetch_max(upto, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(e) => {
                let err = io_error("syncing", &path, e);
                self.lock().poisoned = Some(err.to_string());
                Err(err)
            }
        }
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

    /// Up to `max` records from offset `from` (moved up to the oldest retained record
    /// if retention removed it). Empty at the end of the log. Disk reads go through
    /// `scratch`: records are slices of it, and its memory is reused by the next read
    /// once they are dropped (fresh 256 KiB buffers cost a page fault per 4 KiB).
    pub(crate) fn read(&self, from: u64, max: usize, scratch: &mut BytesMut) -> Result<Vec<DecodedRecord>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let (cached, disk) = {
            let inner = self.lock();
            let low = inner.segments.keys().next().copied().unwrap_or(inner.next_offset);
            let from = from.max(low);
            if let Some(d) = &inner.damage
                && from >= d.offset
            {
                return Err(Error::new(ErrorKind::Corruption, d.message.clone()));
            }
            let visible = self.visible.load(Ordering::Acquire).min(inner.next_offset);
            if from >= visible {
                return Ok(Vec::new());
            }
            let cache_start = inner.cache.front().map_or(u64::MAX, |c| c.header.base_offset);
            if from >= cache_start {
                // Ordered by offset: find the first batch holding `from` by bisection.
                let first = inner.cache.partition_point(|c| c.header.next_offset() <= from);
                let batches: Vec<Cached> = inner
                    .cache
                    .range(first..)
                    .take_while(|c| c.header.base_offset < visible)
                    .scan(0usize, |taken, c| {
                        (*taken < max).then(|| {
                            *taken += c.header.record_count as usize;
                            c.clone()
                        })
                    })
                    .collect();
                (Some((from, batches)), None)
            } else {
                let Some((_, segment)) = inner.segments.range(..=from).next_back() else {
                    return Ok(Vec::new());
                };
                let limit = inner.damage.as_ref().map_or(visible, |d| d.offset.min(visible));
                (
                    None,
                    Some((
                        from,
                        segment.file.clone(),
                        segment.path.clone(),
                        segment.position_for(from),
                        segment.written,
                        limit,
                    )),
                )
            }
        };
        if let Some((from, batches)) = cached {
            let mut out = Vec::with_capacity(max.min(4096));
            for cached in batches {
                let records = cached
                    .records()
                    .map_err(|e| Error::new(ErrorKind::Corruption, format!("cached batch: {e}")))?;
                let skip = from.saturating_sub(cached.header.base_offset) as usize;
                let room = max - out.len();
                out.extend(records.iter().skip(skip).take(room).cloned());
            }
            return Ok(out);
        }
        let Some((from, file, path, pos, size, limit)) = disk else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let span = DiskSpan {
            from,
            file: &*file,
            path: &path,
            pos,
            size,
            limit,
        };
        match self.read_disk(span, max, scratch, &mut out) {
            // What was read before the damage is returned; the next read starts at it.
            Err(e) if out.is_empty() => Err(e),
            _ => {
                out.truncate(max);
                Ok(out)
            }
        }
    }

    /// The offset of the first record whose timestamp is at least `t`, or the next
    /// offset if there is none.
    pub(crate) fn offset_for_timestamp(&self, t: Timestamp) -> Result<u64> {
        let t = t.as_millis();
        let candidate = {
            let inner = self.lock();
            let found = inner.segments.values().find(|s| s.max_ts >= t).map(|s| {
                let i = s.index.partition_point(|e| e.max_ts_before < t);

                if i == 0 { s.base } else { s.index[i - 1].offset }
            });
            match found {
                Some(start) => start,
                None => return Ok(inner.next_offset),
            }
        };
        let mut from = candidate;
        let mut scratch = BytesMut::new();
        loop {
            let records = self.read(from, 1024, &mut scratch)?;
            let Some(last) = records.last() else {
                return Ok(self.next_offset());
            };
            if let Some(r) = records.iter().find(|r| r.timestamp.as_millis() >= t) {
                return Ok(r.offset);
            }
            from = last.offset + 1;
        }
    }

    /// Reads records of one segment file into `out`, batch by batch from `span.pos`,
    /// stopping before `span.limit`, at `max` records or at the end of what was written.
    fn read_disk(
        &self,
        span: DiskSpan<'_>,
        max: usize,
        scratch: &mut BytesMut,
        out: &mut Vec<DecodedRecord>,
    ) -> Result<()> {
        let DiskSpan {
            from,
            file,
            path,
            mut pos,
            size,
            limit,
        } = span;
        while out.len() < max && pos < size {
            let want = READ_CHUNK.min((size - pos) as usize);
            scratch.clear();
            scratch.reserve(want);
            scratch.resize(want, 0);
            let n = file
                .read_at(scratch, pos)
                .map_err(|e| io_error("reading", path, e))?;
            scratch.truncate(n);
            let chunk = scratch.split().freeze();
            let mut at = 0usize;
            while out.len() < max && at < chunk.len() {
                let header = match codec::decode_header(&chunk[at..], self.config.max_batch_body) {
                    Ok(h) => h,
                    Err(DecodeError::Truncated { .. }) if at > 0 => break,
                    Err(e) => return Err(corruption(path, pos + at as u64, &e)),
                };
                if at + header.total_len() > chunk.len() {
                    if at > 0 {
                        break;
                    }
                    // One batch larger than a chunk: read it whole.
                    let (h, whole) = read_batch(file, pos, size, self.config.max_batch_body)
                        .map_err(|e| corruption(path, pos, &e))?;
                    if h.base_offset >= limit {
                        return Ok(());
                    }
                    out.extend(
                        codec::decode_records(&h, &whole, from).map_err(|e| corruption(path, pos, &e))?,
                    );
                    at = h.total_len();
                    break;
                }
                if header.base_offset >= limit {
                    return Ok(());
                }
                let batch = chunk.slice(at..at + header.total_len());
                if header.next_offset() > from {
                    let records = codec::decode_records(&header, &batch, from)
                        .map_err(|e| corruption(path, pos + at as u64, &e))?;
                    out.extend(records);
                }
                at += header.total_len();
            }
            if at == 0 {
                break;
            }
            pos += at as u64;
        }
        Ok(())
    }

    /// Deletes whole segments (never the active one) beyond the size or age limits.
    pub(crate) fn enforce_retention(&self, now: Timestamp) -> Result<u64> {
        let mut removed = 0;
        loop {
            let victim = {
                let inner = self.lock();
                // Segments past damage were never scanned (their times are unknown):
                // a damaged partition is kept whole for someone to look at.
                if inner.segments.len() < 2 || inner.damage.is_some() {
                    return Ok(removed);
                }
                let total: u64 = inner.segments.values().map(|s| s.size).sum();
                let Some((_, first)) = inner.segments.iter().next() else {
                    return Ok(removed);
                };
                let too_big = self.config.retention_bytes.is_some_and(|max| total > max);
                let too_old = self
                    .config
                    .retention
                    .is_some_and(|age| first.max_ts < now.saturating_sub(age).as_millis());
                if !(too_big || too_old) {
                    return Ok(removed);
                }
                first.base
            };
            let mut inner = self.lock();
            if let Some(segment) = inner.segments.remove(&victim) {
                inner
                    .cache
                    .retain(|c| c.header.base_offset >= segment.next_offset);
                inner.cache_bytes = inner.cache.iter().map(|c| c.bytes.len()).sum();
                drop(inner);
                let _ = self.storage.remove_file(&segment.index_path());
                self.storage
                    .remove_file(&segment.path)
                    .map_err(|e| io_error("removing", &segment.path, e))?;
                removed += 1;
            }
        }
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

/// Reads and checks one whole batch at `pos` of a file `size` bytes long.
fn read_batch(
    file: &dyn StorageFile,
    pos: u64,
    size: u64,
    max_body: usize,
) -> Result<(BatchHeader, Bytes), DecodeError> {
    let mut head = [0u8; HEADER_LEN];
    let available = size.saturating_sub(pos);
    if available < HEADER_LEN as u64 {
        return Err(DecodeError::Truncated { need: HEADER_LEN });
    }
    match file.read_at(&mut head, pos) {
        Ok(n) if n == HEADER_LEN => {}
        _ => return Err(DecodeError::Truncated { need: HEADER_LEN }),
    }
    let header = codec::decode_header(&head, max_body)?;
    if (header.total_len() as u64) > available {
        return Err(DecodeError::Truncated {
            need: header.total_len(),
        });
    }
    let mut buf = vec![0u8; header.total_len()];
    match file.read_at(&mut buf, pos) {
        Ok(n) if n == buf.len() => {}
        _ => return Err(DecodeError::Truncated { need: buf.len() }),
    }
    let bytes = Bytes::from(buf);
    codec::check_body(&header, &bytes)?;
    Ok((header, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: u64, position: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            base,
            position,
            offset,
        }
    }

    fn end(base: u64, size: u64, offset: u64) -> LogEnd {
        LogEnd { base, size, offset }
    }

    #[test]
    fn checkpoints_round_trip_and_the_newest_valid_slot_wins() {
        let mut file = [0u8; 2 * CHECKPOINT_SLOT];
        file[..CHECKPOINT_SLOT].copy_from_slice(&encode_checkpoint(4, at(1, 2, 3)));
        file[CHECKPOINT_SLOT..].copy_from_slice(&encode_checkpoint(5, at(1, 9, 7)));
        assert_eq!(decode_checkpoint(&file), Some((5, at(1, 9, 7))));
        // A torn newer slot leaves the older one.
        file[CHECKPOINT_SLOT + 20] ^= 1;
        assert_eq!(decode_checkpoint(&file), Some((4, at(1, 2, 3))));
        file[20] ^= 1;
        assert_eq!(decode_checkpoint(&file), None);
        assert_eq!(decode_checkpoint(&file[..10]), None);
    }

    #[test]
    fn a_log_ending_before_its_checkpoint_has_lost_synced_records() {
        let synced = Some(at(100, 5000, 180));
        let lost = |e| lost_durable(e, synced);
        assert_eq!(lost(end(100, 5000, 180)), None, "ends where it was synced");
        assert_eq!(lost(end(100, 9000, 250)), None, "more than was synced: a crash");
        assert_eq!(lost(end(300, 0, 300)), None, "a later segment");
        let cut = LostDurable {
            durable_end: 180,
            found_end: 140,
        };
        assert_eq!(lost(end(100, 2500, 140)), Some(cut), "cut at a batch boundary");
        assert_eq!(
            lost(end(100, 0, 100)),
            Some(LostDurable {
                durable_end: 180,
                found_end: 100
            }),
            "cut to zero"
        );
        assert_eq!(
            lost(end(0, 4000, 100)),
            Some(LostDurable {
                durable_end: 180,
                found_end: 100
            }),
            "the last segment removed"
        );
        // A segment rolled at 180 and synced empty, then removed: nothing was in it.
        assert_eq!(lost_durable(end(100, 5000, 180), Some(at(180, 0, 180))), None);
        assert_eq!(
            lost(end(100, 4990, 180)).map(|l| l.found_end),
            Some(180),
            "bytes short"
        );
        assert_eq!(lost_durable(end(0, 0, 0), None), None, "nothing known");
        assert_eq!(lost_durable(end(0, 0, 0), Some(Checkpoint::default())), None);
    }

    #[test]
    fn only_damage_past_the_synced_position_of_the_last_segment_is_a_torn_tail() {
        let synced = Some(at(100, 5000, 180));
        let never = || -> bool { panic!("the checkpoint decides") };
        assert!(is_torn_tail(true, at(100, 5000, 180), synced, never));
        assert!(is_torn_tail(true, at(100, 7000, 200), synced, never));
        assert!(!is_torn_tail(true, at(100, 4999, 170), synced, never));
        assert!(
            !is_torn_tail(true, at(0, 9000, 90), synced, never),
            "an older segment"
        );
        assert!(
            !is_torn_tail(false, at(100, 7000, 200), synced, never),
            "not the last"
        );
        // Without a checkpoint, a valid batch after the damage makes it real.
        assert!(is_torn_tail(true, at(100, 10, 101), None, || false));
        assert!(!is_torn_tail(true, at(100, 10, 101), None, || true));
    }
}
