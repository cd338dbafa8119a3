//! What a backend provides to run the suite, and the runner of one scenario.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tributary_core::{Backend, Capabilities, MemoryBackend, MemoryConfig, Result, async_trait};

use crate::support::Ctx;

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

/// Runs one scenario on its own runtime and panics (fails the test) if it fails, or
/// if the engine is unavailable under `CI=true`.
///
/// # Panics
/// On any failure: that is how a test fails.
pub fn run_scenario<H, S, F>(name: &'static str, harness: impl FnOnce() -> H, scenario: S)
where
    H: Harness,
    S: FnOnce(Ctx) -> F,
    F: Future<Output = Result<Outcome>>,
{
    let harness = harness();
    if let Some(why) = harness.unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name}: the engine is unavailable under CI=true: {why}");
        }
        eprintln!("{name}: SKIPPED, engine unavailable: {why}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the scenario");
    let expected = harness.expected();
    if let Some(unknown) = expected.skips.iter().find(|s| !crate::SCENARIOS.contains(s)) {
        panic!("{name}: the pinned skips name {unknown:?}, which is no scenario");
    }
    runtime.block_on(async move {
        let harness: Arc<dyn Harness> = Arc::new(harness);
        let backend = match harness.connect().await {
            Ok(b) => b,
            Err(e) => panic!("{name}: cannot connect to the engine: {e}"),
        };
        let capabilities = backend.capabilities();
        assert_eq!(
            capabilities, expected.capabilities,
            "{name}: the engine's capabilities are not the ones its suite is pinned to"
        );
        let ctx = Ctx::new(name, backend, harness);
        let outcome = match scenario(ctx).await {
            Ok(outcome) => outcome,
            Err(e) => panic!("{name}: failed with {e} ({e:?})"),
        };
        check_pinned(name, &outcome, expected.skips);
    });
}

/// Fails a scenario whose outcome is not the pinned one: skipped though pinned to run,
/// or run though pinned to skip (the pin is stale and would hide the next skip).
///
/// # Panics
/// On a mismatch.
fn check_pinned(name: &str, outcome: &Outcome, skips: &[&str]) {
    let pinned = skips.contains(&name);
    match outcome {
        Outcome::Skipped(why) if pinned => eprintln!("{name}: SKIPPED (as pinned): {why}"),
        Outcome::Skipped(why) => panic!("{name}: skipped ({why}) but the suite is pinned to run it"),
        Outcome::Passed if pinned => {
            panic!("{name}: passed but is pinned as skipped: remove it from the expected skips")
        }
        Outcome::Passed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_must_match_the_pins() {
        let skips = &["b"];
        check_pinned("a", &Outcome::Passed, skips);
        check_pinned("b", &Outcome::Skipped("no headers".into()), skips);
        let started_skipping =
            std::panic::catch_unwind(|| check_pinned("a", &Outcome::Skipped("x".into()), skips));
        assert!(started_skipping.is_err());
        let stale_pin = std::panic::catch_unwind(|| check_pinned("b", &Outcome::Passed, skips));
        assert!(stale_pin.is_err());
    }
}
