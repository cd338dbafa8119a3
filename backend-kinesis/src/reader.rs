//! The reader protocol: where a shard reader starts, what it may skip, what it
//! reports, and the lease it reads under.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::types::{ChildShard, Record as KinesisRecord};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tributary_core::raw::backoff_ceiling;
use tributary_core::{Error, Headers, Offset, PartitionId, Received, Timestamp};

use crate::keeper::Holdings;
use crate::kpl::{self, Deaggregated};
use crate::position::{KinesisPosition, offset_of};
use crate::{Shared, envelope, keys};

/// What readers report to the consumer.
pub(crate) enum Event {
    Records {
        shard: PartitionId,
        epoch: u64,
        records: Vec<Received>,
    },
    /// A group member's shard was read to its end (broadcast readers go on to the
    /// children themselves).
    Ended {
        shard: PartitionId,
        epoch: u64,
    },
    /// A group member's shard reader failed (broadcast readers report `Failed`).
    ShardFailed {
        shard: PartitionId,
        epoch: u64,
        error: Error,
    },
    Failed(Error),
}

/// What the consumer can see of the coordinator's state.
#[derive(Default)]
pub(crate) struct View {
    pub(crate) known: BTreeSet<PartitionId>,
    pub(crate) lag: BTreeMap<PartitionId, Duration>,
}

/// Where a reader starts.
#[derive(Clone, Debug)]
pub(crate) enum Start {
    TrimHorizon,
    Latest,
    /// At this sequence number (records below the floor are skipped).
    AtSequence(String),
    /// After this sequence number (an enhanced fan-out continuation).
    AfterSequence(String),
    Timestamp(Timestamp),
}

impl Start {
    /// This start as Kinesis can take it now: a time in the future (which Kinesis
    /// refuses) starts at the end, as it does on other engines.
    pub(crate) fn effective(&self) -> Start {
        match self {
            Start::Timestamp(t) if *t > Timestamp::now() => Start::Latest,
            other => other.clone(),
        }
    }
}

/// Everything one shard reader needs.
pub(crate) struct ReaderContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stream: Arc<str>,
    pub(crate) shard: PartitionId,
    pub(crate) epoch: u64,
    pub(crate) start: Start,
    /// Records at or below this offset (or below it, when inclusive) are not delivered.
    pub(crate) floor: Option<Floor>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) view: Arc<Mutex<View>>,
    /// Told once the reader holds its first position, so that a consumer made to
    /// start at the end misses nothing written after it was made.
    pub(crate) positioned: Option<oneshot::Sender<()>>,
    /// For a start at a time: records stamped earlier are skipped until the first one
    /// at or after it. Kinesis finds the place by arrival time; with the envelope a
    /// record's time is its event time, which may be earlier.
    pub(crate) time_gate: Option<Timestamp>,
    /// A group member's lease of the shard.
    pub(crate) lease: Option<LeaseCheck>,
}

/// A bound below which records are skipped.
#[derive(Clone, Debug)]
pub(crate) struct Floor {
    pub(crate) offset: Offset,
    /// Whether the record at `offset` itself is delivered.
    pub(crate) inclusive: bool,
}

impl Floor {
    pub(crate) fn admits(&self, offset: &Offset) -> bool {
        if self.inclusive {
            offset >= &self.offset
        } else {
            offset > &self.offset
        }
    }
}

/// How a reader stopped.
pub(crate) enum ReaderExit {
    /// The shard is closed and every record of it was delivered.
    Ended(Vec<ChildShard>),
    Failed(Error),
    /// The consumer is gone.
    Stopped,
}

