//! The whole conformance suite against kinesis-local with polling readers and plain
//! records (no header envelope), group leases in DynamoDB (dynalite, TRIBUTARY_TEST_DYNAMODB): the emulator named by TRIBUTARY_TEST_KINESIS
//! (`scripts/kinesis start` prints it). Every scenario makes its own streams. Without the variable the scenarios are skipped,
//! except under CI=true, where that fails the run.

mod common;

use tributary_conformance::Expected;
use tributary_core::Capabilities;
use tributary_kinesis::{LeaseStoreKind, ReaderKind};

/// Plain records carry no headers and no event time: the header scenario skips.
fn expected() -> Expected {
    let mut capabilities = Capabilities::durable_log(1024 * 1024);
    capabilities.headers = false;
    capabilities.event_timestamps = false;
    Expected {
        capabilities,
        skips: &["headers_roundtrip_with_odd_unicode"],
        handoffs_redeliver: true,
    }
}

tributary_conformance::suite!(common::KinesisHarness::new(
    ReaderKind::Polling,
    false,
    LeaseStoreKind::Dynamodb,
    expected()
));
