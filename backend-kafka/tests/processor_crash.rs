//! The processor killed with SIGKILL and started again against the real broker
//! (TRIBUTARY_TEST_KAFKA): nothing lost, nothing a commit covered handled again
//! (`tributary_conformance::crash`). A killed member leaves the group after its
//! session timeout, short here so that each restart gets the partitions soon.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tributary_core::{Backend, Error, ErrorKind, Result};
use tributary_kafka::{KafkaBackend, KafkaConfig};

const SERVER: &str = "TRIBUTARY_TEST_KAFKA";

fn connect(_scratch: &Path) -> Result<Arc<dyn Backend>> {
    let bootstrap = std::env::var(SERVER)
        .map_err(|_| Error::new(ErrorKind::InvalidConfig, format!("{SERVER} is not set")))?;
    let mut config = KafkaConfig::new(bootstrap);
    config.session_timeout = Duration::from_secs(6);
    config.metadata_refresh = Duration::from_secs(1);
    Ok(Arc::new(KafkaBackend::new(config)?))
}

#[test]
fn processor_killed_and_restarted_loses_nothing() {
    if tributary_conformance::server_from_env(SERVER, "start a broker with scripts/kafka start").is_none() {
        return;
    }
    tributary_conformance::crash::processor_killed_and_restarted_loses_nothing(connect);
}
