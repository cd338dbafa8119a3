//! Choosing an engine: one config enum, reached from a URL, a TOML file or the
//! environment. This is the one place that matches over backends.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tributary_core::{BackendUrl, Error, MemoryConfig, Result, describe_config_error};

/// Which engine to use and its settings. Serialized with a `backend` tag:
///
/// ```toml
/// backend = "memory"
/// partitions = 4
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per connection; boxing would only make matching on it clumsier"
)]
pub enum Config {
    /// The in-memory engine (`memory://`), always compiled in.
    Memory(MemoryConfig),
    /// The embedded durable log (`native:///path`), feature `native` (default).
    #[cfg(feature = "native")]
    Native(tributary_native::NativeConfig),
    /// An Apache Kafka cluster (feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(tributary_kafka::KafkaConfig),
    /// Amazon Kinesis Data Streams or an emulator (feature `kinesis`).
    #[cfg(feature = "kinesis")]
    Kinesis(tributary_kinesis::KinesisConfig),
}

/// Whether this build of Tributary can use a URL scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemeSupport {
    /// Compiled in.
    Available,
    /// Exists behind a cargo feature of the `tributary` crate that is off.
    FeatureOff(&'static str),
    /// Named in the design but not part of any build of this version.
    NotYetAvailable,
}

/// Every scheme Tributary knows, with its cargo feature (`None`: always compiled).
const SCHEMES: &[(&str, Option<&str>)] = &[
    ("memory", None),
    ("native", Some("native")),
    ("kafka", Some("kafka")),
    ("kinesis", Some("kinesis")),
];

/// Schemes whose backend is compiled in.
fn compiled(scheme: &str) -> bool {
    scheme == "memory"
        || (scheme == "native" && cfg!(feature = "native"))
        || (scheme == "kafka" && cfg!(feature = "kafka"))
        || (scheme == "kinesis" && cfg!(feature = "kinesis"))
}

/// Features that exist in this version's Cargo.toml.
fn feature_exists(feature: &str) -> bool {
    matches!(feature, "native" | "kafka" | "kinesis")
}

/// How this build supports `scheme`; `None` for a scheme Tributary does not know.
pub fn scheme_support(scheme: &str) -> Option<SchemeSupport> {
    let (_, feature) = SCHEMES.iter().find(|(s, _)| *s == scheme)?;
    Some(match feature {
        _ if compiled(scheme) => SchemeSupport::Available,
        Some(f) if feature_exists(f) => SchemeSupport::FeatureOff(f),
        _ => SchemeSupport::NotYetAvailable,
    })
}

fn compiled_schemes() -> String {
    SCHEMES
        .iter()
        .filter(|(s, _)| compiled(s))
        .map(|(s, _)| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A clear error for a scheme this build cannot use.
fn unusable(scheme: &str) -> Error {
    match scheme_support(scheme) {
        Some(SchemeSupport::FeatureOff(feature)) => Error::invalid_config(format!(
            "the {scheme} backend is not compiled in: enable the `{feature}` feature of the tributary crate"
        )),
        Some(SchemeSupport::NotYetAvailable) => Error::invalid_config(format!(
            "the {scheme} backend is not available in this version of tributary yet (compiled in: {})",
            compiled_schemes()
        )),
        _ => Error::invalid_config(format!(
            "unknown backend {scheme:?}; compiled in: {}",
            compiled_schemes()
        )),
    }
}

impl Config {
    /// Reads a backend URL such as `memory://?partitions=4`.
    ///
    /// # Errors
    /// `InvalidConfig` for a malformed URL, an unknown scheme (listing the compiled-in
    /// ones), a known scheme whose feature is off (naming the feature), or a bad or
    /// unknown option (listing the valid ones).
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = BackendUrl::parse(url)?;
        match parsed.scheme.as_str() {
            "memory" => Ok(Self::Memory(MemoryConfig::from_url(&parsed)?)),
            #[cfg(feature = "native")]
            "native" => Ok(Self::Native(tributary_native::NativeConfig::from_url(&parsed)?)),
            #[cfg(feature = "kafka")]
            "kafka" => Ok(Self::Kafka(tributary_kafka::KafkaConfig::from_url(&parsed)?)),
            #[cfg(feature = "kinesis")]
            "kinesis" => Ok(Self::Kinesis(tributary_kinesis::KinesisConfig::from_url(
                &parsed,
            )?)),
            other => Err(unusable(other)),
        }
    }

    /// Reads a TOML document with a `backend` key and the backend's settings.
    ///
    /// # Errors
    /// `InvalidConfig` for bad TOML, a missing or unusable `backend`, or a bad or
    /// unknown key.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::invalid_config(format!("invalid TOML: {e}")).with_source(e))?;
        let mut table = table;
        let backend = match table.remove("backend") {
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                return Err(Error::invalid_config(
                    "`backend` must be a string such as \"memory\"",
                ));
            }
            None => {
                return Err(Error::invalid_config(format!(
                    "the config names no `backend` (one of: {})",
                    compiled_schemes()
                )));
            }
        };
        let config = match backend.as_str() {
            "memory" => Self::Memory(backend_settings(&backend, table)?),
            #[cfg(feature = "native")]
            "native" => Self::Native(backend_settings(&backend, table)?),
            #[cfg(feature = "kafka")]
            "kafka" => Self::Kafka(backend_settings(&backend, table)?),
            #[cfg(feature = "kinesis")]
            "kinesis" => Self::Kinesis(backend_settings(&backend, table)?),
            other => return Err(unusable(other)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML config file (see [`Config::from_toml_str`]).
    ///
    /// # Errors
    /// `InvalidConfig` naming the file when it cannot be read or is invalid.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_config(format!("cannot read config file {}: {e}", path.display())).with_source(e)
        })?;
        Self::from_toml_str(&text)
            .map_err(|e| Error::invalid_config(format!("{}: {}", path.display(), e.message())))
    }

    /// The config the environment names: the URL in `TRIBUTARY_URL`, else the file
    /// in `TRIBUTARY_CONFIG`.
    ///
    /// # Errors
    /// `InvalidConfig` when neither is set, or as [`Config::from_url`] and
    /// [`Config::from_file`].
    pub fn from_env() -> Result<Self> {
        if let Ok(url) = std::env::var("TRIBUTARY_URL") {
            return Self::from_url(&url);
        }
        if let Ok(path) = std::env::var("TRIBUTARY_CONFIG") {
            return Self::from_file(path);
        }
        Err(Error::invalid_config(
            "set TRIBUTARY_URL (for example memory://) or TRIBUTARY_CONFIG (a TOML file)",
        ))
    }

    /// The backend's name (`memory`, ...).
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            #[cfg(feature = "native")]
            Self::Native(_) => "native",
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "kafka",
            #[cfg(feature = "kinesis")]
            Self::Kinesis(_) => "kinesis",
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Self::Memory(c) => c.validate(),
            #[cfg(feature = "native")]
            Self::Native(c) => c.validate(),
            #[cfg(feature = "kafka")]
            Self::Kafka(c) => c.validate(),
            #[cfg(feature = "kinesis")]
            Self::Kinesis(c) => c.validate(),
        }
    }
}

/// One backend's settings from the rest of a TOML table, with errors naming the key.
fn backend_settings<T: serde::de::DeserializeOwned>(backend: &str, table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let why = describe_config_error(e.path(), e.inner().message());
        Error::invalid_config(format!("invalid {backend} config: {why}")).with_source(e.into_inner())
    })
}

impl std::str::FromStr for Config {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}
