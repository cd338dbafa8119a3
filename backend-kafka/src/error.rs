//! librdkafka's errors as Tributary errors: one place decides what is retryable, what
//! may have been persisted and what means a missing topic.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use tributary_core::{Error, ErrorKind};

/// The kind a librdkafka error code stands for.
pub(crate) fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::UnknownTopicOrPartition
        | Code::UnknownTopic
        | Code::UnknownPartition
        | Code::GroupIdNotFound => ErrorKind::NotFound,
        Code::TopicAlreadyExists => ErrorKind::AlreadyExists,
        Code::MessageSizeTooLarge
        | Code::InvalidMessageSize
        | Code::InvalidMessage
        | Code::InvalidRecord
        | Code::InvalidTopic
        | Code::InvalidPartitions
        | Code::InvalidReplicationFactor
        | Code::InvalidRequest
        | Code::InvalidArgument
        | Code::InvalidTimestamp
        | Code::MessageBatchTooLarge
        | Code::InvalidConfig
        | Code::PolicyViolation => ErrorKind::InvalidInput,
        Code::ThrottlingQuotaExceeded => ErrorKind::Throttled,
        // Sent, and neither confirmed nor refused: it may be in the log.
        Code::MessageTimedOut | Code::PurgeInflight | Code::Fatal | Code::InconsistentGroupProtocol => {
            ErrorKind::Indeterminate
        }
        Code::RequestTimedOut | Code::OperationTimedOut => ErrorKind::Timeout,
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::BrokerNotAvailable
        | Code::ReplicaNotAvailable
        | Code::NetworkException
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::CoordinatorNotAvailable
        | Code::NotCoordinator
        | Code::CoordinatorLoadInProgress
        | Code::RebalanceInProgress
        | Code::PurgeQueue
        | Code::QueueFull
        | Code::KafkaStorageError
        | Code::WaitingForCoordinator
        | Code::TimedOutQueue => ErrorKind::Unavailable,
        Code::BadMessage | Code::BadCompression => ErrorKind::Corruption,
        Code::IllegalGeneration
        | Code::UnknownMemberId
        | Code::FencedInstanceId
        | Code::StaleMemberEpoch
        | Code::FencedMemberEpoch
        | Code::AssignmentLost => ErrorKind::NotAssigned,
        Code::ClusterAuthorizationFailed
        | Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::SSL
        | Code::Authentication
        | Code::UnsupportedSASLMechanism
        | Code::IllegalSASLState => ErrorKind::InvalidConfig,
        Code::BrokerDestroy => ErrorKind::Closed,
        _ => ErrorKind::Backend,
    }
}

/// The code inside an error, where it carries one.
pub(crate) fn code_of(error: &KafkaError) -> Option<Code> {
    error.rdkafka_error_code()
}

/// A librdkafka error as a Tributary error, with what was being done.
pub(crate) fn convert(doing: &str, error: KafkaError) -> Error {
    let kind = match &error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorKind::InvalidConfig,
        KafkaError::Canceled => ErrorKind::Closed,
        KafkaError::Nul(_) => ErrorKind::InvalidInput,
        other => code_of(other).map_or(ErrorKind::Backend, kind_of),
    };
    Error::new(kind, format!("kafka: {doing}: {error}")).with_source(error)
}

/// An error code alone (from a topic-partition list or an admin result).
pub(crate) fn from_code(doing: &str, code: Code) -> Error {
    Error::new(kind_of(code), format!("kafka: {doing}: {code}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_after_sending_are_indeterminate_and_never_retried() {
        let e = convert("send", KafkaError::MessageProduction(Code::MessageTimedOut));
        assert_eq!(e.kind(), ErrorKind::Indeterminate);
        assert!(!e.is_retryable());
        assert_eq!(kind_of(Code::PurgeQueue), ErrorKind::Unavailable);
        assert_eq!(kind_of(Code::UnknownTopicOrPartition), ErrorKind::NotFound);
        assert_eq!(kind_of(Code::MessageSizeTooLarge), ErrorKind::InvalidInput);
        assert!(convert("x", KafkaError::MessageConsumption(Code::AllBrokersDown)).is_retryable());
    }
}

/// Remembers why librdkafka's authentication failed, so the operation that then times
/// out or finds no broker can say so: librdkafka reports a refused password as a
/// client error event, while the call itself only sees a transport failure.
#[derive(Debug, Default)]
pub(crate) struct AuthWatch {
    failure: std::sync::Mutex<Option<String>>,
    /// Scrubbed from anything recorded, should a message ever echo it.
    secrets: Vec<String>,
}

impl AuthWatch {
    pub(crate) fn new(secrets: Vec<String>) -> Self {
        Self {
            failure: std::sync::Mutex::default(),
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Called from the client's error callback (served when the client polls).
    pub(crate) fn observe(&self, error: &KafkaError, reason: &str) {
        let code = code_of(error);
        if matches!(code, Some(Code::Authentication | Code::SaslAuthenticationFailed)) {
            self.record(reason);
        }
    }

    /// Called from the client's log callback, which librdkafka calls from its own
    /// threads at once: a broker connection failing authentication logs there first.
    pub(crate) fn observe_log(&self, level: rdkafka::config::RDKafkaLogLevel, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        let severe = matches!(
            level,
            Level::Emerg | Level::Alert | Level::Critical | Level::Error
        );
        if severe && message.contains("SASL authentication error") {
            self.record(message);
        }
    }

    fn record(&self, reason: &str) {
        let mut text = reason.to_string();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "<redacted>");
        }
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
    }

    /// `error`, or an authentication failure if one explains it.
    pub(crate) fn explain(&self, error: Error) -> Error {
        if !matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) {
            return error;
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            Some(why) => Error::new(
                ErrorKind::InvalidConfig,
                format!("kafka: authentication failed: {why} (then: {})", error.message()),
            ),
            None => error,
        }
    }
}

/// The client context of producers and admin clients: logs librdkafka's errors and
/// watches for authentication failures.
pub(crate) struct WatchedContext {
    pub(crate) auth: std::sync::Arc<AuthWatch>,
}

impl rdkafka::ClientContext for WatchedContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.auth.observe_log(level, message);
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.auth.observe(&error, reason);
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

/// librdkafka's log lines as `tracing` events, at their own levels (as rdkafka's
/// default context does).
pub(crate) fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
        }
        Level::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
        Level::Notice | Level::Info => tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}"),
        Level::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
    }
}
