//! The whole conformance suite against a real Apache Kafka broker: the one named by
//! TRIBUTARY_TEST_KAFKA (`scripts/kafka start` prints it). Every scenario makes its own
//! topics and groups. Without the variable the scenarios are skipped, except under
//! CI=true, where that fails the run.

use std::sync::Arc;
use std::time::Duration;

use tributary_conformance::{Expected, Harness, Timing};
use tributary_core::{Backend, Capabilities, Result, async_trait};
use tributary_kafka::{KafkaBackend, KafkaConfig};

struct KafkaHarness {
    bootstrap: Option<String>,
}

impl KafkaHarness {
    fn new() -> Self {
        Self {
            bootstrap: std::env::var("TRIBUTARY_TEST_KAFKA")
                .ok()
                .filter(|b| !b.is_empty()),
        }
    }
}

#[async_trait]
impl Harness for KafkaHarness {
    /// Everything runs; records up to the default 1,000,000 bytes.
    fn expected(&self) -> Expected {
        Expected {
            capabilities: Capabilities::durable_log(1_000_000),
            skips: &[],
            handoffs_redeliver: true,
        }
    }

    fn unavailable(&self) -> Option<String> {
        match self.bootstrap {
            Some(_) => None,
            None => Some("TRIBUTARY_TEST_KAFKA is not set (start a broker with scripts/kafka start)".into()),
        }
    }

    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        let mut config = KafkaConfig::new(self.bootstrap.clone().unwrap_or_default());
        // The broker's minimum: a dropped member's partitions move on after this long.
        config.session_timeout = Duration::from_secs(6);
        config.metadata_refresh = Duration::from_millis(500);
        Ok(Arc::new(KafkaBackend::new(config)?))
    }

    async fn reopen(&self, backend: Arc<dyn Backend>) -> Result<Option<Arc<dyn Backend>>> {
        drop(backend);
        self.connect().await.map(Some)
    }

    fn timing(&self) -> Timing {
        Timing {
            settle: Duration::from_secs(30),
            quiet: Duration::from_millis(500),
            poll: Duration::from_millis(50),
            failover: Duration::from_secs(8),
        }
    }
}

tributary_conformance::suite!(KafkaHarness::new());
