//! One error type for the tool: a message for standard error and the exit code.

use std::fmt;

use tributary::{Error, ErrorKind};

/// Why a command failed, and the process exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The exit code: 1 engine or system failure, 2 bad usage, configuration or input,
    /// 3 not found, 4 already exists.
    pub code: u8,
    /// What went wrong, for a person.
    pub message: String,
}

impl CliError {
    /// Bad usage, configuration or input (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// A local I/O failure while doing `what` (exit code 1).
    pub fn io(what: &str, e: &std::io::Error) -> Self {
        Self {
            code: 1,
            message: format!("{what}: {e}"),
        }
    }

    /// The engine's error with what the tool was doing.
    pub fn engine(what: &str, e: &Error) -> Self {
        Self {
            code: code_for(e.kind()),
            message: format!("{what}: {}", describe(e)),
        }
    }
}

/// The exit code for an engine error's kind.
pub(crate) fn code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidConfig | ErrorKind::InvalidInput | ErrorKind::Unsupported => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::AlreadyExists => 4,
        _ => 1,
    }
}

/// An engine error's message followed by the causes it does not already repeat.
fn describe(e: &Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        Self {
            code: code_for(e.kind()),
            message: describe(&e),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}
