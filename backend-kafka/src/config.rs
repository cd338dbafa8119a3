//! Settings of the Kafka backend: named options for what most applications set, a
//! checked pass-through for the rest of librdkafka's keys, and the safe defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use tributary_core::raw::BackendUrl;
use tributary_core::raw::EngineConfig;
use tributary_core::{Error, Result};

/// A secret (a password or a private key): kept in memory as given, never shown.
///
/// `Debug`, `Display` and `Serialize` print `<redacted>`; only the client library
/// configuration sees the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// How the client talks to the brokers (Kafka's `security.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without TLS: the credentials cross the network readable.
    /// Refused unless `allow_sasl_plaintext` is set.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// SASL mechanism (Kafka's `sasl.mechanism`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum SaslMechanism {
    /// `PLAIN`: username and password.
    #[default]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Producer compression codec (Kafka's `compression.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None (Kafka's default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Whether consumers see records of transactions not (yet) committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional ones).
    #[default]
    ReadCommitted,
    /// Everything, including records of aborted transactions.
    ReadUncommitted,
}

/// Settings of the Kafka backend. From a URL
/// (`kafka://host:port[,host:port]?linger=2ms&librdkafka.fetch.max.bytes=1048576`),
/// a TOML table (`backend = "kafka"`), or code.
///
/// Tributary sets, and does not let the pass-through change, what its guarantees rest
/// on: idempotent producer with `acks=all`, CRC checks on fetched records, no automatic
/// commits or offset stores (only acknowledged records are committed), Java-compatible
/// murmur2 partitioning of keyed records.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port]` (the URL's target).
    pub bootstrap: String,
    /// Client id sent to the brokers (default `tributary`).
    pub client_id: String,
    /// Transport security.
    pub security_protocol: SecurityProtocol,
    /// Allows `security_protocol = "sasl_plaintext"` (credentials sent unencrypted).
    pub allow_sasl_plaintext: bool,
    /// SASL mechanism, with `sasl_*` protocols.
    pub sasl_mechanism: SaslMechanism,
    /// SASL username.
    pub sasl_username: Option<String>,
    /// SASL password (redacted in Debug and errors).
    pub sasl_password: Option<Secret>,
    /// CA certificate file to verify the brokers.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate file, for TLS client authentication.
    pub ssl_certificate_location: Option<PathBuf>,
    /// Client private key file.
    pub ssl_key_location: Option<PathBuf>,
    /// Password of the client private key (redacted).
    pub ssl_key_password: Option<Secret>,
    /// Producer compression.
    pub compression: Compression,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a send may take before it fails (`message.timeout.ms`); a record that
    /// may have reached a broker then fails as `Indeterminate`.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Timeout of one request to a broker.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A group member that sends no heartbeat for this long is removed from the group.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest time between two polls of a group member before it leaves the group.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// How often topic metadata is refreshed, so added partitions are picked up.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// Timeout of admin operations and metadata lookups.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Replication factor of created topics; the broker's default when unset.
    pub replication_factor: Option<i16>,
    /// Largest record (key + value + headers) a producer accepts (`message.max.bytes`).
    pub max_record_bytes: usize,
    /// Transaction isolation of consumers.
    pub isolation: Isolation,
    /// Other librdkafka settings, by librdkafka's names (in a URL: `librdkafka.NAME=VALUE`).
    /// Checked by librdkafka; the settings Tributary's guarantees rest on are refused.
    /// Values of secret-looking names (password, secret, pem, token, oauthbearer...) are redacted
    /// when shown or serialized.
    #[serde(serialize_with = "serialize_passthrough")]
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap: String::new(),
            client_id: "tributary".into(),
            security_protocol: SecurityProtocol::default(),
            allow_sasl_plaintext: false,
            sasl_mechanism: SaslMechanism::default(),
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            compression: Compression::default(),
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            metadata_refresh: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            replication_factor: None,
            max_record_bytes: 1_000_000,
            isolation: Isolation::default(),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passthrough: BTreeMap<&str, &str> = self
            .librdkafka
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_key(k) { REDACTED } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap", &self.bootstrap)
            .field("client_id", &self.client_id)
            .field("security_protocol", &self.security_protocol)
            .field("allow_sasl_plaintext", &self.allow_sasl_plaintext)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field("ssl_key_password", &self.ssl_key_password)
            .field("compression", &self.compression)
            .field("linger", &self.linger)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("max_poll_interval", &self.max_poll_interval)
            .field("metadata_refresh", &self.metadata_refresh)
            .field("operation_timeout", &self.operation_timeout)
            .field("replication_factor", &self.replication_factor)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("isolation", &self.isolation)
            .field("librdkafka", &passthrough)
            .finish()
    }
}

