//! Consumer groups coordinated inside one process, for engines that have no broker to
//! do it (memory, native): membership, partition ownership with safe handoff, commit
//! on revoke, and fencing of commits from members that lost a partition.
//!
//! An engine keeps one [`GroupState`] per (group, stream) and one [`Cursors`] per
//! member, both behind its own lock, and calls [`GroupState::sync`] at the start of
//! every poll.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ack::AckTracker;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{Offset, PartitionId};

/// The longest session timeout an in-process group accepts (one day).
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Waits for news in a poll loop: until `notified` fires (an append or a group
/// change), the poll's `deadline`, the next `heartbeat` (a member must show it is
/// alive), or `look_again` (a partition's holder may be evicted then). Returns false
/// when the deadline had passed already: the poll should return what it has.
pub async fn wait_for_news(
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    deadline: tokio::time::Instant,
    heartbeat: Duration,
    look_again: Option<Instant>,
) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    let mut wake = deadline.min(now + heartbeat);
    if let Some(at) = look_again {
        wake = wake.min(tokio::time::Instant::from_std(at));
    }
    tokio::select! {
        () = notified => {}
        () = tokio::time::sleep_until(wake) => {}
    }
    true
}

/// Identifies a member within an engine.
pub type MemberId = u64;

/// What one member holds: the next offset to read per partition, and its
/// acknowledgements.
#[derive(Debug, Default)]
pub struct Cursors {
    /// Next offset to read, per held partition.
    pub positions: BTreeMap<u32, u64>,
    /// Deliveries and acknowledgements of the held partitions.
    pub acks: AckTracker,
}

impl Cursors {
    /// Registers a record of `partition` handed to the application. The engine passes
    /// the id it already built for the record, so that no id is made per record.
    pub fn delivered(&mut self, partition: &PartitionId, offset: u64) {
        self.acks.delivered(partition, Offset::new(offset));
    }

    /// Moves the cursor of a held partition, dropping its uncommitted acks.
    ///
    /// # Errors
    /// `NotAssigned` if `partition` is not held.
    pub fn seek(&mut self, partition: &PartitionId, to: u64) -> Result<()> {
        let p = self.held(partition)?;
        self.positions.insert(p, to);
        self.acks.reset(partition);
        Ok(())
    }

    /// The partition number of `partition` if it is held.
    ///
    /// # Errors
    /// `NotAssigned` otherwise.
    pub fn held(&self, partition: &PartitionId) -> Result<u32> {
        partition
            .index()
            .filter(|p| self.positions.contains_key(p))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotAssigned,
                    format!("partition {partition} is not assigned to this consumer"),
                )
            })
    }

    /// The held partitions, ordered.
    pub fn assignment(&self) -> Vec<PartitionId> {
        self.positions
            .keys()
            .map(|p| PartitionId::from_index(*p))
            .collect()
    }

    fn drop_all(&mut self) {
        for p in std::mem::take(&mut self.positions).into_keys() {
            self.acks.forget(&PartitionId::from_index(p));
        }
    }
}

/// What [`GroupState::sync`] changed.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// The group changed: wake the other members.
    pub changed: bool,
    /// A partition this member should get is held by a member that may be evicted at
    /// this time: look again then.
    pub look_again: Option<Instant>,
    /// Commits made (on revoke, and the first start position of a partition),
    /// `(partition, next offset)`, for engines that persist them.
    pub committed: Vec<(u32, u64)>,
    /// A start position that could not be resolved; that partition was left untaken.
    pub error: Option<Error>,
}

/// Membership, ownership and commits of one group over one stream.
#[derive(Debug, Default)]
pub struct GroupState {
    /// Live members and when each was last seen.
    members: BTreeMap<MemberId, Instant>,
    /// Which member holds each partition now. A partition moves only after its holder
    /// released it (committing what it had acknowledged) or was evicted.
    owners: BTreeMap<u32, MemberId>,
    /// Next offset to read per partition.
    committed: BTreeMap<u32, u64>,
}

impl GroupState {
    /// A group that resumes from `committed` (next offset per partition).
    pub fn with_commits(committed: BTreeMap<u32, u64>) -> Self {
        Self {
            committed,
            ..Self::default()
        }
    }

    /// Adds a member.
    pub fn join(&mut self, member: MemberId, now: Instant) {
        self.members.insert(member, now);
    }

    /// Removes a member without committing for it (after a close committed, or a crash),
    /// and drops its cursors.
    pub fn leave(&mut self, member: MemberId, cursors: &mut Cursors) {
        self.remove_member(member);
        cursors.drop_all();
    }

