//! Running one scenario: on its own runtime, against the engine's pinned capabilities
//! and skips.

use std::future::Future;
use std::sync::Arc;

use tributary_core::Result;

use crate::harness::{Harness, Outcome};
use crate::support::Ctx;

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
