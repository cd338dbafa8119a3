//! Settings of the native engine.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_core::raw::BackendUrl;
use tributary_core::raw::EngineConfig;
use tributary_core::{Error, Result};

/// When a send is acknowledged, and so what a crash can lose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Once copied into the partition's buffer, before any write(): written when 256 KiB
    /// gather or every `group_commit_interval`. A crash of the process (or power)
    /// loses up to that much. For data that can be rebuilt.
    Memory,
    /// After write() returned: survives the process being killed (kill -9), not power
    /// loss. Kafka's default on one machine.
    #[default]
    PageCache,
    /// After write() returned; a background sync runs every `group_commit_interval`,
    /// so power loss loses at most that much.
    GroupCommit,
    /// After an fdatasync covering the records returned (shared by concurrent senders):
    /// survives power loss.
    Sync,
}

/// Settings of the native engine, from `native:///path?key=value&...` or a config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// The data directory. `native://` with no path uses `$TRIBUTARY_DATA_DIR`, else
    /// `./tributary-data`.
    pub path: PathBuf,
    /// When sends are acknowledged (default `page_cache`).
    pub durability: Durability,
    /// How often `group_commit` syncs, and `memory` writes out (default 10 ms).
    #[serde(with = "humantime_serde")]
    pub group_commit_interval: Duration,
    /// Partitions of a stream created without a count (default 1).
    pub partitions: u32,
    /// The largest record accepted, key + value + headers (default 1 MiB).
    pub max_record_bytes: usize,
    /// A segment file is sealed and a new one started past this size (default 256 MiB).
    pub segment_bytes: u64,
    /// ... or past this age, if set.
    #[serde(with = "humantime_serde")]
    pub segment_age: Option<Duration>,
    /// Per partition, whole old segments are deleted beyond this many bytes, if set.
    pub retention_bytes: Option<u64>,
    /// Segments whose newest record is older than this are deleted, if set (default:
    /// keep everything). A stream's own retention takes precedence.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Recent batches kept in memory per partition for caught-up readers (default 4 MiB).
    pub cache_bytes: usize,
    /// A group member that has not polled for this long loses its partitions (default 30 s).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            path: default_dir(),
            durability: Durability::default(),
            group_commit_interval: Duration::from_millis(10),
            partitions: 1,
            max_record_bytes: 1024 * 1024,
            segment_bytes: 256 * 1024 * 1024,
            segment_age: None,
            retention_bytes: None,
            retention: None,
            cache_bytes: 4 * 1024 * 1024,
            session_timeout: Duration::from_secs(30),
        }
    }
}

/// The directory used when none is given.
pub fn default_dir() -> PathBuf {
    std::env::var_os("TRIBUTARY_DATA_DIR").map_or_else(|| PathBuf::from("tributary-data"), PathBuf::from)
}

/// The largest segment: positions in the index are 32-bit.
const MAX_SEGMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024 - 64 * 1024 * 1024;

impl NativeConfig {
    /// A config for the data directory `path`, other settings default.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    /// Reads `native:///var/lib/app?durability=sync` (`native://` alone: the default
    /// directory; `native://relative/dir` is relative to the working directory).
    ///
    /// # Errors
    /// `InvalidConfig` for another scheme or a bad or unknown key (the message lists the
    /// valid keys).
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        url.expect_scheme(Self::SCHEME)?;
        let mut config: Self = url.query_config()?;
        if let Some(dir) = url.target_as("path", "the directory")? {
            config.path = PathBuf::from(dir);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// `InvalidConfig` naming the bad key.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid_config(format!("native:// {why}")));
        if self.path.as_os_str().is_empty() {
            return bad("path must not be empty".into());
        }
        if self.partitions == 0 || self.partitions > crate::MAX_PARTITIONS {
            return bad(format!(
                "partitions must be 1 to {}, got {}",
                crate::MAX_PARTITIONS,
                self.partitions
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > 64 * 1024 * 1024 {
            return bad(format!(
                "max_record_bytes must be 1 to 64 MiB, got {}",
                self.max_record_bytes
            ));
        }
        if self.segment_bytes < 4096 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(format!(
                "segment_bytes must be 4 KiB to {MAX_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            ));
        }
        if self.group_commit_interval.is_zero() {
            return bad("group_commit_interval must be above zero".into());
        }
        if self.session_timeout.is_zero()
            || self.session_timeout > tributary_core::raw::group::MAX_SESSION_TIMEOUT
        {
            return bad("session_timeout must be above zero and at most one day".into());
        }
        Ok(())
    }
}
