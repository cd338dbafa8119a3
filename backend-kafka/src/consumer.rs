//! The consumer. Broadcast: every partition assigned by hand, start positions resolved
//! when the consumer is made, new partitions added as metadata shows them. Group: a
//! cooperative-sticky subscription whose commits carry only acknowledged records (the
//! AckTracker's low watermark), committed again when partitions are revoked or the
//! consumer closes.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, Offset as KafkaOffset, TopicPartitionList};
use tributary_core::raw::{
    AckTracker, GroupOperation, group_only, validate_group_name, validate_stream_name,
};
use tributary_core::{
    Bytes, Consumer, ConsumerConfig, ConsumerMode, Error, ErrorKind, Offset, PartitionId, Received, Result,
    StartFrom, Timestamp, async_trait,
};

use crate::config::{KafkaConfig, Role};
use crate::error::{self, AuthWatch};
use crate::metadata::{blocking, fetch_partition_count, retry_transient};

type Client = StreamConsumer<GroupContext>;

/// What the rebalance callbacks and the consumer share.
#[derive(Debug, Default)]
struct Shared {
    /// Partitions this member owns now.
    assigned: BTreeSet<i32>,
    acks: AckTracker,
    /// Commits on revoke that failed since this was last emptied (the first few).
    failed_revoke_commits: Vec<String>,
    /// Set when the consumer is dropped without close: leave like a crash.
    dropped: bool,
}

impl Shared {
    fn note_failed_commit(&mut self, why: String) {
        const KEPT: usize = 8;
        if self.failed_revoke_commits.len() < KEPT {
            self.failed_revoke_commits.push(why);
        }
    }
}

/// Runs a blocking librdkafka call from inside a callback: through `block_in_place` on
/// a multi-threaded tokio runtime (its other tasks move to other workers), directly
/// elsewhere, and directly where tokio refuses (inside a `LocalSet`).
fn off_the_runtime<T>(call: impl FnOnce() -> T) -> T {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if !multi_threaded {
        return call();
    }
    let mut call = Some(call);
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| call.take().map(|c| c()))
    }));
    match (attempt, call.take()) {
        (Ok(Some(value)), _) => value,
        // block_in_place refused before running the call: run it here.
        (Err(_), Some(call)) | (Ok(None), Some(call)) => call(),
        (Err(panic), None) => std::panic::resume_unwind(panic),
        (Ok(None), None) => unreachable!("the call runs exactly once"),
    }
}

