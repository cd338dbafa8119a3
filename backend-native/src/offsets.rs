//! Group commits, persisted in one engine-wide log of batches (the same format as
//! partitions): each commit appends `(group, stream, partition) → next offset`; a
//! deleted stream's commits are dropped by a tombstone. The log is rewritten compactly
//! when it grows, and replayed at open (a torn tail is cut off).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tributary_core::{Error, ErrorKind, Record, Result, Timestamp};

use crate::codec::{self, HEADER_LEN};
use crate::mark;
use crate::storage::{Storage, StorageFile, write_atomic};

/// Rewrite the log once it is this large, and at least twice its live size.
const COMPACT_AT: u64 = 16 * 1024 * 1024;
/// Records per batch when rewriting, so no batch nears the decoder's size limit.
const SNAPSHOT_BATCH: usize = 8 * 1024;
/// A commit moved back to the end of its partition's log by recovery.
#[derive(Debug)]
pub(crate) struct MovedCommit {
    pub stream: String,
    pub group: String,
    pub partition: u32,
    pub was: u64,
    pub now: u64,
}

/// A stream's commits, by group, then partition.
pub(crate) type StreamCommits = BTreeMap<String, BTreeMap<u32, u64>>;

#[derive(Debug)]
pub(crate) struct OffsetStore {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    file: Arc<dyn StorageFile>,
    size: u64,
    sync: bool,
    /// stream → group → partition → next offset.
    state: BTreeMap<String, StreamCommits>,
    /// Bytes of the last rewrite: the log is compacted again past twice this.
    live_size: u64,
    /// Set when a rewrite failed after the rename: the file handle may no longer be
    /// the file at `path`, so nothing more is accepted until reopen.
    failed: Option<String>,
    /// Bytes of damaged log dropped at open, and bytes the log had synced but lacked
    /// (the commits in them are gone).
    pub dropped_at_open: u64,
    /// How many bytes of the log were synced, for the next open to compare.
    synced: SyncedMark,
}

const SYNCED_MAGIC: [u8; 4] = *b"TRS\x01";

/// The synced length of the commits log, kept beside it (`commits.synced`) as a
/// [`mark`](crate::mark): a log found shorter than it has lost synced commits.
#[derive(Debug)]
struct SyncedMark {
    file: Arc<dyn StorageFile>,
    seq: u64,
}

impl SyncedMark {
    /// Opens (creating) the mark; returns it and the length it holds, if readable.
    fn open(path: &std::path::Path, storage: &dyn Storage) -> std::io::Result<(Self, Option<u64>)> {
        let file = storage.open(path, true)?;
        let mut bytes = vec![0u8; 2 * mark::slot_len(1)];
        let n = file.read_at(&mut bytes, 0)?;
        let found = mark::decode::<1>(SYNCED_MAGIC, &bytes[..n]);
        let seq = found.map_or(0, |(seq, _)| seq);
        Ok((Self { file, seq }, found.map(|(_, [len])| len)))
    }

    /// Records `len` (written without a sync: a lost write leaves the older slot).
    fn record(&mut self, len: u64) {
        let seq = self.seq + 1;
        match self
            .file
            .write_all_at(&mark::encode(SYNCED_MAGIC, seq, [len]), mark::position(seq, 1))
        {
            Ok(()) => self.seq = seq,
            Err(e) => tracing::warn!(error = %e, "could not record the synced length of the offsets log"),
        }
    }
}

fn key(group: &str, stream: &str, partition: Option<u32>) -> Bytes {
    let p = partition.map_or(String::new(), |p| p.to_string());
    Bytes::from(format!("{group}\0{stream}\0{p}"))
}

