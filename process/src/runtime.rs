//! The processor's loop: polls while there is room, hands records to handlers as their
//! lanes allow, acknowledges what finished, commits, and stops.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tributary_core::raw::backoff;
use tributary_core::{Consumer, Error, ErrorKind, PartitionId, Producer, Received, Result, Timestamp};

use crate::dead_letter::{Reason, nowhere_to_put};
use crate::retry::{Next, after_failure};
use crate::schedule::Scheduler;
use crate::{Codec, Counters, HandlerError, Message, Settings, Summary};

pub(super) struct DeadLetter {
    pub producer: Arc<dyn Producer>,
    pub stream: String,
}

pub(super) struct Parts<C: Codec, F> {
    pub consumer: Box<dyn Consumer>,
    pub engine: &'static str,
    pub codec: Arc<C>,
    pub handler: Arc<F>,
    pub settings: Settings,
    pub dead_letter: Option<DeadLetter>,
    pub stopped: watch::Receiver<bool>,
    pub counters: Arc<Counters>,
}

/// How a record's work ended.
enum Outcome {
    Handled,
    DeadLettered,
    /// The processor must stop: nothing of this record is acknowledged.
    Stop(Error),
}

/// A record's work, and the assignment it belongs to: a completion from before its
/// partition was revoked (and perhaps assigned again) is dropped.
struct Finished {
    record: Received,
    epoch: u64,
    outcome: Outcome,
}

/// What woke the loop.
enum Event {
    Stop,
    /// The handle that could stop the processor is gone.
    Unstoppable,
    Finished(Option<std::result::Result<Finished, tokio::task::JoinError>>),
    Polled(Result<Vec<Received>>),
    CommitDue,
    /// The loop ran a poll's worth of records itself and let other tasks run.
    Yielded,
}

