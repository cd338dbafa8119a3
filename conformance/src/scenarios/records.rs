//! Records go in and come out as they were sent: payloads, headers, timestamps,
//! deliveries, isolation between streams, and what a closed producer keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tributary_core::{ErrorKind, Headers, Offset, ProducerExt, Record, Result, StartFrom, Timestamp};

use crate::harness::Outcome;
use crate::support::{Ctx, drain, drain_quiet, texts, values};

/// A record is sent and read back with key, value, headers, partition and offset intact.
pub async fn send_and_receive_roundtrip(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    let mut record = Record::new("hello").with_key("k1");
    if ctx.caps.headers {
        record = record.with_header("content-type", "text/plain");
    }
    let delivery = producer.send_one(&stream, record).await?;
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 1, ctx.timing.settle).await?;
    assert_eq!(got.len(), 1, "the record arrives");
    let r = &got[0];
    assert_eq!(&*r.stream, stream.as_str());
    assert_eq!(r.value, "hello");
    assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(
        r.partition, delivery.partition,
        "read from the partition the delivery named"
    );
    assert_eq!(r.offset, delivery.offset, "read at the offset the delivery named");
    if ctx.caps.headers {
        assert_eq!(
            r.headers.get("content-type").map(|v| &v[..]),
            Some(&b"text/plain"[..])
        );
    }
    consumer.close().await?;
    Ok(Outcome::Passed)
}

/// Empty values, every byte value, empty keys and large values survive unchanged.
pub async fn binary_and_empty_payloads(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..64 * 1024).map(|_| fastrand::u8(..)).collect();
    let records = vec![
        Record::new(Bytes::new()),
        Record::new(all_bytes.clone()).with_key(vec![0u8, 255, 10, 13]),
        Record::new(large.clone()).with_key("big"),
        Record::new("\u{0}\u{1}not text\u{ff}").with_key("x"),
    ];
    let expected: Vec<Bytes> = records.iter().map(|r| r.value.clone()).collect();
    let producer = ctx.producer().await?;
    ctx.send(&*producer, &stream, records).await?;
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 4, ctx.timing.settle).await?;
    let got_values: Vec<Bytes> = got.iter().map(|r| r.value.clone()).collect();
    assert_eq!(got_values, expected, "payloads byte for byte, in order");
    assert_eq!(got[1].key.as_deref(), Some(&[0u8, 255, 10, 13][..]));
    assert!(got[0].key.is_none(), "no key stays no key");
    Ok(Outcome::Passed)
}

/// Typed values sent as JSON come back as the same values.
pub async fn json_values_roundtrip(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    let order = BTreeMap::from([("item", "pizza"), ("size", "large")]);
    producer.send_json(&stream, Some("customer-7"), &order).await?;
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 1, ctx.timing.settle).await?;
    assert_eq!(got.len(), 1);
    let back: BTreeMap<String, String> = got[0].json()?;
    assert_eq!(back.get("item").map(String::as_str), Some("pizza"));
    let wrong = got[0].json::<Vec<u32>>().expect_err("not a list");
    assert_eq!(wrong.kind(), ErrorKind::InvalidInput);
    Ok(Outcome::Passed)
}

/// Header names and values in odd Unicode and raw bytes, repeated names, order kept.
pub async fn headers_roundtrip_with_odd_unicode(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.headers {
        return ctx.skip("capability `headers` is false");
    }
    let stream = ctx.stream(1).await?;
    let headers: Headers = [
        ("ключ", Bytes::from_static("значение".as_bytes())),
        ("🦀 crab", Bytes::from_static("ü\u{301}\u{200d}".as_bytes())),
        ("dup", Bytes::from_static(b"first")),
        ("raw", Bytes::from_static(&[0xff, 0x00, 0xfe])),
        ("dup", Bytes::from_static(b"second")),
        ("empty", Bytes::new()),
    ]
    .into_iter()
    .collect();
    let mut record = Record::new("v");
    record.headers = headers.clone();
    ctx.producer().await?.send_one(&stream, record).await?;
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 1, ctx.timing.settle).await?;
    assert_eq!(got[0].headers, headers, "every header, in order, duplicates kept");
    assert_eq!(got[0].headers.get("dup").map(|v| &v[..]), Some(&b"second"[..]));
    Ok(Outcome::Passed)
}

