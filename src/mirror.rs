//! Bridging one engine into another: read a stream as a consumer-group member, write
//! each batch to a stream of another (or the same) engine, and commit the batch at the
//! source only once the destination confirmed all of it.

use std::future::Future;
use std::time::{Duration, Instant};

use tributary_core::raw::{validate_group_name, validate_stream_name};
use tributary_core::{
    Bytes, Consumer, ConsumerConfig, DeliveryHandle, Error, ErrorKind, Producer, ProducerConfig, Received,
    Record, Result, StartFrom, Timestamp,
};

use crate::client::Client;

/// What to mirror and how. Built with [`MirrorOptions::new`]; every field has a sound
/// default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorOptions {
    /// The stream read at the source.
    pub source_stream: String,
    /// The stream written at the destination (it must exist).
    pub destination_stream: String,
    /// The source consumer group whose commits make the mirror resumable. Two mirrors
    /// with the same group split the source's partitions between them.
    pub group: String,
    /// Where partitions without a commit of `group` start (default: earliest).
    pub start: StartFrom,
    /// Most records read, written and committed as one batch (default 500).
    pub batch: usize,
    /// Stop after this many records were mirrored (default: no limit).
    pub max_records: Option<u64>,
    /// Stop once no record arrived for this long while the mirror held partitions (or
    /// waited two minutes for them) (default: run until stopped).
    pub stop_when_idle: Option<Duration>,
    /// How often progress is reported (default 1 s).
    pub progress_every: Duration,
    /// Consecutive failed sends of one batch, each retried after a growing pause (up to
    /// 5 s), before the mirror gives up with the last error (default 20).
    pub send_attempts: u32,
}

impl MirrorOptions {
    /// Mirrors `source_stream` into `destination_stream` as member of `group`.
    pub fn new(
        source_stream: impl Into<String>,
        destination_stream: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        Self {
            source_stream: source_stream.into(),
            destination_stream: destination_stream.into(),
            group: group.into(),
            start: StartFrom::Earliest,
            batch: 500,
            max_records: None,
            stop_when_idle: None,
            progress_every: Duration::from_secs(1),
            send_attempts: 20,
        }
    }

    fn validate(&self) -> Result<()> {
        validate_stream_name(&self.source_stream)?;
        validate_stream_name(&self.destination_stream)?;
        validate_group_name(&self.group)?;
        if self.batch == 0 {
            return Err(Error::invalid_config("mirror batch must be at least 1 record"));
        }
        if self.send_attempts == 0 {
            return Err(Error::invalid_config("mirror send_attempts must be at least 1"));
        }
        if self.progress_every.is_zero() {
            return Err(Error::invalid_config("mirror progress_every must be above zero"));
        }
        Ok(())
    }
}

/// A mirror's running totals, reported every [`MirrorOptions::progress_every`] and at
/// the end.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MirrorProgress {
    /// Records written to the destination and committed at the source.
    pub mirrored: u64,
    /// Records sent again after a send failed or timed out with an unknown outcome;
    /// some of them may be in the destination twice.
    pub resent: u64,
    /// Time since the mirror started.
    pub elapsed: Duration,
    /// Records per second since the previous report (in the final totals: over the
    /// whole run).
    pub records_per_sec: f64,
    /// Source bytes (key + value) per second, over the same span as `records_per_sec`.
    pub bytes_per_sec: f64,
    /// How far behind the source the mirror is: zero when the last read found nothing
    /// new, else the age of the newest record mirrored. `None` before the first read.
    pub lag: Option<Duration>,
}

