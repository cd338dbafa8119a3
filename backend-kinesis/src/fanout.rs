//! Enhanced fan-out: a registered stream consumer, and one SubscribeToShard
//! subscription per shard, renewed before Kinesis ends it and after errors.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_smithy_types::DateTime;
use tokio::time::Instant;
use tributary_core::{Error, ErrorKind, Result, Timestamp};

use crate::Shared;
use crate::error::{code, convert};
use crate::reader::{ReaderContext, ReaderExit, Start};

/// A stream consumer registered for enhanced fan-out.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) consumer_arn: Arc<str>,
    /// Registered by this consumer under a generated name: deregistered on close.
    owned: bool,
}

/// The stream consumer every member of a group shares when none is configured, named
/// after the group's lease table: one registration per group, as Kinesis limits a
/// stream to 20, so members that come and go (or crash) do not pile registrations up.
/// Readable, and unique per lease table thanks to a hash of its name.
pub(crate) fn group_consumer_name(lease_table: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(lease_table.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let clean: String = lease_table
        .strip_prefix("tributary-")
        .unwrap_or(lease_table)
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                true => c,
                false => '_',
            },
        )
        .take(128 - "tributary--".len() - hash.len())
        .collect();
    format!("tributary-{clean}-{hash}")
}

impl Registration {
    /// Registers (or finds) the stream consumer and waits until it is ACTIVE: the
    /// configured one, else the one shared by the group with the lease table
    /// `shared_by`, else one of this consumer's own.
    pub(crate) async fn register(shared: &Shared, stream: &str, shared_by: Option<&str>) -> Result<Self> {
        let config = &shared.config;
        let client = &shared.client;
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| convert(&format!("describing stream {stream}"), e))?;
        let stream_arn = summary
            .stream_description_summary()
            .map(|s| s.stream_arn().to_string())
            .ok_or_else(|| Error::new(ErrorKind::Backend, format!("Kinesis did not describe {stream}")))?;
        let (name, owned) = match (&config.fan_out_consumer, shared_by) {
            (Some(name), _) => (name.clone(), false),
            // Kept on close: the other members read through it.
            (None, Some(lease_table)) => (group_consumer_name(lease_table), false),
            (None, None) => (format!("tributary-{:016x}", fastrand::u64(..)), true),
        };
        let arn = match client
            .register_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(&name)
            .send()
            .await
        {
            Ok(out) => out.consumer().map(|c| c.consumer_arn().to_string()),
            Err(e) if code(&e) == Some("ResourceInUseException") => None,
            Err(e) => {
                return Err(convert(
                    &format!("registering fan-out consumer {name} on {stream}"),
                    e,
                ));
            }
        };
        let deadline = Instant::now() + config.operation_timeout;
        loop {
            let request = match &arn {
                Some(arn) => client.describe_stream_consumer().consumer_arn(arn),
                None => client
                    .describe_stream_consumer()
                    .stream_arn(&stream_arn)
                    .consumer_name(&name),
            };
            let described = request
                .send()
                .await
                .map_err(|e| convert(&format!("describing fan-out consumer {name}"), e));
            match described {
                Ok(out) => {
                    if let Some(d) = out.consumer_description()
                        && d.consumer_status() == &ConsumerStatus::Active
                    {
                        return Ok(Self {
                            consumer_arn: d.consumer_arn().into(),
                            owned,
                        });
                    }
                }
                // Registration takes a moment to be visible.
                Err(e) if !e.is_retryable() && e.kind() != ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "fan-out consumer {name} did not become ACTIVE within {:?}",
                        config.operation_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deregisters a consumer this reader registered.
    pub(crate) async fn release(self, shared: &Shared) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        match shared
            .client
            .deregister_stream_consumer()
            .consumer_arn(self.consumer_arn.as_ref())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(convert("deregistering the fan-out consumer", e)),
        }
    }

    /// Deregisters from a dropped consumer, when a runtime is there to do it.
    pub(crate) fn release_in_background(self, shared: &Arc<Shared>) {
        if !self.owned {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = shared.clone();
            runtime.spawn(async move {
                if let Err(e) = self.release(&shared).await {
                    tracing::warn!("{e}");
                }
            });
        }
    }
}

