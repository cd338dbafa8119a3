//! Consumer groups and broadcast readers: who reads what, handoffs when members join,
//! leave or vanish, and what a consumer may acknowledge or commit.

use std::collections::BTreeSet;
use std::time::Duration;

use tributary_core::{
    ConsumerExt, ErrorKind, Offset, PartitionId, ProducerExt, Received, Record, Result, StartFrom,
};

use super::{partition_set, partitions_of};
use crate::harness::Outcome;
use crate::support::{Ctx, Members, drain, texts, values};

/// Two independent readers each see every record of every partition.
pub async fn broadcast_readers_each_see_everything(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(2).await?;
    let sent = values("b", 20);
    let producer = ctx.producer().await?;
    for (i, v) in sent.iter().enumerate() {
        producer
            .send_one(&stream, Record::new(v.clone()).with_key(format!("k{i}")))
            .await?;
    }
    for _ in 0..2 {
        let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
        assert_eq!(
            partition_set(reader.assignment()),
            partitions_of(&ctx, &stream).await?,
            "every partition"
        );
        let mut got = texts(&drain(&mut *reader, 20, ctx.timing.settle).await?);
        got.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(got, want, "each reader sees all 20");
        reader.close().await?;
    }
    Ok(Outcome::Passed)
}

/// Two groups each see every record.
pub async fn groups_each_see_everything(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(2).await?;
    let sent = values("g", 20);
    let deliveries = ctx.send_values(&stream, Some("k"), &sent).await?;
    assert_eq!(deliveries.len(), 20);
    for g in ["a", "b"] {
        let group = ctx.fresh_name(g);
        let mut member = ctx.member(&stream, &group).await?;
        let got = drain(&mut *member, 20, ctx.timing.settle).await?;
        assert_eq!(texts(&got), sent, "group {g} sees all 20 in order");
        member.ack_all(&got)?;
        member.close().await?;
    }
    Ok(Outcome::Passed)
}

/// Members of one group split the partitions evenly and each reads only its own.
pub async fn group_members_split_partitions(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(4).await?;
    let all = partitions_of(&ctx, &stream).await?;
    let group = ctx.fresh_name("g");
    let mut members = Members::new(ctx.timing.poll);
    members.join(ctx.member(&stream, &group).await?);
    members.join(ctx.member(&stream, &group).await?);
    assert!(
        members.settle(&all, ctx.timing.settle).await?,
        "two members settle at 2 + 2 partitions"
    );
    let owned: Vec<BTreeSet<PartitionId>> = members
        .consumers
        .iter()
        .map(|c| partition_set(c.assignment()))
        .collect();
    let producer = ctx.producer().await?;
    let records = (0..40)
        .map(|i| Record::new(format!("v{i}")).with_key(format!("k{i}")))
        .collect();
    ctx.send(&*producer, &stream, records).await?;
    members.drain(40, ctx.timing.settle, ctx.timing.quiet).await?;
    assert_eq!(members.total(), 40, "every record");
    assert_eq!(
        members.duplicates(),
        0,
        "every record once: no partition changed hands"
    );
    for (i, received) in members.received.iter().enumerate() {
        assert!(!received.is_empty(), "member {i} got records");
        for r in received {
            assert!(
                owned[i].contains(&r.partition),
                "member {i} read only its partitions"
            );
        }
    }
    ctx.check_duplicates(&members);
    members.close_all().await?;
    Ok(Outcome::Passed)
}

/// A member joining takes over partitions while records flow; nothing is lost or
/// read twice (every member commits what it processed, so handoffs redeliver nothing).
pub async fn member_joining_takes_partitions_nothing_lost(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(4).await?;
    let all = partitions_of(&ctx, &stream).await?;
    let group = ctx.fresh_name("g");
    let producer = ctx.producer().await?;
    let batch = |from: usize| {
        (from..from + 20)
            .map(|i| Record::new(format!("v{i}")).with_key(format!("k{i}")))
            .collect()
    };
    ctx.send(&*producer, &stream, batch(0)).await?;
    let mut members = Members::new(ctx.timing.poll);
    members.join(ctx.member(&stream, &group).await?);
    members.drain(20, ctx.timing.settle, ctx.timing.quiet).await?;
    assert_eq!(members.total(), 20);
    members.join(ctx.member(&stream, &group).await?);
    // Sent while the partitions change hands.
    ctx.send(&*producer, &stream, batch(20)).await?;
    assert!(
        members.settle(&all, ctx.timing.settle).await?,
        "the newcomer gets its share"
    );
    assert!(!members.consumers[1].assignment().is_empty());
    ctx.send(&*producer, &stream, batch(40)).await?;
    members.drain(60, ctx.timing.settle, ctx.timing.quiet).await?;
    let got: BTreeSet<String> = members.received.iter().flat_map(|r| texts(r)).collect();
    let want: BTreeSet<String> = (0..60).map(|i| format!("v{i}")).collect();
    assert_eq!(got, want, "all 60 arrive");
    eprintln!(
        "member_joining: {} redelivered during handoffs (each after a commit that failed)",
        members.duplicates()
    );
    ctx.check_duplicates(&members);
    members.close_all().await?;
    Ok(Outcome::Passed)
}

