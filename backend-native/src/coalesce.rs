//! Concurrent sends to one partition written together (a group append).
//!
//! The first sender to find no append under way becomes the leader: it appends its
//! own records at once, then everything other senders queued meanwhile, in one append
//! per round (so one `write()` for many callers), and hands each caller its offsets.
//! An uncontended send pays two lock round trips and waits for no one; contended
//! sends share appends instead of queueing on the log's lock one append each.
//!
//! The leader's work is synchronous, so no cancellation can interrupt it. After
//! [`MAX_ROUNDS`] rounds it passes the lead to the oldest waiting caller, so no caller
//! appends for others without end. However a lead ends (a panic, or a caller that
//! stopped waiting just as the lead reached it), it is passed on or given up, so the
//! partition never waits for a leader that is gone.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use tributary_core::{Error, ErrorKind, Record, Result, Timestamp};

/// Rounds of others' records a leader appends before it passes the lead on.
const MAX_ROUNDS: usize = 4;

/// Where an append put its records: the first one's offset and the time stamped on
/// those that carried none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Appended {
    pub base: u64,
    pub now: Timestamp,
}

/// The group append of one partition.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    /// A leader is appending.
    leading: bool,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    records: Vec<Record>,
    turn: oneshot::Sender<Turn>,
}

/// What a waiting caller learns: its records were appended (or failed), or it leads.
#[derive(Debug)]
enum Turn {
    Appended(Result<Appended>, Vec<Record>),
    Lead(Vec<Record>),
}

impl Coalescer {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `records` with `append` (which every caller of one coalescer passes
    /// alike: one partition's log), in one call with those of concurrent callers when
    /// an append is under way. Returns where they went, and the records back.
    ///
    /// # Errors
    /// The error of the append that carried the records (every caller of that append
    /// gets a copy), or `Indeterminate` if that append panicked.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits withdraws its records unless a leader has
    /// already taken them into an append: then they may be appended, and no one
    /// learns their offsets, as with any send whose future is dropped before it
    /// completes.
    pub(crate) async fn append(
        &self,
        records: Vec<Record>,
        append: impl Fn(&[Record]) -> Result<Appended>,
    ) -> (Result<Appended>, Vec<Record>) {
        let mut waiting = {
            let mut queue = self.lock();
            if !queue.leading {
                queue.leading = true;
                drop(queue);
                return self.lead(records, &append);
            }
            let (turn, waiting) = oneshot::channel();
            queue.waiting.push_back(Waiter { records, turn });
            Waiting {
                coalescer: self,
                turn: waiting,
            }
        };
        let records = match (&mut waiting.turn).await {
            Ok(Turn::Appended(result, records)) => return (result, records),
            Ok(Turn::Lead(records)) => records,
            // Unreached: every queued turn is answered (a round's even if its append
            // panics) or dropped with its receiver gone.
            Err(_) => {
                let e = Error::new(
                    ErrorKind::Indeterminate,
                    "the append carrying this send was abandoned",
                );
                return (Err(e), Vec::new());
            }
        };
        drop(waiting);
        self.lead(records, &append)
    }

    /// Appends the leader's own records, then rounds of waiting callers' records, and
    /// passes the lead on (or gives it up) however it ends, a panic included.
    fn lead(
        &self,
        records: Vec<Record>,
        append: &dyn Fn(&[Record]) -> Result<Appended>,
    ) -> (Result<Appended>, Vec<Record>) {
        let mut lead = Lead {
            coalescer: self,
            held: true,
        };
        let mine = append(&records);
        for _ in 0..MAX_ROUNDS {
            let round: Vec<Waiter> = {
                let mut queue = self.lock();
                // A caller that stopped waiting withdrew its records.
                let round: Vec<Waiter> = queue.waiting.drain(..).filter(|w| !w.turn.is_closed()).collect();
                if round.is_empty() {
                    queue.leading = false;
                    lead.held = false;
                    break;
                }
                round
            };
            Round::new(round).append(append);
        }
        (mine, records)
    }

    /// Passes the lead to the oldest caller still waiting, or gives it up.
    fn pass_lead(&self) {
        let mut queue = self.lock();
        while let Some(waiter) = queue.waiting.pop_front() {
            // A caller that stopped waiting gave its records up unwritten: nothing
            // was acknowledged for them.
            if waiter.turn.send(Turn::Lead(waiter.records)).is_ok() {
                return;
            }
        }
        queue.leading = false;
    }
}

/// The lead while its holder appends: passed on when dropped still held, so a
/// panicking leader strands no one.
struct Lead<'a> {
    coalescer: &'a Coalescer,
    held: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.held {
            self.coalescer.pass_lead();
        }
    }
}

