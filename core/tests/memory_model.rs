//! Drives the memory engine with random sequences of sends, polls, acks, commits,
//! members joining and leaving (closed or dropped), seeks and partition growth, and
//! checks every step against a small reference model of what the contract promises.

#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use tributary_core::raw::partition_for_key;
use tributary_core::{
    Admin, Backend, Consumer, ConsumerConfig, ErrorKind, MemoryBackend, MemoryConfig, Offset, PartitionId,
    Producer, ProducerConfig, Record, StartFrom, StreamSpec,
};

const STREAM: &str = "model";
const GROUP: &str = "group";

#[derive(Clone, Debug)]
enum Op {
    Send { keys: Vec<Option<u8>> },
    Poll { member: usize, max: usize },
    Ack { member: usize, pick: usize },
    Commit { member: usize },
    Join,
    Leave { member: usize, graceful: bool },
    Seek { member: usize, pick: usize, to: Target },
    Grow,
    Broadcast { max: usize },
}

#[derive(Clone, Debug)]
enum Target {
    Earliest,
    Latest,
    At(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(prop::option::of(0u8..6), 1..5).prop_map(|keys| Op::Send { keys }),
        5 => (0usize..4, 1usize..6).prop_map(|(member, max)| Op::Poll { member, max }),
        4 => (0usize..4, 0usize..8).prop_map(|(member, pick)| Op::Ack { member, pick }),
        3 => (0usize..4).prop_map(|member| Op::Commit { member }),
        2 => Just(Op::Join),
        1 => (0usize..4, any::<bool>()).prop_map(|(member, graceful)| Op::Leave { member, graceful }),
        3 => (0usize..4, 0usize..4, prop_oneof![Just(Target::Earliest), Just(Target::Latest), (0u64..12).prop_map(Target::At)])
            .prop_map(|(member, pick, to)| Op::Seek { member, pick, to }),
        1 => Just(Op::Grow),
        2 => (1usize..8).prop_map(|max| Op::Broadcast { max }),
    ]
}

/// What the model knows of one member.
struct ModelMember {
    consumer: Box<dyn Consumer>,
    /// Partitions held after the member's last call.
    held: BTreeSet<u32>,
    /// Per held partition: the next offset this member must receive.
    next: BTreeMap<u32, u64>,
    /// Per held partition: delivered offsets with whether acked, oldest first.
    delivered: BTreeMap<u32, Vec<(u64, bool)>>,
}

impl ModelMember {
    fn watermark(&self, p: u32) -> Option<u64> {
        let mut last = None;
        for (o, acked) in self.delivered.get(&p)? {
            if !acked {
                break;
            }
            last = Some(*o);
        }
        last
    }
}

struct Model {
    /// Values per partition, in offset order.
    logs: Vec<Vec<String>>,
    /// Group commits: next offset to read per partition.
    committed: BTreeMap<u32, u64>,
    members: Vec<ModelMember>,
    broadcast: Box<dyn Consumer>,
    broadcast_next: BTreeMap<u32, u64>,
    sent: usize,
}

impl Model {
    fn commit_watermarks(&mut self, m: usize, partitions: impl IntoIterator<Item = u32>) {
        for p in partitions {
            if let Some(w) = self.members[m].watermark(p) {
                let slot = self.committed.entry(p).or_insert(0);
                *slot = (*slot).max(w + 1);
            }
        }
    }

    /// After a call on member `m`: partitions it lost were committed on revoke;
    /// partitions it gained start at the group's commit.
    fn observe(&mut self, m: usize) {
        let now: BTreeSet<u32> = self.members[m]
            .consumer
            .assignment()
            .iter()
            .map(|p| p.index().unwrap())
            .collect();
        let lost: Vec<u32> = self.members[m].held.difference(&now).copied().collect();
        let gained: Vec<u32> = now.difference(&self.members[m].held).copied().collect();
        self.commit_watermarks(m, lost.iter().copied());
        for p in lost {
            self.members[m].next.remove(&p);
            self.members[m].delivered.remove(&p);
        }
        for p in gained {
            let start = self.committed.get(&p).copied().unwrap_or(0);
            self.members[m].next.insert(p, start);
            self.members[m].delivered.insert(p, Vec::new());
        }
        self.members[m].held = now;
        self.check_exclusive();
    }

    fn check_exclusive(&self) {
        let mut owners = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            for p in &m.held {
                if let Some(other) = owners.insert(*p, i) {
                    panic!("partition {p} held by members {other} and {i}");
                }
            }
        }
    }
}

fn block<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(f)
}

