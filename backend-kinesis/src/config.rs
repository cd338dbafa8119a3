//! The Kinesis backend's settings, reached from a `kinesis://` URL, a TOML table or code.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_core::raw::BackendUrl;
use tributary_core::raw::EngineConfig;
use tributary_core::{Error, Result};

/// Kinesis's own cap on one record: partition key plus data.
pub const KINESIS_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The longest `failover` a member may have.
pub(crate) const MAX_FAILOVER: Duration = Duration::from_secs(3600);

/// How a consumer reads shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderKind {
    /// GetRecords in a loop, at most five calls per second per shard (shared with every
    /// other polling reader of the shard).
    #[default]
    Polling,
    /// Enhanced fan-out: a registered stream consumer and SubscribeToShard, with its own
    /// 2 MB/s per shard and records pushed as they arrive.
    FanOut,
}

/// Where a consumer group keeps its leases and checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStoreKind {
    /// A DynamoDB table per stream and group (created on first use), shared by every
    /// worker of the group wherever it runs.
    #[default]
    Dynamodb,
    /// In this process only: the members of every backend of the process (on the same
    /// endpoint and region) share it; nothing survives the process. For single-process
    /// applications and tests.
    Memory,
}

/// Settings of the Kinesis backend. Credentials are never part of it: they come from
/// the default AWS chain (environment, profile files, SSO, web identity, container and
/// instance metadata), so a URL or a config file cannot leak them.
///
/// ```
/// use tributary_kinesis::{KinesisConfig, ReaderKind};
///
/// let config = KinesisConfig::from_url_str(
///     "kinesis://?region=us-east-1&endpoint=http://127.0.0.1:4568&reader=fan_out",
/// )?;
/// assert_eq!(config.region.as_deref(), Some("us-east-1"));
/// assert_eq!(config.reader, ReaderKind::FanOut);
/// # Ok::<(), tributary_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KinesisConfig {
    /// The AWS region; the default chain's (AWS_REGION, the profile) when unset.
    pub region: Option<String>,
    /// Another endpoint than AWS's, such as a local emulator (`http://127.0.0.1:4568`).
    pub endpoint: Option<String>,
    /// The AWS profile to take credentials and region from (AWS_PROFILE otherwise).
    pub profile: Option<String>,
    /// Polling or enhanced fan-out consumers.
    pub reader: ReaderKind,
    /// The enhanced fan-out consumer name. Unset: the members of a group with leases in
    /// DynamoDB share one named after the lease table (kept on close); any other
    /// consumer registers its own `tributary-<random>` and deregisters it on close.
    pub fan_out_consumer: Option<String>,
    /// Time between GetRecords calls of one shard; Kinesis allows five per second per
    /// shard, so at least 200 ms.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Records asked for per GetRecords call (1 to 10,000).
    pub records_per_read: u32,
    /// An enhanced fan-out subscription is renewed after this long (Kinesis ends each
    /// after 5 minutes).
    #[serde(with = "humantime_serde")]
    pub resubscribe_after: Duration,
    /// How often consumers list shards to find new ones (children are also found at
    /// once when their parents end).
    #[serde(with = "humantime_serde")]
    pub shard_refresh: Duration,
    /// How long a producer trusts its map of open shards before listing them again.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// Store headers and event timestamps in a versioned envelope inside the record
    /// data (see the crate docs). Off: records with headers are refused, and other
    /// Kinesis clients read the data exactly as sent.
    pub headers_envelope: bool,
    /// Never put two records of one key in one PutRecords call, so a partial failure
    /// cannot reorder them. Turning it off packs hot keys into fewer calls but a
    /// retried record may land after a later record of its key.
    pub strict_key_order: bool,
    /// The largest record accepted: partition key plus data (with the envelope), at
    /// most 1 MiB.
    pub max_record_bytes: usize,
    /// How long a send keeps retrying throttled or failed entries before giving up.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// The first retry delay; each retry doubles it, up to `retry_max`, and the delay
    /// used is a random fraction of that (full jitter).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// The largest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// The longest one request may take before it is abandoned.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long admin calls wait for a stream to become ACTIVE or disappear.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Where consumer groups keep leases and checkpoints.
    pub leases: LeaseStoreKind,
    /// The DynamoDB endpoint for lease tables, when not AWS's for the region (a local
    /// DynamoDB-compatible server such as `http://127.0.0.1:4569`).
    pub dynamodb_endpoint: Option<String>,
    /// The lease table's name. Unset: `tributary-<stream>-<group>-<hash>`, one table
    /// per stream and group. Never share one table between streams or groups.
    pub lease_table: Option<String>,
    /// How long a group member's lease lasts without renewal: a member that stops
    /// renewing (a crash, a network partition) loses its shards to the others after
    /// this long. Leases are renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub failover: Duration,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            profile: None,
            reader: ReaderKind::default(),
            fan_out_consumer: None,
            poll_interval: Duration::from_millis(200),
            records_per_read: 10_000,
            resubscribe_after: Duration::from_secs(270),
            shard_refresh: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(30),
            headers_envelope: false,
            strict_key_order: true,
            max_record_bytes: KINESIS_MAX_RECORD_BYTES,
            delivery_timeout: Duration::from_secs(120),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(300),
            leases: LeaseStoreKind::default(),
            dynamodb_endpoint: None,
            lease_table: None,
            failover: Duration::from_secs(10),
        }
    }
}