    /// The group's committed position (next offset) of partition `p`.
    pub fn committed(&self, p: u32) -> Option<u64> {
        self.committed.get(&p).copied()
    }

    /// Every committed position.
    pub fn commits(&self) -> &BTreeMap<u32, u64> {
        &self.committed
    }

    /// Whether no member is live.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty()
    }

    /// The partitions `member` should hold: partition `p` goes to the `p mod n`-th
    /// member in id order, so counts differ by at most one.
    fn target(&self, member: MemberId, partitions: u32) -> BTreeSet<u32> {
        let Some(rank) = self.members.keys().position(|m| *m == member) else {
            return BTreeSet::new();
        };
        let n = self.members.len();
        (0..partitions).filter(|p| (*p as usize) % n == rank).collect()
    }

    fn remove_member(&mut self, member: MemberId) {
        self.members.remove(&member);
        self.owners.retain(|_, owner| *owner != member);
    }

    /// Raises the committed position of `p` to `next`; never lowers it.
    fn commit(&mut self, p: u32, next: u64) -> bool {
        let slot = self.committed.entry(p).or_insert(0);
        let raised = next > *slot;
        *slot = (*slot).max(next);
        raised
    }

    /// Brings `member` up to date with the group, at the start of each of its polls:
    /// evicts members unseen for `timeout`; rejoins `member` if it was evicted (its
    /// uncommitted work is dropped); releases partitions that now belong to others,
    /// committing their acknowledged prefix first (commit on revoke); takes the free
    /// partitions that belong to it, starting each at the group's commit or, for a
    /// partition the group never committed, at `initial(p)` (called only then), which
    /// becomes the group's position so a later holder starts there too.
    pub fn sync(
        &mut self,
        member: MemberId,
        cursors: &mut Cursors,
        partitions: u32,
        mut initial: impl FnMut(u32) -> Result<u64>,
        now: Instant,
        timeout: Duration,
    ) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        let stale: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(m, seen)| **m != member && now.duration_since(**seen) > timeout)
            .map(|(m, _)| *m)
            .collect();
        for m in stale {
            self.remove_member(m);
            outcome.changed = true;
        }
        if self.members.insert(member, now).is_none() {
            // Evicted while away: whoever holds those partitions now reads again what
            // was delivered here but not committed.
            cursors.drop_all();
            outcome.changed = true;
        }
        let target = self.target(member, partitions);
        let held: Vec<u32> = cursors.positions.keys().copied().collect();
        for p in held.into_iter().filter(|p| !target.contains(p)) {
            let id = PartitionId::from_index(p);
            if let Some(last) = cursors.acks.committable(&id).and_then(Offset::as_u64)
                && self.commit(p, last + 1)
            {
                outcome.committed.push((p, last + 1));
            }
            cursors.acks.forget(&id);
            cursors.positions.remove(&p);
            if self.owners.get(&p) == Some(&member) {
                self.owners.remove(&p);
            }
            outcome.changed = true;
        }
        for &p in &target {
            if cursors.positions.contains_key(&p) || self.owners.get(&p).is_some_and(|o| *o != member) {
                continue;
            }
            let start = match self.committed.get(&p) {
                Some(c) => *c,
                None => match initial(p) {
                    // Fixed now: resolved again by the next holder, a start such as
                    // Latest would skip what this holder read but did not commit.
                    Ok(start) => {
                        self.committed.insert(p, start);
                        outcome.committed.push((p, start));
                        start
                    }
                    Err(e) => {
                        outcome.error.get_or_insert(e);
                        continue;
                    }
                },
            };
            self.owners.insert(p, member);
            cursors.positions.insert(p, start);
            cursors.acks.assign(&PartitionId::from_index(p));
            outcome.changed = true;
        }
        outcome.look_again = target
            .iter()
            .filter(|p| !cursors.positions.contains_key(p))
            .filter_map(|p| self.owners.get(p))
            .filter_map(|owner| self.members.get(owner))
            .filter_map(|seen| seen.checked_add(timeout))
            .min();
        outcome
    }

    /// Commits `member`'s acknowledged prefix of every partition it still owns, and
    /// returns the commits made, `(partition, next offset)`.
    ///
    /// # Errors
    /// `NotAssigned` naming the partitions that were taken from `member` meanwhile
    /// (evicted): those are not committed and are dropped from its cursors; the others
    /// are committed all the same.
    pub fn commit_acked(&mut self, member: MemberId, cursors: &mut Cursors) -> Result<Vec<(u32, u64)>> {
        let mut made = Vec::new();
        let mut refused = Vec::new();
        for (partition, last) in cursors.acks.all_committable() {
            let (Some(p), Some(n)) = (partition.index(), last.as_u64()) else {
                continue;
            };
            if self.owners.get(&p) == Some(&member) {
                if self.commit(p, n + 1) {
                    made.push((p, n + 1));
                }
                cursors.acks.committed(&partition, last);
            } else {
                cursors.acks.forget(&partition);
                cursors.positions.remove(&p);
                refused.push(partition);
            }
        }
        if refused.is_empty() {
            return Ok(made);
        }
        let list: Vec<&str> = refused.iter().map(PartitionId::as_str).collect();
        Err(Error::new(
            ErrorKind::NotAssigned,
            format!(
                "not committed: partition(s) {} are no longer assigned to this consumer",
                list.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn sync(g: &mut GroupState, m: MemberId, c: &mut Cursors, now: Instant) -> SyncOutcome {
        g.sync(m, c, 4, |_| Ok(0), now, T)
    }

    #[test]
    fn handoff_waits_for_the_holder_and_commits_on_revoke() {
        let now = Instant::now();
        let mut g = GroupState::default();
        let (mut a, mut b) = (Cursors::default(), Cursors::default());
        g.join(1, now);
        sync(&mut g, 1, &mut a, now);
        assert_eq!(a.positions.len(), 4);
        a.delivered(&PartitionId::from_index(1), 0);
        a.acks.ack(&PartitionId::from_index(1), &Offset::new(0)).unwrap();
        g.join(2, now);
        sync(&mut g, 2, &mut b, now);
        assert!(b.positions.is_empty(), "partitions still held by member 1");
        let out = sync(&mut g, 1, &mut a, now);
        assert_eq!(out.committed, vec![(1, 1)], "commit on revoke");
        assert_eq!(a.positions.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        sync(&mut g, 2, &mut b, now);
        assert_eq!(
            b.positions,
            BTreeMap::from([(1, 1), (3, 0)]),
            "starts at the commit"
        );
    }

    #[test]
    fn stale_holders_are_evicted_and_fenced() {
        let now = Instant::now();
        let mut g = GroupState::default();
        let (mut a, mut b) = (Cursors::default(), Cursors::default());
        g.join(1, now);
        sync(&mut g, 1, &mut a, now);
        a.delivered(&PartitionId::from_index(0), 0);
        a.acks.ack(&PartitionId::from_index(0), &Offset::new(0)).unwrap();
        g.join(2, now);
        let later = now + T + Duration::from_secs(1);
        let out = sync(&mut g, 2, &mut b, later);
        assert!(out.changed);
        assert_eq!(b.positions.len(), 4, "member 1 was evicted: member 2 takes all");
        let err = g.commit_acked(1, &mut a).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotAssigned);
        assert_eq!(g.committed(0), Some(0), "the fenced commit (to 1) did not land");
    }

    #[test]
    fn look_again_when_a_holder_may_expire() {
        let now = Instant::now();
        let mut g = GroupState::default();
        let (mut a, mut b) = (Cursors::default(), Cursors::default());
        g.join(1, now);
        sync(&mut g, 1, &mut a, now);
        g.join(2, now);
        let out = sync(&mut g, 2, &mut b, now);
        assert_eq!(out.look_again, Some(now + T));
    }

    #[test]
    fn the_first_start_position_becomes_the_groups() {
        let now = Instant::now();
        let mut g = GroupState::default();
        let (mut a, mut b) = (Cursors::default(), Cursors::default());
        g.join(1, now);
        // Member 1 starts "at the latest record", here 10; it reads but commits nothing.
        let out = g.sync(1, &mut a, 2, |_| Ok(10), now, T);
        assert_eq!(
            out.committed,
            vec![(0, 10), (1, 10)],
            "the start is recorded for the group"
        );
        a.delivered(&PartitionId::from_index(1), 10);
        g.join(2, now);
        sync(&mut g, 1, &mut a, now);
        // Member 2 would resolve "latest" to 15 by now; it must start at 10 instead.
        let out = g.sync(2, &mut b, 2, |_| Ok(15), now, T);
        assert!(out.committed.is_empty());
        assert_eq!(
            b.positions.get(&1),
            Some(&10),
            "no record between 10 and 15 is skipped"
        );
    }
}