/// Runs inside librdkafka's rebalance callback, on the thread that polls.
struct GroupContext {
    topic: Arc<str>,
    shared: Arc<Mutex<Shared>>,
    auth: Arc<AuthWatch>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.auth.observe_log(level, message);
        error::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.auth.observe(&error, reason);
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = revoked
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let (committable, dropped) = {
            let shared = lock(&self.shared);
            let committable: Vec<(i32, Offset)> = partitions
                .iter()
                .filter_map(|p| {
                    let offset = shared.acks.committable(&PartitionId::from_index(index_of(*p)))?;
                    Some((*p, offset.clone()))
                })
                .collect();
            (committable, shared.dropped)
        };
        if dropped {
            // Dropped without close: like a crash, nothing more is committed.
        } else if consumer.assignment_lost() {
            if !committable.is_empty() {
                let lost: Vec<String> = committable.iter().map(|(p, _)| p.to_string()).collect();
                let why = format!(
                    "the group took partitions {} away from this member before their acknowledged records \
                     were committed; they will be redelivered",
                    lost.join(", ")
                );
                tracing::warn!(topic = %self.topic, "kafka group: {why}");
                lock(&self.shared).note_failed_commit(why);
            }
        } else if !committable.is_empty() {
            let committed = commit_list(&self.topic, &committable).and_then(|tpl| {
                // A sync commit can wait for the group coordinator: keep it off the
                // other tasks of a multi-threaded runtime.
                off_the_runtime(|| consumer.commit(&tpl, CommitMode::Sync))
                    .map_err(|e| error::convert("commit on revoke", e))
            });
            let mut shared = lock(&self.shared);
            match committed {
                Ok(()) => {
                    for (p, o) in committable {
                        shared.acks.committed(&PartitionId::from_index(index_of(p)), o);
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka group: commit on revoke failed; those records will be redelivered");
                    shared.note_failed_commit(e.to_string());
                }
            }
        }
        let mut shared = lock(&self.shared);
        for p in partitions {
            shared.assigned.remove(&p);
            shared.acks.forget(&PartitionId::from_index(index_of(p)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let mut shared = lock(&self.shared);
            for e in assigned.elements_for_topic(&self.topic) {
                shared.assigned.insert(e.partition());
                shared
                    .acks
                    .assign(&PartitionId::from_index(index_of(e.partition())));
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn index_of(partition: i32) -> u32 {
    u32::try_from(partition).unwrap_or_default()
}

/// The commit list for acknowledged offsets: Kafka commits the next offset to read.
fn commit_list(topic: &str, acked: &[(i32, Offset)]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(acked.len());
    for (partition, offset) in acked {
        let next = kafka_offset(offset)? + 1;
        tpl.add_partition_offset(topic, *partition, KafkaOffset::Offset(next))
            .map_err(|e| error::convert("building a commit", e))?;
    }
    Ok(tpl)
}

fn kafka_offset(offset: &Offset) -> Result<i64> {
    offset
        .as_u64()
        .and_then(|o| i64::try_from(o).ok())
        .ok_or_else(|| Error::invalid_input(format!("{offset} is not a Kafka offset")))
}

fn kafka_partition(partition: &PartitionId) -> Result<i32> {
    partition
        .index()
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotAssigned,
                format!("partition {partition} is not a Kafka partition"),
            )
        })
}

/// Reads one topic, as a group member or alone.
pub struct KafkaConsumer {
    topic: Arc<str>,
    group: Option<String>,
    config: Arc<KafkaConfig>,
    client: Option<Arc<Client>>,
    shared: Arc<Mutex<Shared>>,
    /// Records taken from librdkafka and not yet returned (keeps `poll` cancel safe).
    buffer: VecDeque<Received>,
    /// A seek handed to librdkafka whose outcome is still to be applied here (kept
    /// across a cancelled `seek`, so the next call finishes it).
    pending_seek: Option<(PartitionId, tokio::task::JoinHandle<Result<()>>)>,
    /// Partition ids by index, made once (each record carries one).
    partition_ids: Vec<PartitionId>,
    /// Broadcast: partitions assigned so far, and when metadata was last checked.
    broadcast_partitions: u32,
    metadata_checked: Instant,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("closed", &self.client.is_none())
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    pub(crate) async fn new(config: Arc<KafkaConfig>, consumer: ConsumerConfig) -> Result<Self> {
        validate_stream_name(&consumer.stream)?;
        let group = match &consumer.mode {
            ConsumerMode::Group(g) => {
                validate_group_name(g)?;
                Some(g.clone())
            }
            ConsumerMode::Broadcast => None,
        };
        let topic: Arc<str> = Arc::from(consumer.stream.as_str());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let auth = Arc::new(AuthWatch::new(config.secret_values()));
        let context = GroupContext {
            topic: topic.clone(),
            shared: shared.clone(),
            auth: auth.clone(),
        };
        // librdkafka needs a group id even to assign partitions by hand; a broadcast
        // consumer gets one of its own that never joins a group nor commits.
        let client_group = group
            .clone()
            .unwrap_or_else(|| format!("tributary-broadcast-{:016x}", fastrand::u64(..)));
        let client: Arc<Client> = Arc::new(
            config
                .client_config(Role::Consumer, Some(&client_group))
                .create_with_context(context)
                .map_err(|e| error::convert("creating a consumer", e))?,
        );
        let timeout = config.operation_timeout;
        let partitions = {
            let (looking, name) = (client.clone(), topic.clone());
            let found = blocking(move || fetch_partition_count(looking.client(), &name, timeout)).await?;
            if found.is_err() {
                // Serve librdkafka's queued error events, so an authentication
                // failure reaches the context before the error is explained.
                let mut events = client.stream();
                while let Some(Some(_)) = events.next().now_or_never() {}
            }
            found.map_err(|e| auth.explain(e))?
        };
        let mut this = Self {
            topic,
            group,
            config,
            client: Some(client.clone()),
            shared,
            buffer: VecDeque::new(),
            pending_seek: None,
            partition_ids: Vec::new(),
            broadcast_partitions: 0,
            metadata_checked: Instant::now(),
        };
        match &this.group {
            None => {
                let starts = this.resolve_starts(0..partitions, consumer.start.clone()).await?;
                let tpl = this.position_list(&starts)?;
                client
                    .assign(&tpl)
                    .map_err(|e| error::convert("assigning partitions", e))?;
                this.broadcast_partitions = partitions;
                let mut shared = lock(&this.shared);
                shared
                    .assigned
                    .extend(0..i32::try_from(partitions).unwrap_or(i32::MAX));
            }
            Some(_) => {
                if consumer.start != StartFrom::Earliest {
                    this.record_group_start(partitions, consumer.start.clone())
                        .await?;
                }
                client
                    .subscribe(&[&this.topic])
                    .map_err(|e| error::convert("subscribing", e))?;
            }
        }
        Ok(this)
    }

    fn client(&self) -> Result<&Arc<Client>> {
        self.client.as_ref().ok_or_else(|| Error::closed("consumer"))
    }

    fn position_list(&self, starts: &[(i32, KafkaOffset)]) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::with_capacity(starts.len());
        for (p, offset) in starts {
            tpl.add_partition_offset(&self.topic, *p, *offset)
                .map_err(|e| error::convert("building an assignment", e))?;
        }
        Ok(tpl)
    }

    /// Where each partition starts, resolved now so `Latest` means "after this call".
    async fn resolve_starts(
        &self,
        partitions: std::ops::Range<u32>,
        start: StartFrom,
    ) -> Result<Vec<(i32, KafkaOffset)>> {
        let client = self.client()?.clone();
        let topic = self.topic.clone();
        let timeout = self.config.operation_timeout;
        let partitions: Vec<i32> = partitions.filter_map(|p| i32::try_from(p).ok()).collect();
        blocking(move || resolve_blocking(&client, &topic, &partitions, &start, timeout)).await?
    }

    /// A group's first start other than `Earliest` is recorded as the group's position
    /// for partitions with no commit, so every member (and the next) starts there.
    async fn record_group_start(&self, partitions: u32, start: StartFrom) -> Result<()> {
        let client = self.client()?.clone();
        let topic = self.topic.clone();
        let timeout = self.config.operation_timeout;
        let starts = self.resolve_starts(0..partitions, start).await?;
        blocking(move || {
            let mut query = TopicPartitionList::new();
            query.add_partition_range(&topic, 0, i32::try_from(partitions).unwrap_or(i32::MAX) - 1);
            let committed = client
                .committed_offsets(query, timeout)
                .map_err(|e| error::convert("reading the group's committed offsets", e))?;
            let mut missing = TopicPartitionList::new();
            for (p, offset) in starts {
                let has_commit = committed
                    .find_partition(&topic, p)
                    .is_some_and(|e| matches!(e.offset(), KafkaOffset::Offset(_)));
                if !has_commit {
                    missing
                        .add_partition_offset(&topic, p, offset)
                        .map_err(|e| error::convert("building a commit", e))?;
                }
            }
            if missing.count() > 0
                && let Err(e) = client.commit(&missing, CommitMode::Sync)
            {
                // The group already has active members: their positions stand.
                tracing::info!(%topic, error = %e, "kafka group: start position not recorded");
            }
            Ok(())
        })
        .await?
    }

    /// Broadcast: assigns partitions that appeared since the last look.
    async fn pick_up_new_partitions(&mut self) -> Result<()> {
        if self.group.is_some() || self.metadata_checked.elapsed() < self.config.metadata_refresh {
            return Ok(());
        }
        self.metadata_checked = Instant::now();
        let client = self.client()?.clone();
        let topic = self.topic.clone();
        let timeout = self.config.operation_timeout;
        let count = match blocking(move || fetch_partition_count(client.client(), &topic, timeout)).await? {
            Ok(count) => count,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "kafka: partition metadata not refreshed");
                return Ok(());
            }
        };
        if count <= self.broadcast_partitions {
            return Ok(());
        }
        // Everything in a partition that appeared after this consumer started is new.
        let starts: Vec<(i32, KafkaOffset)> = (self.broadcast_partitions..count)
            .filter_map(|p| i32::try_from(p).ok())
            .map(|p| (p, KafkaOffset::Beginning))
            .collect();
        let tpl = self.position_list(&starts)?;
        self.client()?
            .incremental_assign(&tpl)
            .map_err(|e| error::convert("assigning new partitions", e))?;
        lock(&self.shared).assigned.extend(starts.iter().map(|(p, _)| *p));
        self.broadcast_partitions = count;
        Ok(())
    }