/// Records acknowledged but not yet committed are committed when their partition is
/// revoked, so the member taking it over does not read them again.
pub async fn revoked_partitions_commit_acknowledged_records(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(4).await?;
    let all = partitions_of(&ctx, &stream).await?;
    let group = ctx.fresh_name("g");
    let records = (0..40)
        .map(|i| Record::new(format!("v{i}")).with_key(format!("k{i}")))
        .collect();
    ctx.send(&*ctx.producer().await?, &stream, records).await?;
    let mut members = Members::without_commits(ctx.timing.poll);
    members.join(ctx.member(&stream, &group).await?);
    members.drain(40, ctx.timing.settle, ctx.timing.quiet).await?;
    assert_eq!(
        members.total(),
        40,
        "the first member read and acknowledged everything"
    );
    members.join(ctx.member(&stream, &group).await?);
    assert!(members.settle(&all, ctx.timing.settle).await?);
    members.drain(40, Duration::ZERO, ctx.timing.quiet).await?;
    assert!(
        members.received[1].is_empty(),
        "the newcomer re-read {} acknowledged records",
        members.received[1].len()
    );
    ctx.check_duplicates(&members);
    members.close_all().await?;
    let mut after = ctx.member(&stream, &group).await?;
    // Close committed the rest: a new member's first record is one sent afterwards.
    ctx.expect_nothing_before_sentinel(&mut *after, &stream).await?;
    after.close().await?;
    Ok(Outcome::Passed)
}

/// A member leaving hands its partitions to the others.
pub async fn member_leaving_hands_over_partitions(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(4).await?;
    let all = partitions_of(&ctx, &stream).await?;
    let group = ctx.fresh_name("g");
    let mut members = Members::new(ctx.timing.poll);
    members.join(ctx.member(&stream, &group).await?);
    members.join(ctx.member(&stream, &group).await?);
    assert!(members.settle(&all, ctx.timing.settle).await?);
    members.close(1).await?;
    assert!(
        members.settle(&all, ctx.timing.settle).await?,
        "the remaining member takes all partitions"
    );
    let producer = ctx.producer().await?;
    let records = (0..20)
        .map(|i| Record::new(format!("v{i}")).with_key(format!("k{i}")))
        .collect();
    ctx.send(&*producer, &stream, records).await?;
    members.drain(20, ctx.timing.settle, ctx.timing.quiet).await?;
    assert_eq!(members.total(), 20, "the remaining member reads every partition");
    ctx.check_duplicates(&members);
    members.close_all().await?;
    Ok(Outcome::Passed)
}

/// A member dropped without committing: its unacknowledged records go to the next one.
pub async fn dropped_member_uncommitted_records_redelivered(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent = values("d", 10);
    ctx.send_values(&stream, None, &sent).await?;
    let mut first = ctx.member(&stream, &group).await?;
    let got = drain(&mut *first, 10, ctx.timing.settle).await?;
    assert_eq!(got.len(), 10);
    first.ack_all(&got[..5])?;
    first.commit().await?;
    drop(first); // a crash: records 5..10 were read but never acknowledged
    let mut next = ctx.member(&stream, &group).await?;
    let again = drain(&mut *next, 5, ctx.timing.settle + ctx.timing.failover).await?;
    assert_eq!(
        texts(&again),
        sent[5..].to_vec(),
        "exactly the unacknowledged records"
    );
    next.close().await?;
    Ok(Outcome::Passed)
}

/// Many consumers closed at once all close cleanly; the group still works after.
pub async fn concurrent_close_of_many_consumers(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(2).await?;
    let group = ctx.fresh_name("g");
    let mut consumers = Vec::new();
    for i in 0..8 {
        consumers.push(if ctx.caps.consumer_groups && i % 2 == 0 {
            ctx.member(&stream, &group).await?
        } else {
            ctx.broadcast(&stream, StartFrom::Earliest).await?
        });
    }
    let closes = consumers.into_iter().map(|mut c| async move { c.close().await });
    for result in futures::future::join_all(closes).await {
        result?;
    }
    ctx.send_values(&stream, Some("k"), &values("x", 3)).await?;
    let mut after = if ctx.caps.consumer_groups {
        ctx.member(&stream, &group).await?
    } else {
        ctx.broadcast(&stream, StartFrom::Earliest).await?
    };
    assert_eq!(drain(&mut *after, 3, ctx.timing.settle).await?.len(), 3);
    after.close().await?;
    Ok(Outcome::Passed)
}

/// Acks of a partition not assigned, or of an offset not delivered, are refused and
/// change nothing.
pub async fn ack_and_commit_of_unassigned_partition_refused(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent = values("u", 4);
    ctx.send_values(&stream, None, &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let got = drain(&mut *member, 4, ctx.timing.settle).await?;
    let foreign = PartitionId::new("999999");
    let err = member.ack(&foreign, &got[0].offset).expect_err("not assigned");
    assert_eq!(err.kind(), ErrorKind::NotAssigned, "{err}");
    let never = deliveries_beyond(&got);
    let err = member.ack(&got[0].partition, &never).expect_err("not delivered");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    member.ack_all(&got[..2])?;
    member.commit().await?;
    member.close().await?;
    let mut next = ctx.member(&stream, &group).await?;
    let rest = drain(&mut *next, 2, ctx.timing.settle).await?;
    assert_eq!(
        texts(&rest),
        sent[2..].to_vec(),
        "the refused acks changed nothing"
    );
    next.close().await?;
    Ok(Outcome::Passed)
}

/// An offset far beyond anything delivered.
fn deliveries_beyond(_got: &[Received]) -> Offset {
    "9".repeat(60).parse().expect("a valid offset")
}

/// A broadcast reader has no group: ack and commit say Unsupported.
pub async fn broadcast_consumer_cannot_commit(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let deliveries = ctx.send_values(&stream, None, &values("b", 1)).await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *reader, 1, ctx.timing.settle).await?;
    assert_eq!(got[0].offset, deliveries[0].offset);
    let err = reader
        .ack(&got[0].partition, &got[0].offset)
        .expect_err("no group");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert_eq!(
        reader.commit().await.expect_err("no group").kind(),
        ErrorKind::Unsupported
    );
    Ok(Outcome::Passed)
}