fn serialize_passthrough<S: serde::Serializer>(
    map: &BTreeMap<String, String>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_map(
        map.iter()
            .map(|(k, v)| (k, if is_secret_key(k) { REDACTED } else { v.as_str() })),
    )
}

/// librdkafka settings whose values are secrets: never echoed.
fn is_secret_key(key: &str) -> bool {
    [
        "password",
        "secret",
        "pem",
        "jaas",
        "token",
        "credentials",
        "oauthbearer",
        "ssl.key",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// librdkafka settings Tributary owns, with what to use instead.
const OWNED_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "the URL's target or `bootstrap`"),
    ("metadata.broker.list", "the URL's target or `bootstrap`"),
    ("group.id", "ConsumerConfig::group"),
    ("enable.auto.commit", "Consumer::ack and Consumer::commit"),
    ("enable.auto.offset.store", "Consumer::ack and Consumer::commit"),
    ("auto.offset.reset", "ConsumerConfig::start_from"),
    (
        "enable.partition.eof",
        "nothing: Tributary reads partitions continuously",
    ),
    ("enable.idempotence", "nothing: the producer is always idempotent"),
    (
        "acks",
        "nothing: the producer always waits for all in-sync replicas",
    ),
    (
        "request.required.acks",
        "nothing: the producer always waits for all in-sync replicas",
    ),
    (
        "partitioner",
        "nothing: keyed records use Kafka's murmur2 partitioner",
    ),
    ("check.crcs", "nothing: fetched records are always CRC-checked"),
    ("client.id", "`client_id`"),
    ("security.protocol", "`security_protocol`"),
    ("sasl.mechanism", "`sasl_mechanism`"),
    ("sasl.mechanisms", "`sasl_mechanism`"),
    ("sasl.username", "`sasl_username`"),
    ("sasl.password", "`sasl_password`"),
    ("ssl.ca.location", "`ssl_ca_location`"),
    ("ssl.certificate.location", "`ssl_certificate_location`"),
    ("ssl.key.location", "`ssl_key_location`"),
    ("ssl.key.password", "`ssl_key_password`"),
    ("compression.type", "`compression`"),
    ("compression.codec", "`compression`"),
    ("linger.ms", "`linger`"),
    ("queue.buffering.max.ms", "`linger`"),
    ("message.timeout.ms", "`delivery_timeout`"),
    ("delivery.timeout.ms", "`delivery_timeout`"),
    ("session.timeout.ms", "`session_timeout`"),
    ("max.poll.interval.ms", "`max_poll_interval`"),
    ("topic.metadata.refresh.interval.ms", "`metadata_refresh`"),
    ("message.max.bytes", "`max_record_bytes`"),
    ("isolation.level", "`isolation`"),
    (
        "partition.assignment.strategy",
        "nothing: groups rebalance cooperatively",
    ),
];

const URL_PASSTHROUGH_PREFIX: &str = "librdkafka.";

/// Which client a librdkafka configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Producer,
    Consumer,
    Admin,
}