pub(super) async fn run<C, F, Fut>(parts: Parts<C, F>) -> Result<Summary>
where
    C: Codec,
    F: Fn(Message<C::Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
{
    let Parts {
        mut consumer,
        engine,
        codec,
        handler,
        settings,
        dead_letter,
        mut stopped,
        counters,
    } = parts;
    let dead_letter = dead_letter.map(Arc::new);
    let mut books = Books {
        scheduler: Scheduler::new(settings.ordering),
        epochs: HashMap::new(),
        next_epoch: 0,
        summary: Summary::default(),
        counters,
    };
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut inline = Inline::default();
    // What every handler task needs, shared: one reference count per record.
    let work = Arc::new(Work {
        engine,
        codec,
        handler,
        retry: settings.retry,
        dead_letter: dead_letter.clone(),
    });
    let mut assignment: BTreeSet<PartitionId> = BTreeSet::new();
    let mut finished_since_commit = 0u64;
    let mut commit_at = later(settings.commit_interval);
    // After a failed commit, the next waits for the interval whatever the count says.
    let mut commit_not_before = Instant::now();
    let mut failure: Option<Error> = None;
    // Dropping the `Running` handle leaves the processor running, unstoppable.
    let mut listening = true;
    loop {
        if failure.is_some() || *stopped.borrow() {
            break;
        }
        // Finished handlers first: the select below prefers a ready poll, so a steady
        // stream of completions never keeps the processor from polling, nor the
        // reverse.
        while let Some(joined) = running.try_join_next() {
            match books.finish(Some(joined), &mut *consumer) {
                Ok(true) => finished_since_commit += 1,
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_some() {
            break;
        }
        // Work finished on the loop frees its lane at once, so one pass could run every
        // buffered record; after a poll's worth the loop lets others run and looks at
        // stops, polls and commits again.
        let mut inline_this_pass = 0;
        let mut capped = false;
        while running.len() < settings.concurrency {
            if inline_this_pass >= settings.poll_records {
                capped = true;
                break;
            }
            let Some(record) = books.scheduler.next() else {
                break;
            };
            let epoch = books.epoch_of(&record.partition);
            let work = work.clone();
            let mut task = Box::pin(async move {
                let outcome = work.handle(&record).await;
                Finished {
                    record,
                    epoch,
                    outcome,
                }
            });
            if inline.tries() {
                let started = std::time::Instant::now();
                // The handler's own panics are caught inside; this catches the rest of
                // the record's work (an error's `Display`, a `Drop`), which a task's
                // join would report.
                let ready = std::panic::catch_unwind(AssertUnwindSafe(|| task.as_mut().now_or_never()));
                inline.took(started.elapsed());
                let ready = match ready {
                    Ok(ready) => ready,
                    Err(panic) => {
                        failure = Some(Error::new(
                            ErrorKind::Backend,
                            format!("a record's work panicked: {}", panic_text(&panic)),
                        ));
                        break;
                    }
                };
                if let Some(finished) = ready {
                    inline_this_pass += 1;
                    match books.finish(Some(Ok(finished)), &mut *consumer) {
                        Ok(true) => finished_since_commit += 1,
                        Ok(false) => {}
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    continue;
                }
            }
            running.spawn(task);
        }
        if failure.is_some() {
            break;
        }
        let buffered = books.scheduler.waiting().0 + running.len();
        books.counters.buffered.store(buffered as u64, Relaxed);
        books.counters.max_buffered.fetch_max(buffered as u64, Relaxed);
        let room = settings
            .max_buffered_records
            .saturating_sub(buffered)
            .min(settings.poll_records);
        let may_poll = room > 0 && books.scheduler.waiting().1 < settings.max_buffered_bytes;
        let event = if capped {
            tokio::task::yield_now().await;
            Event::Yielded
        } else {
            tokio::select! {
            biased;
            changed = stopped.changed(), if listening => match changed {
                Ok(()) => Event::Stop,
                Err(_) => Event::Unstoppable,
            },
            polled = consumer.poll(room, settings.poll_timeout), if may_poll => Event::Polled(polled),
            joined = running.join_next(), if !running.is_empty() => Event::Finished(joined),
            () = sleep_until(commit_at) => Event::CommitDue,
            }
        };
        match event {
            Event::Stop | Event::Yielded => {}
            Event::Unstoppable => listening = false,
            Event::Finished(joined) => match books.finish(joined, &mut *consumer) {
                Ok(true) => finished_since_commit += 1,
                Ok(false) => {}
                Err(e) => failure = Some(e),
            },
            Event::Polled(Ok(records)) => {
                for record in records {
                    books.scheduler.push(record);
                }
            }
            // A partition moved under the poll: the next poll follows the new assignment.
            Event::Polled(Err(e)) if e.is_retryable() || e.kind() == ErrorKind::NotAssigned => {
                tracing::warn!("the processor's poll failed, polling again: {e}");
                sleep(settings.poll_timeout).await;
            }
            Event::Polled(Err(e)) => failure = Some(e),
            Event::CommitDue => {}
        }
        // Any poll, even one that failed or was cancelled, may have rebalanced.
        books.follow_assignment(&*consumer, &mut assignment);
        let now = Instant::now();
        let due = now >= commit_at
            || (finished_since_commit >= settings.commit_records && now >= commit_not_before);
        if due && failure.is_none() {
            if finished_since_commit > 0 {
                match consumer.commit().await {
                    Ok(()) => {
                        books.counters.commits.fetch_add(1, Relaxed);
                        finished_since_commit = 0;
                    }
                    // A partition moved meanwhile (some engines committed the others,
                    // some nothing): not a failure; what is still ours is committed again
                    // after the interval.
                    Err(e) if e.kind() == ErrorKind::NotAssigned || e.is_retryable() => {
                        tracing::warn!("the processor's commit failed, committing again later: {e}");
                        commit_not_before = later(settings.commit_interval);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            commit_at = later(settings.commit_interval);
        }
    }
    // Stopping: no more polls or new handlers; those in flight get the deadline.
    let deadline = later(settings.shutdown_deadline);
    while !running.is_empty() {
        let joined = tokio::select! {
            joined = running.join_next() => joined,
            () = sleep_until(deadline) => break,
        };
        if let Err(e) = books.finish(joined, &mut *consumer) {
            failure.get_or_insert(e);
        }
    }
    let mut summary = books.summary;
    summary.abandoned = running.len() as u64;
    if summary.abandoned > 0 {
        tracing::warn!(
            abandoned = summary.abandoned,
            "handlers still running at the processor's shutdown deadline were abandoned; their records are not acknowledged"
        );
    }
    running.abort_all();
    books.counters.buffered.store(0, Relaxed);
    // Closing commits what was acknowledged and leaves the group.
    let closed = match consumer.close().await {
        Err(e) if e.kind() == ErrorKind::NotAssigned => {
            tracing::info!("closing the processor's consumer skipped partitions it no longer owns: {e}");
            Ok(())
        }
        other => other,
    };
    if let Some(dead_letter) = &dead_letter
        && let Err(e) = dead_letter.producer.close().await
    {
        tracing::warn!("closing the dead-letter producer: {e}");
    }
    match (failure, closed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(summary),
    }
}

/// What the loop keeps besides the consumer: the records waiting, the epoch of each
/// partition's assignment, and the counts.
struct Books {
    scheduler: Scheduler,
    /// Bumped whenever a partition goes or comes back: a completion from an earlier
    /// epoch is dropped.
    epochs: HashMap<PartitionId, u64>,
    next_epoch: u64,
    summary: Summary,
    counters: Arc<Counters>,
}

impl Books {
    fn epoch_of(&self, partition: &PartitionId) -> u64 {
        self.epochs.get(partition).copied().unwrap_or(0)
    }

    /// Acknowledges a finished record (unless its partition moved since) and frees its
    /// lane. Returns whether it counts towards the next commit.
    fn finish(
        &mut self,
        joined: Option<std::result::Result<Finished, tokio::task::JoinError>>,
        consumer: &mut dyn Consumer,
    ) -> Result<bool> {
        let finished = match joined {
            None => return Ok(false),
            Some(Ok(finished)) => finished,
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!("a handler's task ended abnormally: {e}"),
                ));
            }
        };
        let Finished {
            record,
            epoch,
            outcome,
        } = finished;
        // Its lane stays busy until now, even if the partition moved, so that records of
        // its key read again here never run beside it.
        self.scheduler.done(&record);
        if epoch != self.epoch_of(&record.partition) {
            // Revoked while in flight: another member owns it.
            tracing::debug!(partition = %record.partition, offset = %record.offset, "dropped the completion of a record whose partition moved");
            return Ok(false);
        }
        match outcome {
            Outcome::Stop(e) => Err(e),
            Outcome::Handled | Outcome::DeadLettered => {
                if matches!(outcome, Outcome::Handled) {
                    self.summary.handled += 1;
                    self.counters.handled.fetch_add(1, Relaxed);
                } else {
                    self.summary.dead_lettered += 1;
                    self.counters.dead_lettered.fetch_add(1, Relaxed);
                }
                match consumer.ack(&record.partition, &record.offset) {
                    Ok(()) => Ok(true),
                    // The partition moved, or came back with its acknowledgements reset:
                    // unacknowledged, the record is read again, as at-least-once allows.
                    Err(e) if matches!(e.kind(), ErrorKind::NotAssigned | ErrorKind::InvalidInput) => {
                        tracing::debug!(partition = %record.partition, offset = %record.offset, "not acknowledged: {e}");
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// After a poll, which may have rebalanced: revoked partitions' waiting records are
    /// dropped (their new owner reads them), and every partition that went or came
    /// back starts a new epoch, so completions from before are dropped.
    fn follow_assignment(&mut self, consumer: &dyn Consumer, assignment: &mut BTreeSet<PartitionId>) {
        let now: BTreeSet<PartitionId> = consumer.assignment().into_iter().collect();
        if now == *assignment {
            return;
        }
        for lost in assignment.difference(&now) {
            self.scheduler.forget(lost);
            self.next_epoch += 1;
            self.epochs.insert(lost.clone(), self.next_epoch);
        }
        for gained in now.difference(assignment) {
            if self.epochs.contains_key(gained) {
                self.next_epoch += 1;
                self.epochs.insert(gained.clone(), self.next_epoch);
            }
        }
        *assignment = now;
    }
}

/// What a handler task needs.
struct Work<C, F> {
    engine: &'static str,
    codec: Arc<C>,
    handler: Arc<F>,
    retry: crate::Retry,
    dead_letter: Option<Arc<DeadLetter>>,
}

impl<C, F, Fut> Work<C, F>
where
    C: Codec,
    F: Fn(Message<C::Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
{
    /// Runs the handler on `record` until it succeeds or is given up.
    async fn handle(&self, record: &Received) -> Outcome {
        let mut first_failure: Option<Timestamp> = None;
        let mut run = 0u32;
        loop {
            let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| self.codec.decode(&record.value)))
                .unwrap_or_else(|panic| Err(format!("the codec panicked: {}", panic_text(&panic)).into()));
            let value = match decoded {
                Ok(value) => value,
                Err(e) => {
                    let why = format!(
                        "record {}/{}@{} does not decode: {e}",
                        record.stream, record.partition, record.offset
                    );
                    return self
                        .give_up(
                            record,
                            Reason::Decode,
                            &why,
                            run,
                            first_failure.unwrap_or_else(Timestamp::now),
                        )
                        .await;
                }
            };
            run += 1;
            let message = Message {
                value,
                key: record.key.clone(),
                headers: record.headers.clone(),
                stream: record.stream.clone(),
                partition: record.partition.clone(),
                offset: record.offset.clone(),
                timestamp: record.timestamp,
                attempt: run,
            };
            // The call itself inside the future, so that a panic before the handler's
            // first await is caught too.
            let ran = AssertUnwindSafe(async { (self.handler)(message).await })
                .catch_unwind()
                .await;
            let error = match ran {
                Ok(Ok(())) => return Outcome::Handled,
                Ok(Err(e)) => e,
                Err(panic) => {
                    HandlerError::retryable(format!("the handler panicked: {}", panic_text(&panic)))
                }
            };
            let first = *first_failure.get_or_insert_with(Timestamp::now);
            match after_failure(&self.retry, run, error.is_retryable()) {
                Next::Again(pause) => {
                    tracing::debug!(partition = %record.partition, offset = %record.offset, run, "handler failed, running it again: {error}");
                    sleep(pause).await;
                }
                Next::GiveUp => return self.give_up(record, Reason::Handler, &error, run, first).await,
            }
        }
    }

    /// Puts `record` in the dead-letter stream, or stops the processor without one.
    async fn give_up(
        &self,
        record: &Received,
        reason: Reason,
        error: &(dyn std::fmt::Display + Sync),
        runs: u32,
        first_failure: Timestamp,
    ) -> Outcome {
        let Some(dead_letter) = &self.dead_letter else {
            return Outcome::Stop(nowhere_to_put(record, error, runs));
        };
        let copy = crate::dead_letter::dead_letter(self.engine, record, reason, error, runs, first_failure);
        let mut tries = 0u32;
        let written = loop {
            tries += 1;
            match dead_letter
                .producer
                .send(&dead_letter.stream, vec![copy.clone()])
                .await
            {
                // A copy that may have been written is written again: a duplicate
                // dead letter is better than stopping.
                Err(e)
                    if (e.is_retryable() || e.kind() == ErrorKind::Indeterminate)
                        && tries < self.retry.attempts.max(3) =>
                {
                    tracing::warn!(
                        "writing to the dead-letter stream {} failed, trying again: {}",
                        dead_letter.stream,
                        e.error
                    );
                    let pause = backoff(self.retry.initial_backoff, self.retry.max_backoff, tries - 1);
                    sleep(pause.max(std::time::Duration::from_millis(10))).await;
                }
                other => break other,
            }
        };
        match written {
            Ok(_) => {
                tracing::warn!(partition = %record.partition, offset = %record.offset, stream = %dead_letter.stream, "record given up into the dead-letter stream: {error}");
                Outcome::DeadLettered
            }
            Err(e) => Outcome::Stop(Error::new(
                e.kind(),
                format!(
                    "record {}/{}@{} was given up ({error}) but writing it to the dead-letter stream {} failed, so the processor stops without acknowledging it: {}",
                    record.stream, record.partition, record.offset, dead_letter.stream, e.error
                ),
            )),
        }
    }
}

/// Whether the loop runs a handler's first step itself, before giving it a task: a
/// handler that finishes without waiting (no I/O) then costs no task, which is most of
/// what the processor costs such a handler. A handler that computes for long before it
/// first waits would hold the loop up meanwhile, so once first steps average more than
/// [`Inline::LIMIT`], handlers get their own task at once, and only every
/// [`Inline::PROBE`]th one is tried on the loop again (the average then follows the
/// handler if it gets quick again).
#[derive(Debug, Default)]
struct Inline {
    /// A moving average of first steps, in nanoseconds.
    average_nanos: u64,
    /// Records given a task at once since the last try.
    skipped: u32,
}

impl Inline {
    const LIMIT: std::time::Duration = std::time::Duration::from_micros(20);
    const PROBE: u32 = 256;

    /// Whether to try the next record's first step on the loop.
    fn tries(&mut self) -> bool {
        if self.average_nanos <= Self::LIMIT.as_nanos() as u64 || self.skipped + 1 >= Self::PROBE {
            self.skipped = 0;
            true
        } else {
            self.skipped += 1;
            false
        }
    }

    /// Folds in how long a first step on the loop took.
    fn took(&mut self, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.average_nanos = self.average_nanos - self.average_nanos / 8 + nanos / 8;
    }
}

/// `now + after`, at most a year on (further than any timer needs to look, and
/// within what tokio's timer and `Instant` hold).
fn later(after: std::time::Duration) -> Instant {
    Instant::now() + after.min(std::time::Duration::from_secs(365 * 24 * 3600))
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        return (*text).to_string();
    }
    if let Some(text) = panic.downcast_ref::<String>() {
        return text.clone();
    }
    "a panic without a message".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_first_steps_run_on_the_loop_and_slow_ones_get_tasks_with_a_probe() {
        let mut inline = Inline::default();
        for _ in 0..100 {
            assert!(inline.tries());
            inline.took(std::time::Duration::from_micros(1));
        }
        // A handler that starts computing for a millisecond before it waits.
        for _ in 0..20 {
            if inline.tries() {
                inline.took(std::time::Duration::from_millis(1));
            }
        }
        assert!(inline.average_nanos > Inline::LIMIT.as_nanos() as u64);
        let tried = (0..Inline::PROBE * 4).filter(|_| inline.tries()).count();
        assert_eq!(tried, 4, "one probe in every {}", Inline::PROBE);
        // Quick again: the probes bring the average down and the loop takes over.
        let mut rounds = 0;
        while inline.average_nanos > Inline::LIMIT.as_nanos() as u64 {
            if inline.tries() {
                inline.took(std::time::Duration::ZERO);
            }
            rounds += 1;
            assert!(rounds < 64 * Inline::PROBE as usize, "never came back");
        }
        assert!(inline.tries());
    }

    #[test]
    fn a_deadline_of_any_length_is_a_time_to_wait_for() {
        let now = Instant::now();
        assert!(later(std::time::Duration::MAX) > now + std::time::Duration::from_secs(3600));
        assert!(later(std::time::Duration::ZERO) >= now);
    }
}
