//! What the Kafka fault tests share: a producer loop that keeps a ledger of every
//! record's fate, and the checks of a log read back against it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tributary_core::{ErrorKind, Producer, Received, Record};

/// What the producer learned.
#[derive(Default)]
pub(crate) struct Ledger {
    /// value -> (partition, offset) of every acknowledged record.
    pub acked: HashMap<String, (u32, u64)>,
    /// Records whose send ended Indeterminate: may or may not be in the log.
    pub maybe: HashSet<String>,
    /// Sends that ended with each error kind.
    pub errors: BTreeMap<String, usize>,
    /// Records handed back as unsent by a retryable error and sent again.
    pub resent: usize,
    /// Distinct records handed to the producer.
    pub attempted: usize,
    /// What every send attempt said of each value, in order: the evidence for a record
    /// that goes missing.
    pub history: HashMap<String, Vec<String>>,
}

impl Ledger {
    fn note(&mut self, value: &str, what: String) {
        self.history.entry(value.to_string()).or_default().push(what);
    }
}

/// A record of the fault tests: its value is `key:sequence`; the header names the
/// send attempt it belongs to.
fn record(value: &str, attempt: u32) -> Record {
    let key = value.split_once(':').map_or(value, |(k, _)| k).to_string();
    Record::new(value.to_string())
        .with_key(key)
        .with_header("attempt", attempt.to_string())
}

