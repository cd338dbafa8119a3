//! Leases in a DynamoDB table, one item per shard. The attribute names follow the
//! Kinesis Client Library's lease tables (`leaseKey`, `leaseOwner`, `leaseCounter`,
//! `checkpoint`, `checkpointSubSequenceNumber`, `parentShardId`) so the table reads
//! familiarly; `pendingOwner` (handoff requests) and `ownerFailoverMillis` (the owner's
//! failover time) are Tributary's own.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use md5::{Digest, Md5};
use tributary_core::{Error, ErrorKind, PartitionId, Result, async_trait};

use crate::error::{code, convert};
use crate::leases::{Checkpoint, Lease, LeaseChange, LeaseStore, moved_on};
use crate::position::KinesisPosition;

const KEY: &str = "leaseKey";
const OWNER: &str = "leaseOwner";
const COUNTER: &str = "leaseCounter";
const CHECKPOINT: &str = "checkpoint";
const SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
const TIMESTAMP: &str = "checkpointTimestamp";
const PARENTS: &str = "parentShardId";
const PENDING: &str = "pendingOwner";
const OWNER_FAILOVER: &str = "ownerFailoverMillis";
const TRIM_HORIZON: &str = "TRIM_HORIZON";
const SHARD_END: &str = "SHARD_END";
const AT_TIMESTAMP: &str = "AT_TIMESTAMP";

/// The lease table of `group` reading `stream` when none is configured: readable, and
/// unique per stream and group thanks to a hash of both (stream and group names may
/// both contain the separators).
pub(crate) fn default_table_name(stream: &str, group: &str) -> String {
    let digest = Md5::digest(format!("{stream}\0{group}").as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let clean: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let room = 255usize.saturating_sub("tributary---".len() + stream.len() + hash.len());
    let clean: String = clean.chars().take(room).collect();
    format!("tributary-{stream}-{clean}-{hash}")
}

/// Leases in one DynamoDB table.
#[derive(Debug)]
pub struct DynamoLeaseStore {
    client: Client,
    table: String,
    wait: Duration,
}

impl DynamoLeaseStore {
    /// Leases in `table`; `prepare` waits up to `wait` for a new table to be ready.
    pub fn new(client: Client, table: impl Into<String>, wait: Duration) -> Self {
        Self {
            client,
            table: table.into(),
            wait,
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn status(&self) -> Result<Option<TableStatus>> {
        match self.client.describe_table().table_name(&self.table).send().await {
            Ok(out) => Ok(out.table().and_then(|t| t.table_status()).cloned()),
            Err(e) if code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(convert(&format!("describing lease table {}", self.table), e)),
        }
    }

    async fn create_table(&self) -> Result<()> {
        let key = KeySchemaElement::builder()
            .attribute_name(KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| Error::new(ErrorKind::Backend, format!("lease table key: {e}")))?;
        let attribute = AttributeDefinition::builder()
            .attribute_name(KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| Error::new(ErrorKind::Backend, format!("lease table key: {e}")))?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key)
            .attribute_definitions(attribute)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(table = %self.table, "created the lease table");
                Ok(())
            }
            // Another member created it first.
            Err(e) if code(&e) == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(convert(&format!("creating lease table {}", self.table), e)),
        }
    }

    fn parse(&self, item: &HashMap<String, AttributeValue>) -> Result<Lease> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::Corruption,
                format!("lease table {}: an item has {what}", self.table),
            )
        };
        let text = |name: &str| -> Result<Option<String>> {
            match item.get(name) {
                None | Some(AttributeValue::Null(_)) => Ok(None),
                Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(&format!("a {name} that is not a string"))),
            }
        };
        let number = |name: &str| -> Result<Option<u64>> {
            match item.get(name) {
                None | Some(AttributeValue::Null(_)) => Ok(None),
                Some(AttributeValue::N(n)) => n
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(&format!("a {name} of {n:?}, not a whole number"))),
                Some(_) => Err(bad(&format!("a {name} that is not a number"))),
            }
        };
        let shard = text(KEY)?.ok_or_else(|| bad("no leaseKey"))?;
        let checkpoint = match text(CHECKPOINT)?.as_deref() {
            None => None,
            Some(TRIM_HORIZON) => Some(Checkpoint::TrimHorizon),
            Some(SHARD_END) => Some(Checkpoint::ShardEnd),
            Some(AT_TIMESTAMP) => {
                let millis = number(TIMESTAMP)?
                    .ok_or_else(|| bad(&format!("AT_TIMESTAMP without a time for {shard}")))?;
                let millis =
                    i64::try_from(millis).map_err(|_| bad(&format!("a checkpoint time of {millis}")))?;
                Some(Checkpoint::AtTimestamp(tributary_core::Timestamp::from_millis(
                    millis,
                )))
            }
            Some(sequence) if !sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit()) => {
                let sub = number(SUB_SEQUENCE)?.unwrap_or(0);
                let sub = u32::try_from(sub).map_err(|_| bad(&format!("a sub-sequence of {sub}")))?;
                let position = KinesisPosition {
                    sequence_number: sequence.to_string(),
                    sub_sequence: sub,
                };
                Some(Checkpoint::After(position.to_offset().map_err(|e| {
                    bad(&format!("checkpoint {sequence:?} for shard {shard}: {e}"))
                })?))
            }
            Some(other) => return Err(bad(&format!("checkpoint {other:?} for shard {shard}"))),
        };
        let parents = match item.get(PARENTS) {
            None | Some(AttributeValue::Null(_)) => Vec::new(),
            Some(AttributeValue::Ss(list)) => list.iter().map(|p| PartitionId::new(p.as_str())).collect(),
            Some(AttributeValue::S(p)) => vec![PartitionId::new(p.as_str())],
            Some(_) => return Err(bad("a parentShardId that is not a string set")),
        };
        Ok(Lease {
            shard: PartitionId::new(shard),
            owner: text(OWNER)?,
            counter: number(COUNTER)?.unwrap_or(0),
            checkpoint,
            parents,
            pending_owner: text(PENDING)?,
            // At most the longest failover a member can have, so that no value in the
            // table holds a lease forever.
            owner_failover: number(OWNER_FAILOVER)?
                .map(|ms| Duration::from_millis(ms).min(crate::config::MAX_FAILOVER)),
        })
    }
}