impl KafkaConfig {
    /// Settings for the given bootstrap brokers, everything else default.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            ..Self::default()
        }
    }

    /// Parses `kafka://host:port[,host:port]?key=value&librdkafka.NAME=VALUE`.
    ///
    /// # Errors
    /// `InvalidConfig` naming the bad key or value; values are never echoed.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        url.expect_scheme(Self::SCHEME)?;
        let mut named = form_urlencoded::Serializer::new(String::new());
        let mut passthrough = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(url.query.as_bytes()) {
            match key.strip_prefix(URL_PASSTHROUGH_PREFIX) {
                Some(name) => {
                    passthrough.insert(name.to_string(), value.into_owned());
                }
                None => {
                    named.append_pair(&key, &value);
                }
            }
        }
        let mut config: Self = tributary_core::raw::query_config(Self::SCHEME, &named.finish())?;
        if let Some(brokers) = url.target_as("bootstrap", "the brokers")? {
            config.bootstrap = brokers.to_string();
        }
        config.librdkafka.extend(passthrough);
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings without connecting.
    ///
    /// # Errors
    /// `InvalidConfig` naming what is wrong (never echoing a secret).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid_config(format!("kafka:// {why}")));
        if self.bootstrap.trim().is_empty() {
            return bad("needs bootstrap brokers: kafka://host:port[,host:port]".into());
        }
        for broker in self.bootstrap.split(',') {
            let broker = broker.trim();
            let port_ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return bad(format!("broker {broker:?} is not host:port"));
            }
        }
        if self.security_protocol == SecurityProtocol::SaslPlaintext && !self.allow_sasl_plaintext {
            return bad(
                "security_protocol sasl_plaintext sends the SASL password unencrypted: use sasl_ssl, \
                 or set allow_sasl_plaintext=true to accept that"
                    .into(),
            );
        }
        let has_sasl = self.sasl_username.is_some() || self.sasl_password.is_some();
        if has_sasl && !self.security_protocol.uses_sasl() {
            return bad(format!(
                "SASL credentials are set but security_protocol is {}: use sasl_ssl",
                self.security_protocol.as_librdkafka()
            ));
        }
        if self.security_protocol.uses_sasl()
            && (self.sasl_username.is_none() || self.sasl_password.is_none())
        {
            return bad("sasl_* security protocols need sasl_username and sasl_password".into());
        }
        let has_tls_files = self.ssl_ca_location.is_some()
            || self.ssl_certificate_location.is_some()
            || self.ssl_key_location.is_some()
            || self.ssl_key_password.is_some();
        if has_tls_files && !self.security_protocol.uses_tls() {
            return bad(format!(
                "TLS settings are set but security_protocol is {}: use ssl or sasl_ssl",
                self.security_protocol.as_librdkafka()
            ));
        }
        let durations = [
            ("linger", self.linger, Duration::ZERO, Duration::from_secs(900)),
            (
                "delivery_timeout",
                self.delivery_timeout,
                Duration::from_millis(1),
                MAX_MS,
            ),
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_millis(1),
                Duration::from_secs(900),
            ),
            (
                "session_timeout",
                self.session_timeout,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
            (
                "max_poll_interval",
                self.max_poll_interval,
                Duration::from_millis(1),
                Duration::from_secs(86_400),
            ),
            (
                "metadata_refresh",
                self.metadata_refresh,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            ),
            (
                "operation_timeout",
                self.operation_timeout,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
        ];
        for (name, value, min, max) in durations {
            if value < min || value > max {
                return bad(format!("{name} must be {min:?} to {max:?}, got {value:?}"));
            }
        }
        if self.max_poll_interval < self.session_timeout {
            return bad(format!(
                "max_poll_interval ({:?}) must be at least session_timeout ({:?})",
                self.max_poll_interval, self.session_timeout
            ));
        }
        if !(1000..=1_000_000_000).contains(&self.max_record_bytes) {
            return bad(format!(
                "max_record_bytes must be 1000 to 1000000000, got {}",
                self.max_record_bytes
            ));
        }
        if self.replication_factor.is_some_and(|r| r < 1) {
            return bad("replication_factor must be at least 1".into());
        }
        for key in self.librdkafka.keys() {
            if let Some((_, instead)) = OWNED_KEYS.iter().find(|(owned, _)| owned == key) {
                return bad(format!(
                    "librdkafka setting `{key}` is managed by Tributary; use {instead}"
                ));
            }
        }
        for role in [Role::Producer, Role::Consumer, Role::Admin] {
            self.client_config(role, None)
                .create_native_config()
                .map_err(|e| match e {
                    KafkaError::ClientConfig(_, description, key, _) if !is_secret_key(&key) => {
                        Error::invalid_config(format!(
                            "kafka:// librdkafka setting `{key}` is not valid: {description}"
                        ))
                    }
                    KafkaError::ClientConfig(_, _, key, _) => Error::invalid_config(format!(
                        "kafka:// librdkafka setting `{key}` is not valid (its value is a secret, not shown)"
                    )),
                    other => Error::invalid_config(format!("kafka:// invalid librdkafka settings: {other}")),
                })?;
        }
        Ok(())
    }

    /// Every secret value in these settings (to scrub from messages).
    pub(crate) fn secret_values(&self) -> Vec<String> {
        let named = [&self.sasl_password, &self.ssl_key_password]
            .into_iter()
            .flatten()
            .map(|s| s.expose().to_string());
        let passthrough = self
            .librdkafka
            .iter()
            .filter(|(k, _)| is_secret_key(k))
            .map(|(_, v)| v.clone());
        named.chain(passthrough).collect()
    }

    /// The librdkafka configuration of one client.
    pub(crate) fn client_config(&self, role: Role, group: Option<&str>) -> ClientConfig {
        let mut c = ClientConfig::new();
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128).to_string();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false")
            .set("security.protocol", self.security_protocol.as_librdkafka())
            .set(
                "socket.timeout.ms",
                ms(self.request_timeout.max(Duration::from_millis(10))),
            )
            .set("topic.metadata.refresh.interval.ms", ms(self.metadata_refresh))
            .set("message.max.bytes", (self.max_record_bytes + 1024).to_string());
        if self.security_protocol.uses_sasl() {
            c.set("sasl.mechanism", self.sasl_mechanism.as_librdkafka());
            if let Some(user) = &self.sasl_username {
                c.set("sasl.username", user);
            }
            if let Some(password) = &self.sasl_password {
                c.set("sasl.password", password.expose());
            }
        }
        let paths = [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (key, path) in paths {
            if let Some(path) = path {
                c.set(key, path.to_string_lossy());
            }
        }
        if let Some(password) = &self.ssl_key_password {
            c.set("ssl.key.password", password.expose());
        }
        match role {
            Role::Producer => {
                c.set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("partitioner", "murmur2_random")
                    .set("compression.type", self.compression.as_librdkafka())
                    .set("linger.ms", ms(self.linger))
                    .set("message.timeout.ms", ms(self.delivery_timeout))
                    .set("request.timeout.ms", ms(self.request_timeout));
            }
            Role::Consumer => {
                c.set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    // librdkafka's default (1 s) stalls fetching for a whole second each
                    // time the local queue passes queued.min.messages: it held a reader
                    // of 100 B records to ~180 k rec/s here, against ~1.5 M with 10 ms.
                    .set("fetch.queue.backoff.ms", "10")
                    .set("enable.partition.eof", "false")
                    .set("check.crcs", "true")
                    .set("auto.offset.reset", "earliest")
                    .set("session.timeout.ms", ms(self.session_timeout))
                    .set(
                        "heartbeat.interval.ms",
                        ms((self.session_timeout / 5)
                            .clamp(Duration::from_millis(1), Duration::from_secs(3))),
                    )
                    .set("max.poll.interval.ms", ms(self.max_poll_interval))
                    .set("partition.assignment.strategy", "cooperative-sticky")
                    .set(
                        "isolation.level",
                        match self.isolation {
                            Isolation::ReadCommitted => "read_committed",
                            Isolation::ReadUncommitted => "read_uncommitted",
                        },
                    );
                if let Some(group) = group {
                    c.set("group.id", group);
                }
            }
            Role::Admin => {}
        }
        for (key, value) in &self.librdkafka {
            if !role_excludes(role, key) {
                c.set(key, value);
            }
        }
        c
    }
}

