//! Criterion micro-benchmarks of the batch codec: encoding and decoding 1,000 records.

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tributary_core::{Record, Timestamp};
use tributary_native::raw::codec::{decode_header, decode_records, encode_batch};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [100usize, 1024] {
        let records: Vec<Record> = (0..1000)
            .map(|i| Record::new(vec![(i % 251) as u8; size]))
            .collect();
        group.throughput(Throughput::Elements(1000));
        group.bench_function(format!("encode 1000 x {size} B"), |b| {
            let mut buf = BytesMut::with_capacity(1000 * (size + 16));
            b.iter(|| {
                buf.clear();
                encode_batch(&mut buf, 0, &records, Timestamp::from_millis(0))
            });
        });
        let mut buf = BytesMut::new();
        encode_batch(&mut buf, 0, &records, Timestamp::from_millis(0));
        let batch: Bytes = buf.freeze();
        group.bench_function(format!("decode 1000 x {size} B (CRC checked)"), |b| {
            b.iter(|| {
                let h = decode_header(&batch, 1 << 24).expect("valid");
                decode_records(&h, &batch, 0).expect("valid").len()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
