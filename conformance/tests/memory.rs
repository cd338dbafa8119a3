//! The whole suite against the in-memory engine.

tributary_conformance::suite!(tributary_conformance::MemoryHarness::default());

#[test]
fn the_suite_has_at_least_thirty_scenarios() {
    assert!(
        tributary_conformance::SCENARIOS.len() >= 30,
        "{}",
        tributary_conformance::SCENARIOS.len()
    );
}