    fn partition_id(&mut self, partition: i32) -> PartitionId {
        const CACHED: usize = 65_536;
        let index = usize::try_from(partition).unwrap_or_default();
        if index >= CACHED {
            return PartitionId::from_index(index_of(partition));
        }
        if index >= self.partition_ids.len() {
            let have = self.partition_ids.len();
            self.partition_ids.extend(
                (have..=index).map(|i| PartitionId::from_index(u32::try_from(i).unwrap_or_default())),
            );
        }
        self.partition_ids[index].clone()
    }

    fn received(&mut self, message: &BorrowedMessage<'_>) -> Received {
        let headers = crate::headers::headers_of(message);
        Received {
            stream: self.topic.clone(),
            partition: self.partition_id(message.partition()),
            offset: Offset::new(u64::try_from(message.offset()).unwrap_or_default()),
            key: message.key().map(Bytes::copy_from_slice),
            value: message.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            headers,
            timestamp: message.timestamp().to_millis().map(Timestamp::from_millis),
        }
    }

    /// An error from the fetch path: fatal ones end the poll, transient ones are
    /// librdkafka's to retry.
    async fn consume_error(&self, e: KafkaError) -> Result<()> {
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PollExceeded) {
            // librdkafka left the group when the application stopped polling, and this
            // poll rejoins it: the partitions it had may be another member's now, which
            // the rebalance callbacks and the next commit report. Not a failure of poll.
            tracing::warn!(
                topic = %self.topic,
                max_poll_interval = ?self.config.max_poll_interval,
                "kafka group: not polled within max_poll_interval; the member left the group and rejoins"
            );
            return Ok(());
        }
        let converted = error::convert(&format!("reading topic {}", self.topic), e);
        match converted.kind() {
            // Often transient (a leader moving): believe it only when metadata agrees.
            ErrorKind::NotFound => {
                let client = self.client()?.clone();
                let (topic, timeout) = (self.topic.clone(), self.config.operation_timeout);
                match blocking(move || fetch_partition_count(client.client(), &topic, timeout)).await? {
                    Err(e) if e.kind() == ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Throttled => {
                tracing::debug!(error = %converted, "kafka: transient fetch error (librdkafka retries)");
                Ok(())
            }
            _ => Err(converted),
        }
    }

    /// Waits for a seek in flight; once it moved the position, drops what was read from
    /// the old position and the acknowledgements of the partition. Cancel safe: the
    /// seek stays pending. The error of a seek whose call was cancelled is logged, not
    /// returned by the unrelated call that finishes it.
    async fn finish_seek(&mut self) -> Result<()> {
        match self.finish_seek_reporting().await {
            Err(e) if e.kind() != ErrorKind::Closed => {
                tracing::warn!(error = %e, "kafka: a seek whose call was cancelled failed");
                Ok(())
            }
            other => other,
        }
    }

    async fn finish_seek_reporting(&mut self) -> Result<()> {
        let Some((_, handle)) = self.pending_seek.as_mut() else {
            return Ok(());
        };
        let outcome = handle.await;
        let Some((partition, _)) = self.pending_seek.take() else {
            return Ok(());
        };
        let moved =
            outcome.map_err(|e| Error::new(ErrorKind::Backend, format!("kafka: seeking failed: {e}")))?;
        // A failed seek left the position where it was: keep what was read and acked.
        moved?;
        self.buffer.retain(|r| r.partition != partition);
        if self.group.is_some() {
            lock(&self.shared).acks.reset(&partition);
        }
        Ok(())
    }

    /// Drops records of partitions this member no longer owns, from `out` and the buffer.
    fn drop_revoked(&mut self, out: &mut Vec<Received>) {
        if self.group.is_none() {
            return;
        }
        let shared = lock(&self.shared);
        let owned = |r: &Received| {
            r.partition
                .index()
                .and_then(|i| i32::try_from(i).ok())
                .is_some_and(|p| shared.assigned.contains(&p))
        };
        out.retain(owned);
        self.buffer.retain(owned);
    }
}

/// Moves one partition's fetch position, retrying while librdkafka is not ready to
/// (a partition just assigned has not started fetching yet).
fn seek_blocking(client: &Client, tpl: TopicPartitionList, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = client
            .seek_partitions(tpl.clone(), timeout)
            .and_then(|result| result.elements().iter().try_for_each(|e| e.error()));
        match outcome {
            Err(e)
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(|e| error::convert("seeking", e)),
        }
    }
}

