//! What a backend provides to run the suite: the `Harness`, its timing and its pins.

use std::sync::Arc;
use std::time::Duration;

use tributary_core::{Backend, Capabilities, MemoryBackend, MemoryConfig, Result, async_trait};

/// How long a backend may take. Every wait in the suite is an upper bound that ends as
/// soon as what is awaited happens, so generous values cost nothing when all is well.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Upper bound for expected records to arrive or a rebalance to settle.
    pub settle: Duration,
    /// Silence this long means nothing more is coming.
    pub quiet: Duration,
    /// One poll's wait while several members are polled in turn.
    pub poll: Duration,
    /// How long the engine takes to notice a member that vanished without closing
    /// (Kafka's session timeout, a Kinesis lease's failover time); 0 when it learns at
    /// once, as in-process engines do.
    pub failover: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(10),
            quiet: Duration::from_millis(300),
            poll: Duration::from_millis(20),
            failover: Duration::ZERO,
        }
    }
}

/// How a scenario ended when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// Not applicable to this backend, with the reason (a capability it lacks).
    Skipped(String),
}

/// What a backend's suite is pinned to: the capabilities the engine reports and the
/// scenarios it skips for lack of one. A scenario that starts skipping, one pinned as
/// skipped that runs, or a change of capabilities fails the run: the suite can never
/// quietly check less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Exactly what `Backend::capabilities` returns.
    pub capabilities: Capabilities,
    /// The names of the scenarios that skip (see [`SCENARIOS`](crate::SCENARIOS)).
    pub skips: &'static [&'static str],
    /// Whether a partition handed over cleanly (a member joins or closes) may be
    /// delivered again from the group's commit, as when a broker's rebalance refuses a
    /// commit in flight. `false` for engines that hand over in process: there every
    /// such scenario must see no duplicate at all.
    pub handoffs_redeliver: bool,
}

/// Connects the suite to the engine under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The capabilities and skips this run is pinned to (no default: every backend's
    /// suite says what it expects).
    fn expected(&self) -> Expected;

    /// Why the engine cannot be reached (its server's variable is not set), if so.
    /// The scenario then skips, except under `CI=true`, where it fails.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// A backend connected to the engine. Called once per scenario.
    async fn connect(&self) -> Result<Arc<dyn Backend>>;

    /// Drops `backend` and connects again to the same storage, for the scenarios of
    /// durable engines. `None` where the engine keeps nothing.
    async fn reopen(&self, backend: Arc<dyn Backend>) -> Result<Option<Arc<dyn Backend>>> {
        drop(backend);
        Ok(None)
    }

    /// How long the engine may take.
    fn timing(&self) -> Timing {
        Timing::default()
    }
}

/// The address of a test server from the environment variable `var`, for tests that
/// need one (a broker, an emulator). Unset or empty: `None`, after saying the test is
/// skipped and how to start the server (`hint`); under `CI=true` that is a failure
/// instead, because a skipped test in CI hides a missing server.
///
/// # Panics
/// When `var` is unset and `CI=true`.
pub fn server_from_env(var: &str, hint: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{var} is not set under CI=true ({hint})"
            );
            eprintln!("SKIPPED: {var} is not set ({hint})");
            None
        }
    }
}

/// The in-memory engine, a fresh one per scenario.
#[derive(Clone, Debug, Default)]
pub struct MemoryHarness {
    config: MemoryConfig,
}

/// What the in-memory engine made from `config` offers: everything but durability, so
/// only the reopen scenario skips.
pub fn memory_expected(config: &MemoryConfig) -> Expected {
    let mut capabilities = Capabilities::durable_log(config.max_record_bytes);
    capabilities.durable = false;
    Expected {
        capabilities,
        skips: &["reopen_keeps_records_and_commits"],
        handoffs_redeliver: false,
    }
}

impl MemoryHarness {
    /// Runs the suite on engines made with `config`.
    pub fn new(config: MemoryConfig) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn expected(&self) -> Expected {
        memory_expected(&self.config)
    }

    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(MemoryBackend::new(self.config.clone())?))
    }
}
