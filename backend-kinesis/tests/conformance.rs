//! The whole conformance suite against kinesis-local with polling readers and plain
//! records (no header envelope), group leases in DynamoDB (dynalite, TRIBUTARY_TEST_DYNAMODB): the emulator named by TRIBUTARY_TEST_KINESIS
//! (`scripts/kinesis start` prints it). Every scenario makes its own streams. Without the variable the scenarios are skipped,
//! except under CI=true, where that fails the run.

mod common;

use tributary_kinesis::{LeaseStoreKind, ReaderKind};

tributary_conformance::suite!(common::KinesisHarness::new(
    ReaderKind::Polling,
    false,
    LeaseStoreKind::Dynamodb
));
