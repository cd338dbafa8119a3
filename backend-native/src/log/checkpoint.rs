//! The checkpoint file: how far a partition is known to be durable, kept in two
//! CRC-checked slots written in turn.

use std::sync::{Arc, MutexGuard, PoisonError};

use tributary_core::Result;

use crate::mark;
use crate::storage::StorageFile;

use super::{PartitionLog, io_error};

pub(super) const CHECKPOINT_MAGIC: [u8; 4] = *b"TRC\x02";

pub(super) const CHECKPOINT_SLOT: usize = mark::slot_len(3);

pub(super) const CHECKPOINT_FILE: &str = "checkpoint";

/// How far a partition is known to be durable: everything before `position` of the
/// segment based at `base` (and every earlier segment) was synced, and `offset` is the
/// offset of the first record not covered. Kept in two CRC-checked slots written in
/// turn without a sync of their own: a lost or torn write only leaves the older slot,
/// which is conservative. Once read back, a log ending before it has lost synced data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Checkpoint {
    pub(super) base: u64,
    pub(super) position: u64,
    pub(super) offset: u64,
}

pub(super) fn encode_checkpoint(seq: u64, c: Checkpoint) -> Vec<u8> {
    mark::encode(CHECKPOINT_MAGIC, seq, [c.base, c.position, c.offset])
}

/// The newest valid slot: (sequence number, checkpoint).
pub(super) fn decode_checkpoint(bytes: &[u8]) -> Option<(u64, Checkpoint)> {
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

#[derive(Debug, Default)]
pub(super) struct CheckpointFile {
    pub(super) file: Option<Arc<dyn StorageFile>>,
    pub(super) seq: u64,
    pub(super) last: Checkpoint,
}

impl PartitionLog {
    /// Opens (creating, durably, if missing) the checkpoint file and records `durable`.
    pub(super) fn open_checkpoint(&self, durable: Option<Checkpoint>) -> Result<()> {
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
    pub(super) fn record_durable(&self, c: Checkpoint) {
        let ck = self.checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
        if c <= ck.last {
            return;
        }
        self.write_checkpoint(ck, c);
    }

    /// Records `c` as the durable position even if it is behind the one recorded.
    pub(super) fn reset_durable(&self, c: Checkpoint) {
        let ck = self.checkpoint.lock().unwrap_or_else(PoisonError::into_inner);
        self.write_checkpoint(ck, c);
    }

    pub(super) fn write_checkpoint(&self, mut ck: MutexGuard<'_, CheckpointFile>, c: Checkpoint) {
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::log) fn at(base: u64, position: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            base,
            position,
            offset,
        }
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
}