/// URL keys people reach for that would put credentials in a URL.
const CREDENTIAL_KEYS: &[&str] = &[
    "access_key",
    "access_key_id",
    "aws_access_key_id",
    "secret",
    "secret_key",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "password",
];

impl KinesisConfig {
    /// Settings for `region` with a custom endpoint (an emulator), the rest default.
    pub fn local(region: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            region: Some(region.into()),
            endpoint: Some(endpoint.into()),
            ..Self::default()
        }
    }

    /// Parses `kinesis://?region=...&endpoint=...&key=value`.
    ///
    /// # Errors
    /// `InvalidConfig` naming the bad key or value, or a credential in the URL.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        url.expect_scheme(Self::SCHEME)?;
        if !url.target.is_empty() {
            return Err(Error::invalid_config(format!(
                "kinesis:// takes no target (got {:?}): use kinesis://?region=REGION&endpoint=URL",
                url.target
            )));
        }
        if let Some(key) = url
            .query_keys()
            .into_iter()
            .find(|k| CREDENTIAL_KEYS.contains(&k.to_ascii_lowercase().as_str()))
        {
            return Err(Error::invalid_config(format!(
                "kinesis:// takes no credentials (`{key}`): they come from the default AWS chain \
                 (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO, instance roles)"
            )));
        }
        let config: Self = url.query_config()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a `kinesis://` URL string (see [`KinesisConfig::from_url`]).
    ///
    /// # Errors
    /// As [`KinesisConfig::from_url`].
    pub fn from_url_str(url: &str) -> Result<Self> {
        Self::from_url(&BackendUrl::parse(url)?)
    }

    /// Checks the settings without connecting.
    ///
    /// # Errors
    /// `InvalidConfig` naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid_config(format!("kinesis:// {why}")));
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return bad("region is empty".into());
        }
        if let Some(endpoint) = &self.endpoint {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok || endpoint.len() <= "https://".len() {
                return bad(format!("endpoint {endpoint:?} is not an http:// or https:// URL"));
            }
        }
        if let Some(endpoint) = &self.dynamodb_endpoint {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok || endpoint.len() <= "https://".len() {
                return bad(format!(
                    "dynamodb_endpoint {endpoint:?} is not an http:// or https:// URL"
                ));
            }
        }
        if let Some(name) = &self.lease_table
            && !valid_table_name(name)
        {
            return bad(format!(
                "lease_table {name:?} must be 3 to 255 characters of A-Z a-z 0-9 _ . -"
            ));
        }
        if let Some(name) = &self.fan_out_consumer {
            let ok = (1..=128).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return bad(format!(
                    "fan_out_consumer {name:?} must be 1 to 128 characters of A-Z a-z 0-9 _ . -"
                ));
            }
        }
        if !(1..=10_000).contains(&self.records_per_read) {
            return bad(format!(
                "records_per_read must be 1 to 10000, got {}",
                self.records_per_read
            ));
        }
        if !(1..=KINESIS_MAX_RECORD_BYTES).contains(&self.max_record_bytes) {
            return bad(format!(
                "max_record_bytes must be 1 to {KINESIS_MAX_RECORD_BYTES} (Kinesis's limit), got {}",
                self.max_record_bytes
            ));
        }
        let durations = [
            (
                "poll_interval",
                self.poll_interval,
                Duration::from_millis(200),
                Duration::from_secs(60),
            ),
            (
                "resubscribe_after",
                self.resubscribe_after,
                Duration::from_millis(100),
                Duration::from_secs(300),
            ),
            (
                "shard_refresh",
                self.shard_refresh,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            ),
            (
                "metadata_refresh",
                self.metadata_refresh,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            ),
            (
                "delivery_timeout",
                self.delivery_timeout,
                Duration::from_millis(1),
                Duration::from_secs(86_400),
            ),
            (
                "retry_base",
                self.retry_base,
                Duration::from_millis(1),
                Duration::from_secs(60),
            ),
            (
                "retry_max",
                self.retry_max,
                Duration::from_millis(1),
                Duration::from_secs(600),
            ),
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_millis(100),
                Duration::from_secs(600),
            ),
            (
                "failover",
                self.failover,
                Duration::from_millis(300),
                MAX_FAILOVER,
            ),
            (
                "operation_timeout",
                self.operation_timeout,
                Duration::from_millis(100),
                Duration::from_secs(86_400),
            ),
        ];
        for (name, value, min, max) in durations {
            if value < min || value > max {
                return bad(format!("{name} must be {min:?} to {max:?}, got {value:?}"));
            }
        }
        if self.retry_max < self.retry_base {
            return bad(format!(
                "retry_max ({:?}) must be at least retry_base ({:?})",
                self.retry_max, self.retry_base
            ));
        }
        Ok(())
    }
}

