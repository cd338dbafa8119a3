//! Shard listings: lineage for readers, hash ranges for producers.

use aws_sdk_kinesis::Client;
use tributary_core::{Error, ErrorKind, PartitionId, Result};

use crate::error::convert;

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
}
