//! Layers wrap the producers, consumers and admin handles a backend gives out, to add
//! behaviour (retries, metrics, tracing) to every backend at once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::client::{Admin, Backend, Consumer, ConsumerConfig, Producer, ProducerConfig};
use crate::delivery::DeliveryHandle;
use crate::error::{Error, Result};
use crate::id::{Offset, PartitionId};
use crate::record::{Delivery, Received, Record, StartFrom};
use crate::send::SendError;

/// Wraps what a backend hands out. Every method defaults to no wrapping.
pub trait Layer: Send + Sync + fmt::Debug + 'static {
    /// Wraps a producer.
    fn wrap_producer(&self, inner: Box<dyn Producer>) -> Box<dyn Producer> {
        inner
    }
    /// Wraps a consumer.
    fn wrap_consumer(&self, inner: Box<dyn Consumer>) -> Box<dyn Consumer> {
        inner
    }
    /// Wraps an admin handle.
    fn wrap_admin(&self, inner: Box<dyn Admin>) -> Box<dyn Admin> {
        inner
    }
}

/// A backend whose handles are wrapped by a layer.
#[derive(Debug, Clone)]
pub struct Layered {
    inner: Arc<dyn Backend>,
    layer: Arc<dyn Layer>,
}

impl Layered {
    /// `inner` with every handle wrapped by `layer`.
    pub fn new(inner: Arc<dyn Backend>, layer: impl Layer) -> Self {
        Self {
            inner,
            layer: Arc::new(layer),
        }
    }
}

#[async_trait]
impl Backend for Layered {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        Ok(self.layer.wrap_producer(self.inner.producer(config).await?))
    }
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        Ok(self.layer.wrap_consumer(self.inner.consumer(config).await?))
    }
    async fn admin(&self) -> Result<Box<dyn Admin>> {
        Ok(self.layer.wrap_admin(self.inner.admin().await?))
    }
}

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (0 for the first retry): exponential
    /// with full jitter, uniformly random in `[0, min(max, initial · 2^retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        crate::backoff::backoff(self.initial_backoff, self.max_backoff, retry)
    }
}

/// Retries operations that failed with a retryable error ([`Error::is_retryable`]),
/// with exponential backoff and full jitter. A failed send is retried with only the
/// records that were not confirmed, so nothing is sent twice by the retry and per-key
/// order holds. `Indeterminate` outcomes are never retried: the caller decides.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// Retries with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }
}

impl Layer for RetryLayer {
    fn wrap_producer(&self, inner: Box<dyn Producer>) -> Box<dyn Producer> {
        Box::new(RetryProducer {
            inner,
            policy: self.policy,
        })
    }
    fn wrap_consumer(&self, inner: Box<dyn Consumer>) -> Box<dyn Consumer> {
        Box::new(RetryConsumer {
            inner,
            policy: self.policy,
        })
    }
}

struct RetryProducer {
    inner: Box<dyn Producer>,
    policy: RetryPolicy,
}

