//! Streams: creating, describing, deleting and resizing them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tributary_core::{ErrorKind, PartitionId, PartitionState, Record, Result, StartFrom, StreamSpec};

use super::partitions_of;
use crate::harness::Outcome;
use crate::support::{Ctx, Members, drain, values};

/// Creating a stream that exists says AlreadyExists and leaves it as it was.
pub async fn create_twice_is_already_exists(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(2).await?;
    ctx.send_values(&stream, Some("k"), &values("keep", 2)).await?;
    let err = ctx
        .admin()
        .await?
        .create_stream(&StreamSpec::new(&stream).with_partitions(1))
        .await
        .expect_err("exists");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(partitions_of(&ctx, &stream).await?.len(), 2, "unchanged");
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    assert_eq!(
        drain(&mut *reader, 2, ctx.timing.settle).await?.len(),
        2,
        "records kept"
    );
    Ok(Outcome::Passed)
}

/// Describe lists the partitions, open, with bounds that match what was written; list
/// names the stream.
pub async fn describe_reports_partitions(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(3).await?;
    let admin = ctx.admin().await?;
    let info = admin.describe_stream(&stream).await?;
    assert_eq!(info.name, stream);
    assert_eq!(info.partitions.len(), 3);
    let ids: Vec<PartitionId> = info.partitions.iter().map(|p| p.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "distinct, ordered ids");
    assert!(
        info.partitions
            .iter()
            .all(|p| p.state == PartitionState::Open && p.parents.is_empty())
    );
    let target = ids[1].clone();
    let producer = ctx.producer().await?;
    let records = (0..5)
        .map(|i| Record::new(format!("d{i}")).to_partition(target.clone()))
        .collect();
    let deliveries = ctx.send(&*producer, &stream, records).await?;
    let info = admin.describe_stream(&stream).await?;
    let part = info
        .partitions
        .iter()
        .find(|p| p.id == target)
        .expect("the target partition");
    if part.id.index().is_some() {
        assert!(
            part.high.is_some() && part.low.is_some(),
            "numbered partitions report their bounds"
        );
    }
    if let Some(high) = &part.high {
        assert!(high > &deliveries[4].offset, "high is past the last record");
    }
    if let Some(low) = &part.low {
        assert!(
            low <= &deliveries[0].offset,
            "low is at or before the first record"
        );
    }
    assert!(admin.list_streams().await?.contains(&stream), "listed");
    Ok(Outcome::Passed)
}

/// A deleted stream is gone with its records; a new one of the same name starts empty.
pub async fn delete_removes_stream_and_records(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    ctx.send_values(&stream, None, &values("old", 3)).await?;
    let admin = ctx.admin().await?;
    admin.delete_stream(&stream).await?;
    assert!(!admin.list_streams().await?.contains(&stream), "not listed");
    assert_eq!(
        admin.describe_stream(&stream).await.expect_err("gone").kind(),
        ErrorKind::NotFound
    );
    // Engines may finish a deletion in the background: retry the create meanwhile.
    let deadline = Instant::now() + ctx.timing.settle;
    loop {
        match admin
            .create_stream(&StreamSpec::new(&stream).with_partitions(1))
            .await
        {
            Err(e) if e.kind() == ErrorKind::AlreadyExists && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other?,
        }
    }
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    // The new stream is empty: the first record is one sent now.
    ctx.expect_nothing_before_sentinel(&mut *reader, &stream).await?;
    Ok(Outcome::Passed)
}

/// Raising the partition count reaches running readers and group members.
pub async fn partition_count_change_is_picked_up(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.dynamic_partitions {
        return ctx.skip("capability `dynamic_partitions` is false");
    }
    let stream = ctx.stream(2).await?;
    let before = partitions_of(&ctx, &stream).await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Latest).await?;
    let mut members = Members::new(ctx.timing.poll);
    if ctx.caps.consumer_groups {
        members.join(ctx.member(&stream, &ctx.fresh_name("g")).await?);
        assert!(members.settle(&before, ctx.timing.settle).await?);
    }
    ctx.admin().await?.set_partitions(&stream, 4).await?;
    let info = ctx.admin().await?.describe_stream(&stream).await?;
    let open: Vec<PartitionId> = info.open_partitions().map(|p| p.id.clone()).collect();
    assert_eq!(open.len(), 4, "four open partitions");
    let new: Vec<PartitionId> = open.iter().filter(|p| !before.contains(p)).cloned().collect();
    assert!(!new.is_empty(), "new partitions exist");
    let producer = ctx.producer().await?;
    let records: Vec<Record> = open
        .iter()
        .map(|p| Record::new(format!("to-{p}")).to_partition(p.clone()))
        .collect();
    // A client may learn of new partitions a little later: retry what it refuses.
    let deadline = Instant::now() + ctx.timing.settle;
    let mut pending = records;
    while !pending.is_empty() {
        match producer.send(&stream, pending).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                pending = e.unsent;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.error),
        }
    }
    let got = drain(&mut *reader, open.len(), ctx.timing.settle).await?;
    let seen: BTreeSet<PartitionId> = got.iter().map(|r| r.partition.clone()).collect();
    for p in &new {
        assert!(seen.contains(p), "the running reader reads new partition {p}");
    }
    if ctx.caps.consumer_groups {
        members
            .drain(open.len(), ctx.timing.settle, ctx.timing.quiet)
            .await?;
        let seen: BTreeSet<PartitionId> = members.received[0].iter().map(|r| r.partition.clone()).collect();
        for p in &new {
            assert!(seen.contains(p), "the running member reads new partition {p}");
        }
        ctx.check_duplicates(&members);
        members.close_all().await?;
    }
    Ok(Outcome::Passed)
}
