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