/// `message.timeout.ms` is an i32 of milliseconds in librdkafka.
const MAX_MS: Duration = Duration::from_millis(i32::MAX as u64);

/// Producer-only settings are not given to consumers and the other way round, so
/// librdkafka does not warn about them.
fn role_excludes(role: Role, key: &str) -> bool {
    const PRODUCER_ONLY: &[&str] = &[
        "batch.size",
        "batch.num.messages",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "retries",
        "message.send.max.retries",
        "retry.backoff.ms",
        "sticky.partitioning.linger.ms",
        "request.timeout.ms",
    ];
    const CONSUMER_ONLY: &[&str] = &[
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.wait.max.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "heartbeat.interval.ms",
        "group.instance.id",
        "group.protocol",
    ];
    match role {
        Role::Producer => CONSUMER_ONLY.contains(&key),
        Role::Consumer => PRODUCER_ONLY.contains(&key),
        Role::Admin => PRODUCER_ONLY.contains(&key) || CONSUMER_ONLY.contains(&key),
    }
}

#[cfg(test)]
mod tests {
    use tributary_core::ErrorKind;

    use super::*;

    fn parse(url: &str) -> Result<KafkaConfig> {
        KafkaConfig::from_url(&BackendUrl::parse(url)?)
    }

    #[test]
    fn url_target_is_the_broker_list_and_passthrough_is_prefixed() {
        let c = parse("kafka://h1:9092,h2:9093?linger=2ms&librdkafka.fetch.wait.max.ms=50").unwrap();
        assert_eq!(c.bootstrap, "h1:9092,h2:9093");
        assert_eq!(c.linger, Duration::from_millis(2));
        assert_eq!(
            c.librdkafka.get("fetch.wait.max.ms").map(String::as_str),
            Some("50")
        );
    }

