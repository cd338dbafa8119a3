//! What an engine's settings must offer so that the facade can list the engine once:
//! a scheme, reading from a URL or a TOML table, checking, and connecting.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Backend;
use crate::error::Result;
use crate::url::BackendUrl;

/// An engine's settings. The `tributary` facade's list of engines holds one line per
/// implementer; everything it does with an engine (parse a URL, read a TOML table,
/// validate, connect) goes through this trait. See docs/writing-an-engine.md.
///
/// Deserializing (from a TOML table without its `backend` key) must refuse unknown
/// keys, so that a misspelt setting is an error rather than a default.
pub trait EngineConfig:
    Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The URL scheme and the TOML `backend` name, such as `"native"`; the facade's
    /// cargo feature for the engine has the same name.
    const SCHEME: &'static str;

    /// Reads the settings from a URL of this scheme (already parsed), validated.
    ///
    /// # Errors
    /// `InvalidConfig` for another scheme, or a bad or unknown option naming it.
    fn from_url(url: &BackendUrl) -> Result<Self>;

    /// Checks settings built in code or read from a file.
    ///
    /// # Errors
    /// `InvalidConfig` naming the bad key.
    fn validate(&self) -> Result<()>;

    /// Asks the engine to keep record headers (and keys) even where it has to encode
    /// them into the payload to do so. Engines whose records carry headers natively
    /// have nothing to do.
    fn keep_headers(&mut self) {}

    /// Opens the engine: connects to it, or reads (and recovers) its data.
    ///
    /// # Errors
    /// `InvalidConfig` for bad settings, or the engine's connection or open error.
    /// Cancel safe: dropping the future leaves no engine open.
    fn connect(self) -> impl Future<Output = Result<Arc<dyn Backend>>> + Send;
}
