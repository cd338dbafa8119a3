//! Misuse and bad input: missing streams, closed handles, oversized records and invalid
//! names get the right error kind.

use std::time::Duration;

use tributary_core::{
    ConsumerConfig, ErrorKind, Offset, PartitionId, ProducerExt, Record, Result, StartFrom, StreamSpec,
};

use crate::harness::Outcome;
use crate::support::{Ctx, drain, texts};

/// Every operation on a stream that does not exist says NotFound.
pub async fn missing_stream_is_not_found(ctx: Ctx) -> Result<Outcome> {
    let name = ctx.fresh_name("missing");
    let producer = ctx.producer().await?;
    let err = producer
        .send(&name, vec![Record::new("x"), Record::new("y")])
        .await
        .expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::NotFound, "send: {err}");
    assert_eq!(err.unsent.len(), 2, "both records handed back");
    assert!(err.delivered.is_empty());
    let kind = |r: Result<()>| r.expect_err("no stream").kind();
    let admin = ctx.admin().await?;
    assert_eq!(
        admin.describe_stream(&name).await.expect_err("no stream").kind(),
        ErrorKind::NotFound
    );
    assert_eq!(kind(admin.delete_stream(&name).await), ErrorKind::NotFound);
    if ctx.caps.dynamic_partitions {
        assert_eq!(kind(admin.set_partitions(&name, 3).await), ErrorKind::NotFound);
    }
    let consumer = ctx.backend.consumer(ConsumerConfig::broadcast(&name)).await;
    assert_eq!(
        consumer.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound),
        "consumer"
    );
    Ok(Outcome::Passed)
}

/// After close, producers and consumers refuse work with `Closed`.
pub async fn use_after_close_is_closed(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    producer.close().await?;
    assert_eq!(
        producer.flush().await.expect_err("closed").kind(),
        ErrorKind::Closed
    );
    let mut consumer = if ctx.caps.consumer_groups {
        ctx.member(&stream, &ctx.fresh_name("g")).await?
    } else {
        ctx.broadcast(&stream, StartFrom::Earliest).await?
    };
    consumer.close().await?;
    consumer.close().await?; // idempotent
    let p = PartitionId::from_index(0);
    assert_eq!(
        consumer.poll(1, Duration::ZERO).await.expect_err("closed").kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        consumer.commit().await.expect_err("closed").kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        consumer
            .seek(&p, StartFrom::Earliest)
            .await
            .expect_err("closed")
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        consumer.ack(&p, &Offset::new(0)).expect_err("closed").kind(),
        ErrorKind::Closed
    );
    Ok(Outcome::Passed)
}

/// A record above the size limit fails the batch with InvalidInput, sends nothing of
/// it, and loses nothing acknowledged before.
pub async fn oversize_record_is_invalid_input(ctx: Ctx) -> Result<Outcome> {
    let Some(max) = ctx.caps.max_record_bytes else {
        return ctx.skip("the backend declares no record size limit (`max_record_bytes` is None)");
    };
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    producer.send_one(&stream, Record::new("before")).await?;
    let batch = vec![
        Record::new("small"),
        Record::new(vec![b'x'; max + 1]).with_key("big"),
        Record::new("small too"),
    ];
    let err = producer.send(&stream, batch).await.expect_err("oversize");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.error.message().contains(&max.to_string()),
        "the message names the limit: {err}"
    );
    assert_eq!(err.unsent.len(), 3, "the whole batch is handed back");
    producer.send_one(&stream, Record::new("after")).await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *reader, 2, ctx.timing.settle).await?;
    assert_eq!(
        texts(&got),
        ["before", "after"],
        "nothing of the bad batch, nothing lost"
    );
    ctx.expect_nothing_before_sentinel(&mut *reader, &stream).await?;
    Ok(Outcome::Passed)
}

/// Bad stream and group names are refused with InvalidInput naming the problem.
pub async fn invalid_names_are_rejected(ctx: Ctx) -> Result<Outcome> {
    let admin = ctx.admin().await?;
    for bad in [
        "",
        "..",
        "a/b",
        "../escape",
        "white space",
        "ünïcode",
        &"x".repeat(300),
    ] {
        let err = admin
            .create_stream(&StreamSpec::new(bad).with_partitions(1))
            .await
            .expect_err("bad name");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "create {bad:?}: {err}");
        let err = ctx
            .producer()
            .await?
            .send(bad, vec![Record::new("x")])
            .await
            .expect_err("bad name");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "send {bad:?}: {err}");
        assert_eq!(err.unsent.len(), 1);
    }
    assert!(
        !admin.list_streams().await?.iter().any(|s| s.contains('/')),
        "nothing was created"
    );
    if ctx.caps.consumer_groups {
        let stream = ctx.stream(1).await?;
        let err = ctx.member(&stream, "").await.err().expect("empty group");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    Ok(Outcome::Passed)
}
