//! Opening a partition after a crash: loading or rebuilding segment indexes, cutting a
//! torn tail, and telling it from damage in the middle or from lost synced records.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use tributary_core::Result;

use crate::codec::HEADER_LEN;
use crate::storage::{Storage, read_all};

use super::checkpoint::{CHECKPOINT_FILE, Checkpoint, decode_checkpoint};
use super::read::read_batch;
use super::segment::{IndexEntry, Segment, segment_path};
use super::{Damage, Inner, LogConfig, PartitionLog, READ_CHUNK, io_error};

/// Where a partition's log was found to end at open: the end of its last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LogEnd {
    pub(super) base: u64,
    pub(super) size: u64,
    pub(super) offset: u64,
}

/// Whether a log found ending at `end` has lost records its checkpoint says were
/// synced: it ends at a smaller offset, or its last synced segment is shorter than the
/// synced position (cut, zeroed, or removed with the records after it). A missing
/// empty segment at the durable end loses nothing and is not a loss.
pub(super) fn lost_durable(end: LogEnd, durable: Option<Checkpoint>) -> Option<LostDurable> {
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
pub(super) fn is_torn_tail(
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

impl PartitionLog {
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
    pub(super) fn note_lost(
        &self,
        inner: &mut Inner,
        report: &mut RecoveryReport,
        lost: LostDurable,
        found: &str,
    ) {
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
    pub(super) fn scan(
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
    pub(super) fn valid_batch_after(&self, segment: &Segment, pos: u64, expected: u64) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::checkpoint::tests::at;

    fn end(base: u64, size: u64, offset: u64) -> LogEnd {
        LogEnd { base, size, offset }
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
