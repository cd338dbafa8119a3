//! A segment file and its sparse index: the index format, and finding where to read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::storage::{Storage, StorageFile, read_all};

pub(super) const INDEX_MAGIC: [u8; 4] = *b"TRI\x01";

pub(super) const INDEX_HEADER_LEN: usize = 40;

pub(super) const INDEX_ENTRY_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub(super) offset: u64,
    pub(super) position: u64,
    /// The largest timestamp of every record before this position in the segment.
    pub(super) max_ts_before: i64,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) base: u64,
    pub(super) path: PathBuf,
    pub(super) file: Arc<dyn StorageFile>,
    /// Bytes of batches appended, written or not: positions are in this space.
    pub(super) size: u64,
    /// Bytes actually written to the file; below `size` only in `memory` durability.
    pub(super) written: u64,
    pub(super) next_offset: u64,
    pub(super) max_ts: i64,
    pub(super) index: Vec<IndexEntry>,
    pub(super) created: Instant,
}

impl Segment {
    pub(super) fn index_path(&self) -> PathBuf {
        self.path.with_extension("idx")
    }

    /// Where to start reading to find `offset`: the last index entry at or before it.
    pub(super) fn position_for(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|e| e.offset <= offset);
        if i == 0 { 0 } else { self.index[i - 1].position }
    }

    pub(super) fn index_bytes(&self) -> Vec<u8> {
        encode_index(
            self.base,
            &ParsedIndex {
                size: self.size,
                next_offset: self.next_offset,
                max_ts: self.max_ts,
                entries: self.index.clone(),
            },
        )
    }

    /// Loads the index saved for this segment, if it is intact and describes the file
    /// as it is now (same size); otherwise the segment must be scanned.
    pub(super) fn load_index(&mut self, storage: &dyn Storage) -> bool {
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

/// What a segment's index file holds: the segment's size and next offset when it was
/// saved, its largest timestamp, and one entry per `index_interval` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParsedIndex {
    pub(super) size: u64,
    pub(super) next_offset: u64,
    pub(super) max_ts: i64,
    pub(super) entries: Vec<IndexEntry>,
}

/// The index file of a segment based at `base`.
pub(super) fn encode_index(base: u64, index: &ParsedIndex) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN + index.entries.len() * INDEX_ENTRY_LEN);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&[0; 4]); // checksum, below
    out.extend_from_slice(
        &u32::try_from(index.entries.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&index.size.to_le_bytes());
    out.extend_from_slice(&index.next_offset.to_le_bytes());
    out.extend_from_slice(&index.max_ts.to_le_bytes());
    for e in &index.entries {
        // Bounded: segments are at most 2 GiB and hold fewer than 2^32 records.
        out.extend_from_slice(&((e.offset - base) as u32).to_le_bytes());
        out.extend_from_slice(&(e.position as u32).to_le_bytes());
        out.extend_from_slice(&e.max_ts_before.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The index file of a segment based at `base`, if it is intact and consistent:
/// entries strictly increasing in offset and position, all inside the segment.
pub(super) fn parse_index(bytes: &[u8], base: u64) -> Option<ParsedIndex> {
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

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(u64, u64)]) -> ParsedIndex {
        ParsedIndex {
            size: 10_000,
            next_offset: 1_200,
            max_ts: 77,
            entries: entries
                .iter()
                .map(|&(offset, position)| IndexEntry {
                    offset,
                    position,
                    max_ts_before: offset as i64,
                })
                .collect(),
        }
    }

    #[test]
    fn an_index_round_trips_and_any_flipped_bit_is_refused() {
        let saved = index(&[(1_000, 0), (1_050, 4_096), (1_100, 8_200)]);
        let bytes = encode_index(1_000, &saved);
        assert_eq!(parse_index(&bytes, 1_000), Some(saved));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(parse_index(&bad, 1_000).is_none(), "flipped byte {i}");
        }
        assert!(
            parse_index(&bytes[..bytes.len() - 1], 1_000).is_none(),
            "cut short"
        );
        assert!(
            parse_index(&encode_index(1_000, &index(&[])), 1_000).is_some(),
            "no entries"
        );
    }

    #[test]
    fn an_index_that_contradicts_its_segment_is_refused() {
        let refused =
            |entries: &[(u64, u64)]| parse_index(&encode_index(1_000, &index(entries)), 1_000).is_none();
        assert!(
            refused(&[(1_050, 4_096), (1_050, 8_000)]),
            "offsets must increase"
        );
        assert!(
            refused(&[(1_050, 4_096), (1_060, 4_096)]),
            "positions must increase"
        );
        assert!(refused(&[(1_050, 10_000)]), "a position past the segment's size");
        assert!(refused(&[(1_200, 4_096)]), "an offset at or past the next offset");
        assert!(!refused(&[(1_050, 4_096), (1_060, 4_097)]));
    }
}