impl ReaderContext {
    /// Turns Kinesis records into delivered records: de-aggregates KPL records, opens
    /// envelopes, skips what is below the floor, and moves the floor past what it
    /// returns.
    pub(crate) fn convert(&mut self, records: Vec<KinesisRecord>) -> Vec<Received> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let arrival = record
                .approximate_arrival_timestamp
                .and_then(|t| t.to_millis().ok())
                .map(Timestamp::from_millis);
            let data = Bytes::from(record.data.into_inner());
            let users = match kpl::deaggregate(&data) {
                Ok(Deaggregated::Plain) => vec![(record.partition_key.clone().unwrap_or_default(), data)],
                Ok(Deaggregated::Aggregate(users)) => {
                    users.into_iter().map(|u| (u.partition_key, u.data)).collect()
                }
                Err(why) => {
                    tracing::warn!(
                        stream = %self.stream, shard = %self.shard, sequence = %record.sequence_number,
                        "a KPL aggregate cannot be read ({why}): delivered as it is"
                    );
                    vec![(record.partition_key.clone().unwrap_or_default(), data)]
                }
            };
            for (sub, (partition_key, data)) in users.into_iter().enumerate() {
                let offset = match u32::try_from(sub)
                    .map_err(|_| ())
                    .and_then(|sub| offset_of(&record.sequence_number, sub).map_err(|_| ()))
                {
                    Ok(o) => o,
                    Err(()) => {
                        tracing::warn!(
                            stream = %self.stream, shard = %self.shard, sequence = %record.sequence_number,
                            "a record has a position that no offset can hold: skipped"
                        );
                        continue;
                    }
                };
                if self.floor.as_ref().is_some_and(|f| !f.admits(&offset)) {
                    continue;
                }
                let (value, headers, event_time) = if self.shared.config.headers_envelope {
                    let unwrapped = envelope::unwrap(data);
                    (unwrapped.value, unwrapped.headers, unwrapped.timestamp)
                } else {
                    (data, Headers::new(), None)
                };
                let timestamp = event_time.or(arrival);
                if let Some(gate) = self.time_gate {
                    if timestamp.is_some_and(|t| t < gate) {
                        continue;
                    }
                    self.time_gate = None;
                }
                self.floor = Some(Floor {
                    offset: offset.clone(),
                    inclusive: false,
                });
                out.push(Received {
                    stream: self.stream.clone(),
                    partition: self.shard.clone(),
                    offset,
                    key: keys::record_key(&partition_key),
                    value,
                    headers,
                    timestamp,
                });
            }
        }
        out
    }

    /// Where to start again after an error: after the last record delivered, else the
    /// original start.
    pub(crate) fn resume_point(&self) -> Start {
        match &self.floor {
            Some(floor) if !floor.inclusive || matches!(self.start, Start::AtSequence(_)) => {
                match KinesisPosition::from_offset(&floor.offset) {
                    Ok(p) => Start::AtSequence(p.sequence_number),
                    Err(_) => self.start.clone(),
                }
            }
            _ => self.start.clone(),
        }
    }

    /// Pins a LATEST start to the time it was taken, so that a reader that starts
    /// over before delivering anything resumes from there, not from a later end.
    pub(crate) fn pin_latest(&mut self, start: &Start, taken_at: Timestamp) {
        if matches!(start, Start::Latest) {
            self.start = Start::Timestamp(taken_at);
        }
    }

    /// Waits while the group member's lease of the shard has lapsed (the consumer
    /// stops this reader at its next call). A reader of a lapsed lease must not
    /// subscribe again: with the group's shared fan-out registration that would take
    /// the shard's subscription away from the member that holds the lease now.
    pub(crate) async fn wait_while_lapsed(&self) {
        let Some(lease) = &self.lease else { return };
        while !lease.holds(&self.shard) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Says the reader has its first position (an iterator or a subscription).
    pub(crate) fn positioned(&mut self) {
        if let Some(tell) = self.positioned.take() {
            let _ = tell.send(());
        }
    }

    /// Hands records to the consumer; false when it is gone.
    pub(crate) async fn deliver(&self, records: Vec<Received>) -> bool {
        if records.is_empty() {
            return true;
        }
        self.events
            .send(Event::Records {
                shard: self.shard.clone(),
                epoch: self.epoch,
                records,
            })
            .await
            .is_ok()
    }

    /// Waits before retrying after `failures` failures in a row: exponential backoff
    /// with jitter, at least `floor`.
    pub(crate) async fn pause(&self, failures: u32, error: &Error, floor: Duration) {
        let config = &self.shared.config;
        let ceiling = backoff_ceiling(config.retry_base, config.retry_max, failures).max(floor);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let pause = Duration::from_nanos(fastrand::u64(nanos / 2..=nanos));
        tracing::debug!(stream = %self.stream, shard = %self.shard, ?pause, "retrying after: {error}");
        tokio::time::sleep(pause).await;
    }

    pub(crate) fn record_lag(&self, millis: i64) {
        let lag = Duration::from_millis(u64::try_from(millis).unwrap_or(0));
        if let Ok(mut view) = self.view.lock() {
            view.lag.insert(self.shard.clone(), lag);
        }
    }
}

/// A group member's lease of the shard a reader reads, as the keeper holds it.
#[derive(Clone, Debug)]
pub(crate) struct LeaseCheck {
    pub(crate) holdings: Arc<Mutex<Holdings>>,
    pub(crate) tenure: u64,
}

impl LeaseCheck {
    /// Whether the member still holds the lease of `shard`, in the same tenure.
    pub(crate) fn holds(&self, shard: &PartitionId) -> bool {
        let now = tokio::time::Instant::now();
        self.holdings.lock().is_ok_and(|h| {
            h.held
                .get(shard)
                .is_some_and(|held| held.tenure == self.tenure && held.valid_until > now)
        })
    }
}
