//! `trib` against the real servers the test command starts: Apache Kafka
//! (TRIBUTARY_TEST_KAFKA) and kinesis-local with dynalite for group leases
//! (TRIBUTARY_TEST_KINESIS, TRIBUTARY_TEST_DYNAMODB). Outside CI an unset variable
//! skips the test; under CI=true it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::roundtrip_and_admin;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), fastrand::u32(..))
}

/// The kinesis:// URL of the emulator, headers kept in the envelope, short leases.
pub fn kinesis_url() -> Option<String> {
    let kinesis = tributary_conformance::server_from_env("TRIBUTARY_TEST_KINESIS", "scripts/kinesis start")?;
    let dynamodb =
        tributary_conformance::server_from_env("TRIBUTARY_TEST_DYNAMODB", "scripts/dynamodb start")?;
    Some(format!(
        "kinesis://?region=us-east-1&endpoint={kinesis}&dynamodb_endpoint={dynamodb}&headers_envelope=true&failover=2s&shard_refresh=1s"
    ))
}

#[test]
fn kafka_produce_consume_admin_and_errors() {
    let Some(kafka) = tributary_conformance::server_from_env("TRIBUTARY_TEST_KAFKA", "scripts/kafka start")
    else {
        return;
    };
    roundtrip_and_admin(&format!("kafka://{kafka}"), &unique("cli-kafka"), "2s");
}

#[test]
fn kinesis_produce_consume_admin_and_errors() {
    let Some(url) = kinesis_url() else {
        return;
    };
    roundtrip_and_admin(&url, &unique("cli-kinesis"), "3s");
}