impl OffsetStore {
    /// Opens (or creates) the log at `path` and replays it.
    pub(crate) fn open(path: PathBuf, storage: Arc<dyn Storage>, sync: bool) -> Result<Self> {
        let io =
            |e: std::io::Error| Error::new(ErrorKind::Io, format!("offsets log {}: {e}", path.display()));
        let file = storage.open(&path, true).map_err(io)?;
        if let Some(dir) = path.parent() {
            storage.sync_dir(dir).map_err(io)?;
        }
        let len = file.size().map_err(io)?;
        let mut buf =
            vec![0u8; usize::try_from(len).map_err(|_| Error::new(ErrorKind::Io, "offsets log too large"))?];
        let n = file.read_at(&mut buf, 0).map_err(io)?;
        buf.truncate(n);
        let bytes = Bytes::from(buf);
        let mut state: BTreeMap<String, StreamCommits> = BTreeMap::new();
        let mut pos = 0usize;
        while pos < bytes.len() {
            let Ok(header) = codec::decode_header(&bytes[pos..], 1 << 24) else {
                break;
            };
            let end = pos + header.total_len();
            if end > bytes.len() {
                break;
            }
            let Ok(records) = codec::decode_records(&header, &bytes.slice(pos..end), 0) else {
                break;
            };
            for r in records {
                apply(&mut state, &r.key.unwrap_or_default(), &r.value);
            }
            pos = end;
        }
        let damaged = (pos as u64) < len;
        let (synced, synced_len) = SyncedMark::open(&path.with_extension("synced"), &*storage).map_err(io)?;
        if let Some(dir) = path.parent() {
            storage.sync_dir(dir).map_err(io)?;
        }
        // Synced bytes missing: the log was cut where no torn tail can be.
        let missing = synced_len.map_or(0, |synced| synced.saturating_sub(len));
        if missing > 0 {
            tracing::error!(path = %path.display(), missing, "the offsets log is shorter than it was synced: commits lost, groups resume from older ones");
        }
        let mut store = Self {
            path,
            storage,
            file,
            size: pos as u64,
            sync,
            state,
            live_size: 0,
            failed: None,
            dropped_at_open: len - pos as u64 + missing,
            synced,
        };
        if missing > 0 && !damaged {
            store.synced.record(len);
        }
        if damaged {
            // A torn tail, or damage in the middle: either way the commits after it are
            // gone, and groups resume from older ones (redelivery, never a skip). The
            // log is rewritten so later commits do not land after the bad bytes.
            tracing::warn!(path = %store.path.display(), dropped = len - pos as u64, "the offsets log ends in damaged bytes: rewriting it from what was readable");
            store.compact()?;
        }
        Ok(store)
    }

    /// Caps every commit at its partition's end (`ends`: stream → next offset per
    /// partition) and drops commits of streams or partitions that do not exist.
    /// Returns the commits moved.
    ///
    /// # Errors
    /// The caps could not be persisted.
    pub(crate) fn reconcile(&mut self, ends: &BTreeMap<String, Vec<u64>>) -> Result<Vec<MovedCommit>> {
        let mut moved = Vec::new();
        self.state.retain(|stream, _| ends.contains_key(stream));
        for (stream, groups) in &mut self.state {
            let partition_ends = &ends[stream];
            for (group, commits) in groups.iter_mut() {
                commits.retain(|p, _| (*p as usize) < partition_ends.len());
                for (p, next) in commits.iter_mut() {
                    let end = partition_ends[*p as usize];
                    if *next > end {
                        moved.push(MovedCommit {
                            stream: stream.clone(),
                            group: group.clone(),
                            partition: *p,
                            was: *next,
                            now: end,
                        });
                        *next = end;
                    }
                }
            }
        }
        // Persisted: replay keeps the last value written for each key.
        let records: Vec<Record> = moved
            .iter()
            .map(|m| {
                let mut r = Record::new(Bytes::copy_from_slice(&m.now.to_le_bytes()));
                r.key = Some(key(&m.group, &m.stream, Some(m.partition)));
                r
            })
            .collect();
        if !records.is_empty() {
            self.append(&records)?;
            self.sync()?;
        }
        Ok(moved)
    }

    /// The commits of every group of `stream`.
    pub(crate) fn stream(&self, stream: &str) -> StreamCommits {
        self.state.get(stream).cloned().unwrap_or_default()
    }

    /// Persists commits of `group` on `stream`: `(partition, next offset)`. Only
    /// commits above the one recorded are written: commits of one partition may arrive
    /// out of order (they are persisted outside the groups lock), and the group's
    /// position never moves back.
    pub(crate) fn commit(&mut self, group: &str, stream: &str, commits: &[(u32, u64)]) -> Result<()> {
        let recorded = self.state.get(stream).and_then(|groups| groups.get(group));
        let commits: Vec<(u32, u64)> = commits
            .iter()
            .copied()
            .filter(|(p, next)| recorded.and_then(|r| r.get(p)).is_none_or(|was| next > was))
            .collect();
        if commits.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = commits
            .iter()
            .map(|(p, next)| {
                let mut r = Record::new(Bytes::copy_from_slice(&next.to_le_bytes()));
                r.key = Some(key(group, stream, Some(*p)));
                r
            })
            .collect();
        self.append(&records)?;
        for (p, next) in &commits {
            let slot = self
                .state
                .entry(stream.to_owned())
                .or_default()
                .entry(group.to_owned())
                .or_default()
                .entry(*p)
                .or_insert(0);
            *slot = (*slot).max(*next);
        }
        Ok(())
    }

