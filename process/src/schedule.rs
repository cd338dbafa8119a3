//! Which polled records may be handled now: per key, per partition or unordered.
//!
//! Records wait in arrival order. A record whose lane (its key, or its partition) has a
//! record in flight waits behind it, so a lane's records are handled one at a time in
//! offset order; different lanes run in parallel.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use tributary_core::{Bytes, PartitionId, Received};

/// How a processor orders the handling of records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ordering {
    /// Records of one key (within a partition) are handled one at a time, in offset
    /// order; different keys in parallel. Records without a key are not ordered.
    #[default]
    PerKey,
    /// Records of one partition are handled one at a time, in offset order.
    PerPartition,
    /// Any record may be handled at any time.
    Unordered,
}

/// What a record must not overtake: the records of its lane handed to a handler before.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Key(PartitionId, Bytes),
    Partition(PartitionId),
}

impl Ordering {
    /// The lane of `record`, or none when it may be handled whenever.
    pub(crate) fn lane_of(self, record: &Received) -> Option<Lane> {
        match self {
            Ordering::PerKey => record
                .key
                .as_ref()
                .map(|key| Lane::Key(record.partition.clone(), key.clone())),
            Ordering::PerPartition => Some(Lane::Partition(record.partition.clone())),
            Ordering::Unordered => None,
        }
    }
}

/// A lane's record ready or in flight, and those behind it.
#[derive(Debug, Default)]
struct Busy {
    /// Its head was handed to a handler (else it is in `ready`).
    in_flight: bool,
    behind: VecDeque<Received>,
}

/// Polled records not yet handed to a handler, and the lanes that have one in flight.
#[derive(Debug)]
pub(crate) struct Scheduler {
    ordering: Ordering,
    /// Records no lane holds back, in arrival order.
    ready: VecDeque<Received>,
    /// Per lane with a record ready or in flight, the lane's records waiting behind it.
    busy: HashMap<Lane, Busy>,
    waiting_records: usize,
    waiting_bytes: usize,
}

impl Scheduler {
    pub(crate) fn new(ordering: Ordering) -> Self {
        Self {
            ordering,
            ready: VecDeque::new(),
            busy: HashMap::new(),
            waiting_records: 0,
            waiting_bytes: 0,
        }
    }

    /// Records and bytes (values and keys) waiting, ready or held back.
    pub(crate) fn waiting(&self) -> (usize, usize) {
        (self.waiting_records, self.waiting_bytes)
    }

    /// Queues a polled record.
    pub(crate) fn push(&mut self, record: Received) {
        self.waiting_records += 1;
        self.waiting_bytes += size_of(&record);
        // A lane that is busy, or has a record ready, holds this one back behind it.
        match self.ordering.lane_of(&record).map(|lane| self.busy.entry(lane)) {
            Some(Entry::Occupied(mut busy)) => busy.get_mut().behind.push_back(record),
            Some(Entry::Vacant(lane)) => {
                lane.insert(Busy::default());
                self.ready.push_back(record);
            }
            None => self.ready.push_back(record),
        }
    }

    /// The next record to hand to a handler, oldest first. Its lane stays busy until
    /// [`done`](Self::done).
    pub(crate) fn next(&mut self) -> Option<Received> {
        let record = self.ready.pop_front()?;
        if let Some(lane) = self.ordering.lane_of(&record)
            && let Some(busy) = self.busy.get_mut(&lane)
        {
            busy.in_flight = true;
        }
        self.waiting_records -= 1;
        self.waiting_bytes -= size_of(&record);
        Some(record)
    }

    /// A handler finished with `record` (whether or not its partition is still
    /// assigned): the next record of its lane may go.
    pub(crate) fn done(&mut self, record: &Received) {
        let Some(lane) = self.ordering.lane_of(record) else {
            return;
        };
        let Some(busy) = self.busy.get_mut(&lane) else {
            return;
        };
        busy.in_flight = false;
        match busy.behind.pop_front() {
            Some(next) => self.ready.push_back(next),
            None => {
                self.busy.remove(&lane);
            }
        }
    }

    /// Drops every waiting record of `partition` (no longer assigned here). Its lanes
    /// with a record in flight stay busy until [`done`](Self::done): should the
    /// partition come back, its records wait for the handlers still running.
    /// Returns how many were dropped.
    pub(crate) fn forget(&mut self, partition: &PartitionId) -> usize {
        let mut dropped = Vec::new();
        self.ready.retain(|r| {
            let keep = &r.partition != partition;
            if !keep {
                dropped.push(size_of(r));
            }
            keep
        });
        self.busy.retain(|lane, busy| {
            let of_partition = match lane {
                Lane::Key(p, _) | Lane::Partition(p) => p == partition,
            };
            if of_partition {
                dropped.extend(busy.behind.drain(..).map(|r| size_of(&r)));
            }
            !of_partition || busy.in_flight
        });
        self.waiting_records -= dropped.len();
        self.waiting_bytes -= dropped.iter().sum::<usize>();
        dropped.len()
    }
}