/// Sends batches of `batch` records over `keys` keys until `done` says so, resending
/// what a retryable failure hands back (never what may be persisted), pausing `pause`
/// between batches; closes the producer.
pub(crate) async fn produce(
    producer: Box<dyn Producer>,
    topic: &str,
    batch: u64,
    keys: u64,
    pause: Duration,
    done: impl Fn(&Ledger) -> bool,
) -> Ledger {
    let mut ledger = Ledger::default();
    let (mut seq, mut attempt) = (0u64, 0u32);
    while !done(&ledger) {
        let mut values: Vec<String> = (0..batch)
            .map(|_| {
                seq += 1;
                format!("k{}:{seq:08}", seq % keys)
            })
            .collect();
        ledger.attempted += values.len();
        for _ in 0..100 {
            attempt += 1;
            let records = values.iter().map(|v| record(v, attempt)).collect();
            match producer.send(topic, records).await {
                Ok(deliveries) => {
                    for (v, d) in values.drain(..).zip(deliveries) {
                        let at = (d.partition.index().unwrap(), d.offset.as_u64().unwrap());
                        ledger.note(&v, format!("attempt {attempt}: delivered at {at:?}"));
                        ledger.acked.insert(v, at);
                    }
                    break;
                }
                Err(e) => {
                    *ledger.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
                    for (i, d) in &e.delivered {
                        let at = (d.partition.index().unwrap(), d.offset.as_u64().unwrap());
                        let what = format!("attempt {attempt}: delivered at {at:?} in a batch that failed");
                        ledger.note(&values[*i], what);
                        ledger.acked.insert(values[*i].clone(), at);
                    }
                    let unsent: Vec<String> = e
                        .unsent
                        .iter()
                        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                        .collect();
                    for v in &unsent {
                        ledger.note(
                            v,
                            format!("attempt {attempt}: unsent: {:?}: {}", e.kind(), e.error),
                        );
                    }
                    let confirmed: HashSet<usize> = e.delivered.iter().map(|(i, _)| *i).collect();
                    assert_eq!(
                        confirmed.len() + unsent.len(),
                        values.len(),
                        "every record is either confirmed or handed back"
                    );
                    if e.kind() == ErrorKind::Indeterminate {
                        ledger.maybe.extend(unsent);
                        break;
                    }
                    assert!(e.is_retryable(), "unexpected error: {}", e.error);
                    ledger.resent += unsent.len();
                    values = unsent;
                    if values.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
    producer.close().await.unwrap();
    ledger
}

/// Hands records over one at a time (`Producer::enqueue`) over `keys` keys, with up to
/// `in_flight` unconfirmed, until `done` says so; closes the producer. Nothing is resent:
/// a record whose handle failed cannot be resent behind later records of its key.
#[allow(dead_code, reason = "the cluster test sends batches only")]
pub(crate) async fn hand_over(
    producer: Box<dyn Producer>,
    topic: &str,
    keys: u64,
    in_flight: usize,
    done: impl Fn(&Ledger) -> bool,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut pending = std::collections::VecDeque::new();
    let mut seq = 0u64;
    while !done(&ledger) {
        seq += 1;
        let value = format!("k{}:{seq:08}", seq % keys);
        ledger.attempted += 1;
        let handle = producer
            .enqueue(topic, record(&value, 1))
            .await
            .expect("handed over");
        pending.push_back((value, handle));
        while pending.len() > in_flight
            || pending
                .front_mut()
                .is_some_and(|(_, h): &mut (String, tributary_core::DeliveryHandle)| h.is_done())
        {
            let Some((value, handle)) = pending.pop_front() else {
                break;
            };
            settle(&mut ledger, value, handle.await);
        }
        if seq.is_multiple_of(1000) {
            // Let the chaos task look at the ledger's progress.
            tokio::task::yield_now().await;
        }
    }
    for (value, handle) in pending {
        settle(&mut ledger, value, handle.await);
    }
    producer.close().await.unwrap();
    ledger
}

#[allow(dead_code, reason = "the cluster test sends batches only")]
fn settle(ledger: &mut Ledger, value: String, outcome: tributary_core::Result<tributary_core::Delivery>) {
    match outcome {
        Ok(d) => {
            let at = (d.partition.index().unwrap(), d.offset.as_u64().unwrap());
            ledger.note(&value, format!("handed over: delivered at {at:?}"));
            ledger.acked.insert(value, at);
        }
        Err(e) => {
            *ledger.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
            ledger.note(&value, format!("handed over: failed: {:?}: {e}", e.kind()));
            if e.kind() == ErrorKind::Indeterminate {
                ledger.maybe.insert(value);
            }
        }
    }
}

/// A record read back: where it is and which send attempt wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copy {
    pub partition: u32,
    pub offset: u64,
    pub attempt: String,
}

/// A log read back: every copy of each value, and per partition (offset, value) in
/// offset order.
#[derive(Default)]
pub(crate) struct ReadBack {
    pub copies: HashMap<String, Vec<Copy>>,
    pub partitions: BTreeMap<u32, Vec<(u64, String)>>,
    /// Per partition, the offset after the last record read.
    pub next: BTreeMap<u32, u64>,
}

impl ReadBack {
    /// Takes records read in order.
    pub(crate) fn take(&mut self, records: Vec<Received>) {
        for r in records {
            let v = String::from_utf8(r.value.to_vec()).unwrap();
            let (partition, offset) = (r.partition.index().unwrap(), r.offset.as_u64().unwrap());
            let attempt = r
                .headers
                .get("attempt")
                .map(|a| String::from_utf8_lossy(a).into_owned());
            self.copies.entry(v.clone()).or_default().push(Copy {
                partition,
                offset,
                attempt: attempt.unwrap_or_default(),
            });
            self.partitions.entry(partition).or_default().push((offset, v));
            self.next.insert(partition, offset + 1);
        }
    }

    /// Whether every partition was read up to its end in `ends`.
    pub(crate) fn reached(&self, ends: &BTreeMap<u32, u64>) -> bool {
        ends.iter()
            .all(|(p, end)| self.next.get(p).copied().unwrap_or(0) >= *end)
    }
}

/// What a log read back says of the ledger.
pub(crate) struct Findings {
    /// Acknowledged records found nowhere.
    pub lost: Vec<String>,
    /// Acknowledged records not where their delivery said.
    pub moved: Vec<String>,
    /// Records found that were neither acknowledged nor in doubt.
    pub unexplained: Vec<String>,
    /// Records in doubt that are in the log.
    pub maybe_persisted: usize,
}

/// Compares a log read back with the ledger.
pub(crate) fn compare(ledger: &Ledger, log: &ReadBack) -> Findings {
    let mut lost: Vec<String> = ledger
        .acked
        .keys()
        .filter(|v| !log.copies.contains_key(*v))
        .cloned()
        .collect();
    let mut moved: Vec<String> = ledger
        .acked
        .iter()
        .filter(|(v, at)| {
            log.copies
                .get(*v)
                .is_some_and(|copies| !copies.iter().any(|c| (c.partition, c.offset) == **at))
        })
        .map(|(v, _)| v.clone())
        .collect();
    let mut unexplained: Vec<String> = log
        .copies
        .keys()
        .filter(|v| !ledger.acked.contains_key(*v) && !ledger.maybe.contains(*v))
        .cloned()
        .collect();
    lost.sort();
    moved.sort();
    unexplained.sort();
    let maybe_persisted = ledger
        .maybe
        .iter()
        .filter(|v| log.copies.contains_key(*v))
        .count();
    Findings {
        lost,
        moved,
        unexplained,
        maybe_persisted,
    }
}

/// Fails on any finding, showing a few of each.
pub(crate) fn assert_nothing_wrong(findings: &Findings) {
    let few = |v: &[String]| v[..v.len().min(5)].to_vec();
    assert!(
        findings.lost.is_empty(),
        "acknowledged records lost: {:?}",
        few(&findings.lost)
    );
    assert!(
        findings.moved.is_empty(),
        "records not where their delivery said: {:?}",
        few(&findings.moved)
    );
    assert!(
        findings.unexplained.is_empty(),
        "records nobody sent: {:?}",
        few(&findings.unexplained)
    );
}

/// Per partition, the first copies of one key's records are in the order they were
/// sent.
pub(crate) fn assert_key_order(log: &ReadBack) {
    for (partition, records) in &log.partitions {
        let mut last: HashMap<&str, &str> = HashMap::new();
        let mut first_copies = HashSet::new();
        for (_, v) in records {
            if !first_copies.insert(v.as_str()) {
                continue;
            }
            let (key, seq) = v.split_once(':').unwrap();
            if let Some(prev) = last.insert(key, seq) {
                assert!(
                    prev < seq,
                    "partition {partition}: key {key} went {prev} then {seq}"
                );
            }
        }
    }
}
