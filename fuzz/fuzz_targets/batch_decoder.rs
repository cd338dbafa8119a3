//! Arbitrary bytes through the batch decoder: never a panic, never an allocation
//! beyond the body limit, and whatever decodes re-encodes to the same records.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tributary_core::{Record, Timestamp};
use tributary_native::codec::{decode_header, decode_records, encode_batch};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let Ok(header) = decode_header(&bytes, 1 << 20) else { return };
    let Ok(records) = decode_records(&header, &bytes, 0) else { return };
    assert_eq!(records.len(), header.record_count as usize);
    // A batch that decodes is a real batch: encoding its records again gives records
    // that decode the same.
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
    let round = decode_records(&h, &buf.freeze(), 0).expect("re-encoded batch decodes");
    assert_eq!(round, records);
});