/// Mirrors `options.source_stream` of `source` into `options.destination_stream` of
/// `destination` until `stop` resolves, `max_records` were mirrored, or the source was
/// idle for `stop_when_idle`. Calls `on_progress` every `progress_every` and returns
/// the final totals.
///
/// Guarantees: at-least-once. A batch is committed at the source (group
/// `options.group`) only after the destination confirmed every record of it, so a
/// mirror killed at any point and started again resumes at the last committed batch:
/// nothing is lost, and what was written after that commit is written again (counted
/// by nobody: the destination has those records twice). Keys, values, headers and
/// timestamps are kept; destination partitions follow the destination's own
/// partitioner, so each key's records stay in order there. Records with headers need a
/// destination that keeps them (for Kinesis, `headers_envelope = true`), else the
/// mirror stops with the destination's `InvalidInput` error and commits nothing of
/// that batch.
///
/// # Errors
/// `InvalidConfig` for bad options or a stream mirrored into itself; `NotFound` when either stream is missing; the
/// source's poll or commit errors; the destination's send error when it is not
/// retryable or still failing after `send_attempts` tries. Nothing of the failed batch
/// is committed.
///
/// Cancel safety: not cancel safe — dropping the future mid-send leaves records written
/// but not committed (they are mirrored again on restart). Resolve `stop` instead: the
/// mirror then finishes the batch in hand, commits it and closes both sides.
pub async fn mirror(
    source: &Client,
    destination: &Client,
    options: &MirrorOptions,
    stop: impl Future<Output = ()>,
    mut on_progress: impl FnMut(&MirrorProgress),
) -> Result<MirrorProgress> {
    options.validate()?;
    // Fail fast, naming the stream, rather than on the first send.
    destination
        .admin()
        .await?
        .describe_stream(&options.destination_stream)
        .await
        .map_err(|e| with_context(e, "destination", &options.destination_stream))?;
    if std::sync::Arc::ptr_eq(source.backend(), destination.backend())
        && options.source_stream == options.destination_stream
    {
        return Err(Error::invalid_config(format!(
            "mirror source and destination are the same stream {:?} of one engine: it would copy its own copies forever",
            options.source_stream
        )));
    }
    // The producer first: a consumer dropped without close would hold its partitions
    // (or leases) until its session lapsed.
    let producer = destination
        .backend()
        .producer(ProducerConfig::default().with_client_id("tributary-mirror"))
        .await?;
    let config =
        ConsumerConfig::group(&options.source_stream, &options.group).start_from(options.start.clone());
    let mut consumer = match source.consumer(config).await {
        Ok(consumer) => consumer,
        Err(e) => {
            let _ = producer.close().await;
            return Err(with_context(e, "source", &options.source_stream));
        }
    };
    let outcome = run(&mut *consumer, &*producer, options, stop, &mut on_progress).await;
    // Close both whatever happened: the consumer commits nothing more than was acked
    // (every acked record is confirmed at the destination) and leaves its group.
    let closed = consumer.close().await;
    let producer_closed = producer.close().await;
    let progress = outcome?;
    closed?;
    producer_closed?;
    on_progress(&progress);
    Ok(progress)
}

/// The longest the idle clock waits for the group to assign partitions.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(120);

