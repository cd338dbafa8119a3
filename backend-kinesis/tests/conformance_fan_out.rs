//! The whole conformance suite against kinesis-local with enhanced fan-out readers
//! (RegisterStreamConsumer and SubscribeToShard) and the header envelope on, so the
//! header and event-time scenarios run too, and group leases in memory: the emulator named by
//! TRIBUTARY_TEST_KINESIS (`scripts/kinesis start` prints it). Every scenario makes its
//! own streams. Without the variable the scenarios are skipped, except under CI=true,
//! where that fails the run.

mod common;

use tributary_conformance::Expected;
use tributary_core::Capabilities;
use tributary_kinesis::{LeaseStoreKind, ReaderKind};

tributary_conformance::suite!(common::KinesisHarness::new(
    ReaderKind::FanOut,
    true,
    LeaseStoreKind::Memory,
    // Everything runs.
    Expected {
        capabilities: Capabilities::durable_log(1024 * 1024),
        skips: &[],
        handoffs_redeliver: true,
    }
));