#[async_trait]
impl Producer for RetryProducer {
    async fn send(&self, stream: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
        // Index in the caller's batch of every record still to send, so deliveries can
        // be put back in the caller's order.
        let mut positions: Vec<usize> = (0..records.len()).collect();
        let mut results: Vec<Option<Delivery>> = vec![None; records.len()];
        let mut pending = records;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.inner.send(stream, pending).await {
                Ok(deliveries) => {
                    for (pos, d) in positions.iter().zip(deliveries) {
                        results[*pos] = Some(d);
                    }
                    return results
                        .into_iter()
                        .map(|d| {
                            d.ok_or_else(|| Error::new(crate::ErrorKind::Backend, "a delivery is missing"))
                        })
                        .collect::<Result<Vec<_>>>()
                        .map_err(|e| SendError::nothing_sent(e, Vec::new()));
                }
                Err(SendError {
                    error,
                    delivered,
                    unsent,
                }) => {
                    let mut confirmed = vec![false; positions.len()];
                    for (i, d) in delivered {
                        if let Some(pos) = positions.get(i) {
                            results[*pos] = Some(d);
                            confirmed[i] = true;
                        }
                    }
                    positions = positions
                        .into_iter()
                        .zip(confirmed)
                        .filter_map(|(pos, done)| (!done).then_some(pos))
                        .collect();
                    if !error.is_retryable()
                        || attempt >= self.policy.max_attempts.max(1)
                        || unsent.is_empty()
                    {
                        let error = if unsent.is_empty() {
                            error
                        } else {
                            gave_up(error, attempt)
                        };
                        let delivered = results
                            .into_iter()
                            .enumerate()
                            .filter_map(|(i, d)| d.map(|d| (i, d)))
                            .collect();
                        return Err(SendError {
                            error,
                            delivered,
                            unsent,
                        });
                    }
                    tracing::debug!(stream, attempt, unsent = unsent.len(), error = %error, "retrying send");
                    tokio::time::sleep(self.policy.backoff(attempt - 1)).await;
                    pending = unsent;
                }
            }
        }
    }

    /// Handed over as it is: the engine's pipeline retries what it can (Kafka until
    /// its delivery timeout, Kinesis its refused entries), and a record whose handle
    /// failed cannot be resent behind the records of its key handed over since.
    async fn enqueue(&self, stream: &str, record: Record) -> Result<DeliveryHandle> {
        self.inner.enqueue(stream, record).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

struct RetryConsumer {
    inner: Box<dyn Consumer>,
    policy: RetryPolicy,
}

/// The error to report once retrying stops after `attempts` attempts: `error` itself
/// when it was not retryable, else the same kind, saying the attempts ran out, and no
/// longer retryable, so that an outer retry loop does not multiply the attempts.
fn gave_up(error: Error, attempts: u32) -> Error {
    if !error.is_retryable() {
        return error;
    }
    Error::new(
        error.kind(),
        format!("gave up after {attempts} attempt(s): {}", error.message()),
    )
    .with_retryable(false)
    .with_context_of(&error)
    .with_source(error)
}

/// Sleeps before the next attempt, or hands back the error to report when it is final.
async fn backoff_or_fail(policy: RetryPolicy, attempt: &mut u32, error: Error) -> Result<()> {
    *attempt += 1;
    if !error.is_retryable() || *attempt >= policy.max_attempts.max(1) {
        return Err(gave_up(error, *attempt));
    }
    tokio::time::sleep(policy.backoff(*attempt - 1)).await;
    Ok(())
}

#[async_trait]
impl Consumer for RetryConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        let mut attempt = 0;
        loop {
            match self.inner.poll(max, timeout).await {
                Ok(records) => return Ok(records),
                Err(e) => backoff_or_fail(self.policy, &mut attempt, e).await?,
            }
        }
    }
    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        self.inner.ack(partition, offset)
    }
    async fn commit(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.inner.commit().await {
                Ok(()) => return Ok(()),
                Err(e) => backoff_or_fail(self.policy, &mut attempt, e).await?,
            }
        }
    }
    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        self.inner.seek(partition, to).await
    }
    fn assignment(&self) -> Vec<PartitionId> {
        self.inner.assignment()
    }
    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::ErrorKind;

    /// Confirms the records whose value is in `accept` on each scripted attempt and
    /// fails the rest with the scripted error kind.
    struct Scripted {
        attempts: Mutex<VecDeque<(Vec<&'static str>, ErrorKind)>>,
        seen: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Producer for Scripted {
        async fn send(&self, _: &str, records: Vec<Record>) -> Result<Vec<Delivery>, SendError> {
            let values: Vec<String> = records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                .collect();
            self.seen.lock().unwrap().push(values.clone());
            let (accept, kind) = self
                .attempts
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((vec![], ErrorKind::Backend));
            let mut delivered = Vec::new();
            let mut unsent = Vec::new();
            for (i, r) in records.into_iter().enumerate() {
                if accept.contains(&values[i].as_str()) {
                    let offset = Offset::new(values[i].as_bytes()[0].into());
                    delivered.push((
                        i,
                        Delivery {
                            partition: PartitionId::from_index(0),
                            offset,
                            timestamp: None,
                        },
                    ));
                } else {
                    unsent.push(r);
                }
            }
            if unsent.is_empty() {
                return Ok(delivered.into_iter().map(|(_, d)| d).collect());
            }
            Err(SendError {
                error: Error::new(kind, "scripted"),
                delivered,
                unsent,
            })
        }
        async fn enqueue(&self, _: &str, _: Record) -> Result<DeliveryHandle> {
            Err(Error::unsupported("not scripted"))
        }
        async fn flush(&self) -> Result<()> {
            Ok(())
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    fn layered(script: Vec<(Vec<&'static str>, ErrorKind)>) -> (Box<dyn Producer>, Arc<Scripted>) {
        let scripted = Arc::new(Scripted {
            attempts: Mutex::new(script.into()),
            seen: Mutex::default(),
        });
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        (
            RetryLayer::new(policy).wrap_producer(Box::new(scripted.clone())),
            scripted,
        )
    }

    fn batch(values: &[&'static str]) -> Vec<Record> {
        values.iter().map(|v| Record::new(*v)).collect()
    }

    #[tokio::test]
    async fn resends_only_unconfirmed_records_and_restores_order() {
        let (producer, scripted) = layered(vec![
            (vec!["a", "c"], ErrorKind::Throttled),
            (vec!["b"], ErrorKind::Throttled),
            (vec!["d"], ErrorKind::Throttled),
        ]);
        let deliveries = producer.send("s", batch(&["a", "b", "c", "d"])).await.unwrap();
        let offsets: Vec<u64> = deliveries.iter().map(|d| d.offset.as_u64().unwrap()).collect();
        assert_eq!(offsets, [b'a', b'b', b'c', b'd'].map(u64::from));
        let seen = scripted.seen.lock().unwrap().clone();
        assert_eq!(seen, vec![vec!["a", "b", "c", "d"], vec!["b", "d"], vec!["d"]]);
    }

    #[tokio::test]
    async fn gives_up_on_non_retryable_and_reports_positions() {
        let (producer, scripted) = layered(vec![
            (vec!["b"], ErrorKind::Throttled),
            (vec![], ErrorKind::Indeterminate),
        ]);
        let err = producer.send("s", batch(&["a", "b", "c"])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Indeterminate);
        assert_eq!(err.delivered.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1]);
        assert_eq!(err.unsent, batch(&["a", "c"]));
        assert_eq!(
            scripted.seen.lock().unwrap().len(),
            2,
            "indeterminate is not retried"
        );
    }

    #[tokio::test]
    async fn stops_after_max_attempts() {
        let (producer, scripted) = layered(vec![(vec![], ErrorKind::Throttled); 10]);
        let err = producer.send("s", batch(&["a"])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert!(
            !err.is_retryable(),
            "the layer gave up: retrying again is the caller's call"
        );
        assert!(
            err.error
                .message()
                .starts_with("gave up after 4 attempt(s): scripted"),
            "{err}"
        );
        assert_eq!(err.unsent.len(), 1);
        assert_eq!(scripted.seen.lock().unwrap().len(), 4);
    }

    /// A consumer whose polls and commits always fail with `kind`, counting calls.
    #[derive(Default)]
    struct Failing {
        kind: Option<ErrorKind>,
        calls: u32,
    }

    #[async_trait]
    impl Consumer for Failing {
        async fn poll(&mut self, _: usize, _: Duration) -> Result<Vec<Received>> {
            self.calls += 1;
            Err(Error::new(
                self.kind.unwrap_or(ErrorKind::Unavailable),
                "broker away",
            ))
        }
        fn ack(&mut self, _: &PartitionId, _: &Offset) -> Result<()> {
            Ok(())
        }
        async fn commit(&mut self) -> Result<()> {
            self.calls += 1;
            Err(Error::new(
                self.kind.unwrap_or(ErrorKind::Unavailable),
                "broker away",
            ))
        }
        async fn seek(&mut self, _: &PartitionId, _: StartFrom) -> Result<()> {
            Ok(())
        }
        fn assignment(&self) -> Vec<PartitionId> {
            Vec::new()
        }
        async fn close(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_consumer_gives_up_with_an_error_marked_final_and_passes_others_through() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        };
        let mut consumer = RetryConsumer {
            inner: Box::new(Failing::default()),
            policy,
        };
        let err = consumer.poll(10, Duration::from_millis(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(!err.is_retryable());
        assert_eq!(err.message(), "gave up after 3 attempt(s): broker away");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the last failure is kept as the source"
        );
        let err = consumer.commit().await.unwrap_err();
        assert!(!err.is_retryable());

        let mut refused = RetryConsumer {
            inner: Box::new(Failing {
                kind: Some(ErrorKind::NotAssigned),
                calls: 0,
            }),
            policy,
        };
        let err = refused.commit().await.unwrap_err();
        assert_eq!(err.message(), "broker away", "a final error comes back as it was");
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
        };
        for retry in 0..40 {
            let ceiling = Duration::from_millis(100 * (1u64 << retry.min(3)));
            assert!(policy.backoff(retry) <= ceiling.min(Duration::from_millis(800)));
        }
        let draws: std::collections::HashSet<Duration> = (0..50).map(|_| policy.backoff(3)).collect();
        assert!(draws.len() > 10, "backoffs are jittered");
    }
}
