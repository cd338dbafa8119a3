//! AWS SDK errors classified into Tributary's error kinds, in one place.

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;
use tributary_core::{Error, ErrorKind};

/// The error kind for a Kinesis error code (service errors and PutRecords entries).
pub(crate) fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "ResourceNotFoundException" => ErrorKind::NotFound,
        // The stream is being created, updated or deleted: it settles by itself.
        "ResourceInUseException" => ErrorKind::Unavailable,
        "LimitExceededException"
        | "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "KMSThrottlingException"
        | "RequestLimitExceeded" => ErrorKind::Throttled,
        "InvalidArgumentException" | "ValidationException" | "SerializationException" => {
            ErrorKind::InvalidInput
        }
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "KMSAccessDeniedException"
        | "KMSOptInRequired" => ErrorKind::InvalidConfig,
        "InternalFailure"
        | "InternalFailureException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    }
}

/// Converts an SDK error; `what` says what was being done.
pub(crate) fn convert<E, R>(what: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let kind = match &err {
        SdkError::ServiceError(_) => match err.code() {
            Some(code) => kind_of_code(code),
            None => ErrorKind::Backend,
        },
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => ErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_user() => ErrorKind::InvalidConfig,
        SdkError::DispatchFailure(_) => ErrorKind::Unavailable,
        SdkError::ResponseError(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    };
    let message = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{what}: {code}: {message}"),
        (Some(code), None) => format!("{what}: {code}"),
        _ => format!("{what}: {}", DisplayErrorContext(&err)),
    };
    // The SDK reports a failed credential lookup as a failed dispatch: it is the
    // setup that is wrong, and retrying will not help.
    let kind = if kind == ErrorKind::Unavailable && mentions_credentials(&message) {
        ErrorKind::InvalidConfig
    } else {
        kind
    };
    Error::new(kind, message).with_source(err)
}

fn mentions_credentials(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("credentials") || lower.contains("identity")
}

/// The SDK error's code, when the service answered.
pub(crate) fn code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(_) => err.code(),
        _ => None,
    }
}

/// Whether a failed request may still have been applied: it was sent and no answer
/// says it was refused.
pub(crate) fn maybe_applied<E>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::DispatchFailure(d) => !d.is_user(),
        SdkError::ServiceError(s) => s.raw().status().is_server_error(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(kind_of_code("ResourceNotFoundException"), ErrorKind::NotFound);
        assert_eq!(
            kind_of_code("ProvisionedThroughputExceededException"),
            ErrorKind::Throttled
        );
        assert_eq!(kind_of_code("InternalFailure"), ErrorKind::Unavailable);
        assert_eq!(kind_of_code("AccessDeniedException"), ErrorKind::InvalidConfig);
        assert_eq!(kind_of_code("KMSDisabledException"), ErrorKind::Backend);
        assert!(kind_of_code("KMSThrottlingException").is_retryable());
    }
}
