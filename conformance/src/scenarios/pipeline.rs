//! Records handed over without waiting ([`Producer::enqueue`]): delivered in per-key
//! order, their handles telling where, flushed and closed completely, failing one by
//! one, and bounded by the producer's buffer.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_core::{
    DeliveryHandle, ErrorKind, Offset, PartitionId, Producer, ProducerConfig, Record, Result, StartFrom,
};

use super::by_key;
use crate::harness::Outcome;
use crate::support::{Ctx, drain};

/// The outcome of a hand-over, whether it failed at once or in its handle.
async fn outcome(handed: Result<DeliveryHandle>) -> Result<tributary_core::Delivery> {
    handed?.await
}

/// Records handed over one at a time from one task arrive in per-key order, and each
/// handle resolves to the partition and offset a reader sees the record at.
pub async fn enqueued_records_keep_key_order_and_handles_match_reads(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(4).await?;
    let producer = ctx.producer().await?;
    let mut handles = Vec::new();
    for i in 0..25 {
        for k in 0..20 {
            let value = format!("key-{k}/{i}");
            let record = Record::new(value.clone()).with_key(format!("key-{k}"));
            handles.push((value, producer.enqueue(&stream, record).await?));
        }
    }
    let mut handed: BTreeMap<String, (PartitionId, Offset)> = BTreeMap::new();
    for (value, handle) in handles {
        let delivery = handle.await?;
        handed.insert(value, (delivery.partition, delivery.offset));
    }
    producer.close().await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *reader, 500, ctx.timing.settle).await?;
    assert_eq!(got.len(), 500, "every record handed over is read");
    for r in &got {
        let value = String::from_utf8_lossy(&r.value).into_owned();
        assert_eq!(
            handed.get(&value),
            Some(&(r.partition.clone(), r.offset.clone())),
            "{value}: its handle said where a reader finds it"
        );
    }
    for (key, seq) in by_key(&got) {
        let k = String::from_utf8_lossy(&key).into_owned();
        let expected: Vec<String> = (0..25).map(|i| format!("{k}/{i}")).collect();
        assert_eq!(seq, expected, "{k} in the order handed over");
    }
    Ok(Outcome::Passed)
}

/// `flush` returns once every record handed over before it is resolved, even with a
/// long linger; `close` does the same and then refuses more.
pub async fn flush_and_close_wait_for_enqueued_records(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(2).await?;
    let config = ProducerConfig::default().with_linger(Duration::from_secs(2));
    let producer = ctx.backend.producer(config).await?;
    let mut first = Vec::new();
    for i in 0..50 {
        first.push(producer.enqueue(&stream, Record::new(format!("a{i}"))).await?);
    }
    producer.flush().await?;
    for handle in &mut first {
        let outcome = handle.try_result().expect("flush waited for this record");
        outcome?;
    }
    let mut second = Vec::new();
    for i in 0..10 {
        let record = Record::new(format!("b{i}")).with_key("k");
        second.push(producer.enqueue(&stream, record).await?);
    }
    producer.close().await?;
    for handle in &mut second {
        let outcome = handle.try_result().expect("close waited for this record");
        outcome?;
    }
    let refused = producer
        .enqueue(&stream, Record::new("late"))
        .await
        .expect_err("closed");
    assert_eq!(refused.kind(), ErrorKind::Closed, "{refused}");
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *reader, 60, ctx.timing.settle).await?;
    assert_eq!(got.len(), 60);
    ctx.expect_nothing_before_sentinel(&mut *reader, &stream).await?;
    Ok(Outcome::Passed)
}

/// A record that cannot be sent (too large; to a missing stream) fails on its own: the
/// records handed over around it are delivered.
pub async fn bad_enqueued_record_fails_alone(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    let missing = ctx.fresh_name("missing");
    let before = producer.enqueue(&stream, Record::new("before")).await;
    let oversize = match ctx.caps.max_record_bytes {
        Some(max) => Some(
            producer
                .enqueue(&stream, Record::new(vec![b'x'; max + 1]).with_key("big"))
                .await,
        ),
        None => None,
    };
    let lost = producer.enqueue(&missing, Record::new("nowhere")).await;
    let after = producer.enqueue(&stream, Record::new("after")).await;
    outcome(before).await?;
    if let Some(oversize) = oversize {
        let err = outcome(oversize).await.expect_err("oversize");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    let err = outcome(lost).await.expect_err("missing stream");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    outcome(after).await?;
    producer.close().await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *reader, 2, ctx.timing.settle).await?;
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(values, ["before", "after"], "the good records, nothing else");
    ctx.expect_nothing_before_sentinel(&mut *reader, &stream).await?;
    Ok(Outcome::Passed)
}

/// With a buffer that holds one record, a hand-over returns only once the record
/// before it is resolved: it waits for room, and resumes as records are confirmed,
/// losing none.
pub async fn enqueue_waits_for_buffer_room(ctx: Ctx) -> Result<Outcome> {
    const RECORD: usize = 16 * 1024;
    // Room for one record and what the engines count besides its bytes, not for two.
    const BUFFER: usize = RECORD + 1024;
    let stream = ctx.stream(1).await?;
    let config = ProducerConfig::default()
        .with_buffer_bytes(BUFFER)
        .with_batch_bytes(BUFFER);
    let producer: Box<dyn Producer> = ctx.backend.producer(config).await?;
    let mut pending: Vec<DeliveryHandle> = Vec::new();
    let mut most_pending = 0;
    let mut delivered = 0;
    for i in 0..40 {
        let mut value = vec![b'v'; RECORD];
        value[..8].copy_from_slice(format!("{i:08}").as_bytes());
        pending.push(producer.enqueue(&stream, Record::new(value)).await?);
        let mut still = Vec::with_capacity(pending.len());
        for mut handle in pending {
            match handle.try_result() {
                Some(outcome) => {
                    outcome?;
                    delivered += 1;
                }
                None => still.push(handle),
            }
        }
        pending = still;
        most_pending = most_pending.max(pending.len());
        assert!(
            pending.len() <= 1,
            "record {i} was handed over while {} earlier ones of {RECORD} bytes were unresolved, with a buffer of {BUFFER}",
            pending.len() - 1
        );
    }
    for handle in pending {
        handle.await?;
        delivered += 1;
    }
    assert_eq!(delivered, 40);
    producer.close().await?;
    let mut reader = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *reader, 40, ctx.timing.settle).await?;
    let order: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value[..8]).into_owned())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("{i:08}")).collect();
    assert_eq!(
        order, expected,
        "all of them, in order (most unresolved at once: {most_pending})"
    );
    Ok(Outcome::Passed)
}