/// Deliveries and reads carry timestamps; given event times are kept where supported.
pub async fn timestamps_are_kept(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    let before = Timestamp::now().saturating_sub(Duration::from_secs(60));
    let event = Timestamp::now().saturating_sub(Duration::from_secs(3600));
    let deliveries = ctx
        .send(
            &*producer,
            &stream,
            vec![Record::new("now"), Record::new("past").with_timestamp(event)],
        )
        .await?;
    let after = Timestamp::now().saturating_add(Duration::from_secs(60));
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 2, ctx.timing.settle).await?;
    let ts = got[0].timestamp.expect("records carry a timestamp");
    assert!(before <= ts && ts <= after, "append time {ts:?} is about now");
    if let Some(d) = deliveries[0].timestamp {
        assert!(before <= d && d <= after, "delivery time {d:?} is about now");
    }
    if ctx.caps.event_timestamps {
        assert_eq!(got[1].timestamp, Some(event), "the given event time is kept");
    }
    Ok(Outcome::Passed)
}

/// A batch gets one delivery per record, offsets increase, and reads match deliveries.
pub async fn batch_deliveries_match_reads(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let sent = values("r", 50);
    let deliveries = ctx.send_values(&stream, None, &sent).await?;
    let partitions: BTreeSet<_> = deliveries.iter().map(|d| d.partition.clone()).collect();
    assert_eq!(partitions.len(), 1, "one partition");
    assert!(
        deliveries.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets increase"
    );
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, 50, ctx.timing.settle).await?;
    assert_eq!(texts(&got), sent, "read in send order");
    let read_offsets: Vec<Offset> = got.iter().map(|r| r.offset.clone()).collect();
    let sent_offsets: Vec<Offset> = deliveries.iter().map(|d| d.offset.clone()).collect();
    assert_eq!(read_offsets, sent_offsets);
    assert!(
        drain_quiet(&mut *consumer, ctx.timing.quiet).await?.is_empty(),
        "nothing extra"
    );
    Ok(Outcome::Passed)
}

/// Records of one stream never show up in another.
pub async fn streams_are_isolated(ctx: Ctx) -> Result<Outcome> {
    let one = ctx.stream(1).await?;
    let two = ctx.stream(1).await?;
    ctx.send_values(&one, None, &values("one", 3)).await?;
    ctx.send_values(&two, None, &values("two", 4)).await?;
    let mut c1 = ctx.broadcast(&one, StartFrom::Earliest).await?;
    let mut c2 = ctx.broadcast(&two, StartFrom::Earliest).await?;
    assert_eq!(
        texts(&drain(&mut *c1, 3, ctx.timing.settle).await?),
        values("one", 3)
    );
    ctx.expect_nothing_before_sentinel(&mut *c1, &one).await?;
    assert_eq!(
        texts(&drain(&mut *c2, 4, ctx.timing.settle).await?),
        values("two", 4)
    );
    ctx.expect_nothing_before_sentinel(&mut *c2, &two).await?;
    Ok(Outcome::Passed)
}

/// Closing a producer keeps what it had acknowledged; later sends get `Closed` and
/// their records back.
pub async fn producer_close_keeps_acknowledged_records(ctx: Ctx) -> Result<Outcome> {
    let stream = ctx.stream(1).await?;
    let producer = ctx.producer().await?;
    let sent = values("p", 10);
    for v in &sent {
        producer.send_one(&stream, Record::new(v.clone())).await?;
    }
    producer.close().await?;
    producer.close().await?; // idempotent
    let err = producer
        .send(&stream, vec![Record::new("late")])
        .await
        .expect_err("send after close");
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(err.unsent.len(), 1, "the refused record is handed back");
    let mut consumer = ctx.broadcast(&stream, StartFrom::Earliest).await?;
    let got = drain(&mut *consumer, sent.len(), ctx.timing.settle).await?;
    assert_eq!(texts(&got), sent, "every acknowledged record");
    ctx.expect_nothing_before_sentinel(&mut *consumer, &stream)
        .await?;
    Ok(Outcome::Passed)
}
