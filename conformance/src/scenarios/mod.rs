//! One async function per scenario, grouped by area. Each creates its own streams and
//! groups under fresh names, so scenarios run in parallel and runs never collide.

mod admin;
mod commits;
mod errors;
mod groups;
mod ordering;
mod pipeline;
mod processor;
mod reading;
mod records;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tributary_core::{PartitionId, Received, Result};

use crate::support::Ctx;

pub use admin::*;
pub use commits::*;
pub use errors::*;
pub use groups::*;
pub use ordering::*;
pub use pipeline::*;
pub use processor::*;
pub use reading::*;
pub use records::*;

pub(super) fn partition_set(ids: impl IntoIterator<Item = PartitionId>) -> BTreeSet<PartitionId> {
    ids.into_iter().collect()
}

pub(super) async fn partitions_of(ctx: &Ctx, stream: &str) -> Result<BTreeSet<PartitionId>> {
    let info = ctx.admin().await?.describe_stream(stream).await?;
    Ok(partition_set(info.partitions.into_iter().map(|p| p.id)))
}

/// The records of each key, in the order received, first deliveries only.
pub(super) fn by_key(records: &[Received]) -> BTreeMap<Bytes, Vec<String>> {
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
