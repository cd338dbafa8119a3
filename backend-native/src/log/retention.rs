//! Retention: deleting whole old segments beyond the size or age limits.

use tributary_core::{Result, Timestamp};

use super::{LogConfig, PartitionLog, io_error};

/// Whether the oldest segment goes: the partition's segments hold `total_bytes`, above
/// `retention_bytes`, or the oldest one's newest record (`oldest_max_ts`, in ms) is
/// older than `retention` at `now`. The active segment is never a candidate (the
/// caller keeps at least one).
pub(super) fn oldest_expires(
    config: &LogConfig,
    total_bytes: u64,
    oldest_max_ts: i64,
    now: Timestamp,
) -> bool {
    let too_big = config.retention_bytes.is_some_and(|max| total_bytes > max);
    let too_old = config
        .retention
        .is_some_and(|age| oldest_max_ts < now.saturating_sub(age).as_millis());
    too_big || too_old
}

impl PartitionLog {
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
                if !oldest_expires(&self.config, total, first.max_ts, now) {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(retention_bytes: Option<u64>, retention: Option<Duration>) -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 20,
            segment_age: None,
            max_batch_body: 1 << 20,
            index_interval: 4096,
            cache_bytes: 0,
            retention_bytes,
            retention,
            buffered: false,
            read_synced_only: false,
        }
    }

    #[test]
    fn the_oldest_segment_goes_when_the_partition_is_too_big_or_it_is_too_old() {
        let now = Timestamp::from_millis(1_000_000);
        let hour = Duration::from_secs(3600);
        assert!(
            !oldest_expires(&config(None, None), u64::MAX, 0, now),
            "no limits: kept forever"
        );
        let by_size = config(Some(5_000), None);
        assert!(oldest_expires(&by_size, 5_001, 999_999, now));
        assert!(
            !oldest_expires(&by_size, 5_000, 0, now),
            "at the limit is within it"
        );
        let by_age = config(None, Some(Duration::from_secs(100)));
        assert!(
            oldest_expires(&by_age, 0, 899_999, now),
            "its newest record is 100.001 s old"
        );
        assert!(!oldest_expires(&by_age, 0, 900_000, now));
        assert!(
            !oldest_expires(&config(None, Some(hour)), 0, 0, Timestamp::from_millis(10)),
            "the clock near zero"
        );
    }
}
