//! Which partition each record of a batch goes to, on the engines that partition in
//! process (memory, native) the way Kafka's Java client does.

use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::record::Record;

/// A batch's partitions, record by record, and whether the batch used the unkeyed
/// partition (so the engine moves its rotation on for the next batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// The partition of each record, in the batch's order.
    pub partitions: Vec<u32>,
    /// Whether some record had neither a partition nor a key.
    pub used_unkeyed: bool,
}

/// Routes a batch for a stream of `partitions` partitions: a record's own partition
/// if it names one (which must exist), else Kafka's murmur2 of its key, else
/// `unkeyed`, one partition for all of the batch's unkeyed records (Kafka's sticky
/// behaviour; the engine rotates it between batches). Checks every record first, so
/// a bad batch is refused whole.
///
/// # Errors
///
/// `InvalidInput` naming the first record whose key, value and headers exceed
/// `max_record_bytes`, or that targets a partition the stream does not have.
pub fn route_batch(
    records: &[Record],
    partitions: u32,
    unkeyed: u32,
    max_record_bytes: usize,
) -> Result<Routes> {
    let mut routes = Routes {
        partitions: Vec::with_capacity(records.len()),
        used_unkeyed: false,
    };
    for (i, record) in records.iter().enumerate() {
        let size = record.encoded_len();
        if size > max_record_bytes {
            return Err(Error::invalid_input(format!(
                "record {i} of the batch is {size} bytes (key + value + headers), above the limit of {max_record_bytes}"
            )));
        }
        let partition = match (&record.partition, &record.key) {
            (Some(p), _) => p.index().filter(|p| *p < partitions).ok_or_else(|| {
                Error::invalid_input(format!(
                    "record {i} targets partition {p}, but the stream has partitions 0 to {}",
                    partitions.saturating_sub(1)
                ))
            })?,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => {
                routes.used_unkeyed = true;
                unkeyed
            }
        };
        routes.partitions.push(partition);
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::id::PartitionId;

    #[test]
    fn own_partition_then_key_then_the_sticky_unkeyed_partition() {
        let records = [
            Record::new("a").to_partition(PartitionId::from_index(2)),
            Record::new("b").with_key("customer-7"),
            Record::new("c"),
            Record::new("d"),
        ];
        let routes = route_batch(&records, 4, 1, 1000).unwrap();
        let keyed = partition_for_key(b"customer-7", 4);
        assert_eq!(routes.partitions, [2, keyed, 1, 1]);
        assert!(routes.used_unkeyed);
        let keyed_only = route_batch(&records[..2], 4, 1, 1000).unwrap();
        assert!(!keyed_only.used_unkeyed);
    }

    #[test]
    fn a_bad_record_refuses_the_batch_and_is_named() {
        let big = [Record::new("fine"), Record::new(vec![0u8; 11])];
        let err = route_batch(&big, 1, 0, 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("record 1 of the batch is 11 bytes"),
            "{err}"
        );
        let missing = [Record::new("x").to_partition(PartitionId::from_index(3))];
        let err = route_batch(&missing, 3, 0, 10).unwrap_err();
        assert!(
            err.to_string()
                .contains("record 0 targets partition 3, but the stream has partitions 0 to 2"),
            "{err}"
        );
        let named = [Record::new("x").to_partition(PartitionId::new("shardId-000000000001"))];
        assert!(
            route_batch(&named, 3, 0, 10).is_err(),
            "a partition without an index does not exist here"
        );
    }
}
