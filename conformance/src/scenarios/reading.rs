//! Where a consumer starts and how it polls: earliest, latest, offsets, timestamps,
//! seeks, timeouts, cancellation and the stream adapter.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tributary_core::{ConsumerExt, ErrorKind, PartitionId, Received, Record, Result, StartFrom, Timestamp};

use crate::harness::Outcome;
use crate::support::{Ctx, drain, texts, values};

/// Earliest reads what is there; Latest only what comes after the reader was created.
pub async fn start_earliest_and_latest(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(2).await?;
    ctx.send_values(&stream, Some("k"), &values("old", 5)).await?;
    let mut earliest = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let mut latest = ctx.broadcast(&stream, StartFrom::Latest).await?;
    assert_eq!(drain(&mut *earliest, 5, ctx.timing.settle).await?.len(), 5);
    // Latest is checked below: the first record it reads is the one sent next.
    ctx.send_values(&stream, Some("k"), &["new".to_string()]).await?;
    let got = drain(&mut *latest, 1, ctx.timing.settle).await?;
    assert_eq!(texts(&got), ["new"], "latest skips what was there before it");
    assert_eq!(
        texts(&drain(&mut *earliest, 1, ctx.timing.settle).await?),
        ["new"]
    );
    Ok(Outcome::Passed)
}

/// `At(o)` starts at the record at `o`; `After(o)` at the one after it.
pub async fn start_at_and_after_offset(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let sent = values("o", 10);
    let deliveries = ctx.send_values(&stream, None, &sent).await?;
    let mark = deliveries[4].offset.clone();
    let mut at = ctx.broadcast(&stream, StartFrom::At(mark.clone())).await?;
    let got = drain(&mut *at, 6, ctx.timing.settle).await?;
    assert_eq!(
        texts(&got),
        sent[4..].to_vec(),
        "At includes the record at the offset"
    );
    let mut after = ctx.broadcast(&stream, StartFrom::After(mark)).await?;
    let got = drain(&mut *after, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&got), sent[5..].to_vec(), "After starts past it");
    Ok(Outcome::Passed)
}

/// `Timestamp(t)` starts at the first record stamped at or after `t`.
pub async fn start_from_timestamp(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.seek_to_timestamp {
        return ctx.skip("capability `seek_to_timestamp` is false");
    }
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    let mark = if ctx.caps.event_timestamps {
        let base = Timestamp::now().saturating_sub(Duration::from_secs(3600));
        let records = (0..6)
            .map(|i| {
                Record::new(format!("t{i}")).with_timestamp(base.saturating_add(Duration::from_secs(i * 10)))
            })
            .collect();
        ctx.send(&*producer, &stream, records).await?;
        base.saturating_add(Duration::from_secs(25))
    } else {
        // Append times only: a pause separates the halves around the mark.
        ctx.send(
            &*producer,
            &stream,
            (0..3).map(|i| Record::new(format!("t{i}"))).collect(),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mark = Timestamp::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ctx.send(
            &*producer,
            &stream,
            (3..6).map(|i| Record::new(format!("t{i}"))).collect(),
        )
        .await?;
        mark
    };
    let mut reader = ctx.broadcast(&stream, StartFrom::Timestamp(mark)).await?;
    let got = drain(&mut *reader, 3, ctx.timing.settle).await?;
    assert_eq!(texts(&got), ["t3", "t4", "t5"]);
    let future = Timestamp::now().saturating_add(Duration::from_secs(3600));
    let mut none = ctx.broadcast(&stream, StartFrom::Timestamp(future)).await?;
    // A future time starts at the end.
    ctx.expect_nothing_before_sentinel(&mut *none, &stream).await?;
    Ok(Outcome::Passed)
}

/// Seeking moves a partition's cursor back, forward and to the end.
pub async fn seek_rewinds_and_skips(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let sent = values("s", 10);
    let deliveries = ctx.send_values(&stream, None, &sent).await?;
    let p = deliveries[0].partition.clone();
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    assert_eq!(drain(&mut *reader, 10, ctx.timing.settle).await?.len(), 10);
    reader
        .seek(&p, StartFrom::At(deliveries[0].offset.clone()))
        .await?;
    assert_eq!(
        texts(&drain(&mut *reader, 10, ctx.timing.settle).await?),
        sent,
        "rewound"
    );
    reader
        .seek(&p, StartFrom::After(deliveries[7].offset.clone()))
        .await?;
    assert_eq!(
        texts(&drain(&mut *reader, 2, ctx.timing.settle).await?),
        sent[8..].to_vec(),
        "skipped"
    );
    reader.seek(&p, StartFrom::Earliest).await?;
    reader.seek(&p, StartFrom::Latest).await?;
    ctx.expect_nothing_before_sentinel(&mut *reader, &stream).await?;
    let missing = PartitionId::new("999999");
    let err = reader
        .seek(&missing, StartFrom::Earliest)
        .await
        .expect_err("not assigned");
    assert_eq!(err.kind(), ErrorKind::NotAssigned);
    Ok(Outcome::Passed)
}

/// A poll with nothing to read returns an empty batch after about its timeout.
pub async fn poll_timeout_returns_empty(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let got = reader.poll(10, wait).await?;
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(
        took + Duration::from_millis(50) >= wait,
        "waited about the timeout ({took:?})"
    );
    assert!(
        took < wait + ctx.timing.settle,
        "returned after the timeout ({took:?})"
    );
    assert!(
        reader.poll(0, Duration::ZERO).await?.is_empty(),
        "max 0 returns nothing"
    );
    Ok(Outcome::Passed)
}

/// Dropping a poll in flight loses no record: later polls return every record once.
pub async fn poll_is_cancel_safe(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    // Cancelled while waiting on an empty stream.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        reader.poll(10, Duration::from_secs(30)),
    )
    .await;
    assert!(cancelled.is_err(), "the poll was still waiting");
    let sent = values("c", 20);
    ctx.send_values(&stream, None, &sent).await?;
    // Cancelled at random points while records are there.
    let mut got = Vec::new();
    let deadline = Instant::now() + ctx.timing.settle;
    while got.len() < sent.len() && Instant::now() < deadline {
        if fastrand::bool() {
            if let Some(batch) = reader.poll(3, Duration::from_millis(200)).now_or_never() {
                got.extend(batch?);
            }
        } else {
            got.extend(reader.poll(3, Duration::from_millis(200)).await?);
        }
    }
    assert_eq!(
        texts(&got),
        sent,
        "every record once, in order, despite cancelled polls"
    );
    Ok(Outcome::Passed)
}

/// `into_stream` turns a reader into a `futures::Stream` of records.
pub async fn into_stream_yields_records(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let sent = values("st", 7);
    ctx.send_values(&stream, None, &sent).await?;
    let reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let records = reader.into_stream(3).take(7).collect::<Vec<_>>();
    let records = tokio::time::timeout(ctx.timing.settle, records)
        .await
        .expect("the stream yields 7 records in time");
    let records: Vec<Received> = records.into_iter().collect::<Result<_>>()?;
    assert_eq!(texts(&records), sent);
    Ok(Outcome::Passed)
}
