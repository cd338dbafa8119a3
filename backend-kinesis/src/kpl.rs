//! De-aggregation of KPL (Kinesis Producer Library) records.
//!
//! KPL producers pack many user records into one Kinesis record to beat the per-record
//! limits; consumers must split them again or users would see protobuf blobs. The format
//! (amazon-kinesis-producer's `aggregation-format.md`): magic `f3 89 9a c2`, a protobuf
//! `AggregatedRecord`, then the MD5 digest of the protobuf bytes.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// Marks data as a KPL aggregate; anything else is an ordinary record.
const MAGIC: [u8; 4] = [0xf3, 0x89, 0x9a, 0xc2];

/// The trailing MD5 digest is what tells an aggregate from data that merely starts with the magic.
const DIGEST_LEN: usize = 16;

/// One user record from a KPL aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserRecord {
    /// Looked up in the aggregate's partition-key table.
    pub(crate) partition_key: String,
    /// Looked up in the aggregate's explicit-hash-key table; absent when the producer set none.
    pub(crate) explicit_hash_key: Option<String>,
    /// Shares the Kinesis record's buffer.
    pub(crate) data: Bytes,
}

/// What a Kinesis record's data holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Deaggregated {
    /// Not a KPL aggregate: deliver the record as it is.
    Plain,
    /// The user records of an aggregate, in order (sub-sequence number = index).
    Aggregate(Vec<UserRecord>),
}

/// `AggregatedRecord` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    /// Shared so repeated keys are stored once.
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    /// Shared so repeated keys are stored once.
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    /// The user records, in sub-sequence order.
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