    /// Forgets every commit on `stream` (it was deleted).
    pub(crate) fn drop_stream(&mut self, stream: &str) -> Result<()> {
        if self.state.remove(stream).is_none() {
            return Ok(());
        }
        let mut r = Record::new(Bytes::new());
        r.key = Some(key("", stream, None));
        self.append(&[r])?;
        // Whatever the durability mode: a later stream of the same name must not
        // inherit these commits.
        self.sync()
    }

    fn append(&mut self, records: &[Record]) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::new(
                ErrorKind::Io,
                format!("the offsets log refuses commits after {why}; reopen the engine"),
            ));
        }
        let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("offsets log: {e}"));
        let mut buf = BytesMut::with_capacity(HEADER_LEN + records.len() * 64);
        codec::encode_batch(&mut buf, 0, records, Timestamp::now());
        self.file.write_all_at(&buf, self.size).map_err(io)?;
        self.size += buf.len() as u64;
        if self.sync {
            self.file.sync_data().map_err(io)?;
            self.synced.record(self.size);
        }
        if self.size > COMPACT_AT.max(2 * self.live_size) {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the log as one batch of the current commits.
    fn compact(&mut self) -> Result<()> {
        let mut records = Vec::new();
        for (stream, groups) in &self.state {
            for (group, partitions) in groups {
                for (p, next) in partitions {
                    let mut r = Record::new(Bytes::copy_from_slice(&next.to_le_bytes()));
                    r.key = Some(key(group, stream, Some(*p)));
                    records.push(r);
                }
            }
        }
        let mut buf = BytesMut::new();
        for chunk in records.chunks(SNAPSHOT_BATCH) {
            codec::encode_batch(&mut buf, 0, chunk, Timestamp::now());
        }
        let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("compacting the offsets log: {e}"));
        // Until the rewrite is in place its length is unknown: nothing to compare.
        self.synced.record(0);
        if let Err(e) = write_atomic(&*self.storage, &self.path, &buf) {
            // The rename may have happened: the old handle may point at an unlinked file.
            self.failed = Some(format!("a failed rewrite ({e})"));
            return Err(io(e));
        }
        match self.storage.open(&self.path, false) {
            Ok(file) => self.file = file,
            Err(e) => {
                self.failed = Some(format!("a failed reopen after a rewrite ({e})"));
                return Err(io(e));
            }
        }
        self.size = buf.len() as u64;
        self.live_size = self.size;
        self.synced.record(self.size);
        Ok(())
    }

    /// Makes every commit durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::new(ErrorKind::Io, format!("offsets log: {e}")))?;
        self.synced.record(self.size);
        Ok(())
    }
}

fn apply(state: &mut BTreeMap<String, StreamCommits>, key: &[u8], value: &[u8]) {
    let text = String::from_utf8_lossy(key);
    let mut parts = text.split('\0');
    let (Some(group), Some(stream), Some(partition)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    if partition.is_empty() {
        state.remove(stream);
        return;
    }
    let (Ok(p), Ok(bytes)) = (partition.parse::<u32>(), <[u8; 8]>::try_from(value)) else {
        return;
    };
    // The last value wins: commits are appended only when they rise, except when a
    // recovery moved one back to the end of its log.
    state
        .entry(stream.to_owned())
        .or_default()
        .entry(group.to_owned())
        .or_default()
        .insert(p, u64::from_le_bytes(bytes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DiskStorage;

    #[test]
    fn commits_arriving_out_of_order_never_move_a_position_back_even_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commits.log");
        let storage: Arc<dyn Storage> = Arc::new(DiskStorage);
        let mut store = OffsetStore::open(path.clone(), storage.clone(), false).unwrap();
        store.commit("billing", "orders", &[(0, 10), (1, 4)]).unwrap();
        let size = store.size;
        // A commit made earlier but persisted later: nothing to write.
        store.commit("billing", "orders", &[(0, 7)]).unwrap();
        assert_eq!(store.size, size, "a stale commit is not appended");
        store.commit("billing", "orders", &[(0, 9), (1, 6)]).unwrap();
        let expected = BTreeMap::from([(0, 10), (1, 6)]);
        assert_eq!(store.stream("orders").get("billing"), Some(&expected));
        drop(store);
        let reopened = OffsetStore::open(path, storage, false).unwrap();
        assert_eq!(reopened.stream("orders").get("billing"), Some(&expected));
    }
}
