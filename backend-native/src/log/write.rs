//! Appending: batching records into the arena, writing them out (at once or, in
//! `memory` durability, once 256 KiB gather), rolling segments, and group-committed
//! syncs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use bytes::BytesMut;
use tributary_core::{Error, ErrorKind, Record, Result, Timestamp};

use crate::codec;
use crate::codec::HEADER_LEN;
use crate::storage::write_atomic;

use super::checkpoint::Checkpoint;
use super::read::Cached;
use super::segment::{IndexEntry, Segment, segment_path};
use super::{ARENA_BYTES, BATCH_TARGET, Inner, PartitionLog, io_error};

impl PartitionLog {
    pub(super) fn new_segment(&self, inner: &mut Inner, base: u64) -> Result<()> {
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
    pub(super) fn save_active(&self, inner: &Inner) -> Result<()> {
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
    pub(super) fn roll(&self, inner: &mut Inner) -> Result<()> {
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

    pub(super) fn check_writable(inner: &Inner) -> Result<()> {
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
    /// A failure after the first batch is `Indeterminate`: some records were appended.
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
            if let Err(e) = self.append_batch(&mut inner, &records[start..end], now) {
                if start == 0 {
                    return Err(e);
                }
                // Earlier batches of this call are readable already: the caller must
                // not take the records for unsent and send them again.
                let message = format!(
                    "{start} of these {} records were appended (and are readable) before a write failed, so any of them may be in the log: {}",
                    records.len(),
                    e.message()
                );
                return Err(Error::new(ErrorKind::Indeterminate, message).with_source(e));
            }
            start = end;
        }
        Ok(first)
    }

    pub(super) fn append_batch(&self, inner: &mut Inner, records: &[Record], now: Timestamp) -> Result<()> {
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
    pub(super) fn write_out(&self, inner: &mut Inner) -> Result<()> {
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
}
