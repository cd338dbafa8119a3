//! The polling reader of one shard: GetRecords at most once per `poll_interval`.

use aws_sdk_kinesis::types::{ChildShard, ShardIteratorType};
use aws_smithy_types::DateTime;
use tokio::time::Instant;
use tributary_core::{Error, ErrorKind, Result, Timestamp};

use crate::error::{code, convert};
use crate::reader::{ReaderContext, ReaderExit, Start};

/// Reads a shard to its end (or until the consumer goes away).
pub(crate) async fn read_shard(mut cx: ReaderContext) -> ReaderExit {
    let shared = cx.shared.clone();
    let config = &shared.config;
    let interval = config.poll_interval;
    let mut iterator: Option<String> = None;
    let mut failures = 0u32;
    let mut next_call = Instant::now();
    loop {
        let current = match iterator.take() {
            Some(it) => it,
            None => match shard_iterator(&mut cx).await {
                Ok(it) => {
                    cx.positioned();
                    failures = 0;
                    it
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    cx.pause(failures, &e, cx.shared.config.poll_interval).await;
                    continue;
                }
                Err(e) => return ReaderExit::Failed(e),
            },
        };
        tokio::time::sleep_until(next_call).await;
        // A lapsed lease's reader must not spend the shard's 5 reads/s of the member
        // that holds it now.
        cx.wait_while_lapsed().await;
        let result = cx
            .shared
            .client
            .get_records()
            .shard_iterator(&current)
            .limit(i32::try_from(config.records_per_read).unwrap_or(10_000))
            .send()
            .await;
        // Counted from the answer, not from the call: the service counts a shard's
        // 5 reads/s where calls arrive, and a call delayed on its way (signing, a busy
        // machine) would otherwise arrive less than `interval` after the previous one.
        next_call = Instant::now() + interval;
        match result {
            Ok(out) => {
                failures = 0;
                if let Some(lag) = out.millis_behind_latest {
                    cx.record_lag(lag);
                }
                let records = cx.convert(out.records);
                if !cx.deliver(records).await {
                    return ReaderExit::Stopped;
                }
                match out.next_shard_iterator {
                    Some(next) => iterator = Some(next),
                    None => return ReaderExit::Ended(out.child_shards.unwrap_or_default()),
                }
            }
            // Iterators live five minutes; a new one resumes after the last record
            // delivered. (Some emulators answer a stale iterator with a bare 500.)
            Err(e) if code(&e) == Some("ExpiredIteratorException") => {
                tracing::debug!(shard = %cx.shard, "shard iterator expired: resuming after the last record delivered");
            }
            Err(e) => {
                let e = convert(&format!("reading {} of {}", cx.shard, cx.stream), e);
                match e.kind() {
                    ErrorKind::NotFound => return ReaderExit::Failed(e),
                    _ if e.is_retryable() => {
                        failures += 1;
                        cx.pause(failures, &e, cx.shared.config.poll_interval).await;
                    }
                    // An iterator the server no longer accepts: get a new one, once.
                    ErrorKind::Backend | ErrorKind::InvalidInput if failures == 0 => {
                        failures += 1;
                        tracing::debug!(shard = %cx.shard, "GetRecords failed, getting a new iterator: {e}");
                    }
                    _ => return ReaderExit::Failed(e),
                }
            }
        }
    }
}

/// Whether a shard ends right after `sequence`: its children when it does. `None`
/// also when the question cannot be answered now (the next check asks again).
pub(crate) async fn ended_after(cx: &ReaderContext, sequence: &str) -> Option<Vec<ChildShard>> {
    let iterator = cx
        .shared
        .client
        .get_shard_iterator()
        .stream_name(cx.stream.as_ref())
        .shard_id(cx.shard.as_str())
        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(sequence)
        .send()
        .await
        .ok()?
        .shard_iterator?;
    let out = cx
        .shared
        .client
        .get_records()
        .shard_iterator(iterator)
        .limit(1)
        .send()
        .await
        .ok()?;
    (out.records.is_empty() && out.next_shard_iterator.is_none())
        .then(|| out.child_shards.unwrap_or_default())
}

/// A shard iterator at the reader's resume point.
async fn shard_iterator(cx: &mut ReaderContext) -> Result<String> {
    let start = cx.resume_point().effective();
    let taken_at = Timestamp::now();
    let request = |start: &Start| {
        let request = cx
            .shared
            .client
            .get_shard_iterator()
            .stream_name(cx.stream.as_ref())
            .shard_id(cx.shard.as_str());
        match start {
            Start::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Start::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            Start::AtSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            Start::AfterSequence(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            Start::Timestamp(t) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(t.as_millis())),
        }
    };
    let what = format!("getting an iterator for {} of {}", cx.shard, cx.stream);
    let out = match request(&start).send().await {
        Ok(out) => out,
        // A sequence number of another shard: start at the beginning and let the floor
        // skip what is below it.
        Err(e) if matches!(start, Start::AtSequence(_)) && code(&e) == Some("InvalidArgumentException") => {
            request(&Start::TrimHorizon)
                .send()
                .await
                .map_err(|e| convert(&what, e))?
        }
        // The server's clock is behind ours: a start time is still in its future.
        Err(e) if matches!(start, Start::Timestamp(_)) && code(&e) == Some("InvalidArgumentException") => {
            request(&Start::Latest)
                .send()
                .await
                .map_err(|e| convert(&what, e))?
        }
        Err(e) => return Err(convert(&what, e)),
    };
    let iterator = out.shard_iterator.ok_or_else(|| {
        Error::new(
            ErrorKind::Backend,
            format!("{what}: Kinesis returned no iterator"),
        )
    })?;
    cx.pin_latest(&start, taken_at);
    Ok(iterator)
}
