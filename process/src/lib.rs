#![doc = include_str!("../README.md")]

mod codec;
mod dead_letter;
mod retry;
mod runtime;
mod schedule;
mod typed;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tributary_core::{
    Backend, BoxError, Bytes, ConsumerConfig, Error, ErrorKind, Headers, Offset, PartitionId, ProducerConfig,
    Result, Timestamp,
};

#[cfg(feature = "avro")]
pub use codec::Avro;
#[cfg(feature = "protobuf")]
pub use codec::Protobuf;
pub use codec::{Codec, Json, Raw};
pub use dead_letter::headers as dead_letter_headers;
pub use retry::Retry;
pub use schedule::Ordering;
pub use typed::TypedProducer;

/// A record as a handler sees it: its decoded value and where it came from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Message<T> {
    /// The decoded value.
    pub value: T,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its headers.
    pub headers: Headers,
    /// The stream it was read from.
    pub stream: Arc<str>,
    /// Its partition.
    pub partition: PartitionId,
    /// Its position in the partition.
    pub offset: Offset,
    /// Its timestamp, when the engine keeps one.
    pub timestamp: Option<Timestamp>,
    /// Which run of the handler on this record this is: 1 the first time.
    pub attempt: u32,
}

/// Why a handler failed, and whether running it again may help. Any
/// `std::error::Error` converts with `?` (retryable, unless it is a tributary
/// [`Error`] that says otherwise); for other errors (`BoxError`, strings) use
/// [`retryable`](HandlerError::retryable) or [`permanent`](HandlerError::permanent).
pub struct HandlerError {
    source: BoxError,
    retryable: bool,
}

impl HandlerError {
    /// A failure that running the handler again may mend.
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
            retryable: true,
        }
    }

    /// A failure no retry can mend: the record is given up at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
            retryable: false,
        }
    }

    /// Whether running the handler again may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let retryable = (&e as &dyn std::error::Error)
            .downcast_ref::<Error>()
            .is_none_or(Error::is_retryable);
        Self {
            source: Box::new(e),
            retryable,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("source", &self.source)
            .field("retryable", &self.retryable)
            .finish()
    }
}

/// What a processor did, when it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Records whose handler succeeded.
    pub handled: u64,
    /// Records given up into the dead-letter stream.
    pub dead_lettered: u64,
    /// Records whose handler had not finished at the shutdown deadline: not
    /// acknowledged, so handled again after a restart or by another member.
    pub abandoned: u64,
}

/// Counters of a running processor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Records whose handler succeeded.
    pub handled: u64,
    /// Records given up into the dead-letter stream.
    pub dead_lettered: u64,
    /// Records polled and not yet finished (waiting or in a handler).
    pub buffered: u64,
    /// The most records ever buffered at once.
    pub max_buffered: u64,
    /// Commits made.
    pub commits: u64,
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    dead_lettered: AtomicU64,
    buffered: AtomicU64,
    max_buffered: AtomicU64,
    commits: AtomicU64,
}

impl Counters {
    fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            handled: self.handled.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            buffered: self.buffered.load(Relaxed),
            max_buffered: self.max_buffered.load(Relaxed),
            commits: self.commits.load(Relaxed),
        }
    }
}

/// Settings of a processor: build with [`Processor::builder`], start with
/// [`start`](Processor::start).
pub struct Processor<C: Codec = Raw> {
    client: Arc<dyn Backend>,
    consumer: ConsumerConfig,
    codec: C,
    settings: Settings,
    dead_letter: Option<(Arc<dyn Backend>, String)>,
}

#[derive(Clone, Debug)]
struct Settings {
    ordering: Ordering,
    concurrency: usize,
    max_buffered_records: usize,
    max_buffered_bytes: usize,
    poll_records: usize,
    poll_timeout: Duration,
    commit_interval: Duration,
    commit_records: u64,
    retry: Retry,
    shutdown_deadline: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ordering: Ordering::PerKey,
            concurrency: 16,
            max_buffered_records: 10_000,
            max_buffered_bytes: 64 << 20,
            poll_records: 500,
            poll_timeout: Duration::from_millis(100),
            commit_interval: Duration::from_secs(1),
            commit_records: 10_000,
            retry: Retry::default(),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

impl<C: Codec> fmt::Debug for Processor<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("consumer", &self.consumer)
            .field("settings", &self.settings)
            .field("dead_letter", &self.dead_letter.as_ref().map(|(_, s)| s))
            .finish_non_exhaustive()
    }
}

impl Processor<Raw> {
    /// A processor of `consumer` (a group: `ConsumerConfig::group`) on `client`, with
    /// raw values, per-key order, 16 handlers at once, at most 10,000 records / 64 MiB
    /// buffered, commits every second or 10,000 records, three runs per record, no
    /// dead-letter stream (a record given up stops the processor) and 30 s to finish
    /// at shutdown. `client` is any backend: a `tributary::Client`, or an
    /// `Arc<dyn Backend>`.
    pub fn builder(client: &(impl Backend + Clone + 'static), consumer: ConsumerConfig) -> Self {
        Self {
            client: Arc::new(client.clone()),
            consumer,
            codec: Raw,
            settings: Settings::default(),
            dead_letter: None,
        }
    }
}

impl<C: Codec> Processor<C> {
    /// Decodes values with `codec`: handlers see `Message<D::Value>`. A value that does
    /// not decode goes to the dead-letter stream at once (without one, the processor
    /// stops with an error naming the record).
    pub fn codec<D: Codec>(self, codec: D) -> Processor<D> {
        Processor {
            client: self.client,
            consumer: self.consumer,
            codec,
            settings: self.settings,
            dead_letter: self.dead_letter,
        }
    }