/// Resolves start positions (blocking: watermarks and time lookups).
fn resolve_blocking(
    client: &Client,
    topic: &str,
    partitions: &[i32],
    start: &StartFrom,
    timeout: Duration,
) -> Result<Vec<(i32, KafkaOffset)>> {
    let watermarks = |p: i32| {
        retry_transient(timeout, || {
            client
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| error::convert(&format!("watermarks of {topic}/{p}"), e))
        })
    };
    let at = |p: i32, wanted: i64| -> Result<KafkaOffset> {
        let (low, high) = watermarks(p)?;
        Ok(KafkaOffset::Offset(wanted.min(high).max(low)))
    };
    match start {
        StartFrom::Earliest => Ok(partitions.iter().map(|p| (*p, KafkaOffset::Beginning)).collect()),
        StartFrom::Latest => partitions
            .iter()
            .map(|p| Ok((*p, KafkaOffset::Offset(watermarks(*p)?.1))))
            .collect(),
        StartFrom::At(o) => {
            let o = kafka_offset(o)?;
            partitions.iter().map(|p| Ok((*p, at(*p, o)?))).collect()
        }
        StartFrom::After(o) => {
            let o = kafka_offset(o)?.saturating_add(1);
            partitions.iter().map(|p| Ok((*p, at(*p, o)?))).collect()
        }
        StartFrom::Timestamp(t) => {
            let mut query = TopicPartitionList::with_capacity(partitions.len());
            for p in partitions {
                query
                    .add_partition_offset(topic, *p, KafkaOffset::Offset(t.as_millis()))
                    .map_err(|e| error::convert("building a time lookup", e))?;
            }
            let found = retry_transient(timeout, || {
                client
                    .offsets_for_times(query.clone(), timeout)
                    .map_err(|e| error::convert(&format!("offsets of {topic} by time"), e))
            })?;
            partitions
                .iter()
                .map(|p| {
                    let offset = found.find_partition(topic, *p).map(|e| e.offset());
                    match offset {
                        Some(KafkaOffset::Offset(o)) if o >= 0 => Ok((*p, KafkaOffset::Offset(o))),
                        // No record that recent: start at the end.
                        _ => Ok((*p, KafkaOffset::Offset(watermarks(*p)?.1))),
                    }
                })
                .collect()
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Received>> {
        self.finish_seek().await?;
        let client = self.client()?.clone();
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(86_400 * 365));
        self.pick_up_new_partitions().await?;
        // Records go straight into `out` between await points; at an await point they
        // are either none yet or parked in `self.buffer`, so a dropped poll loses none.
        let mut out: Vec<Received> = Vec::with_capacity(max.min(1024));
        {
            let mut stream = client.stream();
            loop {
                while out.len() < max {
                    let Some(record) = self.buffer.pop_front() else {
                        break;
                    };
                    out.push(record);
                }
                let mut failed = None;
                while out.len() < max {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(message))) => {
                            let record = self.received(&message);
                            out.push(record);
                        }
                        Some(Some(Err(e))) => {
                            failed = Some(e);
                            break;
                        }
                        Some(None) | None => break,
                    }
                }
                if let Some(e) = failed {
                    for record in out.drain(..).rev() {
                        self.buffer.push_front(record);
                    }
                    self.consume_error(e).await?;
                    continue;
                }
                self.drop_revoked(&mut out);
                if !out.is_empty() {
                    break;
                }
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(message))) => {
                        let record = self.received(&message);
                        out.push(record);
                    }
                    Ok(Some(Err(e))) => self.consume_error(e).await?,
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.drop_revoked(&mut out);
        if self.group.is_some() {
            let mut shared = lock(&self.shared);
            for r in &out {
                shared.acks.delivered(&r.partition, r.offset.clone());
            }
        }
        Ok(out)
    }

    fn ack(&mut self, partition: &PartitionId, offset: &Offset) -> Result<()> {
        self.client()?;
        group_only(self.group.as_ref(), GroupOperation::Ack)?;
        lock(&self.shared).acks.ack(partition, offset)
    }

    async fn commit(&mut self) -> Result<()> {
        self.finish_seek().await?;
        let client = self.client()?.clone();
        group_only(self.group.as_ref(), GroupOperation::Commit)?;
        let committable: Vec<(i32, Offset)> = lock(&self.shared)
            .acks
            .all_committable()
            .into_iter()
            .filter_map(|(p, o)| Some((i32::try_from(p.index()?).ok()?, o)))
            .collect();
        if !committable.is_empty() {
            let tpl = commit_list(&self.topic, &committable)?;
            blocking(move || client.commit(&tpl, CommitMode::Sync))
                .await?
                .map_err(|e| error::convert("committing", e))?;
        }
        let mut shared = lock(&self.shared);
        for (p, o) in committable {
            shared.acks.committed(&PartitionId::from_index(index_of(p)), o);
        }
        // Acknowledged records of partitions taken away since the last commit, whose
        // commit on revoke failed, will be delivered again: said once, here.
        let failed = std::mem::take(&mut shared.failed_revoke_commits);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotAssigned,
                format!(
                    "kafka: acknowledged records of revoked partitions were not committed and will be redelivered: {}",
                    failed.join("; ")
                ),
            ))
        }
    }

    async fn seek(&mut self, partition: &PartitionId, to: StartFrom) -> Result<()> {
        self.finish_seek().await?;
        let client = self.client()?.clone();
        let p = kafka_partition(partition)?;
        if !lock(&self.shared).assigned.contains(&p) {
            return Err(Error::new(
                ErrorKind::NotAssigned,
                format!("partition {partition} is not assigned to this consumer"),
            ));
        }
        let starts = self.resolve_starts(index_of(p)..index_of(p) + 1, to).await?;
        let tpl = self.position_list(&starts)?;
        let timeout = self.config.operation_timeout;
        let handle = tokio::task::spawn_blocking(move || seek_blocking(&client, tpl, timeout));
        self.pending_seek = Some((partition.clone(), handle));
        self.finish_seek_reporting().await
    }

    fn assignment(&self) -> Vec<PartitionId> {
        if self.client.is_none() {
            return Vec::new();
        }
        lock(&self.shared)
            .assigned
            .iter()
            .map(|p| PartitionId::from_index(index_of(*p)))
            .collect()
    }

    async fn close(&mut self) -> Result<()> {
        if self.client.is_none() {
            return Ok(());
        }
        let committed = if self.group.is_some() {
            self.commit().await
        } else {
            Ok(())
        };
        if let Some(client) = self.client.take() {
            // Leaving the group revokes the partitions, which commits acknowledged
            // records again (covering a commit above that lost a race with a
            // rebalance), and waits for the broker: off the async workers.
            blocking(move || {
                client.unsubscribe();
                drop(client);
            })
            .await?;
        }
        self.buffer.clear();
        let mut shared = lock(&self.shared);
        shared.assigned.clear();
        let mut failed = std::mem::take(&mut shared.failed_revoke_commits);
        match committed {
            Err(e) if !(e.kind() == ErrorKind::NotAssigned || e.is_retryable()) => Err(e),
            // Losses the last commit reported are losses of the close too.
            Err(e) if e.kind() == ErrorKind::NotAssigned => {
                failed.insert(0, e.message().to_string());
                Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "kafka: closed, but acknowledged records were not committed and will be redelivered: {}",
                        failed.join("; ")
                    ),
                )
                .with_retryable(false))
            }
            _ if failed.is_empty() => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "kafka: closed, but acknowledged records were not committed and will be redelivered: {}",
                    failed.join("; ")
                ),
            )
            // Closed for good: calling again cannot help.
            .with_retryable(false)),
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Closing a group member blocks until it has left the group: not on a runtime worker.
        lock(&self.shared).dropped = true;
        if let Some(client) = self.client.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn_blocking(move || drop(client)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::off_the_runtime;

    #[test]
    fn blocking_calls_from_callbacks_run_in_every_runtime_shape() {
        assert_eq!(off_the_runtime(|| 0), 0, "no runtime");
        let single = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(single.block_on(async { off_the_runtime(|| 1) }), 1);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let on_worker = multi.block_on(async { tokio::spawn(async { off_the_runtime(|| 2) }).await });
        assert_eq!(on_worker.unwrap(), 2);
        // tokio refuses block_in_place inside a LocalSet: the call still runs, once.
        let local = tokio::task::LocalSet::new();
        let mut runs = 0;
        assert_eq!(
            local.block_on(&multi, async {
                off_the_runtime(|| {
                    runs += 1;
                    3
                })
            }),
            3
        );
        assert_eq!(runs, 1);
        let blocking = multi.block_on(async { tokio::task::spawn_blocking(|| off_the_runtime(|| 4)).await });
        assert_eq!(blocking.unwrap(), 4);
    }
}
