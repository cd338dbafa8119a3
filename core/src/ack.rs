//! Low-watermark commits from out-of-order acknowledgements, shared by every backend.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{Offset, PartitionId};

/// Tracks, per partition, the records a consumer delivered and which of them the
/// application acknowledged, and tells how far a commit may go: over the contiguous
/// acknowledged prefix of what was delivered, never past an unacknowledged record.
///
/// Offsets need not be contiguous (Kinesis), only increasing within a partition.
///
/// ```
/// use tributary_core::raw::AckTracker;
/// use tributary_core::{Offset, PartitionId};
/// let p = PartitionId::from_index(0);
/// let mut acks = AckTracker::new();
/// for o in [10, 11, 12, 13, 14] {           // A B C D E
///     acks.delivered(&p, Offset::new(o));
/// }
/// for o in [10, 11, 13] {                   // ack A, B, D; not C, E
///     acks.ack(&p, &Offset::new(o)).unwrap();
/// }
/// // The commit covers A and B: a restart resumes at C.
/// assert_eq!(acks.committable(&p), Some(&Offset::new(11)));
/// ```
#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    partitions: BTreeMap<PartitionId, PartitionAcks>,
}

#[derive(Debug, Default, Clone)]
struct PartitionAcks {
    /// Delivered offsets past the watermark, oldest first, with whether each is acked.
    pending: VecDeque<(Offset, bool)>,
    /// Last offset of the contiguous acknowledged prefix.
    watermark: Option<Offset>,
    /// What was last committed (so a commit is only sent when there is news).
    committed: Option<Offset>,
}

impl AckTracker {
    /// Tracks nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` of `partition` was handed to the application. Offsets of a
    /// partition must be delivered in increasing order; an offset at or below the last
    /// one delivered (a redelivery) is ignored.
    pub fn delivered(&mut self, partition: &PartitionId, offset: Offset) {
        let acks = self.partitions.entry(partition.clone()).or_default();
        let last = acks.pending.back().map(|(o, _)| o).or(acks.watermark.as_ref());
        if last.is_some_and(|last| &offset <= last) {
            return;
        }
        acks.pending.push_back((offset, false));
    }