/// The checkpoint as the table holds it: the sequence number (or a sentinel), the
/// sub-sequence number, and the time of an AT_TIMESTAMP start.
fn encode_checkpoint(checkpoint: &Checkpoint) -> Result<(String, u32, Option<u64>)> {
    Ok(match checkpoint {
        Checkpoint::TrimHorizon => (TRIM_HORIZON.to_string(), 0, None),
        Checkpoint::ShardEnd => (SHARD_END.to_string(), 0, None),
        Checkpoint::AtTimestamp(t) => (
            AT_TIMESTAMP.to_string(),
            0,
            Some(u64::try_from(t.as_millis()).unwrap_or(0)),
        ),
        Checkpoint::After(offset) => {
            let position = KinesisPosition::from_offset(offset)?;
            (position.sequence_number, position.sub_sequence, None)
        }
    })
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn millis(duration: Duration) -> AttributeValue {
    n(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl LeaseStore for DynamoLeaseStore {
    async fn prepare(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut created = false;
        loop {
            match self.status().await? {
                Some(TableStatus::Active) => return Ok(()),
                None if !created => {
                    self.create_table().await?;
                    created = true;
                }
                None | Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("lease table {} was not ACTIVE within {:?}", self.table, self.wait),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| convert(&format!("reading lease table {}", self.table), e))?;
            for item in out.items() {
                leases.push(self.parse(item)?);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    async fn create(&self, lease: &Lease) -> Result<bool> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(lease.shard.as_str()))
            .item(COUNTER, n(lease.counter))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", KEY);
        if let Some(owner) = &lease.owner {
            put = put.item(OWNER, s(owner));
        }
        if let Some(checkpoint) = &lease.checkpoint {
            let (sequence, sub, millis) = encode_checkpoint(checkpoint)?;
            put = put
                .item(CHECKPOINT, s(sequence))
                .item(SUB_SEQUENCE, n(u64::from(sub)));
            if let Some(millis) = millis {
                put = put.item(TIMESTAMP, n(millis));
            }
        }
        if !lease.parents.is_empty() {
            put = put.item(
                PARENTS,
                AttributeValue::Ss(lease.parents.iter().map(|p| p.as_str().to_string()).collect()),
            );
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(convert(
                &format!("adding the lease of {} to {}", lease.shard, self.table),
                e,
            )),
        }
    }

    async fn update(&self, expected: &Lease, change: &LeaseChange) -> Result<Lease> {
        let mut condition = String::from("#counter = :expected");
        let mut names: HashMap<String, String> = HashMap::from([("#counter".into(), COUNTER.into())]);
        let mut values: HashMap<String, AttributeValue> =
            HashMap::from([(":expected".into(), n(expected.counter))]);
        names.insert("#owner".into(), OWNER.into());
        match &expected.owner {
            Some(owner) => {
                condition.push_str(" AND #owner = :owner");
                values.insert(":owner".into(), s(owner));
            }
            None => condition.push_str(" AND attribute_not_exists(#owner)"),
        }
        let mut set: Vec<String> = Vec::new();
        let mut remove: Vec<String> = Vec::new();
        let mut raise = true;
        let mut checkpoint_to = None;
        match change {
            LeaseChange::Renew => {}
            LeaseChange::Take { owner, failover } => {
                set.push("#owner = :new".into());
                values.insert(":new".into(), s(owner));
                remove.push("#pending".into());
                set.push("#failover = :failover".into());
                values.insert(":failover".into(), millis(*failover));
            }
            LeaseChange::Confirm { failover } => {
                set.push("#failover = :failover".into());
                values.insert(":failover".into(), millis(*failover));
            }
            LeaseChange::Checkpoint(c) => checkpoint_to = Some(c),
            LeaseChange::Transfer { to, checkpoint } => {
                match to {
                    Some(to) => {
                        set.push("#owner = :new".into());
                        values.insert(":new".into(), s(to));
                    }
                    None => remove.push("#owner".into()),
                }
                remove.push("#pending".into());
                remove.push("#failover".into());
                checkpoint_to = checkpoint.as_ref();
            }
            LeaseChange::RequestHandoff { to } => {
                condition.push_str(" AND attribute_not_exists(#pending)");
                set.push("#pending = :new".into());
                values.insert(":new".into(), s(to));
                raise = false;
            }
        }
        if set.iter().chain(&remove).any(|e| e.contains("#pending")) {
            names.insert("#pending".into(), PENDING.into());
        }
        if set.iter().chain(&remove).any(|e| e.contains("#failover")) {
            names.insert("#failover".into(), OWNER_FAILOVER.into());
        }
        if let Some(checkpoint) = checkpoint_to {
            let (sequence, sub, millis) = encode_checkpoint(checkpoint)?;
            if let Some(millis) = millis {
                set.push("#ts = :ts".into());
                names.insert("#ts".into(), TIMESTAMP.into());
                values.insert(":ts".into(), n(millis));
            }
            set.push("#cp = :cp".into());
            set.push("#sub = :sub".into());
            names.insert("#cp".into(), CHECKPOINT.into());
            names.insert("#sub".into(), SUB_SEQUENCE.into());
            values.insert(":cp".into(), s(sequence));
            values.insert(":sub".into(), n(u64::from(sub)));
        }
        if raise {
            set.push("#counter = #counter + :one".into());
            values.insert(":one".into(), n(1));
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(expected.shard.as_str()))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(out) => match out.attributes() {
                Some(item) => self.parse(item),
                None => Err(Error::new(
                    ErrorKind::Backend,
                    format!("lease table {}: an update returned no item", self.table),
                )),
            },
            Err(e) if code(&e) == Some("ConditionalCheckFailedException") => Err(moved_on(&expected.shard)),
            Err(e) => Err(convert(
                &format!("updating the lease of {} in {}", expected.shard, self.table),
                e,
            )),
        }
    }

    async fn delete_ended(&self, shard: &PartitionId) -> Result<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, s(shard.as_str()))
            .condition_expression("#cp = :end")
            .expression_attribute_names("#cp", CHECKPOINT)
            .expression_attribute_values(":end", s(SHARD_END))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(convert(
                &format!("deleting the lease of {shard} from {}", self.table),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_names_are_valid_and_distinct() {
        let a = default_table_name("a.b", "c");
        let b = default_table_name("a", "b.c");
        assert_ne!(a, b, "the hash tells apart names that join the same");
        assert!(crate::config::valid_table_name(&a), "{a}");
        let odd = default_table_name(&"s".repeat(128), &format!("grüppe/{}", "g".repeat(249)));
        assert!(crate::config::valid_table_name(&odd), "{odd}");
        assert_eq!(odd.len(), 255);
    }

    fn offline_store() -> DynamoLeaseStore {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        DynamoLeaseStore::new(Client::new(&sdk), "t", Duration::from_secs(1))
    }

    #[test]
    fn items_read_back_as_leases_with_the_owners_failover_bounded() -> Result<()> {
        let store = offline_store();
        let item = |failover: &str| {
            HashMap::from([
                (KEY.to_string(), s("shardId-1")),
                (OWNER.to_string(), s("m1")),
                (COUNTER.to_string(), n(7)),
                (CHECKPOINT.to_string(), s(TRIM_HORIZON)),
                (OWNER_FAILOVER.to_string(), AttributeValue::N(failover.into())),
            ])
        };
        let lease = store.parse(&item("2500"))?;
        assert_eq!(lease.owner.as_deref(), Some("m1"));
        assert_eq!(lease.counter, 7);
        assert_eq!(lease.checkpoint, Some(Checkpoint::TrimHorizon));
        assert_eq!(lease.owner_failover, Some(Duration::from_millis(2_500)));
        // A value no member writes cannot hold the lease for longer than an hour.
        let huge = store.parse(&item("18446744073709551615"))?;
        assert_eq!(huge.owner_failover, Some(Duration::from_secs(3_600)));
        let bad = store.parse(&item("-1")).expect_err("not a whole number");
        assert_eq!(bad.kind(), ErrorKind::Corruption, "{bad}");
        Ok(())
    }
}
