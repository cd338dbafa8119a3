//! Shard listings: lineage for readers, hash ranges for producers.

use aws_sdk_kinesis::Client;
use bytes::Bytes;
use tributary_core::{Error, ErrorKind, PartitionId, Result};

use crate::error::convert;
use crate::keys;

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShardDesc {
    pub(crate) id: PartitionId,
    /// The shard it was split from, or the two it was merged from.
    pub(crate) parents: Vec<PartitionId>,
    /// The hash keys it owns, inclusive.
    pub(crate) range: (u128, u128),
    /// The sequence number of its first record (or below it).
    pub(crate) first_sequence: Option<String>,
    /// Set once the shard is closed: no record is added after it.
    pub(crate) last_sequence: Option<String>,
}

impl ShardDesc {
    pub(crate) fn is_open(&self) -> bool {
        self.last_sequence.is_none()
    }
}

fn hash(text: &str, shard: &str) -> Result<u128> {
    text.parse().map_err(|_| {
        Error::new(
            ErrorKind::Backend,
            format!("Kinesis returned hash key {text:?} for {shard}, which is not a 128-bit number"),
        )
    })
}

/// Every shard of `stream` that Kinesis still lists, in ListShards order (by id).
///
/// # Errors
/// `NotFound` for a missing stream, or the request's error.
pub(crate) async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardDesc>> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let request = match &token {
            // With a token Kinesis refuses the stream name.
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = request
            .send()
            .await
            .map_err(|e| convert(&format!("listing the shards of {stream}"), e))?;
        for shard in out.shards() {
            let id = shard.shard_id();
            let range = match shard.hash_key_range() {
                Some(r) => (hash(r.starting_hash_key(), id)?, hash(r.ending_hash_key(), id)?),
                None => (0, u128::MAX),
            };
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(PartitionId::new)
                .collect();
            let sequences = shard.sequence_number_range();
            shards.push(ShardDesc {
                id: PartitionId::new(id),
                parents,
                range,
                first_sequence: sequences.map(|s| s.starting_sequence_number().to_string()),
                last_sequence: sequences
                    .and_then(|s| s.ending_sequence_number())
                    .map(str::to_string),
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(shards)
}

/// The open shards of a stream by hash range: where a producer's records go.
#[derive(Clone, Debug)]
pub(crate) struct ShardMap {
    /// Open shards sorted by the start of their range.
    open: Vec<(u128, u128, PartitionId)>,
}

impl ShardMap {
    pub(crate) fn new(shards: &[ShardDesc]) -> Self {
        let mut open: Vec<(u128, u128, PartitionId)> = shards
            .iter()
            .filter(|s| s.is_open())
            .map(|s| (s.range.0, s.range.1, s.id.clone()))
            .collect();
        open.sort_by_key(|(start, _, _)| *start);
        Self { open }
    }

    /// The open shard that owns `hash_key`.
    pub(crate) fn shard_for(&self, hash_key: u128) -> Option<&PartitionId> {
        let i = self.open.partition_point(|(start, _, _)| *start <= hash_key);
        let (_, end, id) = self.open.get(i.checked_sub(1)?)?;
        (hash_key <= *end).then_some(id)
    }

    /// The first hash key of an open shard: sending with it as the explicit hash key
    /// targets that shard.
    pub(crate) fn start_of(&self, shard: &PartitionId) -> Option<u128> {
        self.open
            .iter()
            .find(|(_, _, id)| id == shard)
            .map(|(start, _, _)| *start)
    }
}

/// A stream's producer lanes: one per shard open when the producer first sent to the
/// stream, so one throttled shard holds up no other's records. Fixed for the producer's
/// life: a key keeps its lane, and so its order, across reshards (after one, a lane may
/// span shards or share one, which costs only concurrency).
#[derive(Debug)]
pub(crate) struct Lanes {
    /// The lanes' shards, sorted by the start of their range.
    starts: Vec<u128>,
    shards: Vec<PartitionId>,
}

impl Lanes {
    pub(crate) fn new(map: &ShardMap) -> Self {
        Self {
            starts: map.open.iter().map(|(start, _, _)| *start).collect(),
            shards: map.open.iter().map(|(_, _, id)| id.clone()).collect(),
        }
    }

    /// The lane of a record: for a keyed one, the lane its key hashes to, wherever the
    /// record is sent, so that a key's records share one lane; for one without a key
    /// sent to a shard, that shard's lane.
    ///
    /// # Errors
    /// A message when the key cannot be a partition key.
    pub(crate) fn for_record(&self, key: Option<&Bytes>, shard: Option<&PartitionId>) -> Result<u32, String> {
        match (key, shard) {
            (None, Some(shard)) => Ok(self.for_shard(shard)),
            _ => Ok(self.for_hash(keys::hash_key(&keys::partition_key(key)?))),
        }
    }

    /// The lane of a record sent by hash key: its shard's when the lanes were made.
    pub(crate) fn for_hash(&self, hash_key: u128) -> u32 {
        let after = self.starts.partition_point(|start| *start <= hash_key);
        lane_number(after.saturating_sub(1))
    }

    /// The lane of a record sent to `shard` explicitly: that shard's, or for a shard
    /// opened since the lanes were made, one chosen by its id (always the same one).
    pub(crate) fn for_shard(&self, shard: &PartitionId) -> u32 {
        if let Some(i) = self.shards.iter().position(|s| s == shard) {
            return lane_number(i);
        }
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(shard.as_str(), &mut hasher);
        let count = self.shards.len().max(1) as u64;
        lane_number((std::hash::Hasher::finish(&hasher) % count) as usize)
    }
}

fn lane_number(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, range: (u128, u128), open: bool) -> ShardDesc {
        ShardDesc {
            id: PartitionId::new(id),
            parents: vec![],
            range,
            first_sequence: None,
            last_sequence: (!open).then(|| "9".to_string()),
        }
    }

    #[test]
    fn hash_keys_find_their_open_shard() {
        let half = u128::MAX / 2;
        let map = ShardMap::new(&[
            shard("closed", (0, u128::MAX), false),
            shard("b", (half + 1, u128::MAX), true),
            shard("a", (0, half), true),
        ]);
        assert_eq!(map.shard_for(0).map(PartitionId::as_str), Some("a"));
        assert_eq!(map.shard_for(half).map(PartitionId::as_str), Some("a"));
        assert_eq!(map.shard_for(half + 1).map(PartitionId::as_str), Some("b"));
        assert_eq!(map.shard_for(u128::MAX).map(PartitionId::as_str), Some("b"));
        assert_eq!(map.start_of(&PartitionId::new("b")), Some(half + 1));
        assert_eq!(map.start_of(&PartitionId::new("closed")), None);
        let gap = ShardMap::new(&[shard("a", (10, 20), true)]);
        assert_eq!(gap.shard_for(5), None);
        assert_eq!(gap.shard_for(21), None);
    }

    #[test]
    fn lanes_follow_the_shards_open_when_made_and_never_move_a_key() {
        let half = u128::MAX / 2;
        let map = ShardMap::new(&[
            shard("closed", (0, u128::MAX), false),
            shard("b", (half + 1, u128::MAX), true),
            shard("a", (0, half), true),
        ]);
        let lanes = Lanes::new(&map);
        assert_eq!(lanes.for_hash(0), 0);
        assert_eq!(lanes.for_hash(half), 0);
        assert_eq!(lanes.for_hash(half + 1), 1);
        assert_eq!(lanes.for_hash(u128::MAX), 1);
        assert_eq!(lanes.for_shard(&PartitionId::new("a")), 0);
        assert_eq!(lanes.for_shard(&PartitionId::new("b")), 1);
        let newer = PartitionId::new("c");
        let lane = lanes.for_shard(&newer);
        assert!(lane < 2);
        assert_eq!(lanes.for_shard(&newer), lane, "the same lane every time");
        let key = Bytes::from("k");
        let by_hash = lanes.for_record(Some(&key), None).unwrap();
        for shard in ["a", "b", "c"] {
            let sent_there = lanes.for_record(Some(&key), Some(&PartitionId::new(shard)));
            assert_eq!(
                sent_there.unwrap(),
                by_hash,
                "a key keeps its lane wherever it is sent"
            );
        }
        assert_eq!(lanes.for_record(None, Some(&PartitionId::new("b"))).unwrap(), 1);
        assert!(
            lanes
                .for_record(Some(&Bytes::from(vec![0xff; 4096])), None)
                .is_err()
        );
        let none = Lanes::new(&ShardMap::new(&[]));
        assert_eq!(none.for_hash(5), 0);
        assert_eq!(none.for_shard(&newer), 0);
    }
}
