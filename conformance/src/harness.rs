//! What a backend provides to run the suite, and the runner of one scenario.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tributary_core::{Backend, MemoryBackend, MemoryConfig, Result, async_trait};

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

/// Connects the suite to the engine under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
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

impl MemoryHarness {
    /// Runs the suite on engines made with `config`.
    pub fn new(config: MemoryConfig) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
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
    runtime.block_on(async move {
        let harness: Arc<dyn Harness> = Arc::new(harness);
        let backend = match harness.connect().await {
            Ok(b) => b,
            Err(e) => panic!("{name}: cannot connect to the engine: {e}"),
        };
        let ctx = Ctx::new(name, backend, harness);
        match scenario(ctx).await {
            Ok(Outcome::Passed) => {}
            Ok(Outcome::Skipped(why)) => eprintln!("{name}: SKIPPED: {why}"),
            Err(e) => panic!("{name}: failed with {e} ({e:?})"),
        }
    });
}