async fn run(
    consumer: &mut dyn Consumer,
    producer: &dyn Producer,
    options: &MirrorOptions,
    stop: impl Future<Output = ()>,
    on_progress: &mut impl FnMut(&MirrorProgress),
) -> Result<MirrorProgress> {
    let started = Instant::now();
    let mut progress = MirrorProgress::default();
    let (mut reported_at, mut reported_records, mut bytes_since_report) = (started, 0u64, 0u64);
    let mut total_bytes = 0u64;
    let mut last_record_at = started;
    let poll_timeout = Duration::from_millis(200);
    tokio::pin!(stop);
    // A batch polled while the previous one was in flight at the destination.
    let mut polled: Option<Vec<Received>> = None;
    let mut stopping = false;
    loop {
        let remaining = options
            .max_records
            .map(|max| max.saturating_sub(progress.mirrored));
        if stopping || remaining == Some(0) {
            break;
        }
        let want = remaining.map_or(options.batch, |r| {
            options.batch.min(r.try_into().unwrap_or(usize::MAX))
        });
        let batch = match polled.take() {
            Some(batch) => batch,
            // poll is cancel safe, so a stop arriving while waiting loses nothing.
            None => tokio::select! {
                biased;
                () = &mut stop => break,
                batch = consumer.poll(want, poll_timeout) => batch?,
            },
        };
        if batch.is_empty() {
            progress.lag = Some(Duration::ZERO);
            // Idle counts from when the mirror holds partitions: a restarted member may
            // wait for its group (a killed predecessor's session) before it gets any.
            if consumer.assignment().is_empty() && started.elapsed() < ASSIGNMENT_WAIT {
                last_record_at = Instant::now();
            }
            if options
                .stop_when_idle
                .is_some_and(|idle| last_record_at.elapsed() >= idle)
            {
                break;
            }
        } else {
            last_record_at = Instant::now();
            let newest = batch.iter().filter_map(|r| r.timestamp).max();
            let bytes = batch
                .iter()
                .map(|r| r.value.len() + r.key.as_ref().map_or(0, |k| k.len()))
                .sum::<usize>() as u64;
            bytes_since_report += bytes;
            total_bytes += bytes;
            let handles = hand_over(producer, options, batch.iter().map(copy_record)).await?;
            let confirmed = confirm(producer, options, &batch, handles);
            // The next batch is read while this one is in flight; it is handed over only
            // once this one is confirmed, so a failed record is resent before any later
            // record of its key.
            let next_want = remaining.map_or(options.batch, |r| {
                let left = r.saturating_sub(batch.len() as u64);
                options.batch.min(left.try_into().unwrap_or(usize::MAX))
            });
            let (resent, next) = if next_want == 0 {
                (confirmed.await, None)
            } else {
                let read_next = async {
                    tokio::select! {
                        biased;
                        () = &mut stop => None,
                        batch = consumer.poll(next_want, poll_timeout) => Some(batch),
                    }
                };
                tokio::join!(confirmed, read_next)
            };
            progress.resent += resent?;
            for record in &batch {
                match consumer.ack(&record.partition, &record.offset) {
                    Ok(()) => {}
                    // Its partition moved on; the new holder copies it again from the
                    // last commit.
                    Err(e) if e.kind() == ErrorKind::NotAssigned => {}
                    Err(e) => return Err(with_context(e, "source", &options.source_stream)),
                }
            }
            match consumer.commit().await {
                Ok(()) => {}
                // The partition moved to another member after a rebalance; that member
                // resumes from the previous commit and writes this batch again.
                Err(e) if e.kind() == ErrorKind::NotAssigned => {
                    tracing::warn!(error = %e, "mirror batch written but its partition moved before the commit");
                }
                // The acks are kept: the next commit covers them.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "mirror commit failed; the next one covers this batch");
                }
                Err(e) => return Err(with_context(e, "source", &options.source_stream)),
            }
            progress.mirrored += batch.len() as u64;
            progress.lag = Some(newest.map_or(Duration::ZERO, age));
            match next {
                None => stopping = next_want != 0,
                Some(next) => polled = Some(next?),
            }
        }
        if reported_at.elapsed() >= options.progress_every {
            let now = Instant::now();
            let secs = now.duration_since(reported_at).as_secs_f64();
            progress.elapsed = now.duration_since(started);
            progress.records_per_sec = (progress.mirrored - reported_records) as f64 / secs;
            progress.bytes_per_sec = bytes_since_report as f64 / secs;
            on_progress(&progress);
            (reported_at, reported_records, bytes_since_report) = (now, progress.mirrored, 0);
        }
    }
    // The final totals: rates over the whole run.
    progress.elapsed = started.elapsed();
    let secs = progress.elapsed.as_secs_f64().max(f64::EPSILON);
    progress.records_per_sec = progress.mirrored as f64 / secs;
    progress.bytes_per_sec = total_bytes as f64 / secs;
    Ok(progress)
}

