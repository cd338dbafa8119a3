//! The conformance suite through the facade: a `Client` made from a URL.

use std::sync::Arc;

use tributary::{Backend, Client, Result, async_trait};
use tributary_conformance::{Expected, Harness};

struct ClientHarness;

#[async_trait]
impl Harness for ClientHarness {
    /// The in-memory engine keeps nothing across a reopen: only that scenario skips.
    fn expected(&self) -> Expected {
        let mut capabilities = tributary::Capabilities::durable_log(1024 * 1024);
        capabilities.durable = false;
        Expected {
            capabilities,
            skips: &["reopen_keeps_records_and_commits"],
            handoffs_redeliver: false,
        }
    }

    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(Client::from_url("memory://?partitions=2").await?))
    }
}

tributary_conformance::suite!(ClientHarness);