    #[test]
    fn safe_defaults_are_set_for_each_client() {
        let c = KafkaConfig::new("127.0.0.1:9092");
        let producer = c.client_config(Role::Producer, None);
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("partitioner"), Some("murmur2_random"));
        let consumer = c.client_config(Role::Consumer, Some("g"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("check.crcs"), Some("true"));
        assert_eq!(
            consumer.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        for role in [Role::Producer, Role::Consumer, Role::Admin] {
            let client = c.client_config(role, None);
            assert_eq!(client.get("allow.auto.create.topics"), Some("false"), "{role:?}");
        }
    }

    #[test]
    fn owned_settings_cannot_be_overridden() {
        for key in [
            "enable.idempotence",
            "acks",
            "enable.auto.commit",
            "sasl.password",
            "group.id",
        ] {
            let err = parse(&format!("kafka://h:9092?librdkafka.{key}=x")).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let err = parse("kafka://h:9092?librdkafka.no.such.thing=1").unwrap_err();
        assert!(err.to_string().contains("no.such.thing"), "{err}");
        let err = parse("kafka://h:9092?lingr=2ms").unwrap_err();
        assert!(
            err.to_string().contains("lingr") && err.to_string().contains("linger"),
            "{err}"
        );
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://host:0",
            "kafka://:9092",
            "kafka://h:9092,",
        ] {
            assert_eq!(parse(bad).unwrap_err().kind(), ErrorKind::InvalidConfig, "{bad}");
        }
        let err = parse("kafka://h:9092?session_timeout=0s").unwrap_err();
        assert!(err.to_string().contains("session_timeout"), "{err}");
    }

    #[test]
    fn sasl_without_tls_is_refused_unless_allowed() {
        let err = parse("kafka://h:9092?security_protocol=sasl_plaintext&sasl_username=u&sasl_password=p")
            .unwrap_err();
        assert!(err.to_string().contains("allow_sasl_plaintext"), "{err}");
        parse("kafka://h:9092?security_protocol=sasl_plaintext&sasl_username=u&sasl_password=p&allow_sasl_plaintext=true")
            .unwrap();
        let err = parse("kafka://h:9092?sasl_username=u&sasl_password=p").unwrap_err();
        assert!(err.to_string().contains("sasl_ssl"), "{err}");
        let err = parse("kafka://h:9092?ssl_ca_location=/ca.pem").unwrap_err();
        assert!(err.to_string().contains("ssl"), "{err}");
    }

    #[test]
    fn secrets_never_show() {
        let canary = "canary-7f3a-secret";
        let c = parse(&format!(
            "kafka://h:9092?security_protocol=sasl_ssl&sasl_mechanism=SCRAM-SHA-512&sasl_username=u\
             &sasl_password={canary}&ssl_key_password={canary}&librdkafka.ssl.keystore.password={canary}"
        ))
        .unwrap();
        assert_eq!(c.sasl_mechanism, SaslMechanism::ScramSha512);
        let shown = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!shown.contains(canary), "{shown}");
        assert!(shown.contains(REDACTED));
        let err = parse(&format!(
            "kafka://h:9092?security_protocol=sasl_ssl&sasl_username=u&sasl_password={canary}\
             &librdkafka.ssl.keystore.password=x&librdkafka.ssl_engine_id={canary}&librdkafka.socket.timeout.ms=notanumber"
        ))
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(canary), "{err:?}");
    }
}