    /// Acknowledges one delivered record. Acknowledging twice is harmless.
    ///
    /// # Errors
    /// `NotAssigned` if the partition is not tracked (never delivered or revoked);
    /// `InvalidInput` if `offset` was not delivered.
    pub fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        let Some(acks) = self.partitions.get_mut(partition) else {
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!("partition {partition} is not assigned to this consumer"),
            ));
        };
        if acks.watermark.as_ref().is_some_and(|w| offset <= w) {
            return Ok(());
        }
        match acks.pending.binary_search_by(|(o, _)| o.cmp(offset)) {
            Ok(i) => acks.pending[i].1 = true,
            Err(_) => {
                return Err(Error::invalid_input(format!(
                    "offset {offset} of partition {partition} was not delivered to this consumer"
                )));
            }
        }
        while let Some((_, true)) = acks.pending.front() {
            if let Some((o, _)) = acks.pending.pop_front() {
                acks.watermark = Some(o);
            }
        }
        Ok(())
    }

    /// The last offset of the contiguous acknowledged prefix, if it moved past what was
    /// last committed: what a commit of this partition should cover.
    pub fn committable(&self, partition: &PartitionId) -> Option<&Offset> {
        let acks = self.partitions.get(partition)?;
        let watermark = acks.watermark.as_ref()?;
        match &acks.committed {
            Some(c) if c >= watermark => None,
            _ => Some(watermark),
        }
    }

    /// Every partition with something to commit, with the last offset to cover.
    pub fn all_committable(&self) -> Vec<(PartitionId, Offset)> {
        self.partitions
            .keys()
            .filter_map(|p| self.committable(p).map(|o| (p.clone(), o.clone())))
            .collect()
    }

    /// Records that a commit covering `offset` succeeded. Ignored for a partition no
    /// longer tracked (a commit that completed after its partition was revoked).
    pub fn committed(&mut self, partition: &PartitionId, offset: Offset) {
        if let Some(acks) = self.partitions.get_mut(partition)
            && acks.committed.as_ref().is_none_or(|c| &offset > c)
        {
            acks.committed = Some(offset);
        }
    }

    /// Forgets a partition entirely (revoked): its acks are refused from now on.
    pub fn forget(&mut self, partition: &PartitionId) {
        self.partitions.remove(partition);
    }

    /// Starts a partition's deliveries over (after a seek), keeping what was committed
    /// so that acknowledging older records again never moves a commit backwards.
    pub fn reset(&mut self, partition: &PartitionId) {
        let acks = self.partitions.entry(partition.clone()).or_default();
        acks.pending.clear();
        acks.watermark = None;
    }

    /// Whether `partition` has delivered records not yet acknowledged.
    pub fn has_unacked(&self, partition: &PartitionId) -> bool {
        self.partitions
            .get(partition)
            .is_some_and(|a| a.pending.iter().any(|(_, acked)| !acked))
    }

    /// Starts tracking a partition (so acks of it are accepted even before deliveries).
    pub fn assign(&mut self, partition: &PartitionId) {
        self.partitions.entry(partition.clone()).or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u32) -> PartitionId {
        PartitionId::from_index(i)
    }

    fn o(n: u64) -> Offset {
        Offset::new(n)
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let mut t = AckTracker::new();
        for n in 0..5 {
            t.delivered(&p(0), o(n));
        }
        t.ack(&p(0), &o(3)).unwrap();
        assert_eq!(t.committable(&p(0)), None, "nothing contiguous yet");
        t.ack(&p(0), &o(0)).unwrap();
        t.ack(&p(0), &o(1)).unwrap();
        assert_eq!(t.committable(&p(0)), Some(&o(1)));
        t.ack(&p(0), &o(2)).unwrap();
        assert_eq!(
            t.committable(&p(0)),
            Some(&o(3)),
            "2 filled the gap up to the acked 3"
        );
        t.committed(&p(0), o(3));
        assert_eq!(t.committable(&p(0)), None);
        assert!(t.has_unacked(&p(0)));
        t.ack(&p(0), &o(4)).unwrap();
        assert_eq!(t.committable(&p(0)), Some(&o(4)));
        assert!(!t.has_unacked(&p(0)));
    }

    #[test]
    fn non_contiguous_offsets_like_kinesis() {
        let mut t = AckTracker::new();
        let seq: Vec<Offset> = [
            "49590338271490256608559692538361571095921575989136588898",
            "49590338271490256608559692540925702759324208523137515618",
            "49590338271490256608559692540925702759324208523137515700",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for s in &seq {
            t.delivered(&p(1), s.clone());
        }
        t.ack(&p(1), &seq[2]).unwrap();
        t.ack(&p(1), &seq[0]).unwrap();
        assert_eq!(t.committable(&p(1)), Some(&seq[0]));
        t.ack(&p(1), &seq[1]).unwrap();
        assert_eq!(t.committable(&p(1)), Some(&seq[2]));
    }

    #[test]
    fn bad_acks_are_clear_errors_and_change_nothing() {
        let mut t = AckTracker::new();
        t.delivered(&p(0), o(5));
        assert_eq!(t.ack(&p(9), &o(5)).unwrap_err().kind(), ErrorKind::NotAssigned);
        let err = t.ack(&p(0), &o(6)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("offset 6"), "{err}");
        assert_eq!(t.committable(&p(0)), None);
        t.ack(&p(0), &o(5)).unwrap();
        t.ack(&p(0), &o(5)).unwrap();
        assert_eq!(t.committable(&p(0)), Some(&o(5)));
    }

    #[test]
    fn a_seek_back_keeps_the_commit_floor() {
        let mut t = AckTracker::new();
        for n in 0..10 {
            t.delivered(&p(0), o(n));
            t.ack(&p(0), &o(n)).unwrap();
        }
        t.committed(&p(0), o(9));
        t.reset(&p(0));
        t.delivered(&p(0), o(0));
        t.ack(&p(0), &o(0)).unwrap();
        assert_eq!(
            t.committable(&p(0)),
            None,
            "re-acking 0 after a rewind commits nothing older"
        );
        t.forget(&p(0));
        t.committed(&p(0), o(20));
        assert_eq!(
            t.ack(&p(0), &o(20)).unwrap_err().kind(),
            ErrorKind::NotAssigned,
            "late commit after revoke"
        );
    }

    #[test]
    fn commits_never_move_backwards() {
        let mut t = AckTracker::new();
        t.assign(&p(0));
        t.committed(&p(0), o(10));
        t.committed(&p(0), o(4));
        t.delivered(&p(0), o(5));
        t.ack(&p(0), &o(5)).unwrap();
        assert_eq!(t.committable(&p(0)), None, "5 is behind the commit at 10");
    }

    #[test]
    fn redeliveries_and_forget() {
        let mut t = AckTracker::new();
        t.delivered(&p(0), o(1));
        t.delivered(&p(0), o(1));
        t.delivered(&p(0), o(0));
        t.ack(&p(0), &o(1)).unwrap();
        assert_eq!(t.all_committable(), vec![(p(0), o(1))]);
        t.forget(&p(0));
        assert_eq!(t.ack(&p(0), &o(1)).unwrap_err().kind(), ErrorKind::NotAssigned);
    }
}