fn run(initial_partitions: u32, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = MemoryConfig {
        session_timeout: Duration::from_secs(3600),
        ..MemoryConfig::default()
    };
    let engine = MemoryBackend::new(config).unwrap();
    let admin: Box<dyn Admin> = block(&rt, engine.admin()).unwrap();
    block(
        &rt,
        admin.create_stream(&StreamSpec::new(STREAM).with_partitions(initial_partitions)),
    )
    .unwrap();
    let producer: Box<dyn Producer> = block(&rt, engine.producer(ProducerConfig::default())).unwrap();
    let broadcast = block(&rt, engine.consumer(ConsumerConfig::broadcast(STREAM))).unwrap();
    let mut model = Model {
        logs: vec![Vec::new(); initial_partitions as usize],
        committed: BTreeMap::new(),
        members: Vec::new(),
        broadcast,
        broadcast_next: BTreeMap::new(),
        sent: 0,
    };
    let zero = Duration::ZERO;

    for op in ops {
        match op {
            Op::Send { keys } => {
                let records: Vec<Record> = keys
                    .iter()
                    .map(|k| {
                        model.sent += 1;
                        let r = Record::new(format!("v{}", model.sent));
                        match k {
                            Some(k) => r.with_key(vec![*k]),
                            None => r,
                        }
                    })
                    .collect();
                let values: Vec<String> = records
                    .iter()
                    .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                    .collect();
                let deliveries = block(&rt, producer.send(STREAM, records)).unwrap();
                let partitions = model.logs.len() as u32;
                for ((key, value), d) in keys.iter().zip(values).zip(deliveries) {
                    let p = d.partition.index().unwrap();
                    if let Some(k) = key {
                        assert_eq!(p, partition_for_key(&[*k], partitions), "keyed routing");
                    }
                    let log = &mut model.logs[p as usize];
                    assert_eq!(d.offset, Offset::new(log.len() as u64), "offsets are dense");
                    log.push(value);
                }
            }
            Op::Poll { member, max } => {
                if model.members.is_empty() {
                    continue;
                }
                let m = member % model.members.len();
                let got = block(&rt, model.members[m].consumer.poll(max, zero)).unwrap();
                assert!(got.len() <= max);
                model.observe(m);
                for r in got {
                    let p = r.partition.index().unwrap();
                    let o = r.offset.as_u64().unwrap();
                    let mm = &mut model.members[m];
                    assert!(mm.held.contains(&p), "delivered from a partition it holds");
                    let next = mm.next.get_mut(&p).unwrap();
                    assert_eq!(o, *next, "partition {p}: no gap, no repeat within an ownership");
                    *next += 1;
                    mm.delivered.get_mut(&p).unwrap().push((o, false));
                    assert_eq!(
                        String::from_utf8(r.value.to_vec()).unwrap(),
                        model.logs[p as usize][o as usize]
                    );
                }
            }
            Op::Ack { member, pick } => {
                if model.members.is_empty() {
                    continue;
                }
                let m = member % model.members.len();
                let candidates: Vec<(u32, usize)> = model.members[m]
                    .delivered
                    .iter()
                    .flat_map(|(p, list)| (0..list.len()).map(move |i| (*p, i)))
                    .collect();
                if candidates.is_empty() {
                    let err = model.members[m]
                        .consumer
                        .ack(&PartitionId::from_index(999), &Offset::new(0))
                        .unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::NotAssigned);
                    continue;
                }
                let (p, i) = candidates[pick % candidates.len()];
                let o = model.members[m].delivered[&p][i].0;
                model.members[m]
                    .consumer
                    .ack(&PartitionId::from_index(p), &Offset::new(o))
                    .unwrap();
                model.members[m].delivered.get_mut(&p).unwrap()[i].1 = true;
            }
            Op::Commit { member } => {
                if model.members.is_empty() {
                    continue;
                }
                let m = member % model.members.len();
                block(&rt, model.members[m].consumer.commit()).unwrap();
                let held: Vec<u32> = model.members[m].held.iter().copied().collect();
                model.commit_watermarks(m, held);
            }
            Op::Join => {
                if model.members.len() >= 4 {
                    continue;
                }
                let consumer = block(&rt, engine.consumer(ConsumerConfig::group(STREAM, GROUP))).unwrap();
                model.members.push(ModelMember {
                    consumer,
                    held: BTreeSet::new(),
                    next: BTreeMap::new(),
                    delivered: BTreeMap::new(),
                });
                let m = model.members.len() - 1;
                model.observe(m);
            }
            Op::Leave { member, graceful } => {
                if model.members.is_empty() {
                    continue;
                }
                let m = member % model.members.len();
                if graceful {
                    let held: Vec<u32> = model.members[m].held.iter().copied().collect();
                    model.commit_watermarks(m, held);
                    let mut gone = model.members.remove(m);
                    block(&rt, gone.consumer.close()).unwrap();
                } else {
                    drop(model.members.remove(m));
                }
            }
            Op::Seek { member, pick, to } => {
                if model.members.is_empty() {
                    continue;
                }
                let m = member % model.members.len();
                let held: Vec<u32> = model.members[m].held.iter().copied().collect();
                if held.is_empty() {
                    let err = block(
                        &rt,
                        model.members[m]
                            .consumer
                            .seek(&PartitionId::from_index(0), StartFrom::Earliest),
                    );
                    assert_eq!(err.unwrap_err().kind(), ErrorKind::NotAssigned);
                    continue;
                }
                let p = held[pick % held.len()];
                let len = model.logs[p as usize].len() as u64;
                let (start, cursor) = match to {
                    Target::Earliest => (StartFrom::Earliest, 0),
                    Target::Latest => (StartFrom::Latest, len),
                    Target::At(k) => (StartFrom::At(Offset::new(k)), k),
                };
                block(
                    &rt,
                    model.members[m].consumer.seek(&PartitionId::from_index(p), start),
                )
                .unwrap();
                model.members[m].next.insert(p, cursor);
                model.members[m].delivered.insert(p, Vec::new());
            }
            Op::Grow => {
                let to = model.logs.len() as u32 + 1;
                if to > 6 {
                    continue;
                }
                block(&rt, admin.set_partitions(STREAM, to)).unwrap();
                model.logs.push(Vec::new());
            }
            Op::Broadcast { max } => {
                let got = block(&rt, model.broadcast.poll(max, zero)).unwrap();
                for r in got {
                    let p = r.partition.index().unwrap();
                    let next = model.broadcast_next.entry(p).or_insert(0);
                    assert_eq!(
                        r.offset.as_u64().unwrap(),
                        *next,
                        "broadcast reads each partition in order"
                    );
                    *next += 1;
                    assert_eq!(
                        String::from_utf8(r.value.to_vec()).unwrap(),
                        model.logs[p as usize][(*next - 1) as usize]
                    );
                }
            }
        }
    }

    // Everyone leaves gracefully; a fresh member resumes exactly at the group's commits
    // and reads to the end.
    for m in (0..model.members.len()).rev() {
        let held: Vec<u32> = model.members[m].held.iter().copied().collect();
        model.commit_watermarks(m, held);
        let mut gone = model.members.remove(m);
        block(&rt, gone.consumer.close()).unwrap();
    }
    let mut last = block(&rt, engine.consumer(ConsumerConfig::group(STREAM, GROUP))).unwrap();
    let mut expected_next: BTreeMap<u32, u64> = (0..model.logs.len() as u32)
        .map(|p| (p, model.committed.get(&p).copied().unwrap_or(0)))
        .collect();
    loop {
        let got = block(&rt, last.poll(100, zero)).unwrap();
        if got.is_empty() {
            break;
        }
        for r in got {
            let p = r.partition.index().unwrap();
            let next = expected_next.get_mut(&p).unwrap();
            assert_eq!(
                r.offset.as_u64().unwrap(),
                *next,
                "resume at the commit of partition {p}"
            );
            *next += 1;
        }
    }
    for (p, next) in expected_next {
        let len = model.logs[p as usize].len() as u64;
        assert_eq!(
            next,
            len.max(model.committed.get(&p).copied().unwrap_or(0)),
            "partition {p} read to the end"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]

    #[test]
    fn memory_engine_matches_the_model(partitions in 1u32..4, ops in prop::collection::vec(op(), 1..60)) {
        run(partitions, ops);
    }
}

/// A rewind followed by acks and a commit of older records must not lower the commit.
#[test]
fn rewind_then_commit_keeps_the_commit() {
    let mut ops = vec![
        Op::Join,
        Op::Send { keys: vec![None; 5] },
        Op::Poll { member: 0, max: 5 },
    ];
    ops.extend((0..5).map(|pick| Op::Ack { member: 0, pick }));
    ops.extend([
        Op::Commit { member: 0 },
        Op::Seek {
            member: 0,
            pick: 0,
            to: Target::Earliest,
        },
        Op::Poll { member: 0, max: 2 },
        Op::Ack { member: 0, pick: 0 },
        Op::Commit { member: 0 },
    ]);
    run(1, ops);
}