    /// How records are ordered (default: per key).
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.settings.ordering = ordering;
        self
    }

    /// Handlers running at once, at most (default 16; 0 counts as 1).
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.settings.concurrency = handlers.max(1);
        self
    }

    /// Records polled and not finished, and bytes (keys and values) of records polled
    /// and not yet handed to a handler, at most (defaults 10,000 and 64 MiB): polling
    /// pauses at either bound, so a slow handler never grows memory. Records count
    /// exactly; bytes are checked before each poll. While paused the member does not
    /// poll, so a pause longer than the engine allows between polls (Kafka's
    /// `max.poll.interval.ms`, the group session timeout of the native and memory
    /// engines) gets it evicted: its partitions move, and their unfinished records
    /// are handled again by their new owner.
    pub fn max_buffered(mut self, records: usize, bytes: usize) -> Self {
        self.settings.max_buffered_records = records.max(1);
        self.settings.max_buffered_bytes = bytes.max(1);
        self
    }

    /// Commits once `interval` passed or `records` finished since the last commit,
    /// whichever comes first (defaults 1 s and 10,000), and always at shutdown.
    pub fn commit_every(mut self, interval: Duration, records: u64) -> Self {
        self.settings.commit_interval = interval.max(Duration::from_millis(1));
        self.settings.commit_records = records.max(1);
        self
    }

    /// How often a failing handler runs, and the pauses between (default three runs).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.settings.retry = retry;
        self
    }

    /// Where records given up go: `stream` on `client` (any engine). A record is
    /// acknowledged only once its dead-letter copy is confirmed; see
    /// [`dead_letter_headers`] for what the copy carries.
    pub fn dead_letter(
        mut self,
        client: &(impl Backend + Clone + 'static),
        stream: impl Into<String>,
    ) -> Self {
        self.dead_letter = Some((Arc::new(client.clone()), stream.into()));
        self
    }

    /// How long shutdown waits for handlers in flight (default 30 s). Those still
    /// running then are abandoned (not acknowledged) and counted in
    /// [`Summary::abandoned`].
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.settings.shutdown_deadline = deadline;
        self
    }

    /// Joins the group and starts handling records with `handler`, in the background,
    /// on the current tokio runtime.
    ///
    /// The processor's loop runs each handler's first step itself (up to its first
    /// `.await` that waits), and gives the handler a task of its own only if it waits:
    /// a handler that finishes at once costs no task. Once first steps average over
    /// 20 µs, handlers get their own task at once (one in 256 is still tried on the
    /// loop, to notice a handler that got quick again). So a handler should not block
    /// its thread (no blocking I/O, no unbounded computing before its first await:
    /// use `spawn_blocking`), as on any tokio task; one that does holds the loop up
    /// meanwhile, polls and commits included.
    ///
    /// # Errors
    /// `InvalidConfig` for a broadcast consumer (a processor commits, so it needs a
    /// group), or the error of creating the consumer or the dead-letter producer.
    /// Cancel safe: dropped before it returns, nothing was started.
    pub async fn start<F, Fut>(self, handler: F) -> Result<Running>
    where
        F: Fn(Message<C::Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        if self.consumer.group_id().is_none() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "a processor needs a consumer group (ConsumerConfig::group): it commits what it handled; {} was configured as a broadcast reader",
                    self.consumer.stream
                ),
            ));
        }
        let dead_letter = match &self.dead_letter {
            Some((client, stream)) => Some(runtime::DeadLetter {
                producer: Arc::from(client.producer(ProducerConfig::default()).await?),
                stream: stream.clone(),
            }),
            None => None,
        };
        // Last, so that nothing fails or waits between joining the group and running.
        let consumer = self.client.consumer(self.consumer.clone()).await?;
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(runtime::run(runtime::Parts {
            consumer,
            engine: self.client.engine(),
            codec: Arc::new(self.codec),
            handler: Arc::new(handler),
            settings: self.settings,
            dead_letter,
            stopped,
            counters: counters.clone(),
        }));
        Ok(Running { stop, task, counters })
    }
}

/// A running processor.
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Summary>>,
    counters: Arc<Counters>,
}

impl Running {
    /// Asks the processor to stop: it polls no more, gives handlers in flight until
    /// its shutdown deadline, commits what finished and leaves the group. Returns at
    /// once; [`wait`](Running::wait) for the end.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// Whether the processor has ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the processor to end, by [`shutdown`](Running::shutdown) or by an
    /// error.
    ///
    /// # Errors
    /// What stopped it: a record given up without a dead-letter stream (naming the
    /// record and the handler's error), a failed dead-letter write, or an engine error
    /// no retry mends; `Backend` if the processor's task panicked or its runtime shut
    /// down. Cancel safe only in that dropping it drops the handle: the processor
    /// keeps running, and can no longer be stopped or waited for.
    pub async fn wait(self) -> Result<Summary> {
        match self.task.await {
            Ok(ended) => ended,
            Err(e) => Err(Error::new(
                ErrorKind::Backend,
                format!("the processor's task ended abnormally: {e}"),
            )),
        }
    }

    /// [`shutdown`](Running::shutdown), then [`wait`](Running::wait).
    ///
    /// # Errors
    /// As [`wait`](Running::wait).
    pub async fn stop(self) -> Result<Summary> {
        self.shutdown();
        self.wait().await
    }
}
