//! Opaque identifiers: partitions, offsets and timestamps.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A partition of a stream: a Kafka partition number, a Kinesis shard id, a native or
/// memory partition number. Opaque: compare, print and parse it, but do not compute
/// with it. Numbered partitions order numerically, others by their text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PartitionId(Arc<str>);

impl PartitionId {
    /// A partition id from its text (`"3"`, `"shardId-000000000001"`).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id of partition number `index`, for engines whose partitions are numbered.
    pub fn from_index(index: u32) -> Self {
        Self(index.to_string().into())
    }

    /// The text of the id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition number, for engines whose partitions are numbered (Kafka, native,
    /// memory); `None` for other ids such as Kinesis shard ids.
    pub fn index(&self) -> Option<u32> {
        canonical_u64(&self.0).and_then(|n| u32::try_from(n).ok())
    }
}

/// `Some(n)` when `s` is the canonical decimal form of `n` (no sign, no leading zero).
fn canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Ord for PartitionId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (canonical_u64(&self.0), canonical_u64(&other.0)) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for PartitionId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionId({})", self.0)
    }
}

impl FromStr for PartitionId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() || s.len() > 256 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid_input(format!(
                "invalid partition id {s:?}: expected 1 to 256 characters without spaces"
            )));
        }
        Ok(Self::new(s))
    }
}

impl From<u32> for PartitionId {
    fn from(index: u32) -> Self {
        Self::from_index(index)
    }
}

impl Serialize for PartitionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PartitionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The position of a record in its partition: a Kafka or native offset, a Kinesis
/// sequence number. Ordered within a partition, but NOT contiguous (Kinesis sequence
/// numbers skip), so there is no arithmetic on it. Its text is a canonical decimal
/// number of up to 128 digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Offset(OffsetRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum OffsetRepr {
    /// Every offset that fits in 64 bits, so the common engines never allocate.
    Small(u64),
    /// Canonical decimal digits of a number above `u64::MAX`.
    Big(Arc<str>),
}

/// The longest offset text accepted (Kinesis sequence numbers are far shorter).
const MAX_OFFSET_DIGITS: usize = 128;

impl Offset {
    /// The offset `n`.
    pub const fn new(n: u64) -> Self {
        Self(OffsetRepr::Small(n))
    }

    /// The offset as a number when it fits in 64 bits (always for Kafka, native and
    /// memory offsets).
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            OffsetRepr::Small(n) => Some(*n),
            OffsetRepr::Big(_) => None,
        }
    }
}

impl Ord for Offset {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            (OffsetRepr::Small(a), OffsetRepr::Small(b)) => a.cmp(b),
            (OffsetRepr::Small(_), OffsetRepr::Big(_)) => Ordering::Less,
            (OffsetRepr::Big(_), OffsetRepr::Small(_)) => Ordering::Greater,
            // Canonical decimals: the longer is larger, equal lengths compare as text.
            (OffsetRepr::Big(a), OffsetRepr::Big(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
        }
    }
}

impl PartialOrd for Offset {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            OffsetRepr::Small(n) => write!(f, "{n}"),
            OffsetRepr::Big(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Offset({self})")
    }
}

impl FromStr for Offset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let canonical = !s.is_empty()
            && s.len() <= MAX_OFFSET_DIGITS
            && s.bytes().all(|b| b.is_ascii_digit())
            && !(s.len() > 1 && s.starts_with('0'));
        if !canonical {
            return Err(Error::invalid_input(format!(
                "invalid offset {s:?}: expected a decimal number of 1 to {MAX_OFFSET_DIGITS} digits without leading zeros"
            )));
        }
        Ok(match s.parse::<u64>() {
            Ok(n) => Self::new(n),
            Err(_) => Self(OffsetRepr::Big(s.into())),
        })
    }
}

impl From<u64> for Offset {
    fn from(n: u64) -> Self {
        Self::new(n)
    }
}

impl Serialize for Offset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A point in time, in milliseconds since the Unix epoch (the precision Kafka and
/// Kinesis keep).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The current time of the system clock.
    pub fn now() -> Self {
        SystemTime::now().into()
    }

    /// The timestamp `d` later, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The timestamp `d` earlier, saturating.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_order_numerically_across_representations() {
        let big: Offset = "49590338271490256608559692538361571095921575989136588898"
            .parse()
            .unwrap();
        let bigger: Offset = "49590338271490256608559692538361571095921575989136588899"
            .parse()
            .unwrap();
        let longer: Offset = "100000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        let max = Offset::new(u64::MAX);
        assert!(Offset::new(9) < Offset::new(10));
        assert!(max < big && big < bigger && bigger < longer);
        let over_u64: Offset = "18446744073709551616".parse().unwrap();
        assert!(max < over_u64);
        assert_eq!(over_u64.as_u64(), None);
        assert_eq!("18446744073709551615".parse::<Offset>().unwrap(), max);
    }

    #[test]
    fn offsets_reject_non_canonical_text() {
        for bad in ["", "-1", "01", "1.5", " 1", "abc", &"9".repeat(129)] {
            let err = bad.parse::<Offset>().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!("0".parse::<Offset>().unwrap(), Offset::new(0));
    }

    #[test]
    fn offset_serde_is_its_text() {
        let o = Offset::new(42);
        assert_eq!(serde_json::to_string(&o).unwrap(), "\"42\"");
        assert_eq!(serde_json::from_str::<Offset>("\"42\"").unwrap(), o);
        assert!(serde_json::from_str::<Offset>("\"x\"").is_err());
    }

    #[test]
    fn partition_ids_order_numbers_numerically() {
        let mut ids: Vec<PartitionId> = ["10", "2", "shardId-000000000001", "0", "shardId-000000000000"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ids.sort();
        let text: Vec<&str> = ids.iter().map(PartitionId::as_str).collect();
        assert_eq!(
            text,
            ["0", "2", "10", "shardId-000000000000", "shardId-000000000001"]
        );
        assert_eq!(PartitionId::from_index(7).index(), Some(7));
        assert_eq!(PartitionId::new("shardId-1").index(), None);
        assert_eq!(PartitionId::new("007").index(), None);
        assert!("".parse::<PartitionId>().is_err());
        assert!("a b".parse::<PartitionId>().is_err());
    }

    #[test]
    fn timestamps_from_system_time() {
        let t = Timestamp::from(UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(t.as_millis(), 1500);
        assert_eq!(t.saturating_add(Duration::from_secs(1)).as_millis(), 2500);
        assert_eq!(t.saturating_sub(Duration::from_secs(2)).as_millis(), -500);
    }
}
