//! One error type for every backend, classified by cause.

use std::fmt;

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
    context: Option<Box<Context>>,
}

/// Where an error arose; boxed so that errors stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Context {
    engine: &'static str,
    operation: &'static str,
}

impl Error {
    /// An error of `kind` with a message that says what was wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: None,
            source: None,
            context: None,
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

    /// Names the engine (its URL scheme, such as `"kafka"`) and the operation (such as
    /// `"send"` or `"commit"`) the error arose in, unless it already names them: the
    /// innermost naming wins. `tributary::Client::connect` names every error of the
    /// handles it gives out, so that an application with several engines can tell
    /// which one failed.
    pub fn in_operation(mut self, engine: &'static str, operation: &'static str) -> Self {
        if self.context.is_none() {
            self.context = Some(Box::new(Context { engine, operation }));
        }
        self
    }

    /// Names the same engine and operation as `other` does, if it does: for an error
    /// made from another, which it then usually keeps as its source.
    pub fn with_context_of(mut self, other: &Error) -> Self {
        if self.context.is_none() {
            self.context = other.context.clone();
        }
        self
    }

    /// A copy for one more of the records or callers an error ended: kind, message,
    /// retryability and context. The source stays with the original (sources are not
    /// `Clone`), which the first of them gets.
    pub fn copy_for_another(&self) -> Error {
        Error {
            kind: self.kind,
            message: self.message.clone(),
            retryable: self.retryable,
            source: None,
            context: self.context.clone(),
        }
    }

    /// The engine the error arose in, when named (see [`Error::in_operation`]).
    pub fn engine(&self) -> Option<&'static str> {
        self.context.as_ref().map(|c| c.engine)
    }

    /// The operation the error arose in, when named (see [`Error::in_operation`]).
    pub fn operation(&self) -> Option<&'static str> {
        self.context.as_ref().map(|c| c.operation)
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
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(context) = &self.context {
            write!(f, " ({} {})", context.engine, context.operation)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind).field("message", &self.message);
        if let Some(retryable) = self.retryable {
            s.field("retryable", &retryable);
        }
        if let Some(context) = &self.context {
            s.field("engine", &context.engine)
                .field("operation", &context.operation);
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_innermost_engine_and_operation_are_named_after_the_message() {
        let e = Error::new(ErrorKind::NotFound, "stream orders does not exist");
        assert_eq!((e.engine(), e.operation()), (None, None));
        let e = e.in_operation("kafka", "send").in_operation("memory", "poll");
        assert_eq!((e.engine(), e.operation()), (Some("kafka"), Some("send")));
        assert_eq!(
            e.to_string(),
            "not found: stream orders does not exist (kafka send)"
        );
        assert_eq!(e.message(), "stream orders does not exist");
        let copied = Error::new(ErrorKind::Timeout, "later").with_context_of(&e);
        assert_eq!(copied.engine(), Some("kafka"));
    }
}