/// A caller waiting for its turn. Dropped before it learned its turn, it withdraws
/// from the queue; if the lead had already been handed to it, it passes the lead on.
struct Waiting<'a> {
    coalescer: &'a Coalescer,
    turn: oneshot::Receiver<Turn>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.turn.close();
        if let Ok(Turn::Lead(_)) = self.turn.try_recv() {
            self.coalescer.pass_lead();
        }
    }
}

/// The records of several callers appended in one call, in queue order. Each caller
/// learns where its records went, and gets them back, however the append ends: a
/// panicking append answers everyone `Indeterminate`.
struct Round {
    joined: Vec<Record>,
    /// Each caller's turn and how many of `joined` are its records.
    callers: Vec<(oneshot::Sender<Turn>, usize)>,
    result: Option<Result<Appended>>,
}

impl Round {
    fn new(waiters: Vec<Waiter>) -> Self {
        let mut joined = Vec::with_capacity(waiters.iter().map(|w| w.records.len()).sum());
        let mut callers = Vec::with_capacity(waiters.len());
        for mut waiter in waiters {
            callers.push((waiter.turn, waiter.records.len()));
            joined.append(&mut waiter.records);
        }
        Self {
            joined,
            callers,
            result: None,
        }
    }

    /// Appends the round and answers its callers (when dropped, so a panic answers
    /// them too).
    fn append(mut self, append: &dyn Fn(&[Record]) -> Result<Appended>) {
        self.result = Some(append(&self.joined));
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::Indeterminate,
                "the append carrying this send panicked: its records may be in the log",
            ))
        });
        let counts: Vec<usize> = self.callers.iter().map(|(_, n)| *n).collect();
        let bases = offsets_within(&counts);
        let mut failure = result.as_ref().err().map(Error::copy_for_another);
        for ((turn, count), within) in self.callers.drain(..).zip(bases).rev() {
            let records = self.joined.split_off(self.joined.len() - count);
            let outcome = match &result {
                Ok(at) => Ok(Appended {
                    base: at.base + within,
                    now: at.now,
                }),
                Err(e) => Err(failure.take().unwrap_or_else(|| e.copy_for_another())),
            };
            // A caller that stopped waiting learns nothing, as documented.
            let _ = turn.send(Turn::Appended(outcome, records));
        }
    }
}

