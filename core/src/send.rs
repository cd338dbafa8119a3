//! The error of a send: what was confirmed, what was not, and why.

use crate::error::{Error, ErrorKind};
use crate::record::{Delivery, Record};

/// A failed [`Producer::send`](crate::Producer::send): the error, the deliveries of
/// the records that were confirmed, and the records that were not, handed back so the
/// caller can retry them without having kept copies.
///
/// For every key, the unsent records are a suffix of that key's records in the batch:
/// no record was confirmed after an unconfirmed record of the same key, so resending
/// `unsent` keeps per-key order. With [`ErrorKind::Indeterminate`] the unsent records
/// may have been persisted; resending them may duplicate.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({} record(s) not confirmed)", unsent.len())]
pub struct SendError {
    /// Why the records were not confirmed.
    #[source]
    pub error: Error,
    /// The records that were confirmed: each one's index in the batch given to
    /// `send`, and its delivery. Ordered by index.
    pub delivered: Vec<(usize, Delivery)>,
    /// The records that were not confirmed, in the order they were given.
    pub unsent: Vec<Record>,
}

impl SendError {
    /// A send where nothing was confirmed.
    pub fn nothing_sent(error: Error, records: Vec<Record>) -> Self {
        Self {
            error,
            delivered: Vec::new(),
            unsent: records,
        }
    }

    /// The error to report for a send whose records failed in parts (per partition,
    /// shard or record), given those failures in order: the first, unless one of them
    /// left records possibly written ([`ErrorKind::Indeterminate`]); then
    /// `Indeterminate`, so that no record that may be in the log is handed back as
    /// plainly unsent and resent into a duplicate. `None` without failures. Every
    /// engine builds its `SendError` with this one rule.
    pub fn cause_of(failures: impl IntoIterator<Item = Error>) -> Option<Error> {
        let mut failures = failures.into_iter();
        let first = failures.next()?;
        if first.kind() == ErrorKind::Indeterminate {
            return Some(first);
        }
        let Some(doubt) = failures.find(|e| e.kind() == ErrorKind::Indeterminate) else {
            return Some(first);
        };
        Some(
            Error::new(
                ErrorKind::Indeterminate,
                format!(
                    "{}; and some records may have been written: {}",
                    first.message(),
                    doubt.message()
                ),
            )
            .with_context_of(&first)
            .with_source(first),
        )
    }

    /// The cause's kind.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// Whether sending `unsent` again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.error.is_retryable()
    }
}

/// A send's outcome record by record, filled in by an engine as its partitions, shards
/// or requests finish, and turned into `send`'s result by one rule for every engine
/// ([`SendTally::finish`]). Records are known by their index in the caller's batch; the
/// engine gives back each record it could not confirm ([`SendTally::unconfirmed`], or
/// [`SendTally::give_back`] for the whole batch).
#[derive(Debug)]
pub struct SendTally {
    deliveries: Vec<Option<Delivery>>,
    returned: Vec<Option<Record>>,
    maybe_written: Vec<bool>,
    failures: Vec<Error>,
}

impl SendTally {
    /// A tally of a batch of `len` records, none of them confirmed yet.
    pub fn new(len: usize) -> Self {
        Self {
            deliveries: vec![None; len],
            returned: vec![None; len],
            maybe_written: vec![false; len],
            failures: Vec::new(),
        }
    }

    /// The record at `index` was confirmed with `delivery`. An index out of range is
    /// ignored.
    pub fn delivered(&mut self, index: usize, delivery: Delivery) {
        if let Some(slot) = self.deliveries.get_mut(index) {
            *slot = Some(delivery);
        }
    }

    /// The record at `index` was not confirmed; here it is back, for `unsent`. A
    /// confirmation given earlier is withdrawn.
    pub fn unconfirmed(&mut self, index: usize, record: Record) {
        if let Some(slot) = self.returned.get_mut(index) {
            *slot = Some(record);
            self.deliveries[index] = None;
        }
    }

    /// Gives back every record of the batch (`records` in the caller's order) that
    /// was not confirmed.
    pub fn give_back(&mut self, records: Vec<Record>) {
        for (index, record) in records.into_iter().enumerate() {
            if self.deliveries.get(index).is_some_and(Option::is_none) {
                self.returned[index] = Some(record);
            }
        }
    }

    /// The record at `index` may be in the log although it is not confirmed (its
    /// request timed out in flight, or it was written but not made durable): if it ends
    /// up unconfirmed, the send's error is `Indeterminate`.
    pub fn maybe_written(&mut self, index: usize) {
        if let Some(slot) = self.maybe_written.get_mut(index) {
            *slot = true;
        }
    }

    /// Something failed, leaving some records unconfirmed; failures are kept in the
    /// order they happened.
    pub fn failed(&mut self, error: Error) {
        self.failures.push(error);
    }

