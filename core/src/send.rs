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
}
