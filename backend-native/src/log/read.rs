//! Reading: from the cache of recent batches when caught up, else from disk through a
//! reused buffer, checking every batch read; and finding an offset by timestamp.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use tributary_core::{Error, ErrorKind, Result, Timestamp};

use crate::codec;
use crate::codec::{BatchHeader, DecodeError, DecodedRecord, HEADER_LEN};
use crate::storage::StorageFile;

use super::{PartitionLog, READ_CHUNK, corruption, io_error};

/// A recent batch kept in memory, decoded at most once for all readers.
#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub(super) header: BatchHeader,
    pub(super) bytes: Bytes,
    pub(super) decoded: Arc<OnceLock<Result<Arc<[DecodedRecord]>, DecodeError>>>,
}

impl Cached {
    pub(super) fn records(&self) -> Result<&Arc<[DecodedRecord]>, DecodeError> {
        self.decoded
            .get_or_init(|| codec::parse_records(&self.header, &self.bytes, 0).map(Arc::from))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Where a read from disk goes: records from offset `from`, in `file` from byte `pos`
/// up to `size` (what was written), none at or past offset `limit`.
pub(super) struct DiskSpan<'a> {
    pub(super) from: u64,
    pub(super) file: &'a dyn StorageFile,
    pub(super) path: &'a Path,
    pub(super) pos: u64,
    pub(super) size: u64,
    pub(super) limit: u64,
}

impl PartitionLog {
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
    pub(super) fn read_disk(
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
}

/// Reads and checks one whole batch at `pos` of a file `size` bytes long.
pub(super) fn read_batch(
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
