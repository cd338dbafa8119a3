//! The batch decoder under arbitrary input. Half the inputs are raw bytes; the other
//! half build a valid batch from the input and then damage it at input-chosen places,
//! so the fuzzer explores past the checksums. Never a panic; an undamaged batch
//! decodes to exactly its records; a damaged one either fails or decodes to a batch
//! that re-encodes to the same records.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tributary_core::{Record, Timestamp};
use tributary_native::raw::codec::{decode_header, decode_records, encode_batch};

fn records_from(data: &[u8]) -> Vec<Record> {
    data.chunks(13)
        .map(|c| {
            let (k, v) = c.split_at(c.len() / 3);
            let mut r = Record::new(Bytes::copy_from_slice(v)).with_timestamp(Timestamp::from_millis(i64::from(c[0]) * 1000));
            if c[0] % 2 == 0 {
                r = r.with_key(Bytes::copy_from_slice(k));
            }
            if c[0] % 3 == 0 {
                r = r.with_header(String::from_utf8_lossy(k).into_owned(), Bytes::copy_from_slice(v));
            }
            r
        })
        .collect()
}

fn check_consistent(bytes: &Bytes) {
    let Ok(header) = decode_header(bytes, 1 << 20) else { return };
    let Ok(records) = decode_records(&header, bytes, 0) else { return };
    assert_eq!(records.len(), header.record_count as usize);
    let again: Vec<Record> = records
        .iter()
        .map(|r| {
            let mut rec = Record::new(r.value.clone()).with_timestamp(r.timestamp);
            rec.key = r.key.clone();
            rec.headers = r.headers.clone();
            rec
        })
        .collect();
    let mut buf = BytesMut::new();
    let h = encode_batch(&mut buf, header.base_offset, &again, Timestamp::from_millis(0));
    let round = decode_records(&h, &buf.freeze(), 0).expect("a re-encoded batch decodes");
    assert_eq!(round, records);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        check_consistent(&Bytes::copy_from_slice(rest));
        return;
    }
    let split = rest.len() * 3 / 4;
    let (body, edits) = rest.split_at(split);
    let records = records_from(body);
    if records.is_empty() {
        return;
    }
    let mut buf = BytesMut::new();
    encode_batch(&mut buf, u64::from(mode) << 20, &records, Timestamp::from_millis(0));
    let mut batch = buf.to_vec();
    if edits.is_empty() {
        let bytes = Bytes::from(batch);
        let h = decode_header(&bytes, 1 << 20).expect("a fresh batch has a valid header");
        let back = decode_records(&h, &bytes, 0).expect("a fresh batch decodes");
        assert_eq!(back.len(), records.len());
        for (r, d) in records.iter().zip(&back) {
            assert_eq!((&d.key, &d.value, &d.headers), (&r.key, &r.value, &r.headers));
        }
        return;
    }
    for pair in edits.chunks(3) {
        let at = usize::from(pair[0]) * 256 + usize::from(*pair.get(1).unwrap_or(&0));
        let len = batch.len().max(1);
        let Some(slot) = batch.get_mut(at % len) else { continue };
        *slot ^= pair.get(2).copied().unwrap_or(1).max(1);
    }
    if edits.len() % 5 == 0 {
        batch.truncate(batch.len() - batch.len() / 3);
    }
    check_consistent(&Bytes::from(batch));
});
