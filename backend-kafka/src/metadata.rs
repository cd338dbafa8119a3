//! Blocking librdkafka calls (metadata, watermarks, sync commits) run off the async
//! workers, and topic metadata read the same way by every client.

use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use tributary_core::{Error, ErrorKind, Result};

use crate::error;

/// Runs a blocking librdkafka call on tokio's blocking pool.
///
/// # Errors
/// `Backend` if the call panicked or the runtime is shutting down.
pub(crate) async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(call).await.map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("kafka: a blocking client call failed: {e}"),
        )
    })
}

/// The partition count of `topic` in `metadata`.
///
/// # Errors
/// `NotFound` when the broker does not know the topic, the broker's error otherwise.
pub(crate) fn partition_count(metadata: &Metadata, topic: &str) -> Result<u32> {
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(missing(topic));
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return Err(match error::kind_of(code) {
            ErrorKind::NotFound => missing(topic),
            _ => error::from_code(&format!("metadata of topic {topic}"), code),
        });
    }
    if t.partitions().is_empty() {
        return Err(missing(topic));
    }
    Ok(u32::try_from(t.partitions().len()).unwrap_or(u32::MAX))
}

/// Fetches the metadata of one topic through `client` (blocking: call via [`blocking`]).
///
/// # Errors
/// `NotFound` for a missing topic, `Unavailable`/`Timeout` when no broker answered.
pub(crate) fn fetch_partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<u32> {
    retry_transient(timeout, || {
        let metadata = client
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| error::convert(&format!("metadata of topic {topic}"), e))?;
        partition_count(&metadata, topic)
    })
}

/// The error for a topic the brokers do not know.
pub(crate) fn missing(topic: &str) -> Error {
    Error::not_found(format!("kafka: topic {topic:?} does not exist"))
}

/// Retries a blocking call while it fails with a retryable error (a topic just created
/// has no leader yet on every broker), for up to `within`.
///
/// # Errors
/// The last error once `within` has passed, or the first one that is not retryable.
pub(crate) fn retry_transient<T>(within: Duration, mut call: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match call() {
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