/// Each caller's first record's position in a joined append of `counts` records each.
fn offsets_within(counts: &[usize]) -> Vec<u64> {
    counts
        .iter()
        .scan(0u64, |at, &n| {
            let here = *at;
            *at += n as u64;
            Some(here)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures::FutureExt;

    use super::*;

    #[test]
    fn offsets_within_a_joined_append_follow_the_counts() {
        assert_eq!(offsets_within(&[1, 3, 2]), vec![0, 1, 4]);
        assert_eq!(offsets_within(&[]), Vec::<u64>::new());
    }

    /// An append into a shared vector, counting calls.
    struct FakeLog {
        records: Mutex<Vec<Bytes>>,
        calls: AtomicUsize,
        fail_from: AtomicU64,
    }

    impl FakeLog {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                records: Mutex::default(),
                calls: AtomicUsize::new(0),
                fail_from: AtomicU64::new(u64::MAX),
            })
        }

        fn append(&self, records: &[Record]) -> Result<Appended> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) as u64;
            if call >= self.fail_from.load(Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::Io, "disk full"));
            }
            // Widen the window in which others queue.
            std::thread::sleep(std::time::Duration::from_micros(200));
            let mut log = self.records.lock().unwrap();
            let base = log.len() as u64;
            log.extend(records.iter().map(|r| r.value.clone()));
            Ok(Appended {
                base,
                now: Timestamp::from_millis(7),
            })
        }
    }

    fn records(task: usize, n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(Bytes::from(format!("{task}-{i}"))))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_sends_share_appends_and_learn_their_own_offsets() {
        let log = FakeLog::new();
        let coalescer = Arc::new(Coalescer::default());
        let mut tasks = Vec::new();
        for task in 0..16 {
            let (log, coalescer) = (log.clone(), coalescer.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for round in 0..20 {
                    let sent = records(task, 1 + (task + round) % 3);
                    let (result, back) = coalescer.append(sent.clone(), |r| log.append(r)).await;
                    assert_eq!(back, sent, "the caller gets its own records back");
                    seen.push((result.unwrap().base, sent));
                }
                seen
            }));
        }
        let mut sent_total = 0;
        let mut seen = Vec::new();
        for task in tasks {
            for (base, sent) in task.await.unwrap() {
                sent_total += sent.len();
                seen.push((base, sent));
            }
        }
        let written = log.records.lock().unwrap().clone();
        assert_eq!(written.len(), sent_total, "every record once");
        for (base, sent) in seen {
            for (k, record) in sent.iter().enumerate() {
                assert_eq!(
                    written[base as usize + k],
                    record.value,
                    "offsets point at the caller's records"
                );
            }
        }
        let queue = coalescer.lock();
        assert!(
            !queue.leading && queue.waiting.is_empty(),
            "the lead was given up at the end"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_append_fails_every_caller_it_carried_and_returns_their_records() {
        let log = FakeLog::new();
        log.fail_from.store(1, Ordering::SeqCst);
        let coalescer = Arc::new(Coalescer::default());
        let mut tasks = Vec::new();
        for task in 0..8 {
            let (log, coalescer) = (log.clone(), coalescer.clone());
            tasks.push(tokio::spawn(async move {
                let sent = records(task, 2);
                let (result, back) = coalescer.append(sent.clone(), |r| log.append(r)).await;
                assert_eq!(back, sent);
                result.map(|_| ())
            }));
        }
        let mut failed = 0;
        for task in tasks {
            if let Err(e) = task.await.unwrap() {
                assert_eq!(e.kind(), ErrorKind::Io);
                failed += 1;
            }
        }
        assert!(
            failed >= 7,
            "only the first append succeeded ({failed} of 8 failed)"
        );
        assert_eq!(log.records.lock().unwrap().len(), 2 * (8 - failed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_queued_behind_a_lead_go_out_in_one_append_in_queue_order() {
        let log = FakeLog::new();
        let coalescer = Arc::new(Coalescer::default());
        coalescer.lock().leading = true;
        let mut tasks = Vec::new();
        for task in 0..8 {
            let (log, queued) = (log.clone(), coalescer.clone());
            tasks.push(tokio::spawn(async move {
                queued.append(records(task, 2), |r| log.append(r)).await.0
            }));
            while coalescer.lock().waiting.len() <= task {
                tokio::task::yield_now().await;
            }
        }
        coalescer.pass_lead();
        let mut bases = Vec::new();
        for task in tasks {
            bases.push(task.await.unwrap().unwrap().base);
        }
        assert_eq!(
            bases,
            vec![0, 2, 4, 6, 8, 10, 12, 14],
            "queue order, each its own offsets"
        );
        assert_eq!(
            log.calls.load(Ordering::SeqCst),
            2,
            "the new leader's own append, then one for the seven behind it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_leader_passes_the_lead_on() {
        let coalescer = Arc::new(Coalescer::default());
        let panicked = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                coalescer
                    .append(records(0, 1), |_| -> Result<Appended> {
                        panic!("a bug in the log")
                    })
                    .await
            })
            .await
        };
        assert!(panicked.is_err());
        let log = FakeLog::new();
        let (result, _) = coalescer.append(records(1, 1), |r| log.append(r)).await;
        assert_eq!(result.unwrap().base, 0, "the next send leads");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_stopped_waiting_does_not_strand_the_others() {
        let coalescer = Arc::new(Coalescer::default());
        // Queue a waiter by hand behind a lead that is held, then drop its receiver.
        coalescer.lock().leading = true;
        let (turn, gone) = oneshot::channel();
        coalescer.lock().waiting.push_back(Waiter {
            records: records(0, 1),
            turn,
        });
        drop(gone);
        let waiting = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                let log = FakeLog::new();
                coalescer.append(records(1, 1), |r| log.append(r)).await.0
            })
        };
        while coalescer.lock().waiting.len() < 2 {
            tokio::task::yield_now().await;
        }
        coalescer.pass_lead();
        let result = waiting.await.unwrap();
        assert_eq!(
            result.unwrap().base,
            0,
            "the live waiter led after the gone one was skipped"
        );
    }

    /// Queues a send behind a held lead: polled once, so it waits in the queue.
    fn queued<'a>(
        coalescer: &'a Coalescer,
        log: &'a FakeLog,
        task: usize,
    ) -> std::pin::Pin<Box<impl Future<Output = (Result<Appended>, Vec<Record>)> + 'a>> {
        let mut send = Box::pin(coalescer.append(records(task, 1), |r| log.append(r)));
        assert!((&mut send).now_or_never().is_none(), "it waits behind the lead");
        send
    }

    #[tokio::test]
    async fn a_caller_dropped_after_the_lead_reached_it_passes_the_lead_on() {
        let (coalescer, log) = (Coalescer::default(), FakeLog::new());
        coalescer.lock().leading = true;
        let first = queued(&coalescer, &log, 0);
        let mut second = queued(&coalescer, &log, 1);
        coalescer.pass_lead();
        // The lead reached `first`, which is dropped before it ever runs again.
        drop(first);
        let (result, _) = tokio::time::timeout(std::time::Duration::from_secs(10), &mut second)
            .await
            .expect("the lead was lost with the dropped caller");
        assert_eq!(result.unwrap().base, 0, "the lead went on to the next caller");
        assert!(!coalescer.lock().leading, "and was given up at the end");
        let values = log.records.lock().unwrap().clone();
        assert_eq!(
            values,
            vec![Bytes::from("1-0")],
            "the dropped caller's record was not written"
        );
    }

    #[tokio::test]
    async fn a_caller_dropped_while_queued_is_left_out_of_the_round() {
        let (coalescer, log) = (Coalescer::default(), FakeLog::new());
        coalescer.lock().leading = true;
        let gone = queued(&coalescer, &log, 0);
        let kept = queued(&coalescer, &log, 1);
        drop(gone);
        // A leader's own append, then the round of what is queued behind it.
        coalescer.lock().leading = false;
        let (mine, _) = coalescer.append(records(2, 1), |r| log.append(r)).await;
        assert_eq!(mine.unwrap().base, 0);
        let (result, _) = kept.await;
        assert_eq!(result.unwrap().base, 1);
        let values = log.records.lock().unwrap().clone();
        assert_eq!(values, vec![Bytes::from("2-0"), Bytes::from("1-0")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_whose_append_panics_answers_its_callers_with_their_records() {
        let coalescer = Arc::new(Coalescer::default());
        coalescer.lock().leading = true;
        let waiters: Vec<_> = (0..3)
            .map(|task| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move {
                    let sent = records(task, 2);
                    let (result, back) = coalescer.append(sent.clone(), |_| Ok(unused())).await;
                    (result, back, sent)
                })
            })
            .collect();
        while coalescer.lock().waiting.len() < 3 {
            tokio::task::yield_now().await;
        }
        let round: Vec<Waiter> = coalescer.lock().waiting.drain(..).collect();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Round::new(round).append(&|_| panic!("a bug in the log"));
        }));
        assert!(panicked.is_err());
        for waiter in waiters {
            let (result, back, sent) = waiter.await.unwrap();
            assert_eq!(result.unwrap_err().kind(), ErrorKind::Indeterminate);
            assert_eq!(back, sent, "each caller gets its own records back");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_leader_whose_round_panics_answers_the_round_and_gives_the_lead_up() {
        let coalescer = Arc::new(Coalescer::default());
        let log = FakeLog::new();
        let leader = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                let calls = AtomicUsize::new(0);
                let append = |_: &[Record]| -> Result<Appended> {
                    if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                        panic!("a bug in the log, in the round");
                    }
                    // Its own append: wait until three sends queue behind it.
                    while coalescer.lock().waiting.len() < 3 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Ok(Appended {
                        base: 0,
                        now: Timestamp::from_millis(1),
                    })
                };
                coalescer.append(records(9, 1), append).await
            })
        };
        while !coalescer.lock().leading {
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..3)
            .map(|task| {
                let (coalescer, log) = (coalescer.clone(), log.clone());
                tokio::spawn(async move {
                    let sent = records(task, 2);
                    let (result, back) = coalescer.append(sent.clone(), |r| log.append(r)).await;
                    (result, back, sent)
                })
            })
            .collect();
        assert!(leader.await.is_err(), "the leader's task panicked");
        for waiter in waiters {
            let (result, back, sent) = waiter.await.unwrap();
            assert_eq!(result.unwrap_err().kind(), ErrorKind::Indeterminate);
            assert_eq!(back, sent, "each caller gets its own records back");
        }
        let (result, _) = coalescer.append(records(5, 1), |r| log.append(r)).await;
        assert_eq!(result.unwrap().base, 0, "the next send leads");
        assert!(!coalescer.lock().leading);
    }

    fn unused() -> Appended {
        unreachable!("these callers never lead")
    }
}
