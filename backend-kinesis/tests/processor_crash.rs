//! The processor killed with SIGKILL and started again against the emulator
//! (TRIBUTARY_TEST_KINESIS), with leases and checkpoints in the DynamoDB-compatible
//! server (TRIBUTARY_TEST_DYNAMODB): nothing lost, nothing a checkpoint covered
//! handled again (`tributary_conformance::crash`). A killed member's leases are taken
//! over after the tests' short failover.

mod common;

use std::path::Path;
use std::sync::Arc;

use tributary_core::{Backend, Error, ErrorKind, Result};

fn connect(_scratch: &Path) -> Result<Arc<dyn Backend>> {
    let endpoint = std::env::var("TRIBUTARY_TEST_KINESIS")
        .map_err(|_| Error::new(ErrorKind::InvalidConfig, "TRIBUTARY_TEST_KINESIS is not set"))?;
    let config = common::local_config(&endpoint);
    if config.dynamodb_endpoint.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "TRIBUTARY_TEST_DYNAMODB is not set: leases must outlive the process",
        ));
    }
    Ok(Arc::new(common::backend(config)?))
}

#[test]
fn processor_killed_and_restarted_loses_nothing() {
    if common::endpoint().is_none() || common::dynamodb_endpoint().is_none() {
        return;
    }
    tributary_conformance::crash::processor_killed_and_restarted_loses_nothing(connect);
}
