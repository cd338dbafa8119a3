//! The conformance suite through the facade: a `Client` made from a URL.

use std::sync::Arc;

use tributary::{Backend, Client, Result, async_trait};
use tributary_conformance::Harness;

struct ClientHarness;

#[async_trait]
impl Harness for ClientHarness {
    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(Client::from_url("memory://?partitions=2").await?))
    }
}

tributary_conformance::suite!(ClientHarness);
