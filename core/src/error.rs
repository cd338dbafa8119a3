//! One error type for every backend, classified by cause.

use std::fmt;

use crate::record::{Delivery, Record};

/// Boxed source error kept inside an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with Tributary's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation failed. Backends map their own errors onto these causes so that
/// applications can react to a cause without knowing the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The stream, partition or group does not exist.
    NotFound,
    /// The stream already exists.
    AlreadyExists,
    /// The configuration (URL, file, options) is wrong; the message names the key.
    InvalidConfig,
    /// An argument is wrong: a bad stream name, an oversized record, an unknown offset.
    InvalidInput,
    /// The backend cannot do this at all (see [`Capabilities`](crate::Capabilities)).
    Unsupported,
    /// The engine asked us to slow down. Retryable.
    Throttled,
    /// The operation did not finish in time and had no effect. Retryable.
    Timeout,
    /// The engine is unreachable or temporarily unavailable. Retryable.
    Unavailable,
    /// The outcome is unknown: the operation may or may not have taken effect (for
    /// example a send that timed out in flight). Retrying may duplicate.
    Indeterminate,
    /// Stored data failed an integrity check.
    Corruption,
    /// The producer, consumer or backend was closed.
    Closed,
    /// The partition is not (or no longer) assigned to this consumer, so its records
    /// cannot be acknowledged or committed here.
    NotAssigned,
    /// An error of the engine's own that fits no other kind; see the source.
    Backend,
    /// A local I/O error.
    Io,
}

impl ErrorKind {
    /// Whether an operation failing with this kind may succeed if retried unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Timeout | Self::Unavailable)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::InvalidConfig => "invalid configuration",
            Self::InvalidInput => "invalid input",
            Self::Unsupported => "unsupported",
            Self::Throttled => "throttled",
            Self::Timeout => "timed out",
            Self::Unavailable => "unavailable",
            Self::Indeterminate => "outcome unknown",
            Self::Corruption => "corruption",
            Self::Closed => "closed",
            Self::NotAssigned => "partition not assigned",
            Self::Backend => "backend error",
            Self::Io => "i/o error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every Tributary operation: a [`ErrorKind`], a message for people, and
/// the backend's own error as [`source`](std::error::Error::source) where there is one.
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: Option<bool>,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a message that says what was wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: None,
            source: None,
        }
    }

    /// Keeps `source` as the cause of this error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides the retryability implied by the kind (a backend may know better).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// The cause.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation unchanged may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable.unwrap_or_else(|| self.kind.is_retryable())
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::InvalidConfig`].
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Closed`].
    pub fn closed(what: &str) -> Self {
        Self::new(ErrorKind::Closed, format!("the {what} is closed"))
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind).field("message", &self.message);
        if let Some(retryable) = self.retryable {
            s.field("retryable", &retryable);
        }
        if let Some(source) = &self.source {
            s.field("source", source);
        }
        s.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            std::io::ErrorKind::InvalidData => ErrorKind::Corruption,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

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

    #[test]
    fn retryable_follows_kind_unless_overridden() {
        assert!(Error::new(ErrorKind::Throttled, "slow down").is_retryable());
        assert!(!Error::new(ErrorKind::Indeterminate, "maybe").is_retryable());
        assert!(
            !Error::new(ErrorKind::Throttled, "x")
                .with_retryable(false)
                .is_retryable()
        );
        assert!(
            Error::new(ErrorKind::Backend, "x")
                .with_retryable(true)
                .is_retryable()
        );
    }

    #[test]
    fn display_names_kind_and_message_and_keeps_source() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::new(ErrorKind::Io, "writing segment").with_source(io);
        assert_eq!(e.to_string(), "i/o error: writing segment");
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("disk on fire"));
    }
}
