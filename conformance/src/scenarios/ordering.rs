//! Where records go and in what order they arrive: by key, by explicit partition, and
//! per key while a group changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tributary_core::raw::partition_for_key;
use tributary_core::{PartitionId, Received, Record, Result, StartFrom};

use super::{by_key, partitions_of};
use crate::harness::Outcome;
use crate::support::{Ctx, Members, drain};

/// Same key ⇒ same partition, in send order; numbered partitions follow Kafka's murmur2.
pub async fn same_key_same_partition_in_order(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(4).await?;
    let producer = ctx.producer().await?;
    let keys: Vec<String> = (0..20).map(|k| format!("key-{k}")).collect();
    let mut key_partition: BTreeMap<String, PartitionId> = BTreeMap::new();
    for round in 0..5 {
        let records: Vec<Record> = keys
            .iter()
            .flat_map(|k| {
                (0..2).map(move |i| Record::new(format!("{k}/{}", round * 2 + i)).with_key(k.clone()))
            })
            .collect();
        let deliveries = ctx.send(&*producer, &stream, records).await?;
        for (k, d) in keys.iter().flat_map(|k| [k, k]).zip(&deliveries) {
            let first = key_partition
                .entry(k.clone())
                .or_insert_with(|| d.partition.clone());
            assert_eq!(first, &d.partition, "key {k} stays in one partition");
        }
    }
    let numbered = partitions_of(&ctx, &stream).await?;
    if numbered.iter().all(|p| p.index().is_some()) {
        for (k, p) in &key_partition {
            let expected = partition_for_key(k.as_bytes(), 4);
            assert_eq!(
                p.index(),
                Some(expected),
                "key {k} goes where Kafka's default partitioner puts it"
            );
        }
    }
    let used: BTreeSet<_> = key_partition.values().collect();
    assert!(
        used.len() > 1,
        "20 keys spread over more than one of 4 partitions"
    );
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 200, ctx.timing.settle).await?;
    assert_eq!(got.len(), 200);
    for (key, seq) in by_key(&got) {
        let k = String::from_utf8_lossy(&key).into_owned();
        let expected: Vec<String> = (0..10).map(|i| format!("{k}/{i}")).collect();
        assert_eq!(seq, expected, "key {k} in send order");
    }
    Ok(Outcome::Passed)
}

/// A record sent to a chosen partition lands there.
pub async fn explicit_partition_is_honoured(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(3).await?;
    let partitions = partitions_of(&ctx, &stream).await?;
    let producer = ctx.producer().await?;
    let records: Vec<Record> = partitions
        .iter()
        .map(|p| {
            Record::new(format!("to-{p}"))
                .with_key("same-key")
                .to_partition(p.clone())
        })
        .collect();
    let deliveries = ctx.send(&*producer, &stream, records).await?;
    for (p, d) in partitions.iter().zip(&deliveries) {
        assert_eq!(&d.partition, p, "delivered to the chosen partition");
    }
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, partitions.len(), ctx.timing.settle).await?;
    assert_eq!(got.len(), partitions.len(), "one record per partition arrives");
    for r in &got {
        assert_eq!(String::from_utf8_lossy(&r.value), format!("to-{}", r.partition));
    }
    Ok(Outcome::Passed)
}

/// Many keys, several members joining and leaving while records flow: per key, every
/// record arrives, in send order.
pub async fn per_key_order_with_several_members(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(4).await?;
    let group = ctx.fresh_name("g");
    let producer = ctx.producer().await?;
    let keys = 10;
    let per_round = 5;
    let rounds = 6;
    let mut members = Members::new(ctx.timing.poll);
    members.join(ctx.member(&stream, &group).await?);
    for round in 0..rounds {
        let records = (0..per_round)
            .flat_map(|i| {
                (0..keys).map(move |k| {
                    Record::new(format!("k{k}/{}", round * per_round + i)).with_key(format!("k{k}"))
                })
            })
            .collect();
        ctx.send(&*producer, &stream, records).await?;
        members.round().await?;
        match round {
            1 | 2 => members.join(ctx.member(&stream, &group).await?),
            4 => drop(members.close(0).await?),
            _ => {}
        }
        members.round().await?;
    }
    let total = keys * per_round * rounds;
    let deadline = Instant::now() + ctx.timing.settle;
    while members.total() < total && Instant::now() < deadline {
        members.round().await?;
    }
    members.drain(0, Duration::ZERO, ctx.timing.quiet).await?;
    // Per key, in the order the group delivered them (across members, handoffs
    // included): every record, first deliveries in send order. A redelivery repeats
    // an earlier record; it must be explained by a commit that did not succeed.
    let mut first_deliveries: Vec<Received> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &members.delivered {
        if seen.insert((r.partition.clone(), r.offset.clone())) {
            first_deliveries.push(r.clone());
        }
    }
    let seqs = by_key(&first_deliveries);
    assert_eq!(seqs.len(), keys, "every key seen");
    for (key, seq) in seqs {
        let k = String::from_utf8_lossy(&key).into_owned();
        let want: Vec<String> = (0..per_round * rounds).map(|i| format!("{k}/{i}")).collect();
        assert_eq!(seq, want, "key {k}: every record, first delivered in send order");
    }
    ctx.check_duplicates(&members);
    eprintln!(
        "per_key_order: {} deliveries of {total} records",
        members.delivered.len()
    );
    members.close_all().await?;
    Ok(Outcome::Passed)
}