/// DynamoDB's rule for table names.
pub(crate) fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_sets_options() -> Result<()> {
        let config = KinesisConfig::from_url_str(
            "kinesis://?region=eu-west-1&endpoint=http://127.0.0.1:4568&poll_interval=1s&headers_envelope=true&strict_key_order=false",
        )?;
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:4568"));
        assert_eq!(config.poll_interval, Duration::from_secs(1));
        assert!(config.headers_envelope);
        assert!(!config.strict_key_order);
        Ok(())
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_echoing_them() {
        let err = KinesisConfig::from_url_str("kinesis://?region=us-east-1&aws_secret_access_key=hunter2")
            .expect_err("credentials refused");
        assert_eq!(err.kind(), tributary_core::ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("default AWS chain"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (url, needle) in [
            ("kinesis://?poll_interval=100ms", "poll_interval"),
            ("kinesis://?records_per_read=0", "records_per_read"),
            ("kinesis://?max_record_bytes=2000000", "max_record_bytes"),
            ("kinesis://?endpoint=localhost:4568", "endpoint"),
            ("kinesis://?reader=push", "reader"),
            ("kinesis://?fan_out_consumer=a%20b", "fan_out_consumer"),
            ("kinesis://?resubscribe_after=6m", "resubscribe_after"),
            ("kinesis://?nonsense=1", "nonsense"),
            ("kinesis://?failover=100ms", "failover"),
            ("kinesis://?leases=redis", "leases"),
            ("kinesis://?lease_table=a%2Fb", "lease_table"),
            ("kinesis://?dynamodb_endpoint=localhost", "dynamodb_endpoint"),
            ("kinesis://us-east-1", "no target"),
            ("kafka://h:1", "kinesis://"),
        ] {
            let err = KinesisConfig::from_url_str(url).expect_err(url);
            assert_eq!(err.kind(), tributary_core::ErrorKind::InvalidConfig, "{url}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn toml_and_serde_roundtrip() {
        let config = KinesisConfig {
            reader: ReaderKind::FanOut,
            fan_out_consumer: Some("app-1".into()),
            leases: LeaseStoreKind::Memory,
            failover: Duration::from_secs(3),
            ..KinesisConfig::local("us-east-1", "http://127.0.0.1:4568")
        };
        let text = toml::to_string(&config).expect("serializes");
        let back: KinesisConfig = toml::from_str(&text).expect("parses");
        assert_eq!(back, config);
    }
}
