//! One async function per scenario. Each creates its own streams and groups under
//! fresh names, so scenarios run in parallel and runs never collide.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tributary_core::raw::partition_for_key;
use tributary_core::{
    ConsumerConfig, ConsumerExt, ErrorKind, Headers, Offset, PartitionId, PartitionState, ProducerExt,
    Received, Record, Result, StartFrom, StreamSpec, Timestamp,
};

use crate::harness::Outcome;
use crate::support::{Ctx, Members, drain, drain_quiet, texts, values};

fn partition_set(ids: impl IntoIterator<Item = PartitionId>) -> BTreeSet<PartitionId> {
    ids.into_iter().collect()
}

async fn partitions_of(ctx: &Ctx, stream: &str) -> Result<BTreeSet<PartitionId>> {
    let info = ctx.admin().await?.describe_stream(stream).await?;
    Ok(partition_set(info.partitions.into_iter().map(|p| p.id)))
}

/// The records of each key, in the order received, first deliveries only.
fn by_key(records: &[Received]) -> BTreeMap<Bytes, Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<Bytes, Vec<String>> = BTreeMap::new();
    for r in records {
        if seen.insert((r.partition.clone(), r.offset.clone())) {
            let key = r.key.clone().unwrap_or_default();
            out.entry(key)
                .or_default()
                .push(String::from_utf8_lossy(&r.value).into_owned());
        }
    }
    out
}

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

/// Ack A, B, D but not C, E; after a restart the group resumes at C.
pub async fn checkpoint_capture_resumes_at_first_unacked(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent: Vec<String> = ["A", "B", "C", "D", "E"].map(String::from).to_vec();
    ctx.send_values(&stream, Some("k"), &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let got = drain(&mut *member, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&got), sent);
    for i in [3, 0, 1] {
        member.ack(&got[i].partition, &got[i].offset)?;
    }
    member.commit().await?;
    member.close().await?;
    let mut restarted = ctx.member(&stream, &group).await?;
    let resumed = drain(&mut *restarted, 3, ctx.timing.settle).await?;
    assert_eq!(
        texts(&resumed),
        ["C", "D", "E"],
        "resume at the first unacknowledged record"
    );
    restarted.close().await?;
    Ok(Outcome::Passed)
}

/// Acknowledging older records after a rewind never moves the commit backwards.
pub async fn committed_position_never_moves_backwards(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent = values("m", 10);
    ctx.send_values(&stream, None, &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let got = drain(&mut *member, 10, ctx.timing.settle).await?;
    member.ack_all(&got)?;
    member.commit().await?;
    let p = got[0].partition.clone();
    member.seek(&p, StartFrom::Earliest).await?;
    let early = drain(&mut *member, 3, ctx.timing.settle).await?;
    assert_eq!(
        texts(&early),
        sent[..3].to_vec(),
        "the rewind re-reads from the start"
    );
    member.ack_all(&early)?;
    member.commit().await?;
    member.close().await?;
    ctx.send_values(&stream, None, &["after".to_string()]).await?;
    let mut next = ctx.member(&stream, &group).await?;
    let resumed = drain(&mut *next, 1, ctx.timing.settle).await?;
    assert_eq!(texts(&resumed), ["after"], "the commit stayed after all 10");
    next.close().await?;
    Ok(Outcome::Passed)
}

/// A group reads part of a stream, closes, and the next member continues exactly there.
pub async fn resume_after_close_between_batches(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent = values("c", 10);
    ctx.send_values(&stream, None, &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let first = drain(&mut *member, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&first), sent[..5].to_vec());
    member.ack_all(&first)?;
    member.close().await?; // close commits what was acknowledged
    let mut next = ctx.member(&stream, &group).await?;
    let rest = drain(&mut *next, 5, ctx.timing.settle).await?;
    assert_eq!(
        texts(&rest),
        sent[5..].to_vec(),
        "continues after the last acknowledged record"
    );
    next.ack_all(&rest)?;
    let more = values("more", 5);
    ctx.send_values(&stream, None, &more).await?;
    let tail = drain(&mut *next, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&tail), more);
    next.ack_all(&tail)?;
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

/// A durable engine keeps records and group commits across close and reopen.
pub async fn reopen_keeps_records_and_commits(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.durable {
        return ctx.skip("capability `durable` is false");
    }
    let stream = ctx.stream(2).await?;
    let group = ctx.fresh_name("g");
    let sent = values("r", 10);
    ctx.send_values(&stream, Some("k"), &sent).await?;
    if ctx.caps.consumer_groups {
        let mut member = ctx.member(&stream, &group).await?;
        let got = drain(&mut *member, 4, ctx.timing.settle).await?;
        member.ack_all(&got[..4])?;
        member.close().await?;
    }
    let Some(backend) = ctx.reopen().await? else {
        panic!("capability `durable` is true but the harness cannot reopen the engine");
    };
    let reader = backend.consumer(ConsumerConfig::broadcast(&stream)).await?;
    let mut reader = reader;
    assert_eq!(
        texts(&drain(&mut *reader, 10, ctx.timing.settle).await?),
        sent,
        "records survive"
    );
    if ctx.caps.consumer_groups {
        let mut member = backend.consumer(ConsumerConfig::group(&stream, &group)).await?;
        assert_eq!(
            texts(&drain(&mut *member, 6, ctx.timing.settle).await?),
            sent[4..].to_vec(),
            "commits survive"
        );
        member.close().await?;
    }
    Ok(Outcome::Passed)
}
