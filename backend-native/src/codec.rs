//! The on-disk batch format. A batch is a fixed header followed by its records:
//!
//! ```text
//! offset size field
//!  0      4   magic "TRB\x01"
//!  4      4   CRC32C of bytes 8..48 (so the length can be trusted before the body is read)
//!  8      4   body length
//! 12      1   version (1)
//! 13      1   attributes (0)
//! 14      2   reserved (0)
//! 16      8   base offset
//! 24      4   record count
//! 28      4   CRC32C of the body
//! 32      8   first timestamp (ms)
//! 40      8   max timestamp (ms)
//! 48      …   records
//! ```
//!
//! Each record is: varint offset delta, zigzag varint timestamp delta (from the first
//! timestamp), varint key length + 1 (0: no key), key, varint value length, value,
//! varint header count, then per header varint name length, UTF-8 name, varint value
//! length, value. Integers are little-endian. Decoding never trusts a length before
//! checking it against what is there, so a hostile length allocates nothing.

use bytes::{BufMut, Bytes, BytesMut};
use tributary_core::{Headers, Record, Timestamp};

/// Bytes of a batch header.
pub const HEADER_LEN: usize = 48;
const MAGIC: [u8; 4] = *b"TRB\x01";
const VERSION: u8 = 1;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the batch does; `need` bytes make it whole.
    Truncated {
        /// Total bytes the batch needs.
        need: usize,
    },
    /// The bytes do not start with the batch magic.
    BadMagic,
    /// The header checksum does not match.
    HeaderChecksum,
    /// The header is internally inconsistent (version, lengths, counts).
    BadHeader(&'static str),
    /// The body is larger than the configured maximum.
    TooLarge {
        /// The body length the header claims.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The body checksum does not match.
    BodyChecksum,
    /// The body checksum matches but the records do not parse.
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { need } => write!(f, "truncated batch ({need} bytes needed)"),
            Self::BadMagic => f.write_str("no batch magic"),
            Self::HeaderChecksum => f.write_str("header checksum mismatch"),
            Self::BadHeader(why) => write!(f, "bad batch header: {why}"),
            Self::TooLarge { len, max } => write!(f, "batch body of {len} bytes exceeds the limit of {max}"),
            Self::BodyChecksum => f.write_str("body checksum mismatch"),
            Self::Malformed(why) => write!(f, "malformed records: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A checked batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
    /// Bytes of the body.
    pub body_len: u32,
    /// CRC32C of the body.
    pub body_crc: u32,
    /// Timestamp the record timestamps are relative to.
    pub first_timestamp: i64,
    /// The largest record timestamp.
    pub max_timestamp: i64,
}

impl BatchHeader {
    /// Header and body together.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// A record read back from a batch. Key, value and header values are slices of the
/// batch's buffer: no copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Its offset.
    pub offset: u64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// Its headers.
    pub headers: Headers,
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The exact bytes `record` takes in a batch body (at most 20 bytes of offset and
/// timestamp deltas assumed): what batch size limits must count, since many small
/// headers cost more framing than payload.
pub fn encoded_record_len(record: &Record) -> usize {
    let key = record
        .key
        .as_ref()
        .map_or(1, |k| varint_len(k.len() as u64 + 1) + k.len());
    let headers: usize = record
        .headers
        .iter()
        .map(|(n, v)| varint_len(n.len() as u64) + n.len() + varint_len(v.len() as u64) + v.len())
        .sum();
    20 + key
        + varint_len(record.value.len() as u64)
        + record.value.len()
        + varint_len(record.headers.len() as u64)
        + headers
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends one batch holding `records` (offsets from `base_offset`, missing timestamps
/// set to `now`) to `out`, and returns its header.
///
/// # Panics
/// Never for records within the engine's size limits (callers check sizes first); a
/// batch over 4 GiB is impossible because it is capped well below.
pub fn encode_batch(out: &mut BytesMut, base_offset: u64, records: &[Record], now: Timestamp) -> BatchHeader {
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    let first_timestamp = records
        .first()
        .and_then(|r| r.timestamp)
        .unwrap_or(now)
        .as_millis();
    let mut max_timestamp = i64::MIN;
    for (delta, record) in records.iter().enumerate() {
        let ts = record.timestamp.unwrap_or(now).as_millis();
        max_timestamp = max_timestamp.max(ts);
        put_varint(out, delta as u64);
        put_varint(out, zigzag(ts.wrapping_sub(first_timestamp)));
        match &record.key {
            Some(k) => {
                put_varint(out, k.len() as u64 + 1);
                out.put_slice(k);
            }
            None => put_varint(out, 0),
        }
        put_varint(out, record.value.len() as u64);
        out.put_slice(&record.value);
        put_varint(out, record.headers.len() as u64);
        for (name, value) in record.headers.iter() {
            put_varint(out, name.len() as u64);
            out.put_slice(name.as_bytes());
            put_varint(out, value.len() as u64);
            out.put_slice(value);
        }
    }
    if records.is_empty() {
        max_timestamp = first_timestamp;
    }
    let body_len = out.len() - start - HEADER_LEN;
    let header = BatchHeader {
        base_offset,
        record_count: u32::try_from(records.len()).unwrap_or(u32::MAX),
        body_len: u32::try_from(body_len).unwrap_or(u32::MAX),
        body_crc: crc32c::crc32c(&out[start + HEADER_LEN..]),
        first_timestamp,
        max_timestamp,
    };
    write_header(&mut out[start..start + HEADER_LEN], &header);
    header
}

fn write_header(buf: &mut [u8], h: &BatchHeader) {
    buf[0..4].copy_from_slice(&MAGIC);
    buf[8..12].copy_from_slice(&h.body_len.to_le_bytes());
    buf[12] = VERSION;
    buf[13] = 0;
    buf[14..16].copy_from_slice(&[0, 0]);
    buf[16..24].copy_from_slice(&h.base_offset.to_le_bytes());
    buf[24..28].copy_from_slice(&h.record_count.to_le_bytes());
    buf[28..32].copy_from_slice(&h.body_crc.to_le_bytes());
    buf[32..40].copy_from_slice(&h.first_timestamp.to_le_bytes());
    buf[40..48].copy_from_slice(&h.max_timestamp.to_le_bytes());
    let crc = crc32c::crc32c(&buf[8..HEADER_LEN]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads and checks a batch header at the start of `buf`. `max_body` bounds the body
/// length, so a damaged or hostile length is refused before anything is allocated.
///
/// # Errors
/// `Truncated` if `buf` is shorter than a header, else the first check that fails.
pub fn decode_header(buf: &[u8], max_body: usize) -> Result<BatchHeader, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { need: HEADER_LEN });
    }
    if buf[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if le_u32(&buf[4..8]) != crc32c::crc32c(&buf[8..HEADER_LEN]) {
        return Err(DecodeError::HeaderChecksum);
    }
    if buf[12] != VERSION {
        return Err(DecodeError::BadHeader("unknown version"));
    }
    let body_len = le_u32(&buf[8..12]);
    if body_len as usize > max_body {
        return Err(DecodeError::TooLarge {
            len: u64::from(body_len),
            max: max_body,
        });
    }
    let header = BatchHeader {
        base_offset: le_u64(&buf[16..24]),
        record_count: le_u32(&buf[24..28]),
        body_len,
        body_crc: le_u32(&buf[28..32]),
        first_timestamp: le_u64(&buf[32..40]) as i64,
        max_timestamp: le_u64(&buf[40..48]) as i64,
    };
    // Every record takes at least 5 bytes (offset, timestamp, key, value, headers).
    if u64::from(header.record_count) * 5 > u64::from(body_len) || header.record_count == 0 {
        return Err(DecodeError::BadHeader("record count does not fit the body"));
    }
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Err(DecodeError::BadHeader("offsets overflow"));
    }
    Ok(header)
}

/// Checks the body of a batch whose header was decoded, without parsing records.
///
/// # Errors
/// `Truncated` or `BodyChecksum`.
pub fn check_body(header: &BatchHeader, batch: &[u8]) -> Result<(), DecodeError> {
    if batch.len() < header.total_len() {
        return Err(DecodeError::Truncated {
            need: header.total_len(),
        });
    }
    if crc32c::crc32c(&batch[HEADER_LEN..header.total_len()]) != header.body_crc {
        return Err(DecodeError::BodyChecksum);
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::Malformed("varint runs past the body"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed("varint longer than 64 bits"))
    }

    fn bytes(&mut self, len: u64) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Malformed("length too large"))?;
        let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::Malformed("length runs past the body"));
        };
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }
}

/// Decodes the records of `batch` (header and body, as read from disk) whose offset
/// is at least `from`. Verifies the body checksum first.
///
/// # Errors
/// `Truncated`, `BodyChecksum` or `Malformed`.
pub fn decode_records(
    header: &BatchHeader,
    batch: &Bytes,
    from: u64,
) -> Result<Vec<DecodedRecord>, DecodeError> {
    check_body(header, batch)?;
    parse_records(header, batch, from)
}

/// Like [`decode_records`] without the body checksum, for batches that never left
/// this process's memory (the checksum guards what was stored, and is checked on
/// every read from disk). Still bounds-checked: bad bytes give an error, never a panic.
///
/// # Errors
/// `Truncated` or `Malformed`.
pub fn parse_records(
    header: &BatchHeader,
    batch: &Bytes,
    from: u64,
) -> Result<Vec<DecodedRecord>, DecodeError> {
    if batch.len() < header.total_len() {
        return Err(DecodeError::Truncated {
            need: header.total_len(),
        });
    }
    let body = batch.slice(HEADER_LEN..header.total_len());
    let mut r = Reader { buf: &body, pos: 0 };
    let skip = from.saturating_sub(header.base_offset);
    let mut out = Vec::with_capacity((u64::from(header.record_count).saturating_sub(skip)) as usize);
    for i in 0..u64::from(header.record_count) {
        let delta = r.varint()?;
        if delta != i {
            return Err(DecodeError::Malformed("offset deltas are not consecutive"));
        }
        let ts = header.first_timestamp.wrapping_add(unzigzag(r.varint()?));
        let key = match r.varint()? {
            0 => None,
            n => Some(r.bytes(n - 1)?),
        };
        let value_len = r.varint()?;
        let value = r.bytes(value_len)?;
        let count = r.varint()?;
        let mut headers = Headers::new();
        for _ in 0..count {
            let name_len = r.varint()?;
            let name = r.bytes(name_len)?;
            let name =
                std::str::from_utf8(&name).map_err(|_| DecodeError::Malformed("header name is not UTF-8"))?;
            let value_len = r.varint()?;
            headers.push(name.to_owned(), r.bytes(value_len)?);
        }
        if i >= skip {
            out.push(DecodedRecord {
                offset: header.base_offset + i,
                timestamp: Timestamp::from_millis(ts),
                key,
                value,
                headers,
            });
        }
    }
    if r.pos != body.len() {
        return Err(DecodeError::Malformed("bytes left after the last record"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::new("v0").with_key("k0").with_header("h", "x"),
            Record::new(Bytes::new()),
            Record::new(vec![0u8, 255])
                .with_timestamp(Timestamp::from_millis(-5))
                .with_key(Bytes::new()),
        ]
    }

    #[test]
    fn roundtrip_and_skip() {
        let mut buf = BytesMut::new();
        let h = encode_batch(&mut buf, 100, &sample(), Timestamp::from_millis(1000));
        assert_eq!(h.record_count, 3);
        assert_eq!(h.total_len(), buf.len());
        let bytes = buf.freeze();
        assert_eq!(decode_header(&bytes, 1 << 20).unwrap(), h);
        let all = decode_records(&h, &bytes, 0).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].offset, 100);
        assert_eq!(all[0].key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(all[0].headers.get("h").map(|v| &v[..]), Some(&b"x"[..]));
        assert_eq!(all[1].key, None);
        assert_eq!(all[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(all[2].timestamp, Timestamp::from_millis(-5));
        assert_eq!(h.max_timestamp, 1000);
        let tail = decode_records(&h, &bytes, 102).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].offset, 102);
    }

    #[test]
    fn every_damage_is_detected() {
        let mut buf = BytesMut::new();
        let h = encode_batch(&mut buf, 7, &sample(), Timestamp::from_millis(1));
        let good = buf.freeze().to_vec();
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                let bad = Bytes::from(bad);
                let result = decode_header(&bad, 1 << 20).and_then(|hh| decode_records(&hh, &bad, 0));
                assert!(result.is_err(), "flip of bit {bit:#x} at byte {i} went unnoticed");
            }
        }
        assert!(matches!(
            decode_header(&good[..20], 1 << 20),
            Err(DecodeError::Truncated { .. })
        ));
        let cut = Bytes::copy_from_slice(&good[..good.len() - 1]);
        assert!(matches!(
            decode_records(&h, &cut, 0),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn encoded_record_len_bounds_the_real_size() {
        let mut many_headers = Record::new("v");
        for _ in 0..1000 {
            many_headers.headers.push("a", Bytes::new());
        }
        for record in [sample(), vec![many_headers]].concat() {
            let mut buf = BytesMut::new();
            let h = encode_batch(
                &mut buf,
                u64::MAX / 4,
                std::slice::from_ref(&record),
                Timestamp::from_millis(1),
            );
            assert!(
                h.body_len as usize <= encoded_record_len(&record),
                "{} > {}",
                h.body_len,
                encoded_record_len(&record)
            );
        }
    }

    #[test]
    fn hostile_length_is_refused_before_allocating() {
        let mut header = [0u8; HEADER_LEN];
        let h = BatchHeader {
            base_offset: 0,
            record_count: 1,
            body_len: u32::MAX,
            body_crc: 0,
            first_timestamp: 0,
            max_timestamp: 0,
        };
        write_header(&mut header, &h);
        assert_eq!(
            decode_header(&header, 64 << 20),
            Err(DecodeError::TooLarge {
                len: u64::from(u32::MAX),
                max: 64 << 20
            })
        );
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(("[a-zé🦀]{0,6}", prop::collection::vec(any::<u8>(), 0..10)), 0..4),
            prop::option::of(any::<i64>()),
        )
            .prop_map(|(key, value, headers, ts)| {
                let mut r = Record::new(value);
                r.key = key.map(Bytes::from);
                r.headers = headers.into_iter().collect();
                r.timestamp = ts.map(Timestamp::from_millis);
                r
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]

        #[test]
        fn any_records_roundtrip(records in prop::collection::vec(record(), 1..20), base in 0u64..u64::MAX / 2, now in any::<i64>()) {
            let mut buf = BytesMut::new();
            let h = encode_batch(&mut buf, base, &records, Timestamp::from_millis(now));
            let bytes = buf.freeze();
            let back = decode_records(&decode_header(&bytes, usize::MAX).unwrap(), &bytes, 0).unwrap();
            prop_assert_eq!(back.len(), records.len());
            prop_assert_eq!(h.base_offset, base);
            for (i, (r, d)) in records.iter().zip(&back).enumerate() {
                prop_assert_eq!(d.offset, base + i as u64);
                prop_assert_eq!(&d.key, &r.key);
                prop_assert_eq!(&d.value, &r.value);
                prop_assert_eq!(&d.headers, &r.headers);
                prop_assert_eq!(d.timestamp, r.timestamp.unwrap_or(Timestamp::from_millis(now)));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let bytes = Bytes::from(bytes);
            if let Ok(h) = decode_header(&bytes, 1 << 16) {
                let _ = decode_records(&h, &bytes, 0);
            }
        }
    }
}