/// Hands records over to the destination's pipeline, in order.
async fn hand_over(
    producer: &dyn Producer,
    options: &MirrorOptions,
    records: impl Iterator<Item = Record>,
) -> Result<Vec<DeliveryHandle>> {
    let mut handles = Vec::new();
    for record in records {
        let handle = producer
            .enqueue(&options.destination_stream, record)
            .await
            .map_err(|e| with_context(e, "destination", &options.destination_stream))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Waits until every record of `batch` is confirmed at the destination, handing over
/// again the ones that failed (for each key a suffix of its records, in order) after a
/// growing pause. Returns how many records were handed over again.
async fn confirm(
    producer: &dyn Producer,
    options: &MirrorOptions,
    batch: &[Received],
    mut handles: Vec<DeliveryHandle>,
) -> Result<u64> {
    let mut positions: Vec<usize> = (0..batch.len()).collect();
    let mut resent = 0u64;
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=options.send_attempts {
        let mut confirmed = Vec::with_capacity(positions.len());
        let mut last_error = None;
        for handle in handles {
            match handle.await {
                Ok(_) => confirmed.push(true),
                Err(e) => {
                    // An unknown outcome is resent too: at-least-once, and `resent` says
                    // how many records may now be at the destination twice.
                    let resendable = e.is_retryable() || e.kind() == ErrorKind::Indeterminate;
                    if !resendable || attempt == options.send_attempts {
                        return Err(with_context(e, "destination", &options.destination_stream));
                    }
                    confirmed.push(false);
                    last_error = Some(e);
                }
            }
        }
        let Some(error) = last_error else {
            return Ok(resent);
        };
        let keys: Vec<Option<&Bytes>> = positions.iter().map(|&i| batch[i].key.as_ref()).collect();
        let failed: Vec<usize> = to_resend(&keys, &confirmed)
            .into_iter()
            .map(|k| positions[k])
            .collect();
        tracing::warn!(%error, unsent = failed.len(), attempt, "mirror send failed; resending what was not confirmed");
        resent += failed.len() as u64;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        handles = hand_over(producer, options, failed.iter().map(|&i| copy_record(&batch[i]))).await?;
        positions = failed;
    }
    Ok(resent)
}

/// Which of the records handed over together (their keys, and whether each was
/// confirmed) to hand over again: every unconfirmed one and, for a key, every record
/// after its first unconfirmed one, confirmed or not, so that the key's records reach
/// the destination again in order (an engine may confirm a later record of a key after
/// an earlier one failed). Keyless records promise no order: only the unconfirmed go.
fn to_resend(keys: &[Option<&Bytes>], confirmed: &[bool]) -> Vec<usize> {
    let mut failed_keys = std::collections::HashSet::new();
    let mut again = Vec::new();
    for (i, (key, &ok)) in keys.iter().zip(confirmed).enumerate() {
        let behind_a_failure = key.is_some_and(|k| failed_keys.contains(k));
        if !ok || behind_a_failure {
            if let Some(k) = key {
                failed_keys.insert(*k);
            }
            again.push(i);
        }
    }
    again
}

/// The record to write for one read: same key, value, headers and timestamp; the
/// partition is left to the destination's partitioner.
fn copy_record(received: &Received) -> Record {
    Record {
        key: received.key.clone(),
        value: received.value.clone(),
        headers: received.headers.clone(),
        timestamp: received.timestamp,
        partition: None,
    }
}

fn age(timestamp: Timestamp) -> Duration {
    let millis = Timestamp::now().as_millis().saturating_sub(timestamp.as_millis());
    Duration::from_millis(millis.max(0).try_into().unwrap_or(0))
}

fn with_context(e: Error, side: &str, stream: &str) -> Error {
    let message = format!("mirror {side} stream {stream:?}: {}", e.message());
    Error::new(e.kind(), message)
        .with_retryable(e.is_retryable())
        .with_context_of(&e)
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_records_after_its_first_failure_go_again_even_if_confirmed() {
        let (a, b) = (Bytes::from("a"), Bytes::from("b"));
        let keys = [Some(&a), Some(&b), Some(&a), None, Some(&b), None, Some(&a)];
        let confirmed = [true, true, false, true, true, false, true];
        assert_eq!(to_resend(&keys, &confirmed), vec![2, 5, 6]);
    }

    #[test]
    fn nothing_goes_again_when_everything_was_confirmed() {
        let a = Bytes::from("a");
        assert!(to_resend(&[Some(&a), None], &[true, true]).is_empty());
    }
}