fn starting_position(start: &Start) -> Result<StartingPosition> {
    let builder = StartingPosition::builder();
    let builder = match start {
        Start::TrimHorizon => builder.r#type(ShardIteratorType::TrimHorizon),
        Start::Latest => builder.r#type(ShardIteratorType::Latest),
        Start::AtSequence(seq) => builder
            .r#type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(seq),
        Start::AfterSequence(seq) => builder
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq),
        Start::Timestamp(t) => builder
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(t.as_millis())),
    };
    builder
        .build()
        .map_err(|e| Error::new(ErrorKind::Backend, format!("building a starting position: {e}")))
}

/// Reads a shard to its end through subscriptions.
pub(crate) async fn read_shard(mut cx: ReaderContext, consumer_arn: Arc<str>) -> ReaderExit {
    let mut failures = 0u32;
    // The position Kinesis gave to continue from, once a subscription sent an event.
    let mut continuation: Option<String> = None;
    loop {
        cx.wait_while_lapsed().await;
        let start = match &continuation {
            Some(seq) => Start::AfterSequence(seq.clone()),
            None => cx.resume_point().effective(),
        };
        let taken_at = Timestamp::now();
        let subscribed = match starting_position(&start) {
            Ok(position) => cx
                .shared
                .streaming_client
                .subscribe_to_shard()
                .consumer_arn(consumer_arn.as_ref())
                .shard_id(cx.shard.as_str())
                .starting_position(position)
                .send()
                .await
                .map_err(|e| {
                    let invalid_start =
                        matches!(start, Start::AtSequence(_)) && code(&e) == Some("InvalidArgumentException");
                    (
                        invalid_start,
                        convert(&format!("subscribing to {} of {}", cx.shard, cx.stream), e),
                    )
                }),
            Err(e) => return ReaderExit::Failed(e),
        };
        let mut events = match subscribed {
            Ok(out) => {
                cx.pin_latest(&start, taken_at);
                cx.positioned();
                out.event_stream
            }
            Err((true, _)) => {
                // A sequence number of another shard: start at the beginning and let
                // the floor skip what is below it.
                cx.start = Start::TrimHorizon;
                continue;
            }
            // The previous subscription may still be open for a few seconds.
            Err((_, e)) if e.is_retryable() => {
                failures += 1;
                cx.pause(failures, &e, Duration::ZERO).await;
                continue;
            }
            Err((_, e)) => return ReaderExit::Failed(e),
        };
        let renew_at = Instant::now() + cx.shared.config.resubscribe_after;
        let mut end_checked = Instant::now();
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = tokio::time::sleep_until(renew_at) => break,
            };
            match event {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    failures = 0;
                    cx.record_lag(event.millis_behind_latest);
                    let records_len = event.records.len();
                    let records = cx.convert(event.records);
                    if !cx.deliver(records).await {
                        return ReaderExit::Stopped;
                    }
                    let idle = records_len == 0;
                    if event.continuation_sequence_number.is_empty() {
                        if let Some(children) = event.child_shards.filter(|c| !c.is_empty()) {
                            return ReaderExit::Ended(children);
                        }
                    } else {
                        continuation = Some(event.continuation_sequence_number);
                    }
                    // Not every server says when a subscribed shard ends: while idle,
                    // ask GetRecords now and then whether the shard has more.
                    if idle && end_checked.elapsed() >= cx.shared.config.shard_refresh {
                        end_checked = Instant::now();
                        if let Some(seq) = &continuation
                            && let Some(children) = crate::polling::ended_after(&cx, seq).await
                        {
                            return ReaderExit::Ended(children);
                        }
                    }
                }
                Ok(Some(_)) => {}
                // Kinesis ends every subscription after five minutes.
                Ok(None) => break,
                Err(e) => {
                    let e = convert(&format!("reading the subscription to {}", cx.shard), e);
                    failures += 1;
                    if e.kind() == ErrorKind::NotFound {
                        return ReaderExit::Failed(e);
                    }
                    cx.pause(failures, &e, Duration::ZERO).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::group_consumer_name;

    #[test]
    fn group_consumer_names_are_valid_and_distinct() {
        let long = "t".repeat(255);
        for table in ["orders", "a.b", "a_b", long.as_str()] {
            let name = group_consumer_name(table);
            assert!((1..=128).contains(&name.len()), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
                "{name}"
            );
        }
        assert_ne!(group_consumer_name("a.b"), group_consumer_name("a_b"));
        assert_eq!(group_consumer_name("orders"), group_consumer_name("orders"));
        assert!(
            group_consumer_name("tributary-orders-billing-0a1b2c3d").starts_with("tributary-orders-billing-")
        );
    }
}