/// `Record` of the KPL's `messages.proto`. Its `required` fields are declared optional here
/// because prost does not enforce presence: a missing index must not silently read as 0.
#[derive(Clone, PartialEq, Message)]
struct Record {
    /// Required: index into `partition_key_table`.
    #[prost(uint64, optional, tag = "1")]
    partition_key_index: Option<u64>,
    /// Index into `explicit_hash_key_table`.
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    /// Required; `Bytes` so decoding from a `Bytes` body slices instead of copying.
    #[prost(bytes = "bytes", optional, tag = "3")]
    data: Option<Bytes>,
    /// Carried by the format but not surfaced; decoded so malformed tags are rejected.
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

/// `Tag` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
struct Tag {
    /// Tag name.
    #[prost(string, required, tag = "1")]
    key: String,
    /// Tag value.
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// Splits a KPL aggregate. Data that lacks the magic, is too short, or whose MD5 does not
/// match is [`Deaggregated::Plain`] (as in the KCL), since producers may legitimately send
/// such bytes. Err when the digest matches but the protobuf is invalid or a record's key
/// index is out of range: that is a broken producer, which the caller should surface rather
/// than guess at (the KCL passes such protobuf through raw, and logs and drops bad indices).
pub(crate) fn deaggregate(data: &Bytes) -> Result<Deaggregated, String> {
    let Some(framed) = data.strip_prefix(MAGIC.as_slice()) else {
        return Ok(Deaggregated::Plain);
    };
    let Some((body, digest)) = framed
        .len()
        .checked_sub(DIGEST_LEN)
        .and_then(|body_len| framed.split_at_checked(body_len))
    else {
        return Ok(Deaggregated::Plain);
    };
    if Md5::digest(body).as_slice() != digest {
        return Ok(Deaggregated::Plain);
    }

    let AggregatedRecord {
        partition_key_table,
        explicit_hash_key_table,
        records,
    } = AggregatedRecord::decode(data.slice_ref(body)).map_err(|e| {
        format!(
            "KPL aggregate ({} byte body) passed its MD5 check but is not a valid AggregatedRecord: {e}",
            body.len()
        )
    })?;

    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            let pk_index = record
                .partition_key_index
                .ok_or_else(|| format!("KPL aggregate record {i}: partition key index is missing"))?;
            let partition_key = lookup(&partition_key_table, pk_index, i, "partition key")?;
            let explicit_hash_key = record
                .explicit_hash_key_index
                .map(|ehk_index| lookup(&explicit_hash_key_table, ehk_index, i, "explicit hash key"))
                .transpose()?;
            let data = record
                .data
                .ok_or_else(|| format!("KPL aggregate record {i}: data is missing"))?;
            Ok(UserRecord {
                partition_key,
                explicit_hash_key,
                data,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Deaggregated::Aggregate)
}

/// Checked table lookup, so a hostile index is an error rather than a panic.
fn lookup(table: &[String], index: u64, record: usize, what: &str) -> Result<String, String> {
    usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .ok_or_else(|| {
            format!(
                "KPL aggregate record {record}: {what} index {index} is out of range (table has {} entries)",
                table.len()
            )
        })
}

/// Test-only encoder, the inverse of [`deaggregate`], for round-trip property tests. It lays
/// fields out as the reference aggregators do, so it reproduces their bytes exactly.
#[cfg(test)]
pub(crate) fn aggregate(records: &[UserRecord]) -> Bytes {
    /// Index of `key` in `table`, appending it on first sight (the KPL's key-table order).
    fn intern(table: &mut Vec<String>, key: &str) -> u64 {
        let i = table.iter().position(|k| k == key).unwrap_or_else(|| {
            table.push(key.to_owned());
            table.len() - 1
        });
        u64::try_from(i).unwrap_or(u64::MAX)
    }
    let mut message = AggregatedRecord::default();
    for r in records {
        let partition_key_index = Some(intern(&mut message.partition_key_table, &r.partition_key));
        let explicit_hash_key_index = r
            .explicit_hash_key
            .as_deref()
            .map(|k| intern(&mut message.explicit_hash_key_table, k));
        message.records.push(Record {
            partition_key_index,
            explicit_hash_key_index,
            data: Some(r.data.clone()),
            tags: Vec::new(),
        });
    }
    seal(&message.encode_to_vec())
}

/// Frames a protobuf body as an aggregate (magic + body + MD5), valid or not.
#[cfg(test)]
fn seal(body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(body);
    out.extend_from_slice(Md5::digest(body).as_slice());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case of `tests/data/kpl_vectors.json` (see `make_kpl_vectors.py`).
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        expect: String,
        aggregate_hex: String,
        records: Vec<ExpectedRecord>,
    }

    /// A user record as given to the reference aggregator.
    #[derive(serde::Deserialize)]
    struct ExpectedRecord {
        partition_key: String,
        explicit_hash_key: Option<String>,
        data_hex: String,
    }

    fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd-length hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn vectors() -> Vec<Case> {
        serde_json::from_str(include_str!("../tests/data/kpl_vectors.json")).unwrap()
    }

    fn expected_records(case: &Case) -> Vec<UserRecord> {
        case.records
            .iter()
            .map(|r| UserRecord {
                partition_key: r.partition_key.clone(),
                explicit_hash_key: r.explicit_hash_key.clone(),
                data: Bytes::from(unhex(&r.data_hex)),
            })
            .collect()
    }

    fn is_within(part: &Bytes, whole: &Bytes) -> bool {
        let range = whole.as_ptr_range();
        part.is_empty() || (range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end)
    }

    #[test]
    fn reference_vectors() {
        let cases = vectors();
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        for required in [
            "single_record",
            "many_records_shared_partition_keys",
            "explicit_hash_keys_mixed",
            "empty_data",
            "binary_all_byte_values",
            "unicode_partition_keys",
            "large_record",
            "zero_records",
            "md5_mismatch_body_byte_flipped",
            "magic_then_too_short",
        ] {
            assert!(names.contains(&required), "vector file lacks case {required}");
        }
        for case in &cases {
            let data = Bytes::from(unhex(&case.aggregate_hex));
            let got = deaggregate(&data);
            match case.expect.as_str() {
                "plain" => assert_eq!(got, Ok(Deaggregated::Plain), "case {}", case.name),
                "aggregate" => {
                    let Ok(Deaggregated::Aggregate(records)) = got else {
                        panic!("case {}: expected an aggregate, got {got:?}", case.name)
                    };
                    assert_eq!(records, expected_records(case), "case {}", case.name);
                    for r in &records {
                        assert!(is_within(&r.data, &data), "case {}: data was copied", case.name);
                    }
                }
                other => panic!("case {}: unknown expectation {other:?}", case.name),
            }
        }
    }

    /// Our test encoder must match the reference byte for byte, or round trips prove little.
    #[test]
    fn test_encoder_reproduces_reference_bytes() {
        for case in vectors().iter().filter(|c| c.expect == "aggregate") {
            let ours = aggregate(&expected_records(case));
            assert_eq!(
                ours.as_ref(),
                unhex(&case.aggregate_hex).as_slice(),
                "case {}",
                case.name
            );
        }
    }

    fn record(partition_key_index: u64, explicit_hash_key_index: Option<u64>, data: &'static [u8]) -> Record {
        Record {
            partition_key_index: Some(partition_key_index),
            explicit_hash_key_index,
            data: Some(Bytes::from_static(data)),
            tags: Vec::new(),
        }
    }

    fn two_key_message(records: Vec<Record>) -> AggregatedRecord {
        AggregatedRecord {
            partition_key_table: vec!["a".into(), "b".into()],
            explicit_hash_key_table: vec!["42".into()],
            records,
        }
    }

    #[test]
    fn partition_key_index_out_of_range_is_an_error() {
        let records = vec![
            record(0, None, b"0"),
            record(1, Some(0), b"1"),
            record(0, None, b"2"),
            record(7, None, b"x"),
        ];
        let data = seal(&two_key_message(records).encode_to_vec());
        assert_eq!(
            deaggregate(&data),
            Err("KPL aggregate record 3: partition key index 7 is out of range (table has 2 entries)".into())
        );
    }

    #[test]
    fn explicit_hash_key_index_out_of_range_is_an_error() {
        let data = seal(&two_key_message(vec![record(1, Some(u64::MAX), b"x")]).encode_to_vec());
        assert_eq!(
            deaggregate(&data),
            Err(format!(
                "KPL aggregate record 0: explicit hash key index {} is out of range (table has 1 entries)",
                u64::MAX
            ))
        );
    }

    #[test]
    fn missing_required_fields_are_errors() {
        let mut no_pk = record(0, None, b"x");
        no_pk.partition_key_index = None;
        let data = seal(&two_key_message(vec![no_pk]).encode_to_vec());
        assert_eq!(
            deaggregate(&data),
            Err("KPL aggregate record 0: partition key index is missing".into())
        );

        let mut no_data = record(0, None, b"x");
        no_data.data = None;
        let data = seal(&two_key_message(vec![record(1, None, b""), no_data]).encode_to_vec());
        assert_eq!(
            deaggregate(&data),
            Err("KPL aggregate record 1: data is missing".into())
        );
    }

    #[test]
    fn invalid_protobuf_with_valid_digest_is_an_error() {
        // Field 3 (records) claims 100 bytes but none follow.
        let err = deaggregate(&seal(&[0x1a, 100])).unwrap_err();
        assert!(
            err.starts_with("KPL aggregate (2 byte body) passed its MD5 check"),
            "{err}"
        );
        // Partition key that is not UTF-8.
        let err = deaggregate(&seal(&[0x0a, 1, 0xff])).unwrap_err();
        assert!(err.contains("not a valid AggregatedRecord"), "{err}");
    }

    #[test]
    fn plain_data_is_plain() {
        for data in [
            &b""[..],
            b"hello",
            b"\xf3\x89\x9a",
            b"\xf3\x89\x9a\xc3 almost the magic",
        ] {
            assert_eq!(
                deaggregate(&Bytes::copy_from_slice(data)),
                Ok(Deaggregated::Plain)
            );
        }
        // The magic then exactly a digest, but of something else.
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&[0; DIGEST_LEN]);
        assert_eq!(deaggregate(&Bytes::from(data)), Ok(Deaggregated::Plain));
    }