    /// `send`'s result: every delivery when every record was confirmed, else a
    /// [`SendError`] whose error is [`SendError::cause_of`] the failures, made
    /// `Indeterminate` when an unconfirmed record may have been written (so that
    /// nothing possibly in the log is handed back as plainly unsent), and whose
    /// `unsent` are the records given back, in the caller's order.
    pub fn finish(self) -> Result<Vec<Delivery>, SendError> {
        if self.failures.is_empty() && self.deliveries.iter().all(Option::is_some) {
            return Ok(self.deliveries.into_iter().flatten().collect());
        }
        let doubtful = self
            .deliveries
            .iter()
            .zip(&self.maybe_written)
            .filter(|(delivery, maybe)| delivery.is_none() && **maybe)
            .count();
        let mut error = SendError::cause_of(self.failures).unwrap_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                "records were neither confirmed nor refused by the engine",
            )
        });
        if doubtful > 0 && error.kind() != ErrorKind::Indeterminate {
            error = Error::new(
                ErrorKind::Indeterminate,
                format!(
                    "{doubtful} unconfirmed record(s) may have been written: {}",
                    error.message()
                ),
            )
            .with_context_of(&error)
            .with_source(error);
        }
        let delivered = self
            .deliveries
            .into_iter()
            .enumerate()
            .filter_map(|(index, delivery)| delivery.map(|d| (index, d)))
            .collect();
        let unsent = self.returned.into_iter().flatten().collect();
        Err(SendError {
            error,
            delivered,
            unsent,
        })
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        e.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_failing_in_parts_is_indeterminate_if_any_part_is() {
        let io = || Error::new(ErrorKind::Io, "disk full on partition 0");
        let maybe = || Error::new(ErrorKind::Indeterminate, "written, sync failed on partition 1");
        let busy = || Error::new(ErrorKind::Unavailable, "shard busy");
        assert!(SendError::cause_of(Vec::new()).is_none());
        assert_eq!(SendError::cause_of([io(), busy()]).unwrap().kind(), ErrorKind::Io);
        let both = SendError::cause_of([io(), busy(), maybe()]).unwrap();
        assert_eq!(both.kind(), ErrorKind::Indeterminate);
        assert!(!both.is_retryable());
        assert!(both.message().contains("disk full") && both.message().contains("sync failed"));
        let first = SendError::cause_of([maybe(), io()]).unwrap();
        assert_eq!(first.message(), "written, sync failed on partition 1");
    }

    fn at(offset: u64) -> Delivery {
        Delivery {
            partition: crate::PartitionId::from_index(0),
            offset: crate::Offset::new(offset),
            timestamp: None,
        }
    }

    fn batch(n: usize) -> Vec<Record> {
        (0..n).map(|i| Record::new(format!("r{i}"))).collect()
    }

    fn values(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect()
    }

    #[test]
    fn a_tally_with_every_record_confirmed_is_the_deliveries_in_order() {
        let mut tally = SendTally::new(3);
        for i in [2, 0, 1] {
            tally.delivered(i, at(i as u64));
        }
        let deliveries = tally.finish().unwrap();
        assert_eq!(
            deliveries.iter().map(|d| d.offset.clone()).collect::<Vec<_>>(),
            [0, 1, 2].map(crate::Offset::new)
        );
    }

    #[test]
    fn a_partial_tally_hands_back_the_unconfirmed_records_in_order_with_the_first_failure() {
        let mut tally = SendTally::new(4);
        tally.delivered(1, at(1));
        tally.failed(Error::new(ErrorKind::Unavailable, "partition 0 leader gone"));
        tally.failed(Error::new(ErrorKind::Io, "disk full"));
        tally.give_back(batch(4));
        let err = tally.finish().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.delivered.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        assert_eq!(values(&err.unsent), ["r0", "r2", "r3"]);
    }

    #[test]
    fn an_unconfirmed_record_that_may_be_written_makes_the_send_indeterminate() {
        let mut records = batch(2);
        let mut tally = SendTally::new(2);
        tally.delivered(0, at(0));
        tally.delivered(1, at(1));
        // Written, then the sync failed: the confirmation is withdrawn.
        tally.unconfirmed(1, records.pop().unwrap());
        tally.maybe_written(1);
        tally.failed(Error::new(ErrorKind::Io, "fsync failed"));
        let err = tally.finish().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Indeterminate);
        assert!(
            err.error
                .message()
                .contains("1 unconfirmed record(s) may have been written"),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert_eq!(values(&err.unsent), ["r1"]);

        // A record that may have been written but was confirmed later is no doubt.
        let mut tally = SendTally::new(2);
        tally.maybe_written(0);
        tally.delivered(0, at(0));
        tally.failed(Error::new(ErrorKind::Throttled, "slow down"));
        tally.give_back(batch(2));
        assert_eq!(tally.finish().unwrap_err().kind(), ErrorKind::Throttled);
    }

    #[test]
    fn records_neither_confirmed_nor_refused_are_an_engine_error() {
        let mut tally = SendTally::new(2);
        tally.delivered(0, at(0));
        tally.give_back(batch(2));
        let err = tally.finish().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend);
        assert_eq!(values(&err.unsent), ["r1"]);
    }
}