/// What a waiting record costs against the processor's byte bound.
pub(crate) fn size_of(record: &Received) -> usize {
    record.value.len() + record.key.as_ref().map_or(0, Bytes::len)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use tributary_core::{Headers, Offset};

    use super::*;

    fn record(partition: u32, offset: u64, key: Option<&str>) -> Received {
        Received {
            stream: Arc::from("s"),
            partition: PartitionId::from_index(partition),
            offset: Offset::new(offset),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::from_static(b"v"),
            headers: Headers::default(),
            timestamp: None,
        }
    }

    fn offsets(records: &[Received]) -> Vec<u64> {
        records.iter().map(|r| r.offset.as_u64().unwrap()).collect()
    }

    fn drain(s: &mut Scheduler) -> Vec<Received> {
        std::iter::from_fn(|| s.next()).collect()
    }

    #[test]
    fn per_key_holds_a_key_back_while_one_of_its_records_is_in_flight() {
        let mut s = Scheduler::new(Ordering::PerKey);
        for (o, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "c"), (4, "a")] {
            s.push(record(0, o, Some(key)));
        }
        let first = drain(&mut s);
        assert_eq!(offsets(&first), [0, 1, 3], "one per key, oldest first");
        assert_eq!(s.waiting().0, 2);
        s.done(&first[1]);
        assert!(s.next().is_none(), "b had nothing behind it");
        s.done(&first[0]);
        let second = drain(&mut s);
        assert_eq!(offsets(&second), [2]);
        s.done(&second[0]);
        assert_eq!(offsets(&drain(&mut s)), [4]);
        assert_eq!(s.waiting(), (0, 0));
    }

    #[test]
    fn keyless_records_and_unordered_ones_are_never_held_back() {
        let mut s = Scheduler::new(Ordering::PerKey);
        for o in 0..3 {
            s.push(record(0, o, None));
        }
        assert_eq!(offsets(&drain(&mut s)), [0, 1, 2]);
        let mut s = Scheduler::new(Ordering::Unordered);
        for o in 0..3 {
            s.push(record(0, o, Some("a")));
        }
        assert_eq!(offsets(&drain(&mut s)), [0, 1, 2]);
    }

    #[test]
    fn per_partition_runs_partitions_in_parallel_and_each_in_order() {
        let mut s = Scheduler::new(Ordering::PerPartition);
        for (p, o) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            s.push(record(p, o, Some("k")));
        }
        let first = drain(&mut s);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| r.offset == Offset::new(0)));
        s.done(&first[0]);
        s.done(&first[1]);
        assert_eq!(offsets(&drain(&mut s)), [1, 1]);
    }

    #[test]
    fn forgetting_a_partition_drops_its_waiting_records_and_frees_its_lanes() {
        let mut s = Scheduler::new(Ordering::PerKey);
        for (p, o) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            s.push(record(p, o, Some("k")));
        }
        let in_flight = drain(&mut s);
        assert_eq!(in_flight.len(), 2);
        assert_eq!(s.forget(&PartitionId::from_index(0)), 1);
        assert_eq!(s.waiting(), (1, 2));
        // The partition comes back while its old record is still in flight: the key
        // waits for that handler, then goes.
        s.push(record(0, 0, Some("k")));
        assert!(s.next().is_none(), "the revoked record's handler still runs");
        let revoked = in_flight
            .iter()
            .find(|r| r.partition == PartitionId::from_index(0))
            .unwrap();
        s.done(revoked);
        assert_eq!(offsets(&drain(&mut s)), [0]);
        // A lane whose head had not gone out yet is freed at once.
        let mut s = Scheduler::new(Ordering::PerKey);
        s.push(record(0, 0, Some("k")));
        assert_eq!(s.forget(&PartitionId::from_index(0)), 1);
        s.push(record(0, 0, Some("k")));
        assert_eq!(offsets(&drain(&mut s)), [0]);
    }

    proptest! {
        /// Whatever the arrival and completion order, a key's records go out one at a
        /// time in offset order, and every record goes out once.
        #[test]
        fn keys_go_out_one_at_a_time_in_order(
            keys in proptest::collection::vec(0u8..5, 1..60),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let mut s = Scheduler::new(Ordering::PerKey);
            for (o, k) in keys.iter().enumerate() {
                s.push(record(0, o as u64, Some(&k.to_string())));
            }
            let mut in_flight: Vec<Received> = Vec::new();
            let mut handled: Vec<Received> = Vec::new();
            let mut picks = picks.into_iter().cycle();
            while handled.len() < keys.len() {
                in_flight.extend(drain(&mut s));
                let mut flying: Vec<&Bytes> = in_flight.iter().filter_map(|r| r.key.as_ref()).collect();
                flying.sort();
                let before = flying.len();
                flying.dedup();
                prop_assert_eq!(before, flying.len(), "two records of a key in flight");
                let pick = picks.next().unwrap().index(in_flight.len());
                let finished = in_flight.swap_remove(pick);
                s.done(&finished);
                handled.push(finished);
            }
            for k in 0u8..5 {
                let key = Bytes::from(k.to_string());
                let of_key: Vec<u64> = offsets(&handled.iter().filter(|r| r.key.as_ref() == Some(&key)).cloned().collect::<Vec<_>>());
                let mut sorted = of_key.clone();
                sorted.sort_unstable();
                prop_assert_eq!(of_key, sorted);
            }
            prop_assert_eq!(s.waiting(), (0, 0));
        }
    }
}