    #[test]
    fn zero_records_is_an_empty_aggregate() {
        assert_eq!(deaggregate(&aggregate(&[])), Ok(Deaggregated::Aggregate(vec![])));
    }

    fn random_records(rng: &mut fastrand::Rng) -> Vec<UserRecord> {
        const KEYS: [&str; 5] = ["a", "user-1", "ключ", "\u{1F511}", "k"];
        (0..rng.usize(..40))
            .map(|_| {
                let mut data = vec![0; rng.usize(..300)];
                rng.fill(&mut data);
                UserRecord {
                    partition_key: KEYS[rng.usize(..KEYS.len())].to_owned(),
                    explicit_hash_key: rng.bool().then(|| rng.u128(..).to_string()),
                    data: Bytes::from(data),
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_random_records() {
        let mut rng = fastrand::Rng::with_seed(0x4b50_4c01);
        for _ in 0..500 {
            let records = random_records(&mut rng);
            assert_eq!(
                deaggregate(&aggregate(&records)),
                Ok(Deaggregated::Aggregate(records))
            );
        }
    }

    /// Hostile input of three kinds must never panic: raw bytes (mostly without the magic),
    /// random bodies sealed with a valid digest (reach the decoder), and valid aggregates with
    /// bytes mutated then resealed (reach the index checks with near-valid structure).
    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x4b50_4c02);
        for i in 0..30_000 {
            let data = match i % 3 {
                0 => {
                    let mut raw = if rng.bool() { MAGIC.to_vec() } else { Vec::new() };
                    raw.extend((0..rng.usize(..64)).map(|_| rng.u8(..)));
                    Bytes::from(raw)
                }
                1 => {
                    let body: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
                    seal(&body)
                }
                _ => {
                    let sealed = aggregate(&random_records(&mut rng));
                    let mut body = sealed[MAGIC.len()..sealed.len() - DIGEST_LEN].to_vec();
                    for _ in 0..=rng.usize(..4) {
                        if body.is_empty() {
                            break;
                        }
                        let at = rng.usize(..body.len());
                        body[at] = rng.u8(..);
                    }
                    if rng.bool() {
                        body.truncate(rng.usize(..=body.len()));
                    }
                    seal(&body)
                }
            };
            let result = deaggregate(&data);
            if !data.starts_with(&MAGIC) {
                assert_eq!(result, Ok(Deaggregated::Plain));
            }
        }
    }
}
