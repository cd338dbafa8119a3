//! Choosing an engine: one config enum, reached from a URL, a TOML file or the
//! environment, generated from the one list of engines below.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary_core::raw::EngineConfig;
use tributary_core::raw::{BackendUrl, describe_config_error};
use tributary_core::{Backend, Error, MemoryConfig, Result};

/// The one list of engines: a line each, `Variant(ConfigType) = "scheme"`, the scheme
/// being the name of the cargo feature that compiles the engine in and the variant's
/// name in lowercase (serde's `backend` tag; the in-memory engine, first, is always
/// compiled). Everything below that matches over engines is
/// generated from it; each config type implements [`EngineConfig`]. Adding an engine:
/// its crate, a feature of that name in Cargo.toml, and one line here.
macro_rules! engines {
    (
        $(#[$always_doc:meta])* $always:ident($always_ty:ty) = $always_scheme:literal;
        $($(#[$doc:meta])* $variant:ident($ty:ty) = $scheme:literal;)*
    ) => {
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
            $(#[$always_doc])*
            $always($always_ty),
            $($(#[$doc])* #[cfg(feature = $scheme)] $variant($ty),)*
        }

        // The scheme written in the list is the one the engine answers to.
        const _: () = assert!(same_str(<$always_ty as EngineConfig>::SCHEME, $always_scheme));
        $(
            #[cfg(feature = $scheme)]
            const _: () = assert!(same_str(<$ty as EngineConfig>::SCHEME, $scheme));
        )*

        /// Every scheme Tributary knows, with its cargo feature (`None`: always
        /// compiled) and whether this build has it.
        const SCHEMES: &[(&str, Option<&str>, bool)] = &[
            ($always_scheme, None, true),
            $(($scheme, Some($scheme), cfg!(feature = $scheme)),)*
        ];

        impl Config {
            /// The settings of the engine `scheme` names, from a parsed URL.
            fn parse_url(scheme: &str, url: &BackendUrl) -> Result<Self> {
                match scheme {
                    $always_scheme => Ok(Self::$always(<$always_ty as EngineConfig>::from_url(url)?)),
                    $(#[cfg(feature = $scheme)] $scheme => Ok(Self::$variant(<$ty as EngineConfig>::from_url(url)?)),)*
                    other => Err(unusable(other)),
                }
            }

            /// The settings of the engine `backend` names, from the rest of its table.
            fn parse_table(backend: &str, table: toml::Table) -> Result<Self> {
                match backend {
                    $always_scheme => Ok(Self::$always(backend_settings(backend, table)?)),
                    $(#[cfg(feature = $scheme)] $scheme => Ok(Self::$variant(backend_settings(backend, table)?)),)*
                    other => Err(unusable(other)),
                }
            }

            /// The backend's name (`memory`, ...).
            pub fn backend_name(&self) -> &'static str {
                match self {
                    Self::$always(_) => <$always_ty as EngineConfig>::SCHEME,
                    $(#[cfg(feature = $scheme)] Self::$variant(_) => <$ty as EngineConfig>::SCHEME,)*
                }
            }

            fn validate(&self) -> Result<()> {
                match self {
                    Self::$always(c) => c.validate(),
                    $(#[cfg(feature = $scheme)] Self::$variant(c) => c.validate(),)*
                }
            }

            /// Asks the engine to keep record headers (and keys) even where it has to
            /// encode them into the payload (Kinesis: the headers envelope); engines
            /// with native headers have nothing to do.
            pub fn keep_headers(&mut self) {
                match self {
                    Self::$always(c) => c.keep_headers(),
                    $(#[cfg(feature = $scheme)] Self::$variant(c) => c.keep_headers(),)*
                }
            }

            /// Opens the engine (see [`EngineConfig::connect`]).
            pub(crate) async fn connect(self) -> Result<Arc<dyn Backend>> {
                match self {
                    Self::$always(c) => c.connect().await,
                    $(#[cfg(feature = $scheme)] Self::$variant(c) => c.connect().await,)*
                }
            }
        }
    };
}

engines! {
    /// The in-memory engine (`memory://`), always compiled in.
    Memory(MemoryConfig) = "memory";
    /// The embedded durable log (`native:///path`), feature `native` (default).
    Native(tributary_native::NativeConfig) = "native";
    /// An Apache Kafka cluster (feature `kafka`).
    Kafka(tributary_kafka::KafkaConfig) = "kafka";
    /// Amazon Kinesis Data Streams or an emulator (feature `kinesis`).
    Kinesis(tributary_kinesis::KinesisConfig) = "kinesis";
}

/// String equality in a constant (`==` on `str` is not const).
const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether this build of Tributary can use a URL scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemeSupport {
    /// Compiled in.
    Available,
    /// Exists behind a cargo feature of the `tributary` crate that is off.
    FeatureOff(&'static str),
}

/// How this build supports `scheme`; `None` for a scheme Tributary does not know.
pub fn scheme_support(scheme: &str) -> Option<SchemeSupport> {
    let (_, feature, compiled) = SCHEMES.iter().find(|(s, _, _)| *s == scheme)?;
    Some(match feature {
        Some(feature) if !compiled => SchemeSupport::FeatureOff(feature),
        _ => SchemeSupport::Available,
    })
}

fn compiled_schemes() -> String {
    SCHEMES
        .iter()
        .filter(|(_, _, compiled)| *compiled)
        .map(|(s, _, _)| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A clear error for a scheme this build cannot use.
fn unusable(scheme: &str) -> Error {
    match scheme_support(scheme) {
        Some(SchemeSupport::FeatureOff(feature)) => Error::invalid_config(format!(
            "the {scheme} backend is not compiled in: enable the `{feature}` feature of the tributary crate"
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
        Self::parse_url(&parsed.scheme, &parsed)
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
        let config = Self::parse_table(&backend, table)?;
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
